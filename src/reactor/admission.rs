//! Inbound admission at accept, before a connection costs anything but its
//! socket: the ban list and the per-source caps. A refused connection is
//! closed at once (no link, no buffer) and counted in
//! [`ReactorStats`](crate::handle::ReactorStats).

use std::collections::HashMap;
use std::net::IpAddr;

use super::{CodecFor, Factory, Protocol, Reactor};
use crate::ban::Subnet;
use crate::event::DisconnectReason;
use crate::netgroup::NetGroup;

impl<F, P> Reactor<F, P>
where
    F: Factory,
    F::Codec: CodecFor<P>,
    P: Protocol,
{
    /// Closes every peer whose address is in the newly banned `subnet`.
    pub(super) fn close_banned(&mut self, subnet: Subnet) {
        let ids: Vec<u64> = self
            .slots
            .iter()
            .filter(|(_, slot)| slot.link.peer_ip().is_some_and(|ip| subnet.contains(&ip)))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.close(id, DisconnectReason::Banned.into());
        }
    }

    /// With [`Config::ban_misbehaving`](crate::Config::ban_misbehaving)
    /// set, `peer`, just closed for provable misbehaviour, has its address
    /// `ip` banned.
    pub(super) fn ban_misbehaved(&mut self, peer: crate::PeerId, ip: Option<IpAddr>) {
        let (Some(duration), Some(ip)) = (self.ban_misbehaving, ip) else { return };
        let now = super::shared::unix_now();
        let mut bans = self.shared.bans.lock().unwrap_or_else(|e| e.into_inner());
        match bans.ban(Subnet::host(ip), now, now.saturating_add(duration.as_secs())) {
            Ok(()) => {
                log::info!("peer {peer} misbehaved: {ip} banned for {} s", duration.as_secs());
                super::shared::Counters::bump(&self.shared.stats.auto_bans);
            }
            Err(e) => log::warn!("peer {peer} misbehaved, but {ip} cannot be banned: {e}"),
        }
    }
}

/// Why an inbound connection was closed at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Its address is banned.
    Banned,
    /// Its address holds [`Config::max_inbound_per_ip`](crate::Config::max_inbound_per_ip) slots.
    PerIp,
    /// Its network group holds [`Config::max_inbound_per_netgroup`](crate::Config::max_inbound_per_netgroup) slots.
    PerGroup,
}

/// Live inbound connections per address and per network group, and the caps.
pub(super) struct Admission {
    /// The secret that keys network groups (eviction and the caps).
    pub(super) key: (u64, u64),
    per_ip: HashMap<IpAddr, u32>,
    per_group: HashMap<u64, u32>,
    max_per_ip: Option<usize>,
    max_per_group: Option<usize>,
}

/// Where an inbound connection comes from, as admission counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Source {
    pub(super) ip: IpAddr,
    pub(super) group: u64,
}

impl Admission {
    pub(super) fn new(key: (u64, u64), max_per_ip: Option<usize>, max_per_group: Option<usize>) -> Admission {
        Admission { key, per_ip: HashMap::new(), per_group: HashMap::new(), max_per_ip, max_per_group }
    }

    /// The source of a connection from `ip` (an IPv4-mapped address counts
    /// as its IPv4 address).
    pub(super) fn source(&self, ip: IpAddr) -> Source {
        let ip = ip.to_canonical();
        Source { ip, group: NetGroup::of_ip(ip).keyed(self.key) }
    }

    /// Whether a connection from `source` may take a slot.
    pub(super) fn check(&self, source: Source) -> Result<(), Refusal> {
        fn count<K: std::hash::Hash + Eq>(map: &HashMap<K, u32>, k: &K) -> usize {
            map.get(k).copied().unwrap_or(0) as usize
        }
        if self.max_per_ip.is_some_and(|max| count(&self.per_ip, &source.ip) >= max) {
            return Err(Refusal::PerIp);
        }
        if self.max_per_group.is_some_and(|max| count(&self.per_group, &source.group) >= max) {
            return Err(Refusal::PerGroup);
        }
        Ok(())
    }

    /// A connection from `source` took a slot.
    pub(super) fn admitted(&mut self, source: Source) {
        *self.per_ip.entry(source.ip).or_insert(0) += 1;
        *self.per_group.entry(source.group).or_insert(0) += 1;
    }

    /// A connection from `source` gave its slot back.
    pub(super) fn left(&mut self, source: Source) {
        fn down<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, k: K) {
            if let std::collections::hash_map::Entry::Occupied(mut e) = map.entry(k) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
        down(&mut self.per_ip, source.ip);
        down(&mut self.per_group, source.group);
    }

    /// Sources counted (for tests: the maps empty when every peer left).
    #[cfg(test)]
    pub(super) fn tracked(&self) -> (usize, usize) {
        (self.per_ip.len(), self.per_group.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_live_connections_per_address_and_per_group() {
        let mut a = Admission::new((1, 2), Some(2), Some(3));
        let ip = |s: &str| a.source(s.parse().unwrap());
        let (x, y, z, mapped) = (ip("1.2.3.4"), ip("1.2.9.9"), ip("1.2.7.7"), ip("::ffff:1.2.3.4"));
        assert_eq!(mapped, x, "a mapped address is its IPv4 address");
        assert_eq!(x.group, y.group);
        a.admitted(x);
        assert_eq!(a.check(x), Ok(()));
        a.admitted(x);
        assert_eq!(a.check(mapped), Err(Refusal::PerIp));
        assert_eq!(a.check(y), Ok(()), "another address of the group");
        a.admitted(y);
        assert_eq!(a.check(z), Err(Refusal::PerGroup), "the /16 holds 3");
        a.left(x);
        assert_eq!(a.check(x), Ok(()), "a slot of the group came back");
        a.left(y);
        assert_eq!(a.check(z), Ok(()));
        a.left(x);
        assert_eq!(a.tracked(), (0, 0), "nothing kept for sources that left");
        let unlimited = Admission::new((1, 2), None, None);
        assert_eq!(unlimited.check(x), Ok(()));
    }
}
