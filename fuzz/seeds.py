#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets into fuzz/corpus/<target>/seed-*.

Each input starts with the selector byte the target's check reads (see crates/fuzz-checks):
dns_request: which networks ask; plugin_body: the method; api_body: the endpoint;
kv_record: the key. Re-running rewrites the seeds; inputs the fuzzer added stay.
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
NID = "a9d34fbbbcbf0ffe6c5fb12ad65d0db1de0b0bf364d0eaf57c156e07af188563"
EID = "4195b5f917ada7cd497a33f61d9b0638b112892ebff6d78f0b75bc065e7ff1d5"


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def qname(name):
    out = b""
    for label in name.strip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\x00"


def query(name, qtype, flags=0x0100, edns=None, qd=1, extra=b""):
    ar = 1 if edns is not None else 0
    msg = struct.pack(">HHHHHH", 0x4242, flags, qd, 0, 0, ar)
    msg += qname(name) + struct.pack(">HH", qtype, 1)
    if edns is not None:
        msg += b"\x00" + struct.pack(">HHIH", 41, edns, 0, 0)
    return msg + extra


A, AAAA, PTR, MX, ANY = 1, 28, 12, 15, 255
dns = {
    "a-c1-net1": (0, query("c1.net1.", A)),
    "a-web-both": (1, query("web.", A)),
    "aaaa-web-edns": (0, query("web.net1.", AAAA, edns=1232)),
    "a-big-udp": (0, query("big.", A)),
    "a-big-edns": (0, query("big.", A, edns=4096)),
    "ptr": (0, query("3.0.1.10.in-addr.arpa.", PTR)),
    "any-c1": (0, query("c1.", ANY)),
    "mx-forward": (0, query("example.com.", MX)),
    "nx-net1": (0, query("nope.net1.", A)),
    "no-networks": (2, query("c1.net1.", A)),
    "response": (0, query("c1.", A, flags=0x8180)),
    "tc-bit": (0, query("c1.", A, flags=0x0300)),
    "two-questions": (0, query("c1.", A, qd=2)),
    "edns-v1": (0, query("c1.", A, edns=1232)[:-6] + b"\x01\x00\x00\x00\x00\x00"),
    "compressed-name": (0, struct.pack(">HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c" + struct.pack(">HH", 1, 1)),
    "short-header": (0, b"\x42\x42\x01\x00\x00\x01"),
    "trailing-bytes": (0, query("c1.", A, extra=b"\x00\x00")),
}
for name, (sel, msg) in dns.items():
    write("dns_request", name, bytes([sel]) + msg)

METHODS = [
    "Plugin.Activate", "NetworkDriver.GetCapabilities", "NetworkDriver.CreateNetwork",
    "NetworkDriver.DeleteNetwork", "NetworkDriver.AllocateNetwork", "NetworkDriver.FreeNetwork",
    "NetworkDriver.CreateEndpoint", "NetworkDriver.EndpointOperInfo",
    "NetworkDriver.DeleteEndpoint", "NetworkDriver.Join", "NetworkDriver.Leave",
    "NetworkDriver.DiscoverNew", "NetworkDriver.DiscoverDelete",
    "NetworkDriver.ProgramExternalConnectivity", "NetworkDriver.RevokeExternalConnectivity",
    "IpamDriver.GetCapabilities", "IpamDriver.GetDefaultAddressSpaces", "IpamDriver.RequestPool",
    "IpamDriver.ReleasePool", "IpamDriver.RequestAddress", "IpamDriver.ReleaseAddress",
    "NetworkDriver.NoSuchMethod",
]
portmap = {"com.docker.network.endpoint.exposedports": [{"Proto": 6, "Port": 80}],
           "com.docker.network.portmap": [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "",
                                           "HostPort": 18080, "HostPortEnd": 18080}]}
ep = {"NetworkID": NID, "EndpointID": EID}
plugin = {
    "Plugin.Activate": None,
    "NetworkDriver.GetCapabilities": None,
    "NetworkDriver.CreateNetwork": {"NetworkID": NID, "Options": {"com.docker.network.enable_ipv6": False, "com.docker.network.generic": {"dob.gateway": "1", "com.docker.network.driver.mtu": "1400"}}, "IPv4Data": [{"AddressSpace": "LocalDefault", "Gateway": "198.18.130.1/24", "Pool": "198.18.130.0/24"}], "IPv6Data": []},
    "NetworkDriver.DeleteNetwork": {"NetworkID": NID},
    "NetworkDriver.AllocateNetwork": {"NetworkID": NID, "Options": {"a": "b"}, "IPv4Data": [{"Pool": "10.0.0.0/24"}], "IPv6Data": None},
    "NetworkDriver.FreeNetwork": {"NetworkID": NID},
    "NetworkDriver.CreateEndpoint": {**ep, "Interface": {"Address": "198.18.130.2/24", "AddressIPv6": "", "MacAddress": ""}, "Options": {"com.docker.network.endpoint.dnsservers": ["198.18.0.1"], **portmap}},
    "NetworkDriver.EndpointOperInfo": ep,
    "NetworkDriver.DeleteEndpoint": ep,
    "NetworkDriver.Join": {**ep, "SandboxKey": "/run/docker/netns/e6253d0b25ca", "Options": portmap},
    "NetworkDriver.Leave": ep,
    "NetworkDriver.DiscoverNew": {"DiscoveryType": 1, "DiscoveryData": {"Address": "198.18.0.12", "self": False}},
    "NetworkDriver.DiscoverDelete": {"DiscoveryType": 1, "DiscoveryData": None},
    "NetworkDriver.ProgramExternalConnectivity": {**ep, "Options": portmap},
    "NetworkDriver.RevokeExternalConnectivity": ep,
    "IpamDriver.GetCapabilities": None,
    "IpamDriver.GetDefaultAddressSpaces": None,
    "IpamDriver.RequestPool": {"AddressSpace": "OvlLocal", "Pool": "198.18.130.0/24", "SubPool": "", "Options": {}, "V6": False},
    "IpamDriver.ReleasePool": {"PoolID": "ovl/pending/p1/v4"},
    "IpamDriver.RequestAddress": {"PoolID": "ovl/pending/p1/v4", "Address": "", "Options": {"RequestAddressType": "com.docker.network.gateway"}},
    "IpamDriver.ReleaseAddress": {"PoolID": "ovl/pending/p1/v4", "Address": "198.18.130.2"},
    "NetworkDriver.NoSuchMethod": {},
}
for i, m in enumerate(METHODS):
    body = b"null" if plugin[m] is None else json.dumps(plugin[m]).encode()
    write("plugin_body", m.split(".")[1].lower(), bytes([i]) + body)
bad = {
    "array-body": (2, b"[1,2]"),
    "wrong-type": (2, b'{"NetworkID": 5}'),
    "bad-cidr": (6, json.dumps({**ep, "Interface": {"Address": "300.1.1.1/24"}}).encode()),
    "empty-body": (9, b""),
    "deep-options": (2, json.dumps({"NetworkID": NID, "Options": {"x": [[[[{"y": 1e300}]]]]}}).encode()),
}
for name, (sel, body) in bad.items():
    write("plugin_body", name, bytes([sel]) + body)

api = {
    "network": (0, {"name": "net1", "subnet": "10.1.0.0/24", "gateway": "10.1.0.1", "vni": 4242, "internal": False, "mtu": 1400}),
    "network-minimal": (0, {"name": "net2", "subnet": None, "gateway": None, "vni": None, "internal": True, "mtu": None}),
    "network-bad-gateway": (0, {"name": "n", "subnet": "10.1.0.0/24", "gateway": "10.2.0.1", "vni": None, "internal": False, "mtu": None}),
    "attach": (1, {"network": "net1", "name": "c1", "netns": "/run/netns/c1", "pid": None, "aliases": ["web", "db"], "ip": "10.1.0.5", "mac": "02:42:0a:01:00:05", "publish": [{"host_port": 8080, "port": 80, "proto": "tcp"}]}),
    "attach-pid": (1, {"network": "net1", "name": "c2", "pid": 4242}),
    "detach": (2, {"network": "net1", "name": "c1"}),
    "not-json": (0, None),
}
for name, (sel, body) in api.items():
    raw = b"{not json" if body is None else json.dumps(body).encode()
    write("api_body", name, bytes([sel]) + raw)

records = {
    "host": (0, {"id": "h1", "vtep": "198.18.0.11", "underlay_mtu": 1500, "datapath": "kernel", "version": "0.1.0", "gw_subnet": "172.30.0.0/24"}),
    "alive": (1, {"id": "h1", "boot_id": "b-1", "since": 1700000000}),
    "network": (2, {"name": "net1", "vni": 4242, "subnet": "10.1.0.0/24", "gateway": "10.1.0.1", "internal": False, "mtu": None}),
    "endpoint": (3, {"id": "e1", "network": "net1", "host": "h1", "name": "c1", "aliases": ["web"], "ip": "10.1.0.2", "mac": "02:42:0a:01:00:02", "publish": [{"host_port": 8080, "port": 80, "proto": "udp"}]}),
    "claim": (4, "e1"),
    "subnets": (5, {"net1": "10.1.0.0/24"}),
}
for name, (sel, body) in records.items():
    write("kv_record", name, bytes([sel]) + json.dumps(body).encode())
write("kv_record", "own-key", b"\xff/ovl/v1/endpoints/net2/e7\x00" + json.dumps(records["endpoint"][1]).encode())
write("kv_record", "endpoint-bad-mac", b"\x03" + json.dumps({**records["endpoint"][1], "mac": "zz"}).encode())
