"""The vLLM adapter's options: what it refuses before vLLM is imported (no GPU needed)."""

import pytest

from chrysalis_engines.vllm import VllmAdapter


def test_prefix_caching_cannot_be_turned_on():
    # One tenant could time another's prompts through the shared prefix cache (docs/engines.md).
    with pytest.raises(ValueError, match="enable_prefix_caching"):
        VllmAdapter({"model_path": "/models", "engine_args": {"enable_prefix_caching": True}})


def test_prefix_caching_off_is_accepted():
    a = VllmAdapter({"model_path": "/models", "engine_args": {"enable_prefix_caching": False}})
    assert a.models() == ["models"]
