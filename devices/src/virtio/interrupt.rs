//! Device-to-driver interrupts for virtio-mmio.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the device interrupts the driver (bits of the InterruptStatus register).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptType {
    /// The device used a buffer in at least one queue.
    UsedBuffer,
    /// The device configuration (or DEVICE_NEEDS_RESET) changed.
    ConfigChange,
}

impl InterruptType {
    /// The InterruptStatus bit for this type.
    pub const fn bit(self) -> u32 {
        match self {
            InterruptType::UsedBuffer => INT_USED_BUFFER,
            InterruptType::ConfigChange => INT_CONFIG_CHANGE,
        }
    }
}

/// InterruptStatus bit 0.
pub const INT_USED_BUFFER: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
/// InterruptStatus bit 1.
pub const INT_CONFIG_CHANGE: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG;
/// All bits a driver can acknowledge.
pub const INT_ALL: u32 = INT_USED_BUFFER | INT_CONFIG_CHANGE;

/// The interrupt line of one virtio-mmio device: the InterruptStatus register plus the
/// EventFd the vmm registers as a KVM irqfd.
///
/// Status bits are set before the EventFd is signalled so a guest handler woken by the
/// interrupt always sees why it fired.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    evt: EventFd,
}

impl Interrupt {
    /// Creates an interrupt with no pending status. The EventFd is non-blocking so tests and
    /// resets can drain it without hanging.
    pub fn new() -> io::Result<Self> {
        Ok(Interrupt {
            status: AtomicU32::new(0),
            evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Sets the status bit for `kind` and signals the guest.
    pub fn trigger(&self, kind: InterruptType) -> io::Result<()> {
        self.status.fetch_or(kind.bit(), Ordering::SeqCst);
        self.evt.write(1)
    }

    /// Current InterruptStatus value.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears the given status bits; unknown bits are ignored.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!(bits & INT_ALL), Ordering::SeqCst);
    }

    /// Clears all pending status (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
        // A pending irqfd count would make KVM inject one more (spurious) interrupt; drain
        // it. EAGAIN just means nothing was pending.
        let _ = self.evt.read();
    }

    /// The EventFd to register as the device's KVM irqfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_sets_status_and_signals() {
        let irq = Interrupt::new().unwrap();
        assert_eq!(irq.status(), 0);
        assert!(irq.eventfd().read().is_err(), "nothing pending yet");

        irq.trigger(InterruptType::UsedBuffer).unwrap();
        irq.trigger(InterruptType::ConfigChange).unwrap();
        assert_eq!(irq.status(), INT_USED_BUFFER | INT_CONFIG_CHANGE);
        assert_eq!(irq.eventfd().read().unwrap(), 2);

        irq.ack(INT_USED_BUFFER | 0xf0);
        assert_eq!(irq.status(), INT_CONFIG_CHANGE);
        irq.ack(INT_CONFIG_CHANGE);
        assert_eq!(irq.status(), 0);
    }

    #[test]
    fn clear_drops_pending_status_and_signal() {
        let irq = Interrupt::new().unwrap();
        irq.trigger(InterruptType::UsedBuffer).unwrap();
        irq.clear();
        assert_eq!(irq.status(), 0);
        assert!(irq.eventfd().read().is_err());
    }
}
