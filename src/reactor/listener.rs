//! The listeners: accepting within a per-round budget, backing off when
//! accept keeps failing (EMFILE, ENFILE, ENOBUFS...), and the inbound cap.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

use super::shared::Counters;
use crate::error::StartError;

/// Back-off after accept fails with anything but "try again" (EMFILE and
/// ENFILE above all): the connection stays in the backlog, and retrying at
/// once would spin on a readiness that cannot be cleared.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// The listen backlog, as Bitcoin Core's `SOMAXCONN` (the kernel caps it
/// at `net.core.somaxconn`, 4096 on current Linux). std and mio use 128: a
/// burst of connects beyond what the accept queue holds has its SYNs
/// dropped, and each dropped connect waits a second for its retransmit.
const LISTEN_BACKLOG: i32 = 4096;

/// A nonblocking listener on `addr` with [`LISTEN_BACKLOG`] (socket2: std
/// and mio fix the backlog at 128).
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As mio and std do: rebinding right after a restart works.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Connections accepted per listener per round.
const ACCEPT_BUDGET: usize = 256;

struct Listener {
    socket: TcpListener,
    /// Readiness seen and not yet drained to `WouldBlock`.
    pending: bool,
    backoff_until: Option<Instant>,
    /// Accepts left this round.
    budget: usize,
}

/// Every listener of one reactor, and the count of live inbound peers.
pub(super) struct Listeners {
    list: Vec<Listener>,
    /// Live inbound connections.
    pub(super) inbound: usize,
    max_inbound: usize,
}

/// Listener tokens count down from just below the waker's.
const fn token(i: usize) -> Token {
    Token(usize::MAX - 1 - i)
}

impl Listeners {
    /// Binds and registers every address; returns the bound addresses.
    pub(super) fn bind(
        addrs: &[SocketAddr],
        max_inbound: usize,
        registry: &Registry,
    ) -> Result<(Listeners, Vec<SocketAddr>), StartError> {
        let mut list = Vec::new();
        let mut local = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let bind = |source| StartError::Bind { addr: *addr, source };
            let mut socket = listen(*addr).map_err(bind)?;
            local.push(socket.local_addr().map_err(bind)?);
            registry.register(&mut socket, token(i), Interest::READABLE).map_err(StartError::Poll)?;
            list.push(Listener { socket, pending: true, backoff_until: None, budget: ACCEPT_BUDGET });
        }
        Ok((Listeners { list, inbound: 0, max_inbound }, local))
    }

    /// Whether `t` is a listener's token; if so it is marked ready.
    pub(super) fn on_ready(&mut self, t: Token) -> bool {
        let Some(i) = usize::MAX.checked_sub(1 + t.0) else { return false };
        let Some(l) = self.list.get_mut(i) else { return false };
        l.pending = true;
        true
    }

    /// Starts a round: every listener gets its accept budget back, and
    /// back-offs that ended are lifted.
    pub(super) fn begin_round(&mut self, now: Instant) {
        for l in &mut self.list {
            l.budget = ACCEPT_BUDGET;
            if l.backoff_until.is_some_and(|t| t <= now) {
                l.backoff_until = None;
                l.pending = true;
            }
        }
    }

    /// Whether some listener may have connections waiting.
    pub(super) fn ready(&self) -> bool {
        self.list.iter().any(|l| l.pending && l.backoff_until.is_none() && l.budget > 0)
    }

    /// The end of the earliest back-off.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.list.iter().filter_map(|l| l.backoff_until).min()
    }

    /// The next connection, and whether every inbound slot is taken (then
    /// the caller evicts a peer or drops it), or `None` when every listener
    /// is drained, backing off or out of budget.
    pub(super) fn accept(&mut self, now: Instant, counters: &Counters) -> Option<(TcpStream, SocketAddr, bool)> {
        for l in &mut self.list {
            while l.pending && l.backoff_until.is_none() && l.budget > 0 {
                match l.socket.accept() {
                    Ok((stream, remote)) => {
                        l.budget -= 1;
                        return Some((stream, remote, self.inbound >= self.max_inbound));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => l.pending = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // The connection was gone before we took it: that one only.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => log::debug!("accept: {e}"),
                    Err(e) => {
                        log::warn!("accept: {e}; retrying in {} ms", ACCEPT_BACKOFF.as_millis());
                        Counters::bump(&counters.accept_backoffs);
                        l.backoff_until = Some(now + ACCEPT_BACKOFF);
                    }
                }
            }
        }
        None
    }
}
