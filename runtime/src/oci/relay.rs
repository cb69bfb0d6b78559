//! Relaying a guest process's stdio to the host process that stands for it (the shim or an
//! exec process), whose own fds 0-2 are the caller's (conmon's pipes, containerd's fifos,
//! a terminal).

use std::fs::File;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::agent::client::{AgentClient, ClientError};
use crate::agent::protocol::{StreamHello, StreamKind, PROTOCOL_VERSION};

use super::sys;

/// How the process's stdio reaches the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// No terminal: stdin, stdout and stderr streams to and from fds 0, 1 and 2.
    Pipes,
    /// A terminal whose master goes to this console socket (runc's protocol); the slave
    /// is relayed to the guest terminal.
    Console(PathBuf),
    /// A terminal relayed to fds 0 and 1 directly (`run`/`exec` in the foreground).
    StdioTty,
}

impl Mode {
    /// True for the terminal modes.
    pub fn is_tty(&self) -> bool {
        !matches!(self, Mode::Pipes)
    }
}

/// Errors attaching stdio.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A stream could not be opened.
    #[error("opening the {0:?} stream: {1}")]
    Stream(StreamKind, ClientError),
    /// The host terminal could not be set up.
    #[error("console: {0}")]
    Console(std::io::Error),
    /// The console socket did not take the terminal.
    #[error("sending the terminal to the console socket {0}: {1}")]
    ConsoleSocket(PathBuf, std::io::Error),
    /// An fd could not be duplicated.
    #[error("stdio: {0}")]
    Io(#[from] std::io::Error),
}

/// Running relays.
pub struct Relays {
    done: Mutex<Receiver<()>>,
    outputs: usize,
    /// The terminal whose size the guest terminal follows (pty slave or fd 0).
    tty: Option<OwnedFd>,
}

fn copy(mut from: impl Read, mut to: impl Write) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                let _ = to.flush();
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // EIO: the other side of a terminal is gone.
            Err(_) => break,
        }
    }
}

fn dup(fd: impl AsFd) -> std::io::Result<File> {
    Ok(File::from(fd.as_fd().try_clone_to_owned()?))
}

/// An output relay: copies, then reports on `done`.
fn output(from: impl Read + Send + 'static, to: impl Write + Send + 'static, done: Sender<()>) {
    std::thread::spawn(move || {
        copy(from, to);
        let _ = done.send(());
    });
}

/// An input relay: copies, then closes the stream's write side (EOF for the process).
fn input(from: impl Read + Send + 'static, to: UnixStream) {
    std::thread::spawn(move || {
        let s = match to.try_clone() {
            Ok(s) => s,
            Err(_) => return,
        };
        copy(from, to);
        let _ = s.shutdown(Shutdown::Write);
    });
}

/// Opens the streams of process `exec_id` (None: the init) of container `id` and starts
/// relaying them according to `mode`.
pub fn attach(
    client: &AgentClient,
    id: &str,
    exec_id: Option<&str>,
    mode: &Mode,
    stdin: bool,
) -> Result<Relays, RelayError> {
    let open = |kind| {
        client
            .open_stream(&StreamHello {
                version: PROTOCOL_VERSION,
                id: id.to_string(),
                exec_id: exec_id.map(String::from),
                kind,
            })
            .map_err(|e| RelayError::Stream(kind, e))
    };
    let (tx, done) = channel();
    match mode {
        Mode::Pipes => {
            let out = open(StreamKind::Stdout)?;
            let err = open(StreamKind::Stderr)?;
            output(out, dup(std::io::stdout())?, tx.clone());
            output(err, dup(std::io::stderr())?, tx);
            if stdin {
                input(dup(std::io::stdin())?, open(StreamKind::Stdin)?);
            }
            Ok(Relays {
                done: Mutex::new(done),
                outputs: 2,
                tty: None,
            })
        }
        Mode::Console(socket) => {
            let pty = sys::open_pty().map_err(RelayError::Console)?;
            sys::send_fd(socket, pty.master.as_raw_fd(), &pty.name)
                .map_err(|e| RelayError::ConsoleSocket(socket.clone(), e))?;
            // Only the console socket's owner holds the master now: when it closes it,
            // reads on the slave fail and the relay ends.
            drop(pty.master);
            // Resizes by the master's owner then arrive as SIGWINCH (this process is a
            // session leader); without it the size is still sent at start.
            if let Err(e) = sys::set_controlling_tty(pty.slave.as_raw_fd()) {
                tracing::debug!("no controlling terminal: {e}");
            }
            let tty = open(StreamKind::Tty)?;
            output(tty.try_clone()?, dup(&pty.slave)?, tx);
            input(dup(&pty.slave)?, tty);
            Ok(Relays {
                done: Mutex::new(done),
                outputs: 1,
                tty: Some(pty.slave),
            })
        }
        Mode::StdioTty => {
            let tty = open(StreamKind::Tty)?;
            output(tty.try_clone()?, dup(std::io::stdout())?, tx);
            input(dup(std::io::stdin())?, tty);
            let stdin_tty = sys::is_tty(0).then(|| dup(std::io::stdin())).transpose()?;
            Ok(Relays {
                done: Mutex::new(done),
                outputs: 1,
                tty: stdin_tty.map(OwnedFd::from),
            })
        }
    }
}

impl Relays {
    /// Waits until every output stream ended, or `timeout` passed (a background process
    /// in the container may keep them open).
    pub fn wait_outputs(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..self.outputs {
            let left = deadline.saturating_duration_since(Instant::now());
            if done.recv_timeout(left).is_err() {
                tracing::debug!("output still open after the process exited");
                return;
            }
        }
    }

    /// The host terminal's size, if there is a host terminal.
    pub fn winsize(&self) -> Option<(u16, u16)> {
        let fd: RawFd = self.tty.as_ref()?.as_raw_fd();
        sys::winsize(fd).ok().filter(|(r, c)| *r > 0 && *c > 0)
    }
}
