//! `exec`: another process in a running container. The host process standing for it is
//! either `capsa exec` itself (foreground) or, with `--detach`, a `capsa __exec` process
//! that `exec` starts in a new session and leaves to the caller's subreaper. Either way
//! it holds the caller's stdio, relays the guest process's streams, forwards the signals
//! it gets, and exits with the guest process's status. SIGKILL cannot be forwarded, but
//! it still reaches the guest process: the host process waits for it on an agent
//! connection marked `kill_on_hangup`, and when that connection closes (the host process
//! died) before the process exited, the agent kills the process with SIGKILL.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use oci_spec::runtime::Process;
use serde::{Deserialize, Serialize};

use super::cli::{ExecArgs, ExecMonitorArgs, GlobalArgs};
use super::relay::{self, Mode};
use super::shim::FORWARDED;
use super::state::{self, StateDir, Status};
use super::sys;
use crate::agent::client::AgentClient;
use crate::agent::protocol::{Request, Response};

/// What the host process of an exec needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecConfig {
    /// The VM's agent socket.
    pub uds: PathBuf,
    /// Container id.
    pub id: String,
    /// Process id in the agent.
    pub exec_id: String,
    /// The process.
    pub process: Box<Process>,
    /// The console socket, if the process has a terminal.
    pub console_socket: Option<PathBuf>,
}

/// Errors of the exec host process.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The agent refused or failed.
    #[error("exec in container {id}: {source}")]
    Agent {
        /// Container id.
        id: String,
        /// Why.
        source: crate::agent::client::ClientError,
    },
    /// Stdio.
    #[error(transparent)]
    Relay(#[from] relay::RelayError),
}

/// Parses `UID[:GID]`.
fn parse_user(s: &str) -> anyhow::Result<(u32, Option<u32>)> {
    let (u, g) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    let uid = u
        .parse()
        .with_context(|| format!("--user {s:?}: expected UID[:GID] as numbers"))?;
    let gid = g
        .map(|g| g.parse())
        .transpose()
        .with_context(|| format!("--user {s:?}: expected UID[:GID] as numbers"))?;
    Ok((uid, gid))
}

/// The process to exec: `--process` JSON, or the container's own process with the
/// command line's args and overrides.
pub fn build_process(base: Option<&Process>, a: &ExecArgs) -> anyhow::Result<Process> {
    let mut p = match &a.process {
        Some(f) => {
            let data = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
            serde_json::from_slice::<Process>(&data)
                .with_context(|| format!("{}: malformed process JSON", f.display()))?
        }
        None => {
            if a.command.is_empty() {
                bail!("exec: no command given (pass the command or --process FILE)");
            }
            let mut p = base.cloned().unwrap_or_default();
            p.set_args(Some(a.command.clone()));
            p.set_terminal(Some(false));
            p
        }
    };
    if p.args().as_ref().is_none_or(|a| a.is_empty()) {
        bail!("exec: the process has no args");
    }
    if a.tty {
        p.set_terminal(Some(true));
    }
    if !a.env.is_empty() {
        let mut env = p.env().clone().unwrap_or_default();
        for kv in &a.env {
            let key = kv.split('=').next().unwrap_or("");
            env.retain(|e| e.split('=').next() != Some(key));
            env.push(kv.clone());
        }
        p.set_env(Some(env));
    }
    if let Some(cwd) = &a.cwd {
        p.set_cwd(cwd.into());
    }
    if let Some(u) = &a.user {
        let (uid, gid) = parse_user(u)?;
        let mut user = p.user().clone();
        user.set_uid(uid);
        if let Some(g) = gid {
            user.set_gid(g);
        }
        p.set_user(user);
    }
    if !a.additional_gids.is_empty() {
        let mut user = p.user().clone();
        user.set_additional_gids(Some(a.additional_gids.clone()));
        p.set_user(user);
    }
    Ok(p)
}

/// `capsa exec`.
pub fn exec(g: &GlobalArgs, a: &ExecArgs) -> anyhow::Result<ExitCode> {
    let dir = StateDir::open(&g.root(), &a.id)?;
    let rec = dir.read()?;
    match rec.effective_status() {
        Status::Running => {}
        s => bail!("cannot exec in a {s} container"),
    }
    let spec: oci_spec::runtime::Spec =
        serde_json::from_slice(&std::fs::read(dir.file("config.json"))?)?;
    let process = build_process(spec.process().as_ref(), a)?;
    let tty = process.terminal().unwrap_or(false);
    let console_socket = a
        .console_socket
        .as_ref()
        .map(std::path::absolute)
        .transpose()?;
    if tty && console_socket.is_none() && a.detach {
        bail!("cannot allocate a terminal for a detached exec without --console-socket");
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let cfg = ExecConfig {
        uds: rec.vm_dir.join("vsock.sock"),
        id: a.id.clone(),
        exec_id: format!("exec-{}-{}", std::process::id(), nanos % 1_000_000_000),
        process: Box::new(process),
        console_socket,
    };
    if !a.detach {
        if let Some(p) = &a.pid_file {
            write_pid_file(p, std::process::id() as i32)?;
        }
        let raw = (tty && cfg.console_socket.is_none() && sys::is_tty(0))
            .then(|| sys::set_raw(0).ok())
            .flatten();
        let code = run(&cfg, None);
        if let Some(t) = raw {
            sys::restore_termios(0, &t);
        }
        return Ok(ExitCode::from(code?.clamp(0, 255) as u8));
    }
    let file = dir.file(&format!("{}.json", cfg.exec_id));
    state::write_atomic(&file, &serde_json::to_vec(&cfg)?)?;
    let mut args = vec![
        "__exec".to_string(),
        "--config".into(),
        file.display().to_string(),
    ];
    if let Some(l) = &g.log {
        args.extend([
            "--log".into(),
            std::path::absolute(l)?.display().to_string(),
        ]);
        if g.log_format == Some(super::cli::LogFormat::Json) {
            args.extend(["--log-format".into(), "json".into()]);
        }
    }
    if g.debug {
        args.push("--debug".into());
    }
    let (child, msg) = super::commands::spawn_helper(&args)?;
    if let Err(e) = msg {
        let _ = std::fs::remove_file(&file);
        bail!("{e}");
    }
    if let Some(p) = &a.pid_file {
        write_pid_file(p, child as i32)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes a pid file atomically (temp file + rename), as runc does.
pub fn write_pid_file(path: &Path, pid: i32) -> anyhow::Result<()> {
    let path = std::path::absolute(path)?;
    state::write_atomic(&path, pid.to_string().as_bytes())
        .with_context(|| format!("writing the pid file {}", path.display()))
}

/// `capsa __exec`: the detached exec's host process.
pub fn monitor_main(a: ExecMonitorArgs) -> ! {
    use std::os::fd::FromRawFd;
    // SAFETY: `exec` passed this fd for us alone.
    let ready = unsafe { File::from_raw_fd(a.ready_fd) };
    // SAFETY: FD_CLOEXEC on the fd just taken over.
    unsafe { libc::fcntl(a.ready_fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    let mut ready = Some(ready);
    let cfg = std::fs::read(&a.config)
        .map_err(|e| e.to_string())
        .and_then(|d| serde_json::from_slice::<ExecConfig>(&d).map_err(|e| e.to_string()));
    let _ = std::fs::remove_file(&a.config);
    let code = match cfg {
        Ok(cfg) => match run(&cfg, Some(&mut ready)) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("{e}");
                report(&mut ready, Err(&e.to_string()));
                1
            }
        },
        Err(e) => {
            report(&mut ready, Err(&format!("{}: {e}", a.config.display())));
            1
        }
    };
    std::process::exit(code.clamp(0, 255))
}

fn report(ready: &mut Option<File>, r: Result<(), &str>) {
    if let Some(mut f) = ready.take() {
        use std::io::Write;
        let line = match r {
            Ok(()) => "ok\n".to_string(),
            Err(e) => format!("error {}\n", e.replace('\n', " ")),
        };
        let _ = f.write_all(line.as_bytes());
    }
}

/// Runs the exec: starts the process, relays its stdio, reports readiness, forwards
/// signals, and returns its exit code.
fn run(cfg: &ExecConfig, ready: Option<&mut Option<File>>) -> Result<i32, ExecError> {
    let mut sigs = FORWARDED.to_vec();
    sigs.push(libc::SIGWINCH);
    // Before any thread: only the signal thread receives these.
    let _ = sys::block_signals(&sigs);
    let agent_err = |source| ExecError::Agent {
        id: cfg.id.clone(),
        source,
    };
    let mut client = AgentClient::connect(&cfg.uds, Duration::from_secs(60)).map_err(agent_err)?;
    let tty = cfg.process.terminal().unwrap_or(false);
    let mode = match (&cfg.console_socket, tty) {
        (_, false) => Mode::Pipes,
        (Some(s), true) => Mode::Console(s.clone()),
        (None, true) => Mode::StdioTty,
    };
    client
        .call(&Request::Exec {
            id: cfg.id.clone(),
            exec_id: cfg.exec_id.clone(),
            process: cfg.process.clone(),
            stdin: !tty,
        })
        .map_err(agent_err)?;
    let relays = relay::attach(&client, &cfg.id, Some(&cfg.exec_id), &mode, !tty)?;
    if let Some((rows, cols)) = relays.winsize() {
        let _ = client.call(&Request::ResizeTty {
            id: cfg.id.clone(),
            exec_id: Some(cfg.exec_id.clone()),
            rows,
            cols,
        });
    }
    if let Some(r) = ready {
        report(r, Ok(()));
    }
    let relays = Arc::new(relays);
    let client = Arc::new(Mutex::new(client));
    {
        let (client, relays, cfg) = (client.clone(), relays.clone(), cfg.clone());
        std::thread::spawn(move || {
            let set = sys::sigset(&sigs);
            loop {
                let sig = sys::sigwait(&set);
                let mut c = client.lock().unwrap_or_else(|e| e.into_inner());
                let req = if sig == libc::SIGWINCH {
                    let Some((rows, cols)) = relays.winsize() else {
                        continue;
                    };
                    Request::ResizeTty {
                        id: cfg.id.clone(),
                        exec_id: Some(cfg.exec_id.clone()),
                        rows,
                        cols,
                    }
                } else {
                    Request::Signal {
                        id: cfg.id.clone(),
                        exec_id: Some(cfg.exec_id.clone()),
                        signal: sig,
                        all: false,
                    }
                };
                let _ = c.call(&req);
            }
        });
    }
    let status = AgentClient::connect(&cfg.uds, Duration::from_secs(60)).and_then(|mut c| {
        c.call(&Request::Wait {
            id: cfg.id.clone(),
            exec_id: Some(cfg.exec_id.clone()),
            kill_on_hangup: true,
        })
    });
    let code = match status {
        Ok(Response::Exited { status }) => status.code(),
        Ok(other) => {
            tracing::error!("unexpected reply to wait: {other:?}");
            128 + libc::SIGKILL
        }
        Err(e) => {
            tracing::error!("lost the guest agent while waiting: {e}");
            128 + libc::SIGKILL
        }
    };
    relays.wait_outputs(Duration::from_secs(5));
    Ok(code)
}

/// Reads a helper's readiness line from `r` (until EOF).
pub fn read_ready(mut r: File) -> Result<(), String> {
    let mut s = String::new();
    let _ = r.read_to_string(&mut s);
    let line = s.lines().next().unwrap_or("");
    if line == "ok" {
        Ok(())
    } else if let Some(e) = line.strip_prefix("error ") {
        Err(e.to_string())
    } else {
        Err("the helper process exited before it was ready".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: ExecArgs,
    }

    fn args(v: &[&str]) -> ExecArgs {
        T::try_parse_from(std::iter::once("exec").chain(v.iter().copied()))
            .unwrap()
            .a
    }

    #[test]
    fn inline_process_inherits_the_container_process() {
        let mut base = Process::default();
        base.set_env(Some(vec!["PATH=/bin".into(), "A=1".into()]));
        base.set_terminal(Some(true));
        let p = build_process(
            Some(&base),
            &args(&[
                "-e", "A=2", "--cwd", "/tmp", "-u", "1000:100", "c1", "ls", "-l",
            ]),
        )
        .unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &vec!["ls", "-l"]);
        assert_eq!(p.env().as_ref().unwrap(), &vec!["PATH=/bin", "A=2"]);
        assert_eq!(p.cwd(), Path::new("/tmp"));
        assert_eq!((p.user().uid(), p.user().gid()), (1000, 100));
        assert_eq!(p.terminal(), Some(false), "no terminal unless --tty");
        let p = build_process(Some(&base), &args(&["-t", "c1", "sh"])).unwrap();
        assert_eq!(p.terminal(), Some(true));
        assert!(build_process(Some(&base), &args(&["c1"])).is_err());
        assert!(build_process(Some(&base), &args(&["-u", "bob", "c1", "sh"])).is_err());
    }

    #[test]
    fn process_file() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("p.json");
        std::fs::write(
            &f,
            r#"{"args": ["echo", "hi"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "terminal": true}"#,
        )
        .unwrap();
        let p = build_process(None, &args(&["--process", f.to_str().unwrap(), "c1"])).unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &vec!["echo", "hi"]);
        assert_eq!(p.terminal(), Some(true));
        std::fs::write(&f, "{").unwrap();
        let e = build_process(None, &args(&["--process", f.to_str().unwrap(), "c1"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("malformed process JSON"), "{e}");
    }

    #[test]
    fn ready_lines() {
        let (r, w) = sys::pipe().unwrap();
        let mut w = File::from(w);
        std::io::Write::write_all(&mut w, b"ok\n").unwrap();
        drop(w);
        assert!(read_ready(File::from(r)).is_ok());
        let (r, w) = sys::pipe().unwrap();
        let mut w = File::from(w);
        std::io::Write::write_all(&mut w, b"error no such thing\n").unwrap();
        drop(w);
        assert_eq!(read_ready(File::from(r)).unwrap_err(), "no such thing");
        let (r, w) = sys::pipe().unwrap();
        drop(w);
        assert!(read_ready(File::from(r)).unwrap_err().contains("exited"));
    }
}
