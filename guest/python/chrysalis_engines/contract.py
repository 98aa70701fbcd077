"""The adapter contract: what the runtime asks of a token generator.

Lifecycle: ``create(options) -> Adapter`` (module-level factory), then ``await adapter.start()``
once, then any number of concurrent ``adapter.generate(request)`` calls, each an async iterator
of :class:`Chunk`.

Rules every adapter follows (the conformance suite checks them):

* Text arrives as deltas, in order. The final chunk, and only it, has ``finish_reason``
  (``"stop"``: end of sequence or a stop string; ``"length"``: ``max_tokens`` reached) and the
  usage ``prompt_tokens`` / ``completion_tokens`` (tokens after the chat template; tokens
  generated, the end-of-sequence token not counted).
* Never more than ``max_tokens`` completion tokens. A stop string ends generation; neither it nor
  anything after it is returned.
* ``temperature == 0`` is greedy (deterministic).
* Cancellation: when the consuming task is cancelled or the iterator is closed, the adapter stops
  generating and frees what the request held *before* the iterator finishes closing. The runtime
  also calls ``await adapter.cancel(request_id)``; it must be safe to call for unknown or finished
  requests.
* Errors are raised as exceptions from the iterator; the runtime turns them into HTTP 500 with
  the exception type and message.
"""

from __future__ import annotations

import abc
import json
from dataclasses import dataclass, field
from typing import AsyncIterator, Optional


@dataclass(frozen=True)
class Message:
    """One chat message."""

    role: str
    content: str


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

    @classmethod
    def from_json(cls, text: str) -> "GenerateRequest":
        d = json.loads(text)
        msgs = d.get("messages")
        return cls(
            request_id=d["request_id"],
            model=d["model"],
            max_tokens=int(d["max_tokens"]),
            messages=[Message(m["role"], m["content"]) for m in msgs] if msgs is not None else None,
            prompt=d.get("prompt"),
            temperature=d.get("temperature"),
            top_p=d.get("top_p"),
            stop=list(d.get("stop") or []),
            seed=d.get("seed"),
        )


@dataclass(frozen=True)
class Chunk:
    """A piece of output. The final chunk carries finish_reason and usage."""

    text: str = ""
    finish_reason: Optional[str] = None
    prompt_tokens: Optional[int] = None
    completion_tokens: Optional[int] = None


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
