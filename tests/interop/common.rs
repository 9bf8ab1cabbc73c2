//! Helpers shared by the interop tests: a JSON-RPC client over HTTP, keys
//! and bcoin regtest addresses, mining, fetching blocks, signing a legacy
//! spend, waiting for events, running the examples.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::str::FromStr;
use std::time::{Duration, Instant};

use bitcoin::hashes::Hash as _;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::script::{Builder, PushBytesBuf};
use bitcoin::secp256k1::{Message, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{
    Amount, Block, BlockHash, OutPoint, PubkeyHash, PublicKey, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness,
    absolute, transaction,
};
use peerlink::{Config, Event, Handle, PeerId, PeerInfo};
use serde_json::{Value, json};

/// Upper bound for one wait on the reactor; only reached when a test fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// bcoin's regtest P2PKH base58 prefix (`regtest.addressPrefix.pubkeyhash`
/// in bcoin's lib/protocol/networks.js). Bitcoin Core uses 0x6f.
pub const BCOIN_REGTEST_P2PKH_PREFIX: u8 = 0x3c;

/// Fee paid by the test transactions, in satoshis (far above bcoin's
/// 1,000 sat/kvB minimum relay fee for a ~190-byte transaction).
pub const FEE_SAT: u64 = 10_000;

/// A node with a JSON-RPC interface (bcoin, Bitcoin Core). The helpers below
/// use only RPCs the two share.
pub trait Rpc {
    /// Calls `method` and returns its result, or the error as a string.
    fn try_rpc(&self, method: &str, params: Value) -> Result<Value, String>;

    /// Calls `method`; panics on any error.
    fn rpc(&self, method: &str, params: Value) -> Value {
        self.try_rpc(method, params).unwrap_or_else(|e| panic!("RPC: {e}"))
    }
}

/// POSTs the JSON `body` to the HTTP server at `addr`, with an
/// `Authorization` header if given, and returns the JSON it answers
/// (whatever the HTTP status: JSON-RPC 1.0 servers answer errors with 500
/// and a JSON body). One connection per call (`Connection: close`).
pub fn post_json(
    addr: SocketAddr,
    authorization: Option<&str>,
    body: &Value,
    timeout: Duration,
) -> Result<Value, String> {
    let body = body.to_string();
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect to {addr}: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let authorization = authorization.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\n{authorization}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(|e| format!("send request: {e}"))?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(|e| format!("read response: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("malformed HTTP response: {text:?}"))?;
    let status = head.lines().next().unwrap_or_default();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Err(format!("unexpected chunked response: {head}"));
    }
    serde_json::from_str(body).map_err(|e| format!("{status}: body is not JSON ({e}): {body:?}"))
}

/// The result of one JSON-RPC reply to `method`, or its error object as a
/// string.
pub fn rpc_result(method: &str, reply: &Value) -> Result<Value, String> {
    match &reply["error"] {
        Value::Null => Ok(reply["result"].clone()),
        error => Err(format!("{method} failed: {error}")),
    }
}

/// A regtest config in session mode.
pub fn config() -> Config {
    Config::new(bitcoin::Network::Regtest)
}

/// A key pair and its bcoin regtest P2PKH address.
pub struct Wallet {
    secret: SecretKey,
    /// The compressed public key.
    pub public: PublicKey,
    /// `OP_DUP OP_HASH160 <hash> OP_EQUALVERIFY OP_CHECKSIG`.
    pub script: ScriptBuf,
    /// The base58check address bcoin accepts on regtest (starts with `R`).
    pub address: String,
}

impl Wallet {
    /// A wallet from a fixed secret: `[byte; 32]` (byte must be nonzero).
    pub fn fixed(byte: u8) -> Wallet {
        let secp = Secp256k1::signing_only();
        let secret = SecretKey::from_slice(&[byte; 32]).expect("a repeated nonzero byte is a valid secret key");
        let public = PublicKey::new(secret.public_key(&secp));
        let hash: PubkeyHash = public.pubkey_hash();
        let mut payload = vec![BCOIN_REGTEST_P2PKH_PREFIX];
        payload.extend_from_slice(hash.as_byte_array());
        let address = bitcoin::base58::encode_check(&payload);
        Wallet { secret, public, script: ScriptBuf::new_p2pkh(&hash), address }
    }

    /// Spends `prev.output[vout]` (which pays to this wallet) to `to`, minus
    /// [`FEE_SAT`], signed with SIGHASH_ALL.
    pub fn spend(&self, prev: &Transaction, vout: u32, to: &ScriptBuf) -> Transaction {
        let prev_out = &prev.output[vout as usize];
        assert_eq!(prev_out.script_pubkey, self.script, "the output being spent does not pay to this wallet");
        let mut tx = Transaction {
            version: transaction::Version::ONE,
            lock_time: absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint { txid: prev.compute_txid(), vout },
                script_sig: ScriptBuf::new(),
                sequence: Sequence::MAX,
                witness: Witness::new(),
            }],
            output: vec![TxOut {
                value: prev_out.value.checked_sub(Amount::from_sat(FEE_SAT)).expect("output covers the fee"),
                script_pubkey: to.clone(),
            }],
        };
        let sighash = SighashCache::new(&tx)
            .legacy_signature_hash(0, &self.script, EcdsaSighashType::All.to_u32())
            .expect("input 0 exists");
        let secp = Secp256k1::signing_only();
        let signature = bitcoin::ecdsa::Signature {
            signature: secp.sign_ecdsa(&Message::from_digest(sighash.to_byte_array()), &self.secret),
            sighash_type: EcdsaSighashType::All,
        };
        let sig = PushBytesBuf::try_from(signature.to_vec()).expect("a DER signature is at most 73 bytes");
        tx.input[0].script_sig = Builder::new().push_slice(sig).push_key(&self.public).into_script();
        tx
    }
}

/// Mines `n` blocks paying to `address`; returns their hashes in order.
pub fn mine(node: &impl Rpc, n: u32, address: &str) -> Vec<BlockHash> {
    let hashes = node.rpc("generatetoaddress", json!([n, address]));
    let hashes = hashes.as_array().unwrap_or_else(|| panic!("generatetoaddress returned {hashes}"));
    assert_eq!(hashes.len(), n as usize, "generatetoaddress mined a different number of blocks");
    hashes.iter().map(parse_block_hash).collect()
}

/// A block hash from an RPC string value (display byte order).
pub fn parse_block_hash(value: &serde_json::Value) -> BlockHash {
    let s = value.as_str().unwrap_or_else(|| panic!("expected a block hash string, got {value}"));
    BlockHash::from_str(s).unwrap_or_else(|e| panic!("bad block hash {s:?}: {e}"))
}

/// The block at `height` of the node's best chain, fetched raw over RPC.
pub fn block_at(node: &impl Rpc, height: u32) -> Block {
    let hash = node.rpc("getblockhash", json!([height]));
    let hex = node.rpc("getblock", json!([hash, false]));
    let hex = hex.as_str().unwrap_or_else(|| panic!("getblock verbose=false returned {hex}"));
    bitcoin::consensus::encode::deserialize_hex(hex).unwrap_or_else(|e| panic!("cannot decode block {hash}: {e}"))
}

/// The transaction ids in the node's mempool.
pub fn mempool(node: &impl Rpc) -> Vec<String> {
    let pool = node.rpc("getrawmempool", json!([]));
    let ids = pool.as_array().unwrap_or_else(|| panic!("getrawmempool returned {pool}"));
    ids.iter().map(|v| v.as_str().expect("txid string").to_owned()).collect()
}

/// Receives events until `pick` returns `Some`. Fails after [`WAIT`], listing
/// the events that were skipped.
pub fn wait_for<T>(handle: &Handle, what: &str, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    let mut skipped = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(event) = handle.recv_timeout(left) else {
            panic!("timed out after {WAIT:?} waiting for {what}; events seen meanwhile: {skipped:#?}");
        };
        if let Some(t) = pick(&event) {
            return t;
        }
        skipped.push(format!("{event:?}"));
    }
}

/// Waits for `Ready` from any peer; fails fast if a peer disconnects or an
/// outbound connection fails first.
pub fn wait_ready(handle: &Handle, what: &str) -> (PeerId, PeerInfo) {
    wait_for(handle, what, |event| match event {
        Event::Ready { peer, info } => Some((*peer, (**info).clone())),
        Event::ConnectFailed { target, error, .. } => panic!("{what}: connecting to {target} failed: {error}"),
        Event::Disconnected { peer, reason } => panic!("{what}: peer {peer} disconnected: {reason}"),
        _ => None,
    })
}

/// Starts a session-mode reactor, connects to `addr` and waits for `Ready`.
pub fn connect_ready(addr: SocketAddr) -> (Handle, PeerId, PeerInfo) {
    connect_ready_with(config(), addr)
}

/// [`connect_ready`] with the given config.
pub fn connect_ready_with(config: Config, addr: SocketAddr) -> (Handle, PeerId, PeerInfo) {
    let handle = peerlink::start(config).expect("start reactor");
    let peer = handle.connect(addr).expect("reactor running");
    let (ready, info) = wait_ready(&handle, &format!("the handshake with {addr}"));
    assert_eq!(ready, peer, "Ready for an unexpected peer");
    (handle, peer, info)
}

/// Waits for a message from `peer` that `pick` accepts; fails fast if the
/// peer disconnects.
pub fn wait_message<T>(
    handle: &Handle,
    peer: PeerId,
    what: &str,
    mut pick: impl FnMut(&NetworkMessage) -> Option<T>,
) -> T {
    wait_for(handle, what, |event| match event {
        Event::Message { peer: p, message, .. } if *p == peer => pick(message),
        Event::Disconnected { peer: p, reason } if *p == peer => {
            panic!("{what}: peer {peer} disconnected: {reason}")
        }
        _ => None,
    })
}

/// `cargo run --quiet --example NAME -- ARGS` in this package; returns
/// (success, stdout, stderr).
pub fn run_example(name: &str, args: &[&str]) -> (bool, String, String) {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let output = Command::new(env!("CARGO"))
        .args(["run", "--quiet", "--manifest-path", manifest, "--example", name, "--"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    eprintln!("example {name} ({}):\n--- stdout\n{stdout}--- stderr\n{stderr}", output.status);
    (output.status.success(), stdout, stderr)
}
