//! Where a connection goes: a socket address, a host name to be resolved, or
//! a Tor v3 onion service ([`Target`]).
//!
//! A target is parsed from the usual `HOST:PORT` text ([`FromStr`]):
//!
//! | text                       | target                  |
//! | -------------------------- | ----------------------- |
//! | `203.0.113.7:8333`         | [`Target::Socket`]      |
//! | `[2001:db8::1]:8333`       | [`Target::Socket`]      |
//! | `seed.example.org:8333`    | [`Target::Domain`]      |
//! | `<56 base32>.onion:8333`   | [`Target::Onion`]       |
//!
//! and its [`Display`](fmt::Display) gives that text back. It can also be
//! built from a BIP155 address ([`Target::from_addr_v2`]), as `addrv2`
//! gossip carries it.
//!
//! A v3 onion name is `base32(PUBKEY | CHECKSUM | VERSION) + ".onion"`, where
//! `CHECKSUM = SHA3-256(".onion checksum" | PUBKEY | VERSION)[..2]` and
//! `VERSION = 3` (Tor's rend-spec-v3, "Encoding onion addresses"). Parsing
//! checks the version byte and the checksum; it does not check that the key
//! is a valid ed25519 point, which only the proxy (Tor) can act on anyway.
//!
//! Names are never resolved here: that is the reactor's business (off its
//! thread without a proxy, by the proxy with one). An onion name is never a
//! [`Hostname`], so it cannot reach a local DNS lookup by way of
//! [`Target::Domain`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::str::FromStr;

use bitcoin::p2p::address::AddrV2;
use sha3::{Digest, Sha3_256};

#[cfg(test)]
mod tests;

/// Where to connect.
///
/// `From<SocketAddr>` is implemented, so an API taking `impl Into<Target>`
/// takes a plain socket address as before.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// An IP address and port: no resolution needed.
    Socket(SocketAddr),
    /// A host name and port, resolved by the proxy if there is one, else off
    /// the reactor thread.
    Domain {
        /// The validated host name.
        name: Hostname,
        /// The TCP port.
        port: u16,
    },
    /// A Tor v3 onion service and port, reachable only through a Tor proxy.
    Onion {
        /// The service's ed25519 public key, as BIP155 `TORV3` carries it.
        pubkey: [u8; 32],
        /// The virtual port of the service.
        port: u16,
    },
}

impl Target {
    /// The target of an onion service with this ed25519 public key.
    pub fn onion(pubkey: [u8; 32], port: u16) -> Target {
        Target::Onion { pubkey, port }
    }

    /// The target of a BIP155 address (as gossiped in `addrv2`) and port.
    ///
    /// IPv4 and IPv6 become [`Target::Socket`], TorV3 becomes
    /// [`Target::Onion`]. TorV2 is refused ([`TargetError::OnionV2`]: Tor
    /// removed v2 services), and I2P, CJDNS and unknown networks give
    /// [`TargetError::UnsupportedNetwork`]. A CJDNS address is an IPv6
    /// address in `fc00::/8`, but it is reachable only over the CJDNS
    /// overlay, so it is not turned into a socket address.
    pub fn from_addr_v2(addr: &AddrV2, port: u16) -> Result<Target, TargetError> {
        match addr {
            AddrV2::Ipv4(ip) => Ok(Target::Socket(SocketAddr::from((*ip, port)))),
            AddrV2::Ipv6(ip) => Ok(Target::Socket(SocketAddr::from((*ip, port)))),
            AddrV2::TorV3(pubkey) => Ok(Target::Onion { pubkey: *pubkey, port }),
            AddrV2::TorV2(_) => Err(TargetError::OnionV2),
            AddrV2::I2p(_) => Err(TargetError::UnsupportedNetwork { network: BIP155_I2P }),
            AddrV2::Cjdns(_) => Err(TargetError::UnsupportedNetwork { network: BIP155_CJDNS }),
            AddrV2::Unknown(network, _) => Err(TargetError::UnsupportedNetwork { network: *network }),
        }
    }

    /// The BIP155 address of this target (its port is [`port`](Self::port)),
    /// or `None` for a [`Target::Domain`], which BIP155 cannot carry.
    pub fn to_addr_v2(&self) -> Option<AddrV2> {
        match self {
            Target::Socket(SocketAddr::V4(a)) => Some(AddrV2::Ipv4(*a.ip())),
            Target::Socket(SocketAddr::V6(a)) => Some(AddrV2::Ipv6(*a.ip())),
            Target::Onion { pubkey, .. } => Some(AddrV2::TorV3(*pubkey)),
            Target::Domain { .. } => None,
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        match self {
            Target::Socket(addr) => addr.port(),
            Target::Domain { port, .. } | Target::Onion { port, .. } => *port,
        }
    }

    /// The host part as text: the IP address (without brackets), the host
    /// name, or the `.onion` name. This is what a SOCKS5 request for a name
    /// carries.
    pub fn host(&self) -> String {
        match self {
            Target::Socket(addr) => addr.ip().to_string(),
            Target::Domain { name, .. } => name.as_str().to_owned(),
            Target::Onion { pubkey, .. } => onion_name(pubkey),
        }
    }

    /// Whether this is a Tor onion service.
    pub fn is_onion(&self) -> bool {
        matches!(self, Target::Onion { .. })
    }

    /// Whether the target is a name that must be resolved before a direct
    /// connection ([`Target::Domain`]) or that only a proxy can reach
    /// ([`Target::Onion`]). Through a proxy, such a target is sent to the
    /// proxy as a name (remote resolution).
    pub fn needs_proxy_resolution(&self) -> bool {
        matches!(self, Target::Domain { .. } | Target::Onion { .. })
    }

    /// The socket address of a [`Target::Socket`], else `None`.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            Target::Socket(addr) => Some(*addr),
            _ => None,
        }
    }
}

impl From<SocketAddr> for Target {
    fn from(addr: SocketAddr) -> Target {
        Target::Socket(addr)
    }
}

impl From<SocketAddrV4> for Target {
    fn from(addr: SocketAddrV4) -> Target {
        Target::Socket(addr.into())
    }
}

impl From<SocketAddrV6> for Target {
    fn from(addr: SocketAddrV6) -> Target {
        Target::Socket(addr.into())
    }
}

impl From<(IpAddr, u16)> for Target {
    fn from(addr: (IpAddr, u16)) -> Target {
        Target::Socket(addr.into())
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Socket(addr) => write!(f, "{addr}"),
            Target::Domain { name, port } => write!(f, "{name}:{port}"),
            Target::Onion { pubkey, port } => write!(f, "{}:{port}", onion_name(pubkey)),
        }
    }
}

impl FromStr for Target {
    type Err = TargetError;

    /// Parses `IPV4:PORT`, `[IPV6]:PORT`, `NAME:PORT` or `V3NAME.onion:PORT`.
    fn from_str(s: &str) -> Result<Target, TargetError> {
        if let Some(rest) = s.strip_prefix('[') {
            let (ip, after) = rest.split_once(']').ok_or(TargetError::InvalidIpv6)?;
            let port = match after.strip_prefix(':') {
                Some(port) => parse_port(port)?,
                None if after.is_empty() => return Err(TargetError::MissingPort),
                None => return Err(TargetError::InvalidIpv6),
            };
            // The standard parser also takes a scope id (`[fe80::1%2]:8333`).
            return match format!("[{ip}]:{port}").parse::<SocketAddrV6>() {
                Ok(addr) => Ok(Target::Socket(addr.into())),
                Err(_) => Err(TargetError::InvalidIpv6),
            };
        }
        if s.parse::<Ipv6Addr>().is_ok() {
            return Err(TargetError::UnbracketedIpv6);
        }
        let (host, port) = s.rsplit_once(':').ok_or(TargetError::MissingPort)?;
        if host.parse::<Ipv6Addr>().is_ok() {
            return Err(TargetError::UnbracketedIpv6);
        }
        let port = parse_port(port)?;
        if let Ok(ip) = host.parse::<Ipv4Addr>() {
            return Ok(Target::Socket(SocketAddr::from((ip, port))));
        }
        if let Some(label) = onion_label(host) {
            return Ok(Target::Onion { pubkey: parse_onion_label(label)?, port });
        }
        Ok(Target::Domain { name: Hostname::new(host)?, port })
    }
}

/// A host name for DNS (RFC 1123): dot-separated labels of 1 to 63 ASCII
/// letters, digits and hyphens, no label starting or ending with a hyphen,
/// at most 253 characters in all, and a last label that is not all digits
/// (so a mistyped IPv4 address is never looked up). Stored in lower case.
/// A name in `.onion` is not a host name: parse it as a [`Target`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Hostname(String);

impl Hostname {
    /// Validates `name` (without port or trailing dot).
    pub fn new(name: &str) -> Result<Hostname, TargetError> {
        if name.is_empty() {
            return Err(TargetError::EmptyHost);
        }
        if name.len() > MAX_HOSTNAME_LEN {
            return Err(TargetError::HostnameTooLong { len: name.len() });
        }
        let mut last = "";
        for label in name.split('.') {
            if label.is_empty() {
                return Err(TargetError::EmptyLabel);
            }
            if label.len() > MAX_LABEL_LEN {
                return Err(TargetError::LabelTooLong { len: label.len() });
            }
            if let Some(ch) = label.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-')) {
                return Err(TargetError::InvalidCharacter { ch });
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(TargetError::HyphenAtLabelEdge);
            }
            last = label;
        }
        if last.bytes().all(|b| b.is_ascii_digit()) {
            return Err(TargetError::NumericTld);
        }
        if last.eq_ignore_ascii_case("onion") {
            return Err(TargetError::OnionNotHostname);
        }
        Ok(Hostname(name.to_ascii_lowercase()))
    }

    /// The name, in lower case.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Hostname {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Hostname {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Hostname, TargetError> {
        Hostname::new(s)
    }
}

/// The `.onion` name (56 base32 characters, then `.onion`) of the v3 onion
/// service with this ed25519 public key.
pub fn onion_name(pubkey: &[u8; 32]) -> String {
    let mut raw = [0u8; ONION_RAW_LEN];
    raw[..32].copy_from_slice(pubkey);
    raw[32..34].copy_from_slice(&onion_checksum(pubkey, ONION_VERSION));
    raw[34] = ONION_VERSION;
    let mut name = String::with_capacity(ONION_LABEL_LEN + ".onion".len());
    // 35 bytes are 280 bits: exactly 56 five-bit groups, no padding.
    for group in raw.chunks(5) {
        let bits = group.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        for i in (0..8).rev() {
            name.push(char::from(BASE32[((bits >> (i * 5)) & 31) as usize]));
        }
    }
    name.push_str(".onion");
    name
}

/// Why a text or BIP155 address is not a [`Target`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TargetError {
    /// No `:PORT` after the host.
    MissingPort,
    /// The port is not a decimal number from 0 to 65535.
    InvalidPort,
    /// The text in `[...]` is not an IPv6 address, or something other than
    /// `:PORT` follows the `]`.
    InvalidIpv6,
    /// An IPv6 address with a port must be written `[IPV6]:PORT`.
    UnbracketedIpv6,
    /// The host is empty.
    EmptyHost,
    /// The host name is longer than 253 characters.
    HostnameTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The host name has an empty label (two dots in a row, or a dot at
    /// either end).
    EmptyLabel,
    /// A label of the host name is longer than 63 characters.
    LabelTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The host name has a character other than a letter, digit, hyphen or
    /// dot.
    InvalidCharacter {
        /// The first such character.
        ch: char,
    },
    /// A label of the host name starts or ends with a hyphen.
    HyphenAtLabelEdge,
    /// The last label of the host name is all digits (it is not an IPv4
    /// address either).
    NumericTld,
    /// A `.onion` name was given as a [`Hostname`]; parse it as a
    /// [`Target`] to get a [`Target::Onion`].
    OnionNotHostname,
    /// A Tor v2 onion name (16 characters) or BIP155 `TORV2` address: Tor
    /// removed v2 onion services in 2021.
    OnionV2,
    /// A `.onion` name whose first label is not 56 characters long.
    OnionLength {
        /// The length of the name before `.onion`.
        len: usize,
    },
    /// A `.onion` name with a label before the service's name
    /// (`sub.NAME.onion`).
    OnionSubdomain,
    /// A 56-character `.onion` name with a character outside base32
    /// (`a`–`z`, `2`–`7`).
    OnionBase32,
    /// A 56-character `.onion` name whose version byte is not 3.
    OnionVersion {
        /// The version byte found.
        version: u8,
    },
    /// A v3 `.onion` name whose checksum does not match its key: a typo.
    OnionChecksum,
    /// A BIP155 address on a network that peerlink cannot connect to (I2P,
    /// CJDNS, or a network id BIP155 does not define).
    UnsupportedNetwork {
        /// The BIP155 network id (5 is I2P, 6 is CJDNS).
        network: u8,
    },
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetError::MissingPort => f.write_str("missing port (expected HOST:PORT)"),
            TargetError::InvalidPort => f.write_str("invalid port (expected a number from 0 to 65535)"),
            TargetError::InvalidIpv6 => f.write_str("invalid ipv6 address (expected [IPV6]:PORT)"),
            TargetError::UnbracketedIpv6 => f.write_str("ipv6 address without brackets (expected [IPV6]:PORT)"),
            TargetError::EmptyHost => f.write_str("empty host"),
            TargetError::HostnameTooLong { len } => {
                write!(f, "host name of {len} characters (at most {MAX_HOSTNAME_LEN})")
            }
            TargetError::EmptyLabel => f.write_str("host name with an empty label"),
            TargetError::LabelTooLong { len } => {
                write!(f, "host name label of {len} characters (at most {MAX_LABEL_LEN})")
            }
            TargetError::InvalidCharacter { ch } => write!(f, "invalid character {ch:?} in host name"),
            TargetError::HyphenAtLabelEdge => f.write_str("host name label starts or ends with a hyphen"),
            TargetError::NumericTld => f.write_str("host name ends in an all-numeric label (not an ipv4 address)"),
            TargetError::OnionNotHostname => f.write_str("an onion name is not a host name"),
            TargetError::OnionV2 => f.write_str("tor v2 onion addresses are no longer supported"),
            TargetError::OnionLength { len } => {
                write!(f, "onion name of {len} characters (a v3 name has {ONION_LABEL_LEN})")
            }
            TargetError::OnionSubdomain => f.write_str("onion name with a subdomain"),
            TargetError::OnionBase32 => f.write_str("onion name is not base32"),
            TargetError::OnionVersion { version } => {
                write!(f, "onion address version {version} (only version {ONION_VERSION} exists)")
            }
            TargetError::OnionChecksum => f.write_str("onion address checksum mismatch"),
            TargetError::UnsupportedNetwork { network } => match *network {
                BIP155_I2P => f.write_str("unsupported network: i2p"),
                BIP155_CJDNS => f.write_str("unsupported network: cjdns"),
                id => write!(f, "unsupported network: bip155 network id {id}"),
            },
        }
    }
}

impl std::error::Error for TargetError {}

const MAX_HOSTNAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;
const BIP155_I2P: u8 = 5;
const BIP155_CJDNS: u8 = 6;

const ONION_VERSION: u8 = 3;
/// PUBKEY (32) | CHECKSUM (2) | VERSION (1).
const ONION_RAW_LEN: usize = 35;
const ONION_LABEL_LEN: usize = 56;
const ONION_V2_LABEL_LEN: usize = 16;
/// RFC 4648 base32, in the lower case Tor writes.
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// `CHECKSUM = SHA3-256(".onion checksum" | PUBKEY | VERSION)[..2]`.
fn onion_checksum(pubkey: &[u8; 32], version: u8) -> [u8; 2] {
    let digest =
        Sha3_256::new().chain_update(b".onion checksum").chain_update(pubkey).chain_update([version]).finalize();
    [digest[0], digest[1]]
}

/// The part of `host` before `.onion`, if `host` is in `.onion`.
fn onion_label(host: &str) -> Option<&str> {
    if host.eq_ignore_ascii_case("onion") {
        return Some("");
    }
    let split = host.len().checked_sub(".onion".len())?;
    let suffix = host.get(split..)?;
    suffix.eq_ignore_ascii_case(".onion").then(|| &host[..split])
}

/// Decodes and checks the name of a v3 onion service (without `.onion`).
fn parse_onion_label(label: &str) -> Result<[u8; 32], TargetError> {
    if label.contains('.') {
        return Err(TargetError::OnionSubdomain);
    }
    if label.len() == ONION_V2_LABEL_LEN {
        return Err(TargetError::OnionV2);
    }
    if label.len() != ONION_LABEL_LEN {
        return Err(TargetError::OnionLength { len: label.len() });
    }
    let mut raw = [0u8; ONION_RAW_LEN];
    for (chunk, out) in label.as_bytes().chunks(8).zip(raw.chunks_mut(5)) {
        let mut bits = 0u64;
        for c in chunk {
            bits = (bits << 5) | u64::from(base32_value(*c).ok_or(TargetError::OnionBase32)?);
        }
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = (bits >> (32 - 8 * i)) as u8;
        }
    }
    let version = raw[34];
    if version != ONION_VERSION {
        return Err(TargetError::OnionVersion { version });
    }
    let mut pubkey = [0u8; 32];
    pubkey.copy_from_slice(&raw[..32]);
    if raw[32..34] != onion_checksum(&pubkey, version) {
        return Err(TargetError::OnionChecksum);
    }
    Ok(pubkey)
}

fn base32_value(c: u8) -> Option<u8> {
    match c {
        b'a'..=b'z' => Some(c - b'a'),
        b'A'..=b'Z' => Some(c - b'A'),
        b'2'..=b'7' => Some(c - b'2' + 26),
        _ => None,
    }
}

/// A port: 1 to 5 ASCII digits with a value up to 65535 (no sign, unlike
/// `u16::from_str`).
fn parse_port(s: &str) -> Result<u16, TargetError> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TargetError::InvalidPort);
    }
    s.parse().map_err(|_| TargetError::InvalidPort)
}
