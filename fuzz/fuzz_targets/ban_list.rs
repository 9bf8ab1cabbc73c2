//! Fuzzes `BanList::from_bytes`, the loader of a saved ban list.
//!
//! Input layout: `mode`, then the body.
//! - `mode` bit 0 clear: the body is decoded as it is.
//! - `mode` bit 0 set: the body's checksum (the first 4 bytes of its
//!   SHA256d) is appended first, so that the fuzzer gets past the checksum
//!   and into the entries.
//!
//! Checks: no panic; an accepted input is canonical (`to_bytes` gives the
//! same bytes back); the accepted list is consistent: listed in strictly
//! ascending subnet order, every ban covering its own network address until
//! its `until` and not after, and a sweep at the end of time removing all.

#![no_main]

use bitcoin::hashes::{Hash, sha256d};
use libfuzzer_sys::fuzz_target;
use peerlink::ban::BanList;
use peerlink::error::Report;

fn run(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else { return };
    let mut input = body.to_vec();
    if mode & 0x01 != 0 {
        let hash = sha256d::Hash::hash(body);
        input.extend_from_slice(&hash.as_byte_array()[..4]);
    }
    let list = match BanList::from_bytes(&input) {
        Ok(list) => list,
        Err(e) => {
            assert!(!Report(&e).to_string().is_empty());
            return;
        }
    };
    assert_eq!(list.to_bytes(), input, "accepted a non-canonical encoding");
    assert_eq!(BanList::from_bytes(&input).as_ref(), Ok(&list), "decoding is deterministic");

    // `until` is exclusive, so at 0 every ban with a later `until` is live.
    let live = list.list(0);
    assert!(live.len() <= list.len());
    assert!(live.windows(2).all(|w| w[0].subnet < w[1].subnet), "list is not in strict subnet order");
    for ban in &live {
        let addr = ban.subnet.addr();
        assert!(ban.subnet.contains(&addr));
        assert!(list.is_banned(&addr, ban.until - 1), "{} not banned before {}", ban.subnet, ban.until);
        assert_eq!(ban.subnet.to_string().parse(), Ok(ban.subnet), "text does not round trip");
    }
    let mut swept = list.clone();
    assert_eq!(swept.sweep(u64::MAX), list.len(), "until <= u64::MAX: everything expires");
    assert!(swept.is_empty());
    for ban in &live {
        assert!(!swept.is_banned(&ban.subnet.addr(), 0));
    }
}

fuzz_target!(|data: &[u8]| run(data));
