//! A slow proxy must not hold the reactor: 100 connects hang in a
//! black-holed SOCKS5 proxy while a direct peer of the same reactor keeps
//! its ping round trip, and no thread is started per connect.
//!
//! This is its own test binary (one process, one test) so that the thread
//! count it reads from `/proc/self/task` is this test's alone.

#![cfg(feature = "socks")]

#[path = "support/socks_server.rs"]
mod socks_server;

use std::time::{Duration, Instant};

use bitcoin::p2p::message::NetworkMessage;
use peerlink::socks5::Proxy;
use peerlink::{Config, Event, Handle, PeerId, Target};
use socks_server::{Behaviour, Options, SocksServer};

const WAIT: Duration = Duration::from_secs(20);
const HANGING: usize = 100;

fn raw_config() -> Config {
    let mut config = Config::new(bitcoin::Network::Regtest);
    config.mode = peerlink::Mode::Raw;
    config.transport = peerlink::wire::TransportPolicy::V1Only;
    config
}

/// Threads of this process, by name.
fn threads() -> Vec<String> {
    let mut names = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("procfs") {
        let comm = task.expect("task").path().join("comm");
        names.push(std::fs::read_to_string(comm).unwrap_or_default().trim().to_owned());
    }
    names.sort();
    names
}

fn wait_for<T>(handle: &Handle, mut pick: impl FnMut(Event) -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        let event = handle.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("event in time");
        if let Some(t) = pick(event) {
            return t;
        }
    }
}

/// Ping round trips from `client` to the direct peer, answered by the
/// `server` handle; sorted, in microseconds.
fn round_trips(client: &Handle, peer: PeerId, server: &Handle, n: u64) -> Vec<u128> {
    let mut rtts = Vec::new();
    for nonce in 0..n {
        let started = Instant::now();
        client.send(peer, NetworkMessage::Ping(nonce)).unwrap();
        let from = wait_for(server, |e| match e {
            Event::Message { peer, message: NetworkMessage::Ping(n), .. } if n == nonce => Some(peer),
            _ => None,
        });
        server.send(from, NetworkMessage::Pong(nonce)).unwrap();
        wait_for(client, |e| match e {
            Event::Message { message: NetworkMessage::Pong(n), .. } if n == nonce => Some(()),
            _ => None,
        });
        rtts.push(started.elapsed().as_micros());
    }
    rtts.sort_unstable();
    rtts
}

#[test]
fn hanging_proxied_connects_hold_no_thread_and_do_not_delay_a_direct_peer() {
    let mut server_config = raw_config();
    server_config.listen.push("127.0.0.1:0".parse().unwrap());
    let server = peerlink::start(server_config).unwrap();
    let server_addr = server.local_addrs()[0];

    // Onion targets go through the black-holed proxy; the direct peer, a
    // socket address, does not (no default proxy).
    let socks = SocksServer::start(Options { behaviour: Behaviour::BlackHole, ..Options::default() });
    let mut config = raw_config();
    config.onion_proxy = Some(Proxy::new(socks.addr()));
    config.connect_timeout = Duration::from_secs(60);
    let client = peerlink::start(config).unwrap();
    let direct = client.connect(server_addr).unwrap();
    wait_for(&client, |e| matches!(e, Event::Connected { peer, .. } if peer == direct).then_some(()));
    wait_for(&server, |e| matches!(e, Event::Connected { .. }).then_some(()));
    let baseline = round_trips(&client, direct, &server, 50);
    let before = threads();

    let onion: Target = "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion:8333".parse().unwrap();
    let hanging: Vec<PeerId> = (0..HANGING).map(|_| client.connect(onion.clone()).unwrap()).collect();
    assert_eq!(socks.wait_accepted(HANGING, WAIT), HANGING, "every connect reached the proxy");
    let during = threads();
    let loaded = round_trips(&client, direct, &server, 50);

    println!(
        "threads: {} before, {} with {HANGING} connects hanging in the proxy ({:?})",
        before.len(),
        during.len(),
        during
    );
    let p = |v: &[u128], q: usize| v[(v.len() - 1) * q / 100];
    println!(
        "direct ping RTT µs: idle p50 {} p90 {} max {}; with {HANGING} hanging p50 {} p90 {} max {}",
        p(&baseline, 50),
        p(&baseline, 90),
        p(&baseline, 100),
        p(&loaded, 50),
        p(&loaded, 90),
        p(&loaded, 100)
    );
    assert_eq!(during, before, "no thread per proxied connect");
    assert!(!during.iter().any(|t| t.starts_with("peerlink-resolve")), "no local lookup for onion targets");
    // A reactor blocked by the proxy would take the connect timeout (60 s)
    // to answer; this bound fails only then, not on a slow machine.
    assert!(p(&loaded, 100) < 10_000_000, "a direct round trip took {} µs", p(&loaded, 100));
    // Still hanging, not failed: each waits for its own deadline.
    assert!(client.peer_stats(hanging[0]).unwrap().is_some(), "the hanging connect is still pending");
}
