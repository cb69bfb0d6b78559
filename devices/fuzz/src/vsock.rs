//! The virtio-vsock packet path: tx packets from the guest, rx buffers it posts, and the
//! host side (clients of the listening socket, peers the device connects to) acting in any
//! order, against the real device with real Unix sockets.
//!
//! The driver brings the device up with EVENT_IDX as the first input byte says (bit 0) and
//! three queues of [`QUEUE_SIZE`] at fixed places (see [`layout`]). The rest of the input is
//! a stream of operations; the low four bits of each operation byte pick it (modulo the
//! number of operations), integers are little endian:
//!
//! | op | arguments                                                   | effect              |
//! |----|-------------------------------------------------------------|---------------------|
//! | 0  | ctl u8, op u8, src_port u32, dst_port u32, flags u8, buf_alloc u32, fwd_cnt u32, len u16, payload of `len % 981`; then by `ctl`: bit 1 src/dst CID u64 ×2, bit 2 header len u32, bit 3 type u16 | guest queues a tx packet (header and payload in one buffer, or two with `ctl` bit 0); bit 4 kicks tx |
//! | 1  | ctl u8, len u16                                             | guest posts `1 + ctl % 16` rx buffers of `len % 1025` bytes (split header/payload with bit 4); bit 5 kicks rx |
//! | 2  | queue u8                                                    | QueueNotify + event loop for queue `queue % 4` |
//! | 3  | len u8, bytes                                               | a host client connects to the device's socket and writes `len % 33` bytes (`CONNECT <port>\n`) |
//! | 4  | stream u8, len u16, payload of `len % 4097`                 | a host stream writes the payload |
//! | 5  | stream u8                                                   | a host stream reads what it can |
//! | 6  | stream u8, how u8                                           | a host stream is closed, or shut down for reading or writing |
//! | 7  |                                                             | the event loop handles host socket events |
//! | 8  | addr u16, len u8, bytes                                     | the guest writes its RAM |
//! | 9  |                                                             | device reset and bring-up again |
//! | 10 | reg u8, value u32                                           | 32-bit register write at `reg * 4` |
//!
//! A `payload` is `n: u8` literal bytes from the input followed by a fixed pattern up to the
//! length, so large transfers cost little input. Guest connections to host port [`PEER_PORT`] reach a
//! listener the harness accepts on; any other port has nothing behind it.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use devices::virtio::mmio::regs;
use devices::virtio::vsock::packet::{HDR_LEN, HOST_CID, TYPE_STREAM};
use devices::virtio::vsock::{Vsock, VsockEventHandler, MAX_CONNECTIONS};
use devices::virtio::{features, GuestMemoryMmap, MmioTransport, VirtioDevice};
use devices::BusDevice;
use vm_memory::{Bytes, GuestAddress};

use crate::{bring_up, guest_memory, write_reg, Input, QueueSetup, INT_ALL};

/// Guest CID the device is created with.
pub const GUEST_CID: u64 = 3;
/// Host port with a listener behind it.
pub const PEER_PORT: u32 = 1024;
/// Size of each of the three queues.
pub const QUEUE_SIZE: u16 = 16;
/// Wake-ups of the event loop for host events after one host action, at most. Each handles
/// a batch of socket events, and one action causes only a few.
const MAX_HOST_EVENT_ROUNDS: usize = 64;
/// Longest payload the harness builds (a tx slot minus the header).
pub const MAX_PAYLOAD: usize = layout::SLOT as usize - HDR_LEN;

pub const OP_TX: u8 = 0;
pub const OP_POST_RX: u8 = 1;
pub const OP_KICK: u8 = 2;
pub const OP_HOST_CONNECT: u8 = 3;
pub const OP_HOST_WRITE: u8 = 4;
pub const OP_HOST_READ: u8 = 5;
pub const OP_HOST_CLOSE: u8 = 6;
pub const OP_HOST_EVENTS: u8 = 7;
pub const OP_MEM_WRITE: u8 = 8;
pub const OP_RESET: u8 = 9;
pub const OP_REG_WRITE: u8 = 10;
const OPS: u8 = 11;

/// `ctl` bits of [`OP_TX`].
pub const TX_SPLIT: u8 = 1 << 0;
pub const TX_RAW_CIDS: u8 = 1 << 1;
pub const TX_RAW_LEN: u8 = 1 << 2;
pub const TX_RAW_TYPE: u8 = 1 << 3;
pub const TX_KICK: u8 = 1 << 4;
/// `ctl` bits of [`OP_POST_RX`].
pub const RX_SPLIT: u8 = 1 << 4;
pub const RX_KICK: u8 = 1 << 5;

/// Fixed guest-physical layout.
pub mod layout {
    /// Descriptor table, available and used ring of queue `q` (rx 0, tx 1, event 2).
    pub const fn rings(q: u64) -> (u64, u64, u64) {
        let base = 0x1000 + q * 0x400;
        (base, base + 0x100, base + 0x200)
    }
    /// Buffer slots: rx buffers, then tx packets.
    pub const RX_SLOTS: u64 = 0x2000;
    pub const TX_SLOTS: u64 = 0x6000;
    pub const SLOT: u64 = 0x400;
    /// Chains in flight per queue: each may use two descriptors.
    pub const CHAINS: u16 = super::QUEUE_SIZE / 2;
}

/// A payload of `len` bytes: `n: u8` literal bytes from the input, then a fixed pattern.
fn payload(input: &mut Input<'_>, len: usize) -> Vec<u8> {
    let n = usize::from(input.u8()).min(len);
    let mut p = input.bytes(n).to_vec();
    let have = p.len();
    p.extend((have..len).map(|i| (i * 7) as u8));
    p
}

/// The guest's half of the split rings for one queue.
struct DriverQueue {
    index: u16,
    /// Next available-ring position (free-running, like avail.idx).
    next: u16,
    /// Device-writable capacity of the chain whose head is the key, for the used-length
    /// check; `None` once the guest scribbled over its own memory.
    capacity: Option<[u32; QUEUE_SIZE as usize]>,
    /// Used entries already checked.
    seen_used: u16,
}

impl DriverQueue {
    fn new(index: u16) -> Self {
        DriverQueue {
            index,
            next: 0,
            capacity: Some([0; QUEUE_SIZE as usize]),
            seen_used: 0,
        }
    }

    fn setup(&self) -> QueueSetup {
        let (desc, driver, device) = layout::rings(self.index.into());
        QueueSetup {
            size: QUEUE_SIZE.into(),
            desc,
            driver,
            device,
        }
    }

    /// Makes a chain of `bufs` (addr, len, device-writable) available; returns its slot.
    fn push(&mut self, mem: &GuestMemoryMmap, bufs: &[(u64, u32, bool)]) -> u64 {
        let (desc, avail, _) = layout::rings(self.index.into());
        let slot = self.next % layout::CHAINS;
        let head = 2 * slot;
        let descs = crate::seeds::chain(head, bufs);
        for (i, d) in descs.iter().enumerate() {
            let at = desc + 16 * (u64::from(head) + i as u64);
            mem.write_slice(&d.encode(), GuestAddress(at)).unwrap();
        }
        let ring_at = avail + 4 + 2 * u64::from(self.next % QUEUE_SIZE);
        mem.write_obj(head, GuestAddress(ring_at)).unwrap();
        self.next = self.next.wrapping_add(1);
        mem.write_obj(self.next, GuestAddress(avail + 2)).unwrap();
        if let Some(cap) = &mut self.capacity {
            cap[usize::from(head)] = bufs.iter().filter(|b| b.2).map(|b| b.1).sum();
        }
        u64::from(slot)
    }

    /// The device never claims to have written more than a chain can hold.
    fn check_used(&mut self, mem: &GuestMemoryMmap) {
        let (_, _, used) = layout::rings(self.index.into());
        let idx: u16 = mem.read_obj(GuestAddress(used + 2)).unwrap();
        while self.seen_used != idx {
            let at = used + 4 + 8 * u64::from(self.seen_used % QUEUE_SIZE);
            let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
            if let Some(cap) = &self.capacity {
                let cap = cap.get(id as usize).copied().unwrap_or(0);
                assert!(
                    len <= cap,
                    "queue {}: used len {len} > capacity {cap}",
                    self.index
                );
            }
            self.seen_used = self.seen_used.wrapping_add(1);
        }
    }
}

thread_local! {
    /// Socket directory of this thread (tests run in parallel), created once: a mkdir and
    /// rmdir per run would cost a fifth of the run time. It stays behind, empty.
    static SOCKET_DIR: PathBuf = {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let dir = std::env::temp_dir()
            .join(format!("capsa-fuzz-vsock-{}-{tid}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("socket dir");
        dir
    };
}

struct Harness {
    mem: GuestMemoryMmap,
    t: MmioTransport,
    dev: Arc<Mutex<Vsock>>,
    handler: VsockEventHandler,
    features: u64,
    queues: [DriverQueue; 3],
    uds: PathBuf,
    peer_listener: UnixListener,
    streams: Vec<UnixStream>,
    /// Everything the host streams read, for the seed tests.
    host_received: Vec<u8>,
    peak_connections: usize,
}

/// What a run left behind, for the seed tests.
pub struct Outcome {
    pub mem: GuestMemoryMmap,
    pub host_received: Vec<u8>,
    pub peak_connections: usize,
}

impl Harness {
    fn bring_up(&mut self) {
        self.queues = [0, 1, 2].map(DriverQueue::new);
        // Rings start out empty: a reset device must not see the old indices.
        for q in 0..3 {
            let (desc, _, _) = layout::rings(q);
            self.mem
                .write_slice(&[0u8; 0x400], GuestAddress(desc))
                .unwrap();
        }
        let setups: Vec<QueueSetup> = self.queues.iter().map(DriverQueue::setup).collect();
        bring_up(&mut self.t, self.features, &setups);
    }

    fn kick(&mut self, q: u8) {
        write_reg(&mut self.t, regs::QUEUE_NOTIFY, q.into());
        self.handler.handle_queue_event(q.into());
    }

    /// What the vmm's event loop does while the device's host-events fd is readable.
    fn host_events(&mut self) {
        let fd = self.dev.lock().unwrap().host_events_fd();
        for round in 0.. {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, no timeout.
            if unsafe { libc::poll(&mut p, 1, 0) } != 1 {
                break;
            }
            // An fd that stays readable however often the device handles it would spin the
            // real event loop.
            assert!(round < MAX_HOST_EVENT_ROUNDS, "host events never settle");
            self.handler.handle_host_events();
        }
        // Connections the device made to the peer port.
        while let Ok((s, _)) = self.peer_listener.accept() {
            s.set_nonblocking(true).unwrap();
            self.streams.push(s);
        }
    }

    fn stream(&mut self, idx: u8) -> Option<&mut UnixStream> {
        let n = self.streams.len();
        (n > 0).then(|| &mut self.streams[usize::from(idx) % n])
    }

    fn tx(&mut self, input: &mut Input<'_>) {
        let ctl = input.u8();
        let op = u16::from(input.u8());
        let src_port = input.u32();
        let dst_port = input.u32();
        let flags = u32::from(input.u8());
        let buf_alloc = input.u32();
        let fwd_cnt = input.u32();
        let len = usize::from(input.u16()) % (MAX_PAYLOAD + 1);
        let data = payload(input, len);
        let (src_cid, dst_cid) = if ctl & TX_RAW_CIDS != 0 {
            (input_u64(input), input_u64(input))
        } else {
            (GUEST_CID, HOST_CID)
        };
        let hdr_len = if ctl & TX_RAW_LEN != 0 {
            input.u32()
        } else {
            len as u32
        };
        let type_ = if ctl & TX_RAW_TYPE != 0 {
            input.u16()
        } else {
            TYPE_STREAM
        };
        let mut hdr = [0u8; HDR_LEN];
        hdr[0..8].copy_from_slice(&src_cid.to_le_bytes());
        hdr[8..16].copy_from_slice(&dst_cid.to_le_bytes());
        hdr[16..20].copy_from_slice(&src_port.to_le_bytes());
        hdr[20..24].copy_from_slice(&dst_port.to_le_bytes());
        hdr[24..28].copy_from_slice(&hdr_len.to_le_bytes());
        hdr[28..30].copy_from_slice(&type_.to_le_bytes());
        hdr[30..32].copy_from_slice(&op.to_le_bytes());
        hdr[32..36].copy_from_slice(&flags.to_le_bytes());
        hdr[36..40].copy_from_slice(&buf_alloc.to_le_bytes());
        hdr[40..44].copy_from_slice(&fwd_cnt.to_le_bytes());

        let slot = self.queues[1].next % layout::CHAINS;
        let at = layout::TX_SLOTS + u64::from(slot) * layout::SLOT;
        let mut packet = hdr.to_vec();
        packet.extend_from_slice(&data);
        self.mem.write_slice(&packet, GuestAddress(at)).unwrap();
        let hdr_desc = (at, HDR_LEN as u32, false);
        let data_desc = (at + HDR_LEN as u64, len as u32, false);
        if ctl & TX_SPLIT != 0 && len > 0 {
            self.queues[1].push(&self.mem, &[hdr_desc, data_desc]);
        } else {
            self.queues[1].push(&self.mem, &[(at, packet.len() as u32, false)]);
        }
        if ctl & TX_KICK != 0 {
            self.kick(1);
        }
    }

    fn post_rx(&mut self, input: &mut Input<'_>) {
        let ctl = input.u8();
        let len = u32::from(input.u16()) % (layout::SLOT as u32 + 1);
        for _ in 0..1 + (ctl % 16) {
            let slot = self.queues[0].next % layout::CHAINS;
            let at = layout::RX_SLOTS + u64::from(slot) * layout::SLOT;
            let hdr = HDR_LEN as u32;
            if ctl & RX_SPLIT != 0 && len > hdr {
                self.queues[0].push(&self.mem, &[(at, hdr, true), (at + 64, len - hdr, true)]);
            } else {
                self.queues[0].push(&self.mem, &[(at, len, true)]);
            }
        }
        if ctl & RX_KICK != 0 {
            self.kick(0);
        }
    }

    fn host_connect(&mut self, input: &mut Input<'_>) {
        let len = usize::from(input.u8() % 33);
        let line = input.bytes(len);
        if let Ok(mut s) = UnixStream::connect(&self.uds) {
            // A full backlog or a closed device is the client's problem, not a finding.
            let _ = s.write_all(line);
            s.set_nonblocking(true).unwrap();
            self.streams.push(s);
        }
        self.host_events();
    }

    fn host_write(&mut self, input: &mut Input<'_>) {
        let idx = input.u8();
        let len = usize::from(input.u16()) % 4097;
        let data = payload(input, len);
        if let Some(s) = self.stream(idx) {
            // Non-blocking: a full socket buffer (the device applying back-pressure) or a
            // peer the device closed just ends the write.
            let _ = s.write(&data);
        }
        self.host_events();
    }

    fn host_read(&mut self, idx: u8) {
        let n = self.streams.len();
        if n > 0 {
            let s = &mut self.streams[usize::from(idx) % n];
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = s.read(&mut buf) {
                self.host_received.extend_from_slice(&buf[..n]);
            }
        }
        self.host_events();
    }

    fn host_close(&mut self, idx: u8, how: u8) {
        let n = self.streams.len();
        if n == 0 {
            return;
        }
        let i = usize::from(idx) % n;
        match how % 3 {
            0 => drop(self.streams.swap_remove(i)),
            1 => {
                let _ = self.streams[i].shutdown(Shutdown::Write);
            }
            _ => {
                let _ = self.streams[i].shutdown(Shutdown::Read);
            }
        }
        self.host_events();
    }

    fn check(&mut self) {
        assert_eq!(self.t.interrupt().status() & !INT_ALL, 0);
        let (conns, active) = {
            let d = self.dev.lock().unwrap();
            (d.connection_count(), d.is_activated())
        };
        assert!(conns <= MAX_CONNECTIONS, "{conns} connections");
        self.peak_connections = self.peak_connections.max(conns);
        if self.t.status() == 0 {
            assert!(!active, "active after reset");
            assert_eq!(conns, 0, "connections survived a reset");
        }
        for q in &mut self.queues {
            q.check_used(&self.mem);
        }
    }
}

fn input_u64(input: &mut Input<'_>) -> u64 {
    u64::from(input.u32()) | u64::from(input.u32()) << 32
}

pub fn run(data: &[u8]) -> Outcome {
    let mut input = Input::new(data);
    let flags = input.u8();
    let mut features = 1u64 << features::VERSION_1;
    if flags & 1 != 0 {
        features |= 1 << features::RING_EVENT_IDX;
    }
    // `Vsock::new` needs a path that does not exist yet.
    let dir = SOCKET_DIR.with(PathBuf::clone);
    let uds = dir.join("v.sock");
    let peer_path = dir.join(format!("v.sock_{PEER_PORT}"));
    // Left over if a previous run in this process panicked half-way (e.g. under -fork).
    let _ = std::fs::remove_file(&uds);
    let _ = std::fs::remove_file(&peer_path);
    let peer_listener = UnixListener::bind(&peer_path).expect("peer listener");
    peer_listener.set_nonblocking(true).unwrap();

    let mem = guest_memory(&[]);
    let dev = Arc::new(Mutex::new(
        Vsock::new(GUEST_CID, uds.clone()).expect("vsock device"),
    ));
    let t = MmioTransport::new(mem.clone(), dev.clone()).expect("vsock transport");
    let handler = VsockEventHandler::for_transport(dev.clone(), &t).expect("event handler");
    let mut h = Harness {
        mem,
        t,
        dev,
        handler,
        features,
        queues: [0, 1, 2].map(DriverQueue::new),
        uds,
        peer_listener,
        streams: Vec::new(),
        host_received: Vec::new(),
        peak_connections: 0,
    };
    h.bring_up();
    while !input.is_empty() {
        match input.u8() % OPS {
            OP_TX => h.tx(&mut input),
            OP_POST_RX => h.post_rx(&mut input),
            OP_KICK => {
                let q = input.u8() % 4;
                h.kick(q);
            }
            OP_HOST_CONNECT => h.host_connect(&mut input),
            OP_HOST_WRITE => h.host_write(&mut input),
            OP_HOST_READ => {
                let idx = input.u8();
                h.host_read(idx);
            }
            OP_HOST_CLOSE => {
                let (idx, how) = (input.u8(), input.u8());
                h.host_close(idx, how);
            }
            OP_HOST_EVENTS => h.host_events(),
            OP_MEM_WRITE => {
                let addr = u64::from(input.u16());
                let len = usize::from(input.u8());
                let bytes = input.bytes(len);
                let _ = h.mem.write_slice(bytes, GuestAddress(addr));
                // Descriptors may have changed behind the driver's back.
                for q in &mut h.queues {
                    q.capacity = None;
                }
            }
            OP_RESET => {
                write_reg(&mut h.t, regs::STATUS, 0);
                h.check();
                h.bring_up();
            }
            OP_REG_WRITE => {
                let offset = u64::from(input.u8()) * 4;
                let v = input.u32();
                h.t.write(offset, &v.to_le_bytes());
                // The driver's view of the rings no longer holds.
                for q in &mut h.queues {
                    q.capacity = None;
                }
            }
            _ => unreachable!(),
        }
        h.check();
    }
    write_reg(&mut h.t, regs::STATUS, 0);
    h.check();
    let outcome = Outcome {
        mem: h.mem.clone(),
        host_received: std::mem::take(&mut h.host_received),
        peak_connections: h.peak_connections,
    };
    drop(h);
    let _ = std::fs::remove_file(&peer_path);
    outcome
}
