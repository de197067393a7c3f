//! The plugin protocol through the real HTTP server on a unix socket in a temp dir, with a
//! recording backend. Request fixtures are the bodies dockerd 20.10.24 sent
//! (shared/reference/docker-remote-transcript.md) plus IPAM bodies seen in dockerd_plugin.rs.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{Call, Recorder};
use ovl_docker::{DockerError, PluginServer};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NID: &str = "a9d34fbbbcbf0ffe6c5fb12ad65d0db1de0b0bf364d0eaf57c156e07af188563";
const EID: &str = "4195b5f917ada7cd497a33f61d9b0638b112892ebff6d78f0b75bc065e7ff1d5";

struct Harness {
    _dir: tempfile::TempDir,
    sock: PathBuf,
    rec: Arc<Recorder>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), DockerError>>>,
}

impl Harness {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // A parent that does not exist yet: bind creates it.
        let sock = dir.path().join("run/docker/plugins/ovl.sock");
        let rec = Arc::new(Recorder::new());
        let server = PluginServer::bind(&sock).await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run_until(rec.clone(), async {
            let _ = rx.await;
        }));
        Self {
            _dir: dir,
            sock,
            rec,
            stop: Some(tx),
            task: Some(task),
        }
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
        assert!(!self.sock.exists(), "socket removed on shutdown");
    }

    async fn post(&self, method: &str, body: &str) -> (u16, String, Value) {
        raw(&self.sock, "POST", method, body).await
    }
}

/// One HTTP/1.1 request, the way dockerd's Go client sends it.
async fn raw(sock: &Path, verb: &str, method: &str, body: &str) -> (u16, String, Value) {
    let mut s = tokio::net::UnixStream::connect(sock).await.unwrap();
    let req = format!(
        "{verb} /{method} HTTP/1.1\r\nHost: plugin\r\nUser-Agent: Go-http-client/1.1\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let ctype = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_string)
        })
        .unwrap_or_default();
    (status, ctype, serde_json::from_str(body).unwrap())
}

#[tokio::test]
async fn handshake() {
    let h = Harness::start().await;
    for body in ["null", ""] {
        let (st, ct, v) = h.post("Plugin.Activate", body).await;
        assert_eq!(st, 200);
        assert_eq!(ct, "application/vnd.docker.plugins.v1+json");
        assert_eq!(v, json!({"Implements": ["NetworkDriver", "IpamDriver"]}));
    }
    let (st, _, v) = h.post("NetworkDriver.GetCapabilities", "null").await;
    assert_eq!(st, 200);
    assert_eq!(
        v,
        json!({"Scope": "local", "ConnectivityScope": "global", "GwAllocChecker": true})
    );
    let (_, _, v) = h.post("IpamDriver.GetCapabilities", "null").await;
    assert_eq!(
        v,
        json!({"RequiresMACAddress": false, "RequiresRequestReplay": false})
    );
    let (_, _, v) = h.post("IpamDriver.GetDefaultAddressSpaces", "null").await;
    assert_eq!(
        v,
        json!({"LocalDefaultAddressSpace": "OvlLocal", "GlobalDefaultAddressSpace": "OvlGlobal"})
    );
    assert!(h.rec.names().is_empty());
    let mode = std::fs::metadata(&h.sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    h.shutdown().await;
}

#[tokio::test]
async fn full_lifecycle_with_transcript_bodies() {
    let h = Harness::start().await;
    // docker network create (pool + gateway), as dockerd sends them.
    let (st, _, pool) = h
        .post("IpamDriver.RequestPool", r#"{"AddressSpace":"OvlLocal","Pool":"198.18.130.0/24","SubPool":"","Options":{},"V6":false}"#)
        .await;
    assert_eq!(st, 200, "{pool}");
    assert_eq!(
        pool,
        json!({"PoolID": "ovl/pending/p1/v4", "Pool": "198.18.130.0/24", "Data": {}})
    );
    let (st, _, gw) = h
        .post("IpamDriver.RequestAddress", r#"{"PoolID":"ovl/pending/p1/v4","Address":"","Options":{"RequestAddressType":"com.docker.network.gateway"}}"#)
        .await;
    assert_eq!(st, 200);
    assert_eq!(gw, json!({"Address": "198.18.130.1/24", "Data": {}}));
    // Transcript call 9.
    let (st, _, v) = h.post("NetworkDriver.CreateNetwork", &format!(r#"{{"NetworkID": "{NID}", "Options": {{"com.docker.network.enable_ipv6": false, "com.docker.network.generic": {{"dob.gateway": "1"}}}}, "IPv4Data": [{{"AddressSpace": "LocalDefault", "Gateway": "198.18.130.1/24", "Pool": "198.18.130.0/24"}}], "IPv6Data": []}}"#)).await;
    assert_eq!((st, v), (200, json!({})));
    // docker run: address, then transcript calls 10-14.
    let (_, _, a) = h
        .post(
            "IpamDriver.RequestAddress",
            r#"{"PoolID":"ovl/pending/p1/v4","Address":"","Options":null}"#,
        )
        .await;
    assert_eq!(a["Address"], "198.18.130.2/24");
    let (st, _, v) = h.post("NetworkDriver.CreateEndpoint", &format!(r#"{{"NetworkID": "{NID}", "EndpointID": "{EID}", "Interface": {{"Address": "198.18.130.2/24", "AddressIPv6": "", "MacAddress": ""}}, "Options": {{"com.docker.network.endpoint.dnsservers": ["198.18.0.1"], "com.docker.network.endpoint.exposedports": [{{"Proto": 6, "Port": 80}}], "com.docker.network.portmap": [{{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 18080, "HostPortEnd": 18080}}]}}}}"#)).await;
    // MAC was empty: the driver's choice is returned, and only it.
    assert_eq!(
        (st, v),
        (
            200,
            json!({"Interface": {"MacAddress": "02:42:c6:12:96:02"}})
        )
    );
    let (st, _, v) = h.post("NetworkDriver.Join", &format!(r#"{{"NetworkID": "{NID}", "EndpointID": "{EID}", "SandboxKey": "/run/docker/netns/e6253d0b25ca", "Options": {{"com.docker.network.endpoint.exposedports": [{{"Proto": 6, "Port": 80}}], "com.docker.network.portmap": [{{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 18080, "HostPortEnd": 18080}}]}}}}"#)).await;
    assert_eq!(st, 200);
    assert_eq!(
        v,
        json!({"InterfaceName": {"SrcName": "dktc4195b5f91", "DstPrefix": "eth"},
               "StaticRoutes": [{"Destination": "198.18.151.0/24", "RouteType": 1}],
               "DisableGatewayService": false})
    );
    let ep = format!(r#"{{"NetworkID": "{NID}", "EndpointID": "{EID}"}}"#);
    let (st, _, v) = h.post("NetworkDriver.ProgramExternalConnectivity", &format!(r#"{{"NetworkID": "{NID}", "EndpointID": "{EID}", "Options": {{"com.docker.network.endpoint.exposedports": [{{"Proto": 6, "Port": 80}}], "com.docker.network.portmap": [{{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 18080, "HostPortEnd": 18080}}]}}}}"#)).await;
    assert_eq!((st, v), (200, json!({})));
    let (st, _, v) = h.post("NetworkDriver.EndpointOperInfo", &ep).await;
    assert_eq!((st, v), (200, json!({"Value": {"ovl.vni": 42}})));
    for m in [
        "NetworkDriver.RevokeExternalConnectivity",
        "NetworkDriver.Leave",
        "NetworkDriver.DeleteEndpoint",
    ] {
        let (st, _, v) = h.post(m, &ep).await;
        assert_eq!((st, v), (200, json!({})), "{m}");
    }
    let (st, _, _) = h
        .post(
            "IpamDriver.ReleaseAddress",
            r#"{"PoolID":"ovl/pending/p1/v4","Address":"198.18.130.2"}"#,
        )
        .await;
    assert_eq!(st, 200);
    // docker network rm.
    let (st, _, _) = h
        .post(
            "IpamDriver.ReleaseAddress",
            r#"{"PoolID":"ovl/pending/p1/v4","Address":"198.18.130.1"}"#,
        )
        .await;
    assert_eq!(st, 200);
    let (st, _, _) = h
        .post(
            "IpamDriver.ReleasePool",
            r#"{"PoolID":"ovl/pending/p1/v4"}"#,
        )
        .await;
    assert_eq!(st, 200);
    let (st, _, _) = h
        .post(
            "NetworkDriver.DeleteNetwork",
            &format!(r#"{{"NetworkID": "{NID}"}}"#),
        )
        .await;
    assert_eq!(st, 200);
    // Global-scope and swarm calls (transcript call 25; AllocateNetwork per the API).
    let (st, _, _) = h.post("NetworkDriver.DiscoverNew", r#"{"DiscoveryType": 1, "DiscoveryData": {"Address": "198.18.0.11", "BindAddress": "", "Self": true}}"#).await;
    assert_eq!(st, 200);
    let (st, _, _) = h.post("NetworkDriver.DiscoverDelete", r#"{"DiscoveryType": 1, "DiscoveryData": {"Address": "198.18.0.12", "BindAddress": "", "Self": false}}"#).await;
    assert_eq!(st, 200);
    let (st, _, v) = h.post("NetworkDriver.AllocateNetwork", &format!(r#"{{"NetworkID": "{NID}", "Options": {{"a": "b"}}, "IPv4Data": null, "IPv6Data": null}}"#)).await;
    assert_eq!((st, v), (200, json!({"Options": {"vni": "42"}})));
    let (st, _, _) = h
        .post(
            "NetworkDriver.FreeNetwork",
            &format!(r#"{{"NetworkID": "{NID}"}}"#),
        )
        .await;
    assert_eq!(st, 200);

    // What the backend saw, typed.
    let calls = h.rec.take();
    let names: Vec<_> = calls.iter().map(Call::name).collect();
    assert_eq!(
        names,
        [
            "RequestPool",
            "RequestAddress",
            "CreateNetwork",
            "RequestAddress",
            "CreateEndpoint",
            "Join",
            "ProgramExternalConnectivity",
            "EndpointOperInfo",
            "RevokeExternalConnectivity",
            "Leave",
            "DeleteEndpoint",
            "ReleaseAddress",
            "ReleaseAddress",
            "ReleasePool",
            "DeleteNetwork",
            "DiscoverNew",
            "DiscoverDelete",
            "AllocateNetwork",
            "FreeNetwork"
        ]
    );
    let Call::CreateNetwork(cn) = &calls[2] else {
        unreachable!()
    };
    assert_eq!(cn.network_id, NID);
    assert_eq!(cn.generic.get("dob.gateway").map(String::as_str), Some("1"));
    assert_eq!(cn.ipv4.len(), 1);
    assert_eq!(cn.ipv4[0].address_space, "LocalDefault");
    assert!(cn.ipv6.is_empty() && !cn.enable_ipv6 && !cn.internal && cn.mtu.is_none());
    let Call::Join(j) = &calls[5] else {
        unreachable!()
    };
    assert_eq!(j.sandbox_key, Path::new("/run/docker/netns/e6253d0b25ca"));
    assert_eq!(j.port_map[0].host_port, 18080);
    let Call::Program(p) = &calls[6] else {
        unreachable!()
    };
    assert_eq!(p.exposed_ports.len(), 1);
    let Call::ReleaseAddress(r) = &calls[11] else {
        unreachable!()
    };
    assert_eq!(r.address.to_string(), "198.18.130.2");
    let Call::DiscoverNew(dn) = &calls[15] else {
        unreachable!()
    };
    let node = dn.node.as_ref().unwrap();
    assert_eq!((node.address.as_str(), node.is_self), ("198.18.0.11", true));
    h.shutdown().await;
}

#[tokio::test]
async fn tolerant_of_nulls_and_extra_fields() {
    let h = Harness::start().await;
    let (st, _, v) = h
        .post("IpamDriver.RequestPool", r#"{"AddressSpace":"OvlLocal","Pool":null,"SubPool":null,"Options":null,"V6":null,"FutureField":{"x":1}}"#)
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, _, v) = h
        .post("NetworkDriver.CreateNetwork", &format!(r#"{{"NetworkID":"{NID}","Options":null,"IPv4Data":null,"IPv6Data":null,"Extra":true}}"#))
        .await;
    assert_eq!((st, v), (200, json!({})));
    let (st, _, v) = h
        .post("NetworkDriver.CreateNetwork", &format!(r#"{{"NetworkID":"{}","Options":{{"com.docker.network.internal":true,"com.docker.network.generic":{{"com.docker.network.driver.mtu":"1400"}}}}}}"#, "b".repeat(64)))
        .await;
    assert_eq!((st, v), (200, json!({})));
    let calls = h.rec.take();
    let Call::CreateNetwork(cn) = &calls[2] else {
        unreachable!()
    };
    assert!(cn.internal);
    assert_eq!(cn.mtu, Some(1400));
    h.shutdown().await;
}

#[tokio::test]
async fn malformed_requests_never_reach_the_backend() {
    let h = Harness::start().await;
    let cases: &[(&str, String, &str)] = &[
        (
            "NetworkDriver.CreateNetwork",
            "{not json".into(),
            "malformed",
        ),
        (
            "NetworkDriver.CreateNetwork",
            r#"{"NetworkID": 5}"#.into(),
            "malformed",
        ),
        (
            "NetworkDriver.CreateNetwork",
            format!(r#"{{"NetworkID":"{NID}","IPv4Data":{{}}}}"#),
            "malformed",
        ),
        (
            "NetworkDriver.CreateNetwork",
            r#"{"Options":{}}"#.into(),
            "missing NetworkID",
        ),
        (
            "NetworkDriver.CreateNetwork",
            format!(r#"{{"NetworkID":"{NID}","IPv4Data":[{{"Pool":"10.0.0.0/33"}}]}}"#),
            "CIDR",
        ),
        (
            "NetworkDriver.CreateNetwork",
            format!(r#"{{"NetworkID":"{NID}","Options":{{"com.docker.network.generic":"x"}}}}"#),
            "expected an object",
        ),
        (
            "NetworkDriver.CreateNetwork",
            format!(
                r#"{{"NetworkID":"{NID}","Options":{{"com.docker.network.generic":{{"com.docker.network.driver.mtu":"huge"}}}}}}"#
            ),
            "mtu",
        ),
        (
            "NetworkDriver.DeleteNetwork",
            r#"{"NetworkID":"../etc"}"#.into(),
            "invalid NetworkID",
        ),
        (
            "NetworkDriver.CreateEndpoint",
            format!(
                r#"{{"NetworkID":"{NID}","EndpointID":"{EID}","Interface":{{"Address":"198.18.1.2"}}}}"#
            ),
            "CIDR",
        ),
        (
            "NetworkDriver.CreateEndpoint",
            format!(
                r#"{{"NetworkID":"{NID}","EndpointID":"{EID}","Options":{{"com.docker.network.portmap":[{{"Proto":6,"Port":"80"}}]}}}}"#
            ),
            "portmap",
        ),
        (
            "NetworkDriver.Join",
            format!(r#"{{"NetworkID":"{NID}","EndpointID":"{EID}"}}"#),
            "SandboxKey",
        ),
        (
            "NetworkDriver.Leave",
            format!(r#"{{"NetworkID":"{NID}"}}"#),
            "missing EndpointID",
        ),
        ("NetworkDriver.Leave", "[]".into(), "malformed"),
        (
            "IpamDriver.RequestPool",
            r#"{"SubPool":"10.0.0.0/25"}"#.into(),
            "SubPool given without Pool",
        ),
        (
            "IpamDriver.RequestPool",
            r#"{"Pool":"10.0.0.0/24","SubPool":"10.0.1.0/25"}"#.into(),
            "not inside",
        ),
        (
            "IpamDriver.RequestPool",
            r#"{"Pool":"fd00::/64","V6":false}"#.into(),
            "V6",
        ),
        (
            "IpamDriver.RequestPool",
            r#"{"Pool":"10.0.0.0"}"#.into(),
            "CIDR",
        ),
        (
            "IpamDriver.RequestPool",
            r#"{"V6":"yes"}"#.into(),
            "malformed",
        ),
        (
            "IpamDriver.RequestAddress",
            r#"{"Address":"10.0.0.2"}"#.into(),
            "missing PoolID",
        ),
        (
            "IpamDriver.RequestAddress",
            r#"{"PoolID":"p","Address":"10.0.0.300"}"#.into(),
            "not an IP",
        ),
        (
            "IpamDriver.ReleaseAddress",
            r#"{"PoolID":"p"}"#.into(),
            "missing Address",
        ),
        ("IpamDriver.ReleasePool", "null".into(), "missing PoolID"),
    ];
    for (method, body, expect) in cases {
        let (st, ct, v) = h.post(method, body).await;
        assert_eq!(st, 400, "{method} {body}: {v}");
        assert_eq!(ct, "application/vnd.docker.plugins.v1+json");
        let msg = v["Err"].as_str().unwrap();
        assert_eq!(v["Error"].as_str(), Some(msg));
        assert!(
            msg.contains(expect),
            "{method} {body}: {msg:?} lacks {expect:?}"
        );
    }
    assert!(
        h.rec.names().is_empty(),
        "backend was called: {:?}",
        h.rec.names()
    );
    h.shutdown().await;
}

#[tokio::test]
async fn errors_unknown_methods_and_verbs() {
    let h = Harness::start().await;
    let (st, _, v) = h.post("NetworkDriver.Frobnicate", "{}").await;
    assert_eq!(st, 404);
    assert!(v["Err"].as_str().unwrap().contains("unknown plugin method"));
    let (st, _, _) = raw(&h.sock, "GET", "Plugin.Activate", "").await;
    assert_eq!(st, 405);
    // Backend semantic errors: unknown network / pool. Not 404 (that means "unimplemented").
    let (st, _, v) = h
        .post("NetworkDriver.CreateEndpoint", &format!(r#"{{"NetworkID":"{NID}","EndpointID":"{EID}","Interface":{{"Address":"198.18.1.2/24"}}}}"#))
        .await;
    assert_eq!(st, 500);
    assert_eq!(
        v,
        json!({"Err": format!("not found: network {NID}"), "Error": format!("not found: network {NID}")})
    );
    let (st, _, v) = h
        .post(
            "IpamDriver.RequestAddress",
            r#"{"PoolID":"ovl/net/nope/v4"}"#,
        )
        .await;
    assert_eq!(st, 500);
    assert_eq!(v["Error"], "not found: pool ovl/net/nope/v4");
    let (st, _, v) = h
        .post("IpamDriver.ReleasePool", r#"{"PoolID":"garbage"}"#)
        .await;
    assert_eq!(st, 500);
    assert!(v["Err"].as_str().unwrap().contains("unknown pool ID"));
    let (st, _, v) = h
        .post(
            "IpamDriver.RequestPool",
            r#"{"Options":{"ovl.network":"a b"}}"#,
        )
        .await;
    assert_eq!(st, 400);
    assert!(
        v["Error"]
            .as_str()
            .unwrap()
            .starts_with("invalid request: ovl.network")
    );
    // A MAC set by libnetwork is never overwritten by the driver's choice.
    h.post(
        "NetworkDriver.CreateNetwork",
        &format!(r#"{{"NetworkID":"{NID}"}}"#),
    )
    .await;
    let (st, _, v) = h
        .post("NetworkDriver.CreateEndpoint", &format!(r#"{{"NetworkID":"{NID}","EndpointID":"{EID}","Interface":{{"Address":"198.18.1.2/24","MacAddress":"02:00:00:00:00:01"}}}}"#))
        .await;
    assert_eq!((st, v), (200, json!({})));
    h.shutdown().await;
}

#[tokio::test]
async fn bind_replaces_stale_and_refuses_live_or_foreign_files() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ovl.sock");
    // A stale socket (its listener is gone) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let live = PluginServer::bind(&sock).await.unwrap();
    // While it is live, a second bind is refused and the socket is left alone.
    match PluginServer::bind(&sock).await {
        Err(DockerError::SocketInUse(p)) => assert_eq!(p, sock),
        other => panic!("expected SocketInUse, got {other:?}"),
    }
    assert!(sock.exists());
    drop(live);
    // A regular file is never deleted.
    let file = dir.path().join("file.sock");
    std::fs::write(&file, "keep me").unwrap();
    match PluginServer::bind(&file).await {
        Err(DockerError::NotASocket(p)) => assert_eq!(p, file),
        other => panic!("expected NotASocket, got {other:?}"),
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

/// A backend implementing only what the protocol requires: the trait's defaults answer the
/// optional calls (as the agent's backend does for external connectivity).
struct Minimal;

#[async_trait::async_trait]
impl ovl_docker::PluginBackend for Minimal {
    async fn request_pool(
        &self,
        _: ovl_docker::backend::PoolRequest,
    ) -> ovl_docker::PluginResult<ovl_docker::backend::PoolAllocated> {
        Err(ovl_docker::PluginError::Internal("unused".into()))
    }
    async fn release_pool(&self, _: String) -> ovl_docker::PluginResult<()> {
        Ok(())
    }
    async fn request_address(
        &self,
        _: ovl_docker::backend::AddressRequest,
    ) -> ovl_docker::PluginResult<ovl_docker::backend::AddressAllocated> {
        Err(ovl_docker::PluginError::Internal("unused".into()))
    }
    async fn release_address(
        &self,
        _: ovl_docker::backend::AddressRelease,
    ) -> ovl_docker::PluginResult<()> {
        Ok(())
    }
    async fn create_network(
        &self,
        _: ovl_docker::backend::CreateNetwork,
    ) -> ovl_docker::PluginResult<()> {
        Ok(())
    }
    async fn delete_network(&self, _: String) -> ovl_docker::PluginResult<()> {
        Ok(())
    }
    async fn create_endpoint(
        &self,
        _: ovl_docker::backend::CreateEndpoint,
    ) -> ovl_docker::PluginResult<ovl_docker::backend::EndpointCreated> {
        Ok(Default::default())
    }
    async fn delete_endpoint(
        &self,
        _: ovl_docker::backend::EndpointRef,
    ) -> ovl_docker::PluginResult<()> {
        Ok(())
    }
    async fn join(
        &self,
        _: ovl_docker::backend::Join,
    ) -> ovl_docker::PluginResult<ovl_docker::backend::Joined> {
        Err(ovl_docker::PluginError::Internal("unused".into()))
    }
    async fn leave(&self, _: ovl_docker::backend::EndpointRef) -> ovl_docker::PluginResult<()> {
        Ok(())
    }
}

/// `GwAllocCheck` as Docker 28.5 sends it (the network's options, captured from dockerd
/// 28.5.2 in the lab: `docker network create -d ovl --ipam-driver ovl -o k=v --internal N`).
const GW_ALLOC_CHECK_28: &str = r#"{"Options":{"com.docker.network.enable_ipv4":true,"com.docker.network.enable_ipv6":false,"com.docker.network.generic":{"k":"v"},"com.docker.network.internal":true}}"#;

#[tokio::test]
async fn gateway_alloc_check() {
    let h = Harness::start().await;
    let (st, _, v) = h
        .post("NetworkDriver.GwAllocCheck", GW_ALLOC_CHECK_28)
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v, json!({"SkipIPv4": true, "SkipIPv6": true}));
    let calls = h.rec.take();
    let [Call::GwAllocCheck(c)] = calls.as_slice() else {
        panic!("{calls:?}")
    };
    assert!(c.internal && !c.enable_ipv6);
    assert_eq!(c.generic.get("k").map(String::as_str), Some("v"));
    // Tolerant of nulls (Go nil maps), strict on types.
    for body in ["null", "", r#"{"Options":null}"#] {
        let (st, _, v) = h.post("NetworkDriver.GwAllocCheck", body).await;
        assert_eq!((st, v), (200, json!({"SkipIPv4": true, "SkipIPv6": true})));
    }
    h.rec.take();
    for bad in [
        r#"{"Options":[]}"#,
        r#"{"Options":{"com.docker.network.internal":"maybe"}}"#,
        r#"{"Options":{"com.docker.network.generic":7}}"#,
    ] {
        let (st, _, v) = h.post("NetworkDriver.GwAllocCheck", bad).await;
        assert_eq!(st, 400, "{bad}: {v}");
        assert!(!v["Err"].as_str().unwrap().is_empty());
    }
    assert!(h.rec.names().is_empty(), "bad input reached the backend");
    h.shutdown().await;

    // The trait's default: no skip (what Docker assumes of a driver without the capability).
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("min.sock");
    let server = PluginServer::bind(&sock).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run_until(Arc::new(Minimal), async {
        let _ = rx.await;
    }));
    let (st, _, v) = raw(
        &sock,
        "POST",
        "NetworkDriver.GwAllocCheck",
        GW_ALLOC_CHECK_28,
    )
    .await;
    assert_eq!(
        (st, v),
        (200, json!({"SkipIPv4": false, "SkipIPv6": false}))
    );
    let _ = tx.send(());
    task.await.unwrap().unwrap();
}

/// Docker 29 repeats `ProgramExternalConnectivity` whenever its gateway selection runs and may
/// send `RevokeExternalConnectivity` late (after `Leave`/`DeleteEndpoint`, Options as saved at
/// Join plus `NoProxy6To4`): every such call succeeds, on the recording backend and with the
/// trait's defaults (which the agent uses: its `Join` returns no gateway).
#[tokio::test]
async fn external_connectivity_is_idempotent() {
    let program = format!(
        r#"{{"NetworkID":"{NID}","EndpointID":"{EID}","Options":{{"com.docker.network.endpoint.exposedports":[{{"Proto":6,"Port":80}}],"com.docker.network.portmap":[{{"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":18080,"HostPortEnd":18080}}],"com.docker.network.NoProxy6To4":true}}}}"#
    );
    let revoke = format!(r#"{{"NetworkID":"{NID}","EndpointID":"{EID}"}}"#);
    let sequence = [
        ("NetworkDriver.RevokeExternalConnectivity", revoke.as_str()), // before any Program
        (
            "NetworkDriver.ProgramExternalConnectivity",
            program.as_str(),
        ),
        (
            "NetworkDriver.ProgramExternalConnectivity",
            program.as_str(),
        ), // repeated
        ("NetworkDriver.Leave", revoke.as_str()),
        ("NetworkDriver.DeleteEndpoint", revoke.as_str()),
        ("NetworkDriver.RevokeExternalConnectivity", revoke.as_str()), // late
        ("NetworkDriver.RevokeExternalConnectivity", revoke.as_str()), // and again
    ];
    let h = Harness::start().await;
    for (method, body) in sequence {
        let (st, _, v) = h.post(method, body).await;
        assert_eq!((st, &v), (200, &json!({})), "{method}");
    }
    let calls = h.rec.take();
    let programs: Vec<_> = calls
        .iter()
        .filter_map(|c| match c {
            Call::Program(p) => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(programs.len(), 2);
    assert_eq!(programs[0], programs[1]);
    assert_eq!(programs[0].port_map[0].host_port, 18080);
    h.shutdown().await;

    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("min.sock");
    let server = PluginServer::bind(&sock).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run_until(Arc::new(Minimal), async {
        let _ = rx.await;
    }));
    for (method, body) in sequence {
        let (st, _, v) = raw(&sock, "POST", method, body).await;
        assert_eq!((st, &v), (200, &json!({})), "{method}");
    }
    // Malformed ones are still refused.
    let (st, _, _) = raw(
        &sock,
        "POST",
        "NetworkDriver.ProgramExternalConnectivity",
        r#"{"NetworkID":"x","EndpointID":""}"#,
    )
    .await;
    assert_eq!(st, 400);
    let _ = tx.send(());
    task.await.unwrap().unwrap();
}

/// The plugin socket appears with mode 0660 and, given one, its group; a client reaches it.
#[tokio::test]
async fn bind_with_group_sets_owner_and_mode() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ovl.sock");
    // A group this process may give a file to: any as root (daemon, GID 1), else its own.
    let me = std::fs::metadata("/proc/self").unwrap();
    let gid = if me.uid() == 0 { 1 } else { me.gid() };
    let server = PluginServer::bind_with(&sock, Some(gid)).await.unwrap();
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), gid);
    assert!(tokio::net::UnixStream::connect(&sock).await.is_ok());
    drop(server);
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "no temporary socket left: {left:?}");
    // Without a group: mode 0660, the process's group.
    let other = dir.path().join("plain.sock");
    let _s = PluginServer::bind(&other).await.unwrap();
    assert_eq!(
        std::fs::metadata(&other).unwrap().permissions().mode() & 0o777,
        0o660
    );
}
