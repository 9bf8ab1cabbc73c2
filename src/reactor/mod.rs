//! The mio reactor: one thread that owns every socket.
//!
//! Each round: dispatch readiness, accept, read (decode) with a per-peer byte
//! budget, apply user commands (encode), write with a per-peer budget, fire
//! timers, then sleep in `poll` until the next deadline. Readiness is
//! edge-triggered, so a peer whose budget ran out goes back on a queue and is
//! served next round with a zero poll timeout.

mod conn;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use self::conn::{Conn, Outbox, State, decode_all};
use crate::codec::{Codec, Start};
use crate::config::Config;
use crate::error::StartError;
use crate::event::{ConnectError, Direction, DisconnectReason, Event, PeerId, SendError};
use crate::handle::{Cmd, Disconnect, Handle, Query, Shared};
use crate::protocol::{Link, Passthrough, Protocol};
use crate::session::later;

/// Size of one read from a socket (Bitcoin Core reads 64 KiB per round).
const READ_CHUNK: usize = 64 * 1024;
/// Back-off after accept fails with EMFILE or ENFILE.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Connections accepted per listener per round.
const ACCEPT_BUDGET: usize = 256;
/// How long a flushed connection waits for the peer to close before we
/// close it ourselves.
const LINGER: Duration = Duration::from_secs(2);
/// Most events sent to the user in one batch.
pub(crate) const EVENT_BATCH: usize = 256;
/// Commands applied per round before sockets are served again.
const COMMAND_BUDGET: usize = 4096;
/// Buffers at most this large are kept when they empty; larger ones are freed
/// so that idle peers cost little memory.
const KEEP_BUFFER: usize = 4 * 1024;
/// Large buffers freed by idle peers are kept for reuse, up to this many, so
/// that a busy peer does not reallocate (and fault in) a buffer per frame.
const POOL_BUFFERS: usize = 8;

/// Addresses of peers that answered a v2 handshake with silence; the next
/// connection to them goes straight to v1. Bounded, oldest evicted first.
#[derive(Default)]
struct V1Cache {
    set: std::collections::HashSet<SocketAddr>,
    order: VecDeque<SocketAddr>,
}

/// Entries in the v1-only peer cache.
const V1_CACHE_LEN: usize = 1024;

impl V1Cache {
    fn contains(&self, addr: &SocketAddr) -> bool {
        self.set.contains(addr)
    }

    fn insert(&mut self, addr: SocketAddr) {
        if self.set.insert(addr) {
            self.order.push_back(addr);
            if self.order.len() > V1_CACHE_LEN
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }
}

/// A small stack of spare buffers shared by all connections.
#[derive(Default)]
struct Pool(Vec<Vec<u8>>);

impl Pool {
    /// Returns `buf`'s allocation to the pool (or frees it) and leaves `buf`
    /// empty without capacity.
    fn put(&mut self, buf: &mut Vec<u8>) {
        let mut b = std::mem::take(buf);
        if self.0.len() < POOL_BUFFERS {
            b.clear();
            self.0.push(b);
        }
    }

    /// Gives `buf` a pooled allocation if it has none.
    fn fill(&mut self, buf: &mut Vec<u8>) {
        if buf.capacity() == 0
            && let Some(b) = self.0.pop()
        {
            *buf = b;
        }
    }
}

const WAKER: Token = Token(usize::MAX);
const fn listener_token(i: usize) -> Token {
    Token(usize::MAX - 1 - i)
}

/// Hasher for peer ids, which are already unique integers.
#[derive(Default)]
struct IdHasher(u64);
impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8 | u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}
type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Connect(u64),
    Stall(u64),
    Frame(u64),
    Proto(u64),
    /// The transport handshake (BIP324) must be done by then.
    Transport(u64),
    /// End of the linger after a flushed disconnect.
    Linger(u64),
    Accept(usize),
}

struct Listener {
    socket: TcpListener,
    pending: bool,
    backoff_until: Option<Instant>,
}

/// Starts a reactor thread with `codec` as the prototype for every
/// connection, in raw mode: every decoded message is delivered and peers are
/// announced with [`Event::Connected`]. Listeners are bound before this
/// returns, so bind errors and bound addresses are known at once.
pub fn start_with_codec<C: Codec>(config: Config, codec: C) -> Result<Handle<C>, StartError> {
    spawn(config, codec, |_| Passthrough::new())
}

pub(crate) fn spawn<C: Codec, P: Protocol<Message = C::Message>>(
    config: Config,
    codec: C,
    protocol: impl FnOnce(&Arc<Shared>) -> P,
) -> Result<Handle<C>, StartError> {
    let poll = Poll::new().map_err(StartError::Poll)?;
    let waker = Waker::new(poll.registry(), WAKER).map_err(StartError::Poll)?;
    let mut listeners = Vec::new();
    let mut local_addrs = Vec::new();
    for (i, addr) in config.listen.iter().enumerate() {
        let mut socket = TcpListener::bind(*addr).map_err(|source| StartError::Bind { addr: *addr, source })?;
        let local = socket.local_addr().map_err(|source| StartError::Bind { addr: *addr, source })?;
        poll.registry().register(&mut socket, listener_token(i), Interest::READABLE).map_err(StartError::Poll)?;
        listeners.push(Listener { socket, pending: true, backoff_until: None });
        local_addrs.push(local);
    }
    let shared = Arc::new(Shared {
        waker,
        sleeping: AtomicBool::new(false),
        events_blocked: AtomicBool::new(false),
        shutdown: AtomicBool::new(false),
        next_peer: AtomicU64::new(1),
        start_height: AtomicI32::new(config.start_height),
        gates: Default::default(),
        max_in_flight: config.max_in_flight,
        async_waiting: AtomicBool::new(false),
        async_wakers: Default::default(),
    });
    let protocol = protocol(&shared);
    let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
    // Capacity in events, as configured: batches of up to EVENT_BATCH events.
    let batch_max = config.event_capacity.clamp(1, EVENT_BATCH);
    let (ev_tx, ev_rx) = crossbeam_channel::bounded((config.event_capacity / batch_max).max(1));
    let reactor = Reactor {
        poll,
        listeners,
        conns: IdMap::default(),
        codec,
        protocol,
        proto_out: Vec::new(),
        cmd_rx,
        out: Outbox { tx: ev_tx, batch: Vec::new(), batch_max, overflow: VecDeque::new(), shared: Arc::clone(&shared) },
        shared: Arc::clone(&shared),
        scratch: vec![0; READ_CHUNK],
        read_queue: VecDeque::new(),
        write_queue: VecDeque::new(),
        timers: BinaryHeap::new(),
        now: Instant::now(),
        config,
        pool: Pool::default(),
        rng: crate::rng::Rng::from_os(),
        v1_peers: V1Cache::default(),
        inbound: 0,
    };
    let thread = std::thread::Builder::new()
        .name("peerlink-reactor".into())
        .spawn(move || reactor.run())
        .map_err(StartError::Thread)?;
    Ok(Handle::new(cmd_tx, ev_rx, shared, thread, local_addrs))
}

struct Reactor<C: Codec, P: Protocol<Message = C::Message>> {
    poll: Poll,
    listeners: Vec<Listener>,
    conns: IdMap<Conn<C, P::Conn>>,
    codec: C,
    protocol: P,
    /// Scratch list for messages the protocol layer wants sent.
    proto_out: Vec<C::Message>,
    cmd_rx: Receiver<Cmd<C::Message>>,
    out: Outbox<C::Message, C::Error>,
    shared: Arc<Shared>,
    scratch: Vec<u8>,
    read_queue: VecDeque<u64>,
    write_queue: VecDeque<u64>,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    now: Instant,
    config: Config,
    pool: Pool,
    rng: crate::rng::Rng,
    /// Peers that only speak v1 (BIP324 fallback), bounded.
    v1_peers: V1Cache,
    /// Live inbound connections.
    inbound: usize,
}

impl<C: Codec, P: Protocol<Message = C::Message>> Reactor<C, P> {
    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            if self.shared.shutdown.load(Ordering::SeqCst) {
                break;
            }
            self.now = Instant::now();
            self.out.flush();
            self.accept_pending();
            self.serve_reads();
            // What the reads produced goes to the user before we turn to
            // commands and writes.
            self.out.send_batch();
            self.apply_commands();
            self.serve_writes();
            self.fire_timers();
            self.out.send_batch();
            self.shared.wake_async();

            let accept_ready = self.listeners.iter().any(|l| l.pending && l.backoff_until.is_none());
            let busy =
                !self.write_queue.is_empty() || (!self.out.paused() && (!self.read_queue.is_empty() || accept_ready));
            let mut timeout = if busy { Some(Duration::ZERO) } else { self.next_deadline() };
            if timeout != Some(Duration::ZERO) {
                self.shared.sleeping.store(true, Ordering::SeqCst);
                // Re-check after announcing sleep: a command sent before the
                // flag was visible would otherwise wait for the timeout.
                if !self.cmd_rx.is_empty()
                    || self.shared.shutdown.load(Ordering::SeqCst)
                    || (self.out.paused() && !self.out.tx.is_full())
                {
                    timeout = Some(Duration::ZERO);
                }
            }
            let polled = self.poll.poll(&mut events, timeout);
            self.shared.sleeping.store(false, Ordering::SeqCst);
            if let Err(e) = polled {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("poll failed, stopping reactor: {e}");
                break;
            }
            self.now = Instant::now();
            for event in events.iter() {
                self.dispatch(event);
            }
        }
        log::debug!("reactor stopping with {} peers", self.conns.len());
        for (_, mut conn) in self.conns.drain() {
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
        // Deliver what this round produced, then let async receivers see the
        // end of the stream.
        self.out.send_batch();
        drop(self.out);
        self.shared.async_waiting.store(true, Ordering::SeqCst);
        self.shared.wake_async();
    }

    fn next_deadline(&self) -> Option<Duration> {
        self.timers.peek().map(|Reverse((at, _))| at.saturating_duration_since(self.now))
    }

    fn dispatch(&mut self, event: &mio::event::Event) {
        let token = event.token();
        if token == WAKER {
            return;
        }
        if token.0 >= usize::MAX - self.listeners.len() {
            let i = usize::MAX - 1 - token.0;
            self.listeners[i].pending = true;
            return;
        }
        let id = token.0 as u64;
        // Ids are never reused: an event for a closed peer finds nothing.
        let Some(conn) = self.conns.get_mut(&id) else { return };
        if conn.state == State::Connecting {
            if event.is_writable() || event.is_error() || event.is_write_closed() || event.is_read_closed() {
                self.finish_connect(id);
            }
            return;
        }
        if (event.is_readable() || event.is_read_closed() || event.is_error()) && !conn.in_read_queue {
            conn.in_read_queue = true;
            self.read_queue.push_back(id);
        }
        if event.is_writable() || event.is_error() {
            conn.writable = true;
            if conn.queued() > 0 && !conn.in_write_queue {
                conn.in_write_queue = true;
                self.write_queue.push_back(id);
            }
        }
    }

    fn finish_connect(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        let result = match conn.stream.take_error() {
            Ok(Some(e)) | Err(e) => Err(e),
            Ok(None) => match conn.stream.peer_addr() {
                Ok(_) => Ok(()),
                // Spurious readiness: still connecting.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) if e.raw_os_error() == Some(115) => return, // EINPROGRESS
                Err(e) => Err(e),
            },
        };
        if let Err(e) = result {
            self.close(id, DisconnectReason::Io(e));
            return;
        }
        let _ = conn.stream.set_nodelay(true);
        let local = conn.stream.local_addr().unwrap_or(conn.addr);
        conn.local = Some(local);
        conn.state = State::Open;
        conn.writable = true;
        conn.in_read_queue = true;
        self.read_queue.push_back(id);
        if conn.queued() > 0 && !conn.in_write_queue {
            conn.in_write_queue = true;
            self.write_queue.push_back(id);
        }
        let flushed = conn.closing && conn.queued() == 0 && conn.held.is_empty();
        self.maybe_announce(id);
        if flushed {
            self.start_linger(id);
        }
    }

    fn accept_pending(&mut self) {
        for i in 0..self.listeners.len() {
            let l = &self.listeners[i];
            if l.pending && l.backoff_until.is_none() {
                self.accept(i);
            }
        }
    }

    fn accept(&mut self, i: usize) {
        for _ in 0..ACCEPT_BUDGET {
            // Each accept may produce an event; wait while the user is behind.
            if self.out.paused() {
                return;
            }
            match self.listeners[i].socket.accept() {
                Ok((mut stream, remote)) => {
                    if self.inbound >= self.config.max_inbound {
                        log::debug!("refusing {remote}: {} inbound peers (the maximum)", self.inbound);
                        drop(stream);
                        continue;
                    }
                    let (id, gate) = self.shared.allocate_peer();
                    let _ = stream.set_nodelay(true);
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if let Err(e) = self.poll.registry().register(&mut stream, Token(id.0 as usize), interest) {
                        log::warn!("cannot register accepted socket from {remote}: {e}");
                        self.shared.remove_gate(id);
                        continue;
                    }
                    let local = stream.local_addr().ok();
                    let codec = self.codec.clone();
                    let held = VecDeque::new();
                    if let Err(e) =
                        self.insert_conn(id, stream, Direction::Inbound, remote, State::Open, gate, codec, held)
                    {
                        log::debug!("cannot start connection from {remote}: {}", e);
                        self.shared.remove_gate(id);
                        continue;
                    }
                    if let Some(conn) = self.conns.get_mut(&id.0) {
                        conn.local = local;
                    }
                    self.inbound += 1;
                    self.maybe_announce(id.0);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.listeners[i].pending = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.raw_os_error(), Some(23 | 24)) => {
                    // ENFILE / EMFILE: leave the connection in the backlog and
                    // retry later instead of spinning on a readiness that
                    // cannot be cleared.
                    log::warn!("accept: {e}; retrying in {} ms", ACCEPT_BACKOFF.as_millis());
                    let until = self.now + ACCEPT_BACKOFF;
                    self.listeners[i].backoff_until = Some(until);
                    self.timers.push(Reverse((until, Timer::Accept(i))));
                    return;
                }
                // The connection was gone before we took it: that one only.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => log::debug!("accept: {e}"),
                // Anything else (ENOBUFS, ENOMEM, EPERM...) would fail again at
                // once: back off rather than spin.
                Err(e) => {
                    log::warn!("accept: {e}; retrying in {} ms", ACCEPT_BACKOFF.as_millis());
                    let until = self.now + ACCEPT_BACKOFF;
                    self.listeners[i].backoff_until = Some(until);
                    self.timers.push(Reverse((until, Timer::Accept(i))));
                    return;
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments, reason = "every argument is one field of the new connection")]
    fn insert_conn(
        &mut self,
        id: PeerId,
        stream: TcpStream,
        direction: Direction,
        addr: SocketAddr,
        state: State,
        gate: Arc<crate::handle::Gate>,
        mut codec: C,
        held: VecDeque<C::Message>,
    ) -> Result<(), DisconnectReason<C::Error>> {
        let mut tx = Vec::new();
        let start = Start::new(direction == Direction::Outbound, self.rng.bytes32());
        codec.start(&start, &mut tx).map_err(DisconnectReason::Codec)?;
        let proto = self.protocol.open(&Link { direction, remote: addr }, self.now, &mut self.proto_out);
        let mut conn = Conn::new(id, stream, codec, proto, state, direction, addr, gate, self.now);
        conn.tx = tx;
        conn.held = held;
        if let Err(e) = conn.queue_protocol(&mut self.protocol, &mut self.proto_out, self.now) {
            self.protocol.closed(&conn.proto);
            return Err(e);
        }
        if state == State::Open {
            conn.writable = true;
            conn.in_read_queue = true;
            self.read_queue.push_back(id.0);
            if conn.queued() > 0 {
                conn.in_write_queue = true;
                self.write_queue.push_back(id.0);
            }
        }
        let has_tx = conn.queued() > 0;
        let handshaking = !conn.codec.is_established();
        self.conns.insert(id.0, conn);
        if handshaking {
            let at = later(self.now, self.config.session.handshake_timeout);
            self.timers.push(Reverse((at, Timer::Transport(id.0))));
        }
        if has_tx {
            self.arm_stall(id.0);
        }
        self.schedule_proto(id.0);
        Ok(())
    }

    /// Sends our FIN, then reads and discards until the peer closes (or
    /// [`LINGER`] passes): closing with unread input would reset the
    /// connection and could destroy what we just sent.
    fn start_linger(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        if conn.lingering {
            return;
        }
        let _ = conn.stream.shutdown(Shutdown::Write);
        conn.lingering = true;
        if !conn.in_read_queue {
            conn.in_read_queue = true;
            self.read_queue.push_back(id);
        }
        self.timers.push(Reverse((later(self.now, LINGER), Timer::Linger(id))));
    }

    /// Drops timers of closed connections once they outnumber the live ones,
    /// so connection churn cannot grow the heap.
    fn compact_timers(&mut self) {
        if self.timers.len() <= 4 * self.conns.len() + 4096 {
            return;
        }
        let conns = &self.conns;
        self.timers.retain(|Reverse((_, timer))| match timer {
            Timer::Accept(_) => true,
            Timer::Connect(id)
            | Timer::Stall(id)
            | Timer::Frame(id)
            | Timer::Proto(id)
            | Timer::Transport(id)
            | Timer::Linger(id) => conns.contains_key(id),
        });
    }

    /// Announces a raw-mode peer once its transport is established.
    fn maybe_announce(&mut self, id: u64) {
        if !self.protocol.announce_on_connect() {
            return;
        }
        let Some(conn) = self.conns.get_mut(&id) else { return };
        if conn.announced || conn.state != State::Open || !conn.codec.is_established() {
            return;
        }
        conn.announced = true;
        let (peer, direction, remote) = (conn.id, conn.direction, conn.addr);
        let local = conn.local.unwrap_or(remote);
        self.out.emit(Event::Connected { peer, direction, local, remote });
        self.flush_held(id);
    }

    /// Encodes held user messages, in order, while there is room.
    fn flush_held(&mut self, id: u64) {
        let limit = self.config.send_buffer_limit;
        loop {
            let Some(conn) = self.conns.get_mut(&id) else { return };
            if !conn.announced || conn.queued() > limit {
                return;
            }
            let Some(message) = conn.held.pop_front() else { return };
            let peer = conn.id;
            self.encode_user(peer, message);
        }
    }

    /// Makes sure a timer is pending for the protocol layer's next deadline.
    fn schedule_proto(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        let Some(at) = self.protocol.deadline(&conn.proto) else { return };
        if conn.proto_timer.is_none_or(|t| at < t) {
            conn.proto_timer = Some(at);
            self.timers.push(Reverse((at, Timer::Proto(id))));
        }
    }

    fn apply_commands(&mut self) {
        for _ in 0..COMMAND_BUDGET {
            match self.cmd_rx.try_recv() {
                Ok(Cmd::Send { peer, message }) => self.send(peer, message),
                Ok(Cmd::Connect { peer, addr, gate }) => {
                    let codec = match self.v1_peers.contains(&addr) {
                        true => self.codec.fallback().unwrap_or_else(|| self.codec.clone()),
                        false => self.codec.clone(),
                    };
                    self.connect(peer, addr, gate, codec, VecDeque::new())
                }
                Ok(Cmd::Disconnect { peer, mode }) => self.disconnect(peer, mode),
                Ok(Cmd::Query(query)) => self.answer(query),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.shared.shutdown.store(true, Ordering::SeqCst);
                    return;
                }
            }
        }
    }

    fn answer(&mut self, query: Query) {
        // A dropped reply channel means the asker gave up; nothing to do.
        match query {
            Query::Peers(reply) => {
                let mut peers: Vec<_> = self
                    .conns
                    .values()
                    .filter(|c| c.announced && c.state != State::Connecting)
                    .map(|c| c.info(&self.protocol))
                    .collect();
                peers.sort_by_key(|p| p.peer);
                let _ = reply.send(peers);
            }
            Query::Info(peer, reply) => {
                let _ = reply.send(self.conns.get(&peer.0).map(|c| c.info(&self.protocol)));
            }
            Query::Stats(peer, reply) => {
                let _ = reply.send(self.conns.get(&peer.0).map(|c| c.stats(&self.protocol)));
            }
        }
    }

    fn disconnect(&mut self, peer: PeerId, mode: Disconnect) {
        match mode {
            Disconnect::Now => self.close(peer.0, DisconnectReason::Requested),
            Disconnect::AfterFlush => {
                if let Some(conn) = self.conns.get_mut(&peer.0) {
                    conn.closing = true;
                    if conn.queued() == 0 && conn.held.is_empty() && conn.state == State::Open {
                        self.start_linger(peer.0);
                    }
                }
            }
        }
    }

    fn connect(
        &mut self,
        peer: PeerId,
        addr: SocketAddr,
        gate: Arc<crate::handle::Gate>,
        codec: C,
        held: VecDeque<C::Message>,
    ) {
        let mut stream = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => {
                self.shared.remove_gate(peer);
                self.out.emit(Event::ConnectFailed { peer, addr, error: ConnectError::Io(e) });
                return;
            }
        };
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self.poll.registry().register(&mut stream, Token(peer.0 as usize), interest) {
            self.shared.remove_gate(peer);
            self.out.emit(Event::ConnectFailed { peer, addr, error: ConnectError::Io(e) });
            return;
        }
        if let Err(e) = self.insert_conn(peer, stream, Direction::Outbound, addr, State::Connecting, gate, codec, held)
        {
            self.shared.remove_gate(peer);
            let error = io::Error::other(format!("cannot start connection: {}", e));
            self.out.emit(Event::ConnectFailed { peer, addr, error: ConnectError::Io(error) });
            return;
        }
        let at = later(self.now, self.config.connect_timeout);
        if let Some(conn) = self.conns.get_mut(&peer.0) {
            conn.connect_deadline = Some(at);
        }
        self.timers.push(Reverse((at, Timer::Connect(peer.0))));
    }

    fn send(&mut self, peer: PeerId, message: C::Message) {
        let limit = self.config.send_buffer_limit;
        let Some(conn) = self.conns.get_mut(&peer.0) else {
            self.out.emit(Event::SendRejected { peer, message, reason: SendError::UnknownPeer });
            return;
        };
        if conn.closing {
            conn.gate.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.out.emit(Event::SendRejected { peer, message, reason: SendError::Closing });
            return;
        }
        if conn.queued() > limit || !conn.held.is_empty() || !conn.announced {
            // Over the limit, or the peer is not announced yet (a transport
            // or session handshake is running): hold the message, in order.
            // The in-flight cap bounds how many can wait here.
            conn.held.push_back(message);
            return;
        }
        self.encode_user(peer, message);
    }

    /// Encodes one user message into the peer's send buffer.
    fn encode_user(&mut self, peer: PeerId, message: C::Message) {
        let limit = self.config.send_buffer_limit;
        let Some(conn) = self.conns.get_mut(&peer.0) else { return };
        conn.gate.in_flight.fetch_sub(1, Ordering::SeqCst);
        let queued = conn.queued();
        if conn.tx_pos > 0 && conn.tx_pos >= conn.tx.len() / 2 {
            conn.tx.drain(..conn.tx_pos);
            conn.tx_pos = 0;
        }
        self.pool.fill(&mut conn.tx);
        let before = conn.tx.len();
        if let Err(e) = conn.codec.encode(&message, &mut conn.tx) {
            self.out.emit(Event::SendRejected { peer, message, reason: SendError::Encode(e) });
            return;
        }
        conn.msgs_out += 1;
        self.protocol.sent(&mut conn.proto, &message, conn.tx.len() - before);
        if conn.queued() > limit {
            conn.gate.full.store(true, Ordering::SeqCst);
        } else if conn.gate.reopened() {
            self.out.emit(Event::Writable { peer });
        }
        if queued == 0 {
            conn.tx_progress = self.now;
            if conn.writable && !conn.in_write_queue {
                conn.in_write_queue = true;
                self.write_queue.push_back(peer.0);
            }
            self.arm_stall(peer.0);
        }
    }

    fn arm_stall(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        if !conn.stall_armed {
            // Disarmed means the queue was empty when last checked: the
            // peer owes us nothing older than now.
            conn.stall_armed = true;
            conn.tx_progress = conn.tx_progress.max(self.now);
            let at = later(conn.tx_progress, self.config.stall_timeout);
            self.timers.push(Reverse((at, Timer::Stall(id))));
        }
    }

    fn serve_reads(&mut self) {
        let n = self.read_queue.len();
        for _ in 0..n {
            if self.out.paused() {
                return;
            }
            let Some(id) = self.read_queue.pop_front() else { return };
            let mut scratch = std::mem::take(&mut self.scratch);
            let result = self.read(id, &mut scratch);
            self.scratch = scratch;
            match result {
                Ok(true) => self.read_queue.push_back(id),
                Ok(false) => {
                    if let Some(conn) = self.conns.get_mut(&id) {
                        conn.in_read_queue = false;
                    }
                }
                Err(reason) => self.close(id, reason),
            }
            self.after_read(id);
        }
    }

    /// Decodes what is buffered in the connection's own receive buffer.
    fn decode_buffered(&mut self, id: u64) -> Result<(), DisconnectReason<C::Error>> {
        let Some(conn) = self.conns.get_mut(&id) else { return Ok(()) };
        if conn.rx.is_empty() {
            return Ok(());
        }
        let rx = std::mem::take(&mut conn.rx);
        let limit = self.config.send_buffer_limit;
        let result = decode_all(conn, &mut self.protocol, &mut self.proto_out, &mut self.out, &rx, self.now, limit);
        conn.rx = rx;
        conn.rx.drain(..result?);
        Ok(())
    }

    /// Reads and decodes within the budget. `Ok(true)`: more may be waiting.
    fn read(&mut self, id: u64, scratch: &mut [u8]) -> Result<bool, DisconnectReason<C::Error>> {
        let mut budget = self.config.io_budget;
        loop {
            if self.out.paused() {
                return Ok(true);
            }
            // Complete frames may be buffered from a round cut short by a full
            // event channel, or appended by the previous read.
            self.decode_buffered(id)?;
            if self.out.paused() {
                return Ok(true);
            }
            let limit = self.config.send_buffer_limit;
            let Some(conn) = self.conns.get_mut(&id) else { return Ok(false) };
            if conn.state == State::Connecting {
                return Ok(false);
            }
            if conn.lingering {
                // Flushed and shut down: discard input until the peer closes.
                match conn.stream.read(scratch) {
                    Ok(0) => return Err(DisconnectReason::Flushed),
                    Ok(n) => {
                        budget = budget.saturating_sub(n);
                        if budget == 0 {
                            return Ok(true);
                        }
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return Err(DisconnectReason::Flushed),
                }
            }
            if conn.queued() > limit {
                // Like Core's fPauseSend: read nothing more until the peer
                // has taken what we owe it. `write` resumes us.
                conn.read_paused = true;
                return Ok(false);
            }
            let result = if conn.rx.is_empty() {
                conn.stream.read(scratch)
            } else {
                let missing = conn.rx_frame_len.map_or(READ_CHUNK, |f| f.saturating_sub(conn.rx.len()));
                let want = missing.clamp(1, READ_CHUNK);
                let len = conn.rx.len();
                grow(&mut conn.rx, len + want, conn.rx_frame_len);
                conn.rx.resize(len + want, 0);
                let r = conn.stream.read(&mut conn.rx[len..]);
                conn.rx.truncate(len + *r.as_ref().unwrap_or(&0));
                r
            };
            match result {
                Ok(0) => return Err(DisconnectReason::PeerClosed),
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    conn.bytes_in += n as u64;
                    conn.last_recv = Some(self.now);
                    if conn.rx.is_empty() {
                        let used = decode_all(
                            conn,
                            &mut self.protocol,
                            &mut self.proto_out,
                            &mut self.out,
                            &scratch[..n],
                            self.now,
                            limit,
                        )?;
                        if used < n {
                            self.pool.fill(&mut conn.rx);
                            conn.rx.extend_from_slice(&scratch[used..n]);
                        }
                    }
                    // Otherwise the bytes were appended to `rx` and are
                    // decoded at the top of the loop.
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.decode_buffered(id)?;
                    return Ok(self.out.paused());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(DisconnectReason::Io(e)),
            }
            if budget == 0 {
                self.decode_buffered(id)?;
                return Ok(true);
            }
        }
    }

    /// Housekeeping after reading: frame timer, buffer release, protocol
    /// timer, and writing whatever the codec or protocol queued.
    fn after_read(&mut self, id: u64) {
        self.maybe_announce(id);
        self.flush_held(id);
        let Some(conn) = self.conns.get_mut(&id) else { return };
        if conn.rx.is_empty() {
            conn.frame_started = None;
            conn.rx_frame_len = None;
            if conn.rx.capacity() > KEEP_BUFFER {
                self.pool.put(&mut conn.rx);
            }
        } else if conn.frame_started.is_none() {
            // A frame is under way since now (each completed frame resets it).
            conn.frame_started = Some(self.now);
            if !conn.frame_armed {
                conn.frame_armed = true;
                self.timers.push(Reverse((later(self.now, self.config.frame_timeout), Timer::Frame(id))));
            }
        }
        let queued = conn.queued();
        if queued > self.config.send_buffer_limit {
            conn.gate.full.store(true, Ordering::SeqCst);
        }
        if queued > 0 && conn.writable && !conn.in_write_queue {
            conn.in_write_queue = true;
            self.write_queue.push_back(id);
        }
        if queued > 0 {
            self.arm_stall(id);
        }
        self.schedule_proto(id);
    }

    fn serve_writes(&mut self) {
        let n = self.write_queue.len();
        for _ in 0..n {
            let Some(id) = self.write_queue.pop_front() else { return };
            match self.write(id) {
                Ok(true) => self.write_queue.push_back(id),
                Ok(false) => {}
                Err(reason) => self.close(id, reason),
            }
        }
    }

    /// Writes within the budget. `Ok(true)`: more to write and the socket may
    /// take it.
    fn write(&mut self, id: u64) -> Result<bool, DisconnectReason<C::Error>> {
        let limit = self.config.send_buffer_limit;
        let Some(conn) = self.conns.get_mut(&id) else { return Ok(false) };
        let mut budget = self.config.io_budget;
        let mut again = false;
        while conn.queued() > 0 {
            match conn.stream.write(&conn.tx[conn.tx_pos..]) {
                Ok(0) => return Err(DisconnectReason::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    conn.tx_pos += n;
                    conn.tx_progress = self.now;
                    conn.bytes_out += n as u64;
                    conn.last_send = Some(self.now);
                    budget = budget.saturating_sub(n);
                    if budget == 0 {
                        again = conn.queued() > 0;
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.writable = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(DisconnectReason::Io(e)),
            }
        }
        // Room again: encode held messages, in order.
        let peer = conn.id;
        loop {
            let Some(conn) = self.conns.get_mut(&id) else { return Ok(false) };
            if conn.queued() > limit || !conn.announced {
                break;
            }
            let Some(message) = conn.held.pop_front() else { break };
            self.encode_user(peer, message);
        }
        let Some(conn) = self.conns.get_mut(&id) else { return Ok(false) };
        if conn.writable && conn.queued() > 0 {
            again = true;
        }
        conn.in_write_queue = again;
        if conn.queued() == 0 {
            conn.tx.clear();
            conn.tx_pos = 0;
            if conn.tx.capacity() > KEEP_BUFFER {
                self.pool.put(&mut conn.tx);
            }
            if conn.closing && conn.held.is_empty() && !conn.lingering {
                self.start_linger(id);
                return Ok(false);
            }
        }
        if conn.read_paused && conn.queued() <= limit {
            conn.read_paused = false;
            if !conn.in_read_queue {
                conn.in_read_queue = true;
                self.read_queue.push_back(id);
            }
        }
        if conn.queued() <= limit / 2 {
            conn.gate.full.store(false, Ordering::SeqCst);
            if conn.gate.reopened() {
                let peer = conn.id;
                self.out.emit(Event::Writable { peer });
            }
        }
        Ok(again)
    }

    fn fire_timers(&mut self) {
        while let Some(Reverse((at, timer))) = self.timers.peek().copied() {
            if at > self.now {
                return;
            }
            self.timers.pop();
            match timer {
                Timer::Accept(i) => {
                    self.listeners[i].backoff_until = None;
                    self.listeners[i].pending = true;
                }
                Timer::Connect(id) => {
                    // The v1 fallback reuses the id: only this attempt's timer counts.
                    if self
                        .conns
                        .get(&id)
                        .is_some_and(|c| c.state == State::Connecting && c.connect_deadline == Some(at))
                    {
                        let timeout = self.config.connect_timeout;
                        self.close_connecting(id, ConnectError::Timeout(timeout));
                    }
                }
                Timer::Stall(id) => {
                    let timeout = self.config.stall_timeout;
                    let Some(conn) = self.conns.get_mut(&id) else { continue };
                    let queued = conn.queued();
                    if queued == 0 {
                        conn.stall_armed = false;
                    } else if later(conn.tx_progress, timeout) <= self.now {
                        self.close(id, DisconnectReason::SendStalled { queued, timeout });
                    } else {
                        self.timers.push(Reverse((later(conn.tx_progress, timeout), Timer::Stall(id))));
                    }
                }
                Timer::Frame(id) => {
                    let timeout = self.config.frame_timeout;
                    let Some(conn) = self.conns.get_mut(&id) else { continue };
                    match conn.frame_started {
                        Some(t) if later(t, timeout) <= self.now => {
                            let received = conn.rx.len();
                            self.close(id, DisconnectReason::FrameTimeout { received, timeout });
                        }
                        Some(t) => self.timers.push(Reverse((later(t, timeout), Timer::Frame(id)))),
                        None => conn.frame_armed = false,
                    }
                }
                Timer::Linger(id) => {
                    if self.conns.get(&id).is_some_and(|c| c.lingering) {
                        self.close(id, DisconnectReason::Flushed);
                    }
                }
                Timer::Transport(id) => {
                    if self.conns.get(&id).is_some_and(|c| c.state == State::Open && !c.codec.is_established()) {
                        let timeout = self.config.session.handshake_timeout;
                        self.close(id, DisconnectReason::Session(crate::SessionError::HandshakeTimeout(timeout)));
                    }
                }
                Timer::Proto(id) => {
                    let Some(conn) = self.conns.get_mut(&id) else { continue };
                    if conn.proto_timer != Some(at) {
                        continue; // superseded by an earlier deadline
                    }
                    conn.proto_timer = None;
                    let result = self.protocol.tick(&mut conn.proto, self.now, &mut self.proto_out);
                    let result = result
                        .map_err(DisconnectReason::Session)
                        .and_then(|()| conn.queue_protocol(&mut self.protocol, &mut self.proto_out, self.now));
                    match result {
                        Ok(()) => self.after_read(id),
                        Err(reason) => {
                            self.proto_out.clear();
                            self.close(id, reason);
                        }
                    }
                }
            }
        }
    }

    fn close_connecting(&mut self, id: u64, error: ConnectError) {
        let Some(mut conn) = self.conns.remove(&id) else { return };
        self.shared.remove_gate(conn.id);
        let _ = self.poll.registry().deregister(&mut conn.stream);
        self.protocol.closed(&conn.proto);
        self.hand_back_held(&mut conn);
        self.out.emit(Event::ConnectFailed { peer: conn.id, addr: conn.addr, error });
    }

    /// Messages accepted by `send` but never encoded go back to the user.
    fn hand_back_held(&mut self, conn: &mut Conn<C, P::Conn>) {
        for message in conn.held.drain(..) {
            self.out.emit(Event::SendRejected { peer: conn.id, message, reason: SendError::Disconnected });
        }
    }

    /// Removes a connection and reports it: `ConnectFailed` if it never
    /// connected, else `Disconnected`.
    fn close(&mut self, id: u64, reason: DisconnectReason<C::Error>) {
        if self.conns.get(&id).is_some_and(|c| c.state == State::Connecting) {
            let error = match reason {
                DisconnectReason::Io(e) => ConnectError::Io(e),
                _ => ConnectError::Cancelled,
            };
            self.close_connecting(id, error);
            return;
        }
        let Some(mut conn) = self.conns.remove(&id) else { return };
        // BIP324 fallback, as Core's ShouldReconnectV1: we initiated, got
        // nothing back, and sent at least a v1 header's worth.
        // Also when the codec saw the peer answer in v1 (a v1 node that
        // speaks first; Core never meets one, as it tries v2 only with peers
        // that advertise NODE_P2P_V2).
        let silent =
            matches!(reason, DisconnectReason::PeerClosed | DisconnectReason::Io(_) | DisconnectReason::Session(_))
                && conn.bytes_in == 0
                && conn.bytes_out >= 24;
        let retry = conn.direction == Direction::Outbound && (silent || conn.codec.needs_fallback());
        if let Some(codec) = retry.then(|| conn.codec.fallback()).flatten() {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            self.protocol.closed(&conn.proto);
            log::debug!("peer {} at {} sent nothing back to v2: retrying as v1", conn.id, conn.addr);
            self.v1_peers.insert(conn.addr);
            let held = std::mem::take(&mut conn.held);
            let closing = conn.closing;
            self.connect(conn.id, conn.addr, Arc::clone(&conn.gate), codec, held);
            if let Some(retry) = self.conns.get_mut(&id) {
                retry.closing = closing;
            }
            return;
        }
        self.shared.remove_gate(conn.id);
        let _ = self.poll.registry().deregister(&mut conn.stream);
        self.protocol.closed(&conn.proto);
        self.compact_timers();
        if conn.direction == Direction::Inbound {
            self.inbound = self.inbound.saturating_sub(1);
        }
        self.hand_back_held(&mut conn);
        log::debug!("peer {} ({} {}) disconnected: {}", conn.id, conn.direction, conn.addr, reason);
        self.out.emit(Event::Disconnected { peer: conn.id, reason });
    }
}

/// Grows `rx` to hold `needed` bytes: doubling, but never past the validated
/// frame length, so capacity never runs ahead of the bytes that actually
/// arrived by more than the bytes already received.
fn grow(rx: &mut Vec<u8>, needed: usize, frame_len: Option<usize>) {
    if rx.capacity() >= needed {
        return;
    }
    let target = (rx.capacity() * 2).max(needed);
    let target = frame_len.map_or(target, |f| target.min(f.max(needed)));
    rx.reserve_exact(target - rx.len());
}
