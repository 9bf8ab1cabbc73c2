//! The in-memory network: one pipe per direction of a connection, and the
//! SOCKS5 proxy a pair may dial through.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use super::super::dial::{Dial, Tunnel};
use super::{Rng, Who, ms};

/// How a pipe behaves: what it holds, how much one write or read moves, and
/// its latency.
#[derive(Debug, Clone, Copy)]
pub(super) struct PipeParams {
    pub(super) capacity: usize,
    pub(super) write_max: usize,
    pub(super) read_max: usize,
    pub(super) latency_ms: u64,
    pub(super) jitter_ms: u64,
    /// Percent of reads and writes that fail with `Interrupted`, and of
    /// reads that find nothing (`WouldBlock`) though bytes are there: faults
    /// the reactor retries, which must change nothing.
    pub(super) flaky: u64,
}

/// One direction of a TCP connection: both kernels' buffers and the wire.
pub(super) struct Pipe {
    pub(super) params: PipeParams,
    /// Bytes in order, each chunk readable from its instant on.
    pub(super) segments: VecDeque<(Instant, Vec<u8>)>,
    pub(super) len: usize,
    pub(super) last_arrival: Instant,
    /// The writer shut down or closed: end of stream after the bytes.
    pub(super) fin: bool,
    /// A reset: reads and writes fail, bytes in flight are gone.
    pub(super) reset: bool,
    /// The reader closed: writes are taken and dropped.
    pub(super) reader_gone: bool,
    /// Stream offset of the next byte written.
    pub(super) written: u64,
    /// Stream offset of a byte to flip on its way (a misbehaving sender).
    pub(super) corrupt_at: Option<u64>,
    /// Bytes a SOCKS5 proxy in the path still takes off the start of this
    /// stream (its handshake with the client) before it relays.
    pub(super) proxy_takes: usize,
    /// What the proxy took.
    pub(super) to_proxy: Vec<u8>,
    /// An injected fault: the next read of this stream fails so.
    pub(super) read_fault: Option<io::ErrorKind>,
    /// An injected fault: the next write fails so (`WriteZero`: returns 0).
    pub(super) write_fault: Option<io::ErrorKind>,
    /// The injected fault was returned.
    pub(super) fault_hit: bool,
    /// Benign faults returned (see [`PipeParams::flaky`]).
    pub(super) flukes: usize,
}

impl Pipe {
    pub(super) fn new(params: PipeParams, now: Instant) -> Pipe {
        Pipe {
            params,
            segments: VecDeque::new(),
            len: 0,
            last_arrival: now,
            fin: false,
            reset: false,
            reader_gone: false,
            written: 0,
            corrupt_at: None,
            proxy_takes: 0,
            to_proxy: Vec::new(),
            read_fault: None,
            write_fault: None,
            fault_hit: false,
            flukes: 0,
        }
    }

    /// Bytes the proxy in the path sends on this stream ahead of the peer's.
    pub(super) fn inject(&mut self, bytes: &[u8], now: Instant) {
        let arrival = self.last_arrival.max(now + ms(self.params.latency_ms));
        self.last_arrival = arrival;
        self.segments.push_back((arrival, bytes.to_vec()));
        self.len += bytes.len();
    }

    pub(super) fn write(&mut self, data: &[u8], now: Instant, rng: &mut Rng) -> io::Result<usize> {
        if self.reset {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        if let Some(kind) = self.write_fault.take() {
            self.fault_hit = true;
            return if kind == io::ErrorKind::WriteZero { Ok(0) } else { Err(injected(kind)) };
        }
        if self.params.flaky > 0 && rng.chance(self.params.flaky) {
            self.flukes += 1;
            return Err(io::ErrorKind::Interrupted.into());
        }
        // At least 4 bytes per write: a v2 initiator tells a v1 responder
        // that speaks first by its 4 magic bytes, and one that closes after
        // 1 to 3 of them is neither retried as v1 nor told apart (see the
        // report on the fallback rule); TCP does not split that finely.
        let n = data.len().min(rng.size(4.min(self.params.write_max), self.params.write_max));
        if self.reader_gone {
            return Ok(n);
        }
        let n = n.min(self.params.capacity - self.len);
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let to_proxy = n.min(self.proxy_takes);
        if to_proxy > 0 {
            self.to_proxy.extend_from_slice(&data[..to_proxy]);
            self.proxy_takes -= to_proxy;
            if to_proxy == n {
                return Ok(n);
            }
        }
        let data = &data[to_proxy..];
        let n = n - to_proxy;
        let mut bytes = data[..n].to_vec();
        if let Some(at) = self.corrupt_at
            && (self.written..self.written + n as u64).contains(&at)
        {
            bytes[(at - self.written) as usize] ^= 0x01;
            self.corrupt_at = None;
        }
        self.written += n as u64;
        let delay = ms(self.params.latency_ms + rng.range(0, self.params.jitter_ms));
        let arrival = self.last_arrival.max(now + delay);
        self.last_arrival = arrival;
        self.segments.push_back((arrival, bytes));
        self.len += n;
        Ok(n + to_proxy)
    }

    pub(super) fn read(&mut self, buf: &mut [u8], now: Instant, rng: &mut Rng) -> io::Result<usize> {
        if self.reset {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        if let Some(kind) = self.read_fault.take() {
            self.fault_hit = true;
            return Err(injected(kind));
        }
        if self.params.flaky > 0 && rng.chance(self.params.flaky) {
            self.flukes += 1;
            let kind = if rng.chance(50) { io::ErrorKind::Interrupted } else { io::ErrorKind::WouldBlock };
            return Err(kind.into());
        }
        let mut n = 0;
        while n < buf.len() {
            let Some((arrival, segment)) = self.segments.front_mut() else { break };
            if *arrival > now {
                break;
            }
            let take = segment.len().min(buf.len() - n);
            buf[n..n + take].copy_from_slice(&segment[..take]);
            segment.drain(..take);
            if segment.is_empty() {
                self.segments.pop_front();
            }
            n += take;
        }
        self.len -= n;
        match n {
            0 if self.segments.is_empty() && self.fin => Ok(0),
            0 => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }
}

/// An injected error of `kind`, as the kernel would give it (`Other` with a
/// message of its own).
pub(super) fn injected(kind: io::ErrorKind) -> io::Error {
    match kind {
        io::ErrorKind::Other => io::Error::other("injected fault"),
        kind => kind.into(),
    }
}

pub(super) struct Conn {
    pub(super) c2s: Pipe,
    pub(super) s2c: Pipe,
}

impl Conn {
    pub(super) fn outgoing(&mut self, who: Who) -> &mut Pipe {
        match who {
            Who::Client => &mut self.c2s,
            Who::Server => &mut self.s2c,
        }
    }

    pub(super) fn incoming(&mut self, who: Who) -> &mut Pipe {
        self.outgoing(who.other())
    }
}

/// A SOCKS5 proxy in the path of every connection of a pair: it takes the
/// client's handshake off the start of the client's stream, answers ahead of
/// the server's bytes (choosing username/password or none), and relays.
#[derive(Debug, Clone, Copy)]
pub(super) struct SimProxy {
    pub(super) password: bool,
}

impl SimProxy {
    pub(super) fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9050))
    }

    /// How the client dials through it: one deadline for the whole path.
    pub(super) fn dial(index: usize, deadline: Instant) -> Dial {
        let target = crate::socks5::Target::Addr(server_addr(index));
        let credentials = crate::socks5::Credentials::new("u", "p").expect("valid");
        let handshake = crate::socks5::Handshake::new(target, crate::socks5::Auth::PasswordOrNone(credentials));
        let tunnel = Tunnel { proxy: SimProxy::addr(), handshake: Box::new(handshake) };
        Dial { target: server_addr(index).into(), deadline, rest: Vec::new(), tunnel: Some(tunnel) }
    }

    /// What the client must send the proxy: the greeting, the credentials
    /// if the proxy picks them, the `CONNECT` for the server.
    pub(super) fn expected(self, index: usize) -> Vec<u8> {
        let mut bytes = vec![5, 2, 0, 2];
        if self.password {
            bytes.extend_from_slice(&[1, 1, b'u', 1, b'p']);
        }
        bytes.extend_from_slice(&[5, 1, 0, 1, 127, 0, 0, 1]);
        bytes.extend_from_slice(&server_addr(index).port().to_be_bytes());
        bytes
    }

    pub(super) fn replies(self) -> Vec<u8> {
        let mut bytes = if self.password { vec![5, 2, 1, 0] } else { vec![5, 0] };
        bytes.extend_from_slice(&[5, 0, 0, 1, 10, 0, 0, 1, 0x1f, 0x90]);
        bytes
    }
}

pub(super) fn client_addr(index: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 40_000 + index as u16))
}

/// The first address of the name a moving-on client dials: nobody there.
pub(super) fn dead_addr(index: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 2], 20_000 + index as u16))
}

pub(super) fn server_addr(index: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 20_000 + index as u16))
}
