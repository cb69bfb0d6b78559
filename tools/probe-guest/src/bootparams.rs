//! The Linux zero page (`struct boot_params`) the VMM leaves at RSI: command line pointer
//! and E820 map. Offsets from Linux's arch/x86/include/uapi/asm/bootparam.h.

const E820_ENTRIES: usize = 0x1e8;
const CMD_LINE_PTR: usize = 0x228;
const RAMDISK_IMAGE: usize = 0x218;
const RAMDISK_SIZE: usize = 0x21c;
const EXT_RAMDISK_IMAGE: usize = 0x0c0;
const EXT_CMD_LINE_PTR: usize = 0x0c8;
const E820_TABLE: usize = 0x2d0;
const E820_MAX: usize = 128;
const E820_ENTRY_SIZE: usize = 20;
/// Longest command line read (Linux's x86 COMMAND_LINE_SIZE).
const CMDLINE_MAX: usize = 2048;

/// A zero page built from a PVH `hvm_start_info` (see [`BootParams::from_pvh`]).
static mut PVH_ZERO_PAGE: [u8; 4096] = [0; 4096];

// struct hvm_start_info (Xen's arch-x86/hvm/start_info.h), version 1.
const PVH_MAGIC: u32 = 0x336e_c578;
const PVH_NR_MODULES: usize = 12;
const PVH_MODLIST: usize = 16;
const PVH_CMDLINE: usize = 24;
const PVH_MEMMAP: usize = 40;
const PVH_MEMMAP_ENTRIES: usize = 48;
const PVH_MEMMAP_ENTRY_SIZE: usize = 24;

/// E820 type of usable RAM.
pub const E820_RAM: u32 = 1;

/// One E820 entry.
#[derive(Clone, Copy)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The zero page.
#[derive(Clone, Copy)]
pub struct BootParams {
    base: usize,
}

impl BootParams {
    /// # Safety
    /// `base` must point to a boot_params page that stays mapped and unchanged.
    pub unsafe fn new(base: u64) -> Self {
        Self {
            base: base as usize,
        }
    }

    /// Translates a PVH `hvm_start_info` (QEMU's entry for an ELF with a PVH note) into a
    /// zero page, so the rest of the guest reads one format. Runs once, at ring 3.
    ///
    /// # Safety
    /// `start_info` must point to a valid `hvm_start_info` whose tables stay in place; call
    /// at most once (the zero page is a single static).
    pub unsafe fn from_pvh(start_info: u64) -> Self {
        let si = start_info as usize;
        // SAFETY: caller's contract; fields may be unaligned in principle.
        let rd32 = |off: usize| unsafe { core::ptr::read_unaligned((si + off) as *const u32) };
        let rd64 = |off: usize| unsafe { core::ptr::read_unaligned((si + off) as *const u64) };
        // SAFETY: single use (caller's contract), nothing else refers to the page yet.
        let page = unsafe { &mut *core::ptr::addr_of_mut!(PVH_ZERO_PAGE) };
        let put = |page: &mut [u8; 4096], off: usize, v: &[u8]| {
            page[off..off + v.len()].copy_from_slice(v);
        };
        if rd32(0) == PVH_MAGIC {
            let cmdline = rd64(PVH_CMDLINE);
            put(page, CMD_LINE_PTR, &(cmdline as u32).to_le_bytes());
            put(
                page,
                EXT_CMD_LINE_PTR,
                &((cmdline >> 32) as u32).to_le_bytes(),
            );
            if rd32(PVH_NR_MODULES) > 0 {
                // First module = the initrd: struct hvm_modlist_entry { paddr, size, .. }.
                let m = rd64(PVH_MODLIST) as usize;
                // SAFETY: the modlist is part of the start info the caller vouches for.
                let (addr, size) = unsafe {
                    (
                        core::ptr::read_unaligned(m as *const u64),
                        core::ptr::read_unaligned((m + 8) as *const u64),
                    )
                };
                put(page, RAMDISK_IMAGE, &(addr as u32).to_le_bytes());
                put(
                    page,
                    EXT_RAMDISK_IMAGE,
                    &((addr >> 32) as u32).to_le_bytes(),
                );
                put(page, RAMDISK_SIZE, &(size as u32).to_le_bytes());
            }
            let n = (rd32(PVH_MEMMAP_ENTRIES) as usize).min(E820_MAX);
            let map = rd64(PVH_MEMMAP) as usize;
            if map != 0 {
                for i in 0..n {
                    let src = map + i * PVH_MEMMAP_ENTRY_SIZE;
                    // SAFETY: memmap_entries entries at memmap_paddr, per the ABI.
                    let (addr, size, kind) = unsafe {
                        (
                            core::ptr::read_unaligned(src as *const u64),
                            core::ptr::read_unaligned((src + 8) as *const u64),
                            core::ptr::read_unaligned((src + 16) as *const u32),
                        )
                    };
                    let dst = E820_TABLE + i * E820_ENTRY_SIZE;
                    put(page, dst, &addr.to_le_bytes());
                    put(page, dst + 8, &size.to_le_bytes());
                    put(page, dst + 16, &kind.to_le_bytes());
                }
                page[E820_ENTRIES] = n as u8;
            }
        }
        Self {
            base: page.as_ptr() as usize,
        }
    }

    fn read<T: Copy>(&self, off: usize) -> T {
        // SAFETY: `new`'s contract; fields may be unaligned (the struct is packed).
        unsafe { core::ptr::read_unaligned((self.base + off) as *const T) }
    }

    /// Physical address of the command line (0 if none).
    pub fn cmdline_addr(&self) -> u64 {
        u64::from(self.read::<u32>(CMD_LINE_PTR))
            | (u64::from(self.read::<u32>(EXT_CMD_LINE_PTR)) << 32)
    }

    /// The command line without its NUL (empty if none).
    pub fn cmdline(&self) -> &'static [u8] {
        let addr = self.cmdline_addr();
        if addr == 0 || addr >= 1 << 32 {
            return &[];
        }
        let p = addr as *const u8;
        let mut len = 0;
        // SAFETY: the VMM put a NUL-terminated string there, inside the identity map;
        // the scan is bounded by CMDLINE_MAX.
        unsafe {
            while len < CMDLINE_MAX && *p.add(len) != 0 {
                len += 1;
            }
            core::slice::from_raw_parts(p, len)
        }
    }

    /// Physical address of the initrd the VMM loaded (0 if none).
    pub fn initrd_addr(&self) -> u64 {
        if self.read::<u32>(RAMDISK_SIZE) == 0 {
            return 0;
        }
        u64::from(self.read::<u32>(RAMDISK_IMAGE))
            | (u64::from(self.read::<u32>(EXT_RAMDISK_IMAGE)) << 32)
    }

    /// Number of E820 entries the VMM filled in.
    pub fn e820_count(&self) -> usize {
        usize::from(self.read::<u8>(E820_ENTRIES)).min(E820_MAX)
    }

    /// The E820 map.
    pub fn e820(&self) -> impl Iterator<Item = E820Entry> + '_ {
        (0..self.e820_count()).map(move |i| {
            let off = E820_TABLE + i * E820_ENTRY_SIZE;
            E820Entry {
                addr: self.read(off),
                size: self.read(off + 8),
                kind: self.read(off + 16),
            }
        })
    }
}
