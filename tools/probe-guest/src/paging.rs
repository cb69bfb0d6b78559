//! The guest's identity map (built in boot.S) and its extension above 4 GiB. Page tables
//! are ordinary user-writable RAM here, so ring 3 can extend them; entries only go from
//! not-present to present, which needs no TLB flush.

use core::ptr::{addr_of_mut, write_volatile};

/// Spare page directories in boot.S (`high_pds`), one per GiB above 4 GiB.
pub const HIGH_PDS: u64 = 28;
const GIB: u64 = 1 << 30;
const PAGE_2M: u64 = 1 << 21;
/// Present | RW | User (| PS for 2 MiB pages).
const TABLE_FLAGS: u64 = 0x7;
const PAGE_2M_FLAGS: u64 = 0x87;

extern "C" {
    #[link_name = "boot_pdpt"]
    static mut BOOT_PDPT: [u64; 512];
    #[link_name = "high_pds"]
    static mut HIGH_PD_PAGES: [[u64; 512]; HIGH_PDS as usize];
}

/// First address not identity-mapped without [`map_above_4g`].
pub const LOW_MAP_END: u64 = 4 * GIB;
/// Most that [`map_above_4g`] can map.
pub const MAX_MAP_END: u64 = LOW_MAP_END + HIGH_PDS * GIB;

/// Identity-map `[4 GiB, end)` with 2 MiB pages, as far as the spare directories reach.
/// Returns the end of the identity map afterwards. Call from one CPU only.
pub fn map_above_4g(end: u64) -> u64 {
    let end = end.min(MAX_MAP_END);
    let mut gib = LOW_MAP_END / GIB;
    while gib * GIB < end {
        let idx = (gib - LOW_MAP_END / GIB) as usize;
        // SAFETY: boot_pdpt and high_pds are page tables in the image that only this
        // function changes after boot; the PDPT entry for this GiB is not present yet (or
        // was set to the same value before), so no translation of it can be cached.
        unsafe {
            let pd = addr_of_mut!(HIGH_PD_PAGES[idx]);
            for i in 0..512u64 {
                write_volatile(
                    addr_of_mut!((*pd)[i as usize]),
                    (gib * GIB + i * PAGE_2M) | PAGE_2M_FLAGS,
                );
            }
            write_volatile(
                addr_of_mut!(BOOT_PDPT[gib as usize]),
                pd as u64 | TABLE_FLAGS,
            );
        }
        gib += 1;
    }
    end.max(LOW_MAP_END)
}
