//! `Handle::recv_async` (feature `async`) driven by a minimal executor: no
//! runtime, just a waker that unparks the blocked thread.

#![cfg(feature = "async")]

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;

use bitcoin::p2p::message::NetworkMessage;
use peerlink::Event;

use crate::common::*;

struct Unpark {
    thread: Thread,
    wakes: AtomicUsize,
}

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        self.thread.unpark();
    }
}

/// Polls `fut` to completion on this thread, parking between wake-ups.
fn block_on<F: Future>(fut: F, unpark: &Arc<Unpark>) -> F::Output {
    let waker = Waker::from(Arc::clone(unpark));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        // Only a wake-up (or a rare spurious unpark) ends the park early; a
        // lost wake-up shows as a park that runs to its timeout.
        let parked = std::time::Instant::now();
        std::thread::park_timeout(WAIT);
        assert!(parked.elapsed() < WAIT, "pending future was never woken");
    }
}

#[test]
fn recv_async_is_woken_by_the_reactor() {
    let (client, c, server, _) = pair();
    let unpark = Arc::new(Unpark { thread: std::thread::current(), wakes: AtomicUsize::new(0) });
    // Poll once with nothing to receive: the future registers its waker.
    {
        let waker = Waker::from(Arc::clone(&unpark));
        let mut cx = Context::from_waker(&waker);
        let mut fut = pin!(server.recv_async());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        // Now an event arrives: the reactor must wake this task.
        client.send(c, NetworkMessage::Ping(5)).unwrap();
        let event = block_on(fut, &unpark);
        assert!(matches!(event, Some(Event::Message { message: NetworkMessage::Ping(5), .. })), "{event:?}");
    }
    // Many events in a row.
    for i in 0..100 {
        client.send(c, NetworkMessage::Ping(i)).unwrap();
    }
    for i in 0..100 {
        match block_on(server.recv_async(), &unpark) {
            Some(Event::Message { message, .. }) => assert_eq!(message, NetworkMessage::Ping(i)),
            other => panic!("unexpected {other:?}"),
        }
    }
    // The end of the stream is reported.
    server.shutdown();
    assert!(block_on(server.recv_async(), &unpark).is_none());
}
