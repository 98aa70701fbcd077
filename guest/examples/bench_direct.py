"""Baseline for examples/bench_chain.rs: llama-cpp-python called directly, streaming.

Prints one JSON line per run: {"ttft_ms", "total_ms", "tokens"}. Same prompt, greedy, same
max_tokens as the chain; the KV cache is reset before each run, as the llama_cpp adapter does, so
both evaluate the whole prompt.
"""

import argparse
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
messages = [{"role": "user", "content": a.prompt}]
for i in range(a.runs + 1):
    llm.reset()
    t0 = time.perf_counter()
    first = None
    tokens = 0
    for chunk in llm.create_chat_completion(messages=messages, max_tokens=a.max_tokens, temperature=0.0, stream=True):
        content = chunk["choices"][0]["delta"].get("content")
        if content:
            tokens += 1
            if first is None:
                first = time.perf_counter()
    t1 = time.perf_counter()
    if i == 0:
        continue  # warm-up
    print(json.dumps({"ttft_ms": (first - t0) * 1e3, "total_ms": (t1 - t0) * 1e3, "tokens": tokens}), flush=True)
