//! virtio-blk request parsing and processing, driven through the virtio-mmio transport.
//!
//! Input layout (all integers little endian):
//!
//! | bytes  | meaning                                                                   |
//! |--------|---------------------------------------------------------------------------|
//! | 0      | flags, see `F_*`                                                          |
//! | 1      | queue size: `1 << (b % 9)`, or `b & 0x7f` as is when bit 7 is set       |
//! | 2..4   | reserved                                                                  |
//! | 4..8   | descriptor table guest address                                           |
//! | 8..12  | available (driver) ring guest address                                    |
//! | 12..16 | used (device) ring guest address                                          |
//! | 16..   | guest RAM image, copied to guest address 0                                |
//!
//! The driver brings the device up with the flagged features and the queue placed as given,
//! then the device processes whatever chains the available ring in the image announces.

use devices::virtio::mmio::regs;
use devices::virtio::{features, GuestMemoryMmap, VirtioDevice};
use virtio_bindings::virtio_blk as vb;

use crate::{
    bring_up, guest_memory, transport, write_reg, Input, MemDisk, QueueSetup, DISK_BYTES, INT_ALL,
};

pub const HEADER_LEN: usize = 16;

/// Negotiate VIRTIO_RING_F_EVENT_IDX.
pub const F_EVENT_IDX: u8 = 1 << 0;
/// Negotiate VIRTIO_RING_F_INDIRECT_DESC.
pub const F_INDIRECT: u8 = 1 << 1;
/// Negotiate VIRTIO_BLK_F_FLUSH (otherwise every write is flushed).
pub const F_FLUSH: u8 = 1 << 2;
/// Negotiate VIRTIO_BLK_F_DISCARD.
pub const F_DISCARD: u8 = 1 << 3;
/// Negotiate VIRTIO_BLK_F_WRITE_ZEROES.
pub const F_WRITE_ZEROES: u8 = 1 << 4;
/// Open the disk read-only: whatever the requests say, the disk must stay untouched.
pub const F_READ_ONLY: u8 = 1 << 5;
/// After processing, reset the device, bring it up again on the same (now device-modified)
/// memory and process once more: a reset must leave nothing behind.
pub const F_RESET_REPLAY: u8 = 1 << 6;

/// What a run left behind, for the seed tests.
pub struct Outcome {
    pub mem: GuestMemoryMmap,
    pub disk: Vec<u8>,
    pub activated: bool,
}

/// The guest-visible header fields of one run.
#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub flags: u8,
    pub queue_size: u8,
    pub desc: u32,
    pub driver: u32,
    pub device: u32,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0] = self.flags;
        h[1] = self.queue_size;
        h[4..8].copy_from_slice(&self.desc.to_le_bytes());
        h[8..12].copy_from_slice(&self.driver.to_le_bytes());
        h[12..16].copy_from_slice(&self.device.to_le_bytes());
        h
    }

    fn decode(input: &mut Input<'_>) -> Self {
        let flags = input.u8();
        let queue_size = input.u8();
        input.u16();
        Header {
            flags,
            queue_size,
            desc: input.u32(),
            driver: input.u32(),
            device: input.u32(),
        }
    }

    fn features(&self) -> u64 {
        let mut f = 1u64 << features::VERSION_1;
        let bits = [
            (F_EVENT_IDX, features::RING_EVENT_IDX),
            (F_INDIRECT, features::RING_INDIRECT_DESC),
            (F_FLUSH, vb::VIRTIO_BLK_F_FLUSH),
            (F_DISCARD, vb::VIRTIO_BLK_F_DISCARD),
            (F_WRITE_ZEROES, vb::VIRTIO_BLK_F_WRITE_ZEROES),
        ];
        for (flag, bit) in bits {
            if self.flags & flag != 0 {
                f |= 1 << bit;
            }
        }
        f
    }

    fn queue(&self) -> QueueSetup {
        let size = if self.queue_size & 0x80 != 0 {
            u32::from(self.queue_size & 0x7f)
        } else {
            1 << (self.queue_size % 9)
        };
        QueueSetup {
            size,
            desc: self.desc.into(),
            driver: self.driver.into(),
            device: self.device.into(),
        }
    }
}

pub fn run(data: &[u8]) -> Option<Outcome> {
    let mut input = Input::new(data);
    let header = Header::decode(&mut input);
    let mem = guest_memory(input.rest());
    let disk = MemDisk::new();
    let read_only = header.flags & F_READ_ONLY != 0;
    let (mut t, block) = transport(&mem, disk.block(read_only))?;
    let mut handler = t.event_handler().expect("event handler");
    let queue = [header.queue()];

    let rounds = if header.flags & F_RESET_REPLAY != 0 {
        2
    } else {
        1
    };
    for _ in 0..rounds {
        bring_up(&mut t, header.features(), &queue);
        // Activation kicks the queue; then the driver notifies once more, as it would after
        // adding buffers. Processing may have rewritten the available ring (if the guest made
        // rings overlap), so the second pass can find new work.
        handler.handle_queue_event(0);
        write_reg(&mut t, regs::QUEUE_NOTIFY, 0);
        handler.handle_queue_event(0);
        assert_eq!(t.interrupt().status() & !INT_ALL, 0);
    }
    let activated = block.lock().unwrap().is_activated();

    write_reg(&mut t, regs::STATUS, 0);
    assert!(
        !block.lock().unwrap().is_activated(),
        "device still active after reset"
    );
    let contents = disk.contents();
    // Capacity comes from the file size; no request may grow or shrink the image.
    assert_eq!(contents.len(), DISK_BYTES, "disk size changed");
    if read_only {
        assert!(
            contents == crate::disk_pattern(),
            "read-only disk was modified"
        );
    }
    Some(Outcome {
        mem,
        disk: contents,
        activated,
    })
}
