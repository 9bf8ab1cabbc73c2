//! The `listen` example survives any one peer: a peer that resets, one that
//! sends a bad frame and one that floods pings without reading must neither
//! end the process nor stop it serving the next peer.
//!
//! The example is built once and run as a child process; its stdout lines
//! are read by a thread and waited for with a timeout. The raw clients speak
//! v1 on regtest.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bitcoin::consensus::{deserialize, serialize};
use bitcoin::p2p::message::{NetworkMessage, RawNetworkMessage};
use bitcoin::p2p::message_network::VersionMessage;
use bitcoin::p2p::{Address, ServiceFlags};

use crate::common::{NET, WAIT};

/// Startup includes loading the binary on a loaded machine; only reached
/// when the example fails to start.
const START: Duration = Duration::from_secs(60);
/// Lines of the child's output kept for failure messages.
const RECENT: usize = 40;

/// Builds the `listen` example once (default features, the way a user
/// runs it) and returns the path of its binary.
fn listen_binary() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let output = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--example", "listen", "--message-format=json", "--manifest-path", manifest])
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run cargo: {e}"));
        assert!(output.status.success(), "cargo build --example listen failed ({})", output.status);
        let stdout = String::from_utf8_lossy(&output.stdout);
        stdout
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "listen")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .unwrap_or_else(|| panic!("cargo reported no executable for the listen example:\n{stdout}"))
    })
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
        let mut child = Command::new(listen_binary())
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
