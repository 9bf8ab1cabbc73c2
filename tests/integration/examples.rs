//! The examples as child processes.
//!
//! The `listen` example survives any one peer: a peer that resets, one that
//! sends a bad frame and one that floods pings without reading must neither
//! end the process nor stop it serving the next peer. Its stdout lines are
//! read by a thread and waited for with a timeout; the raw clients speak v1
//! on regtest.
//!
//! `handshake`, `broadcast_tx` and `cbf_client` reach in-process peers
//! through the scripted SOCKS5 server (`--proxy`, `--onion-proxy`), and a
//! proxy that is down costs them one `error:` or `result=failed` line naming
//! it, while nothing connects directly.
//!
//! The examples are built once, with one `cargo build`.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bitcoin::consensus::{deserialize, serialize};
use bitcoin::p2p::message::{NetworkMessage, RawNetworkMessage};
use bitcoin::p2p::message_network::VersionMessage;
use bitcoin::p2p::{Address, ServiceFlags};

use crate::common::{NET, WAIT};
use crate::socks_server::{LeakListener, Options, RequestedTarget, SocksServer};

/// Startup includes loading the binary on a loaded machine; only reached
/// when the example fails to start.
const START: Duration = Duration::from_secs(60);
/// Lines of the child's output kept for failure messages.
const RECENT: usize = 40;

/// The examples these tests run.
const EXAMPLES: [&str; 4] = ["listen", "handshake", "broadcast_tx", "cbf_client"];

/// Builds every example in [`EXAMPLES`] once, in one `cargo build` (default
/// features, the way a user runs them), and returns the path of `name`'s
/// binary.
fn example_binary(name: &str) -> &'static PathBuf {
    static BINARIES: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();
    let binaries = BINARIES.get_or_init(|| {
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let mut command = Command::new(env!("CARGO"));
        command.args(["build", "--quiet", "--message-format=json", "--manifest-path", manifest]);
        for example in EXAMPLES {
            command.args(["--example", example]);
        }
        let output = command.stderr(Stdio::inherit()).output().unwrap_or_else(|e| panic!("cannot run cargo: {e}"));
        assert!(output.status.success(), "cargo build of the examples failed ({})", output.status);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let binaries: HashMap<String, PathBuf> = stdout
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["kind"][0] == "example")
            .filter_map(|m| {
                let executable = m["executable"].as_str()?;
                Some((m["target"]["name"].as_str()?.to_owned(), PathBuf::from(executable)))
            })
            .collect();
        for example in EXAMPLES {
            assert!(binaries.contains_key(example), "cargo reported no executable for {example}:\n{stdout}");
        }
        binaries
    });
    binaries.get(name).unwrap_or_else(|| panic!("{name} is not in EXAMPLES"))
}

/// A running `listen` process; killed when dropped.
struct Listen {
    child: Child,
    lines: Receiver<String>,
    recent: VecDeque<String>,
    addr: SocketAddr,
    /// `disconnected` lines seen so far.
    disconnects: usize,
}

impl Listen {
    fn start(extra: &[&str]) -> Listen {
        let mut child = Command::new(example_binary("listen"))
            .args(["--bind", "127.0.0.1:0", "--network", "regtest"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start listen: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut listen =
            Listen { child, lines, recent: VecDeque::new(), addr: "127.0.0.1:0".parse().unwrap(), disconnects: 0 };
        let line = listen.wait_line_for("the listening line", START, |l| l.starts_with("listening addr="));
        let addr = line["listening addr=".len()..].split_whitespace().next().expect("an address");
        listen.addr = addr.parse().unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"));
        listen
    }

    /// Waits up to [`WAIT`] for a line `pick` accepts and returns it.
    fn wait_line(&mut self, what: &str, pick: impl FnMut(&str) -> bool) -> String {
        self.wait_line_for(what, WAIT, pick)
    }

    fn wait_line_for(&mut self, what: &str, timeout: Duration, mut pick: impl FnMut(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if line.starts_with("disconnected ") {
                        self.disconnects += 1;
                    }
                    if self.recent.len() == RECENT {
                        self.recent.pop_front();
                    }
                    self.recent.push_back(line.clone());
                    if pick(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!("no line for {what} within {timeout:?}; {}", self.report()),
                Err(RecvTimeoutError::Disconnected) => {
                    // Stdout closed: the process is ending.
                    let status = self.child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                    panic!("listen exited ({status}) while waiting for {what}; {}", self.report())
                }
            }
        }
    }

    /// Waits until `n` peers in all have been reported disconnected.
    fn wait_disconnects(&mut self, n: usize) {
        while self.disconnects < n {
            let what = format!("disconnect number {n}");
            self.wait_line(&what, |l| l.starts_with("disconnected "));
        }
    }

    /// The id listen gave the raw-mode peer whose local address is `local`.
    fn peer_id(&mut self, local: SocketAddr) -> String {
        let needle = format!(" addr={local} ");
        let line = self
            .wait_line(&format!("the connection from {local}"), |l| l.starts_with("connected ") && l.contains(&needle));
        let rest = &line["connected peer=".len()..];
        rest.split_whitespace().next().expect("a peer id").to_owned()
    }

    fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("listen exited ({status}); {}", self.report());
        }
    }

    fn report(&self) -> String {
        let recent: Vec<&str> = self.recent.iter().map(String::as_str).collect();
        format!("last lines of its output:\n{}", recent.join("\n"))
    }
}

impl Drop for Listen {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn frame(message: NetworkMessage) -> Vec<u8> {
    serialize(&RawNetworkMessage::new(NET.magic(), message))
}

fn version_frame() -> Vec<u8> {
    let unspecified: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    frame(NetworkMessage::Version(VersionMessage {
        version: 70016,
        services: ServiceFlags::NONE,
        timestamp: now,
        receiver: Address::new(&unspecified, ServiceFlags::NONE),
        sender: Address::new(&unspecified, ServiceFlags::NONE),
        nonce: 0x7e57_0000 ^ now as u64,
        user_agent: "/examples-test/".into(),
        start_height: 0,
        relay: false,
    }))
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("cannot connect to listen at {addr}: {e}"));
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    stream
}

/// Reads one v1 frame on regtest.
fn read_frame(stream: &mut TcpStream) -> NetworkMessage {
    let mut header = [0u8; 24];
    stream.read_exact(&mut header).unwrap_or_else(|e| panic!("reading a frame header: {e}"));
    let len = u32::from_le_bytes(header[16..20].try_into().unwrap()) as usize;
    assert!(len <= 1 << 20, "implausible payload length {len}");
    let mut bytes = header.to_vec();
    bytes.resize(24 + len, 0);
    stream.read_exact(&mut bytes[24..]).unwrap_or_else(|e| panic!("reading a {len}-byte payload: {e}"));
    let raw: RawNetworkMessage = deserialize(&bytes).unwrap_or_else(|e| panic!("undecodable frame: {e}"));
    assert_eq!(*raw.magic(), NET.magic(), "frame on the wrong network");
    raw.into_payload()
}

/// A well-behaved peer: sends `version`, `verack` and a ping, and must get
/// `verack` and the matching `pong` (in session mode the library answers,
/// in raw mode the example does).
fn assert_good_peer(listen: &mut Listen, nonce: u64) {
    let mut stream = connect(listen.addr);
    let mut bytes = version_frame();
    bytes.extend(frame(NetworkMessage::Verack));
    bytes.extend(frame(NetworkMessage::Ping(nonce)));
    stream.write_all(&bytes).unwrap();
    let deadline = Instant::now() + WAIT;
    let (mut verack, mut pong) = (false, false);
    let mut got = Vec::new();
    while !(verack && pong) {
        assert!(Instant::now() < deadline, "no verack and pong within {WAIT:?}, got {got:?}; {}", listen.report());
        let message = read_frame(&mut stream);
        match message {
            NetworkMessage::Verack => verack = true,
            NetworkMessage::Pong(n) if n == nonce => {
                assert!(verack, "pong before verack: {got:?}");
                pong = true;
            }
            _ => {}
        }
        got.push(message.command().to_string());
    }
    listen.assert_alive();
}

/// Sends `version` and many pings, then closes at once: the replies are
/// for a peer that is already gone.
fn closing_peer(addr: SocketAddr) -> SocketAddr {
    let mut stream = connect(addr);
    let mut bytes = version_frame();
    for n in 0..1000 {
        bytes.extend(frame(NetworkMessage::Ping(n)));
    }
    stream.write_all(&bytes).unwrap();
    stream.local_addr().unwrap()
}

/// Sends `version` and pings, waits until listen's reply has arrived and
/// closes without reading it: the kernel answers with a reset.
fn resetting_peer(addr: SocketAddr) -> SocketAddr {
    let mut stream = connect(addr);
    let mut bytes = version_frame();
    for n in 0..100 {
        bytes.extend(frame(NetworkMessage::Ping(n)));
    }
    stream.write_all(&bytes).unwrap();
    let mut byte = [0u8; 1];
    let n = stream.peek(&mut byte).unwrap_or_else(|e| panic!("waiting for listen's reply: {e}"));
    assert_eq!(n, 1, "listen closed instead of replying");
    stream.local_addr().unwrap()
}

/// Sends `version` then `bad` (a frame the codec refuses), and one more ping
/// behind it.
fn bad_frame_peer(addr: SocketAddr, bad: Vec<u8>) -> SocketAddr {
    let mut stream = connect(addr);
    let mut bytes = version_frame();
    bytes.extend(bad);
    bytes.extend(frame(NetworkMessage::Ping(1)));
    stream.write_all(&bytes).unwrap();
    let local = stream.local_addr().unwrap();
    // Listen answers, then hangs up on the protocol violation.
    let _ = std::io::copy(&mut stream, &mut std::io::sink());
    local
}

fn wrong_magic_frame() -> Vec<u8> {
    serialize(&RawNetworkMessage::new(bitcoin::Network::Bitcoin.magic(), NetworkMessage::Ping(7)))
}

fn bad_checksum_frame() -> Vec<u8> {
    let mut bytes = frame(NetworkMessage::Ping(7));
    bytes[20] ^= 0xff;
    bytes
}

#[test]
fn listen_survives_peers_that_close_or_reset() {
    let mut listen = Listen::start(&[]);
    let closer = closing_peer(listen.addr);
    let id = listen.peer_id(closer);
    listen.wait_line("the closing peer's version", |l| l.starts_with(&format!("message peer={id} cmd=version ")));
    listen.wait_disconnects(1);
    let resetter = resetting_peer(listen.addr);
    let id = listen.peer_id(resetter);
    listen.wait_line("the resetting peer's version", |l| l.starts_with(&format!("message peer={id} cmd=version ")));
    listen.wait_disconnects(2);
    assert_good_peer(&mut listen, 0x600d);
    assert_good_peer(&mut listen, 0x600e);
}

#[test]
fn listen_session_survives_peers_that_close_or_reset() {
    let mut listen = Listen::start(&["--session"]);
    closing_peer(listen.addr);
    listen.wait_disconnects(1);
    resetting_peer(listen.addr);
    listen.wait_disconnects(2);
    assert_good_peer(&mut listen, 0x600d);
}

#[test]
fn listen_survives_bad_frames() {
    let mut listen = Listen::start(&[]);
    for (n, bad) in [wrong_magic_frame(), bad_checksum_frame()].into_iter().enumerate() {
        let peer = bad_frame_peer(listen.addr, bad);
        let id = listen.peer_id(peer);
        let prefix = format!("disconnected peer={id} reason=peer sent invalid data");
        listen.wait_line("the bad peer's disconnection", |l| l.starts_with(&prefix));
        assert_eq!(listen.disconnects, n + 1, "{}", listen.report());
    }
    assert_good_peer(&mut listen, 0x600d);
}

#[test]
fn listen_session_survives_bad_frames() {
    let mut listen = Listen::start(&["--session"]);
    for (n, bad) in [wrong_magic_frame(), bad_checksum_frame()].into_iter().enumerate() {
        bad_frame_peer(listen.addr, bad);
        listen.wait_line("the bad peer's disconnection", |l| {
            l.starts_with("disconnected peer=") && l.contains("reason=peer sent invalid data")
        });
        assert_eq!(listen.disconnects, n + 1, "{}", listen.report());
    }
    assert_good_peer(&mut listen, 0x600d);
}

/// Sends `version` (a v1 connection must start with it), then writes pings
/// until the connection fails or `max` were written; never reads.
fn flood(addr: SocketAddr, max: usize) -> (SocketAddr, JoinHandle<usize>) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("cannot connect to listen at {addr}: {e}"));
    let local = stream.local_addr().unwrap();
    stream.write_all(&version_frame()).unwrap();
    let writer = std::thread::spawn(move || {
        let chunk: Vec<u8> = (0..1000u64).flat_map(|n| frame(NetworkMessage::Ping(n))).collect();
        let mut written = 0;
        while written < max {
            // Blocks once listen stops reading; fails once it disconnects us
            // or is killed at the end of the test.
            if stream.write_all(&chunk).is_err() {
                break;
            }
            written += 1000;
        }
        written
    });
    (local, writer)
}

#[test]
fn listen_survives_a_ping_flood() {
    let mut listen = Listen::start(&[]);
    // A pong is 32 bytes: 1,000,000 bytes of send buffer hold 31,250 of
    // them, and the kernel buffers take a few MB more before that fills.
    let (flooder, writer) = flood(listen.addr, 2_000_000);
    let id = listen.peer_id(flooder);
    let held = format!("backlog peer={id} ");
    listen.wait_line("the flooder's backlog", |l| l.starts_with(&held));
    assert_good_peer(&mut listen, 0x600d);
    assert_good_peer(&mut listen, 0x600e);
    listen.assert_alive();
    drop(listen);
    let written = writer.join().expect("flood writer");
    assert!(written > 40_000, "the flood stopped after {written} pings");
}

/// Drains everything listen printed so far and asserts it never dropped or
/// disconnected `id`; returns how often it had to hold replies for it.
fn assert_never_dropped(listen: &mut Listen, id: &str) -> usize {
    let gone = format!("disconnected peer={id} ");
    let overflow = format!("overflow peer={id} ");
    let dropped = format!("dropped peer={id} ");
    let held = format!("backlog peer={id} ");
    let mut backlogs = 0;
    while let Ok(line) = listen.lines.try_recv() {
        for bad in [&gone, &overflow, &dropped] {
            assert!(!line.starts_with(bad.as_str()), "a reading peer lost replies: {line}");
        }
        backlogs += usize::from(line.starts_with(&held));
    }
    backlogs
}

#[test]
fn listen_answers_a_reading_peer_in_order() {
    // Windows of 1,000 pings, each read back before the next is sent: every
    // pong arrives, in order, and the peer is never dropped.
    const WINDOW: u64 = 1000;
    const PINGS: u64 = 50 * WINDOW;
    let mut listen = Listen::start(&[]);
    let mut stream = connect(listen.addr);
    stream.write_all(&version_frame()).unwrap();
    let id = listen.peer_id(stream.local_addr().unwrap());
    assert!(matches!(read_frame(&mut stream), NetworkMessage::Version(_)));
    assert_eq!(read_frame(&mut stream), NetworkMessage::Verack);
    for start in (0..PINGS).step_by(WINDOW as usize) {
        let window: Vec<u8> = (start..start + WINDOW).flat_map(|n| frame(NetworkMessage::Ping(n))).collect();
        stream.write_all(&window).unwrap();
        for n in start..start + WINDOW {
            match read_frame(&mut stream) {
                NetworkMessage::Pong(got) if got == n => {}
                other => panic!("expected pong {n}, got {other:?}; {}", listen.report()),
            }
        }
    }
    listen.assert_alive();
    assert_never_dropped(&mut listen, &id);
}

/// Regression: the reactor read a peer faster than the user could answer
/// it (the in-flight cap filled while reading went on), so a 1:1
/// responder's backlog grew without bound against a fast peer that reads.
#[test]
fn listen_answers_a_fast_reader_in_order() {
    // Pings as fast as the socket takes them, while reading every answer:
    // replies the example had to hold (a full buffer, or too many on their
    // way to the reactor) must still arrive, all of them, in order.
    const PINGS: u64 = 100_000;
    let mut listen = Listen::start(&[]);
    let mut stream = connect(listen.addr);
    let mut writer = stream.try_clone().unwrap();
    let local = stream.local_addr().unwrap();
    let sender = std::thread::spawn(move || {
        writer.write_all(&version_frame()).unwrap();
        for start in (0..PINGS).step_by(1000) {
            let chunk: Vec<u8> = (start..start + 1000).flat_map(|n| frame(NetworkMessage::Ping(n))).collect();
            writer.write_all(&chunk).unwrap();
        }
    });
    let id = listen.peer_id(local);
    assert!(matches!(read_frame(&mut stream), NetworkMessage::Version(_)));
    assert_eq!(read_frame(&mut stream), NetworkMessage::Verack);
    for n in 0..PINGS {
        match read_frame(&mut stream) {
            NetworkMessage::Pong(got) if got == n => {}
            other => panic!("expected pong {n}, got {other:?}; {}", listen.report()),
        }
    }
    sender.join().expect("ping writer");
    listen.assert_alive();
    let backlogs = assert_never_dropped(&mut listen, &id);
    eprintln!("listen held replies {backlogs} time(s)");
}

/// What a finished example printed, and how it ended.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\n--- stdout\n{}--- stderr\n{}", self.status, self.stdout, self.stderr)
    }
}

/// Runs example `name` with `args` to its end; kills it and fails if it is
/// not done within [`START`] (the examples bound their own waits well below).
fn run_example(name: &str, args: &[String]) -> Run {
    let mut child = Command::new(example_binary(name))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    // Each pipe is read to its end, which comes when the process exits.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            let _ = tx.send(text);
        });
        rx
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + START;
    let mut collect = |rx: Receiver<String>| match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(text) => text,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name} {args:?} did not finish within {START:?}");
        }
    };
    let (stdout, stderr) = (collect(stdout), collect(stderr));
    let status = child.wait().unwrap_or_else(|e| panic!("waiting for {name}: {e}"));
    Run { status, stdout, stderr }
}

fn strings(args: &[&dyn std::fmt::Display]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// A session-mode listener on regtest, the peer behind the proxy.
fn session_peer() -> (peerlink::Handle, SocketAddr) {
    let mut config = crate::session_test_config();
    config.listen.push(crate::common::localhost());
    crate::common::listener_with(config)
}

/// A port on 127.0.0.1 where nothing listens.
fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind(crate::common::localhost()).unwrap().local_addr().unwrap()
}

/// Asserts the proxy was asked for `target`, once, with fresh credentials
/// (username/password only, username equal to password, as Core's
/// isolation does) that `run` never printed.
fn assert_one_isolated_request(socks: &SocksServer, target: RequestedTarget, port: u16, run: &Run) {
    let requests = socks.requests();
    assert_eq!(requests.len(), 1, "{requests:?}\n{run}");
    assert_eq!((&requests[0].target, requests[0].port), (&target, port), "{run}");
    assert_eq!(requests[0].methods, [0x00, 0x02], "isolation offers none and username/password, as Core does");
    let (user, pass) = requests[0].credentials.clone().expect("isolated credentials");
    assert_eq!(user, pass);
    let user = String::from_utf8(user).expect("text credentials");
    assert!(!run.stdout.contains(&user) && !run.stderr.contains(&user), "credentials printed:\n{run}");
}

/// `handshake` through the proxy: the connect and ready lines name it, the
/// handshake and ping succeed, and the proxy was asked for the peer.
#[test]
fn handshake_runs_through_a_socks5_proxy() {
    let (server, addr) = session_peer();
    let socks = SocksServer::start(Options::default());
    let run = run_example("handshake", &strings(&[&addr, &"--network", &"regtest", &"--proxy", &socks.addr()]));
    assert!(run.status.success(), "{run}");
    let lines = run.lines();
    let proxy = format!("proxy={}", socks.addr());
    assert_eq!(lines[0], format!("connecting target={addr} network=regtest transport=auto {proxy}"), "{run}");
    let ready = lines.iter().find(|l| l.starts_with("ready ")).unwrap_or_else(|| panic!("no ready line:\n{run}"));
    assert!(ready.contains(&format!(" target={addr} ")) && ready.ends_with(&format!(" {proxy}")), "{run}");
    assert!(lines.iter().any(|l| l.starts_with("transport=v2 session_id=")), "{run}");
    assert!(lines.iter().any(|l| l.starts_with("ping rtt=")), "{run}");
    assert_one_isolated_request(&socks, RequestedTarget::Ip(addr.ip()), addr.port(), &run);
    // The peer saw the handshake's user agent, from the proxy's socket.
    let info = crate::common::wait_for(&server, |e| match e {
        peerlink::Event::Ready { info, .. } => Some(*info),
        _ => None,
    });
    let ua = info.version.expect("a version").user_agent;
    assert!(ua.contains("/handshake:"), "{ua}");
}

/// The v2-to-v1 fallback through the proxy: a v1-only peer closes the v2
/// attempt, and the v1 retry is a second request to the proxy, with
/// credentials of its own; nothing goes direct.
#[test]
fn handshake_falls_back_to_v1_through_the_proxy() {
    let mut config = crate::session_test_config();
    config.transport = peerlink::wire::TransportPolicy::V1Only;
    config.listen.push(crate::common::localhost());
    let (_server, addr) = crate::common::listener_with(config);
    let socks = SocksServer::start(Options::default());
    let args = strings(&[&addr, &"--network", &"regtest", &"--transport", &"auto", &"--proxy", &socks.addr()]);
    let run = run_example("handshake", &args);
    assert!(run.status.success(), "{run}");
    assert!(run.lines().contains(&"transport=v1"), "{run}");
    let requests = socks.requests();
    assert_eq!(requests.len(), 2, "the v2 attempt and the v1 retry, both through the proxy: {requests:?}\n{run}");
    for request in &requests {
        assert_eq!((&request.target, request.port), (&RequestedTarget::Ip(addr.ip()), addr.port()));
    }
    assert_ne!(requests[0].credentials, requests[1].credentials, "the retry is isolated too");
}

/// An onion peer goes to `--onion-proxy` and a host name to `--proxy`, each
/// as the name itself (the scripted proxy forwards both to the real peer).
#[test]
fn handshake_sends_onion_and_host_names_to_the_proxy() {
    let onion = "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion";
    for (flag, host) in [("--onion-proxy", onion), ("--proxy", "peer.example.org")] {
        let (_server, addr) = session_peer();
        let socks = SocksServer::start(Options { forward: Some(addr), ..Options::default() });
        let target = format!("{host}:8333");
        let run = run_example("handshake", &strings(&[&target, &"--network", &"regtest", &flag, &socks.addr()]));
        assert!(run.status.success(), "{run}");
        let connecting = format!("connecting target={target} network=regtest transport=auto proxy={}", socks.addr());
        assert_eq!(run.lines()[0], connecting, "{run}");
        assert_one_isolated_request(&socks, RequestedTarget::Name(host.into()), 8333, &run);
    }
}

/// A proxy that is down: one `error:` line naming it and the cause, exit
/// code 1, and no direct connection to the peer.
#[test]
fn handshake_and_cbf_client_report_a_proxy_that_is_down() {
    // Bound first, so the closed port cannot be its port.
    let peer = LeakListener::bind(crate::common::localhost().ip());
    let proxy = closed_port();
    let runs = [
        run_example("handshake", &strings(&[&peer.addr(), &"--network", &"regtest", &"--proxy", &proxy])),
        run_example("cbf_client", &strings(&[&"--network", &"regtest", &"--peer", &peer.addr(), &"--proxy", &proxy])),
    ];
    for run in runs {
        assert_eq!(run.status.code(), Some(1), "{run}");
        let errors: Vec<&str> = run.lines().into_iter().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{run}");
        assert_eq!(run.lines().last(), errors.first(), "the error ends the output:\n{run}");
        assert!(errors[0].contains(&format!("proxy {proxy}: connection to the proxy failed")), "{run}");
        assert!(run.stderr.is_empty(), "{run}");
    }
    assert_eq!(peer.accepted(), 0, "nothing connects directly when a proxy is set");
}

/// A session node that fetches every announced transaction; returns the
/// first one once its peer is gone (or nothing after [`WAIT`]).
fn fetching_node() -> (SocketAddr, JoinHandle<Option<bitcoin::Transaction>>) {
    let mut config = crate::session_test_config();
    config.listen.push(crate::common::localhost());
    // What a pool asks of its peers (Core's NODE_NETWORK | NODE_WITNESS).
    config.session.services = bitcoin::p2p::ServiceFlags::NETWORK | bitcoin::p2p::ServiceFlags::WITNESS;
    let (node, addr) = crate::common::listener_with(config);
    let thread = std::thread::spawn(move || {
        let mut got = None;
        while let Ok(event) = node.recv_timeout(WAIT) {
            match event {
                peerlink::Event::Message { peer, message: NetworkMessage::Inv(items), .. } => {
                    node.send(peer, NetworkMessage::GetData(items)).expect("the node is running")
                }
                peerlink::Event::Message { message: NetworkMessage::Tx(tx), .. } => got = got.or(Some(tx)),
                peerlink::Event::Disconnected { .. } if got.is_some() => break,
                _ => {}
            }
        }
        got
    });
    (addr, thread)
}

/// `broadcast_tx` through the proxy: the peer line names it, the peer got
/// the transaction, and the proxy was asked for the peer.
#[test]
fn broadcast_tx_runs_through_a_socks5_proxy() {
    let tx = crate::common::big_tx(200);
    let hex = bitcoin::consensus::encode::serialize_hex(&tx);
    let (addr, node) = fetching_node();
    let socks = SocksServer::start(Options::default());
    let run = run_example(
        "broadcast_tx",
        &strings(&[&"--network", &"regtest", &"--proxy", &socks.addr(), &"--peer", &addr, &hex]),
    );
    assert!(run.status.success(), "{run}");
    let lines = run.lines();
    assert_eq!(lines[0], format!("txid={} wtxid={}", tx.compute_txid(), tx.compute_wtxid()), "{run}");
    let delivered = format!("peer={addr} proxy={} result=delivered ua=\"/peerlink:", socks.addr());
    assert!(lines.iter().any(|l| l.starts_with(&delivered) && l.contains(" announced_by=wtxid ")), "{run}");
    assert_eq!(lines.last().copied(), Some("delivered=1 not_requested=0 failed=0"), "{run}");
    assert_eq!(node.join().expect("the node thread"), Some(tx), "the node received the transaction");
    assert_one_isolated_request(&socks, RequestedTarget::Ip(addr.ip()), addr.port(), &run);
}

/// `broadcast_tx` without `--peer`: the pool takes its peers from the
/// seeds; a seed that refuses is replaced, and the peer line says how the
/// peer was found.
#[test]
fn broadcast_tx_finds_its_peer_through_the_seeds() {
    let tx = crate::common::big_tx(200);
    let hex = bitcoin::consensus::encode::serialize_hex(&tx);
    let (addr, node) = fetching_node();
    let dead = closed_port();
    let run = run_example(
        "broadcast_tx",
        &strings(&[&"--network", &"regtest", &"--seed", &dead, &"--seed", &addr, &"--peers", &1, &hex]),
    );
    assert!(run.status.success(), "{run}");
    let lines = run.lines();
    let delivered = format!("peer={addr} found=seed seed={addr} result=delivered ua=\"/peerlink:");
    assert!(lines.iter().any(|l| l.starts_with(&delivered)), "{run}");
    // The refusing seed, if it was tried first, has a line of its own.
    let failed: Vec<&&str> = lines.iter().filter(|l| l.contains(" result=failed ")).collect();
    assert!(failed.iter().all(|l| l.starts_with(&format!("peer={dead} found=seed seed={dead} "))), "{run}");
    assert_eq!(lines.last().copied(), Some(format!("delivered=1 not_requested=0 failed={}", failed.len()).as_str()));
    assert_eq!(node.join().expect("the node thread"), Some(tx), "the node received the transaction");
}

/// A fresh, empty directory for one test's files.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("peerlink-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `broadcast_tx --book FILE`: the first run finds its peer through the
/// seed and saves what it learned; the second, whose seed is dead, takes
/// its peers from the saved book (`found=book`); a damaged book is refused
/// with a clear error and left as it was.
#[test]
fn broadcast_tx_keeps_an_address_book_between_runs() {
    use crate::addr_server::AddrServer;
    use std::net::Ipv4Addr;

    let hex = bitcoin::consensus::encode::serialize_hex(&crate::common::big_tx(200));
    let known: Vec<AddrServer> =
        (0..2).map(|i| AddrServer::start(Ipv4Addr::new(127, 0, 0, 42 + i), Vec::new())).collect();
    let seed = AddrServer::start(Ipv4Addr::new(127, 0, 0, 41), known.iter().map(AddrServer::addr).collect());
    let dir = scratch_dir("book");
    let book = dir.join("peers.book");

    let first = run_example(
        "broadcast_tx",
        &strings(&[
            &"--network",
            &"regtest",
            &"--seed",
            &seed.addr(),
            &"--peers",
            &1,
            &"--book",
            &book.display(),
            &hex,
        ]),
    );
    assert!(first.status.success(), "{first}");
    let line = format!("peer={} found=seed seed={} result=not-requested ", seed.addr(), seed.addr());
    assert!(first.lines().iter().any(|l| l.starts_with(&line)), "{first}");
    let saved = std::fs::read(&book).expect("the book was saved");
    let loaded = peerlink::discovery::addrbook::AddrBook::import(&saved, [1; 32]).expect("a valid book");
    assert_eq!(loaded.len(), 3, "the seed's peer and the two it named");
    assert_eq!(loaded.tried_len(), 1, "the peer we used is tried");

    let dead = closed_port();
    let second = run_example(
        "broadcast_tx",
        &strings(&[&"--network", &"regtest", &"--seed", &dead, &"--peers", &2, &"--book", &book.display(), &hex]),
    );
    assert!(second.status.success(), "{second}");
    let peers: Vec<&str> = second.lines().into_iter().filter(|l| l.starts_with("peer=")).collect();
    assert_eq!(peers.len(), 2, "{second}");
    assert!(peers.iter().all(|l| l.contains(" found=book result=not-requested ")), "{second}");
    assert!(!second.stdout.contains(&dead.to_string()), "the book sufficed: the seed was not needed\n{second}");

    let mut damaged = std::fs::read(&book).unwrap();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    std::fs::write(&book, &damaged).unwrap();
    let third = run_example(
        "broadcast_tx",
        &strings(&[&"--network", &"regtest", &"--seed", &seed.addr(), &"--book", &book.display(), &hex]),
    );
    assert_eq!(third.status.code(), Some(1), "{third}");
    let error = format!("error: address book {}: ", book.display());
    assert!(third.lines().iter().any(|l| l.starts_with(&error) && l.contains("checksum")), "{third}");
    assert_eq!(std::fs::read(&book).unwrap(), damaged, "a damaged book is left as it was");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `broadcast_tx` with its proxy down: the peer's line says why, naming the
/// proxy; no peer has the transaction, so the exit code is 1; and nothing
/// connects directly.
#[test]
fn broadcast_tx_reports_a_proxy_that_is_down() {
    let hex = bitcoin::consensus::encode::serialize_hex(&crate::common::big_tx(200));
    // Bound first, so the closed port cannot be its port.
    let peer = LeakListener::bind(crate::common::localhost().ip());
    let proxy = closed_port();
    let run = run_example(
        "broadcast_tx",
        &strings(&[&"--network", &"regtest", &"--proxy", &proxy, &"--peer", &peer.addr(), &hex]),
    );
    assert_eq!(run.status.code(), Some(1), "{run}");
    let failed = format!(
        "peer={} proxy={proxy} result=failed reason=could not connect: proxy {proxy}: connection to the proxy failed: ",
        peer.addr()
    );
    assert!(run.lines().iter().any(|l| l.starts_with(&failed)), "{run}");
    assert_eq!(run.lines().last().copied(), Some("delivered=0 not_requested=0 failed=1"), "{run}");
    assert_eq!(peer.accepted(), 0, "nothing connects directly when a proxy is set");
}
