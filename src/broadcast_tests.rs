//! The broadcast state machine, driven with events and a fake clock: no
//! sockets, no reactor.

use std::io;
use std::net::SocketAddr;

use bitcoin::absolute::LockTime;
use bitcoin::hashes::{Hash, sha256d};
use bitcoin::p2p::message_network::{Reject, RejectReason};
use bitcoin::transaction::Version;
use bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, TxIn, TxOut, Witness};

use super::*;
use crate::codec::Transport;
use crate::event::Direction;
use crate::peer::PeerInfo;
use crate::session::{Features, PeerVersion};

fn tx() -> Transaction {
    Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::null(),
            script_sig: ScriptBuf::from_bytes(vec![0x51]),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: vec![TxOut { value: Amount::from_sat(1_000), script_pubkey: ScriptBuf::new_op_return([7]) }],
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// A broadcast of `tx()` to `n` targets started at `t0`, with peer ids 0..n.
fn machine(n: u16, t0: Instant) -> Broadcaster {
    let addrs: Vec<Target> = (0..n).map(|i| addr(18444 + i).into()).collect();
    let mut b = Broadcaster::new(&tx(), &addrs, t0, TIMEOUT, Rng::from_os());
    for i in 0..n {
        b.connecting(usize::from(i), PeerId(u64::from(i)));
    }
    b
}

fn ready(peer: u64, wtxid_relay: bool) -> Event {
    let version = PeerVersion {
        version: 70016,
        services: bitcoin::p2p::ServiceFlags::NETWORK,
        user_agent: "/Satoshi:29.0.0/".into(),
        start_height: 0,
        relay: true,
        nonce: 1,
    };
    let info = PeerInfo {
        peer: PeerId(peer),
        addr: addr(18444),
        target: addr(18444).into(),
        proxy: None,
        local_addr: None,
        direction: Direction::Outbound,
        transport: Transport::V1,
        version: Some(version),
        features: Features { wtxid_relay, addr_v2: true, send_headers: false },
        ready: true,
    };
    Event::Ready { peer: PeerId(peer), info: Box::new(info) }
}

fn message(peer: u64, message: NetworkMessage) -> Event {
    Event::Message { peer: PeerId(peer), message, wire_size: 0 }
}

fn actions(b: &mut Broadcaster) -> Vec<Action> {
    std::iter::from_fn(|| b.poll_action()).collect()
}

/// Readies `peer` and returns the nonce of the ping that follows the `inv`.
fn announce(b: &mut Broadcaster, peer: u64, wtxid_relay: bool, now: Instant) -> u64 {
    b.handle_event(ready(peer, wtxid_relay), now);
    let sent = actions(b);
    let inv =
        if wtxid_relay { Inventory::WTx(tx().compute_wtxid()) } else { Inventory::Transaction(tx().compute_txid()) };
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[0], Action::Send(PeerId(peer), NetworkMessage::Inv(vec![inv])));
    match sent[1] {
        Action::Send(p, NetworkMessage::Ping(nonce)) if p == PeerId(peer) => nonce,
        ref other => panic!("expected a ping after the inv, got {other:?}"),
    }
}

/// Answers `getdata` and returns the nonce of the ping after the `tx`.
fn request(b: &mut Broadcaster, peer: u64, now: Instant) -> u64 {
    b.handle_event(message(peer, NetworkMessage::GetData(vec![Inventory::WTx(tx().compute_wtxid())])), now);
    let sent = actions(b);
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[0], Action::Send(PeerId(peer), NetworkMessage::Tx(tx())));
    match sent[1] {
        Action::Send(p, NetworkMessage::Ping(nonce)) if p == PeerId(peer) => nonce,
        ref other => panic!("expected a ping after the tx, got {other:?}"),
    }
}

fn only_outcome(b: Broadcaster) -> Result<Delivered, BroadcastError> {
    let mut outcomes = b.into_outcomes();
    assert_eq!(outcomes.len(), 1);
    outcomes.remove(0).result
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn request_delays_follow_core() {
    assert_eq!(request_delay(true), NONPREF_PEER_TX_DELAY + REQUEST_MARGIN);
    assert_eq!(request_delay(false), NONPREF_PEER_TX_DELAY + TXID_RELAY_DELAY + REQUEST_MARGIN);
    assert_eq!((NONPREF_PEER_TX_DELAY, TXID_RELAY_DELAY), (secs(2), secs(2)));
}

#[test]
fn requested_sent_and_confirmed() {
    let t0 = Instant::now();
    let mut b = machine(1, t0);
    let first = announce(&mut b, 0, true, t0 + ms(100));
    let second = request(&mut b, 0, t0 + ms(150));
    assert_ne!(first, second, "each ping has its own nonce");
    // The pong to the first ping (after the inv) proves nothing about the tx.
    b.handle_event(message(0, NetworkMessage::Pong(first)), t0 + ms(160));
    assert!(!b.is_done());
    assert!(actions(&mut b).is_empty());
    b.handle_event(message(0, NetworkMessage::Pong(second)), t0 + ms(200));
    assert!(b.is_done());
    assert_eq!(actions(&mut b), [Action::Disconnect(PeerId(0))]);
    let delivered = only_outcome(b).expect("delivered");
    assert_eq!(delivered.kind, DeliveryKind::Sent);
    assert!(delivered.by_wtxid);
    assert_eq!(delivered.user_agent, "/Satoshi:29.0.0/");
    assert_eq!(delivered.elapsed, ms(200));
}

#[test]
fn core_requests_after_its_inbound_delay() {
    // Core answers the ping at once and asks for the transaction 2 s later.
    let t0 = Instant::now();
    let mut b = machine(1, t0);
    let first = announce(&mut b, 0, true, t0);
    b.handle_event(message(0, NetworkMessage::Pong(first)), t0 + ms(5));
    b.handle_timeout(t0 + ms(1000));
    assert!(!b.is_done());
    let second = request(&mut b, 0, t0 + ms(2010));
    // Once requested, the request delay no longer applies.
    assert_eq!(b.poll_timeout(), t0 + TIMEOUT);
    b.handle_timeout(t0 + secs(10));
    assert!(!b.is_done());
    b.handle_event(message(0, NetworkMessage::Pong(second)), t0 + secs(11));
    assert_eq!(only_outcome(b).expect("delivered").kind, DeliveryKind::Sent);
}

#[test]
fn processed_but_not_requested_by_wtxid() {
    let t0 = Instant::now();
    let mut b = machine(1, t0);
    let ping = announce(&mut b, 0, true, t0);
    assert_eq!(b.poll_timeout(), t0 + TIMEOUT, "no request deadline before the pong");
    let pong_at = t0 + ms(40);
    b.handle_event(message(0, NetworkMessage::Pong(ping)), pong_at);
    let conclusion = pong_at + NONPREF_PEER_TX_DELAY + REQUEST_MARGIN;
    assert_eq!(b.poll_timeout(), conclusion);
    b.handle_timeout(conclusion - ms(1));
    assert!(!b.is_done());
    assert!(actions(&mut b).is_empty());
    b.handle_timeout(conclusion);
    assert!(b.is_done());
    assert_eq!(actions(&mut b), [Action::Disconnect(PeerId(0))]);
    let delivered = only_outcome(b).expect("not requested is not a failure");
    assert_eq!(delivered.kind, DeliveryKind::NotRequested);
    assert_eq!(delivered.elapsed, conclusion - t0);
    assert_eq!(delivered.kind.to_string(), "not requested: the peer may already have it");
}

#[test]
fn processed_but_not_requested_by_txid_waits_for_the_txid_delay_too() {
    let t0 = Instant::now();
    let mut b = machine(1, t0);
    let ping = announce(&mut b, 0, false, t0);
    b.handle_event(message(0, NetworkMessage::Pong(ping)), t0);
    let conclusion = t0 + NONPREF_PEER_TX_DELAY + TXID_RELAY_DELAY + REQUEST_MARGIN;
    assert_eq!(b.poll_timeout(), conclusion);
    b.handle_timeout(conclusion - ms(1));
    assert!(!b.is_done());
    b.handle_timeout(conclusion);
    let delivered = only_outcome(b).expect("not requested");
    assert_eq!(delivered.kind, DeliveryKind::NotRequested);
    assert!(!delivered.by_wtxid);
}

#[test]
fn a_late_pong_is_counted_from_its_arrival() {
    let t0 = Instant::now();
    let mut b = machine(1, t0);
    let ping = announce(&mut b, 0, true, t0);
    b.handle_event(message(0, NetworkMessage::Pong(ping)), t0 + secs(5));
    // A duplicate pong does not move the deadline.
    b.handle_event(message(0, NetworkMessage::Pong(ping)), t0 + secs(6));
    assert_eq!(b.poll_timeout(), t0 + secs(5) + request_delay(true));
    // A pong with another nonce (the session's own ping) is not ours.
    let mut c = machine(1, t0);
    let ours = announce(&mut c, 0, true, t0);
    c.handle_event(message(0, NetworkMessage::Pong(ours.wrapping_add(1))), t0);
    assert_eq!(c.poll_timeout(), t0 + TIMEOUT);
}

#[test]
fn the_overall_deadline_wins_over_the_request_delay() {
    let t0 = Instant::now();
    let addrs = [addr(1).into()];
    let mut b = Broadcaster::new(&tx(), &addrs, t0, secs(2), Rng::from_os());
    b.connecting(0, PeerId(0));
    let ping = announce(&mut b, 0, true, t0);
    b.handle_event(message(0, NetworkMessage::Pong(ping)), t0 + secs(1));
    assert_eq!(b.poll_timeout(), t0 + secs(2));
    b.handle_timeout(t0 + secs(2));
    assert!(matches!(only_outcome(b), Err(BroadcastError::Timeout { stage: Stage::Announced })));
}

#[test]
fn getdata_for_another_transaction_is_ignored() {
    let t0 = Instant::now();
    let mut b = machine(1, t0);
    announce(&mut b, 0, true, t0);
    let other = Inventory::Transaction(Txid::all_zeros());
    b.handle_event(message(0, NetworkMessage::GetData(vec![other])), t0);
    assert!(actions(&mut b).is_empty());
    b.handle_timeout(t0 + TIMEOUT);
    assert!(matches!(only_outcome(b), Err(BroadcastError::Timeout { stage: Stage::Announced })));
}

#[test]
fn getdata_by_txid_or_witness_txid_is_answered() {
    for inv in [Inventory::Transaction(tx().compute_txid()), Inventory::WitnessTransaction(tx().compute_txid())] {
        let t0 = Instant::now();
        let mut b = machine(1, t0);
        announce(&mut b, 0, false, t0);
        b.handle_event(message(0, NetworkMessage::GetData(vec![inv])), t0);
        assert_eq!(actions(&mut b)[0], Action::Send(PeerId(0), NetworkMessage::Tx(tx())));
    }
}

/// A transaction the codec cannot encode (over the message limit) comes
/// back in `SendRejected`: that peer fails at once, with the cause.
#[test]
fn a_transaction_that_cannot_be_sent_fails_the_peer() {
    let t0 = Instant::now();
    let mut b = machine(1, t0);
    announce(&mut b, 0, true, t0);
    request(&mut b, 0, t0);
    let error = crate::wire::WireError::Oversize {
        command: crate::wire::Command::from_wire(*b"tx\0\0\0\0\0\0\0\0\0\0").expect("valid"),
        length: 5_000_000,
        max: 4_000_000,
    };
    let rejected =
        Event::SendRejected { peer: PeerId(0), message: NetworkMessage::Tx(tx()), reason: SendError::Encode(error) };
    b.handle_event(rejected, t0);
    assert_eq!(actions(&mut b), [Action::Disconnect(PeerId(0))]);
    match only_outcome(b) {
        Err(e @ BroadcastError::NotSent(SendError::Encode(crate::wire::WireError::Oversize { .. }))) => {
            let chain = crate::error::Report(&e).to_string();
            assert!(
                chain.starts_with("the transaction could not be sent: cannot encode message: tx payload"),
                "{chain}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn reject_fails_the_peer() {
    let t0 = Instant::now();
    let mut b = machine(1, t0);
    announce(&mut b, 0, true, t0);
    let reject = Reject {
        message: "tx".into(),
        ccode: RejectReason::Duplicate,
        reason: "txn-already-known".into(),
        hash: sha256d::Hash::from_byte_array(tx().compute_txid().to_byte_array()),
    };
    b.handle_event(message(0, NetworkMessage::Reject(reject)), t0);
    assert_eq!(actions(&mut b), [Action::Disconnect(PeerId(0))]);
    match only_outcome(b) {
        Err(BroadcastError::Rejected { code, reason }) => {
            assert_eq!(code, "duplicate");
            assert_eq!(reason, "txn-already-known");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn failures_carry_their_stage() {
    let t0 = Instant::now();
    let mut b = machine(4, t0);
    // 0: the connection fails.
    let error = ConnectError::Io(io::Error::from(io::ErrorKind::ConnectionRefused));
    b.handle_event(Event::ConnectFailed { peer: PeerId(0), target: addr(18444).into(), error }, t0);
    // 1: the handshake fails.
    b.handle_event(Event::Disconnected { peer: PeerId(1), reason: DisconnectReason::PeerClosed }, t0);
    // 2: gone after the inv.
    announce(&mut b, 2, true, t0);
    b.handle_event(Event::Disconnected { peer: PeerId(2), reason: DisconnectReason::PeerClosed }, t0);
    // 3: gone after the tx.
    announce(&mut b, 3, true, t0);
    request(&mut b, 3, t0);
    b.handle_event(Event::Disconnected { peer: PeerId(3), reason: DisconnectReason::PeerClosed }, t0);
    assert!(b.is_done());
    let outcomes = b.into_outcomes();
    assert!(matches!(outcomes[0].result, Err(BroadcastError::Connect(ConnectError::Io(_)))));
    assert!(matches!(outcomes[1].result, Err(BroadcastError::Handshake(DisconnectReason::PeerClosed))));
    assert!(matches!(outcomes[2].result, Err(BroadcastError::Disconnected { stage: Stage::Announced, .. })));
    assert!(matches!(outcomes[3].result, Err(BroadcastError::Disconnected { stage: Stage::Sent, .. })));
    let ports: Vec<_> = outcomes.iter().map(|o| o.target.port()).collect();
    assert_eq!(ports, [18444, 18445, 18446, 18447], "outcomes keep the order of the targets");
}

#[test]
fn timeouts_carry_their_stage() {
    let t0 = Instant::now();
    let mut b = machine(4, t0);
    // 0 never connects; 1 connects but never completes the handshake.
    b.connected(PeerId(1));
    assert_eq!(b.connecting_peers(), [PeerId(0), PeerId(2), PeerId(3)]);
    announce(&mut b, 2, true, t0);
    announce(&mut b, 3, true, t0);
    request(&mut b, 3, t0);
    b.handle_timeout(t0 + TIMEOUT - ms(1));
    assert!(!b.is_done());
    b.handle_timeout(t0 + TIMEOUT);
    assert!(b.is_done());
    let mut left = actions(&mut b);
    left.sort_by_key(|a| format!("{a:?}"));
    let all: Vec<_> = (0..4).map(|p| Action::Disconnect(PeerId(p))).collect();
    assert_eq!(left, all, "every peer is let go");
    let stages: Vec<_> = b
        .into_outcomes()
        .into_iter()
        .map(|o| match o.result {
            Err(BroadcastError::Timeout { stage }) => stage,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(stages, [Stage::Connect, Stage::Handshake, Stage::Announced, Stage::Sent]);
}

#[test]
fn a_gone_reactor_is_its_own_error() {
    let t0 = Instant::now();
    let mut b = machine(3, t0);
    b.handle_event(message(0, NetworkMessage::Ping(1)), t0); // before ready: ignored
    announce(&mut b, 1, true, t0);
    b.handle_event(
        Event::ConnectFailed { peer: PeerId(2), target: addr(1).into(), error: ConnectError::Cancelled },
        t0,
    );
    assert!(actions(&mut b).is_empty(), "a failed connection needs no disconnect");
    b.reactor_gone();
    assert!(b.is_done());
    assert!(actions(&mut b).is_empty(), "nothing to disconnect on a gone reactor");
    let outcomes = b.into_outcomes();
    assert!(matches!(outcomes[0].result, Err(BroadcastError::ReactorGone { stage: Stage::Connect })));
    assert!(matches!(outcomes[1].result, Err(BroadcastError::ReactorGone { stage: Stage::Announced })));
    assert!(matches!(outcomes[2].result, Err(BroadcastError::Connect(ConnectError::Cancelled))), "kept");
}

#[test]
fn events_after_the_outcome_change_nothing() {
    let t0 = Instant::now();
    let mut b = machine(1, t0);
    let first = announce(&mut b, 0, true, t0);
    let second = request(&mut b, 0, t0);
    b.handle_event(message(0, NetworkMessage::Pong(second)), t0);
    actions(&mut b);
    b.handle_event(message(0, NetworkMessage::Pong(first)), t0);
    b.handle_event(Event::Disconnected { peer: PeerId(0), reason: DisconnectReason::Flushed }, t0);
    b.handle_event(message(9, NetworkMessage::GetData(vec![])), t0);
    b.handle_timeout(t0 + TIMEOUT);
    assert!(actions(&mut b).is_empty());
    assert_eq!(only_outcome(b).expect("still delivered").kind, DeliveryKind::Sent);
}
