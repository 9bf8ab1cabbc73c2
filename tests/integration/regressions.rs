//! One regression test per known bug of similar libraries
//! (../shared/DESIGN.md §5), named after the bug.

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use bitcoin::p2p::message::NetworkMessage;
use peerlink::wire::WireError;
use peerlink::{Disconnect, DisconnectReason, Event};

use crate::common::*;
use crate::hostile::{REGTEST, cmd, frame, hostile};

/// §5.1: disconnecting a peer whose readiness is in the same poll batch
/// panicked with "token → connection mapping nonexistent".
#[test]
fn bug1_disconnect_with_pending_readiness_does_not_panic() {
    let (server, addr) = listener();
    const PEERS: usize = 24;
    let ping = encode(NET, &NetworkMessage::Ping(5)).repeat(2000);
    let blasters: Vec<_> = (0..PEERS)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            let bytes = ping.clone();
            std::thread::spawn(move || {
                use std::io::Write;
                // Writes until the reactor closes the socket.
                while s.write_all(&bytes).is_ok() {}
            })
        })
        .collect();
    let mut gone = std::collections::HashSet::new();
    let mut asked = std::collections::HashSet::new();
    while gone.len() < PEERS {
        match next_event(&server) {
            Event::Connected { .. } => {}
            Event::Message { peer, .. } => {
                assert!(!gone.contains(&peer), "event for a peer already reported gone");
                if asked.insert(peer) {
                    // Data from this peer keeps arriving: its readiness is
                    // likely in the batch the reactor is processing.
                    server.disconnect(peer, Disconnect::Now).unwrap();
                    // In flight, or refused at once: either way handed back.
                    let _ = server.send(peer, NetworkMessage::Ping(1));
                    server.disconnect(peer, Disconnect::Now).unwrap();
                }
            }
            Event::Disconnected { peer, reason } => {
                assert!(matches!(reason, DisconnectReason::Requested), "{reason:?}");
                assert!(gone.insert(peer), "disconnected twice");
            }
            Event::SendRejected { peer, .. } => assert!(asked.contains(&peer)),
            other => panic!("unexpected {other:?}"),
        }
    }
    for b in blasters {
        b.join().unwrap();
    }
    // The reactor survived and still serves new peers.
    let client = client();
    let c = client.connect(addr).unwrap();
    connected(&client);
    let s = connected(&server);
    assert_round_trip(&client, c, &server, 3);
    let _ = s;
}

/// §5.2: EMFILE/ENFILE in the accept loop spun at 100% CPU and stalled every
/// peer. Runs in a child process with a low descriptor limit.
#[test]
fn bug2_emfile_on_accept_backs_off_and_keeps_serving() {
    if std::env::var_os("PEERLINK_EMFILE_CHILD").is_some() {
        return emfile_child();
    }
    let exe = std::env::current_exe().unwrap();
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 256 && exec \"$0\" \"$@\"")
        .arg(exe)
        .args(["regressions::bug2_emfile_on_accept_backs_off_and_keeps_serving", "--exact", "--test-threads=1"])
        .env("PEERLINK_EMFILE_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "child failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("1 passed"), "the child did not run the test:\n{stdout}");
}

/// CPU time of this process in clock ticks, read from a descriptor opened
/// beforehand (no new descriptor can be opened during the test).
fn cpu_ticks(stat: &mut std::fs::File) -> u64 {
    use std::io::Seek;
    stat.rewind().unwrap();
    let mut stat_text = String::new();
    stat.read_to_string(&mut stat_text).unwrap();
    let stat = stat_text;
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 (utime, stime), counted from the state field (3).
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn emfile_child() {
    let (client, c, server, _) = pair();
    let addr = server.local_addrs()[0];
    let mut stat = std::fs::File::open("/proc/self/stat").unwrap();
    // Use up every descriptor.
    let mut hogs = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => hogs.push(f),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(24), "expected EMFILE, got {e}");
                break;
            }
        }
    }
    // Free one for the connecting socket: the reactor cannot accept it.
    hogs.pop();
    let _pending = TcpStream::connect(addr).unwrap();
    // The connection waits in the backlog while accept() fails with EMFILE.
    let before = cpu_ticks(&mut stat);
    let start = std::time::Instant::now();
    let mut trips = 0u64;
    while start.elapsed() < Duration::from_millis(700) {
        // Existing peers are still served.
        assert_round_trip(&client, c, &server, trips);
        trips += 1;
        // Pace the round trips (so the CPU measured is the reactor's, not
        // ours): the listener must report nothing else meanwhile.
        if let Ok(event) = server.recv_timeout(Duration::from_millis(20)) {
            panic!("unexpected event while out of descriptors: {event:?}");
        }
    }
    let used = cpu_ticks(&mut stat) - before;
    // A spinning reactor burns ~70 ticks (100 Hz) in 0.7 s.
    assert!(used < 30, "reactor used {used} ticks of CPU in 0.7 s while accept() failed");
    assert!(trips > 5);
    // With descriptors available again the backlog is accepted.
    hogs.truncate(hogs.len().saturating_sub(8));
    connected(&server);
    println!("emfile: {trips} round trips, {used} CPU ticks while out of descriptors");
}

/// §5.3: an oversize frame, or one that never completes, livelocked the
/// reactor at 100% CPU. Both disconnect the peer.
#[test]
fn bug3_oversize_frame_disconnects() {
    let mut header = frame(REGTEST, &cmd("tx"), &[]);
    header[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    let e = hostile(header);
    assert!(matches!(e, WireError::Oversize { length: u32::MAX, .. }), "{e:?}");
}

#[test]
fn bug3_never_completing_frame_times_out() {
    let mut config = listener_config();
    config.frame_timeout = Duration::from_millis(300);
    let (server, addr) = listener_with(config);
    let client = client();
    let c = client.connect(addr).unwrap();
    connected(&client);
    let good = connected(&server);
    let (mut raw, bad) = raw_peer(&server, addr);
    let mut f = frame(REGTEST, &cmd("tx"), &[0u8; 1000]);
    f.truncate(24 + 10);
    write_all(&mut raw, &f);
    client.send(c, NetworkMessage::Ping(1)).unwrap();
    let mut served = false;
    wait_for(&server, |e| match e {
        Event::Message { peer, message: NetworkMessage::Ping(n), .. } => {
            assert_eq!(peer, good);
            served = true;
            client.send(c, NetworkMessage::Ping(n + 1)).unwrap();
            None
        }
        Event::Disconnected { peer, reason: DisconnectReason::FrameTimeout { received, .. } } => {
            assert_eq!(peer, bad);
            assert_eq!(received, 34);
            Some(())
        }
        other => panic!("unexpected {other:?}"),
    });
    assert!(served, "the good peer was served while the bad frame was pending");
    let mut buf = [0u8; 1];
    assert_eq!(raw.read(&mut buf).unwrap_or(0), 0, "socket closed");
}

/// §5.4: dropping the handle leaked the reactor thread and its sockets.
#[test]
fn bug4_dropping_last_handle_closes_everything() {
    let (server, addr) = listener();
    let (mut raw, _) = raw_peer(&server, addr);
    let clone = server.clone();
    drop(server);
    // A clone keeps the reactor alive.
    assert!(clone.is_running());
    drop(clone);
    // The peer's socket is closed by the reactor...
    assert!(read_to_close(&mut raw).is_empty());
    // ...and so is the listener.
    assert!(TcpStream::connect(addr).is_err(), "listener still accepting");
}

#[test]
fn bug4_shutdown_joins_and_ends_event_stream() {
    let (server, _addr) = listener();
    server.shutdown();
    assert!(!server.is_running());
    assert!(server.recv().is_none());
}

/// §5.5: a wrong magic was delivered as a valid message.
#[test]
fn bug5_wrong_magic_disconnects() {
    let mainnet_ping = encode(bitcoin::Network::Bitcoin, &NetworkMessage::Ping(3));
    let e = hostile(mainnet_ping);
    assert!(matches!(e, WireError::BadMagic { .. }), "{e:?}");
}

/// §5.8: the address bound for port 0 was not discoverable.
#[test]
fn bug8_port_zero_address_is_discoverable() {
    let (server, addr) = listener();
    assert!(addr.ip().is_loopback());
    assert_ne!(addr.port(), 0);
    let _s = TcpStream::connect(addr).unwrap();
    connected(&server);
}

/// Review finding: a peer that makes us answer (pings) while reading slowly
/// grew our send buffer without limit. Reading now pauses while the send
/// queue is over its limit, as Core's fPauseSend.
#[test]
fn ping_flood_with_a_slow_reader_cannot_grow_our_send_queue() {
    let mut config = crate::session_test_config();
    config.listen.push(localhost());
    config.send_buffer_limit = 64 * 1024;
    config.transport = peerlink::wire::TransportPolicy::V1Only;
    let (server, addr) = listener_with(config);
    let mut raw = TcpStream::connect(addr).unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    // Handshake by hand, then pings that we never read the answers of.
    let version = version_message();
    write_all(&mut raw, &encode(NET, &NetworkMessage::Version(version)));
    write_all(&mut raw, &encode(NET, &NetworkMessage::Verack));
    let peer = wait_for(&server, |e| match e {
        Event::Ready { peer, .. } => Some(peer),
        _ => None,
    });
    let ping = encode(NET, &NetworkMessage::Ping(1));
    let flood = ping.repeat(4096); // 128 KiB per write
    let mut writer = raw.try_clone().unwrap();
    // A blocking write that makes no progress for a while means TCP is
    // pushing back: the reactor has stopped reading us.
    writer.set_write_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut sent = 0usize;
    let mut stalled_writes = 0;
    while stalled_writes < 3 && sent < 512 * 1024 * 1024 {
        match std::io::Write::write(&mut writer, &flood) {
            Ok(n) => {
                sent += n;
                stalled_writes = 0;
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                stalled_writes += 1;
            }
            Err(e) => panic!("write failed: {e}"),
        }
    }
    assert!(sent < 512 * 1024 * 1024, "the reactor kept reading a peer that does not read");
    let stats = server.peer_stats(peer).unwrap().expect("still connected");
    assert!(stats.send_queue <= 64 * 1024 + 4096, "send queue {} over the limit plus one message", stats.send_queue);
}

/// Review finding: our own periodic ping, queued while the peer had been
/// silent for longer than the stall timeout, got the peer dropped with a
/// false SendStalled.
#[test]
fn our_ping_to_a_quiet_peer_is_not_a_stall() {
    let mut config = crate::session_test_config();
    config.listen.push(localhost());
    config.session.ping_interval = Duration::from_millis(700);
    config.stall_timeout = Duration::from_millis(300);
    let (server, addr) = listener_with(config);
    let mut client_config = crate::session_test_config();
    client_config.session.ping_interval = Duration::from_secs(3600);
    let client = peerlink::start(client_config).unwrap();
    client.connect(addr).unwrap();
    let peer = wait_for(&server, |e| match e {
        Event::Ready { peer, .. } => Some(peer),
        _ => None,
    });
    // Several ping intervals pass; the quiet but healthy client must stay.
    let until = std::time::Instant::now() + Duration::from_millis(2500);
    while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
        if let Ok(Event::Disconnected { reason, .. }) = server.recv_timeout(left) {
            panic!("healthy peer dropped: {reason:?}");
        }
    }
    let stats = server.peer_stats(peer).unwrap().expect("still connected");
    assert!(stats.last_ping.is_some(), "pings were answered");
}
