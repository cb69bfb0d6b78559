//! Scenarios that need no hardware beyond the serial port.

use super::{Ctx, Outcome};
use crate::line::LineBuf;
use crate::{boot, serial};

/// Just reach ring 3 and report.
pub fn hello(_: &Ctx) -> Outcome {
    Ok(())
}

/// Echo the command line the VMM passed.
pub fn cmdline(ctx: &Ctx) -> Outcome {
    let mut l = LineBuf::<2200>::new();
    l.str("PROBE-CMDLINE: ").bytes(ctx.cmdline.as_bytes());
    serial::println(&mut l);
    Ok(())
}

/// Loop forever at ring 3, for the VMM's signal handling tests.
pub fn spin(_: &Ctx) -> Outcome {
    serial::println_str("PROBE-SPIN");
    loop {
        core::hint::spin_loop();
    }
}

/// Triple-fault the vCPU: ring 0 saw `probe=fault` and kept the VMM's IDT, whose limit is
/// 0, so #UD cannot be delivered, nor the #GP and #DF that follow.
pub fn fault(_: &Ctx) -> Outcome {
    if !boot::fault_mode() {
        return Err("ring 0 did not arm the fault (probe=fault must be the first probe= token)");
    }
    serial::println_str("PROBE-FAULT: triple fault next");
    // SAFETY: deliberately raises #UD; with no IDT the vCPU shuts down and nothing returns.
    unsafe { core::arch::asm!("ud2", options(noreturn)) }
}
