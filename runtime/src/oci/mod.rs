//! capsa as an OCI runtime with runc's command line, where every sandbox is a VM.
//!
//! Per container, under `--root/<id>/`: `state.json` ([`state::Record`]), `config.json`,
//! `ctl.sock` (the shim's control socket), and for a VM owner `vsock.sock` (the guest
//! agent), `shared/` (the virtio-fs share, see [`mounts`]), `console.log` (guest serial)
//! and `shim.log` (the shim's log when no `--log` was given).
//!
//! Processes: `create` validates the bundle and starts the shim ([`shim`]), which boots
//! the VM, creates the container through the guest agent and stays as the container's
//! host process; every other command is short-lived and talks to the shim's control
//! socket, the guest agent, or the cgroup files.

pub mod bundle;
pub mod cgroup;
pub mod cli;
pub mod commands;
pub mod control;
pub mod exec;
pub mod hooks;
pub mod log;
pub mod mounts;
pub mod relay;
pub mod shim;
pub mod signal;
pub mod state;
pub mod sys;
pub mod update;

use std::process::ExitCode;

use cli::{GlobalArgs, OciCommand};

/// One line for an error chain, without repeating causes already in the text.
fn error_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !line.contains(&c) {
            line = format!("{line}: {c}");
        }
    }
    line
}

/// Runs an OCI command (logging set up here, not by capsa's own `--log-level`).
pub fn main(g: GlobalArgs, cmd: OciCommand) -> ExitCode {
    match cmd {
        // The shim sets up its logging from the container's record.
        OciCommand::Shim(a) => shim::main(a),
        cmd => {
            log::init(g.log.as_deref(), g.log_format.unwrap_or_default(), g.debug);
            tracing::debug!(argv = ?std::env::args().collect::<Vec<_>>(), "capsa");
            let result = match cmd {
                OciCommand::Create(a) => commands::create(&g, &a),
                OciCommand::Start(a) => commands::start(&g, &a.id),
                OciCommand::Run(a) => commands::run(&g, &a),
                OciCommand::State(a) => commands::state(&g, &a.id),
                OciCommand::Kill(a) => commands::kill(&g, &a),
                OciCommand::Delete(a) => commands::delete(&g, &a),
                OciCommand::Exec(a) => exec::exec(&g, &a),
                OciCommand::Ps(a) => commands::ps(&g, &a),
                OciCommand::Pause(a) => commands::pause(&g, &a.id),
                OciCommand::Resume(a) => commands::resume(&g, &a.id),
                OciCommand::List(a) => commands::list(&g, &a),
                OciCommand::Spec(a) => commands::spec(&a),
                OciCommand::Features => commands::features(),
                OciCommand::Update(a) => update::update(&g, &a),
                OciCommand::Events(a) => update::events(&g, &a),
                OciCommand::ExecMonitor(a) => exec::monitor_main(a),
                OciCommand::Shim(_) => unreachable!("handled above"),
            };
            match result {
                Ok(code) => code,
                Err(e) => {
                    let msg = error_line(&e);
                    // Logged for --log readers (containerd reads the JSON log), and
                    // printed plainly on stderr, as runc does.
                    if g.log.is_some() {
                        tracing::error!("{msg}");
                    }
                    eprintln!("{msg}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
