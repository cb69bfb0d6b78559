//! Helpers for the OCI tests that boot real guests: the guest kernel, busybox bundles,
//! and waiting for re-parented host processes.

#![allow(dead_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Booting and creating a container on a PVM host (guest ring 0 emulated) takes minutes;
/// on hardware KVM about a second.
pub const GUEST_DEADLINE: Duration = Duration::from_secs(900);

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Builds (or takes from the cache) the guest kernel and returns its vmlinux.
pub fn guest_kernel() -> PathBuf {
    let out = Command::new("bash")
        .arg(repo_root().join("guest-kernel/build.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("running guest-kernel/build.sh");
    assert!(out.status.success(), "guest kernel build failed");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let path = PathBuf::from(stdout.lines().last().expect("build.sh printed a path"));
    assert!(path.is_file(), "{} is not a file", path.display());
    path
}

/// A busybox bundle made by tools/busybox-bundle.sh running `args`.
pub fn busybox_bundle(dir: &Path, tty: bool, args: &[&str]) -> PathBuf {
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("tools/busybox-bundle.sh"))
        .arg(dir);
    if tty {
        cmd.arg("--tty");
    }
    let out = cmd.args(args).output().unwrap();
    assert!(
        out.status.success(),
        "busybox-bundle.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.to_path_buf()
}

/// Edits a bundle's config.json.
pub fn edit_config(bundle: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = bundle.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// Makes this process the subreaper of its descendants, as conmon and containerd's shim
/// are: a container's host process, orphaned when `create` exits, becomes our child.
pub fn become_subreaper() {
    // SAFETY: prctl with integer arguments.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0, "PR_SET_CHILD_SUBREAPER");
}

/// The parent pid of `pid`.
pub fn ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Waits for our child (or adopted orphan) `pid` to exit; its shell-style exit code.
pub fn wait_pid(pid: i32, deadline: Duration) -> i32 {
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(
            r >= 0,
            "waitpid({pid}): {}",
            std::io::Error::last_os_error()
        );
        if r == pid {
            return if libc::WIFSIGNALED(status) {
                128 + libc::WTERMSIG(status)
            } else {
                libc::WEXITSTATUS(status)
            };
        }
        assert!(
            start.elapsed() < deadline,
            "pid {pid} still runs after {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Receives the fd a runtime sends over a console socket (SCM_RIGHTS).
pub fn recv_fd(s: &UnixStream) -> OwnedFd {
    let mut buf = [0u8; 256];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: CMSG_SPACE is a size computation.
    let space = unsafe { libc::CMSG_SPACE(4) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: all-zero is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: msg points at live buffers.
    let n = unsafe { libc::recvmsg(s.as_raw_fd(), &mut msg, 0) };
    assert!(n >= 0, "recvmsg: {}", std::io::Error::last_os_error());
    // SAFETY: the kernel filled the control buffer; CMSG_FIRSTHDR checks its length.
    let c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    assert!(!c.is_null(), "no fd received");
    // SAFETY: an SCM_RIGHTS message carries an fd, now ours.
    unsafe { OwnedFd::from_raw_fd(std::ptr::read_unaligned(libc::CMSG_DATA(c).cast())) }
}

/// Sets a terminal's size.
pub fn set_winsize(fd: &OwnedFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

/// Threads of `pid` whose name starts with `prefix`.
pub fn threads_named(pid: i32, prefix: &str) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let tid: i32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            comm.starts_with(prefix).then_some(tid)
        })
        .collect()
}

/// Reads a file, trimmed.
pub fn read_trim(p: impl AsRef<Path>) -> String {
    std::fs::read_to_string(p.as_ref())
        .unwrap_or_else(|e| panic!("{}: {e}", p.as_ref().display()))
        .trim()
        .to_string()
}

/// Waits until `f` holds, polling.
pub fn wait_until(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads from `fd` until the text read contains `needle`, the fd ends, or `deadline`.
pub fn read_until(fd: &OwnedFd, needle: &str, deadline: Duration) -> String {
    let start = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains(needle) && start.elapsed() < deadline {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, 500) };
        if r <= 0 {
            continue;
        }
        // SAFETY: reading into a live buffer of its length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n as usize]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}
