//! virtio-fs end to end: the probe guest's FUSE client (`probe=fs`) against
//! `capsa vm run --fs TAG=DIR[,ro]` on the real /dev/kvm. The guest runs a fixed script
//! (see tools/probe-guest/README.md) and prints summary lines; the shared directory and a
//! directory next to it are then checked here.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use common::*;

const EINVAL: &str = "-22";
const ENOTDIR: &str = "-20";
const EROFS: &str = "-30";
const ENOENT: &str = "-2";
const EPERM: &str = "-1";

/// `root/share` (shared, with `hello.txt` and `hostlink` -> `root/outside`) and
/// `root/outside` (with `secret`).
struct Dirs {
    _tmp: tempfile::TempDir,
    share: PathBuf,
    outside: PathBuf,
    hello: Vec<u8>,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&share).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"host secret\n").unwrap();
    let hello = noise(77, 300_000);
    std::fs::write(share.join("hello.txt"), &hello).unwrap();
    symlink(&outside, share.join("hostlink")).unwrap();
    Dirs {
        _tmp: tmp,
        share,
        outside,
        hello,
    }
}

/// Every path below `dir` (symlinks not followed) with its content or link target.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut m = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(dir).unwrap().to_path_buf();
            if meta.file_type().is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                m.insert(rel, t.into_os_string().into_encoded_bytes());
            } else if meta.is_dir() {
                m.insert(rel, b"<dir>".to_vec());
                todo.push(p);
            } else {
                m.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    m
}

fn run_fs(d: &Dirs, params: &str, ro: bool) -> Output {
    let arg = format!("share={}{}", d.share.display(), if ro { ",ro" } else { "" });
    let o = probe_cmdline(
        "fs",
        &format!("fs.read=hello.txt fs.hostlink=hostlink {params}"),
        &["--fs", &arg],
    );
    o.assert_probe_pass("fs");
    o
}

fn assert_read_matches(o: &Output, hello: &[u8]) {
    let l = "PROBE-FS: read=";
    assert_eq!(o.expect_field(l, "size"), hello.len().to_string(), "{o}");
    assert_eq!(o.expect_field(l, "got"), hello.len().to_string(), "{o}");
    assert_eq!(
        o.expect_field(l, "sum"),
        format!("{:#x}", fnv1a64(hello)),
        "{o}"
    );
}

/// The escape line: non-components and lookups beneath symlinks fail with the expected
/// errors; `host_create_beneath` is EROFS on a read-only share.
fn assert_escapes_refused(o: &Output, ro: bool) {
    let l = "PROBE-FS: escape";
    for key in ["dotdot", "dot", "slash"] {
        assert_eq!(o.expect_field(l, key), EINVAL, "{key}\n{o}");
    }
    assert!(o.expect_field(l, "bad_node").starts_with('-'), "{o}");
    // Device nodes are refused (EROFS first on a read-only share), and the VMM lives on at
    // the default seccomp level: its filter never allows creating one.
    for key in ["mknod_chr", "mknod_blk"] {
        assert_eq!(
            o.expect_field(l, key),
            if ro { EROFS } else { EPERM },
            "{key}\n{o}"
        );
    }
    assert!(o.expect_field(l, "host_open").starts_with('-'), "{o}");
    assert_eq!(o.expect_field(l, "host_beneath"), ENOTDIR, "{o}");
    let create = o.expect_field(l, "host_create_beneath");
    assert_eq!(create, if ro { EROFS } else { ENOTDIR }, "{o}");
    if !ro {
        assert!(o.expect_field(l, "open_symlink").starts_with('-'), "{o}");
        assert_eq!(o.expect_field(l, "beneath"), ENOTDIR, "{o}");
        assert_eq!(o.expect_field(l, "create_beneath"), ENOTDIR, "{o}");
    }
}

#[test]
fn round_trip_on_the_host_directory() {
    let d = dirs();
    let outside_before = snapshot(&d.outside);
    let bytes = 1_500_000;
    let o = run_fs(&d, &format!("fs.bytes={bytes} fs.seed=9"), false);
    let l = "PROBE-FS: tag=";
    assert_eq!(o.expect_field(l, "tag"), "share", "{o}");
    assert_eq!(o.expect_field(l, "major"), "7", "{o}");
    assert_read_matches(&o, &d.hello);
    let l = "PROBE-FS: mkdir";
    for (key, want) in [
        ("mkdir", "0"),
        ("create", "0"),
        ("rename", "0"),
        ("unlink", "0"),
        ("after_unlink", ENOENT),
        ("symlink", "0"),
        ("readlink", "1"),
        ("listed", "1"),
    ] {
        assert_eq!(o.expect_field(l, key), want, "{key}\n{o}");
    }
    assert_eq!(o.expect_field(l, "wrote"), bytes.to_string(), "{o}");
    assert_eq!(o.expect_field(l, "verified"), bytes.to_string(), "{o}");
    assert_escapes_refused(&o, false);

    // The host directory has exactly what the script leaves behind.
    let s = snapshot(&d.share);
    let names: Vec<_> = s.keys().map(|p| p.to_str().unwrap().to_string()).collect();
    assert_eq!(
        names,
        ["dir", "esc", "hello.txt", "hostlink", "renamed.bin"],
        "share contents"
    );
    assert!(
        s[Path::new("renamed.bin")] == probe_pattern(9, 0, bytes),
        "renamed.bin differs from the written pattern"
    );
    assert_eq!(s[Path::new("esc")], b"../outside", "symlink target");
    assert!(s[Path::new("hello.txt")] == d.hello, "hello.txt changed");
    // Nothing leaked through the symlinks.
    assert_eq!(
        snapshot(&d.outside),
        outside_before,
        "outside directory changed"
    );
}

#[test]
fn small_requests() {
    // 4 KiB READ/WRITE requests: hundreds of round trips.
    let d = dirs();
    let o = run_fs(&d, "fs.bytes=600000 fs.seed=3 fs.chunk=4096", false);
    assert_read_matches(&o, &d.hello);
    assert_eq!(
        o.expect_field("PROBE-FS: mkdir", "verified"),
        "600000",
        "{o}"
    );
    assert!(
        std::fs::read(d.share.join("renamed.bin")).unwrap() == probe_pattern(3, 0, 600_000),
        "renamed.bin differs"
    );
}

#[test]
fn read_only_share_refuses_changes() {
    let d = dirs();
    let before = snapshot(&d.share);
    let outside_before = snapshot(&d.outside);
    let o = run_fs(&d, "fs.ro=1", true);
    assert_read_matches(&o, &d.hello);
    let l = "PROBE-FS: ro";
    for key in ["create", "mkdir", "symlink", "write_open"] {
        assert_eq!(o.expect_field(l, key), EROFS, "{key}\n{o}");
    }
    assert_escapes_refused(&o, true);
    assert_eq!(snapshot(&d.share), before, "read-only share changed");
    assert_eq!(
        snapshot(&d.outside),
        outside_before,
        "outside directory changed"
    );
}

#[test]
fn absolute_symlink_target_is_not_followed() {
    let d = dirs();
    let outside_before = snapshot(&d.outside);
    let target = d.outside.to_str().unwrap().to_string();
    let o = run_fs(&d, &format!("fs.symlink={target}"), false);
    assert_escapes_refused(&o, false);
    assert_eq!(
        std::fs::read_link(d.share.join("esc")).unwrap(),
        d.outside,
        "symlink target"
    );
    assert_eq!(
        snapshot(&d.outside),
        outside_before,
        "outside directory changed"
    );
}
