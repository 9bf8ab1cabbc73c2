//! Small helpers shared by the examples (argument parsing, service names).

#![allow(dead_code, reason = "each example uses a different subset")]

use bitcoin::p2p::ServiceFlags;
use peerlink::Target;
use peerlink::error::Report;
#[cfg(feature = "socks")]
use {peerlink::Config, peerlink::socks5::Proxy, std::net::SocketAddr};

/// Parses `--network NAME`: Bitcoin Core's `-chain` names (`main`, `test`,
/// `testnet4`, `signet`, `regtest`, via rust-bitcoin's `Network::from_core_arg`),
/// plus the aliases `mainnet`, `bitcoin`, `testnet` and `testnet3`.
pub fn network(name: &str) -> Result<bitcoin::Network, String> {
    let core_name = match name {
        "mainnet" | "bitcoin" => "main",
        "testnet" | "testnet3" => "test",
        other => other,
    };
    bitcoin::Network::from_core_arg(core_name)
        .map_err(|_| format!("unknown network {name:?} (expected main, test, testnet4, signet or regtest)"))
}

/// Service flags by name, as Bitcoin Core prints them.
pub fn service_names(flags: ServiceFlags) -> String {
    const NAMES: [(ServiceFlags, &str); 7] = [
        (ServiceFlags::NETWORK, "NETWORK"),
        (ServiceFlags::GETUTXO, "GETUTXO"),
        (ServiceFlags::BLOOM, "BLOOM"),
        (ServiceFlags::WITNESS, "WITNESS"),
        (ServiceFlags::COMPACT_FILTERS, "COMPACT_FILTERS"),
        (ServiceFlags::NETWORK_LIMITED, "NETWORK_LIMITED"),
        (ServiceFlags::P2P_V2, "P2P_V2"),
    ];
    let mut names: Vec<String> = NAMES.iter().filter(|(f, _)| flags.has(*f)).map(|(_, n)| (*n).to_owned()).collect();
    let known = NAMES.iter().fold(0u64, |acc, (f, _)| acc | f.to_u64());
    let unknown = flags.to_u64() & !known;
    if unknown != 0 {
        names.push(format!("UNKNOWN[{unknown:#x}]"));
    }
    if names.is_empty() { "NONE".to_owned() } else { names.join("|") }
}

/// Parses `--transport v1|v2|auto`.
pub fn transport(name: &str) -> Result<peerlink::wire::TransportPolicy, String> {
    use peerlink::wire::TransportPolicy;
    match name {
        "v1" => Ok(TransportPolicy::V1Only),
        "v2" => Ok(TransportPolicy::V2Only),
        "auto" => Ok(TransportPolicy::V2Preferred),
        _ => Err(format!("unknown transport {name:?} (expected v1, v2 or auto)")),
    }
}

/// Hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `v1`, or `v2 session_id=HEX`.
pub fn describe_transport(t: peerlink::codec::Transport) -> String {
    match t {
        peerlink::codec::Transport::V2 { session_id } => format!("v2 session_id={}", hex(&session_id)),
        other => other.to_string(),
    }
}

/// Takes the value after a flag.
pub fn value(args: &mut impl Iterator<Item = String>, flag: &str) -> Result<String, String> {
    args.next().ok_or_else(|| format!("{flag} needs a value"))
}

/// Parses a peer given as `IP:PORT`, `[IPV6]:PORT`, `HOST:PORT` or
/// `NAME.onion:PORT` (a [`Target`]); `what` names it in the error.
pub fn target(what: &str, text: &str) -> Result<Target, String> {
    text.parse().map_err(|e| format!("bad {what} {text:?}: {}", Report(&e)))
}

/// The connect timeout of the examples when they go through a proxy.
#[cfg(feature = "socks")]
pub const PROXY_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The SOCKS5 proxies given with `--proxy` and `--onion-proxy`, each
/// `[USER:PASS@]HOST:PORT`.
///
/// Without credentials every connection gets fresh ones (Tor's
/// `IsolateSOCKSAuth` then puts each on its own circuit). The credentials
/// are never printed: errors and [`Proxies::describe`] name the address only.
#[cfg(feature = "socks")]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proxies {
    /// `--proxy`: every outbound connection ([`Config::proxy`]).
    pub proxy: Option<Proxy>,
    /// `--onion-proxy`: onion targets ([`Config::onion_proxy`]).
    pub onion: Option<Proxy>,
}

#[cfg(feature = "socks")]
impl Proxies {
    /// If `flag` is `--proxy` or `--onion-proxy`, takes its value from
    /// `args`, records it and returns `Ok(true)`; `Ok(false)` for any other
    /// flag.
    pub fn take(&mut self, flag: &str, args: &mut impl Iterator<Item = String>) -> Result<bool, String> {
        let slot = match flag {
            "--proxy" => &mut self.proxy,
            "--onion-proxy" => &mut self.onion,
            _ => return Ok(false),
        };
        let text = value(args, flag)?;
        // The error never quotes the text, which may hold credentials.
        *slot = Some(text.parse::<Proxy>().map_err(|e| format!("bad {flag} value: {}", Report(&e)))?);
        Ok(true)
    }

    /// Sets [`Config::proxy`] and [`Config::onion_proxy`], and with either
    /// a 30 s connect timeout: the one deadline covers the proxy's handshake
    /// too, and Tor's way to an onion service often takes over 10 s.
    pub fn apply(&self, config: &mut Config) {
        config.proxy = self.proxy.clone();
        config.onion_proxy = self.onion.clone();
        if self.proxy.is_some() || self.onion.is_some() {
            config.connect_timeout = config.connect_timeout.max(PROXY_CONNECT_TIMEOUT);
        }
    }

    /// The address of the proxy a connection to `target` goes through:
    /// `--onion-proxy` (else `--proxy`) for an onion target, `--proxy` for
    /// any other.
    pub fn for_target(&self, target: &Target) -> Option<SocketAddr> {
        let proxy = if target.is_onion() { self.onion.as_ref().or(self.proxy.as_ref()) } else { self.proxy.as_ref() };
        proxy.map(|p| p.addr)
    }

    /// ` proxy=ADDR` when a connection to `target` goes through a proxy,
    /// else nothing: for the end of a printed line.
    pub fn describe(&self, target: &Target) -> String {
        self.for_target(target).map_or_else(String::new, |addr| format!(" proxy={addr}"))
    }
}

/// Checks a `--seed HOST[:PORT]` value (a name or an IP address, with an
/// optional port).
#[allow(dead_code)]
pub fn seed(text: &str) -> Result<String, String> {
    peerlink::discovery::pool::split_seed(text, 1).map_err(|e| format!("bad --seed {text:?}: {e}"))?;
    Ok(text.to_string())
}

/// The pool's configuration for `network`, with `seeds` (if any) instead of
/// the network's DNS seeds.
#[allow(dead_code)]
pub fn pool_config(network: bitcoin::Network, seeds: &[String]) -> peerlink::discovery::PoolConfig {
    let mut pool = peerlink::discovery::PoolConfig::new(network);
    if !seeds.is_empty() {
        pool.dns_seeds = seeds.to_vec();
        // Seeds the user names are local test nodes as often as not.
        pool.allow_unroutable = true;
        pool.distinct_groups = seeds.iter().all(|s| !is_local_seed(s));
    }
    pool
}

fn is_local_seed(seed: &str) -> bool {
    peerlink::discovery::pool::split_seed(seed, 1)
        .ok()
        .and_then(|(host, _)| host.parse::<std::net::IpAddr>().ok())
        .is_some_and(peerlink::netgroup::is_local)
}

/// How a pool peer was found, as `found=...` fields.
#[allow(dead_code)]
pub fn found(origin: &peerlink::discovery::Origin) -> String {
    use peerlink::discovery::Origin;
    match origin {
        Origin::Seed(host) => format!("found=seed seed={host}"),
        Origin::Book => "found=book".into(),
        Origin::Fixed => "found=fixed".into(),
        Origin::Manual => "found=manual".into(),
    }
}

/// The command line parsed by `parse`, or, on a bad one, the error and
/// `usage` on stderr and exit code 2.
#[allow(dead_code)]
pub fn args<T>(
    parse: impl FnOnce(std::iter::Skip<std::env::Args>) -> Result<T, String>,
    usage: &str,
) -> Result<T, std::process::ExitCode> {
    parse(std::env::args().skip(1)).map_err(|e| {
        eprintln!("error: {e}\n{usage}");
        std::process::ExitCode::from(2)
    })
}

/// The address book saved at `path` by an earlier run, or a new one if
/// there is no file yet. A file that cannot be read or is damaged is an
/// error: it is left as it is, for the user to look at or delete.
#[allow(dead_code)]
pub fn load_book(path: &std::path::Path) -> Result<peerlink::discovery::addrbook::AddrBook, String> {
    use peerlink::discovery::addrbook::AddrBook;
    let key = book_key()?;
    match std::fs::read(path) {
        Ok(bytes) => AddrBook::import(&bytes, key)
            .map_err(|e| format!("address book {}: {}", path.display(), peerlink::error::Report(&e))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AddrBook::new(key)),
        Err(e) => Err(format!("address book {}: {e}", path.display())),
    }
}

/// Saves `book` at `path`: written next to it, then renamed over it, so a
/// crash never leaves half a file.
#[allow(dead_code)]
pub fn save_book(path: &std::path::Path, book: &peerlink::discovery::addrbook::AddrBook) -> Result<(), String> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, book.export())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot save the address book {}: {e}", path.display()))
}

/// A random secret key for a new address book (its bucketing key).
#[allow(dead_code)]
pub fn book_key() -> Result<[u8; 32], String> {
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key))
        .map_err(|e| format!("no randomness for the address book: {e}"))?;
    Ok(key)
}
