//! Writes the seed corpora of `v1_decode`, `v2_decode`, `socks5_reply`,
//! `session` and `addrbook` (under `fuzz/corpus/<target>/seed-*`), built
//! from real messages: mainnet's genesis block, its coinbase transaction and
//! block 1's header, a Bitcoin Core 29 `version`, its compact filter, BIP155
//! addresses, the BIP324 packet test vectors, real SOCKS5 replies (as
//! microsocks and Tor send them), and address books filled from the BIP155
//! addresses. Each file is in its target's input layout (see the header
//! comment of each target).
//!
//! Run from `fuzz/`: `cargo run --example make_seeds`. The output is
//! deterministic; the files are committed (`git add -f`, `corpus/` is
//! ignored).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use bitcoin::bip152::HeaderAndShortIds;
use bitcoin::bip158::{BlockFilter, FilterHash, FilterHeader};
use bitcoin::block::Header;
use bitcoin::consensus::encode::{deserialize, serialize};
use bitcoin::hashes::Hash;
use bitcoin::hex::FromHex;
use bitcoin::merkle_tree::MerkleBlock;
use bitcoin::p2p::address::{AddrV2, AddrV2Message, Address};
use bitcoin::p2p::message::{NetworkMessage, RawNetworkMessage};
use bitcoin::p2p::message_blockdata::{GetHeadersMessage, Inventory};
use bitcoin::p2p::message_compact_blocks::{CmpctBlock, SendCmpct};
use bitcoin::p2p::message_filter::{CFCheckpt, CFHeaders, CFilter, GetCFCheckpt, GetCFHeaders, GetCFilters};
use bitcoin::p2p::message_network::VersionMessage;
use bitcoin::p2p::{Magic, ServiceFlags};
use bitcoin::{BlockHash, Network};
use peerlink::wire::payload::{self, KNOWN_COMMANDS};
use peerlink::wire::{Command, v2};

/// Block 1 of mainnet, as every node serves it.
const BLOCK_1_HEADER: &str = "010000006fe28c0ab6f1b372c1a6a246ae63f74f931e8365e15a089c68d6190000000000982051fd1e4ba744bbbe680e1fee14677ba1a3c3540bf7b1cdb606e857233e0e61bc6649ffff001d01e36299";

/// The BIP324 packet encoding vectors, as the library's tests use them.
const PACKET_VECTORS: &str = include_str!("../../src/wire/v2/vectors/packet_encoding_test_vectors.csv");

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let m = Messages::new();
    let mut written = 0;
    for (target, seeds) in [
        ("v1_decode", v1_seeds(&m)),
        ("v2_decode", v2_seeds(&m)),
        ("socks5_reply", socks5_seeds()),
        ("session", session_seeds(&m)),
        ("addrbook", addrbook_seeds(&m)),
        ("pool", pool_seeds()),
    ] {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("create the corpus directory");
        for (name, bytes) in seeds {
            std::fs::write(dir.join(format!("seed-{name}")), &bytes).expect("write a seed");
            println!("{target}/seed-{name}: {} bytes", bytes.len());
            written += 1;
        }
    }
    println!("{written} seeds written under {}", root.display());
}

/// The real messages the seeds are made of.
struct Messages {
    /// Bitcoin Core 29's `version` to an outbound peer (us: 192.0.2.7).
    core_version: VersionMessage,
    genesis: bitcoin::Block,
    block_1: Header,
    filter: BlockFilter,
}

impl Messages {
    fn new() -> Messages {
        let genesis = bitcoin::constants::genesis_block(Network::Bitcoin);
        assert_eq!(
            genesis.block_hash().to_string(),
            "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"
        );
        let block_1: Header = deserialize(&Vec::from_hex(BLOCK_1_HEADER).expect("hex")).expect("a header");
        assert_eq!(block_1.prev_blockhash, genesis.block_hash());
        block_1.validate_pow(block_1.target()).expect("block 1's proof of work");
        // The genesis block has no inputs to look up.
        let no_prevouts = |_: &bitcoin::OutPoint| -> Result<bitcoin::ScriptBuf, bitcoin::bip158::Error> {
            unreachable!("the genesis block spends nothing")
        };
        let filter = BlockFilter::new_script_filter(&genesis, no_prevouts).expect("a filter");
        // BIP158's test vector (block 0 of testnet3) checks the filter code.
        let testnet = bitcoin::constants::genesis_block(Network::Testnet);
        let vector = BlockFilter::new_script_filter(&testnet, no_prevouts).expect("a filter");
        assert_eq!(vector.content, [0x01, 0x9d, 0xfc, 0xa8]);
        // Core's `version`: NETWORK | WITNESS | NETWORK_LIMITED | P2P_V2,
        // our address with no services, an unspecified sender.
        let services = ServiceFlags::from(0x0c09);
        let core_version = VersionMessage {
            version: 70016,
            services,
            timestamp: 1_745_000_000,
            receiver: Address::new(&SocketAddr::from(([192, 0, 2, 7], 51_234)), ServiceFlags::NONE),
            sender: Address::new(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)), services),
            nonce: 0x5e1f_c0de_2d4a_9b13,
            user_agent: "/Satoshi:29.0.0/".to_owned(),
            start_height: 895_000,
            relay: true,
        };
        Messages { core_version, genesis, block_1, filter }
    }

    fn genesis_hash(&self) -> BlockHash {
        self.genesis.block_hash()
    }

    /// A node's first messages: the handshake and what Core sends after it.
    fn handshake(&self) -> Vec<NetworkMessage> {
        vec![
            NetworkMessage::Version(self.core_version.clone()),
            NetworkMessage::WtxidRelay,
            NetworkMessage::SendAddrV2,
            NetworkMessage::Verack,
            NetworkMessage::SendCmpct(SendCmpct { send_compact: false, version: 2 }),
            NetworkMessage::Ping(0x2c3d_4e5f_6071_8293),
            NetworkMessage::Pong(0x1122_3344_5566_7788),
            NetworkMessage::GetHeaders(GetHeadersMessage {
                version: 70016,
                locator_hashes: vec![self.genesis_hash()],
                stop_hash: BlockHash::all_zeros(),
            }),
            NetworkMessage::FeeFilter(1_000),
        ]
    }

    fn chain(&self) -> Vec<NetworkMessage> {
        let coinbase = self.genesis.txdata[0].clone();
        let block_inv = Inventory::Block(self.genesis_hash());
        vec![
            NetworkMessage::SendHeaders,
            NetworkMessage::Headers(vec![self.genesis.header, self.block_1]),
            NetworkMessage::Inv(vec![block_inv, Inventory::WTx(coinbase.compute_wtxid())]),
            NetworkMessage::GetData(vec![Inventory::WitnessBlock(self.genesis_hash())]),
            NetworkMessage::Block(self.genesis.clone()),
            NetworkMessage::Tx(coinbase.clone()),
            NetworkMessage::NotFound(vec![Inventory::Transaction(coinbase.compute_txid())]),
            NetworkMessage::MerkleBlock(MerkleBlock::from_block_with_predicate(&self.genesis, |_| true)),
            NetworkMessage::CmpctBlock(CmpctBlock {
                compact_block: HeaderAndShortIds::from_block(&self.genesis, 0x0bad_cafe, 2, &[]).expect("compact"),
            }),
            NetworkMessage::MemPool,
        ]
    }

    fn filters(&self) -> Vec<NetworkMessage> {
        let hash = self.genesis_hash();
        let header = self.filter.filter_header(&FilterHeader::all_zeros());
        let filter_hash = FilterHash::hash(&self.filter.content);
        vec![
            NetworkMessage::GetCFilters(GetCFilters { filter_type: 0, start_height: 0, stop_hash: hash }),
            NetworkMessage::CFilter(CFilter { filter_type: 0, block_hash: hash, filter: self.filter.content.clone() }),
            NetworkMessage::GetCFHeaders(GetCFHeaders { filter_type: 0, start_height: 0, stop_hash: hash }),
            NetworkMessage::CFHeaders(CFHeaders {
                filter_type: 0,
                stop_hash: hash,
                previous_filter_header: FilterHeader::all_zeros(),
                filter_hashes: vec![filter_hash],
            }),
            NetworkMessage::GetCFCheckpt(GetCFCheckpt { filter_type: 0, stop_hash: hash }),
            NetworkMessage::CFCheckpt(CFCheckpt { filter_type: 0, stop_hash: hash, filter_headers: vec![header] }),
        ]
    }

    fn addresses(&self) -> Vec<NetworkMessage> {
        let full = ServiceFlags::from(0x0c09);
        let at = |addr, port| AddrV2Message { time: 1_745_000_000, services: full, addr, port };
        // Onion and I2P keys: 32 bytes, as BIP155 sends them.
        let onion = *b"\x2f\x33\x9c\x11\xa0\x5e\x41\x37\x26\x0b\x7a\x93\x64\x92\xd7\x25\xd3\xfc\x36\x48\x9b\xa3\xde\x29\x63\x35\x0f\x32\x91\xb9\x1b\x88";
        vec![
            NetworkMessage::GetAddr,
            NetworkMessage::AddrV2(vec![
                at(AddrV2::Ipv4(Ipv4Addr::new(198, 51, 100, 23)), 8333),
                at(AddrV2::Ipv6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x42)), 8333),
                at(AddrV2::TorV3(onion), 8333),
                at(AddrV2::I2p(onion), 0),
                at(AddrV2::Cjdns(Ipv6Addr::new(0xfc00, 0x1, 0x2, 0x3, 0x4, 0x5, 0x6, 0x7)), 8333),
            ]),
            NetworkMessage::Addr(vec![(
                1_745_000_000,
                Address::new(&SocketAddr::from(([203, 0, 113, 9], 8333)), ServiceFlags::NETWORK),
            )]),
        ]
    }
}

/// A message's command and payload, encoded by rust-bitcoin, checked to
/// decode through peerlink and re-encode to the same bytes.
fn wire(message: &NetworkMessage) -> (&'static str, Vec<u8>) {
    let frame = serialize(&RawNetworkMessage::new(Magic::REGTEST, message.clone()));
    let payload = frame[24..].to_vec();
    let command = KNOWN_COMMANDS.iter().find(|c| **c == message.cmd()).expect("a known command");
    let mut raw = [0u8; 12];
    raw[..command.len()].copy_from_slice(command.as_bytes());
    let decoded = payload::decode(&Command::from_wire(raw).expect("valid"), &payload).expect("peerlink decodes it");
    // Compared as bytes: a decoded `merkleblock` pads its flag bits.
    let mut again = Vec::new();
    payload::encode(&decoded, &mut again);
    assert_eq!(again, payload, "{command} does not decode back");
    (command, payload)
}

fn command_index(command: &str) -> u8 {
    KNOWN_COMMANDS.iter().position(|c| *c == command).expect("known") as u8
}

/// `[command byte][length][payload]` (bit 7 of the command byte: two-byte
/// length), as `v1_decode`, `v2_decode` (B) and `session` (event 9) read it.
fn record(out: &mut Vec<u8>, command_byte: u8, payload: &[u8]) {
    if payload.len() > 255 {
        out.push(command_byte | 0x80);
        out.extend_from_slice(&u16::try_from(payload.len()).expect("fits a record").to_le_bytes());
    } else {
        out.push(command_byte);
        out.push(payload.len() as u8);
    }
    out.extend_from_slice(payload);
}

fn records(out: &mut Vec<u8>, messages: &[NetworkMessage], flags: u8) {
    for m in messages {
        let (command, payload) = wire(m);
        record(out, command_index(command) | flags, &payload);
    }
}

type Seeds = Vec<(String, Vec<u8>)>;

/// `v1_decode`: `[mode][seed]`, then (structured) records or (raw) frames.
fn v1_seeds(m: &Messages) -> Seeds {
    let structured = |seed: u8, messages: &[NetworkMessage]| {
        let mut out = vec![0x00, seed];
        records(&mut out, messages, 0);
        out
    };
    let mut seeds: Seeds = vec![
        ("handshake".to_owned(), structured(0x11, &m.handshake())),
        ("genesis".to_owned(), structured(0x22, &m.chain())),
        ("filters".to_owned(), structured(0x33, &m.filters())),
        ("addresses".to_owned(), structured(0x44, &m.addresses())),
    ];
    // A corrupt checksum after a good ping (bit 6 of the command byte).
    let mut corrupt = vec![0x00, 0x55];
    records(&mut corrupt, &[NetworkMessage::Ping(7)], 0);
    records(&mut corrupt, &[NetworkMessage::Pong(7)], 0x40);
    seeds.push(("corrupt-checksum".to_owned(), corrupt));
    // A 200-byte limit: the handshake fits, the genesis block (285 bytes)
    // does not.
    let mut small = vec![0x04, 200];
    records(&mut small, &[NetworkMessage::Verack, NetworkMessage::Block(m.genesis.clone())], 0);
    seeds.push(("small-limit".to_owned(), small));
    // Raw: whole regtest frames as rust-bitcoin writes them, the first
    // magic supplied by the target (bit 1).
    let mut frames = Vec::new();
    for msg in m.handshake().iter().chain(&m.chain()[..2]) {
        frames.extend_from_slice(&serialize(&RawNetworkMessage::new(Magic::REGTEST, msg.clone())));
    }
    let mut raw = vec![0x03, 0x66];
    raw.extend_from_slice(&frames[4..]);
    seeds.push(("raw-frames".to_owned(), raw));
    // Raw, a mainnet frame on a regtest connection: the magic is refused.
    let mut mainnet = vec![0x01, 0x77];
    mainnet.extend_from_slice(&serialize(&RawNetworkMessage::new(Magic::BITCOIN, NetworkMessage::Verack)));
    seeds.push(("raw-mainnet-magic".to_owned(), mainnet));
    seeds
}

fn hex(s: &str) -> Vec<u8> {
    Vec::from_hex(s).expect("hex")
}

/// `v2_decode`: mode B (an honest sender) with real messages, and mode D
/// (the fuzzer's own sender) replaying the shape of the BIP324 packet
/// vectors.
fn v2_seeds(m: &Messages) -> Seeds {
    let mut seeds = Seeds::new();
    // Mode B: records; bit 6 of the command byte sends the typed message
    // (short id where BIP324 assigns one), else the long form.
    let honest = |mode: u8, seed: u8, messages: &[NetworkMessage], typed: bool| {
        let mut out = vec![mode, seed];
        records(&mut out, messages, if typed { 0x40 } else { 0 });
        out
    };
    seeds.push(("honest-handshake-short-ids".to_owned(), honest(0x01, 0x21, &m.handshake(), true)));
    seeds.push(("honest-handshake-long-form".to_owned(), honest(0x01 | 0x08, 0x32, &m.handshake(), false)));
    seeds.push(("honest-genesis".to_owned(), honest(0x01 | 0x20, 0x43, &m.chain(), true)));
    seeds.push(("honest-filters-responder".to_owned(), honest(0x01 | 0x08 | 0x40, 0x54, &m.filters(), true)));
    // Bit 2: 220 pings first, so these cross the rekey after 224 packets.
    seeds.push(("honest-rekey-addresses".to_owned(), honest(0x01 | 0x04, 0x65, &m.addresses(), true)));

    // Mode D, one seed per vector small enough for a record: the vector's
    // role, garbage length (its associated data), packet number (empty
    // decoys before it), contents (first byte: the message type) and ignore
    // bit. The keys are the target's own: the receiver cannot know the
    // vector's.
    let ping_id = v2::short_id("ping").expect("ping has a short id");
    let mut rows = PACKET_VECTORS.lines();
    let header: Vec<&str> = rows.next().expect("a header").split(',').collect();
    let column = |name: &str| header.iter().position(|c| *c == name).expect("a column");
    for row in rows {
        let cells: Vec<&str> = row.split(',').collect();
        let idx: usize = cells[column("in_idx")].parse().expect("index");
        let initiating = cells[column("in_initiating")] == "1";
        let multiply: usize = cells[column("in_multiply")].parse().expect("multiply");
        let contents = hex(cells[column("in_content")]).repeat(multiply);
        let garbage = hex(cells[column("in_aad")]).len();
        let ignore = cells[column("in_ignore")] == "1";
        if contents.len() > usize::from(u16::MAX) {
            continue; // 4 MB and 16 MB contents: beyond a record
        }
        // The receiver plays the other role.
        let mode = 0x03 | if initiating { 0 } else { 0x08 };
        let mut out = vec![mode, idx as u8];
        out.extend_from_slice(&(garbage as u16).to_le_bytes());
        out.extend_from_slice(&[0, 0]); // no decoys first, an empty version packet
        // Packet 0 is the version packet: then a real ping, decoys, and the
        // vector's packet as number `idx` (the first after the version one
        // when idx is 0).
        let mut packets = 1;
        if idx >= 2 {
            let mut ping = vec![ping_id];
            ping.extend_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
            record(&mut out, 0x00, &ping);
            packets += 1;
        }
        while packets < idx {
            record(&mut out, 0x40, &[]);
            packets += 1;
        }
        record(&mut out, if ignore { 0x40 } else { 0x00 }, &contents);
        seeds.push((format!("vector-{idx}"), out));
    }
    seeds
}

/// `socks5_reply`: `[mode][seed]`, then the proxy's bytes.
fn socks5_seeds() -> Seeds {
    const IPV4: u8 = 0 << 1;
    const IPV6: u8 = 1 << 1;
    const DOMAIN: u8 = 2 << 1;
    const ONION: u8 = 3 << 1;
    const PASSWORD: u8 = 0x01;
    const PREFIXED: u8 = 0x08;
    const EITHER: u8 = 0x10;
    let seed = |mode: u8, chunks: u8, parts: &[&[u8]]| {
        let mut out = vec![mode, chunks];
        for p in parts {
            out.extend_from_slice(p);
        }
        out
    };
    // Method selection, authentication status, and CONNECT replies: bound
    // 127.0.0.1:54321 (microsocks reports its outgoing socket), all-zero
    // IPv4 (Tor), IPv6 and a domain name.
    let no_auth: &[u8] = &[0x05, 0x00];
    let password: &[u8] = &[0x05, 0x02];
    let auth_ok: &[u8] = &[0x01, 0x00];
    let bound_v4: &[u8] = &[0x05, 0x00, 0x00, 0x01, 127, 0, 0, 1, 0xd4, 0x31];
    let tor_ok: &[u8] = &[0x05, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    let bound_v6: &[u8] =
        &[0x05, 0x00, 0x00, 0x04, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x20, 0x8d];
    let bound_name: &[u8] = b"\x05\x00\x00\x03\x09localhost\x20\x8d";
    let fail = |code: u8| -> Vec<u8> { vec![0x05, code, 0x00, 0x01, 0, 0, 0, 0, 0, 0] };
    // The peer's first bytes through the tunnel: a regtest v1 `version` header.
    let mut tunnel = Magic::REGTEST.to_bytes().to_vec();
    tunnel.extend_from_slice(b"version\0\0\0\0\0");
    vec![
        ("no-auth-ipv4".to_owned(), seed(IPV4, 0x01, &[no_auth, bound_v4])),
        ("password-ipv6".to_owned(), seed(PASSWORD | IPV6, 0x02, &[password, auth_ok, bound_v6])),
        ("no-auth-domain".to_owned(), seed(DOMAIN, 0x03, &[no_auth, bound_name])),
        ("tor-isolation-onion".to_owned(), seed(PASSWORD | EITHER | ONION, 0x04, &[password, auth_ok, tor_ok])),
        ("tor-either-no-auth".to_owned(), seed(PASSWORD | EITHER | IPV4, 0x05, &[no_auth, tor_ok])),
        ("connected-then-tunnel".to_owned(), seed(IPV4, 0x06, &[no_auth, bound_v4, &tunnel])),
        ("prefixed-connect-only".to_owned(), seed(PREFIXED | DOMAIN, 0x07, &[bound_v4])),
        ("refused".to_owned(), seed(IPV4, 0x08, &[no_auth, &fail(0x05)])),
        ("host-unreachable".to_owned(), seed(DOMAIN, 0x09, &[no_auth, &fail(0x04)])),
        ("general-failure".to_owned(), seed(PASSWORD | IPV6, 0x0a, &[password, auth_ok, &fail(0x01)])),
        // Tor's extended errors: descriptor not found, introduction timed out.
        ("tor-onion-not-found".to_owned(), seed(PASSWORD | EITHER | ONION, 0x0b, &[password, auth_ok, &fail(0xf0)])),
        ("tor-intro-timeout".to_owned(), seed(ONION, 0x0c, &[no_auth, &fail(0xf7)])),
        ("no-acceptable-method".to_owned(), seed(PASSWORD, 0x0d, &[&[0x05, 0xff]])),
        ("auth-failed".to_owned(), seed(PASSWORD | DOMAIN, 0x0e, &[password, &[0x01, 0x01]])),
    ]
}

/// The `session` target's events (see its header comment).
mod ev {
    pub const TICK: u8 = 0;
    pub const VERACK: u8 = 2;
    pub const PING: u8 = 3;
    pub const PONG_OURS: u8 = 4;
    pub const WTXIDRELAY: u8 = 6;
    pub const SENDADDRV2: u8 = 7;
    pub const SENDHEADERS: u8 = 8;
    pub const WIRE: u8 = 9;
    pub const CONNECTED: u8 = 10;
    pub const PING_NOW: u8 = 11;
    // Clock advances (indices into the target's `ADVANCES`).
    pub const NOW: u8 = 0;
    pub const MS: u8 = 1;
    pub const S30: u8 = 5;
    pub const S60: u8 = 7;
    pub const S61: u8 = 8;
    pub const S120: u8 = 10;
    pub const S1200: u8 = 13;
}

struct Events(Vec<u8>);

impl Events {
    fn new(config: u8, timers: u8, nonce: u64) -> Events {
        let mut out = vec![config, timers];
        out.extend_from_slice(&nonce.to_le_bytes());
        Events(out)
    }

    fn at(&mut self, advance: u8, event: u8) -> &mut Events {
        self.0.push(advance << 4 | event);
        self
    }

    fn wire(&mut self, advance: u8, message: &NetworkMessage) -> &mut Events {
        self.at(advance, ev::WIRE);
        let (command, payload) = wire(message);
        record(&mut self.0, command_index(command), &payload);
        self
    }

    fn ping(&mut self, advance: u8, nonce: u8) -> &mut Events {
        self.at(advance, ev::PING);
        self.0.push(nonce);
        self
    }
}

/// `session`: honest handshakes in both directions as Bitcoin Core runs
/// them, then keepalive; and the timeouts.
fn session_seeds(m: &Messages) -> Seeds {
    use ev::*;
    const OUTBOUND: u8 = 0;
    const INBOUND: u8 = 1;
    let nonce = 0x1122_3344_5566_7788;
    let version = NetworkMessage::Version(m.core_version.clone());
    let sendcmpct = NetworkMessage::SendCmpct(SendCmpct { send_compact: false, version: 2 });
    let [_, _, _, _, _, _, _, getheaders, feefilter] = m.handshake().try_into().expect("nine messages");
    let headers = NetworkMessage::Headers(vec![m.genesis.header, m.block_1]);
    let inv = NetworkMessage::Inv(vec![Inventory::Block(m.block_1.block_hash())]);

    // Outbound to Core: our version at start; Core's version, wtxidrelay,
    // sendaddrv2 and verack; then sendcmpct, a ping, getheaders, feefilter,
    // the pong to our first ping; a ping every two minutes.
    let mut outbound = Events::new(OUTBOUND, 0x40, nonce);
    outbound
        .wire(MS, &version)
        .wire(NOW, &NetworkMessage::WtxidRelay)
        .wire(NOW, &NetworkMessage::SendAddrV2)
        .at(MS, VERACK)
        .wire(NOW, &sendcmpct)
        .ping(NOW, 0x5a)
        .wire(NOW, &getheaders)
        .wire(NOW, &feefilter)
        .at(MS, PONG_OURS)
        .wire(MS, &headers)
        .at(S120, TICK)
        .at(MS, PONG_OURS)
        .wire(S30, &inv)
        .at(S120, TICK)
        .at(MS, PONG_OURS);

    // Inbound from Core: its version, answered with ours, wtxidrelay,
    // sendaddrv2, verack; its wtxidrelay, sendaddrv2, verack; sendheaders
    // and pings both ways.
    let mut inbound = Events::new(INBOUND | 0x02, 0x00, nonce);
    inbound
        .wire(MS, &version)
        .at(MS, WTXIDRELAY)
        .at(NOW, SENDADDRV2)
        .at(NOW, VERACK)
        .at(NOW, SENDHEADERS)
        .wire(NOW, &sendcmpct)
        .ping(NOW, 0x33)
        .at(MS, PONG_OURS)
        .wire(NOW, &getheaders)
        .at(S60, PING_NOW)
        .at(MS, PONG_OURS)
        .at(S120, TICK)
        .ping(S30, 0x44)
        .at(MS, PONG_OURS);

    // An old peer (70015: no wtxidrelay, no sendaddrv2) with the session
    // messages forwarded and sendheaders on.
    let mut old = Events::new(OUTBOUND | 0x02 | 0x04, 0x00, nonce);
    let mut v70015 = m.core_version.clone();
    v70015.version = 70015;
    v70015.user_agent = "/Satoshi:0.20.1/".to_owned();
    old.wire(MS, &NetworkMessage::Version(v70015))
        .at(NOW, VERACK)
        .at(MS, PONG_OURS)
        .ping(NOW, 0x01)
        .at(S120, TICK)
        .at(MS, PONG_OURS);

    // The connect completes after 30 s; the handshake finishes 61 s after
    // the session was made but within 60 s of the connect.
    let mut late = Events::new(OUTBOUND, 0x00, nonce);
    late.at(S30, CONNECTED).wire(S30, &version).at(MS, VERACK).at(MS, PONG_OURS).at(S61, TICK);

    // No verack: the handshake times out at 60 s.
    let mut no_verack = Events::new(INBOUND, 0x00, nonce);
    no_verack.wire(MS, &version).at(S30, TICK).at(S30, TICK);

    // No pong within 20 minutes.
    let mut no_pong = Events::new(OUTBOUND, 0x00, nonce);
    no_pong.wire(MS, &version).at(NOW, VERACK).at(S1200, TICK);

    // An inbound peer whose version carries the nonce of one of our
    // outbound connections (the structured version, event 1: nonce 1).
    let mut ourselves = Events::new(INBOUND, 0x00, nonce);
    ourselves.at(MS, 1);
    ourselves.0.extend_from_slice(&[0, 0x05, 1, 0]);

    vec![
        ("outbound-core".to_owned(), outbound.0),
        ("inbound-core".to_owned(), inbound.0),
        ("outbound-70015-forward".to_owned(), old.0),
        ("connected-late".to_owned(), late.0),
        ("handshake-timeout".to_owned(), no_verack.0),
        ("ping-timeout".to_owned(), no_pong.0),
        ("self-connection".to_owned(), ourselves.0),
    ]
}

/// `addrbook` seeds: saved books (as they are, and without their checksum
/// for the sealing mode) and operation sequences (mode 2).
fn addrbook_seeds(m: &Messages) -> Seeds {
    use peerlink::discovery::addrbook::{AddrBook, AddrRateLimit, Address as BookAddress};
    use peerlink::netgroup::NetGroup;

    let now = 1_745_000_600;
    let mut book = AddrBook::new([7; 32]);
    // The seed messages use documentation ranges, which are unroutable.
    book.set_allow_unroutable(true);
    let source = NetGroup::of_ip("203.0.113.9".parse().expect("an ip"));
    let mut limit = AddrRateLimit::new();
    limit.on_getaddr_sent();
    for message in m.addresses() {
        book.add_message(&message, &source, now, &mut limit);
    }
    assert_eq!(book.len(), 6, "every seed address is kept");
    let first = BookAddress::from(SocketAddr::from(([198, 51, 100, 23], 8333)));
    book.attempt(&first, true, now);
    book.good(&first, now + 5);
    let saved = book.export();
    assert_eq!(AddrBook::import(&saved, [0; 32]).expect("an export loads"), book);

    let with_mode = |mode: u8, body: &[u8]| {
        let mut out = vec![mode];
        out.extend_from_slice(body);
        out
    };
    let unsealed = &saved[..saved.len() - 32];

    // An addrv2 message of five addresses after a getaddr, a select, a good,
    // a failed attempt, loopback allowed, an add, a sweep, a round trip.
    let mut gossip = vec![3, 5, 6, 1, 7, 2, 0, 3, 1, 4, 2, 5, 1, 0];
    gossip.extend_from_slice(&[9, 0, 6, 6, 1, 4, 7, 2, 1, 12, 1, 0, 3, 5, 1, 1, 2, 11, 13, 0]);
    // 64 hosts of one /16 added and made good: tried collisions; then
    // time passes, collisions are tested and resolved, and selects.
    let mut collisions = Vec::new();
    for host in 0..64 {
        collisions.extend_from_slice(&[0, 6, host, 1, 1, 0, 6, 6, host]);
    }
    collisions.extend_from_slice(&[13, 50, 10, 0, 13, 30, 10, 1, 9, 2, 9, 6, 13, 0]);

    vec![
        ("empty".to_owned(), with_mode(0, &AddrBook::new([0; 32]).export())),
        ("gossip-book".to_owned(), with_mode(0, &saved)),
        ("gossip-book-unsealed".to_owned(), with_mode(1, unsealed)),
        ("ops-gossip".to_owned(), with_mode(2, &gossip)),
        ("ops-collisions".to_owned(), with_mode(2, &collisions)),
    ]
}

/// `pool` seeds (layout in `src/discovery/pool/ops.rs`): one byte pair of
/// configuration per flag combination of interest, the six fixed-seed
/// addresses and the book seed, then a script: a tick (the seeds are
/// asked), lookup answers, handshakes with and without the services, an
/// `addrv2` of mixed networks, failures, a manual peer and time jumps.
fn pool_seeds() -> Seeds {
    // Op codes: 0 tick (jump, scale), 1 ready (peer, services lo, hi),
    // 2 connect failed (peer), 3 disconnected (peer), 4 addr (peer, n, v2,
    // entries..., age), 6 lookup answer (which, ok, n, ips...), 7 manual
    // (kind, address), 8 an inbound peer (byte).
    let mut script = vec![0, 1, 1];
    script.extend([6, 0, 1, 12]);
    script.extend((0..12u8).flat_map(|i| [i * 7, i, i * 3]));
    for peer in 0..4u8 {
        script.extend([1, peer, 0x09, 0x00]);
    }
    script.extend([1, 4, 0x01, 0x00]);
    script.extend([4, 0, 8, 0]);
    for kind in 0..8u8 {
        script.extend([kind, 1, 30 + kind, kind, 9, 1]);
    }
    script.push(3);
    script.extend([2, 5, 3, 1, 0, 10, 2]);
    script.extend([7, 0, 0, 44, 1, 2, 3]);
    script.extend([8, 77, 0, 200, 3, 0, 60, 2]);
    let fixed: Vec<u8> = (0..6u8).flat_map(|i| [i, 20 + i, 1, 2, 3, 4]).collect();
    let mut seeds = Vec::new();
    for (name, flags) in [("direct", 0u8), ("proxy", 0x06), ("onlynet-ipv4", 0x08), ("feelers-one-group", 0x11)] {
        let mut bytes = vec![7, flags];
        bytes.extend(&fixed);
        bytes.push(42);
        bytes.extend(&script);
        seeds.push((format!("script-{name}"), bytes));
    }
    seeds
}
