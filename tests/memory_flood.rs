//! 100 peers flood pings and never read our pongs.
//!
//! Its own test binary (one process, one test), so that the RSS it reads
//! from `/proc/self/status` is this test's alone.

#[allow(dead_code, reason = "shared with the integration binary, which uses all of it")]
#[path = "integration/common.rs"]
mod common;
#[path = "support/memory_common.rs"]
mod memory_common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bitcoin::p2p::message::NetworkMessage;
use peerlink::{Config, Event};

use common::*;
use memory_common::*;

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
