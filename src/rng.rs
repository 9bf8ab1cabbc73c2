//! The reactor's random source: ChaCha20 keyed once from the operating
//! system. Sans-IO layers never draw randomness themselves; the reactor hands
//! them bytes from here (BIP324 keys and garbage, nonces).

use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher};

/// A ChaCha20 keystream used as a CSPRNG.
pub(crate) struct Rng {
    stream: ChaCha20,
}

impl Rng {
    /// Seeds from `/dev/urandom`. Without it (no such device) the seed comes
    /// from std's per-process random hashing keys and the clock, and a warning
    /// is logged: fine for nonces, weak for BIP324 keys.
    pub(crate) fn from_os() -> Rng {
        let mut seed = [0u8; 32];
        let os = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed));
        if let Err(e) = os {
            use std::hash::{BuildHasher, Hasher};
            log::warn!("no /dev/urandom ({e}); seeding from weaker sources");
            for chunk in seed.chunks_mut(8) {
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u128(
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
                );
                chunk.copy_from_slice(&h.finish().to_le_bytes());
            }
        }
        Rng { stream: ChaCha20::new(&seed.into(), &[0; 12].into()) }
    }

    pub(crate) fn bytes32(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        self.stream.apply_keystream(&mut out);
        out
    }

    pub(crate) fn u64(&mut self) -> u64 {
        let mut out = [0u8; 8];
        self.stream.apply_keystream(&mut out);
        u64::from_le_bytes(out)
    }
}
