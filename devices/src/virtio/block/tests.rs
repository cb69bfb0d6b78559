use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

use super::request::{STATUS_IOERR, STATUS_OK, STATUS_UNSUPP};
use super::*;
use crate::virtio::test_utils::{chain, test_mem, D, MEM_SIZE};

const QUEUE_ADDR: u64 = 0x1000;
/// The used ring lives away from the mock's own used ring: `MockSplitQueue` places that one
/// `len` *bytes* after the start of the available ring entries, overlapping the available
/// ring's tail and `used_event`.
const USED_ADDR: u64 = 0x8000;
const MQ_SIZE: u16 = 16;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const DATA2: u64 = 0x28_0000;
const STATUS: u64 = 0x30_0000;
const DISK_SECTORS: u64 = 64;
const DISK_BYTES: usize = (DISK_SECTORS * SECTOR_SIZE) as usize;
const ID: &str = "capsa-disk-0";

const T_IN: u32 = vb::VIRTIO_BLK_T_IN;
const T_OUT: u32 = vb::VIRTIO_BLK_T_OUT;
const T_FLUSH: u32 = vb::VIRTIO_BLK_T_FLUSH;
const T_GET_ID: u32 = vb::VIRTIO_BLK_T_GET_ID;
const T_DISCARD: u32 = vb::VIRTIO_BLK_T_DISCARD;
const T_WZ: u32 = vb::VIRTIO_BLK_T_WRITE_ZEROES;
const UNMAP: u32 = vb::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ seed.wrapping_mul(37))
        .collect()
}

/// A disk image of `bytes` bytes filled with `pattern(bytes, 1)`.
fn image(bytes: usize) -> TempFile {
    let f = TempFile::new().unwrap();
    f.as_file().write_all(&pattern(bytes, 1)).unwrap();
    f
}

fn contents(f: &TempFile) -> Vec<u8> {
    std::fs::read(f.as_path()).unwrap()
}

fn config(f: &TempFile, read_only: bool) -> BlockConfig {
    BlockConfig {
        path: f.as_path().to_owned(),
        read_only,
        id: ID.into(),
    }
}

fn activate_with(
    block: &mut Block,
    mem: &GuestMemoryMmap,
    vq: &MockSplitQueue<GuestMemoryMmap>,
    acked: u64,
) -> Arc<Interrupt> {
    let mut q = queue(vq);
    q.set_event_idx(acked & (1 << features::RING_EVENT_IDX) != 0);
    let irq = Arc::new(Interrupt::new().unwrap());
    block
        .activate(mem.clone(), vec![q], irq.clone(), acked)
        .unwrap();
    irq
}

/// A ready queue using the mock's descriptor table and available ring, and [`USED_ADDR`].
fn queue(vq: &MockSplitQueue<GuestMemoryMmap>) -> Queue {
    let mut q: Queue = vq.create_queue().unwrap();
    q.set_used_ring_address(Some(USED_ADDR as u32), Some(0));
    q
}

fn activate(
    block: &mut Block,
    mem: &GuestMemoryMmap,
    vq: &MockSplitQueue<GuestMemoryMmap>,
) -> Arc<Interrupt> {
    // Everything offered except EVENT_IDX, which gets its own test.
    let acked = block.device_features() & !(1 << features::RING_EVENT_IDX);
    activate_with(block, mem, vq, acked)
}

fn header(mem: &GuestMemoryMmap, addr: u64, req_type: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&req_type.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(addr)).unwrap();
}

fn set_status(mem: &GuestMemoryMmap, v: u8) {
    mem.write_obj(v, GuestAddress(STATUS)).unwrap();
}

fn status(mem: &GuestMemoryMmap) -> u8 {
    mem.read_obj(GuestAddress(STATUS)).unwrap()
}

fn read_mem(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

fn used_idx(mem: &GuestMemoryMmap) -> u16 {
    mem.read_obj(GuestAddress(USED_ADDR + 2)).unwrap()
}

/// (descriptor id, len) of used ring entry `i`.
fn used(mem: &GuestMemoryMmap, i: u64) -> (u32, u32) {
    let at = USED_ADDR + 4 + 8 * i;
    (
        mem.read_obj(GuestAddress(at)).unwrap(),
        mem.read_obj(GuestAddress(at + 4)).unwrap(),
    )
}

/// Posts one chain at descriptor table index `first`.
fn post(vq: &MockSplitQueue<GuestMemoryMmap>, first: u16, descs: &[D]) {
    vq.add_desc_chains(&chain(first, descs), first).unwrap();
}

struct Env {
    mem: GuestMemoryMmap,
    file: TempFile,
    block: Block,
}

fn env(read_only: bool) -> Env {
    let file = image(DISK_BYTES);
    let block = Block::new(&config(&file, read_only)).unwrap();
    Env {
        mem: test_mem(),
        file,
        block,
    }
}

/// Runs a single request `header + descs...` and returns (status byte, used len).
fn run_one(e: &mut Env, req_type: u32, sector: u64, data: &[D]) -> (u8, u32) {
    let vq = MockSplitQueue::create(&e.mem, GuestAddress(QUEUE_ADDR), MQ_SIZE);
    let irq = activate(&mut e.block, &e.mem, &vq);
    header(&e.mem, HDR, req_type, sector);
    set_status(&e.mem, 0xff);
    let mut descs = vec![D(HDR, 16, false)];
    descs.extend_from_slice(data);
    descs.push(D(STATUS, 1, true));
    post(&vq, 0, &descs);
    e.block.process_queue(0);
    assert_eq!(used_idx(&e.mem), 1, "request completed");
    assert_eq!(irq.eventfd().read().unwrap(), 1, "one interrupt");
    assert_eq!(irq.status(), 1);
    let (id, len) = used(&e.mem, 0);
    assert_eq!(id, 0);
    e.block.reset();
    (status(&e.mem), len)
}

#[test]
fn features_and_config_space() {
    let e = env(false);
    let f = e.block.device_features();
    for bit in [
        features::VERSION_1,
        vb::VIRTIO_BLK_F_FLUSH,
        vb::VIRTIO_BLK_F_SEG_MAX,
        vb::VIRTIO_BLK_F_BLK_SIZE,
        vb::VIRTIO_BLK_F_DISCARD,
        vb::VIRTIO_BLK_F_WRITE_ZEROES,
    ] {
        assert_ne!(f & (1 << bit), 0, "bit {bit}");
    }
    assert_eq!(f & (1 << vb::VIRTIO_BLK_F_RO), 0);
    assert_eq!(e.block.device_type(), 2);
    assert_eq!(e.block.queue_max_sizes(), &[QUEUE_SIZE]);

    let rd = |off: u64, len: usize| {
        let mut b = vec![0xaa; len];
        e.block.read_config(off, &mut b);
        b
    };
    let u32_at = |off: usize| u32::from_le_bytes(rd(off as u64, 4).try_into().unwrap());
    assert_eq!(rd(0, 8), DISK_SECTORS.to_le_bytes());
    // Narrow reads of a wide field.
    assert_eq!(rd(0, 1), [DISK_SECTORS as u8]);
    type C = vb::virtio_blk_config;
    assert_eq!(u32_at(offset_of!(C, seg_max)), u32::from(QUEUE_SIZE) - 2);
    assert_eq!(u32_at(offset_of!(C, blk_size)), 512);
    assert_eq!(u32_at(offset_of!(C, max_discard_sectors)), 1 << 21);
    assert_eq!(u32_at(offset_of!(C, max_discard_seg)), 16);
    assert_eq!(u32_at(offset_of!(C, max_write_zeroes_sectors)), 1 << 21);
    assert_eq!(u32_at(offset_of!(C, max_write_zeroes_seg)), 16);
    assert_eq!(rd(offset_of!(C, write_zeroes_may_unmap) as u64, 1), [1]);
    // Past the end: zeros, no panic.
    let len = size_of::<C>() as u64;
    assert_eq!(rd(len - 2, 4), [0, 0, 0, 0]);
    assert_eq!(rd(u64::MAX, 8), [0; 8]);
    // Writes are ignored.
    let mut b = e.block;
    b.write_config(0, &[0xff; 8]);
    let mut cap = [0u8; 8];
    b.read_config(0, &mut cap);
    assert_eq!(cap, DISK_SECTORS.to_le_bytes());
}

#[test]
fn read_only_features() {
    let e = env(true);
    let f = e.block.device_features();
    assert_ne!(f & (1 << vb::VIRTIO_BLK_F_RO), 0);
    assert_eq!(f & (1 << vb::VIRTIO_BLK_F_DISCARD), 0);
    assert_eq!(f & (1 << vb::VIRTIO_BLK_F_WRITE_ZEROES), 0);
}

#[test]
fn capacity_rounds_down_partial_sectors() {
    let file = image(10 * 512 + 100);
    let b = Block::new(&config(&file, false)).unwrap();
    assert_eq!(b.capacity(), 10);
    let empty = image(0);
    assert_eq!(Block::new(&config(&empty, true)).unwrap().capacity(), 0);
}

#[test]
fn new_errors() {
    let file = image(512);
    let mut cfg = config(&file, false);
    cfg.id = "x".repeat(21);
    assert!(matches!(Block::new(&cfg), Err(BlockError::IdTooLong(21))));
    cfg.id = "y".repeat(20);
    assert!(Block::new(&cfg).is_ok(), "20 bytes is fine");

    cfg.path = "/nonexistent/capsa-disk".into();
    assert!(matches!(Block::new(&cfg), Err(BlockError::Open { .. })));
    // A directory cannot even be opened for writing; read-only it opens but is no disk.
    cfg.path = std::env::temp_dir();
    assert!(matches!(Block::new(&cfg), Err(BlockError::Open { .. })));
    cfg.read_only = true;
    assert!(matches!(Block::new(&cfg), Err(BlockError::NotADisk(_))));
    cfg.path = "/dev/null".into();
    assert!(matches!(Block::new(&cfg), Err(BlockError::NotADisk(_))));
}

#[test]
fn write_then_read_round_trip() {
    let mut e = env(false);
    let data = pattern(1024, 7);
    e.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    let (st, len) = run_one(&mut e, T_OUT, 4, &[D(DATA, 1024, false)]);
    assert_eq!((st, len), (STATUS_OK, 1));
    let disk = contents(&e.file);
    assert_eq!(&disk[4 * 512..6 * 512], &data[..]);
    // Everything else untouched.
    let orig = pattern(DISK_BYTES, 1);
    assert_eq!(&disk[..4 * 512], &orig[..4 * 512]);
    assert_eq!(&disk[6 * 512..], &orig[6 * 512..]);

    // Read it back into a different buffer.
    let (st, len) = run_one(&mut e, T_IN, 4, &[D(DATA2, 1024, true)]);
    assert_eq!((st, len), (STATUS_OK, 1025));
    assert_eq!(read_mem(&e.mem, DATA2, 1024), data);

    // And a region that was not written comes from the original image.
    let (st, _) = run_one(&mut e, T_IN, 0, &[D(DATA2, 512, true)]);
    assert_eq!(st, STATUS_OK);
    assert_eq!(read_mem(&e.mem, DATA2, 512), &orig[..512]);
}

#[test]
fn read_last_sector() {
    let mut e = env(false);
    let (st, len) = run_one(&mut e, T_IN, DISK_SECTORS - 1, &[D(DATA, 512, true)]);
    assert_eq!((st, len), (STATUS_OK, 513));
    assert_eq!(
        read_mem(&e.mem, DATA, 512),
        &pattern(DISK_BYTES, 1)[DISK_BYTES - 512..]
    );
}

#[test]
fn scattered_buffers_and_merged_framing() {
    let mut e = env(false);
    let vq = MockSplitQueue::create(&e.mem, GuestAddress(QUEUE_ADDR), MQ_SIZE);
    let _irq = activate(&mut e.block, &e.mem, &vq);
    // Write: header split over two descriptors, data over three of odd sizes.
    header(&e.mem, HDR, T_OUT, 2);
    let data = pattern(1536, 3);
    e.mem.write_slice(&data[..100], GuestAddress(DATA)).unwrap();
    e.mem
        .write_slice(&data[100..1000], GuestAddress(DATA2))
        .unwrap();
    e.mem
        .write_slice(&data[1000..], GuestAddress(DATA + 0x1000))
        .unwrap();
    post(
        &vq,
        0,
        &[
            D(HDR, 5, false),
            D(HDR + 5, 11, false),
            D(DATA, 100, false),
            D(DATA2, 900, false),
            D(DATA + 0x1000, 536, false),
            D(STATUS, 1, true),
        ],
    );
    // Read: header and data merged in one readable descriptor is not possible for IN, but
    // data and status share the last writable descriptor.
    header(&e.mem, HDR + 0x100, T_IN, 2);
    post(
        &vq,
        6,
        &[
            D(HDR + 0x100, 16, false),
            D(DATA + 0x4000, 1000, true),
            D(DATA + 0x5000, 537, true),
        ],
    );
    e.block.process_queue(0);
    assert_eq!(used_idx(&e.mem), 2);
    assert_eq!(used(&e.mem, 0), (0, 1));
    assert_eq!(status(&e.mem), STATUS_OK);
    assert_eq!(&contents(&e.file)[1024..1024 + 1536], &data[..]);
    assert_eq!(used(&e.mem, 1), (6, 1537));
    let mut back = read_mem(&e.mem, DATA + 0x4000, 1000);
    back.extend(read_mem(&e.mem, DATA + 0x5000, 536));
    assert_eq!(back, data);
    // The status byte is the last byte of the last descriptor.
    assert_eq!(read_mem(&e.mem, DATA + 0x5000 + 536, 1), [STATUS_OK]);
}

#[test]
fn batch_signals_interrupt_once() {
    let mut e = env(false);
    let vq = MockSplitQueue::create(&e.mem, GuestAddress(QUEUE_ADDR), MQ_SIZE);
    let irq = activate(&mut e.block, &e.mem, &vq);
    for i in 0..4u16 {
        let h = HDR + u64::from(i) * 0x100;
        header(&e.mem, h, T_IN, u64::from(i));
        post(
            &vq,
            i * 3,
            &[
                D(h, 16, false),
                D(DATA + u64::from(i) * 0x1000, 512, true),
                D(STATUS + u64::from(i), 1, true),
            ],
        );
    }
    e.block.process_queue(0);
    assert_eq!(used_idx(&e.mem), 4);
    for i in 0..4u64 {
        assert_eq!(used(&e.mem, i), (i as u32 * 3, 513));
    }
    assert_eq!(irq.eventfd().read().unwrap(), 1);
    // Nothing new: no interrupt.
    e.block.process_queue(0);
    assert!(irq.eventfd().read().is_err());
}

#[test]
fn flush() {
    let mut e = env(false);
    assert_eq!(run_one(&mut e, T_FLUSH, 0, &[]), (STATUS_OK, 1));
    // Flush carrying data is malformed.
    assert_eq!(
        run_one(&mut e, T_FLUSH, 0, &[D(DATA, 512, true)]),
        (STATUS_IOERR, 1)
    );
    // Read-only disks can be flushed too.
    let mut ro = env(true);
    assert_eq!(run_one(&mut ro, T_FLUSH, 0, &[]), (STATUS_OK, 1));
}

#[test]
fn get_id() {
    let mut e = env(false);
    mem_fill(&e.mem, DATA, 32, 0xee);
    let (st, len) = run_one(&mut e, T_GET_ID, 0, &[D(DATA, 20, true)]);
    assert_eq!((st, len), (STATUS_OK, 21));
    let mut want = ID.as_bytes().to_vec();
    want.resize(20, 0);
    assert_eq!(read_mem(&e.mem, DATA, 20), want);
    // A larger buffer gets 20 bytes; the rest is untouched.
    mem_fill(&e.mem, DATA, 32, 0xee);
    let (st, len) = run_one(&mut e, T_GET_ID, 0, &[D(DATA, 32, true)]);
    assert_eq!((st, len), (STATUS_OK, 21));
    assert_eq!(read_mem(&e.mem, DATA + 20, 12), [0xee; 12]);
    // A smaller one gets a truncated id.
    mem_fill(&e.mem, DATA, 32, 0xee);
    let (st, len) = run_one(&mut e, T_GET_ID, 0, &[D(DATA, 5, true)]);
    assert_eq!((st, len), (STATUS_OK, 6));
    assert_eq!(read_mem(&e.mem, DATA, 6), b"capsa\xee");
    // No buffer at all is malformed.
    assert_eq!(run_one(&mut e, T_GET_ID, 0, &[]), (STATUS_IOERR, 1));
}

fn mem_fill(mem: &GuestMemoryMmap, addr: u64, len: usize, v: u8) {
    mem.write_slice(&vec![v; len], GuestAddress(addr)).unwrap();
}

/// Writes discard/write-zeroes segments at DATA and returns the descriptor for them.
fn segments(mem: &GuestMemoryMmap, segs: &[(u64, u32, u32)]) -> D {
    let mut raw = Vec::new();
    for &(sector, num, flags) in segs {
        raw.extend_from_slice(&sector.to_le_bytes());
        raw.extend_from_slice(&num.to_le_bytes());
        raw.extend_from_slice(&flags.to_le_bytes());
    }
    mem.write_slice(&raw, GuestAddress(DATA)).unwrap();
    D(DATA, raw.len() as u32, false)
}

fn assert_zeroed_only(file: &TempFile, ranges: &[(u64, u64)]) {
    let disk = contents(file);
    assert_eq!(disk.len(), DISK_BYTES, "size unchanged");
    let orig = pattern(DISK_BYTES, 1);
    for (i, (&got, &was)) in disk.iter().zip(&orig).enumerate() {
        let sector = i as u64 / 512;
        let zeroed = ranges.iter().any(|&(s, n)| sector >= s && sector < s + n);
        let want = if zeroed { 0 } else { was };
        assert_eq!(got, want, "byte {i} (sector {sector})");
    }
}

#[test]
fn discard_zeroes_the_range() {
    let mut e = env(false);
    let d = segments(&e.mem, &[(8, 8, 0), (20, 1, 0)]);
    assert_eq!(run_one(&mut e, T_DISCARD, 0, &[d]), (STATUS_OK, 1));
    assert_zeroed_only(&e.file, &[(8, 8), (20, 1)]);
}

#[test]
fn write_zeroes_with_and_without_unmap() {
    let mut e = env(false);
    let d = segments(&e.mem, &[(1, 3, 0)]);
    assert_eq!(run_one(&mut e, T_WZ, 0, &[d]), (STATUS_OK, 1));
    assert_zeroed_only(&e.file, &[(1, 3)]);
    let d = segments(&e.mem, &[(40, 24, UNMAP)]);
    assert_eq!(run_one(&mut e, T_WZ, 0, &[d]), (STATUS_OK, 1));
    assert_zeroed_only(&e.file, &[(1, 3), (40, 24)]);
}

#[test]
fn discard_and_write_zeroes_refusals() {
    let mut e = env(false);
    let orig = contents(&e.file);
    // Unmap flag on discard, unknown flags: UNSUPP.
    let d = segments(&e.mem, &[(0, 1, UNMAP)]);
    assert_eq!(run_one(&mut e, T_DISCARD, 0, &[d]), (STATUS_UNSUPP, 1));
    let d = segments(&e.mem, &[(0, 1, 0x4)]);
    assert_eq!(run_one(&mut e, T_WZ, 0, &[d]), (STATUS_UNSUPP, 1));
    // Segment past the end of the disk: IOERR, and the valid first segment was not applied.
    let d = segments(&e.mem, &[(0, 1, 0), (DISK_SECTORS - 1, 2, 0)]);
    assert_eq!(run_one(&mut e, T_DISCARD, 0, &[d]), (STATUS_IOERR, 1));
    let d = segments(&e.mem, &[(u64::MAX, 1, 0)]);
    assert_eq!(run_one(&mut e, T_WZ, 0, &[d]), (STATUS_IOERR, 1));
    // Too many segments, partial segment, none at all.
    let many: Vec<_> = (0..17).map(|i| (i, 1, 0)).collect();
    let d = segments(&e.mem, &many);
    assert_eq!(run_one(&mut e, T_DISCARD, 0, &[d]), (STATUS_IOERR, 1));
    assert_eq!(
        run_one(&mut e, T_DISCARD, 0, &[D(DATA, 15, false)]),
        (STATUS_IOERR, 1)
    );
    assert_eq!(run_one(&mut e, T_WZ, 0, &[]), (STATUS_IOERR, 1));
    // Segment larger than the advertised limit.
    let d = segments(&e.mem, &[(0, (1 << 21) + 1, 0)]);
    assert_eq!(run_one(&mut e, T_WZ, 0, &[d]), (STATUS_IOERR, 1));
    assert_eq!(contents(&e.file), orig);
}

#[test]
fn discard_not_negotiated_is_unsupported() {
    let mut e = env(false);
    let vq = MockSplitQueue::create(&e.mem, GuestAddress(QUEUE_ADDR), MQ_SIZE);
    let acked = e.block.device_features()
        & !(1 << vb::VIRTIO_BLK_F_DISCARD)
        & !(1 << vb::VIRTIO_BLK_F_WRITE_ZEROES);
    let _irq = activate_with(&mut e.block, &e.mem, &vq, acked);
    let d = segments(&e.mem, &[(0, 1, 0)]);
    header(&e.mem, HDR, T_DISCARD, 0);
    post(&vq, 0, &[D(HDR, 16, false), d, D(STATUS, 1, true)]);
    e.block.process_queue(0);
    assert_eq!(status(&e.mem), STATUS_UNSUPP);
    assert_eq!(contents(&e.file), pattern(DISK_BYTES, 1));
}

#[test]
fn read_only_refuses_writes_and_leaves_file_identical() {
    let mut e = env(true);
    let orig = contents(&e.file);
    mem_fill(&e.mem, DATA, 4096, 0x55);
    assert_eq!(
        run_one(&mut e, T_OUT, 0, &[D(DATA, 4096, false)]),
        (STATUS_IOERR, 1)
    );
    let d = segments(&e.mem, &[(0, 8, 0)]);
    assert_eq!(run_one(&mut e, T_DISCARD, 0, &[d]), (STATUS_IOERR, 1));
    let d = segments(&e.mem, &[(0, 8, UNMAP)]);
    assert_eq!(run_one(&mut e, T_WZ, 0, &[d]), (STATUS_IOERR, 1));
    let d = segments(&e.mem, &[(0, 8, 0)]);
    assert_eq!(run_one(&mut e, T_WZ, 0, &[d]), (STATUS_IOERR, 1));
    assert_eq!(contents(&e.file), orig);
    // Reads still work.
    assert_eq!(
        run_one(&mut e, T_IN, 1, &[D(DATA, 512, true)]),
        (STATUS_OK, 513)
    );
    assert_eq!(read_mem(&e.mem, DATA, 512), &orig[512..1024]);
}

#[test]
fn requests_crossing_end_of_disk_fail() {
    let mut e = env(false);
    let orig = contents(&e.file);
    mem_fill(&e.mem, DATA, 2048, 0x77);
    for sector in [DISK_SECTORS - 1, DISK_SECTORS, DISK_SECTORS + 100, u64::MAX] {
        assert_eq!(
            run_one(&mut e, T_OUT, sector, &[D(DATA, 1024, false)]),
            (STATUS_IOERR, 1),
            "write at {sector}"
        );
        assert_eq!(
            run_one(&mut e, T_IN, sector, &[D(DATA, 1024, true)]),
            (STATUS_IOERR, 1),
            "read at {sector}"
        );
    }
    assert_eq!(contents(&e.file), orig);
    assert_eq!(read_mem(&e.mem, DATA, 2048), vec![0x77; 2048]);
}

#[test]
fn bad_data_lengths_fail() {
    let mut e = env(false);
    let orig = contents(&e.file);
    assert_eq!(
        run_one(&mut e, T_OUT, 0, &[D(DATA, 511, false)]),
        (STATUS_IOERR, 1)
    );
    assert_eq!(
        run_one(&mut e, T_IN, 0, &[D(DATA, 513, true)]),
        (STATUS_IOERR, 1)
    );
    // Zero-length reads and writes.
    assert_eq!(run_one(&mut e, T_OUT, 0, &[]), (STATUS_IOERR, 1));
    assert_eq!(run_one(&mut e, T_IN, 0, &[]), (STATUS_IOERR, 1));
    assert_eq!(contents(&e.file), orig);
}

#[test]
fn wrong_data_direction_fails() {
    let mut e = env(false);
    let orig = contents(&e.file);
    mem_fill(&e.mem, DATA, 512, 0x33);
    // IN whose data buffer is device-readable.
    assert_eq!(
        run_one(&mut e, T_IN, 0, &[D(DATA, 512, false)]),
        (STATUS_IOERR, 1)
    );
    assert_eq!(read_mem(&e.mem, DATA, 512), vec![0x33; 512]);
    // OUT whose data buffer is device-writable.
    assert_eq!(
        run_one(&mut e, T_OUT, 0, &[D(DATA, 512, true)]),
        (STATUS_IOERR, 1)
    );
    // Readable data after the (writable) status byte: otherwise a well-formed write.
    let vq = MockSplitQueue::create(&e.mem, GuestAddress(QUEUE_ADDR), MQ_SIZE);
    let _irq = activate(&mut e.block, &e.mem, &vq);
    header(&e.mem, HDR, T_OUT, 0);
    set_status(&e.mem, 0xff);
    post(
        &vq,
        0,
        &[D(HDR, 16, false), D(STATUS, 1, true), D(DATA, 512, false)],
    );
    e.block.process_queue(0);
    assert_eq!(used(&e.mem, 0), (0, 1));
    assert_eq!(status(&e.mem), STATUS_IOERR);
    e.block.reset();
    // Readable buffer after a writable one, with the status at the end.
    assert_eq!(
        run_one(
            &mut e,
            T_OUT,
            0,
            &[D(DATA2, 512, true), D(DATA, 512, false)]
        ),
        (STATUS_IOERR, 1)
    );
    assert_eq!(contents(&e.file), orig);
}

#[test]
fn unknown_request_type_is_unsupported() {
    let mut e = env(false);
    for t in [2u32, 3, 14, 0x8000_0000, u32::MAX] {
        assert_eq!(run_one(&mut e, t, 0, &[]), (STATUS_UNSUPP, 1), "type {t}");
    }
}

#[test]
fn malformed_chains() {
    let mut e = env(false);
    let vq = MockSplitQueue::create(&e.mem, GuestAddress(QUEUE_ADDR), MQ_SIZE);
    let _irq = activate(&mut e.block, &e.mem, &vq);
    let orig = contents(&e.file);
    header(&e.mem, HDR, T_OUT, 0);
    mem_fill(&e.mem, STATUS, 16, 0xff);
    // 0: header shorter than 16 bytes.
    post(&vq, 0, &[D(HDR, 8, false), D(STATUS, 1, true)]);
    // 2: no writable descriptor at all (status not writable).
    post(
        &vq,
        2,
        &[
            D(HDR, 16, false),
            D(DATA, 512, false),
            D(STATUS + 1, 1, false),
        ],
    );
    // 5: a lone header.
    post(&vq, 5, &[D(HDR, 16, false)]);
    // 6: only a status byte, no header.
    post(&vq, 6, &[D(STATUS + 2, 1, true)]);
    // 7: zero-length descriptors only.
    post(&vq, 7, &[D(HDR, 0, false), D(STATUS + 3, 0, true)]);
    e.block.process_queue(0);
    assert_eq!(used_idx(&e.mem), 5);
    assert_eq!(used(&e.mem, 0), (0, 1));
    assert_eq!(read_mem(&e.mem, STATUS, 1), [STATUS_IOERR]);
    assert_eq!(used(&e.mem, 1), (2, 0));
    assert_eq!(
        read_mem(&e.mem, STATUS + 1, 1),
        [0xff],
        "readable status untouched"
    );
    assert_eq!(used(&e.mem, 2), (5, 0));
    assert_eq!(used(&e.mem, 3), (6, 1));
    assert_eq!(read_mem(&e.mem, STATUS + 2, 1), [STATUS_IOERR]);
    assert_eq!(used(&e.mem, 4), (7, 0));
    assert_eq!(contents(&e.file), orig);
}

#[test]
fn descriptors_outside_guest_memory() {
    let mut e = env(false);
    let orig = contents(&e.file);
    let end = MEM_SIZE;
    // Data buffer entirely outside memory, straddling the end, or wrapping the address space.
    for (addr, len) in [(end, 512u32), (end - 256, 512), (u64::MAX - 255, 512)] {
        assert_eq!(
            run_one(&mut e, T_IN, 0, &[D(addr, len, true)]),
            (STATUS_IOERR, 1),
            "IN to {addr:#x}"
        );
        assert_eq!(
            run_one(&mut e, T_OUT, 0, &[D(addr, len, false)]),
            (STATUS_IOERR, 1),
            "OUT from {addr:#x}"
        );
    }
    // A valid buffer followed by a bad one: nothing is transferred at all.
    mem_fill(&e.mem, DATA, 512, 0x99);
    assert_eq!(
        run_one(&mut e, T_OUT, 0, &[D(DATA, 512, false), D(end, 512, false)]),
        (STATUS_IOERR, 1)
    );
    assert_eq!(
        run_one(&mut e, T_IN, 0, &[D(DATA, 512, true), D(end, 512, true)]),
        (STATUS_IOERR, 1)
    );
    assert_eq!(read_mem(&e.mem, DATA, 512), vec![0x99; 512]);
    assert_eq!(contents(&e.file), orig);

    // Header outside memory.
    let vq = MockSplitQueue::create(&e.mem, GuestAddress(QUEUE_ADDR), MQ_SIZE);
    let _irq = activate(&mut e.block, &e.mem, &vq);
    set_status(&e.mem, 0xff);
    post(&vq, 0, &[D(end + 0x1000, 16, false), D(STATUS, 1, true)]);
    // Status byte outside memory: returned with length 0.
    header(&e.mem, HDR, T_IN, 0);
    post(
        &vq,
        2,
        &[D(HDR, 16, false), D(DATA, 512, true), D(end, 1, true)],
    );
    e.block.process_queue(0);
    assert_eq!(used_idx(&e.mem), 2);
    assert_eq!(used(&e.mem, 0), (0, 1));
    assert_eq!(status(&e.mem), STATUS_IOERR);
    assert_eq!(used(&e.mem, 1), (2, 0));
    assert_eq!(contents(&e.file), orig);
}

#[test]
fn descriptor_loop_and_bad_head_do_not_hang() {
    use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};

    let mut e = env(false);
    let vq = MockSplitQueue::create(&e.mem, GuestAddress(QUEUE_ADDR), MQ_SIZE);
    let _irq = activate(&mut e.block, &e.mem, &vq);
    // Descriptor 0 points at itself forever.
    let looped = RawDescriptor::from(SplitDescriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, 0));
    vq.add_desc_chains(&[looped], 0).unwrap();
    // Avail entry with a head index outside the ring.
    let avail = vq.avail_addr().0;
    e.mem
        .write_obj(200u16, GuestAddress(avail + 4 + 2))
        .unwrap();
    e.mem.write_obj(2u16, GuestAddress(avail + 2)).unwrap();
    e.block.process_queue(0);
    // The looping chain has no status byte: returned with len 0; the bogus head cannot be
    // returned at all.
    assert_eq!(used_idx(&e.mem), 1);
    assert_eq!(used(&e.mem, 0), (0, 0));
    // The queue keeps working afterwards.
    header(&e.mem, HDR, T_IN, 0);
    post(
        &vq,
        1,
        &[D(HDR, 16, false), D(DATA, 512, true), D(STATUS, 1, true)],
    );
    e.block.process_queue(0);
    assert_eq!(used_idx(&e.mem), 2);
    assert_eq!(used(&e.mem, 1), (1, 513));
    assert!(!e.block.needs_reset());
}

#[test]
fn corrupt_avail_index_needs_reset() {
    let mut e = env(false);
    let vq = MockSplitQueue::create(&e.mem, GuestAddress(QUEUE_ADDR), MQ_SIZE);
    let irq = activate(&mut e.block, &e.mem, &vq);
    // avail.idx claims more chains than the ring holds.
    e.mem
        .write_obj(MQ_SIZE + 1, GuestAddress(vq.avail_addr().0 + 2))
        .unwrap();
    e.block.process_queue(0);
    assert!(e.block.needs_reset());
    assert_eq!(used_idx(&e.mem), 0);
    assert_eq!(irq.status(), 2, "config interrupt");
    assert_eq!(irq.eventfd().read().unwrap(), 1);
    // Further notifications are ignored until reset.
    e.block.process_queue(0);
    assert!(irq.eventfd().read().is_err());
    e.block.reset();
    assert!(!e.block.needs_reset());
}

#[test]
fn event_idx_suppresses_interrupts() {
    let mut e = env(false);
    let vq = MockSplitQueue::create(&e.mem, GuestAddress(QUEUE_ADDR), MQ_SIZE);
    let all = e.block.device_features();
    let irq = activate_with(&mut e.block, &e.mem, &vq, all);
    let used_event_addr = GuestAddress(vq.avail_addr().0 + 4 + 2 * u64::from(MQ_SIZE));
    let post_read = |first: u16| {
        header(&e.mem, HDR, T_IN, 0);
        post(
            &vq,
            first,
            &[D(HDR, 16, false), D(DATA, 512, true), D(STATUS, 1, true)],
        );
    };
    // Driver wants an interrupt only after used index passes 5.
    e.mem.write_obj(5u16, used_event_addr).unwrap();
    post_read(0);
    e.block.process_queue(0);
    assert_eq!(used_idx(&e.mem), 1);
    assert!(irq.eventfd().read().is_err(), "suppressed by used_event");
    // Driver asks for an interrupt at the next used entry (used_event = current idx).
    e.mem.write_obj(1u16, used_event_addr).unwrap();
    post_read(3);
    e.block.process_queue(0);
    assert_eq!(used_idx(&e.mem), 2);
    assert_eq!(irq.eventfd().read().unwrap(), 1);
    // The device published avail_event so the driver knows when to kick.
    let avail_event: u16 = e
        .mem
        .read_obj(GuestAddress(USED_ADDR + 4 + 8 * u64::from(MQ_SIZE)))
        .unwrap();
    assert_eq!(avail_event, 2);
}

#[test]
fn without_flush_feature_writes_are_synchronous() {
    // Cannot observe fdatasync directly; check the request still succeeds and lands.
    let mut e = env(false);
    let vq = MockSplitQueue::create(&e.mem, GuestAddress(QUEUE_ADDR), MQ_SIZE);
    let acked = e.block.device_features() & !(1 << vb::VIRTIO_BLK_F_FLUSH);
    let _irq = activate_with(&mut e.block, &e.mem, &vq, acked);
    let data = pattern(512, 9);
    e.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    header(&e.mem, HDR, T_OUT, 3);
    post(
        &vq,
        0,
        &[D(HDR, 16, false), D(DATA, 512, false), D(STATUS, 1, true)],
    );
    e.block.process_queue(0);
    assert_eq!(status(&e.mem), STATUS_OK);
    let mut buf = vec![0; 512];
    e.file.as_file().read_exact_at(&mut buf, 3 * 512).unwrap();
    assert_eq!(buf, data);
}

#[test]
fn activation_and_reset() {
    let mut e = env(false);
    let vq = MockSplitQueue::create(&e.mem, GuestAddress(QUEUE_ADDR), MQ_SIZE);
    let irq = Arc::new(Interrupt::new().unwrap());
    // Wrong queue count, unready queue.
    let err = e
        .block
        .activate(e.mem.clone(), vec![], irq.clone(), 0)
        .unwrap_err();
    assert!(matches!(
        err,
        ActivateError::QueueCount {
            expected: 1,
            got: 0
        }
    ));
    let unready = Queue::new(16).unwrap();
    let err = e
        .block
        .activate(e.mem.clone(), vec![unready], irq.clone(), 0)
        .unwrap_err();
    assert!(matches!(err, ActivateError::QueueNotReady(0)));
    assert!(!e.block.is_activated());
    assert_eq!(
        Arc::strong_count(&irq),
        1,
        "failed activation keeps nothing"
    );

    let q = queue(&vq);
    e.block
        .activate(e.mem.clone(), vec![q], irq.clone(), 0)
        .unwrap();
    assert!(e.block.is_activated());
    assert_eq!(Arc::strong_count(&irq), 2);
    let q2 = queue(&vq);
    assert!(matches!(
        e.block.activate(e.mem.clone(), vec![q2], irq.clone(), 0),
        Err(ActivateError::AlreadyActive)
    ));

    e.block.reset();
    assert!(!e.block.is_activated());
    assert_eq!(Arc::strong_count(&irq), 1, "reset released the interrupt");
    // Work posted after reset is not touched.
    header(&e.mem, HDR, T_IN, 0);
    post(
        &vq,
        0,
        &[D(HDR, 16, false), D(DATA, 512, true), D(STATUS, 1, true)],
    );
    e.block.process_queue(0);
    assert_eq!(used_idx(&e.mem), 0);
    // Second reset is a no-op.
    e.block.reset();
    // Notifications for other queues are ignored.
    e.block.process_queue(1);
}

/// A driver that polls the used ring and publishes its next request at once can do so
/// between the device's last (empty) pop and its re-enabling of notifications, right after
/// a notification the device had already served (so the pass popped nothing). That is a
/// normal race, not a corrupt ring: the device must serve the request, not ask for a reset.
#[test]
fn request_published_during_an_empty_pass_is_served() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    const REQUESTS: u16 = 5_000;
    let mut e = env(false);
    let vq = MockSplitQueue::create(&e.mem, GuestAddress(QUEUE_ADDR), MQ_SIZE);
    let _irq = activate(&mut e.block, &e.mem, &vq);
    header(&e.mem, HDR, T_GET_ID, 0);
    // Five GET_ID chains at table indices 0, 3, ..., 12, posted once; republished below by
    // writing their heads into the available ring.
    let heads: Vec<u16> = (0..5).map(|k| k * 3).collect();
    for &h in &heads {
        post(
            &vq,
            h,
            &[D(HDR, 16, false), D(DATA, 20, true), D(STATUS, 1, true)],
        );
    }
    let avail = vq.avail_addr().0;
    // Start from an empty ring: the posts above advanced avail.idx; the device consumes them
    // first, as a warm-up.
    e.block.process_queue(0);
    let base = used_idx(&e.mem);
    assert_eq!(base, heads.len() as u16);

    let stop = AtomicBool::new(false);
    let block = &mut e.block;
    let mem = &e.mem;
    std::thread::scope(|s| {
        // The device: serves notifications, most of them spurious.
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) && !block.needs_reset() {
                block.process_queue(0);
            }
            stop.store(true, Ordering::Relaxed);
        });
        // The driver: one request at a time, published as soon as the last one is used.
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in 1..=REQUESTS {
            let idx = base.wrapping_add(i);
            let slot = u64::from(idx.wrapping_sub(1) % MQ_SIZE);
            let head = heads[usize::from(i) % heads.len()];
            mem.write_obj(head, GuestAddress(avail + 4 + 2 * slot))
                .unwrap();
            mem.store(idx, GuestAddress(avail + 2), Ordering::Release)
                .unwrap();
            loop {
                let used: u16 = mem
                    .load(GuestAddress(USED_ADDR + 2), Ordering::Acquire)
                    .unwrap();
                if used == idx {
                    break;
                }
                assert!(
                    !stop.load(Ordering::Relaxed),
                    "device stopped (needs reset) at request {i}"
                );
                assert!(Instant::now() < deadline, "request {i} not served");
                std::hint::spin_loop();
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert!(!e.block.needs_reset());
}
