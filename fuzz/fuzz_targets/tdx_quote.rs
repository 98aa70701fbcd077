//! Fuzzes TDX quote parsing and verification (dcap-qvl path) against fixed collateral: the
//! simulated PKI's, and the recorded dcap-qvl sample's under Intel's root.
#![no_main]

use chrysalis_attestation::TdxQuote;
use chrysalis_attestation::verify::verify_tdx;
use chrysalis_fuzz::fixtures::{self, NOW};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(q) = TdxQuote::parse(data) {
        let _ = (
            q.measurements(),
            q.report_data(),
            q.tee_tcb_svn(),
            q.version(),
        );
    }
    let anchors = fixtures::anchors();
    for collateral in [
        fixtures::sim_collateral(),
        fixtures::recorded_tdx_collateral(),
    ] {
        if let Ok(v) = verify_tdx(data, collateral, &anchors, NOW) {
            // A verified quote is a parseable quote, and the verdict reports its own fields.
            let q = TdxQuote::parse(data).expect("verified quote parses");
            assert_eq!(v.report_data, q.report_data());
        }
    }
});
