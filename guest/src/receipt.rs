//! Usage receipts: what was asked, what was answered, by which model, at what cost, signed with
//! the attested TLS key. The format is documented in docs/receipts.md.
//!
//! A receipt is the compact string `v1.<base64url(body JSON)>.<base64url(signature)>`, where the
//! signature is ECDSA P-256 / SHA-256 (ASN.1 DER) by the key of the certificate the client talked
//! to, over the exact body bytes. Non-stream responses carry it in the `x-chrysalis-receipt`
//! header; streams in an HTTP trailer of that name.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrysalis_attestation::Sha256;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::engine::Usage;
use crate::tls::{CertStore, TlsError};

/// The header (non-stream) and trailer (stream) that carry the receipt.
pub const RECEIPT_HEADER: &str = "x-chrysalis-receipt";

/// Version prefix of the compact form.
pub const VERSION: &str = "v1";

/// What a receipt states.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptBody {
    /// Format version (1).
    pub version: u32,
    /// The response id (`chatcmpl-…`, `cmpl-…`).
    pub request_id: String,
    /// SHA-256 of the request body bytes as received.
    pub request_sha256: Sha256,
    /// SHA-256 of the response body (non-stream) or of the SSE data payloads (stream; see
    /// [`StreamHasher`]).
    pub response_sha256: Sha256,
    /// True for a streamed response.
    pub stream: bool,
    /// Model id from the measured configuration.
    pub model_id: String,
    /// dm-verity root hash of the model pack, from the measured configuration.
    pub model_root_hash: Sha256,
    /// Tokens counted by the engine.
    pub usage: Usage,
    /// Unix seconds when the response completed.
    pub created: u64,
    /// SHA-256 of the SubjectPublicKeyInfo of the signing (TLS) key.
    pub spki_sha256: Sha256,
}

/// Hash of a streamed response: SHA-256 over every SSE `data:` payload in order, each followed
/// by one `\n`, the final `[DONE]` included.
#[derive(Clone, Debug, Default)]
pub struct StreamHasher(sha2::Sha256);

impl StreamHasher {
    /// Adds one payload (the bytes after `data: `, without the line ending).
    pub fn update(&mut self, payload: &[u8]) {
        self.0.update(payload);
        self.0.update(b"\n");
    }

    /// The digest.
    pub fn finish(self) -> Sha256 {
        Sha256(self.0.finalize().into())
    }
}

/// Signs `body` with the attested key and returns the compact receipt.
///
/// The one place where receipts are signed.
pub fn sign(store: &CertStore, body: &ReceiptBody) -> Result<String, TlsError> {
    let json = serde_json::to_vec(body).map_err(|e| TlsError::Sign(e.to_string()))?;
    let sig = store.sign(&json)?;
    Ok(format!("{VERSION}.{}.{}", URL_SAFE_NO_PAD.encode(&json), URL_SAFE_NO_PAD.encode(sig)))
}

/// Splits a compact receipt into its body (parsed), the signed bytes and the signature. Does not
/// verify the signature: that needs the certificate's key and lives in the attestation crate.
pub fn decode(receipt: &str) -> Result<(ReceiptBody, Vec<u8>, Vec<u8>), String> {
    let mut parts = receipt.split('.');
    let (Some(v), Some(b), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err("a receipt has three dot-separated parts".into());
    };
    if v != VERSION {
        return Err(format!("receipt version {v:?} is not {VERSION:?}"));
    }
    let body = URL_SAFE_NO_PAD.decode(b).map_err(|e| format!("receipt body: {e}"))?;
    let sig = URL_SAFE_NO_PAD.decode(s).map_err(|e| format!("receipt signature: {e}"))?;
    let parsed = serde_json::from_slice(&body).map_err(|e| format!("receipt body: {e}"))?;
    Ok((parsed, body, sig))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::SelfSignedIssuer;

    #[test]
    fn sign_then_decode_round_trips_and_the_signature_checks_with_the_spki() {
        let store = CertStore::generate(Box::new(SelfSignedIssuer)).unwrap();
        let body = ReceiptBody {
            version: 1,
            request_id: "chatcmpl-1".into(),
            request_sha256: Sha256::digest(b"req"),
            response_sha256: Sha256::digest(b"resp"),
            stream: false,
            model_id: "m".into(),
            model_root_hash: Sha256([7; 32]),
            usage: Usage::new(3, 4),
            created: 1_800_000_000,
            spki_sha256: store.spki_sha256(),
        };
        let r = sign(&store, &body).unwrap();
        let (parsed, signed, sig) = decode(&r).unwrap();
        assert_eq!(parsed, body);
        // Verify with the public key taken from the SPKI (x509-parser via rcgen is not needed:
        // ring verifies the uncompressed point, the SPKI's last 65 bytes for P-256).
        let spki = store.spki_der();
        let point = &spki[spki.len() - 65..];
        let pk = ring_verify(point, &signed, &sig);
        assert!(pk);
        let mut tampered = signed.clone();
        tampered[10] ^= 1;
        assert!(!ring_verify(point, &tampered, &sig));
    }

    fn ring_verify(point: &[u8], msg: &[u8], sig: &[u8]) -> bool {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .all
            .iter()
            .any(|alg| {
                alg.public_key_alg_id() == rustls::pki_types::alg_id::ECDSA_P256
                    && alg.signature_alg_id() == rustls::pki_types::alg_id::ECDSA_SHA256
                    && alg.verify_signature(point, msg, sig).is_ok()
            })
    }

    #[test]
    fn stream_hash_is_over_payloads_in_order() {
        let mut a = StreamHasher::default();
        a.update(b"x");
        a.update(b"y");
        let mut b = StreamHasher::default();
        b.update(b"y");
        b.update(b"x");
        assert_ne!(a.finish(), b.finish());
        let mut c = StreamHasher::default();
        c.update(b"x");
        c.update(b"y");
        assert_eq!(c.finish(), Sha256::digest(b"x\ny\n"));
    }
}
