//! The bundle: config.json validation, the container's place in a pod, the VM's size, the
//! guest kernel, and the spec as the guest gets it.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::state::Role;

/// Guest memory without a memory limit in the spec, in MiB.
pub const DEFAULT_MEM_MIB: u64 = 256;
/// What the VMM process itself needs beside guest RAM (device emulation, virtio-fs
/// server, thread stacks, page tables), in MiB: a memory limit of L gives the guest
/// L - this much. Measured RSS of an idle sandbox process is about 20 MiB.
pub const VMM_OVERHEAD_MIB: u64 = 48;
/// The smallest guest capsa's guest kernel and agent are happy with, in MiB.
pub const MIN_GUEST_MIB: u64 = 64;

/// CRI (containerd) pod annotations.
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// CRI (containerd) sandbox id annotation.
pub const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// CRI-O pod annotations.
pub const CRIO_CONTAINER_TYPE: &str = "io.kubernetes.cri-o.ContainerType";
/// CRI-O sandbox id annotation.
pub const CRIO_SANDBOX_ID: &str = "io.kubernetes.cri-o.SandboxID";

/// Problems with a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The bundle directory is missing.
    #[error("bundle {0}: not a directory")]
    NotADirectory(PathBuf),
    /// config.json cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// config.json is not a valid spec.
    #[error("{path}: malformed config: {source}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Where and why.
        source: serde_json::Error,
    },
    /// ociVersion outside what capsa implements.
    #[error("unsupported ociVersion {0:?}: capsa supports runtime-spec 1.0.x to 1.2.x")]
    Version(String),
    /// No root in the spec.
    #[error("config.json has no root.path")]
    NoRoot,
    /// The rootfs is missing.
    #[error("rootfs {0}: no such directory (or disk image / block device)")]
    MissingRootfs(PathBuf),
    /// A pod member cannot bring a disk: disks cannot be added to a running VM.
    #[error(
        "rootfs {0} is a disk image or block device: only a directory can join a pod's running VM"
    )]
    BlockRootfsInPod(PathBuf),
    /// No process in the spec.
    #[error("config.json has no process")]
    NoProcess,
    /// The process has no args.
    #[error("config.json: process.args must not be empty")]
    NoArgs,
    /// A pod container without a sandbox id.
    #[error("annotation {0} says this is a pod container, but no sandbox id is given")]
    NoSandboxId(&'static str),
    /// A memory limit below what a VM needs.
    #[error("memory limit of {limit} bytes is too small for a VM: capsa needs at least {} MiB ({VMM_OVERHEAD_MIB} MiB for the VMM plus {MIN_GUEST_MIB} MiB for the guest)", VMM_OVERHEAD_MIB + MIN_GUEST_MIB)]
    MemoryTooSmall {
        /// The spec's limit.
        limit: i64,
    },
    /// No guest kernel found.
    #[error("no guest kernel: pass --kernel PATH or set CAPSA_KERNEL (build one with `bash guest-kernel/build.sh`); looked at {0}")]
    NoKernel(String),
}

/// Reads and validates `bundle/config.json`.
pub fn load(bundle: &Path) -> Result<Spec, BundleError> {
    if !bundle.is_dir() {
        return Err(BundleError::NotADirectory(bundle.to_owned()));
    }
    let path = bundle.join("config.json");
    let data = std::fs::read(&path).map_err(|source| BundleError::Read {
        path: path.clone(),
        source,
    })?;
    let spec: Spec =
        serde_json::from_slice(&data).map_err(|source| BundleError::Malformed { path, source })?;
    validate(&spec, bundle)?;
    Ok(spec)
}

/// Accepts runtime-spec 1.0.x, 1.1.x and 1.2.x (with pre-release suffixes such as
/// `1.0.2-dev`, which podman and containerd write).
pub fn version_supported(v: &str) -> bool {
    let core = v.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.parse::<u32>().is_err()) {
        return false;
    }
    parts[0] == "1" && matches!(parts[1], "0" | "1" | "2")
}

fn validate(spec: &Spec, bundle: &Path) -> Result<(), BundleError> {
    if !version_supported(spec.version()) {
        return Err(BundleError::Version(spec.version().clone()));
    }
    let rootfs = rootfs_path(spec, bundle)?;
    if !rootfs.is_dir() && block_rootfs(&rootfs).is_none() {
        return Err(BundleError::MissingRootfs(rootfs));
    }
    let process = spec.process().as_ref().ok_or(BundleError::NoProcess)?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(BundleError::NoArgs);
    }
    // A pod member's memory limit is for its cgroup in the pod's VM, not a VM size.
    if role(spec, "")?.owns_vm() {
        vm_mem_mib(spec)?;
    }
    Ok(())
}

/// Annotation naming the filesystem of a disk-image or block-device rootfs (default ext4).
pub const ROOTFS_FSTYPE: &str = "io.capsa.rootfs.fstype";

/// `Some(())` when `rootfs` is a disk image (regular file) or a block device: the VM gets
/// it over virtio-blk and the guest mounts it, instead of a virtio-fs share.
pub fn block_rootfs(rootfs: &Path) -> Option<()> {
    use std::os::unix::fs::FileTypeExt;
    let t = std::fs::metadata(rootfs).ok()?.file_type();
    (t.is_file() || t.is_block_device()).then_some(())
}

/// The filesystem type of a block rootfs.
pub fn rootfs_fstype(spec: &Spec) -> String {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(ROOTFS_FSTYPE))
        .cloned()
        .unwrap_or_else(|| "ext4".into())
}

/// `root.readonly`.
pub fn root_readonly(spec: &Spec) -> bool {
    spec.root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
}

/// Drops linux.resources.cpu from the spec the guest gets, for a container that owns its
/// VM: its vCPU threads carry those limits in the host's `vcpu` cgroup, and applying them
/// again to the container's cgroup in the guest would compound them (a 0.5 CPU quota
/// would become 0.25). Pod members keep theirs (see `guest::cgroup`).
pub fn strip_guest_cpu_limits(spec: &mut Spec) {
    if let Some(r) = spec
        .linux_mut()
        .as_mut()
        .and_then(|l| l.resources_mut().as_mut())
    {
        r.set_cpu(None);
    }
}

/// The host rootfs path (root.path, relative to the bundle).
pub fn rootfs_path(spec: &Spec, bundle: &Path) -> Result<PathBuf, BundleError> {
    let root = spec.root().as_ref().ok_or(BundleError::NoRoot)?;
    let p = root.path();
    if p.as_os_str().is_empty() {
        return Err(BundleError::NoRoot);
    }
    Ok(if p.is_absolute() {
        p.clone()
    } else {
        bundle.join(p)
    })
}

/// The container's place in a pod, from the CRI or CRI-O annotations. `id` is the
/// container's own id (a "container" naming itself as sandbox is standalone).
pub fn role(spec: &Spec, id: &str) -> Result<Role, BundleError> {
    let ann = spec.annotations().clone().unwrap_or_default();
    for (type_key, sandbox_key) in [
        (CRI_CONTAINER_TYPE, CRI_SANDBOX_ID),
        (CRIO_CONTAINER_TYPE, CRIO_SANDBOX_ID),
    ] {
        match ann.get(type_key).map(String::as_str) {
            Some("sandbox") => return Ok(Role::Sandbox),
            Some("container") => {
                let sandbox = ann
                    .get(sandbox_key)
                    .filter(|s| !s.is_empty())
                    .ok_or(BundleError::NoSandboxId(type_key))?;
                if sandbox == id {
                    return Ok(Role::Standalone);
                }
                return Ok(Role::Member {
                    sandbox: sandbox.clone(),
                });
            }
            _ => {}
        }
    }
    Ok(Role::Standalone)
}

/// Guest memory in MiB: the memory limit minus [`VMM_OVERHEAD_MIB`], or
/// [`DEFAULT_MEM_MIB`] without a limit.
pub fn vm_mem_mib(spec: &Spec) -> Result<u64, BundleError> {
    let limit = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .filter(|l| *l > 0);
    match limit {
        None => Ok(DEFAULT_MEM_MIB),
        Some(limit) => {
            let mib = (limit as u64) >> 20;
            match mib.checked_sub(VMM_OVERHEAD_MIB) {
                Some(g) if g >= MIN_GUEST_MIB => Ok(g),
                _ => Err(BundleError::MemoryTooSmall { limit }),
            }
        }
    }
}

/// Number of CPUs in a cpuset list such as `0-3,6`.
pub fn cpuset_count(list: &str) -> Option<u32> {
    let mut n = 0u32;
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                n += b.checked_sub(a)? + 1;
            }
            None => {
                part.parse::<u32>().ok()?;
                n += 1;
            }
        }
    }
    (n > 0).then_some(n)
}

/// vCPUs: enough for the CPU quota (rounded up), else the cpuset's size, else 1; at most
/// `host_cpus` and the VMM's limit.
pub fn vm_vcpus(spec: &Spec, host_cpus: u32) -> u8 {
    let cpu = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.cpu().as_ref());
    let want = cpu
        .and_then(|c| match (c.quota(), c.period()) {
            (Some(q), Some(p)) if q > 0 && p > 0 => Some((q as u64).div_ceil(p) as u32),
            _ => None,
        })
        .or_else(|| cpu.and_then(|c| c.cpus().as_deref().and_then(cpuset_count)))
        .unwrap_or(1);
    want.clamp(1, host_cpus.clamp(1, 32)) as u8
}

/// Finds the guest kernel: `flag`, then $CAPSA_KERNEL, then `vmlinux` next to the capsa
/// binary, then the newest build in ${CAPSA_CACHE:-$HOME/.cache/capsa}/kernel/*/vmlinux
/// (HOME defaults to /root for root: podman passes no HOME to the runtime).
pub fn find_kernel(flag: Option<&Path>) -> Result<PathBuf, BundleError> {
    if let Some(k) = flag {
        return Ok(k.to_owned());
    }
    if let Some(k) = std::env::var_os("CAPSA_KERNEL").filter(|k| !k.is_empty()) {
        return Ok(k.into());
    }
    let mut looked = Vec::new();
    if let Ok(exe) = std::fs::read_link("/proc/self/exe") {
        if let Some(dir) = exe.parent() {
            let k = dir.join("vmlinux");
            if k.is_file() {
                return Ok(k);
            }
            looked.push(k.display().to_string());
        }
    }
    let cache = match std::env::var_os("CAPSA_CACHE") {
        Some(c) => PathBuf::from(c),
        None => {
            let home = std::env::var_os("HOME").map(PathBuf::from).or_else(|| {
                // SAFETY: getuid has no preconditions.
                (unsafe { libc::getuid() } == 0).then(|| PathBuf::from("/root"))
            });
            match home {
                Some(h) => h.join(".cache/capsa"),
                None => return Err(BundleError::NoKernel(looked.join(", "))),
            }
        }
    };
    let dir = cache.join("kernel");
    looked.push(format!("{}/*/vmlinux", dir.display()));
    let newest = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("vmlinux"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max();
    newest
        .map(|(_, p)| p)
        .ok_or_else(|| BundleError::NoKernel(looked.join(", ")))
}

/// The spec as the guest agent gets it. Namespaces given by host path cannot be joined
/// inside a VM: a pod's containers share the VM instead, so such entries become fresh
/// namespaces; the user namespace is dropped (the VM is the isolation boundary and the
/// guest agent does not create one).
pub fn guest_spec(spec: &Spec) -> Spec {
    let mut s = spec.clone();
    if let Some(linux) = s.linux_mut() {
        if let Some(nss) = linux.namespaces_mut() {
            nss.retain(|ns| ns.typ() != LinuxNamespaceType::User);
            for ns in nss.iter_mut() {
                ns.set_path(None);
            }
        }
        linux.set_uid_mappings(None);
        linux.set_gid_mappings(None);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_json(extra: serde_json::Value) -> Spec {
        let mut base = serde_json::json!({
            "ociVersion": "1.0.2-dev",
            "root": {"path": "rootfs"},
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        });
        if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(base).unwrap()
    }

    fn bundle_with(config: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("rootfs")).unwrap();
        std::fs::write(d.path().join("config.json"), config).unwrap();
        d
    }

    #[test]
    fn versions() {
        for ok in ["1.0.0", "1.0.2-dev", "1.1.0", "1.2.0", "1.2.1+x"] {
            assert!(version_supported(ok), "{ok}");
        }
        for bad in ["", "1.3.0", "2.0.0", "0.9.0", "1.0", "x.y.z", "1.0.0.0"] {
            assert!(!version_supported(bad), "{bad}");
        }
    }

    #[test]
    fn load_reports_clear_errors() {
        let ok = serde_json::to_string(&spec_json(serde_json::json!({}))).unwrap();
        let d = bundle_with(&ok);
        load(d.path()).unwrap();

        let d = bundle_with("{\"ociVersion\": \"1.0.0\",");
        let e = load(d.path()).unwrap_err();
        assert!(matches!(e, BundleError::Malformed { .. }), "{e}");
        assert!(e.to_string().contains("malformed config"), "{e}");

        let d = bundle_with(&ok.replace("1.0.2-dev", "3.0.0"));
        let e = load(d.path()).unwrap_err().to_string();
        assert!(e.contains("unsupported ociVersion \"3.0.0\""), "{e}");

        let d = bundle_with(&ok);
        std::fs::remove_dir(d.path().join("rootfs")).unwrap();
        let e = load(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("rootfs") && e.contains("no such directory"),
            "{e}"
        );

        let e = load(Path::new("/nonexistent-bundle")).unwrap_err();
        assert!(matches!(e, BundleError::NotADirectory(_)));
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(load(d.path()), Err(BundleError::Read { .. })));
    }

    #[test]
    fn pod_roles() {
        let s = spec_json(serde_json::json!({}));
        assert_eq!(role(&s, "a").unwrap(), Role::Standalone);
        let s = spec_json(serde_json::json!({"annotations": {CRI_CONTAINER_TYPE: "sandbox"}}));
        assert_eq!(role(&s, "a").unwrap(), Role::Sandbox);
        let s = spec_json(serde_json::json!({"annotations": {
            CRI_CONTAINER_TYPE: "container", CRI_SANDBOX_ID: "pod1"}}));
        assert_eq!(
            role(&s, "a").unwrap(),
            Role::Member {
                sandbox: "pod1".into()
            }
        );
        let s = spec_json(serde_json::json!({"annotations": {
            CRIO_CONTAINER_TYPE: "container", CRIO_SANDBOX_ID: "pod2"}}));
        assert_eq!(
            role(&s, "a").unwrap(),
            Role::Member {
                sandbox: "pod2".into()
            }
        );
        let s = spec_json(serde_json::json!({"annotations": {CRIO_CONTAINER_TYPE: "container"}}));
        assert!(role(&s, "a").is_err());
    }

    #[test]
    fn vm_size() {
        let s = spec_json(serde_json::json!({}));
        assert_eq!(vm_mem_mib(&s).unwrap(), DEFAULT_MEM_MIB);
        assert_eq!(vm_vcpus(&s, 8), 1);
        let s = spec_json(serde_json::json!({"linux": {"resources": {
            "memory": {"limit": 512i64 << 20},
            "cpu": {"quota": 150000, "period": 100000}}}}));
        assert_eq!(vm_mem_mib(&s).unwrap(), 512 - VMM_OVERHEAD_MIB);
        assert_eq!(vm_vcpus(&s, 8), 2);
        assert_eq!(vm_vcpus(&s, 1), 1, "never more vCPUs than host CPUs");
        let s = spec_json(serde_json::json!({"linux": {"resources": {"cpu": {"cpus": "0-2,5"}}}}));
        assert_eq!(vm_vcpus(&s, 8), 4);
        let s = spec_json(
            serde_json::json!({"linux": {"resources": {"memory": {"limit": 64i64 << 20}}}}),
        );
        let e = vm_mem_mib(&s).unwrap_err().to_string();
        assert!(e.contains("too small for a VM"), "{e}");
        // Only a VM owner's limit sizes a VM: a pod member may have a small one.
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("rootfs")).unwrap();
        assert!(validate(&s, d.path()).is_err());
        let member = spec_json(serde_json::json!({
            "linux": {"resources": {"memory": {"limit": 64i64 << 20}}},
            "annotations": {CRI_CONTAINER_TYPE: "container", CRI_SANDBOX_ID: "pod"},
        }));
        validate(&member, d.path()).unwrap();
        assert_eq!(cpuset_count("0"), Some(1));
        assert_eq!(cpuset_count("3-1"), None);
        assert_eq!(cpuset_count(""), None);
    }

    #[test]
    fn guest_spec_drops_host_namespace_paths() {
        let s = spec_json(serde_json::json!({"linux": {"namespaces": [
            {"type": "pid"}, {"type": "network", "path": "/proc/1/ns/net"}, {"type": "user"}],
            "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}]}}));
        let g = guest_spec(&s);
        let linux = g.linux().as_ref().unwrap();
        let nss = linux.namespaces().as_ref().unwrap();
        assert_eq!(nss.len(), 2);
        assert!(nss.iter().all(|n| n.path().is_none()));
        assert!(linux.uid_mappings().is_none());
    }

    #[test]
    fn kernel_lookup_prefers_the_flag() {
        assert_eq!(
            find_kernel(Some(Path::new("/k"))).unwrap(),
            PathBuf::from("/k")
        );
    }
}
