//! Thin checked wrappers over the Linux calls the guest side needs. Every unsafe block of
//! the guest agent lives here.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// A path as a C string; errors on interior NUL.
pub fn cstr(p: impl AsRef<Path>) -> io::Result<CString> {
    CString::new(p.as_ref().as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// mount(2).
pub fn mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let src = source.map(cstr).transpose()?;
    let tgt = cstr(target)?;
    let fst = fstype.map(cstr).transpose()?;
    let dat = data.map(cstr).transpose()?;
    let p = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is NULL or a NUL-terminated string that outlives the call.
    check(unsafe {
        libc::mount(
            p(&src),
            tgt.as_ptr(),
            p(&fst),
            flags,
            p(&dat) as *const libc::c_void,
        )
    })
    .map(drop)
    .map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "mount {} on {}: {e}",
                source.unwrap_or("none"),
                target.display()
            ),
        )
    })
}

/// umount2(2).
pub fn umount2(target: &Path, flags: libc::c_int) -> io::Result<()> {
    let t = cstr(target)?;
    // SAFETY: `t` is a valid C string.
    check(unsafe { libc::umount2(t.as_ptr(), flags) }).map(drop)
}

/// pivot_root(2).
pub fn pivot_root(new_root: &Path, put_old: &Path) -> io::Result<()> {
    let n = cstr(new_root)?;
    let o = cstr(put_old)?;
    // SAFETY: both are valid C strings; the syscall takes two path pointers.
    check(unsafe { libc::syscall(libc::SYS_pivot_root, n.as_ptr(), o.as_ptr()) } as libc::c_int)
        .map(drop)
}

/// sethostname(2).
pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: pointer and length describe `name`.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

/// mknod(2) for a character device.
pub fn mknod_char(path: &Path, mode: u32, major: u32, minor: u32) -> io::Result<()> {
    let p = cstr(path)?;
    // SAFETY: `p` is a valid C string; makedev only packs numbers.
    check(unsafe {
        libc::mknod(
            p.as_ptr(),
            libc::S_IFCHR | mode,
            libc::makedev(major, minor),
        )
    })
    .map(drop)
}

/// setns(2).
pub fn setns(fd: RawFd, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: setns takes an fd and flags; a bad fd is an error return.
    check(unsafe { libc::setns(fd, nstype) }).map(drop)
}

/// prctl(2) with one argument.
pub fn prctl(option: libc::c_int, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the options used here take one integer argument.
    check(unsafe { libc::prctl(option, arg, 0, 0, 0) }).map(drop)
}

/// setrlimit(2).
pub fn setrlimit(resource: u32, soft: u64, hard: u64) -> io::Result<()> {
    let r = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `r` is a valid rlimit.
    check(unsafe { libc::setrlimit(resource as _, &r) }).map(drop)
}

/// setgroups + setgid + setuid, in that order (groups need privilege).
pub fn set_ids(uid: u32, gid: u32, groups: &[u32]) -> io::Result<()> {
    // SAFETY: pointer and length describe `groups`.
    check(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) })?;
    // SAFETY: plain ids.
    check(unsafe { libc::setresgid(gid, gid, gid) })?;
    // SAFETY: plain ids.
    check(unsafe { libc::setresuid(uid, uid, uid) }).map(drop)
}

/// Capability sets for capset(2), as bitmasks of capability numbers.
#[derive(Debug, Default, Clone, Copy)]
pub struct CapSets {
    /// Effective.
    pub effective: u64,
    /// Permitted.
    pub permitted: u64,
    /// Inheritable.
    pub inheritable: u64,
}

/// capset(2), version 3 (64-bit sets).
pub fn capset(c: CapSets) -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let h = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let lo = |v: u64| v as u32;
    let hi = |v: u64| (v >> 32) as u32;
    let d = [
        Data {
            effective: lo(c.effective),
            permitted: lo(c.permitted),
            inheritable: lo(c.inheritable),
        },
        Data {
            effective: hi(c.effective),
            permitted: hi(c.permitted),
            inheritable: hi(c.inheritable),
        },
    ];
    // SAFETY: header and a two-element data array in the v3 layout the kernel expects.
    check(unsafe { libc::syscall(libc::SYS_capset, &h, d.as_ptr()) } as libc::c_int).map(drop)
}

/// Raw clone(2) with fork semantics (no new stack) and `flags` (namespace flags);
/// SIGCHLD is delivered on exit. Returns 0 in the child.
///
/// # Safety
/// The child shares nothing with the parent's other threads' state: in the child, only
/// async-signal-safe calls on data prepared before the call may be made, ending in execve
/// or _exit.
pub unsafe fn clone_fork(flags: libc::c_int) -> io::Result<libc::pid_t> {
    // SAFETY: with a NULL stack, clone behaves like fork (the caller upholds the rest).
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as libc::pid_t)
    }
}

/// A pipe with both ends close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two fds.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 returned two new fds we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// kill(2).
pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: plain numbers.
    check(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// Sets close-on-exec on `fd`.
pub fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_SETFD with an integer flag.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) }).map(drop)
}

/// dup2(2).
pub fn dup2(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: plain integers; `to` is replaced atomically.
    check(unsafe { libc::dup2(from, to) }).map(drop)
}

/// Sends `data` on the stream socket `sock` with `fd` attached (SCM_RIGHTS), in one
/// sendmsg: the fd arrives with the first byte of `data`.
pub fn send_with_fd(sock: RawFd, data: &[u8], fd: RawFd) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: CMSG_SPACE is a size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: all-zero is a valid msghdr; the fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: the control buffer has room for one cmsg with one fd; CMSG_* stay in it.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
    }
    let n = loop {
        // SAFETY: `msg` and what it points to outlive the call.
        let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    // The fd went with the first part; the rest (if the socket took only part) is plain.
    let mut rest = &data[n..];
    while !rest.is_empty() {
        // SAFETY: sending from a live buffer of its length.
        let n = unsafe { libc::send(sock, rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        rest = &rest[n as usize..];
    }
    Ok(())
}

/// Reads up to `buf.len()` bytes from the stream socket `sock`, with the fd attached to
/// them, if any (close-on-exec).
pub fn recv_with_fd(sock: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: CMSG_SPACE is a size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: all-zero is a valid msghdr; the fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space;
    let n = loop {
        // SAFETY: `msg` points at live buffers that outlive the call.
        let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    // SAFETY: the kernel filled the control buffer; CMSG_FIRSTHDR checks its length.
    let c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    // SAFETY: `c` is null or a complete cmsg header inside `cbuf`.
    let fd = if !c.is_null() && unsafe { (*c).cmsg_type } == libc::SCM_RIGHTS {
        // SAFETY: an SCM_RIGHTS cmsg carries an fd, now ours.
        Some(unsafe {
            OwnedFd::from_raw_fd(std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<RawFd>()))
        })
    } else {
        None
    };
    Ok((n, fd))
}

/// Opens a new terminal in the devpts instance behind `ptmx` (the caller's
/// /dev/ptmx): (master, slave). Opened from inside a container, its name resolves there.
pub fn open_pty_at(ptmx: &Path) -> io::Result<(OwnedFd, OwnedFd)> {
    let p = cstr(ptmx)?;
    // SAFETY: a valid C string and flags.
    let m =
        check(unsafe { libc::open(p.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) })?;
    // SAFETY: open returned a new fd we own.
    let master = unsafe { OwnedFd::from_raw_fd(m) };
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int.
    check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) })?;
    // SAFETY: TIOCGPTPEER takes open flags and returns a new fd for the slave.
    let s = check(unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY,
        )
    })?;
    // SAFETY: the ioctl returned a new fd we own.
    Ok((master, unsafe { OwnedFd::from_raw_fd(s) }))
}

/// Sets a terminal's window size.
pub fn set_winsize(fd: RawFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer.
    check(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) }).map(drop)
}

/// Makes the calling process a session leader with `fd` as its controlling terminal.
pub fn set_controlling_tty(fd: RawFd) -> io::Result<()> {
    // SAFETY: setsid takes no arguments.
    check(unsafe { libc::setsid() })?;
    // SAFETY: TIOCSCTTY takes an integer argument.
    check(unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) }).map(drop)
}

/// execve(2); returns only on failure.
pub fn execve(path: &CStr, argv: &[CString], envp: &[CString]) -> io::Error {
    let mut a: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    a.push(std::ptr::null());
    let mut e: Vec<*const libc::c_char> = envp.iter().map(|c| c.as_ptr()).collect();
    e.push(std::ptr::null());
    // SAFETY: NULL-terminated arrays of valid C strings that outlive the call.
    unsafe { libc::execve(path.as_ptr(), a.as_ptr(), e.as_ptr()) };
    io::Error::last_os_error()
}

/// Writes the boot-timer byte to the VMM's port so the host can time guest boot.
pub fn hit_boot_timer() -> io::Result<()> {
    let port = devices_abi::BOOT_TIMER_PORT;
    // SAFETY: ioperm grants this process access to one port.
    check(unsafe { libc::ioperm(port as libc::c_ulong, 1, 1) })?;
    // SAFETY: port access was granted above; the VMM's boot timer ignores anything else.
    unsafe {
        std::arch::asm!("out dx, al", in("dx") port, in("al") devices_abi::BOOT_TIMER_MAGIC, options(nomem, nostack));
    }
    Ok(())
}

/// The shared guest ABI constants (no dependency on the devices crate).
#[path = "../../../devices/src/abi.rs"]
#[allow(dead_code)]
mod devices_abi;

/// Waits up to `timeout_ms` for stream socket `sock` to be closed by its peer; true if it
/// was (hang-up, error, or end of stream with no data pending).
pub fn peer_closed(sock: RawFd, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd: sock,
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    if n <= 0 {
        return false;
    }
    if p.revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
        return true;
    }
    let mut b = 0u8;
    // SAFETY: a one-byte peek into a live buffer.
    let r = unsafe {
        libc::recv(
            sock,
            (&mut b as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if r > 0 {
        // The peer sent something while waiting (not expected): not a hang-up, but do not
        // spin on it either.
        std::thread::sleep(std::time::Duration::from_millis(timeout_ms.max(0) as u64));
    }
    r == 0
}
