"""GPU evidence for the guest, read from NVIDIA's driver through NVML (pynvml).

The guest calls :func:`collect` before every certificate with the nonce derived from its TLS
key. It returns the confidential-computing state and, per GPU, the SPDM attestation report over
that nonce and the attestation certificate chain (PEM). The guest (Rust) checks the state and
refuses to serve when it is not production CC mode; nothing here decides.

pynvml comes from the nvidia-ml-py wheel that vLLM depends on, so the gpu image carries it.
"""

NONCE_LEN = 32


def _nvml():
    try:
        import pynvml
    except ImportError as e:  # a cpu image, or a gpu image built without vLLM's dependencies
        raise RuntimeError("pynvml (nvidia-ml-py) is not installed: no NVML to read GPU evidence from") from e
    return pynvml


def _bytes(array, size):
    return bytes(bytearray(array[:size]))


def collect(nonce: bytes) -> dict:
    """The CC state and every GPU's report over ``nonce`` and chain."""
    if not isinstance(nonce, (bytes, bytearray)) or len(nonce) != NONCE_LEN:
        raise ValueError(f"nonce must be {NONCE_LEN} bytes")
    nvml = _nvml()
    nvml.nvmlInit()
    try:
        state = nvml.nvmlSystemGetConfComputeState()
        ready = nvml.nvmlSystemGetConfComputeGpusReadyState()
        gpus = []
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            report = nvml.nvmlDeviceGetConfComputeGpuAttestationReport(handle, bytes(nonce))
            cert = nvml.nvmlDeviceGetConfComputeGpuCertificate(handle)
            gpus.append(
                {
                    "report": _bytes(report.attestationReport, report.attestationReportSize),
                    "chain_pem": _bytes(cert.attestationCertChain, cert.attestationCertChainSize),
                }
            )
        return {
            "cc_feature": int(state.ccFeature),
            "devtools_mode": int(state.devToolsMode),
            "environment": int(state.environment),
            "ready": int(ready),
            "gpus": gpus,
        }
    finally:
        nvml.nvmlShutdown()
