//! virtio-fs (virtio 1.2 §5.11) with the FUSE server inside the VMM process: a passthrough
//! of one host directory, confined to it (see [`passthrough`] for how).
//!
//! Two queues: 0 is the high-priority queue (FORGET, BATCH_FORGET, INTERRUPT), 1 the single
//! request queue. Requests run synchronously on the event-loop thread. No DAX window, no
//! notification queue.
//!
//! The vmm attaches it like virtio-blk:
//!
//! ```no_run
//! # use std::sync::{Arc, Mutex};
//! # use devices::virtio::{fs::Fs, MmioTransport, GuestMemoryMmap};
//! # fn f(mem: GuestMemoryMmap) -> Result<(), Box<dyn std::error::Error>> {
//! let fs = Arc::new(Mutex::new(Fs::new("rootfs", "/run/bundle/rootfs".into(), false)?));
//! let transport = MmioTransport::new(mem, fs)?;
//! // ... register `transport` on the MMIO bus, its queue_events() as ioeventfds, its
//! // interrupt as an irqfd, and transport.event_handler() with the event manager.
//! # Ok(()) }
//! ```
//!
//! The guest mounts it with `mount -t virtiofs rootfs /mnt`.

mod abi;
mod decode;
mod passthrough;
mod queue;
mod server;
mod sys;

#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use tracing::{debug, error, warn};
use virtio_bindings::virtio_ids::VIRTIO_ID_FS;
use virtio_queue::{Queue, QueueT};

use super::drain::{drain_queue, Drained};
use super::read_config_space;
use super::{features, ActivateError, GuestMemoryMmap, Interrupt, InterruptType, VirtioDevice};
use server::Server;

/// Longest tag (the `tag` field of the config space; no NUL needed at full length).
pub const TAG_LEN: usize = 36;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 1024;
/// Queue indices.
pub const HIPRIO_QUEUE: usize = 0;
/// The single request queue.
pub const REQUEST_QUEUE: usize = 1;
/// Number of request queues advertised in the config space.
pub const NUM_REQUEST_QUEUES: u32 = 1;

/// Errors creating a virtio-fs device.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag is empty or longer than [`TAG_LEN`] bytes.
    #[error("virtio-fs tag must be 1 to {TAG_LEN} bytes, got {0}")]
    BadTag(usize),
    /// The tag contains a NUL byte, which would cut it short in the guest.
    #[error("virtio-fs tag contains a NUL byte")]
    TagNul,
    /// The shared directory cannot be inspected.
    #[error("cannot access shared directory {path:?}: {source}")]
    SharedDir {
        /// The directory.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// The shared path is not a directory.
    #[error("{0:?} is not a directory")]
    NotADirectory(PathBuf),
    /// The shared directory or `/proc/self/fd` cannot be opened.
    #[error("cannot open shared directory {path:?}: {source}")]
    Open {
        /// The directory.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
}

/// State handed over at activation and dropped at reset.
struct Active {
    mem: GuestMemoryMmap,
    /// Indexed by queue; `None` for a queue the driver did not enable.
    queues: [Option<Queue>; 2],
    interrupt: Arc<Interrupt>,
}

/// A virtio-fs device sharing one host directory.
pub struct Fs {
    tag: String,
    shared_dir: PathBuf,
    read_only: bool,
    server: Server,
    config_space: Vec<u8>,
    queue_max_sizes: [u16; 2],
    active: Option<Active>,
    /// A queue is corrupt; the device waits for a reset (DEVICE_NEEDS_RESET).
    broken: bool,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("tag", &self.tag)
            .field("shared_dir", &self.shared_dir)
            .field("read_only", &self.read_only)
            .field("active", &self.active.is_some())
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl Fs {
    /// A device exporting `shared_dir` under `tag` (what the guest passes to mount).
    /// With `read_only`, every request that would change the directory fails with EROFS.
    pub fn new(tag: &str, shared_dir: PathBuf, read_only: bool) -> Result<Self, FsError> {
        if tag.is_empty() || tag.len() > TAG_LEN {
            return Err(FsError::BadTag(tag.len()));
        }
        if tag.as_bytes().contains(&0) {
            return Err(FsError::TagNul);
        }
        let meta = std::fs::metadata(&shared_dir).map_err(|source| FsError::SharedDir {
            path: shared_dir.clone(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(FsError::NotADirectory(shared_dir));
        }
        let server = Server::new(&shared_dir, read_only).map_err(|source| FsError::Open {
            path: shared_dir.clone(),
            source,
        })?;
        let mut config_space = vec![0u8; TAG_LEN + 4];
        config_space[..tag.len()].copy_from_slice(tag.as_bytes());
        config_space[TAG_LEN..].copy_from_slice(&NUM_REQUEST_QUEUES.to_le_bytes());
        debug!("virtio-fs: tag {tag:?} -> {shared_dir:?}, read_only={read_only}");
        Ok(Fs {
            tag: tag.to_owned(),
            shared_dir,
            read_only,
            server,
            config_space,
            queue_max_sizes: [QUEUE_SIZE; 2],
            active: None,
            broken: false,
        })
    }

    /// The mount tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The shared host directory.
    pub fn shared_dir(&self) -> &std::path::Path {
        &self.shared_dir
    }

    /// Whether the share is read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Marks the device unusable until the driver resets it, and tells the driver.
    fn mark_broken(&mut self, why: &str) {
        error!("virtio-fs: {why}; device needs reset");
        self.broken = true;
        if let Some(active) = &self.active {
            if let Err(e) = active.interrupt.trigger(InterruptType::ConfigChange) {
                warn!("virtio-fs: cannot signal config interrupt: {e}");
            }
        }
    }

    /// Drains queue `index`, then interrupts the driver once if it wants to hear about it.
    fn process(&mut self, index: usize) {
        let Fs { server, active, .. } = self;
        let Some(active) = active.as_mut() else {
            return;
        };
        let Active {
            mem,
            queues,
            interrupt,
        } = active;
        let Some(queue) = queues[index].as_mut() else {
            warn!("virtio-fs: notification for disabled queue {index}");
            return;
        };
        let Drained { used_any, broken } = drain_queue(queue, mem, "virtio-fs", |chain| {
            queue::handle_chain(chain, mem, server)
        });
        if used_any && queue.needs_notification(&*mem).unwrap_or(true) {
            if let Err(e) = interrupt.trigger(InterruptType::UsedBuffer) {
                warn!("virtio-fs: cannot signal used-buffer interrupt: {e}");
            }
        }
        if let Some(why) = broken {
            self.mark_broken(&why);
        }
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    fn device_features(&self) -> u64 {
        (1u64 << features::VERSION_1)
            | (1 << features::RING_INDIRECT_DESC)
            | (1 << features::RING_EVENT_IDX)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space("virtio-fs", &self.config_space, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The virtio-fs config space is read-only.
        warn!(
            "virtio-fs: ignoring {}-byte config write at {offset:#x}",
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
        let Ok([hiprio, request]) = <[Queue; 2]>::try_from(queues) else {
            return Err(ActivateError::QueueCount { expected: 2, got });
        };
        if !request.ready() {
            return Err(ActivateError::QueueNotReady(REQUEST_QUEUE));
        }
        // Linux always enables the high-priority queue, but nothing requires it.
        let hiprio = hiprio.ready().then_some(hiprio);
        self.broken = false;
        self.active = Some(Active {
            mem,
            queues: [hiprio, Some(request)],
            interrupt,
        });
        Ok(())
    }

    fn reset(&mut self) {
        // Dropping `Active` releases the queues, the guest memory and the interrupt. Open
        // files and looked-up inodes belong to the FUSE session, which a new driver starts
        // afresh with INIT; drop them too.
        self.active = None;
        self.broken = false;
        self.server.reset();
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn process_queue(&mut self, queue_index: usize) {
        if queue_index > REQUEST_QUEUE {
            warn!("virtio-fs: notification for nonexistent queue {queue_index}");
            return;
        }
        if self.broken {
            debug!("virtio-fs: queue notification while broken; ignored");
            return;
        }
        self.process(queue_index);
    }

    fn needs_reset(&self) -> bool {
        self.broken
    }
}
