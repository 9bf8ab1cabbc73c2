//! Connects to one peer, completes the session handshake and prints what the
//! peer told us, then measures the ping round trip.
//!
//! ```text
//! cargo run --example handshake -- PEER [--network NET] [--user-agent S] [--hold SECS] [--transport v1|v2|auto]
//!     [--proxy [USER:PASS@]HOST:PORT] [--onion-proxy [USER:PASS@]HOST:PORT]
//! ```
//!
//! `PEER` is `IP:PORT`, `[IPV6]:PORT`, `HOST:PORT` or `NAME.onion:PORT`.
//! `--proxy` sends every connection through a SOCKS5 proxy (Bitcoin Core's
//! `-proxy`), which then also resolves host names; `--onion-proxy` is the
//! proxy for onion peers (Core's `-onion`, falling back to `--proxy`).
//! Without `USER:PASS@` each connection gets fresh credentials, so Tor puts
//! it on a circuit of its own. Lines name the proxy's address
//! (`proxy=ADDR`), never the credentials.
//!
//! One line per step; exits 0 only when the handshake and ping succeeded.
//! A failure, a proxy's included, is one `error: ...` line and exit code 1.
//! With `--hold` it stays connected SECS seconds (the session answers the
//! peer's pings) before disconnecting. `--transport` picks v1, BIP324 v2, or
//! v2 with the v1 fallback (`auto`, the default); the transport used is
//! printed, and for v2 the session id in hex (compare it with the peer's to
//! rule out a man in the middle).

mod common;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use bitcoin::p2p::message::NetworkMessage;
use peerlink::error::Report;
use peerlink::{Config, Disconnect, Event, Target};

const USAGE: &str = "usage: handshake PEER [--network main|test|testnet4|signet|regtest] [--user-agent S] [--hold SECS] [--transport v1|v2|auto] [--proxy [USER:PASS@]HOST:PORT] [--onion-proxy [USER:PASS@]HOST:PORT]
  PEER is IP:PORT, [IPV6]:PORT, HOST:PORT or NAME.onion:PORT";

struct Args {
    target: Target,
    proxies: common::Proxies,
    network: bitcoin::Network,
    user_agent: Option<String>,
    hold: Option<Duration>,
    transport: peerlink::wire::TransportPolicy,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut target = None;
    let mut proxies = common::Proxies::default();
    let mut network = bitcoin::Network::Bitcoin;
    let mut user_agent = None;
    let mut hold = None;
    let mut transport = peerlink::wire::TransportPolicy::V2Preferred;
    while let Some(arg) = args.next() {
        if proxies.take(&arg, &mut args)? {
            continue;
        }
        match arg.as_str() {
            "--network" => network = common::network(&common::value(&mut args, "--network")?)?,
            "--user-agent" => user_agent = Some(common::value(&mut args, "--user-agent")?),
            "--transport" => transport = common::transport(&common::value(&mut args, "--transport")?)?,
            "--hold" => {
                let v = common::value(&mut args, "--hold")?;
                let secs: f64 = v.parse().map_err(|_| format!("bad --hold value {v:?}"))?;
                if !(0.0..=86_400.0).contains(&secs) {
                    return Err(format!("--hold {secs} is out of range (0 to 86400)"));
                }
                hold = Some(Duration::from_secs_f64(secs));
            }
            "-h" | "--help" => return Err("help requested".into()),
            s if s.starts_with("--") => return Err(format!("unknown option {s:?}")),
            s if target.is_none() => target = Some(common::target("peer address", s)?),
            s => return Err(format!("unexpected argument {s:?}")),
        }
    }
    Ok(Args { target: target.ok_or("PEER is required")?, proxies, network, user_agent, hold, transport })
}

fn main() -> ExitCode {
    let args = match common::args(parse, USAGE) {
        Ok(a) => a,
        Err(code) => return code,
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let mut config = Config::new(args.network);
    config.transport = args.transport;
    args.proxies.apply(&mut config);
    config.session.user_agent_name = Some("handshake".into());
    config.session.user_agent_version = Some(env!("CARGO_PKG_VERSION").into());
    if let Some(ua) = &args.user_agent {
        if ua.starts_with('/') {
            config.session.user_agent = Some(ua.clone());
        } else {
            config.session.user_agent_name = Some(ua.clone());
            config.session.user_agent_version = None;
        }
    }
    let timeout = config.connect_timeout + config.session.handshake_timeout;
    let handle = peerlink::start(config).map_err(|e| Report(&e).to_string())?;
    println!(
        "connecting target={} network={} transport={}{}",
        args.target,
        args.network,
        args.transport,
        args.proxies.describe(&args.target)
    );
    let peer = handle.connect(args.target.clone()).map_err(|e| Report(&e).to_string())?;
    let info = loop {
        match handle.recv_timeout(timeout).map_err(|_| "no answer from peer".to_string())? {
            Event::Ready { info, .. } => break info,
            Event::ConnectFailed { error, .. } => return Err(format!("connect failed: {}", Report(&error))),
            Event::Disconnected { reason, .. } => return Err(format!("handshake failed: {}", Report(&reason))),
            _ => {}
        }
    };
    let v = info.version.clone().ok_or("peer is ready but sent no version")?;
    println!(
        "ready peer={peer} target={} direction={} local={}{}",
        info.target,
        info.direction,
        info.local_addr.map_or("?".into(), |a| a.to_string()),
        info.proxy.map_or_else(String::new, |p| format!(" proxy={p}"))
    );
    println!("user_agent={:?} version={}", v.user_agent, v.version);
    println!("services={}", common::service_names(v.services));
    println!("height={}", v.start_height);
    println!("relay={}", v.relay);
    println!("features={}", info.features);
    println!("transport={}", common::describe_transport(info.transport));

    // Our own ping: its pong is handed to us (the session keeps its own).
    let nonce = u64::from(std::process::id()) << 32 | 0x70_6c;
    let sent = Instant::now();
    handle.send(peer, NetworkMessage::Ping(nonce)).map_err(|e| Report(&e).to_string())?;
    loop {
        match handle.recv_timeout(Duration::from_secs(30)).map_err(|_| "no pong within 30 s".to_string())? {
            Event::Message { message: NetworkMessage::Pong(n), .. } if n == nonce => break,
            Event::Disconnected { reason, .. } => return Err(format!("disconnected: {}", Report(&reason))),
            _ => {}
        }
    }
    let rtt = sent.elapsed();
    println!("ping rtt={:.3}ms", rtt.as_secs_f64() * 1e3);
    if let Ok(Some(stats)) = handle.peer_stats(peer) {
        if let Some(session_rtt) = stats.last_ping {
            println!("session ping rtt={:.3}ms", session_rtt.as_secs_f64() * 1e3);
        }
        // sendheaders usually arrives just after verack.
        if let Ok(Some(now)) = handle.peer_info(peer)
            && now.features != info.features
        {
            println!("features={}", now.features);
        }
    }

    if let Some(hold) = args.hold {
        println!("holding for {} s", hold.as_secs_f64());
        let until = Instant::now() + hold;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match handle.recv_timeout(left) {
                Ok(Event::Message { message, wire_size, .. }) => {
                    println!("message cmd={} size={wire_size}", message.command())
                }
                Ok(Event::Disconnected { reason, .. }) => {
                    return Err(format!("disconnected while holding: {}", Report(&reason)));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        if let Ok(Some(stats)) = handle.peer_stats(peer) {
            println!(
                "held: bytes_in={} bytes_out={} msgs_in={} msgs_out={}",
                stats.bytes_in, stats.bytes_out, stats.msgs_in, stats.msgs_out
            );
        }
    }
    handle.disconnect(peer, Disconnect::AfterFlush).map_err(|e| Report(&e).to_string())?;
    loop {
        match handle.recv_timeout(Duration::from_secs(10)) {
            Ok(Event::Disconnected { reason, .. }) => {
                println!("disconnected reason={}", Report(&reason));
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    Ok(())
}
