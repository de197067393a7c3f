//! Probing, loading and adopting the programs; their pinned TCX links; tearing down.

use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::maps::{Array, MapData, MapError};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, ProgramError, SchedClassifier, TcAttachType, TestRun};
use aya::{Ebpf, EbpfLoader};
use ovl_model::{VXLAN_OVERHEAD, VXLAN_PORT};
use ovl_netlink::sync as netlink;

use crate::devices::{HEADROOM_BRIDGE, HEADROOM_DEV, ensure_headroom_bridge, ensure_vxlan};
use crate::error::{Error, Result, Unsupported, UnsupportedReason, collect, map_err, prog_err};
use crate::raw::*;
use crate::{slots, sys};

/// The compiled BPF object (the three programs and all maps).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/overlay.bpf.o"));

pub(crate) const LXC: &str = "lxc_egress";
pub(crate) const VXI: &str = "vxlan_ingress";
pub(crate) const VTI: &str = "vtep_ingress";

/// Which program to run with [`EbpfDatapath::test_run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramKind {
    /// `lxc_egress`.
    LxcEgress,
    /// `vxlan_ingress`.
    VxlanIngress,
    /// `vtep_ingress` (underlay interface; returns -1, "next", for frames it leaves alone).
    VtepIngress,
}

impl ProgramKind {
    fn name(self) -> &'static str {
        match self {
            ProgramKind::LxcEgress => "lxc_egress",
            ProgramKind::VxlanIngress => "vxlan_ingress",
            ProgramKind::VtepIngress => VTI,
        }
    }
}

/// Result of [`EbpfDatapath::test_run`].
#[derive(Debug, Clone)]
pub struct TestRunOutput {
    /// The tc verdict (`TC_ACT_*`: 0 ok, 2 shot, 7 redirect).
    pub verdict: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    /// The last decision (only with [`LoadOptions::trace`]).
    pub trace: Option<RawTrace>,
}

/// `TC_ACT_SHOT`.
pub const TC_ACT_SHOT: u32 = 2;
/// `TC_ACT_REDIRECT`.
pub const TC_ACT_REDIRECT: u32 = 7;

/// Trace actions (`enum ovl_action`).
pub mod action {
    /// Dropped (`RawTrace::ifindex` holds the counter index).
    pub const DROP: u32 = 1;
    /// Redirected to a local endpoint (`RawTrace::ifindex`).
    pub const REDIRECT_LOCAL: u32 = 2;
    /// Encapsulated (`ifindex` = vxlan device, `tunnel_id`, `remote_ipv4`).
    pub const ENCAP: u32 = 3;
    /// Replicated (`copies`).
    pub const FLOOD: u32 = 4;
    /// ARP answered in BPF.
    pub const ARP_REPLY: u32 = 5;
}

/// Load-time options.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Record each program's last decision in the (unpinned) `TRACE` map; for tests and
    /// debugging, costs one map write per packet.
    pub trace: bool,
    /// UDP port of the vxlan device ([`VXLAN_PORT`] unless the whole cluster uses another).
    pub vxlan_port: u16,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            trace: false,
            vxlan_port: VXLAN_PORT,
        }
    }
}

/// The loaded fast path of one host.
///
/// Dropping it (agent exit) leaves the datapath running: maps and links stay pinned and the
/// next [`EbpfDatapath::load`] on the same pin directory adopts them. Only
/// [`EbpfDatapath::teardown`] and [`EbpfDatapath::detach_endpoint`] remove things.
/// It is `Send`; calls taking interface indexes act in the calling thread's network namespace.
pub struct EbpfDatapath {
    /// Handles on the slot arrays (their own fds).
    pub(crate) slots: slots::Slots,
    pub(crate) bpf: Ebpf,
    pub(crate) pin_dir: PathBuf,
    pub(crate) vxlan_ifindex: u32,
    pub(crate) underlay_ifindex: Option<u32>,
    pub(crate) mtu: u32,
    pub(crate) trace: bool,
    pub(crate) load_warnings: Vec<String>,
    /// The headroom bridge's ifindex; `None` if it could not be set up (a warning says why).
    pub(crate) headroom_bridge: Option<u32>,
}

impl fmt::Debug for EbpfDatapath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EbpfDatapath")
            .field("pin_dir", &self.pin_dir)
            .field("vxlan_ifindex", &self.vxlan_ifindex)
            .field("underlay_ifindex", &self.underlay_ifindex)
            .field("mtu", &self.mtu)
            .finish()
    }
}

impl EbpfDatapath {
    /// Checks whether the fast path can run here, and says exactly why not: capabilities,
    /// bpffs (mounted at /sys/fs/bpf if absent), kernel version, and a full load of the
    /// programs through the verifier (with maps in a scratch pin directory, removed after).
    /// Kernel BTF is not needed: the programs use UAPI headers only, no CO-RE.
    pub fn probe() -> Result<(), Unsupported> {
        let fail = |reason| Err(Unsupported { reason });
        if let Ok(status) = std::fs::read_to_string("/proc/self/status")
            && let Some(eff) = sys::parse_cap_eff(&status)
        {
            let missing = sys::missing_caps(eff);
            if !missing.is_empty() {
                return fail(UnsupportedReason::MissingCapabilities(
                    missing.into_iter().map(String::from).collect(),
                ));
            }
        }
        if let Err(e) = sys::ensure_bpffs_mounted() {
            return fail(UnsupportedReason::NoBpffs(e.to_string()));
        }
        match aya::util::KernelVersion::current() {
            Ok(v) if v < aya::util::KernelVersion::new(6, 6, 0) => {
                return fail(UnsupportedReason::KernelTooOld {
                    found: format!("{v:?}"),
                    need: "6.6",
                });
            }
            _ => {}
        }
        // bpffs refuses names starting with '.'; pid + counter keeps concurrent probes apart.
        static PROBES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let scratch = PathBuf::from(format!("/sys/fs/bpf/ovl-probe-{}-{n}", std::process::id()));
        if let Err(e) = std::fs::create_dir_all(&scratch) {
            return fail(UnsupportedReason::NoBpffs(format!(
                "creating {}: {e}",
                scratch.display()
            )));
        }
        let result = (|| {
            let mut bpf = loader()
                .map_err(|e| UnsupportedReason::LoadFailed(e.to_string()))?
                .default_map_pin_directory(&scratch)
                .load(OBJECT)
                .map_err(|e| UnsupportedReason::LoadFailed(e.to_string()))?;
            for name in [LXC, VXI, VTI] {
                let prog: &mut SchedClassifier = bpf
                    .program_mut(name)
                    .ok_or_else(|| UnsupportedReason::LoadFailed(format!("{name} missing")))?
                    .try_into()
                    .map_err(|e: ProgramError| UnsupportedReason::LoadFailed(e.to_string()))?;
                if let Err(e) = prog.load() {
                    return Err(match e {
                        ProgramError::LoadError {
                            io_error,
                            verifier_log,
                        } => {
                            let log = verifier_log.to_string();
                            let lines: Vec<&str> = log.lines().collect();
                            let tail = lines[lines.len().saturating_sub(20)..].join("\n");
                            UnsupportedReason::VerifierRejected {
                                program: name.to_string(),
                                log_excerpt: format!("{io_error}\n{tail}"),
                            }
                        }
                        other => UnsupportedReason::LoadFailed(other.to_string()),
                    });
                }
            }
            Ok(())
        })();
        // The scratch pins are only the probe's: a failure to remove them changes nothing
        // about the answer, but leaves files behind, so it is said.
        if let Err(e) = remove_pin_dir(&scratch) {
            log::warn!(
                "removing the probe's scratch pins {}: {e}",
                scratch.display()
            );
        }
        result.map_err(|reason| Unsupported { reason })
    }

    /// Loads (or adopts) the fast path with default options; see [`EbpfDatapath::load_with`].
    pub fn load(pin_dir: &Path, vxlan_name: &str, local_vtep: Ipv4Addr, mtu: u32) -> Result<Self> {
        Self::load_with(
            pin_dir,
            vxlan_name,
            local_vtep,
            mtu,
            &LoadOptions::default(),
        )
    }

    /// Loads the fast path, or adopts one a previous agent left behind.
    ///
    /// * `pin_dir`: a directory on bpffs (e.g. `/sys/fs/bpf/overlay-agent`); bpffs is mounted
    ///   at /sys/fs/bpf if absent. Maps are pinned here and links under `links/`.
    /// * `vxlan_name`: the collect-metadata vxlan device, created if absent (`external`,
    ///   dstport [`LoadOptions::vxlan_port`], learning off, source `local_vtep`), adopted if
    ///   present.
    /// * `mtu`: the overlay MTU (underlay MTU - 50): the vxlan device's MTU and the largest MTU
    ///   an endpoint may have ([`Error::MtuTooLarge`]).
    ///
    /// Adoption: pinned maps are reused as they are, and every pinned link (vxlan device and
    /// endpoints) is switched atomically to the freshly loaded programs, so traffic keeps
    /// flowing. Links whose interface vanished are unpinned.
    pub fn load_with(
        pin_dir: &Path,
        vxlan_name: &str,
        local_vtep: Ipv4Addr,
        mtu: u32,
        opts: &LoadOptions,
    ) -> Result<Self> {
        if vxlan_name.is_empty()
            || vxlan_name.len() >= libc::IF_NAMESIZE
            || vxlan_name.contains('/')
        {
            return Err(Error::InvalidInput(format!(
                "invalid interface name {vxlan_name:?}"
            )));
        }
        validate_unicast_ip(local_vtep, "local VTEP")?;
        if !(68..=65_535 - VXLAN_OVERHEAD).contains(&mtu) {
            return Err(Error::InvalidInput(format!(
                "overlay MTU {mtu} out of range"
            )));
        }

        sys::ensure_bpffs_mounted().map_err(|source| Error::Bpffs {
            context: "mounting bpffs at /sys/fs/bpf".into(),
            source,
        })?;
        std::fs::create_dir_all(pin_dir.join("links")).map_err(|source| Error::Bpffs {
            context: format!("creating {}", pin_dir.display()),
            source,
        })?;
        match sys::is_bpffs(pin_dir) {
            Ok(true) => {}
            Ok(false) => {
                return Err(Error::Bpffs {
                    context: format!("{} is not on a bpf filesystem", pin_dir.display()),
                    source: io::Error::from(io::ErrorKind::InvalidInput),
                });
            }
            Err(source) => {
                return Err(Error::Bpffs {
                    context: format!("statfs {}", pin_dir.display()),
                    source,
                });
            }
        }

        if opts.vxlan_port == 0 {
            return Err(Error::InvalidInput("VXLAN UDP port 0".into()));
        }
        let vxlan_ifindex = ensure_vxlan(vxlan_name, local_vtep, opts.vxlan_port, mtu)?;
        // The interface holding the VTEP address receives the VXLAN frames: known unicast is
        // decapsulated there. Without one (a VTEP reached through NAT, say) every frame takes
        // the vxlan device, which is only slower.
        let underlay_ifindex = sys::addr_owner(local_vtep).map_err(|source| Error::Netlink {
            context: format!("finding the interface that holds {local_vtep}"),
            source,
        })?;

        let trace: u32 = u32::from(opts.trace);
        let mut bpf = loader()
            .map_err(|source| Error::Cpus { source })?
            .default_map_pin_directory(pin_dir)
            .override_global("trace_enabled", &trace, true)
            .load(OBJECT)?;

        {
            let mut cfg: Array<&mut MapData, RawConfig> =
                Array::try_from(bpf.map_mut("CONFIG").expect("CONFIG in object"))
                    .map_err(map_err("CONFIG"))?;
            let pinned = cfg.get(&0, 0).map_err(map_err("CONFIG"))?;
            if pinned.abi_version != 0 && pinned.abi_version != ABI_VERSION {
                return Err(Error::Conflict(format!(
                    "the maps pinned in {} have layout version {}, this build uses {}; \
                     remove them (EbpfDatapath::teardown) to switch",
                    pin_dir.display(),
                    pinned.abi_version,
                    ABI_VERSION
                )));
            }
            cfg.set(
                0,
                RawConfig {
                    vxlan_ifindex,
                    abi_version: ABI_VERSION,
                    local_vtep: u32::from_ne_bytes(local_vtep.octets()),
                    vxlan_port: opts.vxlan_port.to_be(),
                    pad: 0,
                    underlay_ifindex: underlay_ifindex.unwrap_or(0),
                    endpoint_mtu: mtu,
                },
                0,
            )
            .map_err(map_err("CONFIG"))?;
        }
        let slots = slots::Slots {
            ep: slot_table(&bpf, "EP_SLOTS", EP_SLOTS)?,
            remote: slot_table(&bpf, "REMOTE_SLOTS", REMOTE_SLOTS)?,
            local: slot_table(&bpf, "LOCAL_SLOTS", LOCAL_SLOTS)?,
        };
        for name in [LXC, VXI, VTI] {
            let prog: &mut SchedClassifier = bpf
                .program_mut(name)
                .expect("program in object")
                .try_into()
                .map_err(prog_err(name))?;
            prog.load().map_err(prog_err(name))?;
        }

        // Pins of links to an older vxlan device (recreated while we were away) are stale.
        let mut errors = Vec::new();
        let headroom_bridge = match ensure_headroom_bridge() {
            Ok(i) => Some(i),
            Err(e) => {
                errors.push(e);
                None
            }
        };
        let mut dp = EbpfDatapath {
            slots,
            bpf,
            pin_dir: pin_dir.to_path_buf(),
            vxlan_ifindex,
            underlay_ifindex,
            mtu,
            trace: opts.trace,
            load_warnings: Vec::new(),
            headroom_bridge,
        };

        for (kind, ifindex, path) in dp.pinned_links()? {
            let stale = match kind {
                LinkKind::Vxlan => ifindex != vxlan_ifindex,
                LinkKind::Vtep => Some(ifindex) != underlay_ifindex,
                LinkKind::Lxc => false,
            };
            if stale && let Err(e) = unpin_link(&path) {
                errors.push(e);
            }
        }
        dp.attach(VXI, vxlan_ifindex)?;
        if let Some(ul) = underlay_ifindex {
            dp.attach(VTI, ul)?;
        }

        // Re-point every endpoint link at the new program. Endpoints whose interface vanished
        // while no agent ran are removed (link pin and map entries); endpoints without a pin
        // (a crash between map update and pinning) are attached.
        let state = dp.dump()?;
        let mut ifindexes: Vec<u32> = state.endpoints.keys().copied().collect();
        ifindexes.extend(&state.attached_links);
        ifindexes.sort_unstable();
        ifindexes.dedup();
        for ifindex in ifindexes {
            let link = match netlink::link_by_index(ifindex) {
                Ok(l) => l,
                Err(source) => {
                    errors.push(Error::Netlink {
                        context: format!("looking up interface {ifindex}"),
                        source,
                    });
                    continue;
                }
            };
            let r = if let Some(l) = link.filter(|_| state.endpoints.contains_key(&ifindex)) {
                if l.master != dp.headroom_bridge {
                    dp.give_headroom(ifindex);
                }
                dp.attach(LXC, ifindex)
            } else {
                dp.detach_endpoint(ifindex)
            };
            if let Err(e) = r {
                errors.push(e);
            }
        }
        if let Err(e) = dp.sync_slots() {
            errors.push(e);
        }
        for e in &errors {
            log::warn!("adopting the pinned eBPF datapath: {e}");
        }
        dp.load_warnings = errors.iter().map(|e| e.to_string()).collect();
        Ok(dp)
    }

    /// Problems met while adopting a pinned datapath that did not prevent loading (e.g. an
    /// endpoint link that could not be re-pointed keeps running the previous program).
    pub fn load_warnings(&self) -> &[String] {
        &self.load_warnings
    }

    /// The pin directory.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// ifindex of the vxlan device.
    pub fn vxlan_ifindex(&self) -> u32 {
        self.vxlan_ifindex
    }

    /// ifindex of the underlay interface running `vtep_ingress` (the one holding the local
    /// VTEP address), if there is one.
    pub fn underlay_ifindex(&self) -> Option<u32> {
        self.underlay_ifindex
    }

    /// The overlay MTU.
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    pub(crate) fn link_path(&self, program: &str, ifindex: u32) -> PathBuf {
        let prefix = match program {
            VXI => "vxlan",
            VTI => "vtep",
            _ => "lxc",
        };
        self.pin_dir
            .join("links")
            .join(format!("{prefix}_{ifindex}"))
    }

    pub(crate) fn pinned_links(&self) -> Result<Vec<(LinkKind, u32, PathBuf)>> {
        let dir = self.pin_dir.join("links");
        let rd = std::fs::read_dir(&dir).map_err(|source| Error::Bpffs {
            context: format!("listing {}", dir.display()),
            source,
        })?;
        let mut out = Vec::new();
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some((kind, idx)) = parse_link_pin(&name) {
                out.push((kind, idx, entry.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Attaches `program` to tc ingress of `ifindex` and pins the link; if a pinned link
    /// exists, swaps its program atomically instead (idempotent, no traffic gap).
    pub(crate) fn attach(&mut self, program: &'static str, ifindex: u32) -> Result<()> {
        let path = self.link_path(program, ifindex);
        let prog: &mut SchedClassifier = self
            .bpf
            .program_mut(program)
            .expect("program in object")
            .try_into()
            .map_err(prog_err(program))?;
        if path.exists() {
            let link_err = |detail: String| Error::Link {
                path: path.clone(),
                detail,
            };
            let pinned =
                PinnedLink::from_pin(&path).map_err(|e| link_err(format!("opening: {e}")))?;
            let fd: FdLink = pinned.into();
            let link = SchedClassifierLink::try_from(fd)
                .map_err(|e| link_err(format!("not a tc link: {e}")))?;
            match prog.attach_to_link(link) {
                Ok(id) => {
                    // The pin keeps the link; holding its fd here too would keep it attached
                    // after detach_endpoint unpins it.
                    drop(prog.take_link(id).map_err(prog_err(program))?);
                    return Ok(());
                }
                Err(e) => {
                    // A defunct link (its interface was replaced): start over.
                    log::warn!(
                        "replacing program on {} failed ({e}); re-attaching",
                        path.display()
                    );
                    unpin_link(&path)?;
                }
            }
        }
        let name = sys::ifname(ifindex).map_err(|_| Error::NoSuchLink(ifindex))?;
        // The underlay interface is shared with whatever else the host runs there: go last,
        // and pass on what is not ours. The other interfaces are the agent's own.
        let order = if program == VTI {
            LinkOrder::last()
        } else {
            LinkOrder::first()
        };
        let id = prog
            .attach_with_options(
                &name,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(order),
            )
            .map_err(prog_err(program))?;
        let link = prog.take_link(id).map_err(prog_err(program))?;
        let fd: FdLink = link.try_into().map_err(|e| Error::Link {
            path: path.clone(),
            detail: format!("not an fd link: {e}"),
        })?;
        fd.pin(&path).map_err(|e| Error::Link {
            path: path.clone(),
            detail: format!("pinning: {e}"),
        })?;
        Ok(())
    }

    /// Runs a program once on `frame` with `BPF_PROG_TEST_RUN`, as if it arrived on
    /// `ifindex` (which must exist in the calling thread's network namespace). Redirects are
    /// only decided, not performed; `bpf_clone_redirect` copies ARE sent. Maps and counters
    /// are the live ones.
    pub fn test_run(
        &self,
        program: ProgramKind,
        ifindex: u32,
        frame: &[u8],
    ) -> Result<TestRunOutput> {
        let name = program.name();
        let prog: &SchedClassifier = self
            .bpf
            .program(name)
            .expect("program in object")
            .try_into()
            .map_err(prog_err(name))?;
        // struct __sk_buff is 192 bytes; `ifindex` is at offset 40. The kernel only accepts
        // a few non-zero fields there, ifindex being one: it selects skb->dev.
        let mut ctx = [0u8; 192];
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let mut out = vec![0u8; frame.len() + 256];
        let res = prog
            .test_run(aya::programs::TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..Default::default()
            })
            .map_err(prog_err(name))?;
        out.truncate(res.data_size_out as usize);
        let trace = if self.trace {
            let t: Array<&MapData, RawTrace> =
                Array::try_from(self.map("TRACE")?).map_err(map_err("TRACE"))?;
            Some(t.get(&0, 0).map_err(map_err("TRACE"))?)
        } else {
            None
        };
        Ok(TestRunOutput {
            verdict: res.return_value,
            frame: out,
            trace,
        })
    }

    /// Removes the whole fast path: every pinned link (programs detach), the pinned maps, the
    /// pin directory and the vxlan device. Reports every failed step. For switching a host
    /// back to the kernel path, and for tests.
    pub fn teardown(self) -> Result<()> {
        let mut errors = Vec::new();
        match self.pinned_links() {
            Ok(links) => {
                for (_, _, path) in links {
                    if let Err(e) = unpin_link(&path) {
                        errors.push(e);
                    }
                }
            }
            Err(e) => errors.push(e),
        }
        let pin_dir = self.pin_dir.clone();
        let vxlan = self.vxlan_ifindex;
        drop(self);
        for name in [HEADROOM_DEV, HEADROOM_BRIDGE] {
            let r = netlink::link_by_name(name)
                .and_then(|l| l.map_or(Ok(()), |l| netlink::delete_link(l.index)));
            if let Err(source) = r {
                errors.push(Error::Netlink {
                    context: format!("deleting {name}"),
                    source,
                });
            }
        }
        if let Err(e) = remove_pin_dir(&pin_dir) {
            errors.push(e);
        }
        if let Err(source) = netlink::delete_link(vxlan) {
            errors.push(Error::Netlink {
                context: format!("deleting vxlan device {vxlan}"),
                source,
            });
        }
        collect(errors)
    }
}

/// A loader of the object with `COUNTERS` sized to one row per possible CPU.
fn loader<'a>() -> io::Result<EbpfLoader<'a>> {
    let cpus = aya::util::nr_cpus()
        .map_err(|(what, e)| io::Error::new(e.kind(), format!("{what}: {e}")))?;
    let cpus = u32::try_from(cpus).map_err(|_| io::Error::other("too many CPUs"))?;
    let mut l = EbpfLoader::new();
    l.map_max_entries("COUNTERS", cpus.saturating_mul(COUNTER_ROW));
    Ok(l)
}

/// Opens the slot array `name` of a loaded object.
fn slot_table<T: slots::Slot>(
    bpf: &Ebpf,
    name: &'static str,
    entries: u32,
) -> Result<slots::SlotTable<T>> {
    let data = match bpf.map(name) {
        Some(aya::maps::Map::Array(d)) => d,
        _ => {
            return Err(Error::Map {
                map: name,
                source: MapError::InvalidName {
                    name: name.to_string(),
                },
            });
        }
    };
    slots::SlotTable::open(data, entries).map_err(map_err(name))
}

/// Removes a pin directory: the files in `links/` and the pinned maps (bpffs allows unlink and
/// rmdir of pins). Missing is fine; a pin directory that is a bpffs mount point of its own
/// stays, empty (unmounting it is for whoever mounted it).
pub(crate) fn remove_pin_dir(dir: &Path) -> Result<()> {
    remove_pin_dir_contents(dir)?;
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
        Err(source) => Err(Error::Bpffs {
            context: format!("removing {}", dir.display()),
            source,
        }),
    }
}

/// Files the kernel puts at the root of every bpffs instance (`bpf_preload`'s iterators);
/// they cannot be removed, and are not ours.
const PRELOAD_FILES: [&str; 2] = ["maps.debug", "progs.debug"];

/// Removes the pins under a pin directory (the link pins first, so the programs detach), and
/// its `links/` directory; the directory itself stays (it may be a mount point).
pub(crate) fn remove_pin_dir_contents(dir: &Path) -> Result<()> {
    let mut errors = Vec::new();
    let links = dir.join("links");
    for d in [&links, &dir.to_path_buf()] {
        match std::fs::read_dir(d) {
            Ok(rd) => {
                for e in rd.flatten() {
                    let p = e.path();
                    if p.is_dir() || PRELOAD_FILES.iter().any(|f| e.file_name() == *f) {
                        continue;
                    }
                    if let Err(source) = std::fs::remove_file(&p) {
                        errors.push(Error::Bpffs {
                            context: format!("removing {}", p.display()),
                            source,
                        });
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => errors.push(Error::Bpffs {
                context: format!("listing {}", d.display()),
                source,
            }),
        }
    }
    match std::fs::remove_dir(&links) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => errors.push(Error::Bpffs {
            context: format!("removing {}", links.display()),
            source,
        }),
    }
    collect(errors)
}

/// Removes a link pin; the link (and its attachment) goes away with its last reference.
pub(crate) fn unpin_link(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Link {
            path: path.to_path_buf(),
            detail: format!("unpinning: {e}"),
        }),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum LinkKind {
    Lxc,
    Vxlan,
    Vtep,
}

/// Parses `lxc_<ifindex>` / `vxlan_<ifindex>` / `vtep_<ifindex>` pin names.
fn parse_link_pin(name: &str) -> Option<(LinkKind, u32)> {
    let (kind, idx) = if let Some(i) = name.strip_prefix("lxc_") {
        (LinkKind::Lxc, i)
    } else if let Some(i) = name.strip_prefix("vxlan_") {
        (LinkKind::Vxlan, i)
    } else if let Some(i) = name.strip_prefix("vtep_") {
        (LinkKind::Vtep, i)
    } else {
        return None;
    };
    idx.parse().ok().filter(|i| *i > 0).map(|i| (kind, i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pin_names() {
        assert_eq!(parse_link_pin("lxc_12"), Some((LinkKind::Lxc, 12)));
        assert_eq!(parse_link_pin("vxlan_3"), Some((LinkKind::Vxlan, 3)));
        assert_eq!(parse_link_pin("lxc_0"), None);
        assert_eq!(parse_link_pin("lxc_x"), None);
        assert_eq!(parse_link_pin("LOCAL_EPS"), None);
    }
}
