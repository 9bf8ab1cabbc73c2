//! Inbound admission: eviction when every slot is taken (Bitcoin Core's
//! rule), protected peers, and peers credited with useful relays.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bitcoin::p2p::message::NetworkMessage;
use peerlink::codec::{Codec, Decoded};
use peerlink::wire::V1Codec;
use peerlink::{Config, DisconnectReason, Event, PeerId, Relayed};

use crate::common::*;

/// A TCP peer that sends a valid `version` and then the first bytes of a
/// message that never completes, and never reads.
fn stalled_peer(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    let version = NetworkMessage::Version(version_message());
    let mut bytes = encode(NET, &version);
    bytes.extend_from_slice(&encode(NET, &NetworkMessage::Ping(7))[..10]);
    write_all(&mut s, &bytes);
    s
}

/// Reads v1 messages from `stream` until `pick` returns `Some`, or fails
/// at `deadline`.
fn read_until<T>(stream: &mut TcpStream, deadline: Instant, mut pick: impl FnMut(NetworkMessage) -> Option<T>) -> T {
    let mut codec = V1Codec::new(NET);
    let (mut buf, mut scratch) = (Vec::new(), Vec::new());
    let mut chunk = [0u8; 4096];
    loop {
        loop {
            match codec.decode(&buf, &mut scratch).expect("valid v1 from the listener") {
                Decoded::Message { message, consumed } => {
                    buf.drain(..consumed);
                    if let Some(t) = pick(message) {
                        return t;
                    }
                }
                Decoded::Consumed(n) => drop(buf.drain(..n)),
                Decoded::NeedMore { .. } => break,
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "deadline passed");
        stream.set_read_timeout(Some(left)).unwrap();
        let n = stream.read(&mut chunk).expect("read before the deadline");
        assert!(n > 0, "the listener closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The scenario: 500 connections that each send `version` and then
/// the start of a message that never completes fill the default 125
/// inbound slots many times over. A well-behaved peer that comes after
/// them still gets a slot (a stalled peer is evicted) and its `pong`
/// within 1 s.
#[test]
fn five_hundred_stalled_connections_do_not_lock_out_a_good_peer() {
    let mut config = Config::new(NET);
    config.transport = peerlink::wire::TransportPolicy::V1Only;
    config.listen.push(localhost());
    let server = peerlink::start(config).unwrap();
    let addr = server.local_addrs()[0];
    let stalled: Vec<TcpStream> = (0..500).map(|_| stalled_peer(addr)).collect();

    let started = Instant::now();
    let deadline = started + Duration::from_secs(1);
    let mut good = TcpStream::connect(addr).unwrap();
    let version = NetworkMessage::Version(version_message());
    write_all(&mut good, &encode(NET, &version));
    read_until(&mut good, deadline, |m| matches!(m, NetworkMessage::Verack).then_some(()));
    write_all(&mut good, &encode(NET, &NetworkMessage::Verack));
    write_all(&mut good, &encode(NET, &NetworkMessage::Ping(0x600d)));
    read_until(&mut good, deadline, |m| matches!(m, NetworkMessage::Pong(0x600d)).then_some(()));
    let took = started.elapsed();
    println!("good peer's pong after {} ms", took.as_millis());
    assert!(took < Duration::from_secs(1), "pong after {took:?}");

    // 501 connections, 125 slots: each one past the 125th evicted a peer.
    let stats = server.reactor_stats();
    assert_eq!(stats.inbound_accepted, 501, "{stats:?}");
    assert_eq!(stats.inbound_evicted, 501 - 125, "{stats:?}");
    assert_eq!(stats.inbound_refused_full, 0, "{stats:?}");
    // Session mode lists peers once their handshake is done: the good one.
    assert_eq!(server.peers().unwrap().len(), 1);
    drop(stalled);
}

/// Raw mode announces peers at once, so every eviction is reported with
/// its own reason. Each newcomer is protected as it arrives, so that the
/// evictions must come from the first 40 peers; of those, the one the user
/// protected and the one it credited with a novel block are never chosen,
/// though they are the youngest.
#[test]
fn evictions_are_reported_and_spare_protected_and_useful_peers() {
    let mut config = listener_config();
    config.max_inbound = 40;
    let (server, addr) = listener_with(config);
    let mut streams = Vec::new();
    let mut first: Vec<PeerId> = Vec::new();
    for _ in 0..40 {
        let (s, id) = raw_peer(&server, addr);
        streams.push(s);
        first.push(id);
    }
    let (protected, useful) = (first[39], first[38]);
    server.protect(protected, true).unwrap();
    server.relayed(useful, Relayed::Block).unwrap();
    // A query is answered after the commands before it: they are applied.
    assert_eq!(server.peers().unwrap().len(), 40);
    let mut evicted = Vec::new();
    // 10 rounds: with fewer than about 20 unprotected peers left, the
    // rule protects them all (see the next test).
    for _ in 0..10 {
        streams.push(stalled_peer(addr));
        let (mut victim, mut newcomer) = (None, None);
        while victim.is_none() || newcomer.is_none() {
            match next_event(&server) {
                Event::Disconnected { peer, reason: DisconnectReason::Evicted } => victim = Some(peer),
                Event::Disconnected { peer, reason } => panic!("peer {peer} closed: {reason}"),
                Event::Connected { peer, .. } => newcomer = Some(peer),
                _ => {}
            }
        }
        let (victim, newcomer) = (victim.unwrap(), newcomer.unwrap());
        server.protect(newcomer, true).unwrap();
        assert_eq!(server.peers().unwrap().len(), 40);
        evicted.push(victim);
    }
    assert!(evicted.iter().all(|v| first.contains(v)), "{evicted:?}");
    assert!(!evicted.contains(&protected) && !evicted.contains(&useful), "{evicted:?}");
    let stats = server.reactor_stats();
    assert_eq!((stats.inbound_evicted, stats.inbound_refused_full), (10, 0), "{stats:?}");
    let peers: Vec<PeerId> = server.peers().unwrap().iter().map(|p| p.peer).collect();
    assert!(peers.contains(&protected) && peers.contains(&useful));
}

/// With every inbound peer protected there is nothing to evict: the new
/// connection is closed at accept and counted.
#[test]
fn a_new_connection_is_refused_when_no_peer_may_be_evicted() {
    let mut config = listener_config();
    config.max_inbound = 30;
    let (server, addr) = listener_with(config);
    let mut streams = Vec::new();
    for _ in 0..30 {
        let (s, id) = raw_peer(&server, addr);
        server.protect(id, true).unwrap();
        streams.push(s);
    }
    let mut late = TcpStream::connect(addr).unwrap();
    late.set_read_timeout(Some(WAIT)).unwrap();
    assert!(read_to_close(&mut late).is_empty(), "closed at once");
    let stats = server.reactor_stats();
    assert_eq!((stats.inbound_evicted, stats.inbound_refused_full), (0, 1), "{stats:?}");
    assert_eq!(server.peers().unwrap().len(), 30);
}

/// The connect's outcome, which must be a failure.
fn connect_failure(handle: &peerlink::Handle, peer: PeerId) -> peerlink::ConnectError {
    wait_for(handle, |e| match e {
        Event::ConnectFailed { peer: p, error, .. } if p == peer => Some(error),
        Event::Connected { peer: p, .. } if p == peer => panic!("connected past the cap"),
        _ => None,
    })
}

/// `max_outbound` counts open and pending outbound connections; a connect
/// beyond it fails at once with a typed error, and room comes back when a
/// connection closes.
#[test]
fn outbound_connections_beyond_the_cap_fail_with_a_typed_error() {
    let (server, addr) = listener();
    let mut config = raw_config();
    config.max_outbound = 2;
    let client = peerlink::start(config).unwrap();
    let a = client.connect(addr).unwrap();
    let b = client.connect(addr).unwrap();
    let third = client.connect(addr).unwrap();
    // The refusal and the two connects may be reported in any order; the
    // peer list holds a connection only once its `Connected` is out.
    let (mut error, mut up) = (None, Vec::new());
    while error.is_none() || up.len() < 2 {
        match wait_for(&client, |e| match e {
            Event::ConnectFailed { peer, error, .. } if peer == third => Some(Err(error)),
            Event::Connected { peer, .. } => Some(Ok(peer)),
            _ => None,
        }) {
            Err(failed) => error = Some(failed),
            Ok(peer) => {
                assert_ne!(peer, third, "connected past the cap");
                up.push(peer);
            }
        }
    }
    let error = error.unwrap();
    assert!(matches!(error, peerlink::ConnectError::TooManyOutbound { max: 2 }), "{error:?}");
    assert_eq!(error.to_string(), "2 outbound connections already (the maximum)");
    assert!(up.contains(&a) && up.contains(&b), "{up:?}");
    // The server saw two connections only.
    connected(&server);
    connected(&server);
    let open: Vec<PeerId> = client.peers().unwrap().iter().map(|p| p.peer).collect();
    assert!(open.contains(&a) && open.contains(&b) && open.len() == 2, "{open:?}");
    client.disconnect(a, peerlink::Disconnect::Now).unwrap();
    wait_for(&client, |e| matches!(e, Event::Disconnected { peer, .. } if peer == a).then_some(()));
    let fourth = client.connect(addr).unwrap();
    wait_for(&client, |e| matches!(e, Event::Connected { peer, .. } if peer == fourth).then_some(()));
}

/// `max_pending_connects` counts connects not yet established: here they
/// hang in the handshake with a proxy that accepts and never answers.
#[cfg(feature = "socks")]
#[test]
fn pending_connects_beyond_the_cap_fail_with_a_typed_error() {
    let silent = std::net::TcpListener::bind(localhost()).unwrap();
    let mut config = raw_config();
    config.max_pending_connects = 2;
    config.proxy = Some(peerlink::socks5::Proxy::new(silent.local_addr().unwrap()));
    let client = peerlink::start(config).unwrap();
    let target: SocketAddr = "127.0.0.1:8333".parse().unwrap();
    let _a = client.connect(target).unwrap();
    let _b = client.connect(target).unwrap();
    let third = client.connect(target).unwrap();
    let error = connect_failure(&client, third);
    assert!(matches!(error, peerlink::ConnectError::TooManyPending { max: 2 }), "{error:?}");
}

/// Per-source caps: connections beyond an address's or a network group's
/// share are closed at accept and counted; a slot given back is taken
/// again. (Every connection here comes from 127.0.0.1, one address and one
/// group; the unit tests count distinct ones.)
#[test]
fn per_ip_and_per_group_caps_close_the_excess_at_accept() {
    for (per_ip, per_group, allowed) in [(Some(3), None, 3), (None, Some(2), 2)] {
        let mut config = listener_config();
        config.max_inbound_per_ip = per_ip;
        config.max_inbound_per_netgroup = per_group;
        let (server, addr) = listener_with(config);
        let mut peers: Vec<_> = (0..allowed).map(|_| raw_peer(&server, addr)).collect();
        let mut excess = TcpStream::connect(addr).unwrap();
        excess.set_read_timeout(Some(WAIT)).unwrap();
        assert!(read_to_close(&mut excess).is_empty(), "closed at accept");
        let stats = server.reactor_stats();
        assert_eq!((stats.inbound_accepted, stats.inbound_refused_source), (allowed as u64, 1), "{stats:?}");
        // One leaves: its slot is free for the next.
        let (gone, id) = peers.pop().unwrap();
        drop(gone);
        wait_for(&server, |e| matches!(e, Event::Disconnected { peer, .. } if peer == id).then_some(()));
        let (_again, _) = raw_peer(&server, addr);
        assert_eq!(server.reactor_stats().inbound_refused_source, 1);
    }
}

/// A ban closes the peers in the subnet, closes new connections from it at
/// accept, and makes connects to it fail before any syscall; lifting it
/// lets them in again.
#[test]
fn bans_close_refuse_and_fail_connects_until_lifted() {
    use peerlink::ban::Subnet;
    let (server, addr) = listener();
    let (mut raw, id) = raw_peer(&server, addr);
    let loopback: Subnet = "127.0.0.0/8".parse().unwrap();
    server.ban(loopback, Duration::from_secs(3600)).unwrap();
    let reason = wait_for(&server, |e| match e {
        Event::Disconnected { peer, reason } if peer == id => Some(reason),
        _ => None,
    });
    assert!(matches!(reason, DisconnectReason::Banned), "{reason}");
    assert_eq!(reason.fault(), peerlink::Fault::Neither);
    assert!(read_to_close(&mut raw).is_empty());
    let mut refused = TcpStream::connect(addr).unwrap();
    refused.set_read_timeout(Some(WAIT)).unwrap();
    assert!(read_to_close(&mut refused).is_empty(), "closed at accept");
    assert_eq!(server.reactor_stats().inbound_refused_banned, 1);

    // Outbound: a second reactor, its own ban list.
    let client = client();
    client.ban(Subnet::host(addr.ip()), Duration::from_secs(3600)).unwrap();
    let banned = client.connect(addr).unwrap();
    let error = connect_failure(&client, banned);
    assert!(matches!(error, peerlink::ConnectError::Banned { addr: a } if a == addr.ip()), "{error:?}");
    assert_eq!(error.to_string(), "127.0.0.1 is banned");
    assert!(client.unban(&Subnet::host(addr.ip())));
    assert!(server.unban(&loopback));
    assert!(server.banned().is_empty() && client.banned().is_empty());
    let ok = client.connect(addr).unwrap();
    wait_for(&client, |e| matches!(e, Event::Connected { peer, .. } if peer == ok).then_some(()));
    connected(&server);
    // Two accepted in all (the first peer and this one): the banned
    // connect never reached the server.
    assert_eq!(server.reactor_stats().inbound_accepted, 2);
}

/// The list persists as bytes: exported, imported into another reactor,
/// and corrupt bytes refused whole.
#[test]
fn ban_lists_round_trip_through_bytes_and_corrupt_ones_are_refused() {
    use peerlink::ban::{ImportError, Subnet};
    let a = client();
    let b = client();
    let subnets: [Subnet; 2] = ["203.0.113.0/24".parse().unwrap(), "2001:db8::/32".parse().unwrap()];
    for s in subnets {
        a.ban(s, Duration::from_secs(3600)).unwrap();
    }
    let bytes = a.export_bans();
    assert_eq!(b.import_bans(&bytes).unwrap(), 2);
    assert_eq!(a.banned(), b.banned());
    let mut corrupt = bytes.clone();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 1;
    let fresh = client();
    let error = fresh.import_bans(&corrupt).unwrap_err();
    assert!(matches!(error, ImportError::Decode(_)), "{error:?}");
    assert!(fresh.import_bans(&bytes[..bytes.len() - 3]).is_err());
    assert!(fresh.banned().is_empty(), "nothing was added");
    let report = peerlink::error::Report(&error).to_string();
    assert!(report.starts_with("cannot import the ban list: "), "{report}");
}

/// `ban_misbehaving`: a peer that sends invalid bytes is banned; one that
/// only times out is not.
#[test]
fn misbehaving_peers_are_banned_when_configured_and_slow_ones_are_not() {
    let mut config = listener_config();
    config.ban_misbehaving = Some(Duration::from_secs(3600));
    config.frame_timeout = Duration::from_millis(300);
    let (server, addr) = listener_with(config);
    // A frame cut short: a timeout, no ban.
    let (mut slow, slow_id) = raw_peer(&server, addr);
    write_all(&mut slow, &encode(NET, &NetworkMessage::Ping(1))[..20]);
    let reason = wait_for(&server, |e| match e {
        Event::Disconnected { peer, reason } if peer == slow_id => Some(reason),
        _ => None,
    });
    assert_eq!(reason.fault(), peerlink::Fault::Timeout, "{reason}");
    assert!(server.banned().is_empty());
    // A bad checksum: provably invalid, banned.
    let (mut bad, bad_id) = raw_peer(&server, addr);
    let mut frame = encode(NET, &NetworkMessage::Ping(2));
    frame[20] ^= 0xff;
    write_all(&mut bad, &frame);
    let reason = wait_for(&server, |e| match e {
        Event::Disconnected { peer, reason } if peer == bad_id => Some(reason),
        _ => None,
    });
    assert_eq!(reason.fault(), peerlink::Fault::Misbehaviour, "{reason}");
    let banned = server.banned();
    assert_eq!(banned.len(), 1);
    assert_eq!(banned[0].subnet, peerlink::ban::Subnet::host(addr.ip()));
    assert_eq!(server.reactor_stats().auto_bans, 1);
    let mut refused = TcpStream::connect(addr).unwrap();
    refused.set_read_timeout(Some(WAIT)).unwrap();
    assert!(read_to_close(&mut refused).is_empty(), "closed at accept");
    assert_eq!(server.reactor_stats().inbound_refused_banned, 1);
}

/// A connect still under way when its address is banned fails with the
/// ban as its reason (here it hangs with a proxy that never answers).
#[cfg(feature = "socks")]
#[test]
fn a_pending_connect_to_a_newly_banned_address_fails_with_the_ban() {
    let silent = std::net::TcpListener::bind(localhost()).unwrap();
    let mut config = raw_config();
    config.proxy = Some(peerlink::socks5::Proxy::new(silent.local_addr().unwrap()));
    let client = peerlink::start(config).unwrap();
    let target: SocketAddr = "127.0.0.1:8333".parse().unwrap();
    let pending = client.connect(target).unwrap();
    // Answered after the connect command: the link exists, connecting.
    assert!(client.peers().unwrap().is_empty());
    client.ban(peerlink::ban::Subnet::host(target.ip()), Duration::from_secs(60)).unwrap();
    let error = connect_failure(&client, pending);
    assert!(matches!(error, peerlink::ConnectError::Banned { addr } if addr == target.ip()), "{error:?}");
}
