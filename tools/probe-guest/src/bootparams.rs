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
