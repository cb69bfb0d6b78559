//! Device-level tests: a test driver puts FUSE requests into descriptor chains in guest
//! memory, the device serves them from a temporary directory, and the results are checked
//! both in the replies and on the host.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempdir::TempDir;

use super::abi::{opcode as o, OUT_HEADER_LEN};
use super::decode::tests::{request, B};
use super::*;
use crate::virtio::test_utils::{chain, test_mem, D, MEM_SIZE};

const REQ_QUEUE_ADDR: u64 = 0x1000;
const REQ_USED_ADDR: u64 = 0x8000;
const HI_QUEUE_ADDR: u64 = 0x1_0000;
const HI_USED_ADDR: u64 = 0x1_8000;
const QSIZE: u16 = 16;
/// Request buffer (up to 2 MiB).
const REQ: u64 = 0x10_0000;
/// Reply buffer (up to 2 MiB).
const REP: u64 = 0x40_0000;
const REP_CAP: u32 = 0x20_0000;
const ROOT: u64 = 1;
const UID: u32 = 1000;
const GID: u32 = 1001;

/// One queue as the driver sees it: the mock's layout, our own avail/used bookkeeping
/// (the mock does not wrap its available ring).
struct Vq {
    avail: u64,
    used: u64,
    next_avail: u16,
    next_used: u16,
}

impl Vq {
    fn new(mem: &GuestMemoryMmap, addr: u64, used: u64) -> (Self, Queue) {
        let mock = MockSplitQueue::create(mem, GuestAddress(addr), QSIZE);
        let mut q: Queue = mock.create_queue().unwrap();
        q.set_used_ring_address(Some(used as u32), Some(0));
        let vq = Vq {
            avail: mock.avail_addr().0,
            used,
            next_avail: 0,
            next_used: 0,
        };
        (vq, q)
    }
}

/// A reply: -errno (0 on success) and the payload after the out header.
#[derive(Debug)]
struct Reply {
    error: i32,
    data: Vec<u8>,
}

impl Reply {
    fn ok(self) -> Result<Vec<u8>, i32> {
        if self.error == 0 {
            Ok(self.data)
        } else {
            Err(-self.error)
        }
    }
}

/// Fields of a `fuse_entry_out` the tests look at.
#[derive(Debug, Clone, Copy)]
struct Entry {
    nodeid: u64,
    ino: u64,
    size: u64,
    mode: u32,
    nlink: u32,
    uid: u32,
    gid: u32,
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// Parses a `fuse_attr` at `off`.
fn attr_at(b: &[u8], off: usize) -> (u64, u64, u32, u32, u32, u32) {
    (
        u64_at(b, off),
        u64_at(b, off + 8),
        u32_at(b, off + 60),
        u32_at(b, off + 64),
        u32_at(b, off + 68),
        u32_at(b, off + 72),
    )
}

fn entry(b: &[u8]) -> Entry {
    let (ino, size, mode, nlink, uid, gid) = attr_at(b, 40);
    Entry {
        nodeid: u64_at(b, 0),
        ino,
        size,
        mode,
        nlink,
        uid,
        gid,
    }
}

/// The guest driver plus the device and the shared directory.
struct Guest {
    mem: GuestMemoryMmap,
    fs: Fs,
    irq: Arc<Interrupt>,
    req: Vq,
    hi: Vq,
    unique: u64,
    /// The shared directory.
    root: PathBuf,
    /// Keeps the temporary directory (the share or its parent) alive.
    _tmp: TempDir,
}

impl Guest {
    fn new(read_only: bool) -> Self {
        let tmp = TempDir::new().unwrap();
        let root = tmp.as_path().to_owned();
        Self::with_dir(tmp, root, read_only)
    }

    fn with_dir(tmp: TempDir, root: PathBuf, read_only: bool) -> Self {
        let mem = test_mem();
        let mut fs = Fs::new("shared", root.clone(), read_only).unwrap();
        let (hi, hq) = Vq::new(&mem, HI_QUEUE_ADDR, HI_USED_ADDR);
        let (req, rq) = Vq::new(&mem, REQ_QUEUE_ADDR, REQ_USED_ADDR);
        let irq = Arc::new(Interrupt::new().unwrap());
        let acked = fs.device_features() & !(1 << features::RING_EVENT_IDX);
        fs.activate(mem.clone(), vec![hq, rq], irq.clone(), acked)
            .unwrap();
        Guest {
            mem,
            fs,
            irq,
            req,
            hi,
            unique: 0,
            root,
            _tmp: tmp,
        }
    }

    /// A guest that has done INIT.
    fn init(read_only: bool) -> Self {
        let mut g = Self::new(read_only);
        g.do_init();
        g
    }

    fn do_init(&mut self) {
        let r = self.call(
            o::INIT,
            0,
            &B::default()
                .u32(7)
                .u32(38)
                .u32(0x20000)
                .u32(!0)
                .bytes(&[0; 48])
                .0,
        );
        assert_eq!(r.error, 0);
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Posts `descs` as one chain on queue `q`, kicks it and returns the used length
    /// (`None` if the chain was not returned).
    fn run_chain(&mut self, q: usize, descs: &[D]) -> Option<u32> {
        let vq = if q == REQUEST_QUEUE {
            &mut self.req
        } else {
            &mut self.hi
        };
        // Processing is synchronous, so descriptor table slots 0.. are free again.
        let raw = chain(0, descs);
        let table = if q == REQUEST_QUEUE {
            REQ_QUEUE_ADDR
        } else {
            HI_QUEUE_ADDR
        };
        for (i, d) in raw.iter().enumerate() {
            self.mem
                .write_obj(*d, GuestAddress(table + 16 * i as u64))
                .unwrap();
        }
        let slot = vq.avail + 4 + 2 * u64::from(vq.next_avail % QSIZE);
        self.mem.write_obj(0u16, GuestAddress(slot)).unwrap();
        vq.next_avail = vq.next_avail.wrapping_add(1);
        self.mem
            .write_obj(vq.next_avail, GuestAddress(vq.avail + 2))
            .unwrap();
        let used_addr = vq.used;
        self.fs.process_queue(q);
        let vq = if q == REQUEST_QUEUE {
            &mut self.req
        } else {
            &mut self.hi
        };
        let idx: u16 = self.mem.read_obj(GuestAddress(used_addr + 2)).unwrap();
        if idx == vq.next_used {
            return None;
        }
        assert_eq!(idx, vq.next_used.wrapping_add(1), "one chain returned");
        let at = used_addr + 4 + 8 * u64::from(vq.next_used % QSIZE);
        vq.next_used = idx;
        let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
        assert_eq!(id, 0);
        assert_eq!(self.irq.eventfd().read().unwrap(), 1, "interrupt raised");
        Some(self.mem.read_obj(GuestAddress(at + 4)).unwrap())
    }

    /// Sends a raw request with a `cap`-byte reply buffer; returns the reply, if any.
    fn call_raw(&mut self, req: &[u8], cap: u32) -> Option<Reply> {
        self.mem.write_slice(req, GuestAddress(REQ)).unwrap();
        // Poison the reply area so stale bytes cannot pass for a reply.
        self.mem
            .write_slice(&[0xa5; 64], GuestAddress(REP))
            .unwrap();
        let mut descs = vec![D(REQ, req.len() as u32, false)];
        if cap > 0 {
            descs.push(D(REP, cap, true));
        }
        let len = self
            .run_chain(REQUEST_QUEUE, &descs)
            .expect("chain returned");
        if len == 0 {
            return None;
        }
        let out = read_mem(&self.mem, REP, len as usize);
        assert!(out.len() >= OUT_HEADER_LEN);
        assert_eq!(u32_at(&out, 0), len, "out header length = used length");
        let unique = u64_at(&out, 8);
        assert_eq!(unique, u64_at(req, 8), "reply to the right request");
        let error = u32_at(&out, 4) as i32;
        if error != 0 {
            assert_eq!(len as usize, OUT_HEADER_LEN, "errors carry no payload");
        }
        Some(Reply {
            error,
            data: out[OUT_HEADER_LEN..].to_vec(),
        })
    }

    fn call(&mut self, op: u32, nodeid: u64, body: &[u8]) -> Reply {
        self.unique += 1;
        let req = request(op, self.unique, nodeid, body);
        self.call_raw(&req, REP_CAP).expect("a reply")
    }

    fn lookup(&mut self, parent: u64, name: &str) -> Result<Entry, i32> {
        self.call(o::LOOKUP, parent, &B::default().s(name).0)
            .ok()
            .map(|b| entry(&b))
    }

    fn getattr(&mut self, node: u64) -> Result<(u64, u64, u32, u32, u32, u32), i32> {
        let b = self
            .call(o::GETATTR, node, &B::default().u32(0).u32(0).u64(0).0)
            .ok()?;
        assert_eq!(b.len(), 104);
        Ok(attr_at(&b, 16))
    }

    /// CREATE; returns (entry, fh).
    fn create(
        &mut self,
        parent: u64,
        name: &str,
        flags: i32,
        mode: u32,
    ) -> Result<(Entry, u64), i32> {
        let body = B::default()
            .u32(flags as u32)
            .u32(libc::S_IFREG | mode)
            .u32(0o022)
            .u32(0)
            .s(name);
        let b = self.call(o::CREATE, parent, &body.0).ok()?;
        assert_eq!(b.len(), 128 + 16);
        Ok((entry(&b), u64_at(&b, 128)))
    }

    fn open(&mut self, node: u64, flags: i32) -> Result<u64, i32> {
        let b = self
            .call(o::OPEN, node, &B::default().u32(flags as u32).u32(0).0)
            .ok()?;
        Ok(u64_at(&b, 0))
    }

    fn opendir(&mut self, node: u64) -> Result<u64, i32> {
        let b = self
            .call(o::OPENDIR, node, &B::default().u32(0).u32(0).0)
            .ok()?;
        Ok(u64_at(&b, 0))
    }

    fn release(&mut self, node: u64, fh: u64, dir: bool) -> Result<(), i32> {
        let op = if dir { o::RELEASEDIR } else { o::RELEASE };
        self.call(op, node, &B::default().u64(fh).u32(0).u32(0).u64(0).0)
            .ok()
            .map(drop)
    }

    fn write(&mut self, node: u64, fh: u64, off: u64, data: &[u8]) -> Result<u32, i32> {
        let body = B::default()
            .u64(fh)
            .u64(off)
            .u32(data.len() as u32)
            .u32(0)
            .u64(0)
            .u32(0)
            .u32(0)
            .bytes(data);
        let b = self.call(o::WRITE, node, &body.0).ok()?;
        assert_eq!(b.len(), 8);
        Ok(u32_at(&b, 0))
    }

    fn read_op(
        &mut self,
        op: u32,
        node: u64,
        fh: u64,
        off: u64,
        size: u32,
    ) -> Result<Vec<u8>, i32> {
        let body = B::default()
            .u64(fh)
            .u64(off)
            .u32(size)
            .u32(0)
            .u64(0)
            .u32(0)
            .u32(0);
        self.call(op, node, &body.0).ok()
    }

    fn read(&mut self, node: u64, fh: u64, off: u64, size: u32) -> Result<Vec<u8>, i32> {
        self.read_op(o::READ, node, fh, off, size)
    }

    fn mkdir(&mut self, parent: u64, name: &str, mode: u32) -> Result<Entry, i32> {
        self.call(
            o::MKDIR,
            parent,
            &B::default().u32(mode).u32(0o022).s(name).0,
        )
        .ok()
        .map(|b| entry(&b))
    }

    fn unlink(&mut self, parent: u64, name: &str) -> Result<(), i32> {
        self.call(o::UNLINK, parent, &B::default().s(name).0)
            .ok()
            .map(drop)
    }

    fn rmdir(&mut self, parent: u64, name: &str) -> Result<(), i32> {
        self.call(o::RMDIR, parent, &B::default().s(name).0)
            .ok()
            .map(drop)
    }

    fn rename2(
        &mut self,
        parent: u64,
        old: &str,
        newdir: u64,
        new: &str,
        flags: u32,
    ) -> Result<(), i32> {
        let body = B::default().u64(newdir).u32(flags).u32(0).s(old).s(new);
        self.call(o::RENAME2, parent, &body.0).ok().map(drop)
    }

    fn symlink(&mut self, parent: u64, name: &str, target: &str) -> Result<Entry, i32> {
        self.call(o::SYMLINK, parent, &B::default().s(name).s(target).0)
            .ok()
            .map(|b| entry(&b))
    }

    fn link(&mut self, old: u64, newparent: u64, name: &str) -> Result<Entry, i32> {
        self.call(o::LINK, newparent, &B::default().u64(old).s(name).0)
            .ok()
            .map(|b| entry(&b))
    }

    fn setattr(
        &mut self,
        node: u64,
        valid: u32,
        f: impl FnOnce(&mut SetattrBody),
    ) -> Result<Vec<u8>, i32> {
        let mut s = SetattrBody {
            valid,
            ..Default::default()
        };
        f(&mut s);
        let body = B::default()
            .u32(s.valid)
            .u32(0)
            .u64(s.fh)
            .u64(s.size)
            .u64(0)
            .u64(s.atime)
            .u64(s.mtime)
            .u64(0)
            .u32(s.atimensec)
            .u32(s.mtimensec)
            .u32(0)
            .u32(s.mode)
            .u32(0)
            .u32(s.uid)
            .u32(s.gid)
            .u32(0);
        self.call(o::SETATTR, node, &body.0).ok()
    }

    fn forget(&mut self, node: u64, n: u64) {
        self.unique += 1;
        let req = request(o::FORGET, self.unique, node, &B::default().u64(n).0);
        self.mem.write_slice(&req, GuestAddress(REQ)).unwrap();
        let len = self.run_chain(HIPRIO_QUEUE, &[D(REQ, req.len() as u32, false)]);
        assert_eq!(len, Some(0), "FORGET has no reply");
    }

    /// READDIR(PLUS) until EOF with `size`-byte buffers; returns (name, ino, type, nodeid).
    fn list(&mut self, node: u64, plus: bool, size: u32) -> Vec<(String, u64, u32, u64)> {
        let fh = self.opendir(node).unwrap();
        let op = if plus { o::READDIRPLUS } else { o::READDIR };
        let mut off = 0;
        let mut out = Vec::new();
        loop {
            let b = self.read_op(op, node, fh, off, size).unwrap();
            assert!(b.len() <= size as usize);
            if b.is_empty() {
                break;
            }
            let mut pos = 0;
            while pos < b.len() {
                let (nodeid, d) = if plus {
                    (u64_at(&b, pos), pos + 128)
                } else {
                    (0, pos)
                };
                let ino = u64_at(&b, d);
                off = u64_at(&b, d + 8);
                let namelen = u32_at(&b, d + 16) as usize;
                let typ = u32_at(&b, d + 20);
                let name = String::from_utf8(b[d + 24..d + 24 + namelen].to_vec()).unwrap();
                pos = (d + 24 + namelen).next_multiple_of(8);
                out.push((name, ino, typ, nodeid));
            }
        }
        self.release(node, fh, true).unwrap();
        out
    }
}

#[derive(Default)]
struct SetattrBody {
    valid: u32,
    fh: u64,
    size: u64,
    atime: u64,
    mtime: u64,
    atimensec: u32,
    mtimensec: u32,
    mode: u32,
    uid: u32,
    gid: u32,
}

fn read_mem(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

fn is_root() -> bool {
    sys::geteuid() == 0
}

const O_RDWR: i32 = libc::O_RDWR;

// ---------------------------------------------------------------------------------------
// Construction, config space, activation.
// ---------------------------------------------------------------------------------------

#[test]
fn new_validates_tag_and_directory() {
    let dir = TempDir::new().unwrap();
    let p = dir.as_path().to_owned();
    assert!(matches!(
        Fs::new("", p.clone(), false),
        Err(FsError::BadTag(0))
    ));
    assert!(matches!(
        Fs::new(&"t".repeat(37), p.clone(), false),
        Err(FsError::BadTag(37))
    ));
    assert!(matches!(
        Fs::new("a\0b", p.clone(), false),
        Err(FsError::TagNul)
    ));
    assert!(Fs::new(&"t".repeat(36), p.clone(), false).is_ok());
    assert!(matches!(
        Fs::new("t", p.join("missing"), false),
        Err(FsError::SharedDir { .. })
    ));
    std::fs::write(p.join("file"), b"x").unwrap();
    assert!(matches!(
        Fs::new("t", p.join("file"), false),
        Err(FsError::NotADirectory(_))
    ));
}

#[test]
fn device_identity_and_config_space() {
    let dir = TempDir::new().unwrap();
    let fs = Fs::new("myfs", dir.as_path().to_owned(), true).unwrap();
    assert_eq!(fs.device_type(), 26);
    assert_eq!(fs.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    let f = fs.device_features();
    assert_ne!(f & (1 << features::VERSION_1), 0);
    assert_ne!(f & (1 << features::RING_EVENT_IDX), 0);
    assert_eq!(fs.tag(), "myfs");
    assert!(fs.read_only());
    let mut cfg = [0xffu8; 40];
    fs.read_config(0, &mut cfg);
    assert_eq!(&cfg[..4], b"myfs");
    assert!(cfg[4..36].iter().all(|&b| b == 0), "NUL padded");
    assert_eq!(u32_at(&cfg, 36), 1, "num_request_queues");
    let mut one = [0u8; 4];
    fs.read_config(36, &mut one);
    assert_eq!(u32::from_le_bytes(one), 1);
    // Beyond the end reads as zero; a read crossing the end is zero-filled.
    let mut past = [0xffu8; 4];
    fs.read_config(40, &mut past);
    assert_eq!(past, [0; 4]);
    let mut cross = [0xffu8; 8];
    fs.read_config(36, &mut cross);
    assert_eq!(cross, [1, 0, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn activation_needs_two_queues_and_a_ready_request_queue() {
    let dir = TempDir::new().unwrap();
    let mut fs = Fs::new("t", dir.as_path().to_owned(), false).unwrap();
    let mem = test_mem();
    let irq = Arc::new(Interrupt::new().unwrap());
    let (_, q) = Vq::new(&mem, REQ_QUEUE_ADDR, REQ_USED_ADDR);
    assert!(matches!(
        fs.activate(mem.clone(), vec![q], irq.clone(), 0),
        Err(ActivateError::QueueCount {
            expected: 2,
            got: 1
        })
    ));
    let (_, hq) = Vq::new(&mem, HI_QUEUE_ADDR, HI_USED_ADDR);
    let not_ready = Queue::new(QSIZE).unwrap();
    assert!(matches!(
        fs.activate(mem.clone(), vec![hq, not_ready], irq.clone(), 0),
        Err(ActivateError::QueueNotReady(1))
    ));
    assert!(!fs.is_activated());
    let (_, rq) = Vq::new(&mem, REQ_QUEUE_ADDR, REQ_USED_ADDR);
    fs.activate(
        mem.clone(),
        vec![Queue::new(QSIZE).unwrap(), rq],
        irq.clone(),
        0,
    )
    .unwrap();
    assert!(fs.is_activated());
    let (_, rq) = Vq::new(&mem, REQ_QUEUE_ADDR, REQ_USED_ADDR);
    let (_, hq) = Vq::new(&mem, HI_QUEUE_ADDR, HI_USED_ADDR);
    assert!(matches!(
        fs.activate(mem.clone(), vec![hq, rq], irq.clone(), 0),
        Err(ActivateError::AlreadyActive)
    ));
    // A kick on the disabled hiprio queue or a nonexistent queue is ignored.
    fs.process_queue(0);
    fs.process_queue(7);
    fs.reset();
    assert!(!fs.is_activated());
    assert_eq!(Arc::strong_count(&irq), 1, "reset released the interrupt");
}

// ---------------------------------------------------------------------------------------
// Session.
// ---------------------------------------------------------------------------------------

#[test]
fn init_negotiates_and_gates_other_requests() {
    let mut g = Guest::new(false);
    // Before INIT, nothing but INIT works.
    assert_eq!(g.lookup(ROOT, "x").unwrap_err(), libc::EIO);
    // Too old.
    let r = g.call(o::INIT, 0, &B::default().u32(7).u32(20).u32(0).u32(0).0);
    assert_eq!(r.error, -libc::EPROTO);
    // A newer major version gets our major back, and no session yet.
    let r = g.call(o::INIT, 0, &B::default().u32(8).u32(0).u32(0).u32(0).0);
    assert_eq!(r.error, 0);
    assert_eq!(u32_at(&r.data, 0), 7);
    assert_eq!(g.lookup(ROOT, "x").unwrap_err(), libc::EIO);

    let flags = abi::init_flags::DO_READDIRPLUS | abi::init_flags::MAX_PAGES | (1 << 16);
    let b = g
        .call(
            o::INIT,
            0,
            &B::default()
                .u32(7)
                .u32(38)
                .u32(0x20000)
                .u32(flags)
                .bytes(&[0; 48])
                .0,
        )
        .ok()
        .unwrap();
    assert_eq!(b.len(), 64);
    assert_eq!(u32_at(&b, 0), 7);
    assert_eq!(u32_at(&b, 4), 31, "our minor version");
    assert_eq!(u32_at(&b, 8), 0x20000, "max_readahead echoed");
    // Only flags both sides have; not WRITEBACK_CACHE (1 << 16).
    assert_eq!(
        u32_at(&b, 12),
        abi::init_flags::DO_READDIRPLUS | abi::init_flags::MAX_PAGES
    );
    assert_eq!(u32_at(&b, 20), passthrough::MAX_IO as u32, "max_write");
    assert_eq!(u16::from_le_bytes([b[28], b[29]]), 256, "max_pages");
    // An older minor version is echoed.
    let b = g
        .call(o::INIT, 0, &B::default().u32(7).u32(27).u32(0).u32(0).0)
        .ok()
        .unwrap();
    assert_eq!(u32_at(&b, 4), 27);
    assert_eq!(g.lookup(ROOT, "x").unwrap_err(), libc::ENOENT, "session up");

    // DESTROY ends the session and drops the guest's inodes and handles.
    std::fs::write(g.path("f"), b"x").unwrap();
    let e = g.lookup(ROOT, "f").unwrap();
    let _fh = g.open(e.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(g.fs.server.fs().handle_count(), 1);
    assert_eq!(g.call(o::DESTROY, 0, &[]).error, 0);
    assert_eq!(g.fs.server.fs().handle_count(), 0);
    assert_eq!(g.fs.server.fs().inode_count(), 1);
    assert_eq!(g.lookup(ROOT, "f").unwrap_err(), libc::EIO);
}

#[test]
fn unknown_and_unsupported_opcodes_get_enosys() {
    let mut g = Guest::init(false);
    for op in [
        o::GETLK,
        o::SETLK,
        o::IOCTL,
        o::POLL,
        o::BMAP,
        o::SETUPMAPPING,
        o::COPY_FILE_RANGE,
        7,
        4096,
        999_999,
    ] {
        assert_eq!(
            g.call(op, ROOT, &[0; 16]).error,
            -libc::ENOSYS,
            "opcode {op}"
        );
    }
}

#[test]
fn reset_drops_session_state() {
    let mut g = Guest::init(false);
    std::fs::write(g.path("f"), b"x").unwrap();
    let e = g.lookup(ROOT, "f").unwrap();
    g.open(e.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(g.fs.server.fs().inode_count(), 2);
    g.fs.reset();
    assert_eq!(g.fs.server.fs().inode_count(), 1);
    assert_eq!(g.fs.server.fs().handle_count(), 0);
    assert!(!g.fs.is_activated());
}

// ---------------------------------------------------------------------------------------
// Round trips checked on the host.
// ---------------------------------------------------------------------------------------

#[test]
fn create_write_read_round_trip() {
    let mut g = Guest::init(false);
    let (e, fh) = g.create(ROOT, "hello.txt", O_RDWR, 0o640).unwrap();
    assert_eq!(e.mode, libc::S_IFREG | 0o640, "exact mode, no host umask");
    assert_eq!(e.size, 0);
    let host = std::fs::metadata(g.path("hello.txt")).unwrap();
    assert_eq!(host.mode(), libc::S_IFREG | 0o640);
    assert_eq!(host.ino(), e.ino);
    if is_root() {
        assert_eq!(
            (host.uid(), host.gid()),
            (UID, GID),
            "caller owns new files"
        );
        assert_eq!((e.uid, e.gid), (UID, GID));
    }

    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    assert_eq!(g.write(e.nodeid, fh, 0, &data).unwrap(), data.len() as u32);
    assert_eq!(g.write(e.nodeid, fh, 300_000, b"tail").unwrap(), 4);
    let on_host = std::fs::read(g.path("hello.txt")).unwrap();
    assert_eq!(&on_host[..300_000], &data[..]);
    assert_eq!(&on_host[300_000..], b"tail");

    assert_eq!(g.read(e.nodeid, fh, 0, 300_004).unwrap(), on_host);
    assert_eq!(
        g.read(e.nodeid, fh, 299_998, 100).unwrap(),
        [&data[299_998..], b"tail"].concat()
    );
    assert!(
        g.read(e.nodeid, fh, 1 << 30, 100).unwrap().is_empty(),
        "EOF"
    );
    assert_eq!(g.getattr(e.nodeid).unwrap().1, 300_004);

    // FLUSH, FSYNC (both flavours), RELEASE; the handle is gone afterwards.
    let flush = B::default().u64(fh).u32(0).u32(0).u64(0);
    assert_eq!(g.call(o::FLUSH, e.nodeid, &flush.0).error, 0);
    for flags in [0, 1] {
        let body = B::default().u64(fh).u32(flags).u32(0);
        assert_eq!(g.call(o::FSYNC, e.nodeid, &body.0).error, 0);
    }
    g.release(e.nodeid, fh, false).unwrap();
    assert_eq!(g.read(e.nodeid, fh, 0, 10).unwrap_err(), libc::EBADF);
    assert_eq!(g.release(e.nodeid, fh, false).unwrap_err(), libc::EBADF);

    // Re-open read-only: writes fail on the host side with EBADF.
    let fh = g.open(e.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(g.read(e.nodeid, fh, 0, 5).unwrap(), &data[..5]);
    assert_eq!(g.write(e.nodeid, fh, 0, b"x").unwrap_err(), libc::EBADF);
    // OPEN with O_TRUNC truncates.
    let fh2 = g.open(e.nodeid, libc::O_WRONLY | libc::O_TRUNC).unwrap();
    assert_eq!(std::fs::metadata(g.path("hello.txt")).unwrap().len(), 0);
    assert_ne!(fh, fh2);
}

#[test]
fn create_existing_and_exclusive() {
    let mut g = Guest::init(false);
    std::fs::write(g.path("f"), b"keep").unwrap();
    std::fs::set_permissions(g.path("f"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        g.create(ROOT, "f", O_RDWR | libc::O_EXCL, 0o644)
            .unwrap_err(),
        libc::EEXIST
    );
    // Without O_EXCL an existing file is opened, its mode and owner left alone.
    let (e, fh) = g.create(ROOT, "f", O_RDWR, 0o644).unwrap();
    assert_eq!(e.mode, libc::S_IFREG | 0o600);
    assert_eq!(g.read(e.nodeid, fh, 0, 10).unwrap(), b"keep");
    // CREATE on a directory is refused.
    std::fs::create_dir(g.path("d")).unwrap();
    assert_eq!(
        g.create(ROOT, "d", O_RDWR, 0o644).unwrap_err(),
        libc::EISDIR
    );
}

#[test]
fn lookup_getattr_and_hard_link_identity() {
    let mut g = Guest::init(false);
    std::fs::create_dir(g.path("sub")).unwrap();
    std::fs::write(g.path("sub/a"), b"12345").unwrap();
    let sub = g.lookup(ROOT, "sub").unwrap();
    assert_eq!(sub.mode & libc::S_IFMT, libc::S_IFDIR);
    let a = g.lookup(sub.nodeid, "a").unwrap();
    assert_eq!(a.size, 5);
    assert_eq!(a.ino, std::fs::metadata(g.path("sub/a")).unwrap().ino());
    assert_eq!(g.lookup(sub.nodeid, "missing").unwrap_err(), libc::ENOENT);
    // Looking up a file as a directory.
    assert_eq!(g.lookup(a.nodeid, "x").unwrap_err(), libc::ENOTDIR);
    // Same inode, same node id.
    assert_eq!(g.lookup(sub.nodeid, "a").unwrap().nodeid, a.nodeid);
    // LINK: the new name is the same node, nlink 2 on the host.
    let l = g.link(a.nodeid, ROOT, "a-link").unwrap();
    assert_eq!(l.nodeid, a.nodeid);
    assert_eq!(l.nlink, 2);
    assert_eq!(std::fs::metadata(g.path("a-link")).unwrap().ino(), a.ino);
    // Linking a directory is refused; linking an unknown node too.
    assert_eq!(
        g.link(sub.nodeid, ROOT, "dir-link").unwrap_err(),
        libc::EPERM
    );
    assert_eq!(g.link(999, ROOT, "nope").unwrap_err(), libc::EBADF);
    assert_eq!(g.getattr(999).unwrap_err(), libc::EBADF);
    let (ino, size, mode, ..) = g.getattr(a.nodeid).unwrap();
    assert_eq!((ino, size, mode & libc::S_IFMT), (a.ino, 5, libc::S_IFREG));
}

#[test]
fn forget_and_batch_forget_release_inodes() {
    let mut g = Guest::init(false);
    for n in ["a", "b", "c"] {
        std::fs::write(g.path(n), b"").unwrap();
    }
    let a = g.lookup(ROOT, "a").unwrap();
    g.lookup(ROOT, "a").unwrap();
    let b = g.lookup(ROOT, "b").unwrap();
    let c = g.lookup(ROOT, "c").unwrap();
    assert_eq!(g.fs.server.fs().inode_count(), 4);
    g.forget(a.nodeid, 1);
    assert_eq!(g.fs.server.fs().inode_count(), 4, "one lookup of a left");
    g.forget(a.nodeid, 1);
    assert_eq!(g.fs.server.fs().inode_count(), 3);
    assert_eq!(g.getattr(a.nodeid).unwrap_err(), libc::EBADF);
    // Forgetting the root or an unknown node is harmless.
    g.forget(ROOT, 100);
    g.forget(12345, 1);
    assert!(g.getattr(ROOT).is_ok());

    g.unique += 1;
    let body = B::default()
        .u32(2)
        .u32(0)
        .u64(b.nodeid)
        .u64(1)
        .u64(c.nodeid)
        .u64(1);
    let req = request(o::BATCH_FORGET, g.unique, 0, &body.0);
    g.mem.write_slice(&req, GuestAddress(REQ)).unwrap();
    assert_eq!(
        g.run_chain(HIPRIO_QUEUE, &[D(REQ, req.len() as u32, false)]),
        Some(0)
    );
    assert_eq!(g.fs.server.fs().inode_count(), 1);
    // A new lookup gets a fresh node id (ids are never reused).
    assert!(g.lookup(ROOT, "a").unwrap().nodeid > c.nodeid);
    // INTERRUPT is accepted and not answered.
    g.unique += 1;
    let req = request(o::INTERRUPT, g.unique, 0, &B::default().u64(1).0);
    g.mem.write_slice(&req, GuestAddress(REQ)).unwrap();
    assert_eq!(
        g.run_chain(HIPRIO_QUEUE, &[D(REQ, req.len() as u32, false)]),
        Some(0)
    );
}

#[test]
fn mkdir_readdir_and_readdirplus() {
    let mut g = Guest::init(false);
    let d = g.mkdir(ROOT, "dir", 0o750).unwrap();
    assert_eq!(d.mode, libc::S_IFDIR | 0o750);
    assert_eq!(
        std::fs::metadata(g.path("dir")).unwrap().mode(),
        libc::S_IFDIR | 0o750
    );
    if is_root() {
        assert_eq!(d.uid, UID);
    }
    assert_eq!(g.mkdir(ROOT, "dir", 0o750).unwrap_err(), libc::EEXIST);
    let mut want = vec![".".to_string(), "..".to_string()];
    for i in 0..40 {
        let name = format!("entry-with-a-longish-name-{i:03}");
        std::fs::write(g.path(&format!("dir/{name}")), b"x").unwrap();
        want.push(name);
    }
    std::fs::create_dir(g.path("dir/subdir")).unwrap();
    want.push("subdir".into());
    want.sort();

    // Small buffers force many READDIR calls resuming at the returned offsets.
    let entries = g.list(d.nodeid, false, 200);
    let mut names: Vec<_> = entries.iter().map(|e| e.0.clone()).collect();
    names.sort();
    assert_eq!(names, want);
    let sub = entries.iter().find(|e| e.0 == "subdir").unwrap();
    assert_eq!(sub.2, u32::from(libc::DT_DIR));
    assert_eq!(
        sub.1,
        std::fs::metadata(g.path("dir/subdir")).unwrap().ino()
    );
    let f = entries.iter().find(|e| e.0.ends_with("007")).unwrap();
    assert_eq!(f.2, u32::from(libc::DT_REG));

    // READDIRPLUS: same names, node ids for all but "." and "..", each one a lookup.
    let before = g.fs.server.fs().inode_count();
    let plus = g.list(d.nodeid, true, 700);
    let mut names: Vec<_> = plus.iter().map(|e| e.0.clone()).collect();
    names.sort();
    assert_eq!(names, want);
    for (name, _, _, nodeid) in &plus {
        if name == "." || name == ".." {
            assert_eq!(*nodeid, 0);
        } else {
            assert_ne!(*nodeid, 0, "{name}");
        }
    }
    assert_eq!(g.fs.server.fs().inode_count(), before + 41);
    let sub_node = plus.iter().find(|e| e.0 == "subdir").unwrap().3;
    assert_eq!(g.lookup(d.nodeid, "subdir").unwrap().nodeid, sub_node);

    // A buffer too small for one entry returns nothing rather than a partial entry.
    let fh = g.opendir(d.nodeid).unwrap();
    assert!(g
        .read_op(o::READDIR, d.nodeid, fh, 0, 20)
        .unwrap()
        .is_empty());
    // READDIR on a file handle, READ on a directory handle, unknown handles.
    assert_eq!(g.read(d.nodeid, fh, 0, 10).unwrap_err(), libc::EISDIR);
    let body = B::default().u64(fh).u32(0).u32(0);
    assert_eq!(g.call(o::FSYNCDIR, d.nodeid, &body.0).error, 0);
    g.release(d.nodeid, fh, true).unwrap();
    assert_eq!(
        g.read_op(o::READDIR, d.nodeid, fh, 0, 4096).unwrap_err(),
        libc::EBADF
    );
    let file = g.lookup(d.nodeid, "entry-with-a-longish-name-000").unwrap();
    let ffh = g.open(file.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(
        g.read_op(o::READDIR, d.nodeid, ffh, 0, 4096).unwrap_err(),
        libc::ENOTDIR
    );
    assert_eq!(g.opendir(file.nodeid).unwrap_err(), libc::ENOTDIR);
    assert_eq!(g.open(d.nodeid, libc::O_RDONLY).unwrap_err(), libc::EISDIR);

    // RMDIR of a non-empty directory fails; of an empty one works.
    assert_eq!(g.rmdir(ROOT, "dir").unwrap_err(), libc::ENOTEMPTY);
    assert_eq!(
        g.rmdir(d.nodeid, "entry-with-a-longish-name-000")
            .unwrap_err(),
        libc::ENOTDIR
    );
    g.rmdir(d.nodeid, "subdir").unwrap();
    assert!(!g.path("dir/subdir").exists());
}

#[test]
fn rename_rename2_unlink() {
    let mut g = Guest::init(false);
    std::fs::create_dir(g.path("a")).unwrap();
    std::fs::create_dir(g.path("b")).unwrap();
    std::fs::write(g.path("a/one"), b"1").unwrap();
    std::fs::write(g.path("b/two"), b"2").unwrap();
    let a = g.lookup(ROOT, "a").unwrap().nodeid;
    let b = g.lookup(ROOT, "b").unwrap().nodeid;

    // RENAME across directories.
    let body = B::default().u64(b).s("one").s("moved");
    assert_eq!(g.call(o::RENAME, a, &body.0).error, 0);
    assert!(!g.path("a/one").exists());
    assert_eq!(std::fs::read(g.path("b/moved")).unwrap(), b"1");
    // RENAME_NOREPLACE refuses to clobber; RENAME_EXCHANGE swaps.
    assert_eq!(
        g.rename2(b, "moved", b, "two", libc::RENAME_NOREPLACE)
            .unwrap_err(),
        libc::EEXIST
    );
    g.rename2(b, "moved", b, "two", libc::RENAME_EXCHANGE)
        .unwrap();
    assert_eq!(std::fs::read(g.path("b/two")).unwrap(), b"1");
    assert_eq!(std::fs::read(g.path("b/moved")).unwrap(), b"2");
    // Unknown flags, missing source, newdir not a directory, unknown newdir.
    assert_eq!(
        g.rename2(b, "two", b, "x", 1 << 7).unwrap_err(),
        libc::EINVAL
    );
    assert_eq!(g.rename2(b, "nope", b, "x", 0).unwrap_err(), libc::ENOENT);
    let f = g.lookup(b, "two").unwrap().nodeid;
    assert_eq!(g.rename2(b, "two", f, "x", 0).unwrap_err(), libc::ENOTDIR);
    assert_eq!(g.rename2(b, "two", 4242, "x", 0).unwrap_err(), libc::EBADF);
    // Plain overwrite.
    g.rename2(b, "two", b, "moved", 0).unwrap();
    assert_eq!(std::fs::read(g.path("b/moved")).unwrap(), b"1");
    assert!(!g.path("b/two").exists());

    g.unlink(b, "moved").unwrap();
    assert!(!g.path("b/moved").exists());
    assert_eq!(g.unlink(b, "moved").unwrap_err(), libc::ENOENT);
    assert_eq!(g.unlink(ROOT, "a").unwrap_err(), libc::EISDIR);
    // The node id of an unlinked file stays usable until forgotten (open-unlinked files).
    assert!(g.getattr(f).is_ok());
}

#[test]
fn symlink_and_readlink() {
    let mut g = Guest::init(false);
    let l = g.symlink(ROOT, "link", "some/where/../else").unwrap();
    assert_eq!(l.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(
        std::fs::read_link(g.path("link")).unwrap(),
        Path::new("some/where/../else")
    );
    if is_root() {
        let m = std::fs::symlink_metadata(g.path("link")).unwrap();
        assert_eq!((m.uid(), m.gid()), (UID, GID));
    }
    assert_eq!(
        g.call(o::READLINK, l.nodeid, &[]).ok().unwrap(),
        b"some/where/../else"
    );
    std::fs::write(g.path("f"), b"").unwrap();
    let f = g.lookup(ROOT, "f").unwrap();
    assert_eq!(g.call(o::READLINK, f.nodeid, &[]).error, -libc::EINVAL);
    assert_eq!(g.symlink(ROOT, "link", "x").unwrap_err(), libc::EEXIST);
    // A symlink is never opened on the host.
    assert_eq!(g.open(l.nodeid, libc::O_RDONLY).unwrap_err(), libc::ELOOP);
}

#[test]
fn mknod_fifo_yes_device_nodes_never() {
    let mut g = Guest::init(false);
    let body = B::default()
        .u32(libc::S_IFIFO | 0o644)
        .u32(0)
        .u32(0)
        .u32(0)
        .s("fifo");
    let e = entry(&g.call(o::MKNOD, ROOT, &body.0).ok().unwrap());
    assert_eq!(e.mode, libc::S_IFIFO | 0o644);
    let ft = std::fs::symlink_metadata(g.path("fifo"))
        .unwrap()
        .file_type();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&ft));
    // Opening a FIFO on the host would block the event loop; the guest kernel handles it.
    assert_eq!(g.open(e.nodeid, libc::O_RDONLY).unwrap_err(), libc::ENXIO);
    // A regular file through MKNOD.
    let body = B::default()
        .u32(libc::S_IFREG | 0o600)
        .u32(0)
        .u32(0)
        .u32(0)
        .s("plain");
    let e = entry(&g.call(o::MKNOD, ROOT, &body.0).ok().unwrap());
    assert_eq!(e.mode, libc::S_IFREG | 0o600);
    // A bogus file type.
    let body = B::default()
        .u32(libc::S_IFDIR | 0o600)
        .u32(0)
        .u32(0)
        .u32(0)
        .s("bad");
    assert_eq!(g.call(o::MKNOD, ROOT, &body.0).error, -libc::EINVAL);
    // Device nodes are refused before any host call, root or not: the host /dev/null
    // (1:3) and /dev/sda (8:0).
    for (typ, rdev, name) in [
        (libc::S_IFCHR, 0x103, "null"),
        (libc::S_IFBLK, 0x800, "sda"),
    ] {
        let body = B::default()
            .u32(typ | 0o666)
            .u32(rdev)
            .u32(0)
            .u32(0)
            .s(name);
        assert_eq!(
            g.call(o::MKNOD, ROOT, &body.0).error,
            -libc::EPERM,
            "{name}"
        );
        assert!(
            std::fs::symlink_metadata(g.path(name)).is_err(),
            "{name} created"
        );
    }
    // CREATE with a device type in the mode makes a regular file or fails; never a node.
    let body = B::default()
        .u32(O_RDWR as u32)
        .u32(0o20666)
        .u32(0)
        .u32(0)
        .s("null");
    if g.call(o::CREATE, ROOT, &body.0).error == 0 {
        let m = std::fs::symlink_metadata(g.path("null")).unwrap();
        assert!(m.file_type().is_file(), "CREATE made {:?}", m.file_type());
    }
}

#[test]
fn setattr_mode_size_times_owner() {
    let mut g = Guest::init(false);
    std::fs::write(g.path("f"), b"0123456789").unwrap();
    let e = g.lookup(ROOT, "f").unwrap();
    let b = g
        .setattr(e.nodeid, abi::fattr::MODE, |s| {
            s.mode = libc::S_IFREG | 0o4751
        })
        .unwrap();
    assert_eq!(b.len(), 104);
    assert_eq!(attr_at(&b, 16).2, libc::S_IFREG | 0o4751);
    assert_eq!(
        std::fs::metadata(g.path("f")).unwrap().mode(),
        libc::S_IFREG | 0o4751
    );
    // Truncate by inode, then by handle.
    g.setattr(e.nodeid, abi::fattr::SIZE, |s| s.size = 4)
        .unwrap();
    assert_eq!(std::fs::read(g.path("f")).unwrap(), b"0123");
    let fh = g.open(e.nodeid, O_RDWR).unwrap();
    let b = g
        .setattr(e.nodeid, abi::fattr::SIZE | abi::fattr::FH, |s| {
            s.size = 8192;
            s.fh = fh;
        })
        .unwrap();
    assert_eq!(attr_at(&b, 16).1, 8192);
    assert_eq!(std::fs::metadata(g.path("f")).unwrap().len(), 8192);
    // Times: explicit values, then "now" for mtime only.
    g.setattr(e.nodeid, abi::fattr::ATIME | abi::fattr::MTIME, |s| {
        s.atime = 1_000_000_000;
        s.atimensec = 5;
        s.mtime = 1_100_000_000;
        s.mtimensec = 7;
    })
    .unwrap();
    let m = std::fs::metadata(g.path("f")).unwrap();
    assert_eq!((m.atime(), m.atime_nsec()), (1_000_000_000, 5));
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_100_000_000, 7));
    g.setattr(e.nodeid, abi::fattr::MTIME | abi::fattr::MTIME_NOW, |_| {})
        .unwrap();
    let m = std::fs::metadata(g.path("f")).unwrap();
    assert_eq!(m.atime(), 1_000_000_000, "atime untouched");
    assert!(m.mtime() > 1_600_000_000, "mtime is now");
    // Directories cannot be truncated.
    std::fs::create_dir(g.path("d")).unwrap();
    let d = g.lookup(ROOT, "d").unwrap();
    assert_eq!(
        g.setattr(d.nodeid, abi::fattr::SIZE, |s| s.size = 0)
            .unwrap_err(),
        libc::EISDIR
    );
    if is_root() {
        g.setattr(e.nodeid, abi::fattr::UID | abi::fattr::GID, |s| {
            s.uid = 4321;
            s.gid = 8765;
        })
        .unwrap();
        let m = std::fs::metadata(g.path("f")).unwrap();
        assert_eq!((m.uid(), m.gid()), (4321, 8765));
        g.setattr(e.nodeid, abi::fattr::GID, |s| s.gid = 5).unwrap();
        let m = std::fs::metadata(g.path("f")).unwrap();
        assert_eq!((m.uid(), m.gid()), (4321, 5), "uid unchanged");
    }
}

#[test]
fn xattrs_round_trip() {
    let mut g = Guest::init(false);
    std::fs::write(g.path("f"), b"").unwrap();
    let f = g.lookup(ROOT, "f").unwrap().nodeid;
    let root = ROOT;
    for node in [f, root] {
        let set = B::default().u32(5).u32(0).s("user.capsa").bytes(b"v\0lue");
        let r = g.call(o::SETXATTR, node, &set.0);
        if r.error == -libc::EOPNOTSUPP {
            eprintln!("skipping: no user xattrs on the test filesystem");
            return;
        }
        assert_eq!(r.error, 0);
        // Size query, then the value.
        let b = g
            .call(
                o::GETXATTR,
                node,
                &B::default().u32(0).u32(0).s("user.capsa").0,
            )
            .ok()
            .unwrap();
        assert_eq!(b.len(), 8);
        assert_eq!(u32_at(&b, 0), 5);
        let b = g
            .call(
                o::GETXATTR,
                node,
                &B::default().u32(64).u32(0).s("user.capsa").0,
            )
            .ok()
            .unwrap();
        assert_eq!(b, b"v\0lue");
        // Buffer too small.
        let r = g.call(
            o::GETXATTR,
            node,
            &B::default().u32(2).u32(0).s("user.capsa").0,
        );
        assert_eq!(r.error, -libc::ERANGE);
        let r = g.call(
            o::GETXATTR,
            node,
            &B::default().u32(64).u32(0).s("user.nope").0,
        );
        assert_eq!(r.error, -libc::ENODATA);
        // XATTR_CREATE on an existing name.
        let set = B::default()
            .u32(1)
            .u32(libc::XATTR_CREATE as u32)
            .s("user.capsa")
            .bytes(b"x");
        assert_eq!(g.call(o::SETXATTR, node, &set.0).error, -libc::EEXIST);
        // LISTXATTR: size, then names.
        let b = g
            .call(o::LISTXATTR, node, &B::default().u32(0).u32(0).0)
            .ok()
            .unwrap();
        let n = u32_at(&b, 0);
        assert!(n as usize >= "user.capsa\0".len());
        let b = g
            .call(o::LISTXATTR, node, &B::default().u32(n).u32(0).0)
            .ok()
            .unwrap();
        assert!(b.split(|&c| c == 0).any(|s| s == b"user.capsa"));
        assert_eq!(
            g.call(o::REMOVEXATTR, node, &B::default().s("user.capsa").0)
                .error,
            0
        );
        assert_eq!(
            g.call(o::REMOVEXATTR, node, &B::default().s("user.capsa").0)
                .error,
            -libc::ENODATA
        );
    }
    // Symlinks: reported as having none; setting is refused.
    let l = g.symlink(ROOT, "l", "f").unwrap().nodeid;
    let r = g.call(
        o::GETXATTR,
        l,
        &B::default().u32(64).u32(0).s("user.capsa").0,
    );
    assert_eq!(r.error, -libc::ENODATA);
    let b = g
        .call(o::LISTXATTR, l, &B::default().u32(0).u32(0).0)
        .ok()
        .unwrap();
    assert_eq!(u32_at(&b, 0), 0);
    let set = B::default().u32(1).u32(0).s("user.capsa").bytes(b"x");
    assert_eq!(g.call(o::SETXATTR, l, &set.0).error, -libc::EPERM);
}

#[test]
fn statfs_access_lseek_fallocate() {
    let mut g = Guest::init(false);
    let b = g.call(o::STATFS, ROOT, &[]).ok().unwrap();
    assert_eq!(b.len(), 80);
    let host = sys::fstatvfs(std::fs::File::open(&g.root).unwrap().as_fd()).unwrap();
    assert_eq!(u64_at(&b, 0), host.f_blocks);
    assert_eq!(u32_at(&b, 40), host.f_bsize as u32);
    assert_eq!(u32_at(&b, 44), host.f_namemax as u32);

    std::fs::write(g.path("f"), b"").unwrap();
    std::fs::set_permissions(g.path("f"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let e = g.lookup(ROOT, "f").unwrap();
    let access = |g: &mut Guest, uid: u32, gid: u32, mask: u32| {
        g.unique += 1;
        let mut req = request(
            o::ACCESS,
            g.unique,
            e.nodeid,
            &B::default().u32(mask).u32(0).0,
        );
        req[24..28].copy_from_slice(&uid.to_le_bytes());
        req[28..32].copy_from_slice(&gid.to_le_bytes());
        g.call_raw(&req, 64).unwrap().error
    };
    let (owner, group) = (e.uid, e.gid);
    assert_eq!(
        access(&mut g, owner.wrapping_add(1), group, libc::R_OK as u32),
        0,
        "group r"
    );
    assert_eq!(
        access(&mut g, owner.wrapping_add(1), group, libc::W_OK as u32),
        if owner.wrapping_add(1) == 0 {
            0
        } else {
            -libc::EACCES
        }
    );
    assert_eq!(
        access(&mut g, 0, 0, libc::X_OK as u32),
        -libc::EACCES,
        "no x bit at all"
    );
    assert_eq!(access(&mut g, 0, 0, (libc::R_OK | libc::W_OK) as u32), 0);
    assert_eq!(access(&mut g, 77, 77, libc::F_OK as u32), 0);
    assert_eq!(
        access(&mut g, 77, 77, libc::R_OK as u32),
        -libc::EACCES,
        "others: none"
    );

    let fh = g.open(e.nodeid, O_RDWR).unwrap();
    let fa = B::default().u64(fh).u64(0).u64(1 << 20).u32(0).u32(0);
    assert_eq!(g.call(o::FALLOCATE, e.nodeid, &fa.0).error, 0);
    assert_eq!(std::fs::metadata(g.path("f")).unwrap().len(), 1 << 20);
    g.write(e.nodeid, fh, 512 * 1024, &[1; 4096]).unwrap();
    let seek = |g: &mut Guest, off: u64, whence: i32| {
        let body = B::default().u64(fh).u64(off).u32(whence as u32).u32(0);
        g.call(o::LSEEK, e.nodeid, &body.0)
            .ok()
            .map(|b| u64_at(&b, 0))
    };
    assert_eq!(seek(&mut g, 0, libc::SEEK_END).unwrap(), 1 << 20);
    assert_eq!(seek(&mut g, 7, libc::SEEK_SET).unwrap(), 7);
    assert!(seek(&mut g, 0, libc::SEEK_DATA).unwrap() <= 512 * 1024);
    assert_eq!(seek(&mut g, 0, libc::SEEK_CUR).unwrap_err(), libc::EINVAL);
    assert_eq!(
        seek(&mut g, 2 << 20, libc::SEEK_DATA).unwrap_err(),
        libc::ENXIO
    );
}

use std::os::fd::AsFd;

// ---------------------------------------------------------------------------------------
// Confinement.
// ---------------------------------------------------------------------------------------

/// A share inside an outer directory that also holds a file the guest must not reach.
struct Escape {
    g: Guest,
    outer: PathBuf,
}

impl Escape {
    fn new() -> Self {
        let tmp = TempDir::new().unwrap();
        let outer = tmp.as_path().to_owned();
        std::fs::write(outer.join("secret"), b"host secret").unwrap();
        let share = outer.join("share");
        std::fs::create_dir(&share).unwrap();
        std::fs::create_dir(share.join("sub")).unwrap();
        let mut g = Guest::with_dir(tmp, share, false);
        g.do_init();
        Escape { g, outer }
    }

    fn secret(&self) -> PathBuf {
        self.outer.join("secret")
    }
}

#[test]
fn dotdot_and_slash_names_are_refused() {
    let mut e = Escape::new();
    let g = &mut e.g;
    for name in [
        "..",
        ".",
        "../secret",
        "../../secret",
        "/etc/passwd",
        "a/b",
        "",
    ] {
        assert_eq!(
            g.lookup(ROOT, name).unwrap_err(),
            libc::EINVAL,
            "lookup {name:?}"
        );
        assert_eq!(
            g.mkdir(ROOT, name, 0o755).unwrap_err(),
            libc::EINVAL,
            "mkdir {name:?}"
        );
        assert_eq!(
            g.create(ROOT, name, O_RDWR, 0o644).unwrap_err(),
            libc::EINVAL
        );
        assert_eq!(g.unlink(ROOT, name).unwrap_err(), libc::EINVAL);
    }
    // ".." from a subdirectory is refused too (not just at the root).
    std::fs::create_dir(g.path("d")).unwrap();
    let d = g.lookup(ROOT, "d").unwrap().nodeid;
    assert_eq!(g.lookup(d, "..").unwrap_err(), libc::EINVAL);
    assert_eq!(std::fs::read(e.secret()).unwrap(), b"host secret");
}

#[test]
fn symlinks_out_of_the_share_are_not_followed() {
    let mut e = Escape::new();
    let secret = e.secret();
    let g = &mut e.g;
    std::os::unix::fs::symlink("/etc", g.path("etc-abs")).unwrap();
    std::os::unix::fs::symlink("../..", g.path("up")).unwrap();
    std::os::unix::fs::symlink(&secret, g.path("secret-abs")).unwrap();
    std::os::unix::fs::symlink("../../secret", g.path("secret-rel")).unwrap();
    std::os::unix::fs::symlink("/proc/self/root", g.path("proc-root")).unwrap();
    std::os::unix::fs::symlink("/proc/self/cwd", g.path("proc-cwd")).unwrap();

    for link in [
        "etc-abs",
        "up",
        "secret-abs",
        "secret-rel",
        "proc-root",
        "proc-cwd",
    ] {
        let l = g.lookup(ROOT, link).unwrap();
        assert_eq!(
            l.mode & libc::S_IFMT,
            libc::S_IFLNK,
            "{link} is the link itself"
        );
        // Nothing can be looked up, listed, opened or changed through it.
        assert_eq!(g.lookup(l.nodeid, "passwd").unwrap_err(), libc::ENOTDIR);
        assert_eq!(g.lookup(l.nodeid, "secret").unwrap_err(), libc::ENOTDIR);
        assert_eq!(g.opendir(l.nodeid).unwrap_err(), libc::ENOTDIR);
        assert_eq!(g.open(l.nodeid, O_RDWR).unwrap_err(), libc::ELOOP);
        assert_eq!(
            g.create(l.nodeid, "new", O_RDWR, 0o644).unwrap_err(),
            libc::ENOTDIR
        );
        assert_eq!(g.mkdir(l.nodeid, "new", 0o755).unwrap_err(), libc::ENOTDIR);
        assert_eq!(
            g.setattr(l.nodeid, abi::fattr::SIZE, |s| s.size = 0)
                .unwrap_err(),
            libc::EINVAL
        );
        let set = B::default().u32(1).u32(0).s("user.x").bytes(b"x");
        assert_eq!(g.call(o::SETXATTR, l.nodeid, &set.0).error, -libc::EPERM);
        // GETATTR describes the link, not its target.
        let (_, _, mode, ..) = g.getattr(l.nodeid).unwrap();
        assert_eq!(mode & libc::S_IFMT, libc::S_IFLNK);
    }
    // Attribute changes on a link never reach its target (chmod/utimes go through our own
    // /proc/self/fd entry, which names the link itself).
    let before = std::fs::metadata(&secret).unwrap();
    let l = g.lookup(ROOT, "secret-abs").unwrap();
    let _ = g.setattr(l.nodeid, abi::fattr::MODE, |s| s.mode = 0o777);
    let _ = g.setattr(l.nodeid, abi::fattr::ATIME | abi::fattr::MTIME, |s| {
        s.atime = 1;
        s.mtime = 1;
    });
    if is_root() {
        let _ = g.setattr(l.nodeid, abi::fattr::UID | abi::fattr::GID, |s| {
            s.uid = 4321;
            s.gid = 4321;
        });
    }
    let after = std::fs::metadata(&secret).unwrap();
    assert_eq!(
        (
            after.mode(),
            after.mtime(),
            after.atime(),
            after.uid(),
            after.gid()
        ),
        (
            before.mode(),
            before.mtime(),
            before.atime(),
            before.uid(),
            before.gid()
        ),
        "target untouched"
    );
    // CREATE over an existing symlink must not write through it.
    assert_eq!(
        g.create(ROOT, "secret-abs", O_RDWR | libc::O_TRUNC, 0o644)
            .unwrap_err(),
        libc::ELOOP
    );
    assert_eq!(
        g.create(ROOT, "secret-rel", O_RDWR, 0o644).unwrap_err(),
        libc::ELOOP
    );
    // A guest-made symlink to the outside is stored verbatim and equally inert.
    let l = g.symlink(ROOT, "mine", "../../secret").unwrap();
    assert_eq!(g.open(l.nodeid, libc::O_RDONLY).unwrap_err(), libc::ELOOP);
    // LINK of a symlink links the symlink, not its target.
    let h = g.link(l.nodeid, ROOT, "mine2").unwrap();
    assert_eq!(h.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(std::fs::read(&secret).unwrap(), b"host secret");
    assert_eq!(
        std::fs::metadata(&secret).unwrap().nlink(),
        1,
        "no hard link to the outside file"
    );
}

#[test]
fn rename_and_link_cannot_target_outside() {
    let mut e = Escape::new();
    let outer = e.outer.clone();
    let g = &mut e.g;
    std::fs::write(g.path("f"), b"data").unwrap();
    let f = g.lookup(ROOT, "f").unwrap().nodeid;
    std::os::unix::fs::symlink(&outer, g.path("outer-link")).unwrap();
    let ol = g.lookup(ROOT, "outer-link").unwrap().nodeid;
    // Names with '/' or "..".
    for new in ["../f", "../../f", "/tmp/f", "sub/../../f"] {
        assert_eq!(
            g.rename2(ROOT, "f", ROOT, new, 0).unwrap_err(),
            libc::EINVAL,
            "{new}"
        );
        assert_eq!(g.link(f, ROOT, new).unwrap_err(), libc::EINVAL, "{new}");
    }
    assert_eq!(
        g.rename2(ROOT, "../secret", ROOT, "stolen", 0).unwrap_err(),
        libc::EINVAL
    );
    // Through a symlink node as the new directory.
    assert_eq!(g.rename2(ROOT, "f", ol, "f", 0).unwrap_err(), libc::ENOTDIR);
    assert_eq!(g.link(f, ol, "f").unwrap_err(), libc::ENOTDIR);
    // An unknown node id as old node or new directory.
    assert_eq!(g.rename2(ROOT, "f", 77, "f", 0).unwrap_err(), libc::EBADF);
    assert_eq!(g.link(77, ROOT, "g").unwrap_err(), libc::EBADF);
    assert!(g.path("f").exists());
    let mut outside: Vec<_> = std::fs::read_dir(&outer)
        .unwrap()
        .map(|d| d.unwrap().file_name().into_string().unwrap())
        .collect();
    outside.sort();
    assert_eq!(outside, ["secret", "share"]);
}

// ---------------------------------------------------------------------------------------
// Read-only mode.
// ---------------------------------------------------------------------------------------

/// Everything about a tree that a guest could change: names, types, contents, modes,
/// owners, sizes, mtimes, symlink targets and xattrs.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let mut desc = format!(
            "mode={:o} uid={} gid={} size={} mtime={}.{} nlink={}",
            m.mode(),
            m.uid(),
            m.gid(),
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.nlink()
        );
        if m.file_type().is_symlink() {
            desc += &format!(" -> {:?}", std::fs::read_link(&p).unwrap());
        } else if m.is_file() {
            desc += &format!(" data={:?}", std::fs::read(&p).unwrap());
            let f = std::fs::File::open(&p).unwrap();
            let mut buf = vec![0u8; 4096];
            let n = sys::flistxattr(&f, &mut buf).unwrap_or(0);
            desc += &format!(" xattrs={:?}", &buf[..n]);
        } else if m.is_dir() {
            for d in std::fs::read_dir(&p).unwrap() {
                stack.push(d.unwrap().path());
            }
        }
        out.insert(p.strip_prefix(root).unwrap().to_owned(), desc);
    }
    out
}

#[test]
fn read_only_share_refuses_every_change() {
    let dir = TempDir::new().unwrap();
    let root = dir.as_path().to_owned();
    std::fs::create_dir(root.join("d")).unwrap();
    std::fs::write(root.join("d/f"), b"original").unwrap();
    std::fs::write(root.join("g"), b"gg").unwrap();
    std::os::unix::fs::symlink("d/f", root.join("l")).unwrap();
    {
        let f = std::fs::File::open(root.join("g")).unwrap();
        let _ = sys::fsetxattr(&f, c"user.keep", b"1", 0);
    }
    let before = snapshot(&root);
    let mut g = Guest::with_dir(dir, root, true);
    g.do_init();

    // Reading works.
    let d = g.lookup(ROOT, "d").unwrap().nodeid;
    let f = g.lookup(d, "f").unwrap().nodeid;
    let gn = g.lookup(ROOT, "g").unwrap().nodeid;
    let fh = g.open(f, libc::O_RDONLY).unwrap();
    assert_eq!(g.read(f, fh, 0, 100).unwrap(), b"original");
    assert_eq!(g.list(ROOT, true, 4096).len(), 5);
    assert_eq!(g.call(o::STATFS, ROOT, &[]).error, 0);

    let erofs = libc::EROFS;
    assert_eq!(g.open(f, O_RDWR).unwrap_err(), erofs);
    assert_eq!(g.open(f, libc::O_WRONLY).unwrap_err(), erofs);
    assert_eq!(
        g.open(f, libc::O_RDONLY | libc::O_TRUNC).unwrap_err(),
        erofs
    );
    assert_eq!(g.write(f, fh, 0, b"evil").unwrap_err(), erofs);
    assert_eq!(g.create(ROOT, "new", O_RDWR, 0o644).unwrap_err(), erofs);
    assert_eq!(g.create(d, "f", libc::O_RDONLY, 0o644).unwrap_err(), erofs);
    assert_eq!(g.mkdir(ROOT, "nd", 0o755).unwrap_err(), erofs);
    let mknod = B::default()
        .u32(libc::S_IFIFO | 0o644)
        .u32(0)
        .u32(0)
        .u32(0)
        .s("p");
    assert_eq!(g.call(o::MKNOD, ROOT, &mknod.0).error, -erofs);
    assert_eq!(g.symlink(ROOT, "s", "x").unwrap_err(), erofs);
    assert_eq!(g.link(f, ROOT, "h").unwrap_err(), erofs);
    assert_eq!(g.unlink(d, "f").unwrap_err(), erofs);
    assert_eq!(g.rmdir(ROOT, "d").unwrap_err(), erofs);
    assert_eq!(g.rename2(ROOT, "g", ROOT, "g2", 0).unwrap_err(), erofs);
    let body = B::default().u64(ROOT).s("g").s("g3");
    assert_eq!(g.call(o::RENAME, ROOT, &body.0).error, -erofs);
    for valid in [
        abi::fattr::MODE,
        abi::fattr::UID,
        abi::fattr::SIZE,
        abi::fattr::MTIME | abi::fattr::MTIME_NOW,
    ] {
        assert_eq!(g.setattr(f, valid, |s| s.mode = 0o777).unwrap_err(), erofs);
    }
    let set = B::default().u32(1).u32(0).s("user.x").bytes(b"x");
    assert_eq!(g.call(o::SETXATTR, gn, &set.0).error, -erofs);
    assert_eq!(
        g.call(o::REMOVEXATTR, gn, &B::default().s("user.keep").0)
            .error,
        -erofs
    );
    let fa = B::default().u64(fh).u64(0).u64(4096).u32(0).u32(0);
    assert_eq!(g.call(o::FALLOCATE, f, &fa.0).error, -erofs);
    let acc = B::default().u32(libc::W_OK as u32).u32(0);
    assert_eq!(g.call(o::ACCESS, f, &acc.0).error, -erofs);
    g.release(f, fh, false).unwrap();

    assert_eq!(snapshot(&g.root), before, "directory unchanged");
}

// ---------------------------------------------------------------------------------------
// Malformed requests and chains.
// ---------------------------------------------------------------------------------------

#[test]
fn malformed_requests_get_einval_or_are_dropped() {
    let mut g = Guest::init(false);
    // Header shorter than 40 bytes: nobody to answer; the chain comes back empty.
    let req = request(o::GETATTR, 5, ROOT, &[0; 16]);
    assert!(g.call_raw(&req[..30], 4096).is_none());
    // Length field larger / smaller than the request.
    let mut bad = req.clone();
    bad[0..4].copy_from_slice(&1000u32.to_le_bytes());
    assert_eq!(g.call_raw(&bad, 4096).unwrap().error, -libc::EINVAL);
    bad[0..4].copy_from_slice(&41u32.to_le_bytes());
    assert_eq!(g.call_raw(&bad, 4096).unwrap().error, -libc::EINVAL);
    // Truncated body.
    let req = request(o::GETATTR, 6, ROOT, &[0; 8]);
    assert_eq!(g.call_raw(&req, 4096).unwrap().error, -libc::EINVAL);
    // Name without a NUL, and a name with '/'.
    let req = request(o::LOOKUP, 7, ROOT, b"etc");
    assert_eq!(g.call_raw(&req, 4096).unwrap().error, -libc::EINVAL);
    let req = request(o::LOOKUP, 8, ROOT, b"a/b\0");
    assert_eq!(g.call_raw(&req, 4096).unwrap().error, -libc::EINVAL);
    // WRITE whose size field disagrees with the data.
    let body = B::default()
        .u64(1)
        .u64(0)
        .u32(100)
        .u32(0)
        .u64(0)
        .u32(0)
        .u32(0)
        .bytes(b"abc");
    let req = request(o::WRITE, 9, ROOT, &body.0);
    assert_eq!(g.call_raw(&req, 4096).unwrap().error, -libc::EINVAL);
    // No room for even an out header: the chain comes back with nothing written.
    let req = request(o::GETATTR, 10, ROOT, &B::default().u32(0).u32(0).u64(0).0);
    assert!(g.call_raw(&req, 8).is_none());
    assert!(g.call_raw(&req, 0).is_none());
    // Room for the header but not the attributes: EIO.
    assert_eq!(g.call_raw(&req, 40).unwrap().error, -libc::EIO);
    // Handle numbers the guest made up.
    assert_eq!(g.read(ROOT, 0xdead, 0, 10).unwrap_err(), libc::EBADF);
    assert_eq!(g.write(ROOT, 0xdead, 0, b"x").unwrap_err(), libc::EBADF);
    // The device still works.
    assert!(g.getattr(ROOT).is_ok());
}

#[test]
fn requests_split_across_descriptors() {
    let mut g = Guest::init(false);
    std::fs::write(g.path("file"), b"split me").unwrap();
    let e = g.lookup(ROOT, "file").unwrap();
    let fh = g.open(e.nodeid, libc::O_RDONLY).unwrap();
    let body = B::default()
        .u64(fh)
        .u64(0)
        .u32(100)
        .u32(0)
        .u64(0)
        .u32(0)
        .u32(0);
    let req = request(o::READ, 77, e.nodeid, &body.0);
    // Request in three pieces (one splits a header field), reply in 3 pieces, one of them
    // splitting the out header.
    let pieces = [
        (REQ, 5usize),
        (REQ + 0x1000, 30),
        (REQ + 0x2000, req.len() - 35),
    ];
    let mut off = 0;
    for (addr, len) in pieces {
        g.mem
            .write_slice(&req[off..off + len], GuestAddress(addr))
            .unwrap();
        off += len;
    }
    let mut descs: Vec<D> = pieces.iter().map(|&(a, l)| D(a, l as u32, false)).collect();
    descs.extend([
        D(REP, 10, true),
        D(REP + 0x1000, 0, true),
        D(REP + 0x2000, 4096, true),
    ]);
    let len = g.run_chain(REQUEST_QUEUE, &descs).unwrap();
    assert_eq!(len, 16 + 8);
    let mut out = read_mem(&g.mem, REP, 10);
    out.extend(read_mem(&g.mem, REP + 0x2000, 14));
    assert_eq!(u32_at(&out, 0), 24);
    assert_eq!(u32_at(&out, 4), 0);
    assert_eq!(u64_at(&out, 8), 77);
    assert_eq!(&out[16..], b"split me");
}

#[test]
fn bad_chains_are_returned_empty() {
    let mut g = Guest::init(false);
    let req = request(o::GETATTR, 1, ROOT, &B::default().u32(0).u32(0).u64(0).0);
    g.mem.write_slice(&req, GuestAddress(REQ)).unwrap();
    // A request buffer reaching past the end of guest memory.
    let len = g.run_chain(
        REQUEST_QUEUE,
        &[D(MEM_SIZE - 8, 56, false), D(REP, 4096, true)],
    );
    assert_eq!(len, Some(0));
    // A reply buffer outside guest memory: nothing is written anywhere.
    let len = g.run_chain(
        REQUEST_QUEUE,
        &[
            D(REQ, req.len() as u32, false),
            D(MEM_SIZE + 0x1000, 4096, true),
        ],
    );
    assert_eq!(len, Some(0));
    // Device-readable after device-writable.
    let len = g.run_chain(
        REQUEST_QUEUE,
        &[D(REP, 4096, true), D(REQ, req.len() as u32, false)],
    );
    assert_eq!(len, Some(0));
    // A request larger than we copy in is still answered, from its header.
    let mut big = request(o::WRITE, 99, ROOT, &[]);
    let total = queue::MAX_REQUEST as u32 + 4096;
    big[0..4].copy_from_slice(&total.to_le_bytes());
    g.mem.write_slice(&big, GuestAddress(REQ)).unwrap();
    let len = g
        .run_chain(REQUEST_QUEUE, &[D(REQ, total, false), D(REP, 4096, true)])
        .unwrap();
    assert_eq!(len, 16);
    let out = read_mem(&g.mem, REP, 16);
    assert_eq!(u32_at(&out, 4) as i32, -libc::EINVAL);
    assert_eq!(u64_at(&out, 8), 99);
    assert!(g.getattr(ROOT).is_ok());
    assert!(!g.fs.needs_reset());
}

#[test]
fn random_garbage_never_panics() {
    let mut g = Guest::init(false);
    std::fs::write(g.path("f"), b"x").unwrap();
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let ops = [
        o::LOOKUP,
        o::GETATTR,
        o::SETATTR,
        o::READLINK,
        o::SYMLINK,
        o::MKNOD,
        o::MKDIR,
        o::UNLINK,
        o::RMDIR,
        o::RENAME,
        o::RENAME2,
        o::LINK,
        o::OPEN,
        o::READ,
        o::WRITE,
        o::STATFS,
        o::RELEASE,
        o::FSYNC,
        o::SETXATTR,
        o::GETXATTR,
        o::LISTXATTR,
        o::REMOVEXATTR,
        o::FLUSH,
        o::OPENDIR,
        o::READDIR,
        o::READDIRPLUS,
        o::RELEASEDIR,
        o::FSYNCDIR,
        o::ACCESS,
        o::CREATE,
        o::BATCH_FORGET,
        o::FALLOCATE,
        o::LSEEK,
    ];
    for i in 0..3000u64 {
        let op = ops[(rnd() % ops.len() as u64) as usize];
        let len = (rnd() % 200) as usize;
        // Mostly printable short names so some requests get past the decoder.
        let body: Vec<u8> = (0..len)
            .map(|_| match rnd() % 8 {
                0 => 0,
                1 => b'/',
                _ => b'a' + (rnd() % 3) as u8,
            })
            .collect();
        let node = [ROOT, 2, 3, 0, u64::MAX][(rnd() % 5) as usize];
        let mut req = request(op, i, node, &body);
        if rnd() % 10 == 0 {
            let n = (rnd() % req.len() as u64) as usize;
            req.truncate(n);
        }
        let cap = [0u32, 8, 16, 100, 4096][(rnd() % 5) as usize];
        if !req.is_empty() {
            let _ = g.call_raw(&req, cap);
        }
    }
    assert!(g.getattr(ROOT).is_ok());
    // Nothing escaped the share.
    assert!(g
        .root
        .parent()
        .unwrap()
        .join("a")
        .symlink_metadata()
        .is_err());
}

#[test]
fn event_idx_suppresses_interrupts() {
    let mut g = Guest::init(false);
    // With EVENT_IDX negotiated and used_event far ahead, no interrupt.
    g.fs.reset();
    let (hi, hq) = Vq::new(&g.mem, HI_QUEUE_ADDR, HI_USED_ADDR);
    let (req, mut rq) = Vq::new(&g.mem, REQ_QUEUE_ADDR, REQ_USED_ADDR);
    rq.set_event_idx(true);
    g.fs.activate(
        g.mem.clone(),
        vec![hq, rq],
        g.irq.clone(),
        g.fs.device_features(),
    )
    .unwrap();
    g.hi = hi;
    g.req = req;
    // used_event lives right after the available ring.
    g.mem
        .write_obj(100u16, GuestAddress(g.req.avail + 4 + 2 * u64::from(QSIZE)))
        .unwrap();
    let r = request(o::INIT, 1, 0, &B::default().u32(7).u32(31).u32(0).u32(0).0);
    g.mem.write_slice(&r, GuestAddress(REQ)).unwrap();
    let raw = chain(0, &[D(REQ, r.len() as u32, false), D(REP, 4096, true)]);
    for (i, d) in raw.iter().enumerate() {
        g.mem
            .write_obj(*d, GuestAddress(REQ_QUEUE_ADDR + 16 * i as u64))
            .unwrap();
    }
    g.mem
        .write_obj(0u16, GuestAddress(g.req.avail + 4))
        .unwrap();
    g.mem
        .write_obj(1u16, GuestAddress(g.req.avail + 2))
        .unwrap();
    g.fs.process_queue(REQUEST_QUEUE);
    let idx: u16 = g.mem.read_obj(GuestAddress(REQ_USED_ADDR + 2)).unwrap();
    assert_eq!(idx, 1, "request completed");
    assert!(g.irq.eventfd().read().is_err(), "no interrupt");
}
