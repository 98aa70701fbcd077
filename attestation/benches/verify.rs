//! Benchmarks evidence verification at first contact (nothing cached): the recorded dcap-qvl
//! TDX sample quote with its collateral, a simulated TDX quote, and the recorded SEV-SNP Milan
//! report with its VCEK and chain. Goal: TDX verify ≤ 1 ms.
//!
//! `cargo bench -p chrysalis-attestation --bench verify`; `CHRYSALIS_BENCH_QUICK=1` for a short run.

mod support;

use std::hint::black_box;

use chrysalis_attestation::evidence::decode_binary_or_hex;
use chrysalis_attestation::sim::{self, SimPki, SimTdReport};
use chrysalis_attestation::verify::{TrustAnchors, verify};
use chrysalis_attestation::{Evidence, Measurement, Platform, ReportData, TcbStatus};
use chrysalis_testkit::fixtures;
use support::{Op, Paired};

/// The recorded dcap-qvl sample collateral is current at this time.
const NOW: u64 = 1_750_500_000;

struct Inputs {
    tdx_recorded: Evidence,
    tdx_sim: Evidence,
    snp_recorded: Evidence,
    anchors: TrustAnchors,
}

fn inputs() -> Inputs {
    let quote = fixtures::registry_file("dcap-qvl", "sample/tdx_quote");
    let collateral: dcap_qvl::QuoteCollateralV3 = serde_json::from_slice(&fixtures::registry_file(
        "dcap-qvl",
        "sample/tdx_quote_collateral.json",
    ))
    .expect("collateral JSON");
    let pki = SimPki::from_seed(sim::DEFAULT_SEED);
    let sim_quote = pki.quote(&SimTdReport::new(
        sim::td_measurements(Measurement([0x42; 48]), [Measurement::ZERO; 4]),
        ReportData([7; 64]),
    ));
    let (report, _) = decode_binary_or_hex(&fixtures::registry_file(
        "sev",
        "tests/certs_data/report_milan.hex",
    ));
    let inputs = Inputs {
        tdx_recorded: Evidence::tdx(quote, Some(collateral)).expect("evidence parses"),
        tdx_sim: Evidence::tdx(
            sim_quote,
            Some(
                pki.collateral(NOW - 3600, 30 * 86_400)
                    .expect("sim collateral"),
            ),
        )
        .expect("evidence parses"),
        snp_recorded: Evidence::snp(
            report,
            Some(fixtures::registry_file(
                "sev",
                "tests/certs_data/vcek_milan.der",
            )),
            Some(fixtures::registry_file(
                "sev",
                "tests/certs_data/cert_chain_milan",
            )),
        )
        .expect("evidence parses"),
        anchors: TrustAnchors::vendor().dangerous_with_simulated_intel_root(pki.root_sha256()),
    };
    // A benchmark of a failing path would measure nothing useful.
    for b in [&inputs.tdx_recorded, &inputs.tdx_sim, &inputs.snp_recorded] {
        let v = verify(b, &inputs.anchors, None, NOW).expect("benchmark input verifies");
        // AMD assigns SNP no TCB status.
        let expected = (v.platform == Platform::Tdx).then_some(TcbStatus::UpToDate);
        assert_eq!(v.tcb_status, expected);
    }
    inputs
}

fn main() {
    let mut c = support::criterion();
    let inp = inputs();
    // The last flag: forget the verified SNP chains first (a VCEK this verifier has not seen).
    let cases = [
        ("tdx_recorded", &inp.tdx_recorded, false),
        ("tdx_sim", &inp.tdx_sim, false),
        ("snp_recorded", &inp.snp_recorded, false),
        ("snp_recorded_new_vcek", &inp.snp_recorded, true),
    ];
    let run = |bundle, forget| {
        if forget {
            chrysalis_attestation::verify::forget_verified_chains();
        }
        verify(black_box(bundle), &inp.anchors, None, NOW).expect("verifies")
    };
    {
        let mut g = c.benchmark_group("verify_first_contact");
        for (name, bundle, forget) in cases {
            g.bench_function(name, |b| b.iter(|| run(bundle, forget)));
        }
        g.finish();
    }
    c.final_summary();

    let mut ops: Vec<Op<'_>> = cases
        .iter()
        .map(|&(_, bundle, forget)| {
            Op::new(move || {
                black_box(run(bundle, forget));
            })
        })
        .collect();
    let (rounds, per_round) = support::summary_rounds();
    let p = Paired::run(&mut ops, rounds, per_round);
    let tdx = p.cpu(0);
    println!(
        "summary: verify first contact, median of {rounds} interleaved rounds x {per_round}, \
         thread CPU time (wall): TDX recorded {} ({}) [goal <= 1 ms: {}], TDX sim {} ({}), \
         SNP recorded, VCEK seen before {} ({}) [goal <= 1 ms: {}], SNP recorded, new VCEK {} \
         ({}); machine: {}",
        support::fmt(tdx),
        support::fmt(p.wall(0)),
        if tdx.as_secs_f64() <= 1e-3 {
            "met"
        } else {
            "MISSED"
        },
        support::fmt(p.cpu(1)),
        support::fmt(p.wall(1)),
        support::fmt(p.cpu(2)),
        support::fmt(p.wall(2)),
        if p.cpu(2).as_secs_f64() <= 1e-3 {
            "met"
        } else {
            "MISSED"
        },
        support::fmt(p.cpu(3)),
        support::fmt(p.wall(3)),
        support::machine(),
    );
    let runs = rounds * per_round as usize;
    support::record(serde_json::json!({
        "name": "TDX quote verify, first contact (recorded quote + collateral)",
        "unit": "s", "value": tdx.as_secs_f64(), "wall": p.wall(0).as_secs_f64(),
        "goal": "<= 1 ms", "met": tdx.as_secs_f64() <= 1e-3, "runs": runs,
        "note": "thread CPU time, median of interleaved rounds",
    }));
    support::record(serde_json::json!({
        "name": "SNP report verify, first contact, VCEK seen before (recorded VCEK chain)",
        "unit": "s", "value": p.cpu(2).as_secs_f64(), "wall": p.wall(2).as_secs_f64(),
        "baseline": "TDX verify", "baseline_value": tdx.as_secs_f64(),
        "ratio": p.cpu_ratio(2, 0), "runs": runs,
        "goal": "<= 1 ms", "met": p.cpu(2).as_secs_f64() <= 1e-3,
        "note": "thread CPU time, median of interleaved rounds; the verified ARK/ASK/VCEK chain is remembered, the report signature is checked",
    }));
    support::record(serde_json::json!({
        "name": "SNP report verify, first contact, new VCEK (recorded VCEK chain)",
        "unit": "s", "value": p.cpu(3).as_secs_f64(), "wall": p.wall(3).as_secs_f64(),
        "baseline": "TDX verify", "baseline_value": tdx.as_secs_f64(),
        "ratio": p.cpu_ratio(3, 0), "runs": runs,
        "note": "thread CPU time, median of interleaved rounds; the three RSA-4096 chain signatures are checked",
    }));
}
