//! The slot arrays (`EP_SLOTS`, `REMOTE_SLOTS`, `LOCAL_SLOTS`; see `ebpf/ovl_common.h`):
//! direct-mapped copies of the three hash-map lookups on the busy path. The hash maps stay
//! authoritative; a slot holds a copy of one of their entries, or nothing.
//!
//! The programs read a slot between two readings of its sequence counter, so the agent must
//! never let them see half an update. A map update syscall copies the whole value in one
//! go, in no guaranteed order, so slots are written through an mmap of the array instead:
//! counter odd, fields, counter even. This process is the only writer.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering, fence};

use aya::maps::MapData;

use crate::raw::{RawEndpoint, RawEpSlot, RawMacKey, RawMacSlot, mac_slot};

/// A value of a slot array: a sequence counter first, then the copy.
pub(crate) trait Slot: Copy + Default + PartialEq {
    /// Sets the counter field (written last, separately).
    fn with_seq(self, seq: u32) -> Self;
}

impl Slot for RawEpSlot {
    fn with_seq(self, seq: u32) -> Self {
        Self { seq, ..self }
    }
}

impl Slot for RawMacSlot {
    fn with_seq(self, seq: u32) -> Self {
        Self { seq, ..self }
    }
}

/// One slot array, mapped into this process.
pub(crate) struct SlotTable<T: Slot> {
    base: NonNull<T>,
    entries: u32,
    len: usize,
}

// SAFETY: the mapping is owned by this value and unmapped only on drop; reads take `&self`
// and writes `&mut self`, so moving it to another thread cannot create a data race within
// this process (the BPF programs are the only other party, and the sequence counter
// protocol is what keeps them consistent).
unsafe impl<T: Slot> Send for SlotTable<T> {}
// SAFETY: shared references only read (volatile reads of memory nobody else in this process
// writes while they exist), so sharing them between threads is sound.
unsafe impl<T: Slot> Sync for SlotTable<T> {}

impl<T: Slot> SlotTable<T> {
    /// Maps `entries` values of the `BPF_F_MMAPABLE` array `map`, read and write.
    pub(crate) fn map(map: &MapData, entries: u32) -> io::Result<Self> {
        // Array values sit at a stride of their size rounded up to 8 bytes; every slot
        // type is a multiple of 8 (checked by the layout tests).
        debug_assert_eq!(size_of::<T>() % 8, 0);
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| io::Error::other("page size"))?;
        let len = (entries as usize * size_of::<T>()).next_multiple_of(page);
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: a shared mapping of the whole value area of an mmapable array map (offset
        // 0, length within the area the kernel allows, page aligned); the kernel keeps the
        // pages alive for as long as they are mapped, whatever happens to the fd.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast::<T>()).ok_or_else(|| io::Error::other("mmap: null"))?;
        Ok(Self { base, entries, len })
    }

    /// Number of slots.
    pub(crate) fn entries(&self) -> u32 {
        self.entries
    }

    fn slot(&self, i: u32) -> *mut T {
        assert!(i < self.entries, "slot {i} of {}", self.entries);
        // SAFETY: `i` is within the mapped array (asserted above).
        unsafe { self.base.as_ptr().add(i as usize) }
    }

    /// The content of slot `i` (its counter as it was).
    pub(crate) fn get(&self, i: u32) -> T {
        // SAFETY: in bounds and aligned (the mapping is page aligned, the stride is the
        // type's size); volatile because the memory is shared with the kernel. This process
        // is the only writer, so the read is never torn.
        unsafe { self.slot(i).read_volatile() }
    }

    /// Writes slot `i`: counter odd, the copy, counter even.
    pub(crate) fn put(&mut self, i: u32, value: T) {
        let slot = self.slot(i);
        // SAFETY: every slot type starts with its `u32` counter, 4-byte aligned, and this
        // process is the only writer, so an atomic view of it is sound.
        let seq = unsafe { &*slot.cast::<AtomicU32>() };
        // A counter left odd (a writer that died midway) stays odd until this write ends.
        let start = seq.load(Ordering::Relaxed) | 1;
        seq.store(start, Ordering::Relaxed);
        fence(Ordering::Release);
        // SAFETY: in bounds and aligned (see `get`).
        unsafe { slot.write_volatile(value.with_seq(start)) };
        fence(Ordering::Release);
        seq.store(start.wrapping_add(1), Ordering::Release);
    }

    /// Empties slot `i`.
    pub(crate) fn clear(&mut self, i: u32) {
        self.put(i, T::default());
    }
}

impl<T: Slot> Drop for SlotTable<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
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
pub(crate) fn put_ep(t: &mut SlotTable<RawEpSlot>, ifindex: u32, ep: RawEndpoint) {
    let i = ep_index(t, ifindex);
    let cur = t.get(i);
    if cur.ifindex == 0 || cur.ifindex == ifindex {
        t.put(
            i,
            RawEpSlot {
                seq: 0,
                ifindex,
                ep,
            },
        );
    }
}

/// Empties the slot of `ifindex` if it holds it.
pub(crate) fn clear_ep(t: &mut SlotTable<RawEpSlot>, ifindex: u32) {
    let i = ep_index(t, ifindex);
    if t.get(i).ifindex == ifindex {
        t.clear(i);
    }
}

/// Copies `key -> value` into its slot if the slot is free or its own.
pub(crate) fn put_mac(t: &mut SlotTable<RawMacSlot>, key: RawMacKey, value: u32) {
    let i = mac_index(t, &key);
    let cur = t.get(i);
    if cur.key.vni == 0 || cur.key == key {
        t.put(
            i,
            RawMacSlot {
                seq: 0,
                value,
                key,
                pad: 0,
            },
        );
    }
}

/// Empties the slot of `key` if it holds it.
pub(crate) fn clear_mac(t: &mut SlotTable<RawMacSlot>, key: RawMacKey) {
    let i = mac_index(t, &key);
    if t.get(i).key == key {
        t.clear(i);
    }
}

/// The value copied in the slot of `key`, if the slot holds it.
pub(crate) fn get_mac(t: &SlotTable<RawMacSlot>, key: RawMacKey) -> Option<u32> {
    let s = t.get(mac_index(t, &key));
    (s.key == key && key.vni != 0).then_some(s.value)
}

/// Every occupied slot of a MAC slot array: (index, key, value).
pub(crate) fn occupied_macs(t: &SlotTable<RawMacSlot>) -> Vec<(u32, RawMacKey, u32)> {
    (0..t.entries())
        .filter_map(|i| {
            let s = t.get(i);
            (s.key.vni != 0).then_some((i, s.key, s.value))
        })
        .collect()
}

/// Every occupied slot of the endpoint slot array: (index, ifindex, endpoint).
pub(crate) fn occupied_eps(t: &SlotTable<RawEpSlot>) -> Vec<(u32, u32, RawEndpoint)> {
    (0..t.entries())
        .filter_map(|i| {
            let s = t.get(i);
            (s.ifindex != 0).then_some((i, s.ifindex, s.ep))
        })
        .collect()
}
