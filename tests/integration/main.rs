//! Loopback integration tests: one binary, ephemeral ports only, and no
//! sleeps used as synchronisation (waits are bounded by a timeout that only
//! matters when the test fails).

#[path = "../support/addr_server.rs"]
mod addr_server;
mod admission;
mod asynchronous;
mod cbf;
mod common;
mod crawl;
mod example_args;
#[path = "../../examples/common/mod.rs"]
mod example_common;
mod examples;
#[path = "../support/filter_server.rs"]
mod filter_server;
mod generic_codec;
mod hostile;
mod memory;
mod pool;
#[cfg(feature = "socks")]
mod proxy;
mod reactor;
mod regressions;
mod session;
#[path = "../support/socks_server.rs"]
mod socks_server;
mod socks_server_check;
mod v2;

/// Session mode with a test user agent.
pub fn session_test_config() -> peerlink::Config {
    let mut config = peerlink::Config::new(common::NET);
    config.session.user_agent_name = Some("test".into());
    config
}
