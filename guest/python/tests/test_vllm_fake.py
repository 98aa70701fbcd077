"""The vllm adapter's plumbing against a stand-in ``vllm`` module (no GPU here): what it puts in
SamplingParams for response_format, forced tools and logprobs, and how it turns vLLM's delta
outputs into chunks. The stand-in models vLLM's documented API (SamplingParams keywords,
StructuredOutputsParams, RequestOutput deltas, Logprob entries); the real engine runs only on GPU
hosts (docs/engines.md)."""

import asyncio
import json
import sys
import types
from dataclasses import dataclass
from typing import Optional

import pytest

from chrysalis_engines.conformance import WEATHER_TOOL, request


@dataclass
class Logprob:
    logprob: float
    rank: Optional[int]
    decoded_token: Optional[str]


@dataclass
class Completion:
    text: str
    token_ids: list
    logprobs: Optional[list]
    finish_reason: Optional[str] = None
    stop_reason: object = None


@dataclass
class Output:
    outputs: list
    finished: bool
    prompt_token_ids: list


class FakeEngine:
    """Replays `script`: a list of (text, token_ids) deltas, then finishes at end of sequence."""

    def __init__(self, script):
        self.script = script
        self.params = None

    async def generate(self, prompt, params, request_id):
        self.params = params
        for i, (text, ids) in enumerate(self.script):
            last = i == len(self.script) - 1
            lps = [{t: Logprob(-0.5, 1, text), t + 1: Logprob(-1.5, 2, "x")} for t in ids] if params.logprobs is not None else None
            yield Output([Completion(text, ids, lps, "stop" if last else None)], last, prompt["prompt_token_ids"])

    async def abort(self, request_id):
        pass


@pytest.fixture
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    sp = types.ModuleType("vllm.sampling_params")

    class SamplingParams:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    class StructuredOutputsParams:
        def __init__(self, **kw):
            self.kw = kw

    sp.RequestOutputKind = types.SimpleNamespace(DELTA="delta")
    sp.StructuredOutputsParams = StructuredOutputsParams
    vllm.SamplingParams = SamplingParams
    vllm.sampling_params = sp
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sp)


class Tokenizer:
    chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt, **kw):
        self.seen = (messages, kw)
        return "|".join(m["content"] for m in messages)

    def encode(self, text, add_special_tokens):
        return list(range(len(text.split())))

    def decode(self, ids):
        return "?"


def run(adapter, req_json):
    from chrysalis_engines.contract import GenerateRequest

    async def go():
        return [c async for c in adapter.generate(GenerateRequest.from_json(req_json))]

    return asyncio.run(go())


def adapter_with(script):
    from chrysalis_engines.vllm import VllmAdapter

    a = VllmAdapter({"model_path": "/m"})
    a.engine, a.tokenizer = FakeEngine(script), Tokenizer()
    return a


def test_forced_call_is_constrained_and_returned_as_a_call(fake_vllm):
    a = adapter_with([('{"name": "get_weather", ', [1, 2]), ('"arguments": {"city": "Rome", "unit": "celsius"}}', [3])])
    chunks = run(a, request("m", tools=[WEATHER_TOOL], tool_choice={"function": "get_weather"}, logprobs=1))
    schema = a.engine.params.structured_outputs.kw["json"]
    assert schema["properties"]["name"] == {"const": "get_weather"}
    assert a.engine.params.logprobs == 1
    [final] = chunks
    assert final.finish_reason == "tool_calls" and final.text == ""
    assert [json.loads(c.arguments) for c in final.tool_calls] == [{"city": "Rome", "unit": "celsius"}]
    assert [len(e["top_logprobs"]) for e in final.logprobs] == [1, 1, 1]
    # The tools reached the prompt (this template does not render tools: the Hermes system prompt).
    assert "get_weather" in a.tokenizer.seen[0][0]["content"]


def test_json_object_and_text_with_logprobs(fake_vllm):
    a = adapter_with([("{}", [7])])
    chunks = run(a, request("m", response_format={"type": "json_object"}))
    assert a.engine.params.structured_outputs.kw == {"json_object": True}
    assert chunks[-1].text == "{}" and chunks[-1].finish_reason == "stop"
    a = adapter_with([("Hi", [4]), (" there", [5])])
    chunks = run(a, request("m", logprobs=0))
    assert not hasattr(a.engine.params, "structured_outputs")
    assert "".join(c.text for c in chunks) == "Hi there"
    assert [e["token"] for c in chunks for e in c.logprobs] == ["Hi", " there"]
    assert all(e["top_logprobs"] == [] for c in chunks for e in c.logprobs)
