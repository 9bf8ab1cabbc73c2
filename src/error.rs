//! Errors returned by the public API (per-peer problems arrive as events).

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
