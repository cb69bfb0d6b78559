//! PID 1 duties: mount the basic filesystems, then hand over to the agent; reap orphans.

use std::path::Path;

use super::sys;

/// Mounts a filesystem unless something is already mounted there (the kernel may have
/// mounted devtmpfs itself).
fn mount_fs(fstype: &str, target: &str, flags: libc::c_ulong, data: Option<&str>) {
    let t = Path::new(target);
    let _ = std::fs::create_dir_all(t);
    if let Err(e) = sys::mount(Some(fstype), t, Some(fstype), flags, data) {
        if e.kind() != std::io::ErrorKind::ResourceBusy {
            eprintln!("capsa-agent: {e}");
        }
    }
}

/// Sets up the guest's own filesystems.
pub fn setup_filesystems() {
    let nosuid_nodev_noexec = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount_fs("proc", "/proc", nosuid_nodev_noexec, None);
    mount_fs("sysfs", "/sys", nosuid_nodev_noexec, None);
    mount_fs("devtmpfs", "/dev", libc::MS_NOSUID, Some("mode=0755"));
    mount_fs(
        "devpts",
        "/dev/pts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    );
    mount_fs(
        "tmpfs",
        "/dev/shm",
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=1777"),
    );
    mount_fs(
        "tmpfs",
        "/run",
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=0755"),
    );
    mount_fs(
        "tmpfs",
        "/tmp",
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=1777"),
    );
    mount_fs("cgroup2", "/sys/fs/cgroup", nosuid_nodev_noexec, None);
    // Controllers for container cgroups (children of the root).
    let _ = std::fs::write(
        "/sys/fs/cgroup/cgroup.subtree_control",
        "+cpu +memory +pids",
    );
}

/// The agent's entry point when capsa runs as the guest's /init.
pub fn main() -> ! {
    setup_filesystems();
    let _ = sys::sethostname("capsa");
    // /dev/console is the serial port: keep the agent's own diagnostics there.
    super::agent::run()
}
