//! Container state under `--root/<id>/`: `state.json` (this module's [`Record`], written
//! atomically: temp file + rename, under an flock), `config.json` (the bundle's spec as
//! given to `create`), and the shim's sockets and logs.
//!
//! The recorded status is what the last transition wrote; the reported status also looks
//! at the shim process: a created/running/paused container whose shim is gone (exited,
//! crashed, killed, or a zombie nobody reaped yet) is stopped.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::cgroup;
use super::cli::LogFormat;

/// OCI runtime-spec version of the state JSON capsa prints.
pub const OCI_VERSION: &str = "1.2.0";

/// Errors about containers and their state files.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// No such container (clients match "does not exist").
    #[error("container \"{0}\" does not exist")]
    NotExist(String),
    /// The id is taken.
    #[error("container \"{0}\" already exists")]
    Exists(String),
    /// The id cannot be used.
    #[error("invalid container id {0:?}: use 1 to 128 letters, digits, '-', '_' or '.', not starting with '.'")]
    InvalidId(String),
    /// A state file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A state file is not valid JSON.
    #[error("{path}: corrupt state file: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Container statuses (OCI's four plus runc's `paused`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// `create` is still running.
    Creating,
    /// Created, process not started.
    Created,
    /// The process runs.
    Running,
    /// The VM's vCPUs are frozen.
    Paused,
    /// The process exited (or the sandbox died).
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// A container's place in a (CRI) pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Role {
    /// Not in a pod: its own VM.
    Standalone,
    /// The pod's sandbox (infra) container: owns the VM.
    Sandbox,
    /// A container in the VM of sandbox `sandbox`.
    Member {
        /// The sandbox container's id.
        sandbox: String,
    },
}

impl Role {
    /// True when this container's shim runs the VM.
    pub fn owns_vm(&self) -> bool {
        !matches!(self, Role::Member { .. })
    }
}

/// Logging settings the shim inherits from `create`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LogSettings {
    /// `--log`.
    pub file: Option<PathBuf>,
    /// `--log-format json`.
    pub json: bool,
    /// `--debug`.
    pub debug: bool,
}

impl LogSettings {
    /// The format.
    pub fn format(&self) -> LogFormat {
        if self.json {
            LogFormat::Json
        } else {
            LogFormat::Text
        }
    }
}

/// `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Container id.
    pub id: String,
    /// Absolute bundle path.
    pub bundle: PathBuf,
    /// Absolute host rootfs path.
    pub rootfs: PathBuf,
    /// Last recorded status.
    pub status: Status,
    /// The shim's pid (the pid in --pid-file); 0 until it runs.
    pub pid: i32,
    /// The shim's start time (/proc/PID/stat field 22), to tell a reused pid apart.
    pub pid_start: u64,
    /// The `create` (or `run`) process, while the status is `creating`.
    pub creator_pid: i32,
    /// Creation time, RFC 3339.
    pub created: String,
    /// The spec's annotations.
    pub annotations: BTreeMap<String, String>,
    /// Place in a pod.
    pub role: Role,
    /// State directory of the container whose shim owns the VM (this one's own, unless a
    /// pod member).
    pub vm_dir: PathBuf,
    /// `--console-socket`.
    pub console_socket: Option<PathBuf>,
    /// Terminal on the shim's own stdio (`run` in the foreground without a console socket).
    pub stdio_tty: bool,
    /// Guest kernel.
    pub kernel: Option<PathBuf>,
    /// The container's exit code (128+N for signal N), once known.
    pub exit_code: Option<i32>,
    /// Host cgroups to remove on delete.
    pub cgroups: Option<cgroup::Record>,
    /// The guest root directory the shim made (removed on delete if the shim could not).
    pub guest_root: Option<PathBuf>,
    /// Logging settings.
    pub log: LogSettings,
}

/// Checks a container id: it becomes a path component here and in the guest.
pub fn validate_id(id: &str) -> Result<(), StateError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(StateError::InvalidId(id.to_string()))
    }
}

/// The state directory of one container.
#[derive(Debug, Clone)]
pub struct StateDir {
    /// `--root/<id>`.
    pub path: PathBuf,
    /// The id.
    pub id: String,
}

/// An exclusive lock on a state directory, released when dropped.
pub struct Lock {
    _file: File,
}

impl StateDir {
    /// The directory of container `id` under `root` (not touched yet).
    pub fn new(root: &Path, id: &str) -> Result<StateDir, StateError> {
        validate_id(id)?;
        Ok(StateDir {
            path: root.join(id),
            id: id.to_string(),
        })
    }

    /// The directory of an existing container.
    pub fn open(root: &Path, id: &str) -> Result<StateDir, StateError> {
        // An invalid id cannot exist: clients expect "does not exist" for a bad id too.
        let dir = StateDir::new(root, id).map_err(|_| StateError::NotExist(id.to_string()))?;
        if !dir.path.join("state.json").is_file() {
            return Err(StateError::NotExist(id.to_string()));
        }
        Ok(dir)
    }

    /// Creates the directory; fails with [`StateError::Exists`] if it is there.
    pub fn create(&self) -> Result<(), StateError> {
        let root = self.path.parent().unwrap_or(Path::new("/"));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(root)
            .map_err(io_err(root))?;
        match std::fs::DirBuilder::new().mode(0o700).create(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(StateError::Exists(self.id.clone()))
            }
            Err(e) => Err(io_err(&self.path)(e)),
        }
    }

    /// A file in the directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Takes the directory's lock (blocking).
    pub fn lock(&self) -> Result<Lock, StateError> {
        let p = self.file("lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io_err(&p))?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_err(&p)(std::io::Error::last_os_error()));
        }
        Ok(Lock { _file: f })
    }

    /// Reads `state.json`.
    pub fn read(&self) -> Result<Record, StateError> {
        let p = self.file("state.json");
        let data = match std::fs::read(&p) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::NotExist(self.id.clone()))
            }
            Err(e) => return Err(io_err(&p)(e)),
        };
        serde_json::from_slice(&data).map_err(|source| StateError::Corrupt { path: p, source })
    }

    /// Writes `state.json` atomically (callers hold the lock or own the directory).
    pub fn write(&self, rec: &Record) -> Result<(), StateError> {
        let data = serde_json::to_vec_pretty(rec).expect("state serialises");
        write_atomic(&self.file("state.json"), &data)
    }

    /// Read-modify-write of `state.json` under the lock; returns the new record.
    pub fn update(&self, f: impl FnOnce(&mut Record)) -> Result<Record, StateError> {
        let _lock = self.lock()?;
        let mut rec = self.read()?;
        f(&mut rec);
        self.write(&rec)?;
        Ok(rec)
    }
}

use std::os::unix::fs::DirBuilderExt;

/// Writes `path` atomically: a temp file next to it, fsync'd, renamed over it.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StateError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io_err(path))
}

/// Start time of process `pid` (clock ticks since boot), or `None` if it is gone or a
/// zombie.
pub fn process_start(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_start(&stat)
}

/// Field 22 (starttime) of a /proc/PID/stat line, `None` for a zombie or dead process.
fn parse_stat_start(stat: &str) -> Option<u64> {
    // The command name is in parentheses and may contain spaces or ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // `rest` starts at field 3 (state); starttime is field 22.
    fields.nth(22 - 4)?.parse().ok()
}

/// True if process `pid` runs and started at `start`.
pub fn alive(pid: i32, start: u64) -> bool {
    process_start(pid) == Some(start)
}

impl Record {
    /// The status to report: the recorded one, unless the process behind it is gone.
    pub fn effective_status(&self) -> Status {
        match self.status {
            Status::Stopped => Status::Stopped,
            Status::Creating => {
                if process_start(self.creator_pid).is_some() {
                    Status::Creating
                } else {
                    Status::Stopped
                }
            }
            s => {
                if alive(self.pid, self.pid_start) {
                    s
                } else {
                    Status::Stopped
                }
            }
        }
    }

    /// The OCI state JSON (`state` command, hooks' stdin).
    pub fn oci_state(&self, status: Status) -> serde_json::Value {
        let pid = match status {
            Status::Stopped => 0,
            Status::Creating if self.pid == 0 => 0,
            _ => self.pid,
        };
        serde_json::json!({
            "ociVersion": OCI_VERSION,
            "id": self.id,
            "pid": pid,
            "status": status.to_string(),
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "owner": "",
            "annotations": self.annotations,
        })
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A record for tests.
    pub fn record(id: &str) -> Record {
        Record {
            id: id.into(),
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            status: Status::Created,
            pid: 0,
            pid_start: 0,
            creator_pid: 0,
            created: "2024-01-01T00:00:00Z".into(),
            annotations: BTreeMap::new(),
            role: Role::Standalone,
            vm_dir: "/r".into(),
            console_socket: None,
            stdio_tty: false,
            kernel: None,
            exit_code: None,
            cgroups: None,
            guest_root: None,
            log: LogSettings::default(),
        }
    }

    #[test]
    fn ids() {
        for ok in ["a", "abc-1_2.3", &"x".repeat(128)] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", ".x", "a/b", "a b", &"x".repeat(129)] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stat_parsing() {
        let line = "123 (a) b) S 1 123 123 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 100";
        assert_eq!(parse_stat_start(line), Some(98765));
        let zombie = "123 (x) Z 1 123 123 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 0 0";
        assert_eq!(parse_stat_start(zombie), None);
        assert_eq!(parse_stat_start("garbage"), None);
        let me = process_start(std::process::id() as i32).unwrap();
        assert!(alive(std::process::id() as i32, me));
        assert!(!alive(std::process::id() as i32, me + 1));
    }

    #[test]
    fn directory_lifecycle_and_atomic_updates() {
        let root = tempfile::tempdir().unwrap();
        let d = StateDir::new(root.path(), "c1").unwrap();
        assert!(matches!(
            StateDir::open(root.path(), "c1"),
            Err(StateError::NotExist(_))
        ));
        d.create().unwrap();
        assert!(matches!(d.create(), Err(StateError::Exists(_))));
        d.write(&record("c1")).unwrap();
        let opened = StateDir::open(root.path(), "c1").unwrap();
        let r = opened.update(|r| r.status = Status::Running).unwrap();
        assert_eq!(r.status, Status::Running);
        assert_eq!(d.read().unwrap().status, Status::Running);
        let leftovers: Vec<_> = std::fs::read_dir(&d.path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        std::fs::write(d.file("state.json"), b"{").unwrap();
        assert!(matches!(d.read(), Err(StateError::Corrupt { .. })));
        let e = StateDir::open(root.path(), "../x").unwrap_err();
        assert_eq!(e.to_string(), "container \"../x\" does not exist");
    }

    #[test]
    fn status_follows_the_shim_process() {
        let mut r = record("c");
        let me = std::process::id() as i32;
        r.pid = me;
        r.pid_start = process_start(me).unwrap();
        r.status = Status::Running;
        assert_eq!(r.effective_status(), Status::Running);
        assert_eq!(r.oci_state(Status::Running)["pid"], me);
        // A crashed shim (here: a pid that cannot exist) means stopped, pid 0.
        r.pid = i32::MAX;
        assert_eq!(r.effective_status(), Status::Stopped);
        assert_eq!(r.oci_state(Status::Stopped)["pid"], 0);
        assert_eq!(r.oci_state(Status::Stopped)["status"], "stopped");
        r.status = Status::Creating;
        r.creator_pid = me;
        assert_eq!(r.effective_status(), Status::Creating);
        r.creator_pid = i32::MAX;
        assert_eq!(r.effective_status(), Status::Stopped);
    }
}
