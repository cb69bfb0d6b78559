//! Helpers shared by the virtio unit tests.

use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::Queue;
use vm_memory::GuestAddress;

use super::{features, ActivateError, GuestMemoryMmap, Interrupt, VirtioDevice};

/// Size of the test guest's RAM (one region at address 0).
pub const MEM_SIZE: u64 = 0x100_0000;

pub fn test_mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

/// One descriptor of a test chain: guest address, length, device-writable?
#[derive(Clone, Copy, Debug)]
pub struct D(pub u64, pub u32, pub bool);

/// Builds a chain for `MockSplitQueue::add_desc_chains`, whose descriptors will sit at
/// table indices `first..`.
pub fn chain(first: u16, descs: &[D]) -> Vec<RawDescriptor> {
    descs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut flags = if d.2 { VRING_DESC_F_WRITE as u16 } else { 0 };
            let last = i + 1 == descs.len();
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let next = if last { 0 } else { first + i as u16 + 1 };
            RawDescriptor::from(SplitDescriptor::new(d.0, d.1, flags, next))
        })
        .collect()
}

/// What the transport handed to a [`MockDevice`] at activation.
pub struct MockActivation {
    pub queues: Vec<Queue>,
    pub interrupt: Arc<Interrupt>,
    pub acked_features: u64,
}

/// A device that records what the transport does to it.
pub struct MockDevice {
    pub queue_sizes: Vec<u16>,
    pub features: u64,
    pub config: Vec<u8>,
    pub config_writes: Vec<(u64, Vec<u8>)>,
    pub active: Option<MockActivation>,
    pub activations: usize,
    pub resets: usize,
    pub processed: Vec<usize>,
    pub fail_activate: bool,
    pub needs_reset: bool,
}

pub const MOCK_DEVICE_TYPE: u32 = 42;
/// An arbitrary device-specific feature the mock offers.
pub const MOCK_FEATURE: u32 = 3;

impl MockDevice {
    pub fn new(queue_sizes: &[u16]) -> Self {
        MockDevice {
            queue_sizes: queue_sizes.to_vec(),
            features: (1 << features::VERSION_1)
                | (1 << features::RING_EVENT_IDX)
                | (1 << MOCK_FEATURE),
            config: (0u8..16).collect(),
            config_writes: Vec::new(),
            active: None,
            activations: 0,
            resets: 0,
            processed: Vec::new(),
            fail_activate: false,
            needs_reset: false,
        }
    }

    pub fn shared(self) -> Arc<Mutex<MockDevice>> {
        Arc::new(Mutex::new(self))
    }
}

impl VirtioDevice for MockDevice {
    fn device_type(&self) -> u32 {
        MOCK_DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn device_features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self
                .config
                .get(offset as usize + i)
                .copied()
                .unwrap_or_default();
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.config_writes.push((offset, data.to_vec()));
    }

    fn activate(
        &mut self,
        _mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
        acked_features: u64,
    ) -> Result<(), ActivateError> {
        if self.fail_activate {
            return Err(ActivateError::QueueNotReady(0));
        }
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        self.activations += 1;
        self.active = Some(MockActivation {
            queues,
            interrupt,
            acked_features,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.resets += 1;
        self.active = None;
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn process_queue(&mut self, queue_index: usize) {
        self.processed.push(queue_index);
    }

    fn needs_reset(&self) -> bool {
        self.needs_reset
    }
}
