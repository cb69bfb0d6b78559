//! Ring-0 services for the few things ring 3 cannot do or sees differently. PVM turns
//! `int n` at ring 3 into #UD, so a call is a `ud2` with a magic number in RAX, which the
//! #UD handler in boot.S recognises (`sys_entry`). Each call costs an exception plus a few
//! emulated ring-0 instructions on PVM.

use core::arch::asm;

use crate::io::Cpuid;

/// Must match SYS_MAGIC and the service numbers in boot.S.
const SYS_MAGIC: u64 = 0x5052_4f42 << 32;
const SYS_CPUID: u64 = 1;
const SYS_TRIPLE_FAULT: u64 = 2;

/// CPUID executed at ring 0, so the VM exits and the VMM's CPUID table answers. (On PVM,
/// CPUID at ring 3 is not intercepted and returns the host's values; see io::cpuid.)
pub fn cpuid(leaf: u32, subleaf: u32) -> Cpuid {
    let (eax, ebx, ecx, edx): (u64, u32, u32, u32);
    // SAFETY: the service returns with IRETQ right after the ud2, changing only
    // RAX/RBX/RCX/RDX (RBX is reserved by LLVM, so it is saved around the call). The
    // exception runs on the TSS stack, not ours.
    unsafe {
        asm!(
            "mov {tmp:r}, rbx",
            "ud2",
            "xchg {tmp:r}, rbx",
            tmp = out(reg) ebx,
            inout("rax") SYS_MAGIC | SYS_CPUID => eax,
            in("rdi") u64::from(leaf),
            in("rsi") u64::from(subleaf),
            out("ecx") ecx,
            out("edx") edx,
            options(nostack),
        );
    }
    Cpuid {
        eax: eax as u32,
        ebx,
        ecx,
        edx,
    }
}

/// Load an empty IDT at ring 0 and raise #UD there: the CPU shuts down (triple fault).
pub fn triple_fault() -> ! {
    // SAFETY: never returns; the VM stops.
    unsafe { asm!("ud2", in("rax") SYS_MAGIC | SYS_TRIPLE_FAULT, options(noreturn, nostack)) }
}
