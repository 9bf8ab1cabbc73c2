use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bitcoin::p2p::message::NetworkMessage;
use peerlink::codec::Codec;
use peerlink::wire::V1Codec;
use peerlink::{Config, Event, Handle, PeerId, Stack};

/// Upper bound for any single wait; only reached when a test fails.
pub const WAIT: Duration = Duration::from_secs(20);

pub const NET: bitcoin::Network = bitcoin::Network::Regtest;

pub fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Raw mode over v1: these tests drive the protocol by hand and talk to
/// plain TCP peers that speak (or expect) v1 bytes.
pub fn raw_config() -> Config {
    let mut config = Config::new(NET);
    config.mode = peerlink::Mode::Raw;
    config.transport = peerlink::wire::TransportPolicy::V1Only;
    config
}

pub fn listener_config() -> Config {
    let mut config = raw_config();
    config.listen.push(localhost());
    config
}

pub fn listener() -> (Handle, SocketAddr) {
    listener_with(listener_config())
}

pub fn listener_with(config: Config) -> (Handle, SocketAddr) {
    let handle = peerlink::start(config).expect("start listener");
    let addr = handle.local_addrs()[0];
    (handle, addr)
}

pub fn client() -> Handle {
    peerlink::start(raw_config()).expect("start client")
}

/// Receives events until `pick` returns `Some`, failing after [`WAIT`].
pub fn wait_for<S: Stack, T>(handle: &Handle<S>, mut pick: impl FnMut(Event<S>) -> Option<T>) -> T
where
    S::Message: std::fmt::Debug,
{
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = handle.recv_timeout(left).expect("timed out waiting for an event");
        if let Some(t) = pick(event) {
            return t;
        }
    }
}

pub fn next_event(handle: &Handle) -> Event {
    handle.recv_timeout(WAIT).expect("timed out waiting for an event")
}

pub fn connected(handle: &Handle) -> PeerId {
    wait_for(handle, |e| match e {
        Event::Connected { peer, .. } => Some(peer),
        _ => None,
    })
}

pub fn message(handle: &Handle) -> (PeerId, NetworkMessage) {
    wait_for(handle, |e| match e {
        Event::Message { peer, message, .. } => Some((peer, message)),
        Event::Disconnected { peer, reason } => panic!("peer {peer} disconnected: {reason:?}"),
        _ => None,
    })
}

/// A connected pair: (client handle, client's id for the server, server
/// handle, server's id for the client).
pub fn pair() -> (Handle, PeerId, Handle, PeerId) {
    let (server, addr) = listener();
    let client = client();
    let c = client.connect(addr).unwrap();
    assert_eq!(connected(&client), c);
    let s = connected(&server);
    (client, c, server, s)
}

pub fn encode(network: bitcoin::Network, message: &NetworkMessage) -> Vec<u8> {
    let mut out = Vec::new();
    V1Codec::new(network).encode(message, &mut out).unwrap();
    out
}

/// A raw TCP peer connected to `addr`, returned after the listener reported it.
pub fn raw_peer(server: &Handle, addr: SocketAddr) -> (TcpStream, PeerId) {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let id = connected(server);
    (stream, id)
}

/// Reads until EOF or error; returns the bytes read.
pub fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
}

pub fn write_all(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).unwrap();
}

/// A ping/pong round trip between a client handle and a peer that answers
/// pings (a server whose test thread answers), proving both are alive.
pub fn assert_round_trip(client: &Handle, c: PeerId, server: &Handle, nonce: u64) {
    client.send(c, NetworkMessage::Ping(nonce)).unwrap();
    let (s, m) = message(server);
    assert_eq!(m, NetworkMessage::Ping(nonce));
    server.send(s, NetworkMessage::Pong(nonce)).unwrap();
    let (_, m) = message(client);
    assert_eq!(m, NetworkMessage::Pong(nonce));
}

/// A transaction whose serialization is about `size` bytes.
pub fn big_tx(size: usize) -> bitcoin::Transaction {
    use bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness, absolute, transaction};
    Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::null(),
            script_sig: ScriptBuf::new(),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: vec![TxOut {
            value: Amount::from_sat(1),
            script_pubkey: ScriptBuf::from_bytes(vec![0x6a; size.saturating_sub(64)]),
        }],
    }
}

/// A minimal `version` for raw peers (no services, no relay).
pub fn version_message() -> bitcoin::p2p::message_network::VersionMessage {
    use bitcoin::p2p::{Address, ServiceFlags};
    let any = localhost();
    bitcoin::p2p::message_network::VersionMessage {
        version: 70016,
        services: ServiceFlags::NONE,
        timestamp: 0,
        receiver: Address::new(&any, ServiceFlags::NONE),
        sender: Address::new(&any, ServiceFlags::NONE),
        nonce: 1,
        user_agent: "/test/".into(),
        start_height: 0,
        relay: false,
    }
}
