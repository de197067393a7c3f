//! eBPF fast path of overlay-agent.
//!
//! Two tc programs (C, `ebpf/overlay.c`, compiled by `build.rs` with clang-19) around ONE
//! collect-metadata vxlan device per host put standard VXLAN (UDP 4789, one VNI per network)
//! on the wire, so hosts on this path interoperate with hosts on the kernel path (bridge +
//! vxlan with static FDB entries):
//!
//! * `lxc_egress` on tc ingress of every container's host-side veth: anti-spoofing (source
//!   MAC/IPv4 and ARP sender must be the endpoint's own), ARP answered in BPF for known IPs,
//!   local switching with `bpf_redirect_peer`, encapsulation with `bpf_skb_set_tunnel_key` +
//!   `bpf_redirect` to the vxlan device, head-end replication of BUM frames with
//!   `bpf_clone_redirect`.
//! * `vxlan_ingress` on tc ingress of the vxlan device: drops VNIs this host does not serve,
//!   delivers unicast to the local endpoint, broadcast/multicast to every local endpoint.
//!
//! Maps and TCX links are pinned under a pin directory on bpffs, so the datapath outlives the
//! agent; [`EbpfDatapath::load`] adopts them and atomically swaps in the freshly loaded
//! programs (`bpf_link_update`), so traffic keeps flowing across agent restarts.
//!
//! All map and link operations act on kernel objects independent of network namespaces,
//! except those taking interface indexes (`load`, `attach_endpoint`), which resolve them in
//! the calling thread's network namespace.

#![warn(missing_docs)]

mod counters;
mod netlink;
mod raw;
mod slots;
mod sys;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, MapData, MapError};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, ProgramError, SchedClassifier, TcAttachType, TestRun};
use aya::{Ebpf, EbpfLoader};

pub use counters::Counters;
use raw::*;
pub use raw::{
    EP_SLOTS, LOCAL_SLOTS, MAX_FLOOD_VTEPS, MAX_LOCAL_PER_VNI, REMOTE_SLOTS, RawTrace, cached,
    mac_slot,
};

/// The compiled BPF object (both programs and all maps).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/overlay.bpf.o"));

/// The VXLAN UDP port (IANA, RFC 7348).
pub const VXLAN_PORT: u16 = 4789;

/// Bytes VXLAN over IPv4 adds: the container MTU must be the underlay MTU minus this.
pub const VXLAN_OVERHEAD: u32 = 50;

/// A MAC address.
pub type Mac = [u8; 6];

/// Makes sure `dir` is on a bpf filesystem, mounting a new bpffs instance there if it is not
/// (e.g. a pin directory under an agent's run dir: its pins, and with them the whole fast
/// path, disappear when that mount is removed). Idempotent.
pub fn ensure_bpffs_at(dir: &Path) -> Result<()> {
    sys::ensure_bpffs_at(dir).map_err(|source| Error::Bpffs {
        context: format!("mounting a bpffs at {}", dir.display()),
        source,
    })
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Errors of the fast path loader.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad argument; nothing was changed.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A fixed-size replication list would overflow; nothing was changed.
    #[error("too many {what} for VNI {vni} (at most {max})")]
    TooMany {
        /// What overflowed.
        what: &'static str,
        /// The VNI.
        vni: u32,
        /// The limit.
        max: usize,
    },
    /// bpffs missing, not mountable, or a pin directory not on it.
    #[error("bpffs: {context}: {source}")]
    Bpffs {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A netlink request failed.
    #[error("netlink: {context}: {source}")]
    Netlink {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The vxlan device name is taken by something we cannot use.
    #[error("interface {name} exists but is not usable as the fast path's device: {detail}")]
    VxlanConflict {
        /// Interface name.
        name: String,
        /// Why.
        detail: String,
    },
    /// No interface with this index in the calling thread's network namespace.
    #[error("no interface with index {0}")]
    NoSuchLink(u32),
    /// The MTU guard: a collect-metadata vxlan device fed by `bpf_redirect` does not
    /// fragment or bounce oversized frames, so endpoints must fit the overlay MTU.
    #[error(
        "MTU guard: interface {ifindex} has MTU {link_mtu}, above the overlay MTU {overlay_mtu} \
         (underlay MTU - {VXLAN_OVERHEAD}); lower the container MTU"
    )]
    MtuTooLarge {
        /// Interface index.
        ifindex: u32,
        /// Its MTU.
        link_mtu: u32,
        /// The overlay MTU given to `load`.
        overlay_mtu: u32,
    },
    /// The request conflicts with what is programmed; nothing was changed.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Loading the BPF object failed.
    #[error("loading the BPF object: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program operation failed (load, attach, test run).
    #[error("BPF program {program}: {source}")]
    Program {
        /// Program name.
        program: &'static str,
        /// The aya error.
        #[source]
        source: ProgramError,
    },
    /// A map operation failed.
    #[error("BPF map {map}: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// The aya error.
        #[source]
        source: MapError,
    },
    /// A pinned link could not be created, opened, replaced or removed.
    #[error("BPF link {path}: {detail}")]
    Link {
        /// Pin path.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// The number of possible CPUs (which sizes `COUNTERS`) could not be read.
    #[error("reading the possible CPUs: {source}")]
    Cpus {
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Several independent steps failed (teardown reports all of them).
    #[error("{} errors: {}", .0.len(), .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Multiple(Vec<Error>),
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the fast path cannot be used on this host (see [`EbpfDatapath::probe`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("eBPF fast path unsupported: {reason}")]
pub struct Unsupported {
    /// The exact reason.
    pub reason: UnsupportedReason,
}

/// The reasons [`EbpfDatapath::probe`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnsupportedReason {
    /// The process lacks capabilities (listed).
    MissingCapabilities(Vec<String>),
    /// No bpffs at /sys/fs/bpf and mounting one failed.
    NoBpffs(String),
    /// The kernel is older than what the programs need (TCX links, `bpf_redirect_peer`).
    KernelTooOld {
        /// Running kernel.
        found: String,
        /// Minimum.
        need: &'static str,
    },
    /// The verifier rejected a program; the tail of its log.
    VerifierRejected {
        /// Program name.
        program: String,
        /// Last lines of the verifier log.
        log_excerpt: String,
    },
    /// Creating maps or loading the object failed for another reason.
    LoadFailed(String),
}

impl fmt::Display for UnsupportedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingCapabilities(c) => write!(f, "missing capabilities: {}", c.join(", ")),
            Self::NoBpffs(e) => write!(f, "no bpffs at /sys/fs/bpf and mounting one failed: {e}"),
            Self::KernelTooOld { found, need } => {
                write!(f, "kernel {found} is too old (need {need} for TCX links)")
            }
            Self::VerifierRejected {
                program,
                log_excerpt,
            } => write!(
                f,
                "the verifier rejected {program}; log excerpt:\n{log_excerpt}"
            ),
            Self::LoadFailed(e) => write!(f, "loading the BPF object failed: {e}"),
        }
    }
}

/// A local endpoint: the container interface behind a host-side veth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EndpointInfo {
    /// VNI of its network.
    pub vni: u32,
    /// Its MAC (the container side of the veth).
    pub mac: Mac,
    /// Its IPv4 address.
    pub ip: Ipv4Addr,
}

/// A remote endpoint as programmed by [`EbpfDatapath::set_remote`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RemoteInfo {
    /// The VTEP (underlay address of its host).
    pub vtep: Ipv4Addr,
    /// Its IPv4 address (answered by the ARP proxy).
    pub ip: Ipv4Addr,
}

/// Everything programmed in the maps, for reconciliation by the agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EbpfState {
    /// ifindex of the vxlan device the programs encapsulate to.
    pub vxlan_ifindex: u32,
    /// Local endpoints by host-side ifindex (`LOCAL_EPS`).
    pub endpoints: BTreeMap<u32, EndpointInfo>,
    /// `(vni, mac) -> ifindex` (`LOCAL_BY_MAC`).
    pub local_by_mac: BTreeMap<(u32, Mac), u32>,
    /// `(vni, mac) -> VTEP and IP` (`REMOTE`).
    pub remotes: BTreeMap<(u32, Mac), RemoteInfo>,
    /// `(vni, ip) -> mac`, answered by the ARP proxy (`IP_TO_MAC`), local and remote.
    pub arp: BTreeMap<(u32, Ipv4Addr), Mac>,
    /// VNI -> VTEPs BUM frames are replicated to (`FLOOD`).
    pub flood: BTreeMap<u32, Vec<Ipv4Addr>>,
    /// VNI -> local host-side ifindexes (`LOCAL_FLOOD`); its keys are the served VNIs.
    pub local_flood: BTreeMap<u32, Vec<u32>>,
    /// Host-side ifindexes with a pinned `lxc_egress` link.
    pub attached_links: Vec<u32>,
}

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
    slots: slots::Slots,
    bpf: Ebpf,
    pin_dir: PathBuf,
    vxlan_ifindex: u32,
    underlay_ifindex: Option<u32>,
    mtu: u32,
    trace: bool,
    load_warnings: Vec<String>,
    /// The headroom bridge's ifindex; `None` if it could not be set up (a warning says why).
    headroom_bridge: Option<u32>,
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

/// The headroom bridge: a bridge left down, holding an idle vxlan device and the host end of
/// every container veth. A bridge gives its ports the largest headroom any port declares, and
/// a veth passes it on to its other end, so the containers' stacks reserve room for the 50
/// bytes of encapsulation in front of every frame they build: `bpf_skb_adjust_room` then
/// grows small frames (a ping, a DNS query) in place instead of reallocating their heads,
/// which cost 1.5-2.5 us per frame on a CPU back from idle. It forwards nothing: a down
/// bridge's ports drop what reaches them, and `lxc_egress` redirects or drops every frame
/// before the bridge would see it.
const HEADROOM_BRIDGE: &str = "ovl_hr";
/// The idle vxlan device in the headroom bridge (never up, so no socket; a VNI and port of
/// its own, so it conflicts with no other vxlan device).
const HEADROOM_DEV: &str = "ovl_hrvx";
const HEADROOM_VNI: u32 = 1;
const HEADROOM_PORT: u16 = 1;

const LXC: &str = "lxc_egress";
const VXI: &str = "vxlan_ingress";
const VTI: &str = "vtep_ingress";

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> Error {
    move |source| Error::Map { map, source }
}

fn prog_err(program: &'static str) -> impl FnOnce(ProgramError) -> Error {
    move |source| Error::Program { program, source }
}

/// A missing key is not an error when deleting (idempotent removal).
fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
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
        let _ = std::fs::remove_dir_all(&scratch);
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

    fn link_path(&self, program: &str, ifindex: u32) -> PathBuf {
        let prefix = match program {
            VXI => "vxlan",
            VTI => "vtep",
            _ => "lxc",
        };
        self.pin_dir
            .join("links")
            .join(format!("{prefix}_{ifindex}"))
    }

    fn pinned_links(&self) -> Result<Vec<(LinkKind, u32, PathBuf)>> {
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
    fn attach(&mut self, program: &'static str, ifindex: u32) -> Result<()> {
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

    /// Programs a local endpoint: map entries first (so the first packet finds them), then
    /// `lxc_egress` on tc ingress of the host-side veth `host_ifindex`. Idempotent; changing
    /// an attached endpoint's VNI/MAC/IP replaces its old entries.
    ///
    /// Refuses ([`Error::MtuTooLarge`]) an interface whose MTU exceeds the overlay MTU.
    pub fn attach_endpoint(&mut self, host_ifindex: u32, info: EndpointInfo) -> Result<()> {
        validate_vni(info.vni)?;
        validate_mac(info.mac)?;
        validate_unicast_ip(info.ip, "endpoint")?;
        let link = existing_link(host_ifindex)?;
        if let Some(m) = link.mtu
            && m > self.mtu
        {
            return Err(Error::MtuTooLarge {
                ifindex: host_ifindex,
                link_mtu: m,
                overlay_mtu: self.mtu,
            });
        }
        if let Some(other) = self.lookup_local_by_mac(info.vni, info.mac)?
            && other != host_ifindex
        {
            return Err(Error::Conflict(format!(
                "MAC {} on VNI {} already belongs to interface {other}",
                fmt_mac(&info.mac),
                info.vni
            )));
        }
        if self.lookup_remote(info.vni, info.mac)?.is_some() {
            return Err(Error::Conflict(format!(
                "MAC {} on VNI {} is programmed as a remote endpoint; del_remote it first",
                fmt_mac(&info.mac),
                info.vni
            )));
        }
        let mut new_local = self.lookup_local_flood(info.vni)?;
        if !new_local.contains(&host_ifindex) {
            new_local.push(host_ifindex);
        }
        let local_value = local_flood_value(info.vni, &new_local)?;
        if let Some(old) = self.lookup_endpoint(host_ifindex)?
            && old != info
        {
            self.remove_endpoint_entries(host_ifindex, old)?;
        }

        self.hash::<u32, RawEndpoint>("LOCAL_EPS")?
            .insert(host_ifindex, RawEndpoint::from(info), 0)
            .map_err(map_err("LOCAL_EPS"))?;
        self.hash::<RawMacKey, u32>("LOCAL_BY_MAC")?
            .insert(mac_key(info.vni, info.mac), host_ifindex, 0)
            .map_err(map_err("LOCAL_BY_MAC"))?;
        // Copies after the hash maps: a slot never holds what they do not.
        slots::put_ep(&mut self.slots.ep, host_ifindex, RawEndpoint::from(info))
            .map_err(map_err("EP_SLOTS"))?;
        slots::put_mac(
            &mut self.slots.local,
            mac_key(info.vni, info.mac),
            host_ifindex,
        )
        .map_err(map_err("LOCAL_SLOTS"))?;
        self.hash::<RawIpKey, RawMac>("IP_TO_MAC")?
            .insert(
                ip_key(info.vni, info.ip),
                RawMac {
                    mac: info.mac,
                    pad: 0,
                },
                0,
            )
            .map_err(map_err("IP_TO_MAC"))?;
        if let Some(v) = local_value {
            self.hash::<u32, RawLocalFlood>("LOCAL_FLOOD")?
                .insert(info.vni, v, 0)
                .map_err(map_err("LOCAL_FLOOD"))?;
        }
        if link.master != self.headroom_bridge {
            self.give_headroom(host_ifindex);
        }
        self.attach(LXC, host_ifindex)
    }

    /// Makes the host end `ifindex` a port of the headroom bridge (see [`HEADROOM_BRIDGE`]).
    /// Only a speed-up: a failure (a bridge holds at most 1024 ports) is logged and the
    /// endpoint works without it.
    fn give_headroom(&self, ifindex: u32) {
        let Some(br) = self.headroom_bridge else {
            return;
        };
        if let Err(e) = netlink::set_master(ifindex, br) {
            log::warn!("interface {ifindex}: no encapsulation headroom ({HEADROOM_BRIDGE}): {e}");
        }
    }

    /// The headroom the stack reserves in front of frames sent through `ifindex` (the
    /// container end of an endpoint's veth gets the encapsulation's), as the kernel reports
    /// it; `None` on kernels before 6.3.
    pub fn link_headroom(ifindex: u32) -> Result<Option<u16>> {
        Ok(existing_link(ifindex)?.headroom)
    }

    /// Removes the map entries of a local endpoint, each only if it still points at it.
    fn remove_endpoint_entries(&mut self, ifindex: u32, old: EndpointInfo) -> Result<()> {
        // Copies first: a slot never holds what the hash maps no longer do.
        slots::clear_ep(&mut self.slots.ep, ifindex).map_err(map_err("EP_SLOTS"))?;
        slots::clear_mac(
            &mut self.slots.local,
            mac_key(old.vni, old.mac),
            Some(ifindex),
        )
        .map_err(map_err("LOCAL_SLOTS"))?;
        let mut errors = Vec::new();
        match self.lookup_local_by_mac(old.vni, old.mac) {
            Ok(Some(i)) if i == ifindex => {
                if let Err(e) =
                    self.remove::<RawMacKey, u32>("LOCAL_BY_MAC", mac_key(old.vni, old.mac))
                {
                    errors.push(e);
                }
            }
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
        match self.lookup_arp(old.vni, old.ip) {
            Ok(Some(m)) if m == old.mac => {
                if let Err(e) =
                    self.remove::<RawIpKey, RawMac>("IP_TO_MAC", ip_key(old.vni, old.ip))
                {
                    errors.push(e);
                }
            }
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
        let r = self.lookup_local_flood(old.vni).and_then(|list| {
            let remaining: Vec<u32> = list.into_iter().filter(|i| *i != ifindex).collect();
            match local_flood_value(old.vni, &remaining)? {
                Some(v) => self
                    .hash::<u32, RawLocalFlood>("LOCAL_FLOOD")?
                    .insert(old.vni, v, 0)
                    .map_err(map_err("LOCAL_FLOOD")),
                None => self.remove::<u32, RawLocalFlood>("LOCAL_FLOOD", old.vni),
            }
        });
        if let Err(e) = r {
            errors.push(e);
        }
        if let Err(e) = self.remove::<u32, RawEndpoint>("LOCAL_EPS", ifindex) {
            errors.push(e);
        }
        collect(errors)
    }

    /// Removes a local endpoint: its link (unpinned, so the program detaches) and its map
    /// entries. Idempotent; reports every failed step.
    pub fn detach_endpoint(&mut self, host_ifindex: u32) -> Result<()> {
        let mut errors = Vec::new();
        let path = self.link_path(LXC, host_ifindex);
        if let Err(e) = unpin_link(&path) {
            errors.push(e);
        }
        match self.lookup_endpoint(host_ifindex) {
            Ok(Some(old)) => {
                if let Err(e) = self.remove_endpoint_entries(host_ifindex, old) {
                    errors.push(e);
                }
            }
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
        collect(errors)
    }

    /// Programs a remote endpoint: frames to `(vni, mac)` are encapsulated to `vtep`, and ARP
    /// requests for `ip` are answered with `mac`. Replaces any previous entry of that MAC
    /// (including the ARP entry of its previous IP). Constant time: no map scans.
    pub fn set_remote(&mut self, vni: u32, mac: Mac, ip: Ipv4Addr, vtep: Ipv4Addr) -> Result<()> {
        validate_vni(vni)?;
        validate_mac(mac)?;
        validate_unicast_ip(ip, "remote endpoint")?;
        validate_unicast_ip(vtep, "VTEP")?;
        if let Some(ifindex) = self.lookup_local_by_mac(vni, mac)? {
            return Err(Error::Conflict(format!(
                "MAC {} on VNI {vni} is a local endpoint (interface {ifindex})",
                fmt_mac(&mac)
            )));
        }
        if let Some(owner) = self.lookup_arp(vni, ip)?
            && owner != mac
            && self.lookup_local_by_mac(vni, owner)?.is_some()
        {
            return Err(Error::Conflict(format!(
                "IP {ip} on VNI {vni} belongs to local endpoint {}",
                fmt_mac(&owner)
            )));
        }
        let previous = self.lookup_remote(vni, mac)?;
        self.hash::<RawMacKey, RawRemote>("REMOTE")?
            .insert(
                mac_key(vni, mac),
                RawRemote {
                    vtep: ip_host(vtep),
                    ip: ip_wire(ip),
                },
                0,
            )
            .map_err(map_err("REMOTE"))?;
        slots::put_mac(&mut self.slots.remote, mac_key(vni, mac), ip_host(vtep))
            .map_err(map_err("REMOTE_SLOTS"))?;
        if let Some(prev) = previous {
            let old_ip = ip_from_wire(prev.ip);
            if old_ip != ip && self.lookup_arp(vni, old_ip)? == Some(mac) {
                self.remove::<RawIpKey, RawMac>("IP_TO_MAC", ip_key(vni, old_ip))?;
            }
        }
        self.hash::<RawIpKey, RawMac>("IP_TO_MAC")?
            .insert(ip_key(vni, ip), RawMac { mac, pad: 0 }, 0)
            .map_err(map_err("IP_TO_MAC"))
    }

    /// Removes a remote endpoint and its ARP entry. Idempotent; constant time.
    pub fn del_remote(&mut self, vni: u32, mac: Mac) -> Result<()> {
        validate_vni(vni)?;
        if self.lookup_local_by_mac(vni, mac)?.is_some() {
            return Err(Error::Conflict(format!(
                "MAC {} on VNI {vni} is a local endpoint; use detach_endpoint",
                fmt_mac(&mac)
            )));
        }
        let Some(prev) = self.lookup_remote(vni, mac)? else {
            return Ok(());
        };
        slots::clear_mac(&mut self.slots.remote, mac_key(vni, mac), None)
            .map_err(map_err("REMOTE_SLOTS"))?;
        let mut errors = Vec::new();
        if let Err(e) = self.remove::<RawMacKey, RawRemote>("REMOTE", mac_key(vni, mac)) {
            errors.push(e);
        }
        let ip = ip_from_wire(prev.ip);
        match self.lookup_arp(vni, ip) {
            Ok(Some(m)) if m == mac => {
                if let Err(e) = self.remove::<RawIpKey, RawMac>("IP_TO_MAC", ip_key(vni, ip)) {
                    errors.push(e);
                }
            }
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
        collect(errors)
    }

    /// Makes the slot arrays copies of the hash maps again: a previous agent may have died
    /// between a hash-map write and its slot. Slots that disagree are emptied, then every
    /// entry takes its slot if free.
    fn sync_slots(&mut self) -> Result<()> {
        let s = self.dump()?;
        let (ep, remote, local) = (
            &mut self.slots.ep,
            &mut self.slots.remote,
            &mut self.slots.local,
        );
        for (i, slot) in ep.occupied().map_err(map_err("EP_SLOTS"))? {
            if s.endpoints
                .get(&slot.ifindex)
                .map(|e| RawEndpoint::from(*e))
                != Some(slot.ep)
            {
                ep.put(i, slot, Default::default())
                    .map_err(map_err("EP_SLOTS"))?;
            }
        }
        for (i, slot) in remote.occupied().map_err(map_err("REMOTE_SLOTS"))? {
            let want = s
                .remotes
                .get(&(slot.key.vni, slot.key.mac))
                .map(|r| ip_host(r.vtep));
            if want != Some(slot.value) {
                remote
                    .put(i, slot, Default::default())
                    .map_err(map_err("REMOTE_SLOTS"))?;
            }
        }
        for (i, slot) in local.occupied().map_err(map_err("LOCAL_SLOTS"))? {
            if s.local_by_mac.get(&(slot.key.vni, slot.key.mac)) != Some(&slot.value) {
                local
                    .put(i, slot, Default::default())
                    .map_err(map_err("LOCAL_SLOTS"))?;
            }
        }
        for (ifindex, info) in &s.endpoints {
            slots::put_ep(ep, *ifindex, RawEndpoint::from(*info)).map_err(map_err("EP_SLOTS"))?;
        }
        for ((vni, mac), r) in &s.remotes {
            slots::put_mac(remote, mac_key(*vni, *mac), ip_host(r.vtep))
                .map_err(map_err("REMOTE_SLOTS"))?;
        }
        for ((vni, mac), ifindex) in &s.local_by_mac {
            slots::put_mac(local, mac_key(*vni, *mac), *ifindex).map_err(map_err("LOCAL_SLOTS"))?;
        }
        Ok(())
    }

    fn get<K: aya::Pod, V: aya::Pod>(&self, name: &'static str, key: &K) -> Result<Option<V>> {
        let m: HashMap<&MapData, K, V> =
            HashMap::try_from(self.map(name)?).map_err(map_err(name))?;
        match m.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(None)
            }
            Err(e) => Err(Error::Map {
                map: name,
                source: e,
            }),
        }
    }

    fn remove<K: aya::Pod, V: aya::Pod>(&mut self, name: &'static str, key: K) -> Result<()> {
        let mut m = self.hash::<K, V>(name)?;
        ignore_missing(m.remove(&key)).map_err(map_err(name))
    }

    fn lookup_local_by_mac(&self, vni: u32, mac: Mac) -> Result<Option<u32>> {
        self.get::<RawMacKey, u32>("LOCAL_BY_MAC", &mac_key(vni, mac))
    }

    fn lookup_remote(&self, vni: u32, mac: Mac) -> Result<Option<RawRemote>> {
        self.get::<RawMacKey, RawRemote>("REMOTE", &mac_key(vni, mac))
    }

    fn lookup_arp(&self, vni: u32, ip: Ipv4Addr) -> Result<Option<Mac>> {
        Ok(self
            .get::<RawIpKey, RawMac>("IP_TO_MAC", &ip_key(vni, ip))?
            .map(|m| m.mac))
    }

    fn lookup_endpoint(&self, ifindex: u32) -> Result<Option<EndpointInfo>> {
        Ok(self
            .get::<u32, RawEndpoint>("LOCAL_EPS", &ifindex)?
            .map(EndpointInfo::from))
    }

    fn lookup_local_flood(&self, vni: u32) -> Result<Vec<u32>> {
        Ok(self
            .get::<u32, RawLocalFlood>("LOCAL_FLOOD", &vni)?
            .map(|v| local_list(&v))
            .unwrap_or_default())
    }

    /// Sets the VTEPs BUM frames of `vni` are replicated to (head-end replication);
    /// an empty list removes the entry. At most [`MAX_FLOOD_VTEPS`].
    pub fn set_flood(&mut self, vni: u32, vteps: &[Ipv4Addr]) -> Result<()> {
        validate_vni(vni)?;
        let value = flood_value(vni, vteps)?;
        let mut m = self.hash::<u32, RawFlood>("FLOOD")?;
        if value.count == 0 {
            ignore_missing(m.remove(&vni)).map_err(map_err("FLOOD"))
        } else {
            m.insert(vni, value, 0).map_err(map_err("FLOOD"))
        }
    }

    /// Reads every map (and the pinned links), for reconciliation.
    pub fn dump(&self) -> Result<EbpfState> {
        let mut s = EbpfState::default();
        let cfg: Array<&MapData, RawConfig> =
            Array::try_from(self.map("CONFIG")?).map_err(map_err("CONFIG"))?;
        s.vxlan_ifindex = cfg.get(&0, 0).map_err(map_err("CONFIG"))?.vxlan_ifindex;

        let eps: HashMap<&MapData, u32, RawEndpoint> =
            HashMap::try_from(self.map("LOCAL_EPS")?).map_err(map_err("LOCAL_EPS"))?;
        for kv in eps.iter() {
            let (k, v) = kv.map_err(map_err("LOCAL_EPS"))?;
            s.endpoints.insert(k, v.into());
        }
        let lbm: HashMap<&MapData, RawMacKey, u32> =
            HashMap::try_from(self.map("LOCAL_BY_MAC")?).map_err(map_err("LOCAL_BY_MAC"))?;
        for kv in lbm.iter() {
            let (k, v) = kv.map_err(map_err("LOCAL_BY_MAC"))?;
            s.local_by_mac.insert((k.vni, k.mac), v);
        }
        let rem: HashMap<&MapData, RawMacKey, RawRemote> =
            HashMap::try_from(self.map("REMOTE")?).map_err(map_err("REMOTE"))?;
        for kv in rem.iter() {
            let (k, v) = kv.map_err(map_err("REMOTE"))?;
            s.remotes.insert(
                (k.vni, k.mac),
                RemoteInfo {
                    vtep: Ipv4Addr::from(v.vtep),
                    ip: ip_from_wire(v.ip),
                },
            );
        }
        let arp: HashMap<&MapData, RawIpKey, RawMac> =
            HashMap::try_from(self.map("IP_TO_MAC")?).map_err(map_err("IP_TO_MAC"))?;
        for kv in arp.iter() {
            let (k, v) = kv.map_err(map_err("IP_TO_MAC"))?;
            s.arp.insert((k.vni, ip_from_wire(k.ip)), v.mac);
        }
        let fl: HashMap<&MapData, u32, RawFlood> =
            HashMap::try_from(self.map("FLOOD")?).map_err(map_err("FLOOD"))?;
        for kv in fl.iter() {
            let (k, v) = kv.map_err(map_err("FLOOD"))?;
            s.flood.insert(k, flood_list(&v));
        }
        let lf: HashMap<&MapData, u32, RawLocalFlood> =
            HashMap::try_from(self.map("LOCAL_FLOOD")?).map_err(map_err("LOCAL_FLOOD"))?;
        for kv in lf.iter() {
            let (k, v) = kv.map_err(map_err("LOCAL_FLOOD"))?;
            s.local_flood.insert(k, local_list(&v));
        }
        s.attached_links = self
            .pinned_links()?
            .into_iter()
            .filter(|(k, _, _)| *k == LinkKind::Lxc)
            .map(|(_, i, _)| i)
            .collect();
        Ok(s)
    }

    /// Counter totals over all CPUs.
    pub fn counters(&self) -> Result<Counters> {
        let arr: Array<&MapData, u64> =
            Array::try_from(self.map("COUNTERS")?).map_err(map_err("COUNTERS"))?;
        let mut totals = vec![0u64; counters::NAMES.len()];
        for (i, v) in arr.iter().enumerate() {
            let v = v.map_err(map_err("COUNTERS"))?;
            if let Some(t) = totals.get_mut(i % COUNTER_ROW as usize) {
                *t += v;
            }
        }
        Ok(Counters::from_slots(&totals))
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

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map> {
        self.bpf.map(name).ok_or(Error::Map {
            map: name,
            source: MapError::InvalidName {
                name: name.to_string(),
            },
        })
    }

    fn hash<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>> {
        let map = self.bpf.map_mut(name).ok_or(Error::Map {
            map: name,
            source: MapError::InvalidName {
                name: name.to_string(),
            },
        })?;
        HashMap::try_from(map).map_err(map_err(name))
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
/// rmdir of pins). Missing is fine.
fn remove_pin_dir(dir: &Path) -> Result<()> {
    let mut errors = Vec::new();
    let links = dir.join("links");
    for d in [&links, &dir.to_path_buf()] {
        match std::fs::read_dir(d) {
            Ok(rd) => {
                for e in rd.flatten() {
                    let p = e.path();
                    if p.is_dir() {
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
    for d in [&links, &dir.to_path_buf()] {
        match std::fs::remove_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => errors.push(Error::Bpffs {
                context: format!("removing {}", d.display()),
                source,
            }),
        }
    }
    collect(errors)
}

/// Removes a link pin; the link (and its attachment) goes away with its last reference.
fn unpin_link(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Link {
            path: path.to_path_buf(),
            detail: format!("unpinning: {e}"),
        }),
    }
}

fn collect(mut errors: Vec<Error>) -> Result<()> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(Error::Multiple(errors)),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum LinkKind {
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

/// Finds or creates the collect-metadata vxlan device; returns its ifindex.
fn ensure_vxlan(name: &str, local: Ipv4Addr, port: u16, mtu: u32) -> Result<u32> {
    let nl = |context: String| move |source| Error::Netlink { context, source };
    let link = match netlink::link_by_name(name).map_err(nl(format!("looking up {name}")))? {
        Some(l) => l,
        None => {
            netlink::create_vxlan_external(name, local, port, mtu)
                .map_err(nl(format!("creating vxlan device {name}")))?;
            netlink::link_by_name(name)
                .map_err(nl(format!("looking up {name}")))?
                .ok_or_else(|| Error::VxlanConflict {
                    name: name.into(),
                    detail: "vanished right after creation".into(),
                })?
        }
    };
    check_vxlan(&link, local, port)?;
    if link.mtu != Some(mtu) {
        netlink::set_mtu(link.index, mtu).map_err(nl(format!("setting MTU {mtu} on {name}")))?;
    }
    if !link.up {
        netlink::set_up(link.index).map_err(nl(format!("setting {name} up")))?;
    }
    Ok(link.index)
}

/// The link `ifindex` of the calling thread's namespace; its absence is an error.
fn existing_link(ifindex: u32) -> Result<netlink::LinkSummary> {
    netlink::link_by_index(ifindex)
        .map_err(|source| Error::Netlink {
            context: format!("looking up interface {ifindex}"),
            source,
        })?
        .ok_or(Error::NoSuchLink(ifindex))
}

/// The headroom bridge with its idle vxlan device, created if missing; its ifindex.
fn ensure_headroom_bridge() -> Result<u32> {
    let nl = |context: String| move |source| Error::Netlink { context, source };
    let find = |name: &str| netlink::link_by_name(name).map_err(nl(format!("looking up {name}")));
    let br = match find(HEADROOM_BRIDGE)? {
        Some(l) => l,
        None => {
            netlink::create_bridge(HEADROOM_BRIDGE)
                .map_err(nl(format!("creating bridge {HEADROOM_BRIDGE}")))?;
            find(HEADROOM_BRIDGE)?.ok_or(Error::NoSuchLink(0))?
        }
    };
    if br.kind != Some(netlink_packet_route::link::InfoKind::Bridge) {
        return Err(Error::Conflict(format!(
            "{HEADROOM_BRIDGE} exists and is not a bridge ({:?})",
            br.kind
        )));
    }
    let dev = match find(HEADROOM_DEV)? {
        Some(l) => l,
        None => {
            netlink::create_vxlan_idle(HEADROOM_DEV, HEADROOM_VNI, HEADROOM_PORT)
                .map_err(nl(format!("creating {HEADROOM_DEV}")))?;
            find(HEADROOM_DEV)?.ok_or(Error::NoSuchLink(0))?
        }
    };
    if dev.master != Some(br.index) {
        netlink::set_master(dev.index, br.index)
            .map_err(nl(format!("adding {HEADROOM_DEV} to {HEADROOM_BRIDGE}")))?;
    }
    Ok(br.index)
}

/// An existing device is adopted only if it is what we would have created.
fn check_vxlan(link: &netlink::LinkSummary, local: Ipv4Addr, port: u16) -> Result<()> {
    let conflict = |detail: String| {
        Err(Error::VxlanConflict {
            name: link.name.clone(),
            detail,
        })
    };
    if link.kind != Some(netlink_packet_route::link::InfoKind::Vxlan) {
        return conflict(format!("kind is {:?}, not vxlan", link.kind));
    }
    if !link.vxlan_external {
        return conflict("not a collect-metadata (external) device".into());
    }
    if link.vxlan_port.is_some_and(|p| p != port) {
        return conflict(format!("UDP port {:?}, not {port}", link.vxlan_port));
    }
    if link.vxlan_local.is_some_and(|l| l != local) {
        return conflict(format!(
            "source address {:?}, not {local} (a changed VTEP address needs teardown first)",
            link.vxlan_local
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::InfoKind;

    #[test]
    fn link_pin_names() {
        assert_eq!(parse_link_pin("lxc_12"), Some((LinkKind::Lxc, 12)));
        assert_eq!(parse_link_pin("vxlan_3"), Some((LinkKind::Vxlan, 3)));
        assert_eq!(parse_link_pin("lxc_0"), None);
        assert_eq!(parse_link_pin("lxc_x"), None);
        assert_eq!(parse_link_pin("LOCAL_EPS"), None);
    }

    #[test]
    fn vxlan_adoption_rules() {
        let mut l = netlink::LinkSummary {
            index: 5,
            name: "ovl_vx0".into(),
            mtu: Some(1450),
            kind: Some(InfoKind::Vxlan),
            vxlan_external: true,
            vxlan_port: Some(4789),
            vxlan_local: Some(Ipv4Addr::new(198, 18, 0, 11)),
            up: true,
            master: None,
            headroom: None,
        };
        let me = Ipv4Addr::new(198, 18, 0, 11);
        assert!(check_vxlan(&l, me, VXLAN_PORT).is_ok());
        assert!(check_vxlan(&l, Ipv4Addr::new(198, 18, 0, 12), VXLAN_PORT).is_err());
        l.vxlan_port = Some(8472);
        assert!(matches!(
            check_vxlan(&l, me, VXLAN_PORT),
            Err(Error::VxlanConflict { .. })
        ));
        // A cluster configured for 8472 adopts it.
        assert!(check_vxlan(&l, me, 8472).is_ok());
        l.vxlan_port = Some(4789);
        l.vxlan_external = false;
        assert!(check_vxlan(&l, me, VXLAN_PORT).is_err());
        l.kind = Some(InfoKind::Dummy);
        assert!(check_vxlan(&l, me, VXLAN_PORT).is_err());
    }

    #[test]
    fn mac_format() {
        assert_eq!(fmt_mac(&[2, 0, 0xab, 0, 0, 1]), "02:00:ab:00:00:01");
    }

    #[test]
    fn unsupported_messages_are_specific() {
        let u = Unsupported {
            reason: UnsupportedReason::VerifierRejected {
                program: "lxc_egress".into(),
                log_excerpt: "R1 invalid mem access".into(),
            },
        };
        let s = u.to_string();
        assert!(s.contains("lxc_egress") && s.contains("R1 invalid mem access"));
        let u = UnsupportedReason::MissingCapabilities(vec!["CAP_BPF".into()]);
        assert_eq!(u.to_string(), "missing capabilities: CAP_BPF");
    }
}
