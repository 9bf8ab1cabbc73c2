//! # peerlink
//!
//! A low-level, Bitcoin-specialised P2P network client. One reactor thread
//! (mio) owns every socket; you talk to it through a [`Handle`] and exchange
//! [`NetworkMessage`](bitcoin::p2p::message::NetworkMessage) values. You never
//! touch a socket or a byte.
//!
//! ```no_run
//! use bitcoin::p2p::message::NetworkMessage;
//! use peerlink::{Config, Event};
//!
//! let handle = peerlink::start(Config::new(bitcoin::Network::Regtest))?;
//! let peer = handle.connect("127.0.0.1:18444".parse::<std::net::SocketAddr>()?)?;
//! handle.send(peer, NetworkMessage::Ping(42))?;
//! for event in handle.iter() {
//!     if let Event::Message { message: NetworkMessage::Pong(42), .. } = event {
//!         break;
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## One `ping`, through the layers
//!
//! 1. **Handle.** [`Handle::send`] checks the peer's send gate (refusing at
//!    once, with the message handed back, when the peer has no room:
//!    [`Refused`]), then puts `Send { peer, Ping(42) }` on an unbounded
//!    command channel. It wakes the reactor (one `eventfd` write) only if the
//!    reactor said it might be asleep; a busy reactor finds the command on
//!    its next round at no syscall cost.
//! 2. **Link.** The reactor hands the message to the peer's *link*: one
//!    connection as a sans-IO state machine (codec, protocol state, buffers
//!    and one timer table; no socket, no clock). The link holds it while
//!    the peer is not yet announced or its buffer is over
//!    [`Config::send_buffer_limit`], else asks the connection's codec
//!    ([`wire::BitcoinCodec`], here over v1) to encode it straight into the
//!    send buffer: magic, command, length, then the payload, then the
//!    checksum (SHA256d, computed once) patched into the header.
//!    [`Event::Writable`] follows a refusal once the queue drains.
//! 3. **Write.** After applying a batch of commands, the reactor writes what
//!    each dirty link offers (`poll_transmit`) until it is empty, the socket
//!    says `WouldBlock`, or the peer's per-round budget is used, and tells
//!    the link how much went (`advance`). Sockets are registered for read
//!    and write readiness once, so queuing never costs an `epoll_ctl`.
//! 4. **Read.** On the other side the socket's readiness puts the peer on the
//!    read queue. The reactor reads up to 64 KiB into a shared scratch
//!    buffer and gives it to the link, whose codec validates the 24-byte
//!    header (magic, command, length ≤ 4,000,000) before anything is
//!    buffered for the payload. A frame that is not complete is kept in the
//!    link's own buffer, which grows only as bytes arrive.
//! 5. **Decode.** When the frame is complete the checksum is verified and
//!    the payload decoded in place ([`wire::payload`]). The protocol layer
//!    sees it next: in session mode (the default) [`session::Session`]
//!    answers the `ping` itself with a `pong`, which goes back through steps
//!    2–3; in raw mode, or for messages the session does not handle, the
//!    result goes out as [`Event::Message`] on a bounded channel. If the
//!    channel is full, or its messages hold [`Config::event_bytes_limit`]
//!    bytes, the reactor stops reading sockets, and TCP slows the senders,
//!    until [`Handle::recv`] makes room. Any violation disconnects that peer
//!    alone, with a typed [`DisconnectReason`] whose
//!    [`fault`](DisconnectReason::fault) says whether a ban is justified.
//!
//! Over BIP324 v2 (the default when the peer supports it) steps 2 and 5 are
//! the same but for the framing: the message is written as a short message
//! id and payload inside an encrypted packet ([`wire::v2`]), and a packet's
//! length is decrypted and checked before its bytes are buffered. A v2
//! attempt that the peer answers with silence is retried as v1, as Bitcoin
//! Core does ([`wire::BitcoinFactory`]).
//!
//! Through a SOCKS5 proxy ([`Config::proxy`], [`Config::onion_proxy`]) one
//! more sans-IO step comes first: once the TCP connection to the proxy is
//! up, the link runs the [`socks5::Handshake`] (with fresh credentials per
//! connection, so Tor isolates each stream), and only when the proxy has
//! connected to the target does the codec's first byte go out; the bytes
//! after the proxy's reply are the peer's first. [`Handle::connect`] takes
//! a [`Target`]: a socket address, a host name (resolved by the proxy, or
//! without one off the reactor thread) or an onion service.
//!
//! Before an inbound connection gets a link, admission runs at accept: a
//! banned address ([`Handle::ban`]) or one over its per-source cap is
//! closed at once, and with every slot taken ([`Config::max_inbound`]) a
//! peer is evicted by Bitcoin Core's rule ([`DisconnectReason::Evicted`]).
//! The worst-case memory per peer and in total is in the README; an
//! optional [`Config::memory_budget`] caps the buffers of all peers
//! together.
//!
//! Finding peers is an optional layer above the reactor, which stays free
//! of policy ([`discovery`]): DNS seeds looked up off the reactor thread
//! (or reached through the proxy), an address book bucketed as Bitcoin
//! Core's addrman, and an outbound pool that keeps N peers with the
//! services you need. Its `addr` messages and handshakes reach it as the
//! same events you receive ([`discovery::Pooled`]), and
//! [`broadcast::to_network`] uses it to broadcast without a single address
//! given.
//!
//! Every timer of a connection (connect, stall, frame, transport handshake,
//! session deadlines, linger) sits in its link's one timer table; the
//! reactor only sleeps until the earliest deadline of any link.
//!
//! The codec, session and link layers are sans-IO, and the reactor is
//! generic over the codec ([`codec::Codec`], [`codec::Factory`],
//! [`start_with_codec`]) and over the types it reports ([`Stack`]: the
//! default [`Bitcoin`], or [`Framed`] for any codec in raw mode).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod ban;
pub mod broadcast;
pub mod codec;
pub mod config;
pub mod discovery;
pub mod error;
pub mod event;
pub mod handle;
pub mod netgroup;
pub mod peer;
mod protocol;
mod reactor;
mod rng;
pub mod session;
#[cfg(feature = "socks")]
pub mod socks5;
// Without the feature no proxy can be configured: the handshake is never run.
#[cfg(not(feature = "socks"))]
#[allow(dead_code, unreachable_pub)]
mod socks5;
pub mod stack;
pub mod target;
mod types;
pub mod wire;

pub use config::Config;
pub use error::StartError;
pub use error::{RecvTimeoutError, TryRecvError};
pub use event::{ConnectError, Direction, DisconnectReason, Event, Fault, PeerId, Relayed, SendError};
pub use handle::{Disconnect, Handle, ReactorGone, ReactorStats, Refusal, Refused};
pub use peer::{PeerInfo, PeerStats};
pub use reactor::start_with_codec;
pub use session::{Mode, SessionConfig, SessionError};
pub use stack::{Bitcoin, Framed, LinkInfo, Stack};
pub use target::{Target, TargetError};

/// Entry points for the fuzz targets, built only by `cargo fuzz` (which
/// passes `--cfg fuzzing`). Not part of the API.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod __fuzz {
    /// Runs the deterministic simulation of connection pairs (real links of
    /// both sides over an in-memory network, with injected faults) that
    /// `data` describes, and checks every pair's outcome: panics if one is
    /// wrong, or if the simulated world hangs.
    pub fn simulate(data: &[u8]) {
        crate::reactor::sim::fuzz(data);
    }

    /// Runs the outbound pool on the operation sequence `data` decodes to
    /// (events, lookups, ticks, manual peers) and checks its invariants
    /// after every step: panics if one breaks.
    pub fn pool(data: &[u8]) {
        crate::discovery::pool::ops::run(data);
    }
}

/// Starts a reactor that speaks the Bitcoin wire format on `config.magic`'s
/// network, in `config.mode` (session mode by default).
pub fn start(config: Config) -> Result<Handle, StartError> {
    let factory = wire::BitcoinFactory::new(config.magic, config.transport, config.max_message_len);
    let mode = config.mode;
    let session = config.session_config();
    let seed = rng::Rng::from_os().u64();
    reactor::spawn(config, factory, move |shared| protocol::Bitcoin::new(mode, session, shared.clone(), seed))
}
