//! The per-connection protocol layer between codec and user: a passthrough
//! for generic codecs, and the Bitcoin session (or raw mode with statistics)
//! for the built-in codec. Crate-private: the reactor is generic over it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bitcoin::p2p::message::NetworkMessage;

use std::convert::Infallible;

use crate::codec::Codec;
use crate::peer::{CommandStats, PeerInfo, PeerStats};
use crate::reactor::shared::Shared;
use crate::session::{Context, Delivery, Mode, Session, SessionConfig, SessionError};
use crate::stack::{Framed, LinkInfo, Stack};
use crate::types::Direction;

/// What the reactor tells the protocol about a new connection.
pub(crate) struct Meta {
    pub(crate) direction: Direction,
    /// The peer's address as our `version` reports it: the TCP peer's, but
    /// never a proxy's.
    pub(crate) remote: SocketAddr,
}

/// A protocol's message type.
pub(crate) type Msg<P> = <<P as Protocol>::Stack as Stack>::Message;
/// A protocol's error type.
pub(crate) type ProtoError<P> = <<P as Protocol>::Stack as Stack>::ProtocolError;
/// A protocol's peer information.
pub(crate) type Info<P> = <<P as Protocol>::Stack as Stack>::Info;

/// The codec type a protocol's stack needs.
pub(crate) trait CodecFor<P: Protocol>:
    Codec<Message = Msg<P>, Error = <P::Stack as Stack>::CodecError>
{
}
impl<P: Protocol, C: Codec<Message = Msg<P>, Error = <P::Stack as Stack>::CodecError>> CodecFor<P> for C {}

/// The layer between codec and user, shared by all connections (`Conn` is
/// its per-connection state). Sans-IO: time comes in, messages go out.
pub(crate) trait Protocol: Send + 'static {
    type Stack: Stack;
    type Conn: Send + 'static;

    /// Whether peers are announced with `Connected` (else with `Ready`).
    fn announce_on_connect(&self) -> bool;
    fn open(&mut self, meta: &Meta, now: Instant, out: &mut Vec<Msg<Self>>) -> Self::Conn;
    /// `Ok(Some(m))`: deliver `m` to the user.
    fn received(
        &mut self,
        conn: &mut Self::Conn,
        message: Msg<Self>,
        wire_size: usize,
        now: Instant,
        out: &mut Vec<Msg<Self>>,
    ) -> Result<Option<Msg<Self>>, ProtoError<Self>>;
    /// An outbound connection's TCP connect completed; its protocol clocks
    /// start now.
    fn connected(&mut self, conn: &mut Self::Conn, now: Instant);
    /// True once, when the peer became ready.
    fn take_ready(&mut self, conn: &mut Self::Conn) -> bool;
    fn sent(&mut self, conn: &mut Self::Conn, message: &Msg<Self>, wire_size: usize);
    fn tick(&mut self, conn: &mut Self::Conn, now: Instant, out: &mut Vec<Msg<Self>>) -> Result<(), ProtoError<Self>>;
    fn deadline(&self, conn: &Self::Conn) -> Option<Instant>;
    fn closed(&mut self, conn: &Self::Conn);
    fn info(&self, conn: &Self::Conn, link: LinkInfo) -> Info<Self>;
    fn stats(&self, conn: &Self::Conn, stats: &mut PeerStats);
    /// What inbound eviction weighs, as far as the protocol knows it.
    fn traits(&self, _conn: &Self::Conn) -> PeerTraits {
        PeerTraits::default()
    }
}

/// A connection's traits that inbound eviction weighs (see
/// `reactor::eviction`); unknown ones are `None`/`false`, which makes a
/// peer easier to evict.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PeerTraits {
    pub(crate) min_ping: Option<std::time::Duration>,
    pub(crate) relay_txs: bool,
    pub(crate) relevant_services: bool,
    pub(crate) bloom_filter: bool,
}

/// No state: every message goes to the user.
pub(crate) struct Passthrough<C>(std::marker::PhantomData<fn() -> C>);

impl<C> Passthrough<C> {
    pub(crate) fn new() -> Self {
        Passthrough(std::marker::PhantomData)
    }
}

impl<C: Codec> Protocol for Passthrough<C> {
    type Stack = Framed<C>;
    type Conn = ();

    fn announce_on_connect(&self) -> bool {
        true
    }
    fn open(&mut self, _: &Meta, _: Instant, _: &mut Vec<C::Message>) {}
    fn received(
        &mut self,
        _: &mut (),
        m: C::Message,
        _: usize,
        _: Instant,
        _: &mut Vec<C::Message>,
    ) -> Result<Option<C::Message>, Infallible> {
        Ok(Some(m))
    }
    fn connected(&mut self, _: &mut (), _: Instant) {}
    fn take_ready(&mut self, _: &mut ()) -> bool {
        false
    }
    fn sent(&mut self, _: &mut (), _: &C::Message, _: usize) {}
    fn tick(&mut self, _: &mut (), _: Instant, _: &mut Vec<C::Message>) -> Result<(), Infallible> {
        Ok(())
    }
    fn deadline(&self, _: &()) -> Option<Instant> {
        None
    }
    fn closed(&mut self, _: &()) {}
    fn info(&self, _: &(), link: LinkInfo) -> LinkInfo {
        link
    }
    fn stats(&self, _: &(), _: &mut PeerStats) {}
}

/// Bitcoin: the session state machine (session mode) or passive observation
/// (raw mode), plus per-command statistics in both.
pub(crate) struct Bitcoin {
    mode: Mode,
    config: SessionConfig,
    shared: Arc<Shared>,
    /// Nonces of our outbound `version` messages, for self-connection checks.
    local_nonces: HashSet<u64>,
    rng: u64,
}

pub(crate) struct BitcoinConn {
    session: Session,
    commands: Vec<Counted>,
    /// Raw mode: the peer's version, observed passively.
    raw_version: Option<crate::session::PeerVersion>,
}

impl Bitcoin {
    pub(crate) fn new(mode: Mode, config: SessionConfig, shared: Arc<Shared>, seed: u64) -> Self {
        Bitcoin { mode, config, shared, local_nonces: HashSet::new(), rng: seed }
    }

    fn random(&mut self) -> u64 {
        crate::session::splitmix64(&mut self.rng)
    }
}

fn unix_time() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// One command's counters, keyed by the message's variant: comparing two
/// discriminants is one integer compare, where the command string would be
/// a string compare per entry per message.
#[derive(Clone)]
struct Counted {
    variant: std::mem::Discriminant<NetworkMessage>,
    stats: CommandStats,
}

fn count(stats: &mut Vec<Counted>, message: &NetworkMessage, wire_size: usize, inbound: bool) {
    let variant = std::mem::discriminant(message);
    let entry = match stats.iter().position(|c| c.variant == variant) {
        Some(i) => &mut stats[i].stats,
        None => {
            // Unknown commands share one entry, so a peer cannot grow the list.
            let command = match message {
                NetworkMessage::Unknown { .. } => "(unknown)",
                known => known.cmd(),
            };
            stats.push(Counted {
                variant,
                stats: CommandStats { command: command.to_owned(), ..CommandStats::default() },
            });
            &mut stats.last_mut().expect("just pushed").stats
        }
    };
    if inbound {
        entry.msgs_in += 1;
        entry.bytes_in += wire_size as u64;
    } else {
        entry.msgs_out += 1;
        entry.bytes_out += wire_size as u64;
    }
}

impl Protocol for Bitcoin {
    type Stack = crate::stack::Bitcoin;
    type Conn = BitcoinConn;

    fn announce_on_connect(&self) -> bool {
        self.mode == Mode::Raw
    }

    fn open(&mut self, link: &Meta, now: Instant, out: &mut Vec<NetworkMessage>) -> BitcoinConn {
        let nonce = self.random();
        let mut session = Session::new(link.direction, link.remote, nonce, now, &self.config);
        if self.mode == Mode::Session {
            if link.direction == Direction::Outbound {
                self.local_nonces.insert(nonce);
            }
            let height = self.shared.start_height.load(Ordering::Relaxed);
            session.start(&self.config, height, unix_time(), out);
        }
        BitcoinConn { session, commands: Vec::new(), raw_version: None }
    }

    fn received(
        &mut self,
        conn: &mut BitcoinConn,
        message: NetworkMessage,
        wire_size: usize,
        now: Instant,
        out: &mut Vec<NetworkMessage>,
    ) -> Result<Option<NetworkMessage>, SessionError> {
        count(&mut conn.commands, &message, wire_size, true);
        if self.mode == Mode::Raw {
            if let NetworkMessage::Version(v) = &message {
                conn.raw_version = Some(crate::session::PeerVersion::from_message(v));
            }
            return Ok(Some(message));
        }
        let ctx = Context {
            config: &self.config,
            start_height: self.shared.start_height.load(Ordering::Relaxed),
            unix_time: unix_time(),
            local_nonces: &self.local_nonces,
        };
        match conn.session.on_message(message, now, &ctx, out)? {
            Delivery::Deliver(m) => Ok(Some(m)),
            Delivery::Consumed => Ok(None),
        }
    }

    fn connected(&mut self, conn: &mut BitcoinConn, now: Instant) {
        conn.session.connected(now, &self.config);
    }

    fn take_ready(&mut self, conn: &mut BitcoinConn) -> bool {
        self.mode == Mode::Session && conn.session.take_ready()
    }

    fn sent(&mut self, conn: &mut BitcoinConn, message: &NetworkMessage, wire_size: usize) {
        count(&mut conn.commands, message, wire_size, false);
    }

    fn tick(
        &mut self,
        conn: &mut BitcoinConn,
        now: Instant,
        out: &mut Vec<NetworkMessage>,
    ) -> Result<(), SessionError> {
        if self.mode == Mode::Raw {
            return Ok(());
        }
        conn.session.tick(now, &self.config, out)
    }

    fn deadline(&self, conn: &BitcoinConn) -> Option<Instant> {
        (self.mode == Mode::Session).then(|| conn.session.next_deadline(&self.config))
    }

    fn closed(&mut self, conn: &BitcoinConn) {
        self.local_nonces.remove(&conn.session.local_nonce());
    }

    fn info(&self, conn: &BitcoinConn, link: LinkInfo) -> PeerInfo {
        PeerInfo {
            peer: link.peer,
            addr: link.addr,
            target: link.target,
            proxy: link.proxy,
            local_addr: link.local_addr,
            direction: link.direction,
            transport: link.transport,
            version: match self.mode {
                Mode::Session => conn.session.peer_version().cloned(),
                Mode::Raw => conn.raw_version.clone(),
            },
            features: conn.session.features(),
            ready: conn.session.is_ready(),
        }
    }

    fn traits(&self, conn: &BitcoinConn) -> PeerTraits {
        use bitcoin::p2p::ServiceFlags;
        let version = conn.session.peer_version().or(conn.raw_version.as_ref());
        let services = version.map_or(ServiceFlags::NONE, |v| v.services);
        // Core's desirable services: full or pruned blocks, with witnesses.
        let blocks = services.has(ServiceFlags::NETWORK) || services.has(ServiceFlags::NETWORK_LIMITED);
        let filterload = conn.commands.iter().any(|c| c.stats.command == "filterload" && c.stats.msgs_in > 0);
        PeerTraits {
            min_ping: conn.session.min_ping(),
            relay_txs: version.is_some_and(|v| v.relay),
            relevant_services: blocks && services.has(ServiceFlags::WITNESS),
            bloom_filter: filterload,
        }
    }

    fn stats(&self, conn: &BitcoinConn, stats: &mut PeerStats) {
        let mut commands: Vec<CommandStats> = conn.commands.iter().map(|c| c.stats.clone()).collect();
        commands.sort_by(|a, b| a.command.cmp(&b.command));
        stats.per_command = commands;
        stats.last_ping = conn.session.last_ping();
        stats.min_ping = conn.session.min_ping();
    }
}

#[cfg(test)]
mod tests {
    use bitcoin::p2p::message::{CommandString, NetworkMessage};

    use super::count;

    #[test]
    fn commands_are_counted_per_variant_and_unknown_commands_share_one_entry() {
        let mut stats = Vec::new();
        let unknown = |name: &str| NetworkMessage::Unknown {
            command: CommandString::try_from(name.to_owned()).unwrap(),
            payload: vec![],
        };
        count(&mut stats, &NetworkMessage::Ping(1), 32, true);
        count(&mut stats, &NetworkMessage::Ping(2), 32, false);
        count(&mut stats, &NetworkMessage::Pong(2), 32, true);
        for name in ["aaa", "bbb", "ccc"] {
            count(&mut stats, &unknown(name), 24, true);
        }
        let table: Vec<_> = stats
            .iter()
            .map(|c| (c.stats.command.as_str(), c.stats.msgs_in, c.stats.bytes_in, c.stats.msgs_out, c.stats.bytes_out))
            .collect();
        assert_eq!(table, [("ping", 1, 32, 1, 32), ("pong", 1, 32, 0, 0), ("(unknown)", 3, 72, 0, 0)]);
    }
}
