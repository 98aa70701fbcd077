"""The adapter conformance suite against llama_cpp with the real SmolLM2 model."""

import asyncio
import json

import pytest

from chrysalis_engines import _bridge, conformance


@pytest.fixture(scope="module")
def adapter_and_loop(model_path):
    loop = asyncio.new_event_loop()
    options = {"model_path": str(model_path), "model_id": "smollm2-135m-instruct", "n_ctx": 2048}
    adapter = loop.run_until_complete(_bridge.create("chrysalis_engines.llama_cpp", json.dumps(options)))
    yield adapter, loop
    loop.run_until_complete(adapter.close())
    loop.close()


@pytest.mark.parametrize("check", conformance.CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_conformance(adapter_and_loop, check):
    adapter, loop = adapter_and_loop
    loop.run_until_complete(check(adapter, adapter.models()[0]))


def test_unknown_option_is_named():
    from chrysalis_engines.llama_cpp import create

    with pytest.raises(ValueError, match="n_ctxx"):
        create({"model_path": "/x.gguf", "n_ctxx": 1})


def test_threads_default_to_the_cpus_shared_between_instances():
    import os

    from chrysalis_engines.llama_cpp import create

    cpus = len(os.sched_getaffinity(0))
    assert create({"model_path": "/x.gguf"}).n_threads == cpus
    assert create({"model_path": "/x.gguf", "instances": 2}).n_threads == max(1, cpus // 2)
    assert create({"model_path": "/x.gguf", "n_threads": 3}).n_threads == 3
    with pytest.raises(ValueError, match="n_threads must be at least 1"):
        create({"model_path": "/x.gguf", "n_threads": 0})
