//! A pair of sides, the connections between them, and how its story ends.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::super::dial::Dial;
use super::super::link::{Closed, End, Link, State};
use super::fault::Fault;
use super::net::{Conn, Pipe, PipeParams, SimProxy, client_addr, dead_addr, server_addr};
use super::side::{Outcome, Side, Slot, read_slot, write_slot};
use super::{CLIENT_ID, Rng, Who, Wire, gate, inv, ms, ping, tag, tag_of};
use crate::codec::Factory;
use crate::event::DisconnectReason;
use crate::types::{Direction, PeerId};

#[derive(Debug, Clone, Copy)]
pub(super) enum Ending {
    /// `who` closes after a flush at `at`; a client may do so before the
    /// peer is even announced (`early`).
    Flush { who: Who, at: Instant, early: bool },
    /// `who` drops the connection at `at`; with `rst` the peer sees a reset.
    Drop { who: Who, at: Instant, rst: bool },
    /// `who` sends a corrupt frame at `at`.
    Corrupt { who: Who, at: Instant },
    /// The server never answers the connect.
    Unreachable,
    /// An injected fault ends it, at `at` or later (see [`Fault`]).
    Fault { fault: Fault, at: Instant },
}

pub(super) struct Pair<P: Wire> {
    pub(super) index: usize,
    /// Every connection of the client goes through this proxy.
    pub(super) proxy: Option<SimProxy>,
    pub(super) label: String,
    pub(super) client: Side<P>,
    pub(super) server: Side<P>,
    pub(super) conns: Vec<Conn>,
    pub(super) pipe_params: PipeParams,
    pub(super) pending_connect: Option<Instant>,
    pub(super) ending: Ending,
    pub(super) fired: bool,
    /// The client falls back from v2 to v1 (a v2-preferred client, a v1-only server).
    pub(super) fallback: bool,
    pub(super) expect_v1: bool,
    pub(super) next_server_id: u64,
    pub(super) retries: usize,
    pub(super) corrupt_tag: Option<u64>,
    pub(super) closing_tag: Option<u64>,
    /// The connection whose pipes reset once the fault's link closed it.
    pub(super) reset_on_close: Option<usize>,
    /// The client dials a name with two addresses: the connect to the first
    /// fails with this, and the client moves on to the second (the server).
    pub(super) moves_on: Option<io::ErrorKind>,
    pub(super) moved_on: bool,
    pub(super) t0: Instant,
    pub(super) trace: Vec<String>,
}

impl<P: Wire> Pair<P> {
    pub(super) fn side(&mut self, who: Who) -> &mut Side<P> {
        match who {
            Who::Client => &mut self.client,
            Who::Server => &mut self.server,
        }
    }

    pub(super) fn note(&mut self, now: Instant, what: String) {
        let t = (now - self.t0).as_millis();
        self.trace.push(format!("{t:>6} ms  {what}"));
    }

    pub(super) fn fail(&self, what: impl std::fmt::Display) -> ! {
        panic!("pair {} ({}): {what}\n  trace:\n    {}", self.index, self.label, self.trace.join("\n    "))
    }

    pub(super) fn done(&self) -> bool {
        self.client.slots.is_empty() && self.server.slots.is_empty() && self.pending_connect.is_none()
    }

    /// Where the client's link started at `now` connects, and how it
    /// reaches the server: through the pair's proxy, to the first of two
    /// addresses of a name (`first`, if the pair moves on), or directly.
    pub(super) fn dial(&self, now: Instant, first: bool) -> (SocketAddr, Option<Dial>) {
        let deadline = now + self.client.env.limits.connect_timeout;
        if self.proxy.is_some() {
            return (SimProxy::addr(), Some(SimProxy::dial(self.index, deadline)));
        }
        if self.moves_on.is_none() {
            return (server_addr(self.index), None);
        }
        let target = format!("pair{}.sim:{}", self.index, server_addr(self.index).port());
        let target = target.parse().expect("a valid name");
        match first {
            true => (
                dead_addr(self.index),
                Some(Dial { target, deadline, rest: vec![server_addr(self.index)], tunnel: None }),
            ),
            // A retry goes back to the address reached, as the reactor's `close` does.
            false => (server_addr(self.index), Some(Dial { target, deadline, rest: Vec::new(), tunnel: None })),
        }
    }

    /// Opens the client's link (connecting).
    pub(super) fn start(&mut self, rng: &mut Rng) {
        let codec = self.client.factory.make(Direction::Outbound, &server_addr(self.index).into());
        let gate = Arc::new(gate(self.client.max_in_flight));
        let (remote, dial) = self.dial(self.t0, true);
        let link = Link::new(
            CLIENT_ID,
            Direction::Outbound,
            remote,
            None,
            codec,
            gate,
            VecDeque::new(),
            rng.bytes32(),
            dial,
            &mut self.client.env.cx(),
        )
        .unwrap_or_else(|e| self.fail(format!("client link refused to start: {e:?}")));
        self.client.slots.push(Slot { link, conn: None });
    }

    /// The pending connect completes: a new connection, the server accepts
    /// it (unless the pair's fault says it cannot), the client sees it
    /// connected.
    pub(super) fn accept(&mut self, now: Instant, rng: &mut Rng) {
        let conn = self.conns.len();
        let mut c2s = Pipe::new(self.pipe_params, now);
        let mut s2c = Pipe::new(self.pipe_params, now);
        if let Some(proxy) = self.proxy {
            c2s.proxy_takes = proxy.expected(self.index).len();
            s2c.inject(&proxy.replies(), now);
        }
        self.conns.push(Conn { c2s, s2c });
        if !self.accept_fails(conn, now) {
            self.start_server(conn, now, rng);
        }
        let slot = self.client.slots.last_mut().unwrap_or_else(|| panic!("pair {}: accept without client", self.index));
        assert_eq!(slot.link.state(), State::Connecting);
        slot.conn = Some(conn);
        self.client.env.now = now;
        slot.link.handle_connected(client_addr(self.index), &mut self.client.env.cx());
        self.settle();
    }

    /// The server's link for the accepted connection `conn`.
    fn start_server(&mut self, conn: usize, now: Instant, rng: &mut Rng) {
        let id = PeerId(self.next_server_id);
        self.next_server_id += 1;
        let codec = self.server.factory.make(Direction::Inbound, &client_addr(self.index).into());
        let gate = Arc::new(gate(self.server.max_in_flight));
        self.server.env.now = now;
        let link = Link::new(
            id,
            Direction::Inbound,
            client_addr(self.index),
            Some(server_addr(self.index)),
            codec,
            gate,
            VecDeque::new(),
            rng.bytes32(),
            None,
            &mut self.server.env.cx(),
        )
        .unwrap_or_else(|e| self.fail(format!("server link refused to start: {e:?}")));
        self.server.slots.push(Slot { link, conn: Some(conn) });
        self.note(now, format!("connected, conn {conn}, server link {id}"));
    }

    /// Owed shutdowns reach the pipes, and both sides take in their events.
    pub(super) fn settle(&mut self) {
        for who in [Who::Client, Who::Server] {
            let Pair { client, server, conns, .. } = self;
            let side = if who == Who::Client { client } else { server };
            for slot in &mut side.slots {
                if slot.link.poll_shutdown() {
                    let conn = slot.conn.expect("only a connected link lingers");
                    conns[conn].outgoing(who).fin = true;
                }
            }
            if let Err(e) = side.absorb() {
                self.fail(e);
            }
        }
    }

    pub(super) fn step(&mut self, now: Instant, rng: &mut Rng) {
        if self.pending_connect.is_some_and(|at| at <= now) {
            self.pending_connect = None;
            if let Some(kind) = self.moves_on.filter(|_| !self.moved_on) {
                self.note(now, format!("the connect to the first address fails: {kind:?}"));
                let i = self.client.slots.len() - 1;
                let error = super::net::injected(kind);
                self.close(Who::Client, i, End::Reason(DisconnectReason::Io(error)), now, rng);
            } else if !self.connect_fails(now, rng) {
                self.accept(now, rng);
            }
        }
        let order = if rng.chance(50) { [Who::Client, Who::Server] } else { [Who::Server, Who::Client] };
        for who in order {
            self.serve(who, now, rng);
        }
        self.trigger(now, rng);
        self.settle();
    }

    /// One reactor round for one side: read, user commands, write, timers,
    /// for each of its links.
    pub(super) fn serve(&mut self, who: Who, now: Instant, rng: &mut Rng) {
        let mut ends = Vec::new();
        {
            let Pair { client, server, conns, .. } = self;
            let side = if who == Who::Client { client } else { server };
            side.env.now = now;
            side.env.sink.paused = rng.chance(10);
            let newest = side.slots.len().saturating_sub(1);
            for i in 0..side.slots.len() {
                let result = (|| -> Result<(), End<P::Stack>> {
                    let Side { slots, env, .. } = &mut *side;
                    let slot = &mut slots[i];
                    if let Some(c) = slot.conn {
                        read_slot(&mut slot.link, env, conns[c].incoming(who), rng).map_err(End::Reason)?;
                    }
                    if i == newest {
                        side.send_due(now);
                    }
                    let Side { slots, env, .. } = &mut *side;
                    let slot = &mut slots[i];
                    if let Some(c) = slot.conn {
                        write_slot(&mut slot.link, env, conns[c].outgoing(who), rng).map_err(End::Reason)?;
                        if slot.link.poll_shutdown() {
                            conns[c].outgoing(who).fin = true;
                        }
                    }
                    if slot.link.poll_timeout().is_some_and(|at| at <= now) {
                        slot.link.handle_timeout(&mut env.cx())?;
                    }
                    Ok(())
                })();
                if let Err(end) = result {
                    ends.push((i, end));
                }
            }
        }
        for (i, end) in ends.into_iter().rev() {
            self.close(who, i, end, now, rng);
        }
        if let Err(e) = self.side(who).absorb() {
            self.fail(e);
        }
    }

    /// Closes a link as the reactor's `close` does; a retry reconnects.
    pub(super) fn close(&mut self, who: Who, i: usize, end: End<P::Stack>, now: Instant, rng: &mut Rng) {
        let side = self.side(who);
        let Slot { link, conn } = side.slots.remove(i);
        let (id, gate) = (link.id, Arc::clone(link.gate()));
        let before = side.env.sink.list.len();
        side.env.now = now;
        let closed = link.close(end, &mut side.factory, &mut side.env.cx());
        if let Some(c) = conn {
            self.conns[c].outgoing(who).fin = true;
            self.conns[c].incoming(who).reader_gone = true;
            self.after_fault_close(c);
        }
        match closed {
            Closed::Reported => {
                let side = self.side(who);
                let last = side.env.sink.list.last().map(|e| format!("{e:?}")).unwrap_or_default();
                self.note(now, format!("{who:?} link {id} closed: {last}"));
            }
            Closed::Retry { codec, held, after_flush } => {
                if who != Who::Client || !self.fallback || self.retries > 0 {
                    self.fail(format!("unexpected retry of {who:?} link {id}"));
                }
                if self.client.env.sink.list.len() != before {
                    self.fail("a retry emitted events");
                }
                let (accepted, _) = self.client.sent_on(id);
                let rejected: Vec<u64> = self.client.rec.rejected.iter().map(|(_, t, _)| *t).collect();
                let expected: Vec<u64> = accepted.into_iter().filter(|t| !rejected.contains(t)).collect();
                let carried: Vec<u64> = held.iter().map(|m| tag_of(m).expect("tagged")).collect();
                if carried != expected {
                    self.fail(format!("retry carried {carried:x?}, expected every accepted message {expected:x?}"));
                }
                let (remote, dial) = self.dial(now, false);
                let mut link = Link::new(
                    id,
                    Direction::Outbound,
                    remote,
                    None,
                    codec,
                    gate,
                    held,
                    rng.bytes32(),
                    dial,
                    &mut self.client.env.cx(),
                )
                .unwrap_or_else(|e| self.fail(format!("retry refused to start: {e:?}")));
                if after_flush {
                    link.close_after_flush(&mut self.client.env.cx());
                }
                self.client.slots.push(Slot { link, conn: None });
                self.retries += 1;
                self.pending_connect = Some(now + ms(rng.range(1, 200)));
                self.note(now, format!("client retries as v1 with {} held, after_flush {after_flush}", carried.len()));
            }
            Closed::Next { addr, dial, held, after_flush } => {
                if who != Who::Client || self.moves_on.is_none() || self.moved_on || addr != server_addr(self.index) {
                    self.fail(format!("{who:?} link {id} moved on to {addr}: {dial:?}"));
                }
                if self.client.env.sink.list.len() != before {
                    self.fail("moving on emitted events");
                }
                self.moved_on = true;
                // As the reactor's `connect`: the next address, the same gate, held
                // messages and a flushed close carried over.
                let codec = self.client.factory.make(Direction::Outbound, &dial.target);
                let mut cx = self.client.env.cx();
                let mut link = Link::new(
                    id,
                    Direction::Outbound,
                    addr,
                    None,
                    codec,
                    gate,
                    VecDeque::new(),
                    rng.bytes32(),
                    Some(dial),
                    &mut cx,
                )
                .unwrap_or_else(|e| self.fail(format!("the next address refused to start: {e:?}")));
                let carried = held.len();
                link.hold(held);
                if after_flush {
                    link.close_after_flush(&mut self.client.env.cx());
                }
                self.client.slots.push(Slot { link, conn: None });
                self.pending_connect = Some(now + ms(rng.range(1, 200)));
                self.note(now, format!("client moves on to {addr} with {carried} held, after_flush {after_flush}"));
            }
        }
    }

    /// Both current links exist on the same connection and are announced.
    pub(super) fn both_announced(&self) -> bool {
        match (self.client.slots.last(), self.server.slots.last()) {
            (Some(c), Some(s)) => c.conn.is_some() && c.conn == s.conn && c.link.announced() && s.link.announced(),
            _ => false,
        }
    }

    pub(super) fn next_tag(&mut self, who: Who) -> u64 {
        let index = self.index;
        let user = &mut self.side(who).user;
        user.next_seq += 1;
        tag(index, who, user.next_seq)
    }

    pub(super) fn trigger(&mut self, now: Instant, rng: &mut Rng) {
        if self.fired {
            return;
        }
        match self.ending {
            Ending::Unreachable => {}
            Ending::Fault { fault, at } => self.arm(fault, at, now),
            Ending::Flush { who, at, early } => {
                if now < at || !(early || self.both_announced()) || self.side(who).slots.is_empty() {
                    return;
                }
                let extra = self.next_tag(who);
                let side = self.side(who);
                let slot = side.slots.last_mut().expect("checked above");
                side.env.now = now;
                slot.link.close_after_flush(&mut side.env.cx());
                side.user.flushing = true;
                side.user.schedule.clear();
                // One more message, which must be refused as closing.
                slot.link.gate().in_flight.fetch_add(1, Ordering::SeqCst);
                side.user.accepted.push((slot.link.id, extra));
                slot.link.queue(ping(extra), &mut side.env.cx());
                self.closing_tag = Some(extra);
                self.fired = true;
                self.note(now, format!("{who:?} closes after flush"));
            }
            Ending::Drop { who, at, rst } => {
                if now < at || !self.both_announced() {
                    return;
                }
                let i = self.side(who).slots.len() - 1;
                let conn = self.side(who).slots[i].conn.expect("announced, so connected");
                self.note(now, format!("{who:?} drops the connection (rst {rst})"));
                self.close(who, i, End::Reason(DisconnectReason::Requested), now, rng);
                if rst {
                    self.conns[conn].c2s.reset = true;
                    self.conns[conn].s2c.reset = true;
                }
                self.fired = true;
            }
            Ending::Corrupt { who, at } => {
                if now < at || !self.both_announced() {
                    return;
                }
                let side = self.side(who);
                let slot = side.slots.last().expect("announced");
                if !slot.link.poll_transmit().is_empty()
                    || side.user.blocked.is_some()
                    || slot.link.gate().closed().is_some()
                {
                    return; // wait for a frame boundary
                }
                let extra = self.next_tag(who);
                let side = self.side(who);
                let slot = side.slots.last_mut().expect("announced");
                slot.link.gate().in_flight.fetch_add(1, Ordering::SeqCst);
                side.user.accepted.push((slot.link.id, extra));
                side.env.now = now;
                slot.link.queue(inv(extra, 1), &mut side.env.cx());
                let frame_len = slot.link.poll_transmit().len() as u64;
                let conn = slot.conn.expect("announced");
                if frame_len == 0 {
                    self.fail("the corrupt message was not encoded at once");
                }
                let pipe = self.conns[conn].outgoing(who);
                pipe.corrupt_at = Some(pipe.written + frame_len - 1);
                self.corrupt_tag = Some(extra);
                self.fired = true;
                self.note(now, format!("{who:?} sends a corrupt frame ({frame_len} bytes)"));
            }
        }
    }
}

pub(super) trait Run {
    fn step(&mut self, now: Instant, rng: &mut Rng);
    fn done(&self) -> bool;
    fn check(&self);
    fn summary(&self) -> Summary;
    fn describe(&self) -> String;
}

impl<P: Wire> Run for Pair<P> {
    fn step(&mut self, now: Instant, rng: &mut Rng) {
        Pair::step(self, now, rng);
    }
    fn done(&self) -> bool {
        Pair::done(self)
    }
    fn check(&self) {
        Pair::check(self);
    }
    fn summary(&self) -> Summary {
        let (c, s) = (&self.client, &self.server);
        Summary {
            messages: c.rec.received.len() + s.rec.received.len(),
            refusals: c.user.refusals + s.user.refusals,
            writables: c.rec.writables + s.rec.writables,
            retries: self.retries,
            codec_errors: [c, s]
                .iter()
                .flat_map(|side| &side.rec.ended)
                .filter(|(_, o)| matches!(o, Outcome::Codec(_)))
                .count(),
            bytes: self.conns.iter().map(|c| c.c2s.written + c.s2c.written).sum(),
            faults: match self.fault() {
                Some(fault) if self.fault_hit() => {
                    let mut faults = [0; 4];
                    faults[fault.kind_index()] = 1;
                    faults
                }
                _ => [0; 4],
            },
            flukes: self.conns.iter().map(|c| c.c2s.flukes + c.s2c.flukes).sum(),
            moved_on: usize::from(self.moved_on),
        }
    }
    fn describe(&self) -> String {
        format!(
            "pair {} ({}): client {} links, server {} links, pending connect {:?}\n    {}",
            self.index,
            self.label,
            self.client.slots.len(),
            self.server.slots.len(),
            self.pending_connect.map(|at| at - self.t0),
            self.trace.join("\n    ")
        )
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Summary {
    pub(super) messages: usize,
    pub(super) refusals: usize,
    pub(super) writables: usize,
    pub(super) retries: usize,
    pub(super) codec_errors: usize,
    pub(super) bytes: u64,
    /// Injected faults that happened: in connect, accept, read, write.
    pub(super) faults: [usize; 4],
    /// Benign faults (`Interrupted`, spurious `WouldBlock`) returned.
    pub(super) flukes: usize,
    /// Clients that moved on to a name's next address.
    pub(super) moved_on: usize,
}

impl std::ops::AddAssign for Summary {
    fn add_assign(&mut self, other: Summary) {
        self.messages += other.messages;
        self.refusals += other.refusals;
        self.writables += other.writables;
        self.retries += other.retries;
        self.codec_errors += other.codec_errors;
        self.bytes += other.bytes;
        for (total, n) in self.faults.iter_mut().zip(other.faults) {
            *total += n;
        }
        self.flukes += other.flukes;
        self.moved_on += other.moved_on;
    }
}
