//! Intel collateral beside the quote: which platform a quote needs collateral for, a store of
//! collateral a verifier fetched itself, and the freshness floor of Intel's TCB evaluation data.
//!
//! Collateral is never trusted for where it came from (the node's host, a PCCS, Intel's PCS):
//! whatever is used must verify against the Intel root in [`crate::verify`]. What a signature
//! cannot show is whether the collateral is the *newest* Intel has published: an old TCB info
//! stays signed and unexpired for 30 days, so a host could replay the set from before a TCB
//! recovery to keep an unpatched platform `UpToDate`. The policy's
//! `[collateral] min_tcb_evaluation_data_number` and `max_age_days` close that; see
//! [`TCB_EVALUATION_HISTORY`] for the default floor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use dcap_qvl::QuoteCollateralV3;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// One observation of the TCB evaluation data set that Intel's PCS served as `update=standard`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcbEvaluation {
    /// The `tcbEvaluationDataNumber`.
    pub number: u32,
    /// When it was observed as, or became, the standard set (ISO date).
    pub standard_by: &'static str,
    /// Where the observation comes from.
    pub source: &'static str,
}

/// TCB evaluation data numbers Intel's PCS served as the standard set, oldest first; compiled
/// 2026-12 from recorded PCS responses and public reports (no Intel-published table of the
/// numbers was at hand).
///
/// What the number means: Intel raises it at each TCB recovery (TCB-R), when it re-evaluates
/// every platform's TCB against new fixes. Collateral with a lower number predates that recovery
/// and may call a platform `UpToDate` that the current set calls `OutOfDate`. Requiring the
/// latest number refuses replayed pre-recovery collateral; it does not by itself make a platform
/// patched (the TCB status under that set does), and it must be raised when Intel publishes the
/// next set, or the floor only guards against replays older than the last entry here.
pub const TCB_EVALUATION_HISTORY: &[TcbEvaluation] = &[
    TcbEvaluation {
        number: 17,
        standard_by: "2025-06-19",
        source: "dcap-qvl 0.7.1 sample/tdx_quote_collateral.json (TCB info issued 2025-06-19)",
    },
    TcbEvaluation {
        number: 18,
        standard_by: "2026-02-18",
        source: "dcap-qvl 0.7.1 sample/tdx_quote_outdated_collateral.json (issued 2026-02-18)",
    },
    TcbEvaluation {
        number: 19,
        standard_by: "2026-08-13",
        source: "github.com/near/mpc issue 4169: the standard set until Intel promoted 20 on 2026-08-13/14",
    },
    TcbEvaluation {
        number: 20,
        standard_by: "2026-08-14",
        source: "github.com/near/mpc issue 4169 (promoted 2026-08-13/14, INTEL-SA-01192, -01245, -01312, \
                 -01313); dcap-qvl 0.7.1 sample/tdx_quote_td15ex_collateral.json (issued 2026-10-08)",
    },
];

/// The default minimum `tcbEvaluationDataNumber` for evidence chaining to Intel's production
/// root: the newest entry of [`TCB_EVALUATION_HISTORY`]. A policy overrides it with
/// `[collateral] min_tcb_evaluation_data_number`. Simulated roots number their own sets, so
/// the default does not apply to them.
pub const DEFAULT_MIN_TCB_EVALUATION_DATA_NUMBER: u32 =
    TCB_EVALUATION_HISTORY[TCB_EVALUATION_HISTORY.len() - 1].number;

/// The PCK CA that issued a platform's PCK certificate: which PCK CRL its collateral carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PckCa {
    /// Multi-package platforms.
    Platform,
    /// Single-package platforms.
    Processor,
}

impl PckCa {
    /// The PCS spelling (`platform`, `processor`).
    pub fn as_str(self) -> &'static str {
        match self {
            PckCa::Platform => "platform",
            PckCa::Processor => "processor",
        }
    }
}

/// Which collateral a quote needs: its PCK certificate's FMSPC and issuing CA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CollateralKey {
    /// The FMSPC (family-model-stepping-platform-customSKU), 6 bytes.
    pub fmspc: [u8; 6],
    /// The PCK CA.
    pub ca: PckCa,
}

impl CollateralKey {
    /// Reads the key from a TDX quote's embedded PCK certificate. The certificate is not
    /// verified here (verification does that); a wrong key only fetches useless collateral.
    pub fn of_quote(quote: &[u8]) -> Result<Self, CollateralKeyError> {
        let q = dcap_qvl::quote::Quote::parse(quote)
            .map_err(|e| CollateralKeyError(format!("not a TDX quote: {e:#}")))?;
        Self::of_parsed(&q)
    }

    /// [`Self::of_quote`] for a quote already parsed (as [`crate::Evidence`] holds it).
    pub fn of_tdx_quote(quote: &crate::TdxQuote) -> Result<Self, CollateralKeyError> {
        Self::of_parsed(quote.inner())
    }

    fn of_parsed(q: &dcap_qvl::quote::Quote) -> Result<Self, CollateralKeyError> {
        let fmspc = dcap_qvl::intel::quote_fmspc(q)
            .map_err(|e| CollateralKeyError(format!("FMSPC of the PCK certificate: {e:#}")))?;
        let ca = match dcap_qvl::intel::quote_ca(q)
            .map_err(|e| CollateralKeyError(format!("PCK CA of the PCK certificate: {e:#}")))?
        {
            dcap_qvl::config::PckCa::Platform => PckCa::Platform,
            dcap_qvl::config::PckCa::Processor => PckCa::Processor,
        };
        Ok(Self { fmspc, ca })
    }

    /// The FMSPC as the PCS writes it (12 uppercase hex digits).
    pub fn fmspc_hex(&self) -> String {
        hex::encode_upper(self.fmspc)
    }
}

impl std::fmt::Display for CollateralKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fmspc {} (PCK CA {})",
            self.fmspc_hex(),
            self.ca.as_str()
        )
    }
}

/// The quote's PCK certificate does not name its platform.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{0}")]
pub struct CollateralKeyError(String);

/// The FMSPC a collateral's TCB info is for (12 hex digits as Intel writes them), if it says.
pub fn tcb_info_fmspc(c: &QuoteCollateralV3) -> Option<String> {
    #[derive(Deserialize)]
    struct Body {
        fmspc: Option<String>,
    }
    #[derive(Deserialize)]
    struct Outer {
        #[serde(rename = "tcbInfo")]
        tcb_info: Option<Body>,
        fmspc: Option<String>,
    }
    let o: Outer = serde_json::from_str(&c.tcb_info).ok()?;
    o.tcb_info.and_then(|b| b.fmspc).or(o.fmspc)
}

/// Collateral a verifier obtained itself (from a PCCS or Intel's PCS), per platform, shared
/// between connections. Entries are used only until their `nextUpdate`; verification refuses
/// expired collateral anyway, so the store never needs to be trusted.
///
/// A verifier that finds no usable entry notes the key ([`Self::take_missing`]), so its owner
/// can fetch the collateral (it may block on the network; a rustls verifier must not) and retry.
#[derive(Clone, Debug, Default)]
pub struct CollateralStore {
    inner: Arc<RwLock<HashMap<CollateralKey, Arc<QuoteCollateralV3>>>>,
    missing: Arc<Mutex<Vec<CollateralKey>>>,
}

impl CollateralStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The stored collateral for `key` if its earliest `nextUpdate` is after `now` (unix seconds).
    pub fn get(&self, key: &CollateralKey, now: u64) -> Option<Arc<QuoteCollateralV3>> {
        let c = self
            .inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()?;
        (crate::verify::collateral_valid_until(&c)? > now).then_some(c)
    }

    /// Notes that a verification needed collateral for `key` and found none.
    pub fn note_missing(&self, key: CollateralKey) {
        let mut m = self.missing.lock().unwrap_or_else(|p| p.into_inner());
        if !m.contains(&key) {
            m.push(key);
        }
    }

    /// The keys noted missing since the last call, oldest first.
    pub fn take_missing(&self) -> Vec<CollateralKey> {
        std::mem::take(&mut *self.missing.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Stores (replaces) the collateral for `key`.
    pub fn insert(&self, key: CollateralKey, c: QuoteCollateralV3) {
        self.inner
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, Arc::new(c));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_ordered_and_the_default_is_its_newest() {
        assert!(
            TCB_EVALUATION_HISTORY
                .windows(2)
                .all(|w| w[0].number < w[1].number && w[0].standard_by < w[1].standard_by)
        );
        assert_eq!(DEFAULT_MIN_TCB_EVALUATION_DATA_NUMBER, 20);
    }
}
