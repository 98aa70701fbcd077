//! NVIDIA's reference integrity manifests (RIMs): SWID tags (ISO/IEC 19770-2:2015, TCG RIM
//! information model) listing the expected measurements of a driver or a VBIOS, signed with an
//! enveloped XML-DSig signature (ECDSA P-384, SHA-384, Canonical XML 1.1) by a certificate that
//! chains to NVIDIA's RIM root.

use base64::Engine as _;
use p384::ecdsa::signature::Verifier as _;
use roxmltree::{Document, Node, ParsingOptions};
use serde::Serialize;
use sha2::{Digest, Sha384};
use thiserror::Error;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::c14n::{self, C14nError};
use super::chain::{self, ChainError, VerifiedChain};

const DSIG: &str = "http://www.w3.org/2000/09/xmldsig#";
const SWID: &str = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd";
const SHA384_NS: &str = "http://www.w3.org/2001/04/xmlenc#sha384";
const C14N11: &str = "http://www.w3.org/2006/12/xml-c14n11";
const ENVELOPED: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";
const ECDSA_SHA384: &str = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384";
const DIGEST_SHA384: &str = "http://www.w3.org/2001/04/xmldsig-more#sha384";

/// Why a RIM was refused.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RimError {
    /// Not well-formed XML (or it has a DTD, which is refused).
    #[error("RIM is not well-formed XML")]
    Xml(#[from] roxmltree::Error),
    /// A required element or attribute is missing or malformed.
    #[error("RIM: {0}")]
    Structure(String),
    /// The signature uses an algorithm or transform other than the one NVIDIA uses.
    #[error("RIM signature: unsupported {what} {uri}")]
    Algorithm {
        /// Which part (canonicalisation, signature method, transform, digest method).
        what: &'static str,
        /// The algorithm URI found.
        uri: String,
    },
    /// Canonicalisation failed.
    #[error("RIM canonicalisation")]
    C14n(#[from] C14nError),
    /// The digest of the signed document does not equal the Reference's DigestValue.
    #[error(
        "RIM signature: the document's digest does not match the signed DigestValue (the RIM was changed)"
    )]
    Digest,
    /// The signature over SignedInfo does not verify with the signing certificate.
    #[error("RIM signature does not verify with its signing certificate")]
    Signature,
    /// The signing certificate chain does not lead to the RIM root.
    #[error("RIM signing certificate chain")]
    Chain(#[from] ChainError),
}

/// One reference measurement of a RIM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RimMeasurement {
    /// The RIM's index (0-based; the report's SPDM block index is this plus one).
    pub index: u16,
    /// Whether the measurement is to be compared (`active="True"`).
    pub active: bool,
    /// The digests allowed at this index.
    pub alternatives: Vec<String>,
    /// The digest size in bytes.
    pub size: usize,
    /// The RIM's name for it.
    pub name: String,
}

/// A RIM whose signature and signer chain verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifiedRim {
    /// The SWID tag id.
    pub tag_id: String,
    /// The version it describes (`Meta/@colloquialVersion`, lower case).
    pub version: String,
    /// The product (`Meta/@product`), e.g. `GH100`.
    pub product: String,
    /// Its measurements, by index.
    pub measurements: Vec<RimMeasurement>,
    /// The signer's subject.
    pub signer: String,
    /// The root the signer chains to (subject).
    pub root: String,
    /// SHA-256 of the root's DER, hex.
    pub root_sha256: String,
}

fn child<'a, 'i>(n: Node<'a, 'i>, ns: &str, name: &str) -> Result<Node<'a, 'i>, RimError> {
    let mut it = n.children().filter(|c| {
        c.is_element() && c.tag_name().namespace() == Some(ns) && c.tag_name().name() == name
    });
    let first = it
        .next()
        .ok_or_else(|| RimError::Structure(format!("no {name} in {}", n.tag_name().name())))?;
    if it.next().is_some() {
        return Err(RimError::Structure(format!(
            "more than one {name} in {}",
            n.tag_name().name()
        )));
    }
    Ok(first)
}

fn algorithm<'a>(n: Node<'a, '_>) -> Result<&'a str, RimError> {
    n.attribute("Algorithm")
        .ok_or_else(|| RimError::Structure(format!("{} without Algorithm", n.tag_name().name())))
}

fn require(what: &'static str, uri: &str, expected: &str) -> Result<(), RimError> {
    if uri == expected {
        Ok(())
    } else {
        Err(RimError::Algorithm {
            what,
            uri: uri.to_string(),
        })
    }
}

fn b64(n: Node<'_, '_>) -> Result<Vec<u8>, RimError> {
    let text: String = n
        .text()
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| RimError::Structure(format!("{} is not base64", n.tag_name().name())))
}

/// Parses a RIM as UTF-8 XML without a DTD (refused: entity expansion has no place in a RIM).
fn document(xml: &[u8]) -> Result<Document<'_>, RimError> {
    let text = std::str::from_utf8(xml).map_err(|_| RimError::Structure("not UTF-8".into()))?;
    Ok(Document::parse_with_options(
        text,
        ParsingOptions {
            allow_dtd: false,
            ..ParsingOptions::default()
        },
    )?)
}

/// Verifies a RIM's enveloped signature (the Reference's digest over the canonical document
/// without its Signature, the ECDSA P-384 signature over the canonical SignedInfo) and its
/// signer chain up to `rim_root` at `now`, then reads its version and measurements. Does not
/// check revocation of the signer, nor that the RIM fits any report.
pub fn verify_rim(xml: &[u8], rim_root: &[u8], now: u64) -> Result<VerifiedRim, RimError> {
    let doc = document(xml)?;
    let root = doc.root_element();
    if root.tag_name().namespace() != Some(SWID) || root.tag_name().name() != "SoftwareIdentity" {
        return Err(RimError::Structure(
            "the root element is not a SWID SoftwareIdentity".into(),
        ));
    }
    let sig = child(root, DSIG, "Signature")?;
    let signed_info = child(sig, DSIG, "SignedInfo")?;
    require(
        "canonicalisation",
        algorithm(child(signed_info, DSIG, "CanonicalizationMethod")?)?,
        C14N11,
    )?;
    require(
        "signature method",
        algorithm(child(signed_info, DSIG, "SignatureMethod")?)?,
        ECDSA_SHA384,
    )?;
    let reference = child(signed_info, DSIG, "Reference")?;
    if reference.attribute("URI") != Some("") {
        return Err(RimError::Structure(
            "the signed Reference is not the whole document (URI=\"\")".into(),
        ));
    }
    let transforms: Vec<_> = child(reference, DSIG, "Transforms")?
        .children()
        .filter(|c| c.is_element())
        .collect();
    if transforms.len() != 2 {
        return Err(RimError::Structure(
            "the Reference must have exactly two transforms".into(),
        ));
    }
    require("transform", algorithm(transforms[0])?, ENVELOPED)?;
    require("transform", algorithm(transforms[1])?, C14N11)?;
    require(
        "digest method",
        algorithm(child(reference, DSIG, "DigestMethod")?)?,
        DIGEST_SHA384,
    )?;
    let digest_value = b64(child(reference, DSIG, "DigestValue")?)?;

    // The Reference: the whole document without comments, minus the Signature element.
    let document = c14n::canonicalize(root, Some(sig))?;
    if Sha384::digest(&document)[..] != digest_value[..] {
        return Err(RimError::Digest);
    }

    let certs: Vec<Vec<u8>> = child(child(sig, DSIG, "KeyInfo")?, DSIG, "X509Data")?
        .children()
        .filter(|c| c.is_element() && c.tag_name().name() == "X509Certificate")
        .map(b64)
        .collect::<Result<_, _>>()?;
    let signer_der = certs
        .first()
        .ok_or_else(|| RimError::Structure("no X509Certificate in KeyInfo".into()))?;
    let signature = b64(child(sig, DSIG, "SignatureValue")?)?;
    let signed = c14n::canonicalize(signed_info, None)?;
    verify_p384(signer_der, &signed, &signature).ok_or(RimError::Signature)?;
    let VerifiedChain {
        leaf_subject,
        root_subject,
        root_sha256,
        ..
    } = chain::verify_chain(&certs, rim_root, now)?;

    let meta = child(root, SWID, "Meta")?;
    let version = meta
        .attribute("colloquialVersion")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| RimError::Structure("Meta has no colloquialVersion".into()))?
        .to_ascii_lowercase();
    let mut measurements: Vec<RimMeasurement> = Vec::new();
    for r in child(root, SWID, "Payload")?
        .children()
        .filter(|c| c.is_element())
    {
        let attr = |name: &str| {
            r.attribute(name)
                .ok_or_else(|| RimError::Structure(format!("Resource without {name}")))
        };
        let num = |name: &str| -> Result<usize, RimError> {
            attr(name)?
                .parse()
                .map_err(|_| RimError::Structure(format!("Resource {name} is not a number")))
        };
        let index = u16::try_from(num("index")?)
            .map_err(|_| RimError::Structure("Resource index too large".into()))?;
        let count = num("alternatives")?;
        let alternatives = (0..count)
            .map(|i| {
                r.attribute((SHA384_NS, format!("Hash{i}").as_str()))
                    .map(|h| h.to_ascii_lowercase())
                    .ok_or_else(|| {
                        RimError::Structure(format!("Resource {index} has no SHA-384 Hash{i}"))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if measurements.iter().any(|m| m.index == index) {
            return Err(RimError::Structure(format!(
                "two Resources with index {index}"
            )));
        }
        measurements.push(RimMeasurement {
            index,
            active: attr("active")? != "False",
            alternatives,
            size: num("size")?,
            name: attr("name")?.to_string(),
        });
    }
    if measurements.is_empty() {
        return Err(RimError::Structure("no measurements in the Payload".into()));
    }
    Ok(VerifiedRim {
        tag_id: root.attribute("tagId").unwrap_or("").to_string(),
        version,
        product: meta.attribute("product").unwrap_or("").to_string(),
        measurements,
        signer: leaf_subject,
        root: root_subject,
        root_sha256,
    })
}

/// What a RIM says about itself before any check: its `colloquialVersion` (lower case) and the
/// certificates of its `KeyInfo` (signer first). For indexing RIMs and finding a pinned root
/// among the certificates; [`verify_rim`] decides whether any of it is true.
pub fn claims(xml: &[u8]) -> Result<(String, Vec<Vec<u8>>), RimError> {
    let doc = document(xml)?;
    let root = doc.root_element();
    let version = child(root, SWID, "Meta")?
        .attribute("colloquialVersion")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| RimError::Structure("Meta has no colloquialVersion".into()))?
        .to_ascii_lowercase();
    let sig = child(root, DSIG, "Signature")?;
    let certs = child(child(sig, DSIG, "KeyInfo")?, DSIG, "X509Data")?
        .children()
        .filter(|c| c.is_element() && c.tag_name().name() == "X509Certificate")
        .map(b64)
        .collect::<Result<_, _>>()?;
    Ok((version, certs))
}

/// Verifies an ECDSA P-384 / SHA-384 signature given as r ‖ s with a certificate's key.
pub(crate) fn verify_p384(cert_der: &[u8], msg: &[u8], sig: &[u8]) -> Option<()> {
    let (_, cert) = X509Certificate::from_der(cert_der).ok()?;
    let key =
        p384::ecdsa::VerifyingKey::from_sec1_bytes(&cert.public_key().subject_public_key.data)
            .ok()?;
    let sig = p384::ecdsa::Signature::from_slice(sig).ok()?;
    key.verify(msg, &sig).ok()
}
