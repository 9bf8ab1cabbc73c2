//! Session state-machine tests (simulated clock).

use super::*;

use bitcoin::Txid;
use bitcoin::absolute::LockTime;
use bitcoin::hashes::Hash;
use bitcoin::p2p::message_blockdata::Inventory;
use bitcoin::transaction::{Transaction, Version};

const OUR_NONCE: u64 = 0x1122_3344_5566_7788;
const PEER_NONCE: u64 = 0xdead_beef_cafe_f00d;
const START_HEIGHT: i32 = 840_000;
const UNIX_TIME: i64 = 1_700_000_000;

fn remote() -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 7], 8333))
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// No nonce of ours is in use.
static NO_NONCES: std::sync::LazyLock<HashSet<u64>> = std::sync::LazyLock::new(HashSet::new);

fn ctx(cfg: &SessionConfig) -> Context<'_> {
    Context { config: cfg, start_height: START_HEIGHT, unix_time: UNIX_TIME, local_nonces: &NO_NONCES }
}

fn peer_version_msg(version: u32, services: ServiceFlags, nonce: u64) -> VersionMessage {
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    VersionMessage {
        version,
        services,
        timestamp: UNIX_TIME + 3,
        receiver: Address::new(&unspecified, ServiceFlags::NONE),
        sender: Address::new(&remote(), services),
        nonce,
        user_agent: "/Satoshi:27.0.0/".to_owned(),
        start_height: 850_123,
        relay: true,
    }
}

fn peer_version(version: u32) -> NetworkMessage {
    NetworkMessage::Version(peer_version_msg(version, ServiceFlags::NETWORK | ServiceFlags::WITNESS, PEER_NONCE))
}

fn commands(out: &[NetworkMessage]) -> Vec<String> {
    out.iter().map(|m| m.command().as_ref().to_owned()).collect()
}

fn ping_nonce(out: &[NetworkMessage]) -> u64 {
    let pings: Vec<u64> = out
        .iter()
        .filter_map(|m| match m {
            NetworkMessage::Ping(n) => Some(*n),
            _ => None,
        })
        .collect();
    assert_eq!(pings.len(), 1, "expected exactly one ping in {:?}", commands(out));
    pings[0]
}

fn sample_tx() -> Transaction {
    Transaction { version: Version::TWO, lock_time: LockTime::ZERO, input: vec![], output: vec![] }
}

fn sample_inv() -> NetworkMessage {
    NetworkMessage::Inv(vec![Inventory::Transaction(Txid::all_zeros())])
}

/// Feeds a message and asserts it succeeded.
fn feed(
    s: &mut Session,
    m: NetworkMessage,
    now: Instant,
    cfg: &SessionConfig,
    out: &mut Vec<NetworkMessage>,
) -> Delivery {
    s.on_message(m, now, &ctx(cfg), out).expect("message accepted")
}

/// An outbound session brought to the ready state at `t0`. Returns the
/// session and the nonce of the ping sent at verack.
fn ready_outbound(cfg: &SessionConfig, t0: Instant) -> (Session, u64) {
    let mut s = Session::new(Direction::Outbound, remote(), OUR_NONCE, t0, cfg);
    let mut out = Vec::new();
    s.start(cfg, START_HEIGHT, UNIX_TIME, &mut out);
    feed(&mut s, peer_version(70016), t0, cfg, &mut out);
    feed(&mut s, NetworkMessage::WtxidRelay, t0, cfg, &mut out);
    feed(&mut s, NetworkMessage::SendAddrV2, t0, cfg, &mut out);
    out.clear();
    feed(&mut s, NetworkMessage::Verack, t0, cfg, &mut out);
    assert!(s.is_ready());
    let nonce = ping_nonce(&out);
    (s, nonce)
}

// ---------------------------------------------------------------------------
// Outbound handshake
// ---------------------------------------------------------------------------

#[test]
fn outbound_start_sends_exactly_our_version() {
    let t0 = Instant::now();
    let cfg = SessionConfig {
        services: ServiceFlags::NETWORK | ServiceFlags::WITNESS,
        relay: false,
        ..SessionConfig::default()
    };
    let mut s = Session::new(Direction::Outbound, remote(), OUR_NONCE, t0, &cfg);
    assert_eq!(s.local_nonce(), OUR_NONCE);
    let mut out = Vec::new();
    s.start(&cfg, 123_456, UNIX_TIME, &mut out);
    assert_eq!(out.len(), 1, "{:?}", commands(&out));
    let NetworkMessage::Version(v) = &out[0] else { panic!("expected version, got {:?}", out[0]) };
    assert_eq!(v.version, 70016);
    assert_eq!(v.version, PROTOCOL_VERSION);
    assert_eq!(v.services, ServiceFlags::NETWORK | ServiceFlags::WITNESS);
    assert_eq!(v.sender.services, ServiceFlags::NETWORK | ServiceFlags::WITNESS);
    assert_eq!(v.user_agent, "/peerlink:0.1.0/");
    assert_eq!(v.start_height, 123_456);
    assert!(!v.relay);
    assert_eq!(v.nonce, OUR_NONCE);
    assert_eq!(v.timestamp, UNIX_TIME);
    assert_eq!(v.receiver.socket_addr().unwrap(), remote());
    assert!(!s.is_ready());
    assert!(!s.take_ready());
    assert!(s.peer_version().is_none());
}

#[test]
fn outbound_start_relay_true_and_default_services() {
    let t0 = Instant::now();
    let cfg = SessionConfig::default();
    let mut s = Session::new(Direction::Outbound, remote(), 42, t0, &cfg);
    let mut out = Vec::new();
    s.start(&cfg, 0, UNIX_TIME, &mut out);
    let NetworkMessage::Version(v) = &out[0] else { panic!("expected version") };
    assert!(v.relay);
    assert_eq!(v.services, ServiceFlags::NONE);
    assert_eq!(v.start_height, 0);
    assert_eq!(v.nonce, 42);
}

#[test]
fn outbound_user_agent_with_app_name_and_version() {
    let t0 = Instant::now();
    let cfg = SessionConfig {
        user_agent_name: Some("myapp".to_owned()),
        user_agent_version: Some("2.3".to_owned()),
        ..SessionConfig::default()
    };
    assert_eq!(cfg.user_agent(), "/peerlink:0.1.0/myapp:2.3/");
    let mut s = Session::new(Direction::Outbound, remote(), OUR_NONCE, t0, &cfg);
    let mut out = Vec::new();
    s.start(&cfg, START_HEIGHT, UNIX_TIME, &mut out);
    let NetworkMessage::Version(v) = &out[0] else { panic!("expected version") };
    assert_eq!(v.user_agent, "/peerlink:0.1.0/myapp:2.3/");
}

#[test]
fn user_agent_name_without_version() {
    let cfg = SessionConfig { user_agent_name: Some("myapp".to_owned()), ..SessionConfig::default() };
    assert_eq!(cfg.user_agent(), "/peerlink:0.1.0/myapp/");
}

#[test]
fn user_agent_strips_separators() {
    let cfg = SessionConfig {
        user_agent_name: Some("my/app:x".to_owned()),
        user_agent_version: Some("1:2/3".to_owned()),
        ..SessionConfig::default()
    };
    assert_eq!(cfg.user_agent(), "/peerlink:0.1.0/myappx:123/");
}

#[test]
fn user_agent_capped_at_max_subversion_length() {
    let cfg = SessionConfig {
        user_agent_name: Some("a/b:".repeat(200)),
        user_agent_version: Some("9".repeat(100)),
        ..SessionConfig::default()
    };
    let ua = cfg.user_agent();
    assert_eq!(ua.len(), MAX_SUBVERSION_LENGTH);
    assert_eq!(MAX_SUBVERSION_LENGTH, 256);
    assert!(ua.starts_with("/peerlink:0.1.0/abab"));
    // No '/' or ':' from the name survives.
    assert!(!ua["/peerlink:0.1.0/".len()..].contains(['/', ':']), "{ua}");

    // Multi-byte characters are never split.
    let cfg = SessionConfig { user_agent_name: Some("é".repeat(300)), ..SessionConfig::default() };
    let ua = cfg.user_agent();
    assert!(ua.len() <= MAX_SUBVERSION_LENGTH);
    assert!(ua.len() >= MAX_SUBVERSION_LENGTH - 1);

    // The capped user agent is the one actually sent.
    let t0 = Instant::now();
    let mut s = Session::new(Direction::Outbound, remote(), OUR_NONCE, t0, &cfg);
    let mut out = Vec::new();
    s.start(&cfg, START_HEIGHT, UNIX_TIME, &mut out);
    let NetworkMessage::Version(v) = &out[0] else { panic!("expected version") };
    assert_eq!(v.user_agent, ua);
}

#[test]
fn outbound_answers_peer_version_with_features_then_verack() {
    let t0 = Instant::now();
    let cfg = SessionConfig::default();
    let mut s = Session::new(Direction::Outbound, remote(), OUR_NONCE, t0, &cfg);
    let mut out = Vec::new();
    s.start(&cfg, START_HEIGHT, UNIX_TIME, &mut out);
    out.clear();
    let d = feed(&mut s, peer_version(70016), t0, &cfg, &mut out);
    assert_eq!(d, Delivery::Consumed);
    assert_eq!(out, vec![NetworkMessage::WtxidRelay, NetworkMessage::SendAddrV2, NetworkMessage::Verack]);
    assert!(!s.is_ready());
    assert!(!s.take_ready());
}

#[test]
fn outbound_full_handshake_ready_features_and_ping() {
    let t0 = Instant::now();
    let cfg = SessionConfig::default();
    let mut s = Session::new(Direction::Outbound, remote(), OUR_NONCE, t0, &cfg);
    let mut out = Vec::new();
    s.start(&cfg, START_HEIGHT, UNIX_TIME, &mut out);
    feed(&mut s, peer_version(70016), t0 + ms(10), &cfg, &mut out);
    out.clear();
    assert_eq!(feed(&mut s, NetworkMessage::WtxidRelay, t0 + ms(11), &cfg, &mut out), Delivery::Consumed);
    assert_eq!(feed(&mut s, NetworkMessage::SendAddrV2, t0 + ms(12), &cfg, &mut out), Delivery::Consumed);
    assert!(out.is_empty(), "{:?}", commands(&out));
    assert!(!s.is_ready());
    assert!(!s.take_ready());
    assert_eq!(feed(&mut s, NetworkMessage::Verack, t0 + ms(13), &cfg, &mut out), Delivery::Consumed);
    assert!(s.is_ready());
    assert!(s.take_ready());
    assert!(!s.take_ready());
    assert!(!s.take_ready());
    let f = s.features();
    assert!(f.wtxid_relay);
    assert!(f.addr_v2);
    assert!(!f.send_headers);
    // Only a ping after verack (no sendheaders by default).
    assert_eq!(out.len(), 1, "{:?}", commands(&out));
    assert!(matches!(out[0], NetworkMessage::Ping(_)));
}

#[test]
fn outbound_send_headers_after_verack() {
    let t0 = Instant::now();
    let cfg = SessionConfig { send_headers: true, ..SessionConfig::default() };
    let mut s = Session::new(Direction::Outbound, remote(), OUR_NONCE, t0, &cfg);
    let mut out = Vec::new();
    s.start(&cfg, START_HEIGHT, UNIX_TIME, &mut out);
    feed(&mut s, peer_version(70016), t0, &cfg, &mut out);
    // No sendheaders before verack.
    assert!(!out.contains(&NetworkMessage::SendHeaders));
    feed(&mut s, NetworkMessage::WtxidRelay, t0, &cfg, &mut out);
    feed(&mut s, NetworkMessage::SendAddrV2, t0, &cfg, &mut out);
    let verack_pos = out.iter().position(|m| *m == NetworkMessage::Verack).unwrap();
    out.clear();
    feed(&mut s, NetworkMessage::Verack, t0, &cfg, &mut out);
    assert!(verack_pos < 4);
    assert_eq!(out.len(), 2, "{:?}", commands(&out));
    assert_eq!(out[0], NetworkMessage::SendHeaders);
    assert!(matches!(out[1], NetworkMessage::Ping(_)));
}

#[test]
fn outbound_whole_output_order() {
    let t0 = Instant::now();
    let cfg = SessionConfig { send_headers: true, ..SessionConfig::default() };
    let mut s = Session::new(Direction::Outbound, remote(), OUR_NONCE, t0, &cfg);
    let mut out = Vec::new();
    s.start(&cfg, START_HEIGHT, UNIX_TIME, &mut out);
    for m in [peer_version(70016), NetworkMessage::WtxidRelay, NetworkMessage::SendAddrV2, NetworkMessage::Verack] {
        feed(&mut s, m, t0, &cfg, &mut out);
    }
    assert_eq!(commands(&out), ["version", "wtxidrelay", "sendaddrv2", "verack", "sendheaders", "ping"]);
    assert_eq!(out.iter().filter(|m| matches!(m, NetworkMessage::Version(_))).count(), 1);
}

#[test]
fn handshake_without_features_is_ready_with_no_features() {
    let t0 = Instant::now();
    let cfg = SessionConfig::default();
    let mut s = Session::new(Direction::Outbound, remote(), OUR_NONCE, t0, &cfg);
    let mut out = Vec::new();
    s.start(&cfg, START_HEIGHT, UNIX_TIME, &mut out);
    feed(&mut s, peer_version(70016), t0, &cfg, &mut out);
    feed(&mut s, NetworkMessage::Verack, t0, &cfg, &mut out);
    assert!(s.is_ready());
    assert_eq!(s.features(), Features::default());
    assert_eq!(s.features().to_string(), "none");
}

#[test]
fn features_display() {
    let f = Features { wtxid_relay: true, addr_v2: true, send_headers: true };
    assert_eq!(f.to_string(), "wtxidrelay,addrv2,sendheaders");
}

// ---------------------------------------------------------------------------
// Inbound handshake
// ---------------------------------------------------------------------------

#[test]
fn inbound_start_sends_nothing() {
    let t0 = Instant::now();
    let cfg = SessionConfig::default();
    let mut s = Session::new(Direction::Inbound, remote(), OUR_NONCE, t0, &cfg);
    let mut out = Vec::new();
    s.start(&cfg, START_HEIGHT, UNIX_TIME, &mut out);
    assert!(out.is_empty());
}

#[test]
fn inbound_answers_version_with_version_features_verack() {
    let t0 = Instant::now();
    let cfg = SessionConfig { services: ServiceFlags::NETWORK_LIMITED, ..SessionConfig::default() };
    let mut s = Session::new(Direction::Inbound, remote(), OUR_NONCE, t0, &cfg);
    let mut out = Vec::new();
    s.start(&cfg, START_HEIGHT, UNIX_TIME, &mut out);
    let d = feed(&mut s, peer_version(70016), t0, &cfg, &mut out);
    assert_eq!(d, Delivery::Consumed);
    assert_eq!(commands(&out), ["version", "wtxidrelay", "sendaddrv2", "verack"]);
    let NetworkMessage::Version(v) = &out[0] else { panic!("expected version") };
    assert_eq!(v.version, 70016);
    assert_eq!(v.nonce, OUR_NONCE);
    assert_eq!(v.start_height, START_HEIGHT);
    assert_eq!(v.timestamp, UNIX_TIME);
    assert_eq!(v.services, ServiceFlags::NETWORK_LIMITED);
    assert_eq!(v.user_agent, "/peerlink:0.1.0/");
    assert_eq!(&out[1..], &[NetworkMessage::WtxidRelay, NetworkMessage::SendAddrV2, NetworkMessage::Verack]);

    out.clear();
    feed(&mut s, NetworkMessage::WtxidRelay, t0, &cfg, &mut out);
    feed(&mut s, NetworkMessage::SendAddrV2, t0, &cfg, &mut out);
    feed(&mut s, NetworkMessage::Verack, t0, &cfg, &mut out);
    assert!(s.is_ready());
    assert!(s.take_ready());
    assert!(!s.take_ready());
    assert!(s.features().wtxid_relay && s.features().addr_v2);
    ping_nonce(&out);
}

#[test]
fn inbound_version_not_from_ourselves_is_accepted() {
    let t0 = Instant::now();
    let cfg = SessionConfig::default();
    let mut s = Session::new(Direction::Inbound, remote(), OUR_NONCE, t0, &cfg);
    let mut out = Vec::new();
    let ours = HashSet::from([OUR_NONCE]);
    let c = Context { config: &cfg, start_height: 1, unix_time: UNIX_TIME, local_nonces: &ours };
    assert!(s.on_message(peer_version(70016), t0, &c, &mut out).is_ok());
}

// ---------------------------------------------------------------------------
// Older peers (70015, e.g. bcoin)
// ---------------------------------------------------------------------------

#[test]
fn peer_70015_gets_no_wtxidrelay_nor_sendaddrv2() {
    let t0 = Instant::now();
    let cfg = SessionConfig::default();
    let mut s = Session::new(Direction::Outbound, remote(), OUR_NONCE, t0, &cfg);
    let mut out = Vec::new();
    s.start(&cfg, START_HEIGHT, UNIX_TIME, &mut out);
    out.clear();
    feed(&mut s, peer_version(70015), t0, &cfg, &mut out);
    // Like Core: neither wtxidrelay nor sendaddrv2 below 70016.
    assert_eq!(out, vec![NetworkMessage::Verack]);
    // The peer sends wtxidrelay anyway: not negotiated, since we did not send ours.
    feed(&mut s, NetworkMessage::WtxidRelay, t0, &cfg, &mut out);
    feed(&mut s, NetworkMessage::SendAddrV2, t0, &cfg, &mut out);
    feed(&mut s, NetworkMessage::Verack, t0, &cfg, &mut out);
    assert!(s.is_ready());
    assert!(!s.features().wtxid_relay);
    assert!(s.features().addr_v2);
}

#[test]
fn inbound_peer_70015_gets_no_wtxidrelay_nor_sendaddrv2() {
    let t0 = Instant::now();
    let cfg = SessionConfig::default();
    let mut s = Session::new(Direction::Inbound, remote(), OUR_NONCE, t0, &cfg);
    let mut out = Vec::new();
    feed(&mut s, peer_version(70015), t0, &cfg, &mut out);
    assert_eq!(commands(&out), ["version", "verack"]);
}

#[test]
fn our_protocol_70015_sends_no_wtxidrelay_nor_sendaddrv2() {
    let t0 = Instant::now();
    let cfg = SessionConfig { protocol_version: 70015, ..SessionConfig::default() };
    let mut s = Session::new(Direction::Outbound, remote(), OUR_NONCE, t0, &cfg);
    let mut out = Vec::new();
    s.start(&cfg, START_HEIGHT, UNIX_TIME, &mut out);
    let NetworkMessage::Version(v) = &out[0] else { panic!("expected version") };
    assert_eq!(v.version, 70015);
    out.clear();
    feed(&mut s, peer_version(70016), t0, &cfg, &mut out);
    assert_eq!(out, vec![NetworkMessage::Verack]);
    feed(&mut s, NetworkMessage::WtxidRelay, t0, &cfg, &mut out);
    assert!(!s.features().wtxid_relay);
}

// ---------------------------------------------------------------------------
// Protocol violations
// ---------------------------------------------------------------------------

fn expect_err(s: &mut Session, m: NetworkMessage, cfg: &SessionConfig) -> SessionError {
    let mut out = Vec::new();
    let err = s.on_message(m, Instant::now(), &ctx(cfg), &mut out).expect_err("message must be rejected");
    assert!(out.is_empty(), "nothing is sent on a violation: {:?}", commands(&out));
    err
}

#[test]
fn message_before_version() {
    let t0 = Instant::now();
    let cfg = SessionConfig::default();
    let cases = [
        (NetworkMessage::Ping(7), "ping"),
        (NetworkMessage::Pong(7), "pong"),
        (NetworkMessage::Verack, "verack"),
        (sample_inv(), "inv"),
        (NetworkMessage::WtxidRelay, "wtxidrelay"),
        (NetworkMessage::SendAddrV2, "sendaddrv2"),
        (NetworkMessage::SendHeaders, "sendheaders"),
        (NetworkMessage::GetAddr, "getaddr"),
    ];
    for dir in [Direction::Outbound, Direction::Inbound] {
        for (m, cmd) in cases.clone() {
            let mut s = Session::new(dir, remote(), OUR_NONCE, t0, &cfg);
            let mut out = Vec::new();
            s.start(&cfg, START_HEIGHT, UNIX_TIME, &mut out);
            let err = expect_err(&mut s, m, &cfg);
            assert_eq!(
                err,
                SessionError::MessageBeforeVersion { command: CommandString::try_from_static(cmd).unwrap() },
                "{dir:?}"
            );
            assert_eq!(err.to_string(), format!("{cmd} received before version"));
        }
    }
}

#[test]
fn unknown_message_before_version_names_its_own_command() {
    let cfg = SessionConfig::default();
    let mut s = Session::new(Direction::Inbound, remote(), OUR_NONCE, Instant::now(), &cfg);
    let command = CommandString::try_from("xyzzy").unwrap();
    let err = expect_err(&mut s, NetworkMessage::Unknown { command: command.clone(), payload: vec![1] }, &cfg);
    assert_eq!(err, SessionError::MessageBeforeVersion { command });
    assert_eq!(err.to_string(), "xyzzy received before version");
}

#[test]
fn duplicate_version_before_verack() {
    let t0 = Instant::now();
    let cfg = SessionConfig::default();
    for dir in [Direction::Outbound, Direction::Inbound] {
        let mut s = Session::new(dir, remote(), OUR_NONCE, t0, &cfg);
        let mut out = Vec::new();
        s.start(&cfg, START_HEIGHT, UNIX_TIME, &mut out);
        feed(&mut s, peer_version(70016), t0, &cfg, &mut out);
        assert_eq!(expect_err(&mut s, peer_version(70016), &cfg), SessionError::DuplicateVersion);
    }
}

#[test]
fn duplicate_version_after_verack() {
    let t0 = Instant::now();
    let cfg = SessionConfig::default();
    let (mut s, _) = ready_outbound(&cfg, t0);
    assert_eq!(expect_err(&mut s, peer_version(70016), &cfg), SessionError::DuplicateVersion);
}

#[test]
fn duplicate_version_even_when_forwarding() {
    let t0 = Instant::now();
    let cfg = SessionConfig { forward_session_messages: true, ..SessionConfig::default() };
    let (mut s, _) = ready_outbound(&cfg, t0);
    assert_eq!(expect_err(&mut s, peer_version(70016), &cfg), SessionError::DuplicateVersion);
}

#[test]
fn features_after_verack() {
    let t0 = Instant::now();
    let cfg = SessionConfig::default();
    let (mut s, _) = ready_outbound(&cfg, t0);
    assert_eq!(
        expect_err(&mut s, NetworkMessage::WtxidRelay, &cfg),
        SessionError::FeatureAfterVerack { command: CommandString::try_from_static("wtxidrelay").unwrap() }
    );
    let (mut s, _) = ready_outbound(&cfg, t0);
    let err = expect_err(&mut s, NetworkMessage::SendAddrV2, &cfg);
    assert_eq!(
        err,
        SessionError::FeatureAfterVerack { command: CommandString::try_from_static("sendaddrv2").unwrap() }
    );
    assert_eq!(err.to_string(), "sendaddrv2 received after verack");
}

#[test]
fn obsolete_peer_version() {
    let t0 = Instant::now();
    let cfg = SessionConfig { min_peer_version: 70015, ..SessionConfig::default() };
    for dir in [Direction::Outbound, Direction::Inbound] {
        let mut s = Session::new(dir, remote(), OUR_NONCE, t0, &cfg);
        let mut out = Vec::new();
        s.start(&cfg, START_HEIGHT, UNIX_TIME, &mut out);
        assert_eq!(
            expect_err(&mut s, peer_version(70014), &cfg),
            SessionError::ObsoleteVersion { version: 70014, min: 70015 }
        );
        assert!(s.peer_version().is_none());
        assert!(!s.is_ready());
    }
    // Exactly the minimum is fine.
    let mut s = Session::new(Direction::Outbound, remote(), OUR_NONCE, t0, &cfg);
    let mut out = Vec::new();
    feed(&mut s, peer_version(70015), t0, &cfg, &mut out);
}

#[test]
fn obsolete_peer_version_default_minimum() {
    let t0 = Instant::now();
    let cfg = SessionConfig::default();
    assert_eq!(cfg.min_peer_version, MIN_PEER_PROTO_VERSION);
    let mut s = Session::new(Direction::Outbound, remote(), OUR_NONCE, t0, &cfg);
    assert_eq!(
        expect_err(&mut s, peer_version(31799), &cfg),
        SessionError::ObsoleteVersion { version: 31799, min: 31800 }
    );
    let mut s = Session::new(Direction::Outbound, remote(), OUR_NONCE, t0, &cfg);
    let mut out = Vec::new();
    feed(&mut s, peer_version(31800), t0, &cfg, &mut out);
}

#[test]
fn missing_required_services() {
    let t0 = Instant::now();
    let cfg = SessionConfig { required_services: ServiceFlags::COMPACT_FILTERS, ..SessionConfig::default() };
    for dir in [Direction::Outbound, Direction::Inbound] {
        let mut s = Session::new(dir, remote(), OUR_NONCE, t0, &cfg);
        let err = expect_err(&mut s, peer_version(70016), &cfg);
        assert_eq!(
            err,
            SessionError::MissingServices {
                required: ServiceFlags::COMPACT_FILTERS,
                announced: ServiceFlags::NETWORK | ServiceFlags::WITNESS,
            }
        );
    }
    // Announcing the required service (and more) is fine.
    let mut s = Session::new(Direction::Outbound, remote(), OUR_NONCE, t0, &cfg);
    let mut out = Vec::new();
    let services = ServiceFlags::NETWORK | ServiceFlags::WITNESS | ServiceFlags::COMPACT_FILTERS;
    feed(&mut s, NetworkMessage::Version(peer_version_msg(70016, services, PEER_NONCE)), t0, &cfg, &mut out);
    assert_eq!(s.peer_version().unwrap().services, services);
}

#[test]
fn missing_one_of_several_required_services() {
    let t0 = Instant::now();
    let required = ServiceFlags::NETWORK | ServiceFlags::COMPACT_FILTERS;
    let cfg = SessionConfig { required_services: required, ..SessionConfig::default() };
    let mut s = Session::new(Direction::Outbound, remote(), OUR_NONCE, t0, &cfg);
    let m = NetworkMessage::Version(peer_version_msg(70016, ServiceFlags::COMPACT_FILTERS, PEER_NONCE));
    assert_eq!(
        expect_err(&mut s, m, &cfg),
        SessionError::MissingServices { required, announced: ServiceFlags::COMPACT_FILTERS }
    );
}

#[test]
fn inbound_self_connection() {
    let t0 = Instant::now();
    let cfg = SessionConfig::default();
    let mut s = Session::new(Direction::Inbound, remote(), 1, t0, &cfg);
    let ours = HashSet::from([PEER_NONCE]);
    let c = Context { config: &cfg, start_height: START_HEIGHT, unix_time: UNIX_TIME, local_nonces: &ours };
    let mut out = Vec::new();
    let err = s.on_message(peer_version(70016), t0, &c, &mut out).unwrap_err();
    assert_eq!(err, SessionError::SelfConnection);
    assert!(out.is_empty(), "no version is sent to ourselves: {:?}", commands(&out));
    assert!(s.peer_version().is_none());
}

#[test]
fn outbound_does_not_check_self_connection() {
    let t0 = Instant::now();
    let cfg = SessionConfig::default();
    let mut s = Session::new(Direction::Outbound, remote(), PEER_NONCE, t0, &cfg);
    // The peer's nonce is one of ours: an outbound session still accepts it
    // (the check is made on the inbound side of a self-connection).
    let ours = HashSet::from([PEER_NONCE]);
    let c = Context { config: &cfg, start_height: START_HEIGHT, unix_time: UNIX_TIME, local_nonces: &ours };
    let mut out = Vec::new();
    assert_eq!(s.on_message(peer_version(70016), t0, &c, &mut out), Ok(Delivery::Consumed));
    assert_eq!(commands(&out), ["wtxidrelay", "sendaddrv2", "verack"]);
}

// ---------------------------------------------------------------------------
// Handshake timeout
// ---------------------------------------------------------------------------

#[test]
fn handshake_timeout_default_and_deadline() {
    let t0 = Instant::now();
    let cfg = SessionConfig::default();
    assert_eq!(cfg.handshake_timeout, secs(60));
    let mut s = Session::new(Direction::Outbound, remote(), OUR_NONCE, t0, &cfg);
    let mut out = Vec::new();
    s.start(&cfg, START_HEIGHT, UNIX_TIME, &mut out);
    out.clear();
    assert_eq!(s.next_deadline(&cfg), t0 + secs(60));
    assert_eq!(s.tick(t0, &cfg, &mut out), Ok(()));
    assert_eq!(s.tick(t0 + secs(59), &cfg, &mut out), Ok(()));
    assert_eq!(s.tick(t0 + secs(60) - Duration::from_nanos(1), &cfg, &mut out), Ok(()));
    assert!(out.is_empty(), "no pings before the handshake: {:?}", commands(&out));
    assert_eq!(s.tick(t0 + secs(60), &cfg, &mut out), Err(SessionError::HandshakeTimeout(secs(60))));
    assert_eq!(s.tick(t0 + secs(61), &cfg, &mut out), Err(SessionError::HandshakeTimeout(secs(60))));
}

#[test]
fn handshake_timeout_after_version_without_verack() {
    let t0 = Instant::now();
    let cfg = SessionConfig { handshake_timeout: secs(5), ..SessionConfig::default() };
    let mut s = Session::new(Direction::Inbound, remote(), OUR_NONCE, t0, &cfg);
    let mut out = Vec::new();
    feed(&mut s, peer_version(70016), t0 + secs(1), &cfg, &mut out);
    // The deadline counts from the connection, not from the version.
    assert_eq!(s.next_deadline(&cfg), t0 + secs(5));
    out.clear();
    assert_eq!(s.tick(t0 + secs(4), &cfg, &mut out), Ok(()));
    assert!(out.is_empty());
    let err = s.tick(t0 + secs(5), &cfg, &mut out).unwrap_err();
    assert_eq!(err, SessionError::HandshakeTimeout(secs(5)));
    assert_eq!(err.to_string(), "handshake not complete after 5 s");
}

#[test]
fn no_handshake_timeout_once_ready() {
    let t0 = Instant::now();
    let cfg = SessionConfig { handshake_timeout: secs(5), ..SessionConfig::default() };
    let (mut s, nonce) = ready_outbound(&cfg, t0);
    let mut out = Vec::new();
    feed(&mut s, NetworkMessage::Pong(nonce), t0 + ms(100), &cfg, &mut out);
    assert_eq!(s.tick(t0 + secs(5), &cfg, &mut out), Ok(()));
    assert_eq!(s.tick(t0 + secs(100), &cfg, &mut out), Ok(()));
    assert!(out.is_empty());
}

// ---------------------------------------------------------------------------
// Keepalive
// ---------------------------------------------------------------------------

#[test]
fn pong_records_exact_round_trip() {
    let t0 = Instant::now();
    let cfg = SessionConfig::default();
    let (mut s, nonce) = ready_outbound(&cfg, t0);
    assert_eq!(s.last_ping(), None);
    assert_eq!(s.min_ping(), None);
    let mut out = Vec::new();
    let d = feed(&mut s, NetworkMessage::Pong(nonce), t0 + ms(250), &cfg, &mut out);
    assert_eq!(d, Delivery::Consumed);
    assert!(out.is_empty());
    assert_eq!(s.last_ping(), Some(ms(250)));
    assert_eq!(s.min_ping(), Some(ms(250)));
}

#[test]
fn pong_with_wrong_nonce_is_ignored() {
    let t0 = Instant::now();
    let cfg = SessionConfig::default();
    let (mut s, nonce) = ready_outbound(&cfg, t0);
    let mut out = Vec::new();
    // Not the session's ping: the answer to a ping the user sent, delivered.
    let wrong = NetworkMessage::Pong(nonce.wrapping_add(1));
    let d = feed(&mut s, wrong.clone(), t0 + ms(100), &cfg, &mut out);
    assert_eq!(d, Delivery::Deliver(wrong));
    assert_eq!(s.last_ping(), None);
    assert_eq!(s.min_ping(), None);
    // Still outstanding: the deadline is the ping's timeout.
    assert_eq!(s.next_deadline(&cfg), t0 + PING_TIMEOUT);
    // The right nonce later still counts, from the original send time.
    feed(&mut s, NetworkMessage::Pong(nonce), t0 + ms(300), &cfg, &mut out);
    assert_eq!(s.last_ping(), Some(ms(300)));
    // A repeated pong changes nothing (and is no longer the session's).
    let d = feed(&mut s, NetworkMessage::Pong(nonce), t0 + ms(900), &cfg, &mut out);
    assert_eq!(d, Delivery::Deliver(NetworkMessage::Pong(nonce)));
    assert_eq!(s.last_ping(), Some(ms(300)));
    assert_eq!(s.min_ping(), Some(ms(300)));
    assert!(out.is_empty());
}

#[test]
fn unsolicited_pong_before_verack_is_not_delivered() {
    // Between version and verack the peer is not announced yet, so nothing
    // may reach the user (unless session messages are forwarded).
    let t0 = Instant::now();
    for forward in [false, true] {
        let cfg = SessionConfig { forward_session_messages: forward, ..SessionConfig::default() };
        let mut s = Session::new(Direction::Outbound, remote(), OUR_NONCE, t0, &cfg);
        let mut out = Vec::new();
        feed(&mut s, peer_version(70016), t0, &cfg, &mut out);
        let expected = if forward { Delivery::Deliver(NetworkMessage::Pong(5)) } else { Delivery::Consumed };
        assert_eq!(feed(&mut s, NetworkMessage::Pong(5), t0, &cfg, &mut out), expected);
        assert_eq!(s.last_ping(), None);
    }
}

#[test]
fn foreign_pong_after_ready_is_delivered_even_without_forwarding() {
    let t0 = Instant::now();
    let cfg = SessionConfig::default();
    let (mut s, nonce) = ready_outbound(&cfg, t0);
    let mut out = Vec::new();
    // The user's own ping answer arrives while the session's ping is outstanding.
    let user = NetworkMessage::Pong(nonce ^ 0xff);
    assert_eq!(feed(&mut s, user.clone(), t0 + ms(5), &cfg, &mut out), Delivery::Deliver(user));
    // The session's pong is still consumed and measured.
    assert_eq!(feed(&mut s, NetworkMessage::Pong(nonce), t0 + ms(9), &cfg, &mut out), Delivery::Consumed);
    assert_eq!(s.last_ping(), Some(ms(9)));
    // With nothing outstanding every pong belongs to the user.
    assert_eq!(
        feed(&mut s, NetworkMessage::Pong(1), t0 + ms(10), &cfg, &mut out),
        Delivery::Deliver(NetworkMessage::Pong(1))
    );
    assert!(out.is_empty());
}

#[test]
fn next_ping_exactly_at_interval_and_min_ping() {
    let t0 = Instant::now();
    let cfg = SessionConfig::default();
    assert_eq!(cfg.ping_interval, secs(120));
    assert_eq!(cfg.ping_timeout, secs(1200));
    let (mut s, n1) = ready_outbound(&cfg, t0);
    let mut out = Vec::new();
    assert_eq!(s.next_deadline(&cfg), t0 + secs(1200));

    feed(&mut s, NetworkMessage::Pong(n1), t0 + ms(300), &cfg, &mut out);
    assert_eq!(s.last_ping(), Some(ms(300)));
    // Nothing outstanding: the next deadline is the next ping.
    assert_eq!(s.next_deadline(&cfg), t0 + secs(120));

    assert_eq!(s.tick(t0 + secs(60), &cfg, &mut out), Ok(()));
    assert_eq!(s.tick(t0 + secs(120) - Duration::from_nanos(1), &cfg, &mut out), Ok(()));
    assert!(out.is_empty(), "no ping before the interval: {:?}", commands(&out));
    let t1 = t0 + secs(120);
    assert_eq!(s.tick(t1, &cfg, &mut out), Ok(()));
    let n2 = ping_nonce(&out);
    assert_ne!(n1, n2, "ping nonces differ");
    assert_eq!(s.next_deadline(&cfg), t1 + secs(1200));
    out.clear();
    // Ticking again while the ping is outstanding sends nothing.
    assert_eq!(s.tick(t1 + secs(1), &cfg, &mut out), Ok(()));
    assert_eq!(s.tick(t1 + secs(500), &cfg, &mut out), Ok(()));
    assert!(out.is_empty());

    // A faster pong lowers min_ping.
    feed(&mut s, NetworkMessage::Pong(n2), t1 + ms(100), &cfg, &mut out);
    assert_eq!(s.last_ping(), Some(ms(100)));
    assert_eq!(s.min_ping(), Some(ms(100)));
    // The next ping is due ping_interval after the previous ping was sent.
    assert_eq!(s.next_deadline(&cfg), t1 + secs(120));

    let t2 = t1 + secs(120);
    assert_eq!(s.tick(t2, &cfg, &mut out), Ok(()));
    let n3 = ping_nonce(&out);
    out.clear();
    // A slower pong updates last_ping but not min_ping.
    feed(&mut s, NetworkMessage::Pong(n3), t2 + ms(700), &cfg, &mut out);
    assert_eq!(s.last_ping(), Some(ms(700)));
    assert_eq!(s.min_ping(), Some(ms(100)));
}

#[test]
fn ping_timeout_without_pong() {
    let t0 = Instant::now();
    let cfg = SessionConfig::default();
    let (mut s, _) = ready_outbound(&cfg, t0);
    let mut out = Vec::new();
    assert_eq!(s.next_deadline(&cfg), t0 + PING_TIMEOUT);
    assert_eq!(s.tick(t0 + PING_TIMEOUT - Duration::from_nanos(1), &cfg, &mut out), Ok(()));
    assert!(out.is_empty());
    let err = s.tick(t0 + PING_TIMEOUT, &cfg, &mut out).unwrap_err();
    assert_eq!(err, SessionError::PingTimeout(PING_TIMEOUT));
    assert_eq!(err.to_string(), "no pong within 1200 s");
}

#[test]
fn ping_timeout_custom_config_on_later_ping() {
    let t0 = Instant::now();
    let cfg = SessionConfig { ping_interval: secs(10), ping_timeout: secs(30), ..SessionConfig::default() };
    let (mut s, n1) = ready_outbound(&cfg, t0);
    let mut out = Vec::new();
    feed(&mut s, NetworkMessage::Pong(n1), t0 + secs(1), &cfg, &mut out);
    assert_eq!(s.next_deadline(&cfg), t0 + secs(10));
    s.tick(t0 + secs(10), &cfg, &mut out).unwrap();
    ping_nonce(&out);
    assert_eq!(s.next_deadline(&cfg), t0 + secs(40));
    assert_eq!(s.tick(t0 + secs(39), &cfg, &mut out), Ok(()));
    assert_eq!(s.tick(t0 + secs(40), &cfg, &mut out), Err(SessionError::PingTimeout(secs(30))));
}

#[test]
fn late_tick_sends_ping_and_reschedules_from_now() {
    let t0 = Instant::now();
    let cfg = SessionConfig::default();
    let (mut s, n1) = ready_outbound(&cfg, t0);
    let mut out = Vec::new();
    feed(&mut s, NetworkMessage::Pong(n1), t0 + ms(50), &cfg, &mut out);
    // The reactor wakes late.
    let late = t0 + secs(150);
    s.tick(late, &cfg, &mut out).unwrap();
    let n2 = ping_nonce(&out);
    assert_eq!(s.next_deadline(&cfg), late + PING_TIMEOUT);
    out.clear();
    feed(&mut s, NetworkMessage::Pong(n2), late + ms(10), &cfg, &mut out);
    assert_eq!(s.next_deadline(&cfg), late + secs(120));
}

#[test]
fn ping_now_measures_immediately_but_not_twice() {
    let t0 = Instant::now();
    let cfg = SessionConfig::default();
    let (mut s, n1) = ready_outbound(&cfg, t0);
    let mut out = Vec::new();
    // Outstanding ping: ping_now sends nothing.
    s.ping_now(t0 + secs(1), &cfg, &mut out);
    assert!(out.is_empty());
    feed(&mut s, NetworkMessage::Pong(n1), t0 + secs(2), &cfg, &mut out);
    s.ping_now(t0 + secs(3), &cfg, &mut out);
    let n2 = ping_nonce(&out);
    out.clear();
    feed(&mut s, NetworkMessage::Pong(n2), t0 + secs(3) + ms(40), &cfg, &mut out);
    assert_eq!(s.last_ping(), Some(ms(40)));
    assert_eq!(s.min_ping(), Some(ms(40)));
}

#[test]
fn ping_now_before_ready_sends_nothing() {
    let t0 = Instant::now();
    let cfg = SessionConfig::default();
    let mut s = Session::new(Direction::Outbound, remote(), OUR_NONCE, t0, &cfg);
    let mut out = Vec::new();
    s.ping_now(t0, &cfg, &mut out);
    assert!(out.is_empty());
    assert_eq!(s.next_deadline(&cfg), t0 + HANDSHAKE_TIMEOUT);
}

#[test]
fn ping_nonces_depend_on_session_nonce() {
    let t0 = Instant::now();
    let cfg = SessionConfig::default();
    let (_, a) = ready_outbound(&cfg, t0);
    let (_, b) = ready_outbound(&cfg, t0);
    assert_eq!(a, b, "deterministic for the same seed");
    let mut s = Session::new(Direction::Outbound, remote(), OUR_NONCE ^ 1, t0, &cfg);
    let mut out = Vec::new();
    for m in [peer_version(70016), NetworkMessage::Verack] {
        feed(&mut s, m, t0, &cfg, &mut out);
    }
    assert_ne!(ping_nonce(&out), a);
}

// ---------------------------------------------------------------------------
// Peer pings, delivery
// ---------------------------------------------------------------------------

#[test]
fn peer_ping_answered_before_and_after_ready() {
    let t0 = Instant::now();
    let cfg = SessionConfig::default();
    let mut s = Session::new(Direction::Outbound, remote(), OUR_NONCE, t0, &cfg);
    let mut out = Vec::new();
    s.start(&cfg, START_HEIGHT, UNIX_TIME, &mut out);
    feed(&mut s, peer_version(70016), t0, &cfg, &mut out);
    out.clear();
    // Between version and verack.
    assert_eq!(feed(&mut s, NetworkMessage::Ping(0xabc), t0, &cfg, &mut out), Delivery::Consumed);
    assert_eq!(out, vec![NetworkMessage::Pong(0xabc)]);
    out.clear();
    feed(&mut s, NetworkMessage::Verack, t0, &cfg, &mut out);
    out.clear();
    // After ready.
    assert_eq!(feed(&mut s, NetworkMessage::Ping(u64::MAX), t0, &cfg, &mut out), Delivery::Consumed);
    assert_eq!(out, vec![NetworkMessage::Pong(u64::MAX)]);
    out.clear();
    assert_eq!(feed(&mut s, NetworkMessage::Ping(0), t0, &cfg, &mut out), Delivery::Consumed);
    assert_eq!(out, vec![NetworkMessage::Pong(0)]);
}

#[test]
fn session_messages_consumed_by_default() {
    let t0 = Instant::now();
    let cfg = SessionConfig::default();
    let mut s = Session::new(Direction::Inbound, remote(), OUR_NONCE, t0, &cfg);
    let mut out = Vec::new();
    for m in [
        peer_version(70016),
        NetworkMessage::WtxidRelay,
        NetworkMessage::SendAddrV2,
        NetworkMessage::Ping(1),
        NetworkMessage::Verack,
    ] {
        assert_eq!(feed(&mut s, m, t0, &cfg, &mut out), Delivery::Consumed);
    }
    let nonce = out
        .iter()
        .filter_map(|m| match m {
            NetworkMessage::Ping(n) => Some(*n),
            _ => None,
        })
        .next()
        .unwrap();
    for m in [NetworkMessage::SendHeaders, NetworkMessage::Ping(2), NetworkMessage::Pong(nonce), NetworkMessage::Verack]
    {
        assert_eq!(feed(&mut s, m, t0, &cfg, &mut out), Delivery::Consumed);
    }
}

#[test]
fn session_messages_delivered_when_forwarding() {
    let t0 = Instant::now();
    let cfg = SessionConfig { forward_session_messages: true, ..SessionConfig::default() };
    let mut s = Session::new(Direction::Outbound, remote(), OUR_NONCE, t0, &cfg);
    let mut out = Vec::new();
    s.start(&cfg, START_HEIGHT, UNIX_TIME, &mut out);
    let v = peer_version(70016);
    assert_eq!(feed(&mut s, v.clone(), t0, &cfg, &mut out), Delivery::Deliver(v));
    for m in [NetworkMessage::WtxidRelay, NetworkMessage::SendAddrV2, NetworkMessage::Ping(9)] {
        assert_eq!(feed(&mut s, m.clone(), t0, &cfg, &mut out), Delivery::Deliver(m));
    }
    // The session still does its work while forwarding.
    assert!(out.contains(&NetworkMessage::Pong(9)));
    out.clear();
    assert_eq!(feed(&mut s, NetworkMessage::Verack, t0, &cfg, &mut out), Delivery::Deliver(NetworkMessage::Verack));
    assert!(s.is_ready());
    let nonce = ping_nonce(&out);
    for m in [NetworkMessage::SendHeaders, NetworkMessage::Ping(10), NetworkMessage::Pong(nonce)] {
        assert_eq!(feed(&mut s, m.clone(), t0 + ms(20), &cfg, &mut out), Delivery::Deliver(m));
    }
    assert_eq!(s.last_ping(), Some(ms(20)));
    assert!(s.features().send_headers);
    assert!(s.features().wtxid_relay && s.features().addr_v2);
}

#[test]
fn ordinary_messages_delivered_after_ready() {
    let t0 = Instant::now();
    let cfg = SessionConfig::default();
    let (mut s, _) = ready_outbound(&cfg, t0);
    let mut out = Vec::new();
    for m in [sample_inv(), NetworkMessage::Tx(sample_tx()), NetworkMessage::Headers(vec![]), NetworkMessage::GetAddr] {
        assert_eq!(feed(&mut s, m.clone(), t0, &cfg, &mut out), Delivery::Deliver(m));
    }
    assert!(out.is_empty(), "{:?}", commands(&out));
}

#[test]
fn ordinary_messages_between_version_and_verack_are_ignored() {
    let t0 = Instant::now();
    for forward in [false, true] {
        let cfg = SessionConfig { forward_session_messages: forward, ..SessionConfig::default() };
        let mut s = Session::new(Direction::Outbound, remote(), OUR_NONCE, t0, &cfg);
        let mut out = Vec::new();
        s.start(&cfg, START_HEIGHT, UNIX_TIME, &mut out);
        feed(&mut s, peer_version(70016), t0, &cfg, &mut out);
        out.clear();
        for m in
            [sample_inv(), NetworkMessage::Tx(sample_tx()), NetworkMessage::Headers(vec![]), NetworkMessage::GetAddr]
        {
            assert_eq!(feed(&mut s, m, t0, &cfg, &mut out), Delivery::Consumed);
        }
        assert!(out.is_empty());
        assert!(!s.is_ready());
        // The handshake continues normally.
        feed(&mut s, NetworkMessage::Verack, t0, &cfg, &mut out);
        assert!(s.is_ready());
    }
}

#[test]
fn peer_sendheaders_after_verack_sets_feature() {
    let t0 = Instant::now();
    let cfg = SessionConfig::default();
    let (mut s, _) = ready_outbound(&cfg, t0);
    assert!(s.take_ready());
    assert!(!s.features().send_headers);
    let mut out = Vec::new();
    assert_eq!(feed(&mut s, NetworkMessage::SendHeaders, t0, &cfg, &mut out), Delivery::Consumed);
    assert!(s.features().send_headers);
    assert!(out.is_empty());
    // Idempotent.
    feed(&mut s, NetworkMessage::SendHeaders, t0, &cfg, &mut out);
    assert!(s.features().send_headers);
    assert!(!s.take_ready());
}

#[test]
fn duplicate_verack_after_ready_is_harmless() {
    let t0 = Instant::now();
    let cfg = SessionConfig::default();
    let (mut s, _) = ready_outbound(&cfg, t0);
    assert!(s.take_ready());
    let mut out = Vec::new();
    assert_eq!(feed(&mut s, NetworkMessage::Verack, t0, &cfg, &mut out), Delivery::Consumed);
    assert!(out.is_empty(), "no second ping or sendheaders: {:?}", commands(&out));
    assert!(s.is_ready());
    assert!(!s.take_ready());
}

// ---------------------------------------------------------------------------
// Peer version details
// ---------------------------------------------------------------------------

#[test]
fn peer_version_fields() {
    let t0 = Instant::now();
    let cfg = SessionConfig::default();
    let mut s = Session::new(Direction::Inbound, remote(), OUR_NONCE, t0, &cfg);
    assert!(s.peer_version().is_none());
    let services = ServiceFlags::NETWORK | ServiceFlags::WITNESS | ServiceFlags::COMPACT_FILTERS;
    let mut v = peer_version_msg(70016, services, 0x0123_4567_89ab_cdef);
    v.user_agent = "/Satoshi:26.1.0/Knots:20240130/".to_owned();
    v.start_height = 901_234;
    v.relay = false;
    let mut out = Vec::new();
    feed(&mut s, NetworkMessage::Version(v), t0, &cfg, &mut out);
    let p = s.peer_version().expect("peer version recorded");
    assert_eq!(
        *p,
        PeerVersion {
            version: 70016,
            services,
            user_agent: "/Satoshi:26.1.0/Knots:20240130/".to_owned(),
            start_height: 901_234,
            relay: false,
            nonce: 0x0123_4567_89ab_cdef,
        }
    );
    // Still available after the handshake.
    feed(&mut s, NetworkMessage::Verack, t0, &cfg, &mut out);
    assert_eq!(s.peer_version().unwrap().start_height, 901_234);
}

#[test]
fn peer_version_long_user_agent_is_capped() {
    let t0 = Instant::now();
    let cfg = SessionConfig::default();
    let mut s = Session::new(Direction::Outbound, remote(), OUR_NONCE, t0, &cfg);
    let mut v = peer_version_msg(70016, ServiceFlags::NETWORK, PEER_NONCE);
    v.user_agent = "x".repeat(1000);
    let mut out = Vec::new();
    feed(&mut s, NetworkMessage::Version(v), t0, &cfg, &mut out);
    assert_eq!(s.peer_version().unwrap().user_agent.len(), MAX_SUBVERSION_LENGTH);

    // The cap is in bytes (Core's MAX_SUBVERSION_LENGTH), never splitting a
    // character: 3-byte characters give 85 * 3 = 255 bytes.
    let mut s = Session::new(Direction::Outbound, remote(), OUR_NONCE, t0, &cfg);
    let mut v = peer_version_msg(70016, ServiceFlags::NETWORK, PEER_NONCE);
    v.user_agent = "€".repeat(300);
    feed(&mut s, NetworkMessage::Version(v), t0, &cfg, &mut out);
    assert_eq!(s.peer_version().unwrap().user_agent, "€".repeat(85));

    // A short user agent is kept as is.
    let mut s = Session::new(Direction::Outbound, remote(), OUR_NONCE, t0, &cfg);
    let mut v = peer_version_msg(70016, ServiceFlags::NETWORK, PEER_NONCE);
    v.user_agent = "/bcoin:2.2.0/".to_owned();
    feed(&mut s, NetworkMessage::Version(v), t0, &cfg, &mut out);
    assert_eq!(s.peer_version().unwrap().user_agent, "/bcoin:2.2.0/");
}

#[test]
fn context_debug_omits_callback() {
    let cfg = SessionConfig::default();
    let c = ctx(&cfg);
    let s = format!("{c:?}");
    assert!(s.contains("840000") && s.contains("1700000000"), "{s}");
}
