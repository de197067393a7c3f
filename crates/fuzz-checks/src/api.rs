//! Control API bodies (`POST /v1/networks`, `/v1/attach`, `/v1/detach`), parsed as the
//! server parses them.

use overlay_agent::api::types::{AttachRequest, DetachRequest};
use ovl_core::{model, store::ClusterStore, store::NetworkRequest};
use serde::{Serialize, de::DeserializeOwned};

/// Parses like the server; if it parses, serializing and parsing again gives the same JSON.
fn parse<T: Serialize + DeserializeOwned>(body: &[u8]) -> Option<T> {
    let v: T = serde_json::from_slice(body).ok()?;
    let first = serde_json::to_value(&v).expect("API types serialize");
    let back: T =
        serde_json::from_value(first.clone()).unwrap_or_else(|e| panic!("re-parsing {first}: {e}"));
    assert_eq!(
        serde_json::to_value(&back).expect("API types serialize"),
        first,
        "round trip of {}",
        std::any::type_name::<T>()
    );
    Some(v)
}

/// Checks one body (first byte: which endpoint; the rest: the body).
pub fn check(data: &[u8]) {
    let (which, body) = crate::select(data, 3);
    match which {
        0 => {
            if let Some(req) = parse::<NetworkRequest>(body) {
                let r = ClusterStore::validate_request(&req);
                // A request it accepts has a valid name.
                if r.is_ok() {
                    assert!(model::validate_network_name(&req.name).is_ok());
                }
            }
        }
        1 => {
            if let Some(req) = parse::<AttachRequest>(body) {
                // Only that validation never panics on what parses; the unit tests check
                // what it accepts.
                let _ = model::validate_network_name(&req.network);
                let _ = model::validate_endpoint_name(&req.name);
                for a in &req.aliases {
                    let _ = model::validate_endpoint_name(a);
                }
            }
        }
        _ => {
            if let Some(req) = parse::<DetachRequest>(body) {
                let _ = model::validate_endpoint_name(&req.name);
            }
        }
    }
}
