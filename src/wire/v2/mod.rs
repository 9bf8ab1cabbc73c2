//! BIP324 v2 encrypted transport (sans-IO).
//!
//! [`V2Codec`] runs the whole protocol from bytes alone: the ElligatorSwift
//! key exchange, random garbage (up to 4,095 bytes) and its terminator, the
//! version packet, decoy packets (ignored), short message ids both ways and
//! rekeying every 224 packets. Randomness comes in through
//! [`Codec::start`]'s entropy; nothing here reads a clock or a socket.
//!
//! As responder it first tells a v1 peer from a v2 peer by the first 16
//! bytes (magic + `version` + NULs, as Bitcoin Core does), and hands a v1
//! peer to the v1 codec. A v1 `version` with another network's magic is
//! refused right there, instead of being taken for a v2 key.
//!
//! Memory follows the v1 rules: a packet's length is decrypted and checked
//! (at most [`MAX_PROTOCOL_MESSAGE_LENGTH`] of payload plus the message type) before anything is buffered for it.
//!
//! Why not the `bip324` crate: its handshake state machine borrows the
//! garbage it has sent and received across states (`Handshake<SentKey<'a>>`,
//! `Handshake<ReceivedGarbage<'a>>`), so a codec that must return between
//! reads (the reactor's, fed whatever TCP delivered) cannot hold those states
//! without self-referential storage or `unsafe`. The cipher layer here is
//! small (RustCrypto's `chacha20` and `chacha20poly1305`, which pick SIMD code
//! at run time, rust-bitcoin's portable `chacha20-poly1305` for short packets,
//! and libsecp256k1's ElligatorSwift XDH), and is checked against the BIP's
//! and Bitcoin Core's test vectors.

// The cipher layer is an implementation detail; the fuzz targets (built by
// cargo-fuzz, which sets `--cfg fuzzing`) drive it directly to build honest
// streams, so it is public there only.
#[cfg(fuzzing)]
pub mod cipher;
#[cfg(not(fuzzing))]
pub(crate) mod cipher;

use bitcoin::p2p::Magic;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::secp256k1::ellswift::ElligatorSwift;
use bitcoin::secp256k1::{Secp256k1, SecretKey};
use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher};

use self::cipher::{
    GARBAGE_TERMINATOR_LEN, HEADER_LEN, LENGTH_LEN, PACKET_OVERHEAD, PacketCipher, SessionKeys, TAG_LEN,
};
use super::payload::{self, command_bytes};
use super::v1::{HEADER_LEN as V1_HEADER_LEN, MAX_PROTOCOL_MESSAGE_LENGTH, V1Codec};
use super::{Command, WireError};
use crate::codec::{Codec, Decoded, Start, Transport};

/// Most garbage a peer may send before its terminator (BIP324).
pub const MAX_GARBAGE_LEN: usize = 4095;
/// Length of an ElligatorSwift public key.
pub const KEY_LEN: usize = 64;
/// Bytes that tell a v1 peer on an inbound connection: the magic, then
/// `version` padded with NULs to 12 bytes.
pub const V1_PREFIX_LEN: usize = 16;

/// BIP324 short message type ids, in order from 1.
const SHORT_IDS: [&str; 28] = [
    "addr",
    "block",
    "blocktxn",
    "cmpctblock",
    "feefilter",
    "filteradd",
    "filterclear",
    "filterload",
    "getblocks",
    "getblocktxn",
    "getdata",
    "getheaders",
    "headers",
    "inv",
    "mempool",
    "merkleblock",
    "notfound",
    "ping",
    "pong",
    "sendcmpct",
    "tx",
    "getcfilters",
    "cfilter",
    "getcfheaders",
    "cfheaders",
    "getcfcheckpt",
    "cfcheckpt",
    "addrv2",
];

/// The short id of a command, if it has one.
pub fn short_id(command: &str) -> Option<u8> {
    SHORT_IDS.iter().position(|c| *c == command).map(|i| i as u8 + 1)
}

/// The command of a short id, if assigned.
pub fn command_of(id: u8) -> Option<&'static str> {
    SHORT_IDS.get(usize::from(id).checked_sub(1)?).copied()
}

/// Why a BIP324 handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum V2HandshakeError {
    /// The codec was used before [`Codec::start`] gave it its role and keys.
    NotStarted,
    /// A packet was to be sent or received before the session keys existed.
    NoSessionKeys,
    /// An inbound peer spoke v1, and v1 is not accepted
    /// ([`TransportPolicy::V2Only`](super::TransportPolicy::V2Only)).
    V1PeerRefused,
    /// We initiated v2 and the peer answered with v1 bytes (our network's
    /// magic); the connection can be retried as v1.
    PeerAnsweredV1,
    /// The peer sent [`MAX_GARBAGE_LEN`] bytes of garbage without the
    /// garbage terminator.
    NoGarbageTerminator,
}

impl std::fmt::Display for V2HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            V2HandshakeError::NotStarted => "codec used before it was started",
            V2HandshakeError::NoSessionKeys => "no session keys yet",
            V2HandshakeError::V1PeerRefused => "v1 peer refused: v2 transport required",
            V2HandshakeError::PeerAnsweredV1 => "peer answered with v1 bytes",
            V2HandshakeError::NoGarbageTerminator => "no garbage terminator within 4,095 bytes",
        })
    }
}

impl std::error::Error for V2HandshakeError {}

/// Message type bytes at the start of a packet's contents: one short id, or
/// a zero byte and the 12-byte command.
const MAX_TYPE_LEN: usize = 13;

#[derive(Debug)]
enum State {
    /// Inbound, waiting for 16 bytes to tell v1 from v2.
    Detect,
    /// The peer speaks v1 (inbound detection).
    V1(V1Codec),
    /// Waiting for the peer's 64-byte key.
    AwaitKey,
    /// Waiting for the peer's garbage terminator.
    AwaitGarbage,
    /// Waiting for the peer's version packet (decoys may come first).
    AwaitVersion,
    /// Established.
    Ready,
}

/// Our side's secrets until the keys are derived.
struct Local {
    secret: SecretKey,
    ellswift: ElligatorSwift,
    garbage: Vec<u8>,
    garbage_sent: bool,
}

/// The BIP324 codec. One instance per connection; [`Codec::start`] decides
/// the role (outbound = initiator).
pub struct V2Codec {
    magic: Magic,
    max_payload: u32,
    initiator: bool,
    state: State,
    local: Option<Local>,
    cipher: Option<PacketCipher>,
    session_id: Option<[u8; 32]>,
    recv_terminator: [u8; GARBAGE_TERMINATOR_LEN],
    /// The peer's garbage: the associated data of its first packet.
    recv_garbage: Option<Vec<u8>>,
    /// Contents length of the packet being received (its length prefix is
    /// already consumed: the length cipher moves once per packet).
    pending: Option<usize>,
    /// Decryption buffer for one packet.
    plain: Vec<u8>,
    /// Messages encoded before the keys existed: `[u32 LE length][contents]`.
    early: Vec<u8>,
    /// Accept a v1 peer on inbound connections.
    allow_v1_inbound: bool,
    /// As initiator, the responder answered in v1.
    peer_is_v1: bool,
}

impl std::fmt::Debug for V2Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V2Codec").field("initiator", &self.initiator).field("state", &self.state).finish()
    }
}

impl V2Codec {
    /// A codec for `network` with Core's default length limit. Inbound
    /// connections from v1 peers are accepted.
    pub fn new(network: impl Into<Magic>) -> Self {
        V2Codec {
            magic: network.into(),
            max_payload: MAX_PROTOCOL_MESSAGE_LENGTH,
            initiator: true,
            state: State::AwaitKey,
            local: None,
            cipher: None,
            session_id: None,
            recv_terminator: [0; GARBAGE_TERMINATOR_LEN],
            recv_garbage: None,
            pending: None,
            plain: Vec::new(),
            early: Vec::new(),
            allow_v1_inbound: true,
            peer_is_v1: false,
        }
    }

    /// Sets the largest payload accepted and sent, in bytes.
    pub fn with_max_payload(mut self, max: u32) -> Self {
        self.max_payload = max;
        self
    }

    /// A codec with the same settings (network, payload limit, inbound v1)
    /// in its initial state, for a new connection. Keys, nonces and buffers
    /// of this one are not copied.
    pub fn fresh(&self) -> V2Codec {
        V2Codec::new(self.magic).with_max_payload(self.max_payload).with_v1_inbound(self.allow_v1_inbound)
    }

    /// Whether inbound v1 peers are accepted (default true).
    pub fn with_v1_inbound(mut self, allow: bool) -> Self {
        self.allow_v1_inbound = allow;
        self
    }

    /// The BIP324 session id, once the keys exist.
    pub fn session_id(&self) -> Option<[u8; 32]> {
        self.session_id
    }

    /// Whether, as initiator, the peer answered in v1.
    pub fn peer_is_v1(&self) -> bool {
        self.peer_is_v1
    }

    /// Whether an inbound peer turned out to speak v1.
    pub fn is_v1(&self) -> bool {
        matches!(self.state, State::V1(_))
    }

    /// A v1 codec with the same network and limit.
    pub fn to_v1(&self) -> V1Codec {
        V1Codec::new(self.magic).with_max_payload(self.max_payload)
    }

    fn max_contents(&self) -> usize {
        // The length prefix has 24 bits.
        (self.max_payload as usize + MAX_TYPE_LEN).min((1 << 24) - 1)
    }

    /// Builds our key pair and garbage from 32 bytes of entropy.
    fn local_from(entropy: [u8; 32]) -> Local {
        let mut rng = ChaCha20::new(&entropy.into(), &[0; 12].into());
        let mut draw = |buf: &mut [u8]| {
            buf.fill(0);
            rng.apply_keystream(buf);
        };
        let secret = loop {
            let mut sk = [0u8; 32];
            draw(&mut sk);
            if let Ok(s) = SecretKey::from_slice(&sk) {
                break s;
            }
        };
        let mut aux = [0u8; 32];
        draw(&mut aux);
        let ellswift = ElligatorSwift::from_seckey(&Secp256k1::verification_only(), secret, Some(aux));
        let mut len = [0u8; 2];
        draw(&mut len);
        let mut garbage = vec![0u8; usize::from(u16::from_le_bytes(len)) % (MAX_GARBAGE_LEN + 1)];
        draw(&mut garbage);
        Local { secret, ellswift, garbage, garbage_sent: false }
    }

    /// Our key, and (as responder) our garbage.
    ///
    /// The initiator sends its garbage only once the responder's key has
    /// arrived, right before the terminator: the byte stream is the same to a
    /// v2 responder, but a v1 node that reads our first bytes as v1 headers
    /// sees only 64 of them. bcoin, for one, adds 10 to a ban score for every
    /// 24 bytes with a wrong magic and bans at 100, so up-front garbage would
    /// get us banned before the v1 fallback could reconnect.
    fn send_key(&mut self, out: &mut Vec<u8>) {
        if let Some(local) = &mut self.local {
            out.extend_from_slice(&local.ellswift.to_array());
            if !self.initiator {
                out.extend_from_slice(&local.garbage);
                local.garbage_sent = true;
            }
        }
    }

    /// Derives the keys from the peer's key, then sends our terminator, the
    /// version packet and any messages encoded before.
    fn complete_keys(&mut self, theirs: [u8; KEY_LEN], out: &mut Vec<u8>) -> Result<(), WireError> {
        let local = self.local.take().ok_or(WireError::V2Handshake(V2HandshakeError::NotStarted))?;
        let theirs = ElligatorSwift::from_array(theirs);
        let secret = cipher::shared_secret(local.secret, local.ellswift, theirs, self.initiator);
        let keys = SessionKeys::derive(&secret, self.magic);
        let (send_terminator, recv_terminator) = if self.initiator {
            (keys.initiator_garbage_terminator, keys.responder_garbage_terminator)
        } else {
            (keys.responder_garbage_terminator, keys.initiator_garbage_terminator)
        };
        self.recv_terminator = recv_terminator;
        self.session_id = Some(keys.session_id);
        let mut cipher = PacketCipher::new(&keys, self.initiator);
        if !local.garbage_sent {
            out.extend_from_slice(&local.garbage);
        }
        out.extend_from_slice(&send_terminator);
        // The version packet: empty contents, our garbage as associated data.
        cipher.encrypt_packet(&[], &local.garbage, false, out);
        // Messages queued before the keys existed, in order.
        let early = std::mem::take(&mut self.early);
        let mut rest = early.as_slice();
        while let Some((len, tail)) = rest.split_first_chunk::<4>() {
            let n = u32::from_le_bytes(*len) as usize;
            cipher.encrypt_packet(&tail[..n], &[], false, out);
            rest = &tail[n..];
        }
        self.cipher = Some(cipher);
        self.state = State::AwaitGarbage;
        Ok(())
    }

    fn decode_detect(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Decoded<NetworkMessage>, WireError> {
        let mut prefix = [0u8; V1_PREFIX_LEN];
        prefix[..4].copy_from_slice(self.magic.as_ref());
        prefix[4..11].copy_from_slice(b"version");
        let seen = &input[..input.len().min(V1_PREFIX_LEN)];
        let v1_so_far = seen == &prefix[..seen.len()];
        let other_v1 = seen.len() == V1_PREFIX_LEN && seen[4..] == prefix[4..];
        if other_v1 && !v1_so_far {
            // A v1 `version` for another network: refuse it here rather
            // than take it for a v2 key and wait for a terminator.
            let got = Magic::from_bytes([seen[0], seen[1], seen[2], seen[3]]);
            return Err(WireError::BadMagic { expected: self.magic, got });
        }
        if v1_so_far && seen.len() < V1_PREFIX_LEN {
            return Ok(Decoded::NeedMore { frame_len: None });
        }
        // Could still be another network's v1 prefix: wait for the magic,
        // and then for all 16 bytes while the rest matches `version`, so the
        // outcome does not depend on how the bytes were split.
        if seen.len() < 4 || (seen.len() < V1_PREFIX_LEN && seen[4..] == prefix[4..seen.len()]) {
            return Ok(Decoded::NeedMore { frame_len: None });
        }
        if v1_so_far {
            if !self.allow_v1_inbound {
                return Err(WireError::V2Handshake(V2HandshakeError::V1PeerRefused));
            }
            let mut v1 = V1Codec::new(self.magic).with_max_payload(self.max_payload);
            // Messages encoded while we did not know yet go out as v1 frames.
            let early = std::mem::take(&mut self.early);
            let mut rest = early.as_slice();
            while let Some((len, tail)) = rest.split_first_chunk::<4>() {
                let n = u32::from_le_bytes(*len) as usize;
                let (contents, next) = tail.split_at(n);
                rest = next;
                if let Some(message) = decode_contents(contents)? {
                    v1.encode(&message, out)?;
                }
            }
            self.state = State::V1(v1);
            return self.decode(input, out);
        }
        // v2: answer with our key and garbage now, as Core does.
        self.send_key(out);
        self.state = State::AwaitKey;
        self.decode(input, out)
    }

    fn decode_packet(&mut self, input: &[u8]) -> Result<Decoded<NetworkMessage>, WireError> {
        let result = self.decode_packet_inner(input);
        // A large packet (message, decoy or ignored id) must not pin its
        // buffer on an idle connection.
        if self.plain.capacity() > 64 * 1024 {
            self.plain = Vec::new();
        }
        result
    }

    fn decode_packet_inner(&mut self, input: &[u8]) -> Result<Decoded<NetworkMessage>, WireError> {
        let max = self.max_contents();
        let cipher = self.cipher.as_mut().ok_or(WireError::V2Handshake(V2HandshakeError::NoSessionKeys))?;
        // The length prefix is decrypted once (the length cipher moves per
        // packet) but consumed with the packet, so that a message's reported
        // size is its whole wire size.
        let len = match self.pending {
            Some(len) => len,
            None => {
                let Some(bytes) = input.first_chunk::<LENGTH_LEN>() else {
                    return Ok(Decoded::NeedMore { frame_len: None });
                };
                let len = cipher.decrypt_length(*bytes);
                if len > max {
                    return Err(WireError::V2Oversize { length: len, max });
                }
                self.pending = Some(len);
                len
            }
        };
        let packet_len = LENGTH_LEN + HEADER_LEN + len + TAG_LEN;
        let Some(packet) = input.get(LENGTH_LEN..packet_len) else {
            return Ok(Decoded::NeedMore { frame_len: Some(packet_len) });
        };
        self.pending = None;
        self.plain.clear();
        self.plain.extend_from_slice(packet);
        let aad = self.recv_garbage.take().unwrap_or_default();
        let decoy = cipher.decrypt_packet(&aad, &mut self.plain).map_err(|_| WireError::V2Auth)?;
        let contents_end = self.plain.len() - TAG_LEN;
        if decoy {
            return Ok(Decoded::Consumed(packet_len));
        }
        if matches!(self.state, State::AwaitVersion) {
            // The version packet's contents are reserved for future use and
            // ignored (BIP324).
            self.state = State::Ready;
            return Ok(Decoded::Consumed(packet_len));
        }
        let Some(message) = decode_contents(&self.plain[HEADER_LEN..contents_end])? else {
            return Ok(Decoded::Consumed(packet_len));
        };
        // The reactor reports wire sizes including framing.
        Ok(Decoded::Message { message, consumed: packet_len })
    }
}

impl Codec for V2Codec {
    type Message = NetworkMessage;
    type Error = WireError;

    fn start(&mut self, start: &Start, out: &mut Vec<u8>) -> Result<(), WireError> {
        self.initiator = start.outbound;
        self.local = Some(Self::local_from(start.entropy));
        if self.initiator {
            self.state = State::AwaitKey;
            self.send_key(out);
        } else {
            self.state = State::Detect;
        }
        Ok(())
    }

    fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Decoded<NetworkMessage>, WireError> {
        match &mut self.state {
            State::V1(v1) => v1.decode(input, out),
            State::Detect => self.decode_detect(input, out),
            State::AwaitKey => {
                if self.initiator && input.len() >= 4 && input[..4] == self.magic.to_bytes() {
                    // A v1 node that speaks first (bcoin does; Core waits,
                    // and only tries v2 with peers advertising NODE_P2P_V2).
                    self.peer_is_v1 = true;
                    return Err(WireError::V2Handshake(V2HandshakeError::PeerAnsweredV1));
                }
                let Some(key) = input.first_chunk::<KEY_LEN>() else {
                    return Ok(Decoded::NeedMore { frame_len: Some(KEY_LEN) });
                };
                self.complete_keys(*key, out)?;
                Ok(Decoded::Consumed(KEY_LEN))
            }
            State::AwaitGarbage => {
                let window = &input[..input.len().min(MAX_GARBAGE_LEN + GARBAGE_TERMINATOR_LEN)];
                match window.windows(GARBAGE_TERMINATOR_LEN).position(|w| w == self.recv_terminator) {
                    Some(at) => {
                        self.recv_garbage = Some(input[..at].to_vec());
                        self.state = State::AwaitVersion;
                        Ok(Decoded::Consumed(at + GARBAGE_TERMINATOR_LEN))
                    }
                    None if window.len() == MAX_GARBAGE_LEN + GARBAGE_TERMINATOR_LEN => {
                        Err(WireError::V2Handshake(V2HandshakeError::NoGarbageTerminator))
                    }
                    None => Ok(Decoded::NeedMore { frame_len: None }),
                }
            }
            State::AwaitVersion | State::Ready => self.decode_packet(input),
        }
    }

    fn encode(&mut self, message: &NetworkMessage, out: &mut Vec<u8>) -> Result<(), WireError> {
        let max_contents = self.max_contents();
        match &mut self.state {
            State::V1(v1) => return v1.encode(message, out),
            State::Detect | State::AwaitKey if self.cipher.is_none() => {
                // No keys yet: keep the contents until the handshake sends them.
                let start = self.early.len();
                self.early.extend_from_slice(&[0; 4]);
                if let Err(e) = write_type(message, &mut self.early) {
                    self.early.truncate(start);
                    return Err(e);
                }
                payload::encode(message, &mut self.early);
                let len = self.early.len() - start - 4;
                if len > max_contents {
                    self.early.truncate(start);
                    return Err(oversize(message, len, max_contents));
                }
                self.early[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
                return Ok(());
            }
            _ => {}
        }
        let cipher = self.cipher.as_mut().ok_or(WireError::V2Handshake(V2HandshakeError::NoSessionKeys))?;
        let start = PacketCipher::begin_packet(out);
        if let Err(e) = write_type(message, out) {
            out.truncate(start);
            return Err(e);
        }
        payload::encode(message, out);
        let len = out.len() - start - LENGTH_LEN - HEADER_LEN;
        if len > max_contents {
            out.truncate(start);
            return Err(oversize(message, len, max_contents));
        }
        cipher.finish_packet(out, start, &[], false);
        Ok(())
    }

    fn max_frame_len(&self) -> usize {
        // The largest of: a packet, a v1 frame (inbound detection), a key.
        (self.max_contents() + PACKET_OVERHEAD).max(V1_HEADER_LEN + self.max_payload as usize).max(KEY_LEN)
    }

    fn transport(&self) -> Transport {
        match (&self.state, self.session_id) {
            (State::V1(_), _) => Transport::V1,
            (_, Some(session_id)) => Transport::V2 { session_id },
            _ => Transport::V2 { session_id: [0; 32] },
        }
    }

    fn is_established(&self) -> bool {
        matches!(self.state, State::V1(_) | State::Ready)
    }
}

/// Decodes a packet's contents: message type, then payload. `None` for an
/// unassigned short id, which Core ignores.
fn decode_contents(contents: &[u8]) -> Result<Option<NetworkMessage>, WireError> {
    let Some((&id, rest)) = contents.split_first() else {
        return Err(WireError::V2MessageType { contents_len: 0 });
    };
    let (command, body) = if id == 0 {
        let Some((raw, body)) = rest.split_first_chunk::<12>() else {
            return Err(WireError::V2MessageType { contents_len: contents.len() });
        };
        (Command::from_wire(*raw)?, body)
    } else {
        match command_of(id) {
            Some(name) => {
                let mut raw = [0u8; 12];
                raw[..name.len()].copy_from_slice(name.as_bytes());
                (Command::from_wire(raw)?, rest)
            }
            None => {
                log::debug!("ignoring v2 message with unknown short id {id}");
                return Ok(None);
            }
        }
    };
    payload::decode(&command, body).map(Some)
}

fn write_type(message: &NetworkMessage, out: &mut Vec<u8>) -> Result<(), WireError> {
    match short_id(message.cmd()).filter(|_| !matches!(message, NetworkMessage::Unknown { .. })) {
        Some(id) => out.push(id),
        None => {
            let raw = command_bytes(message)?;
            out.push(0);
            out.extend_from_slice(&raw);
        }
    }
    Ok(())
}

fn oversize(message: &NetworkMessage, len: usize, max: usize) -> WireError {
    let command = command_bytes(message).and_then(Command::from_wire).unwrap_or(Command::UNKNOWN);
    WireError::Oversize {
        command,
        length: u32::try_from(len).unwrap_or(u32::MAX),
        max: u32::try_from(max).unwrap_or(u32::MAX),
    }
}

#[cfg(test)]
mod tests;
