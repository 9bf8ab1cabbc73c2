//! Scripted peers for the discovery tests: a raw-mode peerlink listener that
//! runs the version/verack handshake itself, answers `ping` with `pong`, and
//! answers `getaddr` with a scripted list of addresses: `addrv2` (BIP155) to
//! a peer that sent `sendaddrv2` before its `verack`, else `addr` (which
//! carries IPv4 and IPv6 only; other entries are left out of it, as Bitcoin
//! Core leaves them out).
//!
//! Each server listens on an address of its own in 127.0.0.0/8 (every one of
//! them is bindable on Linux), so that a crawler can tell servers apart by
//! address, and runs on its own thread until it is stopped or dropped.
//! Counters ([`AddrServer::stats`]) are waited on with a timeout
//! ([`AddrServer::wait_for`]), never polled with sleeps.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bitcoin::p2p::ServiceFlags;
use bitcoin::p2p::address::{AddrV2, AddrV2Message, Address};
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_network::VersionMessage;
use peerlink::{Config, Disconnect, Event, Handle, Mode, PeerId};

/// How often the server thread checks whether it should stop.
const POLL: Duration = Duration::from_millis(20);

/// The services a server announces by default, and gives every address it
/// hands out: `NODE_NETWORK | NODE_WITNESS`.
pub fn services() -> ServiceFlags {
    ServiceFlags::NETWORK | ServiceFlags::WITNESS
}

/// What a server does, beyond the defaults of [`AddrServer::start`].
#[derive(Debug, Clone)]
pub struct Options {
    /// The network whose magic it speaks. Default regtest.
    pub network: bitcoin::Network,
    /// The address it listens on (port 0: a free one). Default 127.0.0.1.
    pub bind_ip: Ipv4Addr,
    /// The addresses it answers `getaddr` with, in order (see also
    /// [`AddrServer::set_answers`]).
    pub answers: Vec<(AddrV2, u16)>,
    /// The services it announces in its `version`. Default [`services()`].
    pub services: ServiceFlags,
    /// Its user agent. Default `/addr_server:<bind ip>/`.
    pub user_agent: Option<String>,
    /// Whether it answers `getaddr` at all. Default true.
    pub answer_getaddr: bool,
}

impl Options {
    /// Defaults, listening on `bind_ip` and answering with `answers`.
    pub fn new(bind_ip: Ipv4Addr, answers: Vec<SocketAddr>) -> Options {
        Options {
            network: bitcoin::Network::Regtest,
            bind_ip,
            answers: answers.iter().map(|a| (addr_v2(a), a.port())).collect(),
            services: services(),
            user_agent: None,
            answer_getaddr: true,
        }
    }
}

/// The BIP155 form of a socket address.
pub fn addr_v2(addr: &SocketAddr) -> AddrV2 {
    match addr {
        SocketAddr::V4(a) => AddrV2::Ipv4(*a.ip()),
        SocketAddr::V6(a) => AddrV2::Ipv6(*a.ip()),
    }
}

/// What a server has seen so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections accepted, ever.
    pub accepted: usize,
    /// Connections open now (accepted, not yet disconnected).
    pub open: usize,
    /// Handshakes completed (the peer's `verack` arrived), ever.
    pub handshakes: usize,
    /// `getaddr` requests received, ever.
    pub getaddrs: usize,
    /// Answers sent as `addrv2`.
    pub addrv2_answers: usize,
    /// Answers sent as `addr`.
    pub addr_answers: usize,
    /// The user agents of the peers that sent a `version`, in order.
    pub user_agents: Vec<String>,
}

/// A running scripted peer; it stops (and closes its connections) on drop.
pub struct AddrServer {
    addr: SocketAddr,
    handle: Handle,
    answers: Arc<Mutex<Vec<(AddrV2, u16)>>>,
    stats: Arc<(Mutex<Stats>, Condvar)>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AddrServer {
    /// A regtest server on `bind_ip` (a free port) that answers `getaddr`
    /// with `answers`.
    pub fn start(bind_ip: Ipv4Addr, answers: Vec<SocketAddr>) -> AddrServer {
        AddrServer::start_with(Options::new(bind_ip, answers))
    }

    /// A server as `options` say.
    pub fn start_with(options: Options) -> AddrServer {
        let mut config = Config::new(options.network);
        config.mode = Mode::Raw;
        config.listen.push(SocketAddr::from((options.bind_ip, 0)));
        let handle = peerlink::start(config).expect("start the addr server's reactor");
        let addr = handle.local_addrs()[0];
        let stats = Arc::new((Mutex::new(Stats::default()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let user_agent = options.user_agent.clone().unwrap_or_else(|| format!("/addr_server:{}/", options.bind_ip));
        let answers = Arc::new(Mutex::new(options.answers.clone()));
        let server = Server {
            handle: handle.clone(),
            options,
            answers: Arc::clone(&answers),
            user_agent,
            addr,
            peers: HashMap::new(),
            stats: Arc::clone(&stats),
        };
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name(format!("addr_server {addr}"))
                .spawn(move || server.run(&stop))
                .expect("spawn the addr server thread")
        };
        AddrServer { addr, handle, answers, stats, stop, thread: Some(thread) }
    }

    /// Replaces the addresses it answers `getaddr` with (for servers that
    /// must know each other: start them all, then tell each the others).
    pub fn set_answers(&self, answers: Vec<(AddrV2, u16)>) {
        *self.answers.lock().unwrap() = answers;
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A copy of its counters.
    pub fn stats(&self) -> Stats {
        self.stats.0.lock().unwrap().clone()
    }

    /// `getaddr` requests received so far.
    pub fn getaddr_count(&self) -> usize {
        self.stats().getaddrs
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.stats().open
    }

    /// Waits up to `timeout` until `pick` accepts the counters; returns
    /// whether it did.
    pub fn wait_for(&self, timeout: Duration, mut pick: impl FnMut(&Stats) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, changed) = &*self.stats;
        let mut stats = lock.lock().unwrap();
        loop {
            if pick(&stats) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            stats = changed.wait_timeout(stats, left).unwrap().0;
        }
    }

    /// Closes every connection it has now (the listener stays open).
    pub fn kill_connections(&self) {
        for info in self.handle.peers().unwrap_or_default() {
            let _ = self.handle.disconnect(info.peer, Disconnect::Now);
        }
    }

    /// Stops it: closes the listener and every connection.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
            && !std::thread::panicking()
        {
            panic!("the addr server thread panicked");
        }
        self.handle.shutdown();
    }
}

impl Drop for AddrServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// One connection's handshake progress.
#[derive(Debug, Default)]
struct Peer {
    version: bool,
    verack: bool,
    addrv2: bool,
}

struct Server {
    handle: Handle,
    options: Options,
    answers: Arc<Mutex<Vec<(AddrV2, u16)>>>,
    user_agent: String,
    addr: SocketAddr,
    peers: HashMap<PeerId, Peer>,
    stats: Arc<(Mutex<Stats>, Condvar)>,
}

impl Server {
    fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::SeqCst) {
            match self.handle.recv_timeout(POLL) {
                Ok(Event::Connected { peer, .. }) => {
                    self.peers.insert(peer, Peer::default());
                    self.update(|s| {
                        s.accepted += 1;
                        s.open += 1;
                    });
                }
                Ok(Event::Message { peer, message, .. }) => self.answer(peer, message),
                Ok(Event::Disconnected { peer, .. }) => {
                    if self.peers.remove(&peer).is_some() {
                        self.update(|s| s.open -= 1);
                    }
                }
                Ok(_) => {}
                Err(e) if e.is_timeout() => {}
                Err(_) => return,
            }
        }
    }

    fn update(&self, change: impl FnOnce(&mut Stats)) {
        let (lock, changed) = &*self.stats;
        change(&mut lock.lock().unwrap());
        changed.notify_all();
    }

    fn send(&self, peer: PeerId, message: NetworkMessage) {
        if let Err(refused) = self.handle.send(peer, message) {
            eprintln!("addr_server {}: cannot send to peer {peer}: {refused}", self.addr);
        }
    }

    fn answer(&mut self, peer: PeerId, message: NetworkMessage) {
        let Some(state) = self.peers.get_mut(&peer) else { return };
        match message {
            NetworkMessage::Version(version) if !state.version => {
                state.version = true;
                let ua = version.user_agent.clone();
                self.send(peer, NetworkMessage::Version(self.version(&version)));
                self.send(peer, NetworkMessage::SendAddrV2);
                self.send(peer, NetworkMessage::Verack);
                self.update(|s| s.user_agents.push(ua));
            }
            NetworkMessage::SendAddrV2 if !state.verack => state.addrv2 = true,
            NetworkMessage::Verack if state.version && !state.verack => {
                state.verack = true;
                self.update(|s| s.handshakes += 1);
            }
            NetworkMessage::Ping(nonce) => self.send(peer, NetworkMessage::Pong(nonce)),
            NetworkMessage::GetAddr => {
                let addrv2 = state.addrv2;
                self.update(|s| s.getaddrs += 1);
                if self.options.answer_getaddr {
                    self.answer_getaddr(peer, addrv2);
                }
            }
            _ => {}
        }
    }

    fn version(&self, theirs: &VersionMessage) -> VersionMessage {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        VersionMessage {
            version: 70016,
            services: self.options.services,
            timestamp: i64::try_from(now).unwrap_or(0),
            receiver: theirs.sender.clone(),
            sender: Address::new(&self.addr, self.options.services),
            nonce: rand_nonce(self.addr),
            user_agent: self.user_agent.clone(),
            start_height: 0,
            relay: false,
        }
    }

    fn answer_getaddr(&self, peer: PeerId, addrv2: bool) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let time = u32::try_from(now).unwrap_or(u32::MAX);
        let services = services();
        let answers = self.answers.lock().unwrap().clone();
        if addrv2 {
            let list = answers
                .iter()
                .map(|(addr, port)| AddrV2Message { time, services, addr: addr.clone(), port: *port })
                .collect();
            // Counted before it is sent: a test that has the answer may read the count.
            self.update(|s| s.addrv2_answers += 1);
            self.send(peer, NetworkMessage::AddrV2(list));
        } else {
            let list = answers
                .iter()
                .filter_map(|(addr, port)| {
                    let socket = match addr {
                        AddrV2::Ipv4(ip) => SocketAddr::from((*ip, *port)),
                        AddrV2::Ipv6(ip) => SocketAddr::from((*ip, *port)),
                        _ => return None,
                    };
                    Some((time, Address::new(&socket, services)))
                })
                .collect();
            // Counted before it is sent: a test that has the answer may read the count.
            self.update(|s| s.addr_answers += 1);
            self.send(peer, NetworkMessage::Addr(list));
        }
    }
}

/// A nonce that differs between servers (and from a client's random one).
fn rand_nonce(addr: SocketAddr) -> u64 {
    let ip = match addr {
        SocketAddr::V4(a) => u64::from(u32::from(*a.ip())),
        SocketAddr::V6(_) => 6,
    };
    0xadd5_0000_0000_0000 | (ip << 16) | u64::from(addr.port())
}
