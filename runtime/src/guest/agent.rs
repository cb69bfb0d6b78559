//! The guest agent: serves the control protocol on vsock, creates containers and
//! processes, and streams their stdio.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::container_init::{ExecConfig, InitConfig, InitMsg, CONTROL_FD};
use super::sys;
use super::vsock::VsockListener;
use crate::agent::protocol::{
    read_frame, write_frame, ErrorKind, ExitStatus, FrameError, Request, Response, RootfsSource,
    StreamHello, StreamKind, CONTROL_PORT, PROTOCOL_VERSION, SHARES_DIR, STREAM_PORT,
};

type Reply = Result<Response, (ErrorKind, String)>;

fn err<T>(kind: ErrorKind, msg: impl Into<String>) -> Result<T, (ErrorKind, String)> {
    Err((kind, msg.into()))
}

/// Where the agent keeps per-container state in the guest.
const RUN_DIR: &str = "/run/capsa";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The host-side ends of a process's stdio.
#[derive(Default)]
struct StdioEnds {
    stdin: Option<File>,
    stdout: Option<File>,
    stderr: Option<File>,
    tty: Option<File>,
}

struct Proc {
    pid: i32,
    /// Control socket to the not-yet-started init; gone once started.
    ctl: Option<UnixStream>,
    stdio: StdioEnds,
    /// A dup of the pty master, kept for resizes.
    tty_ctl: Option<File>,
}

struct Container {
    rootfs: PathBuf,
    cgroup: PathBuf,
    namespaces: Vec<String>,
    init: Proc,
    execs: HashMap<String, Proc>,
}

/// Exit statuses of reaped children, shared with waiters.
#[derive(Default)]
struct Exits {
    map: Mutex<HashMap<i32, ExitStatus>>,
    cv: Condvar,
}

impl Exits {
    fn wait(&self, pid: i32) -> ExitStatus {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(s) = m.get(&pid) {
                return *s;
            }
            m = self.cv.wait(m).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn get(&self, pid: i32) -> Option<ExitStatus> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&pid)
            .copied()
    }
}

struct Agent {
    containers: Mutex<HashMap<String, Container>>,
    exits: Arc<Exits>,
}

/// Runs the agent forever (PID 1).
pub fn run() -> ! {
    let agent = Arc::new(Agent {
        containers: Mutex::new(HashMap::new()),
        exits: Arc::default(),
    });
    let _ = std::fs::create_dir_all(RUN_DIR);
    let a = agent.clone();
    std::thread::spawn(move || reap(&a));
    let control = VsockListener::bind(CONTROL_PORT);
    let streams = VsockListener::bind(STREAM_PORT);
    let (control, streams) = match (control, streams) {
        (Ok(c), Ok(s)) => (c, s),
        (c, s) => {
            eprintln!(
                "capsa-agent: cannot listen on vsock: {:?} {:?}",
                c.err(),
                s.err()
            );
            halt()
        }
    };
    let a = agent.clone();
    std::thread::spawn(move || loop {
        match streams.accept() {
            Ok(conn) => {
                let a = a.clone();
                std::thread::spawn(move || handle_stream(&a, conn));
            }
            Err(e) => eprintln!("capsa-agent: accept: {e}"),
        }
    });
    if let Err(e) = sys::hit_boot_timer() {
        eprintln!("capsa-agent: boot timer: {e}");
    }
    loop {
        match control.accept() {
            Ok(conn) => {
                let a = agent.clone();
                std::thread::spawn(move || handle_control(&a, conn));
            }
            Err(e) => eprintln!("capsa-agent: accept: {e}"),
        }
    }
}

fn halt() -> ! {
    // SAFETY: sync and reboot take no pointers; reboot ends the VM (i8042 reset).
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    loop {
        std::thread::park();
    }
}

/// PID 1 must reap every child; statuses are kept for `Wait`.
fn reap(agent: &Agent) {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid < 0 {
            // ECHILD: nothing to reap yet.
            std::thread::sleep(std::time::Duration::from_millis(20));
            continue;
        }
        let st = if libc::WIFSIGNALED(status) {
            ExitStatus::Signaled(libc::WTERMSIG(status))
        } else {
            ExitStatus::Exited(libc::WEXITSTATUS(status))
        };
        agent
            .exits
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pid, st);
        agent.exits.cv.notify_all();
    }
}

fn handle_control(agent: &Agent, mut conn: File) {
    match read_frame::<_, Request>(&mut conn) {
        Ok(Request::Hello { version }) => {
            let _ = write_frame(
                &mut conn,
                &Response::Hello {
                    version: PROTOCOL_VERSION,
                },
            );
            if version != PROTOCOL_VERSION {
                return;
            }
        }
        Ok(_) => {
            let _ = write_frame(
                &mut conn,
                &Response::error(ErrorKind::InvalidRequest, "expected hello"),
            );
            return;
        }
        Err(e) => {
            let _ = write_frame(
                &mut conn,
                &Response::error(ErrorKind::InvalidRequest, e.to_string()),
            );
            return;
        }
    }
    loop {
        let reply = match read_frame::<_, Request>(&mut conn) {
            Ok(req) => handle(agent, req, &conn),
            Err(FrameError::Closed) => return,
            Err(e @ FrameError::Malformed(_)) => err(ErrorKind::InvalidRequest, e.to_string()),
            Err(e @ FrameError::TooLarge(_)) => {
                // Its body was not read, so the next frame cannot be found: say why, then
                // hang up.
                eprintln!("capsa-agent: control connection: {e}");
                let _ = write_frame(
                    &mut conn,
                    &Response::error(ErrorKind::InvalidRequest, e.to_string()),
                );
                return;
            }
            Err(e) => {
                eprintln!("capsa-agent: control connection: {e}");
                return;
            }
        };
        let resp = reply.unwrap_or_else(|(k, m)| Response::error(k, m));
        if write_frame(&mut conn, &resp).is_err() {
            return;
        }
    }
}

fn handle(agent: &Agent, req: Request, conn: &File) -> Reply {
    match req {
        Request::Hello { .. } => Ok(Response::Hello {
            version: PROTOCOL_VERSION,
        }),
        Request::CreateContainer {
            id,
            spec,
            rootfs,
            stdin,
        } => create(agent, &id, *spec, &rootfs, stdin),
        Request::StartContainer { id, hook_state } => start(agent, &id, hook_state),
        Request::Exec {
            id,
            exec_id,
            process,
            stdin,
        } => exec(agent, &id, &exec_id, *process, stdin),
        Request::Signal {
            id,
            exec_id,
            signal,
            all,
        } => send_signal(agent, &id, exec_id.as_deref(), signal, all),
        Request::Wait {
            id,
            exec_id,
            kill_on_hangup,
        } => {
            let pid = with_proc(agent, &id, exec_id.as_deref(), |p| Ok(p.pid))?;
            if kill_on_hangup {
                kill_on_hangup_of(agent, conn, pid);
            }
            Ok(Response::Exited {
                status: agent.exits.wait(pid),
            })
        }
        Request::ResizeTty {
            id,
            exec_id,
            rows,
            cols,
        } => with_proc(agent, &id, exec_id.as_deref(), |p| {
            let t = p.tty_ctl.as_ref().ok_or((
                ErrorKind::InvalidState,
                "the process has no terminal".into(),
            ))?;
            sys::set_winsize(t.as_raw_fd(), rows, cols)
                .map_err(|e| (ErrorKind::Internal, e.to_string()))?;
            Ok(Response::Ok)
        }),
        Request::Ps { id } => {
            let cg = with_container(agent, &id, |c| Ok(c.cgroup.clone()))?;
            Ok(Response::Pids {
                pids: cgroup_pids(&cg),
            })
        }
        Request::Stats { id } => {
            let cg = with_container(agent, &id, |c| Ok(c.cgroup.clone()))?;
            Ok(Response::Stats(Box::new(super::cgroup::stats(&cg))))
        }
        Request::Update { id, resources } => {
            let cg = with_container(agent, &id, |c| Ok(c.cgroup.clone()))?;
            super::cgroup::apply(&cg, &resources).map_err(|e| (ErrorKind::Internal, e))?;
            Ok(Response::Ok)
        }
        Request::RemoveContainer { id, force } => remove(agent, &id, force),
        Request::Shutdown => {
            std::thread::spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(50));
                halt();
            });
            Ok(Response::Ok)
        }
    }
}

fn not_found(id: &str) -> (ErrorKind, String) {
    (
        ErrorKind::NotFound,
        format!("container {id} does not exist"),
    )
}

fn with_container<T>(
    agent: &Agent,
    id: &str,
    f: impl FnOnce(&mut Container) -> Result<T, (ErrorKind, String)>,
) -> Result<T, (ErrorKind, String)> {
    let mut cs = agent.containers.lock().unwrap_or_else(|e| e.into_inner());
    let c = cs.get_mut(id).ok_or_else(|| not_found(id))?;
    f(c)
}

fn with_proc<T>(
    agent: &Agent,
    id: &str,
    exec_id: Option<&str>,
    f: impl FnOnce(&mut Proc) -> Result<T, (ErrorKind, String)>,
) -> Result<T, (ErrorKind, String)> {
    with_container(agent, id, |c| match exec_id {
        None => f(&mut c.init),
        Some(e) => {
            let p = c.execs.get_mut(e).ok_or_else(|| {
                (
                    ErrorKind::NotFound,
                    format!("process {e} does not exist in container {id}"),
                )
            })?;
            f(p)
        }
    })
}

/// Validates a container id: it becomes a path component in the guest.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !id.starts_with('.')
}

fn find_disk_by_serial(serial: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir("/sys/block").ok()?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Ok(s) = std::fs::read_to_string(e.path().join("serial")) {
            if s.trim_end_matches(['\n', '\0']) == serial {
                return Some(PathBuf::from("/dev").join(name));
            }
        }
    }
    None
}

fn mount_rootfs(src: &RootfsSource, target: &Path) -> Result<(), String> {
    std::fs::create_dir_all(target).map_err(|e| format!("{}: {e}", target.display()))?;
    match src {
        RootfsSource::VirtioFs { tag } => sys::mount(Some(tag), target, Some("virtiofs"), 0, None),
        RootfsSource::Block {
            serial,
            fstype,
            read_only,
        } => {
            let dev = find_disk_by_serial(serial)
                .ok_or_else(|| format!("no disk with serial {serial:?}"))?;
            let dev = dev.to_string_lossy().into_owned();
            let flags = if *read_only { libc::MS_RDONLY } else { 0 };
            sys::mount(Some(&dev), target, Some(fstype), flags, None)
        }
        RootfsSource::SharedDir { tag, path } => {
            let dir = mount_share(tag)?.join(relative_path(path)?);
            let dir = dir.to_string_lossy();
            sys::mount(Some(&dir), target, None, libc::MS_BIND | libc::MS_REC, None)
        }
        RootfsSource::GuestPath { path } => {
            sys::mount(Some(path), target, None, libc::MS_BIND | libc::MS_REC, None)
        }
    }
    .map_err(|e| e.to_string())
}

/// `path` as a relative path that stays inside its base (no "..", no leading "/").
fn relative_path(path: &str) -> Result<PathBuf, String> {
    use std::path::Component;
    let p = Path::new(path);
    if path.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(format!("invalid path {path:?} in a share"));
    }
    Ok(p.to_path_buf())
}

/// Mounts share `tag` at SHARES_DIR/<tag> unless already mounted; returns the mount point.
fn mount_share(tag: &str) -> Result<PathBuf, String> {
    static MOUNTED: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let dir = Path::new(SHARES_DIR).join(relative_path(tag)?);
    let mut mounted = MOUNTED.lock().unwrap_or_else(|e| e.into_inner());
    if !mounted.iter().any(|t| t == tag) {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        sys::mount(Some(tag), &dir, Some("virtiofs"), 0, None)
            .map_err(|e| format!("mounting share {tag}: {e}"))?;
        mounted.push(tag.to_string());
    }
    Ok(dir)
}

fn clone_flags(spec: &Spec) -> Result<(libc::c_int, Vec<String>), String> {
    let mut flags = libc::CLONE_NEWNS;
    let mut names = vec![];
    for ns in spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
    {
        if ns.path().is_some() {
            return Err(format!(
                "joining an existing {:?} namespace by path is not supported in the guest",
                ns.typ()
            ));
        }
        let (f, name) = match ns.typ() {
            LinuxNamespaceType::Mount => (libc::CLONE_NEWNS, "mnt"),
            LinuxNamespaceType::Pid => (libc::CLONE_NEWPID, "pid"),
            LinuxNamespaceType::Uts => (libc::CLONE_NEWUTS, "uts"),
            LinuxNamespaceType::Ipc => (libc::CLONE_NEWIPC, "ipc"),
            LinuxNamespaceType::Network => (libc::CLONE_NEWNET, "net"),
            LinuxNamespaceType::Cgroup => (libc::CLONE_NEWCGROUP, "cgroup"),
            LinuxNamespaceType::User => return Err(
                "user namespaces are not supported in the guest (the VM is the isolation boundary)"
                    .into(),
            ),
            other => return Err(format!("unsupported namespace {other:?}")),
        };
        flags |= f;
        if name != "mnt" {
            names.push(name.to_string());
        }
    }
    // Exec'd processes join the mount namespace last: after it, /proc is the container's.
    names.push("mnt".into());
    Ok((flags, names))
}

/// Stdio for a new process: the child's fds 0-2 and the agent's ends.
fn make_stdio(
    terminal: bool,
    stdin: bool,
) -> std::io::Result<([OwnedFd; 3], StdioEnds, Option<File>)> {
    if terminal {
        // The helper opens the terminal inside the container (its devpts) and passes the
        // master back (see `await_ready`); until then its stdio is /dev/null.
        let null = || File::open("/dev/null").map(OwnedFd::from);
        Ok(([null()?, null()?, null()?], StdioEnds::default(), None))
    } else {
        let (in_r, in_w) = if stdin {
            let (r, w) = sys::pipe()?;
            (r, Some(File::from(w)))
        } else {
            (File::open("/dev/null")?.into(), None)
        };
        let (out_r, out_w) = sys::pipe()?;
        let (err_r, err_w) = sys::pipe()?;
        Ok((
            [in_r, out_w, err_w],
            StdioEnds {
                stdin: in_w,
                stdout: Some(File::from(out_r)),
                stderr: Some(File::from(err_r)),
                tty: None,
            },
            None,
        ))
    }
}

// spawn_helper places the control socket right after stdin/stdout/stderr.
const _: () = assert!(CONTROL_FD == 3);

/// Starts `capsa <mode>` in new namespaces (`flags`), with `stdio` as fds 0-2 and `ctl` as
/// fd 3. Everything the child touches is prepared before the clone.
fn spawn_helper(
    mode: &str,
    flags: libc::c_int,
    stdio: &[OwnedFd; 3],
    ctl: &OwnedFd,
) -> std::io::Result<i32> {
    let exe = CString::new("/proc/self/exe").expect("no NUL");
    let argv = [
        CString::new("capsa").expect("no NUL"),
        CString::new(mode).expect("no NUL"),
    ];
    // Only the guest's glibc tunables are passed on (see super::PVM_GLIBC_TUNABLES): the
    // helper and, through it, the container's processes need them from their first
    // instruction.
    let envp: Vec<CString> = std::env::var(super::GLIBC_TUNABLES)
        .ok()
        .and_then(|v| CString::new(format!("{}={v}", super::GLIBC_TUNABLES)).ok())
        .into_iter()
        .collect();
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
    envp_p.push(std::ptr::null());
    // Move every source fd above the targets first so dup2 can't clobber one.
    let srcs: [RawFd; 4] = [
        stdio[0].as_raw_fd(),
        stdio[1].as_raw_fd(),
        stdio[2].as_raw_fd(),
        ctl.as_raw_fd(),
    ];
    // SAFETY: the child only calls fcntl/dup2/execve/_exit on data prepared above (all
    // async-signal-safe), so the parent's other threads and locks do not matter.
    let pid = unsafe { sys::clone_fork(flags)? };
    if pid == 0 {
        // SAFETY: async-signal-safe calls only, as required after clone in a threaded process.
        unsafe {
            let mut high = [0; 4];
            for (i, s) in srcs.iter().enumerate() {
                high[i] = libc::fcntl(*s, libc::F_DUPFD_CLOEXEC, 10);
                if high[i] < 0 {
                    libc::_exit(126);
                }
            }
            for (i, h) in high.iter().enumerate() {
                if libc::dup2(*h, i as i32) < 0 {
                    libc::_exit(126);
                }
            }
            libc::execve(exe.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr());
            libc::_exit(127);
        }
    }
    Ok(pid)
}

fn io_err(ctx: &str) -> impl Fn(std::io::Error) -> (ErrorKind, String) + '_ {
    move |e| (ErrorKind::Internal, format!("{ctx}: {e}"))
}

/// Reads one frame from the helper, with the fd attached to it, if any.
fn read_frame_fd(ctl: &mut UnixStream) -> Result<(InitMsg, Option<OwnedFd>), FrameError> {
    let mut len = [0u8; 4];
    let (n, fd) = sys::recv_with_fd(ctl.as_raw_fd(), &mut len)?;
    if n == 0 {
        return Err(FrameError::Closed);
    }
    ctl.read_exact(&mut len[n..])?;
    let len = u32::from_le_bytes(len) as usize;
    if len > crate::agent::protocol::MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    ctl.read_exact(&mut body)?;
    let msg = serde_json::from_slice(&body).map_err(|e| FrameError::Malformed(e.to_string()))?;
    Ok((msg, fd))
}

/// Reads the helper's setup verdict, and the terminal's master end if it opened one.
fn await_ready(ctl: &mut UnixStream) -> Result<Option<File>, String> {
    let mut tty = None;
    loop {
        match read_frame_fd(ctl) {
            Ok((InitMsg::Tty, Some(fd))) => tty = Some(File::from(fd)),
            Ok((InitMsg::Ready, _)) => return Ok(tty),
            Ok((InitMsg::Error(e), _)) => return Err(e),
            Ok((other, _)) => return Err(format!("unexpected message {other:?}")),
            Err(e) => return Err(format!("container setup process died: {e}")),
        }
    }
}

/// Takes the terminal the helper passed: the agent's end of the process's stdio.
fn with_tty(
    ends: &mut StdioEnds,
    tty_ctl: &mut Option<File>,
    master: Option<File>,
) -> Result<(), String> {
    if let Some(m) = master {
        *tty_ctl = Some(m.try_clone().map_err(|e| e.to_string())?);
        ends.tty = Some(m);
    }
    Ok(())
}

/// Tells the helper to exec (after running the startContainer hooks with `hook_state`,
/// for a container's init); Ok once its control fd closed (the exec happened).
fn release(ctl: &mut UnixStream, hook_state: Option<String>) -> Result<(), String> {
    write_frame(ctl, &InitMsg::Start(hook_state))
        .map_err(|e| format!("starting the process: {e}"))?;
    match read_frame::<_, InitMsg>(ctl) {
        Err(FrameError::Closed) => Ok(()),
        Ok(InitMsg::Error(e)) => Err(e),
        Ok(other) => Err(format!("unexpected message {other:?}")),
        Err(e) => Err(format!("starting the process: {e}")),
    }
}

fn create(agent: &Agent, id: &str, spec: Spec, rootfs: &RootfsSource, stdin: bool) -> Reply {
    if !valid_id(id) {
        return err(
            ErrorKind::InvalidRequest,
            format!("invalid container id {id:?}"),
        );
    }
    if agent
        .containers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains_key(id)
    {
        return err(
            ErrorKind::AlreadyExists,
            format!("container {id} already exists"),
        );
    }
    let process = spec.process().clone().ok_or((
        ErrorKind::InvalidRequest,
        "the spec has no process".to_string(),
    ))?;
    let (flags, namespaces) = clone_flags(&spec).map_err(|e| (ErrorKind::InvalidRequest, e))?;
    let dir = Path::new(RUN_DIR).join(id);
    let root = dir.join("rootfs");
    mount_rootfs(rootfs, &root)
        .map_err(|e| (ErrorKind::Internal, format!("mounting the rootfs: {e}")))?;
    let cgroup = Path::new(CGROUP_ROOT).join(format!("capsa-{id}"));
    let cleanup = |root: &Path, cgroup: &Path| {
        let _ = sys::umount2(root, libc::MNT_DETACH);
        let _ = std::fs::remove_dir(cgroup);
    };
    let result = (|| -> Result<Container, (ErrorKind, String)> {
        std::fs::create_dir_all(&cgroup).map_err(io_err("creating the container cgroup"))?;
        if let Some(r) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) {
            super::cgroup::apply(&cgroup, r)
                .map_err(|e| (ErrorKind::Internal, format!("container limits: {e}")))?;
        }
        let (child_stdio, mut ends, mut tty_ctl) =
            make_stdio(process.terminal().unwrap_or(false), stdin).map_err(io_err("stdio"))?;
        let (mut ctl, child_ctl) = UnixStream::pair().map_err(io_err("socketpair"))?;
        let pid = spawn_helper("__container-init", flags, &child_stdio, &child_ctl.into())
            .map_err(io_err("clone"))?;
        drop(child_stdio);
        // Join the cgroup before the program runs, so every descendant is accounted.
        if let Err(e) = std::fs::write(cgroup.join("cgroup.procs"), pid.to_string()) {
            let _ = sys::kill(pid, libc::SIGKILL);
            return Err((ErrorKind::Internal, format!("joining the cgroup: {e}")));
        }
        let cfg = InitConfig {
            rootfs: root.to_string_lossy().into_owned(),
            spec: Box::new(spec),
        };
        let setup = write_frame(&mut ctl, &cfg)
            .map_err(|e| e.to_string())
            .and_then(|_| await_ready(&mut ctl))
            .and_then(|tty| with_tty(&mut ends, &mut tty_ctl, tty));
        if let Err(e) = setup {
            let _ = sys::kill(pid, libc::SIGKILL);
            agent.exits.wait(pid);
            return Err((ErrorKind::Internal, format!("creating container {id}: {e}")));
        }
        Ok(Container {
            rootfs: root.clone(),
            cgroup: cgroup.clone(),
            namespaces,
            init: Proc {
                pid,
                ctl: Some(ctl),
                stdio: ends,
                tty_ctl,
            },
            execs: HashMap::new(),
        })
    })();
    match result {
        Ok(c) => {
            let pid = c.init.pid;
            agent
                .containers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.to_string(), c);
            Ok(Response::Started { pid })
        }
        Err(e) => {
            cleanup(&root, &cgroup);
            Err(e)
        }
    }
}

fn start(agent: &Agent, id: &str, hook_state: Option<serde_json::Value>) -> Reply {
    let mut ctl = with_container(agent, id, |c| {
        c.init.ctl.take().ok_or((
            ErrorKind::InvalidState,
            format!("container {id} has already been started"),
        ))
    })?;
    release(&mut ctl, hook_state.map(|v| v.to_string()))
        .map_err(|e| (ErrorKind::Internal, format!("starting container {id}: {e}")))?;
    Ok(Response::Ok)
}

fn exec(
    agent: &Agent,
    id: &str,
    exec_id: &str,
    process: oci_spec::runtime::Process,
    stdin: bool,
) -> Reply {
    if !valid_id(exec_id) {
        return err(
            ErrorKind::InvalidRequest,
            format!("invalid exec id {exec_id:?}"),
        );
    }
    let (init_pid, namespaces) = with_container(agent, id, |c| {
        if c.init.ctl.is_some() {
            return err(
                ErrorKind::InvalidState,
                format!("container {id} is not running"),
            );
        }
        if agent.exits.get(c.init.pid).is_some() {
            return err(
                ErrorKind::InvalidState,
                format!("container {id} is stopped"),
            );
        }
        if c.execs.contains_key(exec_id) {
            return err(
                ErrorKind::AlreadyExists,
                format!("process {exec_id} already exists"),
            );
        }
        Ok((c.init.pid, c.namespaces.clone()))
    })?;
    let (child_stdio, mut ends, mut tty_ctl) =
        make_stdio(process.terminal().unwrap_or(false), stdin).map_err(io_err("stdio"))?;
    let (mut ctl, child_ctl) = UnixStream::pair().map_err(io_err("socketpair"))?;
    let child_ctl: OwnedFd = child_ctl.into();
    // Entering the container's pid namespace only affects children of the calling
    // thread, so a short-lived thread does it and clones the helper.
    let join_pid = namespaces.iter().any(|n| n == "pid");
    let pid = std::thread::scope(|s| {
        s.spawn(|| -> std::io::Result<i32> {
            if join_pid {
                let f = File::open(format!("/proc/{init_pid}/ns/pid"))?;
                sys::setns(f.as_raw_fd(), libc::CLONE_NEWPID)?;
            }
            spawn_helper("__container-exec", 0, &child_stdio, &child_ctl)
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("spawner thread panicked")))
    })
    .map_err(io_err("starting the exec process"))?;
    drop(child_stdio);
    // The helper's end must be closed here, or `release` never sees its exec.
    drop(child_ctl);
    let cgroup = with_container(agent, id, |c| Ok(c.cgroup.clone()))?;
    let _ = std::fs::write(cgroup.join("cgroup.procs"), pid.to_string());
    let ns: Vec<String> = namespaces.into_iter().filter(|n| n != "pid").collect();
    let cfg = ExecConfig {
        init_pid,
        namespaces: ns,
        process: Box::new(process),
    };
    let r = write_frame(&mut ctl, &cfg)
        .map_err(|e| e.to_string())
        .and_then(|_| await_ready(&mut ctl))
        .and_then(|tty| with_tty(&mut ends, &mut tty_ctl, tty))
        .and_then(|_| release(&mut ctl, None));
    if let Err(e) = r {
        let _ = sys::kill(pid, libc::SIGKILL);
        agent.exits.wait(pid);
        return err(ErrorKind::Internal, format!("exec in container {id}: {e}"));
    }
    with_container(agent, id, |c| {
        c.execs.insert(
            exec_id.to_string(),
            Proc {
                pid,
                ctl: None,
                stdio: ends,
                tty_ctl,
            },
        );
        Ok(Response::Started { pid })
    })
}

fn cgroup_pids(cg: &Path) -> Vec<i32> {
    std::fs::read_to_string(cg.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Kills `pid` if `conn` (the connection waiting for it) closes first: the host process
/// standing for `pid` is gone (killed, even by SIGKILL, which it cannot forward).
fn kill_on_hangup_of(agent: &Agent, conn: &File, pid: i32) {
    let Ok(conn) = conn.try_clone() else {
        return;
    };
    let exited = {
        let m = agent.exits.map.lock().unwrap_or_else(|e| e.into_inner());
        m.contains_key(&pid)
    };
    if exited {
        return;
    }
    let exits = agent.exits.clone();
    std::thread::spawn(move || loop {
        if exits.get(pid).is_some() {
            return;
        }
        if sys::peer_closed(conn.as_raw_fd(), 500) {
            if exits.get(pid).is_none() {
                eprintln!("capsa-agent: host side of process {pid} went away: killing it");
                let _ = sys::kill(pid, libc::SIGKILL);
            }
            return;
        }
    });
}

fn send_signal(agent: &Agent, id: &str, exec_id: Option<&str>, sig: i32, all: bool) -> Reply {
    if all {
        let cg = with_container(agent, id, |c| Ok(c.cgroup.clone()))?;
        for pid in cgroup_pids(&cg) {
            let _ = sys::kill(pid, sig);
        }
        return Ok(Response::Ok);
    }
    let pid = with_proc(agent, id, exec_id, |p| Ok(p.pid))?;
    if agent.exits.get(pid).is_some() {
        return err(ErrorKind::InvalidState, "the process has already exited");
    }
    sys::kill(pid, sig).map_err(|e| (ErrorKind::Internal, format!("kill {pid}: {e}")))?;
    Ok(Response::Ok)
}

fn remove(agent: &Agent, id: &str, force: bool) -> Reply {
    let (pid, cg, root) = with_container(agent, id, |c| {
        Ok((c.init.pid, c.cgroup.clone(), c.rootfs.clone()))
    })?;
    if agent.exits.get(pid).is_none() {
        if !force {
            return err(
                ErrorKind::InvalidState,
                format!("container {id} is still running"),
            );
        }
        for p in cgroup_pids(&cg) {
            let _ = sys::kill(p, libc::SIGKILL);
        }
        let _ = sys::kill(pid, libc::SIGKILL);
        agent.exits.wait(pid);
    }
    // Processes left in the cgroup (exec'd ones outliving init) must go too.
    for p in cgroup_pids(&cg) {
        let _ = sys::kill(p, libc::SIGKILL);
    }
    let _ = sys::umount2(&root, libc::MNT_DETACH);
    for _ in 0..100 {
        if std::fs::remove_dir(&cg).is_ok() || !cg.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    agent
        .containers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(id);
    Ok(Response::Ok)
}

fn copy_then_close(mut from: impl Read, mut to: impl Write) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            // EIO: the terminal's last user closed it (the process exited).
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let _ = to.flush();
}

fn handle_stream(agent: &Agent, mut conn: File) {
    let hello: StreamHello = match read_frame(&mut conn) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("capsa-agent: stream: {e}");
            return;
        }
    };
    if hello.version != PROTOCOL_VERSION {
        return;
    }
    let end = with_proc(agent, &hello.id, hello.exec_id.as_deref(), |p| {
        let slot = match hello.kind {
            StreamKind::Stdin => &mut p.stdio.stdin,
            StreamKind::Stdout => &mut p.stdio.stdout,
            StreamKind::Stderr => &mut p.stdio.stderr,
            StreamKind::Tty => &mut p.stdio.tty,
        };
        slot.take()
            .ok_or((ErrorKind::InvalidState, "stream not available".to_string()))
    });
    let Ok(end) = end else {
        return;
    };
    match hello.kind {
        StreamKind::Stdin => copy_then_close(conn, end),
        StreamKind::Stdout | StreamKind::Stderr => copy_then_close(end, conn),
        StreamKind::Tty => {
            let (Ok(conn2), Ok(end2)) = (conn.try_clone(), end.try_clone()) else {
                return;
            };
            std::thread::spawn(move || copy_then_close(conn2, end2));
            copy_then_close(end, conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(valid_id("abc-1_2.3"));
        assert!(!valid_id(""));
        assert!(!valid_id("../x"));
        assert!(!valid_id(".hidden"));
        assert!(!valid_id("a/b"));
        assert!(!valid_id(&"x".repeat(129)));
    }

    #[test]
    fn share_paths_stay_inside_the_share() {
        assert_eq!(
            relative_path("c1/rootfs").unwrap(),
            PathBuf::from("c1/rootfs")
        );
        for bad in ["", "/abs", "../x", "a/../../x", "./a"] {
            assert!(relative_path(bad).is_err(), "{bad}");
        }
    }

    /// Runs `handle_control` on one end of a socket pair, as for a vsock connection.
    fn control_conn() -> (UnixStream, std::thread::JoinHandle<()>) {
        let (host, guest) = UnixStream::pair().unwrap();
        let agent = Agent {
            containers: Mutex::new(HashMap::new()),
            exits: Arc::default(),
        };
        let t =
            std::thread::spawn(move || handle_control(&agent, File::from(OwnedFd::from(guest))));
        (host, t)
    }

    /// The handshake every connection starts with.
    fn hello(s: &mut UnixStream) {
        write_frame(
            s,
            &Request::Hello {
                version: PROTOCOL_VERSION,
            },
        )
        .unwrap();
        assert_eq!(
            read_frame::<_, Response>(s).unwrap(),
            Response::Hello {
                version: PROTOCOL_VERSION
            }
        );
    }

    fn raw_frame(s: &mut UnixStream, body: &[u8]) {
        s.write_all(&(body.len() as u32).to_le_bytes()).unwrap();
        s.write_all(body).unwrap();
    }

    fn expect_invalid(s: &mut UnixStream) -> String {
        match read_frame::<_, Response>(s).unwrap() {
            Response::Error {
                kind: ErrorKind::InvalidRequest,
                message,
            } => message,
            other => panic!("expected an invalid-request error, got {other:?}"),
        }
    }

    #[test]
    fn malformed_control_frames_get_error_replies() {
        let (mut s, t) = control_conn();
        hello(&mut s);
        // Not JSON, not UTF-8, an unknown op, a known op with a field of the wrong type, an
        // empty frame: each gets an error reply and the connection stays usable.
        for body in [
            &b"{not json"[..],
            &[0xff, 0xfe, 0x00, 0x80][..],
            br#"{"op":"format_disk"}"#,
            br#"{"op":"ps","id":7}"#,
            b"",
        ] {
            raw_frame(&mut s, body);
            let m = expect_invalid(&mut s);
            assert!(m.starts_with("malformed message"), "{m}");
        }
        write_frame(&mut s, &Request::Ps { id: "nope".into() }).unwrap();
        assert!(matches!(
            read_frame::<_, Response>(&mut s).unwrap(),
            Response::Error {
                kind: ErrorKind::NotFound,
                ..
            }
        ));
        // A length beyond the limit: an error reply, then the agent hangs up.
        s.write_all(&u32::MAX.to_le_bytes()).unwrap();
        let m = expect_invalid(&mut s);
        assert!(m.contains("exceeds"), "{m}");
        assert!(matches!(
            read_frame::<_, Response>(&mut s),
            Err(FrameError::Closed)
        ));
        t.join().unwrap();
    }

    #[test]
    fn a_bad_first_frame_is_answered_and_a_truncated_one_ends_the_connection() {
        let (mut s, t) = control_conn();
        raw_frame(&mut s, b"\x00garbage");
        expect_invalid(&mut s);
        t.join().unwrap();
        let (mut s, t) = control_conn();
        // (Never Shutdown here: on the host that would run reboot(2).)
        write_frame(&mut s, &Request::Ps { id: "x".into() }).unwrap();
        assert_eq!(expect_invalid(&mut s), "expected hello");
        t.join().unwrap();
        // A frame cut short by the host closing: the agent's thread ends, nothing panics.
        let (mut s, t) = control_conn();
        hello(&mut s);
        s.write_all(&[100, 0, 0, 0, b'{']).unwrap();
        drop(s);
        t.join().unwrap();
    }

    #[test]
    fn namespace_flags() {
        let spec = Spec::default();
        let (flags, names) = clone_flags(&spec).unwrap();
        assert_ne!(flags & libc::CLONE_NEWPID, 0);
        assert_ne!(flags & libc::CLONE_NEWNS, 0);
        assert_eq!(names.last().map(String::as_str), Some("mnt"));
        assert!(names.contains(&"pid".to_string()));
    }
}
