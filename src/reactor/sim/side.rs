//! One side of a pair: its links, protocol, events, and its user; and how
//! the reactor reads and writes a link.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bitcoin::Network;
use bitcoin::p2p::message::NetworkMessage;

use super::super::link::{Ctx, Limits, Link, Pool, Sink};
use super::net::Pipe;
use super::{Rng, Who, Wire, tag_of};
use crate::event::{ConnectError, DisconnectReason, Event, SendError};
use crate::protocol::{Msg, Protocol};
use crate::stack::Stack;
use crate::types::PeerId;
use crate::wire::v1::MAX_PROTOCOL_MESSAGE_LENGTH;
use crate::wire::{BitcoinCodec, BitcoinFactory, TransportPolicy, WireError};

/// Events of one side, with a user that is sometimes behind.
pub(super) struct Events<S: Stack> {
    pub(super) list: Vec<Event<S>>,
    pub(super) paused: bool,
}

impl<P: Protocol> Sink<P> for Events<P::Stack> {
    fn emit(&mut self, event: Event<P::Stack>) {
        self.list.push(event);
    }
    fn paused(&self) -> bool {
        self.paused
    }
}

pub(super) struct Env<P: Protocol> {
    pub(super) proto: P,
    pub(super) proto_out: Vec<Msg<P>>,
    pub(super) sink: Events<P::Stack>,
    pub(super) pool: Pool,
    pub(super) limits: Limits,
    pub(super) now: Instant,
    pub(super) scratch: Vec<u8>,
}

impl<P: Protocol> Env<P> {
    pub(super) fn cx(&mut self) -> Ctx<'_, P, Events<P::Stack>> {
        Ctx {
            proto: &mut self.proto,
            proto_out: &mut self.proto_out,
            events: &mut self.sink,
            pool: &mut self.pool,
            limits: &self.limits,
            now: self.now,
        }
    }
}

pub(super) struct Slot<P: Wire> {
    pub(super) link: Link<BitcoinCodec, P>,
    /// Index into the pair's connections, once connected.
    pub(super) conn: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    Flushed,
    PeerClosed,
    Requested,
    Io(io::ErrorKind),
    Codec(&'static str),
    Other(String),
    ConnectTimeout,
    /// The TCP connect failed.
    ConnectIo(io::ErrorKind),
    /// The TCP connect to the proxy failed, or the connection to it broke.
    ProxyIo(io::ErrorKind),
    ConnectOther(String),
}

pub(super) fn outcome<S: Stack<CodecError = WireError>>(reason: &DisconnectReason<S>) -> Outcome {
    match reason {
        DisconnectReason::Flushed => Outcome::Flushed,
        DisconnectReason::PeerClosed => Outcome::PeerClosed,
        DisconnectReason::Requested => Outcome::Requested,
        DisconnectReason::Io(e) => Outcome::Io(e.kind()),
        DisconnectReason::Codec(e) => Outcome::Codec(match e {
            WireError::BadMagic { .. } => "BadMagic",
            WireError::BadChecksum { .. } => "BadChecksum",
            WireError::V2Auth => "V2Auth",
            WireError::V2Handshake(_) => "V2Handshake",
            _ => "other",
        }),
        other => Outcome::Other(format!("{other:?}")),
    }
}

pub(super) fn connect_outcome(error: &ConnectError) -> Outcome {
    match error {
        ConnectError::Timeout(_) => Outcome::ConnectTimeout,
        ConnectError::Io(e) => Outcome::ConnectIo(e.kind()),
        #[cfg(feature = "socks")]
        ConnectError::Proxy(crate::socks5::ProxyError { kind, .. }) => match kind {
            crate::socks5::ProxyFailure::Timeout { .. } => Outcome::ConnectTimeout,
            crate::socks5::ProxyFailure::Io(e) => Outcome::ProxyIo(e.kind()),
            other => Outcome::ConnectOther(format!("{other:?}")),
        },
        other => Outcome::ConnectOther(format!("{other:?}")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rejection {
    Closing,
    Disconnected,
    Other,
}

/// What one side saw, from its events.
#[derive(Default)]
pub(super) struct Record {
    pub(super) seen: usize,
    pub(super) announced: Vec<PeerId>,
    pub(super) ended: Vec<(PeerId, Outcome)>,
    pub(super) received: Vec<(PeerId, u64)>,
    pub(super) rejected: Vec<(PeerId, u64, Rejection)>,
    pub(super) writables: usize,
}

impl Record {
    pub(super) fn ended(&self, peer: PeerId) -> bool {
        self.ended.iter().any(|(p, _)| *p == peer)
    }
}

/// The application on one side: what it will send, and how far it got.
pub(super) struct User {
    pub(super) schedule: VecDeque<(Instant, NetworkMessage)>,
    pub(super) next_seq: u32,
    /// A send to this peer was refused: wait for its `Writable`. (A new
    /// peer, after the old one is gone, has a fresh gate.)
    pub(super) blocked: Option<PeerId>,
    /// A flushed close was asked for.
    pub(super) flushing: bool,
    /// Messages `queue` took, per link.
    pub(super) accepted: Vec<(PeerId, u64)>,
    pub(super) refusals: usize,
}

pub(super) struct Side<P: Wire> {
    pub(super) who: Who,
    pub(super) slots: Vec<Slot<P>>,
    pub(super) env: Env<P>,
    pub(super) factory: BitcoinFactory,
    pub(super) max_in_flight: usize,
    pub(super) user: User,
    pub(super) rec: Record,
}

impl<P: Wire> Side<P> {
    /// Takes in the events emitted since the last call, checking that none
    /// comes for a peer after its terminal event.
    pub(super) fn absorb(&mut self) -> Result<(), String> {
        let rec = &mut self.rec;
        for event in &self.env.sink.list[rec.seen..] {
            let peer = match event {
                Event::Connected { peer, .. }
                | Event::Ready { peer, .. }
                | Event::Message { peer, .. }
                | Event::Disconnected { peer, .. }
                | Event::ConnectFailed { peer, .. }
                | Event::SendRejected { peer, .. }
                | Event::Writable { peer } => *peer,
            };
            if rec.ended(peer) {
                return Err(format!("{:?}: event for peer {peer} after its end: {event:?}", self.who));
            }
            match event {
                Event::Connected { .. } | Event::Ready { .. } => {
                    if rec.announced.contains(&peer) {
                        return Err(format!("{:?}: peer {peer} announced twice", self.who));
                    }
                    rec.announced.push(peer);
                }
                Event::Message { message, .. } => {
                    if !rec.announced.contains(&peer) {
                        return Err(format!("{:?}: message before peer {peer} was announced", self.who));
                    }
                    let tag = tag_of(message).ok_or_else(|| format!("{:?}: untagged message {message:?}", self.who))?;
                    rec.received.push((peer, tag));
                }
                Event::Disconnected { reason, .. } => rec.ended.push((peer, outcome(reason))),
                Event::ConnectFailed { error, .. } => rec.ended.push((peer, connect_outcome(error))),
                Event::SendRejected { message, reason, .. } => {
                    let tag = tag_of(message).ok_or("untagged rejected message")?;
                    let kind = match reason {
                        SendError::Closing => Rejection::Closing,
                        SendError::Disconnected => Rejection::Disconnected,
                        _ => Rejection::Other,
                    };
                    rec.rejected.push((peer, tag, kind));
                }
                Event::Writable { .. } => {
                    rec.writables += 1;
                    if self.user.blocked == Some(peer) {
                        self.user.blocked = None;
                    }
                }
            }
        }
        rec.seen = self.env.sink.list.len();
        // A refused user must hear `Writable` by the time the gate is wide
        // open again (the hysteresis of `Gate::reopened`).
        if let Some(slot) = self.slots.last()
            && self.user.blocked == Some(slot.link.id)
            && !self.user.flushing
        {
            let gate = slot.link.gate();
            let wide_open =
                !gate.full.load(Ordering::SeqCst) && gate.in_flight.load(Ordering::SeqCst) <= gate.max_in_flight / 2;
            if wide_open {
                return Err(format!("{:?}: gate wide open again but no Writable", self.who));
            }
        }
        Ok(())
    }

    /// Offers the due messages of the schedule to the newest link, as
    /// `Handle::send` would: refused while the gate is closed.
    pub(super) fn send_due(&mut self, now: Instant) {
        let Some(slot) = self.slots.last_mut() else { return };
        if self.user.blocked.is_some_and(|peer| peer != slot.link.id) {
            self.user.blocked = None;
        }
        while self.user.blocked.is_none() && self.user.schedule.front().is_some_and(|(at, _)| *at <= now) {
            let gate = slot.link.gate();
            if gate.closed().is_some() {
                gate.refused.store(true, Ordering::SeqCst);
            }
            if gate.closed().is_some() {
                self.user.blocked = Some(slot.link.id);
                self.user.refusals += 1;
                return;
            }
            let (_, message) = self.user.schedule.pop_front().expect("checked above");
            self.user.accepted.push((slot.link.id, tag_of(&message).expect("tagged")));
            gate.in_flight.fetch_add(1, Ordering::SeqCst);
            slot.link.queue(message, &mut self.env.cx());
        }
    }

    /// Tags this side's user got accepted on `peer`, and those of them
    /// handed back.
    pub(super) fn sent_on(&self, peer: PeerId) -> (Vec<u64>, Vec<(u64, Rejection)>) {
        let accepted = self.user.accepted.iter().filter(|(p, _)| *p == peer).map(|(_, t)| *t).collect();
        let rejected = self.rec.rejected.iter().filter(|(p, ..)| *p == peer).map(|(_, t, k)| (*t, *k)).collect();
        (accepted, rejected)
    }

    pub(super) fn received_on(&self, peer: PeerId) -> Vec<u64> {
        self.rec.received.iter().filter(|(p, _)| *p == peer).map(|(_, t)| *t).collect()
    }

    pub(super) fn outcome_of(&self, peer: PeerId) -> Option<&Outcome> {
        self.rec.ended.iter().find(|(p, _)| *p == peer).map(|(_, o)| o)
    }
}

/// Reads like the reactor's `read`: decode what is buffered, stop when the
/// user is behind or our queue is over its limit, read into the link's own
/// buffer if a frame is under way and else into scratch for `handle_input`.
pub(super) fn read_slot<P: Wire>(
    link: &mut Link<BitcoinCodec, P>,
    env: &mut Env<P>,
    pipe: &mut Pipe,
    rng: &mut Rng,
) -> Result<(), DisconnectReason<P::Stack>> {
    let mut reads = rng.range(1, 4);
    loop {
        link.decode_buffered(&mut env.cx())?;
        if env.sink.paused || !link.wants_read(&env.limits) || reads == 0 {
            return Ok(());
        }
        reads -= 1;
        let chunk = rng.size(1, pipe.params.read_max);
        let now = env.now;
        let result = match link.read_with(&mut env.pool, now, |buf| {
            let n = buf.len().min(chunk);
            pipe.read(&mut buf[..n], now, rng)
        }) {
            Some(result) => result,
            None => {
                env.scratch.resize(chunk, 0);
                let mut scratch = std::mem::take(&mut env.scratch);
                let result = pipe.read(&mut scratch[..chunk], now, rng);
                let handled = match result {
                    Ok(n @ 1..) => link.handle_input(&scratch[..n], &mut env.cx()),
                    _ => Ok(()),
                };
                env.scratch = scratch;
                handled?;
                result
            }
        };
        match result {
            Ok(0) => return link.handle_eof(&mut env.cx()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                link.decode_buffered(&mut env.cx())?;
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(link.io_reason(e)),
        }
    }
}

/// Writes like the reactor's `write`, a few partial writes per round: a
/// write of nothing is an error, an interrupted one is tried again.
pub(super) fn write_slot<P: Wire>(
    link: &mut Link<BitcoinCodec, P>,
    env: &mut Env<P>,
    pipe: &mut Pipe,
    rng: &mut Rng,
) -> Result<(), DisconnectReason<P::Stack>> {
    for _ in 0..rng.range(1, 4) {
        if link.poll_transmit().is_empty() {
            break;
        }
        match pipe.write(link.poll_transmit(), env.now, rng) {
            Ok(0) => return Err(DisconnectReason::Io(io::ErrorKind::WriteZero.into())),
            Ok(n) => link.advance(n, &mut env.cx()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(DisconnectReason::Io(e)),
        }
    }
    Ok(())
}

pub(super) struct SideConfig {
    pub(super) policy: TransportPolicy,
    pub(super) limits: Limits,
    pub(super) max_in_flight: usize,
    pub(super) schedule: VecDeque<(Instant, NetworkMessage)>,
    pub(super) next_seq: u32,
}

pub(super) fn new_side<P: Wire>(who: Who, proto: P, config: SideConfig, t0: Instant) -> Side<P> {
    Side {
        who,
        slots: Vec::new(),
        env: Env {
            proto,
            proto_out: Vec::new(),
            sink: Events { list: Vec::new(), paused: false },
            pool: Pool::default(),
            limits: config.limits,
            now: t0,
            scratch: Vec::new(),
        },
        factory: BitcoinFactory::new(Network::Regtest, config.policy, MAX_PROTOCOL_MESSAGE_LENGTH),
        max_in_flight: config.max_in_flight,
        user: User {
            schedule: config.schedule,
            next_seq: config.next_seq,
            blocked: None,
            flushing: false,
            accepted: Vec::new(),
            refusals: 0,
        },
        rec: Record::default(),
    }
}
