//! `capsa agent`: a host-side client for a VM booted with `capsa vm run --agent`. `run` runs
//! one process in a fresh container in the guest, relays its output and exits with its
//! status; the other subcommands map one to one onto the agent's requests (create, start,
//! exec, kill, wait, ps, stats, resize, rm, shutdown), so each can be driven on its own.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use crate::agent::client::{read_all, AgentClient};
use crate::agent::protocol::{
    ExitStatus, Request, Response, RootfsSource, StreamHello, StreamKind, PROTOCOL_VERSION,
};

#[derive(Subcommand)]
pub enum AgentCommand {
    /// Run a command in a new container in the guest and exit with its status.
    Run(RunArgs),
    /// Create a container whose process waits for `start`; prints its guest pid.
    Create(CreateArgs),
    /// Start a created container's process; with `--attach`, relay its output, wait for it
    /// and exit with its status.
    Start(StartArgs),
    /// Run an extra process in a running container, relay its output (live) and exit with
    /// its status.
    Exec(ExecArgs),
    /// Send a signal to a container's init, one exec'd process, or all its processes.
    Kill(KillArgs),
    /// Wait for a process to exit; prints `exited N` or `signaled N` and exits with the
    /// shell's `$?` for it.
    Wait(ProcArgs),
    /// List the guest pids of a container's processes, one per line.
    Ps(IdArgs),
    /// Print a container's cgroup statistics as JSON.
    Stats(IdArgs),
    /// Resize a process's terminal.
    Resize(ResizeArgs),
    /// Remove a container.
    Rm(RmArgs),
    /// Power the guest off.
    Shutdown(ConnArgs),
}

#[derive(Args)]
pub struct IdArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Container id.
    id: String,
}

#[derive(Args)]
pub struct ProcArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Container id.
    id: String,
    /// The exec'd process (default: the container's init).
    #[arg(long)]
    exec_id: Option<String>,
}

/// Options of a process to run.
#[derive(Args)]
pub struct ProcessOpts {
    /// Environment variable `K=V` (repeatable).
    #[arg(long = "env", short = 'e')]
    env: Vec<String>,
    /// Working directory in the container.
    #[arg(long, default_value = "/")]
    cwd: String,
    /// Give the process a terminal (its output then arrives as one stream on stdout).
    #[arg(long)]
    tty: bool,
    /// Terminal size `ROWSxCOLS`, set through a resize request before the program runs
    /// (`create`) or right after it started (`exec`).
    #[arg(long, value_parser = parse_size, requires = "tty")]
    tty_size: Option<(u16, u16)>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Args)]
pub struct CreateArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Container id.
    id: String,
    /// Root filesystem: the virtio-fs share with this tag.
    #[arg(long)]
    rootfs_fs: String,
    #[command(flatten)]
    process: ProcessOpts,
}

#[derive(Args)]
pub struct StartArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Container id.
    id: String,
    /// Relay the process's output (stdout/stderr, or its terminal with `--tty`), wait for
    /// it and exit with its status.
    #[arg(long)]
    attach: bool,
    /// The container was created with `--tty`.
    #[arg(long, requires = "attach")]
    tty: bool,
}

#[derive(Args)]
pub struct ExecArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Container id.
    id: String,
    /// Name of the new process (default: `exec-<client pid>`).
    #[arg(long)]
    exec_id: Option<String>,
    #[command(flatten)]
    process: ProcessOpts,
}

#[derive(Args)]
pub struct KillArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Container id.
    id: String,
    /// Signal name or number.
    #[arg(default_value = "TERM")]
    signal: String,
    /// The exec'd process (default: the container's init).
    #[arg(long, conflicts_with = "all")]
    exec_id: Option<String>,
    /// Signal every process in the container.
    #[arg(long)]
    all: bool,
}

#[derive(Args)]
pub struct ResizeArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Container id.
    id: String,
    /// Rows.
    rows: u16,
    /// Columns.
    cols: u16,
    /// The exec'd process (default: the container's init).
    #[arg(long)]
    exec_id: Option<String>,
}

#[derive(Args)]
pub struct RmArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Container id.
    id: String,
    /// Kill the container first if it still runs.
    #[arg(long)]
    force: bool,
}

/// Parses `ROWSxCOLS`.
fn parse_size(s: &str) -> Result<(u16, u16), String> {
    let (r, c) = s
        .split_once('x')
        .ok_or_else(|| format!("expected ROWSxCOLS, got {s:?}"))?;
    let n = |v: &str| v.parse::<u16>().map_err(|e| format!("{v:?}: {e}"));
    Ok((n(r)?, n(c)?))
}

#[derive(Args)]
pub struct ConnArgs {
    /// The VM's vsock Unix socket (`capsa vm run --vsock-uds`).
    #[arg(long)]
    uds: PathBuf,
    /// How long to wait for the agent to come up, in seconds (guests boot slowly on PVM
    /// hosts).
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Root filesystem: the virtio-fs share with this tag.
    #[arg(long, group = "rootfs")]
    rootfs_fs: Option<String>,
    /// Root filesystem: the disk with this serial, as `SERIAL[:FSTYPE]` (default ext4).
    #[arg(long, group = "rootfs")]
    rootfs_disk: Option<String>,
    /// Root filesystem: a directory already in the guest.
    #[arg(long, group = "rootfs")]
    rootfs_guest: Option<String>,
    /// Environment variable `K=V` (repeatable).
    #[arg(long = "env", short = 'e')]
    env: Vec<String>,
    /// Working directory in the container.
    #[arg(long, default_value = "/")]
    cwd: String,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

pub fn run(cmd: AgentCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AgentCommand::Run(a) => run_process(a),
        AgentCommand::Shutdown(c) => {
            let mut client = AgentClient::connect(&c.uds, Duration::from_secs(c.timeout))?;
            client.call_ok(&Request::Shutdown)?;
            Ok(ExitCode::SUCCESS)
        }
        AgentCommand::Create(a) => create(a),
        AgentCommand::Start(a) => start(a),
        AgentCommand::Exec(a) => exec(a),
        AgentCommand::Kill(a) => {
            let signal = crate::oci::signal::parse(&a.signal)?;
            a.conn.client()?.call_ok(&Request::Signal {
                id: a.id,
                exec_id: a.exec_id,
                signal,
                all: a.all,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        AgentCommand::Wait(a) => {
            let status = wait(&mut a.conn.client()?, &a.id, a.exec_id)?;
            match status {
                ExitStatus::Exited(c) => println!("exited {c}"),
                ExitStatus::Signaled(s) => println!("signaled {s}"),
            }
            Ok(exit_code(status))
        }
        AgentCommand::Ps(a) => match a.conn.client()?.call(&Request::Ps { id: a.id })? {
            Response::Pids { pids } => {
                for p in pids {
                    println!("{p}");
                }
                Ok(ExitCode::SUCCESS)
            }
            other => bail!("unexpected reply to ps: {other:?}"),
        },
        AgentCommand::Stats(a) => match a.conn.client()?.call(&Request::Stats { id: a.id })? {
            Response::Stats(s) => {
                println!("{}", serde_json::to_string(&s)?);
                Ok(ExitCode::SUCCESS)
            }
            other => bail!("unexpected reply to stats: {other:?}"),
        },
        AgentCommand::Resize(a) => {
            a.conn.client()?.call_ok(&Request::ResizeTty {
                id: a.id,
                exec_id: a.exec_id,
                rows: a.rows,
                cols: a.cols,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        AgentCommand::Rm(a) => {
            a.conn.client()?.call_ok(&Request::RemoveContainer {
                id: a.id,
                force: a.force,
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

impl ConnArgs {
    fn client(&self) -> anyhow::Result<AgentClient> {
        Ok(AgentClient::connect(
            &self.uds,
            Duration::from_secs(self.timeout),
        )?)
    }
}

fn exit_code(status: ExitStatus) -> ExitCode {
    ExitCode::from(status.code().clamp(0, 255) as u8)
}

/// The OCI process for `opts`.
fn process_spec(opts: &ProcessOpts) -> anyhow::Result<oci_spec::runtime::Process> {
    let mut process = oci_spec::runtime::Spec::default()
        .process()
        .clone()
        .context("default spec has a process")?;
    let mut env = process.env().clone().unwrap_or_default();
    env.extend(opts.env.iter().cloned());
    process.set_args(Some(opts.command.clone()));
    process.set_env(Some(env));
    process.set_cwd(opts.cwd.clone().into());
    process.set_terminal(Some(opts.tty));
    Ok(process)
}

fn create(a: CreateArgs) -> anyhow::Result<ExitCode> {
    let mut client = a.conn.client()?;
    let mut spec = oci_spec::runtime::Spec::default();
    spec.set_process(Some(process_spec(&a.process)?));
    spec.set_hostname(Some("capsa".into()));
    let pid = match client.call(&Request::CreateContainer {
        id: a.id.clone(),
        spec: Box::new(spec),
        rootfs: RootfsSource::VirtioFs { tag: a.rootfs_fs },
        stdin: false,
    })? {
        Response::Started { pid } => pid,
        other => bail!("unexpected reply to create: {other:?}"),
    };
    if let Some((rows, cols)) = a.process.tty_size {
        client.call_ok(&Request::ResizeTty {
            id: a.id,
            exec_id: None,
            rows,
            cols,
        })?;
    }
    println!("{pid}");
    Ok(ExitCode::SUCCESS)
}

/// Copies `from` to `to` as it arrives, flushing each piece.
fn relay(mut from: UnixStream, mut to: impl Write) -> std::io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                to.write_all(&buf[..n])?;
                to.flush()?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Opens the output streams of a process (its terminal, or stdout and stderr) and relays
/// them to this process's stdout and stderr in threads.
fn attach_output(
    client: &AgentClient,
    id: &str,
    exec_id: Option<String>,
    tty: bool,
) -> anyhow::Result<Vec<std::thread::JoinHandle<std::io::Result<()>>>> {
    let open = |kind| {
        client.open_stream(&StreamHello {
            version: PROTOCOL_VERSION,
            id: id.to_string(),
            exec_id: exec_id.clone(),
            kind,
        })
    };
    Ok(if tty {
        let t = open(StreamKind::Tty)?;
        // Nothing to type: end the terminal's input direction, so that the agent closes
        // the connection once the process is gone.
        t.shutdown(std::net::Shutdown::Write)?;
        vec![std::thread::spawn(move || relay(t, std::io::stdout()))]
    } else {
        let out = open(StreamKind::Stdout)?;
        let err = open(StreamKind::Stderr)?;
        vec![
            std::thread::spawn(move || relay(out, std::io::stdout())),
            std::thread::spawn(move || relay(err, std::io::stderr())),
        ]
    })
}

fn join_all(threads: Vec<std::thread::JoinHandle<std::io::Result<()>>>) -> anyhow::Result<()> {
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("output relay panicked"))??;
    }
    Ok(())
}

fn start(a: StartArgs) -> anyhow::Result<ExitCode> {
    let mut client = a.conn.client()?;
    let relays = if a.attach {
        attach_output(&client, &a.id, None, a.tty)?
    } else {
        Vec::new()
    };
    client.call_ok(&Request::StartContainer {
        id: a.id.clone(),
        hook_state: None,
    })?;
    if !a.attach {
        return Ok(ExitCode::SUCCESS);
    }
    let status = wait(&mut client, &a.id, None)?;
    join_all(relays)?;
    Ok(exit_code(status))
}

fn exec(a: ExecArgs) -> anyhow::Result<ExitCode> {
    let mut client = a.conn.client()?;
    let exec_id = a
        .exec_id
        .clone()
        .unwrap_or_else(|| format!("exec-{}", std::process::id()));
    match client.call(&Request::Exec {
        id: a.id.clone(),
        exec_id: exec_id.clone(),
        process: Box::new(process_spec(&a.process)?),
        stdin: false,
    })? {
        Response::Started { .. } => {}
        other => bail!("unexpected reply to exec: {other:?}"),
    }
    let relays = attach_output(&client, &a.id, Some(exec_id.clone()), a.process.tty)?;
    if let Some((rows, cols)) = a.process.tty_size {
        client.call_ok(&Request::ResizeTty {
            id: a.id.clone(),
            exec_id: Some(exec_id.clone()),
            rows,
            cols,
        })?;
    }
    let status = wait(&mut client, &a.id, Some(exec_id))?;
    join_all(relays)?;
    Ok(exit_code(status))
}

fn wait(client: &mut AgentClient, id: &str, exec_id: Option<String>) -> anyhow::Result<ExitStatus> {
    match client.call(&Request::Wait {
        id: id.to_string(),
        exec_id,
        kill_on_hangup: false,
    })? {
        Response::Exited { status } => Ok(status),
        other => bail!("unexpected reply to wait: {other:?}"),
    }
}

fn rootfs_source(a: &RunArgs) -> anyhow::Result<RootfsSource> {
    Ok(if let Some(tag) = &a.rootfs_fs {
        RootfsSource::VirtioFs { tag: tag.clone() }
    } else if let Some(d) = &a.rootfs_disk {
        let (serial, fstype) = d.split_once(':').unwrap_or((d.as_str(), "ext4"));
        RootfsSource::Block {
            serial: serial.into(),
            fstype: fstype.into(),
            read_only: false,
        }
    } else if let Some(p) = &a.rootfs_guest {
        RootfsSource::GuestPath { path: p.clone() }
    } else {
        bail!("choose a root filesystem: --rootfs-fs, --rootfs-disk or --rootfs-guest")
    })
}

fn run_process(a: RunArgs) -> anyhow::Result<ExitCode> {
    let rootfs = rootfs_source(&a)?;
    let mut client = AgentClient::connect(&a.conn.uds, Duration::from_secs(a.conn.timeout))?;
    let mut spec = oci_spec::runtime::Spec::default();
    let mut process = spec
        .process()
        .clone()
        .context("default spec has a process")?;
    let mut env = process.env().clone().unwrap_or_default();
    env.extend(a.env.iter().cloned());
    process.set_args(Some(a.command.clone()));
    process.set_env(Some(env));
    process.set_cwd(a.cwd.clone().into());
    process.set_terminal(Some(false));
    spec.set_process(Some(process));
    spec.set_hostname(Some("capsa".into()));
    let id = format!("agent-run-{}", std::process::id());
    client.call(&Request::CreateContainer {
        id: id.clone(),
        spec: Box::new(spec),
        rootfs,
        stdin: false,
    })?;
    let stream = |kind| {
        client.open_stream(&StreamHello {
            version: PROTOCOL_VERSION,
            id: id.clone(),
            exec_id: None,
            kind,
        })
    };
    let out = stream(StreamKind::Stdout)?;
    let err = stream(StreamKind::Stderr)?;
    let t_out = std::thread::spawn(move || read_all(out));
    let t_err = std::thread::spawn(move || read_all(err));
    client.call_ok(&Request::StartContainer {
        id: id.clone(),
        hook_state: None,
    })?;
    let status = match client.call(&Request::Wait {
        id: id.clone(),
        exec_id: None,
        kill_on_hangup: true,
    })? {
        Response::Exited { status } => status,
        other => bail!("unexpected reply to wait: {other:?}"),
    };
    let out = t_out
        .join()
        .map_err(|_| anyhow::anyhow!("stdout reader panicked"))??;
    let err = t_err
        .join()
        .map_err(|_| anyhow::anyhow!("stderr reader panicked"))??;
    std::io::stdout().write_all(&out)?;
    std::io::stderr().write_all(&err)?;
    client.call_ok(&Request::RemoveContainer { id, force: false })?;
    Ok(ExitCode::from(status.code().clamp(0, 255) as u8))
}
