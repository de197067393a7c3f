// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * overlay-agent eBPF fast path: two tc programs around one collect-metadata
 * vxlan device, putting standard VXLAN (UDP 4789, VNI per network) on the
 * wire so these hosts interoperate with bridge+vxlan (kernel path) hosts.
 *
 *   lxc_egress     tc ingress of each container's HOST-side veth, i.e. the
 *                  packets a container sends. Anti-spoofing, ARP proxy,
 *                  local switching, encapsulation, head-end replication.
 *   vxlan_ingress  tc ingress of the vxlan device: decapsulated frames with
 *                  the tunnel key in their metadata; deliver to local
 *                  endpoints of that VNI.
 *   vtep_ingress   tc ingress of the underlay interface holding the local
 *                  VTEP address: VXLAN frames for a known local endpoint
 *                  that come from the VTEP programmed for their inner source
 *                  MAC are decapsulated here and handed straight into the container,
 *                  skipping the UDP socket, vxlan_rcv and the vxlan device's
 *                  GRO cell. Everything else goes on unchanged (BUM, unknown
 *                  MACs, non-IPv4 inner frames, checksums to verify: the vxlan
 *                  device and vxlan_ingress handle them as before).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "ovl_common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Set by the loader (tests only): record the last decision in TRACE. */
volatile const __u32 trace_enabled = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct ovl_endpoint);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} LOCAL_EPS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct ovl_mac_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} LOCAL_BY_MAC SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ovl_ip_key);
	__type(value, struct ovl_mac);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} IP_TO_MAC SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ovl_mac_key);
	__type(value, struct ovl_remote);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} REMOTE SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct ovl_flood);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} FLOOD SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct ovl_local_flood);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} LOCAL_FLOOD SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ovl_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} CONFIG SEC(".maps");

/* One row per possible CPU: the loader sets max_entries (see ovl_common.h). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, OVL_COUNTER_ROW);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} COUNTERS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, OVL_EP_SLOTS);
	__type(key, __u32);
	__type(value, struct ovl_ep_slot);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} EP_SLOTS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, OVL_REMOTE_SLOTS);
	__type(key, __u32);
	__type(value, struct ovl_mac_slot);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} REMOTE_SLOTS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, OVL_LOCAL_SLOTS);
	__type(key, __u32);
	__type(value, struct ovl_mac_slot);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} LOCAL_SLOTS SEC(".maps");

/* Drop events for `overlayctl monitor --drops`. Pinned, so a restarted agent
 * reads the same ring; when nobody reads, reserving fails and the drop is only
 * counted. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} DROPS SEC(".maps");

/* Not pinned: per loaded instance, only written when trace_enabled. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ovl_trace);
} TRACE SEC(".maps");

/* linux/if_arp.h drags in libc socket headers, which do not build for the
 * bpf target: the few ARP definitions needed are spelled out here. */
#define ARPHRD_ETHER 1
#define AF_INET 2
#define ARPOP_REQUEST 1
#define ARPOP_REPLY 2

struct arphdr {
	__be16 ar_hrd;
	__be16 ar_pro;
	__u8 ar_hln;
	__u8 ar_pln;
	__be16 ar_op;
};

/* Ethernet ARP body after struct arphdr. */
struct arp_eth {
	__u8 sha[ETH_ALEN];
	__u8 sip[4];
	__u8 tha[ETH_ALEN];
	__u8 tip[4];
} __attribute__((packed));

static __always_inline void count_n(__u32 idx, __u64 n)
{
	__u32 i = bpf_get_smp_processor_id() * OVL_COUNTER_ROW + idx;
	__u64 *v = bpf_map_lookup_elem(&COUNTERS, &i);
	if (v)
		*v += n; /* this CPU's row: no atomic needed */
}

static __always_inline void count(__u32 idx)
{
	count_n(idx, 1);
}

static __always_inline void trace(__u32 action, __u32 ifindex, __u32 tunnel_id,
				  __u32 remote, __u32 copies)
{
	if (!trace_enabled)
		return;
	__u32 zero = 0;
	struct ovl_trace *t = bpf_map_lookup_elem(&TRACE, &zero);
	if (!t)
		return;
	t->action = action;
	t->ifindex = ifindex;
	t->tunnel_id = tunnel_id;
	t->remote_ipv4 = remote;
	t->copies = copies;
}

static __always_inline int drop(struct __sk_buff *skb, __u32 reason)
{
	count(reason);
	trace(OVL_ACT_DROP, reason, 0, 0, 0);
	struct ovl_drop_event *ev = bpf_ringbuf_reserve(&DROPS, sizeof(*ev), 0);
	if (ev) {
		__u32 n = skb->len;
		if (n > OVL_DROP_HEAD)
			n = OVL_DROP_HEAD;
		struct bpf_tunnel_key key = {};
		ev->reason = reason;
		ev->ifindex = skb->ifindex;
		ev->vni = bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) == 0 ? key.tunnel_id : 0;
		ev->len = skb->len;
		ev->copied = 0;
		if (n > 0 && bpf_skb_load_bytes(skb, 0, ev->head, n) == 0)
			ev->copied = n;
		bpf_ringbuf_submit(ev, 0);
	}
	return TC_ACT_SHOT;
}

static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) |
		(a[4] ^ b[4]) | (a[5] ^ b[5])) == 0;
}

static __always_inline void mac_copy(__u8 *dst, const __u8 *src)
{
	__builtin_memcpy(dst, src, ETH_ALEN);
}

static __always_inline __u32 load_ip(const __u8 *p)
{
	__u32 v;
	__builtin_memcpy(&v, p, 4);
	return v;
}

static __always_inline void store_ip(__u8 *p, __u32 v)
{
	__builtin_memcpy(p, &v, 4);
}

/* Finalizer of a 32-bit hash (lowbias32): spreads every input bit. */
static __always_inline __u32 mix32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x7feb352d;
	h ^= h >> 15;
	h *= 0x846ca68b;
	h ^= h >> 16;
	return h;
}

/* Records, in tests, which lookups the slot arrays served. */
static __always_inline void trace_cached(__u32 bits, int reset)
{
	if (!trace_enabled)
		return;
	__u32 zero = 0;
	struct ovl_trace *t = bpf_map_lookup_elem(&TRACE, &zero);
	if (t)
		t->cached = reset ? bits : (t->cached | bits);
}

/*
 * Reads of the slot arrays (see ovl_common.h). The agent writes a slot in
 * three copies: counter odd, then the fields, then counter even. A copy taken
 * between two equal even readings of the counter is whole. Plain loads in
 * program order suffice on x86-64, whose loads are not reordered with other
 * loads (nor stores with other stores, on the agent's side); elsewhere the
 * slots are not read (no load-acquire in this toolchain's BPF), and the hash
 * maps serve every lookup.
 */
#if defined(__TARGET_ARCH_x86)
#define OVL_SLOTS 1
#else
#define OVL_SLOTS 0
#endif
#define compiler_barrier() asm volatile("" ::: "memory")

static __always_inline __u32 read_seq(const __u32 *seq)
{
	return *(const volatile __u32 *)seq;
}

/* The slot of a (VNI, MAC) key in REMOTE_SLOTS / LOCAL_SLOTS, before masking;
 * crates/ebpf/src/raw.rs computes the same. */
static __always_inline __u32 ovl_mac_slot(__u32 vni, const __u8 *mac)
{
	__u32 lo = load_ip(mac);
	__u32 hi = (__u32)mac[4] | ((__u32)mac[5] << 8);
	return mix32(vni ^ mix32(lo ^ (hi << 16) ^ hi));
}

/* The endpoint behind host-side veth `ifindex`, from its slot. */
static __always_inline int ep_from_slot(__u32 ifindex, struct ovl_endpoint *out)
{
	if (!OVL_SLOTS)
		return 0;
	__u32 i = ifindex & (OVL_EP_SLOTS - 1);
	struct ovl_ep_slot *s = bpf_map_lookup_elem(&EP_SLOTS, &i);
	if (!s)
		return 0;
	__u32 seq = read_seq(&s->seq);
	compiler_barrier();
	__u32 owner = s->ifindex;
	__builtin_memcpy(out, &s->ep, sizeof(*out));
	compiler_barrier();
	return !(seq & 1) && owner == ifindex && read_seq(&s->seq) == seq;
}

/* The value of (vni, mac) in a MAC slot array. */
static __always_inline int mac_from_slot(void *slots, __u32 mask, __u32 vni, const __u8 *mac,
					 __u32 *value)
{
	if (!OVL_SLOTS)
		return 0;
	__u32 i = ovl_mac_slot(vni, mac) & mask;
	struct ovl_mac_slot *s = bpf_map_lookup_elem(slots, &i);
	if (!s)
		return 0;
	__u32 seq = read_seq(&s->seq);
	compiler_barrier();
	__u32 v = s->value;
	int same = s->key.vni == vni && mac_eq(s->key.mac, mac);
	compiler_barrier();
	if ((seq & 1) || !same || read_seq(&s->seq) != seq)
		return 0;
	*value = v;
	return 1;
}

static __always_inline int set_key(struct __sk_buff *skb, __u32 vni, __u32 vtep)
{
	struct bpf_tunnel_key key = {};
	key.tunnel_id = vni;
	key.remote_ipv4 = vtep;
	key.tunnel_ttl = 64;
	return bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX);
}

/*
 * Head-end replication of one frame: a copy to every other local endpoint
 * of the VNI (egress of its host-side veth = into the container), then, if
 * `to_remote`, a copy per VTEP of the VNI's flood list through the vxlan
 * device. Returns the number of copies sent.
 */
static __always_inline __u32 flood(struct __sk_buff *skb, __u32 vni, __u32 self_ifindex,
				   __u32 vxlan_ifindex, int to_remote)
{
	__u32 copies = 0;
	struct ovl_local_flood *lf = bpf_map_lookup_elem(&LOCAL_FLOOD, &vni);
	if (lf) {
		__u32 n = lf->count;
		for (__u32 i = 0; i < OVL_MAX_LOCAL; i++) {
			if (i >= n)
				break;
			__u32 ifi = lf->ifindexes[i];
			if (ifi == 0 || ifi == self_ifindex)
				continue;
			if (bpf_clone_redirect(skb, ifi, 0) == 0)
				copies++;
			else
				count(C_FLOOD_COPY_FAILED);
		}
	}
	if (!to_remote || vxlan_ifindex == 0)
		return copies;
	struct ovl_flood *fl = bpf_map_lookup_elem(&FLOOD, &vni);
	if (fl) {
		__u32 n = fl->count;
		for (__u32 i = 0; i < OVL_MAX_VTEPS; i++) {
			if (i >= n)
				break;
			if (set_key(skb, vni, fl->vteps[i]) < 0) {
				count(C_FLOOD_COPY_FAILED);
				continue;
			}
			if (bpf_clone_redirect(skb, vxlan_ifindex, 0) == 0)
				copies++;
			else
				count(C_FLOOD_COPY_FAILED);
		}
	}
	return copies;
}

/* VXLAN header (RFC 7348): flags word with the I bit, then VNI << 8. */
struct vxlan_hdr {
	__be32 flags;
	__be32 vni;
};

#define VXLAN_FLAG_I 0x08000000
/* Outer IPv4 (no options) + UDP + VXLAN + inner Ethernet: inserted after the
 * frame's Ethernet header on encap (which then becomes the outer one), removed on
 * decap (the outer header stays and takes the inner one's addresses). */
#define VXLAN_LEN (sizeof(struct iphdr) + sizeof(struct udphdr) + sizeof(struct vxlan_hdr) + \
		   sizeof(struct ethhdr))

/* Not ours: let the next tcx program, or the stack, have it. */
#define TCX_NEXT -1

/* Outer Ethernet + IPv4 + UDP + VXLAN + inner Ethernet, written in one store. */
struct encap_hdr {
	struct ethhdr eth;
	struct iphdr ip;
	struct udphdr udp;
	struct vxlan_hdr vx;
	struct ethhdr inner;
} __attribute__((packed, aligned(2)));

static __always_inline __u16 ip_csum(const struct iphdr *iph)
{
	const __u16 *w = (const __u16 *)iph;
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < (int)(sizeof(*iph) / 2); i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/*
 * Flow hash of a frame for the outer UDP source port: the one the sending
 * socket set (TCP always does), else one of the inner addresses and ports.
 * Not bpf_get_hash_recalc: it runs the flow dissector, whose cold code costs
 * microseconds on a host that was idle, which is what a lone ping meets.
 */
static __always_inline __u32 flow_hash(struct __sk_buff *skb)
{
	__u32 h = skb->hash;
	if (h)
		return h;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph = (void *)(eth + 1);
	if ((void *)(eth + 1) > data_end)
		return 0;
	if ((void *)(iph + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return mix32(load_ip(eth->h_dest + 2) ^ load_ip(eth->h_source + 2));
	h = mix32(iph->saddr) ^ iph->daddr ^ ((__u32)iph->protocol << 24);
	__u32 *ports = (void *)(iph + 1);
	if (iph->ihl == 5 && !(iph->frag_off & bpf_htons(0x3fff)) &&
	    (iph->protocol == IPPROTO_TCP || iph->protocol == IPPROTO_UDP) &&
	    (void *)(ports + 1) <= data_end)
		h ^= mix32(*ports);
	return mix32(h);
}

/*
 * Encapsulates the frame in place and hands it to the underlay interface,
 * the neighbour subsystem filling in the outer MACs: the vxlan device's
 * transmit path (route lookup, UDP/IP output) is skipped. Returns -1 when
 * the frame must take the vxlan device instead (no underlay interface, or
 * adjust_room refused), else a tc verdict.
 */
static __always_inline int encap_direct(struct __sk_buff *skb, const struct ovl_config *cfg,
					__u32 vni, __u32 vtep)
{
	if (cfg->underlay_ifindex == 0)
		return -1;

	__u32 inner_len = skb->len;
	__u32 hash = flow_hash(skb);
	__u64 flags = BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 |
		      BPF_F_ADJ_ROOM_ENCAP_L4_UDP | BPF_F_ADJ_ROOM_ENCAP_L2_ETH |
		      BPF_F_ADJ_ROOM_ENCAP_L2(sizeof(struct ethhdr));
	/* No MTU check here (there is none at tc ingress since Linux 5.12): the
	 * container end's MTU, the overlay MTU, keeps full-size frames within the
	 * underlay's once grown. On failure nothing was changed. */
	if (bpf_skb_adjust_room(skb, VXLAN_LEN, BPF_ADJ_ROOM_MAC, flags) < 0)
		return -1;

	/* The room sits after the frame's Ethernet header, which stays in
	 * place and becomes the outer one (addresses from the neighbour
	 * subsystem): the inner header is a copy of it, written directly
	 * (the program's prologue made a cloned head writable). */
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct encap_hdr *h = data;
	if ((void *)(h + 1) > data_end) {
		/* A head shorter than the new headers (rare): make it linear. */
		if (bpf_skb_pull_data(skb, sizeof(*h)) < 0)
			return drop(skb, C_EG_DROP_TUNNEL_KEY);
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		h = data;
		if ((void *)(h + 1) > data_end)
			return drop(skb, C_EG_DROP_TUNNEL_KEY);
	}
	__builtin_memcpy(&h->inner, &h->eth, sizeof(h->inner));
	h->eth.h_proto = bpf_htons(ETH_P_IP);

	/* Built aligned, then copied: in the packed block it sits at offset 14. */
	struct iphdr ip = {};
	ip.version = 4;
	ip.ihl = 5;
	/* A GSO frame's length is set per segment; one over 64 KiB gets 0 here,
	 * as the kernel's own BIG TCP does. */
	__u32 tot_len = inner_len + VXLAN_LEN - sizeof(struct ethhdr);
	ip.tot_len = tot_len > 0xffff ? 0 : bpf_htons(tot_len);
	ip.frag_off = bpf_htons(0x4000); /* DF: the overlay MTU leaves room */
	ip.ttl = 64;
	ip.protocol = IPPROTO_UDP;
	ip.saddr = cfg->local_vtep;
	ip.daddr = bpf_htonl(vtep);
	ip.check = ip_csum(&ip);
	__builtin_memcpy(&h->ip, &ip, sizeof(ip));
	/* Source port from the inner flow hash, as the kernel's vxlan does. */
	struct udphdr udp = {
		.source = bpf_htons(49152 + (hash % 16384)),
		.dest = cfg->vxlan_port,
		.len = bpf_htons(inner_len + sizeof(struct udphdr) + sizeof(struct vxlan_hdr)),
	};
	__builtin_memcpy(&h->udp, &udp, sizeof(udp));
	struct vxlan_hdr vx = { .flags = bpf_htonl(VXLAN_FLAG_I), .vni = bpf_htonl(vni << 8) };
	__builtin_memcpy(&h->vx, &vx, sizeof(vx));

	struct bpf_redir_neigh nh = { .nh_family = AF_INET, .ipv4_nh = bpf_htonl(vtep) };
	count(C_EG_ENCAP);
	count(C_EG_ENCAP_DIRECT);
	trace(OVL_ACT_ENCAP, cfg->underlay_ifindex, vni, vtep, 0);
	return bpf_redirect_neigh(cfg->underlay_ifindex, &nh, sizeof(nh), 0);
}

/* To the VTEP of a remote MAC: in place when possible, else through the
 * collect-metadata vxlan device. One subprogram for both callers. */
static __attribute__((noinline)) int to_remote(struct __sk_buff *skb, const struct ovl_config *cfg,
				     __u32 vni, __u32 vtep)
{
	int verdict = encap_direct(skb, cfg, vni, vtep);
	if (verdict >= 0)
		return verdict;
	if (set_key(skb, vni, vtep) < 0)
		return drop(skb, C_EG_DROP_TUNNEL_KEY);
	count(C_EG_ENCAP);
	trace(OVL_ACT_ENCAP, cfg->vxlan_ifindex, vni, vtep, 0);
	return bpf_redirect(cfg->vxlan_ifindex, 0);
}

/*
 * The ARP side of lxc_egress: anti-spoofing of the sender fields, and the
 * reply for a known address. A subprogram, not inlined: the busy path
 * (unicast IPv4) does not carry its code. Returns a tc verdict, or -1 when
 * the request goes on (flooded like any broadcast).
 */
static __attribute__((noinline)) int arp_egress(struct __sk_buff *skb, const struct ovl_endpoint *ep)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct arphdr *arp = (void *)(eth + 1);
	struct arp_eth *body = (void *)(arp + 1);
	if ((void *)(body + 1) > data_end)
		return drop(skb, C_EG_DROP_MALFORMED);
	if (arp->ar_hrd != bpf_htons(ARPHRD_ETHER) || arp->ar_pro != bpf_htons(ETH_P_IP) ||
	    arp->ar_hln != ETH_ALEN || arp->ar_pln != 4)
		return drop(skb, C_EG_DROP_MALFORMED);
	if (!mac_eq(body->sha, ep->mac))
		return drop(skb, C_EG_DROP_SPOOFED_MAC);
	__u32 sip = load_ip(body->sip);
	/* 0.0.0.0 is an address probe (RFC 5227), not a claim. */
	if (sip != 0 && sip != ep->ip)
		return drop(skb, C_EG_DROP_SPOOFED_IP);

	__u32 tip = load_ip(body->tip);
	if (arp->ar_op != bpf_htons(ARPOP_REQUEST) || tip == ep->ip || sip == 0)
		return -1;
	struct ovl_ip_key ik = { .vni = ep->vni, .ip = tip };
	struct ovl_mac *answer = bpf_map_lookup_elem(&IP_TO_MAC, &ik);
	if (!answer)
		return -1;
	/* Proxy ARP: turn the request into the reply the owner would send,
	 * and hand it back. */
	__u8 owner[ETH_ALEN];
	mac_copy(owner, answer->mac);
	mac_copy(eth->h_dest, ep->mac);
	mac_copy(eth->h_source, owner);
	arp->ar_op = bpf_htons(ARPOP_REPLY);
	mac_copy(body->tha, ep->mac);
	store_ip(body->tip, sip);
	mac_copy(body->sha, owner);
	store_ip(body->sip, tip);
	count(C_EG_ARP_REPLIED);
	trace(OVL_ACT_ARP_REPLY, skb->ifindex, ep->vni, 0, 0);
	return bpf_redirect(skb->ifindex, 0);
}

/*
 * Everything lxc_egress does not settle on its busy path: unicast that is
 * not IPv4 or not remote (another endpoint of this host, unknown), and BUM.
 * A subprogram for the same reason as arp_egress.
 */
static __attribute__((noinline)) int deliver(struct __sk_buff *skb, __u32 vni,
					     int remote_checked)
{
	__u32 self = skb->ifindex;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return drop(skb, C_EG_DROP_MALFORMED);
	__u32 zero = 0;
	struct ovl_config *cfg = bpf_map_lookup_elem(&CONFIG, &zero);
	if (!cfg)
		return drop(skb, C_EG_DROP_NO_CONFIG);

	if (eth->h_dest[0] & 1)
		goto bum;

	struct ovl_mac_key mk = { .vni = vni };
	mac_copy(mk.mac, eth->h_dest);
	if (!remote_checked) {
		struct ovl_remote *rem = bpf_map_lookup_elem(&REMOTE, &mk);
		if (rem && cfg->vxlan_ifindex)
			return to_remote(skb, cfg, vni, rem->vtep);
	}

	__u32 *local = bpf_map_lookup_elem(&LOCAL_BY_MAC, &mk);
	if (local) {
		__u32 target = *local;
		if (target == self)
			return drop(skb, C_EG_DROP_HAIRPIN);
		count(C_EG_REDIRECT_LOCAL);
		trace(OVL_ACT_REDIRECT_LOCAL, target, vni, 0, 0);
		/* Straight into the peer container's namespace. */
		return bpf_redirect_peer(target, 0);
	}

bum:;
	/* Broadcast, multicast, unknown unicast: head-end replication. */
	__u32 copies = flood(skb, vni, self, cfg->vxlan_ifindex, 1);
	count(C_EG_FLOODED);
	count_n(C_EG_FLOOD_COPIES, copies);
	trace(OVL_ACT_FLOOD, 0, vni, 0, copies);
	return TC_ACT_SHOT;
}

SEC("classifier")
int lxc_egress(struct __sk_buff *skb)
{
	__u32 self = skb->ifindex;
	count(C_EG_PACKETS);

	trace_cached(0, 1);
	struct ovl_endpoint slot_ep;
	struct ovl_endpoint *ep = &slot_ep;
	if (ep_from_slot(self, &slot_ep)) {
		trace_cached(OVL_CACHED_EP, 0);
	} else {
		ep = bpf_map_lookup_elem(&LOCAL_EPS, &self);
		if (!ep)
			return drop(skb, C_EG_DROP_UNKNOWN_SOURCE);
	}
	__u32 vni = ep->vni;

	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return drop(skb, C_EG_DROP_MALFORMED);

	/* Anti-spoofing: the frame must carry the endpoint's own MAC ... */
	if (!mac_eq(eth->h_source, ep->mac))
		return drop(skb, C_EG_DROP_SPOOFED_MAC);

	int remote_checked = 0;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		/* ... and its own IPv4 address. */
		struct iphdr *iph = (void *)(eth + 1);
		if ((void *)(iph + 1) > data_end)
			return drop(skb, C_EG_DROP_MALFORMED);
		if (iph->saddr != ep->ip)
			return drop(skb, C_EG_DROP_SPOOFED_IP);
		/* The busy path: unicast IPv4 to a container on another host. */
		if (!(eth->h_dest[0] & 1)) {
			__u32 zero = 0;
			struct ovl_config *cfg = bpf_map_lookup_elem(&CONFIG, &zero);
			if (!cfg)
				return drop(skb, C_EG_DROP_NO_CONFIG);
			__u32 vtep = 0;
			int known = mac_from_slot(&REMOTE_SLOTS, OVL_REMOTE_SLOTS - 1, vni,
						  eth->h_dest, &vtep);
			if (known) {
				trace_cached(OVL_CACHED_REMOTE, 0);
			} else {
				struct ovl_mac_key mk = { .vni = vni };
				mac_copy(mk.mac, eth->h_dest);
				struct ovl_remote *rem = bpf_map_lookup_elem(&REMOTE, &mk);
				if (rem) {
					vtep = rem->vtep;
					known = 1;
				}
			}
			if (known && cfg->vxlan_ifindex)
				return to_remote(skb, cfg, vni, vtep);
			remote_checked = 1;
		}
	} else if (eth->h_proto == bpf_htons(ETH_P_ARP)) {
		int verdict = arp_egress(skb, ep);
		if (verdict != -1)
			return verdict;
	}
	return deliver(skb, vni, remote_checked);
}

SEC("classifier")
int vxlan_ingress(struct __sk_buff *skb)
{
	count(C_IN_PACKETS);

	struct bpf_tunnel_key key = {};
	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return drop(skb, C_IN_DROP_NO_TUNNEL_KEY);
	__u32 vni = key.tunnel_id;

	/* A VNI we serve is one with local endpoints. */
	struct ovl_local_flood *lf = bpf_map_lookup_elem(&LOCAL_FLOOD, &vni);
	if (!lf || lf->count == 0)
		return drop(skb, C_IN_DROP_UNKNOWN_VNI);

	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return drop(skb, C_IN_DROP_MALFORMED);

	if (eth->h_dest[0] & 1) {
		/* Remote copies are the sender's job (head-end replication). */
		__u32 copies = flood(skb, vni, 0, 0, 0);
		count(C_IN_FLOODED);
		count_n(C_IN_FLOOD_COPIES, copies);
		trace(OVL_ACT_FLOOD, 0, vni, key.remote_ipv4, copies);
		return TC_ACT_SHOT;
	}

	struct ovl_mac_key mk = { .vni = vni };
	mac_copy(mk.mac, eth->h_dest);
	__u32 *local = bpf_map_lookup_elem(&LOCAL_BY_MAC, &mk);
	if (!local)
		return drop(skb, C_IN_DROP_NO_LOCAL_ENDPOINT);
	__u32 target = *local;
	count(C_IN_REDIRECT);
	trace(OVL_ACT_REDIRECT_LOCAL, target, vni, key.remote_ipv4, 0);
	return bpf_redirect_peer(target, 0);
}

SEC("classifier")
int vtep_ingress(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct ovl_config *cfg = bpf_map_lookup_elem(&CONFIG, &zero);
	if (!cfg || cfg->underlay_ifindex == 0)
		return TCX_NEXT;

	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph = (void *)(eth + 1);
	struct udphdr *udp = (void *)(iph + 1);
	struct vxlan_hdr *vx = (void *)(udp + 1);
	struct ethhdr *inner = (void *)(vx + 1);
	/* Headers outside the linear part (rare): the slow path copes. */
	if ((void *)(inner + 1) > data_end)
		return TCX_NEXT;
	if (eth->h_proto != bpf_htons(ETH_P_IP) || iph->version != 4 || iph->ihl != 5 ||
	    iph->protocol != IPPROTO_UDP || iph->daddr != cfg->local_vtep ||
	    (iph->frag_off & bpf_htons(0x3fff)) || udp->dest != cfg->vxlan_port)
		return TCX_NEXT;
	/* tc ingress runs before ip_rcv: check what it would have checked. */
	if (ip_csum(iph) != 0 ||
	    (skb->gso_size == 0 && bpf_ntohs(iph->tot_len) != skb->len - sizeof(*eth)))
		return TCX_NEXT;
	/* Only plain VXLAN (I flag alone) carrying unicast IPv4: the rest is
	 * flooded, answered or dropped by the vxlan device path. */
	if (vx->flags != bpf_htonl(VXLAN_FLAG_I) || (inner->h_dest[0] & 1) ||
	    inner->h_proto != bpf_htons(ETH_P_IP))
		return TCX_NEXT;

	__u32 vni = bpf_ntohl(vx->vni) >> 8;
	__u32 target;
	trace_cached(0, 1);
	if (mac_from_slot(&LOCAL_SLOTS, OVL_LOCAL_SLOTS - 1, vni, inner->h_dest, &target)) {
		trace_cached(OVL_CACHED_LOCAL, 0);
	} else {
		struct ovl_mac_key mk = { .vni = vni };
		mac_copy(mk.mac, inner->h_dest);
		__u32 *local = bpf_map_lookup_elem(&LOCAL_BY_MAC, &mk);
		if (!local)
			return TCX_NEXT;
		target = *local;
	}

	/* Only from the VTEP the agent programmed for the sender's MAC: anything
	 * else (a sender that is no registered host, a stale or forged outer
	 * source) takes the slow path through the host's UDP socket, where the
	 * agent's VXLAN admission rule decides. Skipping it here would let any
	 * machine on the underlay reach a container by its (guessable) MAC. */
	struct ovl_mac_key sk = { .vni = vni };
	mac_copy(sk.mac, inner->h_source);
	struct ovl_remote *sender = bpf_map_lookup_elem(&REMOTE, &sk);
	if (!sender || sender->vtep != bpf_ntohl(iph->saddr))
		return TCX_NEXT;

	/* A non-zero outer UDP checksum must have been verified (by a NIC) for
	 * us to skip it; otherwise udp_rcv verifies it on the slow path. */
	if (udp->check != 0 && bpf_csum_level(skb, BPF_CSUM_LEVEL_QUERY) < 0)
		return TCX_NEXT;

	__u32 remote = bpf_ntohl(iph->saddr);
	struct ethhdr keep;
	__builtin_memcpy(&keep, inner, sizeof(keep));
	/* FIXED_GSO: the segments' size is the inner one the sender chose; left
	 * to itself the helper would grow gso_size by the removed 50 bytes, and
	 * segments that size no longer fit the container's MTU. */
	if (bpf_skb_adjust_room(skb, -(__s32)VXLAN_LEN, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO) < 0) {
		/* Nothing was changed: the slow path takes the frame. */
		count(C_UL_DECAP_FAILED);
		return TCX_NEXT;
	}
	/* As udp_rcv does: the outer UDP header consumed one verified level. */
	bpf_csum_level(skb, BPF_CSUM_LEVEL_DEC);
	/* The outer Ethernet header stayed; it takes the inner one's fields. */
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end) {
		count(C_UL_DECAP_FAILED);
		return TC_ACT_SHOT;
	}
	__builtin_memcpy(eth, &keep, sizeof(keep));
	count(C_UL_DECAP);
	trace(OVL_ACT_REDIRECT_LOCAL, target, vni, remote, 0);
	return bpf_redirect_peer(target, 0);
}
