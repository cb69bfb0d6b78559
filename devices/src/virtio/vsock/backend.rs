//! Host side of the device: the hybrid-vsock Unix sockets and the connection table.
//!
//! All host file descriptors live in a private epoll instance whose fd is the only one the
//! event loop watches for them. The backend can therefore add and drop sockets at any time
//! (including from a vCPU thread during a device reset) without going through the event
//! manager, and a closed socket simply leaves the private epoll.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use tracing::{debug, error, info, trace, warn};
use virtio_vsock::packet::VsockPacket;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::connection::{ConnKey, ConnState, Connection, RxFill};
use super::packet::{op, Hdr, HDR_LEN, HOST_CID, TYPE_STREAM};
use super::{sys, CONN_BUF_SIZE};

/// epoll token of the listening socket; connections get tokens from 1 up, never reused.
const LISTENER_TOKEN: u64 = 0;
/// Upper bound on host-side sockets (connections plus clients still in the handshake).
pub const MAX_CONNECTIONS: usize = 1024;
/// Upper bound on queued RSTs that answer stray guest packets; beyond it they are dropped
/// (the guest gets nothing it would not get for a lost packet) so a guest that sends
/// garbage without posting rx buffers cannot grow our memory.
pub(crate) const MAX_STRAY_RSTS: usize = 1024;
/// Longest accepted `CONNECT <port>\n` line.
const MAX_CONNECT_LINE: usize = 32;
/// Host-initiated connections get host ports from here up (as Firecracker does, far above
/// anything a guest service would use as a source port).
pub const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// epoll events handled per wait call, and wait calls per wake-up (then the event loop
/// comes back since the epoll fd stays readable).
const EVENT_BATCH: usize = 32;
const MAX_EVENT_ROUNDS: usize = 16;
/// Connections accepted per listener wake-up.
const ACCEPT_BATCH: usize = 32;

/// A host client that connected to the listening socket and has not finished its
/// `CONNECT <port>\n` line.
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// `<uds_path>_<port>`: where guest connections to host port `port` go.
pub(crate) fn peer_socket_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut s = OsString::from(uds_path.as_os_str());
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// Parses `CONNECT <port>` (the newline already stripped; a trailing CR is tolerated).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.strip_prefix(b"CONNECT ")?;
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

pub(crate) struct Backend {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    /// The device is active: the listener should be in epoll.
    active: bool,
    /// The listener is in epoll.
    listening: bool,
    conns: HashMap<ConnKey, Connection>,
    conn_tokens: HashMap<u64, ConnKey>,
    handshakes: HashMap<u64, Handshake>,
    next_token: u64,
    next_local_port: u32,
    /// Packets not tied to a live connection (RSTs), sent before connection traffic.
    ctrl: VecDeque<Hdr>,
    /// Connections that want an rx buffer, served round-robin.
    rx_ready: VecDeque<ConnKey>,
    /// Connections whose epoll interest / rx queueing / closing must be re-evaluated.
    dirty: Vec<ConnKey>,
}

impl Backend {
    /// `listener` is bound to `uds_path` and non-blocking.
    pub fn new(guest_cid: u64, uds_path: PathBuf, listener: UnixListener) -> io::Result<Self> {
        Ok(Backend {
            guest_cid,
            uds_path,
            listener,
            epoll: Epoll::new()?,
            active: false,
            listening: false,
            conns: HashMap::new(),
            conn_tokens: HashMap::new(),
            handshakes: HashMap::new(),
            next_token: LISTENER_TOKEN + 1,
            next_local_port: FIRST_LOCAL_PORT,
            ctrl: VecDeque::new(),
            rx_ready: VecDeque::new(),
            dirty: Vec::new(),
        })
    }

    /// The private epoll fd: readable whenever a host socket needs attention.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Starts serving the listening socket. Clients that connected while the device was
    /// inactive wait in the listen backlog and are picked up now.
    pub fn activate(&mut self) {
        self.active = true;
        self.set_listening(true);
    }

    /// Drops every connection and handshake (their host sockets close, so host clients see
    /// EOF) and stops serving the listener. The listening socket itself stays bound.
    pub fn reset(&mut self) {
        self.active = false;
        self.set_listening(false);
        let n = self.conns.len() + self.handshakes.len();
        if n > 0 {
            info!("vsock: reset drops {n} host connection(s)");
        }
        self.conns.clear();
        self.conn_tokens.clear();
        self.handshakes.clear();
        self.ctrl.clear();
        self.rx_ready.clear();
        self.dirty.clear();
    }

    fn set_listening(&mut self, on: bool) {
        if on == self.listening {
            return;
        }
        let fd = self.listener.as_raw_fd();
        let r = if on {
            self.epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
            )
        } else {
            self.epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default())
        };
        match r {
            Ok(()) => self.listening = on,
            Err(e) => error!("vsock: cannot update epoll for the listening socket: {e}"),
        }
    }

    fn total_sockets(&self) -> usize {
        self.conns.len() + self.handshakes.len()
    }

    fn new_token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    /// Marks a connection for re-evaluation in [`Self::commit`].
    fn touch(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get_mut(&key) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    /// Queues an RST for the guest. Stray ones (answers to packets that name no connection
    /// we know) are bounded.
    fn queue_rst(&mut self, hdr: Hdr, stray: bool) {
        if stray && self.ctrl.len() >= MAX_STRAY_RSTS {
            debug!("vsock: RST queue full; dropping RST for {hdr:?}");
            return;
        }
        self.ctrl.push_back(hdr);
    }

    /// Closes a connection's host socket and tells the guest (RST), unless the guest never
    /// heard of it.
    fn kill(&mut self, key: ConnKey) {
        let Some(c) = self.remove(key) else {
            return;
        };
        if c.state == ConnState::LocalInit && c.pending & super::connection::pending::REQUEST != 0 {
            return;
        }
        self.queue_rst(
            Hdr {
                src_cid: HOST_CID,
                dst_cid: self.guest_cid,
                src_port: key.local_port,
                dst_port: key.peer_port,
                type_: TYPE_STREAM,
                op: op::RST,
                buf_alloc: CONN_BUF_SIZE,
                ..Hdr::default()
            },
            false,
        );
    }

    /// Forgets a connection; dropping it closes the host socket, which also takes it out of
    /// epoll.
    fn remove(&mut self, key: ConnKey) -> Option<Connection> {
        let c = self.conns.remove(&key)?;
        self.conn_tokens.remove(&c.token);
        trace!("vsock: {key:?} closed");
        self.socket_closed();
        Some(c)
    }

    // ---- guest -> host -------------------------------------------------------------------

    /// Handles one packet from the guest's tx queue.
    pub fn handle_tx<B: BitmapSlice>(&mut self, hdr: &Hdr, data: Option<&VolatileSlice<'_, B>>) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            // A spoofed or misaddressed packet: answering it would only address someone else.
            debug!(
                "vsock: dropping packet {} -> {} (guest is {}, host is {HOST_CID})",
                hdr.src_cid, hdr.dst_cid, self.guest_cid
            );
            return;
        }
        if hdr.type_ != TYPE_STREAM {
            debug!("vsock: unsupported socket type {}; RST", hdr.type_);
            if hdr.op != op::RST {
                self.queue_rst(hdr.rst_reply(), true);
            }
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        let Some(c) = self.conns.get_mut(&key) else {
            self.handle_unknown(hdr, key);
            return;
        };
        c.update_peer_credit(hdr);
        match (c.state, hdr.op) {
            (_, op::RST) => {
                debug!("vsock: {key:?} reset by the guest");
                self.remove(key);
                return;
            }
            (ConnState::LocalInit, op::RESPONSE) => {
                c.state = ConnState::Established;
                // Hybrid vsock: tell the host client its connection is up (and its port).
                c.push_preamble(format!("OK {}\n", key.local_port).as_bytes());
                if let Err(e) = c.flush_to_host() {
                    debug!("vsock: {key:?}: host client went away during handshake: {e}");
                    self.kill(key);
                    return;
                }
                debug!("vsock: {key:?} established (host-initiated)");
            }
            (ConnState::Established, op::RW) => {
                if c.guest_shut_send {
                    warn!("vsock: {key:?}: data after SHUTDOWN(SEND); RST");
                    self.kill(key);
                    return;
                }
                let Some(data) = data else {
                    // Zero-length RW: only the credit fields mattered.
                    self.touch(key);
                    return;
                };
                if c.to_host_len() + data.len() > CONN_BUF_SIZE as usize {
                    // The guest ignored the credit we advertised; taking more would make
                    // our buffer unbounded.
                    warn!(
                        "vsock: {key:?}: guest overran its credit ({} buffered + {}); RST",
                        c.to_host_len(),
                        data.len()
                    );
                    self.kill(key);
                    return;
                }
                c.push_payload(data);
                if let Err(e) = c.flush_to_host() {
                    debug!("vsock: {key:?}: host socket write failed: {e}; RST");
                    self.kill(key);
                    return;
                }
            }
            (ConnState::Established, op::SHUTDOWN) => {
                debug!("vsock: {key:?}: guest SHUTDOWN flags {:#x}", hdr.flags);
                c.guest_shutdown(hdr.flags);
            }
            (ConnState::Established, op::CREDIT_UPDATE) => {}
            (ConnState::Established, op::CREDIT_REQUEST) => {
                c.pending |= super::connection::pending::CREDIT_UPDATE;
            }
            (state, o) => {
                warn!("vsock: {key:?}: unexpected op {o} in state {state:?}; RST");
                self.kill(key);
                return;
            }
        }
        self.touch(key);
    }

    /// A guest packet for a connection we do not have: only REQUEST makes sense.
    fn handle_unknown(&mut self, hdr: &Hdr, key: ConnKey) {
        match hdr.op {
            op::REQUEST => self.guest_connect(hdr, key),
            // Never answer an RST with an RST.
            op::RST => {}
            o => {
                debug!("vsock: op {o} for unknown connection {key:?}; RST");
                self.queue_rst(hdr.rst_reply(), true);
            }
        }
    }

    /// Guest connects to host port P: connect to `<uds_path>_P`, RST if that fails.
    fn guest_connect(&mut self, hdr: &Hdr, key: ConnKey) {
        if self.total_sockets() >= MAX_CONNECTIONS {
            warn!("vsock: {MAX_CONNECTIONS} connections open; refusing guest connection {key:?}");
            self.queue_rst(hdr.rst_reply(), true);
            return;
        }
        let path = peer_socket_path(&self.uds_path, hdr.dst_port);
        let stream = match sys::connect_nonblocking(&path) {
            Ok(s) => s,
            Err(e) => {
                debug!("vsock: guest connection {key:?}: cannot connect to {path:?}: {e}; RST");
                self.queue_rst(hdr.rst_reply(), true);
                return;
            }
        };
        let token = self.new_token();
        self.conns
            .insert(key, Connection::new_peer(key, token, stream, hdr));
        self.conn_tokens.insert(token, key);
        debug!("vsock: {key:?} established (guest-initiated, {path:?})");
        self.touch(key);
    }

    /// A tx chain that could not be parsed. If its header was readable and names a
    /// connection, that connection cannot be trusted any more (a lost RW would corrupt the
    /// stream): RST it.
    pub fn handle_bad_tx(&mut self, hdr: Option<Hdr>) {
        let Some(hdr) = hdr else {
            return;
        };
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID || hdr.op == op::RST {
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if self.conns.contains_key(&key) {
            self.kill(key);
        } else {
            self.queue_rst(hdr.rst_reply(), true);
        }
    }

    // ---- host -> guest -------------------------------------------------------------------

    /// Something is waiting for a guest rx buffer.
    pub fn has_rx_work(&self) -> bool {
        !self.ctrl.is_empty() || !self.rx_ready.is_empty()
    }

    /// Fills one guest rx buffer. `NoRoom` means the buffer cannot carry payload that is
    /// waiting; `Nothing` that there was nothing to send after all.
    pub fn fill_rx<B: BitmapSlice>(&mut self, pkt: &mut VsockPacket<'_, B>) -> RxFill {
        if let Some(hdr) = self.ctrl.pop_front() {
            if let Err(e) = pkt.set_header_from_raw(&hdr.to_bytes()) {
                warn!("vsock: cannot write packet header: {e}");
                return RxFill::Sent(0);
            }
            return RxFill::Sent(HDR_LEN as u32);
        }
        while let Some(key) = self.rx_ready.pop_front() {
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            c.queued = false;
            let fill = c.fill_rx(pkt, self.guest_cid);
            match fill {
                RxFill::Sent(_) | RxFill::NoRoom => {
                    if c.has_rx_work() {
                        // Round-robin: back of the line.
                        c.queued = true;
                        self.rx_ready.push_back(key);
                    }
                    self.touch(key);
                    return fill;
                }
                RxFill::SentRst(len) => {
                    self.remove(key);
                    return RxFill::Sent(len);
                }
                RxFill::Nothing => self.touch(key),
            }
        }
        RxFill::Nothing
    }

    // ---- host events ---------------------------------------------------------------------

    /// Handles whatever the host sockets reported. Returns how many events there were.
    pub fn process_host_events(&mut self) -> usize {
        let mut events = [EpollEvent::default(); EVENT_BATCH];
        let mut total = 0;
        for _ in 0..MAX_EVENT_ROUNDS {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    error!("vsock: epoll_wait failed: {e}");
                    break;
                }
            };
            for ev in &events[..n] {
                self.handle_event(ev.data(), ev.event_set());
            }
            total += n;
            if n < events.len() {
                break;
            }
        }
        total
    }

    fn handle_event(&mut self, token: u64, set: EventSet) {
        if token == LISTENER_TOKEN {
            self.accept_clients();
        } else if self.handshakes.contains_key(&token) {
            self.read_handshake(token);
        } else if let Some(&key) = self.conn_tokens.get(&token) {
            self.connection_event(key, set);
        }
        // Otherwise the socket was closed earlier in this batch.
    }

    fn accept_clients(&mut self) {
        if !self.listening {
            return;
        }
        for _ in 0..ACCEPT_BATCH {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    // E.g. EMFILE. The listener would stay readable and spin the event loop;
                    // pause it until a socket of ours closes.
                    warn!("vsock: accept on {:?} failed: {e}; pausing", self.uds_path);
                    self.set_listening(false);
                    return;
                }
            };
            if self.total_sockets() >= MAX_CONNECTIONS {
                warn!("vsock: {MAX_CONNECTIONS} connections open; closing new host client");
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                warn!("vsock: cannot make host client non-blocking: {e}");
                continue;
            }
            let token = self.new_token();
            if let Err(e) = self.epoll.ctl(
                ControlOperation::Add,
                stream.as_raw_fd(),
                EpollEvent::new(EventSet::IN, token),
            ) {
                warn!("vsock: cannot watch host client: {e}");
                continue;
            }
            trace!("vsock: host client accepted (token {token})");
            self.handshakes.insert(
                token,
                Handshake {
                    stream,
                    line: Vec::new(),
                },
            );
        }
    }

    /// Reads the `CONNECT <port>\n` line one byte at a time, so nothing the client sends
    /// after it (its first payload) is consumed before the connection exists.
    fn read_handshake(&mut self, token: u64) {
        let Some(hs) = self.handshakes.get_mut(&token) else {
            return;
        };
        let complete = loop {
            let mut b = [0u8; 1];
            match hs.stream.read(&mut b) {
                Ok(0) => {
                    debug!("vsock: host client left before CONNECT");
                    break false;
                }
                Ok(_) if b[0] == b'\n' => break true,
                Ok(_) => {
                    hs.line.push(b[0]);
                    if hs.line.len() > MAX_CONNECT_LINE {
                        warn!("vsock: host client sent an overlong CONNECT line; closing");
                        break false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("vsock: host client read failed: {e}");
                    break false;
                }
            }
        };
        let Some(hs) = self.handshakes.remove(&token) else {
            return;
        };
        if !complete {
            self.socket_closed();
            return;
        }
        let Some(port) = parse_connect(&hs.line) else {
            warn!(
                "vsock: bad handshake {:?} from host client; closing",
                String::from_utf8_lossy(&hs.line)
            );
            self.socket_closed();
            return;
        };
        let key = self.allocate_local_key(port);
        let mut c = Connection::new_local(key, token, hs.stream);
        // Still registered for IN under the same token; commit() narrows it.
        c.registered = Some(EventSet::IN);
        self.conns.insert(key, c);
        self.conn_tokens.insert(token, key);
        debug!("vsock: host client connecting to guest port {port} as {key:?}");
        self.touch(key);
    }

    /// A fresh host port for a host-initiated connection to guest port `peer_port`.
    fn allocate_local_key(&mut self, peer_port: u32) -> ConnKey {
        loop {
            let local_port = self.next_local_port;
            self.next_local_port = local_port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            let key = ConnKey {
                local_port,
                peer_port,
            };
            // At most MAX_CONNECTIONS keys are taken, so this ends quickly.
            if !self.conns.contains_key(&key) {
                return key;
            }
        }
    }

    fn connection_event(&mut self, key: ConnKey, set: EventSet) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if set.contains(EventSet::ERROR) {
            let err = c.stream.take_error().ok().flatten();
            debug!("vsock: {key:?}: host socket error {err:?}; RST");
            self.kill(key);
            return;
        }
        if set.contains(EventSet::OUT) {
            if let Err(e) = c.flush_to_host() {
                debug!("vsock: {key:?}: host socket write failed: {e}; RST");
                self.kill(key);
                return;
            }
        }
        if set.contains(EventSet::IN) {
            c.host_readable = true;
        }
        if set.contains(EventSet::HANG_UP) {
            c.host_hup = true;
            // Whatever is left in the socket can still be read, without waiting.
            c.host_readable = true;
            if c.state == ConnState::LocalInit || !c.to_host_empty() || c.guest_shut_recv {
                debug!("vsock: {key:?}: host hung up; RST");
                self.kill(key);
                return;
            }
        }
        self.touch(key);
    }

    /// A host socket closed: a listener paused for lack of fds may resume.
    fn socket_closed(&mut self) {
        if self.active && !self.listening {
            self.set_listening(true);
        }
    }

    /// Applies the consequences of state changes: closes finished connections, updates epoll
    /// interest, queues connections that want an rx buffer.
    pub fn commit(&mut self) {
        while let Some(key) = self.dirty.pop() {
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            c.dirty = false;
            if c.finished() {
                debug!("vsock: {key:?} finished; RST");
                self.kill(key);
                continue;
            }
            let want = c.interest();
            if want != c.registered {
                let fd = c.stream.as_raw_fd();
                let r = match (c.registered, want) {
                    (None, Some(ev)) => {
                        self.epoll
                            .ctl(ControlOperation::Add, fd, EpollEvent::new(ev, c.token))
                    }
                    (Some(_), Some(ev)) => {
                        self.epoll
                            .ctl(ControlOperation::Modify, fd, EpollEvent::new(ev, c.token))
                    }
                    (Some(_), None) => {
                        self.epoll
                            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
                    }
                    (None, None) => Ok(()),
                };
                if let Err(e) = r {
                    error!("vsock: {key:?}: cannot update epoll: {e}; RST");
                    self.kill(key);
                    continue;
                }
                c.registered = want;
            }
            if !c.queued && c.has_rx_work() {
                c.queued = true;
                self.rx_ready.push_back(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_line_parsing() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967295"), Some(u32::MAX));
        for bad in [
            &b"CONNECT 4294967296"[..],
            b"CONNECT ",
            b"CONNECT -1",
            b"CONNECT +1",
            b"CONNECT 1 2",
            b"connect 1",
            b"CONNECT  1",
            b"CONNECT 0x10",
            b"",
        ] {
            assert_eq!(
                parse_connect(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn peer_path_appends_port() {
        assert_eq!(
            peer_socket_path(Path::new("/run/vm/v.sock"), 52),
            PathBuf::from("/run/vm/v.sock_52")
        );
    }
}
