//! The event side of the reactor: events gathered per round and handed to
//! the user in batches over a bounded channel.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crossbeam_channel::{Sender, TrySendError};

use super::link::Sink;
use super::shared::Shared;
use crate::event::Event;
use crate::protocol::Protocol;
use crate::stack::Stack;

/// The event side: a bounded channel of event batches. Events of one round
/// are collected in `batch` and sent together at the end of the round (or
/// once `batch_max` have gathered): one channel operation and at most one
/// wake-up of the consumer per batch. When the channel is full the batch
/// waits in `overflow` and the reactor is paused: no socket is read and no
/// connection accepted until the user catches up, so `overflow` holds at most
/// one decoded message beyond a full batch, plus events caused by user
/// commands (bounded by the in-flight cap) and timers.
///
/// The messages' wire bytes are counted too (`Shared::event_bytes`, less
/// what the user took): over [`Config::event_bytes_limit`](crate::Config::event_bytes_limit)
/// the reactor pauses the same way, so that large messages cannot fill the
/// queue's event capacity with gigabytes.
pub(super) struct Outbox<S: Stack> {
    pub(super) tx: Sender<Vec<Event<S>>>,
    pub(super) batch: Vec<Event<S>>,
    pub(super) batch_max: usize,
    /// Wire bytes of the messages in `batch`.
    batch_bytes: usize,
    bytes_limit: usize,
    pub(super) overflow: VecDeque<Vec<Event<S>>>,
    pub(super) shared: Arc<Shared>,
}

impl<S: Stack> Outbox<S> {
    pub(super) fn new(tx: Sender<Vec<Event<S>>>, batch_max: usize, bytes_limit: usize, shared: Arc<Shared>) -> Self {
        Outbox { tx, batch: Vec::new(), batch_max, batch_bytes: 0, bytes_limit, overflow: VecDeque::new(), shared }
    }

    /// Whether the reactor must wait for the user: batches wait for room
    /// in the channel, or the queued messages hold more bytes than allowed.
    pub(super) fn paused(&self) -> bool {
        !self.overflow.is_empty() || self.over_bytes()
    }

    /// Paused, and the user made room since (the reactor can go on).
    pub(super) fn has_room(&self) -> bool {
        (self.overflow.is_empty() || !self.tx.is_full()) && !self.over_bytes()
    }

    fn over_bytes(&self) -> bool {
        self.shared.event_bytes.load(Ordering::SeqCst) + self.batch_bytes > self.bytes_limit
    }

    pub(super) fn emit(&mut self, event: Event<S>) {
        if let Event::Message { wire_size, .. } = &event {
            self.batch_bytes += wire_size;
        }
        self.batch.push(event);
        if self.batch.len() >= self.batch_max {
            self.send_batch();
        }
    }

    /// Hands the current batch to the consumer, or parks it in `overflow`.
    pub(super) fn send_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(self.batch_max.min(64)));
        self.shared.event_bytes.fetch_add(std::mem::take(&mut self.batch_bytes), Ordering::SeqCst);
        self.overflow.push_back(batch);
        self.flush();
        if !self.overflow.is_empty() {
            self.shared.events_blocked.store(true, Ordering::SeqCst);
            // The consumer may have made room before it could see the flag.
            self.flush();
        }
    }

    /// Moves parked batches into the channel while there is room.
    pub(super) fn flush(&mut self) {
        while let Some(batch) = self.overflow.pop_front() {
            match self.tx.try_send(batch) {
                Ok(()) => {}
                Err(TrySendError::Full(batch)) => {
                    self.overflow.push_front(batch);
                    self.shared.events_blocked.store(true, Ordering::SeqCst);
                    return;
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.overflow.clear();
                    return;
                }
            }
        }
    }
}

impl<P: Protocol> Sink<P> for Outbox<P::Stack> {
    fn emit(&mut self, event: Event<P::Stack>) {
        Outbox::emit(self, event);
    }
    fn paused(&self) -> bool {
        Outbox::paused(self)
    }
}
