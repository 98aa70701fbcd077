//! Appends one benchmark figure, a JSON object on one line, to the file named by
//! `CHRYSALIS_BENCH_FIGURES` (set by `cargo xtask bench`; schema in
//! tests/src/bin/chrysalis-bench.rs). Without the variable, nothing is written. Used by every
//! benchmark.

/// Appends `figure` to `$CHRYSALIS_BENCH_FIGURES`, if set.
pub fn record(figure: &serde_json::Value) -> std::io::Result<()> {
    use std::io::Write;
    let Some(path) = std::env::var_os("CHRYSALIS_BENCH_FIGURES") else {
        return Ok(());
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(f, "{figure}")
}
