//! virtio-blk (virtio 1.2 §5.2) backed by a raw image file or a host block device.
//!
//! One request queue; requests run synchronously on the event-loop thread. Supported
//! requests: IN, OUT, FLUSH, GET_ID, DISCARD, WRITE_ZEROES; anything else gets
//! VIRTIO_BLK_S_UNSUPP.

mod disk;
mod request;

#[cfg(test)]
mod tests;

use std::io;
use std::mem::{offset_of, size_of};
use std::path::PathBuf;
use std::sync::Arc;

use tracing::{debug, error, warn};
use virtio_bindings::virtio_blk as vb;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{Queue, QueueT};

use super::drain::{drain_queue, Drained};
use super::read_config_space;
use super::{features, ActivateError, GuestMemoryMmap, Interrupt, InterruptType, VirtioDevice};
use disk::Disk;
use request::RequestContext;

/// virtio-blk always addresses the disk in 512-byte sectors, whatever `blk_size` says.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Length of the GET_ID serial string.
pub const ID_LEN: usize = vb::VIRTIO_BLK_ID_BYTES as usize;

/// Errors creating a block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The backing file could not be opened.
    #[error("cannot open disk {path:?}: {source}")]
    Open {
        /// Backing path.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// The size of the backing file could not be determined.
    #[error("cannot get size of disk {path:?}: {source}")]
    Size {
        /// Backing path.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// The backing path is neither a regular file nor a block device.
    #[error("{0:?} is not a regular file or block device")]
    NotADisk(PathBuf),
    /// The serial is longer than the 20 bytes GET_ID can return.
    #[error("block device id is {0} bytes long, at most {ID_LEN} allowed")]
    IdTooLong(usize),
}

/// How to create a [`Block`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockConfig {
    /// Raw image file or host block device.
    pub path: PathBuf,
    /// Open read-only and offer VIRTIO_BLK_F_RO; writes fail with IOERR.
    pub read_only: bool,
    /// Serial returned by GET_ID (`/sys/block/vdX/serial` in the guest), at most 20 bytes.
    pub id: String,
}

/// Request-size limits advertised in the config space and enforced on requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BlockLimits {
    pub seg_max: u32,
    pub max_discard_sectors: u32,
    pub max_discard_seg: u32,
    pub discard_sector_alignment: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_write_zeroes_seg: u32,
}

impl Default for BlockLimits {
    fn default() -> Self {
        BlockLimits {
            // Header and status take two descriptors of a chain.
            seg_max: u32::from(QUEUE_SIZE) - 2,
            // 1 GiB per segment keeps one request (which runs on the event loop, possibly via
            // the write-zeros fallback) bounded.
            max_discard_sectors: 1 << 21,
            max_discard_seg: 16,
            // 4 KiB: the granularity at which filesystems can actually punch holes.
            discard_sector_alignment: 8,
            max_write_zeroes_sectors: 1 << 21,
            max_write_zeroes_seg: 16,
        }
    }
}

/// State handed over at activation and dropped at reset.
struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<Interrupt>,
    acked_features: u64,
}

/// A virtio-blk device.
pub struct Block {
    disk: Disk,
    id: [u8; ID_LEN],
    limits: BlockLimits,
    avail_features: u64,
    config_space: Vec<u8>,
    queue_max_sizes: [u16; 1],
    active: Option<Active>,
    /// The queue is corrupt; the device waits for a reset (DEVICE_NEEDS_RESET).
    broken: bool,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("disk", &self.disk)
            .field("active", &self.active.is_some())
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl Block {
    /// Opens the backing file (O_RDWR, or O_RDONLY when read-only) and sizes the disk.
    pub fn new(config: &BlockConfig) -> Result<Self, BlockError> {
        let id_bytes = config.id.as_bytes();
        if id_bytes.len() > ID_LEN {
            return Err(BlockError::IdTooLong(id_bytes.len()));
        }
        // NUL-padded; a full 20-byte id has no terminator, as the spec allows.
        let mut id = [0u8; ID_LEN];
        id[..id_bytes.len()].copy_from_slice(id_bytes);

        let disk = Disk::open(&config.path, config.read_only)?;
        let limits = BlockLimits::default();
        let mut avail_features = (1u64 << features::VERSION_1)
            | (1 << features::RING_INDIRECT_DESC)
            | (1 << features::RING_EVENT_IDX)
            | (1 << vb::VIRTIO_BLK_F_SEG_MAX)
            | (1 << vb::VIRTIO_BLK_F_BLK_SIZE)
            | (1 << vb::VIRTIO_BLK_F_FLUSH);
        if config.read_only {
            avail_features |= 1 << vb::VIRTIO_BLK_F_RO;
        } else {
            avail_features |=
                (1 << vb::VIRTIO_BLK_F_DISCARD) | (1 << vb::VIRTIO_BLK_F_WRITE_ZEROES);
        }
        let config_space = build_config_space(disk.sectors(), &limits);
        debug!(
            "virtio-blk: {:?}: {} sectors, read_only={}",
            config.path,
            disk.sectors(),
            config.read_only
        );
        Ok(Block {
            disk,
            id,
            limits,
            avail_features,
            config_space,
            queue_max_sizes: [QUEUE_SIZE],
            active: None,
            broken: false,
        })
    }

    /// Disk size in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.sectors()
    }

    /// Marks the queue unusable until the driver resets the device, and tells the driver.
    fn mark_broken(&mut self, why: &str) {
        error!("virtio-blk: {why}; device needs reset");
        self.broken = true;
        if let Some(active) = &self.active {
            if let Err(e) = active.interrupt.trigger(InterruptType::ConfigChange) {
                warn!("virtio-blk: cannot signal config interrupt: {e}");
            }
        }
    }

    /// Drains the request queue, then interrupts the driver once if it wants to hear about it.
    fn process_requests(&mut self) {
        let Block {
            disk,
            id,
            limits,
            active,
            ..
        } = self;
        let Some(active) = active.as_mut() else {
            return;
        };
        let Active {
            mem,
            queue,
            interrupt,
            acked_features,
        } = active;
        let mut ctx = RequestContext {
            disk,
            id,
            limits,
            acked_features: *acked_features,
        };
        let Drained { used_any, broken } = drain_queue(queue, mem, "virtio-blk", |chain| {
            request::handle_chain(chain, mem, &mut ctx)
        });
        if used_any {
            // Without EVENT_IDX this is always true; with it, the driver's used_event decides.
            let notify = queue.needs_notification(&*mem).unwrap_or(true);
            if notify {
                if let Err(e) = interrupt.trigger(InterruptType::UsedBuffer) {
                    warn!("virtio-blk: cannot signal used-buffer interrupt: {e}");
                }
            }
        }
        if let Some(why) = broken {
            self.mark_broken(&why);
        }
    }
}

/// Serialises `struct virtio_blk_config` (little endian; offsets taken from the bindings).
fn build_config_space(sectors: u64, limits: &BlockLimits) -> Vec<u8> {
    type C = vb::virtio_blk_config;
    let mut c = vec![0u8; size_of::<C>()];
    let mut put = |off: usize, bytes: &[u8]| c[off..off + bytes.len()].copy_from_slice(bytes);
    put(offset_of!(C, capacity), &sectors.to_le_bytes());
    put(offset_of!(C, seg_max), &limits.seg_max.to_le_bytes());
    put(offset_of!(C, blk_size), &(SECTOR_SIZE as u32).to_le_bytes());
    put(offset_of!(C, num_queues), &1u16.to_le_bytes());
    put(
        offset_of!(C, max_discard_sectors),
        &limits.max_discard_sectors.to_le_bytes(),
    );
    put(
        offset_of!(C, max_discard_seg),
        &limits.max_discard_seg.to_le_bytes(),
    );
    put(
        offset_of!(C, discard_sector_alignment),
        &limits.discard_sector_alignment.to_le_bytes(),
    );
    put(
        offset_of!(C, max_write_zeroes_sectors),
        &limits.max_write_zeroes_sectors.to_le_bytes(),
    );
    put(
        offset_of!(C, max_write_zeroes_seg),
        &limits.max_write_zeroes_seg.to_le_bytes(),
    );
    // WRITE_ZEROES with the unmap flag punches holes.
    put(offset_of!(C, write_zeroes_may_unmap), &[1]);
    c
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    fn device_features(&self) -> u64 {
        self.avail_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space("virtio-blk", &self.config_space, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `writeback` is writable, and only with VIRTIO_BLK_F_CONFIG_WCE (not offered).
        warn!(
            "virtio-blk: ignoring {}-byte config write at {offset:#x}",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
        acked_features: u64,
    ) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let got = queues.len();
        let Ok([queue]) = <[Queue; 1]>::try_from(queues) else {
            return Err(ActivateError::QueueCount { expected: 1, got });
        };
        if !queue.ready() {
            return Err(ActivateError::QueueNotReady(0));
        }
        self.broken = false;
        self.active = Some(Active {
            mem,
            queue,
            interrupt,
            acked_features,
        });
        Ok(())
    }

    fn reset(&mut self) {
        // Dropping `Active` releases the queue, the guest memory mapping reference and the
        // interrupt; the disk stays open for the next activation.
        self.active = None;
        self.broken = false;
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn process_queue(&mut self, queue_index: usize) {
        if queue_index != 0 {
            warn!("virtio-blk: notification for nonexistent queue {queue_index}");
            return;
        }
        if self.broken {
            debug!("virtio-blk: queue notification while broken; ignored");
            return;
        }
        self.process_requests();
    }

    fn needs_reset(&self) -> bool {
        self.broken
    }
}
