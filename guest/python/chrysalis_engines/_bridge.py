"""Glue between the Rust runtime and an adapter. Runs on the runtime's engine event loop.

``drive`` is the one coroutine per request: it iterates the adapter and hands chunks to a sink
implemented in Rust (``send`` never blocks; when the runtime's bounded buffer is full it returns
FULL and the chunk is delivered from a worker thread with ``send_blocking``, so the loop keeps
serving other requests). Every exception is reported through the sink; none escapes to the loop.
"""

from __future__ import annotations

import asyncio
import importlib
import json

from .contract import Adapter, GenerateRequest

SENT, FULL, CLOSED = 0, 1, 2


async def create(module_name: str, options_json: str) -> Adapter:
    """Imports ``module_name``, calls its ``create(options)`` and starts the adapter."""
    module = importlib.import_module(module_name)
    adapter = module.create(json.loads(options_json))
    if not isinstance(adapter, Adapter):
        raise TypeError(f"{module_name}.create() returned {type(adapter).__name__}, not an Adapter")
    await adapter.start()
    return adapter


async def models(adapter: Adapter) -> list[str]:
    return [str(m) for m in adapter.models()]


async def _deliver(sink, chunk) -> int:
    args = (chunk.text, chunk.finish_reason, chunk.prompt_tokens, chunk.completion_tokens, chunk.extra_json())
    status = sink.send(*args)
    if status == FULL:
        status = await asyncio.to_thread(sink.send_blocking, *args)
    return status


async def _report(sink, message: str) -> None:
    if sink.error(message) == FULL:
        await asyncio.to_thread(sink.error_blocking, message)


async def drive(adapter: Adapter, request_json: str, sink) -> None:
    """Runs one generation into ``sink``; always closes it last."""
    request = None
    try:
        request = GenerateRequest.from_json(request_json)
        stream = adapter.generate(request)
        try:
            async for chunk in stream:
                if await _deliver(sink, chunk) == CLOSED:
                    await adapter.cancel(request.request_id)
                    break
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
    except asyncio.CancelledError:
        if request is not None:
            try:
                await adapter.cancel(request.request_id)
            except Exception:  # noqa: BLE001 - cancellation must complete
                pass
        raise
    except BaseException as e:  # noqa: BLE001 - SystemExit and friends must not stop the loop
        await _report(sink, f"{type(e).__name__}: {e}")
    finally:
        sink.close()
