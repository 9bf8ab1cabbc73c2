//! Fuzzes the Bitcoin session state machine ([`Session`]) the way the
//! reactor drives it: messages from the peer and timer ticks, with a
//! simulated clock.
//!
//! Input layout: `config`, `timers`, our nonce (8 bytes, little-endian),
//! then events.
//! - `config` bit 0: inbound (else outbound); bit 1: `send_headers`; bit 2:
//!   `forward_session_messages`; bit 3: `relay` off; bits 4–5: our protocol
//!   version from [`PROTOCOL_VERSIONS`]; bit 6: require `NETWORK | WITNESS`;
//!   bit 7: `min_peer_version` 70016 (else Core's 31800).
//! - `timers` bits 0–1, 2–3, 4–5: the handshake timeout, ping interval and
//!   ping timeout, each from its table (Core's default, zero, one second,
//!   `Duration::MAX`); bit 6: we announce `NETWORK | WITNESS`; bit 7: a user
//!   agent name and version, or (when our nonce is odd) a whole user agent
//!   of over 256 bytes.
//! - Each event is a byte: the high nibble picks a clock advance from
//!   [`ADVANCES`] (applied first), the low nibble the event: 0 a tick, 1 a
//!   `version` built from the next 4 bytes (see [`peer_version`]), 2
//!   `verack`, 3 `ping` (nonce from the next byte), 4 a `pong` echoing our
//!   last ping, 5 a `pong` (nonce from the next byte), 6 `wtxidrelay`, 7
//!   `sendaddrv2`, 8 `sendheaders`, 9 any message as a wire record
//!   `[command byte][length][payload]` decoded by `wire::payload` (as in
//!   `v1_decode`; skipped when it does not decode: the codec would have
//!   dropped the peer), 10 `connected` (an outbound TCP connect completing),
//!   11 `ping_now`, 12–15 a tick.
//!
//! As in the reactor, `start` is called once at the beginning, `take_ready`
//! after every message, and a due deadline is ticked at once; the session is
//! dropped at its first error.
//!
//! Checks: no panic, and the session follows its documented contracts,
//! tracked by a small model: nothing is sent before our own `version`
//! (outbound: by `start`; inbound: as the answer to the peer's), and exactly
//! one is sent, carrying our configuration and nonce; the peer's `version` is
//! checked in the documented order (protocol version, services, an inbound
//! peer with one of our nonces) and answered with `wtxidrelay` and
//! `sendaddrv2` (common version 70016+) and `verack`; `verack` makes it
//! ready (`take_ready` true once), followed by `sendheaders` if configured
//! and a first ping; pings are answered with the same nonce; only one ping
//! is outstanding, the next one is due a ping interval after the last, and
//! an answer records the round trip; each handshake error (message before
//! `version`, second `version`, feature after `verack`) and timeout (no
//! handshake within the handshake timeout of the last `connected`, no pong
//! within the ping timeout) is reported exactly when it applies, with its
//! documented fault; messages are delivered or consumed as documented.
//! Deadlines: `next_deadline` is never in the past after a tick that
//! succeeded; whenever it is not in the future, a tick then has something to
//! do (sends or fails: the reactor never spins on it); and a tick before it
//! does nothing.

#![no_main]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use bitcoin::p2p::ServiceFlags;
use bitcoin::p2p::address::Address;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_network::VersionMessage;
use libfuzzer_sys::fuzz_target;
use peerlink::Direction;
use peerlink::event::Fault;
use peerlink::session::{
    Context, Delivery, Features, MAX_SUBVERSION_LENGTH, PeerVersion, Session, SessionConfig, SessionError,
    WTXID_RELAY_VERSION,
};
use peerlink::wire::Command;
use peerlink::wire::payload;

mod common;

use common::COMMANDS;

/// Our protocol version: 70016 (the default), then older ones.
const PROTOCOL_VERSIONS: [u32; 4] = [70016, 70015, 70017, 60002];
/// The peer's protocol version in a built `version` (event 1).
const PEER_VERSIONS: [u32; 8] = [70016, 70015, 70001, 31800, 31799, 0, u32::MAX, 70017];
/// Service bits of a built `version`, one per bit of its services byte.
const SERVICE_BITS: [u64; 8] = [1, 4, 8, 64, 1024, 2048, 1 << 24, 1 << 63];

const HANDSHAKE_TIMEOUTS: [Duration; 4] =
    [Duration::from_secs(60), Duration::ZERO, Duration::from_secs(1), Duration::MAX];
const PING_INTERVALS: [Duration; 4] = [Duration::from_secs(120), Duration::ZERO, Duration::from_secs(1), Duration::MAX];
const PING_TIMEOUTS: [Duration; 4] = [Duration::from_secs(1200), Duration::ZERO, Duration::from_secs(1), Duration::MAX];

/// Clock advances before an event: around each default timeout and the
/// one-second ones, exactly on them, and a day.
const ADVANCES: [Duration; 16] = [
    Duration::ZERO,
    Duration::from_millis(1),
    Duration::from_millis(999),
    Duration::from_secs(1),
    Duration::from_millis(1_001),
    Duration::from_secs(30),
    Duration::from_millis(59_999),
    Duration::from_secs(60),
    Duration::from_secs(61),
    Duration::from_millis(119_999),
    Duration::from_secs(120),
    Duration::from_secs(121),
    Duration::from_millis(1_199_999),
    Duration::from_secs(1200),
    Duration::from_secs(1201),
    Duration::from_secs(86_400),
];

/// The simulated clock stops well before the century that `later` uses for
/// "never" (inputs stay far below that anyway: a day per event at most).
const MAX_ELAPSED: Duration = Duration::from_secs(50 * 365 * 86_400);

const START_HEIGHT: i32 = 840_000;
const UNIX_TIME: i64 = 1_700_000_000;
const PEER_NONCE: u64 = 0xdead_beef_cafe_f00d;
/// The nonce of another (outbound) session of ours.
const OTHER_NONCE: u64 = 0x0123_4567_89ab_cdef;

static T0: LazyLock<Instant> = LazyLock::new(Instant::now);

fn remote() -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 7], 8333))
}

/// `at + d`, saturating to a century later: what the session documents for
/// `Duration::MAX` ("never").
fn later(at: Instant, d: Duration) -> Instant {
    const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    at.checked_add(d).unwrap_or_else(|| at.checked_add(NEVER).unwrap_or(at))
}

fn config(flags: u8, timers: u8, nonce: u64) -> SessionConfig {
    let both = ServiceFlags::NETWORK | ServiceFlags::WITNESS;
    let mut c = SessionConfig::default();
    c.send_headers = flags & 0x02 != 0;
    c.forward_session_messages = flags & 0x04 != 0;
    c.relay = flags & 0x08 == 0;
    c.protocol_version = PROTOCOL_VERSIONS[usize::from(flags >> 4) & 3];
    if flags & 0x40 != 0 {
        c.required_services = both;
    }
    if flags & 0x80 != 0 {
        c.min_peer_version = 70016;
    }
    c.handshake_timeout = HANDSHAKE_TIMEOUTS[usize::from(timers) & 3];
    c.ping_interval = PING_INTERVALS[usize::from(timers >> 2) & 3];
    c.ping_timeout = PING_TIMEOUTS[usize::from(timers >> 4) & 3];
    if timers & 0x40 != 0 {
        c.services = both;
    }
    if timers & 0x80 != 0 && nonce & 1 == 0 {
        c.user_agent_name = Some("fuzz".to_owned());
        c.user_agent_version = Some("0.1".to_owned());
    } else if timers & 0x80 != 0 {
        c.user_agent = Some(format!("/fuzz:{}/", "é".repeat(200)));
    }
    c
}

/// A peer's `version` from `[version][services][nonce][user agent]`: the
/// version from [`PEER_VERSIONS`] (bit 3: relay off), services from
/// [`SERVICE_BITS`], the nonce ours (0), another session's (1) or the
/// peer's own, and a user agent that grows past 256 bytes in 2-byte
/// characters (odd: after an odd-length prefix, so the cut falls inside one).
fn peer_version(bytes: [u8; 4], ours: u64) -> VersionMessage {
    let [v, s, n, ua] = bytes;
    let services = (0..8).filter(|i| s & (1 << i) != 0).fold(0u64, |acc, i| acc | SERVICE_BITS[i]);
    let nonce = match n {
        0 => ours,
        1 => OTHER_NONCE,
        n => PEER_NONCE ^ u64::from(n),
    };
    let prefix = if ua & 1 != 0 { "/btcd:0.24.2/" } else { "/Satoshi:29.0.0/" };
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    VersionMessage {
        version: PEER_VERSIONS[usize::from(v) & 7],
        services: ServiceFlags::from(services),
        timestamp: UNIX_TIME + 3,
        receiver: Address::new(&unspecified, ServiceFlags::NONE),
        sender: Address::new(&remote(), ServiceFlags::from(services)),
        nonce,
        user_agent: format!("{prefix}{}", "é".repeat(usize::from(ua >> 1))),
        start_height: 850_123,
        relay: v & 0x08 == 0,
    }
}

/// What the session must be doing, from the documented behaviour.
struct Model {
    direction: Direction,
    /// The peer's accepted `version`.
    peer: Option<VersionMessage>,
    ready: bool,
    announced: bool,
    sent_wtxidrelay: bool,
    features: Features,
    /// When the handshake clock started (creation, or the last `connected`).
    handshake_start: Instant,
    /// Our outstanding ping: nonce and when it was sent.
    ping: Option<(u64, Instant)>,
    /// When our next ping is due (once ready and none is outstanding).
    next_ping: Instant,
    /// The nonce of the last ping we sent (for event 4).
    last_ping_nonce: u64,
    last_rtt: Option<Duration>,
    min_rtt: Option<Duration>,
    /// Every message sent so far.
    sent: Vec<NetworkMessage>,
}

impl Model {
    fn deadline(&self, cfg: &SessionConfig) -> Instant {
        if !self.ready {
            return later(self.handshake_start, cfg.handshake_timeout);
        }
        match self.ping {
            Some((_, sent)) => later(sent, cfg.ping_timeout),
            None => self.next_ping,
        }
    }

    /// A ping in `out` (the only message there is expected to be), recorded
    /// as outstanding.
    fn took_ping(&mut self, out: &[NetworkMessage], now: Instant, cfg: &SessionConfig) {
        let [NetworkMessage::Ping(nonce)] = out else { panic!("expected one ping, got {out:?}") };
        self.ping = Some((*nonce, now));
        self.last_ping_nonce = *nonce;
        self.next_ping = later(now, cfg.ping_interval);
    }
}

struct Driver<'a> {
    session: Session,
    model: Model,
    cfg: &'a SessionConfig,
    local_nonces: &'a HashSet<u64>,
    nonce: u64,
    now: Instant,
}

impl Driver<'_> {
    /// Our `version` as the configuration describes it.
    fn check_our_version(&self, m: &NetworkMessage) {
        let NetworkMessage::Version(v) = m else { panic!("expected our version, got {m:?}") };
        assert_eq!(v.version, self.cfg.protocol_version);
        assert_eq!(v.services, self.cfg.services);
        assert_eq!(v.nonce, self.nonce);
        assert_eq!(v.nonce, self.session.local_nonce());
        assert_eq!(v.user_agent, self.cfg.user_agent());
        assert!(v.user_agent.len() <= MAX_SUBVERSION_LENGTH);
        assert_eq!(v.start_height, START_HEIGHT);
        assert_eq!(v.timestamp, UNIX_TIME);
        assert_eq!(v.relay, self.cfg.relay);
        assert_eq!(v.receiver.socket_addr().ok(), Some(remote()), "our version names the peer's address");
    }

    /// What `sent` must look like after every call.
    fn record(&mut self, out: &[NetworkMessage]) {
        self.model.sent.extend_from_slice(out);
        let sent = &self.model.sent;
        if let Some(first) = sent.first() {
            self.check_our_version(first);
        }
        let versions = sent.iter().filter(|m| matches!(m, NetworkMessage::Version(_))).count();
        assert!(versions <= 1, "{versions} versions sent");
    }

    /// The session's accessors against the model.
    fn check_state(&self) {
        let m = &self.model;
        assert_eq!(self.session.is_ready(), m.ready);
        assert_eq!(self.session.features(), m.features);
        assert!(!self.session.features().to_string().is_empty());
        assert_eq!(self.session.peer_version(), m.peer.as_ref().map(PeerVersion::from_message).as_ref());
        if let (Some(p), Some(v)) = (self.session.peer_version(), &m.peer) {
            // Cut to 256 bytes at a character boundary, and only if longer.
            let (cut, full) = (p.user_agent.len(), v.user_agent.len());
            assert!(v.user_agent.starts_with(&p.user_agent), "user agent is not a prefix");
            if full <= MAX_SUBVERSION_LENGTH {
                assert_eq!(cut, full);
            } else {
                assert!(cut <= MAX_SUBVERSION_LENGTH && cut > MAX_SUBVERSION_LENGTH - 4, "cut to {cut} bytes");
            }
        }
        assert_eq!(self.session.last_ping(), m.last_rtt);
        assert_eq!(self.session.min_ping(), m.min_rtt);
        assert_eq!(self.session.local_nonce(), self.nonce);
        assert_eq!(self.session.next_deadline(self.cfg), m.deadline(self.cfg), "next_deadline");
    }

    fn check_error(e: &SessionError) {
        assert!(!e.to_string().is_empty());
        let fault = match e {
            SessionError::MessageBeforeVersion { .. }
            | SessionError::DuplicateVersion
            | SessionError::FeatureAfterVerack { .. } => Fault::Misbehaviour,
            SessionError::HandshakeTimeout(_) | SessionError::PingTimeout(_) => Fault::Timeout,
            _ => Fault::Neither,
        };
        assert_eq!(e.fault(), fault, "fault of {e:?}");
    }

    /// What `on_message` must do: the delivery (or error) and the messages
    /// sent, updating the model.
    fn expect_message(&mut self, m: &NetworkMessage) -> (Result<Delivery, SessionError>, Vec<NetworkMessage>) {
        let cfg = self.cfg;
        let model = &mut self.model;
        let forward = |m: &NetworkMessage| {
            if cfg.forward_session_messages { Delivery::Deliver(m.clone()) } else { Delivery::Consumed }
        };
        let mut out = Vec::new();
        let result = match m {
            NetworkMessage::Version(v) if model.peer.is_none() => {
                if v.version < cfg.min_peer_version {
                    return (Err(SessionError::ObsoleteVersion { version: v.version, min: cfg.min_peer_version }), out);
                }
                if !v.services.has(cfg.required_services) {
                    let e = SessionError::MissingServices { required: cfg.required_services, announced: v.services };
                    return (Err(e), out);
                }
                if model.direction == Direction::Inbound && self.local_nonces.contains(&v.nonce) {
                    return (Err(SessionError::SelfConnection), out);
                }
                model.peer = Some(v.clone());
                if model.direction == Direction::Inbound {
                    // Our version (its contents are checked separately).
                    out.push(NetworkMessage::Version(v.clone()));
                }
                if v.version >= WTXID_RELAY_VERSION && cfg.protocol_version >= WTXID_RELAY_VERSION {
                    out.extend([NetworkMessage::WtxidRelay, NetworkMessage::SendAddrV2]);
                    model.sent_wtxidrelay = true;
                }
                out.push(NetworkMessage::Verack);
                Ok(forward(m))
            }
            NetworkMessage::Version(_) => Err(SessionError::DuplicateVersion),
            _ if model.peer.is_none() => Err(SessionError::MessageBeforeVersion { command: m.command() }),
            NetworkMessage::WtxidRelay | NetworkMessage::SendAddrV2 if model.ready => {
                Err(SessionError::FeatureAfterVerack { command: m.command() })
            }
            NetworkMessage::WtxidRelay => {
                model.features.wtxid_relay = model.sent_wtxidrelay;
                Ok(forward(m))
            }
            NetworkMessage::SendAddrV2 => {
                model.features.addr_v2 = true;
                Ok(forward(m))
            }
            NetworkMessage::Verack if !model.ready => {
                model.ready = true;
                if cfg.send_headers {
                    out.push(NetworkMessage::SendHeaders);
                }
                // The first ping goes at once (its nonce is checked later).
                out.push(NetworkMessage::Ping(0));
                Ok(forward(m))
            }
            // A second verack is ignored, as Core does.
            NetworkMessage::Verack => Ok(Delivery::Consumed),
            NetworkMessage::Ping(n) => {
                out.push(NetworkMessage::Pong(*n));
                Ok(forward(m))
            }
            NetworkMessage::Pong(n) => match model.ping {
                Some((ours, sent)) if ours == *n => {
                    let rtt = self.now.saturating_duration_since(sent);
                    model.last_rtt = Some(rtt);
                    model.min_rtt = Some(model.min_rtt.map_or(rtt, |m| m.min(rtt)));
                    model.ping = None;
                    Ok(forward(m))
                }
                // Not ours: the answer to a ping the user sent.
                _ if model.ready => Ok(Delivery::Deliver(m.clone())),
                _ => Ok(forward(m)),
            },
            NetworkMessage::SendHeaders => {
                model.features.send_headers = true;
                Ok(forward(m))
            }
            // Core ignores other messages before verack.
            _ if !model.ready => Ok(Delivery::Consumed),
            _ => Ok(Delivery::Deliver(m.clone())),
        };
        (result, out)
    }

    /// Feeds a message; false once the session failed.
    fn message(&mut self, m: NetworkMessage) -> bool {
        let was_ready = self.model.ready;
        let (expected, expected_out) = self.expect_message(&m);
        let mut out = Vec::new();
        let ctx = Context {
            config: self.cfg,
            start_height: START_HEIGHT,
            unix_time: UNIX_TIME,
            local_nonces: self.local_nonces,
        };
        let result = self.session.on_message(m.clone(), self.now, &ctx, &mut out);
        assert_eq!(result, expected, "on_message({m:?})");
        if let Err(e) = &result {
            Self::check_error(e);
            return false;
        }
        assert_eq!(out.len(), expected_out.len(), "on_message({m:?}) sent {out:?}, expected {expected_out:?}");
        for (got, want) in out.iter().zip(&expected_out) {
            match (got, want) {
                (NetworkMessage::Version(_), NetworkMessage::Version(_)) => self.check_our_version(got),
                (NetworkMessage::Ping(_), NetworkMessage::Ping(_)) => {}
                _ => assert_eq!(got, want, "on_message({m:?}) sent {out:?}"),
            }
        }
        if self.model.ready && !was_ready {
            let ping = out.last().cloned().expect("a ping at verack");
            self.model.took_ping(&[ping], self.now, self.cfg);
        }
        self.record(&out);
        // The reactor asks after every message.
        let take = self.model.ready && !self.model.announced;
        self.model.announced |= take;
        assert_eq!(self.session.take_ready(), take, "take_ready");
        assert!(!self.session.take_ready(), "take_ready is true only once");
        self.check_state();
        true
    }

    /// A tick at `now`; false once the session failed. `Ok(acted)`.
    fn tick(&mut self) -> Result<bool, ()> {
        let (cfg, now) = (self.cfg, self.now);
        let before = self.session.next_deadline(cfg);
        let m = &self.model;
        let expected = if !m.ready && now >= later(m.handshake_start, cfg.handshake_timeout) {
            Err(SessionError::HandshakeTimeout(cfg.handshake_timeout))
        } else if m.ping.is_some_and(|(_, sent)| now.saturating_duration_since(sent) >= cfg.ping_timeout) {
            Err(SessionError::PingTimeout(cfg.ping_timeout))
        } else {
            Ok(())
        };
        let ping_due = m.ready && m.ping.is_none() && now >= m.next_ping;
        let mut out = Vec::new();
        let result = self.session.tick(now, cfg, &mut out);
        assert_eq!(result, expected, "tick at +{:?}", now - *T0);
        if let Err(e) = &result {
            Self::check_error(e);
            assert!(before <= now, "tick failed before the deadline");
            return Err(());
        }
        if ping_due {
            self.model.took_ping(&out, now, cfg);
        } else {
            assert!(out.is_empty(), "tick sent {out:?}");
        }
        if now < before {
            assert!(out.is_empty(), "a tick before the deadline did something");
        }
        self.record(&out);
        self.check_state();
        assert!(self.session.next_deadline(cfg) >= now, "deadline in the past after a tick");
        Ok(!out.is_empty())
    }

    fn connected(&mut self) {
        if !self.model.ready {
            self.model.handshake_start = self.now;
        }
        self.session.connected(self.now, self.cfg);
        self.check_state();
    }

    fn ping_now(&mut self) {
        let mut out = Vec::new();
        self.session.ping_now(self.now, self.cfg, &mut out);
        self.model.next_ping = self.now;
        if self.model.ready && self.model.ping.is_none() {
            self.model.took_ping(&out, self.now, self.cfg);
        } else {
            assert!(out.is_empty(), "ping_now sent {out:?} with a ping outstanding or before verack");
        }
        self.record(&out);
        self.check_state();
    }

    /// The reactor's timer: a deadline that is not in the future is ticked
    /// at once, and that tick must do something. False once failed.
    fn due(&mut self) -> bool {
        for _ in 0..3 {
            if self.session.next_deadline(self.cfg) > self.now {
                return true;
            }
            match self.tick() {
                Ok(true) => {}
                Ok(false) => panic!("deadline due but the tick did nothing: the reactor would spin"),
                Err(()) => return false,
            }
        }
        panic!("deadline still due after three ticks");
    }
}

fn run(data: &[u8]) {
    let Some((&[flags, timers, n0, n1, n2, n3, n4, n5, n6, n7], mut events)) = data.split_first_chunk::<10>() else {
        return;
    };
    let nonce = u64::from_le_bytes([n0, n1, n2, n3, n4, n5, n6, n7]);
    let cfg = config(flags, timers, nonce);
    let direction = if flags & 0x01 != 0 { Direction::Inbound } else { Direction::Outbound };
    // The reactor's nonces of open outbound sessions: this one's if it is
    // outbound, and another one.
    let mut local_nonces = HashSet::from([OTHER_NONCE]);
    if direction == Direction::Outbound {
        local_nonces.insert(nonce);
    }
    let t0 = *T0;
    let session = Session::new(direction, remote(), nonce, t0, &cfg);
    let model = Model {
        direction,
        peer: None,
        ready: false,
        announced: false,
        sent_wtxidrelay: false,
        features: Features::default(),
        handshake_start: t0,
        ping: None,
        next_ping: t0,
        last_ping_nonce: 0,
        last_rtt: None,
        min_rtt: None,
        sent: Vec::new(),
    };
    let mut d = Driver { session, model, cfg: &cfg, local_nonces: &local_nonces, nonce, now: t0 };
    d.check_state();
    let mut out = Vec::new();
    d.session.start(&cfg, START_HEIGHT, UNIX_TIME, &mut out);
    match direction {
        Direction::Outbound => {
            assert_eq!(out.len(), 1, "start sends exactly our version: {out:?}");
            d.check_our_version(&out[0]);
        }
        Direction::Inbound => assert!(out.is_empty(), "inbound start sent {out:?}"),
    }
    d.record(&out);
    d.check_state();
    if !d.due() {
        return;
    }

    while let Some((&e, rest)) = events.split_first() {
        events = rest;
        d.now += ADVANCES[usize::from(e >> 4)];
        if d.now - t0 > MAX_ELAPSED {
            return;
        }
        let alive = match e & 0x0f {
            1 => {
                let Some((&v, rest)) = events.split_first_chunk::<4>() else { return };
                events = rest;
                d.message(NetworkMessage::Version(peer_version(v, nonce)))
            }
            2 => d.message(NetworkMessage::Verack),
            3 | 5 => {
                let Some((&b, rest)) = events.split_first() else { return };
                events = rest;
                let n = u64::from(b).wrapping_mul(0x0101_0101_0101_0101);
                d.message(if e & 0x0f == 3 { NetworkMessage::Ping(n) } else { NetworkMessage::Pong(n) })
            }
            4 => d.message(NetworkMessage::Pong(d.model.last_ping_nonce)),
            6 => d.message(NetworkMessage::WtxidRelay),
            7 => d.message(NetworkMessage::SendAddrV2),
            8 => d.message(NetworkMessage::SendHeaders),
            9 => {
                let Some((&c, rest)) = events.split_first() else { return };
                events = rest;
                let Some(bytes) = common::take_record(&mut events, c & 0x80 != 0) else { return };
                let mut raw = [0u8; 12];
                let command = COMMANDS[usize::from(c & 0x3f) % COMMANDS.len()];
                raw[..command.len()].copy_from_slice(command.as_bytes());
                let command = Command::from_wire(raw).expect("valid command");
                match payload::decode(&command, bytes) {
                    Ok(m) => d.message(m),
                    Err(_) => true,
                }
            }
            10 => {
                d.connected();
                true
            }
            11 => {
                d.ping_now();
                true
            }
            _ => d.tick().is_ok(),
        };
        if !alive || !d.due() {
            debug(|| format!("failed after {} messages sent, ready {}", d.model.sent.len(), d.model.ready));
            return;
        }
    }
    debug(|| format!("alive, {} messages sent, ready {}", d.model.sent.len(), d.model.ready));
}

/// Prints when `SESSION_FUZZ_DEBUG` is set (to check that seeds get deep).
fn debug(what: impl FnOnce() -> String) {
    static ON: LazyLock<bool> = LazyLock::new(|| std::env::var_os("SESSION_FUZZ_DEBUG").is_some());
    if *ON {
        eprintln!("session: {}", what());
    }
}

fuzz_target!(|data: &[u8]| run(data));
