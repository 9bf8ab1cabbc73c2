//! The pool under an arbitrary sequence of inputs, decoded from bytes, with
//! its invariants checked after every step: the property test below and
//! the `pool` fuzz target (`peerlink::__fuzz::pool`) both run it.
//!
//! Input layout: a configuration byte pair (outbound count; flags for
//! distinct groups, proxy, onion, onlynet IPv4, feelers, dials reported a
//! step late, some of those never made), a book seed,
//! then operations of one byte each followed by their operands: a tick
//! after a time jump, a handshake (with services) or failure or
//! disconnection of a held peer, an `addr`/`addrv2` of random entries
//! (IPv4, IPv6, onion, I2P, loopback) from a held or an unknown peer, a
//! seed lookup answer or error, a manual peer added (or removed, when it
//! is one already; an IPv4 one maybe in its mapped IPv6 form). Past the end of the input
//! every read gives zero.
//!
//! Invariants: no panic; never more outbound peers held or dialling than
//! the target; never two connections to one address, nor a dial (addr
//! fetches aside) to the address of a peer the pool does not hold (an
//! inbound one's IP at any port); every manual-kind dial is to a manual
//! peer; nothing left due
//! after a tick; with distinct groups,
//! one outbound peer per group; no dial to a network the config cannot or
//! may not reach (manual peers aside); through a proxy no lookup at all;
//! the book stays consistent.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use bitcoin::p2p::ServiceFlags;
use bitcoin::p2p::address::{AddrV2, AddrV2Message};
use bitcoin::p2p::message::NetworkMessage;

use super::{Pool, PoolAction, PoolConfig};
use crate::PeerInfo;
use crate::codec::Transport;
use crate::discovery::addrbook::{AddrBook, Address};
use crate::discovery::seeds::ResolveError;
use crate::event::{ConnectError, Direction, DisconnectReason, Event, PeerId};
use crate::netgroup::{NetGroup, Network};
use crate::session::{Features, PeerVersion};
use crate::target::Target;

const UNIX: u64 = 1_750_000_000;

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

/// An address of the kind `kind` picks, from `b`'s next bytes.
fn address(kind: u8, b: &mut Bytes<'_>) -> (AddrV2, u16) {
    let port = 8333 + u16::from(b.u8() % 4);
    let addr = match kind % 6 {
        0 | 1 => AddrV2::Ipv4(Ipv4Addr::new(1 + b.u8() % 200, b.u8(), b.u8(), b.u8())),
        2 => AddrV2::Ipv6(Ipv6Addr::new(0x2001, 0x0db9 + u16::from(b.u8()), u16::from(b.u8()), 0, 0, 0, 0, 1)),
        3 => AddrV2::TorV3([b.u8() | 1; 32]),
        4 => AddrV2::I2p([b.u8(); 32]),
        _ => AddrV2::Ipv4(Ipv4Addr::new(127, 0, 0, b.u8())),
    };
    (addr, port)
}

/// What the reactor reports of a peer after its handshake (also used by the
/// pool's unit tests).
pub(super) fn info(peer: PeerId, target: Target, services: ServiceFlags, direction: Direction) -> PeerInfo {
    let addr = target.socket_addr().unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9050)));
    PeerInfo {
        peer,
        addr,
        target,
        proxy: None,
        local_addr: None,
        direction,
        transport: Transport::V1,
        version: Some(PeerVersion {
            version: 70016,
            services,
            user_agent: String::new(),
            start_height: 0,
            relay: true,
            nonce: 0,
        }),
        features: Features::default(),
        ready: true,
    }
}

/// Runs the pool on the inputs `data` decodes to; panics on a broken
/// invariant.
pub(crate) fn run(data: &[u8]) {
    let mut b = Bytes(data);
    let outbound = 1 + usize::from(b.u8() % 8);
    let flags = b.u8();
    let mut config = PoolConfig::new(bitcoin::Network::Bitcoin);
    config.outbound = outbound;
    config.distinct_groups = flags & 1 == 0;
    config.proxied = flags & 2 != 0;
    config.onion = flags & 4 != 0;
    if flags & 8 != 0 {
        config.networks = Some(vec![Network::Ipv4]);
    }
    if flags & 16 != 0 {
        config.feeler_interval = Some(Duration::from_secs(120));
    }
    config.dns_seeds = vec!["seed.a.test".into(), "seed.b.test:18333".into(), "10.0.0.1:8333".into()];
    config.fixed_seeds = (0..6).map(|i| address(i, &mut b)).map(|(a, p)| Address::new(a, p)).collect();
    let seed = b.u8();
    let start = Instant::now();
    let (mut now, mut unix) = (start, UNIX);
    let mut pool = Pool::new(config.clone(), AddrBook::new([seed; 32]), now);
    let mut next_id = 1;
    // What each live id was dialled as (`None` for an inbound peer).
    let mut live: HashMap<PeerId, Option<Target>> = HashMap::new();
    // The peers the pool does not hold, and the address each is at.
    // (An inbound one counts at its IP, at any port.)
    let mut foreign: HashMap<PeerId, (Target, bool)> = HashMap::new();
    let mut asked: Vec<String> = Vec::new();
    // By host, as the pool compares them.
    let mut manual: HashSet<Result<Address, Target>> = HashSet::new();
    // Dials reported at the start of the next step rather than at once, so
    // that the checks see dials in progress; some never made.
    let late_dials = flags & 32 != 0;
    let mut pending: Vec<(super::DialToken, Target)> = Vec::new();
    let mut steps = 0;
    while !b.done() && steps < 512 {
        steps += 1;
        let mut ticked = false;
        for (token, target) in pending.drain(..) {
            if flags & 64 != 0 && next_id % 3 == 0 {
                pool.dialed(token, None);
            } else {
                pool.dialed(token, Some(PeerId(next_id)));
                live.insert(PeerId(next_id), Some(target));
            }
            next_id += 1;
        }
        let peers: Vec<PeerId> = {
            let mut p: Vec<PeerId> = live.keys().copied().collect();
            p.sort();
            p
        };
        let pick = |b: &mut Bytes<'_>| (!peers.is_empty()).then(|| peers[usize::from(b.u8()) % peers.len()]);
        match b.u8() % 9 {
            0 => {
                let jump = Duration::from_secs(u64::from(b.u8()) * u64::from(b.u8() % 8 + 1));
                now += jump;
                unix += jump.as_secs();
                pool.tick(now, unix);
                ticked = true;
            }
            1 => {
                if let Some(peer) = pick(&mut b) {
                    let services = ServiceFlags::from(u64::from(b.u8()) | (u64::from(b.u8() & 0x08) << 8));
                    let target = live[&peer].clone().unwrap_or_else(|| "1.2.3.4:8333".parse().unwrap());
                    if live[&peer].is_none() {
                        foreign.insert(peer, (target.clone(), false));
                    }
                    let event =
                        Event::Ready { peer, info: Box::new(info(peer, target, services, Direction::Outbound)) };
                    pool.on_event(&event, now, unix);
                }
            }
            2 => {
                if let Some(peer) = pick(&mut b)
                    && let Some(Some(target)) = live.remove(&peer)
                {
                    let event = Event::ConnectFailed { peer, target, error: ConnectError::Cancelled };
                    pool.on_event(&event, now, unix);
                }
            }
            3 => {
                if let Some(peer) = pick(&mut b) {
                    live.remove(&peer);
                    foreign.remove(&peer);
                    pool.on_event(&Event::Disconnected { peer, reason: DisconnectReason::PeerClosed }, now, unix);
                }
            }
            4 | 5 => {
                let from = pick(&mut b);
                let n = usize::from(b.u8() % 40);
                let v2 = b.u8() & 1 == 0;
                let entries: Vec<(AddrV2, u16)> = (0..n)
                    .map(|_| {
                        let kind = b.u8();
                        address(kind, &mut b)
                    })
                    .collect();
                let time = (unix as u32).wrapping_sub(u32::from(b.u8()) * 600);
                let message = if v2 {
                    NetworkMessage::AddrV2(
                        entries
                            .into_iter()
                            .map(|(addr, port)| AddrV2Message { time, services: ServiceFlags::NETWORK, addr, port })
                            .collect(),
                    )
                } else {
                    NetworkMessage::Addr(
                        entries
                            .into_iter()
                            .filter_map(|(addr, port)| match addr {
                                AddrV2::Ipv4(ip) => Some(SocketAddr::from((ip, port))),
                                AddrV2::Ipv6(ip) => Some(SocketAddr::from((ip, port))),
                                _ => None,
                            })
                            .map(|a| (time, bitcoin::p2p::Address::new(&a, ServiceFlags::NETWORK)))
                            .collect(),
                    )
                };
                if let Some(peer) = from {
                    pool.on_event(&Event::Message { peer, message, wire_size: 0 }, now, unix);
                }
            }
            6 => {
                if !asked.is_empty() {
                    let name = asked.remove(usize::from(b.u8()) % asked.len());
                    let result = if b.u8() & 3 == 0 {
                        Err(ResolveError::no_address(&name))
                    } else {
                        let n = usize::from(b.u8() % 50);
                        Ok((0..n)
                            .map(|_| {
                                let ip = Ipv4Addr::new(1 + b.u8() % 200, b.u8(), b.u8(), 1);
                                SocketAddr::new(IpAddr::V4(ip), 8333)
                            })
                            .collect())
                    };
                    pool.on_resolved(&name, result, now, unix);
                }
            }
            7 => {
                let kind = b.u8();
                let (addr, port) = address(kind, &mut b);
                // With the kind's high bit, an IPv4 address is named in
                // its IPv4-mapped IPv6 form: the same host.
                let addr = match addr {
                    AddrV2::Ipv4(ip) if kind & 0x80 != 0 => AddrV2::Ipv6(ip.to_ipv6_mapped()),
                    other => other,
                };
                if let Ok(target) = Target::from_addr_v2(&addr, port) {
                    // A manual peer named again is removed.
                    if manual.remove(&host(&target)) {
                        pool.remove_manual(&target);
                    } else {
                        manual.insert(host(&target));
                        pool.add_manual(target, now);
                    }
                }
            }
            _ => {
                // An inbound peer the pool does not hold.
                let peer = PeerId(next_id);
                next_id += 1;
                // From a random port, as inbound peers are.
                let target: Target = SocketAddr::from(([5, b.u8(), 0, 1], 40000 + u16::from(b.u8()))).into();
                live.insert(peer, None);
                foreign.insert(peer, (target.clone(), true));
                let event =
                    Event::Ready { peer, info: Box::new(info(peer, target, ServiceFlags::NONE, Direction::Inbound)) };
                pool.on_event(&event, now, unix);
            }
        }
        // Carry the actions out, checking each.
        while let Some(action) = pool.poll_action() {
            match action {
                PoolAction::Connect { token, target } => {
                    let kind = pool.dialing.get(&token).expect("a dial is held").kind;
                    let at = host(&target);
                    let taken = foreign.values().find(|(t, inbound)| match (&at, host(t)) {
                        (Ok(a), Ok(f)) if *inbound => a.addr == f.addr,
                        (a, f) => *a == f,
                    });
                    match kind {
                        // The configured seeds, reached through the proxy
                        // only, are the user's choice, as manual peers are.
                        super::PeerKind::AddrFetch => assert!(config.proxied, "an addr fetch without a proxy"),
                        super::PeerKind::Manual => assert!(manual.contains(&at), "a manual dial to {target}"),
                        _ => check_reachable(&config, &target),
                    }
                    if kind != super::PeerKind::AddrFetch {
                        assert!(taken.is_none(), "dialled {target}, already connected to {taken:?}");
                    }
                    if late_dials {
                        pending.push((token, target));
                    } else {
                        let peer = PeerId(next_id);
                        next_id += 1;
                        pool.dialed(token, Some(peer));
                        live.insert(peer, Some(target));
                    }
                }
                PoolAction::Resolve(queries) => {
                    assert!(!config.proxied, "a lookup through a proxy: {queries:?}");
                    asked.extend(queries.into_iter().map(|(name, _)| name));
                }
                PoolAction::Send(peer, message) => {
                    assert_eq!(message, NetworkMessage::GetAddr);
                    assert!(live.contains_key(&peer), "a send to a dead id");
                }
                PoolAction::Disconnect(_) => {}
            }
        }
        // Nothing is left due once a tick's actions are carried out: a
        // driver sleeping until the pool's next timeout does not spin.
        if ticked {
            assert!(pool.poll_timeout(now) > now, "due again at once after a tick: {:?}", pool.manual);
        }
        check(&pool, &config);
    }
}

/// A target as the pool compares them: its canonical address, or the
/// name.
fn host(target: &Target) -> Result<Address, Target> {
    super::host_address(target).ok_or_else(|| target.clone())
}

fn check_reachable(config: &PoolConfig, target: &Target) {
    let addr = target.to_addr_v2().unwrap_or_else(|| panic!("a name dialled as a pool peer: {target}"));
    let network = Address::new(addr, target.port()).network();
    assert!(config.reaches(network), "dialled {target} ({network:?}) against {config:?}");
}

fn check(pool: &Pool, config: &PoolConfig) {
    let peers = pool.peers();
    let outbound: Vec<_> = peers.iter().filter(|p| p.kind == super::PeerKind::Outbound).collect();
    let dialling = pool.dialing.values().filter(|h| h.kind == super::PeerKind::Outbound).count();
    assert!(outbound.len() + dialling <= config.outbound, "{} outbound over {}", outbound.len(), config.outbound);
    let mut seen = HashSet::new();
    let held = peers.iter().map(|p| (p.kind, &p.target));
    for (kind, target) in held.chain(pool.dialing.values().map(|h| (h.kind, &h.target))) {
        if kind != super::PeerKind::AddrFetch {
            assert!(seen.insert(host(target)), "two connections to {target}: {peers:?}, dialling {:?}", pool.dialing);
        }
    }
    if config.distinct_groups {
        let mut groups = HashSet::new();
        for p in &outbound {
            assert!(groups.insert(NetGroup::of_target(&p.target)), "two outbound peers in the group of {}", p.target);
        }
    }
    if let Err(e) = pool.book().check() {
        panic!("inconsistent book: {e}");
    }
}

#[cfg(test)]
mod tests {
    /// Random operation sequences from a fixed-seed xorshift (fewer in a
    /// debug build, which runs the book's hashing some 50 times slower).
    #[test]
    fn random_inputs_keep_the_invariants() {
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let cases = if cfg!(debug_assertions) { 40 } else { 300 };
        for case in 0..cases {
            let len = 64 + case * 397 % 2000;
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 24) as u8
                })
                .collect();
            super::run(&data);
        }
    }
}

#[cfg(test)]
mod regressions {
    /// Found by the `pool` fuzz target in CI: a manual onion peer that the
    /// pool also held as another kind.
    #[test]
    fn fuzz_crash_two_connections_to_an_onion() {
        let data = [
            7, 6, 0, 20, 1, 2, 3, 4, 1, 23, 1, 2, 3, 4, 2, 9, 3, 4, 2, 9, 0, 1, 7, 0, 1, 44, 1, 2, 3, 3, 9, 0, 1, 4, 1,
            0, 4, 0, 8, 0, 0, 1, 30, 0, 9, 1, 1, 1, 31, 1, 9, 1, 2, 1, 32, 2, 9, 1, 3, 1, 33, 3, 9, 1, 146, 146, 146,
            146, 146, 146, 146, 146, 146, 146, 146, 146, 146, 146, 146, 146, 146, 146, 146, 146, 146, 146, 146, 146,
            146, 146, 146, 146, 146, 146, 146, 146, 146, 146, 146, 146, 146, 146, 4, 1, 34, 4, 9, 1, 13, 1, 35, 5, 9,
            1, 6, 1, 36, 6, 9, 1, 7, 1, 37, 7, 9, 1, 3, 2, 5, 3, 1, 0, 102, 10, 2, 7, 0, 0, 44, 1, 2, 3, 8, 0, 60, 2,
        ];
        super::run(&data);
    }
}
