//! In-memory fakes of the side-effecting seams (datapath, gateway, names), so the agent's own
//! logic runs in unit tests as a normal user over the embedded KV. Each records what it was
//! asked and can be told to fail the next call of a kind.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use ipnetwork::Ipv4Network;
use ovl_core::ClusterView;
use ovl_model::{Attached, Desired, EndpointSpec, EndpointStatus, NetworkSpec, Plug};

use crate::{
    agent::{Agent, Services},
    api::types::DnsLookup,
    config::{Cli, Settings},
    datapath::{Converged, Datapath, DatapathError, Details, DpResult, NetReport, Report},
    error::Result,
    gateway::{self, Gateway, GatewayEndpoint, GatewayInfo, PortMap},
    health::{HealthProbe, Reply},
    local::Attachment,
    local::LocalState,
    names::Names,
    pathprobe::wire,
    probe::{Probe, VtepProbe},
    tunnel::{Tunnel, TunnelError, TunnelPlan, TunnelStatus},
};

/// A probe whose answers the test sets per VTEP (`Silent` when unset).
#[derive(Default)]
pub struct FakeProbe {
    /// Answers by VTEP.
    pub answers: Mutex<BTreeMap<Ipv4Addr, Probe>>,
}

#[async_trait::async_trait]
impl VtepProbe for FakeProbe {
    async fn probe(&self, vtep: Ipv4Addr, _port: u16) -> Probe {
        self.answers
            .lock()
            .unwrap()
            .get(&vtep)
            .copied()
            .unwrap_or(Probe::Silent)
    }
}

/// Health probes whose answers the test sets per address (unanswered when unset).
#[derive(Default)]
pub struct FakeHealth {
    /// Round trips by target address.
    pub answers: Mutex<BTreeMap<Ipv4Addr, std::time::Duration>>,
    /// Clock offsets (ms) by target address, measured with its answers (none when unset).
    pub skews: Mutex<BTreeMap<Ipv4Addr, i64>>,
    /// The targets of every round so far.
    pub rounds: Mutex<Vec<Vec<Ipv4Addr>>>,
}

#[async_trait::async_trait]
impl HealthProbe for FakeHealth {
    async fn prepare(&self) -> Result<PathBuf, String> {
        Ok(PathBuf::from("/proc/self/ns/net"))
    }

    async fn round(&self, targets: Vec<Ipv4Addr>) -> Result<BTreeMap<Ipv4Addr, Reply>, String> {
        let answers = self.answers.lock().unwrap();
        let skews = self.skews.lock().unwrap();
        let got = targets
            .iter()
            .filter_map(|t| {
                answers.get(t).map(|rtt| {
                    let skew_ms = skews.get(t).copied();
                    (*t, Reply { rtt: *rtt, skew_ms })
                })
            })
            .collect();
        self.rounds.lock().unwrap().push(targets);
        Ok(got)
    }
}

/// A tunnel that keeps the last plan it was given and a key that is a counter: the
/// public key of generation `n` of host `h` is `h-key-n`.
pub struct FakeTunnel {
    host: String,
    /// Key generation (bumped by `rotate`).
    pub generation: Mutex<u32>,
    /// Revoked public keys.
    pub revoked: Mutex<BTreeSet<String>>,
    /// The last plan applied (`None`: none, or torn down).
    pub plan: Mutex<Option<TunnelPlan>>,
    /// How many times `apply` ran.
    pub applied: std::sync::atomic::AtomicUsize,
}

impl FakeTunnel {
    /// The tunnel of `host`, key generation 0.
    pub fn new(host: &str) -> Self {
        FakeTunnel {
            host: host.into(),
            generation: Mutex::new(0),
            revoked: Mutex::new(BTreeSet::new()),
            plan: Mutex::new(None),
            applied: Default::default(),
        }
    }

    fn public(&self) -> String {
        format!("{}-key-{}", self.host, self.generation.lock().unwrap())
    }
}

#[async_trait::async_trait]
impl Tunnel for FakeTunnel {
    fn record(&self) -> Option<ovl_core::WgRecord> {
        let key = self.public();
        (!self.revoked.lock().unwrap().contains(&key)).then(|| ovl_core::WgRecord {
            public_key: key,
            port: ovl_model::WG_PORT,
            kind: "userspace".into(),
        })
    }

    async fn apply(&self, plan: Option<&TunnelPlan>) -> Result<(), TunnelError> {
        self.applied
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *self.plan.lock().unwrap() = plan.cloned();
        Ok(())
    }

    async fn rotate(&self) -> Result<ovl_core::WgRecord, TunnelError> {
        *self.generation.lock().unwrap() += 1;
        Ok(self.record().expect("a fresh key is not revoked"))
    }

    fn revoke(&self, public_key: &str) -> Result<bool, TunnelError> {
        Ok(public_key == self.public() && self.revoked.lock().unwrap().insert(public_key.into()))
    }

    fn status(&self) -> TunnelStatus {
        TunnelStatus {
            kind: "userspace".into(),
            public_key: self.public(),
            port: ovl_model::WG_PORT,
            up: self.plan.lock().unwrap().is_some(),
            revoked: self.record().is_none(),
            ..Default::default()
        }
    }
}

/// One endpoint the fake datapath holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakePort {
    /// The network's spec at attach time.
    pub spec: NetworkSpec,
    /// The endpoint as asked.
    pub ep: EndpointSpec,
    /// The container end's name.
    pub ifname: String,
    /// Left in the host namespace for Docker.
    pub unplugged: bool,
}

/// A datapath that keeps its endpoints in a map and converges by dropping the ones no longer
/// desired, as the real ones do.
#[derive(Default)]
pub struct FakeDatapath {
    /// Endpoints by (network, id).
    pub ports: Mutex<BTreeMap<(String, String), FakePort>>,
    /// The last desired state a pass converged to.
    pub last: Mutex<Option<Desired>>,
    /// Fails the next attach with this message.
    pub fail_attach: Mutex<Option<String>>,
    /// Fails the next detach with this message.
    pub fail_detach: Mutex<Option<String>>,
}

impl FakeDatapath {
    /// What dockerd does after Join: moves the endpoint's interface into the container and
    /// renames it `ifname`; the datapath's next look finds it there.
    pub fn dockerd_moved(&self, network: &str, endpoint_id: &str, ifname: &str) {
        let mut ports = self.ports.lock().unwrap();
        let p = ports
            .get_mut(&(network.to_string(), endpoint_id.to_string()))
            .expect("a Docker endpoint held");
        p.ifname = ifname.into();
        p.unplugged = false;
    }

    /// Keys of the endpoints held.
    pub fn keys(&self) -> BTreeSet<(String, String)> {
        self.ports.lock().unwrap().keys().cloned().collect()
    }

    fn take(slot: &Mutex<Option<String>>) -> DpResult<()> {
        match slot.lock().unwrap().take() {
            Some(m) => Err(DatapathError::Toolkit(ovl_netlink::Error::Sys {
                context: m,
                source: nix::Error::EBUSY,
            })),
            None => Ok(()),
        }
    }

    fn stale(&self, desired: &Desired) -> Vec<(String, String)> {
        self.keys()
            .into_iter()
            .filter(|(n, id)| {
                !desired
                    .networks
                    .get(n)
                    .is_some_and(|d| d.local_endpoints.contains_key(id))
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl Datapath for FakeDatapath {
    fn mode(&self) -> &'static str {
        "fake"
    }

    async fn converge(&self, desired: &Desired) -> DpResult<Converged> {
        let stale = self.stale(desired);
        {
            let mut ports = self.ports.lock().unwrap();
            for k in &stale {
                ports.remove(k);
            }
        }
        *self.last.lock().unwrap() = Some(desired.clone());
        Ok(Converged {
            applied: stale.len(),
            failed: Vec::new(),
            endpoints: self.endpoint_status(),
        })
    }

    async fn report(&self, desired: &Desired) -> DpResult<Report> {
        let mut out: BTreeMap<String, NetReport> = BTreeMap::new();
        for (n, id) in self.keys() {
            out.entry(n).or_default().actual.push(format!("local {id}"));
        }
        for (n, id) in self.stale(desired) {
            out.entry(n.clone())
                .or_default()
                .diff
                .push(format!("{n}: remove endpoint {id}"));
        }
        Ok(Report {
            networks: out,
            endpoints: self.endpoint_status(),
        })
    }

    async fn attach(&self, spec: &NetworkSpec, ep: &EndpointSpec) -> DpResult<Attached> {
        Self::take(&self.fail_attach)?;
        let (ifname, unplugged) = match &ep.plug {
            Plug::Netns => (ep.ifname.clone().unwrap_or_else(|| "eth0".into()), false),
            Plug::Docker { tmp } => (tmp.clone(), true),
        };
        self.ports.lock().unwrap().insert(
            (spec.name.clone(), ep.endpoint_id.clone()),
            FakePort {
                spec: spec.clone(),
                ep: ep.clone(),
                ifname: ifname.clone(),
                unplugged,
            },
        );
        Ok(Attached {
            ifname,
            host_ifname: format!("ve-{}", ep.endpoint_id),
            mac: ep.mac,
        })
    }

    async fn detach(&self, network: &str, endpoint_id: &str) -> DpResult<()> {
        Self::take(&self.fail_detach)?;
        self.ports
            .lock()
            .unwrap()
            .remove(&(network.to_string(), endpoint_id.to_string()));
        Ok(())
    }

    fn endpoint_status(&self) -> BTreeMap<(String, String), EndpointStatus> {
        self.ports
            .lock()
            .unwrap()
            .iter()
            .map(|(k, p)| {
                let status = if p.unplugged {
                    EndpointStatus::AwaitingDocker
                } else {
                    EndpointStatus::Ok {
                        ifname: p.ifname.clone(),
                    }
                };
                (k.clone(), status)
            })
            .collect()
    }

    async fn details(&self) -> Details {
        Details::Kernel(crate::datapath::kernel::KernelDetails {
            mode: "fake",
            mounts: String::new(),
            observed: None,
            error: None,
            switched: None,
            spoofed_dropped: 0,
        })
    }
}

/// A gateway that hands out addresses from 172.18.0.0/16 in memory.
#[derive(Default)]
pub struct FakeGateway {
    /// Attached keys with their interface.
    pub attached: Mutex<BTreeMap<String, GatewayEndpoint>>,
    /// Published ports by key.
    pub ports: Mutex<BTreeMap<String, Vec<PortMap>>>,
    /// Set up.
    pub up: Mutex<bool>,
    /// Fails the next attach with a port conflict on this port.
    pub fail_attach: Mutex<Option<u16>>,
    /// The VTEPs last admitted.
    pub admitted: Mutex<Option<std::collections::BTreeSet<std::net::Ipv4Addr>>>,
}

impl FakeGateway {
    fn subnet() -> Ipv4Network {
        "172.18.0.0/16".parse().expect("valid")
    }
}

#[async_trait::async_trait]
impl Gateway for FakeGateway {
    fn info(&self) -> Option<GatewayInfo> {
        self.up.lock().unwrap().then(|| GatewayInfo {
            bridge: "ovl_gwbridge".into(),
            subnet: Self::subnet(),
            address: Ipv4Addr::new(172, 18, 0, 1),
        })
    }

    fn published(&self) -> Vec<(String, PortMap)> {
        self.ports
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(k, v)| v.iter().map(move |p| (k.clone(), *p)))
            .collect()
    }

    async fn ensure_with(&self, _overlay_subnets: &[Ipv4Network]) -> gateway::Result<GatewayInfo> {
        *self.up.lock().unwrap() = true;
        Ok(self.info().expect("up"))
    }

    async fn attach(&self, key: &str, _netns: &Path) -> gateway::Result<GatewayEndpoint> {
        if let Some(port) = self.fail_attach.lock().unwrap().take() {
            return Err(gateway::Error::PortInUse {
                host_port: port,
                proto: gateway::Proto::Tcp,
                endpoint: "someone".into(),
            });
        }
        let mut a = self.attached.lock().unwrap();
        let n = a.len() as u8 + 2;
        let ep = a.entry(key.to_string()).or_insert_with(|| GatewayEndpoint {
            ifname: "eth1".into(),
            ip: Ipv4Network::new(Ipv4Addr::new(172, 18, 0, n), 16).expect("valid"),
            mac: format!("02:42:ac:12:00:{n:02x}"),
        });
        Ok(ep.clone())
    }

    async fn detach(&self, key: &str) -> gateway::Result<()> {
        self.attached.lock().unwrap().remove(key);
        self.ports.lock().unwrap().remove(key);
        Ok(())
    }

    async fn publish(&self, key: &str, ports: &[PortMap]) -> gateway::Result<()> {
        self.ports
            .lock()
            .unwrap()
            .entry(key.to_string())
            .or_default()
            .extend_from_slice(ports);
        Ok(())
    }

    async fn unpublish(&self, key: &str) -> gateway::Result<()> {
        self.ports.lock().unwrap().remove(key);
        Ok(())
    }

    async fn repair(&self) -> gateway::Result<bool> {
        Ok(false)
    }

    async fn ensure_dns(&self) -> gateway::Result<()> {
        Ok(())
    }

    async fn dns_dropped(&self) -> gateway::Result<Option<u64>> {
        Ok(None)
    }

    async fn admit(
        &self,
        vteps: std::collections::BTreeSet<std::net::Ipv4Addr>,
    ) -> gateway::Result<bool> {
        let mut a = self.admitted.lock().unwrap();
        let changed = a.as_ref() != Some(&vteps);
        *a = Some(vteps);
        Ok(changed)
    }

    async fn vxlan_refused(&self) -> gateway::Result<Option<u64>> {
        Ok(self.admitted.lock().unwrap().as_ref().map(|_| 0))
    }
}

/// Names that remember the last pass.
#[derive(Default)]
pub struct FakeNames {
    /// Passes run.
    pub passes: Mutex<usize>,
    /// The attachments of the last pass.
    pub last_local: Mutex<Vec<Attachment>>,
    /// The attachments as last told by `containers_changed`.
    pub containers: Mutex<Vec<Attachment>>,
    /// The networks the zone covers (those of the local endpoints), as last refreshed.
    pub zone_networks: Mutex<BTreeSet<String>>,
}

#[async_trait::async_trait]
impl Names for FakeNames {
    async fn sync(&self, _view: &ClusterView, local: &[Attachment]) -> usize {
        *self.passes.lock().unwrap() += 1;
        *self.last_local.lock().unwrap() = local.to_vec();
        0
    }

    fn refresh_zone(&self, _view: &ClusterView, local: &[Attachment]) {
        // The networks `names::zone_of` takes names from.
        *self.zone_networks.lock().unwrap() =
            local.iter().map(|a| a.endpoint.network.clone()).collect();
    }

    fn containers_changed(&self, local: &[Attachment]) {
        *self.containers.lock().unwrap() = local.to_vec();
    }

    fn shared_listeners(&self) -> Vec<std::net::SocketAddr> {
        Vec::new()
    }

    async fn lookup(&self, networks: &[String], name: &str, from: &str) -> Result<DnsLookup> {
        Ok(DnsLookup {
            name: name.into(),
            from: from.into(),
            rcode: "NOERROR".into(),
            answers: networks.to_vec(),
            source: "fake".into(),
        })
    }

    fn prepare_netns_etc(&self, _netns: &Path) -> std::io::Result<Option<PathBuf>> {
        Ok(None)
    }

    async fn shutdown(&self) {}
}

/// `overlayctl probe`'s side effects, faked for probes to endpoints on the same host:
/// namespaces are `/proc/self/ns/net` (never entered); the port answers each echo request
/// with its reply while [`FakeWire::answer`] is set; a capture in a container's namespace
/// sees every echo request written to the port arrive, and the replies leave.
#[derive(Default)]
pub struct FakeWire {
    /// The destination answers echoes.
    pub answer: Arc<AtomicBool>,
    /// Opening the port fails (as a refused TAP would).
    pub fail_port: AtomicBool,
    /// Namespaces made and not removed.
    pub netns: Mutex<BTreeSet<PathBuf>>,
    /// Frames written to the port.
    pub sent: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Ports open now.
    pub open_ports: Arc<std::sync::atomic::AtomicUsize>,
}

struct FakeProbePort {
    answer: Arc<AtomicBool>,
    sent: Arc<Mutex<Vec<Vec<u8>>>>,
    open: Arc<std::sync::atomic::AtomicUsize>,
    tx: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
    rx: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>>,
}

impl Drop for FakeProbePort {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl wire::Port for FakeProbePort {
    async fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        self.sent.lock().expect("sent").push(frame.to_vec());
        if self.answer.load(Ordering::SeqCst)
            && let Some(r) = crate::pathprobe::frame::reply_to(frame)
        {
            let _ = self.tx.send(r);
        }
        Ok(())
    }

    async fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.rx.lock().await.recv().await {
            Some(f) => {
                buf[..f.len()].copy_from_slice(&f);
                Ok(f.len())
            }
            None => std::future::pending().await,
        }
    }
}

struct FakeCapture {
    inside: bool,
    answer: Arc<AtomicBool>,
    sent: Arc<Mutex<Vec<Vec<u8>>>>,
    keep: wire::Keep,
}

#[async_trait::async_trait]
impl wire::Running for FakeCapture {
    async fn stop(self: Box<Self>) -> Result<Vec<wire::Seen>, wire::WireError> {
        if !self.inside {
            return Ok(Vec::new());
        }
        let answer = self.answer.load(Ordering::SeqCst);
        let mut out = Vec::new();
        for f in self.sent.lock().expect("sent").iter() {
            let mut seen = vec![(f[14..].to_vec(), false)];
            if answer && let Some(r) = crate::pathprobe::frame::reply_to(f) {
                seen.push((r[14..].to_vec(), true));
            }
            for (ip, outgoing) in seen {
                let p = wire::Packet {
                    ip: &ip,
                    outgoing,
                    ifname: "eth0",
                };
                if (self.keep)(&p) {
                    out.push(wire::Seen {
                        ip: ip.clone(),
                        outgoing,
                        ifname: "eth0".into(),
                    });
                }
            }
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl wire::ProbeWire for FakeWire {
    async fn make_netns(&self, path: &Path) -> Result<PathBuf, wire::WireError> {
        self.netns.lock().expect("netns").insert(path.to_path_buf());
        Ok(PathBuf::from("/proc/self/ns/net"))
    }

    async fn remove_netns(&self, path: &Path) -> Result<(), wire::WireError> {
        self.netns.lock().expect("netns").remove(path);
        Ok(())
    }

    async fn port(
        &self,
        _netns: &Path,
        _ifname: &str,
        _mtu: u32,
    ) -> Result<Box<dyn wire::Port>, wire::WireError> {
        if self.fail_port.load(Ordering::SeqCst) {
            return Err(wire::WireError::Tap("the kernel refused the TAP".into()));
        }
        self.open_ports.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Ok(Box::new(FakeProbePort {
            answer: self.answer.clone(),
            sent: self.sent.clone(),
            open: self.open_ports.clone(),
            tx,
            rx: tokio::sync::Mutex::new(rx),
        }))
    }

    async fn capture(
        &self,
        netns: Option<PathBuf>,
        keep: wire::Keep,
    ) -> Result<Box<dyn wire::Running>, wire::WireError> {
        Ok(Box::new(FakeCapture {
            inside: netns.is_some(),
            answer: self.answer.clone(),
            sent: self.sent.clone(),
            keep,
        }))
    }
}

/// An agent over the embedded KV and the fakes above, as a unit test drives it.
pub struct TestAgent {
    /// The agent.
    pub agent: Arc<Agent>,
    /// Its datapath.
    pub dp: Arc<FakeDatapath>,
    /// Its gateway.
    pub gw: Arc<FakeGateway>,
    /// Its names service.
    pub names: Arc<FakeNames>,
    /// Its VTEP probe.
    pub probe: Arc<FakeProbe>,
    /// Its tunnel.
    pub tunnel: Arc<FakeTunnel>,
    /// Its health probes.
    pub health: Arc<FakeHealth>,
    /// `overlayctl probe`'s side effects.
    pub wire: Arc<FakeWire>,
    /// Its run and state dirs (removed when dropped).
    pub dir: tempfile::TempDir,
}

impl TestAgent {
    /// Agent `host` with VTEP `addr`, on the embedded KV at `kv` (shared by several test
    /// agents: one cluster) or a fresh one.
    pub async fn new(host: &str, addr: &str, kv: Option<&Path>) -> TestAgent {
        let dir = tempfile::tempdir().expect("temp dir");
        let kv_path = kv
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.path().join("kv.sqlite"));
        let kv = ovl_kv::open(None, &kv_path).await.expect("embedded KV");
        Self::with_kv(host, addr, kv, dir)
    }

    /// The same over a KV of the caller's (e.g. a [`FlakyKv`]), its dirs in `dir`.
    pub fn with_kv(
        host: &str,
        addr: &str,
        kv: Arc<dyn ovl_kv::Kv>,
        dir: tempfile::TempDir,
    ) -> TestAgent {
        let settings = Settings::resolve(Cli {
            host_id: Some(host.into()),
            advertise_addr: Some(addr.into()),
            run_dir: Some(dir.path().join("run")),
            state_dir: Some(dir.path().join("state")),
            // Only loops a test starts itself use it: relists every 6 s.
            resync_interval: Some(1),
            ..Default::default()
        })
        .expect("settings");
        let dp = Arc::new(FakeDatapath::default());
        let gw = Arc::new(FakeGateway::default());
        let names = Arc::new(FakeNames::default());
        let probe = Arc::new(FakeProbe::default());
        let tunnel = Arc::new(FakeTunnel::new(host));
        let health = Arc::new(FakeHealth::default());
        let wire = Arc::new(FakeWire::default());
        std::fs::create_dir_all(dir.path().join("state")).expect("state dir");
        let local = LocalState::load(dir.path().join("state/local.json")).expect("local state");
        let agent = Agent::new(
            settings,
            kv,
            crate::agent::Underlay {
                mtu: 1500,
                network: Some("198.18.0.0/24".parse().expect("a network")),
            },
            Services {
                datapath: dp.clone(),
                gateway: gw.clone(),
                names: names.clone(),
                probe: probe.clone(),
                tunnel: tunnel.clone(),
                health: health.clone(),
                wire: wire.clone(),
            },
            local,
        );
        TestAgent {
            agent,
            dp,
            gw,
            names,
            probe,
            tunnel,
            health,
            wire,
            dir,
        }
    }

    /// Publishes the KV's current state as the agent's view (what the sync loop does).
    pub async fn publish_view(&self) {
        let v = self.agent.store().view().await.expect("view");
        self.agent.publish(v);
        self.agent.set_ready();
    }
}

/// A KV whose listings of the whole cluster state fail while [`FlakyKv::fail_list`] is set
/// (as the one listing over gRPC's message cap did), and whose watches end with
/// [`ovl_kv::KvError::Compacted`] when [`FlakyKv::compact`] is notified (as a watch resumed
/// from a compacted revision does); everything else passed to the store inside.
pub struct FlakyKv {
    /// The real store.
    pub inner: Arc<dyn ovl_kv::Kv>,
    /// Whether listings of the cluster state fail.
    pub fail_list: std::sync::atomic::AtomicBool,
    /// Listings of the cluster state asked for.
    pub lists: std::sync::atomic::AtomicUsize,
    /// Ends every open watch with a compaction error.
    pub compact: Arc<tokio::sync::Notify>,
    /// Whether listings of the cluster state, once read, wait for [`FlakyKv::release`]
    /// before they answer (a slow listing of a large cluster).
    pub hold_list: std::sync::atomic::AtomicBool,
    /// Listings read and waiting for [`FlakyKv::release`].
    pub held: std::sync::atomic::AtomicUsize,
    /// Lets every held listing answer.
    pub release: tokio::sync::Notify,
    /// Whether transactions (deleting an endpoint with its address claim) fail as if the
    /// store stopped answering; reads still answer.
    pub fail_txn: std::sync::atomic::AtomicBool,
}

/// Whether a listing reads the cluster state (what the sync loop lists).
fn lists_view(prefixes: &[&str]) -> bool {
    prefixes == ovl_core::keys::VIEW || prefixes == [ovl_core::keys::ROOT]
}

impl FlakyKv {
    /// Over `inner`, nothing failing yet.
    pub fn new(inner: Arc<dyn ovl_kv::Kv>) -> Arc<FlakyKv> {
        Arc::new(FlakyKv {
            inner,
            fail_list: false.into(),
            lists: 0.into(),
            compact: Arc::default(),
            hold_list: false.into(),
            held: 0.into(),
            release: tokio::sync::Notify::new(),
            fail_txn: false.into(),
        })
    }
}

#[async_trait::async_trait]
impl ovl_kv::Kv for FlakyKv {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn get(&self, key: &str) -> ovl_kv::Result<Option<ovl_kv::KvEntry>> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> ovl_kv::Result<ovl_kv::Listing> {
        self.list_many(&[prefix]).await
    }
    async fn list_many(&self, prefixes: &[&str]) -> ovl_kv::Result<ovl_kv::Listing> {
        use std::sync::atomic::Ordering;
        if !lists_view(prefixes) {
            return self.inner.list_many(prefixes).await;
        }
        self.lists.fetch_add(1, Ordering::Relaxed);
        if self.fail_list.load(Ordering::Relaxed) {
            return Err(ovl_kv::KvError::Backend(
                "decoded message length too large: found 12700000 bytes, the limit is: 4194304 bytes".into(),
            ));
        }
        let listing = self.inner.list_many(prefixes).await?;
        if self.hold_list.load(Ordering::Relaxed) {
            let released = self.release.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            self.held.fetch_add(1, Ordering::Relaxed);
            released.await;
        }
        Ok(listing)
    }
    async fn put(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<ovl_kv::LeaseId>,
    ) -> ovl_kv::Result<ovl_kv::Revision> {
        self.inner.put(key, value, lease).await
    }
    async fn create(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<ovl_kv::LeaseId>,
    ) -> ovl_kv::Result<Option<ovl_kv::Revision>> {
        self.inner.create(key, value, lease).await
    }
    async fn cas(
        &self,
        key: &str,
        value: &[u8],
        expected: ovl_kv::Revision,
        lease: Option<ovl_kv::LeaseId>,
    ) -> ovl_kv::Result<Option<ovl_kv::Revision>> {
        self.inner.cas(key, value, expected, lease).await
    }
    async fn delete(&self, key: &str) -> ovl_kv::Result<bool> {
        self.inner.delete(key).await
    }
    async fn delete_cas(&self, key: &str, expected: ovl_kv::Revision) -> ovl_kv::Result<bool> {
        self.inner.delete_cas(key, expected).await
    }
    async fn txn(
        &self,
        compares: Vec<ovl_kv::Compare>,
        ops: Vec<ovl_kv::TxnOp>,
    ) -> ovl_kv::Result<Option<ovl_kv::Revision>> {
        if self.fail_txn.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(ovl_kv::KvError::Unreachable {
                store: self.inner.describe(),
                reason: "connection refused (test)".into(),
            });
        }
        self.inner.txn(compares, ops).await
    }
    async fn watch(
        &self,
        prefix: &str,
        from_revision: ovl_kv::Revision,
    ) -> ovl_kv::Result<ovl_kv::WatchStream> {
        use futures::StreamExt;
        let events = self.inner.watch(prefix, from_revision).await?;
        let compact = self.compact.clone();
        let compacted = futures::stream::once(async move {
            Err(ovl_kv::KvError::Compacted {
                requested: from_revision,
                compacted: from_revision + 1,
            })
        });
        Ok(Box::pin(
            events
                .take_until(async move { compact.notified().await })
                .chain(compacted),
        ))
    }
    async fn grant_lease(&self, ttl: std::time::Duration) -> ovl_kv::Result<ovl_kv::LeaseId> {
        self.inner.grant_lease(ttl).await
    }
    async fn keep_alive(&self, lease: ovl_kv::LeaseId) -> ovl_kv::Result<()> {
        self.inner.keep_alive(lease).await
    }
    async fn revoke(&self, lease: ovl_kv::LeaseId) -> ovl_kv::Result<()> {
        self.inner.revoke(lease).await
    }
    async fn lease_ttl(&self, lease: ovl_kv::LeaseId) -> ovl_kv::Result<Option<ovl_kv::LeaseTtl>> {
        self.inner.lease_ttl(lease).await
    }
    async fn health(&self) -> ovl_kv::Result<ovl_kv::Revision> {
        self.inner.health().await
    }
}
