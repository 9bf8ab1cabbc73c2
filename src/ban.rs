//! A sans-IO ban list: IP subnets banned until a time, a fast lookup for the
//! accept path, and a versioned, checksummed byte format to keep it across
//! restarts.
//!
//! Nothing here reads a clock or touches a file: times are unix seconds
//! (`u64`) passed in by the caller, and persistence is [`BanList::to_bytes`]
//! and [`BanList::from_bytes`]; where the bytes are kept is the caller's
//! choice.
//!
//! A ban covers a [`Subnet`] from its `created` time until (not including)
//! its `until` time: at `now` it is live while `now < until`, as in Bitcoin
//! Core's `BanMan::IsBanned`.
//!
//! IPv4 and IPv6 are separate address spaces, as in Bitcoin Core's
//! `CNetAddr`: an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is the IPv4
//! address `a.b.c.d` everywhere (in [`Subnet::new`], parsing and
//! [`Subnet::contains`]), an IPv4 subnet never contains any other IPv6
//! address, and an IPv6 subnet (even `::/0`) never contains an IPv4 address.
//!
//! # Byte format (version 1)
//!
//! All integers are little-endian.
//!
//! | bytes | field |
//! |---|---|
//! | 6 | magic `PLBANS` |
//! | 1 | version, 1 |
//! | 4 | number of entries, at most [`MAX_BANS`] |
//! | 22 or 34 each | entries, in ascending [`Subnet`] order, no two alike |
//! | 4 | checksum: the first 4 bytes of SHA256d of everything before it |
//!
//! An entry is: the family (1 byte, `4` or `6`), the network address (4 or
//! 16 bytes, in network order, with every bit below the prefix length zero;
//! an IPv4-mapped address is written as family 4), the prefix length (1
//! byte, at most 32 or 128), `created` (8 bytes) and `until` (8 bytes).
//!
//! There is exactly one encoding of each list, and [`BanList::from_bytes`]
//! accepts only that one: it refuses a list with an entry out of order or
//! repeated, host bits set, a mapped address written as IPv6, a prefix out
//! of range, bytes after the checksum, or a bad checksum, and then returns no
//! list at all (a list is never half-loaded).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use bitcoin::hashes::{Hash, sha256d};

#[cfg(test)]
mod tests;

/// The most bans a [`BanList`] holds, and the most entries
/// [`BanList::from_bytes`] accepts.
///
/// Bitcoin Core's ban list has no cap, but a list that anything can grow
/// needs one: 65,536 bans is far more than an operator bans by hand or a
/// node collects from misbehaving peers, while it bounds the list at about
/// 5.5 MB in memory (a hash table of 40-byte entries) and its encoding at
/// 2,228,239 bytes (every entry IPv6), and so what a damaged or hostile file
/// can make the loader allocate.
pub const MAX_BANS: usize = 65_536;

/// The first bytes of an encoded ban list.
const MAGIC: [u8; 6] = *b"PLBANS";
/// The version of the byte format that [`BanList::to_bytes`] writes and
/// [`BanList::from_bytes`] reads.
const VERSION: u8 = 1;
/// Magic, version and entry count.
const HEADER_LEN: usize = MAGIC.len() + 1 + 4;
/// The truncated SHA256d at the end.
const CHECKSUM_LEN: usize = 4;
/// Family, prefix length, `created` and `until`: an entry without its address.
const ENTRY_FIXED_LEN: usize = 1 + 1 + 8 + 8;
/// An IPv4 entry, the shortest.
const ENTRY_V4_LEN: usize = ENTRY_FIXED_LEN + 4;
/// An IPv6 entry, the longest.
const ENTRY_V6_LEN: usize = ENTRY_FIXED_LEN + 16;
/// The family byte of an IPv4 entry.
const FAMILY_V4: u8 = 4;
/// The family byte of an IPv6 entry.
const FAMILY_V6: u8 = 6;
/// The prefix length of `::ffff:0:0/96`, the IPv4-mapped IPv6 addresses.
const MAPPED_PREFIX: u8 = 96;

/// The network mask of an IPv4 prefix length (at most 32).
fn mask_v4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

/// The network mask of an IPv6 prefix length (at most 128).
fn mask_v6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// An IP network: an address and a prefix length, the address's bits below
/// the prefix length zero.
///
/// IPv4-mapped IPv6 addresses are IPv4 (see the [module docs](self)); host
/// bits are cleared on construction, so `1.2.3.4/24` and `1.2.3.0/24` are
/// the same subnet.
///
/// Subnets are ordered IPv4 before IPv6, then by address (as a big-endian
/// number), then by prefix length; this is the order of
/// [`BanList::list`] and of the byte format.
///
/// ```
/// use peerlink::ban::Subnet;
///
/// let net: Subnet = "1.2.3.4/24".parse()?;
/// assert_eq!(net.to_string(), "1.2.3.0/24");
/// assert!(net.contains(&"1.2.3.200".parse()?));
/// assert!(net.contains(&"::ffff:1.2.3.200".parse()?)); // IPv4-mapped
/// assert!(!net.contains(&"1.2.4.0".parse()?));
/// assert_eq!("1.2.3.0/255.255.255.0".parse::<Subnet>()?, net);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subnet {
    /// Never an IPv4-mapped IPv6 address; zero below `prefix`.
    addr: IpAddr,
    /// At most 32 for IPv4, 128 for IPv6.
    prefix: u8,
}

impl Subnet {
    /// The network of `addr` with `prefix` leading bits: at most 32 for an
    /// IPv4 address, 128 for an IPv6 one. Host bits are cleared.
    ///
    /// An IPv4-mapped address (`::ffff:a.b.c.d`) gives the IPv4 subnet with
    /// `prefix - 96` bits, so `::ffff:1.2.3.0/120` is `1.2.3.0/24`, and a
    /// prefix below 96 is refused ([`SubnetError::MappedPrefix`]): such a
    /// network reaches outside the mapped addresses, which are IPv4 here.
    /// (Bitcoin Core reads the prefix of a mapped address in IPv4 terms
    /// instead: its `::ffff:1.2.3.0/24` is `1.2.3.0/24`, which this
    /// refuses.)
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Subnet, SubnetError> {
        match addr {
            IpAddr::V4(v4) => Subnet::v4(v4, prefix),
            IpAddr::V6(v6) => {
                if prefix > 128 {
                    return Err(SubnetError::PrefixTooLong { prefix, max: 128 });
                }
                match v6.to_ipv4_mapped() {
                    Some(_) if prefix < MAPPED_PREFIX => Err(SubnetError::MappedPrefix { prefix }),
                    Some(v4) => Subnet::v4(v4, prefix - MAPPED_PREFIX),
                    None => {
                        let bits = u128::from(v6) & mask_v6(prefix);
                        Ok(Subnet { addr: IpAddr::V6(Ipv6Addr::from(bits)), prefix })
                    }
                }
            }
        }
    }

    fn v4(addr: Ipv4Addr, prefix: u8) -> Result<Subnet, SubnetError> {
        if prefix > 32 {
            return Err(SubnetError::PrefixTooLong { prefix, max: 32 });
        }
        let bits = u32::from(addr) & mask_v4(prefix);
        Ok(Subnet { addr: IpAddr::V4(Ipv4Addr::from(bits)), prefix })
    }

    /// The subnet of `addr` alone: a /32 for IPv4 (and IPv4-mapped IPv6),
    /// a /128 for IPv6.
    pub fn host(addr: IpAddr) -> Subnet {
        match addr.to_canonical() {
            IpAddr::V4(v4) => Subnet { addr: IpAddr::V4(v4), prefix: 32 },
            IpAddr::V6(v6) => Subnet { addr: IpAddr::V6(v6), prefix: 128 },
        }
    }

    /// The network address: the lowest address of the subnet, never
    /// IPv4-mapped.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length: at most 32 for IPv4, 128 for IPv6.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in the subnet. An IPv4-mapped `ip` is taken as its
    /// IPv4 address; otherwise an IPv4 subnet holds no IPv6 address and an
    /// IPv6 subnet no IPv4 address.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => u32::from(ip) & mask_v4(self.prefix) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(ip)) => u128::from(ip) & mask_v6(self.prefix) == u128::from(net),
            _ => false,
        }
    }
}

impl From<IpAddr> for Subnet {
    /// [`Subnet::host`].
    fn from(addr: IpAddr) -> Subnet {
        Subnet::host(addr)
    }
}

impl Ord for Subnet {
    fn cmp(&self, other: &Subnet) -> std::cmp::Ordering {
        let addr = match (self.addr, other.addr) {
            (IpAddr::V4(a), IpAddr::V4(b)) => a.octets().cmp(&b.octets()),
            (IpAddr::V6(a), IpAddr::V6(b)) => a.octets().cmp(&b.octets()),
            (IpAddr::V4(_), IpAddr::V6(_)) => std::cmp::Ordering::Less,
            (IpAddr::V6(_), IpAddr::V4(_)) => std::cmp::Ordering::Greater,
        };
        addr.then(self.prefix.cmp(&other.prefix))
    }
}

impl PartialOrd for Subnet {
    fn partial_cmp(&self, other: &Subnet) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Subnet {
    /// Always `ADDR/PREFIX`, also for a single host (`1.2.3.4/32`,
    /// `::1/128`), as Bitcoin Core's `listbanned` shows it; the text parses
    /// back to the same subnet.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = SubnetError;

    /// Reads `ADDR`, `ADDR/PREFIX` or `ADDR/NETMASK`, as Bitcoin Core's
    /// `setban` does: `1.2.3.4` (a host), `1.2.3.0/24`, `2001:db8::/32`,
    /// `::1`, `1.2.3.0/255.255.255.0`. `PREFIX` is decimal; a `NETMASK` is
    /// an address of the same family as `ADDR` (as written) whose one bits
    /// all come before its zero bits. IPv6 addresses are written without
    /// brackets or a zone; no whitespace is allowed.
    fn from_str(s: &str) -> Result<Subnet, SubnetError> {
        let (addr, suffix) = match s.split_once('/') {
            Some((addr, suffix)) => (addr, Some(suffix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| SubnetError::InvalidAddress)?;
        let Some(suffix) = suffix else { return Ok(Subnet::host(addr)) };
        if !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()) {
            let prefix = suffix.parse::<u8>().map_err(|_| SubnetError::InvalidPrefix)?;
            return Subnet::new(addr, prefix);
        }
        let mask: IpAddr = suffix.parse().map_err(|_| SubnetError::InvalidPrefix)?;
        let prefix = match (addr, mask) {
            (IpAddr::V4(_), IpAddr::V4(mask)) => {
                let bits = u32::from(mask);
                let ones = bits.leading_ones() as u8;
                (bits == mask_v4(ones)).then_some(ones)
            }
            (IpAddr::V6(_), IpAddr::V6(mask)) => {
                let bits = u128::from(mask);
                let ones = bits.leading_ones() as u8;
                (bits == mask_v6(ones)).then_some(ones)
            }
            _ => return Err(SubnetError::NetmaskFamily),
        };
        Subnet::new(addr, prefix.ok_or(SubnetError::NetmaskNotContiguous)?)
    }
}

/// Why a [`Subnet`] could not be made or parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubnetError {
    /// The text before any `/` is not an IPv4 or IPv6 address.
    InvalidAddress,
    /// The text after `/` is neither a decimal prefix length from 0 to 255
    /// nor an IP address (a netmask).
    InvalidPrefix,
    /// The prefix length is above 32 for an IPv4 address, or above 128 for
    /// an IPv6 address.
    PrefixTooLong {
        /// The prefix length given.
        prefix: u8,
        /// The longest for the family: 32 or 128.
        max: u8,
    },
    /// The prefix length of an IPv4-mapped IPv6 address is below 96, so the
    /// network is not within the mapped addresses (see [`Subnet::new`]).
    MappedPrefix {
        /// The prefix length given.
        prefix: u8,
    },
    /// The netmask has a zero bit before a one bit.
    NetmaskNotContiguous,
    /// The netmask is IPv4 and the address IPv6, or the other way round.
    NetmaskFamily,
}

impl fmt::Display for SubnetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubnetError::InvalidAddress => f.write_str("invalid ip address"),
            SubnetError::InvalidPrefix => f.write_str("invalid prefix length or netmask"),
            SubnetError::PrefixTooLong { prefix, max } => {
                let family = if *max == 32 { "ipv4" } else { "ipv6" };
                write!(f, "prefix length {prefix} is above {max} for {family}")
            }
            SubnetError::MappedPrefix { prefix } => {
                write!(f, "prefix length {prefix} is below {MAPPED_PREFIX} for an ipv4-mapped address")
            }
            SubnetError::NetmaskNotContiguous => f.write_str("netmask is not contiguous"),
            SubnetError::NetmaskFamily => f.write_str("netmask and address are of different families"),
        }
    }
}

impl std::error::Error for SubnetError {}

/// One ban: a subnet, banned from `created` until `until` (unix seconds).
///
/// It is live at `now` while `now < until`; `created` is kept for display
/// and persistence only.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ban {
    /// The banned subnet.
    pub subnet: Subnet,
    /// The first second (unix time) at which the ban no longer holds.
    pub until: u64,
    /// When the ban was made (unix time).
    pub created: u64,
}

/// A ban without its subnet (the key it is stored under).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Times {
    created: u64,
    until: u64,
}

impl Times {
    fn ban(self, subnet: Subnet) -> Ban {
        Ban { subnet, until: self.until, created: self.created }
    }
}

/// The prefix lengths in use for one address family, for
/// [`BanList::is_banned`]: how many bans have each length, and the lengths
/// with at least one, in ascending order.
#[derive(Clone, PartialEq, Eq)]
struct Prefixes<const N: usize> {
    counts: [u32; N],
    in_use: Vec<u8>,
}

impl<const N: usize> Prefixes<N> {
    fn new() -> Self {
        Prefixes { counts: [0; N], in_use: Vec::new() }
    }

    fn add(&mut self, prefix: u8) {
        let count = &mut self.counts[usize::from(prefix)];
        *count += 1;
        if *count == 1 {
            let at = self.in_use.partition_point(|&p| p < prefix);
            self.in_use.insert(at, prefix);
        }
    }

    fn remove(&mut self, prefix: u8) {
        let count = &mut self.counts[usize::from(prefix)];
        *count -= 1;
        if *count == 0 {
            self.in_use.retain(|&p| p != prefix);
        }
    }
}

/// The set of bans: at most [`MAX_BANS`], one per [`Subnet`].
///
/// [`BanList::is_banned`] costs one hash lookup per distinct prefix length
/// in use in the address's family (so at most 33 for IPv4 and 129 for IPv6,
/// and usually one or two), whatever the number of bans.
///
/// Expired bans stay in the list (and count towards [`len`](BanList::len)
/// and [`MAX_BANS`]) until [`sweep`](BanList::sweep) removes them, but
/// never ban anyone: every query takes `now`.
///
/// ```
/// use peerlink::ban::{BanList, Subnet};
///
/// let now = 1_700_000_000;
/// let mut bans = BanList::new();
/// bans.ban("203.0.113.0/24".parse::<Subnet>()?, now, now + 24 * 60 * 60)?;
///
/// assert!(bans.is_banned(&"203.0.113.7".parse()?, now));
/// assert!(bans.is_banned(&"::ffff:203.0.113.7".parse()?, now)); // IPv4-mapped
/// assert!(!bans.is_banned(&"203.0.114.7".parse()?, now));
/// assert!(!bans.is_banned(&"203.0.113.7".parse()?, now + 24 * 60 * 60)); // expired
///
/// let bytes = bans.to_bytes();
/// let loaded = BanList::from_bytes(&bytes)?;
/// assert_eq!(loaded, bans);
/// assert_eq!(loaded.list(now)[0].subnet.to_string(), "203.0.113.0/24");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct BanList {
    bans: HashMap<Subnet, Times>,
    v4: Prefixes<33>,
    v6: Prefixes<129>,
}

impl BanList {
    /// An empty list.
    pub fn new() -> BanList {
        BanList { bans: HashMap::new(), v4: Prefixes::new(), v6: Prefixes::new() }
    }

    /// Bans `subnet` from `created` until `until` (unix seconds).
    ///
    /// If `subnet` is banned already, the ban with the later `until` is kept
    /// whole (its `created` too), and on a tie the existing one, as Bitcoin
    /// Core's `BanMan::Ban` does; a shorter ban never shortens a longer one.
    /// The times are not checked against each other or a clock: a ban whose
    /// `until` has passed is stored and bans no one.
    ///
    /// Fails, changing nothing, when `subnet` is new and the list holds
    /// [`MAX_BANS`] bans already; [`sweep`](BanList::sweep) may make room.
    pub fn ban(&mut self, subnet: Subnet, created: u64, until: u64) -> Result<(), BanError> {
        let full = self.bans.len() >= MAX_BANS;
        match self.bans.entry(subnet) {
            Entry::Occupied(mut entry) => {
                if entry.get().until < until {
                    *entry.get_mut() = Times { created, until };
                }
            }
            Entry::Vacant(_) if full => return Err(BanError::Full),
            Entry::Vacant(entry) => {
                entry.insert(Times { created, until });
                self.index_add(subnet);
            }
        }
        Ok(())
    }

    /// Removes the ban on exactly `subnet` (not on the subnets inside or
    /// around it), live or expired. Returns whether there was one.
    pub fn unban(&mut self, subnet: &Subnet) -> bool {
        let removed = self.bans.remove(subnet).is_some();
        if removed {
            self.index_remove(*subnet);
        }
        removed
    }

    /// Whether a ban live at `now` covers `ip` (IPv4-mapped addresses are
    /// IPv4). One hash lookup per prefix length in use in `ip`'s family.
    pub fn is_banned(&self, ip: &IpAddr, now: u64) -> bool {
        let live = |subnet: Subnet| self.bans.get(&subnet).is_some_and(|ban| now < ban.until);
        match ip.to_canonical() {
            IpAddr::V4(ip) => {
                let bits = u32::from(ip);
                self.v4
                    .in_use
                    .iter()
                    .any(|&prefix| live(Subnet { addr: IpAddr::V4(Ipv4Addr::from(bits & mask_v4(prefix))), prefix }))
            }
            IpAddr::V6(ip) => {
                let bits = u128::from(ip);
                self.v6
                    .in_use
                    .iter()
                    .any(|&prefix| live(Subnet { addr: IpAddr::V6(Ipv6Addr::from(bits & mask_v6(prefix))), prefix }))
            }
        }
    }

    /// Removes the bans that have expired at `now` (`until <= now`) and
    /// returns how many.
    pub fn sweep(&mut self, now: u64) -> usize {
        let before = self.bans.len();
        let (v4, v6) = (&mut self.v4, &mut self.v6);
        self.bans.retain(|subnet, times| {
            let keep = now < times.until;
            if !keep {
                match subnet.addr {
                    IpAddr::V4(_) => v4.remove(subnet.prefix),
                    IpAddr::V6(_) => v6.remove(subnet.prefix),
                }
            }
            keep
        });
        before - self.bans.len()
    }

    /// The bans live at `now` (`now < until`), in [`Subnet`] order.
    pub fn list(&self, now: u64) -> Vec<Ban> {
        let mut live: Vec<Ban> =
            self.bans.iter().filter(|(_, times)| now < times.until).map(|(&subnet, times)| times.ban(subnet)).collect();
        live.sort_unstable_by_key(|ban| ban.subnet);
        live
    }

    /// How many bans the list holds, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.bans.len()
    }

    /// Whether the list holds no ban at all, expired or not.
    pub fn is_empty(&self) -> bool {
        self.bans.is_empty()
    }

    /// Every ban, expired ones included, in [`Subnet`] order.
    fn sorted(&self) -> Vec<Ban> {
        let mut all: Vec<Ban> = self.bans.iter().map(|(&subnet, times)| times.ban(subnet)).collect();
        all.sort_unstable_by_key(|ban| ban.subnet);
        all
    }

    /// The list in the byte format of the [module docs](self), every ban
    /// (expired ones too) in [`Subnet`] order. The same list always gives the
    /// same bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let sorted = self.sorted();
        let entries: usize =
            sorted.iter().map(|ban| if ban.subnet.addr.is_ipv4() { ENTRY_V4_LEN } else { ENTRY_V6_LEN }).sum();
        let mut out = Vec::with_capacity(HEADER_LEN + entries + CHECKSUM_LEN);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        let count = u32::try_from(sorted.len()).expect("a ban list holds at most MAX_BANS bans");
        out.extend_from_slice(&count.to_le_bytes());
        for ban in sorted {
            match ban.subnet.addr {
                IpAddr::V4(addr) => {
                    out.push(FAMILY_V4);
                    out.extend_from_slice(&addr.octets());
                }
                IpAddr::V6(addr) => {
                    out.push(FAMILY_V6);
                    out.extend_from_slice(&addr.octets());
                }
            }
            out.push(ban.subnet.prefix);
            out.extend_from_slice(&ban.created.to_le_bytes());
            out.extend_from_slice(&ban.until.to_le_bytes());
        }
        let checksum = checksum(&out);
        out.extend_from_slice(&checksum);
        out
    }

    /// Reads a list written by [`to_bytes`](BanList::to_bytes), refusing
    /// anything else whole: a list is returned only if every byte of `bytes`
    /// is exactly as `to_bytes` would write it.
    ///
    /// Expired bans are kept; the caller sweeps them with its clock.
    ///
    /// The checks come in this order, so that a damaged file is reported as
    /// damaged ([`BanListError::Truncated`], [`BanListError::BadChecksum`])
    /// rather than by the first odd field the damage produced: magic, version,
    /// the entry count (against [`MAX_BANS`], and against the bytes left, so
    /// nothing is allocated for entries that are not there), each entry's
    /// family (which gives its length), the length of the whole, the
    /// checksum, and then each entry's fields and order.
    pub fn from_bytes(bytes: &[u8]) -> Result<BanList, BanListError> {
        let (magic, rest) = bytes.split_first_chunk::<6>().ok_or(BanListError::Truncated)?;
        if *magic != MAGIC {
            return Err(BanListError::BadMagic);
        }
        let (&version, rest) = rest.split_first().ok_or(BanListError::Truncated)?;
        if version != VERSION {
            return Err(BanListError::UnsupportedVersion(version));
        }
        let (count, mut rest) = rest.split_first_chunk::<4>().ok_or(BanListError::Truncated)?;
        let count = u32::from_le_bytes(*count);
        if usize::try_from(count).is_ok_and(|count| count > MAX_BANS) {
            return Err(BanListError::TooMany { count });
        }
        // At most MAX_BANS: fits in usize, and the product cannot overflow.
        let count = count as usize;
        if count * ENTRY_V4_LEN + CHECKSUM_LEN > rest.len() {
            return Err(BanListError::Truncated);
        }

        // The structure first: split the entries off by their families.
        let mut entries = Vec::with_capacity(count);
        for index in 0..count {
            let index = index as u32;
            let len = match rest.first() {
                Some(&FAMILY_V4) => ENTRY_V4_LEN,
                Some(&FAMILY_V6) => ENTRY_V6_LEN,
                Some(&family) => return Err(BanListError::BadEntry { index, reason: EntryError::Family(family) }),
                None => return Err(BanListError::Truncated),
            };
            let (entry, tail) = rest.split_at_checked(len).ok_or(BanListError::Truncated)?;
            entries.push(entry);
            rest = tail;
        }
        let (sum, trailing) = rest.split_first_chunk::<CHECKSUM_LEN>().ok_or(BanListError::Truncated)?;
        if !trailing.is_empty() {
            return Err(BanListError::TrailingBytes { len: trailing.len() });
        }
        let body = &bytes[..bytes.len() - CHECKSUM_LEN];
        if checksum(body) != *sum {
            return Err(BanListError::BadChecksum);
        }

        // Then the fields, and the order.
        let mut list = BanList::new();
        list.bans.reserve(count);
        let mut previous: Option<Subnet> = None;
        for (index, entry) in entries.into_iter().enumerate() {
            let index = index as u32;
            let bad = |reason| BanListError::BadEntry { index, reason };
            let subnet = decode_subnet(entry).map_err(bad)?;
            if let Some(previous) = previous {
                match subnet.cmp(&previous) {
                    std::cmp::Ordering::Less => return Err(bad(EntryError::OutOfOrder)),
                    std::cmp::Ordering::Equal => return Err(bad(EntryError::Duplicate)),
                    std::cmp::Ordering::Greater => {}
                }
            }
            previous = Some(subnet);
            let times = &entry[entry.len() - 16..];
            let created = u64::from_le_bytes(times[..8].try_into().expect("8 bytes"));
            let until = u64::from_le_bytes(times[8..].try_into().expect("8 bytes"));
            list.bans.insert(subnet, Times { created, until });
            list.index_add(subnet);
        }
        Ok(list)
    }

    fn index_add(&mut self, subnet: Subnet) {
        match subnet.addr {
            IpAddr::V4(_) => self.v4.add(subnet.prefix),
            IpAddr::V6(_) => self.v6.add(subnet.prefix),
        }
    }

    fn index_remove(&mut self, subnet: Subnet) {
        match subnet.addr {
            IpAddr::V4(_) => self.v4.remove(subnet.prefix),
            IpAddr::V6(_) => self.v6.remove(subnet.prefix),
        }
    }
}

/// The subnet of one entry whose family byte and length are already known
/// to match, if it is in canonical form.
fn decode_subnet(entry: &[u8]) -> Result<Subnet, EntryError> {
    let (family, rest) = entry.split_first().expect("an entry starts with its family");
    let (addr, max) = match *family {
        FAMILY_V4 => {
            let octets: [u8; 4] = rest[..4].try_into().expect("an IPv4 entry has 4 address bytes");
            (IpAddr::V4(Ipv4Addr::from(octets)), 32)
        }
        _ => {
            let octets: [u8; 16] = rest[..16].try_into().expect("an IPv6 entry has 16 address bytes");
            let addr = Ipv6Addr::from(octets);
            if addr.to_ipv4_mapped().is_some() {
                return Err(EntryError::Mapped);
            }
            (IpAddr::V6(addr), 128)
        }
    };
    let prefix = rest[addr_len(&addr)];
    if prefix > max {
        return Err(EntryError::Prefix { prefix, max });
    }
    let subnet = Subnet::new(addr, prefix).expect("the prefix is in range and the address not mapped");
    if subnet.addr != addr {
        return Err(EntryError::HostBits);
    }
    Ok(subnet)
}

fn addr_len(addr: &IpAddr) -> usize {
    if addr.is_ipv4() { 4 } else { 16 }
}

/// The first 4 bytes of SHA256d of `body`.
fn checksum(body: &[u8]) -> [u8; CHECKSUM_LEN] {
    let hash = sha256d::Hash::hash(body);
    let mut sum = [0; CHECKSUM_LEN];
    sum.copy_from_slice(&hash.as_byte_array()[..CHECKSUM_LEN]);
    sum
}

impl Default for BanList {
    fn default() -> BanList {
        BanList::new()
    }
}

impl fmt::Debug for BanList {
    /// Every ban, expired ones included, in [`Subnet`] order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BanList").field("bans", &self.sorted()).finish()
    }
}

/// Why [`BanList::ban`] refused a ban.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BanError {
    /// The list holds [`MAX_BANS`] bans, and the subnet is not one of them.
    Full,
}

impl fmt::Display for BanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BanError::Full => write!(f, "ban list is full ({MAX_BANS} bans)"),
        }
    }
}

impl std::error::Error for BanError {}

/// Why [`Handle::import_bans`](crate::Handle::import_bans) refused its
/// input; nothing was added.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImportError {
    /// The bytes are not a valid ban list.
    Decode(BanListError),
    /// The bans would not fit beside those already listed.
    Full(BanError),
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImportError::Decode(_) => f.write_str("cannot import the ban list"),
            ImportError::Full(_) => f.write_str("cannot import the ban list: no room"),
        }
    }
}

impl std::error::Error for ImportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ImportError::Decode(e) => Some(e),
            ImportError::Full(e) => Some(e),
        }
    }
}

/// Why [`BanList::from_bytes`] refused its input.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BanListError {
    /// The input ends before the list does.
    Truncated,
    /// The input does not start with the magic `PLBANS`.
    BadMagic,
    /// The list is in a version of the format this release cannot read.
    UnsupportedVersion(u8),
    /// The entry count is above [`MAX_BANS`].
    TooMany {
        /// The entry count read.
        count: u32,
    },
    /// There are bytes after the checksum.
    TrailingBytes {
        /// How many.
        len: usize,
    },
    /// The checksum does not match: the list is damaged.
    BadChecksum,
    /// An entry is not in canonical form; the reason is the
    /// [`source`](std::error::Error::source).
    BadEntry {
        /// The entry's position, from 0.
        index: u32,
        /// What is wrong with it.
        reason: EntryError,
    },
}

impl fmt::Display for BanListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BanListError::Truncated => f.write_str("ban list is truncated"),
            BanListError::BadMagic => f.write_str("not a ban list (bad magic)"),
            BanListError::UnsupportedVersion(version) => {
                write!(f, "unsupported ban list version {version} (expected {VERSION})")
            }
            BanListError::TooMany { count } => write!(f, "ban list has {count} entries (at most {MAX_BANS})"),
            BanListError::TrailingBytes { len } => write!(f, "{len} bytes after the ban list's checksum"),
            BanListError::BadChecksum => f.write_str("ban list checksum mismatch"),
            BanListError::BadEntry { index, .. } => write!(f, "invalid ban list entry {index}"),
        }
    }
}

impl std::error::Error for BanListError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BanListError::BadEntry { reason, .. } => Some(reason),
            _ => None,
        }
    }
}

/// What is wrong with one entry of an encoded ban list
/// ([`BanListError::BadEntry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EntryError {
    /// The family byte is not 4 or 6.
    Family(u8),
    /// The prefix length is above 32 (IPv4) or 128 (IPv6).
    Prefix {
        /// The prefix length read.
        prefix: u8,
        /// The longest for the family: 32 or 128.
        max: u8,
    },
    /// The address has a one bit below the prefix length.
    HostBits,
    /// A family 6 entry holds an IPv4-mapped address, which is written as
    /// family 4.
    Mapped,
    /// The subnet comes before the previous entry's in [`Subnet`] order.
    OutOfOrder,
    /// The subnet is the previous entry's.
    Duplicate,
}

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryError::Family(family) => write!(f, "unknown address family {family} (expected 4 or 6)"),
            EntryError::Prefix { prefix, max } => write!(f, "prefix length {prefix} is above {max}"),
            EntryError::HostBits => f.write_str("address has bits set below its prefix length"),
            EntryError::Mapped => f.write_str("ipv4-mapped address written as ipv6"),
            EntryError::OutOfOrder => f.write_str("subnet sorts before the previous entry's"),
            EntryError::Duplicate => f.write_str("same subnet as the previous entry"),
        }
    }
}

impl std::error::Error for EntryError {}
