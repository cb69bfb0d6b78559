//! Guest physical memory layout (the Linux 64-bit boot protocol's view of a PC).
//!
//! ```text
//! 0x0000_0500  GDT                    0x0000_7000  zero page (boot_params)
//! 0x0000_0520  IDT                    0x0000_8ff0  boot stack top
//! 0x0000_9000  PML4 / PDPT / PD       0x0002_0000  kernel command line
//! 0x0009_fc00  MP table (EBDA)        0x0010_0000  kernel (HIMEM_START)
//! RAM up to min(size, MMIO_GAP_START), then MMIO gap to 4 GiB, then the rest of RAM.
//! ```

/// GDT written by the VMM for the boot CPU.
pub const BOOT_GDT_START: u64 = 0x500;
/// An empty IDT: the guest installs its own before enabling interrupts.
pub const BOOT_IDT_START: u64 = 0x520;
/// Linux `struct boot_params`; RSI points here at entry.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial RSP/RBP.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables: PML4, one PDPT, one PD (first GiB, 2 MiB pages).
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory.
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// x86 Linux COMMAND_LINE_SIZE, including the NUL.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area, where the MP table goes; RAM below it is usable.
pub const EBDA_START: u64 = 0x9fc00;
/// Where the kernel is loaded and "high" memory starts.
pub const HIMEM_START: u64 = 0x10_0000;
/// The 32-bit MMIO gap: device windows live here, RAM skips it.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End of the 32-bit address space.
pub const FIRST_ADDR_PAST_32BITS: u64 = 1 << 32;
/// The IOAPIC's MMIO window (in-kernel irqchip).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The local APIC's MMIO window (in-kernel irqchip).
pub const APIC_START: u64 = 0xfee0_0000;
/// Three pages KVM needs for its real-mode TSS on Intel hosts; inside the MMIO gap, below
/// the IOAPIC.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// Window for virtio-mmio devices: from the gap start, 4 KiB each.
pub const MMIO_DEVICES_START: u64 = MMIO_GAP_START;
/// Size of each virtio-mmio device window.
pub const MMIO_DEVICE_SIZE: u64 = 0x1000;
/// First GSI handed to virtio-mmio devices (0-4 are PIT, keyboard, cascade, COM2, COM1).
pub const IRQ_DEVICES_START: u32 = 5;
/// Last usable IOAPIC pin.
pub const IRQ_MAX: u32 = 23;
/// The guest must have at least this much RAM: boot structures, the kernel at 1 MiB and
/// some room for it to work.
pub const MIN_MEM_BYTES: u64 = 8 << 20;
/// Upper bound on vCPUs: the MP table must fit between EBDA_START and 0xa0000.
pub const MAX_VCPUS: u8 = 32;

// The boot stack sits between the zero page and the page tables; the MP table ends below
// the kernel. Checked at compile time so a layout edit cannot silently break boot.
const _: () = assert!(BOOT_STACK_POINTER < PML4_START);
const _: () = assert!(BOOT_STACK_POINTER > ZERO_PAGE_START + 0x1000);
const _: () = assert!(EBDA_START + 0x400 <= HIMEM_START);

/// Guest RAM regions for `mem_bytes` of memory: below the MMIO gap, and the rest above 4 GiB.
pub fn ram_regions(mem_bytes: u64) -> Vec<(u64, u64)> {
    if mem_bytes <= MMIO_GAP_START {
        vec![(0, mem_bytes)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (FIRST_ADDR_PAST_32BITS, mem_bytes - MMIO_GAP_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_region() {
        assert_eq!(ram_regions(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(ram_regions(MMIO_GAP_START), vec![(0, MMIO_GAP_START)]);
    }

    #[test]
    fn large_memory_skips_the_gap() {
        let r = ram_regions(4 << 30);
        assert_eq!(
            r,
            vec![(0, MMIO_GAP_START), (1 << 32, (4 << 30) - MMIO_GAP_START)]
        );
        assert_eq!(r.iter().map(|x| x.1).sum::<u64>(), 4 << 30);
    }

    #[test]
    fn fixed_structures_do_not_overlap() {
        let mut spans = [
            (BOOT_GDT_START, 4 * 8),
            (BOOT_IDT_START, 8),
            (ZERO_PAGE_START, 0x1000),
            (PML4_START, 0x1000),
            (PDPTE_START, 0x1000),
            (PDE_START, 0x1000),
            (CMDLINE_START, CMDLINE_MAX_SIZE as u64),
            (EBDA_START, 0x400),
        ];
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "{w:x?} overlap");
        }
    }
}
