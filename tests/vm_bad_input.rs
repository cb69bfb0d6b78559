//! Every bad input to `capsa vm run` gets a one-line error naming the problem, and a
//! non-zero exit, before any guest runs.

mod common;

use std::io::Write;

use common::*;

fn assert_error(o: &Output, needle: &str) {
    assert_eq!(o.code(), Some(1), "{o}");
    let errors: Vec<_> = o
        .stderr
        .lines()
        .filter(|l| l.starts_with("capsa: error: "))
        .collect();
    assert_eq!(errors.len(), 1, "exactly one error line expected\n{o}");
    assert!(errors[0].contains(needle), "error lacks {needle:?}\n{o}");
    assert!(
        !o.stdout.contains("capsa-probe"),
        "the guest must not have run\n{o}"
    );
}

fn file_with(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f
}

#[test]
fn missing_kernel() {
    let o = run(&["vm", "run", "--kernel", "/nonexistent/vmlinux"]);
    assert_error(
        &o,
        "cannot read kernel image /nonexistent/vmlinux: No such file or directory",
    );
}

#[test]
fn kernel_that_is_a_text_file() {
    let f = file_with(&b"this is not a kernel\n".repeat(100));
    let o = run(&["vm", "run", "--kernel", f.path().to_str().unwrap()]);
    assert_error(
        &o,
        "is not a kernel image: neither an x86_64 ELF vmlinux nor a bzImage",
    );
}

#[test]
fn kernel_that_is_an_elf_program() {
    let o = run(&["vm", "run", "--kernel", "/bin/true"]);
    assert_error(&o, "/bin/true is an ELF file but not a bootable kernel");
}

#[test]
fn kernel_larger_than_memory() {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(20 << 20).unwrap();
    let o = run(&[
        "vm",
        "run",
        "--kernel",
        f.path().to_str().unwrap(),
        "--mem-mib",
        "16",
    ]);
    assert_error(&o, "does not fit in guest memory (16 MiB)");
}

#[test]
fn initrd_that_does_not_fit() {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(100 << 20).unwrap();
    let probe = probe_guest();
    let o = run(&[
        "vm",
        "run",
        "--kernel",
        probe.to_str().unwrap(),
        "--initrd",
        f.path().to_str().unwrap(),
        "--mem-mib",
        "64",
    ]);
    assert_error(&o, "does not fit in guest memory");
    assert_error(&o, "initrd");
}

#[test]
fn missing_initrd() {
    let probe = probe_guest();
    let o = run(&[
        "vm",
        "run",
        "--kernel",
        probe.to_str().unwrap(),
        "--initrd",
        "/nonexistent/initrd",
    ]);
    assert_error(&o, "cannot read initrd /nonexistent/initrd");
}

#[test]
fn initrd_is_loaded_when_it_fits() {
    let f = file_with(&[0xa5; 1 << 20]);
    let probe = probe_guest();
    let o = run(&[
        "vm",
        "run",
        "--kernel",
        probe.to_str().unwrap(),
        "--initrd",
        f.path().to_str().unwrap(),
        "--cmdline",
        "probe=hello",
    ]);
    assert_eq!(o.code(), Some(0), "{o}");
    o.assert_stdout_has("PROBE-RESULT: PASS hello");
}

#[test]
fn memory_too_small() {
    let o = run(&["vm", "run", "--mem-mib", "4"]);
    assert_error(&o, "--mem-mib 4 is too small");
}

#[test]
fn vcpu_count_out_of_range() {
    assert_error(
        &run(&["vm", "run", "--vcpus", "0"]),
        "--vcpus 0 is out of range",
    );
    assert_error(
        &run(&["vm", "run", "--vcpus", "33"]),
        "--vcpus 33 is out of range",
    );
}

#[test]
fn command_line_too_long() {
    let long = "x".repeat(4096);
    let o = run(&["vm", "run", "--cmdline", &long]);
    assert_error(&o, "invalid kernel command line");
}

#[test]
fn kvm_device_missing() {
    let o = run(&["vm", "run", "--kvm-device", "/nonexistent/kvm"]);
    assert_error(&o, "cannot open /nonexistent/kvm: it does not exist");
}

#[test]
fn kvm_device_not_kvm() {
    let o = run(&["vm", "run", "--kvm-device", "/dev/null"]);
    assert_error(&o, "/dev/null: KVM API version");
}

#[test]
fn kvm_device_not_permitted() {
    // Root may open anything; run capsa as `nobody` to see the permission error users get.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to switch to an unprivileged user");
        return;
    }
    let meta = std::fs::metadata("/dev/kvm").expect("/dev/kvm");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        meta.permissions().mode() & 0o006,
        0,
        "/dev/kvm is world-accessible here"
    );
    let mut c = std::process::Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(capsa_bin())
        .args(["vm", "run"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let o = wait_with_deadline(c.spawn().expect("setpriv"), DEADLINE);
    assert_error(&o, "cannot open /dev/kvm: permission denied");
}

#[test]
fn serial_output_file_cannot_be_created() {
    let o = run(&["vm", "run", "--serial", "/nonexistent/dir/console.log"]);
    assert_error(
        &o,
        "cannot create serial output file /nonexistent/dir/console.log",
    );
}

#[test]
fn missing_disk_image() {
    let o = run(&["vm", "run", "--disk", "/nonexistent/disk.img"]);
    assert_error(&o, "disk /nonexistent/disk.img: cannot open disk");
}

#[test]
fn malformed_disk_option() {
    let o = run(&["vm", "run", "--disk", "/tmp/x.img,bogus"]);
    assert_eq!(o.code(), Some(2), "{o}");
    assert!(o.stderr.contains("unknown disk option \"bogus\""), "{o}");
}
