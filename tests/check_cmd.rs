//! `capsa check` on this host.

mod common;

use common::*;

#[test]
fn check_reports_kvm_and_cgroups() {
    let o = run(&["check"]);
    assert_eq!(o.code(), Some(0), "{o}");
    o.assert_stdout_has("[ok]      /dev/kvm: opened read/write");
    o.assert_stdout_has("[ok]      KVM API version 12");
    if host_is_pvm() {
        o.assert_stdout_has("host KVM is PVM");
    } else {
        o.assert_stdout_has("host KVM is hardware-assisted");
    }
    assert!(o.stdout.contains("cgroup"), "{o}");
    o.assert_stdout_has("capsa can run on this host");
}
