//! Helpers shared by capsa's integration tests: run the real `capsa` binary with a deadline
//! and inspect what it printed.

#![allow(dead_code)]

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The capsa binary under test.
pub fn capsa_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_capsa"))
}

/// The probe guest ELF the build embedded.
pub fn probe_guest() -> PathBuf {
    PathBuf::from(env!("CAPSA_PROBE_GUEST"))
}

/// What a finished capsa run left behind.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Panics with the whole output unless `needle` is in stdout.
    pub fn assert_stdout_has(&self, needle: &str) {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}\n{self}"
        );
    }

    /// Panics with the whole output unless `needle` is in stderr.
    pub fn assert_stderr_has(&self, needle: &str) {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}\n{self}"
        );
    }

    /// The value of `key=` on the stdout line starting with `prefix`.
    pub fn field(&self, prefix: &str, key: &str) -> Option<String> {
        let line = self.stdout.lines().find(|l| l.starts_with(prefix))?;
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .map(String::from)
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Generous: the probe guest finishes in well under a second, but CI machines are shared
/// and slow, and PVM hosts emulate guest ring 0.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// Waits for `child` up to `deadline`, killing it (and failing the test) past that.
pub fn wait_with_deadline(mut child: Child, deadline: Duration) -> Output {
    let start = Instant::now();
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("waiting for capsa") {
            break st;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let st = child.wait().unwrap();
            let o = Output {
                status: st,
                stdout: t_out.join().unwrap(),
                stderr: t_err.join().unwrap(),
            };
            panic!("capsa did not finish within {deadline:?}\n{o}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

/// A `capsa` command with piped output and stdin from /dev/null.
pub fn capsa(args: &[&str]) -> Command {
    let mut c = Command::new(capsa_bin());
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("RUST_LOG");
    c
}

/// Runs `capsa args...` to completion.
pub fn run(args: &[&str]) -> Output {
    let child = capsa(args).spawn().expect("spawning capsa");
    wait_with_deadline(child, DEADLINE)
}

/// Boots the probe guest on scenario `name` with extra `capsa vm run` arguments.
pub fn probe(name: &str, extra: &[&str]) -> Output {
    let probe = probe_guest();
    let cmdline = format!("console=ttyS0 probe={name}");
    let mut args = vec![
        "vm",
        "run",
        "--kernel",
        probe.to_str().unwrap(),
        "--cmdline",
        &cmdline,
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// True when the host KVM is PVM (guest ring 0 emulated).
pub fn host_is_pvm() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}
