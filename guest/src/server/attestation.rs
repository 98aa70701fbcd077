//! The `/v1/attestation` view: the current certificate, the evidence bound into it, and the
//! measurements that evidence reports.

use std::time::{SystemTime, UNIX_EPOCH};

use chrysalis_attestation::Evidence;
use serde_json::{Value, json};

use super::state::AppState;

impl AppState {
    pub(super) fn attestation(&self) -> Value {
        let Some(info) = self.certs.info() else {
            return json!({"error": "no certificate yet"});
        };
        let unix = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        };
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let b = &info.bundle;
        let (vcek, chain) = match b {
            Evidence::Tdx { .. } => (None, None),
            Evidence::Snp { vcek, chain, .. } => (vcek.as_deref(), chain.as_deref()),
        };
        json!({
            "evidence_provider": self.evidence_provider,
            "bundle": {
                "platform": b.platform(),
                "evidence": hex::encode(b.raw()),
                "tdx_collateral": b.tdx_collateral(),
                "snp_vcek": vcek.map(hex::encode),
                "snp_chain": chain.map(hex::encode),
                "der_base64": b.to_der().ok().map(|d| b64(&d)),
            },
            "report_data": info.report_data,
            "measurements": b.measurements(),
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
