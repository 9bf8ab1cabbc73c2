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
    config.session.handshake_timeout = Duration::from_secs(3);
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
    let version = encode(NET, &NetworkMessage::Version(crate::v2::version_message_for_tests())).len();
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

    // The timeouts cut them all: a frame timeout for each announced peer...
    let mut frame_timeouts = 0;
    while frame_timeouts < shook {
        match server.recv_timeout(WAIT).unwrap() {
            Event::Disconnected { reason: peerlink::DisconnectReason::FrameTimeout { received, .. }, .. } => {
                assert_eq!(received, 24 + ROUNDS * TRICKLE);
                frame_timeouts += 1;
            }
            Event::Disconnected { reason, .. } => panic!("{reason}"),
            _ => {}
        }
    }
    // ...and every socket is closed, the others by the handshake timeout.
    for (s, _) in &mut peers {
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
    let took = started.elapsed();
    println!("all {PEERS} cut after {} ms (timeouts 3 s)", took.as_millis());
    assert!(took >= Duration::from_secs(3) && took < Duration::from_secs(10), "{took:?}");
    assert!(server.peers().unwrap().is_empty());
}

/// The event queue is bounded in bytes: with the user not receiving,
/// the reactor stops decoding (and reading) once the queued messages hold
/// `event_bytes_limit`, and every message still arrives, in order, once
/// the user takes them.
#[test]
fn the_event_queue_holds_at_most_its_byte_limit_of_messages() {
    let mut config = listener_config();
    config.event_bytes_limit = 3_000_000;
    let (server, addr) = listener_with(config);
    let client = client();
    let c = client.connect(addr).unwrap();
    assert_eq!(connected(&client), c);
    let s = connected(&server);
    let txs: Vec<_> = (0..10)
        .map(|i| {
            let mut tx = big_tx(1_000_000);
            tx.lock_time = bitcoin::absolute::LockTime::from_consensus(i);
            tx
        })
        .collect();
    for tx in &txs {
        client.send(c, NetworkMessage::Tx(tx.clone())).unwrap();
    }
    // Watch the server decode without receiving its events: 3 MB of
    // queued messages plus the one that crossed the limit, at most.
    let (mut most, deadline) = (0, Instant::now() + Duration::from_secs(2));
    while Instant::now() < deadline {
        let decoded = server.peer_stats(s).unwrap().unwrap().msgs_in;
        most = most.max(decoded);
        assert!(decoded <= 4, "{decoded} messages decoded with 3 MB allowed in the queue");
    }
    assert!(most >= 3, "the queue filled to its limit ({most} decoded)");
    for (i, tx) in txs.iter().enumerate() {
        match message(&server) {
            (peer, NetworkMessage::Tx(got)) => {
                assert_eq!(peer, s);
                assert_eq!(&got, tx, "tx {i} in order");
            }
            (_, other) => panic!("{other:?}"),
        }
    }
}
