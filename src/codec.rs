//! The per-connection codec trait the reactor is generic over.
//!
//! A codec is sans-IO: it sees bytes and messages, never sockets or clocks.
//! The reactor clones one prototype per connection, feeds it the bytes that
//! arrived, and asks it to encode outgoing messages straight into the
//! connection's send buffer. [`V1Codec`](crate::wire::V1Codec) is the built-in
//! Bitcoin codec; any other framing can be plugged in.
//!
//! ```
//! use peerlink::codec::{Codec, Decoded};
//!
//! /// Frames are a one-byte length followed by that many bytes.
//! #[derive(Clone)]
//! struct Tiny;
//!
//! #[derive(Debug)]
//! struct TooLong;
//! impl std::fmt::Display for TooLong {
//!     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("frame too long") }
//! }
//! impl std::error::Error for TooLong {}
//!
//! impl Codec for Tiny {
//!     type Message = Vec<u8>;
//!     type Error = TooLong;
//!     fn decode(&mut self, input: &[u8], _out: &mut Vec<u8>) -> Result<Decoded<Vec<u8>>, TooLong> {
//!         let Some(&len) = input.first() else { return Ok(Decoded::NeedMore { frame_len: None }) };
//!         let end = 1 + len as usize;
//!         match input.get(1..end) {
//!             Some(body) => Ok(Decoded::Message { message: body.to_vec(), consumed: end }),
//!             None => Ok(Decoded::NeedMore { frame_len: Some(end) }),
//!         }
//!     }
//!     fn encode(&mut self, message: &Vec<u8>, out: &mut Vec<u8>) -> Result<(), TooLong> {
//!         let len = u8::try_from(message.len()).map_err(|_| TooLong)?;
//!         out.push(len);
//!         out.extend_from_slice(message);
//!         Ok(())
//!     }
//!     fn max_frame_len(&self) -> usize { 256 }
//! }
//! ```

use std::error::Error;

use crate::target::Target;
use crate::types::Direction;

/// What [`Codec::start`] is told about the new connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Start {
    /// We opened the connection.
    pub outbound: bool,
    /// 32 bytes from a cryptographically secure generator, for handshakes.
    pub entropy: [u8; 32],
}

impl Start {
    /// A start context (for tests and custom drivers).
    pub fn new(outbound: bool, entropy: [u8; 32]) -> Self {
        Start { outbound, entropy }
    }
}

/// What one call to [`Codec::decode`] produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<M> {
    /// The input holds no complete frame yet. Nothing was consumed; call again
    /// with the same bytes plus more.
    NeedMore {
        /// Total length of the frame being received, once the codec knows it.
        /// The reactor uses it to size its buffer; it never exceeds
        /// [`Codec::max_frame_len`].
        frame_len: Option<usize>,
    },
    /// A message was decoded from the first `consumed` bytes of the input.
    Message {
        /// The decoded message.
        message: M,
        /// Bytes of input used.
        consumed: usize,
    },
    /// The first `consumed` bytes were used without producing a message (for
    /// example handshake bytes or decoy packets). `consumed` is non-zero.
    Consumed(usize),
}

/// A message framing, one instance per connection.
///
/// Contract for implementors:
/// - `decode` must validate a frame's length before asking for its payload,
///   and never report a `frame_len` above [`max_frame_len`](Codec::max_frame_len).
/// - `decode` must not panic on any input. An `Err` disconnects the peer, so
///   it must only be returned for input that is really invalid.
/// - Progress: `Consumed(n)` needs `n > 0`.
///
/// The reactor makes one codec per connection through a [`Factory`]; any
/// `Codec + Clone` is a factory that clones itself.
pub trait Codec: Send + 'static {
    /// The message type users send and receive.
    type Message: Send + 'static;
    /// Why a frame was refused. It ends up in the peer's disconnect reason.
    type Error: Error + Send + Sync + 'static;

    /// Called once when the connection opens, before any other method. Bytes
    /// appended to `out` are sent first (a handshake, for example).
    fn start(&mut self, _start: &Start, _out: &mut Vec<u8>) -> Result<(), Self::Error> {
        Ok(())
    }

    /// Whether the transport handshake (if any) is complete. Until it is, no
    /// user message is encoded and raw-mode peers are not announced.
    fn is_established(&self) -> bool {
        true
    }

    /// Decodes at most one message from the front of `input`. Bytes appended
    /// to `out` are queued for sending (handshake replies, for example).
    fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Decoded<Self::Message>, Self::Error>;

    /// Appends the encoding of `message` to `out`. On error `out` must be left
    /// as it was.
    fn encode(&mut self, message: &Self::Message, out: &mut Vec<u8>) -> Result<(), Self::Error>;

    /// The largest frame, in bytes, this codec accepts or produces.
    fn max_frame_len(&self) -> usize;

    /// The transport this codec speaks, reported in peer info.
    fn transport(&self) -> Transport {
        Transport::Custom
    }
}

/// How an outbound connection ended, for [`Factory::retry`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Ended<'a, C> {
    /// The connection's codec, in its final state.
    pub codec: &'a C,
    /// Bytes received over the whole connection.
    pub bytes_in: u64,
    /// Bytes sent over the whole connection.
    pub bytes_out: u64,
    /// The connection ended without an error of ours or a violation by the
    /// peer: the peer closed or reset it, or a handshake timer expired.
    pub silent_close: bool,
}

/// Makes the codec of each new connection, and decides whether a failed
/// outbound connection is retried with another codec (BIP324's v1 fallback
/// lives behind this hook, in [`wire::BitcoinFactory`](crate::wire::BitcoinFactory)).
pub trait Factory: Send + 'static {
    /// The per-connection codec.
    type Codec: Codec;

    /// A codec for a new connection to or from `remote`: the target given
    /// to [`Handle::connect`](crate::Handle::connect) for an outbound
    /// connection (a name stays a name, also through a proxy), the peer's
    /// socket address for an inbound one.
    fn make(&mut self, direction: Direction, remote: &Target) -> Self::Codec;

    /// An outbound connection to `remote` ended as `ended` says: a codec to
    /// reconnect with, silently and under the same peer id (by the same
    /// route: the same proxy, or the same resolved address), or `None` to
    /// report the disconnect. Default: never retry.
    fn retry(&mut self, _remote: &Target, _ended: &Ended<'_, Self::Codec>) -> Option<Self::Codec> {
        None
    }

    /// The first bytes of an outbound connection to `remote`, made with
    /// `codec`, arrived: the peer answers this codec. Default: nothing.
    fn answered(&mut self, _remote: &Target, _codec: &Self::Codec) {}
}

/// Every cloneable codec is its own factory: each connection gets a clone.
impl<C: Codec + Clone> Factory for C {
    type Codec = C;

    fn make(&mut self, _direction: Direction, _remote: &Target) -> C {
        self.clone()
    }
}

/// The transport a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Transport {
    /// The classic unencrypted Bitcoin framing.
    V1,
    /// BIP324 encrypted transport.
    V2 {
        /// The BIP324 session id. Both ends see the same value unless a
        /// man in the middle is present: compare it out of band.
        session_id: [u8; 32],
    },
    /// A codec other than the built-in Bitcoin ones.
    Custom,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::V1 => f.write_str("v1"),
            Transport::V2 { .. } => f.write_str("v2"),
            Transport::Custom => f.write_str("custom"),
        }
    }
}
