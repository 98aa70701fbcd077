//! The signed JSON bodies of the simulated collateral: TDX TCB info (version 3) and TD QE identity
//! (version 2), in the field order and spelling of Intel's PCS, so dcap-qvl parses them as it parses Intel's.

use serde::Serialize;

use super::platform::{self, PlatformLevel, SvnLevel};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TcbInfo<'a> {
    id: &'static str,
    version: u8,
    issue_date: &'a str,
    next_update: &'a str,
    fmspc: String,
    pce_id: String,
    tcb_type: u32,
    tcb_evaluation_data_number: u32,
    tdx_module: TdxModule,
    tdx_module_identities: Vec<TdxModuleIdentity>,
    tcb_levels: Vec<TcbLevel>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TdxModule {
    mrsigner: String,
    attributes: String,
    attributes_mask: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TdxModuleIdentity {
    id: &'static str,
    #[serde(flatten)]
    module: TdxModule,
    tcb_levels: Vec<IsvLevel>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TcbLevel {
    tcb: Tcb,
    tcb_date: &'static str,
    tcb_status: &'static str,
    #[serde(rename = "advisoryIDs", skip_serializing_if = "<[_]>::is_empty")]
    advisory_ids: &'static [&'static str],
}

#[derive(Serialize)]
struct Tcb {
    sgxtcbcomponents: Vec<Component>,
    pcesvn: u16,
    tdxtcbcomponents: Vec<Component>,
}

#[derive(Serialize)]
struct Component {
    svn: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    category: Option<&'static str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IsvLevel {
    tcb: IsvSvn,
    tcb_date: &'static str,
    tcb_status: &'static str,
    #[serde(rename = "advisoryIDs", skip_serializing_if = "<[_]>::is_empty")]
    advisory_ids: &'static [&'static str],
}

#[derive(Serialize)]
struct IsvSvn {
    isvsvn: u16,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct QeIdentity<'a> {
    id: &'static str,
    version: u8,
    issue_date: &'a str,
    next_update: &'a str,
    tcb_evaluation_data_number: u32,
    miscselect: String,
    miscselect_mask: String,
    attributes: String,
    attributes_mask: String,
    mrsigner: String,
    isvprodid: u16,
    tcb_levels: Vec<IsvLevel>,
}

fn components(
    svns: &[u8; 16],
    names: &[(Option<&'static str>, Option<&'static str>)],
) -> Vec<Component> {
    svns.iter()
        .enumerate()
        .map(|(i, &svn)| {
            let (category, kind) = names.get(i).copied().unwrap_or((None, None));
            Component {
                svn,
                category,
                kind,
            }
        })
        .collect()
}

fn platform_level(level: &PlatformLevel) -> TcbLevel {
    TcbLevel {
        tcb: Tcb {
            sgxtcbcomponents: components(&level.sgx, &platform::SGX_COMPONENT_NAMES),
            pcesvn: level.pce_svn,
            tdxtcbcomponents: components(&level.tdx, &platform::TDX_COMPONENT_NAMES),
        },
        tcb_date: level.date,
        tcb_status: level.status,
        advisory_ids: level.advisories,
    }
}

fn isv_level(level: &SvnLevel) -> IsvLevel {
    IsvLevel {
        tcb: IsvSvn {
            isvsvn: level.isvsvn,
        },
        tcb_date: level.date,
        tcb_status: level.status,
        advisory_ids: level.advisories,
    }
}

fn module() -> TdxModule {
    TdxModule {
        mrsigner: hex::encode_upper(platform::TDX_MODULE_MRSIGNER),
        attributes: hex::encode_upper(platform::TDX_MODULE_ATTRIBUTES),
        attributes_mask: hex::encode_upper(platform::TDX_MODULE_ATTRIBUTES_MASK),
    }
}

/// The TDX TCB info body (the `tcbInfo` member of Intel's response) for the simulated platform.
/// `issue_date` and `next_update` are RFC 3339 UTC times.
pub(crate) fn tcb_info_json(issue_date: &str, next_update: &str) -> String {
    let info = TcbInfo {
        id: "TDX",
        version: 3,
        issue_date,
        next_update,
        fmspc: hex::encode_upper(platform::SIM_FMSPC),
        pce_id: hex::encode_upper(platform::PCE_ID),
        tcb_type: 0,
        tcb_evaluation_data_number: platform::TCB_EVALUATION_DATA_NUMBER,
        tdx_module: module(),
        tdx_module_identities: vec![TdxModuleIdentity {
            id: platform::TDX_MODULE_ID,
            module: module(),
            tcb_levels: platform::TDX_MODULE_LEVELS.iter().map(isv_level).collect(),
        }],
        tcb_levels: platform::PLATFORM_LEVELS
            .iter()
            .map(platform_level)
            .collect(),
    };
    serde_json::to_string(&info).expect("plain structs of strings and numbers serialize")
}

/// The TD QE identity body (the `enclaveIdentity` member of Intel's response) for a quoting
/// enclave signed by `mrsigner`.
pub(crate) fn qe_identity_json(issue_date: &str, next_update: &str, mrsigner: &[u8; 32]) -> String {
    let identity = QeIdentity {
        id: "TD_QE",
        version: 2,
        issue_date,
        next_update,
        tcb_evaluation_data_number: platform::TCB_EVALUATION_DATA_NUMBER,
        miscselect: hex::encode_upper(platform::QE_MISCSELECT.to_le_bytes()),
        miscselect_mask: hex::encode_upper(platform::QE_MISCSELECT_MASK.to_le_bytes()),
        attributes: hex::encode_upper(platform::QE_IDENTITY_ATTRIBUTES),
        attributes_mask: hex::encode_upper(platform::QE_IDENTITY_ATTRIBUTES_MASK),
        mrsigner: hex::encode_upper(mrsigner),
        isvprodid: platform::QE_ISV_PROD_ID,
        tcb_levels: platform::QE_LEVELS.iter().map(isv_level).collect(),
    };
    serde_json::to_string(&identity).expect("plain structs of strings and numbers serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dcap_qvl_parses_the_bodies() {
        let tcb: dcap_qvl::tcb_info::TcbInfo = serde_json::from_str(&tcb_info_json(
            "2025-01-01T00:00:00Z",
            "2025-02-01T00:00:00Z",
        ))
        .unwrap();
        assert_eq!((tcb.id.as_str(), tcb.version), ("TDX", 3));
        assert_eq!(hex::decode(&tcb.fmspc).unwrap(), platform::SIM_FMSPC);
        assert_eq!(tcb.tcb_levels.len(), platform::PLATFORM_LEVELS.len());
        assert_eq!(tcb.tcb_levels[0].tcb.sgx_components.len(), 16);
        assert_eq!(tcb.tcb_levels[0].tcb.tdx_components.len(), 16);
        assert_eq!(tcb.tdx_module_identities[0].id, "TDX_01");
        assert!(tcb.tdx_module.is_some());

        let qe: dcap_qvl::QeIdentity =
            serde_json::from_str(&qe_identity_json("2025-01-01T00:00:00Z", "x", &[0xab; 32]))
                .unwrap();
        assert_eq!((qe.id.as_str(), qe.version), ("TD_QE", 2));
        assert_eq!(qe.mrsigner, [0xab; 32]);
        assert_eq!(qe.attributes_mask, platform::QE_IDENTITY_ATTRIBUTES_MASK);
        assert_eq!(qe.isvprodid, platform::QE_ISV_PROD_ID);
    }

    #[test]
    fn bodies_use_intel_field_names() {
        let tcb = tcb_info_json("a", "b");
        for field in [
            "\"tcbEvaluationDataNumber\":1",
            "\"tdxModuleIdentities\"",
            "\"sgxtcbcomponents\"",
            "\"tdxtcbcomponents\"",
            "\"advisoryIDs\":[\"SIM-SA-00002\"]",
            "\"type\":\"TDX Module\"",
        ] {
            assert!(tcb.contains(field), "{field} missing in {tcb}");
        }
        assert!(
            tcb.starts_with("{\"id\":\"TDX\",\"version\":3,\"issueDate\":\"a\""),
            "{tcb}"
        );
        let qe = qe_identity_json("a", "b", &[0; 32]);
        assert!(qe.contains("\"miscselectMask\":\"FFFFFFFF\""), "{qe}");
    }
}
