//! The guest side: capsa as the guest's PID 1 (init + agent), and the helper processes
//! it re-executes to set up containers.

pub mod agent;
pub mod caps;
pub mod cgroup;
pub mod container_init;
pub mod cpu_state;
pub mod init;
pub mod sys;
pub mod vsock;

/// True when this process is the guest's init (PID 1 of the VM, started by the kernel as
/// /init). On a host, capsa is never PID 1 of the initial pid namespace.
pub fn is_guest_init() -> bool {
    std::process::id() == 1 && std::env::args().next().as_deref() == Some("/init")
}
