//! `cargo xtask bench datapath` (being written).

/// Runs the benchmark.
pub fn run(runs: usize) -> anyhow::Result<()> {
    let _ = runs;
    anyhow::bail!("bench datapath is not written yet")
}
