//! virtio-mmio transport, version 2 (virtio 1.2 §4.2.2).
//!
//! Register accesses come straight from the guest, so everything here is defensive: accesses
//! with a bad width or offset, and writes that are not allowed in the current device status,
//! are ignored with a warning. A queue configuration that turns out to be unusable when the
//! driver sets DRIVER_OK leaves the device inactive with DEVICE_NEEDS_RESET set.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::{debug, info, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::interrupt::{InterruptType, INT_ALL};
use super::{features, status, ActivateError, GuestMemoryMmap, Interrupt, VirtioDevice};
use crate::BusDevice;

#[cfg(test)]
mod tests;

/// "virt" in little endian.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// Modern (virtio 1.x) virtio-mmio.
pub const MMIO_VERSION: u32 = 2;
/// Vendor ID reported to the guest ("CAPS" in little endian); drivers do not interpret it.
pub const VENDOR_ID: u32 = 0x5350_4143;
/// Size of the MMIO window the vmm should reserve for each device. The registers and config
/// space fit in 0x200 bytes; a page keeps windows page-aligned.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Offset of QueueNotify: the vmm registers one ioeventfd per queue at `base +` this offset,
/// 4 bytes wide, with datamatch = queue index.
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;
/// Start of the device-specific configuration space.
pub const CONFIG_SPACE_OFFSET: u64 = 0x100;

/// The Linux kernel command-line parameter that makes the guest probe a virtio-mmio device
/// at `base` with interrupt line `irq` (no ACPI/device tree needed), e.g.
/// `virtio_mmio.device=4K@0xd0000000:5`.
pub fn kernel_cmdline_device(base: u64, irq: u32) -> String {
    format!(
        "virtio_mmio.device={}K@{base:#x}:{irq}",
        MMIO_WINDOW_SIZE / 1024
    )
}

/// Register offsets (virtio 1.2 §4.2.2, table "MMIO Device Register Layout").
pub mod regs {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const QUEUE_RESET: u64 = 0x0c0;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
}

/// Errors creating a transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// Creating an EventFd failed.
    #[error("cannot create eventfd: {0}")]
    EventFd(#[source] io::Error),
    /// The device declared a queue max size that is not a power of two in 1..=32768.
    #[error("queue {index} has invalid max size {size}")]
    InvalidQueueMaxSize {
        /// Queue index.
        index: usize,
        /// Declared max size.
        size: u16,
    },
    /// The device does not offer VIRTIO_F_VERSION_1, which a modern transport requires.
    #[error("device does not offer VIRTIO_F_VERSION_1")]
    NoVersion1,
}

/// Driver-written configuration of one queue, kept as raw register values and only turned
/// into a [`Queue`] (and validated) at DRIVER_OK.
#[derive(Clone, Debug, PartialEq, Eq)]
struct QueueConfig {
    max_size: u16,
    size: u16,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

impl QueueConfig {
    fn new(max_size: u16) -> Self {
        QueueConfig {
            max_size,
            // Spec: QueueNum starts at QueueNumMax, so a driver may skip writing it.
            size: max_size,
            ready: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }

    /// Builds a validated queue from the driver's configuration.
    fn build(&self, mem: &GuestMemoryMmap, event_idx: bool) -> Result<Queue, String> {
        let mut q = Queue::new(self.max_size).map_err(|e| format!("max size: {e}"))?;
        q.try_set_size(self.size)
            .map_err(|e| format!("size {}: {e}", self.size))?;
        q.try_set_desc_table_address(GuestAddress(self.desc))
            .map_err(|e| format!("descriptor table {:#x}: {e}", self.desc))?;
        q.try_set_avail_ring_address(GuestAddress(self.driver))
            .map_err(|e| format!("driver area {:#x}: {e}", self.driver))?;
        q.try_set_used_ring_address(GuestAddress(self.device))
            .map_err(|e| format!("device area {:#x}: {e}", self.device))?;
        // virtio-queue treats an available ring at address 0 as "not configured" and would
        // silently never process the queue; refuse it instead.
        if self.driver == 0 {
            return Err("driver area at guest address 0".into());
        }
        q.set_event_idx(event_idx);
        q.set_ready(true);
        // Checks that the descriptor table and both rings lie inside guest memory.
        if !q.is_valid(mem) {
            return Err(format!(
                "rings not inside guest memory (desc {:#x}, driver {:#x}, device {:#x}, size {})",
                self.desc, self.driver, self.device, self.size
            ));
        }
        Ok(q)
    }
}

/// A virtio device behind the virtio-mmio (version 2) register interface.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queue_evts: Vec<EventFd>,

    // Cached from the device at construction: they must not change while a driver runs.
    device_type: u32,
    device_features: u64,

    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    /// The driver wrote a non-zero value to a feature word beyond bit 63, which the device
    /// cannot offer; FEATURES_OK is refused.
    driver_features_invalid: bool,
    queue_sel: u32,
    queues: Vec<QueueConfig>,
    status: u32,
    /// Activation failed; DEVICE_NEEDS_RESET is reported until the driver resets.
    needs_reset: bool,
    config_generation: u32,
    shm_sel: u32,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device_type)
            .field("status", &self.status)
            .field("queues", &self.queues)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// Wraps `device`. `mem` is the guest memory the device's queues and buffers live in.
    ///
    /// Creates one notification EventFd per queue ([`Self::queue_events`]) and the device's
    /// interrupt ([`Self::interrupt`]); both stay the same for the transport's lifetime, across
    /// device resets, so the vmm registers them with KVM once.
    pub fn new(
        mem: GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
    ) -> Result<Self, MmioError> {
        let (device_type, device_features, max_sizes) = {
            let d = lock(&device);
            (
                d.device_type(),
                d.device_features(),
                d.queue_max_sizes().to_vec(),
            )
        };
        if device_features & (1 << features::VERSION_1) == 0 {
            return Err(MmioError::NoVersion1);
        }
        for (index, &size) in max_sizes.iter().enumerate() {
            if Queue::new(size).is_err() {
                return Err(MmioError::InvalidQueueMaxSize { index, size });
            }
        }
        let queue_evts = max_sizes
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()
            .map_err(MmioError::EventFd)?;
        let interrupt = Arc::new(Interrupt::new().map_err(MmioError::EventFd)?);
        Ok(MmioTransport {
            device,
            mem,
            interrupt,
            queue_evts,
            device_type,
            device_features,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            driver_features_invalid: false,
            queue_sel: 0,
            queues: max_sizes.into_iter().map(QueueConfig::new).collect(),
            status: 0,
            needs_reset: false,
            config_generation: 0,
            shm_sel: 0,
        })
    }

    /// One EventFd per queue, in queue order. Register each as a KVM ioeventfd at
    /// `base + QUEUE_NOTIFY_OFFSET`, length 4, datamatch = queue index. A QueueNotify write
    /// that reaches the transport (no ioeventfd registered) signals the same EventFd.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The device's interrupt; register `interrupt().eventfd()` as a KVM irqfd.
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// Creates the event-manager subscriber that processes this device's queues; add it to
    /// the vmm's `EventManager` (wrapped in `Arc<Mutex<_>>`).
    pub fn event_handler(&self) -> io::Result<super::QueueEventHandler> {
        let evts = self
            .queue_evts
            .iter()
            .map(EventFd::try_clone)
            .collect::<io::Result<Vec<_>>>()?;
        Ok(super::QueueEventHandler::new(self.device.clone(), evts))
    }

    /// The wrapped device.
    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    /// Current value of the Status register.
    pub fn status(&self) -> u32 {
        let mut s = self.status;
        if self.needs_reset || lock(&self.device).needs_reset() {
            s |= status::DEVICE_NEEDS_RESET;
        }
        s
    }

    /// Tells the driver the device configuration changed (e.g. the disk was resized): bumps
    /// ConfigGeneration and raises a configuration-change interrupt if the driver is running.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & status::DRIVER_OK != 0 {
            self.raise_config_interrupt();
        }
    }

    fn raise_config_interrupt(&self) {
        if let Err(e) = self.interrupt.trigger(InterruptType::ConfigChange) {
            warn!("virtio-mmio: cannot signal config interrupt: {e}");
        }
    }

    fn selected_queue(&self) -> Option<&QueueConfig> {
        self.queues.get(self.queue_sel as usize)
    }

    fn read_reg(&self, offset: u64) -> u32 {
        match offset {
            regs::MAGIC_VALUE => MAGIC_VALUE,
            regs::VERSION => MMIO_VERSION,
            regs::DEVICE_ID => self.device_type,
            regs::VENDOR_ID => VENDOR_ID,
            regs::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features as u32,
                1 => (self.device_features >> 32) as u32,
                _ => 0,
            },
            // Spec: 0 for a queue that is not available.
            regs::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| q.max_size.into()),
            regs::QUEUE_READY => self.selected_queue().map_or(0, |q| q.ready.into()),
            regs::INTERRUPT_STATUS => self.interrupt.status(),
            regs::STATUS => self.status(),
            // No shared memory regions: spec says a non-existent region has length -1.
            regs::SHM_LEN_LOW | regs::SHM_LEN_HIGH | regs::SHM_BASE_LOW | regs::SHM_BASE_HIGH => {
                u32::MAX
            }
            // VIRTIO_F_RING_RESET is never offered.
            regs::QUEUE_RESET => 0,
            regs::CONFIG_GENERATION => self.config_generation,
            _ => {
                warn!("virtio-mmio: read of write-only or unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            regs::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            regs::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            regs::DRIVER_FEATURES => self.write_driver_features(v),
            regs::QUEUE_SEL => self.queue_sel = v,
            regs::QUEUE_NUM
            | regs::QUEUE_READY
            | regs::QUEUE_DESC_LOW
            | regs::QUEUE_DESC_HIGH
            | regs::QUEUE_DRIVER_LOW
            | regs::QUEUE_DRIVER_HIGH
            | regs::QUEUE_DEVICE_LOW
            | regs::QUEUE_DEVICE_HIGH => self.write_queue_reg(offset, v),
            regs::QUEUE_NOTIFY => self.notify(v),
            regs::INTERRUPT_ACK => {
                if v & !INT_ALL != 0 {
                    warn!("virtio-mmio: InterruptACK with unknown bits {v:#x}");
                }
                self.interrupt.ack(v);
            }
            regs::STATUS => self.write_status(v),
            regs::SHM_SEL => self.shm_sel = v,
            _ => warn!("virtio-mmio: write {v:#x} to read-only or unknown register {offset:#x}"),
        }
    }

    fn write_driver_features(&mut self, v: u32) {
        // Features are negotiated after DRIVER and before FEATURES_OK (spec §3.1.1).
        let negotiating = status::ACKNOWLEDGE | status::DRIVER;
        if self.status != negotiating || self.needs_reset {
            warn!(
                "virtio-mmio: DriverFeatures write in status {:#x} ignored",
                self.status
            );
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32),
            sel => {
                if v != 0 {
                    warn!(
                        "virtio-mmio: driver accepted features {v:#x} in word {sel}, none offered"
                    );
                    self.driver_features_invalid = true;
                }
            }
        }
    }

    fn write_queue_reg(&mut self, offset: u64, v: u32) {
        let status = self.status;
        let sel = self.queue_sel;
        let Some(q) = self.queues.get_mut(sel as usize) else {
            warn!("virtio-mmio: write to register {offset:#x} for nonexistent queue {sel}");
            return;
        };
        // Writing 0 to QueueReady of a queue that is not ready is a no-op (Linux does it when
        // tearing down queues after a reset); accept it in any state without noise.
        if offset == regs::QUEUE_READY && v == 0 && !q.ready {
            return;
        }
        // Queues are set up after FEATURES_OK and before DRIVER_OK (spec §3.1.1).
        let setup = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        if status != setup || self.needs_reset {
            warn!(
                "virtio-mmio: queue {sel} register {offset:#x} write in status {status:#x} ignored"
            );
            return;
        }
        if q.ready && offset != regs::QUEUE_READY {
            warn!(
                "virtio-mmio: queue {sel} register {offset:#x} write while queue is ready ignored"
            );
            return;
        }
        let lo = |old: u64| (old & !0xffff_ffff) | u64::from(v);
        let hi = |old: u64| (old & 0xffff_ffff) | (u64::from(v) << 32);
        match offset {
            regs::QUEUE_NUM => match u16::try_from(v) {
                // Validity (power of two, <= max) is checked at DRIVER_OK.
                Ok(size) => q.size = size,
                Err(_) => {
                    warn!("virtio-mmio: queue {sel} size {v} out of range");
                    // Keep an invalid size so activation fails rather than using a stale one.
                    q.size = 0;
                }
            },
            regs::QUEUE_READY => match v {
                0 | 1 => q.ready = v == 1,
                _ => warn!("virtio-mmio: queue {sel} QueueReady value {v} ignored"),
            },
            regs::QUEUE_DESC_LOW => q.desc = lo(q.desc),
            regs::QUEUE_DESC_HIGH => q.desc = hi(q.desc),
            regs::QUEUE_DRIVER_LOW => q.driver = lo(q.driver),
            regs::QUEUE_DRIVER_HIGH => q.driver = hi(q.driver),
            regs::QUEUE_DEVICE_LOW => q.device = lo(q.device),
            regs::QUEUE_DEVICE_HIGH => q.device = hi(q.device),
            _ => unreachable!("write_queue_reg called for {offset:#x}"),
        }
    }

    fn notify(&mut self, v: u32) {
        let Some(evt) = self.queue_evts.get(v as usize) else {
            warn!("virtio-mmio: notify for nonexistent queue {v}");
            return;
        };
        if self.status & status::DRIVER_OK == 0 || self.needs_reset {
            warn!("virtio-mmio: notify for queue {v} while device inactive ignored");
            return;
        }
        if let Err(e) = evt.write(1) {
            warn!("virtio-mmio: cannot signal queue {v} event: {e}");
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // DEVICE_NEEDS_RESET belongs to the device; drivers may echo it back.
        let v = v & !status::DEVICE_NEEDS_RESET;
        let old = self.status;
        if old & status::FAILED != 0 || self.status() & status::DEVICE_NEEDS_RESET != 0 {
            warn!("virtio-mmio: status write {v:#x} in status {old:#x} ignored, reset required");
            return;
        }
        if v & old != old {
            warn!("virtio-mmio: status write {v:#x} clears bits of {old:#x}; ignored");
            return;
        }
        if v & status::FAILED != 0 {
            info!("virtio-mmio: driver set FAILED (status {v:#x})");
            self.status = old | status::FAILED;
            return;
        }
        // Bits are set in this order; anything else (e.g. DRIVER_OK without FEATURES_OK,
        // which would be a legacy driver) is refused.
        const STEPS: [u32; 4] = [
            status::ACKNOWLEDGE,
            status::ACKNOWLEDGE | status::DRIVER,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        ];
        if !STEPS.contains(&v) {
            warn!("virtio-mmio: invalid status transition {old:#x} -> {v:#x}; ignored");
            return;
        }
        let new_bits = v & !old;
        if new_bits & status::FEATURES_OK != 0 && !self.features_acceptable() {
            // The driver re-reads Status and gives up when FEATURES_OK did not stick.
            self.status = v & !(status::FEATURES_OK | status::DRIVER_OK);
            return;
        }
        self.status = v;
        if new_bits & status::DRIVER_OK != 0 {
            if let Err(e) = self.activate() {
                warn!(
                    "virtio-mmio: activation of device type {} failed: {e}",
                    self.device_type
                );
                self.needs_reset = true;
                // Spec §2.1.2: with DRIVER_OK set, NEEDS_RESET comes with a config interrupt.
                self.raise_config_interrupt();
            }
        }
    }

    fn features_acceptable(&self) -> bool {
        let unoffered = self.driver_features & !self.device_features;
        if unoffered != 0 || self.driver_features_invalid {
            warn!(
                "virtio-mmio: driver accepted features {:#x} not offered ({:#x})",
                unoffered, self.device_features
            );
            return false;
        }
        if self.driver_features & (1 << features::VERSION_1) == 0 {
            warn!("virtio-mmio: driver did not accept VIRTIO_F_VERSION_1 (legacy driver?)");
            return false;
        }
        true
    }

    fn activate(&mut self) -> Result<(), ActivateError> {
        let event_idx = self.driver_features & (1 << features::RING_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, cfg) in self.queues.iter().enumerate() {
            if cfg.ready {
                let q = cfg
                    .build(&self.mem, event_idx)
                    .map_err(|reason| ActivateError::InvalidQueue { index, reason })?;
                queues.push(q);
            } else {
                // Cannot fail: the max size was validated in `new`.
                let q = Queue::new(cfg.max_size).map_err(|e| ActivateError::InvalidQueue {
                    index,
                    reason: e.to_string(),
                })?;
                queues.push(q);
            }
        }
        lock(&self.device).activate(
            self.mem.clone(),
            queues,
            self.interrupt.clone(),
            self.driver_features,
        )?;
        debug!(
            "virtio-mmio: device type {} activated, features {:#x}",
            self.device_type, self.driver_features
        );
        // The driver may have made buffers available before DRIVER_OK; kick every ready
        // queue once so the event loop looks at it.
        for (cfg, evt) in self.queues.iter().zip(&self.queue_evts) {
            if cfg.ready {
                if let Err(e) = evt.write(1) {
                    warn!("virtio-mmio: cannot kick queue after activation: {e}");
                }
            }
        }
        Ok(())
    }

    /// Device reset (status written with 0): the device drops everything it held and all
    /// driver-written state goes back to its initial value.
    fn reset(&mut self) {
        lock(&self.device).reset();
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.driver_features_invalid = false;
        self.queue_sel = 0;
        for q in &mut self.queues {
            *q = QueueConfig::new(q.max_size);
        }
        self.status = 0;
        self.needs_reset = false;
        self.shm_sel = 0;
        self.interrupt.clear();
        // Drop notifications that arrived before the reset so they are not mistaken for new
        // work after the next activation (EAGAIN: none pending).
        for evt in &self.queue_evts {
            let _ = evt.read();
        }
        debug!("virtio-mmio: device type {} reset", self.device_type);
    }
}

/// Locks the device, recovering from a poisoned mutex: a panic on another thread must not
/// turn every later guest register access into a panic too.
fn lock<'a>(
    device: &'a Mutex<dyn VirtioDevice + 'static>,
) -> MutexGuard<'a, dyn VirtioDevice + 'static> {
    device.lock().unwrap_or_else(|poisoned| {
        warn!("virtio-mmio: device mutex poisoned");
        poisoned.into_inner()
    })
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            if !matches!(data.len(), 1 | 2 | 4 | 8) {
                warn!(
                    "virtio-mmio: config read of {} bytes at {offset:#x}",
                    data.len()
                );
                data.fill(0);
                return;
            }
            lock(&self.device).read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        // Registers are 32 bits wide and must be accessed as such (spec §4.2.2.2).
        if data.len() != 4 || !offset.is_multiple_of(4) {
            warn!(
                "virtio-mmio: bad register read: {} bytes at {offset:#x}",
                data.len()
            );
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            if !matches!(data.len(), 1 | 2 | 4 | 8) {
                warn!(
                    "virtio-mmio: config write of {} bytes at {offset:#x}",
                    data.len()
                );
                return;
            }
            lock(&self.device).write_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            warn!(
                "virtio-mmio: bad register write: {} bytes at {offset:#x}",
                data.len()
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            warn!("virtio-mmio: unaligned register write at {offset:#x}");
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}
