//! A BIP157/158 compact-block-filter light client sketch on top of peerlink.
//!
//! ```text
//! cargo run --example cbf_client -- --network NET [--peer PEER | [--seed HOST[:PORT] ...] [--book FILE]] [--script HEX ...]
//!     [--proxy [USER:PASS@]HOST:PORT] [--onion-proxy [USER:PASS@]HOST:PORT]
//! ```
//!
//! `PEER` is `IP:PORT`, `[IPV6]:PORT`, `HOST:PORT` or `NAME.onion:PORT`.
//! `--proxy` sends the connection through a SOCKS5 proxy (Bitcoin Core's
//! `-proxy`), which then also resolves host names; `--onion-proxy` is the
//! proxy for an onion peer (Core's `-onion`, falling back to `--proxy`).
//! Lines name the proxy's address (`proxy=ADDR`), never the credentials.
//!
//! 1. Connects in session mode, requiring NODE_COMPACT_FILTERS: a peer that
//!    does not advertise it is refused during the handshake and never sees a
//!    BIP157 message. Without `--peer` it finds one with an outbound pool
//!    (`peerlink::discovery`): from the `--seed`s (each `HOST[:PORT]`
//!    looked up, or reached through the proxy), else the network's DNS
//!    seeds with the `x49` service prefix, else the fixed seeds. The
//!    `ready` line then says how the peer was found:
//!    `found=seed seed=HOST`, `found=book` (from `--book FILE`, the address
//!    book an earlier run saved, or learned from another peer) or
//!    `found=fixed`. With `--book` the book is read first (a damaged file
//!    is an error and is left alone) and saved after a verified sync.
//! 2. Syncs the headers with `getheaders`, checking links and proof of work.
//! 3. Fetches `cfcheckpt` and `cfheaders`, builds the filter-header chain and
//!    verifies it against every checkpoint.
//! 4. Fetches every basic filter with `getcfilters` (batches of up to 1,000)
//!    and checks each filter against the header chain.
//! 5. Prints `match height=H` for every block whose filter matches a given
//!    script, then `synced tip=H filters=N`. Exits 0 on a verified sync;
//!    a failure, a proxy's included, is one `error: ...` line and exit code 1.

mod common;

use std::process::ExitCode;
use std::time::Duration;

use bitcoin::bip158::{BlockFilter, FilterHash, FilterHeader};
use bitcoin::block::Header;
use bitcoin::hashes::Hash;
use bitcoin::p2p::ServiceFlags;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_blockdata::GetHeadersMessage;
use bitcoin::p2p::message_filter::{GetCFCheckpt, GetCFHeaders, GetCFilters};
use bitcoin::{BlockHash, ScriptBuf};
use peerlink::discovery::Pooled;
use peerlink::error::Report;
use peerlink::{Config, DisconnectReason, Event, Handle, PeerId, SessionError, Target};

const USAGE: &str = "usage: cbf_client --network main|test|testnet4|signet|regtest [--peer PEER | [--seed HOST[:PORT] ...] [--book FILE]] [--script HEX ...] [--proxy [USER:PASS@]HOST:PORT] [--onion-proxy [USER:PASS@]HOST:PORT]
  PEER is IP:PORT, [IPV6]:PORT, HOST:PORT or NAME.onion:PORT
  without --peer, a peer with NODE_COMPACT_FILTERS is found through the seeds (--seed, else the network's DNS seeds)";
/// BIP157: filter type 0 is the basic filter.
const BASIC: u8 = 0;
/// BIP157: at most 2,000 filter headers per `getcfheaders`.
const MAX_CFHEADERS: usize = 2000;
/// BIP157: at most 1,000 filters per `getcfilters`.
const MAX_CFILTERS: usize = 1000;
/// BIP157: checkpoints every 1,000 blocks.
const CHECKPOINT_INTERVAL: usize = 1000;
/// Core's MAX_HEADERS_RESULTS.
const MAX_HEADERS: usize = 2000;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

struct Args {
    network: bitcoin::Network,
    peer: Option<Target>,
    seeds: Vec<String>,
    book: Option<std::path::PathBuf>,
    proxies: common::Proxies,
    scripts: Vec<ScriptBuf>,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut network, mut peer, mut scripts, mut seeds) = (None, None, Vec::new(), Vec::new());
    let mut book = None;
    let mut proxies = common::Proxies::default();
    while let Some(arg) = args.next() {
        if proxies.take(&arg, &mut args)? {
            continue;
        }
        match arg.as_str() {
            "--network" => network = Some(common::network(&common::value(&mut args, "--network")?)?),
            "--peer" => {
                let v = common::value(&mut args, "--peer")?;
                peer = Some(common::target("--peer address", &v)?);
            }
            "--seed" => seeds.push(common::seed(&common::value(&mut args, "--seed")?)?),
            "--book" => book = Some(std::path::PathBuf::from(common::value(&mut args, "--book")?)),
            "--script" => {
                let v = common::value(&mut args, "--script")?;
                scripts.push(ScriptBuf::from_hex(&v).map_err(|e| format!("bad --script hex {v:?}: {}", Report(&e)))?);
            }
            "-h" | "--help" => return Err("help requested".into()),
            s => return Err(format!("unexpected argument {s:?}")),
        }
    }
    let network = network.ok_or("--network is required")?;
    if peer.is_some() && (!seeds.is_empty() || book.is_some()) {
        return Err("--peer excludes --seed and --book".into());
    }
    let no_seeds = seeds.is_empty() && peerlink::discovery::seeds::dns_seeds(network).is_empty();
    if peer.is_none() && no_seeds && book.is_none() {
        return Err(format!("{network} has no DNS seeds: give --peer, --seed or --book"));
    }
    Ok(Args { network, peer, seeds, book, proxies, scripts })
}

fn main() -> ExitCode {
    let args = match common::args(parse, USAGE) {
        Ok(a) => a,
        Err(code) => return code,
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Client {
    handle: Handle,
    peer: PeerId,
}

impl Client {
    /// Sends `request` and returns the first message `pick` accepts.
    fn request<T>(
        &self,
        request: NetworkMessage,
        mut pick: impl FnMut(NetworkMessage) -> Option<T>,
    ) -> Result<T, String> {
        let what = request.command();
        self.handle.send(self.peer, request).map_err(|e| Report(&e).to_string())?;
        self.wait(what.as_ref(), &mut pick)
    }

    fn wait<T>(&self, what: &str, pick: &mut impl FnMut(NetworkMessage) -> Option<T>) -> Result<T, String> {
        loop {
            match self.handle.recv_timeout(REQUEST_TIMEOUT) {
                Ok(Event::Message { message, .. }) => {
                    if let Some(t) = pick(message) {
                        return Ok(t);
                    }
                }
                Ok(Event::Disconnected { peer, reason }) if peer == self.peer => {
                    return Err(format!("peer disconnected: {}", Report(&reason)));
                }
                Ok(_) => {}
                Err(_) => return Err(format!("no answer to {what} within {} s", REQUEST_TIMEOUT.as_secs())),
            }
        }
    }
}

/// Connects to `target` and waits for the handshake.
fn connect(config: Config, target: &Target) -> Result<(Handle, PeerId), String> {
    let handle = peerlink::start(config).map_err(|e| Report(&e).to_string())?;
    let peer = handle.connect(target.clone()).map_err(|e| Report(&e).to_string())?;
    loop {
        match handle.recv_timeout(Duration::from_secs(90)).map_err(|_| "no handshake within 90 s".to_string())? {
            Event::Ready { info, .. } => {
                let v = info.version.unwrap_or_else(|| unreachable!("ready peers have a version"));
                println!(
                    "ready peer={target}{} ua={:?} services={}",
                    info.proxy.map_or_else(String::new, |p| format!(" proxy={p}")),
                    v.user_agent,
                    common::service_names(v.services)
                );
                return Ok((handle, peer));
            }
            Event::Disconnected {
                reason: DisconnectReason::Protocol(SessionError::MissingServices { announced, .. }),
                ..
            } => {
                return Err(format!(
                    "refusing peer {target}: it does not advertise NODE_COMPACT_FILTERS (services={}); no BIP157 message was sent",
                    common::service_names(announced)
                ));
            }
            Event::Disconnected { reason, .. } => return Err(format!("handshake failed: {}", Report(&reason))),
            Event::ConnectFailed { error, .. } => return Err(format!("connect failed: {}", Report(&error))),
            _ => {}
        }
    }
}

/// Finds one peer with NODE_COMPACT_FILTERS through an outbound pool and
/// prints how it was found. The pool keeps running only while it is
/// driven: once we have the peer, the client talks to it on the handle.
fn find(config: Config, args: &Args) -> Result<(Pooled, PeerId), String> {
    let mut pool = common::pool_config(args.network, &args.seeds);
    pool.outbound = 1;
    pool.services |= ServiceFlags::COMPACT_FILTERS;
    let book = match &args.book {
        Some(path) => common::load_book(path)?,
        None => peerlink::discovery::addrbook::AddrBook::new(common::book_key()?),
    };
    let mut net = Pooled::with_book(config, pool, book).map_err(|e| Report(&e).to_string())?;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match net.recv_timeout(left) {
            Ok(Event::Ready { peer, info }) => {
                let Some(found) = net.pool().peer(peer).filter(|p| p.ready) else { continue };
                let v = info.version.unwrap_or_else(|| unreachable!("ready peers have a version"));
                println!(
                    "ready peer={}{} ua={:?} services={} {}",
                    found.target,
                    info.proxy.map_or_else(String::new, |p| format!(" proxy={p}")),
                    v.user_agent,
                    common::service_names(v.services),
                    common::found(&found.origin)
                );
                net.pool_mut().set_outbound(0);
                return Ok((net, peer));
            }
            Ok(_) => {}
            Err(_) => {
                let stats = net.pool().stats();
                return Err(format!(
                    "no peer with NODE_COMPACT_FILTERS within 90 s ({} dials, {} failed, {} without the services)",
                    stats.dials, stats.failures, stats.wrong_services
                ));
            }
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let mut config = Config::new(args.network);
    config.session.user_agent_name = Some("cbf_client".into());
    config.session.relay = false;
    config.session.required_services = ServiceFlags::COMPACT_FILTERS;
    args.proxies.apply(&mut config);
    // The pool (when we searched) stays alive with the handle.
    let (handle, peer, pool) = match &args.peer {
        Some(target) => {
            let (handle, peer) = connect(config, target)?;
            (handle, peer, None)
        }
        None => {
            let (net, peer) = find(config, args)?;
            (net.handle().clone(), peer, Some(net))
        }
    };
    let client = Client { handle, peer };

    // 1. Headers.
    let genesis = bitcoin::blockdata::constants::genesis_block(args.network);
    let mut hashes: Vec<BlockHash> = vec![genesis.block_hash()];
    loop {
        let tip = *hashes.last().expect("genesis at least");
        let request = GetHeadersMessage::new(vec![tip], BlockHash::all_zeros());
        let headers: Vec<Header> = client.request(NetworkMessage::GetHeaders(request), |m| match m {
            NetworkMessage::Headers(h) => Some(h),
            _ => None,
        })?;
        for h in &headers {
            if h.prev_blockhash != *hashes.last().expect("non-empty") {
                return Err(format!("header {} does not connect to height {}", h.block_hash(), hashes.len() - 1));
            }
            h.validate_pow(h.target()).map_err(|e| format!("header {}: {}", h.block_hash(), Report(&e)))?;
            hashes.push(h.block_hash());
        }
        if headers.len() < MAX_HEADERS {
            break;
        }
    }
    let tip = hashes.len() - 1;
    println!("headers tip={tip} hash={}", hashes[tip]);

    // 2. Checkpoints.
    let checkpoint = GetCFCheckpt { filter_type: BASIC, stop_hash: hashes[tip] };
    let checkpoints = client.request(NetworkMessage::GetCFCheckpt(checkpoint), |m| match m {
        NetworkMessage::CFCheckpt(c) if c.filter_type == BASIC && c.stop_hash == hashes[tip] => Some(c.filter_headers),
        _ => None,
    })?;
    if checkpoints.len() != tip / CHECKPOINT_INTERVAL {
        return Err(format!("expected {} checkpoints, got {}", tip / CHECKPOINT_INTERVAL, checkpoints.len()));
    }
    println!("checkpoints n={}", checkpoints.len());

    // 3. Filter headers, chained and checked against the checkpoints.
    let mut filter_hashes: Vec<FilterHash> = Vec::with_capacity(tip + 1);
    let mut filter_headers: Vec<FilterHeader> = Vec::with_capacity(tip + 1);
    for start in (0..=tip).step_by(MAX_CFHEADERS) {
        let stop = (start + MAX_CFHEADERS - 1).min(tip);
        let request = GetCFHeaders { filter_type: BASIC, start_height: start as u32, stop_hash: hashes[stop] };
        let cf = client.request(NetworkMessage::GetCFHeaders(request), |m| match m {
            NetworkMessage::CFHeaders(c) if c.filter_type == BASIC && c.stop_hash == hashes[stop] => Some(c),
            _ => None,
        })?;
        let expected_prev = if start == 0 { FilterHeader::all_zeros() } else { filter_headers[start - 1] };
        if cf.previous_filter_header != expected_prev {
            return Err(format!("cfheaders from height {start} do not connect to our chain"));
        }
        if cf.filter_hashes.len() != stop - start + 1 {
            return Err(format!("cfheaders {start}..={stop}: {} hashes", cf.filter_hashes.len()));
        }
        let mut prev = expected_prev;
        for hash in cf.filter_hashes {
            prev = hash.filter_header(&prev);
            filter_hashes.push(hash);
            filter_headers.push(prev);
        }
    }
    for (i, cp) in checkpoints.iter().enumerate() {
        let height = (i + 1) * CHECKPOINT_INTERVAL;
        if filter_headers[height] != *cp {
            return Err(format!("filter header at height {height} does not match its checkpoint"));
        }
    }
    println!("cfheaders verified n={} checkpoints={}", filter_headers.len(), checkpoints.len());

    // 4. Filters, each checked against the header chain, then matched.
    let mut filters = 0usize;
    let mut matches = 0usize;
    for start in (0..=tip).step_by(MAX_CFILTERS) {
        let stop = (start + MAX_CFILTERS - 1).min(tip);
        let request = GetCFilters { filter_type: BASIC, start_height: start as u32, stop_hash: hashes[stop] };
        client.handle.send(client.peer, NetworkMessage::GetCFilters(request)).map_err(|e| Report(&e).to_string())?;
        for height in start..=stop {
            let cf = client.wait("getcfilters", &mut |m| match m {
                NetworkMessage::CFilter(c) if c.filter_type == BASIC => Some(c),
                _ => None,
            })?;
            if cf.block_hash != hashes[height] {
                return Err(format!("cfilter for {} arrived where height {height} was expected", cf.block_hash));
            }
            let filter = BlockFilter::new(&cf.filter);
            let prev = if height == 0 { FilterHeader::all_zeros() } else { filter_headers[height - 1] };
            if filter.filter_header(&prev) != filter_headers[height] {
                return Err(format!("filter at height {height} does not match the filter-header chain"));
            }
            filters += 1;
            if !args.scripts.is_empty() {
                let query = args.scripts.iter().map(|s| s.as_bytes());
                if filter.match_any(&cf.block_hash, query).map_err(|e| format!("filter at {height}: {}", Report(&e)))? {
                    matches += 1;
                    println!("match height={height} block={}", cf.block_hash);
                }
            }
        }
    }
    debug_assert_eq!(filter_hashes.len(), filters);
    println!("matches={matches}");
    if let (Some(net), Some(path)) = (&pool, &args.book) {
        common::save_book(path, net.pool().book())?;
    }
    println!("synced tip={tip} filters={filters}");
    Ok(())
}
