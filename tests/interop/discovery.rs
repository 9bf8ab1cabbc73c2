//! Finding peers among real nodes: seeds resolved by an injected resolver
//! to a Bitcoin Core node (`BITCOIND_EXE`) and a bcoin node, the pool's
//! handshakes with both, and `broadcast_tx` with no `--peer` into Core's
//! mempool.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peerlink::discovery::seeds::{ResolveError, Resolver};
use peerlink::discovery::{Origin, PeerKind, PoolConfig, Pooled};
use peerlink::{Event, RecvTimeoutError};

use crate::bcoin::Bcoin;
use crate::bitcoind::Bitcoind;
use crate::common::{block_at, mempool, mine, run_example};

/// Answers one seed name (with any service prefix) and records the names.
struct OneSeed {
    name: &'static str,
    answer: Vec<SocketAddr>,
    asked: Mutex<Vec<String>>,
}

impl Resolver for OneSeed {
    fn resolve(&self, host: &str, _port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
        self.asked.lock().unwrap().push(host.to_string());
        if host == self.name || host.ends_with(&format!(".{}", self.name)) {
            Ok(self.answer.clone())
        } else {
            Err(ResolveError::no_address(host))
        }
    }
}

#[test]
fn a_pool_seeded_by_an_injected_resolver_holds_core_and_bcoin() {
    let Some(core) = Bitcoind::start() else { return };
    let bcoin = Bcoin::start();
    let resolver =
        Arc::new(OneSeed { name: "seed.interop.test", answer: vec![core.p2p, bcoin.p2p], asked: Mutex::default() });
    let mut pool = PoolConfig::new(bitcoin::Network::Regtest);
    pool.outbound = 2;
    pool.dns_seeds = vec!["seed.interop.test".into()];
    pool.resolver = resolver.clone();
    // Both nodes are on 127.0.0.1: one network group.
    pool.distinct_groups = false;
    let mut net = Pooled::start(crate::common::config(), pool).unwrap();
    let mut agents: HashMap<SocketAddr, String> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while net.pool().ready_count() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "not both ready: {:?} {:?}", net.peers(), net.pool().stats());
        match net.recv_timeout(left) {
            Ok(Event::Ready { info, .. }) => {
                let ua = info.version.map(|v| v.user_agent).unwrap_or_default();
                agents.insert(info.target.socket_addr().expect("an address"), ua);
            }
            Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
    eprintln!("pool peers: {agents:?}");
    assert!(agents[&core.p2p].starts_with("/Satoshi:"), "{agents:?}");
    assert!(agents[&bcoin.p2p].starts_with("/bcoin:"), "{agents:?}");
    let peers = net.peers();
    assert!(
        peers.iter().all(|p| p.kind == PeerKind::Outbound && p.origin == Origin::Seed("seed.interop.test".into())),
        "{peers:?}"
    );
    assert_eq!(resolver.asked.lock().unwrap().clone(), vec!["x9.seed.interop.test".to_string()]);
    // Both were asked for addresses (each answers from an empty book).
    assert_eq!(net.pool().book().tried_len(), 2, "both promoted to tried");
}

/// `broadcast_tx` with `--seed` and no `--peer`: the pool finds Core, the
/// transaction reaches its mempool, and the line says how it was found.
#[test]
fn broadcast_tx_without_a_peer_reaches_cores_mempool() {
    let Some(core) = Bitcoind::start() else { return };
    use crate::core::{p2wsh, p2wsh_address, spend_op_true, witness_script};
    use bitcoin::opcodes::all::{OP_PUSHNUM_1, OP_PUSHNUM_2};
    // As in `core::broadcast_tx_example_reaches_mempool`: block 1's coinbase
    // is spendable once 101 blocks are mined.
    mine(&core, 101, &p2wsh_address(&witness_script(OP_PUSHNUM_1)));
    let tx = spend_op_true(&block_at(&core, 1).txdata[0], &p2wsh(&witness_script(OP_PUSHNUM_2)));
    let hex = bitcoin::consensus::encode::serialize_hex(&tx);
    let seed = core.p2p.to_string();
    let (ok, stdout, stderr) =
        run_example("broadcast_tx", &["--network", "regtest", "--seed", &seed, "--peers", "1", &hex]);
    assert!(ok, "broadcast_tx failed:\n{stdout}\n{stderr}");
    let line = format!("peer={seed} found=seed seed={seed} result=delivered ua=\"/Satoshi:");
    assert!(stdout.lines().any(|l| l.starts_with(&line)), "{stdout}");
    assert_eq!(stdout.lines().last(), Some("delivered=1 not_requested=0 failed=0"), "{stdout}");
    assert_eq!(mempool(&core), vec![tx.compute_txid().to_string()]);
}
