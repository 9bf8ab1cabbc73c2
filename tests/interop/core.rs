//! Interop tests against Bitcoin Core (`BITCOIND_EXE`, see
//! [`crate::bitcoind`]): regtest, loopback only, one node per test.
//!
//! Core has no wallet here: coins are mined to P2WSH(`OP_TRUE`) and spent
//! with the witness script alone, which needs no signature.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::str::FromStr as _;
use std::time::Instant;

use bitcoin::block::Header;
use bitcoin::hashes::Hash as _;
use bitcoin::opcodes::all::{OP_PUSHNUM_1, OP_PUSHNUM_2, OP_PUSHNUM_3};
use bitcoin::p2p::ServiceFlags;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_blockdata::{GetHeadersMessage, Inventory};
use bitcoin::script::Builder;
use bitcoin::{
    Address, Amount, BlockHash, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness, absolute, transaction,
};
use peerlink::codec::Transport;
use peerlink::wire::TransportPolicy;
use peerlink::{Direction, DisconnectReason, Event, Handle, Mode, PeerId, PeerInfo};
use serde_json::{Value, json};

use crate::bitcoind::Bitcoind;
use crate::common::{
    FEE_SAT, Rpc as _, WAIT, block_at, config, connect_ready, connect_ready_with, mempool, mine, parse_block_hash,
    run_example, wait_message, wait_ready,
};

/// Core's `MAX_HEADERS_RESULTS`.
const MAX_HEADERS_RESULTS: usize = 2000;

/// A witness script of one opcode, anyone can spend its P2WSH output.
pub(crate) fn witness_script(op: bitcoin::opcodes::Opcode) -> ScriptBuf {
    ScriptBuf::from_bytes(vec![op.to_u8()])
}

/// `OP_0 <sha256(witness script)>`.
pub(crate) fn p2wsh(witness_script: &ScriptBuf) -> ScriptBuf {
    ScriptBuf::new_p2wsh(&witness_script.wscript_hash())
}

/// The regtest (`bcrt1...`) address of P2WSH(`witness_script`).
pub(crate) fn p2wsh_address(witness_script: &ScriptBuf) -> String {
    Address::p2wsh(witness_script, bitcoin::Network::Regtest).to_string()
}

/// Spends `prev.output[0]`, a P2WSH(`OP_TRUE`) coin, to `to` minus
/// [`FEE_SAT`]. The witness is the witness script alone: `OP_TRUE` leaves
/// exactly one true element, so nothing is signed.
pub(crate) fn spend_op_true(prev: &Transaction, to: &ScriptBuf) -> Transaction {
    let op_true = witness_script(OP_PUSHNUM_1);
    let prev_out = &prev.output[0];
    assert_eq!(prev_out.script_pubkey, p2wsh(&op_true), "the coin being spent is not P2WSH(OP_TRUE)");
    Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint { txid: prev.compute_txid(), vout: 0 },
            script_sig: ScriptBuf::new(),
            sequence: Sequence::MAX,
            witness: Witness::from_slice(&[op_true.as_bytes()]),
        }],
        output: vec![TxOut {
            value: prev_out.value.checked_sub(Amount::from_sat(FEE_SAT)).expect("output covers the fee"),
            script_pubkey: to.clone(),
        }],
    }
}

/// Core's `getpeerinfo` entry for the connection whose remote end, seen from
/// Core, is `addr`.
pub fn core_peer(core: &Bitcoind, addr: SocketAddr) -> Value {
    let peers = core.rpc("getpeerinfo", json!([]));
    let list = peers.as_array().unwrap_or_else(|| panic!("getpeerinfo returned {peers}"));
    list.iter()
        .find(|p| p["addr"] == addr.to_string())
        .unwrap_or_else(|| panic!("Core has no peer {addr}: {peers:#}"))
        .clone()
}

/// Hex of a BIP324 session id, as `getpeerinfo` shows it.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What both ends must agree on for a session with Core, in either
/// direction: `theirs` is Core's `getpeerinfo` entry for us, who announced
/// `our_services`.
pub fn check_session(info: &PeerInfo, theirs: &Value, our_services: ServiceFlags, transport: TransportPolicy) {
    assert!(info.ready);
    let version = info.version.as_ref().expect("Ready carries the peer's version");
    assert!(version.user_agent.starts_with("/Satoshi:"), "user agent {:?}", version.user_agent);
    assert_eq!(version.version, 70016, "Core's protocol version since 22.0");
    let services = ServiceFlags::NETWORK | ServiceFlags::WITNESS | ServiceFlags::COMPACT_FILTERS | ServiceFlags::P2P_V2;
    assert!(version.services.has(services), "services {}", version.services);
    assert!(info.features.wtxid_relay && info.features.addr_v2, "features {}", info.features);
    assert_eq!(theirs["subver"], config().session.user_agent(), "Core's view of us: {theirs:#}");
    assert_eq!(theirs["version"], 70016, "{theirs:#}");
    assert_eq!(theirs["services"], format!("{:016x}", our_services.to_u64()), "{theirs:#}");
    assert_eq!(theirs["bip152_hb_from"], false, "{theirs:#}");
    match (transport, info.transport) {
        (TransportPolicy::V1Only, Transport::V1) => {
            assert_eq!(theirs["transport_protocol_type"], "v1", "{theirs:#}");
            assert_eq!(theirs["session_id"], "", "{theirs:#}");
        }
        (TransportPolicy::V2Only, Transport::V2 { session_id }) => {
            assert_eq!(theirs["transport_protocol_type"], "v2", "{theirs:#}");
            assert_eq!(theirs["session_id"], hex(&session_id), "both ends derive the same session id: {theirs:#}");
        }
        (want, got) => panic!("wanted transport {want}, got {got}"),
    }
}

/// A session config under `transport`.
fn config_for(transport: TransportPolicy) -> peerlink::Config {
    let mut config = config();
    config.transport = transport;
    config
}

/// We connect to Core with `transport` (V1Only or V2Only).
fn outbound_session(transport: TransportPolicy) {
    let Some(core) = Bitcoind::start() else { return };
    let (handle, peer, info) = connect_ready_with(config_for(transport), core.p2p);
    assert_eq!(info.peer, peer);
    assert_eq!(info.direction, Direction::Outbound);
    assert_eq!(info.addr, core.p2p);
    let ours = info.local_addr.expect("a connected peer has a local address");
    let theirs = core_peer(&core, ours);
    assert_eq!(theirs["inbound"], true, "{theirs:#}");
    assert_eq!(theirs["connection_type"], "inbound", "{theirs:#}");
    check_session(&info, &theirs, config_for(transport).local_services(), transport);
    assert_eq!(handle.peer_info(peer).expect("reactor running").as_ref(), Some(&info));
}

#[test]
fn outbound_session_v1() {
    outbound_session(TransportPolicy::V1Only);
}

#[test]
fn outbound_session_v2() {
    outbound_session(TransportPolicy::V2Only);
}

/// Core connects to our listener (`addnode ADDR onetry V2`); the listener
/// accepts v1 and v2 (the default policy), and we see the transport Core
/// chose.
fn inbound_session(v2: bool) {
    let Some(core) = Bitcoind::start() else { return };
    let mut config = config();
    config.listen.push(SocketAddr::from(([127, 0, 0, 1], 0)));
    // A listener that accepts v2 (the default policy) announces NODE_P2P_V2
    // (service bit 11) by default, as Core does: Core's automatic outbound
    // connections try v2 only with peers that do. (`addnode ... onetry true`
    // tries v2 whatever we announce.)
    let services = config.local_services();
    assert!(services.has(ServiceFlags::P2P_V2));
    let handle = peerlink::start(config).expect("start listener");
    let ours = handle.local_addrs()[0];
    core.rpc("addnode", json!([ours.to_string(), "onetry", v2]));
    let (peer, info) = wait_ready(&handle, "Core's inbound handshake");
    assert_eq!(info.peer, peer);
    assert_eq!(info.direction, Direction::Inbound);
    assert_eq!(info.addr.ip(), ours.ip());
    assert_eq!(info.local_addr, Some(ours));
    let theirs = core_peer(&core, ours);
    assert_eq!(theirs["inbound"], false, "{theirs:#}");
    assert_eq!(theirs["connection_type"], "manual", "{theirs:#}");
    check_session(&info, &theirs, services, if v2 { TransportPolicy::V2Only } else { TransportPolicy::V1Only });
    assert_eq!(handle.peers().expect("reactor running"), vec![info]);
}

#[test]
fn inbound_session_v1() {
    inbound_session(false);
}

#[test]
fn inbound_session_v2() {
    inbound_session(true);
}

/// `examples/broadcast_tx` puts a segwit spend into Core's mempool.
#[test]
fn broadcast_tx_example_reaches_mempool() {
    let Some(core) = Bitcoind::start() else { return };
    let op_true = witness_script(OP_PUSHNUM_1);
    // Coinbase maturity is 100 blocks: with 101 mined, block 1's coinbase is
    // spendable in the next block, so the mempool takes its spend.
    mine(&core, 101, &p2wsh_address(&op_true));
    let tx = spend_op_true(&block_at(&core, 1).txdata[0], &p2wsh(&witness_script(OP_PUSHNUM_2)));
    let (txid, wtxid) = (tx.compute_txid().to_string(), tx.compute_wtxid().to_string());
    assert_ne!(txid, wtxid, "a segwit spend");
    let hex = bitcoin::consensus::encode::serialize_hex(&tx);
    let peer = core.p2p.to_string();

    let (ok, stdout, stderr) = run_example("broadcast_tx", &["--network", "regtest", "--peer", &peer, &hex]);
    assert!(ok, "broadcast_tx failed:\n{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first().copied(), Some(format!("txid={txid} wtxid={wtxid}").as_str()), "{stdout}");
    let outcome = format!("peer={peer} result=delivered ua=\"/Satoshi:");
    assert!(lines.iter().any(|l| l.starts_with(&outcome) && l.contains(" announced_by=wtxid ")), "{stdout}");
    assert_eq!(lines.last().copied(), Some("delivered=1 not_requested=0 failed=0"), "{stdout}");

    let pool = mempool(&core);
    assert_eq!(pool, vec![txid.clone()], "Core's mempool");

    // Again, to a peer that has it: concluded within Core's request delays,
    // as its own outcome, and not a failure.
    let (ok, stdout, stderr) = run_example("broadcast_tx", &["--network", "regtest", "--peer", &peer, &hex]);
    assert!(ok, "a second broadcast_tx failed:\n{stdout}\n{stderr}");
    let again = format!("peer={peer} result=not-requested ");
    assert!(stdout.lines().any(|l| l.starts_with(&again)), "{stdout}");
    assert_eq!(stdout.lines().last(), Some("delivered=0 not_requested=1 failed=0"), "{stdout}");
    let entry = core.rpc("getmempoolentry", json!([txid]));
    assert_eq!(entry["wtxid"], wtxid, "{entry:#}");
    let fee = entry["fees"]["base"].as_f64().unwrap_or_else(|| panic!("no base fee: {entry:#}"));
    assert_eq!(Amount::from_btc(fee).expect("a valid amount"), Amount::from_sat(FEE_SAT), "{entry:#}");
}

/// `examples/cbf_client` syncs the headers, filter headers and filters of
/// 1,101 blocks from Core and finds every block that involves its scripts:
/// as a coinbase output, and (block 1,101) as the output a transaction spends.
#[test]
fn cbf_client_example_finds_every_match() {
    let Some(core) = Bitcoind::start() else { return };
    let watched_a = p2wsh(&witness_script(OP_PUSHNUM_1));
    let watched_b = p2wsh(&witness_script(OP_PUSHNUM_3));
    let other = p2wsh(&witness_script(OP_PUSHNUM_2));
    let (a, b, o) = (
        p2wsh_address(&witness_script(OP_PUSHNUM_1)),
        p2wsh_address(&witness_script(OP_PUSHNUM_3)),
        p2wsh_address(&witness_script(OP_PUSHNUM_2)),
    );
    let plan: [(&str, u32); 9] =
        [(&o, 400), (&a, 1), (&o, 299), (&a, 50), (&o, 100), (&b, 3), (&o, 147), (&a, 1), (&o, 99)];
    let mut expected = BTreeSet::new();
    let mut height = 0;
    for (address, n) in plan {
        mine(&core, n, address);
        if address != o {
            expected.extend(height + 1..=height + n);
        }
        height += n;
    }
    assert_eq!(height, 1100);
    // Block 401 paid `watched_a`; spend it in block 1,101, which pays `other`.
    let spend = spend_op_true(&block_at(&core, 401).txdata[0], &other);
    let txid = core.rpc("sendrawtransaction", json!([bitcoin::consensus::encode::serialize_hex(&spend)]));
    assert_eq!(txid, spend.compute_txid().to_string());
    mine(&core, 1, &o);
    let tip = 1101;
    let block = block_at(&core, tip);
    assert!(block.txdata.iter().any(|t| t.compute_txid() == spend.compute_txid()), "the spend is in block {tip}");
    assert!(block.txdata[0].output.iter().all(|o| o.script_pubkey != watched_a));
    expected.insert(tip);
    core.sync_filter_index();

    let (peer, scripts) = (core.p2p.to_string(), [watched_a.to_hex_string(), watched_b.to_hex_string()]);
    let args = ["--network", "regtest", "--peer", &peer, "--script", &scripts[0], "--script", &scripts[1]];
    let (ok, stdout, stderr) = run_example("cbf_client", &args);
    assert!(ok, "cbf_client failed:\n{stdout}\n{stderr}");

    let hashes: Vec<BlockHash> = core
        .rpc_batch(&(0..=tip).map(|h| ("getblockhash", json!([h]))).collect::<Vec<_>>())
        .iter()
        .map(parse_block_hash)
        .collect();
    let mut matched = BTreeSet::new();
    for rest in stdout.lines().filter_map(|l| l.strip_prefix("match height=")) {
        let (h, hash) = rest.split_once(" block=").unwrap_or_else(|| panic!("bad match line {rest:?}"));
        let h: usize = h.parse().unwrap_or_else(|e| panic!("bad height in {rest:?}: {e}"));
        assert_eq!(BlockHash::from_str(hash).ok(), hashes.get(h).copied(), "match line {rest:?}");
        assert!(matched.insert(u32::try_from(h).expect("small height")), "height {h} reported twice");
    }
    let missed: Vec<_> = expected.difference(&matched).collect();
    assert!(missed.is_empty(), "blocks that involve our scripts but did not match: {missed:?}\n{stdout}");
    // BIP158 filters have false positives, at a rate of 1/784,931 per
    // queried script and filter: about 0.003 expected here. More than a
    // couple would mean the filters match what they should not.
    let unexpected: Vec<_> = matched.difference(&expected).collect();
    assert!(unexpected.len() <= 2, "blocks that matched without involving our scripts: {unexpected:?}\n{stdout}");
    assert!(stdout.contains(&format!("headers tip={tip} hash={}\n", hashes[tip as usize])), "{stdout}");
    assert!(stdout.contains("\ncheckpoints n=1\n"), "{stdout}");
    assert!(stdout.contains(&format!("\nmatches={}\n", matched.len())), "{stdout}");
    assert_eq!(stdout.lines().last(), Some(format!("synced tip={tip} filters={}", tip + 1).as_str()));
}

/// Header sync and block download of 2,000 blocks through the library.
#[test]
fn header_sync_and_block_download() {
    let Some(core) = Bitcoind::start() else { return };
    let op_true = witness_script(OP_PUSHNUM_1);
    let mined = mine(&core, 2000, &p2wsh_address(&op_true));
    let expected: Vec<BlockHash> = core
        .rpc_batch(&(0..=2000).map(|h| ("getblockhash", json!([h]))).collect::<Vec<_>>())
        .iter()
        .map(parse_block_hash)
        .collect();
    assert_eq!(expected[1..], mined[..], "getblockhash agrees with generatetoaddress");
    let (handle, peer, _) = connect_ready(core.p2p);

    let genesis = bitcoin::constants::genesis_block(bitcoin::Network::Regtest).block_hash();
    let mut hashes = vec![genesis];
    let mut batches = Vec::new();
    loop {
        let tip = *hashes.last().expect("genesis at least");
        let request = GetHeadersMessage::new(vec![tip], BlockHash::all_zeros());
        handle.send(peer, NetworkMessage::GetHeaders(request)).expect("reactor running");
        let batch: Vec<Header> = wait_message(&handle, peer, "headers", |m| match m {
            NetworkMessage::Headers(h) => Some(h.clone()),
            _ => None,
        });
        for header in &batch {
            assert_eq!(header.prev_blockhash, *hashes.last().expect("non-empty"), "header {} links", hashes.len());
            hashes.push(header.validate_pow(header.target()).expect("valid proof of work"));
        }
        batches.push(batch.len());
        if batch.len() < MAX_HEADERS_RESULTS {
            break;
        }
    }
    assert_eq!(batches, vec![2000, 0], "one full batch, then an empty one at the tip");
    assert_eq!(hashes, expected, "synced headers are Core's chain");

    let inventory = hashes[1..].iter().map(|h| Inventory::WitnessBlock(*h)).collect();
    handle.send(peer, NetworkMessage::GetData(inventory)).expect("reactor running");
    for (height, hash) in hashes.iter().enumerate().skip(1) {
        let block = wait_message(&handle, peer, "the requested blocks", |m| match m {
            NetworkMessage::Block(b) => Some(b.clone()),
            NetworkMessage::NotFound(items) => panic!("Core has not found {items:?}"),
            _ => None,
        });
        // Core answers a getdata in order.
        assert_eq!(block.block_hash(), *hash, "block at height {height}");
        assert!(block.check_merkle_root(), "merkle root at height {height}");
        assert!(block.check_witness_commitment(), "witness commitment at height {height}");
        // BIP34: the coinbase starts with the height as Core pushes it,
        // `CScript() << nHeight` (OP_1..OP_16 up to 16, which
        // `Block::bip34_block_height` does not decode).
        let bip34 = Builder::new().push_int(height as i64).into_script();
        let script_sig = &block.txdata[0].input[0].script_sig;
        assert!(script_sig.as_bytes().starts_with(bip34.as_bytes()), "BIP34 height {height}: {script_sig:?}");
        assert_eq!(block.txdata[0].output[0].script_pubkey, p2wsh(&op_true), "coinbase at height {height}");
    }
    let stats = handle.peer_stats(peer).expect("reactor running").expect("still connected");
    let blocks = stats.per_command.iter().find(|c| c.command == "block").expect("block stats");
    assert_eq!(blocks.msgs_in, 2000, "{blocks:?}");
}

/// Receives events until `peer` disconnects; returns the reason and the
/// events about `peer` that came before, messages left out.
fn until_disconnected(handle: &Handle, peer: PeerId, what: &str) -> (DisconnectReason, Vec<Event>) {
    let deadline = Instant::now() + WAIT;
    let mut before = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = handle
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}; before: {before:#?}"));
        match event {
            Event::Disconnected { peer: p, reason } if p == peer => return (reason, before),
            Event::Connected { peer: p, .. }
            | Event::ConnectFailed { peer: p, .. }
            | Event::Ready { peer: p, .. }
            | Event::SendRejected { peer: p, .. }
            | Event::Writable { peer: p }
                if p == peer =>
            {
                before.push(event)
            }
            _ => {}
        }
    }
}

/// Core's `disconnectnode` on our connection: Core closes the socket after
/// reading everything we sent, so we see a clean close (FIN), and Core has
/// forgotten us by then.
#[test]
fn core_disconnectnode_is_peer_closed() {
    let Some(core) = Bitcoind::start() else { return };
    for transport in [TransportPolicy::V1Only, TransportPolicy::V2Only] {
        let mut config = config();
        config.transport = transport;
        let (handle, peer, info) = connect_ready_with(config, core.p2p);
        let ours = info.local_addr.expect("a connected peer has a local address");
        core.rpc("disconnectnode", json!([ours.to_string()]));
        let (reason, before) = until_disconnected(&handle, peer, "Core's disconnectnode");
        assert!(matches!(reason, DisconnectReason::PeerClosed), "{transport}: {reason:?}");
        assert!(before.is_empty(), "{before:?}");
        let peers = core.rpc("getpeerinfo", json!([]));
        assert_eq!(peers, json!([]), "Core dropped us ({transport})");
        assert_eq!(handle.peers().expect("reactor running"), vec![], "{transport}");
    }
}

/// `setban 127.0.0.1 add` disconnects us, and Core then accepts each new
/// TCP connection from us and closes it at once, before reading a byte.
#[test]
fn core_setban_refuses_reconnect() {
    let Some(core) = Bitcoind::start() else { return };
    let mut v1 = config();
    v1.transport = TransportPolicy::V1Only;
    let (handle, peer, _) = connect_ready_with(v1.clone(), core.p2p);
    core.rpc("setban", json!(["127.0.0.1", "add"]));
    let (reason, _) = until_disconnected(&handle, peer, "the disconnect by setban");
    assert!(matches!(reason, DisconnectReason::PeerClosed), "setban: {reason:?}");
    let banned = core.rpc("listbanned", json!([]));
    assert_eq!(banned.as_array().map(|b| b.len()), Some(1), "{banned:#}");
    assert_eq!(banned[0]["address"], "127.0.0.1/32", "{banned:#}");
    assert_eq!(core.rpc("getpeerinfo", json!([])), json!([]));

    // Raw mode over v1 sends nothing on its own, so Core's close is a clean
    // one: TCP connects, then the peer closes, not one message in between.
    let mut raw = v1.clone();
    raw.mode = Mode::Raw;
    let raw = peerlink::start(raw).expect("start raw reactor");
    let again = raw.connect(core.p2p).expect("reactor running");
    let (reason, before) = until_disconnected(&raw, again, "Core closing a banned peer (raw)");
    assert!(matches!(reason, DisconnectReason::PeerClosed), "banned, raw: {reason:?}");
    assert!(
        matches!(before.as_slice(), [Event::Connected { direction: Direction::Outbound, remote, .. }] if *remote == core.p2p),
        "{before:?}"
    );

    // A session sends its version as soon as TCP connects. When it reaches
    // Core before Core closes the socket, closing with unread data makes the
    // kernel answer with a reset instead of a FIN: which of the two arrives
    // is a race on Core's side, and both are typed.
    let again = handle.connect(core.p2p).expect("reactor running");
    let (reason, before) = until_disconnected(&handle, again, "Core closing a banned peer (session)");
    let reset = matches!(&reason, DisconnectReason::Io(e) if e.kind() == std::io::ErrorKind::ConnectionReset);
    assert!(reset || matches!(reason, DisconnectReason::PeerClosed), "banned, session: {reason:?}");
    assert!(before.is_empty(), "no Ready, nothing before the disconnect: {before:?}");

    // The ban, not something else, closed those: lifted, the same reactor
    // gets a session again.
    core.rpc("setban", json!(["127.0.0.1", "remove"]));
    assert_eq!(core.rpc("listbanned", json!([])), json!([]));
    let again = handle.connect(core.p2p).expect("reactor running");
    let (ready, info) = wait_ready(&handle, "a session after the ban is lifted");
    assert_eq!(ready, again);
    assert_eq!(info.transport, Transport::V1);
}
