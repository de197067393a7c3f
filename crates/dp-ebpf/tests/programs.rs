//! Program-level tests: crafted frames through the loaded programs with BPF_PROG_TEST_RUN,
//! checking verdicts, rewritten frames, recorded decisions and counters. Needs root.

mod common;

use std::net::Ipv4Addr;
use std::path::Path;

use common::*;
use ovl_dp_ebpf::{
    EbpfDatapath, EndpointInfo, LoadOptions, ProgramKind, REMOTE_SLOTS, TC_ACT_REDIRECT,
    TC_ACT_SHOT, action, cached, mac_slot,
};
use ovl_model::MacAddr;

const VNI: u32 = 100;
const A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const C: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0c];
const EVIL: [u8; 6] = [0x02, 0, 0, 0, 0, 0xee];
const BCAST: [u8; 6] = [0xff; 6];
const IP_A: [u8; 4] = [10, 0, 0, 1];
const IP_B: [u8; 4] = [10, 0, 0, 2];
const IP_C: [u8; 4] = [10, 0, 0, 3];

struct Setup {
    ns: Netns,
    _pins: PinDir,
    dp: Option<EbpfDatapath>,
    a: u32,
    b: u32,
    stranger: u32,
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(dp) = self.dp.take() {
            let r = self.ns.run(|| dp.teardown());
            if let Err(e) = r {
                eprintln!("teardown: {e}");
            }
        }
    }
}

/// Loads (or adopts) the datapath pinned in `pins`, with the trace record, in the calling
/// thread's namespace.
fn load(pins: &Path) -> Result<EbpfDatapath, ovl_dp_ebpf::Error> {
    EbpfDatapath::load_with(
        pins,
        "ovl_vx0",
        Ipv4Addr::new(198, 18, 0, 11),
        1450,
        &LoadOptions {
            trace: true,
            ..LoadOptions::default()
        },
    )
}

fn setup(tag: &str) -> Setup {
    require_root();
    let ns = Netns::new(&format!("ebt-p-{tag}"));
    let pins = PinDir::new(&format!("ebt-p-{tag}"));
    // No dummy driver here: the underlay is one end of a veth pair.
    ns.sh("ip link add ebtul type veth peer name ebtulp");
    ns.sh("ip addr add 198.18.0.11/24 dev ebtul");
    ns.sh("ip link set ebtul up");
    ns.sh("ip link set ebtulp up");
    for (h, c) in [("ebta", "ebtap"), ("ebtb", "ebtbp"), ("ebtx", "ebtxp")] {
        ns.sh(&format!(
            "ip link add {h} mtu 1450 type veth peer name {c} mtu 1450"
        ));
        ns.sh(&format!("ip link set {h} up"));
        ns.sh(&format!("ip link set {c} up"));
    }
    let (a, b, stranger) = (ns.ifindex("ebta"), ns.ifindex("ebtb"), ns.ifindex("ebtx"));
    let pin_path = pins.0.clone();
    let dp = ns.run(move || {
        let mut dp = load(&pin_path).expect("load");
        let ep = |mac, ip: [u8; 4]| EndpointInfo {
            vni: VNI,
            mac: MacAddr(mac),
            ip: Ipv4Addr::from(ip),
        };
        dp.attach_endpoint(a, ep(A, IP_A)).expect("attach a");
        dp.attach_endpoint(b, ep(B, IP_B)).expect("attach b");
        dp.set_remote(
            VNI,
            MacAddr(C),
            Ipv4Addr::from(IP_C),
            Ipv4Addr::new(198, 18, 0, 12),
        )
        .expect("remote");
        dp.set_flood(
            VNI,
            &[Ipv4Addr::new(198, 18, 0, 12), Ipv4Addr::new(198, 18, 0, 13)],
        )
        .expect("flood");
        dp
    });
    Setup {
        ns,
        _pins: pins,
        dp: Some(dp),
        a,
        b,
        stranger,
    }
}

impl Setup {
    fn run(&self, kind: ProgramKind, ifindex: u32, frame: &[u8]) -> ovl_dp_ebpf::TestRunOutput {
        let dp = self.dp.as_ref().unwrap();
        self.ns
            .run(|| dp.test_run(kind, ifindex, frame))
            .expect("test_run")
    }
    fn dp(&self) -> &EbpfDatapath {
        self.dp.as_ref().unwrap()
    }
}

#[test]
fn encap_local_switching_and_counters() {
    let s = setup("encap");
    let before = s.dp().counters().unwrap();

    let inner = ipv4_frame(C, A, IP_A, IP_C);
    let out = s.run(ProgramKind::LxcEgress, s.a, &inner);
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let t = out.trace.unwrap();
    assert_eq!(t.action, action::ENCAP);
    assert_eq!(
        Some(t.ifindex),
        s.dp().underlay_ifindex(),
        "straight to the underlay"
    );
    assert_eq!(t.tunnel_id, VNI);
    assert_eq!(Ipv4Addr::from(t.remote_ipv4), Ipv4Addr::new(198, 18, 0, 12));
    // Standard VXLAN, built in BPF: what a kernel vxlan device would put on the wire.
    let f = &out.frame;
    assert_eq!(f.len(), inner.len() + 50);
    assert_eq!(&f[12..14], &[0x08, 0x00]);
    let ip = &f[14..34];
    assert_eq!((ip[0], ip[9], ip[8]), (0x45, 17, 64), "IPv4, UDP, TTL 64");
    assert_eq!(&ip[12..16], &[198, 18, 0, 11]);
    assert_eq!(&ip[16..20], &[198, 18, 0, 12]);
    assert_eq!(
        usize::from(u16::from_be_bytes([ip[2], ip[3]])),
        inner.len() + 36
    );
    assert_eq!(ones_complement_sum(ip), 0xffff, "IPv4 header checksum");
    let udp = &f[34..42];
    assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 4789);
    assert!(
        u16::from_be_bytes([udp[0], udp[1]]) >= 49152,
        "source port from the flow hash"
    );
    assert_eq!(
        usize::from(u16::from_be_bytes([udp[4], udp[5]])),
        inner.len() + 16
    );
    assert_eq!(
        &udp[6..8],
        &[0, 0],
        "no UDP checksum, as the vxlan device sends"
    );
    assert_eq!(&f[42..50], &vxlan_header(VNI));
    assert_eq!(
        &f[50..],
        &inner[..],
        "the container's frame inside, unchanged"
    );

    let out = s.run(ProgramKind::LxcEgress, s.a, &ipv4_frame(B, A, IP_A, IP_B));
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let t = out.trace.unwrap();
    assert_eq!(t.action, action::REDIRECT_LOCAL);
    assert_eq!(t.ifindex, s.b);

    // A frame to itself is a hairpin and dropped.
    let out = s.run(ProgramKind::LxcEgress, s.a, &ipv4_frame(A, A, IP_A, IP_A));
    assert_eq!(out.verdict, TC_ACT_SHOT);

    let d = s.dp().counters().unwrap().since(&before);
    assert_eq!(d.egress_packets, 3);
    assert_eq!(d.egress_encap, 1);
    assert_eq!(d.egress_encap_direct, 1);
    assert_eq!(d.egress_redirect_local, 1);
    assert_eq!(d.egress_drop_hairpin, 1);
}

#[test]
fn busy_path_lookups_come_from_the_slot_arrays_and_follow_changes() {
    let s = setup("slots");
    let encap = |s: &Setup| {
        let out = s.run(ProgramKind::LxcEgress, s.a, &ipv4_frame(C, A, IP_A, IP_C));
        assert_eq!(out.verdict, TC_ACT_REDIRECT);
        out.trace.unwrap()
    };
    let t = encap(&s);
    assert_eq!(t.action, action::ENCAP);
    assert_eq!(t.cached, cached::EP | cached::REMOTE);
    assert_eq!(Ipv4Addr::from(t.remote_ipv4), Ipv4Addr::new(198, 18, 0, 12));

    // Decapsulation finds the local endpoint in its slot.
    let ul = s.dp().underlay_ifindex().unwrap();
    let inner = ipv4_frame(A, C, IP_C, IP_A);
    let out = s.run(
        ProgramKind::VtepIngress,
        ul,
        &vxlan_frame([198, 18, 0, 12], [198, 18, 0, 11], 4789, VNI, &inner),
    );
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let t = out.trace.unwrap();
    assert_eq!((t.ifindex, t.cached), (s.a, cached::LOCAL));

    // A remote that moves to another VTEP: its slot follows.
    let mut s = s;
    let dp = s.dp.as_mut().unwrap();
    s.ns.run(|| {
        dp.set_remote(
            VNI,
            MacAddr(C),
            Ipv4Addr::from(IP_C),
            Ipv4Addr::new(198, 18, 0, 13),
        )
    })
    .unwrap();
    let t = encap(&s);
    assert_eq!(Ipv4Addr::from(t.remote_ipv4), Ipv4Addr::new(198, 18, 0, 13));
    assert_eq!(t.cached, cached::EP | cached::REMOTE);

    // An endpoint whose address changes on the same interface: the old address is now
    // spoofed, the new one passes, both decided from the slot.
    let a = s.a;
    let dp = s.dp.as_mut().unwrap();
    s.ns.run(|| {
        dp.attach_endpoint(
            a,
            EndpointInfo {
                vni: VNI,
                mac: MacAddr(A),
                ip: Ipv4Addr::new(10, 0, 0, 9),
            },
        )
    })
    .unwrap();
    let out = s.run(ProgramKind::LxcEgress, a, &ipv4_frame(C, A, IP_A, IP_C));
    assert_eq!(out.verdict, TC_ACT_SHOT);
    let t = out.trace.unwrap();
    assert_eq!(t.cached, cached::EP);
    let out = s.run(
        ProgramKind::LxcEgress,
        a,
        &ipv4_frame(C, A, [10, 0, 0, 9], IP_C),
    );
    assert_eq!(out.verdict, TC_ACT_REDIRECT);

    // Gone: removed remote and detached endpoint leave no copy behind.
    let dp = s.dp.as_mut().unwrap();
    s.ns.run(|| dp.del_remote(VNI, MacAddr(C))).unwrap();
    let out = s.run(
        ProgramKind::LxcEgress,
        a,
        &ipv4_frame(C, A, [10, 0, 0, 9], IP_C),
    );
    assert_eq!(out.trace.unwrap().action, action::FLOOD, "unknown again");
    let dp = s.dp.as_mut().unwrap();
    s.ns.run(|| dp.detach_endpoint(a)).unwrap();
    let out = s.run(
        ProgramKind::LxcEgress,
        a,
        &ipv4_frame(C, A, [10, 0, 0, 9], IP_C),
    );
    assert_eq!(out.verdict, TC_ACT_SHOT, "unknown source");
    assert_eq!(out.trace.unwrap().cached, 0);
}

#[test]
fn keys_whose_slot_is_taken_are_served_by_the_hash_maps() {
    let mut s = setup("collide");
    // Another remote MAC that wants C's slot.
    let want = mac_slot(VNI, C, REMOTE_SLOTS);
    let other = (1..=0x00ff_ffff_u32)
        .map(|i| {
            let [_, x, y, z] = i.to_be_bytes();
            [0x02, 0, 0x77, x, y, z]
        })
        .find(|m| mac_slot(VNI, *m, REMOTE_SLOTS) == want)
        .expect("a colliding MAC");
    let dp = s.dp.as_mut().unwrap();
    s.ns.run(|| {
        dp.set_remote(
            VNI,
            MacAddr(other),
            Ipv4Addr::new(10, 0, 0, 77),
            Ipv4Addr::new(198, 18, 0, 14),
        )
    })
    .unwrap();
    let to = |s: &Setup, dst: [u8; 6], daddr: [u8; 4]| {
        let out = s.run(
            ProgramKind::LxcEgress,
            s.a,
            &ipv4_frame(dst, A, IP_A, daddr),
        );
        assert_eq!(out.verdict, TC_ACT_REDIRECT);
        let t = out.trace.unwrap();
        (Ipv4Addr::from(t.remote_ipv4), t.cached & cached::REMOTE)
    };
    // C holds the slot; the other one is found in REMOTE.
    assert_eq!(
        to(&s, C, IP_C),
        (Ipv4Addr::new(198, 18, 0, 12), cached::REMOTE)
    );
    assert_eq!(
        to(&s, other, [10, 0, 0, 77]),
        (Ipv4Addr::new(198, 18, 0, 14), 0)
    );
    // C leaves: the other one still reaches its VTEP.
    let dp = s.dp.as_mut().unwrap();
    s.ns.run(|| dp.del_remote(VNI, MacAddr(C))).unwrap();
    assert_eq!(
        to(&s, other, [10, 0, 0, 77]).0,
        Ipv4Addr::new(198, 18, 0, 14)
    );
}

#[test]
fn container_ends_reserve_room_for_the_encapsulation() {
    let mut s = setup("headroom");
    let before = s.ns.ifindex("ebtap");
    let hr = s.ns.run(|| EbpfDatapath::link_headroom(before)).unwrap();
    assert!(hr.is_some_and(|h| h >= 50), "container end headroom {hr:?}");
    // The headroom bridge is down and holds the host ends and its idle vxlan device only.
    let br = s.ns.sh("ip -o link show ovl_hr");
    assert!(!br.contains(",UP"), "{br}");
    let ports = s.ns.sh("ip -o link show master ovl_hr");
    for dev in ["ebta", "ebtb", "ovl_hrvx"] {
        assert!(ports.contains(&format!(" {dev}")), "{dev} in {ports}");
    }
    assert!(!s.ns.sh("ip -o link show ovl_hrvx").contains(",UP"));
    // Endpoints still forward as before (the bridge never sees their frames).
    let out = s.run(ProgramKind::LxcEgress, s.a, &ipv4_frame(C, A, IP_A, IP_C));
    assert_eq!(out.trace.unwrap().action, action::ENCAP);
    // Teardown removes both.
    let dp = s.dp.take().unwrap();
    s.ns.run(|| dp.teardown()).unwrap();
    for dev in ["ovl_hr", "ovl_hrvx"] {
        assert!(!s.ns.try_sh(&format!("ip link show {dev}")).0, "{dev} left");
    }
}

/// `ipv4_frame` turned into UDP from `sport` to `dport`.
fn udp_frame(sport: u16, dport: u16) -> Vec<u8> {
    let mut f = ipv4_frame(C, A, IP_A, IP_C);
    f[23] = 17;
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    f
}

#[test]
fn outer_source_port_follows_the_inner_flow() {
    let s = setup("sport");
    let sport = |frame: &[u8]| {
        let out = s.run(ProgramKind::LxcEgress, s.a, frame);
        assert_eq!(out.verdict, TC_ACT_REDIRECT);
        let port = u16::from_be_bytes([out.frame[34], out.frame[35]]);
        assert!(port >= 49152, "in the dynamic range: {port}");
        port
    };
    // One flow, one port: its frames take one path through the underlay (no reordering).
    let flow = udp_frame(40000, 53);
    assert_eq!(sport(&flow), sport(&flow));
    // Other flows spread over other ports (ECMP and RSS entropy), without the flow
    // dissector: 16 flows differing only in their source port land on more than 8 ports.
    let ports: std::collections::BTreeSet<u16> =
        (0..16).map(|i| sport(&udp_frame(40000 + i, 53))).collect();
    assert!(ports.len() > 8, "{ports:?}");
    // ICMP has no ports: its addresses decide.
    let icmp = ipv4_frame(C, A, IP_A, IP_C);
    assert_eq!(sport(&icmp), sport(&icmp));
}

/// `ipv4_frame` padded to `len` bytes on the wire (Ethernet header included).
fn frame_of_len(dst: [u8; 6], src: [u8; 6], saddr: [u8; 4], daddr: [u8; 4], len: usize) -> Vec<u8> {
    let mut f = ipv4_frame(dst, src, saddr, daddr);
    f.resize(len, 0xcd);
    let ip_len = u16::try_from(len - 14).unwrap().to_be_bytes();
    f[16..18].copy_from_slice(&ip_len);
    f
}

#[test]
fn full_size_frames_that_are_not_gso_are_encapsulated_in_place() {
    let s = setup("full");
    let before = s.dp().counters().unwrap();
    // The largest frame a container with the overlay MTU sends: grown to exactly the
    // underlay MTU, in place (adjust_room has no MTU check at tc ingress).
    let full = frame_of_len(C, A, IP_A, IP_C, 1450 + 14);
    let out = s.run(ProgramKind::LxcEgress, s.a, &full);
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let t = out.trace.unwrap();
    assert_eq!(t.action, action::ENCAP);
    assert_eq!(Some(t.ifindex), s.dp().underlay_ifindex(), "in place");
    assert_eq!(out.frame.len(), 1500 + 14, "exactly the underlay MTU");
    assert_eq!(&out.frame[50..], &full[..]);
    let d = s.dp().counters().unwrap().since(&before);
    assert_eq!((d.egress_encap, d.egress_encap_direct), (1, 1));
}

#[test]
fn arp_request_for_known_ip_is_answered_in_bpf() {
    let s = setup("arp");
    let req = arp_frame(BCAST, 1, A, IP_A, [0; 6], IP_C);
    let out = s.run(ProgramKind::LxcEgress, s.a, &req);
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    assert_eq!(out.trace.unwrap().action, action::ARP_REPLY);
    let f = &out.frame;
    assert_eq!(&f[0..6], &A, "eth dst = requester");
    assert_eq!(&f[6..12], &C, "eth src = owner");
    assert_eq!(&f[12..14], &[0x08, 0x06]);
    assert_eq!(&f[20..22], &[0, 2], "op = reply");
    assert_eq!(&f[22..28], &C, "sha = owner");
    assert_eq!(&f[28..32], &IP_C, "spa = asked ip");
    assert_eq!(&f[32..38], &A, "tha = requester");
    assert_eq!(&f[38..42], &IP_A, "tpa = requester ip");

    // A local endpoint's IP is answered too.
    let out = s.run(
        ProgramKind::LxcEgress,
        s.a,
        &arp_frame(BCAST, 1, A, IP_A, [0; 6], IP_B),
    );
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    assert_eq!(&out.frame[22..28], &B);
    assert_eq!(s.dp().counters().unwrap().egress_arp_replied, 2);
}

#[test]
fn bum_frames_are_replicated_to_locals_and_vteps() {
    let mut s = setup("flood");
    let before = s.dp().counters().unwrap();
    // ARP for an unknown IP: broadcast, replicated to B (local) and two VTEPs.
    let out = s.run(
        ProgramKind::LxcEgress,
        s.a,
        &arp_frame(BCAST, 1, A, IP_A, [0; 6], [10, 0, 0, 9]),
    );
    assert_eq!(
        out.verdict, TC_ACT_SHOT,
        "original dropped after the copies"
    );
    let t = out.trace.unwrap();
    assert_eq!(t.action, action::FLOOD);
    assert_eq!(t.copies, 3);
    // Unknown unicast floods the same way.
    let out = s.run(
        ProgramKind::LxcEgress,
        s.a,
        &ipv4_frame(EVIL, A, IP_A, [10, 0, 0, 9]),
    );
    assert_eq!(out.trace.unwrap().copies, 3);
    let d = s.dp().counters().unwrap().since(&before);
    assert_eq!(d.egress_flooded, 2);
    assert_eq!(d.egress_flood_copies, 6);
    assert_eq!(d.flood_copy_failed, 0);

    // Fewer VTEPs, fewer copies; no VTEPs, local copies only.
    s.dp.as_mut()
        .unwrap()
        .set_flood(VNI, &[Ipv4Addr::new(198, 18, 0, 12)])
        .unwrap();
    let frame = arp_frame(BCAST, 1, A, IP_A, [0; 6], [10, 0, 0, 9]);
    assert_eq!(
        s.run(ProgramKind::LxcEgress, s.a, &frame)
            .trace
            .unwrap()
            .copies,
        2
    );
    s.dp.as_mut().unwrap().set_flood(VNI, &[]).unwrap();
    assert_eq!(
        s.run(ProgramKind::LxcEgress, s.a, &frame)
            .trace
            .unwrap()
            .copies,
        1
    );
    assert!(!s.dp().dump().unwrap().flood.contains_key(&VNI));
}

/// Every drop is a record in the pinned ring with its reason, the interface and the frame's
/// head; frames that pass leave none. (The namespace's own IPv6 chatter from the veths'
/// random MACs is dropped too and recorded: the test looks for its frames' records.)
#[test]
fn drops_are_recorded_in_the_ring_with_reason_and_frame() {
    let s = setup("drops");
    let mut ring = ovl_dp_ebpf::DropReader::open(&s._pins.0).expect("open the ring");
    ring.drain();
    let of = |got: &[ovl_dp_ebpf::DropEvent], frame: &[u8]| -> Vec<ovl_dp_ebpf::DropEvent> {
        got.iter()
            .filter(|e| e.head == frame[..frame.len().min(64)])
            .cloned()
            .collect()
    };
    // A passes (local switching to B): no record of it.
    let fine = ipv4_frame(B, A, IP_A, IP_B);
    let out = s.run(ProgramKind::LxcEgress, s.a, &fine);
    assert_ne!(out.verdict, TC_ACT_SHOT);
    assert_eq!(of(&ring.drain(), &fine), []);
    // A sends with a MAC not its own, then with an address not its own.
    let spoofed = ipv4_frame(C, EVIL, IP_A, IP_C);
    assert_eq!(
        s.run(ProgramKind::LxcEgress, s.a, &spoofed).verdict,
        TC_ACT_SHOT
    );
    let not_mine = ipv4_frame(C, A, [10, 0, 0, 99], IP_C);
    assert_eq!(
        s.run(ProgramKind::LxcEgress, s.a, &not_mine).verdict,
        TC_ACT_SHOT
    );
    let got = ring.drain();
    let mac = of(&got, &spoofed);
    assert_eq!(mac.len(), 1, "{got:?}");
    assert_eq!(mac[0].reason, "egress_drop_spoofed_mac");
    assert_eq!(mac[0].ifindex, s.a);
    assert_eq!(mac[0].vni, 0);
    assert_eq!(mac[0].len as usize, spoofed.len());
    assert_eq!(&mac[0].head[6..12], &EVIL, "source MAC in the record");
    let ip = of(&got, &not_mine);
    assert_eq!(ip.len(), 1, "{got:?}");
    assert_eq!(ip[0].reason, "egress_drop_spoofed_ip");
    assert_eq!(
        &ip[0].head[26..30],
        &[10, 0, 0, 99],
        "source IP in the record"
    );
}

#[test]
fn spoofed_sources_are_dropped_and_counted() {
    let s = setup("spoof");
    let before = s.dp().counters().unwrap();
    let out = s.run(
        ProgramKind::LxcEgress,
        s.a,
        &ipv4_frame(C, EVIL, IP_A, IP_C),
    );
    assert_eq!(out.verdict, TC_ACT_SHOT);
    let out = s.run(
        ProgramKind::LxcEgress,
        s.a,
        &ipv4_frame(C, A, [10, 0, 0, 99], IP_C),
    );
    assert_eq!(out.verdict, TC_ACT_SHOT);
    // B's address used by A.
    let out = s.run(ProgramKind::LxcEgress, s.a, &ipv4_frame(C, A, IP_B, IP_C));
    assert_eq!(out.verdict, TC_ACT_SHOT);
    // ARP claiming another IP, and ARP with a foreign sender MAC.
    let out = s.run(
        ProgramKind::LxcEgress,
        s.a,
        &arp_frame(BCAST, 1, A, IP_B, [0; 6], IP_C),
    );
    assert_eq!(out.verdict, TC_ACT_SHOT);
    let mut f = arp_frame(BCAST, 1, A, IP_A, [0; 6], IP_C);
    f[22..28].copy_from_slice(&EVIL);
    assert_eq!(s.run(ProgramKind::LxcEgress, s.a, &f).verdict, TC_ACT_SHOT);
    // Frames from an interface that is no endpoint.
    let out = s.run(
        ProgramKind::LxcEgress,
        s.stranger,
        &ipv4_frame(C, A, IP_A, IP_C),
    );
    assert_eq!(out.verdict, TC_ACT_SHOT);
    // An ARP probe (sender 0.0.0.0) is not a spoof.
    let out = s.run(
        ProgramKind::LxcEgress,
        s.a,
        &arp_frame(BCAST, 1, A, [0; 4], [0; 6], IP_A),
    );
    assert_eq!(out.trace.unwrap().action, action::FLOOD);

    let d = s.dp().counters().unwrap().since(&before);
    assert_eq!(d.egress_drop_spoofed_mac, 2);
    assert_eq!(d.egress_drop_spoofed_ip, 3);
    assert_eq!(d.egress_drop_unknown_source, 1);
}

#[test]
fn decap_without_tunnel_metadata_is_dropped() {
    let s = setup("decap");
    let vx = s.dp().vxlan_ifindex();
    let out = s.run(ProgramKind::VxlanIngress, vx, &ipv4_frame(A, C, IP_C, IP_A));
    assert_eq!(out.verdict, TC_ACT_SHOT);
    assert_eq!(s.dp().counters().unwrap().ingress_drop_no_tunnel_key, 1);
}

/// One's-complement sum of 16-bit words, folded: 0xffff over a header with a valid checksum.
fn ones_complement_sum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn vxlan_header(vni: u32) -> [u8; 8] {
    let v = (vni << 8).to_be_bytes();
    [0x08, 0, 0, 0, v[0], v[1], v[2], v[3]]
}

/// `inner` in VXLAN from `src` to `dst` (UDP `port`), outer MACs made up.
fn vxlan_frame(src: [u8; 4], dst: [u8; 4], port: u16, vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(inner.len() + 50);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x11, 0x02, 0, 0, 0, 0, 0x12, 0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((inner.len() + 36) as u16).to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let c = !ones_complement_sum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&50_000u16.to_be_bytes());
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&((inner.len() + 16) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&vxlan_header(vni));
    f.extend_from_slice(inner);
    f
}

/// `vtep_ingress` returns -1 (tcx "next") for frames it leaves to the vxlan device.
const TCX_NEXT: u32 = u32::MAX;

#[test]
fn underlay_decap_delivers_known_unicast_and_passes_the_rest() {
    let s = setup("vtep");
    let ul = s.dp().underlay_ifindex().expect("198.18.0.11 is on ebtul");
    let before = s.dp().counters().unwrap();
    let (me, peer) = ([198, 18, 0, 11], [198, 18, 0, 12]);

    let inner = ipv4_frame(A, C, IP_C, IP_A);
    let out = s.run(
        ProgramKind::VtepIngress,
        ul,
        &vxlan_frame(peer, me, 4789, VNI, &inner),
    );
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    assert_eq!(out.frame, inner, "decapsulated to the container's frame");
    let t = out.trace.unwrap();
    assert_eq!(t.action, action::REDIRECT_LOCAL);
    assert_eq!((t.ifindex, t.tunnel_id), (s.a, VNI));
    assert_eq!(Ipv4Addr::from(t.remote_ipv4), Ipv4Addr::from(peer));

    // Everything else goes on, unchanged, to the vxlan device (or the host's stack).
    let mut bad_csum = vxlan_frame(peer, me, 4789, VNI, &inner);
    bad_csum[24] ^= 0xff;
    let mut udp_csum = vxlan_frame(peer, me, 4789, VNI, &inner);
    udp_csum[40] = 0x12; // non-zero UDP checksum nobody verified yet
    let mut gbp = vxlan_frame(peer, me, 4789, VNI, &inner);
    gbp[42] = 0x88; // a VXLAN extension flag
    let passed = [
        (
            "broadcast inner frame",
            vxlan_frame(
                peer,
                me,
                4789,
                VNI,
                &arp_frame(BCAST, 1, C, IP_C, [0; 6], IP_A),
            ),
        ),
        (
            "unknown inner MAC",
            vxlan_frame(peer, me, 4789, VNI, &ipv4_frame(EVIL, C, IP_C, IP_A)),
        ),
        ("other VNI", vxlan_frame(peer, me, 4789, VNI + 1, &inner)),
        ("other UDP port", vxlan_frame(peer, me, 8472, VNI, &inner)),
        (
            "other destination",
            vxlan_frame(peer, [198, 18, 0, 13], 4789, VNI, &inner),
        ),
        ("bad IPv4 checksum", bad_csum),
        ("UDP checksum to verify", udp_csum),
        ("VXLAN flags beyond I", gbp),
        ("plain IPv4, not VXLAN", ipv4_frame(A, C, peer, me)),
        (
            "truncated",
            vxlan_frame(peer, me, 4789, VNI, &inner)[..60].to_vec(),
        ),
    ];
    for (what, frame) in &passed {
        let out = s.run(ProgramKind::VtepIngress, ul, frame);
        assert_eq!(out.verdict, TCX_NEXT, "{what}");
        assert_eq!(&out.frame, frame, "{what}: changed");
    }
    let d = s.dp().counters().unwrap().since(&before);
    assert_eq!(d.underlay_decap, 1);
    assert_eq!(d.underlay_decap_failed, 0);
}

#[test]
fn probe_reports_this_host_as_supported() {
    require_root();
    EbpfDatapath::probe().expect("the fast path works on this machine");
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let mut s = setup("bad");
    let before = s.dp().dump().unwrap();
    let ns = &s.ns;
    // The overlay MTU (1450) + 50 for the outer headers is allowed; one more is not.
    ns.sh("ip link add ebtbig mtu 1501 type veth peer name ebtbigp mtu 1501");
    let big = ns.ifindex("ebtbig");
    let a = s.a;
    let s_stranger = s.stranger;
    let dp = s.dp.as_mut().unwrap();
    let ep = |vni, mac, ip: [u8; 4]| EndpointInfo {
        vni,
        mac: MacAddr(mac),
        ip: Ipv4Addr::from(ip),
    };
    use ovl_dp_ebpf::Error;
    let r = ns.run(|| dp.attach_endpoint(big, ep(VNI, EVIL, [10, 0, 0, 5])));
    assert!(
        matches!(
            r,
            Err(Error::MtuTooLarge {
                link_mtu: 1501,
                overlay_mtu: 1450,
                ..
            })
        ),
        "{r:?}"
    );
    let r = ns.run(|| dp.attach_endpoint(999_999, ep(VNI, EVIL, [10, 0, 0, 5])));
    assert!(matches!(r, Err(Error::NoSuchLink(999_999))), "{r:?}");
    assert!(matches!(
        dp.attach_endpoint(a, ep(0, A, IP_A)),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        dp.attach_endpoint(a, ep(1 << 24, A, IP_A)),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        dp.attach_endpoint(a, ep(VNI, BCAST, IP_A)),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        dp.attach_endpoint(a, ep(VNI, A, [0; 4])),
        Err(Error::InvalidInput(_))
    ));
    // B's MAC is taken by another interface.
    let r = ns.run(|| dp.attach_endpoint(a, ep(VNI, B, IP_A)));
    assert!(matches!(r, Err(Error::Conflict(_))), "{r:?}");
    // A remote MAC cannot become local without del_remote.
    let x = s_stranger;
    let r = ns.run(|| dp.attach_endpoint(x, ep(VNI, C, [10, 0, 0, 6])));
    assert!(matches!(r, Err(Error::Conflict(_))), "{r:?}");
    // A local MAC cannot become remote, nor a local IP.
    let vtep = Ipv4Addr::new(198, 18, 0, 12);
    assert!(matches!(
        dp.set_remote(VNI, MacAddr(A), Ipv4Addr::new(10, 0, 0, 7), vtep),
        Err(Error::Conflict(_))
    ));
    assert!(matches!(
        dp.set_remote(VNI, MacAddr(EVIL), Ipv4Addr::from(IP_B), vtep),
        Err(Error::Conflict(_))
    ));
    assert!(matches!(
        dp.set_remote(
            VNI,
            MacAddr(EVIL),
            Ipv4Addr::new(10, 0, 0, 7),
            Ipv4Addr::UNSPECIFIED
        ),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        dp.del_remote(VNI, MacAddr(A)),
        Err(Error::Conflict(_))
    ));
    let many: Vec<Ipv4Addr> = (1..=65).map(|i| Ipv4Addr::new(198, 18, 1, i)).collect();
    assert!(matches!(
        dp.set_flood(VNI, &many),
        Err(Error::TooMany { .. })
    ));
    assert_eq!(
        s.dp().dump().unwrap(),
        before,
        "a refused request changed the maps"
    );

    // Loader arguments.
    let ns = &s.ns;
    let pins = s._pins.0.clone();
    let r = ns.run(|| EbpfDatapath::load(&pins, "", Ipv4Addr::new(198, 18, 0, 11), 1450));
    assert!(matches!(r, Err(Error::InvalidInput(_))));
    let r = ns.run(|| EbpfDatapath::load(&pins, "ovl_vx0", Ipv4Addr::new(198, 18, 0, 11), 20));
    assert!(matches!(r, Err(Error::InvalidInput(_))));
    let r = ns.run(|| {
        EbpfDatapath::load(
            Path::new("/tmp/ebt-not-bpffs"),
            "ovl_vx0",
            Ipv4Addr::new(198, 18, 0, 11),
            1450,
        )
    });
    let _ = std::fs::remove_dir_all("/tmp/ebt-not-bpffs");
    assert!(matches!(r, Err(Error::Bpffs { .. })), "{r:?}");
    // A device of another kind holds the name.
    let r = ns.run(|| EbpfDatapath::load(&pins, "ebtbig", Ipv4Addr::new(198, 18, 0, 11), 1450));
    assert!(matches!(r, Err(Error::VxlanConflict { .. })), "{r:?}");
}

#[test]
fn detach_and_remote_removal_clean_every_map() {
    let mut s = setup("clean");
    let b = s.b;
    let dp = s.dp.as_mut().unwrap();
    dp.del_remote(VNI, MacAddr(C)).unwrap();
    dp.del_remote(VNI, MacAddr(C)).expect("idempotent");
    dp.detach_endpoint(b).unwrap();
    let st = s.dp().dump().unwrap();
    assert!(st.remotes.is_empty());
    assert_eq!(st.arp.len(), 1, "only A's ARP entry left: {st:?}");
    assert_eq!(st.local_flood.get(&VNI), Some(&vec![s.a]));
    assert_eq!(st.attached_links, vec![s.a]);
    assert!(!st.endpoints.contains_key(&b));
    // Moving a remote MAC to a new IP drops its old ARP entry.
    let dp = s.dp.as_mut().unwrap();
    let vtep = Ipv4Addr::new(198, 18, 0, 12);
    dp.set_remote(VNI, MacAddr(C), Ipv4Addr::new(10, 0, 0, 30), vtep)
        .unwrap();
    dp.set_remote(VNI, MacAddr(C), Ipv4Addr::new(10, 0, 0, 31), vtep)
        .unwrap();
    let st = s.dp().dump().unwrap();
    assert!(!st.arp.contains_key(&(VNI, Ipv4Addr::new(10, 0, 0, 30))));
    assert_eq!(
        st.arp.get(&(VNI, Ipv4Addr::new(10, 0, 0, 31))),
        Some(&MacAddr(C))
    );
}

#[test]
fn adoption_drops_endpoints_whose_interface_vanished() {
    let mut s = setup("vanish");
    let (a, b) = (s.a, s.b);
    drop(s.dp.take()); // agent exits; pins stay
    s.ns.sh("ip link del ebtb");
    let pins = s._pins.0.clone();
    let dp = s.ns.run(|| load(&pins)).expect("adopt");
    assert!(dp.load_warnings().is_empty(), "{:?}", dp.load_warnings());
    let st = dp.dump().unwrap();
    assert_eq!(st.endpoints.keys().copied().collect::<Vec<_>>(), vec![a]);
    assert_eq!(st.attached_links, vec![a]);
    assert!(!st.local_by_mac.contains_key(&(VNI, MacAddr(B))));
    assert_eq!(st.remotes.len(), 1, "remote entries survive adoption");
    s.dp = Some(dp);
    // The adopted programs run: A's traffic to C is still encapsulated, with the endpoint
    // and the remote still served from the slot arrays.
    let out = s.run(ProgramKind::LxcEgress, a, &ipv4_frame(C, A, IP_A, IP_C));
    let t = out.trace.unwrap();
    assert_eq!(t.action, action::ENCAP);
    assert_eq!(t.cached, cached::EP | cached::REMOTE);
    let _ = b;
}

/// The value bytes of key 0 of the pinned array `map`, as `bpftool -j` prints them.
fn pinned_value(map: &Path) -> Vec<u8> {
    let out = sh(&format!(
        "bpftool -j map lookup pinned {} key 0 0 0 0",
        map.display()
    ));
    let list = out
        .split("\"value\":[")
        .nth(1)
        .and_then(|v| v.split(']').next())
        .unwrap_or_else(|| panic!("no value in {out}"));
    list.split(',')
        .map(|b| u8::from_str_radix(b.trim().trim_matches('"').trim_start_matches("0x"), 16))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn set_pinned_value(map: &Path, value: &[u8]) {
    let bytes: Vec<String> = value.iter().map(|b| b.to_string()).collect();
    sh(&format!(
        "bpftool map update pinned {} key 0 0 0 0 value {}",
        map.display(),
        bytes.join(" ")
    ));
}

#[test]
fn pins_of_another_layout_are_refused_with_the_reason_and_left_alone() {
    let mut s = setup("abi");
    let a = s.a;
    drop(s.dp.take()); // agent exits; pins stay
    let config = s._pins.0.join("CONFIG");
    let ours = pinned_value(&config);
    // As an agent of another map layout would have left it: `abi_version` is the second u32.
    let mut theirs = ours.clone();
    theirs[4..8].copy_from_slice(&3u32.to_ne_bytes());
    set_pinned_value(&config, &theirs);
    let pins = s._pins.0.clone();
    let err =
        s.ns.run(|| load(&pins))
            .expect_err("pins of another layout");
    assert!(err.to_string().contains("layout version 3"), "{err}");
    // Refusing changed nothing: the pins are as they were.
    assert_eq!(pinned_value(&config), theirs);
    set_pinned_value(&config, &ours);
    let dp = s.ns.run(|| load(&pins)).expect("adopt");
    let st = dp.dump().unwrap();
    assert!(st.endpoints.contains_key(&a));
    assert_eq!(st.remotes.len(), 1);
    s.dp = Some(dp);
}
