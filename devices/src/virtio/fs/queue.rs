//! Moving one FUSE request from a descriptor chain to the server and its reply back.
//!
//! A virtio-fs request is the FUSE request in the device-readable buffers followed by room
//! for the reply in the device-writable buffers (virtio 1.2 §5.11.6). Neither is assumed to
//! sit in one descriptor. Every buffer is checked against guest memory before any byte is
//! copied; a chain that fails the checks is returned with a used length of 0.

use std::ops::Deref;

use tracing::warn;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::abi::IN_HEADER_LEN;
use super::passthrough::MAX_IO;
use super::server::Server;
use crate::virtio::GuestMemoryMmap;

/// Largest request we copy in: a maximal WRITE plus headroom for headers and names.
pub const MAX_REQUEST: usize = MAX_IO + 64 * 1024;
/// Largest reply buffer we use; the rest of a bigger one is left alone.
const MAX_REPLY: usize = MAX_IO + 64 * 1024;

#[derive(Clone, Copy, Debug)]
struct Segment {
    addr: GuestAddress,
    len: usize,
}

/// Handles the chain and returns the used length (bytes written to the guest).
pub(crate) fn handle_chain<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    server: &mut Server,
) -> u32
where
    M: Deref,
    M::Target: vm_memory::GuestMemory,
{
    let head = chain.head_index();
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    for desc in chain {
        if desc.len() == 0 {
            continue;
        }
        let seg = Segment {
            addr: desc.addr(),
            len: desc.len() as usize,
        };
        if !mem.check_range(seg.addr, seg.len) {
            warn!(
                "virtio-fs: request {head}: buffer {:#x}+{:#x} outside guest memory; dropped",
                seg.addr.0, seg.len
            );
            return 0;
        }
        if desc.is_write_only() {
            writable.push(seg);
        } else if !writable.is_empty() {
            warn!("virtio-fs: request {head}: readable buffer after writable; dropped");
            return 0;
        } else {
            readable.push(seg);
        }
    }
    let in_len: usize = readable.iter().map(|s| s.len).sum();
    let out_cap = writable.iter().map(|s| s.len).sum::<usize>().min(MAX_REPLY);
    let reply = if in_len > MAX_REQUEST {
        // Still answered (EINVAL), from its header alone, so the guest does not hang.
        warn!("virtio-fs: request {head} of {in_len} bytes is too large");
        let mut hdr = vec![0u8; IN_HEADER_LEN.min(in_len)];
        if let Err(e) = gather(mem, &readable, &mut hdr) {
            warn!("virtio-fs: request {head}: cannot read header: {e}");
            return 0;
        }
        server.reject(&hdr, libc::EINVAL, out_cap)
    } else {
        let mut req = vec![0u8; in_len];
        if let Err(e) = gather(mem, &readable, &mut req) {
            warn!("virtio-fs: request {head}: cannot read request: {e}");
            return 0;
        }
        server.handle(&req, out_cap)
    };
    let Some(reply) = reply else {
        return 0;
    };
    match scatter(mem, &writable, &reply) {
        // Fits in u32: bounded by MAX_REPLY.
        Ok(n) => n as u32,
        Err(e) => {
            warn!("virtio-fs: request {head}: cannot write reply: {e}");
            0
        }
    }
}

/// Copies the first `buf.len()` bytes of `segs` into `buf`.
fn gather(
    mem: &GuestMemoryMmap,
    segs: &[Segment],
    buf: &mut [u8],
) -> Result<(), vm_memory::GuestMemoryError> {
    let mut off = 0;
    for s in segs {
        if off == buf.len() {
            break;
        }
        let n = s.len.min(buf.len() - off);
        mem.read_slice(&mut buf[off..off + n], s.addr)?;
        off += n;
    }
    Ok(())
}

/// Writes `data` to the start of `segs`; returns the bytes written.
fn scatter(
    mem: &GuestMemoryMmap,
    segs: &[Segment],
    data: &[u8],
) -> Result<usize, vm_memory::GuestMemoryError> {
    let mut off = 0;
    for s in segs {
        if off == data.len() {
            break;
        }
        let n = s.len.min(data.len() - off);
        mem.write_slice(&data[off..off + n], s.addr)?;
        off += n;
    }
    Ok(off)
}
