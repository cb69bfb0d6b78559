//! virtio devices (virtio 1.2, "modern" only) and the virtio-mmio transport (MMIO version 2).
//!
//! How the pieces fit together:
//!
//! * A device model (e.g. [`block::Block`]) implements [`VirtioDevice`]: it describes itself
//!   (type, queues, features, config space) and, once activated, processes its queues.
//! * [`mmio::MmioTransport`] implements [`crate::BusDevice`]: it owns the guest-visible register
//!   state (feature negotiation, status machine, queue setup) and activates / resets the device.
//!   It also owns the per-queue notification [`EventFd`](vmm_sys_util::eventfd::EventFd)s (the
//!   vmm turns them into KVM ioeventfds) and the device's [`Interrupt`] (the vmm turns its
//!   EventFd into a KVM irqfd).
//! * [`handler::QueueEventHandler`] is the event-manager subscriber that waits on the queue
//!   EventFds on the vmm's event-loop thread and calls [`VirtioDevice::process_queue`].

pub mod block;
mod drain;
pub mod fs;
pub mod handler;
mod interrupt;
pub mod mmio;
pub mod vsock;

#[cfg(test)]
pub(crate) mod test_utils;

use virtio_queue::Queue;

pub use handler::QueueEventHandler;
pub use interrupt::{Interrupt, InterruptType};
pub use mmio::MmioTransport;

/// Guest memory as seen by virtio devices.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Device status bits (virtio 1.2 §2.1).
pub mod status {
    use virtio_bindings::virtio_config as c;
    /// The guest OS has noticed the device.
    pub const ACKNOWLEDGE: u32 = c::VIRTIO_CONFIG_S_ACKNOWLEDGE;
    /// The guest OS knows how to drive the device.
    pub const DRIVER: u32 = c::VIRTIO_CONFIG_S_DRIVER;
    /// The driver is set up and ready to drive the device.
    pub const DRIVER_OK: u32 = c::VIRTIO_CONFIG_S_DRIVER_OK;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = c::VIRTIO_CONFIG_S_FEATURES_OK;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = c::VIRTIO_CONFIG_S_NEEDS_RESET;
    /// The driver gave up on the device.
    pub const FAILED: u32 = c::VIRTIO_CONFIG_S_FAILED;
}

/// Feature bit numbers shared by all device types.
pub mod features {
    use virtio_bindings::{virtio_config as c, virtio_ring as r};
    /// The device is a virtio 1.x device; mandatory for this transport.
    pub const VERSION_1: u32 = c::VIRTIO_F_VERSION_1;
    /// Indirect descriptor tables (handled transparently by virtio-queue).
    pub const RING_INDIRECT_DESC: u32 = r::VIRTIO_RING_F_INDIRECT_DESC;
    /// used_event / avail_event notification suppression.
    pub const RING_EVENT_IDX: u32 = r::VIRTIO_RING_F_EVENT_IDX;
}

/// Why a device refused to activate.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// A queue the driver marked ready has an invalid size or layout.
    #[error("queue {index} is invalid: {reason}")]
    InvalidQueue {
        /// Queue index.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A queue the device needs was not set up by the driver.
    #[error("queue {0} is required but was not marked ready")]
    QueueNotReady(usize),
    /// The device got a different number of queues than it asked for.
    #[error("expected {expected} queues, got {got}")]
    QueueCount {
        /// Queues the device has.
        expected: usize,
        /// Queues passed to `activate`.
        got: usize,
    },
    /// `activate` was called on an already active device.
    #[error("device is already active")]
    AlreadyActive,
}

/// A virtio device model, independent of the transport.
///
/// The transport serialises all calls through a mutex; `process_queue` is called from the
/// event-loop thread, everything else from vCPU threads.
pub trait VirtioDevice: Send {
    /// Virtio device ID (virtio 1.2 §5), e.g. 2 for block.
    fn device_type(&self) -> u32;

    /// Maximum size of each queue; the slice length is the number of queues.
    /// Every entry must be a power of two in 1..=32768.
    fn queue_max_sizes(&self) -> &[u16];

    /// Feature bits offered to the driver. Must include [`features::VERSION_1`].
    fn device_features(&self) -> u64;

    /// Guest read of the device-specific configuration space. `offset` is relative to the
    /// start of the config space; out-of-range bytes read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Guest write to the device-specific configuration space.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Starts the device after the driver set DRIVER_OK.
    ///
    /// `queues` has one entry per queue (same order as [`Self::queue_max_sizes`]); queues the
    /// driver did not mark ready are passed in their reset state with `ready() == false`. Every
    /// ready queue has been validated against `mem`. `acked_features` is what the driver
    /// accepted at FEATURES_OK.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: std::sync::Arc<Interrupt>,
        acked_features: u64,
    ) -> Result<(), ActivateError>;

    /// Returns the device to its pre-activation state, dropping everything `activate` handed
    /// over (queues, guest memory, interrupt). Must be idempotent.
    fn reset(&mut self);

    /// Whether `activate` succeeded and no reset happened since.
    fn is_activated(&self) -> bool;

    /// The driver notified queue `queue_index`. Called only while activated.
    fn process_queue(&mut self, queue_index: usize);

    /// The device hit an error it cannot recover from (e.g. a corrupt ring) and wants the
    /// driver to reset it; surfaces as DEVICE_NEEDS_RESET in the status register.
    fn needs_reset(&self) -> bool {
        false
    }
}

/// Copies the bytes of `space` at `offset` into `data` for a guest config read. Bytes past
/// the end of the space read as zero; a read starting or running past it is logged.
pub(crate) fn read_config_space(device: &str, space: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Some(start) = usize::try_from(offset).ok().filter(|s| *s < space.len()) else {
        tracing::warn!("{device}: config read at {offset:#x} beyond config space");
        return;
    };
    let end = start.saturating_add(data.len()).min(space.len());
    if end - start < data.len() {
        tracing::warn!("{device}: config read at {offset:#x} crosses end of config space");
    }
    data[..end - start].copy_from_slice(&space[start..end]);
}
