//! The guest's root filesystem for agent VMs: a small host directory, shared read-only over
//! virtio-fs, whose `/init` is this capsa binary. Removed when dropped.

use std::path::PathBuf;

use vmm::FsConfig;

/// virtio-fs tag of the guest root.
pub const ROOT_TAG: &str = "capsa-root";

/// Mount points the agent needs on its root (it mounts tmpfs/proc/sysfs on them).
const DIRS: &[&str] = &["dev", "proc", "sys", "run", "tmp", "mnt", "etc"];

/// A prepared guest root directory.
pub struct GuestRoot {
    dir: PathBuf,
}

impl GuestRoot {
    /// Creates a fresh root under the temp dir with /init = the running capsa binary
    /// (hard-linked when possible, else copied).
    pub fn create() -> std::io::Result<GuestRoot> {
        let dir = std::env::temp_dir().join(format!("capsa-guest-root-{}", std::process::id()));
        let root = GuestRoot { dir: dir.clone() };
        std::fs::create_dir_all(&dir)?;
        for d in DIRS {
            std::fs::create_dir_all(dir.join(d))?;
        }
        let me = std::fs::read_link("/proc/self/exe")?;
        let init = dir.join("init");
        if std::fs::hard_link(&me, &init).is_err() {
            std::fs::copy(&me, &init)?;
        }
        Ok(root)
    }

    /// The read-only share carrying it.
    pub fn share(&self) -> FsConfig {
        FsConfig {
            tag: ROOT_TAG.into(),
            dir: self.dir.clone(),
            read_only: true,
        }
    }
}

impl Drop for GuestRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_init_and_mount_points_and_is_removed() {
        let r = GuestRoot::create().unwrap();
        let p = r.dir.clone();
        let init = std::fs::metadata(p.join("init")).unwrap();
        let me = std::fs::metadata("/proc/self/exe").unwrap();
        assert_eq!(init.len(), me.len());
        for d in DIRS {
            assert!(p.join(d).is_dir(), "{d}");
        }
        assert_eq!(r.share().tag, ROOT_TAG);
        assert!(r.share().read_only);
        drop(r);
        assert!(!p.exists());
    }
}
