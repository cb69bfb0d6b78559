//! MP table check and AP start-up with INIT-SIPI-SIPI through the xAPIC (all at ring 3:
//! the LAPIC page is mapped with the User bit). APs run the trampoline from boot.S.

use core::sync::atomic::{AtomicU32, Ordering};

use super::{Ctx, Outcome};
use crate::boot::{self, AP_STARTED_OFFSET, AP_TRAMPOLINE_BASE};
use crate::io::{delay_us, rdtsc, tsc_hz, Mmio};
use crate::line::Line;
use crate::mptable::{self, MAX_CPUS};
use crate::serial;

const LAPIC_BASE: usize = 0xfee0_0000;
const LAPIC_ID: usize = 0x20;
const LAPIC_SVR: usize = 0xf0;
const LAPIC_ICR_LO: usize = 0x300;
const LAPIC_ICR_HI: usize = 0x310;
const SVR_ENABLE: u32 = 1 << 8;
const ICR_PENDING: u32 = 1 << 12;
/// INIT, level assert (edge triggered; KVM ignores the old de-assert dance).
const ICR_INIT: u32 = 0x0000_4500;
/// Start-up IPI; the low byte is the vector (page number of the trampoline).
const ICR_STARTUP: u32 = 0x0000_4600;
/// How long to wait for the APs.
const TIMEOUT_S: u64 = 2;

fn send_ipi(lapic: &Mmio, apic_id: u8, icr: u32) -> bool {
    lapic.write32(LAPIC_ICR_HI, u32::from(apic_id) << 24);
    lapic.write32(LAPIC_ICR_LO, icr);
    // Delivery is immediate under KVM; bounded anyway.
    for _ in 0..10_000 {
        if lapic.read32(LAPIC_ICR_LO) & ICR_PENDING == 0 {
            return true;
        }
        core::hint::spin_loop();
    }
    false
}

fn started_counter() -> &'static AtomicU32 {
    // SAFETY: a 4-byte aligned word of RAM in the trampoline page, which this scenario
    // owns; APs update it with a locked add.
    unsafe { &*((AP_TRAMPOLINE_BASE + AP_STARTED_OFFSET) as *const AtomicU32) }
}

pub fn run(_: &Ctx) -> Outcome {
    let info = mptable::read();
    let cpus = info.as_ref().map_or(0, |i| i.cpus);
    let mut l = Line::new();
    l.str("PROBE-SMP: mptable_cpus=").dec(cpus as u64);
    serial::println(&mut l);
    let info = info.map_err(|e| e.as_str())?;
    if cpus == 0 {
        return Err("MP table lists no enabled processor");
    }

    // The table's LAPIC address, if it gives one inside the MMIO window boot.S maps.
    let base = match info.lapic_addr as usize {
        a if a >= 0xd000_0000 && a & 0xfff == 0 => a,
        _ => LAPIC_BASE,
    };
    // SAFETY: the xAPIC register page, identity-mapped (uncached) by boot.S.
    let lapic = unsafe { Mmio::new(base) };
    let my_id = (lapic.read32(LAPIC_ID) >> 24) as u8;

    let tramp = boot::ap_trampoline();
    assert!(tramp.len() <= AP_STARTED_OFFSET);
    // SAFETY: 0x30000.. is free RAM below the image that only this scenario uses; the
    // blob is shorter than the counter offset, so they do not overlap.
    unsafe {
        core::ptr::copy_nonoverlapping(tramp.as_ptr(), AP_TRAMPOLINE_BASE as *mut u8, tramp.len());
    }
    started_counter().store(0, Ordering::SeqCst);
    boot::ap_long_count().store(0, Ordering::SeqCst);

    // Software-enable the LAPIC (spurious vector 0xff) before sending IPIs.
    lapic.write32(LAPIC_SVR, lapic.read32(LAPIC_SVR) | SVR_ENABLE | 0xff);

    let hz = tsc_hz();
    let vector = (AP_TRAMPOLINE_BASE >> 12) as u32;
    let aps = || {
        info.apic_ids
            .iter()
            .take(cpus.min(MAX_CPUS))
            .copied()
            .filter(move |&id| id != my_id)
    };
    let targets = aps().count() as u32;
    // The MP spec sequence: INIT, 10 ms, SIPI, 200 us, SIPI (ignored by an AP already up),
    // each step sent to all APs so the waits are paid once.
    let mut ipi_ok = true;
    for id in aps() {
        ipi_ok &= send_ipi(&lapic, id, ICR_INIT);
    }
    delay_us(10_000, hz);
    for wait_us in [200, 0] {
        for id in aps() {
            ipi_ok &= send_ipi(&lapic, id, ICR_STARTUP | vector);
        }
        delay_us(wait_us, hz);
    }

    let deadline = TIMEOUT_S * hz;
    let t0 = rdtsc();
    while rdtsc().wrapping_sub(t0) < deadline
        && (started_counter().load(Ordering::SeqCst) < targets
            || boot::ap_long_count().load(Ordering::SeqCst) < targets)
    {
        core::hint::spin_loop();
    }
    let started = started_counter().load(Ordering::SeqCst);
    let long_mode = boot::ap_long_count().load(Ordering::SeqCst);
    let mut l = Line::new();
    l.str("PROBE-SMP: started=").dec(u64::from(started));
    serial::println(&mut l);
    let mut l = Line::new();
    l.str("PROBE-SMP: long_mode=")
        .dec(u64::from(long_mode))
        .str(" bsp_apic_id=")
        .dec(u64::from(my_id))
        .str(" ipi_delivered=")
        .flag(ipi_ok);
    serial::println(&mut l);

    if started as usize != cpus - 1 {
        return Err("not every AP started");
    }
    if long_mode != started {
        return Err("an AP did not reach long mode");
    }
    Ok(())
}
