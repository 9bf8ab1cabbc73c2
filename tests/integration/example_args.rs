//! The examples' shared argument helpers (examples/common), which the
//! examples' own command lines depend on.

use bitcoin::Network;

use crate::example_common::network;

#[test]
fn network_names_are_cores_plus_aliases() {
    let cases = [
        ("main", Network::Bitcoin),
        ("mainnet", Network::Bitcoin),
        ("bitcoin", Network::Bitcoin),
        ("test", Network::Testnet),
        ("testnet", Network::Testnet),
        ("testnet3", Network::Testnet),
        ("testnet4", Network::Testnet4),
        ("signet", Network::Signet),
        ("regtest", Network::Regtest),
    ];
    for (name, expected) in cases {
        assert_eq!(network(name), Ok(expected), "{name}");
    }
    for bad in ["", "Main", "regtest ", "testnet5", "liquid"] {
        let err = network(bad).expect_err(bad);
        assert!(err.contains(&format!("{bad:?}")), "the error names the input: {err}");
    }
}
