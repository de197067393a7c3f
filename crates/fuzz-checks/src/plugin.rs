//! Docker plugin bodies through the real dispatcher (`ovl_docker::server::dispatch`), with a
//! backend that says yes to everything and notes whether it was called.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicBool, Ordering},
};

use ovl_docker::{
    PluginBackend, PluginResult,
    backend::{
        AddressAllocated, AddressRelease, AddressRequest, CreateEndpoint, CreateNetwork, Discovery,
        EndpointCreated, EndpointRef, ExternalConnectivity, Join, Joined, PoolAllocated,
        PoolRequest,
    },
    wire::{self, OptionMap},
};
use serde::{Serialize, de::DeserializeOwned};

/// Every method dockerd calls, and one it never does.
pub const METHODS: [&str; 22] = [
    "Plugin.Activate",
    "NetworkDriver.GetCapabilities",
    "NetworkDriver.CreateNetwork",
    "NetworkDriver.DeleteNetwork",
    "NetworkDriver.AllocateNetwork",
    "NetworkDriver.FreeNetwork",
    "NetworkDriver.CreateEndpoint",
    "NetworkDriver.EndpointOperInfo",
    "NetworkDriver.DeleteEndpoint",
    "NetworkDriver.Join",
    "NetworkDriver.Leave",
    "NetworkDriver.DiscoverNew",
    "NetworkDriver.DiscoverDelete",
    "NetworkDriver.ProgramExternalConnectivity",
    "NetworkDriver.RevokeExternalConnectivity",
    "IpamDriver.GetCapabilities",
    "IpamDriver.GetDefaultAddressSpaces",
    "IpamDriver.RequestPool",
    "IpamDriver.ReleasePool",
    "IpamDriver.RequestAddress",
    "IpamDriver.ReleaseAddress",
    "NetworkDriver.NoSuchMethod",
];

#[derive(Default)]
struct Yes {
    called: AtomicBool,
}

impl Yes {
    fn call(&self) {
        self.called.store(true, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl PluginBackend for Yes {
    async fn request_pool(&self, _: PoolRequest) -> PluginResult<PoolAllocated> {
        self.call();
        Ok(PoolAllocated {
            pool_id: "pool".into(),
            pool: "10.9.0.0/24".parse().expect("cidr"),
            gateway: None,
            data: BTreeMap::new(),
        })
    }
    async fn release_pool(&self, _: String) -> PluginResult<()> {
        self.call();
        Ok(())
    }
    async fn request_address(&self, _: AddressRequest) -> PluginResult<AddressAllocated> {
        self.call();
        Ok(AddressAllocated {
            address: "10.9.0.2/24".parse().expect("cidr"),
            data: BTreeMap::new(),
        })
    }
    async fn release_address(&self, _: AddressRelease) -> PluginResult<()> {
        self.call();
        Ok(())
    }
    async fn create_network(&self, _: CreateNetwork) -> PluginResult<()> {
        self.call();
        Ok(())
    }
    async fn delete_network(&self, _: String) -> PluginResult<()> {
        self.call();
        Ok(())
    }
    async fn allocate_network(
        &self,
        _: ovl_docker::backend::AllocateNetwork,
    ) -> PluginResult<BTreeMap<String, String>> {
        self.call();
        Ok(BTreeMap::new())
    }
    async fn free_network(&self, _: String) -> PluginResult<()> {
        self.call();
        Ok(())
    }
    async fn create_endpoint(&self, _: CreateEndpoint) -> PluginResult<EndpointCreated> {
        self.call();
        Ok(EndpointCreated::default())
    }
    async fn endpoint_info(&self, _: EndpointRef) -> PluginResult<OptionMap> {
        self.call();
        Ok(OptionMap::new())
    }
    async fn delete_endpoint(&self, _: EndpointRef) -> PluginResult<()> {
        self.call();
        Ok(())
    }
    async fn join(&self, _: Join) -> PluginResult<Joined> {
        self.call();
        Ok(Joined {
            src_name: "tmp0".into(),
            dst_prefix: "eth".into(),
            gateway: None,
            gateway_v6: None,
            static_routes: vec![],
            disable_gateway_service: true,
        })
    }
    async fn leave(&self, _: EndpointRef) -> PluginResult<()> {
        self.call();
        Ok(())
    }
    async fn discover_new(&self, _: Discovery) -> PluginResult<()> {
        self.call();
        Ok(())
    }
    async fn discover_delete(&self, _: Discovery) -> PluginResult<()> {
        self.call();
        Ok(())
    }
    async fn program_external_connectivity(&self, _: ExternalConnectivity) -> PluginResult<()> {
        self.call();
        Ok(())
    }
    async fn revoke_external_connectivity(&self, _: EndpointRef) -> PluginResult<()> {
        self.call();
        Ok(())
    }
}

/// A wire request type survives serialize → parse unchanged.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(body: &[u8]) {
    let Ok(v) = serde_json::from_slice::<T>(body) else {
        return;
    };
    let text = serde_json::to_vec(&v).expect("wire types serialize");
    let back: T = serde_json::from_slice(&text).unwrap_or_else(|e| {
        panic!("re-parsing {}: {e}", String::from_utf8_lossy(&text));
    });
    assert_eq!(back, v, "round trip of {}", std::any::type_name::<T>());
}

fn wire_round_trip(method: &str, body: &[u8]) {
    match method {
        "NetworkDriver.CreateNetwork" => round_trip::<wire::CreateNetworkRequest>(body),
        "NetworkDriver.DeleteNetwork" | "NetworkDriver.FreeNetwork" => {
            round_trip::<wire::NetworkIdRequest>(body)
        }
        "NetworkDriver.AllocateNetwork" => round_trip::<wire::AllocateNetworkRequest>(body),
        "NetworkDriver.CreateEndpoint" => round_trip::<wire::CreateEndpointRequest>(body),
        "NetworkDriver.Join" => round_trip::<wire::JoinRequest>(body),
        "NetworkDriver.DiscoverNew" | "NetworkDriver.DiscoverDelete" => {
            round_trip::<wire::DiscoveryRequest>(body)
        }
        "NetworkDriver.ProgramExternalConnectivity" => {
            round_trip::<wire::ProgramExternalConnectivityRequest>(body)
        }
        "IpamDriver.RequestPool" => round_trip::<wire::RequestPoolRequest>(body),
        "IpamDriver.ReleasePool" => round_trip::<wire::ReleasePoolRequest>(body),
        "IpamDriver.RequestAddress" => round_trip::<wire::RequestAddressRequest>(body),
        "IpamDriver.ReleaseAddress" => round_trip::<wire::ReleaseAddressRequest>(body),
        m if m.starts_with("NetworkDriver.") => round_trip::<wire::EndpointRequest>(body),
        _ => {}
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    })
}

/// Checks one call (first byte: the method; the rest: the body).
pub fn check(data: &[u8]) {
    let (m, body) = crate::select(data, METHODS.len());
    let method = METHODS[m];
    let backend = Yes::default();
    let reply = runtime().block_on(ovl_docker::server::dispatch(
        &backend,
        &format!("/{method}"),
        body,
    ));
    let called = backend.called.load(Ordering::SeqCst);
    assert!(
        [200, 400, 404, 409, 500, 503].contains(&reply.status),
        "status {}",
        reply.status
    );
    let json: serde_json::Value = serde_json::from_slice(&reply.body).expect("every reply is JSON");
    assert!(json.is_object(), "reply is not an object: {json}");
    if reply.status == 200 {
        assert!(json.get("Err").is_none(), "an error in a 200 reply: {json}");
    } else {
        let err = reply.error_message().expect("error replies carry Err");
        assert!(!err.is_empty(), "empty Err");
    }
    if reply.status == 400 {
        assert!(!called, "a rejected request reached the backend");
    }
    if method == "NetworkDriver.NoSuchMethod" {
        assert_eq!(reply.status, 404);
        assert!(!called);
    }
    wire_round_trip(method, body);
}
