//! Drop events of the programs: every `drop()` in `ebpf/overlay.c` also writes a record to
//! the pinned `DROPS` ring buffer (reason, interface, VNI after decapsulation, the first
//! [`HEAD`] bytes of the frame), which `overlayctl monitor --drops` streams. Reading the ring
//! opens its pin with a descriptor of its own, so a reader runs beside the datapath; when no
//! one reads, the programs only count (reserving in a full ring fails).

use std::{
    os::fd::{AsRawFd, RawFd},
    path::Path,
};

use aya::maps::{Map, MapData, RingBuf};

use crate::{
    counters::NAMES,
    error::{Result, map_err},
};

/// Bytes of a dropped frame a record holds (`OVL_DROP_HEAD`).
pub const HEAD: usize = 64;
/// Size of `struct ovl_drop_event`: five `u32`s and the head.
const RECORD: usize = 20 + HEAD;

/// One dropped frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropEvent {
    /// Why (the counter's name, e.g. `egress_drop_spoofed_mac`).
    pub reason: &'static str,
    /// The interface the program ran on (a container's host end, or the vxlan device).
    pub ifindex: u32,
    /// The VNI it arrived with (received frames), else 0.
    pub vni: u32,
    /// The frame's length.
    pub len: u32,
    /// Its first bytes (Ethernet header first).
    pub head: Vec<u8>,
}

/// Decodes one ring record; `None` if it is not one (short, or an unknown reason).
pub fn parse(b: &[u8]) -> Option<DropEvent> {
    if b.len() < RECORD {
        return None;
    }
    let u = |i: usize| u32::from_ne_bytes(b[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
    let reason = *NAMES.get(u(0) as usize)?;
    let copied = (u(4) as usize).min(HEAD);
    Some(DropEvent {
        reason,
        ifindex: u(1),
        vni: u(2),
        len: u(3),
        head: b[20..20 + copied].to_vec(),
    })
}

/// The reader of the pinned ring.
pub struct DropReader {
    ring: RingBuf<MapData>,
}

impl DropReader {
    /// Opens the ring pinned in `pin_dir` (the datapath's pin directory).
    pub fn open(pin_dir: &Path) -> Result<Self> {
        let path = pin_dir.join("DROPS");
        let data = MapData::from_pin(&path).map_err(map_err("DROPS"))?;
        let ring = RingBuf::try_from(Map::RingBuf(data)).map_err(map_err("DROPS"))?;
        Ok(DropReader { ring })
    }

    /// Every record waiting now.
    pub fn drain(&mut self) -> Vec<DropEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            if let Some(e) = parse(&item) {
                out.push(e);
            }
        }
        out
    }
}

impl AsRawFd for DropReader {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

impl std::fmt::Debug for DropReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DropReader").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(reason: u32, copied: u32, head: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        for v in [reason, 7, 4096, 98, copied] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        let mut h = head.to_vec();
        h.resize(HEAD, 0);
        b.extend_from_slice(&h);
        b
    }

    #[test]
    fn records_decode_with_their_reason_and_copied_bytes() {
        let e = parse(&record(7, 3, &[1, 2, 3, 4])).unwrap();
        assert_eq!(
            e,
            DropEvent {
                reason: "egress_drop_spoofed_mac",
                ifindex: 7,
                vni: 4096,
                len: 98,
                head: vec![1, 2, 3],
            }
        );
        // More copied than a record holds is capped; short records and unknown reasons are
        // not records.
        assert_eq!(parse(&record(7, 999, &[])).unwrap().head.len(), HEAD);
        assert!(parse(&record(7, 3, &[])[..RECORD - 1]).is_none());
        assert!(parse(&record(99, 3, &[])).is_none());
    }
}
