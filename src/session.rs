//! The Bitcoin session state machine (sans-IO).
//!
//! A [`Session`] runs one peer's handshake and keepalive. It never touches a
//! socket or a clock: the reactor passes `now` and the messages that arrived,
//! and sends what the session appends to its output. Every timeout can
//! therefore be tested with a simulated clock.
//!
//! Handshake (both directions, following Bitcoin Core's net_processing):
//! 1. The outbound side sends `version` at once; the inbound side answers the
//!    peer's `version` with its own.
//! 2. On the peer's `version`: check the protocol version, the required
//!    services and our own nonce (self-connection), then send `wtxidrelay`
//!    (BIP339, if the peer speaks 70016+), `sendaddrv2` (BIP155) and
//!    `verack`.
//! 3. On the peer's `verack` the peer is ready; `sendheaders` (BIP130)
//!    follows if configured.
//!
//! Keepalive: pings are answered at once; a ping is sent every
//! [`SessionConfig::ping_interval`] and the peer is dropped if its pong takes
//! longer than [`SessionConfig::ping_timeout`].

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bitcoin::p2p::message::{CommandString, NetworkMessage};
use bitcoin::p2p::message_network::VersionMessage;
use bitcoin::p2p::{Address, ServiceFlags};

use crate::types::{Direction, later};

/// Protocol version we announce: 70016 (BIP339 `wtxidrelay`).
pub const PROTOCOL_VERSION: u32 = 70016;

/// First protocol version that negotiates `wtxidrelay` (Core's
/// `WTXID_RELAY_VERSION`).
pub const WTXID_RELAY_VERSION: u32 = 70016;

/// Bitcoin Core's `MIN_PEER_PROTO_VERSION` (src/net_processing.h).
pub const MIN_PEER_PROTO_VERSION: u32 = 31800;

/// Bitcoin Core's `MAX_SUBVERSION_LENGTH` (src/net_processing.h), in bytes.
pub const MAX_SUBVERSION_LENGTH: usize = 256;

/// Time allowed for the handshake: Core's `-peertimeout` default, 60 s.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// Core's `PING_INTERVAL` (src/net_processing.cpp): 2 minutes.
pub const PING_INTERVAL: Duration = Duration::from_secs(2 * 60);

/// Core's `TIMEOUT_INTERVAL` (src/net.h): 20 minutes without a pong.
pub const PING_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// How the library treats the Bitcoin protocol on each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The library runs version/verack, feature negotiation and ping/pong.
    /// Users see [`Event::Ready`](crate::Event::Ready) and only the messages
    /// the session does not handle itself.
    Session,
    /// No state machine: every message is delivered and nothing is sent for
    /// the user. [`Event::Connected`](crate::Event::Connected) announces peers.
    Raw,
}

/// Session options. Defaults follow Bitcoin Core.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SessionConfig {
    /// Protocol version we announce. Default 70016.
    pub protocol_version: u32,
    /// Services we announce. Default none. The reactor adds `NODE_P2P_V2`
    /// when [`Config::transport`](crate::Config::transport) accepts v2 (see
    /// [`Config::local_services`](crate::Config::local_services)).
    pub services: ServiceFlags,
    /// Application name for the BIP14 user agent (`/peerlink:V/NAME:VERSION/`).
    pub user_agent_name: Option<String>,
    /// Application version for the user agent.
    pub user_agent_version: Option<String>,
    /// A complete user agent that replaces the one built from the names
    /// above (still capped at 256 bytes).
    pub user_agent: Option<String>,
    /// Our `relay` flag (BIP37): whether the peer should announce transactions.
    /// Default true.
    pub relay: bool,
    /// Send `sendheaders` after `verack`. Default false.
    pub send_headers: bool,
    /// Disconnect peers announcing an older protocol version. Default 31800.
    pub min_peer_version: u32,
    /// Disconnect peers that do not announce all of these services.
    /// Default none (a light client sets `COMPACT_FILTERS`, for example).
    pub required_services: ServiceFlags,
    /// Handshake deadline. Default 60 s.
    pub handshake_timeout: Duration,
    /// Interval between our pings. Default 2 min.
    pub ping_interval: Duration,
    /// Disconnect when a pong takes longer than this. Default 20 min.
    pub ping_timeout: Duration,
    /// Also deliver the messages the session handles (version, verack,
    /// ping, pong, wtxidrelay, sendaddrv2, sendheaders). Default false.
    pub forward_session_messages: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            protocol_version: PROTOCOL_VERSION,
            services: ServiceFlags::NONE,
            user_agent_name: None,
            user_agent_version: None,
            user_agent: None,
            relay: true,
            send_headers: false,
            min_peer_version: MIN_PEER_PROTO_VERSION,
            required_services: ServiceFlags::NONE,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            ping_interval: PING_INTERVAL,
            ping_timeout: PING_TIMEOUT,
            forward_session_messages: false,
        }
    }
}

impl SessionConfig {
    /// The BIP14 user agent: `/peerlink:VERSION/` followed by
    /// `NAME:VERSION/` when an application name is set, truncated to
    /// [`MAX_SUBVERSION_LENGTH`] bytes.
    pub fn user_agent(&self) -> String {
        let mut ua = format!("/peerlink:{}/", env!("CARGO_PKG_VERSION"));
        if let Some(custom) = &self.user_agent {
            ua = custom.clone();
        } else if let Some(name) = &self.user_agent_name {
            let clean = |s: &str| s.chars().filter(|c| !matches!(c, '/' | ':' | '(' | ')')).collect::<String>();
            ua.push_str(&clean(name));
            if let Some(v) = &self.user_agent_version {
                ua.push(':');
                ua.push_str(&clean(v));
            }
            ua.push('/');
        }
        let end = cap_len(&ua);
        ua.truncate(end);
        ua
    }
}

/// Why a session ended a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionError {
    /// A message other than `version` arrived first.
    MessageBeforeVersion {
        /// Its command.
        command: CommandString,
    },
    /// A second `version`.
    DuplicateVersion,
    /// `wtxidrelay` or `sendaddrv2` after `verack` (BIP339, BIP155).
    FeatureAfterVerack {
        /// Its command.
        command: CommandString,
    },
    /// The peer's protocol version is below the minimum.
    ObsoleteVersion {
        /// Version announced by the peer.
        version: u32,
        /// Configured minimum.
        min: u32,
    },
    /// The peer lacks required services.
    MissingServices {
        /// Required by configuration.
        required: ServiceFlags,
        /// Announced by the peer.
        announced: ServiceFlags,
    },
    /// The peer's `version` carried our own nonce: we connected to ourselves.
    SelfConnection,
    /// No `version` and `verack` within the handshake timeout.
    HandshakeTimeout(Duration),
    /// No `pong` within the ping timeout.
    PingTimeout(Duration),
}

impl SessionError {
    /// Whose fault the disconnect was: a broken handshake is
    /// [`Misbehaviour`](crate::event::Fault::Misbehaviour), a missed
    /// deadline a [`Timeout`](crate::event::Fault::Timeout), and an old
    /// version, missing services or a connection to ourselves neither.
    pub fn fault(&self) -> crate::event::Fault {
        use crate::event::Fault;
        match self {
            SessionError::MessageBeforeVersion { .. }
            | SessionError::DuplicateVersion
            | SessionError::FeatureAfterVerack { .. } => Fault::Misbehaviour,
            SessionError::HandshakeTimeout(_) | SessionError::PingTimeout(_) => Fault::Timeout,
            SessionError::ObsoleteVersion { .. }
            | SessionError::MissingServices { .. }
            | SessionError::SelfConnection => Fault::Neither,
        }
    }
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::MessageBeforeVersion { command } => write!(f, "{command} received before version"),
            SessionError::DuplicateVersion => f.write_str("second version message"),
            SessionError::FeatureAfterVerack { command } => write!(f, "{command} received after verack"),
            SessionError::ObsoleteVersion { version, min } => {
                write!(f, "peer protocol version {version} is below the minimum {min}")
            }
            SessionError::MissingServices { required, announced } => {
                write!(f, "peer lacks required services {required} (announced {announced})")
            }
            SessionError::SelfConnection => f.write_str("connected to ourselves (version nonce is ours)"),
            SessionError::HandshakeTimeout(d) => write!(f, "handshake not complete after {} s", d.as_secs_f64()),
            SessionError::PingTimeout(d) => write!(f, "no pong within {} s", d.as_secs_f64()),
        }
    }
}

impl std::error::Error for SessionError {}

/// Features negotiated during the handshake.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    /// Both sides sent `wtxidrelay` (BIP339): announce transactions by wtxid.
    pub wtxid_relay: bool,
    /// The peer sent `sendaddrv2` (BIP155): it accepts `addrv2`.
    pub addr_v2: bool,
    /// The peer sent `sendheaders` (BIP130): announce blocks with `headers`.
    /// It usually arrives just after `verack`, so it may become true after
    /// the peer is announced.
    pub send_headers: bool,
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names = Vec::new();
        if self.wtxid_relay {
            names.push("wtxidrelay");
        }
        if self.addr_v2 {
            names.push("addrv2");
        }
        if self.send_headers {
            names.push("sendheaders");
        }
        if names.is_empty() { f.write_str("none") } else { f.write_str(&names.join(",")) }
    }
}

/// What the peer said about itself in its `version` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerVersion {
    /// Protocol version.
    pub version: u32,
    /// Announced services.
    pub services: ServiceFlags,
    /// BIP14 user agent.
    pub user_agent: String,
    /// Height of its best chain when it connected.
    pub start_height: i32,
    /// Whether it wants transaction announcements (BIP37).
    pub relay: bool,
    /// The nonce of its `version`.
    pub nonce: u64,
}

impl PeerVersion {
    /// The details of a `version` message, with the user agent cut to
    /// [`MAX_SUBVERSION_LENGTH`] bytes (at a character boundary).
    pub fn from_message(v: &VersionMessage) -> PeerVersion {
        let end = cap_len(&v.user_agent);
        PeerVersion {
            version: v.version,
            services: v.services,
            user_agent: v.user_agent[..end].to_owned(),
            start_height: v.start_height,
            relay: v.relay,
            nonce: v.nonce,
        }
    }
}

/// Handshake progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    AwaitVersion,
    AwaitVerack,
    Ready,
}

/// One peer's session state machine.
#[derive(Debug)]
pub struct Session {
    direction: Direction,
    remote: SocketAddr,
    local_nonce: u64,
    rng: u64,
    stage: Stage,
    peer: Option<PeerVersion>,
    features: Features,
    sent_wtxidrelay: bool,
    handshake_deadline: Instant,
    ping: Option<(u64, Instant)>,
    next_ping: Instant,
    last_rtt: Option<Duration>,
    min_rtt: Option<Duration>,
    announced: bool,
}

/// What the session did with an incoming message.
#[derive(Debug, PartialEq)]
pub enum Delivery {
    /// Hand this message to the user.
    Deliver(NetworkMessage),
    /// The session handled it.
    Consumed,
}

impl Session {
    /// A session for a new connection. `nonce` goes into our `version` and
    /// seeds the ping nonces; the caller draws it from a random source.
    pub fn new(direction: Direction, remote: SocketAddr, nonce: u64, now: Instant, config: &SessionConfig) -> Self {
        Session {
            direction,
            remote,
            local_nonce: nonce,
            rng: nonce ^ 0x9E37_79B9_7F4A_7C15,
            stage: Stage::AwaitVersion,
            peer: None,
            features: Features::default(),
            sent_wtxidrelay: false,
            handshake_deadline: later(now, config.handshake_timeout),
            ping: None,
            next_ping: now,
            last_rtt: None,
            min_rtt: None,
            announced: false,
        }
    }

    /// The transport connection is up (outbound connects take time): the
    /// handshake has its whole timeout from `now`.
    pub fn connected(&mut self, now: Instant, config: &SessionConfig) {
        if self.stage != Stage::Ready {
            self.handshake_deadline = later(now, config.handshake_timeout);
        }
    }

    /// The nonce in our `version` message.
    pub fn local_nonce(&self) -> u64 {
        self.local_nonce
    }

    /// Whether the handshake is complete.
    pub fn is_ready(&self) -> bool {
        self.stage == Stage::Ready
    }

    /// The peer's `version` details, once received.
    pub fn peer_version(&self) -> Option<&PeerVersion> {
        self.peer.as_ref()
    }

    /// Negotiated features so far.
    pub fn features(&self) -> Features {
        self.features
    }

    /// Round-trip time of the last answered ping.
    pub fn last_ping(&self) -> Option<Duration> {
        self.last_rtt
    }

    /// Smallest round-trip time seen.
    pub fn min_ping(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// Returns true once, the first time it is called after the handshake
    /// completed: the caller announces the peer then.
    pub fn take_ready(&mut self) -> bool {
        if self.stage == Stage::Ready && !self.announced {
            self.announced = true;
            return true;
        }
        false
    }

    fn next_nonce(&mut self) -> u64 {
        // Ping nonces only need to be unpredictable enough to match answers;
        // the seed comes from the caller's random source.
        splitmix64(&mut self.rng)
    }

    fn version_message(&self, config: &SessionConfig, start_height: i32, unix_time: i64) -> NetworkMessage {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        NetworkMessage::Version(VersionMessage {
            version: config.protocol_version,
            services: config.services,
            timestamp: unix_time,
            receiver: Address::new(&self.remote, ServiceFlags::NONE),
            sender: Address::new(&unspecified, config.services),
            nonce: self.local_nonce,
            user_agent: config.user_agent(),
            start_height,
            relay: config.relay,
        })
    }

    /// Call once when the connection opens: the outbound side sends `version`.
    pub fn start(&mut self, config: &SessionConfig, start_height: i32, unix_time: i64, out: &mut Vec<NetworkMessage>) {
        if self.direction == Direction::Outbound {
            out.push(self.version_message(config, start_height, unix_time));
        }
    }

    /// Handles an incoming message. [`Context::local_nonces`] holds the nonces
    /// of our own outbound `version` messages (self-connection check).
    pub fn on_message(
        &mut self,
        message: NetworkMessage,
        now: Instant,
        ctx: &Context<'_>,
        out: &mut Vec<NetworkMessage>,
    ) -> Result<Delivery, SessionError> {
        let config = ctx.config;
        let forward = |m: NetworkMessage| {
            if config.forward_session_messages { Delivery::Deliver(m) } else { Delivery::Consumed }
        };
        match (&message, self.stage) {
            (NetworkMessage::Version(v), Stage::AwaitVersion) => {
                self.on_version(v, ctx, out)?;
                Ok(forward(message))
            }
            (NetworkMessage::Version(_), _) => Err(SessionError::DuplicateVersion),
            // `command()` borrows the static name of every known message;
            // only an unknown message's own command is moved out.
            (_, Stage::AwaitVersion) => Err(SessionError::MessageBeforeVersion { command: command_of(message) }),
            (NetworkMessage::WtxidRelay, Stage::AwaitVerack) => {
                self.features.wtxid_relay = self.sent_wtxidrelay;
                Ok(forward(message))
            }
            (NetworkMessage::SendAddrV2, Stage::AwaitVerack) => {
                self.features.addr_v2 = true;
                Ok(forward(message))
            }
            (NetworkMessage::WtxidRelay | NetworkMessage::SendAddrV2, Stage::Ready) => {
                Err(SessionError::FeatureAfterVerack { command: message.command() })
            }
            (NetworkMessage::Verack, Stage::AwaitVerack) => {
                self.stage = Stage::Ready;
                if config.send_headers {
                    out.push(NetworkMessage::SendHeaders);
                }
                // First ping right away, to measure the round trip.
                self.next_ping = now;
                self.maybe_ping(now, config, out);
                Ok(forward(message))
            }
            (NetworkMessage::Verack, Stage::Ready) => Ok(Delivery::Consumed),
            (NetworkMessage::Ping(n), _) => {
                out.push(NetworkMessage::Pong(*n));
                Ok(forward(message))
            }
            (NetworkMessage::Pong(n), _) => {
                let ours = self.on_pong(*n, now);
                // Not ours: the answer to a ping the user sent. Before
                // verack the user cannot have pinged (and the peer is not
                // announced yet), so the pong is handled like the others.
                Ok(if !ours && self.stage == Stage::Ready { Delivery::Deliver(message) } else { forward(message) })
            }
            (NetworkMessage::SendHeaders, _) => {
                self.features.send_headers = true;
                Ok(forward(message))
            }
            // Core ignores other messages before verack.
            (_, Stage::AwaitVerack) => Ok(Delivery::Consumed),
            (_, Stage::Ready) => Ok(Delivery::Deliver(message)),
        }
    }

    /// The peer's `version`: checks it, then answers (our `version` if
    /// inbound, the BIP339/BIP155 announcements, `verack`).
    fn on_version(
        &mut self,
        v: &VersionMessage,
        ctx: &Context<'_>,
        out: &mut Vec<NetworkMessage>,
    ) -> Result<(), SessionError> {
        let config = ctx.config;
        if v.version < config.min_peer_version {
            return Err(SessionError::ObsoleteVersion { version: v.version, min: config.min_peer_version });
        }
        if !v.services.has(config.required_services) {
            return Err(SessionError::MissingServices { required: config.required_services, announced: v.services });
        }
        if self.direction == Direction::Inbound && ctx.local_nonces.contains(&v.nonce) {
            return Err(SessionError::SelfConnection);
        }
        self.peer = Some(PeerVersion::from_message(v));
        if self.direction == Direction::Inbound {
            out.push(self.version_message(config, ctx.start_height, ctx.unix_time));
        }
        // Core sends both only when the common version is 70016+: some
        // older implementations reject unknown messages.
        if v.version >= WTXID_RELAY_VERSION && config.protocol_version >= WTXID_RELAY_VERSION {
            out.push(NetworkMessage::WtxidRelay);
            out.push(NetworkMessage::SendAddrV2);
            self.sent_wtxidrelay = true;
        }
        out.push(NetworkMessage::Verack);
        self.stage = Stage::AwaitVerack;
        Ok(())
    }

    /// A `pong`: true if it answers our own ping (the round trip is then
    /// recorded).
    fn on_pong(&mut self, nonce: u64, now: Instant) -> bool {
        match self.ping {
            Some((ours, sent)) if nonce == ours => {
                let rtt = now.saturating_duration_since(sent);
                self.last_rtt = Some(rtt);
                self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
                self.ping = None;
                true
            }
            _ => false,
        }
    }

    fn maybe_ping(&mut self, now: Instant, config: &SessionConfig, out: &mut Vec<NetworkMessage>) {
        if self.stage == Stage::Ready && self.ping.is_none() && now >= self.next_ping {
            let nonce = self.next_nonce();
            out.push(NetworkMessage::Ping(nonce));
            self.ping = Some((nonce, now));
            self.next_ping = later(now, config.ping_interval);
        }
    }

    /// Sends a ping now if none is outstanding, to measure the round trip.
    pub fn ping_now(&mut self, now: Instant, config: &SessionConfig, out: &mut Vec<NetworkMessage>) {
        self.next_ping = now;
        self.maybe_ping(now, config, out);
    }

    /// Applies timeouts and sends due pings.
    pub fn tick(
        &mut self,
        now: Instant,
        config: &SessionConfig,
        out: &mut Vec<NetworkMessage>,
    ) -> Result<(), SessionError> {
        if self.stage != Stage::Ready && now >= self.handshake_deadline {
            return Err(SessionError::HandshakeTimeout(config.handshake_timeout));
        }
        if let Some((_, sent)) = self.ping
            && now.saturating_duration_since(sent) >= config.ping_timeout
        {
            return Err(SessionError::PingTimeout(config.ping_timeout));
        }
        self.maybe_ping(now, config, out);
        Ok(())
    }

    /// When [`tick`](Self::tick) next has something to do.
    pub fn next_deadline(&self, config: &SessionConfig) -> Instant {
        if self.stage != Stage::Ready {
            return self.handshake_deadline;
        }
        match self.ping {
            Some((_, sent)) => later(sent, config.ping_timeout),
            None => self.next_ping,
        }
    }
}

/// The command of `message`, without allocating: known messages have a static
/// name, and an unknown message gives up the command it owns.
fn command_of(message: NetworkMessage) -> CommandString {
    match message {
        NetworkMessage::Unknown { command, .. } => command,
        known => known.command(),
    }
}

/// Length of `s` cut to [`MAX_SUBVERSION_LENGTH`] bytes at a character
/// boundary (the limit counts bytes, not characters).
fn cap_len(s: &str) -> usize {
    let mut end = s.len().min(MAX_SUBVERSION_LENGTH);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// splitmix64: a small generator for nonces, seeded from a random source.
pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Context the session needs from its environment for one message.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Session options.
    pub config: &'a SessionConfig,
    /// Our current best height, for our `version`.
    pub start_height: i32,
    /// Seconds since the Unix epoch, for our `version`.
    pub unix_time: i64,
    /// The nonces of our outbound `version` messages whose connections are
    /// open: an inbound peer's `version` carrying one of them is ourselves
    /// (Core's `CConnman::CheckIncomingNonce`).
    pub local_nonces: &'a HashSet<u64>,
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
