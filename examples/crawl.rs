//! Walks the network: connects to peers, asks each for addresses, and
//! connects to the addresses it learns.
//!
//! ```text
//! cargo run --example crawl -- --network NET [--seed HOST[:PORT]]... [--max-peers N] [--max-secs S]
//!     [--concurrency N] [--addr-wait S]
//! ```
//!
//! `NET` is `main` (or `bitcoin`), `test` (`testnet`), `testnet4`, `signet`
//! or `regtest`. Each `--seed` is `IP[:PORT]`, `[IPV6][:PORT]` or
//! `HOST[:PORT]` (the network's default port when none is given). Without
//! `--seed`, the network's DNS seeds are looked up (as Bitcoin Core does:
//! `x9.<seed>`, nodes with `NODE_NETWORK | NODE_WITNESS`) on threads of their
//! own ([`peerlink::discovery::seeds::Lookups`] with the system resolver); a
//! seed whose prefixed name gives nothing is connected to by its bare name
//! instead (Core's `ADDR_FETCH` fallback), and if DNS gives no address at
//! all, the shipped fixed seeds are used. Regtest has no seeds: it needs
//! `--seed`.
//!
//! Each connection is a session-mode peer (version/verack, v2 when the peer
//! takes it, else v1); at most `--concurrency` (default 32) are being set up
//! or queried at once. When a peer is ready, one line is printed:
//!
//! ```text
//! ADDRESS  "USER_AGENT"  SERVICES  TRANSPORT
//! ```
//!
//! (`TRANSPORT` is `v1` or `v2`), then the peer is sent `getaddr`. Its first
//! `addr`/`addrv2` answer with more than one entry (a lone entry is most
//! likely the peer announcing itself), or `--addr-wait` seconds (default
//! 15) without one, ends the connection. Learned IPv4 and IPv6 addresses not
//! seen before are queued; onion, I2P and CJDNS addresses are skipped (the
//! crawl takes no proxy). Addresses that are not publicly routable
//! (loopback, private ranges, ...) are crawled only when the crawl starts
//! local: on regtest, or when a `--seed` is itself not routable; a public
//! crawl skips them, as Core's address manager does.
//!
//! The crawl stops at `--max-peers` ready peers (default 100), when nothing
//! is left to try, or after `--max-secs` (default 60), and prints
//! `summary reached=N failed=N learned=N queued=N elapsed=SECS`: peers that
//! completed the handshake, connections that failed before that, new
//! addresses learned, and queued addresses never tried. Failures are
//! reported on stderr. Bad arguments print the usage and exit with code 2.

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::p2p::ServiceFlags;
use bitcoin::p2p::message::NetworkMessage;
use peerlink::discovery::seeds::{self, Lookups, SystemResolver};
use peerlink::error::Report;
use peerlink::netgroup::{self, NetGroup};
use peerlink::target::TargetError;
use peerlink::{Config, Disconnect, Event, Handle, PeerId, Target};

const USAGE: &str = "usage: crawl --network main|test|testnet4|signet|regtest [--seed HOST[:PORT]]... [--max-peers N] [--max-secs S] [--concurrency N] [--addr-wait S]
  HOST is an IPv4 address, [IPV6] or a host name; PORT defaults to the network's
  without --seed the network's DNS seeds are used (regtest has none)";

/// How long one event wait lasts at most, so that deadlines are checked.
const TICK: Duration = Duration::from_millis(100);

struct Args {
    network: bitcoin::Network,
    seeds: Vec<Target>,
    max_peers: usize,
    max_secs: u64,
    concurrency: usize,
    addr_wait: Duration,
}

fn number<T: std::str::FromStr>(args: &mut impl Iterator<Item = String>, flag: &str) -> Result<T, String> {
    let v = common::value(args, flag)?;
    v.parse().map_err(|_| format!("bad {flag} value {v:?}"))
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut network = None;
    let mut seed_texts = Vec::new();
    let (mut max_peers, mut max_secs, mut concurrency, mut addr_wait) = (100, 60, 32, 15);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--network" => network = Some(common::network(&common::value(&mut args, "--network")?)?),
            "--seed" => seed_texts.push(common::value(&mut args, "--seed")?),
            "--max-peers" => max_peers = number(&mut args, "--max-peers")?,
            "--max-secs" => max_secs = number(&mut args, "--max-secs")?,
            "--concurrency" => concurrency = number(&mut args, "--concurrency")?,
            "--addr-wait" => addr_wait = number(&mut args, "--addr-wait")?,
            "-h" | "--help" => return Err("help requested".into()),
            s if s.starts_with("--") => return Err(format!("unknown option {s:?}")),
            s => return Err(format!("unexpected argument {s:?}")),
        }
    }
    let network = network.ok_or("--network is required")?;
    let port = seeds::default_port(network);
    let seeds = seed_texts.iter().map(|t| seed(t, port)).collect::<Result<Vec<_>, _>>()?;
    if seeds.is_empty() && seeds::dns_seeds(network).is_empty() {
        return Err(format!("{network} has no DNS seeds: give --seed"));
    }
    if max_peers == 0 || concurrency == 0 {
        return Err("--max-peers and --concurrency must be at least 1".into());
    }
    Ok(Args { network, seeds, max_peers, max_secs, concurrency, addr_wait: Duration::from_secs(addr_wait) })
}

/// `--seed HOST[:PORT]`, with `port` when none is given.
fn seed(text: &str, port: u16) -> Result<Target, String> {
    let bare = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(text);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(Target::Socket(SocketAddr::new(ip, port)));
    }
    let target = match text.parse::<Target>() {
        Err(TargetError::MissingPort) => common::target("--seed", &format!("{text}:{port}"))?,
        other => other.map_err(|e| format!("bad --seed {text:?}: {}", Report(&e)))?,
    };
    if target.is_onion() {
        return Err(format!("bad --seed {text:?}: an onion service needs a proxy, and crawl takes none"));
    }
    Ok(target)
}

fn unroutable(target: &Target) -> bool {
    NetGroup::of_target(target).network() == netgroup::Network::Unroutable
}

/// A connection of the crawl.
struct Visit {
    target: Target,
    /// When the peer became ready (and was sent `getaddr`).
    asked: Option<Instant>,
}

struct Crawl {
    handle: Handle,
    args: Args,
    allow_unroutable: bool,
    seen: HashSet<Target>,
    queue: VecDeque<Target>,
    visits: HashMap<PeerId, Visit>,
    reached: usize,
    failed: usize,
    learned: usize,
}

impl Crawl {
    /// Queues `target` unless it was seen before; returns whether it was new.
    fn offer(&mut self, target: Target) -> bool {
        let connectable = match &target {
            Target::Socket(addr) => addr.port() != 0 && !addr.ip().is_unspecified() && !addr.ip().is_multicast(),
            Target::Domain { .. } => true,
            Target::Onion { .. } => false,
        };
        if !connectable || (!self.allow_unroutable && unroutable(&target)) || !self.seen.insert(target.clone()) {
            return false;
        }
        self.queue.push_back(target);
        true
    }

    /// Starts connections while there is room.
    fn dial(&mut self) {
        while self.visits.len() < self.args.concurrency && self.reached + self.visits.len() < self.args.max_peers {
            let Some(target) = self.queue.pop_front() else { return };
            match self.handle.connect(target.clone()) {
                Ok(peer) => {
                    self.visits.insert(peer, Visit { target, asked: None });
                }
                Err(e) => {
                    eprintln!("failed {target}: {e}");
                    self.failed += 1;
                }
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Ready { peer, info } => {
                let Some(visit) = self.visits.get_mut(&peer) else { return };
                let (ua, services) = info
                    .version
                    .as_ref()
                    .map_or((String::new(), ServiceFlags::NONE), |v| (v.user_agent.clone(), v.services));
                println!("{}  {ua:?}  {}  {}", info.addr, common::service_names(services), info.transport);
                visit.asked = Some(Instant::now());
                self.reached += 1;
                if let Err(refused) = self.handle.send(peer, NetworkMessage::GetAddr) {
                    eprintln!("cannot ask {} for addresses: {refused}", visit.target);
                    let _ = self.handle.disconnect(peer, Disconnect::Now);
                }
            }
            Event::Message { peer, message, .. } => {
                let targets: Vec<Target> = match message {
                    NetworkMessage::Addr(list) => {
                        list.iter().filter_map(|(_, a)| a.socket_addr().ok()).map(Target::Socket).collect()
                    }
                    NetworkMessage::AddrV2(list) => {
                        list.iter().filter_map(|m| Target::from_addr_v2(&m.addr, m.port).ok()).collect()
                    }
                    _ => return,
                };
                let entries = targets.len();
                for target in targets {
                    if self.offer(target) {
                        self.learned += 1;
                    }
                }
                if entries > 1 {
                    let _ = self.handle.disconnect(peer, Disconnect::Now);
                }
            }
            Event::ConnectFailed { peer, target, error } if self.visits.remove(&peer).is_some() => {
                eprintln!("failed {target}: {}", Report(&error));
                self.failed += 1;
            }
            Event::Disconnected { peer, reason } => {
                if let Some(visit) = self.visits.remove(&peer)
                    && visit.asked.is_none()
                {
                    eprintln!("failed {}: {}", visit.target, Report(&reason));
                    self.failed += 1;
                }
            }
            _ => {}
        }
    }

    /// Ends the connections that waited `--addr-wait` for an answer.
    fn expire(&mut self, now: Instant) {
        for (peer, visit) in &self.visits {
            if visit.asked.is_some_and(|at| now.duration_since(at) >= self.args.addr_wait) {
                let _ = self.handle.disconnect(*peer, Disconnect::Now);
            }
        }
    }
}

fn main() -> ExitCode {
    let args = match common::args(parse, USAGE) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let mut config = Config::new(args.network);
    config.session.user_agent_name = Some("crawl".into());
    config.session.relay = false;
    config.connect_timeout = Duration::from_secs(5);
    config.session.handshake_timeout = Duration::from_secs(15);
    let handle = match peerlink::start(config) {
        Ok(h) => h,
        Err(e) => {
            println!("error: {}", Report(&e));
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.max_secs);
    let allow_unroutable = args.network == bitcoin::Network::Regtest || args.seeds.iter().any(unroutable);
    let network = args.network;
    let mut crawl = Crawl {
        handle,
        allow_unroutable,
        seen: HashSet::new(),
        queue: VecDeque::new(),
        visits: HashMap::new(),
        reached: 0,
        failed: 0,
        learned: 0,
        args,
    };
    for seed in crawl.args.seeds.clone() {
        crawl.offer(seed);
    }
    let wanted = ServiceFlags::NETWORK | ServiceFlags::WITNESS;
    let mut lookups = crawl.args.seeds.is_empty().then(|| {
        let queries = seeds::seed_queries(network, wanted);
        eprintln!("looking up {} DNS seeds", queries.len());
        Lookups::spawn(Arc::new(SystemResolver), queries)
    });
    let mut dns_addresses = 0;
    loop {
        if let Some(batch) = &lookups {
            while let Some((query, result)) = batch.try_recv() {
                match result {
                    Ok(addrs) if !addrs.is_empty() => {
                        for addr in addrs.into_iter().take(seeds::MAX_SEED_ADDRS) {
                            dns_addresses += 1;
                            crawl.offer(Target::Socket(addr));
                        }
                    }
                    other => {
                        if let Err(e) = other {
                            eprintln!("dns seed: {}", Report(&e));
                        }
                        // Core's fallback: ask the seed's own node, by its bare name.
                        let bare = seeds::dns_seeds(network).iter().find(|s| seeds::seed_query(s, wanted) == query);
                        if let Some(target) =
                            bare.and_then(|s| format!("{s}:{}", seeds::default_port(network)).parse().ok())
                        {
                            crawl.offer(target);
                        }
                    }
                }
            }
            if batch.is_done() {
                if dns_addresses == 0 {
                    let fixed = seeds::fixed_seeds(network);
                    eprintln!("no address from DNS: trying {} fixed seeds", fixed.len());
                    for (addr, port) in fixed {
                        if let Ok(target) = Target::from_addr_v2(&addr, port) {
                            crawl.offer(target);
                        }
                    }
                }
                lookups = None;
            }
        }
        crawl.dial();
        let now = Instant::now();
        let exhausted = lookups.is_none() && crawl.queue.is_empty() && crawl.visits.is_empty();
        if crawl.reached >= crawl.args.max_peers || exhausted || now >= deadline {
            break;
        }
        crawl.expire(now);
        let wait = TICK.min(deadline.saturating_duration_since(now));
        match crawl.handle.recv_timeout(wait) {
            Ok(event) => crawl.on_event(event),
            Err(e) if e.is_timeout() => {}
            Err(e) => {
                println!("error: {}", Report(&e));
                return ExitCode::FAILURE;
            }
        }
    }
    println!(
        "summary reached={} failed={} learned={} queued={} elapsed={:.1}s",
        crawl.reached,
        crawl.failed,
        crawl.learned,
        crawl.queue.len(),
        started.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}
