"""Runs NVIDIA's local GPU verifier (PyPI nv-local-gpu-verifier) in --test_no_gpu mode, for the
comparison test in recorded_gpu.rs. Changes made here, each because the test runs offline and
reproducibly: OCSP answers "good" (NVIDIA's OCSP service is not reachable; our verifier's policy
names the same absence), certificates are checked at NV_TIME instead of the clock, the test nonce
is NV_NONCE, and the RIMs are NV_DRIVER_RIM / NV_VBIOS_RIM (2.7.3 leaves the driver RIM path
empty in --test_no_gpu mode)."""
import os, sys
from verifier import cc_admin
from verifier.config import BaseSettings, HopperSettings
from verifier.cc_admin_utils import CcAdminUtils
def ocsp_ok(*a, **k):
    return True, None, "good", None
CcAdminUtils.ocsp_certificate_chain_validation = staticmethod(ocsp_ok)
# Certificates are checked at NV_TIME (unix seconds) instead of the clock, like our --now.
if os.environ.get("NV_TIME"):
    import datetime
    from OpenSSL import crypto
    _when = datetime.datetime.fromtimestamp(int(os.environ["NV_TIME"]), datetime.timezone.utc).replace(tzinfo=None)
    _Store = crypto.X509Store
    class _AtTime(_Store):
        def __init__(self):
            super().__init__()
            self.set_time(_when)
    crypto.X509Store = _AtTime
if os.environ.get("NV_NONCE"):
    BaseSettings.NONCE = os.environ["NV_NONCE"]
HopperSettings.set_driver_rim_path(os.environ.get("NV_DRIVER_RIM", HopperSettings.TEST_NO_GPU_DRIVER_RIM_PATH))
if os.environ.get("NV_VBIOS_RIM"):
    HopperSettings.TEST_NO_GPU_VBIOS_RIM_PATH = os.environ["NV_VBIOS_RIM"]
sys.argv = ["cc_admin", "--test_no_gpu"] + sys.argv[1:]
cc_admin.main()
