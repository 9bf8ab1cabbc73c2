//! 1,000 peers claim huge messages and trickle them.
//!
//! Its own test binary (one process, one test), so that the RSS it reads
//! from `/proc/self/status` is this test's alone.

#[allow(dead_code, reason = "shared with the integration binary, which uses all of it")]
#[path = "integration/common.rs"]
mod common;
#[path = "support/memory_common.rs"]
mod memory_common;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bitcoin::p2p::message::NetworkMessage;
use peerlink::{Config, Event};

use common::*;
use memory_common::*;

/// 1,000 peers (the inbound cap raised) each claim a 4,000,000-byte
/// message and trickle its first bytes: the receive buffers follow what
/// arrived, not the claim, so memory stays within a few KiB per peer; the
/// frame timeout cuts the peers that completed their handshake, and the
/// handshake timeout the others.
#[test]
fn trickled_huge_frames_cost_what_arrived_and_the_timeouts_cut_them() {
    const PEERS: usize = 1000;
    const ROUNDS: usize = 5;
    const TRICKLE: usize = 100;
    let mut config = Config::new(NET);
    config.transport = peerlink::wire::TransportPolicy::V1Only;
    config.listen.push(localhost());
    config.max_inbound = PEERS + 10;
    config.frame_timeout = Duration::from_secs(3);
    // Shorter, so that it (not the frame timeout) cuts the peers that
    // never finished their handshake.
    config.session.handshake_timeout = Duration::from_secs(2);
    let server = peerlink::start(config).unwrap();
    let addr = server.local_addrs()[0];
    let rss_before = rss_kib();
    // A `tx` header that claims 4,000,000 bytes; the payload never completes.
    let mut header = encode(NET, &NetworkMessage::Ping(0))[..24].to_vec();
    header[4..16].copy_from_slice(b"tx\0\0\0\0\0\0\0\0\0\0");
    header[16..20].copy_from_slice(&4_000_000u32.to_le_bytes());
    let mut peers: Vec<(TcpStream, bool)> = Vec::with_capacity(PEERS);
    for i in 0..PEERS {
        let mut s = TcpStream::connect(addr).unwrap();
        let shook = i % 2 == 0;
        if shook {
            handshake(&mut s);
        }
        write_all(&mut s, &header);
        peers.push((s, shook));
    }
    let started = Instant::now();
    let shook = PEERS / 2;
    let mut ready = 0;
    while ready < shook {
        if let Event::Ready { .. } = server.recv_timeout(WAIT).unwrap() {
            ready += 1;
        }
    }
    for _ in 0..ROUNDS {
        for (s, _) in &mut peers {
            write_all(s, &[0x55; TRICKLE]);
        }
    }
    // Wait until the reactor read every byte of the handshaken half.
    let version = encode(NET, &NetworkMessage::Version(version_message())).len();
    let per_peer_in = (version + 24 + 24 + ROUNDS * TRICKLE) as u64;
    let deadline = Instant::now() + WAIT;
    loop {
        let ids: Vec<_> = server.peers().unwrap().iter().map(|p| p.peer).collect();
        let total: u64 = ids.iter().filter_map(|id| server.peer_stats(*id).unwrap()).map(|s| s.bytes_in).sum();
        if total == shook as u64 * per_peer_in {
            break;
        }
        assert!(Instant::now() < deadline, "the reactor read {total} bytes");
    }
    let growth = rss_kib().saturating_sub(rss_before);
    // Per peer: the link and its session (3.6 KiB, measured with these
    // peers sending no header), and a receive buffer of at most twice
    // (capacity doubles) what arrived plus one 4 KiB minimum read.
    let received = 24 + ROUNDS * TRICKLE;
    let per_peer = 4096 + 2 * (received + 4096);
    let bound_kib = (PEERS * per_peer / 1024) as u64;
    println!("{PEERS} peers claiming 4,000,000 bytes: RSS grew {growth} KiB (bound {bound_kib} KiB)");
    assert!(growth <= bound_kib, "RSS grew {growth} KiB, bound {bound_kib} KiB");

    // The timeouts cut them all: the frame timeout each handshaken peer,
    // the handshake timeout the others (each reported too).
    let (mut frame_timeouts, mut handshake_timeouts) = (0, 0);
    while frame_timeouts + handshake_timeouts < PEERS {
        match server.recv_timeout(WAIT).unwrap() {
            Event::Disconnected { reason: peerlink::DisconnectReason::FrameTimeout { received, .. }, .. } => {
                assert_eq!(received, 24 + ROUNDS * TRICKLE);
                frame_timeouts += 1;
            }
            Event::Disconnected {
                reason: peerlink::DisconnectReason::Protocol(peerlink::SessionError::HandshakeTimeout(_)),
                ..
            } => handshake_timeouts += 1,
            Event::Disconnected { peer, reason } => panic!("peer {peer}: {}", peerlink::error::Report(&reason)),
            _ => {}
        }
    }
    assert_eq!((frame_timeouts, handshake_timeouts), (shook, PEERS - shook));
    // Every socket is closed.
    for (s, _) in &mut peers {
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
    let took = started.elapsed();
    println!("all {PEERS} cut after {} ms (timeouts: handshake 2 s, frame 3 s)", took.as_millis());
    assert!(took >= Duration::from_secs(3) && took < Duration::from_secs(10), "{took:?}");
    assert!(server.peers().unwrap().is_empty());
}
