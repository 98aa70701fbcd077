"""structured.py without a model: tool-call scanning, forced-call schemas, prompt rendering."""

import json

from chrysalis_engines import structured
from chrysalis_engines.contract import Chunk, GenerateRequest, Message, ToolCall

TOOL = {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
OTHER = {"name": "get_time", "description": "Time.", "parameters": {"type": "object", "properties": {}}}


def req(**kw) -> GenerateRequest:
    base = dict(request_id="r1", model="m", max_tokens=8, messages=[Message("user", "hi")], tools=[TOOL, OTHER], tool_choice="auto")
    base.update(kw)
    return GenerateRequest(**base)


def scan(r, pieces, at_end=True):
    s = structured.ToolCallScanner(r)
    text, calls = "", []
    for p in pieces:
        t, c = s.feed(p)
        text, calls = text + t, calls + c
    t, c = s.finish(at_end)
    return text + t, calls + c


def test_scanner_takes_calls_out_of_text_split_anywhere():
    body = 'Sure. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
    for cut in range(1, len(body)):
        text, calls = scan(req(), [body[:cut], body[cut:]])
        assert text == "Sure. ", (cut, text)
        assert [(c.index, c.name, json.loads(c.arguments)) for c in calls] == [(0, "get_weather", {"city": "Paris"})]
        assert calls[0].id == structured.call_id("r1", 0)


def test_scanner_holds_back_only_what_could_open_a_call():
    s = structured.ToolCallScanner(req())
    assert s.feed("a <tool") == ("a ", [])
    assert s.feed("s are nice") == ("<tools are nice", [])


def test_bad_or_unknown_or_extra_calls_stay_text():
    bad = '<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>'
    assert scan(req(), [bad]) == (bad, [])
    unknown = '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>'
    assert scan(req(), [unknown]) == (unknown, [])
    two = '<tool_call>{"name": "get_time", "arguments": {}}</tool_call><tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    text, calls = scan(req(parallel_tool_calls=False), [two])
    assert len(calls) == 1 and text.startswith("<tool_call>")
    text, calls = scan(req(), [two])
    assert [c.index for c in calls] == [0, 1] and text == ""


def test_an_unclosed_call_counts_only_at_end_of_sequence():
    open_call = '<tool_call>{"name": "get_time", "arguments": {}}'
    assert len(scan(req(), [open_call], at_end=True)[1]) == 1
    assert scan(req(), [open_call], at_end=False) == (open_call, [])


def test_forced_schemas():
    named = structured.forced_call_schema(req(tool_choice={"function": "get_time"}))
    assert named["properties"]["name"] == {"const": "get_time"}
    required = structured.forced_call_schema(req(tool_choice="required"))
    assert required["type"] == "array" and required["minItems"] == 1 and len(required["items"]["anyOf"]) == 2
    single = structured.forced_call_schema(req(tool_choice="required", parallel_tool_calls=False))
    assert "anyOf" in single
    assert structured.constraint(req(tool_choice="none", response_format={"type": "json_object"})) == structured.JSON_OBJECT
    assert structured.constraint(req(tool_choice="auto")) is None


def test_calls_from_forced_output():
    r = req(tool_choice="required")
    calls = structured.calls_from_forced(r, '[{"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": {"city": "X"}}]')
    assert [(c.index, c.name) for c in calls] == [(0, "get_time"), (1, "get_weather")]
    assert structured.calls_from_forced(r, '[{"name": "get_time", "arguments": {') is None


def test_output_routes_forced_calls_and_keeps_logprobs_in_order():
    sent = []
    out = structured.Output(req(tool_choice={"function": "get_time"}), sent.append)
    for piece in ['{"name": ', '"get_time", "arguments": {}}']:
        out.logprobs.append({"token": piece})
        out.text(piece)
    assert sent == []
    out.finish("", "stop", True, 5, 2)
    [final] = sent
    assert final.finish_reason == "tool_calls" and final.text == "" and [c.name for c in final.tool_calls] == ["get_time"]
    assert [e["token"] for e in final.logprobs] == ['{"name": ', '"get_time", "arguments": {}}']
    sent.clear()
    out = structured.Output(req(tool_choice="required"), sent.append)
    out.text('[{"name": ')
    out.finish("", "length", False, 5, 2)
    assert sent[-1].finish_reason == "length" and sent[-1].text == '[{"name": ' and not sent[-1].tool_calls


def test_rendering_without_a_tool_template_uses_the_hermes_convention():
    call = ToolCall(0, "call_1", "get_weather", '{"city": "Paris"}')
    r = req(messages=[Message("system", "Be brief."), Message("user", "Weather?"), Message("assistant", "", (call,)), Message("tool", "21C", (), "call_1")])
    msgs, tools = structured.render_messages(r, template_has_tools=False)
    assert tools is None
    assert msgs[0]["role"] == "system" and msgs[0]["content"].startswith("Be brief.") and '"get_weather"' in msgs[0]["content"]
    assert msgs[2] == {"role": "assistant", "content": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'}
    assert msgs[3] == {"role": "user", "content": "<tool_response>\n21C\n</tool_response>"}
    msgs, tools = structured.render_messages(r, template_has_tools=True)
    assert [t["function"]["name"] for t in tools] == ["get_weather", "get_time"]
    assert msgs[2]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"} and msgs[3]["tool_call_id"] == "call_1"
    msgs, _ = structured.render_messages(req(tool_choice="none"), template_has_tools=False)
    assert msgs == [{"role": "user", "content": "hi"}]


def test_chunk_extra_json_is_what_the_runtime_reads():
    assert Chunk(text="x").extra_json() is None
    c = Chunk(tool_calls=(ToolCall(0, "call_1", "f", "{}"),), logprobs=(structured.token_logprob(b"a", -0.5, [(b"a", -0.5)]),))
    assert json.loads(c.extra_json()) == {
        "tool_calls": [{"index": 0, "id": "call_1", "name": "f", "arguments": "{}"}],
        "logprobs": [{"token": "a", "logprob": -0.5, "bytes": [97], "top_logprobs": [{"token": "a", "logprob": -0.5, "bytes": [97]}]}],
    }


def test_request_from_the_runtimes_json():
    r = GenerateRequest.from_json(
        json.dumps(
            {
                "request_id": "r",
                "model": "m",
                "max_tokens": 4,
                "messages": [{"role": "assistant", "content": "", "tool_calls": [{"index": 0, "id": "c", "name": "f", "arguments": "{}"}]}, {"role": "tool", "content": "ok", "tool_call_id": "c"}],
                "tools": [TOOL],
                "tool_choice": {"function": "get_weather"},
                "parallel_tool_calls": False,
                "logprobs": 2,
                "response_format": None,
            }
        )
    )
    assert r.messages[0].tool_calls[0].name == "f" and r.messages[1].tool_call_id == "c"
    assert r.tool_choice == {"function": "get_weather"} and r.logprobs == 2 and not r.parallel_tool_calls
