pub mod data;
pub mod demo;
pub mod embed;
pub mod model;

/// Prints `value` as pretty JSON on stdout (the `--json` form of every command).
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
