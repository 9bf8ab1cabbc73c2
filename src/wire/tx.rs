//! Transactions and blocks decoded from a complete payload, with every
//! script allocated once at its exact length.
//!
//! rust-bitcoin 0.32 decodes a script by zero-filling a `Vec` in chunks and
//! then reading into it, which for a 1 MB script is a memset, a realloc and
//! fresh pages touched twice. Here the whole payload is already in memory
//! and checksummed, so a script's length is checked against the bytes that
//! remain before anything is allocated, and the bytes are copied once. The
//! result is the same `Transaction` and `Block` values, and the same
//! accept/reject decisions, as rust-bitcoin's decoder (checked by a
//! differential property test and the `v1_decoder` fuzz target's corpus).

use bitcoin::blockdata::block::{Block, Header};
use bitcoin::blockdata::transaction::{OutPoint, Transaction, TxIn, TxOut, Version};
use bitcoin::consensus::encode::{self, Decodable, VarInt};
use bitcoin::{Amount, ScriptBuf, Sequence, Witness, absolute};

/// The smallest encoding of an input (outpoint, empty script, sequence).
const MIN_TXIN: usize = 36 + 1 + 4;
/// The smallest encoding of an output (amount, empty script).
const MIN_TXOUT: usize = 8 + 1;
/// The smallest encoding of a transaction that can decode.
const MIN_TX: usize = 4 + 1 + 1 + 4;

fn eof() -> encode::Error {
    encode::Error::Io(bitcoin::io::ErrorKind::UnexpectedEof.into())
}

/// A count of items whose encodings take at least `min` bytes each: the
/// capacity to reserve, never more than the bytes left could hold.
fn capacity(r: &[u8], count: u64, min: usize) -> usize {
    usize::try_from(count).unwrap_or(usize::MAX).min(r.len() / min)
}

fn decode_script(r: &mut &[u8]) -> Result<ScriptBuf, encode::Error> {
    let len = VarInt::consensus_decode_from_finite_reader(r)?.0;
    let len = usize::try_from(len).map_err(|_| eof())?;
    if len > r.len() {
        return Err(eof());
    }
    let (bytes, rest) = r.split_at(len);
    *r = rest;
    Ok(ScriptBuf::from_bytes(bytes.to_vec()))
}

fn decode_inputs(r: &mut &[u8]) -> Result<Vec<TxIn>, encode::Error> {
    let count = VarInt::consensus_decode_from_finite_reader(r)?.0;
    let mut inputs = Vec::with_capacity(capacity(r, count, MIN_TXIN));
    for _ in 0..count {
        inputs.push(TxIn {
            previous_output: OutPoint::consensus_decode_from_finite_reader(r)?,
            script_sig: decode_script(r)?,
            sequence: Sequence::consensus_decode_from_finite_reader(r)?,
            witness: Witness::default(),
        });
    }
    Ok(inputs)
}

fn decode_outputs(r: &mut &[u8]) -> Result<Vec<TxOut>, encode::Error> {
    let count = VarInt::consensus_decode_from_finite_reader(r)?.0;
    let mut outputs = Vec::with_capacity(capacity(r, count, MIN_TXOUT));
    for _ in 0..count {
        outputs
            .push(TxOut { value: Amount::consensus_decode_from_finite_reader(r)?, script_pubkey: decode_script(r)? });
    }
    Ok(outputs)
}

/// One transaction from the front of `r`, as
/// `Transaction::consensus_decode_from_finite_reader` would decode it.
pub(crate) fn decode_tx(r: &mut &[u8]) -> Result<Transaction, encode::Error> {
    let version = Version::consensus_decode_from_finite_reader(r)?;
    let input = decode_inputs(r)?;
    if !input.is_empty() {
        let output = decode_outputs(r)?;
        let lock_time = absolute::LockTime::consensus_decode_from_finite_reader(r)?;
        return Ok(Transaction { version, input, output, lock_time });
    }
    // No inputs: the BIP144 marker was read as the count; the flag follows.
    match u8::consensus_decode_from_finite_reader(r)? {
        1 => {
            let mut input = decode_inputs(r)?;
            let output = decode_outputs(r)?;
            for txin in input.iter_mut() {
                txin.witness = Witness::consensus_decode_from_finite_reader(r)?;
            }
            if !input.is_empty() && input.iter().all(|i| i.witness.is_empty()) {
                return Err(encode::Error::ParseFailed("witness flag set but no witnesses present"));
            }
            let lock_time = absolute::LockTime::consensus_decode_from_finite_reader(r)?;
            Ok(Transaction { version, input, output, lock_time })
        }
        flag => Err(encode::Error::UnsupportedSegwitFlag(flag)),
    }
}

/// A block from the front of `r`, as `Block::consensus_decode_from_finite_reader`
/// would decode it.
pub(crate) fn decode_block(r: &mut &[u8]) -> Result<Block, encode::Error> {
    let header = Header::consensus_decode_from_finite_reader(r)?;
    let count = VarInt::consensus_decode_from_finite_reader(r)?.0;
    let mut txdata = Vec::with_capacity(capacity(r, count, MIN_TX));
    for _ in 0..count {
        txdata.push(decode_tx(r)?);
    }
    Ok(Block { header, txdata })
}
