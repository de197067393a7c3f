//! The slot arrays (`EP_SLOTS`, `REMOTE_SLOTS`, `LOCAL_SLOTS`; see `ebpf/ovl_common.h`):
//! direct-mapped copies of the three hash-map lookups on the busy path. The hash maps stay
//! authoritative; a slot holds a copy of one of their entries, or nothing.
//!
//! Each slot starts with a sequence counter. The programs copy a slot between two readings of
//! it and use the copy only if both are equal and even. The agent, the only writer, writes a
//! slot in three map updates: the counter made odd (fields as they were), the new fields
//! (counter odd), the counter made even (fields as they are now). A map update copies the
//! value in no guaranteed order, but only ever changes one of the two in each update, and
//! every byte is written whole; so a program that reads the counter even and unchanged
//! around its copy read fields no update was changing (the counter's low byte never returns
//! to a value it had in between, whatever the order of its bytes). The arrays are not
//! mmapable, which would be one write each: the kernel would vmalloc them, and every slot
//! read would cost the programs a page walk.

use std::os::fd::AsFd;

use aya::maps::{Array, Map, MapData, MapError};
use aya::sys::SyscallError;

use crate::raw::{RawEndpoint, RawEpSlot, RawMacKey, RawMacSlot, mac_slot};

/// A value of a slot array: plain data starting with its sequence counter.
pub(crate) trait Slot: aya::Pod + Default + PartialEq {
    /// The sequence counter.
    fn seq(&self) -> u32;
    /// The same fields with counter `seq`.
    fn with_seq(self, seq: u32) -> Self;
    /// Whether the slot holds nothing.
    fn is_free(&self) -> bool;
}

impl Slot for RawEpSlot {
    fn seq(&self) -> u32 {
        self.seq
    }
    fn with_seq(self, seq: u32) -> Self {
        Self { seq, ..self }
    }
    fn is_free(&self) -> bool {
        self.ifindex == 0
    }
}

impl Slot for RawMacSlot {
    fn seq(&self) -> u32 {
        self.seq
    }
    fn with_seq(self, seq: u32) -> Self {
        Self { seq, ..self }
    }
    fn is_free(&self) -> bool {
        self.key.vni == 0
    }
}

/// One slot array, with a handle of its own (the table outlives borrows of the loaded
/// object).
pub(crate) struct SlotTable<T: Slot> {
    arr: Array<MapData, T>,
    entries: u32,
}

impl<T: Slot> SlotTable<T> {
    /// Opens `entries` slots of the array `map`.
    pub(crate) fn open(map: &MapData, entries: u32) -> Result<Self, MapError> {
        // A duplicate of its fd (reopening by id would need CAP_SYS_ADMIN).
        let fd = map
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|io_error| SyscallError {
                call: "dup",
                io_error,
            })?;
        let own = MapData::from_fd(fd)?;
        Ok(Self {
            arr: Array::try_from(Map::Array(own))?,
            entries,
        })
    }

    /// Number of slots.
    pub(crate) fn entries(&self) -> u32 {
        self.entries
    }

    /// The content of slot `i` (this process is the only writer: never torn).
    pub(crate) fn get(&self, i: u32) -> Result<T, MapError> {
        self.arr.get(&i, 0)
    }

    /// Turns slot `i` from `cur` (as just read) into `new`: counter odd, fields, counter
    /// even (see the module docs).
    pub(crate) fn put(&mut self, i: u32, cur: T, new: T) -> Result<(), MapError> {
        for step in write_steps(cur, new) {
            self.arr.set(i, step, 0)?;
        }
        Ok(())
    }

    /// Every occupied slot: (index, content).
    pub(crate) fn occupied(&self) -> Result<Vec<(u32, T)>, MapError> {
        let mut out = Vec::new();
        for (i, s) in (0..self.entries).zip(self.arr.iter()) {
            let s = s?;
            if !s.is_free() {
                out.push((i, s));
            }
        }
        Ok(out)
    }
}

/// The values written, in order, to turn slot content `cur` into `new`: the counter made odd
/// (skipped when a writer that died midway left it odd), the new fields under the odd counter,
/// the counter made even. Each step changes the counter or the fields, never both.
fn write_steps<T: Slot>(cur: T, new: T) -> Vec<T> {
    let odd = cur.seq() | 1;
    let mut steps = Vec::with_capacity(3);
    if cur.seq() != odd {
        steps.push(cur.with_seq(odd));
    }
    steps.push(new.with_seq(odd));
    steps.push(new.with_seq(odd.wrapping_add(1)));
    steps
}

/// The three slot arrays, and the rules that keep them copies of the hash maps: a key takes
/// its slot only when the slot is empty or already its own, and gives it back only if it
/// still holds it.
pub(crate) struct Slots {
    pub ep: SlotTable<RawEpSlot>,
    pub remote: SlotTable<RawMacSlot>,
    pub local: SlotTable<RawMacSlot>,
}

fn ep_index(t: &SlotTable<RawEpSlot>, ifindex: u32) -> u32 {
    ifindex & (t.entries() - 1)
}

fn mac_index(t: &SlotTable<RawMacSlot>, key: &RawMacKey) -> u32 {
    mac_slot(key.vni, key.mac, t.entries())
}

/// Copies `ep` of `ifindex` into its slot if the slot is free or its own.
pub(crate) fn put_ep(
    t: &mut SlotTable<RawEpSlot>,
    ifindex: u32,
    ep: RawEndpoint,
) -> Result<(), MapError> {
    let i = ep_index(t, ifindex);
    let cur = t.get(i)?;
    if cur.is_free() || cur.ifindex == ifindex {
        let new = RawEpSlot {
            seq: 0,
            ifindex,
            ep,
        };
        t.put(i, cur, new)?;
    }
    Ok(())
}

/// Empties the slot of `ifindex` if it holds it.
pub(crate) fn clear_ep(t: &mut SlotTable<RawEpSlot>, ifindex: u32) -> Result<(), MapError> {
    let i = ep_index(t, ifindex);
    let cur = t.get(i)?;
    if cur.ifindex == ifindex {
        t.put(i, cur, RawEpSlot::default())?;
    }
    Ok(())
}

/// Copies `key -> value` into its slot if the slot is free or its own.
pub(crate) fn put_mac(
    t: &mut SlotTable<RawMacSlot>,
    key: RawMacKey,
    value: u32,
) -> Result<(), MapError> {
    let i = mac_index(t, &key);
    let cur = t.get(i)?;
    if cur.is_free() || cur.key == key {
        let new = RawMacSlot {
            seq: 0,
            value,
            key,
            pad: 0,
        };
        t.put(i, cur, new)?;
    }
    Ok(())
}

/// Empties the slot of `key` if it holds it (and, if `value` is given, with that value).
pub(crate) fn clear_mac(
    t: &mut SlotTable<RawMacSlot>,
    key: RawMacKey,
    value: Option<u32>,
) -> Result<(), MapError> {
    let i = mac_index(t, &key);
    let cur = t.get(i)?;
    if cur.key == key && value.is_none_or(|v| v == cur.value) {
        t.put(i, cur, RawMacSlot::default())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(seq: u32, value: u32) -> RawMacSlot {
        RawMacSlot {
            seq,
            value,
            key: RawMacKey {
                vni: 7,
                mac: [2, 0, 0, 0, 0, 1],
                pad: 0,
            },
            pad: 0,
        }
    }

    /// Every value a reader can see while `a` becomes `b`, when the kernel's copy writes the
    /// counter's bytes in any order; `None` for fields caught half-copied.
    fn seen(a: RawMacSlot, b: RawMacSlot) -> Vec<(u32, Option<u32>)> {
        let (x, y) = (a.seq.to_le_bytes(), b.seq.to_le_bytes());
        let torn_fields = a.value != b.value;
        (0..16u32)
            .map(|m| {
                let bytes: [u8; 4] =
                    std::array::from_fn(|i| if m >> i & 1 == 1 { y[i] } else { x[i] });
                let seq = u32::from_le_bytes(bytes);
                let fields = if torn_fields { None } else { Some(a.value) };
                (seq, fields)
            })
            .chain([(a.seq, Some(a.value)), (b.seq, Some(b.value))])
            .collect()
    }

    #[test]
    fn a_reader_never_accepts_half_an_update() {
        // Counters around byte carries too: 0xff + 2 carries into the second byte.
        for start in [0u32, 2, 0xfe, 0xfffe, 0x1_00fe, 0xffff_fffe, 0xff, 0x1ff] {
            let (old, new) = (slot(start, 1), slot(0, 2));
            let steps = write_steps(old, new);
            assert!(steps.len() == 3 || start & 1 == 1);
            let last = steps.last().expect("steps");
            assert_eq!(last.seq & 1, 0, "ends even");
            assert_eq!(last.value, 2);
            // Instants a reader can read at, in order: whole states and what is seen during
            // each copy.
            let mut states = vec![old];
            states.extend(&steps);
            let mut instants: Vec<Vec<(u32, Option<u32>)>> = vec![vec![(old.seq, Some(1))]];
            for w in states.windows(2) {
                assert!(
                    w[0].seq == w[1].seq || w[0].value == w[1].value,
                    "a step changes the counter or the fields, not both"
                );
                instants.push(seen(w[0], w[1]));
                instants.push(vec![(w[1].seq, Some(w[1].value))]);
            }
            // A reader: counter at instant i, fields at j >= i, counter at k >= j.
            for i in 0..instants.len() {
                for j in i..instants.len() {
                    for k in j..instants.len() {
                        for (s1, _) in &instants[i] {
                            for (_, f) in &instants[j] {
                                for (s2, _) in &instants[k] {
                                    if s1 == s2 && s1 & 1 == 0 {
                                        assert!(
                                            matches!(f, Some(1) | Some(2)),
                                            "start {start:#x}: accepted {f:?} between {s1:#x} and {s2:#x}"
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_counter_left_odd_is_finished() {
        let steps = write_steps(slot(5, 1), slot(0, 2));
        assert_eq!(
            steps.iter().map(|s| (s.seq, s.value)).collect::<Vec<_>>(),
            vec![(5, 2), (6, 2)]
        );
    }
}
