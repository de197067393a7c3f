#!/usr/bin/env bash
# Experiment: how close can ANY veth-attached container path get to the underlay here?
#
# Builds two "hosts" (network namespaces on an underlay bridge) with one "container" each,
# and carries container frames between them without encapsulation using the redirects of the
# eBPF datapath (veth_floor.c). Then it alternates iperf3 runs: host to host (the underlay)
# and container to container (the floor), and prints each pair and the median ratio.
# Compare with `cargo xtask bench datapath` (the eBPF path's ratio to the underlay): the
# difference is what VXLAN encapsulation costs on this machine.
#
# Usage (root): scripts/experiments/veth-floor.sh [RUNS]   (default 6; 4 s per iperf3 run)
#
# Side by side with the eBPF path: bring up a lab with two containers, e.g.
#   cargo xtask lab up --hosts 2 --datapath ebpf --name pf   (+ a network and two attaches)
# and pass the client's namespace, the server's namespace and the server's address in
# OVL_CLIENT_NS, OVL_SERVER_NS and OVL_SERVER_IP: every run then also measures that path, and
# the summary gives its median ratio to the underlay and to the floor.
# Needs: iproute2, clang-19, libbpf-dev, iperf3, jq. Uses 198.18.0.21-22 and 10.99.0.0/24 in
# its own namespaces (vf*), and removes everything it made on exit.
set -euo pipefail
RUNS=${1:-6}
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d /tmp/veth-floor.XXXXXX)
NSES=(vfha vfhb vfca vfcb vful)
PIDS=()

cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for n in "${NSES[@]}"; do ip netns del "$n" 2>/dev/null || true; done
	rm -rf "$WORK"
}
trap cleanup EXIT

for n in "${NSES[@]}"; do
	if grep -qw "$n" <<<"$(ip netns list)"; then
		echo "namespace $n exists: another run, or a leftover (ip netns del $n)" >&2
		exit 1
	fi
done

ip netns add vful
ip -n vful link add br0 type bridge
ip -n vful link set br0 up
for h in a b; do
	ip netns add "vfh$h"
	ip netns add "vfc$h"
	ip link add "ul$h" netns vful type veth peer name eth0 netns "vfh$h"
	ip -n vful link set "ul$h" master br0 up
	ip link add hv netns "vfh$h" type veth peer name eth0 netns "vfc$h"
	for n in "vfh$h" "vfc$h"; do
		ip -n "$n" link set lo up
		ip -n "$n" link set eth0 up
	done
	ip -n "vfh$h" link set hv up
	# The overlay's MTU, so both paths send segments of the same size.
	ip -n "vfc$h" link set eth0 mtu 1450
done
ip -n vfha addr add 198.18.0.21/24 dev eth0
ip -n vfhb addr add 198.18.0.22/24 dev eth0
ip -n vfca addr add 10.99.0.2/24 dev eth0
ip -n vfcb addr add 10.99.0.3/24 dev eth0
mac() { ip -n "$1" -br link show eth0 | awk '{print $3}'; }
MA=$(mac vfca)
MB=$(mac vfcb)
ip -n vfca neigh add 10.99.0.3 lladdr "$MB" dev eth0
ip -n vfcb neigh add 10.99.0.2 lladdr "$MA" dev eth0
ip netns exec vfha ping -q -c1 -W1 198.18.0.22 >/dev/null

ifindex() { ip netns exec "$1" cat "/sys/class/net/$2/ifindex"; }
be32() { # a.b.c.d -> the __be32 as a little-endian integer literal
	local IFS=.
	read -r a b c d <<<"$1"
	printf '0x%02x%02x%02x%02x' "$d" "$c" "$b" "$a"
}
for h in a b; do
	if [ "$h" = a ]; then peer=198.18.0.22 cip=10.99.0.2 m=$MA; else peer=198.18.0.21 cip=10.99.0.3 m=$MB; fi
	clang-19 -O2 -g -target bpf -I/usr/include/x86_64-linux-gnu \
		-DNH="$(be32 $peer)" -DUL="$(ifindex "vfh$h" eth0)" -DHV="$(ifindex "vfh$h" hv)" \
		-DCIP="$(be32 $cip)" -DCMAC="{0x${m//:/,0x}}" \
		-c "$HERE/veth_floor.c" -o "$WORK/floor$h.o"
	ip netns exec "vfh$h" tc qdisc add dev hv clsact
	ip netns exec "vfh$h" tc filter add dev hv ingress bpf da obj "$WORK/floor$h.o" sec tc/out
	ip netns exec "vfh$h" tc qdisc add dev eth0 clsact
	ip netns exec "vfh$h" tc filter add dev eth0 ingress bpf da obj "$WORK/floor$h.o" sec tc/in
done
ip netns exec vfca ping -q -c1 -W1 10.99.0.3 >/dev/null

ip netns exec vfhb iperf3 -s -B 198.18.0.22 >/dev/null 2>&1 &
PIDS+=($!)
ip netns exec vfcb iperf3 -s -B 10.99.0.3 >/dev/null 2>&1 &
PIDS+=($!)
OVL=${OVL_CLIENT_NS:+yes}
if [ -n "$OVL" ]; then
	ip netns exec "$OVL_SERVER_NS" iperf3 -s -p 5299 -B "$OVL_SERVER_IP" >/dev/null 2>&1 &
	PIDS+=($!)
fi
sleep 1
run() { ip netns exec "$1" iperf3 -c "$2" ${3:+-p $3} -t 4 -J | jq '.end.sum_received.bits_per_second / 1e9'; }
median() { sort -g | awk '{a[NR]=$1} END {m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2; printf "%.3f", m}'; }
ratios=()
ovl_u=()
ovl_f=()
for r in $(seq "$RUNS"); do
	u=$(run vfha 198.18.0.22)
	f=$(run vfca 10.99.0.3)
	ratio=$(echo "$f / $u" | bc -l)
	ratios+=("$ratio")
	printf 'run %d: underlay %.2f Gbit/s, veth floor %.2f Gbit/s, ratio %.3f' "$r" "$u" "$f" "$ratio"
	if [ -n "$OVL" ]; then
		o=$(run "$OVL_CLIENT_NS" "$OVL_SERVER_IP" 5299)
		ovl_u+=("$(echo "$o / $u" | bc -l)")
		ovl_f+=("$(echo "$o / $f" | bc -l)")
		printf ', overlay %.2f Gbit/s' "$o"
	fi
	printf '\n'
done
echo "median ratio veth floor / underlay: $(printf '%s\n' "${ratios[@]}" | median) over $RUNS runs"
if [ -n "$OVL" ]; then
	echo "median ratio overlay / underlay: $(printf '%s\n' "${ovl_u[@]}" | median)"
	echo "median ratio overlay / veth floor: $(printf '%s\n' "${ovl_f[@]}" | median)"
fi
