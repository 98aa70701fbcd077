"""Checks that the official openai SDK, unchanged, works against chrysalis-guest over TLS.

Run by guest/tests/acceptance.rs with the pinned openai package from the test venv. The server's
self-signed certificate is trusted through --ca (clients of real nodes use the chrysalis proxy,
which verifies the attestation instead).
"""

import argparse
import json
import ssl
import sys
from typing import Literal

import openai
from pydantic import BaseModel, Field


class Verdict(BaseModel):
    answer: Literal["yes", "no"]
    confidence: int


class GetWeather(BaseModel):
    """The current weather in a city."""

    city: str = Field(max_length=12)
    unit: Literal["celsius", "fahrenheit"]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--model", required=True)
    a = p.parse_args()
    # Trust exactly this certificate. Its name is chrysalis.invalid (RA-TLS certificates name no
    # host; clients pin the attested key instead), so the host name is not checked.
    ctx = ssl.create_default_context(cafile=a.ca)
    ctx.check_hostname = False
    client = openai.OpenAI(base_url=a.base_url, api_key="unused", http_client=openai.DefaultHttpxClient(verify=ctx), max_retries=0)
    msgs = [{"role": "user", "content": "Say hello to the sea."}]

    ids = [m.id for m in client.models.list()]
    assert a.model in ids, ids

    raw = client.chat.completions.with_raw_response.create(model=a.model, messages=msgs, max_tokens=16, temperature=0)
    assert raw.headers.get("chrysalis-receipt", "").count(".") == 2, dict(raw.headers)
    r = raw.parse()
    text = r.choices[0].message.content
    assert text and r.usage.completion_tokens >= 1 and r.usage.prompt_tokens > 0, r

    # A stream, plain; then with include_usage and TE: trailers (the receipt trailer must not
    # disturb the SDK's SSE parsing).
    for extra in ({}, {"stream_options": {"include_usage": True}, "extra_headers": {"TE": "trailers"}}):
        pieces, usage = [], None
        for chunk in client.chat.completions.create(model=a.model, messages=msgs, max_tokens=16, temperature=0, stream=True, **extra):
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
        assert len(pieces) >= 2, pieces
        assert "".join(pieces) == text, ("".join(pieces), text)
        if extra:
            assert usage is not None and usage.completion_tokens == r.usage.completion_tokens, usage

    c = client.completions.create(model=a.model, prompt="The sea is", max_tokens=8, temperature=0)
    assert c.choices[0].text is not None and c.usage.completion_tokens >= 1

    try:
        client.chat.completions.create(model=a.model, messages=msgs, max_tokens=16, logit_bias={"1": 1})
        raise AssertionError("an unsupported field was accepted")
    except openai.BadRequestError as e:
        assert "logit_bias" in str(e), e

    # Structured output through the SDK's parse() helper (a strict json_schema from a pydantic
    # model), enforced by the engine's grammar.
    p = client.beta.chat.completions.parse(
        model=a.model, messages=[{"role": "user", "content": "Is the sea blue?"}], response_format=Verdict, max_tokens=40, temperature=0
    )
    assert isinstance(p.choices[0].message.parsed, Verdict), p
    j = client.chat.completions.create(
        model=a.model, messages=[{"role": "user", "content": "A cat, as JSON."}], response_format={"type": "json_object"}, max_tokens=24, temperature=0
    )
    if j.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(j.choices[0].message.content), dict), j

    # A forced tool call, parsed by the SDK into the pydantic model; then streamed, where
    # delta.tool_calls must assemble into the same call.
    tool = openai.pydantic_function_tool(GetWeather)
    weather = [{"role": "user", "content": "What is the weather in Paris?"}]
    forced = {"type": "function", "function": {"name": "GetWeather"}}
    t = client.beta.chat.completions.parse(model=a.model, messages=weather, tools=[tool], tool_choice=forced, max_tokens=64, temperature=0)
    call = t.choices[0].message.tool_calls[0]
    assert t.choices[0].finish_reason == "tool_calls" and isinstance(call.function.parsed_arguments, GetWeather), t
    calls: dict[int, dict] = {}
    finish = None
    for chunk in client.chat.completions.create(model=a.model, messages=weather, tools=[tool], tool_choice=forced, max_tokens=64, temperature=0, stream=True):
        for d in chunk.choices[0].delta.tool_calls or []:
            c = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
            c["id"] = d.id or c["id"]
            c["name"] += (d.function.name or "") if d.function else ""
            c["arguments"] += (d.function.arguments or "") if d.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and list(calls) == [0], (finish, calls)
    assert calls[0]["name"] == "GetWeather" and (calls[0]["id"] or "").startswith("call_"), calls
    assert GetWeather.model_validate_json(calls[0]["arguments"]) == call.function.parsed_arguments, calls

    # The tool's result in a follow-up conversation.
    follow = weather + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'},
    ]
    f = client.chat.completions.create(model=a.model, messages=follow, tools=[tool], max_tokens=8, temperature=0)
    assert f.choices[0].finish_reason in ("stop", "length", "tool_calls"), f

    # Log probabilities, non-stream and stream, and the cap.
    lp = client.chat.completions.create(model=a.model, messages=msgs, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2)
    content = lp.choices[0].logprobs.content
    assert len(content) == lp.usage.completion_tokens and all(len(e.top_logprobs) == 2 for e in content), lp
    streamed = []
    for chunk in client.chat.completions.create(model=a.model, messages=msgs, max_tokens=4, temperature=0, logprobs=True, stream=True):
        if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
            streamed.extend(chunk.choices[0].logprobs.content)
    assert [e.token for e in streamed] == [e.token for e in content], (streamed, content)
    try:
        client.chat.completions.create(model=a.model, messages=msgs, max_tokens=4, logprobs=True, top_logprobs=21)
        raise AssertionError("top_logprobs above the cap was accepted")
    except openai.BadRequestError as e:
        assert "top_logprobs" in str(e), e

    print("openai sdk: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
