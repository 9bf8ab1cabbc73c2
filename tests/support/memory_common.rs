//! Helpers of the memory test binaries (`tests/memory_*.rs`).

#![allow(dead_code, reason = "each binary uses part of it")]

use std::io::Read;
use std::net::TcpStream;

use bitcoin::p2p::message::NetworkMessage;

use crate::common::*;

/// The process's resident set, in KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A v1 handshake from a raw socket with a session-mode listener.
pub fn handshake(s: &mut TcpStream) {
    let version = NetworkMessage::Version(version_message());
    write_all(s, &encode(NET, &version));
    write_all(s, &encode(NET, &NetworkMessage::Verack));
}

/// Reads and decodes v1 messages until `n` pongs arrived, checking that
/// their nonces run `0..n` in order (other messages are skipped).
pub fn read_pongs_in_order(s: &mut TcpStream, n: u64) {
    use peerlink::codec::{Codec, Decoded};
    let mut codec = peerlink::wire::V1Codec::new(NET);
    let (mut buf, mut scratch, mut chunk) = (Vec::new(), Vec::new(), vec![0u8; 65536]);
    let mut next = 0u64;
    while next < n {
        let mut used = 0;
        while let Decoded::Message { message, consumed } = codec.decode(&buf[used..], &mut scratch).unwrap() {
            used += consumed;
            if let NetworkMessage::Pong(nonce) = message {
                assert_eq!(nonce, next, "pongs in order");
                next += 1;
            }
        }
        buf.drain(..used);
        if next == n {
            break;
        }
        let got = s.read(&mut chunk).expect("pongs before the timeout");
        assert!(got > 0, "closed after {next} of {n} pongs");
        buf.extend_from_slice(&chunk[..got]);
    }
}
