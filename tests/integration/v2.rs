//! BIP324 v2 between reactors over loopback: raw and session mode, the v1
//! fallback and its cache, v1 peers on a v2 listener, bad handshakes.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use bitcoin::p2p::message::NetworkMessage;
use peerlink::codec::Transport;
use peerlink::wire::{TransportPolicy, V2HandshakeError, WireError};
use peerlink::{Config, DisconnectReason, Event, Handle, PeerId, SessionError};

use crate::common::*;

fn raw(policy: TransportPolicy) -> Config {
    let mut config = Config::new(NET);
    config.mode = peerlink::Mode::Raw;
    config.transport = policy;
    config
}

fn listen(mut config: Config) -> (Handle, SocketAddr) {
    config.listen.push(localhost());
    let h = peerlink::start(config).unwrap();
    let a = h.local_addrs()[0];
    (h, a)
}

fn transport(handle: &Handle, peer: PeerId) -> Transport {
    handle.peer_info(peer).unwrap().expect("peer is connected").transport
}

#[test]
fn raw_mode_v2_to_v2() {
    let (server, addr) = listen(raw(TransportPolicy::V2Only));
    let client = peerlink::start(raw(TransportPolicy::V2Only)).unwrap();
    let c = client.connect(addr).unwrap();
    // Sent before the transport is up: held, then delivered in order.
    client.send(c, NetworkMessage::Ping(0)).unwrap();
    assert_eq!(connected(&client), c);
    let s = connected(&server);
    let Transport::V2 { session_id } = transport(&client, c) else { panic!("not v2") };
    assert_eq!(transport(&server, s), Transport::V2 { session_id }, "both ends see the same session id");
    for i in 1..=600 {
        client.send(c, NetworkMessage::Ping(i)).unwrap();
    }
    for i in 0..=600 {
        let (m, size) = wait_for(&server, |e| match e {
            Event::Message { message, wire_size, .. } => Some((message, wire_size)),
            _ => None,
        });
        assert_eq!(m, NetworkMessage::Ping(i), "in order, across several rekeys");
        // 3 length + 1 header + 1 short id + 8 nonce + 16 tag.
        assert_eq!(size, 29, "wire size includes the whole packet");
    }
    let tx = big_tx(3_900_000);
    server.send(s, NetworkMessage::Tx(tx.clone())).unwrap();
    let (_, m) = message(&client);
    assert_eq!(m, NetworkMessage::Tx(tx));
    assert_round_trip(&client, c, &server, 9);
}

#[test]
fn v2_preferred_falls_back_to_a_v1_only_peer_then_remembers_it() {
    let (server, addr) = listen(raw(TransportPolicy::V1Only));
    let client = peerlink::start(raw(TransportPolicy::V2Preferred)).unwrap();
    let c = client.connect(addr).unwrap();
    assert_eq!(connected(&client), c, "the fallback is invisible: one Connected, same id");
    assert_eq!(transport(&client, c), Transport::V1);
    // The v1 listener saw our v2 key as a bad header and dropped that
    // attempt; then the v1 retry came in.
    let mut bad_magic = 0;
    let mut inbound = Vec::new();
    while inbound.len() < 2 || bad_magic < 1 {
        match next_event(&server) {
            Event::Connected { peer, .. } => inbound.push(peer),
            Event::Disconnected { reason: DisconnectReason::Codec(WireError::BadMagic { .. }), .. } => bad_magic += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    let s = inbound[1];
    assert_round_trip(&client, c, &server, 1);
    // Next connection to the same address goes straight to v1.
    let c2 = client.connect(addr).unwrap();
    assert_eq!(connected(&client), c2);
    let s2 = connected(&server);
    assert_eq!(transport(&client, c2), Transport::V1);
    client.send(c2, NetworkMessage::Ping(2)).unwrap();
    let (from, m) = message(&server);
    assert_eq!((from, m), (s2, NetworkMessage::Ping(2)), "no second bad-magic attempt came first");
    let _ = s;
}

#[test]
fn v1_peer_connects_to_v2_listener() {
    let (server, addr) = listen(raw(TransportPolicy::V2Preferred));
    let client = peerlink::start(raw(TransportPolicy::V1Only)).unwrap();
    let c = client.connect(addr).unwrap();
    connected(&client);
    // A v1 initiator speaks first: its version tells the listener it is v1.
    client.send(c, NetworkMessage::Version(version_message())).unwrap();
    let s = connected(&server);
    assert_eq!(transport(&server, s), Transport::V1);
    let (_, m) = message(&server);
    assert!(matches!(m, NetworkMessage::Version(_)));
    assert_round_trip(&client, c, &server, 3);
}

#[test]
fn session_mode_v2_and_v1_peers_on_one_listener() {
    let mut config = Config::new(NET);
    config.listen.push(localhost());
    let server = peerlink::start(config).unwrap();
    let addr = server.local_addrs()[0];
    for policy in [TransportPolicy::V2Only, TransportPolicy::V1Only] {
        let mut config = Config::new(NET);
        config.transport = policy;
        let client = peerlink::start(config).unwrap();
        let c = client.connect(addr).unwrap();
        let info = wait_for(&client, |e| match e {
            Event::Ready { info, .. } => Some(info),
            Event::Disconnected { reason, .. } => panic!("{policy:?}: {reason:?}"),
            _ => None,
        });
        let sinfo = wait_for(&server, |e| match e {
            Event::Ready { info, .. } => Some(info),
            _ => None,
        });
        match policy {
            TransportPolicy::V1Only => assert_eq!((info.transport, sinfo.transport), (Transport::V1, Transport::V1)),
            _ => {
                assert!(matches!(info.transport, Transport::V2 { .. }));
                assert_eq!(info.transport, sinfo.transport);
            }
        }
        client.send(c, NetworkMessage::Ping(77)).unwrap();
        let (_, m) = message(&client);
        assert_eq!(m, NetworkMessage::Pong(77));
    }
}

#[test]
fn v2_only_does_not_fall_back() {
    let (_server, addr) = listen(raw(TransportPolicy::V1Only));
    let client = peerlink::start(raw(TransportPolicy::V2Only)).unwrap();
    let c = client.connect(addr).unwrap();
    let reason = wait_for(&client, |e| match e {
        Event::Disconnected { peer, reason } => {
            assert_eq!(peer, c);
            Some(reason)
        }
        Event::Connected { .. } => panic!("a v2-only client connected to a v1-only peer"),
        _ => None,
    });
    assert!(matches!(reason, DisconnectReason::PeerClosed | DisconnectReason::Io(_)), "{reason:?}");
}

/// A peer that starts a v2 handshake and stops: the handshake timeout ends
/// it, in raw mode too.
#[test]
fn truncated_v2_handshake_times_out() {
    for mode in [peerlink::Mode::Raw, peerlink::Mode::Session] {
        let mut config = raw(TransportPolicy::V2Preferred);
        config.mode = mode;
        config.session.handshake_timeout = Duration::from_millis(300);
        let (server, addr) = listen(config);
        let mut peer = std::net::TcpStream::connect(addr).unwrap();
        // 40 bytes of a 64-byte key.
        peer.write_all(&[0x42; 40]).unwrap();
        let reason = wait_for(&server, |e| match e {
            Event::Disconnected { reason, .. } => Some(reason),
            Event::Connected { .. } | Event::Ready { .. } => panic!("announced without a handshake"),
            _ => None,
        });
        // Raw mode has no session: the transport's own timer names it. In
        // session mode the session's handshake deadline (the same instant)
        // comes first.
        match mode {
            peerlink::Mode::Raw => assert!(matches!(reason, DisconnectReason::TransportTimeout(_)), "{reason}"),
            _ => assert!(matches!(reason, DisconnectReason::Protocol(SessionError::HandshakeTimeout(_))), "{reason}"),
        }
    }
}

#[test]
fn v2_garbage_without_terminator_is_refused() {
    let (server, addr) = listen(raw(TransportPolicy::V2Preferred));
    let mut peer = std::net::TcpStream::connect(addr).unwrap();
    // A key, then 4,095 + 16 bytes in which no terminator can appear.
    let mut bytes = vec![0x42u8; 64];
    bytes.extend(std::iter::repeat_n(0x17u8, 4095 + 16));
    peer.write_all(&bytes).unwrap();
    let reason = wait_for(&server, |e| match e {
        Event::Disconnected { reason, .. } => Some(reason),
        _ => None,
    });
    assert!(
        matches!(reason, DisconnectReason::Codec(WireError::V2Handshake(V2HandshakeError::NoGarbageTerminator))),
        "{reason:?}"
    );
}

#[test]
fn wrong_network_v1_version_is_refused_during_detection() {
    let (server, addr) = listen(raw(TransportPolicy::V2Preferred));
    let mut peer = std::net::TcpStream::connect(addr).unwrap();
    let mut frame = encode(bitcoin::Network::Bitcoin, &NetworkMessage::Version(version_message()));
    frame.truncate(20);
    peer.write_all(&frame).unwrap();
    let reason = wait_for(&server, |e| match e {
        Event::Disconnected { reason, .. } => Some(reason),
        _ => None,
    });
    assert!(matches!(reason, DisconnectReason::Codec(WireError::BadMagic { .. })), "{reason:?}");
}
