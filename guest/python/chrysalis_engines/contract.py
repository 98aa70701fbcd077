"""The adapter contract: what the runtime asks of a token generator.

Lifecycle: ``create(options) -> Adapter`` (module-level factory), then ``await adapter.start()``
once, then any number of concurrent ``adapter.generate(request)`` calls, each an async iterator
of :class:`Chunk`.

Rules every adapter follows (the conformance suite checks them):

* Text arrives as deltas, in order. The final chunk, and only it, has ``finish_reason``
  (``"stop"``: end of sequence or a stop string; ``"length"``: ``max_tokens`` reached;
  ``"tool_calls"``: the generation ended at end of sequence after calling tools) and the
  usage ``prompt_tokens`` / ``completion_tokens`` (tokens after the chat template; tokens
  generated, the end-of-sequence token not counted).
* Never more than ``max_tokens`` completion tokens. A stop string ends generation; neither it nor
  anything after it is returned.
* ``temperature == 0`` is greedy (deterministic).
* Cancellation: when the consuming task is cancelled or the iterator is closed, the adapter stops
  generating and frees what the request held *before* the iterator finishes closing. The runtime
  also calls ``await adapter.cancel(request_id)``; it must be safe to call for unknown or finished
  requests.
* ``response_format`` and a forced ``tool_choice`` are enforced by constrained decoding (never by
  retrying), ``tool_choice`` auto by parsing; :mod:`chrysalis_engines.structured` defines both, and
  every adapter uses it. Output cut by ``max_tokens`` is ``"length"`` even when it is unfinished
  JSON; a forced call cut that way comes back as text, never as a call.
* Tool calls arrive complete (id, name, JSON arguments), each in ``Chunk.tool_calls``, numbered
  from 0 in ``index``.
* With ``logprobs`` set (the number of alternatives, 0 to 20), every generated token's entry
  (``structured.token_logprob``: token, logprob, bytes, top_logprobs) is sent, in order, with the
  chunk that carries its text or, when its text is held back, with a later one.
* Errors are raised as exceptions from the iterator; the runtime turns them into HTTP 500 with
  the exception type and message.
"""

from __future__ import annotations

import abc
import json
from dataclasses import dataclass, field
from typing import AsyncIterator, Optional


@dataclass(frozen=True)
class ToolCall:
    """A function call: in a response (``Chunk.tool_calls``) or in an assistant message."""

    index: int
    id: str
    name: str
    arguments: str  # a JSON text

    def to_json(self) -> dict:
        return {"index": self.index, "id": self.id, "name": self.name, "arguments": self.arguments}


@dataclass(frozen=True)
class Message:
    """One chat message. ``tool``-role messages answer ``tool_call_id``."""

    role: str
    content: str
    tool_calls: tuple = ()
    tool_call_id: Optional[str] = None


@dataclass(frozen=True)
class GenerateRequest:
    """A validated request (the runtime has already applied its limits)."""

    request_id: str
    model: str
    max_tokens: int
    messages: Optional[list[Message]] = None
    prompt: Optional[str] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    stop: list[str] = field(default_factory=list)
    seed: Optional[int] = None
    #: None, {"type": "json_object"} or {"type": "json_schema", "name": str, "schema": dict}.
    response_format: Optional[dict] = None
    #: Functions the model may call: {"name", "description" (optional), "parameters" (JSON schema)}.
    tools: list[dict] = field(default_factory=list)
    #: "none", "auto", "required" or {"function": name}.
    tool_choice: object = "none"
    parallel_tool_calls: bool = True
    #: None, or how many alternatives per token (0 to 20) with each token's log probability.
    logprobs: Optional[int] = None

    @classmethod
    def from_json(cls, text: str) -> "GenerateRequest":
        d = json.loads(text)
        msgs = d.get("messages")
        return cls(
            request_id=d["request_id"],
            model=d["model"],
            max_tokens=int(d["max_tokens"]),
            messages=[
                Message(
                    m["role"],
                    m["content"],
                    tuple(ToolCall(c.get("index", i), c["id"], c["name"], c["arguments"]) for i, c in enumerate(m.get("tool_calls") or [])),
                    m.get("tool_call_id"),
                )
                for m in msgs
            ]
            if msgs is not None
            else None,
            prompt=d.get("prompt"),
            temperature=d.get("temperature"),
            top_p=d.get("top_p"),
            stop=list(d.get("stop") or []),
            seed=d.get("seed"),
            response_format=d.get("response_format"),
            tools=list(d.get("tools") or []),
            tool_choice=d.get("tool_choice") or "none",
            parallel_tool_calls=bool(d.get("parallel_tool_calls", True)),
            logprobs=d.get("logprobs"),
        )


@dataclass(frozen=True)
class Chunk:
    """A piece of output. The final chunk carries finish_reason and usage."""

    text: str = ""
    finish_reason: Optional[str] = None
    prompt_tokens: Optional[int] = None
    completion_tokens: Optional[int] = None
    tool_calls: tuple = ()  # of ToolCall
    logprobs: tuple = ()  # of structured.token_logprob dicts

    def extra_json(self) -> Optional[str]:
        """What the runtime's sink takes besides text: None, or a JSON object."""
        if not self.tool_calls and not self.logprobs:
            return None
        return json.dumps({"tool_calls": [c.to_json() for c in self.tool_calls], "logprobs": list(self.logprobs)})


class Adapter(abc.ABC):
    """Base class of every engine adapter."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Loads the model. Called once, on the runtime's engine event loop."""

    @abc.abstractmethod
    def models(self) -> list[str]:
        """The model ids served (the runtime checks that its configured id is among them)."""

    @abc.abstractmethod
    def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        """Generates; see the module documentation for the rules."""

    @abc.abstractmethod
    async def cancel(self, request_id: str) -> None:
        """Stops the request if it is still running; a no-op otherwise."""

    async def close(self) -> None:
        """Releases the model. Optional."""


class StopMatcher:
    """Holds back text that could be the start of a stop string.

    ``feed(delta)`` returns the text safe to emit now and whether a stop string was found (in which
    case the returned text ends right before it and generation must end).
    """

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, delta: str) -> tuple[str, bool]:
        if not self.stops:
            return delta, False
        buf = self.pending + delta
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.pending = ""
            return buf[: min(hits)], True
        keep = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), 0, -1):
                if buf.endswith(s[:k]):
                    keep = max(keep, k)
                    break
        self.pending = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out
