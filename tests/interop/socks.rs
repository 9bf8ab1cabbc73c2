//! Sessions through a real SOCKS5 server, microsocks (Debian's `microsocks`
//! package), on loopback: to an in-process peerlink listener, to bcoin and
//! to Bitcoin Core, over v1 and v2, with and without username/password, and
//! to a host name that microsocks resolves.
//!
//! microsocks is found on `PATH`. When it is missing the tests say so on
//! stderr and return; `PEERLINK_REQUIRE_MICROSOCKS=1` (set by `.ci/run`)
//! makes that a failure. The Core tests also need `BITCOIND_EXE`
//! ([`crate::bitcoind`]).
//!
//! What microsocks 1.0.3 does, as these tests pin it down:
//! - without `-u` it accepts method 0x00 only: an offer of 0x02 alone (what
//!   we send with credentials, [`ProxyAuth::Isolated`] included) is answered
//!   with 0xFF;
//! - with `-u USER -P PASS` it accepts method 0x02 only and checks the
//!   password (RFC 1929 status 2 when wrong);
//! - it logs `client[N] IP: connected to HOST:PORT` on stderr, HOST as
//!   requested (a name stays a name: microsocks resolves it).

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::time::{Duration, Instant};

use bitcoin::hashes::Hash as _;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_blockdata::Inventory;
use peerlink::codec::Transport;
use peerlink::error::Report;
use peerlink::socks5::{Credentials, Proxy, ProxyAuth, ProxyError, ProxyFailure, Socks5Error};
use peerlink::wire::TransportPolicy;
use peerlink::{Config, ConnectError, Direction, Event, Handle, PeerId, PeerInfo, Target};
use serde_json::{Value, json};

use crate::bcoin::Bcoin;
use crate::bitcoind::Bitcoind;
use crate::common::{Rpc as _, WAIT, config, wait_for, wait_message, wait_ready};

/// `1` turns a missing microsocks into a failure.
pub const REQUIRE_VAR: &str = "PEERLINK_REQUIRE_MICROSOCKS";

/// The program's name, looked up on `PATH`.
const PROGRAM: &str = "microsocks";

/// How to get microsocks on Debian or Ubuntu.
const HOW_TO_INSTALL: &str = "apt-get install -y microsocks";

/// Time allowed for microsocks to listen. Only reached when something is
/// broken.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause between two probes of its port while it starts (a refused
/// connection returns at once); cut short when microsocks exits.
const PROBE_INTERVAL: Duration = Duration::from_millis(10);

/// Attempts to start microsocks when the port we picked was taken meanwhile
/// (between closing our probe listener and microsocks binding it).
const START_ATTEMPTS: usize = 3;

/// What microsocks prints when its port is taken (`server_setup: Address
/// already in use`).
const PORT_TAKEN: &str = "Address already in use";

/// Not the session's nonce (it draws from a random seed), so the pong is
/// delivered to us.
const NONCE: u64 = 0x736f_636b_7335_0001;

/// microsocks on `PATH`, or `None` after saying on stderr that `test` did
/// not run. Panics instead when `PEERLINK_REQUIRE_MICROSOCKS=1`.
fn exe(test: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(exe) = std::env::split_paths(&path).map(|dir| dir.join(PROGRAM)).find(|p| p.is_file()) {
        return Some(exe);
    }
    if std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1") {
        panic!("{REQUIRE_VAR}=1 but {PROGRAM} is not on PATH: cannot run {test}. Install it with: {HOW_TO_INSTALL}");
    }
    // Straight to the process's stderr: `eprintln!` output of a passing test
    // is captured and never shown.
    static BANNER: Once = Once::new();
    let mut stderr = std::io::stderr().lock();
    BANNER.call_once(|| {
        let _ = writeln!(
            stderr,
            "\n*** The SOCKS5 interop tests DID NOT RUN: {PROGRAM} is not on PATH.\n\
             *** Install it with:\n***     {HOW_TO_INSTALL}\n\
             *** (.ci/run installs it and sets {REQUIRE_VAR}=1, which makes a missing {PROGRAM} a failure.)\n"
        );
    });
    let _ = writeln!(stderr, "*** not run (no {PROGRAM}): {test}");
    None
}

/// The lines microsocks printed, and whether its stderr reached EOF (it
/// exited).
#[derive(Default)]
struct Log {
    lines: Vec<String>,
    closed: bool,
}

/// The states of a TCP socket that matter here (`/proc/net/tcp`'s `st`:
/// 01 and 0A).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TcpState {
    Established,
    Listen,
    Other,
}

/// [`Log`] with a condition variable signalled on each line and on EOF.
type SharedLog = Arc<(Mutex<Log>, Condvar)>;

/// A running microsocks on a free loopback port. Dropping it kills the
/// process (also when the test panics).
pub struct Microsocks {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    log: SharedLog,
}

impl Microsocks {
    /// microsocks without authentication (it then accepts method 0x00 only),
    /// or `None` when it is not installed (see the module docs).
    pub fn start() -> Option<Microsocks> {
        Microsocks::start_with(None)
    }

    /// microsocks that requires `user` and `password` (RFC 1929), or
    /// `None` when it is not installed.
    pub fn with_password(user: &str, password: &str) -> Option<Microsocks> {
        Microsocks::start_with(Some((user, password)))
    }

    fn start_with(credentials: Option<(&str, &str)>) -> Option<Microsocks> {
        let test = std::thread::current().name().unwrap_or("a SOCKS5 test").to_owned();
        let exe = exe(&test)?;
        for attempt in 1..=START_ATTEMPTS {
            let port = {
                let probe = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a loopback port");
                probe.local_addr().expect("bound listener has an address").port()
            };
            match Microsocks::try_start(&exe, port, credentials) {
                Ok(proxy) => return Some(proxy),
                Err(log) if attempt < START_ATTEMPTS => {
                    eprintln!("microsocks could not bind its port (attempt {attempt}), retrying:\n{log}");
                }
                Err(log) => panic!("microsocks could not bind its port {START_ATTEMPTS} times:\n{log}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// One start on `port`. `Err` (with its output) only when the port was
    /// taken.
    fn try_start(exe: &Path, port: u16, credentials: Option<(&str, &str)>) -> Result<Microsocks, String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut command = Command::new(exe);
        command.args(["-i", "127.0.0.1", "-p", &port.to_string()]);
        if let Some((user, password)) = credentials {
            command.args(["-u", user, "-P", password]);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {} ({e})", exe.display()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let log: SharedLog = Arc::default();
        let shared = Arc::clone(&log);
        std::thread::spawn(move || {
            let (lock, changed) = &*shared;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("microsocks: {line}");
                lock.lock().expect("log lock").lines.push(line);
                changed.notify_all();
            }
            lock.lock().expect("log lock").closed = true;
            changed.notify_all();
        });
        let mut proxy = Microsocks { child, addr, log };

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            // Ours: a connection accepted by whoever else holds the port
            // would not do.
            if proxy.listens() && TcpStream::connect(addr).is_ok() {
                return Ok(proxy);
            }
            let (lock, changed) = &*proxy.log;
            let log = lock.lock().expect("log lock");
            let left = deadline.saturating_duration_since(Instant::now());
            let (log, _) =
                changed.wait_timeout_while(log, PROBE_INTERVAL.min(left), |log| !log.closed).expect("log lock");
            if log.closed {
                let text = log.lines.join("\n");
                drop(log);
                let status = proxy.child.wait().expect("wait for microsocks");
                if text.contains(PORT_TAKEN) {
                    return Err(text);
                }
                panic!("microsocks exited during start-up ({status}):\n{text}");
            }
            if left.is_zero() {
                panic!("microsocks does not accept connections on {addr} after {READY_TIMEOUT:?}");
            }
        }
    }

    /// A proxy config for it, authenticating with `auth`.
    pub fn proxy(&self, auth: ProxyAuth) -> Proxy {
        Proxy { addr: self.addr, auth }
    }

    /// Waits until microsocks has logged a line containing `needle`;
    /// returns it.
    pub fn wait_log(&self, needle: &str) -> String {
        self.wait_log_lines(needle, 1).remove(0)
    }

    /// Waits until microsocks has logged `n` lines containing `needle`;
    /// returns those seen by then (at least `n`).
    pub fn wait_log_lines(&self, needle: &str, n: usize) -> Vec<String> {
        let (lock, changed) = &*self.log;
        let matching = |log: &Log| log.lines.iter().filter(|l| l.contains(needle)).cloned().collect::<Vec<_>>();
        let log = lock.lock().expect("log lock");
        let (log, _) =
            changed.wait_timeout_while(log, WAIT, |log| matching(log).len() < n && !log.closed).expect("log lock");
        let lines = matching(&log);
        assert!(lines.len() >= n, "microsocks did not log {n} x {needle:?} within {WAIT:?}: {:#?}", log.lines);
        lines
    }

    /// microsocks' IPv4 TCP sockets as (state, local end, remote end),
    /// read from Linux's `/proc`: the process's socket inodes
    /// (`/proc/PID/fd`) matched against its network namespace's TCP table
    /// (`/proc/PID/net/tcp`).
    fn sockets(&self) -> std::io::Result<Vec<(TcpState, SocketAddr, SocketAddr)>> {
        let proc = PathBuf::from(format!("/proc/{}", self.child.id()));
        let mut inodes = HashSet::new();
        for fd in std::fs::read_dir(proc.join("fd"))? {
            if let Ok(link) = std::fs::read_link(fd?.path())
                && let Some(inode) = link.to_str().and_then(|l| l.strip_prefix("socket:[")?.strip_suffix(']'))
            {
                inodes.insert(inode.to_owned());
            }
        }
        let table = std::fs::read_to_string(proc.join("net").join("tcp"))?;
        let mut sockets = Vec::new();
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when
        // retrnsmt uid timeout inode ...
        for line in table.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [_, ours, theirs, state, _, _, _, _, _, inode, ..] = fields.as_slice() else {
                panic!("unexpected line in /proc/net/tcp: {line:?}");
            };
            if inodes.contains(*inode) {
                let state = match *state {
                    "01" => TcpState::Established,
                    "0A" => TcpState::Listen,
                    _ => TcpState::Other,
                };
                sockets.push((state, proc_tcp_addr(ours), proc_tcp_addr(theirs)));
            }
        }
        Ok(sockets)
    }

    /// Whether microsocks itself (not some other process that took the
    /// port) listens on its address.
    fn listens(&self) -> bool {
        let sockets = self.sockets().unwrap_or_default();
        sockets.iter().any(|(state, local, _)| *state == TcpState::Listen && *local == self.addr)
    }

    /// The local ends of microsocks' established TCP connections to
    /// `remote` (an IPv4 address).
    pub fn connections_to(&self, remote: SocketAddr) -> Vec<SocketAddr> {
        let sockets = self.sockets().unwrap_or_else(|e| panic!("microsocks' sockets in /proc: {e}"));
        sockets
            .into_iter()
            .filter(|(state, _, theirs)| *state == TcpState::Established && *theirs == remote)
            .map(|(_, ours, _)| ours)
            .collect()
    }

    /// The one connection microsocks holds to `remote`: its local end,
    /// which is the address `remote` sees the proxied connection come from.
    /// Waits (polling `/proc`, bounded by [`WAIT`]) while there are more,
    /// as after a v1 fallback: microsocks closes the abandoned connection
    /// to `remote` only once it reads our close.
    pub fn outgoing_to(&self, remote: SocketAddr) -> SocketAddr {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.connections_to(remote).as_slice() {
                [one] => return *one,
                [] => panic!("microsocks has no connection to {remote}"),
                more if Instant::now() >= deadline => {
                    panic!("microsocks still has {} connections to {remote} after {WAIT:?}: {more:?}", more.len())
                }
                _ => std::thread::sleep(PROBE_INTERVAL),
            }
        }
    }
}

impl Drop for Microsocks {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An IPv4 `ADDR:PORT` of `/proc/net/tcp`: the address as the kernel's
/// native-endian `u32` of the network-order bytes, the port in host order,
/// both in hex.
fn proc_tcp_addr(text: &str) -> SocketAddr {
    let parsed = text.split_once(':').and_then(|(ip, port)| {
        let ip = u32::from_str_radix(ip, 16).ok()?;
        let port = u16::from_str_radix(port, 16).ok()?;
        Some(SocketAddr::from((Ipv4Addr::from(ip.to_ne_bytes()), port)))
    });
    parsed.unwrap_or_else(|| panic!("not an IPv4 address of /proc/net/tcp: {text:?}"))
}

/// The retry of [`Microsocks::start`] rests on this: on a taken port
/// microsocks exits at once and says why.
#[test]
fn microsocks_on_a_taken_port_is_told_apart() {
    let Some(exe) = exe("socks::microsocks_on_a_taken_port_is_told_apart") else { return };
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a loopback port");
    let port = taken.local_addr().expect("bound listener has an address").port();
    match Microsocks::try_start(&exe, port, None) {
        Err(log) => assert!(log.contains(PORT_TAKEN), "{log}"),
        Ok(proxy) => panic!("microsocks started on the taken port {}", proxy.addr),
    }
}

#[test]
fn proc_tcp_addresses_parse() {
    // The kernel prints `__be32` as a native `u32` with `%08X`.
    let ip = u32::from_ne_bytes([127, 0, 0, 1]);
    let text = format!("{ip:08X}:1F90");
    assert_eq!(proc_tcp_addr(&text), "127.0.0.1:8080".parse().expect("valid address"));
}

/// A session config under `transport` whose connections go through
/// `proxy`.
fn proxied(proxy: Proxy, transport: TransportPolicy) -> Config {
    let mut config = config();
    config.transport = transport;
    config.proxy = Some(proxy);
    config
}

/// An in-process session listener on a free loopback port.
fn listener(transport: TransportPolicy) -> (Handle, SocketAddr) {
    let mut config = config();
    config.transport = transport;
    config.listen.push(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    let handle = peerlink::start(config).expect("start listener");
    let addr = handle.local_addrs()[0];
    (handle, addr)
}

/// How the connection `id` ended up: `Ready` or `ConnectFailed`. Panics on
/// a disconnect and after [`WAIT`].
fn outcome(handle: &Handle, id: PeerId) -> Result<PeerInfo, ConnectError> {
    let deadline = Instant::now() + WAIT;
    let mut skipped = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = handle
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no Ready or ConnectFailed for {id} within {WAIT:?}; seen: {skipped:#?}"));
        match event {
            Event::Ready { peer, info } if peer == id => return Ok(*info),
            Event::ConnectFailed { peer, error, .. } if peer == id => return Err(error),
            Event::Disconnected { peer, reason } if peer == id => {
                panic!("{id} disconnected before Ready: {}", Report(&reason))
            }
            other => skipped.push(format!("{other:?}")),
        }
    }
}

/// Connects to `target` and waits for `Ready`.
fn ready(handle: &Handle, target: impl Into<Target>) -> (PeerId, PeerInfo) {
    let target = target.into();
    let id = handle.connect(target.clone()).expect("reactor running");
    match outcome(handle, id) {
        Ok(info) => (id, info),
        Err(error) => panic!("connecting to {target} failed: {}", Report(&error)),
    }
}

/// Connects to `target` and returns why it failed.
fn failure(handle: &Handle, target: impl Into<Target>) -> ConnectError {
    let target = target.into();
    let id = handle.connect(target.clone()).expect("reactor running");
    match outcome(handle, id) {
        Ok(info) => panic!("connected to {target} through {:?}: {info:?}", info.proxy),
        Err(error) => error,
    }
}

/// What every proxied outbound session shows.
fn check_proxied(info: &PeerInfo, proxy: &Microsocks, target: &Target) {
    assert!(info.ready);
    assert_eq!(info.direction, Direction::Outbound);
    assert_eq!(info.proxy, Some(proxy.addr), "the peer info names the proxy");
    assert_eq!(info.addr, proxy.addr, "the TCP connection is to the proxy");
    assert_eq!(&info.target, target, "the target is what was dialled");
    assert!(info.version.is_some(), "Ready carries the peer's version");
}

/// A ping of ours comes back as its pong through the proxy.
fn ping_round_trip(handle: &Handle, peer: PeerId) {
    handle.send(peer, NetworkMessage::Ping(NONCE)).expect("reactor running");
    wait_message(handle, peer, "the pong to our ping", |m| matches!(m, NetworkMessage::Pong(NONCE)).then_some(()));
}

/// An `inv` the client sends to `peer` arrives at the server as `theirs`
/// (the session consumes pings and pongs, it passes an `inv` on).
fn inv_arrives(client: &Handle, peer: PeerId, server: &Handle, theirs: PeerId) {
    let inv = vec![Inventory::Transaction(bitcoin::Txid::from_byte_array([7; 32]))];
    client.send(peer, NetworkMessage::Inv(inv.clone())).expect("reactor running");
    let got = wait_message(server, theirs, "our inv at the listener", |m| match m {
        NetworkMessage::Inv(items) => Some(items.clone()),
        _ => None,
    });
    assert_eq!(got, inv);
}

/// Whether `transport` is what `policy` (V1Only or V2Only) asks for.
fn is(policy: TransportPolicy, transport: Transport) -> bool {
    match policy {
        TransportPolicy::V1Only => transport == Transport::V1,
        _ => matches!(transport, Transport::V2 { .. }),
    }
}

/// A session with an in-process listener through microsocks: both ends are
/// Ready, the listener sees the connection come from microsocks, and
/// messages go both ways.
fn session_to_listener(transport: TransportPolicy) {
    let Some(proxy) = Microsocks::start() else { return };
    let (server, addr) = listener(transport);
    let client = peerlink::start(proxied(proxy.proxy(ProxyAuth::None), transport)).expect("start client");
    let (peer, info) = ready(&client, addr);
    check_proxied(&info, &proxy, &Target::Socket(addr));
    assert!(is(transport, info.transport), "{transport}: {}", info.transport);
    proxy.wait_log(&format!("connected to {addr}"));

    let (theirs, their_info) = wait_ready(&server, "the listener's side of the proxied session");
    assert_eq!(their_info.direction, Direction::Inbound);
    assert_eq!(their_info.proxy, None);
    assert_eq!(their_info.addr, proxy.outgoing_to(addr), "the listener sees microsocks' connection");
    match (info.transport, their_info.transport) {
        (Transport::V2 { session_id: a }, Transport::V2 { session_id: b }) => assert_eq!(a, b, "one session id"),
        (ours, theirs) => assert_eq!(ours, theirs),
    }

    ping_round_trip(&client, peer);
    inv_arrives(&client, peer, &server, theirs);
}

#[test]
fn session_to_a_listener_over_v1() {
    session_to_listener(TransportPolicy::V1Only);
}

#[test]
fn session_to_a_listener_over_v2() {
    session_to_listener(TransportPolicy::V2Only);
}

/// A host name goes to microsocks as a name, microsocks resolves it and
/// connects: `localhost` reaches the listener on 127.0.0.1.
#[test]
fn a_host_name_is_resolved_by_microsocks() {
    let Some(proxy) = Microsocks::start() else { return };
    let (server, addr) = listener(TransportPolicy::V1Only);
    let client = peerlink::start(proxied(proxy.proxy(ProxyAuth::None), TransportPolicy::V1Only)).expect("start client");
    let target: Target = format!("localhost:{}", addr.port()).parse().expect("a host name target");
    assert!(matches!(target, Target::Domain { .. }), "{target:?}");
    let (peer, info) = ready(&client, target.clone());
    check_proxied(&info, &proxy, &target);
    // The request carried the name, not an address we looked up.
    proxy.wait_log(&format!("connected to localhost:{}", addr.port()));
    let (theirs, their_info) = wait_ready(&server, "the listener's side of the session to localhost");
    assert_eq!(their_info.addr, proxy.outgoing_to(addr));
    ping_round_trip(&client, peer);
    inv_arrives(&client, peer, &server, theirs);
}

/// bcoin's `getpeerinfo` entry whose `addr` is `addr`.
fn bcoin_peer(bcoin: &Bcoin, addr: SocketAddr) -> Value {
    let peers = bcoin.rpc("getpeerinfo", json!([]));
    let list = peers.as_array().unwrap_or_else(|| panic!("getpeerinfo returned {peers}"));
    list.iter()
        .find(|p| p["addr"] == addr.to_string())
        .unwrap_or_else(|| panic!("bcoin has no peer {addr}: {peers:#}"))
        .clone()
}

/// A session with bcoin through microsocks under `transport`; returns the
/// transport it ended up with (`None`: not run, no microsocks).
fn session_to_bcoin(transport: TransportPolicy) -> Option<Transport> {
    let proxy = Microsocks::start()?;
    let bcoin = Bcoin::start();
    let client = peerlink::start(proxied(proxy.proxy(ProxyAuth::None), transport)).expect("start client");
    let (peer, info) = ready(&client, bcoin.p2p);
    check_proxied(&info, &proxy, &Target::Socket(bcoin.p2p));
    let version = info.version.as_ref().expect("checked");
    assert!(version.user_agent.contains("bcoin"), "user agent {:?}", version.user_agent);
    ping_round_trip(&client, peer);
    let theirs = bcoin_peer(&bcoin, proxy.outgoing_to(bcoin.p2p));
    assert_eq!(theirs["inbound"], true, "{theirs:#}");
    // Each attempt is a CONNECT of its own: the v2 attempt and the v1 retry
    // of a fallback both go through the proxy.
    let attempts = if transport == TransportPolicy::V2Preferred { 2 } else { 1 };
    let connects = proxy.wait_log_lines(&format!("connected to {}", bcoin.p2p), attempts);
    assert_eq!(connects.len(), attempts, "{connects:#?}");
    eprintln!("bcoin through microsocks, {transport}: transport {}", info.transport);
    Some(info.transport)
}

#[test]
fn session_to_bcoin_over_v1() {
    if let Some(transport) = session_to_bcoin(TransportPolicy::V1Only) {
        assert_eq!(transport, Transport::V1);
    }
}

/// bcoin 1.0.2 has no BIP324: v2-preferred falls back to v1, through the
/// proxy again.
#[test]
fn session_to_bcoin_v2_preferred_falls_back_to_v1() {
    if let Some(transport) = session_to_bcoin(TransportPolicy::V2Preferred) {
        assert_eq!(transport, Transport::V1);
    }
}

/// A session with Core through microsocks under `transport` (V1Only or
/// V2Only); Core's `getpeerinfo` shows it, coming from microsocks.
fn session_to_core(transport: TransportPolicy) {
    let Some(proxy) = Microsocks::start() else { return };
    let Some(core) = Bitcoind::start() else { return };
    let config = proxied(proxy.proxy(ProxyAuth::None), transport);
    let services = config.local_services();
    let client = peerlink::start(config).expect("start client");
    let (peer, info) = ready(&client, core.p2p);
    check_proxied(&info, &proxy, &Target::Socket(core.p2p));
    let from = proxy.outgoing_to(core.p2p);
    let theirs = crate::core::core_peer(&core, from);
    assert_eq!(theirs["inbound"], true, "{theirs:#}");
    assert_eq!(theirs["connection_type"], "inbound", "{theirs:#}");
    crate::core::check_session(&info, &theirs, services, transport);
    let peers = core.rpc("getpeerinfo", json!([]));
    assert_eq!(peers.as_array().map(Vec::len), Some(1), "one connection, from microsocks: {peers:#}");
    ping_round_trip(&client, peer);
    eprintln!("Core through microsocks, {transport}: transport {}, Core sees {from}", info.transport);
}

#[test]
fn session_to_core_over_v1() {
    session_to_core(TransportPolicy::V1Only);
}

#[test]
fn session_to_core_over_v2() {
    session_to_core(TransportPolicy::V2Only);
}

/// The typed username/password rejection, naming the proxy.
fn assert_rejected(error: &ConnectError, proxy: &Microsocks) {
    match error {
        ConnectError::Proxy(ProxyError {
            proxy: at,
            kind: ProxyFailure::Socks5(Socks5Error::AuthFailed { status }),
        }) => {
            assert_eq!(*at, proxy.addr);
            // microsocks answers a wrong password with EC_NOT_ALLOWED.
            assert_eq!(*status, 2);
        }
        other => panic!("expected a rejection of the credentials, got {other:?}"),
    }
    assert_eq!(Report(error).to_string(), format!("proxy {}: username and password rejected", proxy.addr));
}

/// microsocks `-u alice -P secret`: the right fixed credentials get a
/// session; wrong ones, and isolation's per-connection credentials (which
/// microsocks checks like any others), are rejected; no authentication at
/// all is refused at the method selection.
#[test]
fn a_password_protected_microsocks_checks_the_credentials() {
    let Some(proxy) = Microsocks::with_password("alice", "secret") else { return };
    let (server, addr) = listener(TransportPolicy::V1Only);
    let fixed =
        |user: &str, password: &str| ProxyAuth::Fixed(Credentials::new(user, password).expect("valid credentials"));

    let right =
        peerlink::start(proxied(proxy.proxy(fixed("alice", "secret")), TransportPolicy::V1Only)).expect("start client");
    let (peer, info) = ready(&right, addr);
    check_proxied(&info, &proxy, &Target::Socket(addr));
    wait_ready(&server, "the listener's side of the authenticated session");
    ping_round_trip(&right, peer);
    // The same, parsed as a `-proxy` option with credentials.
    let parsed: Proxy = format!("alice:secret@{}", proxy.addr).parse().expect("a proxy with credentials");
    assert_eq!(parsed, proxy.proxy(fixed("alice", "secret")));

    for auth in [fixed("alice", "wrong"), fixed("bob", "secret")] {
        let client = peerlink::start(proxied(proxy.proxy(auth), TransportPolicy::V1Only)).expect("start client");
        assert_rejected(&failure(&client, addr), &proxy);
    }

    // The default: fresh `{hex}-{n}` credentials per connection.
    let isolated: Proxy = proxy.addr.to_string().parse().expect("a proxy address");
    assert_eq!(isolated.auth, ProxyAuth::Isolated);
    let client = peerlink::start(proxied(isolated, TransportPolicy::V1Only)).expect("start client");
    for _ in 0..2 {
        assert_rejected(&failure(&client, addr), &proxy);
    }

    let client = peerlink::start(proxied(proxy.proxy(ProxyAuth::None), TransportPolicy::V1Only)).expect("start");
    let error = failure(&client, addr);
    assert!(
        matches!(
            &error,
            ConnectError::Proxy(ProxyError {
                kind: ProxyFailure::Socks5(Socks5Error::NoAcceptableMethod { offered_password: false }),
                ..
            })
        ),
        "{error:?}"
    );
    assert_eq!(Report(&error).to_string(), format!("proxy {}: authentication required", proxy.addr));
    // Only the one good session reached the listener.
    assert_eq!(server.peers().expect("reactor running").len(), 1);
}

/// microsocks without `-u` accepts method 0x00 only. We offer 0x02 alone
/// whenever we have credentials, so the default (isolation) and fixed
/// credentials are refused at the method selection, with a typed error;
/// `ProxyAuth::None` gets through (the session tests above).
#[test]
fn microsocks_without_auth_takes_isolation_and_refuses_fixed_credentials() {
    let Some(proxy) = Microsocks::start() else { return };
    let (server, addr) = listener(TransportPolicy::V1Only);
    // Fixed credentials offer username/password alone: refused.
    let fixed = ProxyAuth::Fixed(Credentials::new("alice", "secret").expect("valid credentials"));
    let client = peerlink::start(proxied(proxy.proxy(fixed), TransportPolicy::V1Only)).expect("start");
    let error = failure(&client, addr);
    match &error {
        ConnectError::Proxy(ProxyError {
            proxy: at,
            kind: ProxyFailure::Socks5(Socks5Error::NoAcceptableMethod { offered_password: true }),
        }) => assert_eq!(*at, proxy.addr),
        other => panic!("expected no acceptable method, got {other:?}"),
    }
    assert_eq!(
        Report(&error).to_string(),
        format!("proxy {}: username/password authentication not accepted", proxy.addr)
    );
    // Isolation, the default, offers none and username/password as Core
    // does (microsocks picks none), and no authentication at all works too.
    for auth in [ProxyAuth::Isolated, ProxyAuth::None] {
        let client = peerlink::start(proxied(proxy.proxy(auth.clone()), TransportPolicy::V1Only)).expect("start");
        let (_, info) = ready(&client, addr);
        check_proxied(&info, &proxy, &Target::Socket(addr));
        wait_for(&server, "the session without authentication at the listener", |e| {
            matches!(e, Event::Ready { .. }).then_some(())
        });
    }
}
