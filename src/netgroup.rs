//! Network groups: which addresses an attacker can cheaply hold many of.
//!
//! Bitcoin Core spreads its peers over network groups (`NetGroupManager::
//! GetGroup` in `src/netgroup.cpp`) so that one operator, who can rent many
//! addresses in one range but few ranges, cannot fill every slot. The same
//! grouping drives inbound eviction here and the address book's buckets.
//!
//! - IPv4 (and IPv6 forms that carry an IPv4 address: mapped, NAT64, 6to4,
//!   Teredo): the /16.
//! - Other routable IPv6: the /32 (Hurricane Electric's 2001:470::/32: the
//!   /36, as in Core).
//! - Onion and I2P: the network and the first 4 bits. CJDNS: the network
//!   and the first 12 bits, that is the constant `fc` byte and 4 bits of
//!   the key-derived address ([`NetGroup::of_addr_v2`]).
//! - Loopback: one group. Other unroutable addresses (private, link-local,
//!   documentation ranges...): one more group.
//!
//! ```
//! use peerlink::netgroup::NetGroup;
//!
//! let a = NetGroup::of_ip("8.8.4.4".parse().unwrap());
//! let b = NetGroup::of_ip("8.8.200.1".parse().unwrap());
//! let c = NetGroup::of_ip("8.9.0.1".parse().unwrap());
//! assert_eq!(a, b); // same /16
//! assert_ne!(a, c);
//! // An IPv4-mapped IPv6 address is grouped as its IPv4 address.
//! assert_eq!(a, NetGroup::of_ip("::ffff:8.8.1.1".parse().unwrap()));
//! // Documentation, private and loopback ranges are not routable.
//! assert_eq!(
//!     NetGroup::of_ip("10.1.2.3".parse().unwrap()),
//!     NetGroup::of_ip("192.168.0.1".parse().unwrap())
//! );
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bitcoin::p2p::address::AddrV2;

use crate::target::Target;

/// The network an address belongs to, as Bitcoin Core classes it
/// (`Network` in `src/netaddress.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Network {
    /// Loopback, private, link-local and other addresses not reachable
    /// from the internet.
    Unroutable,
    /// Routable IPv4, and IPv6 forms that embed an IPv4 address.
    Ipv4,
    /// Routable IPv6.
    Ipv6,
    /// Tor onion services.
    Onion,
    /// I2P (BIP155 network 5).
    I2p,
    /// CJDNS (BIP155 network 6): IPv6 addresses in `fc00::/8` reachable
    /// only over the CJDNS overlay.
    Cjdns,
    /// A host name not yet resolved: its group is the name's.
    Name,
}

impl Network {
    /// Core's numbering (`NET_UNROUTABLE` = 0, `NET_IPV4` = 1, ...); names
    /// take a value of their own.
    fn class(self) -> u8 {
        match self {
            Network::Unroutable => 0,
            Network::Ipv4 => 1,
            Network::Ipv6 => 2,
            Network::Onion => 3,
            Network::I2p => 4,
            Network::Cjdns => 5,
            Network::Name => 0xfe,
        }
    }

    fn from_class(class: u8) -> Option<Network> {
        Some(match class {
            0 => Network::Unroutable,
            1 => Network::Ipv4,
            2 => Network::Ipv6,
            3 => Network::Onion,
            4 => Network::I2p,
            5 => Network::Cjdns,
            0xfe => Network::Name,
            _ => return None,
        })
    }
}

/// A network group: the class byte followed by the address bits that
/// identify the group (at most 5 bytes for addresses; a host name's group
/// is its last two labels).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetGroup {
    network: Network,
    bytes: Vec<u8>,
}

impl NetGroup {
    /// The group of an IP address.
    pub fn of_ip(ip: IpAddr) -> NetGroup {
        let ip = match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            },
            v4 => v4,
        };
        match ip {
            IpAddr::V4(v4) if is_local_v4(v4) => NetGroup::unroutable(vec![]),
            IpAddr::V4(v4) if !routable_v4(v4) => NetGroup::unroutable(vec![1]),
            IpAddr::V4(v4) => NetGroup::ipv4(v4),
            IpAddr::V6(v6) if v6.is_loopback() => NetGroup::unroutable(vec![]),
            IpAddr::V6(v6) if !routable_v6(v6) => NetGroup::unroutable(vec![1]),
            IpAddr::V6(v6) => match linked_ipv4(v6) {
                Some(v4) if routable_v4(v4) => NetGroup::ipv4(v4),
                Some(_) => NetGroup::unroutable(vec![1]),
                None => {
                    let o = v6.octets();
                    // Hurricane Electric hands out /36s from 2001:470::/32.
                    let he_net = o[..4] == [0x20, 0x01, 0x04, 0x70];
                    let bytes = if he_net { vec![o[0], o[1], o[2], o[3], o[4] | 0x0f] } else { o[..4].to_vec() };
                    NetGroup { network: Network::Ipv6, bytes }
                }
            },
        }
    }

    /// The group of a connection target: its address's, an onion's first
    /// 4 bits, or for an unresolved name its last two labels.
    pub fn of_target(target: &Target) -> NetGroup {
        match target {
            Target::Socket(addr) => NetGroup::of_ip(addr.ip()),
            // Core's rule for Tor: the first 4 bits of the public key.
            Target::Onion { pubkey, .. } => NetGroup { network: Network::Onion, bytes: vec![pubkey[0] | 0x0f] },
            Target::Domain { name, .. } => {
                let host = name.as_str().to_ascii_lowercase();
                let labels: Vec<&str> = host.trim_end_matches('.').rsplit('.').take(2).collect();
                let tail: Vec<&str> = labels.into_iter().rev().collect();
                NetGroup { network: Network::Name, bytes: tail.join(".").into_bytes() }
            }
        }
    }

    /// The group of a BIP155 address, as `addrv2` gossip carries it.
    ///
    /// IPv4 and IPv6 are grouped as [`of_ip`](Self::of_ip). TorV3 and I2P
    /// take the network and the first 4 bits of the key (or hash). CJDNS
    /// takes its first 12 bits, as Core's `GetGroup` does: the constant
    /// `fc` byte, then the top 4 bits of the key-derived part. `None` for
    /// TorV2 (no longer supported by Tor), an unknown network, and a CJDNS
    /// address outside `fc00::/8` (not a CJDNS address).
    ///
    /// ```
    /// use bitcoin::p2p::address::AddrV2;
    /// use peerlink::netgroup::{NetGroup, Network};
    ///
    /// let v4 = NetGroup::of_addr_v2(&AddrV2::Ipv4("8.8.4.4".parse().unwrap())).unwrap();
    /// assert_eq!(v4, NetGroup::of_ip("8.8.9.9".parse().unwrap()));
    /// let i2p = NetGroup::of_addr_v2(&AddrV2::I2p([0xa5; 32])).unwrap();
    /// assert_eq!(i2p.network(), Network::I2p);
    /// assert_eq!(i2p.to_bytes(), [4, 0xaf]);
    /// assert_eq!(NetGroup::of_addr_v2(&AddrV2::TorV2([0; 10])), None);
    /// ```
    pub fn of_addr_v2(addr: &AddrV2) -> Option<NetGroup> {
        match addr {
            AddrV2::Ipv4(ip) => Some(NetGroup::of_ip(IpAddr::V4(*ip))),
            AddrV2::Ipv6(ip) => Some(NetGroup::of_ip(IpAddr::V6(*ip))),
            AddrV2::TorV3(pubkey) => Some(NetGroup { network: Network::Onion, bytes: vec![pubkey[0] | 0x0f] }),
            AddrV2::I2p(hash) => Some(NetGroup { network: Network::I2p, bytes: vec![hash[0] | 0x0f] }),
            AddrV2::Cjdns(ip) => {
                let o = ip.octets();
                (o[0] == 0xfc).then(|| NetGroup { network: Network::Cjdns, bytes: vec![o[0], o[1] | 0x0f] })
            }
            AddrV2::TorV2(_) | AddrV2::Unknown(..) => None,
        }
    }

    /// The group that [`to_bytes`](Self::to_bytes) gave these bytes for,
    /// or `None` if no group has this form (unknown class, or a length or
    /// padding the class does not use). `from_bytes(&g.to_bytes()) ==
    /// Some(g)` for every group, and the bytes of a group that comes back
    /// are exactly the input.
    pub fn from_bytes(bytes: &[u8]) -> Option<NetGroup> {
        let (&class, rest) = bytes.split_first()?;
        let network = Network::from_class(class)?;
        let low_nibble_set = |b: u8| b & 0x0f == 0x0f;
        let valid = match network {
            Network::Unroutable => rest.is_empty() || rest == [1],
            Network::Ipv4 => rest.len() == 2,
            Network::Ipv6 => match rest.len() {
                4 => true,
                5 => rest[..4] == [0x20, 0x01, 0x04, 0x70] && low_nibble_set(rest[4]),
                _ => false,
            },
            Network::Onion | Network::I2p => rest.len() == 1 && low_nibble_set(rest[0]),
            Network::Cjdns => rest.len() == 2 && rest[0] == 0xfc && low_nibble_set(rest[1]),
            Network::Name => rest.len() <= 255 && rest.iter().all(|b| b.is_ascii_graphic() && !b.is_ascii_uppercase()),
        };
        valid.then(|| NetGroup { network, bytes: rest.to_vec() })
    }

    fn unroutable(bytes: Vec<u8>) -> NetGroup {
        NetGroup { network: Network::Unroutable, bytes }
    }

    fn ipv4(v4: Ipv4Addr) -> NetGroup {
        let o = v4.octets();
        NetGroup { network: Network::Ipv4, bytes: vec![o[0], o[1]] }
    }

    /// The network of the group.
    pub fn network(&self) -> Network {
        self.network
    }

    /// The group as bytes: the class, then the identifying bits. Feed these
    /// to a keyed hash to place or compare groups without revealing them.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.bytes.len());
        out.push(self.network.class());
        out.extend_from_slice(&self.bytes);
        out
    }

    /// A 64-bit digest of the group under a secret `key`, as Core keys its
    /// groups (`nKeyedNetGroup`): equal groups give equal values, and an
    /// attacker who does not know the key cannot predict their order.
    pub fn keyed(&self, key: (u64, u64)) -> u64 {
        use bitcoin::hashes::siphash24;
        siphash24::Hash::hash_with_keys(key.0, key.1, &self.to_bytes()).as_u64()
    }
}

impl fmt::Debug for NetGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NetGroup({:?}, {:02x?})", self.network, self.bytes)
    }
}

/// Whether `ip` is a loopback address (Core's `IsLocal`: 127.0.0.0/8, 0.0.0.0/8 and ::1).
pub fn is_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_local_v4(v4),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(is_local_v4),
    }
}

fn is_local_v4(v4: Ipv4Addr) -> bool {
    v4.octets()[0] == 127 || v4.octets()[0] == 0
}

/// Core's `IsRoutable` for IPv4: not private (RFC 1918), benchmarking
/// (RFC 2544), link-local (RFC 3927), shared (RFC 6598), documentation
/// (RFC 5737), local, or the unspecified/broadcast addresses.
fn routable_v4(v4: Ipv4Addr) -> bool {
    let o = v4.octets();
    let rfc2544 = o[0] == 198 && (o[1] == 18 || o[1] == 19);
    let rfc6598 = o[0] == 100 && (o[1] & 0xc0) == 64;
    let rfc5737 = matches!((o[0], o[1], o[2]), (192, 0, 2) | (198, 51, 100) | (203, 0, 113));
    !(v4.is_private()
        || rfc2544
        || v4.is_link_local()
        || rfc6598
        || rfc5737
        || is_local_v4(v4)
        || v4.is_broadcast()
        || v4.is_unspecified())
}

/// Core's `IsRoutable` for IPv6: not unique-local (RFC 4193), ORCHID
/// (RFC 4843, 7343), link-local (RFC 4862), documentation (RFC 3849),
/// loopback or unspecified.
fn routable_v6(v6: Ipv6Addr) -> bool {
    let s = v6.segments();
    let rfc4193 = (s[0] & 0xfe00) == 0xfc00;
    let rfc4843 = s[0] == 0x2001 && (s[1] & 0xfff0) == 0x0010;
    let rfc7343 = s[0] == 0x2001 && (s[1] & 0xfff0) == 0x0020;
    let rfc4862 = s[0] == 0xfe80 && s[1] == 0 && s[2] == 0 && s[3] == 0;
    let rfc3849 = s[0] == 0x2001 && s[1] == 0x0db8;
    !(rfc4193 || rfc4843 || rfc7343 || rfc4862 || rfc3849 || v6.is_loopback() || v6.is_unspecified())
}

/// The IPv4 address an IPv6 address carries (Core's `GetLinkedIPv4`):
/// NAT64 (RFC 6052, 64:ff9b::/96), IPv4-translated (RFC 6145,
/// ::ffff:0:0:0/96), 6to4 (RFC 3964, 2002::/16) and Teredo (RFC 4380,
/// 2001::/32, stored inverted).
fn linked_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let o = v6.octets();
    let last = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if o[..12] == [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0] {
        return Some(last);
    }
    if o[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0] {
        return Some(last);
    }
    if o[..2] == [0x20, 0x02] {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    if o[..4] == [0x20, 0x01, 0, 0] {
        return Some(Ipv4Addr::new(!o[12], !o[13], !o[14], !o[15]));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(s: &str) -> Vec<u8> {
        NetGroup::of_ip(s.parse().unwrap()).to_bytes()
    }

    #[test]
    fn groups_follow_bitcoin_core() {
        // Byte vectors as Core's GetGroup produces them (src/test/netbase_tests.cpp).
        assert_eq!(group("127.0.0.1"), [0]); // local
        assert_eq!(group("0.0.0.0"), [0]); // 0.0.0.0/8 is local too
        assert_eq!(group("10.0.0.1"), [0, 1]); // RFC 1918: unroutable
        assert_eq!(group("169.254.1.1"), [0, 1]); // RFC 3927
        assert_eq!(group("1.2.3.4"), [1, 1, 2]); // IPv4 /16
        assert_eq!(group("::FFFF:0:102:304"), [1, 1, 2]); // RFC 6145
        assert_eq!(group("64:FF9B::102:304"), [1, 1, 2]); // RFC 6052
        assert_eq!(group("2002:102:304:9999:9999:9999:9999:9999"), [1, 1, 2]); // RFC 3964
        assert_eq!(group("2001:0:9999:9999:9999:9999:FEFD:FCFB"), [1, 1, 2]); // RFC 4380
        assert_eq!(group("2001:470:abcd:9999:9999:9999:9999:9999"), [2, 0x20, 0x01, 0x04, 0x70, 0xaf]); // he.net /36
        assert_eq!(group("2001:2001:9999:9999:9999:9999:9999:9999"), [2, 0x20, 0x01, 0x20, 0x01]); // IPv6 /32
        assert_eq!(group("::1"), [0]);
        assert_eq!(group("fc00::1"), [0, 1]); // RFC 4193
        assert_eq!(group("2001:db8::1"), [0, 1]); // RFC 3849
        // A mapped IPv4 address is the IPv4 address.
        assert_eq!(group("::ffff:1.2.200.200"), group("1.2.3.4"));
        assert_eq!(group("::ffff:127.0.0.1"), [0]);
    }

    #[test]
    fn onion_groups_use_the_first_four_bits_and_names_their_last_two_labels() {
        let onion = |first: u8| {
            let mut pubkey = [7u8; 32];
            pubkey[0] = first;
            NetGroup::of_target(&Target::Onion { pubkey, port: 8333 })
        };
        assert_eq!(onion(0x00), onion(0x0f));
        assert_ne!(onion(0x00), onion(0x10));
        assert_eq!(onion(0x3c).to_bytes(), [3, 0x3f]);
        let name = |host: &str| NetGroup::of_target(&format!("{host}:8333").parse().unwrap());
        assert_eq!(name("seed.bitcoin.sipa.be"), name("other.SIPA.be"));
        assert_ne!(name("seed.bitcoin.sipa.be"), name("seed.bitcoinstats.com"));
    }

    #[test]
    fn addr_v2_groups_follow_bitcoin_core() {
        let g = |addr: AddrV2| NetGroup::of_addr_v2(&addr).map(|g| g.to_bytes());
        assert_eq!(g(AddrV2::Ipv4("1.2.3.4".parse().unwrap())), Some(vec![1, 1, 2]));
        assert_eq!(g(AddrV2::Ipv4("127.0.0.1".parse().unwrap())), Some(vec![0]));
        assert_eq!(g(AddrV2::Ipv6("2001:2001::1".parse().unwrap())), Some(vec![2, 0x20, 0x01, 0x20, 0x01]));
        // Mapped and 6to4 addresses are grouped by the IPv4 address inside.
        assert_eq!(g(AddrV2::Ipv6("::ffff:1.2.9.9".parse().unwrap())), Some(vec![1, 1, 2]));
        assert_eq!(g(AddrV2::Ipv6("2002:102:304::1".parse().unwrap())), Some(vec![1, 1, 2]));
        // Tor and I2P: the network and the first 4 bits (Core's netgroup tests).
        let mut key = [0u8; 32];
        key[0] = 0x3c;
        assert_eq!(g(AddrV2::TorV3(key)), Some(vec![3, 0x3f]));
        assert_eq!(g(AddrV2::I2p(key)), Some(vec![4, 0x3f]));
        // The TorV3 group is the onion target's group.
        assert_eq!(
            NetGroup::of_addr_v2(&AddrV2::TorV3(key)),
            Some(NetGroup::of_target(&Target::Onion { pubkey: key, port: 1 }))
        );
        // CJDNS: 12 bits, the constant fc byte then 4 bits.
        assert_eq!(g(AddrV2::Cjdns("fc12:3456::1".parse().unwrap())), Some(vec![5, 0xfc, 0x1f]));
        assert_eq!(g(AddrV2::Cjdns("fc1f:ffff::1".parse().unwrap())), Some(vec![5, 0xfc, 0x1f]));
        assert_eq!(g(AddrV2::Cjdns("fd00::1".parse().unwrap())), None);
        assert_eq!(g(AddrV2::TorV2([1; 10])), None);
        assert_eq!(g(AddrV2::Unknown(42, vec![1, 2])), None);
    }

    #[test]
    fn group_bytes_round_trip_and_malformed_bytes_are_refused() {
        let groups = [
            NetGroup::of_ip("127.0.0.1".parse().unwrap()),
            NetGroup::of_ip("10.0.0.1".parse().unwrap()),
            NetGroup::of_ip("1.2.3.4".parse().unwrap()),
            NetGroup::of_ip("2001:2001::1".parse().unwrap()),
            NetGroup::of_ip("2001:470:abcd::1".parse().unwrap()),
            NetGroup::of_addr_v2(&AddrV2::TorV3([0x71; 32])).unwrap(),
            NetGroup::of_addr_v2(&AddrV2::I2p([0x02; 32])).unwrap(),
            NetGroup::of_addr_v2(&AddrV2::Cjdns("fc99::1".parse().unwrap())).unwrap(),
            NetGroup::of_target(&"seed.bitcoin.sipa.be:8333".parse().unwrap()),
        ];
        for group in groups {
            let bytes = group.to_bytes();
            assert_eq!(NetGroup::from_bytes(&bytes), Some(group.clone()), "{group:?}");
        }
        for bad in [
            &[][..],
            &[7],
            &[0, 2],
            &[1, 1],
            &[1, 1, 2, 3],
            &[2, 0x20, 0x01, 0x20, 0x01, 0xff],
            &[3, 0x30],
            &[4],
            &[5, 0xfd, 0x1f],
            &[0xfe, b'A'],
            &[0xfe, b' '],
        ] {
            assert_eq!(NetGroup::from_bytes(bad), None, "{bad:02x?}");
        }
    }

    #[test]
    fn keyed_groups_are_equal_for_equal_groups_and_depend_on_the_key() {
        let a = NetGroup::of_ip("1.2.3.4".parse().unwrap());
        let b = NetGroup::of_ip("1.2.9.9".parse().unwrap());
        let c = NetGroup::of_ip("1.3.0.1".parse().unwrap());
        assert_eq!(a.keyed((1, 2)), b.keyed((1, 2)));
        assert_ne!(a.keyed((1, 2)), c.keyed((1, 2)));
        assert_ne!(a.keyed((1, 2)), a.keyed((3, 4)));
    }
}
