//! An in-process BIP157 peer built on peerlink, for testing light clients
//! (bcoin and rust-bitcoin's test nodes have no BIP157).
//!
//! It serves a fixed chain with BIP158 basic filters computed by
//! `bitcoin::bip158` (`BlockFilter::new_script_filter`, with the spent
//! scripts looked up among the outputs of the chain's blocks) and filter
//! headers chained from `FilterHeader::all_zeros()`; the genesis block has a
//! filter too. It answers `getheaders`, `getcfcheckpt`, `getcfheaders`,
//! `getcfilters` and `getdata` for blocks, from its own thread, until the
//! [`FilterServer`] is dropped. Requests for unknown filter types or blocks,
//! or with bad ranges, are logged and ignored.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use bitcoin::bip158::{BlockFilter, FilterHash, FilterHeader};
use bitcoin::hashes::Hash as _;
use bitcoin::p2p::ServiceFlags;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_blockdata::{GetHeadersMessage, Inventory};
use bitcoin::p2p::message_filter::{CFCheckpt, CFHeaders, CFilter, GetCFCheckpt, GetCFHeaders, GetCFilters};
use bitcoin::{Block, BlockHash, OutPoint, ScriptBuf};
use peerlink::{Config, Event, Handle, PeerId};

/// BIP157: filter type 0 is the basic filter.
pub const BASIC: u8 = 0;
/// BIP157: at most 2,000 filter headers per `cfheaders`.
pub const MAX_CFHEADERS: usize = 2000;
/// BIP157: at most 1,000 filters per `getcfilters`.
pub const MAX_CFILTERS: usize = 1000;
/// BIP157: a checkpoint every 1,000 blocks.
pub const CHECKPOINT_INTERVAL: usize = 1000;
/// Core's MAX_HEADERS_RESULTS.
pub const MAX_HEADERS: usize = 2000;

/// How often the server thread checks whether it should stop.
const POLL: Duration = Duration::from_millis(20);

/// Deliberate faults, for testing the client's checks.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Serve wrong bytes in the `cfilter` of the block at this height (the
    /// filter headers stay those of the correct filter).
    pub corrupt_filter_at: Option<usize>,
}

/// The chain and everything derived from it.
pub struct Chain {
    /// The blocks; `blocks[0]` is genesis.
    pub blocks: Vec<Block>,
    /// Block hashes by height.
    pub hashes: Vec<BlockHash>,
    /// Heights by block hash.
    pub heights: HashMap<BlockHash, usize>,
    /// The correct basic filters, by height.
    pub filters: Vec<BlockFilter>,
    /// The filter bytes served in `cfilter` (the correct ones unless
    /// [`Options::corrupt_filter_at`]).
    pub served: Vec<Vec<u8>>,
    /// Filter hashes, by height.
    pub filter_hashes: Vec<FilterHash>,
    /// Filter headers, by height.
    pub filter_headers: Vec<FilterHeader>,
}

impl Chain {
    /// Computes the filters and filter headers of `blocks` (genesis first,
    /// each linked to the previous one). Panics on a broken chain or a spent
    /// output that no block of the chain created.
    pub fn new(blocks: Vec<Block>, options: &Options) -> Chain {
        assert!(!blocks.is_empty(), "a chain has a genesis block");
        let mut coins: HashMap<OutPoint, ScriptBuf> = HashMap::new();
        let mut hashes = Vec::with_capacity(blocks.len());
        let mut filters = Vec::with_capacity(blocks.len());
        for (height, block) in blocks.iter().enumerate() {
            let hash = block.block_hash();
            if height > 0 {
                assert_eq!(block.header.prev_blockhash, hashes[height - 1], "block {height} does not link");
            }
            hashes.push(hash);
            // Outputs of this block too: a later transaction may spend an
            // earlier one of the same block.
            for tx in &block.txdata {
                let txid = tx.compute_txid();
                for (vout, out) in tx.output.iter().enumerate() {
                    coins.insert(OutPoint { txid, vout: vout as u32 }, out.script_pubkey.clone());
                }
            }
            let filter = BlockFilter::new_script_filter(block, |outpoint| {
                coins.get(outpoint).cloned().ok_or(bitcoin::bip158::Error::UtxoMissing(*outpoint))
            })
            .unwrap_or_else(|e| panic!("filter of block {height} ({hash}): {e}"));
            filters.push(filter);
        }
        let heights = hashes.iter().enumerate().map(|(h, hash)| (*hash, h)).collect();
        let mut filter_hashes = Vec::with_capacity(filters.len());
        let mut filter_headers = Vec::with_capacity(filters.len());
        let mut prev = FilterHeader::all_zeros();
        for filter in &filters {
            let hash = FilterHash::hash(&filter.content);
            prev = hash.filter_header(&prev);
            filter_hashes.push(hash);
            filter_headers.push(prev);
        }
        let mut served: Vec<Vec<u8>> = filters.iter().map(|f| f.content.clone()).collect();
        if let Some(height) = options.corrupt_filter_at {
            let bytes = served.get_mut(height).unwrap_or_else(|| panic!("no block at height {height} to corrupt"));
            match bytes.last_mut() {
                Some(last) => *last ^= 0xff,
                None => bytes.push(0xff),
            }
        }
        Chain { blocks, hashes, heights, filters, served, filter_hashes, filter_headers }
    }

    /// Height of the last block.
    pub fn tip(&self) -> usize {
        self.blocks.len() - 1
    }
}

/// A running BIP157 peer; it stops (and closes its connections) on drop.
pub struct FilterServer {
    /// The chain it serves.
    pub chain: Arc<Chain>,
    /// Its listening address.
    pub addr: SocketAddr,
    /// Requests it ignored (unknown filter type or block, bad range).
    ignored: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FilterServer {
    /// Serves `blocks` (`blocks[0]` is genesis) on `network`, listening on
    /// 127.0.0.1 on a free port.
    pub fn start(network: bitcoin::Network, blocks: Vec<Block>) -> (FilterServer, SocketAddr) {
        Self::start_with(network, blocks, Options::default())
    }

    /// [`start`](Self::start) with deliberate faults.
    pub fn start_with(network: bitcoin::Network, blocks: Vec<Block>, options: Options) -> (FilterServer, SocketAddr) {
        let chain = Arc::new(Chain::new(blocks, &options));
        let mut config = Config::new(network);
        config.listen.push(SocketAddr::from(([127, 0, 0, 1], 0)));
        config.session.services = ServiceFlags::NETWORK | ServiceFlags::WITNESS | ServiceFlags::COMPACT_FILTERS;
        config.session.user_agent_name = Some("filter_server".into());
        config.start_height = i32::try_from(chain.tip()).expect("height fits in i32");
        let handle = peerlink::start(config).expect("start the filter server's reactor");
        let addr = handle.local_addrs()[0];
        let stop = Arc::new(AtomicBool::new(false));
        let ignored = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (chain, stop, ignored) = (Arc::clone(&chain), Arc::clone(&stop), Arc::clone(&ignored));
            std::thread::Builder::new()
                .name("filter_server".into())
                .spawn(move || Server { handle, chain, ignored, outboxes: HashMap::new() }.run(&stop))
                .expect("spawn the filter server thread")
        };
        (FilterServer { chain, addr, ignored, stop, thread: Some(thread) }, addr)
    }

    /// How many requests were ignored so far.
    pub fn ignored(&self) -> usize {
        self.ignored.load(Ordering::SeqCst)
    }
}

impl Drop for FilterServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
            && !std::thread::panicking()
        {
            panic!("the filter server thread panicked");
        }
    }
}

struct Server {
    handle: Handle,
    chain: Arc<Chain>,
    ignored: Arc<AtomicUsize>,
    /// Messages waiting for a full send buffer to drain, per peer.
    outboxes: HashMap<PeerId, VecDeque<NetworkMessage>>,
}

impl Server {
    fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::SeqCst) {
            match self.handle.recv_timeout(POLL) {
                Ok(Event::Message { peer, message, .. }) => self.answer(peer, message),
                Ok(Event::Writable { peer }) => self.flush(peer),
                Ok(Event::Disconnected { peer, .. }) => {
                    self.outboxes.remove(&peer);
                }
                Ok(_) => {}
                Err(e) if e.is_timeout() => {}
                Err(_) => return,
            }
        }
        // Dropping the handle shuts the reactor down.
    }

    fn ignore(&self, peer: PeerId, what: std::fmt::Arguments<'_>) {
        self.ignored.fetch_add(1, Ordering::SeqCst);
        eprintln!("filter_server: ignoring {what} from peer {peer}");
    }

    fn send(&mut self, peer: PeerId, message: NetworkMessage) {
        let outbox = self.outboxes.entry(peer).or_default();
        if !outbox.is_empty() {
            outbox.push_back(message);
            return;
        }
        match self.handle.send(peer, message) {
            Ok(()) => {}
            Err(refused) if refused.reason.is_backpressure() => outbox.push_back(refused.message),
            Err(refused) => eprintln!("filter_server: cannot send to peer {peer}: {refused}"),
        }
    }

    /// Sends what waited for the peer's send buffer, until it is full again.
    fn flush(&mut self, peer: PeerId) {
        let Some(outbox) = self.outboxes.get_mut(&peer) else { return };
        while let Some(message) = outbox.pop_front() {
            match self.handle.send(peer, message) {
                Ok(()) => {}
                Err(refused) if refused.reason.is_backpressure() => {
                    outbox.push_front(refused.message);
                    return;
                }
                Err(refused) => {
                    eprintln!("filter_server: cannot send to peer {peer}: {refused}");
                    outbox.clear();
                    return;
                }
            }
        }
    }

    fn height(&self, hash: &BlockHash) -> Option<usize> {
        self.chain.heights.get(hash).copied()
    }

    fn answer(&mut self, peer: PeerId, message: NetworkMessage) {
        match message {
            NetworkMessage::GetHeaders(request) => self.headers(peer, &request),
            NetworkMessage::GetCFCheckpt(request) => self.checkpoints(peer, &request),
            NetworkMessage::GetCFHeaders(request) => self.filter_headers(peer, &request),
            NetworkMessage::GetCFilters(request) => self.filters(peer, &request),
            NetworkMessage::GetData(items) => self.blocks(peer, items),
            _ => {}
        }
    }

    /// Headers after the first locator hash we know (genesis if none), up to
    /// `MAX_HEADERS` or the stop hash.
    fn headers(&mut self, peer: PeerId, request: &GetHeadersMessage) {
        let fork = request.locator_hashes.iter().find_map(|h| self.height(h)).unwrap_or(0);
        let mut headers = Vec::new();
        for height in fork + 1..=self.chain.tip() {
            headers.push(self.chain.blocks[height].header);
            if self.chain.hashes[height] == request.stop_hash || headers.len() == MAX_HEADERS {
                break;
            }
        }
        self.send(peer, NetworkMessage::Headers(headers));
    }

    fn checkpoints(&mut self, peer: PeerId, request: &GetCFCheckpt) {
        if request.filter_type != BASIC {
            return self.ignore(peer, format_args!("getcfcheckpt for filter type {}", request.filter_type));
        }
        let Some(stop) = self.height(&request.stop_hash) else {
            return self.ignore(peer, format_args!("getcfcheckpt for unknown block {}", request.stop_hash));
        };
        let filter_headers =
            (CHECKPOINT_INTERVAL..=stop).step_by(CHECKPOINT_INTERVAL).map(|h| self.chain.filter_headers[h]).collect();
        let answer = CFCheckpt { filter_type: BASIC, stop_hash: request.stop_hash, filter_headers };
        self.send(peer, NetworkMessage::CFCheckpt(answer));
    }

    /// The checked range `start..=stop` of a filter request.
    fn range(
        &self,
        peer: PeerId,
        what: &str,
        filter_type: u8,
        start: u32,
        stop_hash: &BlockHash,
        max: usize,
    ) -> Option<(usize, usize)> {
        if filter_type != BASIC {
            self.ignore(peer, format_args!("{what} for filter type {filter_type}"));
            return None;
        }
        let Some(stop) = self.height(stop_hash) else {
            self.ignore(peer, format_args!("{what} for unknown block {stop_hash}"));
            return None;
        };
        let start = start as usize;
        if start > stop || stop - start >= max {
            self.ignore(peer, format_args!("{what} for heights {start}..={stop} (at most {max})"));
            return None;
        }
        Some((start, stop))
    }

    fn filter_headers(&mut self, peer: PeerId, request: &GetCFHeaders) {
        let range = self.range(
            peer,
            "getcfheaders",
            request.filter_type,
            request.start_height,
            &request.stop_hash,
            MAX_CFHEADERS,
        );
        let Some((start, stop)) = range else { return };
        let previous_filter_header =
            if start == 0 { FilterHeader::all_zeros() } else { self.chain.filter_headers[start - 1] };
        let answer = CFHeaders {
            filter_type: BASIC,
            stop_hash: request.stop_hash,
            previous_filter_header,
            filter_hashes: self.chain.filter_hashes[start..=stop].to_vec(),
        };
        self.send(peer, NetworkMessage::CFHeaders(answer));
    }

    fn filters(&mut self, peer: PeerId, request: &GetCFilters) {
        let range = self.range(
            peer,
            "getcfilters",
            request.filter_type,
            request.start_height,
            &request.stop_hash,
            MAX_CFILTERS,
        );
        let Some((start, stop)) = range else { return };
        for height in start..=stop {
            let filter = CFilter {
                filter_type: BASIC,
                block_hash: self.chain.hashes[height],
                filter: self.chain.served[height].clone(),
            };
            self.send(peer, NetworkMessage::CFilter(filter));
        }
    }

    /// Blocks we have, in the order asked (witness data stripped for plain
    /// `Block` requests); `notfound` for the rest.
    fn blocks(&mut self, peer: PeerId, items: Vec<Inventory>) {
        let mut missing = Vec::new();
        for item in items {
            let (hash, witness) = match item {
                Inventory::Block(h) => (h, false),
                Inventory::WitnessBlock(h) => (h, true),
                other => {
                    self.ignore(peer, format_args!("getdata for {other:?}"));
                    continue;
                }
            };
            let Some(height) = self.height(&hash) else {
                missing.push(item);
                continue;
            };
            let mut block = self.chain.blocks[height].clone();
            if !witness {
                for input in block.txdata.iter_mut().flat_map(|tx| tx.input.iter_mut()) {
                    input.witness.clear();
                }
            }
            self.send(peer, NetworkMessage::Block(block));
        }
        if !missing.is_empty() {
            self.send(peer, NetworkMessage::NotFound(missing));
        }
    }
}
