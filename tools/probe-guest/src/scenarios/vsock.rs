//! `probe=vsock`: a minimal polled virtio-vsock stream stack (virtio 1.2 §5.10) driving
//! host-initiated echo connections and guest-initiated pattern connections at the same
//! time, then one summary line.
//!
//! - Host to guest: the guest listens on `vsock.listen=PORT`. Every accepted connection is
//!   an echo server: whatever arrives is sent back; when the peer shuts down its sending
//!   side and everything is echoed, the guest shuts down both directions and waits for the
//!   device's RST.
//! - Guest to host: each `vsock.connect=PORT:BYTES:SEED` opens a connection to host port
//!   PORT, sends BYTES of the test pattern (`check::pattern_word`), shuts down its sending
//!   side and checks that what comes back is the same pattern (the host side echoes),
//!   until the device's RST.
//!
//! Flow control: the guest advertises `CONN_BUF` bytes per connection and copies received
//! payload out of the rx buffers at once (into the connection's echo ring, or into the
//! pattern check), so rx buffers are never held and credit updates from the device always
//! have somewhere to land. `fwd_cnt` counts bytes that left the echo ring (or were
//! checked); the guest never sends more than the peer's credit.

use super::{Ctx, Outcome};
use crate::check::{pattern_fill, pattern_mismatch};
use crate::cmdline::{parse_fields, Cmdline};
use crate::io::rdtsc;
use crate::line::Line;
use crate::virtio::{self, Buf, Deadline, Transport, Virtqueue};
use crate::{dma, serial};

const HDR_LEN: u64 = 44;
const HOST_CID: u64 = 2;
const TYPE_STREAM: u16 = 1;

mod op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}
const SHUT_RCV: u32 = 1;
const SHUT_SEND: u32 = 2;

const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;
const EVENT_QUEUE: u16 = 2;

const MAX_CONNS: usize = 16;
/// Receive buffer advertised per connection (`buf_alloc`), and the size of its echo ring.
const CONN_BUF: u32 = 64 << 10;
const RX_BUFS: usize = 64;
const TX_SLOTS: usize = 64;
const EVENT_BUFS: usize = 4;
/// First local port of guest-initiated connections.
const FIRST_LOCAL_PORT: u32 = 50_000;

/// Control packets a connection owes its peer.
mod owe {
    pub const RESPONSE: u8 = 1;
    pub const CREDIT_UPDATE: u8 = 2;
    pub const REQUEST: u8 = 4;
}

/// `struct virtio_vsock_hdr`.
#[derive(Clone, Copy, Default)]
struct Hdr {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    type_: u16,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

impl Hdr {
    /// # Safety
    /// `a` must be 44 readable bytes of DMA memory the device has returned.
    unsafe fn read(a: u64) -> Self {
        let p = a as *const u8;
        // SAFETY: the caller's contract; fields may be unaligned (the struct is packed).
        unsafe {
            Self {
                src_cid: p.cast::<u64>().read_unaligned(),
                dst_cid: p.add(8).cast::<u64>().read_unaligned(),
                src_port: p.add(16).cast::<u32>().read_unaligned(),
                dst_port: p.add(20).cast::<u32>().read_unaligned(),
                len: p.add(24).cast::<u32>().read_unaligned(),
                type_: p.add(28).cast::<u16>().read_unaligned(),
                op: p.add(30).cast::<u16>().read_unaligned(),
                flags: p.add(32).cast::<u32>().read_unaligned(),
                buf_alloc: p.add(36).cast::<u32>().read_unaligned(),
                fwd_cnt: p.add(40).cast::<u32>().read_unaligned(),
            }
        }
    }

    /// # Safety
    /// `a` must be 44 writable bytes of DMA memory not on a ring.
    unsafe fn write(&self, a: u64) {
        let p = a as *mut u8;
        // SAFETY: the caller's contract.
        unsafe {
            p.cast::<u64>().write_unaligned(self.src_cid);
            p.add(8).cast::<u64>().write_unaligned(self.dst_cid);
            p.add(16).cast::<u32>().write_unaligned(self.src_port);
            p.add(20).cast::<u32>().write_unaligned(self.dst_port);
            p.add(24).cast::<u32>().write_unaligned(self.len);
            p.add(28).cast::<u16>().write_unaligned(self.type_);
            p.add(30).cast::<u16>().write_unaligned(self.op);
            p.add(32).cast::<u32>().write_unaligned(self.flags);
            p.add(36).cast::<u32>().write_unaligned(self.buf_alloc);
            p.add(40).cast::<u32>().write_unaligned(self.fwd_cnt);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Free,
    /// Guest-initiated, REQUEST owed or sent.
    Connecting,
    Established,
}

#[derive(Clone, Copy)]
struct Conn {
    state: State,
    outgoing: bool,
    local_port: u32,
    peer_port: u32,
    owe: u8,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Payload bytes sent.
    tx_cnt: u32,
    /// Payload bytes consumed (echoed or checked), and as last told to the peer.
    fwd_cnt: u32,
    fwd_sent: u32,
    peer_shut_send: bool,
    shut_sent: bool,
    credit_requested: bool,
    /// Echo ring (incoming connections): CONN_BUF bytes at `ring`.
    ring: u64,
    ring_head: u32,
    ring_len: u32,
    /// Pattern stream (outgoing connections).
    total: u64,
    sent: u64,
    recvd: u64,
    seed: u64,
}

impl Conn {
    const FREE: Conn = Conn {
        state: State::Free,
        outgoing: false,
        local_port: 0,
        peer_port: 0,
        owe: 0,
        peer_buf_alloc: 0,
        peer_fwd_cnt: 0,
        tx_cnt: 0,
        fwd_cnt: 0,
        fwd_sent: 0,
        peer_shut_send: false,
        shut_sent: false,
        credit_requested: false,
        ring: 0,
        ring_head: 0,
        ring_len: 0,
        total: 0,
        sent: 0,
        recvd: 0,
        seed: 0,
    };

    /// Bytes the peer can take now.
    fn credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }
}

/// Outcome counters, printed at the end.
#[derive(Default)]
struct Stats {
    accepted: u64,
    rejected: u64,
    echoed: u64,
    connected: u64,
    refused: u64,
    sent: u64,
    verified: u64,
    mismatches: u64,
    short: u64,
    early_resets: u64,
    /// Bytes taken in and dropped (bench mode).
    received: u64,
}

struct Vsock {
    t: Transport,
    rxq: Virtqueue,
    txq: Virtqueue,
    _evq: Virtqueue,
    cid: u64,
    listen: Option<u32>,
    timeout_ms: u64,
    /// Bench mode (`probe=vsockbench`): accepted connections drop what they receive,
    /// outgoing ones send the payload buffers as they are and expect nothing back.
    bench: bool,
    conns: [Conn; MAX_CONNS],
    /// Rx buffers: RX_BUFS of `rx_stride` bytes (header + `rx_data` payload).
    rx_base: u64,
    rx_stride: u64,
    rx_data: u32,
    rx_head_buf: [u8; virtio::queue::MAX_SIZE as usize],
    /// Tx slots: header areas and `pkt`-byte payload buffers.
    tx_hdrs: u64,
    tx_data: u64,
    pkt: u32,
    tx_free: [u8; TX_SLOTS],
    tx_nfree: usize,
    tx_head_slot: [u8; virtio::queue::MAX_SIZE as usize],
    /// RSTs owed for packets that name no connection.
    strays: [Hdr; 8],
    nstrays: usize,
    stats: Stats,
}

impl Vsock {
    fn new(t: Transport, c: &Cmdline, bench: bool) -> Result<Self, &'static str> {
        t.init(0)?;
        let cid = t.config64(0);
        let rxq = t.setup_queue(RX_QUEUE, 128)?;
        let txq = t.setup_queue(TX_QUEUE, 128)?;
        let mut evq = t.setup_queue(EVENT_QUEUE, 8)?;
        t.driver_ok()?;
        let rx_data = c.number("vsock.rxbuf").unwrap_or(4096);
        let pkt = c.number("vsock.pkt").unwrap_or(16 << 10);
        if !(1..=65536).contains(&rx_data) || !(1..=65536).contains(&pkt) {
            return Err("vsock.rxbuf and vsock.pkt must be 1..=65536");
        }
        let rx_stride = (HDR_LEN + rx_data).next_multiple_of(64);
        let rx_base = dma::alloc(RX_BUFS as u64 * rx_stride, 4096)?;
        let tx_hdrs = dma::alloc(TX_SLOTS as u64 * 64, 64)?;
        let tx_data = dma::alloc(TX_SLOTS as u64 * pkt, 4096)?;
        // Event buffers (`struct virtio_vsock_event`): the device sends none, but a driver
        // provides them.
        let ev = dma::alloc(EVENT_BUFS as u64 * 8, 8)?;
        for i in 0..EVENT_BUFS as u64 {
            evq.add(&[Buf::write(ev + 8 * i, 8)])?;
        }
        evq.kick();
        let mut v = Self {
            t,
            rxq,
            txq,
            _evq: evq,
            cid,
            listen: c.number("vsock.listen").map(|p| p as u32),
            timeout_ms: virtio::timeout_ms(c),
            bench,
            conns: [Conn::FREE; MAX_CONNS],
            rx_base,
            rx_stride,
            rx_data: rx_data as u32,
            rx_head_buf: [0; virtio::queue::MAX_SIZE as usize],
            tx_hdrs,
            tx_data,
            pkt: pkt as u32,
            tx_free: [0; TX_SLOTS],
            tx_nfree: TX_SLOTS,
            tx_head_slot: [0; virtio::queue::MAX_SIZE as usize],
            strays: [Hdr::default(); 8],
            nstrays: 0,
            stats: Stats::default(),
        };
        for (i, s) in v.tx_free.iter_mut().enumerate() {
            *s = i as u8;
        }
        let n = RX_BUFS.min(usize::from(v.rxq.size()));
        for i in 0..n {
            v.post_rx(i)?;
        }
        v.rxq.kick();
        Ok(v)
    }

    fn post_rx(&mut self, i: usize) -> Result<(), &'static str> {
        let a = self.rx_base + i as u64 * self.rx_stride;
        // Header and payload in one descriptor (as Linux 6.2+ does).
        let head = self
            .rxq
            .add(&[Buf::write(a, HDR_LEN as u32 + self.rx_data)])?;
        self.rx_head_buf[usize::from(head)] = i as u8;
        Ok(())
    }

    /// Reaps finished tx chains; returns whether there were any.
    fn reap_tx(&mut self) -> Result<bool, &'static str> {
        let mut any = false;
        while let Some((head, _)) = self.txq.pop_used()? {
            self.tx_free[self.tx_nfree] = self.tx_head_slot[usize::from(head)];
            self.tx_nfree += 1;
            any = true;
        }
        Ok(any)
    }

    /// Sends one packet; `fill` writes the payload (`len` bytes) into the slot first.
    /// Returns false when no tx slot or descriptor is free.
    fn send(&mut self, mut h: Hdr, fill: impl FnOnce(&mut [u8])) -> Result<bool, &'static str> {
        if self.tx_nfree == 0 || self.txq.num_free() < 2 {
            return Ok(false);
        }
        self.tx_nfree -= 1;
        let slot = self.tx_free[self.tx_nfree];
        let ha = self.tx_hdrs + u64::from(slot) * 64;
        let da = self.tx_data + u64::from(slot) * u64::from(self.pkt);
        h.src_cid = self.cid;
        h.dst_cid = HOST_CID;
        h.type_ = TYPE_STREAM;
        h.buf_alloc = CONN_BUF;
        // SAFETY: the slot is free (not on the ring), so its header and payload buffers
        // are ours.
        unsafe {
            h.write(ha);
            fill(dma::slice_mut(da, h.len as usize));
        }
        let head = if h.len == 0 {
            self.txq.add(&[Buf::read(ha, HDR_LEN as u32)])?
        } else {
            self.txq
                .add(&[Buf::read(ha, HDR_LEN as u32), Buf::read(da, h.len)])?
        };
        self.tx_head_slot[usize::from(head)] = slot;
        Ok(true)
    }

    /// A header for connection `i` with its current credit fields.
    fn conn_hdr(&mut self, i: usize, op: u16, flags: u32, len: u32) -> Hdr {
        let c = &mut self.conns[i];
        c.fwd_sent = c.fwd_cnt;
        Hdr {
            src_port: c.local_port,
            dst_port: c.peer_port,
            len,
            op,
            flags,
            fwd_cnt: c.fwd_cnt,
            ..Hdr::default()
        }
    }

    /// Handles one received packet whose header is at `a` (payload right after it).
    fn receive(&mut self, a: u64, used: u32) -> Result<(), &'static str> {
        // SAFETY: the device returned this rx buffer; it is not on the ring until reposted.
        let h = unsafe { Hdr::read(a) };
        if u64::from(used) < HDR_LEN || u64::from(h.len) > u64::from(used) - HDR_LEN {
            return Err("vsock: rx packet longer than the used length");
        }
        if h.dst_cid != self.cid || h.src_cid != HOST_CID || h.type_ != TYPE_STREAM {
            return Err("vsock: rx packet with a bad address or type");
        }
        let data = a + HDR_LEN;
        let found = self.conns.iter().position(|c| {
            c.state != State::Free && c.local_port == h.dst_port && c.peer_port == h.src_port
        });
        let Some(i) = found else {
            if h.op == op::REQUEST && Some(h.dst_port) == self.listen {
                if let Some(i) = self.conns.iter().position(|c| c.state == State::Free) {
                    let ring = self.conns[i].ring;
                    self.conns[i] = Conn {
                        state: State::Established,
                        local_port: h.dst_port,
                        peer_port: h.src_port,
                        owe: owe::RESPONSE,
                        peer_buf_alloc: h.buf_alloc,
                        peer_fwd_cnt: h.fwd_cnt,
                        ring,
                        ..Conn::FREE
                    };
                    self.stats.accepted += 1;
                    return Ok(());
                }
            }
            if h.op == op::REQUEST {
                self.stats.rejected += 1;
            }
            if h.op != op::RST {
                self.stray_rst(&h);
            }
            return Ok(());
        };
        let c = &mut self.conns[i];
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = h.fwd_cnt;
        if c.credit() > 0 {
            c.credit_requested = false;
        }
        match h.op {
            op::RESPONSE if c.state == State::Connecting => {
                c.state = State::Established;
                self.stats.connected += 1;
            }
            op::RST => {
                if c.state == State::Connecting {
                    self.stats.refused += 1;
                } else if c.outgoing && (c.sent != c.total || (!self.bench && c.recvd != c.total)) {
                    self.stats.short += 1;
                } else if !c.outgoing && !c.shut_sent {
                    self.stats.early_resets += 1;
                }
                c.state = State::Free;
            }
            op::RW if c.state == State::Established => {
                if c.peer_shut_send {
                    return Err("vsock: data after the peer's SHUTDOWN(SEND)");
                }
                let len = h.len;
                if self.bench {
                    // Dropped at once; the credit comes back with the next CREDIT_UPDATE.
                    // Outgoing bench connections expect no data.
                    if c.outgoing {
                        self.stats.mismatches += 1;
                    }
                    c.fwd_cnt = c.fwd_cnt.wrapping_add(len);
                    self.stats.received += u64::from(len);
                } else if c.outgoing {
                    // SAFETY: the payload is inside the returned rx buffer (checked above).
                    let buf = unsafe { dma::slice_mut(data, len as usize) };
                    if c.recvd + u64::from(len) > c.total
                        || pattern_mismatch(c.seed, c.recvd, buf).is_some()
                    {
                        self.stats.mismatches += 1;
                    }
                    c.recvd += u64::from(len);
                    c.fwd_cnt = c.fwd_cnt.wrapping_add(len);
                    self.stats.verified += u64::from(len);
                } else {
                    if c.ring_len + len > CONN_BUF {
                        return Err("vsock: peer sent more than the advertised credit");
                    }
                    // Copy into the echo ring, wrapping at its end.
                    let tail = (c.ring_head + c.ring_len) % CONN_BUF;
                    let first = len.min(CONN_BUF - tail);
                    // SAFETY: source inside the returned rx buffer; destination inside
                    // this connection's ring (CONN_BUF bytes), not device memory.
                    unsafe {
                        core::ptr::copy_nonoverlapping(
                            data as *const u8,
                            (c.ring + u64::from(tail)) as *mut u8,
                            first as usize,
                        );
                        core::ptr::copy_nonoverlapping(
                            (data + u64::from(first)) as *const u8,
                            c.ring as *mut u8,
                            (len - first) as usize,
                        );
                    }
                    c.ring_len += len;
                }
            }
            op::SHUTDOWN => {
                if h.flags & SHUT_SEND != 0 {
                    c.peer_shut_send = true;
                }
            }
            op::CREDIT_UPDATE => {}
            op::CREDIT_REQUEST => c.owe |= owe::CREDIT_UPDATE,
            _ => return Err("vsock: unexpected packet for a connection"),
        }
        Ok(())
    }

    fn stray_rst(&mut self, h: &Hdr) {
        if self.nstrays < self.strays.len() {
            self.strays[self.nstrays] = Hdr {
                src_port: h.dst_port,
                dst_port: h.src_port,
                op: op::RST,
                ..Hdr::default()
            };
            self.nstrays += 1;
        }
    }

    /// Whether a packet can be sent now (a tx slot and two descriptors are free).
    fn can_send(&self) -> bool {
        self.tx_nfree > 0 && self.txq.num_free() >= 2
    }

    /// Sends a control packet (no payload) for connection `i`, if possible.
    fn control(&mut self, i: usize, op: u16, flags: u32) -> Result<bool, &'static str> {
        if !self.can_send() {
            return Ok(false);
        }
        let h = self.conn_hdr(i, op, flags, 0);
        self.send(h, |_| {})
    }

    /// Sends what connection `i` owes or can send now. Returns whether it sent anything.
    fn pump(&mut self, i: usize) -> Result<bool, &'static str> {
        let c = self.conns[i];
        if c.state == State::Free {
            return Ok(false);
        }
        if c.owe & owe::REQUEST != 0 {
            let ok = self.control(i, op::REQUEST, 0)?;
            if ok {
                self.conns[i].owe &= !owe::REQUEST;
            }
            return Ok(ok);
        }
        if c.state != State::Established {
            return Ok(false);
        }
        let mut sent = false;
        if c.owe & owe::RESPONSE != 0 {
            if !self.control(i, op::RESPONSE, 0)? {
                return Ok(false);
            }
            self.conns[i].owe &= !owe::RESPONSE;
            sent = true;
        }
        // Payload, as credit and tx slots allow.
        while self.can_send() {
            let c = self.conns[i];
            let avail = if c.outgoing {
                (c.total - c.sent).min(u64::from(u32::MAX)) as u32
            } else {
                // Contiguous part of the echo ring.
                c.ring_len.min(CONN_BUF - c.ring_head)
            };
            if avail == 0 {
                break;
            }
            let credit = c.credit();
            if credit == 0 {
                if !c.credit_requested && self.control(i, op::CREDIT_REQUEST, 0)? {
                    self.conns[i].credit_requested = true;
                    sent = true;
                }
                break;
            }
            let n = avail.min(credit).min(self.pkt);
            let cm = &mut self.conns[i];
            cm.tx_cnt = cm.tx_cnt.wrapping_add(n);
            if c.outgoing {
                cm.sent += u64::from(n);
                self.stats.sent += u64::from(n);
                let h = self.conn_hdr(i, op::RW, 0, n);
                let bench = self.bench;
                self.send(h, |b| {
                    if !bench {
                        pattern_fill(c.seed, c.sent, b)
                    }
                })?;
            } else {
                // The bytes leave the echo ring as they are copied into the packet, which
                // frees that much credit: the packet already carries the new fwd_cnt.
                let src = c.ring + u64::from(c.ring_head);
                cm.ring_head = (c.ring_head + n) % CONN_BUF;
                cm.ring_len -= n;
                cm.fwd_cnt = cm.fwd_cnt.wrapping_add(n);
                self.stats.echoed += u64::from(n);
                let h = self.conn_hdr(i, op::RW, 0, n);
                self.send(h, |b| {
                    // SAFETY: `n` contiguous bytes of the echo ring from the old ring_head
                    // (see `avail`); the ring is guest memory only this code touches, and
                    // nothing is written to that part before the copy.
                    let s = unsafe { core::slice::from_raw_parts(src as *const u8, n as usize) };
                    b.copy_from_slice(s);
                })?;
            }
            sent = true;
        }
        let c = self.conns[i];
        let unreported = c.fwd_cnt.wrapping_sub(c.fwd_sent);
        if (c.owe & owe::CREDIT_UPDATE != 0 || unreported >= CONN_BUF / 4)
            && self.control(i, op::CREDIT_UPDATE, 0)?
        {
            self.conns[i].owe &= !owe::CREDIT_UPDATE;
            sent = true;
        }
        let c = self.conns[i];
        let shut = if c.outgoing {
            // Done sending; keep receiving the echo.
            (c.sent == c.total).then_some(SHUT_SEND)
        } else {
            // The peer is done and everything is echoed.
            (c.peer_shut_send && c.ring_len == 0).then_some(SHUT_SEND | SHUT_RCV)
        };
        if let (Some(flags), false) = (shut, c.shut_sent) {
            if self.control(i, op::SHUTDOWN, flags)? {
                self.conns[i].shut_sent = true;
                sent = true;
            }
        }
        Ok(sent)
    }

    /// Runs until `done` says so, failing after `timeout_ms` without progress.
    fn run_until(&mut self, done: impl Fn(&Self) -> bool) -> Result<(), &'static str> {
        let mut deadline = Deadline::after_ms(self.timeout_ms);
        loop {
            let mut progress = self.reap_tx()?;
            let mut reposted = false;
            while let Some((head, len)) = self.rxq.pop_used()? {
                let b = usize::from(self.rx_head_buf[usize::from(head)]);
                self.receive(self.rx_base + b as u64 * self.rx_stride, len)?;
                self.post_rx(b)?;
                reposted = true;
            }
            if reposted {
                self.rxq.kick();
                progress = true;
            }
            let mut sent = false;
            while self.nstrays > 0 {
                let h = self.strays[self.nstrays - 1];
                if !self.send(h, |_| {})? {
                    break;
                }
                self.nstrays -= 1;
                sent = true;
            }
            for i in 0..MAX_CONNS {
                sent |= self.pump(i)?;
            }
            if sent {
                self.txq.kick();
                progress = true;
            }
            if done(self) && self.txq.in_flight() == 0 {
                return Ok(());
            }
            if progress {
                deadline = Deadline::after_ms(self.timeout_ms);
            } else if deadline.passed() {
                let mut l = Line::new();
                l.str("PROBE-VIRTIO: timeout dev=")
                    .hex(self.t.slot.base)
                    .str(" irq=")
                    .dec(self.t.slot.irq)
                    .str(" status=")
                    .hex(u64::from(self.t.status()))
                    .str(" rx_in_flight=")
                    .dec(self.rxq.in_flight() as u64)
                    .str(" tx_in_flight=")
                    .dec(self.txq.in_flight() as u64);
                serial::println(&mut l);
                return Err("vsock: no progress before the timeout");
            }
        }
    }
}

pub fn run(ctx: &Ctx) -> Outcome {
    run_mode(ctx, false)
}

/// `probe=vsockbench`: the same stack and command-line keys, in bench mode (see
/// the `bench` field of `Vsock`), for `bench io` (tools/bench), which times the transfers on the host.
/// Prints `PROBE-VSOCKBENCH: sent=S received=R tsc=T` (T: TSC ticks of the whole run).
pub fn bench(ctx: &Ctx) -> Outcome {
    run_mode(ctx, true)
}

fn run_mode(ctx: &Ctx, bench: bool) -> Outcome {
    let c = &ctx.cmdline;
    let t = virtio::find(c, virtio::ID_VSOCK, 0).ok_or("no virtio-vsock device")?;
    let mut v = Vsock::new(t, c, bench)?;
    for conn in v.conns.iter_mut() {
        conn.ring = dma::alloc(u64::from(CONN_BUF), 4096)?;
    }
    for val in c.values("vsock.connect") {
        let mut f = [0u64; 3];
        if parse_fields(val, &mut f) != Some(3) || f[0] > u64::from(u32::MAX) {
            return Err("bad vsock.connect value (PORT:BYTES:SEED)");
        }
        let i = v
            .conns
            .iter()
            .position(|c| c.state == State::Free)
            .ok_or("too many vsock.connect entries")?;
        let ring = v.conns[i].ring;
        v.conns[i] = Conn {
            state: State::Connecting,
            outgoing: true,
            local_port: FIRST_LOCAL_PORT + i as u32,
            peer_port: f[0] as u32,
            owe: owe::REQUEST,
            total: f[1],
            seed: f[2],
            ring,
            ..Conn::FREE
        };
    }
    let want_accept = c.number("vsock.accept").unwrap_or(0);
    let want_reject = c.number("vsock.reject").unwrap_or(0);
    if want_accept > 0 && v.listen.is_none() {
        return Err("vsock.accept needs vsock.listen");
    }
    let t0 = rdtsc();
    v.run_until(|v| {
        v.stats.accepted >= want_accept
            && v.stats.rejected >= want_reject
            && v.nstrays == 0
            && v.conns.iter().all(|c| c.state == State::Free)
    })?;
    let ticks = rdtsc().wrapping_sub(t0);

    let s = &v.stats;
    let mut l = Line::new();
    if bench {
        l.str("PROBE-VSOCKBENCH: sent=")
            .dec(s.sent)
            .str(" received=")
            .dec(s.received)
            .str(" tsc=")
            .dec(ticks);
        serial::println(&mut l);
        l = Line::new();
    }
    l.str("PROBE-VSOCK: cid=")
        .dec(v.cid)
        .str(" accepted=")
        .dec(s.accepted)
        .str(" echoed=")
        .dec(s.echoed)
        .str(" rejected=")
        .dec(s.rejected)
        .str(" connected=")
        .dec(s.connected)
        .str(" refused=")
        .dec(s.refused)
        .str(" sent=")
        .dec(s.sent)
        .str(" verified=")
        .dec(s.verified)
        .str(" mismatches=")
        .dec(s.mismatches)
        .str(" short=")
        .dec(s.short)
        .str(" early_resets=")
        .dec(s.early_resets);
    serial::println(&mut l);
    if v.t.needs_reset() {
        return Err("vsock: device asks for a reset");
    }
    v.t.reset()?;
    if s.mismatches > 0 {
        return Err("vsock: echoed data differs from what was sent");
    }
    if s.short > 0 {
        return Err("vsock: connection reset before all data came back");
    }
    Ok(())
}
