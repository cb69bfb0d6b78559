//! virtio-vsock wire constants (virtio 1.2 §5.10.6) and a plain copy of the packet header.
//!
//! Descriptor chains are parsed with [`virtio_vsock::packet::VsockPacket`]; [`Hdr`] is the
//! header as a value so the connection logic never re-reads guest memory (no TOCTOU) and can
//! build replies without a chain at hand.

use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::bitmap::BitmapSlice;

/// Length of `struct virtio_vsock_hdr`.
pub const HDR_LEN: usize = PKT_HEADER_SIZE;

/// The host's CID; the device always speaks for it.
pub const HOST_CID: u64 = 2;

/// `type` of a stream socket, the only type this device supports.
pub const TYPE_STREAM: u16 = 1;

/// Packet operations (`op`).
pub mod op {
    /// Connection request.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Connection refused or torn down.
    pub const RST: u16 = 3;
    /// The sender will stop receiving and/or sending (see `flags`).
    pub const SHUTDOWN: u16 = 4;
    /// Payload.
    pub const RW: u16 = 5;
    /// The sender's receive-buffer state (`buf_alloc`, `fwd_cnt`) changed.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Please send a CREDIT_UPDATE.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// `struct virtio_vsock_hdr`, decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hdr {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Hdr {
    /// The header `pkt` was parsed with.
    pub fn from_packet<B: BitmapSlice>(pkt: &VsockPacket<'_, B>) -> Self {
        Hdr {
            src_cid: pkt.src_cid(),
            dst_cid: pkt.dst_cid(),
            src_port: pkt.src_port(),
            dst_port: pkt.dst_port(),
            len: pkt.len(),
            type_: pkt.type_(),
            op: pkt.op(),
            flags: pkt.flags(),
            buf_alloc: pkt.buf_alloc(),
            fwd_cnt: pkt.fwd_cnt(),
        }
    }

    /// Decodes the little-endian wire format.
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
        Hdr {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encodes the little-endian wire format.
    pub fn to_bytes(self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// The RST answering `self` (addresses swapped), e.g. for a packet naming no connection.
    pub fn rst_reply(&self) -> Self {
        Hdr {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            type_: self.type_,
            op: op::RST,
            ..Hdr::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_through_wire_format() {
        let h = Hdr {
            src_cid: 0x0102_0304_0506_0708,
            dst_cid: 2,
            src_port: 0xdead_beef,
            dst_port: 7,
            len: 4096,
            type_: TYPE_STREAM,
            op: op::RW,
            flags: SHUTDOWN_SEND,
            buf_alloc: 0x4_0000,
            fwd_cnt: 0xffff_fff0,
        };
        let b = h.to_bytes();
        // Spot-check the layout against the spec's field offsets.
        assert_eq!(b[0], 0x08);
        assert_eq!(&b[8..16], &2u64.to_le_bytes());
        assert_eq!(&b[24..28], &4096u32.to_le_bytes());
        assert_eq!(&b[30..32], &op::RW.to_le_bytes());
        assert_eq!(&b[40..44], &0xffff_fff0u32.to_le_bytes());
        assert_eq!(Hdr::from_bytes(&b), h);

        let r = h.rst_reply();
        assert_eq!((r.src_cid, r.dst_cid), (2, h.src_cid));
        assert_eq!((r.src_port, r.dst_port), (7, 0xdead_beef));
        assert_eq!((r.op, r.len, r.type_), (op::RST, 0, TYPE_STREAM));
    }
}
