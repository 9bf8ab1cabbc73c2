//! Deterministic simulation of many connections, without sockets.
//!
//! Each seed builds dozens of connection pairs: an outbound [`Link`] on a
//! client side and an inbound one on a server side, each side with its own
//! protocol (raw [`Passthrough`] or the Bitcoin session), events, limits and
//! codec [`Factory`]. They talk through an in-memory network: per direction
//! a pipe with a random capacity (so writes are partial), random write and
//! read sizes, latency, FIN and RST. One simulated clock drives everything,
//! and timers fire as the reactor fires them (`handle_timeout` once
//! `poll_timeout() <= now`). Reads, writes and closes follow `reactor/mod.rs`
//! (`read`, `write`, `close`) step by step, with a user that sends like
//! `Handle::send` (refused while the gate is closed, resumed on `Writable`).
//!
//! Every pair ends one way: a flushed close by either side, a drop (FIN or
//! RST), a corrupt frame injected by a misbehaving sender, an unreachable
//! server, or (15% of pairs) an injected I/O error: a failed connect, a
//! server that cannot take the accepted connection, a read or a write that
//! fails (or a write that returns 0), with the other side seeing the socket
//! closed or reset. Another 15% of pairs meet benign faults (`Interrupted`
//! reads and writes, reads that find nothing), and 10% of direct clients
//! dial a name whose first address fails (the link moves on to the next):
//! both must change nothing.
//! Writes are partial (random sizes, random pipe capacities), and reads
//! are attempted every round whether or not bytes are there (spurious
//! readiness: `WouldBlock`). v1, v2 and v2-preferred codecs are mixed,
//! including v2-preferred clients of v1-only servers (the v1 fallback). At
//! the end every pair is checked: messages arrived in order, none lost
//! unless the connection broke (and then a prefix), one terminal event per
//! link with the reason the scenario implies (the injected error itself
//! for the link that met it), nothing after it.
//!
//! Layout: [`net`] (pipes, the proxy), [`side`] (links, events, the user,
//! reads and writes as the reactor does them), [`pair`] (stepping a pair and
//! its ending), [`fault`] (injected faults), [`build`] (drawing a world from
//! the seed), [`check`].
//!
//! Replay: `PEERLINK_SIM_SEED=<n> cargo test --lib sim` runs one seed (the
//! seed is printed on failure). `PEERLINK_SIM_SEEDS=<count>` runs that many
//! seeds from 1, and `PEERLINK_SIM_RANDOM=1` adds one seed from the clock;
//! without either the fixed seeds run, so CI stays deterministic.
//!
//! Fuzzing: `cargo fuzz` builds this module too (`--cfg fuzzing`), and the
//! `sim` target runs `fuzz`: a world of 1 to 8 pairs whose every draw
//! comes from the input.

mod build;
mod check;
mod fault;
mod net;
mod pair;
mod side;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::hashes::Hash;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_blockdata::Inventory;
use bitcoin::{Amount, BlockHash, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid, Witness};

use self::build::new_pair;
use self::pair::{Run, Summary};
use super::shared::{Budget, Gate, Shared};
use crate::protocol::Protocol;
use crate::stack::Stack;
use crate::types::PeerId;
use crate::wire::WireError;

/// Connection pairs per seed.
#[cfg(test)]
const PAIRS: usize = 40;
/// Seeds run by default.
#[cfg(test)]
const SEEDS: [u64; 8] = [1, 2, 3, 4, 5, 0x5eed, 0xdead_beef, 20_240_601];
/// Most pairs in a fuzzed world.
#[cfg(fuzzing)]
const FUZZ_PAIRS: u8 = 8;
/// A seed that has not finished after this much simulated time has hung.
const MAX_SIM_TIME: Duration = Duration::from_secs(900);
/// The client's id; server links count up from `FIRST_SERVER_ID`.
const CLIENT_ID: PeerId = PeerId(1);
const FIRST_SERVER_ID: u64 = 100;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A protocol whose stack speaks the built-in codec's types.
trait Wire: Protocol<Stack: Stack<Message = NetworkMessage, CodecError = WireError>> {}
impl<P: Protocol<Stack: Stack<Message = NetworkMessage, CodecError = WireError>>> Wire for P {}

/// A send gate with its own budget.
fn gate(max_in_flight: usize) -> Gate {
    Gate::with_budget(max_in_flight, Arc::new(Budget::new(usize::MAX)))
}

/// splitmix64: small, fast, and the whole state is the seed. A fuzzed
/// world draws from its input (the tape) first, as few bytes a draw as its
/// span needs, then from splitmix64 seeded with a hash of the input.
struct Rng {
    state: u64,
    tape: Vec<u8>,
    pos: usize,
}

impl Rng {
    #[cfg(test)]
    fn new(seed: u64) -> Rng {
        Rng { state: seed, tape: Vec::new(), pos: 0 }
    }

    #[cfg(fuzzing)]
    fn from_tape(tape: &[u8]) -> Rng {
        // FNV-1a.
        let state =
            tape.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3));
        Rng { state, tape: tape.to_vec(), pos: 0 }
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..span` (from splitmix64; from the tape, modulo
    /// `span`, while it lasts).
    fn below(&mut self, span: u64) -> u64 {
        let len = match span {
            0..=0x100 => 1,
            0x101..=0x1_0000 => 2,
            _ => 8,
        };
        match self.tape.get(self.pos..self.pos + len) {
            Some(bytes) => {
                self.pos += len;
                let mut le = [0u8; 8];
                le[..len].copy_from_slice(bytes);
                u64::from_le_bytes(le) % span
            }
            None => self.next() % span,
        }
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn size(&mut self, lo: usize, hi: usize) -> usize {
        self.range(lo as u64, hi as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    fn bytes32(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for chunk in out.chunks_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes());
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Client,
    Server,
}

impl Who {
    fn other(self) -> Who {
        match self {
            Who::Client => Who::Server,
            Who::Server => Who::Client,
        }
    }
}

fn tag(pair: usize, who: Who, seq: u32) -> u64 {
    (pair as u64) << 40 | u64::from(who == Who::Server) << 32 | u64::from(seq)
}

fn hash_of(tag: u64, salt: u64) -> [u8; 32] {
    let mut hash = [0u8; 32];
    hash[..8].copy_from_slice(&tag.to_le_bytes());
    hash[8..16].copy_from_slice(&salt.to_le_bytes());
    hash
}

fn ping(tag: u64) -> NetworkMessage {
    NetworkMessage::Ping(tag)
}

fn inv(tag: u64, entries: usize) -> NetworkMessage {
    let inventory =
        (0..entries as u64).map(|i| Inventory::Block(BlockHash::from_byte_array(hash_of(tag, i)))).collect();
    NetworkMessage::Inv(inventory)
}

fn tag_of(message: &NetworkMessage) -> Option<u64> {
    let first8 = |b: &[u8]| u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
    match message {
        NetworkMessage::Ping(tag) => Some(*tag),
        NetworkMessage::Inv(inventory) => match inventory.first()? {
            Inventory::Block(hash) => Some(first8(hash.as_byte_array())),
            _ => None,
        },
        NetworkMessage::Tx(tx) => Some(first8(tx.input.first()?.previous_output.txid.as_byte_array())),
        _ => None,
    }
}

/// A transaction tagged in its first input's txid (its first 8 bytes, the
/// rest zero), with a `script_len`-byte output script: the simulation's
/// messages, and the link tests'.
pub(super) fn tx(tag: u64, script_len: usize) -> NetworkMessage {
    let mut prev = [0u8; 32];
    prev[..8].copy_from_slice(&tag.to_le_bytes());
    NetworkMessage::Tx(Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint { txid: Txid::from_byte_array(prev), vout: 0 },
            script_sig: ScriptBuf::new(),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: vec![TxOut {
            value: Amount::from_sat(1),
            script_pubkey: ScriptBuf::from_bytes(vec![0x6a; script_len]),
        }],
    })
}

/// Rough v1 size of a message, for byte budgets.
fn approx_size(message: &NetworkMessage) -> usize {
    match message {
        NetworkMessage::Ping(_) => 32,
        NetworkMessage::Inv(inventory) => 25 + 36 * inventory.len(),
        NetworkMessage::Tx(tx) => 100 + tx.output.iter().map(|o| o.script_pubkey.len()).sum::<usize>(),
        _ => 100,
    }
}

/// Prints how to replay a failed seed.
#[cfg(test)]
struct Replay(u64);

#[cfg(test)]
impl Drop for Replay {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("simulation failed; replay with PEERLINK_SIM_SEED={} cargo test --lib sim", self.0);
        }
    }
}

/// Builds `pairs` pairs (their stories drawn, or by their index so that a
/// seed has every kind), runs them to their ends and checks each. Panics
/// with the pair's trace if a check fails or the world hangs.
fn world(rng: &mut Rng, pairs: usize, drawn: bool) -> (Summary, u64, Duration) {
    let poll = mio::Poll::new().expect("poll");
    let waker = mio::Waker::new(poll.registry(), mio::Token(0)).expect("waker");
    let shared = Arc::new(Shared::new(waker, 0, 64, 4096));
    let t0 = Instant::now();
    let mut pairs: Vec<Box<dyn Run>> = (0..pairs).map(|i| new_pair(i, rng, t0, &shared, drawn)).collect();
    let mut now = t0;
    let mut steps = 0u64;
    while pairs.iter().any(|p| !p.done()) {
        if now - t0 > MAX_SIM_TIME {
            let stuck: Vec<String> = pairs.iter().filter(|p| !p.done()).map(|p| p.describe()).collect();
            panic!("not finished after {MAX_SIM_TIME:?}:\n{}", stuck.join("\n"));
        }
        now += match rng.range(0, 99) {
            0..=69 => ms(rng.range(0, 5)),
            70..=94 => ms(rng.range(5, 50)),
            _ => ms(rng.range(50, 1_500)),
        };
        for pair in pairs.iter_mut().filter(|p| !p.done()) {
            pair.step(now, rng);
        }
        steps += 1;
    }
    let mut total = Summary::default();
    for pair in &pairs {
        pair.check();
        total += pair.summary();
    }
    (total, steps, now - t0)
}

#[cfg(test)]
fn run(seed: u64) -> Summary {
    let _replay = Replay(seed);
    let (total, steps, elapsed) = world(&mut Rng::new(seed), PAIRS, false);
    println!("seed {seed}: {steps} steps, {elapsed:?} simulated, {total:?}");
    total
}

/// Runs the world a fuzz input describes: its first byte says how many
/// pairs (1 to 8), the rest feeds every draw (each pair's protocol, codecs,
/// pipes, schedules, ending or fault, then every step's sizes, orders and
/// pauses). Panics if the world breaks one of the simulation's checks.
#[cfg(fuzzing)]
pub(crate) fn fuzz(data: &[u8]) {
    let Some((&first, tape)) = data.split_first() else { return };
    let pairs = 1 + usize::from(first % FUZZ_PAIRS);
    world(&mut Rng::from_tape(tape), pairs, true);
}

#[cfg(test)]
fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(value.parse().unwrap_or_else(|_| panic!("{name} must be a number, got {value:?}")))
}

#[test]
fn simulation() {
    if let Some(seed) = env_u64("PEERLINK_SIM_SEED") {
        run(seed);
        return;
    }
    let mut seeds: Vec<u64> = match env_u64("PEERLINK_SIM_SEEDS") {
        Some(count) => (1..=count).collect(),
        None => SEEDS.to_vec(),
    };
    if std::env::var_os("PEERLINK_SIM_RANDOM").is_some() {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        seeds.push(nanos as u64);
    }
    let mut total = Summary::default();
    for seed in seeds {
        total += run(seed);
    }
    // The seeds exercised what the simulation is for.
    assert!(total.messages > 1_000, "{total:?}");
    assert!(total.refusals > 0 && total.writables > 0, "no back-pressure: {total:?}");
    assert!(total.retries > 0, "no v1 fallback: {total:?}");
    assert!(total.codec_errors > 0, "no misbehaving peer: {total:?}");
    assert!(total.faults.iter().all(|n| *n > 0), "not every kind of fault: {total:?}");
    assert!(total.flukes > 0, "no benign faults: {total:?}");
    assert!(total.moved_on > 0, "no client moved on to a next address: {total:?}");
}
