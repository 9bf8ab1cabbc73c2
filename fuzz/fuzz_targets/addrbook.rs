//! Fuzzes the address book: its file loader, and operation sequences.
//!
//! Input layout: `mode`, then the body.
//! - `mode % 4 == 0`: the body is imported as it is.
//! - `mode % 4 == 1`: the body's checksum (SHA256d, 32 bytes) is appended
//!   first, so that the fuzzer gets past the checksum and into the entries.
//! - otherwise: the body is a sequence of operations on a fresh book (its
//!   seed the mode byte), each an opcode byte and the bytes it reads: add,
//!   an `addrv2` message, attempt, connected, good, set services, select,
//!   test and resolve collisions, sweep terrible entries, toggle the
//!   unroutable setting, advance time, and a save/load round trip. The
//!   addresses come from a small space (8 /16s of 64 hosts, 4 sources, a
//!   few onion, I2P, CJDNS, loopback and TorV2 addresses) so that slots and
//!   tried slots collide. At most 256 operations an input.
//!
//! Checks: no panic; an accepted file is canonical (`export` gives the same
//! bytes) and consistent (`check`), and loads again to an equal book; every
//! 8 operations and at the end the book is consistent; `select` returns only entries of
//! the book that match the query (and finds one whenever one matches), and
//! a round trip through the file gives an equal book and the same bytes.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bitcoin::hashes::{Hash, sha256d};
use bitcoin::p2p::ServiceFlags;
use bitcoin::p2p::address::{AddrV2, AddrV2Message};
use bitcoin::p2p::message::NetworkMessage;
use libfuzzer_sys::fuzz_target;
use peerlink::discovery::addrbook::{AddrBook, AddrRateLimit, Address, Query, Record, Table};
use peerlink::error::Report;
use peerlink::netgroup::{NetGroup, Network};

const T0: u64 = 1_700_000_000;

fn import(body: &[u8], seal: bool) {
    let mut input = body.to_vec();
    if seal {
        input.extend_from_slice(sha256d::Hash::hash(body).as_byte_array());
    }
    let book = match AddrBook::import(&input, [0; 32]) {
        Ok(book) => book,
        Err(e) => {
            assert!(!Report(&e).to_string().is_empty());
            return;
        }
    };
    if let Err(e) = book.check() {
        panic!("an accepted file gives an inconsistent book: {e}");
    }
    assert_eq!(book.export(), input, "accepted a non-canonical file");
    let again = AddrBook::import(&input, [1; 32]).expect("an accepted file loads again");
    assert_eq!(again, book);
}

/// The operation bytes; zeros past the end.
struct Ops<'a>(&'a [u8]);

impl Ops<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn address(&mut self) -> Address {
        let (kind, host) = (self.byte(), self.byte());
        match kind % 12 {
            0 => Address::new(AddrV2::TorV3([host % 16; 32]), 8333),
            1 => Address::new(AddrV2::I2p([host % 16; 32]), 0),
            2 => Address::new(AddrV2::Cjdns(Ipv6Addr::new(0xfc00, u16::from(host % 16), 0, 0, 0, 0, 0, 1)), 8333),
            3 => Address::new(AddrV2::Ipv4(Ipv4Addr::LOCALHOST), 18000 + u16::from(host % 16)),
            4 => Address::new(AddrV2::TorV2([host; 10]), 1),
            5 => Address::new(AddrV2::Ipv6(Ipv4Addr::new(20 + host % 8, 1, 0, host / 8).to_ipv6_mapped()), 8333),
            k => Address::new(AddrV2::Ipv4(Ipv4Addr::new(20 + k % 8, 1, 0, host % 64)), 8333 + u16::from(host >> 7)),
        }
    }

    fn source(&mut self) -> NetGroup {
        NetGroup::of_ip(IpAddr::V4(Ipv4Addr::new(50 + self.byte() % 4, 1, 1, 1)))
    }

    fn services(&mut self) -> ServiceFlags {
        ServiceFlags::from(u64::from(self.byte() & 0x0f))
    }

    fn query(&mut self) -> Query {
        let b = self.byte();
        let networks = match b % 4 {
            0 => Some(vec![Network::Ipv4]),
            1 => Some(vec![Network::Onion, Network::I2p, Network::Unroutable]),
            _ => None,
        };
        let table = [Table::Any, Table::New, Table::Tried][usize::from(b / 4 % 3)];
        Query { networks, services: ServiceFlags::from(u64::from(b >> 6)), table }
    }
}

fn matches(query: &Query, record: &Record) -> bool {
    record.services.has(query.services)
        && query.networks.as_ref().is_none_or(|n| n.contains(&record.address.network()))
        && match query.table {
            Table::Any => true,
            Table::New => !record.tried,
            Table::Tried => record.tried,
        }
}

fn round_trip(book: &AddrBook) {
    let bytes = book.export();
    let loaded = AddrBook::import(&bytes, [2; 32]).expect("an export loads");
    assert_eq!(&loaded, book, "the loaded book differs");
    assert_eq!(loaded.export(), bytes, "the loaded book exports other bytes");
}

fn operate(seed: u8, body: &[u8]) {
    let mut book = AddrBook::new([seed; 32]);
    let mut limit = AddrRateLimit::new();
    let mut now = T0;
    let mut ops = Ops(body);
    // The check rehashes every entry: it runs
    // every 8 steps and at the end, and the steps are bounded, to keep an
    // input fast.
    for step in 0..256 {
        if ops.0.is_empty() {
            break;
        }
        match ops.byte() % 14 {
            0..=2 => {
                let address = ops.address();
                let seen = now - u64::from(ops.byte()) * 4 * 3600 + 600;
                let known = book.get(&address).is_some();
                let (services, source) = (ops.services(), ops.source());
                let added = book.add(address.clone(), services, seen, &source, now);
                assert!(!(added && known), "a second entry for {address}");
            }
            3 => {
                let n = usize::from(ops.byte() % 16);
                let entries: Vec<AddrV2Message> = (0..n)
                    .map(|_| {
                        let a = ops.address();
                        AddrV2Message { time: now as u32, services: ServiceFlags::NETWORK, addr: a.addr, port: a.port }
                    })
                    .collect();
                if ops.byte() & 1 != 0 {
                    limit.on_getaddr_sent();
                }
                let source = ops.source();
                let outcome = book.add_message(&NetworkMessage::AddrV2(entries), &source, now, &mut limit);
                assert_eq!(outcome.accepted + outcome.rate_limited + outcome.refused, n);
            }
            4 => {
                let (address, count) = (ops.address(), ops.byte() & 1 != 0);
                book.attempt(&address, count, now);
            }
            5 => book.connected(&ops.address(), now),
            6 | 7 => book.good(&ops.address(), now),
            8 => {
                let (address, services) = (ops.address(), ops.services());
                book.set_services(&address, services);
            }
            9 => {
                let query = ops.query();
                match book.select(&query, now) {
                    Some(r) => {
                        assert_eq!(book.get(&r.address), Some(&r), "select returned a record not in the book");
                        assert!(matches(&query, &r), "{r:?} does not match {query:?}");
                    }
                    None => assert!(!book.iter().any(|r| matches(&query, r)), "select missed a match"),
                }
            }
            10 => {
                if let Some(r) = book.select_tried_collision() {
                    assert!(r.tried && book.get(&r.address) == Some(&r));
                    if ops.byte() & 1 != 0 {
                        book.good(&r.address, now);
                    } else {
                        book.attempt(&r.address, true, now);
                    }
                }
                book.resolve_collisions(now);
            }
            11 => {
                book.remove_terrible(now);
                assert!(book.iter().filter(|r| !r.tried).all(|r| !r.is_terrible(now)));
            }
            12 => book.set_allow_unroutable(ops.byte() & 1 != 0),
            _ => match ops.byte() {
                0 => round_trip(&book),
                b => now += u64::from(b) * 120,
            },
        }
        if step % 8 == 7
            && let Err(e) = book.check()
        {
            panic!("inconsistent book after step {step}: {e}");
        }
    }
    if let Err(e) = book.check() {
        panic!("inconsistent book: {e}");
    }
    round_trip(&book);
}

fn run(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else { return };
    match mode % 4 {
        0 => import(body, false),
        1 => import(body, true),
        _ => operate(mode, body),
    }
}

fuzz_target!(|data: &[u8]| run(data));
