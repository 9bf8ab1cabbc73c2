//! A bcoin 1.0.2 full node (regtest, in memory, loopback only) as a child
//! process, and a JSON-RPC client for it.
//!
//! The node is `interop/bcoin/node.js`. Missing Node.js or npm is a test
//! failure, never a skip.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::Value;

use crate::common::{Rpc, post_json, rpc_result};

/// Time allowed for the node to start and print its ready line. Only reached
/// when something is broken.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Time allowed for one JSON-RPC call (mining a few hundred regtest blocks in
/// JavaScript takes a few seconds).
const RPC_TIMEOUT: Duration = Duration::from_secs(120);

/// Lines of the node's stderr quoted when it fails to start.
const STDERR_TAIL_LINES: usize = 40;

/// `interop/bcoin` in the source tree.
pub fn bcoin_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop").join("bcoin")
}

/// Runs `npm ci` in `interop/bcoin` unless bcoin is installed already.
/// Concurrent installers are serialised: threads of this binary by a mutex,
/// other processes by an advisory lock on `interop/bcoin/.install.lock`
/// (blocking, released when the file closes, even if the holder dies).
fn ensure_installed() {
    static INSTALL: Mutex<()> = Mutex::new(());
    let dir = bcoin_dir();
    let installed = || dir.join("node_modules").join("bcoin").join("package.json").is_file();
    if installed() {
        return;
    }
    let _in_process = INSTALL.lock().unwrap_or_else(PoisonError::into_inner);
    if installed() {
        return;
    }
    let lock_path = dir.join(".install.lock");
    let lock =
        std::fs::File::create(&lock_path).unwrap_or_else(|e| panic!("cannot create {}: {e}", lock_path.display()));
    lock.lock().unwrap_or_else(|e| panic!("cannot lock {}: {e}", lock_path.display()));
    if installed() {
        return;
    }
    let subcommand = if dir.join("package-lock.json").is_file() { "ci" } else { "install" };
    eprintln!("interop: running `npm {subcommand}` in {}", dir.display());
    let output = Command::new("npm")
        .args([subcommand, "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run npm ({e}): the interop tests need Node.js (20 or newer) and npm on PATH \
                 to install bcoin into {}",
                dir.display()
            )
        });
    assert!(
        output.status.success(),
        "`npm {subcommand}` in {} failed ({}):\n{}\n{}",
        dir.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(installed(), "`npm {subcommand}` succeeded but node_modules/bcoin is missing");
}

/// A running bcoin node. Dropping it kills the process.
pub struct Bcoin {
    child: Child,
    /// Kept open: the node exits when its stdin closes.
    stdin: Option<ChildStdin>,
    /// The node's P2P listener.
    pub p2p: SocketAddr,
    /// The node's HTTP JSON-RPC server.
    pub http: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Bcoin {
    /// Starts a fresh node (empty regtest chain, OS-chosen ports) and waits
    /// until it listens.
    pub fn start() -> Bcoin {
        ensure_installed();
        let dir = bcoin_dir();
        let mut child = Command::new("node")
            .arg(dir.join("node.js"))
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run `node` ({e}): the interop tests need Node.js (20 or newer) on PATH")
            });
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");

        // Keep the node's log; forward it to the test's (captured) output.
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = Arc::clone(&log);
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("bcoin: {line}");
                log2.lock().expect("stderr log lock").push(line);
            }
        });

        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = ready_tx.send(line);
            }
            // Drain anything else so the node never blocks on a full pipe.
            for _ in lines {}
        });

        let mut node = Bcoin {
            child,
            stdin,
            p2p: SocketAddr::from(([127, 0, 0, 1], 0)),
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr: log,
        };
        let line = match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => line,
            Err(e) => {
                // Stop the node and let the stderr reader reach EOF, so the
                // log below is complete.
                let status = node.child.try_wait().ok().flatten();
                let _ = node.child.kill();
                let _ = node.child.wait();
                let _ = stderr_reader.join();
                panic!(
                    "bcoin did not become ready ({e}; exit status {status:?}). Last lines of its log:\n{}",
                    node.stderr_tail()
                );
            }
        };
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("bcoin's ready line is not JSON ({e}): {line:?}\n{}", node.stderr_tail()));
        let port = |key: &str| -> u16 {
            let n = ready[key].as_u64().unwrap_or_else(|| panic!("bcoin's ready line lacks {key:?}: {line}"));
            u16::try_from(n).expect("port fits in u16")
        };
        assert_eq!(ready["ready"], Value::Bool(true), "unexpected ready line: {line}");
        node.p2p = SocketAddr::from(([127, 0, 0, 1], port("p2p")));
        node.http = SocketAddr::from(([127, 0, 0, 1], port("http")));
        node
    }

    fn stderr_tail(&self) -> String {
        let log = self.stderr.lock().expect("stderr log lock");
        let start = log.len().saturating_sub(STDERR_TAIL_LINES);
        log[start..].join("\n")
    }
}

impl Rpc for Bcoin {
    /// Calls `method` over JSON-RPC and returns its result, or the error
    /// object as a string.
    fn try_rpc(&self, method: &str, params: Value) -> Result<Value, String> {
        let request = serde_json::json!({ "jsonrpc": "1.0", "id": 1, "method": method, "params": params });
        let reply = post_json(self.http, None, &request, RPC_TIMEOUT).map_err(|e| format!("{method}: {e}"))?;
        rpc_result(method, &reply)
    }
}

impl Drop for Bcoin {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
