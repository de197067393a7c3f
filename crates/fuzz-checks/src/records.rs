//! KV records as the agent's cluster view decodes them, from a listing and from watch events.

use ovl_core::{ClusterView, keys};
use ovl_kv::{KvEntry, Listing, WatchEvent};

/// Keys of each kind the view knows, and one it ignores.
const KEYS: [&str; 6] = [
    "/ovl/v1/hosts/h1",
    "/ovl/v1/alive/h1",
    "/ovl/v1/networks/net1",
    "/ovl/v1/endpoints/net1/e1",
    "/ovl/v1/addrs/net1/10.1.0.2",
    "/ovl/v1/subnets",
];

fn entry(key: &str, value: &[u8]) -> KvEntry {
    KvEntry {
        key: key.to_string(),
        value: value.to_vec(),
        create_revision: 7,
        mod_revision: 7,
        lease: None,
    }
}

fn listed(key: &str, value: &[u8]) -> ClusterView {
    ClusterView::from_listing(&Listing {
        entries: vec![entry(key, value)],
        revision: 7,
    })
}

/// The record the view holds for `key`, re-encoded as the store writes records.
fn reencoded(view: &ClusterView, key: &str) -> Option<Vec<u8>> {
    let json = match keys::classify(key) {
        keys::KeyRef::Host(id) => serde_json::to_vec(view.hosts.get(id)?),
        keys::KeyRef::Alive(id) => serde_json::to_vec(view.alive.get(id)?),
        keys::KeyRef::Network(n) => serde_json::to_vec(view.networks.get(n)?),
        keys::KeyRef::Endpoint(n, id) => {
            serde_json::to_vec(view.endpoints.get(&(n.to_string(), id.to_string()))?)
        }
        keys::KeyRef::Other => return None,
    };
    Some(json.expect("records serialize"))
}

/// Checks one record (first byte: the key, or with selector 255 a key of its own up to a
/// NUL byte; the rest: the value).
pub fn check(data: &[u8]) {
    let (sel, rest) = crate::select(data, 256);
    let own_key;
    let (key, value) = if sel == 255 {
        let (k, v) = match rest.iter().position(|b| *b == 0) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        own_key = String::from_utf8_lossy(k).into_owned();
        (own_key.as_str(), v)
    } else {
        (KEYS[sel % KEYS.len()], rest)
    };

    // Listing and watch agree.
    let from_listing = listed(key, value);
    let mut watched = ClusterView {
        revision: 7,
        ..ClusterView::default()
    };
    let change = watched.apply(&WatchEvent::Put(entry(key, value)));
    assert_eq!(watched, from_listing, "listing and watch disagree on {key}");
    let empty_at_7 = ClusterView {
        revision: 7,
        ..ClusterView::default()
    };
    assert_eq!(
        change.is_none(),
        watched == empty_at_7,
        "a change is reported exactly when the view changed ({key})"
    );
    if !change.is_none() {
        assert!(
            !matches!(keys::classify(key), keys::KeyRef::Other),
            "only records the datapath or names read count as a change ({key})"
        );
    }

    // A record that decoded survives the store's encoding unchanged.
    if let Some(json) = reencoded(&from_listing, key) {
        assert_eq!(listed(key, &json), from_listing, "round trip of {key}");
    }

    // A delete takes it away again.
    watched.apply(&WatchEvent::Delete {
        key: key.to_string(),
        mod_revision: 8,
    });
    let empty = ClusterView {
        revision: 8,
        ..ClusterView::default()
    };
    assert_eq!(watched, empty, "delete of {key} left something");
}
