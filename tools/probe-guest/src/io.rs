//! Port I/O, MMIO and a few unprivileged CPU instructions. All of it works at ring 3:
//! the TSS I/O bitmap allows every port and the page tables map MMIO with the User bit.

use core::arch::asm;

/// Write a byte to an I/O port.
pub fn outb(port: u16, val: u8) {
    // SAFETY: port I/O reaches emulated devices only; it cannot break Rust's memory model.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") val, options(nomem, nostack, preserves_flags))
    }
}

/// Read a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let val: u8;
    // SAFETY: as for outb.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") val, options(nomem, nostack, preserves_flags))
    }
    val
}

/// Write a 16-bit word to an I/O port.
pub fn outw(port: u16, val: u16) {
    // SAFETY: as for outb.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") val, options(nomem, nostack, preserves_flags))
    }
}

/// Read a 16-bit word from an I/O port.
pub fn inw(port: u16) -> u16 {
    let val: u16;
    // SAFETY: as for outb.
    unsafe {
        asm!("in ax, dx", in("dx") port, out("ax") val, options(nomem, nostack, preserves_flags))
    }
    val
}

/// Write a 32-bit word to an I/O port.
pub fn outl(port: u16, val: u32) {
    // SAFETY: as for outb.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") val, options(nomem, nostack, preserves_flags))
    }
}

/// Read a 32-bit word from an I/O port.
pub fn inl(port: u16) -> u32 {
    let val: u32;
    // SAFETY: as for outb.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") val, options(nomem, nostack, preserves_flags))
    }
    val
}

/// A window of memory-mapped device registers, accessed with volatile loads/stores of the
/// register's width (devices such as virtio-mmio and the LAPIC require exact widths).
#[derive(Clone, Copy)]
pub struct Mmio {
    base: usize,
}

impl Mmio {
    /// # Safety
    /// `base` must be an identity-mapped device window (or RAM owned by the caller) large
    /// enough for every offset later passed to the accessors.
    pub const unsafe fn new(base: usize) -> Self {
        Self { base }
    }

    /// Base address of the window.
    pub fn base(&self) -> usize {
        self.base
    }

    /// 32-bit read at `off`.
    pub fn read32(&self, off: usize) -> u32 {
        // SAFETY: `new`'s contract covers the window; the offset is the caller's register.
        unsafe { core::ptr::read_volatile((self.base + off) as *const u32) }
    }

    /// 32-bit write at `off`.
    pub fn write32(&self, off: usize, val: u32) {
        // SAFETY: as for read32.
        unsafe { core::ptr::write_volatile((self.base + off) as *mut u32, val) }
    }

    /// 8-bit read at `off`.
    pub fn read8(&self, off: usize) -> u8 {
        // SAFETY: as for read32.
        unsafe { core::ptr::read_volatile((self.base + off) as *const u8) }
    }

    /// 8-bit write at `off`.
    pub fn write8(&self, off: usize, val: u8) {
        // SAFETY: as for read32.
        unsafe { core::ptr::write_volatile((self.base + off) as *mut u8, val) }
    }

    /// 16-bit read at `off`.
    pub fn read16(&self, off: usize) -> u16 {
        // SAFETY: as for read32.
        unsafe { core::ptr::read_volatile((self.base + off) as *const u16) }
    }

    /// 16-bit write at `off`.
    pub fn write16(&self, off: usize, val: u16) {
        // SAFETY: as for read32.
        unsafe { core::ptr::write_volatile((self.base + off) as *mut u16, val) }
    }

    /// 64-bit read at `off`.
    pub fn read64(&self, off: usize) -> u64 {
        // SAFETY: as for read32.
        unsafe { core::ptr::read_volatile((self.base + off) as *const u64) }
    }

    /// 64-bit write at `off`.
    pub fn write64(&self, off: usize, val: u64) {
        // SAFETY: as for read32.
        unsafe { core::ptr::write_volatile((self.base + off) as *mut u64, val) }
    }
}

/// Result of one CPUID leaf.
#[derive(Clone, Copy, Default)]
pub struct Cpuid {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// CPUID with a sub-leaf, executed here at ring 3. On PVM (AMD host, no CPUID faulting) it
/// does not exit and returns the host CPU's values; use `sys::cpuid` for the VM's view.
pub fn cpuid(leaf: u32, subleaf: u32) -> Cpuid {
    let (eax, ebx, ecx, edx): (u32, u32, u32, u32);
    // SAFETY: CPUID only writes the four registers; RBX is reserved by LLVM, so it is
    // saved in another register around the instruction.
    unsafe {
        asm!(
            "mov {tmp:r}, rbx",
            "cpuid",
            "xchg {tmp:r}, rbx",
            tmp = out(reg) ebx,
            inout("eax") leaf => eax,
            inout("ecx") subleaf => ecx,
            out("edx") edx,
            options(nomem, nostack, preserves_flags),
        );
    }
    Cpuid { eax, ebx, ecx, edx }
}

/// Time-stamp counter (unprivileged unless CR4.TSD, which nothing sets).
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC only writes EDX:EAX.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// TSC ticks per second: the hypervisor's timing leaf, then CPUID 0x15/0x16, else a guess
/// of 3 GHz (only used to bound waits, so a rough value is fine).
pub fn tsc_hz() -> u64 {
    let hv = cpuid(0x4000_0000, 0);
    if hv.eax >= 0x4000_0010 {
        let khz = cpuid(0x4000_0010, 0).eax;
        if khz != 0 {
            return u64::from(khz) * 1000;
        }
    }
    let max = cpuid(0, 0).eax;
    if max >= 0x15 {
        let l = cpuid(0x15, 0);
        if l.eax != 0 && l.ebx != 0 && l.ecx != 0 {
            return u64::from(l.ecx) * u64::from(l.ebx) / u64::from(l.eax);
        }
    }
    if max >= 0x16 {
        let mhz = cpuid(0x16, 0).eax & 0xffff;
        if mhz != 0 {
            return u64::from(mhz) * 1_000_000;
        }
    }
    3_000_000_000
}

/// Busy-wait for about `us` microseconds (natively at ring 3).
pub fn delay_us(us: u64, hz: u64) {
    let start = rdtsc();
    let ticks = hz / 1_000_000 * us;
    while rdtsc().wrapping_sub(start) < ticks {
        core::hint::spin_loop();
    }
}
