//! `capsa check`: can this host run capsa? Each finding names its fix.

use std::path::Path;
use std::process::ExitCode;

use vmm::vstate::kvm;

use crate::cgroups::{Layout, NEEDED_CONTROLLERS};

struct Report {
    missing: usize,
}

impl Report {
    fn ok(&self, what: &str) {
        println!("[ok]      {what}");
    }
    fn info(&self, what: &str) {
        println!("[info]    {what}");
    }
    fn missing(&mut self, what: &str, fix: &str) {
        self.missing += 1;
        println!("[missing] {what}\n          fix: {fix}");
    }
}

pub fn run() -> anyhow::Result<ExitCode> {
    let mut r = Report { missing: 0 };
    let path = Path::new(kvm::DEFAULT_KVM_PATH);
    match kvm::open(path) {
        Ok(k) => {
            r.ok(&format!("{}: opened read/write", path.display()));
            r.ok(&format!("KVM API version {}", k.get_api_version()));
            match kvm::check_caps(&k) {
                Ok(()) => r.ok("KVM capabilities: irqchip, irqfd, ioeventfd, PIT2, immediate exit"),
                Err(e) => r.missing(
                    &e.to_string(),
                    "use a host kernel with a complete KVM (4.14 or newer)",
                ),
            }
        }
        Err(e) => {
            let fix = match &e {
                kvm::KvmError::Missing(_) => {
                    "load kvm_intel or kvm_amd (or enable nested virtualization for this VM)"
                }
                kvm::KvmError::Permission(_) => "run as root or add the user to the kvm group",
                _ => "see the error above",
            };
            r.missing(&e.to_string(), fix);
        }
    }
    if kvm::host_is_pvm() {
        r.info(&format!(
            "host KVM is PVM ({} present): guest ring 0 is emulated, so Linux guests boot slowly; capsa hides the CPUID features PVM cannot emulate",
            kvm::PVM_MODULE_PATH
        ));
    } else {
        r.info("host KVM is hardware-assisted (VMX/SVM)");
    }

    match Layout::detect() {
        Ok(layout) => {
            match layout.unified() {
                Some(h) => r.ok(&format!("cgroup v2 mounted at {}", h.mount.display())),
                None => r.info("no cgroup v2 hierarchy mounted"),
            }
            let mut v1 = Vec::new();
            for c in NEEDED_CONTROLLERS {
                if let Some(h) = layout.v1_mount(c) {
                    v1.push(format!("{c} at {}", h.mount.display()));
                }
            }
            if !v1.is_empty() {
                r.ok(&format!("cgroup v1 controllers: {}", v1.join(", ")));
            }
            let v2_controllers = layout
                .unified()
                .and_then(|h| std::fs::read_to_string(h.mount.join("cgroup.controllers")).ok())
                .unwrap_or_default();
            let lacking: Vec<_> = NEEDED_CONTROLLERS
                .iter()
                .filter(|c| {
                    layout.v1_mount(c).is_none()
                        && !v2_controllers.split_whitespace().any(|x| x == **c)
                })
                .collect();
            if lacking.is_empty() {
                r.ok("all cgroup controllers capsa uses are available");
            } else {
                r.missing(
                    &format!("cgroup controllers not available: {lacking:?}"),
                    "mount them (cgroup v1) or enable them in cgroup.subtree_control (v2)",
                );
            }
        }
        Err(e) => r.missing(
            &format!("cannot read /proc/self/mountinfo: {e}"),
            "mount /proc",
        ),
    }

    if r.missing == 0 {
        println!("capsa can run on this host");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{} problem(s) found", r.missing);
        Ok(ExitCode::FAILURE)
    }
}
