//! The `crawl` example against scripted peers ([`AddrServer`]s) on distinct
//! loopback addresses whose `getaddr` answers chain to each other: the crawl
//! must reach every server once, by following the answers from one seed,
//! and count what failed and what it learned.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bitcoin::p2p::address::AddrV2;

use crate::addr_server::{AddrServer, Options, addr_v2};

/// The whole crawl's bound; only reached when it fails.
const CRAWL_SECS: u64 = 60;

/// Builds the `crawl` example (default features, as a user runs it) and
/// returns its binary.
pub fn crawl_binary() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let output = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--message-format=json", "--manifest-path", manifest, "--example", "crawl"])
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run cargo: {e}"));
        assert!(output.status.success(), "cargo build of the crawl example failed ({})", output.status);
        let stdout = String::from_utf8_lossy(&output.stdout);
        stdout
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "crawl")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .unwrap_or_else(|| panic!("cargo reported no executable for crawl:\n{stdout}"))
    })
}

/// Runs the crawl with `args` to its end (it stops by itself: `--max-secs`
/// bounds it) and returns its output.
pub fn run_crawl(args: &[&str]) -> Output {
    let started = Instant::now();
    let output = Command::new(crawl_binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run crawl: {e}"));
    eprintln!(
        "crawl {args:?} took {:.1}s:\n{}\n{}",
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The peer lines of a crawl's stdout, by address: (user agent, services,
/// transport).
pub fn peer_lines(stdout: &str) -> Vec<(SocketAddr, String, String, String)> {
    stdout
        .lines()
        .filter(|l| !l.starts_with("summary "))
        .map(|line| {
            let fields: Vec<&str> = line.split("  ").collect();
            assert_eq!(fields.len(), 4, "a peer line has 4 fields: {line:?}");
            let addr = fields[0].parse().unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"));
            let ua = fields[1].strip_prefix('"').and_then(|u| u.strip_suffix('"')).expect("a quoted user agent");
            (addr, ua.to_owned(), fields[2].to_owned(), fields[3].to_owned())
        })
        .collect()
}

/// The `key=value` fields of the summary line.
pub fn summary(stdout: &str) -> HashMap<String, String> {
    let line = stdout.lines().find(|l| l.starts_with("summary ")).expect("a summary line");
    line["summary ".len()..]
        .split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("key=value");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// An address on `ip` where nothing listens: bound to a free port, then
/// closed.
pub fn dead_addr(ip: Ipv4Addr) -> SocketAddr {
    TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap()
}

/// A Tor v3 address, which the crawl (no proxy) must skip.
fn onion() -> (AddrV2, u16) {
    (AddrV2::TorV3([7; 32]), 18444)
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

#[test]
fn crawl_follows_addr_answers_to_every_server_once() {
    // Six servers, A..F, on 127.0.0.21..26; every answer has two entries, so
    // each connection ends at its answer.
    let servers: Vec<AddrServer> = (21..27).map(|last| AddrServer::start(ip(last), vec![])).collect();
    let at = |i: usize| servers[i].addr();
    let dead = dead_addr(ip(27));
    let entries = |list: &[SocketAddr]| list.iter().map(|a| (addr_v2(a), a.port())).collect::<Vec<_>>();
    let (a, b, c, d, e, f) = (0, 1, 2, 3, 4, 5);
    servers[a].set_answers(entries(&[at(b), at(c)]));
    servers[b].set_answers(entries(&[at(d), at(a)]));
    servers[c].set_answers(entries(&[at(d), at(e)]));
    servers[d].set_answers([entries(&[at(f)]), vec![onion()]].concat());
    servers[e].set_answers(entries(&[at(a), dead]));
    servers[f].set_answers(entries(&[at(b), at(e)]));

    let seed = at(a).to_string();
    let output = run_crawl(&["--network", "regtest", "--seed", &seed, "--max-secs", &CRAWL_SECS.to_string()]);
    assert!(output.status.success(), "crawl exited with {}", output.status);
    let stdout = String::from_utf8_lossy(&output.stdout);

    let lines = peer_lines(&stdout);
    let mut printed: Vec<SocketAddr> = lines.iter().map(|l| l.0).collect();
    printed.sort();
    let mut expected: Vec<SocketAddr> = servers.iter().map(AddrServer::addr).collect();
    expected.sort();
    assert_eq!(printed, expected, "every server once, and nothing else");
    for (addr, ua, services, transport) in &lines {
        assert_eq!(ua, &format!("/addr_server:{}/", addr.ip()), "{addr}");
        assert_eq!(services, "NETWORK|WITNESS", "{addr}");
        assert!(transport == "v1" || transport == "v2", "{addr}: {transport}");
    }

    let summary = summary(&stdout);
    assert_eq!(summary["reached"], "6");
    assert_eq!(summary["failed"], "1", "the dead address");
    // B, C, D, E, F and the dead address; not A (the seed), not the onion
    // service, and nothing twice.
    assert_eq!(summary["learned"], "6");
    assert_eq!(summary["queued"], "0");

    for server in &servers {
        let stats = server.stats();
        assert_eq!(stats.handshakes, 1, "{}: one visit", server.addr());
        assert_eq!(stats.getaddrs, 1, "{}: asked once", server.addr());
        assert_eq!(stats.addrv2_answers, 1, "{}: the crawl sends sendaddrv2", server.addr());
        assert!(stats.user_agents[0].starts_with("/peerlink:") && stats.user_agents[0].contains("crawl"));
        assert!(server.wait_for(crate::common::WAIT, |s| s.open == 0), "{}: the crawl hung up", server.addr());
    }
}

#[test]
fn crawl_stops_at_max_peers() {
    // A ring of five servers, each knowing the next two.
    let servers: Vec<AddrServer> = (31..36).map(|last| AddrServer::start(ip(last), vec![])).collect();
    for (i, server) in servers.iter().enumerate() {
        let next = [servers[(i + 1) % 5].addr(), servers[(i + 2) % 5].addr()];
        server.set_answers(next.iter().map(|a| (addr_v2(a), a.port())).collect());
    }
    let seed = servers[0].addr().to_string();
    let output = run_crawl(&["--network", "regtest", "--seed", &seed, "--max-peers", "3", "--max-secs", "60"]);
    assert!(output.status.success(), "crawl exited with {}", output.status);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(peer_lines(&stdout).len(), 3, "{stdout}");
    assert_eq!(summary(&stdout)["reached"], "3");
}

#[test]
fn crawl_ends_a_silent_peer_after_addr_wait() {
    let mut options = Options::new(ip(41), vec![]);
    options.answer_getaddr = false;
    let server = AddrServer::start_with(options);
    let seed = server.addr().to_string();
    let started = Instant::now();
    let output = run_crawl(&["--network", "regtest", "--seed", &seed, "--addr-wait", "1", "--max-secs", "60"]);
    assert!(output.status.success(), "crawl exited with {}", output.status);
    assert!(started.elapsed() < Duration::from_secs(30), "the crawl waited for --addr-wait, not --max-secs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(peer_lines(&stdout).len(), 1);
    let summary = summary(&stdout);
    assert_eq!((summary["reached"].as_str(), summary["learned"].as_str()), ("1", "0"));
    assert_eq!(server.getaddr_count(), 1);
}

#[test]
fn crawl_rejects_bad_arguments_with_exit_code_2() {
    let cases: [&[&str]; 6] = [
        &["--network", "regtest"],
        &["--seed", "127.0.0.1"],
        &["--network", "regtest", "--seed", "127.0.0.1", "--max-peers", "many"],
        &["--network", "regtest", "--seed", "127.0.0.1:99999"],
        &["--network", "moon", "--seed", "127.0.0.1"],
        &["--network", "regtest", "--seed", "127.0.0.1", "--frobnicate"],
    ];
    for args in cases {
        let output = run_crawl(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = BufReader::new(stderr.as_bytes()).lines().next().unwrap().unwrap();
        assert!(first.starts_with("error: "), "{args:?}: {stderr}");
        assert!(stderr.contains("usage: crawl"), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}: nothing on stdout");
    }
}

/// The scripted peer itself: `addr` (IPv4/IPv6 entries only) to a peer that
/// did not send `sendaddrv2`, `pong` for `ping`, and `kill_connections`.
#[test]
fn addr_server_answers_addr_without_sendaddrv2_and_kills_connections() {
    use bitcoin::p2p::message::NetworkMessage;
    use peerlink::Event;

    use crate::common::{WAIT, client, connected, message, version_message, wait_for};

    let known = SocketAddr::from((ip(52), 18444));
    let mut options = Options::new(ip(51), vec![known]);
    options.answers.push(onion());
    let server = AddrServer::start_with(options);
    let handle = client();
    let peer = handle.connect(server.addr()).unwrap();
    assert_eq!(connected(&handle), peer);
    handle.send(peer, NetworkMessage::Version(version_message())).unwrap();
    let mut got_verack = false;
    while !got_verack {
        match message(&handle).1 {
            NetworkMessage::Version(v) => assert_eq!(v.user_agent, "/addr_server:127.0.0.51/"),
            NetworkMessage::Verack => got_verack = true,
            NetworkMessage::SendAddrV2 => {}
            other => panic!("unexpected {other:?} during the handshake"),
        }
    }
    handle.send(peer, NetworkMessage::Verack).unwrap();
    assert!(server.wait_for(WAIT, |s| s.handshakes == 1));
    handle.send(peer, NetworkMessage::Ping(7)).unwrap();
    assert_eq!(message(&handle).1, NetworkMessage::Pong(7));
    handle.send(peer, NetworkMessage::GetAddr).unwrap();
    let NetworkMessage::Addr(list) = message(&handle).1 else { panic!("expected addr") };
    let addrs: Vec<SocketAddr> = list.iter().map(|(_, a)| a.socket_addr().unwrap()).collect();
    assert_eq!(addrs, [known], "the onion entry is left out of addr");
    let stats = server.stats();
    assert_eq!((stats.getaddrs, stats.addr_answers, stats.addrv2_answers, stats.open), (1, 1, 0, 1));
    assert_eq!(server.connections(), 1);

    server.kill_connections();
    wait_for(&handle, |e| matches!(e, Event::Disconnected { peer: p, .. } if p == peer).then_some(()));
    assert!(server.wait_for(WAIT, |s| s.open == 0));
    assert_eq!(server.stats().accepted, 1);
}
