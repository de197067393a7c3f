//! A simulated cluster around the netns lab, for scale tests and `bench scale`: hosts that
//! exist only as records in etcd, written through the same typed store the agents use, each
//! alive on a lease of its own that the generator keeps alive; their endpoints spread over
//! networks so that every network has endpoints of many hosts. The lab's real agents join a
//! few of those networks, and what their kernels hold is compared with what the records say
//! they must hold.
//!
//! Simulated VTEPs are in `198.18.4.0/22`, in the benchmarking block the lab's underlay
//! comes from, owned by no namespace: the lab's namespaces have no link out of the lab, and
//! its underlay namespace (every host's default route) blackholes that range, so a flood
//! towards a simulated host ends there.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use ovl_core::{
    AliveRecord, ClusterStore, ClusterView, EndpointRecord, HostRecord, NetworkRecord,
    ipam::{SubnetPool, mac_for},
    store::NetworkRequest,
};
use rand::{Rng, SeedableRng, seq::IteratorRandom};

use crate::lab::Lab;

/// The range of simulated VTEPs.
const SIM_VTEPS: &str = "198.18.4.0/22";
/// How many simulated hosts [`SIM_VTEPS`] holds.
pub const MAX_SIM_HOSTS: usize = 1022;

/// Simulated host `i`'s VTEP.
fn sim_vtep(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 4, 1)) + i as u32)
}
/// Lease TTL of a simulated host (kept alive every third of it).
const LEASE_TTL: Duration = Duration::from_secs(120);
/// The longest [`SimCluster::quiet`] window the leases survive.
pub const QUIET_MAX: Duration = Duration::from_secs(90);
/// Writers in flight while populating (one network each).
const WRITERS: usize = 16;

/// The size of a simulated cluster.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Simulated hosts (the lab's real ones come on top).
    pub hosts: usize,
    /// Endpoints per simulated host.
    pub per_host: usize,
    /// Endpoints per network (at most 250: one automatic /24 each).
    pub net_size: usize,
}

/// The simulated hosts and their endpoints, alive while this value lives.
pub struct SimCluster {
    store: ClusterStore,
    /// The networks, `sc0` upwards.
    pub nets: Vec<NetworkRecord>,
    /// The simulated hosts.
    pub hosts: Vec<HostRecord>,
    /// The simulated endpoints now in the KV, by (network, id).
    pub endpoints: BTreeMap<(String, String), EndpointRecord>,
    keeper: tokio::task::JoinHandle<()>,
    leases: Vec<i64>,
    paused: Arc<AtomicBool>,
    next_id: usize,
}

impl Drop for SimCluster {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// The network a simulated endpoint with global index `g` goes to, and its place there.
fn placement(g: usize, nets: usize) -> (usize, usize) {
    (g % nets, g / nets)
}

/// The `idx`-th endpoint address of `net` (after its gateway).
fn addr(net: &NetworkRecord, idx: usize) -> Result<Ipv4Addr> {
    let ip = u32::from(net.subnet.network()) + 2 + idx as u32;
    let ip = Ipv4Addr::from(ip);
    if !net.subnet.contains(ip) || ip == net.subnet.broadcast() {
        bail!("network {} ({}) is full at {idx}", net.name, net.subnet);
    }
    Ok(ip)
}

fn record(net: &NetworkRecord, id: &str, host: &str, ip: Ipv4Addr) -> EndpointRecord {
    EndpointRecord {
        id: id.into(),
        network: net.name.clone(),
        host: host.into(),
        name: id.into(),
        aliases: vec![],
        ip,
        mac: mac_for(ip),
        publish: vec![],
    }
}

impl SimCluster {
    /// Opens the store at `kv_url` and writes `shape`'s hosts (alive on leases kept alive from
    /// now on), networks and endpoints.
    pub async fn populate(kv_url: &str, shape: Shape) -> Result<SimCluster> {
        if shape.hosts > MAX_SIM_HOSTS {
            bail!(
                "at most {MAX_SIM_HOSTS} simulated hosts fit {SIM_VTEPS} ({} asked)",
                shape.hosts
            );
        }
        if shape.net_size == 0 || shape.net_size > 250 {
            bail!(
                "endpoints per network must be 1 to 250 ({})",
                shape.net_size
            );
        }
        let kv = ovl_kv::open(Some(kv_url), Path::new("/nonexistent"))
            .await
            .context("opening the KV")?;
        let store = ClusterStore::new(kv, SubnetPool::default());
        let hosts: Vec<HostRecord> = (0..shape.hosts)
            .map(|i| HostRecord {
                id: format!("s{i}"),
                vtep: sim_vtep(i),
                underlay_mtu: 1500,
                datapath: "kernel".into(),
                version: "sim".into(),
                gw_subnet: None,
                wg: None,
            })
            .collect();
        let mut leases = Vec::new();
        for h in &hosts {
            store.put_host(h).await?;
            let lease = store.grant_lease(LEASE_TTL).await?;
            store
                .put_alive(
                    &AliveRecord {
                        id: h.id.clone(),
                        boot_id: "sim".into(),
                        since: 0,
                    },
                    lease,
                )
                .await?;
            leases.push(lease);
        }
        let paused = Arc::new(AtomicBool::new(false));
        let keeper = tokio::spawn(keep_alive(store.clone(), leases.clone(), paused.clone()));

        let total = shape.hosts * shape.per_host;
        let n_nets = total.div_ceil(shape.net_size).max(1);
        let mut nets = Vec::new();
        for j in 0..n_nets {
            let name = format!("sc{j}");
            let net = match store.network(&name).await? {
                Some(n) => n,
                None => {
                    store
                        .create_network(&NetworkRequest {
                            name,
                            ..Default::default()
                        })
                        .await?
                }
            };
            nets.push(net);
        }
        // One writer per network (claims on one network serialise anyway), many networks at
        // once: etcd batches their commits.
        let mut per_net: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n_nets];
        for g in 0..total {
            let (j, idx) = placement(g, n_nets);
            per_net[j].push((g, idx));
        }
        let written: Vec<Vec<EndpointRecord>> =
            futures::stream::iter(per_net.into_iter().enumerate())
                .map(|(j, eps)| {
                    let (store, net, hosts) = (&store, &nets[j], &hosts);
                    async move {
                        let mut out = Vec::new();
                        for (g, idx) in eps {
                            let host = &hosts[g / shape.per_host].id;
                            let ip = addr(net, idx)?;
                            let id = format!("e{g}");
                            let rec = store
                                .create_endpoint_with_addr(net, &id, Some(ip), |ip| {
                                    record(net, &id, host, ip)
                                })
                                .await
                                .with_context(|| format!("endpoint {id} on {}", net.name))?;
                            out.push(rec);
                        }
                        anyhow::Ok(out)
                    }
                })
                .buffer_unordered(WRITERS)
                .try_collect()
                .await?;
        let endpoints = written
            .into_iter()
            .flatten()
            .map(|e| ((e.network.clone(), e.id.clone()), e))
            .collect();
        Ok(SimCluster {
            store,
            nets,
            hosts,
            endpoints,
            keeper,
            leases,
            paused,
            next_id: total,
        })
    }

    /// The typed store the cluster was written through.
    pub fn store(&self) -> &ClusterStore {
        &self.store
    }

    /// Renews every simulated host's lease now, and stops renewing them until
    /// [`SimCluster::resume`] (at most [`QUIET_MAX`]): a window in which every request etcd
    /// serves comes from the real agents.
    pub async fn quiet(&self) -> Result<()> {
        for &l in &self.leases {
            self.store.keep_alive(l).await?;
        }
        self.paused.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Renews the leases again, after [`SimCluster::quiet`].
    pub async fn resume(&self) -> Result<()> {
        for &l in &self.leases {
            self.store.keep_alive(l).await?;
        }
        self.paused.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Adds one endpoint of a random simulated host on `net`.
    pub async fn add(&mut self, net: &str, rng: &mut impl Rng) -> Result<EndpointRecord> {
        let net = self
            .nets
            .iter()
            .find(|x| x.name == net)
            .with_context(|| format!("no network {net}"))?
            .clone();
        let host = self.hosts[rng.random_range(0..self.hosts.len())].id.clone();
        let id = format!("e{}", self.next_id);
        self.next_id += 1;
        let rec = self
            .store
            .create_endpoint_with_addr(&net, &id, None, |ip| record(&net, &id, &host, ip))
            .await
            .with_context(|| format!("endpoint {id} on {}", net.name))?;
        self.endpoints.insert((net.name.clone(), id), rec.clone());
        Ok(rec)
    }

    /// Removes one simulated endpoint.
    pub async fn remove(&mut self, net: &str, id: &str) -> Result<()> {
        self.store.delete_endpoint(net, id).await?;
        self.endpoints.remove(&(net.to_string(), id.to_string()));
        Ok(())
    }

    /// Removes `n` random simulated endpoints and adds `n` new ones on random networks and
    /// hosts, `on` getting at least a tenth of each (so the lab's networks see churn);
    /// returns how many writes that took.
    pub async fn churn(&mut self, n: usize, on: &[&str], seed: u64) -> Result<usize> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let focus = n.div_ceil(10);
        let mut gone = Vec::new();
        for k in 0..n {
            let pick = if k < focus && !on.is_empty() {
                let net = on[k % on.len()];
                self.endpoints
                    .keys()
                    .filter(|(n, _)| n == net)
                    .choose(&mut rng)
                    .cloned()
            } else {
                self.endpoints.keys().choose(&mut rng).cloned()
            };
            if let Some(key) = pick {
                self.endpoints.remove(&key);
                gone.push(key);
            }
        }
        for (net, id) in &gone {
            self.store.delete_endpoint(net, id).await?;
        }
        for k in 0..n {
            let net = if k < focus && !on.is_empty() {
                on[k % on.len()].to_string()
            } else {
                self.nets[rng.random_range(0..self.nets.len())].name.clone()
            };
            self.add(&net, &mut rng).await?;
        }
        Ok(gone.len() + n)
    }
}

async fn keep_alive(store: ClusterStore, leases: Vec<i64>, paused: Arc<AtomicBool>) {
    loop {
        tokio::time::sleep(LEASE_TTL / 3).await;
        if paused.load(Ordering::Relaxed) {
            continue;
        }
        for &l in &leases {
            if let Err(e) = store.keep_alive(l).await {
                eprintln!("keeping a simulated host's lease {l:x} alive: {e}");
            }
        }
    }
}

/// What host `me` must hold for network `net`, from the KV's records: a forwarding entry and
/// a neighbour per endpoint of another live host, and one flood entry per such host's VTEP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entries {
    /// (MAC, VTEP) forwarding entries.
    pub fdb: BTreeSet<(String, Ipv4Addr)>,
    /// (IP, MAC) neighbours.
    pub neigh: BTreeSet<(Ipv4Addr, String)>,
    /// VTEPs flooded to.
    pub flood: BTreeSet<Ipv4Addr>,
}

impl Entries {
    /// How the two differ, in a line (empty: equal).
    pub fn diff(&self, actual: &Entries) -> String {
        [
            set_diff("fdb", &self.fdb, &actual.fdb),
            set_diff("neigh", &self.neigh, &actual.neigh),
            set_diff("flood", &self.flood, &actual.flood),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("; ")
    }
}

/// How one set of entries differs from the wanted one (`None`: equal).
fn set_diff<T: Ord>(what: &str, want: &BTreeSet<T>, have: &BTreeSet<T>) -> Option<String> {
    (want != have).then(|| {
        format!(
            "{what}: {} wanted, {} missing, {} extra",
            want.len(),
            want.difference(have).count(),
            have.difference(want).count()
        )
    })
}

/// Every watched (lab host, network) pair's entries against a fresh listing of the KV;
/// `None` when all are exact, else one line per pair that is not.
pub fn mismatch(
    lab: &Lab,
    sim: &SimCluster,
    rt: &tokio::runtime::Runtime,
    watched: &[(usize, &str)],
) -> Result<Option<String>> {
    let view = rt.block_on(sim.store().view())?;
    let mut out = Vec::new();
    for &(i, net) in watched {
        let want = expected(&view, &lab.host(i).id, net);
        match actual(lab, i, net) {
            Ok(have) if have == want => {}
            Ok(have) => out.push(format!("h{} {net}: {}", i + 1, want.diff(&have))),
            Err(e) => out.push(format!("h{} {net}: {e:#}", i + 1)),
        }
    }
    Ok((!out.is_empty()).then(|| out.join("; ")))
}

/// The entries `me` must hold on `net` according to `view` (a fresh listing of the KV).
pub fn expected(view: &ClusterView, me: &str, net: &str) -> Entries {
    let mut e = Entries::default();
    for ep in view.endpoints_on(net) {
        if ep.host == me || !view.is_alive(&ep.host) {
            continue;
        }
        let Some(h) = view.hosts.get(&ep.host) else {
            continue;
        };
        let mac = ep.mac.to_string();
        e.fdb.insert((mac.clone(), h.vtep));
        e.neigh.insert((ep.ip, mac));
        e.flood.insert(h.vtep);
    }
    e
}

/// What the kernel of lab host `i` holds for `net` (kernel datapath: `vxlan0` in the
/// network's sandbox namespace), read with `bridge` and `ip`.
pub fn actual(lab: &Lab, i: usize, net: &str) -> Result<Entries> {
    let sb = lab.sandbox(i, net);
    let json = |args: &[&str]| -> Result<serde_json::Value> {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", sb.display()))
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "{} in {}: {}",
                args.join(" "),
                sb.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let mut e = Entries::default();
    let fdb = json(&["bridge", "-j", "fdb", "show", "dev", "vxlan0"])?;
    for f in fdb.as_array().into_iter().flatten() {
        let (Some(mac), Some(dst)) = (f["mac"].as_str(), f["dst"].as_str()) else {
            continue;
        };
        let dst: Ipv4Addr = dst.parse().with_context(|| format!("fdb dst {dst}"))?;
        if mac == "00:00:00:00:00:00" {
            e.flood.insert(dst);
        } else {
            e.fdb.insert((mac.to_string(), dst));
        }
    }
    let neigh = json(&["ip", "-j", "neigh", "show", "dev", "vxlan0"])?;
    for n in neigh.as_array().into_iter().flatten() {
        let (Some(ip), Some(mac)) = (n["dst"].as_str(), n["lladdr"].as_str()) else {
            continue;
        };
        e.neigh.insert((ip.parse()?, mac.to_string()));
    }
    Ok(e)
}

/// A tokio runtime for the generator whose threads live in the network namespace of lab
/// `lab`'s underlay, where etcd listens (xtask itself is synchronous). Connections are made
/// by the runtime's threads; [`populate_in`] runs the whole population there too.
pub fn runtime(lab: &Lab) -> Result<tokio::runtime::Runtime> {
    let path = format!("/run/netns/{}-ul", lab.state.name);
    let ns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    let ns = std::sync::Arc::new(ns);
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || {
            // A thread left in the caller's namespace would reach another etcd, or none.
            if let Err(e) = nix::sched::setns(&*ns, nix::sched::CloneFlags::CLONE_NEWNET) {
                panic!("entering the lab's underlay namespace: {e}");
            }
        })
        .build()?)
}

/// [`SimCluster::populate`] on `rt`'s own threads (in the lab's underlay namespace), after
/// blackholing the simulated VTEPs there.
pub fn populate_in(rt: &tokio::runtime::Runtime, lab: &Lab, shape: Shape) -> Result<SimCluster> {
    let ul = format!("{}-ul", lab.state.name);
    crate::sh::run(Command::new("ip").args([
        "-n",
        &ul,
        "route",
        "replace",
        "blackhole",
        SIM_VTEPS,
    ]))?;
    let url = lab.state.kv_url.clone();
    rt.block_on(rt.spawn(async move { SimCluster::populate(&url, shape).await }))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_vteps_stay_in_their_range() {
        let range: ipnetwork::Ipv4Network = SIM_VTEPS.parse().unwrap();
        assert_eq!(sim_vtep(0), Ipv4Addr::new(198, 18, 4, 1));
        let last = sim_vtep(MAX_SIM_HOSTS - 1);
        assert!(range.contains(last) && last != range.broadcast(), "{last}");
    }

    #[test]
    fn endpoints_spread_over_every_network_and_hosts_over_networks() {
        let (nets, per_host) = (5, 10);
        let mut per_net = vec![BTreeSet::new(); nets];
        for g in 0..50 {
            let (j, idx) = placement(g, nets);
            assert!(per_net[j].insert(idx), "one place per index");
            let _host = g / per_host;
        }
        assert!(per_net.iter().all(|s| s.len() == 10));
        // Host 0's ten endpoints land on all five networks.
        let of_host0: BTreeSet<usize> = (0..per_host).map(|g| placement(g, nets).0).collect();
        assert_eq!(of_host0.len(), nets);
    }
}
