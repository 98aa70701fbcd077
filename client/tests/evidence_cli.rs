//! The `chrysalis evidence` and `chrysalis sim` commands, run as a user would.

use std::path::PathBuf;
use std::process::{Command, Output};

use chrysalis_testkit::fixtures::registry_package_dir;

fn chrysalis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chrysalis"))
        .args(args)
        .output()
        .expect("run chrysalis")
}

fn dcap(file: &str) -> String {
    registry_package_dir("dcap-qvl")
        .join("sample")
        .join(file)
        .display()
        .to_string()
}

fn sev(file: &str) -> String {
    registry_package_dir("sev")
        .join("tests/certs_data")
        .join(file)
        .display()
        .to_string()
}

fn stdout_json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

#[test]
fn show_tdx_json_has_every_documented_key() {
    let o = chrysalis(&[
        "evidence",
        "show",
        "--tdx-quote",
        &dcap("tdx_quote"),
        "--json",
    ]);
    assert!(o.status.success());
    let v = stdout_json(&o);
    for k in [
        "mr_td",
        "rtmr0",
        "rtmr1",
        "rtmr2",
        "rtmr3",
        "mr_config_id",
        "mr_owner",
        "mr_owner_config",
        "mr_seam",
        "td_attributes",
        "xfam",
        "report_data",
        "version",
    ] {
        assert!(v.get(k).is_some(), "missing {k}");
    }
    assert_eq!(v["mr_td"].as_str().unwrap().len(), 96);
    assert_eq!(v["version"], 4);
}

#[test]
fn show_snp_json_from_hex_input() {
    let o = chrysalis(&[
        "evidence",
        "show",
        "--snp-report",
        &sev("report_milan.hex"),
        "--json",
        "-v",
    ]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("read as hex text"));
    let v = stdout_json(&o);
    for k in [
        "measurement",
        "host_data",
        "report_data",
        "policy",
        "chip_id",
        "version",
        "vmpl",
    ] {
        assert!(v.get(k).is_some(), "missing {k}");
    }
}

/// An unpinned policy whose `tcbEvaluationDataNumber` floor is `n` (the 2025 recording
/// predates the crate's default floor).
fn floor_policy(dir: &std::path::Path, n: u32) -> String {
    let p = dir.join(format!("floor{n}.toml"));
    std::fs::write(
        &p,
        format!(
            "version = 1\ndangerous_accept_any_measurement = true\n\
             [collateral]\nmin_tcb_evaluation_data_number = {n}\n"
        ),
    )
    .unwrap();
    p.display().to_string()
}

#[test]
fn verify_exit_codes_and_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let verify_sample = |policy: Option<&str>| {
        let mut args = vec![
            "evidence".to_string(),
            "verify".into(),
            "--tdx-quote".into(),
            dcap("tdx_quote"),
            "--collateral".into(),
            dcap("tdx_quote_collateral.json"),
            "--now".into(),
            "1750500000".into(),
            "--json".into(),
        ];
        if let Some(p) = policy {
            args.extend(["--policy".into(), p.into()]);
        }
        chrysalis(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let ok = verify_sample(Some(floor_policy(dir.path(), 17).as_str()));
    assert_eq!(ok.status.code(), Some(0));
    let v = stdout_json(&ok);
    assert_eq!(v["accepted"], true);
    assert_eq!(v["tcb_status"], "UpToDate");
    assert_eq!(v["tcb_evaluation_data_number"], 17);
    assert_eq!(v["collateral_issued"], 1_750_328_163);
    // A floor above the collateral's number, and the default floor, refuse it by rule name.
    for stale in [
        verify_sample(Some(floor_policy(dir.path(), 18).as_str())),
        verify_sample(None),
    ] {
        assert_eq!(stale.status.code(), Some(1));
        let v = stdout_json(&stale);
        assert_eq!(v["accepted"], false);
        assert!(
            v["reasons"][0]
                .as_str()
                .unwrap()
                .contains("collateral.min_tcb_evaluation_data_number"),
            "{v}"
        );
    }

    let expired = chrysalis(&[
        "evidence",
        "verify",
        "--tdx-quote",
        &dcap("tdx_quote"),
        "--collateral",
        &dcap("tdx_quote_collateral.json"),
        "--now",
        "1760000000",
        "--json",
        "--policy",
        &floor_policy(dir.path(), 17),
    ]);
    assert_eq!(expired.status.code(), Some(1));
    let v = stdout_json(&expired);
    assert_eq!(v["accepted"], false);
    assert!(v["reasons"][0].as_str().unwrap().contains("expired"), "{v}");

    let outdated = chrysalis(&[
        "evidence",
        "verify",
        "--tdx-quote",
        &dcap("tdx_quote_outdated"),
        "--collateral",
        &dcap("tdx_quote_outdated_collateral.json"),
        "--now",
        "1771500000",
    ]);
    assert_eq!(outdated.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&outdated.stderr).contains("TCB"));

    let missing = chrysalis(&[
        "evidence",
        "verify",
        "--tdx-quote",
        "/nonexistent",
        "--collateral",
        "/x",
        "--now",
        "1",
    ]);
    assert_eq!(missing.status.code(), Some(2));
    let usage = chrysalis(&["evidence", "verify", "--now", "1"]);
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn snp_verify_json_shows_each_check_and_the_tcb_floor() {
    let milan = |extra: &[&str]| {
        let mut args = vec![
            "evidence".to_owned(),
            "verify".into(),
            "--snp-report".into(),
            sev("report_milan.hex"),
            "--vcek".into(),
            sev("vcek_milan.der"),
            "--chain".into(),
            sev("cert_chain_milan"),
            "--now".into(),
            "1750500000".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        chrysalis(&args)
    };
    // Milan is refused by default (its owner can forge reports), and the recorded report's
    // firmware (2023) is below the built-in Milan floor.
    let o = milan(&["--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v = stdout_json(&o);
    assert_eq!(v["accepted"], false);
    let reasons = v["reasons"].to_string();
    assert!(
        reasons.contains("reported_tcb below the Milan TCB floor"),
        "{v}"
    );
    assert!(reasons.contains("snp 8 < 24, microcode 115 < 219"), "{v}");
    assert!(reasons.contains("SNP product Milan refused"), "{v}");
    let checks: Vec<(String, bool)> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["check"].as_str().unwrap().to_owned(), c["passed"] == true))
        .collect();
    let expect = |ok: bool| {
        vec![
            ("snp.product".to_owned(), ok),
            ("snp.reported_tcb".to_owned(), ok),
            ("snp.committed_tcb".to_owned(), ok),
            ("snp.policy.migrate_ma".to_owned(), true),
            ("snp.policy.debug".to_owned(), true),
            ("snp.vmpl".to_owned(), true),
        ]
    };
    assert_eq!(checks, expect(false), "{v}");

    // With Milan accepted and the floor lowered explicitly, accepted; no TCB status, the TCBs
    // are shown.
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "version = 1\ndangerous_accept_any_measurement = true\n[tcb]\n\
         dangerous_accept_milan = true\n[tcb.snp_floor.milan]\n\
         bootloader = 3\ntee = 0\nsnp = 8\nmicrocode = 115\n",
    )
    .unwrap();
    let o = milan(&["--json", "--policy", policy.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let v = stdout_json(&o);
    assert_eq!(v["accepted"], true);
    assert_eq!(v["tcb_status"], serde_json::Value::Null);
    for k in ["reported_tcb", "committed_tcb", "launch_tcb", "current_tcb"] {
        assert_eq!(v["measurements"][k]["snp"], 8, "{k}: {v}");
    }
    let checks: Vec<(String, bool)> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["check"].as_str().unwrap().to_owned(), c["passed"] == true))
        .collect();
    assert_eq!(checks, expect(true), "{v}");
    assert!(
        v["checks"][1]["detail"]
            .as_str()
            .unwrap()
            .contains("policy tcb.snp_floor"),
        "{v}"
    );
    let o = milan(&["--policy", policy.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("tcb_status  none"), "{out}");
    assert!(out.contains("check       ok snp.vmpl"), "{out}");
}

#[test]
fn sim_quote_verifies_only_under_a_policy_naming_the_sim_root() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sim");
    let mr_td = "11".repeat(48);
    let rd = "22".repeat(64);
    let o = chrysalis(&[
        "sim",
        "quote",
        "--mr-td",
        &mr_td,
        "--rtmr1",
        &"33".repeat(48),
        "--report-data",
        &rd,
        "--out",
        out.to_str().unwrap(),
        "--issued-at",
        "1800000000",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let root = stdout
        .lines()
        .find_map(|l| l.strip_prefix("simulated root sha256 "))
        .unwrap()
        .to_string();
    let q = |f: &str| -> PathBuf { out.join(f) };
    let verify = |policy: Option<&str>| {
        let mut args = vec![
            "evidence".to_string(),
            "verify".into(),
            "--tdx-quote".into(),
            q("quote.bin").display().to_string(),
            "--collateral".into(),
            q("collateral.json").display().to_string(),
            "--now".into(),
            "1800000100".into(),
        ];
        if let Some(p) = policy {
            let path = dir.path().join("policy.toml");
            std::fs::write(&path, p).unwrap();
            args.extend(["--policy".into(), path.display().to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        chrysalis(&args)
    };
    let default = verify(None);
    assert_eq!(default.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&default.stderr).contains("untrusted root"));
    let named = format!(
        "version = 1\n[trust]\ndangerous_simulated_intel_roots = [\"{root}\"]\n[[tdx]]\nmr_td = \"{mr_td}\"\nrtmr1 = \"{}\"\n",
        "33".repeat(48)
    );
    let ok = verify(Some(&named));
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let wrong = named.replace(
        &format!("rtmr1 = \"{}\"", "33".repeat(48)),
        &format!("rtmr1 = \"{}\"", "44".repeat(48)),
    );
    let bad = verify(Some(&wrong));
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("measurement not pinned"));
}

/// The recorded TDX boot: its CCEL replays to the RTMRs of the quote of the same boot.
#[test]
fn eventlog_replay_matches_the_quote_of_the_same_boot() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testvectors/tdx-ccel");
    if !dir.join("ccel_data.dat").exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but {} is missing",
            dir.display()
        );
        eprintln!(
            "skipping: {} not present (../shared beside the checkout)",
            dir.display()
        );
        return;
    }
    let replay = chrysalis(&[
        "eventlog",
        "replay",
        "--ccel",
        dir.join("ccel_data.dat").to_str().unwrap(),
        "--json",
    ]);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let show = chrysalis(&[
        "evidence",
        "show",
        "--tdx-quote",
        dir.join("cos-113-tdx-quote.dat").to_str().unwrap(),
        "--json",
    ]);
    let (r, q) = (stdout_json(&replay), stdout_json(&show));
    for k in ["rtmr0", "rtmr1", "rtmr2", "rtmr3"] {
        assert_eq!(r[k], q[k], "{k}");
    }
    assert!(r["events"].as_array().unwrap().len() > 10);
}

/// A reviewer's check of the TD attribute rules: `sim quote --td-attributes` with a profiling
/// bit, refused by `evidence verify --json` with a reason naming the bit; accepted only with
/// dangerous_allow_debug; reserved bits refused whatever the policy.
#[test]
fn sim_quote_td_attributes_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let quote = |name: &str, attributes: &str, xfam: &str| -> PathBuf {
        let out = dir.path().join(name);
        let o = chrysalis(&[
            "sim",
            "quote",
            "--mr-td",
            &"11".repeat(48),
            "--report-data",
            &"22".repeat(64),
            "--td-attributes",
            attributes,
            "--xfam",
            xfam,
            "--out",
            out.to_str().unwrap(),
            "--issued-at",
            "1800000000",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        out
    };
    let root = SimRoot::default_seed();
    let verify = |q: &PathBuf, allow_debug: bool| {
        let policy = dir.path().join("policy.toml");
        std::fs::write(
            &policy,
            format!(
                "version = 1\ndangerous_accept_any_measurement = true\n{}[trust]\ndangerous_simulated_intel_roots = [\"{}\"]\n",
                if allow_debug {
                    "dangerous_allow_debug = true\n"
                } else {
                    ""
                },
                root.0
            ),
        )
        .unwrap();
        let o = chrysalis(&[
            "evidence",
            "verify",
            "--tdx-quote",
            q.join("quote.bin").to_str().unwrap(),
            "--collateral",
            q.join("collateral.json").to_str().unwrap(),
            "--now",
            "1800000100",
            "--policy",
            policy.to_str().unwrap(),
            "--json",
        ]);
        (o.status.code(), stdout_json(&o))
    };

    // The launch values: accepted, nothing under debug.
    let plain = quote("plain", "0000001000000000", "e702060000000000");
    let (code, v) = verify(&plain, false);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["debug"], false);
    assert_eq!(v["debug_flags"], serde_json::json!([]));

    // PERF_PROF (bit 5) set, DEBUG clear: refused, and the reason names the bit.
    let perf = quote("perf", "2000001000000000", "e702060000000000");
    let show = chrysalis(&[
        "evidence",
        "show",
        "--tdx-quote",
        perf.join("quote.bin").to_str().unwrap(),
        "--json",
    ]);
    let s = stdout_json(&show);
    assert_eq!(s["td_attributes"], "2000001000000000");
    assert_eq!(s["debug"], true, "never debug=false with a TUD bit set");
    assert_eq!(s["debug_flags"], serde_json::json!(["perf_prof"]));
    assert_eq!(
        s["td_attributes_set"],
        serde_json::json!(["perf_prof", "sept_ve_disable"])
    );
    let (code, v) = verify(&perf, false);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["accepted"], false);
    let reasons = v["reasons"].as_array().unwrap();
    assert_eq!(reasons.len(), 1, "{v}");
    let r = reasons[0].as_str().unwrap();
    assert!(r.contains("under debug") && r.contains("perf_prof"), "{r}");
    let (code, v) = verify(&perf, true);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["debug"], true);
    assert_eq!(v["debug_flags"], serde_json::json!(["perf_prof"]));

    // DEBUG with PMT_PROF and HGS_PLUS_PROF: every bit named.
    let (code, v) = verify(&quote("all", "5100001000000000", "e702060000000000"), false);
    assert_eq!(code, Some(1));
    let r = v["reasons"][0].as_str().unwrap();
    assert!(r.contains("debug, hgs_plus_prof, pmt_prof"), "{r}");

    // A reserved TUD bit, or SEPT_VE_DISABLE clear: refused even with dangerous_allow_debug.
    for (attributes, what) in [
        ("0800001000000000", "tud_bit3 set"),
        ("0000000000000000", "sept_ve_disable clear"),
        ("0000003000000000", "migratable set"),
    ] {
        let (code, v) = verify(&quote(what, attributes, "e702060000000000"), true);
        assert_eq!(code, Some(1), "{what}: {v}");
        let r = v["reasons"][0].as_str().unwrap();
        assert!(r.contains("TD_ATTRIBUTES") && r.contains(what), "{r}");
    }

    // Bad hex is refused by clap, naming the option.
    let o = chrysalis(&[
        "sim",
        "quote",
        "--mr-td",
        &"11".repeat(48),
        "--report-data",
        &"22".repeat(64),
        "--td-attributes",
        "10000000",
        "--out",
        dir.path().join("bad").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--td-attributes"));
}

/// The sim root fingerprint of the well-known seed, as `chrysalis sim quote` prints it.
struct SimRoot(String);

impl SimRoot {
    fn default_seed() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let o = chrysalis(&[
            "sim",
            "quote",
            "--mr-td",
            &"00".repeat(48),
            "--report-data",
            &"00".repeat(64),
            "--out",
            dir.path().to_str().unwrap(),
            "--issued-at",
            "1800000000",
        ]);
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        Self(
            stdout
                .lines()
                .find_map(|l| l.strip_prefix("simulated root sha256 "))
                .expect("root line")
                .to_string(),
        )
    }
}

fn gpu_vector(file: &str) -> String {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testvectors/nvidia-hopper");
    assert!(
        dir.is_dir(),
        "recorded GPU vectors missing: {}",
        dir.display()
    );
    dir.join(file).display().to_string()
}

const GPU_NONCE: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";

fn gpu_verify(extra: &[&str]) -> Output {
    let (report, chain, root) = (
        gpu_vector("hopperAttestationReport.txt"),
        gpu_vector("hopperCertChain.txt"),
        gpu_vector("verifier_device_root.pem"),
    );
    let mut args = vec![
        "evidence",
        "verify",
        "--gpu-report",
        &report,
        "--gpu-chain",
        &chain,
        "--gpu-root",
        &root,
        "--now",
        "1717200000",
    ];
    args.extend_from_slice(extra);
    chrysalis(&args)
}

fn gpu_policy(dir: &std::path::Path, body: &str) -> String {
    let p = dir.join("gpu-policy.toml");
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

#[test]
fn show_gpu_report_prints_the_parsed_fields() {
    let o = chrysalis(&[
        "evidence",
        "show",
        "--gpu-report",
        &gpu_vector("hopperAttestationReport.txt"),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = stdout_json(&o);
    assert_eq!(v["request_nonce"], GPU_NONCE);
    assert_eq!(v["opaque"]["driver_version"], "550.90.07");
    assert_eq!(v["opaque"]["vbios_version"], "96.00.9f.00.01");
    assert_eq!(v["blocks"].as_array().unwrap().len(), 64);
}

#[test]
fn verify_gpu_accepts_under_a_policy_naming_what_is_not_checked() {
    let dir = tempfile::tempdir().unwrap();
    let policy = gpu_policy(
        dir.path(),
        "[gpu]\ndangerous_no_ocsp = true\ndangerous_no_rims = true\n",
    );
    let o = gpu_verify(&["--gpu-nonce", GPU_NONCE, "--policy", &policy, "--json"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v = stdout_json(&o);
    assert_eq!(v["accepted"], true);
    assert_eq!(v["revocation"], "dangerous_not_checked");
    assert_eq!(v["driver_version"], "550.90.07");
}

#[test]
fn verify_gpu_rejects_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let policy = gpu_policy(
        dir.path(),
        "[gpu]\ndangerous_no_ocsp = true\ndangerous_no_rims = true\n",
    );
    // Strict default policy: no OCSP answers.
    let o = gpu_verify(&["--gpu-nonce", GPU_NONCE]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("revocation unchecked"));
    // Another nonce.
    let o = gpu_verify(&["--gpu-nonce", &"00".repeat(32), "--policy", &policy]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nonce"));
    // NVIDIA's sample driver RIM is for another version than the report's driver.
    let (rim, rim_root) = (
        gpu_vector("Driver_RIM_test_no_gpu.swidtag"),
        gpu_vector("verifier_RIM_root.pem"),
    );
    let o = gpu_verify(&[
        "--gpu-nonce",
        GPU_NONCE,
        "--policy",
        &policy,
        "--gpu-rim-root",
        &rim_root,
        "--driver-rim",
        &rim,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("driver RIM is for version 545.00"));
}

#[test]
fn verify_gpu_bad_input_exits_2() {
    let o = gpu_verify(&["--gpu-nonce", "abcd"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--gpu-nonce"));
}

#[test]
fn verify_gpu_without_root_files_trusts_the_pinned_nvidia_roots() {
    let dir = tempfile::tempdir().unwrap();
    let policy = gpu_policy(
        dir.path(),
        "[gpu]\ndangerous_no_ocsp = true\ndangerous_no_rims = true\n",
    );
    let (report, chain) = (
        gpu_vector("hopperAttestationReport.txt"),
        gpu_vector("hopperCertChain.txt"),
    );
    let base = [
        "evidence",
        "verify",
        "--gpu-report",
        &report,
        "--gpu-chain",
        &chain,
        "--gpu-nonce",
        GPU_NONCE,
        "--now",
        "1717200000",
    ];
    // The chain's copy of NVIDIA's root is trusted because its SHA-256 is pinned.
    let mut args = base.to_vec();
    args.extend(["--policy", &policy, "--json"]);
    let o = chrysalis(&args);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        stdout_json(&o)["device_root_sha256"],
        "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48"
    );
    // The RIM's copy of NVIDIA's RIM root likewise: the driver RIM verifies and is then
    // refused for its version, as with --gpu-rim-root.
    let rim = gpu_vector("Driver_RIM_test_no_gpu.swidtag");
    let mut args = base.to_vec();
    args.extend(["--policy", &policy, "--driver-rim", &rim]);
    let o = chrysalis(&args);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("driver RIM is for version 545.00"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A policy that does not trust NVIDIA's roots trusts nothing here.
    let untrusting = gpu_policy(
        dir.path(),
        "[gpu]\nnvidia = false\ndangerous_no_ocsp = true\ndangerous_no_rims = true\n",
    );
    let mut args = base.to_vec();
    args.extend(["--policy", &untrusting]);
    let o = chrysalis(&args);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no NVIDIA device identity root"));
}

#[test]
fn verify_gpu_checks_supplied_ocsp_answers() {
    let dir = tempfile::tempdir().unwrap();
    // A policy that would accept without answers: supplied answers are still checked.
    let policy = gpu_policy(
        dir.path(),
        "[gpu]\ndangerous_no_ocsp = true\ndangerous_no_rims = true\n",
    );
    let bogus = dir.path().join("answer.der");
    std::fs::write(&bogus, [0x30, 0x03, 0x0a, 0x01, 0x00]).unwrap();
    let bogus = bogus.display().to_string();
    let o = gpu_verify(&[
        "--gpu-nonce",
        GPU_NONCE,
        "--policy",
        &policy,
        "--gpu-ocsp",
        &bogus,
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("GPU certificate revocation (OCSP)"), "{err}");
}
