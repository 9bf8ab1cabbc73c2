//! Events the reactor reports, generic over the [`Stack`] it speaks.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

pub use crate::types::{Direction, PeerId};

use crate::stack::{Bitcoin, Stack};
use crate::target::Target;
use crate::wire::WireError;

/// Something that happened in the reactor. `S` names the message, error and
/// peer-info types; it defaults to the Bitcoin stack.
#[non_exhaustive]
pub enum Event<S: Stack = Bitcoin> {
    /// Raw mode: a connection is ready for messages. The TCP connection is
    /// up and the transport handshake, if the codec has one (BIP324), is
    /// complete; no message of the peer is delivered before this event.
    /// Session mode announces peers with [`Event::Ready`] instead.
    Connected {
        /// The new peer.
        peer: PeerId,
        /// Who opened it.
        direction: Direction,
        /// Our end of the connection.
        local: SocketAddr,
        /// The other end of the TCP connection: the peer, or, for a peer
        /// reached through a proxy, the proxy ([`PeerInfo::target`](crate::PeerInfo::target)
        /// says what was dialled).
        remote: SocketAddr,
    },
    /// An outbound connection attempt failed. The id was returned by
    /// [`Handle::connect`](crate::Handle::connect) and is now dead.
    ConnectFailed {
        /// The id the attempt was given.
        peer: PeerId,
        /// What we tried to reach, as given to `connect`.
        target: Target,
        /// Why it failed.
        error: ConnectError,
    },
    /// Session mode: the handshake with a peer is complete. This is the first
    /// event for the peer; no message from it is delivered before.
    Ready {
        /// The peer.
        peer: PeerId,
        /// What the peer told us, and what was negotiated.
        info: Box<S::Info>,
    },
    /// A message arrived.
    Message {
        /// Who sent it.
        peer: PeerId,
        /// The decoded message.
        message: S::Message,
        /// Its size on the wire, framing included, in bytes.
        wire_size: usize,
    },
    /// A connection ended. No further events arrive for `peer`. This also
    /// reports peers that were never announced because their handshake
    /// failed (the transport handshake in raw mode, the session handshake in
    /// session mode), with the reason it failed.
    Disconnected {
        /// The peer that is gone.
        peer: PeerId,
        /// Why.
        reason: DisconnectReason<S>,
    },
    /// A message accepted by [`Handle::send`](crate::Handle::send) could not
    /// be queued after all (the peer went away meanwhile, or the codec could
    /// not encode it) and is handed back.
    SendRejected {
        /// The peer it was meant for.
        peer: PeerId,
        /// The message, unchanged.
        message: S::Message,
        /// Why it was refused.
        reason: SendError<S::CodecError>,
    },
    /// The peer's send buffer, which made [`Handle::send`](crate::Handle::send)
    /// refuse a message, has drained to half of its limit: sending may resume.
    Writable {
        /// The peer.
        peer: PeerId,
    },
}

impl<S: Stack> fmt::Debug for Event<S>
where
    S::Message: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Connected { peer, direction, local, remote } => f
                .debug_struct("Connected")
                .field("peer", peer)
                .field("direction", direction)
                .field("local", local)
                .field("remote", remote)
                .finish(),
            Event::ConnectFailed { peer, target, error } => f
                .debug_struct("ConnectFailed")
                .field("peer", peer)
                .field("target", target)
                .field("error", error)
                .finish(),
            Event::Ready { peer, info } => f.debug_struct("Ready").field("peer", peer).field("info", info).finish(),
            Event::Message { peer, message, wire_size } => f
                .debug_struct("Message")
                .field("peer", peer)
                .field("message", message)
                .field("wire_size", wire_size)
                .finish(),
            Event::Disconnected { peer, reason } => {
                f.debug_struct("Disconnected").field("peer", peer).field("reason", reason).finish()
            }
            Event::SendRejected { peer, message, reason } => f
                .debug_struct("SendRejected")
                .field("peer", peer)
                .field("message", message)
                .field("reason", reason)
                .finish(),
            Event::Writable { peer } => f.debug_struct("Writable").field("peer", peer).finish(),
        }
    }
}

/// Why an outbound connection could not be made.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConnectError {
    /// The operating system refused or reset the connection. For a
    /// [`Target::Domain`] reached directly, this is the last address tried.
    Io(io::Error),
    /// No connection within the configured connect timeout. For a
    /// [`Target::Domain`] reached directly, the timeout covers the lookup
    /// and every address tried.
    Timeout(Duration),
    /// We cancelled the attempt with [`Handle::disconnect`](crate::Handle::disconnect).
    Cancelled,
    /// An onion target, and no proxy is configured to reach it
    /// ([`Config::onion_proxy`](crate::Config::onion_proxy) or
    /// [`Config::proxy`](crate::Config::proxy)). Nothing was sent anywhere.
    OnionNeedsProxy,
    /// Looking up a [`Target::Domain`] (no proxy is configured) failed.
    Resolve {
        /// The name looked up.
        name: String,
        /// The resolver's error.
        source: io::Error,
    },
    /// A [`Target::Domain`] (no proxy is configured) resolved to no address.
    NoAddress {
        /// The name looked up.
        name: String,
    },
    /// The proxy could not be reached, refused us or the target, or did not
    /// answer in time. Displayed as the [`ProxyError`](crate::socks5::ProxyError)
    /// itself, which names the proxy.
    #[cfg(feature = "socks")]
    Proxy(crate::socks5::ProxyError),
    /// The address is banned ([`Handle::ban`](crate::Handle::ban)). Nothing
    /// was sent anywhere. For a name, every address it resolved to is.
    Banned {
        /// The banned address.
        addr: std::net::IpAddr,
    },
    /// [`Config::max_outbound`](crate::Config::max_outbound) outbound
    /// connections are open or pending. Nothing was sent anywhere.
    TooManyOutbound {
        /// The configured maximum.
        max: usize,
    },
    /// [`Config::max_pending_connects`](crate::Config::max_pending_connects)
    /// outbound connections are still being established. Nothing was sent
    /// anywhere.
    TooManyPending {
        /// The configured maximum.
        max: usize,
    },
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Io(_) => f.write_str("connect failed"),
            ConnectError::Timeout(d) => write!(f, "connect timed out after {} ms", d.as_millis()),
            ConnectError::Cancelled => f.write_str("connection attempt cancelled"),
            ConnectError::OnionNeedsProxy => f.write_str("an onion target needs a proxy, and none is configured"),
            ConnectError::Resolve { name, .. } => write!(f, "cannot resolve {name}"),
            ConnectError::NoAddress { name } => write!(f, "{name} resolved to no address"),
            ConnectError::Banned { addr } => write!(f, "{addr} is banned"),
            ConnectError::TooManyOutbound { max } => write!(f, "{max} outbound connections already (the maximum)"),
            ConnectError::TooManyPending { max } => write!(f, "{max} connects already pending (the maximum)"),
            #[cfg(feature = "socks")]
            ConnectError::Proxy(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConnectError::Io(e) | ConnectError::Resolve { source: e, .. } => Some(e),
            // Displayed in place: its cause comes next.
            #[cfg(feature = "socks")]
            ConnectError::Proxy(e) => e.source(),
            _ => None,
        }
    }
}

/// Why a connection ended.
///
/// Display describes this level only; the cause, where there is one, is the
/// [`source`](std::error::Error::source) (print the chain with
/// [`error::Report`](crate::error::Report)).
#[non_exhaustive]
pub enum DisconnectReason<S: Stack = Bitcoin> {
    /// We asked for it with [`Disconnect::Now`](crate::Disconnect::Now).
    Requested,
    /// We asked for it with [`Disconnect::AfterFlush`](crate::Disconnect::AfterFlush)
    /// and everything queued was written first.
    Flushed,
    /// The peer closed the connection.
    PeerClosed,
    /// Reading or writing the socket failed.
    Io(io::Error),
    /// The peer sent bytes the codec refused.
    Codec(S::CodecError),
    /// The peer broke the protocol (the Bitcoin session), or one of the
    /// protocol's timers expired.
    Protocol(S::ProtocolError),
    /// The codec's transport handshake (BIP324) did not complete in time.
    TransportTimeout(Duration),
    /// The peer read nothing for the stall timeout while we had data queued.
    SendStalled {
        /// Bytes still queued.
        queued: usize,
        /// The configured stall timeout.
        timeout: Duration,
    },
    /// A frame was started but not completed within the frame timeout.
    FrameTimeout {
        /// Bytes of the frame received so far.
        received: usize,
        /// The configured frame timeout.
        timeout: Duration,
    },
    /// Every inbound slot was taken and a new inbound connection came: this
    /// peer was chosen by Bitcoin Core's eviction rule (see
    /// [`Config::max_inbound`](crate::Config::max_inbound)) and closed to
    /// make room.
    Evicted,
    /// Its address was banned ([`Handle::ban`](crate::Handle::ban)).
    Banned,
}

/// What a peer sent that the user found new and valid, reported with
/// [`Handle::relayed`](crate::Handle::relayed): inbound eviction protects
/// the peers that most recently did (Bitcoin Core's rule), because an
/// attacker cannot fake this without doing useful work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Relayed {
    /// A block we did not have, that passed our checks.
    Block,
    /// A transaction we did not have, accepted into our mempool.
    Transaction,
}

/// Whose fault a disconnect was, for deciding on a ban
/// ([`DisconnectReason::fault`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Fault {
    /// The peer sent provably invalid data (bytes the codec refused, or a
    /// broken handshake): a ban is justified.
    Misbehaviour,
    /// The peer did not answer, read or finish something in time. A slow
    /// or distant peer does this too: a ban is not justified.
    Timeout,
    /// Neither: we closed the connection or evicted the peer, the peer
    /// left, the socket failed, or the peer lacks what we require.
    Neither,
}

impl<S: Stack> DisconnectReason<S> {
    /// Whose fault the disconnect was: [`Fault::Misbehaviour`] for
    /// provably invalid data, [`Fault::Timeout`] for a missed deadline
    /// (handshake, ping, frame, send stall, BIP324 handshake), else
    /// [`Fault::Neither`].
    pub fn fault(&self) -> Fault {
        match self {
            DisconnectReason::Codec(_) => Fault::Misbehaviour,
            DisconnectReason::Protocol(e) => S::protocol_fault(e),
            DisconnectReason::TransportTimeout(_)
            | DisconnectReason::SendStalled { .. }
            | DisconnectReason::FrameTimeout { .. } => Fault::Timeout,
            DisconnectReason::Requested
            | DisconnectReason::Flushed
            | DisconnectReason::PeerClosed
            | DisconnectReason::Io(_)
            | DisconnectReason::Evicted
            | DisconnectReason::Banned => Fault::Neither,
        }
    }

    /// Whether the peer sent provably invalid data: `fault()` is
    /// [`Fault::Misbehaviour`].
    pub fn is_misbehaviour(&self) -> bool {
        self.fault() == Fault::Misbehaviour
    }
}

impl<S: Stack> fmt::Debug for DisconnectReason<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::Requested => f.write_str("Requested"),
            DisconnectReason::Flushed => f.write_str("Flushed"),
            DisconnectReason::PeerClosed => f.write_str("PeerClosed"),
            DisconnectReason::Io(e) => f.debug_tuple("Io").field(e).finish(),
            DisconnectReason::Codec(e) => f.debug_tuple("Codec").field(e).finish(),
            DisconnectReason::Protocol(e) => f.debug_tuple("Protocol").field(e).finish(),
            DisconnectReason::TransportTimeout(d) => f.debug_tuple("TransportTimeout").field(d).finish(),
            DisconnectReason::SendStalled { queued, timeout } => {
                f.debug_struct("SendStalled").field("queued", queued).field("timeout", timeout).finish()
            }
            DisconnectReason::FrameTimeout { received, timeout } => {
                f.debug_struct("FrameTimeout").field("received", received).field("timeout", timeout).finish()
            }
            DisconnectReason::Evicted => f.write_str("Evicted"),
            DisconnectReason::Banned => f.write_str("Banned"),
        }
    }
}

impl<S: Stack> fmt::Display for DisconnectReason<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::Requested => f.write_str("disconnected by us"),
            DisconnectReason::Flushed => f.write_str("disconnected by us after flushing"),
            DisconnectReason::PeerClosed => f.write_str("closed by peer"),
            DisconnectReason::Io(_) => f.write_str("socket error"),
            DisconnectReason::Codec(_) => f.write_str("peer sent invalid data"),
            DisconnectReason::Protocol(_) => f.write_str("peer broke the protocol"),
            DisconnectReason::TransportTimeout(d) => {
                write!(f, "transport handshake not complete after {} s", d.as_secs_f64())
            }
            DisconnectReason::SendStalled { queued, timeout } => {
                write!(f, "peer read nothing for {} s with {queued} bytes queued", timeout.as_secs_f64())
            }
            DisconnectReason::FrameTimeout { received, timeout } => {
                write!(f, "frame incomplete after {} s ({received} bytes received)", timeout.as_secs_f64())
            }
            DisconnectReason::Evicted => f.write_str("evicted to make room for a new inbound connection"),
            DisconnectReason::Banned => f.write_str("its address was banned"),
        }
    }
}

impl<S: Stack> std::error::Error for DisconnectReason<S> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DisconnectReason::Io(e) => Some(e),
            DisconnectReason::Codec(e) => Some(e),
            DisconnectReason::Protocol(e) => Some(e),
            _ => None,
        }
    }
}

/// Why a message was handed back in [`Event::SendRejected`].
#[derive(Debug)]
#[non_exhaustive]
pub enum SendError<E = WireError> {
    /// No such peer: it disconnected, or never existed.
    UnknownPeer,
    /// The peer is being disconnected after a flush and takes no new messages.
    Closing,
    /// The peer disconnected (or its connection failed) before the message,
    /// held until then, could be sent.
    Disconnected,
    /// The codec could not encode the message (too large, for example).
    Encode(E),
}

impl<E> fmt::Display for SendError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::UnknownPeer => f.write_str("unknown peer"),
            SendError::Closing => f.write_str("peer is closing"),
            SendError::Disconnected => f.write_str("peer disconnected before the message was sent"),
            SendError::Encode(_) => f.write_str("cannot encode message"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for SendError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Encode(e) => Some(e),
            _ => None,
        }
    }
}
