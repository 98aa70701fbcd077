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
    chunks: list = field(default_factory=list)  # (text, finish_reason, prompt_tokens, completion_tokens)
    error: str | None = None
    closed: bool = False

    @property
    def text(self) -> str:
        return "".join(c[0] for c in self.chunks)

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

    def send(self, text, finish_reason=None, prompt_tokens=None, completion_tokens=None):
        if self.outcome.closed:
            return _bridge.CLOSED
        self.sends += 1
        if self.capacity and self.sends % self.capacity == 0:
            return _bridge.FULL
        self._store((text, finish_reason, prompt_tokens, completion_tokens))
        return _bridge.SENT

    def send_blocking(self, text, finish_reason=None, prompt_tokens=None, completion_tokens=None):
        self._store((text, finish_reason, prompt_tokens, completion_tokens))
        return _bridge.SENT

    def error(self, message):
        self.outcome.error = message
        return _bridge.SENT

    def error_blocking(self, message):
        return self.error(message)

    def close(self):
        self.outcome.closed = True


def request(model: str, *, messages=None, prompt=None, max_tokens=16, temperature=0.0, stop=None) -> str:
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
    _, reason, pt, ct = o.final
    ensure(reason in ("stop", "length"), f"finish_reason {reason!r}")
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
