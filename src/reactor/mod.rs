//! The mio reactor: one thread that owns every socket.
//!
//! Each round: dispatch readiness, accept, read (decode) with a per-peer byte
//! budget, apply user commands (encode), write with a per-peer budget, fire
//! timers, then sleep in `poll` until the next deadline. Readiness is
//! edge-triggered, so a peer whose budget ran out goes back on a queue and is
//! served next round with a zero poll timeout.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use crate::codec::{Codec, Decoded};
use crate::config::Config;
use crate::error::StartError;
use crate::event::{ConnectError, Direction, DisconnectReason, Event, PeerId, SendError};
use crate::handle::{Cmd, Disconnect, Handle, Shared};

/// Size of one read from a socket (Bitcoin Core reads 64 KiB per round).
const READ_CHUNK: usize = 64 * 1024;
/// Back-off after accept fails with EMFILE or ENFILE.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Connections accepted per listener per round.
const ACCEPT_BUDGET: usize = 256;
/// Commands applied per round before sockets are served again.
const COMMAND_BUDGET: usize = 4096;
/// Buffers at most this large are kept when they empty; larger ones are freed
/// so that idle peers cost little memory.
const KEEP_BUFFER: usize = 4 * 1024;

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
    Accept(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Open,
    /// Disconnect requested after flush: no new messages, close when empty.
    Closing,
}

struct Conn<C> {
    id: PeerId,
    stream: TcpStream,
    codec: C,
    state: State,
    direction: Direction,
    addr: SocketAddr,
    /// Bytes of an incomplete frame.
    rx: Vec<u8>,
    /// Length of the incomplete frame, once the codec knows it.
    rx_frame_len: Option<usize>,
    frame_started: Option<Instant>,
    tx: Vec<u8>,
    tx_pos: usize,
    tx_progress: Instant,
    stall_armed: bool,
    writable: bool,
    in_read_queue: bool,
    in_write_queue: bool,
    /// A message was refused; report `Writable` once the queue drains.
    reject_pending: bool,
}

impl<C> Conn<C> {
    fn queued(&self) -> usize {
        self.tx.len() - self.tx_pos
    }
}

struct Listener {
    socket: TcpListener,
    pending: bool,
    backoff_until: Option<Instant>,
}

/// The event side: a bounded channel, plus an overflow queue that is only
/// used while the channel is full. While anything is in the overflow queue
/// no socket is read and no connection accepted, so it holds at most one
/// decoded message plus events caused by user commands and timers.
struct Outbox<M, E> {
    tx: Sender<Event<M, E>>,
    overflow: VecDeque<Event<M, E>>,
    shared: Arc<Shared>,
}

impl<M, E> Outbox<M, E> {
    fn paused(&self) -> bool {
        !self.overflow.is_empty()
    }

    fn emit(&mut self, event: Event<M, E>) {
        if !self.overflow.is_empty() {
            self.overflow.push_back(event);
            return;
        }
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(event)) => {
                self.overflow.push_back(event);
                self.shared.events_blocked.store(true, Ordering::SeqCst);
                // The consumer may have made room before it could see the flag.
                self.flush();
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Moves overflow into the channel while there is room.
    fn flush(&mut self) {
        while let Some(event) = self.overflow.pop_front() {
            match self.tx.try_send(event) {
                Ok(()) => {}
                Err(TrySendError::Full(event)) => {
                    self.overflow.push_front(event);
                    self.shared.events_blocked.store(true, Ordering::SeqCst);
                    return;
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.overflow.clear();
                    return;
                }
            }
        }
    }
}

/// Starts a reactor thread with `codec` as the prototype for every
/// connection. Listeners are bound before this returns, so bind errors and
/// bound addresses are known at once.
pub fn start_with_codec<C: Codec>(config: Config, codec: C) -> Result<Handle<C>, StartError> {
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
    });
    let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
    let (ev_tx, ev_rx) = crossbeam_channel::bounded(config.event_capacity.max(1));
    let reactor = Reactor {
        poll,
        listeners,
        conns: IdMap::default(),
        codec,
        cmd_rx,
        out: Outbox { tx: ev_tx, overflow: VecDeque::new(), shared: Arc::clone(&shared) },
        shared: Arc::clone(&shared),
        scratch: vec![0; READ_CHUNK],
        read_queue: VecDeque::new(),
        write_queue: VecDeque::new(),
        timers: BinaryHeap::new(),
        now: Instant::now(),
        config,
    };
    let thread = std::thread::Builder::new()
        .name("peerlink-reactor".into())
        .spawn(move || reactor.run())
        .map_err(StartError::Thread)?;
    Ok(Handle::new(cmd_tx, ev_rx, shared, thread, local_addrs))
}

struct Reactor<C: Codec> {
    poll: Poll,
    listeners: Vec<Listener>,
    conns: IdMap<Conn<C>>,
    codec: C,
    cmd_rx: Receiver<Cmd<C::Message>>,
    out: Outbox<C::Message, C::Error>,
    shared: Arc<Shared>,
    scratch: Vec<u8>,
    read_queue: VecDeque<u64>,
    write_queue: VecDeque<u64>,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    now: Instant,
    config: Config,
}

impl<C: Codec> Reactor<C> {
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
            self.apply_commands();
            self.serve_writes();
            self.fire_timers();

            let busy = !self.write_queue.is_empty()
                || (!self.out.paused()
                    && (!self.read_queue.is_empty()
                        || self.listeners.iter().any(|l| l.pending && l.backoff_until.is_none())));
            let mut timeout = if busy { Some(Duration::ZERO) } else { self.next_deadline() };
            if timeout != Some(Duration::ZERO) {
                self.shared.sleeping.store(true, Ordering::SeqCst);
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
            if !(event.is_writable() || event.is_error() || event.is_write_closed() || event.is_read_closed()) {
                return;
            }
            self.finish_connect(id);
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
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) if e.raw_os_error() == Some(115) => return, // EINPROGRESS
                Err(e) => Err(e),
            },
        };
        match result {
            Err(e) => {
                let mut conn = self.conns.remove(&id).expect("looked up above");
                let _ = self.poll.registry().deregister(&mut conn.stream);
                self.out.emit(Event::ConnectFailed { peer: conn.id, addr: conn.addr, error: ConnectError::Io(e) });
            }
            Ok(()) => {
                let _ = conn.stream.set_nodelay(true);
                let local = conn.stream.local_addr().unwrap_or(conn.addr);
                conn.state = State::Open;
                conn.writable = true;
                conn.in_read_queue = true;
                self.read_queue.push_back(id);
                if conn.queued() > 0 && !conn.in_write_queue {
                    conn.in_write_queue = true;
                    self.write_queue.push_back(id);
                }
                self.out.emit(Event::Connected {
                    peer: conn.id,
                    direction: Direction::Outbound,
                    local,
                    remote: conn.addr,
                });
            }
        }
    }

    fn accept_pending(&mut self) {
        if self.out.paused() {
            return;
        }
        for i in 0..self.listeners.len() {
            let l = &self.listeners[i];
            if !l.pending || l.backoff_until.is_some() {
                continue;
            }
            self.accept(i);
        }
    }

    fn accept(&mut self, i: usize) {
        for _ in 0..ACCEPT_BUDGET {
            if self.out.paused() {
                return;
            }
            match self.listeners[i].socket.accept() {
                Ok((mut stream, remote)) => {
                    let id = self.shared.allocate_peer();
                    let _ = stream.set_nodelay(true);
                    let local = stream.local_addr().unwrap_or(self.listeners[i].socket.local_addr().unwrap_or(remote));
                    if let Err(e) = self.poll.registry().register(
                        &mut stream,
                        Token(id.0 as usize),
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        log::warn!("cannot register accepted socket from {remote}: {e}");
                        continue;
                    }
                    if let Err(e) = self.insert_conn(id, stream, Direction::Inbound, remote, State::Open) {
                        log::debug!("codec refused to start for {remote}: {e}");
                        continue;
                    }
                    self.out.emit(Event::Connected { peer: id, direction: Direction::Inbound, local, remote });
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
                Err(e) => {
                    // ECONNABORTED and similar concern one connection only.
                    log::debug!("accept: {e}");
                }
            }
        }
    }

    fn insert_conn(
        &mut self,
        id: PeerId,
        stream: TcpStream,
        direction: Direction,
        addr: SocketAddr,
        state: State,
    ) -> Result<(), C::Error> {
        let mut codec = self.codec.clone();
        let mut tx = Vec::new();
        codec.start(direction == Direction::Outbound, &mut tx)?;
        let has_tx = !tx.is_empty();
        let conn = Conn {
            id,
            stream,
            codec,
            state,
            direction,
            addr,
            rx: Vec::new(),
            rx_frame_len: None,
            frame_started: None,
            tx,
            tx_pos: 0,
            tx_progress: self.now,
            stall_armed: false,
            writable: state == State::Open,
            in_read_queue: state == State::Open,
            in_write_queue: has_tx && state == State::Open,
            reject_pending: false,
        };
        self.conns.insert(id.0, conn);
        if state == State::Open {
            self.read_queue.push_back(id.0);
            if has_tx {
                self.write_queue.push_back(id.0);
            }
        }
        if has_tx {
            self.arm_stall(id.0);
        }
        Ok(())
    }

    fn apply_commands(&mut self) {
        for _ in 0..COMMAND_BUDGET {
            match self.cmd_rx.try_recv() {
                Ok(Cmd::Send { peer, message }) => self.send(peer, message),
                Ok(Cmd::Connect { peer, addr }) => self.connect(peer, addr),
                Ok(Cmd::Disconnect { peer, mode }) => match mode {
                    Disconnect::Now => self.close(peer.0, DisconnectReason::Requested),
                    Disconnect::AfterFlush => {
                        if let Some(conn) = self.conns.get_mut(&peer.0) {
                            if conn.queued() == 0 {
                                self.close(peer.0, DisconnectReason::Flushed);
                            } else {
                                conn.state = State::Closing;
                            }
                        }
                    }
                },
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.shared.shutdown.store(true, Ordering::SeqCst);
                    return;
                }
            }
        }
    }

    fn connect(&mut self, peer: PeerId, addr: SocketAddr) {
        let mut stream = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => {
                self.out.emit(Event::ConnectFailed { peer, addr, error: ConnectError::Io(e) });
                return;
            }
        };
        if let Err(e) =
            self.poll.registry().register(&mut stream, Token(peer.0 as usize), Interest::READABLE | Interest::WRITABLE)
        {
            self.out.emit(Event::ConnectFailed { peer, addr, error: ConnectError::Io(e) });
            return;
        }
        if let Err(e) = self.insert_conn(peer, stream, Direction::Outbound, addr, State::Connecting) {
            log::debug!("codec refused to start for {addr}: {e}");
            self.out.emit(Event::ConnectFailed {
                peer,
                addr,
                error: ConnectError::Io(io::Error::other(e.to_string())),
            });
            return;
        }
        self.timers.push(Reverse((self.now + self.config.connect_timeout, Timer::Connect(peer.0))));
    }

    fn send(&mut self, peer: PeerId, message: C::Message) {
        let limit = self.config.send_buffer_limit;
        let Some(conn) = self.conns.get_mut(&peer.0) else {
            self.out.emit(Event::SendRejected { peer, message, reason: SendError::UnknownPeer });
            return;
        };
        if conn.state == State::Closing {
            self.out.emit(Event::SendRejected { peer, message, reason: SendError::Closing });
            return;
        }
        let queued = conn.queued();
        if queued > limit || conn.reject_pending {
            // Once a message is refused, refuse the rest until `Writable`, so
            // the stream the peer sees has no holes.
            conn.reject_pending = true;
            self.out.emit(Event::SendRejected { peer, message, reason: SendError::BufferFull { queued, limit } });
            return;
        }
        if conn.tx_pos > 0 && conn.tx_pos >= conn.tx.len() / 2 {
            conn.tx.drain(..conn.tx_pos);
            conn.tx_pos = 0;
        }
        if let Err(e) = conn.codec.encode(&message, &mut conn.tx) {
            self.out.emit(Event::SendRejected { peer, message, reason: SendError::Encode(e) });
            return;
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
            conn.stall_armed = true;
            self.timers.push(Reverse((conn.tx_progress + self.config.stall_timeout, Timer::Stall(id))));
        }
    }

    fn serve_reads(&mut self) {
        let n = self.read_queue.len();
        for _ in 0..n {
            if self.out.paused() {
                return;
            }
            let Some(id) = self.read_queue.pop_front() else { return };
            let result = self.read(id);
            match result {
                Ok(true) => self.read_queue.push_back(id),
                Ok(false) => {
                    if let Some(conn) = self.conns.get_mut(&id) {
                        conn.in_read_queue = false;
                    }
                }
                Err(reason) => self.close(id, reason),
            }
        }
    }

    /// Reads and decodes within the budget. `Ok(true)`: more may be waiting.
    fn read(&mut self, id: u64) -> Result<bool, DisconnectReason<C::Error>> {
        let mut scratch = std::mem::take(&mut self.scratch);
        let result = self.read_with(id, &mut scratch);
        self.scratch = scratch;
        result
    }

    fn read_with(&mut self, id: u64, scratch: &mut [u8]) -> Result<bool, DisconnectReason<C::Error>> {
        let Some(conn) = self.conns.get_mut(&id) else { return Ok(false) };
        let mut budget = self.config.io_budget;
        loop {
            if self.out.paused() {
                return Ok(true);
            }
            // Complete frames may be buffered from a round cut short by a full
            // event channel.
            if !conn.rx.is_empty() {
                let rx = std::mem::take(&mut conn.rx);
                let used = decode_all(conn, &mut self.out, &rx)?;
                conn.rx = rx;
                conn.rx.drain(..used);
                if self.out.paused() {
                    return Ok(true);
                }
            }
            let result = if conn.rx.is_empty() {
                conn.stream.read(scratch)
            } else {
                let want =
                    conn.rx_frame_len.map_or(READ_CHUNK, |f| f.saturating_sub(conn.rx.len()).clamp(1, READ_CHUNK));
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
                    if conn.rx.is_empty() {
                        let used = decode_all(conn, &mut self.out, &scratch[..n])?;
                        conn.rx.extend_from_slice(&scratch[used..n]);
                    }
                    // Otherwise the bytes were appended to `rx` and are
                    // decoded at the top of the loop.
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !conn.rx.is_empty() {
                        let rx = std::mem::take(&mut conn.rx);
                        let used = decode_all(conn, &mut self.out, &rx)?;
                        conn.rx = rx;
                        conn.rx.drain(..used);
                    }
                    self.after_read(id);
                    return Ok(self.out.paused());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(DisconnectReason::Io(e)),
            }
            if budget == 0 {
                self.after_read(id);
                return Ok(true);
            }
        }
    }

    /// Housekeeping after decoding: frame timer, buffer release, and writing
    /// whatever the codec queued.
    fn after_read(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        if conn.rx.is_empty() {
            conn.frame_started = None;
            conn.rx_frame_len = None;
            if conn.rx.capacity() > KEEP_BUFFER {
                conn.rx = Vec::new();
            }
        } else if conn.frame_started.is_none() {
            conn.frame_started = Some(self.now);
            self.timers.push(Reverse((self.now + self.config.frame_timeout, Timer::Frame(id))));
        }
        if conn.queued() > 0 && conn.writable && !conn.in_write_queue {
            conn.in_write_queue = true;
            self.write_queue.push_back(id);
        }
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
        conn.in_write_queue = again;
        if conn.queued() == 0 {
            conn.tx.clear();
            conn.tx_pos = 0;
            if conn.tx.capacity() > KEEP_BUFFER {
                conn.tx = Vec::new();
            }
            if conn.state == State::Closing {
                let _ = conn.stream.shutdown(Shutdown::Write);
                self.close(id, DisconnectReason::Flushed);
                return Ok(false);
            }
        }
        if conn.reject_pending && conn.queued() <= limit / 2 {
            conn.reject_pending = false;
            let peer = conn.id;
            self.out.emit(Event::Writable { peer });
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
                    if self.conns.get(&id).is_some_and(|c| c.state == State::Connecting) {
                        let mut conn = self.conns.remove(&id).expect("checked above");
                        let _ = self.poll.registry().deregister(&mut conn.stream);
                        let error = ConnectError::Timeout(self.config.connect_timeout);
                        self.out.emit(Event::ConnectFailed { peer: conn.id, addr: conn.addr, error });
                    }
                }
                Timer::Stall(id) => {
                    let timeout = self.config.stall_timeout;
                    let Some(conn) = self.conns.get_mut(&id) else { continue };
                    let queued = conn.queued();
                    if queued == 0 {
                        conn.stall_armed = false;
                    } else if conn.tx_progress + timeout <= self.now {
                        self.close(id, DisconnectReason::SendStalled { queued, timeout });
                    } else {
                        self.timers.push(Reverse((conn.tx_progress + timeout, Timer::Stall(id))));
                    }
                }
                Timer::Frame(id) => {
                    let timeout = self.config.frame_timeout;
                    let Some(conn) = self.conns.get_mut(&id) else { continue };
                    match conn.frame_started {
                        Some(t) if t + timeout <= self.now => {
                            let received = conn.rx.len();
                            self.close(id, DisconnectReason::FrameTimeout { received, timeout });
                        }
                        Some(t) => self.timers.push(Reverse((t + timeout, Timer::Frame(id)))),
                        None => {}
                    }
                }
            }
        }
    }

    fn close(&mut self, id: u64, reason: DisconnectReason<C::Error>) {
        let Some(mut conn) = self.conns.remove(&id) else { return };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        log::debug!("peer {} ({} {}) disconnected: {}", conn.id, conn.direction, conn.addr, DisplayReason(&reason));
        if conn.state == State::Connecting {
            let error = match reason {
                DisconnectReason::Io(e) => ConnectError::Io(e),
                _ => ConnectError::Io(io::Error::other("connection attempt cancelled")),
            };
            self.out.emit(Event::ConnectFailed { peer: conn.id, addr: conn.addr, error });
            return;
        }
        self.out.emit(Event::Disconnected { peer: conn.id, reason });
    }
}

struct DisplayReason<'a, E>(&'a DisconnectReason<E>);
impl<E: std::fmt::Display> std::fmt::Display for DisplayReason<'_, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Grows `rx` to hold `needed` bytes: doubling, but never past the validated
/// frame length, so a frame's claimed size is never allocated ahead of the
/// bytes that actually arrived by more than the bytes already received.
fn grow(rx: &mut Vec<u8>, needed: usize, frame_len: Option<usize>) {
    if rx.capacity() >= needed {
        return;
    }
    let target = (rx.capacity() * 2).max(needed);
    let target = frame_len.map_or(target, |f| target.min(f.max(needed)));
    rx.reserve_exact(target - rx.len());
}

/// Decodes every complete frame in `buf` (stopping early if the event
/// channel fills) and returns the bytes used.
fn decode_all<C: Codec>(
    conn: &mut Conn<C>,
    out: &mut Outbox<C::Message, C::Error>,
    buf: &[u8],
) -> Result<usize, DisconnectReason<C::Error>> {
    let mut used = 0;
    while !out.paused() {
        match conn.codec.decode(&buf[used..], &mut conn.tx) {
            Ok(Decoded::NeedMore { frame_len }) => {
                conn.rx_frame_len = frame_len;
                break;
            }
            Ok(Decoded::Message { message, consumed }) => {
                used += consumed;
                conn.rx_frame_len = None;
                out.emit(Event::Message { peer: conn.id, message, wire_size: consumed });
            }
            Ok(Decoded::Consumed(consumed)) => used += consumed.max(1).min(buf.len() - used),
            Err(e) => return Err(DisconnectReason::Codec(e)),
        }
        if used == buf.len() {
            break;
        }
    }
    Ok(used)
}
