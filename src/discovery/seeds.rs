//! Where a node finds its first peers: Bitcoin Core's DNS seeds and fixed
//! seeds for each network, and name lookups that run off the caller's thread.
//!
//! - [`dns_seeds`]: the host names Core queries, per network;
//!   [`seed_query`] adds the service-bit prefix (`x9.` and so on) that asks a
//!   seed for nodes with those services, and [`seed_queries`] builds the whole
//!   list for a network.
//! - [`Resolver`]: how a name becomes addresses. [`SystemResolver`] asks the
//!   operating system (`getaddrinfo`); tests and applications inject their
//!   own.
//! - [`Lookups`]: runs a batch of queries on a few short-lived threads and
//!   hands the answers back through a channel, so a reactor or a pool never
//!   blocks on DNS.
//! - [`fixed_seeds`]: the addresses shipped in `fixed_seeds.txt`, for when DNS
//!   gives nothing (Core's `-fixedseeds` fallback); [`parse_fixed_seeds`]
//!   reads that format.
//!
//! What Bitcoin Core does with them (src/net.cpp, `ThreadDNSAddressSeed`):
//! each seed is looked up as `x9.<seed>` (the services it requires of
//! outbound peers, `NODE_NETWORK | NODE_WITNESS`), at most 32 addresses are
//! kept from one seed ([`MAX_SEED_ADDRS`]), and each gets the network's
//! default port ([`default_port`]). When a prefixed name gives nothing, Core
//! connects once to the bare seed name instead (an `ADDR_FETCH` connection:
//! the seed runs a node that answers `getaddr`). When no seed helps within a
//! minute, Core adds the fixed seeds.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use bitcoin::Network;
//! use bitcoin::p2p::ServiceFlags;
//! use peerlink::discovery::seeds::{self, Lookups, ResolveError};
//!
//! // A resolver that knows one name (a real application uses SystemResolver).
//! let resolver = Arc::new(|host: &str, port: u16| {
//!     if host == "x9.seed.bitcoin.sipa.be" {
//!         Ok(vec![std::net::SocketAddr::from(([203, 0, 113, 7], port))])
//!     } else {
//!         Err(ResolveError::no_address(host))
//!     }
//! });
//! let wanted = ServiceFlags::NETWORK | ServiceFlags::WITNESS;
//! let lookups = Lookups::spawn(resolver, seeds::seed_queries(Network::Bitcoin, wanted));
//! let mut found = Vec::new();
//! while let Some((_query, result)) = lookups.recv_timeout(Duration::from_secs(10)) {
//!     found.extend(result.unwrap_or_default());
//! }
//! assert!(lookups.is_done());
//! if found.is_empty() {
//!     // DNS gave nothing: fall back to the fixed seeds, as Core does.
//!     assert!(!seeds::fixed_seeds(Network::Bitcoin).is_empty());
//! }
//! assert_eq!(found, ["203.0.113.7:8333".parse().unwrap()]);
//! ```

use std::error::Error;
use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Duration;

use bitcoin::Network;
use bitcoin::p2p::ServiceFlags;
use bitcoin::p2p::address::AddrV2;
use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};

use crate::target::{Target, TargetError};

/// Bitcoin Core's DNS seeds for `network`, without the trailing dot Core
/// writes: `vSeeds` in Bitcoin Core's src/kernel/chainparams.cpp as of
/// September 2025 (the v30 release cycle). Regtest has none (Core's regtest
/// `dummySeed.invalid.` is left out: it never resolves).
pub fn dns_seeds(network: Network) -> &'static [&'static str] {
    match network {
        Network::Bitcoin => &[
            "seed.bitcoin.sipa.be",
            "dnsseed.bluematt.me",
            "seed.bitcoin.jonasschnelli.ch",
            "seed.btc.petertodd.net",
            "seed.bitcoin.sprovoost.nl",
            "dnsseed.emzy.de",
            "seed.bitcoin.wiz.biz",
            "seed.mainnet.achownodes.xyz",
        ],
        Network::Testnet => &[
            "testnet-seed.bitcoin.jonasschnelli.ch",
            "seed.tbtc.petertodd.net",
            "seed.testnet.bitcoin.sprovoost.nl",
            "testnet-seed.bluematt.me",
            "seed.testnet.achownodes.xyz",
        ],
        Network::Testnet4 => &["seed.testnet4.bitcoin.sprovoost.nl", "seed.testnet4.wiz.biz"],
        Network::Signet => &["seed.signet.bitcoin.sprovoost.nl", "seed.signet.achownodes.xyz"],
        Network::Regtest => &[],
    }
}

/// The default P2P port of `network` (Core's `nDefaultPort`): 8333 main,
/// 18333 testnet3, 48333 testnet4, 38333 signet, 18444 regtest.
pub fn default_port(network: Network) -> u16 {
    match network {
        Network::Bitcoin => 8333,
        Network::Testnet => 18333,
        Network::Testnet4 => 48333,
        Network::Signet => 38333,
        Network::Regtest => 18444,
    }
}

/// How many addresses Bitcoin Core keeps from one seed's answer (`nMaxIPs`
/// in `ThreadDNSAddressSeed`), so that one seed cannot fill the address
/// book. The resolvers here return everything; a consumer applies the cap.
pub const MAX_SEED_ADDRS: usize = 32;

/// The name to look up to ask seed `host` for nodes with `services`:
/// `x{bits in hex}.{host}`, or `host` itself when `services` is empty.
///
/// The rule: prefix whenever any bit is asked for. Bitcoin Core today always
/// asks `x9.` (`SeedsServiceFlags()` = `NODE_NETWORK | NODE_WITNESS`); Core
/// 0.15 and older asked the bare name when only `NODE_NETWORK` was wanted,
/// but current seeds answer `x1.` too, so nothing but "no requirement" is
/// left unprefixed. The seeds support a fixed set of combinations (Core's
/// comments list them: `x1`, `x5`, `x9`, `xd`, and on some `x49`, `x809`,
/// `x849`, ...); a name outside a seed's set does not resolve, and the caller
/// then falls back to the bare name, as Core does. Examples:
/// `NETWORK | WITNESS` → `x9.`, plus `COMPACT_FILTERS` → `x49.`, plus
/// `P2P_V2` → `x809.`, with both → `x849.`.
pub fn seed_query(host: &str, services: ServiceFlags) -> String {
    if services == ServiceFlags::NONE { host.to_owned() } else { format!("x{:x}.{host}", services.to_u64()) }
}

/// Every query for `network`: [`seed_query`] of each of [`dns_seeds`] with
/// `services`, each with the network's [`default_port`]. Ready for
/// [`Lookups::spawn`].
pub fn seed_queries(network: Network, services: ServiceFlags) -> Vec<(String, u16)> {
    dns_seeds(network).iter().map(|seed| (seed_query(seed, services), default_port(network))).collect()
}

/// Turns a host name into socket addresses. Implementations may block (a
/// DNS query takes what it takes): [`Lookups`] calls them on threads of its
/// own.
///
/// An answer of no addresses may be `Ok(vec![])` or
/// `Err(`[`ResolveError::no_address`]`)`; callers treat both alike.
/// Closures `Fn(&str, u16) -> Result<Vec<SocketAddr>, ResolveError>` are
/// resolvers too.
pub trait Resolver: Send + Sync + 'static {
    /// The addresses of `host`, each with `port`.
    fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError>;
}

impl<F> Resolver for F
where
    F: Fn(&str, u16) -> Result<Vec<SocketAddr>, ResolveError> + Send + Sync + 'static,
{
    fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
        self(host, port)
    }
}

/// The operating system's resolver (`getaddrinfo`, through the standard
/// library's [`ToSocketAddrs`]). An IP literal resolves to itself. No
/// answer at all is [`ResolveErrorKind::NoAddress`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
        let addrs: Vec<SocketAddr> =
            (host, port).to_socket_addrs().map_err(|e| ResolveError::lookup(host, e))?.collect();
        if addrs.is_empty() { Err(ResolveError::no_address(host)) } else { Ok(addrs) }
    }
}

/// Why a name could not be looked up.
#[derive(Debug)]
pub struct ResolveError {
    host: String,
    kind: ResolveErrorKind,
    source: Option<Box<dyn Error + Send + Sync>>,
}

/// What kind of failure a [`ResolveError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResolveErrorKind {
    /// The lookup failed (its error is the [`source`](Error::source)).
    Lookup,
    /// The name exists but has no address (or the resolver found nothing).
    NoAddress,
    /// [`Lookups`] could not start a thread to look the name up (the
    /// operating system's error is the source).
    Spawn,
}

impl ResolveError {
    /// A failed lookup of `host`, caused by `source`.
    pub fn lookup(host: &str, source: impl Into<Box<dyn Error + Send + Sync>>) -> ResolveError {
        ResolveError { host: host.to_owned(), kind: ResolveErrorKind::Lookup, source: Some(source.into()) }
    }

    /// `host` has no address.
    pub fn no_address(host: &str) -> ResolveError {
        ResolveError { host: host.to_owned(), kind: ResolveErrorKind::NoAddress, source: None }
    }

    fn spawn(host: &str, source: io::Error) -> ResolveError {
        ResolveError { host: host.to_owned(), kind: ResolveErrorKind::Spawn, source: Some(Box::new(source)) }
    }

    /// The name that was looked up.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// What kind of failure it is.
    pub fn kind(&self) -> ResolveErrorKind {
        self.kind
    }
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ResolveErrorKind::Lookup => write!(f, "cannot resolve {}", self.host),
            ResolveErrorKind::NoAddress => write!(f, "{} resolved to no address", self.host),
            ResolveErrorKind::Spawn => write!(f, "cannot start a thread to resolve {}", self.host),
        }
    }
}

impl Error for ResolveError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

/// At most this many threads run the lookups of one [`Lookups`] batch.
pub const MAX_LOOKUP_THREADS: usize = 4;

/// One answer of a [`Lookups`] batch: the query's name, and its addresses or
/// why there are none.
pub type LookupResult = (String, Result<Vec<SocketAddr>, ResolveError>);

/// A batch of name lookups running off the caller's thread.
///
/// [`spawn`](Lookups::spawn) starts up to [`MAX_LOOKUP_THREADS`] threads
/// that take the queries in order and exit when none is left; each answer
/// is delivered once, through [`try_recv`](Lookups::try_recv) (never
/// blocks) or [`recv_timeout`](Lookups::recv_timeout), in the order the
/// lookups finish. Dropping the batch stops it: no further query is
/// started, and a lookup still under way finishes on its thread and is
/// discarded.
pub struct Lookups {
    results: Receiver<LookupResult>,
    pending: AtomicUsize,
    cancel: Arc<AtomicBool>,
}

impl fmt::Debug for Lookups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lookups").field("pending", &self.pending()).finish_non_exhaustive()
    }
}

impl Lookups {
    /// Starts looking up each `(host, port)` of `queries` with `resolver`,
    /// and returns at once.
    ///
    /// If the operating system cannot start any thread, every query is
    /// answered at once with a [`ResolveErrorKind::Spawn`] error.
    pub fn spawn(resolver: Arc<dyn Resolver>, queries: Vec<(String, u16)>) -> Lookups {
        let count = queries.len();
        let (job_tx, job_rx) = crossbeam_channel::unbounded::<(String, u16)>();
        for query in queries {
            // The receiver is alive: it is ours until the threads take it.
            let _ = job_tx.send(query);
        }
        drop(job_tx);
        let (result_tx, results) = crossbeam_channel::unbounded();
        let cancel = Arc::new(AtomicBool::new(false));
        let mut started = 0;
        let mut spawn_error = None;
        for i in 0..count.min(MAX_LOOKUP_THREADS) {
            let (jobs, out, resolver, cancel) =
                (job_rx.clone(), result_tx.clone(), Arc::clone(&resolver), Arc::clone(&cancel));
            let worker = move || {
                while !cancel.load(Ordering::Relaxed) {
                    let Ok((host, port)) = jobs.try_recv() else { break };
                    let result = resolver.resolve(&host, port);
                    if out.send((host, result)).is_err() {
                        break;
                    }
                }
            };
            match thread::Builder::new().name(format!("peerlink-lookup-{i}")).spawn(worker) {
                Ok(_) => started += 1,
                Err(e) => {
                    spawn_error = Some(e);
                    break;
                }
            }
        }
        if started == 0
            && let Some(e) = spawn_error
        {
            while let Ok((host, _)) = job_rx.try_recv() {
                let _ = result_tx
                    .send((host.clone(), Err(ResolveError::spawn(&host, io::Error::new(e.kind(), e.to_string())))));
            }
        }
        Lookups { results, pending: AtomicUsize::new(count), cancel }
    }

    /// The next answer if one is ready; `None` if none is (yet), or if every
    /// answer has been taken ([`is_done`](Lookups::is_done)).
    pub fn try_recv(&self) -> Option<LookupResult> {
        if self.is_done() {
            return None;
        }
        match self.results.try_recv() {
            Ok(result) => Some(self.took(result)),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => None,
        }
    }

    /// The next answer, waiting up to `timeout` for it; `None` on timeout,
    /// or at once when every answer has been taken.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<LookupResult> {
        if self.is_done() {
            return None;
        }
        match self.results.recv_timeout(timeout) {
            Ok(result) => Some(self.took(result)),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Whether every query's answer has been taken: nothing more will come.
    pub fn is_done(&self) -> bool {
        self.pending() == 0
    }

    /// How many answers have not been taken yet.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    fn took(&self, result: LookupResult) -> LookupResult {
        self.pending.fetch_sub(1, Ordering::AcqRel);
        result
    }
}

impl Drop for Lookups {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// The shipped fixed seeds (`src/discovery/fixed_seeds.txt`), read at build
/// time. Its header says where the addresses come from and how to refresh
/// them.
pub const FIXED_SEEDS: &str = include_str!("fixed_seeds.txt");

/// The fixed seeds shipped for `network`: BIP155 addresses (IPv4, IPv6 and
/// Tor v3) with their ports, in the file's order. Empty for regtest.
///
/// Core uses its fixed seeds only when DNS seeding gave nothing useful
/// within a minute; they are a last resort, best used to ask a few nodes
/// for more addresses (`getaddr`).
pub fn fixed_seeds(network: Network) -> Vec<(AddrV2, u16)> {
    static PARSED: OnceLock<Vec<(Network, AddrV2, u16)>> = OnceLock::new();
    let all = PARSED.get_or_init(|| {
        // A unit test parses the shipped file, so this cannot fail in a
        // released build.
        parse_fixed_seeds(FIXED_SEEDS).expect("the shipped fixed_seeds.txt parses")
    });
    all.iter().filter(|(n, _, _)| *n == network).map(|(_, addr, port)| (addr.clone(), *port)).collect()
}

/// Reads the fixed-seeds format: sections `[main]`, `[testnet3]`,
/// `[testnet4]` and `[signet]`, each followed by addresses, one a line, as
/// `IP:PORT`, `[IPV6]:PORT` or `<56 base32>.onion:PORT`; `#` starts a comment
/// that runs to the end of the line, and blank lines are skipped.
///
/// An IPv6 address in `fc00::/8` is read as CJDNS ([`AddrV2::Cjdns`]), as
/// Bitcoin Core's `generate-seeds.py` reads it. An onion name must be a Tor
/// v3 name with a valid checksum. Host names and I2P names are refused.
/// The first bad line stops the parse; its error names the line (counted
/// from 1).
pub fn parse_fixed_seeds(text: &str) -> Result<Vec<(Network, AddrV2, u16)>, FixedSeedsError> {
    let mut seeds = Vec::new();
    let mut section = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let error = |kind| FixedSeedsError { line: i + 1, text: line.to_owned(), kind };
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(match name {
                "main" => Network::Bitcoin,
                "testnet3" => Network::Testnet,
                "testnet4" => Network::Testnet4,
                "signet" => Network::Signet,
                _ => return Err(error(FixedSeedsErrorKind::UnknownSection)),
            });
            continue;
        }
        let Some(network) = section else { return Err(error(FixedSeedsErrorKind::NoSection)) };
        if line.rsplit_once(':').is_some_and(|(host, _)| host.to_ascii_lowercase().ends_with(".b32.i2p")) {
            return Err(error(FixedSeedsErrorKind::I2p));
        }
        let target: Target = line.parse().map_err(|e| error(FixedSeedsErrorKind::BadAddress(e)))?;
        let addr = match &target {
            Target::Socket(SocketAddr::V6(a)) if a.ip().octets()[0] == 0xfc => AddrV2::Cjdns(*a.ip()),
            Target::Domain { .. } => return Err(error(FixedSeedsErrorKind::HostName)),
            other => other.to_addr_v2().ok_or_else(|| error(FixedSeedsErrorKind::HostName))?,
        };
        seeds.push((network, addr, target.port()));
    }
    Ok(seeds)
}

/// A line of a fixed-seeds text that [`parse_fixed_seeds`] refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedSeedsError {
    line: usize,
    text: String,
    kind: FixedSeedsErrorKind,
}

/// What is wrong with the line of a [`FixedSeedsError`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FixedSeedsErrorKind {
    /// An address before the first `[section]`.
    NoSection,
    /// A `[section]` other than `main`, `testnet3`, `testnet4` and `signet`.
    UnknownSection,
    /// Not an address (the reason is the [`source`](Error::source)).
    BadAddress(TargetError),
    /// A host name: fixed seeds are addresses.
    HostName,
    /// An I2P address, which this format does not take.
    I2p,
}

impl FixedSeedsError {
    /// The number of the line, counted from 1.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The line's text, without its comment.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// What is wrong with it.
    pub fn kind(&self) -> &FixedSeedsErrorKind {
        &self.kind
    }
}

impl fmt::Display for FixedSeedsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (line, text) = (self.line, &self.text);
        match &self.kind {
            FixedSeedsErrorKind::NoSection => write!(f, "line {line}: address {text:?} before the first [section]"),
            FixedSeedsErrorKind::UnknownSection => {
                write!(f, "line {line}: unknown section {text} (expected [main], [testnet3], [testnet4] or [signet])")
            }
            FixedSeedsErrorKind::BadAddress(_) => write!(f, "line {line}: bad address {text:?}"),
            FixedSeedsErrorKind::HostName => write!(f, "line {line}: {text:?} is a host name, not an address"),
            FixedSeedsErrorKind::I2p => write!(f, "line {line}: {text:?} is an i2p address, which is not supported"),
        }
    }
}

impl Error for FixedSeedsError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match &self.kind {
            FixedSeedsErrorKind::BadAddress(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::Mutex;

    use super::*;

    const ALL: [Network; 5] =
        [Network::Bitcoin, Network::Testnet, Network::Testnet4, Network::Signet, Network::Regtest];

    #[test]
    fn dns_seeds_are_cores_lists() {
        for network in [Network::Bitcoin, Network::Testnet, Network::Testnet4, Network::Signet] {
            let seeds = dns_seeds(network);
            assert!(!seeds.is_empty(), "{network}");
            for seed in seeds {
                assert!(!seed.ends_with('.'), "{seed}: no trailing dot");
                assert!(crate::target::Hostname::new(seed).is_ok(), "{seed} is a valid host name");
            }
            assert_eq!(seeds.iter().collect::<HashSet<_>>().len(), seeds.len(), "{network}: no duplicates");
        }
        assert!(dns_seeds(Network::Regtest).is_empty());
        assert_eq!(dns_seeds(Network::Bitcoin).len(), 8);
        assert_eq!(dns_seeds(Network::Bitcoin)[0], "seed.bitcoin.sipa.be");
        assert_eq!(dns_seeds(Network::Testnet4), ["seed.testnet4.bitcoin.sprovoost.nl", "seed.testnet4.wiz.biz"]);
    }

    #[test]
    fn default_ports() {
        let ports: Vec<u16> = ALL.iter().map(|n| default_port(*n)).collect();
        assert_eq!(ports, [8333, 18333, 48333, 38333, 18444]);
    }

    #[test]
    fn seed_query_names() {
        let host = "seed.example.org";
        let nw = ServiceFlags::NETWORK | ServiceFlags::WITNESS;
        assert_eq!(seed_query(host, nw), "x9.seed.example.org");
        assert_eq!(seed_query(host, nw | ServiceFlags::COMPACT_FILTERS), "x49.seed.example.org");
        assert_eq!(seed_query(host, nw | ServiceFlags::P2P_V2), "x809.seed.example.org");
        assert_eq!(
            seed_query(host, nw | ServiceFlags::COMPACT_FILTERS | ServiceFlags::P2P_V2),
            "x849.seed.example.org"
        );
        assert_eq!(seed_query(host, ServiceFlags::NETWORK), "x1.seed.example.org");
        assert_eq!(seed_query(host, ServiceFlags::NETWORK_LIMITED), "x400.seed.example.org");
        assert_eq!(seed_query(host, ServiceFlags::NONE), host);
    }

    #[test]
    fn seed_queries_cover_every_seed_with_the_default_port() {
        let queries = seed_queries(Network::Signet, ServiceFlags::NETWORK | ServiceFlags::WITNESS);
        assert_eq!(
            queries,
            [
                ("x9.seed.signet.bitcoin.sprovoost.nl".to_owned(), 38333),
                ("x9.seed.signet.achownodes.xyz".to_owned(), 38333)
            ]
        );
        assert!(seed_queries(Network::Regtest, ServiceFlags::NETWORK).is_empty());
    }

    #[test]
    fn parser_reads_each_form_byte_exact() {
        let text = "# header\n\n[main]\n1.2.3.4:8333 # AS1\n  [2001:db8::42]:8334  \n\
            qdi5bvzkmysxe2a7u3nwytwqqrboujxg7dsmukukff2mjhcqsjm6qvad.onion:8333\n\
            [signet]\n[fc1f:22c3:95dc:a3af:4a93:8251:beb9:1858]:38333\n[testnet3]\n203.0.113.9:18333\n[testnet4]\n";
        let seeds = parse_fixed_seeds(text).unwrap();
        let onion: [u8; 32] = [
            0x80, 0xd1, 0xd0, 0xd7, 0x2a, 0x66, 0x25, 0x72, 0x68, 0x1f, 0xa6, 0xdb, 0x6c, 0x4e, 0xd0, 0x84, 0x42, 0xea,
            0x26, 0xe6, 0xf8, 0xe4, 0xca, 0x2a, 0x8a, 0x29, 0x74, 0xc4, 0x9c, 0x50, 0x92, 0x59,
        ];
        assert_eq!(
            seeds,
            [
                (Network::Bitcoin, AddrV2::Ipv4(Ipv4Addr::new(1, 2, 3, 4)), 8333),
                (Network::Bitcoin, AddrV2::Ipv6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x42)), 8334),
                (Network::Bitcoin, AddrV2::TorV3(onion), 8333),
                (
                    Network::Signet,
                    AddrV2::Cjdns(Ipv6Addr::new(0xfc1f, 0x22c3, 0x95dc, 0xa3af, 0x4a93, 0x8251, 0xbeb9, 0x1858)),
                    38333
                ),
                (Network::Testnet, AddrV2::Ipv4(Ipv4Addr::new(203, 0, 113, 9)), 18333),
            ]
        );
        // The onion name round-trips through the key.
        assert_eq!(crate::target::onion_name(&onion), "qdi5bvzkmysxe2a7u3nwytwqqrboujxg7dsmukukff2mjhcqsjm6qvad.onion");
        assert_eq!(parse_fixed_seeds("").unwrap(), []);
        assert_eq!(parse_fixed_seeds("# only a comment\n[main]\n").unwrap(), []);
    }

    #[test]
    fn parser_errors_name_the_line() {
        let cases: [(&str, usize, FixedSeedsErrorKind); 6] = [
            ("1.2.3.4:8333\n", 1, FixedSeedsErrorKind::NoSection),
            ("[main]\n1.2.3.4:8333\n[regtest]\n", 3, FixedSeedsErrorKind::UnknownSection),
            ("[main]\n\n# c\n1.2.3.4\n", 4, FixedSeedsErrorKind::BadAddress(TargetError::MissingPort)),
            ("[main]\n1.2.3.4:99999\n", 2, FixedSeedsErrorKind::BadAddress(TargetError::InvalidPort)),
            ("[signet]\nseed.example.org:38333\n", 2, FixedSeedsErrorKind::HostName),
            (
                "[main]\n1.2.3.4:1\n23zqyu5dxq3gilx5dihlyjh6tbkwombyaks4pbeyg2pqjvv7putq.b32.i2p:0\n",
                3,
                FixedSeedsErrorKind::I2p,
            ),
        ];
        for (text, line, kind) in cases {
            let err = parse_fixed_seeds(text).unwrap_err();
            assert_eq!((err.line(), err.kind()), (line, &kind), "{text:?}");
            let shown = err.to_string();
            assert!(shown.starts_with(&format!("line {line}: ")), "{shown}");
            assert_eq!(err.source().is_some(), matches!(kind, FixedSeedsErrorKind::BadAddress(_)));
            if let Some(source) = err.source() {
                assert!(!shown.contains(&source.to_string()), "{shown:?} does not repeat {source}");
            }
        }
        // A bad onion checksum (one character changed) is refused.
        let bad = "[main]\nqdi5bvzkmysxe2a7u3nwytwqqrboujxg7dsmukukff2mjhcqsjm6qvae.onion:8333\n";
        let err = parse_fixed_seeds(bad).unwrap_err();
        assert_eq!(err.line(), 2);
        assert!(matches!(err.kind(), FixedSeedsErrorKind::BadAddress(_)), "{err:?}");
        assert_eq!(err.text(), "qdi5bvzkmysxe2a7u3nwytwqqrboujxg7dsmukukff2mjhcqsjm6qvae.onion:8333");
    }

    #[test]
    fn shipped_file_parses_and_every_network_has_seeds() {
        let all = parse_fixed_seeds(FIXED_SEEDS).unwrap();
        for network in [Network::Bitcoin, Network::Testnet, Network::Testnet4, Network::Signet] {
            let seeds = fixed_seeds(network);
            assert!(!seeds.is_empty(), "{network}");
            assert!(seeds.iter().all(|(_, port)| *port == default_port(network)), "{network}: default ports");
            let kinds = |f: fn(&AddrV2) -> bool| seeds.iter().filter(|(a, _)| f(a)).count();
            assert!(kinds(|a| matches!(a, AddrV2::Ipv4(_))) >= 10, "{network}: IPv4");
            assert!(kinds(|a| matches!(a, AddrV2::Ipv6(_))) >= 10, "{network}: IPv6");
            assert!(kinds(|a| matches!(a, AddrV2::TorV3(_))) >= 10, "{network}: onion");
            assert_eq!(seeds.iter().collect::<HashSet<_>>().len(), seeds.len(), "{network}: no duplicates");
        }
        assert!(fixed_seeds(Network::Regtest).is_empty());
        // Every line that is not a comment, a blank or a section is a seed.
        let lines = FIXED_SEEDS
            .lines()
            .map(|l| l.split('#').next().unwrap().trim())
            .filter(|l| !l.is_empty() && !l.starts_with("[m") && !l.starts_with("[t") && !l.starts_with("[s"))
            .count();
        assert_eq!(all.len(), lines);
        let main = fixed_seeds(Network::Bitcoin);
        assert_eq!(main[0], (AddrV2::Ipv4(Ipv4Addr::new(2, 39, 163, 191)), 8333));
    }

    fn addr(last: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, last], port))
    }

    fn collect(lookups: &Lookups) -> Vec<LookupResult> {
        let mut out = Vec::new();
        while let Some(r) = lookups.recv_timeout(Duration::from_secs(10)) {
            out.push(r);
        }
        out
    }

    #[test]
    fn lookups_deliver_canned_answers_and_errors() {
        let resolver = Arc::new(|host: &str, port: u16| match host {
            "one" => Ok(vec![addr(1, port)]),
            "two" => Ok(vec![addr(2, port), addr(3, port)]),
            "empty" => Ok(vec![]),
            "gone" => Err(ResolveError::no_address(host)),
            _ => Err(ResolveError::lookup(host, io::Error::other("servfail"))),
        });
        let queries = ["one", "two", "empty", "gone", "broken"].map(|h| (h.to_owned(), 8333)).to_vec();
        let lookups = Lookups::spawn(resolver, queries);
        let mut results = collect(&lookups);
        assert!(lookups.is_done());
        assert_eq!(lookups.pending(), 0);
        assert!(lookups.try_recv().is_none());
        assert!(lookups.recv_timeout(Duration::from_secs(10)).is_none(), "returns at once when done");
        results.sort_by(|a, b| a.0.cmp(&b.0));
        let names: Vec<&str> = results.iter().map(|(h, _)| h.as_str()).collect();
        assert_eq!(names, ["broken", "empty", "gone", "one", "two"]);
        let by_name = |name: &str| &results.iter().find(|(h, _)| h == name).unwrap().1;
        assert_eq!(by_name("one").as_ref().unwrap(), &[addr(1, 8333)]);
        assert_eq!(by_name("two").as_ref().unwrap(), &[addr(2, 8333), addr(3, 8333)]);
        assert!(by_name("empty").as_ref().unwrap().is_empty());
        let gone = by_name("gone").as_ref().unwrap_err();
        assert_eq!((gone.kind(), gone.host()), (ResolveErrorKind::NoAddress, "gone"));
        assert_eq!(gone.to_string(), "gone resolved to no address");
        let broken = by_name("broken").as_ref().unwrap_err();
        assert_eq!(broken.kind(), ResolveErrorKind::Lookup);
        assert_eq!(broken.to_string(), "cannot resolve broken");
        assert_eq!(broken.source().unwrap().to_string(), "servfail");
    }

    #[test]
    fn a_blocked_lookup_does_not_block_the_caller() {
        let (release_tx, release_rx) = crossbeam_channel::bounded::<()>(0);
        let resolver = Arc::new(move |host: &str, port: u16| {
            if host == "slow" {
                release_rx.recv().expect("released");
            }
            Ok(vec![addr(if host == "slow" { 1 } else { 2 }, port)])
        });
        let queries = vec![("slow".to_owned(), 1), ("fast".to_owned(), 2)];
        // spawn returns while "slow" is still blocked in the resolver.
        let lookups = Lookups::spawn(resolver, queries);
        let (host, result) = lookups.recv_timeout(Duration::from_secs(10)).expect("fast answers meanwhile");
        assert_eq!((host.as_str(), result.unwrap()), ("fast", vec![addr(2, 2)]));
        assert!(lookups.try_recv().is_none(), "slow is still blocked");
        assert!(!lookups.is_done());
        assert_eq!(lookups.pending(), 1);
        release_tx.send(()).unwrap();
        let (host, result) = lookups.recv_timeout(Duration::from_secs(10)).expect("slow answers once released");
        assert_eq!((host.as_str(), result.unwrap()), ("slow", vec![addr(1, 1)]));
        assert!(lookups.is_done());
    }

    #[test]
    fn lookups_use_a_bounded_number_of_threads() {
        let (entered_tx, entered_rx) = crossbeam_channel::unbounded::<()>();
        let (release_tx, release_rx) = crossbeam_channel::unbounded::<()>();
        let threads = Arc::new(Mutex::new(HashSet::new()));
        let seen = Arc::clone(&threads);
        let resolver = Arc::new(move |_: &str, port: u16| {
            seen.lock().unwrap().insert(thread::current().id());
            entered_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            Ok(vec![addr(1, port)])
        });
        let lookups = Lookups::spawn(resolver, (0..10).map(|i| (format!("h{i}"), 1)).collect());
        for _ in 0..MAX_LOOKUP_THREADS {
            entered_rx.recv_timeout(Duration::from_secs(10)).expect("a lookup thread starts");
        }
        // Every thread is blocked: no further lookup can start.
        assert!(entered_rx.recv_timeout(Duration::from_millis(200)).is_err());
        for _ in 0..10 {
            release_tx.send(()).unwrap();
        }
        assert_eq!(collect(&lookups).len(), 10);
        assert!(lookups.is_done());
        assert_eq!(threads.lock().unwrap().len(), MAX_LOOKUP_THREADS);
    }

    #[test]
    fn system_resolver_resolves_literals_and_localhost() {
        let got = SystemResolver.resolve("127.0.0.1", 18444).unwrap();
        assert_eq!(got, [SocketAddr::from(([127, 0, 0, 1], 18444))]);
        let local = SystemResolver.resolve("localhost", 1).unwrap();
        assert!(local.iter().all(|a| a.ip().is_loopback() && a.port() == 1), "{local:?}");
    }
}
