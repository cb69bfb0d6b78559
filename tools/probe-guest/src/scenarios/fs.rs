//! `probe=fs`: a minimal FUSE client over virtio-fs (virtio 1.2 §5.11), one request at a
//! time on the request queue (FORGET on the high-priority queue). It runs a fixed script
//! against the shared directory and prints a few summary lines; the host test then checks
//! the directory itself.
//!
//! Script (names relative to the share's root):
//! 1. INIT (protocol 7.31).
//! 2. `fs.read=NAME`: LOOKUP, OPEN, READ to the end, RELEASE; size and FNV-1a of the data.
//! 3. Writable share: MKDIR `dir`; CREATE `dir/new.bin`; WRITE `fs.bytes` bytes of the test
//!    pattern for `fs.seed` in `fs.chunk`-byte requests; RELEASE; OPEN and READ it back and
//!    compare; OPENDIR/READDIR `dir` (must list `new.bin`); RENAME `dir/new.bin` to
//!    `renamed.bin`; CREATE then UNLINK `gone.txt` and LOOKUP it again (must fail);
//!    SYMLINK `esc` -> `fs.symlink` (default `../outside`) and READLINK it.
//!    Read-only share (`fs.ro=1`): CREATE, MKDIR and OPEN for writing must fail.
//! 4. Escapes: LOOKUP of `..`, `.` and `a/b` from the root; for the symlink `esc` (and
//!    `fs.hostlink=NAME`, a symlink made by the host): OPEN it, LOOKUP `secret` beneath it,
//!    CREATE `planted` beneath it; LOOKUP with a node id the server never gave out; MKNOD
//!    of a character and a block device node in the root. All must fail.

use core::ptr::{read_volatile, write_volatile};

use super::{Ctx, Outcome};
use crate::check::{pattern_fill, pattern_mismatch, Fnv};
use crate::cmdline::Cmdline;
use crate::line::Line;
use crate::virtio::{self, Buf, Deadline, Transport, Virtqueue};
use crate::{dma, serial};

const HIPRIO_QUEUE: u16 = 0;
const REQUEST_QUEUE: u16 = 1;
const TAG_LEN: usize = 36;

const IN_HDR: usize = 40;
const OUT_HDR: u64 = 16;
const ROOT: u64 = 1;

/// FUSE opcodes (Linux `fuse.h`).
mod opc {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RENAME: u32 = 12;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const RELEASE: u32 = 18;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const CREATE: u32 = 35;
    pub const DESTROY: u32 = 38;
}

const O_WRONLY: u32 = 1;
const O_RDWR: u32 = 2;
const O_CREAT: u32 = 0o100;
const O_EXCL: u32 = 0o200;
const S_IFMT: u32 = 0o170_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFDIR: u32 = 0o040_000;
const ENOENT: i32 = 2;

/// fuse_entry_out: nodeid at 0, attr at 40 (size at +8, mode at +60).
const ENTRY_OUT: u32 = 128;
const OPEN_OUT: u32 = 16;

/// Request header + arguments buffer, reply buffer and payload buffer sizes.
const REQ_BUF: u64 = 4096;
const REPLY_BUF: u64 = 256 << 10;
const DATA_BUF: u64 = 256 << 10;

struct Fuse {
    t: Transport,
    hq: Virtqueue,
    rq: Virtqueue,
    req: u64,
    out: u64,
    reply: u64,
    data: u64,
    unique: u64,
    timeout_ms: u64,
}

/// A reply: 0 or `-errno`, and the reply body length.
type Reply = Result<(i32, u32), &'static str>;

impl Fuse {
    fn new(t: Transport, c: &Cmdline) -> Result<Self, &'static str> {
        t.init(0)?;
        let hq = t.setup_queue(HIPRIO_QUEUE, 16)?;
        let rq = t.setup_queue(REQUEST_QUEUE, 64)?;
        t.driver_ok()?;
        Ok(Self {
            t,
            hq,
            rq,
            req: dma::alloc(REQ_BUF, 4096)?,
            out: dma::alloc(OUT_HDR, 16)?,
            reply: dma::alloc(REPLY_BUF, 4096)?,
            data: dma::alloc(DATA_BUF, 4096)?,
            unique: 0,
            timeout_ms: virtio::timeout_ms(c),
        })
    }

    /// Sends one request: header for `opcode`/`node`, then `args` back to back, then
    /// `payload` bytes of the data buffer as a separate descriptor; the reply goes to the
    /// out header and up to `cap` bytes of the reply buffer. Waits for it.
    fn call(&mut self, opcode: u32, node: u64, args: &[&[u8]], payload: u32, cap: u32) -> Reply {
        let args_len: usize = args.iter().map(|a| a.len()).sum();
        if (IN_HDR + args_len) as u64 > REQ_BUF
            || u64::from(payload) > DATA_BUF
            || u64::from(cap) > REPLY_BUF
        {
            return Err("fs: request too large for the driver's buffers");
        }
        self.unique += 1;
        let total = (IN_HDR + args_len) as u32 + payload;
        // SAFETY: the request buffer is this driver's DMA memory and no request is in
        // flight (one at a time), so the device is not reading it.
        let buf = unsafe { dma::slice_mut(self.req, IN_HDR + args_len) };
        buf[..IN_HDR].fill(0);
        buf[0..4].copy_from_slice(&total.to_le_bytes());
        buf[4..8].copy_from_slice(&opcode.to_le_bytes());
        buf[8..16].copy_from_slice(&self.unique.to_le_bytes());
        buf[16..24].copy_from_slice(&node.to_le_bytes());
        buf[32..36].copy_from_slice(&1u32.to_le_bytes()); // pid
        let mut off = IN_HDR;
        for a in args {
            buf[off..off + a.len()].copy_from_slice(a);
            off += a.len();
        }
        // SAFETY: as above for the out header.
        unsafe { write_volatile(self.out as *mut u32, 0) };
        let mut bufs = [Buf::default(); 4];
        let mut n = 0;
        bufs[n] = Buf::read(self.req, off as u32);
        n += 1;
        if payload > 0 {
            bufs[n] = Buf::read(self.data, payload);
            n += 1;
        }
        bufs[n] = Buf::write(self.out, OUT_HDR as u32);
        n += 1;
        if cap > 0 {
            bufs[n] = Buf::write(self.reply, cap);
            n += 1;
        }
        let head = self.rq.add(&bufs[..n])?;
        self.rq.kick();
        let (got, used) = match self.rq.wait_used(Deadline::after_ms(self.timeout_ms)) {
            Ok(u) => u,
            Err(e) => {
                let mut l = Line::new();
                l.str("PROBE-VIRTIO: timeout dev=")
                    .hex(self.t.slot.base)
                    .str(" status=")
                    .hex(u64::from(self.t.status()))
                    .str(" opcode=")
                    .dec(u64::from(opcode))
                    .str(" unique=")
                    .dec(self.unique);
                serial::println(&mut l);
                return Err(e);
            }
        };
        if got != head {
            return Err("fs: device returned another request");
        }
        // SAFETY: the device returned the request; the out header is ours again.
        let (len, error, unique) = unsafe {
            (
                read_volatile(self.out as *const u32),
                read_volatile((self.out + 4) as *const i32),
                read_volatile((self.out + 8) as *const u64),
            )
        };
        if used < OUT_HDR as u32 || len != used || unique != self.unique {
            return Err("fs: reply header does not match the request");
        }
        if error > 0 || (error < 0 && len != OUT_HDR as u32) {
            return Err("fs: malformed error reply");
        }
        Ok((error, len - OUT_HDR as u32))
    }

    /// The reply body.
    fn reply(&self, len: u32) -> &[u8] {
        // SAFETY: called after `call` returned, so the device is done with the buffer;
        // `len` <= the capacity passed to `call` (the used length was checked).
        unsafe { dma::slice_mut(self.reply, len as usize) }
    }

    fn payload(&mut self, len: u32) -> &mut [u8] {
        // SAFETY: the data buffer is only on the ring inside `call`.
        unsafe { dma::slice_mut(self.data, len as usize) }
    }

    /// LOOKUP/MKDIR/SYMLINK/CREATE-style reply: `(error, nodeid, mode, size)`.
    fn entry(&self, r: (i32, u32)) -> Result<(i32, u64, u32, u64), &'static str> {
        if r.0 != 0 {
            return Ok((r.0, 0, 0, 0));
        }
        if r.1 < ENTRY_OUT {
            return Err("fs: short entry reply");
        }
        let b = self.reply(ENTRY_OUT);
        Ok((0, le64(&b[0..]), le32(&b[100..]), le64(&b[48..])))
    }

    fn lookup(&mut self, dir: u64, name: &[u8]) -> Result<(i32, u64, u32, u64), &'static str> {
        let r = self.call(opc::LOOKUP, dir, &[name, b"\0"], 0, ENTRY_OUT)?;
        self.entry(r)
    }

    /// OPEN/OPENDIR: `(error, fh)`.
    fn open(&mut self, op: u32, node: u64, flags: u32) -> Result<(i32, u64), &'static str> {
        let mut a = [0u8; 8];
        a[0..4].copy_from_slice(&flags.to_le_bytes());
        let (e, len) = self.call(op, node, &[&a], 0, OPEN_OUT)?;
        if e != 0 {
            return Ok((e, 0));
        }
        if len < OPEN_OUT {
            return Err("fs: short open reply");
        }
        Ok((0, le64(self.reply(8))))
    }

    /// CREATE: `(error, nodeid, fh)`.
    fn create(
        &mut self,
        dir: u64,
        name: &[u8],
        flags: u32,
    ) -> Result<(i32, u64, u64), &'static str> {
        let mut a = [0u8; 16];
        a[0..4].copy_from_slice(&(flags | O_CREAT | O_EXCL).to_le_bytes());
        a[4..8].copy_from_slice(&0o100_644u32.to_le_bytes());
        let (e, len) = self.call(
            opc::CREATE,
            dir,
            &[&a, name, b"\0"],
            0,
            ENTRY_OUT + OPEN_OUT,
        )?;
        if e != 0 {
            return Ok((e, 0, 0));
        }
        if len < ENTRY_OUT + OPEN_OUT {
            return Err("fs: short create reply");
        }
        let b = self.reply(ENTRY_OUT + OPEN_OUT);
        Ok((0, le64(b), le64(&b[ENTRY_OUT as usize..])))
    }

    fn release(&mut self, op: u32, node: u64, fh: u64) -> Result<i32, &'static str> {
        let mut a = [0u8; 24];
        a[0..8].copy_from_slice(&fh.to_le_bytes());
        Ok(self.call(op, node, &[&a], 0, 0)?.0)
    }

    /// READ/READDIR arguments.
    fn read_args(fh: u64, offset: u64, size: u32) -> [u8; 40] {
        let mut a = [0u8; 40];
        a[0..8].copy_from_slice(&fh.to_le_bytes());
        a[8..16].copy_from_slice(&offset.to_le_bytes());
        a[16..20].copy_from_slice(&size.to_le_bytes());
        a
    }

    /// Reads the whole file through `f(offset, bytes)`; returns the byte count.
    fn read_all(
        &mut self,
        node: u64,
        fh: u64,
        chunk: u32,
        f: &mut dyn FnMut(u64, &[u8]),
    ) -> Result<u64, &'static str> {
        let mut off = 0u64;
        loop {
            let a = Self::read_args(fh, off, chunk);
            let (e, len) = self.call(opc::READ, node, &[&a], 0, chunk)?;
            if e != 0 {
                return Err("fs: READ failed");
            }
            if len == 0 {
                return Ok(off);
            }
            f(off, self.reply(len));
            off += u64::from(len);
        }
    }

    /// FORGET on the high-priority queue (no reply; the device just returns the chain).
    fn forget(&mut self, node: u64, nlookup: u64) -> Result<(), &'static str> {
        self.unique += 1;
        // SAFETY: as in `call`: no request is in flight.
        let buf = unsafe { dma::slice_mut(self.req, IN_HDR + 8) };
        buf.fill(0);
        buf[0..4].copy_from_slice(&((IN_HDR + 8) as u32).to_le_bytes());
        buf[4..8].copy_from_slice(&opc::FORGET.to_le_bytes());
        buf[8..16].copy_from_slice(&self.unique.to_le_bytes());
        buf[16..24].copy_from_slice(&node.to_le_bytes());
        buf[IN_HDR..].copy_from_slice(&nlookup.to_le_bytes());
        let head = self.hq.add(&[Buf::read(self.req, (IN_HDR + 8) as u32)])?;
        self.hq.kick();
        let (got, _) = self.hq.wait_used(Deadline::after_ms(self.timeout_ms))?;
        if got != head {
            return Err("fs: device returned another FORGET");
        }
        Ok(())
    }
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le64(b: &[u8]) -> u64 {
    u64::from(le32(b)) | (u64::from(le32(&b[4..])) << 32)
}

fn field(l: &mut Line, key: &str, v: i32) {
    l.str(" ").str(key).str("=");
    if v < 0 {
        l.str("-");
    }
    l.dec(u64::from(v.unsigned_abs()));
}

/// Records the first failed expectation.
struct Verdict(Option<&'static str>);

impl Verdict {
    fn expect(&mut self, ok: bool, why: &'static str) {
        if !ok && self.0.is_none() {
            self.0 = Some(why);
        }
    }
}

/// The escape attempts through symlink `name`: OPEN it, LOOKUP and CREATE beneath it.
/// Returns `(open, beneath, create_beneath)` errors (0 = it worked, which must not be).
fn symlink_escape(
    f: &mut Fuse,
    name: &[u8],
    v: &mut Verdict,
) -> Result<(i32, i32, i32), &'static str> {
    let (e, node, mode, _) = f.lookup(ROOT, name)?;
    v.expect(e == 0, "fs: LOOKUP of the symlink failed");
    v.expect(
        mode & S_IFMT == S_IFLNK,
        "fs: the symlink is not reported as one",
    );
    if e != 0 {
        return Ok((0, 0, 0));
    }
    let (open, fh) = f.open(opc::OPEN, node, 0)?;
    if open == 0 {
        f.release(opc::RELEASE, node, fh)?;
    }
    let (beneath, _, _, _) = f.lookup(node, b"secret")?;
    let (create, cnode, cfh) = f.create(node, b"planted", O_WRONLY)?;
    if create == 0 {
        f.release(opc::RELEASE, cnode, cfh)?;
    }
    v.expect(open < 0, "fs: OPEN of a symlink succeeded");
    v.expect(beneath < 0, "fs: LOOKUP beneath a symlink succeeded");
    v.expect(create < 0, "fs: CREATE beneath a symlink succeeded");
    Ok((open, beneath, create))
}

pub fn run(ctx: &Ctx) -> Outcome {
    let c = &ctx.cmdline;
    let t = virtio::find(c, virtio::ID_FS, 0).ok_or("no virtio-fs device")?;
    let mut tag = [0u8; TAG_LEN];
    for (i, b) in tag.iter_mut().enumerate() {
        *b = t.config8(i);
    }
    let queues = t.config32(TAG_LEN);
    let mut f = Fuse::new(t, c)?;
    let mut v = Verdict(None);
    let chunk = c.number("fs.chunk").unwrap_or(64 << 10);
    if !(1..=DATA_BUF).contains(&chunk) {
        return Err("fs.chunk must be 1..=262144");
    }
    let chunk = chunk as u32;

    // INIT: major 7, minor 31, max_readahead, flags.
    let mut a = [0u8; 16];
    a[0..4].copy_from_slice(&7u32.to_le_bytes());
    a[4..8].copy_from_slice(&31u32.to_le_bytes());
    a[8..12].copy_from_slice(&(128u32 << 10).to_le_bytes());
    let (e, len) = f.call(opc::INIT, 0, &[&a], 0, 64)?;
    if e != 0 || len < 24 {
        return Err("fs: INIT failed");
    }
    let r = f.reply(24);
    let (major, minor, max_write) = (le32(r), le32(&r[4..]), le32(&r[20..]));
    let mut l = Line::new();
    let tag_len = tag.iter().position(|&b| b == 0).unwrap_or(TAG_LEN);
    l.str("PROBE-FS: tag=")
        .bytes(&tag[..tag_len])
        .str(" queues=")
        .dec(u64::from(queues))
        .str(" major=")
        .dec(u64::from(major))
        .str(" minor=")
        .dec(u64::from(minor))
        .str(" max_write=")
        .dec(u64::from(max_write));
    serial::println(&mut l);
    if major != 7 || minor > 31 {
        return Err("fs: unexpected protocol version");
    }

    if let Some(name) = c.value("fs.read") {
        let (e, node, _, size) = f.lookup(ROOT, name)?;
        let mut l = Line::new();
        l.str("PROBE-FS: read=").bytes(name);
        if e != 0 {
            field(&mut l, "error", e);
            v.expect(false, "fs: LOOKUP of fs.read failed");
        } else {
            let (e, fh) = f.open(opc::OPEN, node, 0)?;
            v.expect(e == 0, "fs: OPEN of fs.read failed");
            if e == 0 {
                let mut sum = Fnv::new();
                let n = f.read_all(node, fh, chunk, &mut |_, b| sum.update(b))?;
                f.release(opc::RELEASE, node, fh)?;
                l.str(" size=")
                    .dec(size)
                    .str(" got=")
                    .dec(n)
                    .str(" sum=")
                    .hex(sum.value());
                v.expect(n == size, "fs: READ returned a different size than LOOKUP");
            }
        }
        serial::println(&mut l);
    }

    let symlink_target = c.value("fs.symlink").unwrap_or(b"../outside");
    let mut have_esc = false;
    if c.number("fs.ro") == Some(1) {
        let (create, _, _) = f.create(ROOT, b"ro-file", O_WRONLY)?;
        let mut m = [0u8; 8];
        m[0..4].copy_from_slice(&0o755u32.to_le_bytes());
        let (mkdir, _) = f.call(opc::MKDIR, ROOT, &[&m, b"ro-dir\0"], 0, ENTRY_OUT)?;
        let (symlink, _) = f.call(
            opc::SYMLINK,
            ROOT,
            &[b"ro-link\0", symlink_target, b"\0"],
            0,
            ENTRY_OUT,
        )?;
        let mut write_open = 0;
        if let Some(name) = c.value("fs.read") {
            let (e, node, _, _) = f.lookup(ROOT, name)?;
            if e == 0 {
                let (e, fh) = f.open(opc::OPEN, node, O_RDWR)?;
                if e == 0 {
                    f.release(opc::RELEASE, node, fh)?;
                }
                write_open = e;
            }
        }
        let mut l = Line::new();
        l.str("PROBE-FS: ro");
        field(&mut l, "create", create);
        field(&mut l, "mkdir", mkdir);
        field(&mut l, "symlink", symlink);
        field(&mut l, "write_open", write_open);
        serial::println(&mut l);
        v.expect(
            create < 0 && mkdir < 0 && symlink < 0,
            "fs: a read-only share accepted a change",
        );
        v.expect(
            write_open < 0,
            "fs: a read-only share opened a file for writing",
        );
    } else {
        let bytes = c.number("fs.bytes").unwrap_or(1 << 20);
        let seed = c.number("fs.seed").unwrap_or(1);
        let mut m = [0u8; 8];
        m[0..4].copy_from_slice(&0o755u32.to_le_bytes());
        let r = f.call(opc::MKDIR, ROOT, &[&m, b"dir\0"], 0, ENTRY_OUT)?;
        let (mkdir, dir, dir_mode, _) = f.entry(r)?;
        v.expect(
            mkdir == 0 && dir_mode & S_IFMT == S_IFDIR,
            "fs: MKDIR failed",
        );
        let (create, node, fh) = f.create(dir, b"new.bin", O_WRONLY)?;
        v.expect(create == 0, "fs: CREATE failed");
        let mut wrote = 0u64;
        if create == 0 {
            while wrote < bytes {
                let n = (bytes - wrote).min(u64::from(chunk)) as u32;
                pattern_fill(seed, wrote, f.payload(n));
                let mut a = [0u8; 40];
                a[0..8].copy_from_slice(&fh.to_le_bytes());
                a[8..16].copy_from_slice(&wrote.to_le_bytes());
                a[16..20].copy_from_slice(&n.to_le_bytes());
                let (e, len) = f.call(opc::WRITE, node, &[&a], n, 8)?;
                if e != 0 || len < 4 || le32(f.reply(4)) != n {
                    v.expect(false, "fs: WRITE failed or was short");
                    break;
                }
                wrote += u64::from(n);
            }
            f.release(opc::RELEASE, node, fh)?;
        }
        // Read back through a fresh open.
        let mut verified = 0u64;
        let (e, rfh) = f.open(opc::OPEN, node, 0)?;
        if create == 0 && e == 0 {
            let mut bad = false;
            let n = f.read_all(node, rfh, chunk, &mut |off, b| {
                bad |= pattern_mismatch(seed, off, b).is_some();
            })?;
            f.release(opc::RELEASE, node, rfh)?;
            if !bad {
                verified = n;
            }
        }
        v.expect(
            verified == bytes && wrote == bytes,
            "fs: read-back differs from what was written",
        );

        // READDIR of `dir` must list new.bin.
        let (e, dfh) = f.open(opc::OPENDIR, dir, 0)?;
        let (mut entries, mut listed) = (0u64, false);
        if e == 0 {
            let mut off = 0u64;
            loop {
                let a = Fuse::read_args(dfh, off, 4096);
                let (e, len) = f.call(opc::READDIR, dir, &[&a], 0, 4096)?;
                if e != 0 || len == 0 {
                    break;
                }
                // fuse_dirent: ino u64, off u64, namelen u32, type u32, name, padded to 8.
                let b = f.reply(len);
                let mut p = 0usize;
                while p + 24 <= b.len() {
                    let next = le64(&b[p + 8..]);
                    let nl = le32(&b[p + 16..]) as usize;
                    let name = b.get(p + 24..p + 24 + nl).unwrap_or(&[]);
                    entries += 1;
                    listed |= name == b"new.bin";
                    off = next;
                    p += (24 + nl).next_multiple_of(8);
                }
            }
            f.release(opc::RELEASEDIR, dir, dfh)?;
        }
        v.expect(listed, "fs: READDIR did not list the created file");

        // RENAME dir/new.bin -> renamed.bin (in the root).
        let (rename, _) = f.call(
            opc::RENAME,
            dir,
            &[&ROOT.to_le_bytes(), b"new.bin\0", b"renamed.bin\0"],
            0,
            0,
        )?;
        v.expect(rename == 0, "fs: RENAME failed");
        // CREATE + UNLINK, then LOOKUP must say ENOENT.
        let (e, gnode, gfh) = f.create(ROOT, b"gone.txt", O_WRONLY)?;
        if e == 0 {
            f.release(opc::RELEASE, gnode, gfh)?;
            f.forget(gnode, 1)?;
        }
        let (unlink, _) = f.call(opc::UNLINK, ROOT, &[b"gone.txt\0"], 0, 0)?;
        let (after, _, _, _) = f.lookup(ROOT, b"gone.txt")?;
        v.expect(
            unlink == 0 && after == -ENOENT,
            "fs: UNLINK did not remove the file",
        );
        // A symlink pointing outside the share (creating one is allowed; following it
        // must not be).
        let r = f.call(
            opc::SYMLINK,
            ROOT,
            &[b"esc\0", symlink_target, b"\0"],
            0,
            ENTRY_OUT,
        )?;
        let (symlink, snode, _, _) = f.entry(r)?;
        v.expect(symlink == 0, "fs: SYMLINK failed");
        let mut readlink_ok = false;
        if symlink == 0 {
            let (e, len) = f.call(opc::READLINK, snode, &[], 0, 4096)?;
            readlink_ok = e == 0 && f.reply(len) == symlink_target;
            have_esc = true;
        }
        v.expect(readlink_ok, "fs: READLINK returned something else");

        let mut l = Line::new();
        l.str("PROBE-FS:");
        field(&mut l, "mkdir", mkdir);
        field(&mut l, "create", create);
        l.str(" wrote=").dec(wrote).str(" verified=").dec(verified);
        l.str(" readdir=").dec(entries).str(" listed=").flag(listed);
        field(&mut l, "rename", rename);
        field(&mut l, "unlink", unlink);
        field(&mut l, "after_unlink", after);
        field(&mut l, "symlink", symlink);
        l.str(" readlink=").flag(readlink_ok);
        serial::println(&mut l);
    }

    // Escape attempts.
    let (dotdot, _, _, _) = f.lookup(ROOT, b"..")?;
    let (dot, _, _, _) = f.lookup(ROOT, b".")?;
    let (slash, _, _, _) = f.lookup(ROOT, b"../outside")?;
    let (bad_node, _, _, _) = f.lookup(0x7fff_0000_dead, b"x")?;
    v.expect(
        dotdot < 0 && dot < 0 && slash < 0,
        "fs: LOOKUP of a non-component succeeded",
    );
    v.expect(bad_node < 0, "fs: LOOKUP under a forged node id succeeded");
    // Device nodes (the host's /dev/null, 1:3, and /dev/sda, 8:0): refused, and the VMM
    // must survive the request (its seccomp filter never allows creating one).
    let mut mknod = [0i32; 2];
    for (i, (typ, rdev, name)) in [
        (0o020_000u32, 0x103u32, &b"dev_null\0"[..]),
        (0o060_000, 0x800, &b"dev_sda\0"[..]),
    ]
    .into_iter()
    .enumerate()
    {
        let mut a = [0u8; 16];
        a[0..4].copy_from_slice(&(typ | 0o666).to_le_bytes());
        a[4..8].copy_from_slice(&rdev.to_le_bytes());
        let r = f.call(opc::MKNOD, ROOT, &[&a, name], 0, ENTRY_OUT)?;
        mknod[i] = f.entry(r)?.0;
    }
    v.expect(
        mknod[0] < 0 && mknod[1] < 0,
        "fs: MKNOD of a device node succeeded",
    );
    let mut l = Line::new();
    l.str("PROBE-FS: escape");
    field(&mut l, "dotdot", dotdot);
    field(&mut l, "dot", dot);
    field(&mut l, "slash", slash);
    field(&mut l, "bad_node", bad_node);
    field(&mut l, "mknod_chr", mknod[0]);
    field(&mut l, "mknod_blk", mknod[1]);
    if have_esc {
        let (open, beneath, create) = symlink_escape(&mut f, b"esc", &mut v)?;
        field(&mut l, "open_symlink", open);
        field(&mut l, "beneath", beneath);
        field(&mut l, "create_beneath", create);
    }
    if let Some(name) = c.value("fs.hostlink") {
        let (open, beneath, create) = symlink_escape(&mut f, name, &mut v)?;
        field(&mut l, "host_open", open);
        field(&mut l, "host_beneath", beneath);
        field(&mut l, "host_create_beneath", create);
    }
    serial::println(&mut l);

    f.call(opc::DESTROY, 0, &[], 0, 0)?;
    if f.t.needs_reset() {
        return Err("fs: device asks for a reset");
    }
    f.t.reset()?;
    v.0.map_or(Ok(()), Err)
}
