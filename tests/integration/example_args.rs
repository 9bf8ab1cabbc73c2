//! The examples' shared argument helpers (examples/common), which the
//! examples' own command lines depend on.

use bitcoin::Network;
use peerlink::Target;
#[cfg(feature = "socks")]
use peerlink::socks5::{Proxy, ProxyAuth};

#[cfg(feature = "socks")]
use crate::example_common::Proxies;
use crate::example_common::{network, target};

#[test]
fn network_names_are_cores_plus_aliases() {
    let cases = [
        ("main", Network::Bitcoin),
        ("mainnet", Network::Bitcoin),
        ("bitcoin", Network::Bitcoin),
        ("test", Network::Testnet),
        ("testnet", Network::Testnet),
        ("testnet3", Network::Testnet),
        ("testnet4", Network::Testnet4),
        ("signet", Network::Signet),
        ("regtest", Network::Regtest),
    ];
    for (name, expected) in cases {
        assert_eq!(network(name), Ok(expected), "{name}");
    }
    for bad in ["", "Main", "regtest ", "testnet5", "liquid"] {
        let err = network(bad).expect_err(bad);
        assert!(err.contains(&format!("{bad:?}")), "the error names the input: {err}");
    }
}

#[cfg(feature = "socks")]
/// Feeds `args` to [`Proxies::take`] the way the examples' loops do: each
/// argument is offered as a flag, and a taken flag consumes its value.
/// Returns the proxies and the arguments not taken.
fn take_all(args: &[&str]) -> Result<(Proxies, Vec<String>), String> {
    let mut args = args.iter().map(|a| a.to_string());
    let (mut proxies, mut rest) = (Proxies::default(), Vec::new());
    while let Some(arg) = args.next() {
        if !proxies.take(&arg, &mut args)? {
            rest.push(arg);
        }
    }
    Ok((proxies, rest))
}

#[cfg(feature = "socks")]
#[test]
fn proxy_flags_take_an_address_with_optional_credentials() {
    let (proxies, rest) =
        take_all(&["127.0.0.1:8333", "--proxy", "127.0.0.1:9050", "--network", "regtest"]).expect("valid");
    assert_eq!(proxies.proxy, Some(Proxy::new("127.0.0.1:9050".parse().unwrap())));
    assert_eq!(proxies.proxy.as_ref().unwrap().auth, ProxyAuth::Isolated, "no credentials: isolation");
    assert_eq!(proxies.onion, None);
    assert_eq!(rest, ["127.0.0.1:8333", "--network", "regtest"], "other arguments are left alone");

    let (proxies, rest) = take_all(&["--onion-proxy", "alice:s3cret@[::1]:9150"]).expect("valid");
    assert!(rest.is_empty());
    assert_eq!(proxies.proxy, None);
    let onion = proxies.onion.expect("an onion proxy");
    assert_eq!(onion.addr, "[::1]:9150".parse().unwrap());
    assert!(matches!(&onion.auth, ProxyAuth::Fixed(c) if c.username() == b"alice" && c.password() == b"s3cret"));

    let mut config = peerlink::Config::new(Network::Regtest);
    let (proxies, _) = take_all(&["--proxy", "127.0.0.1:9050", "--onion-proxy", "127.0.0.1:9150"]).unwrap();
    assert_eq!(config.connect_timeout, peerlink::config::DEFAULT_CONNECT_TIMEOUT);
    proxies.apply(&mut config);
    assert_eq!(config.proxy, proxies.proxy);
    assert_eq!(config.onion_proxy, proxies.onion);
    assert_eq!(config.connect_timeout, crate::example_common::PROXY_CONNECT_TIMEOUT, "room for Tor");
}

#[cfg(feature = "socks")]
#[test]
fn bad_proxy_values_are_refused_without_echoing_credentials() {
    let cases = [
        (&["--proxy", "nonsense"][..], "bad --proxy value: proxy address is not IP:PORT or HOST:PORT"),
        (&["--proxy", "user@1.2.3.4:9050"], "bad --proxy value: proxy credentials must be USER:PASS@"),
        (
            &["--onion-proxy", "alice:s3cret@[::1]9050"],
            "bad --onion-proxy value: proxy address is not IP:PORT or HOST:PORT",
        ),
        // A password typed without its `@` is not echoed either.
        (&["--proxy", "alice:s3cret"], "bad --proxy value: proxy address is not IP:PORT or HOST:PORT"),
        (&["--proxy", "alice:s3cret@1.2.3.4"], "bad --proxy value: proxy address is not IP:PORT or HOST:PORT"),
        (&["--proxy", ":s3cret@1.2.3.4:9050"], "bad --proxy value: proxy username is 0 bytes long"),
        (&["--proxy"], "--proxy needs a value"),
        (&["--onion-proxy"], "--onion-proxy needs a value"),
    ];
    for (args, expected) in cases {
        let err = take_all(args).expect_err(&format!("{args:?}"));
        assert!(err.starts_with(expected), "{args:?}: {err}");
        // `user@` is the only credential in the missing-password case.
        for secret in ["user@", "alice", "s3cret"] {
            assert!(!err.contains(secret), "{args:?}: the error shows the credentials: {err}");
        }
    }
}

#[test]
fn peers_are_ips_host_names_or_onion_names() {
    let onion = "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion";
    let ip = target("--peer address", "203.0.113.7:8333").unwrap();
    assert_eq!(ip, Target::Socket("203.0.113.7:8333".parse().unwrap()));
    let v6 = target("--peer address", "[2001:db8::1]:8333").unwrap();
    assert_eq!(v6, Target::Socket("[2001:db8::1]:8333".parse().unwrap()));
    let name = target("--peer address", "Seed.Example.org:8333").unwrap();
    assert!(matches!(&name, Target::Domain { name, port: 8333 } if name.as_str() == "seed.example.org"), "{name:?}");
    let hidden = target("--peer address", &format!("{onion}:8333")).unwrap();
    assert!(hidden.is_onion() && hidden.port() == 8333, "{hidden:?}");
    assert_eq!(hidden.to_string(), format!("{onion}:8333"), "printed as given");

    // The onion name with one character changed fails its checksum.
    let typo = format!("{}a.onion:8333", &onion[..onion.len() - ".onion".len() - 1]);
    for bad in ["203.0.113.7", "seed..example.org:8333", "2001:db8::1:8333", "host:99999", typo.as_str()] {
        let err = target("--peer address", bad).expect_err(bad);
        assert!(err.starts_with(&format!("bad --peer address {bad:?}: ")), "{err}");
    }
}

#[cfg(feature = "socks")]
#[test]
fn the_proxy_for_a_peer_is_the_onion_proxy_for_onion_peers_only() {
    let onion = target("peer", "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion:8333").unwrap();
    let ip = target("peer", "203.0.113.7:8333").unwrap();
    let name = target("peer", "seed.example.org:8333").unwrap();
    let (tor, other) = ("127.0.0.1:9050".parse().unwrap(), "127.0.0.1:1080".parse().unwrap());

    let none = Proxies::default();
    assert_eq!((none.for_target(&onion), none.describe(&ip)), (None, String::new()));

    let both = Proxies { proxy: Some(Proxy::new(other)), onion: Some(Proxy::new(tor)) };
    assert_eq!(both.for_target(&onion), Some(tor));
    assert_eq!(both.for_target(&ip), Some(other));
    assert_eq!(both.for_target(&name), Some(other));
    assert_eq!(both.describe(&onion), " proxy=127.0.0.1:9050");

    let proxy_only = Proxies { proxy: Some(Proxy::new(other)), onion: None };
    assert_eq!(proxy_only.for_target(&onion), Some(other), "onion peers fall back to --proxy");
    let onion_only = Proxies { proxy: None, onion: Some(Proxy::new(tor)) };
    assert_eq!((onion_only.for_target(&onion), onion_only.for_target(&ip)), (Some(tor), None));

    // Credentials are never part of the description.
    let fixed: Proxy = "alice:s3cret@127.0.0.1:9050".parse().unwrap();
    let with_credentials = Proxies { proxy: Some(fixed), onion: None };
    assert_eq!(with_credentials.describe(&ip), " proxy=127.0.0.1:9050");
}
