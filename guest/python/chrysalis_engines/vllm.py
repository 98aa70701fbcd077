"""vLLM adapter: GPU serving with vLLM's asynchronous engine (``AsyncLLM``, v1 engine API).

Options (``[engine.options]``):

* ``model_path`` (required): the model inside the measured model pack: a Hugging Face model
  directory, or a GGUF file (vLLM then reads the model's configuration and tokenizer from the
  file's metadata). The image builder writes this option, as for every adapter.
* ``model_id``: the id served (default: the directory or file name, without ``.gguf``).
* ``engine_args``: a table passed to ``vllm.engine.arg_utils.AsyncEngineArgs`` as keyword
  arguments (``tensor_parallel_size``, ``gpu_memory_utilization``, ``max_model_len``, ``dtype``,
  ``enforce_eager``, …). ``model`` is set from ``model_path``; the engine never downloads:
  ``HF_HUB_OFFLINE=1`` is set before vLLM is imported. Automatic prefix caching is always off
  (``enable_prefix_caching=False``; asking for it is refused): see docs/engines.md.

Chat requests are rendered with the tokenizer's chat template
(``apply_chat_template(..., add_generation_prompt=True)``) and sent as token ids, so usage counts
exactly what the model saw; tools and tool messages as :mod:`.structured` describes (the template's
own tool rendering when it has one, e.g. Qwen 2.5). ``response_format`` and forced tool calls use
vLLM's structured outputs (``StructuredOutputsParams``; ``GuidedDecodingParams`` on releases before
0.10.2) with the JSON schema from :func:`structured.constraint`. Log probabilities come from
``SamplingParams.logprobs`` (vLLM returns the sampled token and the top k; the alternatives are
those ranked 1..k). Outputs are requested as deltas (``RequestOutputKind.DELTA``).
Cancelling the consuming task closes vLLM's ``generate`` iterator, which aborts the request in
the engine; ``cancel`` aborts it explicitly as well.

Run the conformance suite on a GPU host with one command (see docs/engines.md):

    python -m chrysalis_engines.conformance --adapter vllm --option model_path=/models/Qwen2.5-0.5B-Instruct
"""

from __future__ import annotations

import inspect
import os
from typing import AsyncIterator

from . import structured
from .contract import Adapter, Chunk, GenerateRequest

KNOWN_OPTIONS = {"model_path", "model_id", "engine_args"}


class VllmAdapter(Adapter):
    def __init__(self, options: dict):
        unknown = sorted(set(options) - KNOWN_OPTIONS)
        if unknown:
            raise ValueError(f"vllm: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(KNOWN_OPTIONS))}")
        if "model_path" not in options:
            raise ValueError("vllm: option model_path is required")
        self.model = str(options["model_path"])
        base = os.path.basename(self.model.rstrip("/"))
        self.model_id = str(options.get("model_id") or (base[:-5] if base.endswith(".gguf") else base))
        self.engine_args = dict(options.get("engine_args") or {})
        if "model" in self.engine_args:
            raise ValueError("vllm: set the model with the `model_path` option, not engine_args.model")
        # Prefix caching stays off: a prompt sharing a prefix with another tenant's cached one
        # finishes its prefill sooner, so time to first token would reveal other clients' prompts.
        if self.engine_args.get("enable_prefix_caching"):
            raise ValueError("vllm: enable_prefix_caching would let one client time another's prompts; it stays off")
        self.engine = None
        self.tokenizer = None

    async def start(self) -> None:
        # The model comes from the measured model pack; never from a hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        # No usage reports leave the guest.
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        os.environ.setdefault("DO_NOT_TRACK", "1")
        # In the image HOME (/root) is on the read-only rootfs: caches go to the /tmp tmpfs.
        cache = os.path.join(os.environ.get("TMPDIR", "/tmp"), "chrysalis-vllm")
        os.environ.setdefault("XDG_CACHE_HOME", os.path.join(cache, "cache"))
        os.environ.setdefault("XDG_CONFIG_HOME", os.path.join(cache, "config"))
        os.environ.setdefault("VLLM_CACHE_ROOT", os.path.join(cache, "vllm"))
        os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(cache, "triton"))
        os.environ.setdefault("HF_HOME", os.path.join(cache, "huggingface"))
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(model=self.model, **{**self.engine_args, "enable_prefix_caching": False})
        self.engine = AsyncLLM.from_engine_args(args)
        tokenizer = self.engine.get_tokenizer()
        # Older releases made get_tokenizer a coroutine.
        if inspect.isawaitable(tokenizer):
            tokenizer = await tokenizer
        self.tokenizer = tokenizer

    def models(self) -> list[str]:
        return [self.model_id]

    def _prompt_ids(self, req: GenerateRequest) -> list[int]:
        if req.messages is not None:
            has_tools = structured.template_handles_tools(getattr(self.tokenizer, "chat_template", None))
            messages, tools = structured.render_messages(req, has_tools)
            kwargs = {"tools": tools} if tools else {}
            rendered = self.tokenizer.apply_chat_template(
                messages,
                tokenize=False,
                add_generation_prompt=True,
                **kwargs,
            )
            # The template writes any special tokens itself.
            return list(self.tokenizer.encode(rendered, add_special_tokens=False))
        return list(self.tokenizer.encode(req.prompt or "", add_special_tokens=True))

    @staticmethod
    def _structured_params(req: GenerateRequest) -> dict:
        """SamplingParams keyword arguments that constrain decoding, for this vLLM release."""
        c = structured.constraint(req)
        if c is None:
            return {}
        spec = {"json_object": True} if c == structured.JSON_OBJECT else {"json": c}
        try:
            from vllm.sampling_params import StructuredOutputsParams

            return {"structured_outputs": StructuredOutputsParams(**spec)}
        except ImportError:
            from vllm.sampling_params import GuidedDecodingParams

            return {"guided_decoding": GuidedDecodingParams(**spec)}

    def _token_bytes(self, token_id: int, lp) -> bytes:
        text = lp.decoded_token if lp.decoded_token is not None else self.tokenizer.decode([token_id])
        return text.encode("utf-8")

    def _logprobs(self, token_ids, entries, k: int) -> list[dict]:
        """Entries for the new tokens: vLLM gives, per position, the sampled token and the top k
        (ranked from 1) as ``{token_id: Logprob(logprob, rank, decoded_token)}``."""
        out = []
        for tid, pos in zip(token_ids, entries or []):
            chosen = pos[tid]
            top = sorted(((t, lp) for t, lp in pos.items() if lp.rank is not None and lp.rank <= k), key=lambda e: e[1].rank)
            alternatives = [(self._token_bytes(t, lp), lp.logprob) for t, lp in top[:k]]
            out.append(structured.token_logprob(self._token_bytes(tid, chosen), chosen.logprob, alternatives))
        return out

    async def generate(self, req: GenerateRequest) -> AsyncIterator[Chunk]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        prompt_ids = self._prompt_ids(req)
        params = SamplingParams(
            max_tokens=req.max_tokens,
            temperature=1.0 if req.temperature is None else float(req.temperature),
            top_p=1.0 if req.top_p is None else float(req.top_p),
            stop=list(req.stop) or None,
            seed=req.seed,
            output_kind=RequestOutputKind.DELTA,
            logprobs=req.logprobs,
            **self._structured_params(req),
        )
        # Output routes text, tool calls and log probabilities into chunks (see structured.py).
        chunks: list[Chunk] = []
        out = structured.Output(req, chunks.append)
        completion_tokens = 0
        async for res in self.engine.generate({"prompt_token_ids": prompt_ids}, params, req.request_id):
            o = res.outputs[0]
            completion_tokens += len(o.token_ids)
            if req.logprobs is not None:
                out.logprobs.extend(self._logprobs(o.token_ids, o.logprobs, req.logprobs))
            if res.finished:
                if o.finish_reason not in ("stop", "length"):
                    raise RuntimeError(f"vllm: request ended with finish_reason {o.finish_reason!r}")
                # A stop string is named in stop_reason; end of sequence leaves it None (or a token id).
                at_end = o.finish_reason == "stop" and not isinstance(o.stop_reason, str)
                out.finish(o.text, o.finish_reason, at_end, len(res.prompt_token_ids or prompt_ids), completion_tokens)
            elif o.text:
                out.text(o.text)
            for c in chunks:
                yield c
                if c.finish_reason is not None:
                    return
            chunks.clear()
        raise RuntimeError("vllm: the engine ended the request without finishing it")

    async def cancel(self, request_id: str) -> None:
        if self.engine is not None:
            await self.engine.abort(request_id)

    async def close(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()


def create(options: dict) -> VllmAdapter:
    return VllmAdapter(options)
