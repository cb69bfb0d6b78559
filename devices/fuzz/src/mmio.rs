//! The virtio-mmio register interface: arbitrary register and config-space accesses, guest
//! memory writes and queue notifications in any order, against a real virtio-blk device or a
//! multi-queue probe device that checks what the transport hands it.
//!
//! Input layout: one device byte, then operations until the input ends.
//!
//! Device byte `d`: `d & 3` = 0 virtio-blk, 1 read-only virtio-blk, otherwise a
//! [`ProbeDevice`] with `1 + (d >> 2 & 3)` queues whose max sizes are `1 << (b % 16)` for
//! the next byte `b` of each.
//!
//! Each operation starts with a byte whose low three bits pick it (integers little endian):
//!
//! | op | arguments                          | effect                                         |
//! |----|------------------------------------|------------------------------------------------|
//! | 0  | reg: u8, value: u32                | 32-bit write at offset `reg * 4`               |
//! | 1  | reg: u8                            | 32-bit read at offset `reg * 4`                |
//! | 2  | offset: u16, len: u8, `len % 9` bytes | write of any width at any offset            |
//! | 3  | offset: u16, len: u8               | read of `len % 9` bytes at any offset          |
//! | 4  | queue: u8                          | event loop handles queue `queue % (n + 1)`     |
//! | 5  | addr: u16, len: u8, `len` bytes    | the guest writes its RAM                       |
//! | 6  |                                    | the vmm signals a config change                |
//! | 7  | features: u32, per queue 2 bytes   | full driver bring-up (see [`bring_up_op`])     |

use std::sync::Arc;

use devices::virtio::mmio::{regs, MAGIC_VALUE};
use devices::virtio::{
    features, status, ActivateError, GuestMemoryMmap, Interrupt, InterruptType, MmioTransport,
    VirtioDevice,
};
use devices::BusDevice;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::{bring_up, guest_memory, read_reg, transport, Input, MemDisk, QueueSetup, INT_ALL};

pub const OP_WRITE32: u8 = 0;
pub const OP_READ32: u8 = 1;
pub const OP_WRITE_RAW: u8 = 2;
pub const OP_READ_RAW: u8 = 3;
pub const OP_PROCESS: u8 = 4;
pub const OP_MEM_WRITE: u8 = 5;
pub const OP_CONFIG_CHANGED: u8 = 6;
pub const OP_BRING_UP: u8 = 7;

/// Device type the probe device reports (unassigned in virtio 1.2).
pub const PROBE_DEVICE_TYPE: u32 = 63;
/// A device-specific feature bit the probe device offers.
pub const PROBE_FEATURE: u32 = 5;

/// Chains the probe device pops per notification and queue, at most: the guest can keep a
/// ring busy forever (e.g. when the used ring overlaps the available ring), and this device
/// is here to test the transport, not to spin.
const PROBE_MAX_CHAINS: usize = 64;

struct ProbeActive {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    interrupt: Arc<Interrupt>,
}

/// A device with several queues that asserts the transport keeps its side of the
/// [`VirtioDevice`] contract and does simple I/O on every chain it is given.
pub struct ProbeDevice {
    max_sizes: Vec<u16>,
    config: [u8; 24],
    active: Option<ProbeActive>,
    broken: bool,
}

impl ProbeDevice {
    pub fn new(max_sizes: Vec<u16>) -> Self {
        ProbeDevice {
            max_sizes,
            config: std::array::from_fn(|i| i as u8),
            active: None,
            broken: false,
        }
    }
}

impl VirtioDevice for ProbeDevice {
    fn device_type(&self) -> u32 {
        PROBE_DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.max_sizes
    }

    fn device_features(&self) -> u64 {
        (1 << features::VERSION_1)
            | (1 << features::RING_EVENT_IDX)
            | (1 << features::RING_INDIRECT_DESC)
            | (1 << PROBE_FEATURE)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok());
            *b = at.and_then(|o| self.config.get(o)).copied().unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let at = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok());
            if let Some(slot) = at.and_then(|o| self.config.get_mut(o)) {
                *slot = *b;
            }
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
        acked_features: u64,
    ) -> Result<(), ActivateError> {
        assert!(self.active.is_none(), "activated twice without a reset");
        assert_eq!(queues.len(), self.max_sizes.len(), "one queue per max size");
        assert_eq!(
            acked_features & !self.device_features(),
            0,
            "unoffered features"
        );
        assert_ne!(
            acked_features & (1 << features::VERSION_1),
            0,
            "no VERSION_1"
        );
        let event_idx = acked_features & (1 << features::RING_EVENT_IDX) != 0;
        for (q, &max) in queues.iter().zip(&self.max_sizes) {
            assert_eq!(q.max_size(), max);
            if q.ready() {
                assert!(q.is_valid(&mem), "transport passed an invalid ready queue");
                assert_eq!(q.event_idx_enabled(), event_idx);
            }
        }
        if !queues.iter().any(|q| q.ready()) {
            return Err(ActivateError::QueueNotReady(0));
        }
        self.broken = false;
        self.active = Some(ProbeActive {
            mem,
            queues,
            interrupt,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.broken = false;
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn process_queue(&mut self, queue_index: usize) {
        let Some(active) = self.active.as_mut() else {
            panic!("process_queue on an inactive device");
        };
        if self.broken {
            return;
        }
        let ProbeActive {
            mem,
            queues,
            interrupt,
        } = active;
        let Some(queue) = queues.get_mut(queue_index).filter(|q| q.ready()) else {
            return;
        };
        let mut used = false;
        for _ in 0..PROBE_MAX_CHAINS {
            let chain = match queue.iter(&*mem) {
                Ok(mut it) => it.next(),
                Err(_) => {
                    self.broken = true;
                    let _ = interrupt.trigger(InterruptType::ConfigChange);
                    break;
                }
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let mut written = 0u32;
            let mut buf = [0u8; 32];
            for desc in chain {
                let n = (desc.len() as usize).min(buf.len());
                if desc.is_write_only() {
                    if mem.write_slice(&[0xa5; 32][..n], desc.addr()).is_ok() {
                        written += n as u32;
                    }
                } else {
                    let _ = mem.read_slice(&mut buf[..n], desc.addr());
                }
            }
            if queue.add_used(&*mem, head, written).is_err() {
                break;
            }
            used = true;
        }
        if used && queue.needs_notification(&*mem).unwrap_or(true) {
            let _ = interrupt.trigger(InterruptType::UsedBuffer);
        }
    }

    fn needs_reset(&self) -> bool {
        self.broken
    }
}

/// Op 7: bring the device up as a well-behaved driver would, so the fuzzer reaches the active
/// state cheaply. Features are `value | VERSION_1`; each queue `i` takes two bytes `page`,
/// `log2`: its size is `1 << (log2 % 16)` and its descriptor table, available and used rings
/// follow one another from guest address `page * 0x100`.
fn bring_up_op(t: &mut MmioTransport, input: &mut Input<'_>, nqueues: usize) {
    let features = u64::from(input.u32()) | (1 << features::VERSION_1);
    let queues: Vec<QueueSetup> = (0..nqueues)
        .map(|_| {
            let desc = u64::from(input.u8()) * 0x100;
            let size = 1u32 << (input.u8() % 16);
            let driver = desc + 16 * u64::from(size);
            // Used ring: 4-byte aligned after avail (flags, idx, ring, used_event).
            let device = (driver + 6 + 2 * u64::from(size) + 3) & !3;
            QueueSetup {
                size,
                desc,
                driver,
                device,
            }
        })
        .collect();
    bring_up(t, features, &queues);
}

fn check_invariants(t: &mut MmioTransport, activated: bool) {
    assert_eq!(read_reg(t, regs::MAGIC_VALUE), MAGIC_VALUE);
    assert_eq!(
        t.interrupt().status() & !INT_ALL,
        0,
        "unknown interrupt bits"
    );
    let s = t.status();
    if activated {
        assert_ne!(s & status::DRIVER_OK, 0, "device active without DRIVER_OK");
    }
    if s == 0 {
        assert!(!activated, "device active after reset");
    }
    if s & status::DRIVER_OK != 0 && s & status::DEVICE_NEEDS_RESET == 0 {
        assert!(
            activated,
            "DRIVER_OK without an active device or NEEDS_RESET"
        );
    }
}

/// What a run left behind, for the seed tests.
pub struct Outcome {
    pub mem: GuestMemoryMmap,
    /// The device was active after some operation.
    pub was_active: bool,
}

pub fn run(data: &[u8]) -> Outcome {
    let mut input = Input::new(data);
    let kind = input.u8();
    let mem = guest_memory(&[]);
    let disk = MemDisk::new();
    match kind & 3 {
        0 | 1 => {
            let read_only = kind & 3 == 1;
            let (t, dev) = transport(&mem, disk.block(read_only)).expect("virtio-blk transport");
            let activated = || dev.lock().unwrap().is_activated();
            let was_active = drive(t, &mem, &mut input, 1, activated);
            if read_only {
                assert!(
                    disk.contents() == crate::disk_pattern(),
                    "read-only disk was modified"
                );
            }
            Outcome { mem, was_active }
        }
        _ => {
            let n = 1 + usize::from(kind >> 2 & 3);
            let sizes = (0..n).map(|_| 1u16 << (input.u8() % 16)).collect();
            // Max sizes are all valid powers of two, so the transport must accept the device.
            let (t, dev) = transport(&mem, ProbeDevice::new(sizes)).expect("probe transport");
            let activated = || dev.lock().unwrap().is_activated();
            let was_active = drive(t, &mem, &mut input, n, activated);
            Outcome { mem, was_active }
        }
    }
}

fn drive(
    mut t: MmioTransport,
    mem: &GuestMemoryMmap,
    input: &mut Input<'_>,
    nqueues: usize,
    activated: impl Fn() -> bool,
) -> bool {
    let mut was_active = false;
    let mut handler = t.event_handler().expect("event handler");
    while !input.is_empty() {
        let op = input.u8() & 7;
        match op {
            OP_WRITE32 => {
                let offset = u64::from(input.u8()) * 4;
                let v = input.u32();
                t.write(offset, &v.to_le_bytes());
            }
            OP_READ32 => {
                let offset = u64::from(input.u8()) * 4;
                let mut b = [0u8; 4];
                t.read(offset, &mut b);
            }
            OP_WRITE_RAW => {
                let offset = u64::from(input.u16());
                let len = usize::from(input.u8() % 9);
                let mut b = [0u8; 8];
                let src = input.bytes(len);
                b[..src.len()].copy_from_slice(src);
                t.write(offset, &b[..len]);
            }
            OP_READ_RAW => {
                let offset = u64::from(input.u16());
                let len = usize::from(input.u8() % 9);
                let mut b = [0u8; 8];
                t.read(offset, &mut b[..len]);
            }
            OP_PROCESS => {
                let q = usize::from(input.u8()) % (nqueues + 1);
                handler.handle_queue_event(q);
            }
            OP_MEM_WRITE => {
                let addr = u64::from(input.u16());
                let len = usize::from(input.u8());
                let bytes = input.bytes(len);
                // May run off the end of RAM: that write fails, like a DMA to nowhere.
                let _ = mem.write_slice(bytes, GuestAddress(addr));
            }
            OP_CONFIG_CHANGED => t.config_changed(),
            OP_BRING_UP => bring_up_op(&mut t, input, nqueues),
            _ => unreachable!(),
        }
        let active = activated();
        was_active |= active;
        check_invariants(&mut t, active);
    }
    was_active
}
