//! What CPUID shows the guest (as set by the VMM with KVM_SET_CPUID2).

use super::{Ctx, Outcome};
use crate::io::{self, Cpuid};
use crate::line::Line;
use crate::serial;
use crate::sys;

fn regs_bytes(regs: [u32; 3]) -> [u8; 12] {
    let mut out = [0u8; 12];
    for (i, r) in regs.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&r.to_le_bytes());
    }
    out
}

/// Signature text up to the first NUL, or `none` if empty.
fn sig(l: &mut Line, b: &[u8]) {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    if end == 0 {
        l.str("none");
    } else {
        l.bytes(&b[..end]);
    }
}

fn line(prefix: &str, cpuid: fn(u32, u32) -> Cpuid) {
    let l0 = cpuid(0, 0);
    let hv = cpuid(0x4000_0000, 0);
    let l1 = cpuid(1, 0);
    let mut l = Line::new();
    l.str(prefix).str(" vendor=");
    sig(&mut l, &regs_bytes([l0.ebx, l0.edx, l0.ecx]));
    l.str(" hypervisor=");
    sig(&mut l, &regs_bytes([hv.ebx, hv.ecx, hv.edx]));
    l.str(" apic_id=")
        .dec(u64::from(l1.ebx >> 24))
        .str(" cx16=")
        .flag(l1.ecx & (1 << 13) != 0)
        .str(" logical_count=")
        .dec(u64::from((l1.ebx >> 16) & 0xff));
    serial::println(&mut l);
}

pub fn run(_: &Ctx) -> Outcome {
    // What the VMM configured: CPUID at ring 0 exits to KVM.
    line("PROBE-CPUID:", sys::cpuid);
    // What ring 3 sees directly; differs on PVM, where ring-3 CPUID is not intercepted.
    line("PROBE-CPUID-RING3:", io::cpuid);
    Ok(())
}
