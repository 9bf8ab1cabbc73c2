//! The user's side of the reactor: commands in, events out.

#[cfg(feature = "async")]
pub mod asynch;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::{self, Relaxed};
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

pub use crate::error::{RecvTimeoutError, TryRecvError};
use crate::event::{Event, PeerId};
use crate::peer::PeerStats;
use crate::reactor::shared::{Closed, Cmd, Query, Shared};
use crate::stack::{Bitcoin, Stack};
use crate::types::later;

/// How to end a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disconnect {
    /// Close at once; queued data is dropped.
    Now,
    /// Stop taking messages for the peer, write everything queued, then close.
    /// The stall timeout still applies.
    AfterFlush,
}

/// The reactor is gone (shut down, or its poll failed), so the request was
/// not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReactorGone;

impl std::fmt::Display for ReactorGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reactor has stopped")
    }
}

impl std::error::Error for ReactorGone {}

/// Why [`Handle::send`] refused a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The peer's send buffer is above
    /// [`Config::send_buffer_limit`](crate::Config::send_buffer_limit); wait
    /// for [`Event::Writable`], or use [`Handle::send_timeout`].
    BufferFull,
    /// [`Config::max_in_flight`](crate::Config::max_in_flight) messages for
    /// this peer, or [`Config::max_in_flight_total`](crate::Config::max_in_flight_total)
    /// for all peers together, are still on their way to the reactor (it is
    /// behind); wait for [`Event::Writable`], or use [`Handle::send_timeout`].
    InFlight,
    /// No such peer (never existed, or disconnected).
    UnknownPeer,
    /// The reactor has stopped.
    ReactorGone,
}

impl Refusal {
    /// Back-pressure: the peer is there but has no room now
    /// ([`BufferFull`](Refusal::BufferFull) or [`InFlight`](Refusal::InFlight)).
    /// Keep the message and send it first after [`Event::Writable`].
    pub fn is_backpressure(self) -> bool {
        matches!(self, Refusal::BufferFull | Refusal::InFlight)
    }
}

/// A message [`Handle::send`] did not queue, handed back with the reason.
#[derive(Debug)]
pub struct Refused<M> {
    /// The message, unchanged.
    pub message: M,
    /// Why it was refused.
    pub reason: Refusal,
}

impl<M> std::fmt::Display for Refused<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.reason {
            Refusal::BufferFull => f.write_str("send buffer full"),
            Refusal::InFlight => f.write_str("too many messages on their way to the reactor"),
            Refusal::UnknownPeer => f.write_str("unknown peer"),
            Refusal::ReactorGone => f.write_str("reactor has stopped"),
        }
    }
}

impl<M: std::fmt::Debug> std::error::Error for Refused<M> {}

/// Reactor-wide counters, from [`Handle::reactor_stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReactorStats {
    /// Inbound connections accepted and given a slot.
    pub inbound_accepted: u64,
    /// Inbound connections closed at accept because every inbound slot
    /// ([`Config::max_inbound`](crate::Config::max_inbound)) was taken and
    /// no inbound peer could be evicted.
    pub inbound_refused_full: u64,
    /// Inbound peers evicted to make room for a new inbound connection
    /// (each also reported as [`DisconnectReason::Evicted`](crate::DisconnectReason::Evicted)).
    pub inbound_evicted: u64,
    /// Inbound connections closed at accept because their address is
    /// banned ([`Handle::ban`]).
    pub inbound_refused_banned: u64,
    /// Inbound connections closed at accept because their address or
    /// network group already held its share of slots
    /// ([`Config::max_inbound_per_ip`](crate::Config::max_inbound_per_ip),
    /// [`Config::max_inbound_per_netgroup`](crate::Config::max_inbound_per_netgroup)).
    pub inbound_refused_source: u64,
    /// Inbound connections that could not be set up (registration with the
    /// poll failed, or the codec refused to start).
    pub inbound_failed: u64,
    /// Times a listener backed off after `accept` failed (for example out
    /// of file descriptors).
    pub accept_backoffs: u64,
    /// Peers banned automatically for misbehaviour
    /// ([`Config::ban_misbehaving`](crate::Config::ban_misbehaving)).
    pub auto_bans: u64,
    /// Bytes allocated now for the links' receive and send buffers.
    pub buffered: u64,
    /// The most [`buffered`](ReactorStats::buffered) has been.
    pub buffered_peak: u64,
    /// Times a peer's reading waited for the memory budget
    /// ([`Config::memory_budget`](crate::Config::memory_budget)).
    pub budget_pauses: u64,
}

struct Inner<C> {
    commands: Sender<C>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    local_addrs: Vec<SocketAddr>,
    /// The blocking receives' spin backoff, shared by all clones.
    spin: SpinBackoff,
}

/// How long a blocking receive that follows a send or command polls for
/// an event, yielding the core between polls, before it parks the thread:
/// the answer to a request just sent is taken without a futex wake-up,
/// which costs tens of microseconds on a busy machine. A receive with no
/// command since the last one (a consumer of a stream of events) parks at
/// once and leaves the cores to the reactors.
const RECV_SPIN: Duration = Duration::from_micros(60);
/// After spins that found nothing, at most this many blocking receives go
/// by without one (the gap doubles with each miss and a hit resets it), so
/// a consumer whose events come slowly costs little CPU.
const RECV_SPIN_BACKOFF_MAX: u32 = 64;

/// Why a receive's spin ended without an event.
enum SpinEnd {
    Nothing,
    Disconnected,
}

/// The reactor's spin policy (see `reactor::SPIN`) on the consumer side.
/// Relaxed atomics: clones racing on it only change when a spin happens.
#[derive(Default)]
struct SpinBackoff {
    /// A command was sent since the last spin.
    armed: AtomicBool,
    gap: AtomicU32,
    skip: AtomicU32,
}

impl SpinBackoff {
    fn arm(&self) {
        if !self.armed.load(Relaxed) {
            self.armed.store(true, Relaxed);
        }
    }

    /// True if this receive should spin (disarms); counts down a skip.
    fn should_spin(&self) -> bool {
        if !self.armed.swap(false, Relaxed) {
            return false;
        }
        let skip = self.skip.load(Relaxed);
        if skip == 0 {
            return true;
        }
        self.skip.store(skip - 1, Relaxed);
        false
    }

    fn hit(&self) {
        self.gap.store(0, Relaxed);
    }

    fn miss(&self) {
        let gap = (self.gap.load(Relaxed) * 2 + 1).min(RECV_SPIN_BACKOFF_MAX);
        self.gap.store(gap, Relaxed);
        self.skip.store(gap, Relaxed);
    }
}

impl<C> Inner<C> {
    fn shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.wake();
        let thread = self.thread.lock().map(|mut t| t.take()).unwrap_or(None);
        if let Some(thread) = thread {
            if thread.thread().id() == std::thread::current().id() {
                return;
            }
            if thread.join().is_err() {
                log::error!("reactor thread panicked");
            }
        }
    }
}

impl<C> Drop for Inner<C> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A handle to a running reactor.
///
/// Cheap to clone; clones share the reactor and its event stream (each event
/// is received by exactly one clone). Dropping the last clone shuts the
/// reactor down, joins its thread and closes every socket.
///
/// Sending never blocks and never makes a syscall while the reactor is busy;
/// it wakes the reactor only when it may be asleep.
pub struct Handle<S: Stack = Bitcoin> {
    inner: Arc<Inner<Cmd<S::Message, S::Info>>>,
    /// Events come in batches, one per reactor round (or per
    /// [`EVENT_BATCH`](crate::reactor::EVENT_BATCH) events): one channel
    /// operation and at most one wake-up per batch instead of per event.
    events: Receiver<Vec<Event<S>>>,
    /// The rest of the last batch received, shared by all clones so that no
    /// event is stranded in a clone that stops receiving.
    local: Arc<Mutex<std::collections::VecDeque<Event<S>>>>,
}

impl<S: Stack> Clone for Handle<S> {
    fn clone(&self) -> Self {
        Handle { inner: Arc::clone(&self.inner), events: self.events.clone(), local: Arc::clone(&self.local) }
    }
}

impl<S: Stack> std::fmt::Debug for Handle<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").field("local_addrs", &self.inner.local_addrs).finish()
    }
}

impl<S: Stack> Handle<S> {
    pub(crate) fn new(
        commands: Sender<Cmd<S::Message, S::Info>>,
        events: Receiver<Vec<Event<S>>>,
        shared: Arc<Shared>,
        thread: JoinHandle<()>,
        local_addrs: Vec<SocketAddr>,
    ) -> Self {
        let inner = Arc::new(Inner {
            commands,
            shared,
            thread: Mutex::new(Some(thread)),
            local_addrs,
            spin: SpinBackoff::default(),
        });
        Handle { inner, events, local: Arc::default() }
    }

    /// Pops from this clone's batch buffer.
    /// Polls for an event until `until`, yielding the core between polls,
    /// unless the backoff says to skip this spin.
    fn spin_for_event(&self, until: Instant) -> Result<Event<S>, SpinEnd> {
        let spin = &self.inner.spin;
        if until <= Instant::now() || !spin.should_spin() {
            return Err(SpinEnd::Nothing);
        }
        loop {
            match self.events.try_recv() {
                Ok(batch) => {
                    if let Some(event) = self.take_batch(batch) {
                        spin.hit();
                        return Ok(event);
                    }
                }
                Err(crossbeam_channel::TryRecvError::Disconnected) => return Err(SpinEnd::Disconnected),
                Err(crossbeam_channel::TryRecvError::Empty) => {
                    if Instant::now() >= until {
                        spin.miss();
                        return Err(SpinEnd::Nothing);
                    }
                    std::thread::yield_now();
                }
            }
        }
    }

    fn pop_local(&self) -> Option<Event<S>> {
        self.local.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
    }

    /// Keeps a received batch and returns its first event.
    fn take_batch(&self, batch: Vec<Event<S>>) -> Option<Event<S>> {
        let bytes: usize =
            batch.iter().map(|e| if let Event::Message { wire_size, .. } = e { *wire_size } else { 0 }).sum();
        if bytes > 0 {
            self.inner.shared.event_bytes.fetch_sub(bytes, Ordering::SeqCst);
        }
        self.consumed();
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        if local.is_empty() {
            // The usual case: the batch itself becomes the buffer (O(1), no
            // copy of its events).
            *local = std::collections::VecDeque::from(batch);
        } else {
            local.extend(batch);
        }
        local.pop_front()
    }

    fn command(&self, cmd: Cmd<S::Message, S::Info>) -> Result<(), ReactorGone> {
        self.inner.commands.send(cmd).map_err(|_| ReactorGone)?;
        self.inner.shared.wake_if_sleeping();
        self.inner.spin.arm();
        Ok(())
    }

    /// The addresses the listeners are bound to, in the order of
    /// [`Config::listen`](crate::Config::listen), with ports resolved.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.inner.local_addrs
    }

    /// Starts connecting to `target` and returns the id the peer will have.
    ///
    /// A target is a socket address, a host name and port, or a Tor onion
    /// service ([`Target`](crate::Target); a `SocketAddr` converts, and text
    /// parses with `"HOST:PORT".parse::<Target>()`). The route:
    /// - with a proxy configured for it ([`Config::proxy`](crate::Config::proxy),
    ///   or [`Config::onion_proxy`](crate::Config::onion_proxy) for onion
    ///   targets), through the proxy, which also resolves names: nothing
    ///   connects directly and no name is looked up locally;
    /// - else a socket address directly, and a host name after a lookup off
    ///   the reactor thread, trying each address it resolves to in turn;
    /// - an onion target without a proxy fails at once
    ///   ([`ConnectError::OnionNeedsProxy`](crate::ConnectError::OnionNeedsProxy)).
    ///
    /// [`Config::connect_timeout`](crate::Config::connect_timeout) covers
    /// the whole path: the lookup, every address tried, the connect to the
    /// proxy and the proxy's handshake.
    ///
    /// Exactly one of these follows: [`Event::ConnectFailed`] (no connection
    /// to the peer), or the announcement ([`Event::Connected`] in raw mode,
    /// [`Event::Ready`] in session mode) and later [`Event::Disconnected`],
    /// or [`Event::Disconnected`] alone when the connection ended before the
    /// transport or session handshake completed. Messages sent before the
    /// announcement are held and sent, in order, once the peer is ready.
    pub fn connect(&self, target: impl Into<crate::Target>) -> Result<PeerId, ReactorGone> {
        let target = target.into();
        let (peer, gate) = self.inner.shared.allocate_peer();
        if let Err(e) = self.command(Cmd::Connect { peer, target, gate }) {
            self.inner.shared.remove_gate(peer);
            return Err(e);
        }
        Ok(peer)
    }

    /// Queues `message` for `peer`; the reactor encodes it straight into the
    /// peer's send buffer.
    ///
    /// Refused at once, with the message handed back, when the peer's send
    /// buffer is above [`Config::send_buffer_limit`](crate::Config::send_buffer_limit)
    /// or [`Config::max_in_flight`](crate::Config::max_in_flight) messages
    /// are still on their way to the reactor ([`Refusal::BufferFull`];
    /// [`Event::Writable`] follows when both have dropped to half), when the
    /// peer is unknown or gone, or when the reactor stopped.
    /// Because refusal is synchronous, a sender that holds refused messages
    /// and sends them first once writable keeps the peer's stream in order.
    /// A peer that disconnects while the message is in flight hands it back
    /// in [`Event::SendRejected`].
    pub fn send(&self, peer: PeerId, message: S::Message) -> Result<(), Refused<S::Message>> {
        self.offer(peer, message, true)
    }

    /// Like [`send`](Handle::send), but while the peer's gate is closed
    /// (the buffer is full or too many messages are in flight) waits up to
    /// `timeout` for room on this peer alone, without touching the event
    /// stream. Refused with the message handed back if the peer is unknown
    /// or gone, the reactor stopped, or no room came in time (the reason
    /// then says what was full). A sender that sends in order with this
    /// method keeps the peer's stream in order.
    ///
    /// It blocks the calling thread; from async code use [`send`](Handle::send)
    /// and [`Event::Writable`].
    pub fn send_timeout(
        &self,
        peer: PeerId,
        message: S::Message,
        timeout: Duration,
    ) -> Result<(), Refused<S::Message>> {
        let deadline = later(Instant::now(), timeout);
        let mut message = message;
        loop {
            match self.offer(peer, message, false) {
                Err(Refused { message: m, reason: reason @ (Refusal::BufferFull | Refusal::InFlight) }) => {
                    let Some(gate) = self.inner.shared.gate(peer) else {
                        return Err(Refused { message: m, reason: Refusal::UnknownPeer });
                    };
                    if !gate.wait(deadline) {
                        return Err(Refused { message: m, reason });
                    }
                    message = m;
                }
                done => return done,
            }
        }
    }

    /// Passes the gate and queues the command. `mark` asks for `Writable`
    /// when a refused gate reopens.
    fn offer(&self, peer: PeerId, message: S::Message, mark: bool) -> Result<(), Refused<S::Message>> {
        let shared = &self.inner.shared;
        {
            let gates = shared.gates.read().unwrap_or_else(|e| e.into_inner());
            let Some(gate) = gates.get(&peer) else {
                return Err(Refused { message, reason: Refusal::UnknownPeer });
            };
            if gate.closed().is_some() && mark {
                // Flag first, then re-check: if the reactor opened the gate in
                // between it will report Writable (spuriously, harmlessly);
                // otherwise it sees the flag when it opens the gate.
                gate.mark_refused();
            }
            match gate.closed() {
                Some(Closed::BufferFull) => return Err(Refused { message, reason: Refusal::BufferFull }),
                Some(Closed::InFlight) => return Err(Refused { message, reason: Refusal::InFlight }),
                None => {}
            }
            gate.in_flight.fetch_add(1, Ordering::SeqCst);
            gate.budget.used.fetch_add(1, Ordering::SeqCst);
        }
        match self.inner.commands.send(Cmd::Send { peer, message }) {
            Ok(()) => {
                shared.wake_if_sleeping();
                self.inner.spin.arm();
                Ok(())
            }
            Err(crossbeam_channel::SendError(cmd)) => match cmd {
                Cmd::Send { message, .. } => Err(Refused { message, reason: Refusal::ReactorGone }),
                _ => unreachable!("we sent a Send command"),
            },
        }
    }

    /// Ends the connection to `peer`; [`Event::Disconnected`] follows.
    pub fn disconnect(&self, peer: PeerId, mode: Disconnect) -> Result<(), ReactorGone> {
        self.command(Cmd::Disconnect { peer, mode })
    }

    /// Bans `subnet` (a single address converts into one) for `duration`:
    /// inbound connections from it are closed at accept, connects to it
    /// fail with [`ConnectError::Banned`](crate::ConnectError::Banned)
    /// before any syscall, and connected peers in it are closed with
    /// [`DisconnectReason::Banned`](crate::DisconnectReason::Banned). A
    /// subnet banned again keeps the later expiry. Fails only when the list
    /// holds [`ban::MAX_BANS`](crate::ban::MAX_BANS) subnets.
    ///
    /// ```
    /// use std::time::Duration;
    /// use peerlink::ban::Subnet;
    ///
    /// let handle = peerlink::start(peerlink::Config::new(bitcoin::Network::Regtest)).unwrap();
    /// let subnet: Subnet = "203.0.113.0/24".parse().unwrap();
    /// handle.ban(subnet, Duration::from_secs(24 * 3600)).unwrap();
    /// assert_eq!(handle.banned()[0].subnet, subnet);
    /// // Persist it, and load it again after a restart.
    /// let bytes = handle.export_bans();
    /// assert!(handle.unban(&subnet));
    /// assert_eq!(handle.import_bans(&bytes).unwrap(), 1);
    /// assert_eq!(handle.banned().len(), 1);
    /// ```
    pub fn ban(&self, subnet: impl Into<crate::ban::Subnet>, duration: Duration) -> Result<(), crate::ban::BanError> {
        let subnet = subnet.into();
        let now = crate::reactor::shared::unix_now();
        self.bans().ban(subnet, now, now.saturating_add(duration.as_secs()))?;
        // Connected peers in the subnet go at once; a reactor that stopped
        // has none.
        let _ = self.command(Cmd::Banned { subnet });
        Ok(())
    }

    /// Lifts the ban on exactly `subnet`; true if there was one.
    pub fn unban(&self, subnet: &crate::ban::Subnet) -> bool {
        self.bans().unban(subnet)
    }

    /// The bans in force, sorted by subnet (expired ones are dropped).
    pub fn banned(&self) -> Vec<crate::ban::Ban> {
        let now = crate::reactor::shared::unix_now();
        let mut bans = self.bans();
        bans.sweep(now);
        bans.list(now)
    }

    /// The ban list as bytes ([`BanList::to_bytes`](crate::ban::BanList::to_bytes)),
    /// for a node to persist.
    pub fn export_bans(&self) -> Vec<u8> {
        self.bans().to_bytes()
    }

    /// Adds the bans in `bytes` (from [`export_bans`](Handle::export_bans))
    /// to the list, the later expiry winning for a subnet in both, and
    /// returns how many are in force now. Corrupt bytes are refused whole
    /// with a typed error, and nothing is added.
    pub fn import_bans(&self, bytes: &[u8]) -> Result<usize, crate::ban::ImportError> {
        let imported = crate::ban::BanList::from_bytes(bytes).map_err(crate::ban::ImportError::Decode)?;
        let now = crate::reactor::shared::unix_now();
        let live = imported.list(now);
        let mut bans = self.bans();
        // On a copy, so that a list that would overflow adds nothing.
        let mut merged = bans.clone();
        for ban in &live {
            merged.ban(ban.subnet, ban.created, ban.until).map_err(crate::ban::ImportError::Full)?;
        }
        *bans = merged;
        drop(bans);
        for ban in &live {
            let _ = self.command(Cmd::Banned { subnet: ban.subnet });
        }
        Ok(live.len())
    }

    fn bans(&self) -> std::sync::MutexGuard<'_, crate::ban::BanList> {
        self.inner.shared.bans.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Exempts an inbound `peer` from eviction (`true`), as Bitcoin Core
    /// exempts `noban` and manual peers, or ends the exemption. Outbound
    /// peers are never evicted. An unknown peer is ignored.
    pub fn protect(&self, peer: PeerId, protected: bool) -> Result<(), ReactorGone> {
        self.command(Cmd::Protect { peer, protected })
    }

    /// Reports that `peer` just sent a block or transaction that was new
    /// to you and valid. When every inbound slot is taken, eviction spares
    /// the peers that did so most recently (Bitcoin Core protects 4 by
    /// transactions and 4 by blocks, and up to 8 block-relay-only peers).
    /// An unknown peer is ignored.
    pub fn relayed(&self, peer: PeerId, what: crate::event::Relayed) -> Result<(), ReactorGone> {
        self.command(Cmd::Relayed { peer, what })
    }

    /// Stops the reactor, closes every socket and joins the thread. Events
    /// already queued can still be received. Idempotent.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }

    /// Tells the reactor a slot in the event channel is free, if it was
    /// waiting for one.
    fn consumed(&self) {
        let shared = &self.inner.shared;
        if shared.events_blocked.load(Ordering::SeqCst) && shared.events_blocked.swap(false, Ordering::SeqCst) {
            shared.wake();
        }
    }

    /// Blocks until the next event. `None` once the reactor has stopped and
    /// every event has been received.
    ///
    /// After a send or other command through this handle (or a clone), the
    /// first receive polls for up to 60 µs, yielding the core, before it
    /// parks the thread, so a quick answer costs no wake-up; after polls
    /// that found nothing, later ones are skipped for a while.
    pub fn recv(&self) -> Option<Event<S>> {
        if let Some(event) = self.pop_local() {
            return Some(event);
        }
        match self.spin_for_event(Instant::now() + RECV_SPIN) {
            Ok(event) => return Some(event),
            Err(SpinEnd::Disconnected) => return None,
            Err(SpinEnd::Nothing) => {}
        }
        loop {
            let batch = self.events.recv().ok()?;
            if let Some(event) = self.take_batch(batch) {
                return Some(event);
            }
        }
    }

    /// The next event if one is ready. `Err(Disconnected)` once the reactor
    /// has stopped and every event has been received.
    pub fn try_recv(&self) -> Result<Event<S>, TryRecvError> {
        if let Some(event) = self.pop_local() {
            return Ok(event);
        }
        loop {
            let batch = self.events.try_recv().map_err(|e| match e {
                crossbeam_channel::TryRecvError::Empty => TryRecvError::Empty,
                crossbeam_channel::TryRecvError::Disconnected => TryRecvError::Disconnected,
            })?;
            if let Some(event) = self.take_batch(batch) {
                return Ok(event);
            }
        }
    }

    /// Waits up to `timeout` for the next event (polling first, as
    /// [`recv`](Handle::recv) does).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Event<S>, RecvTimeoutError> {
        if let Some(event) = self.pop_local() {
            return Ok(event);
        }
        let now = Instant::now();
        let deadline = later(now, timeout);
        match self.spin_for_event(deadline.min(now + RECV_SPIN)) {
            Ok(event) => return Ok(event),
            Err(SpinEnd::Disconnected) => return Err(RecvTimeoutError::Disconnected),
            Err(SpinEnd::Nothing) => {}
        }
        loop {
            let batch = self.events.recv_deadline(deadline).map_err(|e| match e {
                crossbeam_channel::RecvTimeoutError::Timeout => RecvTimeoutError::Timeout,
                crossbeam_channel::RecvTimeoutError::Disconnected => RecvTimeoutError::Disconnected,
            })?;
            if let Some(event) = self.take_batch(batch) {
                return Ok(event);
            }
        }
    }

    /// A blocking iterator over events; it ends when the reactor stops.
    pub fn iter(&self) -> impl Iterator<Item = Event<S>> + '_ {
        std::iter::from_fn(move || self.recv())
    }

    fn ask<T>(&self, query: impl FnOnce(Sender<T>) -> Query<S::Info>) -> Result<T, ReactorGone> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.command(Cmd::Query(query(tx)))?;
        rx.recv().map_err(|_| ReactorGone)
    }

    /// Connected peers, sorted by id: in session mode the ready ones, in raw
    /// mode every established connection. Answered by the reactor thread.
    pub fn peers(&self) -> Result<Vec<S::Info>, ReactorGone> {
        self.ask(Query::Peers)
    }

    /// What we know about one peer (`None` if it is gone).
    pub fn peer_info(&self, peer: PeerId) -> Result<Option<S::Info>, ReactorGone> {
        self.ask(|tx| Query::Info(peer, tx))
    }

    /// One peer's counters (`None` if it is gone).
    pub fn peer_stats(&self, peer: PeerId) -> Result<Option<PeerStats>, ReactorGone> {
        self.ask(|tx| Query::Stats(peer, tx))
    }

    /// Reactor-wide counters (inbound connections accepted and refused, and
    /// so on). Read from shared counters; no round trip to the reactor.
    pub fn reactor_stats(&self) -> ReactorStats {
        self.inner.shared.stats.snapshot()
    }

    /// Sets the best-chain height announced in later `version` messages.
    pub fn set_start_height(&self, height: i32) {
        self.inner.shared.start_height.store(height, Ordering::Relaxed);
    }

    #[cfg(feature = "async")]
    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// The next event, from async code on any executor (feature `async`).
    /// Resolves to `None` once the reactor has stopped and every event was
    /// received. Cancel-safe: dropping the future loses no event.
    #[cfg(feature = "async")]
    pub fn recv_async(&self) -> asynch::Recv<'_, S> {
        asynch::Recv { handle: self }
    }

    /// Whether the reactor thread is still running.
    pub fn is_running(&self) -> bool {
        self.inner.thread.lock().map(|t| t.as_ref().is_some_and(|t| !t.is_finished())).unwrap_or(false)
    }
}

#[cfg(test)]
mod spin_tests {
    use super::{RECV_SPIN_BACKOFF_MAX, SpinBackoff};

    #[test]
    fn a_receive_spins_only_after_a_command_and_backs_off_after_misses() {
        let spin = SpinBackoff::default();
        assert!(!spin.should_spin(), "no command sent: park at once");
        spin.arm();
        assert!(spin.should_spin());
        assert!(!spin.should_spin(), "one spin per command");
        // Misses: the next 1, 3, 7, ... armed receives skip their spin.
        for gap in [1, 3, 7] {
            spin.miss();
            for _ in 0..gap {
                spin.arm();
                assert!(!spin.should_spin());
            }
            spin.arm();
            assert!(spin.should_spin());
        }
        for _ in 0..10 {
            spin.miss();
        }
        assert_eq!(spin.skip.load(std::sync::atomic::Ordering::Relaxed), RECV_SPIN_BACKOFF_MAX);
        // A hit resets the gap: the next miss skips one receive only.
        spin.hit();
        spin.miss();
        spin.arm();
        assert!(!spin.should_spin());
        spin.arm();
        assert!(spin.should_spin());
    }
}
