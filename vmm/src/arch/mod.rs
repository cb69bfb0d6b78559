//! x86_64 machine definition: memory layout, boot-time CPU state, CPUID, MSRs, MP table and
//! the Linux boot protocol.

pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
