//! Policies (TOML) that name the simulated roots: what a client needs to accept sim evidence.

use chrysalis_attestation::{Measurement, Sha256};

/// A policy naming the sim root and pinning `mr_td` and RTMR1.
pub fn sim_policy_toml(root: Sha256, mr_td: Measurement) -> String {
    format!(
        "version = 1\n[trust]\ndangerous_simulated_intel_roots = [\"{root}\"]\n[[tdx]]\nname = \"test node\"\nmr_td = \"{mr_td}\"\nrtmr1 = \"{}\"\n",
        Measurement([1; 48])
    )
}

/// A policy naming the simulated AMD root `ark` and pinning the SNP launch digest `measurement`.
pub fn sim_snp_policy_toml(ark: Sha256, measurement: Measurement) -> String {
    format!(
        "version = 1\n[trust]\ndangerous_simulated_amd_roots = [\"{ark}\"]\n[[snp]]\nname = \"test node\"\nmeasurement = \"{measurement}\"\nvmpl = 0\n"
    )
}
