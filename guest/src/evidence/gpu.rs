//! GPU evidence: each GPU's attestation report over the key's nonce and its certificate chain,
//! collected before every certificate, and the checks the guest makes itself because a Hopper
//! report does not sign them (confidential-computing mode on, devtools off, production
//! environment, GPUs ready).
//!
//! * [`NvmlPython`]: NVIDIA's driver through NVML, via the Python module
//!   `chrysalis_engines.gpu_evidence` (pynvml, which the gpu image's vLLM already carries).
//! * `LocalSimGpu`: signs simulated reports in this process, for tests only; compiled only into
//!   tests and with the `test-util` feature.
//!
//! A provider returns a [`GpuRecord`]; the TLS layer binds it into the CPU evidence and carries it
//! in the certificate (`chrysalis_attestation::ratls::issue_certificate_with_gpu`).

use std::future::Future;
use std::pin::Pin;

use chrysalis_attestation::gpu::record::rim_ids;
use chrysalis_attestation::gpu::{GpuAttestation, GpuRecord, GpuReport};

use super::EvidenceError;

/// A source of GPU evidence over a caller-chosen nonce.
pub trait GpuEvidenceProvider: Send + Sync + 'static {
    /// Fresh evidence of every GPU whose reports answer `nonce`, after the local checks passed.
    fn gpu_evidence(
        &self,
        nonce: [u8; 32],
    ) -> Pin<Box<dyn Future<Output = Result<GpuRecord, EvidenceError>> + Send + '_>>;

    /// A short name for logs (`nvml`, `local-sim-gpu`).
    fn name(&self) -> &'static str;
}

/// What NVML says of the system's confidential-computing state (unsigned: read by the guest
/// itself, which a client trusts through the CPU measurement).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CcState {
    /// `nvmlSystemGetConfComputeState().ccFeature`: 1 = enabled.
    pub cc_feature: u32,
    /// `devToolsMode`: 0 = off (1 lets a debugger read GPU memory).
    pub devtools_mode: u32,
    /// `environment`: 2 = production (1 = simulation, 0 = unavailable).
    pub environment: u32,
    /// `nvmlSystemGetConfComputeGpusReadyState()`: 1 = accepting client requests.
    pub ready: u32,
}

/// Refuses a GPU system that is not in production confidential-computing mode, naming the check.
pub fn check_cc_state(s: &CcState) -> Result<(), EvidenceError> {
    let fail = |m: String| Err(EvidenceError::Gpu(m));
    if s.cc_feature != 1 {
        return fail(format!(
            "confidential-computing mode is off (NVML ccFeature {}); set it with NVIDIA's \
             gpu-admin-tools on the host and reboot the GPU",
            s.cc_feature
        ));
    }
    if s.devtools_mode != 0 {
        return fail(format!(
            "the GPU is in devtools mode (NVML devToolsMode {}): its memory can be read by a debugger",
            s.devtools_mode
        ));
    }
    if s.environment != 2 {
        return fail(format!(
            "the GPU environment is not production (NVML environment {}; 1 = simulation)",
            s.environment
        ));
    }
    Ok(())
}

/// Builds one GPU's record entry from its report and PEM chain; the RIM ids come from the
/// report's own fields.
pub fn attestation_from(
    report: Vec<u8>,
    chain_pem: &[u8],
) -> Result<GpuAttestation, EvidenceError> {
    let parsed = GpuReport::from_file_bytes(&report)
        .map_err(|e| EvidenceError::Gpu(format!("the driver's attestation report: {e}")))?;
    let chain = chrysalis_attestation::gpu::chain::pem_certificates(chain_pem)
        .map_err(|e| EvidenceError::Gpu(format!("the driver's certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(EvidenceError::Gpu(
            "the driver returned an empty certificate chain".into(),
        ));
    }
    let (driver_rim_id, vbios_rim_id) = rim_ids(&parsed);
    Ok(GpuAttestation {
        driver_rim_id,
        vbios_rim_id,
        report,
        chain,
        driver_rim: None,
        vbios_rim: None,
        ocsp: Vec::new(),
    })
}

/// NVML through the Python module `chrysalis_engines.gpu_evidence` (feature `engine`).
#[cfg(feature = "engine")]
#[derive(Debug, Clone)]
pub struct NvmlPython {
    python_path: Vec<std::path::PathBuf>,
}

#[cfg(feature = "engine")]
impl NvmlPython {
    /// Imports the module from `python_path` (the engine's) when asked.
    pub fn new(python_path: Vec<std::path::PathBuf>) -> Self {
        Self { python_path }
    }

    fn collect(&self, nonce: [u8; 32]) -> Result<GpuRecord, EvidenceError> {
        use pyo3::prelude::*;
        use pyo3::types::{PyBytes, PyDict, PyList};
        let py_err = |e: PyErr| EvidenceError::Gpu(format!("NVML: {e}"));
        let (state, gpus) = Python::attach(|py| -> Result<_, EvidenceError> {
            let sys_path = py
                .import("sys")
                .and_then(|s| s.getattr("path"))
                .map_err(py_err)?;
            for p in self.python_path.iter().rev() {
                let p = p.to_string_lossy();
                let present: bool = sys_path
                    .call_method1("__contains__", (p.as_ref(),))
                    .and_then(|v| v.extract())
                    .map_err(py_err)?;
                if !present {
                    sys_path
                        .call_method1("insert", (0, p.as_ref()))
                        .map_err(py_err)?;
                }
            }
            let out = py
                .import("chrysalis_engines.gpu_evidence")
                .and_then(|m| m.call_method1("collect", (PyBytes::new(py, &nonce),)))
                .map_err(py_err)?;
            let out = out.cast::<PyDict>().map_err(|e| py_err(e.into()))?;
            let get_u32 = |k: &str| -> Result<u32, EvidenceError> {
                out.get_item(k)
                    .map_err(py_err)?
                    .ok_or_else(|| EvidenceError::Gpu(format!("NVML collector returned no {k}")))?
                    .extract()
                    .map_err(py_err)
            };
            let state = CcState {
                cc_feature: get_u32("cc_feature")?,
                devtools_mode: get_u32("devtools_mode")?,
                environment: get_u32("environment")?,
                ready: get_u32("ready")?,
            };
            let list = out
                .get_item("gpus")
                .map_err(py_err)?
                .ok_or_else(|| EvidenceError::Gpu("NVML collector returned no gpus".into()))?;
            let list = list.cast::<PyList>().map_err(|e| py_err(e.into()))?;
            let mut gpus = Vec::new();
            for g in list.iter() {
                let report: Vec<u8> = g
                    .get_item("report")
                    .and_then(|v| v.extract())
                    .map_err(py_err)?;
                let chain: Vec<u8> = g
                    .get_item("chain_pem")
                    .and_then(|v| v.extract())
                    .map_err(py_err)?;
                gpus.push((report, chain));
            }
            Ok((state, gpus))
        })?;
        check_cc_state(&state)?;
        if gpus.is_empty() {
            return Err(EvidenceError::Gpu(
                "NVML sees no GPU: is the GPU passed through to this VM?".into(),
            ));
        }
        let gpus = gpus
            .into_iter()
            .map(|(report, chain)| attestation_from(report, &chain))
            .collect::<Result<Vec<_>, _>>()?;
        // Ready state last: NVIDIA's tools set it after attestation, and a GPU that is not yet
        // ready still attests.
        if state.ready != 1 {
            tracing::warn!(
                ready = state.ready,
                "GPUs are not in the ready state (NVML); the engine will set it when it starts"
            );
        }
        Ok(GpuRecord { gpus })
    }
}

#[cfg(feature = "engine")]
impl GpuEvidenceProvider for NvmlPython {
    fn gpu_evidence(
        &self,
        nonce: [u8; 32],
    ) -> Pin<Box<dyn Future<Output = Result<GpuRecord, EvidenceError>> + Send + '_>> {
        let this = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || this.collect(nonce))
                .await
                .map_err(|e| EvidenceError::Gpu(format!("NVML collector panicked: {e}")))?
        })
    }

    fn name(&self) -> &'static str {
        "nvml"
    }
}

/// Signs simulated GPU reports in this process with a
/// [`chrysalis_attestation::sim::SimNvidiaPki`], over whatever nonce it is asked, carrying the
/// simulated RIMs and the simulated responder's OCSP answers (dated by the system clock unless
/// [`LocalSimGpu::at`] fixes the time). For tests only (see [`super::LocalSim`]): clients accept
/// it only if their policy names the simulated NVIDIA roots.
#[cfg(any(test, feature = "test-util"))]
pub struct LocalSimGpu {
    pki: chrysalis_attestation::sim::SimNvidiaPki,
    gpu: chrysalis_attestation::sim::SimGpu,
    state: CcState,
    /// When the OCSP answers are fetched (unix seconds); `None`: the system clock.
    now: Option<u64>,
}

#[cfg(any(test, feature = "test-util"))]
impl std::fmt::Debug for LocalSimGpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSimGpu").finish_non_exhaustive()
    }
}

#[cfg(any(test, feature = "test-util"))]
impl LocalSimGpu {
    /// One simulated GPU in production CC mode.
    pub fn new(
        pki: chrysalis_attestation::sim::SimNvidiaPki,
        gpu: chrysalis_attestation::sim::SimGpu,
    ) -> Self {
        Self {
            pki,
            gpu,
            state: CcState {
                cc_feature: 1,
                devtools_mode: 0,
                environment: 2,
                ready: 1,
            },
            now: None,
        }
    }

    /// The same GPU with its OCSP answers fetched at `now` (unix seconds) rather than by the
    /// system clock: for tests that verify at a fixed time.
    pub fn at(mut self, now: u64) -> Self {
        self.now = Some(now);
        self
    }

    /// The same GPU reporting another CC state (to test the refusals).
    pub fn with_state(mut self, state: CcState) -> Self {
        self.state = state;
        self
    }
}

#[cfg(any(test, feature = "test-util"))]
impl GpuEvidenceProvider for LocalSimGpu {
    fn gpu_evidence(
        &self,
        nonce: [u8; 32],
    ) -> Pin<Box<dyn Future<Output = Result<GpuRecord, EvidenceError>> + Send + '_>> {
        // OCSP answers dated by this machine's clock, as a node that fetched them now has them.
        let now = self.now.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
        let result = check_cc_state(&self.state).map(|()| self.pki.record(&self.gpu, &nonce, now));
        Box::pin(async move { result })
    }

    fn name(&self) -> &'static str {
        "local-sim-gpu"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> CcState {
        CcState {
            cc_feature: 1,
            devtools_mode: 0,
            environment: 2,
            ready: 1,
        }
    }

    #[test]
    fn cc_state_refusals_name_the_check() {
        assert!(check_cc_state(&good()).is_ok());
        let off = check_cc_state(&CcState {
            cc_feature: 0,
            ..good()
        })
        .unwrap_err()
        .to_string();
        assert!(off.contains("confidential-computing mode is off"), "{off}");
        let dev = check_cc_state(&CcState {
            devtools_mode: 1,
            ..good()
        })
        .unwrap_err()
        .to_string();
        assert!(dev.contains("devtools mode"), "{dev}");
        let sim = check_cc_state(&CcState {
            environment: 1,
            ..good()
        })
        .unwrap_err()
        .to_string();
        assert!(sim.contains("not production"), "{sim}");
    }

    #[test]
    fn attestation_from_refuses_garbage() {
        let e = attestation_from(vec![1, 2, 3], b"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("attestation report"), "{e}");
    }
}
