//! `cargo xtask bench docker` (being written).

/// Runs the benchmark.
pub fn run(runs: usize) -> anyhow::Result<()> {
    let _ = runs;
    anyhow::bail!("bench docker is not written yet")
}
