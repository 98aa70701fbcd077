//! TDX TD_ATTRIBUTES and XFAM decoded bit by bit, the rules a verifier applies to them, and the
//! one pair of values chrysalis launches its TDs with.
//!
//! Bit positions of TD_ATTRIBUTES follow the Intel TDX Module ABI Specification (348551-008US,
//! "TD_ATTRIBUTES Definition"), cross-checked against the names the Linux kernel gives them
//! (`arch/x86/include/asm/shared/tdx.h`, `TDX_ATTR_*_BIT`) and the reserved mask dcap-qvl 0.7.1
//! enforces (`quote::TDAttributes`):
//!
//! | bits  | group | meaning |
//! |-------|-------|---------|
//! | 0     | TUD   | DEBUG: the host can read and write the TD's CPU state and private memory |
//! | 1–3   | TUD   | reserved (must be zero) |
//! | 4     | TUD   | HGS_PLUS_PROF: HGS+ profiling by the host |
//! | 5     | TUD   | PERF_PROF: performance profiling by the host |
//! | 6     | TUD   | PMT_PROF: platform monitoring (PMT) profiling by the host |
//! | 7     | TUD   | reserved (must be zero) |
//! | 8–15  | SEC   | reserved (must be zero) |
//! | 16    | SEC   | ICSSD: instruction-count based single-step defence |
//! | 17    | SEC   | SERVTD_EXT: a service TD extension hash in the report |
//! | 18–22 | SEC   | defined by ABI 008 (not reserved), no chrysalis meaning |
//! | 23–26 | SEC   | reserved (must be zero) |
//! | 27    | SEC   | LASS: linear address space separation |
//! | 28    | SEC   | SEPT_VE_DISABLE: EPT violations on pending pages do not become #VE |
//! | 29    | SEC   | MIGRATABLE: a migration TD may export the TD |
//! | 30    | SEC   | PKS: supervisor protection keys |
//! | 31    | SEC   | KL: key locker |
//! | 32–61 | OTHER | reserved (must be zero) |
//! | 62    | OTHER | TPA |
//! | 63    | OTHER | PERFMON: the TD may use perfmon and PERF_METRICS |
//!
//! The ABI says a TD with any TUD bit (0–7) set is untrusted: "TD under debug". XFAM bits are
//! XSAVE state-component numbers (Intel SDM vol. 1, "XSAVE-Supported Features and
//! State-Component Bitmaps"); XFAM decides which extended CPU state the TD may use and hence
//! which state the TDX module saves, and clears, on every exit to the host.

use std::borrow::Cow;

use crate::evidence::Flags64;

/// TD_ATTRIBUTES of every TD chrysalis launches: SEPT_VE_DISABLE (bit 28) only, which is what
/// QEMU's `tdx-guest` object sets when no `attributes` or `debug` option is given (the host
/// launcher gives none). Not DEBUG, no profiling bit, not MIGRATABLE.
pub const LAUNCH_TD_ATTRIBUTES: Flags64 =
    Flags64((1u64 << TdAttributes::SEPT_VE_DISABLE).to_le_bytes());

/// XFAM of every TD chrysalis launches: x87, SSE, AVX, the three AVX-512 components, PKRU and the
/// two AMX components (0x602e7). This is what QEMU's `tdx-guest` gives a `-cpu host` TD on the
/// Sapphire/Emerald Rapids hosts the `tdx` profile targets, and what real QEMU TDX guests report
/// (dcap-qvl's recorded sample quote carries the same value). A host CPU that also offers CET
/// (XFAM bits 11 and 12) or lacks AMX yields another XFAM, which a pinned policy refuses.
pub const LAUNCH_XFAM: Flags64 = Flags64((0x0006_02e7u64).to_le_bytes());

/// How a verifier treats one TD_ATTRIBUTES bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BitRule {
    /// "TD under debug": the guest is untrusted; the policy refuses it unless
    /// `dangerous_allow_debug`.
    UnderDebug,
    /// Must be set (SEPT_VE_DISABLE): refused at verification, whatever the policy.
    Required,
    /// Must be clear (reserved bits, MIGRATABLE, SERVTD_EXT): refused at verification, whatever
    /// the policy.
    Forbidden,
    /// Either value verifies; a pinned `td_attributes` decides.
    Pinned,
}

/// TD_ATTRIBUTES as a 64-bit little-endian value, the way the TD report stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TdAttributes(pub u64);

impl TdAttributes {
    /// DEBUG.
    pub const DEBUG: u32 = 0;
    /// HGS_PLUS_PROF.
    pub const HGS_PLUS_PROF: u32 = 4;
    /// PERF_PROF.
    pub const PERF_PROF: u32 = 5;
    /// PMT_PROF.
    pub const PMT_PROF: u32 = 6;
    /// ICSSD.
    pub const ICSSD: u32 = 16;
    /// SERVTD_EXT.
    pub const SERVTD_EXT: u32 = 17;
    /// LASS.
    pub const LASS: u32 = 27;
    /// SEPT_VE_DISABLE.
    pub const SEPT_VE_DISABLE: u32 = 28;
    /// MIGRATABLE.
    pub const MIGRATABLE: u32 = 29;
    /// PKS.
    pub const PKS: u32 = 30;
    /// KL.
    pub const KL: u32 = 31;
    /// TPA.
    pub const TPA: u32 = 62;
    /// PERFMON.
    pub const PERFMON: u32 = 63;

    /// The TUD ("TD under debug") group, bits 0–7.
    pub const TUD_MASK: u64 = 0xff;
    /// Bits the ABI reserves (must be zero): 1–3, 7–15, 23–26, 32–61.
    pub const RESERVED_MASK: u64 = ones(1, 3) | ones(7, 15) | ones(23, 26) | ones(32, 61);

    /// The attributes of a quote's 8 bytes.
    pub fn from_flags(f: Flags64) -> Self {
        Self(u64::from_le_bytes(f.0))
    }

    /// The 8 bytes as a quote stores them.
    pub fn to_flags(self) -> Flags64 {
        Flags64(self.0.to_le_bytes())
    }

    /// Whether `bit` (0–63) is set.
    pub fn is_set(self, bit: u32) -> bool {
        bit < 64 && self.0 & (1u64 << bit) != 0
    }

    /// The lowercase name of a bit: the ABI's name (`debug`, `perf_prof`, `sept_ve_disable`...),
    /// `tud_bitN` for a reserved TUD bit, `reserved_bitN` for another reserved bit, `sec_bitN`
    /// for a defined SEC bit without a chrysalis name.
    pub fn bit_name(bit: u32) -> Cow<'static, str> {
        match bit {
            Self::DEBUG => "debug".into(),
            Self::HGS_PLUS_PROF => "hgs_plus_prof".into(),
            Self::PERF_PROF => "perf_prof".into(),
            Self::PMT_PROF => "pmt_prof".into(),
            Self::ICSSD => "icssd".into(),
            Self::SERVTD_EXT => "servtd_ext".into(),
            Self::LASS => "lass".into(),
            Self::SEPT_VE_DISABLE => "sept_ve_disable".into(),
            Self::MIGRATABLE => "migratable".into(),
            Self::PKS => "pks".into(),
            Self::KL => "kl".into(),
            Self::TPA => "tpa".into(),
            Self::PERFMON => "perfmon".into(),
            b if b >= 64 => format!("bit{b}").into(),
            b if b < 8 => format!("tud_bit{b}").into(),
            b if Self::RESERVED_MASK & (1u64 << b) != 0 => format!("reserved_bit{b}").into(),
            b => format!("sec_bit{b}").into(),
        }
    }

    /// What a verifier does with `bit`.
    pub fn rule(bit: u32) -> BitRule {
        match bit {
            b if b >= 64 => BitRule::Forbidden,
            Self::SEPT_VE_DISABLE => BitRule::Required,
            Self::MIGRATABLE | Self::SERVTD_EXT => BitRule::Forbidden,
            // Reserved TUD bits (1-3, 7) are untrusted like every TUD bit, and reserved too:
            // dcap-qvl refuses them before any policy could lift them.
            b if Self::RESERVED_MASK & (1u64 << b) != 0 => BitRule::Forbidden,
            b if b < 8 => BitRule::UnderDebug,
            _ => BitRule::Pinned,
        }
    }

    /// Names of every set bit, lowest first.
    pub fn set_names(self) -> Vec<String> {
        (0..64)
            .filter(|&b| self.is_set(b))
            .map(|b| Self::bit_name(b).into_owned())
            .collect()
    }

    /// Names of the set TUD bits (0–7), lowest first: empty unless the TD is under debug.
    pub fn under_debug(self) -> Vec<String> {
        Self(self.0 & Self::TUD_MASK).set_names()
    }

    /// What no acceptable TD has, whatever the policy: a reserved bit set, MIGRATABLE or
    /// SERVTD_EXT set, SEPT_VE_DISABLE clear. Empty when none applies. The same rules as
    /// dcap-qvl's, stated here so a rejection names the bit.
    pub fn violations(self) -> Vec<String> {
        let mut out = Vec::new();
        for bit in 0..64 {
            match (Self::rule(bit), self.is_set(bit)) {
                (BitRule::Forbidden, true) => out.push(format!("{} set", Self::bit_name(bit))),
                (BitRule::Required, false) => out.push(format!("{} clear", Self::bit_name(bit))),
                _ => {}
            }
        }
        out
    }
}

const fn ones(lo: u32, hi: u32) -> u64 {
    (u64::MAX << lo) & (u64::MAX >> (63 - hi))
}

/// XFAM as a 64-bit little-endian value: one bit per XSAVE state component the TD may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Xfam(pub u64);

impl Xfam {
    /// The XFAM of a quote's 8 bytes.
    pub fn from_flags(f: Flags64) -> Self {
        Self(u64::from_le_bytes(f.0))
    }

    /// The name of a state component (Intel SDM numbering), or `bitN`.
    pub fn bit_name(bit: u32) -> Cow<'static, str> {
        const NAMES: [&str; 20] = [
            "x87",
            "sse",
            "avx",
            "mpx_bndregs",
            "mpx_bndcsr",
            "avx512_opmask",
            "avx512_zmm_hi256",
            "avx512_hi16_zmm",
            "pt",
            "pkru",
            "pasid",
            "cet_u",
            "cet_s",
            "hdc",
            "uintr",
            "lbr",
            "hwp",
            "amx_xtilecfg",
            "amx_xtiledata",
            "apx",
        ];
        match NAMES.get(bit as usize) {
            Some(n) => Cow::Borrowed(*n),
            None => format!("bit{bit}").into(),
        }
    }

    /// Names of every set component, lowest first.
    pub fn set_names(self) -> Vec<String> {
        (0..64)
            .filter(|&b| self.0 & (1u64 << b) != 0)
            .map(|b| Self::bit_name(b).into_owned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_values_are_what_real_qemu_tds_report() {
        // dcap-qvl's sample quote from a QEMU TDX guest: td_attributes 0000001000000000,
        // xfam e702060000000000 (bytes as the quote stores them).
        assert_eq!(LAUNCH_TD_ATTRIBUTES.to_hex(), "0000001000000000");
        assert_eq!(LAUNCH_XFAM.to_hex(), "e702060000000000");
        let a = TdAttributes::from_flags(LAUNCH_TD_ATTRIBUTES);
        assert!(a.under_debug().is_empty());
        assert!(a.violations().is_empty());
        assert_eq!(a.set_names(), ["sept_ve_disable"]);
        assert_eq!(
            Xfam::from_flags(LAUNCH_XFAM).set_names(),
            [
                "x87",
                "sse",
                "avx",
                "avx512_opmask",
                "avx512_zmm_hi256",
                "avx512_hi16_zmm",
                "pkru",
                "amx_xtilecfg",
                "amx_xtiledata"
            ]
        );
    }

    #[test]
    fn every_tud_bit_is_named_and_under_debug() {
        let names = [
            "debug",
            "tud_bit1",
            "tud_bit2",
            "tud_bit3",
            "hgs_plus_prof",
            "perf_prof",
            "pmt_prof",
            "tud_bit7",
        ];
        for (bit, name) in names.iter().enumerate() {
            let a = TdAttributes(1 << bit | 1 << TdAttributes::SEPT_VE_DISABLE);
            assert_eq!(a.under_debug(), [*name], "bit {bit}");
        }
        for bit in 8..64 {
            assert!(TdAttributes(1 << bit).under_debug().is_empty(), "bit {bit}");
        }
    }

    #[test]
    fn reserved_mask_matches_the_abi_and_dcap_qvl() {
        // The defined bits of ABI 008 (dcap-qvl's td_attributes_tests lists the same).
        let defined = [
            0, 4, 5, 6, 16, 17, 18, 19, 20, 21, 22, 27, 28, 29, 30, 31, 62, 63,
        ];
        for bit in 0..64 {
            let reserved = TdAttributes::RESERVED_MASK & (1 << bit) != 0;
            assert_eq!(reserved, !defined.contains(&bit), "bit {bit}");
        }
    }

    #[test]
    fn violations_name_what_no_policy_lifts() {
        let sept = 1u64 << TdAttributes::SEPT_VE_DISABLE;
        assert_eq!(TdAttributes(0).violations(), ["sept_ve_disable clear"]);
        assert_eq!(TdAttributes(sept | 1 << 3).violations(), ["tud_bit3 set"]);
        assert_eq!(
            TdAttributes(sept | 1 << 40).violations(),
            ["reserved_bit40 set"]
        );
        assert_eq!(
            TdAttributes(sept | 1 << TdAttributes::MIGRATABLE).violations(),
            ["migratable set"]
        );
        assert_eq!(
            TdAttributes(sept | 1 << TdAttributes::SERVTD_EXT).violations(),
            ["servtd_ext set"]
        );
        // Profiling and debug are the policy's to decide, not violations.
        for bit in [0, 4, 5, 6] {
            assert!(
                TdAttributes(sept | 1 << bit).violations().is_empty(),
                "bit {bit}"
            );
        }
        // Allowed security features verify; a pinned td_attributes decides.
        for bit in [16, 27, 30, 31, 62, 63] {
            assert!(
                TdAttributes(sept | 1 << bit).violations().is_empty(),
                "bit {bit}"
            );
        }
    }
}
