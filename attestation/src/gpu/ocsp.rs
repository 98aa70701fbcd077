//! OCSP (RFC 6960) answers for the certificates of NVIDIA's device chain, checked offline with
//! the root and the time passed in.
//!
//! NVIDIA's verifier (nvtrust `nv-local-gpu-verifier`) asks NVIDIA's responder about each
//! certificate of the GPU chain between the leaf and the root, one request per certificate, each
//! with a fresh nonce. Here the responses were fetched by someone else (the host, the guest), so:
//!
//! - **No nonce check.** A nonce proves freshness only to the party that chose it; this verifier
//!   chose none, so a nonce extension in a response is read past and never compared. Freshness
//!   comes from each answer's `thisUpdate` / `nextUpdate` against `now` instead (allowing
//!   [`CLOCK_SKEW_SECS`] of clock skew): a recorded "good" answer stays usable until its
//!   `nextUpdate`, as RFC 6960 §4.2.2.1 allows a client to cache it. An answer without
//!   `nextUpdate` is accepted at any age after its `thisUpdate`; the verdict lists each answer's
//!   `thisUpdate` so that a caller can bound its age.
//! - **Who may answer.** RFC 6960 §4.2.2.2 lets three parties sign an answer: the CA that issued
//!   the certificate asked about; a responder that CA delegated (a certificate it issued that
//!   carries id-kp-OCSPSigning); and a responder the client trusts by local configuration. This
//!   module accepts the first two, and, as its local rule, a responder certificate carrying
//!   id-kp-OCSPSigning issued by a CA *above* the issuer in the same verified chain (the root
//!   included). That rule is what NVIDIA's own verifier allows (it accepts any responder
//!   certificate that chains to the root through the chain's certificates) without widening
//!   trust: a CA above the issuer can already issue any certificate below it. It does not accept
//!   a responder issued by a CA outside the chain (a sibling CA under the same root), one
//!   without id-kp-OCSPSigning (NVIDIA's verifier does not check that extension; RFC 6960
//!   requires it), nor one issued by the certificate asked about itself.
//! - **What is not checked:** the delegated responder certificate's own revocation (RFC 6960
//!   §4.2.2.2.1 leaves that to the CA, typically id-pkix-ocsp-nocheck), and `producedAt`.

use serde::Serialize;
use thiserror::Error;
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::{Decode, Encode, Header, Reader, SliceReader};
use x509_ocsp::{BasicOcspResponse, CertId, CertStatus, OcspResponse, OcspResponseStatus};
use x509_ocsp::{ResponderId, SingleResponse};
use x509_parser::prelude::{ASN1Time, FromDer, X509Certificate};

use super::chain::{ChainError, verify_chain};

/// Clock skew allowed between the responder and `now`, in seconds, on both `thisUpdate` (may be
/// this far in the future) and `nextUpdate` (may be this far in the past).
pub const CLOCK_SKEW_SECS: u64 = 5 * 60;

/// Object identifiers this module reads.
mod oid {
    use x509_cert::der::asn1::ObjectIdentifier as Oid;

    pub(super) const OCSP_BASIC: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.48.1.1");
    pub(super) const OCSP_NONCE: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.48.1.2");
    pub(super) const SHA1: Oid = Oid::new_unwrap("1.3.14.3.2.26");
    pub(super) const SHA256: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.1");
    pub(super) const SHA384: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.2");
    pub(super) const SHA512: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.3");
    pub(super) const ECDSA_SHA256: Oid = Oid::new_unwrap("1.2.840.10045.4.3.2");
    pub(super) const ECDSA_SHA384: Oid = Oid::new_unwrap("1.2.840.10045.4.3.3");
    pub(super) const RSA_SHA256: Oid = Oid::new_unwrap("1.2.840.113549.1.1.11");
    pub(super) const RSA_SHA384: Oid = Oid::new_unwrap("1.2.840.113549.1.1.12");
    pub(super) const RSA_SHA512: Oid = Oid::new_unwrap("1.2.840.113549.1.1.13");
    // Key types, as x509-parser writes them.
    pub(super) const EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
    pub(super) const P256: &str = "1.2.840.10045.3.1.7";
    pub(super) const P384: &str = "1.3.132.0.34";
    pub(super) const RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
}

/// Why the OCSP answers for a chain were refused. Each variant names the rule that failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OcspError {
    /// The chain the answers are about does not verify (the answers are checked against a
    /// verified chain only).
    #[error("device chain")]
    Chain(#[source] ChainError),
    /// A response is not a DER OCSPResponse holding a DER BasicOCSPResponse.
    #[error("OCSP response {index} is not a DER OCSPResponse with a BasicOCSPResponse")]
    Parse {
        /// Position of the response among those passed in.
        index: usize,
    },
    /// A response's status is not `successful` (it then carries no answers).
    #[error("OCSP response {index}: responseStatus is {status}, not successful")]
    NotSuccessful {
        /// Position of the response.
        index: usize,
        /// The status, as RFC 6960 names it.
        status: String,
    },
    /// A response is of another type than id-pkix-ocsp-basic.
    #[error("OCSP response {index}: responseType {oid} is not id-pkix-ocsp-basic")]
    NotBasic {
        /// Position of the response.
        index: usize,
        /// The response type.
        oid: String,
    },
    /// A response or one of its answers has a critical extension this module does not know.
    #[error("OCSP response {index}: critical extension {oid} is not understood")]
    CriticalExtension {
        /// Position of the response.
        index: usize,
        /// The extension.
        oid: String,
    },
    /// An answer's CertID is hashed with an algorithm this module does not compute.
    #[error("OCSP response {index}: CertID hash algorithm {oid} is not supported")]
    CertIdHash {
        /// Position of the response.
        index: usize,
        /// The hash algorithm.
        oid: String,
    },
    /// The responder named by the response is neither the issuer of the certificate asked
    /// about nor among the response's certificates.
    #[error(
        "OCSP response {index}: responder {responder} is neither the issuer of certificate {cert_index} ({subject}) nor among the response's certificates"
    )]
    ResponderNotFound {
        /// Position of the response.
        index: usize,
        /// The responder id (name, or `key:` and the key hash in hex).
        responder: String,
        /// Position of the certificate asked about in the chain.
        cert_index: usize,
        /// Its subject.
        subject: String,
    },
    /// The responder's certificate may not answer for the certificate asked about.
    #[error(
        "OCSP response {index}: responder {responder} may not answer for certificate {cert_index} ({subject}): {reason}"
    )]
    UnauthorizedResponder {
        /// Position of the response.
        index: usize,
        /// The responder certificate's subject.
        responder: String,
        /// Position of the certificate asked about in the chain.
        cert_index: usize,
        /// Its subject.
        subject: String,
        /// Which rule it fails.
        reason: &'static str,
    },
    /// The response's signature algorithm (or the responder's key type) is not supported.
    #[error(
        "OCSP response {index}: signature algorithm {oid} with this responder key is not supported"
    )]
    SignatureAlgorithm {
        /// Position of the response.
        index: usize,
        /// The signature algorithm.
        oid: String,
    },
    /// The response's signature does not verify with the responder's key.
    #[error("OCSP response {index}: signature does not verify with responder {responder}'s key")]
    Signature {
        /// Position of the response.
        index: usize,
        /// The responder certificate's subject.
        responder: String,
    },
    /// A certificate of the chain is revoked.
    #[error(
        "certificate {cert_index} ({subject}) is revoked since {revoked_at} (unix seconds), reason: {reason}"
    )]
    Revoked {
        /// Position of the certificate in the chain.
        cert_index: usize,
        /// Its subject.
        subject: String,
        /// The revocation time, unix seconds.
        revoked_at: u64,
        /// The CRL reason code, or `unspecified` when the answer gives none.
        reason: String,
    },
    /// The responder does not know a certificate of the chain.
    #[error("certificate {cert_index} ({subject}): OCSP status is unknown")]
    Unknown {
        /// Position of the certificate in the chain.
        cert_index: usize,
        /// Its subject.
        subject: String,
    },
    /// An answer was produced after `now` (beyond the allowed skew).
    #[error(
        "certificate {cert_index} ({subject}): OCSP answer's thisUpdate {this_update} is after {now} (unix seconds, {CLOCK_SKEW_SECS} s skew allowed)"
    )]
    NotYetValid {
        /// Position of the certificate in the chain.
        cert_index: usize,
        /// Its subject.
        subject: String,
        /// The answer's thisUpdate, unix seconds.
        this_update: u64,
        /// The verification time.
        now: u64,
    },
    /// An answer's nextUpdate has passed.
    #[error(
        "certificate {cert_index} ({subject}): OCSP answer is stale, nextUpdate {next_update} is before {now} (unix seconds, {CLOCK_SKEW_SECS} s skew allowed)"
    )]
    Stale {
        /// Position of the certificate in the chain.
        cert_index: usize,
        /// Its subject.
        subject: String,
        /// The answer's nextUpdate, unix seconds.
        next_update: u64,
        /// The verification time.
        now: u64,
    },
    /// No response answers for a certificate of the chain.
    #[error("certificate {cert_index} ({subject}): no OCSP answer among the responses")]
    MissingAnswer {
        /// Position of the certificate in the chain.
        cert_index: usize,
        /// Its subject.
        subject: String,
    },
}

/// The status an accepted answer gives a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AnswerStatus {
    /// `good`: the responder knows the certificate and it is not revoked.
    Good,
}

/// One certificate's accepted answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateAnswer {
    /// Position of the certificate in the chain (0: the leaf).
    pub cert_index: usize,
    /// Its subject.
    pub subject: String,
    /// Its serial number, hex.
    pub serial: String,
    /// The answer's status.
    pub status: AnswerStatus,
    /// The answer's thisUpdate, unix seconds.
    pub this_update: u64,
    /// The answer's nextUpdate, unix seconds, when it has one.
    pub next_update: Option<u64>,
    /// Subject of the certificate whose key signed the answer.
    pub responder: String,
    /// Position of the response that holds the answer, among those passed in.
    pub response_index: usize,
}

/// Proof that every certificate in scope has a valid "good" answer; only this module builds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OcspVerdict {
    answers: Vec<CertificateAnswer>,
}

impl OcspVerdict {
    /// Each checked certificate's answer, in chain order (leaf side first). When a certificate
    /// has several valid answers, the first found (by response, then answer order) is listed.
    pub fn answers(&self) -> &[CertificateAnswer] {
        &self.answers
    }
}

/// Checks that every certificate of the device chain except the root has a valid "good" OCSP
/// answer among `responses` (each a DER OCSPResponse) at `now` (unix seconds).
///
/// `chain` and `root` are taken as [`verify_chain`] takes them (leaf first; a copy of the root at
/// the end is ignored), and the chain is verified first: an answer is only matched against a
/// certificate whose issuer is known. Returns Ok only if, for each certificate in scope, at least
/// one answer's CertID (hash of the issuer's name and key, and the serial) names it, and every
/// answer that names it has: a successful BasicOCSPResponse around it; a signature that verifies
/// with a responder allowed to answer for it (module docs); no unknown critical extension; status
/// good (revoked: [`OcspError::Revoked`]; unknown: [`OcspError::Unknown`]); `thisUpdate` not
/// after `now` and `nextUpdate`, when present, not before `now`, within [`CLOCK_SKEW_SECS`].
/// Answers about other certificates are ignored. Does not check a nonce (module docs).
///
/// NVIDIA's verifier does not ask about the GPU chain's leaf (the certificate the GPU issues for
/// its attestation key with its device identity key, which NVIDIA's responder has no record of);
/// [`check_chain_except_leaf`] applies the same scope.
pub fn check_chain(
    chain: &[Vec<u8>],
    root: &[u8],
    responses: &[Vec<u8>],
    now: u64,
) -> Result<OcspVerdict, OcspError> {
    check(chain, root, responses, now, 0)
}

/// [`check_chain`] for every certificate except the leaf and the root: the scope of NVIDIA's
/// verifier, which asks its responder about the certificates NVIDIA's CAs issued (on a Hopper
/// chain: the device identity certificate and the two CAs above it), not about the leaf that the
/// GPU issues itself. A revoked device identity certificate still fails the chain.
pub fn check_chain_except_leaf(
    chain: &[Vec<u8>],
    root: &[u8],
    responses: &[Vec<u8>],
    now: u64,
) -> Result<OcspVerdict, OcspError> {
    check(chain, root, responses, now, 1)
}

/// A parsed response: the BasicOCSPResponse, its signed bytes, and its certificates' DER.
struct Parsed {
    basic: BasicOcspResponse,
    tbs: Vec<u8>,
    certs: Vec<Vec<u8>>,
}

fn check(
    chain: &[Vec<u8>],
    root: &[u8],
    responses: &[Vec<u8>],
    now: u64,
    first: usize,
) -> Result<OcspVerdict, OcspError> {
    verify_chain(chain, root, now).map_err(OcspError::Chain)?;
    let chain_err = |index| OcspError::Chain(ChainError::Parse { index });
    let mut certs = Vec::with_capacity(chain.len() + 1);
    for (index, der) in chain.iter().enumerate() {
        if der.as_slice() != root {
            certs.push(
                X509Certificate::from_der(der)
                    .map_err(|_| chain_err(index))?
                    .1,
            );
        }
    }
    let below_root = certs.len();
    certs.push(
        X509Certificate::from_der(root)
            .map_err(|_| chain_err(below_root))?
            .1,
    );
    let time = ASN1Time::from_timestamp(i64::try_from(now).unwrap_or(i64::MAX)).map_err(|_| {
        OcspError::Chain(ChainError::Expired {
            index: 0,
            subject: String::new(),
            now,
        })
    })?;

    let parsed = responses
        .iter()
        .enumerate()
        .map(|(index, der)| parse(index, der))
        .collect::<Result<Vec<_>, _>>()?;

    let mut answers = Vec::new();
    for cert_index in first..below_root {
        let cert = &certs[cert_index];
        let subject = cert.subject().to_string();
        let mut accepted: Option<CertificateAnswer> = None;
        for (response_index, response) in parsed.iter().enumerate() {
            for single in &response.basic.tbs_response_data.responses {
                if !names(
                    response_index,
                    &single.cert_id,
                    cert,
                    &certs[cert_index + 1],
                )? {
                    continue;
                }
                let ctx = Context {
                    response_index,
                    cert_index,
                    subject: &subject,
                    ancestors: &certs[cert_index + 1..],
                    now,
                    time,
                };
                let answer = ctx.check_answer(response, single, cert)?;
                accepted.get_or_insert(answer);
            }
        }
        answers.push(accepted.ok_or(OcspError::MissingAnswer {
            cert_index,
            subject,
        })?);
    }
    Ok(OcspVerdict { answers })
}

/// Parses one response down to its BasicOCSPResponse, and checks what does not depend on the
/// certificate asked about: status, type, critical extensions.
fn parse(index: usize, der: &[u8]) -> Result<Parsed, OcspError> {
    let parse_err = |_| OcspError::Parse { index };
    let outer = OcspResponse::from_der(der).map_err(parse_err)?;
    if outer.response_status != OcspResponseStatus::Successful {
        return Err(OcspError::NotSuccessful {
            index,
            status: status_name(outer.response_status).to_owned(),
        });
    }
    let bytes = outer.response_bytes.ok_or(OcspError::Parse { index })?;
    if bytes.response_type != oid::OCSP_BASIC {
        return Err(OcspError::NotBasic {
            index,
            oid: bytes.response_type.to_string(),
        });
    }
    let basic_der = bytes.response.as_bytes();
    let basic = BasicOcspResponse::from_der(basic_der).map_err(parse_err)?;
    // The signature covers tbsResponseData as sent, not as re-encoded.
    let tbs = {
        let mut reader = SliceReader::new(basic_der).map_err(parse_err)?;
        Header::decode(&mut reader).map_err(parse_err)?;
        reader.tlv_bytes().map_err(parse_err)?.to_vec()
    };
    let data = &basic.tbs_response_data;
    let known = |id: &ObjectIdentifier| *id == oid::OCSP_NONCE;
    let extensions = data
        .response_extensions
        .iter()
        .flatten()
        .filter(|e| !known(&e.extn_id));
    let single_extensions = data
        .responses
        .iter()
        .flat_map(|s| s.single_extensions.iter().flatten());
    if let Some(e) = extensions.chain(single_extensions).find(|e| e.critical) {
        return Err(OcspError::CriticalExtension {
            index,
            oid: e.extn_id.to_string(),
        });
    }
    let certs = basic
        .certs
        .iter()
        .flatten()
        .map(|c| c.to_der().map_err(parse_err))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Parsed { basic, tbs, certs })
}

fn status_name(status: OcspResponseStatus) -> &'static str {
    match status {
        OcspResponseStatus::Successful => "successful",
        OcspResponseStatus::MalformedRequest => "malformedRequest",
        OcspResponseStatus::InternalError => "internalError",
        OcspResponseStatus::TryLater => "tryLater",
        OcspResponseStatus::SigRequired => "sigRequired",
        OcspResponseStatus::Unauthorized => "unauthorized",
    }
}

/// Whether `id` names `cert` as issued by `issuer`: same serial, and the hashes of the issuer's
/// name (DER) and key (the subjectPublicKey BIT STRING's bytes) under the CertID's algorithm.
fn names(
    index: usize,
    id: &CertId,
    cert: &X509Certificate<'_>,
    issuer: &X509Certificate<'_>,
) -> Result<bool, OcspError> {
    use ring::digest;
    let algorithm = match id.hash_algorithm.oid {
        o if o == oid::SHA1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
        o if o == oid::SHA256 => &digest::SHA256,
        o if o == oid::SHA384 => &digest::SHA384,
        o if o == oid::SHA512 => &digest::SHA512,
        o => {
            return Err(OcspError::CertIdHash {
                index,
                oid: o.to_string(),
            });
        }
    };
    if id.serial_number.as_bytes() != cert.raw_serial() {
        return Ok(false);
    }
    let name_hash = digest::digest(algorithm, issuer.subject().as_raw());
    let key_hash = digest::digest(algorithm, &issuer.public_key().subject_public_key.data);
    Ok(id.issuer_name_hash.as_bytes() == name_hash.as_ref()
        && id.issuer_key_hash.as_bytes() == key_hash.as_ref())
}

/// The certificate an answer is about, for the checks that depend on it.
struct Context<'c, 'a> {
    response_index: usize,
    cert_index: usize,
    subject: &'c str,
    /// The certificate's issuer first, then each CA above it, the root last.
    ancestors: &'c [X509Certificate<'a>],
    now: u64,
    time: ASN1Time,
}

impl Context<'_, '_> {
    fn check_answer(
        &self,
        response: &Parsed,
        single: &SingleResponse,
        cert: &X509Certificate<'_>,
    ) -> Result<CertificateAnswer, OcspError> {
        let responder = self.verify_signature(response)?;
        let subject = || self.subject.to_owned();
        let cert_index = self.cert_index;
        match &single.cert_status {
            CertStatus::Good(_) => {}
            CertStatus::Revoked(info) => {
                return Err(OcspError::Revoked {
                    cert_index,
                    subject: subject(),
                    revoked_at: info.revocation_time.0.to_unix_duration().as_secs(),
                    reason: info
                        .revocation_reason
                        .map_or_else(|| "unspecified".to_owned(), |r| format!("{r:?}")),
                });
            }
            CertStatus::Unknown(_) => {
                return Err(OcspError::Unknown {
                    cert_index,
                    subject: subject(),
                });
            }
        }
        let this_update = single.this_update.0.to_unix_duration().as_secs();
        if this_update > self.now.saturating_add(CLOCK_SKEW_SECS) {
            return Err(OcspError::NotYetValid {
                cert_index,
                subject: subject(),
                this_update,
                now: self.now,
            });
        }
        let next_update = single.next_update.map(|t| t.0.to_unix_duration().as_secs());
        if let Some(next_update) = next_update
            && next_update.saturating_add(CLOCK_SKEW_SECS) < self.now
        {
            return Err(OcspError::Stale {
                cert_index,
                subject: subject(),
                next_update,
                now: self.now,
            });
        }
        Ok(CertificateAnswer {
            cert_index,
            subject: subject(),
            serial: hex::encode(cert.raw_serial()),
            status: AnswerStatus::Good,
            this_update,
            next_update,
            responder,
            response_index: self.response_index,
        })
    }

    /// Finds the responder the response names, checks that it may answer for the certificate,
    /// and verifies the response's signature with its key. Returns the responder's subject.
    fn verify_signature(&self, response: &Parsed) -> Result<String, OcspError> {
        let issuer = &self.ancestors[0];
        let id = &response.basic.tbs_response_data.responder_id;
        if identifies(id, issuer) {
            return self.verify_with(response, issuer);
        }
        let mut refusal = None;
        for der in &response.certs {
            let Ok((_, candidate)) = X509Certificate::from_der(der) else {
                return Err(OcspError::Parse {
                    index: self.response_index,
                });
            };
            if !identifies(id, &candidate) {
                continue;
            }
            match self.delegation(&candidate) {
                Ok(()) => return self.verify_with(response, &candidate),
                Err(reason) => refusal = Some((candidate.subject().to_string(), reason)),
            }
        }
        Err(match refusal {
            Some((responder, reason)) => OcspError::UnauthorizedResponder {
                index: self.response_index,
                responder,
                cert_index: self.cert_index,
                subject: self.subject.to_owned(),
                reason,
            },
            None => OcspError::ResponderNotFound {
                index: self.response_index,
                responder: match id {
                    ResponderId::ByName(name) => name.to_string(),
                    ResponderId::ByKey(hash) => format!("key:{}", hex::encode(hash.as_bytes())),
                },
                cert_index: self.cert_index,
                subject: self.subject.to_owned(),
            },
        })
    }

    /// Whether `responder` is a delegated responder for the certificate: it carries
    /// id-kp-OCSPSigning, is valid at `now`, and is issued (name and signature) by the
    /// certificate's issuer or a CA above it in the chain.
    fn delegation(&self, responder: &X509Certificate<'_>) -> Result<(), &'static str> {
        let eku = responder
            .extended_key_usage()
            .map_err(|_| "its extended key usage extension does not parse")?;
        if !eku.is_some_and(|e| e.value.ocsp_signing) {
            return Err("it does not carry id-kp-OCSPSigning");
        }
        if !responder.validity().is_valid_at(self.time) {
            return Err("it is not valid at the verification time");
        }
        let issued = self.ancestors.iter().any(|ca| {
            responder.issuer().as_raw() == ca.subject().as_raw()
                && responder.verify_signature(Some(ca.public_key())).is_ok()
        });
        if !issued {
            return Err(
                "it is not issued by the certificate's issuer nor a CA above it in the chain",
            );
        }
        Ok(())
    }

    fn verify_with(
        &self,
        response: &Parsed,
        responder: &X509Certificate<'_>,
    ) -> Result<String, OcspError> {
        use ring::signature as sig;
        let index = self.response_index;
        let spki = responder.public_key();
        let key_type = spki.algorithm.algorithm.to_id_string();
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map(|o| o.to_id_string());
        let algorithm_oid = response.basic.signature_algorithm.oid;
        let algorithm: &'static dyn sig::VerificationAlgorithm =
            match (algorithm_oid, key_type.as_str(), curve.as_deref()) {
                (a, oid::EC_PUBLIC_KEY, Some(oid::P256)) if a == oid::ECDSA_SHA256 => {
                    &sig::ECDSA_P256_SHA256_ASN1
                }
                (a, oid::EC_PUBLIC_KEY, Some(oid::P256)) if a == oid::ECDSA_SHA384 => {
                    &sig::ECDSA_P256_SHA384_ASN1
                }
                (a, oid::EC_PUBLIC_KEY, Some(oid::P384)) if a == oid::ECDSA_SHA256 => {
                    &sig::ECDSA_P384_SHA256_ASN1
                }
                (a, oid::EC_PUBLIC_KEY, Some(oid::P384)) if a == oid::ECDSA_SHA384 => {
                    &sig::ECDSA_P384_SHA384_ASN1
                }
                (a, oid::RSA_ENCRYPTION, _) if a == oid::RSA_SHA256 => {
                    &sig::RSA_PKCS1_2048_8192_SHA256
                }
                (a, oid::RSA_ENCRYPTION, _) if a == oid::RSA_SHA384 => {
                    &sig::RSA_PKCS1_2048_8192_SHA384
                }
                (a, oid::RSA_ENCRYPTION, _) if a == oid::RSA_SHA512 => {
                    &sig::RSA_PKCS1_2048_8192_SHA512
                }
                (a, _, _) => {
                    return Err(OcspError::SignatureAlgorithm {
                        index,
                        oid: a.to_string(),
                    });
                }
            };
        let signature = response
            .basic
            .signature
            .as_bytes()
            .ok_or(OcspError::Parse { index })?;
        sig::UnparsedPublicKey::new(algorithm, &spki.subject_public_key.data)
            .verify(&response.tbs, signature)
            .map_err(|_| OcspError::Signature {
                index,
                responder: responder.subject().to_string(),
            })?;
        Ok(responder.subject().to_string())
    }
}

/// Whether the ResponderID names `cert`: by its subject (DER), or by the SHA-1 of its
/// subjectPublicKey bytes (RFC 6960 §4.2.1).
fn identifies(id: &ResponderId, cert: &X509Certificate<'_>) -> bool {
    match id {
        ResponderId::ByName(name) => name
            .to_der()
            .is_ok_and(|der| der.as_slice() == cert.subject().as_raw()),
        ResponderId::ByKey(hash) => {
            let key = &cert.public_key().subject_public_key.data;
            let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, key);
            hash.as_bytes() == digest.as_ref()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use p384::ecdsa::signature::Signer;
    use p384::ecdsa::{DerSignature, SigningKey};
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyUsagePurpose, SerialNumber,
    };
    use sha2::Sha384;
    use x509_cert::Certificate;
    use x509_cert::der::asn1::GeneralizedTime;
    use x509_cert::ext::pkix::CrlReason;
    use x509_ocsp::builder::OcspResponseBuilder;
    use x509_ocsp::{OcspGeneralizedTime, RevokedInfo};

    use super::*;

    const NOW: u64 = 1_750_000_000;
    const DAY: u64 = 86_400;

    /// A deterministic P-384 key (the scalar is `seed` repeated), usable by rcgen.
    struct Key {
        signing: SigningKey,
        public: Vec<u8>,
    }

    impl Key {
        fn new(seed: u8) -> Self {
            let signing = SigningKey::from_slice(&[seed; 48]).expect("small scalar");
            let public = signing
                .verifying_key()
                .to_encoded_point(false)
                .as_bytes()
                .to_vec();
            Self { signing, public }
        }
    }

    impl rcgen::PublicKeyData for Key {
        fn der_bytes(&self) -> &[u8] {
            &self.public
        }

        fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
            &rcgen::PKCS_ECDSA_P384_SHA384
        }
    }

    impl rcgen::SigningKey for Key {
        fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
            let sig: DerSignature = self.signing.sign(msg);
            Ok(sig.as_bytes().to_vec())
        }
    }

    struct Issued {
        params: CertificateParams,
        key: Key,
        der: Vec<u8>,
    }

    impl Issued {
        fn issuer(&self) -> Issuer<'_, &Key> {
            Issuer::from_params(&self.params, &self.key)
        }

        fn cert(&self) -> Certificate {
            Certificate::from_der(&self.der).expect("rcgen's DER")
        }

        fn subject(&self) -> String {
            X509Certificate::from_der(&self.der)
                .expect("rcgen's DER")
                .1
                .subject()
                .to_string()
        }
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Role {
        Ca,
        Leaf,
        Responder,
        /// A responder certificate without id-kp-OCSPSigning.
        PlainSigner,
    }

    fn issue(common_name: &str, seed: u8, role: Role, issuer: Option<&Issued>) -> Issued {
        let mut p = CertificateParams::default();
        p.not_before =
            time::OffsetDateTime::from_unix_timestamp((NOW - 365 * DAY) as i64).expect("in range");
        p.not_after =
            time::OffsetDateTime::from_unix_timestamp((NOW + 365 * DAY) as i64).expect("in range");
        p.serial_number = Some(SerialNumber::from_slice(&[0x10, seed]));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "chrysalis OCSP test PKI");
        p.distinguished_name = dn;
        match role {
            Role::Ca => {
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            }
            Role::Leaf | Role::PlainSigner => {
                p.is_ca = IsCa::ExplicitNoCa;
                p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            }
            Role::Responder => {
                p.is_ca = IsCa::ExplicitNoCa;
                p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::OcspSigning];
            }
        }
        let key = Key::new(seed);
        let cert = match issuer {
            None => p.self_signed(&key),
            Some(i) => p.signed_by(&key, &i.issuer()),
        }
        .expect("rcgen issues");
        Issued {
            der: cert.der().to_vec(),
            params: p,
            key,
        }
    }

    /// root → intermediate → leaf, and a delegated responder issued by the root.
    struct Pki {
        root: Issued,
        intermediate: Issued,
        leaf: Issued,
        responder: Issued,
    }

    impl Pki {
        fn new() -> Self {
            let root = issue("test root", 1, Role::Ca, None);
            let intermediate = issue("test intermediate", 2, Role::Ca, Some(&root));
            let leaf = issue("test leaf", 3, Role::Leaf, Some(&intermediate));
            let responder = issue("test responder", 4, Role::Responder, Some(&root));
            Self {
                root,
                intermediate,
                leaf,
                responder,
            }
        }

        fn chain(&self) -> Vec<Vec<u8>> {
            vec![self.leaf.der.clone(), self.intermediate.der.clone()]
        }

        fn check(&self, responses: &[Vec<u8>]) -> Result<OcspVerdict, OcspError> {
            check_chain(&self.chain(), &self.root.der, responses, NOW)
        }

        fn leaf_answer(&self, status: CertStatus) -> SingleResponse {
            answer(&self.leaf, &self.intermediate, status)
        }

        fn intermediate_answer(&self, status: CertStatus) -> SingleResponse {
            answer(&self.intermediate, &self.root, status)
        }

        /// Both answers good, signed by the delegated responder.
        fn good(&self) -> Vec<u8> {
            respond(
                &self.responder,
                &self.responder.key,
                vec![
                    self.leaf_answer(CertStatus::good()),
                    self.intermediate_answer(CertStatus::good()),
                ],
            )
        }
    }

    fn at(t: u64) -> OcspGeneralizedTime {
        OcspGeneralizedTime(
            GeneralizedTime::from_unix_duration(Duration::from_secs(t)).expect("in range"),
        )
    }

    /// A good-for-a-day answer (thisUpdate yesterday, nextUpdate tomorrow) about `cert`.
    fn answer(cert: &Issued, issuer: &Issued, status: CertStatus) -> SingleResponse {
        let id = CertId::from_cert::<Sha384>(&issuer.cert(), &cert.cert()).expect("CertID");
        SingleResponse::new(id, status, at(NOW - DAY)).with_next_update(at(NOW + DAY))
    }

    /// A response naming `responder` (by name, with its certificate attached), signed by `key`.
    fn respond(responder: &Issued, key: &Key, answers: Vec<SingleResponse>) -> Vec<u8> {
        let cert = responder.cert();
        let mut builder = OcspResponseBuilder::new(cert.tbs_certificate.subject.clone());
        for a in answers {
            builder = builder.with_single_response(a);
        }
        builder
            .sign::<_, DerSignature>(&mut key.signing.clone(), Some(vec![cert]), at(NOW - DAY))
            .expect("signs")
            .to_der()
            .expect("encodes")
    }

    #[test]
    fn all_good_lists_each_certificate() {
        let pki = Pki::new();
        let verdict = pki.check(&[pki.good()]).expect("all good");
        let answers = verdict.answers();
        assert_eq!(answers.len(), 2);
        for (i, (a, cert)) in answers
            .iter()
            .zip([&pki.leaf, &pki.intermediate])
            .enumerate()
        {
            assert_eq!(a.cert_index, i);
            assert_eq!(a.subject, cert.subject());
            assert_eq!(a.status, AnswerStatus::Good);
            assert_eq!(a.this_update, NOW - DAY);
            assert_eq!(a.next_update, Some(NOW + DAY));
            assert_eq!(a.responder, pki.responder.subject());
            assert_eq!(a.response_index, 0);
        }
        assert_eq!(answers[0].serial, "1003");
        // A copy of the root at the end of the chain changes nothing.
        let mut with_root = pki.chain();
        with_root.push(pki.root.der.clone());
        assert_eq!(
            check_chain(&with_root, &pki.root.der, &[pki.good()], NOW),
            Ok(verdict)
        );
    }

    #[test]
    fn answers_may_come_in_separate_responses_signed_by_each_issuer() {
        // RFC 6960's first case: the issuing CA signs; the response carries no certificate.
        let pki = Pki::new();
        let by_issuer = |issuer: &Issued, a: SingleResponse| {
            OcspResponseBuilder::new(issuer.cert().tbs_certificate.subject.clone())
                .with_single_response(a)
                .sign::<_, DerSignature>(&mut issuer.key.signing.clone(), None, at(NOW - DAY))
                .expect("signs")
                .to_der()
                .expect("encodes")
        };
        let responses = [
            by_issuer(&pki.intermediate, pki.leaf_answer(CertStatus::good())),
            by_issuer(&pki.root, pki.intermediate_answer(CertStatus::good())),
        ];
        let verdict = pki.check(&responses).expect("issuers may answer");
        assert_eq!(verdict.answers()[0].responder, pki.intermediate.subject());
        assert_eq!(verdict.answers()[1].response_index, 1);
    }

    #[test]
    fn revoked_names_the_certificate_time_and_reason() {
        let pki = Pki::new();
        let revoked = CertStatus::revoked(RevokedInfo {
            revocation_time: at(NOW - 10 * DAY),
            revocation_reason: Some(CrlReason::KeyCompromise),
        });
        let response = respond(
            &pki.responder,
            &pki.responder.key,
            vec![
                pki.leaf_answer(revoked),
                pki.intermediate_answer(CertStatus::good()),
            ],
        );
        let err = pki.check(&[response]).expect_err("revoked");
        assert_eq!(
            err,
            OcspError::Revoked {
                cert_index: 0,
                subject: pki.leaf.subject(),
                revoked_at: NOW - 10 * DAY,
                reason: "KeyCompromise".into(),
            }
        );
        assert!(err.to_string().contains("test leaf"), "{err}");
        assert!(err.to_string().contains("is revoked"), "{err}");
    }

    #[test]
    fn revoked_answer_wins_over_a_good_one() {
        let pki = Pki::new();
        let revoked = CertStatus::revoked(RevokedInfo {
            revocation_time: at(NOW - DAY),
            revocation_reason: None,
        });
        let response = respond(
            &pki.responder,
            &pki.responder.key,
            vec![pki.intermediate_answer(revoked)],
        );
        let err = pki.check(&[pki.good(), response]).expect_err("revoked");
        assert!(
            matches!(&err, OcspError::Revoked { cert_index: 1, reason, .. } if reason == "unspecified"),
            "{err:?}"
        );
    }

    #[test]
    fn unknown_is_refused() {
        let pki = Pki::new();
        let response = respond(
            &pki.responder,
            &pki.responder.key,
            vec![
                pki.leaf_answer(CertStatus::good()),
                pki.intermediate_answer(CertStatus::unknown()),
            ],
        );
        let err = pki.check(&[response]).expect_err("unknown");
        assert_eq!(
            err,
            OcspError::Unknown {
                cert_index: 1,
                subject: pki.intermediate.subject(),
            }
        );
    }

    #[test]
    fn missing_answer_for_the_intermediate_names_it() {
        let pki = Pki::new();
        let response = respond(
            &pki.responder,
            &pki.responder.key,
            vec![pki.leaf_answer(CertStatus::good())],
        );
        let err = pki.check(&[response]).expect_err("missing");
        assert_eq!(
            err,
            OcspError::MissingAnswer {
                cert_index: 1,
                subject: pki.intermediate.subject(),
            }
        );
        assert!(err.to_string().contains("test intermediate"), "{err}");
        assert!(err.to_string().contains("no OCSP answer"), "{err}");
        // No responses at all: the first certificate in scope is named.
        assert!(matches!(
            pki.check(&[]),
            Err(OcspError::MissingAnswer { cert_index: 0, .. })
        ));
    }

    #[test]
    fn except_leaf_skips_the_leaf_only() {
        let pki = Pki::new();
        let response = respond(
            &pki.responder,
            &pki.responder.key,
            vec![pki.intermediate_answer(CertStatus::good())],
        );
        let verdict = check_chain_except_leaf(&pki.chain(), &pki.root.der, &[response], NOW)
            .expect("the intermediate is good");
        assert_eq!(verdict.answers().len(), 1);
        assert_eq!(verdict.answers()[0].cert_index, 1);
        let leaf_only = respond(
            &pki.responder,
            &pki.responder.key,
            vec![pki.leaf_answer(CertStatus::good())],
        );
        assert!(matches!(
            check_chain_except_leaf(&pki.chain(), &pki.root.der, &[leaf_only], NOW),
            Err(OcspError::MissingAnswer { cert_index: 1, .. })
        ));
    }

    #[test]
    fn unrelated_signing_key_fails_the_signature() {
        let pki = Pki::new();
        let response = respond(
            &pki.responder,
            &Key::new(99),
            vec![
                pki.leaf_answer(CertStatus::good()),
                pki.intermediate_answer(CertStatus::good()),
            ],
        );
        let err = pki.check(&[response]).expect_err("bad signature");
        assert_eq!(
            err,
            OcspError::Signature {
                index: 0,
                responder: pki.responder.subject(),
            }
        );
        assert!(
            err.to_string().contains("signature does not verify"),
            "{err}"
        );
    }

    #[test]
    fn tampered_response_fails_the_signature() {
        let pki = Pki::new();
        let mut response = pki.good();
        // Flip a digit of producedAt (GeneralizedTime, "YYYYMMDDHHMMSSZ"), inside the signed data.
        let time = at(NOW - DAY).to_der().expect("encodes");
        let pos = response
            .windows(15)
            .position(|w| w == &time[2..])
            .expect("producedAt is in the response");
        response[pos + 13] ^= 1;
        assert!(matches!(
            pki.check(&[response]),
            Err(OcspError::Signature { .. })
        ));
    }

    #[test]
    fn responder_without_ocsp_signing_is_unauthorised() {
        let pki = Pki::new();
        let plain = issue("plain signer", 5, Role::PlainSigner, Some(&pki.root));
        let response = respond(
            &plain,
            &plain.key,
            vec![
                pki.leaf_answer(CertStatus::good()),
                pki.intermediate_answer(CertStatus::good()),
            ],
        );
        let err = pki.check(&[response]).expect_err("no EKU");
        assert!(
            matches!(&err, OcspError::UnauthorizedResponder { reason, .. } if reason.contains("id-kp-OCSPSigning")),
            "{err:?}"
        );
    }

    #[test]
    fn responder_from_outside_the_chain_is_unauthorised() {
        let pki = Pki::new();
        let other_root = issue("other root", 6, Role::Ca, None);
        let rogue = issue("test responder", 7, Role::Responder, Some(&other_root));
        let response = respond(
            &rogue,
            &rogue.key,
            vec![
                pki.leaf_answer(CertStatus::good()),
                pki.intermediate_answer(CertStatus::good()),
            ],
        );
        let err = pki.check(&[response]).expect_err("rogue responder");
        assert!(
            matches!(&err, OcspError::UnauthorizedResponder { reason, .. } if reason.contains("not issued by")),
            "{err:?}"
        );
        // Nor may a responder that the certificate asked about issued itself answer for it.
        let self_vouched = issue(
            "intermediate-made responder",
            8,
            Role::Responder,
            Some(&pki.intermediate),
        );
        let response = respond(
            &self_vouched,
            &self_vouched.key,
            vec![pki.intermediate_answer(CertStatus::good())],
        );
        let err = pki
            .check(&[pki.good(), response])
            .expect_err("self-vouched");
        assert!(
            matches!(&err, OcspError::UnauthorizedResponder { cert_index: 1, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn nextupdate_in_the_past_is_stale() {
        let pki = Pki::new();
        let old = |cert, issuer| {
            let a: SingleResponse = answer(cert, issuer, CertStatus::good());
            a.with_this_update(at(NOW - 3 * DAY))
                .with_next_update(at(NOW - 2 * DAY))
        };
        let response = respond(
            &pki.responder,
            &pki.responder.key,
            vec![
                old(&pki.leaf, &pki.intermediate),
                pki.intermediate_answer(CertStatus::good()),
            ],
        );
        let err = pki.check(&[response]).expect_err("stale");
        assert_eq!(
            err,
            OcspError::Stale {
                cert_index: 0,
                subject: pki.leaf.subject(),
                next_update: NOW - 2 * DAY,
                now: NOW,
            }
        );
        assert!(err.to_string().contains("stale"), "{err}");
    }

    #[test]
    fn clock_skew_is_allowed_on_both_ends() {
        let pki = Pki::new();
        let skewed = |this: u64, next: u64| {
            let a = |cert, issuer| {
                answer(cert, issuer, CertStatus::good())
                    .with_this_update(at(this))
                    .with_next_update(at(next))
            };
            respond(
                &pki.responder,
                &pki.responder.key,
                vec![
                    a(&pki.leaf, &pki.intermediate),
                    a(&pki.intermediate, &pki.root),
                ],
            )
        };
        let within = CLOCK_SKEW_SECS - 1;
        assert!(pki.check(&[skewed(NOW + within, NOW + DAY)]).is_ok());
        assert!(pki.check(&[skewed(NOW - DAY, NOW - within)]).is_ok());
        assert!(matches!(
            pki.check(&[skewed(NOW + CLOCK_SKEW_SECS + 1, NOW + DAY)]),
            Err(OcspError::NotYetValid { cert_index: 0, .. })
        ));
        assert!(matches!(
            pki.check(&[skewed(NOW - DAY, NOW - CLOCK_SKEW_SECS - 1)]),
            Err(OcspError::Stale { cert_index: 0, .. })
        ));
    }

    #[test]
    fn certid_for_another_serial_is_a_missing_answer() {
        let pki = Pki::new();
        let id = CertId::from_issuer::<Sha384>(
            &pki.intermediate.cert(),
            x509_cert::serial_number::SerialNumber::new(&[0x10, 0x77]).expect("serial"),
        )
        .expect("CertID");
        let other = SingleResponse::new(id, CertStatus::good(), at(NOW - DAY));
        let response = respond(
            &pki.responder,
            &pki.responder.key,
            vec![other, pki.intermediate_answer(CertStatus::good())],
        );
        let err = pki.check(&[response]).expect_err("missing");
        assert_eq!(
            err,
            OcspError::MissingAnswer {
                cert_index: 0,
                subject: pki.leaf.subject(),
            }
        );
    }

    #[test]
    fn certid_with_sha256_matches_too() {
        let pki = Pki::new();
        let id = CertId::from_cert::<sha2::Sha256>(&pki.intermediate.cert(), &pki.leaf.cert())
            .expect("CertID");
        let response = respond(
            &pki.responder,
            &pki.responder.key,
            vec![
                SingleResponse::new(id, CertStatus::good(), at(NOW - DAY)),
                pki.intermediate_answer(CertStatus::good()),
            ],
        );
        let verdict = pki.check(&[response]).expect("SHA-256 CertID");
        assert_eq!(verdict.answers()[0].next_update, None);
    }

    #[test]
    fn malformed_der_is_a_parse_error() {
        let pki = Pki::new();
        for bad in [
            vec![],
            vec![0x30, 0x03, 0x01, 0x02, 0x03],
            pki.good()[..100].to_vec(),
        ] {
            assert_eq!(
                pki.check(&[pki.good(), bad]),
                Err(OcspError::Parse { index: 1 })
            );
        }
        let err = OcspError::Parse { index: 1 };
        assert!(err.to_string().contains("not a DER OCSPResponse"), "{err}");
    }

    #[test]
    fn unsuccessful_status_is_refused() {
        let pki = Pki::new();
        let try_later = OcspResponse::try_later().to_der().expect("encodes");
        let err = pki.check(&[try_later]).expect_err("tryLater");
        assert_eq!(
            err,
            OcspError::NotSuccessful {
                index: 0,
                status: "tryLater".into(),
            }
        );
    }

    #[test]
    fn the_chain_is_verified_first() {
        let pki = Pki::new();
        let other_root = issue("other root", 6, Role::Ca, None);
        assert!(matches!(
            check_chain(&pki.chain(), &other_root.der, &[pki.good()], NOW),
            Err(OcspError::Chain(_))
        ));
    }
}
