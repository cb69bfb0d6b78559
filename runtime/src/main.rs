//! `capsa`: OCI runtime and micro-VMM in one binary.

mod agent;
mod agent_cmd;
mod cgroups;
mod check;
mod guest;
mod guest_root;
mod oci;
mod probe;
mod sandbox;
mod vm_cmd;

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "capsa",
    version,
    about = "VM-isolated OCI runtime and KVM micro-VMM"
)]
struct Cli {
    /// Log filter for stderr (tracing env-filter syntax); RUST_LOG also works.
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// runc's global options (OCI commands).
    #[command(flatten)]
    oci: oci::cli::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run virtual machines directly.
    #[command(subcommand)]
    Vm(vm_cmd::VmCommand),
    /// Report whether this host can run capsa, and how to fix what is missing.
    Check,
    /// Talk to the guest agent of a VM started with `capsa vm run --agent`.
    #[command(subcommand)]
    Agent(agent_cmd::AgentCommand),
    /// The runc-compatible OCI commands (create, start, state, kill, delete, ...).
    #[command(flatten)]
    Oci(oci::cli::OciCommand),
}

fn init_logging(level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("warn,boot_timer=info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    // Taken first so the boot timer measures from (nearly) process start.
    let start = Instant::now();
    // The same binary is the guest's init and its container helpers.
    if guest::is_guest_init() {
        guest::init::main();
    }
    match std::env::args().nth(1).as_deref() {
        Some("__container-init") => guest::container_init::init_main(),
        Some("__container-exec") => guest::container_init::exec_main(),
        Some("__cpu-state-check") => {
            let args: Vec<String> = std::env::args().skip(2).collect();
            return guest::cpu_state::main(&args);
        }
        _ => {}
    }
    let cli = Cli::parse();
    // OCI commands log as runc does (--log, --log-format).
    if let Command::Oci(cmd) = cli.command {
        return oci::main(cli.oci, cmd);
    }
    init_logging(cli.log_level.as_deref());
    let result = match cli.command {
        Command::Vm(cmd) => vm_cmd::run(cmd, start),
        Command::Check => check::run(),
        Command::Agent(cmd) => agent_cmd::run(cmd),
        Command::Oci(_) => unreachable!("handled above"),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("capsa: error: {}", error_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// One line for an error chain. Library errors already embed their cause in their text,
/// so a cause is appended only when it adds something.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_line_skips_repeated_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let e = anyhow::Error::new(io).context("opening x: gone");
        assert_eq!(error_line(&e), "opening x: gone");
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_line(&e), "outer: inner");
    }
}
