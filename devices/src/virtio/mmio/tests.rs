use std::sync::{Arc, Mutex};

use virtio_queue::QueueT;

use super::*;
use crate::virtio::interrupt::{INT_CONFIG_CHANGE, INT_USED_BUFFER};
use crate::virtio::status::*;
use crate::virtio::test_utils::*;

const DESC_ADDR: u64 = 0x1000;
const DRIVER_ADDR: u64 = 0x2000;
const DEVICE_ADDR: u64 = 0x3000;
const VERSION_1: u64 = 1 << features::VERSION_1;

fn setup(queue_sizes: &[u16]) -> (MmioTransport, Arc<Mutex<MockDevice>>) {
    let dev = MockDevice::new(queue_sizes).shared();
    let t = MmioTransport::new(test_mem(), dev.clone()).unwrap();
    (t, dev)
}

fn rd(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0xaa; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn wr(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

/// ACKNOWLEDGE, DRIVER, write `features`, FEATURES_OK; returns the status read back.
fn negotiate(t: &mut MmioTransport, features: u64) -> u32 {
    wr(t, regs::STATUS, ACKNOWLEDGE);
    wr(t, regs::STATUS, ACKNOWLEDGE | DRIVER);
    wr(t, regs::DRIVER_FEATURES_SEL, 0);
    wr(t, regs::DRIVER_FEATURES, features as u32);
    wr(t, regs::DRIVER_FEATURES_SEL, 1);
    wr(t, regs::DRIVER_FEATURES, (features >> 32) as u32);
    wr(t, regs::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    rd(t, regs::STATUS)
}

fn setup_queue(t: &mut MmioTransport, idx: u32, size: u32, desc: u64, driver: u64, device: u64) {
    wr(t, regs::QUEUE_SEL, idx);
    wr(t, regs::QUEUE_NUM, size);
    wr(t, regs::QUEUE_DESC_LOW, desc as u32);
    wr(t, regs::QUEUE_DESC_HIGH, (desc >> 32) as u32);
    wr(t, regs::QUEUE_DRIVER_LOW, driver as u32);
    wr(t, regs::QUEUE_DRIVER_HIGH, (driver >> 32) as u32);
    wr(t, regs::QUEUE_DEVICE_LOW, device as u32);
    wr(t, regs::QUEUE_DEVICE_HIGH, (device >> 32) as u32);
    wr(t, regs::QUEUE_READY, 1);
}

const ALL_OK: u32 = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;

/// Full driver initialisation of every queue (size 16, rings 0x1000 apart per queue).
fn bring_up(t: &mut MmioTransport, nqueues: u32) {
    assert_eq!(negotiate(t, VERSION_1), ACKNOWLEDGE | DRIVER | FEATURES_OK);
    for i in 0..nqueues {
        let base = u64::from(i) * 0x10000;
        setup_queue(
            t,
            i,
            16,
            base + DESC_ADDR,
            base + DRIVER_ADDR,
            base + DEVICE_ADDR,
        );
    }
    wr(t, regs::STATUS, ALL_OK);
}

#[test]
fn identity_registers() {
    let (mut t, _) = setup(&[16]);
    assert_eq!(rd(&mut t, regs::MAGIC_VALUE), 0x7472_6976);
    assert_eq!(rd(&mut t, regs::VERSION), 2);
    assert_eq!(rd(&mut t, regs::DEVICE_ID), MOCK_DEVICE_TYPE);
    assert_eq!(rd(&mut t, regs::VENDOR_ID), VENDOR_ID);
    // Read-only registers ignore writes.
    for reg in [
        regs::MAGIC_VALUE,
        regs::VERSION,
        regs::DEVICE_ID,
        regs::VENDOR_ID,
        regs::DEVICE_FEATURES,
        regs::QUEUE_NUM_MAX,
        regs::INTERRUPT_STATUS,
        regs::CONFIG_GENERATION,
    ] {
        wr(&mut t, reg, 0x1234_5678);
    }
    assert_eq!(rd(&mut t, regs::MAGIC_VALUE), 0x7472_6976);
    assert_eq!(rd(&mut t, regs::VERSION), 2);
    assert_eq!(rd(&mut t, regs::DEVICE_ID), MOCK_DEVICE_TYPE);
    assert_eq!(rd(&mut t, regs::QUEUE_NUM_MAX), 16);
    assert_eq!(rd(&mut t, regs::INTERRUPT_STATUS), 0);
    assert_eq!(rd(&mut t, regs::CONFIG_GENERATION), 0);
}

#[test]
fn device_features_by_selector() {
    let (mut t, dev) = setup(&[16]);
    let features = dev.lock().unwrap().features;
    wr(&mut t, regs::DEVICE_FEATURES_SEL, 0);
    assert_eq!(rd(&mut t, regs::DEVICE_FEATURES), features as u32);
    wr(&mut t, regs::DEVICE_FEATURES_SEL, 1);
    assert_eq!(rd(&mut t, regs::DEVICE_FEATURES), (features >> 32) as u32);
    assert_eq!(
        rd(&mut t, regs::DEVICE_FEATURES) & 1,
        1,
        "VERSION_1 is bit 32"
    );
    wr(&mut t, regs::DEVICE_FEATURES_SEL, 2);
    assert_eq!(rd(&mut t, regs::DEVICE_FEATURES), 0);
    wr(&mut t, regs::DEVICE_FEATURES_SEL, u32::MAX);
    assert_eq!(rd(&mut t, regs::DEVICE_FEATURES), 0);
}

#[test]
fn bad_widths_and_offsets_are_ignored() {
    let (mut t, _) = setup(&[16]);
    // Non-32-bit register reads return zeros rather than partial registers.
    for len in [1usize, 2, 3, 8] {
        let mut buf = vec![0xaa; len];
        t.read(regs::MAGIC_VALUE, &mut buf);
        assert!(buf.iter().all(|&b| b == 0), "{len}-byte read: {buf:?}");
    }
    // Unaligned 4-byte read.
    let mut buf = [0xaa; 4];
    t.read(regs::MAGIC_VALUE + 1, &mut buf);
    assert_eq!(buf, [0; 4]);

    // Narrow, wide and unaligned writes to Status have no effect.
    t.write(regs::STATUS, &[ACKNOWLEDGE as u8]);
    t.write(regs::STATUS, &[ACKNOWLEDGE as u8, 0]);
    t.write(regs::STATUS, &u64::from(ACKNOWLEDGE).to_le_bytes());
    t.write(regs::STATUS + 1, &ACKNOWLEDGE.to_le_bytes());
    t.write(regs::STATUS, &[]);
    assert_eq!(rd(&mut t, regs::STATUS), 0);

    // Unknown and legacy (version 1) registers read as zero and ignore writes.
    for off in [0x018, 0x028, 0x03c, 0x040, 0x048, 0x0e0, 0x0f8] {
        wr(&mut t, off, 0xffff_ffff);
        assert_eq!(rd(&mut t, off), 0, "offset {off:#x}");
    }
    // Write-only registers read as zero.
    for off in [
        regs::DEVICE_FEATURES_SEL,
        regs::DRIVER_FEATURES,
        regs::DRIVER_FEATURES_SEL,
        regs::QUEUE_SEL,
        regs::QUEUE_NUM,
        regs::QUEUE_NOTIFY,
        regs::INTERRUPT_ACK,
        regs::QUEUE_DESC_LOW,
        regs::QUEUE_DEVICE_HIGH,
        regs::SHM_SEL,
    ] {
        assert_eq!(rd(&mut t, off), 0, "offset {off:#x}");
    }
    // Nothing above changed the state the driver sees.
    assert_eq!(rd(&mut t, regs::STATUS), 0);
    assert_eq!(rd(&mut t, regs::QUEUE_READY), 0);
}

#[test]
fn happy_path_activates_device_with_configured_queues() {
    let (mut t, dev) = setup(&[16, 8]);
    let features = VERSION_1 | (1 << features::RING_EVENT_IDX) | (1 << MOCK_FEATURE);
    assert_eq!(
        negotiate(&mut t, features),
        ACKNOWLEDGE | DRIVER | FEATURES_OK
    );
    // Queue 1 with high address halves set, to check 64-bit composition.
    setup_queue(&mut t, 0, 16, DESC_ADDR, DRIVER_ADDR, DEVICE_ADDR);
    wr(&mut t, regs::QUEUE_SEL, 1);
    assert_eq!(rd(&mut t, regs::QUEUE_NUM_MAX), 8);
    wr(&mut t, regs::QUEUE_NUM, 4);
    wr(&mut t, regs::QUEUE_DESC_LOW, 0x5000);
    wr(&mut t, regs::QUEUE_DRIVER_LOW, 0x6000);
    wr(&mut t, regs::QUEUE_DEVICE_LOW, 0x7000);
    wr(&mut t, regs::QUEUE_READY, 1);
    assert_eq!(rd(&mut t, regs::QUEUE_READY), 1);
    assert!(!dev.lock().unwrap().is_activated());

    wr(&mut t, regs::STATUS, ALL_OK);
    assert_eq!(rd(&mut t, regs::STATUS), ALL_OK);
    let d = dev.lock().unwrap();
    let act = d.active.as_ref().expect("device activated");
    assert_eq!(d.activations, 1);
    assert_eq!(act.acked_features, features);
    assert!(Arc::ptr_eq(&act.interrupt, t.interrupt()));
    assert_eq!(act.queues.len(), 2);
    let q0 = &act.queues[0];
    assert!(q0.ready());
    assert_eq!(
        (q0.size(), q0.desc_table(), q0.avail_ring(), q0.used_ring()),
        (16, DESC_ADDR, DRIVER_ADDR, DEVICE_ADDR)
    );
    assert!(q0.event_idx_enabled(), "EVENT_IDX was negotiated");
    let q1 = &act.queues[1];
    assert_eq!(
        (q1.size(), q1.desc_table(), q1.avail_ring(), q1.used_ring()),
        (4, 0x5000, 0x6000, 0x7000)
    );
}

#[test]
fn queue_addresses_use_both_halves() {
    let (mut t, dev) = setup(&[16]);
    // Guest memory is only 16 MiB, so a high address must fail activation; check that the
    // high half really reached the queue by observing that failure.
    negotiate(&mut t, VERSION_1);
    setup_queue(
        &mut t,
        0,
        16,
        DESC_ADDR | (1 << 32),
        DRIVER_ADDR,
        DEVICE_ADDR,
    );
    wr(&mut t, regs::STATUS, ALL_OK);
    assert!(!dev.lock().unwrap().is_activated());
    assert_ne!(rd(&mut t, regs::STATUS) & DEVICE_NEEDS_RESET, 0);
}

#[test]
fn queue_addresses_above_4g() {
    // RAM below and above 4 GiB, so every high half can be exercised for real.
    let hi = 1u64 << 32;
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 0x10_0000),
        (GuestAddress(hi), 0x10_0000),
    ])
    .unwrap();
    let dev = MockDevice::new(&[16]).shared();
    let mut t = MmioTransport::new(mem, dev.clone()).unwrap();
    negotiate(&mut t, VERSION_1);
    setup_queue(
        &mut t,
        0,
        16,
        hi + DESC_ADDR,
        hi + DRIVER_ADDR,
        hi + DEVICE_ADDR,
    );
    wr(&mut t, regs::STATUS, ALL_OK);
    let d = dev.lock().unwrap();
    let q = &d.active.as_ref().expect("activated").queues[0];
    assert_eq!(
        (q.desc_table(), q.avail_ring(), q.used_ring()),
        (hi + DESC_ADDR, hi + DRIVER_ADDR, hi + DEVICE_ADDR)
    );
}

#[test]
fn high_halves_can_be_rewritten_before_ready() {
    let dev = MockDevice::new(&[16]).shared();
    let mut t = MmioTransport::new(test_mem(), dev.clone()).unwrap();
    negotiate(&mut t, VERSION_1);
    // Garbage high halves first, then corrected: only the last value counts.
    wr(&mut t, regs::QUEUE_SEL, 0);
    for reg in [
        regs::QUEUE_DESC_HIGH,
        regs::QUEUE_DRIVER_HIGH,
        regs::QUEUE_DEVICE_HIGH,
    ] {
        wr(&mut t, reg, 0xdead);
    }
    setup_queue(&mut t, 0, 16, DESC_ADDR, DRIVER_ADDR, DEVICE_ADDR);
    wr(&mut t, regs::STATUS, ALL_OK);
    assert!(dev.lock().unwrap().is_activated());
}

#[test]
fn each_high_half_reaches_the_queue() {
    // A stray high half in any of the three addresses moves that ring out of guest memory.
    for which in 0..3 {
        let (mut t, dev) = setup(&[16]);
        negotiate(&mut t, VERSION_1);
        let mut addrs = [DESC_ADDR, DRIVER_ADDR, DEVICE_ADDR];
        addrs[which] |= 1 << 40;
        setup_queue(&mut t, 0, 16, addrs[0], addrs[1], addrs[2]);
        wr(&mut t, regs::STATUS, ALL_OK);
        assert!(!dev.lock().unwrap().is_activated(), "ring {which}");
    }
}

#[test]
fn transport_is_a_bus_device() {
    let (t, _) = setup(&[16]);
    let bus: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(t));
    let mut b = [0u8; 4];
    bus.lock().unwrap().read(regs::MAGIC_VALUE, &mut b);
    assert_eq!(u32::from_le_bytes(b), MAGIC_VALUE);
    assert_eq!(
        kernel_cmdline_device(0xd000_0000, 5),
        "virtio_mmio.device=4K@0xd0000000:5"
    );
}

#[test]
fn unready_queues_are_passed_unready() {
    let (mut t, dev) = setup(&[16, 16]);
    negotiate(&mut t, VERSION_1);
    setup_queue(&mut t, 0, 16, DESC_ADDR, DRIVER_ADDR, DEVICE_ADDR);
    wr(&mut t, regs::STATUS, ALL_OK);
    let d = dev.lock().unwrap();
    let act = d.active.as_ref().unwrap();
    assert!(act.queues[0].ready());
    assert!(!act.queues[1].ready());
}

#[test]
fn status_transitions_out_of_order_are_ignored() {
    let (mut t, dev) = setup(&[16]);
    // DRIVER before ACKNOWLEDGE.
    wr(&mut t, regs::STATUS, DRIVER);
    assert_eq!(rd(&mut t, regs::STATUS), 0);
    // FEATURES_OK before DRIVER.
    wr(&mut t, regs::STATUS, ACKNOWLEDGE);
    wr(&mut t, regs::STATUS, ACKNOWLEDGE | FEATURES_OK);
    assert_eq!(rd(&mut t, regs::STATUS), ACKNOWLEDGE);
    wr(&mut t, regs::STATUS, ACKNOWLEDGE | DRIVER);
    wr(&mut t, regs::DRIVER_FEATURES_SEL, 1);
    wr(&mut t, regs::DRIVER_FEATURES, 1);
    // DRIVER_OK without FEATURES_OK (legacy-style) does not activate.
    wr(&mut t, regs::STATUS, ACKNOWLEDGE | DRIVER | DRIVER_OK);
    assert_eq!(rd(&mut t, regs::STATUS), ACKNOWLEDGE | DRIVER);
    assert!(!dev.lock().unwrap().is_activated());
    // Clearing a bit (other than by reset) is refused.
    wr(&mut t, regs::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    wr(&mut t, regs::STATUS, ACKNOWLEDGE | FEATURES_OK);
    assert_eq!(rd(&mut t, regs::STATUS), ACKNOWLEDGE | DRIVER | FEATURES_OK);
    // Reserved bits are refused.
    wr(
        &mut t,
        regs::STATUS,
        ACKNOWLEDGE | DRIVER | FEATURES_OK | 0x10,
    );
    assert_eq!(rd(&mut t, regs::STATUS), ACKNOWLEDGE | DRIVER | FEATURES_OK);
    // The driver cannot set DEVICE_NEEDS_RESET itself.
    wr(
        &mut t,
        regs::STATUS,
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DEVICE_NEEDS_RESET,
    );
    assert_eq!(rd(&mut t, regs::STATUS), ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_eq!(dev.lock().unwrap().activations, 0);
}

#[test]
fn all_bits_in_one_write_still_negotiates_and_activates() {
    let (mut t, dev) = setup(&[16]);
    wr(&mut t, regs::STATUS, ACKNOWLEDGE | DRIVER);
    wr(&mut t, regs::DRIVER_FEATURES_SEL, 1);
    wr(&mut t, regs::DRIVER_FEATURES, 1);
    // No queue is ready, so the mock accepts activation with unready queues.
    wr(&mut t, regs::STATUS, ALL_OK);
    assert_eq!(rd(&mut t, regs::STATUS), ALL_OK);
    assert!(dev.lock().unwrap().is_activated());
}

#[test]
fn features_ok_refused_for_unoffered_features() {
    let (mut t, _) = setup(&[16]);
    // Bit 5 is not offered by the mock.
    assert_eq!(
        negotiate(&mut t, VERSION_1 | (1 << 5)),
        ACKNOWLEDGE | DRIVER
    );
    // A later DRIVER_OK cannot skip FEATURES_OK either.
    wr(&mut t, regs::STATUS, ALL_OK);
    assert_eq!(rd(&mut t, regs::STATUS), ACKNOWLEDGE | DRIVER);
}

#[test]
fn features_ok_refused_without_version_1() {
    let (mut t, dev) = setup(&[16]);
    assert_eq!(negotiate(&mut t, 1 << MOCK_FEATURE), ACKNOWLEDGE | DRIVER);
    // Fixing the features and retrying works: the driver may renegotiate.
    assert_eq!(
        negotiate(&mut t, VERSION_1 | (1 << MOCK_FEATURE)),
        ACKNOWLEDGE | DRIVER | FEATURES_OK
    );
    wr(&mut t, regs::STATUS, ALL_OK);
    assert_eq!(
        dev.lock().unwrap().active.as_ref().unwrap().acked_features,
        VERSION_1 | (1 << MOCK_FEATURE)
    );
}

#[test]
fn features_ok_refused_for_bits_beyond_64() {
    let (mut t, _) = setup(&[16]);
    wr(&mut t, regs::STATUS, ACKNOWLEDGE);
    wr(&mut t, regs::STATUS, ACKNOWLEDGE | DRIVER);
    wr(&mut t, regs::DRIVER_FEATURES_SEL, 1);
    wr(&mut t, regs::DRIVER_FEATURES, 1);
    wr(&mut t, regs::DRIVER_FEATURES_SEL, 2);
    wr(&mut t, regs::DRIVER_FEATURES, 1);
    wr(&mut t, regs::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_eq!(rd(&mut t, regs::STATUS), ACKNOWLEDGE | DRIVER);
}

#[test]
fn driver_features_writes_outside_negotiation_are_ignored() {
    let (mut t, dev) = setup(&[16]);
    // Before DRIVER.
    wr(&mut t, regs::DRIVER_FEATURES_SEL, 0);
    wr(&mut t, regs::DRIVER_FEATURES, 1 << MOCK_FEATURE);
    assert_eq!(
        negotiate(&mut t, VERSION_1),
        ACKNOWLEDGE | DRIVER | FEATURES_OK
    );
    // After FEATURES_OK.
    wr(&mut t, regs::DRIVER_FEATURES_SEL, 0);
    wr(&mut t, regs::DRIVER_FEATURES, 1 << features::RING_EVENT_IDX);
    wr(&mut t, regs::STATUS, ALL_OK);
    let d = dev.lock().unwrap();
    assert_eq!(d.active.as_ref().unwrap().acked_features, VERSION_1);
}

#[test]
fn queue_num_max_and_selector() {
    let (mut t, _) = setup(&[256, 64]);
    wr(&mut t, regs::QUEUE_SEL, 0);
    assert_eq!(rd(&mut t, regs::QUEUE_NUM_MAX), 256);
    wr(&mut t, regs::QUEUE_SEL, 1);
    assert_eq!(rd(&mut t, regs::QUEUE_NUM_MAX), 64);
    wr(&mut t, regs::QUEUE_SEL, 2);
    assert_eq!(rd(&mut t, regs::QUEUE_NUM_MAX), 0);
    assert_eq!(rd(&mut t, regs::QUEUE_READY), 0);
    // Writes for a nonexistent queue are ignored, not a panic.
    negotiate(&mut t, VERSION_1);
    wr(&mut t, regs::QUEUE_SEL, 7);
    wr(&mut t, regs::QUEUE_NUM, 4);
    wr(&mut t, regs::QUEUE_READY, 1);
    assert_eq!(rd(&mut t, regs::QUEUE_READY), 0);
    wr(&mut t, regs::QUEUE_SEL, u32::MAX);
    wr(&mut t, regs::QUEUE_DESC_LOW, 0x1000);
    assert_eq!(rd(&mut t, regs::QUEUE_NUM_MAX), 0);
}

#[test]
fn queue_setup_outside_setup_phase_is_ignored() {
    let (mut t, dev) = setup(&[16]);
    // Before FEATURES_OK the queue cannot be configured.
    wr(&mut t, regs::STATUS, ACKNOWLEDGE);
    wr(&mut t, regs::STATUS, ACKNOWLEDGE | DRIVER);
    setup_queue(&mut t, 0, 16, DESC_ADDR, DRIVER_ADDR, DEVICE_ADDR);
    assert_eq!(rd(&mut t, regs::QUEUE_READY), 0);

    wr(&mut t, regs::DRIVER_FEATURES_SEL, 1);
    wr(&mut t, regs::DRIVER_FEATURES, 1);
    wr(&mut t, regs::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    setup_queue(&mut t, 0, 8, DESC_ADDR, DRIVER_ADDR, DEVICE_ADDR);
    // Once ready, the configuration is frozen (except QueueReady itself).
    wr(&mut t, regs::QUEUE_NUM, 4);
    wr(&mut t, regs::QUEUE_DESC_LOW, 0x8000);
    wr(&mut t, regs::STATUS, ALL_OK);
    // After DRIVER_OK nothing changes any more.
    wr(&mut t, regs::QUEUE_READY, 0);
    assert_eq!(rd(&mut t, regs::QUEUE_READY), 1);
    wr(&mut t, regs::QUEUE_NUM, 2);

    let d = dev.lock().unwrap();
    let q = &d.active.as_ref().unwrap().queues[0];
    assert_eq!((q.size(), q.desc_table()), (8, DESC_ADDR));
}

#[test]
fn queue_ready_can_be_withdrawn_before_driver_ok() {
    let (mut t, dev) = setup(&[16]);
    negotiate(&mut t, VERSION_1);
    setup_queue(&mut t, 0, 16, DESC_ADDR, DRIVER_ADDR, DEVICE_ADDR);
    wr(&mut t, regs::QUEUE_READY, 0);
    assert_eq!(rd(&mut t, regs::QUEUE_READY), 0);
    // Now reconfigurable.
    wr(&mut t, regs::QUEUE_NUM, 4);
    wr(&mut t, regs::QUEUE_READY, 2); // not 0/1: ignored
    assert_eq!(rd(&mut t, regs::QUEUE_READY), 0);
    wr(&mut t, regs::QUEUE_READY, 1);
    wr(&mut t, regs::STATUS, ALL_OK);
    assert_eq!(
        dev.lock().unwrap().active.as_ref().unwrap().queues[0].size(),
        4
    );
}

fn assert_activation_refused(size: u32, desc: u64, driver: u64, device: u64) {
    let (mut t, dev) = setup(&[16]);
    negotiate(&mut t, VERSION_1);
    setup_queue(&mut t, 0, size, desc, driver, device);
    wr(&mut t, regs::STATUS, ALL_OK);
    let d = dev.lock().unwrap();
    assert!(
        !d.is_activated(),
        "size {size} desc {desc:#x} driver {driver:#x} device {device:#x} activated"
    );
    drop(d);
    assert_eq!(rd(&mut t, regs::STATUS), ALL_OK | DEVICE_NEEDS_RESET);
    // Spec: NEEDS_RESET after DRIVER_OK comes with a config-change interrupt.
    assert_eq!(rd(&mut t, regs::INTERRUPT_STATUS), INT_CONFIG_CHANGE);
    assert_eq!(t.interrupt().eventfd().read().unwrap(), 1);
    // Only a reset gets the device out of that state.
    wr(&mut t, regs::STATUS, ALL_OK | FAILED);
    assert_eq!(rd(&mut t, regs::STATUS), ALL_OK | DEVICE_NEEDS_RESET);
    wr(&mut t, regs::STATUS, 0);
    assert_eq!(rd(&mut t, regs::STATUS), 0);
    assert_eq!(rd(&mut t, regs::INTERRUPT_STATUS), 0);
}

#[test]
fn invalid_queue_size_fails_activation() {
    assert_activation_refused(12, DESC_ADDR, DRIVER_ADDR, DEVICE_ADDR); // not a power of two
    assert_activation_refused(32, DESC_ADDR, DRIVER_ADDR, DEVICE_ADDR); // above max
    assert_activation_refused(0, DESC_ADDR, DRIVER_ADDR, DEVICE_ADDR);
    assert_activation_refused(0x1_0000, DESC_ADDR, DRIVER_ADDR, DEVICE_ADDR); // does not fit u16
}

#[test]
fn misaligned_rings_fail_activation() {
    assert_activation_refused(16, DESC_ADDR + 8, DRIVER_ADDR, DEVICE_ADDR); // desc needs 16
    assert_activation_refused(16, DESC_ADDR, DRIVER_ADDR + 1, DEVICE_ADDR); // driver needs 2
    assert_activation_refused(16, DESC_ADDR, DRIVER_ADDR, DEVICE_ADDR + 2); // device needs 4
}

#[test]
fn rings_outside_memory_fail_activation() {
    let end = MEM_SIZE;
    assert_activation_refused(16, end, DRIVER_ADDR, DEVICE_ADDR);
    // Starts inside but runs off the end: 16 descriptors are 256 bytes.
    assert_activation_refused(16, end - 0x80, DRIVER_ADDR, DEVICE_ADDR);
    assert_activation_refused(16, DESC_ADDR, end - 2, DEVICE_ADDR);
    assert_activation_refused(16, DESC_ADDR, DRIVER_ADDR, end - 4);
    assert_activation_refused(16, DESC_ADDR, DRIVER_ADDR, u64::MAX - 3);
    // virtio-queue cannot use an available ring at address 0.
    assert_activation_refused(16, DESC_ADDR, 0, DEVICE_ADDR);
}

#[test]
fn device_activation_failure_sets_needs_reset() {
    let (mut t, dev) = setup(&[16]);
    dev.lock().unwrap().fail_activate = true;
    bring_up(&mut t, 1);
    assert_eq!(rd(&mut t, regs::STATUS), ALL_OK | DEVICE_NEEDS_RESET);
    // A notification to a device that failed to activate goes nowhere.
    wr(&mut t, regs::QUEUE_NOTIFY, 0);
    // (The activation kick is not sent either.)
    assert!(t.queue_events()[0].read().is_err());
}

#[test]
fn device_reported_needs_reset_is_visible() {
    let (mut t, dev) = setup(&[16]);
    bring_up(&mut t, 1);
    dev.lock().unwrap().needs_reset = true;
    assert_eq!(rd(&mut t, regs::STATUS), ALL_OK | DEVICE_NEEDS_RESET);
    // Status writes other than reset are refused meanwhile.
    wr(&mut t, regs::STATUS, ALL_OK | FAILED);
    assert_eq!(rd(&mut t, regs::STATUS) & FAILED, 0);
}

#[test]
fn failed_only_allows_reset() {
    let (mut t, dev) = setup(&[16]);
    wr(&mut t, regs::STATUS, ACKNOWLEDGE);
    wr(&mut t, regs::STATUS, ACKNOWLEDGE | FAILED);
    assert_eq!(rd(&mut t, regs::STATUS), ACKNOWLEDGE | FAILED);
    wr(&mut t, regs::STATUS, ACKNOWLEDGE | DRIVER | FAILED);
    assert_eq!(rd(&mut t, regs::STATUS), ACKNOWLEDGE | FAILED);
    wr(&mut t, regs::STATUS, 0);
    assert_eq!(rd(&mut t, regs::STATUS), 0);
    bring_up(&mut t, 1);
    assert!(dev.lock().unwrap().is_activated());
}

#[test]
fn reset_releases_everything() {
    let (mut t, dev) = setup(&[16, 16]);
    let features = VERSION_1 | (1 << features::RING_EVENT_IDX);
    negotiate(&mut t, features);
    setup_queue(&mut t, 0, 8, DESC_ADDR, DRIVER_ADDR, DEVICE_ADDR);
    setup_queue(
        &mut t,
        1,
        16,
        0x10000 + DESC_ADDR,
        0x10000 + DRIVER_ADDR,
        0x10000 + DEVICE_ADDR,
    );
    wr(&mut t, regs::STATUS, ALL_OK);
    assert!(dev.lock().unwrap().is_activated());
    // Interrupt held by the device and pending status.
    assert_eq!(Arc::strong_count(t.interrupt()), 2);
    t.interrupt().trigger(InterruptType::UsedBuffer).unwrap();
    wr(&mut t, regs::QUEUE_NOTIFY, 1);
    wr(&mut t, regs::DEVICE_FEATURES_SEL, 1);
    wr(&mut t, regs::QUEUE_SEL, 1);

    wr(&mut t, regs::STATUS, 0);

    let d = dev.lock().unwrap();
    assert!(!d.is_activated());
    assert_eq!(d.resets, 1);
    drop(d);
    assert_eq!(
        Arc::strong_count(t.interrupt()),
        1,
        "device dropped its interrupt"
    );
    assert_eq!(rd(&mut t, regs::STATUS), 0);
    assert_eq!(rd(&mut t, regs::INTERRUPT_STATUS), 0);
    assert!(t.interrupt().eventfd().read().is_err(), "irq drained");
    for evt in t.queue_events() {
        assert!(evt.read().is_err(), "queue events drained");
    }
    // Selectors back to 0, queues unconfigured.
    assert_eq!(
        rd(&mut t, regs::DEVICE_FEATURES),
        (1 << MOCK_FEATURE) | (1 << features::RING_EVENT_IDX)
    );
    assert_eq!(rd(&mut t, regs::QUEUE_READY), 0);
    wr(&mut t, regs::QUEUE_SEL, 1);
    assert_eq!(rd(&mut t, regs::QUEUE_READY), 0);

    // Re-initialisation without touching QueueNum gets the default size (the max) and the
    // old features are gone.
    negotiate(&mut t, VERSION_1);
    wr(&mut t, regs::QUEUE_SEL, 0);
    wr(&mut t, regs::QUEUE_DESC_LOW, DESC_ADDR as u32);
    wr(&mut t, regs::QUEUE_DRIVER_LOW, DRIVER_ADDR as u32);
    wr(&mut t, regs::QUEUE_DEVICE_LOW, DEVICE_ADDR as u32);
    wr(&mut t, regs::QUEUE_READY, 1);
    wr(&mut t, regs::STATUS, ALL_OK);
    let d = dev.lock().unwrap();
    let act = d.active.as_ref().unwrap();
    assert_eq!(d.activations, 2);
    assert_eq!(act.acked_features, VERSION_1);
    assert_eq!(act.queues[0].size(), 16);
    assert!(!act.queues[0].event_idx_enabled());
    assert!(!act.queues[1].ready());
}

#[test]
fn reset_before_activation_is_harmless() {
    let (mut t, dev) = setup(&[16]);
    wr(&mut t, regs::STATUS, 0);
    wr(&mut t, regs::STATUS, ACKNOWLEDGE);
    wr(&mut t, regs::STATUS, 0);
    assert_eq!(rd(&mut t, regs::STATUS), 0);
    assert!(!dev.lock().unwrap().is_activated());
    // Linux writes QueueReady=0 when deleting queues after a reset: accepted silently.
    wr(&mut t, regs::QUEUE_READY, 0);
    assert_eq!(rd(&mut t, regs::QUEUE_READY), 0);
}

#[test]
fn interrupt_status_and_ack() {
    let (mut t, _) = setup(&[16]);
    bring_up(&mut t, 1);
    let irq = t.interrupt().clone();
    irq.trigger(InterruptType::UsedBuffer).unwrap();
    assert_eq!(rd(&mut t, regs::INTERRUPT_STATUS), INT_USED_BUFFER);
    irq.trigger(InterruptType::ConfigChange).unwrap();
    assert_eq!(
        rd(&mut t, regs::INTERRUPT_STATUS),
        INT_USED_BUFFER | INT_CONFIG_CHANGE
    );
    wr(&mut t, regs::INTERRUPT_ACK, INT_USED_BUFFER);
    assert_eq!(rd(&mut t, regs::INTERRUPT_STATUS), INT_CONFIG_CHANGE);
    wr(&mut t, regs::INTERRUPT_ACK, 0xffff_fffc); // no known bits
    assert_eq!(rd(&mut t, regs::INTERRUPT_STATUS), INT_CONFIG_CHANGE);
    wr(&mut t, regs::INTERRUPT_ACK, INT_CONFIG_CHANGE);
    assert_eq!(rd(&mut t, regs::INTERRUPT_STATUS), 0);
}

#[test]
fn queue_notify_signals_the_queue_eventfd() {
    let (mut t, _) = setup(&[16, 16]);
    // Before DRIVER_OK: ignored.
    wr(&mut t, regs::QUEUE_NOTIFY, 0);
    assert!(t.queue_events()[0].read().is_err());

    bring_up(&mut t, 2);
    // Activation kicks each ready queue once.
    assert_eq!(t.queue_events()[0].read().unwrap(), 1);
    assert_eq!(t.queue_events()[1].read().unwrap(), 1);

    wr(&mut t, regs::QUEUE_NOTIFY, 1);
    wr(&mut t, regs::QUEUE_NOTIFY, 1);
    assert!(t.queue_events()[0].read().is_err());
    assert_eq!(t.queue_events()[1].read().unwrap(), 2);
    // Nonexistent queue: ignored.
    wr(&mut t, regs::QUEUE_NOTIFY, 2);
    wr(&mut t, regs::QUEUE_NOTIFY, u32::MAX);
    assert!(t.queue_events()[0].read().is_err());
    assert!(t.queue_events()[1].read().is_err());
}

#[test]
fn config_space_is_forwarded() {
    let (mut t, dev) = setup(&[16]);
    let mut b4 = [0u8; 4];
    t.read(CONFIG_SPACE_OFFSET + 4, &mut b4);
    assert_eq!(b4, [4, 5, 6, 7]);
    let mut b1 = [0u8; 1];
    t.read(CONFIG_SPACE_OFFSET + 15, &mut b1);
    assert_eq!(b1, [15]);
    let mut b8 = [0u8; 8];
    t.read(CONFIG_SPACE_OFFSET + 12, &mut b8);
    assert_eq!(b8, [12, 13, 14, 15, 0, 0, 0, 0]);
    // Odd widths are refused.
    let mut b3 = [0xffu8; 3];
    t.read(CONFIG_SPACE_OFFSET, &mut b3);
    assert_eq!(b3, [0, 0, 0]);
    t.write(CONFIG_SPACE_OFFSET + 2, &[9, 9, 9]);
    t.write(CONFIG_SPACE_OFFSET + 2, &[7, 8]);
    assert_eq!(
        dev.lock().unwrap().config_writes,
        vec![(2u64, vec![7u8, 8])]
    );
}

#[test]
fn config_generation_and_change_interrupt() {
    let (mut t, _) = setup(&[16]);
    t.config_changed();
    assert_eq!(rd(&mut t, regs::CONFIG_GENERATION), 1);
    // No interrupt before the driver is up.
    assert_eq!(rd(&mut t, regs::INTERRUPT_STATUS), 0);
    bring_up(&mut t, 1);
    t.config_changed();
    assert_eq!(rd(&mut t, regs::CONFIG_GENERATION), 2);
    assert_eq!(rd(&mut t, regs::INTERRUPT_STATUS), INT_CONFIG_CHANGE);
}

#[test]
fn shared_memory_and_queue_reset_registers() {
    let (mut t, _) = setup(&[16]);
    wr(&mut t, regs::SHM_SEL, 0);
    for reg in [
        regs::SHM_LEN_LOW,
        regs::SHM_LEN_HIGH,
        regs::SHM_BASE_LOW,
        regs::SHM_BASE_HIGH,
    ] {
        assert_eq!(rd(&mut t, reg), u32::MAX, "no shared memory region");
    }
    wr(&mut t, regs::QUEUE_RESET, 1);
    assert_eq!(rd(&mut t, regs::QUEUE_RESET), 0);
}

#[test]
fn new_rejects_bad_devices() {
    let mut d = MockDevice::new(&[16]);
    d.features &= !VERSION_1;
    let err = MmioTransport::new(test_mem(), d.shared()).unwrap_err();
    assert!(matches!(err, MmioError::NoVersion1), "{err}");
    for bad in [0u16, 3, 0x8001] {
        let err = MmioTransport::new(test_mem(), MockDevice::new(&[16, bad]).shared()).unwrap_err();
        assert!(
            matches!(err, MmioError::InvalidQueueMaxSize { index: 1, size } if size == bad),
            "{err}"
        );
    }
}

#[test]
fn event_handler_processes_notified_queues_only_when_active() {
    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};

    let (mut t, dev) = setup(&[16, 16]);
    let handler = Arc::new(Mutex::new(t.event_handler().unwrap()));
    let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    em.add_subscriber(handler);

    // Not active: the event is consumed but the device is not asked to process.
    t.queue_events()[1].write(1).unwrap();
    assert_eq!(em.run_with_timeout(100).unwrap(), 1);
    assert!(dev.lock().unwrap().processed.is_empty());
    assert!(t.queue_events()[1].read().is_err(), "event consumed");

    bring_up(&mut t, 2);
    // The activation kicks.
    while em.run_with_timeout(50).unwrap() > 0 {}
    let mut seen = dev.lock().unwrap().processed.clone();
    seen.sort();
    assert_eq!(seen, vec![0, 1]);

    dev.lock().unwrap().processed.clear();
    wr(&mut t, regs::QUEUE_NOTIFY, 1);
    assert_eq!(em.run_with_timeout(100).unwrap(), 1);
    assert_eq!(dev.lock().unwrap().processed, vec![1]);
    // Nothing left.
    assert_eq!(em.run_with_timeout(10).unwrap(), 0);
}
