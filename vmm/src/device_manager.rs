//! Creates the devices of a VM and attaches them to buses and interrupt lines.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::abi::*;
use devices::legacy::{BootTimer, Serial, I8042};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

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
