//! A sans-IO SOCKS5 client handshake: RFC 1928 `CONNECT`, with RFC 1929
//! username/password authentication, and Tor's extended reply codes.
//!
//! [`Handshake`] holds no socket and reads no clock. The caller connects to
//! the proxy, then moves bytes: what [`Handshake::poll_transmit`] offers is
//! written and confirmed with [`Handshake::advance`]; what the proxy sends is
//! given to [`Handshake::handle_input`]. When that returns
//! [`Progress::Connected`] the connection is a byte stream to the target, and
//! any bytes of the target's that arrived in the same read as the proxy's
//! reply are handed back by [`Handshake::take_leftover`]. Timeouts are the
//! caller's: the handshake never waits for anything by itself.
//!
//! ```text
//! greeting ──method chosen──▶ [authentication] ──accepted──▶ connect ──succeeded──▶ connected
//!     └───────────────┴──── any error, or the proxy closes ──────┴──────────▶ failed
//! ```
//!
//! Names ([`Target::Name`]) are sent to the proxy as they are (address type
//! 3), so the proxy resolves them: nothing here ever looks a name up.
//!
//! ```
//! use peerlink::socks5::{Auth, Bound, Handshake, Progress, Target};
//!
//! let target = Target::name("localhost", 8333)?;
//! let mut handshake = Handshake::new(target, Auth::None);
//! assert_eq!(handshake.poll_transmit(), [5, 1, 0]); // greeting: no authentication
//! handshake.advance(3);
//! assert_eq!(handshake.handle_input(&[5, 0])?, Progress::Pending); // method 0 chosen
//! let request = handshake.poll_transmit().to_vec(); // CONNECT localhost:8333
//! assert_eq!(request[..5], [5, 1, 0, 3, 9]);
//! handshake.advance(request.len());
//! // The reply, and the peer's first bytes in the same read.
//! let progress = handshake.handle_input(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xf9, 0xbe])?;
//! assert_eq!(progress, Progress::Connected { bound: Bound::Addr("0.0.0.0:0".parse()?) });
//! assert_eq!(handshake.take_leftover(), [0xf9, 0xbe]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`AuthSource::Isolated`] gives each connection its own credentials the way
//! Bitcoin Core's `-proxyrandomize` does (a random prefix chosen once, then a
//! counter), so that Tor puts each connection on its own circuit.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

#[cfg(test)]
mod tests;

/// The SOCKS protocol version byte.
const VERSION: u8 = 0x05;
/// The RFC 1929 sub-negotiation version byte.
const AUTH_VERSION: u8 = 0x01;
/// Method 0x00: no authentication.
const METHOD_NONE: u8 = 0x00;
/// Method 0x02: username/password (RFC 1929).
const METHOD_PASSWORD: u8 = 0x02;
/// Method 0xFF: the proxy accepts none of the offered methods.
const METHOD_NO_ACCEPTABLE: u8 = 0xFF;
/// The `CONNECT` command.
const CMD_CONNECT: u8 = 0x01;
/// Address type 1: an IPv4 address.
const ATYP_IPV4: u8 = 0x01;
/// Address type 3: a domain name, preceded by its length.
const ATYP_NAME: u8 = 0x03;
/// Address type 4: an IPv6 address.
const ATYP_IPV6: u8 = 0x04;

/// The longest name a SOCKS5 request or reply can carry, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// The longest username or password RFC 1929 can carry, in bytes.
pub const MAX_CREDENTIAL_LEN: usize = 255;
/// The longest reply the handshake buffers: the `CONNECT` reply with a
/// 255-byte name (version, code, reserved, address type, length, name,
/// port). The other replies are two bytes.
pub const MAX_REPLY_LEN: usize = 4 + 1 + MAX_NAME_LEN + 2;

/// A domain or onion name to be resolved by the proxy: 1 to
/// [`MAX_NAME_LEN`] bytes, without NUL bytes (checked by [`Name::new`]).
///
/// The name is not otherwise interpreted; an IP address written as a name
/// is sent as a name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    /// Checks `name`: it must be 1 to [`MAX_NAME_LEN`] bytes long and hold
    /// no NUL byte.
    pub fn new(name: impl Into<String>) -> Result<Name, NameError> {
        let name = name.into();
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong { len: name.len() });
        }
        if name.as_bytes().contains(&0) {
            return Err(NameError::Nul);
        }
        Ok(Name(name))
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the name ends in `.onion` (ASCII case-insensitive): a Tor
    /// onion service, which only a Tor proxy can reach.
    pub fn is_onion(&self) -> bool {
        let bytes = self.0.as_bytes();
        bytes.len() > ".onion".len() && bytes[bytes.len() - ".onion".len()..].eq_ignore_ascii_case(b".onion")
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why [`Name::new`] refused a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    /// The name is empty.
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`] bytes.
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The name contains a NUL byte.
    Nul,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => f.write_str("empty host name"),
            NameError::TooLong { len } => write!(f, "host name of {len} bytes is longer than {MAX_NAME_LEN}"),
            NameError::Nul => f.write_str("host name contains a nul byte"),
        }
    }
}

impl std::error::Error for NameError {}

/// Where the proxy is asked to connect.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// An IPv4 or IPv6 socket address (address type 1 or 4). An IPv6
    /// address's flow info and scope id are not sent.
    Addr(SocketAddr),
    /// A domain or onion name and a port (address type 3), resolved by the
    /// proxy.
    Name {
        /// The name.
        name: Name,
        /// The port.
        port: u16,
    },
}

impl Target {
    /// A name target: checks `name` as [`Name::new`] does.
    pub fn name(name: impl Into<String>, port: u16) -> Result<Target, NameError> {
        Ok(Target::Name { name: Name::new(name)?, port })
    }

    /// The target's port.
    pub fn port(&self) -> u16 {
        match self {
            Target::Addr(addr) => addr.port(),
            Target::Name { port, .. } => *port,
        }
    }

    /// Whether the target is a Tor onion service ([`Name::is_onion`]).
    pub fn is_onion(&self) -> bool {
        matches!(self, Target::Name { name, .. } if name.is_onion())
    }
}

impl From<SocketAddr> for Target {
    fn from(addr: SocketAddr) -> Target {
        Target::Addr(addr)
    }
}

impl fmt::Display for Target {
    /// `1.2.3.4:8333`, `[::1]:8333`, or `name:port`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Addr(addr) => write!(f, "{addr}"),
            Target::Name { name, port } => write!(f, "{name}:{port}"),
        }
    }
}

/// The address the proxy reports it connected from (`BND.ADDR` and
/// `BND.PORT` of the reply). Informational: Tor reports `0.0.0.0:0`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Bound {
    /// An IPv4 or IPv6 socket address.
    Addr(SocketAddr),
    /// A name (1 to 255 bytes, as the proxy sent them) and a port.
    Name {
        /// The name's bytes; not necessarily UTF-8.
        name: Vec<u8>,
        /// The port.
        port: u16,
    },
}

impl fmt::Display for Bound {
    /// Like [`Target`]'s; a name that is not UTF-8 is shown lossily.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bound::Addr(addr) => write!(f, "{addr}"),
            Bound::Name { name, port } => write!(f, "{}:{port}", String::from_utf8_lossy(name)),
        }
    }
}

/// A username and password for RFC 1929 authentication, each 1 to
/// [`MAX_CREDENTIAL_LEN`] bytes (checked by [`Credentials::new`]).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Credentials {
    username: Vec<u8>,
    password: Vec<u8>,
}

impl Credentials {
    /// Checks that `username` and `password` are each 1 to
    /// [`MAX_CREDENTIAL_LEN`] bytes long.
    pub fn new(username: impl Into<Vec<u8>>, password: impl Into<Vec<u8>>) -> Result<Credentials, CredentialsError> {
        let (username, password) = (username.into(), password.into());
        if !(1..=MAX_CREDENTIAL_LEN).contains(&username.len()) {
            return Err(CredentialsError::Username { len: username.len() });
        }
        if !(1..=MAX_CREDENTIAL_LEN).contains(&password.len()) {
            return Err(CredentialsError::Password { len: password.len() });
        }
        Ok(Credentials { username, password })
    }

    /// The username.
    pub fn username(&self) -> &[u8] {
        &self.username
    }

    /// The password.
    pub fn password(&self) -> &[u8] {
        &self.password
    }
}

impl fmt::Debug for Credentials {
    /// Shows the username; the password is not shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &String::from_utf8_lossy(&self.username))
            .field("password", &"…")
            .finish()
    }
}

/// Why [`Credentials::new`] refused a username or password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialsError {
    /// The username is empty or longer than [`MAX_CREDENTIAL_LEN`] bytes.
    Username {
        /// Its length in bytes.
        len: usize,
    },
    /// The password is empty or longer than [`MAX_CREDENTIAL_LEN`] bytes.
    Password {
        /// Its length in bytes.
        len: usize,
    },
}

impl fmt::Display for CredentialsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, len) = match self {
            CredentialsError::Username { len } => ("username", len),
            CredentialsError::Password { len } => ("password", len),
        };
        write!(f, "proxy {what} is {len} bytes long, not 1 to {MAX_CREDENTIAL_LEN}")
    }
}

impl std::error::Error for CredentialsError {}

/// How one handshake authenticates: which methods the greeting offers.
///
/// `None` offers method 0x00 alone and `Password` method 0x02 alone, so a
/// proxy cannot silently skip the credentials. `PasswordOrNone` offers both
/// and lets the proxy choose, as Bitcoin Core does with `-proxyrandomize`:
/// Tor chooses username/password (and isolates streams by it), and a proxy
/// without authentication chooses none, so stream isolation, on by default,
/// costs nothing with proxies that do not know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// No authentication (method 0x00).
    None,
    /// Username/password authentication (method 0x02, RFC 1929).
    Password(Credentials),
    /// Username/password if the proxy chooses it, else none (methods 0x00
    /// and 0x02): per-connection credentials for stream isolation.
    PasswordOrNone(Credentials),
}

impl Auth {
    /// The methods the greeting offers, in order.
    fn methods(&self) -> &'static [u8] {
        match self {
            Auth::None => &[METHOD_NONE],
            Auth::Password(_) => &[METHOD_PASSWORD],
            Auth::PasswordOrNone(_) => &[METHOD_NONE, METHOD_PASSWORD],
        }
    }

    fn credentials(&self) -> Option<&Credentials> {
        match self {
            Auth::None => None,
            Auth::Password(c) | Auth::PasswordOrNone(c) => Some(c),
        }
    }
}

/// Per-connection credentials for Tor stream isolation, in Bitcoin Core's
/// scheme (bitcoin/bitcoin#32176): a prefix chosen once from random bytes,
/// then a counter. Username and password are both `{prefix}-{n}`, where
/// `prefix` is the seed in lower-case hex and `n` counts from 0 in decimal.
///
/// Tor (with its default `IsolateSOCKSAuth`) never shares a circuit between
/// streams with different credentials: the counter keeps this process's
/// connections apart, the prefix keeps them apart from other processes' and
/// from this process's earlier runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamIsolation {
    /// The hex prefix with its `-`.
    prefix: String,
    /// The number of the next credentials.
    counter: u64,
}

impl StreamIsolation {
    /// Bytes of randomness in the prefix (as in Core).
    pub const SEED_LEN: usize = 8;

    /// A generator whose prefix is `seed` in lower-case hex. The seed must
    /// come from a cryptographically secure source and be fresh for each
    /// run of the program.
    pub fn new(seed: [u8; Self::SEED_LEN]) -> StreamIsolation {
        let mut prefix = String::with_capacity(2 * Self::SEED_LEN + 1);
        for byte in seed {
            prefix.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
            prefix.push(char::from(b"0123456789abcdef"[usize::from(byte & 0x0f)]));
        }
        prefix.push('-');
        StreamIsolation { prefix, counter: 0 }
    }

    /// The next credentials, distinct from every earlier one of this
    /// generator (the counter would have to wrap around `u64` to repeat).
    pub fn next_credentials(&mut self) -> Credentials {
        let text = format!("{}{}", self.prefix, self.counter);
        self.counter = self.counter.wrapping_add(1);
        // At most 17 + 20 bytes: always a valid username and password.
        Credentials { username: text.clone().into_bytes(), password: text.into_bytes() }
    }

    /// How many credentials were handed out.
    pub fn issued(&self) -> u64 {
        self.counter
    }
}

/// Where each handshake's [`Auth`] comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthSource {
    /// No authentication for any connection.
    None,
    /// The same credentials for every connection (no stream isolation).
    Fixed(Credentials),
    /// Fresh credentials for each connection ([`StreamIsolation`]).
    Isolated(StreamIsolation),
}

impl AuthSource {
    /// The authentication for the next connection.
    pub fn next_auth(&mut self) -> Auth {
        match self {
            AuthSource::None => Auth::None,
            AuthSource::Fixed(credentials) => Auth::Password(credentials.clone()),
            AuthSource::Isolated(generator) => Auth::PasswordOrNone(generator.next_credentials()),
        }
    }
}

/// A SOCKS5 proxy to connect through ([`Config::proxy`](crate::Config::proxy),
/// [`Config::onion_proxy`](crate::Config::onion_proxy)): its address and how
/// each connection authenticates.
///
/// Parsed from `[USER:PASS@]HOST:PORT` (an IP address, or a host name
/// looked up at once); without credentials the proxy gets
/// per-connection credentials ([`ProxyAuth::Isolated`], the default), with
/// them the same credentials every time ([`ProxyAuth::Fixed`]).
///
/// ```
/// use peerlink::socks5::{Proxy, ProxyAuth};
///
/// let tor: Proxy = "127.0.0.1:9050".parse()?;
/// assert_eq!(tor.auth, ProxyAuth::Isolated);
/// let fixed: Proxy = "alice:secret@[::1]:1080".parse()?;
/// assert_eq!(fixed.addr, "[::1]:1080".parse()?);
/// assert!(matches!(fixed.auth, ProxyAuth::Fixed(ref c) if c.username() == b"alice"));
/// let local: Proxy = "localhost:9050".parse()?;
/// assert!(local.addr.ip().is_loopback());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    /// The proxy's address.
    pub addr: SocketAddr,
    /// How connections through it authenticate.
    pub auth: ProxyAuth,
}

impl Proxy {
    /// A proxy at `addr` with stream isolation ([`ProxyAuth::Isolated`]).
    pub fn new(addr: SocketAddr) -> Proxy {
        Proxy { addr, auth: ProxyAuth::Isolated }
    }

    /// The source of each connection's authentication; `seed` is the
    /// random prefix of isolated credentials.
    pub fn auth_source(&self, seed: [u8; StreamIsolation::SEED_LEN]) -> AuthSource {
        match &self.auth {
            ProxyAuth::Isolated => AuthSource::Isolated(StreamIsolation::new(seed)),
            ProxyAuth::Fixed(credentials) => AuthSource::Fixed(credentials.clone()),
            ProxyAuth::None => AuthSource::None,
        }
    }
}

impl std::str::FromStr for Proxy {
    type Err = ProxyParseError;

    fn from_str(text: &str) -> Result<Proxy, ProxyParseError> {
        let (auth, addr) = match text.rsplit_once('@') {
            None => (ProxyAuth::Isolated, text),
            Some((userinfo, addr)) => {
                let (user, pass) = userinfo.split_once(':').ok_or(ProxyParseError::MissingPassword)?;
                let credentials = Credentials::new(user, pass).map_err(ProxyParseError::Credentials)?;
                (ProxyAuth::Fixed(credentials), addr)
            }
        };
        Ok(Proxy { addr: proxy_addr(addr)?, auth })
    }
}

/// `IP:PORT`, or `HOST:PORT` with the proxy's own name looked up here, on
/// the caller's thread, as Bitcoin Core does for `-proxy`. (Targets behind
/// the proxy are never looked up.)
fn proxy_addr(text: &str) -> Result<SocketAddr, ProxyParseError> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let (host, port) = text.rsplit_once(':').ok_or(ProxyParseError::Address)?;
    let port: u16 = port.parse().map_err(|_| ProxyParseError::Address)?;
    if host.is_empty() || host.contains(['[', ']', ':', '@', '/']) {
        return Err(ProxyParseError::Address);
    }
    let resolve = |source| ProxyParseError::Resolve { host: host.to_owned(), source };
    let mut addrs = std::net::ToSocketAddrs::to_socket_addrs(&(host, port)).map_err(resolve)?;
    addrs.next().ok_or_else(|| resolve(std::io::ErrorKind::NotFound.into()))
}

impl fmt::Display for Proxy {
    /// The address only: credentials are never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr)
    }
}

/// How connections through a [`Proxy`] authenticate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ProxyAuth {
    /// Each connection gets its own credentials ([`StreamIsolation`], as
    /// Bitcoin Core's `-proxyrandomize`), so Tor puts each on its own
    /// circuit. The default. Both "none" and username/password are offered
    /// ([`Auth::PasswordOrNone`]), so a proxy without authentication works
    /// too.
    #[default]
    Isolated,
    /// Every connection uses these credentials (one circuit may be shared).
    Fixed(Credentials),
    /// No authentication is offered (a proxy that requires it fails every
    /// connection with [`Socks5Error::NoAcceptableMethod`]).
    None,
}

/// Why a `[USER:PASS@]HOST:PORT` proxy text was refused. No variant
/// repeats the text: it may hold a password.
#[derive(Debug)]
#[non_exhaustive]
pub enum ProxyParseError {
    /// The part after `@` (or the whole text) is not `IP:PORT` or
    /// `HOST:PORT`.
    Address,
    /// The proxy's host name did not resolve.
    Resolve {
        /// The host name.
        host: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// `USER@` without `:PASS`.
    MissingPassword,
    /// The username or password is empty or too long.
    Credentials(CredentialsError),
}

impl fmt::Display for ProxyParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyParseError::Address => f.write_str("proxy address is not IP:PORT or HOST:PORT"),
            ProxyParseError::Resolve { host, .. } => write!(f, "cannot resolve proxy host {host}"),
            ProxyParseError::MissingPassword => f.write_str("proxy credentials must be USER:PASS@"),
            ProxyParseError::Credentials(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ProxyParseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProxyParseError::Resolve { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A non-success code in the proxy's `CONNECT` reply: RFC 1928's 0x01–0x08,
/// Tor's extended onion-service codes 0xF0–0xF7 (sent when the `SocksPort`
/// has `ExtendedErrors`), or any other value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplyCode {
    /// 0x01: general SOCKS server failure.
    GeneralFailure,
    /// 0x02: connection not allowed by the proxy's ruleset.
    NotAllowed,
    /// 0x03: network unreachable.
    NetworkUnreachable,
    /// 0x04: host unreachable.
    HostUnreachable,
    /// 0x05: connection refused by the target.
    ConnectionRefused,
    /// 0x06: TTL expired.
    TtlExpired,
    /// 0x07: command not supported (or, for Tor, a protocol error).
    CommandNotSupported,
    /// 0x08: address type not supported.
    AddressTypeNotSupported,
    /// 0xF0 (Tor): the onion service's descriptor cannot be found.
    OnionDescriptorNotFound,
    /// 0xF1 (Tor): the onion service's descriptor is invalid.
    OnionDescriptorInvalid,
    /// 0xF2 (Tor): the introduction to the onion service failed.
    OnionIntroductionFailed,
    /// 0xF3 (Tor): the rendezvous with the onion service failed.
    OnionRendezvousFailed,
    /// 0xF4 (Tor): the onion service requires client authorization.
    OnionMissingClientAuth,
    /// 0xF5 (Tor): the onion service rejected the client authorization.
    OnionWrongClientAuth,
    /// 0xF6 (Tor): the onion address is invalid.
    OnionInvalidAddress,
    /// 0xF7 (Tor): the introduction to the onion service timed out.
    OnionIntroductionTimedOut,
    /// Any other non-zero code.
    Unknown(u8),
}

impl ReplyCode {
    /// The code for the reply byte `code`; `None` for 0x00 (succeeded).
    pub fn from_code(code: u8) -> Option<ReplyCode> {
        Some(match code {
            0x00 => return None,
            0x01 => ReplyCode::GeneralFailure,
            0x02 => ReplyCode::NotAllowed,
            0x03 => ReplyCode::NetworkUnreachable,
            0x04 => ReplyCode::HostUnreachable,
            0x05 => ReplyCode::ConnectionRefused,
            0x06 => ReplyCode::TtlExpired,
            0x07 => ReplyCode::CommandNotSupported,
            0x08 => ReplyCode::AddressTypeNotSupported,
            0xF0 => ReplyCode::OnionDescriptorNotFound,
            0xF1 => ReplyCode::OnionDescriptorInvalid,
            0xF2 => ReplyCode::OnionIntroductionFailed,
            0xF3 => ReplyCode::OnionRendezvousFailed,
            0xF4 => ReplyCode::OnionMissingClientAuth,
            0xF5 => ReplyCode::OnionWrongClientAuth,
            0xF6 => ReplyCode::OnionInvalidAddress,
            0xF7 => ReplyCode::OnionIntroductionTimedOut,
            other => ReplyCode::Unknown(other),
        })
    }

    /// The reply byte.
    pub fn code(self) -> u8 {
        match self {
            ReplyCode::GeneralFailure => 0x01,
            ReplyCode::NotAllowed => 0x02,
            ReplyCode::NetworkUnreachable => 0x03,
            ReplyCode::HostUnreachable => 0x04,
            ReplyCode::ConnectionRefused => 0x05,
            ReplyCode::TtlExpired => 0x06,
            ReplyCode::CommandNotSupported => 0x07,
            ReplyCode::AddressTypeNotSupported => 0x08,
            ReplyCode::OnionDescriptorNotFound => 0xF0,
            ReplyCode::OnionDescriptorInvalid => 0xF1,
            ReplyCode::OnionIntroductionFailed => 0xF2,
            ReplyCode::OnionRendezvousFailed => 0xF3,
            ReplyCode::OnionMissingClientAuth => 0xF4,
            ReplyCode::OnionWrongClientAuth => 0xF5,
            ReplyCode::OnionInvalidAddress => 0xF6,
            ReplyCode::OnionIntroductionTimedOut => 0xF7,
            ReplyCode::Unknown(code) => code,
        }
    }
}

impl fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplyCode::GeneralFailure => "general failure",
            ReplyCode::NotAllowed => "connection not allowed by ruleset",
            ReplyCode::NetworkUnreachable => "network unreachable",
            ReplyCode::HostUnreachable => "host unreachable",
            ReplyCode::ConnectionRefused => "connection refused",
            ReplyCode::TtlExpired => "ttl expired",
            ReplyCode::CommandNotSupported => "command not supported",
            ReplyCode::AddressTypeNotSupported => "address type not supported",
            ReplyCode::OnionDescriptorNotFound => "onion service descriptor not found",
            ReplyCode::OnionDescriptorInvalid => "onion service descriptor is invalid",
            ReplyCode::OnionIntroductionFailed => "onion service introduction failed",
            ReplyCode::OnionRendezvousFailed => "onion service rendezvous failed",
            ReplyCode::OnionMissingClientAuth => "onion service requires client authorization",
            ReplyCode::OnionWrongClientAuth => "onion service rejected the client authorization",
            ReplyCode::OnionInvalidAddress => "invalid onion service address",
            ReplyCode::OnionIntroductionTimedOut => "onion service introduction timed out",
            ReplyCode::Unknown(code) => return write!(f, "unknown reply code {code:#04x}"),
        })
    }
}

/// Where a handshake is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// The greeting is out (or going out); waiting for the proxy to choose
    /// a method.
    Greeting,
    /// The username and password are out; waiting for the proxy's verdict.
    Authentication,
    /// The `CONNECT` request is out; waiting for the proxy's reply.
    Connect,
    /// The proxy connected to the target.
    Connected,
    /// The handshake failed; it takes no more input.
    Failed,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Greeting => "method selection",
            Stage::Authentication => "authentication",
            Stage::Connect => "connect request",
            Stage::Connected => "connected",
            Stage::Failed => "failed",
        })
    }
}

/// Why a SOCKS5 handshake failed. It does not name the proxy: see
/// [`ProxyError`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Socks5Error {
    /// A reply's version byte is not 5 (for the method and `CONNECT`
    /// replies) or 1 (for the RFC 1929 status).
    Version {
        /// The reply it was in.
        stage: Stage,
        /// The byte received.
        version: u8,
    },
    /// The proxy accepts none of the methods offered (method 0xFF).
    NoAcceptableMethod {
        /// Whether username/password was offered (else no authentication).
        offered_password: bool,
    },
    /// The proxy chose a method that was not offered.
    UnofferedMethod(u8),
    /// The proxy rejected the username and password (RFC 1929 status not
    /// 0).
    AuthFailed {
        /// The status byte received.
        status: u8,
    },
    /// The proxy could not connect to the target.
    Reply(ReplyCode),
    /// The `CONNECT` reply's reserved byte is not 0.
    Reserved(u8),
    /// The `CONNECT` reply's address type is not 1, 3 or 4.
    AddressType(u8),
    /// The `CONNECT` reply's bound name has length 0.
    EmptyName,
    /// The proxy closed the connection before the handshake completed.
    Closed(Stage),
}

impl fmt::Display for Socks5Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Socks5Error::Version { stage, version } => {
                let expected = if *stage == Stage::Authentication { AUTH_VERSION } else { VERSION };
                write!(f, "{stage} reply has version {version}, not {expected}")
            }
            Socks5Error::NoAcceptableMethod { offered_password: true } => {
                f.write_str("username/password authentication not accepted")
            }
            Socks5Error::NoAcceptableMethod { offered_password: false } => f.write_str("authentication required"),
            Socks5Error::UnofferedMethod(method) => {
                write!(f, "chose authentication method {method:#04x}, which was not offered")
            }
            Socks5Error::AuthFailed { .. } => f.write_str("username and password rejected"),
            Socks5Error::Reply(code) => write!(f, "{code}"),
            Socks5Error::Reserved(byte) => write!(f, "connect reply has reserved byte {byte:#04x}, not 0"),
            Socks5Error::AddressType(atyp) => write!(f, "connect reply has unknown address type {atyp}"),
            Socks5Error::EmptyName => f.write_str("connect reply has an empty bound name"),
            Socks5Error::Closed(stage) => write!(f, "closed the connection during the {stage}"),
        }
    }
}

impl std::error::Error for Socks5Error {}

/// A failure on the way through a proxy, with the proxy it came from. Its
/// `Display` names the proxy only; the cause is the
/// [`source`](std::error::Error::source), so
/// [`Report`](crate::error::Report) prints, for example,
/// `proxy 127.0.0.1:9050: host unreachable`.
#[derive(Debug)]
pub struct ProxyError {
    /// The proxy's address.
    pub proxy: SocketAddr,
    /// What went wrong.
    pub kind: ProxyFailure,
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "proxy {}", self.proxy)
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.kind)
    }
}

/// What went wrong with a proxy ([`ProxyError::kind`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum ProxyFailure {
    /// The TCP connection to the proxy failed: refused (the proxy is down),
    /// unreachable, or reset during the handshake.
    Io(std::io::Error),
    /// The SOCKS5 exchange failed: the proxy refused us or the target, or
    /// broke the protocol. Displayed as the [`Socks5Error`] itself.
    Socks5(Socks5Error),
    /// The connect deadline passed: before the TCP connection to the proxy
    /// was up (`stage` is `None`), or while waiting for the proxy's reply
    /// in `stage`.
    Timeout {
        /// The handshake stage that got no answer, if the proxy was reached.
        stage: Option<Stage>,
        /// The connect timeout, which covers the whole path.
        after: Duration,
    },
}

impl fmt::Display for ProxyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyFailure::Io(_) => f.write_str("connection to the proxy failed"),
            ProxyFailure::Socks5(e) => write!(f, "{e}"),
            ProxyFailure::Timeout { stage: None, after } => {
                write!(f, "no connection to the proxy within {} ms", after.as_millis())
            }
            ProxyFailure::Timeout { stage: Some(stage), after } => {
                write!(f, "no answer to the {stage} within {} ms", after.as_millis())
            }
        }
    }
}

impl std::error::Error for ProxyFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProxyFailure::Io(e) => Some(e),
            // The SOCKS5 error is displayed in place, and has no cause.
            ProxyFailure::Socks5(_) | ProxyFailure::Timeout { .. } => None,
        }
    }
}

/// What [`Handshake::handle_input`] achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The handshake needs more input; there may be bytes to transmit.
    Pending,
    /// The proxy connected to the target. Bytes that followed its reply are
    /// in [`Handshake::take_leftover`].
    Connected {
        /// The address the proxy reported.
        bound: Bound,
    },
}

/// One SOCKS5 client handshake, as a sans-IO state machine.
///
/// Contract:
/// - Write [`poll_transmit`](Handshake::poll_transmit)'s bytes to the proxy
///   and report how many went with [`advance`](Handshake::advance); the
///   greeting is ready as soon as the handshake is made.
/// - Give every byte read from the proxy to
///   [`handle_input`](Handshake::handle_input), in order; after each call
///   there may be new bytes to transmit.
/// - On end of stream call [`handle_eof`](Handshake::handle_eof).
/// - Once connected, take the leftover bytes and hand the stream to the
///   next layer. An error is final: every later call returns it again.
///
/// Input is never trusted: every byte is checked as it arrives, a reply is
/// buffered in a fixed [`MAX_REPLY_LEN`]-byte array, and no input panics.
#[derive(Debug)]
pub struct Handshake {
    state: State,
    target: Target,
    auth: Auth,
    /// Bytes queued for the proxy; `out[sent..]` is not yet written.
    out: Vec<u8>,
    sent: usize,
    /// The reply being received.
    buf: [u8; MAX_REPLY_LEN],
    have: usize,
    /// Bytes after the `CONNECT` reply.
    leftover: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Greeting,
    Authentication,
    Connect,
    Connected(Bound),
    Failed(Socks5Error),
}

impl Handshake {
    /// A handshake asking the proxy to connect to `target`, authenticating
    /// with `auth`. The greeting is queued for transmission.
    pub fn new(target: Target, auth: Auth) -> Handshake {
        let methods = auth.methods();
        let mut out = vec![VERSION, methods.len() as u8];
        out.extend_from_slice(methods);
        Handshake {
            state: State::Greeting,
            target,
            auth,
            out,
            sent: 0,
            buf: [0; MAX_REPLY_LEN],
            have: 0,
            leftover: Vec::new(),
        }
    }

    /// The target this handshake asks for.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Where the handshake is.
    pub fn stage(&self) -> Stage {
        match self.state {
            State::Greeting => Stage::Greeting,
            State::Authentication => Stage::Authentication,
            State::Connect => Stage::Connect,
            State::Connected(_) => Stage::Connected,
            State::Failed(_) => Stage::Failed,
        }
    }

    /// The error that ended the handshake, once it failed.
    pub fn failure(&self) -> Option<&Socks5Error> {
        match &self.state {
            State::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Whether the proxy connected to the target.
    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Connected(_))
    }

    /// The address the proxy reported, once connected.
    pub fn bound(&self) -> Option<&Bound> {
        match &self.state {
            State::Connected(bound) => Some(bound),
            _ => None,
        }
    }

    /// The bytes to write to the proxy next; empty when there are none
    /// (always empty once failed).
    pub fn poll_transmit(&self) -> &[u8] {
        &self.out[self.sent..]
    }

    /// Records that the first `n` bytes of
    /// [`poll_transmit`](Handshake::poll_transmit) were written. `n` must
    /// not exceed its length; a larger `n` is treated as its length.
    pub fn advance(&mut self, n: usize) {
        debug_assert!(n <= self.out.len() - self.sent, "advance({n}) past the transmit buffer");
        self.sent += n.min(self.out.len() - self.sent);
        if self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
        }
    }

    /// Takes the bytes that followed the proxy's `CONNECT` reply (the
    /// target's first bytes), and any given to
    /// [`handle_input`](Handshake::handle_input) after it. Empty before the
    /// handshake is connected.
    pub fn take_leftover(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.leftover)
    }

    /// The proxy closed the connection (end of stream). Before the
    /// handshake is connected this fails it with [`Socks5Error::Closed`];
    /// once connected the end belongs to the tunnelled stream and `Ok` is
    /// returned.
    pub fn handle_eof(&mut self) -> Result<(), Socks5Error> {
        let stage = match &self.state {
            State::Connected(_) => return Ok(()),
            State::Failed(e) => return Err(e.clone()),
            State::Greeting => Stage::Greeting,
            State::Authentication => Stage::Authentication,
            State::Connect => Stage::Connect,
        };
        Err(self.fail(Socks5Error::Closed(stage)))
    }

    /// Takes bytes read from the proxy. Returns [`Progress::Connected`]
    /// once the proxy's successful `CONNECT` reply is complete (and on every
    /// later call, whose bytes go to the leftover), [`Progress::Pending`]
    /// while more is needed, or the error that ended the handshake.
    pub fn handle_input(&mut self, mut data: &[u8]) -> Result<Progress, Socks5Error> {
        match &self.state {
            State::Failed(e) => return Err(e.clone()),
            State::Connected(bound) => {
                self.leftover.extend_from_slice(data);
                return Ok(Progress::Connected { bound: bound.clone() });
            }
            _ => {}
        }
        while !data.is_empty() {
            let need = self.check().map_err(|e| self.fail(e))?;
            let take = (need - self.have).min(data.len());
            self.buf[self.have..self.have + take].copy_from_slice(&data[..take]);
            self.have += take;
            data = &data[take..];
            // The first bytes of a reply may reveal that it is longer.
            let need = self.check().map_err(|e| self.fail(e))?;
            if self.have == need {
                self.complete();
                if let State::Connected(bound) = &self.state {
                    self.leftover.extend_from_slice(data);
                    return Ok(Progress::Connected { bound: bound.clone() });
                }
            }
        }
        Ok(Progress::Pending)
    }

    fn fail(&mut self, e: Socks5Error) -> Socks5Error {
        self.state = State::Failed(e.clone());
        self.out.clear();
        self.sent = 0;
        self.have = 0;
        e
    }

    /// Checks the buffered bytes of the current reply and returns its full
    /// length as far as they tell (never more than [`MAX_REPLY_LEN`]).
    fn check(&self) -> Result<usize, Socks5Error> {
        let got = &self.buf[..self.have];
        match self.state {
            State::Greeting => {
                if let Some(&version) = got.first()
                    && version != VERSION
                {
                    return Err(Socks5Error::Version { stage: Stage::Greeting, version });
                }
                if let Some(&method) = got.get(1) {
                    if method == METHOD_NO_ACCEPTABLE {
                        let offered_password = self.auth.credentials().is_some();
                        return Err(Socks5Error::NoAcceptableMethod { offered_password });
                    }
                    if !self.auth.methods().contains(&method) {
                        return Err(Socks5Error::UnofferedMethod(method));
                    }
                }
                Ok(2)
            }
            State::Authentication => {
                if let Some(&version) = got.first()
                    && version != AUTH_VERSION
                {
                    return Err(Socks5Error::Version { stage: Stage::Authentication, version });
                }
                if let Some(&status) = got.get(1)
                    && status != 0
                {
                    return Err(Socks5Error::AuthFailed { status });
                }
                Ok(2)
            }
            State::Connect => {
                if let Some(&version) = got.first()
                    && version != VERSION
                {
                    return Err(Socks5Error::Version { stage: Stage::Connect, version });
                }
                if let Some(&code) = got.get(1)
                    && let Some(code) = ReplyCode::from_code(code)
                {
                    return Err(Socks5Error::Reply(code));
                }
                if let Some(&reserved) = got.get(2)
                    && reserved != 0
                {
                    return Err(Socks5Error::Reserved(reserved));
                }
                match got.get(3) {
                    None => Ok(4),
                    Some(&ATYP_IPV4) => Ok(4 + 4 + 2),
                    Some(&ATYP_IPV6) => Ok(4 + 16 + 2),
                    Some(&ATYP_NAME) => match got.get(4) {
                        None => Ok(5),
                        Some(0) => Err(Socks5Error::EmptyName),
                        Some(&len) => Ok(5 + usize::from(len) + 2),
                    },
                    Some(&atyp) => Err(Socks5Error::AddressType(atyp)),
                }
            }
            // Not called in these states.
            State::Connected(_) | State::Failed(_) => Ok(self.have),
        }
    }

    /// The current reply is complete and valid: move on.
    fn complete(&mut self) {
        let reply = &self.buf[..self.have];
        let next = match self.state {
            State::Greeting if reply[1] == METHOD_PASSWORD => {
                if let Some(credentials) = self.auth.credentials() {
                    self.out.push(AUTH_VERSION);
                    // Lengths are checked by `Credentials::new`.
                    self.out.push(credentials.username.len() as u8);
                    self.out.extend_from_slice(&credentials.username);
                    self.out.push(credentials.password.len() as u8);
                    self.out.extend_from_slice(&credentials.password);
                }
                State::Authentication
            }
            State::Greeting | State::Authentication => {
                self.queue_connect();
                State::Connect
            }
            State::Connect => {
                let port_at = reply.len() - 2;
                let port = u16::from_be_bytes([reply[port_at], reply[port_at + 1]]);
                let addr = &reply[4..port_at];
                let bound = match reply[3] {
                    ATYP_IPV4 => {
                        let octets: [u8; 4] = addr.try_into().unwrap_or_default();
                        Bound::Addr(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(octets)), port))
                    }
                    ATYP_IPV6 => {
                        let octets: [u8; 16] = addr.try_into().unwrap_or_default();
                        Bound::Addr(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port))
                    }
                    _ => Bound::Name { name: addr[1..].to_vec(), port },
                };
                State::Connected(bound)
            }
            State::Connected(_) | State::Failed(_) => return,
        };
        self.state = next;
        self.have = 0;
    }

    fn queue_connect(&mut self) {
        self.out.extend_from_slice(&[VERSION, CMD_CONNECT, 0]);
        match &self.target {
            Target::Addr(SocketAddr::V4(addr)) => {
                self.out.push(ATYP_IPV4);
                self.out.extend_from_slice(&addr.ip().octets());
            }
            Target::Addr(SocketAddr::V6(addr)) => {
                self.out.push(ATYP_IPV6);
                self.out.extend_from_slice(&addr.ip().octets());
            }
            Target::Name { name, .. } => {
                self.out.push(ATYP_NAME);
                // The length is checked by `Name::new`.
                self.out.push(name.0.len() as u8);
                self.out.extend_from_slice(name.0.as_bytes());
            }
        }
        self.out.extend_from_slice(&self.target.port().to_be_bytes());
    }
}
