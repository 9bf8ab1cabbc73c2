//! How an outbound connection reaches its target: directly, through a
//! SOCKS5 proxy, or, for a host name without a proxy, through a lookup off
//! the reactor thread and then each resolved address in turn.
//!
//! The route is chosen in one place, [`Proxies::route`], for the first
//! attempt and for every retry (the BIP324 v1 fallback included): with a
//! proxy configured for a target there is no path that connects directly,
//! and a name is only ever sent to the proxy, never looked up here.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use super::shared::Shared;
use crate::event::ConnectError;
use crate::socks5::{self, AuthSource, Handshake};
use crate::target::{Hostname, Target};
use crate::types::PeerId;

/// At most this many lookups run at once; more wait for a free thread. A
/// lookup that hangs holds its thread, never the reactor: the connect
/// deadline fails the attempt regardless.
pub(crate) const RESOLVER_THREADS: usize = 4;

/// One outbound attempt, carried across the addresses it tries.
#[derive(Debug)]
pub(crate) struct Dial {
    /// What the user asked for.
    pub(crate) target: Target,
    /// When the whole attempt (lookup, every address, proxy handshake)
    /// fails with a timeout.
    pub(crate) deadline: Instant,
    /// Resolved addresses still to try, the next one last.
    pub(crate) rest: Vec<SocketAddr>,
    /// The proxy handshake to run once the TCP connection is up.
    pub(crate) tunnel: Option<Tunnel>,
}

impl Dial {
    /// A direct attempt to `addr`.
    pub(crate) fn direct(addr: SocketAddr, deadline: Instant) -> Dial {
        Dial { target: Target::Socket(addr), deadline, rest: Vec::new(), tunnel: None }
    }

    /// The error for a connect call that failed at once: through a proxy,
    /// the proxy is unreachable.
    pub(crate) fn io_error(&self, e: std::io::Error) -> ConnectError {
        #[cfg(feature = "socks")]
        if let Some(tunnel) = &self.tunnel {
            let kind = socks5::ProxyFailure::Io(e);
            return ConnectError::Proxy(socks5::ProxyError { proxy: tunnel.proxy, kind });
        }
        ConnectError::Io(e)
    }
}

/// A connection through a SOCKS5 proxy: where the proxy is, and the
/// handshake that asks it for the target.
#[derive(Debug)]
pub(crate) struct Tunnel {
    pub(crate) proxy: SocketAddr,
    pub(crate) handshake: Box<Handshake>,
}

/// Where to open the TCP connection for a target.
#[derive(Debug)]
pub(crate) enum Route {
    /// Connect to this address (the proxy's, when `tunnel` is set).
    Connect { addr: SocketAddr, tunnel: Option<Tunnel> },
    /// Look the name up first (no proxy).
    Resolve(Hostname, u16),
}

/// The configured proxies, each with its source of credentials.
#[derive(Default)]
pub(crate) struct Proxies {
    default: Option<(SocketAddr, AuthSource)>,
    onion: Option<(SocketAddr, AuthSource)>,
}

impl Proxies {
    #[cfg(feature = "socks")]
    pub(crate) fn new(config: &crate::Config, rng: &mut crate::rng::Rng) -> Proxies {
        let mut source = |proxy: &Option<socks5::Proxy>| {
            proxy.as_ref().map(|p| {
                let mut seed = [0; socks5::StreamIsolation::SEED_LEN];
                seed.copy_from_slice(&rng.bytes32()[..socks5::StreamIsolation::SEED_LEN]);
                (p.addr, p.auth_source(seed))
            })
        };
        Proxies { default: source(&config.proxy), onion: source(&config.onion_proxy) }
    }

    #[cfg(not(feature = "socks"))]
    pub(crate) fn new(_config: &crate::Config, _rng: &mut crate::rng::Rng) -> Proxies {
        Proxies::default()
    }

    /// The route to `target`. `resolved` is the address a previous
    /// connection of the same attempt reached directly (a retry goes back
    /// there instead of looking the name up again); it is ignored whenever a
    /// proxy is configured for the target.
    pub(crate) fn route(&mut self, target: &Target, resolved: Option<SocketAddr>) -> Result<Route, ConnectError> {
        let proxy =
            if target.is_onion() { self.onion.as_mut().or(self.default.as_mut()) } else { self.default.as_mut() };
        if let Some((proxy, auth)) = proxy {
            let handshake = Box::new(Handshake::new(socks_target(target), auth.next_auth()));
            return Ok(Route::Connect { addr: *proxy, tunnel: Some(Tunnel { proxy: *proxy, handshake }) });
        }
        match (target, resolved) {
            (Target::Onion { .. }, _) => Err(ConnectError::OnionNeedsProxy),
            (Target::Socket(addr), _) => Ok(Route::Connect { addr: *addr, tunnel: None }),
            (Target::Domain { .. }, Some(addr)) => Ok(Route::Connect { addr, tunnel: None }),
            (Target::Domain { name, port }, None) => Ok(Route::Resolve(name.clone(), *port)),
        }
    }
}

/// What the proxy is asked for: an address as an address, a name as a name
/// (the proxy resolves it).
fn socks_target(target: &Target) -> socks5::Target {
    match target {
        Target::Socket(addr) => socks5::Target::Addr(*addr),
        // A `Hostname` or an onion name is 1 to 253 bytes without NUL: always
        // a valid SOCKS5 name.
        Target::Domain { .. } | Target::Onion { .. } => match socks5::Name::new(target.host()) {
            Ok(name) => socks5::Target::Name { name, port: target.port() },
            Err(e) => unreachable!("a validated host name is a SOCKS5 name: {e}"),
        },
    }
}

/// A finished lookup.
pub(crate) struct Resolved {
    pub(crate) peer: PeerId,
    pub(crate) result: std::io::Result<Vec<SocketAddr>>,
}

struct Job {
    peer: PeerId,
    name: Hostname,
    port: u16,
    /// The attempt's deadline: a job still queued by then is dropped (the
    /// reactor failed the attempt already), so a resolver that hung for a
    /// while does not leave a backlog of dead lookups.
    deadline: Instant,
}

/// Host-name lookups on a few threads of their own, so the reactor never
/// blocks in the system resolver. Threads start on demand, up to
/// [`RESOLVER_THREADS`], and end with the reactor.
pub(crate) struct Resolver {
    jobs: Sender<Job>,
    job_rx: Receiver<Job>,
    done_tx: Sender<Resolved>,
    pub(crate) done: Receiver<Resolved>,
    shared: Arc<Shared>,
    threads: usize,
    /// Threads waiting for a job.
    idle: Arc<AtomicUsize>,
}

impl Resolver {
    pub(crate) fn new(shared: Arc<Shared>) -> Resolver {
        let (jobs, job_rx) = crossbeam_channel::unbounded();
        let (done_tx, done) = crossbeam_channel::unbounded();
        Resolver { jobs, job_rx, done_tx, done, shared, threads: 0, idle: Arc::new(AtomicUsize::new(0)) }
    }

    /// Starts looking up `name` for an attempt that ends at `deadline`; the
    /// answer arrives on `done` (and wakes the reactor).
    pub(crate) fn lookup(&mut self, peer: PeerId, name: Hostname, port: u16, deadline: Instant) {
        // One more thread while the queue is longer than the idle threads.
        if self.jobs.len() >= self.idle.load(Ordering::SeqCst) && self.threads < RESOLVER_THREADS && self.spawn() {
            self.threads += 1;
        }
        // The receiving end lives in `self`: sending cannot fail.
        let _ = self.jobs.send(Job { peer, name, port, deadline });
    }

    fn spawn(&self) -> bool {
        let (jobs, done, shared, idle) =
            (self.job_rx.clone(), self.done_tx.clone(), self.shared.clone(), self.idle.clone());
        let spawned = std::thread::Builder::new().name("peerlink-resolve".into()).spawn(move || {
            loop {
                idle.fetch_add(1, Ordering::SeqCst);
                let job = jobs.recv();
                idle.fetch_sub(1, Ordering::SeqCst);
                let Ok(Job { peer, name, port, deadline }) = job else { return };
                if Instant::now() >= deadline {
                    continue;
                }
                let result = (name.as_str(), port).to_socket_addrs().map(Iterator::collect);
                if done.send(Resolved { peer, result }).is_err() {
                    return;
                }
                let _ = shared.waker.wake();
            }
        });
        match spawned {
            Ok(_) => true,
            Err(e) => {
                // The lookup waits for a running thread, or fails at the
                // connect deadline if there is none.
                log::warn!("cannot start a resolver thread: {e}");
                false
            }
        }
    }
}
