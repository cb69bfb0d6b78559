//! OCI hooks. Each runs with the container's state JSON on stdin, its `args` as argv,
//! `env` as its whole environment, and `timeout` seconds to finish (killed past that).
//!
//! Where they run, given that the container lives in a VM:
//! - `prestart` (deprecated), `createRuntime`, `createContainer`: on the host, in
//!   `create`, after the guest has created the container and before the pid file is
//!   written, with the status `creating`. A failure destroys the container and fails
//!   `create`.
//! - `startContainer`: in the guest, inside the container (its namespaces and root, its
//!   user and capabilities), just before its program is executed: the container's init
//!   helper runs them (`guest::container_init`). A failure fails `start`.
//! - `poststart`: on the host, in `start`, after the process started; failures are logged.
//! - `poststop`: on the host, in `delete`; failures are logged.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{Hook, Hooks, Spec};

/// The hook points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// Deprecated; run before createRuntime.
    Prestart,
    /// After the runtime environment exists.
    CreateRuntime,
    /// After the container exists.
    CreateContainer,
    /// Before the user process starts.
    StartContainer,
    /// After the user process started.
    Poststart,
    /// After the container is deleted.
    Poststop,
}

impl Point {
    fn hooks(self, h: &Hooks) -> &[Hook] {
        let v = match self {
            Point::Prestart =>
            {
                #[allow(deprecated)]
                h.prestart()
            }
            Point::CreateRuntime => h.create_runtime(),
            Point::CreateContainer => h.create_container(),
            Point::StartContainer => h.start_container(),
            Point::Poststart => h.poststart(),
            Point::Poststop => h.poststop(),
        };
        v.as_deref().unwrap_or(&[])
    }

    fn name(self) -> &'static str {
        match self {
            Point::Prestart => "prestart",
            Point::CreateRuntime => "createRuntime",
            Point::CreateContainer => "createContainer",
            Point::StartContainer => "startContainer",
            Point::Poststart => "poststart",
            Point::Poststop => "poststop",
        }
    }
}

/// A hook that failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// It could not be started.
    #[error("{point} hook {path}: {source}")]
    Spawn {
        /// Hook point.
        point: &'static str,
        /// Its binary.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// It exited unsuccessfully.
    #[error("{point} hook {path} failed ({status}): {stderr}")]
    Failed {
        /// Hook point.
        point: &'static str,
        /// Its binary.
        path: String,
        /// Exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// It ran past its timeout.
    #[error("{point} hook {path} timed out after {secs} s")]
    Timeout {
        /// Hook point.
        point: &'static str,
        /// Its binary.
        path: String,
        /// The timeout.
        secs: i64,
    },
}

/// Runs the hooks of `point` in order, each with `state` on stdin; stops at the first
/// failure.
pub fn run(spec: &Spec, point: Point, state: &serde_json::Value) -> Result<(), HookError> {
    let Some(hooks) = spec.hooks() else {
        return Ok(());
    };
    let state = state.to_string();
    for h in point.hooks(hooks) {
        run_one(h, point.name(), &state)?;
    }
    Ok(())
}

/// Runs the hooks of `point`, logging failures instead of returning them (poststart,
/// poststop).
pub fn run_logged(spec: &Spec, point: Point, state: &serde_json::Value) {
    if let Err(e) = run(spec, point, state) {
        tracing::warn!("{e}");
    }
}

fn run_one(h: &Hook, point: &'static str, state: &str) -> Result<(), HookError> {
    let path = h.path().display().to_string();
    let args = h.args().clone().unwrap_or_default();
    let mut cmd = Command::new(h.path());
    if let Some((argv0, rest)) = args.split_first() {
        use std::os::unix::process::CommandExt;
        cmd.arg0(argv0).args(rest);
    }
    cmd.env_clear();
    for kv in h.env().iter().flatten() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    let stderr_file = tempfile_for_stderr();
    cmd.stdin(Stdio::piped()).stdout(Stdio::null());
    match &stderr_file {
        Some(f) => match f.try_clone() {
            Ok(f) => cmd.stderr(f),
            Err(_) => cmd.stderr(Stdio::null()),
        },
        None => cmd.stderr(Stdio::null()),
    };
    tracing::debug!(point, path, "running hook");
    let mut child = cmd.spawn().map_err(|source| HookError::Spawn {
        point,
        path: path.clone(),
        source,
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is fine: ignore EPIPE.
        let _ = stdin.write_all(state.as_bytes());
    }
    let timeout = h.timeout().filter(|t| *t > 0);
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) => {}
            Err(source) => {
                return Err(HookError::Spawn {
                    point,
                    path,
                    source,
                })
            }
        }
        if let Some(t) = timeout {
            if start.elapsed() >= Duration::from_secs(t as u64) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HookError::Timeout {
                    point,
                    path,
                    secs: t,
                });
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if !status.success() {
        let stderr = stderr_file
            .and_then(|mut f| {
                use std::io::{Read, Seek};
                let mut s = String::new();
                f.seek(std::io::SeekFrom::Start(0)).ok()?;
                f.read_to_string(&mut s).ok()?;
                Some(s.trim().to_string())
            })
            .unwrap_or_default();
        return Err(HookError::Failed {
            point,
            path,
            status,
            stderr,
        });
    }
    Ok(())
}

/// An anonymous file for a hook's stderr (read back on failure).
fn tempfile_for_stderr() -> Option<std::fs::File> {
    let c = c"capsa-hook-stderr";
    // SAFETY: a valid C string and flags.
    let fd = unsafe { libc::memfd_create(c.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    use std::os::fd::FromRawFd;
    // SAFETY: memfd_create returned a new fd we own.
    Some(unsafe { std::fs::File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with(hooks: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "hooks": hooks,
        }))
        .unwrap()
    }

    #[test]
    fn hooks_get_state_on_stdin_args_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let script = format!("cat > {o}; echo \" $0 $1 $FOO\" >> {o}", o = out.display());
        let spec = spec_with(serde_json::json!({
            "createRuntime": [{"path": "/bin/sh", "args": ["hook0", "-c", script, "arg1", "arg2"],
                               "env": ["FOO=bar"]}],
        }));
        let state = serde_json::json!({"id": "c1", "status": "created"});
        run(&spec, Point::CreateRuntime, &state).unwrap();
        let got = std::fs::read_to_string(&out).unwrap();
        assert_eq!(got, format!("{state} arg1 arg2 bar\n"));
        // Other points have no hooks here.
        run(&spec, Point::Poststop, &state).unwrap();
    }

    #[test]
    fn failures_and_timeouts() {
        let spec = spec_with(serde_json::json!({
            "poststart": [{"path": "/bin/sh", "args": ["sh", "-c", "echo broken >&2; exit 3"]}],
            "poststop": [{"path": "/bin/sh", "args": ["sh", "-c", "sleep 5"], "timeout": 1}],
            "startContainer": [{"path": "/nonexistent/hook"}],
        }));
        let state = serde_json::json!({});
        let e = run(&spec, Point::Poststart, &state)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("poststart hook /bin/sh failed") && e.contains("broken"),
            "{e}"
        );
        let t = Instant::now();
        let e = run(&spec, Point::Poststop, &state).unwrap_err();
        assert!(matches!(e, HookError::Timeout { secs: 1, .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(4));
        let e = run(&spec, Point::StartContainer, &state).unwrap_err();
        assert!(matches!(e, HookError::Spawn { .. }), "{e}");
    }
}
