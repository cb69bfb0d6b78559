//! `capsa vm run`: boot a kernel directly, Firecracker style.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use vmm::{DiskConfig, FsConfig, SerialOutput, Vm, VmConfig, VmExit, VsockConfig};

#[derive(Subcommand)]
pub enum VmCommand {
    /// Boot a kernel (ELF vmlinux or bzImage) and run until the guest resets or powers off.
    Run(RunArgs),
}

#[derive(Args)]
pub struct RunArgs {
    /// Kernel image; without it, the probe guest built into capsa is booted.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line (default: "console=ttyS0 reboot=k panic=1", plus
    /// "probe=hello" for the built-in probe guest).
    #[arg(long)]
    cmdline: Option<String>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    mem_mib: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Serial console: `stdio` (output to stdout, input from stdin), `none`, or a file
    /// path for the output.
    #[arg(long, default_value = "stdio")]
    serial: String,
    /// KVM device node.
    #[arg(long, default_value = "/dev/kvm")]
    kvm_device: PathBuf,
    /// Boot the capsa guest agent: capsa itself becomes the guest's /init, on a read-only
    /// virtio-fs root (tag `capsa-root`), and the kernel command line gets the options
    /// capsa's guest kernel wants (plus the PVM workarounds on PVM hosts). Needs a kernel
    /// from guest-kernel/.
    #[arg(long, conflicts_with = "initrd")]
    agent: bool,
    /// virtio-blk disk: `PATH[,ro][,id=SERIAL]` (repeatable; the guest sees them in order).
    #[arg(long = "disk", value_parser = parse_disk)]
    disks: Vec<DiskConfig>,
    /// virtio-fs share: `TAG=DIR[,ro]` (repeatable); the guest mounts it with
    /// `mount -t virtiofs TAG /mnt`.
    #[arg(long = "fs", value_parser = parse_share)]
    shares: Vec<FsConfig>,
    /// Guest CID of the virtio-vsock device (3 or more); needs --vsock-uds.
    #[arg(long, requires = "vsock_uds")]
    vsock_cid: Option<u64>,
    /// Host Unix socket of the vsock device: connect and write `CONNECT <port>\n` to
    /// reach a guest port; guest connections to host port P go to `<PATH>_P`.
    #[arg(long, requires = "vsock_cid")]
    vsock_uds: Option<PathBuf>,
    #[command(flatten)]
    sandbox: crate::sandbox::SandboxArgs,
}

/// Parses `TAG=DIR[,ro]`.
fn parse_share(s: &str) -> Result<FsConfig, String> {
    let (tag, rest) = s.split_once('=').ok_or("expected TAG=DIR[,ro]")?;
    let mut parts = rest.split(',');
    let dir = parts
        .next()
        .filter(|d| !d.is_empty())
        .ok_or("empty share directory")?;
    let mut share = FsConfig {
        tag: tag.to_string(),
        dir: dir.into(),
        read_only: false,
    };
    for opt in parts {
        match opt {
            "ro" => share.read_only = true,
            "rw" => share.read_only = false,
            _ => return Err(format!("unknown share option {opt:?} (expected ro or rw)")),
        }
    }
    Ok(share)
}

/// Kernel command line for capsa's guest kernel running the agent.
///
/// - `root=capsa-root rootfstype=virtiofs ro init=/init`: the guest root is the read-only
///   share made by [`crate::guest_root`]; the guest reads only the pages of capsa it
///   runs, straight from the host file, instead of unpacking an initramfs.
/// - `reboot=k panic=1`: a reboot or panic resets through the i8042, ending the VM.
/// - `tsc=reliable no_timer_check noreplace-smp quiet`: skip checks and work a VM does
///   not need.
/// - On PVM hosts ([`PVM_CMDLINE`]): `capsa.pvm=1` switches on the guest-kernel workarounds
///   (guest-kernel/patches); the rest keeps the kernel off instructions and paths that PVM's
///   ring-0 emulator lacks or runs slowly, and `GLIBC_TUNABLES` (which the kernel passes to
///   init's environment) keeps guest user space off AVX state the guest kernel cannot save
///   ([`crate::guest::PVM_GLIBC_TUNABLES`]).
pub fn agent_cmdline(pvm: bool) -> String {
    let mut c = format!(
        "console=ttyS0 root={} rootfstype=virtiofs ro init=/init reboot=k panic=1 quiet tsc=reliable no_timer_check noreplace-smp",
        crate::guest_root::ROOT_TAG
    );
    if pvm {
        c.push(' ');
        c.push_str(PVM_CMDLINE);
        c.push_str(&format!(
            " {}={}",
            crate::guest::GLIBC_TUNABLES,
            crate::guest::PVM_GLIBC_TUNABLES
        ));
    }
    c
}

/// Guest kernel options for PVM hosts. `noxsave` and `clearcpuid=` are needed on top of the
/// VMM's CPUID masks: the guest kernel still found XSAVE with the masks alone.
pub const PVM_CMDLINE: &str = "capsa.pvm=1 rodata=off percpu_alloc=page mitigations=off noxsave clearcpuid=smap,popcnt,fsgsbase,rdrand,rdseed,rdpid,pku,avx,avx2,erms,fsrm";

/// Parses `PATH[,ro][,id=SERIAL]`.
fn parse_disk(s: &str) -> Result<DiskConfig, String> {
    let mut parts = s.split(',');
    let path = parts
        .next()
        .filter(|p| !p.is_empty())
        .ok_or("empty disk path")?;
    let mut disk = DiskConfig {
        path: path.into(),
        read_only: false,
        id: None,
    };
    for opt in parts {
        match opt.split_once('=') {
            None if opt == "ro" => disk.read_only = true,
            None if opt == "rw" => disk.read_only = false,
            Some(("id", v)) if !v.is_empty() => disk.id = Some(v.to_string()),
            _ => {
                return Err(format!(
                    "unknown disk option {opt:?} (expected ro, rw or id=SERIAL)"
                ))
            }
        }
    }
    Ok(disk)
}

pub fn run(cmd: VmCommand, start: Instant) -> anyhow::Result<ExitCode> {
    match cmd {
        VmCommand::Run(args) => run_vm(args, start),
    }
}

fn run_vm(args: RunArgs, start: Instant) -> anyhow::Result<ExitCode> {
    // Before capsa opens anything: inherited fds are closed, but those named /dev/fd/N.
    let disks = args.disks.iter().map(|d| d.path.as_path());
    let named = args.kernel.iter().chain(&args.initrd).map(|p| p.as_path());
    crate::sandbox::harden_process(named.chain(disks).chain([args.serial.as_ref()]))?;
    // The built-in probe guest lives in a memfd; keep it open until the kernel is loaded.
    let (kernel, _probe_fd, default_cmdline) = match args.kernel {
        Some(k) => (k, None, "console=ttyS0 reboot=k panic=1".to_string()),
        None => {
            let (path, fd) = crate::probe::materialize().context("preparing the probe guest")?;
            (path, Some(fd), "console=ttyS0 probe=hello".to_string())
        }
    };
    let (serial_out, serial_in) = match args.serial.as_str() {
        "stdio" => (SerialOutput::Stdout, true),
        "none" => (SerialOutput::Null, false),
        path => (SerialOutput::File(path.into()), false),
    };
    let mut config = VmConfig::new(kernel);
    let mut _guest_root = None;
    if args.agent {
        let root = crate::guest_root::GuestRoot::create().context("preparing the guest root")?;
        config.shares.push(root.share());
        _guest_root = Some(root);
    }
    config.initrd = args.initrd;
    let default_cmdline = if args.agent {
        agent_cmdline(vmm::vstate::kvm::host_is_pvm())
    } else {
        default_cmdline
    };
    config.cmdline = args.cmdline.unwrap_or(default_cmdline);
    config.mem_mib = args.mem_mib;
    config.vcpus = args.vcpus;
    config.serial_out = serial_out;
    config.serial_in = serial_in;
    config.kvm_path = args.kvm_device;
    config.start_time = start;
    config.handle_signals = true;
    config.disks = args.disks;
    if let (Some(cid), Some(uds)) = (args.vsock_cid, args.vsock_uds) {
        config.vsock = Some(VsockConfig { cid, uds });
    }

    config.shares.extend(args.shares);
    config.thread_hook = args.sandbox.thread_hook(&config)?;
    let jail = args.sandbox.jail(&config);
    let vm = Vm::new(config)?;
    jail.enter()?;
    let report = vm.run()?;
    Ok(match report.exit {
        VmExit::Reset | VmExit::Shutdown => ExitCode::SUCCESS,
        VmExit::Signal(sig) => {
            eprintln!("capsa: VM stopped by signal {sig}");
            ExitCode::from(128u8.saturating_add(sig as u8))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_agent_cmdline_carries_the_glibc_tunables() {
        let plain = agent_cmdline(false);
        assert!(!plain.contains("capsa.pvm") && !plain.contains("GLIBC_TUNABLES"));
        let pvm = agent_cmdline(true);
        assert!(pvm.contains(" capsa.pvm=1 "), "{pvm}");
        // One word, so the kernel hands it to init's environment whole.
        let word = format!("GLIBC_TUNABLES={}", crate::guest::PVM_GLIBC_TUNABLES);
        assert!(pvm.split(' ').any(|w| w == word), "{pvm}");
        assert!(crate::guest::PVM_GLIBC_TUNABLES.contains("-AVX2,"));
    }

    #[test]
    fn disk_options() {
        let d = parse_disk("/x/disk.img").unwrap();
        assert_eq!(
            (d.path, d.read_only, d.id),
            ("/x/disk.img".into(), false, None)
        );
        let d = parse_disk("a.img,ro,id=root").unwrap();
        assert!(d.read_only);
        assert_eq!(d.id.as_deref(), Some("root"));
        assert!(parse_disk("").is_err());
        assert!(parse_disk(",ro").is_err());
        assert!(parse_disk("a.img,bogus")
            .unwrap_err()
            .contains("unknown disk option"));
        assert!(parse_disk("a.img,id=").is_err());
    }

    #[test]
    fn share_options() {
        let s = parse_share("rootfs=/srv/x,ro").unwrap();
        assert_eq!(
            (s.tag.as_str(), s.dir.to_str().unwrap(), s.read_only),
            ("rootfs", "/srv/x", true)
        );
        assert!(!parse_share("t=/d").unwrap().read_only);
        assert!(parse_share("/d").is_err());
        assert!(parse_share("t=").is_err());
        assert!(parse_share("t=/d,bogus")
            .unwrap_err()
            .contains("unknown share option"));
    }
}
