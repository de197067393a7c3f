//! Start-up and shutdown of the daemon.
//!
//! Start: directories, underlay MTU, KV (never fatal when the KV is merely unreachable: the
//! loops retry with backoff and `status` says so), control socket, background loops.
//! Shutdown on SIGTERM/SIGINT: stop serving, remove the socket, and leave the datapath
//! exactly as it is, so traffic keeps flowing until the next agent adopts it.

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};

use crate::{agent::Agent, api, config::Settings, local::LocalState, reconcile, registry, sync};

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    for dir in [&settings.run_dir, &settings.state_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mtu = ovl_datapath::underlay_mtu(settings.advertise_addr).with_context(|| {
        format!(
            "no interface holds the advertise address {}",
            settings.advertise_addr
        )
    })?;
    let kv = ovl_kv::open(settings.kv.as_deref(), &settings.embedded_kv_path())
        .await
        .context("opening the KV store")?;
    tracing::info!(
        host = %settings.host_id,
        vtep = %settings.advertise_addr,
        underlay_mtu = mtu,
        kv = %kv.describe(),
        datapath = %settings.datapath,
        "starting"
    );
    let socket = settings.socket_path();
    let listener = api::server::bind(&socket)
        .await
        .with_context(|| format!("binding the control socket {}", socket.display()))?;
    let dp = crate::datapath::open(&settings).await?;
    let mut gw_cfg = ovl_gateway::GatewayConfig::new(settings.state_dir.join("gateway"));
    gw_cfg.subnet = settings.gw_subnet;
    let gw = ovl_gateway::Gateway::new(gw_cfg).context("opening the gateway bridge state")?;
    if let Some(s) = settings.gw_subnet {
        check_gw_subnet(kv.as_ref(), s).await?;
    }
    let local =
        LocalState::load(settings.state_dir.join("local.json")).context("loading local state")?;
    let names = crate::names::Names::new(settings.dns_upstream.clone())?;
    let agent = Agent::new(settings, kv, mtu, dp, std::sync::Arc::new(gw), local, names);

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(registry::run(agent.clone()));
    tasks.spawn(sync::run(agent.clone()));
    tasks.spawn(sync::probe_health(agent.clone()));
    tasks.spawn(reconcile::run(agent.clone()));
    tasks.spawn(crate::names::run(agent.clone()));
    if let Some(addr) = agent.settings.metrics_addr {
        tasks.spawn(crate::metrics::serve(agent.clone(), addr));
    }
    if agent.settings.docker_plugin {
        tasks.spawn(crate::docker::run(agent.clone()));
    }
    tasks.spawn(crate::ready::notify_when_answering(crate::ready::probes(
        &agent.settings,
    )));

    let app = api::server::router(agent.clone()).with_state(agent.clone());
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("control API")?;
    tasks.abort_all();
    agent.names.shutdown().await;
    if let Err(e) = std::fs::remove_file(&socket) {
        tracing::warn!(error = %e, "removing the control socket");
    }
    tracing::info!("stopped; the datapath is left in place");
    Ok(())
}

/// Refuses a `--gw-subnet` that overlaps an overlay network, when the KV can tell (a KV that
/// is down postpones the check to the first attach, which the gateway checks again).
async fn check_gw_subnet(kv: &dyn ovl_kv::Kv, gw: ipnetwork::Ipv4Network) -> anyhow::Result<()> {
    let listing = match tokio::time::timeout(
        std::time::Duration::from_secs(3),
        kv.list(ovl_core::keys::NETWORKS),
    )
    .await
    {
        Ok(Ok(l)) => l,
        _ => return Ok(()),
    };
    for e in listing.entries {
        if let Ok(n) = serde_json::from_slice::<ovl_core::NetworkRecord>(&e.value)
            && ovl_core::ipam::overlaps(n.subnet, gw)
        {
            anyhow::bail!(
                "--gw-subnet {gw} overlaps overlay network {} ({})",
                n.name,
                n.subnet
            );
        }
    }
    Ok(())
}
