//! Byte-vector tests for every message, every reply code and every malformed
//! reply; property tests for split input and garbage.

use std::error::Error;
use std::net::SocketAddr;

use proptest::prelude::*;

use super::*;
use crate::error::Report;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(s.len().is_multiple_of(2), "odd hex: {s}");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit")).collect()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("valid socket address")
}

fn creds(user: &str, pass: &str) -> Credentials {
    Credentials::new(user, pass).expect("valid credentials")
}

/// A 62-byte v3 onion name (the Tor Project's own service).
const ONION: &str = "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion";

/// Takes everything the handshake wants to send.
fn drain(h: &mut Handshake) -> Vec<u8> {
    let out = h.poll_transmit().to_vec();
    h.advance(out.len());
    assert!(h.poll_transmit().is_empty());
    out
}

/// A handshake to `target` without authentication, past the greeting.
fn at_connect(target: Target) -> (Handshake, Vec<u8>) {
    let mut h = Handshake::new(target, Auth::None);
    assert_eq!(drain(&mut h), hex("050100"));
    assert_eq!(h.handle_input(&hex("0500")), Ok(Progress::Pending));
    let request = drain(&mut h);
    assert_eq!(h.stage(), Stage::Connect);
    (h, request)
}

fn connected_v4() -> Handshake {
    let (h, _) = at_connect(Target::Addr(addr("127.0.0.1:8333")));
    h
}

#[test]
fn greeting_without_auth_offers_method_0_only() {
    let mut h = Handshake::new(Target::Addr(addr("127.0.0.1:8333")), Auth::None);
    assert_eq!(h.stage(), Stage::Greeting);
    assert_eq!(drain(&mut h), hex("05 01 00"));
}

#[test]
fn greeting_with_auth_offers_method_2_only() {
    let mut h = Handshake::new(Target::Addr(addr("127.0.0.1:8333")), Auth::Password(creds("alice", "hunter2")));
    assert_eq!(drain(&mut h), hex("05 01 02"));
}

#[test]
fn auth_request_then_connect_request() {
    let mut h = Handshake::new(Target::Addr(addr("127.0.0.1:8333")), Auth::Password(creds("alice", "hunter2")));
    drain(&mut h);
    assert_eq!(h.handle_input(&hex("0502")), Ok(Progress::Pending));
    assert_eq!(h.stage(), Stage::Authentication);
    assert_eq!(drain(&mut h), hex("01 05 616c696365 07 68756e74657232"));
    assert_eq!(h.handle_input(&hex("0100")), Ok(Progress::Pending));
    assert_eq!(h.stage(), Stage::Connect);
    assert_eq!(drain(&mut h), hex("05 01 00 01 7f000001 208d"));
}

#[test]
fn auth_request_with_longest_credentials() {
    let user = "u".repeat(255);
    let pass = "p".repeat(255);
    let mut h = Handshake::new(Target::Addr(addr("127.0.0.1:1")), Auth::Password(creds(&user, &pass)));
    drain(&mut h);
    h.handle_input(&hex("0502")).expect("method accepted");
    let request = drain(&mut h);
    assert_eq!(request.len(), 3 + 255 + 255);
    assert_eq!(request[..2], [0x01, 0xff]);
    assert_eq!(request[2..257], *user.as_bytes());
    assert_eq!(request[257], 0xff);
    assert_eq!(request[258..], *pass.as_bytes());
}

#[test]
fn connect_request_ipv4() {
    let (_, request) = at_connect(Target::Addr(addr("127.0.0.1:8333")));
    assert_eq!(request, hex("05 01 00 01 7f000001 208d"));
}

#[test]
fn connect_request_ipv6() {
    let (_, request) = at_connect(Target::Addr(addr("[2001:db8::1]:18444")));
    assert_eq!(request, hex("05 01 00 04 20010db8000000000000000000000001 480c"));
}

#[test]
fn connect_request_domain() {
    let (_, request) = at_connect(Target::name("localhost", 8333).expect("valid name"));
    assert_eq!(request, hex("05 01 00 03 09 6c6f63616c686f7374 208d"));
}

#[test]
fn connect_request_onion_carries_the_name_exactly() {
    let target = Target::name(ONION, 8333).expect("valid name");
    assert!(target.is_onion());
    let (_, request) = at_connect(target);
    let mut expected = hex("05 01 00 03 3e");
    expected.extend_from_slice(ONION.as_bytes());
    expected.extend_from_slice(&hex("208d"));
    assert_eq!(request, expected);
}

#[test]
fn connect_request_longest_name() {
    let name = "a".repeat(255);
    let (_, request) = at_connect(Target::name(name.clone(), 80).expect("valid name"));
    assert_eq!(request.len(), 4 + 1 + 255 + 2);
    assert_eq!(request[..5], hex("05 01 00 03 ff")[..]);
    assert_eq!(request[5..260], *name.as_bytes());
    assert_eq!(request[260..], hex("0050")[..]);
}

#[test]
fn reply_ipv4_bound() {
    let mut h = connected_v4();
    let bound = Bound::Addr(addr("0.0.0.0:0"));
    assert_eq!(h.handle_input(&hex("05 00 00 01 00000000 0000")), Ok(Progress::Connected { bound: bound.clone() }));
    assert!(h.is_connected());
    assert_eq!(h.stage(), Stage::Connected);
    assert_eq!(h.bound(), Some(&bound));
    assert!(h.take_leftover().is_empty());
    assert!(h.poll_transmit().is_empty());
}

#[test]
fn reply_ipv6_bound() {
    let mut h = connected_v4();
    let progress = h.handle_input(&hex("05 00 00 04 fe800000000000000000000000000001 1f90"));
    assert_eq!(progress, Ok(Progress::Connected { bound: Bound::Addr(addr("[fe80::1]:8080")) }));
}

#[test]
fn reply_domain_bound() {
    let mut h = connected_v4();
    let progress = h.handle_input(&hex("05 00 00 03 07 6578616d706c65 0050"));
    let bound = Bound::Name { name: b"example".to_vec(), port: 80 };
    assert_eq!(bound.to_string(), "example:80");
    assert_eq!(progress, Ok(Progress::Connected { bound }));
}

#[test]
fn reply_longest_domain_bound_fits_the_buffer() {
    let mut h = connected_v4();
    let mut reply = hex("05 00 00 03 ff");
    reply.extend_from_slice(&[b'x'; 255]);
    reply.extend_from_slice(&hex("0001"));
    assert_eq!(reply.len(), MAX_REPLY_LEN);
    let progress = h.handle_input(&reply);
    assert_eq!(progress, Ok(Progress::Connected { bound: Bound::Name { name: vec![b'x'; 255], port: 1 } }));
}

#[test]
fn leftover_after_the_reply_is_handed_back_exactly() {
    let mut h = connected_v4();
    let peer = hex("fabfb5da 76657273696f6e0000000000 ff");
    let mut input = hex("05 00 00 01 0a000001 208d");
    input.extend_from_slice(&peer);
    assert_eq!(h.handle_input(&input), Ok(Progress::Connected { bound: Bound::Addr(addr("10.0.0.1:8333")) }));
    assert_eq!(h.take_leftover(), peer);
    assert!(h.take_leftover().is_empty(), "taken once");
    // Later input is the tunnel's too.
    assert!(matches!(h.handle_input(b"more"), Ok(Progress::Connected { .. })));
    assert_eq!(h.take_leftover(), b"more");
}

#[test]
fn the_whole_exchange_in_one_read_works() {
    // A proxy that answers everything at once (as if pipelined).
    let mut h = Handshake::new(Target::name("localhost", 18444).expect("valid"), Auth::Password(creds("u", "p")));
    assert_eq!(drain(&mut h), hex("050102"));
    let progress = h.handle_input(&hex("0502 0100 0500000100000000 0000 aabb"));
    assert!(matches!(progress, Ok(Progress::Connected { .. })), "{progress:?}");
    assert_eq!(drain(&mut h), hex("01 01 75 01 70  05 01 00 03 09 6c6f63616c686f7374 480c"));
    assert_eq!(h.take_leftover(), hex("aabb"));
}

#[test]
fn partial_advance_keeps_the_rest() {
    let mut h = Handshake::new(Target::Addr(addr("127.0.0.1:8333")), Auth::None);
    h.advance(1);
    assert_eq!(h.poll_transmit(), &hex("0100")[..]);
    h.advance(2);
    assert!(h.poll_transmit().is_empty());
    // A reply that arrives before the greeting is fully written still
    // queues the request behind it.
    let mut h = Handshake::new(Target::Addr(addr("127.0.0.1:8333")), Auth::None);
    h.advance(1);
    h.handle_input(&hex("0500")).expect("method accepted");
    assert_eq!(drain(&mut h), hex("0100 05010001 7f000001 208d"));
}

/// Every reply code, its typed value and its text.
const CODES: [(u8, ReplyCode, &str); 17] = [
    (0x01, ReplyCode::GeneralFailure, "general failure"),
    (0x02, ReplyCode::NotAllowed, "connection not allowed by ruleset"),
    (0x03, ReplyCode::NetworkUnreachable, "network unreachable"),
    (0x04, ReplyCode::HostUnreachable, "host unreachable"),
    (0x05, ReplyCode::ConnectionRefused, "connection refused"),
    (0x06, ReplyCode::TtlExpired, "ttl expired"),
    (0x07, ReplyCode::CommandNotSupported, "command not supported"),
    (0x08, ReplyCode::AddressTypeNotSupported, "address type not supported"),
    (0xF0, ReplyCode::OnionDescriptorNotFound, "onion service descriptor not found"),
    (0xF1, ReplyCode::OnionDescriptorInvalid, "onion service descriptor is invalid"),
    (0xF2, ReplyCode::OnionIntroductionFailed, "onion service introduction failed"),
    (0xF3, ReplyCode::OnionRendezvousFailed, "onion service rendezvous failed"),
    (0xF4, ReplyCode::OnionMissingClientAuth, "onion service requires client authorization"),
    (0xF5, ReplyCode::OnionWrongClientAuth, "onion service rejected the client authorization"),
    (0xF6, ReplyCode::OnionInvalidAddress, "invalid onion service address"),
    (0xF7, ReplyCode::OnionIntroductionTimedOut, "onion service introduction timed out"),
    (0x09, ReplyCode::Unknown(0x09), "unknown reply code 0x09"),
];

#[test]
fn every_reply_code_maps_to_a_typed_readable_error() {
    for (byte, code, text) in CODES {
        let mut h = connected_v4();
        let e = h.handle_input(&[0x05, byte, 0x00, 0x01, 0, 0, 0, 0, 0, 0]).expect_err("a failure code");
        assert_eq!(e, Socks5Error::Reply(code), "code {byte:#04x}");
        assert_eq!(e.to_string(), text);
        assert!(e.source().is_none());
        assert_eq!(code.code(), byte);
        assert_eq!(ReplyCode::from_code(byte), Some(code));
        let wrapped = ProxyError { proxy: addr("127.0.0.1:9050"), kind: ProxyFailure::Socks5(e) };
        assert_eq!(Report(&wrapped).to_string(), format!("proxy 127.0.0.1:9050: {text}"));
    }
    assert_eq!(ReplyCode::from_code(0x00), None);
    for byte in 0x01..=0xff {
        let code = ReplyCode::from_code(byte).expect("non-zero");
        assert_eq!(code.code(), byte, "round trip");
        let text = code.to_string();
        assert!(!text.is_empty() && text.chars().next().is_some_and(|c| c.is_lowercase()), "{text}");
        let known = (0x01..=0x08).contains(&byte) || (0xF0..=0xF7).contains(&byte);
        assert_eq!(matches!(code, ReplyCode::Unknown(_)), !known, "{byte:#04x}");
    }
}

#[test]
fn a_failure_code_fails_at_once_and_stays_failed() {
    let mut h = connected_v4();
    // Only two bytes: the code is enough to fail.
    assert_eq!(h.handle_input(&hex("0504")), Err(Socks5Error::Reply(ReplyCode::HostUnreachable)));
    assert_eq!(h.stage(), Stage::Failed);
    assert!(h.poll_transmit().is_empty());
    assert_eq!(h.handle_input(&hex("0001")), Err(Socks5Error::Reply(ReplyCode::HostUnreachable)));
    assert_eq!(h.handle_eof(), Err(Socks5Error::Reply(ReplyCode::HostUnreachable)));
    assert!(h.take_leftover().is_empty());
    assert_eq!(h.bound(), None);
}

#[test]
fn proxy_error_names_the_proxy_and_not_its_source() {
    let e = ProxyError {
        proxy: addr("127.0.0.1:9050"),
        kind: ProxyFailure::Socks5(Socks5Error::Reply(ReplyCode::HostUnreachable)),
    };
    assert_eq!(e.to_string(), "proxy 127.0.0.1:9050");
    assert_eq!(e.source().map(|s| s.to_string()).as_deref(), Some("host unreachable"));
    assert_eq!(Report(&e).to_string(), "proxy 127.0.0.1:9050: host unreachable");
    let e = ProxyError { proxy: addr("[::1]:9050"), kind: ProxyFailure::Socks5(Socks5Error::AuthFailed { status: 1 }) };
    assert_eq!(Report(&e).to_string(), "proxy [::1]:9050: username and password rejected");
}

fn greeting_reply(auth: Auth, reply: &str) -> Result<Progress, Socks5Error> {
    let mut h = Handshake::new(Target::Addr(addr("127.0.0.1:8333")), auth);
    drain(&mut h);
    let result = h.handle_input(&hex(reply));
    if result.is_err() {
        assert_eq!(h.stage(), Stage::Failed);
        assert!(h.poll_transmit().is_empty(), "nothing sent after a failure");
    }
    result
}

#[test]
fn method_selection_errors() {
    let password = || Auth::Password(creds("u", "p"));
    let e = greeting_reply(Auth::None, "05ff").expect_err("no acceptable method");
    assert_eq!(e, Socks5Error::NoAcceptableMethod { offered_password: false });
    assert_eq!(e.to_string(), "authentication required");
    let e = greeting_reply(password(), "05ff").expect_err("no acceptable method");
    assert_eq!(e, Socks5Error::NoAcceptableMethod { offered_password: true });
    assert_eq!(e.to_string(), "username/password authentication not accepted");
    // Choosing a method we did not offer: password when we have none, no
    // authentication when we offered credentials (which would silently drop
    // stream isolation), or GSSAPI.
    let e = greeting_reply(Auth::None, "0502").expect_err("unoffered");
    assert_eq!(e, Socks5Error::UnofferedMethod(0x02));
    assert_eq!(e.to_string(), "chose authentication method 0x02, which was not offered");
    assert_eq!(greeting_reply(password(), "0500"), Err(Socks5Error::UnofferedMethod(0x00)));
    assert_eq!(greeting_reply(password(), "0501"), Err(Socks5Error::UnofferedMethod(0x01)));
    // A SOCKS4 answer fails on its first byte.
    let e = greeting_reply(Auth::None, "04").expect_err("wrong version");
    assert_eq!(e, Socks5Error::Version { stage: Stage::Greeting, version: 4 });
    assert_eq!(e.to_string(), "method selection reply has version 4, not 5");
    // An HTTP proxy's answer too.
    assert_eq!(
        greeting_reply(Auth::None, "485454502f312e31"),
        Err(Socks5Error::Version { stage: Stage::Greeting, version: b'H' })
    );
}

fn auth_reply(reply: &str) -> Result<Progress, Socks5Error> {
    let mut h = Handshake::new(Target::Addr(addr("127.0.0.1:8333")), Auth::Password(creds("u", "p")));
    drain(&mut h);
    h.handle_input(&hex("0502")).expect("method accepted");
    drain(&mut h);
    h.handle_input(&hex(reply))
}

#[test]
fn authentication_errors() {
    let e = auth_reply("0101").expect_err("rejected");
    assert_eq!(e, Socks5Error::AuthFailed { status: 1 });
    assert_eq!(e.to_string(), "username and password rejected");
    assert_eq!(auth_reply("01ff"), Err(Socks5Error::AuthFailed { status: 0xff }));
    let e = auth_reply("0500").expect_err("wrong sub-negotiation version");
    assert_eq!(e, Socks5Error::Version { stage: Stage::Authentication, version: 5 });
    assert_eq!(e.to_string(), "authentication reply has version 5, not 1");
    assert_eq!(auth_reply("0100"), Ok(Progress::Pending));
}

fn connect_reply(reply: &str) -> Result<Progress, Socks5Error> {
    connected_v4().handle_input(&hex(reply))
}

#[test]
fn malformed_connect_replies() {
    let e = connect_reply("04000001").expect_err("wrong version");
    assert_eq!(e, Socks5Error::Version { stage: Stage::Connect, version: 4 });
    assert_eq!(e.to_string(), "connect request reply has version 4, not 5");
    let e = connect_reply("05000101").expect_err("reserved byte");
    assert_eq!(e, Socks5Error::Reserved(1));
    assert_eq!(e.to_string(), "connect reply has reserved byte 0x01, not 0");
    let e = connect_reply("05000002").expect_err("address type 2");
    assert_eq!(e, Socks5Error::AddressType(2));
    assert_eq!(e.to_string(), "connect reply has unknown address type 2");
    assert_eq!(connect_reply("05000000"), Err(Socks5Error::AddressType(0)));
    assert_eq!(connect_reply("050000ff"), Err(Socks5Error::AddressType(0xff)));
    let e = connect_reply("0500000300").expect_err("empty name");
    assert_eq!(e, Socks5Error::EmptyName);
    assert_eq!(e.to_string(), "connect reply has an empty bound name");
    // Incomplete but valid so far.
    assert_eq!(connect_reply("050000"), Ok(Progress::Pending));
    assert_eq!(connect_reply("0500000301"), Ok(Progress::Pending));
    assert_eq!(connect_reply("05000001 00000000 00"), Ok(Progress::Pending));
}

#[test]
fn eof_before_connected_names_the_stage() {
    let mut h = Handshake::new(Target::Addr(addr("127.0.0.1:8333")), Auth::None);
    let e = h.handle_eof().expect_err("closed");
    assert_eq!(e, Socks5Error::Closed(Stage::Greeting));
    assert_eq!(e.to_string(), "closed the connection during the method selection");
    assert_eq!(h.handle_input(&hex("0500")), Err(e));

    let mut h = Handshake::new(Target::Addr(addr("127.0.0.1:8333")), Auth::Password(creds("u", "p")));
    h.handle_input(&hex("0502")).expect("accepted");
    let e = h.handle_eof().expect_err("closed");
    assert_eq!(e.to_string(), "closed the connection during the authentication");

    let mut h = connected_v4();
    h.handle_input(&hex("050000")).expect("valid so far");
    let e = h.handle_eof().expect_err("closed");
    assert_eq!(e, Socks5Error::Closed(Stage::Connect));
    assert_eq!(e.to_string(), "closed the connection during the connect request");

    let mut h = connected_v4();
    h.handle_input(&hex("05000001000000000000")).expect("connected");
    assert_eq!(h.handle_eof(), Ok(()), "after the reply the end is the tunnel's");
    assert!(h.is_connected());
}

#[test]
fn names_are_checked_at_construction() {
    assert_eq!(Name::new(""), Err(NameError::Empty));
    assert_eq!(Name::new("a".repeat(256)), Err(NameError::TooLong { len: 256 }));
    assert_eq!(Name::new("a\0b"), Err(NameError::Nul));
    assert_eq!(Target::name("", 1), Err(NameError::Empty));
    assert_eq!(Name::new("a".repeat(255)).map(|n| n.as_str().len()), Ok(255));
    // Multi-byte characters count in bytes: 128 × 2 bytes is too long.
    assert_eq!(Name::new("é".repeat(128)), Err(NameError::TooLong { len: 256 }));
    assert_eq!(NameError::Empty.to_string(), "empty host name");
    assert_eq!(NameError::TooLong { len: 300 }.to_string(), "host name of 300 bytes is longer than 255");
    assert_eq!(NameError::Nul.to_string(), "host name contains a nul byte");
}

#[test]
fn onion_names_are_recognised() {
    for (name, onion) in [
        (ONION, true),
        ("abc.onion", true),
        ("ABC.ONION", true),
        ("x.Onion", true),
        (".onion", false),
        ("onion", false),
        ("example.com", false),
        ("onion.example", false),
    ] {
        assert_eq!(Name::new(name).expect("valid").is_onion(), onion, "{name}");
    }
    assert!(!Target::Addr(addr("127.0.0.1:9050")).is_onion());
}

#[test]
fn targets_display_and_convert() {
    assert_eq!(Target::from(addr("127.0.0.1:8333")).to_string(), "127.0.0.1:8333");
    assert_eq!(Target::from(addr("[::1]:8333")).to_string(), "[::1]:8333");
    let name = Target::name("seed.bitcoin.sipa.be", 8333).expect("valid");
    assert_eq!(name.to_string(), "seed.bitcoin.sipa.be:8333");
    assert_eq!(name.port(), 8333);
    let h = Handshake::new(name.clone(), Auth::None);
    assert_eq!(h.target(), &name);
}

#[test]
fn credentials_are_checked_at_construction() {
    assert_eq!(Credentials::new("", "p"), Err(CredentialsError::Username { len: 0 }));
    assert_eq!(Credentials::new("u", ""), Err(CredentialsError::Password { len: 0 }));
    assert_eq!(Credentials::new("u".repeat(256), "p"), Err(CredentialsError::Username { len: 256 }));
    assert_eq!(Credentials::new("u", vec![0u8; 256]), Err(CredentialsError::Password { len: 256 }));
    let c = Credentials::new(vec![0xffu8; 255], vec![0u8; 255]).expect("255 bytes each, any bytes");
    assert_eq!((c.username().len(), c.password().len()), (255, 255));
    assert_eq!(CredentialsError::Username { len: 0 }.to_string(), "proxy username is 0 bytes long, not 1 to 255");
    assert_eq!(CredentialsError::Password { len: 256 }.to_string(), "proxy password is 256 bytes long, not 1 to 255");
    let debug = format!("{:?}", creds("alice", "hunter2"));
    assert!(debug.contains("alice") && !debug.contains("hunter2"), "{debug}");
}

#[test]
fn stream_isolation_follows_cores_prefix_and_counter() {
    let mut isolation = StreamIsolation::new([0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]);
    let first = isolation.next_credentials();
    assert_eq!(first.username(), b"0123456789abcdef-0");
    assert_eq!(first.password(), b"0123456789abcdef-0");
    let second = isolation.next_credentials();
    assert_eq!(second.username(), b"0123456789abcdef-1");
    assert_eq!(second.password(), second.username());
    assert_eq!(isolation.issued(), 2);

    // 50 connections, 50 distinct pairs.
    let mut source = AuthSource::Isolated(StreamIsolation::new([0; 8]));
    let mut seen = std::collections::HashSet::new();
    for n in 0..50 {
        let Auth::PasswordOrNone(c) = source.next_auth() else { panic!("isolation offers credentials") };
        assert_eq!(c.username(), format!("0000000000000000-{n}").as_bytes());
        assert!(seen.insert((c.username().to_vec(), c.password().to_vec())));
    }
    assert_eq!(seen.len(), 50);

    // Another seed (another run of the program) never collides.
    let mut other = StreamIsolation::new([0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(other.next_credentials().username(), b"0000000000000001-0");

    // The largest counter still makes valid credentials.
    let mut last = StreamIsolation { prefix: "ffffffffffffffff-".into(), counter: u64::MAX };
    assert_eq!(last.next_credentials().username(), b"ffffffffffffffff-18446744073709551615");
}

#[test]
fn fixed_and_no_credentials() {
    let fixed = creds("alice", "hunter2");
    let mut source = AuthSource::Fixed(fixed.clone());
    assert_eq!(source.next_auth(), Auth::Password(fixed.clone()));
    assert_eq!(source.next_auth(), Auth::Password(fixed));
    assert_eq!(AuthSource::None.next_auth(), Auth::None);
}

#[test]
fn every_error_display_is_lower_case_and_has_no_source() {
    let errors = [
        Socks5Error::Version { stage: Stage::Greeting, version: 4 },
        Socks5Error::NoAcceptableMethod { offered_password: false },
        Socks5Error::NoAcceptableMethod { offered_password: true },
        Socks5Error::UnofferedMethod(1),
        Socks5Error::AuthFailed { status: 1 },
        Socks5Error::Reply(ReplyCode::GeneralFailure),
        Socks5Error::Reserved(1),
        Socks5Error::AddressType(9),
        Socks5Error::EmptyName,
        Socks5Error::Closed(Stage::Connect),
    ];
    for e in errors {
        let text = e.to_string();
        assert!(text.chars().next().is_some_and(|c| c.is_lowercase()), "{text}");
        assert!(e.source().is_none());
    }
}

/// A valid exchange: the handshake's configuration, what the proxy sends,
/// and what the client must send.
#[derive(Debug, Clone)]
struct Exchange {
    target: Target,
    auth: Auth,
    bound: Bound,
    after: Vec<u8>,
}

impl Exchange {
    fn server_bytes(&self) -> Vec<u8> {
        let mut bytes = match self.auth {
            Auth::None => hex("0500"),
            Auth::Password(_) | Auth::PasswordOrNone(_) => hex("0502 0100"),
        };
        bytes.extend_from_slice(&[5, 0, 0]);
        match &self.bound {
            Bound::Addr(SocketAddr::V4(a)) => {
                bytes.push(1);
                bytes.extend_from_slice(&a.ip().octets());
            }
            Bound::Addr(SocketAddr::V6(a)) => {
                bytes.push(4);
                bytes.extend_from_slice(&a.ip().octets());
            }
            Bound::Name { name, .. } => {
                bytes.push(3);
                bytes.push(name.len() as u8);
                bytes.extend_from_slice(name);
            }
        }
        let port = match &self.bound {
            Bound::Addr(a) => a.port(),
            Bound::Name { port, .. } => *port,
        };
        bytes.extend_from_slice(&port.to_be_bytes());
        bytes.extend_from_slice(&self.after);
        bytes
    }

    fn client_bytes(&self) -> Vec<u8> {
        let mut bytes = match &self.auth {
            Auth::None => vec![5, 1, 0],
            Auth::Password(_) => vec![5, 1, 2],
            Auth::PasswordOrNone(_) => vec![5, 2, 0, 2],
        };
        if let Auth::Password(c) | Auth::PasswordOrNone(c) = &self.auth {
            bytes.push(1);
            bytes.push(c.username().len() as u8);
            bytes.extend_from_slice(c.username());
            bytes.push(c.password().len() as u8);
            bytes.extend_from_slice(c.password());
        }
        bytes.extend_from_slice(&[5, 1, 0]);
        match &self.target {
            Target::Addr(SocketAddr::V4(a)) => {
                bytes.push(1);
                bytes.extend_from_slice(&a.ip().octets());
            }
            Target::Addr(SocketAddr::V6(a)) => {
                bytes.push(4);
                bytes.extend_from_slice(&a.ip().octets());
            }
            Target::Name { name, .. } => {
                bytes.push(3);
                bytes.push(name.as_str().len() as u8);
                bytes.extend_from_slice(name.as_str().as_bytes());
            }
        }
        bytes.extend_from_slice(&self.target.port().to_be_bytes());
        bytes
    }
}

fn arb_socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
    ]
}

fn arb_target() -> impl Strategy<Value = Target> {
    prop_oneof![
        arb_socket_addr().prop_map(Target::Addr),
        ("[a-z0-9.-]{1,255}", any::<u16>())
            .prop_map(|(name, port)| Target::name(name, port).expect("1 to 255 ASCII bytes")),
        ("[a-z2-7]{56}", any::<u16>())
            .prop_map(|(name, port)| Target::name(format!("{name}.onion"), port).expect("62 bytes")),
    ]
}

fn arb_auth() -> impl Strategy<Value = Auth> {
    prop_oneof![
        Just(Auth::None),
        (prop::collection::vec(any::<u8>(), 1..=255), prop::collection::vec(any::<u8>(), 1..=255))
            .prop_map(|(u, p)| Auth::Password(Credentials::new(u, p).expect("1 to 255 bytes"))),
        (prop::collection::vec(any::<u8>(), 1..=255), prop::collection::vec(any::<u8>(), 1..=255))
            .prop_map(|(u, p)| Auth::PasswordOrNone(Credentials::new(u, p).expect("1 to 255 bytes"))),
    ]
}

fn arb_bound() -> impl Strategy<Value = Bound> {
    prop_oneof![
        arb_socket_addr().prop_map(Bound::Addr),
        (prop::collection::vec(any::<u8>(), 1..=255), any::<u16>()).prop_map(|(name, port)| Bound::Name { name, port }),
    ]
}

fn arb_exchange() -> impl Strategy<Value = Exchange> {
    (arb_target(), arb_auth(), arb_bound(), prop::collection::vec(any::<u8>(), 0..300))
        .prop_map(|(target, auth, bound, after)| Exchange { target, auth, bound, after })
}

/// Feeds `input` in chunks cut at `cuts` (each taken modulo what is left),
/// writing what the handshake offers in chunks of `writes` between reads.
/// Returns what was sent, the last result, and the leftover.
fn feed_split(
    exchange: &Exchange,
    input: &[u8],
    cuts: &[usize],
    writes: &[usize],
) -> (Vec<u8>, Result<Progress, Socks5Error>, Vec<u8>) {
    let mut h = Handshake::new(exchange.target.clone(), exchange.auth.clone());
    let mut sent = Vec::new();
    let mut result = Ok(Progress::Pending);
    let mut rest = input;
    let mut i = 0;
    while !rest.is_empty() {
        // Write part of what is pending.
        let pending = h.poll_transmit();
        if !pending.is_empty() {
            let n = writes.get(i).map_or(pending.len(), |w| w % pending.len() + 1);
            sent.extend_from_slice(&pending[..n]);
            h.advance(n);
        }
        let n = cuts.get(i).map_or(rest.len(), |c| c % rest.len() + 1);
        result = h.handle_input(&rest[..n]);
        assert!(h.have <= MAX_REPLY_LEN);
        rest = &rest[n..];
        i += 1;
        if result.is_err() {
            break;
        }
    }
    sent.extend_from_slice(h.poll_transmit());
    let n = h.poll_transmit().len();
    h.advance(n);
    (sent, result, h.take_leftover())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A valid exchange fed in random chunks, with the client's bytes
    /// written in random chunks, connects with the same bound address and
    /// leftover, and sends the same bytes, as when fed whole.
    #[test]
    fn prop_split_exchange_connects_like_whole(
        exchange in arb_exchange(),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
        writes in prop::collection::vec(any::<usize>(), 0..40),
    ) {
        let input = exchange.server_bytes();
        let expected = Ok(Progress::Connected { bound: exchange.bound.clone() });

        let (sent, result, leftover) = feed_split(&exchange, &input, &[], &[]);
        prop_assert_eq!(&result, &expected);
        prop_assert_eq!(&leftover, &exchange.after);
        prop_assert_eq!(&sent, &exchange.client_bytes());

        let (sent, result, leftover) = feed_split(&exchange, &input, &cuts, &writes);
        prop_assert_eq!(&result, &expected);
        prop_assert_eq!(&leftover, &exchange.after);
        prop_assert_eq!(&sent, &exchange.client_bytes());

        // Byte at a time.
        let (sent, result, leftover) = feed_split(&exchange, &input, &vec![0; input.len()], &[]);
        prop_assert_eq!(&result, &expected);
        prop_assert_eq!(&leftover, &exchange.after);
        prop_assert_eq!(&sent, &exchange.client_bytes());
    }

    /// Garbage in any chunks never panics; an error is final; a success
    /// accounts for every byte.
    #[test]
    fn prop_garbage_never_panics(
        exchange in arb_exchange(),
        input in prop::collection::vec(any::<u8>(), 0..600),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
        writes in prop::collection::vec(any::<usize>(), 0..40),
    ) {
        let (_, result, leftover) = feed_split(&exchange, &input, &cuts, &writes);
        match result {
            Ok(Progress::Connected { .. }) => prop_assert!(leftover.len() < input.len()),
            Ok(Progress::Pending) => prop_assert!(leftover.is_empty()),
            Err(e) => {
                prop_assert!(!e.to_string().is_empty());
                prop_assert!(leftover.is_empty());
            }
        }
    }

    /// A valid prefix of the proxy's answer with one byte corrupted either
    /// still works or fails with a typed error, and never panics.
    #[test]
    fn prop_corrupted_exchange_fails_cleanly(
        exchange in arb_exchange(),
        at in any::<usize>(),
        xor in 1u8..,
        cuts in prop::collection::vec(any::<usize>(), 0..40),
    ) {
        let mut input = exchange.server_bytes();
        let at = at % input.len();
        input[at] ^= xor;
        let (_, result, leftover) = feed_split(&exchange, &input, &cuts, &[]);
        if let Ok(Progress::Connected { .. }) = result {
            prop_assert!(leftover.len() <= exchange.after.len() + MAX_REPLY_LEN);
        } else {
            prop_assert!(leftover.is_empty());
        }
    }
}

/// Isolation offers both methods, as Bitcoin Core does: Tor picks
/// username/password (and isolates by it); a proxy without authentication
/// picks none, and no credentials are sent.
#[test]
fn password_or_none_offers_both_and_follows_the_proxy_choice() {
    let target = Target::Addr(addr("127.0.0.1:8333"));
    let auth = Auth::PasswordOrNone(creds("u", "p"));
    let mut h = Handshake::new(target.clone(), auth.clone());
    assert_eq!(h.poll_transmit(), hex("05020002"));
    drain(&mut h);
    assert_eq!(h.handle_input(&hex("0502")), Ok(Progress::Pending));
    assert_eq!(h.poll_transmit(), hex("01 0175 0170"), "RFC 1929 credentials follow");

    let mut h = Handshake::new(target.clone(), auth.clone());
    drain(&mut h);
    assert_eq!(h.handle_input(&hex("0500")), Ok(Progress::Pending));
    assert_eq!(h.stage(), Stage::Connect, "no credentials when the proxy picks none");
    assert_eq!(h.poll_transmit(), hex("050100 01 7f000001 208d"));

    let mut h = Handshake::new(target, auth);
    drain(&mut h);
    assert_eq!(h.handle_input(&hex("05ff")), Err(Socks5Error::NoAcceptableMethod { offered_password: true }));
}
