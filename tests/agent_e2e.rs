//! End to end on a real Linux guest: capsa's guest kernel (built from guest-kernel/, cached)
//! boots on /dev/kvm with capsa itself as /init; the guest agent runs processes in
//! containers whose rootfs is a busybox tree shared over virtio-fs, reached through
//! virtio-vsock. On PVM hosts guest ring 0 is emulated and this takes minutes; on hardware
//! KVM about a second.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
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

/// Runs `sh -c SCRIPT` in a new container on the busybox share.
fn sh_in_container(uds: &Path, script: &str) -> Output {
    agent(
        uds,
        &["run", "--rootfs-fs", "rootfs", "--", "sh", "-c", script],
    )
}

#[test]
fn agent_runs_processes_in_a_linux_guest() {
    let kernel = guest_kernel();
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    busybox_rootfs(&rootfs);
    // capsa itself, for `__cpu-state-check` inside a container.
    std::fs::copy(capsa_bin(), rootfs.join("capsa")).unwrap();
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
        // Two vCPUs: SMP bring-up of the guest kernel is part of what is tested.
        "--vcpus",
        "2",
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

    // Both vCPUs came up in the guest.
    let o = sh_in_container(&uds, "nproc; cat /sys/devices/system/cpu/online");
    assert_eq!(o.code(), Some(0), "{o}");
    assert_eq!(o.stdout, "2\n0-1\n", "{o}\nconsole:\n{}", console_text());

    let o = sh_in_container(&uds, "exit 7");
    assert_eq!(o.code(), Some(7), "{o}\nconsole:\n{}", console_text());

    // On PVM hosts the guest kernel cannot save user AVX state, so capsa boots the guest
    // with glibc tunables that keep libc on SSE: they reach container processes, and
    // libc's copies stay intact while two processes compete for the vCPUs.
    let o = sh_in_container(
        &uds,
        "echo \"tunables=$GLIBC_TUNABLES\"; /capsa __cpu-state-check --libc 5",
    );
    assert_eq!(o.code(), Some(0), "{o}\nconsole:\n{}", console_text());
    let tunables = o.stdout.lines().next().unwrap_or_default();
    if host_is_pvm() {
        assert!(
            tunables.starts_with("tunables=glibc.cpu.hwcaps=-AVX,-AVX2,"),
            "{o}"
        );
    } else {
        assert_eq!(tunables, "tunables=", "{o}");
    }
    assert!(o.stdout.contains(", 0 with a corrupted copy\n"), "{o}");

    // Streams stay separate, and the container sees its own pid namespace and hostname.
    let o = sh_in_container(&uds, "echo out $$ $(hostname); echo err >&2; exit 3");
    assert_eq!(o.code(), Some(3), "{o}");
    assert_eq!(o.stdout, "out 1 capsa\n", "{o}");
    assert_eq!(o.stderr, "err\n", "{o}");

    // The container's init is PID 1 of its own pid namespace: a signal from inside the
    // namespace without a handler cannot kill it (as under runc).
    let o = sh_in_container(&uds, "kill -9 $$; echo survived");
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

    malformed_frames_get_error_replies(&uds);
    container_lifecycle(&uds);

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
    // The agent announced itself on the VMM's boot-timer port (ioperm + outb).
    assert!(
        vm_out.stderr.contains("guest boot timer: "),
        "no boot-timer write from the agent\n{vm_out}\nconsole:\n{}",
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

/// One frame of the agent protocol: u32 little-endian length, then the body.
fn send_frame(s: &mut UnixStream, body: &[u8]) {
    s.write_all(&(body.len() as u32).to_le_bytes()).unwrap();
    s.write_all(body).unwrap();
}

fn recv_frame(s: &mut UnixStream) -> Option<serde_json::Value> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    Some(serde_json::from_slice(&body).expect("the agent replies with JSON"))
}

/// Speaks to the agent's control port (1024) directly, through the VMM's hybrid vsock
/// socket: garbage must get error replies and must not take the agent (the guest's init)
/// down.
fn malformed_frames_get_error_replies(uds: &Path) {
    let mut s = UnixStream::connect(uds).unwrap();
    s.set_read_timeout(Some(GUEST_DEADLINE)).unwrap();
    s.write_all(b"CONNECT 1024\n").unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    assert!(
        line.starts_with(b"OK "),
        "{}",
        String::from_utf8_lossy(&line)
    );
    send_frame(&mut s, br#"{"op":"hello","version":1}"#);
    let r = recv_frame(&mut s).unwrap();
    assert_eq!(r["reply"], "hello", "{r}");
    for body in [
        &b"{not json"[..],
        &[0xff, 0xfe, 0, 0x80][..],
        br#"{"op":"format_disk"}"#,
        br#"{"op":"ps","id":7}"#,
        b"",
    ] {
        send_frame(&mut s, body);
        let r = recv_frame(&mut s).expect("an error reply, not a hang-up");
        assert_eq!(r["reply"], "error", "{r}");
        assert_eq!(r["kind"], "invalid_request", "{r}");
    }
    // The connection still works after the garbage.
    send_frame(&mut s, br#"{"op":"ps","id":"no-such-container"}"#);
    let r = recv_frame(&mut s).unwrap();
    assert_eq!(r["kind"], "not_found", "{r}");
    // An oversized length: an error reply, then the agent hangs up (it cannot resync).
    s.write_all(&u32::MAX.to_le_bytes()).unwrap();
    let r = recv_frame(&mut s).expect("an error reply to an oversized frame");
    assert_eq!(r["kind"], "invalid_request", "{r}");
    assert!(recv_frame(&mut s).is_none(), "connection closed after it");
    // A garbage stdio stream hello is dropped without harm.
    let mut st = UnixStream::connect(uds).unwrap();
    st.write_all(b"CONNECT 1025\n").unwrap();
    send_frame(&mut st, b"\x00\x01garbage");
    drop(st);
}

/// Lines of a running capsa's stdout, as they come.
fn lines_of(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line containing `needle`; returns the lines seen.
fn wait_for_line(rx: &mpsc::Receiver<String>, needle: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(GUEST_DEADLINE) {
            Ok(l) => {
                let hit = l.contains(needle);
                seen.push(l);
                if hit {
                    return seen;
                }
            }
            Err(e) => panic!("no line with {needle:?} ({e}); got {seen:?}"),
        }
    }
}

fn background(uds: &Path, args: &[&str]) -> KillOnDrop {
    let mut all = vec!["agent", args[0], "--uds", uds.to_str().unwrap()];
    all.extend_from_slice(&args[1..]);
    KillOnDrop(Some(capsa(&all).spawn().unwrap()))
}

/// Every request of the protocol through `capsa agent` subcommands: create, start, exec
/// (pipes and a terminal), resize of a running process's terminal, ps, stats, signals to
/// one exec'd process and to the init, wait, rm; and a terminal sized before the start.
fn container_lifecycle(uds: &Path) {
    let o = agent(
        uds,
        &[
            "create",
            "c1",
            "--rootfs-fs",
            "rootfs",
            "--",
            "sh",
            "-c",
            "trap 'exit 42' TERM; while :; do sleep 1; done",
        ],
    );
    assert_eq!(o.code(), Some(0), "{o}");
    let init_pid: i32 = o.stdout.trim().parse().expect("create prints the pid");
    let o = agent(uds, &["start", "c1"]);
    assert_eq!(o.code(), Some(0), "{o}");

    // exec: an extra process in the container's namespaces, its output and exit code.
    let o = agent(
        uds,
        &[
            "exec",
            "c1",
            "--",
            "sh",
            "-c",
            "tr '\\0' ' ' </proc/1/cmdline; echo; echo err >&2; exit 5",
        ],
    );
    assert_eq!(o.code(), Some(5), "{o}");
    assert!(o.stdout.starts_with("sh -c trap"), "{o}");
    assert_eq!(o.stderr, "err\n", "{o}");

    // exec with a terminal.
    let o = agent(
        uds,
        &[
            "exec",
            "c1",
            "--tty",
            "--",
            "sh",
            "-c",
            "tty; [ -t 1 ] && echo on-a-tty",
        ],
    );
    assert_eq!(o.code(), Some(0), "{o}");
    assert!(o.stdout.contains("/dev/pts/"), "{o}");
    assert!(o.stdout.contains("on-a-tty"), "{o}");

    // A running process with a terminal: resize it, and it sees SIGWINCH and the new size.
    let mut winch = background(
        uds,
        &[
            "exec",
            "c1",
            "--exec-id",
            "winch",
            "--tty",
            "--",
            "sh",
            "-c",
            "trap 'stty size; exit 3' WINCH; echo ready; while :; do sleep 1; done",
        ],
    );
    let winch_lines = lines_of(winch.0.as_mut().unwrap());
    wait_for_line(&winch_lines, "ready");

    // ps and stats while init and the exec'd shell run.
    let o = agent(uds, &["ps", "c1"]);
    assert_eq!(o.code(), Some(0), "{o}");
    let pids: Vec<i32> = o.stdout.lines().map(|l| l.parse().unwrap()).collect();
    assert!(pids.contains(&init_pid), "init {init_pid} in {pids:?}");
    assert!(pids.len() >= 2, "init and the exec'd shell: {pids:?}");
    let o = agent(uds, &["stats", "c1"]);
    assert_eq!(o.code(), Some(0), "{o}");
    let stats: serde_json::Value = serde_json::from_str(o.stdout.trim()).unwrap();
    assert!(stats["pids_current"].as_u64().unwrap() >= 2, "{stats}");
    assert!(stats["memory_current"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["cpu_usage_usec"].as_u64().unwrap() > 0, "{stats}");

    let o = agent(uds, &["resize", "c1", "--exec-id", "winch", "33", "101"]);
    assert_eq!(o.code(), Some(0), "{o}");
    wait_for_line(&winch_lines, "33 101");
    let o = wait_with_deadline(winch.0.take().unwrap(), GUEST_DEADLINE);
    assert_eq!(o.code(), Some(3), "{o}");

    // A signal to one exec'd process; wait reports it (also after the fact).
    let mut sleeper = background(
        uds,
        &[
            "exec",
            "c1",
            "--exec-id",
            "sleeper",
            "--",
            "sh",
            "-c",
            "echo ready; exec sleep 1000",
        ],
    );
    let sleeper_lines = lines_of(sleeper.0.as_mut().unwrap());
    wait_for_line(&sleeper_lines, "ready");
    let o = agent(uds, &["kill", "c1", "--exec-id", "sleeper", "KILL"]);
    assert_eq!(o.code(), Some(0), "{o}");
    let o = wait_with_deadline(sleeper.0.take().unwrap(), GUEST_DEADLINE);
    assert_eq!(o.code(), Some(137), "{o}");
    let o = agent(uds, &["wait", "c1", "--exec-id", "sleeper"]);
    assert_eq!(
        (o.code(), o.stdout.as_str()),
        (Some(137), "signaled 9\n"),
        "{o}"
    );

    // SIGTERM to the init, which traps it; wait gets its exit code.
    let o = agent(uds, &["kill", "c1", "TERM"]);
    assert_eq!(o.code(), Some(0), "{o}");
    let o = agent(uds, &["wait", "c1"]);
    assert_eq!(
        (o.code(), o.stdout.as_str()),
        (Some(42), "exited 42\n"),
        "{o}"
    );
    let o = agent(uds, &["rm", "c1"]);
    assert_eq!(o.code(), Some(0), "{o}");
    let o = agent(uds, &["ps", "c1"]);
    assert_ne!(o.code(), Some(0), "removed: {o}");
    assert!(o.stderr.contains("does not exist"), "{o}");

    // The init's terminal, sized before the program starts.
    let o = agent(
        uds,
        &[
            "create",
            "c2",
            "--rootfs-fs",
            "rootfs",
            "--tty",
            "--tty-size",
            "40x120",
            "--",
            "sh",
            "-c",
            "stty size; exit 4",
        ],
    );
    assert_eq!(o.code(), Some(0), "{o}");
    let o = agent(uds, &["start", "c2", "--attach", "--tty"]);
    assert_eq!(o.code(), Some(4), "{o}");
    assert!(o.stdout.contains("40 120"), "{o}");
    let o = agent(uds, &["rm", "c2"]);
    assert_eq!(o.code(), Some(0), "{o}");
}
