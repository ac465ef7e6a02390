"""Drives Keyward's cloud provider kinds with the official openai and anthropic Python SDKs.

Run by tests/it/clouds.rs against a Keyward on a real port, with tests/mocks/cloud_mock.py
behind it. KW_BASE is Keyward's root URL; KW_BEDROCK_KEY, KW_VERTEX_KEY and KW_AZURE_KEY are
gateway keys bound to an Amazon Bedrock, a Google Vertex AI and an Azure OpenAI (Entra ID)
provider; the KW_*_MODEL variables name the models the mock serves.
"""

import os
import sys

import anthropic
import openai

BASE = os.environ["KW_BASE"]
KEYS = {
    "bedrock": os.environ["KW_BEDROCK_KEY"],
    "vertex": os.environ["KW_VERTEX_KEY"],
    "azure": os.environ["KW_AZURE_KEY"],
}
BEDROCK_MODEL = os.environ["KW_BEDROCK_MODEL"]
GEMINI_MODEL = os.environ["KW_GEMINI_MODEL"]
VERTEX_CLAUDE_MODEL = os.environ["KW_VERTEX_CLAUDE_MODEL"]

HELLO = [{"role": "user", "content": "Hello"}]

# kind -> (model, the mock's answer, (prompt tokens, completion tokens))
OPENAI_CASES = {
    "bedrock": (BEDROCK_MODEL, "Hello from Bedrock", (11, 5)),
    "vertex": (GEMINI_MODEL, "Hello from Gemini on Vertex", (9, 4)),
    "azure": ("gpt-4o", "Hello from Azure with Entra ID", (9, 6)),
}
ANTHROPIC_CASES = {
    "bedrock": (BEDROCK_MODEL, "Hello from Claude on Bedrock", (12, 6)),
    "vertex": (VERTEX_CLAUDE_MODEL, "Hello from Claude on Vertex", (10, 5)),
}


def step(name):
    print(f"- {name}", flush=True)


def openai_sdk(kind):
    model, answer, (ptok, ctok) = OPENAI_CASES[kind]
    client = openai.OpenAI(base_url=f"{BASE}/v1", api_key=KEYS[kind], max_retries=0, timeout=20)

    step(f"openai {kind}: chat")
    r = client.chat.completions.create(model=model, messages=HELLO)
    assert r.choices[0].message.content == answer, r
    assert r.choices[0].finish_reason == "stop", r
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (ptok, ctok), r.usage

    step(f"openai {kind}: stream")
    stream = client.chat.completions.create(
        model=model,
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer, text
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"], finish
    usage = chunks[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (ptok, ctok), chunks[-1]


def anthropic_sdk(kind):
    model, answer, (itok, otok) = ANTHROPIC_CASES[kind]
    client = anthropic.Anthropic(base_url=BASE, api_key=KEYS[kind], max_retries=0, timeout=20)

    step(f"anthropic {kind}: messages")
    m = client.messages.create(
        model=model,
        max_tokens=64,
        messages=[{"role": "user", "content": "Hi"}],
    )
    assert m.content[0].text == answer, m
    assert m.stop_reason == "end_turn", m
    assert (m.usage.input_tokens, m.usage.output_tokens) == (itok, otok), m.usage

    step(f"anthropic {kind}: stream")
    with client.messages.stream(
        model=model,
        max_tokens=64,
        messages=[{"role": "user", "content": "Hi"}],
    ) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == answer, text
    assert final.usage.output_tokens == otok, final.usage


if __name__ == "__main__":
    print(f"openai {openai.__version__}, anthropic {anthropic.__version__}", flush=True)
    for kind in ("bedrock", "vertex", "azure"):
        openai_sdk(kind)
    for kind in ("bedrock", "vertex"):
        anthropic_sdk(kind)
    print("clouds sdk ok", flush=True)
    sys.exit(0)
