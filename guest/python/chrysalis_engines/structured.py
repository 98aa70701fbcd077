"""Structured output, tool calls and log probabilities, shared by every adapter.

What an adapter constrains and how a model's output becomes tool calls is decided here once, so
that llama_cpp and vllm behave the same and the conformance suite can hold both to it.

* ``response_format`` json_object / json_schema: decoding is constrained to :func:`constraint`
  (the adapter turns it into its engine's grammar); the output is the JSON text.
* A forced tool call (``tool_choice`` ``required`` or a named function): decoding is constrained to
  the JSON schema of the call(s) (:func:`forced_call_schema`): ``{"name": <const>, "arguments":
  <the tool's parameters schema>}``, or with ``required`` and parallel calls a non-empty array of
  them. When generation ends at end of sequence the JSON is complete and becomes the calls
  (:func:`calls_from_forced`); cut by ``max_tokens`` it is returned as text with finish_reason
  ``length``, never as a call.
* ``tool_choice`` ``auto``: decoding is free; the model calls a tool by writing
  ``<tool_call>{"name": …, "arguments": {…}}</tool_call>`` (the Hermes / Qwen 2.5 convention), which
  :class:`ToolCallScanner` takes out of the text stream. A block that does not parse, or names an
  undeclared tool, stays text. Arguments are not constrained in this mode.
* Prompts: when the model's chat template handles tools (it mentions ``tools``), messages and tools
  go to it in the Hugging Face form. Otherwise (SmolLM2's template, for one) :func:`render_messages`
  writes the same Hermes convention into plain messages: the tool list in the system message,
  an assistant's calls as ``<tool_call>`` blocks, and a tool result as a user message holding
  ``<tool_response>…</tool_response>``.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Optional

from .contract import Chunk, GenerateRequest, ToolCall

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"

#: :func:`constraint` for ``response_format`` json_object: any JSON object.
JSON_OBJECT = "json_object"


def tool_mode(req: GenerateRequest) -> str:
    """``text`` (no tools, or tool_choice none), ``auto`` or ``forced``."""
    if not req.tools or req.tool_choice == "none":
        return "text"
    if req.tool_choice == "auto":
        return "auto"
    return "forced"


def forced_call_schema(req: GenerateRequest) -> dict:
    """The JSON schema a forced tool call's output must match."""
    choice = req.tool_choice
    if isinstance(choice, dict):
        tools = [t for t in req.tools if t["name"] == choice["function"]]
    else:
        tools = list(req.tools)
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": t["name"]}, "arguments": t["parameters"]},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    one = calls[0] if len(calls) == 1 else {"anyOf": calls}
    if choice == "required" and req.parallel_tool_calls:
        return {"type": "array", "items": one, "minItems": 1}
    return one


def constraint(req: GenerateRequest):
    """What decoding must match: None, :data:`JSON_OBJECT`, or a JSON schema (dict)."""
    if tool_mode(req) == "forced":
        return forced_call_schema(req)
    rf = req.response_format
    if rf is None:
        return None
    if rf["type"] == "json_object":
        return JSON_OBJECT
    return rf["schema"]


def call_id(request_id: str, index: int) -> str:
    """A tool call id, unique per request and call, and reproducible."""
    return "call_" + hashlib.sha256(f"{request_id}/{index}".encode()).hexdigest()[:24]


def _as_call(obj, names: set[str]) -> Optional[tuple[str, str]]:
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    args = obj.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    return obj["name"], json.dumps(args, ensure_ascii=False)


def calls_from_forced(req: GenerateRequest, text: str) -> Optional[list[ToolCall]]:
    """The calls in a complete forced-call output, or None when it is not one."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    items = value if isinstance(value, list) else [value]
    names = {t["name"] for t in req.tools}
    calls = []
    for i, item in enumerate(items):
        c = _as_call(item, names)
        if c is None:
            return None
        calls.append(ToolCall(index=i, id=call_id(req.request_id, i), name=c[0], arguments=c[1]))
    return calls or None


class ToolCallScanner:
    """Takes ``<tool_call>…</tool_call>`` blocks out of a text stream (``tool_choice`` auto).

    ``feed(delta)`` returns the text safe to show now and the calls completed; text that could be
    the start of a block is held back. ``finish(at_end)`` returns what is left: an unclosed block is
    a call only when the generation ended at end of sequence and its JSON is complete.
    """

    def __init__(self, req: GenerateRequest):
        self.req = req
        self.names = {t["name"] for t in req.tools}
        self.buf = ""
        self.inside = False
        self.after_call = False
        self.shown = False
        self.count = 0

    def _call(self, body: str) -> Optional[ToolCall]:
        try:
            c = _as_call(json.loads(body), self.names)
        except json.JSONDecodeError:
            return None
        if c is None:
            return None
        if self.count >= 1 and not self.req.parallel_tool_calls:
            return None
        call = ToolCall(index=self.count, id=call_id(self.req.request_id, self.count), name=c[0], arguments=c[1])
        self.count += 1
        return call

    def _text(self, t: str) -> str:
        # Whitespace before the first text and right after a call is the model's layout, not
        # content.
        if self.after_call or not self.shown:
            t = t.lstrip()
        if t:
            self.after_call = False
            self.shown = True
        return t

    def feed(self, delta: str) -> tuple[str, list[ToolCall]]:
        self.buf += delta
        out, calls = "", []
        while True:
            if self.inside:
                end = self.buf.find(TOOL_CALL_CLOSE)
                if end < 0:
                    return out, calls
                body = self.buf[:end]
                self.buf = self.buf[end + len(TOOL_CALL_CLOSE) :]
                self.inside = False
                call = self._call(body)
                if call is None:
                    out += TOOL_CALL_OPEN + body + TOOL_CALL_CLOSE
                else:
                    calls.append(call)
                    self.after_call = True
                continue
            start = self.buf.find(TOOL_CALL_OPEN)
            if start >= 0:
                before = self.buf[:start]
                out += self._text(before)
                self.buf = self.buf[start + len(TOOL_CALL_OPEN) :]
                self.inside = True
                continue
            keep = 0
            for k in range(min(len(TOOL_CALL_OPEN) - 1, len(self.buf)), 0, -1):
                if self.buf.endswith(TOOL_CALL_OPEN[:k]):
                    keep = k
                    break
            out += self._text(self.buf[: len(self.buf) - keep])
            self.buf = self.buf[len(self.buf) - keep :]
            return out, calls

    def finish(self, at_end: bool) -> tuple[str, list[ToolCall]]:
        rest, self.buf = self.buf, ""
        if self.inside:
            self.inside = False
            call = self._call(rest) if at_end else None
            if call is not None:
                return "", [call]
            return TOOL_CALL_OPEN + rest, []
        return self._text(rest), []

    @property
    def called(self) -> bool:
        return self.count > 0


class Output:
    """Routes an adapter's generated text to chunks by tool mode: plain text, text with
    ``<tool_call>`` blocks taken out (auto), or a forced call's JSON, held until the end. Log
    probabilities wait in ``logprobs`` for the next chunk sent; ``emit`` takes each Chunk.

    ``finish(tail, finish_reason, at_end, …)``: ``at_end`` is true when the generation ended at end
    of sequence (not at a stop string or max_tokens): only then is constrained output complete."""

    def __init__(self, req: GenerateRequest, emit):
        self.req = req
        self.emit = emit
        self.mode = tool_mode(req)
        self.scanner = ToolCallScanner(req) if self.mode == "auto" else None
        self.held: list[str] = []
        self.logprobs: list[dict] = []

    def _send(self, text: str, calls=(), **final) -> None:
        if text or calls or final:
            lps, self.logprobs = tuple(self.logprobs), []
            self.emit(Chunk(text=text, tool_calls=tuple(calls), logprobs=lps, **final))

    def text(self, t: str) -> None:
        if self.mode == "forced":
            self.held.append(t)
        elif self.scanner is not None:
            self._send(*self.scanner.feed(t))
        else:
            self._send(t)

    def finish(self, tail: str, finish: str, at_end: bool, prompt_tokens: int, completion_tokens: int) -> None:
        usage = dict(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        if self.mode == "forced":
            text = "".join(self.held) + tail
            calls = calls_from_forced(self.req, text) if at_end else None
            if calls:
                self._send("", calls, finish_reason="tool_calls", **usage)
            else:
                self._send(text, finish_reason=finish, **usage)
            return
        calls = []
        if self.scanner is not None:
            tail, calls = self.scanner.feed(tail)
            rest, more = self.scanner.finish(at_end)
            tail, calls = tail + rest, calls + more
            if self.scanner.called and finish == "stop":
                finish = "tool_calls"
        self._send(tail, calls, finish_reason=finish, **usage)


def template_handles_tools(template: Optional[str]) -> bool:
    """Whether a chat template renders ``tools`` itself."""
    return bool(template) and "tools" in template


def _hf_tool(t: dict) -> dict:
    f = {"name": t["name"], "parameters": t["parameters"]}
    if t.get("description"):
        f["description"] = t["description"]
    return {"type": "function", "function": f}


def _arguments(s: str):
    try:
        return json.loads(s)
    except json.JSONDecodeError:
        return s


def tools_system_prompt(tools: list[dict]) -> str:
    """The Hermes tool-use instructions with the tool list."""
    listed = "\n".join(json.dumps(_hf_tool(t), ensure_ascii=False) for t in tools)
    return (
        "You are a function calling AI model. You may call one or more functions to assist with the user query. "
        "Don't make assumptions about what values to plug into functions. Here are the available tools: "
        f"<tools>\n{listed}\n</tools>\n"
        "For each function call return a json object with function name and arguments within "
        f"{TOOL_CALL_OPEN}{TOOL_CALL_CLOSE} XML tags:\n"
        f'{TOOL_CALL_OPEN}\n{{"name": <function-name>, "arguments": <args-json-object>}}\n{TOOL_CALL_CLOSE}'
    )


def render_messages(req: GenerateRequest, template_has_tools: bool) -> tuple[list[dict], Optional[list[dict]]]:
    """The messages (and tools, for a template that takes them) to give the chat template."""
    show_tools = bool(req.tools) and req.tool_choice != "none"
    msgs: list[dict] = []
    if template_has_tools:
        for m in req.messages or []:
            d: dict = {"role": m.role, "content": m.content}
            if m.tool_calls:
                d["tool_calls"] = [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": _arguments(c.arguments)}}
                    for c in m.tool_calls
                ]
            if m.tool_call_id is not None:
                d["tool_call_id"] = m.tool_call_id
            msgs.append(d)
        return msgs, ([_hf_tool(t) for t in req.tools] if show_tools else None)
    for m in req.messages or []:
        if m.role == "tool":
            msgs.append({"role": "user", "content": f"<tool_response>\n{m.content}\n</tool_response>"})
        elif m.tool_calls:
            blocks = [
                f'{TOOL_CALL_OPEN}\n{json.dumps({"name": c.name, "arguments": _arguments(c.arguments)}, ensure_ascii=False)}\n{TOOL_CALL_CLOSE}'
                for c in m.tool_calls
            ]
            msgs.append({"role": m.role, "content": "\n".join(([m.content] if m.content else []) + blocks)})
        else:
            msgs.append({"role": m.role, "content": m.content})
    if show_tools:
        preamble = tools_system_prompt(req.tools)
        if msgs and msgs[0]["role"] in ("system", "developer"):
            msgs[0] = {"role": msgs[0]["role"], "content": msgs[0]["content"] + "\n\n" + preamble}
        else:
            msgs.insert(0, {"role": "system", "content": preamble})
    return msgs, None


def token_logprob(token_bytes: bytes, logprob: float, top: list[tuple[bytes, float]]) -> dict:
    """One entry of ``logprobs.content`` (OpenAI's shape)."""

    def entry(b: bytes, lp: float) -> dict:
        lp = float(lp)
        return {"token": b.decode("utf-8", errors="replace"), "logprob": lp if math.isfinite(lp) else -9999.0, "bytes": list(b)}

    d = entry(token_bytes, logprob)
    d["top_logprobs"] = [entry(b, lp) for b, lp in top]
    return d
