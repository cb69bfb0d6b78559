//! The interface between a bus (owned by the vmm) and a device.

/// A device that sits on the PIO or MMIO bus.
///
/// `offset` is relative to the base address the device was registered at, so a device does
/// not need to know where it lives. Accesses are at most 8 bytes wide. A device must treat
/// every offset and length as guest-controlled: unknown registers read as zero (or all ones
/// where the hardware does) and writes to them are ignored, never a panic.
pub trait BusDevice: Send {
    /// Guest read of `data.len()` bytes at `offset`; fill `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}
