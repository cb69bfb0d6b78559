//! virtio-vsock (virtio 1.2 §5.10) with Firecracker-style *hybrid vsock* on the host side.
//!
//! The guest sees a vsock device with CID `guest_cid`; the host side is a set of Unix
//! sockets:
//!
//! * **Host to guest.** The device listens on `uds_path`. A host process connects and writes
//!   `CONNECT <port>\n` (decimal guest port, optional `\r` before the newline). The device
//!   sends the guest a REQUEST from CID 2 and a fresh host port (counting up from 2^30). When
//!   the guest accepts (RESPONSE) the device writes `OK <host_port>\n` to the client, and from
//!   then on the Unix connection carries the stream both ways. If the guest refuses (RST) or
//!   the line is malformed, the Unix connection is closed without a reply.
//! * **Guest to host.** A guest connection to host port P (CID 2) is connected to the Unix
//!   socket `<uds_path>_P`; no handshake text is exchanged. If nothing accepts there the guest
//!   gets an RST.
//!
//! Only stream sockets are supported. Flow control follows the spec's credit scheme in both
//! directions (see [`connection`]): the device never sends the guest more than its advertised
//! credit and never takes more from the guest than [`CONN_BUF_SIZE`] per connection, so a
//! slow reader on either side stalls its writer instead of losing data.
//!
//! Threading: everything runs on the vmm's event-loop thread through [`VsockEventHandler`],
//! except `activate`/`reset`, which the transport calls from vCPU threads; the device mutex
//! serialises them.
//!
//! Deliberate limits:
//!
//! * A guest that sends more than the credit it was given gets an RST for that connection
//!   (the alternative would be an unbounded host-side buffer).
//! * An RST from the guest drops guest data the host socket has not taken yet; a clean
//!   SHUTDOWN is flushed first and answered with the closing RST once flushed.
//! * At most [`MAX_CONNECTIONS`] host sockets (connections plus clients still sending their
//!   `CONNECT` line); beyond that new ones are refused.
//! * No connect timeout: a host client waits for the guest's RESPONSE/RST until it gives up
//!   itself (closing its socket cancels the attempt).
//! * A tx packet's payload must sit in one descriptor after the header (or share the
//!   header's), which is what Linux does except for MSG_ZEROCOPY sends.
//! * The event queue is never used (no VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: there is no
//!   snapshot/migration).

mod backend;
mod connection;
mod event_handler;
pub mod packet;
mod sys;

#[cfg(test)]
mod fuzz_regressions;
#[cfg(test)]
mod test_driver;
#[cfg(test)]
mod tests;

use std::io;
use std::os::fd::RawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{debug, error, warn};
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::VsockPacket;
use vm_memory::Bytes;

use super::drain::drain_queue;
use super::{features, ActivateError, GuestMemoryMmap, Interrupt, InterruptType, VirtioDevice};
use backend::Backend;
use connection::RxFill;
use packet::{Hdr, HDR_LEN};

pub use backend::{FIRST_LOCAL_PORT, MAX_CONNECTIONS};
pub use event_handler::VsockEventHandler;

/// Queue indices.
pub const RX_QUEUE: usize = 0;
/// Guest-to-device packets.
pub const TX_QUEUE: usize = 1;
/// Device-to-guest events (transport reset); the device never sends any.
pub const EVENT_QUEUE: usize = 2;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Largest payload per packet, either way (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
pub const MAX_PKT_BUF_SIZE: u32 = 64 * 1024;
/// Receive buffer the device advertises per connection (`buf_alloc`): the most guest data it
/// holds for a host socket that is not reading.
pub const CONN_BUF_SIZE: u32 = 256 * 1024;

/// Errors creating a vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// CIDs 0-2 are reserved (hypervisor, local, host) and `u32::MAX` means "any".
    #[error("invalid guest CID {0}: must be in 3..{max}", max = u32::MAX)]
    InvalidCid(u64),
    /// The listening socket could not be created (e.g. the path already exists).
    #[error("cannot listen on {path:?}: {source}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// Setting up the socket or the private epoll instance failed.
    #[error("cannot set up vsock host sockets: {0}")]
    Setup(#[source] io::Error),
}

/// State handed over at activation and dropped at reset.
struct Active {
    mem: GuestMemoryMmap,
    rxq: Queue,
    txq: Queue,
    interrupt: Arc<Interrupt>,
}

/// A virtio-vsock device whose host side is a hybrid-vsock Unix socket.
pub struct Vsock {
    guest_cid: u64,
    uds_path: PathBuf,
    /// (st_dev, st_ino) of the socket file we bound, so drop only removes our own file.
    uds_id: (u64, u64),
    avail_features: u64,
    queue_max_sizes: [u16; 3],
    backend: Backend,
    active: Option<Active>,
    /// A queue is corrupt; the device waits for a reset (DEVICE_NEEDS_RESET).
    broken: bool,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("guest_cid", &self.guest_cid)
            .field("uds_path", &self.uds_path)
            .field("active", &self.active.is_some())
            .field("connections", &self.backend.connection_count())
            .finish_non_exhaustive()
    }
}

impl Vsock {
    /// Creates the device and starts listening on `uds_path` (which must not exist yet).
    /// Host clients that connect before the guest driver is up wait in the listen backlog.
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> Result<Self, VsockError> {
        if !(3..u64::from(u32::MAX)).contains(&guest_cid) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        let listener = UnixListener::bind(&uds_path).map_err(|source| VsockError::Bind {
            path: uds_path.clone(),
            source,
        })?;
        // From here on the file is ours: remove it again if setup fails.
        let cleanup = |e: io::Error| {
            let _ = std::fs::remove_file(&uds_path);
            VsockError::Setup(e)
        };
        listener.set_nonblocking(true).map_err(cleanup)?;
        let meta = std::fs::symlink_metadata(&uds_path).map_err(cleanup)?;
        let backend = Backend::new(guest_cid, uds_path.clone(), listener).map_err(cleanup)?;
        debug!("vsock: guest CID {guest_cid}, listening on {uds_path:?}");
        Ok(Vsock {
            guest_cid,
            uds_path,
            uds_id: (meta.dev(), meta.ino()),
            avail_features: (1u64 << features::VERSION_1)
                | (1 << features::RING_INDIRECT_DESC)
                | (1 << features::RING_EVENT_IDX),
            queue_max_sizes: [QUEUE_SIZE; 3],
            backend,
            active: None,
            broken: false,
        })
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The listening socket's path.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// Number of live connections (host- or guest-initiated, past the CONNECT line).
    pub fn connection_count(&self) -> usize {
        self.backend.connection_count()
    }

    /// The fd that becomes readable when a host socket needs attention; watch it for
    /// EPOLLIN and call [`Self::process_host_events`]. [`VsockEventHandler`] does this.
    pub fn host_events_fd(&self) -> RawFd {
        self.backend.epoll_fd()
    }

    /// Handles host socket activity (new clients, readable/writable/closed connections).
    pub fn process_host_events(&mut self) {
        if self.active.is_none() {
            return;
        }
        if self.backend.process_host_events() > 0 {
            self.run(false);
        }
    }

    /// Marks the queues unusable until the driver resets the device, and tells the driver.
    fn mark_broken(&mut self, why: &str) {
        error!("vsock: {why}; device needs reset");
        self.broken = true;
        if let Some(active) = &self.active {
            if let Err(e) = active.interrupt.trigger(InterruptType::ConfigChange) {
                warn!("vsock: cannot signal config interrupt: {e}");
            }
        }
    }

    /// Processes the tx queue if asked, then feeds the rx queue for as long as there is
    /// something to send and buffers to send it in, and interrupts the guest once.
    fn run(&mut self, tx: bool) {
        if self.broken {
            // No queue work until the reset, but epoll interest must still follow what host
            // events just changed: a level-triggered readable socket left in the set would
            // keep the event loop spinning until the driver resets the device.
            self.backend.commit();
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let (tx_used, rx_used, result) = pump(active, &mut self.backend, tx);
        let mut notify = false;
        for (used, queue) in [(tx_used, &mut active.txq), (rx_used, &mut active.rxq)] {
            // Without EVENT_IDX this is always true; with it, the driver's used_event decides.
            notify |= used && queue.needs_notification(&active.mem).unwrap_or(true);
        }
        if notify {
            if let Err(e) = active.interrupt.trigger(InterruptType::UsedBuffer) {
                warn!("vsock: cannot signal used-buffer interrupt: {e}");
            }
        }
        if let Err(why) = result {
            self.mark_broken(&why);
        }
    }
}

/// One round of queue work: tx (if asked), then rx until there is nothing left to send or
/// no buffer to send it in. Returns whether tx / rx buffers were used, and whether a ring
/// turned out to be corrupt.
fn pump(active: &mut Active, backend: &mut Backend, tx: bool) -> (bool, bool, Result<(), String>) {
    let mut tx_used = false;
    let mut rx_used = false;
    let mut work = || -> Result<(), String> {
        if tx {
            let (used, broken) = process_tx(active, backend);
            tx_used = used;
            if let Some(why) = broken {
                return Err(why);
            }
        }
        loop {
            backend.commit();
            let n = process_rx(active, backend)?;
            rx_used |= n > 0;
            // Sending can queue more (e.g. the RST of a connection that just finished);
            // go around while that makes progress.
            if n == 0 {
                break;
            }
        }
        Ok(())
    };
    let result = work();
    // Also after a corrupt ring: connections the packets before it created or changed must
    // get their epoll interest (and level-triggered readiness must not linger).
    backend.commit();
    (tx_used, rx_used, result)
}

/// Drains the tx queue. Returns whether any chain was used, and why the ring is broken if
/// it is.
fn process_tx(active: &mut Active, backend: &mut Backend) -> (bool, Option<String>) {
    let Active { mem, txq, .. } = active;
    let mem = &*mem;
    let drained = drain_queue(txq, mem, "vsock tx", |mut chain| {
        let head = chain.head_index();
        // Kept to recover the header if the packet as a whole does not parse.
        let first = chain.clone().next();
        match VsockPacket::from_tx_virtq_chain(mem, &mut chain, MAX_PKT_BUF_SIZE) {
            Ok(pkt) => backend.handle_tx(&Hdr::from_packet(&pkt), pkt.data_slice()),
            Err(e) => {
                warn!("vsock: malformed tx chain {head}: {e}");
                let hdr = first
                    .filter(|d| !d.is_write_only() && d.len() as usize >= HDR_LEN)
                    .and_then(|d| {
                        let mut b = [0u8; HDR_LEN];
                        mem.read_slice(&mut b, d.addr()).ok()?;
                        Some(Hdr::from_bytes(&b))
                    });
                backend.handle_bad_tx(hdr);
            }
        }
        // The device writes nothing into tx buffers.
        0
    });
    (
        drained.used_any,
        drained.broken.map(|why| format!("tx: {why}")),
    )
}

/// Fills rx buffers while the backend has something to send. Returns how many were used.
fn process_rx(active: &mut Active, backend: &mut Backend) -> Result<usize, String> {
    let Active { mem, rxq, .. } = active;
    let mut used = 0usize;
    let mut empty_polls = 0;
    while backend.has_rx_work() {
        let chain = match rxq.iter(&*mem) {
            Ok(mut iter) => iter.next(),
            Err(e) => return Err(format!("rx: available ring is corrupt: {e}")),
        };
        let Some(mut chain) = chain else {
            // Out of buffers: the data stays where it is (our queues, host sockets) until
            // the driver adds buffers, which it announces with a kick we ask for here.
            match rxq.enable_notification(&*mem) {
                Ok(false) => break,
                Ok(true) if empty_polls > 0 => {
                    return Err("rx: available index moves but no chain can be read".into())
                }
                Ok(true) => {
                    empty_polls += 1;
                    continue;
                }
                Err(e) => return Err(format!("rx: cannot enable notifications: {e}")),
            }
        };
        empty_polls = 0;
        let head = chain.head_index();
        let len = match VsockPacket::from_rx_virtq_chain(&*mem, &mut chain, u32::MAX) {
            Ok(mut pkt) => match backend.fill_rx(&mut pkt) {
                RxFill::Sent(len) | RxFill::SentRst(len) => len,
                // The buffer has no room for payload; hand it back empty (the driver drops
                // it) rather than let it block the ring.
                RxFill::NoRoom => {
                    warn!("vsock: rx buffer {head} has no room for payload");
                    0
                }
                RxFill::Nothing => {
                    // Keep the buffer for later.
                    rxq.go_to_previous_position();
                    break;
                }
            },
            Err(e) => {
                warn!("vsock: malformed rx chain {head}: {e}");
                0
            }
        };
        if let Err(e) = rxq.add_used(&*mem, head, len) {
            warn!("vsock: cannot return rx descriptor {head}: {e}");
            continue;
        }
        used += 1;
    }
    Ok(used)
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    fn device_features(&self) -> u64 {
        self.avail_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        let config = self.guest_cid.to_le_bytes();
        data.fill(0);
        let Some(start) = usize::try_from(offset).ok().filter(|&o| o < config.len()) else {
            warn!("vsock: config read at {offset:#x} beyond config space");
            return;
        };
        let end = (start + data.len()).min(config.len());
        data[..end - start].copy_from_slice(&config[start..end]);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        warn!(
            "vsock: ignoring {}-byte write to read-only config at {offset:#x}",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
        _acked_features: u64,
    ) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let got = queues.len();
        let Ok([rxq, txq, _evq]) = <[Queue; 3]>::try_from(queues) else {
            return Err(ActivateError::QueueCount { expected: 3, got });
        };
        // The event queue is only needed for events the device never sends.
        for (index, q) in [(RX_QUEUE, &rxq), (TX_QUEUE, &txq)] {
            if !q.ready() {
                return Err(ActivateError::QueueNotReady(index));
            }
        }
        self.broken = false;
        self.active = Some(Active {
            mem,
            rxq,
            txq,
            interrupt,
        });
        self.backend.activate();
        Ok(())
    }

    /// Drops every connection (host clients see their socket close) and handshake in
    /// progress. The listening socket stays bound so the host-side path remains valid across
    /// guest reboots; clients connecting meanwhile wait in its backlog.
    fn reset(&mut self) {
        self.backend.reset();
        self.active = None;
        self.broken = false;
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn process_queue(&mut self, queue_index: usize) {
        match queue_index {
            // New rx buffers: retry whatever was waiting for them.
            RX_QUEUE => self.run(false),
            TX_QUEUE => self.run(true),
            // Event buffers are kept for events we never send.
            EVENT_QUEUE => {}
            _ => warn!("vsock: notification for nonexistent queue {queue_index}"),
        }
    }

    fn needs_reset(&self) -> bool {
        self.broken
    }
}

impl Drop for Vsock {
    /// Removes the socket file, unless something else has replaced it since.
    fn drop(&mut self) {
        match std::fs::symlink_metadata(&self.uds_path) {
            Ok(m) if (m.dev(), m.ino()) == self.uds_id => {
                if let Err(e) = std::fs::remove_file(&self.uds_path) {
                    warn!("vsock: cannot remove {:?}: {e}", self.uds_path);
                }
            }
            Ok(_) => debug!("vsock: {:?} was replaced; leaving it", self.uds_path),
            Err(_) => {}
        }
    }
}
