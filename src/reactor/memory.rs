//! The optional reactor-wide memory budget
//! ([`Config::memory_budget`](crate::Config::memory_budget)): the links'
//! receive and send buffers, counted as they change. Over the budget,
//! reading pauses for the peers whose buffers are above an even share of
//! it, so the largest go first; one paused peer, the one closest to
//! completing its frame, reads each round, so that frames still complete
//! and buffers drain.

use super::{CodecFor, Factory, Protocol, Reactor};

/// What the budget tracks.
#[derive(Debug, Default)]
pub(super) struct Memory {
    budget: Option<usize>,
    /// Bytes in the links' buffers (allocated capacity).
    used: usize,
    /// The most `used` reached.
    pub(super) peak: usize,
    /// Links whose reading waits for the budget (still marked in the read
    /// queue, so nothing else queues them again).
    parked: Vec<u64>,
    /// The parked link let through this round.
    reprieve: Option<u64>,
}

impl Memory {
    pub(super) fn new(budget: Option<usize>) -> Memory {
        Memory { budget, ..Memory::default() }
    }

    /// Links wait for the budget: the next round should come soon even
    /// without new readiness.
    pub(super) fn waiting(&self) -> bool {
        !self.parked.is_empty()
    }

    fn over(&self) -> bool {
        self.budget.is_some_and(|b| self.used > b)
    }
}

impl<F, P> Reactor<F, P>
where
    F: Factory,
    F::Codec: CodecFor<P>,
    P: Protocol,
{
    /// Counts link `id`'s buffers again after an operation on it.
    pub(super) fn account(&mut self, id: u64) {
        let Some(slot) = self.slots.get_mut(&id) else { return };
        let now = slot.link.buffered();
        let memory = &mut self.memory;
        memory.used = memory.used + now - slot.accounted;
        memory.peak = memory.peak.max(memory.used);
        slot.accounted = now;
        self.shared.stats.buffered.store(memory.used as u64, std::sync::atomic::Ordering::Relaxed);
        self.shared.stats.buffered_peak.store(memory.peak as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// A closed link's buffers are gone.
    pub(super) fn unaccount(&mut self, accounted: usize) {
        self.memory.used -= accounted;
    }

    /// Over the budget, whether link `id` must wait before reading (then
    /// it is parked).
    pub(super) fn park_for_budget(&mut self, id: u64) -> bool {
        if !self.memory.over() || self.memory.reprieve == Some(id) {
            return false;
        }
        let share = self.memory.budget.unwrap_or(usize::MAX) / self.slots.len().max(1);
        let Some(slot) = self.slots.get(&id) else { return false };
        if slot.accounted <= share {
            return false;
        }
        self.memory.parked.push(id);
        super::shared::Counters::bump(&self.shared.stats.budget_pauses);
        true
    }

    /// Bytes link `id` may read this round: the round's I/O budget, or over
    /// the memory budget, what keeps it within its even share (a reprieved
    /// link reads its frame on).
    pub(super) fn read_allowance(&self, id: u64, io_budget: usize) -> usize {
        if !self.memory.over() || self.memory.reprieve == Some(id) {
            return io_budget;
        }
        let share = self.memory.budget.unwrap_or(usize::MAX) / self.slots.len().max(1);
        let accounted = self.slots.get(&id).map_or(0, |s| s.accounted);
        io_budget.min(share.saturating_sub(accounted).max(super::link::MIN_READ))
    }

    /// At the start of a round: under the budget every parked link reads
    /// again; over it, the one closest to completing its frame does.
    pub(super) fn unpark(&mut self) {
        self.memory.reprieve = None;
        if self.memory.parked.is_empty() {
            return;
        }
        let slots = &self.slots;
        self.memory.parked.retain(|id| slots.contains_key(id));
        if !self.memory.over() {
            self.read_queue.extend(self.memory.parked.drain(..));
            return;
        }
        let closest = self
            .memory
            .parked
            .iter()
            .enumerate()
            .min_by_key(|(_, id)| slots.get(id).map_or(usize::MAX, |s| s.link.frame_remaining()))
            .map(|(i, _)| i);
        if let Some(i) = closest {
            let id = self.memory.parked.swap_remove(i);
            // Let it past the check this round.
            self.memory.reprieve = Some(id);
            self.read_queue.push_front(id);
        }
    }
}
