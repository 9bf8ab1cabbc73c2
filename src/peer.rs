//! Peer information and statistics, answered by the reactor on demand.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::codec::Transport;
use crate::session::{Features, PeerVersion};
use crate::types::{Direction, PeerId};

/// What we know about a connected peer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerInfo {
    /// The peer's id.
    pub peer: PeerId,
    /// The other end of the TCP connection: the peer's address, or, for a
    /// peer reached through a proxy, the proxy's (see `proxy`).
    pub addr: SocketAddr,
    /// What was dialled, as given to [`Handle::connect`](crate::Handle::connect)
    /// (a name stays a name); for an inbound peer, its address.
    pub target: crate::Target,
    /// The SOCKS5 proxy the connection goes through, if any.
    pub proxy: Option<SocketAddr>,
    /// Our end of the connection.
    pub local_addr: Option<SocketAddr>,
    /// Who opened the connection.
    pub direction: Direction,
    /// The transport in use (and, for BIP324, the session id).
    pub transport: Transport,
    /// The peer's `version` details, once it sent one (session mode always
    /// has them when the peer is announced).
    pub version: Option<PeerVersion>,
    /// Features negotiated so far.
    pub features: Features,
    /// Whether the session handshake is complete (raw mode: never).
    pub ready: bool,
}

/// Traffic of one command in one direction pair.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommandStats {
    /// The command (`tx`, `inv`, ...).
    pub command: String,
    /// Messages received.
    pub msgs_in: u64,
    /// Bytes received, framing included.
    pub bytes_in: u64,
    /// Messages sent.
    pub msgs_out: u64,
    /// Bytes sent, framing included.
    pub bytes_out: u64,
}

/// Counters for one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerStats {
    /// The peer's id.
    pub peer: PeerId,
    /// When the connection was established (or, outbound, started).
    pub connected_at: Instant,
    /// When bytes were last written to the socket.
    pub last_send: Option<Instant>,
    /// When bytes were last read from the socket.
    pub last_recv: Option<Instant>,
    /// Bytes read from the socket.
    pub bytes_in: u64,
    /// Bytes written to the socket.
    pub bytes_out: u64,
    /// Messages decoded.
    pub msgs_in: u64,
    /// Messages encoded.
    pub msgs_out: u64,
    /// Per-command breakdown (Bitcoin reactors only), sorted by command.
    pub per_command: Vec<CommandStats>,
    /// Round-trip time of the last answered session ping.
    pub last_ping: Option<Duration>,
    /// Smallest session ping round-trip time.
    pub min_ping: Option<Duration>,
    /// Bytes waiting in our send buffer.
    pub send_queue: usize,
}
