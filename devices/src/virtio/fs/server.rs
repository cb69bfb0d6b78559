//! The FUSE server: one request in, one reply (or none) out, as bytes.
//!
//! Guest memory and descriptor chains are handled by the caller ([`super::queue`]); this
//! layer only frames requests and replies around [`PassthroughFs`].

use std::io;
use std::path::Path;

use tracing::{debug, trace};

use super::abi::{self, OUT_HEADER_LEN};
use super::decode::{decode_op, split_request, InHeader};
use super::passthrough::PassthroughFs;

/// Decodes requests, runs them and encodes the replies.
#[derive(Debug)]
pub struct Server {
    fs: PassthroughFs,
}

impl Server {
    /// Serves `shared_dir`.
    pub fn new(shared_dir: &Path, read_only: bool) -> io::Result<Self> {
        Ok(Server {
            fs: PassthroughFs::new(shared_dir, read_only)?,
        })
    }

    /// Forgets the FUSE session (device reset): open files and inodes are dropped.
    pub fn reset(&mut self) {
        self.fs.destroy();
    }

    /// The filesystem (for tests).
    #[cfg(test)]
    pub fn fs(&self) -> &PassthroughFs {
        &self.fs
    }

    /// Handles one request. `out_cap` is the size of the driver's reply buffers. Returns the
    /// whole reply (out header included), or `None` when nothing is to be written back:
    /// requests without replies (FORGET, BATCH_FORGET, INTERRUPT) and requests too mangled
    /// to know whom to answer.
    pub fn handle(&mut self, req: &[u8], out_cap: usize) -> Option<Vec<u8>> {
        let (h, body) = match split_request(req) {
            Ok(parts) => parts,
            Err(e) => {
                debug!("virtio-fs: bad request: {e}");
                // The unique id is still usable if the header itself is complete.
                let h = InHeader::parse(req).ok()?;
                return error_reply(&h, libc::EINVAL, out_cap);
            }
        };
        let op = match decode_op(h.opcode, body) {
            Ok(op) => op,
            Err(e) => {
                debug!("virtio-fs: bad request {}: {e}", h.unique);
                return error_reply(&h, libc::EINVAL, out_cap);
            }
        };
        trace!("virtio-fs: request {} node {}: {op:?}", h.unique, h.nodeid);
        let payload_cap = out_cap.saturating_sub(OUT_HEADER_LEN);
        match self.fs.handle(&h, op, payload_cap) {
            Ok(None) => None,
            Ok(Some(payload)) if payload.len() <= payload_cap => {
                let mut out = Vec::with_capacity(OUT_HEADER_LEN + payload.len());
                let len = (OUT_HEADER_LEN + payload.len()) as u32;
                out.extend_from_slice(&abi::out_header(len, 0, h.unique));
                out.extend_from_slice(&payload);
                Some(out)
            }
            Ok(Some(payload)) => {
                debug!(
                    "virtio-fs: reply of {} bytes to request {} does not fit in {payload_cap}",
                    payload.len(),
                    h.unique
                );
                error_reply(&h, libc::EIO, out_cap)
            }
            Err(errno) => {
                trace!("virtio-fs: request {} failed: errno {errno}", h.unique);
                error_reply(&h, errno, out_cap)
            }
        }
    }
}

impl Server {
    /// Answers the request whose header starts `req` with `-errno` without running it
    /// (e.g. because it is too large to copy in).
    pub fn reject(&self, req: &[u8], errno: i32, out_cap: usize) -> Option<Vec<u8>> {
        error_reply(&InHeader::parse(req).ok()?, errno, out_cap)
    }
}

/// An out header carrying `-errno`, if the driver left room for one.
fn error_reply(h: &InHeader, errno: i32, out_cap: usize) -> Option<Vec<u8>> {
    if out_cap < OUT_HEADER_LEN {
        return None;
    }
    Some(abi::out_header(OUT_HEADER_LEN as u32, -errno, h.unique).to_vec())
}
