//! A scripted, in-process SOCKS5 server (RFC 1928, with RFC 1929
//! username/password authentication) for testing peerlink's proxy support,
//! and a [`LeakListener`] that counts connections which should never come.
//!
//! Std only: blocking sockets and threads, loopback only. The server binds
//! `127.0.0.1:0`; one thread accepts, and each connection (except a
//! black-holed one) is served by a thread of its own. Every blocking read and
//! write has a short timeout, after which the thread checks whether the
//! server was dropped, so no thread outlives the server for long. Malformed
//! input from a client closes its connection.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How long a blocking read or write waits before checking for a stop.
const POLL: Duration = Duration::from_millis(100);
/// Bound on the server's outgoing connection attempts (all on loopback).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// RFC 1928 reply codes.
pub mod reply {
    /// Succeeded.
    pub const SUCCEEDED: u8 = 0x00;
    /// General SOCKS server failure.
    pub const GENERAL_FAILURE: u8 = 0x01;
    /// Connection not allowed by ruleset.
    pub const NOT_ALLOWED: u8 = 0x02;
    /// Network unreachable.
    pub const NETWORK_UNREACHABLE: u8 = 0x03;
    /// Host unreachable.
    pub const HOST_UNREACHABLE: u8 = 0x04;
    /// Connection refused.
    pub const CONNECTION_REFUSED: u8 = 0x05;
    /// TTL expired.
    pub const TTL_EXPIRED: u8 = 0x06;
    /// Command not supported.
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x07;
    /// Address type not supported.
    pub const ADDRESS_TYPE_NOT_SUPPORTED: u8 = 0x08;
}

/// Method 0x00: no authentication required.
pub const METHOD_NONE: u8 = 0x00;
/// Method 0x02: username/password (RFC 1929).
pub const METHOD_PASSWORD: u8 = 0x02;
/// Method selection answer: no acceptable method.
pub const METHOD_UNACCEPTABLE: u8 = 0xFF;

/// What the server accepts in the method selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// Accepts method 0x00 only (answers 0xFF, then closes, if it is not
    /// offered).
    NoneOnly,
    /// Accepts method 0x02 only (0xFF otherwise), and only these credentials:
    /// a mismatch gets RFC 1929 status 0x01, then the connection is closed.
    Password {
        /// The only username accepted.
        username: Vec<u8>,
        /// The only password accepted.
        password: Vec<u8>,
    },
    /// Accepts method 0x02 with any credentials (like Tor, which uses them to
    /// isolate circuits); if 0x02 is not offered, accepts 0x00.
    AnyPassword,
}

/// What the server does with a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// Connects to the target (or to [`Options::forward`] if set), answers
    /// success with the outgoing socket's local address, and relays bytes
    /// both ways until either side closes. A target it cannot reach gets
    /// reply 0x05 if a connection was refused, 0x04 otherwise.
    Relay,
    /// Accepts the TCP connection and never reads or writes anything; the
    /// socket stays open until the server is dropped. Black-holed sockets are
    /// held by the accept thread (no thread per connection).
    BlackHole,
    /// Answers the method selection (and authentication), reads and records
    /// the CONNECT request, then never answers it; the connection stays open
    /// until the client closes it or the server is dropped.
    SilentAfterGreeting,
    /// Completes method selection and authentication, reads the CONNECT
    /// request and answers it with this (non-zero) reply code and a
    /// `0.0.0.0:0` bound address, then closes.
    Reply(u8),
    /// Reads the greeting, then closes without answering.
    CloseAfterGreeting,
}

/// How the server behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// The methods and credentials accepted.
    pub auth: Auth,
    /// What happens after the greeting.
    pub behaviour: Behaviour,
    /// With [`Behaviour::Relay`], connect here whatever the requested target.
    pub forward: Option<SocketAddr>,
    /// With [`Behaviour::Relay`], names the proxy resolves from this table
    /// (a name → where to connect) before asking the system resolver: a
    /// test's stand-in for the proxy's DNS.
    pub hosts: Vec<(String, SocketAddr)>,
    /// Waited before each reply the server sends.
    pub delay: Duration,
}

impl Default for Options {
    /// [`Auth::AnyPassword`], [`Behaviour::Relay`], no forward, no delay.
    fn default() -> Options {
        Options {
            auth: Auth::AnyPassword,
            behaviour: Behaviour::Relay,
            forward: None,
            hosts: Vec::new(),
            delay: Duration::ZERO,
        }
    }
}

/// The destination of a CONNECT request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestedTarget {
    /// ATYP 1 or 4.
    Ip(IpAddr),
    /// ATYP 3: a name for the proxy to resolve.
    Name(String),
}

/// A CONNECT request the server read, with what came before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The methods offered in the greeting, in order.
    pub methods: Vec<u8>,
    /// The RFC 1929 username and password, if that method was used.
    pub credentials: Option<(Vec<u8>, Vec<u8>)>,
    /// The requested destination.
    pub target: RequestedTarget,
    /// The requested port.
    pub port: u16,
}

/// A SOCKS5 server on `127.0.0.1`, serving until it is dropped.
pub struct SocksServer {
    acceptor: Acceptor,
}

impl SocksServer {
    /// Binds `127.0.0.1:0` and starts serving. Panics if it cannot bind, or
    /// on `Behaviour::Reply(0)`.
    pub fn start(options: Options) -> SocksServer {
        assert!(options.behaviour != Behaviour::Reply(reply::SUCCEEDED), "Behaviour::Reply needs a failure code");
        let options = Arc::new(options);
        let black_hole = options.behaviour == Behaviour::BlackHole;
        let mut black_holed = Vec::new();
        let acceptor = Acceptor::start(IpAddr::V4(Ipv4Addr::LOCALHOST), "socks-accept", move |stream, shared| {
            if black_hole {
                black_holed.push(stream);
                return;
            }
            let options = Arc::clone(&options);
            let shared = Arc::clone(shared);
            // A connection the machine has no thread for is dropped (closed).
            let _ = thread::Builder::new().name("socks-conn".into()).spawn(move || {
                let _ = serve(stream, &options, &shared);
            });
        });
        SocksServer { acceptor }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.acceptor.addr
    }

    /// How many TCP connections the server has accepted so far.
    pub fn accepted(&self) -> usize {
        self.acceptor.shared.lock().accepted
    }

    /// Waits until at least `n` connections were accepted, or `timeout`;
    /// returns the count then.
    pub fn wait_accepted(&self, n: usize, timeout: Duration) -> usize {
        self.acceptor.shared.wait(timeout, |state| state.accepted >= n).accepted
    }

    /// Every CONNECT request read so far, in arrival order (each is recorded
    /// before it is answered).
    pub fn requests(&self) -> Vec<Request> {
        self.acceptor.shared.lock().requests.clone()
    }

    /// Waits until at least `n` CONNECT requests were read, or `timeout`;
    /// returns those read by then.
    pub fn wait_requests(&self, n: usize, timeout: Duration) -> Vec<Request> {
        self.acceptor.shared.wait(timeout, |state| state.requests.len() >= n).requests.clone()
    }
}

/// A listener standing where a leak would land (e.g. `127.0.0.2`): counts
/// every TCP connection it accepts, and closes each at once.
pub struct LeakListener {
    acceptor: Acceptor,
}

impl LeakListener {
    /// Binds `ip` on an ephemeral port. Panics if it cannot bind.
    pub fn bind(ip: IpAddr) -> LeakListener {
        LeakListener { acceptor: Acceptor::start(ip, "leak-accept", |stream, _| drop(stream)) }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.acceptor.addr
    }

    /// How many TCP connections it has accepted so far.
    pub fn accepted(&self) -> usize {
        self.acceptor.shared.lock().accepted
    }

    /// Waits until at least `n` connections were accepted, or `timeout`;
    /// returns the count then.
    pub fn wait_accepted(&self, n: usize, timeout: Duration) -> usize {
        self.acceptor.shared.wait(timeout, |state| state.accepted >= n).accepted
    }
}

/// What the threads of one server share.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    accepted: usize,
    requests: Vec<Request>,
    stopped: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking connection thread must not take the test down with it.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        change(&mut self.lock());
        self.changed.notify_all();
    }

    fn wait(&self, timeout: Duration, done: impl Fn(&State) -> bool) -> MutexGuard<'_, State> {
        let guard = self.lock();
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, timeout, |state| !done(state))
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        guard
    }

    fn stopped(&self) -> bool {
        self.lock().stopped
    }

    /// Waits `delay` unless the server stops first; false if it stopped.
    fn pause(&self, delay: Duration) -> bool {
        if delay.is_zero() {
            return !self.stopped();
        }
        !self.wait(delay, |state| state.stopped).stopped
    }
}

/// A listener and the thread accepting on it; dropping it stops the thread
/// (and drops the accept callback, with whatever sockets it holds).
struct Acceptor {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Acceptor {
    fn start(ip: IpAddr, name: &str, mut on_accept: impl FnMut(TcpStream, &Arc<Shared>) + Send + 'static) -> Acceptor {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).unwrap_or_else(|e| panic!("bind {ip}: {e}"));
        let addr = listener.local_addr().expect("listener address");
        let shared = Arc::new(Shared::default());
        let thread_shared = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                loop {
                    let accepted = listener.accept();
                    if thread_shared.stopped() {
                        break;
                    }
                    match accepted {
                        Ok((stream, _)) => {
                            thread_shared.update(|state| state.accepted += 1);
                            on_accept(stream, &thread_shared);
                        }
                        // E.g. out of descriptors: back off instead of spinning.
                        Err(_) => {
                            if !thread_shared.pause(Duration::from_millis(10)) {
                                break;
                            }
                        }
                    }
                }
            })
            .expect("spawn the accept thread");
        Acceptor { addr, shared, thread: Some(thread) }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.shared.update(|state| state.stopped = true);
        // Unblocks the accept; the thread sees the stop and ends.
        let _ = TcpStream::connect_timeout(&self.addr, CONNECT_TIMEOUT);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
            && !thread::panicking()
        {
            panic!("the accept thread panicked");
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted)
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Fills `buf`, reading through timeouts until the server stops.
fn read_full(stream: &mut TcpStream, buf: &mut [u8], shared: &Shared) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e) if is_timeout(&e) && !shared.stopped() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn read_vec(stream: &mut TcpStream, len: usize, shared: &Shared) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; len];
    read_full(stream, &mut buf, shared)?;
    Ok(buf)
}

fn read_u8(stream: &mut TcpStream, shared: &Shared) -> io::Result<u8> {
    let mut byte = [0];
    read_full(stream, &mut byte, shared)?;
    Ok(byte[0])
}

/// Writes all of `bytes`, writing through timeouts until the server stops.
fn write_full(stream: &mut TcpStream, mut bytes: &[u8], shared: &Shared) -> io::Result<()> {
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if is_timeout(&e) && !shared.stopped() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends one reply after [`Options::delay`].
fn answer(stream: &mut TcpStream, bytes: &[u8], options: &Options, shared: &Shared) -> io::Result<()> {
    if !shared.pause(options.delay) {
        return Err(io::ErrorKind::Interrupted.into());
    }
    write_full(stream, bytes, shared)
}

/// A CONNECT reply with this code and a `0.0.0.0:0` bound address.
fn failure(code: u8) -> [u8; 10] {
    [5, code, 0, 1, 0, 0, 0, 0, 0, 0]
}

fn choose_method(auth: &Auth, offered: &[u8]) -> Option<u8> {
    let offers = |method| offered.contains(&method);
    match auth {
        Auth::NoneOnly => offers(METHOD_NONE).then_some(METHOD_NONE),
        Auth::Password { .. } => offers(METHOD_PASSWORD).then_some(METHOD_PASSWORD),
        Auth::AnyPassword if offers(METHOD_PASSWORD) => Some(METHOD_PASSWORD),
        Auth::AnyPassword => offers(METHOD_NONE).then_some(METHOD_NONE),
    }
}

/// Serves one (not black-holed) connection; an error just closes it.
fn serve(mut client: TcpStream, options: &Options, shared: &Arc<Shared>) -> io::Result<()> {
    client.set_read_timeout(Some(POLL))?;
    client.set_write_timeout(Some(POLL))?;
    client.set_nodelay(true)?;

    // Greeting: VER NMETHODS METHODS.
    let mut head = [0; 2];
    read_full(&mut client, &mut head, shared)?;
    if head[0] != 5 {
        return Err(malformed("greeting version"));
    }
    let methods = read_vec(&mut client, head[1].into(), shared)?;
    if options.behaviour == Behaviour::CloseAfterGreeting {
        return Ok(());
    }
    let Some(method) = choose_method(&options.auth, &methods) else {
        return answer(&mut client, &[5, METHOD_UNACCEPTABLE], options, shared);
    };
    answer(&mut client, &[5, method], options, shared)?;

    // RFC 1929: VER ULEN UNAME PLEN PASSWD.
    let credentials = if method == METHOD_PASSWORD {
        read_full(&mut client, &mut head, shared)?;
        if head[0] != 1 {
            return Err(malformed("authentication version"));
        }
        let username = read_vec(&mut client, head[1].into(), shared)?;
        let len = read_u8(&mut client, shared)?;
        let password = read_vec(&mut client, len.into(), shared)?;
        let accepted = match &options.auth {
            Auth::Password { username: expected_user, password: expected_password } => {
                username == *expected_user && password == *expected_password
            }
            Auth::NoneOnly | Auth::AnyPassword => true,
        };
        answer(&mut client, &[1, if accepted { 0 } else { 1 }], options, shared)?;
        if !accepted {
            return Ok(());
        }
        Some((username, password))
    } else {
        None
    };

    // Request: VER CMD RSV ATYP DST.ADDR DST.PORT.
    let mut head = [0; 4];
    read_full(&mut client, &mut head, shared)?;
    if head[0] != 5 || head[2] != 0 {
        return Err(malformed("request header"));
    }
    if head[1] != 1 {
        return answer(&mut client, &failure(reply::COMMAND_NOT_SUPPORTED), options, shared);
    }
    let target = match head[3] {
        1 => {
            let mut octets = [0; 4];
            read_full(&mut client, &mut octets, shared)?;
            RequestedTarget::Ip(Ipv4Addr::from(octets).into())
        }
        3 => {
            let len = read_u8(&mut client, shared)?;
            let name = read_vec(&mut client, len.into(), shared)?;
            RequestedTarget::Name(String::from_utf8(name).map_err(|_| malformed("name is not UTF-8"))?)
        }
        4 => {
            let mut octets = [0; 16];
            read_full(&mut client, &mut octets, shared)?;
            RequestedTarget::Ip(Ipv6Addr::from(octets).into())
        }
        _ => return answer(&mut client, &failure(reply::ADDRESS_TYPE_NOT_SUPPORTED), options, shared),
    };
    let mut port = [0; 2];
    read_full(&mut client, &mut port, shared)?;
    let port = u16::from_be_bytes(port);
    let request = Request { methods, credentials, target: target.clone(), port };
    shared.update(|state| state.requests.push(request));

    match options.behaviour {
        Behaviour::SilentAfterGreeting => {
            hold(&mut client, shared);
            Ok(())
        }
        Behaviour::Reply(code) => answer(&mut client, &failure(code), options, shared),
        Behaviour::Relay => relay(client, &target, port, options, shared),
        Behaviour::BlackHole | Behaviour::CloseAfterGreeting => unreachable!("handled before the request"),
    }
}

/// Reads and discards until the client closes or the server stops.
fn hold(client: &mut TcpStream, shared: &Shared) {
    let mut buf = [0; 512];
    loop {
        match client.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if is_timeout(&e) && !shared.stopped() => {}
            Err(_) => return,
        }
    }
}

/// Connects to the first address that accepts, or answers with the reply
/// code for the failure.
fn connect_target(target: &RequestedTarget, port: u16, options: &Options) -> Result<TcpStream, u8> {
    let addrs: Vec<SocketAddr> = match (options.forward, target) {
        (Some(forward), _) => vec![forward],
        (None, RequestedTarget::Name(name)) if options.hosts.iter().any(|(n, _)| n == name) => {
            options.hosts.iter().filter(|(n, _)| n == name).map(|(_, a)| *a).collect()
        }
        (None, RequestedTarget::Ip(ip)) => vec![SocketAddr::new(*ip, port)],
        // The proxy resolves names: that is the point of ATYP 3.
        (None, RequestedTarget::Name(name)) => {
            (name.as_str(), port).to_socket_addrs().map(Iterator::collect).unwrap_or_default()
        }
    };
    let mut refused = false;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(e) => refused |= e.kind() == io::ErrorKind::ConnectionRefused,
        }
    }
    Err(if refused { reply::CONNECTION_REFUSED } else { reply::HOST_UNREACHABLE })
}

fn relay(
    mut client: TcpStream,
    target: &RequestedTarget,
    port: u16,
    options: &Options,
    shared: &Arc<Shared>,
) -> io::Result<()> {
    let outgoing = match connect_target(target, port, options) {
        Ok(outgoing) => outgoing,
        Err(code) => return answer(&mut client, &failure(code), options, shared),
    };
    outgoing.set_read_timeout(Some(POLL))?;
    outgoing.set_write_timeout(Some(POLL))?;
    outgoing.set_nodelay(true)?;
    let bound = outgoing.local_addr()?;
    let mut success = vec![5, reply::SUCCEEDED, 0];
    match bound.ip() {
        IpAddr::V4(ip) => {
            success.push(1);
            success.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            success.push(4);
            success.extend_from_slice(&ip.octets());
        }
    }
    success.extend_from_slice(&bound.port().to_be_bytes());
    answer(&mut client, &success, options, shared)?;

    let (client_in, outgoing_out) = (client.try_clone()?, outgoing.try_clone()?);
    let upstream_shared = Arc::clone(shared);
    let upstream = thread::Builder::new()
        .name("socks-relay".into())
        .spawn(move || pump(client_in, outgoing_out, &upstream_shared))?;
    pump(outgoing, client, shared);
    let _ = upstream.join();
    Ok(())
}

/// Copies `from` to `to` until either fails or closes (or the server
/// stops), then shuts both down, which ends the other direction too.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared) {
    let mut buf = [0; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if write_full(&mut to, &buf[..n], shared).is_err() {
                    break;
                }
            }
            Err(e) if is_timeout(&e) && !shared.stopped() => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
