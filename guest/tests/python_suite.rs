//! The Python side's own tests under `cargo test`, so CI runs them: the bridge and structured-output
//! helpers (no model), and the adapter conformance suite against llama_cpp with SmolLM2
//! (guest/python/tests). Needs the test venv (CHRYSALIS_VENV); without it the test skips with the
//! reason, except under CI=true where that is a failure.

mod common;

use common::{repo_root, venv};

#[test]
fn python_tests_and_llama_cpp_conformance_pass() {
    let Some(v) = venv() else { return };
    let out = std::process::Command::new(v.root.join("bin/python"))
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
        .current_dir(repo_root().join("guest/python"))
        .env("CHRYSALIS_SMOLLM2_GGUF", &v.model)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    assert!(report.contains(" passed"), "{report}");
}
