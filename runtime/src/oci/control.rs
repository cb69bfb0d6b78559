//! The shim's control socket (`<state dir>/ctl.sock`): the CLI asks the container's host
//! process to start the container or forward a signal. Frames as in the agent protocol
//! (u32 length + JSON), one request and one reply per connection.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::agent::protocol::{read_frame, write_frame, FrameError};

/// Requests to a shim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum CtlRequest {
    /// Run the container's process.
    Start,
    /// Send a signal to the container's process (or all its processes).
    Signal {
        /// Signal number.
        signal: i32,
        /// All processes of the container.
        all: bool,
    },
}

/// Replies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum CtlResponse {
    /// Done.
    Ok,
    /// Failed, with the reason.
    Error {
        /// Why.
        message: String,
    },
}

/// Errors reaching a shim.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The shim is not listening (it exited).
    #[error("the container's host process is not running ({0})")]
    Unreachable(std::io::Error),
    /// The exchange failed.
    #[error("talking to the container's host process: {0}")]
    Frame(#[from] FrameError),
    /// The shim reported a failure.
    #[error("{0}")]
    Failed(String),
}

/// Sends `req` to the shim listening at `socket` and waits up to `timeout` for its reply.
pub fn call(socket: &Path, req: &CtlRequest, timeout: Duration) -> Result<(), CtlError> {
    let mut s = UnixStream::connect(socket).map_err(CtlError::Unreachable)?;
    s.set_read_timeout(Some(timeout))
        .map_err(CtlError::Unreachable)?;
    write_frame(&mut s, req)?;
    match read_frame::<_, CtlResponse>(&mut s)? {
        CtlResponse::Ok => Ok(()),
        CtlResponse::Error { message } => Err(CtlError::Failed(message)),
    }
}

/// Serves one connection: reads a request, answers with `handle`'s verdict.
pub fn serve_one(mut s: UnixStream, handle: impl FnOnce(CtlRequest) -> Result<(), String>) {
    let reply = match read_frame::<_, CtlRequest>(&mut s) {
        Ok(req) => match handle(req) {
            Ok(()) => CtlResponse::Ok,
            Err(message) => CtlResponse::Error { message },
        },
        Err(e) => CtlResponse::Error {
            message: format!("bad request: {e}"),
        },
    };
    let _ = write_frame(&mut s, &reply);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn request_reply() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        let l = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            for _ in 0..2 {
                let (s, _) = l.accept().unwrap();
                serve_one(s, |r| match r {
                    CtlRequest::Start => Ok(()),
                    CtlRequest::Signal { signal, .. } => Err(format!("no signal {signal}")),
                });
            }
        });
        call(&path, &CtlRequest::Start, Duration::from_secs(5)).unwrap();
        let e = call(
            &path,
            &CtlRequest::Signal {
                signal: 9,
                all: false,
            },
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "no signal 9");
        t.join().unwrap();
        let e = call(
            &dir.path().join("none"),
            &CtlRequest::Start,
            Duration::from_secs(1),
        );
        assert!(matches!(e, Err(CtlError::Unreachable(_))));
    }
}
