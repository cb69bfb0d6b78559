//! Prints capsa's seccomp allow-lists, for review and for seccomp/derive.sh.
//!
//! `cargo run -p seccomp --example allowlist -- [--names] [block] [vsock] [fs]`
//! prints every entry with its argument checks (or, with `--names`, `KIND NAME` lines) of
//! a VM with the given devices.

use seccomp::{allow_list, Context, Devices, ThreadKind};

fn main() {
    let mut names_only = false;
    let mut devices = Devices::default();
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--names" => names_only = true,
            "block" => devices.block = true,
            "vsock" => devices.vsock = true,
            "fs" => devices.virtio_fs = true,
            other => {
                eprintln!("unknown argument {other:?}: expected --names, block, vsock or fs");
                std::process::exit(2);
            }
        }
    }
    let ctx = Context {
        // SAFETY: getpid has no preconditions.
        pid: unsafe { libc::getpid() },
        kick_signal: libc::SIGRTMIN(),
        devices,
    };
    for kind in ThreadKind::ALL {
        let list = allow_list(kind, &ctx);
        if names_only {
            for e in &list {
                println!("{kind} {}", e.name);
            }
            continue;
        }
        println!("== {kind} thread ({devices:?}), {} syscalls", list.len());
        for e in &list {
            println!("{e}");
        }
        println!();
    }
}
