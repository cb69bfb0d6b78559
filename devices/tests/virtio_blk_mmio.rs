//! End-to-end: a driver brings up virtio-blk through the virtio-mmio registers and does I/O,
//! with queue processing running in an event-manager loop, as the vmm wires it.

use std::io::Write;
use std::sync::{Arc, Mutex};

use devices::virtio::block::{Block, BlockConfig};
use devices::virtio::mmio::{regs, CONFIG_SPACE_OFFSET, MAGIC_VALUE};
use devices::virtio::{status, GuestMemoryMmap, MmioTransport, VirtioDevice};
use devices::BusDevice;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_blk as vb;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

const QUEUE: u64 = 0x1000;
const USED: u64 = 0x8000;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;
const SECTORS: u64 = 128;

fn rd(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn wr(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn request(
    mem: &GuestMemoryMmap,
    vq: &MockSplitQueue<GuestMemoryMmap>,
    first: u16,
    req_type: u32,
    sector: u64,
    data_len: u32,
) {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&req_type.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let data_flags = if req_type == vb::VIRTIO_BLK_T_OUT {
        0
    } else {
        VRING_DESC_F_WRITE as u16
    };
    let next = VRING_DESC_F_NEXT as u16;
    let descs = [
        Descriptor::new(HDR, 16, next, first + 1),
        Descriptor::new(DATA, data_len, data_flags | next, first + 2),
        Descriptor::new(STATUS, 1, VRING_DESC_F_WRITE as u16, 0),
    ]
    .map(RawDescriptor::from);
    vq.add_desc_chains(&descs, first).unwrap();
}

fn used(mem: &GuestMemoryMmap, i: u64) -> (u16, u32, u32) {
    let idx = mem.read_obj(GuestAddress(USED + 2)).unwrap();
    let at = GuestAddress(USED + 4 + 8 * i);
    let id = mem.read_obj(at).unwrap();
    let len = mem.read_obj(GuestAddress(at.0 + 4)).unwrap();
    (idx, id, len)
}

#[test]
fn driver_brings_up_block_device_and_does_io() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap();
    let image = TempFile::new().unwrap();
    image
        .as_file()
        .write_all(&vec![0u8; (SECTORS * 512) as usize])
        .unwrap();
    let block = Arc::new(Mutex::new(
        Block::new(&BlockConfig {
            path: image.as_path().to_owned(),
            read_only: false,
            id: "e2e".into(),
        })
        .unwrap(),
    ));

    // vmm-side wiring.
    let mut t = MmioTransport::new(mem.clone(), block.clone()).unwrap();
    assert_eq!(t.queue_events().len(), 1);
    let irq = t.interrupt().clone();
    let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    em.add_subscriber(Arc::new(Mutex::new(t.event_handler().unwrap())));

    // Driver: identify, negotiate, read config, set up the queue, go.
    assert_eq!(rd(&mut t, regs::MAGIC_VALUE), MAGIC_VALUE);
    assert_eq!(rd(&mut t, regs::VERSION), 2);
    assert_eq!(rd(&mut t, regs::DEVICE_ID), 2);
    wr(&mut t, regs::STATUS, status::ACKNOWLEDGE);
    wr(&mut t, regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    let mut features = 0u64;
    for sel in 0..2 {
        wr(&mut t, regs::DEVICE_FEATURES_SEL, sel);
        features |= u64::from(rd(&mut t, regs::DEVICE_FEATURES)) << (32 * sel);
    }
    assert_ne!(features & (1 << vb::VIRTIO_BLK_F_FLUSH), 0);
    let wanted = features & ((1 << 32) | (1 << vb::VIRTIO_BLK_F_FLUSH));
    for sel in 0..2 {
        wr(&mut t, regs::DRIVER_FEATURES_SEL, sel);
        wr(&mut t, regs::DRIVER_FEATURES, (wanted >> (32 * sel)) as u32);
    }
    let feat_ok = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    wr(&mut t, regs::STATUS, feat_ok);
    assert_eq!(rd(&mut t, regs::STATUS), feat_ok);
    let mut cap = [0u8; 8];
    t.read(CONFIG_SPACE_OFFSET, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), SECTORS);

    let vq = MockSplitQueue::create(&mem, GuestAddress(QUEUE), 16);
    wr(&mut t, regs::QUEUE_SEL, 0);
    assert_eq!(rd(&mut t, regs::QUEUE_NUM_MAX), 256);
    wr(&mut t, regs::QUEUE_NUM, 16);
    wr(&mut t, regs::QUEUE_DESC_LOW, vq.desc_table_addr().0 as u32);
    wr(&mut t, regs::QUEUE_DRIVER_LOW, vq.avail_addr().0 as u32);
    wr(&mut t, regs::QUEUE_DEVICE_LOW, USED as u32);
    wr(&mut t, regs::QUEUE_READY, 1);
    wr(&mut t, regs::STATUS, feat_ok | status::DRIVER_OK);
    assert_eq!(rd(&mut t, regs::STATUS), feat_ok | status::DRIVER_OK);
    assert!(block.lock().unwrap().is_activated());
    // The activation kick finds an empty ring: no interrupt.
    assert_eq!(em.run_with_timeout(100).unwrap(), 1);
    assert!(irq.eventfd().read().is_err());

    // Write 1 KiB at sector 10 via a QueueNotify register write.
    let payload: Vec<u8> = (0..1024).map(|i| (i * 7 % 256) as u8).collect();
    mem.write_slice(&payload, GuestAddress(DATA)).unwrap();
    request(&mem, &vq, 0, vb::VIRTIO_BLK_T_OUT, 10, 1024);
    wr(&mut t, regs::QUEUE_NOTIFY, 0);
    assert_eq!(em.run_with_timeout(1000).unwrap(), 1);
    assert_eq!(used(&mem, 0), (1, 0, 1));
    assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0);
    assert_eq!(irq.eventfd().read().unwrap(), 1);
    assert_eq!(rd(&mut t, regs::INTERRUPT_STATUS), 1);
    wr(&mut t, regs::INTERRUPT_ACK, 1);
    assert_eq!(rd(&mut t, regs::INTERRUPT_STATUS), 0);
    let disk = std::fs::read(image.as_path()).unwrap();
    assert_eq!(&disk[10 * 512..12 * 512], &payload[..]);

    // Read it back, notified the way KVM's ioeventfd would.
    mem.write_slice(&[0u8; 1024], GuestAddress(DATA)).unwrap();
    request(&mem, &vq, 3, vb::VIRTIO_BLK_T_IN, 10, 1024);
    t.queue_events()[0].write(1).unwrap();
    assert_eq!(em.run_with_timeout(1000).unwrap(), 1);
    assert_eq!(used(&mem, 1), (2, 3, 1025));
    let mut back = vec![0u8; 1024];
    mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert_eq!(back, payload);
    assert_eq!(rd(&mut t, regs::INTERRUPT_STATUS), 1);

    // Reset: the device lets go of everything and ignores further kicks.
    wr(&mut t, regs::STATUS, 0);
    assert!(!block.lock().unwrap().is_activated());
    assert_eq!(
        Arc::strong_count(&irq),
        2,
        "only the transport and this test hold it"
    );
    assert_eq!(rd(&mut t, regs::INTERRUPT_STATUS), 0);
    request(&mem, &vq, 6, vb::VIRTIO_BLK_T_IN, 0, 512);
    t.queue_events()[0].write(1).unwrap();
    em.run_with_timeout(100).unwrap();
    assert_eq!(used(&mem, 2).0, 2, "nothing processed after reset");
}
