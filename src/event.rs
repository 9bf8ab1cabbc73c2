//! Events the reactor reports, and the identifiers they carry.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bitcoin::p2p::message::NetworkMessage;

use crate::peer::PeerInfo;
use crate::session::SessionError;
use crate::wire::WireError;

/// Identifies one connection for its whole life. Ids come from one counter
/// per reactor and are never reused, so an id held after its peer is gone can
/// only miss, never hit another peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub(crate) u64);

impl PeerId {
    /// The id as a number (unique within one reactor).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Who opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The peer connected to one of our listeners.
    Inbound,
    /// We connected to the peer.
    Outbound,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        })
    }
}

/// Something that happened in the reactor. `M` is the codec's message type
/// and `E` its error type; both default to the Bitcoin v1 codec's.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<M = NetworkMessage, E = WireError> {
    /// A connection is established (TCP, before any handshake).
    Connected {
        /// The new peer.
        peer: PeerId,
        /// Who opened it.
        direction: Direction,
        /// Our end of the connection.
        local: SocketAddr,
        /// The peer's end.
        remote: SocketAddr,
    },
    /// An outbound connection attempt failed. The id was returned by
    /// [`Handle::connect`](crate::Handle::connect) and is now dead.
    ConnectFailed {
        /// The id the attempt was given.
        peer: PeerId,
        /// The address we tried.
        addr: SocketAddr,
        /// Why it failed.
        error: ConnectError,
    },
    /// Session mode: the handshake with a peer is complete. This is the first
    /// event for the peer; no message from it is delivered before.
    Ready {
        /// The peer.
        peer: PeerId,
        /// What the peer told us, and what was negotiated.
        info: Box<PeerInfo>,
    },
    /// A message arrived.
    Message {
        /// Who sent it.
        peer: PeerId,
        /// The decoded message.
        message: M,
        /// Its size on the wire, framing included, in bytes.
        wire_size: usize,
    },
    /// A connection ended. No further events arrive for `peer`. In session
    /// mode this also reports peers that failed the handshake and were never
    /// announced, with the reason it failed.
    Disconnected {
        /// The peer that is gone.
        peer: PeerId,
        /// Why.
        reason: DisconnectReason<E>,
    },
    /// A message accepted by [`Handle::send`](crate::Handle::send) could not
    /// be queued after all (the peer went away meanwhile, or the codec could
    /// not encode it) and is handed back.
    SendRejected {
        /// The peer it was meant for.
        peer: PeerId,
        /// The message, unchanged.
        message: M,
        /// Why it was refused.
        reason: SendError<E>,
    },
    /// The peer's send buffer, which made [`Handle::send`](crate::Handle::send)
    /// refuse a message, has drained to half of its limit: sending may resume.
    Writable {
        /// The peer.
        peer: PeerId,
    },
}

/// Why an outbound connection could not be made.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConnectError {
    /// The operating system refused or reset the connection.
    Io(io::Error),
    /// No connection within the configured connect timeout.
    Timeout(Duration),
    /// We cancelled the attempt with [`Handle::disconnect`](crate::Handle::disconnect).
    Cancelled,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Io(_) => f.write_str("socket error"),
            ConnectError::Timeout(d) => write!(f, "connect timed out after {} ms", d.as_millis()),
            ConnectError::Cancelled => f.write_str("connection attempt cancelled"),
        }
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConnectError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Why a connection ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum DisconnectReason<E = WireError> {
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
    Codec(E),
    /// The peer broke the session protocol, or a session timer expired.
    Session(SessionError),
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
}

impl<E: fmt::Display> fmt::Display for DisconnectReason<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::Requested => f.write_str("disconnected by us"),
            DisconnectReason::Flushed => f.write_str("disconnected by us after flushing"),
            DisconnectReason::PeerClosed => f.write_str("closed by peer"),
            DisconnectReason::Io(_) => f.write_str("socket error"),
            DisconnectReason::Codec(_) => f.write_str("protocol violation"),
            DisconnectReason::Session(_) => f.write_str("session failed"),
            DisconnectReason::SendStalled { queued, timeout } => {
                write!(f, "peer read nothing for {} s with {queued} bytes queued", timeout.as_secs_f64())
            }
            DisconnectReason::FrameTimeout { received, timeout } => {
                write!(f, "frame incomplete after {} s ({received} bytes received)", timeout.as_secs_f64())
            }
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for DisconnectReason<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DisconnectReason::Io(e) => Some(e),
            DisconnectReason::Codec(e) => Some(e),
            DisconnectReason::Session(e) => Some(e),
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

impl<E: fmt::Display> fmt::Display for SendError<E> {
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
