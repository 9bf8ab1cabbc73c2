//! Connections through a SOCKS5 proxy (the scripted server of
//! `tests/support/socks_server.rs`): sessions over v1 and v2, what the proxy
//! is asked, stream isolation, and how each failure is reported.

use std::net::SocketAddr;
use std::time::Duration;

use peerlink::error::Report;
use peerlink::socks5::{Proxy, ProxyAuth, ProxyError, ProxyFailure, ReplyCode, Socks5Error};
use peerlink::wire::TransportPolicy;
use peerlink::{Config, ConnectError, Event, Handle, PeerId, PeerInfo, Target};

use crate::common::*;
use crate::session_test_config;
use crate::socks_server::{Auth, Behaviour, Options, RequestedTarget, SocksServer};

/// A session-mode listener (the real peer behind the proxy).
fn peer(transport: TransportPolicy) -> (Handle, SocketAddr) {
    let mut config = session_test_config();
    config.transport = transport;
    config.listen.push(localhost());
    listener_with(config)
}

/// A session-mode client whose every connection goes through `proxy`.
fn proxied_client(proxy: Proxy, transport: TransportPolicy) -> Handle {
    let mut config = session_test_config();
    config.transport = transport;
    config.proxy = Some(proxy);
    peerlink::start(config).expect("start client")
}

fn ready(handle: &Handle) -> (PeerId, PeerInfo) {
    wait_for(handle, |e| match e {
        Event::Ready { peer, info } => Some((peer, *info)),
        Event::Disconnected { reason, .. } => panic!("disconnected before ready: {}", Report(&reason)),
        Event::ConnectFailed { error, .. } => panic!("connect failed: {}", Report(&error)),
        _ => None,
    })
}

fn connect_failed(handle: &Handle, id: PeerId) -> (Target, ConnectError) {
    wait_for(handle, |e| match e {
        Event::ConnectFailed { peer, target, error } => {
            assert_eq!(peer, id);
            Some((target, error))
        }
        Event::Ready { .. } | Event::Connected { .. } => panic!("connected"),
        _ => None,
    })
}

#[test]
fn a_session_runs_through_the_proxy_over_v1_and_v2_with_isolated_credentials() {
    for (transport, v2) in [(TransportPolicy::V1Only, false), (TransportPolicy::V2Only, true)] {
        let (server, addr) = peer(transport);
        let socks = SocksServer::start(Options::default());
        let client = proxied_client(Proxy::new(socks.addr()), transport);
        let id = client.connect(addr).unwrap();
        let (peer, info) = ready(&client);
        assert_eq!(peer, id);
        assert_eq!(info.proxy, Some(socks.addr()), "the peer info names the proxy");
        assert_eq!(info.target, Target::Socket(addr));
        assert_eq!(info.addr, socks.addr(), "the TCP connection is to the proxy");
        assert_eq!(matches!(info.transport, peerlink::codec::Transport::V2 { .. }), v2, "{transport}");
        let requests = socks.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].target, RequestedTarget::Ip(addr.ip()));
        assert_eq!(requests[0].port, addr.port());
        assert_eq!(requests[0].methods, [0x00, 0x02], "isolation offers none and username/password, as Core");
        let (user, pass) = requests[0].credentials.clone().expect("isolated credentials");
        assert_eq!(user, pass, "Core's scheme: username equals password");
        assert!(String::from_utf8(user).unwrap().ends_with("-0"), "the counter starts at 0");
        // The server sees the proxy's outgoing connection, and the session works both ways.
        let (s, _) = wait_for(&server, |e| match e {
            Event::Ready { peer, info } => Some((peer, *info)),
            _ => None,
        });
        client.send(id, bitcoin::p2p::message::NetworkMessage::Alert(b"hi".to_vec())).unwrap();
        let got = wait_for(&server, |e| match e {
            Event::Message { peer, message, .. } if peer == s => Some(message),
            _ => None,
        });
        assert_eq!(got, bitcoin::p2p::message::NetworkMessage::Alert(b"hi".to_vec()));
    }
}

#[test]
fn an_onion_target_reaches_the_proxy_as_its_exact_name() {
    let (_server, addr) = peer(TransportPolicy::V1Only);
    // The proxy cannot reach an onion service here: it forwards to the real peer.
    let socks = SocksServer::start(Options { forward: Some(addr), ..Options::default() });
    let mut config = session_test_config();
    config.transport = TransportPolicy::V1Only;
    config.onion_proxy = Some(Proxy::new(socks.addr()));
    let client = peerlink::start(config).unwrap();
    let name = "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion";
    let target: Target = format!("{name}:8333").parse().unwrap();
    let id = client.connect(target.clone()).unwrap();
    let (peer, info) = ready(&client);
    assert_eq!(peer, id);
    assert_eq!(info.target, target);
    let requests = socks.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].target, RequestedTarget::Name(name.into()));
    assert_eq!(requests[0].port, 8333);
}

#[test]
fn an_onion_target_without_a_proxy_fails_at_once() {
    let client = peerlink::start(session_test_config()).unwrap();
    let target: Target = "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion:8333".parse().unwrap();
    let id = client.connect(target.clone()).unwrap();
    let (failed, error) = connect_failed(&client, id);
    assert_eq!(failed, target);
    assert!(matches!(error, ConnectError::OnionNeedsProxy), "{error:?}");
    assert_eq!(Report(&error).to_string(), "an onion target needs a proxy, and none is configured");
}

#[test]
fn every_reply_code_fails_the_connect_with_a_typed_error_naming_the_proxy() {
    let codes = (0x01..=0x08).chain(0xF0..=0xF7).chain([0x09, 0xEF, 0xFF]);
    for code in codes {
        let socks = SocksServer::start(Options { behaviour: Behaviour::Reply(code), ..Options::default() });
        let client = proxied_client(Proxy::new(socks.addr()), TransportPolicy::V1Only);
        let id = client.connect("127.0.0.1:8333".parse::<SocketAddr>().unwrap()).unwrap();
        let (_, error) = connect_failed(&client, id);
        let expected = ReplyCode::from_code(code).unwrap();
        match &error {
            ConnectError::Proxy(ProxyError { proxy, kind: ProxyFailure::Socks5(Socks5Error::Reply(got)) }) => {
                assert_eq!(*proxy, socks.addr());
                assert_eq!(*got, expected);
            }
            other => panic!("code {code:#04x}: {other:?}"),
        }
        assert_eq!(Report(&error).to_string(), format!("proxy {}: {expected}", socks.addr()), "code {code:#04x}");
    }
}

#[test]
fn wrong_credentials_and_a_missing_method_say_so() {
    let required = Auth::Password { username: b"alice".to_vec(), password: b"right".to_vec() };
    let socks = SocksServer::start(Options { auth: required, ..Options::default() });
    let (_server, addr) = peer(TransportPolicy::V1Only);
    for (auth, ok) in [
        (ProxyAuth::Fixed(peerlink::socks5::Credentials::new("alice", "right").unwrap()), true),
        (ProxyAuth::Fixed(peerlink::socks5::Credentials::new("alice", "wrong").unwrap()), false),
    ] {
        let client = proxied_client(Proxy { addr: socks.addr(), auth }, TransportPolicy::V1Only);
        let id = client.connect(addr).unwrap();
        if ok {
            assert_eq!(ready(&client).0, id);
            continue;
        }
        let (_, error) = connect_failed(&client, id);
        assert!(
            matches!(
                &error,
                ConnectError::Proxy(ProxyError { kind: ProxyFailure::Socks5(Socks5Error::AuthFailed { .. }), .. })
            ),
            "{error:?}"
        );
        assert_eq!(Report(&error).to_string(), format!("proxy {}: username and password rejected", socks.addr()));
    }
    // A proxy without authentication: isolation (the default) falls back to
    // none, fixed credentials fail with a clear error.
    let none_only = SocksServer::start(Options { auth: Auth::NoneOnly, ..Options::default() });
    let client = proxied_client(Proxy::new(none_only.addr()), TransportPolicy::V1Only);
    let id = client.connect(addr).unwrap();
    assert_eq!(ready(&client).0, id);
    assert_eq!(none_only.requests()[0].credentials, None);
    let fixed = ProxyAuth::Fixed(peerlink::socks5::Credentials::new("alice", "right").unwrap());
    let client = proxied_client(Proxy { addr: none_only.addr(), auth: fixed }, TransportPolicy::V1Only);
    let id = client.connect(addr).unwrap();
    let (_, error) = connect_failed(&client, id);
    assert_eq!(
        Report(&error).to_string(),
        format!("proxy {}: username/password authentication not accepted", none_only.addr())
    );
}

#[test]
fn a_proxy_that_is_down_fails_quickly_and_a_silent_one_times_out_naming_the_proxy() {
    let down = std::net::TcpListener::bind(localhost()).unwrap().local_addr().unwrap();
    let client = proxied_client(Proxy::new(down), TransportPolicy::V1Only);
    let started = std::time::Instant::now();
    let id = client.connect("127.0.0.1:8333".parse::<SocketAddr>().unwrap()).unwrap();
    let (_, error) = connect_failed(&client, id);
    assert!(started.elapsed() < Duration::from_secs(5), "refused at once, not at the timeout");
    assert!(matches!(&error, ConnectError::Proxy(ProxyError { kind: ProxyFailure::Io(_), .. })), "{error:?}");
    assert!(
        Report(&error).to_string().starts_with(&format!("proxy {down}: connection to the proxy failed: ")),
        "{}",
        Report(&error)
    );

    for (behaviour, stage) in
        [(Behaviour::BlackHole, "method selection"), (Behaviour::SilentAfterGreeting, "connect request")]
    {
        let socks = SocksServer::start(Options { behaviour, ..Options::default() });
        let mut config: Config = session_test_config();
        config.proxy = Some(Proxy::new(socks.addr()));
        config.connect_timeout = Duration::from_millis(300);
        let client = peerlink::start(config).unwrap();
        let id = client.connect("127.0.0.1:8333".parse::<SocketAddr>().unwrap()).unwrap();
        let (_, error) = connect_failed(&client, id);
        assert!(matches!(&error, ConnectError::Proxy(ProxyError { kind: ProxyFailure::Timeout { .. }, .. })));
        assert_eq!(
            Report(&error).to_string(),
            format!("proxy {}: no answer to the {stage} within 300 ms", socks.addr())
        );
    }
}

/// The classic leak: a retry path that forgets the proxy. The peer behind
/// the proxy speaks v1 only, so our v2 attempt is refused and retried as v1;
/// both attempts must go through the proxy. A listener on 127.0.0.2 stands
/// where the target address points: a direct connection would land there.
#[test]
fn nothing_connects_directly_not_even_the_v1_fallback_retry() {
    let (_server, addr) = peer(TransportPolicy::V1Only);
    let leak = crate::socks_server::LeakListener::bind([127, 0, 0, 2].into());
    let socks = SocksServer::start(Options { forward: Some(addr), ..Options::default() });
    let client = proxied_client(Proxy::new(socks.addr()), TransportPolicy::V2Preferred);
    let id = client.connect(leak.addr()).unwrap();
    let (peer, info) = ready(&client);
    assert_eq!(peer, id);
    assert_eq!(info.transport, peerlink::codec::Transport::V1, "the v1 fallback ran");
    assert_eq!(info.proxy, Some(socks.addr()));
    let requests = socks.requests();
    assert_eq!(requests.len(), 2, "the v2 attempt and the v1 retry, both through the proxy: {requests:?}");
    for request in &requests {
        assert_eq!(request.target, RequestedTarget::Ip(leak.addr().ip()));
        assert_eq!(request.port, leak.addr().port());
    }
    assert_ne!(requests[0].credentials, requests[1].credentials, "the retry is a new stream with its own credentials");
    // A domain target goes to the proxy as a name: `.invalid` never resolves,
    // so reaching the peer proves no local lookup was needed.
    let id = client.connect("peer.invalid:8333".parse::<Target>().unwrap()).unwrap();
    let (peer, info) = ready(&client);
    assert_eq!(peer, id);
    assert_eq!(info.target.to_string(), "peer.invalid:8333");
    let requests = socks.wait_requests(3, WAIT);
    assert_eq!(requests.last().map(|r| &r.target), Some(&RequestedTarget::Name("peer.invalid".into())));
    assert_eq!(leak.accepted(), 0, "nothing reached the target address directly");
}

/// Stream isolation: every connection gets its own credentials, so Tor
/// never puts two on one circuit.
#[test]
fn fifty_connections_use_fifty_distinct_credential_pairs() {
    let socks = SocksServer::start(Options { behaviour: Behaviour::Reply(0x05), ..Options::default() });
    let client = proxied_client(Proxy::new(socks.addr()), TransportPolicy::V1Only);
    let ids: Vec<PeerId> =
        (0..50).map(|i| client.connect(SocketAddr::from(([127, 0, 0, 1], 10_000 + i))).unwrap()).collect();
    let mut failed = std::collections::HashSet::new();
    while failed.len() < ids.len() {
        wait_for(&client, |e| match e {
            Event::ConnectFailed { peer, error: ConnectError::Proxy(_), .. } => Some(failed.insert(peer)),
            Event::ConnectFailed { error, .. } => panic!("{}", Report(&error)),
            _ => None,
        });
    }
    assert_eq!(failed, ids.iter().copied().collect());
    let requests = socks.wait_requests(50, WAIT);
    assert_eq!(requests.len(), 50);
    let pairs: std::collections::HashSet<_> =
        requests.iter().map(|r| r.credentials.clone().expect("credentials offered and chosen")).collect();
    assert_eq!(pairs.len(), 50, "50 connections, 50 distinct credential pairs");
    let prefixes: std::collections::HashSet<_> = pairs
        .iter()
        .map(|(user, _)| String::from_utf8(user.clone()).unwrap().split('-').next().unwrap().to_owned())
        .collect();
    assert_eq!(prefixes.len(), 1, "one random prefix per run, then a counter (Core's #32176 scheme)");
}

/// Without a proxy a host name is looked up off the reactor thread.
#[test]
fn a_host_name_without_a_proxy_is_resolved_and_connected() {
    let (_server, addr) = peer(TransportPolicy::V1Only);
    let mut config = session_test_config();
    config.transport = TransportPolicy::V1Only;
    config.connect_timeout = Duration::from_secs(5);
    let client = peerlink::start(config).unwrap();
    let target: Target = format!("localhost:{}", addr.port()).parse().unwrap();
    let id = client.connect(target.clone()).unwrap();
    let (peer, info) = ready(&client);
    assert_eq!(peer, id);
    assert_eq!(info.target, target);
    assert_eq!(info.proxy, None);
    assert_eq!(info.addr.port(), addr.port());
    assert!(info.addr.ip().is_loopback());

    let id = client.connect("nonexistent.invalid:8333".parse::<Target>().unwrap()).unwrap();
    let (_, error) = connect_failed(&client, id);
    // Depending on the machine's resolver the lookup fails at once, or only
    // by the connect deadline.
    match &error {
        ConnectError::Resolve { name, .. } | ConnectError::NoAddress { name } => {
            assert_eq!(name, "nonexistent.invalid")
        }
        ConnectError::Timeout(_) => {}
        other => panic!("{other:?}"),
    }
}

/// Raw mode through the proxy: the peer is announced once the proxy has
/// connected, and messages flow both ways.
#[test]
fn raw_mode_works_through_the_proxy() {
    let (server, addr) = listener();
    let socks = SocksServer::start(Options::default());
    let mut config = raw_config();
    config.proxy = Some(Proxy::new(socks.addr()));
    let client = peerlink::start(config).unwrap();
    let c = client.connect(addr).unwrap();
    let remote = wait_for(&client, |e| match e {
        Event::Connected { peer, remote, .. } if peer == c => Some(remote),
        _ => None,
    });
    assert_eq!(remote, socks.addr(), "raw mode's remote is the TCP peer: the proxy");
    connected(&server);
    assert_round_trip(&client, c, &server, 42);
    let info = client.peer_info(c).unwrap().expect("connected");
    assert_eq!((info.proxy, info.target), (Some(socks.addr()), Target::Socket(addr)));
}

/// The one-shot broadcast through the proxy, to a peer that fetches the
/// transaction.
#[test]
fn broadcast_works_through_the_proxy() {
    let (node, addr) = peer(TransportPolicy::V2Preferred);
    let tx = big_tx(250);
    // The node stays up until the broadcaster hangs up: its session must
    // answer the ping that confirms the transaction was processed.
    let fetcher = std::thread::spawn(move || {
        let mut got = None;
        wait_for(&node, |e| match e {
            Event::Message { peer, message: bitcoin::p2p::message::NetworkMessage::Inv(items), .. } => {
                node.send(peer, bitcoin::p2p::message::NetworkMessage::GetData(items)).unwrap();
                None
            }
            Event::Message { message: bitcoin::p2p::message::NetworkMessage::Tx(tx), .. } => {
                got = Some(tx);
                None
            }
            Event::Disconnected { .. } => Some(()),
            _ => None,
        });
        got
    });
    let socks = SocksServer::start(Options::default());
    let mut config = session_test_config();
    config.proxy = Some(Proxy::new(socks.addr()));
    let outcomes = peerlink::broadcast::broadcast(config, &tx, &[addr.into()], WAIT).unwrap();
    assert_eq!(outcomes.len(), 1);
    let delivered = outcomes[0].result.as_ref().unwrap_or_else(|e| panic!("{}", Report(e)));
    assert_eq!(delivered.kind, peerlink::broadcast::DeliveryKind::Sent);
    assert_eq!(fetcher.join().unwrap(), Some(tx), "the peer got the transaction");
    assert_eq!(socks.requests().len(), 1, "through the proxy");
}

/// Our `version` never names the proxy: through a proxy its receiver is the
/// target's address when it has one, else unspecified (as in Core).
#[test]
fn version_tells_the_peer_the_target_never_the_proxy() {
    let (server, addr) = listener(); // raw: our version arrives as a message
    let socks = SocksServer::start(Options { forward: Some(addr), ..Options::default() });
    let mut config = session_test_config();
    config.transport = TransportPolicy::V1Only;
    config.proxy = Some(Proxy::new(socks.addr()));
    let client = peerlink::start(config).unwrap();
    let onion: Target = "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion:8333".parse().unwrap();
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    for (target, receiver) in [(Target::Socket(addr), addr), (onion, unspecified)] {
        client.connect(target.clone()).unwrap();
        let version = wait_for(&server, |e| match e {
            Event::Message { message: bitcoin::p2p::message::NetworkMessage::Version(v), .. } => Some(v),
            _ => None,
        });
        assert_eq!(version.receiver.socket_addr().unwrap(), receiver, "{target}");
        assert_ne!(version.receiver.socket_addr().unwrap(), socks.addr());
    }
}
