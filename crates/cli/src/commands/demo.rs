//! `clinstruct demo`: the quickstart's main job on the embedded default. Today it exercises the
//! corpus layer on the bundled samples; later stages add the stager and the note generator.

use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct DemoArgs {}

pub fn run(_args: DemoArgs) -> Result<()> {
    Ok(())
}
