//! Scale and churn on one reactor thread, with the other ends in a second
//! process (this binary again, as a child), all on 127.0.0.1.
//!
//! 1. `--peers` (10,000) connections are opened by the child: the time to
//!    accept them all, and the reactor process's user-space RSS per idle
//!    peer (VmRSS after, less VmRSS before, over the peers).
//! 2. Every peer sends `--msgs` (100) pings at once: the aggregate rate at
//!    which the reactor delivers them decoded.
//! 3. `--cycles` (100,000) connect/disconnect cycles from 8 child threads,
//!    a quarter each closing normally, with a reset (the child closes with
//!    our `pong` unread), by half-closing and waiting for our close, and in
//!    the middle of a frame: afterwards the process has as many file
//!    descriptors open as before, and its RSS.
//!
//! Run: `cargo run --release --example scale [-- --peers N --msgs M --cycles C]`
//!
//! It prints its figures and exits with 1 if a peer is lost, a message is
//! missing or out of order, or a file descriptor leaks.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use bitcoin::p2p::message::NetworkMessage;
use peerlink::codec::Codec;
use peerlink::error::Report;
use peerlink::wire::V1Codec;
use peerlink::{Config, Event, Handle, Mode};

const NETWORK: bitcoin::Network = bitcoin::Network::Regtest;
/// Upper bound on any one wait; reached only when something is wrong.
const WAIT: Duration = Duration::from_secs(120);
const CHILD_THREADS: usize = 8;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

struct Args {
    peers: usize,
    msgs: u64,
    cycles: usize,
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let result = if argv.first().map(String::as_str) == Some("--child") { child(&argv[1..]) } else { parent(&argv) };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", Report(&*e));
            ExitCode::FAILURE
        }
    }
}

fn parse(argv: &[String]) -> Res<Args> {
    let mut args = Args { peers: 10_000, msgs: 100, cycles: 100_000 };
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--peers" => args.peers = value.parse()?,
            "--msgs" => args.msgs = value.parse()?,
            "--cycles" => args.cycles = value.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(args)
}

/// A field of /proc/self/status, in KiB.
fn status_kib(field: &str) -> Res<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with(field)).ok_or_else(|| format!("no {field} in /proc"))?;
    Ok(line.split_whitespace().nth(1).ok_or("malformed /proc/self/status")?.parse()?)
}

fn open_fds() -> Res<usize> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count())
}

fn encode(message: &NetworkMessage) -> Vec<u8> {
    let mut out = Vec::new();
    V1Codec::new(NETWORK).encode(message, &mut out).expect("a ping encodes");
    out
}

fn next(handle: &Handle) -> Res<Event> {
    handle.recv_timeout(WAIT).map_err(|e| format!("waiting for an event: {e}").into())
}

fn parent(argv: &[String]) -> Res<()> {
    let args = parse(argv)?;
    let mut config = Config::new(NETWORK);
    config.mode = Mode::Raw;
    config.transport = peerlink::wire::TransportPolicy::V1Only;
    config.listen.push("127.0.0.1:0".parse()?);
    config.max_inbound = args.peers.max(CHILD_THREADS);
    let server = peerlink::start(config)?;
    let addr = server.local_addrs()[0];
    let (rss0, fds0) = (status_kib("VmRSS:")?, open_fds()?);

    let mut child = Command::new(std::env::current_exe()?)
        .args(["--child", &addr.to_string(), &args.peers.to_string(), &args.msgs.to_string(), &args.cycles.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut to_child = child.stdin.take().ok_or("child stdin")?;
    let mut from_child = BufReader::new(child.stdout.take().ok_or("child stdout")?);
    let mut expect = |line: &str| -> Res<()> {
        let mut got = String::new();
        from_child.read_line(&mut got)?;
        if got.trim() != line {
            return Err(format!("child said {got:?}, expected {line:?}").into());
        }
        Ok(())
    };

    // 1. Accept them all.
    let started = Instant::now();
    writeln!(to_child, "connect")?;
    let mut ids = Vec::with_capacity(args.peers);
    while ids.len() < args.peers {
        match next(&server)? {
            Event::Connected { peer, .. } => ids.push(peer),
            other => return Err(format!("while accepting: {other:?}").into()),
        }
    }
    let accept_time = started.elapsed();
    expect("connected")?;
    let rss_idle = status_kib("VmRSS:")?;
    let per_peer = (rss_idle.saturating_sub(rss0)) as f64 / args.peers as f64;
    println!("accept: {} peers in {:.3} s", args.peers, accept_time.as_secs_f64());
    println!(
        "idle:   {per_peer:.2} KiB user-space RSS per peer (VmRSS {rss0} KiB before, {rss_idle} KiB with the peers; target <= 4 KiB: {})",
        if per_peer <= 4.0 { "met" } else { "missed" }
    );

    // 2. All of them send at once; per peer the nonces must run 0..msgs.
    let started = Instant::now();
    writeln!(to_child, "send")?;
    let mut next_nonce = std::collections::HashMap::with_capacity(args.peers);
    let total = args.peers as u64 * args.msgs;
    let mut got = 0u64;
    while got < total {
        match next(&server)? {
            Event::Message { peer, message: NetworkMessage::Ping(n), .. } => {
                let want = next_nonce.entry(peer).or_insert(0u64);
                if n != *want {
                    return Err(format!("peer {peer}: ping {n} where {want} was due").into());
                }
                *want += 1;
                got += 1;
            }
            other => return Err(format!("while receiving: {other:?}").into()),
        }
    }
    let elapsed = started.elapsed();
    println!(
        "send:   {total} pings from {} peers in {:.3} s: {:.0} msgs/s",
        args.peers,
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    expect("sent")?;
    writeln!(to_child, "close")?;
    let mut gone = 0;
    while gone < args.peers {
        if let Event::Disconnected { .. } = next(&server)? {
            gone += 1;
        }
    }
    expect("closed")?;

    // 3. Churn. A ping is answered, so that some children close with our
    // pong unread (a reset).
    let (rss_before, fds_before) = (status_kib("VmRSS:")?, open_fds()?);
    let started = Instant::now();
    writeln!(to_child, "cycle")?;
    let (mut opened, mut closed) = (0usize, 0usize);
    while closed < args.cycles {
        match next(&server)? {
            Event::Connected { .. } => opened += 1,
            Event::Disconnected { .. } => closed += 1,
            Event::Message { peer, message: NetworkMessage::Ping(n), .. } => {
                let _ = server.send(peer, NetworkMessage::Pong(n));
            }
            Event::Message { .. } | Event::SendRejected { .. } | Event::Writable { .. } => {}
            other => return Err(format!("while cycling: {other:?}").into()),
        }
    }
    let elapsed = started.elapsed();
    expect("cycled")?;
    let (rss_after, fds_after) = (status_kib("VmRSS:")?, open_fds()?);
    println!(
        "churn:  {} connect/close cycles ({opened} accepted; FIN, RST, half-close, mid-frame) in {:.3} s: {:.0}/s",
        args.cycles,
        elapsed.as_secs_f64(),
        args.cycles as f64 / elapsed.as_secs_f64()
    );
    println!(
        "        file descriptors {fds_before} before, {fds_after} after; VmRSS {rss_before} KiB before, {rss_after} KiB after"
    );
    println!("        (process start: {fds0} descriptors, {rss0} KiB)");
    drop(to_child);
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("child exited with {status}").into());
    }
    if opened != args.cycles {
        return Err(format!("{opened} of {} cycles accepted", args.cycles).into());
    }
    if fds_after != fds_before {
        return Err(format!("file descriptors: {fds_before} before the cycles, {fds_after} after").into());
    }
    Ok(())
}

/// The other ends: waits for each command on stdin, does it, and reports
/// on stdout.
fn child(argv: &[String]) -> Res<()> {
    let [addr, peers, msgs, cycles] = argv else { return Err("child: bad arguments".into()) };
    let addr: SocketAddr = addr.parse()?;
    let (peers, msgs, cycles): (usize, u64, usize) = (peers.parse()?, msgs.parse()?, cycles.parse()?);
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut command = |want: &str| -> Res<()> {
        match lines.next() {
            Some(Ok(line)) if line == want => Ok(()),
            other => Err(format!("child: expected {want}, got {other:?}").into()),
        }
    };
    let say = |line: &str| -> Res<()> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
        Ok(())
    };

    command("connect")?;
    let mut streams = Vec::with_capacity(peers);
    for _ in 0..peers {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        streams.push(s);
    }
    say("connected")?;

    command("send")?;
    // Round-robin, a batch of pings per peer at a time.
    let pings: Vec<Vec<u8>> = (0..msgs).map(|n| encode(&NetworkMessage::Ping(n))).collect();
    for chunk in pings.chunks(10) {
        let bytes = chunk.concat();
        for s in &mut streams {
            s.write_all(&bytes)?;
        }
    }
    say("sent")?;
    command("close")?;
    drop(streams);
    say("closed")?;

    command("cycle")?;
    let threads: Vec<_> = (0..CHILD_THREADS)
        .map(|t| {
            let n = cycles / CHILD_THREADS + usize::from(t < cycles % CHILD_THREADS);
            std::thread::spawn(move || cycle(addr, t, n))
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| "cycle thread panicked")??;
    }
    say("cycled")
}

fn cycle(addr: SocketAddr, thread: usize, n: usize) -> Result<(), String> {
    let ping = encode(&NetworkMessage::Ping(1));
    let err = |what: &str, e: std::io::Error| format!("cycle: {what}: {e}");
    for i in 0..n {
        let mut s = TcpStream::connect(addr).map_err(|e| err("connect", e))?;
        s.set_read_timeout(Some(WAIT)).map_err(|e| err("timeout", e))?;
        match (i + thread) % 4 {
            // Normal close after a message.
            0 => s.write_all(&ping).map_err(|e| err("write", e))?,
            // Reset: our pong arrives, is left unread, and the close sends RST.
            1 => {
                s.write_all(&ping).map_err(|e| err("write", e))?;
                let mut byte = [0u8; 1];
                s.read_exact(&mut byte).map_err(|e| err("read pong", e))?;
            }
            // Half-close, then wait for the reactor to close its side.
            2 => {
                s.shutdown(Shutdown::Write).map_err(|e| err("shutdown", e))?;
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest);
            }
            // Mid-frame: half a ping, then gone.
            _ => s.write_all(&ping[..ping.len() / 2]).map_err(|e| err("write", e))?,
        }
    }
    Ok(())
}
