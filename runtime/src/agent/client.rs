//! Host end of the agent protocol, over the VMM's hybrid vsock Unix socket: connect to the
//! socket, write `CONNECT <port>\n`, read `OK <host-port>\n`, then speak frames.

use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::protocol::{
    read_frame, write_frame, ErrorKind, FrameError, Request, Response, StreamHello, CONTROL_PORT,
    PROTOCOL_VERSION, STREAM_PORT,
};

/// Errors talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The vsock Unix socket could not be reached.
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The VMM refused the vsock connection (nothing listens on that guest port yet).
    #[error("guest port {port} refused the connection ({reply})")]
    Refused {
        /// Guest port.
        port: u32,
        /// What the VMM said.
        reply: String,
    },
    /// The agent did not come up in time.
    #[error("the guest agent did not answer within {0:?}: {1}")]
    Timeout(Duration, String),
    /// Frame-level failure.
    #[error("agent connection: {0}")]
    Frame(#[from] FrameError),
    /// Versions differ.
    #[error("agent speaks protocol version {agent}, capsa speaks {PROTOCOL_VERSION}")]
    Version {
        /// The agent's version.
        agent: u32,
    },
    /// The agent answered with an error.
    #[error("{message}")]
    Agent {
        /// Category.
        kind: ErrorKind,
        /// Its words.
        message: String,
    },
    /// The agent answered with something unexpected for the request.
    #[error("unexpected agent reply: {0:?}")]
    Unexpected(Response),
}

/// Opens a stream to guest vsock `port` through the hybrid vsock socket at `uds`.
pub fn connect_port(uds: &Path, port: u32) -> Result<UnixStream, ClientError> {
    let mut s = UnixStream::connect(uds).map_err(|source| ClientError::Connect {
        path: uds.to_owned(),
        source,
    })?;
    let io = |source| ClientError::Connect {
        path: uds.to_owned(),
        source,
    };
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(io)?;
    // Read the reply line byte by byte: anything after it belongs to the stream.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b).map_err(io)? {
            0 => break,
            _ if b[0] == b'\n' => break,
            _ if line.len() < 64 => line.push(b[0]),
            _ => break,
        }
    }
    let reply = String::from_utf8_lossy(&line).into_owned();
    if reply.starts_with("OK ") {
        Ok(s)
    } else {
        Err(ClientError::Refused { port, reply })
    }
}

/// Calls `f` until it succeeds or `timeout` passes, retrying errors that mean "the guest is
/// not listening yet".
fn retry<T>(
    timeout: Duration,
    mut f: impl FnMut() -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e @ (ClientError::Refused { .. } | ClientError::Connect { .. }))
            | Err(e @ ClientError::Frame(FrameError::Closed | FrameError::Io(_))) => {
                if start.elapsed() >= timeout {
                    return Err(ClientError::Timeout(timeout, e.to_string()));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

/// A control connection to the agent.
pub struct AgentClient {
    stream: UnixStream,
    uds: PathBuf,
}

impl AgentClient {
    /// Connects and exchanges `Hello`, waiting up to `timeout` for the agent to listen.
    pub fn connect(uds: &Path, timeout: Duration) -> Result<Self, ClientError> {
        retry(timeout, || {
            let mut stream = connect_port(uds, CONTROL_PORT)?;
            write_frame(
                &mut stream,
                &Request::Hello {
                    version: PROTOCOL_VERSION,
                },
            )?;
            match read_frame::<_, Response>(&mut stream)? {
                Response::Hello { version } if version == PROTOCOL_VERSION => Ok(AgentClient {
                    stream,
                    uds: uds.to_owned(),
                }),
                Response::Hello { version } => Err(ClientError::Version { agent: version }),
                other => Err(ClientError::Unexpected(other)),
            }
        })
    }

    /// Sends `req` and returns the reply; agent errors become [`ClientError::Agent`].
    pub fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        write_frame(&mut self.stream, req)?;
        match read_frame::<_, Response>(&mut self.stream)? {
            Response::Error { kind, message } => Err(ClientError::Agent { kind, message }),
            r => Ok(r),
        }
    }

    /// Sends `req` and expects `Ok`.
    pub fn call_ok(&mut self, req: &Request) -> Result<(), ClientError> {
        match self.call(req)? {
            Response::Ok => Ok(()),
            other => Err(ClientError::Unexpected(other)),
        }
    }

    /// Opens a stdio stream connection.
    pub fn open_stream(&self, hello: &StreamHello) -> Result<UnixStream, ClientError> {
        let mut s = connect_port(&self.uds, STREAM_PORT)?;
        write_frame(&mut s, hello)?;
        Ok(s)
    }
}

/// Reads a whole stream to its end (guest closed it).
pub fn read_all(s: UnixStream) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    BufReader::new(s).read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A stand-in for the VMM's vsock socket that accepts CONNECT for one port and then
    /// runs `serve` on the stream.
    fn fake_vmm(
        dir: &Path,
        port: u32,
        serve: impl FnOnce(UnixStream) + Send + 'static,
    ) -> (PathBuf, std::thread::JoinHandle<()>) {
        let path = dir.join("v.sock");
        let l = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
                line.push(b[0]);
            }
            if line == format!("CONNECT {port}").into_bytes() {
                s.write_all(b"OK 1073741824\n").unwrap();
                serve(s);
            }
        });
        (path, t)
    }

    #[test]
    fn hello_then_call() {
        let dir = tempfile::tempdir().unwrap();
        let (path, t) = fake_vmm(dir.path(), CONTROL_PORT, |mut s| {
            let r: Request = read_frame(&mut s).unwrap();
            assert!(matches!(
                r,
                Request::Hello {
                    version: PROTOCOL_VERSION
                }
            ));
            write_frame(
                &mut s,
                &Response::Hello {
                    version: PROTOCOL_VERSION,
                },
            )
            .unwrap();
            let r: Request = read_frame(&mut s).unwrap();
            assert!(matches!(r, Request::Ps { .. }));
            write_frame(
                &mut s,
                &Response::error(ErrorKind::NotFound, "container x does not exist"),
            )
            .unwrap();
        });
        let mut c = AgentClient::connect(&path, Duration::from_secs(5)).unwrap();
        let e = c.call(&Request::Ps { id: "x".into() }).unwrap_err();
        assert!(
            matches!(
                e,
                ClientError::Agent {
                    kind: ErrorKind::NotFound,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(e.to_string(), "container x does not exist");
        t.join().unwrap();
    }

    #[test]
    fn version_mismatch_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (path, t) = fake_vmm(dir.path(), CONTROL_PORT, |mut s| {
            let _: Request = read_frame(&mut s).unwrap();
            write_frame(&mut s, &Response::Hello { version: 99 }).unwrap();
        });
        let e = AgentClient::connect(&path, Duration::from_secs(5))
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("agent speaks protocol version 99"),
            "{e}"
        );
        t.join().unwrap();
    }

    #[test]
    fn refused_port_times_out_with_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let l = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                drop(s); // the VMM closes the socket when the guest refuses
            }
        });
        let e = AgentClient::connect(&path, Duration::from_millis(300))
            .err()
            .unwrap();
        assert!(matches!(e, ClientError::Timeout(..)), "{e}");
    }

    #[test]
    fn missing_socket_is_an_error_after_timeout() {
        let e = AgentClient::connect(Path::new("/nonexistent/v.sock"), Duration::from_millis(100))
            .err()
            .unwrap();
        assert!(e.to_string().contains("/nonexistent/v.sock"), "{e}");
    }
}
