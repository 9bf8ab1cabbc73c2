//! Bitcoin v1 wire framing (sans-IO).
//!
//! A v1 frame is a 24-byte header followed by the payload:
//!
//! | bytes | field    | rule enforced here                                       |
//! |-------|----------|----------------------------------------------------------|
//! | 4     | magic    | equals the configured network's magic                    |
//! | 12    | command  | printable ASCII, NUL-padded, nothing after the first NUL |
//! | 4     | length   | little-endian, at most the configured maximum            |
//! | 4     | checksum | first four bytes of SHA256d(payload)                     |
//!
//! The header is validated as soon as its 24 bytes are present, before any
//! payload byte is buffered. The payload is then decoded with rust-bitcoin
//! directly from the receive buffer, without another copy of the frame.

use bitcoin::hashes::{Hash, HashEngine, sha256d};
use bitcoin::p2p::Magic;
use bitcoin::p2p::message::NetworkMessage;

use super::payload::{self, command_bytes};
use super::{Command, WireError};
use crate::codec::{Codec, Decoded};

/// Length of a v1 message header in bytes.
pub const HEADER_LEN: usize = 24;

/// Bitcoin Core's `MAX_PROTOCOL_MESSAGE_LENGTH` (src/net.h): the largest
/// payload, in bytes, that a peer may announce in a header.
pub const MAX_PROTOCOL_MESSAGE_LENGTH: u32 = 4_000_000;

/// A validated v1 message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The command, NUL-padded.
    pub command: Command,
    /// Payload length in bytes.
    pub length: u32,
    /// First four bytes of SHA256d of the payload.
    pub checksum: [u8; 4],
}

/// Parses and validates a 24-byte header.
///
/// Checks the magic, the command's form and the announced length, in that
/// order. Nothing is allocated.
pub fn parse_header(bytes: &[u8; HEADER_LEN], magic: Magic, max_len: u32) -> Result<Header, WireError> {
    let got = Magic::from_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if got != magic {
        return Err(WireError::BadMagic { expected: magic, got });
    }
    let mut cmd = [0u8; 12];
    cmd.copy_from_slice(&bytes[4..16]);
    let command = Command::from_wire(cmd)?;
    let length = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    if length > max_len {
        return Err(WireError::Oversize { command, length, max: max_len });
    }
    let checksum = [bytes[20], bytes[21], bytes[22], bytes[23]];
    Ok(Header { command, length, checksum })
}

/// First four bytes of SHA256d of `payload`.
pub fn checksum(payload: &[u8]) -> [u8; 4] {
    let hash = sha256d::Hash::hash(payload);
    let b = hash.as_byte_array();
    [b[0], b[1], b[2], b[3]]
}

/// The Bitcoin v1 codec: one instance per connection.
///
/// Decodes with [`Codec::decode`] and encodes with [`Codec::encode`]; see the
/// [module documentation](self) for the rules.
///
/// ```
/// use bitcoin::p2p::message::NetworkMessage;
/// use peerlink::codec::{Codec, Decoded};
/// use peerlink::wire::V1Codec;
///
/// let mut codec = V1Codec::new(bitcoin::Network::Regtest);
/// let mut wire = Vec::new();
/// codec.encode(&NetworkMessage::Ping(7), &mut wire).unwrap();
/// assert_eq!(wire.len(), 24 + 8);
/// let mut out = Vec::new();
/// match codec.decode(&wire, &mut out).unwrap() {
///     Decoded::Message { message, consumed } => {
///         assert_eq!(message, NetworkMessage::Ping(7));
///         assert_eq!(consumed, wire.len());
///     }
///     other => panic!("unexpected {other:?}"),
/// }
/// ```
#[derive(Debug, Clone)]
pub struct V1Codec {
    magic: Magic,
    max_len: u32,
    /// Header of the frame whose payload is still arriving (validated once).
    pending: Option<Header>,
}

impl V1Codec {
    /// A codec for `network` with Core's default length limit.
    pub fn new(network: impl Into<Magic>) -> Self {
        V1Codec { magic: network.into(), max_len: MAX_PROTOCOL_MESSAGE_LENGTH, pending: None }
    }

    /// A codec with the same settings in its initial state, for a new
    /// connection. (`clone` copies the state too: a header whose payload is
    /// still arriving.)
    pub fn fresh(&self) -> V1Codec {
        V1Codec { pending: None, ..self.clone() }
    }

    /// Sets the largest accepted (and sent) payload length in bytes.
    pub fn with_max_payload(mut self, max_len: u32) -> Self {
        self.max_len = max_len;
        self
    }

    /// The network magic this codec accepts and writes.
    pub fn magic(&self) -> Magic {
        self.magic
    }

    /// The largest payload length accepted and sent, in bytes.
    pub fn max_payload(&self) -> u32 {
        self.max_len
    }
}

impl Codec for V1Codec {
    type Message = NetworkMessage;
    type Error = WireError;

    fn decode(&mut self, input: &[u8], _out: &mut Vec<u8>) -> Result<Decoded<NetworkMessage>, WireError> {
        let header = match self.pending {
            Some(h) => h,
            None => {
                let Some(head) = input.first_chunk::<HEADER_LEN>() else {
                    return Ok(Decoded::NeedMore { frame_len: None });
                };
                let h = parse_header(head, self.magic, self.max_len)?;
                self.pending = Some(h);
                h
            }
        };
        let frame_len = HEADER_LEN + header.length as usize;
        let Some(frame) = input.get(..frame_len) else {
            return Ok(Decoded::NeedMore { frame_len: Some(frame_len) });
        };
        self.pending = None;
        let body = &frame[HEADER_LEN..];
        let actual = checksum(body);
        if actual != header.checksum {
            return Err(WireError::BadChecksum { command: header.command, expected: header.checksum, actual });
        }
        let message = payload::decode(&header.command, body)?;
        Ok(Decoded::Message { message, consumed: frame_len })
    }

    fn encode(&mut self, message: &NetworkMessage, out: &mut Vec<u8>) -> Result<(), WireError> {
        // Validate the command before touching `out`: on error it must be left as it was.
        let command = command_bytes(message)?;
        let start = out.len();
        out.extend_from_slice(self.magic.as_ref());
        out.extend_from_slice(&command);
        out.extend_from_slice(&[0u8; 8]);
        payload::encode(message, out);
        let len = out.len() - start - HEADER_LEN;
        if len > self.max_len as usize {
            out.truncate(start);
            return Err(WireError::Oversize {
                command: Command::from_wire(command)?,
                length: u32::try_from(len).unwrap_or(u32::MAX),
                max: self.max_len,
            });
        }
        let mut engine = sha256d::Hash::engine();
        engine.input(&out[start + HEADER_LEN..]);
        let hash = sha256d::Hash::from_engine(engine);
        let sum = &hash.as_byte_array()[..4];
        out[start + 16..start + 20].copy_from_slice(&(len as u32).to_le_bytes());
        out[start + 20..start + 24].copy_from_slice(sum);
        Ok(())
    }

    fn max_frame_len(&self) -> usize {
        HEADER_LEN + self.max_len as usize
    }

    fn transport(&self) -> crate::codec::Transport {
        crate::codec::Transport::V1
    }
}
