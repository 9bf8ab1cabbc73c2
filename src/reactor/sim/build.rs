//! Building a world: each pair's protocol, codecs, pipes, schedules and
//! ending, drawn from the seed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::p2p::message::NetworkMessage;

use super::super::link::Limits;
use super::super::shared::Shared;
use super::fault::{CONNECT_KINDS, Fault};
use super::net::{PipeParams, SimProxy};
use super::pair::{Ending, Pair, Run};
use super::side::{SideConfig, new_side};
use super::{FIRST_SERVER_ID, Rng, Who, Wire, approx_size, inv, ms, ping, tag, tx};
use crate::protocol::{Bitcoin, Passthrough};
use crate::session::{Mode, SessionConfig};
use crate::wire::{BitcoinCodec, TransportPolicy};

/// Percent of pairs that end by an injected fault.
const FAULT_PERCENT: u64 = 15;
/// Percent of pairs whose pipes return benign faults.
const FLAKY_PERCENT: u64 = 15;
/// Percent of direct pairs whose client dials a name with two addresses,
/// the first of which fails.
const MOVES_ON_PERCENT: u64 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Profile {
    /// Tiny reads and writes, small messages.
    Trickle,
    Normal,
    /// One side sends large transactions through a small send buffer.
    Bulk,
}

/// A user's messages: sorted times in the first 2.5 s, tagged, up to
/// `budget` bytes. Pings only in raw mode (the session answers them).
pub(super) fn schedule(
    rng: &mut Rng,
    index: usize,
    who: Who,
    raw: bool,
    big: bool,
    budget: usize,
    t0: Instant,
) -> (VecDeque<(Instant, NetworkMessage)>, u32) {
    let count = rng.range(0, 30) as u32;
    let mut spent = 0;
    let mut messages = Vec::new();
    for seq in 0..count {
        let tag = tag(index, who, seq);
        let message = if big && rng.chance(25) {
            tx(tag, rng.size(6_000, 25_000))
        } else if raw && rng.chance(40) {
            ping(tag)
        } else if rng.chance(25) {
            tx(tag, rng.size(100, 2_000))
        } else {
            inv(tag, rng.size(1, 20))
        };
        spent += approx_size(&message);
        if spent > budget {
            break;
        }
        messages.push(message);
    }
    let mut times: Vec<u64> = messages.iter().map(|_| rng.range(0, 2_500)).collect();
    times.sort_unstable();
    let next_seq = messages.len() as u32 + 1;
    (times.into_iter().map(|t| t0 + ms(t)).zip(messages).collect(), next_seq)
}

/// A new pair, in raw or session mode; `drawn`: its story and codecs are
/// drawn rather than given by its index.
pub(super) fn new_pair(index: usize, rng: &mut Rng, t0: Instant, shared: &Arc<Shared>, drawn: bool) -> Box<dyn Run> {
    let session = rng.chance(40);
    if session {
        let seed = rng.next();
        let proto = move || {
            let config = SessionConfig { handshake_timeout: Duration::from_secs(30), ..SessionConfig::default() };
            Bitcoin::new(Mode::Session, config, Arc::clone(shared), seed)
        };
        Box::new(build(index, rng, t0, false, drawn, proto))
    } else {
        Box::new(build(index, rng, t0, true, drawn, Passthrough::<BitcoinCodec>::new))
    }
}

fn build<P: Wire>(index: usize, rng: &mut Rng, t0: Instant, raw: bool, drawn: bool, proto: impl Fn() -> P) -> Pair<P> {
    // By the index, every seed has every story (and 1 in 20 pairs an
    // unreachable server) with most codec pairs.
    let (story, policy) = match drawn {
        true => (rng.size(0, 19), rng.size(0, POLICIES.len() - 1)),
        false => (index % 20, index / 2 + rng.size(0, 1)),
    };
    let unreachable = story == 9;
    let mut policies = POLICIES[policy % POLICIES.len()];
    let fallback = policies == (TransportPolicy::V2Preferred, TransportPolicy::V1Only);
    if (raw && policies == (TransportPolicy::V1Only, TransportPolicy::V2Preferred)) || (unreachable && fallback) {
        policies = (TransportPolicy::V2Preferred, TransportPolicy::V2Preferred);
    }
    let fallback = policies == (TransportPolicy::V2Preferred, TransportPolicy::V1Only);
    let profile = match rng.range(0, 9) {
        0 => Profile::Trickle,
        2..=4 => Profile::Bulk,
        _ => Profile::Normal,
    };
    let mut pipe_params = pipe_params(profile, rng);
    let sides = Sides {
        index,
        raw,
        profile,
        bulk: if rng.chance(50) { Who::Client } else { Who::Server },
        both_bulk: rng.chance(50),
        t0,
    };
    let client = new_side(Who::Client, proto(), sides.config(Who::Client, policies.0, rng), t0);
    let server = new_side(Who::Server, proto(), sides.config(Who::Server, policies.1, rng), t0);
    let at = t0 + ms(rng.range(200, 4_000));
    let mut ending = ending(story, at, fallback, rng);
    // Drawn last, so the other parameters of each seed stay as they were.
    let proxy = rng.chance(30).then(|| SimProxy { password: rng.chance(50) });
    // Some pairs end by an injected fault instead; some meet benign ones.
    if !unreachable && rng.chance(FAULT_PERCENT) {
        ending = Ending::Fault { fault: Fault::draw(rng, policies.0, proxy.is_some(), fallback), at };
    }
    if rng.chance(FLAKY_PERCENT) {
        pipe_params.flaky = rng.range(2, 20);
    }
    let moves_on = (proxy.is_none() && !unreachable && rng.chance(MOVES_ON_PERCENT)).then(|| rng.pick(&CONNECT_KINDS));
    let mut pair = Pair {
        index,
        proxy,
        label: String::new(),
        client,
        server,
        conns: Vec::new(),
        pipe_params,
        pending_connect: (!unreachable).then(|| t0 + ms(rng.range(0, 300))),
        ending,
        fired: false,
        fallback,
        expect_v1: policies.0 == TransportPolicy::V1Only || policies.1 == TransportPolicy::V1Only,
        next_server_id: FIRST_SERVER_ID,
        retries: 0,
        corrupt_tag: None,
        closing_tag: None,
        reset_on_close: None,
        moves_on,
        moved_on: false,
        t0,
        trace: Vec::new(),
    };
    pair.label = label(&pair, raw, policies, profile);
    pair.start(rng);
    pair
}

/// How the pair's story ends, by `story` (0 to 19; 9 is an unreachable
/// server).
fn ending(story: usize, at: Instant, fallback: bool, rng: &mut Rng) -> Ending {
    let who = if rng.chance(50) { Who::Client } else { Who::Server };
    match story % 10 {
        _ if story == 9 => Ending::Unreachable,
        0 | 6 => Ending::Flush { who: Who::Client, at, early: !fallback && rng.chance(50) },
        1 | 7 => Ending::Flush { who: Who::Server, at, early: false },
        2 | 8 => Ending::Drop { who, at, rst: false },
        3 => Ending::Drop { who, at, rst: true },
        4 => Ending::Corrupt { who: Who::Client, at },
        5 => Ending::Corrupt { who: Who::Server, at },
        _ => Ending::Corrupt { who, at },
    }
}

/// What a failure message says about the pair's configuration.
fn label<P: Wire>(pair: &Pair<P>, raw: bool, policies: (TransportPolicy, TransportPolicy), profile: Profile) -> String {
    let (c, s) = (&pair.client, &pair.server);
    let ending = match pair.ending {
        Ending::Flush { who, at, early } => format!("{who:?} flushes at {:?} (early {early})", at - pair.t0),
        Ending::Drop { who, at, rst } => format!("{who:?} drops at {:?} (rst {rst})", at - pair.t0),
        Ending::Corrupt { who, at } => format!("{who:?} corrupts at {:?}", at - pair.t0),
        Ending::Unreachable => "unreachable".to_string(),
        Ending::Fault { fault, at } => format!("{fault:?} at {:?}", at - pair.t0),
    };
    format!(
        "{} {}->{}{}{} {profile:?} pipe {:?} limits {}/{} in-flight {}/{} ending {ending}",
        if raw { "raw" } else { "session" },
        policies.0,
        policies.1,
        match pair.proxy {
            Some(SimProxy { password: true }) => " via proxy (password)",
            Some(SimProxy { password: false }) => " via proxy",
            None => "",
        },
        pair.moves_on.map(|kind| format!(" (first address fails: {kind:?})")).unwrap_or_default(),
        pair.pipe_params,
        c.env.limits.send_buffer,
        s.env.limits.send_buffer,
        c.max_in_flight,
        s.max_in_flight,
    )
}

/// The pipes of a pair's connections, by its profile.
fn pipe_params(profile: Profile, rng: &mut Rng) -> PipeParams {
    let (write_max, read_max, capacity) = match profile {
        // Small enough to split every frame, large enough that the BIP324
        // handshake (up to 4 kB of garbage each way) beats its timeout.
        Profile::Trickle => (rng.size(16, 256), rng.size(64, 512), rng.size(256, 4_096)),
        Profile::Normal => (rng.size(500, 16_384), rng.size(500, 16_384), rng.size(2_048, 65_536)),
        Profile::Bulk => (rng.size(8_192, 65_536), rng.size(8_192, 65_536), rng.size(16_384, 131_072)),
    };
    PipeParams { capacity, write_max, read_max, latency_ms: rng.range(0, 30), jitter_ms: rng.range(0, 10), flaky: 0 }
}

/// What the two sides of a pair share when their configurations are drawn.
struct Sides {
    index: usize,
    raw: bool,
    profile: Profile,
    /// The side that sends large transactions in a bulk pair.
    bulk: Who,
    /// Sometimes both sides go over their send buffers at once: decoding
    /// pauses on both, reading goes on, and neither may stall the other.
    both_bulk: bool,
    t0: Instant,
}

impl Sides {
    fn config(&self, who: Who, policy: TransportPolicy, rng: &mut Rng) -> SideConfig {
        let big = self.profile == Profile::Bulk && (self.both_bulk || who == self.bulk);
        let send_buffer = if big { rng.pick(&[3_000, 8_000, 20_000]) } else { rng.pick(&[20_000, 100_000, 1_000_000]) };
        let budget = match self.profile {
            Profile::Bulk if big => 50_000,
            Profile::Trickle => 2_000,
            _ => (send_buffer / 4).min(30_000),
        };
        let (schedule, next_seq) = schedule(rng, self.index, who, self.raw, big, budget, self.t0);
        SideConfig {
            policy,
            limits: Limits::distinct_timeouts(send_buffer),
            max_in_flight: rng.pick(&[2, 3, 8, 1024]),
            schedule,
            next_seq,
        }
    }
}

const POLICIES: [(TransportPolicy, TransportPolicy); 7] = [
    (TransportPolicy::V1Only, TransportPolicy::V1Only),
    (TransportPolicy::V2Only, TransportPolicy::V2Only),
    (TransportPolicy::V2Preferred, TransportPolicy::V2Preferred),
    (TransportPolicy::V2Preferred, TransportPolicy::V1Only),
    (TransportPolicy::V2Preferred, TransportPolicy::V2Only),
    (TransportPolicy::V2Only, TransportPolicy::V2Preferred),
    // A v1 server-side detection needs `version` first: session mode only.
    (TransportPolicy::V1Only, TransportPolicy::V2Preferred),
];
