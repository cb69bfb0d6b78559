//! Fixed guest-visible addresses and values shared by the VMM and the probe guest.
//!
//! This file has no dependencies on purpose: the freestanding probe guest
//! (`tools/probe-guest`) includes it with `#[path]`, so both sides use the same numbers.

/// COM1 16550 UART.
pub const SERIAL_PORT_BASE: u16 = 0x3f8;
/// Ports occupied by the UART.
pub const SERIAL_PORT_LEN: u16 = 8;
/// Legacy IRQ line of COM1.
pub const SERIAL_IRQ: u32 = 4;

/// i8042 keyboard controller (data port 0x60, command/status port 0x64).
pub const I8042_PORT_BASE: u16 = 0x60;
/// The i8042 occupies 0x60..=0x64.
pub const I8042_PORT_LEN: u16 = 5;
/// Writing this command byte to port 0x64 pulses the CPU reset line.
pub const I8042_RESET_CMD: u8 = 0xfe;

/// Boot timer: the guest writes [`BOOT_TIMER_MAGIC`] (one byte) to this port once it is up
/// (the probe guest on entering ring 3, the guest agent when it is ready to serve), and the
/// VMM logs the time since its own process started. The port is otherwise unused on PCs.
pub const BOOT_TIMER_PORT: u16 = 0x440;
/// Value the guest writes to [`BOOT_TIMER_PORT`].
pub const BOOT_TIMER_MAGIC: u8 = 123;
/// Value the probe guest writes to [`BOOT_TIMER_PORT`] with its very first instructions,
/// so the VMM (or a benchmark watching the port) sees when guest code started to run.
pub const BOOT_TIMER_ENTRY: u8 = 1;
