//! The `cbf_client` example (BIP157/158 light client) against an in-process
//! filter server on a synthetic regtest chain, and against peers it must
//! refuse or catch lying.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Instant;

use bitcoin::blockdata::constants::genesis_block;
use bitcoin::hashes::Hash as _;
use bitcoin::p2p::ServiceFlags;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::script::Builder;
use bitcoin::{
    Amount, Block, BlockHash, CompactTarget, OutPoint, PubkeyHash, ScriptBuf, Sequence, Transaction, TxIn, TxOut,
    Witness, absolute, block, transaction,
};
use peerlink::{Config, DisconnectReason, Event};

use crate::common::{NET, WAIT, localhost};
use crate::filter_server::{FilterServer, Options};

/// Blocks above genesis: two checkpoints (1000, 2000), two `cfheaders`
/// batches and three `cfilters` batches.
const HEIGHT: u32 = 2500;

/// Heights whose coinbase pays script A.
fn pays_a(height: u32) -> bool {
    height % 150 == 7
}

/// A spends A's coinbase output of height 7 to B; B spends that to an
/// unrelated script (its block involves B only through the spent script);
/// C spends A's coinbase output of height 157 to an unrelated script (A only
/// through the spent script).
const SPEND_A_TO_B: u32 = 1990;
const SPEND_B_AWAY: u32 = 2050;
const SPEND_A_AWAY: u32 = 1200;

fn p2pkh(byte: u8) -> ScriptBuf {
    ScriptBuf::new_p2pkh(&PubkeyHash::from_byte_array([byte; 20]))
}

fn coinbase(height: u32, script: ScriptBuf) -> Transaction {
    Transaction {
        version: transaction::Version::ONE,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::null(),
            // BIP34: the height first (as Core's miner: height, then OP_0).
            script_sig: Builder::new().push_int(i64::from(height)).push_opcode(bitcoin::opcodes::OP_0).into_script(),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: vec![TxOut { value: Amount::from_sat(50 * 100_000_000), script_pubkey: script }],
    }
}

/// Spends output 0 of `prev` to `to` (unsigned: nothing here checks scripts).
fn spend(prev: &Transaction, to: ScriptBuf) -> Transaction {
    Transaction {
        version: transaction::Version::ONE,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint { txid: prev.compute_txid(), vout: 0 },
            script_sig: Builder::new().push_slice([0x30; 8]).into_script(),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: vec![TxOut { value: prev.output[0].value - Amount::from_sat(1000), script_pubkey: to }],
    }
}

/// A block on `prev` with valid regtest proof of work.
fn mine(prev: &Block, txdata: Vec<Transaction>) -> Block {
    let mut block = Block {
        header: block::Header {
            version: block::Version::from_consensus(0x2000_0000),
            prev_blockhash: prev.block_hash(),
            merkle_root: bitcoin::TxMerkleNode::all_zeros(),
            time: prev.header.time + 600,
            bits: prev.header.bits,
            nonce: 0,
        },
        txdata,
    };
    block.header.merkle_root = block.compute_merkle_root().expect("a block has a coinbase");
    while block.header.validate_pow(block.header.target()).is_err() {
        block.header.nonce += 1;
    }
    block
}

/// Scripts A and B, and the synthetic chain (genesis first).
fn chain() -> (ScriptBuf, ScriptBuf, Vec<Block>) {
    let (a, b, other) = (p2pkh(0xaa), p2pkh(0xbb), p2pkh(0x11));
    let genesis = genesis_block(NET);
    assert_eq!(genesis.header.bits, CompactTarget::from_consensus(0x207f_ffff));
    let mut blocks = vec![genesis];
    let mut coinbases: HashMap<u32, Transaction> = HashMap::new();
    let mut a_to_b = None;
    for height in 1..=HEIGHT {
        let payee = if pays_a(height) { a.clone() } else { other.clone() };
        let cb = coinbase(height, payee);
        let mut txdata = vec![cb.clone()];
        coinbases.insert(height, cb);
        match height {
            SPEND_A_TO_B => {
                let tx = spend(&coinbases[&7], b.clone());
                a_to_b = Some(tx.clone());
                txdata.push(tx);
            }
            SPEND_B_AWAY => txdata.push(spend(a_to_b.as_ref().expect("spent earlier"), other.clone())),
            SPEND_A_AWAY => txdata.push(spend(&coinbases[&157], other.clone())),
            _ => {}
        }
        let block = mine(blocks.last().expect("genesis"), txdata);
        blocks.push(block);
    }
    (a, b, blocks)
}

/// Heights of the blocks that create or spend an output paying one of
/// `scripts`, found by walking the transactions (not the filters).
fn involving(blocks: &[Block], scripts: &[&ScriptBuf]) -> BTreeSet<usize> {
    let mut coins: HashMap<OutPoint, ScriptBuf> = HashMap::new();
    let mut heights = BTreeSet::new();
    for (height, block) in blocks.iter().enumerate() {
        for tx in &block.txdata {
            let txid = tx.compute_txid();
            for (vout, out) in tx.output.iter().enumerate() {
                if scripts.contains(&&out.script_pubkey) {
                    heights.insert(height);
                }
                coins.insert(OutPoint { txid, vout: vout as u32 }, out.script_pubkey.clone());
            }
            if !tx.is_coinbase() {
                for input in &tx.input {
                    let spent = &coins[&input.previous_output];
                    if scripts.contains(&spent) {
                        heights.insert(height);
                    }
                }
            }
        }
    }
    heights
}

/// Runs the example against `peer`; returns (success, stdout, stderr).
fn cbf_client(peer: SocketAddr, scripts: &[&ScriptBuf]) -> (bool, String, String) {
    cbf_client_with(&["--peer".to_string(), peer.to_string()], scripts)
}

/// Runs the example with `peers` (its `--peer` or `--seed` arguments).
fn cbf_client_with(peers: &[String], scripts: &[&ScriptBuf]) -> (bool, String, String) {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let mut command = Command::new(env!("CARGO"));
    command.args(["run", "--quiet", "--example", "cbf_client", "--manifest-path", manifest, "--"]);
    command.args(["--network", "regtest"]);
    command.args(peers);
    for script in scripts {
        command.args(["--script", &script.to_hex_string()]);
    }
    let started = Instant::now();
    let output = command.output().unwrap_or_else(|e| panic!("cannot run cargo: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    eprintln!("cbf_client ({}, {:?}):\n--- stdout\n{stdout}--- stderr\n{stderr}", output.status, started.elapsed());
    (output.status.success(), stdout, stderr)
}

fn matched_heights(stdout: &str) -> BTreeSet<usize> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("match height="))
        .map(|rest| {
            let height = rest.split_whitespace().next().expect("a height");
            height.parse().unwrap_or_else(|e| panic!("bad height in {rest:?}: {e}"))
        })
        .collect()
}

#[test]
fn cbf_client_syncs_and_matches_scripts() {
    let started = Instant::now();
    let (a, b, blocks) = chain();
    let expected = involving(&blocks, &[&a, &b]);
    let hashes: Vec<BlockHash> = blocks.iter().map(Block::block_hash).collect();
    eprintln!("built {} blocks in {:?}", blocks.len(), started.elapsed());
    // The chain exercises output matches, input-only matches for both scripts
    // and a block involving both.
    for h in [7, 157, 307, SPEND_A_TO_B, SPEND_B_AWAY, SPEND_A_AWAY] {
        assert!(expected.contains(&(h as usize)), "height {h} should involve A or B: {expected:?}");
    }
    assert_eq!(expected.len(), (1..=HEIGHT).filter(|h| pays_a(*h)).count() + 3);

    let (server, addr) = FilterServer::start(NET, blocks);
    let (ok, stdout, stderr) = cbf_client(addr, &[&a, &b]);
    assert!(ok, "cbf_client failed:\n{stdout}\n{stderr}");
    assert_eq!(matched_heights(&stdout), expected, "matched heights:\n{stdout}");
    for line in stdout.lines().filter(|l| l.starts_with("match height=")) {
        let height: usize = matched_heights(line).into_iter().next().expect("one height");
        assert!(line.contains(&hashes[height].to_string()), "wrong block hash in {line:?}");
    }
    let tip = HEIGHT as usize;
    assert!(stdout.contains("checkpoints n=2"), "two checkpoints:\n{stdout}");
    assert_eq!(stdout.lines().last(), Some(format!("synced tip={tip} filters={}", tip + 1).as_str()));
    assert_eq!(server.ignored(), 0, "the client sent only valid requests");
    eprintln!("cbf sync test took {:?}", started.elapsed());
}

/// Without `--peer`, the client finds its peer through the seeds: the
/// first seed (a scripted peer without NODE_COMPACT_FILTERS) is passed
/// over, and the filter server is found and synced from.
#[test]
fn cbf_client_finds_a_filter_peer_through_the_seeds() {
    let (a, b, blocks) = chain();
    let expected = involving(&blocks, &[&a, &b]);
    let plain = crate::addr_server::AddrServer::start(std::net::Ipv4Addr::new(127, 0, 0, 31), Vec::new());
    let (server, addr) = FilterServer::start(NET, blocks);
    let seeds = ["--seed".to_string(), plain.addr().to_string(), "--seed".to_string(), addr.to_string()];
    let (ok, stdout, stderr) = cbf_client_with(&seeds, &[&a, &b]);
    assert!(ok, "cbf_client failed:\n{stdout}\n{stderr}");
    let ready: Vec<&str> = stdout.lines().filter(|l| l.starts_with("ready ")).collect();
    assert_eq!(ready.len(), 1, "{stdout}");
    assert!(ready[0].starts_with(&format!("ready peer={addr} ")), "{stdout}");
    assert!(ready[0].ends_with(&format!(" found=seed seed={addr}")), "{stdout}");
    assert!(ready[0].contains("COMPACT_FILTERS"), "{stdout}");
    assert_eq!(matched_heights(&stdout), expected, "matched heights:\n{stdout}");
    let tip = HEIGHT as usize;
    assert_eq!(stdout.lines().last(), Some(format!("synced tip={tip} filters={}", tip + 1).as_str()));
    assert_eq!(server.ignored(), 0, "the client sent only valid requests");
}

#[test]
fn cbf_client_refuses_peer_without_compact_filters() {
    // A raw-mode listener that answers the handshake by hand, so it sees
    // every byte the client sends (a session listener would keep messages
    // back until the handshake completed).
    let mut config = Config::new(NET);
    config.mode = peerlink::Mode::Raw;
    config.listen.push(localhost());
    let handle = peerlink::start(config).expect("start listener");
    let addr = handle.local_addrs()[0];

    let client = std::thread::spawn(move || cbf_client(addr, &[]));
    // Everything the listener got from the client, until it went away.
    let deadline = Instant::now() + WAIT;
    let mut received = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match handle.recv_timeout(left).expect("timed out waiting for the client to disconnect") {
            Event::Message { peer, message, .. } => {
                if let NetworkMessage::Version(theirs) = &message {
                    let mut ours = theirs.clone();
                    ours.services = ServiceFlags::NETWORK | ServiceFlags::WITNESS;
                    ours.nonce ^= 1;
                    ours.user_agent = "/no-filters/".into();
                    let _ = handle.send(peer, NetworkMessage::Version(ours));
                    let _ = handle.send(peer, NetworkMessage::Verack);
                }
                received.push(message);
            }
            Event::Disconnected { reason, .. } => {
                // The client hung up: no codec violation, which a BIP157
                // request before `version` would have been.
                assert!(
                    matches!(reason, DisconnectReason::PeerClosed | DisconnectReason::Io(_)),
                    "listener saw {reason:?}"
                );
                break;
            }
            _ => {}
        }
    }
    let (ok, stdout, stderr) = client.join().expect("client thread");
    assert!(!ok, "cbf_client accepted a peer without NODE_COMPACT_FILTERS:\n{stdout}\n{stderr}");
    assert!(stdout.contains("NODE_COMPACT_FILTERS"), "output does not name the missing service:\n{stdout}\n{stderr}");
    let commands: Vec<String> = received.iter().map(|m| m.command().as_ref().to_owned()).collect();
    assert!(
        received.iter().any(|m| matches!(m, NetworkMessage::Version(_))),
        "the listener recorded the client's version: {commands:?}"
    );
    for message in &received {
        assert!(
            !matches!(
                message,
                NetworkMessage::GetCFHeaders(_) | NetworkMessage::GetCFCheckpt(_) | NetworkMessage::GetCFilters(_)
            ),
            "the refused peer received a BIP157 request: {commands:?}"
        );
    }
}

#[test]
fn cbf_client_rejects_corrupted_filter() {
    // A short chain is enough: the client checks every filter against the
    // filter-header chain.
    let genesis = genesis_block(NET);
    let mut blocks = vec![genesis];
    for height in 1..=30u32 {
        let block = mine(blocks.last().expect("genesis"), vec![coinbase(height, p2pkh(0x22))]);
        blocks.push(block);
    }
    const BAD: usize = 17;
    let (_server, addr) = FilterServer::start_with(NET, blocks, Options { corrupt_filter_at: Some(BAD) });
    let (ok, stdout, stderr) = cbf_client(addr, &[&p2pkh(0x22)]);
    assert!(!ok, "cbf_client accepted a corrupted filter:\n{stdout}\n{stderr}");
    let error = stdout.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("no error line:\n{stdout}"));
    assert!(error.contains(&format!("height {BAD}")), "the error does not name height {BAD}: {error:?}");
    assert!(!stdout.contains("synced"), "{stdout}");
    // Filters before the corrupted one were verified and matched.
    assert_eq!(matched_heights(&stdout), (0..BAD).filter(|h| *h > 0).collect(), "{stdout}");
}
