//! DNS requests: any bytes, over UDP and TCP.

use std::{
    net::Ipv4Addr,
    sync::{Arc, OnceLock},
};

use hickory_proto::op::Message;
use ovl_names::{
    ArcSwap, NameRecord, Zone,
    dns::{
        DEFAULT_LOCAL_TTL, EDNS_PAYLOAD, ForwardConfig, Forwarder, Handler, PLAIN_UDP_PAYLOAD,
        Prepared, Transport, Upstreams,
    },
};

fn rec(network: &str, id: &str, name: &str, aliases: &[&str], ip: [u8; 4]) -> NameRecord {
    NameRecord {
        network: network.into(),
        endpoint_id: id.into(),
        name: name.into(),
        aliases: aliases.iter().map(|s| s.to_string()).collect(),
        ip: Ipv4Addr::from(ip),
    }
}

/// Two networks, a shared alias, and an alias too big for a plain UDP answer.
fn zone() -> Arc<ArcSwap<Zone>> {
    static ZONE: OnceLock<Arc<ArcSwap<Zone>>> = OnceLock::new();
    ZONE.get_or_init(|| {
        let mut records = vec![
            rec("net1", "e1", "c1", &[], [10, 1, 0, 2]),
            rec("net1", "e2", "c2", &["web"], [10, 1, 0, 3]),
            rec("net1", "e3", "c3", &["web"], [10, 1, 0, 4]),
            rec("net2", "e9", "c9", &["web"], [10, 2, 0, 9]),
        ];
        for i in 0..60u8 {
            records.push(rec(
                "net1",
                &format!("b{i}"),
                &format!("bulk{i}"),
                &["big"],
                [10, 1, 1, i + 1],
            ));
        }
        Arc::new(ArcSwap::from_pointee(Zone::build(records)))
    })
    .clone()
}

/// A fresh handler (its round-robin counter at zero) without upstream servers.
fn handler() -> Handler {
    let forwarder = Forwarder::new(&ForwardConfig {
        upstreams: Upstreams::Servers(vec![]),
        ..ForwardConfig::default()
    })
    .expect("a forwarder without servers");
    Handler::new(zone(), forwarder, DEFAULT_LOCAL_TTL, 8)
}

/// Checks one request (first byte: which networks ask; the rest: the request).
pub fn check(data: &[u8]) {
    let (who, request) = crate::select(data, 3);
    let networks: Vec<String> = match who {
        0 => vec!["net1".into()],
        1 => vec!["net1".into(), "net2".into()],
        _ => vec![],
    };
    let zone = zone().load_full();
    for transport in [Transport::Udp, Transport::Tcp] {
        let h = handler();
        let prepared = h.prepare(request, &networks, transport);
        check_reply(request, transport, &prepared);

        // The fast path answers exactly as the general path would.
        let (fast_h, general_h) = (handler(), handler());
        if let Some(fast) = fast_h.fast_answer(&zone, request, &networks, transport) {
            let Prepared::Reply(general) = general_h.general(&zone, request, &networks, transport)
            else {
                panic!("the general path must answer what the fast path answers");
            };
            let fast = Message::from_vec(&fast).expect("fast answers decode");
            let general = Message::from_vec(&general).expect("general answers decode");
            assert_eq!(
                fast, general,
                "fast and general paths differ ({transport:?})"
            );
        }
    }
}

fn check_reply(request: &[u8], transport: Transport, prepared: &Prepared) {
    let Prepared::Reply(reply) = prepared else {
        return;
    };
    // Never an answer to an answer (reflection loops), never to less than a header.
    assert!(
        request.len() >= 12,
        "reply to a {}-byte request",
        request.len()
    );
    assert_eq!(request[2] & 0x80, 0, "reply to a response");
    assert!(reply.len() >= 12, "reply shorter than a header");
    assert_eq!(reply[..2], request[..2], "reply id differs");
    assert_ne!(reply[2] & 0x80, 0, "reply without the QR bit");
    if transport == Transport::Udp {
        let limit = match Message::from_vec(request) {
            Ok(m) if m.edns.is_none() => PLAIN_UDP_PAYLOAD,
            _ => usize::from(EDNS_PAYLOAD),
        };
        assert!(reply.len() <= limit, "UDP reply of {} bytes", reply.len());
    }
    if Message::from_vec(request).is_ok() {
        Message::from_vec(reply).expect("replies to well-formed requests decode");
    }
}
