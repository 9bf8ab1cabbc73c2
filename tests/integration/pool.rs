//! The outbound pool on a real reactor, against scripted peers
//! ([`AddrServer`]s: raw-mode peerlink listeners on their own 127.0.0.x
//! addresses that answer `getaddr` with the addresses we choose), with an
//! injected resolver standing in for the DNS seeds.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peerlink::RecvTimeoutError;
use peerlink::discovery::addrbook::Address;
use peerlink::discovery::seeds::{ResolveError, Resolver};
use peerlink::discovery::{Origin, PeerKind, PoolConfig, Pooled};

use crate::addr_server::AddrServer;
use crate::common::NET;

/// Answers seed names from a table (a name matches with or without a
/// service-bit prefix) and records every name it was asked.
#[derive(Default)]
pub struct TableResolver {
    pub answers: HashMap<String, Vec<SocketAddr>>,
    pub asked: Mutex<Vec<String>>,
}

impl Resolver for TableResolver {
    fn resolve(&self, host: &str, _port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
        self.asked.lock().unwrap().push(host.to_string());
        let bare = match host.split_once('.') {
            Some((prefix, rest)) if prefix.starts_with('x') && prefix[1..].bytes().all(|b| b.is_ascii_hexdigit()) => {
                rest
            }
            _ => host,
        };
        Ok(self.answers.get(bare).cloned().unwrap_or_default())
    }
}

/// A pool config for loopback: one seed name answered by `resolver`.
pub fn loopback_pool(resolver: Arc<TableResolver>, seed: &str, outbound: usize) -> PoolConfig {
    let mut pool = PoolConfig::new(NET);
    pool.outbound = outbound;
    pool.dns_seeds = vec![seed.to_string()];
    pool.fixed_seeds = Vec::new();
    pool.allow_unroutable = true;
    // Every loopback address is in one network group.
    pool.distinct_groups = false;
    pool.resolver = resolver;
    pool
}

/// `n` scripted peers on 127.0.0.<first>.. that know nobody.
pub fn servers(first: u8, n: u8) -> Vec<AddrServer> {
    (0..n).map(|i| AddrServer::start(Ipv4Addr::new(127, 0, 0, first + i), Vec::new())).collect()
}

/// Drives `net` until `done` holds, for at most `limit`.
fn drive(net: &mut Pooled, limit: Duration, mut done: impl FnMut(&Pooled) -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done(net) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        match net.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => panic!("reactor gone"),
        }
    }
    true
}

/// A port on `ip` nobody listens on: bound, noted, closed.
fn closed_port(ip: Ipv4Addr) -> SocketAddr {
    std::net::TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap()
}

fn ready_targets(net: &Pooled) -> Vec<SocketAddr> {
    net.peers()
        .iter()
        .filter(|p| p.ready && p.kind == PeerKind::Outbound)
        .filter_map(|p| p.target.socket_addr())
        .collect()
}

#[test]
fn seeds_from_an_injected_resolver_fill_the_pool_and_getaddr_teaches_the_rest() {
    // The seed knows three peers; each of those knows more.
    let far = servers(60, 6);
    let far_addrs: Vec<SocketAddr> = far.iter().map(AddrServer::addr).collect();
    let near: Vec<AddrServer> = (0..3)
        .map(|i| AddrServer::start(Ipv4Addr::new(127, 0, 0, 50 + i), far_addrs[i as usize * 2..][..2].to_vec()))
        .collect();
    let resolver = Arc::new(TableResolver {
        answers: HashMap::from([("seed.pool.test".to_string(), near.iter().map(AddrServer::addr).collect())]),
        ..TableResolver::default()
    });
    let mut net =
        Pooled::start(crate::session_test_config(), loopback_pool(resolver.clone(), "seed.pool.test", 8)).unwrap();
    assert!(drive(&mut net, Duration::from_secs(30), |n| n.pool().ready_count() == 8), "{:?}", net.peers());
    let asked = resolver.asked.lock().unwrap().clone();
    assert_eq!(asked, vec!["x9.seed.pool.test".to_string()], "asked once, with Core's x9 prefix");
    let peers = net.peers();
    let from_seed = peers.iter().filter(|p| p.origin == Origin::Seed("seed.pool.test".into())).count();
    let from_book = peers.iter().filter(|p| p.origin == Origin::Book).count();
    assert_eq!(from_seed, 3, "{peers:?}");
    assert!(from_book >= 5, "the rest came from getaddr: {peers:?}");
    let targets: HashSet<SocketAddr> = ready_targets(&net).into_iter().collect();
    assert_eq!(targets.len(), 8, "eight distinct peers");
    for s in near.iter().chain(&far[..5]) {
        // Every ready peer got one getaddr.
        if targets.contains(&s.addr()) {
            let asked = s.wait_for(Duration::from_secs(10), |st| st.getaddrs >= 1);
            assert!(asked, "{} was not asked for addresses", s.addr());
        }
    }
    assert_eq!(net.pool().stats().failures, 0);
}

/// The figure the issue asks for: how long the pool takes to get back to
/// eight ready peers after one is killed, over many kills at random.
#[test]
fn a_pool_of_eight_refills_while_peers_are_killed_at_random() {
    let servers = servers(70, 14);
    let by_addr: HashMap<SocketAddr, usize> = servers.iter().enumerate().map(|(i, s)| (s.addr(), i)).collect();
    let resolver = Arc::new(TableResolver {
        answers: HashMap::from([("seed.refill.test".to_string(), servers.iter().map(AddrServer::addr).collect())]),
        ..TableResolver::default()
    });
    let mut net = Pooled::start(crate::session_test_config(), loopback_pool(resolver, "seed.refill.test", 8)).unwrap();
    assert!(drive(&mut net, Duration::from_secs(30), |n| n.pool().ready_count() == 8), "{:?}", net.peers());
    // A fixed-seed xorshift, so the kill order is the same every run.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut refills = Vec::new();
    for round in 0..20 {
        let ready = ready_targets(&net);
        assert_eq!(ready.len(), 8, "round {round}: {:?}", net.peers());
        let victim = ready[(next() % ready.len() as u64) as usize];
        let killed_at = Instant::now();
        servers[by_addr[&victim]].kill_connections();
        // Wait for the pool to see the loss, then for it to refill.
        let ok = drive(&mut net, Duration::from_secs(20), |n| {
            !ready_targets(n).contains(&victim) || n.pool().ready_count() < 8
        });
        assert!(ok, "round {round}: the kill of {victim} was never seen");
        let ok = drive(&mut net, Duration::from_secs(20), |n| n.pool().ready_count() == 8);
        assert!(ok, "round {round}: not refilled: {:?}", net.peers());
        refills.push(killed_at.elapsed());
    }
    refills.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    eprintln!(
        "pool refill after a kill, 20 rounds: min {:.1} ms, median {:.1} ms, max {:.1} ms",
        ms(refills[0]),
        ms(refills[refills.len() / 2]),
        ms(refills[refills.len() - 1])
    );
    let stats = net.pool().stats();
    eprintln!("pool stats: {stats:?}");
    assert!(stats.ready >= 28, "8 at first and one per kill: {stats:?}");
}

#[test]
fn an_address_that_refuses_is_backed_off_and_replaced() {
    let live = servers(90, 3);
    let dead = closed_port(Ipv4Addr::new(127, 0, 0, 94));
    let mut answers: Vec<SocketAddr> = live.iter().map(AddrServer::addr).collect();
    answers.push(dead);
    let resolver = Arc::new(TableResolver {
        answers: HashMap::from([("seed.dead.test".to_string(), answers)]),
        ..TableResolver::default()
    });
    let mut net = Pooled::start(crate::session_test_config(), loopback_pool(resolver, "seed.dead.test", 4)).unwrap();
    // Three can be ready; the fourth slot keeps failing on the dead one.
    assert!(drive(&mut net, Duration::from_secs(30), |n| n.pool().ready_count() == 3));
    assert!(drive(&mut net, Duration::from_secs(30), |n| n.pool().stats().failures >= 2), "{:?}", net.pool().stats());
    let dials_then = net.pool().stats().dials;
    // Backoff: 2 s after the first failure, 4 s after the second; within
    // one second only the next tick passes, and no new dial happens.
    let quiet_until = Instant::now() + Duration::from_millis(900);
    while Instant::now() < quiet_until {
        let _ = net.recv_timeout(Duration::from_millis(100));
    }
    assert_eq!(net.pool().stats().dials, dials_then, "no redial inside the backoff: {:?}", net.pool().stats());
    let book = net.pool().book();
    let record = book.get(&Address::from(dead)).expect("the dead address stays in the book");
    // Core counts one failed attempt per address until it is good again.
    assert!(record.attempts >= 1 && record.last_try.is_some() && record.last_success.is_none(), "{record:?}");
}

#[cfg(feature = "socks")]
#[test]
fn a_pool_behind_socks5_reaches_the_seed_by_name_and_never_dials_directly() {
    use crate::socks_server::{Options, RequestedTarget, SocksServer};

    let peers = servers(110, 8);
    let peer_addrs: Vec<SocketAddr> = peers.iter().map(AddrServer::addr).collect();
    let seed = AddrServer::start(Ipv4Addr::new(127, 0, 0, 109), peer_addrs.clone());
    let socks =
        SocksServer::start(Options { hosts: vec![("seed.socks.test".to_string(), seed.addr())], ..Options::default() });
    let resolver = Arc::new(TableResolver::default());
    let mut config = crate::session_test_config();
    config.proxy = Some(peerlink::socks5::Proxy::new(socks.addr()));
    let mut pool = loopback_pool(resolver.clone(), "seed.socks.test", 8);
    pool.seed_port = seed.addr().port();
    let mut net = Pooled::start(config, pool).unwrap();
    assert!(drive(&mut net, Duration::from_secs(30), |n| n.pool().ready_count() == 8), "{:?}", net.peers());

    assert!(resolver.asked.lock().unwrap().is_empty(), "no local lookup through a proxy");
    let requests = socks.requests();
    assert_eq!(
        requests.iter().filter(|r| r.target == RequestedTarget::Name("seed.socks.test".into())).count(),
        1,
        "the seed reached by name through the proxy: {requests:?}"
    );
    // Every connection any scripted peer accepted was asked of the proxy:
    // a direct dial would be one more than the proxy saw.
    for s in &peers {
        let through_proxy = requests
            .iter()
            .filter(|r| r.target == RequestedTarget::Ip(s.addr().ip()) && r.port == s.addr().port())
            .count();
        assert_eq!(s.stats().accepted, through_proxy, "{}: connections vs proxy requests", s.addr());
        assert!(through_proxy >= 1, "{} never reached", s.addr());
    }
    assert_eq!(seed.stats().accepted, 1, "the seed, once");
    let ready: HashSet<SocketAddr> = ready_targets(&net).into_iter().collect();
    assert_eq!(ready, peer_addrs.into_iter().collect::<HashSet<_>>());
    assert!(net.peers().iter().all(|p| p.origin == Origin::Seed("seed.socks.test".into())));
}

/// `broadcast::to_network_with`: two peers wanted, among three scripted
/// peers and an address that refuses; every outcome says where its peer
/// came from.
#[test]
fn broadcast_to_the_network_reaches_the_count_and_replaces_failures() {
    let live = servers(120, 3);
    let dead = closed_port(Ipv4Addr::new(127, 0, 0, 124));
    let mut answers: Vec<SocketAddr> = live.iter().map(AddrServer::addr).collect();
    answers.insert(0, dead);
    let resolver = Arc::new(TableResolver {
        answers: HashMap::from([("seed.tx.test".to_string(), answers)]),
        ..TableResolver::default()
    });
    let tx = crate::common::big_tx(200);
    let pool = loopback_pool(resolver, "seed.tx.test", 2);
    let started = Instant::now();
    let outcomes =
        peerlink::broadcast::to_network_with(crate::session_test_config(), pool, &tx, 2, Duration::from_secs(30))
            .unwrap();
    eprintln!("to_network: {} outcomes in {:?}", outcomes.len(), started.elapsed());
    let ok: Vec<_> = outcomes.iter().filter(|o| o.result.is_ok()).collect();
    assert_eq!(ok.len(), 2, "{outcomes:?}");
    let live_addrs: HashSet<SocketAddr> = live.iter().map(AddrServer::addr).collect();
    for o in &outcomes {
        assert_eq!(o.origin, Some(Origin::Seed("seed.tx.test".into())), "{o:?}");
        let addr = o.target.socket_addr().expect("an address");
        match &o.result {
            // The scripted peers answer the ping but never ask for the tx.
            Ok(d) => {
                assert!(live_addrs.contains(&addr), "{o:?}");
                assert_eq!(d.kind, peerlink::broadcast::DeliveryKind::NotRequested, "{o:?}");
            }
            Err(_) => assert_eq!(addr, dead, "only the refusing address fails: {o:?}"),
        }
    }
    let distinct: HashSet<SocketAddr> = ok.iter().filter_map(|o| o.target.socket_addr()).collect();
    assert_eq!(distinct.len(), 2, "two different peers");
}
