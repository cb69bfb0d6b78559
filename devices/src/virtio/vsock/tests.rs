//! Unit tests: the device driven directly (process_queue / process_host_events) by the test
//! guest driver, with real Unix sockets on the host side.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::tempdir::TempDir;

use super::test_driver::{self as td, Driver, GState, GuestStack, Key, RxLayout};
use super::*;
use crate::virtio::interrupt::INT_CONFIG_CHANGE;

const CID: u64 = 42;
const TIMEOUT: Duration = Duration::from_secs(30);

struct Env {
    _dir: TempDir,
    path: PathBuf,
    dev: Vsock,
    irq: Arc<Interrupt>,
    g: GuestStack,
    /// Stands in for the vmm's event loop: watches the device's host-events fd, so the
    /// device only hears about host sockets when they are actually ready.
    host_watch: Epoll,
}

fn env() -> Env {
    env_with(false)
}

fn env_with(event_idx: bool) -> Env {
    let dir = TempDir::new().unwrap();
    let path = dir.as_path().join("v.sock");
    let dev = Vsock::new(CID, path.clone()).unwrap();
    let drv = Driver::new(td::test_mem(), CID, event_idx);
    let host_watch = Epoll::new().unwrap();
    host_watch
        .ctl(
            ControlOperation::Add,
            dev.host_events_fd(),
            EpollEvent::new(EventSet::IN, 0),
        )
        .unwrap();
    let mut e = Env {
        _dir: dir,
        path,
        dev,
        irq: Arc::new(Interrupt::new().unwrap()),
        g: GuestStack::new(drv),
        host_watch,
    };
    e.activate();
    e
}

impl Env {
    fn activate(&mut self) {
        let mut acked = 1u64 << features::VERSION_1;
        if self.g.drv.event_idx {
            acked |= 1 << features::RING_EVENT_IDX;
        }
        self.dev
            .activate(
                self.g.drv.mem.clone(),
                self.g.drv.queues(),
                self.irq.clone(),
                acked,
            )
            .unwrap();
    }

    /// One round: guest stack, the kicks it owes, host socket events.
    fn step(&mut self) -> bool {
        let mut progress = self.g.poll();
        for q in [td::RX, td::TX] {
            if self.g.drv.take_kick(q) {
                self.dev.process_queue(q);
                progress = true;
            }
        }
        let mut ev = [EpollEvent::default(); 1];
        if self.host_watch.wait(0, &mut ev).unwrap() > 0 {
            self.dev.process_host_events();
            progress = true;
        }
        progress
    }

    fn run_until(&mut self, what: &str, mut cond: impl FnMut(&mut Self) -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        while !cond(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            if !self.step() {
                thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Steps for a while without expecting anything in particular.
    fn settle(&mut self, ms: u64) {
        let end = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < end {
            if !self.step() {
                thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Kicks a queue regardless of what the driver's suppression logic says.
    fn kick(&mut self, q: usize) {
        self.dev.process_queue(q);
    }

    /// A host client through the hybrid handshake to guest port `port`, which the guest
    /// stack accepts. Returns the stream and the guest-side key.
    fn host_connect(&mut self, port: u32) -> (UnixStream, Key) {
        self.g.listening.insert(port, CONN_BUF_SIZE);
        let mut s = UnixStream::connect(&self.path).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        writeln!(s, "CONNECT {port}").unwrap();
        let before = self.g.accepted.len();
        self.run_until("guest accepts", |e| e.g.accepted.len() > before);
        let key = self.g.accepted[before];
        let line = read_line(&mut s);
        assert_eq!(line, format!("OK {}", key.1));
        (s, key)
    }

    /// A guest connection to host port `port`, accepted by a listener at `<path>_port`.
    fn guest_connect(&mut self, port: u32) -> (UnixStream, Key) {
        let l = UnixListener::bind(format!("{}_{port}", self.path.display())).unwrap();
        let key = self.g.connect(port, CONN_BUF_SIZE);
        self.run_until("RESPONSE", |e| e.g.conn(key).state != GState::Connecting);
        assert_eq!(self.g.conn(key).state, GState::Established);
        let (s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        (s, key)
    }
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b).unwrap() {
            0 => break,
            _ if b[0] == b'\n' => break,
            _ => line.push(b[0]),
        }
    }
    String::from_utf8(line).unwrap()
}

fn read_exactly(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).unwrap();
    v
}

/// Reads until EOF (or error), with the stream's timeout.
fn read_to_end(s: &mut UnixStream) -> Vec<u8> {
    let mut v = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) | Err(_) => return v,
            Ok(n) => v.extend_from_slice(&b[..n]),
        }
    }
}

/// Whether the peer closed: after draining what is left, a read returns EOF or a reset
/// instead of timing out.
fn is_closed(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut b = [0u8; 4096];
    let closed = loop {
        match s.read(&mut b) {
            Ok(0) => break true,
            Ok(_) => {}
            Err(e) => {
                break !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            }
        }
    };
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    closed
}

fn raw(op: u16, src_port: u32, dst_port: u32) -> td::Hdr {
    td::Hdr {
        src_cid: CID,
        dst_cid: td::HOST_CID,
        src_port,
        dst_port,
        type_: td::TYPE_STREAM,
        op,
        buf_alloc: 65536,
        ..td::Hdr::default()
    }
}

#[test]
fn features_config_and_queues() {
    let dir = TempDir::new().unwrap();
    let mut v = Vsock::new(0x1_2345, dir.as_path().join("s")).unwrap();
    assert_eq!(v.device_type(), 19);
    assert_eq!(v.queue_max_sizes(), &[QUEUE_SIZE; 3]);
    let f = v.device_features();
    assert_ne!(f & (1 << features::VERSION_1), 0);
    assert_ne!(f & (1 << features::RING_EVENT_IDX), 0);
    let rd = |v: &Vsock, off: u64, len: usize| {
        let mut b = vec![0xaa; len];
        v.read_config(off, &mut b);
        b
    };
    assert_eq!(rd(&v, 0, 8), 0x1_2345u64.to_le_bytes());
    assert_eq!(rd(&v, 0, 4), [0x45, 0x23, 1, 0]);
    assert_eq!(rd(&v, 1, 2), [0x23, 1]);
    assert_eq!(rd(&v, 6, 4), [0, 0, 0, 0], "crossing the end: zero-filled");
    assert_eq!(rd(&v, 8, 4), [0; 4]);
    assert_eq!(rd(&v, u64::MAX, 8), [0; 8]);
    v.write_config(0, &[0xff; 8]);
    assert_eq!(rd(&v, 0, 8), 0x1_2345u64.to_le_bytes());
    assert_eq!(v.guest_cid(), 0x1_2345);
    assert!(!v.is_activated());
}

#[test]
fn new_validates_cid_and_path() {
    let dir = TempDir::new().unwrap();
    let p = dir.as_path().join("s");
    for cid in [0, 1, 2, u64::from(u32::MAX), 1 << 40] {
        assert!(
            matches!(Vsock::new(cid, p.clone()), Err(VsockError::InvalidCid(c)) if c == cid),
            "cid {cid}"
        );
    }
    assert!(!p.exists(), "no socket left behind by a refused CID");
    let v = Vsock::new(3, p.clone()).unwrap();
    // The path is taken.
    assert!(matches!(
        Vsock::new(4, p.clone()),
        Err(VsockError::Bind { .. })
    ));
    drop(v);
    assert!(
        Vsock::new(3, dir.as_path().join("no/such/dir")).is_err(),
        "missing directory"
    );
}

#[test]
fn drop_removes_only_its_own_socket_file() {
    let dir = TempDir::new().unwrap();
    let p = dir.as_path().join("s");
    let v = Vsock::new(3, p.clone()).unwrap();
    assert!(p.exists());
    drop(v);
    assert!(!p.exists());

    // Someone replaced the file: leave theirs alone.
    let v = Vsock::new(3, p.clone()).unwrap();
    std::fs::remove_file(&p).unwrap();
    std::fs::write(&p, b"not ours").unwrap();
    drop(v);
    assert_eq!(std::fs::read(&p).unwrap(), b"not ours");
}

#[test]
fn activate_checks_queues() {
    let dir = TempDir::new().unwrap();
    let mut v = Vsock::new(CID, dir.as_path().join("s")).unwrap();
    let drv = Driver::new(td::test_mem(), CID, false);
    let irq = Arc::new(Interrupt::new().unwrap());
    let mut qs = drv.queues();
    qs.pop();
    assert!(matches!(
        v.activate(drv.mem.clone(), qs, irq.clone(), 0),
        Err(ActivateError::QueueCount {
            expected: 3,
            got: 2
        })
    ));
    let mut qs = drv.queues();
    qs[TX_QUEUE].set_ready(false);
    assert!(matches!(
        v.activate(drv.mem.clone(), qs, irq.clone(), 0),
        Err(ActivateError::QueueNotReady(1))
    ));
    // The event queue is optional.
    let mut qs = drv.queues();
    qs[EVENT_QUEUE].set_ready(false);
    v.activate(drv.mem.clone(), qs, irq.clone(), 0).unwrap();
    assert!(v.is_activated());
    assert!(matches!(
        v.activate(drv.mem.clone(), drv.queues(), irq, 0),
        Err(ActivateError::AlreadyActive)
    ));
    v.reset();
    v.reset();
    assert!(!v.is_activated());
}

#[test]
fn host_initiated_handshake_and_data() {
    let mut e = env();
    e.g.listening.insert(1234, 64 * 1024);
    let mut s = UnixStream::connect(&e.path).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(b"CONNECT 1234\n").unwrap();
    e.run_until("REQUEST reaches the guest", |e| !e.g.accepted.is_empty());
    let key = e.g.accepted[0];
    assert_eq!(key.0, 1234);
    assert!(key.1 >= FIRST_LOCAL_PORT, "ephemeral host port {}", key.1);
    // The REQUEST advertised the device's buffer.
    assert_eq!(e.g.conn(key).peer_buf_alloc, CONN_BUF_SIZE);
    assert_eq!(read_line(&mut s), format!("OK {}", key.1));
    assert_eq!(e.dev.connection_count(), 1);

    s.write_all(b"ping from host").unwrap();
    e.run_until("host data", |e| e.g.conn(key).rx.len() == 14);
    assert_eq!(e.g.conn(key).rx, b"ping from host");

    e.g.write(key, b"pong from guest");
    e.run_until("guest data sent", |e| e.g.conn(key).tx_pending() == 0);
    assert_eq!(read_exactly(&mut s, 15), b"pong from guest");

    // A second client gets another port.
    let (_s2, key2) = e.host_connect(1234);
    assert_ne!(key2.1, key.1);
    assert_eq!(e.dev.connection_count(), 2);
    assert!(e.irq.status() & 1 != 0, "used-buffer interrupt raised");
}

#[test]
fn host_data_sent_right_after_connect_line_is_not_lost() {
    let mut e = env();
    e.g.listening.insert(7, CONN_BUF_SIZE);
    let mut s = UnixStream::connect(&e.path).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    // One write: the line and the first payload together.
    s.write_all(b"CONNECT 7\r\nearly bytes").unwrap();
    e.run_until("accept", |e| !e.g.accepted.is_empty());
    let key = e.g.accepted[0];
    assert_eq!(read_line(&mut s), format!("OK {}", key.1));
    e.run_until("early bytes", |e| e.g.conn(key).rx.len() == 11);
    assert_eq!(e.g.conn(key).rx, b"early bytes");
}

#[test]
fn host_initiated_refused_by_guest_closes_client() {
    let mut e = env();
    let mut s = UnixStream::connect(&e.path).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(b"CONNECT 99\n").unwrap();
    e.run_until("REQUEST refused", |e| !e.g.refused.is_empty());
    let req = e.g.refused[0];
    assert_eq!((req.op, req.dst_port), (td::OP_REQUEST, 99));
    e.run_until("device drops it", |e| e.dev.connection_count() == 0);
    assert_eq!(read_to_end(&mut s), b"", "closed without an OK line");
}

#[test]
fn bad_handshakes_close_the_client() {
    let mut e = env();
    e.g.listening.insert(5, CONN_BUF_SIZE);
    let mut bad = Vec::new();
    for line in [
        &b"HELLO\n"[..],
        b"CONNECT\n",
        b"CONNECT 5 6\n",
        b"CONNECT 99999999999\n",
        &[b'x'; 100],
    ] {
        let mut s = UnixStream::connect(&e.path).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.write_all(line).unwrap();
        bad.push(s);
    }
    // One that gives up half-way.
    let mut quitter = UnixStream::connect(&e.path).unwrap();
    quitter.write_all(b"CONN").unwrap();
    drop(quitter);
    e.settle(100);
    for mut s in bad {
        assert_eq!(read_to_end(&mut s), b"");
    }
    assert!(e.g.accepted.is_empty());
    assert_eq!(e.dev.connection_count(), 0);
    // The device still works.
    let (_s, _) = e.host_connect(5);
}

#[test]
fn host_client_leaving_before_response_is_handled() {
    let mut e = env();
    // The guest never answers: no rx buffers.
    e.g.rx_target = 0;
    let mut s = UnixStream::connect(&e.path).unwrap();
    s.write_all(b"CONNECT 5\n").unwrap();
    e.run_until("connection created", |e| e.dev.connection_count() == 1);
    drop(s);
    e.run_until("connection dropped", |e| e.dev.connection_count() == 0);
    // The REQUEST was never delivered, so the guest is not bothered with an RST either.
    e.g.rx_target = 16;
    e.settle(50);
    assert!(e.g.stray.is_empty() && e.g.refused.is_empty());
}

#[test]
fn guest_initiated_connection_and_data() {
    let mut e = env();
    let (mut s, key) = e.guest_connect(5000);
    assert_eq!(e.g.conn(key).peer_buf_alloc, CONN_BUF_SIZE);
    e.g.write(key, b"hello host");
    e.run_until("sent", |e| e.g.conn(key).tx_pending() == 0);
    assert_eq!(read_exactly(&mut s, 10), b"hello host");
    s.write_all(b"hello guest").unwrap();
    e.run_until("received", |e| e.g.conn(key).rx.len() == 11);
    assert_eq!(e.g.conn(key).rx, b"hello guest");
    assert_eq!(e.dev.connection_count(), 1);
}

#[test]
fn guest_connect_without_host_listener_is_reset() {
    let mut e = env();
    let key = e.g.connect(6000, CONN_BUF_SIZE);
    e.run_until("RST", |e| e.g.conn(key).state != GState::Connecting);
    assert_eq!(e.g.conn(key).state, GState::Reset);
    // A stale socket file with nobody listening: refused too.
    let l = UnixListener::bind(format!("{}_6001", e.path.display())).unwrap();
    drop(l);
    let key = e.g.connect(6001, CONN_BUF_SIZE);
    e.run_until("RST", |e| e.g.conn(key).state != GState::Connecting);
    assert_eq!(e.g.conn(key).state, GState::Reset);
    assert_eq!(e.dev.connection_count(), 0);
}

#[test]
fn merged_tx_descriptor_layout() {
    let mut e = env();
    let (mut s, key) = e.guest_connect(5000);
    let mut h = raw(td::OP_RW, key.0, key.1);
    h.len = 5;
    h.buf_alloc = CONN_BUF_SIZE;
    assert!(e.g.drv.send_merged(&h, b"12345"));
    e.kick(TX_QUEUE);
    assert_eq!(read_exactly(&mut s, 5), b"12345");
}

#[test]
fn device_respects_guest_credit() {
    let mut e = env();
    // A small guest buffer the application does not drain.
    e.g.listening.insert(80, 8192);
    let mut s = UnixStream::connect(&e.path).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(b"CONNECT 80\n").unwrap();
    e.run_until("accept", |e| !e.g.accepted.is_empty());
    let key = e.g.accepted[0];
    e.g.conn_mut(key).auto_consume = false;
    assert!(read_line(&mut s).starts_with("OK "));

    let data = td::pattern(64 * 1024, 1);
    let writer = {
        let mut s = s.try_clone().unwrap();
        let data = data.clone();
        thread::spawn(move || s.write_all(&data).unwrap())
    };
    e.run_until("credit used up", |e| e.g.conn(key).rx.len() == 8192);
    e.settle(100);
    // The stack asserts on every packet that the credit is respected; and nothing more came.
    assert_eq!(e.g.conn(key).rx.len(), 8192);
    // The app reads everything it has; credit updates let the rest through.
    let mut consumed = 0;
    e.run_until("all data", |e| {
        let have = e.g.conn(key).rx.len();
        if have > consumed {
            e.g.consume(key, (have - consumed) as u32);
            consumed = have;
        }
        have == data.len()
    });
    writer.join().unwrap();
    assert!(e.g.conn(key).rx == data, "data intact and in order");
}

#[test]
fn rx_starvation_keeps_host_data_until_buffers_come() {
    for event_idx in [false, true] {
        let mut e = env_with(event_idx);
        let (s, key) = e.host_connect(9);
        // From now on the guest posts no more rx buffers by itself; the 128 it has posted
        // cannot hold 1 MiB.
        e.g.rx_target = 0;
        let data = td::pattern(1 << 20, 2);
        let writer = {
            let mut s = s.try_clone().unwrap();
            let data = data.clone();
            thread::spawn(move || s.write_all(&data).unwrap())
        };
        e.settle(200);
        assert!(
            e.g.conn(key).rx.len() < data.len(),
            "cannot all arrive without buffers"
        );
        let stalled_at = e.g.conn(key).rx.len();
        e.settle(100);
        assert_eq!(
            e.g.conn(key).rx.len(),
            stalled_at,
            "nothing without buffers"
        );
        // Buffers trickle in, a few at a time; the device must ask for kicks each time.
        e.run_until("all data", |e| {
            if e.g.drv.rx_outstanding() == 0 {
                e.g.drv.post_rx(3);
            }
            e.g.conn(key).rx.len() == data.len()
        });
        writer.join().unwrap();
        assert!(
            e.g.conn(key).rx == data,
            "event_idx={event_idx}: data intact"
        );
    }
}

#[test]
fn slow_host_reader_backpressures_guest_without_loss() {
    let mut e = env();
    let (mut s, key) = e.guest_connect(5000);
    let data = td::pattern(3 << 20, 3);
    e.g.write(key, &data);
    // The host does not read: the socket buffer and the device's buffer fill, then the
    // guest runs out of credit.
    e.settle(300);
    let c = e.g.conn(key);
    assert!(c.tx_pending() > 0, "guest must be held back");
    let unacked = c.tx_cnt.wrapping_sub(c.peer_fwd_cnt);
    assert!(
        unacked <= CONN_BUF_SIZE,
        "device holds at most its advertised buffer ({unacked})"
    );
    assert_eq!(e.dev.connection_count(), 1, "no RST");
    let reader = thread::spawn(move || read_exactly(&mut s, 3 << 20));
    e.run_until("all sent", |e| e.g.conn(key).tx_pending() == 0);
    let got = reader.join().unwrap();
    assert!(got == data, "data intact and in order");
    assert_eq!(e.g.conn(key).state, GState::Established);
}

#[test]
fn guest_overrunning_credit_is_reset() {
    let mut e = env();
    let (mut s, key) = e.guest_connect(5000);
    // Ignore credit: push far more than socket buffer + CONN_BUF_SIZE without the host
    // reading.
    let chunk = td::pattern(64 * 1024, 4);
    let mut sent = 0;
    while e.g.conn(key).state == GState::Established && sent < 64 {
        let mut h = raw(td::OP_RW, key.0, key.1);
        h.len = chunk.len() as u32;
        if e.g.drv.send(&h, &chunk) {
            sent += 1;
        }
        e.kick(TX_QUEUE);
        e.step();
    }
    assert_eq!(
        e.g.conn(key).state,
        GState::Reset,
        "RST after {sent} packets"
    );
    assert_eq!(e.dev.connection_count(), 0);
    // What reached the socket before the overrun is intact, then the stream ends.
    let got = read_to_end(&mut s);
    assert!(!got.is_empty());
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, &b)| b == chunk[i % chunk.len()]));
}

#[test]
fn guest_shutdown_send_then_host_finishes() {
    let mut e = env();
    let (mut s, key) = e.guest_connect(5000);
    e.g.write(key, b"request");
    e.g.shutdown(key, td::SHUT_SEND);
    e.run_until("sent", |e| e.g.conn(key).tx_pending() == 0);
    // The host sees the data, then EOF...
    assert_eq!(read_to_end(&mut s), b"request");
    // ...and can still answer.
    s.write_all(b"response").unwrap();
    e.run_until("response", |e| e.g.conn(key).rx.len() == 8);
    assert_eq!(e.g.conn(key).rx, b"response");
    assert_eq!(e.g.conn(key).state, GState::Established);
    // Host done too: the guest hears SHUTDOWN(SEND), then the device closes with an RST.
    s.shutdown(Shutdown::Write).unwrap();
    e.run_until("RST", |e| e.g.conn(key).state == GState::Reset);
    assert_ne!(e.g.conn(key).peer_shutdown & td::SHUT_SEND, 0);
    assert_eq!(e.dev.connection_count(), 0);
}

#[test]
fn guest_close_flushes_buffered_data_before_rst() {
    let mut e = env();
    let (mut s, key) = e.guest_connect(5000);
    // More than the host socket buffer takes (~208 KiB by default), less than that plus
    // the device's buffer: all of it gets past credit while the host is not reading.
    let data = td::pattern(384 * 1024, 5);
    e.g.write(key, &data);
    e.g.shutdown(key, td::SHUT_SEND | td::SHUT_RCV);
    e.run_until("all sent", |e| e.g.conn(key).tx_pending() == 0);
    e.settle(100);
    assert_eq!(e.dev.connection_count(), 1, "kept until flushed");
    assert_eq!(e.g.conn(key).state, GState::Established);
    let reader = thread::spawn(move || read_to_end(&mut s));
    e.run_until("RST after flush", |e| e.g.conn(key).state == GState::Reset);
    assert!(reader.join().unwrap() == data);
    assert_eq!(e.dev.connection_count(), 0);
}

#[test]
fn host_close_delivers_data_then_shutdown() {
    let mut e = env();
    let (mut s, key) = e.host_connect(11);
    s.write_all(b"last words").unwrap();
    drop(s);
    e.run_until("SHUTDOWN", |e| e.g.conn(key).peer_shutdown != 0);
    assert_eq!(e.g.conn(key).rx, b"last words");
    assert_eq!(
        e.g.conn(key).peer_shutdown,
        td::SHUT_SEND | td::SHUT_RCV,
        "a closed host neither sends nor receives"
    );
    // The guest closes its side: the connection is gone.
    e.g.rst(key);
    e.run_until("gone", |e| e.dev.connection_count() == 0);
}

#[test]
fn host_half_close_only_stops_host_to_guest() {
    let mut e = env();
    let (mut s, key) = e.host_connect(12);
    s.write_all(b"q").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    e.run_until("SHUTDOWN", |e| e.g.conn(key).peer_shutdown != 0);
    assert_eq!(e.g.conn(key).peer_shutdown, td::SHUT_SEND);
    assert_eq!(e.g.conn(key).rx, b"q");
    e.g.write(key, b"answer");
    e.g.shutdown(key, td::SHUT_SEND);
    e.run_until("RST", |e| e.g.conn(key).state == GState::Reset);
    assert_eq!(read_to_end(&mut s), b"answer");
    assert_eq!(e.dev.connection_count(), 0);
}

#[test]
fn guest_shutdown_rcv_makes_host_writes_fail() {
    let mut e = env();
    let (mut s, key) = e.guest_connect(5000);
    e.g.shutdown(key, td::SHUT_RCV);
    e.settle(50);
    let r = (0..64).try_for_each(|_| s.write_all(&[0u8; 4096]));
    assert!(
        r.is_err(),
        "host writes fail once the guest stopped receiving"
    );
    // The guest can still send.
    e.g.write(key, b"still talking");
    e.run_until("sent", |e| e.g.conn(key).tx_pending() == 0);
    assert_eq!(read_exactly(&mut s, 13), b"still talking");
    assert!(e.g.conn(key).rx.is_empty());
}

#[test]
fn guest_rst_closes_host_socket() {
    let mut e = env();
    let (mut s, key) = e.host_connect(13);
    e.g.rst(key);
    e.run_until("gone", |e| e.dev.connection_count() == 0);
    assert!(is_closed(&mut s));
}

#[test]
fn misaddressed_and_stray_packets() {
    let mut e = env();
    let (mut s, key) = e.guest_connect(5000);
    let stray = |e: &mut Env| e.g.stray.len();

    // Wrong source CID (spoofing) and wrong destination: dropped silently.
    let mut h = raw(td::OP_RW, key.0, key.1);
    h.src_cid = CID + 1;
    h.len = 3;
    e.g.drv.send(&h, b"bad");
    let mut h = raw(td::OP_REQUEST, 1, 5000);
    h.dst_cid = 7;
    e.g.drv.send(&h, &[]);
    e.settle(50);
    assert_eq!(stray(&mut e), 0);
    assert_eq!(e.dev.connection_count(), 1);
    // The spoofed payload did not reach the host: the next bytes are the real ones.
    e.g.write(key, b"good");
    e.run_until("sent", |e| e.g.conn(key).tx_pending() == 0);
    assert_eq!(read_exactly(&mut s, 4), b"good");

    // Data for a connection that does not exist: RST back, addressed to the sender.
    let mut h = raw(td::OP_RW, 777, 888);
    h.len = 2;
    e.g.drv.send(&h, b"zz");
    e.run_until("RST", |e| stray(e) == 1);
    let r = e.g.stray[0].hdr;
    assert_eq!((r.op, r.src_port, r.dst_port), (td::OP_RST, 888, 777));
    assert_eq!((r.src_cid, r.dst_cid), (td::HOST_CID, CID));

    // An RST for nothing is not answered.
    e.g.drv.send(&raw(td::OP_RST, 777, 888), &[]);
    // Unsupported socket type (SEQPACKET was not negotiated).
    let mut h = raw(td::OP_REQUEST, 1, 5000);
    h.type_ = 2;
    e.g.drv.send(&h, &[]);
    e.run_until("RST", |e| stray(e) == 2);
    let r = e.g.stray[1].hdr;
    assert_eq!((r.op, r.type_, r.dst_port), (td::OP_RST, 2, 1));
    e.settle(50);
    assert_eq!(stray(&mut e), 2);

    // Nonsense on a live connection: unknown op, then a second REQUEST.
    e.g.drv.send(&raw(99, key.0, key.1), &[]);
    e.run_until("RST", |e| e.g.conn(key).state == GState::Reset);
    assert!(is_closed(&mut s));
    let (mut s2, key2) = e.guest_connect(5001);
    e.g.drv.send(&raw(td::OP_REQUEST, key2.0, key2.1), &[]);
    e.run_until("RST", |e| e.g.conn(key2).state == GState::Reset);
    assert!(is_closed(&mut s2));
    assert_eq!(e.dev.connection_count(), 0);
    assert!(!e.dev.needs_reset());
}

#[test]
fn malformed_tx_chains_never_panic() {
    let mut e = env();
    let (_s, key) = e.guest_connect(5000);
    let mem = e.g.drv.mem.clone();
    let hdr_at = td::SCRATCH;
    let mut h = raw(td::OP_RW, key.0, key.1);
    h.len = 100;
    h.buf_alloc = CONN_BUF_SIZE;
    mem.write_slice(&h.to_bytes(), GuestAddress(hdr_at))
        .unwrap();
    let huge = 1u64 << 40;
    let tx_chains: &[&[(u64, u32, bool)]] = &[
        // Header descriptor too short.
        &[(hdr_at, 20, false)],
        // Header in a device-writable descriptor.
        &[(hdr_at, 44, true), (hdr_at + 64, 100, false)],
        // Header outside guest memory.
        &[(huge, 44, false)],
        // Header straddling the end of guest memory.
        &[(td::MEM_SIZE as u64 - 20, 44, false)],
    ];
    for c in tx_chains {
        e.g.drv.send_chain(td::TX, c);
    }
    e.kick(TX_QUEUE);
    let reaped = e.g.drv.reap_tx();
    assert_eq!(reaped.len(), tx_chains.len(), "every chain returned");
    assert!(reaped.iter().all(|&(_, len)| len == 0));
    e.settle(20);
    assert_eq!(
        e.g.conn(key).state,
        GState::Established,
        "no readable header, no victim"
    );

    // A header naming the connection but a payload that is not there: the stream cannot
    // be trusted any more.
    e.g.drv.send_chain(td::TX, &[(hdr_at, 44, false)]);
    e.kick(TX_QUEUE);
    e.run_until("RST", |e| e.g.conn(key).state == GState::Reset);
    // Payload in a device-writable descriptor.
    let (_s2, key2) = e.guest_connect(5001);
    let mut h = raw(td::OP_RW, key2.0, key2.1);
    h.len = 10;
    mem.write_slice(&h.to_bytes(), GuestAddress(hdr_at))
        .unwrap();
    e.g.drv
        .send_chain(td::TX, &[(hdr_at, 44, false), (hdr_at + 64, 10, true)]);
    e.kick(TX_QUEUE);
    e.run_until("RST", |e| e.g.conn(key2).state == GState::Reset);
    // Payload longer than the 64 KiB maximum.
    let (_s3, key3) = e.guest_connect(5002);
    let mut h = raw(td::OP_RW, key3.0, key3.1);
    h.len = MAX_PKT_BUF_SIZE + 1;
    mem.write_slice(&h.to_bytes(), GuestAddress(hdr_at))
        .unwrap();
    e.g.drv
        .send_chain(td::TX, &[(hdr_at, 44, false), (hdr_at + 64, h.len, false)]);
    e.kick(TX_QUEUE);
    e.run_until("RST", |e| e.g.conn(key3).state == GState::Reset);
    assert!(!e.dev.needs_reset(), "bad buffers are not a broken ring");

    // Still fully functional.
    let (mut s4, key4) = e.guest_connect(5003);
    e.g.write(key4, b"ok");
    e.run_until("sent", |e| e.g.conn(key4).tx_pending() == 0);
    assert_eq!(read_exactly(&mut s4, 2), b"ok");
}

#[test]
fn malformed_rx_buffers_are_returned_unused() {
    let mut e = env();
    e.g.rx_target = 0;
    let huge = 1u64 << 40;
    let bad: &[&[(u64, u32, bool)]] = &[
        // Device-readable.
        &[(td::SCRATCH, 4096, false)],
        // Outside guest memory.
        &[(huge, 4096, true)],
        // Too short for a header.
        &[(td::SCRATCH + 0x1000, 10, true)],
        // Header only, no room for anything else: fine for a RESPONSE, not for data.
        &[
            (td::SCRATCH + 0x2000, 44, true),
            (td::SCRATCH + 0x3000, 0, true),
        ],
    ];
    for c in bad {
        e.g.drv.send_chain(td::RX, c);
    }
    e.g.drv.post_rx(8);
    let _l = UnixListener::bind(format!("{}_5000", e.path.display())).unwrap();
    let key = e.g.connect(5000, CONN_BUF_SIZE);
    e.kick(TX_QUEUE);
    let pkts = e.g.drv.recv();
    assert_eq!(pkts.len(), 4, "{pkts:?}");
    assert!(pkts[..3].iter().all(|p| p.used_len == 0));
    assert_eq!(pkts[3].used_len, 44);
    assert_eq!(pkts[3].hdr.op, td::OP_RESPONSE);
    for p in pkts {
        if p.used_len > 0 {
            e.g.handle(p);
        }
    }
    assert_eq!(e.g.conn(key).state, GState::Established);
    assert!(!e.dev.needs_reset());
    e.g.rx_target = 64;
    e.step();
    assert_eq!(e.dev.connection_count(), 1);
}

#[test]
fn corrupt_ring_needs_reset() {
    let mut e = env();
    let (_, _, avail, _) = e.g.drv.layout(td::TX);
    // The driver claims 1000 new buffers in a 256-entry ring.
    e.g.drv
        .mem
        .write_obj(1000u16, GuestAddress(avail + 2))
        .unwrap();
    e.irq.ack(0xff);
    e.kick(TX_QUEUE);
    assert!(e.dev.needs_reset());
    assert_ne!(e.irq.status() & INT_CONFIG_CHANGE, 0);
    // Ignored until reset.
    e.kick(TX_QUEUE);
    e.dev.reset();
    assert!(!e.dev.needs_reset());
}

#[test]
fn reset_drops_connections_and_keeps_listening() {
    let mut e = env();
    let (mut a, _) = e.host_connect(1);
    let (mut b, _) = e.guest_connect(5000);
    // A client mid-handshake.
    let mut c = UnixStream::connect(&e.path).unwrap();
    c.write_all(b"CONN").unwrap();
    e.settle(20);
    assert_eq!(e.dev.connection_count(), 2);

    e.dev.reset();
    assert_eq!(e.dev.connection_count(), 0);
    assert!(is_closed(&mut a));
    assert!(is_closed(&mut b));
    assert!(is_closed(&mut c));
    assert!(e.path.exists(), "listening socket kept");

    // A client that connects while the device is down waits in the backlog...
    let mut d = UnixStream::connect(&e.path).unwrap();
    d.set_read_timeout(Some(TIMEOUT)).unwrap();
    d.write_all(b"CONNECT 1\n").unwrap();
    e.dev.process_host_events();
    // ...and is served by the next driver instance.
    e.g = GuestStack::new(Driver::new(td::test_mem(), CID, false));
    e.activate();
    e.g.listening.insert(1, CONN_BUF_SIZE);
    e.run_until("accept", |e| !e.g.accepted.is_empty());
    assert!(read_line(&mut d).starts_with("OK "));
}

#[test]
fn event_queue_is_left_alone() {
    let mut e = env();
    e.g.drv.post_event_bufs(8);
    e.kick(EVENT_QUEUE);
    e.settle(10);
    assert_eq!(e.g.drv.used_idx(td::EV), 0);
    assert_eq!(e.g.drv.event_outstanding(), 8);
    e.dev.process_queue(7);
}

#[test]
fn guest_rx_layouts() {
    for layout in [RxLayout::Split, RxLayout::Merged] {
        let mut e = env();
        e.g.drv.rx_layout = layout;
        let (mut s, key) = e.host_connect(3);
        let data = td::pattern(100_000, 6);
        s.write_all(&data).unwrap();
        e.run_until("data", |e| e.g.conn(key).rx.len() == data.len());
        assert!(e.g.conn(key).rx == data, "{layout:?}");
        assert!(e.g.conn(key).max_pkt <= 4096, "fits the guest's buffers");
    }
}
