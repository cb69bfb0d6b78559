//! End to end on a real Linux guest: capsa's guest kernel (built from guest-kernel/, cached)
//! boots on /dev/kvm with capsa itself as /init; the guest agent runs processes in
//! containers whose rootfs is a busybox tree shared over virtio-fs, reached through
//! virtio-vsock. On PVM hosts guest ring 0 is emulated and this takes minutes; on hardware
//! KVM about a second.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Booting plus the slowest request on a PVM host, with a wide margin.
const GUEST_DEADLINE: Duration = Duration::from_secs(900);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Builds (or takes from the cache) the guest kernel and returns its vmlinux.
fn guest_kernel() -> PathBuf {
    let out = Command::new("bash")
        .arg(repo_root().join("guest-kernel/build.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("running guest-kernel/build.sh");
    assert!(out.status.success(), "guest kernel build failed");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let path = PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("build.sh printed the vmlinux path"),
    );
    assert!(path.is_file(), "{} is not a file", path.display());
    path
}

/// A busybox root filesystem: /bin/busybox (Debian's busybox-static) and its applets.
fn busybox_rootfs(dir: &Path) {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "needs busybox-static: apt-get install busybox-static"
    );
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy(busybox, dir.join("bin/busybox")).unwrap();
    let list = Command::new(busybox).arg("--list").output().unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
}

struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn agent(uds: &Path, args: &[&str]) -> Output {
    let mut all = vec!["agent"];
    all.extend_from_slice(args);
    let uds = uds.to_str().unwrap();
    all.insert(2, "--uds");
    all.insert(3, uds);
    let child = capsa(&all).spawn().unwrap();
    wait_with_deadline(child, GUEST_DEADLINE)
}

#[test]
fn agent_runs_processes_in_a_linux_guest() {
    let kernel = guest_kernel();
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    busybox_rootfs(&rootfs);
    let uds = dir.path().join("vsock.sock");
    let console = dir.path().join("console.log");
    let vm = capsa(&[
        "vm",
        "run",
        "--agent",
        "--kernel",
        kernel.to_str().unwrap(),
        "--mem-mib",
        "256",
        "--fs",
        &format!("rootfs={}", rootfs.display()),
        "--vsock-cid",
        "3",
        "--vsock-uds",
        uds.to_str().unwrap(),
        "--serial",
        console.to_str().unwrap(),
    ])
    .spawn()
    .unwrap();
    // A failed assertion must not leave the VM running (and eating CPU) behind.
    let mut vm = KillOnDrop(Some(vm));
    let console_text = || std::fs::read_to_string(&console).unwrap_or_default();

    let o = agent(
        &uds,
        &[
            "run",
            "--rootfs-fs",
            "rootfs",
            "--",
            "echo",
            "hello",
            "from",
            "the",
            "guest",
        ],
    );
    assert_eq!(o.code(), Some(0), "{o}\nconsole:\n{}", console_text());
    assert_eq!(o.stdout, "hello from the guest\n", "{o}");

    let o = agent(
        &uds,
        &["run", "--rootfs-fs", "rootfs", "--", "sh", "-c", "exit 7"],
    );
    assert_eq!(o.code(), Some(7), "{o}\nconsole:\n{}", console_text());

    // Streams stay separate, and the container sees its own pid namespace and hostname.
    let o = agent(
        &uds,
        &[
            "run",
            "--rootfs-fs",
            "rootfs",
            "--",
            "sh",
            "-c",
            "echo out $$ $(hostname); echo err >&2; exit 3",
        ],
    );
    assert_eq!(o.code(), Some(3), "{o}");
    assert_eq!(o.stdout, "out 1 capsa\n", "{o}");
    assert_eq!(o.stderr, "err\n", "{o}");

    // The container's init is PID 1 of its own pid namespace: a signal from inside the
    // namespace without a handler cannot kill it (as under runc).
    let o = agent(
        &uds,
        &[
            "run",
            "--rootfs-fs",
            "rootfs",
            "--",
            "sh",
            "-c",
            "kill -9 $$; echo survived",
        ],
    );
    assert_eq!(o.code(), Some(0), "{o}");
    assert_eq!(o.stdout, "survived\n", "{o}");

    // A missing program is an error reply, not a crash of the agent.
    let o = agent(
        &uds,
        &["run", "--rootfs-fs", "rootfs", "--", "/no/such/program"],
    );
    assert_eq!(o.code(), Some(1), "{o}");
    assert!(o.stderr.contains("/no/such/program"), "{o}");
    let o = agent(&uds, &["run", "--rootfs-fs", "rootfs", "--", "true"]);
    assert_eq!(o.code(), Some(0), "agent still serves after an error\n{o}");

    let o = agent(&uds, &["shutdown"]);
    assert_eq!(o.code(), Some(0), "{o}");
    let vm_child = vm.0.take().unwrap();
    let guest_root = std::env::temp_dir().join(format!("capsa-guest-root-{}", vm_child.id()));
    let vm_out = wait_with_deadline(vm_child, Duration::from_secs(120));
    assert_eq!(
        vm_out.code(),
        Some(0),
        "{vm_out}\nconsole:\n{}",
        console_text()
    );
    assert!(
        !uds.exists(),
        "the vsock socket is removed when the VM ends"
    );
    // So is the guest root, under the VMM thread's seccomp filter (remove_dir_all:
    // getdents64, unlinkat, fcntl F_GETFL and F_SETFD in glibc's fdopendir): with a call
    // missing from the list, capsa dies of SIGSYS here and the status above is not 0.
    assert!(
        !guest_root.exists(),
        "{} is left behind",
        guest_root.display()
    );
}
