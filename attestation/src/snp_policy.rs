//! SEV-SNP platform rules of the client policy: the built-in firmware (TCB) floor per AMD
//! product, the guest-policy bits, and the VMPL.
//!
//! AMD assigns no TCB status to an SNP platform (Intel's collateral does for TDX). What a
//! report proves instead is its `reported_tcb`: the VCEK that signed it is derived for exactly
//! that TCB, and firmware can derive the VCEK of its own TCB or an older one, never a newer one.
//! So "this platform runs firmware at least as new as X" is checked by comparing the reported
//! TCB with a floor. The floor comes from [`builtin_tcb_floor`] unless the policy names one
//! (`tcb.snp_minimum` for every product, or `tcb.snp_floor.<product>`).
//!
//! Which TCB values are checked:
//! - `reported_tcb` (certified by the VCEK): must be at least the floor.
//! - `committed_tcb` (the anti-rollback level: firmware below it no longer loads): must be at
//!   least the floor, so the host cannot go back to firmware below the floor.
//! - `launch_tcb` (the platform's TCB when the guest was launched) is recorded in the verdict
//!   and shown by `chrysalis evidence verify`, not checked: it is the firmware's own statement
//!   about an earlier moment, and the floor on `committed_tcb` already bounds rollback.
//! - `current_tcb` is informational (the running firmware's own claim) and not checked.

use serde::Serialize;

use crate::evidence::{SnpMeasurements, SnpTcb};
use crate::policy::{Policy, RejectReason};
use crate::verify::{AmdGeneration, TrustRoot};

/// When the built-in table was last compared with AMD's security bulletins.
pub const TCB_FLOOR_TABLE_DATE: &str = "2026-12";

/// Where the floor in [`builtin_tcb_floor`] comes from.
///
/// AMD-SB-3019 (CVE-2024-56161, "EntrySign": microcode signature verification, published
/// 2025-02-03) is the newest SEV-SNP bulletin whose per-product SPL values for Milan and
/// Genoa were checked for this table (2026-12): the SNP firmware SPL that carries the fix is
/// 0x18 (24) on Milan and 0x17 (23) on Genoa (as the bulletin gives them, quoted in
/// microsoft/CCF issue 6812); the microcode SPL is 0xDB (219) on Milan (what Milan firmware
/// 1.55.29 with the fix reports, virtee/snphost issue 125) and 0x54 (84) on Genoa (the
/// bulletin's value as cited in public reviews of Genoa floors).
///
/// What the numbers mean: a platform below them lacks the SB-3019 fix. A platform at or above
/// them is not thereby patched against later bulletins (AMD-SB-3020 RMPocalypse, AMD-SB-3027
/// StackWarp, AMD-SB-3034 Fabricked, ...), whose per-product values were not verified here; a
/// deployment raises the floor with `tcb.snp_floor` or `tcb.snp_minimum` as those require.
/// The bulletin sets no bootloader or TEE (PSP OS) SPL, so those floors are 0 (unconstrained).
/// No Turin values were verified, so Turin has no built-in floor: a policy that accepts Turin
/// must name its floor (fmc, bootloader, tee, snp, microcode) explicitly.
pub const TCB_FLOOR_SOURCE: &str = "AMD-SB-3019 (CVE-2024-56161)";

/// Why EPYC Milan reports are refused by default, whatever their TCB.
///
/// "Insecure Despite Proven Updated: Extracting the Root VCEK Seed on EPYC Milan via a
/// Software-Only Attack" (arXiv 2605.12990, May 2026) reports code execution on Milan's secure
/// processor followed by a read of the fused root seed from which every VCEK is derived. With
/// the seed, a platform's owner derives the VCEK of any TCB and signs any report: a forged
/// report verifies up to AMD's ARK and no firmware floor can tell. Chrysalis's adversary is
/// exactly that owner, so a Milan report proves nothing against it. The paper's claims were not
/// reproduced here and AMD's answer was not available when this was written (2026-12).
pub const MILAN_FORGERY: &str = "its owner can extract the root VCEK seed and sign reports \
     for any TCB (arXiv 2605.12990, 2026-05)";

/// The built-in minimum TCB of `product`, or `None` when the table has no verified values for
/// it (Turin). See [`TCB_FLOOR_SOURCE`] for where the numbers come from and what they mean.
pub fn builtin_tcb_floor(product: AmdGeneration) -> Option<SnpTcb> {
    match product {
        AmdGeneration::Milan => Some(SnpTcb {
            fmc: None,
            bootloader: 0,
            tee: 0,
            snp: 0x18,
            microcode: 0xDB,
        }),
        AmdGeneration::Genoa => Some(SnpTcb {
            fmc: None,
            bootloader: 0,
            tee: 0,
            snp: 0x17,
            microcode: 0x54,
        }),
        AmdGeneration::Turin => None,
    }
}

/// The names of the guest-policy bits (SEV-SNP firmware ABI, AMD publication 56860, GUEST_POLICY).
/// Bits 0-7 are ABI_MINOR and 8-15 ABI_MAJOR: the oldest firmware ABI the guest accepts.
const POLICY_BITS: [(u8, &str); 10] = [
    (16, "SMT"),
    (17, "reserved (must be one)"),
    (18, "MIGRATE_MA"),
    (19, "DEBUG"),
    (20, "SINGLE_SOCKET"),
    (21, "CXL_ALLOW"),
    (22, "MEM_AES_256_XTS"),
    (23, "RAPL_DIS"),
    (24, "CIPHERTEXT_HIDING_DRAM"),
    (25, "PAGE_SWAP_DISABLE"),
];

/// Names the guest-policy fields set in `bits`: `ABI_MINOR`, `ABI_MAJOR`, `bit 18 MIGRATE_MA`,
/// ..., `bit 40 (reserved)`.
pub fn policy_bit_names(bits: u64) -> Vec<String> {
    let mut out = Vec::new();
    if bits & 0xff != 0 {
        out.push("ABI_MINOR".to_owned());
    }
    if bits & 0xff00 != 0 {
        out.push("ABI_MAJOR".to_owned());
    }
    for bit in 16..64u8 {
        if bits & (1 << bit) != 0 {
            let name = POLICY_BITS
                .iter()
                .find(|(b, _)| *b == bit)
                .map_or("(reserved)", |(_, n)| n);
            out.push(format!("bit {bit} {name}"));
        }
    }
    out
}

/// Where the floor a report was compared with comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FloorSource {
    /// The policy's `tcb.snp_minimum` (every product).
    PolicyMinimum,
    /// The policy's `tcb.snp_floor.<product>`.
    PolicyFloor,
    /// [`builtin_tcb_floor`].
    BuiltIn,
}

impl std::fmt::Display for FloorSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FloorSource::PolicyMinimum => f.write_str("policy tcb.snp_minimum"),
            FloorSource::PolicyFloor => f.write_str("policy tcb.snp_floor"),
            FloorSource::BuiltIn => write!(
                f,
                "built-in table, {TCB_FLOOR_SOURCE}, {TCB_FLOOR_TABLE_DATE}"
            ),
        }
    }
}

/// The outcome of one policy check, as `chrysalis evidence verify --json` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyCheck {
    /// What was checked, e.g. `snp.reported_tcb`, `snp.policy.migrate_ma`, `snp.vmpl`.
    pub check: &'static str,
    /// Whether the evidence passed it.
    pub passed: bool,
    /// The values compared and the rule, in words.
    pub detail: String,
}

/// The product the simulated AMD PKI models (its VCEK's productName). Here rather than in `sim`
/// because a verifier built without the simulated TEE still judges a simulated root by it.
pub const SIM_AMD_PRODUCT: &str = "Genoa";

/// The AMD product of an SNP verdict: which built-in ARK the chain verified under.
///
/// The ARK is the authority here: the VCEK was signed by that generation's ASK, and AMD derives
/// the VCEK's TCB encoding per product. `None` for a root that names no known product.
/// A simulated AMD root is the product its PKI models ([`SIM_AMD_PRODUCT`]).
pub fn product_of(root: &TrustRoot) -> Option<AmdGeneration> {
    match root {
        TrustRoot::AmdArk { product, .. } => AmdGeneration::from_product_name(product),
        // The simulated PKI models one product (its VCEK's productName): the sim profile is held
        // to that product's floor like hardware, not waved through.
        TrustRoot::SimulatedAmd { .. } => AmdGeneration::from_product_name(SIM_AMD_PRODUCT),
        _ => None,
    }
}

impl Policy {
    /// The TCB floor this policy applies to `product`, and where it comes from.
    pub fn snp_floor_for(&self, product: Option<AmdGeneration>) -> Option<(SnpTcb, FloorSource)> {
        if let Some(min) = self.tcb.snp_minimum {
            return Some((min, FloorSource::PolicyMinimum));
        }
        let product = product?;
        if let Some(f) = self.tcb.snp_floor.get(product) {
            return Some((f, FloorSource::PolicyFloor));
        }
        builtin_tcb_floor(product).map(|f| (f, FloorSource::BuiltIn))
    }

    /// The SNP platform checks (TCB floor, guest-policy bits, VMPL), each with its outcome and,
    /// when it failed, the rejection reason.
    pub(crate) fn snp_checks(
        &self,
        root: &TrustRoot,
        m: &SnpMeasurements,
    ) -> Vec<(PolicyCheck, Option<RejectReason>)> {
        let mut out = Vec::new();
        let product = product_of(root);
        let product_name = product.map_or_else(|| root.to_string(), |p| p.name().to_owned());
        if product == Some(AmdGeneration::Milan) {
            let allowed = self.tcb.dangerous_accept_milan;
            out.push((
                PolicyCheck {
                    check: "snp.product",
                    passed: allowed,
                    detail: match allowed {
                        true => {
                            format!("Milan accepted by tcb.dangerous_accept_milan: {MILAN_FORGERY}")
                        }
                        false => format!("Milan refused: {MILAN_FORGERY}"),
                    },
                },
                (!allowed).then(|| RejectReason::SnpProductForgeable {
                    product: product_name.clone(),
                    why: MILAN_FORGERY,
                }),
            ));
        }
        match self.snp_floor_for(product) {
            Some((floor, source)) => {
                for (check, tcb, actual) in [
                    ("snp.reported_tcb", "reported_tcb", m.reported_tcb),
                    ("snp.committed_tcb", "committed_tcb", m.committed_tcb),
                ] {
                    let below = actual.below(&floor);
                    let detail = format!(
                        "{tcb} {actual} against the {product_name} floor {floor} ({source})"
                    );
                    let reason = (!below.is_empty()).then(|| RejectReason::SnpTcbBelowFloor {
                        tcb,
                        product: product_name.clone(),
                        below,
                        source: source.clone(),
                    });
                    out.push((
                        PolicyCheck {
                            check,
                            passed: reason.is_none(),
                            detail,
                        },
                        reason,
                    ));
                }
            }
            None => out.push((
                PolicyCheck {
                    check: "snp.tcb_floor",
                    passed: false,
                    detail: format!("no TCB floor is known for {product_name}"),
                },
                Some(RejectReason::SnpNoTcbFloor {
                    product: product_name.clone(),
                }),
            )),
        }

        let migrate = m.policy & SnpMeasurements::POLICY_MIGRATE_MA_BIT != 0;
        out.push(bit_check(
            "snp.policy.migrate_ma",
            18,
            "MIGRATE_MA",
            migrate,
            false,
            "a migration agent may export the guest's memory",
        ));
        out.push(bit_check(
            "snp.policy.debug",
            19,
            "DEBUG",
            m.debug(),
            self.dangerous_allow_debug,
            "the host may read and write guest memory with the debug API",
        ));

        let vmpl_reason = (m.vmpl != 0).then_some(RejectReason::SnpVmpl { vmpl: m.vmpl });
        out.push((
            PolicyCheck {
                check: "snp.vmpl",
                passed: vmpl_reason.is_none(),
                detail: format!("report requested at VMPL {}; required 0", m.vmpl),
            },
            vmpl_reason,
        ));
        out
    }
}

fn bit_check(
    check: &'static str,
    bit: u8,
    name: &'static str,
    set: bool,
    allowed: bool,
    why: &'static str,
) -> (PolicyCheck, Option<RejectReason>) {
    let reason = (set && !allowed).then_some(RejectReason::SnpGuestPolicyBit { bit, name, why });
    let detail = match (set, allowed) {
        (false, _) => format!("guest policy bit {bit} {name} is clear"),
        (true, false) => format!("guest policy bit {bit} {name} is set: {why}"),
        (true, true) => {
            format!("guest policy bit {bit} {name} is set; allowed by dangerous_allow_debug")
        }
    };
    (
        PolicyCheck {
            check,
            passed: reason.is_none(),
            detail,
        },
        reason,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_milan_and_genoa_and_no_unverified_turin() {
        let milan = builtin_tcb_floor(AmdGeneration::Milan).unwrap();
        assert_eq!((milan.snp, milan.microcode), (24, 219));
        let genoa = builtin_tcb_floor(AmdGeneration::Genoa).unwrap();
        assert_eq!((genoa.snp, genoa.microcode), (23, 84));
        assert_eq!(builtin_tcb_floor(AmdGeneration::Turin), None);
    }

    #[test]
    fn policy_bits_are_named() {
        assert_eq!(
            policy_bit_names(0x3_0000),
            ["bit 16 SMT", "bit 17 reserved (must be one)"]
        );
        assert_eq!(
            policy_bit_names(0x0104_0000 | 1 << 40 | 0x0102),
            [
                "ABI_MINOR",
                "ABI_MAJOR",
                "bit 18 MIGRATE_MA",
                "bit 24 CIPHERTEXT_HIDING_DRAM",
                "bit 40 (reserved)"
            ]
        );
    }
}
