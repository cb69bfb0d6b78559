//! Emulated devices for capsa guests: legacy PIO devices (serial, i8042, boot timer) and
//! virtio-mmio devices. Nothing here knows about KVM or OCI; the vmm crate wires devices to
//! buses, interrupts and the event loop.

pub mod abi;
pub mod bus;
pub mod legacy;
pub mod virtio;

pub use bus::BusDevice;
