//! Host-side sharing of a container's files with its VM.
//!
//! virtio-fs shares cannot be added to a running VM, so each VM gets one share,
//! `<sandbox state>/shared` (tag [`SHARED_TAG`]), and every container of the sandbox is
//! bind-mounted under it on the host: `shared/<id>/rootfs` (the bundle's rootfs) and
//! `shared/<id>/mounts/<n>` (the sources of the spec's bind mounts, whose `source` the
//! guest then finds under [`SHARES_DIR`]). `shared` is first bind-mounted on itself and
//! made private, so these mounts do not propagate into other mount namespaces, and the
//! VMM opens it after that, so it sees every later bind. Read-only binds are read-only
//! on the host too: the guest cannot write through them even if compromised.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use super::shim::{guest_share_path, SHARED_TAG};
use super::state::Record;
use super::sys;
use crate::agent::protocol::RootfsSource;

/// Errors sharing files with the VM.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// A mount or directory operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A bind mount's source is missing.
    #[error("mount {dest}: source {src} does not exist")]
    MissingSource {
        /// Container path.
        dest: PathBuf,
        /// Host path.
        src: PathBuf,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> MountError {
    let path = path.to_owned();
    move |source| MountError::Io { what, path, source }
}

/// Creates `shared` and makes it a private mount of its own.
pub fn prepare_shared(shared: &Path) -> Result<(), MountError> {
    std::fs::create_dir_all(shared).map_err(io("creating", shared))?;
    sys::bind_mount(shared, shared).map_err(io("bind-mounting", shared))?;
    sys::make_private(shared).map_err(io("making private", shared))
}

fn bind_ro(src: &Path, dst: &Path, read_only: bool) -> Result<(), MountError> {
    sys::bind_mount(src, dst).map_err(io("bind-mounting onto", dst))?;
    if read_only {
        sys::remount_ro(dst).map_err(io("making read-only", dst))?;
    }
    Ok(())
}

/// Paths the guest has itself: bind mounts from there are left to the guest.
fn guest_native(src: &Path) -> bool {
    ["/dev", "/proc", "/sys"].iter().any(|p| src.starts_with(p))
}

/// Binds container `id`'s rootfs (unless it is a disk, see [`DISK_SERIAL`]) and its
/// bind-mount sources under `shared/<id>`; returns the spec for the guest (sources
/// rewritten, see [`super::bundle::guest_spec`]) and where its rootfs is.
pub fn share_container(
    shared: &Path,
    id: &str,
    rec: &Record,
    spec: &Spec,
) -> Result<(Spec, RootfsSource), MountError> {
    let base = shared.join(id);
    std::fs::create_dir_all(&base).map_err(io("creating", &base))?;
    let source = if super::bundle::block_rootfs(&rec.rootfs).is_some() {
        RootfsSource::Block {
            serial: DISK_SERIAL.into(),
            fstype: super::bundle::rootfs_fstype(spec),
            read_only: super::bundle::root_readonly(spec),
        }
    } else {
        let rootfs = base.join("rootfs");
        std::fs::create_dir_all(&rootfs).map_err(io("creating", &rootfs))?;
        bind_ro(&rec.rootfs, &rootfs, super::bundle::root_readonly(spec))?;
        RootfsSource::SharedDir {
            tag: SHARED_TAG.into(),
            path: format!("{id}/rootfs"),
        }
    };

    let mut spec = spec.clone();
    if let Some(mounts) = spec.mounts_mut() {
        for (i, m) in mounts.iter_mut().enumerate() {
            let opts = m.options().clone().unwrap_or_default();
            let is_bind = m.typ().as_deref() == Some("bind")
                || opts.iter().any(|o| o == "bind" || o == "rbind");
            let Some(src) = m.source().clone().filter(|_| is_bind) else {
                continue;
            };
            let src = if src.is_absolute() {
                src
            } else {
                rec.bundle.join(src)
            };
            if guest_native(&src) {
                continue;
            }
            let meta = std::fs::metadata(&src).map_err(|_| MountError::MissingSource {
                dest: m.destination().clone(),
                src: src.clone(),
            })?;
            let rel = format!("{id}/mounts/{i}");
            let host = shared.join(&rel);
            let parent = host.parent().unwrap_or(shared);
            std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
            if meta.is_dir() {
                std::fs::create_dir_all(&host).map_err(io("creating", &host))?;
            } else {
                std::fs::File::create(&host).map_err(io("creating", &host))?;
            }
            bind_ro(&src, &host, opts.iter().any(|o| o == "ro"))?;
            m.set_source(Some(guest_share_path(&rel).into()));
        }
    }
    Ok((super::bundle::guest_spec(&spec), source))
}

/// Serial of the virtio-blk disk carrying a disk-image or block-device rootfs.
pub const DISK_SERIAL: &str = "capsa-rootfs";

/// Decodes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let esc = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let (b'\\', Some(d)) = (b[i], esc) {
            out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or below `dir` in `mountinfo`, deepest first.
fn mounts_under_in(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mounts_under_in(&info, dir)
}

/// Detaches every mount at or below `dir`. True if none is left.
pub fn unmount_all_under(dir: &Path) -> bool {
    // Stacked mounts on one point need one umount each; a few rounds suffice.
    for _ in 0..8 {
        let left = mounts_under(dir);
        if left.is_empty() {
            return true;
        }
        for m in left {
            if let Err(e) = sys::umount(&m) {
                tracing::debug!("umount {}: {e}", m.display());
            }
        }
    }
    mounts_under(dir).is_empty()
}

/// Removes `dir` recursively, but only once nothing is mounted below it: a recursive
/// delete must never reach into a container's rootfs through a bind mount.
pub fn remove_tree(dir: &Path) {
    if !dir.exists() {
        return;
    }
    if !unmount_all_under(dir) {
        tracing::warn!(
            "not removing {}: mounts below it could not be detached",
            dir.display()
        );
        return;
    }
    if let Err(e) = std::fs::remove_dir_all(dir) {
        tracing::warn!("removing {}: {e}", dir.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::protocol::SHARES_DIR;

    #[test]
    fn mountinfo_paths() {
        let info = "\
1 0 8:1 / / rw - ext4 /dev/vda rw
2 1 0:5 / /run/capsa/c1/shared rw - tmpfs t rw
3 2 8:1 /x /run/capsa/c1/shared/c1/rootfs rw - ext4 /dev/vda rw
4 2 8:1 /y /run/capsa/c1/shared/c1/mounts/a\\040b rw - ext4 /dev/vda rw
5 1 0:6 / /run/capsa/c10 rw - tmpfs t rw
";
        let got = mounts_under_in(info, Path::new("/run/capsa/c1"));
        assert_eq!(
            got,
            vec![
                PathBuf::from("/run/capsa/c1/shared/c1/mounts/a b"),
                PathBuf::from("/run/capsa/c1/shared/c1/rootfs"),
                PathBuf::from("/run/capsa/c1/shared"),
            ]
        );
        assert_eq!(unescape("a\\040b\\134c"), "a b\\c");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        (unsafe { libc::geteuid() }) == 0
    }

    #[test]
    fn share_and_remove_without_touching_the_rootfs() {
        if !is_root() {
            eprintln!("skipped: bind mounts need root");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let bundle = t.path().join("bundle");
        let rootfs = bundle.join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        std::fs::write(rootfs.join("keep"), "data").unwrap();
        std::fs::write(t.path().join("hosts"), "127.0.0.1 x\n").unwrap();
        let state = t.path().join("state");
        let shared = state.join("shared");
        prepare_shared(&shared).unwrap();
        let mut rec = super::super::state::tests::record("c1");
        rec.bundle = bundle.clone();
        rec.rootfs = rootfs.clone();
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs", "readonly": true},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind",
                 "source": t.path().join("hosts"), "options": ["rbind", "ro"]},
                {"destination": "/dev/null2", "type": "bind", "source": "/dev/null",
                 "options": ["bind"]},
            ],
        }))
        .unwrap();
        let (g, src) = share_container(&shared, "c1", &rec, &spec).unwrap();
        assert_eq!(
            src,
            RootfsSource::SharedDir {
                tag: SHARED_TAG.into(),
                path: "c1/rootfs".into()
            }
        );
        assert_eq!(
            std::fs::read_to_string(shared.join("c1/rootfs/keep")).unwrap(),
            "data"
        );
        // Read-only on the host too.
        assert!(std::fs::write(shared.join("c1/rootfs/new"), "x").is_err());
        assert_eq!(
            std::fs::read_to_string(shared.join("c1/mounts/1")).unwrap(),
            "127.0.0.1 x\n"
        );
        let m = g.mounts().as_ref().unwrap();
        assert_eq!(m[0].source().as_deref(), Some(Path::new("proc")));
        assert_eq!(
            m[1].source().as_deref(),
            Some(Path::new(&format!("{SHARES_DIR}/{SHARED_TAG}/c1/mounts/1")))
        );
        assert_eq!(m[2].source().as_deref(), Some(Path::new("/dev/null")));

        let missing: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2", "root": {"path": "rootfs"},
            "mounts": [{"destination": "/x", "type": "bind", "source": "/nonexistent/src"}],
        }))
        .unwrap();
        let e = share_container(&shared, "c2", &rec, &missing).unwrap_err();
        assert!(
            e.to_string().contains("/nonexistent/src does not exist"),
            "{e}"
        );

        remove_tree(&state);
        assert!(!state.exists());
        assert!(mounts_under(t.path()).is_empty());
        assert_eq!(
            std::fs::read_to_string(rootfs.join("keep")).unwrap(),
            "data"
        );
    }
}
