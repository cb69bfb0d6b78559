//! The OCI commands (the CLI edge: errors are anyhow here).

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use oci_spec::runtime::Spec;

use super::bundle;
use super::cgroup;
use super::cli::{
    CreateArgs, DeleteArgs, GlobalArgs, KillArgs, ListArgs, ListFormat, LogFormat, PsArgs,
    PsFormat, RunArgs, SpecArgs,
};
use super::control::{self, CtlError, CtlRequest};
use super::exec::{read_ready, write_pid_file};
use super::hooks::{self, Point};
use super::mounts;
use super::state::{self, LogSettings, Record, Role, StateDir, Status};
use super::sys;
use crate::agent::client::AgentClient;
use crate::agent::protocol::{Request, Response};

/// How long `start` waits for the guest to start the process.
const START_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a signal may take to reach the guest.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `delete` waits for a killed shim to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Starts `capsa <args> --ready-fd N` in a new session with this process's stdio and
/// waits until it reports readiness; returns its pid and its verdict. A helper that
/// failed is reaped here.
pub fn spawn_helper(args: &[String]) -> anyhow::Result<(u32, Result<(), String>)> {
    let (r, w) = sys::pipe().context("pipe")?;
    sys::inheritable(w.as_raw_fd()).context("pipe")?;
    // The real path, so the helper's name (comm, ps) is capsa's.
    let exe = std::fs::read_link("/proc/self/exe").unwrap_or_else(|_| "/proc/self/exe".into());
    let mut cmd = Command::new(exe);
    cmd.arg0("capsa")
        .args(args)
        .arg("--ready-fd")
        .arg(w.as_raw_fd().to_string());
    // SAFETY: setsid is async-signal-safe; it detaches the helper from the caller's
    // terminal and process group, as runc does for the container.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .context("starting the container's host process")?;
    drop(w);
    let verdict = read_ready(std::fs::File::from(r));
    if verdict.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    Ok((child.id(), verdict))
}

fn now() -> String {
    super::log::rfc3339(std::time::SystemTime::now())
}

fn load_saved_spec(dir: &StateDir) -> anyhow::Result<Spec> {
    let p = dir.file("config.json");
    Ok(serde_json::from_slice(
        &std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?,
    )?)
}

/// Everything `create` and `run` share: validates, records, starts the shim, waits for
/// the container to exist, runs the create hooks. Returns the state dir and shim pid.
fn create_container(
    g: &GlobalArgs,
    a: &CreateArgs,
    stdio_tty: bool,
) -> anyhow::Result<(StateDir, u32)> {
    let root = g.root();
    let dir = StateDir::new(&root, &a.id)?;
    let bundle = std::path::absolute(match &a.bundle {
        Some(b) => b.clone(),
        None => std::env::current_dir()?,
    })?;
    let spec = bundle::load(&bundle)?;
    let role = bundle::role(&spec, &a.id)?;
    let terminal = spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    if terminal && a.console_socket.is_none() && !stdio_tty {
        bail!("cannot allocate a terminal without --console-socket (process.terminal is true)");
    }
    if !terminal && a.console_socket.is_some() {
        bail!("--console-socket given but process.terminal is false");
    }
    let kernel = if role.owns_vm() {
        let k = bundle::find_kernel(g.kernel.as_deref())?;
        if !k.is_file() {
            bail!("guest kernel {}: no such file", k.display());
        }
        Some(k)
    } else {
        None
    };
    let vm_dir = match &role {
        Role::Member { sandbox } => {
            StateDir::open(&root, sandbox)
                .map_err(|_| anyhow::anyhow!("sandbox container \"{sandbox}\" does not exist"))?
                .path
        }
        _ => dir.path.clone(),
    };
    let rootfs = bundle::rootfs_path(&spec, &bundle)?;
    if !role.owns_vm() && bundle::block_rootfs(&rootfs).is_some() {
        return Err(bundle::BundleError::BlockRootfsInPod(rootfs).into());
    }
    dir.create()?;
    let result = (|| {
        let data = serde_json::to_vec_pretty(&spec)?;
        state::write_atomic(&dir.file("config.json"), &data)?;
        let rec = Record {
            id: a.id.clone(),
            bundle: bundle.clone(),
            rootfs: rootfs.canonicalize().unwrap_or(rootfs),
            status: Status::Creating,
            pid: 0,
            pid_start: 0,
            creator_pid: std::process::id() as i32,
            created: now(),
            annotations: spec
                .annotations()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            role,
            vm_dir,
            console_socket: a
                .console_socket
                .as_ref()
                .map(std::path::absolute)
                .transpose()?,
            stdio_tty,
            kernel,
            exit_code: None,
            cgroups: None,
            guest_root: None,
            log: LogSettings {
                file: g.log.as_ref().map(std::path::absolute).transpose()?,
                json: g.log_format == Some(LogFormat::Json),
                debug: g.debug,
            },
        };
        dir.write(&rec)?;
        let args = vec![
            "__shim".to_string(),
            "--state-dir".into(),
            dir.path.display().to_string(),
        ];
        let (pid, verdict) = spawn_helper(&args)?;
        if let Err(e) = verdict {
            bail!("{e}");
        }
        // The container exists in the guest; it is `created` once these hooks ran
        // (runtime-spec: they see the state `creating`).
        let state = dir.read()?.oci_state(Status::Creating);
        let hooked = hooks::run(&spec, Point::Prestart, &state)
            .and_then(|_| hooks::run(&spec, Point::CreateRuntime, &state))
            .and_then(|_| hooks::run(&spec, Point::CreateContainer, &state));
        if let Err(e) = hooked {
            let _ = sys::kill(pid as i32, libc::SIGKILL);
            return Err(e.into());
        }
        dir.update(|r| {
            if r.status == Status::Creating {
                r.status = Status::Created;
            }
        })?;
        Ok(pid)
    })();
    match result {
        Ok(pid) => Ok((dir, pid)),
        Err(e) => {
            if let Ok(rec) = dir.read() {
                wait_gone(&rec, EXIT_TIMEOUT);
                cleanup(&dir, &rec);
            } else {
                mounts::remove_tree(&dir.path);
            }
            Err(e)
        }
    }
}

/// `create`.
pub fn create(g: &GlobalArgs, a: &CreateArgs) -> anyhow::Result<ExitCode> {
    let (_, pid) = create_container(g, a, false)?;
    // Last: containerd takes the pid file as the end of create.
    if let Some(p) = &a.pid_file {
        write_pid_file(p, pid as i32)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `start`.
pub fn start(g: &GlobalArgs, id: &str) -> anyhow::Result<ExitCode> {
    let dir = StateDir::open(&g.root(), id)?;
    let rec = dir.read()?;
    match rec.effective_status() {
        Status::Created => {}
        Status::Stopped => bail!("cannot start a container that has stopped"),
        Status::Creating => bail!("cannot start a container that is still being created"),
        Status::Running | Status::Paused => bail!("cannot start an already running container"),
    }
    let spec = load_saved_spec(&dir)?;
    // The startContainer hooks run in the guest, in the container (see guest::agent).
    control::call(&dir.file("ctl.sock"), &CtlRequest::Start, START_TIMEOUT)
        .with_context(|| format!("starting container {id}"))?;
    let rec = dir.read()?;
    hooks::run_logged(&spec, Point::Poststart, &rec.oci_state(Status::Running));
    Ok(ExitCode::SUCCESS)
}

/// `run`.
pub fn run(g: &GlobalArgs, a: &RunArgs) -> anyhow::Result<ExitCode> {
    let id = a.create.id.clone();
    // Foreground without a console socket: the terminal is this process's own.
    let stdio_tty = !a.detach && a.create.console_socket.is_none();
    // Signals for the container go through the shim; take them before any thread.
    sys::block_signals(super::shim::FORWARDED)?;
    let (dir, pid) = create_container(g, &a.create, stdio_tty)?;
    if let Some(p) = &a.create.pid_file {
        write_pid_file(p, pid as i32)?;
    }
    let terminal = load_saved_spec(&dir)?
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    let raw = (terminal && stdio_tty && sys::is_tty(0))
        .then(|| sys::set_raw(0).ok())
        .flatten();
    let started = start(g, &id);
    if a.detach || started.is_err() {
        if let Some(t) = raw {
            sys::restore_termios(0, &t);
        }
        if started.is_err() {
            let _ = sys::kill(pid as i32, libc::SIGKILL);
        }
        return started;
    }
    let target = pid as i32;
    std::thread::spawn(move || {
        let set = sys::sigset(super::shim::FORWARDED);
        loop {
            let sig = sys::sigwait(&set);
            let _ = sys::kill(target, sig);
        }
    });
    let mut status = 0;
    // SAFETY: waitpid on our own child with a valid out-pointer.
    let r = unsafe { libc::waitpid(target, &mut status, 0) };
    if let Some(t) = raw {
        sys::restore_termios(0, &t);
    }
    let code = if r < 0 {
        1
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    };
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

/// `state`.
pub fn state(g: &GlobalArgs, id: &str) -> anyhow::Result<ExitCode> {
    let dir = StateDir::open(&g.root(), id)?;
    let rec = dir.read()?;
    let v = rec.oci_state(rec.effective_status());
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(ExitCode::SUCCESS)
}

/// `kill`.
pub fn kill(g: &GlobalArgs, a: &KillArgs) -> anyhow::Result<ExitCode> {
    let sig = super::signal::parse(&a.signal)?;
    let dir = StateDir::open(&g.root(), &a.id)?;
    let rec = dir.read()?;
    match rec.effective_status() {
        Status::Stopped => bail!("container not running"),
        Status::Creating => bail!("container {} is still being created", a.id),
        Status::Paused if sig != libc::SIGKILL => {
            bail!("container {} is paused: resume it first", a.id)
        }
        Status::Created | Status::Running | Status::Paused => {}
    }
    if sig == libc::SIGKILL && rec.role.owns_vm() {
        // The VM is the container: SIGKILL ends its host process, and the guest with it,
        // at once (and also when the guest is paused or unresponsive). Callers see the
        // pid from the pid file die by SIGKILL, status 137, as with runc.
        sys::kill(rec.pid, libc::SIGKILL)?;
        return Ok(ExitCode::SUCCESS);
    }
    let req = CtlRequest::Signal {
        signal: sig,
        all: a.all,
    };
    match control::call(&dir.file("ctl.sock"), &req, SIGNAL_TIMEOUT) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(CtlError::Unreachable(_)) if !state::alive(rec.pid, rec.pid_start) => {
            bail!("container not running")
        }
        Err(e) if sig == libc::SIGKILL => {
            // The guest did not take it: end the container's host process instead.
            tracing::warn!("SIGKILL through the guest failed ({e}); killing the host process");
            sys::kill(rec.pid, libc::SIGKILL)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(CtlError::Failed(m)) if m.contains("already exited") => bail!("container not running"),
        Err(e) => Err(e.into()),
    }
}

/// Waits until the shim of `rec` is gone, up to `timeout`.
fn wait_gone(rec: &Record, timeout: Duration) -> bool {
    let start = Instant::now();
    while rec.pid > 0 && state::alive(rec.pid, rec.pid_start) {
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Removes what a container left on the host: cgroups, the guest root, its binds under
/// the VM's share, and its state directory (with the share itself for the VM owner).
pub fn cleanup(dir: &StateDir, rec: &Record) {
    if let Some(cg) = &rec.cgroups {
        cgroup::remove(cg);
    }
    if let Some(gr) = &rec.guest_root {
        let ours = gr
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("capsa-guest-root-"));
        if ours {
            mounts::remove_tree(gr);
        }
    }
    mounts::remove_tree(&rec.vm_dir.join("shared").join(&rec.id));
    mounts::remove_tree(&dir.path);
}

/// `delete`.
pub fn delete(g: &GlobalArgs, a: &DeleteArgs) -> anyhow::Result<ExitCode> {
    let dir = StateDir::open(&g.root(), &a.id)?;
    let rec = dir.read()?;
    let status = rec.effective_status();
    match status {
        // A create that died half-way may have left its shim running.
        Status::Stopped if rec.status == Status::Creating => kill_for_delete(&dir, &rec),
        Status::Stopped => {}
        // runc deletes a created container without --force.
        Status::Created => kill_for_delete(&dir, &rec),
        s if a.force => {
            if s == Status::Paused {
                if let Some(cg) = &rec.cgroups {
                    let _ = cgroup::freeze(cg, false);
                }
            }
            kill_for_delete(&dir, &rec)
        }
        s => bail!("cannot delete container {} that is not stopped: {s}", a.id),
    }
    // A stopped shim may still be shutting its VM down.
    if !wait_gone(&rec, EXIT_TIMEOUT) {
        let _ = sys::kill(rec.pid, libc::SIGKILL);
        wait_gone(&rec, Duration::from_secs(5));
    }
    if let Role::Member { .. } = rec.role {
        // Frees the container in the guest, if the VM still runs.
        let uds = rec.vm_dir.join("vsock.sock");
        if uds.exists() {
            if let Ok(mut c) = AgentClient::connect(&uds, Duration::from_secs(2)) {
                let _ = c.call(&Request::RemoveContainer {
                    id: a.id.clone(),
                    force: true,
                });
            }
        }
    }
    let spec = load_saved_spec(&dir).ok();
    cleanup(&dir, &rec);
    if let Some(spec) = spec {
        hooks::run_logged(&spec, Point::Poststop, &rec.oci_state(Status::Stopped));
    }
    Ok(ExitCode::SUCCESS)
}

fn kill_for_delete(dir: &StateDir, rec: &Record) {
    if rec.pid <= 0 || !state::alive(rec.pid, rec.pid_start) {
        return;
    }
    if !rec.role.owns_vm() {
        // Kill its processes in the guest; the VM goes on for the others.
        let req = CtlRequest::Signal {
            signal: libc::SIGKILL,
            all: true,
        };
        let _ = control::call(&dir.file("ctl.sock"), &req, Duration::from_secs(10));
    }
    let _ = sys::kill(rec.pid, libc::SIGKILL);
}

/// `ps`.
pub fn ps(g: &GlobalArgs, a: &PsArgs) -> anyhow::Result<ExitCode> {
    let dir = StateDir::open(&g.root(), &a.id)?;
    let rec = dir.read()?;
    let status = rec.effective_status();
    match a.format {
        PsFormat::Json => {
            let pids = match status {
                Status::Stopped | Status::Creating => vec![],
                _ => guest_pids(&rec)?,
            };
            println!("{}", serde_json::to_string(&pids)?);
        }
        PsFormat::Table => {
            if status == Status::Stopped {
                bail!("container not running");
            }
            let pids = guest_pids(&rec)?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "PID (in the guest)")?;
            for p in pids {
                writeln!(out, "{p}")?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The container's processes, as pids in the guest's initial pid namespace (the agent's
/// view; the container's own pid namespace numbers them from 1). They are not host pids:
/// the processes run in the VM, which the host sees as the container's host process.
fn guest_pids(rec: &Record) -> anyhow::Result<Vec<i32>> {
    if rec.effective_status() == Status::Paused || vm_paused(rec) {
        bail!(
            "container {} is paused (its VM is frozen): resume it first",
            rec.id
        );
    }
    let mut c = AgentClient::connect(&rec.vm_dir.join("vsock.sock"), Duration::from_secs(10))?;
    match c.call(&Request::Ps { id: rec.id.clone() })? {
        Response::Pids { pids } => Ok(pids),
        other => bail!("unexpected agent reply: {other:?}"),
    }
}

/// True if the VM serving `rec` (its own or its pod's) is paused.
fn vm_paused(rec: &Record) -> bool {
    let owner = if rec.role.owns_vm() {
        Some(rec.clone())
    } else {
        rec.vm_dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|id| {
                StateDir {
                    path: rec.vm_dir.clone(),
                    id: id.to_string(),
                }
                .read()
                .ok()
            })
    };
    owner.is_some_and(|o| o.effective_status() == Status::Paused)
}

fn pausable(dir: &StateDir, id: &str) -> anyhow::Result<(Record, cgroup::Record)> {
    let rec = dir.read()?;
    if !rec.role.owns_vm() {
        bail!("container {id} shares its pod's VM: pausing it would freeze the whole pod; pause the sandbox container instead");
    }
    let cg = rec
        .cgroups
        .clone()
        .ok_or_else(|| anyhow::anyhow!("container {id} has no cgroups"))?;
    Ok((rec, cg))
}

/// `pause`: freezes the vCPU threads' cgroup. The VMM thread keeps running, so the
/// container can still be killed or deleted, and `state` still answers.
pub fn pause(g: &GlobalArgs, id: &str) -> anyhow::Result<ExitCode> {
    let dir = StateDir::open(&g.root(), id)?;
    let (rec, cg) = pausable(&dir, id)?;
    match rec.effective_status() {
        Status::Running => {}
        Status::Paused => return Ok(ExitCode::SUCCESS),
        _ => bail!("container not running"),
    }
    cgroup::freeze(&cg, true)?;
    dir.update(|r| {
        if r.status == Status::Running {
            r.status = Status::Paused
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `resume`.
pub fn resume(g: &GlobalArgs, id: &str) -> anyhow::Result<ExitCode> {
    let dir = StateDir::open(&g.root(), id)?;
    let (rec, cg) = pausable(&dir, id)?;
    match rec.effective_status() {
        Status::Paused => {}
        Status::Running => return Ok(ExitCode::SUCCESS),
        _ => bail!("container not paused"),
    }
    cgroup::freeze(&cg, false)?;
    dir.update(|r| {
        if r.status == Status::Paused {
            r.status = Status::Running
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `list`.
pub fn list(g: &GlobalArgs, a: &ListArgs) -> anyhow::Result<ExitCode> {
    let root = g.root();
    let mut recs: Vec<Record> = match std::fs::read_dir(&root) {
        Ok(rd) => rd
            .flatten()
            .filter_map(|e| {
                let id = e.file_name().to_string_lossy().into_owned();
                StateDir::open(&root, &id).ok()?.read().ok()
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
        Err(e) => return Err(e).with_context(|| format!("reading {}", root.display())),
    };
    recs.sort_by(|a, b| a.id.cmp(&b.id));
    let mut out = std::io::stdout().lock();
    if a.quiet {
        for r in &recs {
            writeln!(out, "{}", r.id)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    match a.format {
        ListFormat::Json => {
            let v: Vec<_> = recs
                .iter()
                .map(|r| r.oci_state(r.effective_status()))
                .collect();
            writeln!(out, "{}", serde_json::to_string(&v)?)?;
        }
        ListFormat::Table => {
            let rows: Vec<[String; 5]> = recs
                .iter()
                .map(|r| {
                    let s = r.effective_status();
                    let pid = r.oci_state(s)["pid"].to_string();
                    [
                        r.id.clone(),
                        pid,
                        s.to_string(),
                        r.bundle.display().to_string(),
                        r.created.clone(),
                    ]
                })
                .collect();
            let head = ["ID", "PID", "STATUS", "BUNDLE", "CREATED"].map(String::from);
            let mut w = [0usize; 5];
            for row in std::iter::once(&head).chain(&rows) {
                for (i, c) in row.iter().enumerate() {
                    w[i] = w[i].max(c.len());
                }
            }
            for row in std::iter::once(&head).chain(&rows) {
                let line: Vec<String> = row
                    .iter()
                    .enumerate()
                    .map(|(i, c)| format!("{c:<width$}", width = w[i]))
                    .collect();
                writeln!(out, "{}", line.join("   ").trim_end())?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The spec `capsa spec` writes: oci-spec's defaults (runc's), with a terminal, the
/// rootfs at `rootfs` and the hostname `capsa`.
pub fn default_spec() -> Spec {
    let mut spec = Spec::default();
    spec.set_version("1.2.0".into());
    if let Some(p) = spec.process_mut() {
        p.set_terminal(Some(true));
    }
    spec.set_hostname(Some("capsa".into()));
    let root = oci_spec::runtime::RootBuilder::default()
        .path("rootfs")
        .readonly(true)
        .build()
        .expect("a valid root");
    spec.set_root(Some(root));
    spec
}

/// `spec`.
pub fn spec(a: &SpecArgs) -> anyhow::Result<ExitCode> {
    let dir = a.bundle.clone().unwrap_or_else(|| PathBuf::from("."));
    let path = dir.join("config.json");
    if path.exists() {
        bail!("File {} exists. Remove it first", path.display());
    }
    let data = serde_json::to_vec_pretty(&default_spec())?;
    std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// `features`: runc's features JSON, describing what the guest side implements.
pub fn features() -> anyhow::Result<ExitCode> {
    let mount_options = [
        "ro",
        "rw",
        "nosuid",
        "suid",
        "nodev",
        "dev",
        "noexec",
        "exec",
        "sync",
        "async",
        "dirsync",
        "remount",
        "mand",
        "nomand",
        "atime",
        "noatime",
        "diratime",
        "nodiratime",
        "bind",
        "rbind",
        "relatime",
        "norelatime",
        "strictatime",
        "nostrictatime",
        "private",
        "rprivate",
        "shared",
        "rshared",
        "slave",
        "rslave",
        "unbindable",
        "runbindable",
    ];
    let v = serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": state::OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer",
                  "poststart", "poststop"],
        "mountOptions": mount_options,
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "uts"],
            "capabilities": crate::guest::caps::NAMES,
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {"enabled": false},
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
        },
        "annotations": {
            "io.github.capsa.runtime": "VM per sandbox (KVM micro-VMM in the runtime)",
            "io.github.capsa.vm.memory": format!(
                "linux.resources.memory.limit minus {} MiB, else {} MiB",
                bundle::VMM_OVERHEAD_MIB, bundle::DEFAULT_MEM_MIB),
        },
    });
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn default_spec_is_valid_for_create() {
        let s = default_spec();
        assert!(bundle::version_supported(s.version()));
        assert_eq!(s.root().as_ref().unwrap().path(), Path::new("rootfs"));
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("rootfs")).unwrap();
        std::fs::write(
            d.path().join("config.json"),
            serde_json::to_vec(&s).unwrap(),
        )
        .unwrap();
        bundle::load(d.path()).unwrap();
    }
}
