//! vCPUs: boot configuration and the per-vCPU run loop that dispatches exits to the buses.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use kvm_bindings::CpuId;
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::{cpuid, msr, regs};
use crate::bus::Bus;

/// Errors configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuConfigError {
    /// A KVM ioctl failed.
    #[error("vCPU {index}: {op} failed: {source}")]
    Kvm {
        /// vCPU index.
        index: u8,
        /// Which call.
        op: &'static str,
        /// errno.
        source: kvm_ioctls::Error,
    },
    /// KVM accepted fewer MSRs than given.
    #[error("vCPU {index}: KVM set only {set} of {wanted} boot MSRs")]
    Msrs {
        /// vCPU index.
        index: u8,
        /// Accepted.
        set: usize,
        /// Given.
        wanted: usize,
    },
    /// Boot structures did not fit in memory.
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
}

/// Why a vCPU stopped running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuEnd {
    /// Asked to stop by the VMM.
    Stopped,
    /// The guest asked KVM for a shutdown (KVM_SYSTEM_EVENT_SHUTDOWN).
    GuestShutdown,
    /// The guest asked KVM for a reset (KVM_SYSTEM_EVENT_RESET).
    GuestReset,
    /// A fatal condition, with a human-readable description.
    Fatal(String),
}

/// State shared between the VMM thread and the vCPU threads.
pub struct VcpuShared {
    /// Set by the VMM to make every vCPU leave its run loop.
    pub stop: AtomicBool,
    /// Written by a vCPU thread when it ends on its own (guest event, error or panic).
    pub exit_evt: EventFd,
    /// Why each vCPU ended, in order.
    pub ends: Mutex<Vec<(u8, VcpuEnd)>>,
    /// Port I/O bus.
    pub pio: Bus,
    /// MMIO bus.
    pub mmio: Bus,
}

/// A configured vCPU, ready to be moved into its thread.
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
}

const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;

impl Vcpu {
    /// Creates vCPU `index` and loads its boot state: CPUID (from `supported`, with
    /// `masks` applied), MSRs, registers at `entry`, FPU, segments/paging, LAPIC LINTs.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        supported: &CpuId,
        masks: &[cpuid::FeatureMask],
        index: u8,
        count: u8,
        entry: u64,
    ) -> Result<Self, VcpuConfigError> {
        let e = |op| move |source| VcpuConfigError::Kvm { index, op, source };
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(e("KVM_CREATE_VCPU"))?;
        let cpuid = cpuid::vcpu_cpuid(supported, index, count, masks);
        fd.set_cpuid2(&cpuid).map_err(e("KVM_SET_CPUID2"))?;
        let msrs = msr::boot_msrs();
        let set = fd.set_msrs(&msrs).map_err(e("KVM_SET_MSRS"))?;
        if set != msrs.as_slice().len() {
            return Err(VcpuConfigError::Msrs {
                index,
                set,
                wanted: msrs.as_slice().len(),
            });
        }
        // Application processors wait for INIT/SIPI; their registers are set by the SIPI,
        // so only the boot processor gets the boot-protocol entry state.
        if index == 0 {
            fd.set_regs(&regs::boot_regs(entry))
                .map_err(e("KVM_SET_REGS"))?;
            fd.set_fpu(&regs::boot_fpu()).map_err(e("KVM_SET_FPU"))?;
            let sregs = fd.get_sregs().map_err(e("KVM_GET_SREGS"))?;
            let sregs = regs::boot_sregs(mem, sregs)?;
            fd.set_sregs(&sregs).map_err(e("KVM_SET_SREGS"))?;
        }
        let mut lapic = fd.get_lapic().map_err(e("KVM_GET_LAPIC"))?;
        regs::set_lint(&mut lapic);
        fd.set_lapic(&lapic).map_err(e("KVM_SET_LAPIC"))?;
        Ok(Vcpu { index, fd })
    }

    /// This vCPU's index (and APIC id).
    pub fn index(&self) -> u8 {
        self.index
    }

    /// Thread body: runs the guest until stopped or until the guest ends, then reports why
    /// in `shared` and signals `shared.exit_evt`. A panic in exit handling is caught and
    /// reported the same way, so one bad device access cannot hang the VMM.
    pub fn run(
        mut self,
        shared: Arc<VcpuShared>,
        hook: Option<crate::ThreadHook>,
        start: Arc<crate::StartGate>,
    ) {
        let index = self.index;
        let body = || {
            let setup = hook
                .as_ref()
                .map_or(Ok(()), |h| h(crate::ThreadRole::Vcpu(index)))
                .map_err(|e| format!("vCPU {index} thread setup failed: {e}"));
            if start.report_and_wait(&setup) {
                self.run_loop(&shared)
            } else {
                VcpuEnd::Stopped
            }
        };
        let end = match catch_unwind(AssertUnwindSafe(body)) {
            Ok(end) => end,
            Err(p) => {
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic payload".into());
                VcpuEnd::Fatal(format!("vCPU {index} thread panicked: {msg}"))
            }
        };
        tracing::debug!(vcpu = index, ?end, "vCPU thread ending");
        shared
            .ends
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((index, end));
        if let Err(e) = shared.exit_evt.write(1) {
            tracing::error!("vCPU {index}: cannot signal exit: {e}");
        }
    }

    fn run_loop(&mut self, shared: &VcpuShared) -> VcpuEnd {
        loop {
            if shared.stop.load(Ordering::Acquire) {
                return VcpuEnd::Stopped;
            }
            let fatal = match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    if !shared.pio.read(u64::from(port), data) {
                        // Nothing decodes the port: the ISA bus floats high.
                        data.fill(0xff);
                    }
                    continue;
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    if !shared.pio.write(u64::from(port), data) {
                        tracing::trace!(port, "write to unclaimed port");
                    }
                    continue;
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if !shared.mmio.read(addr, data) {
                        tracing::debug!(addr, "read from unclaimed MMIO address");
                        data.fill(0);
                    }
                    continue;
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    if !shared.mmio.write(addr, data) {
                        tracing::debug!(addr, "write to unclaimed MMIO address");
                    }
                    continue;
                }
                Ok(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, _)) => {
                    return VcpuEnd::GuestShutdown
                }
                Ok(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, _)) => {
                    return VcpuEnd::GuestReset
                }
                Ok(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_CRASH, _)) => {
                    "the guest reported a crash (KVM_SYSTEM_EVENT_CRASH)".to_string()
                }
                Ok(VcpuExit::Shutdown) => {
                    "triple fault (KVM_EXIT_SHUTDOWN): the guest hit an exception it could not handle"
                        .to_string()
                }
                Ok(VcpuExit::InternalError) => {
                    let run = self.fd.get_kvm_run();
                    // SAFETY: KVM_EXIT_INTERNAL_ERROR fills the `internal` member of the
                    // exit union; the kernel wrote it before returning from KVM_RUN.
                    let internal = unsafe { run.__bindgen_anon_1.internal };
                    let n = (internal.ndata as usize).min(internal.data.len());
                    format!(
                        "KVM internal error, suberror {} ({}), data {:x?}",
                        internal.suberror,
                        internal_error_name(internal.suberror),
                        &internal.data[..n]
                    )
                }
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    format!("KVM_EXIT_FAIL_ENTRY: hardware entry failure reason {reason:#x} on host cpu {cpu}")
                }
                Ok(VcpuExit::Hlt) => {
                    "the vCPU executed HLT with interrupts disabled (KVM_EXIT_HLT)".to_string()
                }
                Ok(VcpuExit::Intr) => continue,
                Ok(other) => format!("unexpected KVM exit {other:?}"),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    // Kicked by the VMM (or a spurious signal): re-check the stop flag.
                    self.fd.set_kvm_immediate_exit(0);
                    continue;
                }
                Err(e) => format!("KVM_RUN failed: {e}"),
            };
            self.dump_registers();
            return VcpuEnd::Fatal(format!("vCPU {}: {fatal}", self.index));
        }
    }

    fn dump_registers(&self) {
        if !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        match (self.fd.get_regs(), self.fd.get_sregs()) {
            (Ok(r), Ok(s)) => tracing::debug!(
                vcpu = self.index,
                "registers: rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} rbp={:#x} r8={:#x} r9={:#x} r10={:#x} r11={:#x} r12={:#x} r13={:#x} r14={:#x} r15={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x} (dpl {}) ss={:#x} tr={:#x} gdt={:#x}/{:#x} idt={:#x}/{:#x}",
                r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp,
                r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15,
                s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.cs.selector, s.cs.dpl, s.ss.selector,
                s.tr.selector, s.gdt.base, s.gdt.limit, s.idt.base, s.idt.limit
            ),
            (r, s) => tracing::debug!(vcpu = self.index, "cannot read registers: {r:?} {s:?}"),
        }
    }
}

fn internal_error_name(suberror: u32) -> &'static str {
    match suberror {
        1 => "emulation failure: the instruction could not be emulated",
        2 => "simultaneous exceptions",
        3 => "delivery event via the IDT failed",
        4 => "unexpected VM exit",
        _ => "unknown",
    }
}
