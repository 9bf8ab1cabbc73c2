//! The user's side of the reactor: commands in, events out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};

use crate::codec::Codec;
use crate::event::{Event, PeerId};
use crate::peer::{PeerInfo, PeerStats};
use crate::wire::BitcoinCodec;

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
    /// The peer's send buffer is above its limit; wait for
    /// [`Event::Writable`].
    BufferFull,
    /// No such peer (never existed, or disconnected).
    UnknownPeer,
    /// The reactor has stopped.
    ReactorGone,
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
            Refusal::UnknownPeer => f.write_str("unknown peer"),
            Refusal::ReactorGone => f.write_str("reactor has stopped"),
        }
    }
}

impl<M: std::fmt::Debug> std::error::Error for Refused<M> {}

pub(crate) enum Cmd<M> {
    Connect { peer: PeerId, addr: SocketAddr, gate: Arc<Gate> },
    Send { peer: PeerId, message: M },
    Disconnect { peer: PeerId, mode: Disconnect },
    Query(Query),
}

/// Questions the reactor answers on a one-shot channel.
pub(crate) enum Query {
    Peers(Sender<Vec<PeerInfo>>),
    Info(PeerId, Sender<Option<PeerInfo>>),
    Stats(PeerId, Sender<Option<PeerStats>>),
}

/// Per-peer send gate, shared by the handles and the reactor.
///
/// It is closed while the peer's send buffer is over its limit (`full`, set
/// by the reactor) or while too many messages are on their way to the
/// reactor (`in_flight`, counted up by [`Handle::send`] and down by the
/// reactor). [`Handle::send`] refuses messages while it is closed,
/// synchronously, so refused messages never overtake accepted ones, and the
/// memory a peer's queue can take stays bounded.
#[derive(Debug)]
pub(crate) struct Gate {
    pub(crate) full: AtomicBool,
    pub(crate) in_flight: AtomicUsize,
    pub(crate) max_in_flight: usize,
    /// A send was refused: report `Writable` when the gate reopens.
    pub(crate) refused: AtomicBool,
}

impl Gate {
    pub(crate) fn new(max_in_flight: usize) -> Self {
        Gate {
            full: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            max_in_flight: max_in_flight.max(2),
            refused: AtomicBool::new(false),
        }
    }

    fn closed(&self) -> bool {
        self.full.load(Ordering::SeqCst) || self.in_flight.load(Ordering::SeqCst) >= self.max_in_flight
    }

    /// Reactor side, after the buffer drained or a command was taken: true
    /// (once) if a refused sender must now be told it may send again.
    pub(crate) fn reopened(&self) -> bool {
        self.refused.load(Ordering::SeqCst)
            && !self.full.load(Ordering::SeqCst)
            && self.in_flight.load(Ordering::SeqCst) <= self.max_in_flight / 2
            && self.refused.swap(false, Ordering::SeqCst)
    }
}

/// State shared between the handles and the reactor thread.
pub(crate) struct Shared {
    pub(crate) waker: mio::Waker,
    /// Set by the reactor just before it may block in `poll`.
    pub(crate) sleeping: AtomicBool,
    /// Set by the reactor when the event channel was full.
    pub(crate) events_blocked: AtomicBool,
    pub(crate) shutdown: AtomicBool,
    pub(crate) next_peer: AtomicU64,
    /// Our best height, announced in `version` (session mode).
    pub(crate) start_height: AtomicI32,
    /// Send gates of live peers.
    pub(crate) gates: RwLock<HashMap<PeerId, Arc<Gate>>>,
    pub(crate) max_in_flight: usize,
    /// Async receivers waiting for an event (feature `async`).
    pub(crate) async_waiting: AtomicBool,
    pub(crate) async_wakers: Mutex<Vec<std::task::Waker>>,
}

impl Shared {
    /// Wakes the reactor only if it may be asleep: one atomic swap per
    /// command, one syscall only when the reactor is idle.
    pub(crate) fn wake_if_sleeping(&self) {
        if self.sleeping.load(Ordering::SeqCst) && self.sleeping.swap(false, Ordering::SeqCst) {
            self.wake();
        }
    }

    pub(crate) fn wake(&self) {
        if let Err(e) = self.waker.wake() {
            log::error!("cannot wake reactor: {e}");
        }
    }

    pub(crate) fn allocate_peer(&self) -> (PeerId, Arc<Gate>) {
        let peer = PeerId(self.next_peer.fetch_add(1, Ordering::Relaxed));
        let gate = Arc::new(Gate::new(self.max_in_flight));
        self.gates.write().unwrap_or_else(|e| e.into_inner()).insert(peer, Arc::clone(&gate));
        (peer, gate)
    }

    /// Wakes async receivers if any wait; called by the reactor after each
    /// round and when it stops. One atomic load when nobody waits.
    pub(crate) fn wake_async(&self) {
        if self.async_waiting.load(Ordering::SeqCst) && self.async_waiting.swap(false, Ordering::SeqCst) {
            let wakers = std::mem::take(&mut *self.async_wakers.lock().unwrap_or_else(|e| e.into_inner()));
            for w in wakers {
                w.wake();
            }
        }
    }

    pub(crate) fn remove_gate(&self, peer: PeerId) {
        self.gates.write().unwrap_or_else(|e| e.into_inner()).remove(&peer);
    }
}

struct Inner<M> {
    commands: Sender<Cmd<M>>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    local_addrs: Vec<SocketAddr>,
}

impl<M> Inner<M> {
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

impl<M> Drop for Inner<M> {
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
pub struct Handle<C: Codec = BitcoinCodec> {
    inner: Arc<Inner<C::Message>>,
    /// Events come in batches, one per reactor round (or per
    /// [`EVENT_BATCH`](crate::reactor::EVENT_BATCH) events): one channel
    /// operation and at most one wake-up per batch instead of per event.
    events: Receiver<Vec<Event<C::Message, C::Error>>>,
    /// The rest of the last batch received, shared by all clones so that no
    /// event is stranded in a clone that stops receiving.
    local: SharedBatch<C>,
}

/// Events received from the channel but not yet handed out.
type SharedBatch<C> = Arc<Mutex<std::collections::VecDeque<Event<<C as Codec>::Message, <C as Codec>::Error>>>>;

impl<C: Codec> Clone for Handle<C> {
    fn clone(&self) -> Self {
        Handle { inner: Arc::clone(&self.inner), events: self.events.clone(), local: Arc::clone(&self.local) }
    }
}

impl<C: Codec> std::fmt::Debug for Handle<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").field("local_addrs", &self.inner.local_addrs).finish()
    }
}

impl<C: Codec> Handle<C> {
    pub(crate) fn new(
        commands: Sender<Cmd<C::Message>>,
        events: Receiver<Vec<Event<C::Message, C::Error>>>,
        shared: Arc<Shared>,
        thread: JoinHandle<()>,
        local_addrs: Vec<SocketAddr>,
    ) -> Self {
        let inner = Arc::new(Inner { commands, shared, thread: Mutex::new(Some(thread)), local_addrs });
        Handle { inner, events, local: Arc::default() }
    }

    /// Pops from this clone's batch buffer.
    fn pop_local(&self) -> Option<Event<C::Message, C::Error>> {
        self.local.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
    }

    /// Keeps a received batch and returns its first event.
    fn take_batch(&self, batch: Vec<Event<C::Message, C::Error>>) -> Option<Event<C::Message, C::Error>> {
        self.consumed();
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        local.extend(batch);
        local.pop_front()
    }

    fn command(&self, cmd: Cmd<C::Message>) -> Result<(), ReactorGone> {
        self.inner.commands.send(cmd).map_err(|_| ReactorGone)?;
        self.inner.shared.wake_if_sleeping();
        Ok(())
    }

    /// The addresses the listeners are bound to, in the order of
    /// [`Config::listen`](crate::Config::listen), with ports resolved.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.inner.local_addrs
    }

    /// Starts connecting to `addr` and returns the id the peer will have.
    ///
    /// Exactly one of these follows: [`Event::ConnectFailed`] (no TCP
    /// connection), or the announcement ([`Event::Connected`] in raw mode,
    /// [`Event::Ready`] in session mode) and later [`Event::Disconnected`],
    /// or [`Event::Disconnected`] alone when the connection ended before the
    /// transport or session handshake completed. Messages sent before the
    /// announcement are held and sent, in order, once the peer is ready.
    pub fn connect(&self, addr: SocketAddr) -> Result<PeerId, ReactorGone> {
        let (peer, gate) = self.inner.shared.allocate_peer();
        if let Err(e) = self.command(Cmd::Connect { peer, addr, gate }) {
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
    pub fn send(&self, peer: PeerId, message: C::Message) -> Result<(), Refused<C::Message>> {
        let shared = &self.inner.shared;
        {
            let gates = shared.gates.read().unwrap_or_else(|e| e.into_inner());
            let Some(gate) = gates.get(&peer) else {
                return Err(Refused { message, reason: Refusal::UnknownPeer });
            };
            if gate.closed() {
                // Flag first, then re-check: if the reactor opened the gate in
                // between it will report Writable (spuriously, harmlessly);
                // otherwise it sees the flag when it opens the gate.
                gate.refused.store(true, Ordering::SeqCst);
                if gate.closed() {
                    return Err(Refused { message, reason: Refusal::BufferFull });
                }
            }
            gate.in_flight.fetch_add(1, Ordering::SeqCst);
        }
        match self.inner.commands.send(Cmd::Send { peer, message }) {
            Ok(()) => {
                shared.wake_if_sleeping();
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
    pub fn recv(&self) -> Option<Event<C::Message, C::Error>> {
        if let Some(event) = self.pop_local() {
            return Some(event);
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
    pub fn try_recv(&self) -> Result<Event<C::Message, C::Error>, TryRecvError> {
        if let Some(event) = self.pop_local() {
            return Ok(event);
        }
        loop {
            let batch = self.events.try_recv()?;
            if let Some(event) = self.take_batch(batch) {
                return Ok(event);
            }
        }
    }

    /// Waits up to `timeout` for the next event.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Event<C::Message, C::Error>, RecvTimeoutError> {
        if let Some(event) = self.pop_local() {
            return Ok(event);
        }
        let deadline = crate::session::later(std::time::Instant::now(), timeout);
        loop {
            let batch = self.events.recv_deadline(deadline)?;
            if let Some(event) = self.take_batch(batch) {
                return Ok(event);
            }
        }
    }

    /// A blocking iterator over events; it ends when the reactor stops.
    pub fn iter(&self) -> impl Iterator<Item = Event<C::Message, C::Error>> + '_ {
        std::iter::from_fn(move || self.recv())
    }

    fn ask<T>(&self, query: impl FnOnce(Sender<T>) -> Query) -> Result<T, ReactorGone> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.command(Cmd::Query(query(tx)))?;
        rx.recv().map_err(|_| ReactorGone)
    }

    /// Connected peers, sorted by id: in session mode the ready ones, in raw
    /// mode every established connection. Answered by the reactor thread.
    pub fn peers(&self) -> Result<Vec<PeerInfo>, ReactorGone> {
        self.ask(Query::Peers)
    }

    /// What we know about one peer (`None` if it is gone).
    pub fn peer_info(&self, peer: PeerId) -> Result<Option<PeerInfo>, ReactorGone> {
        self.ask(|tx| Query::Info(peer, tx))
    }

    /// One peer's counters (`None` if it is gone).
    pub fn peer_stats(&self, peer: PeerId) -> Result<Option<PeerStats>, ReactorGone> {
        self.ask(|tx| Query::Stats(peer, tx))
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
    pub fn recv_async(&self) -> crate::asynch::Recv<'_, C> {
        crate::asynch::Recv { handle: self }
    }

    /// Whether the reactor thread is still running.
    pub fn is_running(&self) -> bool {
        self.inner.thread.lock().map(|t| t.as_ref().is_some_and(|t| !t.is_finished())).unwrap_or(false)
    }
}
