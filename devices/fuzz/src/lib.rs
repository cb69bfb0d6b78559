//! Shared harness for the capsa device fuzz targets: guest memory built from fuzz input, a
//! byte reader that never fails, an in-memory disk, and the driver-side register sequences.
//!
//! Every target treats its input as what a malicious guest controls: guest RAM contents,
//! queue placement and the order and values of register accesses. The device code must
//! neither panic nor hang on any of it.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::{Arc, Mutex};

use devices::virtio::block::{Block, BlockConfig};
use devices::virtio::mmio::regs;
use devices::virtio::{status, GuestMemoryMmap, InterruptType, MmioTransport};
use devices::BusDevice;
use vm_memory::{Bytes, GuestAddress};

pub mod blk;
pub mod fs;
pub mod mmio;
pub mod seeds;
pub mod vsock;

/// Every InterruptStatus bit a device may set.
pub const INT_ALL: u32 = InterruptType::UsedBuffer.bit() | InterruptType::ConfigChange.bit();

/// Guest RAM the fuzz input is copied into, starting at guest address 0. libFuzzer inputs are
/// at most 4 KiB by default, so everything interesting sits in the first page or so; the rest
/// gives descriptors room to point at.
pub const RAM_SIZE: u64 = 0x1_0000;
/// A second, small RAM region after a one-page hole, so buffers and rings can straddle a gap
/// or a region boundary, as they can around the MMIO hole of a real guest.
pub const HIGH_RAM: u64 = 0x1_1000;
pub const HIGH_RAM_SIZE: u64 = 0x1000;

/// Disk size used by the block targets: small, so sector numbers from the input hit both the
/// inside and the end of the disk.
pub const DISK_SECTORS: u64 = 16;
pub const DISK_BYTES: usize = (DISK_SECTORS * 512) as usize;

/// Reads little-endian integers off the front of the input; past the end everything is zero,
/// so every input decodes to something.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let b = self.bytes(N);
        out[..b.len()].copy_from_slice(b);
        out
    }

    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(usize::MAX)
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Guest memory with `image` copied to guest address 0 (truncated to [`RAM_SIZE`]).
pub fn guest_memory(image: &[u8]) -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), RAM_SIZE as usize),
        (GuestAddress(HIGH_RAM), HIGH_RAM_SIZE as usize),
    ])
    .expect("guest memory");
    let n = image.len().min(RAM_SIZE as usize);
    mem.write_slice(&image[..n], GuestAddress(0))
        .expect("image fits");
    mem
}

/// What the disk holds before every run: a position-dependent pattern, so reads that return
/// the wrong sector are visible in guest memory.
pub fn disk_pattern() -> Vec<u8> {
    (0..DISK_BYTES).map(|i| (i / 512 + i) as u8).collect()
}

/// A fresh in-memory disk image (memfd) holding [`disk_pattern`]. Each run gets its own, so
/// runs do not influence each other and nothing touches the real filesystem. The block
/// device opens it by path, as it would open an image file.
pub struct MemDisk {
    file: File,
}

impl MemDisk {
    pub fn new() -> Self {
        // SAFETY: the name is a valid NUL-terminated string; flags are plain bits.
        let fd = unsafe { libc::memfd_create(c"capsa-fuzz-disk".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` was just created and is owned by nobody else.
        let mut file = unsafe { File::from_raw_fd(fd) };
        file.write_all(&disk_pattern()).expect("fill disk");
        MemDisk { file }
    }

    /// Path that reopens the same memfd.
    pub fn path(&self) -> String {
        format!("/proc/self/fd/{}", self.file.as_raw_fd())
    }

    pub fn contents(&self) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let len = self.file.metadata().expect("stat disk").len() as usize;
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, 0).expect("read disk");
        buf
    }

    pub fn block(&self, read_only: bool) -> Block {
        Block::new(&BlockConfig {
            path: self.path().into(),
            read_only,
            id: "fuzz-disk".into(),
        })
        .expect("block device on memfd")
    }
}

impl Default for MemDisk {
    fn default() -> Self {
        Self::new()
    }
}

pub fn read_reg(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

pub fn write_reg(t: &mut MmioTransport, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

/// Where a driver put one queue.
#[derive(Clone, Copy, Debug)]
pub struct QueueSetup {
    pub size: u32,
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
}

/// The driver's side of device initialisation (virtio 1.2 §3.1.1) through the registers:
/// negotiate `features` (as far as the device offers them), set up `queues` as queues
/// 0, 1, ... in order, and set DRIVER_OK. Returns the final status register.
pub fn bring_up(t: &mut MmioTransport, features: u64, queues: &[QueueSetup]) -> u32 {
    let indexed: Vec<(u32, QueueSetup)> = (0..).zip(queues.iter().copied()).collect();
    bring_up_indexed(t, features, &indexed)
}

/// [`bring_up`] setting up only the listed (queue index, setup) pairs; other queues stay
/// disabled.
pub fn bring_up_indexed(t: &mut MmioTransport, features: u64, queues: &[(u32, QueueSetup)]) -> u32 {
    write_reg(t, regs::STATUS, 0);
    write_reg(t, regs::STATUS, status::ACKNOWLEDGE);
    write_reg(t, regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    let mut offered = 0u64;
    for sel in 0..2 {
        write_reg(t, regs::DEVICE_FEATURES_SEL, sel);
        offered |= u64::from(read_reg(t, regs::DEVICE_FEATURES)) << (32 * sel);
    }
    let features = features & offered;
    for sel in 0..2 {
        write_reg(t, regs::DRIVER_FEATURES_SEL, sel);
        write_reg(t, regs::DRIVER_FEATURES, (features >> (32 * sel)) as u32);
    }
    let features_ok = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    write_reg(t, regs::STATUS, features_ok);
    for &(i, q) in queues {
        write_reg(t, regs::QUEUE_SEL, i);
        write_reg(t, regs::QUEUE_NUM, q.size);
        write_reg(t, regs::QUEUE_DESC_LOW, q.desc as u32);
        write_reg(t, regs::QUEUE_DESC_HIGH, (q.desc >> 32) as u32);
        write_reg(t, regs::QUEUE_DRIVER_LOW, q.driver as u32);
        write_reg(t, regs::QUEUE_DRIVER_HIGH, (q.driver >> 32) as u32);
        write_reg(t, regs::QUEUE_DEVICE_LOW, q.device as u32);
        write_reg(t, regs::QUEUE_DEVICE_HIGH, (q.device >> 32) as u32);
        write_reg(t, regs::QUEUE_READY, 1);
    }
    write_reg(t, regs::STATUS, features_ok | status::DRIVER_OK);
    read_reg(t, regs::STATUS)
}

/// Wraps `device` in a transport over `mem`; `None` if the transport refuses the device.
pub fn transport<D>(mem: &GuestMemoryMmap, device: D) -> Option<(MmioTransport, Arc<Mutex<D>>)>
where
    D: devices::virtio::VirtioDevice + 'static,
{
    let device = Arc::new(Mutex::new(device));
    let t = MmioTransport::new(mem.clone(), device.clone()).ok()?;
    Some((t, device))
}
