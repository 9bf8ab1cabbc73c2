//! Memory bounds seen through the reactor's counters: the event queue's
//! byte limit and the memory budget. (The RSS-measuring tests have their
//! own binaries: `tests/memory_flood.rs`, `tests/memory_trickle.rs`.)

use std::time::{Duration, Instant};

use bitcoin::p2p::message::NetworkMessage;

use crate::common::*;

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
    // queued messages plus the one that crossed the limit, at most. Once
    // the queue is full, the reactor gets another 500 ms to overrun it.
    let (mut most, deadline, mut settle) = (0, Instant::now() + WAIT, None);
    while Instant::now() < deadline && settle.is_none_or(|end| Instant::now() < end) {
        let decoded = server.peer_stats(s).unwrap().unwrap().msgs_in;
        most = most.max(decoded);
        assert!(decoded <= 4, "{decoded} messages decoded with 3 MB allowed in the queue");
        if most >= 3 && settle.is_none() {
            settle = Some(Instant::now() + Duration::from_millis(500));
        }
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

/// `memory_budget`: twelve peers send a 1 MB transaction each at once.
/// Without a budget their buffers reach about 12 MB together; with 2 MB,
/// reading pauses for the largest, the buffers stay within the budget plus
/// one frame and a round of reads, and every transaction still arrives.
#[test]
fn the_memory_budget_pauses_the_largest_buffers_and_every_frame_completes() {
    const PEERS: usize = 12;
    let run = |budget: Option<usize>| {
        let mut config = listener_config();
        config.memory_budget = budget;
        let (server, addr) = listener_with(config);
        let client = client();
        let ids: Vec<_> = (0..PEERS).map(|_| client.connect(addr).unwrap()).collect();
        for _ in 0..PEERS {
            connected(&client);
            connected(&server);
        }
        for (i, id) in ids.iter().enumerate() {
            let mut tx = big_tx(1_000_000);
            tx.lock_time = bitcoin::absolute::LockTime::from_consensus(i as u32);
            client.send(*id, NetworkMessage::Tx(tx)).unwrap();
        }
        let mut seen = std::collections::HashSet::new();
        while seen.len() < PEERS {
            if let (_, NetworkMessage::Tx(tx)) = message(&server) {
                assert_eq!(tx.output[0].script_pubkey.len(), 1_000_000 - 64, "whole");
                assert!(seen.insert(tx.lock_time.to_consensus_u32()), "once each");
            }
        }
        server.reactor_stats()
    };
    let free = run(None);
    let budgeted = run(Some(2_000_000));
    println!(
        "buffers' peak: {} bytes without a budget, {} with 2,000,000 ({} pauses)",
        free.buffered_peak, budgeted.buffered_peak, budgeted.budget_pauses
    );
    // One frame (1 MB) and one round of reads (256 KiB per peer) over.
    let bound = 2_000_000 + 1_000_100 + PEERS as u64 * 256 * 1024;
    assert!(budgeted.buffered_peak <= bound, "peak {} over {bound}", budgeted.buffered_peak);
    assert!(budgeted.budget_pauses > 0);
    assert_eq!(free.budget_pauses, 0);
}
