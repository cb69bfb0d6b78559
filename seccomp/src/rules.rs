//! The allow-lists. Each entry says why capsa needs the syscall; entries with argument
//! checks allow only the listed argument values.
//!
//! Derived from strace of every probe-guest scenario and of the integration tests, on the
//! debug and the release static binaries (see seccomp/README.md to re-derive). Entries for
//! vsock and virtio-fs come from reading their code in devices/src/virtio/ and are only in
//! the lists of a VM that has such a device.

use std::collections::BTreeMap;
use std::fmt;

use crate::{Context, ThreadKind};

/// A check on one syscall argument (compared as 32 bits: see `compile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// `arg == value`.
    Eq(u32),
    /// `arg & mask == value`.
    MaskedEq {
        /// Bits looked at.
        mask: u32,
        /// Their required value.
        value: u32,
    },
}

/// A condition on argument `arg` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cond {
    /// Argument index.
    pub arg: u8,
    /// The check.
    pub check: Check,
    /// The value's name, for listings.
    pub what: &'static str,
}

impl fmt::Display for Cond {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.check {
            Check::Eq(v) => write!(f, "arg{} == {} ({v:#x})", self.arg, self.what),
            Check::MaskedEq { mask, value } => write!(
                f,
                "arg{} & {mask:#x} == {value:#x} ({})",
                self.arg, self.what
            ),
        }
    }
}

/// One allowed syscall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Syscall number (x86_64).
    pub nr: i64,
    /// Its name.
    pub name: &'static str,
    /// Argument patterns, any of which allows the call; each is a conjunction. Empty: any
    /// arguments.
    pub alternatives: Vec<Vec<Cond>>,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.alternatives.is_empty() {
            return write!(f, "{}", self.name);
        }
        for (i, alt) in self.alternatives.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            let conds: Vec<String> = alt.iter().map(|c| c.to_string()).collect();
            write!(f, "{} if {}", self.name, conds.join(" && "))?;
        }
        Ok(())
    }
}

/// A syscall number with its name.
#[derive(Clone, Copy)]
struct Sys(i64, &'static str);

macro_rules! sys {
    ($n:ident) => {
        Sys(libc::$n, stringify!($n).trim_start_matches("SYS_"))
    };
}

/// `arg == value`, named after the value expression.
macro_rules! eq {
    ($arg:expr, $v:expr) => {
        Cond {
            arg: $arg,
            check: Check::Eq($v as u32),
            what: stringify!($v).trim_start_matches("libc::"),
        }
    };
}

/// `arg & mask == value`.
fn masked(arg: u8, mask: u32, value: u32, what: &'static str) -> Cond {
    Cond {
        arg,
        check: Check::MaskedEq { mask, value },
        what,
    }
}

#[derive(Default)]
struct List(BTreeMap<i64, Entry>);

impl List {
    /// Allows `s` with any arguments.
    fn allow(&mut self, s: Sys) {
        let e = self.entry(s);
        // A blanket allow must not silently widen a checked entry: both are a list bug.
        assert!(
            e.alternatives.is_empty(),
            "{} is allowed both with and without argument checks",
            s.1
        );
    }

    /// Allows `s` when all of `conds` hold (adds one alternative).
    fn allow_if(&mut self, s: Sys, conds: &[Cond]) {
        assert!(!conds.is_empty());
        let fresh = !self.0.contains_key(&s.0);
        let e = self.entry(s);
        assert!(
            fresh || !e.alternatives.is_empty(),
            "{} is allowed both with and without argument checks",
            s.1
        );
        let same = |a: &Vec<Cond>| {
            a.len() == conds.len()
                && a.iter()
                    .zip(conds)
                    .all(|(x, y)| x.arg == y.arg && x.check == y.check)
        };
        if !e.alternatives.iter().any(same) {
            e.alternatives.push(conds.to_vec());
        }
    }

    fn entry(&mut self, s: Sys) -> &mut Entry {
        self.0.entry(s.0).or_insert_with(|| Entry {
            nr: s.0,
            name: s.1,
            alternatives: Vec::new(),
        })
    }
}

/// ioctl request numbers capsa's threads may use (the kernel compares the low 32 bits).
pub mod ioctls {
    const fn ioc(dir: u32, ty: u32, nr: u32, size: u32) -> u32 {
        (dir << 30) | (size << 16) | (ty << 8) | nr
    }
    const KVMIO: u32 = 0xAE;
    const IOC_READ: u32 = 2;
    /// `_IO(KVMIO, 0x80)`.
    pub const KVM_RUN: u32 = ioc(0, KVMIO, 0x80, 0);
    /// `_IOR(KVMIO, 0x81, struct kvm_regs)` (144 bytes).
    pub const KVM_GET_REGS: u32 = ioc(IOC_READ, KVMIO, 0x81, 144);
    /// `_IOR(KVMIO, 0x83, struct kvm_sregs)` (312 bytes).
    pub const KVM_GET_SREGS: u32 = ioc(IOC_READ, KVMIO, 0x83, 312);
    /// `_IO(0x12, 119)` from <linux/fs.h>.
    pub const BLKDISCARD: u32 = ioc(0, 0x12, 119, 0);
}

use ioctls::*;

/// The allow-list of `kind` for the process and devices in `ctx`.
pub(crate) fn list(kind: ThreadKind, ctx: &Context) -> Vec<Entry> {
    let mut l = List::default();
    common(&mut l, ctx);
    match kind {
        ThreadKind::Vmm => vmm(&mut l, ctx),
        ThreadKind::Vcpu => vcpu(&mut l, ctx),
        ThreadKind::Worker => worker(&mut l),
    }
    l.0.into_values().collect()
}

/// What any thread of the static Rust + glibc binary needs to run, allocate, log and end.
fn common(l: &mut List, ctx: &Context) {
    // Logs on stderr, eventfd signals (interrupts, vCPU exit), serial console output.
    l.allow(sys!(SYS_write));
    // Dropping fds (vCPU fd at thread end, device fds at VM teardown).
    l.allow(sys!(SYS_close));
    // Debug builds check an fd is open before closing it (OwnedFd drop).
    l.allow_if(sys!(SYS_fcntl), &[eq!(1, libc::F_GETFD)]);

    // Locks, condvars, thread join (std and glibc). Only plain wait/wake: no requeue or PI
    // operations, historically the kernel's risky futex paths.
    let p = libc::FUTEX_PRIVATE_FLAG;
    let rt = libc::FUTEX_CLOCK_REALTIME;
    for (op, what) in [
        (libc::FUTEX_WAIT, "FUTEX_WAIT"),
        (libc::FUTEX_WAIT | p, "FUTEX_WAIT_PRIVATE"),
        (libc::FUTEX_WAKE, "FUTEX_WAKE"),
        (libc::FUTEX_WAKE | p, "FUTEX_WAKE_PRIVATE"),
        (libc::FUTEX_WAIT_BITSET, "FUTEX_WAIT_BITSET"),
        (libc::FUTEX_WAIT_BITSET | p, "FUTEX_WAIT_BITSET_PRIVATE"),
        (
            libc::FUTEX_WAIT_BITSET | rt,
            "FUTEX_WAIT_BITSET|FUTEX_CLOCK_REALTIME",
        ),
        (
            libc::FUTEX_WAIT_BITSET | p | rt,
            "FUTEX_WAIT_BITSET_PRIVATE|FUTEX_CLOCK_REALTIME",
        ),
        (libc::FUTEX_WAKE_BITSET, "FUTEX_WAKE_BITSET"),
        (libc::FUTEX_WAKE_BITSET | p, "FUTEX_WAKE_BITSET_PRIVATE"),
    ] {
        l.allow_if(
            sys!(SYS_futex),
            &[Cond {
                arg: 1,
                check: Check::Eq(op as u32),
                what,
            }],
        );
    }

    // malloc arenas, thread stacks, alternate signal stacks: anonymous private memory
    // only, never executable (no new code can be mapped once the guest runs).
    l.allow_if(
        sys!(SYS_mmap),
        &[
            masked(2, libc::PROT_EXEC as u32, 0, "no PROT_EXEC"),
            masked(
                3,
                (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u32,
                libc::MAP_ANONYMOUS as u32,
                "MAP_ANONYMOUS, not MAP_SHARED",
            ),
        ],
    );
    l.allow_if(
        sys!(SYS_mprotect),
        &[masked(2, libc::PROT_EXEC as u32, 0, "no PROT_EXEC")],
    );
    l.allow(sys!(SYS_munmap));
    // malloc trims and glibc frees exited threads' stacks.
    l.allow_if(sys!(SYS_madvise), &[eq!(2, libc::MADV_DONTNEED)]);
    // realloc of large blocks; never MREMAP_FIXED (placing a mapping over another).
    l.allow_if(sys!(SYS_mremap), &[eq!(3, libc::MREMAP_MAYMOVE)]);
    l.allow_if(sys!(SYS_mremap), &[eq!(3, 0)]);
    // The main malloc arena.
    l.allow(sys!(SYS_brk));

    // Returning from the vCPU kick handler (and Rust's SIGSEGV guard handler).
    l.allow(sys!(SYS_rt_sigreturn));
    // pthread_kill, abort, thread exit and the VMM restoring its mask block signals.
    l.allow(sys!(SYS_rt_sigprocmask));
    // Rust tears down each thread's alternate signal stack when the thread ends.
    l.allow(sys!(SYS_sigaltstack));
    // Clock reads normally go through the vDSO; this is its fallback (e.g. no stable TSC).
    l.allow(sys!(SYS_clock_gettime));
    // std seeds HashMap keys once per thread; harmless, and the first map a device
    // creates in a new thread must not kill the VM.
    l.allow(sys!(SYS_getrandom));
    // pthread_kill/raise look up the ids to signal.
    l.allow(sys!(SYS_getpid));
    l.allow(sys!(SYS_gettid));
    // abort() (a Rust abort, e.g. a panic while panicking) raises SIGABRT on itself.
    l.allow_if(
        sys!(SYS_tgkill),
        &[
            Cond {
                arg: 0,
                check: Check::Eq(ctx.pid as u32),
                what: "capsa's pid",
            },
            eq!(2, libc::SIGABRT),
        ],
    );
    // Ending a thread, or the process.
    l.allow(sys!(SYS_exit));
    l.allow(sys!(SYS_exit_group));
}

/// The event loop and device emulation.
fn vmm(l: &mut List, ctx: &Context) {
    // eventfds, signalfd, timerfd, stdin (serial input), disk reads.
    l.allow(sys!(SYS_read));
    l.allow(sys!(SYS_epoll_wait));
    // Serial input stops and resumes watching stdin; vsock watches its sockets.
    l.allow(sys!(SYS_epoll_ctl));
    // Serial input retry timer.
    l.allow(sys!(SYS_timerfd_settime));
    // Waiting between vCPU kicks when stopping the VM.
    l.allow(sys!(SYS_clock_nanosleep));
    // Kicking vCPU threads out of KVM_RUN: only the kick signal, only to our threads.
    l.allow_if(
        sys!(SYS_tgkill),
        &[
            Cond {
                arg: 0,
                check: Check::Eq(ctx.pid as u32),
                what: "capsa's pid",
            },
            Cond {
                arg: 2,
                check: Check::Eq(ctx.kick_signal as u32),
                what: "the vCPU kick signal",
            },
        ],
    );
    // Restoring the terminal mode of stdin when the VM ends.
    l.allow_if(
        sys!(SYS_ioctl),
        &[eq!(0, libc::STDIN_FILENO), eq!(1, libc::TCGETS)],
    );
    l.allow_if(
        sys!(SYS_ioctl),
        &[eq!(0, libc::STDIN_FILENO), eq!(1, libc::TCSETS)],
    );

    let dev = ctx.devices;
    if dev.block {
        block(l);
    }
    if dev.vsock {
        vsock(l);
    }
    if dev.virtio_fs {
        virtio_fs(l);
    }
}

/// A vCPU thread: KVM_RUN, and device register accesses that only touch memory, read or
/// write eventfds, write the serial output, or log.
fn vcpu(l: &mut List, ctx: &Context) {
    l.allow_if(sys!(SYS_ioctl), &[eq!(1, KVM_RUN)]);
    // A virtio device reset (the guest writing 0 to its status register, handled on the
    // vCPU thread) drains the device's interrupt and queue eventfds.
    l.allow(sys!(SYS_read));
    // The register dump logged (at debug level) when a vCPU ends on a fatal exit.
    l.allow_if(sys!(SYS_ioctl), &[eq!(1, KVM_GET_REGS)]);
    l.allow_if(sys!(SYS_ioctl), &[eq!(1, KVM_GET_SREGS)]);
    if ctx.devices.vsock {
        // The guest activating or resetting the device (a register write, handled on
        // the vCPU thread) starts or stops watching the listening socket.
        l.allow(sys!(SYS_epoll_ctl));
    }
}

/// The worker threads of an OCI sandbox's process (runtime/src/oci/shim.rs, relay.rs,
/// control.rs, state.rs, sys.rs, agent/client.rs, guest_root.rs): everything it does
/// outside the VM. No KVM, no devices, no processes: only files (state directory, pty,
/// the guest root's removal), Unix sockets (agent through the vsock socket, control
/// socket, console socket) and threads.
fn worker(l: &mut List) {
    // Streams (agent connections, relays, the control socket, state files).
    l.allow(sys!(SYS_read));
    // Waiting for the signals it forwards (sigwait).
    l.allow(sys!(SYS_rt_sigtimedwait));
    // Retries while the agent comes up; the VMM thread's last wait.
    l.allow(sys!(SYS_clock_nanosleep));

    // Threads: the relays and the control-socket server (std::thread::spawn). Only the
    // flags of glibc's pthread_create (no new process, no namespace); clone3 carries its
    // flags in memory, so a companion filter answers it ENOSYS and glibc uses clone.
    let thread = libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM
        | libc::CLONE_SETTLS
        | libc::CLONE_PARENT_SETTID
        | libc::CLONE_CHILD_CLEARTID;
    l.allow_if(
        sys!(SYS_clone),
        &[Cond {
            arg: 0,
            check: Check::Eq(thread as u32),
            what: "pthread_create's flags",
        }],
    );
    l.allow(sys!(SYS_clone3));
    // A new thread registers its robust futex list and rseq area (glibc); its first
    // malloc makes an arena, sized from the CPUs it may run on (sched_getaffinity of its
    // own tid: only reads).
    l.allow(sys!(SYS_set_robust_list));
    l.allow(sys!(SYS_rseq));
    l.allow(sys!(SYS_sched_getaffinity));

    // State files: state.json read, written to a temp file, fsync'd and renamed, under
    // flock (released by closing the lock file); ctl.sock replaced; std::fs::read sizes
    // files with statx, remove_dir_all stats with newfstatat.
    l.allow(sys!(SYS_openat));
    l.allow(sys!(SYS_statx));
    l.allow(sys!(SYS_newfstatat));
    l.allow(sys!(SYS_fsync));
    l.allow(sys!(SYS_rename));
    l.allow(sys!(SYS_unlink));
    l.allow_if(sys!(SYS_flock), &[eq!(1, libc::LOCK_EX)]);
    // Removing the guest root when the container ends (remove_dir_all: fdopendir checks
    // the fd's flags and sets FD_CLOEXEC).
    l.allow(sys!(SYS_getdents64));
    l.allow(sys!(SYS_unlinkat));
    l.allow_if(sys!(SYS_fcntl), &[eq!(1, libc::F_GETFL)]);
    l.allow_if(
        sys!(SYS_fcntl),
        &[eq!(1, libc::F_SETFD), eq!(2, libc::FD_CLOEXEC)],
    );
    // Duplicating stdio for the relays (try_clone).
    l.allow_if(sys!(SYS_fcntl), &[eq!(1, libc::F_DUPFD_CLOEXEC)]);

    // Unix stream sockets only: the agent (through the VM's vsock socket), the control
    // socket (bind, listen, accept), the console socket (sendmsg with the pty master).
    l.allow_if(
        sys!(SYS_socket),
        &[
            eq!(0, libc::AF_UNIX),
            eq!(1, libc::SOCK_STREAM | libc::SOCK_CLOEXEC),
        ],
    );
    l.allow(sys!(SYS_connect));
    l.allow(sys!(SYS_bind));
    l.allow(sys!(SYS_listen));
    l.allow_if(sys!(SYS_accept4), &[eq!(3, libc::SOCK_CLOEXEC)]);
    l.allow_if(sys!(SYS_sendto), &[eq!(3, libc::MSG_NOSIGNAL)]);
    l.allow_if(sys!(SYS_recvfrom), &[eq!(3, 0)]);
    l.allow_if(sys!(SYS_sendmsg), &[eq!(2, 0)]);
    l.allow_if(sys!(SYS_shutdown), &[eq!(1, libc::SHUT_WR)]);

    // The container's terminal: openpty (posix_openpt, unlockpt, ptsname, the peer),
    // raw mode, controlling terminal (for SIGWINCH), window size.
    for req in [
        libc::TIOCGPTN,
        libc::TIOCSPTLCK,
        libc::TIOCGPTPEER,
        libc::TCGETS,
        libc::TCSETS,
        libc::TIOCSCTTY,
        libc::TIOCGWINSZ,
    ] {
        l.allow_if(
            sys!(SYS_ioctl),
            &[Cond {
                arg: 1,
                check: Check::Eq(req as u32),
                what: "a pty or terminal request",
            }],
        );
    }
}

/// virtio-blk request handling (devices/src/virtio/block): reads and writes go through
/// read/write at a seek position straight into guest memory.
fn block(l: &mut List) {
    l.allow(sys!(SYS_lseek));
    // VIRTIO_BLK_T_FLUSH (sync_data).
    l.allow(sys!(SYS_fdatasync));
    // Discard and write-zeroes: only these modes.
    for mode in [
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
    ] {
        l.allow_if(
            sys!(SYS_fallocate),
            &[Cond {
                arg: 1,
                check: Check::Eq(mode as u32),
                what: "PUNCH_HOLE or ZERO_RANGE, with KEEP_SIZE",
            }],
        );
    }
    // Discard on a host block device.
    l.allow_if(sys!(SYS_ioctl), &[eq!(1, BLKDISCARD)]);
    // Zero-filling fallback (write_all_at).
    l.allow(sys!(SYS_pwrite64));
}

/// Hybrid vsock (devices/src/virtio/vsock): Unix stream sockets to host clients.
fn vsock(l: &mut List) {
    // Guest-initiated connections to `<uds_path>_<port>`.
    l.allow_if(
        sys!(SYS_socket),
        &[
            eq!(0, libc::AF_UNIX),
            eq!(
                1,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC
            ),
        ],
    );
    l.allow(sys!(SYS_connect));
    // Host clients on the listening socket (UnixListener::accept).
    l.allow_if(sys!(SYS_accept4), &[eq!(3, libc::SOCK_CLOEXEC)]);
    // set_nonblocking on accepted streams.
    l.allow_if(sys!(SYS_ioctl), &[eq!(1, libc::FIONBIO)]);
    // send(MSG_NOSIGNAL) and plain recv.
    l.allow_if(sys!(SYS_sendto), &[eq!(3, libc::MSG_NOSIGNAL)]);
    l.allow_if(sys!(SYS_recvfrom), &[eq!(3, 0)]);
    l.allow(sys!(SYS_shutdown));
    // At teardown the device removes its socket file, if it is still the one it bound
    // (symlink_metadata, then remove_file).
    l.allow_if(sys!(SYS_statx), &[eq!(2, libc::AT_SYMLINK_NOFOLLOW)]);
    l.allow(sys!(SYS_unlink));
    // take_error() on a connection the host closed.
    l.allow_if(
        sys!(SYS_getsockopt),
        &[eq!(1, libc::SOL_SOCKET), eq!(2, libc::SO_ERROR)],
    );
}

/// Passthrough virtio-fs (devices/src/virtio/fs/sys.rs), served by the VMM thread. Paths
/// are always relative to directory fds opened before the guest started.
fn virtio_fs(l: &mut List) {
    for s in [
        sys!(SYS_openat),
        sys!(SYS_openat2),
        sys!(SYS_newfstatat),
        sys!(SYS_fstatfs),
        sys!(SYS_mkdirat),
        sys!(SYS_symlinkat),
        sys!(SYS_unlinkat),
        sys!(SYS_renameat2),
        sys!(SYS_linkat),
        sys!(SYS_readlinkat),
        sys!(SYS_fchownat),
        sys!(SYS_fchmodat),
        sys!(SYS_utimensat),
        sys!(SYS_lseek),
        sys!(SYS_getdents64),
        sys!(SYS_fgetxattr),
        sys!(SYS_flistxattr),
        sys!(SYS_fsetxattr),
        sys!(SYS_fremovexattr),
        sys!(SYS_pread64),
        sys!(SYS_pwrite64),
        sys!(SYS_fsync),
        sys!(SYS_fdatasync),
        sys!(SYS_ftruncate),
        sys!(SYS_geteuid),
    ] {
        l.allow(s);
    }
    // FUSE_FALLOCATE: the modes a guest can ask for on its own files.
    for mode in [
        0,
        libc::FALLOC_FL_KEEP_SIZE,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        libc::FALLOC_FL_ZERO_RANGE,
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
    ] {
        l.allow_if(
            sys!(SYS_fallocate),
            &[Cond {
                arg: 1,
                check: Check::Eq(mode as u32),
                what: "allocate, punch hole or zero range",
            }],
        );
    }
    // Removing a share made by capsa (the agent's guest root) when the VM ends:
    // std::fs::remove_dir_all stats the top, then glibc's fdopendir checks each directory
    // fd's mode and sets FD_CLOEXEC.
    l.allow_if(sys!(SYS_statx), &[eq!(2, libc::AT_SYMLINK_NOFOLLOW)]);
    l.allow_if(sys!(SYS_fcntl), &[eq!(1, libc::F_GETFL)]);
    l.allow_if(
        sys!(SYS_fcntl),
        &[eq!(1, libc::F_SETFD), eq!(2, libc::FD_CLOEXEC)],
    );
    // Regular files, FIFOs and sockets only: never a device node, which would hand the
    // guest a host device.
    for t in [0, libc::S_IFREG, libc::S_IFIFO, libc::S_IFSOCK] {
        l.allow_if(
            sys!(SYS_mknodat),
            &[masked(2, libc::S_IFMT, t, "S_IFREG, S_IFIFO or S_IFSOCK")],
        );
    }
}
