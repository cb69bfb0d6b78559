//! Event-loop side of a virtio device: waits on the queue notification EventFds and runs the
//! device's queue processing on the vmm's event-manager thread (not on vCPU threads).

use std::io;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use tracing::{debug, error, warn};
use vmm_sys_util::eventfd::EventFd;

use super::VirtioDevice;

/// Event-manager subscriber for one virtio device. Create it with
/// [`MmioTransport::event_handler`](super::MmioTransport::event_handler) and register it as
/// `Arc::new(Mutex::new(handler))`.
pub struct QueueEventHandler {
    device: Arc<Mutex<dyn VirtioDevice>>,
    /// Clones of the transport's queue EventFds (same underlying eventfd objects).
    queue_evts: Vec<EventFd>,
}

impl QueueEventHandler {
    /// `queue_evts[i]` is the notification EventFd of queue `i`.
    pub fn new(device: Arc<Mutex<dyn VirtioDevice>>, queue_evts: Vec<EventFd>) -> Self {
        QueueEventHandler { device, queue_evts }
    }

    /// Handles a notification for queue `index`; also usable directly (tests, polling).
    pub fn handle_queue_event(&mut self, index: usize) {
        let Some(evt) = self.queue_evts.get(index) else {
            warn!("virtio: event for unknown queue {index}");
            return;
        };
        match evt.read() {
            Ok(_) => {}
            // Spurious wake-up or already drained by a reset.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                warn!("virtio: cannot read queue {index} event: {e}");
                return;
            }
        }
        let mut device = self.device.lock().unwrap_or_else(|p| p.into_inner());
        if device.is_activated() {
            device.process_queue(index);
        } else {
            debug!("virtio: queue {index} notified while device inactive; ignored");
        }
    }
}

impl MutEventSubscriber for QueueEventHandler {
    fn init(&mut self, ops: &mut EventOps) {
        for (index, evt) in self.queue_evts.iter().enumerate() {
            // The queue index rides in the event's data so `process` knows which queue fired.
            if let Err(e) = ops.add(Events::with_data(evt, index as u32, EventSet::IN)) {
                error!("virtio: cannot watch queue {index} event: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let index = events.data() as usize;
        if !events.event_set().contains(EventSet::IN) {
            // ERROR/HUP on an eventfd should not happen; stop watching it rather than spin.
            warn!(
                "virtio: unexpected event set {:?} on queue {index}; unregistering",
                events.event_set()
            );
            if let Err(e) = ops.remove(events) {
                error!("virtio: cannot unregister queue {index} event: {e}");
            }
            return;
        }
        self.handle_queue_event(index);
    }
}
