//! Just enough of an i8042 keyboard controller for a guest to reset the machine
//! (Linux `reboot=k`: wait for an empty input buffer on port 0x64, then send 0xfe).

use vmm_sys_util::eventfd::EventFd;

use crate::abi::I8042_RESET_CMD;
use crate::BusDevice;

/// Offset of the command/status port (0x64) from the data port (0x60).
const COMMAND_OFFSET: u64 = 4;

/// The controller; a reset command signals `reset_evt`.
pub struct I8042 {
    reset_evt: EventFd,
}

impl I8042 {
    /// A controller that writes to `reset_evt` when the guest asks for a CPU reset.
    pub fn new(reset_evt: EventFd) -> Self {
        I8042 { reset_evt }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty and input buffer empty, so a guest polling before a
        // command never waits. No keyboard is attached, so data reads are 0 as well.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&I8042_RESET_CMD) {
            tracing::debug!("i8042: guest requested reset");
            if let Err(e) = self.reset_evt.write(1) {
                tracing::error!("i8042: cannot signal reset: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_signals() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = I8042::new(evt.try_clone().unwrap());
        dev.write(0, &[I8042_RESET_CMD]); // data port: not a command
        dev.write(COMMAND_OFFSET, &[0x20]); // some other command
        assert!(evt.read().is_err(), "no reset expected yet");
        dev.write(COMMAND_OFFSET, &[I8042_RESET_CMD]);
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn status_reads_ready() {
        let mut dev = I8042::new(EventFd::new(0).unwrap());
        let mut b = [0xffu8];
        dev.read(COMMAND_OFFSET, &mut b);
        assert_eq!(b[0] & 0x2, 0, "input buffer must read empty");
    }
}
