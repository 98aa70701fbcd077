//! Evidence fields and verdicts as flat JSON objects (lowercase hex) and readable text.

use chrysalis_attestation::{
    Appraisal, Evidence, Measurements, Platform, Rejection, TdAttributes, Xfam,
};
use serde_json::{Map, Value, json};

/// The fields of a TDX quote or SNP report, keyed as `chrysalis evidence show --json`
/// documents them.
pub fn evidence_fields(evidence: &Evidence) -> Map<String, Value> {
    let m = &evidence.measurements();
    let mut o = Map::new();
    o.insert("platform".into(), json!(evidence.platform().as_str()));
    o.insert("version".into(), json!(evidence.version()));
    o.extend(measurement_fields(m));
    o.insert("debug".into(), json!(m.debug()));
    o.insert("debug_flags".into(), json!(m.debug_flags()));
    if let Measurements::Tdx(t) = m {
        o.insert(
            "td_attributes_set".into(),
            json!(TdAttributes::from_flags(t.td_attributes).set_names()),
        );
        o.insert(
            "xfam_set".into(),
            json!(Xfam::from_flags(t.xfam).set_names()),
        );
    }
    o.insert("report_data".into(), json!(evidence.report_data().to_hex()));
    o
}

/// Measurement fields of a verdict, flattened like [`evidence_fields`].
pub fn measurement_fields(m: &Measurements) -> Map<String, Value> {
    let mut o = Map::new();
    match m {
        Measurements::Tdx(t) => {
            o.insert("mr_td".into(), json!(t.registers.mr_td.to_hex()));
            for (i, r) in t.registers.rtmr.iter().enumerate() {
                o.insert(format!("rtmr{i}"), json!(r.to_hex()));
            }
            o.insert("mr_config_id".into(), json!(t.mr_config_id.to_hex()));
            o.insert("mr_owner".into(), json!(t.mr_owner.to_hex()));
            o.insert("mr_owner_config".into(), json!(t.mr_owner_config.to_hex()));
            o.insert("mr_seam".into(), json!(t.mr_seam.to_hex()));
            o.insert("td_attributes".into(), json!(t.td_attributes.to_hex()));
            o.insert("xfam".into(), json!(t.xfam.to_hex()));
        }
        Measurements::Snp(s) => {
            o.insert("measurement".into(), json!(s.measurement.to_hex()));
            o.insert("host_data".into(), json!(s.host_data.to_hex()));
            o.insert("policy".into(), json!(format!("{:016x}", s.policy)));
            o.insert("chip_id".into(), json!(s.chip_id.to_hex()));
            o.insert("vmpl".into(), json!(s.vmpl));
            for (k, tcb) in [
                ("reported_tcb", s.reported_tcb),
                ("committed_tcb", s.committed_tcb),
                ("launch_tcb", s.launch_tcb),
                ("current_tcb", s.current_tcb),
            ] {
                o.insert(k.into(), serde_json::to_value(tcb).expect("plain struct"));
            }
        }
    }
    o
}

/// The JSON verdict of `chrysalis evidence verify` and `chrysalis verify`.
pub fn verdict_json(platform: Platform, result: &Result<Appraisal, Rejection>) -> Value {
    let mut o = Map::new();
    o.insert("accepted".into(), json!(result.is_ok()));
    o.insert("platform".into(), json!(platform.as_str()));
    match result {
        Ok(v) => {
            let verdict = v.verdict();
            // null for SNP: AMD assigns no status (the policy's TCB floor applies instead).
            o.insert(
                "tcb_status".into(),
                json!(verdict.tcb_status.map(|t| t.as_str())),
            );
            o.insert("advisory_ids".into(), json!(verdict.advisory_ids));
            o.insert("root".into(), json!(verdict.root.to_string()));
            o.insert("debug".into(), json!(verdict.debug));
            o.insert("debug_flags".into(), json!(verdict.debug_flags));
            o.insert("report_data".into(), json!(verdict.report_data.to_hex()));
            o.insert("matched_pin".into(), json!(v.matched_pin()));
            o.insert(
                "tcb_evaluation_data_number".into(),
                json!(verdict.tcb_evaluation_data_number),
            );
            o.insert("collateral_issued".into(), json!(verdict.collateral_issued));
            o.insert(
                "measurements".into(),
                Value::Object(measurement_fields(&verdict.measurements)),
            );
            o.insert("reasons".into(), json!([]));
        }
        Err(r) => {
            o.insert("tcb_status".into(), Value::Null);
            o.insert("reasons".into(), json!(r.messages()));
        }
    }
    Value::Object(o)
}

/// Human-readable lines for a field map (`key: value`, aligned).
pub fn text_lines(fields: &Map<String, Value>) -> String {
    let width = fields.keys().map(String::len).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in fields {
        let v = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        out.push_str(&format!("{k:<width$}  {v}\n"));
    }
    out
}
