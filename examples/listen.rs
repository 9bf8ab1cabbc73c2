//! A listener that prints one line per event. It runs until killed.
//!
//! ```text
//! cargo run --example listen -- --bind 127.0.0.1:18444 [--network regtest] [--session]
//! ```
//!
//! Raw mode (the default here) answers `ping` with `pong` (same nonce) and
//! `version` with its own `version` then `verack`. With `--session` the
//! library runs the handshake and keepalive and each peer is announced once
//! it is ready.
//!
//! Output lines (stable, greppable):
//! Both v1 and BIP324 v2 peers are accepted (the first 16 bytes tell them
//! apart).
//!
//! `listening addr=…`, `connected peer=ID addr=… direction=inbound transport=v1|v2 session_id=…`,
//! `ready peer=ID addr=… ua=… version=… services=… height=… transport=…`,
//! `message peer=ID cmd=NAME size=BYTES`, `disconnected peer=ID reason=…`.

mod common;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_network::VersionMessage;
use bitcoin::p2p::{Address, ServiceFlags};
use peerlink::error::Report;
use peerlink::{Config, Event, Mode};

const USAGE: &str = "usage: listen --bind ADDR [--network main|test|testnet4|signet|regtest] [--session]";

struct Args {
    bind: SocketAddr,
    network: bitcoin::Network,
    session: bool,
}

fn main() -> ExitCode {
    let Args { bind, network, session } = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut config = Config::new(network);
    config.listen.push(bind);
    config.mode = if session { Mode::Session } else { Mode::Raw };
    config.session.user_agent_name = Some("listen".into());
    let handle = match peerlink::start(config) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {}", Report(&e));
            return ExitCode::FAILURE;
        }
    };
    for addr in handle.local_addrs() {
        println!("listening addr={addr} network={network}");
    }
    let mut nonce = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
    for event in handle.iter() {
        match event {
            Event::Connected { peer, remote, direction, .. } => {
                let transport = handle.peer_info(peer).ok().flatten().map(|i| i.transport);
                let transport = transport.map_or("unknown".to_owned(), common::describe_transport);
                println!("connected peer={peer} addr={remote} direction={direction} transport={transport}")
            }
            Event::Ready { peer, info } => {
                let v = info.version.as_ref();
                println!(
                    "ready peer={peer} addr={} direction={} ua={:?} version={} services={} height={} features={} transport={}",
                    info.addr,
                    info.direction,
                    v.map_or("", |v| &v.user_agent),
                    v.map_or(0, |v| v.version),
                    common::service_names(v.map_or(bitcoin::p2p::ServiceFlags::NONE, |v| v.services)),
                    v.map_or(0, |v| v.start_height),
                    info.features,
                    common::describe_transport(info.transport),
                );
            }
            Event::Disconnected { peer, reason } => println!("disconnected peer={peer} reason={}", Report(&reason)),
            Event::Message { peer, message, wire_size } => {
                println!("message peer={peer} cmd={} size={wire_size}", message.command());
                let replies = match message {
                    _ if session => vec![],
                    NetworkMessage::Ping(n) => vec![NetworkMessage::Pong(n)],
                    NetworkMessage::Version(v) => {
                        nonce = nonce.wrapping_mul(6364136223846793005).wrapping_add(1);
                        vec![NetworkMessage::Version(version(&v, nonce)), NetworkMessage::Verack]
                    }
                    _ => vec![],
                };
                for reply in replies {
                    if handle.send(peer, reply).is_err() {
                        return ExitCode::FAILURE;
                    }
                }
            }
            Event::SendRejected { peer, message, reason } => {
                println!("rejected peer={peer} cmd={} reason={}", message.command(), Report(&reason))
            }
            Event::Writable { peer } => println!("writable peer={peer}"),
            Event::ConnectFailed { peer, addr, error } => {
                println!("connect-failed peer={peer} addr={addr} error={}", Report(&error))
            }
            _ => {}
        }
    }
    ExitCode::SUCCESS
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut bind = None;
    let mut network = bitcoin::Network::Bitcoin;
    let mut session = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bind" => {
                let v = args.next().ok_or("--bind needs an address")?;
                bind = Some(v.parse().map_err(|e| format!("bad --bind address {v:?}: {}", Report(&e)))?);
            }
            "--network" => {
                let v = args.next().ok_or("--network needs a name")?;
                network = common::network(&v)?;
            }
            "--session" => session = true,
            "-h" | "--help" => return Err("help requested".into()),
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    Ok(Args { bind: bind.ok_or("--bind is required")?, network, session })
}

fn version(theirs: &VersionMessage, nonce: u64) -> VersionMessage {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    VersionMessage {
        version: 70016,
        services: ServiceFlags::NONE,
        timestamp: now,
        receiver: theirs.sender.clone(),
        sender: Address { services: ServiceFlags::NONE, address: [0; 8], port: 0 },
        nonce,
        user_agent: "/peerlink-listen:0.1.0/".to_owned(),
        start_height: 0,
        relay: false,
    }
}
