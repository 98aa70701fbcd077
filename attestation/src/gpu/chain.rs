//! X.509 chains of NVIDIA's two PKIs (the GPU's device identity, the RIM signers), verified up to
//! a root passed in, at a time passed in.

use thiserror::Error;
use x509_parser::prelude::{ASN1Time, FromDer, X509Certificate};

/// Why a certificate chain was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChainError {
    /// A certificate is not DER X.509.
    #[error("certificate {index} is not DER X.509")]
    Parse {
        /// Position in the chain (0: the leaf); the root is `chain length`.
        index: usize,
    },
    /// The chain is empty.
    #[error("certificate chain is empty")]
    Empty,
    /// A certificate's issuer is not the next certificate's subject.
    #[error("certificate {index} ({subject}) is not issued by {issuer}")]
    IssuerMismatch {
        /// Position of the certificate.
        index: usize,
        /// Its subject.
        subject: String,
        /// The subject of the certificate that should have issued it.
        issuer: String,
    },
    /// A signature in the chain does not verify.
    #[error("certificate {index} ({subject}): signature does not verify with its issuer's key")]
    Signature {
        /// Position of the certificate.
        index: usize,
        /// Its subject.
        subject: String,
    },
    /// A certificate is not valid at the verification time.
    #[error("certificate {index} ({subject}) is not valid at {now} (unix seconds)")]
    Expired {
        /// Position of the certificate.
        index: usize,
        /// Its subject.
        subject: String,
        /// The verification time.
        now: u64,
    },
    /// An issuing certificate is not a CA.
    #[error("certificate {index} ({subject}) issues certificates but is not a CA")]
    NotCa {
        /// Position of the certificate.
        index: usize,
        /// Its subject.
        subject: String,
    },
}

/// What a verified chain ends in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedChain {
    /// The leaf's subject.
    pub leaf_subject: String,
    /// The root's subject.
    pub root_subject: String,
    /// SHA-256 of the root's DER, hex.
    pub root_sha256: String,
    /// Number of certificates checked below the root.
    pub depth: usize,
}

/// Verifies `chain` (leaf first; a copy of the root at its end is allowed and ignored) up to
/// `root`: each issuer/subject link, each signature (the root's self-signature too), CA basic
/// constraints on every issuer, and validity at `now`. Does not check revocation.
pub fn verify_chain(chain: &[Vec<u8>], root: &[u8], now: u64) -> Result<VerifiedChain, ChainError> {
    let mut certs = Vec::with_capacity(chain.len());
    for (index, der) in chain.iter().enumerate() {
        if der.as_slice() == root {
            continue;
        }
        let (_, c) = X509Certificate::from_der(der).map_err(|_| ChainError::Parse { index })?;
        certs.push(c);
    }
    if certs.is_empty() {
        return Err(ChainError::Empty);
    }
    let (_, root_cert) =
        X509Certificate::from_der(root).map_err(|_| ChainError::Parse { index: certs.len() })?;
    let time = ASN1Time::from_timestamp(i64::try_from(now).unwrap_or(i64::MAX)).map_err(|_| {
        ChainError::Expired {
            index: 0,
            subject: String::new(),
            now,
        }
    })?;
    let all: Vec<&X509Certificate<'_>> = certs.iter().chain(std::iter::once(&root_cert)).collect();
    for (index, cert) in all.iter().enumerate() {
        let subject = cert.subject().to_string();
        let issuer = all.get(index + 1).copied().unwrap_or(&root_cert);
        if cert.issuer().as_raw() != issuer.subject().as_raw() {
            return Err(ChainError::IssuerMismatch {
                index,
                subject,
                issuer: issuer.subject().to_string(),
            });
        }
        if cert.verify_signature(Some(issuer.public_key())).is_err() {
            return Err(ChainError::Signature { index, subject });
        }
        if !cert.validity().is_valid_at(time) {
            return Err(ChainError::Expired {
                index,
                subject,
                now,
            });
        }
        if index > 0 && !cert.is_ca() {
            return Err(ChainError::NotCa { index, subject });
        }
    }
    use sha2::Digest;
    Ok(VerifiedChain {
        leaf_subject: certs[0].subject().to_string(),
        root_subject: root_cert.subject().to_string(),
        root_sha256: hex::encode(sha2::Sha256::digest(root)),
        depth: certs.len(),
    })
}

/// The TCG DICE TcbInfo extension's FWID of a certificate: NVIDIA puts the 48-byte SHA-384 FWID
/// at the end of the extension (OID 2.23.133.5.4.1); `None` when the certificate has none.
pub fn dice_fwid(der: &[u8]) -> Option<Vec<u8>> {
    let (_, c) = X509Certificate::from_der(der).ok()?;
    c.extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == "2.23.133.5.4.1")
        .filter(|e| e.value.len() >= 48)
        .map(|e| e.value[e.value.len() - 48..].to_vec())
}

/// Splits PEM text into the DER of each `CERTIFICATE` block, in order.
pub fn pem_certificates(text: &[u8]) -> Result<Vec<Vec<u8>>, ChainError> {
    let mut out = Vec::new();
    for (index, p) in x509_parser::pem::Pem::iter_from_buffer(text).enumerate() {
        let p = p.map_err(|_| ChainError::Parse { index })?;
        if p.label == "CERTIFICATE" {
            out.push(p.contents);
        }
    }
    if out.is_empty() {
        return Err(ChainError::Empty);
    }
    Ok(out)
}
