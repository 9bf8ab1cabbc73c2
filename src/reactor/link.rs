//! One connection as a sans-IO state machine.
//!
//! A [`Link`] owns everything about one peer except its socket: the codec,
//! the protocol state, the receive and send buffers, the messages held until
//! the peer is ready or has room, and one [`TimerTable`]. The reactor moves
//! bytes and readiness; the link decides. Inputs are `handle_*` calls and
//! [`Link::queue`]; outputs are [`Link::poll_transmit`] (bytes to write, then
//! [`Link::advance`]), events emitted into a [`Sink`], and
//! [`Link::poll_timeout`]. Time comes in as `now`; nothing here reads a clock
//! or touches a socket, so every path is testable with byte vectors.
//!
//! States:
//! ```text
//! Connecting ──connected──▶ [Proxying ──proxy connected──▶] Handshake ──transport up (raw) / Ready (session)──▶ Ready
//!      (outbound only)             (SOCKS5 only)               │                                                 │
//!                               └─────────────── after a flushed disconnect ──────┴──▶ Lingering
//! ```

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::dial::{Dial, Tunnel};
use super::rxbuf::RxBuf;
use crate::codec::{Codec, Decoded, Ended, Factory, Start};
use crate::error::Report;
use crate::event::{ConnectError, DisconnectReason, Event, SendError};
use crate::peer::PeerStats;
use crate::protocol::{Info, Meta, Msg, Protocol};
use crate::reactor::shared::Gate;
use crate::stack::LinkInfo;
use crate::target::Target;
use crate::types::{Direction, PeerId, later};

/// How long a flushed connection waits for the peer to close before we
/// close it ourselves.
pub(crate) const LINGER: Duration = Duration::from_secs(2);
/// Most forwarded session messages kept for a peer before `Ready`.
const MAX_BEFORE_READY: usize = 16;
/// Buffers at most this large are kept when they empty; larger ones go back
/// to the pool so that idle peers cost little memory.
const KEEP_BUFFER: usize = 4 * 1024;
/// Large buffers freed by idle peers are kept for reuse, up to this many, so
/// that a busy peer does not reallocate (and fault in) a buffer per frame.
const POOL_BUFFERS: usize = 8;
/// Most bytes asked of one read into a peer's own buffer (Bitcoin Core reads
/// 64 KiB per socket per round).
pub(crate) const READ_CHUNK: usize = 64 * 1024;
/// The smallest read into a link's own buffer (see [`Link::read_with`]).
pub(crate) const MIN_READ: usize = 4 * 1024;

/// Where events go. The reactor's outbox batches them for the user; tests
/// collect them in a `Vec`.
pub(crate) trait Sink<P: Protocol> {
    fn emit(&mut self, event: Event<P::Stack>);
    /// The user is behind: stop decoding until the sink has room.
    fn paused(&self) -> bool;
}

impl<P: Protocol> Sink<P> for Vec<Event<P::Stack>> {
    fn emit(&mut self, event: Event<P::Stack>) {
        self.push(event);
    }
    fn paused(&self) -> bool {
        false
    }
}

/// The limits a link enforces, from [`Config`](crate::Config).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) send_buffer: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) stall_timeout: Duration,
    pub(crate) frame_timeout: Duration,
    pub(crate) handshake_timeout: Duration,
    pub(crate) receive_buffer: usize,
    pub(crate) max_outbound: usize,
    pub(crate) max_pending_connects: usize,
}

impl Limits {
    pub(crate) fn from_config(config: &crate::Config) -> Limits {
        Limits {
            send_buffer: config.send_buffer_limit,
            connect_timeout: config.connect_timeout,
            stall_timeout: config.stall_timeout,
            frame_timeout: config.frame_timeout,
            handshake_timeout: config.session.handshake_timeout,
            receive_buffer: config.receive_buffer_limit,
            max_outbound: config.max_outbound,
            max_pending_connects: config.max_pending_connects,
        }
    }
}

#[cfg(any(test, fuzzing))]
impl Limits {
    /// For the link tests and the simulation: timeouts that are all
    /// different (so each knows which fires first), caps out of the way.
    pub(crate) fn distinct_timeouts(send_buffer: usize) -> Limits {
        Limits {
            send_buffer,
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(60),
            frame_timeout: Duration::from_secs(120),
            receive_buffer: 5_000_000,
            max_outbound: 1000,
            max_pending_connects: 1000,
        }
    }
}

/// A small stack of spare buffers shared by all links.
#[derive(Default)]
pub(crate) struct Pool(Vec<Vec<u8>>);

impl Pool {
    /// Returns an allocation to the pool (or frees it). Its length stays:
    /// the bytes are initialised, so a receive buffer made from it need not
    /// zero them again.
    fn put_memory(&mut self, memory: Vec<u8>) {
        if self.0.len() < POOL_BUFFERS {
            self.0.push(memory);
        }
    }

    /// Returns `buf`'s allocation to the pool (or frees it) and leaves `buf`
    /// empty without capacity.
    fn put(&mut self, buf: &mut Vec<u8>) {
        self.put_memory(std::mem::take(buf));
    }

    /// Gives `buf` a pooled allocation, empty, if it has none.
    fn fill(&mut self, buf: &mut Vec<u8>) {
        if buf.capacity() == 0
            && let Some(mut b) = self.0.pop()
        {
            b.clear();
            *buf = b;
        }
    }

    /// Gives `rx` a pooled allocation if it has none.
    fn fill_rx(&mut self, rx: &mut RxBuf) {
        if rx.capacity() == 0
            && let Some(b) = self.0.pop()
        {
            rx.give_memory(b);
        }
    }
}

/// Everything a link call needs from its environment.
pub(crate) struct Ctx<'a, P: Protocol, E: Sink<P>> {
    pub(crate) proto: &'a mut P,
    /// Scratch list for messages the protocol wants sent (kept to reuse its
    /// allocation).
    pub(crate) proto_out: &'a mut Vec<Msg<P>>,
    pub(crate) events: &'a mut E,
    pub(crate) pool: &'a mut Pool,
    pub(crate) limits: &'a Limits,
    pub(crate) now: Instant,
}

/// The kinds of timer a link has; one slot each in its [`TimerTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// The outbound TCP connect must finish.
    Connect,
    /// The peer must take some of what we queued.
    Stall,
    /// A started frame must complete.
    Frame,
    /// The transport handshake (BIP324) must complete.
    Handshake,
    /// The protocol layer's next deadline (session handshake, ping).
    Protocol,
    /// End of the linger after a flushed disconnect.
    Linger,
}

impl Timer {
    /// In the order ties fire: the protocol's handshake deadline comes
    /// before the transport's, as it names the more useful reason.
    const ALL: [Timer; 6] =
        [Timer::Connect, Timer::Stall, Timer::Frame, Timer::Protocol, Timer::Handshake, Timer::Linger];
}

/// One deadline per [`Timer`] kind. Setting a slot replaces its deadline, so
/// a timer is never stale.
#[derive(Debug, Default, Clone)]
pub(crate) struct TimerTable([Option<Instant>; 6]);

impl TimerTable {
    pub(crate) fn set(&mut self, timer: Timer, at: Instant) {
        self.0[timer as usize] = Some(at);
    }

    pub(crate) fn clear(&mut self, timer: Timer) {
        self.0[timer as usize] = None;
    }

    pub(crate) fn get(&self, timer: Timer) -> Option<Instant> {
        self.0[timer as usize]
    }

    /// The earliest deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.0.iter().flatten().min().copied()
    }

    /// Clears and returns the earliest timer due at `now`.
    fn pop_expired(&mut self, now: Instant) -> Option<Timer> {
        let timer =
            Timer::ALL.into_iter().filter(|t| self.get(*t).is_some_and(|at| at <= now)).min_by_key(|t| self.get(*t))?;
        self.clear(timer);
        Some(timer)
    }
}

/// Where a link is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Outbound TCP connect in progress; nothing is read or written.
    Connecting,
    /// Connected to the proxy; the SOCKS5 handshake runs. What the codec
    /// and protocol queued waits for the proxy to connect to the target.
    Proxying,
    /// Connected; the transport or protocol handshake is running. User
    /// messages are held.
    Handshake,
    /// Announced to the user; user messages are encoded.
    Ready,
    /// Flushed after [`Disconnect::AfterFlush`](crate::Disconnect::AfterFlush)
    /// and our write side shut: input is discarded until the peer closes or
    /// the linger timer fires, so closing cannot reset the connection and
    /// destroy what we sent.
    Lingering {
        /// The user had been told about the peer.
        announced: bool,
    },
}

/// Why a link ends.
pub(crate) enum End<S: crate::stack::Stack> {
    /// The connection (or the attempt) ends for this reason.
    Reason(DisconnectReason<S>),
    /// The outbound connect did not complete in time.
    ConnectTimeout,
}

impl<S: crate::stack::Stack> From<DisconnectReason<S>> for End<S> {
    fn from(reason: DisconnectReason<S>) -> Self {
        End::Reason(reason)
    }
}

/// What the reactor must do after a link closed.
pub(crate) enum Closed<C: Codec, M> {
    /// Reported to the user; forget the connection.
    Reported,
    /// Reconnect to the same target by the same route under the same id
    /// with `codec` (the BIP324 v1 fallback), carrying the held messages and
    /// a pending flushed close over.
    Retry { codec: C, held: VecDeque<M>, after_flush: bool },
    /// The connect to one address of a resolved name failed: try the next
    /// one, `addr`, with a fresh codec, within the same deadline.
    Next { addr: SocketAddr, dial: Dial, held: VecDeque<M>, after_flush: bool },
}

/// How an outbound link reaches its target.
struct Outbound {
    /// What was dialled.
    target: Target,
    /// The proxy the connection goes through.
    proxy: Option<SocketAddr>,
    /// The SOCKS5 handshake, until the proxy connected (kept after a
    /// failure, which it holds).
    tunnel: Option<Tunnel>,
    /// Bytes of the proxy handshake moved into `tx` (a proxy that answered
    /// ahead of our request), not counted as sent to the peer.
    proxy_owed: usize,
    /// Further addresses of a resolved name, the next one last.
    rest: Vec<SocketAddr>,
    /// The deadline of the whole attempt.
    deadline: Instant,
}

/// One connection's sans-IO state.
pub(crate) struct Link<C: Codec, P: Protocol> {
    pub(crate) id: PeerId,
    pub(crate) direction: Direction,
    /// The other end of the TCP connection: the peer, or the proxy.
    pub(crate) remote: SocketAddr,
    /// Outbound only: how the connection reaches what was dialled (boxed:
    /// inbound links, the many, carry a pointer).
    out: Option<Box<Outbound>>,
    pub(crate) local: Option<SocketAddr>,
    state: State,
    /// A flushed disconnect was asked for: no new messages; linger once
    /// everything queued and held is written.
    after_flush: bool,
    /// `shutdown(Write)` is owed to the socket (set on entering Lingering).
    shutdown_due: bool,
    /// The last decode pass stopped with complete input left because
    /// [`may_decode`](Link::may_decode) said no.
    decode_paused: bool,
    /// The peer closed its side; what is buffered is still decoded.
    peer_closed: bool,
    /// The first bytes of an outbound connection arrived, not yet reported.
    answered: bool,
    codec: C,
    proto: P::Conn,
    /// Bytes of an incomplete frame.
    rx: RxBuf,
    /// Length of the incomplete frame, once the codec knows it.
    rx_frame_len: Option<usize>,
    tx: Vec<u8>,
    tx_pos: usize,
    /// The send gate shared with the handles.
    gate: Arc<Gate>,
    /// User messages waiting for the peer to be ready or to have room.
    held: VecDeque<Msg<P>>,
    /// Session messages forwarded (by configuration) before the peer was
    /// announced; delivered right after `Ready`.
    before_ready: Vec<(Msg<P>, usize)>,
    timers: TimerTable,
    /// What inbound eviction weighs beyond the protocol's traits.
    pub(crate) standing: super::eviction::Standing,
    connected_at: Instant,
    last_send: Option<Instant>,
    last_recv: Option<Instant>,
    bytes_in: u64,
    bytes_out: u64,
    msgs_in: u64,
    msgs_out: u64,
}

type Reason<P> = DisconnectReason<<P as Protocol>::Stack>;

impl<C, P> Link<C, P>
where
    C: Codec<Message = Msg<P>, Error = <P::Stack as crate::stack::Stack>::CodecError>,
    P: Protocol,
{
    /// A new connection: outbound ones start in `Connecting`, inbound ones
    /// are connected already. The codec's and the protocol's opening bytes
    /// (a BIP324 key, a `version`) are queued at once. `dial` says how an
    /// outbound connection reaches its target (`None`: directly to `remote`
    /// within the connect timeout).
    #[allow(clippy::too_many_arguments, reason = "each argument is one fact about the new connection")]
    pub(crate) fn new<E: Sink<P>>(
        id: PeerId,
        direction: Direction,
        remote: SocketAddr,
        local: Option<SocketAddr>,
        mut codec: C,
        gate: Arc<Gate>,
        held: VecDeque<Msg<P>>,
        entropy: [u8; 32],
        dial: Option<Dial>,
        cx: &mut Ctx<'_, P, E>,
    ) -> Result<Self, Reason<P>> {
        let dial = match (direction, dial) {
            (Direction::Inbound, _) => None,
            (Direction::Outbound, dial) => {
                Some(dial.unwrap_or_else(|| Dial::direct(remote, later(cx.now, cx.limits.connect_timeout))))
            }
        };
        let out = dial.map(|Dial { target, deadline, rest, tunnel }| {
            let proxy = tunnel.as_ref().map(|t| t.proxy);
            Box::new(Outbound { target, proxy, tunnel, proxy_owed: 0, rest, deadline })
        });
        let mut tx = Vec::new();
        codec
            .start(&Start::new(direction == Direction::Outbound, entropy), &mut tx)
            .map_err(DisconnectReason::Codec)?;
        // What the peer is told it is (`version`'s receiver): never the
        // proxy, which would tell it how we connect. Through a proxy that is
        // the target's address if it has one, else unspecified, as in Core.
        let receiver = match out.as_deref() {
            Some(Outbound { target, proxy: Some(_), .. }) => {
                target.socket_addr().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
            }
            _ => remote,
        };
        let deadline = out.as_ref().map(|o| o.deadline);
        let proto = cx.proto.open(&Meta { direction, remote: receiver }, cx.now, cx.proto_out);
        let mut link = Link {
            id,
            direction,
            remote,
            out,
            local,
            state: if direction == Direction::Outbound { State::Connecting } else { State::Handshake },
            after_flush: false,
            shutdown_due: false,
            decode_paused: false,
            peer_closed: false,
            answered: false,
            codec,
            proto,
            rx: RxBuf::default(),
            rx_frame_len: None,
            tx,
            tx_pos: 0,
            gate,
            held,
            before_ready: Vec::new(),
            timers: TimerTable::default(),
            standing: super::eviction::Standing::default(),
            connected_at: cx.now,
            last_send: None,
            last_recv: None,
            bytes_in: 0,
            bytes_out: 0,
            msgs_in: 0,
            msgs_out: 0,
        };
        if let Err(e) = link.queue_protocol(cx) {
            cx.proto.closed(&link.proto);
            return Err(e);
        }
        match deadline {
            // The protocol's clocks start once connected; the connect
            // deadline covers the proxy handshake too.
            Some(at) => link.timers.set(Timer::Connect, at),
            None => {
                link.opened(cx);
                link.schedule_protocol(cx);
            }
        }
        Ok(link)
    }

    pub(crate) fn state(&self) -> State {
        self.state
    }

    /// Bytes allocated for this link's receive and send buffers.
    pub(crate) fn buffered(&self) -> usize {
        self.rx.capacity() + self.tx.capacity()
    }

    /// Bytes still missing from the frame being received (`usize::MAX`
    /// without one).
    pub(crate) fn frame_remaining(&self) -> usize {
        self.rx_frame_len.map_or(usize::MAX, |f| f.saturating_sub(self.rx.len()))
    }

    /// An outbound link still connecting (TCP or proxy handshake).
    pub(crate) fn is_pending(&self) -> bool {
        self.direction == Direction::Outbound && matches!(self.state, State::Connecting | State::Proxying)
    }

    /// This link as an eviction candidate, if it may be one: inbound, not
    /// already closing.
    pub(crate) fn eviction_candidate(&self, proto: &P) -> Option<super::eviction::Candidate> {
        if self.direction != Direction::Inbound || self.after_flush || matches!(self.state, State::Lingering { .. }) {
            return None;
        }
        let traits = proto.traits(&self.proto);
        let s = &self.standing;
        Some(super::eviction::Candidate {
            id: self.id,
            connected: self.connected_at,
            min_ping: traits.min_ping,
            last_block: s.last_block,
            last_tx: s.last_tx,
            relevant_services: traits.relevant_services,
            relay_txs: traits.relay_txs,
            bloom_filter: traits.bloom_filter,
            keyed_net_group: s.keyed_net_group,
            is_local: s.is_local,
            protected: s.protected,
        })
    }

    /// Bytes queued and not yet written.
    pub(crate) fn queued(&self) -> usize {
        self.tx.len() - self.tx_pos
    }

    /// Whether decoding may go on. Not while our send queue is over its
    /// limit (Core's `fPauseSend`: a peer that makes us answer cannot grow
    /// the queue without bound), nor, once the peer is announced, while the
    /// user's messages to it fill the in-flight cap (a peer that makes the
    /// user answer cannot outrun the answers). Before the announcement held
    /// messages count as in flight, so that cap cannot apply: decoding is
    /// what completes the handshake.
    fn may_decode(&self, limits: &Limits) -> bool {
        self.queued() <= limits.send_buffer && !(self.state == State::Ready && self.gate.in_flight_full())
    }

    /// Whether the reactor should read. While decoding is paused, input is
    /// still read, up to [`Limits::receive_buffer`] (Core's
    /// `-maxreceivebuffer`), so that two peers that both owe each other more
    /// than the socket buffers hold keep draining each other instead of
    /// stalling together.
    pub(crate) fn wants_read(&self, limits: &Limits) -> bool {
        match self.state {
            State::Connecting => false,
            State::Proxying => !self.peer_closed,
            State::Lingering { .. } => true,
            State::Handshake | State::Ready => {
                !self.peer_closed && (!self.decode_paused || self.rx.len() < limits.receive_buffer)
            }
        }
    }

    /// Decoding was paused with input buffered and may resume now: the
    /// reactor should serve this link's input even without new readiness.
    pub(crate) fn wants_decode(&self, limits: &Limits) -> bool {
        self.decode_paused && self.may_decode(limits)
    }

    /// Messages that waited for this outbound connection before its link
    /// existed (during a lookup, or on the previous link of the attempt), in
    /// order, ahead of any queued since.
    pub(crate) fn hold(&mut self, mut held: VecDeque<Msg<P>>) {
        held.append(&mut self.held);
        self.held = held;
    }

    /// The earliest deadline of any timer.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Bytes to write next (empty when there are none, or while connecting;
    /// the proxy's while proxying).
    pub(crate) fn poll_transmit(&self) -> &[u8] {
        match (&self.state, self.tunnel()) {
            (State::Connecting, _) => &[],
            (State::Proxying, Some(tunnel)) => tunnel.handshake.poll_transmit(),
            _ => &self.tx[self.tx_pos..],
        }
    }

    /// True once after the link entered `Lingering`: shut the socket's write
    /// side now.
    pub(crate) fn poll_shutdown(&mut self) -> bool {
        std::mem::take(&mut self.shutdown_due)
    }

    /// The TCP connect completed; `local` is our end.
    pub(crate) fn handle_connected<E: Sink<P>>(&mut self, local: SocketAddr, cx: &mut Ctx<'_, P, E>) {
        if self.state != State::Connecting {
            return;
        }
        self.local = Some(local);
        if self.tunnel().is_some() {
            self.state = State::Proxying;
            return;
        }
        self.transport_up(cx);
    }

    /// The byte stream to the peer is up (directly, or through the proxy):
    /// the transport and protocol handshakes start.
    fn transport_up<E: Sink<P>>(&mut self, cx: &mut Ctx<'_, P, E>) {
        self.state = State::Handshake;
        self.timers.clear(Timer::Connect);
        cx.proto.connected(&mut self.proto, cx.now);
        self.schedule_protocol(cx);
        self.opened(cx);
        self.maybe_linger(cx);
    }

    /// Bytes can flow from now on: start the stall and transport-handshake
    /// clocks, and announce a raw-mode peer whose transport needs no
    /// handshake.
    fn opened<E: Sink<P>>(&mut self, cx: &mut Ctx<'_, P, E>) {
        if self.queued() > 0 {
            self.timers.set(Timer::Stall, later(cx.now, cx.limits.stall_timeout));
        }
        if !self.codec.is_established() {
            self.timers.set(Timer::Handshake, later(cx.now, cx.limits.handshake_timeout));
        }
        self.maybe_announce(cx);
    }

    /// The peer closed its side. While lingering that ends the link
    /// (`Flushed`). Otherwise input already buffered is still decoded: the
    /// peer may have sent its last messages just before closing, while our
    /// decoding was paused. The link ends with `PeerClosed` once nothing
    /// decodable is left ([`decode_buffered`](Link::decode_buffered) says so).
    pub(crate) fn handle_eof<E: Sink<P>>(&mut self, cx: &mut Ctx<'_, P, E>) -> Result<(), Reason<P>> {
        if matches!(self.state, State::Lingering { .. }) {
            return Err(DisconnectReason::Flushed);
        }
        self.peer_closed = true;
        if let (State::Proxying, Some(tunnel)) = (self.state, self.tunnel_mut()) {
            // The handshake keeps the failure for `close`.
            let _ = tunnel.handshake.handle_eof();
            return Err(DisconnectReason::PeerClosed);
        }
        self.decode_buffered(cx)
    }

    /// Why the link ends when reading the socket failed: while lingering
    /// everything was delivered already.
    pub(crate) fn io_reason(&self, e: std::io::Error) -> Reason<P> {
        match self.state {
            State::Lingering { .. } => DisconnectReason::Flushed,
            _ => DisconnectReason::Io(e),
        }
    }

    /// `n` bytes of [`poll_transmit`](Link::poll_transmit) were written.
    pub(crate) fn advance<E: Sink<P>>(&mut self, n: usize, cx: &mut Ctx<'_, P, E>) {
        if n == 0 {
            return;
        }
        if let (State::Proxying, Some(tunnel)) = (self.state, self.tunnel_mut()) {
            tunnel.handshake.advance(n);
            return;
        }
        self.tx_pos = (self.tx_pos + n).min(self.tx.len());
        let owed = self.out.as_deref_mut().map_or(0, |out| {
            let owed = n.min(out.proxy_owed);
            out.proxy_owed -= owed;
            owed
        });
        self.bytes_out += (n - owed) as u64;
        self.last_send = Some(cx.now);
        if self.queued() > 0 {
            self.timers.set(Timer::Stall, later(cx.now, cx.limits.stall_timeout));
        } else {
            self.timers.clear(Timer::Stall);
            self.tx.clear();
            self.tx_pos = 0;
            if self.tx.capacity() > KEEP_BUFFER {
                cx.pool.put(&mut self.tx);
            }
        }
        self.after_drain(cx);
    }

    /// After the send queue shrank: encode held messages while there is
    /// room, reopen the gate, and linger if a flushed close is due.
    fn after_drain<E: Sink<P>>(&mut self, cx: &mut Ctx<'_, P, E>) {
        self.flush_held(cx);
        let limit = cx.limits.send_buffer;
        if self.queued() <= limit / 2 {
            self.gate.full.store(false, Ordering::SeqCst);
            self.reopen_gate(cx);
        }
        self.maybe_linger(cx);
    }

    /// After the gate may have opened: wakes senders waiting in
    /// `send_timeout`, and reports `Writable` (once) to a refused sender.
    fn reopen_gate<E: Sink<P>>(&mut self, cx: &mut Ctx<'_, P, E>) {
        if self.gate.reopened() {
            cx.events.emit(Event::Writable { peer: self.id });
        }
    }

    /// A user message for this peer, taken off the command channel.
    pub(crate) fn queue<E: Sink<P>>(&mut self, message: Msg<P>, cx: &mut Ctx<'_, P, E>) {
        if self.after_flush || matches!(self.state, State::Lingering { .. }) {
            self.gate.in_flight.fetch_sub(1, Ordering::SeqCst);
            cx.events.emit(Event::SendRejected { peer: self.id, message, reason: SendError::Closing });
            self.reopen_gate(cx);
            return;
        }
        if self.state != State::Ready || self.queued() > cx.limits.send_buffer || !self.held.is_empty() {
            // Not announced yet, or over the limit: hold it, in order. The
            // in-flight cap bounds how many can wait here.
            self.held.push_back(message);
            return;
        }
        self.encode_user(message, cx);
    }

    /// Encodes held user messages, in order, while there is room.
    fn flush_held<E: Sink<P>>(&mut self, cx: &mut Ctx<'_, P, E>) {
        while self.state == State::Ready && self.queued() <= cx.limits.send_buffer {
            let Some(message) = self.held.pop_front() else { return };
            self.encode_user(message, cx);
        }
    }

    /// Encodes one user message into the send buffer.
    fn encode_user<E: Sink<P>>(&mut self, message: Msg<P>, cx: &mut Ctx<'_, P, E>) {
        self.gate.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.tx_pos > 0 && self.tx_pos >= self.tx.len() / 2 {
            self.tx.drain(..self.tx_pos);
            self.tx_pos = 0;
        }
        cx.pool.fill(&mut self.tx);
        let was_empty = self.queued() == 0;
        let before = self.tx.len();
        if let Err(e) = self.codec.encode(&message, &mut self.tx) {
            cx.events.emit(Event::SendRejected { peer: self.id, message, reason: SendError::Encode(e) });
            self.reopen_gate(cx);
            return;
        }
        self.msgs_out += 1;
        cx.proto.sent(&mut self.proto, &message, self.tx.len() - before);
        if self.queued() > cx.limits.send_buffer {
            self.gate.full.store(true, Ordering::SeqCst);
        } else {
            self.reopen_gate(cx);
        }
        if was_empty {
            self.timers.set(Timer::Stall, later(cx.now, cx.limits.stall_timeout));
        }
    }

    /// Encodes messages the protocol layer produced. They bypass the send
    /// cap: they are few and small (handshake, pong, ping).
    fn queue_protocol<E: Sink<P>>(&mut self, cx: &mut Ctx<'_, P, E>) -> Result<(), Reason<P>> {
        if cx.proto_out.is_empty() {
            return Ok(());
        }
        if self.queued() == 0 && self.state != State::Connecting {
            self.timers.set(Timer::Stall, later(cx.now, cx.limits.stall_timeout));
        }
        for message in cx.proto_out.drain(..) {
            let before = self.tx.len();
            self.codec.encode(&message, &mut self.tx).map_err(DisconnectReason::Codec)?;
            self.msgs_out += 1;
            cx.proto.sent(&mut self.proto, &message, self.tx.len() - before);
        }
        self.mark_full(cx.limits);
        Ok(())
    }

    fn mark_full(&self, limits: &Limits) {
        if self.queued() > limits.send_buffer {
            self.gate.full.store(true, Ordering::SeqCst);
        }
    }

    fn schedule_protocol<E: Sink<P>>(&mut self, cx: &mut Ctx<'_, P, E>) {
        match cx.proto.deadline(&self.proto) {
            Some(at) => self.timers.set(Timer::Protocol, at),
            None => self.timers.clear(Timer::Protocol),
        }
    }

    /// Announces a raw-mode peer once its transport is established.
    fn maybe_announce<E: Sink<P>>(&mut self, cx: &mut Ctx<'_, P, E>) {
        if self.state != State::Handshake || !self.codec.is_established() {
            return;
        }
        self.timers.clear(Timer::Handshake);
        if !cx.proto.announce_on_connect() {
            return;
        }
        self.state = State::Ready;
        let local = self.local.unwrap_or(self.remote);
        cx.events.emit(Event::Connected { peer: self.id, direction: self.direction, local, remote: self.remote });
        self.flush_held(cx);
    }

    /// A flushed disconnect was asked for.
    pub(crate) fn close_after_flush<E: Sink<P>>(&mut self, cx: &mut Ctx<'_, P, E>) {
        self.after_flush = true;
        self.maybe_linger(cx);
    }

    fn maybe_linger<E: Sink<P>>(&mut self, cx: &mut Ctx<'_, P, E>) {
        let flushed = self.queued() == 0 && self.held.is_empty();
        if self.after_flush && flushed && matches!(self.state, State::Handshake | State::Ready) {
            self.state = State::Lingering { announced: self.state == State::Ready };
            self.shutdown_due = true;
            self.timers = TimerTable::default();
            self.timers.set(Timer::Linger, later(cx.now, LINGER));
            self.rx.clear();
            self.rx_frame_len = None;
        }
    }

    /// Reads into this link's own buffer when part of a frame is buffered:
    /// `read` gets the free tail, sized to the missing part of the frame, and
    /// returns how much it filled. `None` while nothing is buffered: then
    /// read into the reactor's scratch buffer and call
    /// [`handle_input`](Link::handle_input), which decodes in place. After
    /// `Some(Ok(_))`, call [`decode_buffered`](Link::decode_buffered).
    pub(crate) fn read_with(
        &mut self,
        pool: &mut Pool,
        now: Instant,
        read: impl FnOnce(&mut [u8]) -> std::io::Result<usize>,
    ) -> Option<std::io::Result<usize>> {
        if self.rx.is_empty() || matches!(self.state, State::Lingering { .. }) {
            return None;
        }
        // The frame's length sizes the read only while that frame is still
        // incomplete: with decoding paused, complete frames may be waiting,
        // and a read sized by one of them would be a byte at a time.
        let frame_len = self.rx_frame_len.filter(|f| *f > self.rx.len());
        // At most as much again as is buffered (and at least MIN_READ): a
        // peer that claims a large frame and trickles it gets a buffer that
        // follows what it sent, not its claim or our read size.
        let want = frame_len.map_or(READ_CHUNK, |f| f - self.rx.len()).min(READ_CHUNK).min(self.rx.len().max(MIN_READ));
        pool.fill_rx(&mut self.rx);
        let result = read(self.rx.spare(want, frame_len));
        let n = *result.as_ref().unwrap_or(&0);
        self.rx.commit(n);
        if n > 0 {
            self.count_in(n, now);
        }
        Some(result)
    }

    fn count_in(&mut self, n: usize, now: Instant) {
        self.answered |= self.bytes_in == 0 && self.direction == Direction::Outbound;
        self.bytes_in += n as u64;
        self.last_recv = Some(now);
    }

    /// True once, after the first bytes of an outbound connection arrived:
    /// tell the codec factory its codec was answered.
    pub(crate) fn poll_answered(&mut self) -> Option<(&Target, &C)> {
        let target = &self.out.as_deref()?.target;
        std::mem::take(&mut self.answered).then_some((target, &self.codec))
    }

    /// Bytes that arrived while nothing was buffered: decoded straight from
    /// `data`, and what is left of an incomplete frame is kept.
    pub(crate) fn handle_input<E: Sink<P>>(&mut self, data: &[u8], cx: &mut Ctx<'_, P, E>) -> Result<(), Reason<P>> {
        if self.state == State::Proxying {
            return self.proxy_input(data, cx);
        }
        self.count_in(data.len(), cx.now);
        if matches!(self.state, State::Lingering { .. }) {
            return Ok(());
        }
        if !self.rx.is_empty() {
            self.rx.extend(data);
            return self.decode_buffered(cx);
        }
        let used = self.decode(data, cx);
        let used = self.after_decode(used, cx)?;
        if used < data.len() {
            cx.pool.fill_rx(&mut self.rx);
            self.rx.extend(&data[used..]);
        }
        self.arm_frame_timer(cx);
        Ok(())
    }

    /// The proxy's bytes during the SOCKS5 handshake. Once the proxy has
    /// connected, the bytes after its reply are the peer's first.
    fn proxy_input<E: Sink<P>>(&mut self, data: &[u8], cx: &mut Ctx<'_, P, E>) -> Result<(), Reason<P>> {
        let Some(out) = self.out.as_deref_mut() else { return Ok(()) };
        let Some(tunnel) = &mut out.tunnel else { return Ok(()) };
        match tunnel.handshake.handle_input(data) {
            Ok(crate::socks5::Progress::Pending) => Ok(()),
            Ok(crate::socks5::Progress::Connected { bound }) => {
                log::debug!("peer {}: proxy {} connected to {} (bound {bound})", self.id, tunnel.proxy, out.target);
                let leftover = tunnel.handshake.take_leftover();
                // A proxy that answered ahead of our request: what is still
                // owed to it goes first, so the stream stays in order.
                let owed = tunnel.handshake.poll_transmit();
                if !owed.is_empty() {
                    out.proxy_owed = owed.len();
                    self.tx.splice(self.tx_pos..self.tx_pos, owed.iter().copied());
                }
                out.tunnel = None;
                self.transport_up(cx);
                if leftover.is_empty() { Ok(()) } else { self.handle_input(&leftover, cx) }
            }
            // The handshake keeps the failure for `close`.
            Err(_) => Err(DisconnectReason::PeerClosed),
        }
    }

    /// Decodes what this link has buffered (a previous round may have
    /// stopped early because the user was behind).
    /// After the peer closed its side, `Err(PeerClosed)` once nothing
    /// decodable is left.
    pub(crate) fn decode_buffered<E: Sink<P>>(&mut self, cx: &mut Ctx<'_, P, E>) -> Result<(), Reason<P>> {
        if !self.rx.is_empty() && !matches!(self.state, State::Lingering { .. }) {
            let rx = std::mem::take(&mut self.rx);
            let used = self.decode(rx.data(), cx);
            self.rx = rx;
            let used = self.after_decode(used, cx)?;
            self.rx.consume(used);
            if self.rx.is_empty() && self.rx.capacity() > KEEP_BUFFER {
                cx.pool.put_memory(self.rx.take_memory());
            }
            self.arm_frame_timer(cx);
        }
        if self.peer_closed && !self.decode_paused && !cx.events.paused() {
            return Err(DisconnectReason::PeerClosed);
        }
        Ok(())
    }

    /// Housekeeping after a decode pass: protocol deadline, held messages,
    /// send-queue state. Passes the decode result through.
    fn after_decode<E: Sink<P>>(
        &mut self,
        used: Result<usize, Reason<P>>,
        cx: &mut Ctx<'_, P, E>,
    ) -> Result<usize, Reason<P>> {
        let used = used?;
        self.schedule_protocol(cx);
        self.flush_held(cx);
        self.mark_full(cx.limits);
        Ok(used)
    }

    /// A frame is under way since now, unless one already was.
    fn arm_frame_timer<E: Sink<P>>(&mut self, cx: &mut Ctx<'_, P, E>) {
        if self.rx.is_empty() {
            self.rx_frame_len = None;
            self.timers.clear(Timer::Frame);
        } else if self.timers.get(Timer::Frame).is_none() {
            self.timers.set(Timer::Frame, later(cx.now, cx.limits.frame_timeout));
        }
    }

    /// Decodes every complete frame in `buf` (stopping early if the user is
    /// behind or our answers filled the send queue), runs each message
    /// through the protocol layer, and returns the bytes used.
    fn decode<E: Sink<P>>(&mut self, buf: &[u8], cx: &mut Ctx<'_, P, E>) -> Result<usize, Reason<P>> {
        let mut used = 0;
        while !cx.events.paused() && used < buf.len() && self.may_decode(cx.limits) {
            if self.queued() == 0 {
                // Bytes the codec may queue (a handshake reply) start the stall clock.
                self.timers.set(Timer::Stall, later(cx.now, cx.limits.stall_timeout));
            }
            let result = self.codec.decode(&buf[used..], &mut self.tx);
            if self.queued() == 0 {
                self.timers.clear(Timer::Stall);
            }
            // A raw-mode peer is announced the moment its transport is up,
            // before any message that came in the same read.
            self.maybe_announce(cx);
            match result.map_err(DisconnectReason::Codec)? {
                Decoded::NeedMore { frame_len } => {
                    self.rx_frame_len = frame_len;
                    break;
                }
                Decoded::Message { message, consumed } => {
                    used += consumed;
                    self.rx_frame_len = None;
                    self.timers.clear(Timer::Frame);
                    self.msgs_in += 1;
                    let delivered = cx
                        .proto
                        .received(&mut self.proto, message, consumed, cx.now, cx.proto_out)
                        .map_err(DisconnectReason::Protocol)?;
                    self.queue_protocol(cx)?;
                    self.check_ready(cx);
                    if let Some(message) = delivered {
                        self.deliver(message, consumed, cx);
                    }
                }
                Decoded::Consumed(consumed) => {
                    used += consumed.clamp(1, buf.len() - used);
                    self.timers.clear(Timer::Frame);
                }
            }
        }
        self.decode_paused = used < buf.len() && !self.may_decode(cx.limits);
        Ok(used)
    }

    /// Session mode: announce the peer once the protocol says it is ready.
    fn check_ready<E: Sink<P>>(&mut self, cx: &mut Ctx<'_, P, E>) {
        if self.state != State::Handshake || !cx.proto.take_ready(&mut self.proto) {
            return;
        }
        self.state = State::Ready;
        let info = Box::new(self.info(cx.proto));
        cx.events.emit(Event::Ready { peer: self.id, info });
        // Session messages forwarded before Ready follow it.
        for (message, wire_size) in self.before_ready.drain(..) {
            cx.events.emit(Event::Message { peer: self.id, message, wire_size });
        }
    }

    fn deliver<E: Sink<P>>(&mut self, message: Msg<P>, wire_size: usize, cx: &mut Ctx<'_, P, E>) {
        if self.state == State::Ready {
            cx.events.emit(Event::Message { peer: self.id, message, wire_size });
        } else if self.before_ready.len() < MAX_BEFORE_READY {
            self.before_ready.push((message, wire_size));
        } else {
            log::debug!("peer {}: dropping a forwarded message before the handshake", self.id);
        }
    }

    /// Fires every timer due at `now`. `Err` closes the link with that
    /// reason; `Ok` if it lives on.
    pub(crate) fn handle_timeout<E: Sink<P>>(&mut self, cx: &mut Ctx<'_, P, E>) -> Result<(), End<P::Stack>> {
        while let Some(timer) = self.timers.pop_expired(cx.now) {
            match timer {
                Timer::Connect => return Err(End::ConnectTimeout),
                Timer::Stall => {
                    let (queued, timeout) = (self.queued(), cx.limits.stall_timeout);
                    return Err(DisconnectReason::SendStalled { queued, timeout }.into());
                }
                Timer::Frame => {
                    let (received, timeout) = (self.rx.len(), cx.limits.frame_timeout);
                    return Err(DisconnectReason::FrameTimeout { received, timeout }.into());
                }
                Timer::Handshake => return Err(DisconnectReason::TransportTimeout(cx.limits.handshake_timeout).into()),
                Timer::Linger => return Err(DisconnectReason::Flushed.into()),
                Timer::Protocol => {
                    cx.proto.tick(&mut self.proto, cx.now, cx.proto_out).map_err(DisconnectReason::Protocol)?;
                    self.queue_protocol(cx)?;
                    self.schedule_protocol(cx);
                }
            }
        }
        Ok(())
    }

    /// Ends the link: either reported (held messages handed back, then
    /// `ConnectFailed` or `Disconnected`), or, for an outbound connection
    /// the factory wants retried, a codec to reconnect with.
    pub(crate) fn close<F, E>(
        mut self,
        end: End<P::Stack>,
        factory: &mut F,
        cx: &mut Ctx<'_, P, E>,
    ) -> Closed<C, Msg<P>>
    where
        F: Factory<Codec = C>,
        E: Sink<P>,
    {
        cx.proto.closed(&self.proto);
        let reason = match (self.state, end) {
            (State::Connecting | State::Proxying, end) => {
                let error = self.connect_error(end, cx.limits.connect_timeout);
                let target = self.target();
                if let ConnectError::Io(e) = &error
                    && let Some(out) = self.out.as_deref_mut().filter(|out| cx.now < out.deadline)
                    && let Some(addr) = out.rest.pop()
                {
                    log::debug!("peer {}: {} ({target}) failed: {e}; trying {addr}", self.id, self.remote);
                    let rest = std::mem::take(&mut out.rest);
                    let dial = Dial { target, deadline: out.deadline, rest, tunnel: None };
                    return Closed::Next { addr, dial, held: self.held, after_flush: self.after_flush };
                }
                self.hand_back_held(cx);
                cx.events.emit(Event::ConnectFailed { peer: self.id, target, error });
                return Closed::Reported;
            }
            (_, End::Reason(reason)) => reason,
            // The connect timer is cleared once connected.
            (_, End::ConnectTimeout) => DisconnectReason::TransportTimeout(cx.limits.connect_timeout),
        };
        let silent_close = matches!(
            reason,
            DisconnectReason::PeerClosed
                | DisconnectReason::Io(_)
                | DisconnectReason::Protocol(_)
                | DisconnectReason::TransportTimeout(_)
        );
        if self.direction == Direction::Outbound && !matches!(self.state, State::Lingering { .. }) {
            let ended = Ended { codec: &self.codec, bytes_in: self.bytes_in, bytes_out: self.bytes_out, silent_close };
            if let Some(codec) = factory.retry(&self.target(), &ended) {
                let held = std::mem::take(&mut self.held);
                return Closed::Retry { codec, held, after_flush: self.after_flush };
            }
        }
        self.hand_back_held(cx);
        log::debug!("peer {} ({} {}) disconnected: {}", self.id, self.direction, self.remote, Report(&reason));
        cx.events.emit(Event::Disconnected { peer: self.id, reason });
        Closed::Reported
    }

    /// Why a connection that never reached the peer failed. Through a
    /// proxy the error names the proxy and the stage.
    fn connect_error(&mut self, end: End<P::Stack>, timeout: std::time::Duration) -> ConnectError {
        // Banned while connecting (Handle::ban): say so, as a new connect would.
        if matches!(end, End::Reason(DisconnectReason::Banned))
            && let Some(addr) = self.peer_ip()
        {
            return ConnectError::Banned { addr };
        }
        #[cfg(feature = "socks")]
        if let Some(tunnel) = self.tunnel() {
            use crate::socks5::{ProxyError, ProxyFailure, Socks5Error};
            let stage = (self.state == State::Proxying).then(|| tunnel.handshake.stage());
            let kind = match end {
                End::ConnectTimeout => ProxyFailure::Timeout { stage, after: timeout },
                End::Reason(DisconnectReason::Io(e)) => ProxyFailure::Io(e),
                End::Reason(DisconnectReason::PeerClosed) => ProxyFailure::Socks5(
                    tunnel.handshake.failure().cloned().unwrap_or(Socks5Error::Closed(tunnel.handshake.stage())),
                ),
                End::Reason(_) => return ConnectError::Cancelled,
            };
            return ConnectError::Proxy(ProxyError { proxy: tunnel.proxy, kind });
        }
        match end {
            End::ConnectTimeout => ConnectError::Timeout(timeout),
            End::Reason(DisconnectReason::Io(e)) => ConnectError::Io(e),
            End::Reason(_) => ConnectError::Cancelled,
        }
    }

    /// Messages accepted by `send` but never encoded go back to the user.
    fn hand_back_held<E: Sink<P>>(&mut self, cx: &mut Ctx<'_, P, E>) {
        for message in self.held.drain(..) {
            cx.events.emit(Event::SendRejected { peer: self.id, message, reason: SendError::Disconnected });
        }
    }

    pub(crate) fn info(&self, proto: &P) -> Info<P> {
        let link = LinkInfo {
            peer: self.id,
            addr: self.remote,
            target: self.target(),
            proxy: self.proxy(),
            local_addr: self.local,
            direction: self.direction,
            transport: self.codec.transport(),
        };
        proto.info(&self.proto, link)
    }

    /// Whether the user has been told about this peer.
    pub(crate) fn announced(&self) -> bool {
        matches!(self.state, State::Ready | State::Lingering { announced: true })
    }

    pub(crate) fn stats(&self, proto: &P) -> PeerStats {
        let mut stats = PeerStats {
            peer: self.id,
            connected_at: self.connected_at,
            last_send: self.last_send,
            last_recv: self.last_recv,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            msgs_in: self.msgs_in,
            msgs_out: self.msgs_out,
            per_command: Vec::new(),
            last_ping: None,
            min_ping: None,
            send_queue: self.queued(),
        };
        proto.stats(&self.proto, &mut stats);
        stats
    }

    /// What was dialled; an inbound peer's address.
    pub(crate) fn target(&self) -> Target {
        self.out.as_ref().map_or(Target::Socket(self.remote), |out| out.target.clone())
    }

    /// The peer's own address: the TCP peer's, or through a proxy the
    /// target's if it is an address (`None` for names and onions).
    pub(crate) fn peer_ip(&self) -> Option<std::net::IpAddr> {
        match self.out.as_deref() {
            Some(out) if out.proxy.is_some() => match &out.target {
                Target::Socket(addr) => Some(addr.ip()),
                _ => None,
            },
            _ => Some(self.remote.ip()),
        }
    }

    /// The proxy this connection goes through.
    pub(crate) fn proxy(&self) -> Option<SocketAddr> {
        self.out.as_ref()?.proxy
    }

    fn tunnel(&self) -> Option<&Tunnel> {
        self.out.as_ref()?.tunnel.as_ref()
    }

    fn tunnel_mut(&mut self) -> Option<&mut Tunnel> {
        self.out.as_mut()?.tunnel.as_mut()
    }

    /// The gate shared with the handles.
    pub(crate) fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }
}
