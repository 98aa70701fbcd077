//! `cargo xtask serve-local --check` on the built image: the guest runtime as a local process
//! (no VM), the host agent's relay and simulated quote service, and the pinning proxy serve one
//! verified chat completion with the image's configuration and model; afterwards none of the
//! processes it started is left.
//!
//! Needs the built image (see `chain::Image::find`) and the test venv (`CHRYSALIS_VENV`). Without
//! them the test prints why and passes, except under `CI=true`, where that is a failure.

use std::path::Path;
use std::process::Command;

use chrysalis_tests::chain::Image;

#[test]
fn serve_local_check_answers_through_the_proxy_with_a_verified_receipt_and_stops_everything() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let (Some(manifest), true) = (
        Image::find(repo),
        std::env::var_os("CHRYSALIS_VENV").is_some(),
    ) else {
        assert!(
            !ci,
            "CI=true and the built image or CHRYSALIS_VENV is missing"
        );
        eprintln!("SKIPPED: needs the built image and CHRYSALIS_VENV (cargo xtask setup)");
        return;
    };
    let out = Command::new(env!("CARGO_BIN_EXE_chrysalis-serve-local"))
        .arg("--image")
        .arg(manifest.parent().unwrap())
        .args(["--listen", "127.0.0.1:0", "--check"])
        .current_dir(repo)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "serve-local failed:\n{stdout}\n{stderr}"
    );
    let base = stdout
        .lines()
        .find_map(|l| l.strip_prefix("OPENAI_BASE_URL="))
        .unwrap_or_else(|| panic!("no OPENAI_BASE_URL line:\n{stdout}"));
    assert!(
        base.starts_with("http://127.0.0.1:") && base.ends_with("/v1") && !base.contains(":0/"),
        "{base}"
    );
    let policy = stdout
        .lines()
        .find_map(|l| l.strip_prefix("CHRYSALIS_POLICY="))
        .unwrap_or_else(|| panic!("no CHRYSALIS_POLICY line:\n{stdout}"));
    assert!(policy.ends_with("policy.toml"), "{policy}");
    assert!(
        stdout.contains("receipt verified: true"),
        "{stdout}\n{stderr}"
    );
    let answer = stdout
        .lines()
        .find_map(|l| l.split_once("): ").filter(|(h, _)| h.starts_with("answer")))
        .map(|(_, a)| a.trim().to_owned())
        .unwrap_or_default();
    assert!(!answer.is_empty(), "no answer:\n{stdout}");
    // Every process it started is gone: the ports it served on no longer accept.
    let addr = base
        .trim_start_matches("http://")
        .trim_end_matches("/v1")
        .to_owned();
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "the proxy at {addr} still accepts after serve-local exited"
    );
}
