//! Unit tests of addresses, bucketing, add/good/attempt/select, terrible
//! entries, collisions and the rate limit; property loops (seeded) over
//! random operation sequences and the file format; damaged files; and the
//! eclipse test.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use bitcoin::p2p::address::AddrV2Message;

use super::*;
use crate::error::Report;

const NOW: u64 = 1_700_000_000;

/// A seeded generator for the property loops.
struct TestRng(u64);

impl TestRng {
    fn next(&mut self) -> u64 {
        crate::session::splitmix64(&mut self.0)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// A routable IPv4 address.
    fn routable_v4(&mut self) -> Ipv4Addr {
        loop {
            let ip = Ipv4Addr::from(self.next() as u32);
            if Address::new(AddrV2::Ipv4(ip), 1).is_routable() {
                return ip;
            }
        }
    }
}

fn v4(s: &str, port: u16) -> Address {
    Address::new(AddrV2::Ipv4(s.parse().expect("ipv4")), port)
}

fn sock(s: &str) -> Address {
    Address::from(s.parse::<SocketAddr>().expect("socket address"))
}

fn group(s: &str) -> NetGroup {
    NetGroup::of_ip(s.parse().expect("ip"))
}

fn seed(n: u8) -> [u8; 32] {
    [n; 32]
}

/// `body` with its checksum recomputed: for damaged files that must get
/// past the checksum to reach a later check.
fn seal(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes.truncate(bytes.len() - CHECKSUM_LEN);
    let hash = sha256d::Hash::hash(&bytes);
    bytes.extend_from_slice(hash.as_byte_array());
    bytes
}

fn entries_of(bytes: &[u8]) -> &[u8] {
    &bytes[HEADER_LEN..bytes.len() - CHECKSUM_LEN]
}

fn assert_round_trip(book: &AddrBook) {
    let bytes = book.export();
    let loaded = AddrBook::import(&bytes, seed(99)).expect("an export imports");
    loaded.check_all_slots().expect("an imported book is consistent");
    assert_eq!(&loaded, book);
    assert_eq!(loaded.export(), bytes, "export(import(export(b))) != export(b)");
    assert_eq!(loaded.iter().collect::<Vec<_>>(), book.iter().collect::<Vec<_>>());
}

// ---- addresses ----

#[test]
fn addresses_are_canonical_and_display_as_host_and_port() {
    assert_eq!(sock("[::ffff:1.2.3.4]:8333"), v4("1.2.3.4", 8333));
    assert_eq!(
        Address::new(AddrV2::Ipv6("::ffff:1.2.3.4".parse().unwrap()), 1).addr,
        AddrV2::Ipv4([1, 2, 3, 4].into())
    );
    assert_eq!(v4("1.2.3.4", 8333).to_string(), "1.2.3.4:8333");
    assert_eq!(sock("[::1]:8333").to_string(), "[::1]:8333");
    let onion = Address::new(AddrV2::TorV3([0x11; 32]), 8333);
    let text = onion.to_string();
    assert!(text.ends_with(".onion:8333") && text.len() == 56 + ".onion:8333".len(), "{text}");
    assert_eq!(onion.to_target().unwrap().to_string(), text);
    let i2p = Address::new(AddrV2::I2p([0; 32]), 0);
    assert_eq!(i2p.to_string(), format!("{}.b32.i2p:0", "a".repeat(52)));
    // RFC 4648's test vector "foobar".
    assert_eq!(base32(b"foobar"), "mzxw6ytboi");
    let cjdns = Address::new(AddrV2::Cjdns("fc00::1".parse().unwrap()), 8333);
    assert_eq!(cjdns.to_string(), "[fc00::1]:8333");
    assert_eq!(Address::new(AddrV2::Unknown(9, vec![0xab, 1]), 7).to_string(), "[network 9: ab01]:7");
}

#[test]
fn networks_and_routability_follow_core() {
    let cases: &[(Address, Network, bool)] = &[
        (v4("8.8.8.8", 1), Network::Ipv4, true),
        (v4("127.0.0.1", 1), Network::Unroutable, false),
        (v4("10.1.1.1", 1), Network::Unroutable, false),
        (sock("[2001:4860::1]:1"), Network::Ipv6, true),
        (sock("[2002:808:808::1]:1"), Network::Ipv6, true), // 6to4 of a routable IPv4
        (sock("[fc00::1]:1"), Network::Unroutable, false),
        (Address::new(AddrV2::TorV3([1; 32]), 1), Network::Onion, true),
        (Address::new(AddrV2::TorV2([1; 10]), 1), Network::Onion, false),
        (Address::new(AddrV2::I2p([1; 32]), 0), Network::I2p, true),
        (Address::new(AddrV2::Cjdns("fc01::1".parse().unwrap()), 1), Network::Cjdns, true),
        (Address::new(AddrV2::Cjdns("fd01::1".parse().unwrap()), 1), Network::Unroutable, false),
        (Address::new(AddrV2::Unknown(42, vec![1]), 1), Network::Unroutable, false),
    ];
    for (address, network, routable) in cases {
        assert_eq!(address.network(), *network, "{address}");
        assert_eq!(address.is_routable(), *routable, "{address}");
    }
    assert_eq!(v4("8.8.8.8", 1).group(), Some(group("8.8.0.0")));
    assert!(Address::new(AddrV2::I2p([1; 32]), 0).to_target().is_err());
}

// ---- bucketing ----

#[test]
fn one_source_group_reaches_at_most_64_new_buckets_and_one_group_from_it_one() {
    let book = AddrBook::new(seed(1));
    let mut rng = TestRng(1);
    let source = group("44.55.0.1");
    let mut buckets = HashSet::new();
    for _ in 0..5000 {
        let address = Address::new(AddrV2::Ipv4(rng.routable_v4()), 8333);
        buckets.insert(new_slot_of(&book.key, &address, &source).0);
    }
    assert!(buckets.len() <= NEW_BUCKETS_PER_SOURCE_GROUP, "{} buckets", buckets.len());
    assert!(buckets.len() > 50, "the 64 buckets are all used: {}", buckets.len());
    // Addresses of one group from that source: one bucket.
    let one: HashSet<u16> =
        (0..=255u8).map(|i| new_slot_of(&book.key, &v4(&format!("9.9.{i}.1"), 8333), &source).0).collect();
    assert_eq!(one.len(), 1);
    // Tried: one group reaches at most 8 buckets.
    let tried: HashSet<u16> =
        (0..2000u32).map(|i| tried_slot_of(&book.key, &v4(&format!("9.9.{}.{}", i / 256, i % 256), 8333)).0).collect();
    assert!(tried.len() <= TRIED_BUCKETS_PER_GROUP && tried.len() >= 6, "{} tried buckets", tried.len());
}

#[test]
fn slots_depend_on_the_secret_key() {
    let a = AddrBook::new(seed(1));
    let b = AddrBook::new(seed(2));
    let source = group("5.5.5.5");
    let moved = (0..100u8)
        .filter(|i| {
            let address = v4(&format!("8.{i}.1.1"), 8333);
            new_slot_of(&a.key, &address, &source) != new_slot_of(&b.key, &address, &source)
        })
        .count();
    assert!(moved > 95, "only {moved} of 100 addresses moved with the key");
    // The same seed gives the same key.
    assert_eq!(AddrBook::new(seed(1)).key, a.key);
}

// ---- add ----

#[test]
fn unroutable_addresses_are_refused_unless_allowed() {
    let mut book = AddrBook::new(seed(3));
    let local = sock("127.0.0.1:18444");
    let src = group("127.0.0.1");
    assert!(!book.allows_unroutable());
    assert!(!book.add(local.clone(), ServiceFlags::NETWORK, NOW, &src, NOW));
    assert!(!book.add(Address::new(AddrV2::TorV2([1; 10]), 1), ServiceFlags::NETWORK, NOW, &src, NOW));
    assert!(book.is_empty());
    book.set_allow_unroutable(true);
    assert!(book.add(local.clone(), ServiceFlags::NETWORK, NOW, &src, NOW));
    assert!(!book.add(sock("0.0.0.0:1"), ServiceFlags::NETWORK, NOW, &src, NOW), "unspecified is never stored");
    assert!(!book.add(Address::new(AddrV2::Unknown(77, vec![1]), 1), ServiceFlags::NETWORK, NOW, &src, NOW));
    // Loopback nodes on different ports get spread, not one bucket.
    let buckets: HashSet<usize> = (0..40u16)
        .filter_map(|p| {
            let address = sock(&format!("127.0.0.1:{}", 20000 + p));
            book.add(address.clone(), ServiceFlags::NETWORK, NOW, &src, NOW);
            book.slot(&address).map(|s| s.bucket)
        })
        .collect();
    assert!(buckets.len() > 20, "{} buckets for 40 local nodes", buckets.len());
    assert!(book.len() >= 40, "{} of 41 local nodes kept", book.len());
    // Turning it off keeps what is stored, and the file keeps it too.
    book.set_allow_unroutable(false);
    assert!(book.get(&local).is_some());
    assert_round_trip(&book);
}

#[test]
fn known_addresses_get_services_and_newer_times_but_keep_their_slot() {
    let mut book = AddrBook::new(seed(4));
    let a = v4("8.8.8.8", 8333);
    assert!(book.add(a.clone(), ServiceFlags::NETWORK, NOW - 10 * HOUR, &group("1.1.1.1"), NOW));
    let slot = book.slot(&a);
    // Another source: no second slot, but services are OR-ed.
    assert!(!book.add(a.clone(), ServiceFlags::WITNESS, NOW - 10 * HOUR, &group("2.2.2.2"), NOW));
    let r = book.get(&a).unwrap();
    assert_eq!(r.services, ServiceFlags::NETWORK | ServiceFlags::WITNESS);
    assert_eq!((r.last_seen, &r.source), (NOW - 10 * HOUR, &group("1.1.1.1")));
    assert_eq!(book.slot(&a), slot);
    // Online (seen in the last day): refreshed only if newer by over an hour.
    book.add(a.clone(), ServiceFlags::NONE, NOW - 9 * HOUR - 30 * MINUTE, &group("1.1.1.1"), NOW);
    assert_eq!(book.get(&a).unwrap().last_seen, NOW - 10 * HOUR);
    book.add(a.clone(), ServiceFlags::NONE, NOW - 8 * HOUR, &group("1.1.1.1"), NOW);
    assert_eq!(book.get(&a).unwrap().last_seen, NOW - 8 * HOUR);
    // The mapped form is the same entry.
    assert!(!book.add(sock("[::ffff:8.8.8.8]:8333"), ServiceFlags::NONE, NOW, &group("1.1.1.1"), NOW));
    assert_eq!(book.len(), 1);
    assert!(book.get(&sock("[::ffff:8.8.8.8]:8333")).is_some());
}

#[test]
fn future_and_ancient_times_become_five_days_ago() {
    let mut book = AddrBook::new(seed(5));
    let src = group("1.1.1.1");
    book.add(v4("8.8.8.1", 1), ServiceFlags::NONE, NOW + 11 * MINUTE, &src, NOW);
    book.add(v4("8.8.8.2", 1), ServiceFlags::NONE, 99_999_999, &src, NOW);
    book.add(v4("8.8.8.3", 1), ServiceFlags::NONE, NOW + 9 * MINUTE, &src, NOW);
    assert_eq!(book.get(&v4("8.8.8.1", 1)).unwrap().last_seen, NOW - 5 * DAY);
    assert_eq!(book.get(&v4("8.8.8.2", 1)).unwrap().last_seen, NOW - 5 * DAY);
    assert_eq!(book.get(&v4("8.8.8.3", 1)).unwrap().last_seen, NOW + 9 * MINUTE);
}

/// Two new addresses of one group from one source, in the same slot.
fn new_slot_pair(book: &AddrBook, source: &NetGroup) -> (Address, Address) {
    let mut seen = HashMap::new();
    for i in 0..=u16::MAX {
        let address = v4(&format!("9.9.{}.{}", i >> 8, i & 0xff), 8333);
        if let Some(other) = seen.insert(new_slot_of(&book.key, &address, source), address.clone()) {
            return (other, address);
        }
    }
    unreachable!("64 slots")
}

#[test]
fn a_new_address_replaces_only_a_terrible_occupant() {
    let mut book = AddrBook::new(seed(6));
    let src = group("3.3.3.3");
    let (first, second) = new_slot_pair(&book, &src);
    assert!(book.add(first.clone(), ServiceFlags::NONE, NOW - HOUR, &src, NOW));
    assert!(!book.add(second.clone(), ServiceFlags::NONE, NOW, &src, NOW), "slot held by a good entry");
    assert!(book.get(&second).is_none());
    // 31 days later the occupant is terrible (not seen within the horizon).
    let later = NOW + 31 * DAY;
    assert!(book.get(&first).unwrap().is_terrible(later));
    assert!(book.add(second.clone(), ServiceFlags::NONE, later, &src, later));
    assert!(book.get(&first).is_none());
    assert_eq!(book.len(), 1);
    book.check().unwrap();
}

// ---- records ----

fn record(last_seen: u64) -> Record {
    Record {
        address: v4("8.8.8.8", 8333),
        services: ServiceFlags::NONE,
        last_seen,
        last_try: None,
        last_success: None,
        attempts: 0,
        tried: false,
        source: group("1.1.1.1"),
    }
}

#[test]
fn terrible_follows_core() {
    let fresh = record(NOW - HOUR);
    assert!(!fresh.is_terrible(NOW));
    assert!(record(NOW + 11 * MINUTE).is_terrible(NOW), "from the future");
    assert!(!record(NOW + 9 * MINUTE).is_terrible(NOW));
    assert!(record(NOW - 31 * DAY).is_terrible(NOW), "past the horizon");
    assert!(!record(NOW - 29 * DAY).is_terrible(NOW));
    let failed = Record { attempts: 3, last_try: Some(NOW - HOUR), ..fresh.clone() };
    assert!(failed.is_terrible(NOW), "three failures, never connected");
    // Tried in the last minute: never terrible.
    let just_tried = Record { last_try: Some(NOW - 30), ..failed.clone() };
    assert!(!just_tried.is_terrible(NOW));
    let once_good = Record { last_success: Some(NOW - 8 * DAY), ..failed.clone() };
    assert!(!once_good.is_terrible(NOW), "3 failures after a success are fine");
    assert!(Record { attempts: 10, ..once_good.clone() }.is_terrible(NOW), "10 failures, none in 7 days");
    assert!(!Record { attempts: 10, last_success: Some(NOW - 6 * DAY), ..once_good }.is_terrible(NOW));
}

#[test]
fn chance_follows_core() {
    let fresh = record(NOW);
    assert_eq!(fresh.chance(NOW), 1.0);
    assert!((Record { last_try: Some(NOW - 60), ..fresh.clone() }.chance(NOW) - 0.01).abs() < 1e-12);
    assert!(
        (Record { last_try: Some(NOW - HOUR), attempts: 2, ..fresh.clone() }.chance(NOW) - 0.66 * 0.66).abs() < 1e-12
    );
    let capped = Record { attempts: 100, ..fresh.clone() }.chance(NOW);
    assert!((capped - 0.66f64.powi(8)).abs() < 1e-12);
}

// ---- attempt, connected, good ----

#[test]
fn failures_count_once_per_success_anywhere() {
    let mut book = AddrBook::new(seed(7));
    let a = v4("8.8.8.8", 8333);
    book.add(a.clone(), ServiceFlags::NONE, NOW - HOUR, &group("1.1.1.1"), NOW);
    book.attempt(&a, true, NOW);
    book.attempt(&a, true, NOW + 10);
    assert_eq!(book.get(&a).unwrap().attempts, 1, "no success since the first failure");
    assert_eq!(book.get(&a).unwrap().last_try, Some(NOW + 10));
    book.good(&v4("7.7.7.7", 1), NOW + 20); // any success, even of an address we do not know
    book.attempt(&a, true, NOW + 30);
    assert_eq!(book.get(&a).unwrap().attempts, 2);
    book.attempt(&a, false, NOW + 40);
    assert_eq!(book.get(&a).unwrap().attempts, 2);
    assert_eq!(book.get(&a).unwrap().last_try, Some(NOW + 40));
    book.good(&a, NOW + 50);
    let r = book.get(&a).unwrap();
    assert_eq!((r.attempts, r.last_success, r.last_try, r.tried), (0, Some(NOW + 50), Some(NOW + 50), true));
    assert_eq!(r.last_seen, NOW - HOUR, "good does not leak the connection time");
    assert_eq!((book.new_len(), book.tried_len()), (0, 1));
}

#[test]
fn connected_refreshes_times_older_than_20_minutes() {
    let mut book = AddrBook::new(seed(8));
    let a = v4("8.8.8.8", 8333);
    book.add(a.clone(), ServiceFlags::NONE, NOW - 19 * MINUTE, &group("1.1.1.1"), NOW);
    book.connected(&a, NOW);
    assert_eq!(book.get(&a).unwrap().last_seen, NOW - 19 * MINUTE);
    book.connected(&a, NOW + 2 * MINUTE);
    assert_eq!(book.get(&a).unwrap().last_seen, NOW + 2 * MINUTE);
    book.set_services(&a, ServiceFlags::NETWORK_LIMITED);
    assert_eq!(book.get(&a).unwrap().services, ServiceFlags::NETWORK_LIMITED);
    // Unknown addresses are ignored.
    book.connected(&v4("1.2.3.4", 1), NOW);
    book.attempt(&v4("1.2.3.4", 1), true, NOW);
    assert_eq!(book.len(), 1);
}

/// A book with `old` in tried and `new` (same tried slot) in new.
fn collision(old_good_at: u64) -> (AddrBook, Address, Address) {
    let mut book = AddrBook::new(seed(9));
    let mut seen = HashMap::new();
    let (old, new) = (0..=u16::MAX)
        .find_map(|i| {
            let address = v4(&format!("9.9.{}.{}", i >> 8, i & 0xff), 8333);
            seen.insert(tried_slot_of(&book.key, &address), address.clone()).map(|other| (other, address))
        })
        .expect("a tried collision in one group");
    assert!(book.add(old.clone(), ServiceFlags::NETWORK, NOW - DAY, &group("1.1.1.1"), NOW - DAY));
    assert!(book.add(new.clone(), ServiceFlags::NETWORK, NOW - DAY, &group("2.2.2.2"), NOW - DAY));
    book.good(&old, old_good_at);
    book.good(&new, NOW);
    assert!(book.get(&old).unwrap().tried);
    assert!(!book.get(&new).unwrap().tried, "test before evict");
    assert_eq!(book.select_tried_collision().map(|r| r.address), Some(old.clone()));
    book.check().unwrap();
    (book, old, new)
}

#[test]
fn a_collision_with_a_recently_good_entry_is_dropped() {
    let (mut book, old, new) = collision(NOW - HOUR);
    book.resolve_collisions(NOW + MINUTE);
    assert!(book.get(&old).unwrap().tried);
    assert!(!book.get(&new).unwrap().tried);
    assert_eq!(book.select_tried_collision(), None);
    book.check().unwrap();
}

#[test]
fn a_collision_with_an_entry_that_fails_its_test_replaces_it() {
    let (mut book, old, new) = collision(NOW - 10 * HOUR);
    book.attempt(&old, true, NOW + 30);
    book.resolve_collisions(NOW + 60);
    assert!(!book.get(&new).unwrap().tried, "the test gets a minute");
    assert!(book.select_tried_collision().is_some());
    book.resolve_collisions(NOW + 120);
    assert!(book.get(&new).unwrap().tried);
    let evicted = book.get(&old).expect("the occupant goes back to new");
    assert!(!evicted.tried);
    assert_eq!(book.select_tried_collision(), None);
    assert_eq!((book.new_len(), book.tried_len()), (1, 1));
    book.check().unwrap();
    assert_round_trip(&book);
}

#[test]
fn an_untested_collision_replaces_the_occupant_after_40_minutes() {
    let (mut book, old, new) = collision(NOW - 10 * HOUR);
    assert_round_trip(&book); // with a collision waiting
    book.resolve_collisions(NOW + 39 * MINUTE);
    assert!(!book.get(&new).unwrap().tried);
    book.resolve_collisions(NOW + 41 * MINUTE);
    assert!(book.get(&new).unwrap().tried);
    assert!(!book.get(&old).unwrap().tried);
    book.check().unwrap();
}

#[test]
fn the_collision_set_is_bounded() {
    let mut book = AddrBook::new(seed(10));
    let occupied: HashSet<(u16, u8)> = HashSet::new();
    let mut occupied = occupied;
    let src = group("1.1.1.1");
    // Fill tried with a few hundred entries, then make many more good.
    for i in 0..3000u32 {
        let address = v4(&format!("{}.{}.1.1", 20 + i / 200, i % 200), 8333);
        if book.add(address.clone(), ServiceFlags::NONE, NOW - HOUR, &src, NOW) {
            occupied.insert(tried_slot_of(&book.key, &address));
            book.good(&address, NOW);
        }
    }
    assert!(book.collisions.len() <= TRIED_COLLISION_SIZE);
    assert_eq!(book.collisions.len(), TRIED_COLLISION_SIZE, "3000 goods into 16384 slots collide");
    book.check().unwrap();
    assert_round_trip(&book);
}

// ---- select ----

#[test]
fn select_filters_by_table_network_and_services() {
    let mut book = AddrBook::new(seed(11));
    let src = group("1.1.1.1");
    let v4a = v4("8.8.8.8", 8333);
    let onion = Address::new(AddrV2::TorV3([3; 32]), 8333);
    let i2p = Address::new(AddrV2::I2p([4; 32]), 0);
    book.add(v4a.clone(), ServiceFlags::NETWORK | ServiceFlags::WITNESS, NOW, &src, NOW);
    book.add(onion.clone(), ServiceFlags::NETWORK, NOW, &src, NOW);
    book.add(i2p.clone(), ServiceFlags::NETWORK_LIMITED, NOW, &src, NOW);
    book.good(&onion, NOW);
    let mut select = |query: Query| -> HashSet<Address> {
        (0..200).filter_map(|_| book.select(&query, NOW + HOUR)).map(|r| r.address).collect()
    };
    assert_eq!(select(Query::default()), HashSet::from([v4a.clone(), onion.clone(), i2p.clone()]));
    assert_eq!(select(Query { table: Table::New, ..Query::default() }), HashSet::from([v4a.clone(), i2p.clone()]));
    assert_eq!(select(Query { table: Table::Tried, ..Query::default() }), HashSet::from([onion.clone()]));
    let witness = Query { services: ServiceFlags::WITNESS, ..Query::default() };
    assert_eq!(select(witness), HashSet::from([v4a.clone()]));
    let reachable = Query { networks: Some(vec![Network::Ipv4, Network::Onion]), ..Query::default() };
    assert_eq!(select(reachable), HashSet::from([v4a.clone(), onion.clone()]));
    let none = Query { networks: Some(vec![Network::Ipv6]), ..Query::default() };
    assert_eq!(select(none), HashSet::new());
    let tried_witness = Query { services: ServiceFlags::WITNESS, table: Table::Tried, ..Query::default() };
    assert_eq!(select(tried_witness), HashSet::new());
    assert_eq!(AddrBook::new(seed(1)).select(&Query::default(), NOW), None);
}

#[test]
fn select_ends_and_finds_a_lone_match_in_a_full_book() {
    let mut book = AddrBook::new(seed(12));
    let mut rng = TestRng(12);
    for _ in 0..20_000 {
        let address = Address::new(AddrV2::Ipv4(rng.routable_v4()), 8333);
        let src = NetGroup::of_ip(IpAddr::V4(rng.routable_v4()));
        book.add(address, ServiceFlags::NETWORK, NOW - HOUR, &src, NOW);
    }
    let lone = Address::new(AddrV2::TorV3([9; 32]), 8333);
    let placed = (1..=255u8)
        .any(|i| book.add(lone.clone(), ServiceFlags::NETWORK, NOW - HOUR, &group(&format!("{i}.9.9.9")), NOW));
    assert!(placed, "no free slot for the lone onion");
    // The lone match has been tried a minute ago and failed 8 times: the
    // lowest chance there is.
    for i in 0..8 {
        book.good(&v4("7.7.7.7", 1), NOW + i);
        book.attempt(&lone, true, NOW + i);
    }
    assert!(book.get(&lone).unwrap().chance(NOW + 60) < 0.001);
    let onion = Query { networks: Some(vec![Network::Onion]), ..Query::default() };
    for _ in 0..20 {
        assert_eq!(book.select(&onion, NOW + 60).map(|r| r.address), Some(lone.clone()));
    }
    let nothing = Query { networks: Some(vec![Network::Cjdns]), ..Query::default() };
    assert_eq!(book.select(&nothing, NOW), None);
}

#[test]
fn select_prefers_entries_not_just_tried() {
    let mut book = AddrBook::new(seed(13));
    let src = group("1.1.1.1");
    let (a, b) = (v4("8.8.8.8", 1), v4("9.9.9.9", 1));
    book.add(a.clone(), ServiceFlags::NONE, NOW, &src, NOW);
    book.add(b.clone(), ServiceFlags::NONE, NOW, &src, NOW);
    book.attempt(&a, false, NOW); // chance 0.01 for ten minutes
    let picks_a = (0..2000).filter(|_| book.select(&Query::default(), NOW + 1).unwrap().address == a).count();
    assert!(picks_a < 200, "a was just tried yet picked {picks_a} of 2000 times");
    assert!(picks_a > 0, "a keeps a chance: {picks_a}");
}

// ---- remove_terrible ----

#[test]
fn remove_terrible_sweeps_the_new_table_only() {
    let mut book = AddrBook::new(seed(14));
    let src = group("1.1.1.1");
    for i in 0..50u8 {
        book.add(v4(&format!("8.{i}.1.1"), 1), ServiceFlags::NONE, NOW - u64::from(i) * DAY, &src, NOW);
    }
    let kept = v4("8.40.1.1", 1);
    book.good(&kept, NOW);
    let before = book.len();
    let expected = book.iter().filter(|r| !r.tried && r.last_seen < NOW - 30 * DAY).count();
    assert!(expected > 10, "{expected}");
    assert_eq!(book.remove_terrible(NOW), expected);
    assert_eq!(book.len(), before - expected);
    // 40 days unseen, but tried: it stays.
    let later = NOW + 2 * MINUTE;
    assert!(book.get(&kept).unwrap().is_terrible(later));
    let expected = book.iter().filter(|r| !r.tried && r.is_terrible(later)).count();
    assert_eq!(book.remove_terrible(later), expected);
    assert!(book.get(&kept).is_some(), "tried entries stay");
    assert!(book.iter().filter(|r| !r.tried).all(|r| !r.is_terrible(NOW)));
    book.check().unwrap();
}

// ---- the rate limit and messages ----

#[test]
fn the_rate_limit_follows_core() {
    let t0 = Instant::now();
    let mut limit = AddrRateLimit::new();
    assert_eq!(limit.take(10, t0), 1, "one token to start with");
    assert_eq!(limit.take(10, t0 + Duration::from_secs(5)), 0, "0.5 tokens");
    assert_eq!(limit.take(10, t0 + Duration::from_secs(10)), 1);
    assert_eq!(limit.take(1000, t0 + Duration::from_secs(100_000)), 1000, "refill caps at 1000");
    assert_eq!(limit.take(1000, t0 + Duration::from_secs(100_000)), 0);
    limit.on_getaddr_sent();
    assert_eq!(limit.take(2000, t0 + Duration::from_secs(100_000)), 1000);
    // A getaddr on a full bucket raises it to 2000, and repeats stop there.
    limit.take(0, t0 + Duration::from_secs(200_000));
    limit.on_getaddr_sent();
    limit.on_getaddr_sent();
    assert_eq!(limit.tokens(), 2000.0);
    // Time going back adds nothing.
    assert_eq!(limit.take(5000, t0), 2000);
    assert_eq!(limit.take(1, t0 + Duration::from_secs(200_000)), 0);
}

fn addrv2(entries: impl IntoIterator<Item = (AddrV2, u16)>, time: u32) -> NetworkMessage {
    NetworkMessage::AddrV2(
        entries
            .into_iter()
            .map(|(addr, port)| AddrV2Message { time, services: ServiceFlags::NETWORK, addr, port })
            .collect(),
    )
}

#[test]
fn messages_are_rate_limited_filtered_and_bounded() {
    let mut book = AddrBook::new(seed(15));
    let src = group("1.1.1.1");
    let mut limit = AddrRateLimit::new();
    let many = |n: u32| addrv2((0..n).map(|i| (AddrV2::Ipv4(Ipv4Addr::from(0x0808_0000 + i)), 8333)), NOW as u32);
    // A fresh peer gets one address through.
    let outcome = book.add_message(&many(10), &src, NOW, &mut limit);
    assert_eq!(outcome, AddOutcome { accepted: 1, rate_limited: 9, refused: 0, oversized: false });
    assert_eq!(book.len(), 1);
    // After getaddr, a full answer goes through.
    limit.on_getaddr_sent();
    let outcome = book.add_message(&many(1000), &src, NOW, &mut limit);
    assert_eq!((outcome.accepted, outcome.rate_limited), (1000, 0));
    // Gossiped times are aged by two hours.
    let r = book.iter().next().unwrap();
    assert_eq!(r.last_seen, NOW - 2 * HOUR);
    // Over 1000 entries: refused whole, no token spent.
    let tokens = limit.tokens();
    let outcome = book.add_message(&many(1001), &src, NOW + 1, &mut limit);
    assert_eq!(outcome, AddOutcome { accepted: 0, rate_limited: 0, refused: 1001, oversized: true });
    assert_eq!(limit.tokens(), tokens);
    // Unroutable, TorV2 and unknown networks are refused, each costing a token.
    let mut limit = AddrRateLimit::new();
    limit.on_getaddr_sent();
    let junk = addrv2(
        [
            (AddrV2::Ipv4([10, 0, 0, 1].into()), 1),
            (AddrV2::TorV2([1; 10]), 1),
            (AddrV2::Unknown(99, vec![1, 2]), 1),
            (AddrV2::Ipv4([9, 9, 9, 9].into()), 1),
        ],
        NOW as u32,
    );
    let outcome = book.add_message(&junk, &src, NOW, &mut limit);
    assert_eq!(outcome, AddOutcome { accepted: 1, rate_limited: 0, refused: 3, oversized: false });
    assert_eq!(limit.tokens(), 997.0);
    // Other messages are ignored.
    assert_eq!(book.add_message(&NetworkMessage::Verack, &src, NOW, &mut limit), AddOutcome::default());
    // The limiter refills on the book's clock: 0.1 a second.
    let mut limit = AddrRateLimit::new();
    assert_eq!(book.add_message(&many(5), &src, NOW, &mut limit).accepted, 1);
    assert_eq!(book.add_message(&many(5), &src, NOW + 20, &mut limit).accepted, 2);
    book.check().unwrap();
}

#[test]
fn v1_addr_messages_are_read_as_canonical_addresses() {
    let mut book = AddrBook::new(seed(16));
    let mut limit = AddrRateLimit::new();
    limit.on_getaddr_sent();
    let v1 = |s: &str| (NOW as u32, V1Address::new(&s.parse().unwrap(), ServiceFlags::NETWORK));
    let onioncat = (
        NOW as u32,
        V1Address { services: ServiceFlags::NETWORK, address: [0xfd87, 0xd87e, 0xeb43, 1, 2, 3, 4, 5], port: 8333 },
    );
    let message = NetworkMessage::Addr(vec![v1("8.8.8.8:8333"), v1("[2001:4860::8888]:8333"), onioncat]);
    book.set_allow_unroutable(true); // OnionCat is refused even then
    let outcome = book.add_message(&message, &group("1.1.1.1"), NOW, &mut limit);
    assert_eq!(outcome, AddOutcome { accepted: 2, rate_limited: 0, refused: 1, oversized: false });
    let r = book.get(&v4("8.8.8.8", 8333)).expect("mapped IPv4 stored as IPv4");
    assert_eq!(r.address.addr, AddrV2::Ipv4([8, 8, 8, 8].into()));
    assert!(book.get(&sock("[2001:4860::8888]:8333")).is_some());
}

// ---- property loops ----

/// A small address space, so that slots collide: 8 groups of 64 hosts on
/// two ports, some onion, I2P and CJDNS, and local addresses.
fn small_address(rng: &mut TestRng) -> Address {
    match rng.below(10) {
        0 => Address::new(AddrV2::TorV3([rng.below(16) as u8; 32]), 8333),
        1 => Address::new(AddrV2::I2p([rng.below(16) as u8; 32]), 0),
        2 => Address::new(AddrV2::Cjdns(Ipv6Addr::new(0xfc00, rng.below(16) as u16, 0, 0, 0, 0, 0, 1)), 8333),
        3 => Address::new(AddrV2::Ipv4([127, 0, 0, 1].into()), 18000 + rng.below(16) as u16),
        4 => Address::new(AddrV2::TorV2([1; 10]), 1),
        _ => Address::new(
            AddrV2::Ipv4([20 + rng.below(8) as u8, 1, 0, rng.below(64) as u8].into()),
            8333 + rng.below(2) as u16,
        ),
    }
}

fn small_source(rng: &mut TestRng) -> NetGroup {
    NetGroup::of_ip(IpAddr::V4([50 + rng.below(4) as u8, 1, 1, 1].into()))
}

fn random_query(rng: &mut TestRng) -> Query {
    let networks = match rng.below(4) {
        0 => Some(vec![Network::Ipv4]),
        1 => Some(vec![Network::Onion, Network::I2p, Network::Unroutable]),
        _ => None,
    };
    let services = if rng.chance(30) { ServiceFlags::WITNESS } else { ServiceFlags::NONE };
    let table = [Table::Any, Table::New, Table::Tried][rng.below(3) as usize];
    Query { networks, services, table }
}

fn random_services(rng: &mut TestRng) -> ServiceFlags {
    [ServiceFlags::NONE, ServiceFlags::NETWORK, ServiceFlags::WITNESS, ServiceFlags::NETWORK | ServiceFlags::WITNESS]
        [rng.below(4) as usize]
}

/// One random operation on `book` at `*now`.
fn random_op(book: &mut AddrBook, rng: &mut TestRng, now: &mut u64, limit: &mut AddrRateLimit) {
    let address = small_address(rng);
    match rng.below(14) {
        0..=3 => {
            let seen = *now - rng.below(40 * DAY) + 10 * MINUTE;
            let before = book.get(&address).is_none();
            let added = book.add(address.clone(), random_services(rng), seen, &small_source(rng), *now);
            assert!(!added || before, "add made a second entry for {address}");
            if added {
                assert!(book.get(&address).is_some());
            }
        }
        4 => {
            let n = if rng.chance(5) { 1001 } else { rng.below(20) as usize };
            let entries = (0..n).map(|_| {
                let a = small_address(rng);
                (a.addr, a.port)
            });
            let message = addrv2(entries.collect::<Vec<_>>(), (*now - rng.below(3 * DAY)) as u32);
            if rng.chance(20) {
                limit.on_getaddr_sent();
            }
            let outcome = book.add_message(&message, &small_source(rng), *now, limit);
            if outcome.oversized {
                assert_eq!(outcome.refused, n);
            } else {
                assert_eq!(outcome.accepted + outcome.rate_limited + outcome.refused, n);
            }
        }
        5 => book.attempt(&address, rng.chance(70), *now),
        6 => book.connected(&address, *now),
        7 | 8 => book.good(&address, *now),
        9 => book.set_services(&address, random_services(rng)),
        10 => {
            let query = random_query(rng);
            match book.select(&query, *now) {
                Some(r) => {
                    assert_eq!(book.get(&r.address), Some(&r), "select returned a record not in the book");
                    assert!(query.matches(&r), "{r:?} does not match {query:?}");
                    match query.table {
                        Table::New => assert!(!r.tried),
                        Table::Tried => assert!(r.tried),
                        Table::Any => {}
                    }
                }
                None => {
                    let any = book.iter().any(|r| {
                        query.matches(r)
                            && match query.table {
                                Table::Any => true,
                                Table::New => !r.tried,
                                Table::Tried => r.tried,
                            }
                    });
                    assert!(!any, "select found nothing but {query:?} matches an entry");
                }
            }
        }
        11 => {
            if let Some(r) = book.select_tried_collision() {
                assert!(r.tried && book.get(&r.address) == Some(&r));
                if rng.chance(50) {
                    book.good(&r.address, *now);
                } else {
                    book.attempt(&r.address, true, *now);
                }
            }
            book.resolve_collisions(*now);
        }
        12 => {
            book.remove_terrible(*now);
            assert!(book.iter().filter(|r| !r.tried).all(|r| !r.is_terrible(*now)));
        }
        _ => book.set_allow_unroutable(rng.chance(50)),
    }
    *now += rng.below(20 * MINUTE);
}

#[test]
fn random_operations_keep_the_invariants_and_round_trip() {
    for case in 0..16u64 {
        let mut rng = TestRng(case);
        let mut book = AddrBook::new(seed(case as u8));
        book.set_allow_unroutable(case % 2 == 0);
        let mut now = NOW;
        let mut limit = AddrRateLimit::new();
        for step in 0..400 {
            random_op(&mut book, &mut rng, &mut now, &mut limit);
            assert_eq!(book.entries.iter().flatten().count(), book.len(), "case {case} step {step}");
            // The full check rehashes every entry and scans all 81,920
            // slots: every few steps, to keep the loop fast in debug builds.
            if step % 4 != 3 {
                continue;
            }
            if let Err(e) = book.check_all_slots() {
                panic!("case {case} step {step}: {e}");
            }
            assert!(book.len() <= CAPACITY);
            if step % 20 == 19 {
                assert_eq!(book.iter().count(), book.len());
                assert_eq!(book.iter().filter(|r| r.tried).count(), book.tried_len());
            }
            if step % 100 == 99 {
                assert_round_trip(&book);
            }
        }
        assert!(book.tried_len() > 0 && book.new_len() > 0, "case {case} did not exercise both tables");
    }
}

#[test]
fn check_finds_broken_invariants() {
    let book = || {
        let book = small_book();
        book.check_all_slots().expect("a sound book");
        book
    };
    let some_new = |book: &AddrBook| book.new.ids().next().expect("a new entry");
    // An entry that names another slot than the one holding it.
    let mut b = book();
    let (_, id) = some_new(&b);
    b.entry_mut(id).position ^= 1;
    assert!(b.check().is_err());
    // An entry moved to a slot its key does not give.
    let mut b = book();
    let (slot, id) = some_new(&b);
    let other = (slot + 1) % (NEW_BUCKET_COUNT * BUCKET_SIZE);
    assert_eq!(b.new.slots[other], EMPTY);
    b.new.clear(slot);
    b.new.put(other, id);
    b.entry_mut(id).position = (other % BUCKET_SIZE) as u8;
    b.entry_mut(id).bucket = (other / BUCKET_SIZE) as u16;
    assert!(b.check().unwrap_err().contains("key does not give"));
    // A stray copy of an id in another slot.
    let mut b = book();
    let (slot, id) = some_new(&b);
    b.new.put((slot + 7 * BUCKET_SIZE) % (NEW_BUCKET_COUNT * BUCKET_SIZE), id);
    assert!(b.check().is_err());
    // A slot written behind its bucket's count.
    let mut b = book();
    let (slot, id) = some_new(&b);
    b.new.slots[(slot + 9 * BUCKET_SIZE) % (NEW_BUCKET_COUNT * BUCKET_SIZE)] = id;
    assert!(b.check().is_ok(), "check trusts the bucket counts");
    assert!(b.check_all_slots().is_err());
    // An unindexed entry, a tried entry without a success, a bad collision.
    let mut b = book();
    let address = b.iter().next().unwrap().address.clone();
    b.index.remove(&address);
    assert!(b.check().is_err());
    let mut b = book();
    let tried = b.tried.ids().next().expect("a tried entry").1;
    b.entry_mut(tried).record.last_success = None;
    assert!(b.check().unwrap_err().contains("never connected"));
    let mut b = book();
    b.collisions.push(tried);
    assert!(b.check().unwrap_err().contains("not a new entry"));
}

/// A book of `n` gossiped addresses, a fifth of them made good.
fn big_book(n: usize, case: u64) -> AddrBook {
    let mut rng = TestRng(case);
    let mut book = AddrBook::new(seed(case as u8));
    for i in 0..n {
        let address = match rng.below(20) {
            0 => Address::new(AddrV2::TorV3(std::array::from_fn(|_| rng.next() as u8)), 8333),
            1 => Address::new(AddrV2::Ipv6(Ipv6Addr::from((0x2001_4860u128 << 96) | u128::from(rng.next()))), 8333),
            _ => Address::new(AddrV2::Ipv4(rng.routable_v4()), 8333),
        };
        let src = NetGroup::of_ip(IpAddr::V4(rng.routable_v4()));
        book.add(address.clone(), random_services(&mut rng), NOW - rng.below(10 * DAY), &src, NOW);
        if i % 5 == 0 {
            book.attempt(&address, true, NOW);
            book.good(&address, NOW + i as u64);
        }
    }
    book
}

#[test]
fn big_books_round_trip_exactly() {
    for case in 0..3 {
        let book = big_book(3000, case);
        assert!(book.tried_len() > 400, "{}", book.tried_len());
        assert_round_trip(&book);
    }
    assert_round_trip(&AddrBook::new(seed(1)));
}

// ---- damaged files ----

fn small_book() -> AddrBook {
    let mut book = AddrBook::new(seed(20));
    book.set_allow_unroutable(true);
    let src = group("1.1.1.1");
    book.add(v4("8.8.8.8", 8333), ServiceFlags::NETWORK, NOW - HOUR, &src, NOW);
    book.add(sock("127.0.0.1:18444"), ServiceFlags::NETWORK, NOW - HOUR, &src, NOW);
    book.add(Address::new(AddrV2::TorV3([5; 32]), 8333), ServiceFlags::NONE, NOW - HOUR, &src, NOW);
    book.attempt(&v4("8.8.8.8", 8333), true, NOW);
    book.good(&v4("8.8.8.8", 8333), NOW);
    book
}

#[test]
fn every_prefix_of_an_export_is_refused() {
    let bytes = small_book().export();
    for len in 0..bytes.len() {
        let err = AddrBook::import(&bytes[..len], seed(0)).expect_err("a prefix imports");
        assert!(matches!(err, ImportError::Truncated | ImportError::Checksum), "length {len}: {err:?}");
    }
    let bytes = big_book(500, 7).export();
    for len in (0..bytes.len()).step_by(7) {
        assert!(AddrBook::import(&bytes[..len], seed(0)).is_err(), "length {len}");
    }
}

#[test]
fn every_flipped_byte_of_a_small_export_is_refused() {
    let bytes = small_book().export();
    for i in 0..bytes.len() {
        for mask in [0x01, 0x80, 0xff] {
            let mut damaged = bytes.clone();
            damaged[i] ^= mask;
            assert!(AddrBook::import(&damaged, seed(0)).is_err(), "byte {i} ^ {mask:#04x} accepted");
        }
    }
}

#[test]
fn random_flips_of_a_big_export_are_refused() {
    let bytes = big_book(3000, 8).export();
    let mut rng = TestRng(8);
    for _ in 0..300 {
        let mut damaged = bytes.clone();
        let i = rng.below(bytes.len() as u64) as usize;
        damaged[i] ^= 1 + rng.below(255) as u8;
        assert!(AddrBook::import(&damaged, seed(0)).is_err(), "byte {i} accepted");
    }
}

#[test]
fn header_faults_are_named() {
    let bytes = AddrBook::new(seed(1)).export();
    assert_eq!(bytes.len(), HEADER_LEN + CHECKSUM_LEN);
    assert_eq!(AddrBook::import(b"peers.dat", seed(0)), Err(ImportError::BadMagic));
    assert_eq!(AddrBook::import(b"PLADD", seed(0)), Err(ImportError::Truncated));
    assert_eq!(AddrBook::import(b"PLADDR\x02anything", seed(0)), Err(ImportError::UnsupportedVersion(2)));
    let mut damaged = bytes.clone();
    damaged[HEADER_LEN] ^= 1;
    assert_eq!(AddrBook::import(&damaged, seed(0)), Err(ImportError::Checksum));
    // Counts are checked before anything is allocated from them.
    let mut too_many = bytes.clone();
    too_many[HEADER_LEN - 5..HEADER_LEN - 1].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(AddrBook::import(&seal(too_many), seed(0)), Err(ImportError::TooMany { count: u32::MAX }));
    let mut short = bytes.clone();
    short[HEADER_LEN - 5..HEADER_LEN - 1].copy_from_slice(&(CAPACITY as u32).to_le_bytes());
    assert_eq!(AddrBook::import(&seal(short), seed(0)), Err(ImportError::Truncated));
    let mut flags = bytes.clone();
    flags[39] = 2;
    assert!(matches!(AddrBook::import(&seal(flags), seed(0)), Err(ImportError::Malformed { offset: 39, .. })));
    let mut collisions = bytes.clone();
    collisions[HEADER_LEN - 1] = 11;
    assert!(matches!(AddrBook::import(&seal(collisions), seed(0)), Err(ImportError::Malformed { .. })));
    let mut trailing = bytes[..HEADER_LEN].to_vec();
    trailing.extend_from_slice(&[0; 1 + CHECKSUM_LEN]);
    assert!(matches!(AddrBook::import(&seal(trailing), seed(0)), Err(ImportError::Malformed { .. })));
}

/// One book's single entry as bytes.
fn one_entry(address: Address, source: &str) -> (Vec<u8>, Vec<u8>) {
    let mut book = AddrBook::new(seed(30));
    assert!(book.add(address, ServiceFlags::NETWORK, NOW, &group(source), NOW));
    let bytes = book.export();
    (bytes[..HEADER_LEN].to_vec(), entries_of(&bytes).to_vec())
}

/// The (table, bucket, position) of an entry's bytes.
fn place(entry: &[u8]) -> (u8, u16, u8) {
    (entry[0], u16::from_le_bytes([entry[1], entry[2]]), entry[3])
}

fn file(header: &[u8], count: u32, entries: &[&[u8]]) -> Vec<u8> {
    let mut out = header.to_vec();
    out[HEADER_LEN - 5..HEADER_LEN - 1].copy_from_slice(&count.to_le_bytes());
    for e in entries {
        out.extend_from_slice(e);
    }
    out.extend_from_slice(&[0; CHECKSUM_LEN]);
    seal(out)
}

#[test]
fn entry_faults_refuse_the_whole_file() {
    let (header, entry) = one_entry(v4("8.8.8.8", 8333), "1.1.1.1");
    assert!(AddrBook::import(&file(&header, 1, &[&entry]), seed(0)).is_ok());
    // Another slot than the key gives.
    let mut moved = entry.clone();
    moved[3] = (moved[3] + 1) % BUCKET_SIZE as u8;
    assert_eq!(
        AddrBook::import(&file(&header, 1, &[&moved]), seed(0)),
        Err(ImportError::WrongSlot { offset: HEADER_LEN })
    );
    // The same source group written for another source: wrong slot too.
    let mut source = entry.clone();
    let len = source.len();
    source[len - 1] ^= 0x01;
    assert!(matches!(AddrBook::import(&file(&header, 1, &[&source]), seed(0)), Err(ImportError::WrongSlot { .. })));
    // Two entries in one slot.
    let twice = file(&header, 2, &[&entry, &entry]);
    assert_eq!(AddrBook::import(&twice, seed(0)), Err(ImportError::SlotTaken { offset: HEADER_LEN + entry.len() }));
    // One address from two sources: two valid slots, one address.
    let (_, other) = one_entry(v4("8.8.8.8", 8333), "2.2.2.2");
    let (first, second) = if place(&entry) < place(&other) { (&entry, &other) } else { (&other, &entry) };
    assert!(matches!(
        AddrBook::import(&file(&header, 2, &[first, second]), seed(0)),
        Err(ImportError::DuplicateAddress { .. })
    ));
    // Out of slot order.
    let (_, third) = one_entry(v4("9.9.9.9", 8333), "1.1.1.1");
    let (low, high) = if place(&entry) < place(&third) { (&entry, &third) } else { (&third, &entry) };
    assert!(AddrBook::import(&file(&header, 2, &[low, high]), seed(0)).is_ok());
    assert!(matches!(AddrBook::import(&file(&header, 2, &[high, low]), seed(0)), Err(ImportError::Malformed { .. })));
    // A tried entry that never connected; an unknown table.
    let mut tried = entry.clone();
    tried[0] = 1;
    assert!(AddrBook::import(&file(&header, 1, &[&tried]), seed(0)).is_err());
    tried[0] = 2;
    assert!(matches!(AddrBook::import(&file(&header, 1, &[&tried]), seed(0)), Err(ImportError::Malformed { .. })));
    // An unroutable address without the flag is still a valid file
    // (the flag only governs what is added), but an unsupported network is not.
    let mut torv2 = entry.clone();
    torv2[4] = 3;
    assert!(matches!(AddrBook::import(&file(&header, 1, &[&torv2]), seed(0)), Err(ImportError::Malformed { .. })));
    // Entries claimed but absent.
    assert_eq!(AddrBook::import(&file(&header, 2, &[&entry]), seed(0)), Err(ImportError::Truncated));
}

#[test]
fn import_errors_display_in_lower_case() {
    let errors = [
        ImportError::Truncated,
        ImportError::BadMagic,
        ImportError::UnsupportedVersion(9),
        ImportError::Checksum,
        ImportError::TooMany { count: 100_000 },
        ImportError::Malformed { offset: 7, what: "unknown flags" },
        ImportError::WrongSlot { offset: 64 },
        ImportError::SlotTaken { offset: 64 },
        ImportError::DuplicateAddress { offset: 64 },
    ];
    for e in errors {
        let text = Report(&e).to_string();
        assert!(text.starts_with(|c: char| c.is_lowercase()), "{text}");
        assert!(text.contains("address book"), "{text}");
    }
    assert_eq!(
        ImportError::Malformed { offset: 7, what: "unknown flags" }.to_string(),
        "malformed address book at byte 7: unknown flags"
    );
}

// ---- the eclipse test ----

/// The eclipse test. Setup (all seeded): an honest book of 4,000 gossiped
/// IPv4 addresses from random /16s, each from one of 500 random source
/// /16s, seen within the last three days, every fourth one connected to
/// (`good`, so moved to tried unless its tried slot is taken). Then an
/// attacker who holds one /16 (44.55.0.0/16) floods 100,000 fresh
/// addresses in it (every host on ports 8333 and 8334), all with sources
/// in that /16.
///
/// Geometry: the new-table bucket of an address depends on its group and
/// its source's group, and one source group reaches at most 64 of the
/// 1,024 buckets; here the attacker's addresses are all of one group, so
/// they land in ONE bucket and hold at most its 64 slots. `select` draws a
/// random bucket (skipping empty ones), so the attacker's share of draws
/// from the new table is at most 64 / (non-empty buckets), and from either
/// table (half the draws go to tried, which the attacker cannot enter
/// without our connecting to him) half that. The test prints the measured
/// shares (`--nocapture`).
#[test]
fn a_flood_from_one_16_gets_a_bounded_share_of_selections() {
    let mut book = AddrBook::new(seed(0xec));
    let mut rng = TestRng(0xec);
    let sources: Vec<NetGroup> = (0..500).map(|_| NetGroup::of_ip(IpAddr::V4(rng.routable_v4()))).collect();
    let attacker_group = group("44.55.0.0");
    let mut honest = Vec::new();
    while honest.len() < 4000 {
        let address = Address::new(AddrV2::Ipv4(rng.routable_v4()), 8333);
        if address.group() == Some(attacker_group.clone()) {
            continue;
        }
        let src = &sources[rng.below(sources.len() as u64) as usize];
        if book.add(address.clone(), ServiceFlags::NETWORK, NOW - rng.below(3 * DAY), src, NOW) {
            honest.push(address);
        }
    }
    for address in honest.iter().step_by(4) {
        book.attempt(address, false, NOW - HOUR);
        book.good(address, NOW - HOUR);
    }
    let (honest_new, honest_tried) = (book.new_len(), book.tried_len());
    assert!(honest_tried > 900, "{honest_tried} promoted");

    let mut flooded = 0;
    for i in 0..100_000u32 {
        let ip = Ipv4Addr::new(44, 55, (i >> 8) as u8, i as u8);
        let port = 8333 + (i >> 16) as u16;
        let src = NetGroup::of_ip(IpAddr::V4(Ipv4Addr::new(44, 55, ((i * 7) >> 8) as u8, (i * 13) as u8)));
        flooded += usize::from(book.add(Address::new(AddrV2::Ipv4(ip), port), ServiceFlags::NETWORK, NOW, &src, NOW));
    }
    book.check().unwrap();
    let is_attacker = |r: &Record| r.address.group() == Some(attacker_group.clone());
    let attacker_entries = book.iter().filter(|r| is_attacker(r)).count();
    let attacker_buckets: HashSet<usize> =
        book.iter().filter(|r| is_attacker(r)).map(|r| book.slot(&r.address).unwrap().bucket).collect();
    let mut non_empty = HashSet::new();
    for r in book.iter().filter(|r| !r.tried) {
        non_empty.insert(book.slot(&r.address).unwrap().bucket);
    }
    assert_eq!(attacker_entries, flooded);
    assert!(attacker_entries <= BUCKET_SIZE, "{attacker_entries} attacker entries");
    assert!(attacker_buckets.len() <= NEW_BUCKETS_PER_SOURCE_GROUP);
    assert_eq!(book.tried_len(), honest_tried, "the flood cannot touch tried");

    let mut share = |table: Table| {
        let query = Query { table, ..Query::default() };
        let picks = (0..10_000).filter(|_| is_attacker(&book.select(&query, NOW).unwrap())).count();
        picks as f64 / 10_000.0
    };
    let (any, new) = (share(Table::Any), share(Table::New));
    let bound_new = NEW_BUCKETS_PER_SOURCE_GROUP as f64 / non_empty.len() as f64;
    let bound_any = bound_new / 2.0;
    eprintln!(
        "eclipse: honest {honest_new} new + {honest_tried} tried; attacker sent 100000, holds {attacker_entries} \
         entries in {} of {} non-empty new buckets; attacker share of 10000 selects: Table::Any {:.2}% \
         (bound {:.2}%), Table::New {:.2}% (bound {:.2}%)",
        attacker_buckets.len(),
        non_empty.len(),
        any * 100.0,
        bound_any * 100.0,
        new * 100.0,
        bound_new * 100.0,
    );
    assert!(new < bound_new, "new-table share {new} over {bound_new}");
    assert!(any < bound_any, "share {any} over {bound_any}");
    // Tighter, from what the attacker actually holds: one bucket of the
    // non-empty ones, so about 1/980 of new-table draws; four times that
    // leaves room for sampling noise (the expected count is about 10 in
    // 10,000).
    let tight = 4.0 * attacker_buckets.len() as f64 / non_empty.len() as f64;
    assert!(new < tight && any < tight / 2.0, "shares {new}, {any} over {tight}");
    // What the attacker holds is a rounding error of what he sent.
    assert!(attacker_entries * 1000 < 100_000);
}
