//! Assembly of a TDX quote v4 in Intel's format through dcap-qvl's own quote structures: header and
//! TD report signed by the attestation key, certification data type 6 (QE report signed by the PCK
//! key) wrapping type 5 (the PEM PCK chain).

use dcap_qvl::quote::{
    AuthData, AuthDataV4, CertificationData, Data, EnclaveReport, Header,
    QEReportCertificationData, Quote, Report, TDReport10,
};
use scale::Encode;

use super::SimTdReport;
use super::keys::SimKey;
use super::platform;
use crate::evidence::{Sha256, TDX_TEE_TYPE};

const QUOTE_VERSION: u16 = 4;
/// ECDSA-256 with P-256.
const ATTESTATION_KEY_TYPE: u16 = 2;
/// Certification data: QE report certification data (6), wrapping a PEM PCK chain (5).
const QE_REPORT_CERTIFICATION_DATA: u16 = 6;
const PCK_CERT_CHAIN: u16 = 5;

/// The quoting enclave's identity in the simulated platform.
pub(crate) struct QuotingEnclave<'a> {
    pub(crate) attestation_key: &'a SimKey,
    pub(crate) pck_key: &'a SimKey,
    pub(crate) mr_enclave: [u8; 32],
    pub(crate) mr_signer: [u8; 32],
    pub(crate) qe_id: [u8; 16],
    /// PCK leaf, PCK Platform CA, root; PEM.
    pub(crate) pck_chain_pem: String,
}

fn td_report(td: &SimTdReport) -> TDReport10 {
    let m = &td.measurements;
    TDReport10 {
        tee_tcb_svn: td.tee_tcb_svn,
        mr_seam: m.mr_seam.0,
        mr_signer_seam: td.mr_signer_seam.0,
        seam_attributes: td.seam_attributes.0,
        td_attributes: m.td_attributes.0,
        xfam: m.xfam.0,
        mr_td: m.registers.mr_td.0,
        mr_config_id: m.mr_config_id.0,
        mr_owner: m.mr_owner.0,
        mr_owner_config: m.mr_owner_config.0,
        rt_mr0: m.registers.rtmr[0].0,
        rt_mr1: m.registers.rtmr[1].0,
        rt_mr2: m.registers.rtmr[2].0,
        rt_mr3: m.registers.rtmr[3].0,
        report_data: td.report_data.0,
    }
}

impl QuotingEnclave<'_> {
    /// The QE's own SGX report, whose report_data binds the attestation key and auth data.
    fn qe_report(&self, attestation_key: &[u8; 64]) -> [u8; 384] {
        let mut hashed = Vec::with_capacity(96);
        hashed.extend_from_slice(attestation_key);
        hashed.extend_from_slice(&platform::QE_AUTH_DATA);
        let mut report_data = [0u8; 64];
        report_data[..32].copy_from_slice(&Sha256::digest(&hashed).0);
        let report = EnclaveReport {
            cpu_svn: platform::CPU_SVN,
            misc_select: platform::QE_MISCSELECT,
            reserved1: [0; 28],
            attributes: platform::QE_REPORT_ATTRIBUTES,
            mr_enclave: self.mr_enclave,
            reserved2: [0; 32],
            mr_signer: self.mr_signer,
            reserved3: [0; 96],
            isv_prod_id: platform::QE_ISV_PROD_ID,
            isv_svn: platform::QE_ISV_SVN,
            reserved4: [0; 60],
            report_data,
        };
        report
            .encode()
            .try_into()
            .expect("an SGX report encodes to 384 bytes")
    }

    pub(crate) fn quote(&self, td: &SimTdReport) -> Vec<u8> {
        let header = Header {
            version: QUOTE_VERSION,
            attestation_key_type: ATTESTATION_KEY_TYPE,
            tee_type: TDX_TEE_TYPE,
            // Reserved in TDX quotes; Intel's TDQE leaves them zero.
            qe_svn: 0,
            pce_svn: 0,
            qe_vendor_id: dcap_qvl::INTEL_QE_VENDOR_ID,
            user_data: {
                let mut u = [0u8; 20];
                u[..16].copy_from_slice(&self.qe_id);
                u
            },
        };
        let report = td_report(td);
        let mut signed = header.encode();
        report.encode_to(&mut signed);
        let ecdsa_signature = self.attestation_key.sign_raw(&signed);
        let attestation_key = self.attestation_key.public_raw();

        let qe_report = self.qe_report(&attestation_key);
        // Intel's QE hands the chain over as a C string.
        let mut chain = self.pck_chain_pem.clone().into_bytes();
        chain.push(0);
        let auth_data = AuthDataV4 {
            ecdsa_signature,
            ecdsa_attestation_key: attestation_key,
            // The body is re-encoded from qe_report_data by AuthDataV4's Encode.
            certification_data: CertificationData {
                cert_type: QE_REPORT_CERTIFICATION_DATA,
                body: Data::new(Vec::new()),
            },
            qe_report_data: QEReportCertificationData {
                qe_report,
                qe_report_signature: self.pck_key.sign_raw(&qe_report),
                qe_auth_data: Data::new(platform::QE_AUTH_DATA.to_vec()),
                certification_data: CertificationData {
                    cert_type: PCK_CERT_CHAIN,
                    body: Data::new(chain),
                },
            },
        };
        let quote = Quote {
            header,
            report: Report::TD10(report),
            auth_data: AuthData::V4(auth_data),
        };
        let bytes = quote.encode();
        debug_assert!(
            bytes.starts_with(&signed),
            "the signed region is the quote's prefix"
        );
        bytes
    }
}
