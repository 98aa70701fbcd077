"""Checks that the official openai SDK, unchanged, works against chrysalis-guest over TLS.

Run by guest/tests/acceptance.rs with the pinned openai package from the test venv. The server's
self-signed certificate is trusted through --ca (clients of real nodes use the chrysalis proxy,
which verifies the attestation instead).
"""

import argparse
import ssl
import sys

import openai


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--model", required=True)
    a = p.parse_args()
    # Trust exactly this certificate. Its name is chrysalis.invalid (RA-TLS certificates name no
    # host; clients pin the attested key instead), so the host name is not checked.
    ctx = ssl.create_default_context(cafile=a.ca)
    ctx.check_hostname = False
    client = openai.OpenAI(base_url=a.base_url, api_key="unused", http_client=openai.DefaultHttpxClient(verify=ctx), max_retries=0)
    msgs = [{"role": "user", "content": "Say hello to the sea."}]

    ids = [m.id for m in client.models.list()]
    assert a.model in ids, ids

    raw = client.chat.completions.with_raw_response.create(model=a.model, messages=msgs, max_tokens=16, temperature=0)
    assert raw.headers.get("chrysalis-receipt", "").count(".") == 2, dict(raw.headers)
    r = raw.parse()
    text = r.choices[0].message.content
    assert text and r.usage.completion_tokens >= 1 and r.usage.prompt_tokens > 0, r

    # A stream, plain; then with include_usage and TE: trailers (the receipt trailer must not
    # disturb the SDK's SSE parsing).
    for extra in ({}, {"stream_options": {"include_usage": True}, "extra_headers": {"TE": "trailers"}}):
        pieces, usage = [], None
        for chunk in client.chat.completions.create(model=a.model, messages=msgs, max_tokens=16, temperature=0, stream=True, **extra):
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
        assert len(pieces) >= 2, pieces
        assert "".join(pieces) == text, ("".join(pieces), text)
        if extra:
            assert usage is not None and usage.completion_tokens == r.usage.completion_tokens, usage

    c = client.completions.create(model=a.model, prompt="The sea is", max_tokens=8, temperature=0)
    assert c.choices[0].text is not None and c.usage.completion_tokens >= 1

    try:
        client.chat.completions.create(model=a.model, messages=msgs, max_tokens=16, logit_bias={"1": 1})
        raise AssertionError("an unsupported field was accepted")
    except openai.BadRequestError as e:
        assert "logit_bias" in str(e), e

    print("openai sdk: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
