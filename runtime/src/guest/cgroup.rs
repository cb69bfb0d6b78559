//! A container's cgroup in the guest (cgroup v2, one per container under the root):
//! applying `linux.resources` and reading statistics.
//!
//! What applies here: memory (`memory.max`, `memory.low` from the reservation), pids
//! (`pids.max`) and, where the host sends them, CPU (`cpu.max`, `cpu.weight`). The host
//! leaves CPU limits out for a container that owns its VM (its vCPU threads carry them in
//! the host's `vcpu` cgroup; limiting again in the guest would compound them), and sends
//! them for a pod member, whose share of the pod's vCPUs only the guest can limit. cpusets
//! are host CPU numbers and apply to the vCPU threads on the host only; the guest has no
//! swap, so `memory.swap` is not used.

use std::path::Path;

use oci_spec::runtime::LinuxResources;

use crate::agent::protocol::Stats;

fn write(cg: &Path, file: &str, value: &str) -> Result<(), String> {
    std::fs::write(cg.join(file), value).map_err(|e| format!("cgroup {file} = {value:?}: {e}"))
}

fn limit(v: i64) -> String {
    if v > 0 {
        v.to_string()
    } else {
        "max".into()
    }
}

/// Writes the limits `r` sets into cgroup `cg`; unset fields are left as they are.
pub fn apply(cg: &Path, r: &LinuxResources) -> Result<(), String> {
    if let Some(m) = r.memory() {
        if let Some(l) = m.limit() {
            write(cg, "memory.max", &limit(l))?;
        }
        if let Some(l) = m.reservation() {
            write(cg, "memory.low", &l.max(0).to_string())?;
        }
    }
    if let Some(p) = r.pids() {
        write(cg, "pids.max", &limit(p.limit()))?;
    }
    if let Some(c) = r.cpu() {
        if c.quota().is_some() || c.period().is_some() {
            // Keep the half that is not being changed.
            let cur = std::fs::read_to_string(cg.join("cpu.max")).unwrap_or_default();
            let mut it = cur.split_whitespace();
            let (cur_q, cur_p) = (
                it.next().unwrap_or("max").to_string(),
                it.next().unwrap_or("100000").to_string(),
            );
            let q = c.quota().map(limit).unwrap_or(cur_q);
            let p = c
                .period()
                .filter(|p| *p > 0)
                .map(|p| p.to_string())
                .unwrap_or(cur_p);
            write(cg, "cpu.max", &format!("{q} {p}"))?;
        }
        if let Some(s) = c.shares().filter(|s| *s > 0) {
            let w = crate::oci::cgroup::shares_to_weight(s);
            write(cg, "cpu.weight", &w.to_string())?;
        }
    }
    Ok(())
}

fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Statistics of cgroup `cg` (missing files count as zero / no limit).
pub fn stats(cg: &Path) -> Stats {
    let text = |f: &str| std::fs::read_to_string(cg.join(f)).unwrap_or_default();
    let num = |f: &str| text(f).trim().parse().unwrap_or(0);
    let max = |f: &str| text(f).trim().parse().ok();
    let cpu = text("cpu.stat");
    let mem_events = text("memory.events");
    Stats {
        cpu_usage_usec: keyed(&cpu, "usage_usec").unwrap_or(0),
        cpu_user_usec: keyed(&cpu, "user_usec").unwrap_or(0),
        cpu_system_usec: keyed(&cpu, "system_usec").unwrap_or(0),
        cpu_periods: keyed(&cpu, "nr_periods").unwrap_or(0),
        cpu_throttled_periods: keyed(&cpu, "nr_throttled").unwrap_or(0),
        cpu_throttled_usec: keyed(&cpu, "throttled_usec").unwrap_or(0),
        memory_current: num("memory.current"),
        memory_max: max("memory.max"),
        memory_peak: num("memory.peak"),
        memory_failcnt: keyed(&mem_events, "max").unwrap_or(0),
        oom_kills: keyed(&mem_events, "oom_kill").unwrap_or(0),
        pids_current: num("pids.current"),
        pids_max: max("pids.max"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(d: &Path, f: &str) -> String {
        std::fs::read_to_string(d.join(f)).unwrap()
    }

    /// The files as the guest kernel's cgroup v2 has them, in a plain directory.
    #[test]
    fn limits_land_in_the_v2_files() {
        let d = tempfile::tempdir().unwrap();
        let cg = d.path();
        std::fs::write(cg.join("cpu.max"), "max 100000\n").unwrap();
        let r: LinuxResources = serde_json::from_value(serde_json::json!({
            "memory": {"limit": 64 << 20, "reservation": 32 << 20},
            "pids": {"limit": 20},
            "cpu": {"quota": 25000, "shares": 1024},
        }))
        .unwrap();
        apply(cg, &r).unwrap();
        assert_eq!(read(cg, "memory.max"), (64 << 20).to_string());
        assert_eq!(read(cg, "memory.low"), (32 << 20).to_string());
        assert_eq!(read(cg, "pids.max"), "20");
        assert_eq!(read(cg, "cpu.max"), "25000 100000");
        assert_eq!(read(cg, "cpu.weight"), "39");
        // An update changing the period only keeps the quota; -1 lifts limits.
        let r: LinuxResources = serde_json::from_value(serde_json::json!({
            "cpu": {"period": 50000}, "memory": {"limit": -1}, "pids": {"limit": 0},
        }))
        .unwrap();
        apply(cg, &r).unwrap();
        assert_eq!(read(cg, "cpu.max"), "25000 50000");
        assert_eq!(read(cg, "memory.max"), "max");
        assert_eq!(read(cg, "pids.max"), "max");
        // What the host strips for a VM owner is not written.
        let mut spec: oci_spec::runtime::Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"resources": {"cpu": {"quota": 1000}, "pids": {"limit": 9}}},
        }))
        .unwrap();
        crate::oci::bundle::strip_guest_cpu_limits(&mut spec);
        let r = spec.linux().clone().unwrap().resources().clone().unwrap();
        apply(cg, &r).unwrap();
        assert_eq!(read(cg, "cpu.max"), "25000 50000");
        assert_eq!(read(cg, "pids.max"), "9");
        // A missing cgroup is an error naming the file.
        let e = apply(&cg.join("gone"), &r).unwrap_err();
        assert!(e.contains("pids.max"), "{e}");
    }

    #[test]
    fn stats_from_the_v2_files() {
        let d = tempfile::tempdir().unwrap();
        let cg = d.path();
        let w = |f: &str, v: &str| std::fs::write(cg.join(f), v).unwrap();
        w(
            "cpu.stat",
            "usage_usec 900\nuser_usec 600\nsystem_usec 300\nnr_periods 10\nnr_throttled 2\nthrottled_usec 77\n",
        );
        w("memory.current", "4096\n");
        w("memory.max", "max\n");
        w("memory.peak", "8192\n");
        w(
            "memory.events",
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n",
        );
        w("pids.current", "2\n");
        w("pids.max", "50\n");
        let s = stats(cg);
        assert_eq!(
            s,
            Stats {
                cpu_usage_usec: 900,
                cpu_user_usec: 600,
                cpu_system_usec: 300,
                cpu_periods: 10,
                cpu_throttled_periods: 2,
                cpu_throttled_usec: 77,
                memory_current: 4096,
                memory_max: None,
                memory_peak: 8192,
                memory_failcnt: 3,
                oom_kills: 1,
                pids_current: 2,
                pids_max: Some(50),
            }
        );
    }
}
