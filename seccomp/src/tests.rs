use super::*;

fn ctx(devices: Devices) -> Context {
    Context {
        // SAFETY: getpid has no preconditions.
        pid: unsafe { libc::getpid() },
        kick_signal: libc::SIGRTMIN(),
        devices,
    }
}

fn all_device_sets() -> Vec<Devices> {
    let mut v = Vec::new();
    for bits in 0..8u8 {
        v.push(Devices {
            block: bits & 1 != 0,
            vsock: bits & 2 != 0,
            virtio_fs: bits & 4 != 0,
        });
    }
    v
}

fn names(kind: ThreadKind, devices: Devices) -> Vec<&'static str> {
    allow_list(kind, &ctx(devices))
        .iter()
        .map(|e| e.name)
        .collect()
}

fn entry(kind: ThreadKind, devices: Devices, name: &str) -> Option<Entry> {
    allow_list(kind, &ctx(devices))
        .into_iter()
        .find(|e| e.name == name)
}

#[test]
fn levels_parse_by_number_or_name() {
    for (s, l) in [
        ("0", Level::Off),
        ("off", Level::Off),
        ("1", Level::Log),
        ("log", Level::Log),
        ("2", Level::Kill),
        ("kill", Level::Kill),
    ] {
        assert_eq!(s.parse::<Level>().unwrap(), l);
    }
    let e = "3".parse::<Level>().unwrap_err().to_string();
    assert!(e.contains("expected 0 (off), 1 (log) or 2 (kill)"), "{e}");
}

#[test]
fn ioctl_numbers_match_the_kernel_headers() {
    // Values of the <linux/kvm.h> and <linux/fs.h> macros on x86_64.
    assert_eq!(ioctls::KVM_RUN, 0xae80);
    assert_eq!(ioctls::KVM_GET_REGS, 0x8090_ae81);
    assert_eq!(ioctls::KVM_GET_SREGS, 0x8138_ae83);
    assert_eq!(ioctls::BLKDISCARD, 0x1277);
}

#[test]
fn every_device_combination_compiles() {
    for d in all_device_sets() {
        for level in [Level::Log, Level::Kill] {
            let f = Filters::compile(&ctx(d), level).unwrap().unwrap();
            for kind in ThreadKind::ALL {
                assert!(!f.program(kind).is_empty());
            }
        }
    }
    assert!(Filters::compile(&ctx(Devices::default()), Level::Off)
        .unwrap()
        .is_none());
}

#[test]
fn vcpu_ioctls_are_only_the_ones_a_vcpu_needs() {
    for d in all_device_sets() {
        let e = entry(ThreadKind::Vcpu, d, "ioctl").unwrap();
        let mut reqs: Vec<u32> = e
            .alternatives
            .iter()
            .map(|alt| {
                assert_eq!(alt.len(), 1, "{e}");
                assert_eq!(alt[0].arg, 1);
                match alt[0].check {
                    Check::Eq(v) => v,
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        reqs.sort();
        let mut want = vec![ioctls::KVM_RUN, ioctls::KVM_GET_REGS, ioctls::KVM_GET_SREGS];
        want.sort();
        assert_eq!(reqs, want);
    }
}

#[test]
fn no_blanket_allow_for_dangerous_syscalls() {
    for d in all_device_sets() {
        for kind in ThreadKind::ALL {
            for e in allow_list(kind, &ctx(d)) {
                if [
                    "ioctl",
                    "mmap",
                    "mprotect",
                    "futex",
                    "tgkill",
                    "fcntl",
                    "madvise",
                    "mremap",
                    "socket",
                    "accept4",
                    "sendto",
                    "recvfrom",
                    "fallocate",
                    "mknodat",
                ]
                .contains(&e.name)
                {
                    assert!(!e.alternatives.is_empty(), "{kind}: {e}");
                }
            }
        }
    }
}

#[test]
fn process_control_is_never_allowed() {
    for d in all_device_sets() {
        for kind in ThreadKind::ALL {
            let n = names(kind, d);
            // A worker may create threads: see worker_clones_threads_only.
            let clone: &[&str] = if kind == ThreadKind::Worker {
                &[]
            } else {
                &["clone", "clone3"]
            };
            for bad in clone.iter().copied().chain([
                "execve",
                "execveat",
                "fork",
                "vfork",
                "ptrace",
                "kill",
                "setuid",
                "chroot",
                "mount",
                "unshare",
                "setns",
                "bpf",
                "seccomp",
                "prctl",
                "process_vm_writev",
                "personality",
                "init_module",
                "kexec_load",
            ]) {
                assert!(!n.contains(&bad), "{kind} allows {bad}");
            }
        }
    }
}

#[test]
fn device_syscalls_only_with_the_device() {
    let none = Devices::default();
    let vmm = names(ThreadKind::Vmm, none);
    for s in [
        "socket",
        "connect",
        "openat",
        "mknodat",
        "unlinkat",
        "fallocate",
        "lseek",
    ] {
        assert!(!vmm.contains(&s), "{s} allowed without a device");
    }
    let blk = Devices {
        block: true,
        ..none
    };
    assert!(names(ThreadKind::Vmm, blk).contains(&"fallocate"));
    assert!(!names(ThreadKind::Vmm, blk).contains(&"socket"));
    let vsock = Devices {
        vsock: true,
        ..none
    };
    assert!(names(ThreadKind::Vmm, vsock).contains(&"connect"));
    let fs = Devices {
        virtio_fs: true,
        ..none
    };
    assert!(names(ThreadKind::Vmm, fs).contains(&"unlinkat"));
    // vCPU threads never do device I/O, whatever the devices.
    for d in all_device_sets() {
        let vcpu = names(ThreadKind::Vcpu, d);
        for s in [
            "socket",
            "openat",
            "fallocate",
            "epoll_wait",
            "lseek",
            "timerfd_settime",
        ] {
            assert!(!vcpu.contains(&s), "vCPU allows {s} with {d:?}");
        }
    }
}

#[test]
fn only_vmm_may_kick_and_only_with_the_kick_signal() {
    let c = ctx(Devices::default());
    let kick_allowed = |kind| {
        allow_list(kind, &c)
            .into_iter()
            .find(|e| e.name == "tgkill")
            .unwrap()
            .alternatives
            .iter()
            .any(|alt| {
                alt.iter()
                    .any(|x| x.check == Check::Eq(c.kick_signal as u32))
            })
    };
    assert!(kick_allowed(ThreadKind::Vmm));
    assert!(!kick_allowed(ThreadKind::Vcpu));
}

/// Forks a child that installs `kind`'s filter at `level` and runs `probe` (raw syscalls
/// only: the parent is multi-threaded); returns the signal that killed it, or None if it
/// exited 0.
fn in_filtered_child(kind: ThreadKind, level: Level, probe: fn()) -> Option<i32> {
    let filters = Filters::compile(&ctx(Devices::default()), level)
        .unwrap()
        .unwrap();
    // SAFETY: the child only makes raw syscalls (no allocation, no locks) before _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: a valid rlimit; a killed child must not leave a core file behind.
        unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
        // The child's pid differs from the one the filter pins tgkill to; no probe here
        // relies on it.
        let code = match filters.apply(kind) {
            Ok(()) => {
                probe();
                0
            }
            Err(_) => 99,
        };
        // SAFETY: ends the forked child without running the parent's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child; `status` is a valid out pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid);
    if libc::WIFSIGNALED(status) {
        Some(libc::WTERMSIG(status))
    } else {
        assert_eq!(libc::WEXITSTATUS(status), 0, "child failed");
        None
    }
}

fn getppid() {
    // SAFETY: getppid has no arguments or side effects.
    unsafe { libc::syscall(libc::SYS_getppid) };
}

fn ioctl_kvm_run_on_bad_fd() {
    // SAFETY: fd -1 makes the call fail with EBADF if the filter lets it through.
    unsafe { libc::syscall(libc::SYS_ioctl, -1, ioctls::KVM_RUN as libc::c_ulong, 0) };
}

fn ioctl_kvm_create_vm_on_bad_fd() {
    // SAFETY: as above; KVM_CREATE_VM = _IO(KVMIO, 1) is not on any list.
    unsafe { libc::syscall(libc::SYS_ioctl, -1, 0xae01 as libc::c_ulong, 0) };
}

fn mmap_exec() {
    // SAFETY: a fresh anonymous mapping, unmapped again if it is ever created.
    unsafe {
        let p = libc::syscall(
            libc::SYS_mmap,
            0,
            4096,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        libc::syscall(libc::SYS_munmap, p, 4096);
    }
}

fn mmap_rw() {
    // SAFETY: as above.
    unsafe {
        let p = libc::syscall(
            libc::SYS_mmap,
            0,
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        libc::syscall(libc::SYS_munmap, p, 4096);
    }
}

fn futex_requeue() {
    let word = 0u32;
    // SAFETY: requeue of zero waiters between two valid words: a no-op if allowed.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            &word as *const u32,
            libc::FUTEX_CMP_REQUEUE | libc::FUTEX_PRIVATE_FLAG,
            0,
            0,
            &word as *const u32,
            0,
        )
    };
}

#[test]
fn kill_level_kills_on_forbidden_calls_and_arguments() {
    let sigsys = Some(libc::SIGSYS);
    assert_eq!(
        in_filtered_child(ThreadKind::Vcpu, Level::Kill, getppid),
        sigsys
    );
    assert_eq!(
        in_filtered_child(ThreadKind::Vcpu, Level::Kill, ioctl_kvm_create_vm_on_bad_fd),
        sigsys
    );
    assert_eq!(
        in_filtered_child(ThreadKind::Vmm, Level::Kill, mmap_exec),
        sigsys
    );
    assert_eq!(
        in_filtered_child(ThreadKind::Vmm, Level::Kill, futex_requeue),
        sigsys
    );
    // The same syscalls with allowed arguments pass.
    assert_eq!(
        in_filtered_child(ThreadKind::Vcpu, Level::Kill, ioctl_kvm_run_on_bad_fd),
        None
    );
    assert_eq!(
        in_filtered_child(ThreadKind::Vcpu, Level::Kill, mmap_rw),
        None
    );
    // KVM_RUN is a vCPU ioctl: the VMM thread may not issue it.
    assert_eq!(
        in_filtered_child(ThreadKind::Vmm, Level::Kill, ioctl_kvm_run_on_bad_fd),
        sigsys
    );
}

#[test]
fn worker_clones_threads_only() {
    let e = entry(ThreadKind::Worker, Devices::default(), "clone").unwrap();
    assert_eq!(e.alternatives.len(), 1, "{e}");
    let Check::Eq(flags) = e.alternatives[0][0].check else {
        panic!("{e}")
    };
    let flags = flags as i32;
    for f in [libc::CLONE_VM, libc::CLONE_THREAD, libc::CLONE_SIGHAND] {
        assert_eq!(flags & f, f, "{e}");
    }
    for f in [
        libc::CLONE_NEWNS,
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWPID,
        libc::CLONE_PTRACE,
        libc::CLONE_VFORK,
    ] {
        assert_eq!(flags & f, 0, "{e}");
    }
    // No KVM and no device access for a worker.
    let n = names(ThreadKind::Worker, Devices::default());
    for s in [
        "fallocate",
        "epoll_wait",
        "mknodat",
        "pwrite64",
        "timerfd_settime",
    ] {
        assert!(!n.contains(&s), "worker allows {s}");
    }
}

fn clone3_is_enosys() {
    // SAFETY: clone3 with a NULL argument fails (EFAULT or EINVAL) if it gets through.
    let r = unsafe { libc::syscall(libc::SYS_clone3, 0usize, 0usize) };
    // SAFETY: reading errno right after the call.
    let err = unsafe { *libc::__errno_location() };
    if r != -1 || err != libc::ENOSYS {
        // SAFETY: ends the forked child.
        unsafe { libc::_exit(3) };
    }
}

fn fork_by_clone() {
    // SAFETY: a plain fork; a child it makes exits at once.
    let r = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0, 0, 0, 0) };
    if r == 0 {
        // SAFETY: ends the grandchild.
        unsafe { libc::_exit(0) };
    }
}

fn execve_null() {
    // SAFETY: NULL path: EFAULT if the filter lets it through.
    unsafe { libc::syscall(libc::SYS_execve, 0usize, 0usize, 0usize) };
}

#[test]
fn worker_filter_enosys_for_clone3_kills_on_fork_exec_and_kvm() {
    let sigsys = Some(libc::SIGSYS);
    for level in [Level::Log, Level::Kill] {
        assert_eq!(
            in_filtered_child(ThreadKind::Worker, level, clone3_is_enosys),
            None
        );
    }
    for probe in [fork_by_clone, execve_null, ioctl_kvm_run_on_bad_fd, getppid] {
        assert_eq!(
            in_filtered_child(ThreadKind::Worker, Level::Kill, probe),
            sigsys
        );
    }
}

#[test]
fn log_level_lets_forbidden_calls_through() {
    assert_eq!(
        in_filtered_child(ThreadKind::Vcpu, Level::Log, getppid),
        None
    );
    assert_eq!(
        in_filtered_child(ThreadKind::Vmm, Level::Log, mmap_exec),
        None
    );
}
