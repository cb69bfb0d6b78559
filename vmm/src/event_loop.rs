//! Event-loop subscribers of the VMM thread: VM control (vCPU exits, guest reset, signals)
//! and serial console input.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::legacy::Serial;
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

/// Why the event loop decided to stop the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    /// A vCPU thread ended (see its reported end).
    VcpuExited,
    /// The guest reset through the i8042.
    GuestReset,
    /// SIGINT/SIGTERM/SIGHUP reached the VMM.
    Signal(i32),
}

/// Watches the fds that end a VM.
pub struct Control {
    exit_evt: EventFd,
    reset_evt: EventFd,
    signal_fd: Option<OwnedFd>,
    /// Set once something asked the VM to stop.
    pub cause: Option<StopCause>,
}

impl Control {
    /// A controller for the given fds.
    pub fn new(exit_evt: EventFd, reset_evt: EventFd, signal_fd: Option<OwnedFd>) -> Self {
        Control {
            exit_evt,
            reset_evt,
            signal_fd,
            cause: None,
        }
    }

    fn read_signal(&self) -> Option<i32> {
        let fd = self.signal_fd.as_ref()?;
        // SAFETY: an all-zero signalfd_siginfo is a valid value of this plain C struct.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let len = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reading at most `len` bytes into `info`, which is `len` bytes long.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                &mut info as *mut _ as *mut libc::c_void,
                len,
            )
        };
        (n as usize == len).then_some(info.ssi_signo as i32)
    }
}

impl MutEventSubscriber for Control {
    fn init(&mut self, ops: &mut EventOps) {
        for fd in [self.exit_evt.as_raw_fd(), self.reset_evt.as_raw_fd()]
            .into_iter()
            .chain(self.signal_fd.as_ref().map(|f| f.as_raw_fd()))
        {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                tracing::error!("event loop: cannot watch fd {fd}: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        let cause = if fd == self.exit_evt.as_raw_fd() {
            let _ = self.exit_evt.read();
            StopCause::VcpuExited
        } else if fd == self.reset_evt.as_raw_fd() {
            let _ = self.reset_evt.read();
            StopCause::GuestReset
        } else {
            match self.read_signal() {
                Some(sig) => StopCause::Signal(sig),
                None => return,
            }
        };
        // The first cause wins: a reset followed by vCPU exits is still a reset.
        self.cause.get_or_insert(cause);
    }
}

/// Feeds host stdin into the guest's serial port without dropping bytes when the guest
/// is slow to drain the UART's FIFO: surplus input waits here and is retried on a timer.
pub struct SerialInput {
    serial: Arc<Mutex<Serial>>,
    input: RawFd,
    pending: VecDeque<u8>,
    retry: TimerFd,
    input_open: bool,
}

const RETRY_INTERVAL: Duration = Duration::from_millis(20);

impl SerialInput {
    /// Reads from `input` (normally fd 0) into `serial`.
    pub fn new(serial: Arc<Mutex<Serial>>, input: RawFd) -> std::io::Result<Self> {
        Ok(SerialInput {
            serial,
            input,
            pending: VecDeque::new(),
            retry: TimerFd::new()?,
            input_open: true,
        })
    }

    /// Offers pending bytes to the UART; true when everything went in.
    fn flush_pending(&mut self) -> bool {
        let mut s = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        while !self.pending.is_empty() {
            let (a, _) = self.pending.as_slices();
            match s.enqueue_input(a) {
                Ok(0) => return false,
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) => {
                    tracing::warn!("serial input: {e}");
                    return false;
                }
            }
        }
        true
    }

    fn set_input_watch(&mut self, ops: &mut EventOps, on: bool) {
        let ev = Events::new_raw(self.input, EventSet::IN);
        let r = if on { ops.add(ev) } else { ops.remove(ev) };
        if let Err(e) = r {
            tracing::debug!("serial input: watch {on}: {e:?}");
        }
    }
}

impl MutEventSubscriber for SerialInput {
    fn init(&mut self, ops: &mut EventOps) {
        self.set_input_watch(ops, true);
        if let Err(e) = ops.add(Events::new(&self.retry, EventSet::IN)) {
            tracing::error!("serial input: cannot watch retry timer: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.retry.as_raw_fd() {
            let _ = self.retry.wait();
        } else if events.fd() == self.input {
            let mut buf = [0u8; 512];
            // SAFETY: reading at most buf.len() bytes into buf.
            let n = unsafe { libc::read(self.input, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                if n < 0
                    && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                {
                    return;
                }
                // EOF or error: stop watching, or epoll would report it forever.
                self.input_open = false;
                self.set_input_watch(ops, false);
            } else {
                self.pending.extend(&buf[..n as usize]);
            }
        }
        let drained = self.flush_pending();
        if drained {
            // Idle again: no retry timer, and read more input when it comes.
            let _ = self.retry.reset(Duration::ZERO, None);
            if self.input_open {
                self.set_input_watch(ops, true);
            }
        } else {
            // FIFO full: stop reading stdin until the guest catches up.
            self.set_input_watch(ops, false);
            let _ = self.retry.reset(RETRY_INTERVAL, Some(RETRY_INTERVAL));
        }
    }
}

/// Blocks `signals` in the calling thread (threads spawned afterwards inherit the mask)
/// and returns a signalfd delivering them, plus the previous mask.
pub fn block_signals_to_fd(signals: &[i32]) -> std::io::Result<(OwnedFd, libc::sigset_t)> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for s in signals {
        // SAFETY: `set` is valid; `s` is a signal number.
        unsafe { libc::sigaddset(&mut set, *s) };
    }
    // SAFETY: both pointers are valid sigset_t values.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) };
    if r != 0 {
        return Err(std::io::Error::from_raw_os_error(r));
    }
    // SAFETY: `set` is valid; -1 asks for a new fd.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: signalfd returned a new fd that nothing else owns.
    Ok((unsafe { OwnedFd::from_raw_fd(fd) }, old))
}

/// Restores a signal mask saved by [`block_signals_to_fd`].
pub fn restore_signal_mask(old: &libc::sigset_t) {
    // SAFETY: `old` is a valid sigset_t from pthread_sigmask.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, old, std::ptr::null_mut()) };
}
