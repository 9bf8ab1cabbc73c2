//! What the handles and the reactor thread share: the command channel's
//! commands and queries, per-peer send gates, and flags and counters.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Instant;

use crossbeam_channel::Sender;

use crate::handle::{Disconnect, ReactorStats};
use crate::peer::PeerStats;
use crate::types::PeerId;

pub(crate) enum Cmd<M, I> {
    Connect {
        peer: PeerId,
        target: crate::Target,
        gate: Arc<Gate>,
    },
    Send {
        peer: PeerId,
        message: M,
    },
    Disconnect {
        peer: PeerId,
        mode: Disconnect,
    },
    /// Exempt a peer from eviction, or end the exemption.
    Protect {
        peer: PeerId,
        protected: bool,
    },
    /// A subnet was banned: close the peers in it.
    Banned {
        subnet: crate::ban::Subnet,
    },
    /// The user found what the peer sent useful (eviction protects it).
    Relayed {
        peer: PeerId,
        what: crate::event::Relayed,
    },
    Query(Query<I>),
}

/// Questions the reactor answers on a one-shot channel.
pub(crate) enum Query<I> {
    Peers(Sender<Vec<I>>),
    Info(PeerId, Sender<Option<I>>),
    Stats(PeerId, Sender<Option<PeerStats>>),
}

/// Per-peer send gate, shared by the handles and the reactor.
///
/// It is closed while the peer's send buffer is over its limit (`full`, set
/// by the reactor) or while too many messages are on their way to the
/// reactor (`in_flight`, counted up by `Handle::send` and down by the
/// reactor). `Handle::send` refuses messages while it is closed,
/// synchronously, so refused messages never overtake accepted ones, and the
/// memory a peer's queue can take stays bounded.
#[derive(Debug)]
pub(crate) struct Gate {
    pub(crate) full: AtomicBool,
    pub(crate) in_flight: AtomicUsize,
    pub(crate) max_in_flight: usize,
    /// A send was refused: report `Writable` when the gate reopens.
    pub(crate) refused: AtomicBool,
    /// The peer is gone: waiting senders give up.
    pub(crate) gone: AtomicBool,
    /// Senders blocked in `Handle::send_timeout` on this gate.
    pub(crate) waiters: AtomicUsize,
    pub(crate) lock: Mutex<()>,
    pub(crate) cond: Condvar,
    /// The reactor-wide budget of messages on their way, shared by every
    /// gate of one reactor.
    pub(crate) budget: Arc<Budget>,
}

/// Messages on their way to the reactor, all peers together: what the
/// command channel holds. Its cap bounds the channel's memory whatever the
/// number of peers (the per-peer cap alone allows peers × that cap).
#[derive(Debug)]
pub(crate) struct Budget {
    pub(crate) used: AtomicUsize,
    pub(crate) max: usize,
    /// A sender was refused, or waits, because the budget was used up: the
    /// reactor looks for gates to reopen once it has drained to half.
    pub(crate) refused: AtomicBool,
}

impl Budget {
    pub(crate) fn new(max: usize) -> Self {
        Budget { used: AtomicUsize::new(0), max: max.max(2), refused: AtomicBool::new(false) }
    }

    fn exhausted(&self) -> bool {
        self.used.load(Ordering::SeqCst) >= self.max
    }

    /// Reactor side: one message taken off the channel. True when senders
    /// refused for the budget must now be told they may send again.
    pub(crate) fn taken(&self) -> bool {
        let used = self.used.fetch_sub(1, Ordering::SeqCst) - 1;
        used <= self.max / 2 && self.refused.load(Ordering::SeqCst) && self.refused.swap(false, Ordering::SeqCst)
    }
}

/// Why a gate is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closed {
    BufferFull,
    InFlight,
}

impl Gate {
    /// A gate with its own budget (tests).
    #[cfg(test)]
    pub(crate) fn new(max_in_flight: usize) -> Self {
        Gate::with_budget(max_in_flight, Arc::new(Budget::new(usize::MAX)))
    }

    pub(crate) fn with_budget(max_in_flight: usize, budget: Arc<Budget>) -> Self {
        Gate {
            full: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            max_in_flight: max_in_flight.max(2),
            refused: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            waiters: AtomicUsize::new(0),
            lock: Mutex::new(()),
            cond: Condvar::new(),
            budget,
        }
    }

    pub(crate) fn closed(&self) -> Option<Closed> {
        if self.full.load(Ordering::SeqCst) {
            Some(Closed::BufferFull)
        } else if self.in_flight.load(Ordering::SeqCst) >= self.max_in_flight || self.budget.exhausted() {
            Some(Closed::InFlight)
        } else {
            None
        }
    }

    /// Whether `max_in_flight` messages are on their way to the reactor.
    pub(crate) fn in_flight_full(&self) -> bool {
        // A hint for pausing decoding, checked per message: no ordering
        // needed, the reactor looks again after every command it takes.
        self.in_flight.load(Ordering::Relaxed) >= self.max_in_flight
    }

    /// Whether the gate is open with hysteresis: the buffer under its limit
    /// and at most half the in-flight cap used.
    fn wide_open(&self) -> bool {
        !self.full.load(Ordering::SeqCst)
            && self.in_flight.load(Ordering::SeqCst) <= self.max_in_flight / 2
            && self.budget.used.load(Ordering::SeqCst) <= self.budget.max / 2
    }

    /// Handle side, a send is refused: ask for `Writable` when the gate
    /// reopens (flag first, then the caller re-checks, so the reactor
    /// cannot open the gate unseen in between).
    pub(crate) fn mark_refused(&self) {
        self.refused.store(true, Ordering::SeqCst);
        if self.budget.exhausted() {
            self.budget.refused.store(true, Ordering::SeqCst);
        }
    }

    /// Reactor side, after the buffer drained or a command was taken: true
    /// (once) if a refused sender must now be told it may send again. Also
    /// wakes senders waiting in `send_timeout`.
    pub(crate) fn reopened(&self) -> bool {
        // The common case, per message: nobody was refused, nobody waits.
        if !self.refused.load(Ordering::SeqCst) && self.waiters.load(Ordering::SeqCst) == 0 {
            return false;
        }
        if !self.wide_open() {
            return false;
        }
        self.notify_waiters();
        self.refused.load(Ordering::SeqCst) && self.refused.swap(false, Ordering::SeqCst)
    }

    /// Reactor side: the peer is gone.
    pub(crate) fn close_for_good(&self) {
        self.gone.store(true, Ordering::SeqCst);
        self.notify_waiters();
    }

    fn notify_waiters(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.cond.notify_all();
        }
    }

    /// Handle side: blocks until the gate may be open, the peer is gone or
    /// `deadline` passes. Returns false on the deadline.
    pub(crate) fn wait(&self, deadline: Instant) -> bool {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let reached = loop {
            // Checked under the lock the reactor takes to notify: no wake-up
            // can fall between this check and the wait.
            if self.budget.exhausted() {
                // Waiting on the budget: the reactor must look at this gate
                // when it has drained (it notifies under this lock).
                self.budget.refused.store(true, Ordering::SeqCst);
            }
            if self.gone.load(Ordering::SeqCst) || self.closed().is_none() {
                break true;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
                break false;
            };
            guard = self.cond.wait_timeout(guard, left).unwrap_or_else(|e| e.into_inner()).0;
        };
        drop(guard);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        reached
    }
}

/// State shared between the handles and the reactor thread.
pub(crate) struct Shared {
    pub(crate) waker: mio::Waker,
    /// Set by the reactor just before it may block in `poll`.
    pub(crate) sleeping: AtomicBool,
    /// Set by the reactor when the event channel was full.
    pub(crate) events_blocked: AtomicBool,
    pub(crate) shutdown: AtomicBool,
    pub(crate) next_peer: AtomicU64,
    /// Our best height, announced in `version` (session mode).
    pub(crate) start_height: AtomicI32,
    /// Send gates of live peers.
    pub(crate) gates: RwLock<HashMap<PeerId, Arc<Gate>, BuildHasherDefault<super::slot::IdHasher>>>,
    pub(crate) max_in_flight: usize,
    pub(crate) budget: Arc<Budget>,
    /// Async receivers waiting for an event (feature `async`).
    pub(crate) async_waiting: AtomicBool,
    pub(crate) async_wakers: Mutex<Vec<std::task::Waker>>,
    /// Reactor-wide counters.
    pub(crate) stats: Counters,
    /// Wire bytes of the messages handed to the event channel and not yet
    /// taken by a handle.
    pub(crate) event_bytes: AtomicUsize,
    /// Banned addresses: the handles edit it, the reactor checks it at
    /// accept and connect.
    pub(crate) bans: Mutex<crate::ban::BanList>,
}

/// Reactor-wide counters, written by the reactor thread only.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) inbound_accepted: AtomicU64,
    pub(crate) inbound_refused_full: AtomicU64,
    pub(crate) inbound_evicted: AtomicU64,
    pub(crate) inbound_refused_banned: AtomicU64,
    pub(crate) inbound_refused_source: AtomicU64,
    pub(crate) inbound_failed: AtomicU64,
    pub(crate) accept_backoffs: AtomicU64,
    pub(crate) auto_bans: AtomicU64,
    pub(crate) buffered: AtomicU64,
    pub(crate) buffered_peak: AtomicU64,
    pub(crate) budget_pauses: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> ReactorStats {
        ReactorStats {
            inbound_accepted: self.inbound_accepted.load(Ordering::Relaxed),
            inbound_refused_full: self.inbound_refused_full.load(Ordering::Relaxed),
            inbound_evicted: self.inbound_evicted.load(Ordering::Relaxed),
            inbound_refused_banned: self.inbound_refused_banned.load(Ordering::Relaxed),
            inbound_refused_source: self.inbound_refused_source.load(Ordering::Relaxed),
            inbound_failed: self.inbound_failed.load(Ordering::Relaxed),
            accept_backoffs: self.accept_backoffs.load(Ordering::Relaxed),
            auto_bans: self.auto_bans.load(Ordering::Relaxed),
            buffered: self.buffered.load(Ordering::Relaxed),
            buffered_peak: self.buffered_peak.load(Ordering::Relaxed),
            budget_pauses: self.budget_pauses.load(Ordering::Relaxed),
        }
    }
}

/// Now as unix seconds, the ban list's clock.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Shared {
    /// Whether `ip` is banned now.
    pub(crate) fn is_banned(&self, ip: std::net::IpAddr) -> bool {
        self.bans.lock().unwrap_or_else(|e| e.into_inner()).is_banned(&ip, unix_now())
    }

    pub(crate) fn new(waker: mio::Waker, start_height: i32, max_in_flight: usize, max_total: usize) -> Shared {
        Shared {
            waker,
            sleeping: AtomicBool::new(false),
            events_blocked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            next_peer: AtomicU64::new(1),
            start_height: AtomicI32::new(start_height),
            gates: Default::default(),
            max_in_flight,
            budget: Arc::new(Budget::new(max_total)),
            async_waiting: AtomicBool::new(false),
            async_wakers: Default::default(),
            stats: Counters::default(),
            bans: Mutex::new(crate::ban::BanList::new()),
            event_bytes: AtomicUsize::new(0),
        }
    }

    /// Wakes the reactor only if it may be asleep: one atomic swap per
    /// command, one syscall only when the reactor is idle.
    pub(crate) fn wake_if_sleeping(&self) {
        if self.sleeping.load(Ordering::SeqCst) && self.sleeping.swap(false, Ordering::SeqCst) {
            self.wake();
        }
    }

    pub(crate) fn wake(&self) {
        if let Err(e) = self.waker.wake() {
            log::error!("cannot wake reactor: {e}");
        }
    }

    pub(crate) fn allocate_peer(&self) -> (PeerId, Arc<Gate>) {
        let peer = PeerId(self.next_peer.fetch_add(1, Ordering::Relaxed));
        let gate = Arc::new(Gate::with_budget(self.max_in_flight, Arc::clone(&self.budget)));
        self.gates.write().unwrap_or_else(|e| e.into_inner()).insert(peer, Arc::clone(&gate));
        (peer, gate)
    }

    pub(crate) fn gate(&self, peer: PeerId) -> Option<Arc<Gate>> {
        self.gates.read().unwrap_or_else(|e| e.into_inner()).get(&peer).cloned()
    }

    /// Wakes async receivers if any wait; called by the reactor after each
    /// round and when it stops. One atomic load when nobody waits.
    pub(crate) fn wake_async(&self) {
        if self.async_waiting.load(Ordering::SeqCst) && self.async_waiting.swap(false, Ordering::SeqCst) {
            let wakers = std::mem::take(&mut *self.async_wakers.lock().unwrap_or_else(|e| e.into_inner()));
            for w in wakers {
                w.wake();
            }
        }
    }

    pub(crate) fn remove_gate(&self, peer: PeerId) {
        let gate = self.gates.write().unwrap_or_else(|e| e.into_inner()).remove(&peer);
        if let Some(gate) = gate {
            gate.close_for_good();
        }
    }
}
