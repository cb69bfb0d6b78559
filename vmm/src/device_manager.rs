//! Creates the devices of a VM and attaches them to buses and interrupt lines.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::abi::*;
use devices::legacy::{BootTimer, Serial, I8042};
use devices::virtio::block::Block;
use devices::virtio::fs::Fs;
use devices::virtio::vsock::{Vsock, VsockEventHandler};
use devices::virtio::{mmio, MmioTransport, VirtioDevice};
use event_manager::MutEventSubscriber;
use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::layout::{IRQ_DEVICES_START, IRQ_MAX, MMIO_DEVICES_START, MMIO_DEVICE_SIZE};
use crate::bus::{Bus, BusError};

/// Errors wiring devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// An EventFd could not be created.
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    /// KVM refused an irqfd.
    #[error("cannot register irqfd for GSI {gsi}: {source}")]
    Irqfd {
        /// The interrupt line.
        gsi: u32,
        /// errno.
        source: kvm_ioctls::Error,
    },
    /// A bus range conflict (a bug in the layout).
    #[error(transparent)]
    Bus(#[from] BusError),
    /// More virtio devices than interrupt lines.
    #[error("too many virtio devices: at most {} are supported", IRQ_MAX - IRQ_DEVICES_START + 1)]
    TooManyDevices,
    /// The transport refused the device.
    #[error("virtio-mmio transport: {0}")]
    Transport(#[from] mmio::MmioError),
    /// KVM refused an ioeventfd.
    #[error("cannot register ioeventfd at {addr:#x}: {source}")]
    Ioeventfd {
        /// The notify register address.
        addr: u64,
        /// errno.
        source: kvm_ioctls::Error,
    },
}

/// Where virtio-mmio device number `index` lives: its MMIO window base and its GSI. The
/// layout is a pure function of the index so the kernel command line can be written
/// before the devices are wired to KVM.
pub fn virtio_slot(index: usize) -> Result<(u64, u32), DeviceError> {
    let irq = IRQ_DEVICES_START
        .checked_add(u32::try_from(index).map_err(|_| DeviceError::TooManyDevices)?)
        .filter(|irq| *irq <= IRQ_MAX)
        .ok_or(DeviceError::TooManyDevices)?;
    Ok((MMIO_DEVICES_START + index as u64 * MMIO_DEVICE_SIZE, irq))
}

/// The `virtio_mmio.device=` parameter announcing device `index` to Linux.
pub fn virtio_cmdline_param(index: usize) -> Result<String, DeviceError> {
    let (base, irq) = virtio_slot(index)?;
    Ok(mmio::kernel_cmdline_device(base, irq))
}

/// A virtio device backend, by kind (the kind decides how the event loop drives it).
pub enum VirtioBackend {
    /// virtio-blk.
    Block(Arc<Mutex<Block>>),
    /// virtio-fs.
    Fs(Arc<Mutex<Fs>>),
    /// virtio-vsock.
    Vsock(Arc<Mutex<Vsock>>),
}

impl VirtioBackend {
    fn as_virtio(&self) -> Arc<Mutex<dyn VirtioDevice>> {
        match self {
            VirtioBackend::Block(d) => d.clone(),
            VirtioBackend::Fs(d) => d.clone(),
            VirtioBackend::Vsock(d) => d.clone(),
        }
    }
}

/// A subscriber the event loop must run for a device.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Wires virtio device `index`: transport on the MMIO bus, one ioeventfd per queue on the
/// notify register (so queue kicks never reach a vCPU thread's exit path), the interrupt as
/// an irqfd. Returns the queue subscriber for the event loop.
pub fn attach_virtio(
    vm: &VmFd,
    mmio_bus: &mut Bus,
    mem: &GuestMemoryMmap,
    index: usize,
    device: &VirtioBackend,
) -> Result<Subscriber, DeviceError> {
    let (base, irq) = virtio_slot(index)?;
    let transport = MmioTransport::new(mem.clone(), device.as_virtio())?;
    let notify = base + mmio::QUEUE_NOTIFY_OFFSET;
    for (q, evt) in transport.queue_events().iter().enumerate() {
        vm.register_ioevent(evt, &IoEventAddress::Mmio(notify), q as u32)
            .map_err(|source| DeviceError::Ioeventfd {
                addr: notify,
                source,
            })?;
    }
    vm.register_irqfd(transport.interrupt().eventfd(), irq)
        .map_err(|source| DeviceError::Irqfd { gsi: irq, source })?;
    let handler: Subscriber = match device {
        // vsock also reacts to host socket events, so it has its own handler.
        VirtioBackend::Vsock(v) => Arc::new(Mutex::new(
            VsockEventHandler::for_transport(v.clone(), &transport)
                .map_err(DeviceError::EventFd)?,
        )),
        _ => Arc::new(Mutex::new(
            transport.event_handler().map_err(DeviceError::EventFd)?,
        )),
    };
    mmio_bus.insert(
        Arc::new(Mutex::new(transport)),
        base,
        mmio::MMIO_WINDOW_SIZE,
    )?;
    Ok(handler)
}

/// The legacy devices every VM has.
pub struct LegacyDevices {
    /// COM1.
    pub serial: Arc<Mutex<Serial>>,
    /// Signalled when the guest resets through the i8042.
    pub reset_evt: EventFd,
    /// First boot-timer hit.
    pub boot_time: Arc<Mutex<Option<Duration>>>,
}

fn eventfd() -> Result<EventFd, DeviceError> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceError::EventFd)
}

/// Creates serial, i8042 and boot timer, puts them on `pio` and wires the serial IRQ.
pub fn attach_legacy(
    vm: &VmFd,
    pio: &mut Bus,
    serial_out: Box<dyn Write + Send>,
    start: Instant,
) -> Result<LegacyDevices, DeviceError> {
    let serial_irq = eventfd()?;
    vm.register_irqfd(&serial_irq, SERIAL_IRQ)
        .map_err(|source| DeviceError::Irqfd {
            gsi: SERIAL_IRQ,
            source,
        })?;
    let serial = Arc::new(Mutex::new(Serial::new(serial_irq, serial_out)));
    pio.insert(
        serial.clone(),
        u64::from(SERIAL_PORT_BASE),
        u64::from(SERIAL_PORT_LEN),
    )?;

    let reset_evt = eventfd()?;
    let i8042 = I8042::new(reset_evt.try_clone().map_err(DeviceError::EventFd)?);
    pio.insert(
        Arc::new(Mutex::new(i8042)),
        u64::from(I8042_PORT_BASE),
        u64::from(I8042_PORT_LEN),
    )?;

    let timer = BootTimer::new(start);
    let boot_time = timer.reading();
    pio.insert(Arc::new(Mutex::new(timer)), u64::from(BOOT_TIMER_PORT), 1)?;

    Ok(LegacyDevices {
        serial,
        reset_evt,
        boot_time,
    })
}

/// Inserts kernel parameters before any `--` (after which the kernel passes arguments to
/// init).
pub fn insert_kernel_params(cmdline: &str, params: &[String]) -> String {
    if params.is_empty() {
        return cmdline.to_string();
    }
    let extra = params.join(" ");
    match cmdline.find(" -- ") {
        Some(i) => format!("{} {extra}{}", &cmdline[..i], &cmdline[i..]),
        None if cmdline.is_empty() => extra,
        None => format!("{cmdline} {extra}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_sequential_and_bounded() {
        assert_eq!(
            virtio_slot(0).unwrap(),
            (MMIO_DEVICES_START, IRQ_DEVICES_START)
        );
        assert_eq!(
            virtio_slot(2).unwrap(),
            (MMIO_DEVICES_START + 0x2000, IRQ_DEVICES_START + 2)
        );
        let last = (IRQ_MAX - IRQ_DEVICES_START) as usize;
        assert_eq!(virtio_slot(last).unwrap().1, IRQ_MAX);
        assert!(matches!(
            virtio_slot(last + 1),
            Err(DeviceError::TooManyDevices)
        ));
        assert_eq!(
            virtio_cmdline_param(1).unwrap(),
            format!(
                "virtio_mmio.device=4K@{:#x}:{}",
                MMIO_DEVICES_START + 0x1000,
                IRQ_DEVICES_START + 1
            )
        );
    }

    #[test]
    fn params_go_before_init_args() {
        let p = vec!["a=1".to_string(), "b".to_string()];
        assert_eq!(
            insert_kernel_params("console=ttyS0", &p),
            "console=ttyS0 a=1 b"
        );
        assert_eq!(
            insert_kernel_params("ro -- init -x", &p),
            "ro a=1 b -- init -x"
        );
        assert_eq!(insert_kernel_params("", &p), "a=1 b");
        assert_eq!(insert_kernel_params("x", &[]), "x");
    }
}
