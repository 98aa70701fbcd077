"""llama.cpp adapter (llama-cpp-python): GGUF models on CPUs, and in CI.

Options (``[engine.options]``):

* ``model_path`` (required): the GGUF file.
* ``model_id``: the id served (default: the file name without ``.gguf``).
* ``n_ctx`` (2048): context length; prompt plus output must fit.
* ``n_threads``: CPU threads per instance, for the prompt and for each generated token (default:
  the CPUs this process may run on, shared between the instances). The guest VM exists to run the
  engine, so it gets every vCPU; llama-cpp-python's own default (half the cores for generation)
  left one of the sim VM's two vCPUs idle and made each token 1.9x slower under TCG (docs/e2e.md).
* ``n_batch`` (512): prompt processing batch.
* ``instances`` (1): model contexts, i.e. generations that run at once; more wait for one.

Chat requests are rendered with the model's own chat template (GGUF metadata
``tokenizer.chat_template``); tools and tool messages as :mod:`.structured` describes (SmolLM2's
template does not mention tools: they are written into the messages in the Hermes convention).
``response_format`` and forced tool calls are constrained with a llama.cpp grammar converted from
the JSON schema (``llama_cpp.llama_grammar.json_schema_to_gbnf``; ``json_object`` uses llama.cpp's
JSON grammar). Log probabilities are the log-softmax of the model's logits for each generated
token (before temperature and grammar). Temperature 0 is greedy. Each generation runs token by token in a
worker thread and checks for cancellation between tokens; its context goes back to the pool only
when that thread has finished.
"""

from __future__ import annotations

import asyncio
import codecs
import concurrent.futures
import json
import os
import threading
from typing import AsyncIterator

from . import structured
from .contract import Adapter, Chunk, GenerateRequest, StopMatcher

KNOWN_OPTIONS = {"model_path", "model_id", "n_ctx", "n_threads", "n_batch", "instances"}


def default_threads(instances: int) -> int:
    """The CPUs this process may run on, split between ``instances`` contexts (at least one each)."""
    return max(1, len(os.sched_getaffinity(0)) // instances)


class LlamaCppAdapter(Adapter):
    def __init__(self, options: dict):
        unknown = sorted(set(options) - KNOWN_OPTIONS)
        if unknown:
            raise ValueError(f"llama_cpp: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(KNOWN_OPTIONS))}")
        if "model_path" not in options:
            raise ValueError("llama_cpp: option model_path is required")
        self.model_path = str(options["model_path"])
        base = os.path.basename(self.model_path)
        self.model_id = str(options.get("model_id") or (base[:-5] if base.endswith(".gguf") else base))
        self.n_ctx = int(options.get("n_ctx", 2048))
        self.n_batch = int(options.get("n_batch", 512))
        self.instances = int(options.get("instances", 1))
        if self.instances < 1:
            raise ValueError("llama_cpp: instances must be at least 1")
        self.n_threads = int(options["n_threads"]) if "n_threads" in options else default_threads(self.instances)
        if self.n_threads < 1:
            raise ValueError(f"llama_cpp: n_threads must be at least 1 (got {self.n_threads})")
        self._pool: asyncio.Queue | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=self.instances, thread_name_prefix="llama")
        self._running: dict[str, threading.Event] = {}
        self._formatter = None
        self._template_has_tools = False

    def _load(self):
        import llama_cpp

        if not os.path.isfile(self.model_path):
            raise FileNotFoundError(f"llama_cpp: model_path {self.model_path} does not exist")
        return llama_cpp.Llama(
            model_path=self.model_path,
            n_ctx=self.n_ctx,
            n_batch=self.n_batch,
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads,
            verbose=False,
        )

    async def start(self) -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self._pool = asyncio.Queue()
        loop = asyncio.get_running_loop()
        first = None
        for _ in range(self.instances):
            llm = await loop.run_in_executor(self._executor, self._load)
            first = first or llm
            self._pool.put_nowait(llm)
        template = first.metadata.get("tokenizer.chat_template")
        self._template_has_tools = structured.template_handles_tools(template)
        if template:
            def token_text(tid: int) -> str:
                return first._model.token_get_text(tid) if tid != -1 else ""

            self._formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=token_text(first.token_eos()),
                bos_token=token_text(first.token_bos()),
            )

    def models(self) -> list[str]:
        return [self.model_id]

    async def cancel(self, request_id: str) -> None:
        ev = self._running.get(request_id)
        if ev is not None:
            ev.set()

    async def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _prompt_tokens(self, llm, req: GenerateRequest) -> list[int]:
        if req.messages is not None:
            if self._formatter is None:
                raise ValueError(f"llama_cpp: {self.model_path} has no chat template; use /v1/completions")
            messages, tools = structured.render_messages(req, self._template_has_tools)
            rendered = self._formatter(messages=messages, tools=tools)
            # The template writes any special tokens itself.
            return llm.tokenize(rendered.prompt.encode("utf-8"), add_bos=False, special=True)
        return llm.tokenize((req.prompt or "").encode("utf-8"), add_bos=True, special=True)

    @staticmethod
    def _grammar(llm, req: GenerateRequest):
        """The llama.cpp grammar that decoding must follow, or None."""
        import llama_cpp
        from llama_cpp import llama_grammar

        c = structured.constraint(req)
        if c is None:
            return None
        if c == structured.JSON_OBJECT:
            gbnf = llama_grammar.JSON_GBNF
        else:
            try:
                gbnf = llama_grammar.json_schema_to_gbnf(json.dumps(c))
            except Exception as e:  # noqa: BLE001 - the converter raises many kinds
                raise ValueError(f"llama_cpp: this JSON schema cannot be turned into a grammar: {e}") from e
        # llama.cpp returns no sampler for a grammar it cannot parse; llama-cpp-python would add
        # that null to the sampler chain, so check first.
        probe = llama_cpp.llama_sampler_init_grammar(llm._model.vocab, gbnf.encode("utf-8"), b"root")
        if not probe:
            raise ValueError("llama_cpp: the grammar made from this JSON schema does not parse")
        llama_cpp.llama_sampler_free(probe)
        return llama_grammar.LlamaGrammar.from_string(gbnf)

    @staticmethod
    def _logprob(llm, token: int, k: int) -> dict:
        """The log probability of ``token`` and the ``k`` likeliest at its position, from the logits
        of the last evaluation (the one that sampled it)."""
        import llama_cpp
        import numpy as np

        n_vocab = llm.n_vocab()
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(n_vocab,)).astype(np.float64)
        m = logits.max()
        lps = logits - (m + np.log(np.exp(logits - m).sum()))
        top = []
        if k > 0:
            ids = np.argpartition(-lps, k - 1)[:k]
            ids = ids[np.argsort(-lps[ids], kind="stable")]
            top = [(llm.detokenize([int(i)]), float(lps[i])) for i in ids]
        return structured.token_logprob(llm.detokenize([token]), float(lps[token]), top)

    def _run(self, llm, req: GenerateRequest, stop: threading.Event, emit) -> None:
        """Worker thread: generates and emits Chunks (or an exception) through ``emit``."""
        import llama_cpp

        try:
            prompt = self._prompt_tokens(llm, req)
            room = self.n_ctx - len(prompt)
            if room <= 0:
                raise ValueError(f"llama_cpp: the prompt has {len(prompt)} tokens; the context holds {self.n_ctx}")
            limit = min(req.max_tokens, room)
            if req.seed is not None:
                llm.set_seed(int(req.seed))
            temperature = 1.0 if req.temperature is None else float(req.temperature)
            top_p = 1.0 if req.top_p is None else float(req.top_p)
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            matcher = StopMatcher(req.stop)
            out = structured.Output(req, emit)
            vocab = llm._model.vocab
            count = 0
            finish = "length"
            hit_stop = False
            grammar = self._grammar(llm, req)
            # Evaluate the whole prompt every time: reusing a cached prefix changes the numerics
            # (one-token versus batched evaluation) and with them greedy output.
            llm.reset()
            gen = llm.generate(prompt, temp=temperature, top_p=top_p, top_k=0, min_p=0.0, repeat_penalty=1.0, grammar=grammar)
            try:
                for token in gen:
                    if stop.is_set():
                        return
                    if llama_cpp.llama_vocab_is_eog(vocab, token):
                        finish = "stop"
                        break
                    count += 1
                    if req.logprobs is not None:
                        out.logprobs.append(self._logprob(llm, token, req.logprobs))
                    text, hit = matcher.feed(decoder.decode(llm.detokenize([token])))
                    out.text(text)
                    if hit:
                        finish, hit_stop = "stop", True
                        break
                    if count >= limit:
                        break
            finally:
                gen.close()
            tail = ""
            if not hit_stop:
                tail, hit_stop = matcher.feed(decoder.decode(b"", final=True))
                if hit_stop:
                    finish = "stop"
                else:
                    tail += matcher.flush()
            # End of sequence (not a stop string) is where constrained output is complete.
            out.finish(tail, finish, finish == "stop" and not hit_stop, len(prompt), count)
        except BaseException as e:  # noqa: BLE001 - reported to the consumer
            emit(e)

    async def generate(self, req: GenerateRequest) -> AsyncIterator[Chunk]:
        assert self._pool is not None, "start() was not awaited"
        llm = await self._pool.get()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        self._running[req.request_id] = stop

        def emit(item) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        worker = loop.run_in_executor(self._executor, self._run, llm, req, stop, emit)
        # The context returns to the pool only when its thread is done with it.
        worker.add_done_callback(lambda _f: self._pool.put_nowait(llm))
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            stop.set()
            self._running.pop(req.request_id, None)
            try:
                await asyncio.shield(worker)
            except asyncio.CancelledError:
                pass


def create(options: dict) -> LlamaCppAdapter:
    return LlamaCppAdapter(options)
