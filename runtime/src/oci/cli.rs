//! The runc-compatible command line: global options and one subcommand per OCI operation.
//!
//! Callers (podman's conmon, containerd's runc shim) put global options before the
//! subcommand and options before or after the container id; clap accepts both orders.
//! Options runc has that mean nothing for a VM (`--no-pivot`, `--no-new-keyring`,
//! `--preserve-fds`, ...) are accepted and ignored, so those callers keep working.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

/// Default state directory (`--root`).
pub const DEFAULT_ROOT: &str = "/run/capsa";

/// runc's global options, plus capsa's `--kernel`.
#[derive(Args, Debug, Clone, Default)]
pub struct GlobalArgs {
    /// Directory for the containers' state (runc: --root).
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Write log lines to FILE instead of stderr (OCI commands).
    #[arg(long, global = true, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// Format of the log lines: text or json (json lines as runc writes them).
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log debug messages.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Accepted for runc compatibility; systemd-style cgroupsPath values
    /// (`slice:prefix:name`) are mapped onto cgroupfs paths, no systemd unit is created.
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,
    /// Guest kernel (vmlinux from guest-kernel/build.sh). Default: $CAPSA_KERNEL, then
    /// `vmlinux` next to the capsa binary, then the newest guest-kernel build in
    /// ${CAPSA_CACHE:-$HOME/.cache/capsa}/kernel.
    #[arg(long, global = true, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Accepted for runc compatibility and ignored (`--rootless[=true|false|auto]`).
    #[arg(long, global = true, hide = true, value_name = "VALUE", num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    pub rootless: Option<String>,
    /// Accepted for runc compatibility and ignored.
    #[arg(long, global = true, hide = true, value_name = "PATH")]
    pub criu: Option<String>,
}

impl GlobalArgs {
    /// The state directory.
    pub fn root(&self) -> PathBuf {
        self.root.clone().unwrap_or_else(|| DEFAULT_ROOT.into())
    }
}

/// Log line formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// `time="..." level=... msg="..."`
    #[default]
    Text,
    /// `{"level":"...","msg":"...","time":"..."}`
    Json,
}

/// The OCI subcommands (flattened into capsa's own).
#[derive(Subcommand, Debug)]
pub enum OciCommand {
    /// Create a container: boot its VM and set the container up, without running its
    /// process.
    Create(CreateArgs),
    /// Run the process of a created container.
    Start(IdArg),
    /// Create and start a container; without --detach, wait for it and exit with its
    /// status.
    Run(RunArgs),
    /// Print the container's state as OCI state JSON.
    State(IdArg),
    /// Send a signal to the container's process (default SIGTERM).
    Kill(KillArgs),
    /// Remove a stopped container (with --force, a running one too).
    Delete(DeleteArgs),
    /// Run another process in a running container.
    Exec(ExecArgs),
    /// List the container's processes.
    Ps(PsArgs),
    /// Freeze the container's VM (its vCPU threads).
    Pause(IdArg),
    /// Thaw a paused container.
    Resume(IdArg),
    /// List the containers under --root.
    List(ListArgs),
    /// Write a default config.json into the bundle directory.
    Spec(SpecArgs),
    /// Print what this runtime supports, as runc's `features` JSON.
    Features,
    /// Change the container's resource limits.
    Update(UpdateArgs),
    /// Print the container's events (resource statistics, OOM kills) as JSON lines.
    Events(EventsArgs),
    /// Internal: the per-container host process (the pid in --pid-file).
    #[command(name = "__shim", hide = true)]
    Shim(ShimArgs),
    /// Internal: the host process of a detached exec.
    #[command(name = "__exec", hide = true)]
    ExecMonitor(ExecMonitorArgs),
}

/// A single container id.
#[derive(Args, Debug)]
pub struct IdArg {
    /// Container id.
    pub id: String,
}

/// `create` options.
#[derive(Args, Debug, Clone)]
pub struct CreateArgs {
    /// Container id.
    pub id: String,
    /// Bundle directory (default: the current directory).
    #[arg(long, short = 'b', value_name = "DIR")]
    pub bundle: Option<PathBuf>,
    /// File to write the pid of the container's host process to (written last).
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Unix socket to send the master end of the container's terminal to.
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// Accepted for runc compatibility (the guest always pivots).
    #[arg(long)]
    pub no_pivot: bool,
    /// Accepted for runc compatibility and ignored.
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Accepted for runc compatibility; extra fds are not passed into a VM.
    #[arg(long, value_name = "N")]
    pub preserve_fds: Option<u32>,
}

/// `run` options.
#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub create: CreateArgs,
    /// Return once the container runs instead of waiting for it.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Accepted for runc compatibility and ignored.
    #[arg(long)]
    pub keep: bool,
}

/// `kill` options.
#[derive(Args, Debug)]
pub struct KillArgs {
    /// Container id.
    pub id: String,
    /// Signal name (TERM, SIGTERM) or number.
    #[arg(default_value = "SIGTERM")]
    pub signal: String,
    /// Signal every process of the container.
    #[arg(long, short = 'a')]
    pub all: bool,
}

/// `delete` options.
#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// Container id.
    pub id: String,
    /// Kill the container first if it still runs.
    #[arg(long, short = 'f')]
    pub force: bool,
}

/// `exec` options.
#[derive(Args, Debug, Clone)]
pub struct ExecArgs {
    /// Container id.
    pub id: String,
    /// The command and its arguments (unless --process is given).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
    /// process.json of the new process (OCI process object).
    #[arg(long, short = 'p', value_name = "FILE")]
    pub process: Option<PathBuf>,
    /// Return once the process runs; its host process keeps the stdio.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Give the process a terminal.
    #[arg(long, short = 't')]
    pub tty: bool,
    /// Unix socket to send the master end of the terminal to.
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// File to write the pid of the process's host process to.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Environment variable `K=V` (repeatable).
    #[arg(long, short = 'e', value_name = "K=V")]
    pub env: Vec<String>,
    /// Working directory in the container.
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// `UID[:GID]` to run as.
    #[arg(long, short = 'u', value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// Additional group ids (repeatable).
    #[arg(long = "additional-gids", short = 'g', value_name = "GID")]
    pub additional_gids: Vec<u32>,
    /// Accepted for runc compatibility and ignored.
    #[arg(long, value_name = "N")]
    pub preserve_fds: Option<u32>,
    /// Accepted for runc compatibility and ignored.
    #[arg(long)]
    pub no_new_privs: bool,
    /// Accepted for runc compatibility and ignored.
    #[arg(long, value_name = "PROFILE")]
    pub apparmor: Option<String>,
    /// Accepted for runc compatibility and ignored.
    #[arg(long, value_name = "LABEL")]
    pub process_label: Option<String>,
    /// Accepted for runc compatibility and ignored.
    #[arg(long, short = 'c', value_name = "CAP")]
    pub cap: Vec<String>,
}

/// `ps` output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum PsFormat {
    /// A table of the guest processes.
    #[default]
    Table,
    /// A JSON array of the container's pids (in the guest, see `ps`).
    Json,
}

/// `ps` options.
#[derive(Args, Debug)]
pub struct PsArgs {
    /// Container id.
    pub id: String,
    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value = "table")]
    pub format: PsFormat,
    /// Accepted for runc compatibility (ps options); ignored.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub ps_args: Vec<String>,
}

/// `update` options (runc's): `--resources FILE` (linux.resources JSON, `-` for stdin)
/// and/or single limits; a flag overrides the file's value.
#[derive(Args, Debug, Default)]
pub struct UpdateArgs {
    /// Container id.
    pub id: String,
    /// JSON file with the new linux.resources (`-`: read it from stdin).
    #[arg(long, short = 'r', value_name = "FILE")]
    pub resources: Option<PathBuf>,
    /// Memory limit (bytes, or with a k/m/g suffix; -1: none).
    #[arg(long, short = 'm', value_name = "BYTES", allow_hyphen_values = true)]
    pub memory: Option<String>,
    /// Memory soft limit (memory.low in the guest).
    #[arg(long, value_name = "BYTES", allow_hyphen_values = true)]
    pub memory_reservation: Option<String>,
    /// Accepted for runc compatibility: the guest has no swap.
    #[arg(long, value_name = "BYTES", allow_hyphen_values = true)]
    pub memory_swap: Option<String>,
    /// CPU CFS period, microseconds.
    #[arg(long, value_name = "USEC")]
    pub cpu_period: Option<u64>,
    /// CPU CFS quota, microseconds per period (-1: none).
    #[arg(long, value_name = "USEC", allow_hyphen_values = true)]
    pub cpu_quota: Option<i64>,
    /// CPU shares (relative weight).
    #[arg(long, value_name = "N")]
    pub cpu_share: Option<u64>,
    /// Host CPUs the vCPU threads may run on.
    #[arg(long, value_name = "LIST")]
    pub cpuset_cpus: Option<String>,
    /// Host memory nodes the vCPU threads may use.
    #[arg(long, value_name = "LIST")]
    pub cpuset_mems: Option<String>,
    /// Maximum number of processes (0 or -1: none).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
    /// Accepted for runc compatibility; not supported (no blkio limits in the guest).
    #[arg(long, value_name = "N", hide = true)]
    pub blkio_weight: Option<u16>,
}

/// `events` options.
#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Container id.
    pub id: String,
    /// Print the statistics once and exit.
    #[arg(long)]
    pub stats: bool,
    /// Time between statistics (e.g. 5s, 500ms, 1m; a plain number is seconds).
    #[arg(long, default_value = "5s", value_name = "DURATION")]
    pub interval: String,
}

/// `list` output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum ListFormat {
    /// Aligned columns.
    #[default]
    Table,
    /// A JSON array of states.
    Json,
}

/// `list` options.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value = "table")]
    pub format: ListFormat,
    /// Print the ids only.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// `spec` options.
#[derive(Args, Debug)]
pub struct SpecArgs {
    /// Bundle directory to write config.json into (default: the current directory).
    #[arg(long, short = 'b', value_name = "DIR")]
    pub bundle: Option<PathBuf>,
}

/// Arguments of the internal `__shim` process.
#[derive(Args, Debug)]
pub struct ShimArgs {
    /// State directory of the container.
    #[arg(long)]
    pub state_dir: PathBuf,
    /// Inherited fd on which readiness is reported.
    #[arg(long)]
    pub ready_fd: i32,
}

/// Arguments of the internal `__exec` process.
#[derive(Args, Debug)]
pub struct ExecMonitorArgs {
    /// JSON file with the exec request (removed once read).
    #[arg(long)]
    pub config: PathBuf,
    /// Inherited fd on which readiness is reported.
    #[arg(long)]
    pub ready_fd: i32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct TestCli {
        #[command(flatten)]
        global: GlobalArgs,
        #[command(subcommand)]
        cmd: OciCommand,
    }

    fn parse(args: &[&str]) -> Result<TestCli, clap::Error> {
        TestCli::try_parse_from(std::iter::once("capsa").chain(args.iter().copied()))
    }

    #[test]
    fn containerd_style_create() {
        let c = parse(&[
            "--root",
            "/r",
            "--log",
            "/b/log.json",
            "--log-format",
            "json",
            "create",
            "--bundle",
            "/b",
            "--pid-file",
            "/b/init.pid",
            "c1",
        ])
        .unwrap();
        assert_eq!(c.global.root(), PathBuf::from("/r"));
        assert_eq!(c.global.log_format, Some(LogFormat::Json));
        let OciCommand::Create(a) = c.cmd else {
            panic!()
        };
        assert_eq!(a.id, "c1");
        assert_eq!(a.bundle, Some("/b".into()));
        assert_eq!(a.pid_file, Some("/b/init.pid".into()));
    }

    #[test]
    fn flags_after_the_id_and_globals_after_the_subcommand() {
        let c = parse(&["create", "c1", "--bundle", "/b", "--no-pivot", "--debug"]).unwrap();
        assert!(c.global.debug);
        let OciCommand::Create(a) = c.cmd else {
            panic!()
        };
        assert_eq!((a.id.as_str(), a.no_pivot), ("c1", true));
        assert_eq!(
            parse(&["state", "x"]).unwrap().global.root(),
            PathBuf::from(DEFAULT_ROOT)
        );
    }

    #[test]
    fn kill_forms() {
        let OciCommand::Kill(k) = parse(&["kill", "c1"]).unwrap().cmd else {
            panic!()
        };
        assert_eq!((k.signal.as_str(), k.all), ("SIGTERM", false));
        let OciCommand::Kill(k) = parse(&["kill", "--all", "c1", "9"]).unwrap().cmd else {
            panic!()
        };
        assert_eq!((k.id.as_str(), k.signal.as_str(), k.all), ("c1", "9", true));
        let OciCommand::Kill(k) = parse(&["kill", "c1", "KILL", "-a"]).unwrap().cmd else {
            panic!()
        };
        assert!(k.all);
    }

    #[test]
    fn exec_forms() {
        let OciCommand::Exec(e) = parse(&[
            "exec",
            "--process",
            "/p.json",
            "--detach",
            "--pid-file",
            "/x.pid",
            "c1",
        ])
        .unwrap()
        .cmd
        else {
            panic!()
        };
        assert_eq!(e.process, Some("/p.json".into()));
        assert!(e.detach && e.command.is_empty());
        // Options of the command itself stay with the command.
        let OciCommand::Exec(e) = parse(&["exec", "-t", "--env", "A=1", "c1", "sh", "-c", "ls -l"])
            .unwrap()
            .cmd
        else {
            panic!()
        };
        assert!(e.tty);
        assert_eq!(e.env, vec!["A=1"]);
        assert_eq!(e.command, vec!["sh", "-c", "ls -l"]);
    }

    #[test]
    fn delete_ps_list() {
        let OciCommand::Delete(d) = parse(&["delete", "c1", "--force"]).unwrap().cmd else {
            panic!()
        };
        assert!(d.force);
        let OciCommand::Ps(p) = parse(&["ps", "--format", "json", "c1"]).unwrap().cmd else {
            panic!()
        };
        assert_eq!(p.format, PsFormat::Json);
        let OciCommand::List(l) = parse(&["list", "-q"]).unwrap().cmd else {
            panic!()
        };
        assert!(l.quiet);
        assert!(parse(&["state"]).is_err(), "the id is required");
        assert!(parse(&["ps", "--format", "yaml", "c1"]).is_err());
    }

    #[test]
    fn update_and_events() {
        // As containerd's shim calls it: resources JSON on stdin.
        let OciCommand::Update(u) = parse(&["update", "--resources", "-", "c1"]).unwrap().cmd
        else {
            panic!()
        };
        assert_eq!((u.id.as_str(), u.resources), ("c1", Some("-".into())));
        let OciCommand::Update(u) = parse(&[
            "update",
            "c1",
            "--memory",
            "256m",
            "--cpu-quota",
            "-1",
            "--pids-limit",
            "10",
        ])
        .unwrap()
        .cmd
        else {
            panic!()
        };
        assert_eq!(u.memory.as_deref(), Some("256m"));
        assert_eq!((u.cpu_quota, u.pids_limit), (Some(-1), Some(10)));
        let OciCommand::Events(e) = parse(&["events", "--stats", "c1"]).unwrap().cmd else {
            panic!()
        };
        assert!(e.stats);
        assert_eq!(e.interval, "5s");
        let OciCommand::Events(e) = parse(&["events", "c1", "--interval", "1s"]).unwrap().cmd
        else {
            panic!()
        };
        assert!(!e.stats);
        assert_eq!(e.interval, "1s");
    }
}
