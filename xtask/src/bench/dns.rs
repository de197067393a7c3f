//! `cargo xtask bench dns` (being written).

/// Runs the benchmark.
pub fn run(runs: usize) -> anyhow::Result<()> {
    let _ = runs;
    anyhow::bail!("bench dns is not written yet")
}
