//! The outbound pool: keeps N outbound peers with the services you need,
//! from distinct network groups, refilled from the address book.
//!
//! [`Pool`] is a sans-IO state machine. It is fed the reactor's events
//! ([`Pool::on_event`]), lookup results ([`Pool::on_resolved`]) and the
//! time ([`Pool::tick`]), and asks its driver for [`PoolAction`]s: dial a
//! target, send a `getaddr`, disconnect, look names up. [`Pooled`](super::Pooled)
//! drives it on an ordinary reactor, so the user keeps the usual
//! [`Handle`](crate::Handle) and events.
//!
//! What it does, as Bitcoin Core's `ThreadOpenConnections` does:
//! - **Refill.** While fewer than [`PoolConfig::outbound`] outbound peers
//!   are connected or being connected, it draws an address from the
//!   [`AddrBook`] (Core's 50/50 new/tried choice), skips addresses it is
//!   connected to (its own peers, and any peer of the reactor it has seen
//!   announced: dialled by the user, or inbound, whose IP then counts at
//!   any port, as in Core), whose network it cannot reach, that lack the required
//!   services or whose network group one of its peers already has, and
//!   those still in their backoff, and dials the first that passes.
//! - **Backoff.** An address that failed waits
//!   [`PoolConfig::backoff`] × 2ⁿ⁻¹ after its n-th failure in a row, at most
//!   [`PoolConfig::max_backoff`]; a completed handshake clears it.
//! - **Verification.** After the handshake a peer that does not announce the
//!   required services is dropped, and the book learns its real services.
//!   Good peers are marked good (moved to "tried"), asked for addresses
//!   once, and their `addr`/`addrv2` answers go into the book through a
//!   per-peer rate limit.
//! - **Seeds.** With an empty book (or a thin one and no peer after
//!   [`SEED_DELAY`]) it asks the DNS seeds, with the service-bit prefix of
//!   the services it needs. Through a proxy no name is looked up locally:
//!   each seed is reached by name through the proxy, asked `getaddr` and
//!   dropped after its answer (Core's "addr fetch"). If the seeds give
//!   nothing usable, the fixed seeds are added once.
//! - **Feelers** (optional, [`PoolConfig::feeler_interval`]): with every
//!   slot filled, a short connection to a "new" address now and then,
//!   which promotes it to "tried" if it answers.
//! - **Manual peers** ([`Pool::add_manual`]) do not count against the
//!   target, are reconnected with backoff and are never dropped.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::p2p::ServiceFlags;
use bitcoin::p2p::message::NetworkMessage;

use crate::discovery::addrbook::{AddrBook, AddrRateLimit, Address, Query, Table};
use crate::discovery::seeds::{self, Resolver, SystemResolver};
use crate::event::{Event, PeerId};
use crate::netgroup::{NetGroup, Network};
use crate::target::{Hostname, Target, TargetError};
use crate::types::later;

/// Core's count of full-relay outbound peers (`MAX_OUTBOUND_FULL_RELAY_CONNECTIONS`).
pub const DEFAULT_OUTBOUND: usize = 8;

/// The first backoff of an address that failed.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(2);

/// The longest backoff.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);

/// Core's `FEELER_INTERVAL`.
pub const DEFAULT_FEELER_INTERVAL: Duration = Duration::from_secs(120);

/// How long a seed reached through the proxy has to answer `getaddr`.
pub const ADDR_FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Core's `DNSSEEDS_DELAY_FEW_PEERS`: with addresses in the book but no peer
/// this long after the start, the seeds are asked anyway.
pub const SEED_DELAY: Duration = Duration::from_secs(11);

/// With fewer addresses than this in the book the seeds are asked (Core's
/// threshold of 1,000 in `ThreadDNSAddressSeed`).
pub const SEED_BOOK_THRESHOLD: usize = 1000;

/// How many addresses the book is asked for per refill step before the
/// pool gives up until the next tick (Core tries 100).
const SELECT_TRIES: usize = 100;

/// Bound of the per-address backoff table; entries whose backoff has ended
/// are dropped first when it is full.
const MAX_BACKOFF_ENTRIES: usize = 8192;

/// Bound of the table that remembers where this run's addresses came from.
const MAX_ORIGINS: usize = 16_384;

/// How often the pool wants a [`Pool::tick`] when nothing else is due.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// How long the seeds' lookups may take before the fixed seeds are used.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The services Core asks of its outbound peers (`NODE_NETWORK |
/// NODE_WITNESS`).
pub fn default_services() -> ServiceFlags {
    ServiceFlags::NETWORK | ServiceFlags::WITNESS
}

/// What the pool needs to know.
#[derive(Clone)]
pub struct PoolConfig {
    /// The chain: picks the seeds and the default port.
    pub network: bitcoin::Network,
    /// How many outbound peers to keep (default [`DEFAULT_OUTBOUND`]).
    pub outbound: usize,
    /// Services every pool peer must announce (default
    /// [`default_services`]). Also picks the seeds' service-bit prefix.
    pub services: ServiceFlags,
    /// Core's `-onlynet`: the networks the pool may dial, or `None` for
    /// every network it can reach (IPv4 and IPv6; onion with a proxy;
    /// unroutable addresses with [`allow_unroutable`](Self::allow_unroutable)).
    /// Networks it cannot reach (onion without a proxy, I2P, CJDNS) are
    /// never dialled, listed or not. Manual peers are dialled whatever
    /// their network: they are the user's explicit choice.
    pub networks: Option<Vec<Network>>,
    /// At most one pool peer per network group (default true, as Core).
    /// Loopback tests, where every address is in one group, turn it off.
    pub distinct_groups: bool,
    /// Whether the book takes unroutable (local, private) addresses.
    /// Default false, as Core; regtest and loopback tests turn it on.
    pub allow_unroutable: bool,
    /// Whether connections go through a SOCKS5 proxy: then seeds are
    /// reached by name through it and never looked up locally.
    /// [`Pooled`](super::Pooled) sets it from [`Config::proxy`](crate::Config).
    pub proxied: bool,
    /// Whether onion services can be reached (a proxy or an onion proxy is
    /// set). [`Pooled`](super::Pooled) sets it from the config.
    pub onion: bool,
    /// DNS seed host names, without a service-bit prefix (default
    /// [`seeds::dns_seeds`] of the network).
    pub dns_seeds: Vec<String>,
    /// The port of addresses the seeds give (default
    /// [`seeds::default_port`]).
    pub seed_port: u16,
    /// The fallback when the seeds give nothing (default
    /// [`seeds::fixed_seeds`] of the network).
    pub fixed_seeds: Vec<Address>,
    /// Looks the seeds up (default [`SystemResolver`]); called off the
    /// reactor thread, never through a proxy.
    pub resolver: Arc<dyn Resolver>,
    /// First backoff of a failed address (default [`DEFAULT_BACKOFF`]).
    pub backoff: Duration,
    /// Longest backoff (default [`DEFAULT_MAX_BACKOFF`]).
    pub max_backoff: Duration,
    /// How often to run a feeler once every slot is filled, or `None` (the
    /// default) for no feelers.
    pub feeler_interval: Option<Duration>,
}

impl PoolConfig {
    /// Defaults for `network`.
    pub fn new(network: bitcoin::Network) -> PoolConfig {
        PoolConfig {
            network,
            outbound: DEFAULT_OUTBOUND,
            services: default_services(),
            networks: None,
            distinct_groups: true,
            allow_unroutable: network == bitcoin::Network::Regtest,
            proxied: false,
            onion: false,
            dns_seeds: seeds::dns_seeds(network).iter().map(|s| s.to_string()).collect(),
            seed_port: seeds::default_port(network),
            fixed_seeds: seeds::fixed_seeds(network).into_iter().map(|(a, p)| Address::new(a, p)).collect(),
            resolver: Arc::new(SystemResolver),
            backoff: DEFAULT_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            feeler_interval: None,
        }
    }

    /// Whether the pool may dial `network`.
    pub fn reaches(&self, network: Network) -> bool {
        let can = match network {
            Network::Ipv4 | Network::Ipv6 => true,
            Network::Unroutable => self.allow_unroutable,
            Network::Onion => self.onion,
            _ => false,
        };
        can && self.networks.as_ref().is_none_or(|only| only.contains(&network))
    }

    fn reachable_networks(&self) -> Vec<Network> {
        [Network::Ipv4, Network::Ipv6, Network::Onion, Network::Unroutable]
            .into_iter()
            .filter(|n| self.reaches(*n))
            .collect()
    }

    /// Whether the seeds may be used: they serve IPv4 and IPv6 addresses.
    fn seeds_useful(&self) -> bool {
        self.reaches(Network::Ipv4) || self.reaches(Network::Ipv6)
    }
}

impl fmt::Debug for PoolConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolConfig")
            .field("network", &self.network)
            .field("outbound", &self.outbound)
            .field("services", &self.services)
            .field("networks", &self.networks)
            .field("distinct_groups", &self.distinct_groups)
            .field("allow_unroutable", &self.allow_unroutable)
            .field("proxied", &self.proxied)
            .field("onion", &self.onion)
            .field("dns_seeds", &self.dns_seeds)
            .field("seed_port", &self.seed_port)
            .field("fixed_seeds", &self.fixed_seeds.len())
            .field("backoff", &self.backoff)
            .field("max_backoff", &self.max_backoff)
            .field("feeler_interval", &self.feeler_interval)
            .finish_non_exhaustive()
    }
}

/// Where the pool found an address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Origin {
    /// A DNS seed's answer (or, through a proxy, the `addr` of a seed
    /// reached by name): the seed's host name.
    Seed(String),
    /// The address book: imported, or learned from peers' `addr`.
    Book,
    /// The fixed seeds.
    Fixed,
    /// Added by the user ([`Pool::add_manual`]).
    Manual,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Seed(host) => write!(f, "seed {host}"),
            Origin::Book => f.write_str("book"),
            Origin::Fixed => f.write_str("fixed"),
            Origin::Manual => f.write_str("manual"),
        }
    }
}

/// What a pool connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerKind {
    /// One of the [`PoolConfig::outbound`] peers.
    Outbound,
    /// A peer the user added; never dropped by the pool.
    Manual,
    /// A short test of a "new" address (dropped after the handshake).
    Feeler,
    /// A seed reached by name through the proxy, asked for addresses and
    /// dropped.
    AddrFetch,
}

impl fmt::Display for PeerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PeerKind::Outbound => "outbound",
            PeerKind::Manual => "manual",
            PeerKind::Feeler => "feeler",
            PeerKind::AddrFetch => "addr-fetch",
        })
    }
}

/// A connection the pool holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolPeer {
    /// The reactor's id.
    pub peer: PeerId,
    /// What was dialled.
    pub target: Target,
    /// What it is for.
    pub kind: PeerKind,
    /// Where its address came from.
    pub origin: Origin,
    /// Whether its handshake completed (and it has the services).
    pub ready: bool,
    /// The services it announced (none before the handshake).
    pub services: ServiceFlags,
}

/// Names one dial the pool asked for, until the driver reports its
/// [`PeerId`] with [`Pool::dialed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DialToken(u64);

/// What the pool asks its driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum PoolAction {
    /// Call [`Handle::connect`](crate::Handle::connect) with `target`, then
    /// report the id with [`Pool::dialed`].
    Connect {
        /// Names this dial in [`Pool::dialed`].
        token: DialToken,
        /// What to dial.
        target: Target,
    },
    /// Send `message` to `peer`.
    Send(PeerId, NetworkMessage),
    /// Disconnect `peer` (after flushing).
    Disconnect(PeerId),
    /// Look these seed names up off the reactor thread and report each
    /// with [`Pool::on_resolved`].
    Resolve(Vec<(String, u16)>),
}

/// Counters of what the pool did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Dials asked for (every kind).
    pub dials: u64,
    /// Dials or handshakes that failed.
    pub failures: u64,
    /// Outbound peers that completed the handshake with the services.
    pub ready: u64,
    /// Peers dropped because they lacked the required services.
    pub wrong_services: u64,
    /// Addresses the book accepted from `addr`/`addrv2`.
    pub learned: u64,
    /// Addresses dropped by the per-peer rate limit.
    pub rate_limited: u64,
    /// Addresses the seeds gave (DNS answers and addr-fetch replies).
    pub seeded: u64,
    /// Whether the fixed seeds were added.
    pub used_fixed: bool,
    /// Feeler connections made.
    pub feelers: u64,
}

#[derive(Debug)]
struct Held {
    target: Target,
    address: Option<Address>,
    group: Option<NetGroup>,
    kind: PeerKind,
    origin: Origin,
    ready: bool,
    services: ServiceFlags,
    since: Instant,
}

impl Held {
    fn new(
        target: Target,
        address: Option<Address>,
        group: Option<NetGroup>,
        kind: PeerKind,
        origin: Origin,
        since: Instant,
    ) -> Held {
        Held { target, address, group, kind, origin, ready: false, services: ServiceFlags::NONE, since }
    }
}

#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    until: Instant,
}

#[derive(Debug, PartialEq, Eq)]
enum Seeding {
    /// Not asked yet.
    Idle,
    /// Lookups or addr fetches under way: the name asked (or, through a
    /// proxy, the seed) → the seed as configured.
    Running { since: Instant, pending: HashMap<String, String> },
    /// Asked; answers are in (or timed out).
    Done,
}

/// The outbound pool as a sans-IO state machine. See the [module
/// docs](self).
pub struct Pool {
    config: PoolConfig,
    book: AddrBook,
    started: Instant,
    held: HashMap<PeerId, Held>,
    dialing: HashMap<DialToken, Held>,
    next_token: u64,
    limits: HashMap<PeerId, AddrRateLimit>,
    /// Peers the pool does not hold (inbound, or dialled by the user), by
    /// id: their group, the source of their `addr` messages, and their
    /// address, which the pool does not dial a second time.
    sources: HashMap<PeerId, (NetGroup, Option<Address>)>,
    /// How many of `sources` are at each address.
    foreign: HashMap<Address, u32>,
    backoff: HashMap<Address, Backoff>,
    origins: HashMap<Address, Origin>,
    manual: Vec<(Target, Option<PeerId>, Backoff)>,
    seeding: Seeding,
    seed_fetch: VecDeque<String>,
    /// The last search of the book found nothing usable: don't search
    /// again until something changes (a peer goes, addresses arrive, a
    /// tick).
    starved: bool,
    next_feeler: Option<Instant>,
    actions: VecDeque<PoolAction>,
    stats: PoolStats,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("config", &self.config)
            .field("book", &self.book.len())
            .field("held", &self.held.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool that starts at `now`, drawing from `book` (new, or imported
    /// from an earlier run). The book's unroutable setting follows
    /// [`PoolConfig::allow_unroutable`].
    pub fn new(config: PoolConfig, mut book: AddrBook, now: Instant) -> Pool {
        book.set_allow_unroutable(config.allow_unroutable);
        let next_feeler = config.feeler_interval.map(|d| later(now, d));
        Pool {
            config,
            book,
            started: now,
            held: HashMap::new(),
            dialing: HashMap::new(),
            next_token: 0,
            limits: HashMap::new(),
            sources: HashMap::new(),
            foreign: HashMap::new(),
            backoff: HashMap::new(),
            origins: HashMap::new(),
            manual: Vec::new(),
            seeding: Seeding::Idle,
            seed_fetch: VecDeque::new(),
            starved: false,
            next_feeler,
            actions: VecDeque::new(),
            stats: PoolStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// The address book.
    pub fn book(&self) -> &AddrBook {
        &self.book
    }

    /// The address book, to add addresses or export it.
    pub fn book_mut(&mut self) -> &mut AddrBook {
        &mut self.book
    }

    /// The address book, to keep for the next run ([`AddrBook::export`]).
    pub fn into_book(self) -> AddrBook {
        self.book
    }

    /// What the pool did so far.
    pub fn stats(&self) -> PoolStats {
        self.stats
    }

    /// Changes how many outbound peers to keep. Lowering it drops no peer:
    /// the pool only stops refilling until it is below the new count.
    pub fn set_outbound(&mut self, outbound: usize) {
        self.config.outbound = outbound;
    }

    /// The connections the pool holds, by id: every dial the driver has
    /// reported with [`dialed`](Self::dialed), ready or not.
    pub fn peers(&self) -> Vec<PoolPeer> {
        let mut peers: Vec<PoolPeer> = self
            .held
            .iter()
            .map(|(peer, h)| PoolPeer {
                peer: *peer,
                target: h.target.clone(),
                kind: h.kind,
                origin: h.origin.clone(),
                ready: h.ready,
                services: h.services,
            })
            .collect();
        peers.sort_by_key(|p| p.peer);
        peers
    }

    /// The pool's view of `peer`, if it holds it.
    pub fn peer(&self, peer: PeerId) -> Option<PoolPeer> {
        self.peers().into_iter().find(|p| p.peer == peer)
    }

    /// How many outbound peers are ready.
    pub fn ready_count(&self) -> usize {
        self.held.values().filter(|h| h.kind == PeerKind::Outbound && h.ready).count()
    }

    /// Adds a peer that the pool connects to and keeps: it is reconnected
    /// with backoff whenever it goes, and never dropped. It does not count
    /// against [`PoolConfig::outbound`].
    ///
    /// A connection the pool already holds to `target` as an ordinary
    /// outbound peer becomes the manual peer's connection: the pool never
    /// opens a second one to the same host. While `target` is held as a
    /// feeler or addr fetch, or the reactor has a peer the pool does not
    /// hold there, the pool waits for that connection to end. Targets are
    /// compared as addresses, so `[::ffff:1.2.3.4]:8333` is `1.2.3.4:8333`.
    pub fn add_manual(&mut self, target: Target, now: Instant) {
        if self.manual.iter().any(|(t, _, _)| same_host(t, &target)) {
            return;
        }
        self.manual.push((target.clone(), None, Backoff { failures: 0, until: now }));
        self.adopt_manual(&target);
    }

    /// Makes a held or dialling connection to the manual peer `target`
    /// (an outbound one, or one left over from an earlier manual peer) its
    /// connection; whether the pool has one to `target` of any kind.
    fn adopt_manual(&mut self, target: &Target) -> bool {
        let held = self.held.iter_mut().find(|(_, h)| same_host(&h.target, target));
        if let Some((peer, h)) = held {
            let peer = *peer;
            if matches!(h.kind, PeerKind::Outbound | PeerKind::Manual) {
                h.kind = PeerKind::Manual;
                if let Some(m) = self.manual.iter_mut().find(|(t, _, _)| same_host(t, target)) {
                    m.1 = Some(peer);
                }
            }
            return true;
        }
        match self.dialing.values_mut().find(|h| same_host(&h.target, target)) {
            Some(h) => {
                // `dialed` links a manual-kind dial to its entry.
                if h.kind == PeerKind::Outbound {
                    h.kind = PeerKind::Manual;
                }
                true
            }
            None => false,
        }
    }

    /// Stops keeping a manual peer; returns its id if it is connected (the
    /// pool does not disconnect it: that is the caller's choice).
    ///
    /// The connection (or dial in progress) becomes one of the pool's
    /// outbound peers if it could have been chosen as one: a free slot, an
    /// address the pool may dial, the required services once ready, and
    /// (with [`PoolConfig::distinct_groups`]) a group no other peer has.
    /// Otherwise the pool keeps it, uncounted, until it goes, and never
    /// redials it.
    pub fn remove_manual(&mut self, target: &Target) -> Option<PeerId> {
        let i = self.manual.iter().position(|(t, _, _)| same_host(t, target))?;
        let (target, peer, _) = self.manual.remove(i);
        let room = self.outbound_count() < self.config.outbound;
        let connection = match peer {
            Some(p) => self.held.get(&p),
            None => self.dialing.values().find(|h| h.kind == PeerKind::Manual && same_host(&h.target, &target)),
        };
        if room && connection.is_some_and(|h| self.fits_as_outbound(h)) {
            let connection = match peer {
                Some(p) => self.held.get_mut(&p),
                None => self.dialing.values_mut().find(|h| h.kind == PeerKind::Manual && same_host(&h.target, &target)),
            };
            if let Some(h) = connection {
                h.kind = PeerKind::Outbound;
            }
        }
        peer
    }

    /// Whether the connection `h` could have been chosen as an outbound
    /// peer (slots aside).
    fn fits_as_outbound(&self, h: &Held) -> bool {
        let reachable = h.address.as_ref().is_some_and(|a| self.config.reaches(a.network()));
        let services = !h.ready || h.services.has(self.config.services);
        let group_taken = self.config.distinct_groups
            && self
                .held
                .values()
                .chain(self.dialing.values())
                .filter(|o| !std::ptr::eq(*o, h))
                .any(|o| matches!(o.kind, PeerKind::Outbound | PeerKind::Manual) && o.group == h.group);
        reachable && services && !group_taken
    }

    /// The next action for the driver, if any.
    pub fn poll_action(&mut self) -> Option<PoolAction> {
        self.actions.pop_front()
    }

    /// When the pool next wants [`tick`](Self::tick) (at most a second
    /// away).
    pub fn poll_timeout(&self, now: Instant) -> Instant {
        let mut at = later(now, IDLE_TICK);
        if let Some(f) = self.next_feeler {
            at = at.min(f);
        }
        for (_, peer, backoff) in &self.manual {
            if peer.is_none() {
                at = at.min(backoff.until);
            }
        }
        at
    }

    /// The driver dialled the pool's `token`: `peer` is the id the reactor
    /// gave it, or `None` if the reactor is gone.
    pub fn dialed(&mut self, token: DialToken, peer: Option<PeerId>) {
        let Some(held) = self.dialing.remove(&token) else { return };
        let manual = match held.kind {
            PeerKind::Manual => self.manual.iter_mut().find(|(t, _, _)| same_host(t, &held.target)),
            _ => None,
        };
        let Some(peer) = peer else {
            // Not dialled at all: a manual peer waits out its backoff
            // rather than being asked for again at once.
            if let Some(m) = manual {
                m.2.failures = m.2.failures.saturating_add(1);
                m.2.until = m.2.until.max(later(held.since, backoff_for(&self.config, m.2.failures)));
            }
            return;
        };
        if let Some(m) = manual {
            m.1 = Some(peer);
        }
        self.limits.insert(peer, AddrRateLimit::new());
        self.held.insert(peer, held);
    }

    /// A seed lookup finished: `name` (as asked in [`PoolAction::Resolve`])
    /// gave `result`.
    pub fn on_resolved(
        &mut self,
        name: &str,
        result: Result<Vec<std::net::SocketAddr>, seeds::ResolveError>,
        now: Instant,
        unix: u64,
    ) {
        let Seeding::Running { pending, .. } = &mut self.seeding else { return };
        let Some(seed) = pending.remove(name) else { return };
        let host = split_seed(&seed, self.config.seed_port).map_or_else(|_| seed.clone(), |(h, _)| h);
        let source = seed_group(&host);
        let services = self.assumed_services();
        match result {
            Ok(addrs) => {
                log::debug!("seed {name}: {} addresses", addrs.len());
                // Core keeps at most 32 of one seed's answer.
                for addr in addrs.into_iter().take(seeds::MAX_SEED_ADDRS) {
                    let address = Address::from(addr);
                    if self.book.add(address.clone(), services, unix, &source, unix) {
                        self.stats.seeded += 1;
                        self.remember(address, Origin::Seed(seed.clone()));
                    }
                }
            }
            Err(e) => log::debug!("seed {name}: {}", crate::error::Report(&e)),
        }
        self.check_seeding_done(now);
        self.starved = false;
        self.refill(now, unix);
    }

    /// Feeds one reactor event. Events about peers the pool does not hold
    /// are looked at only for their `addr`/`addrv2` messages.
    pub fn on_event(&mut self, event: &Event, now: Instant, unix: u64) {
        match event {
            Event::Ready { peer, info } => self.on_ready(*peer, info, now, unix),
            Event::Message { peer, message, .. } => self.on_message(*peer, message, now, unix),
            Event::ConnectFailed { peer, .. } => self.on_gone(*peer, now, unix),
            Event::Disconnected { peer, .. } => self.on_gone(*peer, now, unix),
            _ => {}
        }
    }

    /// Applies timers due at `now` (`unix` is the wall clock in seconds)
    /// and refills.
    pub fn tick(&mut self, now: Instant, unix: u64) {
        self.starved = false;
        // Seeds reached through the proxy that did not answer in time.
        let stale: Vec<PeerId> = self
            .held
            .iter()
            .filter(|(_, h)| h.kind == PeerKind::AddrFetch && now >= later(h.since, ADDR_FETCH_TIMEOUT))
            .map(|(p, _)| *p)
            .collect();
        for peer in stale {
            self.actions.push_back(PoolAction::Disconnect(peer));
        }
        if let Seeding::Running { since, .. } = &self.seeding
            && now >= later(*since, LOOKUP_TIMEOUT)
        {
            self.seeding = Seeding::Done;
        }
        self.maybe_seed(now, unix);
        self.redial_manual(now, unix);
        self.refill(now, unix);
        self.maybe_feeler(now, unix);
    }

    /// What a seed's answer is taken to offer, as Core does (it records a
    /// seed's addresses with the services it asked for): the services we
    /// need. The handshake checks them.
    fn assumed_services(&self) -> ServiceFlags {
        self.config.services | default_services()
    }

    fn remember(&mut self, address: Address, origin: Origin) {
        if self.origins.len() >= MAX_ORIGINS && !self.origins.contains_key(&address) {
            return;
        }
        self.origins.insert(address, origin);
    }

    fn on_ready(&mut self, peer: PeerId, info: &crate::PeerInfo, now: Instant, unix: u64) {
        let services = info.version.as_ref().map_or(ServiceFlags::NONE, |v| v.services);
        let Some(held) = self.held.get_mut(&peer) else {
            // Not ours (inbound, or dialled by the user): remember its
            // group so its `addr` messages get a source, and its address
            // so that the pool does not connect to it again (Core's
            // `AlreadyConnectedToAddress`).
            // An inbound peer's port is its own outgoing one, which says
            // nothing of where it listens: it stands for its IP at any port.
            let address = host_address(&info.target).map(|a| match info.direction {
                crate::event::Direction::Inbound => any_port(&a),
                _ => a,
            });
            if let Some(a) = &address {
                *self.foreign.entry(a.clone()).or_default() += 1;
            }
            if let Some((_, Some(old))) = self.sources.insert(peer, (NetGroup::of_target(&info.target), address)) {
                self.forget_foreign(&old);
            }
            self.limits.entry(peer).or_default();
            return;
        };
        held.services = services;
        let address = held.address.clone();
        if let Some(a) = &address {
            self.book.set_services(a, services);
        }
        match held.kind {
            PeerKind::Outbound if !services.has(self.config.services) => {
                self.stats.wrong_services += 1;
                log::debug!("pool: {} lacks services ({services})", held.target);
                if let Some(a) = &address {
                    self.fail(a, now);
                }
                self.actions.push_back(PoolAction::Disconnect(peer));
            }
            PeerKind::Outbound | PeerKind::Manual => {
                held.ready = true;
                if held.kind == PeerKind::Outbound {
                    self.stats.ready += 1;
                }
                if let Some(a) = &address {
                    self.book.good(a, unix);
                    self.backoff.remove(a);
                }
                self.ask_addresses(peer);
            }
            PeerKind::Feeler => {
                if let Some(a) = &address {
                    self.book.good(a, unix);
                    self.backoff.remove(a);
                }
                self.actions.push_back(PoolAction::Disconnect(peer));
            }
            PeerKind::AddrFetch => self.ask_addresses(peer),
        }
        if let Some(m) = self.manual.iter_mut().find(|(_, p, _)| *p == Some(peer)) {
            m.2.failures = 0;
        }
    }

    /// Whether the reactor has a peer the pool does not hold at `address`
    /// (for an inbound one, at its IP).
    fn is_foreign(&self, address: &Address) -> bool {
        !self.foreign.is_empty()
            && (self.foreign.contains_key(address) || self.foreign.contains_key(&any_port(address)))
    }

    fn forget_foreign(&mut self, address: &Address) {
        if let Some(n) = self.foreign.get_mut(address) {
            *n -= 1;
            if *n == 0 {
                self.foreign.remove(address);
            }
        }
    }

    fn ask_addresses(&mut self, peer: PeerId) {
        self.limits.entry(peer).or_default().on_getaddr_sent();
        self.actions.push_back(PoolAction::Send(peer, NetworkMessage::GetAddr));
    }

    fn on_message(&mut self, peer: PeerId, message: &NetworkMessage, now: Instant, unix: u64) {
        if !matches!(message, NetworkMessage::Addr(_) | NetworkMessage::AddrV2(_)) {
            return;
        }
        let (source, fetch_seed) = match self.held.get(&peer) {
            Some(h) => {
                let seed = match (&h.kind, &h.origin) {
                    (PeerKind::AddrFetch, Origin::Seed(s)) => Some(s.clone()),
                    _ => None,
                };
                (h.group.clone().unwrap_or_else(|| NetGroup::of_target(&h.target)), seed)
            }
            None => match self.sources.get(&peer) {
                Some((g, _)) => (g.clone(), None),
                None => return,
            },
        };
        let limit = self.limits.entry(peer).or_default();
        let before: HashSet<Address> = match (&fetch_seed, message) {
            (Some(_), NetworkMessage::Addr(list)) => {
                list.iter().filter_map(|(_, a)| a.socket_addr().ok().map(Address::from)).collect()
            }
            (Some(_), NetworkMessage::AddrV2(list)) => {
                list.iter().map(|m| Address::new(m.addr.clone(), m.port)).collect()
            }
            _ => HashSet::new(),
        };
        let outcome = self.book.add_message(message, &source, unix, limit);
        if outcome.accepted > 0 {
            self.starved = false;
        }
        self.stats.learned += outcome.accepted as u64;
        self.stats.rate_limited += outcome.rate_limited as u64;
        if outcome.oversized {
            log::debug!("pool: peer {peer} sent more than 1000 addresses");
            self.actions.push_back(PoolAction::Disconnect(peer));
        }
        if let Some(seed) = fetch_seed {
            self.stats.seeded += outcome.accepted as u64;
            for address in before {
                if self.book.get(&address).is_some() {
                    self.remember(address, Origin::Seed(seed.clone()));
                }
            }
            // Core drops an addr-fetch peer after its first real answer.
            let count = match message {
                NetworkMessage::Addr(l) => l.len(),
                NetworkMessage::AddrV2(l) => l.len(),
                _ => 0,
            };
            if count > 1 {
                self.actions.push_back(PoolAction::Disconnect(peer));
            }
        }
        self.refill(now, unix);
    }

    fn on_gone(&mut self, peer: PeerId, now: Instant, unix: u64) {
        self.starved = false;
        self.limits.remove(&peer);
        let foreign = self.sources.remove(&peer).and_then(|(_, address)| address);
        if let Some(address) = &foreign {
            self.forget_foreign(address);
        }
        let Some(held) = self.held.remove(&peer) else {
            // Its address may be dialled now.
            if foreign.is_some() {
                self.refill(now, unix);
            }
            return;
        };
        if let Some(a) = &held.address {
            if held.ready {
                self.book.connected(a, unix);
            } else if held.kind != PeerKind::AddrFetch {
                self.stats.failures += 1;
                self.fail(a, now);
            }
        } else if !held.ready {
            self.stats.failures += 1;
        }
        if held.kind == PeerKind::AddrFetch
            && let Origin::Seed(seed) = &held.origin
        {
            if let Seeding::Running { pending, .. } = &mut self.seeding {
                pending.retain(|_, s| s != seed);
            }
            self.check_seeding_done(now);
        }
        if let Some(m) = self.manual.iter_mut().find(|(_, p, _)| *p == Some(peer)) {
            m.1 = None;
            if !held.ready {
                m.2.failures = m.2.failures.saturating_add(1);
            }
            let wait = backoff_for(&self.config, m.2.failures.max(1));
            m.2.until = later(now, wait);
        }
        self.refill(now, unix);
    }

    /// Records a failure of `address`: Core's attempt counter, and the
    /// pool's own backoff.
    fn fail(&mut self, address: &Address, now: Instant) {
        if self.backoff.len() >= MAX_BACKOFF_ENTRIES && !self.backoff.contains_key(address) {
            self.backoff.retain(|_, b| b.until > now);
            if self.backoff.len() >= MAX_BACKOFF_ENTRIES {
                return;
            }
        }
        let entry = self.backoff.entry(address.clone()).or_insert(Backoff { failures: 0, until: now });
        entry.failures = entry.failures.saturating_add(1);
        entry.until = later(now, backoff_for(&self.config, entry.failures));
    }

    fn check_seeding_done(&mut self, _now: Instant) {
        if let Seeding::Running { pending, .. } = &self.seeding
            && pending.is_empty()
            && self.seed_fetch.is_empty()
        {
            self.seeding = Seeding::Done;
        }
    }

    fn maybe_seed(&mut self, now: Instant, unix: u64) {
        if self.seeding != Seeding::Idle || !self.config.seeds_useful() || self.config.dns_seeds.is_empty() {
            return;
        }
        let thin = self.book.len() < SEED_BOOK_THRESHOLD;
        let waited = now >= later(self.started, SEED_DELAY) && self.ready_count() == 0;
        if !(self.book.is_empty() || (thin && waited)) {
            return;
        }
        let mut pending = HashMap::new();
        if self.config.proxied {
            // No local lookups: reach each seed by name through the proxy.
            self.seed_fetch = self.config.dns_seeds.iter().cloned().collect();
            pending = self.config.dns_seeds.iter().map(|s| (s.clone(), s.clone())).collect();
        } else {
            let services = self.config.services | default_services();
            let mut queries = Vec::new();
            let mut direct = Vec::new();
            for seed in &self.config.dns_seeds {
                let Ok((host, port)) = split_seed(seed, self.config.seed_port) else {
                    log::warn!("pool: seed {seed:?} is not HOST[:PORT]");
                    continue;
                };
                // An address needs no lookup: it is its own answer.
                if let Ok(ip) = host.parse::<std::net::IpAddr>() {
                    direct.push((seed.clone(), std::net::SocketAddr::new(ip, port)));
                    continue;
                }
                let name = seeds::seed_query(&host, services);
                if pending.contains_key(&name) {
                    log::warn!("pool: seed {seed:?} repeats a name; asked once");
                    continue;
                }
                pending.insert(name.clone(), seed.clone());
                queries.push((name, port));
            }
            for (seed, addr) in direct {
                let host = addr.ip().to_string();
                if self.book.add(Address::from(addr), services, unix, &seed_group(&host), unix) {
                    self.stats.seeded += 1;
                    self.remember(Address::from(addr), Origin::Seed(seed));
                }
            }
            if !queries.is_empty() {
                self.actions.push_back(PoolAction::Resolve(queries));
            }
        }
        log::debug!("pool: asking {} seeds", pending.len());
        self.seeding = Seeding::Running { since: now, pending };
    }

    /// Whether the seeds are done and the fixed seeds should be added.
    fn use_fixed(&mut self, now: Instant, unix: u64) {
        if self.stats.used_fixed || self.config.fixed_seeds.is_empty() {
            return;
        }
        let seeds_over = match &self.seeding {
            Seeding::Done => true,
            Seeding::Idle => !self.config.seeds_useful() || self.config.dns_seeds.is_empty(),
            Seeding::Running { .. } => false,
        };
        if !seeds_over || self.ready_count() > 0 && now < later(self.started, SEED_DELAY) {
            return;
        }
        self.stats.used_fixed = true;
        let source = seed_group("fixedseeds");
        let services = self.assumed_services();
        let fixed = self.config.fixed_seeds.clone();
        let mut added = 0;
        for address in fixed {
            if !self.config.reaches(address.network()) {
                continue;
            }
            if self.book.add(address.clone(), services, unix, &source, unix) {
                added += 1;
                self.remember(address, Origin::Fixed);
            }
        }
        log::debug!("pool: added {added} fixed seeds");
    }

    fn redial_manual(&mut self, now: Instant, unix: u64) {
        let due: Vec<Target> = self
            .manual
            .iter()
            .filter(|(_, peer, b)| peer.is_none() && b.until <= now)
            .map(|(t, _, _)| t.clone())
            .collect();
        for target in due {
            // Not due again until a while from now: a dial in progress is
            // linked when the driver reports it, and a connection of
            // another kind (a feeler, an addr fetch) is looked at again
            // then, not at every wakeup.
            if let Some(m) = self.manual.iter_mut().find(|(t, _, _)| *t == target) {
                m.2.until = later(now, IDLE_TICK);
            }
            // Already connected or dialling (an outbound peer, which this
            // adopts), or a peer the pool does not hold is at that address:
            // no second connection.
            if self.adopt_manual(&target) || host_address(&target).is_some_and(|a| self.is_foreign(&a)) {
                continue;
            }
            let address = host_address(&target);
            let group = Some(NetGroup::of_target(&target));
            self.dial(Held::new(target, address, group, PeerKind::Manual, Origin::Manual, now), unix);
        }
    }

    fn outbound_count(&self) -> usize {
        let held = self.held.values().filter(|h| h.kind == PeerKind::Outbound).count();
        let dialing = self.dialing.values().filter(|h| h.kind == PeerKind::Outbound).count();
        held + dialing
    }

    fn refill(&mut self, now: Instant, unix: u64) {
        // Seeds through the proxy: one addr fetch at a time per seed, up to
        // three at once.
        while let Some(seed) = self.seed_fetch.front().cloned() {
            let fetching = self.held.values().chain(self.dialing.values()).filter(|h| h.kind == PeerKind::AddrFetch);
            if fetching.count() >= 3 {
                break;
            }
            self.seed_fetch.pop_front();
            match split_seed(&seed, self.config.seed_port).and_then(|(host, port)| seed_target(&host, port)) {
                Ok(target) => {
                    let address = host_address(&target);
                    self.dial(Held::new(target, address, None, PeerKind::AddrFetch, Origin::Seed(seed), now), unix);
                }
                Err(e) => {
                    log::warn!("pool: seed {seed:?} is not HOST[:PORT]: {e}");
                    if let Seeding::Running { pending, .. } = &mut self.seeding {
                        pending.remove(&seed);
                    }
                }
            }
        }
        self.check_seeding_done(now);
        let mut fixed_tried = false;
        while self.outbound_count() < self.config.outbound && !self.starved {
            match self.candidate(Table::Any, now, unix) {
                Some(address) => {
                    let origin = self.origins.get(&address).cloned().unwrap_or(Origin::Book);
                    let Ok(target) = address.to_target() else { continue };
                    let group = address.group();
                    self.dial(Held::new(target, Some(address), group, PeerKind::Outbound, origin, now), unix);
                }
                None if !fixed_tried && !self.stats.used_fixed => {
                    fixed_tried = true;
                    self.use_fixed(now, unix);
                }
                None => self.starved = true,
            }
        }
    }

    fn maybe_feeler(&mut self, now: Instant, unix: u64) {
        let (Some(interval), Some(at)) = (self.config.feeler_interval, self.next_feeler) else { return };
        if now < at {
            return;
        }
        self.next_feeler = Some(later(now, interval));
        if self.outbound_count() < self.config.outbound {
            return;
        }
        if self.held.values().chain(self.dialing.values()).any(|h| h.kind == PeerKind::Feeler) {
            return;
        }
        // Core's test-before-evict first, else a "new" address.
        let address = match self.book.select_tried_collision() {
            Some(r) if self.usable(&r.address, now, false) => Some(r.address),
            _ => self.candidate(Table::New, now, unix),
        };
        self.book.resolve_collisions(unix);
        if let Some(address) = address {
            let Ok(target) = address.to_target() else { return };
            self.stats.feelers += 1;
            let origin = self.origins.get(&address).cloned().unwrap_or(Origin::Book);
            let group = address.group();
            self.dial(Held::new(target, Some(address), group, PeerKind::Feeler, origin, now), unix);
        }
    }

    /// Whether `address` may be dialled now.
    fn usable(&self, address: &Address, now: Instant, check_group: bool) -> bool {
        if !self.config.reaches(address.network()) || address.to_target().is_err() {
            return false;
        }
        let busy = self.held.values().chain(self.dialing.values()).any(|h| h.address.as_ref() == Some(address));
        // A manual peer's address is dialled as that peer only, even while
        // it waits out its backoff.
        let manual = self.manual.iter().any(|(t, _, _)| host_address(t).as_ref() == Some(address));
        if busy || manual || self.is_foreign(address) {
            return false;
        }
        if self.backoff.get(address).is_some_and(|b| b.until > now) {
            return false;
        }
        if check_group && self.config.distinct_groups {
            let group = address.group();
            let taken = self
                .held
                .values()
                .chain(self.dialing.values())
                .any(|h| matches!(h.kind, PeerKind::Outbound | PeerKind::Manual) && h.group == group);
            if taken {
                return false;
            }
        }
        true
    }

    fn candidate(&mut self, table: Table, now: Instant, unix: u64) -> Option<Address> {
        if self.book.is_empty() {
            return None;
        }
        let query = Query { networks: Some(self.config.reachable_networks()), services: self.config.services, table };
        // Each draw is random: a small book needs few to show it has
        // nothing usable.
        let tries = SELECT_TRIES.min(self.book.len().saturating_mul(3));
        for _ in 0..tries {
            let record = self.book.select(&query, unix)?;
            if self.usable(&record.address, now, table != Table::New) {
                return Some(record.address);
            }
        }
        None
    }

    fn dial(&mut self, held: Held, unix: u64) {
        if let Some(a) = &held.address {
            self.book.attempt(a, true, unix);
        }
        let token = DialToken(self.next_token);
        self.next_token += 1;
        self.stats.dials += 1;
        log::debug!("pool: dialling {} ({}, from {})", held.target, held.kind, held.origin);
        let target = held.target.clone();
        self.dialing.insert(token, held);
        self.actions.push_back(PoolAction::Connect { token, target });
    }
}

/// The canonical address of `target` (an IPv4-mapped IPv6 address is its
/// IPv4 address; scope and flow label are dropped), `None` for a name.
fn host_address(target: &Target) -> Option<Address> {
    target.to_addr_v2().map(|a| Address::new(a, target.port()))
}

/// `address` at any port: how an inbound peer's address is recorded.
fn any_port(address: &Address) -> Address {
    Address::new(address.addr.clone(), 0)
}

/// Whether two targets are one host and port.
fn same_host(a: &Target, b: &Target) -> bool {
    match (host_address(a), host_address(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// `base × 2^(failures-1)`, capped.
fn backoff_for(config: &PoolConfig, failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(20);
    config.backoff.saturating_mul(1 << shift).min(config.max_backoff)
}

/// Splits a seed `HOST[:PORT]` (`HOST` a name, an IPv4 address or a
/// bracketed IPv6 address; a bare IPv6 address has no port) into its host
/// and port, `default_port` when none is given.
///
/// ```
/// use peerlink::discovery::pool::split_seed;
///
/// assert_eq!(split_seed("seed.bitcoin.sipa.be", 8333).unwrap(), ("seed.bitcoin.sipa.be".into(), 8333));
/// assert_eq!(split_seed("127.0.0.2:18444", 8333).unwrap(), ("127.0.0.2".into(), 18444));
/// assert_eq!(split_seed("[::1]:18444", 8333).unwrap(), ("::1".into(), 18444));
/// assert!(split_seed("bad_name:1", 8333).is_err());
/// assert!(split_seed("seed.example.org:port", 8333).is_err());
/// ```
pub fn split_seed(seed: &str, default_port: u16) -> Result<(String, u16), TargetError> {
    let (host, port) = if let Some(rest) = seed.strip_prefix('[') {
        let (host, tail) = rest.split_once(']').ok_or(TargetError::InvalidIpv6)?;
        host.parse::<std::net::Ipv6Addr>().map_err(|_| TargetError::InvalidIpv6)?;
        match tail {
            "" => (host, None),
            _ => (host, Some(tail.strip_prefix(':').ok_or(TargetError::InvalidPort)?)),
        }
    } else if seed.parse::<std::net::Ipv6Addr>().is_ok() {
        (seed, None)
    } else {
        match seed.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (seed, None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| TargetError::InvalidPort)?,
        None => default_port,
    };
    seed_target(host, port)?;
    Ok((host.to_string(), port))
}

/// The target of a seed's host and port.
fn seed_target(host: &str, port: u16) -> Result<Target, TargetError> {
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(Target::Socket(std::net::SocketAddr::new(ip, port))),
        Err(_) => Ok(Target::Domain { name: Hostname::new(host)?, port }),
    }
}

/// The source group of addresses from a seed: derived from its name, as
/// Core's `SetInternal` does, so one seed's answers share one group.
fn seed_group(host: &str) -> NetGroup {
    match seed_target(host, 0) {
        Ok(target) => NetGroup::of_target(&target),
        Err(_) => NetGroup::of_ip(std::net::IpAddr::from([0, 0, 0, 0])),
    }
}

#[cfg(test)]
mod tests;

#[cfg(any(test, fuzzing))]
pub(crate) mod ops;
