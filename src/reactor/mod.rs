//! The mio reactor: one thread that owns every socket. It only moves bytes
//! and readiness; each connection's logic lives in a sans-IO
//! [`Link`], the listeners in [`listener`]. Each round: accept,
//! read (decode), apply user commands (encode), write, each within per-peer
//! budgets, fire due timers, then sleep in `poll` until the next deadline.

mod admission;
mod dial;
mod eviction;
mod link;
mod listener;
mod memory;
mod outbound;
mod outbox;
mod rxbuf;
pub(crate) mod shared;
// Also built for `cargo fuzz` (`--cfg fuzzing`): the `sim` fuzz target runs it.
#[cfg(any(test, fuzzing))]
pub(crate) mod sim;
mod slot;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};

use self::admission::{Admission, Refusal};
use self::dial::{Proxies, Resolver};
use self::link::{Closed, End, Limits, Link, READ_CHUNK, State};
use self::listener::Listeners;
use self::outbound::{Attempt, Lookup};
use self::outbox::Outbox;
use self::shared::{Cmd, Counters, Query, Shared};
use self::slot::{Env, IdMap, Slot};
use crate::codec::Factory;
use crate::config::Config;
use crate::error::StartError;
use crate::event::{DisconnectReason, Event, SendError};
use crate::handle::{Disconnect, Handle};
use crate::protocol::{CodecFor, Info, Msg, Passthrough, Protocol};
use crate::stack::Framed;
use crate::target::Target;
use crate::types::{Direction, PeerId};

/// Most events sent to the user in one batch.
pub(crate) const EVENT_BATCH: usize = 256;
/// Commands applied per round before sockets are served again.
const COMMAND_BUDGET: usize = 4096;
/// After a round, how long the reactor polls without sleeping before it
/// parks in `epoll_wait`: an answer that comes within it (a request and its
/// response) is taken without waking a sleeping thread.
const SPIN: Duration = Duration::from_micros(200);
/// After spins that found nothing, at most this many rounds go by without
/// one (the gap doubles with each miss and is reset by a hit), so traffic
/// that never answers within [`SPIN`] costs little CPU.
const SPIN_BACKOFF_MAX: u32 = 64;
const WAKER: Token = Token(usize::MAX);

/// Starts a reactor thread in raw mode with `factory` making each
/// connection's codec (any `Codec + Clone` is a factory that clones itself):
/// every decoded message is delivered and peers are announced with
/// [`Event::Connected`]. Listeners are bound before this returns, so bind
/// errors and bound addresses are known at once.
pub fn start_with_codec<F: Factory>(config: Config, factory: F) -> Result<Handle<Framed<F::Codec>>, StartError> {
    spawn(config, factory, |_| Passthrough::new())
}

pub(crate) fn spawn<F, P>(
    config: Config,
    factory: F,
    protocol: impl FnOnce(&Arc<Shared>) -> P,
) -> Result<Handle<P::Stack>, StartError>
where
    F: Factory,
    F::Codec: CodecFor<P>,
    P: Protocol,
{
    let poll = Poll::new().map_err(StartError::Poll)?;
    let waker = Waker::new(poll.registry(), WAKER).map_err(StartError::Poll)?;
    let (listeners, local_addrs) = Listeners::bind(&config.listen, config.max_inbound, poll.registry())?;
    let shared = Arc::new(Shared::new(waker, config.start_height, config.max_in_flight, config.max_in_flight_total));
    let protocol = protocol(&shared);
    let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
    // Capacity in events, as configured: batches of up to EVENT_BATCH events.
    let batch_max = config.event_capacity.clamp(1, EVENT_BATCH);
    let (ev_tx, ev_rx) = crossbeam_channel::bounded((config.event_capacity / batch_max).max(1));
    let out = Outbox::new(ev_tx, batch_max, config.event_bytes_limit, Arc::clone(&shared));
    let mut rng = crate::rng::Rng::from_os();
    let reactor = Reactor {
        proxies: Proxies::new(&config, &mut rng),
        resolver: Resolver::new(Arc::clone(&shared)),
        resolving: IdMap::default(),
        ban_misbehaving: config.ban_misbehaving,
        memory: memory::Memory::new(config.memory_budget),
        admission: Admission::new((rng.u64(), rng.u64()), config.max_inbound_per_ip, config.max_inbound_per_netgroup),
        poll,
        listeners,
        slots: IdMap::default(),
        factory,
        env: Env::new(protocol, out, Limits::from_config(&config)),
        cmd_rx,
        shared: Arc::clone(&shared),
        scratch: vec![0; READ_CHUNK],
        read_queue: VecDeque::new(),
        write_queue: VecDeque::new(),
        timers: BinaryHeap::new(),
        io_budget: config.io_budget,
        rng,
        spin_skip: 0,
        spin_gap: 0,
    };
    let thread = std::thread::Builder::new()
        .name("peerlink-reactor".into())
        .spawn(move || reactor.run())
        .map_err(StartError::Thread)?;
    Ok(Handle::new(cmd_tx, ev_rx, shared, thread, local_addrs))
}

struct Reactor<F: Factory, P: Protocol> {
    poll: Poll,
    listeners: Listeners,
    slots: IdMap<Slot<F::Codec, P>>,
    factory: F,
    env: Env<P>,
    cmd_rx: Receiver<Cmd<Msg<P>, Info<P>>>,
    shared: Arc<Shared>,
    scratch: Vec<u8>,
    read_queue: VecDeque<u64>,
    write_queue: VecDeque<u64>,
    /// Link deadlines: `(when, peer)`. An entry is live only while it equals
    /// its slot's `timer_at`; others are skipped when they surface.
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    io_budget: usize,
    rng: crate::rng::Rng,
    /// Rounds left before the next spin, and the gap after the next miss.
    spin_skip: u32,
    spin_gap: u32,
    proxies: Proxies,
    resolver: Resolver,
    /// Outbound attempts waiting for a host-name lookup.
    resolving: IdMap<Lookup<Msg<P>>>,
    /// Inbound sources and caps, checked at accept.
    admission: Admission,
    /// Ban peers closed for misbehaviour for this long.
    ban_misbehaving: Option<std::time::Duration>,
    /// The links' buffers and the optional budget.
    memory: memory::Memory,
}

impl<F, P> Reactor<F, P>
where
    F: Factory,
    F::Codec: CodecFor<P>,
    P: Protocol,
{
    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        while !self.shared.shutdown.load(Ordering::SeqCst) {
            self.round();
            if self.spin(&mut events) {
                for event in events.iter() {
                    self.dispatch(event);
                }
                continue;
            }
            let timeout = self.poll_timeout();
            let polled = self.poll.poll(&mut events, timeout);
            self.shared.sleeping.store(false, Ordering::SeqCst);
            if let Err(e) = polled {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("poll failed, stopping reactor: {e}");
                break;
            }
            for event in events.iter() {
                self.dispatch(event);
            }
        }
        log::debug!("reactor stopping with {} peers", self.slots.len());
        for (_, mut slot) in self.slots.drain() {
            let _ = self.poll.registry().deregister(&mut slot.stream);
        }
        // Deliver what this round produced, then let async receivers see the
        // end of the stream.
        self.env.out.send_batch();
        drop(self.env.out);
        self.shared.async_waiting.store(true, Ordering::SeqCst);
        self.shared.wake_async();
    }

    /// One round of work between two polls.
    fn round(&mut self) {
        self.env.now = Instant::now();
        self.env.out.flush();
        self.listeners.begin_round(self.env.now);
        self.accept_pending();
        self.unpark();
        self.serve_reads();
        // What the reads produced goes to the user before we turn to
        // commands and writes.
        self.env.out.send_batch();
        self.apply_commands();
        self.apply_resolved();
        self.serve_writes();
        self.fire_timers();
        self.env.out.send_batch();
        self.shared.wake_async();
    }

    /// Polls without sleeping for up to [`SPIN`], yielding the core between
    /// polls. True if socket events (in `events`) or commands arrived.
    /// After a spin that found nothing, the next ones are skipped for a
    /// doubling number of rounds, up to [`SPIN_BACKOFF_MAX`].
    /// Only when nothing is queued: with queued work the next round starts
    /// at once (edge-triggered readiness would not announce it).
    fn spin(&mut self, events: &mut Events) -> bool {
        if self.busy() {
            return false;
        }
        if self.spin_skip > 0 {
            self.spin_skip -= 1;
            return false;
        }
        let started = Instant::now();
        while started.elapsed() < SPIN {
            let out = &self.env.out;
            // Commands, or room again in the event channel, are work too.
            let room = out.paused() && out.has_room();
            let hit = if self.cmd_rx.is_empty() && !room {
                matches!(self.poll.poll(events, Some(Duration::ZERO)), Ok(()) if !events.is_empty())
            } else {
                events.clear();
                true
            };
            if hit {
                self.spin_gap = 0;
                return true;
            }
            std::thread::yield_now();
        }
        self.spin_gap = (self.spin_gap * 2 + 1).min(SPIN_BACKOFF_MAX);
        self.spin_skip = self.spin_gap;
        false
    }

    /// Work is queued for the next round: writes, or reads and accepts
    /// while the user keeps up.
    fn busy(&self) -> bool {
        let out = &self.env.out;
        !self.write_queue.is_empty() || (!out.paused() && (!self.read_queue.is_empty() || self.listeners.ready()))
    }

    /// Zero while work is queued, else until the next deadline; announces
    /// sleep to the handles first.
    fn poll_timeout(&mut self) -> Option<Duration> {
        let out = &self.env.out;
        if self.busy() {
            return Some(Duration::ZERO);
        }
        self.shared.sleeping.store(true, Ordering::SeqCst);
        // Re-check after announcing sleep: a command sent before the flag
        // was visible would otherwise wait for the timeout.
        if out.paused() {
            // The user's next take wakes us (it may have been before this).
            self.shared.events_blocked.store(true, Ordering::SeqCst);
        }
        if !self.cmd_rx.is_empty() || self.shared.shutdown.load(Ordering::SeqCst) || (out.paused() && out.has_room()) {
            return Some(Duration::ZERO);
        }
        let link = self.timers.peek().map(|Reverse((at, _))| *at);
        // Peers waiting for the memory budget: look again soon.
        let budget = self.memory.waiting().then(|| self.env.now + Duration::from_millis(1));
        let next = [link, self.listeners.next_deadline(), budget].into_iter().flatten().min();
        next.map(|at| at.saturating_duration_since(Instant::now()))
    }

    fn dispatch(&mut self, event: &mio::event::Event) {
        let token = event.token();
        if token == WAKER || self.listeners.on_ready(token) {
            return;
        }
        let id = token.0 as u64;
        // Ids are never reused: an event for a closed peer finds nothing.
        let Some(slot) = self.slots.get_mut(&id) else { return };
        if slot.link.state() == State::Connecting {
            if event.is_writable() || event.is_error() || event.is_write_closed() || event.is_read_closed() {
                self.finish_connect(id);
            }
            return;
        }
        if (event.is_readable() || event.is_read_closed() || event.is_error()) && !slot.in_read_queue {
            slot.in_read_queue = true;
            self.read_queue.push_back(id);
        }
        if event.is_writable() || event.is_error() {
            slot.writable = true;
            self.after(id);
        }
    }

    /// The single place that turns a link's state into reactor work, called
    /// after every link call: owed shutdown, write queue, resumed reading,
    /// and the link's next deadline.
    fn after(&mut self, id: u64) {
        let Some(slot) = self.slots.get_mut(&id) else { return };
        if let Some((remote, codec)) = slot.link.poll_answered() {
            self.factory.answered(remote, codec);
        }
        let mut wants_read = false;
        if slot.link.poll_shutdown() {
            let _ = slot.stream.shutdown(Shutdown::Write);
            wants_read = true;
        }
        if !slot.link.poll_transmit().is_empty() && slot.writable && !slot.in_write_queue {
            slot.in_write_queue = true;
            self.write_queue.push_back(id);
        }
        let limits = &self.env.limits;
        if (slot.read_paused && slot.link.wants_read(limits)) || slot.link.wants_decode(limits) {
            slot.read_paused = false;
            wants_read = true;
        }
        if wants_read && !slot.in_read_queue {
            slot.in_read_queue = true;
            self.read_queue.push_back(id);
        }
        if let Some(at) = slot.link.poll_timeout()
            && slot.timer_at.is_none_or(|t| at < t)
        {
            slot.timer_at = Some(at);
            self.timers.push(Reverse((at, id)));
        }
        self.account(id);
    }

    fn finish_connect(&mut self, id: u64) {
        let Some(slot) = self.slots.get_mut(&id) else { return };
        match slot.finish_connect(&mut self.env) {
            Ok(false) => {}
            Ok(true) => {
                if !slot.in_read_queue {
                    slot.in_read_queue = true;
                    self.read_queue.push_back(id);
                }
                self.after(id);
            }
            Err(e) => self.close(id, DisconnectReason::Io(e).into()),
        }
    }

    fn accept_pending(&mut self) {
        // Each accept may produce an event; wait while the user is behind.
        while !self.env.out.paused() {
            let Some((stream, remote, full)) = self.listeners.accept(self.env.now, &self.shared.stats) else { return };
            let source = self.admission.source(remote.ip());
            let checked =
                if self.shared.is_banned(source.ip) { Err(Refusal::Banned) } else { self.admission.check(source) };
            if let Err(refusal) = checked {
                log::debug!("refusing {remote}: {refusal:?}");
                let stats = &self.shared.stats;
                Counters::bump(match refusal {
                    Refusal::Banned => &stats.inbound_refused_banned,
                    Refusal::PerIp | Refusal::PerGroup => &stats.inbound_refused_source,
                });
                continue;
            }
            if full && !self.evict_for(remote) {
                Counters::bump(&self.shared.stats.inbound_refused_full);
                continue;
            }
            Counters::bump(&self.shared.stats.inbound_accepted);
            self.admit(stream, remote);
        }
    }

    /// Starts a link for an accepted connection.
    fn admit(&mut self, mut stream: TcpStream, remote: SocketAddr) {
        let (peer, gate) = self.shared.allocate_peer();
        let _ = stream.set_nodelay(true);
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self.poll.registry().register(&mut stream, Token(peer.0 as usize), interest) {
            log::warn!("cannot register accepted socket from {remote}: {e}");
            Counters::bump(&self.shared.stats.inbound_failed);
            self.shared.remove_gate(peer);
            return;
        }
        let local = stream.local_addr().ok();
        let codec = self.factory.make(Direction::Inbound, &Target::Socket(remote));
        let entropy = self.rng.bytes32();
        let link = Link::new(
            peer,
            Direction::Inbound,
            remote,
            local,
            codec,
            gate,
            VecDeque::new(),
            entropy,
            None,
            &mut self.env.cx(),
        );
        match link {
            Ok(mut link) => {
                link.standing = self.standing(remote);
                self.admission.admitted(self.admission.source(remote.ip()));
                self.listeners.inbound += 1;
                self.insert(link, stream, true);
            }
            Err(e) => {
                log::debug!("cannot start connection from {remote}: {}", crate::error::Report(&e));
                Counters::bump(&self.shared.stats.inbound_failed);
                let _ = self.poll.registry().deregister(&mut stream);
                self.shared.remove_gate(peer);
            }
        }
    }

    fn insert(&mut self, link: Link<F::Codec, P>, stream: TcpStream, connected: bool) {
        let id = link.id.0;
        self.slots.insert(id, Slot::new(link, stream, connected));
        if connected {
            self.read_queue.push_back(id);
        }
        self.after(id);
    }

    fn apply_commands(&mut self) {
        for _ in 0..COMMAND_BUDGET {
            match self.cmd_rx.try_recv() {
                Ok(Cmd::Send { peer, message }) => {
                    if self.shared.budget.taken() {
                        self.reopen_gates();
                    }
                    self.send(peer, message);
                }
                Ok(Cmd::Connect { peer, target, gate }) => {
                    let deadline = crate::types::later(self.env.now, self.env.limits.connect_timeout);
                    let attempt = Attempt { peer, gate, held: VecDeque::new(), after_flush: false };
                    match self.outbound_room() {
                        Ok(()) => self.dial(attempt, target, None, deadline, None),
                        Err(error) => self.fail_connect(attempt, target, error),
                    }
                }
                Ok(Cmd::Disconnect { peer, mode }) => self.disconnect(peer, mode),
                Ok(Cmd::Protect { peer, protected }) => self.protect(peer, protected),
                Ok(Cmd::Relayed { peer, what }) => self.relayed(peer, what),
                Ok(Cmd::Banned { subnet }) => self.close_banned(subnet),
                Ok(Cmd::Query(query)) => self.answer(query),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.shared.shutdown.store(true, Ordering::SeqCst);
                    return;
                }
            }
        }
    }

    /// The reactor-wide budget drained to half after refusals: every gate
    /// that refused a sender, or has one waiting, is looked at.
    fn reopen_gates(&mut self) {
        let gates = self.slots.values().map(|s| (s.link.id, Arc::clone(s.link.gate())));
        let lookups = self.resolving.iter().map(|(id, l)| (PeerId(*id), Arc::clone(&l.attempt.gate)));
        let gates: Vec<_> = gates.chain(lookups).collect();
        for (peer, gate) in gates {
            if gate.reopened() {
                self.env.out.emit(Event::Writable { peer });
            }
        }
    }

    fn answer(&mut self, query: Query<Info<P>>) {
        // A dropped reply channel means the asker gave up; nothing to do.
        let proto = &self.env.protocol;
        match query {
            Query::Peers(reply) => {
                let mut peers: Vec<_> = self.slots.values().filter(|s| s.link.announced()).collect();
                peers.sort_by_key(|s| s.link.id);
                let _ = reply.send(peers.into_iter().map(|s| s.link.info(proto)).collect());
            }
            Query::Info(peer, reply) => {
                let _ = reply.send(self.slots.get(&peer.0).map(|s| s.link.info(proto)));
            }
            Query::Stats(peer, reply) => {
                let _ = reply.send(self.slots.get(&peer.0).map(|s| s.link.stats(proto)));
            }
        }
    }

    fn disconnect(&mut self, peer: PeerId, mode: Disconnect) {
        if self.disconnect_lookup(peer, mode) {
            return;
        }
        match mode {
            Disconnect::Now => self.close(peer.0, DisconnectReason::Requested.into()),
            Disconnect::AfterFlush => {
                let Some(slot) = self.slots.get_mut(&peer.0) else { return };
                slot.link.close_after_flush(&mut self.env.cx());
                self.after(peer.0);
            }
        }
    }

    fn send(&mut self, peer: PeerId, message: Msg<P>) {
        let Some(message) = self.hold_for_lookup(peer, message) else { return };
        let Some(slot) = self.slots.get_mut(&peer.0) else {
            self.env.out.emit(Event::SendRejected { peer, message, reason: SendError::UnknownPeer });
            return;
        };
        slot.link.queue(message, &mut self.env.cx());
        self.after(peer.0);
    }

    fn serve_reads(&mut self) {
        for _ in 0..self.read_queue.len() {
            if self.env.out.paused() {
                return;
            }
            let Some(id) = self.read_queue.pop_front() else { return };
            if self.park_for_budget(id) {
                continue;
            }
            match self.read(id) {
                Ok(true) => self.read_queue.push_back(id),
                Ok(false) => {
                    if let Some(slot) = self.slots.get_mut(&id) {
                        slot.in_read_queue = false;
                    }
                }
                Err(reason) => self.close(id, reason.into()),
            }
            self.after(id);
        }
    }

    fn read(&mut self, id: u64) -> Result<bool, DisconnectReason<P::Stack>> {
        let allowance = self.read_allowance(id, self.io_budget);
        let Some(slot) = self.slots.get_mut(&id) else { return Ok(false) };
        slot.read(&mut self.env, &mut self.scratch, allowance)
    }

    fn serve_writes(&mut self) {
        for _ in 0..self.write_queue.len() {
            let Some(id) = self.write_queue.pop_front() else { return };
            match self.write(id) {
                Ok(true) => self.write_queue.push_back(id),
                Ok(false) => {
                    if let Some(slot) = self.slots.get_mut(&id) {
                        slot.in_write_queue = false;
                    }
                }
                Err(reason) => self.close(id, reason.into()),
            }
            self.after(id);
        }
    }

    fn write(&mut self, id: u64) -> Result<bool, DisconnectReason<P::Stack>> {
        let Some(slot) = self.slots.get_mut(&id) else { return Ok(false) };
        slot.write(&mut self.env, self.io_budget)
    }

    fn fire_timers(&mut self) {
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if at > self.env.now {
                break;
            }
            self.timers.pop();
            let Some(slot) = self.slots.get_mut(&id) else {
                self.expire_lookup(id, at);
                continue;
            };
            if slot.timer_at != Some(at) {
                continue; // superseded by an earlier deadline
            }
            slot.timer_at = None;
            match slot.link.handle_timeout(&mut self.env.cx()) {
                Ok(()) => self.after(id),
                Err(end) => self.close(id, end),
            }
        }
        // Entries of closed links and superseded deadlines pile up under
        // connection churn: rebuild from the live deadlines now and then.
        if self.timers.len() > 2 * (self.slots.len() + self.resolving.len()) + 1024 {
            let links = self.slots.iter().filter_map(|(id, s)| Some(Reverse((s.timer_at?, *id))));
            let lookups = self.resolving.iter().map(|(id, lookup)| Reverse((lookup.deadline, *id)));
            self.timers = links.chain(lookups).collect();
        }
    }

    /// Removes a connection and reports it (`ConnectFailed` if it never
    /// connected, else `Disconnected`), or reconnects if its codec factory
    /// asks for a retry (the BIP324 v1 fallback).
    fn close(&mut self, id: u64, end: End<P::Stack>) {
        let Some(mut slot) = self.slots.remove(&id) else { return };
        let _ = self.poll.registry().deregister(&mut slot.stream);
        self.unaccount(slot.accounted);
        let (peer, direction) = (slot.link.id, slot.link.direction);
        let source =
            admission::Source { ip: slot.link.remote.ip().to_canonical(), group: slot.link.standing.keyed_net_group };
        // Misbehaviour may cost the address a ban, once the attempt is over
        // (not on a v1 retry).
        let misbehaved = matches!(&end, End::Reason(r) if r.fault() == crate::event::Fault::Misbehaviour);
        let peer_ip = slot.link.peer_ip();
        // A retry goes back to the address reached, unless by proxy.
        let reached = slot.link.proxy().is_none().then_some(slot.link.remote);
        let target = slot.link.target();
        let gate = Arc::clone(slot.link.gate());
        self.env.proto_out.clear();
        match slot.link.close(end, &mut self.factory, &mut self.env.cx()) {
            Closed::Retry { codec, held, after_flush } => {
                let deadline = crate::types::later(self.env.now, self.env.limits.connect_timeout);
                self.dial(Attempt { peer, gate, held, after_flush }, target, reached, deadline, Some(codec));
            }
            Closed::Next { addr, dial, held, after_flush } => {
                self.connect(Attempt { peer, gate, held, after_flush }, addr, dial, None);
            }
            Closed::Reported => {
                if misbehaved {
                    self.ban_misbehaved(peer, peer_ip);
                }
                self.shared.remove_gate(peer);
                if direction == Direction::Inbound {
                    self.listeners.inbound = self.listeners.inbound.saturating_sub(1);
                    self.admission.left(source);
                }
            }
        }
    }
}
