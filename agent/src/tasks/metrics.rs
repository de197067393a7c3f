//! Prometheus metrics on `--metrics-addr` (text format at `/metrics`): counters kept by the
//! agent's loops plus gauges read from the current view.

use std::{fmt::Write, net::SocketAddr, sync::Arc};

use axum::{Router, routing::get};

use crate::{agent::Agent, counters::Counters};

/// Renders every metric in the Prometheus text format.
pub fn render(agent: &Agent) -> String {
    let c = agent.counters();
    let st = agent.status();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP overlay_{name} {help}\n# TYPE overlay_{name} {kind}\noverlay_{name} {value}"
        );
    };
    let get = Counters::get;
    metric(
        "reconcile_passes_total",
        "counter",
        "Reconcile passes run.",
        get(&c.reconcile_passes),
    );
    metric(
        "datapath_ops_applied_total",
        "counter",
        "Datapath operations applied.",
        get(&c.ops_applied),
    );
    metric(
        "datapath_ops_failed_total",
        "counter",
        "Datapath operations that failed.",
        get(&c.ops_failed),
    );
    metric(
        "attaches_total",
        "counter",
        "Endpoints attached on this host.",
        get(&c.attaches),
    );
    metric(
        "detaches_total",
        "counter",
        "Endpoints detached on this host.",
        get(&c.detaches),
    );
    metric(
        "kv_probe_failures_total",
        "counter",
        "Failed KV health probes.",
        get(&c.kv_probe_failures),
    );
    metric(
        "endpoint_record_conflicts_total",
        "counter",
        "Endpoint records in the KV found contradicting this host's own state.",
        get(&c.record_conflicts),
    );
    metric(
        "endpoint_records_repaired_total",
        "counter",
        "Endpoint records written back to the KV after such a conflict.",
        get(&c.records_repaired),
    );
    metric(
        "dns_guard_dropped_total",
        "counter",
        "Packets to the DNS address for Docker containers dropped by its guard.",
        get(&c.dns_dropped),
    );
    metric(
        "vxlan_refused_total",
        "counter",
        "VXLAN packets dropped: from senders that are not registered hosts, or from containers.",
        get(&c.vxlan_refused),
    );
    metric(
        "rollback_failures_total",
        "counter",
        "Cleanup steps after a failed operation that failed themselves.",
        get(&c.rollback_failures),
    );
    metric(
        "kv_reachable",
        "gauge",
        "1 if the KV answered the last probe.",
        u64::from(st.kv.reachable),
    );
    metric(
        "registered",
        "gauge",
        "1 if this host's liveness record is held.",
        u64::from(st.registered),
    );
    metric("hosts", "gauge", "Hosts known.", st.counts.hosts as u64);
    metric(
        "hosts_alive",
        "gauge",
        "Hosts alive.",
        st.counts.hosts_alive as u64,
    );
    metric("networks", "gauge", "Networks.", st.counts.networks as u64);
    metric(
        "endpoints",
        "gauge",
        "Endpoints cluster-wide.",
        st.counts.endpoints as u64,
    );
    metric(
        "local_endpoints",
        "gauge",
        "Endpoints on this host.",
        st.counts.local_endpoints as u64,
    );
    out
}

/// Serves `/metrics` on `addr` until the task is dropped.
pub async fn serve(agent: Arc<Agent>, addr: SocketAddr) {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let a = agent.clone();
            async move {
                (
                    [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                    render(&a),
                )
            }
        }),
    );
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => {
            tracing::info!(%addr, "serving metrics");
            if let Err(e) = axum::serve(l, app).await {
                tracing::error!(error = %e, "metrics server stopped");
            }
        }
        Err(e) => tracing::error!(%addr, error = %e, "cannot bind the metrics address"),
    }
}
