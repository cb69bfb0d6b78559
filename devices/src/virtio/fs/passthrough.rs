//! A passthrough filesystem serving one host directory, confined to it.
//!
//! Confinement rests on three rules:
//!
//! * Every inode the guest knows is an `O_PATH` descriptor we hold, never a path string. The
//!   root is an `O_PATH` descriptor of the shared directory.
//! * A new inode is only ever reached by opening a single, validated name (no '/', not "."
//!   or "..") relative to the descriptor of a directory we hold, with `O_NOFOLLOW`
//!   (`openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` where
//!   available). Symlinks are handed to the guest to resolve; the host never follows one.
//! * Operations that need a real (non-`O_PATH`) descriptor reopen our own descriptor through
//!   `/proc/self/fd/N` (opened once at construction). That magic link is ours, so it leads
//!   only to the inode already held. Only regular files and directories are ever reopened:
//!   device nodes, FIFOs and sockets in the share are never opened on the host.
//!
//! Permission checks are the guest kernel's (Linux mounts virtio-fs with
//! `default_permissions`); new files are given the caller's uid/gid when we run as root.

use std::collections::HashMap;
use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use tracing::{debug, trace, warn};

use super::abi::{self, fattr, init_flags, Attr, EntryOut, Writer, ROOT_ID};
use super::decode::{InHeader, Op, SetattrIn, XATTR_SIZE_MAX};
use super::sys;

/// A positive errno value.
pub type Errno = i32;

/// Largest WRITE payload we accept and READ we serve (advertised as max_write / max_pages).
pub const MAX_IO: usize = 1 << 20;
/// How long the guest may cache names and attributes. Short, because the host side (the
/// container runtime) may change the directory behind the guest's back.
const TIMEOUT_SECS: u64 = 1;
/// RENAME2 flags we pass on (RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT).
const RENAME_FLAGS: u32 = 1 | 2 | 4;
/// Open flags the guest may pass through: access mode and per-open behaviour. O_CREAT,
/// O_EXCL, O_NOFOLLOW and O_DIRECTORY are ours to decide; O_DIRECT would break our
/// unaligned bounce buffers.
const OPEN_FLAGS: i32 = libc::O_ACCMODE
    | libc::O_APPEND
    | libc::O_TRUNC
    | libc::O_NONBLOCK
    | libc::O_DSYNC
    | libc::O_SYNC
    | libc::O_NOATIME;

fn errno(e: io::Error) -> Errno {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// `st_mode & S_IFMT`.
fn file_type(mode: u32) -> u32 {
    mode & libc::S_IFMT
}

/// An inode the guest has looked up.
struct Inode {
    /// `O_PATH | O_NOFOLLOW` descriptor of the inode.
    fd: OwnedFd,
    /// (st_dev, st_ino), to give hard links one node id.
    key: (u64, u64),
    /// `S_IFMT` bits; an inode's type never changes.
    typ: u32,
    /// Lookups the guest has not forgotten yet.
    refcount: u64,
}

/// An open file or directory.
struct Handle {
    file: File,
    dir: bool,
}

/// The passthrough filesystem. All calls come from one thread (the event loop).
pub struct PassthroughFs {
    proc_fd: OwnedFd,
    read_only: bool,
    inodes: HashMap<u64, Inode>,
    by_key: HashMap<(u64, u64), u64>,
    next_nodeid: u64,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    initialized: bool,
    /// Whether we can give new files the caller's ownership.
    as_root: bool,
}

impl std::fmt::Debug for PassthroughFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassthroughFs")
            .field("read_only", &self.read_only)
            .field("inodes", &self.inodes.len())
            .field("handles", &self.handles.len())
            .finish_non_exhaustive()
    }
}

impl PassthroughFs {
    /// Opens the shared directory and `/proc/self/fd`.
    pub fn new(shared_dir: &Path, read_only: bool) -> io::Result<Self> {
        let root = File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(shared_dir)?;
        let proc_fd = File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open("/proc/self/fd")?;
        let root = OwnedFd::from(root);
        let st = sys::fstat(root.as_fd())?;
        let mut fs = PassthroughFs {
            proc_fd: OwnedFd::from(proc_fd),
            read_only,
            inodes: HashMap::new(),
            by_key: HashMap::new(),
            next_nodeid: ROOT_ID + 1,
            handles: HashMap::new(),
            next_fh: 1,
            initialized: false,
            as_root: sys::geteuid() == 0,
        };
        let key = (st.st_dev, st.st_ino);
        fs.by_key.insert(key, ROOT_ID);
        fs.inodes.insert(
            ROOT_ID,
            Inode {
                fd: root,
                key,
                typ: file_type(st.st_mode),
                refcount: 1,
            },
        );
        Ok(fs)
    }

    /// Number of inodes the guest holds references to, root included (for tests).
    #[cfg(test)]
    pub fn inode_count(&self) -> usize {
        self.inodes.len()
    }

    /// Number of open handles (for tests).
    #[cfg(test)]
    pub fn handle_count(&self) -> usize {
        self.handles.len()
    }

    /// Runs one request. `Ok(None)` means the request takes no reply; `Ok(Some(payload))`
    /// is the reply body after the out header. `out_cap` is how many payload bytes the
    /// driver's buffers can take.
    pub fn handle(
        &mut self,
        h: &InHeader,
        op: Op<'_>,
        out_cap: usize,
    ) -> Result<Option<Vec<u8>>, Errno> {
        match &op {
            Op::Init { .. } => {}
            Op::Forget { .. } | Op::BatchForget { .. } | Op::Interrupt { .. } => {}
            _ if !self.initialized => return Err(libc::EIO),
            _ => {}
        }
        if self.read_only && op.is_mutating() {
            return Err(libc::EROFS);
        }
        let nodeid = h.nodeid;
        let reply = match op {
            Op::Init {
                major,
                minor,
                max_readahead,
                flags,
            } => self.init(major, minor, max_readahead, flags)?,
            Op::Destroy => {
                self.destroy();
                Vec::new()
            }
            Op::Lookup { name } => {
                let (id, st) = self.lookup(nodeid, name)?;
                entry_out(id, &st).to_bytes()
            }
            Op::Forget { nlookup } => {
                self.forget(nodeid, nlookup);
                return Ok(None);
            }
            Op::BatchForget { forgets } => {
                for (id, n) in forgets {
                    self.forget(id, n);
                }
                return Ok(None);
            }
            // Nothing runs concurrently, so there is never anything to interrupt.
            Op::Interrupt { .. } => return Ok(None),
            Op::Getattr { .. } => {
                let st = sys::fstat(self.inode(nodeid)?.fd.as_fd()).map_err(errno)?;
                abi::attr_out(TIMEOUT_SECS, &Attr::from_stat(&st))
            }
            Op::Setattr(s) => self.setattr(nodeid, &s)?,
            Op::Readlink => {
                let inode = self.inode(nodeid)?;
                if inode.typ != libc::S_IFLNK {
                    return Err(libc::EINVAL);
                }
                sys::readlink_fd(inode.fd.as_fd()).map_err(errno)?
            }
            Op::Symlink { name, target } => {
                let dir = self.dir_fd(nodeid)?;
                sys::symlinkat(target, dir, name).map_err(errno)?;
                self.created(h, name, None)?
            }
            Op::Mknod { name, mode, .. } => {
                let dir = self.dir_fd(nodeid)?;
                let typ = file_type(mode);
                // Device nodes are refused before any host call: a guest-made node in a
                // host directory names a host device to every host process that opens
                // it (and the VMM's seccomp filter does not allow creating one). EPERM
                // is what an unprivileged mknod gets.
                if typ == libc::S_IFCHR || typ == libc::S_IFBLK {
                    return Err(libc::EPERM);
                }
                if ![libc::S_IFREG, libc::S_IFIFO, libc::S_IFSOCK].contains(&typ) {
                    return Err(libc::EINVAL);
                }
                sys::mknodat(dir, name, typ | (mode & 0o777), 0).map_err(errno)?;
                self.created(h, name, Some(mode & 0o7777))?
            }
            Op::Mkdir { name, mode, .. } => {
                let dir = self.dir_fd(nodeid)?;
                sys::mkdirat(dir, name, mode & 0o777).map_err(errno)?;
                self.created(h, name, Some(mode & 0o7777))?
            }
            Op::Unlink { name } => {
                sys::unlinkat(self.dir_fd(nodeid)?, name, 0).map_err(errno)?;
                Vec::new()
            }
            Op::Rmdir { name } => {
                sys::unlinkat(self.dir_fd(nodeid)?, name, libc::AT_REMOVEDIR).map_err(errno)?;
                Vec::new()
            }
            Op::Rename {
                newdir,
                flags,
                oldname,
                newname,
            } => {
                if flags & !RENAME_FLAGS != 0 {
                    return Err(libc::EINVAL);
                }
                let old = self.dir_fd(nodeid)?;
                let new = self.dir_fd(newdir)?;
                sys::renameat2(old, oldname, new, newname, flags).map_err(errno)?;
                Vec::new()
            }
            Op::Link { oldnodeid, newname } => {
                let old = self.inode(oldnodeid)?;
                if old.typ == libc::S_IFDIR {
                    return Err(libc::EPERM);
                }
                let dir = self.dir_fd(nodeid)?;
                sys::link_fd(self.proc_fd.as_fd(), old.fd.as_fd(), dir, newname).map_err(errno)?;
                let (id, st) = self.lookup(nodeid, newname)?;
                entry_out(id, &st).to_bytes()
            }
            Op::Open { flags } => self.open(nodeid, flags as i32)?,
            Op::Opendir { .. } => {
                let inode = self.inode(nodeid)?;
                if inode.typ != libc::S_IFDIR {
                    return Err(libc::ENOTDIR);
                }
                let fd = sys::openat(
                    inode.fd.as_fd(),
                    c".",
                    libc::O_RDONLY | libc::O_DIRECTORY,
                    0,
                )
                .map_err(errno)?;
                let fh = self.add_handle(File::from(fd), true);
                abi::open_out(fh, 0)
            }
            Op::Read { fh, offset, size } => {
                let file = self.file(fh)?;
                let len = (size as usize).min(out_cap).min(MAX_IO);
                read_full(file, offset, len).map_err(errno)?
            }
            Op::Readdir {
                fh,
                offset,
                size,
                plus,
            } => {
                let limit = (size as usize).min(out_cap).min(MAX_IO);
                self.readdir(nodeid, fh, offset, limit, plus)?
            }
            Op::Write {
                fh, offset, data, ..
            } => {
                let file = self.file(fh)?;
                file.write_all_at(data, offset).map_err(errno)?;
                let mut w = Writer::new();
                w.u32(data.len() as u32).u32(0);
                w.into_inner()
            }
            Op::Statfs => {
                let st = sys::fstatvfs(self.inode(nodeid)?.fd.as_fd()).map_err(errno)?;
                statfs_out(&st)
            }
            Op::Release { fh, .. } => {
                self.handles.remove(&fh).ok_or(libc::EBADF)?;
                Vec::new()
            }
            Op::Flush { fh } => {
                // Nothing is buffered on our side and we hold no POSIX locks to drop.
                self.handles.get(&fh).ok_or(libc::EBADF)?;
                Vec::new()
            }
            Op::Fsync { fh, flags, .. } => {
                let handle = self.handles.get(&fh).ok_or(libc::EBADF)?;
                if flags & abi::FSYNC_FDATASYNC != 0 {
                    handle.file.sync_data().map_err(errno)?;
                } else {
                    handle.file.sync_all().map_err(errno)?;
                }
                Vec::new()
            }
            Op::Setxattr { name, value, flags } => {
                let f = self.xattr_file(nodeid)?.ok_or(libc::EPERM)?;
                sys::fsetxattr(&f, name, value, flags as i32).map_err(errno)?;
                Vec::new()
            }
            Op::Getxattr { name, size } => {
                let f = self.xattr_file(nodeid)?.ok_or(libc::ENODATA)?;
                xattr_reply(size, out_cap, |buf| sys::fgetxattr(&f, name, buf))?
            }
            Op::Listxattr { size } => match self.xattr_file(nodeid)? {
                Some(f) => xattr_reply(size, out_cap, |buf| sys::flistxattr(&f, buf))?,
                // Symlinks and special files: no xattrs we can reach.
                None => xattr_reply(size, out_cap, |_| Ok(0))?,
            },
            Op::Removexattr { name } => {
                let f = self.xattr_file(nodeid)?.ok_or(libc::EPERM)?;
                sys::fremovexattr(&f, name).map_err(errno)?;
                Vec::new()
            }
            Op::Access { mask } => {
                self.access(h, nodeid, mask)?;
                Vec::new()
            }
            Op::Create {
                name, flags, mode, ..
            } => self.create(h, name, flags as i32, mode)?,
            Op::Lseek { fh, offset, whence } => {
                let file = self.file(fh)?;
                let whence = whence as i32;
                if ![
                    libc::SEEK_SET,
                    libc::SEEK_END,
                    libc::SEEK_DATA,
                    libc::SEEK_HOLE,
                ]
                .contains(&whence)
                {
                    return Err(libc::EINVAL);
                }
                let pos = sys::lseek(file.as_raw_fd(), offset as i64, whence).map_err(errno)?;
                (pos as u64).to_le_bytes().to_vec()
            }
            Op::Fallocate {
                fh,
                offset,
                length,
                mode,
            } => {
                let file = self.file(fh)?;
                sys::fallocate(file, mode as i32, offset as i64, length as i64).map_err(errno)?;
                Vec::new()
            }
            Op::Unsupported(code) => {
                debug!("virtio-fs: unsupported opcode {code}");
                return Err(libc::ENOSYS);
            }
        };
        Ok(Some(reply))
    }

    fn inode(&self, nodeid: u64) -> Result<&Inode, Errno> {
        self.inodes.get(&nodeid).ok_or(libc::EBADF)
    }

    /// The descriptor of directory inode `nodeid`.
    fn dir_fd(&self, nodeid: u64) -> Result<BorrowedFd<'_>, Errno> {
        let inode = self.inode(nodeid)?;
        if inode.typ != libc::S_IFDIR {
            return Err(libc::ENOTDIR);
        }
        Ok(inode.fd.as_fd())
    }

    /// The open regular file `fh`.
    fn file(&self, fh: u64) -> Result<&File, Errno> {
        match self.handles.get(&fh) {
            Some(Handle { file, dir: false }) => Ok(file),
            Some(_) => Err(libc::EISDIR),
            None => Err(libc::EBADF),
        }
    }

    fn add_handle(&mut self, file: File, dir: bool) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, Handle { file, dir });
        fh
    }

    fn init(
        &mut self,
        major: u32,
        minor: u32,
        max_readahead: u32,
        flags: u32,
    ) -> Result<Vec<u8>, Errno> {
        if major < abi::KERNEL_VERSION
            || (major == abi::KERNEL_VERSION && minor < abi::MIN_KERNEL_MINOR_VERSION)
        {
            warn!("virtio-fs: driver speaks FUSE {major}.{minor}, too old");
            return Err(libc::EPROTO);
        }
        let wanted = init_flags::ASYNC_READ
            | init_flags::ATOMIC_O_TRUNC
            | init_flags::BIG_WRITES
            | init_flags::AUTO_INVAL_DATA
            | init_flags::DO_READDIRPLUS
            | init_flags::READDIRPLUS_AUTO
            | init_flags::PARALLEL_DIROPS
            | init_flags::MAX_PAGES;
        let mut w = Writer::new();
        w.u32(abi::KERNEL_VERSION)
            .u32(minor.min(abi::KERNEL_MINOR_VERSION))
            .u32(max_readahead)
            .u32(flags & wanted)
            .u16(64) // max_background
            .u16(48) // congestion_threshold
            .u32(MAX_IO as u32) // max_write
            .u32(1) // time_gran: nanoseconds
            .u16((MAX_IO / 4096) as u16) // max_pages
            .u16(0) // map_alignment
            .u32(0) // flags2
            .bytes(&[0; 28]); // unused
        if major > abi::KERNEL_VERSION {
            // The driver retries INIT with our major version after seeing this.
            debug!("virtio-fs: driver offers FUSE {major}.{minor}; answering with 7");
            return Ok(w.into_inner());
        }
        debug!(
            "virtio-fs: FUSE session {major}.{minor}, flags {:#x}",
            flags & wanted
        );
        self.initialized = true;
        Ok(w.into_inner())
    }

    /// Ends the FUSE session: drops all guest state but the root.
    pub fn destroy(&mut self) {
        self.handles.clear();
        self.inodes.retain(|&id, _| id == ROOT_ID);
        self.by_key.retain(|_, id| *id == ROOT_ID);
        if let Some(root) = self.inodes.get_mut(&ROOT_ID) {
            root.refcount = 1;
        }
        self.initialized = false;
    }

    /// Looks up `name` in directory `parent`, taking one reference on the result.
    fn lookup(&mut self, parent: u64, name: &CStr) -> Result<(u64, sys::Stat), Errno> {
        let fd = sys::open_beneath(self.dir_fd(parent)?, name).map_err(errno)?;
        let st = sys::fstat(fd.as_fd()).map_err(errno)?;
        Ok((self.intern(fd, &st), st))
    }

    /// Registers `fd` (or finds the node id it already has) and takes one reference.
    fn intern(&mut self, fd: OwnedFd, st: &sys::Stat) -> u64 {
        let key = (st.st_dev, st.st_ino);
        if let Some(&id) = self.by_key.get(&key) {
            if let Some(inode) = self.inodes.get_mut(&id) {
                inode.refcount += 1;
                return id;
            }
        }
        let id = self.next_nodeid;
        self.next_nodeid += 1;
        self.by_key.insert(key, id);
        self.inodes.insert(
            id,
            Inode {
                fd,
                key,
                typ: file_type(st.st_mode),
                refcount: 1,
            },
        );
        trace!("virtio-fs: node {id} = {key:?}");
        id
    }

    fn forget(&mut self, nodeid: u64, nlookup: u64) {
        if nodeid == ROOT_ID {
            return;
        }
        let Some(inode) = self.inodes.get_mut(&nodeid) else {
            return;
        };
        inode.refcount = inode.refcount.saturating_sub(nlookup);
        if inode.refcount == 0 {
            let key = inode.key;
            self.inodes.remove(&nodeid);
            self.by_key.remove(&key);
        }
    }

    /// After a mknod/mkdir/symlink in `h.nodeid`: looks the new entry up and gives it the
    /// caller's ownership and the exact requested mode (our process umask must not apply).
    fn created(&mut self, h: &InHeader, name: &CStr, mode: Option<u32>) -> Result<Vec<u8>, Errno> {
        let parent_sgid = {
            let st = sys::fstat(self.inode(h.nodeid)?.fd.as_fd()).map_err(errno)?;
            st.st_mode & libc::S_ISGID != 0
        };
        let (id, _) = self.lookup(h.nodeid, name)?;
        let fd = self.inode(id)?.fd.as_fd();
        self.set_owner(fd, h, parent_sgid);
        if let Some(mode) = mode {
            sys::fchmod_fd(self.proc_fd.as_fd(), fd, mode).map_err(errno)?;
        }
        let st = sys::fstat(fd).map_err(errno)?;
        Ok(entry_out(id, &st).to_bytes())
    }

    /// Gives a new inode the caller's uid (and gid, unless the parent's set-gid bit chose
    /// it). Only possible as root; failures leave the file owned by us.
    fn set_owner(&self, fd: BorrowedFd<'_>, h: &InHeader, parent_sgid: bool) {
        if !self.as_root {
            return;
        }
        let gid = if parent_sgid { u32::MAX } else { h.gid };
        if let Err(e) = sys::fchown_fd(fd, h.uid, gid) {
            warn!(
                "virtio-fs: cannot chown new inode to {}:{}: {e}",
                h.uid, gid
            );
        }
    }

    fn setattr(&mut self, nodeid: u64, s: &SetattrIn) -> Result<Vec<u8>, Errno> {
        let inode = self.inode(nodeid)?;
        let fd = inode.fd.as_fd();
        let proc_fd = self.proc_fd.as_fd();
        if s.valid & (fattr::UID | fattr::GID) != 0 {
            let uid = if s.valid & fattr::UID != 0 {
                s.uid
            } else {
                u32::MAX
            };
            let gid = if s.valid & fattr::GID != 0 {
                s.gid
            } else {
                u32::MAX
            };
            sys::fchown_fd(fd, uid, gid).map_err(errno)?;
        }
        // After chown, which may have cleared set-id bits the guest wants kept.
        if s.valid & fattr::MODE != 0 {
            sys::fchmod_fd(proc_fd, fd, s.mode & 0o7777).map_err(errno)?;
        }
        if s.valid & fattr::SIZE != 0 {
            match self.handles.get(&s.fh) {
                Some(Handle { file, dir: false }) if s.valid & fattr::FH != 0 => {
                    file.set_len(s.size).map_err(errno)?
                }
                _ => {
                    match inode.typ {
                        libc::S_IFREG => {}
                        libc::S_IFDIR => return Err(libc::EISDIR),
                        _ => return Err(libc::EINVAL),
                    }
                    let f = sys::reopen(proc_fd, fd, libc::O_WRONLY | libc::O_NONBLOCK)
                        .map_err(errno)?;
                    f.set_len(s.size).map_err(errno)?;
                }
            }
        }
        if s.valid & (fattr::ATIME | fattr::MTIME) != 0 {
            let time = |set: u32, now: u32, sec: u64, nsec: u32| {
                if s.valid & now != 0 {
                    (0, libc::UTIME_NOW)
                } else if s.valid & set != 0 {
                    (sec as i64, i64::from(nsec))
                } else {
                    (0, libc::UTIME_OMIT)
                }
            };
            let atime = time(fattr::ATIME, fattr::ATIME_NOW, s.atime, s.atimensec);
            let mtime = time(fattr::MTIME, fattr::MTIME_NOW, s.mtime, s.mtimensec);
            sys::utimens_fd(proc_fd, fd, atime, mtime).map_err(errno)?;
        }
        let st = sys::fstat(fd).map_err(errno)?;
        Ok(abi::attr_out(TIMEOUT_SECS, &Attr::from_stat(&st)))
    }

    /// Guest open flags reduced to the ones we honour.
    fn open_flags(&self, flags: i32) -> Result<i32, Errno> {
        let flags = flags & OPEN_FLAGS;
        if self.read_only
            && (flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0)
        {
            return Err(libc::EROFS);
        }
        Ok(flags)
    }

    fn open(&mut self, nodeid: u64, flags: i32) -> Result<Vec<u8>, Errno> {
        let flags = self.open_flags(flags)?;
        let inode = self.inode(nodeid)?;
        match inode.typ {
            libc::S_IFREG => {}
            libc::S_IFDIR => return Err(libc::EISDIR),
            libc::S_IFLNK => return Err(libc::ELOOP),
            // Device nodes, FIFOs and sockets are the guest kernel's business; opening
            // them here would reach host devices.
            _ => return Err(libc::ENXIO),
        }
        let file = sys::reopen(self.proc_fd.as_fd(), inode.fd.as_fd(), flags).map_err(errno)?;
        let fh = self.add_handle(file, false);
        Ok(abi::open_out(fh, 0))
    }

    fn create(
        &mut self,
        h: &InHeader,
        name: &CStr,
        flags: i32,
        mode: u32,
    ) -> Result<Vec<u8>, Errno> {
        let parent = self.inode(h.nodeid)?;
        if parent.typ != libc::S_IFDIR {
            return Err(libc::ENOTDIR);
        }
        let parent_sgid =
            sys::fstat(parent.fd.as_fd()).map_err(errno)?.st_mode & libc::S_ISGID != 0;
        let dir = parent.fd.as_fd();
        let base = (flags & OPEN_FLAGS) | libc::O_NOFOLLOW;
        let perm = mode & 0o7777;
        // O_EXCL first, to know whether we created the file (and may set its owner and
        // mode) or opened an existing one (O_NOFOLLOW: never through a symlink).
        let (file, created) =
            match sys::openat(dir, name, base | libc::O_CREAT | libc::O_EXCL, perm & 0o777) {
                Ok(fd) => (File::from(fd), true),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) && flags & libc::O_EXCL == 0 => {
                    let fd = sys::openat(dir, name, base, 0).map_err(errno)?;
                    (File::from(fd), false)
                }
                Err(e) => return Err(errno(e)),
            };
        let (id, st) = self.lookup(h.nodeid, name)?;
        let opened = sys::fstat(file.as_fd()).map_err(errno)?;
        if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino) {
            // The name was replaced between the two opens (host-side race).
            self.forget(id, 1);
            return Err(libc::EIO);
        }
        if file_type(st.st_mode) != libc::S_IFREG {
            self.forget(id, 1);
            return Err(libc::ENXIO);
        }
        let st = if created {
            let fd = self.inode(id)?.fd.as_fd();
            self.set_owner(fd, h, parent_sgid);
            sys::fchmod_fd(self.proc_fd.as_fd(), fd, perm).map_err(errno)?;
            sys::fstat(fd).map_err(errno)?
        } else {
            st
        };
        let fh = self.add_handle(file, false);
        let mut out = entry_out(id, &st).to_bytes();
        out.extend_from_slice(&abi::open_out(fh, 0));
        Ok(out)
    }

    /// A real descriptor for xattr calls on inode `nodeid`: `None` for symlinks and special
    /// files, which we never open (see the module docs).
    fn xattr_file(&self, nodeid: u64) -> Result<Option<File>, Errno> {
        let inode = self.inode(nodeid)?;
        let fd = inode.fd.as_fd();
        let file = match inode.typ {
            libc::S_IFREG => {
                sys::reopen(self.proc_fd.as_fd(), fd, libc::O_RDONLY | libc::O_NONBLOCK)
            }
            libc::S_IFDIR => {
                sys::openat(fd, c".", libc::O_RDONLY | libc::O_DIRECTORY, 0).map(File::from)
            }
            _ => return Ok(None),
        };
        file.map(Some).map_err(errno)
    }

    /// ACCESS: the caller's permission bits against the inode's mode, as the guest kernel
    /// would check them (it only sends ACCESS without default_permissions, e.g. for
    /// access(2) from an older kernel).
    fn access(&self, h: &InHeader, nodeid: u64, mask: u32) -> Result<(), Errno> {
        let st = sys::fstat(self.inode(nodeid)?.fd.as_fd()).map_err(errno)?;
        let mask = mask & 0o7;
        if mask == 0 {
            return Ok(());
        }
        if mask & 0o2 != 0 && self.read_only {
            return Err(libc::EROFS);
        }
        let mode = st.st_mode;
        let ok = if h.uid == 0 {
            // root may read and write anything, and execute what anyone may execute.
            mask & 0o1 == 0 || mode & 0o111 != 0 || file_type(mode) == libc::S_IFDIR
        } else {
            let bits = if st.st_uid == h.uid {
                mode >> 6
            } else if st.st_gid == h.gid {
                mode >> 3
            } else {
                mode
            } & 0o7;
            bits & mask == mask
        };
        if ok {
            Ok(())
        } else {
            Err(libc::EACCES)
        }
    }

    fn readdir(
        &mut self,
        nodeid: u64,
        fh: u64,
        offset: u64,
        limit: usize,
        plus: bool,
    ) -> Result<Vec<u8>, Errno> {
        // Taken out of the map so that READDIRPLUS can look entries up meanwhile.
        let handle = self.handles.remove(&fh).ok_or(libc::EBADF)?;
        let result = if handle.dir {
            self.fill_dir(&handle.file, nodeid, offset, limit, plus)
        } else {
            Err(libc::ENOTDIR)
        };
        self.handles.insert(fh, handle);
        result
    }

    fn fill_dir(
        &mut self,
        dir: &File,
        nodeid: u64,
        offset: u64,
        limit: usize,
        plus: bool,
    ) -> Result<Vec<u8>, Errno> {
        let mut out = Writer::new();
        sys::lseek(dir.as_raw_fd(), offset as i64, libc::SEEK_SET).map_err(errno)?;
        let mut buf = vec![0u8; 32 * 1024];
        'outer: loop {
            let n = sys::getdents64(dir, &mut buf).map_err(errno)?;
            if n == 0 {
                break;
            }
            let mut pos = 0;
            while pos < n {
                let Some(ent) = DirEntry::parse(&buf[pos..n]) else {
                    warn!("virtio-fs: malformed getdents64 record");
                    return Err(libc::EIO);
                };
                pos += ent.reclen;
                let size = if plus {
                    abi::direntplus_size(ent.name.len())
                } else {
                    abi::dirent_size(ent.name.len())
                };
                if out.0.len() + size > limit {
                    break 'outer;
                }
                if plus {
                    let entry = if ent.name == b"." || ent.name == b".." {
                        // The kernel does not look these up; node id 0 means "no entry".
                        EntryOut::default()
                    } else {
                        match CStr::from_bytes_with_nul(ent.name_nul)
                            .ok()
                            .map(|name| self.lookup(nodeid, name))
                        {
                            Some(Ok((id, st))) => entry_out(id, &st),
                            // Gone since getdents; listed without attributes.
                            _ => EntryOut::default(),
                        }
                    };
                    entry.write(&mut out);
                }
                abi::write_dirent(&mut out, ent.ino, ent.off, ent.typ, ent.name);
            }
        }
        Ok(out.into_inner())
    }
}

/// One `struct linux_dirent64` record.
struct DirEntry<'a> {
    ino: u64,
    off: u64,
    reclen: usize,
    typ: u32,
    name: &'a [u8],
    name_nul: &'a [u8],
}

impl<'a> DirEntry<'a> {
    /// Parses the record at the start of `b` (d_ino u64, d_off s64, d_reclen u16,
    /// d_type u8, NUL-terminated d_name).
    fn parse(b: &'a [u8]) -> Option<Self> {
        const NAME_OFF: usize = 19;
        let reclen = usize::from(u16::from_ne_bytes(b.get(16..18)?.try_into().ok()?));
        if reclen < NAME_OFF || reclen > b.len() {
            return None;
        }
        let raw = &b[NAME_OFF..reclen];
        let nul = raw.iter().position(|&c| c == 0)?;
        Some(DirEntry {
            ino: u64::from_ne_bytes(b[0..8].try_into().ok()?),
            off: u64::from_ne_bytes(b[8..16].try_into().ok()?),
            reclen,
            typ: u32::from(b[18]),
            name: &raw[..nul],
            name_nul: &raw[..=nul],
        })
    }
}

fn entry_out(nodeid: u64, st: &sys::Stat) -> EntryOut {
    EntryOut {
        nodeid,
        generation: 0,
        entry_valid: TIMEOUT_SECS,
        attr_valid: TIMEOUT_SECS,
        entry_valid_nsec: 0,
        attr_valid_nsec: 0,
        attr: Attr::from_stat(st),
    }
}

/// `struct fuse_statfs_out` (80 bytes).
fn statfs_out(st: &sys::StatVfs) -> Vec<u8> {
    let mut w = Writer::new();
    w.u64(st.f_blocks)
        .u64(st.f_bfree)
        .u64(st.f_bavail)
        .u64(st.f_files)
        .u64(st.f_ffree)
        .u32(st.f_bsize as u32)
        .u32(st.f_namemax as u32)
        .u32(st.f_frsize as u32)
        .u32(0)
        .bytes(&[0; 24]);
    w.into_inner()
}

/// Reads up to `len` bytes at `offset`, stopping early only at end of file (a short reply
/// means EOF to the guest's page cache).
fn read_full(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(done);
    Ok(buf)
}

/// The GETXATTR/LISTXATTR reply convention: with `size == 0` the guest asks for the length
/// (`fuse_getxattr_out`), otherwise for the data, ERANGE if it does not fit.
fn xattr_reply(
    size: u32,
    out_cap: usize,
    mut get: impl FnMut(&mut [u8]) -> io::Result<usize>,
) -> Result<Vec<u8>, Errno> {
    if size == 0 {
        let n = get(&mut []).map_err(errno)?;
        let mut w = Writer::new();
        w.u32(n as u32).u32(0);
        return Ok(w.into_inner());
    }
    let len = (size as usize).min(XATTR_SIZE_MAX).min(out_cap);
    let mut buf = vec![0u8; len];
    let n = get(&mut buf).map_err(errno)?;
    buf.truncate(n);
    Ok(buf)
}
