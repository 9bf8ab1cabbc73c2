//! [`Pooled`]: a reactor with an outbound [`Pool`] driven on the caller's
//! thread as it receives events.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::discovery::addrbook::AddrBook;
use crate::discovery::pool::{Pool, PoolAction, PoolConfig, PoolPeer};
use crate::discovery::seeds::Lookups;
use crate::error::{RecvTimeoutError, TryRecvError};
use crate::event::Event;
use crate::handle::{Disconnect, Handle};
use crate::target::Target;
use crate::types::later;
use crate::{Config, Mode, StartError};

/// How often pending seed lookups are checked while waiting for events.
const LOOKUP_POLL: Duration = Duration::from_millis(20);

/// The wall clock in seconds since 1970, as the address book keeps time.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A reactor in session mode plus an outbound [`Pool`] that keeps
/// [`PoolConfig::outbound`] peers connected.
///
/// The pool runs on the caller's thread while it receives: every
/// [`recv_timeout`](Pooled::recv_timeout) (or [`recv`](Pooled::recv),
/// [`try_recv`](Pooled::try_recv)) feeds the event to the pool, carries out
/// what the pool asks (dials, `getaddr`, disconnections, seed lookups on a
/// thread of their own) and then returns the event unchanged. So the user
/// sees every ordinary event, the pool's peers included, and uses
/// [`handle`](Pooled::handle) for everything else; [`peers`](Pooled::peers)
/// says which peers the pool holds. A caller that stops receiving stops the
/// pool too (the reactor goes on).
///
/// ```no_run
/// use std::time::Duration;
/// use peerlink::discovery::{PoolConfig, Pooled};
///
/// let config = peerlink::Config::new(bitcoin::Network::Bitcoin);
/// let mut net = Pooled::start(config, PoolConfig::new(bitcoin::Network::Bitcoin))?;
/// while net.pool().ready_count() < 8 {
///     match net.recv_timeout(Duration::from_secs(1)) {
///         Ok(peerlink::Event::Ready { peer, info }) => println!("{peer}: {}", info.addr),
///         Ok(_) | Err(peerlink::RecvTimeoutError::Timeout) => {}
///         Err(e) => return Err(e.into()),
///     }
/// }
/// for p in net.peers() {
///     println!("{} {} from {}", p.peer, p.target, p.origin);
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Pooled {
    handle: Handle,
    pool: Pool,
    lookups: Vec<Lookups>,
    next_tick: Instant,
    dials: std::collections::VecDeque<PoolPeer>,
}

/// How many of the pool's dials [`Pooled::take_dials`] keeps.
const MAX_DIAL_LOG: usize = 4096;

impl Pooled {
    /// Starts a reactor from `config` (its mode is forced to session: the
    /// pool needs the handshake) with a pool and a fresh, empty address
    /// book with a random key.
    pub fn start(config: Config, pool: PoolConfig) -> Result<Pooled, StartError> {
        let book = AddrBook::new(crate::rng::Rng::from_os().bytes32());
        Pooled::with_book(config, pool, book)
    }

    /// As [`start`](Pooled::start), drawing from `book` (for example one
    /// imported with [`AddrBook::import`]).
    pub fn with_book(mut config: Config, mut pool: PoolConfig, book: AddrBook) -> Result<Pooled, StartError> {
        config.mode = Mode::Session;
        #[cfg(feature = "socks")]
        {
            pool.proxied = config.proxy.is_some();
            pool.onion = config.proxy.is_some() || config.onion_proxy.is_some();
        }
        #[cfg(not(feature = "socks"))]
        {
            pool.proxied = false;
            pool.onion = false;
        }
        let handle = crate::start(config)?;
        let now = Instant::now();
        let mut pooled = Pooled {
            handle,
            pool: Pool::new(pool, book, now),
            lookups: Vec::new(),
            next_tick: now,
            dials: Default::default(),
        };
        pooled.tick();
        Ok(pooled)
    }

    /// The reactor's handle: send, disconnect, ban, stats...
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// The pool: its peers, stats and address book.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The pool, to change its target or reach its book.
    pub fn pool_mut(&mut self) -> &mut Pool {
        &mut self.pool
    }

    /// The peers the pool holds, dials under way included.
    pub fn peers(&self) -> Vec<PoolPeer> {
        self.pool.peers()
    }

    /// The connections the pool opened since the last call (at most the
    /// last 4,096), in order, each as it was when dialled: a dial can fail
    /// and leave [`peers`](Pooled::peers) before the caller ever sees it
    /// there, and its `ConnectFailed` is then the next event.
    pub fn take_dials(&mut self) -> Vec<PoolPeer> {
        self.dials.drain(..).collect()
    }

    /// Adds a manual peer: connected now, reconnected whenever it goes,
    /// never dropped by the pool. A connection the pool already holds to
    /// `target` becomes the manual peer's ([`Pool::add_manual`]); to stop
    /// keeping it, [`Pool::remove_manual`] through
    /// [`pool_mut`](Pooled::pool_mut).
    pub fn add_manual(&mut self, target: impl Into<Target>) {
        self.pool.add_manual(target.into(), Instant::now());
        self.tick();
    }

    /// Waits up to `timeout` for the next event, running the pool
    /// meanwhile; the event is returned after the pool has seen it.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Event, RecvTimeoutError> {
        let deadline = later(Instant::now(), timeout);
        loop {
            self.poll_lookups();
            let now = Instant::now();
            if now >= self.next_tick {
                self.tick();
            }
            let mut wake = deadline.min(self.next_tick);
            if !self.lookups.is_empty() {
                wake = wake.min(now + LOOKUP_POLL);
            }
            match self.handle.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(event) => {
                    self.pool.on_event(&event, Instant::now(), unix_now());
                    self.execute();
                    return Ok(event);
                }
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits for the next event, running the pool meanwhile; `None` once
    /// the reactor has stopped.
    pub fn recv(&mut self) -> Option<Event> {
        loop {
            match self.recv_timeout(Duration::from_secs(3600)) {
                Ok(event) => return Some(event),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// The next event if one is waiting, after running the pool's due
    /// work.
    pub fn try_recv(&mut self) -> Result<Event, TryRecvError> {
        self.poll_lookups();
        if Instant::now() >= self.next_tick {
            self.tick();
        }
        let event = self.handle.try_recv()?;
        self.pool.on_event(&event, Instant::now(), unix_now());
        self.execute();
        Ok(event)
    }

    /// Stops the reactor.
    pub fn shutdown(&self) {
        self.handle.shutdown();
    }

    /// Stops the reactor and returns the pool's address book, with what
    /// this run learned, to save ([`AddrBook::export`]) for the next one.
    pub fn into_book(self) -> AddrBook {
        self.handle.shutdown();
        self.pool.into_book()
    }

    fn tick(&mut self) {
        let now = Instant::now();
        self.pool.tick(now, unix_now());
        self.execute();
        self.next_tick = self.pool.poll_timeout(Instant::now());
    }

    fn poll_lookups(&mut self) {
        let mut answers = Vec::new();
        for lookups in &self.lookups {
            while let Some(answer) = lookups.try_recv() {
                answers.push(answer);
            }
        }
        self.lookups.retain(|l| !l.is_done());
        for (name, result) in answers {
            self.pool.on_resolved(&name, result, Instant::now(), unix_now());
        }
        self.execute();
    }

    fn execute(&mut self) {
        while let Some(action) = self.pool.poll_action() {
            match action {
                PoolAction::Connect { token, target } => {
                    let peer = self.handle.connect(target).ok();
                    self.pool.dialed(token, peer);
                    if let Some(p) = peer.and_then(|p| self.pool.peer(p)) {
                        if self.dials.len() == MAX_DIAL_LOG {
                            self.dials.pop_front();
                        }
                        self.dials.push_back(p);
                    }
                }
                // `getaddr` is tiny; a full buffer or a gone peer loses
                // nothing worth keeping.
                PoolAction::Send(peer, message) => drop(self.handle.send(peer, message)),
                PoolAction::Disconnect(peer) => drop(self.handle.disconnect(peer, Disconnect::AfterFlush)),
                PoolAction::Resolve(queries) => {
                    self.lookups.push(Lookups::spawn(Arc::clone(&self.pool.config().resolver), queries));
                }
            }
        }
    }
}

impl std::fmt::Debug for Pooled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pooled").field("pool", &self.pool).finish_non_exhaustive()
    }
}
