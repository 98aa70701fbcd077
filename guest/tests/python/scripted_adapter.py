"""A model-free adapter for tests of the bridge: echoes words with a delay, and fails on demand.

* a prompt containing ``boom-now`` raises before the first chunk;
* ``boom-later`` raises after two chunks;
* otherwise yields ``w0 w1 …`` up to max_tokens, ``delay_s`` apart, and honours cancellation.
"""

import asyncio

from chrysalis_engines.contract import Adapter, Chunk

STATE = {"cancelled": 0}


class ScriptedAdapter(Adapter):
    def __init__(self, options):
        self.model_id = options.get("model_id", "smollm2-135m-instruct")
        self.delay = float(options.get("delay_s", 0.01))

    async def start(self):
        pass

    def models(self):
        return [self.model_id]

    async def cancel(self, request_id):
        STATE["cancelled"] += 1

    async def generate(self, req):
        text = " ".join(m.content for m in req.messages) if req.messages else (req.prompt or "")
        if "boom-now" in text:
            raise RuntimeError("boom requested before any output")
        for i in range(req.max_tokens):
            if "boom-later" in text and i == 2:
                raise ValueError("boom requested mid-stream")
            await asyncio.sleep(self.delay)
            yield Chunk(text=("" if i == 0 else " ") + f"w{i}")
        yield Chunk(finish_reason="length", prompt_tokens=len(text.split()), completion_tokens=req.max_tokens)


def create(options):
    return ScriptedAdapter(options)
