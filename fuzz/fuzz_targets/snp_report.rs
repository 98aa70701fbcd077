//! Fuzzes SEV-SNP report parsing and verification with the sev crate's recorded Milan report,
//! VCEK and chain: the first input byte picks which of the three the rest of the input replaces.
#![no_main]

use chrysalis_attestation::SnpReport;
use chrysalis_attestation::verify::{SnpCertificates, verify_snp};
use chrysalis_fuzz::fixtures::{self, NOW, snp_mode};
use libfuzzer_sys::fuzz_target;

/// Bytes of the report that its signature covers.
const SIGNED_LEN: usize = 0x2A0;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let rec = fixtures::recorded_snp();
    match mode % snp_mode::COUNT {
        snp_mode::REPORT | snp_mode::REPORT_BUILTIN_CHAIN => {
            if let Ok(r) = SnpReport::parse(rest) {
                let _ = (r.measurements(), r.report_data(), r.version());
            }
            let chain = mode % snp_mode::COUNT == snp_mode::REPORT;
            if verify_snp(rest, &rec.certs(chain), NOW).is_ok() {
                // Only AMD's key can sign: an accepted report is the recorded one.
                assert_eq!(&rest[..SIGNED_LEN], &rec.report[..SIGNED_LEN]);
            }
        }
        snp_mode::VCEK => {
            let certs = SnpCertificates {
                vcek_der: rest.to_vec(),
                chain: Some(rec.chain.clone()),
            };
            let _ = verify_snp(&rec.report, &certs, NOW);
        }
        _ => {
            let certs = SnpCertificates {
                vcek_der: rec.vcek.clone(),
                chain: Some(rest.to_vec()),
            };
            let _ = verify_snp(&rec.report, &certs, NOW);
        }
    }
});
