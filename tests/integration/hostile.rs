//! A hostile peer for each validation rule of the v1 codec: it is
//! disconnected with the right reason while another peer keeps working.

use bitcoin::hashes::{Hash, sha256d};
use bitcoin::p2p::message::NetworkMessage;
use peerlink::wire::WireError;
use peerlink::{DisconnectReason, Event, PeerId};

use crate::common::*;

pub fn frame(magic: [u8; 4], command: &[u8; 12], payload: &[u8]) -> Vec<u8> {
    let sum = sha256d::Hash::hash(payload);
    let mut f = magic.to_vec();
    f.extend_from_slice(command);
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(&sum.as_byte_array()[..4]);
    f.extend_from_slice(payload);
    f
}

pub fn cmd(s: &str) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[..s.len()].copy_from_slice(s.as_bytes());
    c
}

pub const REGTEST: [u8; 4] = [0xfa, 0xbf, 0xb5, 0xda];

/// Sends `bytes` from a raw peer while a good peer exchanges pings with the
/// same listener, and returns the hostile peer's disconnect reason.
pub fn hostile(bytes: Vec<u8>) -> WireError {
    let (server, addr) = listener();
    let client = client();
    let good = client.connect(addr).unwrap();
    connected(&client);
    let good_on_server = connected(&server);
    let (mut raw, bad) = raw_peer(&server, addr);
    // Valid traffic first, so the violation happens mid-stream.
    write_all(&mut raw, &encode(NET, &NetworkMessage::Ping(1)));
    write_all(&mut raw, &bytes);
    let mut reason = None;
    let mut good_pings = 0;
    client.send(good, NetworkMessage::Ping(100)).unwrap();
    while reason.is_none() || good_pings < 3 {
        match next_event(&server) {
            Event::Message { peer, message: NetworkMessage::Ping(n), .. } if peer == good_on_server => {
                good_pings += 1;
                if good_pings < 3 {
                    client.send(good, NetworkMessage::Ping(n + 1)).unwrap();
                }
            }
            Event::Message { peer, message, .. } if peer == bad => {
                assert_eq!(message, NetworkMessage::Ping(1), "only the valid message is delivered");
            }
            Event::Disconnected { peer, reason: r } => {
                assert_eq!(peer, bad, "only the hostile peer is disconnected");
                // Bytes the codec refused are provably invalid.
                assert_eq!(r.fault(), peerlink::Fault::Misbehaviour, "{r}");
                match r {
                    DisconnectReason::Codec(e) => reason = Some(e),
                    other => panic!("wrong reason: {other}"),
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // The hostile socket is closed.
    assert!(read_to_close(&mut raw).is_empty());
    assert_round_trip(&client, good, &server, 999);
    let _: PeerId = bad;
    reason.unwrap()
}

#[test]
fn wrong_magic() {
    let e = hostile(frame([0xf9, 0xbe, 0xb4, 0xd9], &cmd("ping"), &7u64.to_le_bytes()));
    assert!(matches!(e, WireError::BadMagic { .. }), "{e:?}");
    assert!(e.to_string().contains("magic"));
}

#[test]
fn non_printable_command() {
    let e = hostile(frame(REGTEST, b"pi\x01g\0\0\0\0\0\0\0\0", &7u64.to_le_bytes()));
    assert!(matches!(e, WireError::BadCommand { .. }), "{e:?}");
}

#[test]
fn bytes_after_command_nul() {
    let e = hostile(frame(REGTEST, b"ping\0x\0\0\0\0\0\0", &7u64.to_le_bytes()));
    assert!(matches!(e, WireError::BadCommand { .. }), "{e:?}");
}

#[test]
fn oversize_length_is_refused_at_the_header() {
    // Only the header: the payload never comes, yet the peer is dropped.
    let mut header = frame(REGTEST, &cmd("block"), &[]);
    header[16..20].copy_from_slice(&4_000_001u32.to_le_bytes());
    let e = hostile(header);
    assert!(matches!(e, WireError::Oversize { length: 4_000_001, max: 4_000_000, .. }), "{e:?}");
}

#[test]
fn bad_checksum() {
    let mut f = frame(REGTEST, &cmd("ping"), &7u64.to_le_bytes());
    f[20] ^= 0xff;
    let e = hostile(f);
    assert!(matches!(e, WireError::BadChecksum { .. }), "{e:?}");
}

#[test]
fn undecodable_payload() {
    // A `tx` that ends in the middle of its first input.
    let e = hostile(frame(REGTEST, &cmd("tx"), &[2, 0, 0, 0, 1, 0xaa, 0xbb]));
    assert!(matches!(e, WireError::Payload { .. }), "{e:?}");
}

#[test]
fn trailing_bytes() {
    let e = hostile(frame(REGTEST, &cmd("ping"), &[1, 2, 3, 4, 5, 6, 7, 8, 9]));
    assert!(matches!(e, WireError::TrailingBytes { extra: 1, .. }), "{e:?}");
}
