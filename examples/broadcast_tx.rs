//! Broadcasts one transaction with the one-shot API and leaves.
//!
//! ```text
//! cargo run --example broadcast_tx -- --network NET [--peer PEER ... | [--seed HOST[:PORT] ...] [--peers N] [--book FILE]]
//!     [--timeout SECS] [--proxy [USER:PASS@]HOST:PORT] [--onion-proxy [USER:PASS@]HOST:PORT] TX_HEX
//! ```
//!
//! Each `PEER` is `IP:PORT`, `[IPV6]:PORT`, `HOST:PORT` or `NAME.onion:PORT`.
//! Without `--peer` the transaction goes to `N` peers (default 4) that an
//! outbound pool finds (`peerlink::broadcast::to_network_with`): from the
//! `--seed`s (each `HOST[:PORT]`, looked up or, with `--proxy`, reached
//! through the proxy), else the network's DNS seeds, else its fixed seeds.
//! Each peer line then says how the peer was found: `found=seed seed=HOST`,
//! `found=book` (from the address book: `--book FILE`, kept from an earlier
//! run, or learned from another peer's `addr`) or `found=fixed`. With
//! `--book`, the book is read first (a damaged file is an error, and is
//! left alone) and saved after the run with what it learned.
//! `--proxy` sends every connection through a SOCKS5 proxy (Bitcoin Core's
//! `-proxy`), which then also resolves host names: nothing connects
//! directly, the v2-to-v1 fallback retry included. `--onion-proxy` is the
//! proxy for onion peers (Core's `-onion`, falling back to `--proxy`).
//! Without `USER:PASS@` each connection gets fresh credentials, so Tor puts
//! every peer on a circuit of its own. A peer line names its proxy's address
//! (`proxy=ADDR`), never the credentials.
//!
//! Prints the txid, then one line per peer with its outcome: `delivered` (the
//! peer fetched the transaction and confirmed processing it),
//! `not-requested` (it processed the announcement but did not ask for the
//! transaction within Bitcoin Core's request delays: it may already have it,
//! as after a second broadcast of the same transaction) or `failed` (with the
//! reason, e.g. `reason=could not connect: proxy 127.0.0.1:9050: connection
//! to the proxy failed: ...`). Exits 0 when at least one peer was
//! `delivered` or `not-requested`, 1 otherwise.

mod common;

use peerlink::Target;
use std::process::ExitCode;
use std::time::Duration;

use bitcoin::Transaction;
use bitcoin::consensus::encode::deserialize_hex;
use peerlink::Config;
use peerlink::broadcast::DeliveryKind;
use peerlink::error::Report;

const USAGE: &str = "usage: broadcast_tx --network main|test|testnet4|signet|regtest [--peer PEER ... | [--seed HOST[:PORT] ...] [--peers N] [--book FILE]] [--timeout SECS] [--proxy [USER:PASS@]HOST:PORT] [--onion-proxy [USER:PASS@]HOST:PORT] TX_HEX
  PEER is IP:PORT, [IPV6]:PORT, HOST:PORT or NAME.onion:PORT
  without --peer, N peers (default 4) are found through the seeds (--seed, else the network's DNS seeds, else its fixed seeds)";

struct Args {
    network: bitcoin::Network,
    peers: Vec<Target>,
    seeds: Vec<String>,
    count: Option<usize>,
    book: Option<std::path::PathBuf>,
    proxies: common::Proxies,
    timeout: Duration,
    tx: Transaction,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut network = None;
    let mut peers = Vec::new();
    let mut seeds = Vec::new();
    let mut count = None;
    let mut book = None;
    let mut proxies = common::Proxies::default();
    let mut timeout = Duration::from_secs(30);
    let mut tx = None;
    while let Some(arg) = args.next() {
        if proxies.take(&arg, &mut args)? {
            continue;
        }
        match arg.as_str() {
            "--network" => network = Some(common::network(&common::value(&mut args, "--network")?)?),
            "--peer" => {
                let v = common::value(&mut args, "--peer")?;
                peers.push(common::target("--peer address", &v)?);
            }
            "--seed" => seeds.push(common::seed(&common::value(&mut args, "--seed")?)?),
            "--book" => book = Some(std::path::PathBuf::from(common::value(&mut args, "--book")?)),
            "--peers" => {
                let v = common::value(&mut args, "--peers")?;
                let n: usize = v.parse().map_err(|_| format!("bad --peers value {v:?}"))?;
                if n == 0 {
                    return Err("--peers must be at least 1".into());
                }
                count = Some(n);
            }
            "--timeout" => {
                let v = common::value(&mut args, "--timeout")?;
                let secs: u64 = v.parse().map_err(|_| format!("bad --timeout value {v:?}"))?;
                timeout = Duration::from_secs(secs);
            }
            "-h" | "--help" => return Err("help requested".into()),
            s if s.starts_with("--") => return Err(format!("unknown option {s:?}")),
            s if tx.is_none() => {
                tx = Some(
                    deserialize_hex::<Transaction>(s)
                        .map_err(|e| format!("TX_HEX is not a transaction: {}", Report(&e)))?,
                )
            }
            s => return Err(format!("unexpected argument {s:?}")),
        }
    }
    let network = network.ok_or("--network is required")?;
    if !peers.is_empty() && (!seeds.is_empty() || count.is_some() || book.is_some()) {
        return Err("--peer excludes --seed, --peers and --book".into());
    }
    let no_seeds = seeds.is_empty() && peerlink::discovery::seeds::dns_seeds(network).is_empty();
    if peers.is_empty() && no_seeds && book.is_none() {
        return Err(format!("{network} has no DNS seeds: give --peer, --seed or --book"));
    }
    Ok(Args { network, peers, seeds, count, book, proxies, timeout, tx: tx.ok_or("TX_HEX is required")? })
}

fn main() -> ExitCode {
    let args = match common::args(parse, USAGE) {
        Ok(a) => a,
        Err(code) => return code,
    };
    println!("txid={} wtxid={}", args.tx.compute_txid(), args.tx.compute_wtxid());
    let mut config = Config::new(args.network);
    config.session.user_agent_name = Some("broadcast_tx".into());
    config.session.relay = false;
    args.proxies.apply(&mut config);
    let result = if args.peers.is_empty() {
        let pool = common::pool_config(args.network, &args.seeds);
        let count = args.count.unwrap_or(4);
        let book = match args.book.as_deref().map(common::load_book).transpose() {
            Ok(book) => book,
            Err(e) => {
                println!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        match book {
            Some(book) => {
                let path = args.book.as_deref().expect("a book comes from a path");
                peerlink::broadcast::to_network_from(config, pool, book, &args.tx, count, args.timeout).map(
                    |(outcomes, book)| {
                        if let Err(e) = common::save_book(path, &book) {
                            println!("error: {e}");
                        }
                        outcomes
                    },
                )
            }
            None => peerlink::broadcast::to_network_with(config, pool, &args.tx, count, args.timeout),
        }
    } else {
        peerlink::broadcast::broadcast(config, &args.tx, &args.peers, args.timeout)
    };
    let outcomes = match result {
        Ok(o) => o,
        Err(e) => {
            println!("error: {}", Report(&e));
            return ExitCode::FAILURE;
        }
    };
    let (mut sent, mut not_requested) = (0, 0);
    for outcome in &outcomes {
        match &outcome.result {
            Ok(d) => {
                let result = match d.kind {
                    DeliveryKind::Sent => {
                        sent += 1;
                        "delivered"
                    }
                    _ => {
                        not_requested += 1;
                        "not-requested note=\"the peer may already have it\""
                    }
                };
                println!(
                    "peer={}{}{} result={result} ua={:?} announced_by={} elapsed={:.3}s",
                    outcome.target,
                    args.proxies.describe(&outcome.target),
                    found(outcome),
                    d.user_agent,
                    if d.by_wtxid { "wtxid" } else { "txid" },
                    d.elapsed.as_secs_f64()
                );
            }
            Err(e) => println!(
                "peer={}{}{} result=failed reason={}",
                outcome.target,
                args.proxies.describe(&outcome.target),
                found(outcome),
                Report(e)
            ),
        }
    }
    let failed = outcomes.len() - sent - not_requested;
    println!("delivered={sent} not_requested={not_requested} failed={failed}");
    if sent + not_requested > 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// ` found=...` for a peer the pool found, nothing for a given one.
fn found(outcome: &peerlink::broadcast::Outcome) -> String {
    outcome.origin.as_ref().map_or_else(String::new, |o| format!(" {}", common::found(o)))
}
