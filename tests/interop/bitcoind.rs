//! A Bitcoin Core node (regtest, loopback only) as a child process, and a
//! JSON-RPC client for it.
//!
//! The binary is named by `BITCOIND_EXE` (the convention of the rust-bitcoin
//! ecosystem's `corepc-node`), so anyone with their own Bitcoin Core can run
//! the tests. When it is unset the Core tests say so on stderr, past the test
//! harness's output capture, and return; with `PEERLINK_REQUIRE_BITCOIND=1`
//! (`.ci/run` sets it) they fail instead. A binary that is named but does not
//! start is always a failure.
//!
//! RPC is JSON over HTTP with std's `TcpStream` ([`post_json`]) and the
//! cookie Core writes into its datadir, rather than `bitcoin-cli`: one binary
//! to find instead of two (a user's `BITCOIND_EXE` need not have a
//! `bitcoin-cli` beside it), no process per call, and batches of calls in one
//! request.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{Rpc, post_json, rpc_result};

/// Names the `bitcoind` binary.
pub const EXE_VAR: &str = "BITCOIND_EXE";

/// `1` turns a missing `BITCOIND_EXE` into a failure.
pub const REQUIRE_VAR: &str = "PEERLINK_REQUIRE_BITCOIND";

/// How to run the Core tests with the project's prebuilt Bitcoin Core, from
/// the repository's root.
pub const HOW_TO_RUN: &str =
    "BITCOIND_EXE=../shared/bitcoin-core/bin/bitcoind cargo test --all-features --test interop core";

/// Time allowed for the node to start. Only reached when something is broken.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Time allowed for one JSON-RPC call (mining 2,000 regtest blocks takes a
/// few seconds).
const RPC_TIMEOUT: Duration = Duration::from_secs(120);

/// Lines of the node's output quoted when it fails to start.
const LOG_TAIL_LINES: usize = 60;

/// Attempts to start a node when the ports we picked were taken meanwhile
/// (between closing our probe listener and Core binding them).
const START_ATTEMPTS: usize = 3;

/// Console lines that end Core's start-up: RPC is out of its warm-up
/// (`Done loading` comes after `SetRPCWarmupFinished`) and the block filter
/// index is in sync with the chain (genesis only), so that it indexes every
/// block as it connects.
const READY_LINES: [&str; 2] = ["init message: Done loading", "basic block filter index is enabled"];

/// Console lines of a start-up that failed because a port was taken.
const PORT_TAKEN_LINES: [&str; 2] = ["Unable to bind", "Unable to start HTTP server"];

/// The command line of a regtest node that touches loopback only
/// (../shared/bitcoin-core/README.md), logging to the console so that start-up
/// can be followed without polling, with the network category on for
/// failure diagnostics.
fn node_args(datadir: &Path, p2p: u16, rpc: u16) -> Vec<String> {
    let mut args: Vec<String> = [
        "-regtest",
        "-daemon=0",
        "-printtoconsole=1",
        "-debug=net",
        "-listen=1",
        "-discover=0",
        "-dnsseed=0",
        "-fixedseeds=0",
        "-connect=0",
        "-listenonion=0",
        "-natpmp=0",
        "-i2pacceptincoming=0",
        "-rpcbind=127.0.0.1",
        "-rpcallowip=127.0.0.1",
        "-blockfilterindex=1",
        "-peerblockfilters=1",
        "-v2transport=1",
        "-persistmempool=0",
    ]
    .map(String::from)
    .into();
    args.push(format!("-datadir={}", datadir.display()));
    args.push(format!("-bind=127.0.0.1:{p2p}"));
    args.push(format!("-port={p2p}"));
    args.push(format!("-rpcport={rpc}"));
    args
}

/// `BITCOIND_EXE`, or `None` after saying on stderr that `test` did not run.
/// Panics instead when `PEERLINK_REQUIRE_BITCOIND=1`.
fn exe(test: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(EXE_VAR).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    if std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1") {
        panic!("{REQUIRE_VAR}=1 but {EXE_VAR} is not set: cannot run {test} against Bitcoin Core. Run: {HOW_TO_RUN}");
    }
    // Straight to the process's stderr: `eprintln!` output of a passing test
    // is captured and never shown.
    static BANNER: Once = Once::new();
    let mut stderr = std::io::stderr().lock();
    BANNER.call_once(|| {
        let _ = writeln!(
            stderr,
            "\n*** The Bitcoin Core interop tests DID NOT RUN: {EXE_VAR} is not set.\n\
             *** Run them from the repository's root with:\n***     {HOW_TO_RUN}\n\
             *** (.ci/run sets {EXE_VAR} and {REQUIRE_VAR}=1, which makes a missing node a failure.)\n"
        );
    });
    let _ = writeln!(stderr, "*** not run (no {EXE_VAR}): {test}");
    None
}

/// Two distinct free loopback ports: bound to port 0, read, closed.
fn free_ports() -> (u16, u16) {
    let bind = || TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a loopback port");
    let (a, b) = (bind(), bind());
    let port = |l: &TcpListener| l.local_addr().expect("bound listener has an address").port();
    (port(&a), port(&b))
}

/// A fresh, empty directory for one node.
fn fresh_datadir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("peerlink-bitcoind-{}-{n}", std::process::id()));
    // A leftover of an earlier process with the same pid.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// RFC 4648 base64 with padding, for the HTTP Basic `Authorization` header.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The last [`LOG_TAIL_LINES`] lines of the node's stdout and stderr.
type LogTail = Arc<Mutex<VecDeque<String>>>;

/// Forwards each line of `pipe` to the test's (captured) stderr, the log
/// tail and, until start-up is over, `lines`.
fn forward(pipe: impl Read + Send + 'static, tail: LogTail, lines: Sender<String>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            eprintln!("bitcoind: {line}");
            {
                let mut tail = tail.lock().expect("log tail lock");
                if tail.len() == LOG_TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line.clone());
            }
            let _ = lines.send(line);
        }
    })
}

/// A running Bitcoin Core node on a fresh regtest chain. Dropping it kills
/// the process (also when the test panics) and deletes its datadir.
pub struct Bitcoind {
    child: Child,
    datadir: PathBuf,
    /// The node's P2P listener.
    pub p2p: SocketAddr,
    /// The node's JSON-RPC server.
    pub rpc: SocketAddr,
    /// `Basic <base64 of the cookie>`.
    authorization: String,
    tail: LogTail,
}

impl Bitcoind {
    /// Starts a node and waits until its RPC answers and its P2P port
    /// listens. `None` when `BITCOIND_EXE` is unset (see the module docs):
    /// the message names the calling test (its thread's name).
    pub fn start() -> Option<Bitcoind> {
        let test = std::thread::current().name().unwrap_or("a Bitcoin Core test").to_owned();
        let exe = exe(&test)?;
        for attempt in 1..=START_ATTEMPTS {
            match Bitcoind::try_start(&exe) {
                Ok(node) => return Some(node),
                Err(log) if attempt < START_ATTEMPTS => {
                    eprintln!("bitcoind could not bind its ports (attempt {attempt}), retrying:\n{log}");
                }
                Err(log) => panic!("bitcoind could not bind its ports {START_ATTEMPTS} times:\n{log}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// One start. `Err` (with the log) only when a port we picked was taken.
    fn try_start(exe: &Path) -> Result<Bitcoind, String> {
        let datadir = fresh_datadir();
        let (p2p, rpc) = free_ports();
        let mut child = Command::new(exe)
            .args(node_args(&datadir, p2p, rpc))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                let _ = std::fs::remove_dir_all(&datadir);
                panic!("cannot run {EXE_VAR}={} ({e}); run the Core tests with: {HOW_TO_RUN}", exe.display())
            });
        let tail: LogTail = Arc::default();
        let (lines_tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let readers =
            [forward(stdout, Arc::clone(&tail), lines_tx.clone()), forward(stderr, Arc::clone(&tail), lines_tx)];
        let mut node = Bitcoind {
            child,
            datadir,
            p2p: SocketAddr::from((Ipv4Addr::LOCALHOST, p2p)),
            rpc: SocketAddr::from((Ipv4Addr::LOCALHOST, rpc)),
            authorization: String::new(),
            tail,
        };

        let deadline = Instant::now() + READY_TIMEOUT;
        let mut seen = [false; READY_LINES.len()];
        while !seen.iter().all(|s| *s) {
            let why = match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    for (s, needle) in seen.iter_mut().zip(READY_LINES) {
                        *s |= line.contains(needle);
                    }
                    continue;
                }
                Err(RecvTimeoutError::Timeout) => format!("not ready after {READY_TIMEOUT:?}"),
                Err(RecvTimeoutError::Disconnected) => "exited during start-up".to_owned(),
            };
            // Stop it and let the readers reach EOF, so the log is complete.
            let status = node.child.try_wait().ok().flatten();
            let _ = node.child.kill();
            let _ = node.child.wait();
            for reader in readers {
                let _ = reader.join();
            }
            let log = node.log_tail();
            if PORT_TAKEN_LINES.iter().any(|needle| log.contains(needle)) {
                return Err(log);
            }
            panic!(
                "{EXE_VAR}={} {why} (exit status {status:?}); a missing libevent is installed with \
                 `apt-get install -y libevent-2.1-7 libevent-extra-2.1-7 libevent-pthreads-2.1-7`. \
                 Last lines of its output:\n{log}",
                exe.display()
            );
        }

        let cookie_path = node.datadir.join("regtest").join(".cookie");
        let cookie = std::fs::read(&cookie_path)
            .unwrap_or_else(|e| panic!("cannot read the RPC cookie {}: {e}", cookie_path.display()));
        node.authorization = format!("Basic {}", base64(cookie.trim_ascii()));
        let chain = node.rpc("getblockchaininfo", json!([]));
        assert_eq!(chain["chain"], "regtest", "{chain}");
        assert_eq!(chain["blocks"], 0, "a fresh node has only the genesis block: {chain}");
        Ok(node)
    }

    fn log_tail(&self) -> String {
        let tail = self.tail.lock().expect("log tail lock");
        tail.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
    }

    /// Calls every `(method, params)` in one JSON-RPC batch; returns their
    /// results in order. Panics on any error.
    pub fn rpc_batch(&self, calls: &[(&str, Value)]) -> Vec<Value> {
        let requests: Vec<Value> = calls
            .iter()
            .enumerate()
            .map(|(id, (method, params))| json!({ "jsonrpc": "1.0", "id": id, "method": method, "params": params }))
            .collect();
        let replies = post_json(self.rpc, Some(&self.authorization), &Value::Array(requests), RPC_TIMEOUT)
            .unwrap_or_else(|e| panic!("bitcoind RPC batch: {e}"));
        let replies = replies.as_array().unwrap_or_else(|| panic!("a batch is answered with an array: {replies}"));
        assert_eq!(replies.len(), calls.len(), "one reply per call");
        let mut results = vec![Value::Null; calls.len()];
        for reply in replies {
            let id = reply["id"].as_u64().and_then(|id| usize::try_from(id).ok());
            let id = id.filter(|id| *id < calls.len()).unwrap_or_else(|| panic!("reply with a bad id: {reply}"));
            results[id] = rpc_result(calls[id].0, reply).unwrap_or_else(|e| panic!("bitcoind RPC: {e}"));
        }
        results
    }

    /// Returns once the basic block filter index has indexed the whole active
    /// chain: it indexes each block in a validation-interface callback, and
    /// `syncwithvalidationinterfacequeue` waits for the callbacks queued so
    /// far.
    pub fn sync_filter_index(&self) {
        self.rpc("syncwithvalidationinterfacequeue", json!([]));
        let height = self.rpc("getblockcount", json!([]));
        let info = self.rpc("getindexinfo", json!(["basic block filter index"]));
        let index = &info["basic block filter index"];
        assert_eq!(index["synced"], true, "{info}");
        assert_eq!(index["best_block_height"], height, "{info}");
    }
}

impl Rpc for Bitcoind {
    fn try_rpc(&self, method: &str, params: Value) -> Result<Value, String> {
        let request = json!({ "jsonrpc": "1.0", "id": 0, "method": method, "params": params });
        let reply = post_json(self.rpc, Some(&self.authorization), &request, RPC_TIMEOUT)
            .map_err(|e| format!("{method}: {e}"))?;
        rpc_result(method, &reply)
    }
}

impl Drop for Bitcoind {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.datadir);
    }
}

#[test]
fn base64_matches_rfc4648_vectors() {
    for (input, output) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64(input.as_bytes()), output, "base64({input:?})");
    }
}
