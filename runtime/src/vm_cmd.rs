//! `capsa vm run`: boot a kernel directly, Firecracker style.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use vmm::{DiskConfig, SerialOutput, Vm, VmConfig, VmExit};

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
    /// virtio-blk disk: `PATH[,ro][,id=SERIAL]` (repeatable; the guest sees them in order).
    #[arg(long = "disk", value_parser = parse_disk)]
    disks: Vec<DiskConfig>,
}

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
    config.initrd = args.initrd;
    config.cmdline = args.cmdline.unwrap_or(default_cmdline);
    config.mem_mib = args.mem_mib;
    config.vcpus = args.vcpus;
    config.serial_out = serial_out;
    config.serial_in = serial_in;
    config.kvm_path = args.kvm_device;
    config.start_time = start;
    config.handle_signals = true;
    config.disks = args.disks;

    let vm = Vm::new(config)?;
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
}
