//! The OCI command line without booting a guest: errors as clients parse them, bundle
//! validation, the JSON log, state of dead sandboxes, spec/features/list, and a create
//! whose VM cannot be built (cleaned up, no pid file).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// `capsa --root ROOT args...`.
fn oci(root: &Path, args: &[&str]) -> Output {
    let mut all = vec!["--root", root.to_str().unwrap()];
    all.extend_from_slice(args);
    run(&all)
}

fn bundle(dir: &Path) -> PathBuf {
    let b = dir.join("bundle");
    let out = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/busybox-bundle.sh"))
        .arg(&b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    b
}

fn edit_config(b: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = b.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
}

#[test]
fn missing_containers_say_does_not_exist() {
    let d = tempfile::tempdir().unwrap();
    for args in [
        &["state", "nope"][..],
        &["start", "nope"],
        &["kill", "nope", "KILL"],
        &["delete", "nope"],
        &["delete", "--force", "nope"],
        &["pause", "nope"],
        &["resume", "nope"],
        &["ps", "--format", "json", "nope"],
        &["exec", "nope", "true"],
        &["update", "--memory", "64m", "nope"],
        &["events", "--stats", "nope"],
    ] {
        let o = oci(d.path(), args);
        assert_eq!(o.code(), Some(1), "{args:?}\n{o}");
        o.assert_stderr_has("container \"nope\" does not exist");
    }
}

#[test]
fn errors_go_to_the_json_log_as_containerd_reads_them() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("log.json");
    let o = oci(
        d.path(),
        &[
            "--log",
            log.to_str().unwrap(),
            "--log-format",
            "json",
            "state",
            "gone",
        ],
    );
    assert_eq!(o.code(), Some(1), "{o}");
    o.assert_stderr_has("does not exist");
    let text = std::fs::read_to_string(&log).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["level"], "error", "{text}");
    assert_eq!(last["msg"], "container \"gone\" does not exist");
    assert!(last["time"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn create_rejects_bad_bundles_and_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    let b = bundle(d.path());
    let create = |id: &str| {
        oci(
            &root,
            &[
                "create",
                "--bundle",
                b.to_str().unwrap(),
                "--kernel",
                "/bin/true",
                id,
            ],
        )
    };

    std::fs::write(
        b.join("config.json.bak"),
        std::fs::read(b.join("config.json")).unwrap(),
    )
    .unwrap();
    let restore = || std::fs::copy(b.join("config.json.bak"), b.join("config.json")).unwrap();

    std::fs::write(b.join("config.json"), "{\"ociVersion\": ").unwrap();
    let o = create("c1");
    assert_eq!(o.code(), Some(1), "{o}");
    o.assert_stderr_has("malformed config");

    restore();
    edit_config(&b, |v| v["ociVersion"] = "2.0.0".into());
    let o = create("c1");
    o.assert_stderr_has("unsupported ociVersion \"2.0.0\"");

    restore();
    edit_config(&b, |v| v["root"]["path"] = "no-such-rootfs".into());
    let o = create("c1");
    o.assert_stderr_has("no-such-rootfs: no such directory");

    restore();
    edit_config(&b, |v| v["process"]["terminal"] = true.into());
    let o = create("c1");
    o.assert_stderr_has("--console-socket");

    restore();
    let o = oci(
        &root,
        &["create", "--bundle", b.to_str().unwrap(), "bad/id"],
    );
    o.assert_stderr_has("invalid container id");

    // No state is left behind by any of these.
    let left: Vec<_> = std::fs::read_dir(&root)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_vm_that_cannot_be_built_fails_create_cleanly() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    let b = bundle(d.path());
    let pid_file = d.path().join("pid");
    let id = format!("bad-kernel-{}", std::process::id());
    // Not a kernel: the shim's Vm::new fails after cgroups and mounts were set up.
    let o = oci(
        &root,
        &[
            "create",
            "--bundle",
            b.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            "--kernel",
            "/bin/true",
            &id,
        ],
    );
    assert_eq!(o.code(), Some(1), "{o}");
    assert!(o.stderr.to_lowercase().contains("kernel"), "{o}");
    assert!(!pid_file.exists(), "no pid file after a failed create");
    assert!(!root.join(&id).exists(), "state removed");
    assert!(
        !Path::new("/sys/fs/cgroup/memory/capsa").join(&id).exists()
            && !Path::new("/sys/fs/cgroup/capsa").join(&id).exists(),
        "cgroups removed"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&id), "mounts removed:\n{mounts}");
    // The bundle's rootfs is untouched.
    assert!(b.join("rootfs/bin/busybox").is_file());
}

/// Writes a state record by hand: a container whose host process is `pid`.
fn fake_container(root: &Path, id: &str, pid: u32, status: &str) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let start: u64 = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().nth(19))
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let dir = root.join(id);
    std::fs::create_dir_all(&dir).unwrap();
    let rec = serde_json::json!({
        "id": id, "bundle": "/b", "rootfs": "/b/rootfs", "status": status,
        "pid": pid, "pid_start": start, "creator_pid": 0, "created": "2024-01-01T00:00:00Z",
        "annotations": {"a": "b"}, "role": {"kind": "standalone"}, "vm_dir": dir,
        "console_socket": null, "stdio_tty": false, "kernel": null, "exit_code": null,
        "cgroups": null, "guest_root": null,
        "log": {"file": null, "json": false, "debug": false},
    });
    std::fs::write(dir.join("state.json"), rec.to_string()).unwrap();
    std::fs::write(dir.join("config.json"), "{\"ociVersion\": \"1.0.2\"}").unwrap();
}

#[test]
fn a_crashed_sandbox_is_stopped_and_can_be_deleted() {
    let d = tempfile::tempdir().unwrap();
    let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
    fake_container(d.path(), "c1", sleeper.id(), "running");
    let o = oci(d.path(), &["state", "c1"]);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(
        (v["status"].as_str(), v["pid"].as_u64()),
        (Some("running"), Some(sleeper.id() as u64)),
        "{o}"
    );
    assert_eq!(v["annotations"]["a"], "b");
    let o = oci(d.path(), &["delete", "c1"]);
    assert_eq!(o.code(), Some(1), "{o}");
    o.assert_stderr_has("that is not stopped: running");

    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    let o = oci(d.path(), &["state", "c1"]);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(
        (v["status"].as_str(), v["pid"].as_u64()),
        (Some("stopped"), Some(0)),
        "{o}"
    );
    let o = oci(d.path(), &["kill", "c1", "TERM"]);
    o.assert_stderr_has("container not running");
    for args in [
        &["update", "--pids-limit", "5", "c1"][..],
        &["events", "c1"],
    ] {
        let o = oci(d.path(), args);
        assert_eq!(o.code(), Some(1), "{args:?} {o}");
        o.assert_stderr_has("container not running");
    }
    let o = oci(d.path(), &["ps", "--format", "json", "c1"]);
    assert_eq!(o.stdout.trim(), "[]", "{o}");
    let o = oci(d.path(), &["list", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v[0]["status"], "stopped", "{o}");
    let o = oci(d.path(), &["delete", "--force", "c1"]);
    assert_eq!(o.code(), Some(0), "{o}");
    assert!(!d.path().join("c1").exists());
    let o = oci(d.path(), &["list", "-q"]);
    assert_eq!(o.stdout, "", "{o}");
}

#[test]
fn bad_signals_are_rejected() {
    let d = tempfile::tempdir().unwrap();
    let me = std::process::id();
    fake_container(d.path(), "c1", me, "running");
    let o = oci(d.path(), &["kill", "c1", "SIGNOPE"]);
    assert_eq!(o.code(), Some(1), "{o}");
    o.assert_stderr_has("unknown signal \"SIGNOPE\"");
}

#[test]
fn spec_writes_a_bundle_config_and_features_describe_capsa() {
    let d = tempfile::tempdir().unwrap();
    let o = run(&["spec", "--bundle", d.path().to_str().unwrap()]);
    assert_eq!(o.code(), Some(0), "{o}");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(v["root"]["path"], "rootfs");
    assert_eq!(v["process"]["terminal"], true);
    let o = run(&["spec", "--bundle", d.path().to_str().unwrap()]);
    assert_eq!(o.code(), Some(1));
    o.assert_stderr_has("exists");

    let o = run(&["features"]);
    assert_eq!(o.code(), Some(0), "{o}");
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["ociVersionMin"], "1.0.0");
    assert!(v["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h == "poststop"));
    assert_eq!(v["linux"]["cgroup"]["v1"], true);
}

#[test]
fn the_vm_commands_still_parse_next_to_the_oci_ones() {
    let o = run(&["--help"]);
    for cmd in [
        "vm", "check", "agent", "create", "start", "state", "kill", "delete", "exec",
    ] {
        assert!(o.stdout.contains(cmd), "{cmd}\n{o}");
    }
    assert!(
        !o.stdout.contains("__shim"),
        "internal commands stay hidden"
    );
}
