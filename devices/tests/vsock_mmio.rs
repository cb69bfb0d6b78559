//! End-to-end virtio-vsock: a guest driver brings the device up through the virtio-mmio
//! registers, the device runs in an event-manager loop with [`VsockEventHandler`] as the vmm
//! wires it, and host processes (threads here) use the hybrid-vsock Unix sockets.

#[path = "../src/virtio/vsock/test_driver.rs"]
mod test_driver;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use devices::virtio::mmio::{regs, CONFIG_SPACE_OFFSET};
use devices::virtio::vsock::{Vsock, VsockEventHandler, CONN_BUF_SIZE};
use devices::virtio::{features, status, MmioTransport, VirtioDevice};
use devices::BusDevice;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::tempdir::TempDir;

use test_driver::{pattern, Driver, GState, GuestStack, Key, SHUT_SEND};

const CID: u64 = 0x33;
const TIMEOUT: Duration = Duration::from_secs(90);

fn rd(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn wr(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

struct Vm {
    dir: TempDir,
    path: PathBuf,
    dev: Arc<Mutex<Vsock>>,
    t: MmioTransport,
    em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
    g: GuestStack,
}

impl Vm {
    fn new(event_idx: bool) -> Vm {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("vm.vsock");
        let dev = Arc::new(Mutex::new(Vsock::new(CID, path.clone()).unwrap()));
        let mem = test_driver::test_mem();
        // vmm-side wiring: the transport on the bus, the vsock subscriber on the event loop
        // (in place of the transport's generic queue handler).
        let t = MmioTransport::new(mem.clone(), dev.clone()).unwrap();
        let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
            EventManager::new().unwrap();
        em.add_subscriber(Arc::new(Mutex::new(
            VsockEventHandler::for_transport(dev.clone(), &t).unwrap(),
        )));
        let mut vm = Vm {
            dir,
            path,
            dev,
            t,
            em,
            g: GuestStack::new(Driver::new(mem, CID, event_idx)),
        };
        vm.driver_init();
        vm
    }

    /// What a guest driver does at probe time.
    fn driver_init(&mut self) {
        let t = &mut self.t;
        assert_eq!(rd(t, regs::DEVICE_ID), 19);
        wr(t, regs::STATUS, status::ACKNOWLEDGE);
        wr(t, regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        let mut offered = 0u64;
        for sel in 0..2 {
            wr(t, regs::DEVICE_FEATURES_SEL, sel);
            offered |= u64::from(rd(t, regs::DEVICE_FEATURES)) << (32 * sel);
        }
        let mut wanted = 1u64 << features::VERSION_1;
        if self.g.drv.event_idx {
            wanted |= 1 << features::RING_EVENT_IDX;
        }
        assert_eq!(offered & wanted, wanted);
        for sel in 0..2 {
            wr(t, regs::DRIVER_FEATURES_SEL, sel);
            wr(t, regs::DRIVER_FEATURES, (wanted >> (32 * sel)) as u32);
        }
        let feat_ok = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        wr(t, regs::STATUS, feat_ok);
        assert_eq!(rd(t, regs::STATUS), feat_ok);
        let mut cid = [0u8; 8];
        t.read(CONFIG_SPACE_OFFSET, &mut cid);
        assert_eq!(u64::from_le_bytes(cid), CID);
        for q in 0..3 {
            let (size, desc, avail, used) = self.g.drv.layout(q);
            wr(t, regs::QUEUE_SEL, q as u32);
            assert_eq!(rd(t, regs::QUEUE_NUM_MAX), 256);
            wr(t, regs::QUEUE_NUM, u32::from(size));
            wr(t, regs::QUEUE_DESC_LOW, desc as u32);
            wr(t, regs::QUEUE_DESC_HIGH, (desc >> 32) as u32);
            wr(t, regs::QUEUE_DRIVER_LOW, avail as u32);
            wr(t, regs::QUEUE_DRIVER_HIGH, (avail >> 32) as u32);
            wr(t, regs::QUEUE_DEVICE_LOW, used as u32);
            wr(t, regs::QUEUE_DEVICE_HIGH, (used >> 32) as u32);
            wr(t, regs::QUEUE_READY, 1);
        }
        wr(t, regs::STATUS, feat_ok | status::DRIVER_OK);
        assert_eq!(rd(t, regs::STATUS), feat_ok | status::DRIVER_OK);
        assert!(self.dev.lock().unwrap().is_activated());
        self.g.drv.post_event_bufs(4);
    }

    /// Guest stack, its kicks (as QueueNotify writes), one event-loop round.
    fn step(&mut self) {
        self.g.poll();
        for q in 0..3 {
            if self.g.drv.take_kick(q) {
                wr(&mut self.t, regs::QUEUE_NOTIFY, q as u32);
            }
        }
        self.em.run_with_timeout(1).unwrap();
        // The guest's interrupt handler.
        let isr = rd(&mut self.t, regs::INTERRUPT_STATUS);
        if isr != 0 {
            wr(&mut self.t, regs::INTERRUPT_ACK, isr);
        }
    }

    fn run_until(&mut self, what: &str, mut cond: impl FnMut(&mut Self) -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        while !cond(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            self.step();
        }
    }
}

fn host_path(vm: &Vm, port: u32) -> String {
    format!("{}_{port}", vm.path.display())
}

/// A host client through the hybrid handshake; returns the stream and the host port the
/// device reported.
fn hybrid_connect(path: &Path, port: u32) -> (UnixStream, u32) {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    writeln!(s, "CONNECT {port}").unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    let line = String::from_utf8(line).unwrap();
    let host_port = line
        .strip_prefix("OK ")
        .unwrap_or_else(|| panic!("bad reply {line:?}"))
        .parse()
        .unwrap();
    (s, host_port)
}

/// Writes `data` and shuts down the write side while reading everything until EOF.
fn send_and_collect(s: UnixStream, data: Vec<u8>, slow: bool) -> Vec<u8> {
    let mut w = s.try_clone().unwrap();
    let writer = thread::spawn(move || {
        w.write_all(&data).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    let mut r = s;
    let mut b = vec![0u8; 16 * 1024];
    loop {
        let n = r.read(&mut b).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&b[..n]);
        if slow {
            // A reader that lags behind: the device's buffer and credit have to hold.
            thread::sleep(Duration::from_micros(300));
        }
    }
    writer.join().unwrap();
    got
}

/// Guest echo service: sends back whatever host-initiated connections deliver and closes
/// its sending side once the host has closed its own.
#[derive(Default)]
struct GuestEcho {
    echoed: BTreeMap<Key, usize>,
    closed: BTreeMap<Key, bool>,
}

impl GuestEcho {
    fn run(&mut self, g: &mut GuestStack) {
        for key in g.accepted.clone() {
            let c = g.conn(key);
            if c.state != GState::Established {
                continue;
            }
            let done = self.echoed.entry(key).or_default();
            let new = c.rx[*done..].to_vec();
            let peer_done = c.peer_shutdown & SHUT_SEND != 0;
            *done += new.len();
            g.write(key, &new);
            let closed = self.closed.entry(key).or_default();
            if peer_done && !*closed {
                *closed = true;
                g.shutdown(key, SHUT_SEND);
            }
        }
    }
}

/// Host echo service on `<uds>_port`: echoes each accepted connection until EOF.
fn host_echo_server(path: String, conns: usize) -> JoinHandle<()> {
    let l = UnixListener::bind(path).unwrap();
    thread::spawn(move || {
        let mut workers = Vec::new();
        for _ in 0..conns {
            let (mut s, _) = l.accept().unwrap();
            workers.push(thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut b = vec![0u8; 32 * 1024];
                loop {
                    let n = s.read(&mut b).unwrap();
                    if n == 0 {
                        break;
                    }
                    w.write_all(&b[..n]).unwrap();
                }
                w.shutdown(Shutdown::Write).unwrap();
            }));
        }
        for w in workers {
            w.join().unwrap();
        }
    })
}

/// (host port the device reported, bytes sent, bytes echoed back).
type HostResult = (u32, Vec<u8>, Vec<u8>);

#[test]
fn vsock_concurrent_megabyte_echoes_both_directions() {
    for event_idx in [false, true] {
        let mut vm = Vm::new(event_idx);
        const SIZE: usize = 1536 * 1024;
        const EACH: usize = 3;

        // Host -> guest: three host clients talk to a guest echo service on port 1000.
        vm.g.listening.insert(1000, CONN_BUF_SIZE);
        let hosts: Vec<JoinHandle<HostResult>> = (0..EACH)
            .map(|i| {
                let path = vm.path.clone();
                thread::spawn(move || {
                    let (s, host_port) = hybrid_connect(&path, 1000);
                    let data = pattern(SIZE, i as u32);
                    let got = send_and_collect(s, data.clone(), i == 0);
                    (host_port, data, got)
                })
            })
            .collect();

        // Guest -> host: three guest connections to a host echo service on port 2000.
        let server = host_echo_server(host_path(&vm, 2000), EACH);
        let guest: Vec<(Key, Vec<u8>)> = (0..EACH)
            .map(|i| {
                let key = vm.g.connect(2000, CONN_BUF_SIZE);
                let data = pattern(SIZE, 100 + i as u32);
                vm.g.write(key, &data);
                vm.g.shutdown(key, SHUT_SEND);
                (key, data)
            })
            .collect();

        let mut echo = GuestEcho::default();
        vm.run_until("all transfers", |vm| {
            echo.run(&mut vm.g);
            hosts.iter().all(|h| h.is_finished())
                && guest.iter().all(|(k, d)| {
                    vm.g.conn(*k).rx.len() == d.len() && vm.g.conn(*k).peer_shutdown != 0
                })
        });

        let mut ports = Vec::new();
        for h in hosts {
            let (port, sent, got) = h.join().unwrap();
            assert_eq!(got.len(), sent.len());
            assert!(
                got == sent,
                "host-initiated echo intact (event_idx={event_idx})"
            );
            ports.push(port);
        }
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), EACH, "distinct host ports");
        for (key, sent) in &guest {
            assert!(
                vm.g.conn(*key).rx == *sent,
                "guest-initiated echo intact (event_idx={event_idx})"
            );
        }
        server.join().unwrap();
        // Both sides closed everything: the device tears the connections down.
        vm.run_until("connections closed", |vm| {
            vm.dev.lock().unwrap().connection_count() == 0
                && vm.g.conns.values().all(|c| c.state == GState::Reset)
        });
        assert!(vm.g.stray.is_empty(), "{:?}", vm.g.stray);
    }
}

#[test]
fn vsock_starved_guest_and_slow_host_lose_nothing() {
    let mut vm = Vm::new(true);
    const SIZE: usize = 2 << 20;

    // Host -> guest while the guest has no rx buffers for long stretches.
    vm.g.listening.insert(7, CONN_BUF_SIZE);
    let path = vm.path.clone();
    let host = thread::spawn(move || {
        let (mut s, _) = hybrid_connect(&path, 7);
        s.write_all(&pattern(SIZE, 7)).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        // Keep the socket until the guest confirms.
        let mut b = [0u8; 1];
        let _ = s.read(&mut b);
    });
    vm.run_until("accept", |vm| !vm.g.accepted.is_empty());
    let hkey = vm.g.accepted[0];

    // Guest -> host to a reader that does not read at first.
    let l = UnixListener::bind(host_path(&vm, 9)).unwrap();
    let gkey = vm.g.connect(9, CONN_BUF_SIZE);
    let gdata = pattern(SIZE, 9);
    vm.g.write(gkey, &gdata);
    vm.g.shutdown(gkey, SHUT_SEND);
    vm.run_until("connected", |vm| {
        vm.g.conn(gkey).state == GState::Established
    });
    let (hs, _) = l.accept().unwrap();

    let mut starved_rounds = 0;
    let mut reader = None;
    vm.run_until("all data", |vm| {
        // Every other 50 ms the guest stops refilling its rx ring.
        let starve = (starved_rounds / 50) % 2 == 0;
        vm.g.rx_target = if starve { 0 } else { 32 };
        starved_rounds += 1;
        if starved_rounds == 200 {
            // Let the host start reading, slowly.
            let hs = hs.try_clone().unwrap();
            reader = Some(thread::spawn(move || {
                send_and_collect(hs, Vec::new(), true)
            }));
        }
        if starved_rounds > 200 {
            vm.g.rx_target = 32;
        }
        let c = vm.g.conn(hkey);
        c.rx.len() == SIZE && c.peer_shutdown & SHUT_SEND != 0 && vm.g.conn(gkey).tx_pending() == 0
    });
    assert!(
        vm.g.conn(hkey).rx == pattern(SIZE, 7),
        "host -> guest intact"
    );
    // The device still holds the tail of the guest's data for the slow reader.
    let reader = reader.unwrap();
    vm.run_until("host reader done", |_| reader.is_finished());
    let got = reader.join().unwrap();
    assert!(got == gdata, "guest -> host intact");
    vm.g.rst(hkey);
    vm.step();
    host.join().unwrap();
}

#[test]
fn vsock_reset_through_status_register_and_restart() {
    let mut vm = Vm::new(false);
    vm.g.listening.insert(5, CONN_BUF_SIZE);
    let path = vm.path.clone();
    let client = thread::spawn(move || hybrid_connect(&path, 5));
    vm.run_until("accept", |vm| !vm.g.accepted.is_empty());
    let (mut s, _) = client.join().unwrap();
    assert_eq!(vm.dev.lock().unwrap().connection_count(), 1);

    // The guest reboots: driver writes 0 to Status.
    wr(&mut vm.t, regs::STATUS, 0);
    assert!(!vm.dev.lock().unwrap().is_activated());
    assert_eq!(vm.dev.lock().unwrap().connection_count(), 0);
    let mut b = [0u8; 1];
    assert!(
        matches!(s.read(&mut b), Ok(0) | Err(_)),
        "host client closed"
    );
    assert!(vm.path.exists());

    // A fresh driver instance; the same socket path keeps working.
    let mem = vm.g.drv.mem.clone();
    vm.g = GuestStack::new(Driver::new(mem, CID, false));
    vm.driver_init();
    vm.g.listening.insert(5, CONN_BUF_SIZE);
    let path = vm.path.clone();
    let client = thread::spawn(move || {
        let (s, _) = hybrid_connect(&path, 5);
        send_and_collect(s, b"after reboot".to_vec(), false)
    });
    let mut echo = GuestEcho::default();
    vm.run_until("echo", |vm| {
        echo.run(&mut vm.g);
        client.is_finished()
    });
    assert_eq!(client.join().unwrap(), b"after reboot");

    // Tearing the VM down removes the socket file.
    let path = vm.path.clone();
    let dir = vm.dir;
    drop((vm.em, vm.t, vm.dev));
    assert!(!path.exists());
    drop(dir);
}
