//! COM1: a 16550A UART (vm-superio) whose interrupt line is an EventFd (a KVM irqfd).

use std::io::{self, Write};

use vm_superio::serial::NoEvents;
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use crate::BusDevice;

/// Raises an interrupt by writing to an EventFd that the VMM registered as an irqfd.
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps `evt`.
    pub fn new(evt: EventFd) -> Self {
        EventFdTrigger(evt)
    }
}

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The guest's serial console.
pub struct Serial {
    uart: vm_superio::Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>,
}

impl Serial {
    /// A UART that signals `irq` and writes guest output to `out`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        Serial {
            uart: vm_superio::Serial::new(EventFdTrigger::new(irq), out),
        }
    }

    /// How many input bytes the receive FIFO can take now.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Queues host input for the guest; returns how many bytes were accepted (the rest must
    /// be offered again once the guest has drained the FIFO).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = bytes.len().min(self.uart.fifo_capacity());
        if n == 0 {
            return Ok(0);
        }
        self.uart
            .enqueue_raw_bytes(&bytes[..n])
            .map_err(|e| io::Error::other(format!("serial input: {e:?}")))
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // The UART has byte-wide registers only; anything else is a guest bug.
        if data.len() != 1 || offset > u8::MAX as u64 {
            tracing::warn!(offset, len = data.len(), "serial: bad read width/offset");
            data.fill(0);
            return;
        }
        data[0] = self.uart.read(offset as u8);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 || offset > u8::MAX as u64 {
            tracing::warn!(offset, len = data.len(), "serial: bad write width/offset");
            return;
        }
        if let Err(e) = self.uart.write(offset as u8, data[0]) {
            tracing::warn!("serial: write to register {offset} failed: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn serial() -> (Serial, Sink, EventFd) {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let sink = Sink::default();
        let s = Serial::new(irq.try_clone().unwrap(), Box::new(sink.clone()));
        (s, sink, irq)
    }

    #[test]
    fn output_reaches_writer() {
        let (mut s, sink, _) = serial();
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi\n");
    }

    #[test]
    fn input_is_readable_and_raises_irq_when_enabled() {
        let (mut s, _, irq) = serial();
        s.write(1, &[0x01]); // IER: received-data interrupt on
        assert_eq!(s.enqueue_input(b"ab").unwrap(), 2);
        assert_eq!(irq.read().unwrap(), 1);
        let mut b = [0u8];
        s.read(5, &mut b); // LSR: data ready
        assert_eq!(b[0] & 1, 1);
        s.read(0, &mut b);
        assert_eq!(b[0], b'a');
        s.read(0, &mut b);
        assert_eq!(b[0], b'b');
    }

    #[test]
    fn input_beyond_fifo_is_not_lost_silently() {
        let (mut s, _, _) = serial();
        let cap = s.input_capacity();
        let big = vec![b'x'; cap + 10];
        assert_eq!(s.enqueue_input(&big).unwrap(), cap);
        assert_eq!(s.enqueue_input(b"y").unwrap(), 0);
    }

    #[test]
    fn bad_widths_are_ignored() {
        let (mut s, sink, _) = serial();
        s.write(0, b"ab");
        let mut d = [0xffu8; 4];
        s.read(0, &mut d);
        assert_eq!(d, [0; 4]);
        assert!(sink.0.lock().unwrap().is_empty());
    }
}
