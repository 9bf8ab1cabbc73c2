//! Throughput, latency and memory benchmark of peerlink against a raw-TCP
//! upper bound, all over 127.0.0.1 in one process.
//!
//! Four workloads, each run through peerlink and through the bound in the
//! same invocation:
//!
//! - **W1**: 1,000,000 `ping`s one way over one connection (reactor to
//!   reactor); every one is decoded and received as `Event::Message`, and the
//!   nonces are checked to arrive in order. Reports messages per second.
//! - **W2**: 200 `tx` messages of 1,000,000 payload bytes each, one way, same
//!   setup. Reports payload MB/s (10^6 bytes).
//! - **W3**: 50,000 `ping` → `pong` round trips, one outstanding at a time; the
//!   listening side's user thread answers through its handle. Reports p50 and
//!   p99 latency.
//! - **W4**: 1,000 plain `std::net::TcpStream` clients each write 100
//!   pre-encoded `inv` messages into one peerlink listener. Reports messages
//!   per second, and resident memory (VmRSS) per accepted connection, measured
//!   after all connections are accepted and before any traffic.
//!
//! W1–W3 run over v1 and over BIP324 v2 (`--transport`, default both): both
//! reactors use `TransportPolicy::V1Only`, or both `V2Only` (so v2 is
//! negotiated; the run checks each connection's transport in its peer info
//! and prints the session id). The v2 rows are compared with the same
//! raw-TCP bound, which sends unencrypted v1 frames. W4 is v1 only: its
//! clients write pre-encoded v1 bytes, and its listener is `V1Only`.
//!
//! The bound sends the same pre-encoded bytes with 1 MiB `write`s from a
//! `std` stream; its reader only parses the 24-byte headers (skipping payloads
//! by length) and counts frames. For W3 it is a blocking `std` ping-pong of
//! 32-byte frames with `TCP_NODELAY`; for W4 one mio thread serving all 1,000
//! connections and parsing headers only.
//!
//! Run (release mode matters):
//!
//! ```text
//! cargo run --release --example bench                 # all workloads
//! cargo run --release --example bench -- --quick      # about a tenth of the messages
//! cargo run --release --example bench -- --only w1,w3 # a subset (repeatable flag)
//! cargo run --release --example bench -- --transport v2 # W1–W3 over v2 only (v1, v2, both)
//! ```
//!
//! When every workload runs, W4 runs first so that its RSS figure is not
//! distorted by memory the allocator kept from the large W2 buffers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use bitcoin::absolute::LockTime;
use bitcoin::hashes::Hash;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_blockdata::Inventory;
use bitcoin::transaction::Version;
use bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid, Witness};
use peerlink::codec::{Codec, Transport};
use peerlink::error::Report;
use peerlink::wire::{TransportPolicy, V1Codec};
use peerlink::{Config, Event, Handle, PeerId};
use peerlink::{RecvTimeoutError, TryRecvError};

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

const NETWORK: bitcoin::Network = bitcoin::Network::Regtest;
const HEADER_LEN: usize = 24;
/// Size of one `write` by the bound's sender and one `read` by its reader.
const RAW_IO: usize = 1 << 20;
/// Longest a benchmark waits for any single event before giving up.
const STALL: Duration = Duration::from_secs(30);
/// Target `tx` payload size for W2.
const TX_SIZE: usize = 1_000_000;

struct Params {
    w1_msgs: u64,
    w2_msgs: u64,
    w3_trips: usize,
    w3_warmup: usize,
    w4_conns: usize,
    w4_msgs_per_conn: usize,
    w4_client_threads: usize,
}

impl Params {
    fn new(quick: bool) -> Params {
        let div = if quick { 10 } else { 1 };
        Params {
            w1_msgs: 1_000_000 / div as u64,
            w2_msgs: 200 / div as u64,
            w3_trips: 50_000 / div,
            w3_warmup: 2_000 / div,
            // Memory per connection needs the full 1,000 connections even
            // in a quick run; only the messages per connection shrink.
            w4_conns: 1_000,
            w4_msgs_per_conn: 100 / div,
            w4_client_threads: 4,
        }
    }
}

/// The transport W1–W3 run over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    V1,
    V2,
}

impl Wire {
    fn policy(self) -> TransportPolicy {
        match self {
            Wire::V1 => TransportPolicy::V1Only,
            Wire::V2 => TransportPolicy::V2Only,
        }
    }

    /// Inserted after the workload name in the table: nothing for v1, so
    /// its rows keep their names.
    fn tag(self) -> &'static str {
        match self {
            Wire::V1 => "",
            Wire::V2 => " (v2)",
        }
    }

    /// Row order: v2 right after v1.
    fn order(self, base: u8) -> u8 {
        base * 2 + u8::from(self == Wire::V2)
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", Report(&*e));
            ExitCode::FAILURE
        }
    }
}

fn run() -> BenchResult<()> {
    let mut quick = false;
    let mut only: Vec<String> = Vec::new();
    let mut wires = vec![Wire::V1, Wire::V2];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--only" => {
                let list = args.next().ok_or("--only needs a value such as w1 or w1,w3")?;
                only.extend(list.split(',').map(|s| s.trim().to_ascii_lowercase()));
            }
            "--transport" => {
                wires = match args.next().as_deref() {
                    Some("v1") => vec![Wire::V1],
                    Some("v2") => vec![Wire::V2],
                    Some("both") => vec![Wire::V1, Wire::V2],
                    other => return Err(format!("--transport needs v1, v2 or both, not {other:?}").into()),
                };
            }
            "-h" | "--help" => {
                println!("usage: bench [--quick] [--only w1,w2,w3,w4] [--transport v1|v2|both]");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?} (try --help)").into()),
        }
    }
    for w in &only {
        if !["w1", "w2", "w3", "w4"].contains(&w.as_str()) {
            return Err(format!("unknown workload {w:?}; expected w1, w2, w3 or w4").into());
        }
    }
    let wanted = |w: &str| only.is_empty() || only.iter().any(|o| o == w);
    let p = Params::new(quick);

    let cores = thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let over: Vec<&str> = wires.iter().map(|w| if *w == Wire::V1 { "v1" } else { "v2" }).collect();
    println!(
        "peerlink benchmark: {cores} cores, {}, W1–W3 over {}",
        if quick { "quick run" } else { "full run" },
        over.join(" and ")
    );
    println!();

    let mut rows: Vec<Row> = Vec::new();
    // W4 first: its RSS figure is most honest in a fresh heap.
    if wanted("w4") {
        rows.extend(w4(&p)?);
    }
    if wanted("w1") {
        rows.extend(w1(&p, &wires)?);
    }
    if wanted("w2") {
        rows.extend(w2(&p, &wires)?);
    }
    if wanted("w3") {
        rows.extend(w3(&p, &wires)?);
    }
    rows.sort_by_key(|r| r.order);

    println!();
    println!("Machine: {cores} cores. Ratio = peerlink / bound (for latency, lower is better).");
    println!();
    println!("| workload | peerlink | raw-TCP bound | ratio | target | met |");
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        println!("| {} | {} | {} | {} | {} | {} |", r.name, r.ours, r.bound, r.ratio, r.target, r.met);
    }
    Ok(())
}

/// One line of the final table.
struct Row {
    order: u8,
    name: String,
    ours: String,
    bound: String,
    ratio: String,
    target: String,
    met: &'static str,
}

fn yes_no(ok: bool) -> &'static str {
    if ok { "yes" } else { "**no**" }
}

fn throughput_row(order: u8, name: String, ours: f64, bound: f64, unit: &str, scale: f64, target: f64) -> Row {
    let ratio = ours / bound;
    Row {
        order,
        name,
        ours: format!("{:.2} {unit}", ours / scale),
        bound: format!("{:.2} {unit}", bound / scale),
        ratio: format!("{ratio:.3}"),
        target: format!("≥ {target:.2}"),
        met: yes_no(ratio >= target),
    }
}

// ---------------------------------------------------------------------------
// Raw-TCP bound helpers
// ---------------------------------------------------------------------------

/// Counts v1 frames in a byte stream by parsing headers only and skipping
/// payloads by their announced length.
struct FrameCounter {
    magic: [u8; 4],
    header: [u8; HEADER_LEN],
    have: usize,
    skip: usize,
    frames: u64,
    payload_bytes: u64,
}

impl FrameCounter {
    fn new() -> FrameCounter {
        FrameCounter { magic: magic_bytes(), header: [0; HEADER_LEN], have: 0, skip: 0, frames: 0, payload_bytes: 0 }
    }

    fn feed(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(buf.len());
                self.skip -= n;
                buf = &buf[n..];
                if self.skip == 0 {
                    self.frames += 1;
                }
                continue;
            }
            let len = if self.have == 0 && buf.len() >= HEADER_LEN {
                let len = self.parse(&buf[..HEADER_LEN]);
                buf = &buf[HEADER_LEN..];
                len
            } else {
                let n = (HEADER_LEN - self.have).min(buf.len());
                self.header[self.have..self.have + n].copy_from_slice(&buf[..n]);
                self.have += n;
                buf = &buf[n..];
                if self.have < HEADER_LEN {
                    continue;
                }
                self.have = 0;
                let header = self.header;
                self.parse(&header)
            };
            self.payload_bytes += len as u64;
            if len == 0 {
                self.frames += 1;
            } else {
                self.skip = len;
            }
        }
    }

    fn parse(&self, header: &[u8]) -> usize {
        assert_eq!(header[..4], self.magic, "bad magic in raw stream");
        u32::from_le_bytes([header[16], header[17], header[18], header[19]]) as usize
    }
}

fn magic_bytes() -> [u8; 4] {
    bitcoin::p2p::Magic::from(NETWORK).to_bytes()
}

fn encode_all<'a>(messages: impl IntoIterator<Item = &'a NetworkMessage>) -> Vec<u8> {
    let mut codec = V1Codec::new(NETWORK);
    let mut out = Vec::new();
    for m in messages {
        codec.encode(m, &mut out).expect("encodable message");
    }
    out
}

/// One-way raw bound: writes `wire` in 1 MiB writes; a reader thread counts
/// `frames` frames. Returns the time from the first write to the last frame.
fn raw_one_way(wire: &[u8], frames: u64) -> BenchResult<(Duration, u64)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let reader = thread::spawn(move || -> std::io::Result<(Instant, FrameCounter)> {
        let mut buf = vec![0u8; RAW_IO];
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut counter = FrameCounter::new();
        while counter.frames < frames {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            counter.feed(&buf[..n]);
        }
        Ok((Instant::now(), counter))
    });
    let mut w = TcpStream::connect(addr)?;
    w.set_nodelay(true)?;
    let start = Instant::now();
    for chunk in wire.chunks(RAW_IO) {
        w.write_all(chunk)?;
    }
    let (end, counter) = reader.join().map_err(|_| "raw reader panicked")??;
    if counter.frames != frames {
        return Err(format!("raw reader counted {} frames, expected {frames}", counter.frames).into());
    }
    Ok((end - start, counter.payload_bytes))
}

// ---------------------------------------------------------------------------
// peerlink helpers
// ---------------------------------------------------------------------------

/// The next event: `try_recv` first, so a busy consumer pays no clock read
/// per event, then a wait bounded by [`STALL`].
fn next_event(handle: &Handle) -> Result<Event, RecvTimeoutError> {
    match handle.try_recv() {
        Ok(event) => Ok(event),
        Err(TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
        Err(TryRecvError::Empty) => handle.recv_timeout(STALL),
    }
}

/// Waits for the next `Connected` event and returns its peer.
fn connected(handle: &Handle) -> BenchResult<PeerId> {
    match handle.recv_timeout(STALL)? {
        Event::Connected { peer, .. } => Ok(peer),
        Event::ConnectFailed { error, .. } => Err(format!("connect failed: {}", Report(&error)).into()),
        other => Err(format!("unexpected event while connecting: {other:?}").into()),
    }
}

/// A listening reactor and a client reactor connected to it.
struct Pair {
    server: Handle,
    server_peer: PeerId,
    client: Handle,
    client_peer: PeerId,
}

fn pair(wire: Wire) -> BenchResult<Pair> {
    let mut config = raw_config(wire.policy());
    config.listen.push("127.0.0.1:0".parse()?);
    let server = peerlink::start(config)?;
    let client = peerlink::start(raw_config(wire.policy()))?;
    let requested = client.connect(server.local_addrs()[0])?;
    let client_peer = connected(&client)?;
    assert_eq!(client_peer, requested);
    let server_peer = connected(&server)?;
    let transport = |handle: &Handle, peer| -> BenchResult<Transport> {
        Ok(handle.peer_info(peer)?.ok_or("peer gone before the benchmark started")?.transport)
    };
    let (ours, theirs) = (transport(&client, client_peer)?, transport(&server, server_peer)?);
    match (wire, ours, theirs) {
        (Wire::V1, Transport::V1, Transport::V1) => println!("  transport: v1 (both ends)"),
        (Wire::V2, Transport::V2 { session_id: a }, Transport::V2 { session_id: b }) if a == b => {
            let id: String = a[..8].iter().map(|b| format!("{b:02x}")).collect();
            println!("  transport: v2 (both ends), session id {id}…");
        }
        _ => return Err(format!("expected {wire:?} on both ends, got {ours:?} and {theirs:?}").into()),
    }
    Ok(Pair { server, server_peer, client, client_peer })
}

#[derive(Default)]
struct SendStats {
    /// Sends refused synchronously because the peer's buffer was full.
    rejected: u64,
    writable: u64,
}

/// Sends every message from `source` to `peer`. A refused send (buffer
/// full) is held and sent first once `Writable` arrives, which keeps the
/// stream in order. Returns once everything was handed over and `done()`
/// (the receiver finished) holds.
fn send_all(
    handle: &Handle,
    peer: PeerId,
    mut source: impl Iterator<Item = NetworkMessage>,
    done: impl Fn() -> bool,
) -> BenchResult<SendStats> {
    let mut stats = SendStats::default();
    let mut held: Option<NetworkMessage> = None;
    while let Some(message) = held.take().or_else(|| source.next()) {
        match handle.send(peer, message) {
            Ok(()) => {}
            Err(refused) if refused.reason.is_backpressure() => {
                stats.rejected += 1;
                held = Some(refused.message);
                // Wait for the buffer to drain.
                loop {
                    match handle.recv_timeout(STALL) {
                        Ok(Event::Writable { .. }) => {
                            stats.writable += 1;
                            break;
                        }
                        Ok(Event::Disconnected { reason, .. }) => {
                            return Err(format!("sender disconnected: {}", Report(&reason)).into());
                        }
                        Ok(Event::SendRejected { reason, .. }) => {
                            return Err(format!("send rejected: {}", Report(&reason)).into());
                        }
                        Ok(_) => {}
                        Err(RecvTimeoutError::Timeout) => return Err("no Writable after a refused send".into()),
                        Err(RecvTimeoutError::Disconnected) => return Err("sender reactor stopped".into()),
                    }
                }
            }
            Err(refused) => return Err(format!("send refused: {}", Report(&refused)).into()),
        }
    }
    while !done() {
        match handle.recv_timeout(Duration::from_millis(1)) {
            Ok(Event::Disconnected { reason, .. }) => {
                return Err(format!("sender disconnected: {}", Report(&reason)).into());
            }
            Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Err("sender reactor stopped".into()),
        }
    }
    Ok(stats)
}

struct OneWay {
    elapsed: Duration,
    messages: u64,
    payload_bytes: u64,
    out_of_order: u64,
    stats: SendStats,
}

/// Runs a one-way transfer through two reactors. `index` maps each received
/// message to its sequence number (for the order check) and its payload
/// length (taken from the message, not the wire size, whose framing differs
/// between v1 and v2).
fn peerlink_one_way(
    wire: Wire,
    messages: impl Iterator<Item = NetworkMessage>,
    count: u64,
    index: fn(&NetworkMessage) -> Option<(u64, u64)>,
) -> BenchResult<OneWay> {
    let Pair { server, client, client_peer, .. } = pair(wire)?;
    let receiver = thread::spawn(move || -> Result<(Instant, u64, u64, u64, Handle), String> {
        let mut received = 0u64;
        let mut payload = 0u64;
        let mut out_of_order = 0u64;
        let mut expected = 0u64;
        while received < count {
            match next_event(&server) {
                Ok(Event::Message { message, .. }) => {
                    let (i, len) = index(&message).ok_or_else(|| format!("unexpected message {}", message.cmd()))?;
                    if i != expected {
                        out_of_order += 1;
                    }
                    expected = i + 1;
                    received += 1;
                    payload += len;
                }
                Ok(Event::Disconnected { reason, .. }) => {
                    return Err(format!("receiver disconnected: {}", Report(&reason)));
                }
                Ok(_) => {}
                Err(e) => return Err(format!("receiver stalled after {received} messages: {}", Report(&e))),
            }
        }
        // The handle goes back to the caller so the connection outlives the
        // sender's last look at its events.
        Ok((Instant::now(), received, payload, out_of_order, server))
    });
    let start = Instant::now();
    let stats = send_all(&client, client_peer, messages, || receiver.is_finished())?;
    let (end, messages, payload_bytes, out_of_order, _server) = receiver.join().map_err(|_| "receiver panicked")??;
    Ok(OneWay { elapsed: end - start, messages, payload_bytes, out_of_order, stats })
}

fn report_one_way(label: &str, r: &OneWay) {
    println!(
        "  peerlink: {} msgs, {} payload bytes in {:.3} s; {} refused sends, {} Writable, {} out of order",
        r.messages,
        r.payload_bytes,
        r.elapsed.as_secs_f64(),
        r.stats.rejected,
        r.stats.writable,
        r.out_of_order
    );
    if r.out_of_order > 0 {
        println!("  !! {label}: {} messages arrived out of order", r.out_of_order);
    }
}

// ---------------------------------------------------------------------------
// W1: pings one way
// ---------------------------------------------------------------------------

fn w1(p: &Params, wires: &[Wire]) -> BenchResult<Vec<Row>> {
    let n = p.w1_msgs;
    println!("W1: {n} ping one way");
    let bytes = encode_all((0..n).map(NetworkMessage::Ping).collect::<Vec<_>>().iter());
    let (raw_time, _) = raw_one_way(&bytes, n)?;
    drop(bytes);
    let raw_rate = n as f64 / raw_time.as_secs_f64();
    println!("  bound:    {n} frames in {:.3} s", raw_time.as_secs_f64());

    let mut rows = Vec::new();
    for &wire in wires {
        let r = peerlink_one_way(wire, (0..n).map(NetworkMessage::Ping), n, |m| match m {
            NetworkMessage::Ping(i) => Some((*i, 8)),
            _ => None,
        })?;
        report_one_way(&format!("W1{}", wire.tag()), &r);
        let ours = r.messages as f64 / r.elapsed.as_secs_f64();
        let name = format!("W1{} {n} ping one way", wire.tag());
        let mut row = throughput_row(wire.order(1), name, ours, raw_rate, "M msg/s", 1e6, 0.15);
        if r.out_of_order > 0 {
            row.met = "**no** (order)";
        }
        rows.push(row);
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------
// W2: 1 MB transactions one way
// ---------------------------------------------------------------------------

/// A transaction whose serialization is exactly `TX_SIZE` bytes: one input
/// and 100 outputs with large scripts. `lock_time` carries the sequence
/// number.
fn big_tx() -> Transaction {
    let input = TxIn {
        previous_output: OutPoint::null(),
        script_sig: ScriptBuf::new(),
        sequence: Sequence::MAX,
        witness: Witness::new(),
    };
    let outputs = 100;
    let script_len = 9_900;
    let mut tx = Transaction {
        version: Version::ONE,
        lock_time: LockTime::ZERO,
        input: vec![input],
        output: (0..outputs)
            .map(|i| {
                let mut script = vec![0x6a]; // OP_RETURN, then filler
                script.resize(script_len, i as u8);
                TxOut { value: Amount::ZERO, script_pubkey: ScriptBuf::from_bytes(script) }
            })
            .collect(),
    };
    let size = bitcoin::consensus::encode::serialize(&tx).len();
    let last = tx.output.last_mut().expect("has outputs");
    let mut script = last.script_pubkey.to_bytes();
    script.resize(script.len() + TX_SIZE - size, 0x51);
    last.script_pubkey = ScriptBuf::from_bytes(script);
    assert_eq!(bitcoin::consensus::encode::serialize(&tx).len(), TX_SIZE);
    tx
}

fn w2(p: &Params, wires: &[Wire]) -> BenchResult<Vec<Row>> {
    let n = p.w2_msgs;
    println!("W2: {n} × {TX_SIZE}-byte tx one way");
    let template = big_tx();
    let messages = || -> Vec<NetworkMessage> {
        (0..n)
            .map(|i| {
                let mut tx = template.clone();
                tx.lock_time = LockTime::from_consensus(i as u32);
                NetworkMessage::Tx(tx)
            })
            .collect()
    };
    let bytes = encode_all(&messages());
    let (raw_time, raw_payload) = raw_one_way(&bytes, n)?;
    drop(bytes);
    let raw_rate = raw_payload as f64 / raw_time.as_secs_f64();
    println!("  bound:    {n} frames, {raw_payload} payload bytes in {:.3} s", raw_time.as_secs_f64());

    let mut rows = Vec::new();
    for &wire in wires {
        // Built before the clock starts, as for the bound.
        let r = peerlink_one_way(wire, messages().into_iter(), n, |m| match m {
            NetworkMessage::Tx(tx) => Some((u64::from(tx.lock_time.to_consensus_u32()), tx.total_size() as u64)),
            _ => None,
        })?;
        report_one_way(&format!("W2{}", wire.tag()), &r);
        let ours = r.payload_bytes as f64 / r.elapsed.as_secs_f64();
        let name = format!("W2{} {n} × 1 MB tx one way", wire.tag());
        let mut row = throughput_row(wire.order(2), name, ours, raw_rate, "MB/s", 1e6, 0.40);
        if r.out_of_order > 0 {
            row.met = "**no** (order)";
        }
        rows.push(row);
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------
// W3: ping-pong latency
// ---------------------------------------------------------------------------

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn raw_ping_pong(trips: usize, warmup: usize) -> BenchResult<Vec<Duration>> {
    let mut codec = V1Codec::new(NETWORK);
    let mut ping = Vec::new();
    codec.encode(&NetworkMessage::Ping(7), &mut ping)?;
    let mut pong = Vec::new();
    codec.encode(&NetworkMessage::Pong(7), &mut pong)?;
    assert_eq!((ping.len(), pong.len()), (32, 32));
    let total = trips + warmup;

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let magic = magic_bytes();
        let mut header = [0u8; HEADER_LEN];
        let mut payload = [0u8; 64];
        for _ in 0..total {
            s.read_exact(&mut header)?;
            assert_eq!(header[..4], magic);
            let len = u32::from_le_bytes([header[16], header[17], header[18], header[19]]) as usize;
            s.read_exact(&mut payload[..len])?;
            s.write_all(&pong)?;
        }
        Ok(())
    });
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let magic = magic_bytes();
    let mut header = [0u8; HEADER_LEN];
    let mut payload = [0u8; 64];
    let mut rtts = Vec::with_capacity(trips);
    for i in 0..total {
        let t0 = Instant::now();
        s.write_all(&ping)?;
        s.read_exact(&mut header)?;
        assert_eq!(header[..4], magic);
        let len = u32::from_le_bytes([header[16], header[17], header[18], header[19]]) as usize;
        s.read_exact(&mut payload[..len])?;
        if i >= warmup {
            rtts.push(t0.elapsed());
        }
    }
    server.join().map_err(|_| "raw pong server panicked")??;
    Ok(rtts)
}

fn peerlink_ping_pong(wire: Wire, trips: usize, warmup: usize) -> BenchResult<Vec<Duration>> {
    let Pair { server, server_peer, client, client_peer } = pair(wire)?;
    let total = (trips + warmup) as u64;
    let responder = thread::spawn(move || -> Result<(), String> {
        let mut answered = 0u64;
        while answered < total {
            match next_event(&server) {
                Ok(Event::Message { peer, message: NetworkMessage::Ping(n), .. }) => {
                    assert_eq!(peer, server_peer);
                    server.send(peer, NetworkMessage::Pong(n)).map_err(|e| e.to_string())?;
                    answered += 1;
                }
                Ok(Event::Disconnected { reason, .. }) => {
                    return Err(format!("responder disconnected: {}", Report(&reason)));
                }
                Ok(_) => {}
                Err(e) => return Err(format!("responder stalled after {answered}: {}", Report(&e))),
            }
        }
        // Stay alive (keeping the reactor up) until the client is done.
        while let Ok(event) = server.recv_timeout(Duration::from_secs(1)) {
            if let Event::Disconnected { .. } = event {
                break;
            }
        }
        Ok(())
    });
    let mut rtts = Vec::with_capacity(trips);
    for i in 0..total {
        let t0 = Instant::now();
        client.send(client_peer, NetworkMessage::Ping(i))?;
        loop {
            match next_event(&client)? {
                Event::Message { message: NetworkMessage::Pong(n), .. } if n == i => break,
                Event::Message { message, .. } => return Err(format!("unexpected {}", message.cmd()).into()),
                Event::Disconnected { reason, .. } => {
                    return Err(format!("client disconnected: {}", Report(&reason)).into());
                }
                _ => {}
            }
        }
        if i >= warmup as u64 {
            rtts.push(t0.elapsed());
        }
    }
    drop(client);
    responder.join().map_err(|_| "responder panicked")??;
    Ok(rtts)
}

fn w3(p: &Params, wires: &[Wire]) -> BenchResult<Vec<Row>> {
    let (trips, warmup) = (p.w3_trips, p.w3_warmup);
    println!("W3: {trips} ping/pong round trips (after {warmup} warm-up trips)");
    let mut raw = raw_ping_pong(trips, warmup)?;
    raw.sort();
    let (raw50, raw99) = (percentile(&raw, 0.5), percentile(&raw, 0.99));
    println!("  bound:    p50 {:.1} µs, p99 {:.1} µs", us(raw50), us(raw99));
    let mut rows = Vec::new();
    for &wire in wires {
        let mut ours = peerlink_ping_pong(wire, trips, warmup)?;
        ours.sort();
        let (our50, our99) = (percentile(&ours, 0.5), percentile(&ours, 0.99));
        let label = if wire == Wire::V1 { "peerlink:" } else { "peerlink (v2):" };
        println!("  {label} p50 {:.1} µs, p99 {:.1} µs", us(our50), us(our99));
        let r50 = us(our50) / us(raw50);
        let r99 = us(our99) / us(raw99);
        rows.push(Row {
            order: wire.order(3),
            name: format!("W3{} {trips} ping/pong, p50 latency", wire.tag()),
            ours: format!("{:.1} µs", us(our50)),
            bound: format!("{:.1} µs", us(raw50)),
            ratio: format!("{r50:.2}×"),
            target: "≤ 1.10×".into(),
            met: yes_no(r50 <= 1.10),
        });
        rows.push(Row {
            order: wire.order(4),
            name: format!("W3{} {trips} ping/pong, p99 latency", wire.tag()),
            ours: format!("{:.1} µs", us(our99)),
            bound: format!("{:.1} µs", us(raw99)),
            ratio: format!("{r99:.2}×"),
            target: "—".into(),
            met: "—",
        });
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------
// W4: many inbound connections
// ---------------------------------------------------------------------------

/// Resident set size of this process in KiB, from /proc/self/status.
fn rss_kib() -> BenchResult<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).ok_or("no VmRSS in /proc/self/status")?;
    Ok(line.split_whitespace().nth(1).ok_or("malformed VmRSS")?.parse()?)
}

/// Client threads that connect, then (on the next gate) write, then (on the
/// next gate) close. Main passes four gates: connect, connected, write, close.
struct Clients {
    gate: Arc<Barrier>,
    threads: Vec<thread::JoinHandle<std::io::Result<()>>>,
}

impl Clients {
    fn spawn(addr: SocketAddr, conns: usize, threads: usize, bytes: &Arc<Vec<u8>>) -> Clients {
        let gate = Arc::new(Barrier::new(threads + 1));
        let threads = (0..threads)
            .map(|t| {
                let mine = conns / threads + usize::from(t < conns % threads);
                let gate = Arc::clone(&gate);
                let bytes = Arc::clone(bytes);
                thread::spawn(move || -> std::io::Result<()> {
                    let mut streams = Vec::with_capacity(mine);
                    gate.wait(); // connect
                    let mut result = Ok(());
                    for _ in 0..mine {
                        match TcpStream::connect(addr) {
                            Ok(s) => streams.push(s),
                            Err(e) => {
                                result = Err(e);
                                break;
                            }
                        }
                    }
                    gate.wait(); // connected
                    gate.wait(); // write
                    for s in &mut streams {
                        if result.is_ok() {
                            result = s.write_all(&bytes);
                        }
                    }
                    gate.wait(); // close
                    drop(streams);
                    result
                })
            })
            .collect();
        Clients { gate, threads }
    }

    fn pass(&self) {
        self.gate.wait();
    }

    fn join(self) -> BenchResult<()> {
        for t in self.threads {
            t.join().map_err(|_| "client thread panicked")??;
        }
        Ok(())
    }
}

struct ManyConns {
    elapsed: Duration,
    messages: u64,
    rss_per_conn_kib: f64,
}

fn w4_bytes(msgs_per_conn: usize) -> Vec<u8> {
    let messages: Vec<NetworkMessage> = (0..msgs_per_conn)
        .map(|i| {
            let mut h = [0u8; 32];
            h[..8].copy_from_slice(&(i as u64).to_le_bytes());
            NetworkMessage::Inv(vec![Inventory::Transaction(Txid::from_byte_array(h))])
        })
        .collect();
    encode_all(&messages)
}

fn peerlink_many(p: &Params, bytes: &Arc<Vec<u8>>) -> BenchResult<ManyConns> {
    let conns = p.w4_conns;
    let expected = (conns * p.w4_msgs_per_conn) as u64;
    // The clients write v1 bytes: a v1-only listener (no v2 detection, no
    // per-connection key generation).
    let mut config = raw_config(TransportPolicy::V1Only);
    config.listen.push("127.0.0.1:0".parse()?);
    // 1,000 inbound peers: above the default cap of 125.
    config.max_inbound = 10_000;
    let server = peerlink::start(config)?;
    let clients = Clients::spawn(server.local_addrs()[0], conns, p.w4_client_threads, bytes);
    thread::sleep(Duration::from_millis(50)); // let the client threads settle at the gate
    let before = rss_kib()?;
    clients.pass(); // connect
    let mut accepted = 0;
    while accepted < conns {
        match server.recv_timeout(STALL)? {
            Event::Connected { .. } => accepted += 1,
            other => return Err(format!("unexpected event while accepting: {other:?}").into()),
        }
    }
    let after = rss_kib()?;
    clients.pass(); // connected (client side)
    let start = Instant::now();
    clients.pass(); // write
    let mut messages = 0u64;
    while messages < expected {
        match next_event(&server)? {
            Event::Message { message: NetworkMessage::Inv(_), .. } => messages += 1,
            Event::Disconnected { reason, .. } => {
                return Err(format!("inbound peer disconnected: {}", Report(&reason)).into());
            }
            other => return Err(format!("unexpected event: {other:?}").into()),
        }
    }
    let elapsed = start.elapsed();
    clients.pass(); // close
    clients.join()?;
    Ok(ManyConns { elapsed, messages, rss_per_conn_kib: after.saturating_sub(before) as f64 / conns as f64 })
}

fn raw_many(p: &Params, bytes: &Arc<Vec<u8>>) -> BenchResult<ManyConns> {
    use mio::net::TcpListener as MioListener;
    use mio::{Events, Interest, Poll, Token};

    let conns = p.w4_conns;
    let expected = (conns * p.w4_msgs_per_conn) as u64;
    let mut listener = MioListener::bind("127.0.0.1:0".parse()?)?;
    let addr = listener.local_addr()?;
    let accepted = Arc::new(AtomicUsize::new(0));
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = {
        let accepted = Arc::clone(&accepted);
        thread::spawn(move || -> std::io::Result<Instant> {
            const LISTENER: Token = Token(usize::MAX);
            let mut poll = Poll::new()?;
            let mut events = Events::with_capacity(1024);
            let mut buf = vec![0u8; 256 * 1024];
            poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
            let mut peers: Vec<(mio::net::TcpStream, FrameCounter)> = Vec::new();
            let mut total = 0u64;
            let _ = ready_tx.send(());
            loop {
                poll.poll(&mut events, Some(STALL))?;
                if events.is_empty() {
                    return Err(std::io::Error::other("raw server stalled"));
                }
                for event in events.iter() {
                    if event.token() == LISTENER {
                        loop {
                            match listener.accept() {
                                Ok((mut s, _)) => {
                                    s.set_nodelay(true)?;
                                    poll.registry().register(&mut s, Token(peers.len()), Interest::READABLE)?;
                                    peers.push((s, FrameCounter::new()));
                                    accepted.fetch_add(1, Ordering::SeqCst);
                                }
                                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                                Err(e) => return Err(e),
                            }
                        }
                        continue;
                    }
                    let (s, counter) = &mut peers[event.token().0];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                let before = counter.frames;
                                counter.feed(&buf[..n]);
                                total += counter.frames - before;
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                if total >= expected {
                    return Ok(Instant::now());
                }
            }
        })
    };
    ready_rx.recv_timeout(STALL)?;
    let clients = Clients::spawn(addr, conns, p.w4_client_threads, bytes);
    thread::sleep(Duration::from_millis(50));
    let before = rss_kib()?;
    clients.pass(); // connect
    let deadline = Instant::now() + STALL;
    while accepted.load(Ordering::SeqCst) < conns {
        if Instant::now() > deadline {
            return Err("raw server did not accept every connection".into());
        }
        thread::sleep(Duration::from_millis(1));
    }
    let after = rss_kib()?;
    clients.pass(); // connected
    let start = Instant::now();
    clients.pass(); // write
    let end = server.join().map_err(|_| "raw server panicked")??;
    clients.pass(); // close
    clients.join()?;
    Ok(ManyConns {
        elapsed: end - start,
        messages: expected,
        rss_per_conn_kib: after.saturating_sub(before) as f64 / conns as f64,
    })
}

fn w4(p: &Params) -> BenchResult<Vec<Row>> {
    let (conns, per) = (p.w4_conns, p.w4_msgs_per_conn);
    println!("W4: {conns} connections × {per} inv into one listener");
    // Pre-encoded before any baseline is taken.
    let bytes = Arc::new(w4_bytes(per));
    let ours = peerlink_many(p, &bytes)?;
    let raw = raw_many(p, &bytes)?;
    println!(
        "  bound:    {} msgs in {:.3} s, RSS {:.2} KiB per connection",
        raw.messages,
        raw.elapsed.as_secs_f64(),
        raw.rss_per_conn_kib
    );
    println!(
        "  peerlink: {} msgs in {:.3} s, RSS {:.2} KiB per connection",
        ours.messages,
        ours.elapsed.as_secs_f64(),
        ours.rss_per_conn_kib
    );
    let our_rate = ours.messages as f64 / ours.elapsed.as_secs_f64();
    let raw_rate = raw.messages as f64 / raw.elapsed.as_secs_f64();
    Ok(vec![
        throughput_row(10, format!("W4 {conns} conns × {per} inv"), our_rate, raw_rate, "M msg/s", 1e6, 0.25),
        Row {
            order: 11,
            name: format!("W4 RSS per connection ({conns} accepted, idle)"),
            ours: format!("{:.2} KiB", ours.rss_per_conn_kib),
            bound: format!("{:.2} KiB", raw.rss_per_conn_kib),
            ratio: "—".into(),
            target: "≤ 8 KiB".into(),
            met: yes_no(ours.rss_per_conn_kib <= 8.0),
        },
    ])
}

/// The benchmark drives raw mode: no session handshake, every message
/// delivered, over the given transport.
fn raw_config(transport: TransportPolicy) -> Config {
    let mut config = Config::new(NETWORK);
    config.mode = peerlink::Mode::Raw;
    config.transport = transport;
    config
}
