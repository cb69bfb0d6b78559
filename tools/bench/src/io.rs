//! `bench io`: the probe guest's virtio-blk and virtio-vsock throughput against the same work
//! done natively on the host, side by side in one run, as ratios (capsa guest / host).
//!
//! Each iteration runs every measurement once, interleaved (so drift on a shared machine hits
//! both sides alike); the report gives median/min/max over the iterations and the ratio of
//! each iteration's guest figure to its host figure.
//!
//! - **Block.** One disk image (pseudo-random contents) read by the guest over virtio-blk
//!   (`probe=blkbench`, read-only disk) and by this process with `pread` on the same file:
//!   4 KiB random reads at the same offsets in the same order (`pattern_word(seed, i) %
//!   blocks`), and a sequential read of the whole file in `--seq-req-kib` requests. The
//!   guest is timed here, on the host clock, between the arrival of its `PROBE-BENCH:
//!   start` and `PROBE-BENCH: end` serial lines (see `blk_result`). capsa's virtio-blk
//!   backend reads through the page cache (plain `open`, no O_DIRECT), so the file is read
//!   once first to make it resident, and the fair host baseline is a cached `pread`; an
//!   O_DIRECT `pread` is measured too where the filesystem allows it.
//! - **vsock.** `--vsock-mib` MiB through one connection each way over capsa's hybrid
//!   vsock (`probe=vsockbench`): guest to host (the guest connects to host port P, which
//!   capsa forwards to `<uds>_P`; timed from `accept` to EOF) and host to guest (`CONNECT`
//!   on the UDS, timed from the `OK` reply to EOF, which the guest sends only after it has
//!   taken every byte). The host baseline is the same transfer over a Unix socket pair
//!   between two threads of this process. Neither side touches the payload.
//!
//! Every guest run also checks that the guest moved the right bytes (the blk `xor` check
//! and the vsock byte counts); a mismatch ends the benchmark with an error. No timing is
//! ever checked.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use serde::Serialize;

const SECTOR: u64 = 512;
/// Granularity of the blk `xor` check (the guest's `CHECK_STRIDE`).
const CHECK_STRIDE: usize = 4096;
const GUEST_CID: &str = "3";
const GUEST_PORT: u32 = 1234;
const HOST_PORT: u32 = 5000;
/// Chunk size of the host's socket reads and writes.
const SOCK_CHUNK: usize = 64 << 10;
/// Bound of every wait for a guest (boot, connection, transfer); only to avoid hanging.
const GUEST_DEADLINE: Duration = Duration::from_secs(300);

struct Opts {
    runs: usize,
    capsa: PathBuf,
    kernel: Option<PathBuf>,
    disk: PathBuf,
    size_mib: u64,
    rand_ops: u64,
    depths: Vec<u64>,
    seq_req_kib: u64,
    seq_depth: u64,
    vsock_mib: u64,
    vsock_pkt: u64,
    vsock_rxbuf: u64,
    mem_mib: u64,
    seed: u64,
    host_min: Duration,
    out: PathBuf,
}

const USAGE: &str = "usage: bench io [--runs N] [--capsa PATH] [--kernel PROBE] [--disk FILE] \
[--size-mib N] [--rand-ops N] [--depths N,N..] [--seq-req-kib N] [--seq-depth N] \
[--vsock-mib N] [--vsock-pkt BYTES] [--vsock-rxbuf BYTES] [--mem-mib N] [--seed N] \
[--host-min-ms MS] [--out DIR]";

fn parse_opts(args: &[String]) -> anyhow::Result<Opts> {
    let mut o = Opts {
        runs: 5,
        capsa: super::default_capsa(),
        kernel: None,
        disk: PathBuf::new(),
        size_mib: 1024,
        rand_ops: 40_000,
        depths: vec![1, 16],
        seq_req_kib: 128,
        seq_depth: 8,
        vsock_mib: 512,
        vsock_pkt: 64 << 10,
        vsock_rxbuf: 4096,
        mem_mib: 128,
        seed: 1,
        host_min: Duration::from_millis(500),
        out: PathBuf::from("target/bench"),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let val = it
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        let num = || -> anyhow::Result<u64> {
            val.parse()
                .with_context(|| format!("{flag}: not a number: {val}\n{USAGE}"))
        };
        match flag.as_str() {
            "--runs" => o.runs = num()? as usize,
            "--capsa" => o.capsa = val.into(),
            "--kernel" => o.kernel = Some(val.into()),
            "--disk" => o.disk = val.into(),
            "--size-mib" => o.size_mib = num()?,
            "--rand-ops" => o.rand_ops = num()?,
            "--depths" => {
                o.depths = val
                    .split(',')
                    .map(|d| d.parse().with_context(|| format!("--depths: {d}")))
                    .collect::<anyhow::Result<_>>()?
            }
            "--seq-req-kib" => o.seq_req_kib = num()?,
            "--seq-depth" => o.seq_depth = num()?,
            "--vsock-mib" => o.vsock_mib = num()?,
            "--vsock-pkt" => o.vsock_pkt = num()?,
            "--vsock-rxbuf" => o.vsock_rxbuf = num()?,
            "--mem-mib" => o.mem_mib = num()?,
            "--seed" => o.seed = num()?,
            "--host-min-ms" => o.host_min = Duration::from_millis(num()?),
            "--out" => o.out = val.into(),
            _ => bail!("unknown option {flag}\n{USAGE}"),
        }
    }
    ensure!(o.runs > 0 && o.size_mib > 0 && o.rand_ops > 0, "{USAGE}");
    ensure!(!o.depths.is_empty(), "--depths: at least one depth");
    if o.disk.as_os_str().is_empty() {
        o.disk = o.out.join("io-disk.img");
    }
    Ok(o)
}

// ---------------------------------------------------------------------------------------
// Shared with the probe guest (tools/probe-guest/src/check.rs): the offsets of the random
// reads.

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The probe's `check::pattern_word`.
fn pattern_word(seed: u64, w: u64) -> u64 {
    mix(w ^ seed.wrapping_mul(0xd6e8_feb8_6659_fd93))
}

fn first_word(buf: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    let n = buf.len().min(8);
    w[..n].copy_from_slice(&buf[..n]);
    u64::from_le_bytes(w)
}

// ---------------------------------------------------------------------------------------
// Parsing what the guest printed on the serial port.

/// Why a guest run's serial output could not be used.
#[derive(Debug, PartialEq, Eq)]
pub enum GuestOutputError {
    /// No `PROBE-RESULT` line: the guest did not finish.
    NoResult,
    /// The guest reported a failure.
    Failed(String),
    /// A line the benchmark needs is missing.
    MissingLine(&'static str),
    /// The markers are out of order or repeated.
    Markers(&'static str),
    /// A `key=value` field is missing from a line.
    MissingField {
        line: &'static str,
        key: &'static str,
    },
    /// A field is not what it should be.
    BadField {
        line: &'static str,
        key: &'static str,
        value: String,
    },
}

impl std::fmt::Display for GuestOutputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoResult => write!(f, "guest output has no PROBE-RESULT line (did it finish?)"),
            Self::Failed(l) => write!(f, "guest reported a failure: {l}"),
            Self::MissingLine(p) => write!(f, "guest output has no `{p}` line"),
            Self::Markers(why) => write!(f, "guest markers: {why}"),
            Self::MissingField { line, key } => write!(f, "`{line}` line has no `{key}=` field"),
            Self::BadField { line, key, value } => {
                write!(f, "`{line}` line: bad value for `{key}`: {value:?}")
            }
        }
    }
}

impl std::error::Error for GuestOutputError {}

/// One serial line and when this process read it.
#[derive(Debug, Clone)]
pub struct TimedLine {
    pub at: Instant,
    pub text: String,
}

const START: &str = "PROBE-BENCH: start";
const END: &str = "PROBE-BENCH: end";
const BLK_LINE: &str = "PROBE-BLKBENCH:";
const VSOCK_LINE: &str = "PROBE-VSOCKBENCH:";

/// Checks the `PROBE-RESULT` line for `scenario`.
fn check_result(lines: &[TimedLine], scenario: &str) -> Result<(), GuestOutputError> {
    let r = lines
        .iter()
        .find_map(|l| l.text.strip_prefix("PROBE-RESULT: "))
        .ok_or(GuestOutputError::NoResult)?;
    if r.trim_end() != format!("PASS {scenario}") {
        return Err(GuestOutputError::Failed(r.trim_end().to_string()));
    }
    Ok(())
}

/// The numeric `key=` field of the first line starting with `prefix`.
fn field(
    lines: &[TimedLine],
    prefix: &'static str,
    key: &'static str,
) -> Result<u64, GuestOutputError> {
    let line = lines
        .iter()
        .find_map(|l| l.text.strip_prefix(prefix))
        .ok_or(GuestOutputError::MissingLine(prefix))?;
    let value = line
        .split_whitespace()
        .find_map(|t| t.strip_prefix(key)?.strip_prefix('='))
        .ok_or(GuestOutputError::MissingField { line: prefix, key })?;
    let bad = || GuestOutputError::BadField {
        line: prefix,
        key,
        value: value.to_string(),
    };
    match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).map_err(|_| bad()),
        None => value.parse().map_err(|_| bad()),
    }
}

/// What one `probe=blkbench` run reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlkGuest {
    /// Host wall time between the start and end markers.
    pub wall: Duration,
    pub ops: u64,
    pub bytes: u64,
    pub tsc: u64,
    pub xor: u64,
}

/// Parses a `probe=blkbench` run's serial output (lines with their arrival times).
///
/// Timing: the guest prints the start marker, then submits its first request; when it has
/// the last completion it prints the end marker. The host's clock is read when each marker's
/// newline arrives, so the interval is the guest's work plus the serial output of the end
/// marker (17 bytes, each a VM exit of some 20-40 us on PVM: well under 1 ms), which the
/// default sizes keep far below 1% of a run.
pub fn blk_result(lines: &[TimedLine], mode: &str) -> Result<BlkGuest, GuestOutputError> {
    check_result(lines, "blkbench")?;
    let pos = |m: &str| lines.iter().position(|l| l.text.trim_end() == m);
    let count = |m: &str| lines.iter().filter(|l| l.text.trim_end() == m).count();
    let start = pos(START).ok_or(GuestOutputError::MissingLine(START))?;
    let end = pos(END).ok_or(GuestOutputError::MissingLine(END))?;
    if count(START) != 1 || count(END) != 1 {
        return Err(GuestOutputError::Markers("a marker appears more than once"));
    }
    if end < start {
        return Err(GuestOutputError::Markers("end before start"));
    }
    let line = lines
        .iter()
        .find_map(|l| l.text.strip_prefix(BLK_LINE))
        .ok_or(GuestOutputError::MissingLine(BLK_LINE))?;
    let got_mode = line
        .split_whitespace()
        .find_map(|t| t.strip_prefix("mode="))
        .ok_or(GuestOutputError::MissingField {
            line: BLK_LINE,
            key: "mode",
        })?;
    if got_mode != mode {
        return Err(GuestOutputError::BadField {
            line: BLK_LINE,
            key: "mode",
            value: got_mode.to_string(),
        });
    }
    Ok(BlkGuest {
        wall: lines[end].at.duration_since(lines[start].at),
        ops: field(lines, BLK_LINE, "ops")?,
        bytes: field(lines, BLK_LINE, "bytes")?,
        tsc: field(lines, BLK_LINE, "tsc")?,
        xor: field(lines, BLK_LINE, "xor")?,
    })
}

/// What one `probe=vsockbench` run reported: (bytes sent, bytes received, TSC ticks).
pub fn vsock_result(lines: &[TimedLine]) -> Result<(u64, u64, u64), GuestOutputError> {
    check_result(lines, "vsockbench")?;
    Ok((
        field(lines, VSOCK_LINE, "sent")?,
        field(lines, VSOCK_LINE, "received")?,
        field(lines, VSOCK_LINE, "tsc")?,
    ))
}

// ---------------------------------------------------------------------------------------
// Running the guest.

/// A running capsa whose stdout (the guest's serial port) is read line by line, with the
/// time each line arrived, on a thread.
struct Guest {
    child: Child,
    lines: std::thread::JoinHandle<std::io::Result<Vec<TimedLine>>>,
    stderr: std::thread::JoinHandle<String>,
}

impl Guest {
    fn spawn(o: &Opts, extra: &[&str], cmdline: &str) -> anyhow::Result<Guest> {
        let mut cmd = Command::new(&o.capsa);
        cmd.args(["vm", "run", "--serial", "stdio", "--mem-mib"])
            .arg(o.mem_mib.to_string())
            .args(extra)
            .arg("--cmdline")
            .arg(format!("console=ttyS0 {cmdline}"));
        if let Some(k) = &o.kernel {
            cmd.arg("--kernel").arg(k);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("RUST_LOG")
            .spawn()
            .with_context(|| format!("spawning {}", o.capsa.display()))?;
        let out = child.stdout.take().expect("piped stdout");
        let mut err = child.stderr.take().expect("piped stderr");
        let lines = std::thread::spawn(move || {
            let mut r = BufReader::new(out);
            let mut v = Vec::new();
            loop {
                let mut s = String::new();
                if r.read_line(&mut s)? == 0 {
                    return Ok(v);
                }
                v.push(TimedLine {
                    at: Instant::now(),
                    text: s.trim_end_matches(['\n', '\r']).to_string(),
                });
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Ok(Guest {
            child,
            lines,
            stderr,
        })
    }

    /// Waits for the VM to end; its serial lines.
    fn finish(mut self) -> anyhow::Result<Vec<TimedLine>> {
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait()? {
                break s;
            }
            if start.elapsed() > GUEST_DEADLINE {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("guest still running after {GUEST_DEADLINE:?}; killed");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let lines = self.lines.join().expect("reader thread")?;
        let err = self.stderr.join().expect("stderr thread");
        if !status.success() {
            bail!(
                "capsa exited with {status}\n--- serial ---\n{}\n--- stderr ---\n{err}",
                lines
                    .iter()
                    .map(|l| l.text.as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        Ok(lines)
    }

    /// Kills the VM (after a host-side failure).
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `f` against a running guest, killing the guest if `f` fails.
fn with_guest<T>(
    g: Guest,
    f: impl FnOnce(&mut Guest) -> anyhow::Result<T>,
) -> anyhow::Result<(T, Vec<TimedLine>)> {
    let mut g = g;
    match f(&mut g) {
        Ok(v) => Ok((v, g.finish()?)),
        Err(e) => {
            g.kill();
            Err(e)
        }
    }
}

fn dump(lines: &[TimedLine]) -> String {
    lines
        .iter()
        .map(|l| l.text.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------
// Block.

/// Creates (or reuses, if it has the right size) the disk image: pseudo-random words, so
/// nothing is sparse or compressible and the `xor` check means something.
fn prepare_disk(path: &Path, bytes: u64) -> anyhow::Result<()> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == bytes) {
        return Ok(());
    }
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut w = 0u64;
    for _ in 0..bytes / buf.len() as u64 {
        for c in buf.chunks_exact_mut(8) {
            c.copy_from_slice(&pattern_word(0xd15c, w).to_le_bytes());
            w += 1;
        }
        f.write_all(&buf)?;
    }
    f.sync_all()?;
    Ok(())
}

/// Reads the whole file through the page cache.
fn warm_cache(path: &Path) -> anyhow::Result<()> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    while f.read(&mut buf)? > 0 {}
    Ok(())
}

/// Fraction of the file's pages in the page cache (mincore), if it can be told.
fn cached_fraction(path: &Path) -> Option<f64> {
    let f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len() as usize;
    if len == 0 {
        return None;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: a fresh shared read-only mapping of an open file; unmapped below, never
    // dereferenced.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    let page = 4096;
    let mut vec = vec![0u8; len.div_ceil(page)];
    // SAFETY: `p` maps `len` bytes; `vec` has one byte per page.
    let r = unsafe { libc::mincore(p, len, vec.as_mut_ptr()) };
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(p, len) };
    (r == 0).then(|| vec.iter().filter(|&&b| b & 1 != 0).count() as f64 / vec.len() as f64)
}

/// A file for reading, cached or with O_DIRECT; `None` if O_DIRECT is refused.
fn open_disk(path: &Path, direct: bool) -> anyhow::Result<Option<File>> {
    let mut oo = OpenOptions::new();
    oo.read(true);
    if direct {
        oo.custom_flags(libc::O_DIRECT);
    }
    match oo.open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("opening {}", path.display())),
    }
}

/// A `len`-byte buffer aligned for O_DIRECT, inside `v`.
fn aligned(v: &mut Vec<u8>, len: usize) -> &mut [u8] {
    v.resize(len + 4096, 0);
    let off = v.as_ptr().align_offset(4096);
    &mut v[off..off + len]
}

/// Runs `pass` (one pass of some host work, returning its xor) until at least `min` has
/// passed, so that fast host baselines are not timed over a few milliseconds. Returns the
/// number of passes, the total time and the xor (every pass must give the same).
fn repeat(
    min: Duration,
    mut pass: impl FnMut() -> anyhow::Result<u64>,
) -> anyhow::Result<(u64, Duration, u64)> {
    let t = Instant::now();
    let xor = pass()?;
    let mut n = 1;
    while t.elapsed() < min {
        ensure!(pass()? == xor, "host passes over the same data differ");
        n += 1;
    }
    Ok((n, t.elapsed(), xor))
}

/// The host's TSC rate, from RDTSC against the monotonic clock across `d`.
fn host_tsc_hz(d: Duration) -> f64 {
    // SAFETY: RDTSC has no preconditions on x86_64.
    let (c0, t0) = (unsafe { core::arch::x86_64::_rdtsc() }, Instant::now());
    std::thread::sleep(d);
    // SAFETY: as above.
    let (c1, t1) = (unsafe { core::arch::x86_64::_rdtsc() }, Instant::now());
    (c1 - c0) as f64 / t1.duration_since(t0).as_secs_f64()
}

/// Host random reads: the guest's offsets, in its order, one `pread` at a time.
fn host_rand(f: &File, blocks: u64, bs: u64, ops: u64, seed: u64) -> anyhow::Result<u64> {
    let mut v = Vec::new();
    let buf = aligned(&mut v, bs as usize);
    let mut xor = 0;
    for i in 0..ops {
        let off = (pattern_word(seed, i) % blocks) * bs;
        f.read_exact_at(buf, off)?;
        xor ^= first_word(buf);
    }
    Ok(xor)
}

/// Host sequential read of `bytes` in `req`-byte `pread`s.
fn host_seq(f: &File, bytes: u64, req: u64) -> anyhow::Result<u64> {
    let mut v = Vec::new();
    let buf = aligned(&mut v, req as usize);
    let mut xor = 0;
    let mut off = 0;
    while off < bytes {
        let n = req.min(bytes - off) as usize;
        f.read_exact_at(&mut buf[..n], off)?;
        for c in buf[..n].chunks(CHECK_STRIDE) {
            xor ^= first_word(c);
        }
        off += n as u64;
    }
    Ok(xor)
}

fn guest_blk(o: &Opts, mode: &str, params: &str) -> anyhow::Result<BlkGuest> {
    let disk = format!("{},ro", o.disk.display());
    let g = Guest::spawn(
        o,
        &["--disk", &disk],
        &format!(
            "probe=blkbench bench.mode={mode} bench.seed={} {params}",
            o.seed
        ),
    )?;
    let lines = g.finish()?;
    blk_result(&lines, mode).with_context(|| format!("guest output:\n{}", dump(&lines)))
}

// ---------------------------------------------------------------------------------------
// vsock.

/// A guest vsock transfer: its host-timed duration.
type GuestXfer = fn(&Opts, &Path, u64) -> anyhow::Result<Duration>;

/// Host-native baseline: `bytes` through a Unix socket pair between two threads.
fn host_uds(bytes: u64) -> anyhow::Result<Duration> {
    let (mut a, mut b) = UnixStream::pair()?;
    let t = Instant::now();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        send_bytes(&mut a, bytes)?;
        a.shutdown(Shutdown::Write)
    });
    let got = sink(&mut b)?;
    writer.join().expect("writer thread")?;
    let d = t.elapsed();
    ensure!(got == bytes, "socket pair moved {got} of {bytes} bytes");
    Ok(d)
}

fn send_bytes(s: &mut UnixStream, bytes: u64) -> std::io::Result<()> {
    let buf = vec![0x5au8; SOCK_CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(SOCK_CHUNK as u64) as usize;
        s.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Reads until EOF; the byte count.
fn sink(s: &mut UnixStream) -> std::io::Result<u64> {
    let mut buf = vec![0u8; SOCK_CHUNK];
    let mut got = 0;
    loop {
        match s.read(&mut buf)? {
            0 => return Ok(got),
            n => got += n as u64,
        }
    }
}

fn vsock_args(uds: &Path) -> Vec<String> {
    vec![
        "--vsock-cid".into(),
        GUEST_CID.into(),
        "--vsock-uds".into(),
        uds.display().to_string(),
    ]
}

/// Guest to host: the guest connects to host port HOST_PORT and sends `bytes`.
fn guest_tx(o: &Opts, dir: &Path, bytes: u64) -> anyhow::Result<Duration> {
    let uds = dir.join("tx.sock");
    let port_path = PathBuf::from(format!("{}_{HOST_PORT}", uds.display()));
    let _ = std::fs::remove_file(&port_path);
    let listener = UnixListener::bind(&port_path)?;
    listener.set_nonblocking(true)?;
    let args = vsock_args(&uds);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let g = Guest::spawn(
        o,
        &args,
        &format!(
            "probe=vsockbench vsock.connect={HOST_PORT}:{bytes}:0 vsock.pkt={} vsock.rxbuf={}",
            o.vsock_pkt, o.vsock_rxbuf
        ),
    )?;
    let (d, lines) = with_guest(g, |g| {
        let start = Instant::now();
        let mut s = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if let Some(st) = g.child.try_wait()? {
                        bail!("capsa exited ({st}) before the guest connected");
                    }
                    ensure!(start.elapsed() < GUEST_DEADLINE, "no guest connection");
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let t = Instant::now();
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(GUEST_DEADLINE))?;
        let got = sink(&mut s)?;
        let d = t.elapsed();
        ensure!(got == bytes, "host got {got} of the guest's {bytes} bytes");
        Ok(d)
    })?;
    let (sent, _, _) = vsock_result(&lines).with_context(|| dump(&lines))?;
    ensure!(sent == bytes, "guest says it sent {sent} of {bytes} bytes");
    Ok(d)
}

/// Host to guest: this side connects to guest port GUEST_PORT and sends `bytes`.
fn guest_rx(o: &Opts, dir: &Path, bytes: u64) -> anyhow::Result<Duration> {
    let uds = dir.join("rx.sock");
    let _ = std::fs::remove_file(&uds);
    let args = vsock_args(&uds);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let g = Guest::spawn(
        o,
        &args,
        &format!(
            "probe=vsockbench vsock.listen={GUEST_PORT} vsock.accept=1 vsock.pkt={} vsock.rxbuf={}",
            o.vsock_pkt, o.vsock_rxbuf
        ),
    )?;
    let (d, lines) = with_guest(g, |g| {
        let start = Instant::now();
        while !uds.exists() {
            if let Some(st) = g.child.try_wait()? {
                bail!("capsa exited ({st}) before creating {}", uds.display());
            }
            ensure!(start.elapsed() < GUEST_DEADLINE, "no {}", uds.display());
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut s = UnixStream::connect(&uds)?;
        s.set_read_timeout(Some(GUEST_DEADLINE))?;
        s.write_all(format!("CONNECT {GUEST_PORT}\n").as_bytes())?;
        let mut reply = Vec::new();
        let mut b = [0u8; 1];
        while reply.last() != Some(&b'\n') {
            ensure!(s.read(&mut b)? == 1, "EOF during the CONNECT handshake");
            reply.push(b[0]);
        }
        ensure!(
            reply.starts_with(b"OK "),
            "CONNECT reply {:?}",
            String::from_utf8_lossy(&reply)
        );
        let t = Instant::now();
        send_bytes(&mut s, bytes)?;
        s.shutdown(Shutdown::Write)?;
        let back = sink(&mut s)?;
        let d = t.elapsed();
        ensure!(back == 0, "guest sent {back} bytes back");
        Ok(d)
    })?;
    let (_, received, _) = vsock_result(&lines).with_context(|| dump(&lines))?;
    ensure!(
        received == bytes,
        "guest says it received {received} of {bytes} bytes"
    );
    Ok(d)
}

// ---------------------------------------------------------------------------------------
// Statistics and the report.

/// Median/min/max of floating-point samples.
#[derive(Debug, Clone, Copy, Serialize)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

impl Stat {
    fn of(v: &[f64]) -> Stat {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Stat {
            median,
            min: s[0],
            max: s[n - 1],
        }
    }

    fn cell(&self, digits: usize) -> String {
        format!(
            "{:.d$} ({:.d$}-{:.d$})",
            self.median,
            self.min,
            self.max,
            d = digits
        )
    }
}

/// One guest-vs-host comparison.
#[derive(Debug, Serialize)]
struct Row {
    metric: String,
    unit: &'static str,
    guest_label: String,
    host_label: String,
    guest: Vec<f64>,
    host: Vec<f64>,
    guest_stat: Option<Stat>,
    host_stat: Option<Stat>,
    /// Per-iteration guest / host.
    ratio: Option<Stat>,
}

impl Row {
    fn new(metric: String, unit: &'static str, guest_label: String, host_label: String) -> Row {
        Row {
            metric,
            unit,
            guest_label,
            host_label,
            guest: Vec::new(),
            host: Vec::new(),
            guest_stat: None,
            host_stat: None,
            ratio: None,
        }
    }

    fn finish(&mut self) {
        if self.guest.is_empty() || self.host.is_empty() {
            return;
        }
        self.guest_stat = Some(Stat::of(&self.guest));
        self.host_stat = Some(Stat::of(&self.host));
        let r: Vec<f64> = self
            .guest
            .iter()
            .zip(&self.host)
            .map(|(g, h)| g / h)
            .collect();
        self.ratio = Some(Stat::of(&r));
    }
}

#[derive(Serialize)]
struct Report {
    machine: String,
    kvm: &'static str,
    capsa: String,
    guest: String,
    runs: usize,
    /// /proc/loadavg before and after: other work on the machine shows here.
    loadavg_before: String,
    loadavg_after: String,
    disk: String,
    disk_bytes: u64,
    page_cache_resident_before: Option<f64>,
    page_cache_resident_after: Option<f64>,
    o_direct: bool,
    rand_ops: u64,
    seq_req_bytes: u64,
    seq_depth: u64,
    vsock_bytes: u64,
    vsock_pkt: u64,
    vsock_rxbuf: u64,
    /// TSC ticks per second implied by the guest's TSC count and the host's timing of the
    /// blk runs (a cross-check of the markers: it should match the host's TSC rate).
    guest_tsc_hz: Option<Stat>,
    /// The host's TSC rate (RDTSC against the monotonic clock over 200 ms).
    host_tsc_hz: f64,
    rows: Vec<Row>,
    notes: Vec<&'static str>,
}

const NOTES: &[&str] = &[
    "ratio = capsa guest / host native, per iteration; median (min-max) over iterations",
    "guest blk timing: host clock between the guest's start/end serial markers",
    "capsa's virtio-blk backend reads through the host page cache (no O_DIRECT); the file is \
     made resident first, so `cached pread` is the like-for-like baseline",
    "host reads are synchronous pread, one at a time (queue depth 1); each host baseline \
     repeats its work until --host-min-ms (500 ms) have passed, so it is not timed over a \
     few milliseconds",
    "guest vsock packets are at most 64 KiB and its rx buffers 4 KiB, as a Linux guest's; \
     the guest advertises 64 KiB of buffer space per connection",
    "vsock: one connection, payload untouched on both ends; host baseline is a Unix socket \
     pair between two threads with the same 64 KiB reads and writes",
];

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

pub fn main(args: &[String]) -> anyhow::Result<()> {
    let o = parse_opts(args)?;
    let loadavg_before = loadavg();
    let kvm = if Path::new("/sys/module/kvm_pvm").exists() {
        "PVM (kvm_pvm: guest ring 0 emulated)"
    } else {
        "hardware KVM"
    };
    let disk_bytes = o.size_mib << 20;
    let bs = 4096u64;
    let seq_req = o.seq_req_kib << 10;
    ensure!(
        seq_req > 0 && seq_req.is_multiple_of(SECTOR),
        "--seq-req-kib must be positive"
    );
    let vsock_bytes = o.vsock_mib << 20;
    eprintln!("preparing {} ({} MiB)", o.disk.display(), o.size_mib);
    prepare_disk(&o.disk, disk_bytes)?;
    warm_cache(&o.disk)?;
    let resident_before = cached_fraction(&o.disk);
    let cached = open_disk(&o.disk, false)?.expect("cached open");
    let direct = open_disk(&o.disk, true)?;
    let blocks = disk_bytes / bs;
    let tmp = o.out.join("io-sockets");
    std::fs::create_dir_all(&tmp)?;

    let mut rows = Vec::new();
    for &d in &o.depths {
        rows.push(Row::new(
            format!("4 KiB random read, guest QD{d}"),
            "IOPS",
            format!("virtio-blk, {d} in flight"),
            "cached pread".into(),
        ));
        rows.push(Row::new(
            format!("4 KiB random read, guest QD{d}"),
            "IOPS",
            format!("virtio-blk, {d} in flight"),
            "O_DIRECT pread".into(),
        ));
    }
    let seq_name = format!("sequential read, {} KiB requests", o.seq_req_kib);
    rows.push(Row::new(
        seq_name.clone(),
        "MB/s",
        format!("virtio-blk, {} in flight", o.seq_depth),
        "cached pread".into(),
    ));
    rows.push(Row::new(
        seq_name,
        "MB/s",
        format!("virtio-blk, {} in flight", o.seq_depth),
        "O_DIRECT pread".into(),
    ));
    rows.push(Row::new(
        "vsock guest -> host".into(),
        "MB/s",
        "hybrid vsock, 1 connection".into(),
        "Unix socket pair".into(),
    ));
    rows.push(Row::new(
        "vsock host -> guest".into(),
        "MB/s",
        "hybrid vsock, 1 connection".into(),
        "Unix socket pair".into(),
    ));
    let mut tsc_hz = Vec::new();

    for run in 0..o.runs {
        eprintln!("iteration {}/{}", run + 1, o.runs);
        let iops = |n: u64, t: Duration| n as f64 / t.as_secs_f64();
        // Host random reads, once per iteration for all guest depths (the host side is
        // synchronous, so depth means nothing to it).
        let (n, t, hxor) = repeat(o.host_min, || {
            host_rand(&cached, blocks, bs, o.rand_ops, o.seed)
        })?;
        let host_cached = iops(n * o.rand_ops, t);
        let host_direct = match &direct {
            Some(f) => {
                let (n, t, dxor) =
                    repeat(o.host_min, || host_rand(f, blocks, bs, o.rand_ops, o.seed))?;
                ensure!(dxor == hxor, "O_DIRECT reads differ from cached reads");
                Some(iops(n * o.rand_ops, t))
            }
            None => None,
        };
        let mut r = 0;
        for &d in &o.depths {
            let g = guest_blk(
                &o,
                "rand",
                &format!("bench.ops={} bench.bs={bs} blk.depth={d}", o.rand_ops),
            )?;
            ensure!(
                g.xor == hxor && g.ops == o.rand_ops,
                "guest random reads differ from the host's (xor {:#x} vs {hxor:#x}, ops {})",
                g.xor,
                g.ops
            );
            tsc_hz.push(g.tsc as f64 / g.wall.as_secs_f64());
            rows[r].guest.push(iops(g.ops, g.wall));
            rows[r].host.push(host_cached);
            rows[r + 1].guest.push(iops(g.ops, g.wall));
            rows[r + 1].host.extend(host_direct);
            r += 2;
        }

        let (n, t, hxor) = repeat(o.host_min, || host_seq(&cached, disk_bytes, seq_req))?;
        let host_cached = mbps(n * disk_bytes, t);
        let host_direct = match &direct {
            Some(f) => {
                let (n, t, dxor) = repeat(o.host_min, || host_seq(f, disk_bytes, seq_req))?;
                ensure!(dxor == hxor, "O_DIRECT reads differ from cached reads");
                Some(mbps(n * disk_bytes, t))
            }
            None => None,
        };
        let g = guest_blk(
            &o,
            "seq",
            &format!("blk.req={seq_req} blk.depth={}", o.seq_depth),
        )?;
        ensure!(
            g.xor == hxor && g.bytes == disk_bytes,
            "guest sequential read differs from the host's (xor {:#x} vs {hxor:#x}, bytes {})",
            g.xor,
            g.bytes
        );
        tsc_hz.push(g.tsc as f64 / g.wall.as_secs_f64());
        rows[r].guest.push(mbps(g.bytes, g.wall));
        rows[r].host.push(host_cached);
        rows[r + 1].guest.push(mbps(g.bytes, g.wall));
        rows[r + 1].host.extend(host_direct);
        r += 2;

        for (row, guest) in [(r, guest_tx as GuestXfer), (r + 1, guest_rx)] {
            let (n, t, _) = repeat(o.host_min, || host_uds(vsock_bytes).map(|_| 0))?;
            rows[row].host.push(mbps(n * vsock_bytes, t));
            let d = guest(&o, &tmp, vsock_bytes)?;
            rows[row].guest.push(mbps(vsock_bytes, d));
        }
    }
    rows.iter_mut().for_each(Row::finish);

    let report = Report {
        machine: super::machine(),
        kvm,
        capsa: o.capsa.display().to_string(),
        guest: o
            .kernel
            .as_ref()
            .map_or("built-in probe guest".into(), |k| k.display().to_string()),
        runs: o.runs,
        loadavg_before,
        loadavg_after: loadavg(),
        disk: o.disk.display().to_string(),
        disk_bytes,
        page_cache_resident_before: resident_before,
        page_cache_resident_after: cached_fraction(&o.disk),
        o_direct: direct.is_some(),
        rand_ops: o.rand_ops,
        seq_req_bytes: seq_req,
        seq_depth: o.seq_depth,
        vsock_bytes,
        vsock_pkt: o.vsock_pkt,
        vsock_rxbuf: o.vsock_rxbuf,
        guest_tsc_hz: (!tsc_hz.is_empty()).then(|| Stat::of(&tsc_hz)),
        host_tsc_hz: host_tsc_hz(Duration::from_millis(200)),
        rows,
        notes: NOTES.to_vec(),
    };
    let md = markdown(&report);
    print!("{md}");
    std::fs::create_dir_all(&o.out)?;
    std::fs::write(o.out.join("io.md"), &md)?;
    std::fs::write(
        o.out.join("io.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    eprintln!("report: {}/io.md and io.json", o.out.display());
    Ok(())
}

fn markdown(r: &Report) -> String {
    let pct = |f: Option<f64>| f.map_or("unknown".to_string(), |f| format!("{:.0}%", f * 100.0));
    let mut md = format!(
        "# capsa I/O benchmark: probe guest vs host\n\n\
         Machine: {}; KVM: {}; guest: {}; {} iterations; load average {} before, {} \
         after.\n\n\
         Disk: {} ({} MiB), page cache residency {} before, {} after; O_DIRECT {}. \
         Random reads: {} x 4 KiB. vsock: {} MiB per transfer (guest packets {} B, rx \
         buffers {} B).\n\n\
         | metric | capsa guest | host native | guest {} | host {} | ratio guest/host |\n\
         |---|---|---|---|---|---|\n",
        r.machine,
        r.kvm,
        r.guest,
        r.runs,
        r.loadavg_before,
        r.loadavg_after,
        r.disk,
        r.disk_bytes >> 20,
        pct(r.page_cache_resident_before),
        pct(r.page_cache_resident_after),
        if r.o_direct {
            "used"
        } else {
            "refused by the filesystem (rows left empty)"
        },
        r.rand_ops,
        r.vsock_bytes >> 20,
        r.vsock_pkt,
        r.vsock_rxbuf,
        "median (min-max)",
        "median (min-max)",
    );
    for row in &r.rows {
        let dash = || "-".to_string();
        md.push_str(&format!(
            "| {} ({}) | {} | {} | {} | {} | {} |\n",
            row.metric,
            row.unit,
            row.guest_label,
            row.host_label,
            row.guest_stat.map_or_else(dash, |s| s.cell(0)),
            row.host_stat.map_or_else(dash, |s| s.cell(0)),
            row.ratio.map_or_else(dash, |s| s.cell(3)),
        ));
    }
    md.push('\n');
    for n in &r.notes {
        md.push_str(&format!("- {n}\n"));
    }
    if let Some(t) = r.guest_tsc_hz {
        md.push_str(&format!(
            "- cross-check: guest TSC ticks / host-timed interval = {:.0} MHz median \
             ({:.0}-{:.0}); the host's TSC runs at {:.0} MHz (a lower figure means the \
             host saw the end marker late)\n",
            t.median / 1e6,
            t.min / 1e6,
            t.max / 1e6,
            r.host_tsc_hz / 1e6,
        ));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &[&str]) -> Vec<TimedLine> {
        let t0 = Instant::now();
        text.iter()
            .enumerate()
            .map(|(i, s)| TimedLine {
                at: t0 + Duration::from_millis(10 * i as u64),
                text: s.to_string(),
            })
            .collect()
    }

    const GOOD: &[&str] = &[
        "capsa-probe: ring3",
        "PROBE-BENCH: start",
        "PROBE-BENCH: end",
        "PROBE-BLKBENCH: mode=rand ops=100 bytes=409600 depth=1 req=4096 tsc=12345 xor=0xbeef",
        "PROBE-RESULT: PASS blkbench",
    ];

    #[test]
    fn parses_a_good_blk_run() {
        let g = blk_result(&lines(GOOD), "rand").unwrap();
        assert_eq!(g.wall, Duration::from_millis(10));
        assert_eq!(
            (g.ops, g.bytes, g.tsc, g.xor),
            (100, 409_600, 12_345, 0xbeef)
        );
    }

    fn blk_err(text: &[&str]) -> String {
        blk_result(&lines(text), "rand").unwrap_err().to_string()
    }

    #[test]
    fn malformed_blk_output_is_a_clear_error() {
        // Truncated: the guest died mid-run.
        assert_eq!(
            blk_err(&GOOD[..3]),
            "guest output has no PROBE-RESULT line (did it finish?)"
        );
        // The guest failed.
        assert_eq!(
            blk_err(&["PROBE-RESULT: FAIL blkbench: blk: request failed"]),
            "guest reported a failure: FAIL blkbench: blk: request failed"
        );
        // A marker lost (e.g. serial noise).
        let mut v = GOOD.to_vec();
        v.remove(2);
        assert_eq!(blk_err(&v), "guest output has no `PROBE-BENCH: end` line");
        // Markers swapped.
        let mut v = GOOD.to_vec();
        v.swap(1, 2);
        assert_eq!(blk_err(&v), "guest markers: end before start");
        // A repeated marker.
        let mut v = GOOD.to_vec();
        v.insert(2, "PROBE-BENCH: start");
        assert_eq!(
            blk_err(&v),
            "guest markers: a marker appears more than once"
        );
        // No summary line.
        let mut v = GOOD.to_vec();
        v.remove(3);
        assert_eq!(blk_err(&v), "guest output has no `PROBE-BLKBENCH:` line");
        // A missing, a garbled and a truncated field.
        let mut v = GOOD.to_vec();
        v[3] = "PROBE-BLKBENCH: mode=rand ops=100 bytes=409600 xor=0x1";
        assert_eq!(blk_err(&v), "`PROBE-BLKBENCH:` line has no `tsc=` field");
        v[3] = "PROBE-BLKBENCH: mode=rand ops=1x0 bytes=409600 tsc=1 xor=0x1";
        assert_eq!(
            blk_err(&v),
            "`PROBE-BLKBENCH:` line: bad value for `ops`: \"1x0\""
        );
        v[3] = "PROBE-BLKBENCH: mode=rand ops=100 bytes=409600 tsc=1 xor=0x~";
        assert_eq!(
            blk_err(&v),
            "`PROBE-BLKBENCH:` line: bad value for `xor`: \"0x~\""
        );
        // The wrong mode.
        assert_eq!(
            blk_result(&lines(GOOD), "seq").unwrap_err().to_string(),
            "`PROBE-BLKBENCH:` line: bad value for `mode`: \"rand\""
        );
    }

    #[test]
    fn malformed_vsock_output_is_a_clear_error() {
        let good = [
            "PROBE-VSOCKBENCH: sent=10 received=0 tsc=99",
            "PROBE-RESULT: PASS vsockbench",
        ];
        assert_eq!(vsock_result(&lines(&good)).unwrap(), (10, 0, 99));
        assert_eq!(
            vsock_result(&lines(&good[1..])).unwrap_err().to_string(),
            "guest output has no `PROBE-VSOCKBENCH:` line"
        );
        assert_eq!(
            vsock_result(&lines(&[
                "PROBE-VSOCKBENCH: sent=-1 received=0 tsc=9",
                good[1]
            ]))
            .unwrap_err()
            .to_string(),
            "`PROBE-VSOCKBENCH:` line: bad value for `sent`: \"-1\""
        );
        assert_eq!(
            vsock_result(&lines(&good[..1])).unwrap_err().to_string(),
            "guest output has no PROBE-RESULT line (did it finish?)"
        );
    }

    #[test]
    fn random_offsets_use_splitmix64() {
        // SplitMix64's first output from state 0 (the reference value), which is the
        // probe's `check::pattern_word(0, 0)`.
        assert_eq!(pattern_word(0, 0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(first_word(&[1, 0, 0, 0, 0, 0, 0, 0, 9]), 1);
        assert_eq!(first_word(&[2]), 2);
    }

    #[test]
    fn stat_median_min_max() {
        let s = Stat::of(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
    }
}
