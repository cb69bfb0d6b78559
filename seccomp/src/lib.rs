//! capsa's seccomp filters: one allow-list per kind of VM thread, compiled with
//! seccompiler and installed by each thread on itself before the guest runs.
//!
//! The lists live in [`rules`] and were derived from what capsa really calls (strace of
//! every probe-guest scenario and of the integration tests); `seccomp/README.md` says how
//! to re-derive them. Syscalls that can do harm with the wrong arguments (ioctl, mmap,
//! mprotect, futex, tgkill, fcntl, sockets, mknodat, ...) are allowed only with the
//! arguments capsa uses.

// The syscall numbers, ioctl encodings and BPF arch check are x86_64's.
#[cfg(not(target_arch = "x86_64"))]
compile_error!("capsa's seccomp filters are written for x86_64");

mod rules;

use std::fmt;
use std::str::FromStr;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

pub use rules::{ioctls, Check, Cond, Entry};

/// What happens when a thread makes a syscall outside its list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// `0`: no filter is installed.
    Off,
    /// `1`: the syscall is allowed and the kernel logs it (audit record type 1326 in the
    /// kernel log, `SECCOMP_RET_LOG`). For finding what a new code path needs.
    Log,
    /// `2`: the kernel kills the whole process with SIGSYS (`SECCOMP_RET_KILL_PROCESS`).
    Kill,
}

impl FromStr for Level {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "0" | "off" => Ok(Level::Off),
            "1" | "log" => Ok(Level::Log),
            "2" | "kill" => Ok(Level::Kill),
            _ => Err(Error::Level(s.to_string())),
        }
    }
}

/// The kinds of thread that get their own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The thread running the event loop and all device emulation (virtio queues, disk
    /// I/O, serial input, vsock sockets, virtio-fs).
    Vmm,
    /// A vCPU thread: KVM_RUN and the port/MMIO exits it dispatches to devices.
    Vcpu,
    /// A host-side worker of an OCI sandbox's process (`capsa __shim`), and every thread
    /// it spawns: talks to the guest agent over the vsock socket, relays the container's
    /// stdio, hands a pty master to the console socket, serves the control socket, keeps
    /// the state file and removes the guest root at the end. No VM access: no ioctl on
    /// KVM fds, no devices. It may create threads (only threads: `clone` with the flags
    /// of pthread_create; `clone3` is answered ENOSYS so glibc falls back to `clone`).
    Worker,
}

impl ThreadKind {
    /// Every kind, for listing and tests.
    pub const ALL: [ThreadKind; 3] = [ThreadKind::Vmm, ThreadKind::Vcpu, ThreadKind::Worker];
}

impl fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Worker => "worker",
        })
    }
}

/// Which devices the VM has: each adds what its emulation calls, and nothing is allowed
/// for a device the VM does not have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Devices {
    /// At least one virtio-blk disk.
    pub block: bool,
    /// A virtio-vsock device (hybrid vsock over Unix sockets).
    pub vsock: bool,
    /// A virtio-fs share served in-process (passthrough).
    pub virtio_fs: bool,
}

/// Facts about the process the filters are pinned to.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    /// capsa's process id: threads may signal only threads of this process.
    pub pid: i32,
    /// The signal the VMM thread sends to kick vCPUs out of KVM_RUN.
    pub kick_signal: i32,
    /// The VM's devices.
    pub devices: Devices,
}

/// Errors building or installing filters.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not one of the levels.
    #[error("unknown seccomp level {0:?}: expected 0 (off), 1 (log) or 2 (kill)")]
    Level(String),
    /// seccompiler refused the rules (a bug in the lists).
    #[error("building the {kind} seccomp filter: {source}")]
    Build {
        /// Which filter.
        kind: ThreadKind,
        /// Why.
        source: seccompiler::BackendError,
    },
    /// The kernel refused the filter.
    #[error("installing the {kind} seccomp filter: {source}")]
    Install {
        /// Which filter.
        kind: ThreadKind,
        /// Why.
        source: seccompiler::Error,
    },
}

/// The allow-list of one kind of thread, in syscall-number order.
pub fn allow_list(kind: ThreadKind, ctx: &Context) -> Vec<Entry> {
    rules::list(kind, ctx)
}

/// Compiled filters for every kind of thread, built once before any thread needs them so
/// a thread's setup is a single syscall.
#[derive(Debug, Clone)]
pub struct Filters {
    vmm: BpfProgram,
    vcpu: BpfProgram,
    worker: BpfProgram,
    /// Installed under the worker filter: clone3 fails with ENOSYS (its flags live in a
    /// struct a filter cannot read), so glibc's pthread_create falls back to clone, whose
    /// flags the worker list checks.
    no_clone3: BpfProgram,
}

impl Filters {
    /// Compiles the filters; `None` for [`Level::Off`].
    pub fn compile(ctx: &Context, level: Level) -> Result<Option<Filters>, Error> {
        let action = match level {
            Level::Off => return Ok(None),
            Level::Log => SeccompAction::Log,
            Level::Kill => SeccompAction::KillProcess,
        };
        Ok(Some(Filters {
            vmm: compile(ThreadKind::Vmm, ctx, action.clone())?,
            vcpu: compile(ThreadKind::Vcpu, ctx, action.clone())?,
            worker: compile(ThreadKind::Worker, ctx, action)?,
            no_clone3: no_clone3()?,
        }))
    }

    /// The BPF program for `kind`.
    pub fn program(&self, kind: ThreadKind) -> &BpfProgram {
        match kind {
            ThreadKind::Vmm => &self.vmm,
            ThreadKind::Vcpu => &self.vcpu,
            ThreadKind::Worker => &self.worker,
        }
    }

    /// Installs the filter of `kind` on the calling thread (only: threads it creates later
    /// inherit it, threads that exist keep theirs). Also sets no_new_privs, which the
    /// kernel requires of an unprivileged process and which is set anyway by the sandbox.
    /// A worker also gets the filter answering clone3 with ENOSYS (both apply: the kernel
    /// takes the stricter verdict, ENOSYS over the worker list's allow).
    pub fn apply(&self, kind: ThreadKind) -> Result<(), Error> {
        let install = |prog| {
            seccompiler::apply_filter(prog).map_err(|source| Error::Install { kind, source })
        };
        if kind == ThreadKind::Worker {
            install(&self.no_clone3)?;
        }
        install(self.program(kind))
    }
}

/// Everything allowed but clone3, which fails with ENOSYS.
fn no_clone3() -> Result<BpfProgram, Error> {
    let build = |source| Error::Build {
        kind: ThreadKind::Worker,
        source,
    };
    let map = std::collections::BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    let filter = SeccompFilter::new(
        map,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    )
    .map_err(build)?;
    BpfProgram::try_from(filter).map_err(build)
}

fn compile(kind: ThreadKind, ctx: &Context, mismatch: SeccompAction) -> Result<BpfProgram, Error> {
    let build = |source| Error::Build { kind, source };
    let mut map = std::collections::BTreeMap::new();
    for entry in rules::list(kind, ctx) {
        let mut chain = Vec::new();
        for alt in &entry.alternatives {
            let conds = alt
                .iter()
                .map(|c| {
                    let (op, value) = match c.check {
                        Check::Eq(v) => (SeccompCmpOp::Eq, v),
                        Check::MaskedEq { mask, value } => {
                            (SeccompCmpOp::MaskedEq(u64::from(mask)), value)
                        }
                    };
                    // Every checked argument is an int or unsigned int in the kernel's
                    // prototype, so only the low 32 bits matter (and are compared).
                    SeccompCondition::new(c.arg, SeccompCmpArgLen::Dword, op, u64::from(value))
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(build)?;
            chain.push(SeccompRule::new(conds).map_err(build)?);
        }
        // An empty chain allows the syscall whatever its arguments.
        map.insert(entry.nr, chain);
    }
    let filter = SeccompFilter::new(map, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(build)?;
    BpfProgram::try_from(filter).map_err(build)
}

#[cfg(test)]
mod tests;
