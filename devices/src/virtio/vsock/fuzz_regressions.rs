//! Regression tests for bugs the fuzz targets in `devices/fuzz` found.

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::tempdir::TempDir;

use super::test_driver::{self as td, Driver};
use super::*;

const CID: u64 = 42;

/// A device waiting for a reset (corrupt rx ring) still handles host socket events; it must
/// take a readable socket out of its epoll interest as usual, or the vmm's event loop spins
/// on the host-events fd until the guest resets the device.
#[test]
fn broken_device_does_not_keep_host_events_pending() {
    let dir = TempDir::new().unwrap();
    let path = dir.as_path().join("v.sock");
    let peer = UnixListener::bind(format!("{}_5000", path.display())).unwrap();
    let mut dev = Vsock::new(CID, path).unwrap();
    let mut drv = Driver::new(td::test_mem(), CID, false);
    let irq = Arc::new(Interrupt::new().unwrap());
    dev.activate(drv.mem.clone(), drv.queues(), irq, 1 << features::VERSION_1)
        .unwrap();

    // The guest connects to host port 5000.
    let request = td::Hdr {
        src_cid: CID,
        dst_cid: td::HOST_CID,
        src_port: 1234,
        dst_port: 5000,
        type_: td::TYPE_STREAM,
        op: td::OP_REQUEST,
        buf_alloc: 1 << 16,
        ..td::Hdr::default()
    };
    assert!(drv.send(&request, &[]));
    dev.process_queue(TX_QUEUE);
    let (mut host, _) = peer.accept().unwrap();
    assert_eq!(dev.connection_count(), 1);

    // The driver corrupts its rx ring: the device waits for a reset.
    let (_, _, avail, _) = drv.layout(td::RX);
    drv.mem.write_obj(1000u16, GuestAddress(avail + 2)).unwrap();
    dev.process_queue(RX_QUEUE);
    assert!(dev.needs_reset());

    // The host side sends data; the event loop wakes up for it.
    host.write_all(b"data").unwrap();
    let watch = Epoll::new().unwrap();
    watch
        .ctl(
            ControlOperation::Add,
            dev.host_events_fd(),
            EpollEvent::new(EventSet::IN, 0),
        )
        .unwrap();
    let mut ev = [EpollEvent::default(); 1];
    assert_eq!(watch.wait(0, &mut ev).unwrap(), 1);
    dev.process_host_events();
    // Handled once, the event must not fire again.
    assert_eq!(
        watch.wait(0, &mut ev).unwrap(),
        0,
        "host events fd still ready"
    );
}
