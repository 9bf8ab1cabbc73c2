//! Errors returned by the public API (per-peer problems arrive as events),
//! and [`Report`], which prints an error with its causes.
//!
//! One convention holds for every error type in the crate: its `Display`
//! describes its own level only, and the cause, if any, is returned by
//! [`source`](std::error::Error::source) and not repeated in the text. Print
//! an error with [`Report`] to see the whole chain.

use std::fmt;
use std::io;
use std::net::SocketAddr;

/// The reactor could not be started.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// A listen address could not be bound.
    Bind {
        /// The address from [`Config::listen`](crate::Config::listen).
        addr: SocketAddr,
        /// The operating system's error.
        source: io::Error,
    },
    /// The poll instance or its waker could not be created.
    Poll(io::Error),
    /// The reactor thread could not be spawned.
    Thread(io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Bind { addr, .. } => write!(f, "cannot listen on {addr}"),
            StartError::Poll(_) => f.write_str("cannot create the poll instance"),
            StartError::Thread(_) => f.write_str("cannot spawn the reactor thread"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Bind { source, .. } => Some(source),
            StartError::Poll(e) | StartError::Thread(e) => Some(e),
        }
    }
}

/// Why [`Handle::try_recv`](crate::Handle::try_recv) returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRecvError {
    /// No event is ready now.
    Empty,
    /// The reactor has stopped and every event was received.
    Disconnected,
}

impl TryRecvError {
    /// No event is ready now.
    pub fn is_empty(&self) -> bool {
        *self == TryRecvError::Empty
    }

    /// The reactor has stopped and every event was received.
    pub fn is_disconnected(&self) -> bool {
        *self == TryRecvError::Disconnected
    }
}

impl fmt::Display for TryRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryRecvError::Empty => f.write_str("no event ready"),
            TryRecvError::Disconnected => f.write_str("reactor has stopped"),
        }
    }
}

impl std::error::Error for TryRecvError {}

/// Why [`Handle::recv_timeout`](crate::Handle::recv_timeout) returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvTimeoutError {
    /// No event arrived within the timeout.
    Timeout,
    /// The reactor has stopped and every event was received.
    Disconnected,
}

impl RecvTimeoutError {
    /// No event arrived within the timeout.
    pub fn is_timeout(&self) -> bool {
        *self == RecvTimeoutError::Timeout
    }

    /// The reactor has stopped and every event was received.
    pub fn is_disconnected(&self) -> bool {
        *self == RecvTimeoutError::Disconnected
    }
}

impl fmt::Display for RecvTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvTimeoutError::Timeout => f.write_str("no event within the timeout"),
            RecvTimeoutError::Disconnected => f.write_str("reactor has stopped"),
        }
    }
}

impl std::error::Error for RecvTimeoutError {}
/// Displays an error followed by each of its sources, joined by `": "`.
///
/// Errors in this crate describe only their own level and hand out their cause
/// through [`source`](std::error::Error::source); `Report` prints the whole
/// chain, outermost first.
///
/// ```
/// use peerlink::error::Report;
///
/// let source = std::io::Error::new(std::io::ErrorKind::AddrInUse, "address in use");
/// let error = peerlink::StartError::Bind { addr: "127.0.0.1:8333".parse().unwrap(), source };
/// assert_eq!(error.to_string(), "cannot listen on 127.0.0.1:8333");
/// assert_eq!(Report(&error).to_string(), "cannot listen on 127.0.0.1:8333: address in use");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Report<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(cause) = next {
            write!(f, ": {cause}")?;
            next = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;
    use std::io;

    use super::{Report, StartError};
    use crate::broadcast::{BroadcastError, Stage};
    use crate::event::{ConnectError, DisconnectReason, SendError};
    use crate::session::SessionError;
    use crate::stack::Bitcoin;
    use crate::wire::{Command, V2HandshakeError, WireError};

    fn io_error() -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused")
    }

    /// A payload error with a two-level source: rust-bitcoin's `Io`, then the
    /// `io::Error` itself.
    fn payload_error() -> WireError {
        let source = bitcoin::consensus::deserialize::<u32>(&[1]).expect_err("one byte is not a u32");
        WireError::Payload { command: Command::from_wire(*b"ping\0\0\0\0\0\0\0\0").expect("valid"), source }
    }

    /// One value of every public error variant that has a source.
    fn errors_with_sources() -> Vec<Box<dyn Error + 'static>> {
        let addr = "127.0.0.1:8333".parse().expect("valid address");
        vec![
            Box::new(StartError::Bind { addr, source: io_error() }),
            Box::new(StartError::Poll(io_error())),
            Box::new(StartError::Thread(io_error())),
            Box::new(payload_error()),
            Box::new(WireError::V2Handshake(V2HandshakeError::NoGarbageTerminator)),
            Box::new(ConnectError::Io(io_error())),
            Box::new(DisconnectReason::<Bitcoin>::Io(io_error())),
            Box::new(DisconnectReason::<Bitcoin>::Codec(payload_error())),
            Box::new(DisconnectReason::<Bitcoin>::Protocol(SessionError::DuplicateVersion)),
            Box::new(SendError::Encode(payload_error())),
            Box::new(BroadcastError::Connect(ConnectError::Io(io_error()))),
            Box::new(BroadcastError::Handshake(DisconnectReason::Codec(payload_error()))),
            Box::new(BroadcastError::Disconnected { stage: Stage::Sent, reason: DisconnectReason::Io(io_error()) }),
            Box::new(BroadcastError::NotSent(SendError::Encode(payload_error()))),
            #[cfg(feature = "socks")]
            Box::new(crate::socks5::ProxyError {
                proxy: addr,
                kind: crate::socks5::ProxyFailure::Socks5(crate::socks5::Socks5Error::Reply(
                    crate::socks5::ReplyCode::HostUnreachable,
                )),
            }),
        ]
    }

    /// The `Display` of each level of the chain, outermost first.
    fn levels(error: &(dyn Error + 'static)) -> Vec<String> {
        let mut levels = vec![error.to_string()];
        let mut next = error.source();
        while let Some(cause) = next {
            levels.push(cause.to_string());
            next = cause.source();
        }
        levels
    }

    #[test]
    fn no_error_repeats_its_source_in_its_display() {
        for error in errors_with_sources() {
            let levels = levels(error.as_ref());
            assert!(levels.len() >= 2, "{error:?} should have a source");
            for (i, outer) in levels.iter().enumerate() {
                for inner in &levels[i + 1..] {
                    assert!(!outer.contains(inner.as_str()), "{outer:?} repeats its source {inner:?} ({error:?})");
                }
            }
            assert_eq!(Report(error.as_ref()).to_string(), levels.join(": "));
        }
    }

    #[test]
    fn report_prints_the_whole_chain() {
        let error = BroadcastError::Handshake(DisconnectReason::Io(io_error()));
        assert_eq!(error.to_string(), "connection ended during the handshake");
        assert_eq!(
            Report(&error).to_string(),
            "connection ended during the handshake: socket error: connection refused"
        );
    }
}
