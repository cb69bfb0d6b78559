//! `update` (change a container's limits) and `events` (its statistics and OOM kills).
//!
//! Where a limit goes, given that the container runs in a VM:
//! - CPU quota, period, shares and cpuset of a container that owns its VM: the host's
//!   `vcpu` cgroup (its vCPU threads). The number of vCPUs is fixed at boot.
//! - CPU limits of a pod member: its cgroup in the guest (its share of the pod's vCPUs).
//! - memory and pids limits: the container's cgroup in the guest. The VM's RAM is fixed
//!   at boot (no memory hotplug), so the sandbox's host memory limit stays as created;
//!   a lower limit takes effect in the guest, a higher one is capped by the VM's RAM.
//!
//! `events` reports the container's cgroup in the guest, in runc's event JSON
//! (`{"type":"stats","id":...,"data":{"cpu":...,"memory":...,"pids":...}}`).

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use oci_spec::runtime::LinuxResources;

use super::cgroup;
use super::cli::{EventsArgs, GlobalArgs, UpdateArgs};
use super::state::{Record, StateDir, Status};
use crate::agent::client::AgentClient;
use crate::agent::protocol::{Request, Response, Stats};

/// Parses a byte count: a number with an optional k/m/g/t suffix (binary, as runc's
/// units.RAMInBytes), or -1.
pub fn parse_bytes(s: &str) -> anyhow::Result<i64> {
    let t = s.trim().to_ascii_lowercase();
    if t == "-1" {
        return Ok(-1);
    }
    let t = t.strip_suffix('b').unwrap_or(&t);
    let t = t.strip_suffix('i').unwrap_or(t);
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k')) => (&t[..i], 1i64 << 10),
        Some((i, 'm')) => (&t[..i], 1 << 20),
        Some((i, 'g')) => (&t[..i], 1 << 30),
        Some((i, 't')) => (&t[..i], 1 << 40),
        _ => (t, 1),
    };
    let n: f64 = num
        .trim()
        .parse()
        .with_context(|| format!("invalid size {s:?}"))?;
    if n < 0.0 {
        bail!("invalid size {s:?}");
    }
    Ok((n * mult as f64) as i64)
}

/// Parses a duration: `500ms`, `5s`, `1m`, `1h`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, "s"),
    };
    let n: f64 = num
        .parse()
        .with_context(|| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => bail!("invalid duration {s:?}: use ms, s, m or h"),
    };
    if !(secs > 0.0 && secs.is_finite()) {
        bail!("invalid duration {s:?}: must be positive");
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The resources an `update` asks for: the `--resources` JSON, then the single flags.
pub fn requested(a: &UpdateArgs) -> anyhow::Result<LinuxResources> {
    let mut v = match &a.resources {
        Some(p) => {
            let mut data = String::new();
            if p.as_os_str() == "-" {
                std::io::stdin().read_to_string(&mut data)?;
            } else {
                data = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
            }
            let v: serde_json::Value =
                serde_json::from_str(&data).context("malformed resources JSON")?;
            if !v.is_object() {
                bail!("malformed resources JSON: not an object");
            }
            v
        }
        None => serde_json::json!({}),
    };
    let mut set = |section: &str, key: &str, val: serde_json::Value| {
        if !v[section].is_object() {
            v[section] = serde_json::json!({});
        }
        v[section][key] = val;
    };
    if let Some(m) = &a.memory {
        set("memory", "limit", parse_bytes(m)?.into());
    }
    if let Some(m) = &a.memory_reservation {
        set("memory", "reservation", parse_bytes(m)?.into());
    }
    if let Some(m) = &a.memory_swap {
        set("memory", "swap", parse_bytes(m)?.into());
    }
    if let Some(p) = a.cpu_period {
        set("cpu", "period", p.into());
    }
    if let Some(q) = a.cpu_quota {
        set("cpu", "quota", q.into());
    }
    if let Some(s) = a.cpu_share {
        set("cpu", "shares", s.into());
    }
    if let Some(c) = &a.cpuset_cpus {
        set("cpu", "cpus", c.clone().into());
    }
    if let Some(m) = &a.cpuset_mems {
        set("cpu", "mems", m.clone().into());
    }
    if let Some(p) = a.pids_limit {
        set("pids", "limit", p.into());
    }
    if a.blkio_weight.is_some() {
        set("blockIO", "weight", a.blkio_weight.into());
    }
    serde_json::from_value(v).context("malformed resources JSON")
}

fn running(g: &GlobalArgs, id: &str) -> anyhow::Result<(StateDir, Record)> {
    let dir = StateDir::open(&g.root(), id)?;
    let rec = dir.read()?;
    match rec.effective_status() {
        Status::Created | Status::Running => Ok((dir, rec)),
        Status::Paused => bail!("container {id} is paused (its VM is frozen): resume it first"),
        Status::Creating => bail!("container {id} is still being created"),
        Status::Stopped => bail!("container not running"),
    }
}

fn agent(rec: &Record) -> anyhow::Result<AgentClient> {
    Ok(AgentClient::connect(
        &rec.vm_dir.join("vsock.sock"),
        Duration::from_secs(10),
    )?)
}

/// `update`.
pub fn update(g: &GlobalArgs, a: &UpdateArgs) -> anyhow::Result<ExitCode> {
    let mut r = requested(a)?;
    let (_, rec) = running(g, &a.id)?;
    if r.block_io().is_some() {
        bail!("blkio limits are not supported (the container's disk I/O is the VM's)");
    }
    if r.memory().as_ref().and_then(|m| m.swap()).is_some() {
        // runc requires swap >= memory; the guest has no swap to limit.
        tracing::debug!("memory.swap ignored: the guest has no swap");
    }
    if rec.role.owns_vm() {
        let res = cgroup::Resources::from_linux(Some(&r));
        let cpu_change = res.cpu_quota.is_some()
            || res.cpu_period.is_some()
            || res.cpu_shares.is_some()
            || res.cpus.is_some()
            || res.mems.is_some();
        if cpu_change {
            let cg = rec
                .cgroups
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("container {} has no cgroups", a.id))?;
            cgroup::update_vcpu(cg, &res)?;
        }
        r.set_cpu(None);
    } else if let Some(c) = r.cpu() {
        if c.cpus().is_some() || c.mems().is_some() {
            bail!("a pod member cannot have its own cpuset: its processes run on the pod's vCPUs (set it on the sandbox container)");
        }
    }
    let guest_change = r.memory().is_some() || r.pids().is_some() || r.cpu().is_some();
    if guest_change {
        agent(&rec)?.call_ok(&Request::Update {
            id: a.id.clone(),
            resources: Box::new(r),
        })?;
    }
    Ok(ExitCode::SUCCESS)
}

/// One runc-style stats event.
pub fn stats_event(id: &str, s: &Stats) -> serde_json::Value {
    serde_json::json!({
        "type": "stats",
        "id": id,
        "data": {
            "cpu": {
                "usage": {
                    "total": s.cpu_usage_usec * 1000,
                    "kernel": s.cpu_system_usec * 1000,
                    "user": s.cpu_user_usec * 1000,
                },
                "throttling": {
                    "periods": s.cpu_periods,
                    "throttled_periods": s.cpu_throttled_periods,
                    "throttled_time": s.cpu_throttled_usec * 1000,
                },
            },
            "memory": {
                "usage": {
                    "limit": s.memory_max.unwrap_or(u64::MAX),
                    "usage": s.memory_current,
                    "max": s.memory_peak,
                    "failcnt": s.memory_failcnt,
                },
            },
            "pids": {
                "current": s.pids_current,
                "limit": s.pids_max.unwrap_or(0),
            },
            "blkio": {},
            "hugetlb": {},
        },
    })
}

fn fetch(rec: &Record) -> anyhow::Result<Stats> {
    match agent(rec)?.call(&Request::Stats { id: rec.id.clone() })? {
        Response::Stats(s) => Ok(*s),
        other => bail!("unexpected agent reply: {other:?}"),
    }
}

/// `events`: with `--stats` one stats event; else one every `--interval`, plus an `oom`
/// event whenever the OOM killer struck in the container, until the container stops.
pub fn events(g: &GlobalArgs, a: &EventsArgs) -> anyhow::Result<ExitCode> {
    let interval = parse_duration(&a.interval)?;
    let (dir, rec) = running(g, &a.id)?;
    let mut out = std::io::stdout().lock();
    let mut ooms = None;
    loop {
        let s = match fetch(&rec) {
            Ok(s) => s,
            // The container (or its VM) went away meanwhile: the stream ends.
            Err(_) if !a.stats && stopped(&dir) => return Ok(ExitCode::SUCCESS),
            Err(e) => return Err(e),
        };
        if ooms.is_some_and(|n| s.oom_kills > n) {
            let ev = serde_json::json!({"type": "oom", "id": a.id});
            writeln!(out, "{ev}")?;
        }
        ooms = Some(s.oom_kills);
        writeln!(out, "{}", stats_event(&a.id, &s))?;
        out.flush()?;
        if a.stats {
            return Ok(ExitCode::SUCCESS);
        }
        let mut slept = Duration::ZERO;
        while slept < interval {
            let step = (interval - slept).min(Duration::from_millis(200));
            std::thread::sleep(step);
            slept += step;
            if stopped(&dir) {
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}

fn stopped(dir: &StateDir) -> bool {
    dir.read()
        .map(|r| r.effective_status() == Status::Stopped)
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert_eq!(parse_bytes("64k").unwrap(), 64 << 10);
        assert_eq!(parse_bytes("256m").unwrap(), 256 << 20);
        assert_eq!(parse_bytes("256MB").unwrap(), 256 << 20);
        assert_eq!(parse_bytes("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("-1").unwrap(), -1);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("-5m").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn flags_override_the_resources_file() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("r.json");
        std::fs::write(
            &f,
            r#"{"memory": {"limit": 1000000}, "cpu": {"quota": 20000, "period": 100000}}"#,
        )
        .unwrap();
        let a = UpdateArgs {
            id: "c1".into(),
            resources: Some(f.clone()),
            memory: Some("64m".into()),
            pids_limit: Some(5),
            ..Default::default()
        };
        let r = requested(&a).unwrap();
        let m = r.memory().unwrap();
        assert_eq!(m.limit(), Some(64 << 20));
        let c = r.cpu().clone().unwrap();
        assert_eq!((c.quota(), c.period()), (Some(20000), Some(100000)));
        assert_eq!(r.pids().unwrap().limit(), 5);
        std::fs::write(&f, "[1]").unwrap();
        let a = UpdateArgs {
            id: "c1".into(),
            resources: Some(f),
            ..Default::default()
        };
        let e = requested(&a).unwrap_err().to_string();
        assert!(e.contains("malformed resources JSON"), "{e}");
    }

    #[test]
    fn stats_events_look_like_runcs() {
        let s = Stats {
            cpu_usage_usec: 3,
            cpu_user_usec: 2,
            cpu_system_usec: 1,
            memory_current: 4096,
            memory_max: Some(1 << 20),
            pids_current: 2,
            ..Default::default()
        };
        let v = stats_event("c1", &s);
        assert_eq!(v["type"], "stats");
        assert_eq!(v["id"], "c1");
        assert_eq!(v["data"]["cpu"]["usage"]["total"], 3000);
        assert_eq!(v["data"]["cpu"]["usage"]["user"], 2000);
        assert_eq!(v["data"]["memory"]["usage"]["usage"], 4096);
        assert_eq!(v["data"]["memory"]["usage"]["limit"], 1 << 20);
        assert_eq!(v["data"]["pids"]["current"], 2);
        assert_eq!(v["data"]["pids"]["limit"], 0, "0: no limit, as runc");
        let v = stats_event("c1", &Stats::default());
        assert_eq!(v["data"]["memory"]["usage"]["limit"], u64::MAX);
    }
}
