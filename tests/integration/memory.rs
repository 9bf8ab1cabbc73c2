//! Memory under hostile load: peers that flood pings and never read our
//! pongs, and peers that claim huge messages and trickle them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bitcoin::p2p::message::NetworkMessage;
use peerlink::{Config, Event};

use crate::common::*;

/// The process's resident set, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A v1 handshake from a raw socket with a session-mode listener.
fn handshake(s: &mut TcpStream) {
    let version = NetworkMessage::Version(crate::v2::version_message_for_tests());
    write_all(s, &encode(NET, &version));
    write_all(s, &encode(NET, &NetworkMessage::Verack));
}

/// Reads and decodes v1 messages until `n` pongs arrived, checking that
/// their nonces run `0..n` in order (other messages are skipped).
fn read_pongs_in_order(s: &mut TcpStream, n: u64) {
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

/// 100 peers flood pings and never read our pongs. For each, the session
/// stops decoding once its send queue is over the limit, and reading stops
/// once the receive buffer is full: memory stays under what the limits
/// allow per peer, a good peer's ping round trip stays short, and when the
/// flooders start reading, each gets a pong for every ping, in order.
///
/// Its figures are a release build's: a debug build decodes the flood too
/// slowly for the round-trip bound. `.ci/run` runs it with `--release`.
#[test]
#[cfg_attr(debug_assertions, ignore = "needs a release build (see .ci/run)")]
fn ping_floods_pause_reading_and_every_pong_arrives_in_order_later() {
    const FLOODERS: usize = 100;
    const PINGS: u64 = 100_000; // 3.2 MB each: more than the buffers hold
    let (send_limit, receive_limit) = (64 * 1024, 64 * 1024);
    let mut config = Config::new(NET);
    config.transport = peerlink::wire::TransportPolicy::V1Only;
    config.listen.push(localhost());
    config.max_inbound = FLOODERS + 10;
    config.send_buffer_limit = send_limit;
    config.receive_buffer_limit = receive_limit;
    let server = peerlink::start(config).unwrap();
    let addr = server.local_addrs()[0];
    let rss_before = rss_kib();

    // Each flooder writes until its pings are all out or the socket stays
    // full for 300 ms (the reactor stopped reading it). It returns its
    // socket, how many pings it started to write, and the rest of the last
    // one if it was cut (written once the flooder reads again).
    let flood = |addr: SocketAddr| {
        std::thread::spawn(move || {
            // Small socket buffers on our side, so that the kernel holds
            // little of the flood and the reactor's own limits decide.
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            socket.set_recv_buffer_size(4096).unwrap();
            socket.set_send_buffer_size(4096).unwrap();
            socket.connect(&addr.into()).unwrap();
            let mut s: TcpStream = socket.into();
            handshake(&mut s);
            s.set_write_timeout(Some(Duration::from_millis(300))).unwrap();
            let mut sent = 0u64;
            while sent < PINGS {
                let bytes: Vec<u8> = (sent..sent + 100).flat_map(|i| encode(NET, &NetworkMessage::Ping(i))).collect();
                let mut off = 0;
                while off < bytes.len() {
                    match s.write(&bytes[off..]) {
                        Ok(n) => off += n,
                        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                            let started = off.div_ceil(32);
                            let tail = bytes[off..started * 32].to_vec();
                            return (s, sent + started as u64, tail);
                        }
                        Err(e) => panic!("flood write: {e}"),
                    }
                }
                sent += 100;
            }
            (s, sent, Vec::new())
        })
    };
    let flooders: Vec<_> = (0..FLOODERS).map(|_| flood(addr)).collect();
    let mut flooded: Vec<(TcpStream, u64, Vec<u8>)> = flooders.into_iter().map(|t| t.join().unwrap()).collect();
    let stalled = flooded.iter().filter(|(_, sent, _)| *sent < PINGS).count();
    let rss_flood = rss_kib();

    // A good peer's round trip during the flood.
    let mut good = TcpStream::connect(addr).unwrap();
    good.set_read_timeout(Some(WAIT)).unwrap();
    handshake(&mut good);
    let started = Instant::now();
    write_all(&mut good, &encode(NET, &NetworkMessage::Ping(0)));
    read_pongs_in_order(&mut good, 1);
    let rtt = started.elapsed();

    // Per flooder the reactor holds at most: a send queue over the limit by
    // one message, a receive buffer over its limit by one read (64 KiB),
    // each buffer at most doubled by growth, and the link itself.
    let per_peer = 2 * (send_limit + 32) + 2 * (receive_limit + 64 * 1024) + 4096;
    let bound_kib = (FLOODERS * per_peer / 1024) as u64;
    let growth = rss_flood.saturating_sub(rss_before);
    println!(
        "{stalled} of {FLOODERS} flooders stalled (reading paused); RSS grew {growth} KiB (bound {bound_kib} KiB); \
         good peer's ping round trip {} us",
        rtt.as_micros()
    );
    assert!(stalled > 0, "some flood outran the buffers");
    assert!(growth <= bound_kib, "RSS grew {growth} KiB, bound {bound_kib} KiB");
    assert!(rtt < Duration::from_secs(1), "good peer's round trip {rtt:?}");

    // The flooders read: every ping they got out is answered, in order.
    let readers: Vec<_> = flooded
        .drain(..)
        .map(|(mut s, sent, tail)| {
            std::thread::spawn(move || {
                let mut writer = s.try_clone().unwrap();
                let finish = std::thread::spawn(move || {
                    writer.set_write_timeout(None).unwrap();
                    writer.write_all(&tail).unwrap();
                });
                s.set_read_timeout(Some(WAIT)).unwrap();
                read_pongs_in_order(&mut s, sent);
                finish.join().unwrap();
                s
            })
        })
        .collect();
    let _open: Vec<TcpStream> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    assert_eq!(server.peers().unwrap().len(), FLOODERS + 1, "nobody was dropped");
    while let Ok(event) = server.try_recv() {
        assert!(!matches!(event, Event::Disconnected { .. }), "{event:?}");
    }
}
