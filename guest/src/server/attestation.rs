//! The `/v1/attestation` view: the current certificate, the evidence bound into it, and the
//! measurements that evidence reports.

use std::time::{SystemTime, UNIX_EPOCH};

use chrysalis_attestation::{Measurements, Platform, SnpReport, TdxQuote};
use serde_json::{Value, json};

use super::state::AppState;

impl AppState {
    pub(super) fn attestation(&self) -> Value {
        let Some(info) = self.certs.info() else {
            return json!({"error": "no certificate yet"});
        };
        let measurements: Option<Measurements> = match info.bundle.platform {
            Platform::Tdx => TdxQuote::parse(&info.bundle.evidence)
                .ok()
                .map(|q| Measurements::Tdx(q.measurements())),
            Platform::Snp => SnpReport::parse(&info.bundle.evidence)
                .ok()
                .map(|r| Measurements::Snp(r.measurements())),
        };
        let unix = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        };
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let b = &info.bundle;
        json!({
            "evidence_provider": self.evidence_provider,
            "bundle": {
                "platform": b.platform,
                "evidence": hex::encode(&b.evidence),
                "tdx_collateral": b.tdx_collateral,
                "snp_vcek": b.snp_vcek.as_deref().map(hex::encode),
                "snp_chain": b.snp_chain.as_deref().map(hex::encode),
                "der_base64": b.to_der().ok().map(|d| b64(&d)),
            },
            "report_data": info.report_data,
            "measurements": measurements,
            "certificate": {
                "der_base64": b64(&info.cert_der),
                "sha256": info.cert_sha256,
                "spki_sha256": info.spki_sha256,
                "not_before": unix(info.not_before),
                "not_after": unix(info.not_after),
            },
            "model": {"id": self.model.id, "root_hash": self.model.root_hash},
        })
    }
}
