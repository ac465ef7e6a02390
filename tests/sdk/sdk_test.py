"""Drives Keyward with the official openai and anthropic Python SDKs, as applications do.

Run by tests/it/sdk.rs against a Keyward on a real port, with the mock upstream behind it.
KW_BASE is Keyward's root URL; the KW_*_KEY variables are gateway keys bound to an OpenAI
provider, an Anthropic provider, and (LIMITED) the same with a rate limit of one request.
"""

import os
import sys

import anthropic
import openai

BASE = os.environ["KW_BASE"]
KEY = os.environ["KW_KEY"]
ANTHROPIC_KEY = os.environ["KW_ANTHROPIC_KEY"]
LIMITED_KEY = os.environ["KW_LIMITED_KEY"]
LIMITED_ANTHROPIC_KEY = os.environ["KW_LIMITED_ANTHROPIC_KEY"]
UNKNOWN_KEY = os.environ["KW_UNKNOWN_KEY"]

HELLO = [{"role": "user", "content": "Hello"}]


def step(name):
    print(f"- {name}", flush=True)


def expect(exc_type, call, status):
    try:
        call()
    except exc_type as e:
        assert e.status_code == status, (e.status_code, e)
        return e
    raise AssertionError(f"expected {exc_type.__name__}")


def openai_sdk():
    client = openai.OpenAI(base_url=f"{BASE}/v1", api_key=KEY, max_retries=0, timeout=20)

    step("openai: chat completion")
    r = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert r.choices[0].message.content == "Hello! How can I assist you today?", r
    assert r.choices[0].finish_reason == "stop", r
    assert r.usage.total_tokens == 29, r.usage

    step("openai: streamed chat completion")
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello there!", text
    assert all(c.choices for c in chunks), "a usage chunk the client did not ask for"

    step("openai: streamed with include_usage")
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 12, chunks[-1]

    step("openai: embeddings")
    e = client.embeddings.create(model="text-embedding-3-small", input="hi")
    assert len(e.data[0].embedding) == 3, e
    assert e.usage.prompt_tokens == 8, e.usage

    step("openai: list models")
    ids = [m.id for m in client.models.list()]
    assert ids == ["gpt-4o-mini", "gpt-4.1", "text-embedding-3-small"], ids

    step("openai: the /work alias")
    work = openai.OpenAI(base_url=BASE, api_key=KEY, max_retries=0)
    r = work.post("/work", body={"model": "gpt-4o-mini", "messages": HELLO}, cast_to=object)
    assert r["object"] == "chat.completion", r

    step("openai: AuthenticationError for an unknown key")
    bad = openai.OpenAI(base_url=f"{BASE}/v1", api_key=UNKNOWN_KEY, max_retries=0)
    e = expect(
        openai.AuthenticationError,
        lambda: bad.chat.completions.create(model="gpt-4o-mini", messages=HELLO),
        401,
    )
    assert e.code == "invalid_api_key", e.body
    assert UNKNOWN_KEY not in str(e)

    step("openai: RateLimitError past the key's rate limit")
    limited = openai.OpenAI(base_url=f"{BASE}/v1", api_key=LIMITED_KEY, max_retries=0)
    limited.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    e = expect(
        openai.RateLimitError,
        lambda: limited.chat.completions.create(model="gpt-4o-mini", messages=HELLO),
        429,
    )
    assert e.code == "rate_limit_exceeded", e.body
    assert int(e.response.headers["retry-after"]) >= 1

    step("openai: chat against an Anthropic provider, translated")
    claude = openai.OpenAI(base_url=f"{BASE}/v1", api_key=ANTHROPIC_KEY, max_retries=0)
    r = claude.chat.completions.create(
        model="claude-sonnet-4-20250514",
        messages=[{"role": "system", "content": "Be brief."}, *HELLO],
    )
    assert r.choices[0].message.content == "Hi! My name is Claude.", r
    assert r.usage.prompt_tokens == 10 and r.usage.completion_tokens == 12, r.usage
    stream = claude.chat.completions.create(
        model="claude-sonnet-4-20250514",
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello!", text
    assert chunks[-1].usage.completion_tokens == 15, chunks[-1]


def anthropic_sdk():
    client = anthropic.Anthropic(base_url=BASE, api_key=ANTHROPIC_KEY, max_retries=0, timeout=20)

    step("anthropic: messages")
    m = client.messages.create(
        model="claude-sonnet-4-20250514",
        max_tokens=64,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hi"}],
    )
    assert m.content[0].text == "Hi! My name is Claude.", m
    assert m.usage.input_tokens == 10 and m.usage.output_tokens == 12, m.usage

    step("anthropic: streamed messages")
    with client.messages.stream(
        model="claude-sonnet-4-20250514",
        max_tokens=64,
        messages=[{"role": "user", "content": "Hi"}],
    ) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "Hello!", text
    assert final.usage.output_tokens == 15, final.usage

    step("anthropic: AuthenticationError for an unknown key")
    bad = anthropic.Anthropic(base_url=BASE, api_key=UNKNOWN_KEY, max_retries=0)
    expect(
        anthropic.AuthenticationError,
        lambda: bad.messages.create(
            model="claude-sonnet-4-20250514", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        ),
        401,
    )

    step("anthropic: RateLimitError past the key's rate limit")
    limited = anthropic.Anthropic(base_url=BASE, api_key=LIMITED_ANTHROPIC_KEY, max_retries=0)
    call = lambda: limited.messages.create(  # noqa: E731
        model="claude-sonnet-4-20250514", max_tokens=8, messages=[{"role": "user", "content": "x"}]
    )
    call()
    expect(anthropic.RateLimitError, call, 429)


if __name__ == "__main__":
    print(f"openai {openai.__version__}, anthropic {anthropic.__version__}", flush=True)
    openai_sdk()
    anthropic_sdk()
    print("sdk ok", flush=True)
    sys.exit(0)
