//! A listener that prints one line per event. It runs until killed.
//!
//! ```text
//! cargo run --example listen -- --bind 127.0.0.1:18444 [--network regtest] [--session]
//! ```
//!
//! Raw mode (the default here) answers `ping` with `pong` (same nonce) and
//! `version` with its own `version` then `verack`. With `--session` the
//! library runs the handshake and keepalive and each peer is announced once
//! it is ready. Both v1 and BIP324 v2 peers are accepted (the first 16 bytes
//! tell them apart).
//!
//! No peer can stop it: a reply to a peer that is already gone is dropped,
//! and replies a peer is too slow to take wait in a bounded per-peer
//! [`Outbox`] (copy it: it is the pattern that keeps a stream in order).
//!
//! Output lines (stable, greppable):
//!
//! `listening addr=…`, `connected peer=ID addr=… direction=inbound transport=v1|v2 session_id=…`,
//! `ready peer=ID addr=… ua=… version=… services=… height=… transport=…`,
//! `message peer=ID cmd=NAME size=BYTES`, `disconnected peer=ID reason=…`,
//! `backlog peer=ID cmd=NAME` (the peer's send buffer is full: replies are
//! held from here on), `writable peer=ID`, `flushed peer=ID sent=N` (the
//! held replies went out), `overflow peer=ID held=N` (too many held:
//! disconnecting the peer), `dropped peer=ID cmd=NAME reason=…` (a reply to
//! a peer that is gone), `rejected peer=ID cmd=NAME reason=…`.

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_network::VersionMessage;
use bitcoin::p2p::{Address, ServiceFlags};
use peerlink::error::Report;
use peerlink::{Config, Disconnect, Event, Handle, Mode, PeerId, ReactorGone, Refusal, Refused};

const USAGE: &str = "usage: listen --bind ADDR [--network main|test|testnet4|signet|regtest] [--session]";

/// Replies held per peer before the peer is disconnected. A peer that reads
/// can still cause a burst of refusals before `Writable` (a refusal also
/// comes when 4,096 messages are on their way to the reactor), so the bound
/// is well above that. Listen's replies are 32-byte pongs and the odd
/// ~130-byte version, so a backlog stays near 320 KB and under 1.3 MB; an
/// application that sends large messages would bound bytes instead.
const MAX_BACKLOG: usize = 10_000;

struct Args {
    bind: SocketAddr,
    network: bitcoin::Network,
    session: bool,
}

fn main() -> ExitCode {
    let Args { bind, network, session } = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut config = Config::new(network);
    config.listen.push(bind);
    config.mode = if session { Mode::Session } else { Mode::Raw };
    config.session.user_agent_name = Some("listen".into());
    let handle = match peerlink::start(config) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {}", Report(&e));
            return ExitCode::FAILURE;
        }
    };
    for addr in handle.local_addrs() {
        println!("listening addr={addr} network={network}");
    }
    match serve(&handle, session) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints every event and, in raw mode, answers `ping` and `version`. Only a
/// stopped reactor ends it; nothing a single peer does is an error here.
fn serve(handle: &Handle, session: bool) -> Result<(), ReactorGone> {
    let mut outbox = Outbox::new(MAX_BACKLOG);
    let mut nonce = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
    for event in handle.iter() {
        match event {
            Event::Connected { peer, remote, direction, .. } => {
                let transport = handle.peer_info(peer).ok().flatten().map(|i| i.transport);
                let transport = transport.map_or("unknown".to_owned(), common::describe_transport);
                println!("connected peer={peer} addr={remote} direction={direction} transport={transport}")
            }
            Event::Ready { peer, info } => {
                let v = info.version.as_ref();
                println!(
                    "ready peer={peer} addr={} direction={} ua={:?} version={} services={} height={} features={} transport={}",
                    info.addr,
                    info.direction,
                    v.map_or("", |v| &v.user_agent),
                    v.map_or(0, |v| v.version),
                    common::service_names(v.map_or(bitcoin::p2p::ServiceFlags::NONE, |v| v.services)),
                    v.map_or(0, |v| v.start_height),
                    info.features,
                    common::describe_transport(info.transport),
                );
            }
            Event::Disconnected { peer, reason } => {
                println!("disconnected peer={peer} reason={}", Report(&reason));
                outbox.forget(peer);
            }
            Event::Message { peer, message, wire_size } => {
                println!("message peer={peer} cmd={} size={wire_size}", message.command());
                let replies = match message {
                    _ if session => vec![],
                    NetworkMessage::Ping(n) => vec![NetworkMessage::Pong(n)],
                    NetworkMessage::Version(v) => {
                        nonce = nonce.wrapping_mul(6364136223846793005).wrapping_add(1);
                        vec![NetworkMessage::Version(version(&v, nonce)), NetworkMessage::Verack]
                    }
                    _ => vec![],
                };
                for reply in replies {
                    outbox.send(handle, peer, reply)?;
                }
            }
            Event::Writable { peer } => {
                println!("writable peer={peer}");
                outbox.writable(handle, peer)?;
            }
            Event::SendRejected { peer, message, reason } => {
                // Accepted by `send`, then handed back: the peer went away
                // meanwhile. Nothing to retry.
                println!("rejected peer={peer} cmd={} reason={}", message.command(), Report(&reason))
            }
            Event::ConnectFailed { peer, target, error } => {
                println!("connect-failed peer={peer} target={target} error={}", Report(&error))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Sends replies without ever losing their order or letting one peer hurt
/// the others.
///
/// [`Handle::send`] refuses a message at once when the peer has no room (its
/// send buffer is full, [`Refusal::BufferFull`], or too many messages are on
/// their way to the reactor, [`Refusal::InFlight`]; both are
/// [`Refusal::is_backpressure`]) and reports [`Event::Writable`] once there
/// is room again. Because the refusal is synchronous, holding what was refused,
/// sending everything newer behind it, and sending the held messages first
/// on `Writable` keeps the peer's stream exactly in order.
///
/// A peer that asks for replies and never reads them (a ping flood) would
/// make that backlog grow without end, so it is bounded: past `limit` held
/// messages the peer is disconnected and its backlog dropped.
///
/// A reply refused because the peer is gone ([`Refusal::UnknownPeer`]) is
/// dropped: `Event::Disconnected` for it is on its way, or already handled.
struct Outbox {
    /// Replies refused or queued behind a refused one, oldest first. A peer
    /// is here only while it has a backlog.
    backlogs: HashMap<PeerId, VecDeque<NetworkMessage>>,
    /// Peers disconnected for overflowing: replies to them are dropped until
    /// their `Disconnected` arrives.
    closing: HashSet<PeerId>,
    limit: usize,
}

impl Outbox {
    fn new(limit: usize) -> Self {
        Outbox { backlogs: HashMap::new(), closing: HashSet::new(), limit }
    }

    /// Sends `message` to `peer`, or holds it if the peer's buffer is full
    /// or earlier replies are still held. Fails only when the reactor has
    /// stopped.
    fn send(&mut self, handle: &Handle, peer: PeerId, message: NetworkMessage) -> Result<(), ReactorGone> {
        if self.closing.contains(&peer) {
            return Ok(());
        }
        if let Some(backlog) = self.backlogs.get_mut(&peer) {
            // Never overtake a held reply: wait for `Writable` behind it.
            backlog.push_back(message);
            if backlog.len() > self.limit {
                return self.overflow(handle, peer);
            }
            return Ok(());
        }
        match handle.send(peer, message) {
            Ok(()) => Ok(()),
            Err(Refused { message, reason }) if reason.is_backpressure() => {
                println!("backlog peer={peer} cmd={}", message.command());
                self.backlogs.entry(peer).or_default().push_back(message);
                Ok(())
            }
            Err(refused) => Self::refused(peer, refused),
        }
    }

    /// `Event::Writable` for `peer`: sends its held replies, oldest first,
    /// until they are all out or the buffer is full again.
    fn writable(&mut self, handle: &Handle, peer: PeerId) -> Result<(), ReactorGone> {
        let Some(backlog) = self.backlogs.get_mut(&peer) else { return Ok(()) };
        let mut sent = 0;
        while let Some(message) = backlog.pop_front() {
            match handle.send(peer, message) {
                Ok(()) => sent += 1,
                Err(Refused { message, reason }) if reason.is_backpressure() => {
                    // Full again: put it back in front; another `Writable`
                    // follows.
                    backlog.push_front(message);
                    return Ok(());
                }
                Err(refused) => {
                    self.backlogs.remove(&peer);
                    return Self::refused(peer, refused);
                }
            }
        }
        self.backlogs.remove(&peer);
        println!("flushed peer={peer} sent={sent}");
        Ok(())
    }

    /// The peer is gone: forget what was held for it.
    fn forget(&mut self, peer: PeerId) {
        self.backlogs.remove(&peer);
        self.closing.remove(&peer);
    }

    /// Too much is held for `peer`: it takes our replies more slowly than it
    /// asks for them. Disconnect it and drop its backlog.
    fn overflow(&mut self, handle: &Handle, peer: PeerId) -> Result<(), ReactorGone> {
        let held = self.backlogs.remove(&peer).map_or(0, |b| b.len());
        println!("overflow peer={peer} held={held}");
        self.closing.insert(peer);
        handle.disconnect(peer, Disconnect::Now)
    }

    /// A refusal other than back-pressure: the message is dropped, and only a
    /// stopped reactor is an error.
    fn refused(peer: PeerId, refused: Refused<NetworkMessage>) -> Result<(), ReactorGone> {
        match refused.reason {
            Refusal::ReactorGone => Err(ReactorGone),
            _ => {
                println!("dropped peer={peer} cmd={} reason={refused}", refused.message.command());
                Ok(())
            }
        }
    }
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut bind = None;
    let mut network = bitcoin::Network::Bitcoin;
    let mut session = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bind" => {
                let v = args.next().ok_or("--bind needs an address")?;
                bind = Some(v.parse().map_err(|e| format!("bad --bind address {v:?}: {}", Report(&e)))?);
            }
            "--network" => {
                let v = args.next().ok_or("--network needs a name")?;
                network = common::network(&v)?;
            }
            "--session" => session = true,
            "-h" | "--help" => return Err("help requested".into()),
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    Ok(Args { bind: bind.ok_or("--bind is required")?, network, session })
}

fn version(theirs: &VersionMessage, nonce: u64) -> VersionMessage {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    VersionMessage {
        version: 70016,
        services: ServiceFlags::NONE,
        timestamp: now,
        receiver: theirs.sender.clone(),
        sender: Address { services: ServiceFlags::NONE, address: [0; 8], port: 0 },
        nonce,
        user_agent: "/peerlink-listen:0.1.0/".to_owned(),
        start_height: 0,
        relay: false,
    }
}
