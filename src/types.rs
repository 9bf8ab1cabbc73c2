//! Identifiers and time helpers shared by every layer. This module depends on
//! nothing else in the crate, so `event`, `peer` and `session` can all use it
//! without cycles.

use std::fmt;
use std::time::{Duration, Instant};

/// Identifies one connection for its whole life. Ids come from one counter
/// per reactor and are never reused, so an id held after its peer is gone can
/// only miss, never hit another peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub(crate) u64);

impl PeerId {
    /// The id as a number (unique within one reactor).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Who opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The peer connected to one of our listeners.
    Inbound,
    /// We connected to the peer.
    Outbound,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        })
    }
}

/// `at + d`, saturating far in the future: a timeout of `Duration::MAX`
/// means "never".
pub(crate) fn later(at: Instant, d: Duration) -> Instant {
    /// A century: far enough to mean "never", near enough not to overflow.
    const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    at.checked_add(d).unwrap_or_else(|| at.checked_add(NEVER).unwrap_or(at))
}
