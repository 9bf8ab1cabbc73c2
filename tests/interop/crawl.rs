//! The `crawl` example reaching real nodes: two scripted peers
//! ([`AddrServer`]) hand out the addresses of a Bitcoin Core node
//! (`BITCOIND_EXE`) and a bcoin node, and the crawl, seeded with the first
//! scripted peer only, must reach both nodes and print their user agents
//! (Core over v2, bcoin over v1 after the v2 attempt falls back).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};

use crate::addr_server::{AddrServer, addr_v2};
use crate::bcoin::Bcoin;
use crate::bitcoind::Bitcoind;
use crate::common::run_example;

/// The peer lines of the crawl's stdout: address → (user agent, services,
/// transport).
fn peer_lines(stdout: &str) -> HashMap<SocketAddr, (String, String, String)> {
    let mut peers = HashMap::new();
    for line in stdout.lines().filter(|l| !l.starts_with("summary ")) {
        let fields: Vec<&str> = line.split("  ").collect();
        assert_eq!(fields.len(), 4, "a peer line has 4 fields: {line:?}");
        let addr: SocketAddr = fields[0].parse().unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"));
        let ua = fields[1].strip_prefix('"').and_then(|u| u.strip_suffix('"')).expect("a quoted user agent");
        let old = peers.insert(addr, (ua.to_owned(), fields[2].to_owned(), fields[3].to_owned()));
        assert!(old.is_none(), "{addr} printed twice");
    }
    peers
}

fn summary(stdout: &str) -> HashMap<String, String> {
    let line = stdout.lines().find(|l| l.starts_with("summary ")).expect("a summary line");
    line["summary ".len()..]
        .split_whitespace()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

#[test]
fn crawl_reaches_core_and_bcoin_through_scripted_peers() {
    let Some(core) = Bitcoind::start() else { return };
    let bcoin = Bcoin::start();
    let first = AddrServer::start(Ipv4Addr::new(127, 0, 0, 61), vec![]);
    let second = AddrServer::start(Ipv4Addr::new(127, 0, 0, 62), vec![]);
    let entries = |list: &[SocketAddr]| list.iter().map(|a| (addr_v2(a), a.port())).collect::<Vec<_>>();
    first.set_answers(entries(&[second.addr(), core.p2p]));
    second.set_answers(entries(&[bcoin.p2p, first.addr()]));

    // Neither node has addresses to give on a fresh regtest chain, so each
    // connection to them ends after --addr-wait.
    let seed = first.addr().to_string();
    let (ok, stdout, _stderr) =
        run_example("crawl", &["--network", "regtest", "--seed", &seed, "--addr-wait", "2", "--max-secs", "90"]);
    assert!(ok, "crawl failed");
    let peers = peer_lines(&stdout);
    let mut reached: Vec<SocketAddr> = peers.keys().copied().collect();
    reached.sort();
    let mut expected = vec![first.addr(), second.addr(), core.p2p, bcoin.p2p];
    expected.sort();
    assert_eq!(reached, expected, "the two scripted peers, Core and bcoin, each once");

    let (core_ua, core_services, core_transport) = &peers[&core.p2p];
    assert!(core_ua.starts_with("/Satoshi:"), "Core's user agent: {core_ua:?}");
    assert!(core_services.contains("NETWORK") && core_services.contains("WITNESS"), "{core_services}");
    assert!(core_services.contains("P2P_V2"), "Core is started with -v2transport=1: {core_services}");
    assert_eq!(core_transport, "v2", "Core speaks BIP324");
    let (bcoin_ua, bcoin_services, bcoin_transport) = &peers[&bcoin.p2p];
    assert!(bcoin_ua.contains("bcoin"), "bcoin's user agent: {bcoin_ua:?}");
    assert!(bcoin_services.contains("NETWORK"), "{bcoin_services}");
    assert_eq!(bcoin_transport, "v1", "bcoin speaks v1 only");
    eprintln!("crawl reached Core as {core_ua:?} and bcoin as {bcoin_ua:?}");

    let summary = summary(&stdout);
    assert_eq!(summary["reached"], "4");
    assert_eq!(summary["failed"], "0");
    // The second scripted peer, Core and bcoin (the first is the seed).
    assert_eq!(summary["learned"], "3");
    for server in [&first, &second] {
        assert_eq!(server.stats().getaddrs, 1, "{}", server.addr());
    }
}
