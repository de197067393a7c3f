// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * Experiment (scripts/experiments/veth-floor.sh), not part of the agent: carries container
 * frames between two hosts WITHOUT encapsulation, with the same redirects the eBPF datapath
 * uses (bpf_redirect_neigh out of the container's veth, bpf_redirect_peer into the
 * container). Its throughput is the floor any veth-attached container path can reach on a
 * machine, so the gap between it and the eBPF path is what encapsulation costs.
 *
 * Built per host with -DNH (next hop: the other host's underlay IPv4, as a __be32),
 * -DUL (underlay ifindex), -DHV (host end of the container veth), -DCIP (the container's
 * IPv4, as a __be32) and -DCMAC (its MAC, as a brace list).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define AF_INET 2

SEC("tc/out")
int out(struct __sk_buff *skb)
{
	struct bpf_redir_neigh nh = { .nh_family = AF_INET, .ipv4_nh = NH };
	return bpf_redirect_neigh(UL, &nh, sizeof(nh), 0);
}

SEC("tc/in")
int in(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->daddr != CIP)
		return TC_ACT_OK;
	unsigned char mac[6] = CMAC;
	__builtin_memcpy(eth->h_dest, mac, 6);
	return bpf_redirect_peer(HV, 0);
}
