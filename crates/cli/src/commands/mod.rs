pub mod data;
pub mod demo;
pub mod embed;
pub mod eval;
pub mod generate;
pub mod load;
pub mod lora;
pub mod model;
pub mod tnm;

use std::io::Write;

/// Writes to stdout; a closed pipe (`clinstruct … | head`) ends output quietly instead of
/// panicking as `print!` does.
pub fn out(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Prints `value` as pretty JSON on stdout (the `--json` form of every command).
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    out(&(serde_json::to_string_pretty(value)? + "\n"))
}
