//! Usage receipts: what the guest served, signed with its attested TLS key.
//!
//! A receipt is a JWS in compact serialization (RFC 7515) with `alg` ES256 and `typ`
//! [`RECEIPT_TYP`]; its payload is a JSON [`ReceiptBody`]. Any JOSE library can check the
//! signature; [`verify`] also checks that the signer is the key a client attested. The full
//! format, and how receipts travel (response header, HTTP trailer), is in docs/receipts.md.
//!
//! Hashes: `request_sha256` is over the request body bytes as received. For a plain response,
//! `response_sha256` is over the body bytes as sent; for a server-sent-event stream it is over
//! each event's `data` payload in order, each followed by one LF, the final `[DONE]` included
//! ([`StreamHasher`]).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use thiserror::Error;

use crate::evidence::Sha256;
#[cfg(feature = "signing")]
use crate::ratls::AttestedKey;

/// The JWS `typ` of a receipt.
pub const RECEIPT_TYP: &str = "chrysalis-receipt+jwt";
/// Response header (plain responses) and trailer (streams) that carry the receipt.
pub const RECEIPT_HEADER: &str = "chrysalis-receipt";
/// Current receipt body version.
pub const RECEIPT_VERSION: u32 = 1;

/// Token counts, as the OpenAI API reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
    /// Their sum.
    pub total_tokens: u64,
}

/// What a receipt attests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptBody {
    /// Body format version ([`RECEIPT_VERSION`]).
    pub v: u32,
    /// SHA-256 of the request body.
    pub request_sha256: Sha256,
    /// SHA-256 of the response (see the module documentation for streams).
    pub response_sha256: Sha256,
    /// True for a server-sent-event stream.
    pub stream: bool,
    /// The model id served.
    pub model: String,
    /// The model pack's dm-verity root hash, from the measured configuration.
    pub model_root_hash: String,
    /// Token usage as counted inside the VM.
    pub usage: Usage,
    /// When the response completed (unix seconds, guest clock).
    pub created: u64,
    /// SHA-256 of the signer's SubjectPublicKeyInfo (the RA-TLS certificate's key).
    pub signer_spki_sha256: Sha256,
}

/// Why a receipt could not be produced or verified.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReceiptError {
    /// Not three base64url parts, or a part does not decode.
    #[error("malformed receipt: {0}")]
    Malformed(String),
    /// The header does not say ES256 / chrysalis-receipt+jwt.
    #[error("receipt header {0} is not ES256 {RECEIPT_TYP}")]
    Header(String),
    /// The signature does not verify under the attested key.
    #[error("receipt signature does not verify with the attested key")]
    Signature,
    /// The receipt names another signer than the attested key.
    #[error("receipt was signed for key {claimed}, the attested key is {attested}")]
    Signer {
        /// What the receipt claims.
        claimed: Sha256,
        /// The key the client verified.
        attested: Sha256,
    },
    /// A hash in the receipt does not match what the client sent or received.
    #[error("receipt {field} is {claimed}, but what was exchanged hashes to {actual}")]
    Mismatch {
        /// Which hash.
        field: &'static str,
        /// What the receipt says.
        claimed: Sha256,
        /// What the client computed.
        actual: Sha256,
    },
    /// The body format version is unknown.
    #[error("receipt version {0} is not supported")]
    Version(u32),
    /// The key is not an uncompressed P-256 SubjectPublicKeyInfo, or signing failed.
    #[error("receipt key: {0}")]
    Key(String),
}

#[cfg(feature = "signing")]
fn header_b64() -> String {
    URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"ES256","typ":"{RECEIPT_TYP}"}}"#))
}

/// Signs `body` with the attested key: a JWS compact string. Feature `signing`.
#[cfg(feature = "signing")]
pub fn sign(key: &AttestedKey, body: &ReceiptBody) -> Result<String, ReceiptError> {
    if body.signer_spki_sha256 != key.spki_sha256() {
        return Err(ReceiptError::Signer {
            claimed: body.signer_spki_sha256,
            attested: key.spki_sha256(),
        });
    }
    let payload = serde_json::to_vec(body).map_err(|e| ReceiptError::Malformed(e.to_string()))?;
    let input = format!("{}.{}", header_b64(), URL_SAFE_NO_PAD.encode(payload));
    let sig = key
        .sign_es256(input.as_bytes())
        .map_err(|e| ReceiptError::Key(e.to_string()))?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

/// Verifies a receipt's signature with the attested key's SPKI and returns its body.
///
/// Checks the JWS header, the ES256 signature, the version, and that the body names this key.
/// Does NOT check the request/response hashes: see [`ReceiptBody::check_exchange`].
pub fn verify(compact: &str, signer_spki_der: &[u8]) -> Result<ReceiptBody, ReceiptError> {
    let mut parts = compact.trim().split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReceiptError::Malformed(
            "expected header.payload.signature".into(),
        ));
    };
    let decode = |what: &str, x: &str| {
        URL_SAFE_NO_PAD
            .decode(x)
            .map_err(|e| ReceiptError::Malformed(format!("{what}: {e}")))
    };
    let header: serde_json::Value = serde_json::from_slice(&decode("header", h)?)
        .map_err(|e| ReceiptError::Malformed(format!("header: {e}")))?;
    if header.get("alg").and_then(|v| v.as_str()) != Some("ES256")
        || header.get("typ").and_then(|v| v.as_str()) != Some(RECEIPT_TYP)
    {
        return Err(ReceiptError::Header(header.to_string()));
    }
    let point = ec_point(signer_spki_der)?;
    let signed = &compact.trim()[..h.len() + 1 + p.len()];
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, point)
        .verify(signed.as_bytes(), &decode("signature", s)?)
        .map_err(|_| ReceiptError::Signature)?;
    let body: ReceiptBody = serde_json::from_slice(&decode("payload", p)?)
        .map_err(|e| ReceiptError::Malformed(format!("payload: {e}")))?;
    if body.v != RECEIPT_VERSION {
        return Err(ReceiptError::Version(body.v));
    }
    let attested = Sha256::digest(signer_spki_der);
    if body.signer_spki_sha256 != attested {
        return Err(ReceiptError::Signer {
            claimed: body.signer_spki_sha256,
            attested,
        });
    }
    Ok(body)
}

fn ec_point(spki_der: &[u8]) -> Result<Vec<u8>, ReceiptError> {
    use x509_parser::prelude::FromDer;
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der)
        .map_err(|e| ReceiptError::Key(format!("not a SubjectPublicKeyInfo: {e}")))?;
    let ec = x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY;
    let p256 = x509_parser::oid_registry::OID_EC_P256;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    if spki.algorithm.algorithm != ec || curve.as_ref() != Some(&p256) {
        return Err(ReceiptError::Key("not an EC P-256 key".into()));
    }
    Ok(spki.subject_public_key.data.to_vec())
}

impl ReceiptBody {
    /// Checks the receipt against what the client sent and received.
    pub fn check_exchange(
        &self,
        request_body: &[u8],
        response_sha256: Sha256,
    ) -> Result<(), ReceiptError> {
        let req = Sha256::digest(request_body);
        if self.request_sha256 != req {
            return Err(ReceiptError::Mismatch {
                field: "request_sha256",
                claimed: self.request_sha256,
                actual: req,
            });
        }
        if self.response_sha256 != response_sha256 {
            return Err(ReceiptError::Mismatch {
                field: "response_sha256",
                claimed: self.response_sha256,
                actual: response_sha256,
            });
        }
        Ok(())
    }
}

/// Hash of a server-sent-event stream as receipts define it: each `data` payload in order,
/// each followed by one LF. Guest and clients use this same code.
#[derive(Clone, Debug, Default)]
pub struct StreamHasher {
    inner: sha2::Sha256,
}

impl StreamHasher {
    /// An empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one event's data payload (without the `data: ` prefix or line ends).
    pub fn data(&mut self, payload: &[u8]) {
        self.inner.update(payload);
        self.inner.update(b"\n");
    }

    /// Adds every `data:` line of a chunk of SSE text that holds whole events.
    pub fn sse_text(&mut self, text: &[u8]) {
        for line in text.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(payload) = line.strip_prefix(b"data:") {
                self.data(payload.strip_prefix(b" ").unwrap_or(payload));
            }
        }
    }

    /// The digest.
    pub fn finish(self) -> Sha256 {
        Sha256(self.inner.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(key: &AttestedKey) -> ReceiptBody {
        ReceiptBody {
            v: RECEIPT_VERSION,
            request_sha256: Sha256::digest(b"request"),
            response_sha256: Sha256::digest(b"response"),
            stream: false,
            model: "smollm2".into(),
            model_root_hash: "ab".repeat(32),
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: 5,
                total_tokens: 8,
            },
            created: 1_800_000_000,
            signer_spki_sha256: key.spki_sha256(),
        }
    }

    #[test]
    fn sign_verify_and_tamper() {
        let key = AttestedKey::generate().unwrap();
        let b = body(&key);
        let r = sign(&key, &b).unwrap();
        assert_eq!(verify(&r, key.spki_der()).unwrap(), b);
        b.check_exchange(b"request", Sha256::digest(b"response"))
            .unwrap();
        let err = b
            .check_exchange(b"request", Sha256::digest(b"responsf"))
            .unwrap_err();
        assert!(matches!(
            err,
            ReceiptError::Mismatch {
                field: "response_sha256",
                ..
            }
        ));
        let other = AttestedKey::generate().unwrap();
        assert_eq!(
            verify(&r, other.spki_der()).unwrap_err(),
            ReceiptError::Signature
        );
        let mut tampered = r.clone().into_bytes();
        let mid = tampered.len() / 2;
        tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
        assert!(verify(std::str::from_utf8(&tampered).unwrap(), key.spki_der()).is_err());
        assert!(verify("a.b", key.spki_der()).is_err());
    }

    #[test]
    fn stream_hash_is_over_data_payloads() {
        let mut a = StreamHasher::new();
        a.sse_text(b"data: {\"x\":1}\n\ndata: [DONE]\n\n");
        let mut b = StreamHasher::new();
        b.data(b"{\"x\":1}");
        b.data(b"[DONE]");
        assert_eq!(a.finish(), b.finish());
    }
}
