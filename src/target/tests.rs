use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use bitcoin::hex::FromHex;
use bitcoin::p2p::address::AddrV2;
use proptest::prelude::*;

use super::{Hostname, Target, TargetError, onion_name};

fn key(hex: &str) -> [u8; 32] {
    <[u8; 32]>::from_hex(hex).unwrap()
}

fn parse(s: &str) -> Result<Target, TargetError> {
    s.parse()
}

/// Bitcoin Core, src/test/net_tests.cpp, `cnetaddr_unserialize_v2` ("Valid
/// TORv3"): the BIP155 TORV3 address 79bcc625...2f1f prints as this name.
/// The same pair is in rust-bitcoin's `p2p::address` tests (its serialised
/// form, `0420` then the key, is decoded below).
const CORE_KEY: &str = "79bcc625184b05194975c28b66b66b0469f7f6556fb1ac3189a79b40dda32f1f";
const CORE_NAME: &str = "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion";

/// Tor, src/test/test_hs_common.c, `test_build_address` (made with Tor's
/// hs_build_address.py from the key of RFC 8032's TEST 1): this key builds
/// this address, which `test_validate_address` also accepts.
const TOR_KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
const TOR_NAME: &str = "25njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhkenl5sid.onion";

/// Tor, src/test/test_hs_common.c, `test_validate_address`: two 56-character
/// names that Tor rejects with "invalid checksum" (the first is the example
/// of prop224, whose checksum was computed by an older draft).
const TOR_BAD_CHECKSUMS: [&str; 2] = [
    "l5satjgud6gucryazcyvyvhuxhr74u6ygigiuyixe3a6ysis67ororad",
    "btojiu7nu5y5iwut64eufevogqdw4wmqzugnoluw232r4t3ecsfv37ad",
];

#[test]
fn onion_names_of_known_keys() {
    assert_eq!(onion_name(&key(CORE_KEY)), CORE_NAME);
    assert_eq!(onion_name(&key(TOR_KEY)), TOR_NAME);
}

#[test]
fn onion_names_parse_to_their_keys() {
    for (hex, name) in [(CORE_KEY, CORE_NAME), (TOR_KEY, TOR_NAME)] {
        let target = parse(&format!("{name}:8333")).unwrap();
        assert_eq!(target, Target::Onion { pubkey: key(hex), port: 8333 });
        assert_eq!(target.to_string(), format!("{name}:8333"));
        assert_eq!(target.host(), name);
        // Upper case is the same name; it prints in lower case.
        assert_eq!(parse(&format!("{}:8333", name.to_uppercase())).unwrap(), target);
    }
}

#[test]
fn tor_rejects_these_checksums_and_so_do_we() {
    for label in TOR_BAD_CHECKSUMS {
        assert_eq!(parse(&format!("{label}.onion:8333")), Err(TargetError::OnionChecksum), "{label}");
    }
}

#[test]
fn one_changed_character_fails_the_checksum() {
    // The last character before `d` holds key and checksum bits only
    // (`sid` -> `sad` keeps the version byte 3).
    let typo = TOR_NAME.replace("l5sid", "l5sad");
    assert_eq!(parse(&format!("{typo}:8333")), Err(TargetError::OnionChecksum));
    // A changed key character, with the original checksum.
    let typo = CORE_NAME.replacen('p', "q", 1);
    assert_eq!(parse(&format!("{typo}:8333")), Err(TargetError::OnionChecksum));
}

/// The 56-character name of `pubkey | checksum | version`, with the
/// checksum computed for `version` (so only the version is wrong).
fn name_with_version(pubkey: &[u8; 32], version: u8) -> String {
    let mut raw = [0u8; 35];
    raw[..32].copy_from_slice(pubkey);
    raw[32..34].copy_from_slice(&super::onion_checksum(pubkey, version));
    raw[34] = version;
    let mut bits = String::new();
    for b in raw {
        bits.push_str(&format!("{b:08b}"));
    }
    bits.as_bytes()
        .chunks(5)
        .map(|group| {
            let v = u8::from_str_radix(std::str::from_utf8(group).unwrap(), 2).unwrap();
            char::from(super::BASE32[usize::from(v)])
        })
        .collect()
}

#[test]
fn the_version_byte_must_be_3() {
    let pubkey = key(CORE_KEY);
    // The independent encoder agrees with `onion_name` for version 3.
    assert_eq!(format!("{}.onion", name_with_version(&pubkey, 3)), CORE_NAME);
    for version in [0, 2, 4, 0xff] {
        let name = name_with_version(&pubkey, version);
        assert_eq!(parse(&format!("{name}.onion:8333")), Err(TargetError::OnionVersion { version }), "{version}");
    }
}

#[test]
fn v2_and_malformed_onions_are_refused() {
    // A v2 name (Tor's own, before 2021): 16 characters.
    assert_eq!(parse("expyuzz4wqqyqhjn.onion:80"), Err(TargetError::OnionV2));
    assert_eq!(parse("abc.onion:80"), Err(TargetError::OnionLength { len: 3 }));
    assert_eq!(parse(".onion:80"), Err(TargetError::OnionLength { len: 0 }));
    assert_eq!(parse("onion:80"), Err(TargetError::OnionLength { len: 0 }));
    assert_eq!(parse(&format!("www.{CORE_NAME}:80")), Err(TargetError::OnionSubdomain));
    let not_base32 = CORE_NAME.replacen('p', "1", 1);
    assert_eq!(parse(&format!("{not_base32}:80")), Err(TargetError::OnionBase32));
    let non_ascii = format!("{}é{}", &CORE_NAME[..27], &CORE_NAME[29..]);
    assert_eq!(parse(&format!("{non_ascii}:80")), Err(TargetError::OnionBase32));
    assert_eq!(parse(CORE_NAME), Err(TargetError::MissingPort));
    assert_eq!(Hostname::new(CORE_NAME), Err(TargetError::OnionNotHostname));
}

#[test]
fn addr_v2_round_trips() {
    // Core's serialised TORV3 address, decoded by rust-bitcoin.
    let bytes = Vec::from_hex(&format!("0420{CORE_KEY}")).unwrap();
    let addr: AddrV2 = bitcoin::consensus::deserialize(&bytes).unwrap();
    let target = Target::from_addr_v2(&addr, 8333).unwrap();
    assert_eq!(target.to_string(), format!("{CORE_NAME}:8333"));
    assert_eq!(target.to_addr_v2(), Some(addr));

    for addr in [
        AddrV2::Ipv4(Ipv4Addr::new(203, 0, 113, 7)),
        AddrV2::Ipv6("2001:db8::1".parse().unwrap()),
        AddrV2::TorV3(key(TOR_KEY)),
    ] {
        let target = Target::from_addr_v2(&addr, 18444).unwrap();
        assert_eq!(target.port(), 18444);
        assert_eq!(target.to_addr_v2().as_ref(), Some(&addr));
        assert_eq!(parse(&target.to_string()).unwrap(), target);
    }
    assert_eq!(
        Target::from_addr_v2(&AddrV2::Ipv4(Ipv4Addr::LOCALHOST), 8333).unwrap(),
        Target::Socket("127.0.0.1:8333".parse().unwrap())
    );
    assert_eq!(Target::from_addr_v2(&AddrV2::TorV3(key(TOR_KEY)), 9).unwrap().to_string(), format!("{TOR_NAME}:9"));
    assert_eq!(
        Target::Domain { name: Hostname::new("localhost").unwrap(), port: 1 }.to_addr_v2(),
        None,
        "bip155 has no domain names"
    );
}

#[test]
fn addr_v2_networks_we_cannot_reach() {
    let cases = [
        (AddrV2::TorV2(*b"\xf1\xf2\xf3\xf4\xf5\xf6\xf7\xf8\xf9\xfa"), TargetError::OnionV2),
        (AddrV2::I2p([7; 32]), TargetError::UnsupportedNetwork { network: 5 }),
        (AddrV2::Cjdns("fc00:1:2:3:4:5:6:7".parse().unwrap()), TargetError::UnsupportedNetwork { network: 6 }),
        (AddrV2::Unknown(42, vec![1, 2, 3]), TargetError::UnsupportedNetwork { network: 42 }),
    ];
    for (addr, error) in cases {
        assert_eq!(Target::from_addr_v2(&addr, 8333), Err(error), "{addr:?}");
    }
    assert_eq!(TargetError::UnsupportedNetwork { network: 5 }.to_string(), "unsupported network: i2p");
    assert_eq!(TargetError::UnsupportedNetwork { network: 6 }.to_string(), "unsupported network: cjdns");
    assert_eq!(
        TargetError::UnsupportedNetwork { network: 42 }.to_string(),
        "unsupported network: bip155 network id 42"
    );
}

#[test]
fn socket_addresses() {
    let v4 = parse("203.0.113.7:8333").unwrap();
    assert_eq!(v4, Target::Socket(SocketAddr::from((Ipv4Addr::new(203, 0, 113, 7), 8333))));
    assert_eq!(v4.to_string(), "203.0.113.7:8333");
    assert_eq!(v4.host(), "203.0.113.7");
    let v6 = parse("[2001:db8::1]:18444").unwrap();
    assert_eq!(v6.socket_addr(), Some("[2001:db8::1]:18444".parse().unwrap()));
    assert_eq!(v6.to_string(), "[2001:db8::1]:18444");
    assert_eq!(v6.host(), "2001:db8::1");
    let scoped = parse("[fe80::1%3]:8333").unwrap();
    assert_eq!(scoped, Target::Socket(SocketAddrV6::new("fe80::1".parse().unwrap(), 8333, 0, 3).into()));
    assert_eq!(parse(&scoped.to_string()).unwrap(), scoped);
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    assert_eq!(Target::from(addr), Target::Socket(addr));
    assert_eq!(Target::from((IpAddr::from(Ipv6Addr::LOCALHOST), 2)), Target::Socket("[::1]:2".parse().unwrap()));
}

#[test]
fn domains() {
    let t = parse("Seed.Example-1.org:8333").unwrap();
    assert_eq!(t, Target::Domain { name: Hostname::new("seed.example-1.org").unwrap(), port: 8333 });
    assert_eq!(t.to_string(), "seed.example-1.org:8333");
    assert_eq!(t.host(), "seed.example-1.org");
    assert_eq!(parse("localhost:18444").unwrap().to_string(), "localhost:18444");
    // Digits are fine everywhere but the whole last label.
    assert!(parse("1.2.3.4a:1").is_ok());
    assert!(parse("123.example:1").is_ok());
    let longest = [&"a".repeat(63)[..], &"b".repeat(63), &"c".repeat(63), &"d".repeat(61)].join(".");
    assert_eq!(longest.len(), 253);
    assert!(parse(&format!("{longest}:1")).is_ok());
}

#[test]
fn bad_texts_have_typed_errors() {
    let long_label = format!("{}.com:1", "a".repeat(64));
    let long_name = format!("{}.com:1", ["a"; 126].join("."));
    let cases: &[(&str, TargetError)] = &[
        ("", TargetError::MissingPort),
        ("localhost", TargetError::MissingPort),
        ("1.2.3.4", TargetError::MissingPort),
        ("1.2.3.4:", TargetError::InvalidPort),
        ("1.2.3.4:65536", TargetError::InvalidPort),
        ("1.2.3.4:+80", TargetError::InvalidPort),
        ("1.2.3.4:-1", TargetError::InvalidPort),
        ("1.2.3.4:123456", TargetError::InvalidPort),
        ("example.com:80x", TargetError::InvalidPort),
        ("[::1]", TargetError::MissingPort),
        ("[::1]:", TargetError::InvalidPort),
        ("[::1", TargetError::InvalidIpv6),
        ("[::1]x:80", TargetError::InvalidIpv6),
        ("[1.2.3.4]:80", TargetError::InvalidIpv6),
        ("[example.com]:80", TargetError::InvalidIpv6),
        ("::1", TargetError::UnbracketedIpv6),
        ("2001:db8::1:8333", TargetError::UnbracketedIpv6),
        ("fe80::1:2:3:4:5:6:8333", TargetError::UnbracketedIpv6),
        (":80", TargetError::EmptyHost),
        ("a..b:80", TargetError::EmptyLabel),
        ("example.com.:80", TargetError::EmptyLabel),
        (".example.com:80", TargetError::EmptyLabel),
        (&long_label, TargetError::LabelTooLong { len: 64 }),
        (&long_name, TargetError::HostnameTooLong { len: 255 }),
        ("exa_mple.com:80", TargetError::InvalidCharacter { ch: '_' }),
        ("exa mple.com:80", TargetError::InvalidCharacter { ch: ' ' }),
        ("a:b:80", TargetError::InvalidCharacter { ch: ':' }),
        ("bücher.de:80", TargetError::InvalidCharacter { ch: 'ü' }),
        ("-example.com:80", TargetError::HyphenAtLabelEdge),
        ("example-.com:80", TargetError::HyphenAtLabelEdge),
        ("1.2.3.256:80", TargetError::NumericTld),
        ("01.2.3.4:80", TargetError::NumericTld),
        ("8333:80", TargetError::NumericTld),
    ];
    for (text, error) in cases {
        assert_eq!(parse(text).as_ref(), Err(error), "{text:?}");
    }
}

#[test]
fn helpers() {
    let socket = parse("127.0.0.1:8333").unwrap();
    let domain = parse("localhost:8333").unwrap();
    let onion = parse(&format!("{TOR_NAME}:8333")).unwrap();
    assert!(!socket.is_onion() && !domain.is_onion() && onion.is_onion());
    assert!(!socket.needs_proxy_resolution());
    assert!(domain.needs_proxy_resolution() && onion.needs_proxy_resolution());
    assert_eq!(socket.socket_addr(), Some("127.0.0.1:8333".parse().unwrap()));
    assert_eq!(domain.socket_addr(), None);
    assert_eq!(onion.socket_addr(), None);
    assert_eq!([socket.port(), domain.port(), onion.port()], [8333; 3]);
    assert_eq!(Target::onion(key(TOR_KEY), 8333), onion);
}

#[test]
fn error_texts_are_lower_case() {
    let errors = [
        TargetError::MissingPort,
        TargetError::InvalidPort,
        TargetError::InvalidIpv6,
        TargetError::UnbracketedIpv6,
        TargetError::EmptyHost,
        TargetError::HostnameTooLong { len: 300 },
        TargetError::EmptyLabel,
        TargetError::LabelTooLong { len: 64 },
        TargetError::InvalidCharacter { ch: '_' },
        TargetError::HyphenAtLabelEdge,
        TargetError::NumericTld,
        TargetError::OnionNotHostname,
        TargetError::OnionV2,
        TargetError::OnionLength { len: 3 },
        TargetError::OnionSubdomain,
        TargetError::OnionBase32,
        TargetError::OnionVersion { version: 4 },
        TargetError::OnionChecksum,
        TargetError::UnsupportedNetwork { network: 5 },
    ];
    for error in errors {
        let text = error.to_string();
        assert!(text.starts_with(|c: char| c.is_ascii_lowercase()), "{text}");
        assert!(std::error::Error::source(&error).is_none());
    }
    assert_eq!(TargetError::OnionChecksum.to_string(), "onion address checksum mismatch");
    assert_eq!(TargetError::OnionVersion { version: 4 }.to_string(), "onion address version 4 (only version 3 exists)");
}

fn any_target() -> impl Strategy<Value = Target> {
    let v4 = (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| Target::Socket(SocketAddr::from((ip, port))));
    // Display drops the flow info, so it is 0 here (as parsing makes it).
    let v6 = (any::<[u8; 16]>(), any::<u16>(), any::<u32>())
        .prop_map(|(ip, port, scope)| Target::Socket(SocketAddrV6::new(ip.into(), port, 0, scope).into()));
    let domain = (
        "[a-zA-Z0-9]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?(\\.[a-zA-Z0-9]{1,10}){0,4}\\.[a-zA-Z][a-zA-Z0-9]{0,6}",
        any::<u16>(),
    )
        .prop_filter_map("onion is not a domain", |(name, port)| {
            Hostname::new(&name).ok().map(|name| Target::Domain { name, port })
        });
    let onion = (any::<[u8; 32]>(), any::<u16>()).prop_map(|(pubkey, port)| Target::Onion { pubkey, port });
    prop_oneof![v4, v6, domain, onion]
}

proptest! {
    #[test]
    fn display_round_trips(target in any_target()) {
        prop_assert_eq!(parse(&target.to_string()), Ok(target));
    }

    #[test]
    fn any_string_parses_or_errs_without_panicking(s in "\\PC{0,300}") {
        if let Ok(target) = parse(&s) {
            prop_assert_eq!(parse(&target.to_string()), Ok(target));
        }
    }

    /// Texts close to the grammar reach the deeper checks.
    #[test]
    fn near_misses_never_panic(s in "[\\[\\]a-zA-Z0-9.:%_é-]{0,80}") {
        if let Ok(target) = parse(&s) {
            prop_assert_eq!(parse(&target.to_string()), Ok(target));
        }
    }

    /// Onion-shaped texts: 56 characters that are mostly base32.
    #[test]
    fn onion_shaped_texts_never_panic(label in "[a-z2-7A-Z0-9é]{50,60}", port in "[0-9]{1,6}") {
        match parse(&format!("{label}.onion:{port}")) {
            Ok(target) => {
                prop_assert!(target.is_onion());
                prop_assert_eq!(parse(&target.to_string()), Ok(target));
            }
            Err(error) => prop_assert!(!error.to_string().is_empty()),
        }
    }

    #[test]
    fn every_key_has_a_name_that_parses_back(pubkey in any::<[u8; 32]>()) {
        let name = onion_name(&pubkey);
        prop_assert_eq!(name.len(), 62);
        prop_assert_eq!(parse(&format!("{name}:1")), Ok(Target::Onion { pubkey, port: 1 }));
    }
}
