//! Byte-vector and property tests for the v1 codec and the payload helpers.
//!
//! Unit tests follow the smoltcp/arti style: each message type has one test
//! that decodes literal bytes into a constructed value and one that encodes
//! the value and compares it with the same bytes. Every frame below was
//! written out by hand (mainnet magic `f9beb4d9`); the header checksums were
//! computed independently with Python's `hashlib` (first four bytes of
//! SHA256(SHA256(payload))), never with the code under test.

use std::str::FromStr;

use bitcoin::block::{Header as BlockHeader, Version as BlockVersion};
use bitcoin::blockdata::constants::genesis_block;
use bitcoin::consensus::encode;
use bitcoin::hashes::Hash;
use bitcoin::p2p::address::Address;
use bitcoin::p2p::message::{CommandString, NetworkMessage};
use bitcoin::p2p::message_blockdata::{GetHeadersMessage, Inventory};
use bitcoin::p2p::message_compact_blocks::SendCmpct;
use bitcoin::p2p::message_network::VersionMessage;
use bitcoin::p2p::{Magic, ServiceFlags};
use bitcoin::{
    Amount, Block, BlockHash, CompactTarget, Network, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxMerkleNode,
    TxOut, Txid, Witness, Wtxid, absolute, transaction,
};
use proptest::prelude::*;
use proptest::sample::Index;

use super::v1::{HEADER_LEN, MAX_PROTOCOL_MESSAGE_LENGTH};
use super::{Command, V1Codec, WireError};
use crate::codec::{Codec, Decoded};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Decodes a hex literal; whitespace is ignored so long vectors can be split.
fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(digits.len().is_multiple_of(2), "odd number of hex digits");
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).expect("ascii"), 16).expect("hex digit"))
        .collect()
}

fn mainnet() -> V1Codec {
    V1Codec::new(Network::Bitcoin)
}

/// Decodes one message that must be complete and use every byte of `bytes`.
fn decode_all(bytes: &[u8]) -> NetworkMessage {
    let mut out = Vec::new();
    match mainnet().decode(bytes, &mut out).expect("valid frame") {
        Decoded::Message { message, consumed } => {
            assert_eq!(consumed, bytes.len(), "frame must be consumed whole");
            assert!(out.is_empty(), "v1 decoding never writes");
            message
        }
        other => panic!("expected a message, got {other:?}"),
    }
}

fn encode_one(message: &NetworkMessage) -> Vec<u8> {
    let mut out = Vec::new();
    mainnet().encode(message, &mut out).expect("encodable");
    out
}

/// Runs a fresh mainnet codec over `bytes` and returns its error.
fn decode_err(codec: V1Codec, bytes: &[u8]) -> WireError {
    let mut codec = codec;
    match codec.decode(bytes, &mut Vec::new()) {
        Err(e) => e,
        Ok(other) => panic!("expected an error, got {other:?}"),
    }
}

fn cmd(s: &str) -> Command {
    let mut raw = [0u8; 12];
    raw[..s.len()].copy_from_slice(s.as_bytes());
    Command::from_wire(raw).expect("valid command")
}

fn txid(s: &str) -> Txid {
    Txid::from_str(s).expect("txid hex")
}

fn block_hash(s: &str) -> BlockHash {
    BlockHash::from_str(s).expect("block hash hex")
}

// ---------------------------------------------------------------------------
// Real mainnet messages
// ---------------------------------------------------------------------------

/// A `version` sent by a mainnet Bitcoin Core 0.17.1 node (protocol 70015,
/// January 2019), as captured in rust-bitcoin's test suite.
const VERSION_70015: &str = "
    f9beb4d9 76657273696f6e0000000000 66000000 be61b827
    7f110100 0d04000000000000 f00f4d5c00000000
    0000000000000000 00000000000000000000ffff5bf08c80 b4bd
    0d04000000000000 00000000000000000000000000000000 0000
    faa99559cc68a1c1 10 2f5361746f7368693a302e31372e312f 938c0800 01";

fn version_70015() -> VersionMessage {
    VersionMessage {
        version: 70015,
        services: ServiceFlags::NETWORK | ServiceFlags::BLOOM | ServiceFlags::WITNESS | ServiceFlags::NETWORK_LIMITED,
        timestamp: 1_548_554_224,
        receiver: Address {
            services: ServiceFlags::NONE,
            address: [0, 0, 0, 0, 0, 0xffff, 0x5bf0, 0x8c80], // ::ffff:91.240.140.128
            port: 46269,
        },
        sender: Address { services: ServiceFlags::from(0x040d), address: [0; 8], port: 0 },
        nonce: 13_952_548_347_456_104_954,
        user_agent: "/Satoshi:0.17.1/".to_owned(),
        start_height: 560_275,
        relay: true,
    }
}

/// A `version` from a Satoshi 0.9.99 node (protocol 70002, May 2014).
const VERSION_70002: &str = "
    f9beb4d9 76657273696f6e0000000000 66000000 c0b02fd8
    72110100 0100000000000000 e6e0845300000000
    0100000000000000 00000000000000000000ffff00000000 0000
    0100000000000000 fd87d87eeb4364f22cf54dca59412db7 208d
    47d920cffce83ee8 10 2f5361746f7368693a302e392e39392f 2c9f0400 01";

fn version_70002() -> VersionMessage {
    VersionMessage {
        version: 70002,
        services: ServiceFlags::NETWORK,
        timestamp: 1_401_217_254,
        receiver: Address { services: ServiceFlags::NETWORK, address: [0, 0, 0, 0, 0, 0xffff, 0, 0], port: 0 },
        sender: Address {
            services: ServiceFlags::NETWORK,
            address: [0xfd87, 0xd87e, 0xeb43, 0x64f2, 0x2cf5, 0x4dca, 0x5941, 0x2db7], // an onion address
            port: 8333,
        },
        nonce: 16_735_069_437_859_780_935,
        user_agent: "/Satoshi:0.9.99/".to_owned(),
        start_height: 302_892,
        relay: true,
    }
}

#[test]
fn version_70015_decode() {
    assert_eq!(decode_all(&hex(VERSION_70015)), NetworkMessage::Version(version_70015()));
}

#[test]
fn version_70015_encode() {
    assert_eq!(encode_one(&NetworkMessage::Version(version_70015())), hex(VERSION_70015));
}

#[test]
fn version_70002_decode() {
    assert_eq!(decode_all(&hex(VERSION_70002)), NetworkMessage::Version(version_70002()));
}

#[test]
fn version_70002_encode() {
    assert_eq!(encode_one(&NetworkMessage::Version(version_70002())), hex(VERSION_70002));
}

/// `verack` has an empty payload; 5df6e0e2 is SHA256d("")[..4].
const VERACK: &str = "f9beb4d9 76657261636b000000000000 00000000 5df6e0e2";

#[test]
fn verack_decode() {
    assert_eq!(decode_all(&hex(VERACK)), NetworkMessage::Verack);
}

#[test]
fn verack_encode() {
    assert_eq!(encode_one(&NetworkMessage::Verack), hex(VERACK));
}

/// `ping` with nonce 0x0123456789abcdef (little-endian on the wire).
const PING: &str = "f9beb4d9 70696e670000000000000000 08000000 33bc15e5 efcdab8967452301";
const PONG: &str = "f9beb4d9 706f6e670000000000000000 08000000 33bc15e5 efcdab8967452301";

#[test]
fn ping_decode() {
    assert_eq!(decode_all(&hex(PING)), NetworkMessage::Ping(0x0123_4567_89ab_cdef));
}

#[test]
fn ping_encode() {
    assert_eq!(encode_one(&NetworkMessage::Ping(0x0123_4567_89ab_cdef)), hex(PING));
}

#[test]
fn pong_decode() {
    assert_eq!(decode_all(&hex(PONG)), NetworkMessage::Pong(0x0123_4567_89ab_cdef));
}

#[test]
fn pong_encode() {
    assert_eq!(encode_one(&NetworkMessage::Pong(0x0123_4567_89ab_cdef)), hex(PONG));
}

/// `inv` announcing the first bitcoin transfer (block 170, Satoshi to Hal
/// Finney) as MSG_TX and the genesis block as MSG_BLOCK. Hashes are in
/// internal (reversed) byte order.
const INV: &str = "
    f9beb4d9 696e76000000000000000000 49000000 dd1adb16
    02
    01000000 169e1e83e930853391bc6f35f605c6754cfead57cf8387639d3b4096c54f18f4
    02000000 6fe28c0ab6f1b372c1a6a246ae63f74f931e8365e15a089c68d6190000000000";

fn inv_value() -> NetworkMessage {
    NetworkMessage::Inv(vec![
        Inventory::Transaction(txid("f4184fc596403b9d638783cf57adfe4c75c605f6356fbc91338530e9831e9e16")),
        Inventory::Block(block_hash("000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f")),
    ])
}

#[test]
fn inv_decode() {
    assert_eq!(decode_all(&hex(INV)), inv_value());
}

#[test]
fn inv_encode() {
    assert_eq!(encode_one(&inv_value()), hex(INV));
}

/// The 80-byte mainnet genesis block header.
const GENESIS_HEADER: &str = "
    01000000
    0000000000000000000000000000000000000000000000000000000000000000
    3ba3edfd7a7b12b27ac72c3e67768f617fc81bc3888a51323a9fb8aa4b1e5e4a
    29ab5f49 ffff001d 1dac2b7c";

/// The genesis coinbase transaction (txid 4a5e1e4b…da33b), 204 bytes.
const GENESIS_COINBASE: &str = "
    01000000 01
    0000000000000000000000000000000000000000000000000000000000000000 ffffffff
    4d 04ffff001d0104455468652054696d65732030332f4a616e2f32303039204368616e63656c6c6f72206f6e206272696e6b206f66
       207365636f6e64206261696c6f757420666f722062616e6b73
    ffffffff
    01 00f2052a01000000
    43 4104678afdb0fe5548271967f1a67130b7105cd6a828e03909a67962e0ea1f61deb649f6bc3f4cef38c4f35504e51ec112de5c384df7
       ba0b8d578a4c702b6bf11d5fac
    00000000";

fn headers_frame() -> Vec<u8> {
    let mut frame = hex("f9beb4d9 686561646572730000000000 52000000 0b0e13eb 01");
    frame.extend(hex(GENESIS_HEADER));
    frame.push(0x00); // transaction count, always zero in `headers`
    frame
}

fn tx_frame() -> Vec<u8> {
    let mut frame = hex("f9beb4d9 747800000000000000000000 cc000000 3ba3edfd");
    frame.extend(hex(GENESIS_COINBASE));
    frame
}

fn block_frame() -> Vec<u8> {
    let mut frame = hex("f9beb4d9 626c6f636b00000000000000 1d010000 f71a2403");
    frame.extend(hex(GENESIS_HEADER));
    frame.push(0x01); // one transaction
    frame.extend(hex(GENESIS_COINBASE));
    frame
}

#[test]
fn genesis_vectors_are_what_they_claim() {
    // Guards the literals themselves, independently of the codec.
    let genesis = genesis_block(Network::Bitcoin);
    assert_eq!(genesis.block_hash(), block_hash("000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"));
    assert_eq!(bitcoin::consensus::serialize(&genesis.header), hex(GENESIS_HEADER));
    assert_eq!(bitcoin::consensus::serialize(&genesis.txdata[0]), hex(GENESIS_COINBASE));
    assert_eq!(block_frame().len(), HEADER_LEN + 285);
    assert_eq!(tx_frame().len(), HEADER_LEN + 204);
    assert_eq!(headers_frame().len(), HEADER_LEN + 82);
}

#[test]
fn headers_decode() {
    let genesis = genesis_block(Network::Bitcoin);
    assert_eq!(decode_all(&headers_frame()), NetworkMessage::Headers(vec![genesis.header]));
}

#[test]
fn headers_encode() {
    let genesis = genesis_block(Network::Bitcoin);
    assert_eq!(encode_one(&NetworkMessage::Headers(vec![genesis.header])), headers_frame());
}

#[test]
fn tx_decode() {
    let genesis = genesis_block(Network::Bitcoin);
    let NetworkMessage::Tx(tx) = decode_all(&tx_frame()) else { panic!("not a tx") };
    assert_eq!(tx, genesis.txdata[0]);
    assert_eq!(tx.compute_txid(), txid("4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"));
}

#[test]
fn tx_encode() {
    let genesis = genesis_block(Network::Bitcoin);
    assert_eq!(encode_one(&NetworkMessage::Tx(genesis.txdata[0].clone())), tx_frame());
}

#[test]
fn block_decode() {
    let NetworkMessage::Block(block) = decode_all(&block_frame()) else { panic!("not a block") };
    assert_eq!(block, genesis_block(Network::Bitcoin));
}

#[test]
fn block_encode() {
    assert_eq!(encode_one(&NetworkMessage::Block(genesis_block(Network::Bitcoin))), block_frame());
}

#[test]
fn two_frames_back_to_back_decode_one_at_a_time() {
    let mut bytes = hex(VERACK);
    bytes.extend(hex(PING));
    let mut codec = mainnet();
    let mut out = Vec::new();
    assert_eq!(
        codec.decode(&bytes, &mut out).unwrap(),
        Decoded::Message { message: NetworkMessage::Verack, consumed: 24 }
    );
    assert_eq!(
        codec.decode(&bytes[24..], &mut out).unwrap(),
        Decoded::Message { message: NetworkMessage::Ping(0x0123_4567_89ab_cdef), consumed: 32 }
    );
}

#[test]
fn partial_header_needs_more_without_length() {
    let bytes = hex(PING);
    let mut codec = mainnet();
    for n in 0..HEADER_LEN {
        assert_eq!(codec.decode(&bytes[..n], &mut Vec::new()).unwrap(), Decoded::NeedMore { frame_len: None });
    }
}

#[test]
fn partial_payload_needs_more_with_frame_length() {
    let bytes = block_frame();
    let mut codec = mainnet();
    for n in HEADER_LEN..bytes.len() {
        assert_eq!(
            codec.decode(&bytes[..n], &mut Vec::new()).unwrap(),
            Decoded::NeedMore { frame_len: Some(bytes.len()) }
        );
    }
    let Decoded::Message { consumed, .. } = codec.decode(&bytes, &mut Vec::new()).unwrap() else { panic!() };
    assert_eq!(consumed, bytes.len());
}

// ---------------------------------------------------------------------------
// Validation rules
// ---------------------------------------------------------------------------

#[test]
fn bad_magic_testnet_on_mainnet_codec() {
    // testnet3 magic 0b110907, only the 24-byte header present.
    let bytes = hex("0b110907 76657261636b000000000000 00000000 5df6e0e2");
    let err = decode_err(mainnet(), &bytes);
    let WireError::BadMagic { expected, got } = err else { panic!("expected BadMagic, got {err:?}") };
    assert_eq!(expected, Magic::BITCOIN);
    assert_eq!(got, Magic::TESTNET3);
    assert_eq!(got, Magic::from_bytes([0x0b, 0x11, 0x09, 0x07]));
}

#[test]
fn bad_magic_mainnet_on_regtest_codec() {
    let err = decode_err(V1Codec::new(Network::Regtest), &hex(VERACK));
    let WireError::BadMagic { expected, got } = err else { panic!("expected BadMagic, got {err:?}") };
    assert_eq!(expected, Magic::from_bytes([0xfa, 0xbf, 0xb5, 0xda]));
    assert_eq!(got, Magic::BITCOIN);
}

fn assert_bad_command(raw_command: &str) {
    let raw: [u8; 12] = hex(raw_command).try_into().expect("12 bytes");
    let mut bytes = hex("f9beb4d9");
    bytes.extend(raw);
    bytes.extend(hex("00000000 5df6e0e2"));
    let err = decode_err(mainnet(), &bytes);
    let WireError::BadCommand { raw: got } = err else { panic!("expected BadCommand, got {err:?}") };
    assert_eq!(got, raw);
}

#[test]
fn bad_command_non_printable_byte() {
    // "ver\x01ack"
    assert_bad_command("766572016163 6b0000000000");
}

#[test]
fn bad_command_byte_after_first_nul() {
    // "verack\0x" — a non-NUL byte in the padding.
    assert_bad_command("76657261636b 007800000000");
}

#[test]
fn bad_command_del_0x7f() {
    assert_bad_command("76657261636b 7f0000000000");
}

#[test]
fn bad_command_high_bit() {
    assert_bad_command("76657261636b c30000000000");
}

#[test]
fn bad_command_leading_nul_then_text() {
    assert_bad_command("00 76657261636b0000000000");
}

#[test]
fn command_of_all_nuls_and_twelve_chars_are_valid() {
    // Core's IsCommandValid accepts both: an empty command and one without padding.
    assert_eq!(Command::from_wire([0; 12]).unwrap().as_str(), "");
    assert_eq!(Command::from_wire(*b"getcfcheckpt").unwrap().as_str(), "getcfcheckpt");
    assert_eq!(Command::from_wire(*b" ~          ").unwrap().as_str(), " ~          ");
}

#[test]
fn oversize_default_max_reported_from_header_alone() {
    // ping announcing 4,000,001 bytes (0x003d0901); no payload byte follows.
    let bytes = hex("f9beb4d9 70696e670000000000000000 01093d00 00000000");
    assert_eq!(bytes.len(), HEADER_LEN);
    let err = decode_err(mainnet(), &bytes);
    let WireError::Oversize { command, length, max } = err else { panic!("expected Oversize, got {err:?}") };
    assert_eq!(command, cmd("ping"));
    assert_eq!(length, 4_000_001);
    assert_eq!(max, MAX_PROTOCOL_MESSAGE_LENGTH);
    assert_eq!(max, 4_000_000);
}

#[test]
fn oversize_u32_max_reported_from_header_alone() {
    let bytes = hex("f9beb4d9 626c6f636b00000000000000 ffffffff 00000000");
    let err = decode_err(mainnet(), &bytes);
    assert!(matches!(err, WireError::Oversize { length: u32::MAX, max: 4_000_000, .. }), "{err:?}");
}

#[test]
fn default_max_itself_is_accepted() {
    // Exactly 4,000,000 (0x003d0900): the codec waits for the payload.
    let bytes = hex("f9beb4d9 626c6f636b00000000000000 00093d00 00000000");
    let mut codec = mainnet();
    assert_eq!(
        codec.decode(&bytes, &mut Vec::new()).unwrap(),
        Decoded::NeedMore { frame_len: Some(HEADER_LEN + 4_000_000) }
    );
    assert_eq!(codec.max_frame_len(), HEADER_LEN + 4_000_000);
}

#[test]
fn oversize_custom_max() {
    let codec = mainnet().with_max_payload(7);
    assert_eq!(codec.max_payload(), 7);
    assert_eq!(codec.max_frame_len(), HEADER_LEN + 7);
    // A well-formed ping (8 bytes) is too long for a 7-byte limit; only the
    // header is offered.
    let bytes = hex(PING);
    let err = decode_err(codec.clone(), &bytes[..HEADER_LEN]);
    let WireError::Oversize { command, length, max } = err else { panic!("expected Oversize, got {err:?}") };
    assert_eq!((command, length, max), (cmd("ping"), 8, 7));
    // The same frame passes with a limit of exactly 8.
    let mut codec = mainnet().with_max_payload(8);
    assert!(matches!(codec.decode(&bytes, &mut Vec::new()), Ok(Decoded::Message { consumed: 32, .. })));
}

#[test]
fn bad_checksum() {
    let mut bytes = hex(PING);
    bytes[20] ^= 0xff; // 33bc15e5 -> ccbc15e5
    let err = decode_err(mainnet(), &bytes);
    let WireError::BadChecksum { command, expected, actual } = err else { panic!("expected BadChecksum, got {err:?}") };
    assert_eq!(command, cmd("ping"));
    assert_eq!(expected, [0xcc, 0xbc, 0x15, 0xe5]);
    assert_eq!(actual, [0x33, 0xbc, 0x15, 0xe5]);
}

#[test]
fn bad_checksum_on_flipped_payload_bit() {
    let mut bytes = block_frame();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    let err = decode_err(mainnet(), &bytes);
    assert!(matches!(err, WireError::BadChecksum { expected: [0xf7, 0x1a, 0x24, 0x03], .. }), "{err:?}");
}

#[test]
fn undecodable_truncated_ping() {
    // 7-byte ping payload 00..06 with its correct checksum.
    let bytes = hex("f9beb4d9 70696e670000000000000000 07000000 8586becc 00010203040506");
    let err = decode_err(mainnet(), &bytes);
    assert!(std::error::Error::source(&err).is_some(), "payload errors expose their source");
    let WireError::Payload { command, source } = err else { panic!("expected Payload, got {err:?}") };
    assert_eq!(command, cmd("ping"));
    assert!(matches!(source, encode::Error::Io(_)), "{source:?}");
}

#[test]
fn undecodable_headers_with_transactions() {
    // The genesis header followed by a transaction count of 1.
    let mut payload = hex("01");
    payload.extend(hex(GENESIS_HEADER));
    payload.push(0x01);
    let err = super::payload::decode(&cmd("headers"), &payload).unwrap_err();
    assert!(matches!(err, WireError::Payload { .. }), "{err:?}");
}

#[test]
fn undecodable_feefilter_out_of_range() {
    let err = super::payload::decode(&cmd("feefilter"), &(-1i64).to_le_bytes()).unwrap_err();
    assert!(matches!(err, WireError::Payload { source: encode::Error::ParseFailed(_), .. }), "{err:?}");
    let max = 2_100_000_000_000_000i64;
    assert_eq!(super::payload::decode(&cmd("feefilter"), &max.to_le_bytes()).unwrap(), NetworkMessage::FeeFilter(max));
}

#[test]
fn trailing_bytes_verack_with_one_byte() {
    let bytes = hex("f9beb4d9 76657261636b000000000000 01000000 1406e058 00");
    let err = decode_err(mainnet(), &bytes);
    let WireError::TrailingBytes { command, extra } = err else { panic!("expected TrailingBytes, got {err:?}") };
    assert_eq!((command, extra), (cmd("verack"), 1));
}

#[test]
fn trailing_bytes_ping_with_nine_bytes() {
    let bytes = hex("f9beb4d9 70696e670000000000000000 09000000 ac9d871d 000102030405060708");
    let err = decode_err(mainnet(), &bytes);
    let WireError::TrailingBytes { command, extra } = err else { panic!("expected TrailingBytes, got {err:?}") };
    assert_eq!((command, extra), (cmd("ping"), 1));
}

/// `sendtemplate` is not a command rust-bitcoin knows.
const UNKNOWN: &str = "f9beb4d9 73656e6474656d706c617465 04000000 281dd50f deadbeef";

#[test]
fn unknown_command_decodes_to_unknown_with_payload() {
    assert_eq!(
        decode_all(&hex(UNKNOWN)),
        NetworkMessage::Unknown { command: CommandString::try_from("sendtemplate").unwrap(), payload: hex("deadbeef") }
    );
}

#[test]
fn unknown_command_reencodes_byte_identically() {
    let bytes = hex(UNKNOWN);
    assert_eq!(encode_one(&decode_all(&bytes)), bytes);
}

#[test]
fn unknown_empty_command_round_trips() {
    // An all-NUL command is valid on the wire (Core accepts it).
    let bytes = hex("f9beb4d9 000000000000000000000000 00000000 5df6e0e2");
    let message = decode_all(&bytes);
    assert_eq!(message, NetworkMessage::Unknown { command: CommandString::try_from("").unwrap(), payload: vec![] });
    assert_eq!(encode_one(&message), bytes);
}

#[test]
fn encode_oversize_returns_error_and_leaves_output_unchanged() {
    let mut codec = mainnet().with_max_payload(7);
    let mut out = vec![0xaa, 0xbb];
    let err = codec.encode(&NetworkMessage::Ping(1), &mut out).unwrap_err();
    let WireError::Oversize { command, length, max } = err else { panic!("expected Oversize, got {err:?}") };
    assert_eq!((command, length, max), (cmd("ping"), 8, 7));
    assert_eq!(out, [0xaa, 0xbb]);
    // A payload of exactly the limit is fine and is appended after the old bytes.
    let mut codec = mainnet().with_max_payload(8);
    codec.encode(&NetworkMessage::Ping(0x0123_4567_89ab_cdef), &mut out).unwrap();
    assert_eq!(out[..2], [0xaa, 0xbb]);
    assert_eq!(out[2..], hex(PING)[..]);
}

#[test]
fn encode_oversize_block_with_default_max() {
    let mut tx = genesis_block(Network::Bitcoin).txdata[0].clone();
    tx.output[0].script_pubkey = ScriptBuf::from_bytes(vec![0x6a; 4_000_000]);
    let mut out = hex(VERACK);
    let err = mainnet().encode(&NetworkMessage::Tx(tx), &mut out).unwrap_err();
    assert!(matches!(err, WireError::Oversize { length, max: 4_000_000, .. } if length > 4_000_000), "{err:?}");
    assert_eq!(out, hex(VERACK));
}

#[test]
fn encode_invalid_unknown_command_leaves_output_unchanged() {
    // CommandString only checks the length; the wire form must still be valid.
    let mut out = vec![0x11];
    for bad in ["bad\u{1}", "a\u{0}b", "\u{7f}", "é"] {
        let message = NetworkMessage::Unknown { command: CommandString::try_from(bad).unwrap(), payload: vec![1, 2] };
        let err = mainnet().encode(&message, &mut out).unwrap_err();
        assert!(matches!(err, WireError::BadCommand { .. }), "{bad:?}: {err:?}");
        assert_eq!(out, [0x11], "{bad:?} left bytes behind");
    }
}

#[test]
fn noncanonical_relay_flag_decodes_as_true_and_reencodes_canonically() {
    // The relay flag is read as "any non-zero byte", as in Core. It is the one
    // known valid payload byte that does not re-encode identically.
    let mut bytes = hex(VERSION_70015);
    *bytes.last_mut().unwrap() = 0x02;
    bytes[20..24].copy_from_slice(&hex("cebce437"));
    assert_eq!(decode_all(&bytes), NetworkMessage::Version(version_70015()));
    assert_eq!(encode_one(&decode_all(&bytes)), hex(VERSION_70015));
}

#[test]
fn version_without_relay_flag_is_accepted_as_relay_true() {
    // rust-bitcoin 0.32 requires the BIP37 relay byte; Core treats it as
    // optional, defaulting to true, and so do we.
    let mut bytes = hex(VERSION_70015);
    let relay = bytes.pop();
    assert_eq!(relay, Some(1));
    bytes[16..24].copy_from_slice(&hex("65000000 f4105c7f"));
    let mut codec = mainnet();
    match codec.decode(&bytes, &mut Vec::new()).unwrap() {
        Decoded::Message { message: NetworkMessage::Version(v), consumed } => {
            assert!(v.relay);
            assert_eq!(consumed, bytes.len());
        }
        other => panic!("unexpected {other:?}"),
    }
    // A version cut shorter than that is still refused.
    let short = super::payload::decode(&cmd("version"), &hex(VERSION_70015)[24..60]).unwrap_err();
    assert!(matches!(short, WireError::Payload { .. }), "{short:?}");
}

#[test]
fn sendcmpct_flag_other_than_zero_or_one_is_refused() {
    let err = super::payload::decode(&cmd("sendcmpct"), &hex("02 0200000000000000")).unwrap_err();
    assert!(matches!(err, WireError::Payload { .. }), "{err:?}");
    let ok = super::payload::decode(&cmd("sendcmpct"), &hex("01 0200000000000000")).unwrap();
    assert_eq!(ok, NetworkMessage::SendCmpct(SendCmpct { send_compact: true, version: 2 }));
}

#[test]
fn codec_state_resets_after_an_error_frame() {
    // After a payload error the next frame is parsed from a fresh header.
    let mut codec = mainnet();
    let bad = hex("f9beb4d9 70696e670000000000000000 07000000 8586becc 00010203040506");
    assert!(codec.decode(&bad, &mut Vec::new()).is_err());
    assert_eq!(
        codec.decode(&hex(VERACK), &mut Vec::new()).unwrap(),
        Decoded::Message { message: NetworkMessage::Verack, consumed: 24 }
    );
}

// ---------------------------------------------------------------------------
// Display
// ---------------------------------------------------------------------------

#[test]
fn display_messages_are_lower_case_and_name_the_problem() {
    let io = encode::Error::Io(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    let cases: Vec<(WireError, &[&str])> = vec![
        (
            WireError::BadMagic { expected: Magic::BITCOIN, got: Magic::TESTNET3 },
            &["wrong network magic", "0b110907", "f9beb4d9"],
        ),
        (WireError::BadCommand { raw: *b"ver\x01ack\0\0\0\0\0" }, &["malformed command", "766572016163"]),
        (
            WireError::Oversize { command: cmd("block"), length: 4_000_001, max: 4_000_000 },
            &["block", "4000001", "exceeds the limit", "4000000"],
        ),
        (
            WireError::BadChecksum {
                command: cmd("ping"),
                expected: [0xcc, 0xbc, 0x15, 0xe5],
                actual: [0x33, 0xbc, 0x15, 0xe5],
            },
            &["ping", "checksum mismatch", "ccbc15e5", "33bc15e5"],
        ),
        (WireError::Payload { command: cmd("ping"), source: io }, &["undecodable ping payload"]),
        (WireError::TrailingBytes { command: cmd("verack"), extra: 1 }, &["1 trailing bytes after verack"]),
    ];
    for (err, needles) in cases {
        let msg = err.to_string();
        assert_eq!(msg, msg.to_lowercase(), "not lower case: {msg}");
        assert!(!msg.ends_with('.'), "ends with a period: {msg}");
        for needle in needles {
            assert!(msg.contains(needle), "{msg:?} does not mention {needle:?}");
        }
    }
}

// ---------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------

/// Feeds bytes the way the reactor does: append the chunk, decode until the
/// codec needs more, drain what was consumed.
struct Driver {
    codec: V1Codec,
    buf: Vec<u8>,
    messages: Vec<NetworkMessage>,
    /// Bytes of each decoded frame, in order.
    frames: Vec<Vec<u8>>,
    error: Option<WireError>,
}

impl Driver {
    fn new(codec: V1Codec) -> Self {
        Driver { codec, buf: Vec::new(), messages: Vec::new(), frames: Vec::new(), error: None }
    }

    fn feed(&mut self, chunk: &[u8]) -> Result<(), TestCaseError> {
        if self.error.is_some() {
            return Ok(()); // the peer would have been disconnected
        }
        self.buf.extend_from_slice(chunk);
        let max_frame = self.codec.max_frame_len();
        prop_assert_eq!(max_frame, HEADER_LEN + self.codec.max_payload() as usize);
        loop {
            let mut out = Vec::new();
            match self.codec.decode(&self.buf, &mut out) {
                Ok(Decoded::NeedMore { frame_len }) => {
                    if let Some(n) = frame_len {
                        prop_assert!(n <= max_frame, "frame_len {} above max {}", n, max_frame);
                        prop_assert!(n >= HEADER_LEN);
                        prop_assert!(
                            n > self.buf.len(),
                            "NeedMore although {} of {} bytes are here",
                            self.buf.len(),
                            n
                        );
                    } else {
                        prop_assert!(self.buf.len() < HEADER_LEN);
                    }
                    break;
                }
                Ok(Decoded::Message { message, consumed }) => {
                    prop_assert!(consumed >= HEADER_LEN && consumed <= self.buf.len() && consumed <= max_frame);
                    self.frames.push(self.buf[..consumed].to_vec());
                    self.messages.push(message);
                    self.buf.drain(..consumed);
                }
                Ok(Decoded::Consumed(n)) => {
                    prop_assert!(false, "v1 never returns Consumed({})", n);
                }
                Err(e) => {
                    self.error = Some(e);
                    break;
                }
            }
            prop_assert!(out.is_empty());
        }
        Ok(())
    }

    /// Feeds `bytes` cut at the given points.
    fn feed_split(&mut self, bytes: &[u8], cuts: &[Index]) -> Result<(), TestCaseError> {
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        points.push(0);
        points.push(bytes.len());
        points.sort_unstable();
        for pair in points.windows(2) {
            self.feed(&bytes[pair[0]..pair[1]])?;
        }
        Ok(())
    }
}

use super::payload::KNOWN_COMMANDS;

fn arb_bytes32() -> impl Strategy<Value = [u8; 32]> {
    any::<[u8; 32]>()
}

fn arb_inventory() -> impl Strategy<Value = Inventory> {
    (0u8..7, arb_bytes32()).prop_map(|(kind, h)| match kind {
        0 => Inventory::Transaction(Txid::from_byte_array(h)),
        1 => Inventory::Block(BlockHash::from_byte_array(h)),
        2 => Inventory::CompactBlock(BlockHash::from_byte_array(h)),
        3 => Inventory::WTx(Wtxid::from_byte_array(h)),
        4 => Inventory::WitnessTransaction(Txid::from_byte_array(h)),
        5 => Inventory::WitnessBlock(BlockHash::from_byte_array(h)),
        _ => Inventory::Unknown { inv_type: 3, hash: h }, // MSG_FILTERED_BLOCK
    })
}

fn arb_header() -> impl Strategy<Value = BlockHeader> {
    (any::<i32>(), arb_bytes32(), arb_bytes32(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(
        |(version, prev, merkle, time, bits, nonce)| BlockHeader {
            version: BlockVersion::from_consensus(version),
            prev_blockhash: BlockHash::from_byte_array(prev),
            merkle_root: TxMerkleNode::from_byte_array(merkle),
            time,
            bits: CompactTarget::from_consensus(bits),
            nonce,
        },
    )
}

fn arb_txin() -> impl Strategy<Value = TxIn> {
    (
        arb_bytes32(),
        any::<u32>(),
        prop::collection::vec(any::<u8>(), 0..40),
        any::<u32>(),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..20), 0..3),
    )
        .prop_map(|(h, vout, script, sequence, witness)| TxIn {
            previous_output: OutPoint { txid: Txid::from_byte_array(h), vout },
            script_sig: ScriptBuf::from_bytes(script),
            sequence: Sequence(sequence),
            witness: Witness::from_slice(&witness),
        })
}

fn arb_tx() -> impl Strategy<Value = Transaction> {
    (
        any::<i32>(),
        any::<u32>(),
        // At least one input: a zero-input transaction is ambiguous with the
        // segwit marker and does not round-trip (as in Core).
        prop::collection::vec(arb_txin(), 1..3),
        prop::collection::vec((any::<u64>(), prop::collection::vec(any::<u8>(), 0..40)), 0..3),
    )
        .prop_map(|(version, lock_time, input, outputs)| Transaction {
            version: transaction::Version(version),
            lock_time: absolute::LockTime::from_consensus(lock_time),
            input,
            output: outputs
                .into_iter()
                .map(|(sat, script)| TxOut {
                    value: Amount::from_sat(sat),
                    script_pubkey: ScriptBuf::from_bytes(script),
                })
                .collect(),
        })
}

fn arb_address() -> impl Strategy<Value = Address> {
    (any::<u64>(), any::<[u16; 8]>(), any::<u16>()).prop_map(|(services, address, port)| Address {
        services: ServiceFlags::from(services),
        address,
        port,
    })
}

fn arb_version() -> impl Strategy<Value = VersionMessage> {
    (
        (any::<u32>(), any::<u64>(), any::<i64>(), arb_address(), arb_address()),
        (any::<u64>(), "[ -~]{0,40}", any::<i32>(), any::<bool>()),
    )
        .prop_map(
            |((version, services, timestamp, receiver, sender), (nonce, user_agent, start_height, relay))| {
                VersionMessage {
                    version,
                    services: ServiceFlags::from(services),
                    timestamp,
                    receiver,
                    sender,
                    nonce,
                    user_agent,
                    start_height,
                    relay,
                }
            },
        )
}

/// A command that is printable, at most 12 bytes, and not a known one.
fn arb_unknown_command() -> impl Strategy<Value = CommandString> {
    "[ -~]{0,12}"
        .prop_filter("known command", |s| !KNOWN_COMMANDS.contains(&s.as_str()))
        .prop_map(|s| CommandString::try_from(s).expect("at most 12 bytes"))
}

fn arb_message() -> impl Strategy<Value = NetworkMessage> {
    prop_oneof![
        Just(NetworkMessage::Verack),
        Just(NetworkMessage::SendHeaders),
        Just(NetworkMessage::GetAddr),
        Just(NetworkMessage::MemPool),
        Just(NetworkMessage::FilterClear),
        Just(NetworkMessage::WtxidRelay),
        Just(NetworkMessage::SendAddrV2),
        any::<u64>().prop_map(NetworkMessage::Ping),
        any::<u64>().prop_map(NetworkMessage::Pong),
        (0i64..=2_100_000_000_000_000).prop_map(NetworkMessage::FeeFilter),
        (any::<bool>(), any::<u64>())
            .prop_map(|(send_compact, version)| NetworkMessage::SendCmpct(SendCmpct { send_compact, version })),
        prop::collection::vec(arb_inventory(), 0..5).prop_map(NetworkMessage::Inv),
        prop::collection::vec(arb_inventory(), 0..5).prop_map(NetworkMessage::GetData),
        prop::collection::vec(arb_inventory(), 0..5).prop_map(NetworkMessage::NotFound),
        prop::collection::vec(arb_header(), 0..4).prop_map(NetworkMessage::Headers),
        (any::<u32>(), prop::collection::vec(arb_bytes32(), 0..4), arb_bytes32()).prop_map(|(version, l, stop)| {
            NetworkMessage::GetHeaders(GetHeadersMessage {
                version,
                locator_hashes: l.into_iter().map(BlockHash::from_byte_array).collect(),
                stop_hash: BlockHash::from_byte_array(stop),
            })
        }),
        prop::collection::vec((any::<u32>(), arb_address()), 0..4).prop_map(NetworkMessage::Addr),
        arb_tx().prop_map(NetworkMessage::Tx),
        (arb_header(), prop::collection::vec(arb_tx(), 0..3))
            .prop_map(|(header, txdata)| NetworkMessage::Block(Block { header, txdata })),
        arb_version().prop_map(NetworkMessage::Version),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(NetworkMessage::Alert),
        (arb_unknown_command(), prop::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(command, payload)| NetworkMessage::Unknown { command, payload }),
    ]
}

fn encode_stream(codec: &mut V1Codec, messages: &[NetworkMessage]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for m in messages {
        codec.encode(m, &mut bytes).expect("generated messages are encodable");
    }
    bytes
}

/// Raw bytes, frame-ish pieces with a valid header around random payloads,
/// and header-only pieces with random lengths.
fn arb_noise(magic: Magic) -> impl Strategy<Value = Vec<u8>> {
    let raw = prop::collection::vec(any::<u8>(), 0..64);
    let framed = (0..KNOWN_COMMANDS.len(), prop::collection::vec(any::<u8>(), 0..48), any::<bool>()).prop_map(
        move |(i, payload, good_sum)| {
            let mut f = frame(magic, KNOWN_COMMANDS[i], &payload);
            if !good_sum {
                f[20] ^= 0x5a;
            }
            f
        },
    );
    let header_only = (0..KNOWN_COMMANDS.len(), any::<u32>()).prop_map(move |(i, len)| {
        let mut f = frame(magic, KNOWN_COMMANDS[i], &[]);
        f[16..20].copy_from_slice(&len.to_le_bytes());
        f
    });
    prop::collection::vec(prop_oneof![raw, framed, header_only], 0..6).prop_map(|parts| parts.concat())
}

/// A frame with a correct header around an arbitrary payload. The checksum
/// comes from `v1::checksum`, which the unit tests above pin against
/// independently computed vectors.
fn frame(magic: Magic, command: &str, payload: &[u8]) -> Vec<u8> {
    let mut f = magic.to_bytes().to_vec();
    f.extend_from_slice(&cmd(command).to_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(&super::v1::checksum(payload));
    f.extend_from_slice(payload);
    f
}

/// Normalises the `version` relay flag, which Core and rust-bitcoin read as
/// "non-zero": the one known source of non-canonical but valid payloads.
fn canonical_frame(frame: &[u8]) -> Vec<u8> {
    let command = Command::from_wire(frame[4..16].try_into().unwrap()).unwrap();
    let mut payload = frame[HEADER_LEN..].to_vec();
    let bool_at = match command.as_str() {
        "version" => payload.len().checked_sub(1),
        _ => None,
    };
    if let Some(i) = bool_at {
        // A version without the relay byte is read as relay = true.
        let full = match super::payload::decode(&command, &payload) {
            Ok(NetworkMessage::Version(v)) => bitcoin::consensus::serialize(&v).len(),
            _ => payload.len(),
        };
        if full == payload.len() + 1 {
            payload.push(1);
        } else {
            payload[i] = u8::from(payload[i] != 0);
        }
    }
    let mut f = frame[..16].to_vec();
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(&super::v1::checksum(&payload));
    f.extend_from_slice(&payload);
    f
}

/// Re-encodes `message` and decodes it again; checks both steps.
fn assert_round_trip(message: &NetworkMessage, original: &[u8]) -> Result<(), TestCaseError> {
    let mut codec = V1Codec::new(Magic::from_bytes(original[..4].try_into().unwrap()));
    let mut bytes = Vec::new();
    codec.encode(message, &mut bytes).map_err(|e| TestCaseError::fail(format!("re-encode failed: {e}")))?;
    match codec.decode(&bytes, &mut Vec::new()) {
        Ok(Decoded::Message { message: again, consumed }) => {
            prop_assert_eq!(&again, message);
            prop_assert_eq!(consumed, bytes.len());
        }
        other => prop_assert!(false, "re-decode gave {:?}", other),
    }
    let command = Command::from_wire(original[4..16].try_into().unwrap()).unwrap();
    if KNOWN_COMMANDS.contains(&command.as_str()) {
        prop_assert_eq!(bytes, canonical_frame(original), "{} did not re-encode identically", command);
    } else {
        prop_assert_eq!(bytes, original.to_vec(), "unknown {} did not re-encode identically", command);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// (a) Any split of a stream of valid frames decodes to the same messages
    /// as the unsplit stream, which are the messages that were encoded.
    #[test]
    fn prop_split_stream_decodes_like_unsplit(
        messages in prop::collection::vec(arb_message(), 0..12),
        cuts in prop::collection::vec(any::<Index>(), 0..40),
    ) {
        let mut codec = V1Codec::new(Network::Regtest);
        let bytes = encode_stream(&mut codec, &messages);

        let mut whole = Driver::new(codec.clone());
        whole.feed(&bytes)?;
        prop_assert!(whole.error.is_none(), "{:?}", whole.error);
        prop_assert!(whole.buf.is_empty());
        prop_assert_eq!(&whole.messages, &messages);

        let mut split = Driver::new(codec.clone());
        split.feed_split(&bytes, &cuts)?;
        prop_assert!(split.error.is_none(), "{:?}", split.error);
        prop_assert!(split.buf.is_empty());
        prop_assert_eq!(&split.messages, &whole.messages);

        // Byte-at-a-time is the extreme split.
        let mut bytewise = Driver::new(codec);
        for b in &bytes {
            bytewise.feed(std::slice::from_ref(b))?;
        }
        prop_assert_eq!(&bytewise.messages, &messages);
    }

    /// (b) Random bytes, with or without a valid magic in front, in random
    /// chunks and under random limits: no panic, every announced frame length
    /// within the limit, and any split gives the same outcome.
    #[test]
    fn prop_random_bytes_never_panic(
        prefix_magic in any::<bool>(),
        noise in arb_noise(Magic::REGTEST),
        max in prop_oneof![Just(MAX_PROTOCOL_MESSAGE_LENGTH), 0u32..200],
        cuts in prop::collection::vec(any::<Index>(), 0..20),
    ) {
        let mut bytes = Vec::new();
        if prefix_magic {
            bytes.extend_from_slice(&Magic::REGTEST.to_bytes());
        }
        bytes.extend_from_slice(&noise);
        let codec = V1Codec::new(Network::Regtest).with_max_payload(max);

        let mut whole = Driver::new(codec.clone());
        whole.feed(&bytes)?;
        let mut split = Driver::new(codec);
        split.feed_split(&bytes, &cuts)?;
        prop_assert_eq!(&split.messages, &whole.messages);
        prop_assert_eq!(split.error.is_some(), whole.error.is_some());
        if let (Some(a), Some(b)) = (&split.error, &whole.error) {
            prop_assert_eq!(a.to_string(), b.to_string());
        }
    }

    /// (c) Every successfully decoded message re-encodes and decodes to an
    /// equal message; known commands re-encode to the original frame.
    #[test]
    fn prop_decode_encode_decode_round_trips(
        messages in prop::collection::vec(arb_message(), 0..6),
        noise in arb_noise(Magic::REGTEST),
    ) {
        let mut codec = V1Codec::new(Network::Regtest);
        let mut bytes = encode_stream(&mut codec, &messages);
        bytes.extend_from_slice(&noise);
        let mut driver = Driver::new(codec);
        driver.feed(&bytes)?;
        prop_assert!(driver.messages.len() >= messages.len());
        prop_assert_eq!(&driver.messages[..messages.len()], &messages[..]);
        for (message, frame) in driver.messages.iter().zip(&driver.frames) {
            assert_round_trip(message, frame)?;
        }
    }

    /// (c, payload level) A random payload under a known command, with a
    /// correct header, either fails with a payload error or round-trips.
    #[test]
    fn prop_random_payload_for_known_command(
        i in 0..KNOWN_COMMANDS.len(),
        payload in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..16),
            prop::collection::vec(any::<u8>(), 0..200),
            // Small counts in front make list payloads plausible.
            (0u8..4, prop::collection::vec(any::<u8>(), 0..200)).prop_map(|(n, mut rest)| { rest.insert(0, n); rest }),
        ],
    ) {
        let f = frame(Magic::REGTEST, KNOWN_COMMANDS[i], &payload);
        let mut driver = Driver::new(V1Codec::new(Network::Regtest));
        driver.feed(&f)?;
        match (&driver.error, driver.messages.as_slice()) {
            (None, [message]) => assert_round_trip(message, &f)?,
            (Some(WireError::Payload { .. } | WireError::TrailingBytes { .. }), []) => {}
            other => prop_assert!(false, "unexpected outcome {:?}", other),
        }
    }
}

/// A block of up to three transactions from [`arb_tx`], with or without
/// witnesses (a transaction with any witness encodes in BIP144 form).
fn arb_block() -> impl Strategy<Value = Block> {
    (arb_header(), prop::collection::vec(arb_tx(), 0..3)).prop_map(|(header, txdata)| Block { header, txdata })
}

/// The outcome of a decode as a comparable value: the decoded item and the
/// bytes left, or which kind of error.
fn outcome<T>(
    result: Result<T, encode::Error>,
    rest: &[u8],
) -> Result<(T, usize), std::mem::Discriminant<encode::Error>> {
    result.map(|v| (v, rest.len())).map_err(|e| std::mem::discriminant(&e))
}

/// Our exact-allocation decoder against rust-bitcoin's, on `bytes`.
fn same_as_rust_bitcoin(bytes: &[u8]) -> Result<(), TestCaseError> {
    use bitcoin::consensus::Decodable;
    let (mut ours, mut theirs) = (bytes, bytes);
    let a = super::tx::decode_tx(&mut ours);
    let b = Transaction::consensus_decode_from_finite_reader(&mut theirs);
    prop_assert_eq!(outcome(a, ours), outcome(b, theirs), "tx from {:02x?}", bytes);
    let (mut ours, mut theirs) = (bytes, bytes);
    let a = super::tx::decode_block(&mut ours);
    let b = Block::consensus_decode_from_finite_reader(&mut theirs);
    prop_assert_eq!(outcome(a, ours), outcome(b, theirs), "block from {:02x?}", bytes);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Transactions and blocks decode to the same values, leave the same
    /// bytes, and fail with the same kind of error as rust-bitcoin's decoder,
    /// whole, cut short at any point, and with any one byte changed.
    #[test]
    fn tx_and_block_decoding_matches_rust_bitcoin(
        tx in arb_tx(),
        block in arb_block(),
        cut in any::<Index>(),
        at in any::<Index>(),
        byte in any::<u8>(),
    ) {
        for mut bytes in [encode::serialize(&tx), encode::serialize(&block)] {
            same_as_rust_bitcoin(&bytes)?;
            same_as_rust_bitcoin(&bytes[..cut.index(bytes.len() + 1)])?;
            let i = at.index(bytes.len());
            bytes[i] = byte;
            same_as_rust_bitcoin(&bytes)?;
        }
    }

    /// Arbitrary bytes: the two decoders agree too.
    #[test]
    fn tx_and_block_decoding_matches_rust_bitcoin_on_noise(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        same_as_rust_bitcoin(&bytes)?;
    }
}

#[test]
fn tx_and_block_decoding_matches_rust_bitcoin_on_edge_cases() {
    let genesis = encode::serialize(&genesis_block(Network::Bitcoin));
    let cases: [&[u8]; 6] = [
        &genesis,
        // Zero inputs, then segwit flag 1 with no inputs and no outputs.
        &[1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0],
        // Segwit flag 2: unsupported.
        &[1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0],
        // One input whose script claims 2^64 - 1 bytes.
        &[
            1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ],
        // A non-minimal input count.
        &[1, 0, 0, 0, 0xfd, 1, 0],
        // A count of 2^64 - 1 inputs with nothing behind it.
        &[1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    ];
    for bytes in cases {
        same_as_rust_bitcoin(bytes).unwrap();
    }
    // Segwit form, one input, and no witness at all: refused.
    let mut no_witness = vec![1, 0, 0, 0, 0, 1, 1];
    no_witness.extend([0; 36]); // outpoint
    no_witness.extend([0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0]); // script, sequence, outputs, witness, lock time
    same_as_rust_bitcoin(&no_witness).unwrap();
    assert!(matches!(super::tx::decode_tx(&mut no_witness.as_slice()), Err(encode::Error::ParseFailed(_))));
    // Segwit, one input with a witness: decodes in full.
    let mut tx = genesis_block(Network::Bitcoin).txdata[0].clone();
    tx.input[0].witness = Witness::from_slice(&[[7u8; 3]]);
    let bytes = encode::serialize(&tx);
    let mut r = bytes.as_slice();
    assert_eq!(super::tx::decode_tx(&mut r).unwrap(), tx);
    assert!(r.is_empty());
    same_as_rust_bitcoin(&bytes).unwrap();
}
