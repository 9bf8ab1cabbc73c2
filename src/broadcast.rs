//! One-shot transaction broadcast: connect, hand the transaction over, make
//! sure each peer processed it, and leave.
//!
//! For each target, [`broadcast`]:
//! 1. connects and runs the session handshake;
//! 2. announces the transaction with `inv`, by wtxid if the peer negotiated
//!    `wtxidrelay` (BIP339), else by txid, and sends a `ping` right after it:
//!    peers process messages in order, so its `pong` proves the `inv` was
//!    processed;
//! 3. answers the peer's `getdata` with the `tx`, followed by another `ping`,
//!    whose `pong` proves the transaction was processed
//!    ([`DeliveryKind::Sent`]);
//! 4. if the peer processed the `inv` but does not ask for the transaction
//!    within Bitcoin Core's request delays ([`request_delay`]), concludes that
//!    it did not need it ([`DeliveryKind::NotRequested`]): it most likely has
//!    the transaction already, as after a second broadcast of the same one;
//! 5. disconnects after flushing.
//!
//! A `reject` for the transaction (old nodes, bcoin) fails that peer.
//!
//! The logic is a sans-IO state machine fed with the reactor's events and
//! the current time; [`broadcast`] only moves events and messages between it
//! and a private reactor.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use bitcoin::hashes::Hash as _;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_blockdata::Inventory;
use bitcoin::{Transaction, Txid, Wtxid};

use crate::discovery::addrbook::AddrBook;
use crate::discovery::{Origin, PeerKind, PoolConfig, Pooled};
use crate::error::RecvTimeoutError;
use crate::event::{ConnectError, DisconnectReason, Event, PeerId, SendError};
use crate::handle::{Disconnect, Refusal};
use crate::rng::Rng;
use crate::target::Target;
use crate::types::later;
use crate::{Config, Mode, StartError};

/// Bitcoin Core's `NONPREF_PEER_TX_DELAY` (src/node/txdownloadman.h; it was
/// `INBOUND_PEER_TX_DELAY` in src/net_processing.cpp before the txrequest
/// module): a transaction announced by a non-preferred peer, which every
/// inbound peer is (and we are inbound to the node), is requested at the
/// earliest this long after the announcement was processed.
pub const NONPREF_PEER_TX_DELAY: Duration = Duration::from_secs(2);

/// Bitcoin Core's `TXID_RELAY_DELAY` (same place): an announcement by txid
/// waits this much longer while the node has wtxid-relay peers.
pub const TXID_RELAY_DELAY: Duration = Duration::from_secs(2);

/// Allowance on top of the request delays for the node's message loop
/// (Core's message handler wakes at least every 100 ms) and the way back.
pub const REQUEST_MARGIN: Duration = Duration::from_secs(1);

/// How long after the `pong` that follows our `inv` a peer that wants the
/// transaction will have asked for it: Core's delays for an inbound peer
/// ([`NONPREF_PEER_TX_DELAY`], plus [`TXID_RELAY_DELAY`] for an announcement
/// by txid) and [`REQUEST_MARGIN`].
pub fn request_delay(by_wtxid: bool) -> Duration {
    let txid = if by_wtxid { Duration::ZERO } else { TXID_RELAY_DELAY };
    NONPREF_PEER_TX_DELAY + txid + REQUEST_MARGIN
}

/// How far a peer got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Connecting.
    Connect,
    /// Connected; running the session handshake.
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
    /// The transaction could not be sent to the peer: the codec refused to
    /// encode it (larger than [`Config::max_message_len`](crate::Config::max_message_len),
    /// for example).
    NotSent(SendError),
    /// The broadcast's reactor stopped (its poll failed) before the peer
    /// was done.
    ReactorGone {
        /// How far the peer got.
        stage: Stage,
    },
}

impl fmt::Display for BroadcastError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BroadcastError::Connect(_) => f.write_str("could not connect"),
            BroadcastError::Handshake(_) => f.write_str("connection ended during the handshake"),
            BroadcastError::Rejected { code, reason } => write!(f, "rejected ({code}): {reason}"),
            BroadcastError::Disconnected { stage, .. } => write!(f, "connection ended at stage {stage}"),
            BroadcastError::Timeout { stage } => write!(f, "deadline passed at stage {stage}"),
            BroadcastError::ReactorGone { stage } => write!(f, "reactor stopped at stage {stage}"),
            BroadcastError::NotSent(_) => f.write_str("the transaction could not be sent"),
        }
    }
}

impl std::error::Error for BroadcastError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BroadcastError::Connect(e) => Some(e),
            BroadcastError::Handshake(r) | BroadcastError::Disconnected { reason: r, .. } => Some(r),
            BroadcastError::NotSent(e) => Some(e),
            _ => None,
        }
    }
}

/// The result for one target.
#[derive(Debug)]
pub struct Outcome {
    /// The target, as given (or as the pool found it).
    pub target: Target,
    /// How the target was found, for a broadcast to the network
    /// ([`to_network`]); `None` for a target given by the caller.
    pub origin: Option<Origin>,
    /// `Ok` when the peer has processed our announcement and either took the
    /// transaction or did not need it; [`Delivered::kind`] tells which.
    pub result: Result<Delivered, BroadcastError>,
}

/// How a peer that processed our announcement dealt with the transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeliveryKind {
    /// The peer requested the transaction, received it, and confirmed with a
    /// `pong` that it processed it.
    Sent,
    /// The peer processed the `inv` (its `pong` came back) but did not ask
    /// for the transaction within Bitcoin Core's request delays
    /// ([`request_delay`]). Core does not request what it already has: the
    /// transaction in its mempool, recently confirmed, or recently rejected.
    /// Most likely the peer already has it (a second broadcast of the same
    /// transaction ends here); it is not proof of acceptance.
    NotRequested,
}

impl fmt::Display for DeliveryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeliveryKind::Sent => "sent",
            DeliveryKind::NotRequested => "not requested: the peer may already have it",
        })
    }
}

/// A peer that processed our announcement.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivered {
    /// Whether the transaction was sent, or not requested.
    pub kind: DeliveryKind,
    /// The peer's user agent.
    pub user_agent: String,
    /// Whether it was announced by wtxid.
    pub by_wtxid: bool,
    /// Time from start to the conclusion.
    pub elapsed: Duration,
}

/// Broadcasts `tx` to every target in `peers` (socket addresses, host names
/// or onion services: [`Target`]), each on its own connection
/// of a private reactor built from `config` (its mode is forced to session),
/// and returns one outcome per target, in the order given, by `timeout`.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use peerlink::broadcast::DeliveryKind;
///
/// // A signed transaction, as your wallet serialised it.
/// let hex = "0200000001aad73931018bd25f84ae400b68848be09db706eac2ac18298babee71ab656f8b0000000048473044022058f6fc7c6a33e1b31548d481c826c015bd30135aad42cd67790dab66d2ad243b02204a1ced2604c6735b6393e5b41691dd78b00f0c5942fb9f751856faa938157dba01feffffff0280f0fa020000000017a9140fb9463421696b82c833af241c78c17ddbde493487d0f20a270100000017a91429ca74f8a08f81999428185c97b5d852e4063f618765000000";
/// let tx: bitcoin::Transaction = bitcoin::consensus::encode::deserialize_hex(hex)?;
/// let config = peerlink::Config::new(bitcoin::Network::Regtest);
/// let peers = ["127.0.0.1:18444".parse()?];
/// let outcomes = peerlink::broadcast::broadcast(config, &tx, &peers, std::time::Duration::from_secs(30))?;
/// for outcome in &outcomes {
///     match &outcome.result {
///         Ok(d) if d.kind == DeliveryKind::Sent => println!("{}: sent", outcome.target),
///         Ok(_) => println!("{}: not requested, it may already have it", outcome.target),
///         Err(e) => println!("{}: {}", outcome.target, peerlink::error::Report(e)),
///     }
/// }
/// assert!(outcomes.iter().any(|o| o.result.is_ok()));
/// # Ok(()) }
/// ```
pub fn broadcast(
    mut config: Config,
    tx: &Transaction,
    peers: &[Target],
    timeout: Duration,
) -> Result<Vec<Outcome>, StartError> {
    config.mode = Mode::Session;
    config.listen.clear();
    let mut machine = Broadcaster::new(tx, peers, Instant::now(), timeout, Rng::from_os());
    let handle = crate::start(config)?;
    for (i, target) in peers.iter().enumerate() {
        match handle.connect(target.clone()) {
            Ok(peer) => machine.connecting(i, peer),
            Err(_) => machine.reactor_gone(),
        }
    }
    let mut out = Outbox::default();
    loop {
        out.run(&mut machine, &handle);
        if machine.is_done() {
            break;
        }
        let wait = machine.poll_timeout().saturating_duration_since(Instant::now());
        match handle.recv_timeout(wait) {
            Ok(Event::Writable { peer }) => out.writable(&handle, peer),
            Ok(event) => machine.handle_event(event, Instant::now()),
            Err(RecvTimeoutError::Timeout) => {
                let now = Instant::now();
                if now >= machine.deadline {
                    // Session mode announces no connection before `Ready`:
                    // a peer we wrote to is connected and in the handshake.
                    for peer in machine.connecting_peers() {
                        if let Ok(Some(stats)) = handle.peer_stats(peer)
                            && stats.bytes_out > 0
                        {
                            machine.connected(peer);
                        }
                    }
                }
                machine.handle_timeout(now);
            }
            Err(RecvTimeoutError::Disconnected) => machine.reactor_gone(),
        }
    }
    handle.shutdown();
    Ok(machine.into_outcomes())
}

/// Broadcasts `tx` to `count` peers found on the network, as
/// [`to_network_with`] with the pool's defaults for the chain of `config`
/// ([`PoolConfig::new`]): DNS seeds (through the proxy if one is
/// configured), then the fixed seeds.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let tx: bitcoin::Transaction = bitcoin::consensus::encode::deserialize_hex("0200000001aad73931018bd25f84ae400b68848be09db706eac2ac18298babee71ab656f8b0000000048473044022058f6fc7c6a33e1b31548d481c826c015bd30135aad42cd67790dab66d2ad243b02204a1ced2604c6735b6393e5b41691dd78b00f0c5942fb9f751856faa938157dba01feffffff0280f0fa020000000017a9140fb9463421696b82c833af241c78c17ddbde493487d0f20a270100000017a91429ca74f8a08f81999428185c97b5d852e4063f618765000000")?;
/// let config = peerlink::Config::new(bitcoin::Network::Bitcoin);
/// let outcomes = peerlink::broadcast::to_network(config, &tx, 4, std::time::Duration::from_secs(60))?;
/// for o in &outcomes {
///     let found = o.origin.as_ref().map_or("given".to_string(), |o| o.to_string());
///     println!("{} ({found}): {:?}", o.target, o.result.as_ref().map(|d| d.kind));
/// }
/// # Ok(()) }
/// ```
pub fn to_network(
    config: Config,
    tx: &Transaction,
    count: usize,
    timeout: Duration,
) -> Result<Vec<Outcome>, StartError> {
    let network = bitcoin::Network::from_magic(config.magic).unwrap_or(bitcoin::Network::Bitcoin);
    to_network_with(config, PoolConfig::new(network), tx, count, timeout)
}

/// Broadcasts `tx` to `count` peers that an outbound pool ([`Pooled`],
/// configured by `pool`) finds, each on its own connection, and returns
/// by `timeout` one outcome per peer tried, in the order they were tried,
/// each with how the peer was found ([`Outcome::origin`]).
///
/// A peer that fails (unreachable, refuses, times out) is replaced by the
/// next one the pool finds, until `count` peers processed the
/// announcement or the time is up. Each peer gets the same treatment as
/// in [`broadcast`], from distinct network groups unless
/// [`PoolConfig::distinct_groups`] is off.
pub fn to_network_with(
    config: Config,
    pool: PoolConfig,
    tx: &Transaction,
    count: usize,
    timeout: Duration,
) -> Result<Vec<Outcome>, StartError> {
    let book = AddrBook::new(Rng::from_os().bytes32());
    to_network_from(config, pool, book, tx, count, timeout).map(|(outcomes, _)| outcomes)
}

/// As [`to_network_with`], drawing first from `book` (an address book kept
/// from an earlier run, [`AddrBook::import`]), and returning the book
/// with what this run learned, to save ([`AddrBook::export`]) for the next.
/// Peers from the book have [`Origin::Book`]; the seeds are asked only if
/// the book holds fewer than 1,000 addresses and no peer is ready after 11
/// seconds (Core's rule), or at once if it is empty.
pub fn to_network_from(
    mut config: Config,
    mut pool: PoolConfig,
    book: AddrBook,
    tx: &Transaction,
    count: usize,
    timeout: Duration,
) -> Result<(Vec<Outcome>, AddrBook), StartError> {
    config.listen.clear();
    pool.outbound = count;
    pool.feeler_interval = None;
    let mut net = Pooled::with_book(config, pool, book)?;
    let mut machine = Broadcaster::new(tx, &[], Instant::now(), timeout, Rng::from_os());
    let mut out = Outbox::default();
    loop {
        for p in net.take_dials() {
            if p.kind == PeerKind::Outbound {
                machine.add_target(p.target, p.origin, p.peer);
            }
        }
        out.run(&mut machine, net.handle());
        let delivered = machine.delivered_count();
        if delivered >= count || Instant::now() >= machine.deadline {
            machine.handle_timeout(Instant::now());
            break;
        }
        // Refill only the places still open.
        net.pool_mut().set_outbound(count - delivered);
        let wait = machine.poll_timeout().saturating_duration_since(Instant::now());
        let event = net.recv_timeout(wait);
        // Dials made while waiting come first: the event may be the failure
        // of one of them.
        for p in net.take_dials() {
            if p.kind == PeerKind::Outbound {
                machine.add_target(p.target, p.origin, p.peer);
            }
        }
        match event {
            Ok(Event::Writable { peer }) => out.writable(net.handle(), peer),
            // The pool dropped it (it lacks the services): its
            // `Disconnected` ends the attempt.
            Ok(Event::Ready { peer, .. }) if net.pool().peer(peer).is_none_or(|p| !p.ready) => {}
            Ok(event) => machine.handle_event(event, Instant::now()),
            Err(RecvTimeoutError::Timeout) => machine.handle_timeout(Instant::now()),
            Err(RecvTimeoutError::Disconnected) => machine.reactor_gone(),
        }
    }
    Ok((machine.into_outcomes(), net.into_book()))
}

/// Carries the machine's actions out on a handle, holding messages the
/// reactor refused while a peer's send buffer was full, in order, until its
/// `Writable`.
#[derive(Default)]
struct Outbox {
    held: HashMap<PeerId, VecDeque<NetworkMessage>>,
}

impl Outbox {
    fn run(&mut self, machine: &mut Broadcaster, handle: &crate::Handle) {
        while let Some(action) = machine.poll_action() {
            match action {
                Action::Send(peer, message) => match self.held.get_mut(&peer) {
                    Some(queue) => queue.push_back(message),
                    None => match handle.send(peer, message) {
                        Ok(()) => {}
                        Err(refused) if refused.reason == Refusal::BufferFull => {
                            self.held.entry(peer).or_default().push_back(refused.message);
                        }
                        Err(refused) if refused.reason == Refusal::ReactorGone => machine.reactor_gone(),
                        // The peer is gone; its `Disconnected` follows.
                        Err(_) => {}
                    },
                },
                Action::Disconnect(peer) => {
                    self.held.remove(&peer);
                    let _ = handle.disconnect(peer, Disconnect::AfterFlush);
                }
            }
        }
    }

    fn writable(&mut self, handle: &crate::Handle, peer: PeerId) {
        let mut queue = self.held.remove(&peer).unwrap_or_default();
        while let Some(message) = queue.pop_front() {
            if let Err(refused) = handle.send(peer, message) {
                if refused.reason == Refusal::BufferFull {
                    queue.push_front(refused.message);
                    self.held.insert(peer, queue);
                }
                break;
            }
        }
    }
}

/// What the state machine asks its driver to do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// Send a message to a peer.
    Send(PeerId, NetworkMessage),
    /// Disconnect a peer once its queue is written.
    Disconnect(PeerId),
}

/// Where one target is.
#[derive(Debug)]
enum State {
    /// Not started yet (no connection attempt).
    Idle,
    /// TCP connection under way.
    Connecting(PeerId),
    /// Connected; session handshake under way.
    Handshaking(PeerId),
    /// `inv` and `ping` sent.
    Announced {
        peer: PeerId,
        peer_info: PeerSummary,
        ping: u64,
        /// When the `pong` to `ping` arrived: the `inv` was processed by then.
        processed_at: Option<Instant>,
    },
    /// `tx` and a second `ping` sent.
    Sent {
        peer: PeerId,
        peer_info: PeerSummary,
        ping: u64,
    },
    Done(Result<Delivered, BroadcastError>),
}

#[derive(Debug, Clone)]
struct PeerSummary {
    user_agent: String,
    by_wtxid: bool,
}

impl State {
    fn peer(&self) -> Option<PeerId> {
        match self {
            State::Connecting(p) | State::Handshaking(p) => Some(*p),
            State::Announced { peer, .. } | State::Sent { peer, .. } => Some(*peer),
            State::Idle | State::Done(_) => None,
        }
    }

    fn stage(&self) -> Stage {
        match self {
            State::Idle | State::Connecting(_) => Stage::Connect,
            State::Handshaking(_) => Stage::Handshake,
            State::Announced { .. } => Stage::Announced,
            State::Sent { .. } | State::Done(_) => Stage::Sent,
        }
    }
}

/// The broadcast as a sans-IO state machine: per target, Connecting →
/// Handshaking → Announced → Sent → done, driven by reactor events and the
/// time passed in.
pub(crate) struct Broadcaster {
    tx: Transaction,
    txid: Txid,
    wtxid: Wtxid,
    start: Instant,
    deadline: Instant,
    targets: Vec<Target>,
    origins: Vec<Option<Origin>>,
    states: Vec<State>,
    by_peer: HashMap<PeerId, usize>,
    rng: Rng,
    actions: VecDeque<Action>,
}

impl Broadcaster {
    /// A broadcast of `tx` to `targets` that started at `now` and ends by
    /// `now + timeout`. Ping nonces come from `rng`.
    pub(crate) fn new(tx: &Transaction, targets: &[Target], now: Instant, timeout: Duration, rng: Rng) -> Self {
        Broadcaster {
            tx: tx.clone(),
            txid: tx.compute_txid(),
            wtxid: tx.compute_wtxid(),
            start: now,
            deadline: later(now, timeout),
            targets: targets.to_vec(),
            origins: targets.iter().map(|_| None).collect(),
            states: targets.iter().map(|_| State::Idle).collect(),
            by_peer: HashMap::new(),
            rng,
            actions: VecDeque::new(),
        }
    }

    /// Target `index` is being connected as `peer`.
    pub(crate) fn connecting(&mut self, index: usize, peer: PeerId) {
        if matches!(self.states[index], State::Idle) {
            self.states[index] = State::Connecting(peer);
            self.by_peer.insert(peer, index);
        }
    }

    /// A target found on the way (by the pool), already being connected as
    /// `peer`.
    pub(crate) fn add_target(&mut self, target: Target, origin: Origin, peer: PeerId) {
        self.targets.push(target);
        self.origins.push(Some(origin));
        self.states.push(State::Connecting(peer));
        self.by_peer.insert(peer, self.states.len() - 1);
    }

    /// How many targets processed the announcement.
    pub(crate) fn delivered_count(&self) -> usize {
        self.states.iter().filter(|s| matches!(s, State::Done(Ok(_)))).count()
    }

    /// `peer`'s TCP connection is up (its handshake has started).
    pub(crate) fn connected(&mut self, peer: PeerId) {
        if let Some(&i) = self.by_peer.get(&peer)
            && matches!(self.states[i], State::Connecting(_))
        {
            self.states[i] = State::Handshaking(peer);
        }
    }

    /// Peers whose connection has not been seen established.
    pub(crate) fn connecting_peers(&self) -> Vec<PeerId> {
        self.states
            .iter()
            .filter_map(|s| match s {
                State::Connecting(p) => Some(*p),
                _ => None,
            })
            .collect()
    }

    /// Feeds one reactor event.
    pub(crate) fn handle_event(&mut self, event: Event, now: Instant) {
        match event {
            Event::Connected { peer, .. } => self.connected(peer),
            Event::Ready { peer, info } => {
                let Some(i) = self.index(peer) else { return };
                if !matches!(self.states[i], State::Connecting(_) | State::Handshaking(_)) {
                    return;
                }
                let by_wtxid = info.features.wtxid_relay;
                let user_agent = info.version.map(|v| v.user_agent).unwrap_or_default();
                let inv = if by_wtxid { Inventory::WTx(self.wtxid) } else { Inventory::Transaction(self.txid) };
                let ping = self.rng.u64();
                self.actions.push_back(Action::Send(peer, NetworkMessage::Inv(vec![inv])));
                self.actions.push_back(Action::Send(peer, NetworkMessage::Ping(ping)));
                let peer_info = PeerSummary { user_agent, by_wtxid };
                self.states[i] = State::Announced { peer, peer_info, ping, processed_at: None };
            }
            Event::Message { peer, message, .. } => self.on_message(peer, message, now),
            // Other refusals come with the peer's `Disconnected`, which says why.
            Event::SendRejected { peer, message: NetworkMessage::Tx(_), reason: reason @ SendError::Encode(_) } => {
                if let Some(i) = self.index(peer) {
                    self.finish(i, Err(BroadcastError::NotSent(reason)));
                }
            }
            Event::ConnectFailed { peer, error, .. } => {
                // The id is dead: nothing to disconnect.
                if let Some(i) = self.by_peer.remove(&peer) {
                    self.states[i] = State::Done(Err(BroadcastError::Connect(error)));
                }
            }
            Event::Disconnected { peer, reason } => {
                let Some(i) = self.index(peer) else { return };
                // No `Connected` in session mode: a disconnection before
                // `Ready` ends a handshake.
                let error = match self.states[i].stage() {
                    Stage::Connect | Stage::Handshake => BroadcastError::Handshake(reason),
                    stage => BroadcastError::Disconnected { stage, reason },
                };
                self.by_peer.remove(&peer);
                self.states[i] = State::Done(Err(error));
            }
            _ => {}
        }
    }

    fn on_message(&mut self, peer: PeerId, message: NetworkMessage, now: Instant) {
        let Some(i) = self.index(peer) else { return };
        match (&mut self.states[i], message) {
            (State::Announced { peer_info, .. }, NetworkMessage::GetData(items)) => {
                let wanted = items.iter().any(|inv| match inv {
                    Inventory::WTx(w) => *w == self.wtxid,
                    Inventory::Transaction(id) | Inventory::WitnessTransaction(id) => *id == self.txid,
                    _ => false,
                });
                if wanted {
                    let ping = self.rng.u64();
                    let peer_info = peer_info.clone();
                    self.actions.push_back(Action::Send(peer, NetworkMessage::Tx(self.tx.clone())));
                    self.actions.push_back(Action::Send(peer, NetworkMessage::Ping(ping)));
                    self.states[i] = State::Sent { peer, peer_info, ping };
                }
            }
            (State::Announced { ping, processed_at, .. }, NetworkMessage::Pong(n)) if n == *ping => {
                processed_at.get_or_insert(now);
            }
            (State::Sent { ping, peer_info, .. }, NetworkMessage::Pong(n)) if n == *ping => {
                let peer_info = peer_info.clone();
                let delivered = self.delivered(DeliveryKind::Sent, peer_info, now);
                self.finish(i, Ok(delivered));
            }
            (State::Announced { .. } | State::Sent { .. }, NetworkMessage::Reject(r))
                if r.hash.to_byte_array() == self.txid.to_byte_array() =>
            {
                let code = format!("{:?}", r.ccode).to_lowercase();
                self.finish(i, Err(BroadcastError::Rejected { code, reason: r.reason.to_string() }));
            }
            _ => {}
        }
    }

    /// Applies the deadlines due at `now`.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        for i in 0..self.states.len() {
            if let State::Announced { processed_at: Some(at), peer_info, .. } = &self.states[i]
                && now >= later(*at, request_delay(peer_info.by_wtxid))
            {
                let peer_info = peer_info.clone();
                let delivered = self.delivered(DeliveryKind::NotRequested, peer_info, now);
                self.finish(i, Ok(delivered));
            }
        }
        if now >= self.deadline {
            for i in 0..self.states.len() {
                if !matches!(self.states[i], State::Done(_)) {
                    let stage = self.states[i].stage();
                    self.finish(i, Err(BroadcastError::Timeout { stage }));
                }
            }
        }
    }

    /// The reactor is gone: every open target fails.
    pub(crate) fn reactor_gone(&mut self) {
        for i in 0..self.states.len() {
            if !matches!(self.states[i], State::Done(_)) {
                let stage = self.states[i].stage();
                if let Some(peer) = self.states[i].peer() {
                    self.by_peer.remove(&peer);
                }
                self.states[i] = State::Done(Err(BroadcastError::ReactorGone { stage }));
            }
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) next has something to do.
    pub(crate) fn poll_timeout(&self) -> Instant {
        self.states
            .iter()
            .filter_map(|s| match s {
                State::Announced { processed_at: Some(at), peer_info, .. } => {
                    Some(later(*at, request_delay(peer_info.by_wtxid)))
                }
                _ => None,
            })
            .fold(self.deadline, Instant::min)
    }

    /// The next thing to do.
    pub(crate) fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Whether every target has its outcome.
    pub(crate) fn is_done(&self) -> bool {
        self.states.iter().all(|s| matches!(s, State::Done(_)))
    }

    /// One outcome per target, in the order given. A target without one
    /// yet counts as timed out.
    pub(crate) fn into_outcomes(self) -> Vec<Outcome> {
        self.targets
            .into_iter()
            .zip(self.origins)
            .zip(self.states)
            .map(|((target, origin), state)| {
                let result = match state {
                    State::Done(result) => result,
                    other => Err(BroadcastError::Timeout { stage: other.stage() }),
                };
                Outcome { target, origin, result }
            })
            .collect()
    }

    fn index(&self, peer: PeerId) -> Option<usize> {
        self.by_peer.get(&peer).copied()
    }

    fn delivered(&self, kind: DeliveryKind, peer: PeerSummary, now: Instant) -> Delivered {
        Delivered {
            kind,
            user_agent: peer.user_agent,
            by_wtxid: peer.by_wtxid,
            elapsed: now.saturating_duration_since(self.start),
        }
    }

    /// Records target `i`'s outcome and lets its connection go.
    fn finish(&mut self, i: usize, result: Result<Delivered, BroadcastError>) {
        if let Some(peer) = self.states[i].peer() {
            self.by_peer.remove(&peer);
            self.actions.push_back(Action::Disconnect(peer));
        }
        self.states[i] = State::Done(result);
    }
}

#[cfg(test)]
#[path = "broadcast_tests.rs"]
mod tests;
