//! `probe=blk`: drives every virtio-blk device on the command line (in order: disk 0, 1,
//! ...) and prints one line per disk. Per disk: negotiate, read the capacity, GET_ID, the
//! `blk.write` operations (pattern writes), FLUSH, read every written range back and
//! compare, a write on a read-only disk, requests crossing the end of the disk, and a
//! checksum of the whole disk (or of the `blk.sum` range) at the end. Requests are
//! pipelined (`blk.depth` in flight, `blk.req` bytes each, split into `blk.seg`-byte
//! descriptors), so large transfers use many descriptors and wrap the rings.

use core::ptr::{read_volatile, write_volatile};

use super::{Ctx, Outcome};
use crate::check::{pattern_fill, pattern_mismatch, Fnv};
use crate::cmdline::{parse_fields, Cmdline};
use crate::line::Line;
use crate::virtio::{self, queue, Buf, Deadline, Transport, Virtqueue};
use crate::{dma, serial};

pub(super) const SECTOR: u64 = 512;

/// Request types and status values (virtio 1.2 §5.2.6).
pub(super) const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
pub(super) const S_OK: u8 = 0;
/// Written to the status byte before submission: not a status a device may return.
const S_PENDING: u8 = 0xff;
const ID_BYTES: u32 = 20;

/// Feature bits (virtio 1.2 §5.2.3).
const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;

/// Config space offsets (`struct virtio_blk_config`).
const CFG_CAPACITY: usize = 0;
const CFG_SEG_MAX: usize = 12;

/// Most requests in flight.
const MAX_DEPTH: usize = 32;
/// Most bytes per request.
const MAX_REQ: u64 = 1 << 20;
/// Per-slot header (16 bytes) and status byte.
const META_SIZE: u64 = 64;
const MAX_CHAIN: usize = queue::MAX_SIZE as usize;
const DESC_SIZE: u64 = 16;

/// Tunables from the command line.
pub(super) struct Params {
    seg: u32,
    req: u32,
    depth: usize,
    indirect: bool,
    timeout_ms: u64,
}

impl Params {
    pub(super) fn parse(c: &Cmdline) -> Result<Self, &'static str> {
        let seg = c.number("blk.seg").unwrap_or(4096);
        let req = c.number("blk.req").unwrap_or(128 << 10);
        let depth = c.number("blk.depth").unwrap_or(8);
        if !(1..=MAX_REQ).contains(&seg) {
            return Err("blk.seg must be 1..=1048576");
        }
        if req == 0 || req > MAX_REQ || !req.is_multiple_of(SECTOR) {
            return Err("blk.req must be a multiple of 512 up to 1048576");
        }
        if !(1..=MAX_DEPTH as u64).contains(&depth) {
            return Err("blk.depth must be 1..=32");
        }
        Ok(Self {
            seg: seg as u32,
            req: req as u32,
            depth: depth as usize,
            indirect: c.number("blk.indirect") == Some(1),
            timeout_ms: virtio::timeout_ms(c),
        })
    }
}

/// One initialised virtio-blk device with its request slots.
pub(super) struct Blk {
    pub(super) t: Transport,
    pub(super) q: Virtqueue,
    features: u64,
    pub(super) capacity: u64,
    seg: u32,
    /// Bytes per request after the device's limits.
    pub(super) req: u32,
    pub(super) depth: usize,
    indirect: bool,
    timeout_ms: u64,
    /// `depth` slots of META_SIZE: header at 0, status byte at 16.
    meta: u64,
    /// `depth` data buffers of `req` bytes.
    data: u64,
    /// `depth` indirect tables of MAX_CHAIN descriptors (indirect mode only).
    tables: u64,
    head_slot: [u8; MAX_CHAIN],
    /// Used length of each slot's request once the device returned it.
    done: [Option<u32>; MAX_DEPTH],
}

impl Blk {
    pub(super) fn new(t: Transport, p: &Params) -> Result<Self, &'static str> {
        let wanted = F_SEG_MAX
            | F_RO
            | F_BLK_SIZE
            | F_FLUSH
            | if p.indirect {
                virtio::F_INDIRECT_DESC
            } else {
                0
            };
        let features = t.init(wanted)?;
        if p.indirect && features & virtio::F_INDIRECT_DESC == 0 {
            return Err("blk: device does not offer INDIRECT_DESC");
        }
        let capacity = t.config64(CFG_CAPACITY);
        let seg_max = if features & F_SEG_MAX != 0 {
            t.config32(CFG_SEG_MAX)
        } else {
            u32::MAX
        };
        let q = t.setup_queue(0, queue::MAX_SIZE)?;
        t.driver_ok()?;
        // Header and status take two descriptors of a chain (or of an indirect table,
        // which may not be longer than the queue either).
        let max_segs = seg_max.min(u32::from(q.size()) - 2);
        let max_data = u64::from(max_segs) * u64::from(p.seg);
        let req = (u64::from(p.req).min(max_data) / SECTOR * SECTOR) as u32;
        if req == 0 {
            return Err("blk: blk.seg too small for one sector within seg_max");
        }
        let depth = p.depth as u64;
        let meta = dma::alloc(depth * META_SIZE, META_SIZE)?;
        let data = dma::alloc(depth * u64::from(req), 4096)?;
        let tables = if p.indirect {
            dma::alloc(depth * MAX_CHAIN as u64 * DESC_SIZE, 4096)?
        } else {
            0
        };
        Ok(Self {
            t,
            q,
            features,
            capacity,
            seg: p.seg,
            req,
            depth: p.depth,
            indirect: p.indirect,
            timeout_ms: p.timeout_ms,
            meta,
            data,
            tables,
            head_slot: [0; MAX_CHAIN],
            done: [None; MAX_DEPTH],
        })
    }

    fn data_addr(&self, slot: usize) -> u64 {
        self.data + slot as u64 * u64::from(self.req)
    }

    fn status_addr(&self, slot: usize) -> u64 {
        self.meta + slot as u64 * META_SIZE + 16
    }

    /// The data buffer of an idle slot.
    pub(super) fn buf(&mut self, slot: usize, len: u32) -> &mut [u8] {
        debug_assert!(len <= self.req);
        // SAFETY: the slot's buffer is inside the DMA area allocated in `new`, and callers
        // only use it while the slot's request is not on the ring (before submission or
        // after the device returned it); &mut self keeps it unique.
        unsafe { dma::slice_mut(self.data_addr(slot), len as usize) }
    }

    /// Descriptors a request with `len` data bytes takes from the ring.
    pub(super) fn descs_needed(&self, len: u32) -> u16 {
        if self.indirect {
            1
        } else {
            (2 + len.div_ceil(self.seg)) as u16
        }
    }

    /// Puts the request for `slot` on the ring (without notifying).
    pub(super) fn submit(
        &mut self,
        slot: usize,
        kind: u32,
        sector: u64,
        len: u32,
    ) -> Result<(), &'static str> {
        let hdr = self.meta + slot as u64 * META_SIZE;
        // SAFETY: the slot's header and status byte are DMA memory of this driver, not on
        // the ring while the slot is idle.
        unsafe {
            write_volatile(hdr as *mut u32, kind);
            write_volatile((hdr + 4) as *mut u32, 0);
            write_volatile((hdr + 8) as *mut u64, sector);
            write_volatile(self.status_addr(slot) as *mut u8, S_PENDING);
        }
        let mut bufs = [Buf::default(); MAX_CHAIN];
        let mut n = 0;
        bufs[n] = Buf::read(hdr, 16);
        n += 1;
        let data = self.data_addr(slot);
        let mut off = 0;
        while off < len {
            let l = self.seg.min(len - off);
            bufs[n] = Buf {
                addr: data + u64::from(off),
                len: l,
                write: kind != T_OUT,
            };
            n += 1;
            off += l;
        }
        bufs[n] = Buf::write(self.status_addr(slot), 1);
        n += 1;
        let head = if self.indirect {
            let table = self.tables + slot as u64 * MAX_CHAIN as u64 * DESC_SIZE;
            self.q.add_indirect(table, &bufs[..n])?
        } else {
            self.q.add(&bufs[..n])?
        };
        self.head_slot[usize::from(head)] = slot as u8;
        self.done[slot] = None;
        Ok(())
    }

    /// Collects one completion if there is one.
    fn reap(&mut self) -> Result<bool, &'static str> {
        match self.q.pop_used()? {
            Some((head, len)) => {
                let slot = usize::from(self.head_slot[usize::from(head)]);
                self.done[slot] = Some(len);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Waits for `slot`'s request; returns its status byte and used length.
    pub(super) fn wait(&mut self, slot: usize) -> Result<(u8, u32), &'static str> {
        let deadline = Deadline::after_ms(self.timeout_ms);
        loop {
            if let Some(len) = self.done[slot] {
                // SAFETY: the device returned the request, so the status byte is ours.
                let status = unsafe { read_volatile(self.status_addr(slot) as *const u8) };
                return Ok((status, len));
            }
            if !self.reap()? {
                if deadline.passed() {
                    let mut l = Line::new();
                    l.str("PROBE-VIRTIO: timeout dev=")
                        .hex(self.t.slot.base)
                        .str(" irq=")
                        .dec(self.t.slot.irq)
                        .str(" status=")
                        .hex(u64::from(self.t.status()))
                        .str(" in_flight=")
                        .dec(self.q.in_flight() as u64);
                    serial::println(&mut l);
                    return Err("virtio: timeout waiting for the device (used ring)");
                }
                core::hint::spin_loop();
            }
        }
    }

    /// One request on its own (nothing else in flight); `pattern` fills the data first.
    /// Returns the status byte and the used length.
    fn request(
        &mut self,
        kind: u32,
        sector: u64,
        len: u32,
        pattern: Option<u64>,
    ) -> Result<(u8, u32), &'static str> {
        if let Some(seed) = pattern {
            pattern_fill(seed, 0, self.buf(0, len));
        }
        self.submit(0, kind, sector, len)?;
        self.q.kick();
        self.wait(0)
    }

    /// Reads or writes `count` sectors from `sector` with up to `depth` requests in
    /// flight. `f(offset, buf)` fills each buffer before a write, or checks it after a
    /// read, in disk order (`offset` counts bytes from `sector`).
    pub(super) fn stream(
        &mut self,
        kind: u32,
        sector: u64,
        count: u64,
        f: &mut BufFn,
    ) -> Result<(), &'static str> {
        let end = sector
            .checked_add(count)
            .ok_or("blk: sector range overflows")?;
        let per_req = u64::from(self.req) / SECTOR;
        let mut next = sector;
        let (mut submitted, mut completed) = (0usize, 0usize);
        let mut starts = [(0u64, 0u32); MAX_DEPTH];
        loop {
            let mut added = false;
            while next < end && submitted - completed < self.depth {
                let len = ((end - next).min(per_req) * SECTOR) as u32;
                if self.q.num_free() < self.descs_needed(len) {
                    break;
                }
                let slot = submitted % self.depth;
                if kind == T_OUT {
                    let off = (next - sector) * SECTOR;
                    f(off, self.buf(slot, len))?;
                }
                self.submit(slot, kind, next, len)?;
                starts[slot] = (next, len);
                next += u64::from(len) / SECTOR;
                submitted += 1;
                added = true;
            }
            if added {
                self.q.kick();
            }
            if completed == submitted {
                return Ok(());
            }
            let slot = completed % self.depth;
            let (status, used) = self.wait(slot)?;
            let (start, len) = starts[slot];
            if status != S_OK {
                let mut l = Line::new();
                l.str("PROBE-BLK: request failed type=")
                    .dec(u64::from(kind))
                    .str(" sector=")
                    .dec(start)
                    .str(" status=")
                    .dec(u64::from(status));
                serial::println(&mut l);
                return Err("blk: request failed");
            }
            if kind == T_IN {
                if used != len + 1 {
                    return Err("blk: used length of a read is not data + status");
                }
                f((start - sector) * SECTOR, self.buf(slot, len))?;
            }
            completed += 1;
        }
    }
}

/// Fills or checks one request's data buffer: `(offset in the stream, bytes)`.
type BufFn<'a> = dyn FnMut(u64, &mut [u8]) -> Result<(), &'static str> + 'a;

/// A `[DISK:]N:N...` value with `n` fields after the optional disk number.
fn disk_op<const N: usize>(v: &[u8]) -> Option<(u64, [u64; N])> {
    let mut f = [0u64; 8];
    let got = parse_fields(v, &mut f[..N + 1])?;
    let mut out = [0u64; N];
    if got == N {
        out.copy_from_slice(&f[..N]);
        Some((0, out))
    } else if got == N + 1 {
        out.copy_from_slice(&f[1..N + 1]);
        Some((f[0], out))
    } else {
        None
    }
}

fn status_field(l: &mut Line, key: &str, s: u8) {
    l.str(" ").str(key).str("=").dec(u64::from(s));
}

fn run_disk(c: &Cmdline, p: &Params, disk: u64, t: Transport) -> Outcome {
    let mut b = Blk::new(t, p)?;
    let ro = b.features & F_RO != 0;
    let cap = b.capacity;
    let mut l = Line::new();
    l.str("PROBE-BLK: disk=")
        .dec(disk)
        .str(" capacity=")
        .dec(cap)
        .str(" ro=")
        .flag(ro);
    let mut failure: Option<&'static str> = None;

    let (id_status, _) = b.request(T_GET_ID, 0, ID_BYTES, None)?;
    if id_status == S_OK {
        let id = b.buf(0, ID_BYTES);
        let n = id.iter().position(|&c| c == 0).unwrap_or(id.len());
        l.str(" id=").bytes(&id[..n]);
    } else {
        status_field(&mut l, "id_status", id_status);
        failure = failure.or(Some("blk: GET_ID failed"));
    }

    let mut writes = 0;
    for v in c.values("blk.write") {
        let (d, [sector, count, seed]) = disk_op::<3>(v).ok_or("bad blk.write value")?;
        if d == disk {
            b.stream(T_OUT, sector, count, &mut |off, buf| {
                pattern_fill(seed, off, buf);
                Ok(())
            })?;
            writes += 1;
        }
    }
    l.str(" writes=").dec(writes);
    if b.features & F_FLUSH != 0 {
        let (s, _) = b.request(T_FLUSH, 0, 0, None)?;
        status_field(&mut l, "flush", s);
        if s != S_OK {
            failure = failure.or(Some("blk: flush failed"));
        }
    }
    for v in c.values("blk.write") {
        let (d, [sector, count, seed]) = disk_op::<3>(v).ok_or("bad blk.write value")?;
        if d == disk {
            b.stream(
                T_IN,
                sector,
                count,
                &mut |off, buf| match pattern_mismatch(seed, off, buf) {
                    None => Ok(()),
                    Some(i) => {
                        let mut m = Line::new();
                        m.str("PROBE-BLK: mismatch disk=")
                            .dec(disk)
                            .str(" byte=")
                            .dec(sector * SECTOR + off + i as u64);
                        serial::println(&mut m);
                        Err("blk: read-back differs from what was written")
                    }
                },
            )?;
        }
    }

    if ro {
        let (s, _) = b.request(T_OUT, 0, SECTOR as u32, Some(0x5a))?;
        status_field(&mut l, "ro_write_status", s);
        if s == S_OK {
            failure = failure.or(Some("blk: write to a read-only disk succeeded"));
        }
    }
    // Two sectors starting at the last one: half inside, half beyond the end.
    let last = cap.saturating_sub(1);
    let (s, _) = b.request(T_IN, last, 2 * SECTOR as u32, None)?;
    status_field(&mut l, "eod_status", s);
    let mut beyond_ok = s == S_OK;
    if !ro {
        let (s, _) = b.request(T_OUT, last, 2 * SECTOR as u32, Some(0xe0d))?;
        status_field(&mut l, "eod_write_status", s);
        beyond_ok |= s == S_OK;
    }
    // A sector number whose byte offset overflows 64 bits.
    let (s, _) = b.request(T_IN, u64::MAX, SECTOR as u32, None)?;
    status_field(&mut l, "far_status", s);
    beyond_ok |= s == S_OK;
    if beyond_ok {
        failure = failure.or(Some("blk: request beyond the end of the disk succeeded"));
    }

    let (sum_start, sum_count) = match c.values("blk.sum").find_map(|v| match disk_op::<2>(v) {
        Some((d, r)) if d == disk => Some(Some(r)),
        Some(_) => None,
        None => Some(None),
    }) {
        None => (0, cap),
        Some(Some([s, n])) => (s, n),
        Some(None) => return Err("bad blk.sum value"),
    };
    let mut fnv = Fnv::new();
    b.stream(T_IN, sum_start, sum_count, &mut |_, buf| {
        fnv.update(buf);
        Ok(())
    })?;
    l.str(" sum=").hex(fnv.value());
    serial::println(&mut l);

    if b.t.needs_reset() {
        return Err("blk: device asks for a reset");
    }
    // Reset must release the queue; the status must read 0 again.
    b.t.reset()?;
    failure.map_or(Ok(()), Err)
}

pub fn run(ctx: &Ctx) -> Outcome {
    let c = &ctx.cmdline;
    let p = Params::parse(c)?;
    let mut disks = 0;
    while let Some(t) = virtio::find(c, virtio::ID_BLOCK, disks as usize) {
        run_disk(c, &p, disks, t)?;
        disks += 1;
    }
    if disks == 0 {
        return Err("no virtio-blk device on the command line");
    }
    match c.number("blk.disks") {
        Some(want) if want != disks => Err("unexpected number of virtio-blk devices"),
        _ => Ok(()),
    }
}
