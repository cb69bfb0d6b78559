//! The seed corpus: small inputs that encode well-formed driver behaviour (valid requests,
//! complete bring-ups), so fuzzing starts from deep states instead of rediscovering the
//! protocol. `corpus/<target>/seed-*` is exactly what [`all`] returns; the tests below check
//! that each seed still does what its name says, and regenerate the files with
//! `CAPSA_UPDATE_SEEDS=1 cargo test`.

use virtio_bindings::virtio_blk as vb;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

use crate::blk::{self, Header};
use crate::mmio;

/// A guest RAM image under construction.
#[derive(Default)]
pub struct Image(Vec<u8>);

impl Image {
    pub fn put(&mut self, addr: u64, bytes: &[u8]) -> &mut Self {
        let addr = addr as usize;
        if self.0.len() < addr + bytes.len() {
            self.0.resize(addr + bytes.len(), 0);
        }
        self.0[addr..addr + bytes.len()].copy_from_slice(bytes);
        self
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// One split-ring descriptor as the driver writes it.
#[derive(Clone, Copy, Debug)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

impl Desc {
    pub fn encode(&self) -> [u8; 16] {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&self.addr.to_le_bytes());
        d[8..12].copy_from_slice(&self.len.to_le_bytes());
        d[12..14].copy_from_slice(&self.flags.to_le_bytes());
        d[14..16].copy_from_slice(&self.next.to_le_bytes());
        d
    }
}

const W: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

/// Buffer descriptors `(addr, len, device_writable)` linked into one chain occupying table
/// slots `first..`.
pub fn chain(first: u16, bufs: &[(u64, u32, bool)]) -> Vec<Desc> {
    bufs.iter()
        .enumerate()
        .map(|(i, &(addr, len, writable))| {
            let last = i + 1 == bufs.len();
            Desc {
                addr,
                len,
                flags: if writable { W } else { 0 } | if last { 0 } else { NEXT },
                next: if last { 0 } else { first + i as u16 + 1 },
            }
        })
        .collect()
}

/// Where the blk seeds put their ring (queue size 16) and buffers.
pub mod layout {
    pub const QUEUE_LOG2: u8 = 4;
    pub const DESC: u64 = 0x100;
    pub const AVAIL: u64 = 0x200;
    pub const USED: u64 = 0x240;
    /// Request headers, 16 bytes apart.
    pub const HDR: u64 = 0x300;
    /// Status bytes, one per request.
    pub const STATUS: u64 = 0x3c0;
    /// Discard segments and the indirect table.
    pub const AUX: u64 = 0x3d0;
    /// Data buffers (sectors), past the image: guest RAM there starts out zero.
    pub const DATA: u64 = 0x1000;
}

/// A virtio-blk driver writing requests into an [`Image`].
pub struct BlkSeed {
    pub flags: u8,
    pub image: Image,
    descs: Vec<Desc>,
    heads: Vec<u16>,
}

impl BlkSeed {
    pub fn new(flags: u8) -> Self {
        BlkSeed {
            flags,
            image: Image::default(),
            descs: Vec::new(),
            heads: Vec::new(),
        }
    }

    /// Writes the 16-byte request header of request `n`; returns its address.
    pub fn header(&mut self, n: usize, req_type: u32, sector: u64) -> u64 {
        let addr = layout::HDR + 16 * n as u64;
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&req_type.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.image.put(addr, &h);
        addr
    }

    /// Address of request `n`'s status byte, pre-set to 0xff so a test sees it change.
    pub fn status(&mut self, n: usize) -> u64 {
        let addr = layout::STATUS + n as u64;
        self.image.put(addr, &[0xff]);
        addr
    }

    /// Adds a chain of buffers to the table and the available ring.
    pub fn add(&mut self, bufs: &[(u64, u32, bool)]) {
        let first = self.descs.len() as u16;
        self.descs.extend(chain(first, bufs));
        self.heads.push(first);
    }

    /// Adds a one-descriptor chain whose buffers live in an indirect table at `table`.
    pub fn add_indirect(&mut self, table: u64, bufs: &[(u64, u32, bool)]) {
        let descs = chain(0, bufs);
        for (i, d) in descs.iter().enumerate() {
            self.image.put(table + 16 * i as u64, &d.encode());
        }
        let first = self.descs.len() as u16;
        self.descs.push(Desc {
            addr: table,
            len: 16 * descs.len() as u32,
            flags: INDIRECT,
            next: 0,
        });
        self.heads.push(first);
    }

    /// A complete fuzz input: header, then the RAM image with the rings filled in.
    pub fn encode(mut self) -> Vec<u8> {
        for (i, d) in self.descs.iter().enumerate() {
            self.image.put(layout::DESC + 16 * i as u64, &d.encode());
        }
        // Available ring: flags 0, idx, ring entries, used_event 0 (interrupt after the first).
        self.image
            .put(layout::AVAIL + 2, &(self.heads.len() as u16).to_le_bytes());
        for (i, h) in self.heads.iter().enumerate() {
            self.image
                .put(layout::AVAIL + 4 + 2 * i as u64, &h.to_le_bytes());
        }
        let header = Header {
            flags: self.flags,
            queue_size: layout::QUEUE_LOG2,
            desc: layout::DESC as u32,
            driver: layout::AVAIL as u32,
            device: layout::USED as u32,
        };
        let mut out = header.encode().to_vec();
        out.extend_from_slice(self.image.bytes());
        out
    }
}

const SECTOR: u32 = 512;
const ALL_BLK_FEATURES: u8 =
    blk::F_FLUSH | blk::F_DISCARD | blk::F_WRITE_ZEROES | blk::F_INDIRECT | blk::F_EVENT_IDX;

fn blk_read() -> Vec<u8> {
    let mut s = BlkSeed::new(blk::F_FLUSH);
    let h = s.header(0, vb::VIRTIO_BLK_T_IN, 1);
    let st = s.status(0);
    s.add(&[
        (h, 16, false),
        (layout::DATA, 2 * SECTOR, true),
        (st, 1, true),
    ]);
    s.encode()
}

fn blk_write() -> Vec<u8> {
    // No FLUSH negotiated: the device must write through.
    let mut s = BlkSeed::new(0);
    let h = s.header(0, vb::VIRTIO_BLK_T_OUT, 3);
    let st = s.status(0);
    s.add(&[(h, 16, false), (layout::DATA, SECTOR, false), (st, 1, true)]);
    s.encode()
}

/// One of each request type, plus an unsupported one, in a single ring.
fn blk_mixed() -> Vec<u8> {
    let mut s = BlkSeed::new(ALL_BLK_FEATURES & !blk::F_EVENT_IDX);
    let h = s.header(0, vb::VIRTIO_BLK_T_FLUSH, 0);
    let st = s.status(0);
    s.add(&[(h, 16, false), (st, 1, true)]);
    let h = s.header(1, vb::VIRTIO_BLK_T_GET_ID, 0);
    let st = s.status(1);
    s.add(&[
        (h, 16, false),
        (layout::DATA, vb::VIRTIO_BLK_ID_BYTES, true),
        (st, 1, true),
    ]);
    let h = s.header(2, vb::VIRTIO_BLK_T_DISCARD, 0);
    let st = s.status(2);
    let seg = discard_segment(8, 4, 0);
    s.image.put(layout::AUX, &seg);
    s.add(&[(h, 16, false), (layout::AUX, 16, false), (st, 1, true)]);
    let h = s.header(3, vb::VIRTIO_BLK_T_WRITE_ZEROES, 0);
    let st = s.status(3);
    let seg = discard_segment(12, 2, vb::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    s.image.put(layout::AUX + 16, &seg);
    s.add(&[(h, 16, false), (layout::AUX + 16, 16, false), (st, 1, true)]);
    let h = s.header(4, 0x7f, 0);
    let st = s.status(4);
    s.add(&[(h, 16, false), (st, 1, true)]);
    s.encode()
}

fn discard_segment(sector: u64, num: u32, flags: u32) -> [u8; 16] {
    let mut seg = [0u8; 16];
    seg[0..8].copy_from_slice(&sector.to_le_bytes());
    seg[8..12].copy_from_slice(&num.to_le_bytes());
    seg[12..16].copy_from_slice(&flags.to_le_bytes());
    seg
}

/// A read whose header is split over two descriptors and whose last data descriptor also
/// holds the status byte, through an indirect table, with EVENT_IDX.
fn blk_indirect_split() -> Vec<u8> {
    let mut s = BlkSeed::new(ALL_BLK_FEATURES);
    let h = s.header(0, vb::VIRTIO_BLK_T_IN, 0);
    s.add_indirect(
        layout::AUX,
        &[
            (h, 5, false),
            (h + 5, 11, false),
            (layout::DATA, SECTOR + 1, true),
        ],
    );
    s.encode()
}

/// Writes on a read-only disk, and a read crossing the end of the disk, get IOERR; then the
/// device is reset and the same ring replayed.
fn blk_errors_replay() -> Vec<u8> {
    let mut s = BlkSeed::new(blk::F_READ_ONLY | blk::F_RESET_REPLAY | blk::F_FLUSH);
    let h = s.header(0, vb::VIRTIO_BLK_T_OUT, 0);
    let st = s.status(0);
    s.add(&[(h, 16, false), (layout::DATA, SECTOR, false), (st, 1, true)]);
    let h = s.header(1, vb::VIRTIO_BLK_T_IN, crate::DISK_SECTORS - 1);
    let st = s.status(1);
    s.add(&[
        (h, 16, false),
        (layout::DATA, 2 * SECTOR, true),
        (st, 1, true),
    ]);
    s.encode()
}

/// Builds an op stream for the virtio_mmio target.
#[derive(Default)]
pub struct MmioSeed(Vec<u8>);

impl MmioSeed {
    pub fn device(kind: u8, max_size_log2: &[u8]) -> Self {
        let mut s = MmioSeed(vec![kind]);
        s.0.extend_from_slice(max_size_log2);
        s
    }

    pub fn write32(&mut self, offset: u64, v: u32) -> &mut Self {
        self.0.push(mmio::OP_WRITE32);
        self.0.push((offset / 4) as u8);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn read32(&mut self, offset: u64) -> &mut Self {
        self.0
            .extend_from_slice(&[mmio::OP_READ32, (offset / 4) as u8]);
        self
    }

    pub fn read_raw(&mut self, offset: u16, len: u8) -> &mut Self {
        self.0.push(mmio::OP_READ_RAW);
        self.0.extend_from_slice(&offset.to_le_bytes());
        self.0.push(len);
        self
    }

    pub fn write_raw(&mut self, offset: u16, bytes: &[u8]) -> &mut Self {
        self.0.push(mmio::OP_WRITE_RAW);
        self.0.extend_from_slice(&offset.to_le_bytes());
        self.0.push(bytes.len() as u8);
        self.0.extend_from_slice(bytes);
        self
    }

    pub fn process(&mut self, queue: u8) -> &mut Self {
        self.0.extend_from_slice(&[mmio::OP_PROCESS, queue]);
        self
    }

    pub fn mem(&mut self, addr: u16, bytes: &[u8]) -> &mut Self {
        for (i, part) in bytes.chunks(255).enumerate() {
            self.0.push(mmio::OP_MEM_WRITE);
            self.0
                .extend_from_slice(&(addr + 255 * i as u16).to_le_bytes());
            self.0.push(part.len() as u8);
            self.0.extend_from_slice(part);
        }
        self
    }

    pub fn config_changed(&mut self) -> &mut Self {
        self.0.push(mmio::OP_CONFIG_CHANGED);
        self
    }

    pub fn bring_up(&mut self, features: u32, queues: &[(u8, u8)]) -> &mut Self {
        self.0.push(mmio::OP_BRING_UP);
        self.0.extend_from_slice(&features.to_le_bytes());
        for &(page, log2) in queues {
            self.0.extend_from_slice(&[page, log2]);
        }
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.0.clone()
    }
}

use devices::virtio::mmio::regs;
use devices::virtio::status::{ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK};

const PROBE: u8 = 2;

/// The probe device with two queues (max 16 and 256) brought up with op 7; a chain is made
/// available on queue 0 (rings at 0x100) and processed; interrupts are read and acknowledged;
/// config space is read and written; the device is reset.
fn mmio_probe_io() -> Vec<u8> {
    let mut s = MmioSeed::device(PROBE | 1 << 2, &[4, 8]);
    // Queue 0 of size 16 at 0x100: avail at 0x200, used at 0x228.
    let descs: Vec<u8> = chain(0, &[(0x800, 8, false), (0x900, 64, true)])
        .iter()
        .flat_map(|d| d.encode())
        .collect();
    s.mem(0x100, &descs);
    s.mem(0x200, &[0, 0, 1, 0, 0, 0]);
    s.bring_up(1 << mmio::PROBE_FEATURE, &[(1, 4), (0x10, 8)]);
    s.read32(regs::STATUS)
        .read32(regs::INTERRUPT_STATUS)
        .process(0)
        .read32(regs::INTERRUPT_STATUS)
        .write32(regs::INTERRUPT_ACK, 1)
        .read_raw(0x100, 4)
        .write_raw(0x104, &[1, 2])
        .config_changed()
        .read32(regs::CONFIG_GENERATION)
        .write32(regs::STATUS, 0)
        .read32(regs::STATUS);
    s.bytes()
}

/// virtio-blk brought up register by register exactly like Linux does (feature words,
/// FEATURES_OK check, config reads, queue 0 setup, DRIVER_OK), then a notify.
fn mmio_blk_linux_probe() -> Vec<u8> {
    let mut s = MmioSeed::device(0, &[]);
    s.read32(regs::MAGIC_VALUE)
        .read32(regs::VERSION)
        .read32(regs::DEVICE_ID)
        .write32(regs::STATUS, 0)
        .write32(regs::STATUS, ACKNOWLEDGE)
        .write32(regs::STATUS, ACKNOWLEDGE | DRIVER);
    for sel in 0..2 {
        s.write32(regs::DEVICE_FEATURES_SEL, sel)
            .read32(regs::DEVICE_FEATURES);
    }
    // VERSION_1 (bit 32), FLUSH (bit 9).
    s.write32(regs::DRIVER_FEATURES_SEL, 0)
        .write32(regs::DRIVER_FEATURES, 1 << vb::VIRTIO_BLK_F_FLUSH)
        .write32(regs::DRIVER_FEATURES_SEL, 1)
        .write32(regs::DRIVER_FEATURES, 1)
        .write32(regs::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK)
        .read32(regs::STATUS)
        .read_raw(0x100, 8)
        .read_raw(0x10c, 4)
        .read32(regs::CONFIG_GENERATION)
        .write32(regs::QUEUE_SEL, 0)
        .read32(regs::QUEUE_READY)
        .read32(regs::QUEUE_NUM_MAX)
        .write32(regs::QUEUE_NUM, 8)
        .write32(regs::QUEUE_DESC_LOW, 0x100)
        .write32(regs::QUEUE_DESC_HIGH, 0)
        .write32(regs::QUEUE_DRIVER_LOW, 0x200)
        .write32(regs::QUEUE_DRIVER_HIGH, 0)
        .write32(regs::QUEUE_DEVICE_LOW, 0x240)
        .write32(regs::QUEUE_DEVICE_HIGH, 0)
        .write32(regs::QUEUE_READY, 1)
        .write32(regs::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK)
        .read32(regs::STATUS);
    // A GET_ID request (header at 0x300, id into 0x400, status at 0x3c0), then a notify.
    let mut hdr = [0u8; 16];
    hdr[..4].copy_from_slice(&vb::VIRTIO_BLK_T_GET_ID.to_le_bytes());
    let descs: Vec<u8> = chain(
        0,
        &[(0x300, 16, false), (0x400, 20, true), (0x3c0, 1, true)],
    )
    .iter()
    .flat_map(|d| d.encode())
    .collect();
    s.mem(0x300, &hdr)
        .mem(0x100, &descs)
        .mem(0x202, &[1, 0])
        .write32(regs::QUEUE_NOTIFY, 0)
        .process(0)
        .read32(regs::INTERRUPT_STATUS)
        .write32(regs::INTERRUPT_ACK, 1)
        .write32(regs::STATUS, 0);
    s.bytes()
}

/// Protocol violations a driver might commit: DRIVER_OK before FEATURES_OK, unoffered
/// features, queue writes after DRIVER_OK, odd widths, a bad queue size, notifies for
/// missing queues; on a read-only disk.
fn mmio_blk_ro_misuse() -> Vec<u8> {
    let mut s = MmioSeed::device(1, &[]);
    s.write32(regs::STATUS, ACKNOWLEDGE | DRIVER | DRIVER_OK)
        .write32(regs::STATUS, ACKNOWLEDGE)
        .write32(regs::STATUS, ACKNOWLEDGE | DRIVER)
        .write32(regs::DRIVER_FEATURES_SEL, 2)
        .write32(regs::DRIVER_FEATURES, 1)
        .write32(regs::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK)
        .read32(regs::STATUS)
        .write32(regs::STATUS, 0)
        .bring_up(1 << vb::VIRTIO_BLK_F_RO, &[(1, 3)])
        .write32(regs::QUEUE_NUM, 3)
        .write_raw(regs::STATUS as u16, &[0, 0])
        .read_raw(0x13, 3)
        .read_raw(0x1ff, 8)
        .write32(regs::QUEUE_NOTIFY, 5)
        .process(1)
        .write32(
            regs::STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK | 0x80,
        )
        .write32(regs::STATUS, 0)
        .write32(regs::QUEUE_SEL, 0)
        .write32(regs::QUEUE_NUM, 3)
        .write32(regs::QUEUE_READY, 1);
    s.bytes()
}

/// Every seed: (target, file name, input).
pub fn all() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    vec![
        ("virtio_blk", "read", blk_read()),
        ("virtio_blk", "write", blk_write()),
        ("virtio_blk", "mixed", blk_mixed()),
        ("virtio_blk", "indirect-split", blk_indirect_split()),
        ("virtio_blk", "errors-replay", blk_errors_replay()),
        ("virtio_mmio", "probe-io", mmio_probe_io()),
        ("virtio_mmio", "blk-linux-probe", mmio_blk_linux_probe()),
        ("virtio_mmio", "blk-ro-misuse", mmio_blk_ro_misuse()),
    ]
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::disk_pattern;

    fn status(out: &blk::Outcome, n: usize) -> u8 {
        out.mem
            .read_obj(GuestAddress(layout::STATUS + n as u64))
            .unwrap()
    }

    fn used_idx(out: &blk::Outcome) -> u16 {
        out.mem.read_obj(GuestAddress(layout::USED + 2)).unwrap()
    }

    fn ram(out: &blk::Outcome, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        out.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn sectors(first: usize, n: usize) -> Vec<u8> {
        disk_pattern()[first * 512..(first + n) * 512].to_vec()
    }

    const OK: u8 = vb::VIRTIO_BLK_S_OK as u8;
    const IOERR: u8 = vb::VIRTIO_BLK_S_IOERR as u8;
    const UNSUPP: u8 = vb::VIRTIO_BLK_S_UNSUPP as u8;

    #[test]
    fn blk_read_seed_reads_sectors() {
        let out = blk::run(&blk_read()).unwrap();
        assert!(out.activated);
        assert_eq!(used_idx(&out), 1);
        assert_eq!(status(&out, 0), OK);
        assert_eq!(ram(&out, layout::DATA, 1024), sectors(1, 2));
    }

    #[test]
    fn blk_write_seed_writes_zeros() {
        let out = blk::run(&blk_write()).unwrap();
        assert_eq!(status(&out, 0), OK);
        let mut want = disk_pattern();
        want[3 * 512..4 * 512].fill(0);
        assert!(out.disk == want);
    }

    #[test]
    fn blk_mixed_seed_runs_every_type() {
        let out = blk::run(&blk_mixed()).unwrap();
        assert_eq!(used_idx(&out), 5);
        let statuses: Vec<u8> = (0..5).map(|n| status(&out, n)).collect();
        assert_eq!(statuses, [OK, OK, OK, OK, UNSUPP]);
        assert_eq!(&ram(&out, layout::DATA, 9), b"fuzz-disk");
        let mut want = disk_pattern();
        want[8 * 512..12 * 512].fill(0);
        want[12 * 512..14 * 512].fill(0);
        assert!(out.disk == want);
    }

    #[test]
    fn blk_indirect_split_seed_reads_with_status_in_data_buffer() {
        let out = blk::run(&blk_indirect_split()).unwrap();
        assert_eq!(used_idx(&out), 1);
        assert_eq!(ram(&out, layout::DATA, 512), sectors(0, 1));
        assert_eq!(ram(&out, layout::DATA + 512, 1), [OK]);
    }

    #[test]
    fn blk_errors_seed_fails_requests_and_replays() {
        let out = blk::run(&blk_errors_replay()).unwrap();
        assert_eq!(status(&out, 0), IOERR);
        assert_eq!(status(&out, 1), IOERR);
        // Both requests were processed twice: once per activation.
        assert_eq!(used_idx(&out), 2);
        assert!(out.disk == disk_pattern());
    }

    fn mmio_ram(out: &mmio::Outcome, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        out.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    #[test]
    fn mmio_probe_seed_does_io() {
        let out = mmio::run(&mmio_probe_io());
        assert!(out.was_active);
        // Used ring of queue 0 (at 0x228): one entry, head 0, 32 bytes written.
        assert_eq!(mmio_ram(&out, 0x22a, 10), [1, 0, 0, 0, 0, 0, 32, 0, 0, 0]);
        assert_eq!(
            mmio_ram(&out, 0x900, 33),
            [[0xa5; 32].as_slice(), &[0]].concat()
        );
    }

    #[test]
    fn mmio_blk_seed_gets_id() {
        let out = mmio::run(&mmio_blk_linux_probe());
        assert!(out.was_active);
        assert_eq!(&mmio_ram(&out, 0x400, 9), b"fuzz-disk");
        assert_eq!(mmio_ram(&out, 0x3c0, 1), [OK]);
    }

    #[test]
    fn mmio_misuse_seed_runs() {
        let out = mmio::run(&mmio_blk_ro_misuse());
        assert!(out.was_active);
    }

    /// The committed corpus is exactly what this module generates.
    #[test]
    fn corpus_matches_generator() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        let update = std::env::var_os("CAPSA_UPDATE_SEEDS").is_some();
        for (target, name, input) in all() {
            let path = root.join(target).join(format!("seed-{name}"));
            if update {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &input).unwrap();
            } else {
                let on_disk = std::fs::read(&path).unwrap_or_default();
                assert!(
                    on_disk == input,
                    "{} is stale: run CAPSA_UPDATE_SEEDS=1 cargo test",
                    path.display()
                );
            }
        }
    }
}
