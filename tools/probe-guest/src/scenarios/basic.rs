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

/// Read one line of serial input (host stdin) and print it back, to test the input path.
pub fn echo(_: &Ctx) -> Outcome {
    serial::println_str("PROBE-ECHO: ready");
    let mut buf = [0u8; 256];
    let mut n = 0;
    loop {
        let b = serial::get();
        if b == b'\n' {
            break;
        }
        if n == buf.len() {
            return Err("input line longer than 256 bytes");
        }
        buf[n] = b;
        n += 1;
    }
    let mut l = LineBuf::<300>::new();
    l.str("PROBE-ECHO: ")
        .bytes(&buf[..n])
        .str(" len=")
        .dec(n as u64);
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
