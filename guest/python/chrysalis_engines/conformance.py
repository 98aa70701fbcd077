"""The conformance suite every adapter must pass.

It drives the adapter through :func:`chrysalis_engines._bridge.drive`, the same coroutine the Rust
runtime uses, with an in-memory sink in place of the runtime's channel.

Run it against any adapter with one command::

    python -m chrysalis_engines.conformance --adapter llama_cpp --option model_path=/path/model.gguf
    python -m chrysalis_engines.conformance --adapter vllm --option model_path=/models/Qwen2.5-0.5B-Instruct

It prints one line per check and ends with ``N passed, N failed``; the exit status is 0 only when
every check passed. CI runs it against llama_cpp through pytest (guest/python/tests).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import traceback
from dataclasses import dataclass, field

from . import _bridge
from .contract import Adapter

_ids = itertools.count(1)

#: Longest a single conformance generation may take before the check fails (not a speed goal:
#: a hang is a failure, never a skip).
GENERATION_TIMEOUT_S = 120.0


@dataclass
class Outcome:
    chunks: list = field(default_factory=list)  # (text, finish_reason, prompt_tokens, completion_tokens, extra)
    error: str | None = None
    closed: bool = False

    @property
    def text(self) -> str:
        return "".join(c[0] for c in self.chunks)

    @property
    def tool_calls(self) -> list[dict]:
        return [t for c in self.chunks if c[4] for t in c[4].get("tool_calls", [])]

    @property
    def logprobs(self) -> list[dict]:
        return [t for c in self.chunks if c[4] for t in c[4].get("logprobs", [])]

    @property
    def final(self):
        return self.chunks[-1] if self.chunks else None


class MemorySink:
    """The runtime's sink, in memory. ``capacity`` > 0 makes every capacity-th send report FULL."""

    def __init__(self, capacity: int = 0):
        self.outcome = Outcome()
        self.capacity = capacity
        self.sends = 0
        self.first_chunk = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def _store(self, chunk):
        self.outcome.chunks.append(chunk)
        self._loop.call_soon_threadsafe(self.first_chunk.set)

    def send(self, text, finish_reason=None, prompt_tokens=None, completion_tokens=None, extra=None):
        if self.outcome.closed:
            return _bridge.CLOSED
        self.sends += 1
        if self.capacity and self.sends % self.capacity == 0:
            return _bridge.FULL
        self._store((text, finish_reason, prompt_tokens, completion_tokens, json.loads(extra) if extra else None))
        return _bridge.SENT

    def send_blocking(self, text, finish_reason=None, prompt_tokens=None, completion_tokens=None, extra=None):
        self._store((text, finish_reason, prompt_tokens, completion_tokens, json.loads(extra) if extra else None))
        return _bridge.SENT

    def error(self, message):
        self.outcome.error = message
        return _bridge.SENT

    def error_blocking(self, message):
        return self.error(message)

    def close(self):
        self.outcome.closed = True


def request(model: str, *, messages=None, prompt=None, max_tokens=16, temperature=0.0, stop=None, **extra) -> str:
    """A request as the runtime serializes it; ``extra``: response_format, tools, tool_choice,
    parallel_tool_calls, logprobs (in the runtime's form, see contract.GenerateRequest)."""
    if messages is None and prompt is None:
        messages = [{"role": "user", "content": "Write one sentence about the sea."}]
    return json.dumps(
        {
            "request_id": f"conformance-{next(_ids)}",
            "model": model,
            "messages": messages,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": None,
            "stop": stop or [],
            "seed": None,
            "response_format": None,
            "tools": [],
            "tool_choice": "none",
            "parallel_tool_calls": True,
            "logprobs": None,
            **extra,
        }
    )


async def run_one(adapter: Adapter, req_json: str, capacity: int = 0) -> Outcome:
    sink = MemorySink(capacity)
    await asyncio.wait_for(_bridge.drive(adapter, req_json, sink), GENERATION_TIMEOUT_S)
    return sink.outcome


class CheckFailed(AssertionError):
    pass


def ensure(cond: bool, message: str) -> None:
    if not cond:
        raise CheckFailed(message)


def well_formed(o: Outcome, max_tokens: int) -> None:
    ensure(o.error is None, f"generation failed: {o.error}")
    ensure(o.closed, "the sink was not closed")
    ensure(o.final is not None, "no chunks")
    finals = [c for c in o.chunks if c[1] is not None]
    ensure(len(finals) == 1 and o.chunks[-1][1] is not None, "exactly the last chunk must carry finish_reason")
    _, reason, pt, ct, _ = o.final
    ensure(reason in ("stop", "length", "tool_calls"), f"finish_reason {reason!r}")
    ensure(reason == "tool_calls" or not o.tool_calls, f"tool calls made but finish_reason {reason!r}")
    ensure(isinstance(pt, int) and pt > 0, f"prompt_tokens {pt!r}")
    ensure(isinstance(ct, int) and 0 <= ct <= max_tokens, f"completion_tokens {ct!r} (max_tokens {max_tokens})")
    if reason == "length":
        ensure(ct == max_tokens, f"finish_reason length with {ct} of {max_tokens} tokens")


async def check_non_stream(adapter, model):
    o = await run_one(adapter, request(model, max_tokens=16))
    well_formed(o, 16)
    ensure(o.text.strip() != "", "empty completion")


async def check_stream(adapter, model):
    o = await run_one(adapter, request(model, max_tokens=24))
    well_formed(o, 24)
    pieces = [c for c in o.chunks if c[0]]
    ensure(len(pieces) >= 2, f"only {len(pieces)} non-empty chunks: output must stream")


async def check_completion_prompt(adapter, model):
    o = await run_one(adapter, request(model, prompt="The capital of France is", max_tokens=8))
    well_formed(o, 8)


async def check_greedy_is_deterministic(adapter, model):
    a = await run_one(adapter, request(model, max_tokens=16))
    b = await run_one(adapter, request(model, max_tokens=16))
    ensure(a.text == b.text, f"temperature 0 gave {a.text!r} then {b.text!r}")


async def check_stop_sequences(adapter, model):
    base = await run_one(adapter, request(model, max_tokens=32))
    well_formed(base, 32)
    text = base.text
    ensure(len(text) >= 8, f"need a longer greedy output to test stop strings, got {text!r}")
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    expected = text[: text.index(stop)]
    o = await run_one(adapter, request(model, max_tokens=32, stop=[stop]))
    well_formed(o, 32)
    ensure(o.final[1] == "stop", f"finish_reason {o.final[1]!r} after stop string {stop!r}")
    ensure(o.text == expected, f"with stop {stop!r}: got {o.text!r}, expected {expected!r}")


async def check_max_tokens_respected(adapter, model):
    for n in (1, 5):
        o = await run_one(adapter, request(model, max_tokens=n, messages=[{"role": "user", "content": "Count from one to fifty in words."}]))
        well_formed(o, n)
        ensure(o.final[1] == "length", f"max_tokens {n}: finish_reason {o.final[1]!r}")


async def check_usage_consistent(adapter, model):
    short = [{"role": "user", "content": "Hi."}]
    long = [{"role": "user", "content": "Hi. " + "Please describe the weather in detail. " * 10}]
    a = await run_one(adapter, request(model, messages=short, max_tokens=4))
    b = await run_one(adapter, request(model, messages=short, max_tokens=4))
    c = await run_one(adapter, request(model, messages=long, max_tokens=4))
    for o in (a, b, c):
        well_formed(o, 4)
    ensure(a.final[2] == b.final[2], f"same prompt, prompt_tokens {a.final[2]} vs {b.final[2]}")
    ensure(c.final[2] > a.final[2] + 20, f"a longer prompt counted {c.final[2]} vs {a.final[2]} tokens")
    ensure(a.final[3] >= 1, "text without completion tokens")


async def check_backpressure_keeps_order(adapter, model):
    a = await run_one(adapter, request(model, max_tokens=16))
    b = await run_one(adapter, request(model, max_tokens=16), capacity=2)
    ensure(b.text == a.text, f"with a full buffer every other chunk: {b.text!r} vs {a.text!r}")


async def check_cancellation_frees_the_slot(adapter, model):
    sink = MemorySink()
    long_req = request(model, max_tokens=400, messages=[{"role": "user", "content": "Tell a very long story."}])
    task = asyncio.ensure_future(_bridge.drive(adapter, long_req, sink))
    await asyncio.wait_for(sink.first_chunk.wait(), GENERATION_TIMEOUT_S)
    task.cancel()
    try:
        await asyncio.wait_for(task, GENERATION_TIMEOUT_S)
    except asyncio.CancelledError:
        pass
    ensure(sink.outcome.closed, "the sink was not closed after cancellation")
    ensure(not any(c[1] for c in sink.outcome.chunks), "a cancelled generation reported a finish")
    # Every slot must be free again: as many generations as the adapter runs at once all finish.
    after = await asyncio.gather(*(run_one(adapter, request(model, max_tokens=4)) for _ in range(2)))
    for o in after:
        well_formed(o, 4)


async def check_errors_propagate(adapter, model):
    huge = "word " * 200_000
    o = await run_one(adapter, request(model, messages=[{"role": "user", "content": huge}], max_tokens=4))
    ensure(o.error is not None, "a prompt far beyond the context did not fail")
    ensure(":" in o.error, f"the error names no exception type: {o.error!r}")
    ensure(o.closed, "the sink was not closed after an error")
    # The adapter keeps serving afterwards.
    well_formed(await run_one(adapter, request(model, max_tokens=4)), 4)



#: A tool whose arguments are bounded (enum, maxLength), so a constrained call always terminates.
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 12},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
}
TIME_TOOL = {
    "name": "get_time",
    "parameters": {
        "type": "object",
        "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
        "required": ["zone"],
        "additionalProperties": False,
    },
}
#: A schema every output of which is short: the grammar ends it after a few tokens.
VERDICT_SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string", "enum": ["yes", "no"]},
        # Only an integer: llama-cpp-python's schema converter does not enforce minimum/maximum.
        "confidence": {"type": "integer"},
    },
    "required": ["answer", "confidence"],
    "additionalProperties": False,
}


def valid_arguments(call: dict, tool: dict) -> None:
    """The call's arguments are a JSON object that matches the tool's (simple) schema."""
    args = json.loads(call["arguments"])
    params = tool["parameters"]
    ensure(isinstance(args, dict), f"arguments {call['arguments']!r} are not an object")
    ensure(set(args) == set(params["required"]), f"arguments {args!r}: keys must be {params['required']}")
    for k, v in args.items():
        spec = params["properties"][k]
        ensure(isinstance(v, str), f"argument {k}={v!r} is not a string")
        if "enum" in spec:
            ensure(v in spec["enum"], f"argument {k}={v!r} not in {spec['enum']}")
        if "maxLength" in spec:
            ensure(len(v) <= spec["maxLength"], f"argument {k}={v!r} longer than {spec['maxLength']}")


async def check_json_object(adapter, model):
    o = await run_one(
        adapter,
        request(model, max_tokens=48, response_format={"type": "json_object"}, messages=[{"role": "user", "content": "Describe a cat as JSON."}]),
    )
    well_formed(o, 48)
    if o.final[1] == "stop":
        value = json.loads(o.text)
        ensure(isinstance(value, dict), f"json_object gave {o.text!r}")
    else:
        # The grammar allows long objects; cut, it is unfinished and reported as such.
        ensure(o.text.lstrip().startswith("{"), f"json_object output does not start an object: {o.text!r}")


async def check_json_schema(adapter, model):
    rf = {"type": "json_schema", "name": "verdict", "schema": VERDICT_SCHEMA}
    o = await run_one(adapter, request(model, max_tokens=40, response_format=rf, messages=[{"role": "user", "content": "Is the sea blue?"}]))
    well_formed(o, 40)
    ensure(o.final[1] == "stop", f"a bounded schema did not finish in 40 tokens: {o.final[1]!r}, {o.text!r}")
    v = json.loads(o.text)
    ensure(set(v) == {"answer", "confidence"}, f"keys of {v!r}")
    ensure(v["answer"] in ("yes", "no"), f"answer {v['answer']!r}")
    ensure(isinstance(v["confidence"], int) and not isinstance(v["confidence"], bool), f"confidence {v['confidence']!r}")


async def check_constrained_output_cut_is_length(adapter, model):
    rf = {"type": "json_schema", "name": "verdict", "schema": VERDICT_SCHEMA}
    o = await run_one(adapter, request(model, max_tokens=3, response_format=rf))
    well_formed(o, 3)
    ensure(o.final[1] == "length", f"3 tokens of a JSON object: finish_reason {o.final[1]!r}")
    try:
        json.loads(o.text)
        complete = True
    except json.JSONDecodeError:
        complete = False
    ensure(not complete, f"3 tokens made a complete object {o.text!r}: the check needs a longer schema")
    # A forced tool call cut the same way is text, never a call.
    o = await run_one(adapter, request(model, max_tokens=3, tools=[WEATHER_TOOL], tool_choice="required"))
    well_formed(o, 3)
    ensure(o.final[1] == "length" and not o.tool_calls, f"cut forced call: {o.final[1]!r}, calls {o.tool_calls!r}")


async def check_forced_tool_call(adapter, model):
    msgs = [{"role": "user", "content": "What is the weather in Paris?"}]
    o = await run_one(adapter, request(model, max_tokens=64, messages=msgs, tools=[WEATHER_TOOL, TIME_TOOL], tool_choice={"function": "get_weather"}))
    well_formed(o, 64)
    ensure(o.final[1] == "tool_calls", f"named tool_choice: finish_reason {o.final[1]!r}, text {o.text!r}")
    ensure(o.text == "", f"a forced call also gave text {o.text!r}")
    calls = o.tool_calls
    ensure(len(calls) == 1 and calls[0]["name"] == "get_weather", f"calls {calls!r}")
    ensure(calls[0]["index"] == 0 and calls[0]["id"].startswith("call_"), f"call {calls[0]!r}")
    valid_arguments(calls[0], WEATHER_TOOL)


async def check_required_tool_calls(adapter, model):
    tools = [WEATHER_TOOL, TIME_TOOL]
    msgs = [{"role": "user", "content": "What time is it in Berlin, and the weather there?"}]
    for parallel in (True, False):
        o = await run_one(adapter, request(model, max_tokens=96, messages=msgs, tools=tools, tool_choice="required", parallel_tool_calls=parallel))
        well_formed(o, 96)
        ensure(o.final[1] == "tool_calls", f"required (parallel {parallel}): finish_reason {o.final[1]!r}, text {o.text!r}")
        calls = o.tool_calls
        ensure(len(calls) >= 1 and (parallel or len(calls) == 1), f"parallel {parallel}: calls {calls!r}")
        ensure([c["index"] for c in calls] == list(range(len(calls))), f"indexes of {calls!r}")
        ensure(len({c["id"] for c in calls}) == len(calls), f"ids of {calls!r}")
        for c in calls:
            valid_arguments(c, {t["name"]: t for t in tools}[c["name"]])


async def check_auto_and_none_tool_choice(adapter, model):
    msgs = [{"role": "user", "content": "What is the weather in Rome?"}]
    o = await run_one(adapter, request(model, max_tokens=48, messages=msgs, tools=[WEATHER_TOOL], tool_choice="auto"))
    well_formed(o, 48)
    for c in o.tool_calls:
        valid_arguments(c, WEATHER_TOOL)
    ensure("<tool_call>" not in o.text or o.final[1] == "length" or not o.tool_calls, f"an unparsed call block beside calls: {o.text!r}")
    o = await run_one(adapter, request(model, max_tokens=16, messages=msgs, tools=[WEATHER_TOOL], tool_choice="none"))
    well_formed(o, 16)
    ensure(not o.tool_calls and o.final[1] != "tool_calls", f"tool_choice none called {o.tool_calls!r}")


async def check_tool_results_are_rendered(adapter, model):
    call = {"id": "call_1", "name": "get_weather", "arguments": json.dumps({"city": "Paris", "unit": "celsius"})}
    base = [{"role": "user", "content": "What is the weather in Paris?"}]
    asked = base + [{"role": "assistant", "content": "", "tool_calls": [call]}]
    answered = asked + [{"role": "tool", "content": json.dumps({"temperature": 21, "sky": "clear"}), "tool_call_id": "call_1"}]
    outs = []
    for msgs in (base, asked, answered):
        o = await run_one(adapter, request(model, max_tokens=8, messages=msgs, tools=[WEATHER_TOOL], tool_choice="auto"))
        well_formed(o, 8)
        outs.append(o.final[2])
    ensure(outs[0] < outs[1] < outs[2], f"prompt tokens {outs}: the call and its result must reach the model")


async def check_logprobs(adapter, model):
    k = 3
    o = await run_one(adapter, request(model, max_tokens=8, logprobs=k))
    well_formed(o, 8)
    lps = o.logprobs
    ensure(len(lps) == o.final[3], f"{len(lps)} logprobs for {o.final[3]} completion tokens")
    for e in lps:
        ensure(set(e) == {"token", "logprob", "bytes", "top_logprobs"}, f"entry keys {sorted(e)}")
        ensure(isinstance(e["token"], str) and isinstance(e["bytes"], list), f"entry {e!r}")
        ensure(e["logprob"] <= 0.0, f"logprob {e['logprob']} > 0")
        top = e["top_logprobs"]
        ensure(len(top) == k, f"{len(top)} alternatives, asked for {k}")
        ensure(all(a["logprob"] >= b["logprob"] for a, b in zip(top, top[1:])), f"alternatives not ordered: {top!r}")
        # Greedy: the chosen token is the likeliest.
        ensure(abs(top[0]["logprob"] - e["logprob"]) < 1e-4, f"greedy token {e['logprob']} vs best {top[0]['logprob']}")
    ensure(bytes(b for e in lps for b in e["bytes"]).decode("utf-8", errors="replace") == o.text, "logprob bytes do not spell the text")
    plain = await run_one(adapter, request(model, max_tokens=8))
    ensure(plain.text == o.text and not plain.logprobs, "asking for logprobs changed the text, or they came unasked")


CHECKS = [
    check_non_stream,
    check_stream,
    check_completion_prompt,
    check_greedy_is_deterministic,
    check_stop_sequences,
    check_max_tokens_respected,
    check_usage_consistent,
    check_backpressure_keeps_order,
    check_cancellation_frees_the_slot,
    check_errors_propagate,
    check_json_object,
    check_json_schema,
    check_constrained_output_cut_is_length,
    check_forced_tool_call,
    check_required_tool_calls,
    check_auto_and_none_tool_choice,
    check_tool_results_are_rendered,
    check_logprobs,
]


async def run_all(adapter: Adapter, model: str, only: list[str] | None = None) -> list[tuple[str, str | None]]:
    results = []
    for check in CHECKS:
        name = check.__name__.removeprefix("check_")
        if only and name not in only:
            continue
        try:
            await check(adapter, model)
            results.append((name, None))
        except Exception as e:  # noqa: BLE001 - reported per check
            detail = str(e) if isinstance(e, CheckFailed) else traceback.format_exc()
            results.append((name, detail))
    return results


def _parse_option(s: str):
    k, sep, v = s.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--option {s!r}: expected KEY=VALUE")
    try:
        return k, json.loads(v)
    except json.JSONDecodeError:
        return k, v


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m chrysalis_engines.conformance", description=__doc__.split("\n\n")[0])
    p.add_argument("--adapter", required=True, help="llama_cpp, vllm, or a module path")
    p.add_argument("--option", action="append", default=[], type=_parse_option, help="adapter option KEY=VALUE (VALUE as JSON when it parses)")
    p.add_argument("--options-json", default=None, help="adapter options as one JSON object")
    p.add_argument("--check", action="append", default=None, help="run only this check (repeatable)")
    a = p.parse_args(argv)
    options = json.loads(a.options_json) if a.options_json else {}
    options.update(dict(a.option))
    module = a.adapter if "." in a.adapter else f"chrysalis_engines.{a.adapter}"

    async def go():
        adapter = await _bridge.create(module, json.dumps(options))
        try:
            model = adapter.models()[0]
            return await run_all(adapter, model, a.check)
        finally:
            await adapter.close()

    results = asyncio.run(go())
    for name, detail in results:
        print(f"{'PASS' if detail is None else 'FAIL'} {name}" + ("" if detail is None else f": {detail}"))
    failed = sum(1 for _, d in results if d is not None)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
