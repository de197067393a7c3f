//! Start-up and shutdown of the daemon.
//!
//! Start: directories (the state dir private to root), underlay MTU, KV (never fatal when the
//! KV is merely unreachable: the loops retry with backoff and `status` says so; fatal, with
//! exit code 2, when etcd refuses our TLS material or credentials), control socket,
//! background loops.
//! Shutdown on SIGTERM/SIGINT: stop serving, remove the socket, and leave the datapath
//! exactly as it is, so traffic keeps flowing until the next agent adopts it.

use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    agent::{Agent, Services},
    api,
    config::{ConfigError, Settings},
    local::LocalState,
    tasks,
};

/// Runs the daemon until SIGTERM or SIGINT. A [`ConfigError`] in the returned error's chain
/// is a settings problem found at start (the binary exits with code 2).
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.run_dir)
        .with_context(|| format!("creating {}", settings.run_dir.display()))?;
    // The state dir holds the topology: root only, also for files older agents left open.
    let tightened = crate::perms::private_dir(&settings.state_dir)
        .with_context(|| format!("making {} private", settings.state_dir.display()))?;
    if !tightened.is_empty() {
        tracing::info!(paths = ?tightened, "made state files readable by root only");
    }
    let mtu = ovl_netlink::underlay_mtu(settings.advertise_addr).with_context(|| {
        format!(
            "no interface holds the advertise address {}",
            settings.advertise_addr
        )
    })?;
    let kv = ovl_kv::open_with(
        settings.kv.as_deref(),
        &settings.embedded_kv_path(),
        &settings.kv_security,
    )
    .await
    .map_err(|e| match e {
        ovl_kv::KvError::Refused { .. } | ovl_kv::KvError::InvalidMaterial(_) => {
            anyhow::Error::new(ConfigError(e.to_string()))
        }
        e => anyhow::Error::new(e).context("opening the KV store"),
    })?;
    tracing::info!(
        host = %settings.host_id,
        vtep = %settings.advertise_addr,
        underlay_mtu = mtu,
        kv = %kv.describe(),
        datapath = %settings.datapath,
        "starting"
    );
    let socket = settings.socket_path();
    let listener = api::server::bind_with(&socket, settings.socket_group)
        .await
        .with_context(|| format!("binding the control socket {}", socket.display()))?;
    // The mount namespace of every durable mount: the datapath's sandboxes and pins, the
    // health and probe namespaces.
    let mounts = tokio::task::spawn_blocking(ovl_netlink::HostMounts::detect).await?;
    let dp = crate::datapath::open(&settings, mounts.clone()).await?;
    let mut gw_cfg = ovl_gateway::GatewayConfig::new(settings.state_dir.join("gateway"));
    gw_cfg.subnet = settings.gw_subnet;
    gw_cfg.vxlan_port = Some(settings.vxlan_port);
    gw_cfg.encrypted_port = Some(settings.encrypted_vxlan_port);
    gw_cfg.agent_tcp = settings.metrics_addr.iter().map(|a| a.port()).collect();
    // The DNS address for Docker containers: never reachable through the underlay interface,
    // even when it is a bridge an `--dns-interfaces` pattern matches.
    let underlay = ovl_netlink::underlay_interface(settings.advertise_addr)
        .context("finding the underlay interface")?;
    gw_cfg.dns = settings.dns_addr.map(|addr| ovl_gateway::DnsGuard {
        addr,
        allow: settings.dns_interfaces.clone(),
        deny: vec![underlay.clone()],
    });
    let gw = ovl_gateway::Gateway::new(gw_cfg).context("opening the gateway bridge state")?;
    if let Some(s) = settings.gw_subnet {
        check_gw_subnet(kv.as_ref(), s).await?;
    }
    let local =
        LocalState::load(settings.state_dir.join("local.json")).context("loading local state")?;
    if settings.dns_addr.is_some() {
        // Failing here is not fatal (the gateway loop retries); the names loop opens the
        // listener once the address exists.
        if let Err(e) = ovl_gateway::Gateway::ensure_dns(&gw).await {
            tracing::warn!(error = %e, "setting up the DNS address for Docker containers; retrying");
        }
    }
    let shared = settings.dns_addr.map(|addr| {
        let clients = crate::names::LocalClients::new(
            Arc::new(crate::names::KernelAddrs),
            settings.dns_interfaces.clone(),
            vec![underlay.clone()],
        );
        (addr, clients)
    });
    let names = crate::names::DnsNames::new(settings.dns_upstream.clone(), shared)?;
    use crate::{config::WgMode, tunnel::wireguard::Kind};
    let wg_kind = match settings.wireguard {
        WgMode::Kernel => Kind::Kernel,
        WgMode::Userspace => Kind::Userspace,
        WgMode::Auto if ovl_wg::Kernel::available("ovlwgprobe").await => Kind::Kernel,
        WgMode::Auto => Kind::Userspace,
    };
    tracing::info!(
        wireguard = wg_kind.as_str(),
        "WireGuard for encrypted networks"
    );
    let tunnel = crate::tunnel::wireguard::WireGuard::open(
        &settings.state_dir,
        settings.wg_port,
        settings.encrypted_vxlan_port,
        wg_kind,
    )
    .context("loading the WireGuard key")?;
    let services = Services {
        datapath: dp,
        gateway: Arc::new(gw),
        names: Arc::new(names),
        probe: Arc::new(crate::probe::UnderlayProbe),
        tunnel: Arc::new(tunnel),
        health: Arc::new(crate::health::IcmpHealthProbe::new(
            crate::health::netns_path(&settings.run_dir),
            mounts.clone(),
        )),
        wire: Arc::new(crate::pathprobe::wire::HostWire::new(mounts)),
    };
    // Overlay subnets must stay out of it; unknown (no netmask) is not fatal.
    let network = ovl_netlink::underlay_network(settings.advertise_addr).ok();
    let agent = Agent::new(
        settings,
        kv,
        crate::agent::Underlay { mtu, network },
        services,
        local,
    );

    // Before the first reconcile pass: a restarted agent must find its health endpoint
    // desired from the start, or that pass would take it down and the next put it back.
    tasks::health::prepare(&agent).await;
    let mut loops = tokio::task::JoinSet::new();
    tasks::spawn_all(&agent, &mut loops);
    if agent.settings().docker_plugin {
        loops.spawn(crate::docker::run(agent.clone()));
    }
    loops.spawn(crate::ready::notify_when_answering(crate::ready::probes(
        agent.settings(),
    )));

    let app = api::server::router().with_state(agent.clone());
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
    loops.abort_all();
    agent.shutdown().await;
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
