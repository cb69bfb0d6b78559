//! The probe guest embedded at build time (see build.rs and tools/probe-guest), so
//! `capsa vm run` works with no kernel at hand.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

/// The probe guest's ELF image.
pub static PROBE_GUEST: &[u8] = include_bytes!(env!("CAPSA_PROBE_GUEST"));

/// Writes the probe guest into an anonymous memory file and returns a path to it, with the
/// fd that keeps it alive.
pub fn materialize() -> std::io::Result<(PathBuf, OwnedFd)> {
    // SAFETY: the name is a NUL-terminated literal; flags are valid.
    let fd = unsafe { libc::memfd_create(c"capsa-probe-guest".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a new fd owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(owned.try_clone()?);
    file.write_all(PROBE_GUEST)?;
    let path = PathBuf::from(format!("/proc/self/fd/{}", owned.as_raw_fd()));
    Ok((path, owned))
}
