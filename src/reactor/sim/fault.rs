//! Injected faults: I/O errors in connect, accept, read and write, each
//! ending its pair's story, and what each side must see then.
//!
//! A fault pair has one fault and no other ending. The link that meets the
//! fault ends with exactly one terminal event naming it, and the reactor
//! closes its socket: the other side sees a dropped connection (FIN, or RST
//! with `rst`). Benign faults (`Interrupted`, a read that finds nothing)
//! are drawn per pair as [`PipeParams::flaky`](super::net::PipeParams::flaky)
//! and change nothing.

use std::io;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::super::link::End;
use super::pair::{Ending, Pair};
use super::side::Outcome;
use super::{Rng, Who, Wire, inv};
use crate::event::DisconnectReason;
use crate::wire::TransportPolicy;

/// One injected fault.
#[derive(Debug, Clone, Copy)]
pub(super) enum Fault {
    /// The TCP connect fails with `kind` (the socket reports the error once
    /// writable, as the reactor's `finish_connect` finds it): the first
    /// attempt's, or with `retry` the v1 retry's in a fallback pair.
    Connect { kind: io::ErrorKind, retry: bool },
    /// The server cannot take the accepted connection: registering its
    /// socket fails (`read` is `None`: no link, no event, the socket is
    /// closed), or its link's first read fails with `read`.
    Accept { read: Option<io::ErrorKind>, rst: bool },
    /// From the pair's instant on, once both peers are announced (with
    /// `early`: once connected), `who`'s next read fails with `kind`.
    Read { who: Who, kind: io::ErrorKind, early: bool, rst: bool },
    /// As `Read`, for the next write (`WriteZero`: the write returns 0).
    Write { who: Who, kind: io::ErrorKind, early: bool, rst: bool },
}

pub(super) const CONNECT_KINDS: [io::ErrorKind; 5] = [
    io::ErrorKind::ConnectionRefused,
    io::ErrorKind::TimedOut,
    io::ErrorKind::HostUnreachable,
    io::ErrorKind::NetworkUnreachable,
    io::ErrorKind::Other,
];
const READ_KINDS: [io::ErrorKind; 5] = [
    io::ErrorKind::ConnectionReset,
    io::ErrorKind::TimedOut,
    io::ErrorKind::ConnectionAborted,
    io::ErrorKind::NetworkDown,
    io::ErrorKind::Other,
];
const WRITE_KINDS: [io::ErrorKind; 5] = [
    io::ErrorKind::BrokenPipe,
    io::ErrorKind::ConnectionReset,
    io::ErrorKind::TimedOut,
    io::ErrorKind::WriteZero,
    io::ErrorKind::Other,
];

impl Fault {
    /// A fault for a pair. A v2-preferred client retries as v1 after a
    /// connection that ends before the peer's first byte (Core's rule), so
    /// whether it does depends on timing: it gets no fault that can end a
    /// connection that early (at accept, or `early`). Neither does a client
    /// through a proxy, whose handshake with the proxy may be under way.
    pub(super) fn draw(rng: &mut Rng, client: TransportPolicy, proxy: bool, fallback: bool) -> Fault {
        let may_be_early = client != TransportPolicy::V2Preferred;
        let who = if rng.chance(50) { Who::Client } else { Who::Server };
        let rst = rng.chance(30);
        let early = may_be_early && !proxy && rng.chance(40);
        match rng.range(0, 9) {
            0 | 1 => Fault::Connect { kind: rng.pick(&CONNECT_KINDS), retry: fallback && rng.chance(50) },
            // Through a proxy the server's close reaches the client as the
            // proxy's FIN, after its replies.
            2 | 3 if may_be_early => {
                Fault::Accept { read: rng.chance(50).then(|| rng.pick(&READ_KINDS)), rst: rst && !proxy }
            }
            2..=5 => Fault::Read { who, kind: rng.pick(&READ_KINDS), early, rst },
            _ => Fault::Write { who, kind: rng.pick(&WRITE_KINDS), early, rst },
        }
    }

    /// Where the fault is, for [`Summary::faults`](super::pair::Summary::faults).
    pub(super) fn kind_index(self) -> usize {
        match self {
            Fault::Connect { .. } => 0,
            Fault::Accept { .. } => 1,
            Fault::Read { .. } => 2,
            Fault::Write { .. } => 3,
        }
    }

    /// How `who`'s link ends; `proxy`: the client dials through one.
    pub(super) fn outcome(self, who: Who, proxy: bool) -> Outcome {
        match self {
            Fault::Connect { kind, .. } if proxy && cfg!(feature = "socks") => Outcome::ProxyIo(kind),
            Fault::Connect { kind, .. } => Outcome::ConnectIo(kind),
            Fault::Accept { read: Some(kind), .. } if who == Who::Server => Outcome::Io(kind),
            Fault::Read { who: hit, kind, .. } | Fault::Write { who: hit, kind, .. } if who == hit => Outcome::Io(kind),
            Fault::Accept { rst, .. } | Fault::Read { rst, .. } | Fault::Write { rst, .. } => match rst {
                true => Outcome::Io(io::ErrorKind::ConnectionReset),
                false => Outcome::PeerClosed,
            },
        }
    }
}

impl<P: Wire> Pair<P> {
    /// The pair's fault, if it has one.
    pub(super) fn fault(&self) -> Option<Fault> {
        match self.ending {
            Ending::Fault { fault, .. } => Some(fault),
            _ => None,
        }
    }

    /// The pending connect is due: true if it fails by the pair's fault
    /// (and the client's link is closed as the reactor closes it).
    pub(super) fn connect_fails(&mut self, now: Instant, rng: &mut Rng) -> bool {
        let Some(Fault::Connect { kind, retry }) = self.fault() else { return false };
        if self.fired || retry != (self.retries > 0) {
            return false;
        }
        self.fired = true;
        self.note(now, format!("the connect fails: {kind:?}"));
        let i = self.client.slots.len() - 1;
        let error = super::net::injected(kind);
        self.close(Who::Client, i, End::Reason(DisconnectReason::Io(error)), now, rng);
        true
    }

    /// The connection `conn` was just accepted: true if the server cannot
    /// take it because registering its socket fails. The reactor logs that
    /// and drops the socket: the client sees it closed.
    pub(super) fn accept_fails(&mut self, conn: usize, now: Instant) -> bool {
        let Some(Fault::Accept { read, rst }) = self.fault() else { return false };
        if self.fired {
            return false;
        }
        let pipes = &mut self.conns[conn];
        match read {
            Some(kind) => {
                self.fired = true;
                pipes.c2s.read_fault = Some(kind);
                self.reset_on_close = rst.then_some(conn);
                self.note(now, format!("the server link's first read will fail: {kind:?} (rst {rst})"));
                false
            }
            None => {
                self.fired = true;
                pipes.s2c.fin = true;
                pipes.c2s.reader_gone = true;
                pipes.c2s.reset = rst;
                pipes.s2c.reset = rst;
                self.note(now, format!("registering the accepted socket fails (rst {rst})"));
                true
            }
        }
    }

    /// Arms a read or write fault once its time has come.
    pub(super) fn arm(&mut self, fault: Fault, at: Instant, now: Instant) {
        let (who, early, rst) = match fault {
            Fault::Read { who, early, rst, .. } | Fault::Write { who, early, rst, .. } => (who, early, rst),
            Fault::Connect { .. } | Fault::Accept { .. } => return,
        };
        let connected = self.side(who).slots.last().and_then(|s| s.conn);
        if now < at || !(early || self.both_announced()) {
            return;
        }
        let Some(conn) = connected else { return };
        self.fired = true;
        self.reset_on_close = rst.then_some(conn);
        match fault {
            Fault::Read { kind, .. } => self.conns[conn].incoming(who).read_fault = Some(kind),
            Fault::Write { kind, .. } => {
                self.conns[conn].outgoing(who).write_fault = Some(kind);
                self.give_something_to_write(who, now);
            }
            Fault::Connect { .. } | Fault::Accept { .. } => unreachable!("returned above"),
        }
        self.note(now, format!("armed {fault:?}"));
    }

    /// A write fault needs a write: with nothing queued and the user free
    /// to send, the user sends one more message (otherwise queued or held
    /// messages, or the handshake, are written soon).
    fn give_something_to_write(&mut self, who: Who, now: Instant) {
        let side = self.side(who);
        let slot = side.slots.last().expect("connected");
        if !slot.link.poll_transmit().is_empty() || side.user.blocked.is_some() || slot.link.gate().closed().is_some() {
            return;
        }
        let extra = self.next_tag(who);
        let side = self.side(who);
        let slot = side.slots.last_mut().expect("connected");
        slot.link.gate().in_flight.fetch_add(1, Ordering::SeqCst);
        side.user.accepted.push((slot.link.id, extra));
        side.env.now = now;
        slot.link.queue(inv(extra, 1), &mut side.env.cx());
    }

    /// After the fault's link closed its socket: with `rst` the other side
    /// sees a reset, not an end of stream.
    pub(super) fn after_fault_close(&mut self, conn: usize) {
        let hit = self.conns[conn].c2s.fault_hit || self.conns[conn].s2c.fault_hit;
        if hit && self.reset_on_close == Some(conn) {
            self.conns[conn].c2s.reset = true;
            self.conns[conn].s2c.reset = true;
            self.reset_on_close = None;
        }
    }

    /// The fault happened (the pipe returned it, or the connect or accept
    /// failed).
    pub(super) fn fault_hit(&self) -> bool {
        match self.fault() {
            None => false,
            Some(Fault::Connect { .. } | Fault::Accept { read: None, .. }) => self.fired,
            Some(_) => self.conns.iter().any(|c| c.c2s.fault_hit || c.s2c.fault_hit),
        }
    }
}
