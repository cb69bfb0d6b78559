//! Generates the guest's initramfs: a `newc` cpio archive whose `/init` is this very
//! (static) capsa binary, which then runs as the guest agent. Written uncompressed: the
//! guest kernel would spend more (emulated, on PVM hosts) time inflating it than the VMM
//! spends copying it.

use std::io::{self, Write};
use std::path::Path;

/// One archive member.
pub enum Entry<'a> {
    /// A directory.
    Dir { path: &'a str, mode: u32 },
    /// A regular file with its contents.
    File {
        path: &'a str,
        mode: u32,
        data: &'a [u8],
    },
    /// A symbolic link.
    Symlink { path: &'a str, target: &'a str },
    /// A character device node.
    CharDev {
        path: &'a str,
        mode: u32,
        major: u32,
        minor: u32,
    },
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

fn header<W: Write>(
    w: &mut W,
    ino: u32,
    mode: u32,
    nlink: u32,
    size: usize,
    rdev: (u32, u32),
    name: &str,
) -> io::Result<usize> {
    let namesize = name.len() + 1;
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        size as u32,
        0,
        0,
        rdev.0,
        rdev.1,
        namesize as u32,
        0,
    ];
    let mut h = String::with_capacity(110);
    h.push_str("070701");
    for f in fields {
        h.push_str(&format!("{f:08x}"));
    }
    w.write_all(h.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    let written = 110 + namesize;
    let pad = (4 - written % 4) % 4;
    w.write_all(&[0u8; 3][..pad])?;
    Ok(written + pad)
}

fn data<W: Write>(w: &mut W, bytes: &[u8]) -> io::Result<()> {
    w.write_all(bytes)?;
    let pad = (4 - bytes.len() % 4) % 4;
    w.write_all(&[0u8; 3][..pad])
}

/// Writes `entries` as a newc archive (paths without a leading slash, parents first).
pub fn write_cpio<W: Write>(w: &mut W, entries: &[Entry]) -> io::Result<()> {
    for (i, e) in entries.iter().enumerate() {
        let ino = i as u32 + 1;
        match e {
            Entry::Dir { path, mode } => {
                header(w, ino, S_IFDIR | mode, 2, 0, (0, 0), path)?;
            }
            Entry::File {
                path,
                mode,
                data: d,
            } => {
                header(w, ino, S_IFREG | mode, 1, d.len(), (0, 0), path)?;
                data(w, d)?;
            }
            Entry::Symlink { path, target } => {
                header(w, ino, S_IFLNK | 0o777, 1, target.len(), (0, 0), path)?;
                data(w, target.as_bytes())?;
            }
            Entry::CharDev {
                path,
                mode,
                major,
                minor,
            } => {
                header(w, ino, S_IFCHR | mode, 1, 0, (*major, *minor), path)?;
            }
        }
    }
    header(w, 0, 0, 1, 0, (0, 0), "TRAILER!!!")?;
    Ok(())
}

/// The agent initramfs: the directories init needs, /dev/console (so the kernel can open
/// the console before devtmpfs is mounted), and /init = `init_binary`.
pub fn agent_initramfs(init_binary: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(init_binary.len() + 4096);
    let dirs = ["dev", "proc", "sys", "run", "tmp", "mnt", "etc"];
    let mut entries: Vec<Entry> = dirs
        .iter()
        .map(|d| Entry::Dir {
            path: d,
            mode: 0o755,
        })
        .collect();
    entries.push(Entry::CharDev {
        path: "dev/console",
        mode: 0o600,
        major: 5,
        minor: 1,
    });
    entries.push(Entry::File {
        path: "init",
        mode: 0o755,
        data: init_binary,
    });
    write_cpio(&mut out, &entries)?;
    Ok(out)
}

/// Writes the agent initramfs for the running capsa binary to `dest`.
pub fn write_agent_initramfs(dest: &Path) -> io::Result<()> {
    let me = std::fs::read("/proc/self/exe")?;
    let bytes = agent_initramfs(&me)?;
    let tmp = dest.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_is_readable_by_cpio() {
        let Ok(status) = std::process::Command::new("cpio").arg("--version").output() else {
            panic!("cpio(1) is needed for this test: apt-get install cpio");
        };
        assert!(status.status.success());
        let dir = tempfile::tempdir().unwrap();
        let archive = agent_initramfs(b"#!/bin/true\nhello").unwrap();
        assert_eq!(archive.len() % 4, 0);
        let mut child = std::process::Command::new("cpio")
            .args(["-t", "-v"])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&archive).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list = String::from_utf8_lossy(&out.stdout);
        assert!(list.contains("init"), "{list}");
        assert!(
            list.lines()
                .any(|l| l.starts_with("crw") && l.contains("dev/console")),
            "{list}"
        );
        assert!(
            list.lines()
                .any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with("init")),
            "{list}"
        );
        assert!(
            list.lines()
                .any(|l| l.starts_with("drwxr-xr-x") && l.ends_with("proc")),
            "{list}"
        );
    }

    #[test]
    fn contents_survive_extraction() {
        let dir = tempfile::tempdir().unwrap();
        let mut archive = Vec::new();
        write_cpio(
            &mut archive,
            &[
                Entry::Dir {
                    path: "d",
                    mode: 0o700,
                },
                Entry::File {
                    path: "d/f",
                    mode: 0o644,
                    data: b"12345",
                },
                Entry::Symlink {
                    path: "l",
                    target: "d/f",
                },
            ],
        )
        .unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-i", "-d", "--quiet"])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&archive).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(std::fs::read(dir.path().join("d/f")).unwrap(), b"12345");
        assert_eq!(
            std::fs::read_link(dir.path().join("l")).unwrap(),
            Path::new("d/f")
        );
    }
}
