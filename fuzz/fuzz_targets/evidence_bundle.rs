//! Fuzzes evidence-bundle DER decoding (and its round trip), then verifies what decodes, so the
//! carried collateral, VCEK and chain are fuzzed too.
#![no_main]

use chrysalis_attestation::Evidence;
use chrysalis_attestation::verify::verify;
use chrysalis_fuzz::fixtures::{self, NOW};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(bundle) = Evidence::from_der(data) else {
        return;
    };
    // DER is canonical: what decodes re-encodes to the same bytes.
    let der = bundle.to_der().expect("a decoded bundle encodes");
    assert_eq!(der, data, "bundle DER does not round-trip");
    let _ = verify(&bundle, &fixtures::anchors(), None, NOW);
});
