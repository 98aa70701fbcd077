//! `chrysalis verify https://HOST:PORT --policy FILE`: connect, verify, explain.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use chrysalis_attestation::collateral::{CollateralKey, CollateralStore};
use chrysalis_attestation::gpu::{self, GpuRecord, GpuRims};
use chrysalis_attestation::ratls::{self, RaTlsServerVerifier};
use chrysalis_attestation::{Evidence, Measurements, Policy, verify};
use chrysalis_client::connect::{AttestedConnector, ConnectError};
use chrysalis_client::report;
use clap::Args;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::{Value, json};

use super::Ctx;

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The node, as https://HOST:PORT (or HOST:PORT).
    url: String,
    /// Client policy (TOML): trusted roots, TCB rules, pinned measurements.
    #[arg(long, value_name = "FILE")]
    policy: std::path::PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    collateral: super::CollateralArgs,
}

/// Records the certificate the server presented, then lets the real verifier decide.
#[derive(Debug)]
struct Capture {
    inner: Arc<RaTlsServerVerifier>,
    cert: Mutex<Option<Vec<u8>>>,
}

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.cert.lock().expect("capture poisoned") = Some(end_entity.to_vec());
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

pub(crate) async fn run(_ctx: &Ctx, a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&a.policy)
        .with_context(|| format!("cannot read policy {}", a.policy.display()))?;
    let policy =
        Policy::from_toml(&text).with_context(|| format!("policy {}", a.policy.display()))?;
    let addr = a
        .url
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_string();
    if !addr.contains(':') {
        anyhow::bail!("{} has no port (expected https://HOST:PORT)", a.url);
    }
    policy
        .validate()
        .with_context(|| format!("policy {}", a.policy.display()))?;
    let (verifier, fetcher) = a.collateral.source().verifier(policy.clone())?;
    let verifier = Arc::new(verifier);
    let capture = Arc::new(Capture {
        inner: verifier.clone(),
        cert: Mutex::new(None),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(ratls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(capture.clone())
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    let mut connector = AttestedConnector::with_tls_config(verifier, config);
    let own = fetcher.as_ref().map(|f| f.store().clone());
    if let Some(f) = fetcher {
        connector = connector.with_collateral_fetcher(f);
    }
    let result = connector.connect(&addr).await;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let cert = capture.cert.lock().expect("capture poisoned").clone();
    let (accepted, reasons) = match &result {
        Ok(_) => (true, vec![]),
        Err(ConnectError::Rejected { rejection, .. }) => (false, rejection.messages()),
        Err(e) => {
            eprintln!("chrysalis: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let Some(cert) = cert else {
        eprintln!("chrysalis: {addr} presented no certificate");
        return Ok(ExitCode::from(2));
    };
    let rims = match &a.collateral.gpu_rims {
        Some(dir) => Some(chrysalis_client::collateral::load_gpu_rims(dir)?),
        None => None,
    };
    let details = explain(&cert, &policy, own.as_ref(), rims.as_ref(), now);
    if a.json {
        let mut v = details;
        v["accepted"] = json!(accepted);
        v["reasons"] = json!(reasons);
        println!("{v}");
    } else {
        print_text(&addr, accepted, &reasons, &details);
    }
    Ok(if accepted {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Everything a reader needs to see why a node was accepted or not: the verdict, each
/// measurement next to each pinned set, the key binding and the certificate validity. `own` is
/// the collateral the verifier fetched itself, used as the handshake used it.
fn explain(
    cert: &[u8],
    policy: &Policy,
    own: Option<&CollateralStore>,
    rims: Option<&GpuRims>,
    now: u64,
) -> Value {
    let mut out = json!({});
    if let Ok((_, c)) = x509_parser::parse_x509_certificate(cert) {
        let spki = c.public_key().raw;
        let gpu = ratls::extract_evidence(cert).ok().and_then(|(_, g)| g);
        let binding = match gpu.as_ref().and_then(|g| g.to_der().ok()) {
            Some(der) => ratls::report_data_for_spki_and_gpu(spki, &der),
            None => ratls::report_data_for_spki(spki),
        };
        out["gpus"] = gpus(gpu.as_ref(), spki, policy, rims, now);
        out["certificate"] = json!({
            "sha256": chrysalis_attestation::Sha256::digest(cert).to_hex(),
            "not_before": c.validity().not_before.timestamp(),
            "not_after": c.validity().not_after.timestamp(),
            "valid_now": c.validity().is_valid_at(x509_parser::time::ASN1Time::from_timestamp(now as i64).unwrap_or(c.validity().not_before)),
        });
        match ratls::extract_bundle(cert) {
            Err(e) => out["evidence_error"] = json!(e.to_string()),
            Ok(bundle) => {
                out["platform"] = json!(bundle.platform().as_str());
                let fetched = match &bundle {
                    Evidence::Tdx { quote, collateral } => own
                        .filter(|_| policy.collateral.prefer_own || collateral.is_none())
                        .and_then(|s| s.get(&CollateralKey::of_tdx_quote(quote).ok()?, now)),
                    Evidence::Snp { .. } => None,
                };
                match verify::verify(&bundle, &policy.trust_anchors(), fetched.as_deref(), now) {
                    Err(e) => {
                        out["evidence_error"] =
                            json!(chrysalis_attestation::ErrorChain(&e).to_string())
                    }
                    Ok(v) => {
                        out["key_binding"] = json!(v.report_data == binding);
                        out["root"] = json!(v.root.to_string());
                        // null for SNP: AMD assigns no status (the TCB floor applies instead).
                        out["tcb_status"] = json!(v.tcb_status.map(|t| t.as_str()));
                        out["advisory_ids"] = json!(v.advisory_ids);
                        out["debug"] = json!(v.debug);
                        let actual = report::measurement_fields(&v.measurements);
                        out["measurements"] = Value::Object(actual.clone());
                        out["pins"] = pins(policy, &v.measurements, &actual);
                    }
                }
            }
        }
    }
    out
}

/// Each GPU's verdict or the check it failed; null for a node without GPU evidence.
fn gpus(
    record: Option<&GpuRecord>,
    spki: &[u8],
    policy: &Policy,
    rims: Option<&GpuRims>,
    now: u64,
) -> Value {
    let Some(record) = record else {
        return Value::Null;
    };
    let nonce = ratls::gpu_nonce_for_spki(spki);
    let each = record.gpus.iter().map(|g| {
        let evidence = g.evidence(rims);
        match gpu::verify(
            &evidence,
            &nonce,
            &policy.gpu.trust_for(&evidence),
            &policy.gpu,
            now,
        ) {
            Ok(v) => json!({"accepted": true, "verdict": v.verdict()}),
            Err(e) => json!({
                "accepted": false,
                "error": chrysalis_attestation::ErrorChain(&e).to_string(),
                "driver_rim_id": g.driver_rim_id,
                "vbios_rim_id": g.vbios_rim_id,
            }),
        }
    });
    Value::Array(each.collect())
}

fn pins(policy: &Policy, m: &Measurements, actual: &serde_json::Map<String, Value>) -> Value {
    let sets: Vec<Value> = match m {
        Measurements::Tdx(_) => policy
            .tdx
            .iter()
            .map(|p| serde_json::to_value(p).expect("pin"))
            .collect(),
        Measurements::Snp(_) => policy
            .snp
            .iter()
            .map(|p| serde_json::to_value(p).expect("pin"))
            .collect(),
    };
    Value::Array(
        sets.into_iter()
            .map(|set| {
                let mut fields = serde_json::Map::new();
                for (k, pinned) in set.as_object().into_iter().flatten() {
                    if k == "name" {
                        continue;
                    }
                    let got = actual.get(k).cloned().unwrap_or(Value::Null);
                    let same = normalise(pinned) == normalise(&got);
                    fields.insert(
                        k.clone(),
                        json!({"pinned": pinned, "actual": got, "match": same}),
                    );
                }
                json!({"name": set.get("name"), "registers": fields})
            })
            .collect(),
    )
}

/// Pinned policy values are numbers or hex strings; actual values are hex strings.
fn normalise(v: &Value) -> String {
    match v {
        Value::Number(n) => format!("{:016x}", n.as_u64().unwrap_or(0)),
        Value::String(s) => s.to_lowercase(),
        other => other.to_string(),
    }
}

fn print_text(addr: &str, accepted: bool, reasons: &[String], d: &Value) {
    println!("{} {addr}", if accepted { "ACCEPTED" } else { "REJECTED" });
    let s = |k: &str| {
        d.get(k).map(|v| {
            v.as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string())
        })
    };
    if let Some(p) = s("platform") {
        println!("  platform      {p}");
    }
    if let Some(r) = s("root") {
        println!("  root          {r}");
    }
    if let Some(t) = s("tcb_status").filter(|t| t != "null") {
        let adv = d["advisory_ids"].as_array().map(|a| a.len()).unwrap_or(0);
        println!(
            "  tcb status    {t}{}",
            if adv > 0 {
                format!(" (advisories: {})", d["advisory_ids"])
            } else {
                String::new()
            }
        );
    }
    if let Some(b) = d.get("key_binding") {
        println!(
            "  key binding   {}",
            if b == true {
                "evidence is bound to the TLS key"
            } else {
                "MISMATCH"
            }
        );
    }
    if let Some(c) = d.get("certificate") {
        println!(
            "  certificate   sha256 {} valid {}..{} ({})",
            c["sha256"].as_str().unwrap_or(""),
            c["not_before"],
            c["not_after"],
            if c["valid_now"] == true {
                "valid now"
            } else {
                "NOT valid now"
            }
        );
    }
    if let Some(e) = s("evidence_error") {
        println!("  evidence      {e}");
    }
    for (i, g) in d["gpus"].as_array().into_iter().flatten().enumerate() {
        let v = &g["verdict"];
        if g["accepted"] == true {
            println!(
                "  gpu {i}         driver {} VBIOS {}, chain to {}, revocation {}, cc mode {}",
                v["driver_version"].as_str().unwrap_or(""),
                v["vbios_version"].as_str().unwrap_or(""),
                v["device_root"].as_str().unwrap_or(""),
                v["revocation"].as_str().unwrap_or(""),
                v["cc_mode"].as_str().unwrap_or(""),
            );
            for rim in ["driver_rim", "vbios_rim"] {
                if let Some(r) = v[rim].as_object() {
                    println!(
                        "    {rim:<12} {} version {}, {} measurements equal",
                        r["tag_id"].as_str().unwrap_or(""),
                        r["version"].as_str().unwrap_or(""),
                        r["compared"].as_array().map(Vec::len).unwrap_or(0)
                    );
                }
            }
        } else {
            println!(
                "  gpu {i}         REFUSED: {}",
                g["error"].as_str().unwrap_or("")
            );
        }
    }
    for set in d["pins"].as_array().into_iter().flatten() {
        println!(
            "  pinned set    {}",
            set["name"].as_str().unwrap_or("(unnamed)")
        );
        for (k, r) in set["registers"].as_object().into_iter().flatten() {
            let mark = if r["match"] == true {
                "match"
            } else {
                "DIFFERS"
            };
            println!(
                "    {k:<16} {mark:<8} actual {}",
                r["actual"].as_str().unwrap_or("")
            );
            if r["match"] != true {
                println!(
                    "    {:<16} {:<8} pinned {}",
                    "",
                    "",
                    normalise(&r["pinned"])
                );
            }
        }
    }
    for r in reasons {
        eprintln!("rejected: {r}");
    }
}
