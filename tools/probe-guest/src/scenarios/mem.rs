//! E820 map and a touch test of RAM above the image.

use super::{Ctx, Outcome};
use crate::bootparams::E820_RAM;
use crate::line::Line;
use crate::{boot, paging, serial};

const STEP: u64 = 2 << 20;

fn pattern(addr: u64) -> u64 {
    addr ^ 0x5a5a_a5a5_c3c3_3c3c
}

/// Every 2 MiB-aligned address of usable RAM above the image and inside the map.
fn for_each_probe(ctx: &Ctx, mapped_end: u64, mut f: impl FnMut(u64)) {
    let floor = boot::image_end();
    for e in ctx.boot.e820().filter(|e| e.kind == E820_RAM) {
        let start = e.addr.max(floor);
        let end = e.addr.saturating_add(e.size).min(mapped_end);
        let mut a = start.next_multiple_of(STEP);
        while a + 8 <= end {
            f(a);
            a += STEP;
        }
    }
}

pub fn run(ctx: &Ctx) -> Outcome {
    let entries = ctx.boot.e820_count();
    let ram: u64 = ctx
        .boot
        .e820()
        .filter(|e| e.kind == E820_RAM)
        .map(|e| e.size)
        .sum();
    let mut l = Line::new();
    l.str("PROBE-MEM: ram_bytes=")
        .dec(ram)
        .str(" entries=")
        .dec(entries as u64);
    serial::println(&mut l);
    if entries == 0 || ram == 0 {
        return Err("no RAM in the E820 map");
    }

    // RAM above 4 GiB (past the MMIO gap) needs the identity map extended first.
    let ram_end = ctx
        .boot
        .e820()
        .filter(|e| e.kind == E820_RAM)
        .map(|e| e.addr.saturating_add(e.size))
        .max()
        .unwrap_or(0);
    let end = paging::map_above_4g(ram_end);
    // Write everything first, then read back, so two addresses backed by the same host
    // page would be caught too.
    let mut touched = 0u64;
    for_each_probe(ctx, end, |a| {
        // SAFETY: usable RAM per E820, above the image, identity-mapped, owned by nobody.
        unsafe { core::ptr::write_volatile(a as *mut u64, pattern(a)) };
        touched += 1;
    });
    let mut bad = 0u64;
    let mut first_bad = 0u64;
    for_each_probe(ctx, end, |a| {
        // SAFETY: as above.
        let v = unsafe { core::ptr::read_volatile(a as *const u64) };
        if v != pattern(a) {
            if bad == 0 {
                first_bad = a;
            }
            bad += 1;
        }
    });
    let mut l = Line::new();
    l.str("PROBE-MEM: touched=")
        .dec(touched)
        .str(" bad=")
        .dec(bad)
        .str(" mapped_end=")
        .hex(end);
    if bad != 0 {
        l.str(" first_bad=").hex(first_bad);
    }
    serial::println(&mut l);
    if bad != 0 {
        return Err("RAM did not read back");
    }
    Ok(())
}
