//! Fixed inputs of the fuzz targets (time, simulated PKI, policy, recorded SNP certificates) and
//! the seed corpus built from them.
//!
//! Shared by the fuzz crate and by `attestation/examples/fuzz_seeds.rs`, so seeds and targets
//! agree on every constant. Recorded vectors are read at run
//! time from the registry packages (located with `cargo metadata`) and from `shared/testvectors`;
//! none is copied into the repository.

use std::path::PathBuf;
use std::sync::OnceLock;

use chrysalis_attestation::evidence::decode_binary_or_hex;
use chrysalis_attestation::measure::eventlog::EventLog;
use chrysalis_attestation::policy::TdxPin;
use chrysalis_attestation::ratls::{self, AttestedKey};
use chrysalis_attestation::sim::{self, SimPki, SimTdReport};
use chrysalis_attestation::verify::{SnpCertificates, TrustAnchors};
use chrysalis_attestation::{Evidence, Measurement, Policy, ReportData};
use dcap_qvl::QuoteCollateralV3;

use crate::fixtures;

/// The verification time of every target: inside the recorded dcap-qvl sample collateral's
/// validity, the recorded Milan VCEK's, and the simulated certificates'.
pub const NOW: u64 = 1_750_500_000;

/// MRTD that the fuzz policy pins and the seed quotes carry.
pub const MR_TD: Measurement = Measurement([0x42; 48]);

/// RTMR0-3 of the seed quotes (RTMR1 and RTMR2 pinned).
pub const RTMRS: [Measurement; 4] = [
    Measurement::ZERO,
    Measurement([1; 48]),
    Measurement([2; 48]),
    Measurement::ZERO,
];

/// First byte of an `snp_report` input: what the rest of the input replaces.
pub mod snp_mode {
    /// The report, verified with the recorded VCEK and chain file.
    pub const REPORT: u8 = 0;
    /// The report, verified with the recorded VCEK and the built-in AMD chain.
    pub const REPORT_BUILTIN_CHAIN: u8 = 1;
    /// The VCEK (DER), with the recorded report and chain file.
    pub const VCEK: u8 = 2;
    /// The ASK/ARK chain file, with the recorded report and VCEK.
    pub const CHAIN: u8 = 3;
    /// Number of modes (the first byte is taken modulo this).
    pub const COUNT: u8 = 4;
}

/// The simulated Intel PKI of the well-known seed.
pub fn sim_pki() -> &'static SimPki {
    static PKI: OnceLock<SimPki> = OnceLock::new();
    PKI.get_or_init(|| SimPki::from_seed(sim::DEFAULT_SEED))
}

/// Simulated collateral current at [`NOW`].
pub fn sim_collateral() -> &'static QuoteCollateralV3 {
    static C: OnceLock<QuoteCollateralV3> = OnceLock::new();
    C.get_or_init(|| {
        sim_pki()
            .collateral(NOW - 3600, 30 * 86_400)
            .expect("sim collateral")
    })
}

/// Intel's and AMD's roots plus the simulated root.
pub fn anchors() -> TrustAnchors {
    TrustAnchors::vendor().dangerous_with_simulated_intel_root(sim_pki().root_sha256())
}

/// A policy naming the simulated root and pinning [`MR_TD`], RTMR1 and RTMR2.
pub fn sim_policy() -> &'static Policy {
    static P: OnceLock<Policy> = OnceLock::new();
    P.get_or_init(|| {
        let pin = TdxPin {
            name: Some("fuzz".into()),
            rtmr1: Some(RTMRS[1]),
            rtmr2: Some(RTMRS[2]),
            ..TdxPin::new(MR_TD)
        };
        let mut p = Policy::pinned(vec![pin], vec![]);
        p.trust
            .dangerous_simulated_intel_roots
            .push(sim_pki().root_sha256());
        p
    })
}

/// A simulated quote with [`MR_TD`] and [`RTMRS`] over `report_data`.
pub fn sim_quote(report_data: ReportData) -> Vec<u8> {
    sim_quote_of(MR_TD, report_data)
}

fn sim_quote_of(mr_td: Measurement, report_data: ReportData) -> Vec<u8> {
    sim_pki().quote(&SimTdReport::new(
        sim::td_measurements(mr_td, RTMRS),
        report_data,
    ))
}

/// The recorded dcap-qvl sample collateral of `quote` (e.g. "tdx_quote").
pub fn recorded_tdx(quote: &str) -> (Vec<u8>, QuoteCollateralV3) {
    let q = fixtures::registry_file("dcap-qvl", &format!("sample/{quote}"));
    let c = fixtures::registry_file("dcap-qvl", &format!("sample/{quote}_collateral.json"));
    (q, serde_json::from_slice(&c).expect("collateral JSON"))
}

/// The recorded dcap-qvl sample collateral that goes with `sample/tdx_quote`, valid at [`NOW`].
pub fn recorded_tdx_collateral() -> &'static QuoteCollateralV3 {
    static C: OnceLock<QuoteCollateralV3> = OnceLock::new();
    C.get_or_init(|| recorded_tdx("tdx_quote").1)
}

/// The sev crate's recorded Milan report, VCEK and ASK/ARK chain.
pub struct RecordedSnp {
    /// The report (binary).
    pub report: Vec<u8>,
    /// The VCEK, DER.
    pub vcek: Vec<u8>,
    /// ASK and ARK, PEM.
    pub chain: Vec<u8>,
}

impl RecordedSnp {
    /// The certificates, with the chain file or (`chain == false`) the built-in AMD chain.
    pub fn certs(&self, chain: bool) -> SnpCertificates {
        SnpCertificates {
            vcek_der: self.vcek.clone(),
            chain: chain.then(|| self.chain.clone()),
        }
    }
}

/// See [`RecordedSnp`].
pub fn recorded_snp() -> &'static RecordedSnp {
    static R: OnceLock<RecordedSnp> = OnceLock::new();
    R.get_or_init(|| RecordedSnp {
        report: decode_binary_or_hex(&fixtures::registry_file(
            "sev",
            "tests/certs_data/report_milan.hex",
        ))
        .0,
        vcek: fixtures::registry_file("sev", "tests/certs_data/vcek_milan.der"),
        chain: fixtures::registry_file("sev", "tests/certs_data/cert_chain_milan"),
    })
}

/// `shared/testvectors/tdx-ccel`, found above this crate's directory.
pub fn ccel_dir() -> Option<PathBuf> {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|a| a.join("shared/testvectors/tdx-ccel"))
        .find(|p| p.is_dir())
}

/// One seed input of one target.
pub struct Seed {
    /// The fuzz target (a directory under `corpus/`).
    pub target: &'static str,
    /// File name.
    pub name: String,
    /// The input.
    pub data: Vec<u8>,
}

fn seed(target: &'static str, name: impl Into<String>, data: Vec<u8>) -> Seed {
    Seed {
        target,
        name: name.into(),
        data,
    }
}

/// An RA-TLS certificate with simulated evidence that [`sim_policy`] accepts at [`NOW`].
pub fn sim_ratls_cert() -> Vec<u8> {
    sim_ratls_cert_of(MR_TD)
}

/// An RA-TLS certificate with simulated evidence of `mr_td`, valid at [`NOW`].
pub fn sim_ratls_cert_of(mr_td: Measurement) -> Vec<u8> {
    let key = AttestedKey::generate().expect("key");
    let bundle = Evidence::tdx(
        sim_quote_of(mr_td, key.report_data()),
        Some(sim_collateral().clone()),
    )
    .expect("evidence parses");
    ratls::issue_certificate(&key, &bundle, NOW - 60, 3600)
        .expect("issue")
        .to_vec()
}

/// Every seed: simulated evidence made now, and recorded vectors read from where they ship.
pub fn seeds() -> Vec<Seed> {
    let mut out = Vec::new();

    // tdx_quote: simulated v4 quotes and the recorded quotes (v4, v5, outdated, SGX).
    out.push(seed("tdx_quote", "sim-v4", sim_quote(ReportData([7; 64]))));
    let mut debug = sim::td_measurements(MR_TD, RTMRS);
    debug.td_attributes.0[0] |= 1;
    out.push(seed(
        "tdx_quote",
        "sim-v4-debug",
        sim_pki().quote(&SimTdReport::new(debug, ReportData::ZERO)),
    ));
    let mut outdated = SimTdReport::new(sim::td_measurements(MR_TD, RTMRS), ReportData::ZERO);
    outdated.tee_tcb_svn = sim::TEE_TCB_SVN_OUT_OF_DATE;
    out.push(seed(
        "tdx_quote",
        "sim-v4-outdated",
        sim_pki().quote(&outdated),
    ));
    for q in [
        "tdx_quote",
        "tdx_quote_td15ex",
        "tdx_quote_outdated",
        "sgx_quote",
    ] {
        out.push(seed(
            "tdx_quote",
            format!("recorded-{q}"),
            fixtures::registry_file("dcap-qvl", &format!("sample/{q}")),
        ));
    }

    // snp_report: mode byte, then the part that the mode replaces.
    let snp = recorded_snp();
    for (mode, name, part) in [
        (snp_mode::REPORT, "report", &snp.report),
        (
            snp_mode::REPORT_BUILTIN_CHAIN,
            "report-builtin",
            &snp.report,
        ),
        (snp_mode::VCEK, "vcek", &snp.vcek),
        (snp_mode::CHAIN, "chain", &snp.chain),
    ] {
        let mut data = vec![mode];
        data.extend_from_slice(part);
        out.push(seed("snp_report", format!("recorded-milan-{name}"), data));
    }

    // ratls_cert: a certificate the policy accepts, and one whose measurement it does not pin.
    out.push(seed("ratls_cert", "sim-accepted", sim_ratls_cert()));
    out.push(seed(
        "ratls_cert",
        "sim-unpinned",
        sim_ratls_cert_of(Measurement([0x43; 48])),
    ));

    // evidence_bundle: simulated and recorded TDX bundles, recorded SNP bundles.
    let bundles = [
        (
            "sim-tdx",
            Evidence::tdx(sim_quote(ReportData::ZERO), Some(sim_collateral().clone()))
                .expect("evidence parses"),
        ),
        ("sim-tdx-no-collateral", {
            Evidence::tdx(sim_quote(ReportData::ZERO), None).expect("evidence parses")
        }),
        ("recorded-tdx", {
            let (q, c) = recorded_tdx("tdx_quote");
            Evidence::tdx(q, Some(c)).expect("evidence parses")
        }),
        (
            "recorded-snp-chain",
            Evidence::snp(
                snp.report.clone(),
                Some(snp.vcek.clone()),
                Some(snp.chain.clone()),
            )
            .expect("evidence parses"),
        ),
        (
            "recorded-snp-builtin",
            Evidence::snp(snp.report.clone(), Some(snp.vcek.clone()), None)
                .expect("evidence parses"),
        ),
    ];
    for (name, b) in bundles {
        out.push(seed(
            "evidence_bundle",
            name,
            b.to_der().expect("bundle DER"),
        ));
    }

    // eventlog: the recorded CCEL log, trimmed to what the log occupies.
    if let Some(dir) = ccel_dir() {
        let raw = std::fs::read(dir.join("ccel_data.dat")).expect("read ccel_data.dat");
        let log = EventLog::parse(&raw).expect("recorded CCEL log parses");
        out.push(seed("eventlog", "recorded-ccel", raw[..log.len].to_vec()));
        out.push(seed(
            "tdx_quote",
            "recorded-ccel-quote",
            std::fs::read(dir.join("cos-113-tdx-quote.dat")).expect("read quote"),
        ));
    }
    out
}
