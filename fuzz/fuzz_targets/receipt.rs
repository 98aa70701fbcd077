//! Fuzzes receipt verification as the client runs it on a `chrysalis-receipt` header or trailer
//! (`receipt::verify`: JWS compact parsing, the signer's SubjectPublicKeyInfo, ES256, the body).
//! Input: a 2-byte big-endian length, that many bytes of SPKI DER, then the receipt text.
//! A receipt that verifies names that key and the current version.
#![no_main]

use chrysalis_attestation::Sha256;
use chrysalis_attestation::receipt::{self, RECEIPT_VERSION};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [a, b, rest @ ..] = data else {
        return;
    };
    let n = usize::from(u16::from_be_bytes([*a, *b]));
    let Some((spki, jws)) = rest.split_at_checked(n) else {
        return;
    };
    // Header values reach the client as text (`HeaderValue::to_str`).
    let Ok(jws) = std::str::from_utf8(jws) else {
        return;
    };
    if let Ok(body) = receipt::verify(jws, spki) {
        assert_eq!(body.v, RECEIPT_VERSION);
        assert_eq!(body.signer_spki_sha256, Sha256::digest(spki));
        let _ = body.check_exchange(b"{}", body.response_sha256);
        let json = serde_json::to_vec(&body).expect("a body serializes");
        assert_eq!(
            serde_json::from_slice::<receipt::ReceiptBody>(&json).expect("parses"),
            body
        );
    }
});
