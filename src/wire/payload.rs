//! Payload encoding and decoding for a known command, without a v1 header.
//!
//! rust-bitcoin 0.32 only decodes whole v1 frames (`RawNetworkMessage`), and
//! that path copies the payload and hashes it a second time. This module
//! dispatches on the command and decodes the payload in place, which the v1
//! codec uses after checking the checksum once, and which BIP324 needs because
//! its packets carry no v1 header.

use bitcoin::block::Header as BlockHeader;
use bitcoin::consensus::encode::{self, Decodable, Encodable, VarInt};
use bitcoin::p2p::message::{CommandString, NetworkMessage};

use super::{Command, WireError};

/// Every command decoded to a typed [`NetworkMessage`] variant; any other
/// command becomes [`NetworkMessage::Unknown`].
pub const KNOWN_COMMANDS: [&str; 36] = [
    "version",
    "verack",
    "addr",
    "inv",
    "getdata",
    "notfound",
    "getblocks",
    "getheaders",
    "mempool",
    "tx",
    "block",
    "headers",
    "sendheaders",
    "getaddr",
    "ping",
    "pong",
    "merkleblock",
    "filterload",
    "filteradd",
    "filterclear",
    "getcfilters",
    "cfilter",
    "getcfheaders",
    "cfheaders",
    "getcfcheckpt",
    "cfcheckpt",
    "sendcmpct",
    "cmpctblock",
    "getblocktxn",
    "blocktxn",
    "alert",
    "reject",
    "feefilter",
    "wtxidrelay",
    "addrv2",
    "sendaddrv2",
];

/// Decodes the payload of a `command` message. Unknown commands become
/// [`NetworkMessage::Unknown`]; for known ones every byte must be used.
pub fn decode(command: &Command, mut body: &[u8]) -> Result<NetworkMessage, WireError> {
    let r = &mut body;
    let err = |source| WireError::Payload { command: *command, source };
    macro_rules! d {
        () => {
            Decodable::consensus_decode_from_finite_reader(r).map_err(err)?
        };
    }
    let message = match command.as_str() {
        "version" => NetworkMessage::Version(decode_version(r).map_err(err)?),
        "verack" => NetworkMessage::Verack,
        "addr" => NetworkMessage::Addr(d!()),
        "inv" => NetworkMessage::Inv(d!()),
        "getdata" => NetworkMessage::GetData(d!()),
        "notfound" => NetworkMessage::NotFound(d!()),
        "getblocks" => NetworkMessage::GetBlocks(d!()),
        "getheaders" => NetworkMessage::GetHeaders(d!()),
        "mempool" => NetworkMessage::MemPool,
        "tx" => NetworkMessage::Tx(super::tx::decode_tx(r).map_err(err)?),
        "block" => NetworkMessage::Block(super::tx::decode_block(r).map_err(err)?),
        "headers" => NetworkMessage::Headers(decode_headers(r).map_err(err)?),
        "sendheaders" => NetworkMessage::SendHeaders,
        "getaddr" => NetworkMessage::GetAddr,
        "ping" => NetworkMessage::Ping(d!()),
        "pong" => NetworkMessage::Pong(d!()),
        "merkleblock" => NetworkMessage::MerkleBlock(d!()),
        "filterload" => NetworkMessage::FilterLoad(d!()),
        "filteradd" => NetworkMessage::FilterAdd(d!()),
        "filterclear" => NetworkMessage::FilterClear,
        "getcfilters" => NetworkMessage::GetCFilters(d!()),
        "cfilter" => NetworkMessage::CFilter(d!()),
        "getcfheaders" => NetworkMessage::GetCFHeaders(d!()),
        "cfheaders" => NetworkMessage::CFHeaders(d!()),
        "getcfcheckpt" => NetworkMessage::GetCFCheckpt(d!()),
        "cfcheckpt" => NetworkMessage::CFCheckpt(d!()),
        "sendcmpct" => NetworkMessage::SendCmpct(d!()),
        "cmpctblock" => NetworkMessage::CmpctBlock(d!()),
        "getblocktxn" => NetworkMessage::GetBlockTxn(d!()),
        "blocktxn" => NetworkMessage::BlockTxn(d!()),
        "alert" => NetworkMessage::Alert(d!()),
        "reject" => NetworkMessage::Reject(d!()),
        "feefilter" => {
            let fee: i64 = d!();
            // Core accepts only MoneyRange values (net_processing.cpp).
            if !(0..=2_100_000_000_000_000).contains(&fee) {
                return Err(err(encode::Error::ParseFailed("feefilter value out of range")));
            }
            NetworkMessage::FeeFilter(fee)
        }
        "wtxidrelay" => NetworkMessage::WtxidRelay,
        "addrv2" => NetworkMessage::AddrV2(d!()),
        "sendaddrv2" => NetworkMessage::SendAddrV2,
        other => {
            let command = CommandString::try_from(other.to_owned())
                .map_err(|_| WireError::BadCommand { raw: command.to_bytes() })?;
            return Ok(NetworkMessage::Unknown { command, payload: body.to_vec() });
        }
    };
    if !body.is_empty() {
        return Err(WireError::TrailingBytes { command: *command, extra: body.len() });
    }
    Ok(message)
}

/// `version`, accepting a missing BIP37 relay byte as `relay = true` like
/// Bitcoin Core (rust-bitcoin 0.32 requires the byte; peers before 70001 and
/// some implementations omit it).
fn decode_version(r: &mut &[u8]) -> Result<bitcoin::p2p::message_network::VersionMessage, encode::Error> {
    let body = *r;
    match Decodable::consensus_decode_from_finite_reader(r) {
        Err(encode::Error::Io(e)) if e.kind() == bitcoin::io::ErrorKind::UnexpectedEof => {
            // Version messages are small: the copy is bounded by the payload.
            let mut with_relay = Vec::with_capacity(body.len() + 1);
            with_relay.extend_from_slice(body);
            with_relay.push(1);
            let mut retry = with_relay.as_slice();
            let v = Decodable::consensus_decode_from_finite_reader(&mut retry)?;
            if !retry.is_empty() {
                return Err(encode::Error::ParseFailed("truncated version message"));
            }
            *r = &body[body.len()..];
            Ok(v)
        }
        other => other,
    }
}

/// `headers` carries a transaction count (always zero) after each header.
fn decode_headers(r: &mut &[u8]) -> Result<Vec<BlockHeader>, encode::Error> {
    let count = VarInt::consensus_decode_from_finite_reader(r)?.0;
    // Each entry takes 81 bytes, so the count cannot exceed what is buffered.
    if count > (r.len() / 81) as u64 {
        return Err(encode::Error::ParseFailed("headers count exceeds payload"));
    }
    let mut headers = Vec::with_capacity(count as usize);
    for _ in 0..count {
        headers.push(BlockHeader::consensus_decode_from_finite_reader(r)?);
        if u8::consensus_decode_from_finite_reader(r)? != 0 {
            return Err(encode::Error::ParseFailed("headers message should not contain transactions"));
        }
    }
    Ok(headers)
}

/// Appends the payload of `message` to `out`.
pub fn encode(message: &NetworkMessage, out: &mut Vec<u8>) {
    message.consensus_encode(out).expect("writing to a Vec cannot fail");
}

/// The wire command bytes of `message`, validated.
pub fn command_bytes(message: &NetworkMessage) -> Result<[u8; 12], WireError> {
    if !matches!(message, NetworkMessage::Unknown { .. }) {
        // rust-bitcoin's own names: short, printable ASCII.
        let s = message.cmd().as_bytes();
        let mut raw = [0u8; 12];
        raw[..s.len()].copy_from_slice(s);
        return Ok(raw);
    }
    let command = message.command();
    let s = command.as_ref().as_bytes();
    let mut raw = [0u8; 12];
    if s.len() > 12 {
        raw.copy_from_slice(&s[..12]);
        return Err(WireError::BadCommand { raw });
    }
    raw[..s.len()].copy_from_slice(s);
    Command::from_wire(raw)?;
    Ok(raw)
}
