//! Finding peers: DNS seeds, an address book that resists eclipse attacks,
//! and an outbound pool.
//!
//! This layer is optional and sits on top of the reactor, which stays free
//! of policy. Its parts are sans-IO like the rest of the crate:
//! - [`seeds`]: Bitcoin Core's DNS seeds and fixed seeds for each network,
//!   and the [`Resolver`](seeds::Resolver) trait that looks names up off the
//!   reactor thread;
//! - [`addrbook`]: the address book, bucketed as Bitcoin Core's addrman;
//! - [`pool`]: the outbound pool, a state machine fed with the reactor's
//!   events that keeps N peers with the services you need.

pub mod addrbook;
mod driver;
pub mod pool;
pub mod seeds;

pub use driver::{Pooled, unix_now};
pub use pool::{Origin, PeerKind, Pool, PoolConfig, PoolPeer};
