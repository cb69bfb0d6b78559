//! Scenarios that need no hardware beyond the serial port.

use super::{Ctx, Outcome};
use crate::line::LineBuf;
use crate::{serial, sys};

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

/// Triple-fault the vCPU (a ring-0 service loads an empty IDT and raises #UD), so the VMM
/// sees KVM_EXIT_SHUTDOWN.
pub fn fault(_: &Ctx) -> Outcome {
    serial::println_str("PROBE-FAULT: triple fault next");
    sys::triple_fault()
}
