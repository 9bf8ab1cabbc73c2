//! One connection as the reactor sees it: the sans-IO link, its socket, and
//! where it stands in the reactor's queues. This is the only place where a
//! link's bytes meet a socket.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, Read, Write};
use std::time::Instant;

use mio::net::TcpStream;

use super::link::{Ctx, Limits, Link, Pool, State};
use super::outbox::Outbox;
use crate::codec::Codec;
use crate::event::DisconnectReason;
use crate::protocol::{CodecFor, Msg, Protocol};

/// What every link call needs besides the link: the protocol, the event
/// outbox, the buffer pool, the limits and the time of this round.
pub(super) struct Env<P: Protocol> {
    pub(super) protocol: P,
    pub(super) proto_out: Vec<Msg<P>>,
    pub(super) out: Outbox<P::Stack>,
    pub(super) pool: Pool,
    pub(super) limits: Limits,
    pub(super) now: Instant,
}

impl<P: Protocol> Env<P> {
    pub(super) fn new(protocol: P, out: Outbox<P::Stack>, limits: Limits) -> Self {
        Env { protocol, proto_out: Vec::new(), out, pool: Pool::default(), limits, now: Instant::now() }
    }

    pub(super) fn cx(&mut self) -> Ctx<'_, P, Outbox<P::Stack>> {
        Ctx {
            proto: &mut self.protocol,
            proto_out: &mut self.proto_out,
            events: &mut self.out,
            pool: &mut self.pool,
            limits: &self.limits,
            now: self.now,
        }
    }
}

pub(super) struct Slot<C: Codec, P: Protocol> {
    pub(super) link: Link<C, P>,
    pub(super) stream: TcpStream,
    /// The socket took everything last time (or has not said otherwise).
    pub(super) writable: bool,
    pub(super) in_read_queue: bool,
    pub(super) in_write_queue: bool,
    /// Reading stopped because our send queue is over its limit.
    pub(super) read_paused: bool,
    /// The earliest deadline of this link in the timer heap.
    pub(super) timer_at: Option<Instant>,
    /// The link's buffer bytes as the memory budget last counted them.
    pub(super) accounted: usize,
}

/// Hasher for peer ids, which are already unique integers.
#[derive(Default)]
pub(crate) struct IdHasher(u64);
impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8 | u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}
pub(super) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

type Reason<P> = DisconnectReason<<P as Protocol>::Stack>;

impl<C, P> Slot<C, P>
where
    C: CodecFor<P>,
    P: Protocol,
{
    /// A slot for a link; `connected` sockets start writable and readable.
    pub(super) fn new(link: Link<C, P>, stream: TcpStream, connected: bool) -> Self {
        Slot {
            link,
            stream,
            writable: connected,
            in_read_queue: connected,
            in_write_queue: false,
            read_paused: false,
            timer_at: None,
            accounted: 0,
        }
    }

    /// Confirms a nonblocking connect once the socket reported readiness:
    /// `Ok(true)` connected, `Ok(false)` still in progress, `Err` failed.
    pub(super) fn finish_connect(&mut self, env: &mut Env<P>) -> io::Result<bool> {
        let local = match self.stream.take_error() {
            Ok(Some(e)) | Err(e) => return Err(e),
            Ok(None) => match self.stream.peer_addr() {
                Ok(_) => self.stream.local_addr()?,
                // No pending error, yet no peer: spurious readiness, still
                // connecting (NotConnected on Linux, EINPROGRESS elsewhere;
                // no errno is matched, so this holds on every platform). The
                // connect timer bounds the wait.
                Err(_) => return Ok(false),
            },
        };
        let _ = self.stream.set_nodelay(true);
        env.now = Instant::now();
        self.link.handle_connected(local, &mut env.cx());
        self.writable = true;
        Ok(true)
    }

    /// Reads and decodes within `budget` bytes. `Ok(true)`: more may be
    /// waiting.
    pub(super) fn read(&mut self, env: &mut Env<P>, scratch: &mut [u8], mut budget: usize) -> Result<bool, Reason<P>> {
        loop {
            // Complete frames may be buffered from a round cut short by a
            // full event channel, or appended by the previous read.
            self.link.decode_buffered(&mut env.cx())?;
            if env.out.paused() {
                return Ok(true);
            }
            if !self.link.wants_read(&env.limits) {
                self.read_paused = self.link.state() != State::Connecting;
                return Ok(false);
            }
            let stream = &mut self.stream;
            let result = match self.link.read_with(&mut env.pool, env.now, |buf| stream.read(buf)) {
                Some(result) => result,
                None => {
                    let result = stream.read(scratch);
                    if let Ok(n @ 1..) = result {
                        self.link.handle_input(&scratch[..n], &mut env.cx())?;
                    }
                    result
                }
            };
            match result {
                Ok(0) => {
                    self.link.handle_eof(&mut env.cx())?;
                    return Ok(env.out.paused());
                }
                Ok(n) => budget = budget.saturating_sub(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.link.decode_buffered(&mut env.cx())?;
                    return Ok(env.out.paused());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.link.io_reason(e)),
            }
            if budget == 0 {
                self.link.decode_buffered(&mut env.cx())?;
                return Ok(true);
            }
        }
    }

    /// Writes within `budget` bytes. `Ok(true)`: more to write and the
    /// socket may take it.
    pub(super) fn write(&mut self, env: &mut Env<P>, mut budget: usize) -> Result<bool, Reason<P>> {
        while !self.link.poll_transmit().is_empty() {
            match self.stream.write(self.link.poll_transmit()) {
                Ok(0) => return Err(DisconnectReason::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.link.advance(n, &mut env.cx());
                    budget = budget.saturating_sub(n);
                    if budget == 0 {
                        return Ok(!self.link.poll_transmit().is_empty());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.writable = false;
                    return Ok(false);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(DisconnectReason::Io(e)),
            }
        }
        Ok(false)
    }
}
