//! Wire format: every message is a frame, a u32 little-endian length followed by that many
//! bytes of JSON. A control connection starts with a `Hello` exchange that fixes the
//! protocol version; after that, each request gets exactly one response, in order.
//!
//! Stdio streams use separate connections to [`STREAM_PORT`]: the first frame is a
//! [`StreamHello`] naming the process and stream, after which the connection carries raw
//! bytes in one direction (stdin: host to guest; stdout/stderr/tty: guest to host).
//!
//! Both ends treat the other as untrusted: oversized or malformed frames are errors that
//! get an error reply (where a reply is possible), never a crash.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// Protocol version spoken by this build. Bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;
/// vsock port of the agent's control listener.
pub const CONTROL_PORT: u32 = 1024;
/// vsock port of the agent's stdio stream listener.
pub const STREAM_PORT: u32 = 1025;
/// Largest frame either end accepts. An OCI spec is a few KiB; 4 MiB leaves room for
/// large environments without letting a peer make us allocate without bound.
pub const MAX_FRAME: usize = 4 << 20;

/// Errors reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed or closed mid-frame.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection cleanly between frames.
    #[error("connection closed by peer")]
    Closed,
    /// The length prefix exceeds [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    /// The payload is not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Writes one frame holding `msg`.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), FrameError> {
    let body = serde_json::to_vec(msg).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame's raw payload.
pub fn read_frame_bytes<R: Read>(r: &mut R) -> Result<Vec<u8>, FrameError> {
    let mut len = [0u8; 4];
    // Distinguish a clean close (no byte of a new frame) from a truncated frame.
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(body)
}

/// Reads one frame and decodes it as `T`.
pub fn read_frame<R: Read, T: for<'de> Deserialize<'de>>(r: &mut R) -> Result<T, FrameError> {
    let body = read_frame_bytes(r)?;
    serde_json::from_slice(&body).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Where a container's root filesystem comes from, inside the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RootfsSource {
    /// A virtio-fs share with this tag.
    VirtioFs {
        /// The share's tag.
        tag: String,
    },
    /// A virtio-blk disk, by its serial (the VMM's disk id).
    Block {
        /// Disk serial (GET_ID).
        serial: String,
        /// Filesystem type to mount (e.g. ext4).
        fstype: String,
        /// Mount it read-only (the disk is attached read-only: `root.readonly`).
        #[serde(default)]
        read_only: bool,
    },
    /// A directory inside a virtio-fs share: the agent mounts the share once, at
    /// [`SHARES_DIR`]`/<tag>`, and binds `<that>/<path>` as the rootfs. A sandbox shares
    /// one host directory and binds each container's rootfs under it on the host, since
    /// shares cannot be added to a running VM.
    SharedDir {
        /// The share's tag.
        tag: String,
        /// Relative path inside the share.
        path: String,
    },
    /// A directory that already exists in the guest (tests, agent-only VMs).
    GuestPath {
        /// Absolute path in the guest.
        path: String,
    },
}

/// Where the guest agent mounts the shares of [`RootfsSource::SharedDir`]; spec mounts may
/// name paths below it.
pub const SHARES_DIR: &str = "/run/capsa-shares";

/// A process to run: the OCI process object, as in config.json.
pub type ProcessSpec = oci_spec::runtime::Process;

/// Requests from the host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// First message on a control connection.
    Hello {
        /// The host's protocol version.
        version: u32,
    },
    /// Create a container: set up its rootfs, namespaces and init process, but do not run
    /// the user program until `StartContainer`.
    CreateContainer {
        /// Container id.
        id: String,
        /// The bundle's OCI spec; `root.path` is ignored in favour of `rootfs`.
        spec: Box<oci_spec::runtime::Spec>,
        /// Where the rootfs comes from.
        rootfs: RootfsSource,
        /// The host will attach a stdin stream; otherwise stdin is /dev/null.
        #[serde(default)]
        stdin: bool,
    },
    /// Run the container's init process. Its spec's `startContainer` hooks run first,
    /// inside the container (after the process's user and capabilities are applied,
    /// before its program is executed), with `hook_state` (the OCI state JSON) on stdin.
    StartContainer {
        /// Container id.
        id: String,
        /// OCI state for the startContainer hooks.
        #[serde(default)]
        hook_state: Option<serde_json::Value>,
    },
    /// Run an extra process in a running container.
    Exec {
        /// Container id.
        id: String,
        /// Name of the new process, unique per container.
        exec_id: String,
        /// The process.
        process: Box<ProcessSpec>,
        /// The host will attach a stdin stream; otherwise stdin is /dev/null.
        #[serde(default)]
        stdin: bool,
    },
    /// Send a signal to the container's init (or an exec'd process), or to all of its
    /// processes.
    Signal {
        /// Container id.
        id: String,
        /// The exec'd process, or `None` for the container's init.
        exec_id: Option<String>,
        /// Signal number.
        signal: i32,
        /// Signal every process of the container.
        all: bool,
    },
    /// Wait until a process exits; the reply carries its status.
    Wait {
        /// Container id.
        id: String,
        /// The exec'd process, or `None` for the init.
        exec_id: Option<String>,
        /// SIGKILL the process if this connection closes before it exits: the host
        /// process standing for it died.
        #[serde(default)]
        kill_on_hangup: bool,
    },
    /// Resize a process's terminal.
    ResizeTty {
        /// Container id.
        id: String,
        /// The exec'd process, or `None` for the init.
        exec_id: Option<String>,
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// List the container's processes (guest pids).
    Ps {
        /// Container id.
        id: String,
    },
    /// Resource usage from the container's cgroup.
    Stats {
        /// Container id.
        id: String,
    },
    /// Change the container's resource limits (its cgroup in the guest).
    Update {
        /// Container id.
        id: String,
        /// The new limits (fields left out are not changed).
        resources: Box<oci_spec::runtime::LinuxResources>,
    },
    /// Remove a stopped container (or kill and remove with `force`).
    RemoveContainer {
        /// Container id.
        id: String,
        /// Kill it first if it still runs.
        force: bool,
    },
    /// Power the guest off.
    Shutdown,
}

/// How a process ended, as a shell reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// Normal exit with this code.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
}

impl ExitStatus {
    /// The shell's `$?`: the code, or 128 + the signal.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(c) => c,
            ExitStatus::Signaled(s) => 128 + s,
        }
    }
}

/// Cgroup statistics of a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Total CPU time in microseconds.
    pub cpu_usage_usec: u64,
    /// Current memory use in bytes.
    pub memory_current: u64,
    /// Number of processes.
    pub pids_current: u64,
    /// CPU time in user mode, microseconds.
    #[serde(default)]
    pub cpu_user_usec: u64,
    /// CPU time in kernel mode, microseconds.
    #[serde(default)]
    pub cpu_system_usec: u64,
    /// CFS periods with the quota active.
    #[serde(default)]
    pub cpu_periods: u64,
    /// Periods in which the quota was used up.
    #[serde(default)]
    pub cpu_throttled_periods: u64,
    /// Time throttled, microseconds.
    #[serde(default)]
    pub cpu_throttled_usec: u64,
    /// memory.max (`None`: no limit).
    #[serde(default)]
    pub memory_max: Option<u64>,
    /// memory.peak (0 where the kernel has none).
    #[serde(default)]
    pub memory_peak: u64,
    /// Times memory.max was hit (memory.events `max`).
    #[serde(default)]
    pub memory_failcnt: u64,
    /// Processes killed by the OOM killer in the cgroup (memory.events `oom_kill`).
    #[serde(default)]
    pub oom_kills: u64,
    /// pids.max (`None`: no limit).
    #[serde(default)]
    pub pids_max: Option<u64>,
}

/// Error categories the host maps to its own messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No such container or process.
    NotFound,
    /// Already exists.
    AlreadyExists,
    /// Not possible in the current state.
    InvalidState,
    /// The request itself is invalid.
    InvalidRequest,
    /// The protocol versions differ.
    VersionMismatch,
    /// Anything else (with the message).
    Internal,
}

/// Replies from the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Response {
    /// Reply to `Hello`.
    Hello {
        /// The agent's protocol version.
        version: u32,
    },
    /// Success with nothing to report.
    Ok,
    /// A process was started; its guest pid.
    Started {
        /// Guest pid.
        pid: i32,
    },
    /// Reply to `Wait`.
    Exited {
        /// How it ended.
        status: ExitStatus,
    },
    /// Reply to `Ps`.
    Pids {
        /// Guest pids.
        pids: Vec<i32>,
    },
    /// Reply to `Stats`.
    Stats(Box<Stats>),
    /// The request failed.
    Error {
        /// Category.
        kind: ErrorKind,
        /// Human-readable reason.
        message: String,
    },
}

impl Response {
    /// An error reply.
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Response::Error {
            kind,
            message: message.into(),
        }
    }
}

/// Which stdio stream a stream connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    /// Host to guest.
    Stdin,
    /// Guest to host.
    Stdout,
    /// Guest to host.
    Stderr,
    /// Both ways: the process's terminal.
    Tty,
}

/// First frame on a stream connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHello {
    /// Protocol version.
    pub version: u32,
    /// Container id.
    pub id: String,
    /// The exec'd process, or `None` for the init.
    pub exec_id: Option<String>,
    /// Which stream.
    pub kind: StreamKind,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn roundtrip<T: Serialize + for<'de> Deserialize<'de>>(msg: &T) -> T {
        let mut buf = Vec::new();
        write_frame(&mut buf, msg).unwrap();
        let len = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
        assert_eq!(len, buf.len() - 4);
        read_frame(&mut Cursor::new(buf)).unwrap()
    }

    #[test]
    fn requests_roundtrip() {
        let spec = oci_spec::runtime::Spec::default();
        let reqs = vec![
            Request::Hello {
                version: PROTOCOL_VERSION,
            },
            Request::CreateContainer {
                id: "c1".into(),
                spec: Box::new(spec),
                rootfs: RootfsSource::VirtioFs {
                    tag: "rootfs".into(),
                },
                stdin: true,
            },
            Request::StartContainer {
                id: "c1".into(),
                hook_state: Some(serde_json::json!({"status": "created"})),
            },
            Request::Signal {
                id: "c1".into(),
                exec_id: Some("e".into()),
                signal: 15,
                all: true,
            },
            Request::Wait {
                id: "c1".into(),
                exec_id: None,
                kill_on_hangup: true,
            },
            Request::ResizeTty {
                id: "c1".into(),
                exec_id: None,
                rows: 24,
                cols: 80,
            },
            Request::Update {
                id: "c1".into(),
                resources: Box::new(
                    serde_json::from_value(serde_json::json!({
                        "memory": {"limit": 1 << 30}, "pids": {"limit": 10}
                    }))
                    .unwrap(),
                ),
            },
            Request::RemoveContainer {
                id: "c1".into(),
                force: true,
            },
            Request::Shutdown,
        ];
        for r in reqs {
            let back = roundtrip(&r);
            match (&r, &back) {
                // Capability sets are hash sets, serialised in any order: compare the specs.
                (
                    Request::CreateContainer {
                        spec: a,
                        id: ia,
                        rootfs: ra,
                        stdin: sa,
                    },
                    Request::CreateContainer {
                        spec: b,
                        id: ib,
                        rootfs: rb,
                        stdin: sb,
                    },
                ) => assert!(a == b && ia == ib && ra == rb && sa == sb, "{back:?}"),
                _ => assert_eq!(
                    serde_json::to_value(&r).unwrap(),
                    serde_json::to_value(&back).unwrap()
                ),
            }
        }
    }

    #[test]
    fn responses_roundtrip() {
        for r in [
            Response::Ok,
            Response::Hello { version: 1 },
            Response::Started { pid: 7 },
            Response::Exited {
                status: ExitStatus::Signaled(9),
            },
            Response::Pids { pids: vec![1, 2] },
            Response::Stats(Box::new(Stats {
                cpu_usage_usec: 5,
                memory_current: 6,
                pids_current: 1,
                memory_max: Some(7),
                ..Default::default()
            })),
            Response::error(ErrorKind::NotFound, "container x does not exist"),
        ] {
            assert_eq!(roundtrip(&r), r);
        }
    }

    #[test]
    fn wire_format_is_stable_json() {
        let mut buf = Vec::new();
        write_frame(
            &mut buf,
            &Request::Wait {
                id: "a".into(),
                exec_id: None,
                kill_on_hangup: false,
            },
        )
        .unwrap();
        assert_eq!(
            &buf[4..],
            br#"{"op":"wait","id":"a","exec_id":null,"kill_on_hangup":false}"#
        );
        // Fields added later default when an older peer leaves them out.
        let old: Request = serde_json::from_str(r#"{"op":"start_container","id":"a"}"#).unwrap();
        assert!(matches!(
            old,
            Request::StartContainer {
                hook_state: None,
                ..
            }
        ));
    }

    #[test]
    fn exit_codes() {
        assert_eq!(ExitStatus::Exited(7).code(), 7);
        assert_eq!(ExitStatus::Signaled(9).code(), 137);
    }

    #[test]
    fn clean_close_vs_truncation() {
        assert!(matches!(
            read_frame_bytes(&mut Cursor::new(vec![])),
            Err(FrameError::Closed)
        ));
        assert!(matches!(
            read_frame_bytes(&mut Cursor::new(vec![5, 0])),
            Err(FrameError::Io(_))
        ));
        assert!(matches!(
            read_frame_bytes(&mut Cursor::new(vec![5, 0, 0, 0, b'{'])),
            Err(FrameError::Io(_))
        ));
    }

    #[test]
    fn oversized_frames_are_refused_before_allocation() {
        let len = (MAX_FRAME as u32 + 1).to_le_bytes();
        let e = read_frame_bytes(&mut Cursor::new(len.to_vec())).unwrap_err();
        assert!(matches!(e, FrameError::TooLarge(_)));
        let e = read_frame_bytes(&mut Cursor::new(u32::MAX.to_le_bytes().to_vec())).unwrap_err();
        assert!(matches!(e, FrameError::TooLarge(_)));
    }

    #[test]
    fn malformed_payloads() {
        let mut bad = 3u32.to_le_bytes().to_vec();
        bad.extend_from_slice(b"{x}");
        let e = read_frame::<_, Request>(&mut Cursor::new(bad)).unwrap_err();
        assert!(matches!(e, FrameError::Malformed(_)));
        let mut unknown = Vec::new();
        write_frame(&mut unknown, &serde_json::json!({"op": "format_disk"})).unwrap();
        let e = read_frame::<_, Request>(&mut Cursor::new(unknown)).unwrap_err();
        assert!(matches!(e, FrameError::Malformed(_)));
    }
}
