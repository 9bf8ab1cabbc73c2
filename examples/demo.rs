//! Two reactors in one process on 127.0.0.1: a "node" that listens and a
//! "client" that connects. Through the public API, by hand (raw mode), they
//! exchange version/verack both ways, a ping/pong with its round-trip time,
//! and a transaction.
//!
//! Run: `cargo run --example demo`
//!
//! Both ends are its own, so any failure ends it with the error's whole
//! chain and exit status 1.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bitcoin::absolute::LockTime;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_network::VersionMessage;
use bitcoin::p2p::{Address, ServiceFlags};
use bitcoin::transaction::Version;
use bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness};
use peerlink::error::Report;
use peerlink::{Config, Event, Handle, Mode, PeerId};

const TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", Report(&*e));
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    // Raw mode: this demo does the handshake by hand, to show every message.
    let mut raw = Config::new(bitcoin::Network::Regtest);
    raw.mode = Mode::Raw;
    let mut node_config = raw.clone();
    node_config.listen.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0));
    let node = peerlink::start(node_config)?;
    let client = peerlink::start(raw)?;
    let node_addr = node.local_addrs()[0];
    println!("node listening on {node_addr}");

    let server_side = client.connect(node_addr)?;
    let (c_peer, _) = connected(&client)?;
    let (n_peer, remote) = connected(&node)?;
    assert_eq!(c_peer, server_side);
    println!("client connected to node as peer={c_peer}; node sees peer={n_peer} from {remote}");

    // Handshake, by hand: each side sends version and answers the other's with verack.
    client.send(c_peer, NetworkMessage::Version(version("/demo-client:0.1/", node_addr)))?;
    let v = expect(&node, "version")?;
    if let NetworkMessage::Version(v) = &v {
        println!("node    <- version (agent {}, protocol {})", v.user_agent, v.version);
    }
    node.send(n_peer, NetworkMessage::Version(version("/demo-node:0.1/", remote)))?;
    node.send(n_peer, NetworkMessage::Verack)?;
    let v = expect(&client, "version")?;
    if let NetworkMessage::Version(v) = &v {
        println!("client  <- version (agent {}, protocol {})", v.user_agent, v.version);
    }
    expect(&client, "verack")?;
    println!("client  <- verack");
    client.send(c_peer, NetworkMessage::Verack)?;
    expect(&node, "verack")?;
    println!("node    <- verack; handshake complete");

    // Ping/pong with the round-trip time.
    let nonce = 0x5eed_cafe_f00d;
    let start = Instant::now();
    client.send(c_peer, NetworkMessage::Ping(nonce))?;
    let ping = expect(&node, "ping")?;
    println!("node    <- ping nonce={nonce:#x}");
    if let NetworkMessage::Ping(n) = ping {
        node.send(n_peer, NetworkMessage::Pong(n))?;
    }
    match expect(&client, "pong")? {
        NetworkMessage::Pong(n) if n == nonce => {
            println!("client  <- pong nonce={n:#x} rtt={} us", start.elapsed().as_micros())
        }
        other => return Err(format!("unexpected {other:?}").into()),
    }

    // A transaction.
    let tx = demo_tx();
    client.send(c_peer, NetworkMessage::Tx(tx.clone()))?;
    match expect(&node, "tx")? {
        NetworkMessage::Tx(got) if got == tx => println!("node    <- tx txid={}", got.compute_txid()),
        other => return Err(format!("unexpected {other:?}").into()),
    }

    client.shutdown();
    node.shutdown();
    println!("done");
    Ok(())
}

fn connected(handle: &Handle) -> Result<(PeerId, SocketAddr), Box<dyn std::error::Error>> {
    match handle.recv_timeout(TIMEOUT)? {
        Event::Connected { peer, remote, .. } => Ok((peer, remote)),
        other => Err(format!("expected a connection, got {other:?}").into()),
    }
}

fn expect(handle: &Handle, cmd: &str) -> Result<NetworkMessage, Box<dyn std::error::Error>> {
    match handle.recv_timeout(TIMEOUT)? {
        Event::Message { message, .. } if message.cmd() == cmd => Ok(message),
        other => Err(format!("expected {cmd}, got {other:?}").into()),
    }
}

fn version(agent: &str, receiver: SocketAddr) -> VersionMessage {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    VersionMessage {
        version: 70016,
        services: ServiceFlags::NONE,
        timestamp: now,
        receiver: Address::new(&receiver, ServiceFlags::NONE),
        sender: Address::new(&local, ServiceFlags::NONE),
        nonce: now as u64 ^ 0x1234_5678,
        user_agent: agent.to_owned(),
        start_height: 0,
        relay: true,
    }
}

fn demo_tx() -> Transaction {
    Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::null(),
            script_sig: ScriptBuf::from_bytes(vec![0x51]),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: vec![TxOut { value: Amount::from_sat(50_000), script_pubkey: ScriptBuf::new_op_return([1, 2, 3]) }],
    }
}
