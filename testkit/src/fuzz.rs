//! Fixed inputs of the fuzz targets (time, simulated PKI, policy, recorded SNP certificates) and
//! the seed corpus built from them.
//!
//! Shared by the fuzz crate (fuzz/) and by `attestation/examples/fuzz_seeds.rs`, so seeds and
//! targets agree on every constant. Recorded vectors are read at run time from the registry
//! packages (located with `cargo metadata`) and from `shared/testvectors`; none is copied into the
//! repository. The committed corpora (fuzz/corpus) start from the seeds that are not recorded
//! ([`Seed::recorded`] false): simulated evidence, hand-written requests, streams and frames.

use std::path::PathBuf;
use std::sync::OnceLock;

use chrysalis_attestation::evidence::decode_binary_or_hex;
use chrysalis_attestation::hostcall::{self, Request, Response};
use chrysalis_attestation::measure::eventlog::EventLog;
use chrysalis_attestation::policy::TdxPin;
use chrysalis_attestation::ratls::{self, AttestedKey};
use chrysalis_attestation::receipt::{self, RECEIPT_VERSION, ReceiptBody, Usage};
use chrysalis_attestation::sim::{self, SimAmdPki, SimPki, SimSnpReport, SimTdReport};
use chrysalis_attestation::verify::{SnpCertificates, TrustAnchors};
use chrysalis_attestation::{Evidence, Measurement, Policy, ReportData, Sha256};
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

/// The model id the guest-side targets serve.
pub const MODEL: &str = "smollm2-135m-instruct";

/// One seed input of one target.
pub struct Seed {
    /// The fuzz target (a directory under `corpus/`).
    pub target: &'static str,
    /// File name.
    pub name: String,
    /// The input.
    pub data: Vec<u8>,
    /// Read from a recorded vector (registry package or `shared/testvectors`): never committed.
    pub recorded: bool,
}

fn seed(target: &'static str, name: impl Into<String>, data: Vec<u8>) -> Seed {
    let name = name.into();
    Seed {
        target,
        recorded: name.starts_with("recorded-"),
        name,
        data,
    }
}

/// A small synthetic CCEL (crypto-agile) log: the Spec ID header declaring SHA-384, then an
/// event in each RTMR with printable, UEFI-variable and separator data.
pub fn synthetic_ccel() -> Vec<u8> {
    const SHA384: u16 = 0x000C;
    let mut log = Vec::new();
    let mut spec = b"Spec ID Event03\0".to_vec();
    spec.extend_from_slice(&0u32.to_le_bytes()); // platform class
    spec.extend_from_slice(&[0, 2, 0, 2]); // minor, major, errata, UINTN size
    spec.extend_from_slice(&1u32.to_le_bytes());
    spec.extend_from_slice(&SHA384.to_le_bytes());
    spec.extend_from_slice(&48u16.to_le_bytes());
    spec.push(0); // vendor info size
    log.extend_from_slice(&0u32.to_le_bytes());
    log.extend_from_slice(&0x3u32.to_le_bytes()); // EV_NO_ACTION
    log.extend_from_slice(&[0; 20]);
    log.extend_from_slice(&(spec.len() as u32).to_le_bytes());
    log.extend_from_slice(&spec);
    let mut variable = vec![0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11];
    variable.extend_from_slice(&[0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c]);
    variable.extend_from_slice(&4u64.to_le_bytes()); // name length (UTF-16 units)
    variable.extend_from_slice(&2u64.to_le_bytes()); // data length
    variable.extend_from_slice(b"B\0o\0o\0t\0");
    variable.extend_from_slice(&[1, 0]);
    let events: [(u32, u32, &[u8]); 4] = [
        (1, 0x8000_0001, &variable),    // RTMR0, EV_EFI_VARIABLE_DRIVER_CONFIG
        (1, 0x4, &[0, 0, 0, 0]),        // RTMR0, EV_SEPARATOR
        (2, 0xD, b"console=hvc0 ro\0"), // RTMR1, EV_IPL
        (3, 0x6, &[0xEC, 0x22, 0x3B, 0x8F, 4, 0, 0, 0, 1, 2, 3, 4]), // RTMR2, EV_EVENT_TAG
    ];
    for (index, kind, data) in events {
        log.extend_from_slice(&index.to_le_bytes());
        log.extend_from_slice(&kind.to_le_bytes());
        log.extend_from_slice(&1u32.to_le_bytes());
        log.extend_from_slice(&SHA384.to_le_bytes());
        log.extend_from_slice(&sha384(data));
        log.extend_from_slice(&(data.len() as u32).to_le_bytes());
        log.extend_from_slice(data);
    }
    log.extend_from_slice(&[0xFF; 8]);
    log
}

fn sha384(data: &[u8]) -> [u8; 48] {
    chrysalis_attestation::measure::eventlog::sha384(data).0
}

/// A receipt signed by a fresh key, as the `receipt` target reads it: the SPKI's length (u16 BE),
/// the SPKI DER, then the JWS.
fn receipt_input(stream: bool) -> Vec<u8> {
    let key = AttestedKey::generate().expect("key");
    let body = ReceiptBody {
        v: RECEIPT_VERSION,
        request_sha256: Sha256::digest(b"{}"),
        response_sha256: Sha256::digest(b"response"),
        stream,
        model: MODEL.into(),
        model_root_hash: "ab".repeat(32),
        usage: Usage {
            prompt_tokens: 9,
            completion_tokens: 5,
            total_tokens: 14,
        },
        created: NOW,
        signer_spki_sha256: key.spki_sha256(),
    };
    let jws = receipt::sign(&key, &body).expect("sign");
    let spki = key.spki_der();
    let mut out = (spki.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(spki);
    out.extend_from_slice(jws.as_bytes());
    out
}

fn prefixed(mode: u8, data: &[u8]) -> Vec<u8> {
    let mut out = vec![mode];
    out.extend_from_slice(data);
    out
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

/// Every seed: simulated evidence made now, hand-written inputs, and recorded vectors read from
/// where they ship (marked [`Seed::recorded`]).
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

    // snp_report: the simulated AMD PKI's report, VCEK and chain in each mode.
    let amd = SimAmdPki::from_seed(sim::DEFAULT_SEED);
    let sim_report = amd.report(&SimSnpReport::new(
        Measurement([0x42; 48]),
        ReportData([7; 64]),
    ));
    for (mode, name, part) in [
        (snp_mode::REPORT, "report", sim_report.clone()),
        (snp_mode::REPORT_BUILTIN_CHAIN, "report-builtin", sim_report),
        (snp_mode::VCEK, "vcek", amd.vcek_der().to_vec()),
        (snp_mode::CHAIN, "chain", amd.chain_pem().into_bytes()),
    ] {
        out.push(seed(
            "snp_report",
            format!("sim-{name}"),
            prefixed(mode, &part),
        ));
    }
    out.push(seed("eventlog", "synthetic", synthetic_ccel()));

    // guest_request: mode byte (even: chat, odd: completions), then the body.
    let bodies: [(u8, &str, String); 6] = [
        (
            0,
            "chat",
            format!(
                r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"Hello!"}}],"max_tokens":32}}"#
            ),
        ),
        (
            0,
            "chat-stream",
            format!(
                r#"{{"model":"{MODEL}","messages":[{{"role":"system","content":"Be brief."}},{{"role":"user","content":[{{"type":"text","text":"Hi"}}],"name":"a"}}],"stream":true,"stream_options":{{"include_usage":true}},"temperature":0.7,"top_p":0.9,"stop":["\n","END"],"seed":-3,"n":1,"user":"u","max_completion_tokens":8}}"#
            ),
        ),
        (
            0,
            "chat-unknown-field",
            format!(
                r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"x"}}],"logprobs":true}}"#
            ),
        ),
        (
            1,
            "completion",
            format!(
                r#"{{"model":"{MODEL}","prompt":"Once upon a time","max_tokens":16,"stop":"."}}"#
            ),
        ),
        (
            1,
            "completion-array",
            format!(r#"{{"model":"{MODEL}","prompt":["one"],"stream":true,"temperature":0}}"#),
        ),
        (
            1,
            "completion-wrong-model",
            r#"{"model":"gpt-4","prompt":"x"}"#.to_owned(),
        ),
    ];
    for (mode, name, body) in bodies {
        out.push(seed("guest_request", name, prefixed(mode, body.as_bytes())));
    }

    // sse_stream: chunk size, flags (bit 0 completions, bit 1 include_usage), texts split by 0xFF.
    for (name, size, flags, texts) in [
        ("chat", 7u8, 0u8, &["Hello", ", world", "!"][..]),
        (
            "chat-usage",
            0,
            2,
            &["line\nbreak", "quote \" and \\", "\u{1F600} \r\n"][..],
        ),
        ("completion-usage", 255, 3, &["data: [DONE]\n\n", ""][..]),
    ] {
        let data = texts
            .iter()
            .map(|t| t.as_bytes())
            .collect::<Vec<_>>()
            .join(&0xFFu8);
        out.push(seed("sse_stream", name, [vec![size, flags], data].concat()));
    }

    // client_sse: chunk size, then a stream as the guest sends it, and one with CRLFs, comments
    // and events split oddly.
    out.push(seed(
        "client_sse",
        "guest-stream",
        prefixed(
            5,
            b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: [DONE]\n\n",
        ),
    ));
    out.push(seed(
        "client_sse",
        "crlf-comments",
        prefixed(
            0,
            b": keep-alive\r\nevent: x\r\ndata:a\r\ndata:  b\r\nid: 1\r\n\r\ndata\ndata: [DONE]\r\n\r\n",
        ),
    ));

    // receipt: the SPKI of a fresh key and a receipt it signed.
    out.push(seed("receipt", "response", receipt_input(false)));
    out.push(seed("receipt", "stream", receipt_input(true)));

    // hostcall: mode byte (even: request, odd: response), then a frame.
    let frame = |mode: u8, bytes: Vec<u8>| prefixed(mode, &bytes);
    let report_data = ReportData([7; 64]);
    out.push(seed(
        "hostcall",
        "sim-quote-request",
        frame(
            0,
            hostcall::encode(&Request::SimQuote { report_data }).expect("frame"),
        ),
    ));
    out.push(seed(
        "hostcall",
        "collateral-request",
        frame(0, hostcall::encode(&Request::Collateral).expect("frame")),
    ));
    out.push(seed(
        "hostcall",
        "sim-snp-request",
        frame(
            0,
            hostcall::encode(&Request::SimSnpReport { report_data }).expect("frame"),
        ),
    ));
    out.push(seed(
        "hostcall",
        "quote-response",
        frame(
            1,
            hostcall::encode(&Response::Quote {
                quote: sim_quote(report_data),
                collateral: Some(sim_collateral().clone()),
            })
            .expect("frame"),
        ),
    ));
    out.push(seed(
        "hostcall",
        "snp-response",
        frame(
            1,
            hostcall::encode(&Response::SnpReport {
                report: vec![0; 64],
                vcek: amd.vcek_der().to_vec(),
                chain: Some(amd.chain_pem()),
            })
            .expect("frame"),
        ),
    ));
    out.push(seed(
        "hostcall",
        "error-response",
        frame(
            1,
            hostcall::encode(&Response::Error {
                message: "no quote service".into(),
            })
            .expect("frame"),
        ),
    ));
    out
}
