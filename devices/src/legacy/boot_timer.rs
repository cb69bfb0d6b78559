//! Boot timer: the guest writes a magic byte to a port once it is up, and the VMM records
//! and logs the time elapsed since its own process started (cf. Firecracker's boot timer).
//! An earlier byte, [`BOOT_TIMER_ENTRY`], marks the guest's first instructions; it is only
//! logged.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::abi::{BOOT_TIMER_ENTRY, BOOT_TIMER_MAGIC};
use crate::BusDevice;

/// The boot-timer port device.
pub struct BootTimer {
    start: Instant,
    fired: Arc<Mutex<Option<Duration>>>,
}

impl BootTimer {
    /// A timer measuring from `start` (taken as early as possible in the VMM process).
    pub fn new(start: Instant) -> Self {
        BootTimer {
            start,
            fired: Arc::new(Mutex::new(None)),
        }
    }

    /// Shared view of the first boot-timer hit, for the VMM's report.
    pub fn reading(&self) -> Arc<Mutex<Option<Duration>>> {
        self.fired.clone()
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 {
            return;
        }
        if data.first() == Some(&BOOT_TIMER_ENTRY) {
            tracing::info!(
                target: "boot_timer",
                "guest entry: {} us since VMM start",
                self.start.elapsed().as_micros()
            );
            return;
        }
        if data.first() != Some(&BOOT_TIMER_MAGIC) {
            return;
        }
        let elapsed = self.start.elapsed();
        let mut fired = self.fired.lock().unwrap_or_else(|e| e.into_inner());
        // Only the first hit is the boot time; later ones (e.g. a second agent) are logged.
        if fired.is_none() {
            *fired = Some(elapsed);
        }
        tracing::info!(
            target: "boot_timer",
            "guest boot timer: {} us since VMM start",
            elapsed.as_micros()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_first_magic_write_only() {
        let start = Instant::now() - Duration::from_millis(5);
        let mut t = BootTimer::new(start);
        let r = t.reading();
        t.write(0, &[BOOT_TIMER_MAGIC - 1]);
        t.write(0, &[BOOT_TIMER_ENTRY]);
        assert!(r.lock().unwrap().is_none());
        t.write(0, &[BOOT_TIMER_MAGIC]);
        let first = r.lock().unwrap().unwrap();
        assert!(first >= Duration::from_millis(5));
        std::thread::sleep(Duration::from_millis(2));
        t.write(0, &[BOOT_TIMER_MAGIC]);
        assert_eq!(r.lock().unwrap().unwrap(), first);
    }
}
