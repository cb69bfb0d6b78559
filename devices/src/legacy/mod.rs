//! Legacy PC devices on the port I/O bus.

mod boot_timer;
mod i8042;
mod serial;

pub use boot_timer::BootTimer;
pub use i8042::I8042;
pub use serial::{EventFdTrigger, Serial};
