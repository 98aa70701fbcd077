//! Test fixtures of the client's integration tests: the `chrysalis proxy` process and its ledger.
//! The fake upstream, the RA-TLS server, the sim policies and the plain client live in
//! chrysalis-testkit; they are re-exported here under the names the tests use.

#![allow(dead_code, unreachable_pub, unused_imports)]

use std::net::SocketAddr;

pub use chrysalis_testkit::http::{PlainClient, plain_client, post_json};
pub use chrysalis_testkit::policy::{sim_policy_toml, sim_snp_policy_toml};
pub use chrysalis_testkit::ratls::spawn_sim_server;
pub use chrysalis_testkit::{now, upstream};

/// A running `chrysalis proxy`, killed on drop.
pub struct ProxyProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl ProxyProcess {
    /// Starts `chrysalis proxy` on a free loopback port in front of `upstreams` with `policy`
    /// and a ledger in its temp dir; waits (bounded) until it is listening.
    pub fn start(upstreams: &[SocketAddr], policy: &str) -> Self {
        Self::start_with(upstreams, policy, &[])
    }

    /// As [`Self::start`], with extra command-line arguments.
    pub fn start_with(upstreams: &[SocketAddr], policy: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("policy.toml");
        std::fs::write(&p, policy).unwrap();
        let ready = dir.path().join("ready");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_chrysalis"));
        cmd.args(["proxy", "--listen", "127.0.0.1:0", "--policy"])
            .arg(&p)
            .arg("--receipts")
            .arg(dir.path().join("receipts.jsonl"))
            .arg("--ready-file")
            .arg(&ready)
            .env("RUST_LOG", "info,chrysalis_client=debug")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("proxy.log")).unwrap());
        for u in upstreams {
            cmd.arg("--upstream").arg(u.to_string());
        }
        cmd.args(extra);
        let child = cmd.spawn().unwrap();
        let mut me = Self {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            dir,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Ok(a) = std::fs::read_to_string(&ready) {
                me.addr = a.trim().parse().unwrap();
                return me;
            }
            if let Some(status) = me.child.try_wait().unwrap() {
                panic!("chrysalis proxy exited with {status}: {}", me.log());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "proxy did not start: {}",
                me.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }

    pub fn ledger_path(&self) -> std::path::PathBuf {
        self.dir.path().join("receipts.jsonl")
    }

    /// The ledger once it holds at least `n` records (waits, bounded: lines are appended by a
    /// writer thread right after each response ends).
    pub fn ledger(&self, n: usize) -> Vec<chrysalis_client::ReceiptRecord> {
        wait_ledger(&self.ledger_path(), n, &self.log())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a ledger once it holds at least `n` records (bounded wait).
pub fn wait_ledger(
    path: &std::path::Path,
    n: usize,
    context: &str,
) -> Vec<chrysalis_client::ReceiptRecord> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let records = chrysalis_client::ledger::read(path).unwrap_or_default();
        if records.len() >= n {
            return records;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ledger has {} of {n} records: {context}",
            records.len()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A chat request for the fake upstream's model.
pub fn chat(prompt: &str, max_tokens: u64, stream: bool) -> serde_json::Value {
    let mut v = serde_json::json!({
        "model": upstream::MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
    });
    if stream {
        v["stream"] = true.into();
        v["stream_options"] = serde_json::json!({"include_usage": true});
    }
    v
}
