//! Which inbound peer to evict when every inbound slot is taken: Bitcoin
//! Core's `SelectNodeToEvict` (`src/node/eviction.cpp`), as pure code.
//!
//! Peers that are hard for an attacker to imitate are protected first: a
//! few from distinct network groups (keyed, so the attacker cannot predict
//! which), the fastest pings, those that most recently brought novel
//! transactions and blocks, and then half of the rest by uptime, a share of
//! that half reserved for loopback peers. Of those left, the youngest peer
//! of the network group with the most connections is evicted. An attacker
//! who opens many connections from one range thus evicts its own.

use std::time::{Duration, Instant};

use super::{CodecFor, Factory, Protocol, Reactor};
use crate::event::{DisconnectReason, Relayed};
use crate::netgroup::is_local;
use crate::types::PeerId;

impl<F, P> Reactor<F, P>
where
    F: Factory,
    F::Codec: CodecFor<P>,
    P: Protocol,
{
    /// Every inbound slot is taken and `remote` wants one: evicts a peer by
    /// Core's rule and returns true, or returns false if every inbound peer
    /// is protected.
    pub(super) fn evict_for(&mut self, remote: std::net::SocketAddr) -> bool {
        let protocol = &self.env.protocol;
        let candidates: Vec<Candidate> =
            self.slots.values().filter_map(|slot| slot.link.eviction_candidate(protocol)).collect();
        let Some(victim) = select(candidates) else {
            log::debug!("refusing {remote}: every inbound slot is taken and no peer may be evicted");
            return false;
        };
        log::debug!("evicting peer {victim} to make room for {remote}");
        crate::reactor::shared::Counters::bump(&self.shared.stats.inbound_evicted);
        self.close(victim.0, DisconnectReason::Evicted.into());
        true
    }

    /// The standing of a new inbound link from `remote`.
    pub(super) fn standing(&self, remote: std::net::SocketAddr) -> Standing {
        Standing {
            keyed_net_group: self.admission.source(remote.ip()).group,
            is_local: is_local(remote.ip()),
            ..Standing::default()
        }
    }

    pub(super) fn protect(&mut self, peer: PeerId, protected: bool) {
        if let Some(slot) = self.slots.get_mut(&peer.0) {
            slot.link.standing.protected = protected;
        }
    }

    pub(super) fn relayed(&mut self, peer: PeerId, what: Relayed) {
        let now = self.env.now;
        if let Some(slot) = self.slots.get_mut(&peer.0) {
            match what {
                Relayed::Block => slot.link.standing.last_block = Some(now),
                Relayed::Transaction => slot.link.standing.last_tx = Some(now),
            }
        }
    }
}

/// What a link keeps for eviction beyond the protocol's traits.
#[derive(Debug, Clone, Default)]
pub(crate) struct Standing {
    pub(crate) keyed_net_group: u64,
    pub(crate) is_local: bool,
    /// The user exempted the peer ([`Handle::protect`](crate::Handle::protect)).
    pub(crate) protected: bool,
    pub(crate) last_block: Option<Instant>,
    pub(crate) last_tx: Option<Instant>,
}

/// What eviction knows about one inbound peer.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub(crate) id: PeerId,
    pub(crate) connected: Instant,
    /// The smallest ping round trip seen; `None` before the first.
    pub(crate) min_ping: Option<Duration>,
    /// When the peer last sent a block new to us (reported by the user).
    pub(crate) last_block: Option<Instant>,
    /// When the peer last sent a transaction new to us (reported by the user).
    pub(crate) last_tx: Option<Instant>,
    /// The peer offers the services we want (Core: `NODE_NETWORK` or
    /// `NODE_NETWORK_LIMITED`, and `NODE_WITNESS`).
    pub(crate) relevant_services: bool,
    /// The peer relays transactions to us (its `version`'s relay flag).
    pub(crate) relay_txs: bool,
    /// The peer loaded a BIP37 bloom filter.
    pub(crate) bloom_filter: bool,
    /// Its network group under the reactor's secret key.
    pub(crate) keyed_net_group: u64,
    /// A loopback peer.
    pub(crate) is_local: bool,
    /// Never evicted (the user protected it).
    pub(crate) protected: bool,
}

/// Core's `EraseLastKElements`: sorts by `order`, then of the last `k`
/// candidates drops those that `protect` holds for (they are protected).
fn protect_last<F>(list: &mut Vec<Candidate>, order: F, k: usize, protect: impl Fn(&Candidate) -> bool)
where
    F: FnMut(&Candidate, &Candidate) -> std::cmp::Ordering,
{
    list.sort_by(order);
    let start = list.len() - k.min(list.len());
    let tail: Vec<Candidate> = list.drain(start..).filter(|c| !protect(c)).collect();
    list.extend(tail);
}

/// Youngest first (Core's `ReverseCompareNodeTimeConnected`: `a` before
/// `b` if `a` connected later).
fn younger_first(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.connected.cmp(&a.connected)
}

/// `false` before `true`.
fn false_first(a: bool, b: bool) -> std::cmp::Ordering {
    a.cmp(&b)
}

/// The peer to evict, if any may be.
pub(crate) fn select(mut list: Vec<Candidate>) -> Option<PeerId> {
    list.retain(|c| !c.protected);
    // 4 by network group: the highest keyed values.
    protect_last(&mut list, |a, b| a.keyed_net_group.cmp(&b.keyed_net_group), 4, |_| true);
    // 8 with the lowest ping (no ping yet counts as the slowest).
    let ping = |c: &Candidate| c.min_ping.unwrap_or(Duration::MAX);
    protect_last(&mut list, |a, b| ping(b).cmp(&ping(a)), 8, |_| true);
    // 4 that most recently sent novel transactions.
    protect_last(
        &mut list,
        |a, b| {
            a.last_tx
                .cmp(&b.last_tx)
                .then(false_first(a.relay_txs, b.relay_txs))
                .then(false_first(b.bloom_filter, a.bloom_filter))
                .then(younger_first(a, b))
        },
        4,
        |_| true,
    );
    // Up to 8 block-relay-only peers that sent novel blocks.
    protect_last(
        &mut list,
        |a, b| {
            false_first(b.relay_txs, a.relay_txs)
                .then(a.last_block.cmp(&b.last_block))
                .then(false_first(a.relevant_services, b.relevant_services))
                .then(younger_first(a, b))
        },
        8,
        |c| !c.relay_txs && c.relevant_services,
    );
    // 4 that most recently sent novel blocks.
    protect_last(
        &mut list,
        |a, b| {
            a.last_block
                .cmp(&b.last_block)
                .then(false_first(a.relevant_services, b.relevant_services))
                .then(younger_first(a, b))
        },
        4,
        |_| true,
    );
    protect_by_ratio(&mut list);
    if list.is_empty() {
        return None;
    }
    // `list` is ordered youngest first. The group with the most members
    // (ties: the one whose youngest member is youngest) loses its youngest.
    let mut groups: Vec<(u64, usize, Instant, PeerId)> = Vec::new();
    let mut best: Option<(usize, Instant, u64)> = None;
    for c in &list {
        let entry = match groups.iter_mut().position(|g| g.0 == c.keyed_net_group) {
            Some(i) => &mut groups[i],
            None => {
                groups.push((c.keyed_net_group, 0, c.connected, c.id));
                groups.last_mut().expect("just pushed")
            }
        };
        entry.1 += 1;
        let (size, youngest) = (entry.1, entry.2);
        if best.is_none_or(|(n, t, _)| size > n || (size == n && youngest > t)) {
            best = Some((size, youngest, c.keyed_net_group));
        }
    }
    let (_, _, group) = best?;
    groups.iter().find(|g| g.0 == group).map(|g| g.3)
}

/// Core's `ProtectEvictionCandidatesByRatio`: half of the candidates are
/// protected, up to half of those (a quarter) reserved for loopback peers
/// (Core also reserves them for onion, I2P and CJDNS peers, which reach a
/// listener here only as loopback connections from their proxy), the rest
/// by uptime. Leaves `list` youngest first.
fn protect_by_ratio(list: &mut Vec<Candidate>) {
    let total = list.len() / 2;
    let by_network = total / 2;
    let local = list.iter().filter(|c| c.is_local).count();
    let mut protected = 0;
    if by_network > 0 && local > 0 {
        let before = list.len();
        protect_last(
            list,
            |a, b| false_first(a.is_local, b.is_local).then(younger_first(a, b)),
            by_network,
            |c| c.is_local,
        );
        protected = before - list.len();
    }
    protect_last(list, younger_first, total - protected, |_| true);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: u64, connected_s: u64, group: u64) -> Candidate {
        Candidate {
            id: PeerId(id),
            connected: base() + Duration::from_secs(connected_s),
            min_ping: None,
            last_block: None,
            last_tx: None,
            relevant_services: false,
            relay_txs: true,
            bloom_filter: false,
            keyed_net_group: group,
            is_local: false,
            protected: false,
        }
    }

    fn base() -> Instant {
        use std::sync::OnceLock;
        static BASE: OnceLock<Instant> = OnceLock::new();
        *BASE.get_or_init(Instant::now)
    }

    #[test]
    fn too_few_candidates_are_all_protected() {
        // 4 by group, 8 by ping, 4 by tx, 4 by block, then half: 20 go first.
        let list: Vec<_> = (0..20).map(|i| peer(i, i, i)).collect();
        assert_eq!(select(list), None);
        assert_eq!(select(vec![]), None);
    }

    #[test]
    fn the_youngest_of_the_largest_group_is_evicted() {
        // 30 honest peers in distinct groups, connected at 0..30 s; then an
        // attacker's 40 connections from group 999, connected at 100.. s.
        let mut list: Vec<_> = (0..30).map(|i| peer(i, i, i)).collect();
        list.extend((0..40).map(|i| peer(100 + i, 100 + i, 999)));
        // Protected: 136..139 by group (the highest keyed), 128..135 by ping
        // (a tie: the order stays), the oldest honest peers by transactions
        // and blocks, then half by uptime (the other honest peers and
        // 100..102). The attacker's youngest connection left goes.
        assert_eq!(select(list.clone()), Some(PeerId(127)));
        // With the attacker's groups spread out, the largest group still loses.
        for c in list.iter_mut().skip(30).step_by(2) {
            c.keyed_net_group = 998;
        }
        let victim = select(list).unwrap();
        assert!(victim.0 >= 100, "an attacker's connection: {victim:?}");
    }

    #[test]
    fn protected_fast_and_useful_peers_survive() {
        // 60 peers in one group. Without anything to set them apart, 56..59
        // (by group), 48..55 (by ping, a tie), 0..7 (transactions and blocks
        // ties: the oldest) and 8..27 (uptime) are protected: 47 goes.
        let plain: Vec<_> = (0..60).map(|i| peer(i, i, 7)).collect();
        assert_eq!(select(plain.clone()), Some(PeerId(47)));
        // 44..47 stand out: each is protected, and 48 goes instead.
        let mut list = plain;
        list[44].protected = true; // by the user
        list[45].min_ping = Some(Duration::from_millis(1)); // the fastest ping
        list[46].last_tx = Some(base() + Duration::from_secs(500)); // a novel transaction
        list[47].last_block = Some(base() + Duration::from_secs(500)); // a novel block
        assert_eq!(select(list), Some(PeerId(48)));
    }

    #[test]
    fn the_tie_breaks_follow_core_when_nothing_sets_peers_apart() {
        // 40 peers in 40 groups, the younger in higher keyed groups, none
        // with a ping, a transaction or a block. Protected in turn: by group
        // 36..39; by ping (a tie: the order stays) 28..35; by transactions
        // (ties: youngest first, so the oldest go last) 0..3; by blocks
        // 4..7; then half of the 20 left by uptime, 8..17. The youngest of
        // 18..27, each its own group, goes.
        let list: Vec<_> = (0..40).map(|i| peer(i, i, 1000 + i)).collect();
        assert_eq!(select(list), Some(PeerId(27)));
    }

    #[test]
    fn half_is_protected_by_uptime_with_a_quarter_reserved_for_loopback_peers() {
        let ids = |list: &[Candidate]| list.iter().map(|c| c.id.0).collect::<Vec<_>>();
        let mut list: Vec<_> = (0..20).map(|i| peer(i, i, 7)).collect();
        protect_by_ratio(&mut list);
        assert_eq!(ids(&list), (10..20).rev().collect::<Vec<_>>(), "the 10 oldest are protected");
        // The 5 youngest are loopback peers: they take the reserved quarter,
        // and the 5 oldest the rest of the half.
        let mut list: Vec<_> = (0..20).map(|i| peer(i, i, 7)).collect();
        for c in list.iter_mut().skip(15) {
            c.is_local = true;
        }
        protect_by_ratio(&mut list);
        assert_eq!(ids(&list), (5..15).rev().collect::<Vec<_>>());
    }

    #[test]
    fn block_relay_only_peers_with_novel_blocks_are_protected() {
        let mut list: Vec<_> = (0..40).map(|i| peer(i, i, 7)).collect();
        for c in list.iter_mut().skip(30) {
            c.relay_txs = false;
            c.relevant_services = true;
            c.last_block = Some(base() + Duration::from_secs(c.id.0));
        }
        let victim = select(list).unwrap();
        assert!(victim.0 < 30, "the block-relay-only peers are protected, victim {victim:?}");
    }
}
