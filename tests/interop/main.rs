//! Interop tests against real nodes, regtest, on loopback only. Each test
//! starts its own node, so tests are independent and may run in parallel.
//!
//! - bcoin 1.0.2 (JavaScript, in memory): the tests in this file. They need
//!   Node.js and npm; `interop/bcoin/node_modules` is installed on first use
//!   (`npm ci`). A missing tool is a failure, never a skip.
//! - Bitcoin Core: [`core`], run when `BITCOIND_EXE` names a `bitcoind`
//!   ([`bitcoind`]): `BITCOIND_EXE=../shared/bitcoin-core/bin/bitcoind cargo
//!   test --all-features --test interop core`. Without it they say on stderr
//!   that they did not run; `PEERLINK_REQUIRE_BITCOIND=1` (set by `.ci/run`)
//!   makes that a failure.
//! - microsocks, a real SOCKS5 server: [`socks`], sessions through it to an
//!   in-process listener, bcoin and Core. Run when `microsocks` is on `PATH`
//!   (`apt-get install -y microsocks`); `PEERLINK_REQUIRE_MICROSOCKS=1` (set
//!   by `.ci/run`) makes its absence a failure.

#[path = "../support/addr_server.rs"]
mod addr_server;
mod bcoin;
mod bitcoind;
mod common;
mod core;
mod crawl;
mod discovery;
#[path = "../support/filter_server.rs"]
mod filter_server;
#[cfg(feature = "socks")]
mod socks;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bitcoin::block::Header;
use bitcoin::hashes::Hash as _;
use bitcoin::p2p::ServiceFlags;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_blockdata::{GetHeadersMessage, Inventory};
use bitcoin::{BlockHash, CompactTarget};
use peerlink::Direction;
use peerlink::codec::Transport;
use serde_json::json;

use crate::bcoin::Bcoin;
use crate::common::{
    Rpc as _, Wallet, block_at, config, connect_ready, mempool, mine, parse_block_hash, run_example, wait_message,
    wait_ready,
};

/// Bitcoin Core's `MAX_HEADERS_RESULTS`; bcoin sends the same at most.
const MAX_HEADERS_RESULTS: usize = 2000;

/// Regtest's `nBits` (powLimit 0x7fff..., no retargeting).
const REGTEST_BITS: u32 = 0x207f_ffff;

#[test]
fn session_outbound_to_bcoin() {
    let bcoin = Bcoin::start();
    let (_handle, peer, info) = connect_ready(bcoin.p2p);
    assert_eq!(info.peer, peer);
    assert_eq!(info.direction, Direction::Outbound);
    assert_eq!(info.addr, bcoin.p2p);
    assert!(info.ready);
    let version = info.version.as_ref().expect("Ready carries the peer's version");
    assert!(version.user_agent.contains("bcoin"), "user agent {:?}", version.user_agent);
    assert!(version.version >= 70001, "protocol version {}", version.version);
    assert!(version.services.has(ServiceFlags::NETWORK), "services {}", version.services);
    assert_eq!(info.transport, Transport::V1);
    // bcoin speaks 70015 and has no BIP339.
    assert!(!info.features.wtxid_relay, "features {}", info.features);
}

/// bcoin speaks v1 only, and (unlike Core) speaks first. A v2-preferred
/// connection (the default) falls back to v1 and completes the session; the
/// fallback is remembered, so the next connection goes straight to v1.
#[test]
fn v2_preferred_falls_back_to_v1_with_bcoin() {
    let bcoin = Bcoin::start();
    let mut config = config();
    config.transport = peerlink::wire::TransportPolicy::V2Preferred;
    let handle = peerlink::start(config).expect("start");
    for attempt in 0..2 {
        let peer = handle.connect(bcoin.p2p).expect("reactor running");
        let (ready, info) = wait_ready(&handle, "the session after the v1 fallback");
        assert_eq!(ready, peer);
        assert_eq!(info.transport, Transport::V1, "attempt {attempt}");
        let stats = handle.peer_stats(peer).expect("reactor running").expect("connected");
        // On the cached attempt the first bytes we sent were a v1 version,
        // not a 64-byte key: the session started at once.
        assert!(stats.per_command.iter().any(|c| c.command == "version" && c.msgs_in == 1));
        handle.disconnect(peer, peerlink::Disconnect::Now).expect("reactor running");
        loop {
            match handle.recv_timeout(Duration::from_secs(30)).expect("disconnect reported") {
                peerlink::Event::Disconnected { peer: p, .. } if p == peer => break,
                _ => {}
            }
        }
    }
    // bcoin is still willing to talk to us: no ban from the v2 attempt.
    let (_h, _peer, info) = connect_ready(bcoin.p2p);
    assert_eq!(info.transport, Transport::V1);
}

#[test]
fn session_inbound_from_bcoin() {
    let bcoin = Bcoin::start();
    let mut config = config();
    config.listen.push("127.0.0.1:0".parse().expect("valid address"));
    // bcoin drops outbound peers without NETWORK, and without WITNESS since
    // its own services include WITNESS (lib/net/peer.js, handleVersion).
    config.session.services = ServiceFlags::NETWORK | ServiceFlags::WITNESS;
    let handle = peerlink::start(config).expect("start listener");
    let ours = handle.local_addrs()[0];
    bcoin.rpc("addnode", json!([ours.to_string(), "onetry"]));
    let (peer, info) = wait_ready(&handle, "bcoin's inbound handshake");
    assert_eq!(info.peer, peer);
    assert_eq!(info.direction, Direction::Inbound);
    assert_eq!(info.addr.ip(), ours.ip());
    assert_eq!(info.local_addr, Some(ours));
    let version = info.version.as_ref().expect("Ready carries the peer's version");
    assert!(version.user_agent.contains("bcoin"), "user agent {:?}", version.user_agent);
    assert!(!info.features.wtxid_relay);
    assert_eq!(handle.peers().expect("reactor running").len(), 1);
}

#[test]
fn header_sync_after_mining() {
    let bcoin = Bcoin::start();
    let wallet = Wallet::fixed(1);
    let mined = mine(&bcoin, 201, &wallet.address);
    let (handle, peer, _) = connect_ready(bcoin.p2p);

    let genesis = bitcoin::constants::genesis_block(bitcoin::Network::Regtest).block_hash();
    let mut headers: Vec<Header> = Vec::new();
    let mut tip = genesis;
    loop {
        let request = GetHeadersMessage::new(vec![tip], BlockHash::all_zeros());
        handle.send(peer, NetworkMessage::GetHeaders(request)).expect("reactor running");
        let batch = wait_message(&handle, peer, "headers", |m| match m {
            NetworkMessage::Headers(h) => Some(h.clone()),
            _ => None,
        });
        for header in &batch {
            assert_eq!(header.prev_blockhash, tip, "header {} does not link to {tip}", headers.len() + 1);
            assert_eq!(header.bits, CompactTarget::from_consensus(REGTEST_BITS), "regtest difficulty");
            tip = header.validate_pow(header.target()).expect("valid proof of work");
            headers.push(*header);
        }
        if batch.len() < MAX_HEADERS_RESULTS {
            break;
        }
    }
    assert_eq!(headers.len(), 201, "height of the synced chain");
    assert_eq!(tip, parse_block_hash(&bcoin.rpc("getbestblockhash", json!([]))));
    assert_eq!(tip, *mined.last().expect("mined 201 blocks"));
    let hashes: Vec<BlockHash> = headers.iter().map(Header::block_hash).collect();
    assert_eq!(hashes, mined, "synced headers are the mined blocks");
}

#[test]
fn block_download() {
    let bcoin = Bcoin::start();
    let wallet = Wallet::fixed(2);
    let mined = mine(&bcoin, 10, &wallet.address);
    let (handle, peer, _) = connect_ready(bcoin.p2p);

    let wanted: Vec<BlockHash> = vec![mined[0], mined[4], mined[9]];
    let inventory = vec![Inventory::Block(wanted[0]), Inventory::WitnessBlock(wanted[1]), Inventory::Block(wanted[2])];
    handle.send(peer, NetworkMessage::GetData(inventory)).expect("reactor running");
    let mut missing: HashSet<BlockHash> = wanted.iter().copied().collect();
    while !missing.is_empty() {
        let block = wait_message(&handle, peer, "the requested blocks", |m| match m {
            NetworkMessage::Block(b) => Some(b.clone()),
            NetworkMessage::NotFound(items) => panic!("bcoin has not found {items:?}"),
            _ => None,
        });
        let hash = block.block_hash();
        assert!(missing.remove(&hash), "unrequested or duplicate block {hash}");
        assert!(block.check_merkle_root(), "merkle root of {hash}");
        let coinbase = block.txdata.first().expect("a block has a coinbase");
        assert!(coinbase.is_coinbase());
        assert!(
            coinbase.output.iter().any(|o| o.script_pubkey == wallet.script),
            "coinbase of {hash} does not pay to {}",
            wallet.address
        );
    }
}

#[test]
fn ping_rtt() {
    let bcoin = Bcoin::start();
    let (handle, peer, _) = connect_ready(bcoin.p2p);

    // Not the session's nonce (it draws from a random seed), so the pong is
    // delivered to us.
    const NONCE: u64 = 0x7065_6572_6c69_6e6b;
    let sent = Instant::now();
    handle.send(peer, NetworkMessage::Ping(NONCE)).expect("reactor running");
    wait_message(&handle, peer, "the pong to our ping", |m| matches!(m, NetworkMessage::Pong(NONCE)).then_some(()));
    let rtt = sent.elapsed();
    assert!(rtt < Duration::from_secs(5), "loopback RTT {rtt:?}");
    eprintln!("ping RTT to bcoin over loopback: {rtt:?}");

    let stats = handle.peer_stats(peer).expect("reactor running").expect("peer is connected");
    assert_eq!(stats.peer, peer);
    // The session pinged right after verack; bcoin answers in order, so its
    // pong came before ours.
    let session_rtt = stats.last_ping.expect("the session's ping was answered before ours");
    assert!(stats.min_ping.is_some_and(|m| m <= session_rtt));
    assert!(stats.bytes_in > 0 && stats.bytes_out > 0, "{stats:?}");
    assert!(stats.msgs_in >= 3 && stats.msgs_out >= 3, "version, verack, ping/pong each way: {stats:?}");
    assert!(stats.last_send.is_some() && stats.last_recv.is_some());
    let command = |name: &str| {
        stats
            .per_command
            .iter()
            .find(|c| c.command == name)
            .unwrap_or_else(|| panic!("no per-command stats for {name:?}: {:?}", stats.per_command))
            .clone()
    };
    for name in ["version", "verack"] {
        let c = command(name);
        assert!(c.msgs_in == 1 && c.msgs_out == 1, "{name} once each way: {c:?}");
        assert!(c.bytes_in > 24 || name == "verack", "{name} counts its payload: {c:?}");
        assert!(c.bytes_in >= 24 && c.bytes_out >= 24, "{name} counts framing: {c:?}");
    }
    // Pings so far are ours (the session's and the test's); bcoin's own
    // pings come every two minutes.
    let ping = command("ping");
    assert!(ping.msgs_out >= 2 && ping.bytes_out >= 2 * 32, "{ping:?}");
    let pong = command("pong");
    assert!(pong.msgs_in >= 2 && pong.bytes_in >= 2 * 32, "{pong:?}");
    let sorted = stats.per_command.windows(2).all(|w| w[0].command < w[1].command);
    assert!(sorted, "per_command is sorted by command");
}

/// A signed legacy P2PKH spend of block 1's coinbase, after mining 101
/// blocks (coinbase maturity is 100) to `wallet`.
fn mature_spend(bcoin: &Bcoin, wallet: &Wallet, to: &Wallet) -> bitcoin::Transaction {
    mine(bcoin, 101, &wallet.address);
    let block = block_at(bcoin, 1);
    let coinbase = &block.txdata[0];
    wallet.spend(coinbase, 0, &to.script)
}

#[test]
fn broadcast_tx_reaches_mempool() {
    let bcoin = Bcoin::start();
    let wallet = Wallet::fixed(3);
    let tx = mature_spend(&bcoin, &wallet, &Wallet::fixed(4));
    let txid = tx.compute_txid();

    let outcomes = peerlink::broadcast::broadcast(config(), &tx, &[bcoin.p2p.into()], Duration::from_secs(30))
        .expect("start broadcast reactor");
    assert_eq!(outcomes.len(), 1);
    let outcome = &outcomes[0];
    assert_eq!(outcome.target, bcoin.p2p.into());
    let delivered = outcome.result.as_ref().unwrap_or_else(|e| panic!("broadcast to bcoin failed: {e:?}"));
    assert_eq!(delivered.kind, peerlink::broadcast::DeliveryKind::Sent, "bcoin did not have it");
    assert!(delivered.user_agent.contains("bcoin"), "{delivered:?}");
    assert!(!delivered.by_wtxid, "bcoin has no wtxidrelay");

    let pool = mempool(&bcoin);
    assert!(pool.contains(&txid.to_string()), "{txid} not in bcoin's mempool {pool:?}");
}

#[test]
fn broadcast_tx_example() {
    let bcoin = Bcoin::start();
    let wallet = Wallet::fixed(5);
    let tx = mature_spend(&bcoin, &wallet, &Wallet::fixed(6));
    let txid = tx.compute_txid().to_string();
    let hex = bitcoin::consensus::encode::serialize_hex(&tx);
    let peer = bcoin.p2p.to_string();

    let (ok, stdout, stderr) = run_example("broadcast_tx", &["--network", "regtest", "--peer", &peer, &hex]);
    assert!(ok, "broadcast_tx failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains(&txid), "output lacks the txid {txid}:\n{stdout}");
    let pool = mempool(&bcoin);
    assert!(pool.contains(&txid), "{txid} not in bcoin's mempool {pool:?}");
}

#[test]
fn handshake_example() {
    let bcoin = Bcoin::start();
    let peer = bcoin.p2p.to_string();

    let (ok, stdout, stderr) = run_example("handshake", &[&peer, "--network", "regtest", "--transport", "auto"]);
    assert!(ok, "handshake failed:\n{stdout}\n{stderr}");
    for needle in ["bcoin", "height=", "rtt", "transport=v1"] {
        assert!(stdout.contains(needle), "output lacks {needle:?}:\n{stdout}");
    }
}

/// Every block of bcoin's best chain, genesis first, downloaded with
/// `getheaders` and `getdata` (witness blocks).
fn download_chain(bcoin: &Bcoin) -> Vec<bitcoin::Block> {
    let (handle, peer, _) = connect_ready(bcoin.p2p);
    let genesis = bitcoin::constants::genesis_block(bitcoin::Network::Regtest).block_hash();
    let mut hashes = vec![genesis];
    loop {
        let tip = *hashes.last().expect("genesis at least");
        let request = GetHeadersMessage::new(vec![tip], BlockHash::all_zeros());
        handle.send(peer, NetworkMessage::GetHeaders(request)).expect("reactor running");
        let batch = wait_message(&handle, peer, "headers", |m| match m {
            NetworkMessage::Headers(h) => Some(h.clone()),
            _ => None,
        });
        for header in &batch {
            assert_eq!(header.prev_blockhash, *hashes.last().expect("non-empty"), "headers link");
            hashes.push(header.block_hash());
        }
        if batch.len() < MAX_HEADERS_RESULTS {
            break;
        }
    }
    let inventory = hashes.iter().map(|h| Inventory::WitnessBlock(*h)).collect();
    handle.send(peer, NetworkMessage::GetData(inventory)).expect("reactor running");
    let mut blocks: std::collections::HashMap<BlockHash, bitcoin::Block> = std::collections::HashMap::new();
    while blocks.len() < hashes.len() {
        let block = wait_message(&handle, peer, "the chain's blocks", |m| match m {
            NetworkMessage::Block(b) => Some(b.clone()),
            NetworkMessage::NotFound(items) => panic!("bcoin has not found {items:?}"),
            _ => None,
        });
        assert!(block.check_merkle_root(), "merkle root of {}", block.block_hash());
        blocks.insert(block.block_hash(), block);
    }
    hashes.iter().map(|h| blocks.remove(h).unwrap_or_else(|| panic!("block {h} was not sent"))).collect()
}

#[test]
fn cbf_client_against_filters_from_real_bcoin_blocks() {
    let bcoin = Bcoin::start();
    let wallet = Wallet::fixed(7);
    let paid = mine(&bcoin, 110, &wallet.address);
    // Spend block 1's coinbase (mature) to someone else and mine it into a
    // block that does not pay us: that block involves our script only through
    // the spent output.
    let coinbase = &block_at(&bcoin, 1).txdata[0];
    let tx = wallet.spend(coinbase, 0, &Wallet::fixed(8).script);
    let txid = tx.compute_txid();
    let outcomes = peerlink::broadcast::broadcast(config(), &tx, &[bcoin.p2p.into()], Duration::from_secs(30))
        .expect("start broadcast reactor");
    if let Err(e) = &outcomes[0].result {
        panic!("broadcast to bcoin failed: {e:?}");
    }
    assert!(mempool(&bcoin).contains(&txid.to_string()), "{txid} not in bcoin's mempool");
    let spent_in = mine(&bcoin, 1, &Wallet::fixed(9).address)[0];

    let blocks = download_chain(&bcoin);
    let tip = blocks.len() - 1;
    assert_eq!(tip, 111);
    assert_eq!(blocks[0].block_hash(), bitcoin::constants::genesis_block(bitcoin::Network::Regtest).block_hash());
    assert_eq!(blocks[1..=110].iter().map(|b| b.block_hash()).collect::<Vec<_>>(), paid);
    assert_eq!(blocks[111].block_hash(), spent_in);
    assert!(blocks[111].txdata.iter().any(|t| t.compute_txid() == txid), "the spend is in block 111");
    assert!(blocks[111].txdata[0].output.iter().all(|o| o.script_pubkey != wallet.script));

    let (server, addr) = filter_server::FilterServer::start(bitcoin::Network::Regtest, blocks);
    let (peer, script) = (addr.to_string(), wallet.script.to_hex_string());
    let (ok, stdout, stderr) =
        run_example("cbf_client", &["--network", "regtest", "--peer", &peer, "--script", &script]);
    assert!(ok, "cbf_client failed:\n{stdout}\n{stderr}");
    let matched: HashSet<usize> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("match height="))
        .map(|rest| rest.split_whitespace().next().and_then(|h| h.parse().ok()).expect("a height"))
        .collect();
    for height in 1..=tip {
        assert!(matched.contains(&height), "block {height} involves our script but did not match:\n{stdout}");
    }
    assert_eq!(stdout.lines().last(), Some(format!("synced tip={tip} filters={}", tip + 1).as_str()));
    assert_eq!(server.ignored(), 0);
}
