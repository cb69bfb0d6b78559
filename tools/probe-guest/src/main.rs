//! capsa probe guest: a freestanding x86_64 program booted like a Linux ELF vmlinux, used by
//! the fast integration tests. Ring 0 (emulated, slow on PVM) only installs the guest's own
//! GDT/TSS/IDT/page tables and drops to ring 3 (boot.S); everything here runs at ring 3.
//! See README.md for the boot contract and the output lines.

#![no_std]
#![no_main]

// Shared with the VMM so both sides use the same ports and values.
#[path = "../../../devices/src/abi.rs"]
#[allow(dead_code)]
mod abi;

mod boot;
mod bootparams;
mod check;
#[allow(dead_code)] // Parser helpers for scenarios to come.
mod cmdline;
mod dma;
#[allow(dead_code)] // Port/MMIO helpers for the virtio drivers to come.
mod io;
mod line;
mod machine;
mod mptable;
mod paging;
mod rt;
mod scenarios;
mod serial;
mod sys;
mod virtio;

use core::sync::atomic::{AtomicUsize, Ordering};

use bootparams::BootParams;
use cmdline::Cmdline;
use line::Line;

/// The running scenario's name, for the panic handler.
static NAME_PTR: AtomicUsize = AtomicUsize::new(0);
static NAME_LEN: AtomicUsize = AtomicUsize::new(0);

fn report(name: &[u8], outcome: scenarios::Outcome) {
    let mut l = Line::new();
    match outcome {
        Ok(()) => l.str("PROBE-RESULT: PASS ").bytes(name),
        Err(reason) => l
            .str("PROBE-RESULT: FAIL ")
            .bytes(name)
            .str(": ")
            .str(reason),
    };
    serial::println(&mut l);
}

/// Ring-3 entry, called by `ring3_entry` in boot.S with the zero page address.
#[no_mangle]
pub extern "C" fn probe_main(boot_params: u64) -> ! {
    serial::println_str("capsa-probe: ring3");
    machine::boot_timer();

    let pvh = boot::pvh_start_info();
    let boot = if pvh != 0 {
        // SAFETY: entered through pvh_start with EBX = hvm_start_info (PVH ABI); this is
        // the only call.
        unsafe { BootParams::from_pvh(pvh) }
    } else {
        // SAFETY: the VMM passes the zero page in RSI (64-bit boot protocol) and never
        // changes it afterwards.
        unsafe { BootParams::new(boot_params) }
    };
    let cmdline = Cmdline::new(boot.cmdline());
    dma::init(&boot);
    let name = cmdline.value("probe").unwrap_or(b"hello");
    NAME_PTR.store(name.as_ptr() as usize, Ordering::Relaxed);
    NAME_LEN.store(name.len(), Ordering::Relaxed);

    let ctx = scenarios::Ctx { boot, cmdline };
    let outcome = match scenarios::find(name) {
        Some(s) => (s.run)(&ctx),
        None => Err("unknown scenario"),
    };
    report(name, outcome);
    machine::reset()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let mut l = Line::new();
    l.str("PROBE-PANIC:");
    if let Some(loc) = info.location() {
        l.str(" ")
            .str(loc.file())
            .str(":")
            .dec(u64::from(loc.line()));
    }
    serial::println(&mut l);
    let (ptr, len) = (
        NAME_PTR.load(Ordering::Relaxed),
        NAME_LEN.load(Ordering::Relaxed),
    );
    let name: &[u8] = if ptr == 0 {
        b"?"
    } else {
        // SAFETY: set from a slice of the command line, which stays in place.
        unsafe { core::slice::from_raw_parts(ptr as *const u8, len) }
    };
    report(name, Err("panic"));
    machine::reset()
}
