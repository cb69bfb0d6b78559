//! The two socket calls std does not offer: a connect that never blocks and a send that never
//! raises SIGPIPE. Both run on the vmm's event-loop thread, which must not stall or die
//! because of a misbehaving host peer.

use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Connects a non-blocking stream socket to `path`.
///
/// A Unix-domain connect completes (or fails) immediately; with O_NONBLOCK a listener whose
/// backlog is full yields `WouldBlock` instead of stalling the caller.
pub(crate) fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    let mut addr = libc::sockaddr_un {
        sun_family: libc::AF_UNIX as libc::sa_family_t,
        sun_path: [0; 108],
    };
    // Room for the terminating NUL: abstract or truncated paths would name another socket.
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "unusable Unix socket path",
        ));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: socket(2) takes no pointers; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    debug_assert!(len <= size_of::<libc::sockaddr_un>());
    // SAFETY: `addr` is an initialised sockaddr_un that outlives the call and `len` does not
    // exceed its size; `fd` is an open socket.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

/// `send(2)` with MSG_NOSIGNAL: a peer that went away yields EPIPE instead of SIGPIPE, whatever
/// the process's signal disposition.
pub(crate) fn send_nosignal(stream: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the duration of the call and
    // the descriptor is kept open by `stream`.
    let n = unsafe {
        libc::send(
            stream.as_raw_fd(),
            buf.as_ptr().cast::<libc::c_void>(),
            buf.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::net::UnixListener;

    use vmm_sys_util::tempdir::TempDir;

    use super::*;

    #[test]
    fn connect_and_send() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("s");
        assert_eq!(
            connect_nonblocking(&path).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        let listener = UnixListener::bind(&path).unwrap();
        let s = connect_nonblocking(&path).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        assert_eq!(send_nosignal(&s, b"hello").unwrap(), 5);
        let mut b = [0u8; 5];
        peer.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"hello");
        drop(peer);
        // EPIPE rather than a signal.
        assert_eq!(
            send_nosignal(&s, b"x").unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );

        // Nobody listening any more on an existing path.
        drop(listener);
        assert_eq!(
            connect_nonblocking(&path).unwrap_err().kind(),
            io::ErrorKind::ConnectionRefused
        );
        let long = dir.as_path().join("x".repeat(200));
        assert_eq!(
            connect_nonblocking(&long).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
