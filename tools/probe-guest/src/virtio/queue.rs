//! Split virtqueue (virtio 1.2 §2.7), driver side. The descriptor table, available ring
//! and used ring live in DMA memory (`dma.rs`); the device reads and writes them
//! concurrently from a host thread, so every ring access is volatile and ordered with
//! fences: buffers are published (descriptors, ring entry) before `avail.idx` moves, and
//! used entries are read only after `used.idx` has been seen.

use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};

use super::Deadline;
use crate::dma;
use crate::io::Mmio;

/// Largest queue this driver sets up (keeps the per-queue bookkeeping fixed-size).
pub const MAX_SIZE: u16 = 256;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;
/// avail.flags: do not interrupt (the guest never enables interrupts anyway).
const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// used.flags: the device does not need a notification now.
const USED_F_NO_NOTIFY: u16 = 1;

const DESC_SIZE: u64 = 16;
const PAGE: u64 = 4096;

/// One buffer of a chain: device-readable, or device-writable when `write` is set.
#[derive(Clone, Copy, Default)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

impl Buf {
    pub const fn read(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            write: false,
        }
    }

    pub const fn write(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            write: true,
        }
    }
}

/// A split virtqueue owned by the driver.
pub struct Virtqueue {
    notify: Mmio,
    index: u16,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    free_head: u16,
    num_free: u16,
    avail_idx: u16,
    last_used: u16,
    /// Heads handed to the device and not yet returned, to catch bogus used entries.
    in_flight: [bool; MAX_SIZE as usize],
}

impl Virtqueue {
    /// Allocates zeroed rings for `size` entries (a power of two <= MAX_SIZE).
    /// `notify` is the device's QueueNotify register.
    pub(super) fn new(index: u16, size: u16, notify: Mmio) -> Result<Self, &'static str> {
        if size == 0 || size > MAX_SIZE || !size.is_power_of_two() {
            return Err("virtqueue: bad size");
        }
        let n = u64::from(size);
        // Descriptor table (16-byte aligned) then the available ring (2-byte aligned);
        // the used ring (4-byte aligned) on its own page.
        let driver_len = (n * DESC_SIZE + 6 + 2 * n).next_multiple_of(PAGE);
        let device_len = (6 + 8 * n).next_multiple_of(PAGE);
        let base = dma::alloc(driver_len + device_len, PAGE)?;
        let mut q = Self {
            notify,
            index,
            size,
            desc: base,
            avail: base + n * DESC_SIZE,
            used: base + driver_len,
            free_head: 0,
            num_free: size,
            avail_idx: 0,
            last_used: 0,
            in_flight: [false; MAX_SIZE as usize],
        };
        // Free list through the `next` fields.
        for i in 0..size {
            q.write_desc(i, 0, 0, 0, (i + 1) % size);
        }
        // SAFETY: avail.flags lies in the ring memory just allocated.
        unsafe { write_volatile(q.avail as *mut u16, AVAIL_F_NO_INTERRUPT) };
        Ok(q)
    }

    /// Guest addresses of the descriptor table, driver (available) and device (used) areas.
    pub fn addresses(&self) -> (u64, u64, u64) {
        (self.desc, self.avail, self.used)
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    pub fn num_free(&self) -> u16 {
        self.num_free
    }

    fn desc_ptr(&self, i: u16) -> *mut u8 {
        (self.desc + u64::from(i) * DESC_SIZE) as *mut u8
    }

    fn write_desc(&mut self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        debug_assert!(i < self.size);
        let p = self.desc_ptr(i);
        // SAFETY: i < size, so the 16-byte descriptor is inside the table this queue owns.
        unsafe { write_desc_at(p, addr, len, flags, next) }
    }

    fn desc_flags_next(&self, i: u16) -> (u16, u16) {
        let p = self.desc_ptr(i);
        // SAFETY: as in write_desc; the device never writes the descriptor table.
        unsafe {
            (
                read_volatile(p.add(12) as *const u16),
                read_volatile(p.add(14) as *const u16),
            )
        }
    }

    /// Puts a descriptor chain for `bufs` on the available ring (without notifying);
    /// returns its head.
    pub fn add(&mut self, bufs: &[Buf]) -> Result<u16, &'static str> {
        if bufs.is_empty() || bufs.len() > usize::from(self.num_free) {
            return Err("virtqueue: not enough free descriptors");
        }
        let head = self.free_head;
        let mut i = head;
        for (k, b) in bufs.iter().enumerate() {
            let (_, next_free) = self.desc_flags_next(i);
            let more = k + 1 < bufs.len();
            let flags = if b.write { DESC_F_WRITE } else { 0 } | if more { DESC_F_NEXT } else { 0 };
            self.write_desc(i, b.addr, b.len, flags, if more { next_free } else { 0 });
            i = next_free;
        }
        self.free_head = i;
        self.num_free -= bufs.len() as u16;
        self.publish(head);
        Ok(head)
    }

    /// Like [`Self::add`] but through an indirect table at `table` (DMA memory with room
    /// for `bufs.len()` descriptors, not in use by the device): one ring descriptor.
    pub fn add_indirect(&mut self, table: u64, bufs: &[Buf]) -> Result<u16, &'static str> {
        if bufs.is_empty() || bufs.len() > usize::from(self.size) {
            return Err("virtqueue: bad indirect chain length");
        }
        if self.num_free == 0 {
            return Err("virtqueue: not enough free descriptors");
        }
        for (k, b) in bufs.iter().enumerate() {
            let more = k + 1 < bufs.len();
            let flags = if b.write { DESC_F_WRITE } else { 0 } | if more { DESC_F_NEXT } else { 0 };
            let p = (table + k as u64 * DESC_SIZE) as *mut u8;
            // SAFETY: the caller provides room for bufs.len() descriptors at `table`.
            unsafe { write_desc_at(p, b.addr, b.len, flags, if more { k as u16 + 1 } else { 0 }) }
        }
        let head = self.free_head;
        let (_, next_free) = self.desc_flags_next(head);
        let len = bufs.len() as u32 * DESC_SIZE as u32;
        self.write_desc(head, table, len, DESC_F_INDIRECT, 0);
        self.free_head = next_free;
        self.num_free -= 1;
        self.publish(head);
        Ok(head)
    }

    fn publish(&mut self, head: u16) {
        self.in_flight[usize::from(head)] = true;
        let slot = u64::from(self.avail_idx % self.size);
        // SAFETY: avail.ring[slot] lies inside the available ring of this queue.
        unsafe { write_volatile((self.avail + 4 + 2 * slot) as *mut u16, head) };
        // The descriptors and the ring entry must be visible before the index moves.
        fence(Ordering::Release);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // SAFETY: avail.idx of this queue.
        unsafe { write_volatile((self.avail + 2) as *mut u16, self.avail_idx) };
    }

    /// Notifies the device unless it said it does not need it (it is draining the ring).
    pub fn kick(&self) {
        // The avail.idx store must be visible before used.flags is read (a store-load
        // ordering, so a full fence).
        fence(Ordering::SeqCst);
        // SAFETY: used.flags of this queue.
        let flags = unsafe { read_volatile(self.used as *const u16) };
        if flags & USED_F_NO_NOTIFY == 0 {
            self.notify.write32(0, u32::from(self.index));
        }
    }

    /// The next used element `(head, len)`, freeing its descriptors; `Ok(None)` when the
    /// device has not returned anything new.
    pub fn pop_used(&mut self) -> Result<Option<(u16, u32)>, &'static str> {
        // SAFETY: used.idx of this queue.
        let idx = unsafe { read_volatile((self.used + 2) as *const u16) };
        if idx == self.last_used {
            return Ok(None);
        }
        if idx.wrapping_sub(self.last_used) > self.size {
            return Err("virtqueue: used index ran more than a ring ahead");
        }
        // Read the element only after seeing the index that covers it.
        fence(Ordering::Acquire);
        let slot = u64::from(self.last_used % self.size);
        let elem = self.used + 4 + 8 * slot;
        // SAFETY: used.ring[slot] lies inside the used ring of this queue.
        let (id, len) = unsafe {
            (
                read_volatile(elem as *const u32),
                read_volatile((elem + 4) as *const u32),
            )
        };
        self.last_used = self.last_used.wrapping_add(1);
        if id >= u32::from(self.size) || !self.in_flight[id as usize] {
            return Err("virtqueue: device returned a descriptor that was not in flight");
        }
        let head = id as u16;
        self.in_flight[usize::from(head)] = false;
        // Return the chain to the free list.
        let mut n = 1;
        let mut last = head;
        loop {
            let (flags, next) = self.desc_flags_next(last);
            if flags & DESC_F_NEXT == 0 {
                break;
            }
            last = next;
            n += 1;
        }
        let (flags, _) = self.desc_flags_next(last);
        let p = self.desc_ptr(last);
        // SAFETY: `last` < size (it came from our own table); rewrite only its `next` to
        // link the chain in front of the free list.
        unsafe { write_desc_next(p, flags, self.free_head) };
        self.free_head = head;
        self.num_free += n;
        Ok(Some((head, len)))
    }

    /// Waits for the next used element, failing after `deadline`.
    pub fn wait_used(&mut self, deadline: Deadline) -> Result<(u16, u32), &'static str> {
        loop {
            if let Some(u) = self.pop_used()? {
                return Ok(u);
            }
            if deadline.passed() {
                return Err("virtio: timeout waiting for the device (used ring)");
            }
            core::hint::spin_loop();
        }
    }

    /// Number of chains handed to the device and not yet returned.
    pub fn in_flight(&self) -> usize {
        self.in_flight.iter().filter(|&&b| b).count()
    }
}

/// Writes a 16-byte descriptor `{le64 addr, le32 len, le16 flags, le16 next}` at `p`.
///
/// # Safety
/// `p` must point to 16 writable bytes of a descriptor table the device does not own.
unsafe fn write_desc_at(p: *mut u8, addr: u64, len: u32, flags: u16, next: u16) {
    // SAFETY: the caller's contract; descriptor tables are 16-byte aligned.
    unsafe {
        write_volatile(p as *mut u64, addr);
        write_volatile(p.add(8) as *mut u32, len);
        write_volatile(p.add(12) as *mut u16, flags);
        write_volatile(p.add(14) as *mut u16, next);
    }
}

/// Rewrites `flags` (without NEXT) and `next` of the descriptor at `p`, linking it to the
/// free list.
///
/// # Safety
/// As for [`write_desc_at`].
unsafe fn write_desc_next(p: *mut u8, flags: u16, next: u16) {
    // SAFETY: the caller's contract.
    unsafe {
        write_volatile(p.add(12) as *mut u16, flags & !DESC_F_NEXT);
        write_volatile(p.add(14) as *mut u16, next);
    }
}
