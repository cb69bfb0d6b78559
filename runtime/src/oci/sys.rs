//! Host system calls the OCI side needs: terminals, fd passing, signals, bind mounts.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in path"))
}

/// A pseudo-terminal pair (both close-on-exec) and the slave's name.
pub struct Pty {
    /// Master end (goes to the console socket).
    pub master: OwnedFd,
    /// Slave end (relayed to the guest's terminal).
    pub slave: OwnedFd,
    /// /dev/pts/N.
    pub name: String,
}

/// Opens a pty pair with the slave in raw mode: the guest's own terminal does the line
/// discipline, the host one must pass bytes through untouched.
pub fn open_pty() -> io::Result<Pty> {
    let mut m = 0;
    let mut s = 0;
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: out-pointers for two fds and a name buffer larger than any pts path;
    // termios and winsize may be NULL.
    check(unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            name.as_mut_ptr(),
            std::ptr::null(),
            std::ptr::null(),
        )
    })?;
    // SAFETY: openpty returned two new fds we now own.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
    for fd in [&master, &slave] {
        // SAFETY: setting FD_CLOEXEC on an fd we own.
        check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) })?;
    }
    // SAFETY: openpty NUL-terminated the name within the buffer.
    let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    set_raw(slave.as_raw_fd())?;
    Ok(Pty {
        master,
        slave,
        name,
    })
}

/// Puts a terminal in raw mode; returns the previous settings.
pub fn set_raw(fd: RawFd) -> io::Result<libc::termios> {
    // SAFETY: all-zero is a valid termios for tcgetattr to fill.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `t` is a valid termios.
    check(unsafe { libc::tcgetattr(fd, &mut t) })?;
    let old = t;
    // SAFETY: `t` is a valid termios.
    unsafe { libc::cfmakeraw(&mut t) };
    // SAFETY: `t` is a valid termios.
    check(unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) })?;
    Ok(old)
}

/// Restores terminal settings saved by [`set_raw`].
pub fn restore_termios(fd: RawFd, t: &libc::termios) {
    // SAFETY: `t` is a valid termios.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, t) };
}

/// The window size of a terminal (rows, cols).
pub fn winsize(fd: RawFd) -> io::Result<(u16, u16)> {
    // SAFETY: all-zero is a valid winsize for the kernel to fill.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes a winsize through the pointer.
    check(unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) })?;
    Ok((ws.ws_row, ws.ws_col))
}

/// Makes `fd` (a terminal) the calling session leader's controlling terminal, so window
/// size changes arrive as SIGWINCH.
pub fn set_controlling_tty(fd: RawFd) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument.
    check(unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) }).map(drop)
}

/// True if `fd` is a terminal.
pub fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty takes any integer.
    unsafe { libc::isatty(fd) == 1 }
}

/// Sends `fd` with `name` as payload over the Unix socket at `socket` (runc's
/// console-socket protocol).
pub fn send_fd(socket: &Path, fd: RawFd, name: &str) -> io::Result<()> {
    let s = UnixStream::connect(socket)?;
    let payload = name.as_bytes();
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: all-zero is a valid msghdr; the fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: msg_control points at `space` bytes, room for one cmsg carrying one fd;
    // CMSG_FIRSTHDR/CMSG_DATA stay inside it.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
    }
    // SAFETY: `msg` and everything it points to outlive the call.
    let n = unsafe { libc::sendmsg(s.as_raw_fd(), &msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one fd sent with [`send_fd`] (the console socket's other end, for tests).
#[cfg(test)]
pub fn recv_fd(s: &UnixStream) -> io::Result<(OwnedFd, String)> {
    let mut buf = [0u8; 256];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: all-zero is a valid msghdr; the fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: `msg` points at valid buffers that outlive the call.
    let n = unsafe { libc::recvmsg(s.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled msg_control; CMSG_FIRSTHDR checks its length.
    let c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    // SAFETY: `c` is null or points at a complete cmsg header inside `cbuf`.
    if c.is_null() || unsafe { (*c).cmsg_type } != libc::SCM_RIGHTS {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "no fd received"));
    }
    // SAFETY: an SCM_RIGHTS cmsg carries at least one fd, now ours.
    let fd = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<RawFd>()) };
    // SAFETY: the received fd is new and owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok((fd, String::from_utf8_lossy(&buf[..n as usize]).into_owned()))
}

/// gettid(2).
pub fn gettid() -> i32 {
    // SAFETY: gettid has no arguments.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// kill(2).
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: plain integers.
    check(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// A signal set of `sigs`.
pub fn sigset(sigs: &[i32]) -> libc::sigset_t {
    // SAFETY: all-zero is a valid sigset_t; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        for s in sigs {
            libc::sigaddset(&mut set, *s);
        }
    }
    set
}

/// Blocks `sigs` in the calling thread (threads created afterwards inherit the mask).
pub fn block_signals(sigs: &[i32]) -> io::Result<()> {
    let set = sigset(sigs);
    // SAFETY: `set` is valid; the old mask is not needed.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// Waits for one of the (blocked) signals in `set`.
pub fn sigwait(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: `set` and `sig` are valid for the call.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}

/// A close-on-exec pipe (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two fds.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 returned two new fds we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Clears FD_CLOEXEC so a child inherits `fd`.
pub fn inheritable(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_SETFD with 0 on an fd the caller owns.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }).map(drop)
}

/// Bind-mounts `src` on `dst` (recursively).
pub fn bind_mount(src: &Path, dst: &Path) -> io::Result<()> {
    let (s, d) = (cpath(src)?, cpath(dst)?);
    // SAFETY: valid C strings; no data argument.
    check(unsafe {
        libc::mount(
            s.as_ptr(),
            d.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    })
    .map(drop)
}

/// Makes the bind mount at `dst` read-only.
pub fn remount_ro(dst: &Path) -> io::Result<()> {
    let d = cpath(dst)?;
    // SAFETY: a valid C string; no source, type or data.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            d.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
            std::ptr::null(),
        )
    })
    .map(drop)
}

/// Makes the mount at `dst` private (its submounts do not propagate to peers).
pub fn make_private(dst: &Path) -> io::Result<()> {
    let d = cpath(dst)?;
    // SAFETY: a valid C string; no source, type or data.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            d.as_ptr(),
            std::ptr::null(),
            libc::MS_PRIVATE,
            std::ptr::null(),
        )
    })
    .map(drop)
}

/// Detaches the mount at `dst` (lazily, as busy mounts cannot go at once).
pub fn umount(dst: &Path) -> io::Result<()> {
    let d = cpath(dst)?;
    // SAFETY: a valid C string.
    check(unsafe { libc::umount2(d.as_ptr(), libc::MNT_DETACH) }).map(drop)
}

/// Number of online CPUs.
pub fn online_cpus() -> u32 {
    // SAFETY: sysconf takes an integer.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    n.max(1) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn pty_master_passes_over_a_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("console.sock");
        let l = UnixListener::bind(&sock).unwrap();
        let pty = open_pty().unwrap();
        assert!(pty.name.starts_with("/dev/pts/"), "{}", pty.name);
        send_fd(&sock, pty.master.as_raw_fd(), &pty.name).unwrap();
        let (conn, _) = l.accept().unwrap();
        let (fd, name) = recv_fd(&conn).unwrap();
        assert_eq!(name, pty.name);
        // The received fd is the same terminal: a write on it reads back on the slave.
        let mut m = std::fs::File::from(fd);
        use std::io::{Read, Write};
        m.write_all(b"hi\n").unwrap();
        let mut s = std::fs::File::from(pty.slave);
        let mut buf = [0u8; 3];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi\n", "raw mode passes bytes unchanged");
    }
}
