//! Fuzzes the SOCKS5 client handshake with whatever a proxy might send.
//!
//! Input layout: `mode`, `seed`, then the body: the proxy's bytes.
//! - `mode` bit 0: authenticate with a username and password (else none).
//! - `mode` bits 1–2: the target: IPv4, IPv6, a domain name, an onion name.
//! - `mode` bit 3: prefix the body with a valid method selection (and, with
//!   a password, a valid authentication status), so that the fuzzer spends
//!   its time in the `CONNECT` reply.
//!
//! The body is fed in chunks whose sizes come from a PRNG seeded by `seed`,
//! and what the handshake offers is written in PRNG-sized chunks between
//! reads. Checks: no panic; the transmit buffer stays within the longest
//! three requests; an error is final (every later call returns it, nothing
//! more is sent); once connected, the leftover is exactly the bytes after
//! the reply.

#![no_main]

use libfuzzer_sys::fuzz_target;
use peerlink::socks5::{Auth, Credentials, Handshake, Progress, Stage, Target};

/// Greeting, longest authentication request, longest `CONNECT` request.
const MAX_TRANSMIT: usize = 3 + (3 + 255 + 255) + (4 + 1 + 255 + 2);

fn target(kind: u8) -> Target {
    match kind {
        0 => Target::Addr("127.0.0.1:8333".parse().expect("valid")),
        1 => Target::Addr("[2001:db8::1]:8333".parse().expect("valid")),
        2 => Target::name("localhost", 8333).expect("valid"),
        _ => Target::name("2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion", 8333).expect("valid"),
    }
}

fn run(data: &[u8]) {
    let Some((&[mode, seed], body)) = data.split_first_chunk::<2>() else { return };
    let password = mode & 0x01 != 0;
    let credentials = || Credentials::new("user", "pass").expect("valid");
    // Bit 4: offer both methods (stream isolation's `PasswordOrNone`).
    let auth = match (password, mode & 0x10 != 0) {
        (true, false) => Auth::Password(credentials()),
        (true, true) => Auth::PasswordOrNone(credentials()),
        (false, _) => Auth::None,
    };
    let mut input = Vec::with_capacity(body.len() + 4);
    if mode & 0x08 != 0 {
        input.extend_from_slice(if password { &[0x05, 0x02, 0x01, 0x00] } else { &[0x05, 0x00] });
    }
    input.extend_from_slice(body);

    let mut h = Handshake::new(target((mode >> 1) & 0x03), auth);
    let mut rng = u32::from(seed) | u32::from(mode) << 8 | 0x50c5_0000;
    let mut next = move || {
        // xorshift32
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        rng as usize
    };
    let mut fed = 0;
    while fed < input.len() {
        let pending = h.poll_transmit().len();
        assert!(pending <= MAX_TRANSMIT, "transmit buffer of {pending} bytes");
        if pending > 0 {
            h.advance(next() % (pending + 1));
        }
        let r = next();
        let n = if r % 8 == 0 { input.len() - fed } else { (r % 16 + 1).min(input.len() - fed) };
        let chunk = &input[fed..fed + n];
        fed += n;
        match h.handle_input(chunk) {
            Ok(Progress::Pending) => assert!(!h.is_connected()),
            Ok(Progress::Connected { bound }) => {
                assert!(h.is_connected());
                assert_eq!(h.bound(), Some(&bound));
                let _ = bound.to_string();
                let leftover = h.take_leftover();
                assert!(leftover.len() <= fed);
                assert_eq!(leftover, input[fed - leftover.len()..fed], "leftover is not the input's tail");
                // The rest is the tunnel's, handed back unchanged.
                let rest = &input[fed..];
                assert!(matches!(h.handle_input(rest), Ok(Progress::Connected { .. })));
                assert_eq!(h.take_leftover(), rest);
                assert_eq!(h.handle_eof(), Ok(()));
                return;
            }
            Err(e) => {
                let _ = e.to_string();
                assert_eq!(h.stage(), Stage::Failed);
                assert!(h.poll_transmit().is_empty(), "nothing is sent after a failure");
                assert_eq!(h.handle_input(&input[fed..]), Err(e.clone()), "an error is final");
                assert_eq!(h.handle_eof(), Err(e));
                assert!(h.take_leftover().is_empty());
                return;
            }
        }
    }
    // Ran out of input before the handshake completed.
    assert!(h.handle_eof().is_err());
    assert_eq!(h.stage(), Stage::Failed);
}

fuzz_target!(|data: &[u8]| run(data));
