//! Real clients driving capsa as their OCI runtime, as users run them: podman (through
//! conmon, `--runtime`) and containerd 1.6 (its runc v2 shim, `--runc-binary`), with a
//! busybox image imported from a rootfs tarball (no registry). Needs Debian's podman,
//! conmon, containerd and busybox-static (tools/test.sh installs them).
//!
//! Each check is a VM boot, minutes on PVM hosts; checks share a VM where a client
//! allows it (a detached container serves exec, exec -t and stop).

mod common;
mod oci_common;

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use oci_common::*;

/// capsa as the clients see it: the binary with the guest kernel as `vmlinux` next to it
/// (podman passes no environment, containerd no options, to the runtime).
fn runtime_dir(dir: &Path) -> PathBuf {
    let rt = dir.join("rt");
    std::fs::create_dir_all(&rt).unwrap();
    let capsa = rt.join("capsa");
    if std::fs::hard_link(capsa_bin(), &capsa).is_err() {
        std::fs::copy(capsa_bin(), &capsa).unwrap();
    }
    std::os::unix::fs::symlink(guest_kernel(), rt.join("vmlinux")).unwrap();
    capsa
}

fn need(tool: &str) {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{tool} is missing: apt-get install podman conmon containerd fuse-overlayfs (tools/test.sh does)");
}

/// Runs a client command with a deadline; output captured.
fn client(cmd: &mut Command, deadline: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_with_deadline(child, deadline)
}

struct Podman {
    dir: PathBuf,
    runtime: PathBuf,
}

impl Podman {
    fn new(dir: &Path, runtime: &Path) -> Podman {
        need("podman");
        need("conmon");
        let d = dir.join("podman");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("containers.conf"),
            format!(
                r#"[containers]
netns = "none"
log_driver = "k8s-file"
cgroupns = "host"
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{d}/events.log"
tmp_dir = "{d}/libpod-tmp"
"#,
                d = d.display()
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\nrunroot = \"{d}/runroot\"\ngraphroot = \"{d}/root\"\n",
                d = d.display()
            ),
        )
        .unwrap();
        let p = Podman {
            dir: d,
            runtime: runtime.to_path_buf(),
        };
        // The image: a busybox rootfs tarball, imported.
        let b = busybox_bundle(&p.dir.join("image"), false, &["true"]);
        let tar = p.dir.join("rootfs.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(b.join("rootfs"))
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success());
        let o = p.run(&["import", tar.to_str().unwrap(), "localhost/busybox:test"]);
        assert_eq!(o.code(), Some(0), "{o}");
        p
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .arg("--runtime")
            .arg(&self.runtime)
            .args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        client(&mut self.cmd(args), GUEST_DEADLINE)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self
            .cmd(&["rm", "--all", "--force", "--time", "0"])
            .output();
        let _ = self.cmd(&["system", "reset", "--force"]).output();
    }
}

/// The runtime's own view, for diagnostics.
fn runtime_log(root: &str) -> String {
    let mut s = String::new();
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        for f in ["shim.log", "console.log"] {
            let t = std::fs::read_to_string(e.path().join(f)).unwrap_or_default();
            s.push_str(&format!(
                "--- {}/{f} ---\n{}\n",
                e.path().display(),
                tail(&t, 30)
            ));
        }
    }
    s
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn podman_runs_busybox_containers_in_vms() {
    let t = tempfile::tempdir().unwrap();
    let runtime = runtime_dir(t.path());
    let p = Podman::new(t.path(), &runtime);
    let diag = || runtime_log("/run/capsa");

    // Output and exit status of a one-shot container (one VM).
    let o = p.run(&[
        "run",
        "--rm",
        "localhost/busybox:test",
        "sh",
        "-c",
        "echo hello from capsa; exit 7",
    ]);
    assert_eq!(o.code(), Some(7), "{o}\n{}", diag());
    assert_eq!(o.stdout, "hello from capsa\n", "{o}");

    // A detached container with a terminal (console socket at create): exec, exec -t,
    // and stop, all in its one VM.
    let o = p.run(&[
        "run",
        "-d",
        "-t",
        "--name",
        "d1",
        "localhost/busybox:test",
        "sh",
        "-c",
        "tty; echo started; sleep 1000000",
    ]);
    assert_eq!(o.code(), Some(0), "{o}\n{}", diag());
    let start = Instant::now();
    loop {
        let logs = p.run(&["logs", "d1"]);
        if logs.stdout.contains("started") {
            assert!(logs.stdout.contains("/dev/pts/0"), "{logs}");
            break;
        }
        assert!(
            start.elapsed() < GUEST_DEADLINE,
            "d1 never started\n{logs}\n{}",
            diag()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let o = p.run(&["exec", "d1", "sh", "-c", "echo exec-ok; exit 3"]);
    assert_eq!(o.code(), Some(3), "{o}\n{}", diag());
    assert_eq!(o.stdout, "exec-ok\n", "{o}");
    let o = p.run(&["exec", "-t", "d1", "tty"]);
    assert_eq!(o.code(), Some(0), "{o}\n{}", diag());
    assert!(o.stdout.contains("/dev/pts/"), "{o}");
    let o = p.run(&["inspect", "--format", "{{.State.Status}}", "d1"]);
    assert_eq!(o.stdout.trim(), "running", "{o}");
    // sh as PID 1 ignores SIGTERM: stop escalates to SIGKILL after the timeout.
    let o = p.run(&["stop", "-t", "2", "d1"]);
    assert_eq!(o.code(), Some(0), "{o}\n{}", diag());
    let o = p.run(&[
        "inspect",
        "--format",
        "{{.State.Status}} {{.State.ExitCode}}",
        "d1",
    ]);
    assert_eq!(o.stdout.trim(), "exited 137", "{o}");
    let o = p.run(&["rm", "d1"]);
    assert_eq!(o.code(), Some(0), "{o}");
}

struct Containerd {
    child: std::process::Child,
    sock: PathBuf,
    runtime: PathBuf,
}

impl Containerd {
    fn start(dir: &Path, runtime: &Path) -> Containerd {
        need("containerd");
        need("ctr");
        let d = dir.join("containerd");
        std::fs::create_dir_all(&d).unwrap();
        let sock = d.join("c.sock");
        let config = d.join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{s}"
[ttrpc]
  address = "{s}.ttrpc"
"#,
                d = d.display(),
                s = sock.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_until("containerd's socket", Duration::from_secs(60), || {
            sock.exists()
        });
        Containerd {
            child,
            sock,
            runtime: runtime.to_path_buf(),
        }
    }

    fn ctr(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(&self.sock)
            .args(["--namespace", "capsa"])
            .args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        client(&mut self.ctr(args), GUEST_DEADLINE)
    }

    /// `ctr run` arguments up to the image.
    fn run_args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["run", "--runtime", "io.containerd.runc.v2", "--runc-binary"];
        v.push(self.runtime.to_str().unwrap());
        v.extend_from_slice(extra);
        v.push("localhost/busybox:test");
        v
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in ["t1", "t2"] {
            let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]).output();
            let _ = self.ctr(&["task", "delete", "--force", id]).output();
            let _ = self.ctr(&["container", "delete", id]).output();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pty pair: (master, slave), for clients that want a terminal on their stdin.
fn pty() -> (OwnedFd, OwnedFd) {
    let (mut m, mut s) = (0, 0);
    // SAFETY: out-pointers for two fds; the rest may be NULL.
    let r = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0);
    // SAFETY: openpty returned two fds we now own.
    unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) }
}

#[test]
fn containerd_runs_busybox_containers_in_vms() {
    let t = tempfile::tempdir().unwrap();
    let runtime = runtime_dir(t.path());
    // The image goes from podman's storage into containerd's, as an OCI archive.
    let p = Podman::new(t.path(), &runtime);
    let archive = t.path().join("busybox-oci.tar");
    let o = p.run(&[
        "save",
        "--format",
        "oci-archive",
        "-o",
        archive.to_str().unwrap(),
        "localhost/busybox:test",
    ]);
    assert_eq!(o.code(), Some(0), "{o}");
    let c = Containerd::start(t.path(), &runtime);
    let o = c.run(&["images", "import", archive.to_str().unwrap()]);
    assert_eq!(o.code(), Some(0), "{o}");
    let state = c
        .sock
        .parent()
        .unwrap()
        .join("state/io.containerd.runtime.v2.task/capsa");
    let diag = |id: &str| {
        let log = std::fs::read_to_string(state.join(id).join("log.json")).unwrap_or_default();
        format!(
            "--- runc log.json ---\n{}\n{}",
            tail(&log, 20),
            runtime_log("/run/containerd/runc/capsa")
        )
    };

    // Output and exit status of a one-shot container (one VM).
    let mut args = c.run_args(&["--rm"]);
    args.extend(["t1", "sh", "-c", "echo hello from capsa; exit 7"]);
    let o = c.run(&args);
    assert_eq!(o.code(), Some(7), "{o}\n{}", diag("t1"));
    assert_eq!(o.stdout, "hello from capsa\n", "{o}");

    // A detached task: exec, exec with a terminal, kill, in its one VM.
    let mut args = c.run_args(&["-d"]);
    args.extend(["t2", "sleep", "1000000"]);
    let o = c.run(&args);
    assert_eq!(o.code(), Some(0), "{o}\n{}", diag("t2"));
    let o = c.run(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "t2",
        "sh",
        "-c",
        "echo exec-ok; exit 3",
    ]);
    assert_eq!(o.code(), Some(3), "{o}\n{}", diag("t2"));
    assert_eq!(o.stdout, "exec-ok\n", "{o}");
    // ctr's -t needs a terminal on its own stdin: give it one.
    let (master, slave) = pty();
    let mut cmd = c.ctr(&[
        "task",
        "exec",
        "-t",
        "--exec-id",
        "e2",
        "t2",
        "sh",
        "-c",
        "tty; exit 4",
    ]);
    let child = cmd
        .stdin(std::fs::File::from(slave.try_clone().unwrap()))
        .stdout(std::fs::File::from(slave.try_clone().unwrap()))
        .stderr(std::fs::File::from(slave))
        .spawn()
        .unwrap();
    let seen = read_until(&master, "/dev/pts/", GUEST_DEADLINE);
    let mut child = child;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < GUEST_DEADLINE,
            "ctr task exec -t hangs: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(seen.contains("/dev/pts/"), "{seen:?}\n{}", diag("t2"));
    assert_eq!(status.code(), Some(4), "{seen:?}");

    // The task's processes, as pids in the guest (capsa ps --format json).
    let o = c.run(&["task", "ps", "t2"]);
    assert_eq!(o.code(), Some(0), "{o}\n{}", diag("t2"));
    let pids: Vec<u32> = o
        .stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(!pids.is_empty(), "{o}");
    let o = c.run(&["task", "kill", "-s", "SIGKILL", "t2"]);
    assert_eq!(o.code(), Some(0), "{o}\n{}", diag("t2"));
    wait_until("t2 to stop", GUEST_DEADLINE, || {
        c.run(&["task", "ls"])
            .stdout
            .lines()
            .any(|l| l.starts_with("t2") && l.contains("STOPPED"))
    });
    let o = c.run(&["task", "delete", "t2"]);
    assert_eq!(o.code(), Some(0), "{o}\n{}", diag("t2"));
    let o = c.run(&["container", "delete", "t2"]);
    assert_eq!(o.code(), Some(0), "{o}");
}
