//! Fuzzes the v1 decoder the way the reactor drives it.
//!
//! Input layout: `mode`, `seed`, then the body.
//! - `mode` bit 0 clear: structured. The body is a list of records
//!   `[command byte][length byte(s)][payload]`; each becomes a frame with the
//!   regtest magic, a command from [`COMMANDS`], the payload's real length and
//!   (unless the record asks for a corrupt one) its real checksum. This gets
//!   the fuzzer past the header checks and into the payload decoders.
//! - `mode` bit 0 set: raw. The body is fed as-is, after the regtest magic
//!   when bit 1 is set.
//! - `mode` bit 2 set: a small payload limit (`seed` bytes) instead of the
//!   default 4,000,000, to exercise the oversize path.
//!
//! The bytes are fed in chunks whose sizes come from a PRNG seeded by `seed`.
//! Checks: no panic; `NeedMore { frame_len }` never above the limit; every
//! decoded message re-encodes and decodes to an equal message, and known
//! commands re-encode to the same frame (except `version`: its relay flag is
//! read as "non-zero", and a missing one as `true`).

#![no_main]

mod common;

use common::COMMANDS;

use bitcoin::p2p::Magic;
use bitcoin::p2p::message::NetworkMessage;
use libfuzzer_sys::fuzz_target;
use peerlink::codec::{Codec, Decoded};
use peerlink::wire::V1Codec;
use peerlink::wire::v1::{HEADER_LEN, checksum};

const KNOWN: usize = 36;

fn padded(command: &str) -> [u8; 12] {
    let mut raw = [0u8; 12];
    raw[..command.len()].copy_from_slice(command.as_bytes());
    raw
}

fn frame(out: &mut Vec<u8>, command: &str, payload: &[u8], corrupt: bool) {
    out.extend_from_slice(&Magic::REGTEST.to_bytes());
    out.extend_from_slice(&padded(command));
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let mut sum = checksum(payload);
    if corrupt {
        sum[0] ^= 0x01;
    }
    out.extend_from_slice(&sum);
    out.extend_from_slice(payload);
}

/// Record: command byte (low 6 bits: index, bit 6: corrupt checksum, bit 7:
/// two-byte length), then the length, then up to that many payload bytes.
fn structured(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some((&c, rest)) = body.split_first() {
        body = rest;
        let command = COMMANDS[usize::from(c & 0x3f) % COMMANDS.len()];
        let Some(payload) = common::take_record(&mut body, c & 0x80 != 0) else { break };
        frame(&mut out, command, payload, c & 0x40 != 0);
    }
    out
}

fn check_round_trip(codec: &V1Codec, message: &NetworkMessage, original: &[u8]) {
    // A `version` without its relay byte is written back with it: one byte
    // more, which a payload limit set to its length would refuse.
    let codec = match message {
        NetworkMessage::Version(_) => V1Codec::new(Magic::REGTEST),
        _ => codec.clone(),
    };
    let mut encoder = codec.clone();
    let mut bytes = Vec::new();
    encoder.encode(message, &mut bytes).expect("a decoded message re-encodes within the same limit");
    let mut decoder = codec.clone();
    match decoder.decode(&bytes, &mut Vec::new()) {
        Ok(Decoded::Message { message: again, consumed }) => {
            assert_eq!(&again, message, "decode(encode(m)) != m");
            assert_eq!(consumed, bytes.len());
        }
        other => panic!("re-encoded {message:?} did not decode: {other:?}"),
    }
    let command = &original[4..16];
    let known = COMMANDS[..KNOWN].iter().any(|c| padded(c) == command);
    if !known || command != padded("version") {
        assert_eq!(bytes, original, "frame did not re-encode identically");
    } else {
        // A missing relay byte is read as `true` and written back, so the
        // frame may grow by one byte.
        assert!(bytes.len() == original.len() || bytes.len() == original.len() + 1);
        assert_eq!(bytes[..16], original[..16]);
    }
}

fn run(data: &[u8]) {
    let Some((&[mode, seed], body)) = data.split_first_chunk::<2>() else { return };
    let mut codec = V1Codec::new(Magic::REGTEST);
    if mode & 0x04 != 0 {
        codec = codec.with_max_payload(u32::from(seed));
    }
    let bytes = if mode & 0x01 == 0 {
        structured(body)
    } else {
        let mut bytes = Vec::with_capacity(body.len() + 4);
        if mode & 0x02 != 0 {
            bytes.extend_from_slice(&Magic::REGTEST.to_bytes());
        }
        bytes.extend_from_slice(body);
        bytes
    };

    let max_frame = codec.max_frame_len();
    let prototype = codec.clone();
    let mut rng = u32::from(seed) | u32::from(mode) << 8 | 0x9e37_0000;
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    'feed: while fed < bytes.len() {
        // xorshift32: chunk sizes 1..=64 most of the time, sometimes the rest.
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        let n = if rng % 8 == 0 { bytes.len() - fed } else { (rng as usize % 64 + 1).min(bytes.len() - fed) };
        buf.extend_from_slice(&bytes[fed..fed + n]);
        fed += n;
        loop {
            let mut out = Vec::new();
            match codec.decode(&buf, &mut out) {
                Ok(Decoded::NeedMore { frame_len }) => {
                    match frame_len {
                        Some(len) => {
                            assert!(len <= max_frame, "frame_len {len} above the limit {max_frame}");
                            assert!(len >= HEADER_LEN && len > buf.len());
                        }
                        None => assert!(buf.len() < HEADER_LEN),
                    }
                    break;
                }
                Ok(Decoded::Message { message, consumed }) => {
                    assert!(consumed >= HEADER_LEN && consumed <= buf.len() && consumed <= max_frame);
                    check_round_trip(&prototype, &message, &buf[..consumed]);
                    buf.drain(..consumed);
                }
                Ok(Decoded::Consumed(n)) => panic!("v1 never returns Consumed({n})"),
                Err(e) => {
                    let _ = e.to_string();
                    break 'feed; // the reactor disconnects the peer
                }
            }
            assert!(out.is_empty());
        }
    }
}

fuzz_target!(|data: &[u8]| run(data));
