"""The bridge coroutine and stop-string matcher, with an in-memory adapter (no model needed)."""

import asyncio
import json

import pytest

from chrysalis_engines import _bridge
from chrysalis_engines.conformance import MemorySink, request
from chrysalis_engines.contract import Adapter, Chunk, StopMatcher


class Scripted(Adapter):
    """Yields the given pieces; raises `fail` after them if set; records cancellations."""

    def __init__(self, pieces, fail=None, hang=False):
        self.pieces, self.fail, self.hang = pieces, fail, hang
        self.cancelled, self.cleaned = [], 0

    async def start(self):
        pass

    def models(self):
        return ["m"]

    async def cancel(self, request_id):
        self.cancelled.append(request_id)

    async def generate(self, req):
        try:
            for p in self.pieces:
                yield Chunk(text=p)
                await asyncio.sleep(0)
            if self.hang:
                await asyncio.sleep(3600)
            if self.fail:
                raise self.fail
            yield Chunk(text="", finish_reason="stop", prompt_tokens=3, completion_tokens=len(self.pieces))
        finally:
            self.cleaned += 1


def run(coro):
    return asyncio.run(coro)


def test_chunks_arrive_in_order_and_the_sink_is_closed():
    async def go():
        sink = MemorySink()
        await _bridge.drive(Scripted(["a", "b", "c"]), request("m"), sink)
        return sink.outcome

    o = run(go())
    assert o.text == "abc" and o.closed and o.error is None
    assert o.final == ("", "stop", 3, 3, None)


def test_full_buffer_falls_back_to_blocking_send_without_reordering():
    async def go():
        sink = MemorySink(capacity=2)
        await _bridge.drive(Scripted(list("abcdefg")), request("m"), sink)
        return sink.outcome

    assert run(go()).text == "abcdefg"


def test_exceptions_become_errors_with_type_and_message():
    async def go():
        sink = MemorySink()
        await _bridge.drive(Scripted(["a"], fail=RuntimeError("GPU on fire")), request("m"), sink)
        return sink.outcome

    o = run(go())
    assert o.error == "RuntimeError: GPU on fire" and o.closed


def test_system_exit_in_an_adapter_does_not_escape():
    async def go():
        sink = MemorySink()
        await _bridge.drive(Scripted([], fail=SystemExit(3)), request("m"), sink)
        return sink.outcome

    assert run(go()).error == "SystemExit: 3"


def test_malformed_request_is_reported_not_raised():
    async def go():
        sink = MemorySink()
        await _bridge.drive(Scripted([]), json.dumps({"nope": 1}), sink)
        return sink.outcome

    o = run(go())
    assert o.error.startswith("KeyError") and o.closed


def test_cancellation_cleans_up_calls_cancel_and_closes():
    adapter = Scripted(["a"], hang=True)

    async def go():
        sink = MemorySink()
        task = asyncio.ensure_future(_bridge.drive(adapter, request("m"), sink))
        await sink.first_chunk.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return sink.outcome

    o = run(go())
    assert o.closed and o.error is None
    assert len(adapter.cancelled) == 1 and adapter.cleaned == 1


def test_create_rejects_a_factory_that_returns_no_adapter(tmp_path, monkeypatch):
    (tmp_path / "notadapter.py").write_text("def create(options):\n    return object()\n")
    (tmp_path / "raising.py").write_text("raise ImportError('broken adapter')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TypeError, match="not an Adapter"):
        run(_bridge.create("notadapter", "{}"))
    with pytest.raises(ImportError, match="broken adapter"):
        run(_bridge.create("raising", "{}"))


@pytest.mark.parametrize(
    "stops,deltas,expected,hit",
    [
        (["END"], ["ab", "cE", "N", "Dxyz"], "abc", True),
        (["END"], ["ab", "cE", "Nx"], "abcENx", False),
        (["\n\n", "##"], ["a#", "b\n", "\nc"], "a#b", True),
        ([], ["x", "y"], "xy", False),
    ],
)
def test_stop_matcher(stops, deltas, expected, hit):
    m = StopMatcher(stops)
    out, found = "", False
    for d in deltas:
        t, found = m.feed(d)
        out += t
        if found:
            break
    if not found:
        out += m.flush()
    assert (out, found) == (expected, hit)


def test_vllm_adapter_validates_options_without_importing_vllm():
    from chrysalis_engines.vllm import create

    with pytest.raises(ValueError, match="tensor_parallel"):
        create({"model_path": "/m", "tensor_parallel": 2})
    with pytest.raises(ValueError, match="model_path is required"):
        create({})
    # The old option name is refused, not ignored.
    with pytest.raises(ValueError, match="unknown option.*model;"):
        create({"model": "/m"})
    a = create({"model_path": "/models/Qwen2.5-0.5B-Instruct/", "engine_args": {"max_model_len": 4096}})
    assert a.models() == ["Qwen2.5-0.5B-Instruct"]
    # What the image builder writes for the gpu flavor.
    a = create({"model_path": "/models/SmolLM2-135M-Instruct.Q4_1.gguf", "engine_args": {"enforce_eager": True}})
    assert a.models() == ["SmolLM2-135M-Instruct.Q4_1"]
    a = create({"model_path": "/models/x.gguf", "model_id": "smollm2-135m-instruct"})
    assert a.models() == ["smollm2-135m-instruct"]
