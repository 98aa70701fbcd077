"""Baseline for benches/chain.rs: llama-cpp-python called directly, streaming.

Prints one JSON line per run: {"ttft_ms", "total_ms", "tokens"}. Same prompt, greedy, same
max_tokens as the chain, and the same llama-cpp-python calls as the llama_cpp adapter.
"""

import argparse
import codecs
import json
import time

import llama_cpp

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--prompt", required=True)
p.add_argument("--max-tokens", type=int, required=True)
p.add_argument("--runs", type=int, required=True)
a = p.parse_args()

llm = llama_cpp.Llama(model_path=a.model, n_ctx=2048, verbose=False)
# The same calls the llama_cpp adapter makes (chat template, whole-prompt evaluation, greedy
# token loop, incremental detokenization), so the ratio measures the chain, not a different API.
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

formatter = Jinja2ChatFormatter(
    template=llm.metadata["tokenizer.chat_template"],
    eos_token=llm._model.token_get_text(llm.token_eos()),
    bos_token=llm._model.token_get_text(llm.token_bos()),
)
vocab = llm._model.vocab
for i in range(a.runs + 1):
    t0 = time.perf_counter()
    # Rendering and tokenizing are per-request work of any chat server (≈0.2 ms here): timed, as in
    # the chain, where the adapter does them for each request.
    rendered = formatter(messages=[{"role": "user", "content": a.prompt}])
    prompt = llm.tokenize(rendered.prompt.encode("utf-8"), add_bos=False, special=True)
    llm.reset()
    first = None
    tokens = 0
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token in llm.generate(prompt, temp=0.0, top_p=1.0, top_k=0, min_p=0.0, repeat_penalty=1.0):
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            break
        tokens += 1
        if decoder.decode(llm.detokenize([token])) and first is None:
            first = time.perf_counter()
        if tokens >= a.max_tokens:
            break
    t1 = time.perf_counter()
    if i == 0:
        continue  # warm-up
    print(json.dumps({"ttft_ms": (first - t0) * 1e3, "total_ms": (t1 - t0) * 1e3, "tokens": tokens}), flush=True)
