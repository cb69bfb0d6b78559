//! `capsa vm run` booting the probe guest on the real /dev/kvm: boot protocol, vCPUs,
//! devices, exit statuses and signal handling.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use common::*;

fn assert_pass(o: &Output, scenario: &str) {
    o.assert_stdout_has("capsa-probe: ring3");
    o.assert_stdout_has(&format!("PROBE-RESULT: PASS {scenario}"));
    assert_eq!(o.code(), Some(0), "{o}");
}

#[test]
fn boots_probe_with_one_vcpu_and_reports_boot_time() {
    let o = probe("hello", &["--vcpus", "1"]);
    assert_pass(&o, "hello");
    // The boot-timer port was hit and logged with a plausible time.
    let us: u64 = o
        .stderr
        .split("guest boot timer: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no boot timer line\n{o}"));
    assert!(us > 0 && us < DEADLINE.as_micros() as u64, "{us} us\n{o}");
}

#[test]
fn embedded_probe_is_the_default_guest() {
    let o = run(&["vm", "run"]);
    assert_pass(&o, "hello");
}

#[test]
fn two_vcpus_start_through_init_sipi() {
    let o = probe("smp", &["--vcpus", "2"]);
    assert_pass(&o, "smp");
    assert_eq!(
        o.field("PROBE-SMP: mptable_cpus", "mptable_cpus")
            .as_deref(),
        Some("2"),
        "{o}"
    );
    assert_eq!(
        o.field("PROBE-SMP: started", "started").as_deref(),
        Some("1"),
        "{o}"
    );
    assert_eq!(
        o.field("PROBE-SMP: long_mode", "long_mode").as_deref(),
        Some("1"),
        "{o}"
    );
}

#[test]
fn four_vcpus() {
    let o = probe("smp", &["--vcpus", "4"]);
    assert_pass(&o, "smp");
    assert_eq!(
        o.field("PROBE-SMP: started", "started").as_deref(),
        Some("3"),
        "{o}"
    );
}

#[test]
fn cpuid_seen_by_guest_kernel_is_filtered_per_vcpu() {
    for vcpus in ["1", "2"] {
        let o = probe("cpuid", &["--vcpus", vcpus]);
        assert_pass(&o, "cpuid");
        let f = |k| o.field("PROBE-CPUID:", k);
        assert_eq!(f("hypervisor").as_deref(), Some("KVMKVMKVM"), "{o}");
        assert_eq!(f("apic_id").as_deref(), Some("0"), "{o}");
        assert_eq!(f("logical_count").as_deref(), Some(vcpus), "{o}");
        if host_is_pvm() {
            // PVM's emulator lacks cmpxchg16b: the VMM must hide it.
            assert_eq!(f("cx16").as_deref(), Some("0"), "{o}");
        }
    }
}

#[test]
fn e820_map_matches_memory_size() {
    let o = probe("mem", &["--mem-mib", "64"]);
    assert_pass(&o, "mem");
    // RAM below the EBDA plus everything from 1 MiB up.
    let expected = 0x9fc00u64 + (64 << 20) - 0x10_0000;
    assert_eq!(
        o.field("PROBE-MEM: ram", "ram_bytes"),
        Some(expected.to_string()),
        "{o}"
    );
    assert_eq!(
        o.field("PROBE-MEM: touched", "bad").as_deref(),
        Some("0"),
        "{o}"
    );
}

#[test]
fn memory_above_the_mmio_gap() {
    let o = probe("mem", &["--mem-mib", "4096"]);
    assert_pass(&o, "mem");
    let expected = 0x9fc00u64 + (4096u64 << 20) - 0x10_0000;
    assert_eq!(
        o.field("PROBE-MEM: ram", "ram_bytes"),
        Some(expected.to_string()),
        "{o}"
    );
    assert_eq!(
        o.field("PROBE-MEM: ram", "entries").as_deref(),
        Some("3"),
        "{o}"
    );
}

#[test]
fn command_line_reaches_guest_intact() {
    let probe = probe_guest();
    let long = format!("console=ttyS0 probe=cmdline {}", "k=v ".repeat(300));
    let long = long.trim_end();
    let o = run(&[
        "vm",
        "run",
        "--kernel",
        probe.to_str().unwrap(),
        "--cmdline",
        long,
    ]);
    assert_pass(&o, "cmdline");
    o.assert_stdout_has(&format!("PROBE-CMDLINE: {long}\n"));
}

#[test]
fn serial_input_comes_from_stdin() {
    let probe = probe_guest();
    let mut child = capsa(&[
        "vm",
        "run",
        "--kernel",
        probe.to_str().unwrap(),
        "--cmdline",
        "console=ttyS0 probe=echo",
    ])
    .stdin(Stdio::piped())
    .spawn()
    .unwrap();
    // Longer than the UART's 64-byte FIFO: nothing may be dropped.
    let line = "0123456789abcdef".repeat(10);
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{line}").unwrap();
    drop(stdin);
    let o = wait_with_deadline(child, DEADLINE);
    assert_pass(&o, "echo");
    o.assert_stdout_has(&format!("PROBE-ECHO: {line} len=160"));
}

#[test]
fn serial_output_to_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("console.log");
    let o = probe("hello", &["--serial", file.to_str().unwrap()]);
    assert_eq!(o.code(), Some(0), "{o}");
    assert!(!o.stdout.contains("PROBE"), "{o}");
    let log = std::fs::read_to_string(&file).unwrap();
    assert!(log.contains("PROBE-RESULT: PASS hello"), "{log}");
}

#[test]
fn triple_fault_exits_nonzero_with_reason() {
    let o = probe("fault", &[]);
    o.assert_stdout_has("PROBE-FAULT: triple fault next");
    assert_eq!(o.code(), Some(1), "{o}");
    o.assert_stderr_has("vCPU 0: triple fault (KVM_EXIT_SHUTDOWN)");
}

#[test]
fn triple_fault_dumps_registers_at_debug_level() {
    let o = probe("fault", &["--log-level", "debug"]);
    assert_eq!(o.code(), Some(1), "{o}");
    o.assert_stderr_has("registers: rip=");
}

fn stop_spinning_guest_with(signal: i32) -> Output {
    let probe = probe_guest();
    let mut child = capsa(&[
        "vm",
        "run",
        "--kernel",
        probe.to_str().unwrap(),
        "--cmdline",
        "console=ttyS0 probe=spin",
        "--vcpus",
        "2",
    ])
    .spawn()
    .unwrap();
    // Wait until the guest is spinning: read stdout until PROBE-SPIN.
    let mut out = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    let start = std::time::Instant::now();
    while !String::from_utf8_lossy(&seen).contains("PROBE-SPIN") {
        use std::io::Read;
        let n = out.read(&mut buf).unwrap();
        assert!(
            n > 0 && start.elapsed() < DEADLINE,
            "guest never spun: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    // Let the vCPUs run guest code for a while, then signal.
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    child.stdout = Some(out);
    wait_with_deadline(child, Duration::from_secs(30))
}

#[test]
fn sigterm_stops_all_vcpus_cleanly() {
    let o = stop_spinning_guest_with(libc::SIGTERM);
    assert_eq!(o.code(), Some(128 + libc::SIGTERM), "{o}");
    o.assert_stderr_has("VM stopped by signal 15");
    assert!(!o.stderr.contains("panicked"), "{o}");
}

#[test]
fn ctrl_c_stops_all_vcpus_cleanly() {
    let o = stop_spinning_guest_with(libc::SIGINT);
    assert_eq!(o.code(), Some(128 + libc::SIGINT), "{o}");
    o.assert_stderr_has("VM stopped by signal 2");
}

#[test]
fn vcpu_thread_panic_ends_vm_with_error() {
    // A serial writer that panics runs inside the vCPU thread on the guest's first output
    // byte: the panic must become a clean error, not a hang or an abort.
    struct Exploding;
    impl std::io::Write for Exploding {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            panic!("serial sink exploded");
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut cfg = vmm::VmConfig::new(probe_guest());
    cfg.cmdline = "console=ttyS0 probe=hello".into();
    cfg.serial_out = vmm::SerialOutput::Writer(Box::new(Exploding));
    let vm = vmm::Vm::new(cfg).expect("building the VM");
    let err = vm.run().expect_err("a vCPU panic must be an error");
    let msg = err.to_string();
    assert!(
        msg.contains("vCPU 0 thread panicked: serial sink exploded"),
        "{msg}"
    );
}

#[test]
fn vm_api_reports_reset_and_boot_time() {
    let mut cfg = vmm::VmConfig::new(probe_guest());
    cfg.cmdline = "console=ttyS0 probe=hello".into();
    cfg.serial_out = vmm::SerialOutput::Null;
    let report = vmm::Vm::new(cfg).unwrap().run().unwrap();
    assert_eq!(report.exit, vmm::VmExit::Reset);
    let t = report.boot_time.expect("boot timer hit");
    assert!(t > Duration::ZERO && t < DEADLINE, "{t:?}");
}

#[test]
fn thread_hook_runs_in_every_thread_before_the_guest() {
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<Vec<(vmm::ThreadRole, String)>>> = Arc::default();
    let s = seen.clone();
    let mut cfg = vmm::VmConfig::new(probe_guest());
    cfg.cmdline = "console=ttyS0 probe=smp".into();
    cfg.vcpus = 2;
    cfg.serial_out = vmm::SerialOutput::Null;
    cfg.thread_hook = Some(Arc::new(move |role| {
        let name = std::thread::current().name().unwrap_or("").to_string();
        s.lock().unwrap().push((role, name));
        Ok(())
    }));
    let report = vmm::Vm::new(cfg).unwrap().run().unwrap();
    assert_eq!(report.exit, vmm::VmExit::Reset);
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_by_key(|(r, _)| format!("{r:?}"));
    let roles: Vec<_> = seen.iter().map(|(r, _)| *r).collect();
    assert_eq!(
        roles,
        vec![
            vmm::ThreadRole::Vcpu(0),
            vmm::ThreadRole::Vcpu(1),
            vmm::ThreadRole::Vmm
        ]
    );
    assert_eq!(seen[0].1, "capsa_vcpu0");
    assert_eq!(seen[1].1, "capsa_vcpu1");
}

#[test]
fn failing_thread_hook_stops_vm_before_the_guest_runs() {
    use std::sync::Arc;
    for failing in [vmm::ThreadRole::Vcpu(1), vmm::ThreadRole::Vmm] {
        let (tx, rx) = std::sync::mpsc::channel::<u8>();
        struct Sink(std::sync::mpsc::Sender<u8>);
        impl Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                b.iter().for_each(|x| self.0.send(*x).unwrap());
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut cfg = vmm::VmConfig::new(probe_guest());
        cfg.cmdline = "console=ttyS0 probe=hello".into();
        cfg.vcpus = 2;
        cfg.serial_out = vmm::SerialOutput::Writer(Box::new(Sink(tx)));
        cfg.thread_hook = Some(Arc::new(move |role| {
            if role == failing {
                Err("no filter for you".into())
            } else {
                Ok(())
            }
        }));
        let err = vmm::Vm::new(cfg).unwrap().run().unwrap_err().to_string();
        assert!(err.contains("no filter for you"), "{err}");
        if failing == vmm::ThreadRole::Vcpu(1) {
            assert!(err.contains("vCPU 1 thread setup failed"), "{err}");
        }
        // The guest printed nothing: it never ran.
        assert!(
            rx.try_iter().next().is_none(),
            "guest ran with {failing:?} failing"
        );
    }
}
