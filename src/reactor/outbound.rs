//! Outbound attempts: choosing the route ([`Proxies::route`](super::dial::Proxies::route)), opening the
//! TCP connection, waiting for a host-name lookup, and moving on to the next
//! resolved address. The reactor's part of [`dial`](super::dial).

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Token};

use super::Reactor;
use super::dial::{Dial, Resolved, Route};
use super::link::Link;
use super::shared::Gate;
use crate::codec::Factory;
use crate::event::{ConnectError, Event, SendError};
use crate::handle::Disconnect;
use crate::protocol::{CodecFor, Msg, Protocol};
use crate::target::Target;
use crate::types::{Direction, PeerId};

/// An outbound attempt between links: its id, its gate, the messages sent
/// to it that wait as they would in a link, and a pending flushed close.
pub(super) struct Attempt<M> {
    pub(super) peer: PeerId,
    pub(super) gate: Arc<Gate>,
    pub(super) held: VecDeque<M>,
    pub(super) after_flush: bool,
}

/// An outbound attempt waiting for its host-name lookup.
pub(super) struct Lookup<M> {
    pub(super) target: Target,
    pub(super) deadline: Instant,
    pub(super) attempt: Attempt<M>,
}

impl<F, P> Reactor<F, P>
where
    F: Factory,
    F::Codec: CodecFor<P>,
    P: Protocol,
{
    /// Starts (or, for a retry, restarts) an outbound attempt to `target`
    /// by the route [`Proxies::route`](super::dial::Proxies::route) gives: through the proxy configured
    /// for it, to `resolved` (the address a retried connection reached), to
    /// the target's address, or after a lookup.
    pub(super) fn dial(
        &mut self,
        attempt: Attempt<Msg<P>>,
        target: Target,
        resolved: Option<SocketAddr>,
        deadline: Instant,
        codec: Option<F::Codec>,
    ) {
        if let Target::Socket(addr) = &target
            && self.shared.is_banned(addr.ip())
        {
            let error = ConnectError::Banned { addr: addr.ip() };
            return self.fail_connect(attempt, target, error);
        }
        match self.proxies.route(&target, resolved) {
            Ok(Route::Connect { addr, tunnel }) => {
                let dial = Dial { target, deadline, rest: Vec::new(), tunnel };
                self.connect(attempt, addr, dial, codec);
            }
            Ok(Route::Resolve(name, port)) => {
                let peer = attempt.peer;
                debug_assert!(codec.is_none(), "a retry goes back to the address reached");
                self.resolver.lookup(peer, name, port, deadline);
                self.timers.push(Reverse((deadline, peer.0)));
                self.resolving.insert(peer.0, Lookup { target, deadline, attempt });
            }
            Err(error) => self.fail_connect(attempt, target, error),
        }
    }

    /// Whether a new outbound attempt fits under the outbound caps
    /// (counted afresh: a scan of the links, for connects only).
    pub(super) fn outbound_room(&self) -> Result<(), ConnectError> {
        let limits = &self.env.limits;
        let (mut outbound, mut pending) = (self.resolving.len(), self.resolving.len());
        for slot in self.slots.values() {
            outbound += usize::from(slot.link.direction == Direction::Outbound);
            pending += usize::from(slot.link.is_pending());
        }
        if outbound >= limits.max_outbound {
            return Err(ConnectError::TooManyOutbound { max: limits.max_outbound });
        }
        if pending >= limits.max_pending_connects {
            return Err(ConnectError::TooManyPending { max: limits.max_pending_connects });
        }
        Ok(())
    }

    /// Opens the TCP connection to `addr` for `dial`, moving on to the
    /// next resolved address if the connect call itself fails.
    pub(super) fn connect(
        &mut self,
        attempt: Attempt<Msg<P>>,
        mut addr: SocketAddr,
        mut dial: Dial,
        codec: Option<F::Codec>,
    ) {
        let peer = attempt.peer;
        let stream = loop {
            // A resolved address may be banned: skip it without a syscall.
            let banned = dial.tunnel.is_none() && self.shared.is_banned(addr.ip());
            let registered = if banned {
                Err(io::Error::new(io::ErrorKind::PermissionDenied, "address banned"))
            } else {
                TcpStream::connect(addr)
            };
            let registered = registered.and_then(|mut stream| {
                let interest = Interest::READABLE | Interest::WRITABLE;
                self.poll.registry().register(&mut stream, Token(peer.0 as usize), interest).map(|()| stream)
            });
            let e = match registered {
                Ok(stream) => break stream,
                Err(e) => e,
            };
            match dial.rest.pop() {
                Some(next) => {
                    log::debug!("peer {peer}: connect to {addr} ({}) failed: {e}; trying {next}", dial.target);
                    addr = next;
                }
                None if banned => {
                    let error = ConnectError::Banned { addr: addr.ip() };
                    return self.fail_connect(attempt, dial.target, error);
                }
                None => {
                    let error = dial.io_error(e);
                    return self.fail_connect(attempt, dial.target, error);
                }
            }
        };
        let codec = codec.unwrap_or_else(|| self.factory.make(Direction::Outbound, &dial.target));
        let entropy = self.rng.bytes32();
        let target = dial.target.clone();
        let gate = Arc::clone(&attempt.gate);
        let mut cx = self.env.cx();
        // Held messages join once the link exists: if it cannot start, they
        // go back to the user.
        match Link::new(
            peer,
            Direction::Outbound,
            addr,
            None,
            codec,
            gate,
            VecDeque::new(),
            entropy,
            Some(dial),
            &mut cx,
        ) {
            Ok(mut link) => {
                link.hold(attempt.held);
                if attempt.after_flush {
                    link.close_after_flush(&mut cx);
                }
                self.insert(link, stream, false);
            }
            Err(e) => {
                let mut stream = stream;
                let _ = self.poll.registry().deregister(&mut stream);
                let error = ConnectError::Io(io::Error::other(crate::error::Report(&e).to_string()));
                self.fail_connect(attempt, target, error);
            }
        }
    }

    /// Reports an attempt that ends before it has a link.
    pub(super) fn fail_connect(&mut self, attempt: Attempt<Msg<P>>, target: Target, error: ConnectError) {
        let Attempt { peer, gate: _, held, after_flush: _ } = attempt;
        self.shared.remove_gate(peer);
        for message in held {
            self.env.out.emit(Event::SendRejected { peer, message, reason: SendError::Disconnected });
        }
        self.env.out.emit(Event::ConnectFailed { peer, target, error });
    }

    /// Lookups that finished: connect to the first address, keeping the
    /// others for if it fails.
    pub(super) fn apply_resolved(&mut self) {
        while let Ok(Resolved { peer, result }) = self.resolver.done.try_recv() {
            // Gone if cancelled or timed out meanwhile.
            let Some(Lookup { target, deadline, attempt }) = self.resolving.remove(&peer.0) else { continue };
            let name = target.host();
            if deadline <= self.env.now {
                let error = ConnectError::Timeout(self.env.limits.connect_timeout);
                self.fail_connect(attempt, target, error);
                continue;
            }
            match result {
                Ok(mut addrs) if !addrs.is_empty() => {
                    log::debug!("peer {peer}: {name} resolved to {addrs:?}");
                    let first = addrs.remove(0);
                    addrs.reverse();
                    let dial = Dial { target, deadline, rest: addrs, tunnel: None };
                    self.connect(attempt, first, dial, None);
                }
                Ok(_) => self.fail_connect(attempt, target, ConnectError::NoAddress { name }),
                Err(source) => self.fail_connect(attempt, target, ConnectError::Resolve { name, source }),
            }
        }
    }

    /// A message for a peer whose lookup is running waits with it; others
    /// are handed back.
    /// After a flushed disconnect it is refused as closing, as a link
    /// refuses it.
    pub(super) fn hold_for_lookup(&mut self, peer: PeerId, message: Msg<P>) -> Option<Msg<P>> {
        let Some(lookup) = self.resolving.get_mut(&peer.0) else { return Some(message) };
        let attempt = &mut lookup.attempt;
        if !attempt.after_flush {
            attempt.held.push_back(message);
            return None;
        }
        attempt.gate.in_flight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.env.out.emit(Event::SendRejected { peer, message, reason: SendError::Closing });
        if attempt.gate.reopened() {
            self.env.out.emit(Event::Writable { peer });
        }
        None
    }

    /// A disconnect for a peer whose lookup is running: a flushed one is
    /// noted for after the connect, an immediate one cancels. False if the
    /// peer has no lookup running.
    pub(super) fn disconnect_lookup(&mut self, peer: PeerId, mode: Disconnect) -> bool {
        let Some(lookup) = self.resolving.get_mut(&peer.0) else { return false };
        if mode == Disconnect::AfterFlush {
            lookup.attempt.after_flush = true;
        } else if let Some(Lookup { target, attempt, .. }) = self.resolving.remove(&peer.0) {
            self.fail_connect(attempt, target, ConnectError::Cancelled);
        }
        true
    }

    /// The deadline `at` of peer `id` passed: if it is a lookup's, the
    /// lookup took the whole connect timeout.
    pub(super) fn expire_lookup(&mut self, id: u64, at: Instant) {
        if self.resolving.get(&id).is_some_and(|lookup| lookup.deadline <= at)
            && let Some(Lookup { target, attempt, .. }) = self.resolving.remove(&id)
        {
            self.fail_connect(attempt, target, ConnectError::Timeout(self.env.limits.connect_timeout));
        }
    }
}
