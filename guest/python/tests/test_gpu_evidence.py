"""chrysalis_engines.gpu_evidence against a stand-in pynvml (no GPU here): what it asks NVML for
and what it hands the guest."""

import sys
import types

import pytest

from chrysalis_engines import gpu_evidence


class FakeNvml(types.ModuleType):
    def __init__(self, reports):
        super().__init__("pynvml")
        self.reports = reports
        self.calls = []

    def nvmlInit(self):
        self.calls.append("init")

    def nvmlShutdown(self):
        self.calls.append("shutdown")

    def nvmlSystemGetConfComputeState(self):
        return types.SimpleNamespace(ccFeature=1, devToolsMode=0, environment=2)

    def nvmlSystemGetConfComputeGpusReadyState(self):
        return 1

    def nvmlDeviceGetCount(self):
        return len(self.reports)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetConfComputeGpuAttestationReport(self, handle, nonce):
        self.calls.append(("report", handle, nonce))
        body = self.reports[handle]
        padded = list(body) + [0] * (0x2000 - len(body))
        return types.SimpleNamespace(attestationReport=padded, attestationReportSize=len(body))

    def nvmlDeviceGetConfComputeGpuCertificate(self, handle):
        pem = b"-----BEGIN CERTIFICATE-----\n...\n"
        padded = list(pem) + [0] * (0x1000 - len(pem))
        return types.SimpleNamespace(attestationCertChain=padded, attestationCertChainSize=len(pem))


@pytest.fixture
def nvml(monkeypatch):
    fake = FakeNvml([b"\x11\xe0report-0", b"\x11\xe0report-1"])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


def test_collect_reads_every_gpu_over_the_nonce(nvml):
    nonce = bytes(range(32))
    out = gpu_evidence.collect(nonce)
    assert out["cc_feature"] == 1 and out["devtools_mode"] == 0 and out["environment"] == 2
    assert out["ready"] == 1
    assert [g["report"] for g in out["gpus"]] == [b"\x11\xe0report-0", b"\x11\xe0report-1"]
    assert out["gpus"][0]["chain_pem"].startswith(b"-----BEGIN CERTIFICATE-----")
    assert ("report", 0, nonce) in nvml.calls and ("report", 1, nonce) in nvml.calls
    assert nvml.calls[0] == "init" and nvml.calls[-1] == "shutdown"


def test_nonce_must_be_32_bytes(nvml):
    with pytest.raises(ValueError, match="32 bytes"):
        gpu_evidence.collect(b"short")
    assert nvml.calls == []


def test_missing_pynvml_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with pytest.raises(RuntimeError, match="pynvml"):
        gpu_evidence.collect(bytes(32))
