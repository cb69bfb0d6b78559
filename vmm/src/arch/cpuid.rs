//! Per-vCPU CPUID: start from what KVM supports, then fix topology (APIC ids, counts), mark
//! the hypervisor, drop what we do not emulate, and apply host-specific feature masks.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// A CPUID register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    /// EAX
    Eax,
    /// EBX
    Ebx,
    /// ECX
    Ecx,
    /// EDX
    Edx,
}

/// One feature bit hidden from the guest, with the reason.
#[derive(Clone, Copy, Debug)]
pub struct FeatureMask {
    /// Leaf (EAX input).
    pub leaf: u32,
    /// Sub-leaf (ECX input); ignored for leaves without sub-leaves.
    pub subleaf: u32,
    /// Register holding the bit.
    pub reg: Reg,
    /// Bit number.
    pub bit: u8,
    /// Feature name as Linux spells it (for `clearcpuid=`).
    pub name: &'static str,
}

const fn mask(leaf: u32, subleaf: u32, reg: Reg, bit: u8, name: &'static str) -> FeatureMask {
    FeatureMask {
        leaf,
        subleaf,
        reg,
        bit,
        name,
    }
}

/// Features hidden when the host KVM is PVM (`kvm_pvm`). PVM emulates guest ring-0 code with
/// KVM's instruction emulator, which lacks these instructions (see
/// shared/notes/pvm-kvm.md); hiding them keeps a Linux guest off the code paths that use
/// them. They cost nothing measurable for a micro-VM guest kernel.
pub const PVM_MASKS: &[FeatureMask] = &[
    mask(1, 0, Reg::Ecx, 13, "cx16"),
    mask(1, 0, Reg::Ecx, 23, "popcnt"),
    mask(1, 0, Reg::Ecx, 26, "xsave"),
    mask(1, 0, Reg::Ecx, 27, "osxsave"),
    mask(1, 0, Reg::Ecx, 28, "avx"),
    mask(1, 0, Reg::Ecx, 30, "rdrand"),
    mask(7, 0, Reg::Ebx, 0, "fsgsbase"),
    mask(7, 0, Reg::Ebx, 5, "avx2"),
    mask(7, 0, Reg::Ebx, 9, "erms"),
    mask(7, 0, Reg::Ebx, 18, "rdseed"),
    mask(7, 0, Reg::Ebx, 20, "smap"),
    mask(7, 0, Reg::Ecx, 3, "pku"),
    mask(7, 0, Reg::Ecx, 22, "rdpid"),
    mask(7, 0, Reg::Edx, 4, "fsrm"),
];

fn reg_mut(e: &mut kvm_cpuid_entry2, r: Reg) -> &mut u32 {
    match r {
        Reg::Eax => &mut e.eax,
        Reg::Ebx => &mut e.ebx,
        Reg::Ecx => &mut e.ecx,
        Reg::Edx => &mut e.edx,
    }
}

const KVM_CPUID_FLAG_SIGNIFCANT_INDEX: u32 = 1;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const LEAF1_EDX_HTT: u32 = 1 << 28;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_PERFMON: u32 = 0xa;

/// Bits needed to hold ids 0..n-1.
fn bits_for(n: u32) -> u32 {
    32 - n.saturating_sub(1).leading_zeros()
}

/// Builds the CPUID of vCPU `cpu_index` (its APIC id) out of `vcpu_count` from KVM's
/// supported set. Topology: one socket, one thread per core, `vcpu_count` cores.
pub fn vcpu_cpuid(
    supported: &CpuId,
    cpu_index: u8,
    vcpu_count: u8,
    masks: &[FeatureMask],
) -> CpuId {
    let mut cpuid = supported.clone();
    let count = u32::from(vcpu_count);
    let apic_id = u32::from(cpu_index);
    let core_bits = bits_for(count);
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                // EBX[31:24] initial APIC id, EBX[23:16] logical processors per package.
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | ((count & 0xff) << 16);
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                // The in-kernel LAPIC supports the TSC-deadline timer even where the host
                // does not report it.
                e.ecx |= LEAF1_ECX_TSC_DEADLINE;
                if count > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            4 => {
                // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing the cache - 1.
                let cache_level = (e.eax >> 5) & 0x7;
                e.eax &= 0x3fff;
                e.eax |= (count - 1) << 26;
                if cache_level == 3 {
                    e.eax |= (count - 1) << 14;
                }
            }
            LEAF_PERFMON => {
                // No virtual PMU is offered.
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            LEAF_EXT_TOPOLOGY => {
                e.edx = apic_id;
                match e.index {
                    0 => {
                        // SMT level: one thread per core.
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        // Core level: shift past the core bits; `count` logical CPUs.
                        e.eax = core_bits;
                        e.ebx = count;
                        e.ecx = (2 << 8) | 1;
                    }
                    n => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = n;
                    }
                }
            }
            _ => {}
        }
    }
    for m in masks {
        for e in cpuid.as_mut_slice() {
            let indexed = e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX != 0;
            if e.function == m.leaf && (!indexed || e.index == m.subleaf) {
                *reg_mut(e, m.reg) &= !(1u32 << m.bit);
            }
        }
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, flags: u32, r: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags,
            eax: r[0],
            ebx: r[1],
            ecx: r[2],
            edx: r[3],
            ..Default::default()
        }
    }

    fn supported() -> CpuId {
        CpuId::from_entries(&[
            entry(0, 0, 0, [0xd, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]),
            entry(
                1,
                0,
                0,
                [0x906ea, 0xff08_0800, (1 << 13) | (1 << 23), 1 << 28],
            ),
            entry(4, 0, 1, [0x1c00_4121, 0, 0, 0]),
            entry(4, 3, 1, [0x1c00_4163, 0, 0, 0]),
            entry(
                7,
                0,
                1,
                [0, (1 << 0) | (1 << 5) | (1 << 7), 1 << 22, 1 << 4],
            ),
            entry(0xa, 0, 0, [0x0760_3804, 0, 0, 0x603]),
            entry(0xb, 0, 1, [0, 0, 0, 0]),
            entry(0xb, 1, 1, [0, 0, 0, 0]),
            entry(0xb, 2, 1, [0, 0, 0, 0]),
        ])
        .unwrap()
    }

    fn find(c: &CpuId, f: u32, i: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == f && e.index == i)
            .unwrap()
    }

    #[test]
    fn leaf1_topology_per_vcpu() {
        let s = supported();
        for (idx, count) in [(0u8, 1u8), (1, 2), (3, 4)] {
            let c = vcpu_cpuid(&s, idx, count, &[]);
            let l1 = find(&c, 1, 0);
            assert_eq!(l1.ebx >> 24, u32::from(idx));
            assert_eq!((l1.ebx >> 16) & 0xff, u32::from(count));
            assert_eq!(l1.ebx & 0xffff, 0x0800, "low EBX bits kept");
            assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
            assert_eq!(l1.edx & LEAF1_EDX_HTT != 0, count > 1);
        }
    }

    #[test]
    fn extended_topology() {
        let c = vcpu_cpuid(&supported(), 2, 3, &[]);
        let smt = find(&c, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 2));
        let core = find(&c, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 3, 0x201, 2));
        let end = find(&c, 0xb, 2);
        assert_eq!((end.eax, end.ebx, end.ecx & 0xff00), (0, 0, 0));
    }

    #[test]
    fn cache_leaf_counts() {
        let c = vcpu_cpuid(&supported(), 0, 4, &[]);
        assert_eq!(find(&c, 4, 0).eax >> 26, 3);
        assert_eq!((find(&c, 4, 3).eax >> 14) & 0xfff, 3);
        assert_eq!((find(&c, 4, 0).eax >> 14) & 0xfff, 0, "L1 is not shared");
    }

    #[test]
    fn pmu_hidden() {
        let c = vcpu_cpuid(&supported(), 0, 1, &[]);
        let p = find(&c, 0xa, 0);
        assert_eq!((p.eax, p.edx), (0, 0));
    }

    #[test]
    fn pvm_masks_clear_bits_and_keep_others() {
        let c = vcpu_cpuid(&supported(), 0, 1, PVM_MASKS);
        let l1 = find(&c, 1, 0);
        assert_eq!(l1.ecx & (1 << 13), 0, "cx16");
        assert_eq!(l1.ecx & (1 << 23), 0, "popcnt");
        let l7 = find(&c, 7, 0);
        assert_eq!(l7.ebx & 0x21, 0, "fsgsbase, avx2");
        assert_ne!(l7.ebx & (1 << 7), 0, "smep untouched");
        assert_eq!(l7.ecx & (1 << 22), 0, "rdpid");
        assert_eq!(l7.edx & (1 << 4), 0, "fsrm");
        // Without masks the bit stays.
        let plain = vcpu_cpuid(&supported(), 0, 1, &[]);
        assert_ne!(find(&plain, 1, 0).ecx & (1 << 13), 0);
    }

    #[test]
    fn mask_names_unique() {
        let mut names: Vec<_> = PVM_MASKS.iter().map(|m| m.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), PVM_MASKS.len());
    }

    #[test]
    fn bits() {
        assert_eq!(
            [
                bits_for(1),
                bits_for(2),
                bits_for(3),
                bits_for(4),
                bits_for(5)
            ],
            [0, 1, 2, 2, 3]
        );
    }
}
