//! Thin wrappers over the libc calls the passthrough filesystem needs.
//!
//! Every `unsafe` block of virtio-fs lives here. Each wrapper takes borrowed fds and C
//! strings, so the only things the kernel can be handed are valid descriptors, NUL-terminated
//! strings and buffers whose length is the slice's length.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// `struct stat` as filled in by the kernel.
pub type Stat = libc::stat64;
/// `struct statvfs` as filled in by the kernel.
pub type StatVfs = libc::statvfs64;

/// Turns a libc return value into an `io::Result`, reading errno on -1.
fn check<T: Copy + PartialEq + From<i8>>(ret: T) -> io::Result<T> {
    if ret == T::from(-1) {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    let fd = check(fd)?;
    // SAFETY: `fd` was just returned by a successful open-type syscall, so it is a valid
    // descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `openat(dirfd, name, flags | O_CLOEXEC, mode)`.
pub fn openat(dirfd: BorrowedFd<'_>, name: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated and outlives the call; the result is checked.
    let fd = unsafe {
        libc::openat(
            dirfd.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    owned(fd)
}

/// `struct open_how` as of Linux 5.6 (libc's is non-exhaustive, so it cannot be built
/// without `unsafe`).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Set once `openat2` answered ENOSYS (kernel before 5.6), so we stop trying it.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Opens the single path component `name` below `dirfd` as an `O_PATH` descriptor without
/// following a symlink in it.
///
/// `name` has already been checked to be one component (no '/', not "." or ".."), so plain
/// `openat(O_NOFOLLOW)` cannot leave `dirfd`; `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
/// RESOLVE_NO_MAGICLINKS)` is used where the kernel has it as a second line of defence. With
/// `O_PATH | O_NOFOLLOW` both return a trailing symlink itself, never its target.
pub fn open_beneath(dirfd: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        let how = OpenHow {
            flags: flags as u64,
            mode: 0,
            resolve: libc::RESOLVE_BENEATH
                | libc::RESOLVE_NO_SYMLINKS
                | libc::RESOLVE_NO_MAGICLINKS,
        };
        // SAFETY: `name` is NUL-terminated, `how` is a valid open_how whose size we pass;
        // both outlive the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dirfd.as_raw_fd(),
                name.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        match check(ret) {
            Ok(fd) => return owned(fd as libc::c_int),
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                NO_OPENAT2.store(true, Ordering::Relaxed)
            }
            Err(e) => return Err(e),
        }
    }
    openat(dirfd, name, flags, 0)
}

/// Opens the inode behind our own descriptor `fd` anew with `flags`, via its
/// `/proc/self/fd/N` entry (`proc_fd` is an fd of the `/proc/self/fd` directory).
///
/// This is how an `O_PATH` descriptor becomes a readable/writable one. The magic link is our
/// own descriptor, so it can only lead to the inode we already hold.
pub fn reopen(proc_fd: BorrowedFd<'_>, fd: BorrowedFd<'_>, flags: i32) -> io::Result<File> {
    let name = fd_name(fd);
    let fd = openat(
        proc_fd,
        &name,
        flags & !libc::O_NOFOLLOW & !libc::O_CREAT,
        0,
    )?;
    Ok(File::from(fd))
}

/// The decimal name of `fd` in `/proc/self/fd`, NUL-terminated.
fn fd_name(fd: BorrowedFd<'_>) -> std::ffi::CString {
    // A decimal number never contains a NUL byte.
    std::ffi::CString::new(fd.as_raw_fd().to_string()).expect("no NUL in a number")
}

/// `fstatat(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW)`: works on `O_PATH` fds.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    let mut st = std::mem::MaybeUninit::<Stat>::zeroed();
    // SAFETY: the path is a NUL-terminated empty string, `st` points to writable memory of
    // the right type; the result is checked before `st` is read.
    let ret = unsafe {
        libc::fstatat64(
            fd.as_raw_fd(),
            c"".as_ptr(),
            st.as_mut_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    check(ret)?;
    // SAFETY: fstatat succeeded and filled in the structure (it was zeroed anyway).
    Ok(unsafe { st.assume_init() })
}

/// `fstatvfs(fd)`: works on `O_PATH` fds.
pub fn fstatvfs(fd: BorrowedFd<'_>) -> io::Result<StatVfs> {
    let mut st = std::mem::MaybeUninit::<StatVfs>::zeroed();
    // SAFETY: `st` points to writable memory of the right type; the result is checked.
    check(unsafe { libc::fstatvfs64(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstatvfs succeeded and filled in the (zeroed) structure.
    Ok(unsafe { st.assume_init() })
}

/// `mkdirat(dirfd, name, mode)`.
pub fn mkdirat(dirfd: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; the result is checked.
    check(unsafe { libc::mkdirat(dirfd.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

/// `mknodat(dirfd, name, mode, rdev)`.
pub fn mknodat(dirfd: BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u64) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; the result is checked.
    check(unsafe { libc::mknodat(dirfd.as_raw_fd(), name.as_ptr(), mode, rdev) }).map(drop)
}

/// `symlinkat(target, dirfd, name)`. The target is stored verbatim and never followed by us.
pub fn symlinkat(target: &CStr, dirfd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated; the result is checked.
    check(unsafe { libc::symlinkat(target.as_ptr(), dirfd.as_raw_fd(), name.as_ptr()) }).map(drop)
}

/// `unlinkat(dirfd, name, flags)`.
pub fn unlinkat(dirfd: BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; the result is checked.
    check(unsafe { libc::unlinkat(dirfd.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

/// `renameat2(olddir, oldname, newdir, newname, flags)`; a raw syscall so that it does not
/// depend on the libc version.
pub fn renameat2(
    olddir: BorrowedFd<'_>,
    oldname: &CStr,
    newdir: BorrowedFd<'_>,
    newname: &CStr,
    flags: u32,
) -> io::Result<()> {
    // SAFETY: both names are NUL-terminated; the result is checked.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            olddir.as_raw_fd(),
            oldname.as_ptr(),
            newdir.as_raw_fd(),
            newname.as_ptr(),
            flags,
        )
    };
    check(ret).map(drop)
}

/// Hard-links the inode behind our descriptor `fd` as `newdir/newname`, through its
/// `/proc/self/fd` entry (AT_EMPTY_PATH would need CAP_DAC_READ_SEARCH).
pub fn link_fd(
    proc_fd: BorrowedFd<'_>,
    fd: BorrowedFd<'_>,
    newdir: BorrowedFd<'_>,
    newname: &CStr,
) -> io::Result<()> {
    let name = fd_name(fd);
    // SAFETY: both names are NUL-terminated; the result is checked.
    let ret = unsafe {
        libc::linkat(
            proc_fd.as_raw_fd(),
            name.as_ptr(),
            newdir.as_raw_fd(),
            newname.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    check(ret).map(drop)
}

/// Reads the target of the symlink `fd` (an `O_PATH | O_NOFOLLOW` descriptor).
pub fn readlink_fd(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: the path is an empty NUL-terminated string and `buf` is writable for the
    // length passed; the result is checked.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let n = check(n)? as usize;
    buf.truncate(n);
    Ok(buf)
}

/// `fchownat(fd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW)`; `u32::MAX` leaves an
/// id unchanged.
pub fn fchown_fd(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: the path is an empty NUL-terminated string; the result is checked.
    let ret = unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    check(ret).map(drop)
}

/// chmod of the inode behind our descriptor `fd` (which may be `O_PATH`) via `/proc/self/fd`.
pub fn fchmod_fd(proc_fd: BorrowedFd<'_>, fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    let name = fd_name(fd);
    // SAFETY: `name` is NUL-terminated; the result is checked.
    check(unsafe { libc::fchmodat(proc_fd.as_raw_fd(), name.as_ptr(), mode, 0) }).map(drop)
}

/// Sets atime/mtime of the inode behind our descriptor `fd` via `/proc/self/fd`.
/// Each time is `(sec, nsec)` or `UTIME_NOW` / `UTIME_OMIT` in nsec.
pub fn utimens_fd(
    proc_fd: BorrowedFd<'_>,
    fd: BorrowedFd<'_>,
    atime: (i64, i64),
    mtime: (i64, i64),
) -> io::Result<()> {
    let name = fd_name(fd);
    let ts = [
        libc::timespec {
            tv_sec: atime.0,
            tv_nsec: atime.1,
        },
        libc::timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1,
        },
    ];
    // SAFETY: `name` is NUL-terminated and `ts` holds the two timespecs utimensat reads;
    // the result is checked.
    check(unsafe { libc::utimensat(proc_fd.as_raw_fd(), name.as_ptr(), ts.as_ptr(), 0) }).map(drop)
}

/// `fallocate(fd, mode, offset, len)`.
pub fn fallocate(fd: &File, mode: i32, offset: i64, len: i64) -> io::Result<()> {
    // SAFETY: plain integer arguments on an fd we own; the result is checked.
    check(unsafe { libc::fallocate64(fd.as_raw_fd(), mode, offset, len) }).map(drop)
}

/// `lseek(fd, offset, whence)`.
pub fn lseek(fd: RawFd, offset: i64, whence: i32) -> io::Result<i64> {
    // SAFETY: plain integer arguments; the result is checked.
    check(unsafe { libc::lseek64(fd, offset, whence) })
}

/// One `getdents64` call into `buf`; returns the number of bytes filled.
pub fn getdents64(dir: &File, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for the length passed; the result is checked.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            dir.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    Ok(check(ret)? as usize)
}

/// `fgetxattr(fd, name, buf)`; an empty `buf` asks for the size.
pub fn fgetxattr(fd: &File, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `name` is NUL-terminated, `buf` is writable for the length passed (a null
    // pointer is never passed: an empty slice's pointer is dangling but not read);
    // the result is checked.
    let ret = unsafe {
        libc::fgetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    Ok(check(ret)? as usize)
}

/// `flistxattr(fd, buf)`; an empty `buf` asks for the size.
pub fn flistxattr(fd: &File, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for the length passed; the result is checked.
    let ret = unsafe { libc::flistxattr(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    Ok(check(ret)? as usize)
}

/// `fsetxattr(fd, name, value, flags)`.
pub fn fsetxattr(fd: &File, name: &CStr, value: &[u8], flags: i32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and `value` readable for the length passed; the
    // result is checked.
    let ret = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    check(ret).map(drop)
}

/// `fremovexattr(fd, name)`.
pub fn fremovexattr(fd: &File, name: &CStr) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated; the result is checked.
    check(unsafe { libc::fremovexattr(fd.as_raw_fd(), name.as_ptr()) }).map(drop)
}

/// The effective uid of this process.
pub fn geteuid() -> u32 {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() }
}
