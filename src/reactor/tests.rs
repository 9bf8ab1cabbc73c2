//! Socket-free tests of one [`Link`]: byte vectors in, bytes and events out,
//! and a fake clock (a base `Instant` plus offsets, passed in as `Ctx::now`).
//! Each test drives the link the way the reactor does (`read`, `write`,
//! `fire_timers` and `close` in `reactor/mod.rs`), one behaviour per test.
//! Inputs are real v1 frames built with rust-bitcoin (regtest magic) or the
//! bytes of a real peer codec.

#[cfg(feature = "socks")]
mod proxy;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bitcoin::consensus::encode::serialize;
use bitcoin::hashes::Hash;
use bitcoin::p2p::Magic;
use bitcoin::p2p::message::{NetworkMessage, RawNetworkMessage};
use bitcoin::p2p::message_blockdata::Inventory;
use bitcoin::{BlockHash, Network};

use super::link::{Closed, Ctx, End, LINGER, Limits, Link, Pool, State};
use super::shared::{Closed as GateClosed, Gate, Shared};
use crate::codec::{Codec, Decoded, Factory, Start, Transport};
use crate::event::{ConnectError, DisconnectReason, Event, SendError};
use crate::protocol::{Bitcoin, Msg, Passthrough, Protocol};
use crate::session::{Mode, SessionConfig};
use crate::stack::Stack;
use crate::types::{Direction, PeerId};
use crate::wire::v1::MAX_PROTOCOL_MESSAGE_LENGTH;
use crate::wire::{BitcoinCodec, BitcoinFactory, TransportPolicy, V1Codec, WireError};

/// Raw mode over the built-in codec: every message is delivered and peers
/// are announced with `Connected`.
type Raw = Passthrough<BitcoinCodec>;

/// A protocol whose stack speaks the built-in codec's types.
pub(super) trait Wire: Protocol<Stack: Stack<Message = NetworkMessage, CodecError = WireError>> {}
impl<P: Protocol<Stack: Stack<Message = NetworkMessage, CodecError = WireError>>> Wire for P {}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn remote() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 18444))
}

fn local() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50123))
}

/// Timeouts that are all different, so each test knows which fires first.
fn limits() -> Limits {
    Limits::distinct_timeouts(1_000_000)
}

/// What the reactor keeps besides the link, with a fake clock: `now` is
/// `t0` plus whatever the test says.
struct Env<P: Protocol> {
    proto: P,
    proto_out: Vec<Msg<P>>,
    events: Vec<Event<P::Stack>>,
    pool: Pool,
    limits: Limits,
    t0: Instant,
    now: Instant,
}

impl<P: Protocol> Env<P> {
    fn new(proto: P) -> Self {
        let t0 = Instant::now();
        Env { proto, proto_out: Vec::new(), events: Vec::new(), pool: Pool::default(), limits: limits(), t0, now: t0 }
    }

    /// Sets the clock to `t0 + offset`.
    fn at(&mut self, offset: Duration) {
        self.now = self.t0 + offset;
    }

    fn cx(&mut self) -> Ctx<'_, P, Vec<Event<P::Stack>>> {
        Ctx {
            proto: &mut self.proto,
            proto_out: &mut self.proto_out,
            events: &mut self.events,
            pool: &mut self.pool,
            limits: &self.limits,
            now: self.now,
        }
    }
}

fn codec(policy: TransportPolicy) -> BitcoinCodec {
    BitcoinCodec::new(Network::Regtest, policy, MAX_PROTOCOL_MESSAGE_LENGTH)
}

/// The reactor's codec factory under `policy`.
fn factory(policy: TransportPolicy) -> BitcoinFactory {
    BitcoinFactory::new(Network::Regtest, policy, MAX_PROTOCOL_MESSAGE_LENGTH)
}

/// A link as the reactor starts it (`admit` for inbound, `connect` for
/// outbound), with its own gate.
fn open<P: Wire>(env: &mut Env<P>, direction: Direction, codec: BitcoinCodec, id: u64) -> Link<BitcoinCodec, P> {
    let local = (direction == Direction::Inbound).then(local);
    let gate = Arc::new(Gate::new(64));
    let entropy = [id as u8; 32];
    Link::new(PeerId(id), direction, remote(), local, codec, gate, VecDeque::new(), entropy, None, &mut env.cx())
        .expect("the link starts")
}

/// What `Handle::send` and the reactor's `send` do together: count the
/// message in flight, then queue it.
fn send<P: Wire>(link: &mut Link<BitcoinCodec, P>, env: &mut Env<P>, message: NetworkMessage) {
    link.gate().in_flight.fetch_add(1, Ordering::SeqCst);
    link.queue(message, &mut env.cx());
}

/// The peer reads everything we have queued.
fn take<P: Wire>(link: &mut Link<BitcoinCodec, P>, env: &mut Env<P>) -> Vec<u8> {
    let bytes = link.poll_transmit().to_vec();
    link.advance(bytes.len(), &mut env.cx());
    bytes
}

/// Bytes arrive as the reactor's `read` hands them over: straight to
/// `handle_input` while nothing is buffered, else into the link's own buffer
/// with `read_with`, `chunk` bytes at most per read.
fn deliver<P: Wire>(
    link: &mut Link<BitcoinCodec, P>,
    env: &mut Env<P>,
    mut bytes: &[u8],
    chunk: usize,
) -> Result<(), DisconnectReason<P::Stack>> {
    while !bytes.is_empty() {
        link.decode_buffered(&mut env.cx())?;
        let rest = bytes;
        let read = link.read_with(&mut env.pool, env.now, |buf| {
            let n = buf.len().min(chunk).min(rest.len());
            buf[..n].copy_from_slice(&rest[..n]);
            Ok(n)
        });
        match read {
            Some(result) => {
                let n = result.expect("in-memory reads do not fail");
                bytes = &bytes[n..];
            }
            None => {
                let n = chunk.min(bytes.len());
                link.handle_input(&bytes[..n], &mut env.cx())?;
                bytes = &bytes[n..];
            }
        }
        link.decode_buffered(&mut env.cx())?;
    }
    Ok(())
}

/// A v1 frame built by rust-bitcoin, not by our codec.
fn frame(message: &NetworkMessage) -> Vec<u8> {
    serialize(&RawNetworkMessage::new(Magic::REGTEST, message.clone()))
}

/// Splits a byte stream into v1 messages (every byte must belong to one).
fn decode_v1(mut bytes: &[u8]) -> Vec<NetworkMessage> {
    let mut codec = V1Codec::new(Network::Regtest);
    let mut messages = Vec::new();
    while !bytes.is_empty() {
        match codec.decode(bytes, &mut Vec::new()).expect("valid v1 frames") {
            Decoded::Message { message, consumed } => {
                messages.push(message);
                bytes = &bytes[consumed..];
            }
            other => panic!("incomplete v1 stream: {other:?} with {} bytes left", bytes.len()),
        }
    }
    messages
}

/// A transaction whose size is mostly one output script of `script_len`
/// bytes, tagged in its first input (the simulation's).
pub(super) use super::sim::tx;

fn inv(tag: u64) -> NetworkMessage {
    let mut hash = [0u8; 32];
    hash[..8].copy_from_slice(&tag.to_le_bytes());
    NetworkMessage::Inv(vec![Inventory::Block(BlockHash::from_byte_array(hash))])
}

/// The reason of an `End` that is not a connect timeout.
fn reason<S: Stack>(end: End<S>) -> DisconnectReason<S> {
    match end {
        End::Reason(reason) => reason,
        End::ConnectTimeout => panic!("unexpected connect timeout"),
    }
}

/// Fires due timers; panics unless one ends the link.
fn expire<P: Wire>(link: &mut Link<BitcoinCodec, P>, env: &mut Env<P>) -> End<P::Stack> {
    match link.handle_timeout(&mut env.cx()) {
        Ok(()) => panic!("no timer ended the link at {:?}", env.now - env.t0),
        Err(end) => end,
    }
}

fn messages<S: Stack>(events: &[Event<S>]) -> Vec<&S::Message> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message { message, .. } => Some(message),
            _ => None,
        })
        .collect()
}

fn writables<S: Stack>(events: &[Event<S>]) -> usize {
    events.iter().filter(|e| matches!(e, Event::Writable { .. })).count()
}

/// What a session-mode protocol shares with the handles; mio allows one
/// waker per poll, so every protocol of a test shares it.
fn shared(poll: &mio::Poll) -> Arc<Shared> {
    let waker = mio::Waker::new(poll.registry(), mio::Token(0)).expect("waker");
    Arc::new(Shared::new(waker, 0, 64, 4096))
}

fn session_protocol(shared: &Arc<Shared>) -> Bitcoin {
    let shared = Arc::clone(shared);
    let config = SessionConfig { handshake_timeout: limits().handshake_timeout, ..SessionConfig::default() };
    Bitcoin::new(Mode::Session, config, shared, 42)
}

/// Moves bytes both ways until neither link has anything to send; returns
/// what went each way.
fn pump<P: Wire>(
    a: &mut Link<BitcoinCodec, P>,
    ea: &mut Env<P>,
    b: &mut Link<BitcoinCodec, P>,
    eb: &mut Env<P>,
) -> (Vec<u8>, Vec<u8>) {
    let (mut a_to_b, mut b_to_a) = (Vec::new(), Vec::new());
    loop {
        let ab = take(a, ea);
        deliver(b, eb, &ab, usize::MAX).expect("b accepts a's bytes");
        let ba = take(b, eb);
        deliver(a, ea, &ba, usize::MAX).expect("a accepts b's bytes");
        if ab.is_empty() && ba.is_empty() {
            return (a_to_b, b_to_a);
        }
        a_to_b.extend_from_slice(&ab);
        b_to_a.extend_from_slice(&ba);
    }
}

// ---------------------------------------------------------------------------
// Timers
// ---------------------------------------------------------------------------

#[test]
fn stall_timer_fires_when_the_peer_reads_nothing() {
    let mut env = Env::new(Raw::new());
    let mut link = open(&mut env, Direction::Inbound, codec(TransportPolicy::V1Only), 1);
    assert_eq!(link.state(), State::Ready, "a raw v1 peer is announced at once");
    assert_eq!(link.poll_timeout(), None, "nothing queued, no timer");
    send(&mut link, &mut env, NetworkMessage::Ping(1));
    assert_eq!(link.queued(), 32);
    let stall = env.limits.stall_timeout;
    assert_eq!(link.poll_timeout(), Some(env.t0 + stall));
    env.at(stall - ms(1));
    assert!(link.handle_timeout(&mut env.cx()).is_ok(), "not due yet");
    env.at(stall);
    let end = expire(&mut link, &mut env);
    let mut factory = factory(TransportPolicy::V1Only);
    assert!(matches!(link.close(end, &mut factory, &mut env.cx()), Closed::Reported));
    match env.events.last() {
        Some(Event::Disconnected { peer, reason: DisconnectReason::SendStalled { queued, timeout } }) => {
            assert_eq!(*peer, PeerId(1));
            assert_eq!(*queued, 32);
            assert_eq!(*timeout, stall);
        }
        other => panic!("expected a stall, got {other:?}"),
    }
}

#[test]
fn a_peer_that_keeps_reading_never_stalls() {
    let mut env = Env::new(Raw::new());
    let mut link = open(&mut env, Direction::Inbound, codec(TransportPolicy::V1Only), 1);
    send(&mut link, &mut env, tx(1, 200_000));
    let stall = env.limits.stall_timeout;
    let mut t = Duration::ZERO;
    let mut written = Vec::new();
    while link.queued() > 0 {
        // Each time just before the stall deadline, the peer takes 10 kB.
        t += stall - ms(1);
        env.at(t);
        assert!(link.handle_timeout(&mut env.cx()).is_ok(), "stalled at {t:?} with {} queued", link.queued());
        let n = link.poll_transmit().len().min(10_000);
        written.extend_from_slice(&link.poll_transmit()[..n]);
        link.advance(n, &mut env.cx());
        if link.queued() > 0 {
            assert_eq!(link.poll_timeout(), Some(env.now + stall), "each advance restarts the stall clock");
        }
    }
    assert_eq!(link.poll_timeout(), None, "an empty queue has no stall timer");
    env.at(t + 10 * stall);
    assert!(link.handle_timeout(&mut env.cx()).is_ok());
    assert_eq!(decode_v1(&written), vec![tx(1, 200_000)]);
    assert!(matches!(env.events.as_slice(), [Event::Connected { .. }]), "{:?}", env.events);
}

#[test]
fn frame_timer_fires_on_an_incomplete_frame() {
    let mut env = Env::new(Raw::new());
    let mut link = open(&mut env, Direction::Inbound, codec(TransportPolicy::V1Only), 1);
    let bytes = frame(&NetworkMessage::Ping(9));
    link.handle_input(&bytes[..10], &mut env.cx()).expect("a partial header is fine");
    let frame_timeout = env.limits.frame_timeout;
    assert_eq!(link.poll_timeout(), Some(env.t0 + frame_timeout));
    env.at(frame_timeout - ms(1));
    assert!(link.handle_timeout(&mut env.cx()).is_ok());
    env.at(frame_timeout);
    match reason(expire(&mut link, &mut env)) {
        DisconnectReason::FrameTimeout { received, timeout } => {
            assert_eq!(received, 10);
            assert_eq!(timeout, frame_timeout);
        }
        other => panic!("expected a frame timeout, got {other:?}"),
    }
}

#[test]
fn completing_the_frame_clears_the_frame_timer() {
    let mut env = Env::new(Raw::new());
    let mut link = open(&mut env, Direction::Inbound, codec(TransportPolicy::V1Only), 1);
    let bytes = frame(&NetworkMessage::Ping(9));
    let frame_timeout = env.limits.frame_timeout;
    // The header and two payload bytes: the codec knows the frame's length.
    link.handle_input(&bytes[..26], &mut env.cx()).expect("a partial frame is fine");
    assert_eq!(link.poll_timeout(), Some(env.t0 + frame_timeout));
    env.at(frame_timeout / 2);
    let read = link.read_with(&mut env.pool, env.now, |buf| {
        assert_eq!(buf.len(), 6, "the read is sized to the rest of the frame");
        buf.copy_from_slice(&bytes[26..]);
        Ok(6)
    });
    assert_eq!(read.map(|r| r.expect("read")), Some(6));
    link.decode_buffered(&mut env.cx()).expect("a valid frame");
    assert_eq!(messages(&env.events), vec![&NetworkMessage::Ping(9)]);
    assert_eq!(link.poll_timeout(), None, "the frame timer is cleared");
    env.at(frame_timeout * 2);
    assert!(link.handle_timeout(&mut env.cx()).is_ok(), "the old deadline is gone");
    // The next frame starts its own clock.
    link.handle_input(&bytes[..5], &mut env.cx()).expect("a partial header is fine");
    assert_eq!(link.poll_timeout(), Some(env.now + frame_timeout));
}

#[test]
fn transport_handshake_timer_fires_on_a_partial_key() {
    let mut env = Env::new(Raw::new());
    let mut link = open(&mut env, Direction::Inbound, codec(TransportPolicy::V2Only), 1);
    let handshake = env.limits.handshake_timeout;
    assert_eq!(link.state(), State::Handshake);
    assert_eq!(link.poll_timeout(), Some(env.t0 + handshake));
    // 40 bytes of a real initiator's 64-byte key.
    let mut key = Vec::new();
    codec(TransportPolicy::V2Only).start(&Start::new(true, [3; 32]), &mut key).expect("initiator starts");
    assert_eq!(key.len(), 64);
    link.handle_input(&key[..40], &mut env.cx()).expect("a partial key is fine");
    // Past the 16 detection bytes the responder answered with its own key
    // (and garbage); the peer reads it, so no stall is pending.
    let answer = take(&mut link, &mut env);
    assert!(answer.len() >= 64, "the responder sent its key");
    assert_eq!(link.state(), State::Handshake);
    env.at(handshake - ms(1));
    assert!(link.handle_timeout(&mut env.cx()).is_ok());
    env.at(handshake);
    let end = expire(&mut link, &mut env);
    let mut factory = factory(TransportPolicy::V2Only);
    assert!(matches!(link.close(end, &mut factory, &mut env.cx()), Closed::Reported));
    match env.events.as_slice() {
        [Event::Disconnected { reason: DisconnectReason::TransportTimeout(d), .. }] => assert_eq!(*d, handshake),
        other => panic!("expected only a transport timeout, got {other:?}"),
    }
}

#[test]
fn linger_after_a_flushed_close() {
    let mut env = Env::new(Raw::new());
    let mut link = open(&mut env, Direction::Inbound, codec(TransportPolicy::V1Only), 1);
    send(&mut link, &mut env, NetworkMessage::Ping(1));
    link.close_after_flush(&mut env.cx());
    assert_eq!(link.state(), State::Ready, "still flushing");
    assert!(!link.poll_shutdown());
    // No new messages once a flushed close is asked for.
    send(&mut link, &mut env, NetworkMessage::Ping(2));
    assert!(matches!(
        env.events.last(),
        Some(Event::SendRejected { message: NetworkMessage::Ping(2), reason: SendError::Closing, .. })
    ));
    assert_eq!(link.gate().in_flight.load(Ordering::SeqCst), 0, "the refused message left the in-flight count");
    env.at(ms(100));
    let written = take(&mut link, &mut env);
    assert_eq!(decode_v1(&written), vec![NetworkMessage::Ping(1)]);
    assert_eq!(link.state(), State::Lingering { announced: true });
    assert!(link.poll_shutdown(), "the write side is shut once flushed");
    assert!(!link.poll_shutdown(), "only once");
    assert_eq!(link.poll_timeout(), Some(env.now + LINGER));
    // Input is discarded while lingering, and never buffered.
    let before = env.events.len();
    link.handle_input(&frame(&NetworkMessage::Ping(3)), &mut env.cx()).expect("discarded");
    link.handle_input(&frame(&NetworkMessage::Ping(4))[..7], &mut env.cx()).expect("discarded");
    assert_eq!(env.events.len(), before, "nothing delivered while lingering");
    assert!(link.read_with(&mut env.pool, env.now, |_| panic!("no buffered read while lingering")).is_none());
    assert!(link.wants_read(&env.limits), "reading goes on, to see the peer close");
    assert!(matches!(link.handle_eof(&mut env.cx()), Err(DisconnectReason::Flushed)));
    env.at(ms(100) + LINGER - ms(1));
    assert!(link.handle_timeout(&mut env.cx()).is_ok(), "no frame timer for discarded input");
    env.at(ms(100) + LINGER);
    let end = expire(&mut link, &mut env);
    assert!(matches!(end, End::Reason(DisconnectReason::Flushed)));
    let mut factory = factory(TransportPolicy::V1Only);
    assert!(matches!(link.close(end, &mut factory, &mut env.cx()), Closed::Reported));
    assert!(matches!(env.events.last(), Some(Event::Disconnected { reason: DisconnectReason::Flushed, .. })));
}

#[test]
fn connect_timer_fails_the_attempt() {
    let mut env = Env::new(Raw::new());
    let mut link = open(&mut env, Direction::Outbound, codec(TransportPolicy::V2Only), 1);
    assert_eq!(link.state(), State::Connecting);
    assert_eq!(link.queued(), 64, "the key waits for the connection");
    assert!(link.poll_transmit().is_empty(), "nothing is written while connecting");
    send(&mut link, &mut env, NetworkMessage::Ping(1));
    let connect = env.limits.connect_timeout;
    assert_eq!(link.poll_timeout(), Some(env.t0 + connect));
    env.at(connect - ms(1));
    assert!(link.handle_timeout(&mut env.cx()).is_ok());
    env.at(connect);
    let end = expire(&mut link, &mut env);
    assert!(matches!(end, End::ConnectTimeout));
    let mut factory = BitcoinFactory::new(Network::Regtest, TransportPolicy::V2Only, MAX_PROTOCOL_MESSAGE_LENGTH);
    assert!(matches!(link.close(end, &mut factory, &mut env.cx()), Closed::Reported));
    match env.events.as_slice() {
        [
            Event::SendRejected { message: NetworkMessage::Ping(1), reason: SendError::Disconnected, .. },
            Event::ConnectFailed { peer, target, error: ConnectError::Timeout(d) },
        ] => {
            assert_eq!(*peer, PeerId(1));
            assert_eq!(*target, remote().into());
            assert_eq!(*d, connect);
        }
        other => panic!("expected the held message back, then ConnectFailed: {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Held messages
// ---------------------------------------------------------------------------

#[test]
fn messages_queued_while_connecting_follow_the_announcement_in_order() {
    let mut env = Env::new(Raw::new());
    let mut link = open(&mut env, Direction::Outbound, codec(TransportPolicy::V1Only), 1);
    for n in 1..=3 {
        send(&mut link, &mut env, NetworkMessage::Ping(n));
    }
    assert!(link.poll_transmit().is_empty());
    assert!(env.events.is_empty());
    link.handle_connected(local(), &mut env.cx());
    assert!(matches!(env.events.as_slice(), [Event::Connected { direction: Direction::Outbound, .. }]));
    send(&mut link, &mut env, NetworkMessage::Ping(4));
    let written = take(&mut link, &mut env);
    assert_eq!(decode_v1(&written), (1..=4).map(NetworkMessage::Ping).collect::<Vec<_>>());
    assert_eq!(link.gate().in_flight.load(Ordering::SeqCst), 0);
}

#[test]
fn messages_queued_during_the_session_handshake_follow_ready_in_order() {
    let poll = mio::Poll::new().expect("poll");
    let shared = shared(&poll);
    let (mut ec, mut es) = (Env::new(session_protocol(&shared)), Env::new(session_protocol(&shared)));
    let mut client = open(&mut ec, Direction::Outbound, codec(TransportPolicy::V1Only), 1);
    let mut server = open(&mut es, Direction::Inbound, codec(TransportPolicy::V1Only), 2);
    send(&mut client, &mut ec, inv(1));
    client.handle_connected(local(), &mut ec.cx());
    send(&mut client, &mut ec, inv(2));
    send(&mut server, &mut es, inv(10));
    // Before the peer answers only our version goes out.
    let first = take(&mut client, &mut ec);
    assert!(matches!(decode_v1(&first).as_slice(), [NetworkMessage::Version(_)]));
    deliver(&mut server, &mut es, &first, usize::MAX).expect("server accepts the version");
    send(&mut client, &mut ec, inv(3));
    let (c_to_s, s_to_c) = pump(&mut client, &mut ec, &mut server, &mut es);
    assert_eq!(client.state(), State::Ready);
    assert_eq!(server.state(), State::Ready);
    // Each side's user messages follow its verack on the wire, in order.
    for (stream, user) in [(c_to_s, vec![inv(1), inv(2), inv(3)]), (s_to_c, vec![inv(10)])] {
        let wire = decode_v1(&stream);
        let verack = wire.iter().position(|m| *m == NetworkMessage::Verack).expect("a verack");
        let sent: Vec<_> = wire.iter().enumerate().filter(|(_, m)| matches!(m, NetworkMessage::Inv(_))).collect();
        assert!(sent.iter().all(|(i, _)| *i > verack), "user message before verack: {wire:?}");
        assert_eq!(sent.into_iter().map(|(_, m)| m.clone()).collect::<Vec<_>>(), user);
    }
    assert!(matches!(es.events.first(), Some(Event::Ready { .. })), "{:?}", es.events);
    assert_eq!(messages(&es.events), vec![&inv(1), &inv(2), &inv(3)]);
    assert!(matches!(ec.events.first(), Some(Event::Ready { .. })), "{:?}", ec.events);
    assert_eq!(messages(&ec.events), vec![&inv(10)]);
}

/// Regression: with decoding paused (our queue over its limit), a frame that
/// completed in the link's buffer used to size the next read by its own
/// (reached) length: reads of one byte each, up to the receive limit.
#[test]
fn reads_stay_large_while_a_completed_frame_waits_for_decoding() {
    let mut env = Env::new(Raw::new());
    env.limits.send_buffer = 1000;
    let mut link = open(&mut env, Direction::Inbound, codec(TransportPolicy::V1Only), 1);
    let ping = frame(&NetworkMessage::Ping(1));
    // Half a frame: its length is known, the rest is awaited.
    link.handle_input(&ping[..30], &mut env.cx()).expect("valid header");
    // Our queue goes over its limit: decoding pauses.
    send(&mut link, &mut env, tx(1, 2000));
    let mut asked = Vec::new();
    for chunk in [&ping[30..], &frame(&NetworkMessage::Ping(2))[..]] {
        let read = link.read_with(&mut env.pool, env.now, |buf| {
            asked.push(buf.len());
            buf[..chunk.len()].copy_from_slice(chunk);
            Ok(chunk.len())
        });
        assert_eq!(read.expect("part of a frame is buffered").expect("read"), chunk.len());
        link.decode_buffered(&mut env.cx()).expect("valid frames");
    }
    // The second read is sized by what is buffered (at least MIN_READ, at
    // most READ_CHUNK), never by the completed frame's length.
    assert_eq!(asked, [ping.len() - 30, super::link::MIN_READ], "the missing part, then a minimum read");
    assert!(messages(&env.events).is_empty(), "nothing decoded while the queue is over its limit");
}

#[test]
fn messages_over_the_send_buffer_limit_wait_and_keep_their_order() {
    let mut env = Env::new(Raw::new());
    env.limits.send_buffer = 1000;
    let mut link = open(&mut env, Direction::Inbound, codec(TransportPolicy::V1Only), 1);
    send(&mut link, &mut env, tx(1, 2000));
    let big = link.queued();
    assert!(big > 2000);
    assert!(link.gate().full.load(Ordering::SeqCst), "over the limit: the gate closes");
    assert_eq!(link.gate().closed(), Some(GateClosed::BufferFull));
    assert!(link.wants_read(&env.limits), "over the limit: reading goes on, up to the receive limit");
    // ...but nothing is decoded until the queue drains.
    let before = env.events.len();
    link.handle_input(&frame(&NetworkMessage::Ping(99)), &mut env.cx()).expect("valid frame");
    assert_eq!(env.events.len(), before, "decoding pauses over the limit");
    assert!(!link.wants_decode(&env.limits));
    for n in 1..=3 {
        send(&mut link, &mut env, NetworkMessage::Ping(n));
    }
    assert_eq!(link.queued(), big, "held, not encoded");
    assert_eq!(link.gate().in_flight.load(Ordering::SeqCst), 3, "held messages stay in flight");
    let mut written = Vec::new();
    while !link.poll_transmit().is_empty() {
        let n = link.poll_transmit().len().min(100);
        written.extend_from_slice(&link.poll_transmit()[..n]);
        let before = link.queued();
        link.advance(n, &mut env.cx());
        if before - n <= 1000 {
            // Back under the limit: held pings are encoded, one past it at most.
            assert!(link.queued() <= 1000 + 32, "{} queued", link.queued());
        }
    }
    let mut expected = vec![tx(1, 2000)];
    expected.extend((1..=3).map(NetworkMessage::Ping));
    assert_eq!(decode_v1(&written), expected);
    assert!(!link.gate().full.load(Ordering::SeqCst));
    assert_eq!(link.gate().in_flight.load(Ordering::SeqCst), 0);
    // Room again: the input kept meanwhile is decoded now.
    assert!(link.wants_decode(&env.limits), "the reactor is told to decode");
    link.decode_buffered(&mut env.cx()).expect("valid frame");
    assert_eq!(messages(&env.events), vec![&NetworkMessage::Ping(99)]);
}

#[test]
fn writable_is_reported_once_when_the_gate_reopens() {
    let mut env = Env::new(Raw::new());
    env.limits.send_buffer = 1000;
    let mut link = open(&mut env, Direction::Inbound, codec(TransportPolicy::V1Only), 1);
    fn refused_drain(link: &mut Link<BitcoinCodec, Raw>, env: &mut Env<Raw>, refuse: bool) {
        send(link, env, tx(1, 3000));
        assert!(link.gate().closed().is_some());
        if refuse {
            // What `Handle::send` does when it refuses a message.
            link.gate().refused.store(true, Ordering::SeqCst);
        }
        let before = writables(&env.events);
        while !link.poll_transmit().is_empty() {
            link.advance(link.poll_transmit().len().min(100), &mut env.cx());
            let new = writables(&env.events) - before;
            if link.queued() > 500 {
                assert_eq!(new, 0, "Writable before the queue drained to half the limit");
            } else {
                assert_eq!(new, usize::from(refuse), "Writable once at half the limit, after a refusal only");
            }
        }
    }
    refused_drain(&mut link, &mut env, true);
    assert_eq!(writables(&env.events), 1);
    refused_drain(&mut link, &mut env, false);
    assert_eq!(writables(&env.events), 1, "no refusal, no Writable");
    refused_drain(&mut link, &mut env, true);
    assert_eq!(writables(&env.events), 2);
}

// ---------------------------------------------------------------------------
// BIP324 v1 fallback
// ---------------------------------------------------------------------------

#[test]
fn silent_v2_peer_is_retried_as_v1_with_the_held_messages() {
    let mut factory = BitcoinFactory::new(Network::Regtest, TransportPolicy::V2Preferred, MAX_PROTOCOL_MESSAGE_LENGTH);
    let mut env = Env::new(Raw::new());
    let codec = factory.make(Direction::Outbound, &remote().into());
    let mut link = open(&mut env, Direction::Outbound, codec, 1);
    send(&mut link, &mut env, NetworkMessage::Ping(1));
    link.handle_connected(local(), &mut env.cx());
    send(&mut link, &mut env, NetworkMessage::Ping(2));
    assert_eq!(link.state(), State::Handshake);
    assert_eq!(take(&mut link, &mut env).len(), 64, "only our key went out");
    let gate = Arc::clone(link.gate());
    let closed = link.close(End::Reason(DisconnectReason::PeerClosed), &mut factory, &mut env.cx());
    let Closed::Retry { codec, held, after_flush } = closed else { panic!("expected a v1 retry") };
    assert!(env.events.is_empty(), "a retry is silent: {:?}", env.events);
    assert_eq!(codec.policy(), TransportPolicy::V1Only);
    assert_eq!(codec.transport(), Transport::V1);
    assert_eq!(held, VecDeque::from([NetworkMessage::Ping(1), NetworkMessage::Ping(2)]));
    assert!(!after_flush);
    assert!(!factory.is_v1_only(&remote().into()), "remembered only once the v1 retry is answered");
    // Reconnected as the reactor does, the held messages go out as v1 frames.
    let mut link: Link<BitcoinCodec, Raw> =
        Link::new(PeerId(1), Direction::Outbound, remote(), None, codec, gate, held, [1; 32], None, &mut env.cx())
            .expect("the retry starts");
    link.handle_connected(local(), &mut env.cx());
    assert!(matches!(env.events.as_slice(), [Event::Connected { peer: PeerId(1), .. }]));
    let written = take(&mut link, &mut env);
    assert_eq!(written[..4], Magic::REGTEST.to_bytes());
    assert_eq!(decode_v1(&written), vec![NetworkMessage::Ping(1), NetworkMessage::Ping(2)]);
    assert_eq!(link.gate().in_flight.load(Ordering::SeqCst), 0);
    // The peer answers in v1: the reactor tells the factory once, and the
    // next connection starts as v1.
    assert!(link.poll_answered().is_none(), "nothing received yet");
    link.handle_input(&frame(&NetworkMessage::Pong(1)), &mut env.cx()).expect("valid frame");
    let (addr, codec) = link.poll_answered().expect("first bytes arrived");
    factory.answered(addr, codec);
    assert!(link.poll_answered().is_none(), "reported once");
    assert!(factory.is_v1_only(&remote().into()), "the next connection starts as v1");
}

#[test]
fn v1_only_link_reports_the_silent_close() {
    let mut factory = BitcoinFactory::new(Network::Regtest, TransportPolicy::V1Only, MAX_PROTOCOL_MESSAGE_LENGTH);
    let mut env = Env::new(Raw::new());
    let codec = factory.make(Direction::Outbound, &remote().into());
    let mut link = open(&mut env, Direction::Outbound, codec, 1);
    link.handle_connected(local(), &mut env.cx());
    send(&mut link, &mut env, NetworkMessage::Ping(1));
    assert_eq!(take(&mut link, &mut env).len(), 32, "a header's worth was sent, nothing received");
    let closed = link.close(End::Reason(DisconnectReason::PeerClosed), &mut factory, &mut env.cx());
    assert!(matches!(closed, Closed::Reported));
    assert!(matches!(
        env.events.as_slice(),
        [Event::Connected { .. }, Event::Disconnected { peer: PeerId(1), reason: DisconnectReason::PeerClosed }]
    ));
    assert!(!factory.is_v1_only(&remote().into()));
}

#[test]
fn v2_only_link_reports_the_silent_close_and_hands_back_held_messages() {
    let mut factory = BitcoinFactory::new(Network::Regtest, TransportPolicy::V2Only, MAX_PROTOCOL_MESSAGE_LENGTH);
    let mut env = Env::new(Raw::new());
    let codec = factory.make(Direction::Outbound, &remote().into());
    let mut link = open(&mut env, Direction::Outbound, codec, 1);
    link.handle_connected(local(), &mut env.cx());
    send(&mut link, &mut env, NetworkMessage::Ping(1));
    assert_eq!(take(&mut link, &mut env).len(), 64);
    let closed = link.close(End::Reason(DisconnectReason::PeerClosed), &mut factory, &mut env.cx());
    assert!(matches!(closed, Closed::Reported));
    assert!(matches!(
        env.events.as_slice(),
        [
            Event::SendRejected { message: NetworkMessage::Ping(1), reason: SendError::Disconnected, .. },
            Event::Disconnected { reason: DisconnectReason::PeerClosed, .. },
        ]
    ));
}

#[test]
fn v2_preferred_link_that_heard_back_is_not_retried() {
    let mut factory = BitcoinFactory::new(Network::Regtest, TransportPolicy::V2Preferred, MAX_PROTOCOL_MESSAGE_LENGTH);
    let mut env = Env::new(Raw::new());
    let codec = factory.make(Direction::Outbound, &remote().into());
    let mut link = open(&mut env, Direction::Outbound, codec, 1);
    link.handle_connected(local(), &mut env.cx());
    take(&mut link, &mut env);
    // Half of a real responder key came back: the peer speaks v2.
    let mut key = Vec::new();
    codec_start_responder(&mut key);
    link.handle_input(&key[..32], &mut env.cx()).expect("a partial key is fine");
    let closed = link.close(End::Reason(DisconnectReason::PeerClosed), &mut factory, &mut env.cx());
    assert!(matches!(closed, Closed::Reported));
    assert!(matches!(env.events.as_slice(), [Event::Disconnected { reason: DisconnectReason::PeerClosed, .. }]));
    assert!(!factory.is_v1_only(&remote().into()));
}

/// A responder's first bytes: its key, then its garbage.
fn codec_start_responder(out: &mut Vec<u8>) {
    let mut responder = codec(TransportPolicy::V2Only);
    responder.start(&Start::new(false, [9; 32]), &mut Vec::new()).expect("responder starts");
    let mut initiator_key = Vec::new();
    codec(TransportPolicy::V2Only).start(&Start::new(true, [8; 32]), &mut initiator_key).expect("initiator starts");
    // The responder answers once it has seen the initiator's key.
    let _ = responder.decode(&initiator_key, out).expect("a valid key");
    assert!(out.len() >= 64);
}

// ---------------------------------------------------------------------------
// Announcement and input
// ---------------------------------------------------------------------------

#[test]
fn connected_comes_before_the_first_message_of_the_same_input() {
    let mut ec = Env::new(Raw::new());
    let mut es = Env::new(Raw::new());
    let mut client = open(&mut ec, Direction::Outbound, codec(TransportPolicy::V2Only), 1);
    let mut server = open(&mut es, Direction::Inbound, codec(TransportPolicy::V2Only), 2);
    send(&mut client, &mut ec, NetworkMessage::Ping(10));
    send(&mut client, &mut ec, NetworkMessage::Ping(11));
    client.handle_connected(local(), &mut ec.cx());
    let key = take(&mut client, &mut ec);
    server.handle_input(&key, &mut es.cx()).expect("a valid key");
    let answer = take(&mut server, &mut es);
    client.handle_input(&answer, &mut ec.cx()).expect("a valid answer");
    assert!(matches!(ec.events.as_slice(), [Event::Connected { .. }]), "{:?}", ec.events);
    // The client's terminator, version packet and the two held messages
    // reach the server in one read.
    let rest = take(&mut client, &mut ec);
    assert!(es.events.is_empty(), "not announced before the handshake completes");
    server.handle_input(&rest, &mut es.cx()).expect("valid packets");
    match es.events.as_slice() {
        [
            Event::Connected { direction: Direction::Inbound, .. },
            Event::Message { message: NetworkMessage::Ping(10), .. },
            Event::Message { message: NetworkMessage::Ping(11), .. },
        ] => {}
        other => panic!("expected Connected, then the messages: {other:?}"),
    }
    assert!(matches!(server.info(&es.proto).transport, Transport::V2 { .. }));
}

#[test]
fn corrupt_frame_is_a_codec_error() {
    let mut env = Env::new(Raw::new());
    let mut link = open(&mut env, Direction::Inbound, codec(TransportPolicy::V1Only), 1);
    let mut bytes = frame(&NetworkMessage::Ping(1));
    bytes.extend_from_slice(&frame(&NetworkMessage::Ping(2)));
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let err = deliver(&mut link, &mut env, &bytes, 7).expect_err("a bad checksum");
    assert!(matches!(err, DisconnectReason::Codec(WireError::BadChecksum { .. })), "{err:?}");
    assert_eq!(messages(&env.events), vec![&NetworkMessage::Ping(1)], "the frame before it was delivered");
}

/// Regression: two links that each queue more than their send buffer plus
/// what the network holds in flight, at the same time, used to stop reading
/// each other (each paused on its own full queue) and both stalled. Now
/// decoding pauses, reading goes on up to the receive limit.
#[test]
fn two_peers_sending_large_messages_at_once_do_not_deadlock() {
    /// What the kernel buffers hold per direction (send + receive buffers).
    const IN_FLIGHT: usize = 4096;
    let mut ea = Env::new(Raw::new());
    let mut eb = Env::new(Raw::new());
    ea.limits.send_buffer = 10_000;
    eb.limits.send_buffer = 10_000;
    let mut a = open(&mut ea, Direction::Outbound, codec(TransportPolicy::V1Only), 1);
    let mut b = open(&mut eb, Direction::Inbound, codec(TransportPolicy::V1Only), 2);
    a.handle_connected(local(), &mut ea.cx());
    send(&mut a, &mut ea, tx(1, 50_000));
    send(&mut b, &mut eb, tx(2, 50_000));
    let (mut a_to_b, mut b_to_a) = (VecDeque::<u8>::new(), VecDeque::<u8>::new());
    for second in 1..=120 {
        for (link, env, out) in [(&mut a, &mut ea, &mut a_to_b), (&mut b, &mut eb, &mut b_to_a)] {
            let n = link.poll_transmit().len().min(IN_FLIGHT - out.len());
            out.extend(&link.poll_transmit()[..n]);
            link.advance(n, &mut env.cx());
        }
        for (link, env, inp) in [(&mut a, &mut ea, &mut b_to_a), (&mut b, &mut eb, &mut a_to_b)] {
            if link.wants_read(&env.limits) && !inp.is_empty() {
                let bytes: Vec<u8> = inp.drain(..).collect();
                deliver(link, env, &bytes, usize::MAX).expect("valid frames");
            }
        }
        for (link, env) in [(&mut a, &mut ea), (&mut b, &mut eb)] {
            env.at(Duration::from_secs(second));
            if let Err(end) = link.handle_timeout(&mut env.cx()) {
                panic!("peer {} ended after {second} s: {:?}", link.id, reason(end));
            }
        }
    }
    assert_eq!(messages(&eb.events), vec![&tx(1, 50_000)]);
    assert_eq!(messages(&ea.events), vec![&tx(2, 50_000)]);
}

/// Regression: the session's handshake clock started in `Link::new`, while
/// the TCP connect was still in progress, so a connect slower than the
/// handshake timeout ended as `ConnectFailed { Cancelled }`, and a slow
/// connect ate into the handshake's time. It starts once connected.
#[test]
fn a_slow_connect_is_a_connect_timeout_not_a_cancelled_handshake() {
    let poll = mio::Poll::new().expect("poll");
    let shared = shared(&poll);
    let mut env = Env::new(session_protocol(&shared));
    env.limits.connect_timeout = Duration::from_secs(90);
    let handshake = env.limits.handshake_timeout;
    assert!(handshake < env.limits.connect_timeout);
    let mut link = open(&mut env, Direction::Outbound, codec(TransportPolicy::V1Only), 1);
    env.at(handshake);
    if let Err(end) = link.handle_timeout(&mut env.cx()) {
        let mut factory = factory(TransportPolicy::V1Only);
        link.close(end, &mut factory, &mut env.cx());
        panic!("ended while still connecting, at the handshake deadline: {:?}", env.events);
    }
    // Connected just before the connect deadline: the handshake has its
    // whole time from here.
    env.at(Duration::from_secs(89));
    link.handle_connected(local(), &mut env.cx());
    env.at(Duration::from_secs(89) + handshake - ms(1));
    assert!(link.handle_timeout(&mut env.cx()).is_ok(), "the handshake clock starts when connected");
}

/// The reactor-wide budget closes every gate once used up, whatever each
/// peer's own count, and asks for `Writable` for the refused ones (once)
/// when half has been taken.
#[test]
fn the_reactor_wide_budget_closes_every_gate_and_reopens_them_at_half() {
    use super::shared::Budget;
    let budget = Arc::new(Budget::new(4));
    let gates: Vec<Gate> = (0..3).map(|_| Gate::with_budget(64, Arc::clone(&budget))).collect();
    // Four messages on their way, to different peers: the budget is used up.
    for gate in gates.iter().chain([&gates[0]]) {
        assert_eq!(gate.closed(), None);
        gate.in_flight.fetch_add(1, Ordering::SeqCst);
        budget.used.fetch_add(1, Ordering::SeqCst);
    }
    assert!(gates.iter().all(|g| g.closed() == Some(GateClosed::InFlight)), "every peer is refused");
    gates[2].mark_refused();
    assert!(!gates[1].reopened() && !gates[2].reopened(), "nothing reopens while the budget is used up");
    // The reactor takes them: at half (2 of 4) the refused are told, once.
    assert!(!budget.taken(), "3 left: not yet");
    assert!(budget.taken(), "2 left: half");
    assert!(gates[2].reopened(), "the refused peer gets its Writable");
    assert!(!gates[1].reopened(), "a peer that was not refused gets none");
    assert!(!budget.taken(), "once");
    assert_eq!(gates[1].closed(), None);
}
