//! Hardening of the `capsa vm run` process before the guest runs: inherited fds closed,
//! no_new_privs, resource limits, no core dumps, an optional private empty root, and the
//! per-thread seccomp filters (seccomp crate) installed through the VMM's thread hook.
//! An OCI sandbox's host process (oci/shim.rs) uses the same pieces, plus the worker
//! filter for its threads outside the VM.

use std::ffi::CString;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use clap::Args;
use seccomp::{Devices, Filters, Level, ThreadKind};
use vmm::{ThreadHook, ThreadRole, VmConfig};

/// Sandbox options of `capsa vm run`.
#[derive(Args, Debug, Clone)]
pub struct SandboxArgs {
    /// Seccomp filters on the VMM and vCPU threads. 2 (or kill, the default): a syscall
    /// outside the thread's allow-list kills capsa with SIGSYS. 1 (or log): it is allowed
    /// and the kernel logs it (audit record type=1326, see dmesg). 0 (or off): no filter.
    #[arg(long, value_name = "0|1|2", default_value = "2", value_parser = parse_level)]
    pub seccomp_level: Level,
    /// Once the kernel, initrd, disks, shares and /dev/kvm are open, make DIR (created if
    /// missing) the process's root: a read-only tmpfs in a private mount namespace, empty
    /// but for the vsock socket's directory (bind-mounted). Needs CAP_SYS_ADMIN.
    #[arg(long, value_name = "DIR")]
    pub chroot: Option<PathBuf>,
}

impl SandboxArgs {
    /// The thread hook installing the seccomp filters for the devices of `config` (see
    /// [`thread_hook`]).
    pub fn thread_hook(&self, config: &VmConfig) -> anyhow::Result<Option<ThreadHook>> {
        let devices = Devices {
            block: !config.disks.is_empty(),
            vsock: config.vsock.is_some(),
            virtio_fs: !config.shares.is_empty(),
        };
        thread_hook(self.seccomp_level, devices)
    }

    /// What `--chroot` will need once the VM of `config` runs: the directory of the vsock
    /// socket (guest connections go to `<uds>_<port>` next to it, and the device removes
    /// its socket at the end).
    pub fn jail(&self, config: &VmConfig) -> Jail {
        let binds = config
            .vsock
            .iter()
            .filter_map(|v| {
                std::path::absolute(&v.uds)
                    .ok()?
                    .parent()
                    .map(PathBuf::from)
            })
            .collect();
        Jail {
            dir: self.chroot.clone(),
            binds,
        }
    }
}

/// A pending `--chroot`.
#[derive(Debug)]
pub struct Jail {
    dir: Option<PathBuf>,
    binds: Vec<PathBuf>,
}

impl Jail {
    /// Enters the new root (see [`confine_fs`]); nothing without `--chroot`.
    pub fn enter(self) -> anyhow::Result<()> {
        match &self.dir {
            Some(dir) => confine_fs(dir, &self.binds),
            None => Ok(()),
        }
    }
}

fn parse_level(s: &str) -> Result<Level, String> {
    s.parse().map_err(|e: seccomp::Error| e.to_string())
}

/// Ceiling for RLIMIT_NOFILE: virtio-fs holds one fd per guest inode, so the soft limit
/// goes up to the hard one, but no further than this.
const NOFILE_MAX: u64 = 1 << 20;

fn errno<T>(what: &str) -> anyhow::Result<T> {
    Err(std::io::Error::last_os_error()).with_context(|| what.to_string())
}

/// The fds named by paths such as `/dev/fd/N` or `/proc/self/fd/N`: a caller handing
/// capsa an open file that way wants it kept.
fn fds_named_by<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Vec<RawFd> {
    paths
        .into_iter()
        .filter_map(|p| {
            let s = p.to_str()?;
            s.strip_prefix("/dev/fd/")
                .or_else(|| s.strip_prefix("/proc/self/fd/"))?
                .parse()
                .ok()
        })
        .collect()
}

/// Process-wide hardening, to be called before capsa opens anything: closes every fd
/// above stderr but those `named` as `/dev/fd/N` or `/proc/self/fd/N`, sets no_new_privs,
/// disables core dumps and ptrace by other processes of the same user (guest memory must
/// leak through neither), and pins RLIMIT_NOFILE: soft = hard = the old hard limit (at
/// most 2^20), as virtio-fs needs, and never raised again.
pub fn harden_process<'a>(named: impl IntoIterator<Item = &'a Path>) -> anyhow::Result<()> {
    harden_process_keeping(&fds_named_by(named))
}

/// [`harden_process`] keeping the inherited fds `keep` (besides stdin, stdout, stderr).
pub fn harden_process_keeping(keep: &[RawFd]) -> anyhow::Result<()> {
    close_inherited_fds(keep)?;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return errno("prctl(PR_SET_NO_NEW_PRIVS)");
    }
    // Not dumpable: no core file, and /proc/<pid>/mem and ptrace are closed to other
    // processes of the same user. The kernel also resets this on a setuid change.
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return errno("prctl(PR_SET_DUMPABLE)");
    }
    set_rlimit(libc::RLIMIT_CORE, 0, 0)?;
    let (_, hard) = get_rlimit(libc::RLIMIT_NOFILE)?;
    let nofile = hard.min(NOFILE_MAX);
    set_rlimit(libc::RLIMIT_NOFILE, nofile, nofile)?;
    tracing::debug!(nofile, ?keep, "process hardened");
    Ok(())
}

fn get_rlimit(res: libc::__rlimit_resource_t) -> anyhow::Result<(u64, u64)> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid rlimit for the kernel to fill.
    if unsafe { libc::getrlimit(res, &mut r) } != 0 {
        return errno("getrlimit");
    }
    Ok((r.rlim_cur, r.rlim_max))
}

fn set_rlimit(res: libc::__rlimit_resource_t, soft: u64, hard: u64) -> anyhow::Result<()> {
    let r = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `r` is a valid rlimit.
    if unsafe { libc::setrlimit(res, &r) } != 0 {
        return errno(&format!("setrlimit({res}, {soft}, {hard})"));
    }
    Ok(())
}

/// Closes every fd from 3 up except `keep`.
fn close_inherited_fds(keep: &[RawFd]) -> anyhow::Result<()> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter(|fd| **fd > 2)
        .map(|fd| *fd as u32)
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut first = 3u32;
    for k in keep.iter().copied().chain([u32::MAX]) {
        // The last range ends at u32::MAX itself (fd numbers never get there).
        let last = if k == u32::MAX { k } else { k - 1 };
        if first <= last && !close_range(first, last)? {
            return close_inherited_fds_slowly(&keep);
        }
        first = k.saturating_add(1);
    }
    Ok(())
}

/// close_range(2); false if the kernel lacks it (before 5.9).
fn close_range(first: u32, last: u32) -> anyhow::Result<bool> {
    // SAFETY: close_range takes integers only; no fd in the range is in use by capsa yet.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
    if r == 0 {
        return Ok(true);
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::ENOSYS) => Ok(false),
        _ => errno("close_range"),
    }
}

fn close_inherited_fds_slowly(keep: &[u32]) -> anyhow::Result<()> {
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .context("listing /proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    // The directory's own fd is closed by now; closing it again just fails with EBADF.
    for fd in fds {
        if fd > 2 && !keep.contains(&(fd as u32)) {
            // SAFETY: capsa has not opened anything yet: every such fd was inherited.
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

/// Test hook, for capsa's integration tests only: when `CAPSA_TEST_FORBIDDEN_SYSCALL` is
/// set, one thread makes a syscall outside its allow-list right after installing its
/// filter, proving the filter is live. Values: `vcpu` (vCPU 0 calls getppid), `vcpu-ioctl`
/// (vCPU 0 issues KVM_CREATE_VM, a request its filter does not allow, on fd -1) and `vmm`
/// (the VMM thread calls getppid). Harmless: the calls change nothing, and the worst a
/// filter can do is kill capsa itself, which whoever sets the variable can do anyway.
const TEST_FORBIDDEN_SYSCALL: &str = "CAPSA_TEST_FORBIDDEN_SYSCALL";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ForbiddenCall {
    VcpuSyscall,
    VcpuIoctl,
    VmmSyscall,
}

impl ForbiddenCall {
    fn from_env() -> anyhow::Result<Option<Self>> {
        let Some(v) = std::env::var_os(TEST_FORBIDDEN_SYSCALL) else {
            return Ok(None);
        };
        let call = match v.to_str() {
            Some("vcpu") => ForbiddenCall::VcpuSyscall,
            Some("vcpu-ioctl") => ForbiddenCall::VcpuIoctl,
            Some("vmm") => ForbiddenCall::VmmSyscall,
            _ => bail!("{TEST_FORBIDDEN_SYSCALL}={v:?}: expected vcpu, vcpu-ioctl or vmm"),
        };
        tracing::warn!("{TEST_FORBIDDEN_SYSCALL} is set: {call:?} will be made (test hook)");
        Ok(Some(call))
    }

    fn make_if_for(self, role: ThreadRole) {
        match (self, role) {
            (ForbiddenCall::VcpuSyscall, ThreadRole::Vcpu(0))
            | (ForbiddenCall::VmmSyscall, ThreadRole::Vmm) => {
                // SAFETY: getppid has no arguments or effects.
                unsafe { libc::syscall(libc::SYS_getppid) };
            }
            (ForbiddenCall::VcpuIoctl, ThreadRole::Vcpu(0)) => {
                const KVM_CREATE_VM: libc::c_ulong = 0xae01;
                // SAFETY: fd -1 makes the call fail with EBADF if it gets through.
                unsafe { libc::syscall(libc::SYS_ioctl, -1, KVM_CREATE_VM, 0) };
            }
            _ => {}
        }
    }
}

/// The compiled filters of this process for a VM with `devices`, or `None` at level 0.
pub fn filters(level: Level, devices: Devices) -> anyhow::Result<Option<Filters>> {
    let ctx = seccomp::Context {
        // SAFETY: getpid has no preconditions.
        pid: unsafe { libc::getpid() },
        // vmm kicks vCPUs with vmm-sys-util's SIGRTMIN(), which is libc's.
        kick_signal: libc::SIGRTMIN(),
        devices,
    };
    let filters = Filters::compile(&ctx, level)?;
    if filters.is_none() {
        tracing::warn!("seccomp filters are off (seccomp level 0)");
    }
    Ok(filters)
}

/// The VMM thread hook that installs each thread's seccomp filter, or `None` at level 0.
/// The filters are compiled here, so a bad list fails before any VM work.
pub fn thread_hook(level: Level, devices: Devices) -> anyhow::Result<Option<ThreadHook>> {
    let Some(filters) = filters(level, devices)? else {
        return Ok(None);
    };
    let forbidden = ForbiddenCall::from_env()?;
    tracing::debug!(?level, ?devices, "seccomp filters compiled");
    Ok(Some(Arc::new(move |role| {
        let kind = match role {
            ThreadRole::Vmm => ThreadKind::Vmm,
            ThreadRole::Vcpu(_) => ThreadKind::Vcpu,
        };
        filters.apply(kind).map_err(|e| e.to_string())?;
        if let Some(f) = forbidden {
            f.make_if_for(role);
        }
        Ok(())
    })))
}

/// Makes `dir` the root of the process: a new mount namespace whose root is an empty
/// read-only tmpfs mounted on `dir`, holding only `binds` (host directories, bind-mounted
/// at the same absolute paths, nosuid, nodev and noexec). Everything else the VM needs
/// must be open already, and no thread may exist yet (a namespace or root change would
/// not reach it).
pub fn confine_fs(dir: &Path, binds: &[PathBuf]) -> anyhow::Result<()> {
    let threads = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse::<u32>().ok())
        });
    if threads != Some(1) {
        bail!("--chroot: capsa must be single-threaded to change its root ({threads:?} threads)");
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .create(dir)
        .with_context(|| format!("--chroot: creating {}", dir.display()))?;
    let cdir = CString::new(dir.as_os_str().as_bytes()).context("--chroot: NUL in path")?;
    // SAFETY: unshare with a flag only.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return errno("--chroot: unshare(CLONE_NEWNS) (needs CAP_SYS_ADMIN)");
    }
    // Our mounts must not propagate back to the host's namespace.
    mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)?;
    mount(
        Some(c"capsa-root"),
        &cdir,
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some(c"size=64k,nr_inodes=256,mode=0755"),
    )?;
    for b in binds {
        let inside = dir.join(b.strip_prefix("/").unwrap_or(b));
        std::fs::create_dir_all(&inside)
            .with_context(|| format!("--chroot: creating {}", inside.display()))?;
        let src = CString::new(b.as_os_str().as_bytes()).context("--chroot: NUL in path")?;
        let dst = CString::new(inside.as_os_str().as_bytes()).context("--chroot: NUL in path")?;
        mount(Some(&src), &dst, None, libc::MS_BIND, None)?;
        // Bind mounts take these flags only on a remount.
        let flags =
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        mount(None, &dst, None, flags, None)?;
    }
    // SAFETY: `cdir` is a valid C string.
    if unsafe { libc::chdir(cdir.as_ptr()) } != 0 {
        return errno("--chroot: chdir");
    }
    // pivot_root(".", "."): the old root ends up stacked on the new one, then is detached,
    // leaving no path back to host files (unlike a plain chroot).
    // SAFETY: two valid C strings.
    let pivoted = unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) };
    if pivoted == 0 {
        // SAFETY: a valid C string.
        if unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) } != 0 {
            return errno("--chroot: detaching the old root");
        }
    } else {
        // The host root may be an initramfs, which cannot be pivoted away: chroot instead.
        // The seccomp filters then keep the VMM from using chroot or open to walk out.
        tracing::debug!(
            "pivot_root failed ({}); using chroot",
            std::io::Error::last_os_error()
        );
        // SAFETY: a valid C string.
        if unsafe { libc::chroot(c".".as_ptr()) } != 0 {
            return errno("--chroot: chroot");
        }
    }
    // SAFETY: a valid C string.
    if unsafe { libc::chdir(c"/".as_ptr()) } != 0 {
        return errno("--chroot: chdir /");
    }
    mount(
        None,
        c"/",
        None,
        libc::MS_REMOUNT
            | libc::MS_BIND
            | libc::MS_RDONLY
            | libc::MS_NOSUID
            | libc::MS_NODEV
            | libc::MS_NOEXEC,
        None,
    )?;
    tracing::debug!(dir = %dir.display(), "root confined");
    Ok(())
}

fn mount(
    src: Option<&std::ffi::CStr>,
    target: &std::ffi::CStr,
    fstype: Option<&std::ffi::CStr>,
    flags: libc::c_ulong,
    data: Option<&std::ffi::CStr>,
) -> anyhow::Result<()> {
    let ptr = |s: Option<&std::ffi::CStr>| s.map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is null or a valid C string that outlives the call.
    let r = unsafe {
        libc::mount(
            ptr(src),
            target.as_ptr(),
            ptr(fstype),
            flags,
            ptr(data).cast(),
        )
    };
    if r != 0 {
        return errno(&format!("--chroot: mount {target:?} (flags {flags:#x})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fds_named_in_paths() {
        let paths = [
            Path::new("/dev/fd/7"),
            Path::new("/proc/self/fd/12"),
            Path::new("/x/disk.img"),
            Path::new("/dev/fd/x"),
        ];
        assert_eq!(fds_named_by(paths), vec![7, 12]);
    }

    #[test]
    fn levels() {
        assert_eq!(parse_level("kill").unwrap(), Level::Kill);
        assert_eq!(parse_level("0").unwrap(), Level::Off);
        assert!(parse_level("9").unwrap_err().contains("expected 0"));
    }
}
