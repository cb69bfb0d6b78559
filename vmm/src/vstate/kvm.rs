//! Opening /dev/kvm with errors a user can act on, and facts about the host KVM.

use std::path::{Path, PathBuf};

use kvm_ioctls::{Cap, Kvm};

/// The device path used when none is given.
pub const DEFAULT_KVM_PATH: &str = "/dev/kvm";
/// Where the PVM module shows up when loaded.
pub const PVM_MODULE_PATH: &str = "/sys/module/kvm_pvm";
/// KVM's stable API version.
pub const KVM_API_VERSION: i32 = 12;

/// Errors opening or using KVM.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// The device node is missing.
    #[error("cannot open {0}: it does not exist (load the kvm module, e.g. `modprobe kvm_intel` or `modprobe kvm_amd`, or enable nested virtualization for this VM)")]
    Missing(PathBuf),
    /// Permission denied.
    #[error("cannot open {0}: permission denied (run as root, or add your user to the group owning it: `sudo usermod -aG kvm $USER`, then log in again)")]
    Permission(PathBuf),
    /// Some other open error.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The device.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Wrong API version.
    #[error("{path}: KVM API version {found}, capsa needs {KVM_API_VERSION}")]
    ApiVersion {
        /// The device.
        path: PathBuf,
        /// What the kernel reported.
        found: i32,
    },
    /// A capability capsa relies on is missing.
    #[error("host KVM lacks the {0} capability")]
    MissingCap(&'static str),
}

/// Capabilities capsa needs from the host KVM.
pub const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::PitState2, "KVM_CAP_PIT_STATE2"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
];

/// Opens the KVM device at `path` and checks the API version.
pub fn open(path: &Path) -> Result<Kvm, KvmError> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
        KvmError::Open {
            path: path.to_owned(),
            source: std::io::Error::other("path contains a NUL byte"),
        }
    })?;
    let kvm = Kvm::new_with_path(&c).map_err(|e| match e.errno() {
        libc::ENOENT => KvmError::Missing(path.to_owned()),
        libc::EACCES | libc::EPERM => KvmError::Permission(path.to_owned()),
        _ => KvmError::Open {
            path: path.to_owned(),
            source: std::io::Error::from_raw_os_error(e.errno()),
        },
    })?;
    let found = kvm.get_api_version();
    if found != KVM_API_VERSION {
        return Err(KvmError::ApiVersion {
            path: path.to_owned(),
            found,
        });
    }
    Ok(kvm)
}

/// Checks every capability in [`REQUIRED_CAPS`].
pub fn check_caps(kvm: &Kvm) -> Result<(), KvmError> {
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(*cap) {
            return Err(KvmError::MissingCap(name));
        }
    }
    Ok(())
}

/// Whether the host KVM is PVM (pagetable-based virtualization): guest ring 0 is emulated,
/// which changes which CPUID features a guest may use and how fast it boots.
pub fn host_is_pvm() -> bool {
    Path::new(PVM_MODULE_PATH).exists()
}
