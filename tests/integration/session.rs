//! Session mode over loopback: handshake between two reactors, violations,
//! timeouts, peer info and stats, and the one-shot broadcast.

use std::net::SocketAddr;
use std::time::Duration;

use bitcoin::p2p::ServiceFlags;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_blockdata::Inventory;
use bitcoin::p2p::message_network::{Reject, RejectReason};
use peerlink::broadcast::{BroadcastError, DeliveryKind, Stage};
use peerlink::{Config, Direction, DisconnectReason, Event, Handle, PeerId, PeerInfo, SessionError};

use crate::common::*;

fn session_config() -> Config {
    let mut config = Config::new(NET);
    config.session.user_agent_name = Some("test".into());
    config
}

fn session_listener(config: Config) -> (Handle, SocketAddr) {
    let mut config = config;
    config.listen.push(localhost());
    let h = peerlink::start(config).unwrap();
    let addr = h.local_addrs()[0];
    (h, addr)
}

fn ready(handle: &Handle) -> (PeerId, PeerInfo) {
    wait_for(handle, |e| match e {
        Event::Ready { peer, info } => Some((peer, *info)),
        Event::Connected { .. } => panic!("session mode announces peers with Ready only"),
        Event::Disconnected { reason, .. } => panic!("disconnected before ready: {reason:?}"),
        Event::ConnectFailed { error, .. } => panic!("connect failed: {error:?}"),
        Event::Message { message, .. } => panic!("message before ready: {message:?}"),
        _ => None,
    })
}

/// Core tries v2 only with peers that advertise NODE_P2P_V2: a reactor that
/// accepts v2 announces it, in both directions, and one that does not, does not.
#[test]
fn p2p_v2_is_advertised_whenever_v2_is_accepted() {
    use peerlink::wire::TransportPolicy::{V1Only, V2Preferred};
    for (server_policy, client_policy) in [(V2Preferred, V1Only), (V1Only, V2Preferred), (V2Preferred, V2Preferred)] {
        let mut server_config = session_config();
        server_config.transport = server_policy;
        server_config.session.services = ServiceFlags::WITNESS;
        let (server, addr) = session_listener(server_config);
        let mut client_config = session_config();
        client_config.transport = client_policy;
        let client = peerlink::start(client_config).unwrap();
        client.connect(addr).unwrap();
        let (_, client_view) = ready(&client);
        // A v1-only server refuses the client's first (v2) attempt; the
        // client then retries as v1 on a new connection.
        let server_view = wait_for(&server, |e| match e {
            Event::Ready { info, .. } => Some(*info),
            _ => None,
        });
        let server_services = client_view.version.unwrap().services;
        let client_services = server_view.version.unwrap().services;
        let case = format!("server {server_policy}, client {client_policy}");
        assert_eq!(server_services.has(ServiceFlags::P2P_V2), server_policy.accepts_v2(), "{case}");
        assert!(server_services.has(ServiceFlags::WITNESS), "{case}: configured services are kept");
        assert_eq!(client_services.has(ServiceFlags::P2P_V2), client_policy.accepts_v2(), "{case}");
    }
}

#[test]
fn two_reactors_complete_the_handshake() {
    let mut server_config = session_config();
    server_config.session.services = ServiceFlags::NETWORK | ServiceFlags::WITNESS;
    server_config.start_height = 123;
    let (server, addr) = session_listener(server_config);
    let client = peerlink::start(session_config()).unwrap();
    client.set_start_height(77);
    let c = client.connect(addr).unwrap();
    let (peer, info) = ready(&client);
    assert_eq!(peer, c);
    assert_eq!(info.direction, Direction::Outbound);
    assert_eq!(info.addr, addr);
    let v = info.version.unwrap();
    assert_eq!(v.version, 70016);
    assert_eq!(v.start_height, 123);
    assert!(v.services.has(ServiceFlags::WITNESS));
    assert!(v.user_agent.starts_with("/peerlink:") && v.user_agent.ends_with("test/"), "{}", v.user_agent);
    assert!(info.features.wtxid_relay && info.features.addr_v2);
    assert!(info.ready);
    // Two peerlink reactors speak BIP324 by default, and agree on the id.
    let peerlink::codec::Transport::V2 { session_id } = info.transport else { panic!("{:?}", info.transport) };
    let (s, sinfo) = ready(&server);
    assert_eq!(sinfo.transport, peerlink::codec::Transport::V2 { session_id });
    assert_eq!(sinfo.direction, Direction::Inbound);
    assert_eq!(sinfo.version.unwrap().start_height, 77, "set_start_height applies to later versions");
    // Application messages flow; session messages are not forwarded.
    client.send(c, NetworkMessage::Inv(vec![])).unwrap();
    let (from, m) = message(&server);
    assert_eq!((from, m), (s, NetworkMessage::Inv(vec![])));
    // Peers and stats are answered by the reactor.
    let peers = client.peers().unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].peer, c);
    let stats = client.peer_stats(c).unwrap().unwrap();
    assert!(stats.bytes_out > 0 && stats.msgs_out >= 4, "{stats:?}");
    let commands: Vec<&str> = stats.per_command.iter().map(|c| c.command.as_str()).collect();
    for cmd in ["version", "verack", "wtxidrelay", "sendaddrv2", "inv"] {
        assert!(commands.contains(&cmd), "{cmd} missing from {commands:?}");
    }
    let version = stats.per_command.iter().find(|c| c.command == "version").unwrap();
    assert_eq!((version.msgs_in, version.msgs_out), (1, 1));
    // A dead id has no stats.
    let closed = std::net::TcpListener::bind(localhost()).unwrap().local_addr().unwrap();
    let dead = client.connect(closed).unwrap();
    wait_for(&client, |e| matches!(e, Event::ConnectFailed { .. }).then_some(()));
    assert!(client.peer_stats(dead).unwrap().is_none());
    assert!(client.peer_info(dead).unwrap().is_none());
}

#[test]
fn session_measures_ping_round_trip() {
    let (server, addr) = session_listener(session_config());
    let client = peerlink::start(session_config()).unwrap();
    let c = client.connect(addr).unwrap();
    ready(&client);
    ready(&server);
    // A user ping's pong is delivered; the session's own pong (sent just
    // after verack, answered before ours) is not, but is measured.
    client.send(c, NetworkMessage::Ping(42)).unwrap();
    let (_, m) = message(&client);
    assert_eq!(m, NetworkMessage::Pong(42));
    let stats = client.peer_stats(c).unwrap().unwrap();
    let rtt = stats.last_ping.expect("session ping answered");
    assert!(rtt < Duration::from_secs(5));
    assert_eq!(stats.min_ping, Some(rtt));
}

#[test]
fn connecting_to_ourselves_is_detected() {
    let (handle, addr) = session_listener(session_config());
    let out = handle.connect(addr).unwrap();
    let mut reasons = Vec::new();
    while reasons.len() < 2 {
        match next_event(&handle) {
            Event::Disconnected { peer, reason } => reasons.push((peer, reason)),
            Event::Ready { .. } => panic!("self-connection became ready"),
            _ => {}
        }
    }
    let inbound = reasons.iter().find(|(p, _)| *p != out).expect("inbound side reported");
    assert!(matches!(inbound.1, DisconnectReason::Protocol(SessionError::SelfConnection)), "{}", inbound.1);
}

#[test]
fn handshake_timeout_disconnects_silent_peer() {
    let mut config = session_config();
    config.session.handshake_timeout = Duration::from_millis(200);
    let (server, addr) = session_listener(config);
    let _raw = std::net::TcpStream::connect(addr).unwrap();
    let reason = wait_for(&server, |e| match e {
        Event::Disconnected { reason, .. } => Some(reason),
        _ => None,
    });
    assert!(matches!(reason, DisconnectReason::Protocol(SessionError::HandshakeTimeout(_))), "{reason}");
    // Silence is a timeout: no ban is justified.
    assert_eq!(reason.fault(), peerlink::Fault::Timeout);
}

#[test]
fn message_before_version_disconnects() {
    // Over v1: on a v2-capable listener a first message other than a v1
    // `version` is taken for a v2 key, as in Core.
    let mut config = session_config();
    config.transport = peerlink::wire::TransportPolicy::V1Only;
    let (server, addr) = session_listener(config);
    let mut raw = std::net::TcpStream::connect(addr).unwrap();
    write_all(&mut raw, &encode(NET, &NetworkMessage::Ping(1)));
    let reason = wait_for(&server, |e| match e {
        Event::Disconnected { reason, .. } => Some(reason),
        _ => None,
    });
    assert!(
        matches!(&reason, DisconnectReason::Protocol(SessionError::MessageBeforeVersion { command }) if command.as_ref() == "ping"),
        "{reason}"
    );
    // A broken handshake is provably invalid: a ban is justified.
    assert_eq!(reason.fault(), peerlink::Fault::Misbehaviour);
}

#[test]
fn missing_required_services_refused() {
    let (server, addr) = session_listener(session_config());
    let mut config = session_config();
    config.session.required_services = ServiceFlags::COMPACT_FILTERS;
    let client = peerlink::start(config).unwrap();
    client.connect(addr).unwrap();
    let reason = wait_for(&client, |e| match e {
        Event::Disconnected { reason, .. } => Some(reason),
        Event::Ready { .. } => panic!("ready without required services"),
        _ => None,
    });
    assert!(matches!(reason, DisconnectReason::Protocol(SessionError::MissingServices { .. })), "{reason}");
    assert_eq!(reason.fault(), peerlink::Fault::Neither, "lacking services is no misbehaviour");
    drop(server);
}

/// A session node that answers `inv` for transactions as `behaviour` says.
fn tx_node(behaviour: &'static str) -> (SocketAddr, std::thread::JoinHandle<Option<bitcoin::Transaction>>) {
    let (node, addr) = session_listener(session_config());
    let t = std::thread::spawn(move || {
        let mut got = None;
        loop {
            let Some(event) = node.recv_timeout(WAIT).ok() else { return got };
            match event {
                Event::Message { peer, message: NetworkMessage::Inv(items), .. } => match behaviour {
                    "fetch" => node.send(peer, NetworkMessage::GetData(items)).unwrap(),
                    "reject" => {
                        let hash = match items[0] {
                            Inventory::Transaction(t) => {
                                bitcoin::hashes::sha256d::Hash::from_byte_array(t.to_byte_array())
                            }
                            Inventory::WTx(w) => bitcoin::hashes::sha256d::Hash::from_byte_array(w.to_byte_array()),
                            _ => panic!("unexpected inv"),
                        };
                        node.send(
                            peer,
                            NetworkMessage::Reject(Reject {
                                message: "tx".into(),
                                ccode: RejectReason::Duplicate,
                                reason: "txn-already-known".into(),
                                hash,
                            }),
                        )
                        .unwrap()
                    }
                    _ => {}
                },
                Event::Message { message: NetworkMessage::Tx(tx), .. } => got = Some(tx),
                Event::Disconnected { .. } if got.is_some() || behaviour != "fetch" => return got,
                _ => {}
            }
        }
    });
    (addr, t)
}

use bitcoin::hashes::Hash as _;

#[test]
fn broadcast_to_a_silent_peer_times_out_in_the_handshake() {
    // The kernel completes TCP connections to a listener that never accepts
    // them: we connect and write our handshake, and nothing comes back.
    let silent = std::net::TcpListener::bind(localhost()).unwrap();
    let targets = [silent.local_addr().unwrap().into()];
    let outcomes =
        peerlink::broadcast::broadcast(session_config(), &big_tx(10), &targets, Duration::from_millis(500)).unwrap();
    assert!(
        matches!(outcomes[0].result, Err(BroadcastError::Timeout { stage: Stage::Handshake })),
        "{:?}",
        outcomes[0].result
    );
    drop(silent);
}

#[test]
fn broadcast_delivers_and_reports_each_peer() {
    let tx = big_tx(300);
    let (fetching, fetched) = tx_node("fetch");
    let (ignoring, _) = tx_node("ignore");
    let (rejecting, _) = tx_node("reject");
    let closed = std::net::TcpListener::bind(localhost()).unwrap().local_addr().unwrap();
    let targets = [fetching, ignoring, rejecting, closed].map(peerlink::Target::from);
    // The ignoring peer answers pings, so it is concluded within Core's
    // request delays, long before this deadline.
    let started = std::time::Instant::now();
    let outcomes = peerlink::broadcast::broadcast(session_config(), &tx, &targets, WAIT).unwrap();
    assert!(started.elapsed() < WAIT, "every peer concluded before the deadline");
    assert_eq!(outcomes.len(), 4);
    for (o, addr) in outcomes.iter().zip(targets) {
        assert_eq!(o.target, addr, "outcomes keep the order of the targets");
    }
    let delivered = outcomes[0].result.as_ref().expect("fetching peer got it");
    assert_eq!(delivered.kind, DeliveryKind::Sent);
    assert!(delivered.by_wtxid, "peerlink negotiates wtxidrelay, so the inv is by wtxid");
    let not_requested = outcomes[1].result.as_ref().expect("a peer that does not ask is not a failure");
    assert_eq!(not_requested.kind, DeliveryKind::NotRequested);
    assert!(not_requested.elapsed >= peerlink::broadcast::request_delay(true), "{:?}", not_requested.elapsed);
    assert!(
        matches!(&outcomes[2].result, Err(BroadcastError::Rejected { reason, .. }) if reason == "txn-already-known")
    );
    assert!(matches!(outcomes[3].result, Err(BroadcastError::Connect(_))), "{:?}", outcomes[3].result);
    assert_eq!(fetched.join().unwrap(), Some(tx), "the node received the transaction itself");
}
