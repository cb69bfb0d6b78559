//! The container's host process (`capsa __shim`): the pid `create` writes to --pid-file.
//!
//! `create` starts it (same binary, new session) and returns once it reports readiness;
//! the caller's subreaper (conmon, containerd's shim) then inherits it. It lives exactly
//! as long as the container's init and exits with its status (128+N for signal N).
//!
//! - For a standalone container or a pod's sandbox container it is the VMM: it puts
//!   itself in the sandbox cgroup, boots the VM on its main thread (vCPU threads move to
//!   the `vcpu` cgroup from the VMM's thread hook, before the seccomp filters go on), and
//!   runs the container in it.
//! - For another container of a pod it only talks to the sandbox's VM.
//!
//! Either way a worker thread creates the container through the guest agent, relays its
//! stdio to the fds inherited from `create`, serves `<state>/ctl.sock` (start, signals),
//! forwards signals it receives to the container, waits for the container's exit and
//! records it.
//!
//! Sandboxing (as `capsa vm run`, runtime/src/sandbox.rs): the process first closes every
//! inherited fd but stdio and the ready pipe, sets no_new_privs, becomes non-dumpable and
//! pins its rlimits. Every thread runs under a seccomp filter (level from
//! `CAPSA_SECCOMP_LEVEL`, default 2): the signal thread and the worker install the
//! `worker` filter themselves before the shim goes on (threads they spawn inherit it), a
//! member's main thread installs it once its cgroups and mounts are set up, and the VM's
//! threads get theirs from the VMM's thread hook.

use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oci_spec::runtime::Spec;
use seccomp::{Filters, Level, ThreadKind};
use vmm::{FsConfig, SerialOutput, ThreadRole, Vm, VmConfig, VsockConfig};

use super::bundle;
use super::cgroup;
use super::cli::ShimArgs;
use super::control::{self, CtlRequest};
use super::mounts;
use super::relay::{self, Mode, Relays};
use super::state::{self, Record, Role, StateDir, Status};
use super::sys;
use crate::agent::client::{AgentClient, ClientError};
use crate::agent::protocol::{Request, Response, RootfsSource, SHARES_DIR};
use crate::cgroups::Layout;

/// Tag of the per-sandbox share holding every container's rootfs and bind mounts.
pub const SHARED_TAG: &str = "capsa-shared";
/// Guest CID (each VM has its own hybrid-vsock socket, so one CID serves all).
const VSOCK_CID: u64 = 3;
/// How long the agent may take to come up: minutes on PVM hosts (guest ring 0 is
/// emulated), about a second on hardware KVM. `CAPSA_AGENT_TIMEOUT` (seconds) overrides.
const AGENT_TIMEOUT: Duration = Duration::from_secs(900);
/// How long output may keep flowing after the process exited (a background process in
/// the container can hold its stdout open forever).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Signals the shim forwards to the container's init (SIGKILL and SIGSTOP cannot be
/// caught: they act on the shim itself, which ends or stops the container with it).
pub const FORWARDED: &[i32] = &[
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// Exit code when the VM died under the container.
const VM_DIED: i32 = 128 + libc::SIGKILL;

/// Why a shim failed before its container was created.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// State files.
    #[error(transparent)]
    State(#[from] state::StateError),
    /// Cgroups.
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    /// Sharing the rootfs or mounts.
    #[error(transparent)]
    Mount(#[from] mounts::MountError),
    /// The VM could not be built.
    #[error("building the VM: {0}")]
    Vm(#[from] vmm::Error),
    /// The guest agent failed.
    #[error("guest agent: {0}")]
    Agent(#[from] ClientError),
    /// Stdio.
    #[error(transparent)]
    Relay(#[from] relay::RelayError),
    /// Anything else, with its context.
    #[error("{0}")]
    Other(String),
}

fn other(what: &str) -> impl FnOnce(std::io::Error) -> ShimError + '_ {
    move |e| ShimError::Other(format!("{what}: {e}"))
}

/// Shared between the shim's threads.
struct Shim {
    dir: StateDir,
    rec: Record,
    owner: bool,
    uds: PathBuf,
    ready: Mutex<Option<File>>,
    relays: Mutex<Option<Arc<Relays>>>,
    created: AtomicBool,
    /// Set when `vm.run` returned (owner only).
    vm_ended: AtomicBool,
    guest_root: Mutex<Option<crate::guest_root::GuestRoot>>,
    /// Seccomp level of every thread.
    level: Level,
    /// The compiled filters (None at level 0); threads outside the VM use `worker`.
    filters: Option<Filters>,
}

/// Entry point of `capsa __shim`.
pub fn main(args: ShimArgs) -> ! {
    // SAFETY: `create` passed this fd for us alone; nothing else in this process owns it.
    let ready = unsafe { File::from_raw_fd(args.ready_fd) };
    // SAFETY: FD_CLOEXEC on the fd just taken over.
    unsafe { libc::fcntl(args.ready_fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // Before the shim opens anything: what it needs of its inheritance is stdio (relayed
    // to the container) and the ready pipe.
    if let Err(e) = crate::sandbox::harden_process_keeping(&[args.ready_fd]) {
        report(
            &mut Some(ready),
            Err(&format!("hardening the process: {e:#}")),
        );
        std::process::exit(1)
    }
    let sandboxing = seccomp_level().and_then(|level| {
        let filters = crate::sandbox::filters(level, seccomp::Devices::default())
            .map_err(|e| format!("seccomp: {e:#}"))?;
        Ok((level, filters))
    });
    let (level, filters) = match sandboxing {
        Ok(v) => v,
        Err(e) => {
            report(&mut Some(ready), Err(&e));
            std::process::exit(1)
        }
    };
    let id = args
        .state_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = StateDir {
        path: args.state_dir.clone(),
        id,
    };
    // Known from the start, so `delete` can end a shim whose `create` died.
    let me = std::process::id() as i32;
    let start = state::process_start(me).unwrap_or(0);
    let rec = match dir.update(|r| {
        r.pid = me;
        r.pid_start = start;
    }) {
        Ok(r) => r,
        Err(e) => {
            report(&mut Some(ready), Err(&e.to_string()));
            std::process::exit(1)
        }
    };
    let log_file = rec.log.file.clone().unwrap_or_else(|| dir.file("shim.log"));
    super::log::init(Some(&log_file), rec.log.format(), rec.log.debug);
    // Before any thread exists, so every thread inherits the mask and only the signal
    // thread receives these.
    let mut blocked = FORWARDED.to_vec();
    blocked.push(libc::SIGWINCH);
    if let Err(e) = sys::block_signals(&blocked) {
        report(&mut Some(ready), Err(&format!("blocking signals: {e}")));
        std::process::exit(1)
    }
    let uds = if rec.role.owns_vm() {
        dir.file("vsock.sock")
    } else {
        rec.vm_dir.join("vsock.sock")
    };
    let shim = Arc::new(Shim {
        owner: rec.role.owns_vm(),
        dir,
        rec,
        uds,
        ready: Mutex::new(Some(ready)),
        relays: Mutex::new(None),
        created: AtomicBool::new(false),
        vm_ended: AtomicBool::new(false),
        guest_root: Mutex::new(None),
        level,
        filters,
    });
    let s = shim.clone();
    if let Err(e) = spawn_filtered(&shim, "capsa_signals", move || signal_loop(&s)) {
        fail(&shim, &e.to_string());
    }
    let result = if shim.owner {
        run_owner(&shim)
    } else {
        run_member(&shim)
    };
    if let Err(e) = result {
        fail(&shim, &e.to_string());
    }
    unreachable_park()
}

/// `CAPSA_SECCOMP_LEVEL` (0, 1 or 2, as `capsa vm run --seccomp-level`), default 2.
fn seccomp_level() -> Result<Level, String> {
    std::env::var("CAPSA_SECCOMP_LEVEL")
        .ok()
        .map(|l| l.parse::<Level>())
        .transpose()
        .map_err(|e| format!("CAPSA_SECCOMP_LEVEL: {e}"))
        .map(|l| l.unwrap_or(Level::Kill))
}

/// Installs the worker filter on the calling thread (nothing at level 0).
fn filter_worker(shim: &Shim) -> Result<(), ShimError> {
    match &shim.filters {
        Some(f) => f
            .apply(ThreadKind::Worker)
            .map_err(|e| ShimError::Other(format!("seccomp: {e}"))),
        None => Ok(()),
    }
}

/// Spawns thread `name`, which installs the worker filter and then runs `f`; returns
/// once the filter is on, so no shim thread is ever unfiltered while the guest runs.
fn spawn_filtered(
    shim: &Arc<Shim>,
    name: &str,
    f: impl FnOnce() + Send + 'static,
) -> Result<(), ShimError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let s = shim.clone();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let r = filter_worker(&s);
            let ok = r.is_ok();
            let _ = tx.send(r);
            if ok {
                f()
            }
        })
        .map_err(other("spawning a thread"))?;
    rx.recv()
        .map_err(|_| ShimError::Other(format!("thread {name} ended at its start")))?
}

fn unreachable_park() -> ! {
    loop {
        std::thread::park();
    }
}

/// Reports readiness (or the error) to `create`, once.
fn report(ready: &mut Option<File>, result: Result<(), &str>) {
    if let Some(mut f) = ready.take() {
        let line = match result {
            Ok(()) => "ok\n".to_string(),
            Err(e) => format!("error {}\n", e.replace('\n', " ")),
        };
        let _ = f.write_all(line.as_bytes());
    }
}

/// Fails the shim before or during creation: tells `create`, and exits.
fn fail(shim: &Shim, msg: &str) -> ! {
    tracing::error!("{msg}");
    report(
        &mut shim.ready.lock().unwrap_or_else(|e| e.into_inner()),
        Err(msg),
    );
    drop(
        shim.guest_root
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(),
    );
    std::process::exit(1)
}

/// Ends the shim with the container's exit code, at once: the process is the container
/// for its callers (podman waits only seconds after SIGKILL). The VM goes with the
/// process; nothing is lost, since the virtio-fs share has no writeback cache in the
/// guest (writes reach the host as they happen).
fn finish(shim: &Shim, code: i32) -> ! {
    tracing::debug!(code, "container exited");
    let _ = shim.dir.update(|r| {
        r.status = Status::Stopped;
        r.exit_code = Some(code);
    });
    drop(
        shim.guest_root
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(),
    );
    std::process::exit(code.clamp(0, 255))
}

fn load_spec(dir: &StateDir) -> Result<Spec, ShimError> {
    let p = dir.file("config.json");
    let data = std::fs::read(&p).map_err(other("reading the saved config.json"))?;
    serde_json::from_slice(&data).map_err(|e| ShimError::Other(format!("{}: {e}", p.display())))
}

fn cgroup_path(spec: &Spec, id: &str) -> PathBuf {
    let p = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
    cgroup::resolve_path(p.as_deref(), id)
}

fn run_owner(shim: &Arc<Shim>) -> Result<(), ShimError> {
    let id = shim.dir.id.clone();
    let spec = load_spec(&shim.dir)?;
    let layout = Layout::detect().map_err(other("reading the cgroup layout"))?;
    let cg = cgroup::setup_sandbox(
        &layout,
        &cgroup_path(&spec, &id),
        &cgroup::Resources::from_spec(&spec),
    )?;
    let rec_cg = cg.clone();
    shim.dir.update(|r| r.cgroups = Some(rec_cg))?;
    cgroup::join_process(&cg, std::process::id() as i32)?;

    let shared = shim.dir.file("shared");
    mounts::prepare_shared(&shared)?;
    let (mut guest_spec, rootfs) = mounts::share_container(&shared, &id, &shim.rec, &spec)?;
    // The vCPU threads carry the CPU limits on the host (see guest::cgroup).
    bundle::strip_guest_cpu_limits(&mut guest_spec);

    let root = crate::guest_root::GuestRoot::create().map_err(other("preparing the guest root"))?;
    let root_share = root.share();
    let root_dir = root_share.dir.clone();
    *shim.guest_root.lock().unwrap_or_else(|e| e.into_inner()) = Some(root);
    shim.dir.update(|r| r.guest_root = Some(root_dir))?;

    let kernel = shim
        .rec
        .kernel
        .clone()
        .ok_or_else(|| ShimError::Other("no guest kernel recorded".into()))?;
    let mut config = VmConfig::new(kernel);
    config.cmdline = crate::vm_cmd::agent_cmdline(vmm::vstate::kvm::host_is_pvm());
    config.mem_mib = bundle::vm_mem_mib(&spec).map_err(|e| ShimError::Other(e.to_string()))?;
    config.vcpus = bundle::vm_vcpus(&spec, sys::online_cpus());
    if bundle::block_rootfs(&shim.rec.rootfs).is_some() {
        // root.readonly: the disk itself is read-only (VIRTIO_BLK_F_RO, host file opened
        // read-only), so even a compromised guest cannot write to it.
        config.disks.push(vmm::DiskConfig {
            path: shim.rec.rootfs.clone(),
            read_only: bundle::root_readonly(&spec),
            id: Some(mounts::DISK_SERIAL.into()),
        });
    }
    config.serial_out = SerialOutput::File(shim.dir.file("console.log"));
    config.shares = vec![
        root_share,
        FsConfig {
            tag: SHARED_TAG.into(),
            dir: shared,
            read_only: false,
        },
    ];
    config.vsock = Some(VsockConfig {
        cid: VSOCK_CID,
        uds: shim.uds.clone(),
    });
    config.thread_hook = thread_hook(shim.level, &config, cg)?;
    tracing::debug!(
        mem_mib = config.mem_mib,
        vcpus = config.vcpus,
        "building the VM"
    );
    let vm = Vm::new(config)?;

    // The worker does all file and socket work (agent, state, relays, control socket,
    // cleanup, exit) under its own filter, on before the guest starts.
    let s = shim.clone();
    spawn_filtered(shim, "capsa_worker", move || {
        if let Err(e) = run_container(&s, guest_spec, rootfs) {
            fail(&s, &e.to_string());
        }
    })?;
    let result = vm.run();
    // From here this thread is under the VMM filter: only tell the worker.
    match &result {
        Ok(r) => tracing::debug!(exit = ?r.exit, "VM ended"),
        Err(e) => tracing::error!("VM failed: {e}"),
    }
    shim.vm_ended.store(true, Ordering::SeqCst);
    // The worker normally exits the process; if it is stuck, end it here.
    std::thread::sleep(Duration::from_secs(30));
    // SAFETY: _exit only ends the process.
    unsafe { libc::_exit(VM_DIED) }
}

/// The VMM thread hook: each vCPU thread moves itself into the vcpu cgroup, then every
/// thread installs its seccomp filter (sandbox.rs). Cgroup first: the filters do not
/// allow opening cgroup files.
fn thread_hook(
    level: Level,
    config: &VmConfig,
    cg: cgroup::Record,
) -> Result<Option<vmm::ThreadHook>, ShimError> {
    let devices = seccomp::Devices {
        block: !config.disks.is_empty(),
        vsock: config.vsock.is_some(),
        virtio_fs: !config.shares.is_empty(),
    };
    let filters = crate::sandbox::thread_hook(level, devices)
        .map_err(|e| ShimError::Other(format!("seccomp: {e}")))?;
    Ok(Some(Arc::new(move |role| {
        if let ThreadRole::Vcpu(_) = role {
            cgroup::join_vcpu_thread(&cg, sys::gettid()).map_err(|e| e.to_string())?;
        }
        match &filters {
            Some(f) => f(role),
            None => Ok(()),
        }
    })))
}

fn run_member(shim: &Arc<Shim>) -> Result<(), ShimError> {
    let id = shim.dir.id.clone();
    let Role::Member { sandbox } = &shim.rec.role else {
        return Err(ShimError::Other("not a pod member".into()));
    };
    let vm_dir = StateDir {
        path: shim.rec.vm_dir.clone(),
        id: sandbox.clone(),
    };
    let vm_rec = vm_dir.read()?;
    if vm_rec.effective_status() == Status::Stopped {
        return Err(ShimError::Other(format!(
            "sandbox container {sandbox:?} is not running"
        )));
    }
    let spec = load_spec(&shim.dir)?;
    let layout = Layout::detect().map_err(other("reading the cgroup layout"))?;
    let cg = cgroup::setup_member(&layout, &cgroup_path(&spec, &id))?;
    let rec_cg = cg.clone();
    shim.dir.update(|r| r.cgroups = Some(rec_cg))?;
    cgroup::join_process(&cg, std::process::id() as i32)?;
    let (guest_spec, rootfs) =
        mounts::share_container(&vm_dir.file("shared"), &id, &shim.rec, &spec)?;
    // Set up: from here this thread is the worker.
    filter_worker(shim)?;
    run_container(shim, guest_spec, rootfs)
}

/// Connects to the agent, retrying until it answers, the VM ends, or the timeout.
fn connect_agent(shim: &Shim) -> Result<AgentClient, ShimError> {
    let timeout = std::env::var("CAPSA_AGENT_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(AGENT_TIMEOUT);
    let start = Instant::now();
    loop {
        match AgentClient::connect(&shim.uds, Duration::from_secs(1)) {
            Ok(c) => {
                tracing::debug!(after = ?start.elapsed(), "guest agent answered");
                return Ok(c);
            }
            Err(ClientError::Timeout(..)) if start.elapsed() < timeout => {}
            Err(e) => {
                let e = if matches!(e, ClientError::Timeout(..)) {
                    ClientError::Timeout(timeout, e.to_string())
                } else {
                    e
                };
                return Err(e.into());
            }
        }
        if shim.vm_ended.load(Ordering::SeqCst) {
            return Err(ShimError::Other(format!(
                "the VM stopped before its agent answered; guest console: {}",
                console_tail(&shim.dir.file("console.log"))
            )));
        }
    }
}

/// The last lines of the guest console, for error messages.
fn console_tail(p: &Path) -> String {
    let text = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    if tail.is_empty() {
        format!("{} is empty", p.display())
    } else {
        tail
    }
}

fn stdio_mode(shim: &Shim, spec: &Spec) -> Result<Mode, ShimError> {
    let terminal = spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    Ok(
        match (terminal, &shim.rec.console_socket, shim.rec.stdio_tty) {
            (false, _, _) => Mode::Pipes,
            (true, Some(s), _) => Mode::Console(s.clone()),
            (true, None, true) => Mode::StdioTty,
            (true, None, false) => {
                return Err(ShimError::Other(
                    "process.terminal is set but no --console-socket was given".into(),
                ))
            }
        },
    )
}

/// Creates the container in the guest, reports readiness, serves the control socket and
/// waits for the container's exit; never returns on success.
fn run_container(shim: &Arc<Shim>, spec: Spec, rootfs: RootfsSource) -> Result<(), ShimError> {
    let id = shim.dir.id.clone();
    let mode = stdio_mode(shim, &spec)?;
    let mut client = connect_agent(shim)?;
    let stdin = !mode.is_tty();
    client.call(&Request::CreateContainer {
        id: id.clone(),
        spec: Box::new(spec),
        rootfs,
        stdin,
    })?;
    shim.created.store(true, Ordering::SeqCst);
    let relays = Arc::new(relay::attach(&client, &id, None, &mode, stdin)?);
    *shim.relays.lock().unwrap_or_else(|e| e.into_inner()) = Some(relays.clone());
    drop(client);

    let sock = shim.dir.file("ctl.sock");
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).map_err(other("control socket"))?;
    let s = shim.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            control::serve_one(conn, |req| handle_control(&s, req));
        }
    });

    // Still `creating`: `create` runs the createRuntime/createContainer hooks, then
    // records `created`.
    report(
        &mut shim.ready.lock().unwrap_or_else(|e| e.into_inner()),
        Ok(()),
    );
    tracing::debug!("container created");

    // Wait on a connection of its own: the other one serves requests meanwhile.
    let code = match AgentClient::connect(&shim.uds, Duration::from_secs(60)).and_then(|mut c| {
        c.call(&Request::Wait {
            id: id.clone(),
            exec_id: None,
            kill_on_hangup: true,
        })
    }) {
        Ok(Response::Exited { status }) => status.code(),
        Ok(other) => {
            tracing::error!("unexpected reply to wait: {other:?}");
            VM_DIED
        }
        Err(e) => {
            tracing::error!("lost the guest agent while waiting for the container: {e}");
            VM_DIED
        }
    };
    relays.wait_outputs(DRAIN_TIMEOUT);
    finish(shim, code)
}

/// A fresh agent connection per request: a slow request (a start on a PVM host) must not
/// hold up a signal.
fn agent(shim: &Shim) -> Result<AgentClient, ClientError> {
    AgentClient::connect(&shim.uds, Duration::from_secs(10))
}

fn handle_control(shim: &Shim, req: CtlRequest) -> Result<(), String> {
    if !shim.created.load(Ordering::SeqCst) {
        return Err("the container is not created yet".into());
    }
    let id = shim.dir.id.clone();
    let mut client = agent(shim).map_err(|e| e.to_string())?;
    match req {
        CtlRequest::Start => {
            // Running before the process can exit: the exit then overwrites it.
            shim.dir
                .update(|r| {
                    if r.status == Status::Created {
                        r.status = Status::Running;
                    }
                })
                .map_err(|e| e.to_string())?;
            // The startContainer hooks run in the guest, inside the container.
            let hook_state = shim.dir.read().map(|r| r.oci_state(Status::Created)).ok();
            let req = Request::StartContainer {
                id: id.clone(),
                hook_state,
            };
            if let Err(e) = client.call_ok(&req) {
                let _ = shim.dir.update(|r| {
                    if r.status == Status::Running {
                        r.status = Status::Created;
                    }
                });
                return Err(e.to_string());
            }
            if let Some((rows, cols)) = winsize(shim) {
                let _ = client.call(&Request::ResizeTty {
                    id,
                    exec_id: None,
                    rows,
                    cols,
                });
            }
            Ok(())
        }
        CtlRequest::Signal { signal, all } => client
            .call_ok(&Request::Signal {
                id,
                exec_id: None,
                signal,
                all,
            })
            .map_err(|e| e.to_string()),
    }
}

fn winsize(shim: &Shim) -> Option<(u16, u16)> {
    shim.relays
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .and_then(|r| r.winsize())
}

/// Receives the blocked signals: forwards them to the container, resizes its terminal on
/// SIGWINCH, and ends the shim if a signal arrives before the container exists.
fn signal_loop(shim: &Shim) {
    let mut sigs = FORWARDED.to_vec();
    sigs.push(libc::SIGWINCH);
    let set = sys::sigset(&sigs);
    loop {
        let sig = sys::sigwait(&set);
        let id = shim.dir.id.clone();
        if !shim.created.load(Ordering::SeqCst) {
            if sig != libc::SIGWINCH {
                fail(shim, &format!("stopped by signal {sig} during create"));
            }
            continue;
        }
        let req = if sig == libc::SIGWINCH {
            match winsize(shim) {
                Some((rows, cols)) => Request::ResizeTty {
                    id,
                    exec_id: None,
                    rows,
                    cols,
                },
                None => continue,
            }
        } else {
            Request::Signal {
                id,
                exec_id: None,
                signal: sig,
                all: false,
            }
        };
        let r = agent(shim).and_then(|mut c| c.call(&req));
        if let Err(e) = r {
            tracing::debug!(sig, "forwarding signal: {e}");
        }
    }
}

/// Path of a share's directory in the guest (where spec mounts point).
pub fn guest_share_path(rel: &str) -> String {
    format!("{SHARES_DIR}/{SHARED_TAG}/{rel}")
}
