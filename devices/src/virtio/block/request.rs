//! Parsing and executing one virtio-blk request (virtio 1.2 §5.2.6).
//!
//! A request is `struct virtio_blk_req { le32 type; le32 reserved; le64 sector;
//! u8 data[]; u8 status; }` spread over a descriptor chain: device-readable buffers (header,
//! then data for writes) followed by device-writable buffers (data for reads, then the status
//! byte as the very last byte). Framing is not assumed (virtio 1.x has no ANY_LAYOUT
//! restrictions), so the header may be split over several descriptors and the status byte may
//! share a descriptor with read data.

use std::io;
use std::ops::Deref;

use tracing::{trace, warn};
use virtio_bindings::virtio_blk as vb;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

use super::disk::Disk;
use super::{BlockLimits, SECTOR_SIZE};
use crate::virtio::GuestMemoryMmap;

const HEADER_LEN: usize = 16;
const DISCARD_SEGMENT_LEN: usize = 16;

/// Request status byte values.
pub(crate) const STATUS_OK: u8 = vb::VIRTIO_BLK_S_OK as u8;
pub(crate) const STATUS_IOERR: u8 = vb::VIRTIO_BLK_S_IOERR as u8;
pub(crate) const STATUS_UNSUPP: u8 = vb::VIRTIO_BLK_S_UNSUPP as u8;

/// Why a request failed; each maps to a status byte.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    #[error("buffer {addr:#x}+{len:#x} is not inside guest memory")]
    OutsideMemory { addr: u64, len: usize },
    #[error("request header shorter than {HEADER_LEN} bytes")]
    ShortHeader,
    #[error("request type {0} has buffers in the wrong direction")]
    WrongDirection(u32),
    #[error("data length {0} is not a non-zero multiple of {SECTOR_SIZE}")]
    BadDataLength(usize),
    #[error("sectors {sector}..+{count} are beyond the end of the disk ({capacity} sectors)")]
    OutOfRange {
        sector: u64,
        count: u64,
        capacity: u64,
    },
    #[error("write-type request on a read-only disk")]
    ReadOnly,
    #[error("request type {0} is not supported")]
    Unsupported(u32),
    #[error("feature for request type {0} was not negotiated")]
    NotNegotiated(u32),
    #[error("{0} segments are not a non-zero multiple of 16 bytes within the segment limit")]
    BadSegments(usize),
    #[error("segment flags {0:#x} not supported")]
    UnsupportedFlags(u32),
    #[error("segment of {0} sectors exceeds the per-segment limit")]
    SegmentTooLarge(u32),
    #[error("guest memory access failed: {0}")]
    Memory(#[from] GuestMemoryError),
    #[error("disk I/O failed: {0}")]
    Io(#[from] io::Error),
}

impl RequestError {
    fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_)
            | RequestError::NotNegotiated(_)
            | RequestError::UnsupportedFlags(_) => STATUS_UNSUPP,
            _ => STATUS_IOERR,
        }
    }
}

/// A contiguous guest buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    addr: GuestAddress,
    len: usize,
}

/// Splits `segs` after `n` bytes; `None` if they hold fewer than `n` bytes.
fn split_segments(segs: &[Segment], n: usize) -> Option<(Vec<Segment>, Vec<Segment>)> {
    let mut head = Vec::new();
    let mut tail = Vec::new();
    let mut need = n;
    for s in segs {
        if need == 0 {
            tail.push(*s);
        } else if s.len <= need {
            head.push(*s);
            need -= s.len;
        } else {
            head.push(Segment {
                addr: s.addr,
                len: need,
            });
            // Cannot overflow: the whole segment was checked to be inside guest memory.
            tail.push(Segment {
                addr: GuestAddress(s.addr.0 + need as u64),
                len: s.len - need,
            });
            need = 0;
        }
    }
    (need == 0).then_some((head, tail))
}

fn total_len(segs: &[Segment]) -> usize {
    segs.iter().map(|s| s.len).sum()
}

fn read_segments(
    mem: &GuestMemoryMmap,
    segs: &[Segment],
    buf: &mut [u8],
) -> Result<(), GuestMemoryError> {
    let mut off = 0;
    for s in segs {
        mem.read_slice(&mut buf[off..off + s.len], s.addr)?;
        off += s.len;
    }
    Ok(())
}

/// Writes `data` to the start of `segs`; returns the bytes written (≤ capacity of `segs`).
fn write_segments(
    mem: &GuestMemoryMmap,
    segs: &[Segment],
    data: &[u8],
) -> Result<usize, GuestMemoryError> {
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

/// Everything a request needs from the device.
pub(crate) struct RequestContext<'a> {
    pub disk: &'a mut Disk,
    pub id: &'a [u8; vb::VIRTIO_BLK_ID_BYTES as usize],
    pub limits: &'a BlockLimits,
    pub acked_features: u64,
}

impl RequestContext<'_> {
    fn negotiated(&self, feature: u32) -> bool {
        self.acked_features & (1 << feature) != 0
    }
}

/// The chain split into its parts.
struct Parsed {
    /// Device-readable buffers (header + write data).
    readable: Vec<Segment>,
    /// Device-writable buffers without the status byte (read data).
    writable: Vec<Segment>,
    /// Where the status byte goes.
    status: GuestAddress,
    readable_after_writable: bool,
}

fn parse_chain<M>(chain: DescriptorChain<M>, mem: &GuestMemoryMmap) -> Option<Parsed>
where
    M: Deref,
    M::Target: vm_memory::GuestMemory,
{
    let mut readable = Vec::new();
    let mut writable: Vec<Segment> = Vec::new();
    let mut readable_after_writable = false;
    for desc in chain {
        if desc.len() == 0 {
            continue;
        }
        let seg = Segment {
            addr: desc.addr(),
            len: desc.len() as usize,
        };
        if desc.is_write_only() {
            writable.push(seg);
        } else {
            readable_after_writable |= !writable.is_empty();
            readable.push(seg);
        }
    }
    // The status byte is the last device-writable byte of the chain.
    let last = writable.last_mut()?;
    let status = last
        .addr
        .0
        .checked_add(last.len as u64 - 1)
        .map(GuestAddress)?;
    if !mem.check_range(status, 1) {
        return None;
    }
    last.len -= 1;
    if last.len == 0 {
        writable.pop();
    }
    Some(Parsed {
        readable,
        writable,
        status,
        readable_after_writable,
    })
}

/// Processes one descriptor chain and returns the used length (bytes written to the guest,
/// status byte included; 0 if not even the status byte could be written).
pub(crate) fn handle_chain<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    ctx: &mut RequestContext<'_>,
) -> u32
where
    M: Deref,
    M::Target: vm_memory::GuestMemory,
{
    let head = chain.head_index();
    let Some(parsed) = parse_chain(chain, mem) else {
        warn!("virtio-blk: request {head} has no writable status byte in guest memory; dropped");
        return 0;
    };
    let (status, written) = match execute(&parsed, mem, ctx) {
        Ok(written) => (STATUS_OK, written),
        Err(e) => {
            warn!("virtio-blk: request {head} failed: {e}");
            (e.status(), 0)
        }
    };
    if let Err(e) = mem.write_obj(status, parsed.status) {
        // Cannot happen: the address was checked in parse_chain.
        warn!("virtio-blk: cannot write status of request {head}: {e}");
        return 0;
    }
    // Fits: a chain is at most 4 GiB and `written` never exceeds it.
    (written as u32).saturating_add(1)
}

/// Runs the request; returns how many data bytes were written to the guest.
fn execute(
    p: &Parsed,
    mem: &GuestMemoryMmap,
    ctx: &mut RequestContext<'_>,
) -> Result<usize, RequestError> {
    if p.readable_after_writable {
        return Err(RequestError::ReadableAfterWritable);
    }
    // Check every buffer up front, so nothing is half-done when a later one is bad.
    for s in p.readable.iter().chain(&p.writable) {
        if !mem.check_range(s.addr, s.len) {
            return Err(RequestError::OutsideMemory {
                addr: s.addr.0,
                len: s.len,
            });
        }
    }
    let (hdr_segs, data_out) =
        split_segments(&p.readable, HEADER_LEN).ok_or(RequestError::ShortHeader)?;
    let mut hdr = [0u8; HEADER_LEN];
    read_segments(mem, &hdr_segs, &mut hdr)?;
    let req_type = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
    let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap());
    let data_in = &p.writable;
    let out_len = total_len(&data_out);
    let in_len = total_len(data_in);
    trace!("virtio-blk: type {req_type} sector {sector} out {out_len} in {in_len}");

    // Request types that move no data to the guest must have nothing writable but the
    // status byte, and those that take no data from the guest nothing readable but the header.
    let no_data_in = || {
        if in_len != 0 {
            Err(RequestError::WrongDirection(req_type))
        } else {
            Ok(())
        }
    };
    let no_data_out = || {
        if out_len != 0 {
            Err(RequestError::WrongDirection(req_type))
        } else {
            Ok(())
        }
    };

    match req_type {
        vb::VIRTIO_BLK_T_IN => {
            no_data_out()?;
            if in_len == 0 {
                return Err(RequestError::BadDataLength(0));
            }
            let offset = sector_range(ctx.disk, sector, in_len)?;
            let file = ctx.disk.file_at(offset)?;
            for s in data_in {
                mem.read_exact_volatile_from(s.addr, file, s.len)?;
            }
            Ok(in_len)
        }
        vb::VIRTIO_BLK_T_OUT => {
            if ctx.disk.read_only() {
                return Err(RequestError::ReadOnly);
            }
            no_data_in()?;
            if out_len == 0 {
                return Err(RequestError::BadDataLength(0));
            }
            let offset = sector_range(ctx.disk, sector, out_len)?;
            let file = ctx.disk.file_at(offset)?;
            for s in &data_out {
                mem.write_all_volatile_to(s.addr, file, s.len)?;
            }
            // Without VIRTIO_BLK_F_FLUSH the driver assumes a write-through cache.
            if !ctx.negotiated(vb::VIRTIO_BLK_F_FLUSH) {
                ctx.disk.flush()?;
            }
            Ok(0)
        }
        vb::VIRTIO_BLK_T_FLUSH => {
            no_data_in()?;
            no_data_out()?;
            ctx.disk.flush()?;
            Ok(0)
        }
        vb::VIRTIO_BLK_T_GET_ID => {
            no_data_out()?;
            if in_len == 0 {
                return Err(RequestError::WrongDirection(req_type));
            }
            Ok(write_segments(mem, data_in, ctx.id)?)
        }
        vb::VIRTIO_BLK_T_DISCARD | vb::VIRTIO_BLK_T_WRITE_ZEROES => {
            if ctx.disk.read_only() {
                return Err(RequestError::ReadOnly);
            }
            let discard = req_type == vb::VIRTIO_BLK_T_DISCARD;
            let (feature, max_seg, max_sectors) = if discard {
                (
                    vb::VIRTIO_BLK_F_DISCARD,
                    ctx.limits.max_discard_seg,
                    ctx.limits.max_discard_sectors,
                )
            } else {
                (
                    vb::VIRTIO_BLK_F_WRITE_ZEROES,
                    ctx.limits.max_write_zeroes_seg,
                    ctx.limits.max_write_zeroes_sectors,
                )
            };
            if !ctx.negotiated(feature) {
                return Err(RequestError::NotNegotiated(req_type));
            }
            no_data_in()?;
            let count = out_len / DISCARD_SEGMENT_LEN;
            if out_len == 0
                || !out_len.is_multiple_of(DISCARD_SEGMENT_LEN)
                || count > max_seg as usize
            {
                return Err(RequestError::BadSegments(out_len));
            }
            let mut raw = vec![0u8; out_len];
            read_segments(mem, &data_out, &mut raw)?;
            // Validate every segment before touching the disk.
            let mut ranges = Vec::with_capacity(count);
            for seg in raw.chunks_exact(DISCARD_SEGMENT_LEN) {
                let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap());
                let num = u32::from_le_bytes(seg[8..12].try_into().unwrap());
                let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap());
                let unmap = flags & vb::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
                // Spec: unknown flags, or unmap on a discard, must be answered with UNSUPP.
                if flags & !vb::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 || (discard && unmap) {
                    return Err(RequestError::UnsupportedFlags(flags));
                }
                if num > max_sectors {
                    return Err(RequestError::SegmentTooLarge(num));
                }
                let len = u64::from(num) * SECTOR_SIZE;
                let offset = sector_range(ctx.disk, sector, len as usize)?;
                ranges.push((offset, len, unmap));
            }
            for (offset, len, unmap) in ranges {
                if discard {
                    ctx.disk.discard(offset, len)?;
                } else {
                    ctx.disk.write_zeroes(offset, len, unmap)?;
                }
            }
            Ok(0)
        }
        other => Err(RequestError::Unsupported(other)),
    }
}

/// Checks that `len` bytes starting at `sector` are a whole number of sectors inside the
/// disk; returns the byte offset.
fn sector_range(disk: &Disk, sector: u64, len: usize) -> Result<u64, RequestError> {
    let len = len as u64;
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(RequestError::BadDataLength(len as usize));
    }
    let count = len / SECTOR_SIZE;
    let capacity = disk.sectors();
    match sector.checked_add(count) {
        Some(end) if end <= capacity => Ok(sector * SECTOR_SIZE),
        _ => Err(RequestError::OutOfRange {
            sector,
            count,
            capacity,
        }),
    }
}
