//! Boot CPU state for the Linux 64-bit boot protocol: GDT, identity page tables, segment
//! and control registers, general registers, FPU and LAPIC LVTs.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::*;

/// Errors while writing boot CPU state.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Guest memory write failed (memory too small for a boot structure).
    #[error("cannot write {what} at {addr:#x} into guest memory")]
    Memory {
        /// The structure.
        what: &'static str,
        /// Its guest address.
        addr: u64,
    },
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Packs a GDT descriptor from flags, base and limit (layout per the SDM).
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << (56 - 24))
        | ((u64::from(flags) & 0x0000_f0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << (48 - 16))
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0x0000_ffff)
}

/// Decodes a GDT descriptor at `index` back into the kvm_segment KVM wants.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base,
        // A granular segment's limit counts 4 KiB pages.
        limit: if g == 1 {
            (limit_raw << 12) | 0xfff
        } else {
            limit_raw
        },
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(((entry >> 47) & 1) == 0),
        padding: 0,
    }
}

/// The boot GDT: null, 64-bit code (0x08), data (0x10), TSS (0x18).
pub const BOOT_GDT: [u64; 4] = [
    0,
    // gdt_entry(0xa09b, 0, 0xfffff): present, DPL0, code exec/read accessed, L=1, G=1.
    0x00af_9b00_0000_ffff,
    // gdt_entry(0xc093, 0, 0xfffff): present, DPL0, data read/write accessed, D/B=1, G=1.
    0x00cf_9300_0000_ffff,
    // gdt_entry(0x808b, 0, 0xfffff): present busy 32-bit TSS; KVM needs a valid TR.
    0x008f_8b00_0000_ffff,
];

fn write_u64s(
    mem: &GuestMemoryMmap,
    addr: u64,
    vals: &[u64],
    what: &'static str,
) -> Result<(), RegsError> {
    for (i, v) in vals.iter().enumerate() {
        let a = addr + 8 * i as u64;
        mem.write_obj(*v, GuestAddress(a))
            .map_err(|_| RegsError::Memory { what, addr: a })?;
    }
    Ok(())
}

/// Identity page tables for the first GiB (2 MiB pages), enough for the kernel's own
/// start-up code to build its real page tables.
pub fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    write_u64s(mem, PML4_START, &[PDPTE_START | 0x03], "PML4")?;
    write_u64s(mem, PDPTE_START, &[PDE_START | 0x03], "PDPT")?;
    let pd: Vec<u64> = (0..512u64).map(|i| (i << 21) | 0x83).collect();
    write_u64s(mem, PDE_START, &pd, "page directory")
}

/// Writes GDT, IDT and page tables to memory and returns the special registers that enter
/// 64-bit mode with them.
pub fn boot_sregs(mem: &GuestMemoryMmap, mut sregs: kvm_sregs) -> Result<kvm_sregs, RegsError> {
    write_u64s(mem, BOOT_GDT_START, &BOOT_GDT, "GDT")?;
    write_u64s(mem, BOOT_IDT_START, &[0], "IDT")?;
    write_page_tables(mem)?;

    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = (std::mem::size_of::<u64>() - 1) as u16;

    let code = segment_from_gdt(BOOT_GDT[1], 1);
    let data = segment_from_gdt(BOOT_GDT[2], 2);
    let tss = segment_from_gdt(BOOT_GDT[3], 3);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    Ok(sregs)
}

/// General registers at the kernel's 64-bit entry point.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2, // bit 1 is reserved-set; interrupts off
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

/// FPU state at reset (x87 control word and MXCSR defaults).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn set_apic_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

fn lapic_reg(lapic: &mut kvm_lapic_state, offset: usize) -> &mut [i8] {
    &mut lapic.regs[offset..offset + 4]
}

/// Configures LINT0 as ExtINT (the PIC) and LINT1 as NMI, as a PC BIOS would.
pub fn set_lint(lapic: &mut kvm_lapic_state) {
    for (off, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let r = lapic_reg(lapic, off);
        let cur = u32::from_le_bytes([r[0] as u8, r[1] as u8, r[2] as u8, r[3] as u8]);
        let new = set_apic_delivery_mode(cur, mode).to_le_bytes();
        for (d, s) in r.iter_mut().zip(new) {
            *d = s as i8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn gdt_entries_match_their_flags() {
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), BOOT_GDT[1]);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), BOOT_GDT[2]);
        assert_eq!(gdt_entry(0x808b, 0, 0xfffff), BOOT_GDT[3]);
        assert_eq!(gdt_entry(0x0093, 0x1234_5678, 0xabcde) >> 56, 0x12);
    }

    #[test]
    fn segments_decode() {
        let cs = segment_from_gdt(BOOT_GDT[1], 1);
        assert_eq!(
            (cs.selector, cs.l, cs.db, cs.g, cs.present, cs.s),
            (8, 1, 0, 1, 1, 1)
        );
        assert_eq!(
            (cs.type_, cs.dpl, cs.limit, cs.base),
            (0xb, 0, 0xffff_ffff, 0)
        );
        let ds = segment_from_gdt(BOOT_GDT[2], 2);
        assert_eq!((ds.selector, ds.type_, ds.db, ds.l), (0x10, 3, 1, 0));
        let tr = segment_from_gdt(BOOT_GDT[3], 3);
        assert_eq!(
            (tr.selector, tr.type_, tr.s, tr.unusable),
            (0x18, 0xb, 0, 0)
        );
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
    }

    #[test]
    fn page_tables_identity_map_first_gib() {
        let m = mem();
        write_page_tables(&m).unwrap();
        let pml4: u64 = m.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        let pdpt: u64 = m.read_obj(GuestAddress(PDPTE_START)).unwrap();
        assert_eq!(pdpt, PDE_START | 3);
        for i in [0u64, 1, 255, 511] {
            let pde: u64 = m.read_obj(GuestAddress(PDE_START + i * 8)).unwrap();
            assert_eq!(pde, (i << 21) | 0x83, "entry {i}");
        }
    }

    #[test]
    fn sregs_enter_long_mode() {
        let m = mem();
        let s = boot_sregs(&m, kvm_sregs::default()).unwrap();
        assert_eq!(s.cr3, PML4_START);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.cr0 & X86_CR0_PE, 0);
        assert_ne!(s.cr4 & X86_CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.gdt.base, BOOT_GDT_START);
        assert_eq!(s.gdt.limit, 31);
        let gdt1: u64 = m.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(gdt1, BOOT_GDT[1]);
    }

    #[test]
    fn sregs_fail_cleanly_without_memory() {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let e = boot_sregs(&m, kvm_sregs::default()).unwrap_err();
        assert!(e.to_string().contains("PML4"), "{e}");
    }

    #[test]
    fn regs_point_at_zero_page() {
        let r = boot_regs(0x100_0000);
        assert_eq!(
            (r.rip, r.rsi, r.rsp, r.rflags),
            (0x100_0000, ZERO_PAGE_START, BOOT_STACK_POINTER, 2)
        );
    }

    #[test]
    fn lint_modes() {
        let mut l = kvm_lapic_state::default();
        // Pretend both LVTs were masked with some other mode.
        l.regs[APIC_LVT0 + 2] = 1;
        l.regs[APIC_LVT1 + 1] = 0x07;
        set_lint(&mut l);
        let get = |o: usize| {
            u32::from_le_bytes([
                l.regs[o] as u8,
                l.regs[o + 1] as u8,
                l.regs[o + 2] as u8,
                l.regs[o + 3] as u8,
            ])
        };
        assert_eq!((get(APIC_LVT0) >> 8) & 7, APIC_MODE_EXTINT);
        assert_eq!(get(APIC_LVT0) & 0x10000, 0x10000, "other bits kept");
        assert_eq!((get(APIC_LVT1) >> 8) & 7, APIC_MODE_NMI);
    }
}
