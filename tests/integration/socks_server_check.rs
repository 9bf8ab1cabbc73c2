//! Checks of the scripted SOCKS5 server in tests/support/socks_server.rs,
//! driven with raw bytes, so that tests of peerlink's proxy support stand on
//! a server known to speak the protocol.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crate::common::WAIT;
use crate::socks_server::{Auth, Behaviour, LeakListener, Options, Request, RequestedTarget, SocksServer};

/// A loopback echo peer: accepts one connection, sends back the peer address
/// it saw, then echoes until the connection closes.
fn echo_peer() -> (SocketAddr, mpsc::Receiver<SocketAddr>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, seen_rx) = mpsc::channel();
    thread::spawn(move || {
        let (mut stream, peer) = listener.accept().unwrap();
        seen.send(peer).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0; 256];
        while let Ok(n @ 1..) = stream.read(&mut buf) {
            stream.write_all(&buf[..n]).unwrap();
        }
    });
    (addr, seen_rx)
}

fn connect(server: &SocksServer) -> TcpStream {
    let stream = TcpStream::connect(server.addr()).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
}

fn read_n(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    stream.read_exact(&mut buf).unwrap();
    buf
}

/// Reads until the server closes; fails if it sends anything first.
fn assert_closed(stream: &mut TcpStream) {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0; 16];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected the server to close, got {other:?}"),
    }
}

/// Checks a success reply: bound address = the one the target saw.
fn assert_success(reply: &[u8], seen: SocketAddr) {
    let SocketAddr::V4(seen) = seen else { panic!("the echo peer is on IPv4") };
    let mut expected = vec![5, 0, 0, 1];
    expected.extend_from_slice(&seen.ip().octets());
    expected.extend_from_slice(&seen.port().to_be_bytes());
    assert_eq!(reply, expected);
}

fn assert_echoes(stream: &mut TcpStream) {
    stream.write_all(b"through the proxy").unwrap();
    assert_eq!(read_n(stream, 17), b"through the proxy");
}

#[test]
fn socks_server_relays_an_ip_target_with_any_password() {
    let (target, seen) = echo_peer();
    let server = SocksServer::start(Options::default());
    let mut client = connect(&server);

    client.write_all(&[5, 2, 0, 2]).unwrap();
    assert_eq!(read_n(&mut client, 2), [5, 2], "AnyPassword prefers 0x02");
    client.write_all(&[1, 4, b'u', b's', b'e', b'r', 3, b'p', b'w', b'd']).unwrap();
    assert_eq!(read_n(&mut client, 2), [1, 0]);
    let mut connect = vec![5, 1, 0, 1, 127, 0, 0, 1];
    connect.extend_from_slice(&target.port().to_be_bytes());
    client.write_all(&connect).unwrap();
    assert_success(&read_n(&mut client, 10), seen.recv_timeout(WAIT).unwrap());
    assert_echoes(&mut client);

    assert_eq!(server.accepted(), 1);
    assert_eq!(
        server.requests(),
        [Request {
            methods: vec![0, 2],
            credentials: Some((b"user".to_vec(), b"pwd".to_vec())),
            target: RequestedTarget::Ip(Ipv4Addr::LOCALHOST.into()),
            port: target.port(),
        }]
    );
    drop(server);
    assert_closed(&mut client);
}

#[test]
fn socks_server_resolves_a_name_target() {
    let (target, seen) = echo_peer();
    let server = SocksServer::start(Options::default());
    let mut client = connect(&server);

    client.write_all(&[5, 1, 0]).unwrap();
    assert_eq!(read_n(&mut client, 2), [5, 0], "AnyPassword takes 0x00 when 0x02 is not offered");
    let mut connect = vec![5, 1, 0, 3, 9];
    connect.extend_from_slice(b"localhost");
    connect.extend_from_slice(&target.port().to_be_bytes());
    client.write_all(&connect).unwrap();
    assert_success(&read_n(&mut client, 10), seen.recv_timeout(WAIT).unwrap());
    assert_echoes(&mut client);

    assert_eq!(
        server.wait_requests(1, WAIT),
        [Request {
            methods: vec![0],
            credentials: None,
            target: RequestedTarget::Name("localhost".into()),
            port: target.port(),
        }]
    );
}

#[test]
fn socks_server_relay_answers_refused_for_a_closed_port() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let server = SocksServer::start(Options { auth: Auth::NoneOnly, ..Options::default() });
    let mut client = connect(&server);

    client.write_all(&[5, 1, 0]).unwrap();
    assert_eq!(read_n(&mut client, 2), [5, 0]);
    let mut connect = vec![5, 1, 0, 1, 127, 0, 0, 1];
    connect.extend_from_slice(&closed.port().to_be_bytes());
    client.write_all(&connect).unwrap();
    assert_eq!(read_n(&mut client, 10), [5, 5, 0, 1, 0, 0, 0, 0, 0, 0]);
    assert_closed(&mut client);
}

#[test]
fn socks_server_refuses_wrong_credentials_and_unoffered_methods() {
    let auth = Auth::Password { username: b"alice".to_vec(), password: b"secret".to_vec() };
    let server = SocksServer::start(Options { auth, ..Options::default() });

    let mut client = connect(&server);
    client.write_all(&[5, 1, 2]).unwrap();
    assert_eq!(read_n(&mut client, 2), [5, 2]);
    client.write_all(&[1, 5, b'a', b'l', b'i', b'c', b'e', 5, b'w', b'r', b'o', b'n', b'g']).unwrap();
    let status = read_n(&mut client, 2);
    assert_eq!(status[0], 1);
    assert_ne!(status[1], 0, "wrong credentials must fail");
    assert_closed(&mut client);

    let mut client = connect(&server);
    client.write_all(&[5, 1, 0]).unwrap();
    assert_eq!(read_n(&mut client, 2), [5, 0xFF], "Password does not take 0x00");
    assert_closed(&mut client);

    assert_eq!(server.wait_accepted(2, WAIT), 2);
    assert!(server.requests().is_empty());
}

#[test]
fn socks_server_answers_the_scripted_reply_code() {
    let server = SocksServer::start(Options { behaviour: Behaviour::Reply(0x04), ..Options::default() });
    let mut client = connect(&server);

    client.write_all(&[5, 1, 0]).unwrap();
    assert_eq!(read_n(&mut client, 2), [5, 0]);
    let mut connect = vec![5, 1, 0, 4];
    connect.extend_from_slice(&[0; 15]);
    connect.extend_from_slice(&[1, 0x20, 0x8d]);
    client.write_all(&connect).unwrap();
    assert_eq!(read_n(&mut client, 10), [5, 4, 0, 1, 0, 0, 0, 0, 0, 0]);
    assert_closed(&mut client);
    assert_eq!(
        server.requests(),
        [Request {
            methods: vec![0],
            credentials: None,
            target: RequestedTarget::Ip("::1".parse().unwrap()),
            port: 8333,
        }]
    );
}

#[test]
fn socks_server_silent_after_greeting_records_the_request_and_closes_on_drop() {
    let server = SocksServer::start(Options { behaviour: Behaviour::SilentAfterGreeting, ..Options::default() });
    let mut client = connect(&server);

    client.write_all(&[5, 1, 0]).unwrap();
    assert_eq!(read_n(&mut client, 2), [5, 0]);
    client.write_all(&[5, 1, 0, 3, 11]).unwrap();
    client.write_all(b"example.com").unwrap();
    client.write_all(&8333u16.to_be_bytes()).unwrap();
    let requests = server.wait_requests(1, WAIT);
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].target, RequestedTarget::Name("example.com".into()));

    client.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let err = client.read(&mut [0; 16]).expect_err("no answer to the CONNECT");
    assert!(matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut), "{err}");
    drop(server);
    assert_closed(&mut client);
}

#[test]
fn socks_server_close_after_greeting_sends_nothing() {
    let server = SocksServer::start(Options { behaviour: Behaviour::CloseAfterGreeting, ..Options::default() });
    let mut client = connect(&server);
    client.write_all(&[5, 1, 0]).unwrap();
    assert_closed(&mut client);
    assert!(server.requests().is_empty());
}

#[test]
fn socks_server_black_hole_holds_connections_silently_until_dropped() {
    let server = SocksServer::start(Options { behaviour: Behaviour::BlackHole, ..Options::default() });
    let mut clients: Vec<TcpStream> = (0..3).map(|_| connect(&server)).collect();
    assert_eq!(server.wait_accepted(3, WAIT), 3);

    let client = &mut clients[0];
    client.write_all(&[5, 1, 0]).unwrap();
    client.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let err = client.read(&mut [0; 16]).expect_err("a black hole never answers");
    assert!(matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut), "{err}");

    drop(server);
    for client in &mut clients {
        assert_closed(client);
    }
}

#[test]
fn socks_server_leak_listener_counts_connections() {
    let leak = LeakListener::bind(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    assert_eq!(leak.addr().ip(), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    assert_eq!(leak.accepted(), 0);
    let mut stream = TcpStream::connect(leak.addr()).unwrap();
    assert_eq!(leak.wait_accepted(1, WAIT), 1);
    assert_closed(&mut stream);
    assert_eq!(leak.accepted(), 1);
}

#[test]
fn socks_server_delays_each_reply() {
    let delay = Duration::from_millis(150);
    let server = SocksServer::start(Options { behaviour: Behaviour::Reply(0x01), delay, ..Options::default() });
    let mut client = connect(&server);

    let start = std::time::Instant::now();
    client.write_all(&[5, 1, 0]).unwrap();
    assert_eq!(read_n(&mut client, 2), [5, 0]);
    client.write_all(&[5, 1, 0, 1, 127, 0, 0, 1, 0x20, 0x8d]).unwrap();
    assert_eq!(read_n(&mut client, 10), [5, 1, 0, 1, 0, 0, 0, 0, 0, 0]);
    assert!(start.elapsed() >= 2 * delay, "two replies, each after the delay: {:?}", start.elapsed());
}
