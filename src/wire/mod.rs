//! The Bitcoin wire format (sans-IO).
//!
//! [`V1Codec`] frames [`NetworkMessage`](bitcoin::p2p::message::NetworkMessage)
//! values in the classic v1 format. The payload helpers in [`payload`] decode a
//! bare payload for a known command, which rust-bitcoin 0.32 does not offer
//! (BIP324 packets carry no v1 header).

use std::fmt;

use bitcoin::p2p::Magic;

pub mod payload;
pub mod v1;

pub use v1::V1Codec;

/// A message command as it appears on the wire: up to 12 printable ASCII
/// characters, NUL-padded.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Command([u8; 12]);

impl Command {
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
        }
    }
}

impl std::error::Error for WireError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WireError::Payload { source, .. } => Some(source),
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
