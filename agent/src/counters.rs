//! Counters the agent's operations and loops increase, read by `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters (Prometheus counters).
#[derive(Debug, Default)]
pub struct Counters {
    /// Reconcile passes run.
    pub reconcile_passes: AtomicU64,
    /// Datapath operations applied.
    pub ops_applied: AtomicU64,
    /// Datapath operations that failed (retried later).
    pub ops_failed: AtomicU64,
    /// Successful attaches.
    pub attaches: AtomicU64,
    /// Successful detaches.
    pub detaches: AtomicU64,
    /// Failed KV health probes.
    pub kv_probe_failures: AtomicU64,
    /// Endpoint records in the KV found contradicting this host's own state.
    pub record_conflicts: AtomicU64,
    /// Endpoint records this host wrote back to the KV after such a conflict.
    pub records_repaired: AtomicU64,
    /// Steps of cleanup after a failed operation (rollback) that failed themselves.
    pub rollback_failures: AtomicU64,
    /// Packets to the DNS address for Docker containers dropped by its guard (not from the
    /// host itself nor from an allowed container bridge).
    pub dns_dropped: AtomicU64,
    /// VXLAN packets refused: from senders that are not registered hosts, or from containers.
    pub vxlan_refused: AtomicU64,
}

impl Counters {
    /// Adds `n` to a counter.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}
