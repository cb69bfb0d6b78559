//! A small polled virtio-mmio (version 2, "modern") driver: device discovery from the
//! `virtio_mmio.device=` command-line entries, the status/feature handshake, queue setup
//! and config-space access. Interrupts are never enabled (the guest runs with IF=0), so
//! completions are found by polling the used rings; every wait is bounded by the TSC.
//!
//! Register accesses are MMIO exits (~20 us each from ring 3 on PVM), so the hot path
//! (adding buffers, polling) touches only RAM except for one QueueNotify per batch.

pub mod queue;

use core::sync::atomic::{AtomicU64, Ordering};

use crate::cmdline::{parse_u64, Cmdline};
use crate::io::{rdtsc, tsc_hz, Mmio};
pub use queue::{Buf, Virtqueue};

/// "virt" in little endian.
const MAGIC: u32 = 0x7472_6976;

/// Register offsets (virtio 1.2 §4.2.2).
mod regs {
    pub const MAGIC_VALUE: usize = 0x000;
    pub const VERSION: usize = 0x004;
    pub const DEVICE_ID: usize = 0x008;
    pub const DEVICE_FEATURES: usize = 0x010;
    pub const DEVICE_FEATURES_SEL: usize = 0x014;
    pub const DRIVER_FEATURES: usize = 0x020;
    pub const DRIVER_FEATURES_SEL: usize = 0x024;
    pub const QUEUE_SEL: usize = 0x030;
    pub const QUEUE_NUM_MAX: usize = 0x034;
    pub const QUEUE_NUM: usize = 0x038;
    pub const QUEUE_READY: usize = 0x044;
    pub const QUEUE_NOTIFY: usize = 0x050;
    pub const STATUS: usize = 0x070;
    pub const QUEUE_DESC_LOW: usize = 0x080;
    pub const QUEUE_DESC_HIGH: usize = 0x084;
    pub const QUEUE_DRIVER_LOW: usize = 0x090;
    pub const QUEUE_DRIVER_HIGH: usize = 0x094;
    pub const QUEUE_DEVICE_LOW: usize = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: usize = 0x0a4;
    pub const CONFIG_GENERATION: usize = 0x0fc;
    pub const CONFIG: usize = 0x100;
}

/// Device status bits (virtio 1.2 §2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// Transport feature bits.
pub const F_INDIRECT_DESC: u64 = 1 << 28;
pub const F_VERSION_1: u64 = 1 << 32;

/// Device IDs (virtio 1.2 §5).
pub const ID_BLOCK: u32 = 2;
pub const ID_VSOCK: u32 = 19;
pub const ID_FS: u32 = 26;

/// The MMIO gap the guest maps uncached and user-accessible (boot.S).
const MMIO_START: u64 = 0xd000_0000;
const MMIO_END: u64 = 1 << 32;

/// One `virtio_mmio.device=<size>@<base>:<irq>` command-line entry.
#[derive(Clone, Copy)]
pub struct Slot {
    pub base: u64,
    pub size: u64,
    pub irq: u64,
}

/// Every virtio-mmio device announced on the command line, in order.
pub fn slots<'a>(cmdline: &Cmdline<'a>) -> impl Iterator<Item = Slot> + 'a {
    cmdline.values("virtio_mmio.device").filter_map(parse_slot)
}

/// Parses Linux's `<size>[KMG]@<base>:<irq>[:<id>]`.
fn parse_slot(s: &[u8]) -> Option<Slot> {
    let at = s.iter().position(|&c| c == b'@')?;
    let (size, rest) = (&s[..at], &s[at + 1..]);
    let (size, shift) = match size.split_last()? {
        (b'K' | b'k', n) => (n, 10),
        (b'M' | b'm', n) => (n, 20),
        (b'G' | b'g', n) => (n, 30),
        _ => (size, 0),
    };
    let size = parse_u64(size)?.checked_shl(shift)?;
    let mut parts = rest.split(|&c| c == b':');
    let base = parse_u64(parts.next()?)?;
    let irq = parse_u64(parts.next()?)?;
    Some(Slot { base, size, irq })
}

/// TSC ticks per millisecond, measured once.
fn ticks_per_ms() -> u64 {
    static CACHE: AtomicU64 = AtomicU64::new(0);
    let mut v = CACHE.load(Ordering::Relaxed);
    if v == 0 {
        v = (tsc_hz() / 1000).max(1);
        CACHE.store(v, Ordering::Relaxed);
    }
    v
}

/// A point in time (TSC) after which a wait gives up.
#[derive(Clone, Copy)]
pub struct Deadline(u64);

impl Deadline {
    /// `ms` milliseconds from now.
    pub fn after_ms(ms: u64) -> Self {
        Self(rdtsc().saturating_add(ms.saturating_mul(ticks_per_ms())))
    }

    pub fn passed(&self) -> bool {
        rdtsc() > self.0
    }
}

/// Default bound of every wait for the device, overridable with `virtio.timeout_ms=`.
/// Generous: the device runs on a host thread that may be descheduled on busy CI hosts.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// A virtio-mmio device found at a slot.
pub struct Transport {
    mmio: Mmio,
    pub slot: Slot,
    pub device_id: u32,
}

impl Transport {
    /// Checks the register window at `slot` and reads its device ID (0: no device).
    pub fn probe(slot: Slot) -> Result<Self, &'static str> {
        let end = slot.base.checked_add(0x200).ok_or("virtio: bad slot")?;
        if slot.base < MMIO_START || end > MMIO_END || slot.size < 0x200 {
            return Err("virtio: slot outside the MMIO gap or too small");
        }
        // SAFETY: the window lies in the MMIO gap, which boot.S identity-maps uncached and
        // user-accessible; nothing else in the guest uses it.
        let mmio = unsafe { Mmio::new(slot.base as usize) };
        if mmio.read32(regs::MAGIC_VALUE) != MAGIC {
            return Err("virtio: bad magic value");
        }
        if mmio.read32(regs::VERSION) != 2 {
            return Err("virtio: not a version 2 (modern) virtio-mmio device");
        }
        let device_id = mmio.read32(regs::DEVICE_ID);
        Ok(Self {
            mmio,
            slot,
            device_id,
        })
    }

    pub fn status(&self) -> u32 {
        self.mmio.read32(regs::STATUS)
    }

    fn set_status(&self, s: u32) {
        self.mmio.write32(regs::STATUS, s);
    }

    /// Resets the device; the device must read back status 0.
    pub fn reset(&self) -> Result<(), &'static str> {
        self.set_status(0);
        // Spec §4.2.2.1: the driver waits for Status to read 0 after writing 0.
        let deadline = Deadline::after_ms(DEFAULT_TIMEOUT_MS);
        while self.status() != 0 {
            if deadline.passed() {
                return Err("virtio: device did not reset");
            }
        }
        Ok(())
    }

    /// Reset, ACKNOWLEDGE, DRIVER, feature negotiation and FEATURES_OK. Accepts
    /// VERSION_1 plus the offered bits of `wanted`; returns the negotiated features.
    pub fn init(&self, wanted: u64) -> Result<u64, &'static str> {
        self.reset()?;
        self.set_status(status::ACKNOWLEDGE);
        self.set_status(status::ACKNOWLEDGE | status::DRIVER);
        let offered = self.device_features();
        if offered & F_VERSION_1 == 0 {
            self.fail();
            return Err("virtio: device does not offer VERSION_1");
        }
        let features = offered & (wanted | F_VERSION_1);
        self.mmio.write32(regs::DRIVER_FEATURES_SEL, 0);
        self.mmio.write32(regs::DRIVER_FEATURES, features as u32);
        self.mmio.write32(regs::DRIVER_FEATURES_SEL, 1);
        self.mmio
            .write32(regs::DRIVER_FEATURES, (features >> 32) as u32);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.set_status(s);
        // The device may refuse the subset; it then leaves FEATURES_OK clear.
        if self.status() & status::FEATURES_OK == 0 {
            self.fail();
            return Err("virtio: device refused FEATURES_OK");
        }
        Ok(features)
    }

    /// The 64 feature bits the device offers.
    pub fn device_features(&self) -> u64 {
        self.mmio.write32(regs::DEVICE_FEATURES_SEL, 0);
        let lo = self.mmio.read32(regs::DEVICE_FEATURES);
        self.mmio.write32(regs::DEVICE_FEATURES_SEL, 1);
        let hi = self.mmio.read32(regs::DEVICE_FEATURES);
        u64::from(lo) | (u64::from(hi) << 32)
    }

    /// Sets up queue `index` with at most `want` entries (rounded down to a power of two,
    /// capped by QueueNumMax and [`queue::MAX_SIZE`]) and marks it ready.
    pub fn setup_queue(&self, index: u16, want: u16) -> Result<Virtqueue, &'static str> {
        self.mmio.write32(regs::QUEUE_SEL, u32::from(index));
        if self.mmio.read32(regs::QUEUE_READY) != 0 {
            return Err("virtio: queue already ready before setup");
        }
        let max = self.mmio.read32(regs::QUEUE_NUM_MAX);
        if max == 0 {
            return Err("virtio: queue not available");
        }
        let cap = max.min(u32::from(want)).min(u32::from(queue::MAX_SIZE));
        if cap == 0 {
            return Err("virtio: queue size 0 requested");
        }
        // Largest power of two <= cap (split rings need a power of two).
        let size = 1u16 << (31 - cap.leading_zeros());
        // SAFETY: QueueNotify of this device's window (checked in `probe`).
        let notify = unsafe { Mmio::new(self.slot.base as usize + regs::QUEUE_NOTIFY) };
        let q = Virtqueue::new(index, size, notify)?;
        let (desc, driver, device) = q.addresses();
        self.mmio.write32(regs::QUEUE_NUM, u32::from(size));
        self.write64(regs::QUEUE_DESC_LOW, regs::QUEUE_DESC_HIGH, desc);
        self.write64(regs::QUEUE_DRIVER_LOW, regs::QUEUE_DRIVER_HIGH, driver);
        self.write64(regs::QUEUE_DEVICE_LOW, regs::QUEUE_DEVICE_HIGH, device);
        self.mmio.write32(regs::QUEUE_READY, 1);
        if self.mmio.read32(regs::QUEUE_READY) != 1 {
            return Err("virtio: QueueReady did not stick");
        }
        Ok(q)
    }

    fn write64(&self, lo: usize, hi: usize, v: u64) {
        self.mmio.write32(lo, v as u32);
        self.mmio.write32(hi, (v >> 32) as u32);
    }

    /// Sets DRIVER_OK and checks that the device accepted the queues.
    pub fn driver_ok(&self) -> Result<(), &'static str> {
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.set_status(s | status::DRIVER_OK);
        let got = self.status();
        if got & status::NEEDS_RESET != 0 {
            return Err("virtio: device needs reset after DRIVER_OK (queue setup refused)");
        }
        if got & status::DRIVER_OK == 0 {
            return Err("virtio: DRIVER_OK did not stick");
        }
        Ok(())
    }

    /// Whether the device asks for a reset (it found something it cannot handle).
    pub fn needs_reset(&self) -> bool {
        self.status() & status::NEEDS_RESET != 0
    }

    /// Tells the device the driver gave up.
    pub fn fail(&self) {
        let s = self.status();
        self.set_status(s | status::FAILED);
    }

    /// Reads the config space through `f` until ConfigGeneration is stable (needed for
    /// fields wider than 32 bits, spec §4.2.2.2).
    fn config_stable<T>(&self, f: impl Fn(&Mmio) -> T) -> T {
        loop {
            let before = self.mmio.read32(regs::CONFIG_GENERATION);
            let v = f(&self.mmio);
            if self.mmio.read32(regs::CONFIG_GENERATION) == before {
                return v;
            }
        }
    }

    pub fn config8(&self, off: usize) -> u8 {
        self.mmio.read8(regs::CONFIG + off)
    }

    pub fn config32(&self, off: usize) -> u32 {
        self.mmio.read32(regs::CONFIG + off)
    }

    /// A 64-bit config field, read as two 32-bit halves.
    pub fn config64(&self, off: usize) -> u64 {
        self.config_stable(|m| {
            let lo = m.read32(regs::CONFIG + off);
            let hi = m.read32(regs::CONFIG + off + 4);
            u64::from(lo) | (u64::from(hi) << 32)
        })
    }
}

/// The `n`-th (from 0) device with ID `device_id` on the command line.
pub fn find(cmdline: &Cmdline, device_id: u32, n: usize) -> Option<Transport> {
    slots(cmdline)
        .filter_map(|s| Transport::probe(s).ok())
        .filter(|t| t.device_id == device_id)
        .nth(n)
}

/// The wait bound from `virtio.timeout_ms=`.
pub fn timeout_ms(cmdline: &Cmdline) -> u64 {
    cmdline
        .number("virtio.timeout_ms")
        .unwrap_or(DEFAULT_TIMEOUT_MS)
}
