//! `chrysalis verify` against RA-TLS servers with simulated evidence on loopback.

mod common;

use std::process::Command;

use chrysalis_attestation::Measurement;
use common::{sim_policy_toml, spawn_sim_server};

fn verify(url: &str, policy: &str, json: bool) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("policy.toml");
    std::fs::write(&p, policy).unwrap();
    let mut args = vec!["verify", url, "--policy", p.to_str().unwrap()];
    if json {
        args.push("--json");
    }
    Command::new(env!("CARGO_BIN_EXE_chrysalis"))
        .args(&args)
        .output()
        .unwrap()
}

#[test]
fn accepted_rejected_and_unreachable() {
    let mr_td = Measurement([0x5a; 48]);
    let (addr, root) = spawn_sim_server(mr_td);
    let url = format!("https://{addr}");

    let ok = verify(&url, &sim_policy_toml(root, mr_td), false);
    let out = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        out.contains("ACCEPTED")
            && out.contains("UpToDate")
            && out.contains("bound to the TLS key"),
        "{out}"
    );

    let bad = verify(&url, &sim_policy_toml(root, Measurement([0x5b; 48])), true);
    assert_eq!(bad.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(v["accepted"], false);
    assert_eq!(v["pins"][0]["registers"]["mr_td"]["match"], false);
    assert_eq!(v["pins"][0]["registers"]["rtmr1"]["match"], true);
    assert!(
        v["reasons"][0]
            .as_str()
            .unwrap()
            .contains("measurement not pinned"),
        "{v}"
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gone = verify(
        &format!("https://{closed}"),
        &sim_policy_toml(root, mr_td),
        false,
    );
    assert_eq!(gone.status.code(), Some(2));
}
