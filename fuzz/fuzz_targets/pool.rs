//! Fuzzes the outbound pool (`src/discovery/pool.rs`) through an operation
//! sequence: handshakes with any services, failures, disconnections,
//! `addr`/`addrv2` of any entries from held and unknown peers, seed lookup
//! answers and errors, manual peers and time jumps, under any
//! configuration (outbound count, distinct groups, proxy, onion, onlynet,
//! feelers). The input layout and the invariants checked after every step
//! are in `src/discovery/pool/ops.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| peerlink::__fuzz::pool(data));
