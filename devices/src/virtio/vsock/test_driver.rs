//! A small guest-side virtio-vsock driver for tests: split rings in guest memory (with
//! EVENT_IDX / NO_NOTIFY kick suppression, so a device that forgets to ask for kicks hangs the
//! test), rx buffer posting in both the two-descriptor and the single-descriptor layout, raw
//! packet send/receive, and on top a tiny socket layer with credit accounting that checks the
//! device never exceeds the guest's credit.
//!
//! It deliberately shares no code with the device (its own header encoding, its own
//! constants) and uses only public APIs, because the integration tests include this file
//! with `#[path]`.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

pub type Mem = vm_memory::GuestMemoryMmap<()>;

pub const HDR_LEN: usize = 44;
pub const HOST_CID: u64 = 2;
pub const TYPE_STREAM: u16 = 1;
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;
pub const SHUT_RCV: u32 = 1;
pub const SHUT_SEND: u32 = 2;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
/// used.flags bit: the device does not want kicks.
const USED_F_NO_NOTIFY: u16 = 1;

pub const MEM_SIZE: usize = 32 << 20;
/// Free guest memory for tests that build their own (malformed) buffers.
pub const SCRATCH: u64 = 0x190_0000;

pub const RX: usize = 0;
pub const TX: usize = 1;
pub const EV: usize = 2;

pub fn test_mem() -> Mem {
    Mem::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// Deterministic test payload.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            // xorshift: cheap, and no period short enough to hide a reordering.
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

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

    pub fn from_bytes(b: &[u8]) -> Self {
        let u = |o: usize, n: usize| {
            b[o..o + n]
                .iter()
                .rev()
                .fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
        };
        Hdr {
            src_cid: u(0, 8),
            dst_cid: u(8, 8),
            src_port: u(16, 4) as u32,
            dst_port: u(20, 4) as u32,
            len: u(24, 4) as u32,
            type_: u(28, 2) as u16,
            op: u(30, 2) as u16,
            flags: u(32, 4) as u32,
            buf_alloc: u(36, 4) as u32,
            fwd_cnt: u(40, 4) as u32,
        }
    }
}

/// A packet the device put in an rx buffer.
#[derive(Clone, Debug)]
pub struct Pkt {
    /// Length the device reported in the used ring.
    pub used_len: u32,
    pub hdr: Hdr,
    pub data: Vec<u8>,
}

/// (guest address, length) of each buffer of a chain.
type Bufs = Vec<(u64, u32)>;

/// One split virtqueue, driver side.
struct Ring {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    /// Slot `i`'s buffer is at `bufs + i * stride`.
    bufs: u64,
    stride: u64,
    free: Vec<u16>,
    avail_idx: u16,
    last_used: u16,
    /// Slots and (addr, len) of each outstanding chain, by head.
    chains: BTreeMap<u16, (Vec<u16>, Bufs)>,
    /// avail_idx at the last kick decision.
    kicked_idx: u16,
}

impl Ring {
    fn new(size: u16, base: u64, bufs: u64, stride: u64) -> Self {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        Ring {
            size,
            desc,
            avail,
            used,
            bufs,
            stride,
            free: (0..size).rev().collect(),
            avail_idx: 0,
            last_used: 0,
            chains: BTreeMap::new(),
            kicked_idx: 0,
        }
    }

    fn slot_addr(&self, slot: u16) -> u64 {
        self.bufs + u64::from(slot) * self.stride
    }

    /// Writes descriptors for `descs` (addr, len, device-writable) into free slots and
    /// publishes the chain. `None` if there are not enough free descriptors.
    fn add_chain(&mut self, mem: &Mem, descs: &[(u64, u32, bool)]) -> Option<u16> {
        if self.free.len() < descs.len() || descs.is_empty() {
            return None;
        }
        let slots: Vec<u16> = (0..descs.len()).map(|_| self.free.pop().unwrap()).collect();
        for (i, (&(addr, len, write), &slot)) in descs.iter().zip(&slots).enumerate() {
            let last = i + 1 == descs.len();
            let mut flags = if write { F_WRITE } else { 0 };
            if !last {
                flags |= F_NEXT;
            }
            let next = if last { 0 } else { slots[i + 1] };
            let at = self.desc + 16 * u64::from(slot);
            mem.write_obj(addr, GuestAddress(at)).unwrap();
            mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            mem.write_obj(next, GuestAddress(at + 14)).unwrap();
        }
        let head = slots[0];
        let bufs = descs.iter().map(|&(a, l, _)| (a, l)).collect();
        self.chains.insert(head, (slots, bufs));
        let pos = u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(self.avail + 4 + 2 * pos))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
        Some(head)
    }

    /// Used entries since the last call: (head, len, descriptors).
    fn take_used(&mut self, mem: &Mem) -> Vec<(u16, u32, Bufs)> {
        let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        let mut out = Vec::new();
        while self.last_used != idx {
            let pos = u64::from(self.last_used % self.size);
            let at = self.used + 4 + 8 * pos;
            let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
            self.last_used = self.last_used.wrapping_add(1);
            let head = id as u16;
            let (slots, bufs) = self
                .chains
                .remove(&head)
                .unwrap_or_else(|| panic!("device returned unknown head {id}"));
            self.free.extend(slots);
            out.push((head, len, bufs));
        }
        // used_event: interrupt us for anything after what we have seen.
        mem.write_obj(
            self.last_used,
            GuestAddress(self.avail + 4 + 2 * u64::from(self.size)),
        )
        .unwrap();
        out
    }

    /// Whether the device asked to be kicked for the chains published since the last call
    /// (virtio 1.2 §2.7.10 / vring_need_event).
    fn needs_kick(&mut self, mem: &Mem, event_idx: bool) -> bool {
        let old = self.kicked_idx;
        let new = self.avail_idx;
        self.kicked_idx = new;
        if old == new {
            return false;
        }
        if event_idx {
            let avail_event: u16 = mem
                .read_obj(GuestAddress(self.used + 4 + 8 * u64::from(self.size)))
                .unwrap();
            new.wrapping_sub(avail_event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            let flags: u16 = mem.read_obj(GuestAddress(self.used)).unwrap();
            flags & USED_F_NO_NOTIFY == 0
        }
    }

    fn outstanding(&self) -> usize {
        self.chains.len()
    }

    fn queue(&self, event_idx: bool) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_event_idx(event_idx);
        q.set_ready(true);
        q
    }
}

/// How rx buffers are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxLayout {
    /// Header and payload in separate descriptors (Linux before 6.2).
    Split,
    /// One descriptor for both (Linux 6.2+).
    Merged,
    /// Alternate between the two.
    Mixed,
}

/// Queue sizes, ring placement and buffer areas.
pub const QSIZE: u16 = 256;
const RX_RING: u64 = 0x1000;
const TX_RING: u64 = 0x8000;
const EV_RING: u64 = 0xf000;
const RX_BUFS: u64 = 0x10_0000;
const RX_STRIDE: u64 = 0x2000;
const TX_BUFS: u64 = 0x40_0000;
const TX_STRIDE: u64 = 0x1_0000;
const EV_BUFS: u64 = 0x180_0000;
const EV_STRIDE: u64 = 0x100;

/// The raw driver.
pub struct Driver {
    pub mem: Mem,
    pub cid: u64,
    pub event_idx: bool,
    rings: [Ring; 3],
    pub rx_layout: RxLayout,
    /// Payload room per rx buffer.
    pub rx_data_len: u32,
    mixed_toggle: bool,
    /// Queues that need a kick (per the device's suppression settings).
    kicks: [bool; 3],
}

impl Driver {
    pub fn new(mem: Mem, cid: u64, event_idx: bool) -> Self {
        // Rings start zeroed, as freshly allocated driver memory does (matters when a test
        // brings up a second driver instance in the same memory after a reset).
        mem.write_slice(
            &vec![0u8; (RX_BUFS - RX_RING) as usize],
            GuestAddress(RX_RING),
        )
        .unwrap();
        Driver {
            mem,
            cid,
            event_idx,
            rings: [
                Ring::new(QSIZE, RX_RING, RX_BUFS, RX_STRIDE),
                Ring::new(QSIZE, TX_RING, TX_BUFS, TX_STRIDE),
                Ring::new(QSIZE, EV_RING, EV_BUFS, EV_STRIDE),
            ],
            rx_layout: RxLayout::Mixed,
            rx_data_len: 4096,
            mixed_toggle: false,
            kicks: [false; 3],
        }
    }

    /// Ready queues for activating the device directly.
    pub fn queues(&self) -> Vec<Queue> {
        self.rings.iter().map(|r| r.queue(self.event_idx)).collect()
    }

    /// (size, desc, avail, used) of queue `i`, for programming a transport.
    pub fn layout(&self, i: usize) -> (u16, u64, u64, u64) {
        let r = &self.rings[i];
        (r.size, r.desc, r.avail, r.used)
    }

    fn publish(&mut self, q: usize) {
        if self.rings[q].needs_kick(&self.mem, self.event_idx) {
            self.kicks[q] = true;
        }
    }

    /// Takes the pending kick for queue `q`.
    pub fn take_kick(&mut self, q: usize) -> bool {
        std::mem::take(&mut self.kicks[q])
    }

    /// Posts up to `n` rx buffers; returns how many.
    pub fn post_rx(&mut self, n: usize) -> usize {
        let mut posted = 0;
        for _ in 0..n {
            let merged = match self.rx_layout {
                RxLayout::Split => false,
                RxLayout::Merged => true,
                RxLayout::Mixed => {
                    self.mixed_toggle = !self.mixed_toggle;
                    self.mixed_toggle
                }
            };
            let ring = &mut self.rings[RX];
            let Some(&a) = ring.free.last() else { break };
            let ok = if merged {
                let addr = ring.slot_addr(a);
                ring.add_chain(
                    &self.mem,
                    &[(addr, HDR_LEN as u32 + self.rx_data_len, true)],
                )
            } else {
                if ring.free.len() < 2 {
                    break;
                }
                let b = ring.free[ring.free.len() - 2];
                let (ha, da) = (ring.slot_addr(a), ring.slot_addr(b));
                ring.add_chain(
                    &self.mem,
                    &[(ha, HDR_LEN as u32, true), (da, self.rx_data_len, true)],
                )
            };
            if ok.is_none() {
                break;
            }
            posted += 1;
        }
        if posted > 0 {
            self.publish(RX);
        }
        posted
    }

    /// Rx buffers the device has not used yet.
    pub fn rx_outstanding(&self) -> usize {
        self.rings[RX].outstanding()
    }

    /// Posts `n` event buffers (the device should leave them alone).
    pub fn post_event_bufs(&mut self, n: usize) {
        for _ in 0..n {
            let ring = &mut self.rings[EV];
            let Some(&a) = ring.free.last() else { break };
            let addr = ring.slot_addr(a);
            ring.add_chain(&self.mem, &[(addr, 4, true)]).unwrap();
        }
        self.publish(EV);
    }

    pub fn event_outstanding(&self) -> usize {
        self.rings[EV].outstanding()
    }

    /// Packets the device delivered since the last call.
    pub fn recv(&mut self) -> Vec<Pkt> {
        let used = self.rings[RX].take_used(&self.mem);
        used.into_iter()
            .map(|(_, used_len, descs)| {
                let mut bytes = Vec::new();
                let mut left = used_len as usize;
                for (addr, len) in descs {
                    let n = left.min(len as usize);
                    let mut b = vec![0u8; n];
                    self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
                    bytes.extend_from_slice(&b);
                    left -= n;
                }
                assert_eq!(left, 0, "used length {used_len} exceeds the buffer");
                let hdr = if bytes.len() >= HDR_LEN {
                    Hdr::from_bytes(&bytes[..HDR_LEN])
                } else {
                    Hdr::default()
                };
                Pkt {
                    used_len,
                    hdr,
                    data: bytes.get(HDR_LEN..).unwrap_or_default().to_vec(),
                }
            })
            .collect()
    }

    /// Free tx descriptors.
    pub fn tx_free(&self) -> usize {
        self.rings[TX].free.len()
    }

    /// Sends a packet (header and payload in separate descriptors, as Linux does); `false`
    /// if the tx ring is full.
    pub fn send(&mut self, hdr: &Hdr, data: &[u8]) -> bool {
        assert!(data.len() as u64 <= TX_STRIDE);
        let ring = &mut self.rings[TX];
        let need = if data.is_empty() { 1 } else { 2 };
        if ring.free.len() < need {
            return false;
        }
        let a = ring.free[ring.free.len() - 1];
        let ha = ring.slot_addr(a);
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(ha))
            .unwrap();
        let mut descs = vec![(ha, HDR_LEN as u32, false)];
        if !data.is_empty() {
            let b = ring.free[ring.free.len() - 2];
            let da = ring.slot_addr(b);
            self.mem.write_slice(data, GuestAddress(da)).unwrap();
            descs.push((da, data.len() as u32, false));
        }
        ring.add_chain(&self.mem, &descs).unwrap();
        self.publish(TX);
        true
    }

    /// Sends header and payload in one descriptor.
    pub fn send_merged(&mut self, hdr: &Hdr, data: &[u8]) -> bool {
        assert!((HDR_LEN + data.len()) as u64 <= TX_STRIDE);
        let ring = &mut self.rings[TX];
        let Some(&a) = ring.free.last() else {
            return false;
        };
        let addr = ring.slot_addr(a);
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(addr))
            .unwrap();
        self.mem
            .write_slice(data, GuestAddress(addr + HDR_LEN as u64))
            .unwrap();
        ring.add_chain(&self.mem, &[(addr, (HDR_LEN + data.len()) as u32, false)])
            .unwrap();
        self.publish(TX);
        true
    }

    /// Publishes an arbitrary chain (addr, len, device-writable) on queue `q`.
    pub fn send_chain(&mut self, q: usize, descs: &[(u64, u32, bool)]) {
        self.rings[q].add_chain(&self.mem, descs).unwrap();
        self.publish(q);
    }

    /// Returns used tx chains to the free list; returns (head, used len) of each.
    pub fn reap_tx(&mut self) -> Vec<(u16, u32)> {
        self.rings[TX]
            .take_used(&self.mem)
            .into_iter()
            .map(|(h, l, _)| (h, l))
            .collect()
    }

    /// Used index of queue `q` as the device wrote it.
    pub fn used_idx(&self, q: usize) -> u16 {
        self.mem
            .read_obj(GuestAddress(self.rings[q].used + 2))
            .unwrap()
    }
}

/// Guest socket state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GState {
    Connecting,
    Established,
    Reset,
}

/// One guest-side stream socket.
#[derive(Debug)]
pub struct GConn {
    pub state: GState,
    /// Payload received, in order.
    pub rx: Vec<u8>,
    pub buf_alloc: u32,
    /// Bytes of `rx` the "application" consumed.
    pub fwd_cnt: u32,
    fwd_cnt_sent: u32,
    rx_cnt: u32,
    /// Consume received data immediately (otherwise call `GuestStack::consume`).
    pub auto_consume: bool,
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
    pub tx_cnt: u32,
    tx_queue: Vec<u8>,
    tx_off: usize,
    /// SHUTDOWN flags to send once `tx_queue` is drained.
    shutdown_after_tx: Option<u32>,
    /// SHUTDOWN flags received.
    pub peer_shutdown: u32,
    /// Credit updates received.
    pub credit_updates: usize,
    /// Largest payload packet received.
    pub max_pkt: usize,
    pub packets: usize,
}

impl GConn {
    fn new(state: GState, buf_alloc: u32) -> Self {
        GConn {
            state,
            rx: Vec::new(),
            buf_alloc,
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            rx_cnt: 0,
            auto_consume: true,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            tx_queue: Vec::new(),
            tx_off: 0,
            shutdown_after_tx: None,
            peer_shutdown: 0,
            credit_updates: 0,
            max_pkt: 0,
            packets: 0,
        }
    }

    pub fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    /// Queued payload not yet sent.
    pub fn tx_pending(&self) -> usize {
        self.tx_queue.len() - self.tx_off
    }
}

/// (guest port, host port).
pub type Key = (u32, u32);

/// A minimal guest vsock stack over [`Driver`].
pub struct GuestStack {
    pub drv: Driver,
    pub conns: BTreeMap<Key, GConn>,
    /// Guest ports accepting host-initiated connections, with the buf_alloc to use.
    pub listening: BTreeMap<u32, u32>,
    /// Host-initiated connections accepted, in order.
    pub accepted: Vec<Key>,
    /// REQUESTs refused (no listener).
    pub refused: Vec<Hdr>,
    /// Packets that fit no connection.
    pub stray: Vec<Pkt>,
    /// Keep this many rx buffers posted (0: the test posts them itself).
    pub rx_target: usize,
    /// Largest payload per tx packet.
    pub tx_chunk: usize,
    ctrl_out: VecDeque<Hdr>,
    next_port: u32,
}

impl GuestStack {
    pub fn new(drv: Driver) -> Self {
        GuestStack {
            drv,
            conns: BTreeMap::new(),
            listening: BTreeMap::new(),
            accepted: Vec::new(),
            refused: Vec::new(),
            stray: Vec::new(),
            rx_target: 128,
            tx_chunk: 64 * 1024,
            ctrl_out: VecDeque::new(),
            next_port: 40_000,
        }
    }

    fn hdr(&self, key: Key, op: u16) -> Hdr {
        let (buf_alloc, fwd_cnt) = self
            .conns
            .get(&key)
            .map_or((0, 0), |c| (c.buf_alloc, c.fwd_cnt));
        Hdr {
            src_cid: self.drv.cid,
            dst_cid: HOST_CID,
            src_port: key.0,
            dst_port: key.1,
            type_: TYPE_STREAM,
            op,
            buf_alloc,
            fwd_cnt,
            ..Hdr::default()
        }
    }

    /// Sends a control packet now if the ring has room, else queues it.
    fn send_ctrl(&mut self, key: Key, op: u16, flags: u32) {
        let mut h = self.hdr(key, op);
        h.flags = flags;
        if let Some(c) = self.conns.get_mut(&key) {
            c.fwd_cnt_sent = c.fwd_cnt;
        }
        if !self.ctrl_out.is_empty() || !self.drv.send(&h, &[]) {
            self.ctrl_out.push_back(h);
        }
    }

    /// Opens a connection to host port `port`.
    pub fn connect(&mut self, port: u32, buf_alloc: u32) -> Key {
        let key = (self.next_port, port);
        self.next_port += 1;
        self.conns
            .insert(key, GConn::new(GState::Connecting, buf_alloc));
        self.send_ctrl(key, OP_REQUEST, 0);
        key
    }

    /// Queues payload.
    pub fn write(&mut self, key: Key, data: &[u8]) {
        self.conns
            .get_mut(&key)
            .unwrap()
            .tx_queue
            .extend_from_slice(data);
    }

    /// SHUTDOWN with `flags` once queued payload is out.
    pub fn shutdown(&mut self, key: Key, flags: u32) {
        self.conns.get_mut(&key).unwrap().shutdown_after_tx = Some(flags);
    }

    pub fn rst(&mut self, key: Key) {
        self.send_ctrl(key, OP_RST, 0);
        self.conns.get_mut(&key).unwrap().state = GState::Reset;
    }

    /// The application consumed `n` received bytes.
    pub fn consume(&mut self, key: Key, n: u32) {
        let c = self.conns.get_mut(&key).unwrap();
        c.fwd_cnt = c.fwd_cnt.wrapping_add(n);
        assert!(c.fwd_cnt <= c.rx_cnt, "consumed more than received");
    }

    pub fn conn(&self, key: Key) -> &GConn {
        &self.conns[&key]
    }

    pub fn conn_mut(&mut self, key: Key) -> &mut GConn {
        self.conns.get_mut(&key).unwrap()
    }

    /// Processes delivered packets, sends what credit and ring room allow, reposts rx
    /// buffers. Returns whether anything happened.
    pub fn poll(&mut self) -> bool {
        let pkts = self.drv.recv();
        let mut progress = !pkts.is_empty();
        for p in pkts {
            self.handle(p);
        }
        progress |= !self.drv.reap_tx().is_empty();
        progress |= self.flush();
        let want = self.rx_target.saturating_sub(self.drv.rx_outstanding());
        if want > 0 && self.drv.post_rx(want) > 0 {
            progress = true;
        }
        progress
    }

    /// Processes one delivered packet.
    pub fn handle(&mut self, p: Pkt) {
        let h = p.hdr;
        assert!(p.used_len as usize >= HDR_LEN, "short rx packet {p:?}");
        assert_eq!(
            h.len as usize,
            p.data.len(),
            "header len vs used len: {h:?}"
        );
        assert_eq!((h.src_cid, h.dst_cid), (HOST_CID, self.drv.cid), "{h:?}");
        // An RST answering an unsupported type echoes that type, as Linux does.
        assert!(h.type_ == TYPE_STREAM || h.op == OP_RST, "{h:?}");
        let key = (h.dst_port, h.src_port);
        if h.op == OP_REQUEST && !self.conns.contains_key(&key) {
            if let Some(&buf_alloc) = self.listening.get(&h.dst_port) {
                let mut c = GConn::new(GState::Established, buf_alloc);
                c.peer_buf_alloc = h.buf_alloc;
                c.peer_fwd_cnt = h.fwd_cnt;
                self.conns.insert(key, c);
                self.accepted.push(key);
                self.send_ctrl(key, OP_RESPONSE, 0);
            } else {
                self.refused.push(h);
                let mut r = self.hdr(key, OP_RST);
                r.buf_alloc = 0;
                if !self.drv.send(&r, &[]) {
                    self.ctrl_out.push_back(r);
                }
            }
            return;
        }
        let Some(c) = self.conns.get_mut(&key) else {
            self.stray.push(p);
            return;
        };
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = h.fwd_cnt;
        match h.op {
            OP_RESPONSE => {
                assert_eq!(c.state, GState::Connecting, "unexpected RESPONSE {h:?}");
                c.state = GState::Established;
            }
            OP_RW => {
                assert_eq!(c.state, GState::Established, "RW on {:?} {h:?}", c.state);
                assert_eq!(c.peer_shutdown & SHUT_SEND, 0, "RW after SHUTDOWN(SEND)");
                let in_use = c.rx_cnt.wrapping_sub(c.fwd_cnt_sent) + h.len;
                assert!(
                    in_use <= c.buf_alloc,
                    "device overran guest credit: {in_use} > {}",
                    c.buf_alloc
                );
                c.rx.extend_from_slice(&p.data);
                c.rx_cnt = c.rx_cnt.wrapping_add(h.len);
                c.max_pkt = c.max_pkt.max(p.data.len());
                c.packets += 1;
                if c.auto_consume {
                    c.fwd_cnt = c.fwd_cnt.wrapping_add(h.len);
                }
            }
            OP_CREDIT_UPDATE => c.credit_updates += 1,
            OP_CREDIT_REQUEST => self.send_ctrl(key, OP_CREDIT_UPDATE, 0),
            OP_SHUTDOWN => c.peer_shutdown |= h.flags,
            OP_RST => c.state = GState::Reset,
            o => panic!("unexpected op {o} from device: {h:?}"),
        }
    }

    /// Sends queued control packets, then payload as credit allows, then credit updates.
    fn flush(&mut self) -> bool {
        let mut progress = false;
        while let Some(h) = self.ctrl_out.front() {
            if !self.drv.send(h, &[]) {
                return progress;
            }
            self.ctrl_out.pop_front();
            progress = true;
        }
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for key in keys {
            let c = &self.conns[&key];
            if c.state != GState::Established {
                continue;
            }
            loop {
                let c = &self.conns[&key];
                let n = c
                    .tx_pending()
                    .min(self.tx_chunk)
                    .min(c.peer_credit() as usize);
                if n == 0 {
                    break;
                }
                let mut h = self.hdr(key, OP_RW);
                h.len = n as u32;
                let c = self.conns.get_mut(&key).unwrap();
                let data = c.tx_queue[c.tx_off..c.tx_off + n].to_vec();
                if !self.drv.send(&h, &data) {
                    return progress;
                }
                let c = self.conns.get_mut(&key).unwrap();
                c.tx_off += n;
                c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
                c.fwd_cnt_sent = c.fwd_cnt;
                progress = true;
            }
            let c = &self.conns[&key];
            if c.tx_pending() == 0 {
                if let Some(flags) = c.shutdown_after_tx {
                    self.conns.get_mut(&key).unwrap().shutdown_after_tx = None;
                    self.send_ctrl(key, OP_SHUTDOWN, flags);
                    progress = true;
                }
            }
            // Like Linux: tell the device about consumed data before it runs dry.
            let c = &self.conns[&key];
            if c.fwd_cnt.wrapping_sub(c.fwd_cnt_sent) >= c.buf_alloc / 4 {
                self.send_ctrl(key, OP_CREDIT_UPDATE, 0);
                progress = true;
            }
        }
        progress
    }
}
