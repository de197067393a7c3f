//! Unit tests of the request handler (no sockets, no upstream: forwards fail fast).

use std::net::Ipv4Addr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use proptest::prelude::*;

use super::*;
use crate::records::NameRecord;

fn rec(network: &str, id: &str, name: &str, aliases: &[&str], ip: [u8; 4]) -> NameRecord {
    NameRecord {
        network: network.into(),
        endpoint_id: id.into(),
        name: name.into(),
        aliases: aliases.iter().map(|s| s.to_string()).collect(),
        ip: Ipv4Addr::from(ip),
    }
}

fn zone() -> Zone {
    let mut records = vec![
        rec("net1", "e1", "c1", &[], [10, 1, 0, 2]),
        rec("net1", "e2", "c2", &["web"], [10, 1, 0, 3]),
        rec("net1", "e3", "c3", &["web"], [10, 1, 0, 4]),
        rec("net1", "e4", "c4", &["web"], [10, 1, 0, 5]),
        rec("net2", "e9", "c9", &[], [10, 2, 0, 9]),
    ];
    // 60 endpoints under one alias: too big for a 512-byte UDP answer.
    for i in 0..60u8 {
        records.push(rec(
            "net1",
            &format!("b{i}"),
            &format!("bulk{i}"),
            &["big"],
            [10, 1, 1, i + 1],
        ));
    }
    Zone::build(records)
}

fn handler() -> Handler {
    let forwarder = Forwarder::new(&ForwardConfig {
        upstreams: Upstreams::Servers(vec![]),
        ..ForwardConfig::default()
    })
    .unwrap();
    Handler::new(
        Arc::new(ArcSwap::from_pointee(zone())),
        forwarder,
        DEFAULT_LOCAL_TTL,
        8,
    )
}

fn net1() -> Vec<String> {
    vec!["net1".to_string()]
}

fn query(name: &str, rtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 0x4242;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

fn ask(h: &Handler, name: &str, rtype: RecordType, transport: Transport) -> Message {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bytes = rt
        .block_on(h.handle(&query(name, rtype, None), &net1(), transport))
        .expect("a reply");
    Message::from_vec(&bytes).unwrap()
}

fn a_records(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

#[test]
fn answers_cluster_names_with_short_ttl() {
    let h = handler();
    let m = ask(&h, "c2.net1.", RecordType::A, Transport::Udp);
    assert_eq!(m.id, 0x4242);
    assert_eq!(m.message_type, MessageType::Response);
    assert_eq!(m.response_code, ResponseCode::NoError);
    assert!(m.authoritative && m.recursion_available && m.recursion_desired);
    assert_eq!(a_records(&m), [Ipv4Addr::new(10, 1, 0, 3)]);
    assert_eq!(m.answers[0].ttl, DEFAULT_LOCAL_TTL);
    assert_eq!(m.queries[0].name().to_ascii(), "c2.net1.");
    let m = ask(&h, "c2", RecordType::A, Transport::Udp);
    assert_eq!(a_records(&m), [Ipv4Addr::new(10, 1, 0, 3)]);
}

#[test]
fn keeps_the_question_case() {
    let h = handler();
    let m = ask(&h, "C2.NeT1.", RecordType::A, Transport::Udp);
    assert_eq!(m.queries[0].name().to_ascii(), "C2.NeT1.");
    assert_eq!(m.answers[0].name.to_ascii(), "C2.NeT1.");
    assert_eq!(a_records(&m), [Ipv4Addr::new(10, 1, 0, 3)]);
}

#[test]
fn aaaa_and_other_types_of_known_names_are_empty_noerror() {
    let h = handler();
    for t in [RecordType::AAAA, RecordType::MX, RecordType::TXT] {
        let m = ask(&h, "c2.net1.", t, Transport::Udp);
        assert_eq!(m.response_code, ResponseCode::NoError, "{t}");
        assert!(m.answers.is_empty(), "{t}");
        assert!(m.authoritative);
    }
}

#[test]
fn ptr_answers_primary_name() {
    let h = handler();
    let m = ask(
        &h,
        "3.0.1.10.in-addr.arpa.",
        RecordType::PTR,
        Transport::Udp,
    );
    assert_eq!(m.response_code, ResponseCode::NoError);
    let targets: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::PTR(p) => Some(p.0.to_ascii()),
            _ => None,
        })
        .collect();
    assert_eq!(targets, ["c2.net1."]);
}

#[test]
fn unknown_names_in_network_domains_are_nxdomain() {
    let h = handler();
    let m = ask(&h, "nope.net1.", RecordType::A, Transport::Udp);
    assert_eq!(m.response_code, ResponseCode::NXDomain);
    assert!(m.authoritative);
    // c9 is on net2 only: invisible to a net1 container, and not leaked upstream.
    let m = ask(&h, "c9.net2.", RecordType::A, Transport::Udp);
    assert_eq!(m.response_code, ResponseCode::NXDomain);
}

#[test]
fn forwarding_without_upstream_is_servfail() {
    let h = handler();
    let m = ask(&h, "example.com.", RecordType::A, Transport::Udp);
    assert_eq!(m.response_code, ResponseCode::ServFail);
    assert!(!m.authoritative);
    // c9 without domain: not ours for net1, so it is forwarded (and fails here).
    let m = ask(&h, "c9.", RecordType::A, Transport::Udp);
    assert_eq!(m.response_code, ResponseCode::ServFail);
}

#[test]
fn round_robin_rotates() {
    let h = handler();
    let orders: Vec<Vec<Ipv4Addr>> = (0..4)
        .map(|_| a_records(&ask(&h, "web.", RecordType::A, Transport::Udp)))
        .collect();
    let mut sorted = orders[0].clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            Ipv4Addr::new(10, 1, 0, 3),
            Ipv4Addr::new(10, 1, 0, 4),
            Ipv4Addr::new(10, 1, 0, 5)
        ]
    );
    for pair in orders.windows(2) {
        assert_ne!(pair[0], pair[1], "consecutive answers must differ in order");
        let mut rotated = pair[0].clone();
        rotated.rotate_left(1);
        assert_eq!(pair[1], rotated);
    }
}

#[test]
fn large_answers_truncate_over_udp_only() {
    let h = handler();
    let udp = ask(&h, "big.", RecordType::A, Transport::Udp);
    assert!(udp.truncation, "60 A records do not fit in 512 bytes");
    assert!(udp.answers.is_empty());
    assert_eq!(udp.queries.len(), 1);
    let tcp = ask(&h, "big.", RecordType::A, Transport::Tcp);
    assert!(!tcp.truncation);
    assert_eq!(tcp.answers.len(), 60);
    // With EDNS the requester's payload size (capped at 1232) is honoured.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bytes = rt
        .block_on(h.handle(
            &query("big.", RecordType::A, Some(4096)),
            &net1(),
            Transport::Udp,
        ))
        .unwrap();
    assert!(bytes.len() <= usize::from(EDNS_PAYLOAD));
    let m = Message::from_vec(&bytes).unwrap();
    assert!(!m.truncation);
    assert_eq!(m.answers.len(), 60);
    assert_eq!(m.edns.as_ref().map(|e| e.max_payload()), Some(EDNS_PAYLOAD));
}

#[test]
fn malformed_requests_get_formerr_or_nothing() {
    let h = handler();
    let nets = net1();
    // Too short for a header: dropped.
    assert!(matches!(
        h.prepare(&[1, 2, 3], &nets, Transport::Udp),
        Prepared::Drop
    ));
    // A header claiming a question that is not there: FORMERR with the same id.
    let mut bad = query("c2.net1.", RecordType::A, None);
    bad.truncate(14);
    let Prepared::Reply(bytes) = h.prepare(&bad, &nets, Transport::Udp) else {
        panic!("expected FORMERR");
    };
    let m = Message::from_vec(&bytes).unwrap();
    assert_eq!((m.id, m.response_code), (0x4242, ResponseCode::FormErr));
    // A response is never answered.
    let mut resp = Message::response(7, OpCode::Query);
    resp.add_query(Query::query(
        Name::from_ascii("c2.").unwrap(),
        RecordType::A,
    ));
    assert!(matches!(
        h.prepare(&resp.to_vec().unwrap(), &nets, Transport::Udp),
        Prepared::Drop
    ));
}

fn reply_code(h: &Handler, m: &Message) -> ResponseCode {
    let Prepared::Reply(bytes) = h.prepare(&m.to_vec().unwrap(), &net1(), Transport::Udp) else {
        panic!("expected a local reply");
    };
    Message::from_vec(&bytes).unwrap().response_code
}

#[test]
fn unsupported_requests_are_refused_cleanly() {
    let h = handler();
    let name = Name::from_ascii("c2.net1.").unwrap();
    let mut m = Message::new(1, MessageType::Query, OpCode::Update);
    m.add_query(Query::query(name.clone(), RecordType::A));
    assert_eq!(reply_code(&h, &m), ResponseCode::NotImp);

    let mut m = Message::new(2, MessageType::Query, OpCode::Query);
    let mut q = Query::query(name.clone(), RecordType::TXT);
    q.set_query_class(DNSClass::CH);
    m.add_query(q);
    assert_eq!(reply_code(&h, &m), ResponseCode::Refused);

    let mut m = Message::new(3, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(name.clone(), RecordType::A));
    m.add_query(Query::query(name.clone(), RecordType::A));
    assert_eq!(reply_code(&h, &m), ResponseCode::FormErr);

    let mut m = Message::new(4, MessageType::Query, OpCode::Query);
    assert_eq!(reply_code(&h, &m), ResponseCode::FormErr);
    m.add_query(Query::query(name.clone(), RecordType::AXFR));
    assert_eq!(reply_code(&h, &m), ResponseCode::Refused);

    let mut m = Message::new(5, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(name, RecordType::A));
    let mut e = Edns::new();
    e.set_version(1);
    m.set_edns(e);
    // BADVERS is extended rcode 16 (which hickory decodes under its other name, BADSIG).
    assert_eq!(
        u16::from(reply_code(&h, &m)),
        u16::from(ResponseCode::BADVERS)
    );
}

#[test]
fn forward_slots_are_bounded() {
    let h = handler(); // 8 slots
    let nets = net1();
    let q = query("example.com.", RecordType::A, None);
    let jobs: Vec<Prepared> = (0..8)
        .map(|_| h.prepare(&q, &nets, Transport::Udp))
        .collect();
    assert!(jobs.iter().all(|p| matches!(p, Prepared::Forward(_))));
    let Prepared::Reply(bytes) = h.prepare(&q, &nets, Transport::Udp) else {
        panic!("the ninth concurrent forward must be refused");
    };
    assert_eq!(
        Message::from_vec(&bytes).unwrap().response_code,
        ResponseCode::ServFail
    );
    drop(jobs);
    assert!(matches!(
        h.prepare(&q, &nets, Transport::Udp),
        Prepared::Forward(_)
    ));
}

#[test]
fn lookup_reports_like_a_container_resolver() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let forwarder = Forwarder::new(&ForwardConfig {
        upstreams: Upstreams::Servers(vec![]),
        ..ForwardConfig::default()
    })
    .unwrap();
    let z = zone();
    let a = rt
        .block_on(lookup(&z, &forwarder, &net1(), "c2.net1", RecordType::A))
        .unwrap();
    assert_eq!(a.rcode, "NOERROR");
    assert!(a.authoritative);
    assert_eq!(a.answers.len(), 1);
    assert_eq!(a.answers[0].data, "10.1.0.3");
    assert_eq!(a.answers[0].rtype, "A");
    let nx = rt
        .block_on(lookup(&z, &forwarder, &net1(), "zz.net1", RecordType::A))
        .unwrap();
    assert_eq!(nx.rcode, "NXDOMAIN");
    let fwd = rt
        .block_on(lookup(
            &z,
            &forwarder,
            &net1(),
            "example.com",
            RecordType::A,
        ))
        .unwrap();
    assert_eq!(fwd.rcode, "SERVFAIL");
    let err = rt
        .block_on(lookup(&z, &forwarder, &net1(), "bad..name", RecordType::A))
        .unwrap_err();
    assert!(
        matches!(err, crate::NamesError::InvalidName { .. }),
        "{err}"
    );
}

/// Checks the handler's contract for any input: no panic; a reply, if any, decodes, is a
/// response, and carries the request's id.
fn check_any(h: &Handler, bytes: &[u8], transport: Transport) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Some(reply) = rt.block_on(h.handle(bytes, &net1(), transport)) {
        let m = Message::from_vec(&reply).expect("replies always decode");
        assert_eq!(m.message_type, MessageType::Response);
        assert_eq!(m.id, u16::from_be_bytes([bytes[0], bytes[1]]));
        if transport == Transport::Udp {
            assert!(reply.len() <= usize::from(EDNS_PAYLOAD));
        }
    }
}

fn seeds() -> Vec<Vec<u8>> {
    vec![
        query("c2.net1.", RecordType::A, None),
        query("web.", RecordType::A, Some(1232)),
        query("big.", RecordType::A, None),
        query("3.0.1.10.in-addr.arpa.", RecordType::PTR, None),
        query("nope.net1.", RecordType::AAAA, Some(512)),
        query("example.com.", RecordType::MX, None),
    ]
}

/// The fast path's response, if it takes the request, decoded; and the general path's.
fn both_paths(bytes: &[u8], transport: Transport) -> Option<(Message, Message)> {
    let (fast_h, general_h) = (handler(), handler());
    let zone = zone();
    let fast = fast_h.fast_answer(&zone, bytes, &net1(), transport)?;
    let Prepared::Reply(general) = general_h.general(&zone, bytes, &net1(), transport) else {
        panic!("the general path must answer what the fast path answers");
    };
    Some((
        Message::from_vec(&fast).expect("fast answers decode"),
        Message::from_vec(&general).expect("general answers decode"),
    ))
}

#[test]
fn fast_path_answers_like_the_general_path() {
    let mut taken = 0;
    for name in [
        "c1.",
        "C2.Net1.",
        "web.",
        "web.net1.",
        "nope.net1.",
        "net1.",
        "c9.",
        "big.",
    ] {
        for rtype in [RecordType::A, RecordType::AAAA] {
            for edns in [None, Some(512), Some(4096), Some(100)] {
                for rd in [false, true] {
                    for transport in [Transport::Udp, Transport::Tcp] {
                        let mut m = Message::from_vec(&query(name, rtype, edns)).unwrap();
                        m.metadata.recursion_desired = rd;
                        m.metadata.checking_disabled = rd;
                        let bytes = m.to_vec().unwrap();
                        if let Some((fast, general)) = both_paths(&bytes, transport) {
                            assert_eq!(fast, general, "{name} {rtype} {edns:?} {transport:?}");
                            taken += 1;
                        }
                    }
                }
            }
        }
    }
    // Everything takes the fast path but "c9." (not on net1: forwarded) and "big" A over UDP
    // unless EDNS allows 1232 bytes (the general path truncates).
    let big = 4 * 2 * 2 + 4 * 2 + 2;
    assert_eq!(taken, 6 * 2 * 4 * 2 * 2 + big);
    // What it leaves to the general path.
    for other in [
        query("3.0.1.10.in-addr.arpa.", RecordType::PTR, None),
        query("c1.", RecordType::ANY, None),
        query("example.com.", RecordType::A, None),
        query("big.", RecordType::A, None),
    ] {
        assert!(both_paths(&other, Transport::Udp).is_none());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_queries_answer_alike_on_both_paths(
        seed in 0usize..6,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
    ) {
        let mut bytes = seeds()[seed].clone();
        for (at, value) in flips {
            let i = at % bytes.len();
            bytes[i] = value;
        }
        if let Some((fast, general)) = both_paths(&bytes, Transport::Udp) {
            prop_assert_eq!(fast, general);
        }
    }

    #[test]
    fn random_bytes_never_crash(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let h = handler();
        check_any(&h, &bytes, Transport::Udp);
        check_any(&h, &bytes, Transport::Tcp);
    }

    #[test]
    fn mutated_queries_never_crash(
        seed in 0usize..6,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
        extra in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        let h = handler();
        let mut bytes = seeds()[seed].clone();
        for (at, value) in flips {
            let i = at % bytes.len();
            bytes[i] = value;
        }
        if cut % 3 == 0 {
            bytes.truncate(cut % (bytes.len() + 1));
        } else if cut % 3 == 1 {
            bytes.extend_from_slice(&extra);
        }
        check_any(&h, &bytes, Transport::Udp);
    }
}

#[test]
fn forwarder_config_is_validated() {
    let bad = |f: ForwardConfig| Forwarder::new(&f).expect_err("must be refused");
    let err = bad(ForwardConfig {
        upstreams: Upstreams::Servers(vec![]),
        attempts: 0,
        ..ForwardConfig::default()
    });
    assert!(matches!(err, crate::NamesError::Upstream(_)), "{err}");
    let err = bad(ForwardConfig {
        upstreams: Upstreams::Servers(vec!["0.0.0.0:53".parse().unwrap()]),
        ..ForwardConfig::default()
    });
    assert!(err.to_string().contains("0.0.0.0:53"), "{err}");
    let err = bad(ForwardConfig {
        upstreams: Upstreams::ResolvConf("/nonexistent-nmt/resolv.conf".into()),
        ..ForwardConfig::default()
    });
    assert!(
        matches!(err, crate::NamesError::File { action: "read", .. }),
        "{err}"
    );
}

#[test]
fn resolv_conf_servers_are_read_in_order() {
    let dir = std::env::temp_dir().join(format!("nmt-resolv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("resolv.conf");
    std::fs::write(
        &path,
        "# comment\nsearch example.com\nnameserver 198.19.0.2\nnameserver 198.19.0.3\n\
         nameserver 198.19.0.2\noptions ndots:0\n",
    )
    .unwrap();
    let servers = resolv_conf_servers(&path).unwrap();
    assert_eq!(
        servers,
        [
            "198.19.0.2:53".parse::<std::net::SocketAddr>().unwrap(),
            "198.19.0.3:53".parse().unwrap()
        ]
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let f = rt
        .block_on(async {
            Forwarder::new(&ForwardConfig {
                upstreams: Upstreams::ResolvConf(path.clone()),
                ..ForwardConfig::default()
            })
        })
        .unwrap();
    assert_eq!(f.servers(), servers.as_slice());
    // 2 attempts of 1 s, plus a small margin: the bound on any forwarded answer.
    assert_eq!(f.deadline(), std::time::Duration::from_millis(2250));
    std::fs::remove_dir_all(&dir).unwrap();
}
