//! Event-manager subscriber for a vsock device: queue notifications plus host socket
//! activity (one private epoll fd, see the backend).

use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use tracing::{debug, error, warn};
use vmm_sys_util::eventfd::EventFd;

use super::Vsock;
use crate::virtio::{MmioTransport, VirtioDevice};

/// Event data marking the host-events fd; queue EventFds use their queue index.
const HOST_EVENTS: u32 = u32::MAX;

/// Runs a [`Vsock`] on the vmm's event loop. Use it *instead of*
/// [`MmioTransport::event_handler`] for a vsock device (it handles the queue EventFds too),
/// or alongside the generic handler with no queue EventFds.
pub struct VsockEventHandler {
    device: Arc<Mutex<Vsock>>,
    queue_evts: Vec<EventFd>,
    /// The device's host-events fd; the device (kept alive by `device`) owns it.
    host_fd: RawFd,
}

impl VsockEventHandler {
    /// `queue_evts[i]` is the notification EventFd of queue `i` (may be empty, see above).
    pub fn new(device: Arc<Mutex<Vsock>>, queue_evts: Vec<EventFd>) -> Self {
        let host_fd = lock(&device).host_events_fd();
        VsockEventHandler {
            device,
            queue_evts,
            host_fd,
        }
    }

    /// The handler for `device` wrapped in `transport`, watching clones of the transport's
    /// queue EventFds.
    pub fn for_transport(device: Arc<Mutex<Vsock>>, transport: &MmioTransport) -> io::Result<Self> {
        let evts = transport
            .queue_events()
            .iter()
            .map(EventFd::try_clone)
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self::new(device, evts))
    }

    /// Handles a notification for queue `index`; also usable directly (tests, polling).
    pub fn handle_queue_event(&mut self, index: usize) {
        let Some(evt) = self.queue_evts.get(index) else {
            warn!("vsock: event for unknown queue {index}");
            return;
        };
        match evt.read() {
            Ok(_) => {}
            // Spurious wake-up or already drained by a reset.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                warn!("vsock: cannot read queue {index} event: {e}");
                return;
            }
        }
        let mut device = lock(&self.device);
        if device.is_activated() {
            device.process_queue(index);
        } else {
            debug!("vsock: queue {index} notified while device inactive; ignored");
        }
    }

    /// Handles host socket activity.
    pub fn handle_host_events(&mut self) {
        lock(&self.device).process_host_events();
    }
}

fn lock(device: &Mutex<Vsock>) -> MutexGuard<'_, Vsock> {
    // A panic elsewhere must not turn every later event into a panic too.
    device.lock().unwrap_or_else(|p| p.into_inner())
}

impl MutEventSubscriber for VsockEventHandler {
    fn init(&mut self, ops: &mut EventOps) {
        for (index, evt) in self.queue_evts.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, index as u32, EventSet::IN)) {
                error!("vsock: cannot watch queue {index} event: {e:?}");
            }
        }
        if let Err(e) = ops.add(Events::with_data_raw(
            self.host_fd,
            HOST_EVENTS,
            EventSet::IN,
        )) {
            error!("vsock: cannot watch host sockets: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let data = events.data();
        if !events.event_set().contains(EventSet::IN) {
            // ERROR/HUP on an eventfd or epoll fd should not happen; stop watching it rather
            // than spin.
            warn!(
                "vsock: unexpected event set {:?} (data {data}); unregistering",
                events.event_set()
            );
            if let Err(e) = ops.remove(events) {
                error!("vsock: cannot unregister event: {e:?}");
            }
            return;
        }
        if data == HOST_EVENTS {
            self.handle_host_events();
        } else {
            self.handle_queue_event(data as usize);
        }
    }
}
