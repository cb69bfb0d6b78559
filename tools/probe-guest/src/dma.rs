//! Memory shared with virtio devices (rings, request headers, data buffers): a bump
//! allocator over the usable RAM right after the image, inside the E820 RAM entry that
//! holds the image's end, below the MMIO gap and below an initrd. Nothing is ever freed:
//! a boot runs one scenario. Keeping this out of the image keeps the ELF small and lets
//! small VMs boot.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::boot;
use crate::bootparams::{BootParams, E820_RAM};

/// Start of the MMIO gap; RAM for devices must stay below it (and in the identity map).
const MMIO_GAP: u64 = 0xd000_0000;
const PAGE: u64 = 4096;

static NEXT: AtomicU64 = AtomicU64::new(0);
static END: AtomicU64 = AtomicU64::new(0);

/// Finds the free RAM after the image. Without a matching E820 entry nothing can be
/// allocated (every `alloc` fails).
pub fn init(boot: &BootParams) {
    let start = boot::image_end().next_multiple_of(PAGE);
    let end = boot
        .e820()
        .filter(|e| e.kind == E820_RAM && e.addr <= start)
        .map(|e| e.addr.saturating_add(e.size))
        .find(|&end| end > start)
        .map_or(start, |end| end.min(MMIO_GAP));
    // Stop before an initrd loaded above the image.
    let end = match boot.initrd_addr() {
        i if i >= start => end.min(i),
        _ => end,
    };
    NEXT.store(start, Ordering::Relaxed);
    END.store(end, Ordering::Relaxed);
}

/// `size` zeroed bytes aligned to `align` (a power of two), as a guest-physical address
/// (identical to the virtual one). Single-threaded use only.
pub fn alloc(size: u64, align: u64) -> Result<u64, &'static str> {
    let addr = NEXT.load(Ordering::Relaxed).next_multiple_of(align);
    let end = addr.checked_add(size).ok_or("dma: size overflow")?;
    if end > END.load(Ordering::Relaxed) {
        return Err("dma: out of guest RAM for device buffers");
    }
    NEXT.store(end, Ordering::Relaxed);
    // SAFETY: [addr, end) is usable RAM after the image (E820), identity-mapped and
    // writable at ring 3 (below 4 GiB), handed out only once.
    unsafe { core::ptr::write_bytes(addr as *mut u8, 0, size as usize) };
    Ok(addr)
}

/// A mutable view of a DMA buffer.
///
/// # Safety
/// `[addr, addr + len)` must come from [`alloc`], and no device may access it while the
/// slice lives (the buffer is not on a ring, or the device has returned it).
pub unsafe fn slice_mut<'a>(addr: u64, len: usize) -> &'a mut [u8] {
    // SAFETY: the caller's contract; the range is mapped RAM owned by this guest.
    unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, len) }
}
