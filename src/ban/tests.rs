//! Byte-vector tests for the format and each way an encoding is refused,
//! table tests for subnet parsing and `contains`, and property tests: round
//! trips, damaged encodings, and the list against a naive model.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::error::Report;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(s.len().is_multiple_of(2), "odd hex: {s}");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit")).collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("valid ip address")
}

fn net(s: &str) -> Subnet {
    s.parse().expect("valid subnet")
}

/// `body` with its checksum appended: for encodings that must get past the
/// checksum to reach a later check.
fn sealed(body: &[u8]) -> Vec<u8> {
    let mut out = body.to_vec();
    out.extend_from_slice(&checksum(body));
    out
}

/// Magic, version 1, and `count`.
fn header(count: u32) -> Vec<u8> {
    let mut out = b"PLBANS\x01".to_vec();
    out.extend_from_slice(&count.to_le_bytes());
    out
}

const DAY: u64 = 24 * 60 * 60;
const T0: u64 = 1_700_000_000;

// ---- byte vectors ----

/// 192.0.2.0/24 for a day and 2001:db8::/32 for a year, both made at T0.
fn two_bans() -> BanList {
    let mut bans = BanList::new();
    // Inserted in reverse order: the encoding is sorted regardless.
    bans.ban(net("2001:db8::/32"), T0, T0 + 365 * DAY).expect("room");
    bans.ban(net("192.0.2.0/24"), T0, T0 + DAY).expect("room");
    bans
}

const TWO_BANS_HEX: &str = "
    504c42414e53 01 02000000
    04 c0000200 18 00f1536500000000 8042556500000000
    06 20010db8000000000000000000000000 20 00f1536500000000 8024356700000000
    904307a2";

#[test]
fn two_bans_encode_to_known_bytes() {
    let bytes = two_bans().to_bytes();
    assert_eq!(bytes, hex(TWO_BANS_HEX));
    assert_eq!(bytes.len(), HEADER_LEN + ENTRY_V4_LEN + ENTRY_V6_LEN + CHECKSUM_LEN);
}

#[test]
fn two_bans_decode_from_known_bytes() {
    let bans = BanList::from_bytes(&hex(TWO_BANS_HEX)).expect("valid encoding");
    assert_eq!(bans, two_bans());
    assert_eq!(
        bans.list(T0),
        vec![
            Ban { subnet: net("192.0.2.0/24"), until: T0 + DAY, created: T0 },
            Ban { subnet: net("2001:db8::/32"), until: T0 + 365 * DAY, created: T0 },
        ]
    );
}

#[test]
fn empty_list_encodes_to_header_and_checksum() {
    let bytes = BanList::new().to_bytes();
    assert_eq!(bytes, hex("504c42414e53 01 00000000 92942714"));
    assert!(BanList::from_bytes(&bytes).expect("valid encoding").is_empty());
}

#[test]
fn expired_bans_are_written_and_read_back() {
    let mut bans = BanList::new();
    bans.ban(net("10.0.0.0/8"), 5, 10).expect("room");
    let loaded = BanList::from_bytes(&bans.to_bytes()).expect("valid encoding");
    assert_eq!(loaded.len(), 1);
    assert!(loaded.list(10).is_empty(), "expired at 10");
    assert_eq!(loaded.list(9).len(), 1);
}

// ---- refused encodings, one per check ----

#[test]
fn refuses_short_input_as_truncated() {
    for len in 0..HEADER_LEN + CHECKSUM_LEN {
        let bytes = &BanList::new().to_bytes()[..len];
        assert_eq!(BanList::from_bytes(bytes), Err(BanListError::Truncated), "length {len}");
    }
}

#[test]
fn refuses_bad_magic() {
    let mut bytes = BanList::new().to_bytes();
    bytes[0] = b'X';
    assert_eq!(BanList::from_bytes(&bytes), Err(BanListError::BadMagic));
    assert_eq!(BanList::from_bytes(b"banlist.json"), Err(BanListError::BadMagic));
}

#[test]
fn refuses_unknown_version_before_reading_further() {
    // Version 2 could have any layout: nothing after the version byte is read.
    assert_eq!(BanList::from_bytes(b"PLBANS\x02"), Err(BanListError::UnsupportedVersion(2)));
    assert_eq!(BanList::from_bytes(b"PLBANS\x00garbage"), Err(BanListError::UnsupportedVersion(0)));
}

#[test]
fn refuses_count_above_max_bans() {
    let bytes = sealed(&header(MAX_BANS as u32 + 1));
    assert_eq!(BanList::from_bytes(&bytes), Err(BanListError::TooMany { count: 65_537 }));
    let bytes = sealed(&header(u32::MAX));
    assert_eq!(BanList::from_bytes(&bytes), Err(BanListError::TooMany { count: u32::MAX }));
}

#[test]
fn refuses_count_beyond_the_input_before_allocating() {
    // 65,536 entries claimed, none present: refused from the length alone.
    let bytes = sealed(&header(MAX_BANS as u32));
    assert_eq!(BanList::from_bytes(&bytes), Err(BanListError::Truncated));
    // One entry claimed and an IPv4 entry's length left, but the entry is IPv6.
    let mut body = header(1);
    body.push(FAMILY_V6);
    body.extend_from_slice(&[0; ENTRY_V4_LEN - 1]);
    assert_eq!(BanList::from_bytes(&sealed(&body)), Err(BanListError::Truncated));
    body.truncate(body.len() - 1);
    body[HEADER_LEN] = FAMILY_V4;
    assert_eq!(BanList::from_bytes(&sealed(&body)), Err(BanListError::Truncated), "one byte short");
}

#[test]
fn refuses_unknown_family() {
    let mut body = header(1);
    body.extend_from_slice(&hex("05 c0000200 18 00f1536500000000 8042556500000000"));
    let err = BanList::from_bytes(&sealed(&body)).expect_err("family 5");
    assert_eq!(err, BanListError::BadEntry { index: 0, reason: EntryError::Family(5) });
    assert_eq!(Report(&err).to_string(), "invalid ban list entry 0: unknown address family 5 (expected 4 or 6)");
}

#[test]
fn refuses_trailing_bytes() {
    let mut bytes = hex(TWO_BANS_HEX);
    bytes.push(0);
    assert_eq!(BanList::from_bytes(&bytes), Err(BanListError::TrailingBytes { len: 1 }));
    // An entry more than the count says is trailing too.
    let mut body = header(0);
    body.extend_from_slice(&hex("04 c0000200 18 00f1536500000000 8042556500000000"));
    assert_eq!(BanList::from_bytes(&sealed(&body)), Err(BanListError::TrailingBytes { len: ENTRY_V4_LEN }));
}

#[test]
fn refuses_bad_checksum() {
    let mut bytes = hex(TWO_BANS_HEX);
    *bytes.last_mut().expect("not empty") ^= 1;
    assert_eq!(BanList::from_bytes(&bytes), Err(BanListError::BadChecksum));
    // A damaged `until`: the structure is fine, the checksum is not.
    let mut bytes = hex(TWO_BANS_HEX);
    bytes[HEADER_LEN + ENTRY_V4_LEN - 1] ^= 0x80;
    assert_eq!(BanList::from_bytes(&bytes), Err(BanListError::BadChecksum));
}

/// An encoding of `entries` (hex, one per string) with a valid checksum.
fn with_entries(entries: &[&str]) -> Vec<u8> {
    let mut body = header(entries.len() as u32);
    for entry in entries {
        body.extend_from_slice(&hex(entry));
    }
    sealed(&body)
}

const TIMES: &str = "0100000000000000 0200000000000000";

#[test]
fn refuses_non_canonical_entries() {
    let v4 = |addr_prefix: &str| format!("04 {addr_prefix} {TIMES}");
    let v6 = |addr_prefix: &str| format!("06 {addr_prefix} {TIMES}");
    let cases: Vec<(Vec<String>, u32, EntryError)> = vec![
        (vec![v4("c0000200 21")], 0, EntryError::Prefix { prefix: 33, max: 32 }),
        (vec![v4("c0000200 ff")], 0, EntryError::Prefix { prefix: 255, max: 32 }),
        (vec![v6("20010db8000000000000000000000000 81")], 0, EntryError::Prefix { prefix: 129, max: 128 }),
        (vec![v4("c0000201 18")], 0, EntryError::HostBits),
        (vec![v4("00000001 00")], 0, EntryError::HostBits),
        (vec![v6("20010db8000000000000000000000001 7f")], 0, EntryError::HostBits),
        (vec![v6("00000000000000000000ffffc0000200 78")], 0, EntryError::Mapped),
        (vec![v4("c0000200 18"), v4("c0000200 18")], 1, EntryError::Duplicate),
        (vec![v4("c0000300 18"), v4("c0000200 18")], 1, EntryError::OutOfOrder),
        // Same address, longer prefix first.
        (vec![v4("c0000200 19"), v4("c0000200 18")], 1, EntryError::OutOfOrder),
        // IPv6 before IPv4.
        (vec![v6("20010db8000000000000000000000000 20"), v4("c0000200 18")], 1, EntryError::OutOfOrder),
    ];
    for (entries, index, reason) in cases {
        let entries: Vec<&str> = entries.iter().map(String::as_str).collect();
        assert_eq!(
            BanList::from_bytes(&with_entries(&entries)),
            Err(BanListError::BadEntry { index, reason }),
            "{entries:?}"
        );
    }
}

#[test]
fn accepts_the_same_entries_in_canonical_form() {
    let entries = [
        format!("04 00000000 00 {TIMES}"),
        format!("04 c0000200 18 {TIMES}"),
        format!("04 c0000200 19 {TIMES}"),
        format!("04 c0000201 20 {TIMES}"),
        format!("06 20010db8000000000000000000000000 20 {TIMES}"),
        format!("06 20010db8000000000000000000000001 80 {TIMES}"),
    ];
    let entries: Vec<&str> = entries.iter().map(String::as_str).collect();
    let bytes = with_entries(&entries);
    let bans = BanList::from_bytes(&bytes).expect("canonical");
    assert_eq!(bans.len(), 6);
    assert_eq!(bans.to_bytes(), bytes);
    let shown: Vec<String> = bans.list(1).iter().map(|ban| ban.subnet.to_string()).collect();
    assert_eq!(
        shown,
        ["0.0.0.0/0", "192.0.2.0/24", "192.0.2.0/25", "192.0.2.1/32", "2001:db8::/32", "2001:db8::1/128"]
    );
}

#[test]
fn error_messages() {
    assert_eq!(BanListError::Truncated.to_string(), "ban list is truncated");
    assert_eq!(BanListError::BadMagic.to_string(), "not a ban list (bad magic)");
    assert_eq!(BanListError::UnsupportedVersion(7).to_string(), "unsupported ban list version 7 (expected 1)");
    assert_eq!(BanListError::TooMany { count: 70_000 }.to_string(), "ban list has 70000 entries (at most 65536)");
    assert_eq!(BanListError::TrailingBytes { len: 3 }.to_string(), "3 bytes after the ban list's checksum");
    assert_eq!(BanListError::BadChecksum.to_string(), "ban list checksum mismatch");
    let err = BanListError::BadEntry { index: 4, reason: EntryError::HostBits };
    assert_eq!(err.to_string(), "invalid ban list entry 4");
    assert_eq!(Report(&err).to_string(), "invalid ban list entry 4: address has bits set below its prefix length");
    assert!(std::error::Error::source(&BanListError::BadChecksum).is_none());
    assert_eq!(BanError::Full.to_string(), "ban list is full (65536 bans)");
    assert_eq!(SubnetError::PrefixTooLong { prefix: 33, max: 32 }.to_string(), "prefix length 33 is above 32 for ipv4");
    assert_eq!(
        SubnetError::PrefixTooLong { prefix: 129, max: 128 }.to_string(),
        "prefix length 129 is above 128 for ipv6"
    );
    assert_eq!(
        SubnetError::MappedPrefix { prefix: 24 }.to_string(),
        "prefix length 24 is below 96 for an ipv4-mapped address"
    );
}

// ---- Subnet ----

#[test]
fn parses_good_subnets() {
    let cases = [
        ("1.2.3.4", "1.2.3.4/32"),
        ("1.2.3.0/24", "1.2.3.0/24"),
        ("1.2.3.4/24", "1.2.3.0/24"),
        ("1.2.3.4/0", "0.0.0.0/0"),
        ("1.2.3.4/32", "1.2.3.4/32"),
        ("1.2.3.4/024", "1.2.3.0/24"),
        ("255.255.255.255/31", "255.255.255.254/31"),
        ("2001:db8::/32", "2001:db8::/32"),
        ("2001:db8:ffff::1/32", "2001:db8::/32"),
        ("::1", "::1/128"),
        ("::/0", "::/0"),
        ("ffff::/1", "8000::/1"),
        // IPv4-mapped: IPv4, with the prefix counted past the 96 mapped bits.
        ("::ffff:1.2.3.4", "1.2.3.4/32"),
        ("::ffff:1.2.3.4/128", "1.2.3.4/32"),
        ("::ffff:1.2.3.4/120", "1.2.3.0/24"),
        ("::ffff:1.2.3.4/96", "0.0.0.0/0"),
        // IPv4-compatible (deprecated) addresses are not IPv4.
        ("::1.2.3.4", "::102:304/128"),
        // Netmasks.
        ("1.2.3.0/255.255.255.0", "1.2.3.0/24"),
        ("1.2.3.4/255.255.255.255", "1.2.3.4/32"),
        ("1.2.3.4/0.0.0.0", "0.0.0.0/0"),
        ("1.2.3.4/255.255.128.0", "1.2.0.0/17"),
        ("2001:db8::/ffff:ffff::", "2001:db8::/32"),
        ("2001:db8::1/ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db8::1/128"),
        ("::ffff:1.2.3.4/ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00", "1.2.3.0/24"),
    ];
    for (text, shown) in cases {
        let subnet: Subnet = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(subnet.to_string(), shown, "{text}");
        assert_eq!(shown.parse::<Subnet>(), Ok(subnet), "{shown} parses back");
    }
}

#[test]
fn refuses_bad_subnets() {
    use SubnetError::*;
    let cases = [
        ("", InvalidAddress),
        ("/24", InvalidAddress),
        ("1.2.3", InvalidAddress),
        ("1.2.3.256/24", InvalidAddress),
        ("example.com/24", InvalidAddress),
        (" 1.2.3.4", InvalidAddress),
        ("[::1]/128", InvalidAddress),
        ("fe80::1%eth0/64", InvalidAddress),
        ("1.2.3.4/", InvalidPrefix),
        ("1.2.3.4/+24", InvalidPrefix),
        ("1.2.3.4/-1", InvalidPrefix),
        ("1.2.3.4/24 ", InvalidPrefix),
        ("1.2.3.4/256", InvalidPrefix),
        ("1.2.3.4/24/8", InvalidPrefix),
        ("1.2.3.4/0x18", InvalidPrefix),
        ("1.2.3.4/33", PrefixTooLong { prefix: 33, max: 32 }),
        ("1.2.3.4/255", PrefixTooLong { prefix: 255, max: 32 }),
        ("::1/129", PrefixTooLong { prefix: 129, max: 128 }),
        ("::ffff:1.2.3.4/129", PrefixTooLong { prefix: 129, max: 128 }),
        ("::ffff:1.2.3.4/24", MappedPrefix { prefix: 24 }),
        ("::ffff:1.2.3.4/95", MappedPrefix { prefix: 95 }),
        ("1.2.3.0/255.0.255.0", NetmaskNotContiguous),
        ("1.2.3.0/0.0.0.255", NetmaskNotContiguous),
        ("2001:db8::/ffff:0:ffff::", NetmaskNotContiguous),
        ("1.2.3.0/ffff:ffff::", NetmaskFamily),
        ("2001:db8::/255.255.0.0", NetmaskFamily),
        ("1.2.3.0/::ffff:255.255.255.0", NetmaskFamily),
        // As a 128-bit mask, ::ffff:255.255.255.0 has zeros before ones.
        ("::ffff:1.2.3.0/::ffff:255.255.255.0", NetmaskNotContiguous),
    ];
    for (text, expected) in cases {
        assert_eq!(text.parse::<Subnet>(), Err(expected), "{text:?}");
    }
}

#[test]
fn new_checks_prefix_and_clears_host_bits() {
    assert_eq!(Subnet::new(ip("10.1.2.3"), 8), Ok(net("10.0.0.0/8")));
    assert_eq!(Subnet::new(ip("10.1.2.3"), 33), Err(SubnetError::PrefixTooLong { prefix: 33, max: 32 }));
    assert_eq!(Subnet::new(ip("::1"), 129), Err(SubnetError::PrefixTooLong { prefix: 129, max: 128 }));
    assert_eq!(Subnet::new(ip("::ffff:10.1.2.3"), 104), Ok(net("10.0.0.0/8")));
    assert_eq!(Subnet::new(ip("::ffff:10.1.2.3"), 0), Err(SubnetError::MappedPrefix { prefix: 0 }));
    let subnet = Subnet::new(ip("2001:db8::ff"), 120).expect("valid");
    assert_eq!(subnet.addr(), ip("2001:db8::"));
    assert_eq!(subnet.prefix(), 120);
}

#[test]
fn host_is_full_length_and_normalises_mapped() {
    assert_eq!(Subnet::host(ip("1.2.3.4")), net("1.2.3.4/32"));
    assert_eq!(Subnet::host(ip("::ffff:1.2.3.4")), net("1.2.3.4/32"));
    assert_eq!(Subnet::host(ip("::ffff:1.2.3.4")).addr(), ip("1.2.3.4"));
    assert_eq!(Subnet::from(ip("2001:db8::1")), net("2001:db8::1/128"));
    assert_eq!(Subnet::from(ip("2001:db8::1")).prefix(), 128);
}

#[test]
fn contains_edge_cases() {
    let cases = [
        // /0 holds its whole family, and only that.
        ("0.0.0.0/0", "255.255.255.255", true),
        ("0.0.0.0/0", "0.0.0.0", true),
        ("0.0.0.0/0", "::ffff:8.8.8.8", true),
        ("0.0.0.0/0", "::1", false),
        ("0.0.0.0/0", "::", false),
        ("::/0", "2001:db8::1", true),
        ("::/0", "::", true),
        ("::/0", "1.2.3.4", false),
        ("::/0", "::ffff:1.2.3.4", false),
        // /32 and /128: one address.
        ("1.2.3.4/32", "1.2.3.4", true),
        ("1.2.3.4/32", "1.2.3.5", false),
        ("1.2.3.4/32", "::ffff:1.2.3.4", true),
        ("1.2.3.4/32", "::1.2.3.4", false),
        ("2001:db8::1/128", "2001:db8::1", true),
        ("2001:db8::1/128", "2001:db8::", false),
        // Boundaries of a /24 and a /31.
        ("1.2.3.0/24", "1.2.3.0", true),
        ("1.2.3.0/24", "1.2.3.255", true),
        ("1.2.3.0/24", "1.2.2.255", false),
        ("1.2.3.0/24", "1.2.4.0", false),
        ("1.2.3.6/31", "1.2.3.7", true),
        ("1.2.3.6/31", "1.2.3.8", false),
        // An IPv6 subnet over the mapped range still holds no IPv4 address.
        ("::ffff:0:0/96", "1.2.3.4", true),
        ("::/8", "::ffff:1.2.3.4", false),
        ("2001:db8::/32", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", true),
        ("2001:db8::/32", "2001:db9::", false),
    ];
    for (subnet, addr, expected) in cases {
        assert_eq!(net(subnet).contains(&ip(addr)), expected, "{subnet} contains {addr}");
    }
}

#[test]
fn order_is_ipv4_first_then_address_then_prefix() {
    let mut subnets = [
        net("2001:db8::/32"),
        net("::/0"),
        net("10.0.0.0/16"),
        net("10.0.0.0/8"),
        net("9.255.255.255/32"),
        net("0.0.0.0/0"),
        net("255.0.0.0/8"),
    ];
    subnets.sort();
    let shown: Vec<String> = subnets.iter().map(Subnet::to_string).collect();
    assert_eq!(
        shown,
        ["0.0.0.0/0", "9.255.255.255/32", "10.0.0.0/8", "10.0.0.0/16", "255.0.0.0/8", "::/0", "2001:db8::/32"]
    );
}

// ---- BanList ----

#[test]
fn ban_covers_until_exclusive() {
    let mut bans = BanList::new();
    bans.ban(net("192.0.2.0/24"), T0, T0 + 10).expect("room");
    assert!(bans.is_banned(&ip("192.0.2.1"), T0));
    assert!(bans.is_banned(&ip("192.0.2.1"), T0 + 9));
    assert!(!bans.is_banned(&ip("192.0.2.1"), T0 + 10));
    // `created` does not start the ban: it only records when it was made.
    assert!(bans.is_banned(&ip("192.0.2.1"), 0));
    assert!(!bans.is_banned(&ip("192.0.3.1"), T0));
    assert!(!bans.is_banned(&ip("2001:db8::1"), T0));
    assert!(bans.is_banned(&ip("::ffff:192.0.2.1"), T0));
}

#[test]
fn later_until_wins_whole() {
    let mut bans = BanList::new();
    let subnet = net("192.0.2.0/24");
    bans.ban(subnet, 100, 200).expect("room");
    bans.ban(subnet, 150, 180).expect("existing subnet");
    assert_eq!(bans.list(0), [Ban { subnet, until: 200, created: 100 }], "a shorter ban does not shorten");
    bans.ban(subnet, 160, 200).expect("existing subnet");
    assert_eq!(bans.list(0), [Ban { subnet, until: 200, created: 100 }], "a tie keeps the existing ban");
    bans.ban(subnet, 170, 300).expect("existing subnet");
    assert_eq!(bans.list(0), [Ban { subnet, until: 300, created: 170 }], "a longer ban replaces");
    assert_eq!(bans.len(), 1);
}

#[test]
fn unban_removes_exactly_that_subnet() {
    let mut bans = BanList::new();
    bans.ban(net("10.0.0.0/8"), 0, 100).expect("room");
    bans.ban(net("10.1.0.0/16"), 0, 100).expect("room");
    assert!(!bans.unban(&net("10.2.0.0/16")), "not banned itself, though inside a ban");
    assert!(bans.unban(&net("10.0.0.0/8")));
    assert!(!bans.unban(&net("10.0.0.0/8")), "already removed");
    assert!(!bans.is_banned(&ip("10.2.0.1"), 0));
    assert!(bans.is_banned(&ip("10.1.0.1"), 0));
    assert_eq!(bans.v4.in_use, [16], "the /8 is no longer looked up");
    assert!(bans.unban(&net("10.1.0.0/16")));
    assert!(bans.is_empty());
    assert!(bans.v4.in_use.is_empty());
    assert_eq!(bans, BanList::new());
}

#[test]
fn sweep_removes_expired_and_counts_them() {
    let mut bans = BanList::new();
    bans.ban(net("10.0.0.0/8"), 0, 10).expect("room");
    bans.ban(net("10.0.0.0/16"), 0, 20).expect("room");
    bans.ban(net("2001:db8::/32"), 0, 10).expect("room");
    bans.ban(net("2001:db8::1/128"), 0, 30).expect("room");
    assert_eq!(bans.sweep(9), 0);
    assert_eq!(bans.len(), 4);
    assert_eq!(bans.list(10).len(), 2, "expired but not swept: not listed");
    assert_eq!(bans.len(), 4, "expired but not swept: counted");
    assert_eq!(bans.sweep(10), 2, "until <= now");
    assert_eq!(bans.len(), 2);
    assert_eq!((bans.v4.in_use.as_slice(), bans.v6.in_use.as_slice()), (&[16][..], &[128][..]));
    assert_eq!(bans.sweep(u64::MAX), 2);
    assert!(bans.is_empty());
    assert_eq!(bans, BanList::new());
}

#[test]
fn list_is_live_and_sorted() {
    let mut bans = BanList::new();
    for (subnet, until) in [("2001:db8::/32", 50), ("10.0.0.0/8", 50), ("1.0.0.0/8", 5), ("10.0.0.0/16", 50)] {
        bans.ban(net(subnet), 0, until).expect("room");
    }
    let shown: Vec<String> = bans.list(5).iter().map(|ban| ban.subnet.to_string()).collect();
    assert_eq!(shown, ["10.0.0.0/8", "10.0.0.0/16", "2001:db8::/32"]);
    assert_eq!(bans.list(4).len(), 4);
    assert_eq!(
        format!("{bans:?}").matches("Ban {").count(),
        4,
        "Debug shows every ban, expired ones included: {bans:?}"
    );
}

#[test]
fn full_list_refuses_new_subnets_only() {
    let mut bans = BanList::new();
    for i in 0..MAX_BANS as u32 {
        bans.ban(Subnet::host(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | i))), 0, 100).expect("room");
    }
    assert_eq!(bans.len(), MAX_BANS);
    let new = net("192.0.2.0/24");
    assert_eq!(bans.ban(new, 0, 100), Err(BanError::Full));
    assert!(bans.list(0).iter().all(|ban| ban.subnet != new), "nothing changed");
    // An existing subnet can still be extended.
    let first = net("10.0.0.0/32");
    assert_eq!(bans.ban(first, 1, 200), Ok(()));
    assert!(bans.is_banned(&ip("10.0.0.0"), 150));
    // The largest list round trips.
    let bytes = bans.to_bytes();
    assert_eq!(bytes.len(), HEADER_LEN + MAX_BANS * ENTRY_V4_LEN + CHECKSUM_LEN);
    assert_eq!(BanList::from_bytes(&bytes), Ok(bans.clone()));
    // Sweeping makes room.
    assert_eq!(bans.sweep(100), MAX_BANS - 1);
    assert_eq!(bans.ban(new, 0, 100), Ok(()));
}

#[test]
fn lookups_use_prefix_lengths_in_use_only() {
    let mut bans = BanList::new();
    bans.ban(net("10.0.0.0/8"), 0, 100).expect("room");
    bans.ban(net("11.0.0.0/8"), 0, 100).expect("room");
    bans.ban(net("192.0.2.0/24"), 0, 100).expect("room");
    bans.ban(net("2001:db8::/32"), 0, 100).expect("room");
    assert_eq!(bans.v4.in_use, [8, 24]);
    assert_eq!(bans.v6.in_use, [32]);
    assert_eq!(bans.v4.counts[8], 2);
    assert!(bans.unban(&net("10.0.0.0/8")));
    assert_eq!(bans.v4.in_use, [8, 24], "11.0.0.0/8 still has length 8");
    assert!(bans.is_banned(&ip("11.255.0.1"), 0));
    assert!(!bans.is_banned(&ip("10.255.0.1"), 0));
}

// ---- properties ----

/// Subnets from anywhere, and from a few small ranges so that bans overlap
/// and queries hit them.
fn arb_subnet() -> impl Strategy<Value = Subnet> {
    prop_oneof![
        (any::<u32>(), 0u8..=32).prop_map(|(a, p)| Subnet::new(IpAddr::V4(Ipv4Addr::from(a)), p).expect("in range")),
        (any::<u128>(), 0u8..=128).prop_filter_map("mapped with a short prefix", |(a, p)| Subnet::new(
            IpAddr::V6(Ipv6Addr::from(a)),
            p
        )
        .ok()),
        (0u32..=0xffff, 16u8..=32)
            .prop_map(|(a, p)| Subnet::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | a)), p).expect("in range")),
        (0u128..=0xffff, 112u8..=128).prop_map(|(a, p)| Subnet::new(
            IpAddr::V6(Ipv6Addr::from((0x2001_0db8 << 96) | a)),
            p
        )
        .expect("in range")),
    ]
}

/// Addresses in the same small ranges, as IPv4, IPv4-mapped and IPv6.
fn arb_query() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (0u32..=0xffff).prop_map(|a| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | a))),
        (0u32..=0xffff).prop_map(|a| IpAddr::V6(Ipv4Addr::from(0x0a00_0000 | a).to_ipv6_mapped())),
        (0u128..=0xffff).prop_map(|a| IpAddr::V6(Ipv6Addr::from((0x2001_0db8 << 96) | a))),
        any::<IpAddr>(),
    ]
}

fn arb_list() -> impl Strategy<Value = BanList> {
    prop::collection::vec((arb_subnet(), any::<u64>(), any::<u64>()), 0..12).prop_map(|bans| {
        let mut list = BanList::new();
        for (subnet, created, until) in bans {
            list.ban(subnet, created, until).expect("fewer than MAX_BANS");
        }
        list
    })
}

#[derive(Debug, Clone)]
enum Op {
    Ban(Subnet, u64, u64),
    Unban(Subnet),
    Sweep(u64),
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (arb_subnet(), 0u64..50, 0u64..100).prop_map(|(s, c, u)| Op::Ban(s, c, u)),
        2 => arb_subnet().prop_map(Op::Unban),
        1 => (0u64..100).prop_map(Op::Sweep),
    ]
}

proptest! {
    #[test]
    fn bytes_round_trip(list in arb_list()) {
        let bytes = list.to_bytes();
        let decoded = BanList::from_bytes(&bytes).expect("to_bytes output decodes");
        prop_assert_eq!(&decoded, &list);
        prop_assert_eq!(decoded.to_bytes(), bytes);
    }

    #[test]
    fn any_truncation_is_refused(list in arb_list()) {
        let bytes = list.to_bytes();
        for len in 0..bytes.len() {
            prop_assert!(BanList::from_bytes(&bytes[..len]).is_err(), "accepted {} of {} bytes", len, bytes.len());
        }
    }

    /// Every single-byte change is refused: the structure or the checksum
    /// (4 bytes of SHA256d: a change slips through with probability 2^-32).
    #[test]
    fn any_flipped_byte_is_refused(list in arb_list(), mask in 1u8..=255) {
        let bytes = list.to_bytes();
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= mask;
            prop_assert!(BanList::from_bytes(&damaged).is_err(), "byte {} ^ {:#04x} accepted", i, mask);
        }
    }

    /// Encodings of possibly damaged entries, each with a valid checksum:
    /// accepted exactly when every entry is canonical and the entries are in
    /// strictly ascending order, and then `to_bytes` gives the same bytes.
    #[test]
    fn only_canonical_entries_are_accepted(
        raw in prop::collection::vec((arb_subnet(), 0u8..4, any::<u8>(), any::<u64>(), any::<u64>()), 0..8),
        sort in any::<bool>(),
    ) {
        let mut raw = raw;
        if sort {
            raw.sort_by_key(|entry| entry.0);
        }
        let mut body = header(raw.len() as u32);
        let mut expected: Result<(), BanListError> = Ok(());
        let mut previous: Option<Subnet> = None;
        for (index, &(subnet, damage, extra, created, until)) in raw.iter().enumerate() {
            let index = index as u32;
            let max = if subnet.addr().is_ipv4() { 32 } else { 128 };
            // What the entry says, and what is wrong with it, if anything.
            let (family, mut addr, mut prefix) = match subnet.addr() {
                IpAddr::V4(a) => (FAMILY_V4, a.octets().to_vec(), subnet.prefix()),
                IpAddr::V6(a) => (FAMILY_V6, a.octets().to_vec(), subnet.prefix()),
            };
            let mut family = family;
            let mut written = Ok(subnet);
            match damage {
                // The lowest address bit set: a host bit unless the prefix is full.
                1 => {
                    *addr.last_mut().expect("not empty") |= 1;
                    written = if subnet.prefix() < max {
                        Err(EntryError::HostBits)
                    } else {
                        Ok(Subnet::host(match subnet.addr() {
                            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&addr[..]).expect("4"))),
                            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&addr[..]).expect("16"))),
                        }))
                    };
                }
                // A prefix length past the family's longest.
                2 => {
                    prefix = max + 1 + extra % (255 - max);
                    written = Err(EntryError::Prefix { prefix, max });
                }
                // An IPv4 subnet written as IPv4-mapped IPv6.
                3 => {
                    if let IpAddr::V4(a) = subnet.addr() {
                        family = FAMILY_V6;
                        addr = a.to_ipv6_mapped().octets().to_vec();
                        prefix += 96;
                        written = Err(EntryError::Mapped);
                    }
                }
                _ => {}
            }
            body.push(family);
            body.extend_from_slice(&addr);
            body.push(prefix);
            body.extend_from_slice(&created.to_le_bytes());
            body.extend_from_slice(&until.to_le_bytes());
            if expected.is_ok() {
                let reason = match (written, previous) {
                    (Err(reason), _) => Some(reason),
                    (Ok(this), Some(before)) if this < before => Some(EntryError::OutOfOrder),
                    (Ok(this), Some(before)) if this == before => Some(EntryError::Duplicate),
                    (Ok(this), _) => {
                        previous = Some(this);
                        None
                    }
                };
                if let Some(reason) = reason {
                    expected = Err(BanListError::BadEntry { index, reason });
                }
            }
        }
        let bytes = sealed(&body);
        let decoded = BanList::from_bytes(&bytes);
        prop_assert_eq!(decoded.as_ref().map(|_| ()), expected.as_ref().map(|_| ()));
        if let Ok(list) = decoded {
            prop_assert_eq!(list.len(), raw.len());
            prop_assert_eq!(list.to_bytes(), bytes);
        }
    }

    /// The list against a model: a map from subnet to the ban with the
    /// latest `until`, and a linear scan for `is_banned`.
    #[test]
    fn agrees_with_a_naive_model(
        ops in prop::collection::vec(arb_op(), 0..40),
        queries in prop::collection::vec((arb_query(), 0u64..100), 1..40),
    ) {
        let mut list = BanList::new();
        let mut model: BTreeMap<Subnet, (u64, u64)> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Ban(subnet, created, until) => {
                    list.ban(subnet, created, until).expect("fewer than MAX_BANS");
                    let entry = model.entry(subnet).or_insert((created, until));
                    if entry.1 < until {
                        *entry = (created, until);
                    }
                }
                Op::Unban(subnet) => {
                    prop_assert_eq!(list.unban(&subnet), model.remove(&subnet).is_some());
                }
                Op::Sweep(now) => {
                    let before = model.len();
                    model.retain(|_, &mut (_, until)| now < until);
                    prop_assert_eq!(list.sweep(now), before - model.len());
                }
            }
            prop_assert_eq!(list.len(), model.len());
        }
        for (addr, now) in queries {
            let naive = model.iter().any(|(subnet, &(_, until))| now < until && subnet.contains(&addr));
            prop_assert_eq!(list.is_banned(&addr, now), naive, "{} at {}", addr, now);
            let expected: Vec<Ban> = model
                .iter()
                .filter(|&(_, &(_, until))| now < until)
                .map(|(&subnet, &(created, until))| Ban { subnet, until, created })
                .collect();
            prop_assert_eq!(list.list(now), expected);
        }
        prop_assert_eq!(BanList::from_bytes(&list.to_bytes()), Ok(list));
    }

    #[test]
    fn subnet_text_round_trips(subnet in arb_subnet()) {
        prop_assert_eq!(subnet.to_string().parse::<Subnet>(), Ok(subnet));
        prop_assert!(subnet.contains(&subnet.addr()));
        prop_assert_eq!(Subnet::new(subnet.addr(), subnet.prefix()), Ok(subnet));
    }

    /// `contains` against a bit-by-bit comparison of the first `prefix` bits.
    #[test]
    fn contains_compares_the_leading_bits(subnet in arb_subnet(), addr in arb_query()) {
        let bits = |ip: IpAddr| -> Vec<bool> {
            let octets = match ip.to_canonical() {
                IpAddr::V4(v4) => v4.octets().to_vec(),
                IpAddr::V6(v6) => v6.octets().to_vec(),
            };
            octets.iter().flat_map(|byte| (0..8).rev().map(move |i| (byte >> i) & 1 == 1)).collect()
        };
        let (net_bits, addr_bits) = (bits(subnet.addr()), bits(addr));
        let p = usize::from(subnet.prefix());
        let expected = net_bits.len() == addr_bits.len() && net_bits[..p] == addr_bits[..p];
        prop_assert_eq!(subnet.contains(&addr), expected);
    }

    #[test]
    fn host_and_mapped_host_contain_the_address(addr in arb_query()) {
        let host = Subnet::host(addr);
        prop_assert!(host.contains(&addr));
        prop_assert_eq!(host.prefix(), if addr.to_canonical().is_ipv4() { 32 } else { 128 });
        if let IpAddr::V4(v4) = addr {
            prop_assert_eq!(Subnet::host(IpAddr::V6(v4.to_ipv6_mapped())), host);
        }
    }
}
