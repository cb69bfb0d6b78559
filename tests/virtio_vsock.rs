//! virtio-vsock end to end: the probe guest's vsock stack (`probe=vsock`) against
//! `capsa vm run --vsock-cid --vsock-uds` on the real /dev/kvm, with the host side driven
//! from here through the hybrid-vsock Unix sockets:
//! - host to guest: connect to the UDS, `CONNECT <port>\n`, expect `OK <port>\n`, then the
//!   guest echoes the stream;
//! - guest to host: guest connections to host port P arrive at `<uds>_P`; the guest sends
//!   the probe's test pattern, this side checks and echoes it, the guest checks the echo.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;

const GUEST_PORT: u32 = 1234;
const HOST_PORT: u32 = 5000;
const CID: &str = "3";

/// Starts the probe on `probe=vsock` with `params`; returns the running capsa and the UDS.
fn start(dir: &Path, params: &str) -> (std::process::Child, PathBuf) {
    let uds = dir.join("v.sock");
    let probe = probe_guest();
    let cmdline = format!("console=ttyS0 probe=vsock {params}");
    let child = capsa(&[
        "vm",
        "run",
        "--kernel",
        probe.to_str().unwrap(),
        "--cmdline",
        &cmdline,
        "--vsock-cid",
        CID,
        "--vsock-uds",
        uds.to_str().unwrap(),
    ])
    .spawn()
    .expect("spawning capsa");
    (child, uds)
}

/// Waits for the device's listening socket (it exists before the guest boots).
fn wait_for_socket(child: &mut std::process::Child, uds: &Path) {
    let start = Instant::now();
    while !uds.exists() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "capsa exited ({st}) before creating {uds:?}\n{}",
                drain_output(child)
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no {uds:?} after 30 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What an exited capsa printed.
fn drain_output(child: &mut std::process::Child) -> String {
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    format!("--- stdout ---\n{out}\n--- stderr ---\n{err}")
}

/// Host-initiated connection to guest port `port`: handshake, send `data` while reading
/// the echo, shut down the write side, return everything read until EOF.
fn host_echo_client(uds: PathBuf, port: u32, data: Vec<u8>) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut s = UnixStream::connect(&uds).expect("connecting to the vsock UDS");
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        let line = read_line(&mut s);
        assert!(
            line.starts_with("OK ") && line[3..].trim_end().parse::<u32>().is_ok(),
            "handshake reply {line:?}"
        );
        let mut r = s.try_clone().unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            r.read_to_end(&mut got).expect("reading the echo");
            got
        });
        s.write_all(&data).expect("sending to the guest");
        s.shutdown(Shutdown::Write).unwrap();
        reader.join().unwrap()
    })
}

/// One `\n`-terminated line, byte by byte (nothing after it may be consumed).
fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.last() != Some(&b'\n') {
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(_) => line.push(b[0]),
            Err(e) => panic!("reading the handshake: {e}"),
        }
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// Accepts `n` guest-initiated connections on `<uds>_<port>`; each is echoed back until
/// EOF. Returns what each connection carried, in accept order.
fn host_echo_server(uds: &Path, port: u32, n: usize) -> JoinHandle<Vec<Vec<u8>>> {
    let path = PathBuf::from(format!("{}_{port}", uds.display()));
    let listener = UnixListener::bind(&path).expect("binding the host port socket");
    std::thread::spawn(move || {
        let conns: Vec<_> = (0..n)
            .map(|_| {
                let (mut s, _) = listener.accept().expect("accepting a guest connection");
                std::thread::spawn(move || {
                    s.set_read_timeout(Some(DEADLINE)).unwrap();
                    let mut got = Vec::new();
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        let k = s.read(&mut buf).expect("reading from the guest");
                        if k == 0 {
                            break;
                        }
                        s.write_all(&buf[..k]).expect("echoing to the guest");
                        got.extend_from_slice(&buf[..k]);
                    }
                    let _ = s.shutdown(Shutdown::Write);
                    got
                })
            })
            .collect();
        conns.into_iter().map(|t| t.join().unwrap()).collect()
    })
}

fn finish(child: std::process::Child) -> Output {
    let o = wait_with_deadline(child, DEADLINE);
    o.assert_probe_pass("vsock");
    o
}

fn stat(o: &Output, key: &str) -> u64 {
    o.expect_field("PROBE-VSOCK:", key).parse().unwrap()
}

#[test]
fn host_to_guest_echo_on_several_connections() {
    let dir = tempfile::tempdir().unwrap();
    let params = format!("vsock.listen={GUEST_PORT} vsock.accept=3");
    let (mut child, uds) = start(dir.path(), &params);
    wait_for_socket(&mut child, &uds);
    let sizes = [1 << 20, (1 << 20) + 12_345, 3 << 19];
    let clients: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let data = noise(100 + i as u64, n);
            (
                data.clone(),
                host_echo_client(uds.clone(), GUEST_PORT, data),
            )
        })
        .collect();
    for (i, (sent, t)) in clients.into_iter().enumerate() {
        let got = t.join().unwrap();
        assert_eq!(got.len(), sent.len(), "connection {i}: echo length");
        assert!(got == sent, "connection {i}: echo differs");
    }
    let o = finish(child);
    assert_eq!(o.expect_field("PROBE-VSOCK:", "cid"), CID, "{o}");
    assert_eq!(stat(&o, "accepted"), 3, "{o}");
    assert_eq!(
        stat(&o, "echoed"),
        sizes.iter().sum::<usize>() as u64,
        "{o}"
    );
    assert_eq!(stat(&o, "early_resets"), 0, "{o}");
}

#[test]
fn guest_to_host_pattern_is_echoed_back() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let conns = [(1u64 << 20, 7u64), ((1 << 20) + 4321, 8), (2 << 20, 9)];
    let server = host_echo_server(&uds, HOST_PORT, conns.len());
    let params: Vec<String> = conns
        .iter()
        .map(|(n, seed)| format!("vsock.connect={HOST_PORT}:{n}:{seed}"))
        .collect();
    let (child, _) = start(dir.path(), &params.join(" "));
    let o = finish(child);
    // The host saw exactly the guest's pattern on each connection (in some order).
    let mut got = server.join().unwrap();
    got.sort_by_key(|v| v.len());
    for ((n, seed), data) in conns.iter().zip(&got) {
        assert!(
            *data == probe_pattern(*seed, 0, *n as usize),
            "connection with seed {seed}: host received other bytes ({} of {n})",
            data.len()
        );
    }
    let total: u64 = conns.iter().map(|c| c.0).sum();
    assert_eq!(stat(&o, "connected"), 3, "{o}");
    assert_eq!(stat(&o, "sent"), total, "{o}");
    assert_eq!(stat(&o, "verified"), total, "{o}");
    assert_eq!(stat(&o, "mismatches"), 0, "{o}");
    assert_eq!(stat(&o, "short"), 0, "{o}");
}

#[test]
fn both_directions_at_once_with_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let server = host_echo_server(&uds, HOST_PORT, 2);
    // Port 5001 has no listener on the host: the guest's connection is refused.
    let params = format!(
        "vsock.listen={GUEST_PORT} vsock.accept=2 vsock.reject=1 \
         vsock.connect={HOST_PORT}:1200000:21 vsock.connect={HOST_PORT}:1100000:22 \
         vsock.connect=5001:100:23"
    );
    let (mut child, _) = start(dir.path(), &params);
    wait_for_socket(&mut child, &uds);
    let a = noise(31, 1_300_000);
    let b = noise(32, 1 << 20);
    let ta = host_echo_client(uds.clone(), GUEST_PORT, a.clone());
    let tb = host_echo_client(uds.clone(), GUEST_PORT, b.clone());
    // A port nobody listens on in the guest: the UDS connection is closed, no "OK".
    let mut s = UnixStream::connect(&uds).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(b"CONNECT 999\n").unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "rejected connection got {rest:?}");
    assert!(ta.join().unwrap() == a, "echo a differs");
    assert!(tb.join().unwrap() == b, "echo b differs");
    let o = finish(child);
    let mut got = server.join().unwrap();
    got.sort_by_key(|v| v.len());
    assert!(
        got[0] == probe_pattern(22, 0, 1_100_000),
        "host got other bytes"
    );
    assert!(
        got[1] == probe_pattern(21, 0, 1_200_000),
        "host got other bytes"
    );
    assert_eq!(stat(&o, "accepted"), 2, "{o}");
    assert_eq!(stat(&o, "echoed"), (a.len() + b.len()) as u64, "{o}");
    assert_eq!(stat(&o, "rejected"), 1, "{o}");
    assert_eq!(stat(&o, "connected"), 2, "{o}");
    assert_eq!(stat(&o, "refused"), 1, "{o}");
    assert_eq!(stat(&o, "verified"), 2_300_000, "{o}");
    assert_eq!(stat(&o, "mismatches"), 0, "{o}");
}

#[test]
fn device_reports_the_guest_cid() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let probe = probe_guest();
    let o = run(&[
        "vm",
        "run",
        "--kernel",
        probe.to_str().unwrap(),
        "--cmdline",
        "console=ttyS0 probe=vsock",
        "--vsock-cid",
        "1234567",
        "--vsock-uds",
        uds.to_str().unwrap(),
    ]);
    o.assert_probe_pass("vsock");
    assert_eq!(o.expect_field("PROBE-VSOCK:", "cid"), "1234567", "{o}");
}
