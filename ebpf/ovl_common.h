/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Shared definitions of the overlay-agent eBPF fast path. The Rust loader
 * (crates/ebpf/src/raw.rs) mirrors every struct and constant here: keep the
 * two in step, and bump OVL_ABI_VERSION when a map layout changes, because
 * maps are pinned and adopted across agent restarts.
 *
 * Only UAPI headers are used (no vmlinux.h), so the object builds on any
 * machine with linux-libc-dev + libbpf-dev and does not depend on the build
 * host's kernel BTF.
 */
#ifndef OVL_COMMON_H
#define OVL_COMMON_H

#include <linux/types.h>

#define OVL_ABI_VERSION 4

/* Head-end replication fan-out limits (per VNI). */
#define OVL_MAX_VTEPS 64
#define OVL_MAX_LOCAL 64

/* Value of LOCAL_EPS, keyed by the host-side veth ifindex. */
struct ovl_endpoint {
	__u32 vni;
	__u32 ip;       /* IPv4, network byte order (as on the wire) */
	__u8 mac[6];
	__u16 _pad;
};

/* Key of LOCAL_BY_MAC and REMOTE. */
struct ovl_mac_key {
	__u32 vni;
	__u8 mac[6];
	__u16 _pad;     /* always zero: keys are compared bytewise */
};

/*
 * Direct-mapped copies of the three lookups on the busy path (LOCAL_EPS by
 * ifindex, REMOTE and LOCAL_BY_MAC by VNI + MAC), in small arrays: a packet
 * that arrives after the CPU idled pays for every cache line and every page
 * walk, and a hash-map lookup touches four lines in a large vmalloc'ed area
 * (a TLB miss each) where a slot is one line. The arrays are kept within
 * 32 KiB so that the kernel kmallocs them (memory mapped with huge pages):
 * an mmapable or larger array is vmalloc'ed, and its slots cost a page walk
 * again. The hash maps stay authoritative: a slot holds a copy or nothing,
 * and a key whose slot is taken is served by its hash map. The agent writes
 * a slot in three map updates (counter odd, fields, counter even) and the
 * programs read it between two readings of its sequence counter, falling back
 * to the hash map on an odd or changed counter, so they never act on half an
 * update. (No bpf_spin_lock: taking it on every packet cost about 1% of the
 * CPU under bulk TCP here.)
 */
#define OVL_EP_SLOTS 1024     /* indexed by ifindex % OVL_EP_SLOTS */
#define OVL_REMOTE_SLOTS 1024 /* indexed by ovl_mac_slot() */
#define OVL_LOCAL_SLOTS 1024

/* Value of EP_SLOTS. ifindex 0: empty. */
struct ovl_ep_slot {
	__u32 seq;
	__u32 ifindex;
	struct ovl_endpoint ep;
};

/* Value of REMOTE_SLOTS (value: the VTEP, as ovl_remote.vtep) and
 * LOCAL_SLOTS (value: the host-side ifindex). vni 0: empty. */
struct ovl_mac_slot {
	__u32 seq;
	__u32 value;
	struct ovl_mac_key key;
	__u32 _pad;
};

/* Key of IP_TO_MAC. */
struct ovl_ip_key {
	__u32 vni;
	__u32 ip;       /* network byte order */
};

/* Value of IP_TO_MAC. */
struct ovl_mac {
	__u8 mac[6];
	__u16 _pad;
};

/* Value of REMOTE. */
struct ovl_remote {
	__u32 vtep;     /* IPv4, host byte order (what bpf_tunnel_key wants) */
	__u32 ip;       /* the remote's IPv4, network byte order; loader bookkeeping */
};

/* Value of FLOOD, keyed by VNI. */
struct ovl_flood {
	__u32 count;
	__u32 vteps[OVL_MAX_VTEPS]; /* host byte order */
};

/* Value of LOCAL_FLOOD, keyed by VNI. */
struct ovl_local_flood {
	__u32 count;
	__u32 ifindexes[OVL_MAX_LOCAL];
};

/* Value of CONFIG[0]. */
struct ovl_config {
	__u32 vxlan_ifindex;
	__u32 abi_version;
	__u32 local_vtep;  /* IPv4, network byte order */
	__u16 vxlan_port;  /* UDP port, network byte order */
	__u16 _pad;
	__u32 underlay_ifindex; /* holds local_vtep; 0 = no in-place encap/decap (vxlan device only) */
	__u32 endpoint_mtu;     /* the overlay MTU; informational: container ends enforce it */
};

/* Value of TRACE[0]: last decision, written only when the `trace_enabled`
 * load-time constant is set (tests). */
struct ovl_trace {
	__u32 action;
	__u32 ifindex;
	__u32 tunnel_id;
	__u32 remote_ipv4;
	__u32 copies;
	__u32 cached;   /* OVL_CACHED_* bits: lookups served from the slot arrays */
};

#define OVL_CACHED_EP 1
#define OVL_CACHED_REMOTE 2
#define OVL_CACHED_LOCAL 4

enum ovl_action {
	OVL_ACT_NONE = 0,
	OVL_ACT_DROP = 1,
	OVL_ACT_REDIRECT_LOCAL = 2,
	OVL_ACT_ENCAP = 3,
	OVL_ACT_FLOOD = 4,
	OVL_ACT_ARP_REPLY = 5,
	OVL_ACT_PASS = 6,
};

/*
 * Indexes of COUNTERS, a plain array of u64 with one row of OVL_COUNTER_ROW
 * per possible CPU (the loader sizes it): CPU c counts into c * ROW + index,
 * so no two CPUs write the same cache line and no atomics are needed. Not a
 * per-CPU array: its values live in the per-CPU area, vmalloc'ed with small
 * pages, and each counted packet paid a page walk when it came after idle.
 * The busy path's counters of each program sit together in one cache line.
 */
#define OVL_COUNTER_ROW 32
/* Bytes of a dropped frame copied into its drop event (Ethernet, IPv4 and the
 * first bytes of TCP/UDP/ICMP). */
#define OVL_DROP_HEAD 64

/* Record of the DROPS ring buffer: one per dropped frame. `reason` is its
 * counter (enum ovl_counter), `ifindex` the interface the program ran on.
 * Decoded by crates/dp-ebpf/src/drops.rs (keep the two in step). */
struct ovl_drop_event {
	__u32 reason;
	__u32 ifindex;
	__u32 vni;      /* from the tunnel key after decapsulation, else 0 */
	__u32 len;      /* the frame's length */
	__u32 copied;   /* bytes of it in head */
	__u8 head[OVL_DROP_HEAD];
};

enum ovl_counter {
	C_EG_PACKETS = 0,
	C_EG_REDIRECT_LOCAL,
	C_EG_ENCAP,
	C_EG_ENCAP_DIRECT,
	C_EG_FLOODED,
	C_EG_FLOOD_COPIES,
	C_EG_ARP_REPLIED,
	C_EG_DROP_SPOOFED_MAC,
	C_EG_DROP_SPOOFED_IP,
	C_EG_DROP_UNKNOWN_SOURCE,
	C_EG_DROP_MALFORMED,
	C_EG_DROP_HAIRPIN,
	C_EG_DROP_TUNNEL_KEY,
	C_EG_DROP_NO_CONFIG,
	C_IN_PACKETS,
	C_IN_REDIRECT,
	C_IN_FLOODED,
	C_IN_FLOOD_COPIES,
	C_IN_DROP_NO_TUNNEL_KEY,
	C_IN_DROP_UNKNOWN_VNI,
	C_IN_DROP_NO_LOCAL_ENDPOINT,
	C_IN_DROP_MALFORMED,
	C_FLOOD_COPY_FAILED,
	C_UL_DECAP,
	C_UL_DECAP_FAILED,
	C_MAX,
};

#endif
