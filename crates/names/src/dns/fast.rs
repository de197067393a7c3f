//! The wire-level fast path for the question containers ask most: one A or AAAA question for
//! a cluster name, plain or with a bare EDNS OPT record.
//!
//! Decoding a whole [`hickory_proto::op::Message`] and encoding another costs a dozen
//! allocations per request; this path reads the header and the question in place and builds
//! the response by copying the question bytes and appending fixed-size records, so a local
//! answer costs one buffer. It only takes requests it fully understands and hands everything
//! else (other types, compression in the question, EDNS options, trailing bytes, answers that
//! would not fit) back to the general path, which stays the reference: the tests check both
//! give the same response.

use std::net::Ipv4Addr;

use super::wire::{EDNS_PAYLOAD, PLAIN_UDP_PAYLOAD, key_char};

const HEADER_LEN: usize = 12;
/// Type codes the fast path answers.
pub(crate) const TYPE_A: u16 = 1;
pub(crate) const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;
/// Response codes the fast path sets.
pub(crate) const NOERROR: u8 = 0;
pub(crate) const NXDOMAIN: u8 = 3;
/// A compression pointer to the question name, which always starts right after the header.
const QNAME_POINTER: [u8; 2] = [0xC0, HEADER_LEN as u8];

/// One question read in place from a request the fast path can answer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Question {
    /// The zone lookup key (labels joined by dots, see `handler::name_key`).
    pub key: String,
    /// `TYPE_A` or `TYPE_AAAA`.
    pub qtype: u16,
    /// Where the question ends in the request (it is copied into the response).
    question_end: usize,
    /// The request carried an OPT record: the response carries ours.
    edns: bool,
    /// The most a UDP response may hold.
    pub udp_limit: usize,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Reads the request's question if the fast path can answer it; `None` sends the request
/// down the general path.
pub(crate) fn parse(req: &[u8]) -> Option<Question> {
    if req.len() < HEADER_LEN {
        return None;
    }
    let flags = u16_at(req, 2)?;
    // A query (QR 0), opcode QUERY, no TC, Z and the reserved bits clear.
    if flags & 0xFA40 != 0 {
        return None;
    }
    let (qd, an, ns, ar) = (
        u16_at(req, 4)?,
        u16_at(req, 6)?,
        u16_at(req, 8)?,
        u16_at(req, 10)?,
    );
    if qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return None;
    }
    let mut at = HEADER_LEN;
    let mut key = String::with_capacity(32);
    loop {
        let len = usize::from(*req.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        // Compression pointers and extended labels are rare in questions: general path.
        if len > 63 {
            return None;
        }
        let label = req.get(at..at + len)?;
        if !key.is_empty() {
            key.push('.');
        }
        key.extend(label.iter().copied().map(key_char));
        at += len;
        if at - HEADER_LEN > 255 {
            return None;
        }
    }
    // The name on the wire, root byte included, is at most 255 bytes.
    if key.is_empty() || at - HEADER_LEN > 255 {
        return None;
    }
    let qtype = u16_at(req, at)?;
    let qclass = u16_at(req, at + 2)?;
    at += 4;
    if !matches!(qtype, TYPE_A | TYPE_AAAA) || qclass != CLASS_IN {
        return None;
    }
    let question_end = at;
    let (edns, udp_limit) = if ar == 1 {
        // A bare OPT: root owner, version 0, no options.
        let opt = req.get(at..at + 11)?;
        let payload = u16_at(opt, 3)?;
        let version = opt[6];
        let rdlen = u16_at(opt, 9)?;
        if opt[0] != 0 || u16_at(opt, 1)? != TYPE_OPT || version != 0 || rdlen != 0 {
            return None;
        }
        at += 11;
        (
            true,
            usize::from(payload.clamp(PLAIN_UDP_PAYLOAD as u16, EDNS_PAYLOAD)),
        )
    } else {
        (false, PLAIN_UDP_PAYLOAD)
    };
    if at != req.len() {
        return None;
    }
    Some(Question {
        key,
        qtype,
        question_end,
        edns,
        udp_limit,
    })
}

/// The authoritative response to `q` (read from `req`) with `rcode` and one A record per
/// address of `ips`, starting at index `start` and wrapping around (round robin); `None` if
/// it would not fit `limit` bytes (the general path truncates).
pub(crate) fn respond(
    req: &[u8],
    q: &Question,
    rcode: u8,
    (ips, start): (&[Ipv4Addr], usize),
    ttl: u32,
    limit: usize,
) -> Option<Vec<u8>> {
    let count = ips.len();
    let start = if count == 0 { 0 } else { start % count };
    let len = q.question_end + 16 * count + if q.edns { 11 } else { 0 };
    if len > limit {
        return None;
    }
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&req[..2]);
    // QR, AA, RA set; opcode 0; RD and CD echoed.
    let rd = req[2] & 0x01;
    let cd = req[3] & 0x10;
    out.push(0x84 | rd);
    out.push(0x80 | cd | (rcode & 0x0F));
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&u16::try_from(count).ok()?.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&u16::from(q.edns).to_be_bytes());
    out.extend_from_slice(&req[HEADER_LEN..q.question_end]);
    for ip in ips[start..].iter().chain(&ips[..start]) {
        out.extend_from_slice(&QNAME_POINTER);
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    if q.edns {
        out.push(0);
        out.extend_from_slice(&TYPE_OPT.to_be_bytes());
        out.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
        out.extend_from_slice(&[0; 6]);
    }
    Some(out)
}
