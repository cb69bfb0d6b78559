//! capsa's virtual machine monitor: KVM VM and vCPUs, guest memory, x86_64 boot, buses,
//! device manager, event loop, and the VM lifecycle API.
//!
//! The lifecycle is two calls: [`Vm::new`] validates the configuration, loads the guest
//! and builds every device and vCPU without running anything; [`Vm::run`] starts one
//! thread per vCPU, runs the event loop on the calling thread until the guest resets or
//! shuts down, a vCPU fails, or a signal arrives, then stops and joins every vCPU.

pub mod arch;
pub mod bus;
pub mod device_manager;
pub mod event_loop;
mod terminal;
pub mod vstate;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use arch::cpuid::{FeatureMask, PVM_MASKS};
use arch::{boot, layout, mptable};
use bus::Bus;
use device_manager::VirtioBackend;
use devices::virtio::block::{Block, BlockConfig};
use devices::virtio::fs::Fs;
use devices::virtio::vsock::Vsock;
use event_loop::{Control, SerialInput, StopCause};
use vstate::vcpu::{Vcpu, VcpuEnd, VcpuShared};
use vstate::{kvm, vm};

pub use arch::boot::BootError;
pub use device_manager::DeviceError;
pub use vstate::kvm::KvmError;

/// Where the guest's serial console output goes.
pub enum SerialOutput {
    /// The VMM's stdout.
    Stdout,
    /// A file, created or truncated.
    File(PathBuf),
    /// Any writer (tests, the runtime's log plumbing).
    Writer(Box<dyn Write + Send>),
    /// Discarded.
    Null,
}

/// The kinds of thread a VM runs, for per-thread setup such as seccomp filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadRole {
    /// The thread that called [`Vm::run`]: event loop and device emulation.
    Vmm,
    /// vCPU thread with this index.
    Vcpu(u8),
}

/// Called once in each VM thread before it runs guest-facing code: in every vCPU thread
/// before its first KVM_RUN, and in the VMM thread before the event loop starts. An error
/// stops the VM before the guest runs.
pub type ThreadHook = Arc<dyn Fn(ThreadRole) -> Result<(), String> + Send + Sync>;

/// A virtio-blk disk.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    /// Raw image file or block device.
    pub path: PathBuf,
    /// Refuse guest writes (the file is opened read-only).
    pub read_only: bool,
    /// Serial the guest reads with VIRTIO_BLK_T_GET_ID (at most 20 bytes); defaults to
    /// `diskN`.
    pub id: Option<String>,
}

/// A virtio-fs share.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Tag the guest mounts (`mount -t virtiofs TAG /mnt`).
    pub tag: String,
    /// Host directory shared (the guest cannot reach outside it).
    pub dir: PathBuf,
    /// Refuse guest writes.
    pub read_only: bool,
}

/// The virtio-vsock device, with Firecracker-style hybrid vsock on the host.
#[derive(Debug, Clone)]
pub struct VsockConfig {
    /// Guest context id (3 or more).
    pub cid: u64,
    /// Host Unix socket: connect and send `CONNECT <port>\n` to reach a guest port;
    /// guest connections to host port P go to `<uds>_P`.
    pub uds: PathBuf,
}

/// Everything needed to build a VM.
pub struct VmConfig {
    /// ELF vmlinux or bzImage.
    pub kernel: PathBuf,
    /// Optional initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest memory in MiB.
    pub mem_mib: u64,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Serial console output.
    pub serial_out: SerialOutput,
    /// Feed the VMM's stdin to the serial console.
    pub serial_in: bool,
    /// KVM device node.
    pub kvm_path: PathBuf,
    /// When the VMM process started (for the boot timer).
    pub start_time: Instant,
    /// Turn SIGINT/SIGTERM/SIGHUP into a clean stop of the VM.
    pub handle_signals: bool,
    /// CPUID features to hide; `None` picks the default for the host (PVM or not).
    pub cpuid_masks: Option<Vec<FeatureMask>>,
    /// virtio-blk disks, in the order the guest sees them (vda, vdb, ...).
    pub disks: Vec<DiskConfig>,
    /// Per-thread setup (e.g. seccomp filters).
    pub thread_hook: Option<ThreadHook>,
    /// virtio-fs shares, after the disks.
    pub shares: Vec<FsConfig>,
    /// The vsock device, after the shares.
    pub vsock: Option<VsockConfig>,
}

impl VmConfig {
    /// A configuration with defaults for everything but the kernel.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            kernel: kernel.into(),
            initrd: None,
            cmdline: "console=ttyS0 reboot=k panic=1".into(),
            mem_mib: 128,
            vcpus: 1,
            serial_out: SerialOutput::Stdout,
            serial_in: false,
            kvm_path: kvm::DEFAULT_KVM_PATH.into(),
            start_time: Instant::now(),
            handle_signals: false,
            cpuid_masks: None,
            disks: Vec::new(),
            thread_hook: None,
            shares: Vec::new(),
            vsock: None,
        }
    }
}

/// Errors building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable.
    #[error("{0}")]
    Config(String),
    /// KVM cannot be used.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// The VM or its memory could not be created.
    #[error(transparent)]
    Vm(#[from] vm::VmError),
    /// A boot image is unusable.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The MP table could not be built.
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    /// A vCPU could not be configured.
    #[error(transparent)]
    Vcpu(#[from] vstate::vcpu::VcpuConfigError),
    /// A device could not be created or wired.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// A disk could not be opened.
    #[error("disk {path}: {source}")]
    Disk {
        /// The image.
        path: PathBuf,
        /// Why.
        source: devices::virtio::block::BlockError,
    },
    /// A share could not be set up.
    #[error("shared directory {tag}={path}: {source}")]
    Share {
        /// Its tag.
        tag: String,
        /// The directory.
        path: PathBuf,
        /// Why.
        source: devices::virtio::fs::FsError,
    },
    /// The vsock device could not be set up.
    #[error("vsock: {0}")]
    Vsock(#[from] devices::virtio::vsock::VsockError),
    /// Host resource failure (threads, fds, event loop).
    #[error("{what}: {reason}")]
    Host {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// The guest or a vCPU failed while running.
    #[error("{0}")]
    Guest(String),
}

fn host_err(what: &'static str) -> impl FnOnce(String) -> Error {
    move |reason| Error::Host { what, reason }
}

/// How a VM that ran ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reset the machine (i8042 or KVM reset event): a reboot ends the VM.
    Reset,
    /// The guest powered off (KVM shutdown event).
    Shutdown,
    /// The VMM was asked to stop by this signal.
    Signal(i32),
}

/// Result of a run.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// How it ended.
    pub exit: VmExit,
    /// Time from VMM start to the guest's first boot-timer write, if any.
    pub boot_time: Option<Duration>,
}

/// A built, not yet running, VM.
pub struct Vm {
    // Field order is drop order: vCPUs and the VM fd go before the memory they map.
    vcpus: Vec<Vcpu>,
    vm_fd: VmFd,
    shared: Arc<VcpuShared>,
    legacy: device_manager::LegacyDevices,
    subscribers: Vec<device_manager::Subscriber>,
    thread_hook: Option<ThreadHook>,
    serial_in: bool,
    handle_signals: bool,
    _mem: GuestMemoryMmap,
}

fn open_serial_out(out: SerialOutput) -> Result<Box<dyn Write + Send>, Error> {
    Ok(match out {
        SerialOutput::Stdout => Box::new(std::io::stdout()),
        SerialOutput::File(p) => Box::new(std::fs::File::create(&p).map_err(|e| {
            Error::Config(format!(
                "cannot create serial output file {}: {e}",
                p.display()
            ))
        })?),
        SerialOutput::Writer(w) => w,
        SerialOutput::Null => Box::new(std::io::sink()),
    })
}

impl Vm {
    /// Validates `config`, loads the guest into fresh memory and builds KVM state, devices
    /// and vCPUs. Nothing runs yet.
    pub fn new(config: VmConfig) -> Result<Vm, Error> {
        let mem_bytes = config
            .mem_mib
            .checked_mul(1 << 20)
            .filter(|b| *b >= layout::MIN_MEM_BYTES)
            .ok_or_else(|| {
                Error::Config(format!(
                    "--mem-mib {} is too small: a guest needs at least {} MiB",
                    config.mem_mib,
                    layout::MIN_MEM_BYTES >> 20
                ))
            })?;
        if config.mem_mib > (1 << 30) {
            return Err(Error::Config(format!(
                "--mem-mib {} is too large",
                config.mem_mib
            )));
        }
        if config.vcpus == 0 || config.vcpus > layout::MAX_VCPUS {
            return Err(Error::Config(format!(
                "--vcpus {} is out of range: 1 to {}",
                config.vcpus,
                layout::MAX_VCPUS
            )));
        }

        // Guest images first: bad input is reported before any KVM work.
        let mem = vm::create_memory(&layout::ram_regions(mem_bytes))?;
        let kernel = boot::load_kernel(&mem, mem_bytes, &config.kernel)?;
        let initrd = config
            .initrd
            .as_deref()
            .map(|p| boot::load_initrd(&mem, mem_bytes, kernel.end, p))
            .transpose()?;
        // Device backends open their host files now, so a bad path is reported before
        // any KVM work too.
        let mut virtio: Vec<VirtioBackend> = Vec::new();
        for (i, d) in config.disks.iter().enumerate() {
            let block = Block::new(&BlockConfig {
                path: d.path.clone(),
                read_only: d.read_only,
                id: d.id.clone().unwrap_or_else(|| format!("disk{i}")),
            })
            .map_err(|source| Error::Disk {
                path: d.path.clone(),
                source,
            })?;
            virtio.push(VirtioBackend::Block(Arc::new(Mutex::new(block))));
        }
        for sh in &config.shares {
            let fs =
                Fs::new(&sh.tag, sh.dir.clone(), sh.read_only).map_err(|source| Error::Share {
                    tag: sh.tag.clone(),
                    path: sh.dir.clone(),
                    source,
                })?;
            virtio.push(VirtioBackend::Fs(Arc::new(Mutex::new(fs))));
        }
        if let Some(v) = &config.vsock {
            let dev = Vsock::new(v.cid, v.uds.clone())?;
            virtio.push(VirtioBackend::Vsock(Arc::new(Mutex::new(dev))));
        }
        let params = (0..virtio.len())
            .map(device_manager::virtio_cmdline_param)
            .collect::<Result<Vec<_>, _>>()?;
        let cmdline = device_manager::insert_kernel_params(&config.cmdline, &params);
        let cmdline_len = boot::write_cmdline(&mem, &cmdline)?;
        boot::write_zero_page(&mem, mem_bytes, &kernel, cmdline_len, initrd)?;
        mptable::write(&mem, config.vcpus)?;

        let kvm = kvm::open(&config.kvm_path)?;
        kvm::check_caps(&kvm)?;
        let masks = config.cpuid_masks.unwrap_or_else(|| {
            if kvm::host_is_pvm() {
                PVM_MASKS.to_vec()
            } else {
                Vec::new()
            }
        });
        let vm_fd = vm::create_vm(&kvm, &mem)?;
        let supported = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| host_err("KVM_GET_SUPPORTED_CPUID")(e.to_string()))?;

        let mut pio = Bus::new();
        let serial_out = open_serial_out(config.serial_out)?;
        let legacy =
            device_manager::attach_legacy(&vm_fd, &mut pio, serial_out, config.start_time)?;
        let mut mmio_bus = Bus::new();
        let mut subscribers = Vec::new();
        for (i, dev) in virtio.iter().enumerate() {
            subscribers.push(device_manager::attach_virtio(
                &vm_fd,
                &mut mmio_bus,
                &mem,
                i,
                dev,
            )?);
        }

        let mut vcpus = Vec::with_capacity(config.vcpus as usize);
        for i in 0..config.vcpus {
            vcpus.push(Vcpu::new(
                &vm_fd,
                &mem,
                &supported,
                &masks,
                i,
                config.vcpus,
                kernel.entry,
            )?);
        }
        let shared = Arc::new(VcpuShared {
            stop: AtomicBool::new(false),
            exit_evt: EventFd::new(libc::EFD_NONBLOCK)
                .map_err(|e| host_err("eventfd")(e.to_string()))?,
            ends: Mutex::new(Vec::new()),
            pio,
            mmio: mmio_bus,
        });
        tracing::debug!(
            entry = kernel.entry,
            vcpus = config.vcpus,
            mem_mib = config.mem_mib,
            pvm = kvm::host_is_pvm(),
            "VM built"
        );
        Ok(Vm {
            vcpus,
            vm_fd,
            shared,
            legacy,
            subscribers,
            thread_hook: config.thread_hook,
            serial_in: config.serial_in,
            handle_signals: config.handle_signals,
            _mem: mem,
        })
    }

    /// Runs the VM to completion on the calling thread (event loop) plus one thread per vCPU.
    pub fn run(mut self) -> Result<RunReport, Error> {
        install_kick_handler()?;
        let signals = if self.handle_signals {
            Some(
                event_loop::block_signals_to_fd(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP])
                    .map_err(|e| host_err("signalfd")(e.to_string()))?,
            )
        } else {
            None
        };
        let (signal_fd, old_mask) = match signals {
            Some((fd, old)) => (Some(fd), Some(old)),
            None => (None, None),
        };
        let result = self.run_inner(signal_fd);
        if let Some(old) = old_mask {
            event_loop::restore_signal_mask(&old);
        }
        result
    }

    fn run_inner(&mut self, signal_fd: Option<std::os::fd::OwnedFd>) -> Result<RunReport, Error> {
        let ev_err = |e: event_manager::Error| host_err("event loop")(format!("{e:?}"));
        let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
            EventManager::new().map_err(ev_err)?;
        let dup = |e: &EventFd| {
            e.try_clone()
                .map_err(|e| host_err("eventfd")(e.to_string()))
        };
        let control = Arc::new(Mutex::new(Control::new(
            dup(&self.shared.exit_evt)?,
            dup(&self.legacy.reset_evt)?,
            signal_fd,
        )));
        em.add_subscriber(control.clone());
        for s in &self.subscribers {
            em.add_subscriber(s.clone());
        }
        let _term = if self.serial_in {
            em.add_subscriber(Arc::new(Mutex::new(
                SerialInput::new(self.legacy.serial.clone(), libc::STDIN_FILENO)
                    .map_err(|e| host_err("serial input")(e.to_string()))?,
            )));
            terminal::RawGuard::stdin()
        } else {
            None
        };

        // No guest instruction runs before every thread is set up (see StartGate).
        let start = Arc::new(StartGate::default());
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        for vcpu in self.vcpus.drain(..) {
            let shared = self.shared.clone();
            let name = format!("capsa_vcpu{}", vcpu.index());
            let hook = self.thread_hook.clone();
            let gate = start.clone();
            match std::thread::Builder::new()
                .name(name)
                .spawn(move || vcpu.run(shared, hook, gate))
            {
                Ok(t) => threads.push(t),
                Err(e) => {
                    start.open(false);
                    stop_vcpus(&self.shared, threads);
                    return Err(host_err("spawning a vCPU thread")(e.to_string()));
                }
            }
        }
        if let Some(e) = start.wait_reports(threads.len()) {
            start.open(false);
            stop_vcpus(&self.shared, threads);
            return Err(Error::Guest(e));
        }
        let setup = match &self.thread_hook {
            Some(hook) => hook(ThreadRole::Vmm),
            None => Ok(()),
        };
        if let Err(e) = setup {
            start.open(false);
            stop_vcpus(&self.shared, threads);
            return Err(host_err("VMM thread setup")(e));
        }
        start.open(true);
        let cause = loop {
            if let Err(e) = em.run() {
                stop_vcpus(&self.shared, threads);
                return Err(ev_err(e));
            }
            if let Some(c) = control.lock().unwrap_or_else(|e| e.into_inner()).cause {
                break c;
            }
        };
        stop_vcpus(&self.shared, threads);

        let boot_time = *self
            .legacy
            .boot_time
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let ends = self
            .shared
            .ends
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let exit = match cause {
            StopCause::GuestReset => VmExit::Reset,
            StopCause::Signal(s) => VmExit::Signal(s),
            StopCause::VcpuExited => {
                // The first vCPU that ended on its own decides.
                match ends.iter().find(|(_, e)| *e != VcpuEnd::Stopped) {
                    Some((_, VcpuEnd::GuestReset)) => VmExit::Reset,
                    Some((_, VcpuEnd::GuestShutdown)) => VmExit::Shutdown,
                    Some((_, VcpuEnd::Fatal(msg))) => return Err(Error::Guest(msg.clone())),
                    _ => return Err(Error::Guest("a vCPU ended without a reason".into())),
                }
            }
        };
        tracing::debug!(?exit, ?boot_time, "VM ended");
        Ok(RunReport { exit, boot_time })
    }

    /// The VM file descriptor, for wiring more devices before [`Vm::run`].
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm_fd
    }
}

/// Two-phase start: each vCPU thread reports the result of its own setup, then waits;
/// the VMM thread waits for every report, runs its own setup, and lets the guest run only
/// if everything succeeded.
#[derive(Default)]
pub struct StartGate {
    state: Mutex<GateState>,
    cv: std::sync::Condvar,
}

#[derive(Default)]
struct GateState {
    reported: usize,
    failure: Option<String>,
    verdict: Option<bool>,
}

impl StartGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// vCPU side: report setup, then block until the verdict (true: run the guest).
    pub fn report_and_wait(&self, setup: &Result<(), String>) -> bool {
        let mut s = self.lock();
        s.reported += 1;
        if let Err(e) = setup {
            s.failure.get_or_insert_with(|| e.clone());
        }
        self.cv.notify_all();
        loop {
            if let Some(go) = s.verdict {
                return go;
            }
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// VMM side: wait until `n` vCPUs reported; the first failure, if any.
    pub fn wait_reports(&self, n: usize) -> Option<String> {
        let mut s = self.lock();
        while s.reported < n {
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.failure.clone()
    }

    /// VMM side: release every vCPU thread with the verdict.
    pub fn open(&self, go: bool) {
        self.lock().verdict = Some(go);
        self.cv.notify_all();
    }
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the no-op handler of the signal used to kick vCPUs out of KVM_RUN (EINTR).
fn install_kick_handler() -> Result<(), Error> {
    register_signal_handler(SIGRTMIN(), kick_handler)
        .map_err(|e| host_err("installing the vCPU kick signal handler")(e.to_string()))
}

/// Stops every vCPU: sets the stop flag and signals each thread until it has left
/// KVM_RUN and ended. A signal can land just before a thread enters KVM_RUN, so kicks
/// repeat until the thread is done.
fn stop_vcpus(shared: &VcpuShared, threads: Vec<JoinHandle<()>>) {
    shared.stop.store(true, Ordering::Release);
    for t in threads {
        while !t.is_finished() {
            if let Err(e) = t.kill(SIGRTMIN()) {
                tracing::debug!("kicking vCPU thread: {e}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if t.join().is_err() {
            tracing::error!("a vCPU thread panicked outside its run loop");
        }
    }
}
