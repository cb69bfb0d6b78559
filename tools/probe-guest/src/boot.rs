//! Ring-0 entry, descriptor and page tables, exception stubs and the AP trampoline
//! (`boot.S`), plus safe accessors for the symbols ring 3 needs from it.

use core::ptr::addr_of;
use core::sync::atomic::AtomicU32;

core::arch::global_asm!(include_str!("boot.S"), options(att_syntax));

/// Where the AP trampoline is copied; its SIPI vector is `AP_TRAMPOLINE_BASE >> 12`.
/// Must match `AP_BASE` in boot.S.
pub const AP_TRAMPOLINE_BASE: usize = 0x30000;
/// Offset in the trampoline page of the counter each AP increments in real mode.
/// Must match `AP_STARTED_OFF` in boot.S.
pub const AP_STARTED_OFFSET: usize = 0xff0;

extern "C" {
    static ap_tramp_start: u8;
    static ap_tramp_end: u8;
    #[link_name = "ap_long_count"]
    static AP_LONG_COUNT: AtomicU32;
    static __image_end: u8;
    #[link_name = "pvh_start_info"]
    static PVH_START_INFO: u32;
}

/// The `hvm_start_info` address if the guest was entered through the PVH entry (QEMU), else
/// 0 (entered at the 64-bit entry with a Linux zero page, as capsa does).
pub fn pvh_start_info() -> u64 {
    // SAFETY: a u32 in .data written once by ring 0 before ring 3 started.
    u64::from(unsafe { core::ptr::read_volatile(addr_of!(PVH_START_INFO)) })
}

/// First byte after the loaded image, its .bss and its stacks.
pub fn image_end() -> u64 {
    addr_of!(__image_end) as u64
}

/// The real-mode AP trampoline, to be copied to [`AP_TRAMPOLINE_BASE`].
pub fn ap_trampoline() -> &'static [u8] {
    let start = addr_of!(ap_tramp_start);
    let len = addr_of!(ap_tramp_end) as usize - start as usize;
    // SAFETY: both symbols delimit one read-only blob in .rodata, start <= end.
    unsafe { core::slice::from_raw_parts(start, len) }
}

/// Number of APs that reached long mode (incremented by `ap_long_mode` in boot.S).
pub fn ap_long_count() -> &'static AtomicU32 {
    // SAFETY: a 4-byte aligned u32 in .data, only ever accessed atomically.
    unsafe { &*addr_of!(AP_LONG_COUNT) }
}
