//! The first process of a container, and the first of every exec'd process: capsa
//! re-executed as `__container-init` / `__container-exec` inside fresh (or joined)
//! namespaces. Being a new single-threaded process, it can do all setup with ordinary code.
//! It talks to the agent over fd 3 (close-on-exec): config in, `Ready` or `Error` out,
//! then `Start` in; a successful exec closes fd 3, which tells the agent the program runs.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Mount, Process, Spec};
use serde::{Deserialize, Serialize};

use super::{caps, sys};
use crate::agent::protocol::{read_frame, write_frame};

/// fd on which the agent talks to a container init or exec process.
pub const CONTROL_FD: i32 = 3;

/// What `__container-init` needs.
#[derive(Debug, Serialize, Deserialize)]
pub struct InitConfig {
    /// Guest path of the mounted rootfs.
    pub rootfs: String,
    /// The bundle spec.
    pub spec: Box<Spec>,
}

/// What `__container-exec` needs.
#[derive(Debug, Serialize, Deserialize)]
pub struct ExecConfig {
    /// Guest pid of the container's init, whose namespaces are joined.
    pub init_pid: i32,
    /// Namespaces to join, as /proc/PID/ns names (mnt last).
    pub namespaces: Vec<String>,
    /// The process.
    pub process: Box<Process>,
}

/// Messages on the control fd.
#[derive(Debug, Serialize, Deserialize)]
pub enum InitMsg {
    /// Setup done, waiting for Start.
    Ready,
    /// Run the program; for a container's init, first its startContainer hooks with this
    /// OCI state on stdin.
    Start(Option<String>),
    /// Setup or exec failed.
    Error(String),
    /// The process's terminal: its master end is attached to this frame (SCM_RIGHTS).
    Tty,
}

fn control() -> File {
    // dup2 in the agent cleared close-on-exec: set it again, or the container's program
    // would inherit the agent's socket and the agent would never see the exec happen.
    let _ = sys::set_cloexec(CONTROL_FD);
    // SAFETY: the agent passes fd 3 to this process and nothing else owns it here.
    unsafe { File::from_raw_fd(CONTROL_FD) }
}

/// Gives the process a terminal from the container's own devpts (so that its name, e.g.
/// for `tty`, resolves inside the container): the slave becomes fds 0-2, the master goes
/// to the agent with an [`InitMsg::Tty`] frame.
fn attach_terminal(ctl: &File) -> Result<(), String> {
    let (master, slave) = sys::open_pty_at(Path::new("/dev/ptmx"))
        .map_err(|e| format!("opening a terminal on /dev/ptmx: {e}"))?;
    for fd in 0..3 {
        sys::dup2(slave.as_raw_fd(), fd).map_err(|e| format!("terminal as fd {fd}: {e}"))?;
    }
    let mut frame = Vec::new();
    write_frame(&mut frame, &InitMsg::Tty).map_err(|e| e.to_string())?;
    sys::send_with_fd(ctl.as_raw_fd(), &frame, master.as_raw_fd())
        .map_err(|e| format!("passing the terminal to the agent: {e}"))
}

fn fail(ctl: &mut File, msg: String) -> ! {
    let _ = write_frame(ctl, &InitMsg::Error(msg));
    std::process::exit(127)
}

/// Entry of `capsa __container-init`.
pub fn init_main() -> ! {
    let mut ctl = control();
    let cfg: InitConfig = match read_frame(&mut ctl) {
        Ok(c) => c,
        Err(e) => fail(&mut ctl, format!("reading init config: {e}")),
    };
    let spec = &cfg.spec;
    let process = match spec.process() {
        Some(p) => p.clone(),
        None => fail(&mut ctl, "the spec has no process".into()),
    };
    if let Err(e) = setup_rootfs(&cfg) {
        fail(&mut ctl, e);
    }
    if let Some(h) = spec.hostname() {
        if let Err(e) = sys::sethostname(h) {
            fail(&mut ctl, format!("sethostname {h}: {e}"));
        }
    }
    if process.terminal().unwrap_or(false) {
        if let Err(e) = attach_terminal(&ctl) {
            fail(&mut ctl, e);
        }
    }
    run_process(ctl, &process, Some(spec))
}

/// Entry of `capsa __container-exec`.
pub fn exec_main() -> ! {
    let mut ctl = control();
    let cfg: ExecConfig = match read_frame(&mut ctl) {
        Ok(c) => c,
        Err(e) => fail(&mut ctl, format!("reading exec config: {e}")),
    };
    for ns in &cfg.namespaces {
        let path = format!("/proc/{}/ns/{ns}", cfg.init_pid);
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) => fail(&mut ctl, format!("{path}: {e}")),
        };
        if let Err(e) = sys::setns(f.as_raw_fd(), 0) {
            fail(&mut ctl, format!("joining {path}: {e}"));
        }
    }
    if let Err(e) = std::env::set_current_dir("/") {
        fail(&mut ctl, format!("chdir /: {e}"));
    }
    if cfg.process.terminal().unwrap_or(false) {
        if let Err(e) = attach_terminal(&ctl) {
            fail(&mut ctl, e);
        }
    }
    run_process(ctl, &cfg.process, None)
}

/// Applies the process settings, reports Ready, waits for Start, runs the startContainer
/// hooks of `hooks_of` (a container's init) and execs.
///
/// The hooks run as runc runs them: in the container's namespaces and root, with the
/// process's user and capabilities already applied, just before its program replaces
/// this process; a failing hook fails `start` and the process never runs.
fn run_process(mut ctl: File, p: &Process, hooks_of: Option<&Spec>) -> ! {
    let prepared = match prepare_process(p) {
        Ok(x) => x,
        Err(e) => fail(&mut ctl, e),
    };
    if write_frame(&mut ctl, &InitMsg::Ready).is_err() {
        std::process::exit(127);
    }
    let state = match read_frame::<_, InitMsg>(&mut ctl) {
        Ok(InitMsg::Start(state)) => state,
        // The agent went away or cancelled: never run the program.
        _ => std::process::exit(127),
    };
    if let Some(spec) = hooks_of {
        let state = state
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(serde_json::Value::Null);
        let hooked = crate::oci::hooks::run(spec, crate::oci::hooks::Point::StartContainer, &state);
        if let Err(e) = hooked {
            fail(&mut ctl, e.to_string());
        }
    }
    let (path, argv, envp) = prepared;
    let err = sys::execve(&path, &argv, &envp);
    fail(&mut ctl, format!("exec {}: {err}", path.to_string_lossy()))
}

type Prepared = (CString, Vec<CString>, Vec<CString>);

fn prepare_process(p: &Process) -> Result<Prepared, String> {
    if p.terminal().unwrap_or(false) {
        sys::set_controlling_tty(0).map_err(|e| format!("controlling terminal: {e}"))?;
    }
    for r in p.rlimits().iter().flatten() {
        let res = rlimit_resource(&format!("{:?}", r.typ()))
            .ok_or_else(|| format!("unsupported rlimit {:?}", r.typ()))?;
        sys::setrlimit(res, r.soft(), r.hard())
            .map_err(|e| format!("setrlimit {:?}: {e}", r.typ()))?;
    }
    let cwd = p.cwd();
    std::env::set_current_dir(cwd).map_err(|e| format!("cwd {}: {e}", cwd.display()))?;
    let env = with_guest_tunables(
        p.env().clone().unwrap_or_default(),
        std::env::var(super::GLIBC_TUNABLES).ok().as_deref(),
    );
    let args = p.args().clone().unwrap_or_default();
    let first = args.first().ok_or("the process has no args")?;
    let path = resolve_program(first, &env)?;
    let cs = |s: &str| CString::new(s).map_err(|_| format!("NUL byte in {s:?}"));
    let argv = args.iter().map(|a| cs(a)).collect::<Result<Vec<_>, _>>()?;
    let envp = env.iter().map(|a| cs(a)).collect::<Result<Vec<_>, _>>()?;
    let path = sys::cstr(&path).map_err(|e| e.to_string())?;

    apply_identity(p)?;
    if p.no_new_privileges().unwrap_or(false) {
        sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1).map_err(|e| format!("no_new_privs: {e}"))?;
    }
    Ok((path, argv, envp))
}

/// Adds the guest's glibc tunables (`guest`: this helper's own `GLIBC_TUNABLES`, set only
/// on PVM hosts, see [`super::PVM_GLIBC_TUNABLES`]) to a process's environment. A process
/// that sets its own tunables keeps them, with the guest's appended unless it chose its
/// own `glibc.cpu.hwcaps`.
pub fn with_guest_tunables(mut env: Vec<String>, guest: Option<&str>) -> Vec<String> {
    let Some(guest) = guest.filter(|g| !g.is_empty()) else {
        return env;
    };
    let prefix = format!("{}=", super::GLIBC_TUNABLES);
    match env.iter_mut().find(|e| e.starts_with(&prefix)) {
        Some(own) if own.contains("glibc.cpu.hwcaps=") => {}
        Some(own) if own.len() == prefix.len() => own.push_str(guest),
        Some(own) => {
            own.push(':');
            own.push_str(guest);
        }
        None => env.push(format!("{prefix}{guest}")),
    }
    env
}

fn apply_identity(p: &Process) -> Result<(), String> {
    let user = p.user();
    let groups: Vec<u32> = user.additional_gids().clone().unwrap_or_default();
    let c = p.capabilities().as_ref();
    let set = |s: Option<&std::collections::HashSet<oci_spec::runtime::Capability>>| {
        s.map_or(Ok(0), |s| {
            caps::mask(
                s.iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .iter()
                    .map(|s| s.as_str()),
            )
        })
    };
    let bounding = set(c.and_then(|c| c.bounding().as_ref()))?;
    let effective = set(c.and_then(|c| c.effective().as_ref()))?;
    let permitted = set(c.and_then(|c| c.permitted().as_ref()))?;
    let inheritable = set(c.and_then(|c| c.inheritable().as_ref()))?;
    let ambient = set(c.and_then(|c| c.ambient().as_ref()))?;
    for cap in 0..=caps::LAST_CAP {
        if bounding & (1 << cap) == 0 {
            // EINVAL: the running kernel does not know this capability; nothing to drop.
            if let Err(e) = sys::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong) {
                if e.raw_os_error() != Some(libc::EINVAL) {
                    return Err(format!(
                        "dropping capability {cap} from the bounding set: {e}"
                    ));
                }
            }
        }
    }
    sys::prctl(libc::PR_SET_KEEPCAPS, 1).map_err(|e| format!("keepcaps: {e}"))?;
    sys::set_ids(user.uid(), user.gid(), &groups)
        .map_err(|e| format!("switching to uid {} gid {}: {e}", user.uid(), user.gid()))?;
    sys::capset(sys::CapSets {
        effective,
        permitted,
        inheritable,
    })
    .map_err(|e| format!("setting capabilities: {e}"))?;
    for cap in 0..=caps::LAST_CAP {
        if ambient & (1 << cap) != 0 {
            // SAFETY: PR_CAP_AMBIENT takes three integer arguments.
            let r = unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE,
                    cap as libc::c_ulong,
                    0,
                    0,
                )
            };
            if r < 0 {
                return Err(format!(
                    "raising ambient capability {cap}: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
    }
    Ok(())
}

/// Resolves argv[0] against PATH from the process environment, as execvp would.
fn resolve_program(prog: &str, env: &[String]) -> Result<PathBuf, String> {
    if prog.contains('/') {
        return Ok(PathBuf::from(prog));
    }
    let path_var = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let cand = Path::new(dir).join(prog);
        if let Ok(m) = std::fs::metadata(&cand) {
            use std::os::unix::fs::PermissionsExt;
            if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                return Ok(cand);
            }
        }
    }
    Err(format!("executable file {prog:?} not found in $PATH"))
}

fn rlimit_resource(name: &str) -> Option<u32> {
    Some(match name.trim_start_matches("Rlimit") {
        "Cpu" => libc::RLIMIT_CPU,
        "Fsize" => libc::RLIMIT_FSIZE,
        "Data" => libc::RLIMIT_DATA,
        "Stack" => libc::RLIMIT_STACK,
        "Core" => libc::RLIMIT_CORE,
        "Rss" => libc::RLIMIT_RSS,
        "Nproc" => libc::RLIMIT_NPROC,
        "Nofile" => libc::RLIMIT_NOFILE,
        "Memlock" => libc::RLIMIT_MEMLOCK,
        "As" => libc::RLIMIT_AS,
        "Locks" => libc::RLIMIT_LOCKS,
        "Sigpending" => libc::RLIMIT_SIGPENDING,
        "Msgqueue" => libc::RLIMIT_MSGQUEUE,
        "Nice" => libc::RLIMIT_NICE,
        "Rtprio" => libc::RLIMIT_RTPRIO,
        "Rttime" => libc::RLIMIT_RTTIME,
        _ => return None,
    })
}

/// Parsed mount options: flags, propagation flags, and filesystem data.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MountOptions {
    /// MS_* flags.
    pub flags: libc::c_ulong,
    /// MS_PRIVATE/SHARED/SLAVE/UNBINDABLE (| MS_REC).
    pub propagation: libc::c_ulong,
    /// Options the filesystem interprets.
    pub data: Vec<String>,
}

/// Splits OCI mount options into flags and data.
pub fn parse_mount_options(opts: &[String]) -> MountOptions {
    let mut m = MountOptions::default();
    for o in opts {
        let (set, clear): (libc::c_ulong, libc::c_ulong) = match o.as_str() {
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "remount" => (libc::MS_REMOUNT, 0),
            "mand" => (libc::MS_MANDLOCK, 0),
            "nomand" => (0, libc::MS_MANDLOCK),
            "atime" => (0, libc::MS_NOATIME),
            "noatime" => (libc::MS_NOATIME, 0),
            "diratime" => (0, libc::MS_NODIRATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "bind" => (libc::MS_BIND, 0),
            "rbind" => (libc::MS_BIND | libc::MS_REC, 0),
            "relatime" => (libc::MS_RELATIME, 0),
            "norelatime" => (0, libc::MS_RELATIME),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "nostrictatime" => (0, libc::MS_STRICTATIME),
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                let rec = if o.starts_with('r') && o != "r" {
                    libc::MS_REC
                } else {
                    0
                };
                m.propagation = rec
                    | match o.trim_start_matches('r') {
                        "private" => libc::MS_PRIVATE,
                        "shared" => libc::MS_SHARED,
                        "slave" => libc::MS_SLAVE,
                        _ => libc::MS_UNBINDABLE,
                    };
                continue;
            }
            // Docker/podman hint for volumes; nothing to do at mount time.
            "tmpcopyup" | "copy" | "nocopy" => continue,
            other => {
                m.data.push(other.to_string());
                continue;
            }
        };
        m.flags = (m.flags | set) & !clear;
    }
    m
}

fn mount_target(rootfs: &Path, dest: &Path) -> Result<PathBuf, String> {
    // Destinations are container paths; never let "..", or a symlink inside the rootfs,
    // point a mount outside it.
    let mut target = rootfs.to_path_buf();
    for c in dest.components() {
        use std::path::Component;
        match c {
            Component::Normal(n) => {
                target.push(n);
                if let Ok(m) = std::fs::symlink_metadata(&target) {
                    if m.file_type().is_symlink() {
                        return Err(format!(
                            "mount destination {} passes through a symlink",
                            dest.display()
                        ));
                    }
                }
            }
            Component::ParentDir => {
                return Err(format!("mount destination {} contains ..", dest.display()))
            }
            _ => {}
        }
    }
    Ok(target)
}

fn do_mount(rootfs: &Path, m: &Mount) -> Result<(), String> {
    let dest = mount_target(rootfs, m.destination())?;
    let opts = parse_mount_options(m.options().as_deref().unwrap_or(&[]));
    let mut fstype = m.typ().clone().unwrap_or_else(|| "none".into());
    let source = m
        .source()
        .as_ref()
        .map(|s| s.to_string_lossy().into_owned());
    let bind = opts.flags & libc::MS_BIND != 0;
    // The guest has cgroup v2 only; a v1-style "cgroup" mount becomes the unified one.
    if fstype == "cgroup" {
        fstype = "cgroup2".into();
    }
    let src_is_file = bind
        && source
            .as_deref()
            .and_then(|s| std::fs::metadata(s).ok())
            .is_some_and(|m| !m.is_dir());
    if src_is_file {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        if !dest.exists() {
            File::create(&dest).map_err(|e| format!("{}: {e}", dest.display()))?;
        }
    } else {
        std::fs::create_dir_all(&dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    }
    let data = (!opts.data.is_empty()).then(|| opts.data.join(","));
    if bind {
        sys::mount(
            source.as_deref(),
            &dest,
            None,
            opts.flags & (libc::MS_BIND | libc::MS_REC),
            None,
        )
        .map_err(|e| e.to_string())?;
        // Bind mounts ignore other flags on the first call; apply them with a remount.
        let extra = opts.flags & !(libc::MS_BIND | libc::MS_REC);
        if extra != 0 {
            sys::mount(
                None,
                &dest,
                None,
                libc::MS_REMOUNT | libc::MS_BIND | extra,
                None,
            )
            .map_err(|e| e.to_string())?;
        }
    } else {
        sys::mount(
            source.as_deref().or(Some(fstype.as_str())),
            &dest,
            Some(&fstype),
            opts.flags,
            data.as_deref(),
        )
        .map_err(|e| e.to_string())?;
    }
    if opts.propagation != 0 {
        sys::mount(None, &dest, None, opts.propagation, None).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Default device nodes for a tmpfs /dev, as runc creates them.
const DEFAULT_DEVICES: &[(&str, u32, u32)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

fn populate_dev(rootfs: &Path, spec: &Spec) -> Result<(), String> {
    let dev = rootfs.join("dev");
    for (name, major, minor) in DEFAULT_DEVICES {
        let p = dev.join(name);
        if !p.exists() {
            sys::mknod_char(&p, 0o666, *major, *minor)
                .map_err(|e| format!("mknod {}: {e}", p.display()))?;
        }
    }
    for d in spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().as_ref())
        .into_iter()
        .flatten()
    {
        let p = mount_target(rootfs, d.path())?;
        if !p.exists() {
            let mode = d.file_mode().unwrap_or(0o666);
            sys::mknod_char(&p, mode, d.major() as u32, d.minor() as u32)
                .map_err(|e| format!("mknod {}: {e}", p.display()))?;
        }
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let p = dev.join(link);
        if std::fs::symlink_metadata(&p).is_err() {
            std::os::unix::fs::symlink(target, &p).map_err(|e| format!("{}: {e}", p.display()))?;
        }
    }
    Ok(())
}

fn setup_rootfs(cfg: &InitConfig) -> Result<(), String> {
    let rootfs = Path::new(&cfg.rootfs);
    let spec = &cfg.spec;
    // Nothing we mount may propagate back to the agent's namespace.
    sys::mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
    .map_err(|e| e.to_string())?;
    sys::mount(
        Some(&cfg.rootfs),
        rootfs,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )
    .map_err(|e| e.to_string())?;
    let mut dev_is_tmpfs = false;
    for m in spec.mounts().iter().flatten() {
        if m.destination() == Path::new("/dev") && m.typ().as_deref() == Some("tmpfs") {
            dev_is_tmpfs = true;
        }
        do_mount(rootfs, m)?;
    }
    if dev_is_tmpfs {
        populate_dev(rootfs, spec)?;
    }
    std::env::set_current_dir(rootfs).map_err(|e| format!("chdir {}: {e}", rootfs.display()))?;
    sys::pivot_root(Path::new("."), Path::new(".")).map_err(|e| format!("pivot_root: {e}"))?;
    sys::umount2(Path::new("."), libc::MNT_DETACH)
        .map_err(|e| format!("detaching the old root: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| e.to_string())?;

    let linux = spec.linux().as_ref();
    for p in linux
        .and_then(|l| l.masked_paths().as_ref())
        .into_iter()
        .flatten()
    {
        let path = Path::new(p);
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => {
                sys::mount(Some("tmpfs"), path, Some("tmpfs"), libc::MS_RDONLY, None)
            }
            Ok(_) => sys::mount(Some("/dev/null"), path, None, libc::MS_BIND, None),
            Err(_) => continue,
        }
        .map_err(|e| format!("masking {p}: {e}"))?;
    }
    for p in linux
        .and_then(|l| l.readonly_paths().as_ref())
        .into_iter()
        .flatten()
    {
        let path = Path::new(p);
        if !path.exists() {
            continue;
        }
        sys::mount(Some(p), path, None, libc::MS_BIND | libc::MS_REC, None)
            .and_then(|_| {
                sys::mount(
                    None,
                    path,
                    None,
                    libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                    None,
                )
            })
            .map_err(|e| format!("read-only {p}: {e}"))?;
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        sys::mount(
            None,
            Path::new("/"),
            None,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
            None,
        )
        .map_err(|e| format!("read-only rootfs: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: &[&str]) -> MountOptions {
        parse_mount_options(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn mount_options() {
        let m = opts(&["nosuid", "strictatime", "mode=755", "size=65536k"]);
        assert_eq!(m.flags, libc::MS_NOSUID | libc::MS_STRICTATIME);
        assert_eq!(m.data, vec!["mode=755", "size=65536k"]);
        let m = opts(&["rbind", "ro", "rprivate"]);
        assert_eq!(m.flags, libc::MS_BIND | libc::MS_REC | libc::MS_RDONLY);
        assert_eq!(m.propagation, libc::MS_REC | libc::MS_PRIVATE);
        assert_eq!(opts(&["ro", "rw"]).flags, 0);
        assert_eq!(opts(&["slave"]).propagation, libc::MS_SLAVE);
    }

    #[test]
    fn guest_tunables_reach_the_process_env() {
        let t = "glibc.cpu.hwcaps=-AVX2";
        let env = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // Not on a PVM host: the environment is the spec's, untouched.
        assert_eq!(with_guest_tunables(env(&["A=1"]), None), env(&["A=1"]));
        assert_eq!(with_guest_tunables(env(&["A=1"]), Some("")), env(&["A=1"]));
        assert_eq!(
            with_guest_tunables(env(&["A=1"]), Some(t)),
            env(&["A=1", "GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX2"])
        );
        // The process's own tunables are kept, ours appended.
        assert_eq!(
            with_guest_tunables(env(&["GLIBC_TUNABLES=glibc.malloc.check=3"]), Some(t)),
            env(&["GLIBC_TUNABLES=glibc.malloc.check=3:glibc.cpu.hwcaps=-AVX2"])
        );
        assert_eq!(
            with_guest_tunables(env(&["GLIBC_TUNABLES="]), Some(t)),
            env(&["GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX2"])
        );
        // Its own hwcaps choice wins; a variable that merely starts alike is not it.
        let own = env(&["GLIBC_TUNABLES=glibc.cpu.hwcaps=-ERMS"]);
        assert_eq!(with_guest_tunables(own.clone(), Some(t)), own);
        assert_eq!(
            with_guest_tunables(env(&["GLIBC_TUNABLESX=1"]), Some(t)),
            env(&["GLIBC_TUNABLESX=1", "GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX2"])
        );
    }

    #[test]
    fn mount_targets_stay_inside_rootfs() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            mount_target(d.path(), Path::new("/proc")).unwrap(),
            d.path().join("proc")
        );
        assert!(mount_target(d.path(), Path::new("/../etc")).is_err());
        std::os::unix::fs::symlink("/etc", d.path().join("evil")).unwrap();
        assert!(mount_target(d.path(), Path::new("/evil/x")).is_err());
    }

    #[test]
    fn program_resolution() {
        let env = vec!["PATH=/nonexistent:/bin".to_string()];
        assert_eq!(
            resolve_program("sh", &env).unwrap(),
            PathBuf::from("/bin/sh")
        );
        assert_eq!(
            resolve_program("/x/y", &env).unwrap(),
            PathBuf::from("/x/y")
        );
        assert!(resolve_program("no-such-program-here", &env)
            .unwrap_err()
            .contains("not found"));
    }

    #[test]
    fn rlimit_names() {
        assert_eq!(rlimit_resource("RlimitNofile"), Some(libc::RLIMIT_NOFILE));
        assert_eq!(rlimit_resource("RlimitBogus"), None);
    }
}
