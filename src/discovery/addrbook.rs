//! The address book: where outbound peers come from, bucketed as Bitcoin
//! Core's addrman (`src/addrman.cpp`) so that an attacker who controls a few
//! network ranges cannot fill it.
//!
//! Sans-IO: nothing here reads a clock, a socket or the operating system's
//! random source. Times are unix seconds passed in (`now`), the random
//! choices come from a ChaCha20 stream keyed from the seed given to
//! [`AddrBook::new`], and the book is saved and loaded as bytes
//! ([`AddrBook::export`], [`AddrBook::import`]).
//!
//! ## Tables and buckets
//!
//! Addresses heard of but never connected to live in the *new* table, 1,024
//! buckets of 64 slots; addresses we have connected to ([`AddrBook::good`])
//! move to the *tried* table, 256 buckets of 64 slots: at most 81,920
//! entries, as in Core. Slots are chosen with a secret key (derived from the
//! seed) so that an attacker cannot aim at them:
//!
//! - new table: the bucket is a keyed hash of the address's group and the
//!   *source's* group (who told us), where the source group alone chooses
//!   among only 64 buckets. However many addresses one source sends, they
//!   land in at most 64 of the 1,024 buckets, and addresses of one group from
//!   one source in exactly one;
//! - tried table: the bucket is a keyed hash of the address's group and
//!   of the address, where the group alone chooses among 8 buckets;
//! - the slot within the bucket is a keyed hash of the bucket and the
//!   address.
//!
//! A new address whose slot is taken replaces the occupant only if that one
//! is [terrible](Record::is_terrible), else it is dropped. An address moving
//! to tried whose slot is taken does not evict the occupant at once: as in
//! Core (test-before-evict), it waits in a small collision set while the
//! caller tests the occupant ([`AddrBook::select_tried_collision`]), and
//! [`AddrBook::resolve_collisions`] keeps whichever answered.
//!
//! Choices made here where Core differs:
//!
//! - **One new-table slot per address.** Core lets an address sit in up to
//!   8 new buckets (one per source that sent it, each added with falling
//!   probability); here the first source to tell us an address places it,
//!   and later sources only refresh its services and time. Selection is
//!   then uniform over buckets, not weighted by how many sources repeated an
//!   address, and the file format needs no reference counts.
//! - **Unroutable addresses** (loopback, private ranges) are refused as in
//!   Core unless [`AddrBook::set_allow_unroutable`] is on (regtest, loopback
//!   tests). When stored, each is bucketed as a group of its own (the
//!   address and port), so that a few local nodes on different ports do not
//!   all compete for the 64 slots of one bucket.
//! - **Tried entries are never removed** except by a newer tried entry
//!   taking their slot (which moves them back to new), as in Core;
//!   [`AddrBook::remove_terrible`] sweeps the new table only.
//! - **Selection filters** by network and services ([`Query`]); Core's
//!   `Select` filters by network only. When matching entries are rare
//!   (fewer than one per 16 non-empty buckets), or 4,096 random draws found
//!   none, the table is scanned and one of its matching entries is drawn
//!   uniformly, with the same chance rule; so [`AddrBook::select`] always
//!   ends, in bounded time.
//! - Addresses of networks peerlink cannot reach (I2P, CJDNS) are kept, so
//!   that a caller with its own transport can use them; filter them out
//!   with [`Query::networks`]. TorV2 and unknown BIP155 networks are refused.
//!
//! ## Gossip
//!
//! [`AddrBook::add_message`] takes `addr` and `addrv2` messages as Core's
//! `net_processing` does: a message of more than 1,000 entries is refused
//! whole (and flagged, [`AddOutcome::oversized`]: misbehaviour); each entry
//! costs one token from the peer's [`AddrRateLimit`] (0.1 a second, burst
//! of 1,000, +1,000 when we sent `getaddr`), and entries past the tokens are
//! dropped; times in the future or before 1973 are set to five days ago,
//! and every gossiped time is aged by two hours.
//!
//! ```
//! use bitcoin::p2p::ServiceFlags;
//! use peerlink::discovery::addrbook::{AddrBook, Address, Query, Table};
//! use peerlink::netgroup::NetGroup;
//!
//! let now = 1_700_000_000;
//! let mut book = AddrBook::new([7; 32]);
//! let source = NetGroup::of_ip("9.9.9.9".parse()?);
//! let address = Address::from("8.8.8.8:8333".parse::<std::net::SocketAddr>()?);
//! assert!(book.add(address.clone(), ServiceFlags::NETWORK, now - 3600, &source, now));
//! // Loopback addresses are refused unless allowed.
//! let local = Address::from("127.0.0.1:18444".parse::<std::net::SocketAddr>()?);
//! assert!(!book.add(local, ServiceFlags::NETWORK, now, &source, now));
//!
//! // We dial it and the handshake completes: it moves to the tried table.
//! book.attempt(&address, true, now);
//! book.good(&address, now);
//! assert_eq!((book.new_len(), book.tried_len()), (0, 1));
//!
//! let query = Query { services: ServiceFlags::NETWORK, table: Table::Tried, ..Query::default() };
//! assert_eq!(book.select(&query, now).map(|r| r.address), Some(address));
//!
//! // Saved and loaded: the same entries in the same slots.
//! let loaded = AddrBook::import(&book.export(), [8; 32])?;
//! assert_eq!(loaded, book);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use bitcoin::hashes::{Hash, HashEngine, sha256, sha256d};
use bitcoin::p2p::ServiceFlags;
use bitcoin::p2p::address::{AddrV2, Address as V1Address};
use bitcoin::p2p::message::NetworkMessage;
use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher};

use crate::netgroup::{NetGroup, Network};
use crate::target::{Target, TargetError};

#[cfg(test)]
mod tests;

/// Buckets of the new table (Core's `ADDRMAN_NEW_BUCKET_COUNT`).
pub const NEW_BUCKET_COUNT: usize = 1024;
/// Buckets of the tried table (Core's `ADDRMAN_TRIED_BUCKET_COUNT`).
pub const TRIED_BUCKET_COUNT: usize = 256;
/// Slots per bucket (Core's `ADDRMAN_BUCKET_SIZE`).
pub const BUCKET_SIZE: usize = 64;
/// The new buckets one source group can reach
/// (`ADDRMAN_NEW_BUCKETS_PER_SOURCE_GROUP`).
pub const NEW_BUCKETS_PER_SOURCE_GROUP: usize = 64;
/// The tried buckets one address group can reach
/// (`ADDRMAN_TRIED_BUCKETS_PER_GROUP`).
pub const TRIED_BUCKETS_PER_GROUP: usize = 8;
/// The most entries the book holds: every slot of both tables.
pub const CAPACITY: usize = (NEW_BUCKET_COUNT + TRIED_BUCKET_COUNT) * BUCKET_SIZE;
/// The most entries an `addr` or `addrv2` message may carry (Core's
/// `MAX_ADDR_TO_SEND`); more is misbehaviour.
pub const MAX_ADDR_PER_MESSAGE: usize = 1000;

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;
/// Entries not seen for this long are terrible (`ADDRMAN_HORIZON`).
const HORIZON: u64 = 30 * DAY;
/// Failed attempts after which a never-connected entry is terrible.
const RETRIES: u32 = 3;
/// Failed attempts after which an entry not connected for
/// [`MIN_FAIL`] is terrible.
const MAX_FAILURES: u32 = 10;
const MIN_FAIL: u64 = 7 * DAY;
/// A tried entry connected (or tried) this recently is not evicted.
const REPLACEMENT: u64 = 4 * HOUR;
/// The collision set's bound (`ADDRMAN_SET_TRIED_COLLISION_SIZE`).
const TRIED_COLLISION_SIZE: usize = 10;
/// How long a tried-slot occupant has to answer its test.
const TEST_WINDOW: u64 = 40 * MINUTE;
/// Gossiped times are aged by this (`net_processing`'s penalty).
const GOSSIP_TIME_PENALTY: u64 = 2 * HOUR;
/// Random bucket draws in [`AddrBook::select`] before the table is scanned.
const MAX_SELECT_DRAWS: usize = 4096;

const EMPTY: u32 = u32::MAX;

// ---- addresses ----

/// An address the book can hold: a BIP155 address and a port.
///
/// [`Address::new`] and `From<SocketAddr>` give the canonical form (an
/// IPv4-mapped IPv6 address becomes the IPv4 address); the book
/// canonicalises every address it is given, so the two forms name one
/// entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Address {
    /// The network address.
    pub addr: AddrV2,
    /// The port (0 for I2P, whose addresses have none).
    pub port: u16,
}

impl Address {
    /// The address in canonical form: an IPv4-mapped IPv6 address
    /// (`::ffff:a.b.c.d`) becomes the IPv4 address.
    pub fn new(addr: AddrV2, port: u16) -> Address {
        let addr = match addr {
            AddrV2::Ipv6(ip) => match ip.to_ipv4_mapped() {
                Some(v4) => AddrV2::Ipv4(v4),
                None => AddrV2::Ipv6(ip),
            },
            other => other,
        };
        Address { addr, port }
    }

    fn is_canonical(&self) -> bool {
        !matches!(&self.addr, AddrV2::Ipv6(ip) if ip.to_ipv4_mapped().is_some())
    }

    /// The connection target ([`Target::from_addr_v2`]): IPv4 and IPv6
    /// become socket addresses, TorV3 an onion service; I2P, CJDNS, TorV2
    /// and unknown networks are errors.
    pub fn to_target(&self) -> Result<Target, TargetError> {
        Target::from_addr_v2(&self.addr, self.port)
    }

    /// The network, as Core's `GetNetwork`: an IPv4 or IPv6 address that is
    /// not routable (loopback, private...) is [`Network::Unroutable`], as
    /// are unknown BIP155 networks and a CJDNS address outside `fc00::/8`;
    /// TorV2 is [`Network::Onion`] (but not [routable](Self::is_routable)).
    pub fn network(&self) -> Network {
        let ip_network = |ip: IpAddr, network: Network| match NetGroup::of_ip(ip).network() {
            Network::Unroutable => Network::Unroutable,
            _ => network,
        };
        match &self.addr {
            AddrV2::Ipv4(ip) => ip_network(IpAddr::V4(*ip), Network::Ipv4),
            AddrV2::Ipv6(ip) => match ip.to_ipv4_mapped() {
                Some(v4) => ip_network(IpAddr::V4(v4), Network::Ipv4),
                None => ip_network(IpAddr::V6(*ip), Network::Ipv6),
            },
            AddrV2::TorV2(_) | AddrV2::TorV3(_) => Network::Onion,
            AddrV2::I2p(_) => Network::I2p,
            AddrV2::Cjdns(ip) if ip.octets()[0] == 0xfc => Network::Cjdns,
            AddrV2::Cjdns(_) | AddrV2::Unknown(..) => Network::Unroutable,
        }
    }

    /// The network group ([`NetGroup::of_addr_v2`]); `None` for TorV2,
    /// unknown networks and invalid CJDNS addresses.
    pub fn group(&self) -> Option<NetGroup> {
        NetGroup::of_addr_v2(&self.addr)
    }

    /// Whether the address is reachable from the internet (or its overlay
    /// network): routable IPv4 and IPv6, TorV3, I2P and CJDNS. This is what
    /// the book stores by default.
    pub fn is_routable(&self) -> bool {
        !matches!(self.addr, AddrV2::TorV2(_) | AddrV2::Unknown(..)) && self.network() != Network::Unroutable
    }

    /// An IPv4 or IPv6 address that is not routable but could be dialled
    /// (loopback, private): stored only when the book allows it.
    fn is_local_ip(&self) -> bool {
        match &self.addr {
            AddrV2::Ipv4(ip) => !ip.is_unspecified() && !ip.is_broadcast(),
            AddrV2::Ipv6(ip) => !ip.is_unspecified() && !is_onioncat(ip),
            _ => false,
        }
    }

    /// The BIP155 network id and the address bytes.
    fn bip155(&self) -> (u8, Vec<u8>) {
        match &self.addr {
            AddrV2::Ipv4(ip) => (1, ip.octets().to_vec()),
            AddrV2::Ipv6(ip) => (2, ip.octets().to_vec()),
            AddrV2::TorV2(b) => (3, b.to_vec()),
            AddrV2::TorV3(b) => (4, b.to_vec()),
            AddrV2::I2p(b) => (5, b.to_vec()),
            AddrV2::Cjdns(ip) => (6, ip.octets().to_vec()),
            AddrV2::Unknown(id, b) => (*id, b.clone()),
        }
    }

    /// The bytes that identify the address in the keyed hashes (Core's
    /// `GetKey`): network id, length, address, port (big-endian).
    fn key_bytes(&self) -> Vec<u8> {
        let (id, bytes) = self.bip155();
        let mut out = Vec::with_capacity(4 + bytes.len());
        out.push(id);
        out.push(bytes.len() as u8);
        out.extend_from_slice(&bytes);
        out.extend_from_slice(&self.port.to_be_bytes());
        out
    }

    /// The group the buckets are keyed with: the network group of a
    /// routable address; for any other, the address itself (see the module
    /// docs).
    fn bucket_group(&self) -> Vec<u8> {
        match self.group() {
            Some(group) if self.is_routable() => group.to_bytes(),
            _ => {
                let mut out = vec![0xff];
                out.extend_from_slice(&self.key_bytes());
                out
            }
        }
    }
}

/// OnionCat, `fd87:d87e:eb43::/48`: a TorV2 address in IPv6 form.
fn is_onioncat(ip: &Ipv6Addr) -> bool {
    ip.segments()[..3] == [0xfd87, 0xd87e, 0xeb43]
}

impl From<SocketAddr> for Address {
    fn from(addr: SocketAddr) -> Address {
        let ip = match addr.ip() {
            IpAddr::V4(v4) => AddrV2::Ipv4(v4),
            IpAddr::V6(v6) => AddrV2::Ipv6(v6),
        };
        Address::new(ip, addr.port())
    }
}

impl fmt::Display for Address {
    /// `1.2.3.4:8333`, `[2001:db8::1]:8333`, `<56 base32>.onion:8333`,
    /// `<52 base32>.b32.i2p:0`; CJDNS as IPv6; an unknown network as
    /// `[network N: HEX]:PORT`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let port = self.port;
        match &self.addr {
            AddrV2::Ipv4(ip) => write!(f, "{ip}:{port}"),
            AddrV2::Ipv6(ip) | AddrV2::Cjdns(ip) => write!(f, "[{ip}]:{port}"),
            AddrV2::TorV3(pubkey) => write!(f, "{}", Target::onion(*pubkey, port)),
            AddrV2::TorV2(id) => write!(f, "{}.onion:{port}", base32(id)),
            AddrV2::I2p(hash) => write!(f, "{}.b32.i2p:{port}", base32(hash)),
            AddrV2::Unknown(id, bytes) => {
                write!(f, "[network {id}: ")?;
                for b in bytes {
                    write!(f, "{b:02x}")?;
                }
                write!(f, "]:{port}")
            }
        }
    }
}

/// RFC 4648 base32, lower case, without padding (as Tor and I2P write it).
fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &byte in data {
        acc = (acc << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((acc << (5 - bits)) & 31) as usize]));
    }
    out
}

// ---- records ----

/// What the book knows about one address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The address.
    pub address: Address,
    /// The services it was announced (or found) with.
    pub services: ServiceFlags,
    /// When it was last heard of as online, unix seconds (gossiped times
    /// are aged and clamped, see [`AddrBook::add`]).
    pub last_seen: u64,
    /// The last connection attempt ([`AddrBook::attempt`], [`AddrBook::good`]).
    pub last_try: Option<u64>,
    /// The last successful connection ([`AddrBook::good`]).
    pub last_success: Option<u64>,
    /// Failed attempts since the last success (counted at most once per
    /// success anywhere, as Core does, so that going offline does not make
    /// every address terrible).
    pub attempts: u32,
    /// Whether the entry is in the tried table.
    pub tried: bool,
    /// The group of the peer that told us of it (its new-table bucket
    /// depends on it).
    pub source: NetGroup,
}

fn secs(t: u64) -> i128 {
    i128::from(t)
}

impl Record {
    /// Whether the entry is not worth keeping (Core's `IsTerrible`): not if
    /// it was tried in the last minute; else yes if its time is more than
    /// 10 minutes in the future, or older than 30 days, or it failed 3
    /// attempts without ever connecting, or failed 10 with no success in
    /// the last 7 days.
    pub fn is_terrible(&self, now: u64) -> bool {
        let now = secs(now);
        if self.last_try.is_some_and(|t| secs(t) >= now - secs(MINUTE)) {
            return false;
        }
        if secs(self.last_seen) > now + secs(10 * MINUTE) {
            return true;
        }
        if now - secs(self.last_seen) > secs(HORIZON) {
            return true;
        }
        if self.last_success.is_none() && self.attempts >= RETRIES {
            return true;
        }
        now - secs(self.last_success.unwrap_or(0)) > secs(MIN_FAIL) && self.attempts >= MAX_FAILURES
    }

    /// The relative chance of being picked by [`AddrBook::select`] (Core's
    /// `GetChance`): 1, times 0.01 if tried in the last 10 minutes, times
    /// 0.66 per failed attempt (at most 8).
    pub fn chance(&self, now: u64) -> f64 {
        let mut chance = 1.0;
        if let Some(t) = self.last_try
            && (secs(now) - secs(t)).max(0) < secs(10 * MINUTE)
        {
            chance *= 0.01;
        }
        chance * 0.66f64.powi(self.attempts.min(8) as i32)
    }
}

// ---- queries ----

/// Which table [`AddrBook::select`] draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Table {
    /// Either: when both hold matching entries, one or the other with
    /// even odds (Core's `Select`).
    #[default]
    Any,
    /// The new table only (addresses never connected to).
    New,
    /// The tried table only.
    Tried,
}

/// What [`AddrBook::select`] should find. The default: any network, no
/// services required, either table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Query {
    /// Only these networks ([`Address::network`]); `None`: any.
    pub networks: Option<Vec<Network>>,
    /// Only entries announcing all these services.
    pub services: ServiceFlags,
    /// Which table.
    pub table: Table,
}

impl Query {
    fn is_trivial(&self) -> bool {
        self.networks.is_none() && self.services == ServiceFlags::NONE
    }

    #[cfg(test)]
    fn matches(&self, record: &Record) -> bool {
        self.matches_with(record, record.address.network())
    }

    fn matches_with(&self, record: &Record, network: Network) -> bool {
        record.services.has(self.services) && self.networks.as_ref().is_none_or(|networks| networks.contains(&network))
    }

    fn matches_entry(&self, entry: &Entry) -> bool {
        self.matches_with(&entry.record, entry.network)
    }
}

/// Where an entry sits ([`AddrBook::slot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Slot {
    /// The tried table (else the new table).
    pub tried: bool,
    /// The bucket.
    pub bucket: usize,
    /// The position in the bucket.
    pub position: usize,
}

/// What [`AddrBook::add_message`] did with a message's entries. Unless
/// `oversized`, `accepted + rate_limited + refused` is the entry count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AddOutcome {
    /// Entries handed to the book: new ones placed, known ones refreshed,
    /// and new ones dropped because their slot holds a good entry.
    pub accepted: usize,
    /// Entries dropped for want of rate-limit tokens.
    pub rate_limited: usize,
    /// Entries the book cannot hold: unroutable (unless allowed), TorV2,
    /// unknown networks, invalid CJDNS; or, if `oversized`, all of them.
    pub refused: usize,
    /// The message has more than [`MAX_ADDR_PER_MESSAGE`] entries: none was
    /// looked at. Core treats this as misbehaviour.
    pub oversized: bool,
}

// ---- the book ----

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    record: Record,
    /// When a failure was last counted (Core's `m_last_count_attempt`).
    last_count_attempt: u64,
    /// The address's network, kept for [`Query`] filters.
    network: Network,
    bucket: u16,
    position: u8,
}

impl Entry {
    fn slot_index(&self) -> usize {
        usize::from(self.bucket) * BUCKET_SIZE + usize::from(self.position)
    }
}

/// One table: its slots (entry ids, [`EMPTY`] when free), and which
/// buckets hold entries, so that a draw picks among those at once instead
/// of scanning empty buckets (the same distribution as Core's redraws).
struct Slots {
    slots: Box<[u32]>,
    count: usize,
    bucket_len: Box<[u8]>,
    /// The buckets holding at least one entry, in no particular order.
    occupied: Vec<u16>,
    /// Each bucket's index in `occupied` ([`EMPTY`] if not there).
    occupied_at: Box<[u32]>,
}

impl Slots {
    fn new(buckets: usize) -> Slots {
        Slots {
            slots: vec![EMPTY; buckets * BUCKET_SIZE].into_boxed_slice(),
            count: 0,
            bucket_len: vec![0; buckets].into_boxed_slice(),
            occupied: Vec::new(),
            occupied_at: vec![EMPTY; buckets].into_boxed_slice(),
        }
    }

    /// Puts `id` in the free `slot`.
    fn put(&mut self, slot: usize, id: u32) {
        debug_assert_eq!(self.slots[slot], EMPTY);
        self.slots[slot] = id;
        self.count += 1;
        let bucket = slot / BUCKET_SIZE;
        if self.bucket_len[bucket] == 0 {
            self.occupied_at[bucket] = self.occupied.len() as u32;
            self.occupied.push(bucket as u16);
        }
        self.bucket_len[bucket] += 1;
    }

    /// Empties `slot`; returns what it held ([`EMPTY`] if nothing).
    fn clear(&mut self, slot: usize) -> u32 {
        let id = std::mem::replace(&mut self.slots[slot], EMPTY);
        if id == EMPTY {
            return EMPTY;
        }
        self.count -= 1;
        let bucket = slot / BUCKET_SIZE;
        self.bucket_len[bucket] -= 1;
        if self.bucket_len[bucket] == 0 {
            let at = std::mem::replace(&mut self.occupied_at[bucket], EMPTY) as usize;
            self.occupied.swap_remove(at);
            if let Some(&moved) = self.occupied.get(at) {
                self.occupied_at[usize::from(moved)] = at as u32;
            }
        }
        id
    }

    /// The (slot, id) of every entry in slot order, skipping empty buckets
    /// without looking at their slots.
    fn ids(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
        self.bucket_len.iter().enumerate().filter(|&(_, &len)| len > 0).flat_map(move |(bucket, _)| {
            let first = bucket * BUCKET_SIZE;
            self.slots[first..first + BUCKET_SIZE]
                .iter()
                .enumerate()
                .filter(|&(_, &id)| id != EMPTY)
                .map(move |(i, &id)| (first + i, id))
        })
    }
}

/// The address book: Core's new and tried tables, sans-IO. See the
/// [module docs](self).
pub struct AddrBook {
    /// The secret bucketing key.
    key: [u8; 32],
    rng: ChaCha20,
    allow_unroutable: bool,
    /// The entries by id; `None` for free ids (listed in `free`).
    entries: Vec<Option<Entry>>,
    free: Vec<u32>,
    index: HashMap<Address, u32>,
    new: Slots,
    tried: Slots,
    /// New entries waiting for a tried slot, in arrival order.
    collisions: Vec<u32>,
    /// The last [`good`](Self::good) (Core's `nLastGood`).
    last_good: u64,
}

fn derive(seed: &[u8; 32], label: &[u8]) -> [u8; 32] {
    let mut engine = sha256::Hash::engine();
    engine.input(b"peerlink addrbook ");
    engine.input(label);
    engine.input(seed);
    sha256::Hash::from_engine(engine).to_byte_array()
}

fn rng_from(seed: &[u8; 32]) -> ChaCha20 {
    ChaCha20::new(&derive(seed, b"rng").into(), &[0; 12].into())
}

/// A 64-bit keyed digest (Core's `HashWriter(...).GetCheapHash()`): the
/// first 8 bytes of SHA256d over the key, a tag and the length-prefixed
/// parts.
fn cheap_hash(key: &[u8; 32], tag: u8, parts: &[&[u8]]) -> u64 {
    let mut engine = sha256d::Hash::engine();
    engine.input(key);
    engine.input(&[tag]);
    for part in parts {
        engine.input(&(part.len() as u32).to_le_bytes());
        engine.input(part);
    }
    let hash = sha256d::Hash::from_engine(engine);
    let mut out = [0u8; 8];
    out.copy_from_slice(&hash.as_byte_array()[..8]);
    u64::from_le_bytes(out)
}

fn new_slot_of(key: &[u8; 32], address: &Address, source: &NetGroup) -> (u16, u8) {
    let group = address.bucket_group();
    let source = source.to_bytes();
    let spread = cheap_hash(key, b'S', &[&group, &source]) % NEW_BUCKETS_PER_SOURCE_GROUP as u64;
    let bucket = (cheap_hash(key, b'B', &[&source, &[spread as u8]]) % NEW_BUCKET_COUNT as u64) as u16;
    (bucket, position_of(key, true, bucket, address))
}

fn tried_slot_of(key: &[u8; 32], address: &Address) -> (u16, u8) {
    let addr_key = address.key_bytes();
    let spread = cheap_hash(key, b'T', &[&addr_key]) % TRIED_BUCKETS_PER_GROUP as u64;
    let bucket =
        (cheap_hash(key, b'G', &[&address.bucket_group(), &[spread as u8]]) % TRIED_BUCKET_COUNT as u64) as u16;
    (bucket, position_of(key, false, bucket, address))
}

fn position_of(key: &[u8; 32], new: bool, bucket: u16, address: &Address) -> u8 {
    let tag = if new { b'N' } else { b'K' };
    (cheap_hash(key, tag, &[&bucket.to_le_bytes(), &address.key_bytes()]) % BUCKET_SIZE as u64) as u8
}

fn slot_index(bucket: u16, position: u8) -> usize {
    usize::from(bucket) * BUCKET_SIZE + usize::from(position)
}

/// Core's treatment of gossiped times (`net_processing`): before 1973
/// (100,000,000) or more than 10 minutes ahead becomes five days ago.
fn clamp_time(last_seen: u64, now: u64) -> u64 {
    if last_seen <= 100_000_000 || secs(last_seen) > secs(now) + secs(10 * MINUTE) {
        now.saturating_sub(5 * DAY)
    } else {
        last_seen
    }
}

impl AddrBook {
    /// An empty book whose bucketing key and selection RNG are derived
    /// from `seed` (give it 32 random bytes; a fixed seed makes the book
    /// deterministic, for tests).
    pub fn new(seed: [u8; 32]) -> AddrBook {
        AddrBook::with_key(derive(&seed, b"key"), rng_from(&seed))
    }

    fn with_key(key: [u8; 32], rng: ChaCha20) -> AddrBook {
        AddrBook {
            key,
            rng,
            allow_unroutable: false,
            entries: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            new: Slots::new(NEW_BUCKET_COUNT),
            tried: Slots::new(TRIED_BUCKET_COUNT),
            collisions: Vec::new(),
            last_good: 1,
        }
    }

    /// Whether to store unroutable IP addresses (loopback, private ranges).
    /// Off by default, as in Core; turn it on for regtest and loopback
    /// tests. Turning it off keeps the ones already stored.
    pub fn set_allow_unroutable(&mut self, allow: bool) {
        self.allow_unroutable = allow;
    }

    /// Whether unroutable IP addresses are stored.
    pub fn allows_unroutable(&self) -> bool {
        self.allow_unroutable
    }

    /// Entries in both tables.
    pub fn len(&self) -> usize {
        self.new.count + self.tried.count
    }

    /// Whether the book has no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries in the new table.
    pub fn new_len(&self) -> usize {
        self.new.count
    }

    /// Entries in the tried table.
    pub fn tried_len(&self) -> usize {
        self.tried.count
    }

    /// The entry of an address.
    pub fn get(&self, address: &Address) -> Option<&Record> {
        self.lookup(address).map(|id| &self.entry(id).record)
    }

    /// Where an address's entry sits.
    pub fn slot(&self, address: &Address) -> Option<Slot> {
        self.lookup(address).map(|id| {
            let entry = self.entry(id);
            Slot { tried: entry.record.tried, bucket: usize::from(entry.bucket), position: usize::from(entry.position) }
        })
    }

    /// Every entry: the new table's, then the tried table's, each in slot
    /// order (so the order depends only on the book's contents).
    pub fn iter(&self) -> impl Iterator<Item = &Record> + '_ {
        self.new.ids().chain(self.tried.ids()).map(|(_, id)| &self.entry(id).record)
    }

    /// Adds an address heard of from a peer of group `source` (Core's
    /// `AddSingle`). Returns whether a new entry was made.
    ///
    /// Refused: unroutable addresses (unless
    /// [allowed](Self::set_allow_unroutable)), TorV2 and unknown networks.
    /// `last_seen` before 1973 or more than 10 minutes after `now` is taken
    /// as five days ago. A known address gets `services` added to its own
    /// and, if `last_seen` is newer by more than an hour (a day if the
    /// address was not seen in the last day), its time refreshed; it keeps
    /// its slot. A new address goes to the new-table slot given by its
    /// group and `source`'s; if that holds an entry, it replaces it only if
    /// the occupant is [terrible](Record::is_terrible), else it is dropped.
    pub fn add(
        &mut self,
        address: Address,
        services: ServiceFlags,
        last_seen: u64,
        source: &NetGroup,
        now: u64,
    ) -> bool {
        self.add_inner(address, services, last_seen, source, now, 0)
    }

    fn accepts(&self, address: &Address) -> bool {
        address.is_routable() || (self.allow_unroutable && address.is_local_ip())
    }

    fn add_inner(
        &mut self,
        address: Address,
        services: ServiceFlags,
        last_seen: u64,
        source: &NetGroup,
        now: u64,
        penalty: u64,
    ) -> bool {
        let address = Address::new(address.addr, address.port);
        if !self.accepts(&address) {
            return false;
        }
        let last_seen = clamp_time(last_seen, now);
        if let Some(&id) = self.index.get(&address) {
            let record = &mut self.entry_mut(id).record;
            let online = secs(now) - secs(last_seen) < secs(DAY);
            let interval = if online { HOUR } else { DAY };
            if secs(record.last_seen) < secs(last_seen) - secs(interval) - secs(penalty) {
                record.last_seen = last_seen.saturating_sub(penalty);
            }
            record.services |= services;
            return false;
        }
        let (bucket, position) = new_slot_of(&self.key, &address, source);
        let slot = slot_index(bucket, position);
        let occupant = self.new.slots[slot];
        if occupant != EMPTY {
            if !self.entry(occupant).record.is_terrible(now) {
                return false;
            }
            self.clear_new(slot);
        }
        let record = Record {
            address,
            services,
            last_seen: last_seen.saturating_sub(penalty),
            last_try: None,
            last_success: None,
            attempts: 0,
            tried: false,
            source: source.clone(),
        };
        let network = record.address.network();
        let id = self.insert_entry(Entry { record, last_count_attempt: 0, network, bucket, position });
        self.new.put(slot, id);
        true
    }

    /// Adds the entries of an `addr` or `addrv2` message from a peer of
    /// group `source`, as Core's `net_processing` does (see the module
    /// docs): at most [`MAX_ADDR_PER_MESSAGE`] entries, one token each from
    /// `limit` (in a random order, so that the sender does not choose which
    /// get through), times clamped and aged by two hours. Other messages
    /// are ignored (an all-zero outcome).
    ///
    /// `now` (unix seconds) also drives `limit`'s refill; use one clock per
    /// limiter (see [`AddrRateLimit::take`]).
    pub fn add_message(
        &mut self,
        message: &NetworkMessage,
        source: &NetGroup,
        now: u64,
        limit: &mut AddrRateLimit,
    ) -> AddOutcome {
        let mut entries: Vec<(u64, ServiceFlags, Address)> = match message {
            NetworkMessage::Addr(list) if list.len() <= MAX_ADDR_PER_MESSAGE => {
                list.iter().map(|(time, a)| (u64::from(*time), a.services, from_v1(a))).collect()
            }
            NetworkMessage::AddrV2(list) if list.len() <= MAX_ADDR_PER_MESSAGE => {
                list.iter().map(|m| (u64::from(m.time), m.services, Address::new(m.addr.clone(), m.port))).collect()
            }
            NetworkMessage::Addr(list) => {
                return AddOutcome { refused: list.len(), oversized: true, ..AddOutcome::default() };
            }
            NetworkMessage::AddrV2(list) => {
                return AddOutcome { refused: list.len(), oversized: true, ..AddOutcome::default() };
            }
            _ => return AddOutcome::default(),
        };
        for i in (1..entries.len()).rev() {
            let j = self.rand_below(i + 1);
            entries.swap(i, j);
        }
        let granted = limit.take_clock(entries.len(), Clock::Unix(now));
        let mut outcome = AddOutcome { rate_limited: entries.len() - granted, ..AddOutcome::default() };
        for (time, services, address) in entries.into_iter().take(granted) {
            if self.accepts(&address) {
                self.add_inner(address, services, time, source, now, GOSSIP_TIME_PENALTY);
                outcome.accepted += 1;
            } else {
                outcome.refused += 1;
            }
        }
        outcome
    }

    /// Records a connection attempt to `address` (Core's `Attempt`). With
    /// `count_failure`, the attempt counts as a failure unless one was
    /// already counted since the last [`good`](Self::good) of any address.
    pub fn attempt(&mut self, address: &Address, count_failure: bool, now: u64) {
        let last_good = self.last_good;
        let Some(id) = self.lookup(address) else { return };
        let entry = self.entry_mut(id);
        entry.record.last_try = Some(now);
        if count_failure && entry.last_count_attempt < last_good {
            entry.last_count_attempt = now;
            entry.record.attempts = entry.record.attempts.saturating_add(1);
        }
    }

    /// Records that we are connected to `address` (Core's `Connected`,
    /// called when a connection ends): its time is refreshed if older than
    /// 20 minutes.
    pub fn connected(&mut self, address: &Address, now: u64) {
        let Some(id) = self.lookup(address) else { return };
        let record = &mut self.entry_mut(id).record;
        if secs(now) - secs(record.last_seen) > secs(20 * MINUTE) {
            record.last_seen = now;
        }
    }

    /// Records a successful connection (Core's `Good`, test-before-evict):
    /// the entry's failures are reset and it moves to the tried table. If
    /// its tried slot is taken, it stays in new and joins the collision set
    /// (at most 10): test the occupant ([`select_tried_collision`]) and call
    /// [`resolve_collisions`].
    ///
    /// [`select_tried_collision`]: Self::select_tried_collision
    /// [`resolve_collisions`]: Self::resolve_collisions
    pub fn good(&mut self, address: &Address, now: u64) {
        self.last_good = now;
        if let Some(id) = self.lookup(address) {
            self.good_id(id, now, true);
        }
    }

    fn good_id(&mut self, id: u32, now: u64, test_before_evict: bool) {
        self.last_good = now;
        let record = &mut self.entry_mut(id).record;
        record.last_success = Some(now);
        record.last_try = Some(now);
        record.attempts = 0;
        if record.tried {
            return;
        }
        let (bucket, position) = tried_slot_of(&self.key, &self.entry(id).record.address);
        if test_before_evict && self.tried.slots[slot_index(bucket, position)] != EMPTY {
            if self.collisions.len() < TRIED_COLLISION_SIZE && !self.collisions.contains(&id) {
                self.collisions.push(id);
            }
            return;
        }
        self.make_tried(id, bucket, position);
    }

    /// Moves new entry `id` to tried slot (`bucket`, `position`); its
    /// occupant, if any, goes back to its new slot (clearing that one).
    fn make_tried(&mut self, id: u32, bucket: u16, position: u8) {
        let old_slot = self.entry(id).slot_index();
        let cleared = self.new.clear(old_slot);
        debug_assert_eq!(cleared, id);
        self.collisions.retain(|&c| c != id);

        let tried_slot = slot_index(bucket, position);
        let evicted = self.tried.clear(tried_slot);
        if evicted != EMPTY {
            let record = &self.entry(evicted).record;
            let (new_bucket, new_position) = new_slot_of(&self.key, &record.address, &record.source);
            let new_slot = slot_index(new_bucket, new_position);
            self.clear_new(new_slot);
            let entry = self.entry_mut(evicted);
            entry.record.tried = false;
            entry.bucket = new_bucket;
            entry.position = new_position;
            self.new.put(new_slot, evicted);
        }
        let entry = self.entry_mut(id);
        entry.record.tried = true;
        entry.bucket = bucket;
        entry.position = position;
        self.tried.put(tried_slot, id);
    }

    /// Deletes the entry in new-table slot `slot`, if any.
    fn clear_new(&mut self, slot: usize) {
        let id = self.new.clear(slot);
        if id != EMPTY {
            self.remove_entry(id);
        }
    }

    /// Replaces the services of `address`'s entry (Core's `SetServices`:
    /// what the peer's `version` said).
    pub fn set_services(&mut self, address: &Address, services: ServiceFlags) {
        if let Some(id) = self.lookup(address) {
            self.entry_mut(id).record.services = services;
        }
    }

    /// The tried entry that a waiting collision would evict, to be tested
    /// with a (feeler) connection; a random one if several wait (Core's
    /// `SelectTriedCollision`). Report the test with [`good`](Self::good)
    /// or [`attempt`](Self::attempt), then [`resolve_collisions`](Self::resolve_collisions).
    pub fn select_tried_collision(&mut self) -> Option<Record> {
        if self.collisions.is_empty() {
            return None;
        }
        let pick = self.rand_below(self.collisions.len());
        let id = self.collisions[pick];
        let (bucket, position) = tried_slot_of(&self.key, &self.entry(id).record.address);
        let occupant = self.tried.slots[slot_index(bucket, position)];
        (occupant != EMPTY).then(|| self.entry(occupant).record.clone())
    }

    /// Settles the waiting collisions (Core's `ResolveCollisions`). For
    /// each: if the tried slot is free now, the entry moves in; if the
    /// occupant connected in the last 4 hours, it stays and the collision
    /// is dropped; if the occupant was tried (and did not connect) in the
    /// last 4 hours but more than a minute ago, or the collision has waited
    /// more than 40 minutes, the newcomer takes the slot and the occupant
    /// goes back to new; else the collision keeps waiting.
    pub fn resolve_collisions(&mut self, now: u64) {
        let now_s = secs(now);
        for id in self.collisions.clone() {
            if !self.collisions.contains(&id) {
                continue; // Dropped by an earlier move in this loop.
            }
            let newcomer = &self.entry(id).record;
            let (bucket, position) = tried_slot_of(&self.key, &newcomer.address);
            let occupant = self.tried.slots[slot_index(bucket, position)];
            let (promote, erase) = if occupant == EMPTY {
                (true, true)
            } else {
                let old = &self.entry(occupant).record;
                let since_success = now_s - secs(old.last_success.unwrap_or(0));
                let since_try = now_s - secs(old.last_try.unwrap_or(0));
                if since_success < secs(REPLACEMENT) {
                    (false, true)
                } else if since_try < secs(REPLACEMENT) {
                    let answered_late = since_try > secs(MINUTE);
                    (answered_late, answered_late)
                } else if now_s - secs(newcomer.last_success.unwrap_or(0)) > secs(TEST_WINDOW) {
                    (true, true)
                } else {
                    (false, false)
                }
            };
            if erase {
                self.collisions.retain(|&c| c != id);
            }
            if promote {
                self.good_id(id, now, false);
            }
        }
    }

    /// Draws an entry matching `query` (Core's `Select`): a random bucket of
    /// the chosen table and a random position in it, the first matching
    /// entry from there, taken with probability [`chance`](Record::chance)
    /// times a factor that grows by 1.2 after each refusal. With
    /// [`Table::Any`], the tried table is used half the time when both
    /// hold matches. When matches are rare the draw is among them directly
    /// (see the module docs). `None` only if no entry matches.
    ///
    /// A filtered query counts the matches first, a pass over the entries;
    /// [`Query::default`] does not.
    pub fn select(&mut self, query: &Query, now: u64) -> Option<Record> {
        let (new_n, tried_n) = if query.is_trivial() {
            (self.new.count, self.tried.count)
        } else {
            self.entries
                .iter()
                .flatten()
                .filter(|e| query.matches_entry(e))
                .fold((0, 0), |(n, t), e| if e.record.tried { (n, t + 1) } else { (n + 1, t) })
        };
        let tried = match query.table {
            Table::New if new_n == 0 => return None,
            Table::New => false,
            Table::Tried if tried_n == 0 => return None,
            Table::Tried => true,
            Table::Any if new_n + tried_n == 0 => return None,
            Table::Any => tried_n > 0 && (new_n == 0 || self.rand_u64() & 1 == 0),
        };
        let mut factor = 1.0;
        let matching = if tried { tried_n } else { new_n };
        let occupied = if tried { self.tried.occupied.len() } else { self.new.occupied.len() };
        // With matches in under one bucket in 16, random draws would mostly
        // miss: skip to drawing among the matches.
        let draws = if matching * 16 >= occupied { MAX_SELECT_DRAWS } else { 0 };
        for _ in 0..draws {
            // A random bucket among those holding entries: Core draws any
            // bucket and draws again while it is empty, which comes to the same.
            let pick = self.rand_below(occupied);
            let bucket = usize::from(if tried { self.tried.occupied[pick] } else { self.new.occupied[pick] });
            let start = self.rand_below(BUCKET_SIZE);
            let table = if tried { &self.tried } else { &self.new };
            let found = (0..BUCKET_SIZE)
                .map(|i| table.slots[bucket * BUCKET_SIZE + (start + i) % BUCKET_SIZE])
                .find(|&id| id != EMPTY && query.matches_entry(self.entry(id)));
            let Some(id) = found else { continue };
            if self.take_chance(factor, self.entry(id).record.chance(now)) {
                return Some(self.entry(id).record.clone());
            }
            factor *= 1.2;
        }
        // Few matching entries among many: draw among them directly.
        let table = if tried { &self.tried } else { &self.new };
        let matching: Vec<u32> =
            table.ids().map(|(_, id)| id).filter(|&id| query.matches_entry(self.entry(id))).collect();
        let mut last = None;
        // The chance is at least 0.01 * 0.66^8 and the factor passes its
        // inverse within 45 rounds: the loop ends with a pick well before.
        for _ in 0..100 {
            let id = matching[self.rand_below(matching.len())];
            last = Some(id);
            if self.take_chance(factor, self.entry(id).record.chance(now)) {
                break;
            }
            factor *= 1.2;
        }
        last.map(|id| self.entry(id).record.clone())
    }

    fn take_chance(&mut self, factor: f64, chance: f64) -> bool {
        ((self.rand_u64() >> 34) as f64) < factor * chance * f64::from(1u32 << 30)
    }

    /// Deletes the new table's [terrible](Record::is_terrible) entries (not
    /// seen for 30 days, too many failures, times in the future); returns
    /// how many. Tried entries stay (see the module docs).
    pub fn remove_terrible(&mut self, now: u64) -> usize {
        let doomed: Vec<usize> =
            self.new.ids().filter(|&(_, id)| self.entry(id).record.is_terrible(now)).map(|(slot, _)| slot).collect();
        for &slot in &doomed {
            self.clear_new(slot);
        }
        doomed.len()
    }

    // ---- entries ----

    fn lookup(&self, address: &Address) -> Option<u32> {
        if address.is_canonical() {
            self.index.get(address).copied()
        } else {
            self.index.get(&Address::new(address.addr.clone(), address.port)).copied()
        }
    }

    fn entry(&self, id: u32) -> &Entry {
        self.entries[id as usize].as_ref().expect("a table or index refers to a live entry")
    }

    fn entry_mut(&mut self, id: u32) -> &mut Entry {
        self.entries[id as usize].as_mut().expect("a table or index refers to a live entry")
    }

    fn insert_entry(&mut self, entry: Entry) -> u32 {
        let address = entry.record.address.clone();
        let id = match self.free.pop() {
            Some(id) => {
                self.entries[id as usize] = Some(entry);
                id
            }
            None => {
                self.entries.push(Some(entry));
                (self.entries.len() - 1) as u32
            }
        };
        self.index.insert(address, id);
        id
    }

    /// Forgets entry `id` (already out of its table).
    fn remove_entry(&mut self, id: u32) {
        if let Some(entry) = self.entries[id as usize].take() {
            self.index.remove(&entry.record.address);
            self.free.push(id);
            self.collisions.retain(|&c| c != id);
        }
    }

    fn rand_u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        self.rng.apply_keystream(&mut bytes);
        u64::from_le_bytes(bytes)
    }

    /// Uniform in `0..n` (`n` > 0, below 2^32).
    fn rand_below(&mut self, n: usize) -> usize {
        (((self.rand_u64() >> 32) * n as u64) >> 32) as usize
    }

    /// Checks the book's invariants (as Core's `CheckAddrman`): every
    /// entry sits in one table, at the slot its key gives, and that slot
    /// holds it; the index, the counts, the per-bucket counts and the list
    /// of occupied buckets agree with the entries (so, as slots change only
    /// with their bucket's count, no slot holds anything else); tried
    /// entries have connected; only storable, canonical addresses are kept;
    /// the collision set holds only new entries, at most 10, without
    /// repeats. For tests and fuzzing; an error says which invariant broke.
    /// It costs a few hashes per entry, not a scan of every slot.
    pub fn check(&self) -> Result<(), String> {
        let live = self.entries.iter().filter(|e| e.is_some()).count();
        if live != self.new.count + self.tried.count {
            return Err(format!("{live} live entries, counts {} + {}", self.new.count, self.tried.count));
        }
        if self.index.len() != live || live + self.free.len() != self.entries.len() {
            return Err("index or free list out of step with the entries".into());
        }
        let mut per_bucket = [vec![0usize; NEW_BUCKET_COUNT], vec![0usize; TRIED_BUCKET_COUNT]];
        for (id, entry) in self.entries.iter().enumerate() {
            let Some(entry) = entry else { continue };
            let r = &entry.record;
            let (table, tried) = if r.tried { (&self.tried, 1) } else { (&self.new, 0) };
            if table.slots.get(entry.slot_index()) != Some(&(id as u32)) {
                return Err(format!("{} is not in the slot its entry names", r.address));
            }
            per_bucket[tried][usize::from(entry.bucket)] += 1;
            let expected = if r.tried {
                tried_slot_of(&self.key, &r.address)
            } else {
                new_slot_of(&self.key, &r.address, &r.source)
            };
            if expected != (entry.bucket, entry.position) {
                return Err(format!("{} is in a slot its key does not give", r.address));
            }
            if self.index.get(&r.address) != Some(&(id as u32)) {
                return Err(format!("{} is not indexed", r.address));
            }
            if entry.network != r.address.network() {
                return Err(format!("{} has a stale network", r.address));
            }
            if r.tried && r.last_success.is_none() {
                return Err(format!("{} is tried but never connected", r.address));
            }
            if !r.address.is_canonical() || !(r.address.is_routable() || r.address.is_local_ip()) {
                return Err(format!("{} should not be stored", r.address));
            }
        }
        for (table, counts) in [&self.new, &self.tried].into_iter().zip(&per_bucket) {
            if counts.iter().sum::<usize>() != table.count {
                return Err(format!(
                    "a table counts {} entries, {} are in it",
                    table.count,
                    counts.iter().sum::<usize>()
                ));
            }
            for (bucket, &n) in counts.iter().enumerate() {
                let at = table.occupied_at[bucket];
                let listed =
                    if n == 0 { at == EMPTY } else { table.occupied.get(at as usize) == Some(&(bucket as u16)) };
                if usize::from(table.bucket_len[bucket]) != n || !listed {
                    return Err(format!("bucket {bucket} holds {n} entries, its count or listing disagrees"));
                }
            }
            if table.occupied.len() != counts.iter().filter(|&&n| n > 0).count() {
                return Err("the occupied buckets are listed wrong".into());
            }
        }
        if self.collisions.len() > TRIED_COLLISION_SIZE {
            return Err("collision set over its bound".into());
        }
        for (i, &id) in self.collisions.iter().enumerate() {
            match self.entries.get(id as usize) {
                Some(Some(entry)) if !entry.record.tried => {}
                _ => return Err(format!("collision {id} is not a new entry")),
            }
            if self.collisions[..i].contains(&id) {
                return Err(format!("collision {id} listed twice"));
            }
        }
        Ok(())
    }

    /// [`check`](Self::check), and a scan of every slot of both tables
    /// against the per-bucket counts.
    #[cfg(test)]
    fn check_all_slots(&self) -> Result<(), String> {
        self.check()?;
        for table in [&self.new, &self.tried] {
            for (bucket, slots) in table.slots.chunks(BUCKET_SIZE).enumerate() {
                let n = slots.iter().filter(|&&id| id != EMPTY).count();
                if n != usize::from(table.bucket_len[bucket]) {
                    return Err(format!("bucket {bucket} holds {n} ids, its count says {}", table.bucket_len[bucket]));
                }
            }
        }
        Ok(())
    }
}

/// An `addr` entry as a book address: IPv4-mapped becomes IPv4, and an
/// OnionCat address (TorV2 in IPv6 form) becomes TorV2, which is refused.
fn from_v1(address: &V1Address) -> Address {
    let ip = Ipv6Addr::from(address.address);
    if is_onioncat(&ip) {
        let o = ip.octets();
        let mut id = [0u8; 10];
        id.copy_from_slice(&o[6..]);
        return Address::new(AddrV2::TorV2(id), address.port);
    }
    Address::new(AddrV2::Ipv6(ip), address.port)
}

impl PartialEq for AddrBook {
    /// Same key, setting, last-good time, entries in the same slots, and
    /// collisions; the selection RNG's state is not compared.
    fn eq(&self, other: &AddrBook) -> bool {
        let same_slots = |a: &Slots, b: &Slots| {
            a.bucket_len == b.bucket_len
                && a.ids()
                    .zip(b.ids())
                    .all(|((slot_a, x), (slot_b, y))| slot_a == slot_b && self.entry(x) == other.entry(y))
        };
        let collisions = |book: &AddrBook| -> Vec<Address> {
            book.collisions.iter().map(|&id| book.entry(id).record.address.clone()).collect()
        };
        self.key == other.key
            && self.allow_unroutable == other.allow_unroutable
            && self.last_good == other.last_good
            && self.new.count == other.new.count
            && self.tried.count == other.tried.count
            && same_slots(&self.new, &other.new)
            && same_slots(&self.tried, &other.tried)
            && collisions(self) == collisions(other)
    }
}

impl Eq for AddrBook {}

impl fmt::Debug for AddrBook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddrBook")
            .field("new", &self.new.count)
            .field("tried", &self.tried.count)
            .field("collisions", &self.collisions.len())
            .field("allow_unroutable", &self.allow_unroutable)
            .finish_non_exhaustive()
    }
}

// ---- persistence ----

const MAGIC: &[u8; 6] = b"PLADDR";
const VERSION: u8 = 1;
/// Magic, version, key, flags, last good, entry count, collision count.
const HEADER_LEN: usize = 6 + 1 + 32 + 1 + 8 + 4 + 1;
const CHECKSUM_LEN: usize = 32;
/// The shortest entry: table, bucket, position, an IPv4 address (id,
/// length, 4 bytes), port, services, last seen, time flags, last count
/// attempt, attempts, source length and a one-byte group.
const MIN_ENTRY_LEN: usize = 1 + 2 + 1 + (1 + 1 + 4) + 2 + 8 + 8 + 1 + 8 + 4 + 2 + 1;

impl AddrBook {
    /// The book as bytes, to be saved and read back with
    /// [`import`](Self::import).
    ///
    /// Layout (integers little-endian): `PLADDR`, version 1, the 32-byte
    /// key, a flags byte (bit 0: unroutable allowed), the last-good time
    /// (u64), the entry count (u32), the collision count (u8); then each
    /// entry, the new table's then the tried table's in slot order: table
    /// (0 new, 1 tried), bucket (u16), position (u8), the address in BIP155
    /// form (network id, length, bytes), port (u16), services (u64), last
    /// seen (u64), a byte saying which of last try and last success follow
    /// (bit 0, bit 1), those (u64 each), the time a failure was last
    /// counted (u64), attempts (u32), the source group's bytes (u16 length,
    /// [`NetGroup::to_bytes`]); then each collision as the index of its
    /// entry (u32); then SHA256d of everything before it.
    pub fn export(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.len() * (MIN_ENTRY_LEN + 48) + CHECKSUM_LEN);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.key);
        out.push(u8::from(self.allow_unroutable));
        out.extend_from_slice(&self.last_good.to_le_bytes());
        out.extend_from_slice(&(self.len() as u32).to_le_bytes());
        out.push(self.collisions.len() as u8);
        let mut file_index = HashMap::new();
        for (tried, table) in [(false, &self.new), (true, &self.tried)] {
            for (_, id) in table.ids() {
                file_index.insert(id, file_index.len() as u32);
                let entry = self.entry(id);
                let r = &entry.record;
                out.push(u8::from(tried));
                out.extend_from_slice(&entry.bucket.to_le_bytes());
                out.push(entry.position);
                let (network, bytes) = r.address.bip155();
                out.push(network);
                out.push(bytes.len() as u8);
                out.extend_from_slice(&bytes);
                out.extend_from_slice(&r.address.port.to_le_bytes());
                out.extend_from_slice(&r.services.to_u64().to_le_bytes());
                out.extend_from_slice(&r.last_seen.to_le_bytes());
                out.push(u8::from(r.last_try.is_some()) | (u8::from(r.last_success.is_some()) << 1));
                for time in [r.last_try, r.last_success].into_iter().flatten() {
                    out.extend_from_slice(&time.to_le_bytes());
                }
                out.extend_from_slice(&entry.last_count_attempt.to_le_bytes());
                out.extend_from_slice(&r.attempts.to_le_bytes());
                let source = r.source.to_bytes();
                out.extend_from_slice(&(source.len() as u16).to_le_bytes());
                out.extend_from_slice(&source);
            }
        }
        for id in &self.collisions {
            out.extend_from_slice(&file_index[id].to_le_bytes());
        }
        let hash = sha256d::Hash::hash(&out);
        out.extend_from_slice(hash.as_byte_array());
        out
    }

    /// Reads a book written by [`export`](Self::export); `seed` keys the
    /// selection RNG (the bucketing key is the file's).
    ///
    /// Everything is checked before the book is built, and any fault
    /// refuses the whole input: the magic, the version, the checksum, the
    /// counts (against the capacity and the input's length, before anything
    /// is allocated from them), every field's range and canonical form,
    /// each entry's slot against the one its key gives (two entries in one
    /// slot, or one out of order, also refuse the file), repeated
    /// addresses, and the collisions (new entries, at most 10, no repeat).
    /// Exported again, an imported book gives the same bytes.
    pub fn import(bytes: &[u8], seed: [u8; 32]) -> Result<AddrBook, ImportError> {
        let prefix = bytes.len().min(MAGIC.len());
        if bytes[..prefix] != MAGIC[..prefix] {
            return Err(ImportError::BadMagic);
        }
        match bytes.get(MAGIC.len()) {
            None => return Err(ImportError::Truncated),
            Some(&VERSION) => {}
            Some(&version) => return Err(ImportError::UnsupportedVersion(version)),
        }
        if bytes.len() < HEADER_LEN + CHECKSUM_LEN {
            return Err(ImportError::Truncated);
        }
        let (body, checksum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        if sha256d::Hash::hash(body).as_byte_array()[..] != *checksum {
            return Err(ImportError::Checksum);
        }
        let mut r = Reader { bytes: body, pos: MAGIC.len() + 1 };
        let mut key = [0u8; 32];
        key.copy_from_slice(r.take(32)?);
        let flags_at = r.pos;
        let flags = r.u8()?;
        if flags > 1 {
            return Err(ImportError::Malformed { offset: flags_at, what: "unknown flags" });
        }
        let last_good = r.u64()?;
        let count = r.u32()?;
        let collision_at = r.pos;
        let collision_count = r.u8()?;
        if count as usize > CAPACITY {
            return Err(ImportError::TooMany { count });
        }
        if usize::from(collision_count) > TRIED_COLLISION_SIZE {
            return Err(ImportError::Malformed { offset: collision_at, what: "more than 10 collisions" });
        }
        if (count as usize) * MIN_ENTRY_LEN + usize::from(collision_count) * 4 > r.remaining() {
            return Err(ImportError::Truncated);
        }

        let mut book = AddrBook::with_key(key, rng_from(&seed));
        book.allow_unroutable = flags & 1 != 0;
        book.last_good = last_good;
        book.entries.reserve_exact(count as usize);
        let mut previous: Option<(bool, u16, u8)> = None;
        for _ in 0..count {
            let at = r.pos;
            let entry = read_entry(&mut r, &key)?;
            let place = (entry.record.tried, entry.bucket, entry.position);
            match previous {
                Some(p) if p == place => return Err(ImportError::SlotTaken { offset: at }),
                Some(p) if p > place => {
                    return Err(ImportError::Malformed { offset: at, what: "entries out of slot order" });
                }
                _ => previous = Some(place),
            }
            if book.index.contains_key(&entry.record.address) {
                return Err(ImportError::DuplicateAddress { offset: at });
            }
            let (tried, slot) = (entry.record.tried, entry.slot_index());
            let id = book.insert_entry(entry);
            if tried {
                book.tried.put(slot, id);
            } else {
                book.new.put(slot, id);
            }
        }
        for _ in 0..collision_count {
            let at = r.pos;
            let index = r.u32()?;
            // Ids were given in file order, from 0.
            match book.entries.get(index as usize) {
                Some(Some(entry)) if !entry.record.tried => {}
                _ => return Err(ImportError::Malformed { offset: at, what: "collision is not a new entry" }),
            }
            if book.collisions.contains(&index) {
                return Err(ImportError::Malformed { offset: at, what: "collision listed twice" });
            }
            book.collisions.push(index);
        }
        if r.remaining() != 0 {
            return Err(ImportError::Malformed { offset: r.pos, what: "bytes after the last entry" });
        }
        Ok(book)
    }
}

fn read_entry(r: &mut Reader<'_>, key: &[u8; 32]) -> Result<Entry, ImportError> {
    let at = r.pos;
    let malformed = |what| ImportError::Malformed { offset: at, what };
    let tried = match r.u8()? {
        0 => false,
        1 => true,
        _ => return Err(malformed("unknown table")),
    };
    let bucket = r.u16()?;
    let position = r.u8()?;
    let buckets = if tried { TRIED_BUCKET_COUNT } else { NEW_BUCKET_COUNT };
    if usize::from(bucket) >= buckets || usize::from(position) >= BUCKET_SIZE {
        return Err(malformed("slot out of range"));
    }
    let network = r.u8()?;
    let len = r.u8()?;
    let raw = r.take(usize::from(len))?;
    let addr = match (network, raw.len()) {
        (1, 4) => AddrV2::Ipv4(<[u8; 4]>::try_from(raw).map_err(|_| malformed("address length"))?.into()),
        (2, 16) => AddrV2::Ipv6(<[u8; 16]>::try_from(raw).map_err(|_| malformed("address length"))?.into()),
        (4, 32) => AddrV2::TorV3(raw.try_into().map_err(|_| malformed("address length"))?),
        (5, 32) => AddrV2::I2p(raw.try_into().map_err(|_| malformed("address length"))?),
        (6, 16) => AddrV2::Cjdns(<[u8; 16]>::try_from(raw).map_err(|_| malformed("address length"))?.into()),
        (1 | 2 | 4 | 5 | 6, _) => return Err(malformed("address of the wrong length")),
        _ => return Err(malformed("unsupported network")),
    };
    let port = r.u16()?;
    let address = Address { addr, port };
    if !address.is_canonical() {
        return Err(malformed("ipv4-mapped address"));
    }
    if !(address.is_routable() || address.is_local_ip()) {
        return Err(malformed("address the book does not store"));
    }
    let services = ServiceFlags::from(r.u64()?);
    let last_seen = r.u64()?;
    let times = r.u8()?;
    if times > 3 {
        return Err(malformed("unknown time flags"));
    }
    let last_try = if times & 1 != 0 { Some(r.u64()?) } else { None };
    let last_success = if times & 2 != 0 { Some(r.u64()?) } else { None };
    let last_count_attempt = r.u64()?;
    let attempts = r.u32()?;
    let source_len = r.u16()?;
    let source = NetGroup::from_bytes(r.take(usize::from(source_len))?).ok_or(malformed("invalid source group"))?;
    if tried && last_success.is_none() {
        return Err(malformed("tried entry that never connected"));
    }
    let expected = if tried { tried_slot_of(key, &address) } else { new_slot_of(key, &address, &source) };
    if expected != (bucket, position) {
        return Err(ImportError::WrongSlot { offset: at });
    }
    let record = Record { address, services, last_seen, last_try, last_success, attempts, tried, source };
    let network = record.address.network();
    Ok(Entry { record, last_count_attempt, network, bucket, position })
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ImportError> {
        if self.remaining() < n {
            return Err(ImportError::Truncated);
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ImportError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, ImportError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, ImportError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, ImportError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, ImportError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}

/// Why [`AddrBook::import`] refused its input. Any fault refuses the whole
/// input.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImportError {
    /// The input ends before the book does.
    Truncated,
    /// The input does not start with the magic `PLADDR`.
    BadMagic,
    /// The book is in a version of the format this release cannot read.
    UnsupportedVersion(u8),
    /// The checksum does not match: the input is damaged.
    Checksum,
    /// The entry count is above the capacity ([`CAPACITY`]).
    TooMany {
        /// The entry count read.
        count: u32,
    },
    /// A field is out of range or not in canonical form.
    Malformed {
        /// Where the faulty field (or its entry) starts.
        offset: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// An entry is not in the slot its key and source give.
    WrongSlot {
        /// Where the entry starts.
        offset: usize,
    },
    /// Two entries claim one slot.
    SlotTaken {
        /// Where the second entry starts.
        offset: usize,
    },
    /// An address is listed twice.
    DuplicateAddress {
        /// Where the second entry starts.
        offset: usize,
    },
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImportError::Truncated => f.write_str("address book is truncated"),
            ImportError::BadMagic => f.write_str("not an address book (bad magic)"),
            ImportError::UnsupportedVersion(version) => {
                write!(f, "unsupported address book version {version} (expected {VERSION})")
            }
            ImportError::Checksum => f.write_str("address book checksum mismatch"),
            ImportError::TooMany { count } => write!(f, "address book has {count} entries (at most {CAPACITY})"),
            ImportError::Malformed { offset, what } => write!(f, "malformed address book at byte {offset}: {what}"),
            ImportError::WrongSlot { offset } => {
                write!(f, "address book entry at byte {offset} is not in the slot its key gives")
            }
            ImportError::SlotTaken { offset } => {
                write!(f, "address book entry at byte {offset} claims a slot already taken")
            }
            ImportError::DuplicateAddress { offset } => {
                write!(f, "address book entry at byte {offset} repeats an address")
            }
        }
    }
}

impl std::error::Error for ImportError {}

// ---- rate limit ----

/// Tokens refilled per second (Core's `MAX_ADDR_RATE_PER_SECOND`).
const ADDR_RATE_PER_SECOND: f64 = 0.1;
/// The refill stops here (`MAX_ADDR_PROCESSING_TOKEN_BUCKET`).
const ADDR_TOKEN_BURST: f64 = 1000.0;
/// What [`AddrRateLimit::on_getaddr_sent`] adds, and the most it can raise
/// the bucket above the burst.
const GETADDR_TOKENS: f64 = MAX_ADDR_PER_MESSAGE as f64;

#[derive(Debug, Clone, Copy)]
enum Clock {
    Instant(Instant),
    Unix(u64),
}

/// One peer's budget of gossiped addresses (Core's `m_addr_token_bucket`):
/// 0.1 token a second up to 1,000, one token per address processed.
/// Sans-IO: the time is passed in.
#[derive(Debug, Clone)]
pub struct AddrRateLimit {
    tokens: f64,
    last: Option<Clock>,
}

impl Default for AddrRateLimit {
    fn default() -> AddrRateLimit {
        AddrRateLimit::new()
    }
}

impl AddrRateLimit {
    /// A fresh peer's budget: one token, as Core (the peer's own
    /// self-announcement). The refill clock starts at the first
    /// [`take`](Self::take).
    pub fn new() -> AddrRateLimit {
        AddrRateLimit { tokens: 1.0, last: None }
    }

    /// We sent the peer `getaddr`: its answer (up to 1,000 addresses) may
    /// be processed in full. Adds 1,000 tokens, capped at 2,000 so that
    /// repeated calls cannot bank more than one answer beyond the burst.
    pub fn on_getaddr_sent(&mut self) {
        self.tokens = (self.tokens + GETADDR_TOKENS).min(ADDR_TOKEN_BURST + GETADDR_TOKENS);
    }

    /// The tokens available now (fractional: the refill is continuous).
    pub fn tokens(&self) -> f64 {
        self.tokens
    }

    /// Takes up to `wanted` tokens and returns how many it got, after
    /// refilling 0.1 a second since the previous call (only while below
    /// 1,000, and never above it).
    ///
    /// The clock is either this `Instant` or the unix seconds that
    /// [`AddrBook::add_message`] passes; a call on the other clock than
    /// the previous one restarts the refill without adding anything, so
    /// use one per limiter.
    pub fn take(&mut self, wanted: usize, now: Instant) -> usize {
        self.take_clock(wanted, Clock::Instant(now))
    }

    fn take_clock(&mut self, wanted: usize, now: Clock) -> usize {
        let elapsed = match (self.last, now) {
            (Some(Clock::Instant(last)), Clock::Instant(now)) => now.saturating_duration_since(last).as_secs_f64(),
            (Some(Clock::Unix(last)), Clock::Unix(now)) => now.saturating_sub(last) as f64,
            _ => 0.0,
        };
        if self.tokens < ADDR_TOKEN_BURST {
            self.tokens = (self.tokens + elapsed * ADDR_RATE_PER_SECOND).min(ADDR_TOKEN_BURST);
        }
        self.last = Some(match (self.last, now) {
            // Never move the clock back: time before the last call is not refilled twice.
            (Some(Clock::Unix(last)), Clock::Unix(now)) => Clock::Unix(last.max(now)),
            (Some(Clock::Instant(last)), Clock::Instant(now)) => Clock::Instant(last.max(now)),
            _ => now,
        });
        let granted = (self.tokens.floor() as usize).min(wanted);
        self.tokens -= granted as f64;
        granted
    }
}
