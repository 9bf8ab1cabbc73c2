//! The SOCKS5 state of a link (`Proxying`), and an attempt moving on to the
//! next resolved address: byte vectors and a fake clock, no sockets.

use super::*;
use crate::reactor::dial::{Dial, Tunnel};
use crate::socks5::{self, Auth, Handshake, ProxyError, ProxyFailure, ReplyCode, Socks5Error, Stage};
use crate::target::Target;

fn proxy() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9050))
}

fn onion() -> Target {
    "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion:8333".parse().expect("valid onion")
}

/// An outbound link to `target` through the proxy, as the reactor starts
/// it, with the connect deadline `t0 + connect_timeout`.
fn proxied(env: &mut Env<Raw>, target: Target, policy: TransportPolicy) -> Link<BitcoinCodec, Raw> {
    let name = socks5::Target::name(target.host(), target.port()).expect("a valid name");
    let tunnel = Tunnel { proxy: proxy(), handshake: Box::new(Handshake::new(name, Auth::None)) };
    let deadline = env.t0 + env.limits.connect_timeout;
    let dial = Dial { target, deadline, rest: Vec::new(), tunnel: Some(tunnel) };
    let gate = Arc::new(Gate::new(64));
    Link::new(
        PeerId(1),
        Direction::Outbound,
        proxy(),
        None,
        codec(policy),
        gate,
        VecDeque::new(),
        [1; 32],
        Some(dial),
        &mut env.cx(),
    )
    .expect("the link starts")
}

/// The proxy's side of the exchange up to its `CONNECT` reply, which is
/// followed by `after` (the peer's first bytes).
fn proxy_connects(
    link: &mut Link<BitcoinCodec, Raw>,
    env: &mut Env<Raw>,
    after: &[u8],
) -> Result<(), DisconnectReason<<Raw as Protocol>::Stack>> {
    assert_eq!(take(link, env), [5, 1, 0], "the greeting, before any byte of the codec");
    link.handle_input(&[5, 0], &mut env.cx())?;
    let request = take(link, env);
    assert_eq!(request[..5], [5, 1, 0, 3, 62], "CONNECT to the onion name (62 bytes)");
    let mut reply = vec![5, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    reply.extend_from_slice(after);
    link.handle_input(&reply, &mut env.cx())
}

#[test]
fn the_socks5_handshake_runs_before_the_transport_and_hands_over_the_peers_first_bytes() {
    let mut env = Env::new(Raw::new());
    let mut link = proxied(&mut env, onion(), TransportPolicy::V1Only);
    send(&mut link, &mut env, NetworkMessage::Ping(7));
    link.handle_connected(local(), &mut env.cx());
    assert_eq!(link.state(), State::Proxying);
    assert!(env.events.is_empty(), "nothing is announced while the proxy works");
    // The peer's verack arrives in the same read as the proxy's reply.
    proxy_connects(&mut link, &mut env, &frame(&NetworkMessage::Verack)).expect("the proxy connects");
    assert_eq!(link.state(), State::Ready);
    match env.events.as_slice() {
        [Event::Connected { remote, .. }, Event::Message { message: NetworkMessage::Verack, .. }] => {
            assert_eq!(*remote, proxy(), "the TCP peer is the proxy");
        }
        other => panic!("expected Connected then the verack: {other:?}"),
    }
    assert_eq!(decode_v1(&take(&mut link, &mut env)), [NetworkMessage::Ping(7)], "held messages go to the peer");
    let info = link.info(&Raw::new());
    assert_eq!((info.target, info.proxy), (onion(), Some(proxy())));
    let stats = link.stats(&Raw::new());
    assert_eq!(stats.bytes_in, 24, "the proxy's bytes are not the peer's");
}

#[test]
fn the_connect_deadline_covers_the_proxy_handshake() {
    let mut env = Env::new(Raw::new());
    let mut link = proxied(&mut env, onion(), TransportPolicy::V1Only);
    let connect = env.limits.connect_timeout;
    env.at(connect - ms(500));
    link.handle_connected(local(), &mut env.cx());
    assert_eq!(take(&mut link, &mut env), [5, 1, 0]);
    assert_eq!(link.poll_timeout(), Some(env.t0 + connect), "connecting to the proxy did not restart the clock");
    env.at(connect);
    let end = expire(&mut link, &mut env);
    assert!(matches!(link.close(end, &mut factory(TransportPolicy::V1Only), &mut env.cx()), Closed::Reported));
    match env.events.as_slice() {
        [Event::ConnectFailed { target, error, .. }] => {
            assert_eq!(*target, onion());
            assert!(
                matches!(error, ConnectError::Proxy(ProxyError { proxy: p, kind: ProxyFailure::Timeout { stage: Some(Stage::Greeting), after } }) if *p == proxy() && *after == connect),
                "{error:?}"
            );
            assert_eq!(
                crate::error::Report(error).to_string(),
                "proxy 127.0.0.1:9050: no answer to the method selection within 5000 ms"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_refusing_proxy_fails_the_attempt_with_its_reply_and_hands_back_held_messages() {
    let mut env = Env::new(Raw::new());
    let mut link = proxied(&mut env, onion(), TransportPolicy::V1Only);
    send(&mut link, &mut env, NetworkMessage::Ping(1));
    link.handle_connected(local(), &mut env.cx());
    assert_eq!(take(&mut link, &mut env), [5, 1, 0]);
    link.handle_input(&[5, 0], &mut env.cx()).expect("method chosen");
    take(&mut link, &mut env);
    let end = link.handle_input(&[5, 0xF0], &mut env.cx()).expect_err("descriptor not found");
    assert!(matches!(link.close(end.into(), &mut factory(TransportPolicy::V1Only), &mut env.cx()), Closed::Reported));
    match env.events.as_slice() {
        [Event::SendRejected { reason: SendError::Disconnected, .. }, Event::ConnectFailed { error, .. }] => {
            let code = ReplyCode::OnionDescriptorNotFound;
            assert!(
                matches!(error, ConnectError::Proxy(ProxyError { kind: ProxyFailure::Socks5(Socks5Error::Reply(c)), .. }) if *c == code)
            );
            assert_eq!(crate::error::Report(error).to_string(), format!("proxy 127.0.0.1:9050: {code}"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_proxy_that_closes_mid_handshake_says_where() {
    let mut env = Env::new(Raw::new());
    let mut link = proxied(&mut env, onion(), TransportPolicy::V1Only);
    link.handle_connected(local(), &mut env.cx());
    take(&mut link, &mut env);
    let end = link.handle_eof(&mut env.cx()).expect_err("the proxy closed");
    link.close(end.into(), &mut factory(TransportPolicy::V1Only), &mut env.cx());
    match env.events.as_slice() {
        [Event::ConnectFailed { error, .. }] => {
            assert!(
                matches!(
                    error,
                    ConnectError::Proxy(ProxyError {
                        kind: ProxyFailure::Socks5(Socks5Error::Closed(Stage::Greeting)),
                        ..
                    })
                ),
                "{error:?}"
            );
        }
        other => panic!("{other:?}"),
    }
}

/// A v2 attempt through the proxy that the peer closes silently is retried
/// (the reactor then routes the retry through the proxy again).
#[test]
fn a_silent_v2_peer_behind_the_proxy_is_retried_as_v1() {
    let mut env = Env::new(Raw::new());
    let mut link = proxied(&mut env, onion(), TransportPolicy::V2Preferred);
    link.handle_connected(local(), &mut env.cx());
    proxy_connects(&mut link, &mut env, &[]).expect("the proxy connects");
    assert_eq!(link.state(), State::Handshake);
    assert_eq!(take(&mut link, &mut env).len(), 64, "our BIP324 key follows the proxy's reply");
    let end = link.handle_eof(&mut env.cx()).expect_err("the peer closed");
    match link.close(end.into(), &mut factory(TransportPolicy::V2Preferred), &mut env.cx()) {
        Closed::Retry { codec, .. } => assert_eq!(codec.transport(), Transport::V1),
        _ => panic!("expected the v1 retry"),
    }
    assert!(env.events.is_empty(), "a retry is silent");
}

/// A resolved name's next address is tried when a connect fails, within the
/// same deadline; past it the attempt fails.
#[test]
fn a_failed_address_moves_on_to_the_next_within_the_deadline() {
    let target: Target = "seed.example.org:8333".parse().expect("valid");
    let second = SocketAddr::from(([127, 0, 0, 2], 8333));
    for (at, moves_on) in [(ms(100), true), (limits().connect_timeout, false)] {
        let mut env = Env::new(Raw::new());
        let deadline = env.t0 + env.limits.connect_timeout;
        let dial = Dial { target: target.clone(), deadline, rest: vec![second], tunnel: None };
        let gate = Arc::new(Gate::new(64));
        let mut link = Link::new(
            PeerId(1),
            Direction::Outbound,
            remote(),
            None,
            codec(TransportPolicy::V1Only),
            gate,
            VecDeque::new(),
            [1; 32],
            Some(dial),
            &mut env.cx(),
        )
        .expect("the link starts");
        send(&mut link, &mut env, NetworkMessage::Ping(1));
        env.at(at);
        let refused = DisconnectReason::Io(std::io::ErrorKind::ConnectionRefused.into());
        match link.close(refused.into(), &mut factory(TransportPolicy::V1Only), &mut env.cx()) {
            Closed::Next { addr, dial, held, .. } => {
                assert!(moves_on, "moved on past the deadline");
                assert_eq!(addr, second);
                assert!(dial.rest.is_empty());
                assert_eq!(dial.deadline, deadline, "the same deadline for every address");
                assert_eq!(held.len(), 1, "held messages carry over");
                assert!(env.events.is_empty());
            }
            Closed::Reported => {
                assert!(!moves_on, "gave up with addresses left before the deadline");
                assert!(matches!(env.events.last(), Some(Event::ConnectFailed { error: ConnectError::Io(_), .. })));
            }
            Closed::Retry { .. } => panic!("not a fallback"),
        }
    }
}

proptest::proptest! {
    /// The proxy's replies and the peer's first frames, cut at random
    /// points: the same events, in the same order, whatever the reads.
    #[test]
    fn proxy_replies_and_peer_bytes_split_anywhere(cuts in proptest::collection::vec(0usize..200, 0..8)) {
        let mut stream = vec![5, 0];
        stream.extend_from_slice(&[5, 0, 0, 3, 4]);
        stream.extend_from_slice(b"tor1");
        stream.extend_from_slice(&[0x20, 0x8d]);
        let peer_bytes = [frame(&NetworkMessage::Verack), frame(&NetworkMessage::Ping(5))].concat();
        stream.extend_from_slice(&peer_bytes);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();

        let mut env = Env::new(Raw::new());
        let mut link = proxied(&mut env, onion(), TransportPolicy::V1Only);
        link.handle_connected(local(), &mut env.cx());
        let mut at = 0;
        for cut in cuts {
            take(&mut link, &mut env);
            // Once the proxy connected, a read with a partial frame goes
            // into the link's own buffer, as the reactor does it.
            let chunk = &stream[at..cut];
            at = cut;
            if chunk.is_empty() {
                continue;
            }
            // As the reactor reads: into the link's own buffer while part of
            // a frame is there, else into scratch for `handle_input`.
            let mut rest = chunk;
            while !rest.is_empty() {
                let read = link.read_with(&mut env.pool, env.now, |buf| {
                    let n = buf.len().min(rest.len());
                    buf[..n].copy_from_slice(&rest[..n]);
                    Ok(n)
                });
                match read {
                    None => {
                        link.handle_input(rest, &mut env.cx()).expect("valid input");
                        rest = &[];
                    }
                    Some(read) => {
                        rest = &rest[read.expect("the test's read cannot fail")..];
                        link.decode_buffered(&mut env.cx()).expect("valid input");
                    }
                }
            }
        }
        let kinds: Vec<String> = env.events.iter().map(|e| match e {
            Event::Connected { .. } => "connected".to_owned(),
            Event::Message { message, .. } => format!("{message:?}"),
            other => format!("{other:?}"),
        }).collect();
        proptest::prop_assert_eq!(kinds, ["connected", "Verack", "Ping(5)"]);
        proptest::prop_assert_eq!(link.stats(&Raw::new()).bytes_in, peer_bytes.len() as u64);
    }
}
