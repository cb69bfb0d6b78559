//! `capsa agent`: a host-side client for a VM booted with `capsa vm run --agent`. It runs one
//! process in a fresh container in the guest, relays its output and exits with its status.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use crate::agent::client::{read_all, AgentClient};
use crate::agent::protocol::{
    Request, Response, RootfsSource, StreamHello, StreamKind, PROTOCOL_VERSION,
};

#[derive(Subcommand)]
pub enum AgentCommand {
    /// Run a command in a new container in the guest and exit with its status.
    Run(RunArgs),
    /// Power the guest off.
    Shutdown(ConnArgs),
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
