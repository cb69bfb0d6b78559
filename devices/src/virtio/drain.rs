//! Draining a queue's available ring: the loop every device runs on a notification.

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use super::GuestMemoryMmap;

/// What a drain did.
#[derive(Debug, Default)]
pub struct Drained {
    /// At least one chain went back on the used ring.
    pub used_any: bool,
    /// The ring is corrupt; the device must ask for a reset (DEVICE_NEEDS_RESET).
    pub broken: Option<String>,
}

/// Pops every chain the driver made available, hands each to `handle` (which returns how
/// many bytes it wrote into the chain's buffers) and returns it on the used ring with that
/// length. Notifications stay off while draining, so the driver does not kick for every
/// buffer, and are re-enabled at the end; buffers published meanwhile are drained too.
///
/// One pass that pops nothing although the available index says there is more is a normal
/// race: after a notification we had already served, the driver published a new chain
/// between our last pop and the re-enabling. The next pass finds it; only a second empty
/// pass in a row means the ring lies.
pub fn drain_queue(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    device: &str,
    mut handle: impl FnMut(DescriptorChain<&GuestMemoryMmap>) -> u32,
) -> Drained {
    let mut out = Drained::default();
    let mut empty_passes = 0;
    loop {
        if let Err(e) = queue.disable_notification(mem) {
            out.broken = Some(format!("cannot disable notifications: {e}"));
            return out;
        }
        let mut popped = 0usize;
        loop {
            let chain = match queue.iter(mem) {
                Ok(mut iter) => iter.next(),
                Err(e) => {
                    // E.g. the driver moved avail.idx more than a ring's worth ahead.
                    out.broken = Some(format!("available ring is corrupt: {e}"));
                    return out;
                }
            };
            let Some(chain) = chain else { break };
            popped += 1;
            let head = chain.head_index();
            let len = handle(chain);
            if let Err(e) = queue.add_used(mem, head, len) {
                // Only fails for a head index outside the ring, i.e. a bogus chain we
                // cannot return; the driver loses it.
                tracing::warn!("{device}: cannot return descriptor {head}: {e}");
                continue;
            }
            out.used_any = true;
        }
        match queue.enable_notification(mem) {
            Ok(false) => return out,
            Ok(true) if popped == 0 => {
                empty_passes += 1;
                if empty_passes > 1 {
                    out.broken = Some("available index moves but no chain can be read".into());
                    return out;
                }
            }
            Ok(true) => empty_passes = 0,
            Err(e) => {
                out.broken = Some(format!("cannot enable notifications: {e}"));
                return out;
            }
        }
    }
}
