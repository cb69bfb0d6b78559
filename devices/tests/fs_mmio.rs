//! End-to-end: a driver brings up virtio-fs through the virtio-mmio registers and talks FUSE
//! to it, with queue processing running in an event-manager loop, as the vmm wires it.

use std::sync::{Arc, Mutex};

use devices::virtio::fs::{Fs, HIPRIO_QUEUE, REQUEST_QUEUE};
use devices::virtio::mmio::{regs, CONFIG_SPACE_OFFSET};
use devices::virtio::{status, GuestMemoryMmap, MmioTransport, VirtioDevice};
use devices::BusDevice;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempdir::TempDir;

const QUEUES: [u64; 2] = [0x1000, 0x4000];
const USED: [u64; 2] = [0x8000, 0x9000];
const REQ: u64 = 0x10_0000;
const REP: u64 = 0x20_0000;

fn rd(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn wr(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn fuse_request(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&((40 + body.len()) as u32).to_le_bytes());
    v.extend_from_slice(&opcode.to_le_bytes());
    v.extend_from_slice(&unique.to_le_bytes());
    v.extend_from_slice(&nodeid.to_le_bytes());
    v.extend_from_slice(&[0; 16]); // uid, gid, pid, extlen, padding
    v.extend_from_slice(body);
    v
}

struct Driver {
    mem: GuestMemoryMmap,
    em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
    queues: Vec<MockSplitQueue<'static, GuestMemoryMmap>>,
    transport: MmioTransport,
    next_desc: [u16; 2],
    used: [u16; 2],
    unique: u64,
}

impl Driver {
    /// Sends one request on `queue`; returns the reply bytes (empty if none), after the
    /// device ran in the event loop.
    fn send(&mut self, queue: usize, opcode: u32, nodeid: u64, body: &[u8]) -> Vec<u8> {
        self.unique += 1;
        let req = fuse_request(opcode, self.unique, nodeid, body);
        self.mem.write_slice(&req, GuestAddress(REQ)).unwrap();
        let first = self.next_desc[queue];
        let descs = if queue == REQUEST_QUEUE {
            vec![
                Descriptor::new(REQ, req.len() as u32, VRING_DESC_F_NEXT as u16, first + 1),
                Descriptor::new(REP, 0x1_0000, VRING_DESC_F_WRITE as u16, 0),
            ]
        } else {
            vec![Descriptor::new(REQ, req.len() as u32, 0, 0)]
        };
        let n = descs.len() as u16;
        let raw: Vec<RawDescriptor> = descs.into_iter().map(RawDescriptor::from).collect();
        self.queues[queue].add_desc_chains(&raw, first).unwrap();
        self.next_desc[queue] += n;
        // Notify through the register, as a guest without ioeventfd would.
        wr(&mut self.transport, regs::QUEUE_NOTIFY, queue as u32);
        assert_eq!(self.em.run_with_timeout(1000).unwrap(), 1);
        let idx: u16 = self.mem.read_obj(GuestAddress(USED[queue] + 2)).unwrap();
        assert_eq!(idx, self.used[queue] + 1, "request completed");
        let at = USED[queue] + 4 + 8 * u64::from(self.used[queue]);
        self.used[queue] = idx;
        let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
        assert_eq!(id, u32::from(first));
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        let mut out = vec![0u8; len as usize];
        self.mem.read_slice(&mut out, GuestAddress(REP)).unwrap();
        if len > 0 {
            assert_eq!(u32::from_le_bytes(out[0..4].try_into().unwrap()), len);
            assert_eq!(
                u64::from_le_bytes(out[8..16].try_into().unwrap()),
                self.unique
            );
        }
        out
    }
}

fn error(reply: &[u8]) -> i32 {
    i32::from_le_bytes(reply[4..8].try_into().unwrap())
}

#[test]
fn driver_brings_up_fs_device_and_does_io() {
    let dir = TempDir::new().unwrap();
    std::fs::write(dir.as_path().join("hello"), b"hello from the host").unwrap();
    // Leaked so the mock queues can borrow it for 'static; one small test allocation.
    let mem: &'static GuestMemoryMmap = Box::leak(Box::new(
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap(),
    ));
    let fs = Arc::new(Mutex::new(
        Fs::new("capsa", dir.as_path().to_owned(), false).unwrap(),
    ));

    // vmm-side wiring.
    let mut t = MmioTransport::new(mem.clone(), fs.clone()).unwrap();
    assert_eq!(t.queue_events().len(), 2);
    let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    em.add_subscriber(Arc::new(Mutex::new(t.event_handler().unwrap())));

    // Driver: identify, negotiate, read the tag, set up both queues, go.
    assert_eq!(rd(&mut t, regs::DEVICE_ID), 26);
    wr(&mut t, regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    wr(&mut t, regs::DEVICE_FEATURES_SEL, 1);
    assert_ne!(rd(&mut t, regs::DEVICE_FEATURES) & 1, 0, "VERSION_1");
    wr(&mut t, regs::DRIVER_FEATURES_SEL, 1);
    wr(&mut t, regs::DRIVER_FEATURES, 1);
    let feat_ok = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    wr(&mut t, regs::STATUS, feat_ok);
    assert_eq!(rd(&mut t, regs::STATUS), feat_ok);
    // Config space accesses are at most 8 bytes wide.
    let mut cfg = [0u8; 40];
    for (i, word) in cfg.chunks_mut(4).enumerate() {
        t.read(CONFIG_SPACE_OFFSET + 4 * i as u64, word);
    }
    assert_eq!(&cfg[..6], b"capsa\0");
    assert_eq!(u32::from_le_bytes(cfg[36..40].try_into().unwrap()), 1);

    let mut queues = Vec::new();
    for q in [HIPRIO_QUEUE, REQUEST_QUEUE] {
        let vq = MockSplitQueue::create(mem, GuestAddress(QUEUES[q]), 16);
        wr(&mut t, regs::QUEUE_SEL, q as u32);
        assert_eq!(rd(&mut t, regs::QUEUE_NUM_MAX), 1024);
        wr(&mut t, regs::QUEUE_NUM, 16);
        wr(&mut t, regs::QUEUE_DESC_LOW, vq.desc_table_addr().0 as u32);
        wr(&mut t, regs::QUEUE_DRIVER_LOW, vq.avail_addr().0 as u32);
        wr(&mut t, regs::QUEUE_DEVICE_LOW, USED[q] as u32);
        wr(&mut t, regs::QUEUE_READY, 1);
        queues.push(vq);
    }
    wr(&mut t, regs::STATUS, feat_ok | status::DRIVER_OK);
    assert!(fs.lock().unwrap().is_activated());
    // Drain the activation kicks.
    while em.run_with_timeout(50).unwrap() > 0 {}

    let mut d = Driver {
        mem: mem.clone(),
        em,
        queues,
        transport: t,
        next_desc: [0, 0],
        used: [0, 0],
        unique: 0,
    };

    // INIT (26), as Linux 6.1 sends it.
    let mut init = Vec::new();
    for v in [7u32, 37, 0x20000, 0] {
        init.extend_from_slice(&v.to_le_bytes());
    }
    init.extend_from_slice(&[0; 48]);
    let r = d.send(REQUEST_QUEUE, 26, 0, &init);
    assert_eq!(error(&r), 0);
    assert_eq!(r.len(), 16 + 64);

    // LOOKUP (1) "hello", OPEN (14), READ (15).
    let r = d.send(REQUEST_QUEUE, 1, 1, b"hello\0");
    assert_eq!(error(&r), 0);
    let node = u64::from_le_bytes(r[16..24].try_into().unwrap());
    let r = d.send(REQUEST_QUEUE, 14, node, &[2, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(error(&r), 0);
    let fh = u64::from_le_bytes(r[16..24].try_into().unwrap());
    let mut read = Vec::new();
    read.extend_from_slice(&fh.to_le_bytes());
    read.extend_from_slice(&0u64.to_le_bytes());
    read.extend_from_slice(&4096u32.to_le_bytes());
    read.extend_from_slice(&[0; 20]);
    let r = d.send(REQUEST_QUEUE, 15, node, &read);
    assert_eq!(error(&r), 0);
    assert_eq!(&r[16..], b"hello from the host");

    // WRITE (16) at offset 6.
    let mut write = Vec::new();
    write.extend_from_slice(&fh.to_le_bytes());
    write.extend_from_slice(&6u64.to_le_bytes());
    write.extend_from_slice(&5u32.to_le_bytes());
    write.extend_from_slice(&[0; 20]);
    write.extend_from_slice(b"FROM!");
    let r = d.send(REQUEST_QUEUE, 16, node, &write);
    assert_eq!(error(&r), 0);
    assert_eq!(
        std::fs::read(dir.as_path().join("hello")).unwrap(),
        b"hello FROM!the host"
    );

    // FORGET (2) on the high-priority queue: no reply, the chain comes back empty.
    let r = d.send(HIPRIO_QUEUE, 2, node, &1u64.to_le_bytes());
    assert!(r.is_empty());
    // The node is gone: GETATTR (3) on it fails with EBADF.
    let r = d.send(REQUEST_QUEUE, 3, node, &[0; 16]);
    assert_eq!(error(&r), -libc::EBADF);

    // Device reset: the transport drops the device's state.
    wr(&mut d.transport, regs::STATUS, 0);
    assert!(!fs.lock().unwrap().is_activated());
}
