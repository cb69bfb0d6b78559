//! One stream connection between a guest port and a host Unix-socket connection.
//!
//! Flow control (virtio 1.2 §5.10.6.3) in both directions:
//!
//! * guest -> host: we advertise `buf_alloc` = [`CONN_BUF_SIZE`] and `fwd_cnt` = bytes
//!   actually written to the host socket. Bytes the socket does not take at once wait in
//!   `to_host`, which credit bounds to `CONN_BUF_SIZE`: a slow host reader makes the guest's
//!   credit run out instead of making us drop or buffer without limit.
//! * host -> guest: we only read from the host socket as much as the guest's credit
//!   (`peer_buf_alloc - (tx_cnt - peer_fwd_cnt)`) allows, straight into a guest rx buffer;
//!   anything else stays in the host socket's kernel buffer, which in turn blocks the host
//!   writer.

use std::io;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use tracing::{debug, warn};
use virtio_vsock::packet::VsockPacket;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice};
use vmm_sys_util::epoll::EventSet;

use super::packet::{op, Hdr, HDR_LEN, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::sys;
use super::{CONN_BUF_SIZE, MAX_PKT_BUF_SIZE};

/// Our guest-visible credit is re-advertised once the guest may believe it has less than
/// this much room left (and we have actually freed some).
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_SIZE / 2;

/// Identifies a connection: host-side port (our `src_port`) and guest-side port.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) struct ConnKey {
    pub local_port: u32,
    pub peer_port: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConnState {
    /// Host-initiated: REQUEST queued or sent, waiting for the guest's RESPONSE.
    LocalInit,
    /// Data may flow.
    Established,
}

/// Control packets a connection owes the guest, sent as rx buffers become available.
pub(crate) mod pending {
    pub const REQUEST: u8 = 1;
    pub const RESPONSE: u8 = 2;
    pub const CREDIT_UPDATE: u8 = 4;
    pub const CREDIT_REQUEST: u8 = 8;
}

/// What [`Connection::fill_rx`] put into a guest rx buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RxFill {
    /// A packet of this many bytes (header included).
    Sent(u32),
    /// An RST of this many bytes; the connection is dead and must be dropped.
    SentRst(u32),
    /// The connection has data to send but the buffer has no room for payload.
    NoRoom,
    /// Nothing to send after all (e.g. the host socket had no data).
    Nothing,
}

pub(crate) struct Connection {
    pub key: ConnKey,
    /// epoll token of `stream`.
    pub token: u64,
    pub stream: UnixStream,
    pub state: ConnState,
    /// `pending::*` bits.
    pub pending: u8,

    /// Host-bound bytes that are not guest payload ("OK <port>\n"); sent before `to_host`
    /// and not counted as forwarded credit.
    preamble: Vec<u8>,
    /// Guest payload the host socket has not taken yet, from `to_host_off` on.
    to_host: Vec<u8>,
    to_host_off: usize,
    /// Guest payload bytes received (the guest's tx_cnt).
    rx_cnt: u32,
    /// Guest payload bytes written to the host socket.
    fwd_cnt: u32,
    /// `fwd_cnt` as last told to the guest.
    fwd_cnt_sent: u32,

    /// The guest's receive buffer and how much of our data it has consumed.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Payload bytes sent to the guest.
    tx_cnt: u32,
    /// A CREDIT_REQUEST went out since the guest's credit last ran dry.
    credit_requested: bool,

    /// The host socket reported readable and no read has hit EAGAIN since.
    pub host_readable: bool,
    /// The host socket hit EOF; the guest was sent SHUTDOWN(SEND).
    pub host_eof: bool,
    /// The host socket hung up: reads drain what is left, writes fail. It is no longer in
    /// epoll (HUP cannot be masked and would fire forever).
    pub host_hup: bool,
    /// We shut down the host socket's write side (the guest stopped sending).
    host_wr_shut: bool,
    /// The guest will send no more data.
    pub guest_shut_send: bool,
    /// The guest will receive no more data.
    pub guest_shut_recv: bool,

    /// Events the stream is registered for in the backend's epoll (`None`: not registered).
    pub registered: Option<EventSet>,
    /// In the backend's rx work queue.
    pub queued: bool,
    /// In the backend's list of connections to re-examine.
    pub dirty: bool,
}

impl Connection {
    fn new(key: ConnKey, token: u64, stream: UnixStream, state: ConnState, pending: u8) -> Self {
        Connection {
            key,
            token,
            stream,
            state,
            pending,
            preamble: Vec::new(),
            to_host: Vec::new(),
            to_host_off: 0,
            rx_cnt: 0,
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            credit_requested: false,
            host_readable: false,
            host_eof: false,
            host_hup: false,
            host_wr_shut: false,
            guest_shut_send: false,
            guest_shut_recv: false,
            registered: None,
            queued: false,
            dirty: false,
        }
    }

    /// A host-initiated connection; the guest still has to be asked (REQUEST).
    pub fn new_local(key: ConnKey, token: u64, stream: UnixStream) -> Self {
        Self::new(key, token, stream, ConnState::LocalInit, pending::REQUEST)
    }

    /// A guest-initiated connection whose host side is connected; the guest is owed a
    /// RESPONSE.
    pub fn new_peer(key: ConnKey, token: u64, stream: UnixStream, req: &Hdr) -> Self {
        let mut c = Self::new(
            key,
            token,
            stream,
            ConnState::Established,
            pending::RESPONSE,
        );
        c.update_peer_credit(req);
        c
    }

    /// Every guest packet carries its current receive-buffer state.
    pub fn update_peer_credit(&mut self, hdr: &Hdr) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
    }

    /// How many payload bytes the guest can take right now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        // A guest that shrank its buffer below what is in flight simply has no credit.
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Guest payload waiting for the host socket.
    pub fn to_host_len(&self) -> usize {
        self.to_host.len() - self.to_host_off
    }

    /// Nothing is waiting for the host socket.
    pub fn to_host_empty(&self) -> bool {
        self.preamble.is_empty() && self.to_host_len() == 0
    }

    /// Queues a non-payload line for the host ("OK <port>\n") ahead of any payload.
    pub fn push_preamble(&mut self, line: &[u8]) {
        self.preamble.extend_from_slice(line);
    }

    /// Takes guest payload. The caller has checked it fits in the credit we advertised.
    pub fn push_payload<B: BitmapSlice>(&mut self, data: &VolatileSlice<'_, B>) {
        let old = self.to_host.len();
        self.to_host.resize(old + data.len(), 0);
        let copied = data.copy_to(&mut self.to_host[old..]);
        debug_assert_eq!(copied, data.len());
        self.rx_cnt = self.rx_cnt.wrapping_add(data.len() as u32);
    }

    /// Writes as much pending output to the host socket as it takes without blocking.
    pub fn flush_to_host(&mut self) -> io::Result<()> {
        while !self.preamble.is_empty() {
            let n = send_some(&self.stream, &self.preamble)?;
            if n == 0 {
                return Ok(());
            }
            self.preamble.drain(..n);
        }
        while self.to_host_off < self.to_host.len() {
            let n = send_some(&self.stream, &self.to_host[self.to_host_off..])?;
            if n == 0 {
                break;
            }
            self.to_host_off += n;
            self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
        }
        if self.to_host_off == self.to_host.len() {
            self.to_host.clear();
            self.to_host_off = 0;
        } else if self.to_host_off >= self.to_host.len() / 2 {
            // Keep the buffer from creeping: the copy is at most half of CONN_BUF_SIZE.
            self.to_host.drain(..self.to_host_off);
            self.to_host_off = 0;
        }
        self.after_host_progress();
        Ok(())
    }

    /// Follow-ups once host-bound data moved: propagate a guest SHUTDOWN(SEND) as EOF, and
    /// re-advertise credit if the guest may be running low.
    fn after_host_progress(&mut self) {
        if self.to_host_empty() && self.guest_shut_send && !self.host_wr_shut {
            self.host_wr_shut = true;
            if let Err(e) = self.stream.shutdown(Shutdown::Write) {
                // The host already went away; the RST logic takes it from here.
                debug!("vsock: {:?}: shutdown(write) on host socket: {e}", self.key);
            }
        }
        if self.credit_update_due() {
            self.pending |= pending::CREDIT_UPDATE;
        }
    }

    fn credit_update_due(&self) -> bool {
        // What the guest believes is still free in our buffer.
        let believed_used = self.rx_cnt.wrapping_sub(self.fwd_cnt_sent);
        let believed_free = CONN_BUF_SIZE.saturating_sub(believed_used);
        self.fwd_cnt != self.fwd_cnt_sent && believed_free < CREDIT_UPDATE_THRESHOLD
    }

    /// The guest sent SHUTDOWN with `flags`.
    pub fn guest_shutdown(&mut self, flags: u32) {
        if flags & SHUTDOWN_RCV != 0 && !self.guest_shut_recv {
            self.guest_shut_recv = true;
            // Host writes now fail with EPIPE rather than piling up unread.
            if let Err(e) = self.stream.shutdown(Shutdown::Read) {
                debug!("vsock: {:?}: shutdown(read) on host socket: {e}", self.key);
            }
        }
        if flags & SHUTDOWN_SEND != 0 {
            self.guest_shut_send = true;
        }
        self.after_host_progress();
    }

    /// Both directions are finished (or cannot continue): time for the closing RST.
    pub fn finished(&self) -> bool {
        if self.state != ConnState::Established {
            return false;
        }
        let guest_done_sending = self.guest_shut_send && self.to_host_empty();
        // The host is gone and the guest does not want its remaining data.
        let host_gone_unwanted = self.host_hup && self.guest_shut_recv;
        (guest_done_sending && (self.guest_shut_recv || self.host_eof)) || host_gone_unwanted
    }

    /// Host data may be read and forwarded, credit permitting.
    fn may_read_host(&self) -> bool {
        self.state == ConnState::Established
            && self.host_readable
            && !self.host_eof
            && !self.guest_shut_recv
    }

    /// The connection wants an rx buffer.
    pub fn has_rx_work(&self) -> bool {
        let owes_control = match self.state {
            ConnState::LocalInit => self.pending & pending::REQUEST != 0,
            ConnState::Established => self.pending != 0,
        };
        owes_control || (self.may_read_host() && (self.peer_credit() > 0 || !self.credit_requested))
    }

    /// The epoll events the host socket should be watched for.
    pub fn interest(&self) -> Option<EventSet> {
        if self.host_hup {
            return None;
        }
        let mut ev = EventSet::empty();
        // IN only until it fires: the data is then read as guest buffers and credit allow,
        // and level-triggered IN would otherwise spin while we wait for those.
        if self.state == ConnState::Established
            && !self.host_readable
            && !self.host_eof
            && !self.guest_shut_recv
        {
            ev |= EventSet::IN;
        }
        if !self.to_host_empty() {
            ev |= EventSet::OUT;
        }
        // Registered even when empty: HUP and ERR are always reported.
        Some(ev)
    }

    /// Fills one guest rx buffer with the most urgent thing this connection has to say.
    pub fn fill_rx<B: BitmapSlice>(
        &mut self,
        pkt: &mut VsockPacket<'_, B>,
        guest_cid: u64,
    ) -> RxFill {
        if self.pending & pending::REQUEST != 0 {
            self.pending &= !pending::REQUEST;
            return self.emit(pkt, guest_cid, op::REQUEST, 0, 0);
        }
        if self.state != ConnState::Established {
            return RxFill::Nothing;
        }
        if self.pending & pending::RESPONSE != 0 {
            self.pending &= !pending::RESPONSE;
            return self.emit(pkt, guest_cid, op::RESPONSE, 0, 0);
        }
        if self.may_read_host() {
            let credit = self.peer_credit();
            if credit == 0 {
                if !self.credit_requested {
                    self.credit_requested = true;
                    self.pending &= !pending::CREDIT_REQUEST;
                    return self.emit(pkt, guest_cid, op::CREDIT_REQUEST, 0, 0);
                }
            } else {
                let room = pkt.data_slice().map_or(0, |s| s.len());
                let want = room.min(MAX_PKT_BUF_SIZE as usize).min(credit as usize);
                if want == 0 {
                    return RxFill::NoRoom;
                }
                match self.read_host(pkt, want) {
                    Ok(0) => {
                        self.host_eof = true;
                        // A hung-up host cannot take data either.
                        let mut flags = SHUTDOWN_SEND;
                        if self.host_hup {
                            flags |= SHUTDOWN_RCV;
                        }
                        return self.emit(pkt, guest_cid, op::SHUTDOWN, 0, flags);
                    }
                    Ok(n) => {
                        self.tx_cnt = self.tx_cnt.wrapping_add(n as u32);
                        return self.emit(pkt, guest_cid, op::RW, n as u32, 0);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.host_readable = false;
                    }
                    Err(e) => {
                        warn!("vsock: {:?}: host socket read failed: {e}", self.key);
                        return match self.emit(pkt, guest_cid, op::RST, 0, 0) {
                            RxFill::Sent(len) => RxFill::SentRst(len),
                            other => other,
                        };
                    }
                }
            }
        }
        if self.pending & pending::CREDIT_UPDATE != 0 {
            return self.emit(pkt, guest_cid, op::CREDIT_UPDATE, 0, 0);
        }
        if self.pending & pending::CREDIT_REQUEST != 0 {
            self.pending &= !pending::CREDIT_REQUEST;
            return self.emit(pkt, guest_cid, op::CREDIT_REQUEST, 0, 0);
        }
        RxFill::Nothing
    }

    /// Reads up to `len` bytes from the host socket straight into the packet's data buffer.
    fn read_host<B: BitmapSlice>(
        &mut self,
        pkt: &VsockPacket<'_, B>,
        len: usize,
    ) -> io::Result<usize> {
        let Some(data) = pkt.data_slice() else {
            return Ok(0);
        };
        let mut dst = data
            .subslice(0, len)
            .map_err(|e| io::Error::other(e.to_string()))?;
        loop {
            match self.stream.read_volatile(&mut dst) {
                Ok(n) => return Ok(n),
                Err(VolatileMemoryError::IOError(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(VolatileMemoryError::IOError(e)) => return Err(e),
                Err(e) => return Err(io::Error::other(e.to_string())),
            }
        }
    }

    /// Writes a header for this connection (with our current credit) into `pkt`.
    fn emit<B: BitmapSlice>(
        &mut self,
        pkt: &mut VsockPacket<'_, B>,
        guest_cid: u64,
        op: u16,
        len: u32,
        flags: u32,
    ) -> RxFill {
        let hdr = Hdr {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.key.local_port,
            dst_port: self.key.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: self.fwd_cnt,
        };
        if let Err(e) = pkt.set_header_from_raw(&hdr.to_bytes()) {
            // Cannot happen for a header slice the parser validated; the buffer goes back
            // empty and the guest drops it.
            warn!("vsock: cannot write packet header: {e}");
            return RxFill::Sent(0);
        }
        // Every header carries our credit, so no separate update is owed any more.
        self.fwd_cnt_sent = self.fwd_cnt;
        self.pending &= !pending::CREDIT_UPDATE;
        RxFill::Sent(HDR_LEN as u32 + len)
    }
}

/// One non-blocking send; `Ok(0)` means the socket is full.
fn send_some(stream: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    loop {
        match sys::send_nosignal(stream, buf) {
            Ok(0) if !buf.is_empty() => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "host socket took 0 bytes",
                ))
            }
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) => return Err(e),
        }
    }
}
