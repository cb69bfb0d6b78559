//! `bench compare`: capsa side by side with its peers, in one invocation, interleaved run by
//! run (capsa, then each peer, then capsa again, ...), after one untimed warm-up run each.
//!
//! Pairs:
//! - `probe`: the probe guest (one ELF file) booted by `capsa vm run --kernel` and by QEMU
//!   `-M microvm` direct kernel boot (PVH entry) with `-accel kvm`.
//! - `linux`: capsa's guest kernel to agent-ready (`capsa vm run --agent`). QEMU is tried
//!   once on the same vmlinux; its answer is recorded (see [`qemu_linux_note`]).
//! - `container`: `capsa run` of a busybox bundle vs `runc run` and `crun run`.
//!
//! How each figure is observed (the same way for every peer):
//! - Wall times are taken by this program from just before `spawn` of the peer.
//! - First guest instruction / boot timer: the probe guest's first instructions write
//!   `BOOT_TIMER_ENTRY` (1) to port 0x440, and it writes `BOOT_TIMER_MAGIC` (123) on
//!   reaching ring 3. capsa logs each write on stderr at once ("guest entry: ...", "guest
//!   boot timer: ..."); QEMU gets an `isa-debugcon` on port 0x440 whose chardev is its
//!   stdout, so each byte arrives on a pipe. This program timestamps the arrival of the
//!   line or byte. capsa's own reading (since its `main`) is recorded too.
//! - Exit: `wait4` returns. Peak RSS: `ru_maxrss` from `wait4`.
//! - Footprint (extra untimed runs): at the boot-timer write the peer is stopped
//!   (SIGSTOP); `/proc/PID/smaps` gives the RSS of the guest-RAM mapping (the anonymous
//!   mapping of the guest memory size) = guest memory touched, `/proc/PID/maps` the
//!   executable files mapped (binary + shared libraries); then SIGCONT.
//! - Threads created: one extra run under `strace -f -e trace=clone,clone3,fork,vfork`,
//!   counting calls with CLONE_THREAD (threads) and without (processes).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::Serialize;

use crate::plot;
use crate::stats::Summary;

/// Marker bytes on the boot-timer port (devices/src/abi.rs).
const BOOT_TIMER_ENTRY: u8 = 1;
const BOOT_TIMER_MAGIC: u8 = 123;

// ------------------------------------------------------------------------------------
// Options

#[derive(Debug, Clone, PartialEq)]
pub struct Opts {
    pub runs: usize,
    pub linux_runs: Option<usize>,
    pub capsa: PathBuf,
    pub qemu: String,
    pub runc: String,
    pub crun: String,
    pub strace: String,
    pub probe: Option<PathBuf>,
    pub kernel: Option<PathBuf>,
    pub bundle: Option<PathBuf>,
    pub accel: Accel,
    pub mem_mib: u64,
    pub pairs: BTreeSet<String>,
    pub out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM, falling back to TCG (labelled as such) if QEMU cannot use KVM here.
    Auto,
    Kvm,
    Tcg,
}

const ALL_PAIRS: [&str; 3] = ["probe", "linux", "container"];

pub const USAGE: &str =
    "usage: bench compare [--runs N] [--linux-runs N] [--pairs probe,linux,container]
       [--capsa PATH] [--qemu PATH] [--runc PATH] [--crun PATH] [--strace PATH]
       [--probe PATH] [--kernel VMLINUX] [--bundle DIR] [--accel auto|kvm|tcg]
       [--mem-mib N] [--out DIR]";

/// Parses `bench compare`'s arguments (after the word `compare`).
pub fn parse_opts(args: &[String], default_capsa: PathBuf) -> anyhow::Result<Opts> {
    let mut o = Opts {
        runs: 10,
        linux_runs: None,
        capsa: default_capsa,
        qemu: "qemu-system-x86_64".into(),
        runc: "runc".into(),
        crun: "crun".into(),
        strace: "strace".into(),
        probe: None,
        kernel: None,
        bundle: None,
        accel: Accel::Auto,
        mem_mib: 128,
        pairs: ALL_PAIRS.iter().map(|s| s.to_string()).collect(),
        out: PathBuf::from("target/bench"),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let val = it
            .next()
            .ok_or_else(|| anyhow!("{flag} needs a value\n{USAGE}"))?;
        let num = |v: &str| -> anyhow::Result<usize> {
            v.parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| anyhow!("{flag}: expected a positive number, got {v:?}"))
        };
        match flag.as_str() {
            "--runs" => o.runs = num(val)?,
            "--linux-runs" => o.linux_runs = Some(num(val)?),
            "--capsa" => o.capsa = val.into(),
            "--qemu" => o.qemu = val.clone(),
            "--runc" => o.runc = val.clone(),
            "--crun" => o.crun = val.clone(),
            "--strace" => o.strace = val.clone(),
            "--probe" => o.probe = Some(val.into()),
            "--kernel" => o.kernel = Some(val.into()),
            "--bundle" => o.bundle = Some(val.into()),
            "--mem-mib" => o.mem_mib = num(val)? as u64,
            "--out" => o.out = val.into(),
            "--accel" => {
                o.accel = match val.as_str() {
                    "auto" => Accel::Auto,
                    "kvm" => Accel::Kvm,
                    "tcg" => Accel::Tcg,
                    _ => bail!("--accel: expected auto, kvm or tcg, got {val:?}"),
                }
            }
            "--pairs" => {
                o.pairs = val.split(',').map(str::to_string).collect();
                if let Some(bad) = o.pairs.iter().find(|p| !ALL_PAIRS.contains(&p.as_str())) {
                    bail!("--pairs: unknown pair {bad:?} (expected probe, linux, container)");
                }
            }
            _ => bail!("unknown option {flag}\n{USAGE}"),
        }
    }
    Ok(o)
}

// ------------------------------------------------------------------------------------
// Finding programs

/// Debian package that provides a peer program, for the error message.
fn package_of(name: &str) -> &'static str {
    match name {
        "qemu-system-x86_64" => "qemu-system-x86",
        "runc" => "runc",
        "crun" => "crun",
        "strace" => "strace",
        _ => "?",
    }
}

/// A program named on the command line: a path (must exist) or a name looked up in `path`
/// (a PATH-style list).
pub fn resolve_program(name: &str, path: Option<&std::ffi::OsStr>) -> anyhow::Result<PathBuf> {
    let is_exe = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return if is_exe(&p) {
            Ok(p)
        } else {
            Err(anyhow!("{name}: no such executable"))
        };
    }
    if let Some(path) = path {
        for dir in std::env::split_paths(path) {
            let p = dir.join(name);
            if is_exe(&p) {
                return Ok(p);
            }
        }
    }
    Err(anyhow!(
        "{name} not found in PATH (apt-get install {}), or pass its path",
        package_of(name)
    ))
}

fn find(name: &str) -> anyhow::Result<PathBuf> {
    resolve_program(name, std::env::var_os("PATH").as_deref())
}

// ------------------------------------------------------------------------------------
// Output parsing

/// Which guest marker a line or byte stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    Entry,
    Boot,
}

/// capsa's boot-timer log lines: the marker and capsa's own reading in microseconds.
pub fn parse_capsa_line(line: &str) -> Option<(Marker, u64)> {
    let (marker, rest) = if let Some((_, r)) = line.split_once("guest entry: ") {
        (Marker::Entry, r)
    } else if let Some((_, r)) = line.split_once("guest boot timer: ") {
        (Marker::Boot, r)
    } else {
        return None;
    };
    let us = rest.split_whitespace().next()?.parse().ok()?;
    Some((marker, us))
}

/// Markers in bytes from QEMU's isa-debugcon on the boot-timer port.
pub fn debugcon_markers(bytes: &[u8]) -> Vec<Marker> {
    bytes
        .iter()
        .filter_map(|b| match *b {
            BOOT_TIMER_ENTRY => Some(Marker::Entry),
            BOOT_TIMER_MAGIC => Some(Marker::Boot),
            _ => None,
        })
        .collect()
}

/// Threads and processes created, from `strace -f -e trace=clone,clone3,fork,vfork`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Clones {
    pub threads: u64,
    pub processes: u64,
}

pub fn count_clones(strace_out: &str) -> Clones {
    let mut c = Clones::default();
    for line in strace_out.lines() {
        // "PID clone3({flags=...CLONE_THREAD...}, 88) = 1235" or "... <unfinished ...>";
        // the matching "<... clone3 resumed>" line is not counted again.
        let Some(call) = ["clone3(", "clone(", "vfork(", "fork("]
            .iter()
            .find(|c| line.contains(&format!(" {c}")) || line.starts_with(**c))
        else {
            continue;
        };
        if line.contains("resumed>") || line.contains("= -1 ") {
            continue;
        }
        if *call != "vfork(" && *call != "fork(" && line.contains("CLONE_THREAD") {
            c.threads += 1;
        } else {
            c.processes += 1;
        }
    }
    c
}

/// What `/proc/PID/smaps` and `/proc/PID/maps` say about a stopped VMM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Footprint {
    /// RSS of the whole process when stopped (KiB).
    pub rss_kib: u64,
    /// RSS of the guest-RAM mapping (KiB): guest memory touched.
    pub guest_rss_kib: u64,
    /// Threads alive when stopped.
    pub threads: u64,
    /// Executable files mapped (binary and shared libraries) and their total size.
    pub mapped_exe_files: Vec<String>,
    pub mapped_exe_bytes: u64,
}

/// RSS (KiB) of the anonymous mapping that holds guest RAM: the anonymous mapping whose
/// size is closest to `mem_kib` from above, within 4 MiB (QEMU adds alignment/guards).
pub fn guest_rss_from_smaps(smaps: &str, mem_kib: u64) -> Option<u64> {
    let mut best: Option<(u64, u64)> = None; // (size, rss)
    let mut cur: Option<(bool, u64, u64)> = None; // (anonymous, size, rss)
    let mut flush = |cur: &mut Option<(bool, u64, u64)>| {
        if let Some((anon, size, rss)) = cur.take() {
            if anon && size >= mem_kib && size <= mem_kib + 4096 && best.is_none_or(|b| size < b.0)
            {
                best = Some((size, rss));
            }
        }
    };
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            flush(&mut cur);
            // "start-end perms offset dev inode [path]"
            let path = line.split_whitespace().nth(5);
            let anon = path.is_none();
            cur = Some((anon, 0, 0));
        } else if let Some(c) = cur.as_mut() {
            let kib = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            match first {
                "Size:" => c.1 = kib,
                "Rss:" => c.2 = kib,
                _ => {}
            }
        }
    }
    flush(&mut cur);
    best.map(|b| b.1)
}

/// Executable file mappings ("r-xp" with a path) in `/proc/PID/maps`, deduplicated.
pub fn exe_files_from_maps(maps: &str) -> Vec<String> {
    let mut out = BTreeSet::new();
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 6 && f[1].contains('x') && f[5].starts_with('/') {
            out.insert(f[5..].join(" "));
        }
    }
    out.into_iter().collect()
}

fn status_field(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn read_footprint(pid: i32, mem_mib: u64) -> anyhow::Result<Footprint> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let files = exe_files_from_maps(&maps);
    let bytes = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    Ok(Footprint {
        rss_kib: status_field(&status, "VmRSS:").unwrap_or(0),
        guest_rss_kib: guest_rss_from_smaps(&smaps, mem_mib * 1024)
            .context("no guest-RAM mapping in smaps")?,
        threads: status_field(&status, "Threads:").unwrap_or(0),
        mapped_exe_files: files,
        mapped_exe_bytes: bytes,
    })
}

// ------------------------------------------------------------------------------------
// Running one peer once

/// Where a peer reports the guest's markers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Markers {
    /// capsa's boot-timer lines on stderr.
    CapsaStderr,
    /// QEMU isa-debugcon bytes on stdout.
    DebugconStdout,
    /// None (containers).
    None,
}

#[derive(Debug, Clone)]
struct Spec {
    label: String,
    program: PathBuf,
    args: Vec<OsString>,
    markers: Markers,
    /// Run when the boot marker arrives (e.g. ask the agent to shut down).
    on_boot: Option<Vec<OsString>>,
    /// Started right after spawn; the time it returns successfully is `ready_us` (a
    /// request the guest answers once it serves, e.g. `capsa agent shutdown`, which waits
    /// for the agent, retrying every 50 ms).
    on_spawn: Option<Vec<OsString>>,
    /// The run fails without a boot-timer marker.
    require_boot: bool,
    /// Run after exit, timed separately (e.g. `capsa delete`).
    cleanup: Option<Vec<OsString>>,
    /// A file that must contain `expect` after a run (e.g. the serial log).
    check: Option<(PathBuf, String)>,
    timeout: Duration,
}

/// One timed run.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Run {
    /// spawn -> the guest's first instructions (entry marker), us.
    pub entry_us: Option<u64>,
    /// spawn -> the boot-timer write, us.
    pub boot_us: Option<u64>,
    /// spawn -> the `on_spawn` request answered (agent ready), us.
    pub ready_us: Option<u64>,
    /// spawn -> exit, us.
    pub exit_us: u64,
    /// The cleanup command's wall time, us (capsa delete).
    pub cleanup_us: Option<u64>,
    pub max_rss_kib: u64,
    /// capsa's own readings (since its main()), us.
    pub vmm_entry_us: Option<u64>,
    pub vmm_boot_us: Option<u64>,
}

#[derive(Default)]
struct Seen {
    entry: Option<(Instant, Option<u64>)>,
    boot: Option<(Instant, Option<u64>)>,
    footprint: Option<Result<Footprint, String>>,
    text: String,
}

fn run_cmd(argv: &[OsString]) -> anyhow::Result<String> {
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {:?}", argv[0]))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            argv,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Handles one marker: records it; in footprint mode, stops the peer at the boot marker
/// and reads /proc; runs `on_boot`.
fn on_marker(seen: &Mutex<Seen>, m: Marker, at: Instant, vmm_us: Option<u64>, ctx: &MarkerCtx) {
    let mut s = seen.lock().unwrap();
    match m {
        Marker::Entry => {
            s.entry.get_or_insert((at, vmm_us));
        }
        Marker::Boot => {
            if s.boot.is_some() {
                return;
            }
            s.boot = Some((at, vmm_us));
            if ctx.footprint {
                // SAFETY: plain kill(2) on our own un-reaped child.
                unsafe { libc::kill(ctx.pid, libc::SIGSTOP) };
                s.footprint = Some(read_footprint(ctx.pid, ctx.mem_mib).map_err(|e| e.to_string()));
                // SAFETY: as above.
                unsafe { libc::kill(ctx.pid, libc::SIGCONT) };
            }
            drop(s);
            if let Some(cmd) = &ctx.on_boot {
                if let Err(e) = run_cmd(cmd) {
                    seen.lock()
                        .unwrap()
                        .text
                        .push_str(&format!("on-boot: {e}\n"));
                }
            }
        }
    }
}

#[derive(Clone)]
struct MarkerCtx {
    pid: i32,
    footprint: bool,
    mem_mib: u64,
    on_boot: Option<Vec<OsString>>,
}

/// Runs `spec` once. With `footprint`, also stops it at the boot marker to read /proc.
fn run_once(
    spec: &Spec,
    mem_mib: u64,
    footprint: bool,
) -> anyhow::Result<(Run, Option<Footprint>)> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawning {}", spec.program.display()))?;
    let pid = child.id() as i32;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let ctx = MarkerCtx {
        pid,
        footprint,
        mem_mib,
        on_boot: spec.on_boot.clone(),
    };
    let mut stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let markers = spec.markers;
    let out_thread = {
        let (seen, ctx) = (seen.clone(), ctx.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let n = match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let at = Instant::now();
                if markers == Markers::DebugconStdout {
                    for m in debugcon_markers(&buf[..n]) {
                        on_marker(&seen, m, at, None, &ctx);
                    }
                }
            }
        })
    };
    let err_thread = {
        let (seen, ctx) = (seen.clone(), ctx.clone());
        std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let at = Instant::now();
                if markers == Markers::CapsaStderr {
                    if let Some((m, us)) = parse_capsa_line(&line) {
                        on_marker(&seen, m, at, Some(us), &ctx);
                        continue;
                    }
                }
                let mut s = seen.lock().unwrap();
                if s.text.len() < 16384 {
                    s.text.push_str(&line);
                }
            }
        })
    };
    let ready_thread = spec
        .on_spawn
        .clone()
        .map(|argv| std::thread::spawn(move || run_cmd(&argv).map(|_| Instant::now())));
    let done = Arc::new(AtomicBool::new(false));
    let timed_out = Arc::new(AtomicBool::new(false));
    {
        let (done, timed_out, timeout) = (done.clone(), timed_out.clone(), spec.timeout);
        std::thread::spawn(move || {
            while start.elapsed() < timeout {
                if done.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if !done.load(Ordering::Relaxed) {
                timed_out.store(true, Ordering::Relaxed);
                // SAFETY: kill(2) on our child, which is not reaped before `done` is set.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
    }
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our un-reaped child; status and ru are valid out-pointers.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let exit = start.elapsed();
    done.store(true, Ordering::Relaxed);
    if r < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    let _ = out_thread.join();
    let _ = err_thread.join();
    let mut seen = std::mem::take(&mut *seen.lock().unwrap());
    let ready = match ready_thread.map(|t| t.join()) {
        None => None,
        Some(Ok(Ok(t))) => Some(t),
        Some(Ok(Err(e))) => {
            seen.text.push_str(&format!("on-spawn request: {e:#}\n"));
            None
        }
        Some(Err(_)) => None,
    };
    let cleanup_us = match &spec.cleanup {
        Some(c) => {
            let t = Instant::now();
            run_cmd(c)?;
            Some(t.elapsed().as_micros() as u64)
        }
        None => None,
    };
    if timed_out.load(Ordering::Relaxed) {
        bail!(
            "{} timed out after {:?}: {}",
            spec.label,
            spec.timeout,
            seen.text.trim()
        );
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!(
            "{} failed (wait status {status:#x}): {}",
            spec.label,
            seen.text.trim()
        );
    }
    if let Some((file, expect)) = &spec.check {
        let got = std::fs::read_to_string(file).unwrap_or_default();
        if !got.contains(expect.as_str()) {
            bail!(
                "{}: {} lacks {expect:?}: {}",
                spec.label,
                file.display(),
                got.trim()
            );
        }
    }
    if spec.on_spawn.is_some() && ready.is_none() {
        bail!(
            "{}: the request never got an answer: {}",
            spec.label,
            seen.text.trim()
        );
    }
    if spec.require_boot && seen.boot.is_none() {
        bail!(
            "{}: no boot-timer marker seen: {}",
            spec.label,
            seen.text.trim()
        );
    }
    let since = |t: Instant| t.duration_since(start).as_micros() as u64;
    let run = Run {
        entry_us: seen.entry.map(|e| since(e.0)),
        boot_us: seen.boot.map(|e| since(e.0)),
        ready_us: ready.map(since),
        exit_us: exit.as_micros() as u64,
        cleanup_us,
        max_rss_kib: ru.ru_maxrss as u64,
        vmm_entry_us: seen.entry.and_then(|e| e.1),
        vmm_boot_us: seen.boot.and_then(|e| e.1),
    };
    let fp = match seen.footprint {
        Some(Ok(f)) => Some(f),
        Some(Err(e)) => bail!("{}: footprint: {e}", spec.label),
        None => None,
    };
    Ok((run, fp))
}

fn strace_clones(spec: &Spec, strace: &Path, dir: &Path) -> anyhow::Result<Clones> {
    let log = dir.join(format!("strace-{}.txt", slug(&spec.label)));
    let mut s = spec.clone();
    s.program = strace.to_path_buf();
    s.args = ["-f", "-qq", "-e", "trace=clone,clone3,fork,vfork", "-o"]
        .iter()
        .map(OsString::from)
        .chain([
            log.clone().into_os_string(),
            spec.program.clone().into_os_string(),
        ])
        .chain(spec.args.iter().cloned())
        .collect();
    s.timeout = spec.timeout * 3;
    run_once(&s, 0, false)?;
    Ok(count_clones(&std::fs::read_to_string(&log)?))
}

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

// ------------------------------------------------------------------------------------
// Results

/// Median/min/max of each figure over the timed runs.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Summaries {
    pub entry_us: Option<Summary>,
    pub boot_us: Option<Summary>,
    pub ready_us: Option<Summary>,
    pub exit_us: Option<Summary>,
    pub cleanup_us: Option<Summary>,
    pub max_rss_kib: Option<Summary>,
    pub vmm_entry_us: Option<Summary>,
    pub vmm_boot_us: Option<Summary>,
}

fn summarize(runs: &[Run], f: impl Fn(&Run) -> Option<u64>) -> Option<Summary> {
    let v: Vec<u64> = runs.iter().filter_map(f).collect();
    (!v.is_empty()).then(|| Summary::of(&v))
}

impl Summaries {
    pub fn of(runs: &[Run]) -> Self {
        Summaries {
            entry_us: summarize(runs, |r| r.entry_us),
            boot_us: summarize(runs, |r| r.boot_us),
            ready_us: summarize(runs, |r| r.ready_us),
            exit_us: summarize(runs, |r| Some(r.exit_us)),
            cleanup_us: summarize(runs, |r| r.cleanup_us),
            max_rss_kib: summarize(runs, |r| Some(r.max_rss_kib)),
            vmm_entry_us: summarize(runs, |r| r.vmm_entry_us),
            vmm_boot_us: summarize(runs, |r| r.vmm_boot_us),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PeerResult {
    pub label: String,
    pub program: String,
    pub args: Vec<String>,
    /// Size of the program file.
    pub binary_bytes: u64,
    pub runs: Vec<Run>,
    pub summary: Summaries,
    pub footprint: Option<Footprint>,
    /// Peak RSS minus guest memory touched (median peak RSS - footprint guest RSS), KiB.
    pub rss_minus_guest_kib: Option<u64>,
    pub clones: Option<Clones>,
    /// Why this peer has no (or fewer) numbers.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Pair {
    pub name: String,
    pub title: String,
    /// capsa first, then its peers.
    pub peers: Vec<PeerResult>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub kvm: String,
    pub pvm: bool,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Report {
    pub date: String,
    pub machine: Machine,
    pub capsa_commit: String,
    pub runs: usize,
    pub linux_runs: usize,
    pub mem_mib: u64,
    pub pairs: Vec<Pair>,
}

/// The CPU's model name from /proc/cpuinfo.
pub fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
}

pub fn machine() -> Machine {
    let cpu = cpu_model().unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    let kvm = if pvm {
        "PVM (kvm_pvm: guest ring 0 emulated, ring 3 native)".to_string()
    } else if Path::new("/sys/module/kvm_intel").exists() {
        "hardware KVM (kvm_intel)".to_string()
    } else if Path::new("/sys/module/kvm_amd").exists() {
        "hardware KVM (kvm_amd)".to_string()
    } else {
        "KVM (module unknown)".to_string()
    };
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel,
        kvm,
        pvm,
    }
}

/// capsa median / peer median.
pub fn ratio(capsa: Option<Summary>, peer: Option<Summary>) -> Option<f64> {
    match (capsa, peer) {
        (Some(c), Some(p)) if p.median > 0 => Some(c.median as f64 / p.median as f64),
        _ => None,
    }
}

fn fmt_ms(s: Option<Summary>) -> String {
    match s {
        Some(s) => format!(
            "{:.2} ({:.2}-{:.2})",
            s.median as f64 / 1000.0,
            s.min as f64 / 1000.0,
            s.max as f64 / 1000.0
        ),
        None => "-".into(),
    }
}

fn fmt_mib(kib: Option<u64>) -> String {
    kib.map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("{r:.2}"))
}

/// The Markdown report.
pub fn markdown(r: &Report) -> String {
    let mut md = String::new();
    let m = &r.machine;
    md += "# capsa compared with QEMU, runc and crun\n\n";
    md += &format!(
        "Measured {} on **{}, {} cores, Linux {}**. KVM: **{}**{}.\n\
         capsa commit {}; guest memory {} MiB, 1 vCPU; {} timed runs per probe-guest peer, {} \
         per Linux/container peer, interleaved run by run after one warm-up run each.\n\n",
        r.date,
        m.cpu,
        m.cores,
        m.kernel,
        m.kvm,
        if m.pvm {
            " (guest ring-0 code is emulated, thousands of times slower than on hardware \
             KVM, so guest-side times here are not what hardware KVM gives)"
        } else {
            ""
        },
        r.capsa_commit,
        r.mem_mib,
        r.runs,
        r.linux_runs,
    );
    md += "Times in ms as median (min-max), measured by the benchmark from just before it \
           spawns the process. Ratio = capsa median / peer median (below 1: capsa is faster \
           or smaller). How each figure is observed: `tools/bench/README.md`.\n\n";
    for p in &r.pairs {
        md += &format!("## {}\n\n", p.title);
        let Some(capsa) = p.peers.first() else {
            continue;
        };
        let others = &p.peers[1..];
        md += "| figure | ";
        for peer in &p.peers {
            md += &format!("{} | ", peer.label);
        }
        for o in others {
            md += &format!("capsa/{} | ", o.label);
        }
        md += "\n|---|";
        md += &"---|".repeat(p.peers.len() + others.len());
        md += "\n";
        type Get = fn(&PeerResult) -> Option<Summary>;
        let time_rows: [(&str, Get); 5] = [
            ("spawn -> first guest instruction (ms)", |x| {
                x.summary.entry_us
            }),
            ("spawn -> boot-timer write (ms)", |x| x.summary.boot_us),
            ("spawn -> agent answers a request (ms)", |x| {
                x.summary.ready_us
            }),
            ("spawn -> exit (ms)", |x| x.summary.exit_us),
            ("delete after exit (ms)", |x| x.summary.cleanup_us),
        ];
        for (name, get) in time_rows {
            if p.peers.iter().all(|x| get(x).is_none()) {
                continue;
            }
            md += &format!("| {name} | ");
            for peer in &p.peers {
                md += &format!("{} | ", fmt_ms(get(peer)));
            }
            for o in others {
                md += &format!("{} | ", fmt_ratio(ratio(get(capsa), get(o))));
            }
            md += "\n";
        }
        type GetK = fn(&PeerResult) -> Option<u64>;
        let size_rows: [(&str, GetK); 6] = [
            ("peak RSS, median (MiB)", |x| {
                x.summary.max_rss_kib.map(|s| s.median)
            }),
            ("guest memory touched (MiB)", |x| {
                x.footprint.as_ref().map(|f| f.guest_rss_kib)
            }),
            ("peak RSS minus guest memory touched (MiB)", |x| {
                x.rss_minus_guest_kib
            }),
            ("threads created", |x| x.clones.map(|c| c.threads * 1024)),
            ("processes created", |x| {
                x.clones.map(|c| c.processes * 1024)
            }),
            ("binary size (MiB)", |x| {
                Some(x.binary_bytes / 1024).filter(|b| *b > 0)
            }),
        ];
        for (name, get) in size_rows {
            if p.peers.iter().all(|x| get(x).is_none()) {
                continue;
            }
            let counts = name.ends_with("created");
            let fmt = |v: Option<u64>| {
                if counts {
                    v.map_or("-".into(), |v| (v / 1024).to_string())
                } else {
                    fmt_mib(v)
                }
            };
            md += &format!("| {name} | ");
            for peer in &p.peers {
                md += &format!("{} | ", fmt(get(peer)));
            }
            for o in others {
                let r = match (get(capsa), get(o)) {
                    (Some(c), Some(x)) if x > 0 => Some(c as f64 / x as f64),
                    _ => None,
                };
                md += &format!("{} | ", fmt_ratio(r));
            }
            md += "\n";
        }
        if p.peers.iter().any(|x| x.footprint.is_some()) {
            md += "| executables mapped (binary + shared libraries, MiB) | ";
            for peer in &p.peers {
                md += &format!(
                    "{} | ",
                    peer.footprint.as_ref().map_or("-".into(), |f| format!(
                        "{} ({} files)",
                        fmt_mib(Some(f.mapped_exe_bytes / 1024)),
                        f.mapped_exe_files.len()
                    ))
                );
            }
            md += &"- | ".repeat(others.len());
            md += "\n";
        }
        md += "\n";
        if capsa.summary.vmm_entry_us.is_some() || capsa.summary.vmm_boot_us.is_some() {
            md += &format!(
                "capsa's own boot-timer readings (from its `main`, so without exec): guest entry \
                 {} ms, boot timer {} ms.\n\n",
                fmt_ms(capsa.summary.vmm_entry_us),
                fmt_ms(capsa.summary.vmm_boot_us)
            );
        }
        for peer in &p.peers {
            md += &format!("- {}: `{}", peer.label, peer.program);
            for a in &peer.args {
                md += " ";
                md += a;
            }
            md += "`\n";
            if let Some(e) = &peer.error {
                md += &format!("  - **not measured / incomplete:** {e}\n");
            }
        }
        for n in &p.notes {
            md += &format!("- {n}\n");
        }
        md += "\n";
    }
    md += "![distributions](compare.png)\n";
    md
}

// ------------------------------------------------------------------------------------
// The pairs

struct Ctx {
    o: Opts,
    dir: PathBuf,
    strace: Option<PathBuf>,
    linux_runs: usize,
}

fn os(v: &[&str]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn peer_result(spec: &Spec) -> PeerResult {
    PeerResult {
        label: spec.label.clone(),
        program: spec.program.display().to_string(),
        args: spec
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        binary_bytes: file_size(&spec.program),
        ..Default::default()
    }
}

/// Warm-up, then `runs` interleaved timed runs, then footprint and strace runs.
fn measure(ctx: &Ctx, specs: &[Spec], runs: usize, extras: bool) -> Vec<PeerResult> {
    let mut res: Vec<PeerResult> = specs.iter().map(peer_result).collect();
    let mut alive = vec![true; specs.len()];
    for (i, s) in specs.iter().enumerate() {
        eprintln!("bench: warm-up {}", s.label);
        if let Err(e) = run_once(s, ctx.o.mem_mib, false) {
            res[i].error = Some(format!("{e:#}"));
            alive[i] = false;
        }
    }
    for n in 0..runs {
        for (i, s) in specs.iter().enumerate() {
            if !alive[i] {
                continue;
            }
            eprintln!("bench: run {}/{runs} {}", n + 1, s.label);
            match run_once(s, ctx.o.mem_mib, false) {
                Ok((r, _)) => res[i].runs.push(r),
                Err(e) => {
                    res[i].error = Some(format!("run {}: {e:#}", n + 1));
                    alive[i] = false;
                }
            }
        }
    }
    for (i, s) in specs.iter().enumerate() {
        res[i].summary = Summaries::of(&res[i].runs);
        if !extras || !alive[i] {
            continue;
        }
        // Footprint: median guest RSS over 3 stopped runs (a run that ends before the stop
        // lands is retried).
        let mut fps = Vec::new();
        for _ in 0..6 {
            if fps.len() == 3 {
                break;
            }
            match run_once(s, ctx.o.mem_mib, true) {
                Ok((_, Some(f))) => fps.push(f),
                Ok((_, None)) => {}
                Err(e) => eprintln!("bench: footprint run of {}: {e:#}", s.label),
            }
        }
        fps.sort_by_key(|f| f.guest_rss_kib);
        if let Some(f) = fps.get(fps.len() / 2).cloned() {
            res[i].rss_minus_guest_kib = res[i]
                .summary
                .max_rss_kib
                .map(|m| m.median.saturating_sub(f.guest_rss_kib));
            res[i].footprint = Some(f);
        }
        if let Some(strace) = &ctx.strace {
            match strace_clones(s, strace, &ctx.dir) {
                Ok(c) => res[i].clones = Some(c),
                Err(e) => eprintln!("bench: strace run of {}: {e:#}", s.label),
            }
        }
    }
    res
}

fn probe_path(o: &Opts) -> anyhow::Result<PathBuf> {
    if let Some(p) = &o.probe {
        return Ok(p.clone());
    }
    // Always (re)build: cargo is quick when it is up to date, and a stale probe from before
    // the PVH entry cannot boot under QEMU.
    let p = PathBuf::from("tools/probe-guest/target/x86_64-unknown-linux-gnu/release/probe-guest");
    {
        eprintln!("bench: building the probe guest (tools/probe-guest)");
        let st = Command::new("cargo")
            .args(["build", "--release", "--quiet"])
            .current_dir("tools/probe-guest")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .status()
            .context("running cargo for the probe guest (or pass --probe PATH)")?;
        if !st.success() || !p.exists() {
            bail!("building the probe guest failed (or pass --probe PATH)");
        }
    }
    Ok(p)
}

/// QEMU's default CPU model: on this PVM host `-cpu host` stops at "failed to set MSR 0x10a
/// to 0x69" (IA32_ARCH_CAPABILITIES), and the probe needs no CPU features.
fn qemu_probe_spec(o: &Opts, qemu: &Path, probe: &Path, serial: &Path, accel: &str) -> Spec {
    let mut args = os(&[
        "-M",
        "microvm",
        "-accel",
        accel,
        "-m",
        &o.mem_mib.to_string(),
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-chardev",
    ]);
    args.push(format!("file,id=ser,path={}", serial.display()).into());
    args.extend(os(&[
        "-serial",
        "chardev:ser",
        "-chardev",
        "stdio,id=bt",
        "-device",
        "isa-debugcon,iobase=0x440,chardev=bt",
        "-kernel",
    ]));
    args.push(probe.into());
    args.extend(os(&["-append", "console=ttyS0 probe=hello"]));
    Spec {
        label: if accel == "kvm" {
            "QEMU".into()
        } else {
            "QEMU (TCG, not KVM)".into()
        },
        program: qemu.to_path_buf(),
        args,
        markers: Markers::DebugconStdout,
        on_boot: None,
        on_spawn: None,
        require_boot: true,
        cleanup: None,
        check: Some((serial.to_path_buf(), "PROBE-RESULT: PASS hello".into())),
        timeout: Duration::from_secs(60),
    }
}

fn probe_pair(ctx: &Ctx) -> anyhow::Result<Pair> {
    let o = &ctx.o;
    let probe = probe_path(o)?;
    let qemu = find(&o.qemu)?;
    let capsa_serial = ctx.dir.join("serial-capsa-probe.txt");
    let mut capsa_args = os(&["vm", "run", "--kernel"]);
    capsa_args.push(probe.clone().into());
    capsa_args.extend(os(&[
        "--mem-mib",
        &o.mem_mib.to_string(),
        "--vcpus",
        "1",
        "--serial",
    ]));
    capsa_args.push(capsa_serial.clone().into());
    capsa_args.extend(os(&["--cmdline", "console=ttyS0 probe=hello"]));
    let capsa = Spec {
        label: "capsa".into(),
        program: o.capsa.clone(),
        args: capsa_args,
        markers: Markers::CapsaStderr,
        on_boot: None,
        on_spawn: None,
        require_boot: true,
        cleanup: None,
        check: Some((capsa_serial, "PROBE-RESULT: PASS hello".into())),
        timeout: Duration::from_secs(60),
    };
    let qserial = ctx.dir.join("serial-qemu-probe.txt");
    let mut notes = vec![format!(
        "Guest: the probe guest `{}` ({} bytes), the same file for both; capsa enters it at \
         its 64-bit entry (Linux boot protocol), QEMU at its PVH entry (32-bit, which \
         switches to long mode: about 22 more ring-0 instructions after the entry marker).",
        probe.display(),
        file_size(&probe)
    )];
    let mut qspec = qemu_probe_spec(o, &qemu, &probe, &qserial, "kvm");
    match o.accel {
        Accel::Tcg => qspec = qemu_probe_spec(o, &qemu, &probe, &qserial, "tcg"),
        Accel::Kvm => {}
        Accel::Auto => {
            if let Err(e) = run_once(&qspec, o.mem_mib, false) {
                notes.push(format!(
                    "QEMU with `-accel kvm` does not run here: {e:#}. Its figures below are QEMU's \
                     TCG emulator, labelled as such, not KVM."
                ));
                qspec = qemu_probe_spec(o, &qemu, &probe, &qserial, "tcg");
            }
        }
    }
    let peers = measure(ctx, &[capsa, qspec], o.runs, true);
    Ok(Pair {
        name: "probe".into(),
        title: "Probe guest: capsa vs QEMU -M microvm".into(),
        peers,
        notes,
    })
}

/// The guest kernel: --kernel, $CAPSA_KERNEL, else guest-kernel/build.sh's cached build.
fn kernel_path(o: &Opts) -> anyhow::Result<PathBuf> {
    if let Some(k) = &o.kernel {
        return Ok(k.clone());
    }
    if let Some(k) = std::env::var_os("CAPSA_KERNEL") {
        return Ok(k.into());
    }
    let out = Command::new("bash")
        .arg("guest-kernel/build.sh")
        .stderr(Stdio::inherit())
        .output()
        .context("running guest-kernel/build.sh (or pass --kernel)")?;
    let p = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(|l| PathBuf::from(l.trim()))
        .filter(|p| p.exists())
        .ok_or_else(|| {
            anyhow!("guest-kernel/build.sh printed no kernel path (or pass --kernel)")
        })?;
    Ok(p)
}

/// QEMU cannot take the Linux agent pair: ask it once for the exact reason it gives.
fn qemu_linux_note(o: &Opts, kernel: &Path) -> String {
    let Ok(qemu) = find(&o.qemu) else {
        return format!("QEMU: {} not found", o.qemu);
    };
    let out = Command::new(&qemu)
        .args([
            "-M",
            "microvm",
            "-accel",
            "kvm",
            "-m",
            "256",
            "-nodefaults",
            "-no-user-config",
        ])
        .args(["-display", "none", "-no-reboot", "-kernel"])
        .arg(kernel)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(10) {
                if c.try_wait()?.is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            c.wait_with_output()
        });
    let said = match out {
        Ok(o) => String::from_utf8_lossy(&o.stderr)
            .lines()
            .filter(|l| !l.contains("warning:"))
            .collect::<Vec<_>>()
            .join(" "),
        Err(e) => e.to_string(),
    };
    format!(
        "QEMU is not run to agent-ready: the agent is capsa itself as /init on capsa's \
         virtio-fs guest root, talking over capsa's vsock device; QEMU would need virtiofsd, \
         vhost-vsock and a kernel it can load. Given this vmlinux, QEMU says: `{}`",
        if said.trim().is_empty() {
            "(nothing within 10 s)"
        } else {
            said.trim()
        }
    )
}

fn linux_pair(ctx: &Ctx) -> anyhow::Result<Pair> {
    let o = &ctx.o;
    let kernel = kernel_path(o)?;
    let uds = ctx.dir.join("agent.sock");
    let serial = ctx.dir.join("serial-capsa-linux.txt");
    let mut args = os(&["vm", "run", "--agent", "--kernel"]);
    args.push(kernel.clone().into());
    args.extend(os(&[
        "--mem-mib",
        "256",
        "--vcpus",
        "1",
        "--vsock-cid",
        "3",
        "--vsock-uds",
    ]));
    args.push(uds.clone().into());
    args.push("--serial".into());
    args.push(serial.into());
    let mut shutdown = vec![o.capsa.clone().into_os_string()];
    shutdown.extend(os(&["agent", "shutdown", "--timeout", "900", "--uds"]));
    shutdown.push(uds.into());
    let capsa = Spec {
        label: "capsa".into(),
        program: o.capsa.clone(),
        args,
        markers: Markers::CapsaStderr,
        on_boot: None,
        on_spawn: Some(shutdown),
        require_boot: false,
        cleanup: None,
        check: None,
        timeout: Duration::from_secs(900),
    };
    let peers = measure(ctx, &[capsa], ctx.linux_runs, false);
    Ok(Pair {
        name: "linux".into(),
        title: "Linux guest to agent-ready (capsa's guest kernel)".into(),
        peers,
        notes: vec![
            format!(
                "Kernel: `{}`. Agent ready = `capsa agent shutdown` (started with the VM; \
                 it connects over vsock, retrying every 50 ms, and returns once the agent \
                 answered) returned; exit follows that shutdown. The agent also writes the \
                 boot timer once it serves, if its guest kernel lets it (ioperm); a Linux \
                 kernel gives no first-instruction marker.",
                kernel.display()
            ),
            qemu_linux_note(o, &kernel),
        ],
    })
}

fn container_pair(ctx: &Ctx) -> anyhow::Result<Pair> {
    let o = &ctx.o;
    let runc = find(&o.runc)?;
    let crun = find(&o.crun)?;
    let kernel = kernel_path(o)?;
    let bundle = match &o.bundle {
        Some(b) => b.clone(),
        None => {
            let b = ctx.dir.join("bundle");
            if !b.join("config.json").exists() {
                run_cmd(&[
                    "bash".into(),
                    "tools/busybox-bundle.sh".into(),
                    b.clone().into(),
                    "true".into(),
                ])
                .context("making the busybox bundle (or pass --bundle DIR)")?;
                // crun 1.8 (Debian 12) refuses ociVersion 1.2.0 ("unknown version
                // specified"); all three runtimes take 1.0.2 and nothing here needs more.
                let cfg = b.join("config.json");
                let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg)?)?;
                spec["ociVersion"] = "1.0.2".into();
                std::fs::write(&cfg, serde_json::to_vec_pretty(&spec)?)?;
            }
            b
        }
    };
    let pid = std::process::id();
    // One id per process: each run's container is deleted before the next starts.
    let id = format!("bench-{pid}");
    let mk = |label: &str, prog: &Path, root: &Path, pre: &[OsString], cleanup: bool| {
        let mut args = vec![OsString::from("--root"), root.into()];
        args.extend(pre.iter().cloned());
        args.extend(os(&["run", "--bundle"]));
        args.push(bundle.clone().into());
        args.push(id.clone().into());
        let mut del = vec![prog.as_os_str().to_owned(), "--root".into(), root.into()];
        del.extend(os(&["delete", "--force", &id]));
        Spec {
            label: label.into(),
            program: prog.to_path_buf(),
            args,
            markers: Markers::None,
            on_boot: None,
            on_spawn: None,
            require_boot: false,
            cleanup: cleanup.then_some(del),
            check: None,
            timeout: Duration::from_secs(900),
        }
    };
    let kernel_arg = [OsString::from("--kernel"), kernel.clone().into()];
    let specs = [
        mk(
            "capsa",
            &o.capsa,
            &ctx.dir.join("root-capsa"),
            &kernel_arg,
            true,
        ),
        mk("runc", &runc, &ctx.dir.join("root-runc"), &[], false),
        mk("crun", &crun, &ctx.dir.join("root-crun"), &[], false),
    ];
    let peers = measure(ctx, &specs, ctx.linux_runs, false);
    Ok(Pair {
        name: "container".into(),
        title: "Container: `capsa run` vs runc and crun (busybox `true`)".into(),
        peers,
        notes: vec![format!(
            "Bundle `{}` (tools/busybox-bundle.sh, command `true`, ociVersion set to 1.0.2 for \
             crun 1.8). capsa boots a VM on `{}` \
             per container; runc and crun use host namespaces only. `run` of runc and crun \
             removes the container itself; capsa's `delete` is timed separately. Peak RSS is \
             what wait4 reports for the runtime's process (the largest of it and the children \
             it waited for).",
            bundle.display(),
            kernel.display()
        )],
    })
}

fn git_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub fn main(args: &[String], default_capsa: PathBuf) -> anyhow::Result<()> {
    let o = parse_opts(args, default_capsa)?;
    if !o.capsa.exists() {
        bail!(
            "capsa binary {} not found (cargo build --release, or --capsa PATH)",
            o.capsa.display()
        );
    }
    let m = machine();
    let linux_runs = o
        .linux_runs
        .unwrap_or(if m.pvm { 3.min(o.runs) } else { o.runs });
    std::fs::create_dir_all(&o.out)?;
    let dir = std::fs::canonicalize(&o.out)?.join("compare-work");
    std::fs::create_dir_all(&dir)?;
    let strace = match find(&o.strace) {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("bench: {e:#}; threads created are not counted");
            None
        }
    };
    let ctx = Ctx {
        o: o.clone(),
        dir,
        strace,
        linux_runs,
    };
    let mut report = Report {
        date: utc_now(),
        machine: m,
        capsa_commit: git_commit(),
        runs: o.runs,
        linux_runs,
        mem_mib: o.mem_mib,
        pairs: Vec::new(),
    };
    type PairFn = fn(&Ctx) -> anyhow::Result<Pair>;
    let all: [(&str, PairFn); 3] = [
        ("probe", probe_pair),
        ("linux", linux_pair),
        ("container", container_pair),
    ];
    for (name, f) in all {
        if !o.pairs.contains(name) {
            continue;
        }
        eprintln!("bench: pair {name}");
        let pair = f(&ctx).with_context(|| format!("pair {name} (skip it with --pairs)"))?;
        report.pairs.push(pair);
        write_outputs(&o.out, &report)?;
    }
    print!("{}", markdown(&report));
    eprintln!(
        "report: {0}/compare.md, {0}/compare.json, {0}/compare.png",
        o.out.display()
    );
    Ok(())
}

fn write_outputs(out: &Path, report: &Report) -> anyhow::Result<()> {
    std::fs::write(out.join("compare.md"), markdown(report))?;
    std::fs::write(
        out.join("compare.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    let png = plot::render(report);
    std::fs::write(out.join("compare.png"), png)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capsa_lines() {
        assert_eq!(
            parse_capsa_line("2026-11-23T13:18:18Z  INFO guest entry: 20005 us since VMM start\n"),
            Some((Marker::Entry, 20005))
        );
        assert_eq!(
            parse_capsa_line("INFO guest boot timer: 21232 us since VMM start"),
            Some((Marker::Boot, 21232))
        );
        assert_eq!(parse_capsa_line("INFO guest boot timer: soon"), None);
        assert_eq!(parse_capsa_line("capsa: error: no"), None);
    }

    #[test]
    fn debugcon_bytes() {
        assert_eq!(
            debugcon_markers(&[1, 7, 123, 0]),
            vec![Marker::Entry, Marker::Boot]
        );
        assert!(debugcon_markers(b"hello").is_empty());
    }

    #[test]
    fn clones_from_strace() {
        let log = "\
10 clone3({flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM, child_tid=0x1}, 88) = 11
10 clone3({flags=CLONE_VM|CLONE_THREAD, child_tid=0x2} <unfinished ...>
10 <... clone3 resumed> => {parent_tid=[12]}, 88) = 12
10 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD, child_tidptr=0x7f) = 13
10 clone3({flags=CLONE_VM|CLONE_THREAD}, 88) = -1 EAGAIN (Resource temporarily unavailable)
13 vfork() = 14
10 +++ exited with 0 +++
";
        assert_eq!(
            count_clones(log),
            Clones {
                threads: 2,
                processes: 2
            }
        );
        assert_eq!(count_clones(""), Clones::default());
    }

    #[test]
    fn guest_mapping_in_smaps() {
        let smaps = "\
55d0a000-55d0b000 r-xp 00000000 08:01 123 /usr/bin/qemu-system-x86_64
Size:                  4 kB
Rss:                   4 kB
7f0000000000-7f0008200000 rw-p 00000000 00:00 0
Size:             133120 kB
Rss:                2100 kB
7f1000000000-7f1008000000 rw-p 00000000 00:00 0 
Size:             131072 kB
Rss:                 600 kB
7f2000000000-7f2000100000 rw-p 00000000 00:00 0
Size:               1024 kB
Rss:                1024 kB
7f3000000000-7f3008000000 rw-s 00000000 00:05 9 /memfd:not-anon (deleted)
Size:             131072 kB
Rss:                  50 kB
";
        // The exact-size anonymous mapping wins over the larger one and the file one.
        assert_eq!(guest_rss_from_smaps(smaps, 131072), Some(600));
        assert_eq!(guest_rss_from_smaps(smaps, 132000), Some(2100));
        assert_eq!(guest_rss_from_smaps(smaps, 262144), None);
    }

    #[test]
    fn exe_files() {
        let maps = "\
5555-6666 r--p 00000000 08:01 1 /usr/bin/qemu-system-x86_64
6666-7777 r-xp 00001000 08:01 1 /usr/bin/qemu-system-x86_64
7777-8888 r-xp 00000000 08:01 2 /usr/lib/x86_64-linux-gnu/libc.so.6
8888-9999 r-xp 00000000 00:00 0 [vdso]
9999-aaaa rw-p 00000000 00:00 0
";
        assert_eq!(
            exe_files_from_maps(maps),
            vec![
                "/usr/bin/qemu-system-x86_64".to_string(),
                "/usr/lib/x86_64-linux-gnu/libc.so.6".to_string()
            ]
        );
    }

    #[test]
    fn options() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let o = parse_opts(&a(&[]), "capsa".into()).unwrap();
        assert_eq!(o.runs, 10);
        assert_eq!(o.pairs.len(), 3);
        let o = parse_opts(
            &a(&[
                "--runs",
                "12",
                "--linux-runs",
                "2",
                "--pairs",
                "probe",
                "--accel",
                "tcg",
            ]),
            "capsa".into(),
        )
        .unwrap();
        assert_eq!((o.runs, o.linux_runs, o.accel), (12, Some(2), Accel::Tcg));
        assert_eq!(o.pairs, ["probe".to_string()].into_iter().collect());
        for bad in [
            &["--runs", "0"][..],
            &["--runs"],
            &["--pairs", "probe,vmware"],
            &["--accel", "hvf"],
            &["--frobnicate", "1"],
        ] {
            assert!(parse_opts(&a(bad), "capsa".into()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn missing_peer_is_an_error_naming_the_package() {
        let dir = std::env::temp_dir().join(format!("bench-path-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = resolve_program("qemu-system-x86_64", Some(dir.as_os_str())).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("not found") && msg.contains("qemu-system-x86"),
            "{msg}"
        );
        let e = resolve_program("/nonexistent/crun", None).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/crun"), "{e}");
        // A non-executable file of that name is not the program; an executable one is.
        use std::os::unix::fs::PermissionsExt;
        let f = dir.join("runc");
        std::fs::write(&f, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(resolve_program("runc", Some(dir.as_os_str())).is_err());
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(resolve_program("runc", Some(dir.as_os_str())).unwrap(), f);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_peer_fails_a_run_with_its_error() {
        let s = Spec {
            label: "ghost".into(),
            program: "/nonexistent/ghost-vmm".into(),
            args: vec![],
            markers: Markers::None,
            on_boot: None,
            on_spawn: None,
            require_boot: false,
            cleanup: None,
            check: None,
            timeout: Duration::from_secs(5),
        };
        let e = run_once(&s, 128, false).unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/ghost-vmm"), "{e:#}");
    }

    #[test]
    fn real_process_runs_are_parsed() {
        // A stand-in "VMM" printing capsa's lines and QEMU's debugcon bytes: the runner
        // finds both markers, in order, and the exit.
        let s = Spec {
            label: "sh".into(),
            program: "/bin/sh".into(),
            args: os(&[
                "-c",
                "echo 'INFO guest entry: 5 us since VMM start' >&2; \
                 echo 'INFO guest boot timer: 9 us since VMM start' >&2",
            ]),
            markers: Markers::CapsaStderr,
            on_boot: None,
            on_spawn: None,
            require_boot: true,
            cleanup: None,
            check: None,
            timeout: Duration::from_secs(30),
        };
        let (r, fp) = run_once(&s, 128, false).unwrap();
        assert_eq!((r.vmm_entry_us, r.vmm_boot_us), (Some(5), Some(9)));
        // One reader thread takes the lines in order, so entry is stamped first.
        assert!(r.entry_us.unwrap() <= r.boot_us.unwrap());
        // (No order against exit_us: the reader thread may see the last line after wait4.)
        assert!(fp.is_none());
        let s = Spec {
            args: os(&["-c", "printf '\\001x\\173'"]),
            markers: Markers::DebugconStdout,
            ..s
        };
        let (r, _) = run_once(&s, 128, false).unwrap();
        assert!(r.entry_us.is_some() && r.boot_us.is_some() && r.vmm_boot_us.is_none());
        // No boot marker: an error, not a number.
        let s = Spec {
            args: os(&["-c", "true"]),
            ..s
        };
        assert!(run_once(&s, 128, false).is_err());
        // A failing peer: its status and stderr are in the error.
        let s = Spec {
            args: os(&["-c", "echo broken >&2; exit 3"]),
            markers: Markers::None,
            ..s
        };
        let e = format!("{:#}", run_once(&s, 128, false).unwrap_err());
        assert!(e.contains("broken"), "{e}");
    }

    fn sample_report() -> Report {
        let run = |e, b, x| Run {
            entry_us: e,
            boot_us: b,
            exit_us: x,
            max_rss_kib: 2048,
            ..Default::default()
        };
        let capsa_runs = vec![
            run(Some(1000), Some(2000), 30000),
            run(Some(3000), Some(4000), 50000),
        ];
        let q_runs = vec![run(Some(100_000), Some(110_000), 200_000)];
        let mut capsa = PeerResult {
            label: "capsa".into(),
            program: "capsa".into(),
            binary_bytes: 9 << 20,
            summary: Summaries::of(&capsa_runs),
            runs: capsa_runs,
            clones: Some(Clones {
                threads: 2,
                processes: 0,
            }),
            ..Default::default()
        };
        capsa.rss_minus_guest_kib = Some(1024);
        let qemu = PeerResult {
            label: "QEMU".into(),
            program: "qemu-system-x86_64".into(),
            binary_bytes: 18 << 20,
            summary: Summaries::of(&q_runs),
            runs: q_runs,
            error: Some("something odd".into()),
            ..Default::default()
        };
        Report {
            date: "2026-11-23".into(),
            machine: Machine {
                cpu: "AMD EPYC".into(),
                cores: 2,
                kernel: "6.18".into(),
                kvm: "PVM".into(),
                pvm: true,
            },
            capsa_commit: "abc".into(),
            runs: 2,
            linux_runs: 1,
            mem_mib: 128,
            pairs: vec![Pair {
                name: "probe".into(),
                title: "Probe".into(),
                peers: vec![capsa, qemu],
                notes: vec!["a note".into()],
            }],
        }
    }

    #[test]
    fn summaries_and_ratio() {
        let r = sample_report();
        let c = &r.pairs[0].peers[0].summary;
        assert_eq!(
            c.entry_us,
            Some(Summary {
                median: 2000,
                min: 1000,
                max: 3000
            })
        );
        assert_eq!(c.cleanup_us, None);
        let q = &r.pairs[0].peers[1].summary;
        let x = ratio(c.entry_us, q.entry_us).unwrap();
        assert!((x - 0.02).abs() < 1e-9, "{x}");
        assert_eq!(ratio(c.cleanup_us, q.entry_us), None);
        assert_eq!(
            ratio(
                c.entry_us,
                Some(Summary {
                    median: 0,
                    min: 0,
                    max: 0
                })
            ),
            None
        );
    }

    #[test]
    fn markdown_and_json() {
        let r = sample_report();
        let md = markdown(&r);
        assert!(md.contains("AMD EPYC, 2 cores, Linux 6.18"), "{md}");
        assert!(md.contains("KVM: **PVM**"), "{md}");
        assert!(
            md.contains("| figure | capsa | QEMU | capsa/QEMU |"),
            "{md}"
        );
        assert!(
            md.contains("| spawn -> first guest instruction (ms) | 2.00 (1.00-3.00) | 100.00 (100.00-100.00) | 0.02 |"),
            "{md}"
        );
        assert!(md.contains("| threads created | 2 | - | - |"), "{md}");
        assert!(
            md.contains("| binary size (MiB) | 9.0 | 18.0 | 0.50 |"),
            "{md}"
        );
        assert!(!md.contains("delete after exit"), "{md}");
        assert!(
            md.contains("**not measured / incomplete:** something odd"),
            "{md}"
        );
        assert!(md.contains("compare.png"));
        let j: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(j["machine"]["pvm"], true);
        assert_eq!(
            j["pairs"][0]["peers"][0]["summary"]["boot_us"]["median"],
            3000
        );
        assert_eq!(j["pairs"][0]["peers"][1]["runs"][0]["exit_us"], 200_000);
        assert!(j["pairs"][0]["peers"][1]["summary"]["cleanup_us"].is_null());
    }

    #[test]
    fn outputs_are_written() {
        let dir = std::env::temp_dir().join(format!("bench-out-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_outputs(&dir, &sample_report()).unwrap();
        let png = std::fs::read(dir.join("compare.png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let j: Report2 =
            serde_json::from_slice(&std::fs::read(dir.join("compare.json")).unwrap()).unwrap();
        assert_eq!(j.runs, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[derive(serde::Deserialize)]
    struct Report2 {
        runs: usize,
    }
}
