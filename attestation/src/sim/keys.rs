//! Seed-derived P-256 keys of the simulated PKI, usable by rcgen and for Intel's raw `r ‖ s` signatures.
//!
//! Every key is a pure function of (seed, label), and every signature is deterministic
//! (RFC 6979), so the same seed always yields byte-identical certificates, CRLs and quotes.

use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use sha2::{Digest, Sha256};

/// A P-256 signing key derived from the seed.
pub(crate) struct SimKey {
    signing: SigningKey,
    /// SEC1 uncompressed point: 0x04 ‖ x ‖ y.
    public_sec1: Vec<u8>,
}

impl SimKey {
    /// Derives the key named `label` from `seed`: the first SHA-256(len(seed) ‖ seed ‖ label ‖ counter)
    /// that is a valid scalar (non-zero, below the group order). The length prefix keeps
    /// (seed, label) pairs from colliding by concatenation.
    pub(crate) fn derive(seed: &[u8], label: &str) -> Self {
        for counter in 0u32.. {
            let digest = Sha256::new()
                .chain_update((seed.len() as u64).to_be_bytes())
                .chain_update(seed)
                .chain_update(label.as_bytes())
                .chain_update(counter.to_be_bytes())
                .finalize();
            // A digest at or above the group order (probability about 2^-32) is skipped.
            if let Ok(signing) = SigningKey::from_bytes(&digest) {
                let public_sec1 = signing
                    .verifying_key()
                    .to_encoded_point(false)
                    .as_bytes()
                    .to_vec();
                return Self {
                    signing,
                    public_sec1,
                };
            }
        }
        unreachable!("a valid P-256 scalar is found long before 2^32 tries")
    }

    /// The public key as Intel's quote carries it: x ‖ y, 64 bytes, no SEC1 prefix.
    pub(crate) fn public_raw(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(&self.public_sec1[1..]);
        out
    }

    /// ECDSA-P256-SHA256 over `msg`, as the raw 64-byte `r ‖ s` that Intel ships in quotes and collateral.
    pub(crate) fn sign_raw(&self, msg: &[u8]) -> [u8; 64] {
        let sig: Signature = self.signing.sign(msg);
        sig.to_bytes().into()
    }
}

impl rcgen::PublicKeyData for SimKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public_sec1
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl rcgen::SigningKey for SimKey {
    /// X.509 wants the DER `Ecdsa-Sig-Value`, not the raw form.
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let sig: Signature = self.signing.sign(msg);
        Ok(sig.to_der().as_bytes().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier;

    #[test]
    fn derivation_is_deterministic_and_label_separated() {
        let a = SimKey::derive(b"seed", "root");
        assert_eq!(a.public_raw(), SimKey::derive(b"seed", "root").public_raw());
        assert_ne!(a.public_raw(), SimKey::derive(b"seed", "pck").public_raw());
        assert_ne!(
            a.public_raw(),
            SimKey::derive(b"seed2", "root").public_raw()
        );
        // Length prefix: ("see", "droot") is not ("seed", "root").
        assert_ne!(a.public_raw(), SimKey::derive(b"see", "droot").public_raw());
    }

    #[test]
    fn raw_signatures_are_deterministic_and_verify() {
        let key = SimKey::derive(b"seed", "k");
        let sig = key.sign_raw(b"message");
        assert_eq!(sig, key.sign_raw(b"message"));
        let parsed = Signature::from_slice(&sig).unwrap();
        key.signing
            .verifying_key()
            .verify(b"message", &parsed)
            .unwrap();
        assert!(
            key.signing
                .verifying_key()
                .verify(b"messagf", &parsed)
                .is_err()
        );
    }
}
