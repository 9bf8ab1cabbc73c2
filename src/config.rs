//! Reactor configuration and its defaults.

use std::net::SocketAddr;
use std::time::Duration;

use bitcoin::p2p::{Magic, ServiceFlags};

use crate::session::{Mode, SessionConfig};
use crate::wire::TransportPolicy;
use crate::wire::v1::MAX_PROTOCOL_MESSAGE_LENGTH;

/// Bitcoin Core's `-maxsendbuffer` default (src/net.h): 1,000 KB per peer.
pub const DEFAULT_SEND_BUFFER_LIMIT: usize = 1_000_000;

/// Bitcoin Core's `-maxreceivebuffer` default (src/net.h): 5,000 KB per peer.
pub const DEFAULT_RECEIVE_BUFFER_LIMIT: usize = 5_000_000;

/// Default outbound connect timeout (Bitcoin Core's `-timeout` is 5 s for a
/// single address; we allow for slower links).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a peer may read nothing while we have data queued for it.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one frame may take to arrive once started. Bitcoin Core's
/// `TIMEOUT_INTERVAL` (src/net.h), 20 minutes, is its inactivity limit.
pub const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// Bitcoin Core's `DEFAULT_MAX_PEER_CONNECTIONS` (src/net.h).
pub const DEFAULT_MAX_INBOUND: usize = 125;

/// Default cap on outbound connections, pending ones included: Bitcoin
/// Core's `DEFAULT_MAX_PEER_CONNECTIONS`, its cap on all connections (of
/// which it opens 8 full-relay and 2 block-relay-only outbound itself).
pub const DEFAULT_MAX_OUTBOUND: usize = 125;

/// Default cap on outbound connections not yet established (TCP connect,
/// proxy handshake or host-name lookup under way).
pub const DEFAULT_MAX_PENDING_CONNECTS: usize = 128;

/// Default cap on the wire bytes of the messages waiting in the event
/// queue: 64 MiB (sixteen 4 MB blocks).
pub const DEFAULT_EVENT_BYTES_LIMIT: usize = 64 << 20;

/// Default per-peer cap on messages on their way to the reactor.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4096;

/// Default cap on messages on their way to the reactor, all peers together.
pub const DEFAULT_MAX_IN_FLIGHT_TOTAL: usize = 4096;

/// Default capacity of the event channel, in events.
pub const DEFAULT_EVENT_CAPACITY: usize = 4096;

/// Bytes read from or written to one socket per reactor round before other
/// peers get a turn. Bitcoin Core reads 64 KiB per socket per round.
pub const DEFAULT_IO_BUDGET: usize = 256 * 1024;

/// Everything the reactor needs to know at start. Build it with
/// [`Config::new`] and adjust the public fields.
///
/// ```
/// use std::time::Duration;
/// let mut config = peerlink::Config::new(bitcoin::Network::Regtest);
/// config.listen.push("127.0.0.1:0".parse().unwrap());
/// config.connect_timeout = Duration::from_secs(3);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Network magic of every frame sent and accepted.
    pub magic: Magic,
    /// Addresses to listen on. Port 0 picks a free port; read the result with
    /// [`Handle::local_addrs`](crate::Handle::local_addrs).
    pub listen: Vec<SocketAddr>,
    /// Largest payload accepted or sent, in bytes. Default: Bitcoin Core's
    /// `MAX_PROTOCOL_MESSAGE_LENGTH`, 4,000,000.
    pub max_message_len: u32,
    /// Bytes queued for one peer above which [`Handle::send`](crate::Handle::send)
    /// refuses (and hands back) further messages, the reactor stops reading
    /// that peer, and messages already on their way wait, unencoded, until the
    /// queue drains. The encoded queue never exceeds this plus one maximum
    /// message; waiting messages are bounded by [`Config::max_in_flight`].
    /// Default 1,000,000 (Core's `-maxsendbuffer`).
    pub send_buffer_limit: usize,
    /// Bytes of input kept for one peer while its messages are not being
    /// decoded (because our send queue to it is over
    /// [`send_buffer_limit`](Config::send_buffer_limit), or the user's
    /// messages to it fill [`max_in_flight`](Config::max_in_flight)); reading
    /// that peer stops above it. A frame being received may always complete.
    /// Default 5,000,000 (Core's `-maxreceivebuffer`).
    pub receive_buffer_limit: usize,
    /// Outbound connect timeout: one deadline for the whole path, the
    /// lookup of a host name and every address tried, or the TCP connect to
    /// a proxy and its SOCKS5 exchange (for Tor, reaching an onion service).
    /// Default 10 s; through Tor to onion services allow 30 s or more
    /// (Bitcoin Core allows 5 s for the TCP connect plus 20 s for the proxy's
    /// replies).
    pub connect_timeout: Duration,
    /// Disconnect a peer that reads nothing for this long while data is
    /// queued for it. Default 60 s.
    pub stall_timeout: Duration,
    /// Disconnect a peer whose started frame does not complete within this
    /// long. Default 20 min.
    pub frame_timeout: Duration,
    /// Capacity of the event channel. When it is full the reactor stops
    /// reading sockets (TCP then slows the peers) until the user catches up.
    /// Default 4096.
    pub event_capacity: usize,
    /// Wire bytes of the received messages waiting for the user in the
    /// event queue, all peers together. Over it the reactor stops reading
    /// sockets, as when the queue holds [`event_capacity`](Config::event_capacity)
    /// events, until the user takes some; so the queue holds at most this
    /// much plus one message and one batch (decoded messages take roughly
    /// one to three times their wire size in memory). Default
    /// [`DEFAULT_EVENT_BYTES_LIMIT`] (64 MiB).
    pub event_bytes_limit: usize,
    /// Bytes for all peers' receive and send buffers together. Over it,
    /// reading pauses for the peers whose buffers are above an even share
    /// of it (the largest first), and each round lets one of them, the
    /// closest to completing its frame, read on, so that frames complete
    /// and the buffers drain. The links' buffers then exceed it by at most
    /// one frame and one round of reads. Default `None`: each peer is
    /// bounded by its own limits only (see the README's memory formula).
    pub memory_budget: Option<usize>,
    /// Bytes read and written per peer per round. Default 256 KiB.
    pub io_budget: usize,
    /// Inbound connections kept at once. When all are taken, a new one
    /// evicts an inbound peer chosen by Bitcoin Core's rule
    /// ([`DisconnectReason::Evicted`](crate::DisconnectReason::Evicted)),
    /// or, if every candidate is protected, is closed as soon as it is
    /// accepted. Default 125 (Bitcoin Core's `-maxconnections`).
    pub max_inbound: usize,
    /// Inbound connections at once from one IP address (an IPv4-mapped
    /// IPv6 address counts as its IPv4 address); more are closed at accept
    /// and counted in [`ReactorStats::inbound_refused_source`](crate::handle::ReactorStats::inbound_refused_source).
    /// Default `None`: no cap, as in Bitcoin Core, whose eviction makes an
    /// address with many connections evict its own.
    pub max_inbound_per_ip: Option<usize>,
    /// Inbound connections at once from one network group (an IPv4 /16,
    /// an IPv6 /32; see [`netgroup`](crate::netgroup)); more are closed at
    /// accept and counted like [`max_inbound_per_ip`](Config::max_inbound_per_ip).
    /// Default `None`: no cap.
    pub max_inbound_per_netgroup: Option<usize>,
    /// When set, a peer disconnected for provable misbehaviour
    /// ([`Fault::Misbehaviour`](crate::Fault::Misbehaviour): bytes the
    /// codec refused, a broken handshake) has its address banned for this
    /// long, as with [`Handle::ban`](crate::Handle::ban) (counted in
    /// [`ReactorStats::auto_bans`](crate::handle::ReactorStats::auto_bans)).
    /// Default `None`: Bitcoin Core discourages such peers rather than
    /// banning them, and a shared address (NAT, Tor exit) would ban
    /// innocent peers too.
    pub ban_misbehaving: Option<Duration>,
    /// Outbound connections at once, pending ones included; a connect
    /// beyond fails with [`ConnectError::TooManyOutbound`](crate::ConnectError::TooManyOutbound)
    /// before any syscall. Default [`DEFAULT_MAX_OUTBOUND`] (125); a
    /// crawler raises it.
    pub max_outbound: usize,
    /// Outbound connections not yet established, at once; a connect beyond
    /// fails with [`ConnectError::TooManyPending`](crate::ConnectError::TooManyPending).
    /// Default [`DEFAULT_MAX_PENDING_CONNECTS`] (128).
    pub max_pending_connects: usize,
    /// Messages per peer accepted by [`Handle::send`](crate::Handle::send)
    /// but not yet taken by the reactor; more are refused until the reactor
    /// catches up, which bounds the command queue. Default 4096.
    pub max_in_flight: usize,
    /// Messages accepted by [`Handle::send`](crate::Handle::send) and not
    /// yet taken by the reactor, all peers together; more are refused
    /// ([`Refusal::InFlight`](crate::Refusal::InFlight), with
    /// [`Event::Writable`](crate::Event::Writable) to the refused peers once
    /// half have been taken). This bounds the command queue's memory
    /// (about 160 bytes a message) whatever the number of peers, which
    /// [`max_in_flight`](Config::max_in_flight) alone does not. Default 4096.
    pub max_in_flight_total: usize,
    /// Session or raw mode (built-in Bitcoin codec only). Default session.
    pub mode: Mode,
    /// v1, BIP324 v2, or v2 with Core's v1 fallback (built-in Bitcoin codec
    /// only). Default v2-preferred, like Bitcoin Core since 27.0.
    pub transport: TransportPolicy,
    /// Session options. Its `handshake_timeout` also bounds the transport
    /// (BIP324) handshake in raw mode.
    pub session: SessionConfig,
    /// Best-chain height announced in `version`; update it at runtime with
    /// [`Handle::set_start_height`](crate::Handle::set_start_height).
    pub start_height: i32,
    /// A SOCKS5 proxy for every outbound connection (Bitcoin Core's
    /// `-proxy`). With one set nothing connects directly, the v1 fallback
    /// retry included, and names ([`Target::Domain`](crate::Target::Domain),
    /// onion names) are resolved by the proxy, never locally. Default none.
    #[cfg(feature = "socks")]
    pub proxy: Option<crate::socks5::Proxy>,
    /// The SOCKS5 proxy for onion targets (Bitcoin Core's `-onion`), usually
    /// Tor; when unset, onion targets go through [`proxy`](Config::proxy),
    /// and without either they fail with
    /// [`ConnectError::OnionNeedsProxy`](crate::ConnectError::OnionNeedsProxy).
    /// With only this set (Core's `-onion` without `-proxy`), other targets
    /// connect directly and their host names are looked up locally.
    /// Default none.
    #[cfg(feature = "socks")]
    pub onion_proxy: Option<crate::socks5::Proxy>,
}

impl Config {
    /// Defaults for `network` (a [`bitcoin::Network`] or a custom [`Magic`]).
    pub fn new(network: impl Into<Magic>) -> Config {
        Config {
            magic: network.into(),
            listen: Vec::new(),
            max_message_len: MAX_PROTOCOL_MESSAGE_LENGTH,
            send_buffer_limit: DEFAULT_SEND_BUFFER_LIMIT,
            receive_buffer_limit: DEFAULT_RECEIVE_BUFFER_LIMIT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            frame_timeout: DEFAULT_FRAME_TIMEOUT,
            event_capacity: DEFAULT_EVENT_CAPACITY,
            event_bytes_limit: DEFAULT_EVENT_BYTES_LIMIT,
            memory_budget: None,
            io_budget: DEFAULT_IO_BUDGET,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_in_flight_total: DEFAULT_MAX_IN_FLIGHT_TOTAL,
            max_inbound: DEFAULT_MAX_INBOUND,
            max_inbound_per_ip: None,
            max_inbound_per_netgroup: None,
            ban_misbehaving: None,
            max_outbound: DEFAULT_MAX_OUTBOUND,
            max_pending_connects: DEFAULT_MAX_PENDING_CONNECTS,
            mode: Mode::Session,
            transport: TransportPolicy::V2Preferred,
            session: SessionConfig::default(),
            start_height: 0,
            #[cfg(feature = "socks")]
            proxy: None,
            #[cfg(feature = "socks")]
            onion_proxy: None,
        }
    }
}

impl Config {
    /// The services announced in our `version` in session mode:
    /// [`SessionConfig::services`], plus `NODE_P2P_V2` whenever
    /// [`Config::transport`] accepts BIP324 v2, as Bitcoin Core adds it to
    /// its local services when `-v2transport` is on (src/init.cpp). Core tries
    /// v2 only with peers that advertise it.
    pub fn local_services(&self) -> ServiceFlags {
        if self.transport.accepts_v2() { self.session.services | ServiceFlags::P2P_V2 } else { self.session.services }
    }

    /// The session options the reactor runs with: [`Config::session`] with
    /// [`local_services`](Config::local_services).
    pub(crate) fn session_config(&self) -> SessionConfig {
        SessionConfig { services: self.local_services(), ..self.session.clone() }
    }
}

impl Default for Config {
    /// Mainnet defaults.
    fn default() -> Config {
        Config::new(bitcoin::Network::Bitcoin)
    }
}

#[cfg(test)]
mod tests {
    use bitcoin::p2p::ServiceFlags;

    use super::Config;
    use crate::wire::TransportPolicy;

    #[test]
    fn p2p_v2_is_announced_whenever_v2_is_accepted() {
        let mut config = Config::new(bitcoin::Network::Regtest);
        config.session.services = ServiceFlags::WITNESS;
        for (policy, p2p_v2) in
            [(TransportPolicy::V2Preferred, true), (TransportPolicy::V2Only, true), (TransportPolicy::V1Only, false)]
        {
            config.transport = policy;
            let services = config.local_services();
            assert_eq!(services.has(ServiceFlags::P2P_V2), p2p_v2, "{policy}");
            assert!(services.has(ServiceFlags::WITNESS), "the configured services stay");
            assert_eq!(config.session_config().services, services);
            assert_eq!(config.session.services, ServiceFlags::WITNESS, "the user's setting is left alone");
        }
    }
}
