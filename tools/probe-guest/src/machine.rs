//! Machine-level actions shared by all scenarios.

use crate::abi;
use crate::io::outb;

/// Tell the VMM the guest is up (it logs the time since its own start).
pub fn boot_timer() {
    outb(abi::BOOT_TIMER_PORT, abi::BOOT_TIMER_MAGIC);
}

/// Pulse the reset line through the i8042; the VMM stops the VM with exit status 0.
/// Entered through PVH (QEMU's `-M microvm`, which has no i8042), triple-fault instead:
/// with `-no-reboot` QEMU then exits with status 0.
pub fn reset() -> ! {
    if crate::boot::pvh_start_info() != 0 {
        crate::sys::triple_fault();
    }
    outb(abi::I8042_PORT_BASE + 4, abi::I8042_RESET_CMD);
    // The VMM should not run us again; if it does, stay put (HLT would fault at ring 3).
    loop {
        core::hint::spin_loop();
    }
}
