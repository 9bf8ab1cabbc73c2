//! The reactor is generic: a non-Bitcoin codec (length-prefixed byte strings)
//! runs on it unchanged.

use std::fmt;

use peerlink::codec::{Codec, Decoded};
use peerlink::{Config, DisconnectReason, Event};

use crate::common::{WAIT, localhost, wait_for};

/// Frames: u32 big-endian length, then that many bytes. At most 1 MiB.
#[derive(Clone, Debug)]
struct LengthPrefixed;

#[derive(Debug)]
struct TooLong(usize);

impl fmt::Display for TooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "frame of {} bytes is too long", self.0)
    }
}
impl std::error::Error for TooLong {}

const MAX: usize = 1 << 20;

impl Codec for LengthPrefixed {
    type Message = Vec<u8>;
    type Error = TooLong;

    fn decode(&mut self, input: &[u8], _out: &mut Vec<u8>) -> Result<Decoded<Vec<u8>>, TooLong> {
        let Some(head) = input.first_chunk::<4>() else { return Ok(Decoded::NeedMore { frame_len: None }) };
        let len = u32::from_be_bytes(*head) as usize;
        if len > MAX {
            return Err(TooLong(len));
        }
        match input.get(4..4 + len) {
            Some(body) => Ok(Decoded::Message { message: body.to_vec(), consumed: 4 + len }),
            None => Ok(Decoded::NeedMore { frame_len: Some(4 + len) }),
        }
    }

    fn encode(&mut self, message: &Vec<u8>, out: &mut Vec<u8>) -> Result<(), TooLong> {
        if message.len() > MAX {
            return Err(TooLong(message.len()));
        }
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        Ok(())
    }

    fn max_frame_len(&self) -> usize {
        4 + MAX
    }
}

#[test]
fn length_prefixed_codec_runs_on_the_reactor() {
    let mut config = Config::new(bitcoin::Network::Regtest);
    config.listen.push(localhost());
    let server = peerlink::start_with_codec(config.clone(), LengthPrefixed).unwrap();
    let addr = server.local_addrs()[0];
    config.listen.clear();
    let client = peerlink::start_with_codec(config, LengthPrefixed).unwrap();
    let peer = client.connect(addr).unwrap();
    wait_for(&client, |e| matches!(e, Event::Connected { .. }).then_some(()));
    let messages: Vec<Vec<u8>> = (0..50u32).map(|i| vec![i as u8; (i as usize) * 100]).collect();
    for m in &messages {
        client.send(peer, m.clone()).unwrap();
    }
    for m in &messages {
        let got = wait_for(&server, |e| match e {
            Event::Message { message, wire_size, .. } => {
                assert_eq!(wire_size, message.len() + 4);
                Some(message)
            }
            _ => None,
        });
        assert_eq!(&got, m);
    }
    // Its own validation disconnects with its own error type.
    let mut raw = std::net::TcpStream::connect(addr).unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    std::io::Write::write_all(&mut raw, &u32::MAX.to_be_bytes()).unwrap();
    let reason = wait_for(&server, |e| match e {
        Event::Disconnected { reason, .. } => Some(reason),
        _ => None,
    });
    assert!(matches!(reason, DisconnectReason::Codec(TooLong(n)) if n == u32::MAX as usize), "{reason:?}");
}
