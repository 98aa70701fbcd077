//! The `chrysalis evidence` and `chrysalis sim` commands, run as a user would.

#[path = "../../attestation/src/testutil.rs"]
mod testutil;

use std::path::PathBuf;
use std::process::{Command, Output};

use testutil::registry_package_dir;

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

    let snp = chrysalis(&[
        "evidence",
        "verify",
        "--snp-report",
        &sev("report_milan.hex"),
        "--vcek",
        &sev("vcek_milan.der"),
        "--chain",
        &sev("cert_chain_milan"),
        "--now",
        "1750500000",
    ]);
    assert_eq!(
        snp.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&snp.stderr)
    );
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
