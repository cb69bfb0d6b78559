//! The OCI lifecycle on the real KVM with the real guest (guest-kernel/ build, capsa as
//! the guest's init and agent). One VM serves every check: a pod sandbox container owns
//! it and further containers join it through the CRI annotations, so the test boots one
//! guest (minutes on PVM hosts).
//!
//! Checked: create/start/state/exec/ps/kill/delete, the pid file's process (re-parented
//! to us as subreaper, exit status = the container's, 128+N for signals), stdout/stderr
//! to the fds given to create, a terminal through --console-socket (with its size),
//! pause/resume through the vCPU freezer, the host cgroups (vCPU thread ids in `vcpu`,
//! quota, period, shares, memory limit, `update`), a pod member's limits in its guest
//! cgroup (`events --stats`, `update`, read back inside the container), `ps` listing guest
//! pids, SIGKILL of a detached exec's host process killing the guest process, the OCI
//! hooks (create hooks see `creating`; startContainer runs inside the container in the
//! guest), the clean-up of a sandbox whose host process was killed, and the sandboxing
//! of the host processes: every thread under a seccomp filter (the default level, kill)
//! with no_new_privs, inherited fds closed.

mod common;
mod oci_common;

use std::fs::File;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use oci_common::*;

struct Oci {
    root: PathBuf,
    kernel: PathBuf,
    dir: PathBuf,
}

impl Drop for Oci {
    /// A failed test must not leave VMs, cgroups or mounts behind.
    fn drop(&mut self) {
        for e in std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
        {
            let id = e.file_name().to_string_lossy().into_owned();
            let _ = self.command(&["delete", "--force", &id]).output();
        }
    }
}

impl Oci {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(capsa_bin());
        c.arg("--root")
            .arg(&self.root)
            .arg("--kernel")
            .arg(&self.kernel)
            .args(args)
            .stdin(Stdio::null())
            .env_remove("RUST_LOG");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        let start = std::time::Instant::now();
        let child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let o = wait_with_deadline(child, GUEST_DEADLINE);
        // Timings in the test log: the guest is slow on PVM hosts.
        eprintln!("capsa {args:?}: {:.1?}", start.elapsed());
        o
    }

    fn ok(&self, args: &[&str]) -> Output {
        let o = self.run(args);
        assert_eq!(
            o.code(),
            Some(0),
            "capsa {args:?}\n{o}\n{}",
            self.diagnostics()
        );
        o
    }

    fn state(&self, id: &str) -> serde_json::Value {
        let o = self.ok(&["state", id]);
        serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("{e}\n{o}"))
    }

    fn status(&self, id: &str) -> String {
        self.state(id)["status"].as_str().unwrap().to_string()
    }

    /// `create` with the container's stdout/stderr going to DIR/ID.out and DIR/ID.err;
    /// returns the pid from the pid file.
    fn create(&self, id: &str, bundle: &Path, console: Option<&Path>) -> i32 {
        let pid_file = self.dir.join(format!("{id}.pid"));
        let mut args = vec![
            "create",
            "--bundle",
            bundle.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
        ];
        if let Some(c) = console {
            args.extend(["--console-socket", c.to_str().unwrap()]);
        }
        args.push(id);
        let out = File::create(self.dir.join(format!("{id}.out"))).unwrap();
        let err = File::create(self.dir.join(format!("{id}.err"))).unwrap();
        let mut child = self.command(&args).stdout(out).stderr(err).spawn().unwrap();
        let start = std::time::Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                start.elapsed() < GUEST_DEADLINE,
                "create {id} hangs\n{}",
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        eprintln!("capsa create {id}: {:.1?}", start.elapsed());
        assert!(
            status.success(),
            "create {id}: {status}\n{}\n{}",
            self.output(id).1,
            self.diagnostics()
        );
        read_trim(&pid_file).parse().unwrap()
    }

    /// What the container wrote to its stdout and stderr.
    fn output(&self, id: &str) -> (String, String) {
        let r =
            |ext| std::fs::read_to_string(self.dir.join(format!("{id}.{ext}"))).unwrap_or_default();
        (r("out"), r("err"))
    }

    fn diagnostics(&self) -> String {
        self.diagnostics_of("pod")
    }

    fn diagnostics_of(&self, id: &str) -> String {
        let r = |p: PathBuf| std::fs::read_to_string(&p).unwrap_or_default();
        format!(
            "--- {id} console ---\n{}\n--- {id} shim log ---\n{}",
            r(self.root.join(id).join("console.log")),
            r(self.root.join(id).join("shim.log"))
        )
    }
}

/// Every thread of `pid` runs under a seccomp filter, with no_new_privs; returns the
/// threads' names.
fn assert_every_thread_filtered(pid: i32) -> Vec<String> {
    let mut names = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        // A thread that ended meanwhile has nothing to check.
        let Ok(status) = std::fs::read_to_string(t.path().join("status")) else {
            continue;
        };
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
        };
        let name = field("Name:").unwrap_or_default();
        let tid = t.file_name().to_string_lossy().into_owned();
        assert_eq!(
            field("Seccomp:").as_deref(),
            Some("2"),
            "thread {tid} ({name}) of {pid} has no seccomp filter\n{status}"
        );
        assert_eq!(
            field("NoNewPrivs:").as_deref(),
            Some("1"),
            "thread {tid} ({name}) of {pid}\n{status}"
        );
        names.push(name);
    }
    names
}

fn pod_annotations(v: &mut serde_json::Value, kind: &str) {
    v["annotations"] = serde_json::json!({
        "io.kubernetes.cri.container-type": kind,
        "io.kubernetes.cri.sandbox-id": "pod",
    });
}

#[test]
fn lifecycle_on_a_real_guest() {
    become_subreaper();
    let kernel = guest_kernel();
    let t = tempfile::tempdir().unwrap();
    let oci = Oci {
        root: t.path().join("root"),
        kernel,
        dir: t.path().to_path_buf(),
    };
    let cg_rel = format!("capsa-test/lifecycle-{}", std::process::id());
    let hooks_dir = t.path().join("hooks");
    std::fs::create_dir(&hooks_dir).unwrap();
    let hook = |name: &str| {
        serde_json::json!([{"path": "/bin/sh",
            "args": ["sh", "-c", format!("cat > {}/{name}.json", hooks_dir.display())]}])
    };

    // The sandbox container: owns the VM; limits go on its cgroups.
    let pod = busybox_bundle(
        &t.path().join("pod-bundle"),
        false,
        &[
            "sh",
            "-c",
            // No polling loop: on PVM hosts every fork costs the guest seconds.
            "echo pod-up; sleep 1000000",
        ],
    );
    edit_config(&pod, |v| {
        pod_annotations(v, "sandbox");
        v["linux"]["cgroupsPath"] = format!("/{cg_rel}").into();
        v["linux"]["resources"] = serde_json::json!({
            "cpu": {"quota": 50000, "period": 100000, "shares": 512},
            "memory": {"limit": 400i64 << 20},
        });
        // startContainer runs in the guest, in the container, before its program: it
        // writes through a bind mount of the hooks directory, and records pid 1 of the
        // container's pid namespace (still capsa's container init at that point).
        let in_container = serde_json::json!([{"path": "/bin/sh", "args": ["sh", "-c",
            "cat > /hooks/startContainer.json; tr '\\0' ' ' < /proc/1/cmdline > /hooks/startContainer.where"]}]);
        v["hooks"] = serde_json::json!({
            "createRuntime": hook("createRuntime"), "createContainer": hook("createContainer"),
            "startContainer": in_container, "poststart": hook("poststart"),
            "poststop": hook("poststop"),
        });
        v["mounts"].as_array_mut().unwrap().push(serde_json::json!({
            "destination": "/hooks", "type": "bind",
            "source": hooks_dir.to_str().unwrap(), "options": ["rbind", "rw"],
        }));
    });
    // An fd without close-on-exec reaches the sandbox's host process through `create`:
    // the host process closes what it does not need.
    let leaked = File::open("/dev/null").unwrap();
    let leaked_fd = 250;
    // SAFETY: dup2 of an fd we own onto a number nothing else in this test uses.
    let r = unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&leaked), leaked_fd) };
    assert_eq!(r, leaked_fd);
    let pod_pid = oci.create("pod", &pod, None);
    // SAFETY: closing the duplicate made above.
    unsafe { libc::close(leaked_fd) };
    assert!(
        !Path::new(&format!("/proc/{pod_pid}/fd/{leaked_fd}")).exists(),
        "the host process kept an inherited fd"
    );
    // Every thread of the sandbox (VMM, vCPU, the shim's worker and signal threads and
    // the stdio relays and control server they spawned) has its filter.
    let threads = assert_every_thread_filtered(pod_pid);
    for t in ["capsa", "capsa_vcpu0", "capsa_worker", "capsa_signals"] {
        assert!(threads.iter().any(|n| n == t), "no {t} thread: {threads:?}");
    }

    // The pid file's process is the state's pid, and ours now that create has exited.
    let st = oci.state("pod");
    assert_eq!(st["status"], "created", "{st}");
    assert_eq!(st["pid"], pod_pid, "{st}");
    assert_eq!(
        ppid(pod_pid),
        Some(std::process::id() as i32),
        "re-parented to the subreaper"
    );
    let hook_state: serde_json::Value =
        serde_json::from_str(&read_trim(hooks_dir.join("createRuntime.json"))).unwrap();
    assert_eq!(
        (hook_state["id"].as_str(), hook_state["pid"].as_i64()),
        (Some("pod"), Some(pod_pid as i64))
    );
    // runtime-spec: the create hooks see the container still `creating`.
    assert_eq!(hook_state["status"], "creating", "{hook_state}");
    let hook_state: serde_json::Value =
        serde_json::from_str(&read_trim(hooks_dir.join("createContainer.json"))).unwrap();
    assert_eq!(hook_state["status"], "creating", "{hook_state}");
    assert!(!hooks_dir.join("startContainer.json").exists());

    // Host cgroups: the sandbox process in the sandbox cgroup, exactly the vCPU threads in
    // `vcpu`, with the spec's CPU limits there and the memory limit on the sandbox.
    let cpu = Path::new("/sys/fs/cgroup/cpu").join(&cg_rel);
    let v2 = !Path::new("/sys/fs/cgroup/cpu").exists();
    if !v2 {
        let procs = read_trim(cpu.join("cgroup.procs"));
        assert!(procs.lines().any(|l| l == pod_pid.to_string()), "{procs}");
        let vcpus = threads_named(pod_pid, "capsa_vcpu");
        assert_eq!(vcpus.len(), 1, "one vCPU for a 0.5 CPU quota");
        let tasks: Vec<i32> = read_trim(cpu.join("vcpu/tasks"))
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        for v in &vcpus {
            assert!(
                tasks.contains(v),
                "vCPU thread {v} not in vcpu/tasks {tasks:?}"
            );
        }
        // Besides the vCPUs, only KVM's own worker threads for the VM (such as
        // kvm-nx-lpage-recovery, started from a vCPU thread and inheriting its cgroups).
        for t in tasks.iter().filter(|t| !vcpus.contains(t)) {
            let comm = read_trim(format!("/proc/{pod_pid}/task/{t}/comm"));
            assert!(
                comm.starts_with("kvm"),
                "thread {t} ({comm}) should not be in vcpu"
            );
        }
        let sandbox_tasks = read_trim(cpu.join("tasks"));
        assert!(
            sandbox_tasks.lines().any(|l| l == pod_pid.to_string()),
            "the VMM thread stays in the sandbox cgroup: {sandbox_tasks}"
        );
        assert_eq!(read_trim(cpu.join("vcpu/cpu.cfs_quota_us")), "50000");
        assert_eq!(read_trim(cpu.join("vcpu/cpu.cfs_period_us")), "100000");
        assert_eq!(read_trim(cpu.join("vcpu/cpu.shares")), "512");
        let mem = Path::new("/sys/fs/cgroup/memory").join(&cg_rel);
        assert_eq!(
            read_trim(mem.join("memory.limit_in_bytes")),
            (400u64 << 20).to_string()
        );
    }

    oci.ok(&["start", "pod"]);
    assert_eq!(oci.status("pod"), "running");
    let hook_state: serde_json::Value =
        serde_json::from_str(&read_trim(hooks_dir.join("startContainer.json"))).unwrap();
    assert_eq!(
        (hook_state["id"].as_str(), hook_state["status"].as_str()),
        (Some("pod"), Some("created")),
        "{hook_state}"
    );
    let hook_where = read_trim(hooks_dir.join("startContainer.where"));
    assert_eq!(
        hook_where, "capsa __container-init",
        "the startContainer hook ran in the container's pid namespace, before its program"
    );
    let hook_state: serde_json::Value =
        serde_json::from_str(&read_trim(hooks_dir.join("poststart.json"))).unwrap();
    assert_eq!(hook_state["status"], "running");
    wait_until("the pod's first output", GUEST_DEADLINE, || {
        oci.output("pod").0.contains("pod-up")
    });

    // exec in the foreground: output and exit status; the guest is sized from the limit.
    let o = oci.run(&[
        "exec",
        "pod",
        "sh",
        "-c",
        "echo exec-out; grep MemTotal /proc/meminfo; echo exec-err >&2; exit 3",
    ]);
    assert_eq!(o.code(), Some(3), "{o}");
    assert!(o.stdout.starts_with("exec-out\n"), "{o}");
    let mem_kib: u64 = o.stdout.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(
        mem_kib < 352 * 1024 && mem_kib > 250 * 1024,
        "guest RAM {mem_kib} KiB for a 400 MiB limit"
    );
    assert_eq!(o.stderr, "exec-err\n", "{o}");

    // A detached exec from a process.json: its host process is ours and exits with it.
    let process = t.path().join("process.json");
    std::fs::write(
        &process,
        serde_json::json!({"args": ["sh", "-c", "exit 5"], "cwd": "/", "user": {"uid": 0, "gid": 0}})
            .to_string(),
    )
    .unwrap();
    let exec_pid_file = t.path().join("exec.pid");
    oci.ok(&[
        "exec",
        "--process",
        process.to_str().unwrap(),
        "--detach",
        "--pid-file",
        exec_pid_file.to_str().unwrap(),
        "pod",
    ]);
    let exec_pid: i32 = read_trim(&exec_pid_file).parse().unwrap();
    assert_eq!(wait_pid(exec_pid, GUEST_DEADLINE), 5);

    // ps lists the container's processes as guest pids (sh and sleep), as the table does.
    let guest_pids = || -> Vec<i64> {
        let o = oci.ok(&["ps", "--format", "json", "pod"]);
        let mut v: Vec<i64> = serde_json::from_str(o.stdout.trim()).unwrap();
        v.sort();
        v
    };
    let pod_pids = guest_pids();
    assert!(
        !pod_pids.is_empty() && pod_pids.iter().all(|p| *p > 1),
        "{pod_pids:?}"
    );
    let o = oci.ok(&["ps", "pod"]);
    let mut table: Vec<i64> = o
        .stdout
        .lines()
        .skip(1)
        .map(|l| l.parse().unwrap())
        .collect();
    table.sort();
    assert_eq!(table, pod_pids, "{o}");

    // SIGKILL to a detached exec's host process reaches the guest process too.
    // Its stdio is not ours to read to the end: the host process keeps it until it exits.
    let mut child = oci
        .command(&[
            "exec",
            "--detach",
            "--pid-file",
            exec_pid_file.to_str().unwrap(),
            "pod",
            "sleep",
            "1000000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(start.elapsed() < GUEST_DEADLINE, "exec --detach hangs");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        st.success(),
        "exec --detach sleep: {st}\n{}",
        oci.diagnostics()
    );
    let exec_pid: i32 = read_trim(&exec_pid_file).parse().unwrap();
    let with_exec = guest_pids();
    if with_exec.len() != pod_pids.len() + 1 {
        let mut st = 0;
        // SAFETY: waitpid on our adopted child with a valid out-pointer, not blocking.
        let r = unsafe { libc::waitpid(exec_pid, &mut st, libc::WNOHANG) };
        panic!(
            "the exec'd sleep is not among {with_exec:?} (before: {pod_pids:?}); its host \
             process: waitpid {r}, status {st:#x}\n{}",
            oci.diagnostics()
        );
    }
    // SAFETY: kill with plain integers, on our own adopted child.
    unsafe { libc::kill(exec_pid, libc::SIGKILL) };
    assert_eq!(wait_pid(exec_pid, Duration::from_secs(30)), 137);
    wait_until(
        "the exec'd sleep to be killed in the guest",
        GUEST_DEADLINE,
        || guest_pids() == pod_pids,
    );

    // update: the owner's CPU limits go to its vCPU threads on the host.
    oci.ok(&["update", "--cpu-quota", "60000", "pod"]);
    if !v2 {
        assert_eq!(read_trim(cpu.join("vcpu/cpu.cfs_quota_us")), "60000");
        assert_eq!(read_trim(cpu.join("vcpu/cpu.cfs_period_us")), "100000");
    }

    // pause freezes the vCPU threads only: state still answers.
    oci.ok(&["pause", "pod"]);
    assert_eq!(oci.status("pod"), "paused");
    if !v2 {
        let freezer = Path::new("/sys/fs/cgroup/freezer")
            .join(&cg_rel)
            .join("vcpu");
        assert_eq!(read_trim(freezer.join("freezer.state")), "FROZEN");
    }
    // The vCPU thread gets no CPU time while frozen.
    let vcpu_time = || {
        let tid = threads_named(pod_pid, "capsa_vcpu")[0];
        let stat = read_trim(format!("/proc/{pod_pid}/task/{tid}/stat"));
        let f: Vec<u64> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|x| x.parse().unwrap())
            .collect();
        f[0] + f[1]
    };
    std::thread::sleep(Duration::from_millis(500));
    let before = vcpu_time();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(vcpu_time(), before, "the vCPU ran while paused");
    oci.ok(&["resume", "pod"]);
    assert_eq!(oci.status("pod"), "running");

    // A pod container: stdout and stderr apart, exit status 7 from its host process.
    let c2 = busybox_bundle(
        &t.path().join("c2-bundle"),
        false,
        &["sh", "-c", "echo out-$(hostname); echo err >&2; exit 7"],
    );
    edit_config(&c2, |v| pod_annotations(v, "container"));
    let c2_pid = oci.create("c2", &c2, None);
    assert_ne!(c2_pid, pod_pid);
    // A pod member's host process is filtered too (its main thread is its worker).
    let threads = assert_every_thread_filtered(c2_pid);
    assert!(threads.iter().any(|n| n == "capsa_signals"), "{threads:?}");
    assert_eq!(oci.status("c2"), "created");
    oci.ok(&["start", "c2"]);
    assert_eq!(wait_pid(c2_pid, GUEST_DEADLINE), 7);
    assert_eq!(oci.output("c2"), ("out-capsa\n".into(), "err\n".into()));
    let st = oci.state("c2");
    assert_eq!(
        (st["status"].as_str(), st["pid"].as_i64()),
        (Some("stopped"), Some(0))
    );
    oci.ok(&["delete", "c2"]);
    let o = oci.run(&["state", "c2"]);
    o.assert_stderr_has("does not exist");

    // A terminal through the console socket, sized by whoever holds the master.
    let c3 = busybox_bundle(
        &t.path().join("c3-bundle"),
        true,
        &["sh", "-c", "tty; stty size; read line; echo got-$line"],
    );
    edit_config(&c3, |v| pod_annotations(v, "container"));
    let sock = t.path().join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let receiver = std::thread::spawn(move || recv_fd(&listener.accept().unwrap().0));
    let c3_pid = oci.create("c3", &c3, Some(&sock));
    assert_every_thread_filtered(c3_pid);
    let master = receiver.join().unwrap();
    set_winsize(&master, 40, 100);
    oci.ok(&["start", "c3"]);
    // SAFETY: write on the master fd we own, from a live buffer.
    unsafe {
        libc::write(
            std::os::fd::AsRawFd::as_raw_fd(&master),
            b"ping\r".as_ptr().cast(),
            5,
        )
    };
    let seen = read_until(&master, "got-ping", GUEST_DEADLINE);
    // The terminal comes from the container's own devpts: its name resolves there.
    assert!(seen.contains("/dev/pts/0"), "{seen:?}");
    assert!(seen.contains("40 100"), "terminal size: {seen:?}");
    assert!(seen.contains("got-ping"), "{seen:?}");
    assert_eq!(wait_pid(c3_pid, GUEST_DEADLINE), 0);
    oci.ok(&["delete", "c3"]);

    // kill: a signal the process handles, and one it cannot.
    let c4 = busybox_bundle(
        &t.path().join("c4-bundle"),
        false,
        &[
            "sh",
            "-c",
            "trap 'exit 42' TERM; echo ready; sleep 1000000 & wait",
        ],
    );
    // A pod member's limits apply to its cgroup in the guest (the VM is the pod's).
    edit_config(&c4, |v| {
        pod_annotations(v, "container");
        v["linux"]["resources"] = serde_json::json!({
            "cpu": {"quota": 20000, "period": 100000},
            "memory": {"limit": 64i64 << 20},
            "pids": {"limit": 20},
        });
        v["mounts"].as_array_mut().unwrap().push(serde_json::json!({
            "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        }));
    });
    let c4_pid = oci.create("c4", &c4, None);
    oci.ok(&["start", "c4"]);
    wait_until("c4 to run", GUEST_DEADLINE, || {
        oci.output("c4").0.contains("ready")
    });
    let o = oci.ok(&["events", "--stats", "c4"]);
    let ev: serde_json::Value = serde_json::from_str(o.stdout.trim()).unwrap();
    assert_eq!(
        (ev["type"].as_str(), ev["id"].as_str()),
        (Some("stats"), Some("c4"))
    );
    assert_eq!(ev["data"]["memory"]["usage"]["limit"], 64u64 << 20, "{ev}");
    assert_eq!(ev["data"]["pids"]["limit"], 20, "{ev}");
    assert_eq!(ev["data"]["pids"]["current"], 2, "sh and sleep: {ev}");
    assert!(
        ev["data"]["memory"]["usage"]["usage"].as_u64().unwrap() > 0,
        "{ev}"
    );
    // update (as containerd's shim calls it: resources JSON on stdin), then read the
    // limits back from inside the container.
    let mut child = oci
        .command(&["update", "--resources", "-", "c4"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        br#"{"cpu": {"quota": 30000}, "memory": {"limit": 48000000}, "pids": {"limit": 12}}"#,
    )
    .unwrap();
    drop(child.stdin.take());
    let o = wait_with_deadline(child, GUEST_DEADLINE);
    assert_eq!(o.code(), Some(0), "{o}");
    let o = oci.ok(&[
        "exec",
        "c4",
        "sh",
        "-c",
        "d=/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup); cat $d/cpu.max $d/memory.max $d/pids.max",
    ]);
    assert_eq!(o.stdout, "30000 100000\n47996928\n12\n", "{o}");
    let o = oci.run(&["delete", "c4"]);
    o.assert_stderr_has("not stopped: running");
    oci.ok(&["kill", "c4", "TERM"]);
    assert_eq!(wait_pid(c4_pid, GUEST_DEADLINE), 42);
    oci.ok(&["delete", "c4"]);

    let c5 = busybox_bundle(&t.path().join("c5-bundle"), false, &["sleep", "1000"]);
    edit_config(&c5, |v| pod_annotations(v, "container"));
    let c5_pid = oci.create("c5", &c5, None);
    oci.ok(&["start", "c5"]);
    oci.ok(&["kill", "c5", "9"]);
    assert_eq!(wait_pid(c5_pid, GUEST_DEADLINE), 137);
    let o = oci.run(&["kill", "c5", "KILL"]);
    o.assert_stderr_has("container not running");
    oci.ok(&["delete", "c5"]);

    // The sandbox's host process dies (crash): reported stopped, and delete --force
    // removes its cgroups, mounts, guest root and state.
    let guest_root = PathBuf::from(
        serde_json::from_slice::<serde_json::Value>(
            &std::fs::read(oci.root.join("pod/state.json")).unwrap(),
        )
        .unwrap()["guest_root"]
            .as_str()
            .unwrap(),
    );
    assert!(guest_root.exists());
    // SAFETY: kill with plain integers, on our own adopted child.
    unsafe { libc::kill(pod_pid, libc::SIGKILL) };
    assert_eq!(wait_pid(pod_pid, Duration::from_secs(30)), 137);
    assert_eq!(oci.status("pod"), "stopped");
    oci.ok(&["delete", "--force", "pod"]);
    assert!(!oci.root.join("pod").exists());
    assert!(!guest_root.exists(), "guest root removed");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(oci.root.to_str().unwrap()), "{mounts}");
    if !v2 {
        for c in ["cpu", "cpuacct", "cpuset", "memory", "freezer", "pids"] {
            let d = Path::new("/sys/fs/cgroup").join(c).join(&cg_rel);
            assert!(!d.exists(), "{} left behind", d.display());
        }
    }
    let hook_state: serde_json::Value =
        serde_json::from_str(&read_trim(hooks_dir.join("poststop.json"))).unwrap();
    assert_eq!(hook_state["status"], "stopped");
    for c in [
        "cpu", "cpuacct", "cpuset", "memory", "freezer", "pids", "devices", "blkio",
    ] {
        let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(c).join("capsa-test"));
    }
}

/// `capsa run` in the foreground (the README's command): the container's output on our
/// stdout, its exit status as ours, its state left for `delete`. The rootfs here is an
/// ext4 disk image (virtio-blk) rather than a directory (virtio-fs), with root.readonly:
/// the disk is attached read-only and the image is left unchanged.
#[test]
fn run_in_the_foreground_from_a_disk_image() {
    let kernel = guest_kernel();
    let t = tempfile::tempdir().unwrap();
    let oci = Oci {
        root: t.path().join("root"),
        kernel,
        dir: t.path().to_path_buf(),
    };
    let b = busybox_bundle(
        &t.path().join("bundle"),
        false,
        &["sh", "-c", "echo hello from $(hostname) on $(awk '$2 == \"/\" {t = $3} END {print t}' /proc/mounts) ro=$(cat /sys/block/vda/ro); touch /x 2>/dev/null && echo wrote; echo oops >&2; exit 3"],
    );
    let image = t.path().join("rootfs.ext4");
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(b.join("rootfs"))
        .arg(&image)
        .arg("64M")
        .status()
        .expect("mkfs.ext4 (e2fsprogs)");
    assert!(st.success());
    edit_config(&b, |v| {
        v["root"]["path"] = image.to_str().unwrap().into();
        v["root"]["readonly"] = true.into();
    });
    let before = std::fs::read(&image).unwrap();
    let o = oci.run(&["run", "--bundle", b.to_str().unwrap(), "fg"]);
    assert_eq!(o.code(), Some(3), "{o}\n{}", oci.diagnostics_of("fg"));
    assert_eq!(o.stdout, "hello from capsa on ext4 ro=1\n", "{o}");
    assert!(
        std::fs::read(&image).unwrap() == before,
        "the read-only image changed"
    );
    assert_eq!(o.stderr, "oops\n", "{o}");
    assert_eq!(oci.status("fg"), "stopped");
    oci.ok(&["delete", "fg"]);
    assert!(!oci.root.join("fg").exists());
}
