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
