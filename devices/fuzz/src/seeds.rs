//! The seed corpus: small inputs that encode well-formed driver behaviour (valid requests,
//! complete bring-ups), so fuzzing starts from deep states instead of rediscovering the
//! protocol. `corpus/<target>/seed-*` is exactly what [`all`] returns; the tests below check
//! that each seed still does what its name says, and regenerate the files with
//! `CAPSA_UPDATE_SEEDS=1 cargo test`.

use virtio_bindings::virtio_blk as vb;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

use crate::blk::{self, Header};
use crate::{mmio, vsock};

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

/// A split ring at fixed addresses being filled by a driver, for seeds that place it
/// themselves.
pub struct Ring {
    desc: u64,
    avail: u64,
    descs: Vec<Desc>,
    heads: Vec<u16>,
}

impl Ring {
    pub fn new(desc: u64, avail: u64) -> Self {
        Ring {
            desc,
            avail,
            descs: Vec::new(),
            heads: Vec::new(),
        }
    }

    pub fn add(&mut self, bufs: &[(u64, u32, bool)]) {
        let first = self.descs.len() as u16;
        self.descs.extend(chain(first, bufs));
        self.heads.push(first);
    }

    pub fn write(&self, image: &mut Image) {
        for (i, d) in self.descs.iter().enumerate() {
            image.put(self.desc + 16 * i as u64, &d.encode());
        }
        image.put(self.avail + 2, &(self.heads.len() as u16).to_le_bytes());
        for (i, h) in self.heads.iter().enumerate() {
            image.put(self.avail + 4 + 2 * i as u64, &h.to_le_bytes());
        }
    }
}

/// FUSE request building for the virtio-fs seeds.
pub mod fuse {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const READDIRPLUS: u32 = 44;
    pub const LSEEK: u32 = 46;
    pub const FALLOCATE: u32 = 43;

    pub const IN_HEADER_LEN: usize = 40;
    pub const OUT_HEADER_LEN: usize = 16;
    pub const ROOT: u64 = 1;

    /// A request body under construction.
    #[derive(Default)]
    pub struct Body(pub Vec<u8>);

    impl Body {
        pub fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        pub fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        /// A NUL-terminated string.
        pub fn s(mut self, v: &str) -> Self {
            self.0.extend_from_slice(v.as_bytes());
            self.0.push(0);
            self
        }
        pub fn bytes(mut self, v: &[u8]) -> Self {
            self.0.extend_from_slice(v);
            self
        }
        pub fn zeros(mut self, n: usize) -> Self {
            self.0.resize(self.0.len() + n, 0);
            self
        }
    }

    pub fn body() -> Body {
        Body::default()
    }

    /// A whole request: `fuse_in_header` (length filled in, uid/gid 0) plus body.
    pub fn request(opcode: u32, unique: u64, nodeid: u64, body: Body) -> Vec<u8> {
        let mut v = Vec::with_capacity(IN_HEADER_LEN + body.0.len());
        v.extend_from_slice(&((IN_HEADER_LEN + body.0.len()) as u32).to_le_bytes());
        v.extend_from_slice(&opcode.to_le_bytes());
        v.extend_from_slice(&unique.to_le_bytes());
        v.extend_from_slice(&nodeid.to_le_bytes());
        v.resize(IN_HEADER_LEN, 0);
        v.extend_from_slice(&body.0);
        v
    }

    pub fn init() -> Body {
        body().u32(7).u32(31).u32(0).u32(0)
    }

    /// `fuse_read_in` (also READDIR / READDIRPLUS).
    pub fn read(fh: u64, offset: u64, size: u32) -> Body {
        body().u64(fh).u64(offset).u32(size).zeros(20)
    }

    pub fn write(fh: u64, offset: u64, data: &[u8]) -> Body {
        body()
            .u64(fh)
            .u64(offset)
            .u32(data.len() as u32)
            .u32(0)
            .zeros(16)
            .bytes(data)
    }

    pub fn open(flags: u32) -> Body {
        body().u32(flags).u32(0)
    }

    pub fn release(fh: u64) -> Body {
        body().u64(fh).zeros(16)
    }

    /// `fuse_setattr_in` with only `valid`, `size` and `mode` set.
    pub fn setattr(valid: u32, size: u64, mode: u32) -> Body {
        body()
            .u32(valid)
            .u32(0)
            .u64(0)
            .u64(size)
            .zeros(8 + 8 + 8 + 8 + 12)
            .u32(mode)
            .zeros(16)
    }
}

/// A virtio-fs driver: both rings and the requests, with a reply buffer per request.
pub struct FsSeed {
    flags: u8,
    image: Image,
    request: Ring,
    hiprio: Ring,
    /// Next free byte for request bodies.
    next_req: u64,
    replies: usize,
}

/// Packed tightly: the whole image has to stay under libFuzzer's 4 KiB input limit.
pub mod fs_layout {
    /// Request queue of 64 (two descriptors per request), high-priority queue of 4.
    pub const REQUEST_LOG2: u8 = 6;
    pub const HIPRIO_LOG2: u8 = 2;
    pub const REQ_DESC: u64 = 0x000;
    pub const REQ_AVAIL: u64 = 0x400;
    pub const REQ_USED: u64 = 0x488;
    pub const HI_DESC: u64 = 0x690;
    pub const HI_AVAIL: u64 = 0x6d0;
    pub const HI_USED: u64 = 0x6e0;
    pub const REQUESTS: u64 = 0x710;
    /// Reply buffers, past the image (zeroed guest RAM).
    pub const REPLIES: u64 = 0x2000;
    pub const REPLY_LEN: u32 = 0x400;
}

impl FsSeed {
    pub fn new(flags: u8) -> Self {
        FsSeed {
            flags,
            image: Image::default(),
            request: Ring::new(fs_layout::REQ_DESC, fs_layout::REQ_AVAIL),
            hiprio: Ring::new(fs_layout::HI_DESC, fs_layout::HI_AVAIL),
            next_req: fs_layout::REQUESTS,
            replies: 0,
        }
    }

    fn put_request(&mut self, req: &[u8]) -> u64 {
        let at = self.next_req;
        self.image.put(at, req);
        self.next_req = (at + req.len() as u64 + 7) & !7;
        at
    }

    /// Queues a request on the request queue; returns where its reply will be.
    pub fn req(&mut self, req: Vec<u8>) -> u64 {
        let at = self.put_request(&req);
        let reply = fs_layout::REPLIES + self.replies as u64 * u64::from(fs_layout::REPLY_LEN);
        self.replies += 1;
        self.request.add(&[
            (at, req.len() as u32, false),
            (reply, fs_layout::REPLY_LEN, true),
        ]);
        reply
    }

    /// Queues a request that gets no reply (FORGET) on the high-priority queue.
    pub fn hiprio(&mut self, req: Vec<u8>) {
        let at = self.put_request(&req);
        self.hiprio.add(&[(at, req.len() as u32, false)]);
    }

    pub fn encode(mut self) -> Vec<u8> {
        self.request.write(&mut self.image);
        self.hiprio.write(&mut self.image);
        let rings = |d: u64, a: u64, u: u64| crate::fs::Rings {
            desc: d as u32,
            driver: a as u32,
            device: u as u32,
        };
        let header = crate::fs::Header {
            flags: self.flags,
            request_size: fs_layout::REQUEST_LOG2,
            hiprio_size: fs_layout::HIPRIO_LOG2,
            request: rings(
                fs_layout::REQ_DESC,
                fs_layout::REQ_AVAIL,
                fs_layout::REQ_USED,
            ),
            hiprio: rings(fs_layout::HI_DESC, fs_layout::HI_AVAIL, fs_layout::HI_USED),
        };
        let mut out = header.encode().to_vec();
        out.extend_from_slice(self.image.bytes());
        out
    }
}

const O_RDWR: u32 = 2;
const FATTR_MODE: u32 = 1;
const FATTR_SIZE: u32 = 8;

/// INIT, then read and write the existing file, then release it; a FORGET on hiprio.
fn fs_file_io() -> Vec<u8> {
    use fuse::*;
    let mut s = FsSeed::new(crate::fs::F_EVENT_IDX);
    s.req(request(INIT, 1, 0, init()));
    s.req(request(LOOKUP, 2, ROOT, body().s("file")));
    s.req(request(GETATTR, 3, 2, body().zeros(16)));
    s.req(request(OPEN, 4, 2, open(O_RDWR)));
    s.req(request(READ, 5, 2, read(1, 0, 64)));
    s.req(request(WRITE, 6, 2, write(1, 6, b"FROM")));
    s.req(request(FLUSH, 7, 2, release(1)));
    s.req(request(FSYNC, 8, 2, body().u64(1).u32(0).u32(0)));
    s.req(request(RELEASE, 9, 2, release(1)));
    s.req(request(STATFS, 10, ROOT, body()));
    // Handle 2; READDIRPLUS looks up every entry (node ids 3 and up).
    s.req(request(OPENDIR, 11, ROOT, open(0)));
    s.req(request(READDIRPLUS, 12, ROOT, read(2, 0, 1024)));
    s.hiprio(request(FORGET, 13, 2, body().u64(1)));
    s.encode()
}

/// Directory work: list, create, rename, link, symlink, xattrs, remove.
fn fs_dir_ops() -> Vec<u8> {
    use fuse::*;
    let mut s = FsSeed::new(crate::fs::F_INDIRECT);
    s.req(request(INIT, 1, 0, init()));
    s.req(request(OPENDIR, 2, ROOT, open(0)));
    // Plain READDIR: READDIRPLUS would hand out node ids for every entry.
    s.req(request(READDIR, 3, ROOT, read(1, 0, 1024)));
    s.req(request(RELEASEDIR, 4, ROOT, release(1)));
    // Node 2.
    s.req(request(
        MKDIR,
        5,
        ROOT,
        body().u32(0o755).u32(0o022).s("newdir"),
    ));
    // Node 3, handle 2.
    s.req(request(
        CREATE,
        6,
        2,
        body().u32(O_RDWR).u32(0o644).u32(0o022).u32(0).s("new"),
    ));
    s.req(request(WRITE, 7, 3, write(2, 0, b"created")));
    s.req(request(RENAME, 8, 2, body().u64(ROOT).s("new").s("moved")));
    s.req(request(LINK, 9, ROOT, body().u64(3).s("hard")));
    // Node 4.
    s.req(request(SYMLINK, 10, ROOT, body().s("sym").s("moved")));
    s.req(request(READLINK, 11, 4, body()));
    s.req(request(
        SETXATTR,
        12,
        3,
        body().u32(3).u32(0).s("trusted.capsa").bytes(b"abc"),
    ));
    s.req(request(
        GETXATTR,
        13,
        3,
        body().u32(64).u32(0).s("trusted.capsa"),
    ));
    s.req(request(LISTXATTR, 14, 3, body().u32(64).u32(0)));
    s.req(request(REMOVEXATTR, 15, 3, body().s("trusted.capsa")));
    s.req(request(
        SETATTR,
        16,
        3,
        setattr(FATTR_MODE | FATTR_SIZE, 3, 0o600),
    ));
    s.req(request(UNLINK, 17, ROOT, body().s("hard")));
    s.req(request(RMDIR, 18, ROOT, body().s("newdir")));
    s.encode()
}

/// Escape attempts: symlinks pointing out of the share, `..`, names with '/', truncating
/// through a symlink, an absolute symlink; plus lseek, fallocate and access.
fn fs_escape() -> Vec<u8> {
    use fuse::*;
    let mut s = FsSeed::new(0);
    s.req(request(INIT, 1, 0, init()));
    // Node 2 is the symlink itself, never its target.
    s.req(request(LOOKUP, 2, ROOT, body().s("link-out")));
    s.req(request(OPEN, 3, 2, open(O_RDWR)));
    s.req(request(SETATTR, 4, 2, setattr(FATTR_SIZE, 0, 0)));
    s.req(request(READLINK, 5, 2, body()));
    // Node 3: the absolute symlink; looking up inside it must fail.
    s.req(request(LOOKUP, 6, ROOT, body().s("link-abs")));
    s.req(request(LOOKUP, 7, 3, body().s("canary")));
    s.req(request(LOOKUP, 8, ROOT, body().s("..")));
    s.req(request(LOOKUP, 9, ROOT, body().s("dir/../../outside")));
    // Node 4: dir; then try to move its entry out via "..".
    s.req(request(LOOKUP, 10, ROOT, body().s("dir")));
    s.req(request(RENAME, 11, 4, body().u64(ROOT).s("inner").s("..")));
    s.req(request(
        CREATE,
        12,
        4,
        body().u32(O_RDWR).u32(0o644).u32(0).u32(0).s("a/b"),
    ));
    s.req(request(OPEN, 13, 1, open(O_RDWR)));
    // Node 5 / handle 1: the real file, then lseek, fallocate, access on it.
    s.req(request(LOOKUP, 14, ROOT, body().s("link-in")));
    s.req(request(LOOKUP, 15, ROOT, body().s("file")));
    s.req(request(OPEN, 16, 6, open(O_RDWR)));
    s.req(request(LSEEK, 17, 6, body().u64(1).u64(4).u32(0).u32(0)));
    s.req(request(
        FALLOCATE,
        18,
        6,
        body().u64(1).u64(0).u64(4096).u32(0).u32(0),
    ));
    s.req(request(ACCESS, 19, 6, body().u32(4).u32(0)));
    s.req(request(READDIR, 20, 4, read(99, 0, 512)));
    s.encode()
}

/// Every mutating request on a read-only share fails.
fn fs_read_only() -> Vec<u8> {
    use fuse::*;
    let mut s = FsSeed::new(crate::fs::F_READ_ONLY);
    s.req(request(INIT, 1, 0, init()));
    s.req(request(LOOKUP, 2, ROOT, body().s("file")));
    s.req(request(OPEN, 3, 2, open(O_RDWR)));
    s.req(request(OPEN, 4, 2, open(0)));
    s.req(request(READ, 5, 2, read(1, 0, 32)));
    s.req(request(WRITE, 6, 2, write(1, 0, b"nope")));
    s.req(request(MKDIR, 7, ROOT, body().u32(0o755).u32(0).s("d")));
    s.req(request(UNLINK, 8, ROOT, body().s("file")));
    s.req(request(SETATTR, 9, 2, setattr(FATTR_SIZE, 0, 0)));
    s.encode()
}

/// Builds an op stream for the virtio_vsock target.
pub struct VsockSeed(Vec<u8>);

/// A tx packet as [`VsockSeed::tx`] encodes it.
#[derive(Clone, Copy)]
pub struct Tx<'a> {
    pub ctl: u8,
    pub op: u8,
    pub src_port: u32,
    pub dst_port: u32,
    pub flags: u8,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
    pub payload: &'a [u8],
}

impl Default for Tx<'_> {
    fn default() -> Self {
        Tx {
            ctl: vsock::TX_KICK,
            op: 0,
            src_port: 5000,
            dst_port: vsock::PEER_PORT,
            flags: 0,
            buf_alloc: 64 * 1024,
            fwd_cnt: 0,
            payload: &[],
        }
    }
}

pub mod vop {
    pub const REQUEST: u8 = 1;
    pub const RESPONSE: u8 = 2;
    pub const RST: u8 = 3;
    pub const SHUTDOWN: u8 = 4;
    pub const RW: u8 = 5;
    pub const CREDIT_UPDATE: u8 = 6;
    pub const CREDIT_REQUEST: u8 = 7;
}

impl VsockSeed {
    pub fn new(event_idx: bool) -> Self {
        VsockSeed(vec![u8::from(event_idx)])
    }

    pub fn tx(&mut self, t: Tx<'_>) -> &mut Self {
        self.0.extend_from_slice(&[vsock::OP_TX, t.ctl, t.op]);
        self.0.extend_from_slice(&t.src_port.to_le_bytes());
        self.0.extend_from_slice(&t.dst_port.to_le_bytes());
        self.0.push(t.flags);
        self.0.extend_from_slice(&t.buf_alloc.to_le_bytes());
        self.0.extend_from_slice(&t.fwd_cnt.to_le_bytes());
        self.0
            .extend_from_slice(&(t.payload.len() as u16).to_le_bytes());
        self.0.push(t.payload.len() as u8);
        self.0.extend_from_slice(t.payload);
        self
    }

    /// Appends the optional fields the previous tx's `ctl` asked for.
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }

    pub fn post_rx(&mut self, ctl: u8, len: u16) -> &mut Self {
        self.0.extend_from_slice(&[vsock::OP_POST_RX, ctl]);
        self.0.extend_from_slice(&len.to_le_bytes());
        self
    }

    pub fn kick(&mut self, q: u8) -> &mut Self {
        self.0.extend_from_slice(&[vsock::OP_KICK, q]);
        self
    }

    pub fn host_connect(&mut self, line: &[u8]) -> &mut Self {
        self.0
            .extend_from_slice(&[vsock::OP_HOST_CONNECT, line.len() as u8]);
        self.0.extend_from_slice(line);
        self
    }

    /// Writes `len` bytes, the first of which are `data`.
    pub fn host_write(&mut self, stream: u8, len: u16, data: &[u8]) -> &mut Self {
        self.0.extend_from_slice(&[vsock::OP_HOST_WRITE, stream]);
        self.0.extend_from_slice(&len.to_le_bytes());
        self.0.push(data.len() as u8);
        self.0.extend_from_slice(data);
        self
    }

    pub fn host_read(&mut self, stream: u8) -> &mut Self {
        self.0.extend_from_slice(&[vsock::OP_HOST_READ, stream]);
        self
    }

    pub fn host_close(&mut self, stream: u8, how: u8) -> &mut Self {
        self.0
            .extend_from_slice(&[vsock::OP_HOST_CLOSE, stream, how]);
        self
    }

    pub fn host_events(&mut self) -> &mut Self {
        self.0.push(vsock::OP_HOST_EVENTS);
        self
    }

    pub fn mem(&mut self, addr: u16, bytes: &[u8]) -> &mut Self {
        self.0.push(vsock::OP_MEM_WRITE);
        self.0.extend_from_slice(&addr.to_le_bytes());
        self.0.push(bytes.len() as u8);
        self.0.extend_from_slice(bytes);
        self
    }

    pub fn reset(&mut self) -> &mut Self {
        self.0.push(vsock::OP_RESET);
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.0.clone()
    }
}

/// The guest connects to the host peer, data flows both ways, credit is requested, the
/// connection is shut down and reset.
fn vsock_guest_connect() -> Vec<u8> {
    let mut s = VsockSeed::new(false);
    let t = Tx::default();
    s.post_rx(vsock::RX_KICK | 3, 512)
        .tx(Tx {
            op: vop::REQUEST,
            ..t
        })
        .host_events()
        .tx(Tx {
            op: vop::RW,
            payload: b"hello host",
            ..t
        })
        .host_read(0)
        .host_write(0, 5, b"world")
        .post_rx(vsock::RX_KICK | vsock::RX_SPLIT | 1, 256)
        .tx(Tx {
            op: vop::CREDIT_REQUEST,
            ..t
        })
        .tx(Tx {
            op: vop::SHUTDOWN,
            flags: 3,
            ..t
        })
        .host_close(0, 0)
        .tx(Tx { op: vop::RST, ..t })
        .reset();
    s.bytes()
}

/// A host client connects with `CONNECT 5000`, the guest accepts, data flows both ways
/// (more than one rx buffer's worth from the host), then the host half-closes and closes.
fn vsock_host_connect() -> Vec<u8> {
    let mut s = VsockSeed::new(true);
    let host_port = 1u32 << 30;
    let t = Tx {
        src_port: 5000,
        dst_port: host_port,
        ..Tx::default()
    };
    s.post_rx(vsock::RX_KICK | 7, 1024)
        .host_connect(b"CONNECT 5000\n")
        .tx(Tx {
            op: vop::RESPONSE,
            ..t
        })
        .host_read(0)
        .host_write(0, 3000, b"from host")
        .tx(Tx {
            op: vop::RW,
            ctl: vsock::TX_KICK | vsock::TX_SPLIT,
            payload: b"from guest",
            ..t
        })
        .host_read(0)
        .tx(Tx {
            op: vop::CREDIT_UPDATE,
            fwd_cnt: 3000,
            ..t
        })
        .post_rx(vsock::RX_KICK | 7, 1024)
        .host_close(0, 1)
        .host_events()
        .host_close(0, 0)
        .host_connect(b"CONNECT 99999999999\n");
    s.bytes()
}

/// Packets the device must refuse or drop: nobody listening, spoofed CIDs, wrong type, a
/// header length that lies, data for no connection, a malformed handshake line, a corrupt
/// available index.
fn vsock_bad_packets() -> Vec<u8> {
    let mut s = VsockSeed::new(false);
    let t = Tx::default();
    s.post_rx(vsock::RX_KICK | 15, 128)
        .tx(Tx {
            op: vop::REQUEST,
            dst_port: vsock::PEER_PORT + 1,
            ..t
        })
        .tx(Tx {
            op: vop::REQUEST,
            ctl: vsock::TX_KICK | vsock::TX_RAW_CIDS,
            ..t
        })
        .raw(&[7, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0])
        .tx(Tx {
            op: vop::REQUEST,
            ctl: vsock::TX_KICK | vsock::TX_RAW_TYPE,
            ..t
        })
        .raw(&[2, 0])
        .tx(Tx {
            op: vop::RW,
            ctl: vsock::TX_KICK | vsock::TX_RAW_LEN,
            payload: b"short",
            ..t
        })
        .raw(&1000u32.to_le_bytes())
        .tx(Tx {
            op: vop::RW,
            payload: b"nobody home",
            ..t
        })
        .host_connect(b"CONNECT x\n")
        .host_connect(b"HELLO\n")
        .mem(0x1502, &[0x40, 0])
        .kick(1)
        .reset();
    s.bytes()
}

/// Every seed: (target, file name, input).
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
        ("virtio_vsock", "guest-connect", vsock_guest_connect()),
        ("virtio_vsock", "host-connect", vsock_host_connect()),
        ("virtio_vsock", "bad-packets", vsock_bad_packets()),
        ("virtio_fs", "file-io", fs_file_io()),
        ("virtio_fs", "dir-ops", fs_dir_ops()),
        ("virtio_fs", "escape", fs_escape()),
        ("virtio_fs", "read-only", fs_read_only()),
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

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    fn guest_ram(mem: &devices::virtio::GuestMemoryMmap) -> Vec<u8> {
        let mut v = vec![0; crate::RAM_SIZE as usize];
        mem.read_slice(&mut v, GuestAddress(0)).unwrap();
        v
    }

    #[test]
    fn vsock_guest_connect_seed_moves_data_both_ways() {
        let out = vsock::run(&vsock_guest_connect());
        assert_eq!(out.peak_connections, 1);
        assert_eq!(out.host_received, b"hello host");
        assert!(contains(&guest_ram(&out.mem), b"world"));
    }

    #[test]
    fn vsock_host_connect_seed_moves_data_both_ways() {
        let out = vsock::run(&vsock_host_connect());
        assert_eq!(out.peak_connections, 1);
        assert!(out.host_received.starts_with(b"OK 1073741824\n"));
        assert!(contains(&out.host_received, b"from guest"));
        assert!(contains(&guest_ram(&out.mem), b"from host"));
    }

    #[test]
    fn vsock_bad_packets_seed_connects_nothing() {
        let out = vsock::run(&vsock_bad_packets());
        assert_eq!(out.peak_connections, 0);
        assert!(out.host_received.is_empty());
    }

    /// (error, reply bytes after the out header) of request `n` of an fs seed.
    fn fs_reply(out: &crate::fs::Outcome, n: usize) -> (i32, Vec<u8>) {
        let at = fs_layout::REPLIES + n as u64 * u64::from(fs_layout::REPLY_LEN);
        let len: u32 = out.mem.read_obj(GuestAddress(at)).unwrap();
        let err: i32 = out.mem.read_obj(GuestAddress(at + 4)).unwrap();
        let body_len = (len as usize)
            .saturating_sub(fuse::OUT_HEADER_LEN)
            .min(0x3f0);
        let mut body = vec![0; body_len];
        out.mem
            .read_slice(&mut body, GuestAddress(at + 16))
            .unwrap();
        (err, body)
    }

    fn fs_errors(out: &crate::fs::Outcome, n: usize) -> Vec<i32> {
        (0..n).map(|i| fs_reply(out, i).0).collect()
    }

    fn file<'a>(out: &'a crate::fs::Outcome, name: &str) -> Option<&'a Vec<u8>> {
        out.files.iter().find(|f| f.0 == name)?.2.as_ref()
    }

    #[test]
    fn fs_file_io_seed_reads_and_writes() {
        let out = crate::fs::run(&fs_file_io());
        assert_eq!(fs_errors(&out, 12), [0; 12]);
        assert!(contains(&fs_reply(&out, 11).1, b"link-abs"));
        assert_eq!(fs_reply(&out, 4).1, crate::fs::FILE_CONTENTS);
        assert_eq!(file(&out, "file").unwrap(), b"hello FROM the share\n");
    }

    #[test]
    fn fs_dir_ops_seed_changes_the_share() {
        let out = crate::fs::run(&fs_dir_ops());
        assert_eq!(fs_errors(&out, 18), [0; 18]);
        assert_eq!(file(&out, "moved").unwrap(), b"cre");
        assert!(out.files.iter().any(|f| f.0 == "sym"));
        assert!(!out.files.iter().any(|f| f.0 == "hard" || f.0 == "newdir/"));
    }

    #[test]
    fn fs_escape_seed_is_refused() {
        let out = crate::fs::run(&fs_escape());
        let errs = fs_errors(&out, 20);
        // INIT, the lookups of the symlinks, READLINK and the real file work.
        for ok in [0, 1, 4, 5, 9, 13, 14, 15, 16, 17, 18] {
            assert_eq!(errs[ok], 0, "request {ok}: {errs:?}");
        }
        // Opening or truncating through a symlink, lookups through or above it, `..` and
        // '/' in names, and bad handles all fail.
        for bad in [2, 3, 6, 7, 8, 10, 11, 12, 19] {
            assert!(errs[bad] < 0, "request {bad}: {errs:?}");
        }
        assert_eq!(fs_reply(&out, 4).1, b"../outside/canary");
    }

    #[test]
    fn fs_read_only_seed_fails_writes() {
        let out = crate::fs::run(&fs_read_only());
        let erofs = -libc::EROFS;
        assert_eq!(
            fs_errors(&out, 9),
            [0, 0, erofs, 0, 0, erofs, erofs, erofs, erofs]
        );
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
