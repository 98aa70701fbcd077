//! The guest→host service protocol: how a guest asks its host for a simulated TDX quote, a
//! simulated SEV-SNP report, a simulated GPU report, or collateral, defined once for both sides.
//!
//! The host is untrusted. Nothing it answers is believed: a sim quote is verified by clients
//! against a root their policy names, and collateral is verified against the vendor root by
//! whoever uses it. This module only frames messages.
//!
//! Framing: each message is a 4-byte big-endian length followed by that many bytes of JSON.
//! A connection carries one request and one response. Messages over [`MAX_MESSAGE`] bytes are
//! refused on both sides.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::evidence::ReportData;

/// Host-side vsock port of the simulated quote service (the host plays the TDX hardware).
pub const SIM_QUOTE_PORT: u32 = 4050;
/// Host-side vsock port of the collateral service.
pub const COLLATERAL_PORT: u32 = 4051;
/// Guest-side vsock port on which the guest's RA-TLS server listens; the host relays to it.
pub const GUEST_TLS_PORT: u32 = 8443;
/// The vsock CID of the host as seen from a guest.
pub const HOST_CID: u32 = 2;

/// Largest message either side accepts (a quote plus collateral is well under 64 KiB).
pub const MAX_MESSAGE: usize = 1 << 20;

/// A guest's request to a host service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Request {
    /// Sign a simulated TDX quote over this report_data with the measurements of what the host launched.
    SimQuote {
        /// The 64 bytes to bind (for RA-TLS: the key binding of the guest's TLS key).
        report_data: ReportData,
    },
    /// Current TDX collateral for the platform (QuoteCollateralV3 as JSON).
    Collateral,
    /// Sign a simulated SEV-SNP report over this report_data with the launch digest of what the
    /// host launched (the `sim-snp` profile: the host plays the AMD PSP).
    SimSnpReport {
        /// The 64 bytes to bind (for RA-TLS: the key binding of the guest's TLS key).
        report_data: ReportData,
    },
    /// Sign a simulated NVIDIA GPU attestation report over this nonce (any sim profile: the host
    /// plays the GPU, `sim::SimNvidiaPki` of the well-known seed).
    SimGpu {
        /// The 32-byte nonce (for RA-TLS: the GPU nonce of the guest's TLS key).
        #[serde(with = "hex_array32")]
        nonce: [u8; 32],
    },
}

/// A host service's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Response {
    /// A quote (raw bytes, hex in JSON) and the collateral that verifies it.
    Quote {
        /// The TDX quote.
        #[serde(with = "hex_bytes")]
        quote: Vec<u8>,
        /// Collateral for the quote, if the host has it.
        collateral: Option<dcap_qvl::QuoteCollateralV3>,
    },
    /// An SEV-SNP report (raw bytes, hex in JSON) and the certificates that verify it.
    SnpReport {
        /// The 1184-byte attestation report.
        #[serde(with = "hex_bytes")]
        report: Vec<u8>,
        /// The VCEK certificate, DER.
        #[serde(with = "hex_bytes")]
        vcek: Vec<u8>,
        /// The ASK and ARK certificates (PEM), when the host has them.
        chain: Option<String>,
    },
    /// A GPU evidence record (`gpu::GpuRecord` DER, hex in JSON).
    Gpu {
        /// The record.
        #[serde(with = "hex_bytes")]
        record: Vec<u8>,
    },
    /// Collateral.
    Collateral {
        /// The collateral.
        collateral: dcap_qvl::QuoteCollateralV3,
    },
    /// The host could not serve the request.
    Error {
        /// Why.
        message: String,
    },
}

/// Errors of framing and decoding.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HostcallError {
    /// The length prefix announced more than [`MAX_MESSAGE`] bytes.
    #[error("message of {0} bytes exceeds the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
    /// The frame ended before the announced length.
    #[error("message truncated: {got} of {expected} bytes")]
    Truncated {
        /// Announced length.
        expected: usize,
        /// Bytes present.
        got: usize,
    },
    /// The payload is not the expected JSON.
    #[error("malformed message: {0}")]
    Json(#[from] serde_json::Error),
}

/// Encodes a message as one frame.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, HostcallError> {
    let body = serde_json::to_vec(msg)?;
    if body.len() > MAX_MESSAGE {
        return Err(HostcallError::TooLarge(body.len()));
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Reads the length prefix of a frame: how many body bytes follow. Refuses oversized frames
/// before anything is allocated.
pub fn body_len(prefix: [u8; 4]) -> Result<usize, HostcallError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_MESSAGE {
        return Err(HostcallError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes one complete frame (prefix and body).
pub fn decode<T: for<'de> Deserialize<'de>>(frame: &[u8]) -> Result<T, HostcallError> {
    let prefix: [u8; 4] =
        frame
            .get(..4)
            .and_then(|p| p.try_into().ok())
            .ok_or(HostcallError::Truncated {
                expected: 4,
                got: frame.len(),
            })?;
    let len = body_len(prefix)?;
    let body = &frame[4..];
    if body.len() != len {
        return Err(HostcallError::Truncated {
            expected: len,
            got: body.len(),
        });
    }
    Ok(serde_json::from_slice(body)?)
}

/// Decodes a frame body (after [`body_len`] told how much to read).
pub fn decode_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, HostcallError> {
    Ok(serde_json::from_slice(body)?)
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

mod hex_array32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(b: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s)
            .map_err(serde::de::Error::custom)?
            .try_into()
            .map_err(|_| serde::de::Error::custom("expected 32 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_limits() {
        let req = Request::SimQuote {
            report_data: ReportData([7; 64]),
        };
        let frame = encode(&req).unwrap();
        assert_eq!(decode::<Request>(&frame).unwrap(), req);
        assert!(matches!(
            decode::<Request>(&frame[..frame.len() - 1]),
            Err(HostcallError::Truncated { .. })
        ));
        assert!(matches!(
            body_len([0xff; 4]),
            Err(HostcallError::TooLarge(_))
        ));
        let resp = Response::Quote {
            quote: vec![1, 2, 3],
            collateral: None,
        };
        assert_eq!(decode::<Response>(&encode(&resp).unwrap()).unwrap(), resp);
        assert!(decode::<Request>(&encode(&"nonsense").unwrap()).is_err());

        let req = Request::SimSnpReport {
            report_data: ReportData([8; 64]),
        };
        let frame = encode(&req).unwrap();
        assert!(String::from_utf8_lossy(&frame[4..]).contains("\"sim_snp_report\""));
        assert_eq!(decode::<Request>(&frame).unwrap(), req);
        let resp = Response::SnpReport {
            report: vec![4; 8],
            vcek: vec![5; 3],
            chain: Some("-----BEGIN CERTIFICATE-----".into()),
        };
        assert_eq!(decode::<Response>(&encode(&resp).unwrap()).unwrap(), resp);

        let req = Request::SimGpu { nonce: [9; 32] };
        let frame = encode(&req).unwrap();
        assert!(String::from_utf8_lossy(&frame[4..]).contains("\"sim_gpu\""));
        assert_eq!(decode::<Request>(&frame).unwrap(), req);
        let short = br#"{"kind":"sim_gpu","nonce":"0909"}"#;
        assert!(decode_body::<Request>(short).is_err());
        let resp = Response::Gpu {
            record: vec![0x30, 0],
        };
        assert_eq!(decode::<Response>(&encode(&resp).unwrap()).unwrap(), resp);
    }
}
