//! The simulated platform: its SVNs, FMSPC, TDX module and quoting enclave, and the TCB levels that
//! the simulated Intel service publishes for them. One place, so certificate, collateral and quote agree.

use crate::evidence::Flags64;

/// CPUSVN of the simulated platform. Intel's PCK certificate repeats these bytes as the 16 SGX TCB
/// component SVNs.
pub(crate) const CPU_SVN: [u8; 16] = [4, 4, 2, 2, 3, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0];
/// PCE SVN of the simulated platform.
pub(crate) const PCE_SVN: u16 = 13;
/// PCE ID (Intel's is 0 everywhere).
pub(crate) const PCE_ID: [u8; 2] = [0, 0];
/// FMSPC of the simulated platform: "SIM" and a model byte, no real Intel part family.
pub const SIM_FMSPC: [u8; 6] = *b"SIM\x00\x00\x01";
/// SGX type in the PCK certificate: 1 = Scalable (server parts with TDX).
pub(crate) const SGX_TYPE: u8 = 1;

/// TEE_TCB_SVN of a TD on an up-to-date simulated TDX module: module ISVSVN 6, module version 1
/// (selects the `TDX_01` module identity), TDX late microcode SVN 3. Quotes with it are `UpToDate`.
pub const TEE_TCB_SVN_UP_TO_DATE: [u8; 16] = [6, 1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
/// TEE_TCB_SVN with the TDX microcode SVN one behind: quotes with it verify as `OutOfDate`
/// with advisory `SIM-SA-00002`.
pub const TEE_TCB_SVN_OUT_OF_DATE: [u8; 16] = [6, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// TD attributes of a simulated TD: exactly those chrysalis launches real TDs with
/// ([`crate::tdx_attributes::LAUNCH_TD_ATTRIBUTES`], SEPT_VE_DISABLE only), so a policy pinned
/// from a manifest decides sim and hardware quotes alike.
pub const TD_ATTRIBUTES: Flags64 = crate::tdx_attributes::LAUNCH_TD_ATTRIBUTES;
/// XFAM of a simulated TD: [`crate::tdx_attributes::LAUNCH_XFAM`] (x87, SSE, AVX, AVX-512, PKRU,
/// AMX).
pub const XFAM: Flags64 = crate::tdx_attributes::LAUNCH_XFAM;

/// MRSIGNER of the TDX module: Intel signs its modules with an all-zero MRSIGNERSEAM.
pub(crate) const TDX_MODULE_MRSIGNER: [u8; 48] = [0; 48];
/// SEAM attributes of a production TDX module, and the mask the TCB info applies.
pub(crate) const TDX_MODULE_ATTRIBUTES: [u8; 8] = [0; 8];
pub(crate) const TDX_MODULE_ATTRIBUTES_MASK: [u8; 8] = [0xff; 8];

/// The quoting enclave's ISV product ID (Intel's TD_QE uses 2) and SVN.
pub(crate) const QE_ISV_PROD_ID: u16 = 2;
pub(crate) const QE_ISV_SVN: u16 = 4;
/// MISCSELECT of the QE report and the expectation in the QE identity.
pub(crate) const QE_MISCSELECT: u32 = 0;
pub(crate) const QE_MISCSELECT_MASK: u32 = 0xffff_ffff;
/// SGX attributes of the QE report: INIT | MODE64BIT | PROVISIONKEY, no DEBUG; XFRM 0xe7.
pub(crate) const QE_REPORT_ATTRIBUTES: [u8; 16] =
    [0x15, 0, 0, 0, 0, 0, 0, 0, 0xe7, 0, 0, 0, 0, 0, 0, 0];
/// What the QE identity expects of them, and which bits it compares (DEBUG must match; XFRM is free).
pub(crate) const QE_IDENTITY_ATTRIBUTES: [u8; 16] =
    [0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
pub(crate) const QE_IDENTITY_ATTRIBUTES_MASK: [u8; 16] = [
    0xfb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0,
];
/// The QE authentication data that the QE report hashes with the attestation key (Intel's QE
/// ships the bytes 0..32).
pub(crate) const QE_AUTH_DATA: [u8; 32] = {
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = i as u8;
        i += 1;
    }
    out
};

/// TCB evaluation data number of the simulated TCB info and QE identity.
pub(crate) const TCB_EVALUATION_DATA_NUMBER: u32 = 1;

/// A platform TCB level of the TCB info: the SGX and TDX component SVNs, PCE SVN, and verdict.
pub(crate) struct PlatformLevel {
    pub(crate) sgx: [u8; 16],
    pub(crate) pce_svn: u16,
    pub(crate) tdx: [u8; 16],
    pub(crate) date: &'static str,
    pub(crate) status: &'static str,
    pub(crate) advisories: &'static [&'static str],
}

const fn svn16(head: [u8; 3]) -> [u8; 16] {
    [
        head[0], head[1], head[2], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]
}

/// Highest first, as Intel publishes them.
pub(crate) const PLATFORM_LEVELS: &[PlatformLevel] = &[
    PlatformLevel {
        sgx: CPU_SVN,
        pce_svn: PCE_SVN,
        tdx: svn16([6, 1, 3]),
        date: "2024-06-12T00:00:00Z",
        status: "UpToDate",
        advisories: &[],
    },
    PlatformLevel {
        sgx: CPU_SVN,
        pce_svn: PCE_SVN,
        tdx: svn16([4, 1, 2]),
        date: "2023-08-09T00:00:00Z",
        status: "OutOfDate",
        advisories: &["SIM-SA-00002"],
    },
    PlatformLevel {
        sgx: [3, 3, 2, 2, 3, 1, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0],
        pce_svn: 11,
        tdx: svn16([2, 1, 0]),
        date: "2022-02-09T00:00:00Z",
        status: "OutOfDate",
        advisories: &["SIM-SA-00001", "SIM-SA-00002"],
    },
];

/// A level of the `TDX_01` module identity (module ISVSVN) or of the QE identity (QE ISVSVN).
pub(crate) struct SvnLevel {
    pub(crate) isvsvn: u16,
    pub(crate) date: &'static str,
    pub(crate) status: &'static str,
    pub(crate) advisories: &'static [&'static str],
}

/// Module version 1 (TEE_TCB_SVN[1]) selects this identity.
pub(crate) const TDX_MODULE_ID: &str = "TDX_01";
pub(crate) const TDX_MODULE_LEVELS: &[SvnLevel] = &[
    SvnLevel {
        isvsvn: 6,
        date: "2024-06-12T00:00:00Z",
        status: "UpToDate",
        advisories: &[],
    },
    SvnLevel {
        isvsvn: 4,
        date: "2023-08-09T00:00:00Z",
        status: "OutOfDate",
        advisories: &["SIM-SA-00003"],
    },
];

pub(crate) const QE_LEVELS: &[SvnLevel] = &[
    SvnLevel {
        isvsvn: 4,
        date: "2024-03-13T00:00:00Z",
        status: "UpToDate",
        advisories: &[],
    },
    SvnLevel {
        isvsvn: 2,
        date: "2023-02-15T00:00:00Z",
        status: "OutOfDate",
        advisories: &["SIM-SA-00004"],
    },
];

/// Component names Intel attaches to the first SGX and TDX TCB components (the rest are bare).
pub(crate) const SGX_COMPONENT_NAMES: [(Option<&str>, Option<&str>); 8] = [
    (Some("BIOS"), Some("Early Microcode Update")),
    (Some("OS/VMM"), Some("SGX Late Microcode Update")),
    (Some("OS/VMM"), Some("TXT SINIT")),
    (Some("BIOS"), None),
    (Some("BIOS"), None),
    (Some("BIOS"), None),
    (None, None),
    (Some("OS/VMM"), Some("SEAMLDR ACM")),
];
pub(crate) const TDX_COMPONENT_NAMES: [(Option<&str>, Option<&str>); 3] = [
    (Some("OS/VMM"), Some("TDX Module")),
    (Some("OS/VMM"), Some("TDX Module")),
    (Some("OS/VMM"), Some("TDX Late Microcode Update")),
];
