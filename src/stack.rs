//! What a reactor speaks: the message type, the codec's error, the protocol
//! layer's error and the peer information it reports.
//!
//! [`Event`](crate::Event), [`DisconnectReason`](crate::DisconnectReason) and
//! [`Handle`](crate::Handle) are generic over a [`Stack`], so the generic
//! reactor names no Bitcoin type. Two stacks exist:
//! - [`Bitcoin`]: the built-in codec and session ([`crate::start`]), and the
//!   default for every generic type;
//! - [`Framed<C>`]: any [`Codec`] in raw mode, with no protocol layer
//!   ([`crate::start_with_codec`]).

use std::convert::Infallible;
use std::error::Error;
use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;

use bitcoin::p2p::message::NetworkMessage;

use crate::codec::{Codec, Transport};
use crate::peer::PeerInfo;
use crate::session::SessionError;
use crate::types::{Direction, PeerId};
use crate::wire::WireError;

/// The types one reactor speaks. Implemented by marker types; never
/// instantiated.
pub trait Stack: 'static {
    /// Messages users send and receive.
    type Message: Send + 'static;
    /// Why the codec refused bytes or a message.
    type CodecError: Error + Send + Sync + 'static;
    /// Why the protocol layer (the Bitcoin session) ended a connection.
    type ProtocolError: Error + Send + Sync + 'static;
    /// What [`Handle::peers`](crate::Handle::peers) and
    /// [`Event::Ready`](crate::Event::Ready) report about a peer.
    type Info: fmt::Debug + Clone + Send + 'static;

    /// Whose fault a disconnect for `error` was (see
    /// [`DisconnectReason::fault`](crate::DisconnectReason::fault)). By
    /// default a protocol error is the peer's misbehaviour.
    fn protocol_fault(error: &Self::ProtocolError) -> crate::event::Fault {
        let _ = error;
        crate::event::Fault::Misbehaviour
    }
}

/// The Bitcoin stack: [`NetworkMessage`] over [`BitcoinCodec`](crate::wire::BitcoinCodec),
/// with the session ([`SessionError`], [`PeerInfo`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bitcoin {}

impl Stack for Bitcoin {
    type Message = NetworkMessage;
    type CodecError = WireError;
    type ProtocolError = SessionError;
    type Info = PeerInfo;

    fn protocol_fault(error: &SessionError) -> crate::event::Fault {
        error.fault()
    }
}

/// Any codec `C` in raw mode, with no protocol layer: every message is
/// delivered, peers are announced with [`Event::Connected`](crate::Event::Connected)
/// and described by [`LinkInfo`].
pub struct Framed<C>(PhantomData<fn() -> C>, Infallible);

impl<C> fmt::Debug for Framed<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Framed")
    }
}

impl<C: Codec> Stack for Framed<C> {
    type Message = C::Message;
    type CodecError = C::Error;
    type ProtocolError = Infallible;
    type Info = LinkInfo;
}

/// What the reactor itself knows about a connection, whatever the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LinkInfo {
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
    /// Our end of the connection, once connected.
    pub local_addr: Option<SocketAddr>,
    /// Who opened the connection.
    pub direction: Direction,
    /// The transport in use (and, for BIP324, the session id).
    pub transport: Transport,
}
