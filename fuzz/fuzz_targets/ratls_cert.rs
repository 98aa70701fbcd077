//! Fuzzes RA-TLS certificate decoding and verification under a policy naming the simulated root.
#![no_main]

use chrysalis_attestation::ratls::{extract_bundle, verify_certificate};
use chrysalis_fuzz::fixtures::{self, NOW};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = extract_bundle(data);
    match verify_certificate(data, fixtures::sim_policy(), None, NOW) {
        Ok(peer) => {
            let _ = (peer.valid_until(), peer.spki_sha256());
        }
        Err(rejection) => {
            // Every rejection names at least one reason.
            assert!(!rejection.reasons.is_empty());
            let _ = rejection.to_string();
        }
    }
});
