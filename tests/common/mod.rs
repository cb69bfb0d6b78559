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

/// Reads what is left of a child's pipe on a thread; empty if the caller took the pipe
/// (to follow it line by line) or it was never piped.
fn collect<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_string(&mut s);
        }
        s
    })
}

/// Waits for `child` up to `deadline`, killing it (and failing the test) past that.
pub fn wait_with_deadline(mut child: Child, deadline: Duration) -> Output {
    let start = Instant::now();
    let t_out = collect(child.stdout.take());
    let t_err = collect(child.stderr.take());
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

/// Boots the probe guest on scenario `name` with `params` appended to its command line
/// (e.g. `"blk.write=0:8:1"`) and extra `capsa vm run` arguments.
pub fn probe_cmdline(name: &str, params: &str, extra: &[&str]) -> Output {
    let probe = probe_guest();
    let cmdline = format!("console=ttyS0 probe={name} {params}");
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

impl Output {
    /// Panics with the whole output unless the probe reported PASS for `scenario` and
    /// capsa exited 0.
    pub fn assert_probe_pass(&self, scenario: &str) {
        self.assert_stdout_has(&format!("PROBE-RESULT: PASS {scenario}"));
        assert_eq!(self.code(), Some(0), "{self}");
    }

    /// The value of `key=` on the line starting with `prefix`, or a panic with the output.
    pub fn expect_field(&self, prefix: &str, key: &str) -> String {
        self.field(prefix, key)
            .unwrap_or_else(|| panic!("no {key}= on a line starting {prefix:?}\n{self}"))
    }
}

/// FNV-1a 64, as the probe guest computes it (tools/probe-guest/src/check.rs).
pub fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The probe guest's test pattern (`check::pattern_word`): `len` bytes of the stream for
/// `seed` starting at stream offset `off` (a multiple of 8).
pub fn probe_pattern(seed: u64, off: u64, len: usize) -> Vec<u8> {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    assert_eq!(off % 8, 0);
    let words = len.div_ceil(8) as u64;
    let mut v: Vec<u8> = (0..words)
        .flat_map(|w| mix((off / 8 + w) ^ seed.wrapping_mul(0xd6e8_feb8_6659_fd93)).to_le_bytes())
        .collect();
    v.truncate(len);
    v
}

/// Deterministic pseudo-random bytes (xorshift64*), independent of the probe's pattern.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(len);
    v
}
