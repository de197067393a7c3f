//! One DNS request in, one response out: parsing, local answers, forwarding, truncation.
//!
//! Split in two so the hot path stays allocation-light and never awaits: [`Handler::prepare`]
//! answers everything that is local (and every error) synchronously, and only hands back a
//! [`ForwardJob`] when the question has to go upstream; [`Handler::finish`] runs that job.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::fast;
use super::forward::{Forwarded, Forwarder};
use super::wire::{EDNS_PAYLOAD, PLAIN_UDP_PAYLOAD, key_char};
use crate::records::{Answer, Zone};

/// How the request arrived; decides the size limit of the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Datagram: answers above 512 bytes (or the requester's EDNS size, at most
    /// [`EDNS_PAYLOAD`]) are truncated and get the TC bit, so the client retries over TCP.
    Udp,
    /// Stream: answers up to 65535 bytes.
    Tcp,
}

/// What to do with one request.
#[derive(Debug)]
pub enum Prepared {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Ask upstream, then send what [`Handler::finish`] returns.
    Forward(Box<ForwardJob>),
    /// Send nothing (not a DNS query, or not even a DNS header).
    Drop,
}

/// A question that must be resolved upstream.
#[derive(Debug)]
pub struct ForwardJob {
    response: Message,
    query: Query,
    transport: Transport,
    udp_limit: usize,
    _permit: OwnedSemaphorePermit,
}

/// Answers DNS requests from the current zone and the forwarder.
pub struct Handler {
    zone: Arc<ArcSwap<Zone>>,
    forwarder: Forwarder,
    local_ttl: u32,
    rotation: AtomicUsize,
    forward_slots: Arc<Semaphore>,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler")
            .field("forwarder", &self.forwarder)
            .field("local_ttl", &self.local_ttl)
            .finish_non_exhaustive()
    }
}

/// Turns a wire name into the zone's lookup key: labels joined by dots, no trailing dot.
/// Bytes that cannot occur in a cluster name become `?`, so such names never match a record
/// but are still recognised as inside a network domain.
fn name_key(name: &Name) -> String {
    let mut key = String::with_capacity(name.len());
    for (i, label) in name.iter().enumerate() {
        if i > 0 {
            key.push('.');
        }
        key.extend(label.iter().copied().map(key_char));
    }
    key
}

/// The skeleton of a response to `req`: same id, opcode, RD and question; RA set; an OPT record
/// if the request had one.
fn response_to(req: &Message) -> Message {
    let mut resp = Message::response(req.id, req.op_code);
    resp.metadata.recursion_desired = req.recursion_desired;
    resp.metadata.checking_disabled = req.checking_disabled;
    resp.metadata.recursion_available = true;
    resp.add_queries(req.queries.iter().cloned());
    if req.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        resp.set_edns(edns);
    }
    resp
}

fn udp_limit(req: &Message) -> usize {
    match &req.edns {
        Some(edns) => usize::from(edns.max_payload().clamp(512, EDNS_PAYLOAD)),
        None => PLAIN_UDP_PAYLOAD,
    }
}

/// A minimal error response built from the header alone (the rest did not parse).
fn header_error(header: &Header, code: ResponseCode) -> Vec<u8> {
    let mut resp = Message::error_msg(header.id, header.op_code, code);
    resp.metadata.recursion_desired = header.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.to_vec().unwrap_or_default()
}

/// Encodes `resp`, truncating it (TC bit, records dropped, question kept) when it does not fit
/// the transport. Never fails: a message that cannot be encoded becomes SERVFAIL.
pub(crate) fn encode(resp: &Message, transport: Transport, udp_limit: usize) -> Vec<u8> {
    let limit = match transport {
        Transport::Udp => udp_limit,
        Transport::Tcp => usize::from(u16::MAX),
    };
    match resp.to_vec() {
        Ok(bytes) if bytes.len() <= limit => return bytes,
        Ok(_) => {
            if let Ok(bytes) = resp.truncate().to_vec()
                && bytes.len() <= limit
            {
                return bytes;
            }
        }
        Err(e) => tracing::debug!(error = %e, "cannot encode DNS response"),
    }
    let mut fail = Message::error_msg(resp.id, resp.op_code, ResponseCode::ServFail);
    fail.metadata.recursion_desired = resp.recursion_desired;
    fail.metadata.recursion_available = true;
    fail.to_vec().unwrap_or_default()
}

impl Handler {
    /// A handler answering from `zone` (read on every request) and forwarding with
    /// `forwarder`; at most `max_forwarded` upstream questions are in flight at once (more get
    /// SERVFAIL at once, like Docker's 1024 limit).
    pub fn new(
        zone: Arc<ArcSwap<Zone>>,
        forwarder: Forwarder,
        local_ttl: u32,
        max_forwarded: usize,
    ) -> Handler {
        Handler {
            zone,
            forwarder,
            local_ttl,
            rotation: AtomicUsize::new(0),
            forward_slots: Arc::new(Semaphore::new(max_forwarded.max(1))),
        }
    }

    /// The zone this handler answers from.
    pub fn zone(&self) -> &Arc<ArcSwap<Zone>> {
        &self.zone
    }

    /// The forwarder used for non-cluster names.
    pub fn forwarder(&self) -> &Forwarder {
        &self.forwarder
    }

    /// Handles one request completely (forwarding if needed). `None`: send nothing.
    pub async fn handle(
        &self,
        request: &[u8],
        networks: &[String],
        transport: Transport,
    ) -> Option<Vec<u8>> {
        match self.prepare(request, networks, transport) {
            Prepared::Reply(bytes) => Some(bytes),
            Prepared::Drop => None,
            Prepared::Forward(job) => Some(self.finish(job).await),
        }
    }

    /// Parses and answers a request from the current zone, or says it must be forwarded.
    /// Never panics, whatever the bytes.
    pub fn prepare(&self, request: &[u8], networks: &[String], transport: Transport) -> Prepared {
        let zone = self.zone.load();
        self.prepare_with(&zone, request, networks, transport)
    }

    pub(crate) fn prepare_with(
        &self,
        zone: &Zone,
        request: &[u8],
        networks: &[String],
        transport: Transport,
    ) -> Prepared {
        if let Some(bytes) = self.fast_answer(zone, request, networks, transport) {
            return Prepared::Reply(bytes);
        }
        self.general(zone, request, networks, transport)
    }

    /// The common case answered in place (the wire-level fast path); `None` for anything
    /// else. Public so tests and fuzz targets can hold it against [`Handler::general`], which
    /// must give the same answer for every request the fast path takes.
    pub fn fast_answer(
        &self,
        zone: &Zone,
        request: &[u8],
        networks: &[String],
        transport: Transport,
    ) -> Option<Vec<u8>> {
        let q = fast::parse(request)?;
        let limit = match transport {
            Transport::Udp => q.udp_limit,
            Transport::Tcp => usize::from(u16::MAX),
        };
        let respond = |rcode, records: (&[std::net::Ipv4Addr], usize)| {
            fast::respond(request, &q, rcode, records, self.local_ttl, limit)
        };
        match zone.resolve(networks, &q.key) {
            Answer::Addresses(ips) if q.qtype == fast::TYPE_A => {
                let start = self.rotate(ips.len());
                respond(fast::NOERROR, (&ips, start))
            }
            Answer::Addresses(_) | Answer::NoData => respond(fast::NOERROR, (&[], 0)),
            Answer::NxDomain => respond(fast::NXDOMAIN, (&[], 0)),
            Answer::Ptr(_) | Answer::Forward => None,
        }
    }

    /// Where a list of `len` addresses starts this time: a counter that advances per answer
    /// rotates it (round robin).
    fn rotate(&self, len: usize) -> usize {
        self.rotation
            .fetch_add(1, Ordering::Relaxed)
            .checked_rem(len)
            .unwrap_or(0)
    }

    /// Any request, through hickory's full message codec (the reference the fast path is
    /// held against).
    pub fn general(
        &self,
        zone: &Zone,
        request: &[u8],
        networks: &[String],
        transport: Transport,
    ) -> Prepared {
        let Ok(header) = Header::read(&mut BinDecoder::new(request)) else {
            return Prepared::Drop;
        };
        if header.message_type == MessageType::Response {
            // Never answer answers: that is how reflection loops start.
            return Prepared::Drop;
        }
        let req = match Message::from_vec(request) {
            Ok(req) => req,
            Err(e) => {
                tracing::debug!(error = %e, id = header.id, "malformed DNS request");
                return Prepared::Reply(header_error(&header, ResponseCode::FormErr));
            }
        };
        let limit = udp_limit(&req);
        let mut resp = response_to(&req);
        let reply = |resp: &Message| Prepared::Reply(encode(resp, transport, limit));

        if req.op_code != OpCode::Query {
            resp.metadata.response_code = ResponseCode::NotImp;
            return reply(&resp);
        }
        if let Some(edns) = &req.edns
            && edns.version() > 0
        {
            resp.metadata.response_code = ResponseCode::BADVERS;
            return reply(&resp);
        }
        let [query] = req.queries.as_slice() else {
            resp.metadata.response_code = ResponseCode::FormErr;
            return reply(&resp);
        };
        if query.query_class() != DNSClass::IN {
            resp.metadata.response_code = ResponseCode::Refused;
            return reply(&resp);
        }
        let qtype = query.query_type();
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR | RecordType::OPT) {
            resp.metadata.response_code = ResponseCode::Refused;
            return reply(&resp);
        }

        match zone.resolve(networks, &name_key(query.name())) {
            Answer::Addresses(ips) => {
                resp.metadata.authoritative = true;
                if matches!(qtype, RecordType::A | RecordType::ANY) {
                    // Round robin: rotate the list by a counter that advances per answer.
                    let start = self.rotate(ips.len());
                    for ip in ips[start..].iter().chain(&ips[..start]) {
                        resp.add_answer(Record::from_rdata(
                            query.name().clone(),
                            self.local_ttl,
                            RData::A(A(*ip)),
                        ));
                    }
                }
                // Any other type (AAAA: no IPv6 yet; MX, TXT...): the name exists, no data.
                reply(&resp)
            }
            Answer::Ptr(names) => {
                resp.metadata.authoritative = true;
                if matches!(qtype, RecordType::PTR | RecordType::ANY) {
                    for target in names.iter().filter_map(|n| Name::from_ascii(n).ok()) {
                        resp.add_answer(Record::from_rdata(
                            query.name().clone(),
                            self.local_ttl,
                            RData::PTR(PTR(target)),
                        ));
                    }
                }
                reply(&resp)
            }
            Answer::NoData => {
                resp.metadata.authoritative = true;
                reply(&resp)
            }
            Answer::NxDomain => {
                resp.metadata.authoritative = true;
                resp.metadata.response_code = ResponseCode::NXDomain;
                reply(&resp)
            }
            Answer::Forward => match self.forward_slots.clone().try_acquire_owned() {
                Ok(permit) => Prepared::Forward(Box::new(ForwardJob {
                    query: query.clone(),
                    response: resp,
                    transport,
                    udp_limit: limit,
                    _permit: permit,
                })),
                Err(_) => {
                    tracing::debug!("too many forwarded DNS queries in flight");
                    resp.metadata.response_code = ResponseCode::ServFail;
                    reply(&resp)
                }
            },
        }
    }

    /// Answers a question that would have been forwarded with REFUSED instead (and no
    /// "recursion available"): for requesters that get cluster names but no recursion.
    pub fn refuse(&self, job: Box<ForwardJob>) -> Vec<u8> {
        let ForwardJob {
            mut response,
            transport,
            udp_limit,
            ..
        } = *job;
        response.metadata.response_code = ResponseCode::Refused;
        response.metadata.recursion_available = false;
        encode(&response, transport, udp_limit)
    }

    /// Resolves a forwarded question upstream and encodes the response. Bounded in time by the
    /// forwarder's deadline: on timeout or any upstream failure the answer is SERVFAIL.
    pub async fn finish(&self, job: Box<ForwardJob>) -> Vec<u8> {
        let ForwardJob {
            mut response,
            query,
            transport,
            udp_limit,
            _permit,
        } = *job;
        match self
            .forwarder
            .forward(query.name().clone(), query.query_type())
            .await
        {
            Forwarded::Answer {
                answers,
                authorities,
            } => {
                response.insert_answers(answers);
                response.insert_authorities(authorities);
            }
            Forwarded::Negative { code, authorities } => {
                response.metadata.response_code = code;
                response.insert_authorities(authorities);
            }
            Forwarded::Failed => response.metadata.response_code = ResponseCode::ServFail,
        }
        encode(&response, transport, udp_limit)
    }
}
