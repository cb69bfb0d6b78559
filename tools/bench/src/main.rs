//! capsa benchmarks: programs that print numbers and write a report, never assertions.
//!
//! `bench boot`: boots the probe guest repeatedly with `capsa vm run` and reports, per run,
//! the VMM's boot-timer reading (process start -> the guest's first boot-timer write, which
//! the probe does as soon as it reaches ring 3), wall time from spawn to exit, and peak RSS.

mod compare;
mod io;
mod plot;
mod stats;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use serde::Serialize;

use stats::Summary;

#[derive(Debug, Clone, Serialize)]
struct Sample {
    boot_timer_us: u64,
    wall_us: u64,
    max_rss_kib: u64,
}

struct Args {
    runs: usize,
    capsa: PathBuf,
    kernel: Option<PathBuf>,
    vcpus: u8,
    mem_mib: u64,
    out: PathBuf,
}

fn usage() -> ! {
    eprintln!(
        "usage: bench boot [--runs N] [--capsa PATH] [--kernel PATH] [--vcpus N] [--mem-mib N] [--out DIR]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    if it.next().as_deref() != Some("boot") {
        usage();
    }
    let mut a = Args {
        runs: 20,
        capsa: default_capsa(),
        kernel: None,
        vcpus: 1,
        mem_mib: 128,
        out: PathBuf::from("target/bench"),
    };
    while let Some(flag) = it.next() {
        let val = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--runs" => a.runs = val.parse().unwrap_or_else(|_| usage()),
            "--capsa" => a.capsa = val.into(),
            "--kernel" => a.kernel = Some(val.into()),
            "--vcpus" => a.vcpus = val.parse().unwrap_or_else(|_| usage()),
            "--mem-mib" => a.mem_mib = val.parse().unwrap_or_else(|_| usage()),
            "--out" => a.out = val.into(),
            _ => usage(),
        }
    }
    a
}

/// The capsa binary next to this one (same profile), else the release build.
fn default_capsa() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("capsa")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("target/x86_64-unknown-linux-gnu/release/capsa"))
}

fn one_run(a: &Args) -> anyhow::Result<Sample> {
    let mut cmd = Command::new(&a.capsa);
    cmd.args([
        "--log-level",
        "boot_timer=info",
        "vm",
        "run",
        "--serial",
        "none",
    ])
    .args([
        "--vcpus",
        &a.vcpus.to_string(),
        "--mem-mib",
        &a.mem_mib.to_string(),
    ])
    .args(["--cmdline", "console=ttyS0 probe=hello"]);
    if let Some(k) = &a.kernel {
        cmd.arg("--kernel").arg(k);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawning {}", a.capsa.display()))?;
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err)?;
    // wait4 gives the child's own peak RSS, which std's wait does not.
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our un-reaped child; status and ru are valid out-pointers.
    let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    let wall = start.elapsed();
    if r < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("capsa failed (status {status:#x}): {err}");
    }
    let boot_timer_us = err
        .split("guest boot timer: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no boot timer line in: {err}"))?;
    Ok(Sample {
        boot_timer_us,
        wall_us: wall.as_micros() as u64,
        max_rss_kib: ru.ru_maxrss as u64,
    })
}

#[derive(Serialize)]
struct Report {
    machine: String,
    kvm: &'static str,
    capsa: String,
    runs: usize,
    vcpus: u8,
    mem_mib: u64,
    boot_timer_us: Summary,
    wall_us: Summary,
    max_rss_kib: Summary,
    samples: Vec<Sample>,
}

fn machine() -> String {
    let cpu = compare::cpu_model().unwrap_or_else(|| "unknown cpu".into());
    format!(
        "{cpu}, {} cpus",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("io") {
        return io::main(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("compare") {
        return compare::main(&args[1..], default_capsa());
    }
    let a = parse_args();
    let kvm = if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        "PVM (kvm_pvm: guest ring 0 emulated)"
    } else {
        "hardware KVM"
    };
    // One warm-up run so page-cache effects don't land in the first sample.
    one_run(&a)?;
    let mut samples = Vec::with_capacity(a.runs);
    for _ in 0..a.runs {
        samples.push(one_run(&a)?);
    }
    let pick = |f: fn(&Sample) -> u64| Summary::of(&samples.iter().map(f).collect::<Vec<_>>());
    let report = Report {
        machine: machine(),
        kvm,
        capsa: a.capsa.display().to_string(),
        runs: a.runs,
        vcpus: a.vcpus,
        mem_mib: a.mem_mib,
        boot_timer_us: pick(|s| s.boot_timer_us),
        wall_us: pick(|s| s.wall_us),
        max_rss_kib: pick(|s| s.max_rss_kib),
        samples,
    };
    let md = format!(
        "# capsa boot benchmark\n\nMachine: {}; KVM: {}; {} runs; {} vCPU(s), {} MiB; probe guest.\n\n\
         | metric | median | min | max |\n|---|---|---|---|\n\
         | process start -> guest boot timer (us) | {} |\n\
         | spawn -> exit, wall (us) | {} |\n\
         | peak RSS (KiB) | {} |\n",
        report.machine,
        report.kvm,
        report.runs,
        report.vcpus,
        report.mem_mib,
        report.boot_timer_us.row(),
        report.wall_us.row(),
        report.max_rss_kib.row(),
    );
    print!("{md}");
    std::fs::create_dir_all(&a.out)?;
    std::fs::write(a.out.join("boot.md"), &md)?;
    std::fs::write(
        a.out.join("boot.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    eprintln!("report: {}/boot.md and boot.json", a.out.display());
    Ok(())
}
