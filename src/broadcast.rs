//! One-shot transaction broadcast: connect, hand the transaction over, make
//! sure each peer processed it, and leave.
//!
//! For each target, [`broadcast`]:
//! 1. connects and runs the session handshake;
//! 2. announces the transaction with `inv`, by wtxid if the peer negotiated
//!    `wtxidrelay` (BIP339), else by txid;
//! 3. answers the peer's `getdata` with the `tx`;
//! 4. sends a `ping` right after the `tx`: peers process messages in order,
//!    so the `pong` proves the transaction was processed;
//! 5. disconnects after flushing.
//!
//! A `reject` for the transaction (old nodes, bcoin) fails that peer.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bitcoin::Transaction;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_blockdata::Inventory;

use crate::event::{ConnectError, DisconnectReason, Event, PeerId};
use crate::handle::Disconnect;
use crate::{Config, Mode, StartError};

/// How far a peer got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Connecting.
    Connect,
    /// Handshaking.
    Handshake,
    /// Transaction announced; waiting for the peer's `getdata`.
    Announced,
    /// Transaction sent; waiting for the `pong` that confirms it.
    Sent,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Connect => "connect",
            Stage::Handshake => "handshake",
            Stage::Announced => "announced",
            Stage::Sent => "sent",
        })
    }
}

/// Why the transaction did not reach a peer.
#[derive(Debug)]
#[non_exhaustive]
pub enum BroadcastError {
    /// The connection could not be made.
    Connect(ConnectError),
    /// The connection ended during the handshake.
    Handshake(DisconnectReason),
    /// The peer completed the handshake but never asked for the transaction
    /// before the deadline (it may already have it).
    NeverRequested,
    /// The peer answered with `reject`.
    Rejected {
        /// The reject code.
        code: String,
        /// The peer's reason.
        reason: String,
    },
    /// The connection ended after the handshake, before confirmation.
    Disconnected {
        /// How far the peer got.
        stage: Stage,
        /// Why it ended.
        reason: DisconnectReason,
    },
    /// The deadline passed.
    Timeout {
        /// How far the peer got.
        stage: Stage,
    },
}

impl fmt::Display for BroadcastError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BroadcastError::Connect(_) => f.write_str("could not connect"),
            BroadcastError::Handshake(_) => f.write_str("connection ended during the handshake"),
            BroadcastError::NeverRequested => f.write_str("peer never requested the transaction"),
            BroadcastError::Rejected { code, reason } => write!(f, "rejected ({code}): {reason}"),
            BroadcastError::Disconnected { stage, .. } => write!(f, "connection ended at stage {stage}"),
            BroadcastError::Timeout { stage } => write!(f, "deadline passed at stage {stage}"),
        }
    }
}

impl std::error::Error for BroadcastError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BroadcastError::Connect(e) => Some(e),
            BroadcastError::Handshake(r) | BroadcastError::Disconnected { reason: r, .. } => Some(r),
            _ => None,
        }
    }
}

/// The result for one target.
#[derive(Debug)]
pub struct Outcome {
    /// The target address.
    pub addr: SocketAddr,
    /// `Ok` when the peer fetched the transaction and confirmed processing it.
    pub result: Result<Delivered, BroadcastError>,
}

/// Proof of delivery to one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The peer's user agent.
    pub user_agent: String,
    /// Whether it was announced by wtxid.
    pub by_wtxid: bool,
    /// Time from start to confirmation.
    pub elapsed: Duration,
}

struct Target {
    addr: SocketAddr,
    stage: Stage,
    by_wtxid: bool,
    user_agent: String,
    ping: u64,
    result: Option<Result<Delivered, BroadcastError>>,
}

/// Broadcasts `tx` to every address in `peers`, each on its own connection
/// of a private reactor built from `config` (its mode is forced to session),
/// and returns one outcome per target, in the order given, by `timeout`.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // A signed transaction, as your wallet serialised it.
/// let hex = "0200000001aad73931018bd25f84ae400b68848be09db706eac2ac18298babee71ab656f8b0000000048473044022058f6fc7c6a33e1b31548d481c826c015bd30135aad42cd67790dab66d2ad243b02204a1ced2604c6735b6393e5b41691dd78b00f0c5942fb9f751856faa938157dba01feffffff0280f0fa020000000017a9140fb9463421696b82c833af241c78c17ddbde493487d0f20a270100000017a91429ca74f8a08f81999428185c97b5d852e4063f618765000000";
/// let tx: bitcoin::Transaction = bitcoin::consensus::encode::deserialize_hex(hex)?;
/// let config = peerlink::Config::new(bitcoin::Network::Regtest);
/// let peers = ["127.0.0.1:18444".parse()?];
/// let outcomes = peerlink::broadcast::broadcast(config, &tx, &peers, std::time::Duration::from_secs(30))?;
/// assert!(outcomes.iter().any(|o| o.result.is_ok()));
/// # Ok(()) }
/// ```
pub fn broadcast(
    mut config: Config,
    tx: &Transaction,
    peers: &[SocketAddr],
    timeout: Duration,
) -> Result<Vec<Outcome>, StartError> {
    config.mode = Mode::Session;
    config.listen.clear();
    let start = Instant::now();
    let deadline = crate::session::later(start, timeout);
    let handle = crate::start(config)?;
    let txid = tx.compute_txid();
    let wtxid = tx.compute_wtxid();
    let mut targets: Vec<Target> = Vec::with_capacity(peers.len());
    let mut by_id: HashMap<PeerId, usize> = HashMap::new();
    for (i, addr) in peers.iter().enumerate() {
        let mut target = Target {
            addr: *addr,
            stage: Stage::Connect,
            by_wtxid: false,
            user_agent: String::new(),
            ping: 0,
            result: None,
        };
        match handle.connect(*addr) {
            Ok(id) => {
                by_id.insert(id, i);
            }
            Err(_) => target.result = Some(Err(BroadcastError::Timeout { stage: Stage::Connect })),
        }
        targets.push(target);
    }
    let mut open = by_id.len();
    let mut nonce = start.elapsed().as_nanos() as u64 ^ 0x5bd1_e995;
    while open > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(event) = handle.recv_timeout(left) else { break };
        let (peer, outcome) = match event {
            Event::Ready { peer, info } => {
                let Some(&i) = by_id.get(&peer) else { continue };
                let t = &mut targets[i];
                t.stage = Stage::Announced;
                t.by_wtxid = info.features.wtxid_relay;
                t.user_agent = info.version.map(|v| v.user_agent).unwrap_or_default();
                let inv = if t.by_wtxid { Inventory::WTx(wtxid) } else { Inventory::Transaction(txid) };
                let _ = handle.send(peer, NetworkMessage::Inv(vec![inv]));
                continue;
            }
            Event::Message { peer, message, .. } => {
                let Some(&i) = by_id.get(&peer) else { continue };
                let t = &mut targets[i];
                match message {
                    NetworkMessage::GetData(items) if t.stage == Stage::Announced => {
                        let wanted = items.iter().any(|inv| match inv {
                            Inventory::WTx(w) => *w == wtxid,
                            Inventory::Transaction(id) | Inventory::WitnessTransaction(id) => *id == txid,
                            _ => false,
                        });
                        if wanted {
                            nonce = nonce.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                            t.ping = nonce;
                            t.stage = Stage::Sent;
                            let _ = handle.send(peer, NetworkMessage::Tx(tx.clone()));
                            let _ = handle.send(peer, NetworkMessage::Ping(nonce));
                        }
                        continue;
                    }
                    NetworkMessage::Pong(n) if t.stage == Stage::Sent && n == t.ping => {
                        let delivered = Delivered {
                            user_agent: t.user_agent.clone(),
                            by_wtxid: t.by_wtxid,
                            elapsed: start.elapsed(),
                        };
                        (peer, Ok(delivered))
                    }
                    NetworkMessage::Reject(r) if r.hash.to_byte_array() == txid.to_byte_array() => {
                        let code = format!("{:?}", r.ccode).to_lowercase();
                        (peer, Err(BroadcastError::Rejected { code, reason: r.reason.to_string() }))
                    }
                    _ => continue,
                }
            }
            Event::ConnectFailed { peer, error, .. } => (peer, Err(BroadcastError::Connect(error))),
            Event::Disconnected { peer, reason } => {
                let Some(&i) = by_id.get(&peer) else { continue };
                match targets[i].stage {
                    Stage::Connect | Stage::Handshake => (peer, Err(BroadcastError::Handshake(reason))),
                    stage => (peer, Err(BroadcastError::Disconnected { stage, reason })),
                }
            }
            _ => continue,
        };
        let Some(i) = by_id.remove(&peer) else { continue };
        if targets[i].result.is_none() {
            open -= 1;
        }
        targets[i].result = Some(outcome);
        let _ = handle.disconnect(peer, Disconnect::AfterFlush);
    }
    handle.shutdown();
    Ok(targets
        .into_iter()
        .map(|t| {
            let result = t.result.unwrap_or(Err(match t.stage {
                Stage::Announced => BroadcastError::NeverRequested,
                stage => BroadcastError::Timeout { stage },
            }));
            Outcome { addr: t.addr, result }
        })
        .collect())
}

use bitcoin::hashes::Hash as _;
