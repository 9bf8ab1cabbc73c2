//! Loopback integration tests: one binary, ephemeral ports only, and no
//! sleeps used as synchronisation (waits are bounded by a timeout that only
//! matters when the test fails).

mod asynchronous;
mod common;
mod generic_codec;
mod hostile;
mod reactor;
mod regressions;
mod session;
