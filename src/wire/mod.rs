//! The Bitcoin wire format (sans-IO).
//!
//! [`BitcoinCodec`] is the built-in codec: [`V1Codec`] frames
//! [`NetworkMessage`] values in the classic v1 format, [`V2Codec`] in BIP324
//! encrypted packets, chosen by [`TransportPolicy`]. The payload helpers in [`payload`] decode a
//! bare payload for a known command, which rust-bitcoin 0.32 does not offer
//! (BIP324 packets carry no v1 header).

use std::fmt;

use bitcoin::p2p::Magic;

pub mod payload;
mod tx;
pub mod v1;
pub mod v2;

pub use v1::V1Codec;
pub use v2::{V2Codec, V2HandshakeError};

use crate::codec::{Codec, Decoded, Ended, Factory, Start, Transport};
use crate::target::Target;
use crate::types::Direction;
use bitcoin::p2p::message::NetworkMessage;

/// Which transport outbound connections use, and what inbound accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportPolicy {
    /// BIP324 only: outbound connections never fall back, inbound v1 peers
    /// are refused.
    V2Only,
    /// BIP324 first; an outbound connection that gets nothing back is retried
    /// as v1 exactly as Bitcoin Core does, and inbound accepts both.
    #[default]
    V2Preferred,
    /// Classic v1 only, both ways.
    V1Only,
}

impl TransportPolicy {
    /// Whether BIP324 v2 connections are made or accepted under this policy.
    pub fn accepts_v2(self) -> bool {
        self != TransportPolicy::V1Only
    }
}

impl std::fmt::Display for TransportPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportPolicy::V2Only => "v2",
            TransportPolicy::V2Preferred => "auto",
            TransportPolicy::V1Only => "v1",
        })
    }
}

#[derive(Debug)]
enum Inner {
    V1(V1Codec),
    /// Boxed: v2 state is large and v1 connections should not pay for it.
    V2(Box<V2Codec>),
}

/// The built-in Bitcoin codec: v1 or BIP324 v2 according to a
/// [`TransportPolicy`], with Core's v1 fallback. Users see the same
/// [`NetworkMessage`] values either way.
///
/// Cloning is [`fresh`](BitcoinCodec::fresh): the clone has the same
/// settings and starts a new connection; a started connection's state is
/// never copied (see [`V2Codec`]'s `Clone`). The reactor clones one
/// unstarted prototype per connection.
#[derive(Debug)]
pub struct BitcoinCodec {
    policy: TransportPolicy,
    inner: Inner,
}

impl BitcoinCodec {
    /// A codec for `network` under `policy`, with payloads up to `max_payload`.
    pub fn new(network: impl Into<Magic>, policy: TransportPolicy, max_payload: u32) -> Self {
        let magic = network.into();
        let inner = match policy {
            TransportPolicy::V1Only => Inner::V1(V1Codec::new(magic).with_max_payload(max_payload)),
            TransportPolicy::V2Only => {
                Inner::V2(Box::new(V2Codec::new(magic).with_max_payload(max_payload).with_v1_inbound(false)))
            }
            TransportPolicy::V2Preferred => Inner::V2(Box::new(V2Codec::new(magic).with_max_payload(max_payload))),
        };
        BitcoinCodec { policy, inner }
    }

    /// The policy this codec follows.
    pub fn policy(&self) -> TransportPolicy {
        self.policy
    }

    /// A codec with the same settings (network, policy, payload limit) in
    /// its initial state, for a new connection. A fallback codec gives a v1
    /// codec again.
    pub fn fresh(&self) -> BitcoinCodec {
        let inner = match &self.inner {
            Inner::V1(c) => Inner::V1(c.fresh()),
            Inner::V2(c) => Inner::V2(Box::new(c.fresh())),
        };
        BitcoinCodec { policy: self.policy, inner }
    }

    /// Core's `ShouldReconnectV1` (src/net.cpp), for an outbound connection
    /// that ended: a v1 codec to retry with, if this is a v2-preferred
    /// attempt that either got nothing back after sending at least a v1
    /// header's worth of bytes, or saw the peer answer in v1 (a v1 node that
    /// speaks first; Core never meets one, as it tries v2 only with peers
    /// that advertise `NODE_P2P_V2`).
    pub fn fallback(&self, ended: &Ended<'_, Self>) -> Option<BitcoinCodec> {
        let silent = ended.silent_close && ended.bytes_in == 0 && ended.bytes_out >= v1::HEADER_LEN as u64;
        if silent || self.needs_fallback() { self.v1_variant() } else { None }
    }

    /// Whether this codec found that the peer speaks v1: it answered our v2
    /// key with a v1 message for our network.
    pub fn needs_fallback(&self) -> bool {
        matches!(&self.inner, Inner::V2(c) if c.peer_is_v1())
    }

    /// The v1 codec a v2-preferred codec falls back to (`None` under other
    /// policies, and once already v1).
    fn v1_variant(&self) -> Option<BitcoinCodec> {
        match (&self.inner, self.policy) {
            (Inner::V2(c), TransportPolicy::V2Preferred) if !c.is_v1() => {
                Some(BitcoinCodec { policy: TransportPolicy::V1Only, inner: Inner::V1(c.to_v1()) })
            }
            _ => None,
        }
    }
}

/// Entries in the v1-only peer cache.
pub const V1_CACHE_LEN: usize = 1024;

/// The reactor's codec factory for the Bitcoin wire: a [`BitcoinCodec`] per
/// connection under one [`TransportPolicy`], Core's v1 fallback, and a
/// bounded cache of peers that only speak v1, so the next connection to them
/// starts as v1. A peer enters the cache only once its v1 retry was
/// answered: a peer that closed our v2 attempt for another reason (full, or
/// banning us) is tried over v2 again next time, so a closed connection
/// alone never downgrades a peer to unencrypted v1 for good.
#[derive(Debug)]
pub struct BitcoinFactory {
    prototype: BitcoinCodec,
    /// Addresses that fell back to v1, oldest first; at most [`V1_CACHE_LEN`].
    v1_peers: std::collections::HashSet<Target>,
    v1_order: std::collections::VecDeque<Target>,
    /// Addresses retried as v1 whose retry has not been answered yet; at
    /// most [`V1_CACHE_LEN`] (the oldest are forgotten).
    retried: std::collections::VecDeque<Target>,
}

impl BitcoinFactory {
    /// Codecs for `network` under `policy`, with payloads up to `max_payload`.
    pub fn new(network: impl Into<Magic>, policy: TransportPolicy, max_payload: u32) -> Self {
        BitcoinFactory {
            prototype: BitcoinCodec::new(network, policy, max_payload),
            v1_peers: Default::default(),
            v1_order: Default::default(),
            retried: Default::default(),
        }
    }

    /// Whether `addr` is remembered as a v1-only peer.
    pub fn is_v1_only(&self, addr: &Target) -> bool {
        self.v1_peers.contains(addr)
    }

    fn remember_v1(&mut self, addr: Target) {
        if self.v1_peers.insert(addr.clone()) {
            self.v1_order.push_back(addr);
            if self.v1_order.len() > V1_CACHE_LEN
                && let Some(old) = self.v1_order.pop_front()
            {
                self.v1_peers.remove(&old);
            }
        }
    }
}

impl Factory for BitcoinFactory {
    type Codec = BitcoinCodec;

    fn make(&mut self, direction: Direction, remote: &Target) -> BitcoinCodec {
        let fresh = self.prototype.fresh();
        if direction == Direction::Outbound && self.v1_peers.contains(remote) {
            return fresh.v1_variant().unwrap_or(fresh);
        }
        fresh
    }

    fn retry(&mut self, remote: &Target, ended: &Ended<'_, BitcoinCodec>) -> Option<BitcoinCodec> {
        let codec = ended.codec.fallback(ended)?;
        log::debug!("{remote} sent nothing back to v2 (or answered in v1): retrying as v1");
        if !self.retried.contains(remote) {
            if self.retried.len() == V1_CACHE_LEN {
                self.retried.pop_front();
            }
            self.retried.push_back(remote.clone());
        }
        Some(codec)
    }

    fn answered(&mut self, remote: &Target, codec: &BitcoinCodec) {
        if codec.transport() != Transport::V1 {
            return;
        }
        if let Some(i) = self.retried.iter().position(|a| a == remote) {
            self.retried.remove(i);
            self.remember_v1(remote.clone());
        }
    }
}

impl Codec for BitcoinCodec {
    type Message = NetworkMessage;
    type Error = WireError;

    fn start(&mut self, start: &Start, out: &mut Vec<u8>) -> Result<(), WireError> {
        match &mut self.inner {
            Inner::V1(c) => c.start(start, out),
            Inner::V2(c) => c.start(start, out),
        }
    }

    fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Decoded<NetworkMessage>, WireError> {
        match &mut self.inner {
            Inner::V1(c) => c.decode(input, out),
            Inner::V2(c) => c.decode(input, out),
        }
    }

    fn encode(&mut self, message: &NetworkMessage, out: &mut Vec<u8>) -> Result<(), WireError> {
        match &mut self.inner {
            Inner::V1(c) => c.encode(message, out),
            Inner::V2(c) => c.encode(message, out),
        }
    }

    fn max_frame_len(&self) -> usize {
        match &self.inner {
            Inner::V1(c) => c.max_frame_len(),
            Inner::V2(c) => c.max_frame_len(),
        }
    }

    fn transport(&self) -> Transport {
        match &self.inner {
            Inner::V1(c) => c.transport(),
            Inner::V2(c) => c.transport(),
        }
    }

    fn is_established(&self) -> bool {
        match &self.inner {
            Inner::V1(c) => c.is_established(),
            Inner::V2(c) => c.is_established(),
        }
    }
}

/// A message command as it appears on the wire: up to 12 printable ASCII
/// characters, NUL-padded.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Command([u8; 12]);

impl Command {
    /// `unknown`, for messages whose own command cannot be shown.
    pub const UNKNOWN: Command = Command(*b"unknown\0\0\0\0\0");

    /// Validates a 12-byte command field the way Bitcoin Core's
    /// `CMessageHeader::IsCommandValid` does: printable ASCII (0x20..=0x7e)
    /// up to the first NUL, and only NULs after it.
    pub fn from_wire(raw: [u8; 12]) -> Result<Command, WireError> {
        let end = raw.iter().position(|&b| b == 0).unwrap_or(12);
        let printable = raw[..end].iter().all(|b| (0x20..=0x7e).contains(b));
        let padded = raw[end..].iter().all(|&b| b == 0);
        if printable && padded { Ok(Command(raw)) } else { Err(WireError::BadCommand { raw }) }
    }

    /// The command as a string, without padding.
    pub fn as_str(&self) -> &str {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(12);
        // Validated as ASCII on construction.
        std::str::from_utf8(&self.0[..end]).unwrap_or("")
    }

    /// The 12 bytes as written on the wire.
    pub fn to_bytes(self) -> [u8; 12] {
        self.0
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Command({:?})", self.as_str())
    }
}

/// Why the codec refused a frame or a message. Every variant disconnects the
/// peer that sent it.
#[derive(Debug)]
#[non_exhaustive]
pub enum WireError {
    /// The header's magic is not the configured network's.
    BadMagic {
        /// Magic of the configured network.
        expected: Magic,
        /// Magic found in the header.
        got: Magic,
    },
    /// The command is not printable ASCII followed by NUL padding.
    BadCommand {
        /// The 12 raw command bytes.
        raw: [u8; 12],
    },
    /// The announced (or, when sending, the encoded) payload length is above
    /// the limit.
    Oversize {
        /// Command of the message.
        command: Command,
        /// Payload length in bytes.
        length: u32,
        /// Configured maximum in bytes.
        max: u32,
    },
    /// The payload's SHA256d does not match the header's checksum.
    BadChecksum {
        /// Command of the message.
        command: Command,
        /// Checksum from the header.
        expected: [u8; 4],
        /// Checksum of the payload received.
        actual: [u8; 4],
    },
    /// rust-bitcoin could not decode the payload.
    Payload {
        /// Command of the message.
        command: Command,
        /// The decoding error.
        source: bitcoin::consensus::encode::Error,
    },
    /// The payload decoded, but bytes were left over.
    TrailingBytes {
        /// Command of the message.
        command: Command,
        /// Number of unused bytes.
        extra: usize,
    },
    /// BIP324: a packet failed authentication (wrong keys, or tampering).
    V2Auth,
    /// BIP324: a packet announced more contents than allowed.
    V2Oversize {
        /// Announced contents length in bytes.
        length: usize,
        /// The limit (maximum payload plus the message type).
        max: usize,
    },
    /// BIP324: the handshake went wrong.
    V2Handshake(V2HandshakeError),
    /// BIP324: a packet's contents do not start with a complete message type
    /// (one short id, or a zero byte and a 12-byte command).
    V2MessageType {
        /// Length of the packet's contents in bytes.
        contents_len: usize,
    },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::BadMagic { expected, got } => {
                write!(f, "wrong network magic {got} (expected {expected})")
            }
            WireError::BadCommand { raw } => {
                write!(f, "malformed command bytes {}", hex(raw))
            }
            WireError::Oversize { command, length, max } => {
                write!(f, "{command} payload of {length} bytes exceeds the limit of {max} bytes")
            }
            WireError::BadChecksum { command, expected, actual } => {
                write!(
                    f,
                    "{command} checksum mismatch: header says {}, payload hashes to {}",
                    hex(expected),
                    hex(actual)
                )
            }
            WireError::Payload { command, .. } => write!(f, "undecodable {command} payload"),
            WireError::TrailingBytes { command, extra } => {
                write!(f, "{extra} trailing bytes after {command} payload")
            }
            WireError::V2Auth => f.write_str("v2 packet failed authentication"),
            WireError::V2Oversize { length, max } => {
                write!(f, "v2 packet of {length} content bytes exceeds the limit of {max}")
            }
            WireError::V2Handshake(_) => f.write_str("v2 handshake failed"),
            WireError::V2MessageType { contents_len } => {
                write!(f, "v2 packet of {contents_len} content bytes lacks a complete message type")
            }
        }
    }
}

impl std::error::Error for WireError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WireError::Payload { source, .. } => Some(source),
            WireError::V2Handshake(e) => Some(e),
            _ => None,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests;
