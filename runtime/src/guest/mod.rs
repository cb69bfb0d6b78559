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

/// The environment variable that carries glibc's tunables.
pub const GLIBC_TUNABLES: &str = "GLIBC_TUNABLES";

/// glibc tunables for every process of a guest on a PVM host. There, user-mode CPUID and
/// XGETBV run natively and report the host's AVX state, while the guest kernel (booted
/// with `noxsave`: PVM's ring-0 emulator cannot run XSAVE/XRSTOR) saves only x87/SSE at a
/// context switch, so the upper halves of YMM/ZMM registers leak between tasks
/// (`capsa __cpu-state-check` shows it). glibc picks AVX string functions by default and
/// then corrupts data (seen as JSON frames the agent could not parse); these tunables keep
/// its memcpy, memset, strlen, ... on SSE. The kernel hands `GLIBC_TUNABLES=...` from its
/// command line to the agent's environment; the agent passes it on to its helpers and to
/// container processes (see [`container_init::with_guest_tunables`]).
pub const PVM_GLIBC_TUNABLES: &str = "glibc.cpu.hwcaps=-AVX,-AVX2,-AVX_Fast_Unaligned_Load,-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD";

/// True when this process is the guest's init (PID 1 of the VM, started by the kernel as
/// /init). On a host, capsa is never PID 1 of the initial pid namespace.
pub fn is_guest_init() -> bool {
    std::process::id() == 1 && std::env::args().next().as_deref() == Some("/init")
}
