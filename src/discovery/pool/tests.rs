//! The pool driven by hand: actions are carried out by a tiny harness that
//! hands out peer ids, and events are built as the reactor would send them.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bitcoin::p2p::ServiceFlags;
use bitcoin::p2p::address::{AddrV2, AddrV2Message};
use bitcoin::p2p::message::NetworkMessage;

use super::*;
use crate::PeerInfo;
use crate::discovery::seeds::ResolveError;
use crate::event::{ConnectError, Direction, DisconnectReason};

const UNIX: u64 = 1_700_000_000;

struct Harness {
    pool: Pool,
    now: Instant,
    unix: u64,
    next: u64,
    dialled: Vec<(PeerId, Target)>,
    sent: Vec<(PeerId, NetworkMessage)>,
    dropped: Vec<PeerId>,
    resolves: Vec<Vec<(String, u16)>>,
}

fn routable(i: u32) -> SocketAddr {
    // Distinct /16s: 20.<hi>.<lo>.1.
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(20 + (i / 256) as u8, (i % 256) as u8, 1, 1)), 8333)
}

fn config() -> PoolConfig {
    let mut c = PoolConfig::new(bitcoin::Network::Bitcoin);
    c.dns_seeds = Vec::new();
    c.fixed_seeds = Vec::new();
    c
}

impl Harness {
    fn new(config: PoolConfig) -> Harness {
        let now = Instant::now();
        Harness {
            pool: Pool::new(config, AddrBook::new([7; 32]), now),
            now,
            unix: UNIX,
            next: 1,
            dialled: Vec::new(),
            sent: Vec::new(),
            dropped: Vec::new(),
            resolves: Vec::new(),
        }
    }

    fn add(&mut self, addr: SocketAddr, services: ServiceFlags) {
        // Learned from a peer in the address's own group: spread buckets.
        let source = NetGroup::of_ip(addr.ip());
        // A slot taken by a good entry drops the newcomer, as in Core.
        self.pool.book_mut().add(Address::from(addr), services, self.unix, &source, self.unix);
    }

    fn run(&mut self) {
        while let Some(action) = self.pool.poll_action() {
            match action {
                PoolAction::Connect { token, target } => {
                    let peer = PeerId(self.next);
                    self.next += 1;
                    self.pool.dialed(token, Some(peer));
                    self.dialled.push((peer, target));
                }
                PoolAction::Send(peer, m) => self.sent.push((peer, m)),
                PoolAction::Disconnect(peer) => self.dropped.push(peer),
                PoolAction::Resolve(q) => self.resolves.push(q),
            }
        }
    }

    fn tick(&mut self) {
        self.pool.tick(self.now, self.unix);
        self.run();
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.unix += d.as_secs();
        self.tick();
    }

    fn event(&mut self, event: Event) {
        self.pool.on_event(&event, self.now, self.unix);
        self.run();
    }

    fn target_of(&self, peer: PeerId) -> Target {
        self.dialled.iter().find(|(p, _)| *p == peer).map(|(_, t)| t.clone()).expect("dialled")
    }

    fn ready(&mut self, peer: PeerId, services: ServiceFlags) {
        let target = self.target_of(peer);
        let info = info(peer, target, services);
        self.event(Event::Ready { peer, info: Box::new(info) });
    }

    fn fail(&mut self, peer: PeerId) {
        let target = self.target_of(peer);
        self.event(Event::ConnectFailed { peer, target, error: ConnectError::Timeout(Duration::from_secs(10)) });
    }

    fn gone(&mut self, peer: PeerId) {
        self.event(Event::Disconnected { peer, reason: DisconnectReason::PeerClosed });
    }
}

fn info(peer: PeerId, target: Target, services: ServiceFlags) -> PeerInfo {
    super::ops::info(peer, target, services, Direction::Outbound)
}

fn good_services() -> ServiceFlags {
    ServiceFlags::NETWORK | ServiceFlags::WITNESS
}

#[test]
fn fills_to_the_target_from_distinct_groups_and_asks_for_addresses() {
    let mut h = Harness::new(config());
    for i in 0..40 {
        h.add(routable(i), good_services());
    }
    h.tick();
    assert_eq!(h.dialled.len(), DEFAULT_OUTBOUND, "eight dials");
    let groups: HashSet<_> = h.dialled.iter().map(|(_, t)| NetGroup::of_target(t)).collect();
    assert_eq!(groups.len(), DEFAULT_OUTBOUND, "one per network group");
    // Nothing more while they are under way.
    h.advance(Duration::from_secs(1));
    assert_eq!(h.dialled.len(), DEFAULT_OUTBOUND);
    let peers: Vec<PeerId> = h.dialled.iter().map(|(p, _)| *p).collect();
    for p in &peers {
        h.ready(*p, good_services());
    }
    assert_eq!(h.pool.ready_count(), DEFAULT_OUTBOUND);
    let getaddrs = h.sent.iter().filter(|(_, m)| matches!(m, NetworkMessage::GetAddr)).count();
    assert_eq!(getaddrs, DEFAULT_OUTBOUND, "one getaddr per peer");
    // A ready peer's address is in the tried table now.
    assert_eq!(h.pool.book().tried_len(), DEFAULT_OUTBOUND);
    assert!(h.pool.peers().iter().all(|p| p.origin == Origin::Book && p.kind == PeerKind::Outbound));
}

#[test]
fn one_group_gives_one_peer_unless_distinct_groups_is_off() {
    let mut h = Harness::new(config());
    for i in 0..30 {
        h.add(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(50, 60, 1, i as u8 + 1)), 8333), good_services());
    }
    h.tick();
    assert_eq!(h.dialled.len(), 1, "one /16, one peer");

    let mut c = config();
    c.distinct_groups = false;
    let mut h = Harness::new(c);
    for i in 0..30 {
        h.add(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(50, 60, 1, i as u8 + 1)), 8333), good_services());
    }
    h.tick();
    assert_eq!(h.dialled.len(), DEFAULT_OUTBOUND);
}

#[test]
fn a_peer_without_the_services_is_dropped_and_replaced() {
    let mut c = config();
    c.outbound = 1;
    c.services = good_services() | ServiceFlags::COMPACT_FILTERS;
    let mut h = Harness::new(c);
    h.add(routable(1), good_services() | ServiceFlags::COMPACT_FILTERS);
    h.add(routable(2), good_services() | ServiceFlags::COMPACT_FILTERS);
    h.tick();
    assert_eq!(h.dialled.len(), 1);
    let (first, target) = h.dialled[0].clone();
    h.ready(first, good_services());
    assert_eq!(h.dropped, vec![first], "dropped at once");
    assert_eq!(h.pool.stats().wrong_services, 1);
    assert_eq!(h.pool.ready_count(), 0);
    let address = Address::from(target.socket_addr().unwrap());
    assert_eq!(h.pool.book().get(&address).unwrap().services, good_services(), "the book learned the truth");
    h.gone(first);
    assert_eq!(h.dialled.len(), 2, "replaced");
    assert_ne!(h.dialled[1].1, target);
}

#[test]
fn a_failed_address_backs_off_exponentially() {
    let mut c = config();
    c.outbound = 1;
    let mut h = Harness::new(c);
    h.add(routable(1), good_services());
    h.tick();
    let mut waits = Vec::new();
    for round in 0..4 {
        let (peer, _) = *h.dialled.last().unwrap();
        h.fail(peer);
        let dials = h.dialled.len();
        let mut waited = Duration::ZERO;
        while h.dialled.len() == dials {
            h.advance(Duration::from_secs(1));
            waited += Duration::from_secs(1);
            assert!(waited < Duration::from_secs(100), "round {round}: never redialled");
        }
        waits.push(waited.as_secs());
    }
    // 2 s, 4 s, 8 s, 16 s (to the tick).
    assert_eq!(waits, vec![2, 4, 8, 16]);
    // A handshake clears it.
    let (peer, _) = *h.dialled.last().unwrap();
    h.ready(peer, good_services());
    let dials = h.dialled.len();
    h.gone(peer);
    assert_eq!(h.dialled.len(), dials + 1, "redialled at once: no backoff after a good session");
}

#[test]
fn an_empty_book_asks_the_dns_seeds_with_the_service_prefix() {
    let mut c = config();
    c.dns_seeds = vec!["seed.example.org".into(), "dnsseed.example.net".into()];
    c.services = good_services() | ServiceFlags::COMPACT_FILTERS;
    let mut h = Harness::new(c);
    h.tick();
    assert_eq!(h.resolves.len(), 1);
    let mut names: Vec<String> = h.resolves[0].iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    assert_eq!(names, vec!["x49.dnsseed.example.net".to_string(), "x49.seed.example.org".to_string()]);
    // Only once.
    h.advance(Duration::from_secs(1));
    assert_eq!(h.resolves.len(), 1);
    let answers: Vec<SocketAddr> = (0..10).map(routable).collect();
    h.pool.on_resolved("x49.seed.example.org", Ok(answers), h.now, h.unix);
    h.run();
    assert_eq!(h.dialled.len(), DEFAULT_OUTBOUND);
    let peers = h.pool.peers();
    assert!(peers.iter().all(|p| p.origin == Origin::Seed("seed.example.org".into())), "{peers:?}");
    assert_eq!(h.pool.stats().seeded, 10);
}

#[test]
fn fixed_seeds_are_the_fallback_when_the_seeds_give_nothing() {
    let mut c = config();
    c.dns_seeds = vec!["seed.example.org".into()];
    c.fixed_seeds = (100..110).map(|i| Address::from(routable(i))).collect();
    let mut h = Harness::new(c);
    h.tick();
    assert!(h.dialled.is_empty(), "seeds first");
    h.pool.on_resolved("x9.seed.example.org", Err(ResolveError::no_address("x9.seed.example.org")), h.now, h.unix);
    h.run();
    assert!(h.pool.stats().used_fixed);
    assert_eq!(h.dialled.len(), DEFAULT_OUTBOUND);
    assert!(h.pool.peers().iter().all(|p| p.origin == Origin::Fixed));
}

#[test]
fn through_a_proxy_seeds_are_reached_by_name_and_never_looked_up() {
    let mut c = config();
    c.dns_seeds = vec!["seed.example.org".into()];
    c.proxied = true;
    let mut h = Harness::new(c);
    h.tick();
    assert!(h.resolves.is_empty(), "no local lookup through a proxy");
    assert_eq!(h.dialled.len(), 1);
    let (fetch, target) = h.dialled[0].clone();
    assert_eq!(target.to_string(), "seed.example.org:8333");
    assert_eq!(h.pool.peer(fetch).unwrap().kind, PeerKind::AddrFetch);
    h.ready(fetch, good_services());
    assert!(h.sent.contains(&(fetch, NetworkMessage::GetAddr)));
    let list: Vec<AddrV2Message> = (0..12)
        .map(|i| AddrV2Message {
            time: h.unix as u32,
            services: good_services(),
            addr: AddrV2::Ipv4(match routable(i).ip() {
                IpAddr::V4(v4) => v4,
                _ => unreachable!(),
            }),
            port: 8333,
        })
        .collect();
    h.event(Event::Message { peer: fetch, message: NetworkMessage::AddrV2(list), wire_size: 0 });
    assert!(h.dropped.contains(&fetch), "dropped after its answer");
    let outbound: Vec<PoolPeer> = h.pool.peers().into_iter().filter(|p| p.kind == PeerKind::Outbound).collect();
    assert_eq!(outbound.len(), DEFAULT_OUTBOUND);
    assert!(outbound.iter().all(|p| p.origin == Origin::Seed("seed.example.org".into())));
}

#[test]
fn onlynet_onion_never_dials_other_networks() {
    let mut c = config();
    c.networks = Some(vec![Network::Onion]);
    c.onion = true;
    c.proxied = true;
    c.dns_seeds = vec!["seed.example.org".into()];
    let mut h = Harness::new(c);
    for i in 0..20 {
        h.add(routable(i), good_services());
    }
    let source = NetGroup::of_ip(IpAddr::V4(Ipv4Addr::new(9, 9, 9, 9)));
    for i in 0..3u8 {
        let a = Address::new(AddrV2::TorV3([i + 1; 32]), 8333);
        assert!(h.pool.book_mut().add(a, good_services(), h.unix, &source, h.unix));
    }
    h.tick();
    h.advance(Duration::from_secs(20));
    assert!(!h.dialled.is_empty());
    assert!(h.dialled.iter().all(|(_, t)| t.is_onion()), "{:?}", h.dialled);
    assert!(h.resolves.is_empty());
}

#[test]
fn manual_peers_are_kept_and_not_counted() {
    let mut c = config();
    c.outbound = 2;
    let mut h = Harness::new(c);
    for i in 0..10 {
        h.add(routable(i), good_services());
    }
    let manual: Target = "127.0.0.1:18444".parse().unwrap();
    h.pool.add_manual(manual.clone(), h.now);
    h.tick();
    let manual_peer = h.dialled.iter().find(|(_, t)| *t == manual).map(|(p, _)| *p).expect("manual dialled");
    assert_eq!(h.dialled.len(), 3, "two outbound plus the manual one");
    h.ready(manual_peer, ServiceFlags::NONE);
    assert!(!h.dropped.contains(&manual_peer), "a manual peer is never dropped for its services");
    h.gone(manual_peer);
    h.advance(Duration::from_secs(3));
    let redials = h.dialled.iter().filter(|(_, t)| *t == manual).count();
    assert_eq!(redials, 2, "reconnected");
}

#[test]
fn a_manual_peer_the_pool_already_holds_is_adopted_not_dialled_twice() {
    let mut c = config();
    c.outbound = 1;
    let mut h = Harness::new(c);
    h.add(routable(0), good_services());
    h.add(routable(1), good_services());
    h.tick();
    assert_eq!(h.dialled.len(), 1);
    let (peer, target) = h.dialled[0].clone();
    h.ready(peer, good_services());
    h.pool.add_manual(target.clone(), h.now);
    assert_eq!(h.pool.peer(peer).map(|p| p.kind), Some(PeerKind::Manual), "adopted");
    h.tick();
    assert_eq!(h.dialled.iter().filter(|(_, t)| *t == target).count(), 1, "no second connection");
    assert_eq!(h.dialled.len(), 2, "the freed outbound slot is refilled from the book's other address");
    // A free slot, and the manual peer goes: the one address left in the
    // book is the manual peer's, and refills never take it, even while it
    // waits out its backoff.
    h.pool.set_outbound(2);
    h.gone(peer);
    assert_eq!(h.dialled.iter().filter(|(_, t)| *t == target).count(), 1, "not redialled as outbound");
    h.advance(Duration::from_secs(3));
    let again: Vec<_> = h.dialled.iter().filter(|(_, t)| *t == target).map(|(p, _)| *p).collect();
    assert_eq!(again.len(), 2, "redialled once: {:?}", h.dialled);
    assert_eq!(h.pool.peer(again[1]).map(|p| p.kind), Some(PeerKind::Manual));
}

#[test]
fn a_removed_manual_peer_becomes_outbound_only_if_it_fits() {
    // The book holds one address, in 20.0; `slots` outbound slots. A manual
    // peer `manual` is added once that address is dialled, made ready, and
    // removed: what kind is its connection then?
    fn removed(slots: usize, manual: Target) -> (PeerKind, Harness, PeerId) {
        let mut c = config();
        c.outbound = slots;
        let mut h = Harness::new(c);
        h.add(routable(0), good_services());
        h.tick();
        assert_eq!(h.dialled.len(), 1);
        h.pool.add_manual(manual.clone(), h.now);
        h.tick();
        assert_eq!(h.dialled.len(), 2, "{:?}", h.dialled);
        let peer = h.dialled[1].0;
        for p in [h.dialled[0].0, peer] {
            h.ready(p, good_services());
        }
        assert_eq!(h.pool.remove_manual(&manual), Some(peer));
        assert!(h.dropped.is_empty(), "the pool drops nothing: {:?}", h.dropped);
        let kind = h.pool.peer(peer).expect("still held").kind;
        (kind, h, peer)
    }
    let own_group: Target = routable(1).into();
    // A free slot and a group of its own: it becomes an outbound peer.
    assert_eq!(removed(2, own_group.clone()).0, PeerKind::Outbound);
    // No free slot: kept, uncounted, and never redialled once it goes.
    let (kind, mut h, peer) = removed(1, own_group.clone());
    assert_eq!(kind, PeerKind::Manual);
    h.gone(peer);
    h.advance(Duration::from_secs(60));
    assert_eq!(h.dialled.iter().filter(|(_, t)| *t == own_group).count(), 1, "{:?}", h.dialled);
    // A free slot, but the outbound peer's group (20.0).
    let (kind, h, _) = removed(2, SocketAddr::from(([20, 0, 9, 9], 8333)).into());
    assert_eq!(kind, PeerKind::Manual);
    assert_eq!(h.pool.ready_count(), 1);
}

#[test]
fn a_manual_peer_named_in_another_form_is_the_same_host() {
    let mut c = config();
    c.outbound = 1;
    let mut h = Harness::new(c);
    h.add(routable(0), good_services());
    h.tick();
    let (peer, _) = h.dialled[0].clone();
    h.ready(peer, good_services());
    let SocketAddr::V4(v4) = routable(0) else { unreachable!() };
    let mapped: Target = SocketAddr::from((v4.ip().to_ipv6_mapped(), v4.port())).into();
    h.pool.add_manual(mapped.clone(), h.now);
    h.pool.add_manual(Target::from(routable(0)), h.now);
    h.tick();
    assert_eq!(h.dialled.len(), 1, "no second connection to {mapped}: {:?}", h.dialled);
    assert_eq!(h.pool.peer(peer).map(|p| p.kind), Some(PeerKind::Manual));
    // Removed by either form.
    assert_eq!(h.pool.remove_manual(&Target::from(routable(0))), Some(peer));
}

#[test]
fn a_manual_peer_removed_and_added_again_takes_its_connection_back() {
    let mut c = config();
    c.outbound = 1;
    let mut h = Harness::new(c);
    h.add(routable(0), good_services());
    let manual: Target = routable(1).into();
    h.pool.add_manual(manual.clone(), h.now);
    h.tick();
    let peer = h.dialled.iter().find(|(_, t)| *t == manual).map(|(p, _)| *p).expect("dialled");
    h.ready(peer, good_services());
    // The one slot is taken, so the removed peer's connection stays a
    // leftover manual-kind one; adding it again links it.
    assert_eq!(h.pool.remove_manual(&manual), Some(peer));
    h.pool.add_manual(manual.clone(), h.now);
    h.tick();
    assert!(h.pool.poll_timeout(h.now) > h.now, "nothing due: a driver would spin");
    assert_eq!(h.pool.remove_manual(&manual), Some(peer), "linked again");
    assert_eq!(h.dialled.iter().filter(|(_, t)| *t == manual).count(), 1);
}

#[test]
fn a_manual_dial_the_reactor_never_made_backs_off() {
    let mut h = Harness::new(config());
    let manual: Target = routable(1).into();
    h.pool.add_manual(manual.clone(), h.now);
    h.pool.tick(h.now, h.unix);
    let Some(PoolAction::Connect { token, .. }) = h.pool.poll_action() else { panic!("a dial") };
    h.pool.dialed(token, None);
    assert!(h.pool.peers().is_empty());
    // The first backoff is 2 s (`PoolConfig::backoff`).
    h.advance(Duration::from_millis(1500));
    assert!(h.dialled.is_empty(), "backed off: {:?}", h.dialled);
    h.advance(Duration::from_millis(1000));
    assert_eq!(h.dialled.iter().filter(|(_, t)| *t == manual).count(), 1, "redialled after the backoff");
}

/// The book holds one address; a peer the pool does not hold announces
/// itself from `from` in `direction`: the pool dials the book's address
/// only once that peer is gone.
fn dialled_only_once_gone(from: SocketAddr, direction: Direction) {
    let mut c = config();
    c.outbound = 1;
    let mut h = Harness::new(c);
    h.add(routable(0), good_services());
    let other = PeerId(1000);
    let info = super::ops::info(other, from.into(), good_services(), direction);
    h.event(Event::Ready { peer: other, info: Box::new(info) });
    h.tick();
    assert!(h.dialled.is_empty(), "already connected ({direction:?} from {from}): {:?}", h.dialled);
    h.gone(other);
    assert_eq!(h.dialled.len(), 1, "dialled once the other connection is gone");
    assert_eq!(h.dialled[0].1, Target::from(routable(0)));
}

#[test]
fn an_address_the_user_is_connected_to_is_not_dialled_again() {
    // The user dialled the book's one address on the handle.
    dialled_only_once_gone(routable(0), Direction::Outbound);
}

#[test]
fn an_inbound_peer_blocks_its_ip_at_any_port() {
    dialled_only_once_gone(SocketAddr::new(routable(0).ip(), 51234), Direction::Inbound);
}

#[test]
fn feelers_test_new_addresses_once_the_slots_are_full() {
    let mut c = config();
    c.outbound = 2;
    c.feeler_interval = Some(Duration::from_secs(120));
    let mut h = Harness::new(c);
    for i in 0..10 {
        h.add(routable(i), good_services());
    }
    h.tick();
    let first: Vec<PeerId> = h.dialled.iter().map(|(p, _)| *p).collect();
    for p in first {
        h.ready(p, good_services());
    }
    let before = h.pool.book().tried_len();
    h.advance(Duration::from_secs(121));
    let feeler = h.pool.peers().into_iter().find(|p| p.kind == PeerKind::Feeler).expect("a feeler");
    h.ready(feeler.peer, good_services());
    assert!(h.dropped.contains(&feeler.peer), "a feeler is dropped after the handshake");
    assert_eq!(h.pool.book().tried_len(), before + 1, "and its address is tried now");
    assert_eq!(h.pool.stats().feelers, 1);
}

#[test]
fn addr_messages_are_rate_limited_per_peer() {
    let mut c = config();
    c.outbound = 1;
    let mut h = Harness::new(c);
    h.add(routable(1), good_services());
    h.tick();
    let (peer, _) = h.dialled[0];
    h.ready(peer, good_services());
    // The getaddr allowance is 1,000; two full answers at once get 1,000 in.
    for round in 0..2u32 {
        let list: Vec<(u32, bitcoin::p2p::Address)> = (0..1000u32)
            .map(|i| {
                let a = routable(1000 + round * 1000 + i);
                (h.unix as u32, bitcoin::p2p::Address::new(&a, good_services()))
            })
            .collect();
        h.event(Event::Message { peer, message: NetworkMessage::Addr(list), wire_size: 0 });
    }
    let stats = h.pool.stats();
    assert!(stats.rate_limited >= 999, "{stats:?}");
    assert!(stats.learned <= 1001, "{stats:?}");
}

#[test]
fn an_idle_pool_wants_a_tick_within_a_second() {
    let h = Harness::new(config());
    let at = h.pool.poll_timeout(h.now);
    assert!(at > h.now && at <= h.now + Duration::from_secs(1));
}

#[test]
fn seeds_given_as_addresses_need_no_lookup_and_are_dialled() {
    let mut c = config();
    c.dns_seeds = vec!["127.0.0.31:18444".into(), "127.0.0.1:18445".into()];
    c.allow_unroutable = true;
    c.distinct_groups = false;
    let mut h = Harness::new(c);
    h.tick();
    assert!(h.resolves.is_empty(), "an address needs no lookup: {:?}", h.resolves);
    assert_eq!(h.dialled.len(), 2, "{:?}", h.pool.stats());
    let origins: HashSet<Origin> = h.pool.peers().into_iter().map(|p| p.origin).collect();
    let expected = ["127.0.0.31:18444", "127.0.0.1:18445"].map(|s| Origin::Seed(s.into()));
    assert_eq!(origins, expected.into_iter().collect());
}
