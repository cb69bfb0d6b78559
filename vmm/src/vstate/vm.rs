//! The KVM VM: guest memory slots, in-kernel irqchip and PIT.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::layout::KVM_TSS_ADDRESS;

/// Errors creating the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A KVM ioctl failed.
    #[error("{op} failed: {source}")]
    Kvm {
        /// Which call.
        op: &'static str,
        /// errno.
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be mapped.
    #[error("cannot allocate {mib} MiB of guest memory: {reason}")]
    Memory {
        /// Requested size.
        mib: u64,
        /// Why.
        reason: String,
    },
}

fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { op, source }
}

/// Maps guest RAM for `regions` (start, length).
pub fn create_memory(regions: &[(u64, u64)]) -> Result<GuestMemoryMmap, VmError> {
    let ranges: Vec<_> = regions
        .iter()
        .map(|&(s, l)| (vm_memory::GuestAddress(s), l as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| VmError::Memory {
        mib: regions.iter().map(|r| r.1).sum::<u64>() >> 20,
        reason: e.to_string(),
    })
}

/// Creates the VM, registers `mem` with it, then adds the in-kernel irqchip and PIT.
///
/// Memory goes in first (as Firecracker and QEMU do). With the irqchip and PIT already
/// there, KVM_SET_USER_MEMORY_REGION waits behind their grace periods: on a loaded PVM
/// host it took 4-50 ms (median 18 ms over 25 VMs) against 0.2-2 ms in this order
/// (tools/bench/README.md, "capsa's start").
pub fn create_vm(kvm: &Kvm, mem: &GuestMemoryMmap) -> Result<VmFd, VmError> {
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    vm.set_tss_address(KVM_TSS_ADDRESS as usize)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| VmError::Memory {
                mib: region.len() >> 20,
                reason: e.to_string(),
            })?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: `host` maps `region.len()` bytes owned by `mem`, which outlives the VM in
        // every caller (the Vm struct holds both and drops the VmFd first).
        unsafe { vm.set_user_memory_region(r) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    vm.create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    // The PIT's speaker port is a dummy so guests probing it don't exit to us.
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
    Ok(vm)
}
