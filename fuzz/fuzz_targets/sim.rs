//! Fuzzes the whole connection logic through the deterministic simulation
//! (`src/reactor/sim.rs`): real `Link`s of both sides, outbound and
//! inbound, in raw and session mode, over an in-memory network, stepped as
//! the reactor steps them (read, user sends, write, timers, close).
//!
//! Input layout: the first byte picks the number of connection pairs
//! (`1 + byte % 8`); every later byte feeds the simulation's draws, in
//! order, as few bytes a draw as it needs: each pair's protocol, codec
//! policies (v1, v2, v2-preferred, the v1 fallback), SOCKS5 proxy, pipe
//! sizes and latency, send buffers, in-flight caps, message schedule,
//! ending (flushed close, drop by FIN or RST, corrupt frame, unreachable
//! server) or injected I/O fault (connect, accept, read, write) and benign
//! faults; then every step's clock advance, read and write sizes, service
//! order and user pauses. Past the input's end the draws come from a PRNG
//! seeded with a hash of the input, so the run is deterministic.
//!
//! Checks: no panic, no hang (every pair ends within 900 s of simulated
//! time), and the simulation's checks for each pair: one terminal event per
//! link with the reason its story implies (the injected error itself for
//! the link that met it), nothing after it, messages in order and a prefix
//! of what was sent, handed-back messages the tail of what was accepted,
//! everything delivered on a flushed close, `Writable` after every refusal.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| peerlink::__fuzz::simulate(data));
