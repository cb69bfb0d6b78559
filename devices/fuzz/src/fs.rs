//! virtio-fs: FUSE requests decoded and run by the in-process passthrough server, driven
//! through the virtio-mmio transport, with a confinement check.
//!
//! Input layout (all integers little endian):
//!
//! | bytes  | meaning                                                                   |
//! |--------|---------------------------------------------------------------------------|
//! | 0      | flags, see `F_*`                                                          |
//! | 1      | request queue size: `1 << (b % 11)`, or `b & 0x7f` as is when bit 7 is set |
//! | 2      | high-priority queue size, the same way                                    |
//! | 3      | reserved                                                                  |
//! | 4..16  | request queue: descriptor table, available ring, used ring addresses     |
//! | 16..28 | high-priority queue: the same                                             |
//! | 28..32 | reserved                                                                  |
//! | 32..   | guest RAM image, copied to guest address 0                                |
//!
//! The driver brings the device up and notifies both queues (request queue first); the
//! device runs whatever requests the rings announce. Node ids and file handles are handed out
//! in order (root is 1, the first lookup gets 2, the first open gets handle 1), so one batch
//! of requests can build on earlier ones.
//!
//! The shared directory is recreated for every run on a private tmpfs (own mount namespace,
//! `nodev,nosuid`, 64 MiB) when the process may mount, else in the temp directory. Next to it
//! sits `outside/` with a canary file that the share's symlinks point at. After each run the
//! harness asserts that nothing outside the share changed and that the canary's contents
//! never reached guest memory.

use std::cell::RefCell;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use devices::virtio::fs::Fs;
use devices::virtio::mmio::regs;
use devices::virtio::{features, VirtioDevice};
use vm_memory::{Bytes, GuestAddress};

use crate::{bring_up_indexed, guest_memory, transport, write_reg, Input, QueueSetup, INT_ALL};

pub const HEADER_LEN: usize = 32;

/// Negotiate VIRTIO_RING_F_EVENT_IDX.
pub const F_EVENT_IDX: u8 = 1 << 0;
/// Negotiate VIRTIO_RING_F_INDIRECT_DESC.
pub const F_INDIRECT: u8 = 1 << 1;
/// Share the directory read-only: nothing in it may change either.
pub const F_READ_ONLY: u8 = 1 << 2;
/// Leave the high-priority queue disabled.
pub const F_NO_HIPRIO: u8 = 1 << 3;
/// After processing, reset the device and run the same rings again.
pub const F_RESET_REPLAY: u8 = 1 << 4;

/// Contents of the file outside the share; must never show up in guest memory.
pub const CANARY: &[u8] = b"capsa-fuzz canary: outside the share";
/// What the share holds at the start of every run.
pub const FILE_CONTENTS: &[u8] = b"hello from the share\n";

#[derive(Clone, Copy, Debug)]
pub struct Rings {
    pub desc: u32,
    pub driver: u32,
    pub device: u32,
}

#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub flags: u8,
    pub request_size: u8,
    pub hiprio_size: u8,
    pub request: Rings,
    pub hiprio: Rings,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0] = self.flags;
        h[1] = self.request_size;
        h[2] = self.hiprio_size;
        for (at, r) in [(4, self.request), (16, self.hiprio)] {
            h[at..at + 4].copy_from_slice(&r.desc.to_le_bytes());
            h[at + 4..at + 8].copy_from_slice(&r.driver.to_le_bytes());
            h[at + 8..at + 12].copy_from_slice(&r.device.to_le_bytes());
        }
        h
    }

    fn decode(input: &mut Input<'_>) -> Self {
        let flags = input.u8();
        let request_size = input.u8();
        let hiprio_size = input.u8();
        input.u8();
        let mut rings = || Rings {
            desc: input.u32(),
            driver: input.u32(),
            device: input.u32(),
        };
        let request = rings();
        let hiprio = rings();
        input.u32();
        Header {
            flags,
            request_size,
            hiprio_size,
            request,
            hiprio,
        }
    }

    fn setup(size: u8, r: Rings) -> QueueSetup {
        let size = if size & 0x80 != 0 {
            u32::from(size & 0x7f)
        } else {
            1 << (size % 11)
        };
        QueueSetup {
            size,
            desc: r.desc.into(),
            driver: r.driver.into(),
            device: r.device.into(),
        }
    }
}

/// The per-thread sandbox: `base/share` (exported) and `base/outside/canary`.
struct Sandbox {
    base: PathBuf,
}

/// What must not change outside the share: (path, inode metadata) and directory listings.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    meta: Vec<(PathBuf, [i64; 7])>,
    listings: Vec<Vec<std::ffi::OsString>>,
    canary: Vec<u8>,
}

fn meta_key(p: &Path) -> [i64; 7] {
    let m = fs::symlink_metadata(p).expect("stat outside the share");
    [
        m.ino() as i64,
        m.mode().into(),
        m.nlink() as i64,
        m.uid().into(),
        m.gid().into(),
        m.size() as i64,
        // ctime changes with any change to the inode, mtime with its contents.
        m.ctime() * 1_000_000_000 + m.ctime_nsec(),
    ]
}

fn listing(p: &Path) -> Vec<std::ffi::OsString> {
    let mut v: Vec<_> = fs::read_dir(p)
        .expect("list outside the share")
        .map(|e| e.unwrap().file_name())
        .collect();
    v.sort();
    v
}

/// Tries to give this thread a private tmpfs at `dir`; false if the process may not.
fn private_tmpfs(dir: &Path) -> bool {
    use std::ffi::CString;
    // SAFETY: plain syscalls with valid NUL-terminated strings; they affect only this
    // thread's mount namespace (unshare of CLONE_NEWNS is per task).
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return false;
        }
        // Keep our mounts from propagating back to the host namespace.
        let root = CString::new("/").unwrap();
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return false;
        }
        let target = CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        let fstype = CString::new("tmpfs").unwrap();
        let opts = CString::new("size=64m,mode=0755").unwrap();
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NODEV | libc::MS_NOSUID,
            opts.as_ptr().cast(),
        ) == 0
    }
}

impl Sandbox {
    fn new() -> Self {
        let shared = std::env::temp_dir().join("capsa-fuzz-fs");
        fs::create_dir_all(&shared).expect("sandbox dir");
        let base = if private_tmpfs(&shared) {
            shared
        } else {
            // No mount namespace (not root): a plain per-thread directory.
            let tid = unsafe { libc::gettid() };
            let dir =
                std::env::temp_dir().join(format!("capsa-fuzz-fs-{}-{tid}", std::process::id()));
            fs::create_dir_all(&dir).expect("sandbox dir");
            dir
        };
        let outside = base.join("outside");
        let _ = fs::create_dir(&outside);
        fs::write(outside.join("canary"), CANARY).expect("canary");
        Sandbox { base }
    }

    fn share(&self) -> PathBuf {
        self.base.join("share")
    }

    fn populate(&self) {
        let share = self.share();
        fs::create_dir(&share).expect("share");
        fs::write(share.join("file"), FILE_CONTENTS).unwrap();
        fs::create_dir(share.join("dir")).unwrap();
        fs::write(share.join("dir/inner"), b"inner\n").unwrap();
        std::os::unix::fs::symlink("../outside/canary", share.join("link-out")).unwrap();
        std::os::unix::fs::symlink(self.base.join("outside"), share.join("link-abs")).unwrap();
        std::os::unix::fs::symlink("file", share.join("link-in")).unwrap();
    }

    fn snapshot(&self) -> Snapshot {
        let outside = self.base.join("outside");
        let canary = outside.join("canary");
        Snapshot {
            meta: [&self.base, &outside, &canary]
                .iter()
                .map(|p| (p.to_path_buf(), meta_key(p)))
                .collect(),
            listings: vec![listing(&self.base), listing(&outside)],
            canary: fs::read(&canary).expect("read canary"),
        }
    }

    /// Removes the share whatever the guest did to its permissions.
    fn clear(&self) {
        let share = self.share();
        if fs::symlink_metadata(&share).is_err() {
            return;
        }
        make_removable(&share);
        fs::remove_dir_all(&share).expect("remove share");
    }
}

/// Substring search through libc: one call, where a byte-wise Rust search would feed 64 Ki
/// comparisons per run into libFuzzer's comparison tracing and slow it down tenfold.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    // SAFETY: both pointers and lengths describe live slices; memmem only reads them.
    !unsafe {
        libc::memmem(
            hay.as_ptr().cast(),
            hay.len(),
            needle.as_ptr().cast(),
            needle.len(),
        )
    }
    .is_null()
}

fn make_removable(dir: &Path) {
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                make_removable(&e.path());
            }
        }
    }
}

thread_local! {
    static SANDBOX: RefCell<Option<Sandbox>> = const { RefCell::new(None) };
}

/// What a run left behind, for the seed tests.
pub struct Outcome {
    pub mem: devices::virtio::GuestMemoryMmap,
    /// The share's entries after the run: (path relative to the share, size, the first
    /// [`PREFIX`] bytes of a regular file).
    pub files: Vec<(String, u64, Option<Vec<u8>>)>,
}

/// How much of each file the harness reads back: the guest can make sparse files of any
/// size (truncate, write far out), and reading those whole would be the harness's own OOM.
pub const PREFIX: u64 = 64 * 1024;

fn share_files(share: &Path) -> Vec<(String, u64, Option<Vec<u8>>)> {
    use std::io::Read;
    let mut out = Vec::new();
    let mut stack = vec![share.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let rel = p
                .strip_prefix(share)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let size = e.metadata().map_or(0, |m| m.len());
            match e.file_type() {
                Ok(t) if t.is_dir() => {
                    stack.push(p);
                    out.push((rel + "/", size, None));
                }
                Ok(t) if t.is_file() => {
                    let mut prefix = Vec::new();
                    let read =
                        fs::File::open(&p).and_then(|f| f.take(PREFIX).read_to_end(&mut prefix));
                    out.push((rel, size, read.ok().map(|_| prefix)));
                }
                _ => out.push((rel, size, None)),
            }
        }
    }
    out.sort();
    out
}

pub fn run(data: &[u8]) -> Outcome {
    SANDBOX.with(|cell| {
        let mut cell = cell.borrow_mut();
        let sandbox = cell.get_or_insert_with(Sandbox::new);
        sandbox.clear();
        sandbox.populate();
        let before = sandbox.snapshot();
        let outcome = run_in(sandbox, data);
        assert_eq!(
            sandbox.snapshot(),
            before,
            "something outside the share changed"
        );
        outcome
    })
}

fn run_in(sandbox: &Sandbox, data: &[u8]) -> Outcome {
    let mut input = Input::new(data);
    let header = Header::decode(&mut input);
    let image = input.rest();
    let mem = guest_memory(image);
    let read_only = header.flags & F_READ_ONLY != 0;
    let share_before = read_only.then(|| share_files(&sandbox.share()));
    let fs_dev = Fs::new("fuzz", sandbox.share(), read_only).expect("virtio-fs device");
    let (mut t, dev) = transport(&mem, fs_dev).expect("virtio-fs transport");
    let mut handler = t.event_handler().expect("event handler");

    let mut features = 1u64 << features::VERSION_1;
    if header.flags & F_EVENT_IDX != 0 {
        features |= 1 << features::RING_EVENT_IDX;
    }
    if header.flags & F_INDIRECT != 0 {
        features |= 1 << features::RING_INDIRECT_DESC;
    }
    let mut queues = vec![(1, Header::setup(header.request_size, header.request))];
    if header.flags & F_NO_HIPRIO == 0 {
        queues.push((0, Header::setup(header.hiprio_size, header.hiprio)));
    }
    let rounds = if header.flags & F_RESET_REPLAY != 0 {
        2
    } else {
        1
    };
    for _ in 0..rounds {
        bring_up_indexed(&mut t, features, &queues);
        for q in [1, 0] {
            handler.handle_queue_event(q);
            write_reg(&mut t, regs::QUEUE_NOTIFY, q as u32);
            handler.handle_queue_event(q);
        }
        assert_eq!(t.interrupt().status() & !INT_ALL, 0);
    }
    write_reg(&mut t, regs::STATUS, 0);
    assert!(!dev.lock().unwrap().is_activated(), "active after reset");
    drop((t, handler, dev));

    // The canary must not have been read into the guest (unless the input carried it).
    if !contains(image, CANARY) {
        let mut ram = vec![0u8; crate::RAM_SIZE as usize];
        mem.read_slice(&mut ram, GuestAddress(0)).unwrap();
        assert!(
            !contains(&ram, CANARY),
            "contents from outside the share reached the guest"
        );
    }
    let files = share_files(&sandbox.share());
    if let Some(before) = share_before {
        assert_eq!(files, before, "read-only share was modified");
    }
    Outcome { mem, files }
}
