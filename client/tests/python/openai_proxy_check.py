"""Drives the official `openai` Python SDK, unchanged, against `chrysalis proxy`.

Run by client/tests/openai_sdk.rs (fake upstream) and tests/tests/proxy_guest.rs (the real
guest runtime) with the venv from CHRYSALIS_VENV (guest/python/requirements-test.txt pins the
SDK). Usage:

    python openai_proxy_check.py BASE_URL MODEL ok
    python openai_proxy_check.py BASE_URL MODEL reject:CANARY

Prints one JSON object on stdout: what the SDK returned (texts, chunk counts, the usage it
reports) or, for `reject:`, the errors it raised.
"""

import json
import sys

import openai

PROMPT = "Name three colours. Answer in one short sentence."


def usage(u):
    if u is None:
        return None
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
    }


def ok(client, model):
    out = {"models": [m.id for m in client.models.list().data]}
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=24,
        temperature=0,
    )
    out["chat"] = {"text": r.choices[0].message.content, "usage": usage(r.usage)}
    chunks, last_usage = [], None
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for ch in stream:
        if ch.choices and ch.choices[0].delta.content:
            chunks.append(ch.choices[0].delta.content)
        if ch.usage is not None:
            last_usage = usage(ch.usage)
    out["stream"] = {"chunks": len(chunks), "text": "".join(chunks), "usage": last_usage}
    return out


def reject(client, model, canary):
    out = {}
    for name, extra in (("chat", {}), ("stream", {"stream": True})):
        try:
            r = client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": canary}],
                max_tokens=4,
                **extra,
            )
            if extra:
                list(r)
            out[name] = None
        except openai.APIStatusError as e:
            out[name] = {
                "class": type(e).__name__,
                "status": e.status_code,
                "message": str(e),
                "type": (e.body or {}).get("type") if isinstance(e.body, dict) else None,
            }
    return out


def main():
    base, model, mode = sys.argv[1:4]
    # Default retries: the proxy's `x-should-retry: false` must stop them for rejections.
    client = openai.OpenAI(base_url=base, api_key="not-used-by-chrysalis", timeout=600)
    out = {"openai_version": openai.__version__}
    if mode == "ok":
        out.update(ok(client, model))
    elif mode.startswith("reject:"):
        out.update(reject(client, model, mode[len("reject:"):]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
