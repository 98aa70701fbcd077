//! Metering: the receipt of every completed generation, signed with the attested key.
//!
//! The format (a JWS with an ES256 signature over a JSON body) and its verification live in
//! [`chrysalis_attestation::receipt`]; docs/receipts.md describes the wire format and delivery.
//! Non-stream responses carry the receipt in the [`RECEIPT_HEADER`] header, streams in an HTTP
//! trailer of that name (when the request sent `TE: trailers`).

use chrysalis_attestation::Sha256;
pub use chrysalis_attestation::receipt::{
    RECEIPT_HEADER, RECEIPT_VERSION, ReceiptBody, ReceiptError, StreamHasher, Usage, verify,
};

use crate::tls::CertStore;

/// What the server knows about one completed exchange.
#[derive(Clone, Debug)]
pub struct Exchange<'a> {
    /// SHA-256 of the request body as received.
    pub request_sha256: Sha256,
    /// SHA-256 of the response body, or the stream hash ([`StreamHasher`]).
    pub response_sha256: Sha256,
    /// Streamed or not.
    pub stream: bool,
    /// Model id from the measured configuration.
    pub model_id: &'a str,
    /// Model pack root hash from the measured configuration.
    pub model_root_hash: Sha256,
    /// Usage counted by the engine.
    pub usage: crate::engine::Usage,
    /// Unix seconds of completion.
    pub created: u64,
}

/// Builds and signs the receipt of `ex` with the store's attested key.
pub fn issue(store: &CertStore, ex: &Exchange<'_>) -> Result<String, ReceiptError> {
    let body = ReceiptBody {
        v: RECEIPT_VERSION,
        request_sha256: ex.request_sha256,
        response_sha256: ex.response_sha256,
        stream: ex.stream,
        model: ex.model_id.to_owned(),
        model_root_hash: ex.model_root_hash.to_hex(),
        usage: Usage {
            prompt_tokens: ex.usage.prompt_tokens,
            completion_tokens: ex.usage.completion_tokens,
            total_tokens: ex.usage.total_tokens,
        },
        created: ex.created,
        signer_spki_sha256: store.key().spki_sha256(),
    };
    chrysalis_attestation::receipt::sign(store.key(), &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_receipts_verify_with_the_key_and_bind_the_exchange() {
        let store = CertStore::generate().unwrap();
        let ex = Exchange {
            request_sha256: Sha256::digest(b"req"),
            response_sha256: Sha256::digest(b"resp"),
            stream: false,
            model_id: "m",
            model_root_hash: Sha256([7; 32]),
            usage: crate::engine::Usage::new(3, 4),
            created: 1_800_000_000,
        };
        let r = issue(&store, &ex).unwrap();
        let body = verify(&r, store.key().spki_der()).unwrap();
        assert_eq!(body.usage.total_tokens, 7);
        assert_eq!(body.model_root_hash, "07".repeat(32));
        body.check_exchange(b"req", Sha256::digest(b"resp"))
            .unwrap();
        assert!(
            body.check_exchange(b"req", Sha256::digest(b"resp!"))
                .is_err()
        );
        let other = CertStore::generate().unwrap();
        assert!(verify(&r, other.key().spki_der()).is_err());
    }
}
