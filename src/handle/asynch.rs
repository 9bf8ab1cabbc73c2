//! Receiving events from async code (feature `async`), on any executor.
//!
//! [`Handle::recv_async`](crate::Handle::recv_async) returns a future that
//! resolves to the next event. It pulls in no runtime: the reactor thread
//! wakes the task's [`Waker`](std::task::Waker) after each round in which it
//! may have produced events, and only when a task is waiting (one atomic load
//! per round otherwise).
//!
//! With tokio:
//!
//! ```ignore
//! let handle = peerlink::start(config)?;
//! while let Some(event) = handle.recv_async().await {
//!     println!("{event:?}");
//! }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use crate::error::TryRecvError;
use crate::event::Event;
use crate::handle::Handle;
use crate::stack::Stack;

/// The future returned by [`Handle::recv_async`]: the next event, or `None`
/// once the reactor has stopped and every event was received.
#[must_use = "futures do nothing unless polled"]
pub struct Recv<'a, S: Stack> {
    pub(crate) handle: &'a Handle<S>,
}

impl<S: Stack> std::fmt::Debug for Recv<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Recv")
    }
}

impl<S: Stack> Future for Recv<'_, S> {
    type Output = Option<Event<S>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let handle = self.handle;
        match handle.try_recv() {
            Ok(event) => return Poll::Ready(Some(event)),
            Err(TryRecvError::Disconnected) => return Poll::Ready(None),
            Err(TryRecvError::Empty) => {}
        }
        let shared = handle.shared();
        {
            let mut wakers = shared.async_wakers.lock().unwrap_or_else(|e| e.into_inner());
            if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
        }
        shared.async_waiting.store(true, Ordering::SeqCst);
        // An event sent before the flag was visible would not wake us: look
        // again now that it is.
        match handle.try_recv() {
            Ok(event) => Poll::Ready(Some(event)),
            Err(TryRecvError::Disconnected) => Poll::Ready(None),
            Err(TryRecvError::Empty) => Poll::Pending,
        }
    }
}
