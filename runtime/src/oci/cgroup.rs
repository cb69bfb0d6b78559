//! Host cgroups of a sandbox, laid out as Kata Containers does:
//!
//! ```text
//! <cgroupsPath or /capsa/<id>>        the sandbox process (VMM, devices, agent relays);
//!                                     memory limit
//! <cgroupsPath or /capsa/<id>>/vcpu   the vCPU threads only; CPU quota/period/shares
//!                                     and cpuset; frozen by `pause`
//! ```
//!
//! cgroup v1 (one hierarchy per controller; `tasks` takes thread ids, so vCPU threads can
//! sit in a child of their process's cgroup) and v2 (the `vcpu` child is a threaded
//! cgroup; thread ids go to `cgroup.threads`). On a hybrid host (v1 controllers plus a
//! cgroup2 mount without controllers, as on these machines) the v1 hierarchies are used.
//!
//! A relative cgroupsPath is taken relative to each hierarchy's root, not to the caller's
//! own cgroup as runc does: the sandbox's placement does not depend on where the runtime
//! was started. A systemd-style path (`slice:prefix:name`) maps to
//! `<slice path>/<prefix>-<name>.scope` on cgroupfs; capsa creates no systemd unit.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cgroups::Layout;

/// Name of the vCPU child cgroup.
pub const VCPU: &str = "vcpu";

/// v1 hierarchies whose `vcpu` child gets the vCPU threads.
const V1_VCPU_CONTROLLERS: &[&str] = &["cpu", "cpuacct", "cpuset", "freezer"];

/// Errors setting up or changing cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroup file or directory operation failed.
    #[error("cgroup {path}: {what}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// No cgroup hierarchy at all.
    #[error("no cgroup hierarchy is mounted")]
    NoCgroups,
    /// A resource was asked for whose controller the host lacks.
    #[error("the {0} cgroup controller is not available on this host, but the spec sets {1}")]
    MissingController(&'static str, &'static str),
    /// The freezer did not reach the requested state in time.
    #[error("cgroup {0}: the freezer did not settle within 10 s")]
    FreezeTimeout(PathBuf),
}

fn io(path: &Path, what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CgroupError {
    let path = path.to_owned();
    let what = what.into();
    move |source| CgroupError::Io { path, what, source }
}

/// Resource settings from the spec's linux.resources.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// cpu.cfs_quota_us / cpu.max quota (microseconds per period); <= 0 means no limit.
    pub cpu_quota: Option<i64>,
    /// cpu.cfs_period_us / cpu.max period (microseconds).
    pub cpu_period: Option<u64>,
    /// cpu.shares (v1) / converted to cpu.weight (v2).
    pub cpu_shares: Option<u64>,
    /// cpuset.cpus of the vCPU threads.
    pub cpus: Option<String>,
    /// cpuset.mems of the vCPU threads.
    pub mems: Option<String>,
    /// Memory limit of the whole sandbox, bytes.
    pub memory_limit: Option<i64>,
}

impl Resources {
    /// From a spec.
    pub fn from_spec(spec: &oci_spec::runtime::Spec) -> Resources {
        Resources::from_linux(spec.linux().as_ref().and_then(|l| l.resources().as_ref()))
    }

    /// From linux.resources (or an `update`'s resources).
    pub fn from_linux(r: Option<&oci_spec::runtime::LinuxResources>) -> Resources {
        let cpu = r.and_then(|r| r.cpu().as_ref());
        Resources {
            cpu_quota: cpu.and_then(|c| c.quota()),
            cpu_period: cpu.and_then(|c| c.period()),
            cpu_shares: cpu.and_then(|c| c.shares()),
            cpus: cpu.and_then(|c| c.cpus().clone()).filter(|s| !s.is_empty()),
            mems: cpu.and_then(|c| c.mems().clone()).filter(|s| !s.is_empty()),
            memory_limit: r
                .and_then(|r| r.memory().as_ref())
                .and_then(|m| m.limit())
                .filter(|l| *l > 0),
        }
    }
}

/// The cgroups of one sandbox (kept in the state so `delete` can remove them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// cgroup v2 (else v1).
    pub v2: bool,
    /// The sandbox cgroup's directory in every hierarchy used.
    pub sandbox: Vec<PathBuf>,
    /// The vcpu cgroup's directories (empty for a pod member's cgroup).
    pub vcpu: Vec<PathBuf>,
    /// Where freezing the vCPUs happens (v1 freezer or v2 vcpu cgroup).
    pub freezer: Option<PathBuf>,
}

/// Maps a spec cgroupsPath (or none) to a path relative to the hierarchy roots.
pub fn resolve_path(cgroups_path: Option<&Path>, id: &str) -> PathBuf {
    let Some(p) = cgroups_path.filter(|p| !p.as_os_str().is_empty()) else {
        return PathBuf::from("capsa").join(id);
    };
    let s = p.to_string_lossy();
    // systemd style: "slice:prefix:name" (no leading slash).
    if !s.starts_with('/') {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() == 3 {
            let mut out = expand_slice(parts[0]);
            let unit = if parts[1].is_empty() {
                format!("{}.scope", parts[2])
            } else {
                format!("{}-{}.scope", parts[1], parts[2])
            };
            out.push(unit);
            return out;
        }
    }
    p.components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .collect()
}

/// `a-b-c.slice` -> `a.slice/a-b.slice/a-b-c.slice`; `-.slice` or empty -> root.
fn expand_slice(slice: &str) -> PathBuf {
    let name = slice.strip_suffix(".slice").unwrap_or(slice);
    let mut out = PathBuf::new();
    if name.is_empty() || name == "-" {
        return out;
    }
    let mut prefix = String::new();
    for part in name.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        out.push(format!("{prefix}.slice"));
    }
    out
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    tracing::debug!(path = %path.display(), value, "cgroup write");
    std::fs::write(path, value).map_err(io(path, format!("writing {value:?}")))
}

fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(io(path, "reading"))
}

/// Creates `rel` under the v1 `mount`, copying cpuset.cpus/mems down from the parent at
/// each new level (a v1 cpuset cgroup with empty sets accepts no task).
fn mkdir_v1(mount: &Path, rel: &Path, cpuset: bool) -> Result<PathBuf, CgroupError> {
    let mut dir = mount.to_path_buf();
    for c in rel.components() {
        let parent = dir.clone();
        dir.push(c);
        if !dir.is_dir() {
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(&dir, "creating")(e)),
            }
        }
        if cpuset {
            for f in ["cpuset.cpus", "cpuset.mems"] {
                if read(&dir.join(f))?.is_empty() {
                    write(&dir.join(f), &read(&parent.join(f))?)?;
                }
            }
        }
    }
    Ok(dir)
}

/// Controllers `dir`'s children may use (v2).
fn v2_controllers(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("cgroup.controllers"))
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// Creates the sandbox cgroup at `rel` and its `vcpu` child, and applies `res`. The
/// caller then moves the sandbox process in with [`join_process`] and each vCPU thread
/// with [`join_vcpu_thread`].
pub fn setup_sandbox(layout: &Layout, rel: &Path, res: &Resources) -> Result<Record, CgroupError> {
    setup(layout, rel, res, true)
}

/// Creates a plain cgroup at `rel` for a pod member's host process (no vcpu child, no
/// limits: the VM is the sandbox's).
pub fn setup_member(layout: &Layout, rel: &Path) -> Result<Record, CgroupError> {
    setup(layout, rel, &Resources::default(), false)
}

fn setup(layout: &Layout, rel: &Path, res: &Resources, vcpu: bool) -> Result<Record, CgroupError> {
    let pure_v2 = layout.hierarchies.iter().all(|h| h.unified);
    if pure_v2 {
        let h = layout.unified().ok_or(CgroupError::NoCgroups)?;
        return setup_v2(&h.mount, rel, res, vcpu);
    }
    let mut rec = Record {
        v2: false,
        sandbox: vec![],
        vcpu: vec![],
        freezer: None,
    };
    let result = setup_v1(layout, rel, res, vcpu, &mut rec);
    if result.is_err() {
        remove(&rec);
    }
    result.map(|_| rec)
}

fn setup_v1(
    layout: &Layout,
    rel: &Path,
    res: &Resources,
    with_vcpu: bool,
    rec: &mut Record,
) -> Result<(), CgroupError> {
    let has = |c: &str| layout.v1_mount(c).is_some();
    if (res.cpu_quota.is_some_and(|q| q > 0) || res.cpu_shares.is_some()) && !has("cpu") {
        return Err(CgroupError::MissingController(
            "cpu",
            "a CPU quota or shares",
        ));
    }
    if (res.cpus.is_some() || res.mems.is_some()) && !has("cpuset") {
        return Err(CgroupError::MissingController("cpuset", "a cpuset"));
    }
    if res.memory_limit.is_some() && !has("memory") {
        return Err(CgroupError::MissingController("memory", "a memory limit"));
    }
    for h in layout
        .hierarchies
        .iter()
        .filter(|h| !h.unified && !h.controllers.is_empty())
    {
        let cpuset = h.controllers.iter().any(|c| c == "cpuset");
        let dir = mkdir_v1(&h.mount, rel, cpuset)?;
        rec.sandbox.push(dir.clone());
        if h.controllers.iter().any(|c| c == "memory") {
            if let Some(l) = res.memory_limit {
                write(&dir.join("memory.limit_in_bytes"), &l.to_string())?;
            }
        }
        let wants_vcpu = h
            .controllers
            .iter()
            .any(|c| V1_VCPU_CONTROLLERS.contains(&c.as_str()));
        if !(with_vcpu && wants_vcpu) {
            continue;
        }
        let v = mkdir_v1(&dir, Path::new(VCPU), cpuset)?;
        rec.vcpu.push(v.clone());
        if h.controllers.iter().any(|c| c == "freezer") {
            rec.freezer = Some(v.clone());
        }
        write_vcpu_v1(&v, h.controllers.iter().any(|c| c == "cpu"), cpuset, res)?;
    }
    if rec.sandbox.is_empty() {
        return Err(CgroupError::NoCgroups);
    }
    Ok(())
}

/// Writes the CPU limits of `res` into a v1 `vcpu` cgroup of the cpu and/or cpuset
/// hierarchy; unset fields are left as they are.
fn write_vcpu_v1(v: &Path, cpu: bool, cpuset: bool, res: &Resources) -> Result<(), CgroupError> {
    if cpu {
        // Period first: the kernel checks quota against the current period.
        if let Some(p) = res.cpu_period.filter(|p| *p > 0) {
            write(&v.join("cpu.cfs_period_us"), &p.to_string())?;
        }
        if let Some(q) = res.cpu_quota {
            let q = if q > 0 { q } else { -1 };
            write(&v.join("cpu.cfs_quota_us"), &q.to_string())?;
        }
        if let Some(s) = res.cpu_shares {
            write(&v.join("cpu.shares"), &s.to_string())?;
        }
    }
    if cpuset {
        if let Some(c) = &res.cpus {
            write(&v.join("cpuset.cpus"), c)?;
        }
        if let Some(m) = &res.mems {
            write(&v.join("cpuset.mems"), m)?;
        }
    }
    Ok(())
}

/// Writes the CPU limits of `res` into the v2 `vcpu` cgroup `v` (whose parent offers
/// `avail`); unset fields are left as they are.
fn write_vcpu_v2(v: &Path, avail: &[String], res: &Resources) -> Result<(), CgroupError> {
    let has = |c: &str| avail.iter().any(|a| a == c);
    let wants_cpu = res.cpu_quota.is_some_and(|q| q > 0) || res.cpu_shares.is_some();
    if wants_cpu && !has("cpu") {
        return Err(CgroupError::MissingController(
            "cpu",
            "a CPU quota or shares",
        ));
    }
    if res.cpu_quota.is_some() || res.cpu_period.is_some_and(|p| p > 0) {
        // cpu.max holds both: keep the half that is not being set.
        let cur = std::fs::read_to_string(v.join("cpu.max")).unwrap_or_default();
        let mut it = cur.split_whitespace();
        let (cur_q, cur_p) = (it.next().unwrap_or("max"), it.next().unwrap_or("100000"));
        let quota = match res.cpu_quota {
            Some(q) if q > 0 => q.to_string(),
            Some(_) => "max".into(),
            None => cur_q.to_string(),
        };
        let period = match res.cpu_period.filter(|p| *p > 0) {
            Some(p) => p.to_string(),
            None => cur_p.to_string(),
        };
        write(&v.join("cpu.max"), &format!("{quota} {period}"))?;
    }
    if let Some(s) = res.cpu_shares {
        write(&v.join("cpu.weight"), &shares_to_weight(s).to_string())?;
    }
    if (res.cpus.is_some() || res.mems.is_some()) && !has("cpuset") {
        return Err(CgroupError::MissingController("cpuset", "a cpuset"));
    }
    if let Some(c) = &res.cpus {
        write(&v.join("cpuset.cpus"), c)?;
    }
    if let Some(m) = &res.mems {
        write(&v.join("cpuset.mems"), m)?;
    }
    Ok(())
}

/// Changes the CPU limits (quota, period, shares, cpuset) of a sandbox's vCPU threads
/// (`update`). The number of vCPUs is fixed when the VM boots.
pub fn update_vcpu(rec: &Record, res: &Resources) -> Result<(), CgroupError> {
    // Refused as a whole before anything changes.
    if !rec.v2 {
        let any = |f: &str| rec.vcpu.iter().any(|v| v.join(f).exists());
        let wants_cpu =
            res.cpu_quota.is_some() || res.cpu_period.is_some() || res.cpu_shares.is_some();
        if wants_cpu && !any("cpu.cfs_quota_us") {
            return Err(CgroupError::MissingController(
                "cpu",
                "a CPU quota or shares",
            ));
        }
        if (res.cpus.is_some() || res.mems.is_some()) && !any("cpuset.cpus") {
            return Err(CgroupError::MissingController("cpuset", "a cpuset"));
        }
    }
    for v in &rec.vcpu {
        if rec.v2 {
            let parent = v.parent().unwrap_or(v);
            write_vcpu_v2(v, &v2_controllers(parent), res)?;
        } else {
            let cpu = v.join("cpu.cfs_quota_us").exists();
            let cpuset = v.join("cpuset.cpus").exists();
            write_vcpu_v1(v, cpu, cpuset, res)?;
        }
    }
    Ok(())
}

/// cpu.shares (2..262144, default 1024) to cpu.weight (1..10000, default 100), as the
/// OCI runtimes convert it.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

fn setup_v2(
    mount: &Path,
    rel: &Path,
    res: &Resources,
    with_vcpu: bool,
) -> Result<Record, CgroupError> {
    let mut rec = Record {
        v2: true,
        sandbox: vec![],
        vcpu: vec![],
        freezer: None,
    };
    let result = (|| {
        // Create each level, enabling in its parent the controllers the sandbox needs.
        let mut dir = mount.to_path_buf();
        for c in rel.components() {
            let avail = v2_controllers(&dir);
            let enable: Vec<String> = ["cpu", "cpuset", "memory", "pids"]
                .iter()
                .filter(|c| avail.iter().any(|a| a == *c))
                .map(|c| format!("+{c}"))
                .collect();
            if !enable.is_empty() {
                // A parent with processes of its own cannot delegate domain
                // controllers; carry on, the limits below then report what is missing.
                let _ = write(&dir.join("cgroup.subtree_control"), &enable.join(" "));
            }
            dir.push(c);
            if !dir.is_dir() {
                std::fs::create_dir(&dir).map_err(io(&dir, "creating"))?;
            }
        }
        rec.sandbox.push(dir.clone());
        let avail = v2_controllers(&dir);
        let has = |c: &str| avail.iter().any(|a| a == c);
        if let Some(l) = res.memory_limit {
            if !has("memory") {
                return Err(CgroupError::MissingController("memory", "a memory limit"));
            }
            write(&dir.join("memory.max"), &l.to_string())?;
        }
        if !with_vcpu {
            return Ok(());
        }
        let v = dir.join(VCPU);
        if !v.is_dir() {
            std::fs::create_dir(&v).map_err(io(&v, "creating"))?;
        }
        rec.vcpu.push(v.clone());
        rec.freezer = Some(v.clone());
        write(&v.join("cgroup.type"), "threaded")?;
        let threaded: Vec<String> = ["cpu", "cpuset"]
            .iter()
            .filter(|c| has(c))
            .map(|c| format!("+{c}"))
            .collect();
        if !threaded.is_empty() {
            write(&dir.join("cgroup.subtree_control"), &threaded.join(" "))?;
        }
        write_vcpu_v2(&v, &avail, res)
    })();
    match result {
        Ok(()) => Ok(rec),
        Err(e) => {
            remove(&rec);
            Err(e)
        }
    }
}

/// Moves process `pid` (all its threads) into the sandbox cgroup.
pub fn join_process(rec: &Record, pid: i32) -> Result<(), CgroupError> {
    for d in &rec.sandbox {
        write(&d.join("cgroup.procs"), &pid.to_string())?;
    }
    Ok(())
}

/// Moves thread `tid` of the sandbox process into the vcpu cgroup.
pub fn join_vcpu_thread(rec: &Record, tid: i32) -> Result<(), CgroupError> {
    let file = if rec.v2 { "cgroup.threads" } else { "tasks" };
    for d in &rec.vcpu {
        write(&d.join(file), &tid.to_string())?;
    }
    Ok(())
}

/// Freezes (`true`) or thaws the vCPU threads and waits until the freezer settles.
pub fn freeze(rec: &Record, frozen: bool) -> Result<(), CgroupError> {
    let Some(dir) = &rec.freezer else {
        return Err(CgroupError::MissingController("freezer", "pause"));
    };
    let (file, value, check_file, want): (&str, &str, &str, &str) = match (rec.v2, frozen) {
        (false, true) => ("freezer.state", "FROZEN", "freezer.state", "FROZEN"),
        (false, false) => ("freezer.state", "THAWED", "freezer.state", "THAWED"),
        (true, true) => ("cgroup.freeze", "1", "cgroup.events", "frozen 1"),
        (true, false) => ("cgroup.freeze", "0", "cgroup.events", "frozen 0"),
    };
    let start = Instant::now();
    loop {
        // v1 can stay in FREEZING while a task is busy in the kernel: write again.
        write(&dir.join(file), value)?;
        let state = read(&dir.join(check_file))?;
        if state.lines().any(|l| l.trim() == want) {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(CgroupError::FreezeTimeout(dir.clone()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// True if the vCPUs are frozen.
pub fn is_frozen(rec: &Record) -> bool {
    let Some(dir) = &rec.freezer else {
        return false;
    };
    if rec.v2 {
        read(&dir.join("cgroup.freeze")).is_ok_and(|s| s == "1")
    } else {
        read(&dir.join("freezer.state")).is_ok_and(|s| s == "FROZEN")
    }
}

/// Removes the vcpu and sandbox cgroups (children first). They must be empty: the
/// sandbox process has exited. Retries briefly while the kernel finishes the exit;
/// errors are logged, not returned (delete must make progress).
pub fn remove(rec: &Record) {
    // A frozen cgroup keeps its (dying) tasks: thaw first.
    if rec.freezer.is_some() && is_frozen(rec) {
        let _ = freeze(rec, false);
    }
    for d in rec.vcpu.iter().chain(&rec.sandbox) {
        let start = Instant::now();
        loop {
            match std::fs::remove_dir(d) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if start.elapsed() < Duration::from_secs(3) => {
                    tracing::debug!(dir = %d.display(), "cgroup not removable yet: {e}");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    tracing::warn!("cannot remove cgroup {}: {e}", d.display());
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::Hierarchy;

    #[test]
    fn paths() {
        assert_eq!(resolve_path(None, "c1"), PathBuf::from("capsa/c1"));
        assert_eq!(
            resolve_path(Some(Path::new("/libpod_parent/libpod-x")), "c1"),
            PathBuf::from("libpod_parent/libpod-x")
        );
        assert_eq!(
            resolve_path(Some(Path::new("default/c1")), "c1"),
            PathBuf::from("default/c1")
        );
        assert_eq!(
            resolve_path(Some(Path::new("machine-pod.slice:crio:abc")), "c1"),
            PathBuf::from("machine.slice/machine-pod.slice/crio-abc.scope")
        );
        assert_eq!(
            resolve_path(Some(Path::new("system.slice::x")), "c1"),
            PathBuf::from("system.slice/x.scope")
        );
        assert_eq!(
            resolve_path(Some(Path::new("/../../etc")), "c1"),
            PathBuf::from("etc"),
            "no way out of the hierarchy"
        );
    }

    #[test]
    fn weights() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(0), 100);
    }

    fn cgroup_root_available(p: &Path) -> bool {
        // SAFETY: geteuid has no preconditions.
        (unsafe { libc::geteuid() }) == 0 && p.join("cgroup.procs").exists()
    }

    /// v2 on the real unified hierarchy (a hybrid host's cgroup2 mount has no controllers,
    /// but threaded cgroups, cgroup.threads and the freezer are core features).
    #[test]
    fn v2_threaded_vcpu_cgroup_on_the_real_hierarchy() {
        let layout = Layout::detect().unwrap();
        let Some(unified) = layout.unified().cloned() else {
            eprintln!("skipped: no cgroup2 mount");
            return;
        };
        if !cgroup_root_available(&unified.mount) {
            eprintln!("skipped: not root");
            return;
        }
        let only_v2 = Layout {
            hierarchies: vec![Hierarchy {
                unified: true,
                ..unified.clone()
            }],
        };
        let rel = PathBuf::from(format!("capsa-test/v2-{}", std::process::id()));
        let rec = setup_sandbox(&only_v2, &rel, &Resources::default()).unwrap();
        assert!(rec.v2);
        let vcpu = rec.vcpu[0].clone();
        assert_eq!(read(&vcpu.join("cgroup.type")).unwrap(), "threaded");
        // A child process stands in for the sandbox, its main thread for a vCPU. One process
        // only: a shell's background child would outlive `kill` and keep the cgroup busy.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        join_process(&rec, pid).unwrap();
        let procs = read(&rec.sandbox[0].join("cgroup.procs")).unwrap();
        assert!(procs.lines().any(|l| l == pid.to_string()), "{procs}");
        // Threads of a process in the domain can move into the threaded child.
        join_vcpu_thread(&rec, pid).unwrap();
        let threads = read(&vcpu.join("cgroup.threads")).unwrap();
        assert_eq!(threads, pid.to_string());
        freeze(&rec, true).unwrap();
        assert!(is_frozen(&rec));
        freeze(&rec, false).unwrap();
        assert!(!is_frozen(&rec));
        child.kill().unwrap();
        child.wait().unwrap();
        remove(&rec);
        assert!(!rec.sandbox[0].exists() && !vcpu.exists());
        let _ = std::fs::remove_dir(unified.mount.join("capsa-test"));
    }

    /// v1 on the real hierarchies, when the host has them: limits land in the files.
    #[test]
    fn v1_sandbox_and_vcpu_cgroups_on_the_real_hierarchies() {
        let layout = Layout::detect().unwrap();
        let Some(cpu) = layout.v1_mount("cpu").cloned() else {
            eprintln!("skipped: no v1 cpu hierarchy");
            return;
        };
        if !cgroup_root_available(&cpu.mount) {
            eprintln!("skipped: not root");
            return;
        }
        let rel = PathBuf::from(format!("capsa-test/v1-{}", std::process::id()));
        let res = Resources {
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            cpu_shares: Some(512),
            cpus: Some("0".into()),
            memory_limit: Some(300 << 20),
            ..Default::default()
        };
        let rec = setup_sandbox(&layout, &rel, &res).unwrap();
        let vcpu_cpu = cpu.mount.join(&rel).join(VCPU);
        assert_eq!(read(&vcpu_cpu.join("cpu.cfs_quota_us")).unwrap(), "50000");
        assert_eq!(read(&vcpu_cpu.join("cpu.cfs_period_us")).unwrap(), "100000");
        assert_eq!(read(&vcpu_cpu.join("cpu.shares")).unwrap(), "512");
        if let Some(m) = layout.v1_mount("memory") {
            let limit = read(&m.mount.join(&rel).join("memory.limit_in_bytes")).unwrap();
            assert_eq!(limit, (300u64 << 20).to_string());
        }
        if let Some(cs) = layout.v1_mount("cpuset") {
            assert_eq!(
                read(&cs.mount.join(&rel).join(VCPU).join("cpuset.cpus")).unwrap(),
                "0"
            );
        }
        // update: the new quota and shares land; the period stays.
        let upd = Resources {
            cpu_quota: Some(20_000),
            cpu_shares: Some(256),
            ..Default::default()
        };
        update_vcpu(&rec, &upd).unwrap();
        assert_eq!(read(&vcpu_cpu.join("cpu.cfs_quota_us")).unwrap(), "20000");
        assert_eq!(read(&vcpu_cpu.join("cpu.cfs_period_us")).unwrap(), "100000");
        assert_eq!(read(&vcpu_cpu.join("cpu.shares")).unwrap(), "256");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        join_process(&rec, pid).unwrap();
        join_vcpu_thread(&rec, pid).unwrap();
        let tasks = read(&vcpu_cpu.join("tasks")).unwrap();
        assert_eq!(tasks, pid.to_string());
        if rec.freezer.is_some() {
            freeze(&rec, true).unwrap();
            assert!(is_frozen(&rec));
            freeze(&rec, false).unwrap();
        }
        child.kill().unwrap();
        child.wait().unwrap();
        remove(&rec);
        for d in rec.sandbox.iter().chain(&rec.vcpu) {
            assert!(!d.exists(), "{} left behind", d.display());
        }
        for h in &layout.hierarchies {
            let _ = std::fs::remove_dir(h.mount.join("capsa-test"));
        }
    }

    /// cgroup v2 file writes, against a directory tree laid out like a cgroup2 mount
    /// (these development machines have v1 controllers and a cgroup2 mount without
    /// controllers, so the limits cannot be checked on a real v2 hierarchy here).
    #[test]
    fn v2_limits_and_updates_in_a_cgroupfs_like_tree() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let all = "cpuset cpu io memory pids";
        let sandbox = root.join("capsa/c1");
        std::fs::create_dir_all(sandbox.join(VCPU)).unwrap();
        for d in [root, &root.join("capsa"), &sandbox] {
            std::fs::write(d.join("cgroup.controllers"), all).unwrap();
        }
        std::fs::write(sandbox.join(VCPU).join("cpu.max"), "max 100000").unwrap();
        let layout = Layout {
            hierarchies: vec![Hierarchy {
                mount: root.to_path_buf(),
                controllers: vec![],
                unified: true,
            }],
        };
        let res = Resources {
            cpu_quota: Some(50_000),
            cpu_period: Some(200_000),
            cpu_shares: Some(1024),
            cpus: Some("0-1".into()),
            mems: Some("0".into()),
            memory_limit: Some(300 << 20),
        };
        let rec = setup_sandbox(&layout, Path::new("capsa/c1"), &res).unwrap();
        let r = |p: PathBuf| read(&p).unwrap();
        assert!(rec.v2);
        assert_eq!(rec.sandbox, vec![sandbox.clone()]);
        assert_eq!(rec.vcpu, vec![sandbox.join(VCPU)]);
        assert_eq!(rec.freezer, Some(sandbox.join(VCPU)));
        // Each level delegates the controllers the sandbox needs; the sandbox delegates
        // the threaded ones to vcpu.
        assert_eq!(
            r(root.join("cgroup.subtree_control")),
            "+cpu +cpuset +memory +pids"
        );
        assert_eq!(r(sandbox.join("cgroup.subtree_control")), "+cpu +cpuset");
        assert_eq!(r(sandbox.join("memory.max")), (300u64 << 20).to_string());
        let v = sandbox.join(VCPU);
        assert_eq!(r(v.join("cgroup.type")), "threaded");
        assert_eq!(r(v.join("cpu.max")), "50000 200000");
        assert_eq!(r(v.join("cpu.weight")), "39");
        assert_eq!(r(v.join("cpuset.cpus")), "0-1");
        assert_eq!(r(v.join("cpuset.mems")), "0");
        join_vcpu_thread(&rec, 4242).unwrap();
        assert_eq!(r(v.join("cgroup.threads")), "4242");
        // update: a new period keeps the quota; shares and cpus change; the rest stays.
        let upd = Resources {
            cpu_period: Some(100_000),
            cpu_shares: Some(2),
            cpus: Some("1".into()),
            ..Default::default()
        };
        update_vcpu(&rec, &upd).unwrap();
        assert_eq!(r(v.join("cpu.max")), "50000 100000");
        assert_eq!(r(v.join("cpu.weight")), "1");
        assert_eq!(r(v.join("cpuset.cpus")), "1");
        assert_eq!(r(v.join("cpuset.mems")), "0");
        // A quota of -1 lifts the limit.
        let upd = Resources {
            cpu_quota: Some(-1),
            ..Default::default()
        };
        update_vcpu(&rec, &upd).unwrap();
        assert_eq!(r(v.join("cpu.max")), "max 100000");
        // Freezing writes cgroup.freeze and waits for cgroup.events to say so.
        std::fs::write(v.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        freeze(&rec, true).unwrap();
        assert_eq!(r(v.join("cgroup.freeze")), "1");
        assert!(is_frozen(&rec));
        // Without the cpu controller a quota is refused.
        std::fs::write(sandbox.join("cgroup.controllers"), "memory pids").unwrap();
        let e = update_vcpu(
            &rec,
            &Resources {
                cpu_quota: Some(1000),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(matches!(e, CgroupError::MissingController("cpu", _)), "{e}");
    }

    #[test]
    fn missing_controllers_are_reported() {
        let layout = Layout {
            hierarchies: vec![Hierarchy {
                mount: "/nonexistent".into(),
                controllers: vec!["pids".into()],
                unified: false,
            }],
        };
        let res = Resources {
            memory_limit: Some(1 << 30),
            ..Default::default()
        };
        let e = setup_sandbox(&layout, Path::new("x"), &res).unwrap_err();
        assert!(e.to_string().contains("memory cgroup controller"), "{e}");
    }
}
