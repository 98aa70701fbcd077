//! The evidence bundle: platform evidence plus what an offline verifier needs, in one DER value.
//!
//! ```text
//! EvidenceBundle ::= SEQUENCE {
//!     version        INTEGER (1),
//!     platform       UTF8String ("tdx" | "snp"),
//!     evidence       OCTET STRING,                   -- TDX quote v4/v5, or SNP report (1184 bytes)
//!     tdxCollateral  [0] IMPLICIT TdxCollateral OPTIONAL,
//!     snpVcek        [1] IMPLICIT OCTET STRING OPTIONAL, -- VCEK or VLEK certificate, DER
//!     snpChain       [2] IMPLICIT OCTET STRING OPTIONAL  -- ASK/ASVK + ARK, PEM or DER
//! }
//! TdxCollateral ::= SEQUENCE {                        -- Intel PCS/PCCS collateral, as served
//!     pckCrlIssuerChain      UTF8String,             -- PEM
//!     rootCaCrl              OCTET STRING,           -- DER
//!     pckCrl                 OCTET STRING,           -- DER
//!     tcbInfoIssuerChain     UTF8String,             -- PEM
//!     tcbInfo                UTF8String,             -- the signed JSON body, byte-exact
//!     tcbInfoSignature       OCTET STRING,           -- raw r||s
//!     qeIdentityIssuerChain  UTF8String,             -- PEM
//!     qeIdentity             UTF8String,             -- the signed JSON body, byte-exact
//!     qeIdentitySignature    OCTET STRING,           -- raw r||s
//!     pckCertificateChain    [0] IMPLICIT UTF8String OPTIONAL -- PEM
//! }
//! ```
//!
//! docs/ra-tls.md is the normative description for implementers in other languages.

use der::asn1::OctetString;
use der::{Decode, Encode, Sequence};

use crate::error::EvidenceError;
use crate::evidence::Platform;

/// Current bundle format version.
pub const BUNDLE_VERSION: u8 = 1;

/// Platform evidence with the material needed to verify it offline.
///
/// Carried material is a convenience, not a trust decision: everything in it must still chain
/// to a root the verifier's policy trusts, and a verifier may substitute its own collateral.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvidenceBundle {
    /// Which platform produced the evidence.
    pub platform: Platform,
    /// The raw TDX quote or SNP report.
    pub evidence: Vec<u8>,
    /// TDX: Intel collateral for the quote's platform.
    pub tdx_collateral: Option<dcap_qvl::QuoteCollateralV3>,
    /// SNP: the VCEK (or VLEK) certificate, DER.
    pub snp_vcek: Option<Vec<u8>>,
    /// SNP: the ASK (or ASVK) and ARK, PEM or DER; absent means "use the built-in AMD roots".
    pub snp_chain: Option<Vec<u8>>,
}

#[derive(Sequence)]
struct BundleDer {
    version: u8,
    platform: String,
    evidence: OctetString,
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT", optional = "true")]
    tdx_collateral: Option<CollateralDer>,
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
    snp_vcek: Option<OctetString>,
    #[asn1(context_specific = "2", tag_mode = "IMPLICIT", optional = "true")]
    snp_chain: Option<OctetString>,
}

#[derive(Sequence)]
struct CollateralDer {
    pck_crl_issuer_chain: String,
    root_ca_crl: OctetString,
    pck_crl: OctetString,
    tcb_info_issuer_chain: String,
    tcb_info: String,
    tcb_info_signature: OctetString,
    qe_identity_issuer_chain: String,
    qe_identity: String,
    qe_identity_signature: OctetString,
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT", optional = "true")]
    pck_certificate_chain: Option<String>,
}

fn octets(b: &[u8]) -> Result<OctetString, EvidenceError> {
    OctetString::new(b.to_vec()).map_err(der_err)
}

fn bytes(o: OctetString) -> Vec<u8> {
    o.into_bytes().into_vec()
}

fn der_err(e: der::Error) -> EvidenceError {
    EvidenceError::Malformed {
        what: "evidence bundle",
        reason: e.to_string(),
    }
}

impl EvidenceBundle {
    /// A TDX bundle.
    pub fn tdx(quote: Vec<u8>, collateral: Option<dcap_qvl::QuoteCollateralV3>) -> Self {
        Self {
            platform: Platform::Tdx,
            evidence: quote,
            tdx_collateral: collateral,
            snp_vcek: None,
            snp_chain: None,
        }
    }

    /// An SNP bundle.
    pub fn snp(report: Vec<u8>, vcek: Option<Vec<u8>>, chain: Option<Vec<u8>>) -> Self {
        Self {
            platform: Platform::Snp,
            evidence: report,
            tdx_collateral: None,
            snp_vcek: vcek,
            snp_chain: chain,
        }
    }

    /// DER encoding (see the module documentation).
    pub fn to_der(&self) -> Result<Vec<u8>, EvidenceError> {
        let tdx_collateral = match &self.tdx_collateral {
            None => None,
            Some(c) => Some(CollateralDer {
                pck_crl_issuer_chain: c.pck_crl_issuer_chain.clone(),
                root_ca_crl: octets(&c.root_ca_crl)?,
                pck_crl: octets(&c.pck_crl)?,
                tcb_info_issuer_chain: c.tcb_info_issuer_chain.clone(),
                tcb_info: c.tcb_info.clone(),
                tcb_info_signature: octets(&c.tcb_info_signature)?,
                qe_identity_issuer_chain: c.qe_identity_issuer_chain.clone(),
                qe_identity: c.qe_identity.clone(),
                qe_identity_signature: octets(&c.qe_identity_signature)?,
                pck_certificate_chain: c.pck_certificate_chain.clone(),
            }),
        };
        BundleDer {
            version: BUNDLE_VERSION,
            platform: self.platform.as_str().to_owned(),
            evidence: octets(&self.evidence)?,
            tdx_collateral,
            snp_vcek: self.snp_vcek.as_deref().map(octets).transpose()?,
            snp_chain: self.snp_chain.as_deref().map(octets).transpose()?,
        }
        .to_der()
        .map_err(der_err)
    }

    /// Decodes the DER encoding. Rejects unknown versions and platforms, trailing data, and
    /// fields that do not belong to the named platform.
    pub fn from_der(der: &[u8]) -> Result<Self, EvidenceError> {
        let b = BundleDer::from_der(der).map_err(der_err)?;
        if b.version != BUNDLE_VERSION {
            return Err(EvidenceError::Malformed {
                what: "evidence bundle",
                reason: format!(
                    "version {} is not supported (expected {BUNDLE_VERSION})",
                    b.version
                ),
            });
        }
        let platform: Platform = b.platform.parse()?;
        let misplaced = match platform {
            Platform::Tdx => b.snp_vcek.is_some() || b.snp_chain.is_some(),
            Platform::Snp => b.tdx_collateral.is_some(),
        };
        if misplaced {
            return Err(EvidenceError::Malformed {
                what: "evidence bundle",
                reason: format!("carries material of another platform than {platform}"),
            });
        }
        Ok(Self {
            platform,
            evidence: b.evidence.into_bytes().into_vec(),
            tdx_collateral: b.tdx_collateral.map(|c| dcap_qvl::QuoteCollateralV3 {
                pck_crl_issuer_chain: c.pck_crl_issuer_chain,
                root_ca_crl: c.root_ca_crl.into_bytes().into_vec(),
                pck_crl: c.pck_crl.into_bytes().into_vec(),
                tcb_info_issuer_chain: c.tcb_info_issuer_chain,
                tcb_info: c.tcb_info,
                tcb_info_signature: c.tcb_info_signature.into_bytes().into_vec(),
                qe_identity_issuer_chain: c.qe_identity_issuer_chain,
                qe_identity: c.qe_identity,
                qe_identity_signature: c.qe_identity_signature.into_bytes().into_vec(),
                pck_certificate_chain: c.pck_certificate_chain,
            }),
            snp_vcek: b.snp_vcek.map(bytes),
            snp_chain: b.snp_chain.map(bytes),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collateral() -> dcap_qvl::QuoteCollateralV3 {
        dcap_qvl::QuoteCollateralV3 {
            pck_crl_issuer_chain: "chain".into(),
            root_ca_crl: vec![1, 2],
            pck_crl: vec![3],
            tcb_info_issuer_chain: "tcb chain".into(),
            tcb_info: "{\"a\":1}".into(),
            tcb_info_signature: vec![4; 64],
            qe_identity_issuer_chain: "qe chain".into(),
            qe_identity: "{}".into(),
            qe_identity_signature: vec![5; 64],
            pck_certificate_chain: Some("pck".into()),
        }
    }

    #[test]
    fn round_trips() {
        for b in [
            EvidenceBundle::tdx(vec![9; 100], Some(collateral())),
            EvidenceBundle::tdx(vec![9; 100], None),
            EvidenceBundle::snp(vec![1; 1184], Some(vec![2; 10]), Some(vec![3; 5])),
            EvidenceBundle::snp(vec![1; 1184], None, None),
        ] {
            assert_eq!(EvidenceBundle::from_der(&b.to_der().unwrap()).unwrap(), b);
        }
    }

    #[test]
    fn rejects_garbage_mixed_platforms_and_trailing_bytes() {
        let mut der = EvidenceBundle::tdx(vec![9; 10], None).to_der().unwrap();
        der.push(0);
        assert!(EvidenceBundle::from_der(&der).is_err());
        let mixed = EvidenceBundle {
            snp_vcek: Some(vec![1]),
            ..EvidenceBundle::tdx(vec![9], None)
        };
        let err = EvidenceBundle::from_der(&mixed.to_der().unwrap()).unwrap_err();
        assert!(err.to_string().contains("another platform"), "{err}");
        let good = EvidenceBundle::tdx(vec![9; 10], Some(collateral()))
            .to_der()
            .unwrap();
        for i in 0..good.len() {
            let _ = EvidenceBundle::from_der(&good[..i]);
            let mut flipped = good.clone();
            flipped[i] ^= 0xff;
            let _ = EvidenceBundle::from_der(&flipped);
        }
    }
}
