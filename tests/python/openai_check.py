"""The official `openai` client (and plain HTTP for errors) against `janus serve`.

  openai_check.py CHECK --base-url http://127.0.0.1:PORT/v1 --model NAME --api-key KEY

Checks: chat, stream, n, stop, max-tokens, completions, models, errors, auth, batches
(files.create / batches.create / batches.retrieve / files.content). Each
asserts what the OpenAI API promises, prints one JSON line of what it saw, and exits
non-zero (with the assertion) when the server does not keep a promise.
"""

import argparse
import io
import json
import re
import sys
import time
import urllib.error
import urllib.request

import openai
from openai import OpenAI

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant. Assume the user has never studied the subject."},
    {"role": "user", "content": "Explain tides."},
]


def client(a):
    return OpenAI(base_url=a.base_url, api_key=a.api_key, max_retries=0, timeout=60)


def check_usage(usage, completion_max=None):
    assert usage.prompt_tokens > 0, usage
    assert usage.completion_tokens > 0, usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens, usage
    if completion_max is not None:
        assert usage.completion_tokens <= completion_max, usage


def chat(a):
    c = client(a)
    r = c.chat.completions.create(model=a.model, messages=MESSAGES, max_tokens=8, temperature=0, seed=1)
    assert r.object == "chat.completion", r
    assert r.model == a.model and r.id.startswith("chatcmpl-"), r
    assert len(r.choices) == 1 and r.choices[0].index == 0, r
    m = r.choices[0].message
    assert m.role == "assistant" and isinstance(m.content, str), m
    assert r.choices[0].finish_reason in ("stop", "length"), r
    check_usage(r.usage, 8)
    # A multi-turn conversation is accepted too.
    turns = MESSAGES + [{"role": "assistant", "content": m.content}, {"role": "user", "content": "And rainbows?"}]
    r2 = c.chat.completions.create(model=a.model, messages=turns, max_completion_tokens=4, temperature=0)
    assert r2.usage.prompt_tokens > r.usage.prompt_tokens, (r.usage, r2.usage)
    return {"content": m.content, "usage": r.usage.model_dump()}


def stream(a):
    c = client(a)
    common = dict(model=a.model, messages=MESSAGES, max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    whole = c.chat.completions.create(**common)
    chunks = list(c.chat.completions.create(stream=True, stream_options={"include_usage": True}, **common))
    assert all(ch.object == "chat.completion.chunk" for ch in chunks), chunks
    assert len({ch.id for ch in chunks}) == 1, "one id for the whole stream"
    first = chunks[0].choices[0].delta
    assert first.role == "assistant", first
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content, (text, whole.choices[0].message.content)
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == ["length"], finishes
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None, last
    assert last.usage.completion_tokens == 12, last.usage
    assert all(ch.usage is None for ch in chunks[:-1]), "usage only in the last chunk"
    check_usage(last.usage)
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens
    # Without include_usage there is no usage chunk.
    plain = list(c.chat.completions.create(stream=True, **common))
    assert all(ch.usage is None for ch in plain) and plain[-1].choices, plain[-1]
    return {"chunks": len(chunks), "text": text}


def n(a):
    c = client(a)
    r = c.chat.completions.create(
        model=a.model, messages=MESSAGES, n=3, max_tokens=10, temperature=1.0, seed=5, extra_body={"ignore_eos": True}
    )
    assert [ch.index for ch in r.choices] == [0, 1, 2], r.choices
    texts = [ch.message.content for ch in r.choices]
    assert len(set(texts)) > 1, f"three samples should differ: {texts}"
    assert r.usage.completion_tokens == 30, r.usage
    again = c.chat.completions.create(
        model=a.model, messages=MESSAGES, n=3, max_tokens=10, temperature=1.0, seed=5, extra_body={"ignore_eos": True}
    )
    assert [ch.message.content for ch in again.choices] == texts, "same seed, same samples"
    # Streaming with n > 1 interleaves the choices, each with its own index.
    chunks = list(
        c.chat.completions.create(
            model=a.model, messages=MESSAGES, n=2, max_tokens=6, temperature=1.0, seed=5, stream=True,
            extra_body={"ignore_eos": True},
        )
    )
    seen = {ch.choices[0].index for ch in chunks if ch.choices}
    assert seen == {0, 1}, seen
    streamed = ["".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices and ch.choices[0].index == i) for i in (0, 1)]
    return {"texts": texts, "streamed": streamed}


def stop(a):
    c = client(a)
    common = dict(model=a.model, messages=MESSAGES, max_tokens=24, temperature=0, extra_body={"ignore_eos": True})
    free = c.chat.completions.create(**common).choices[0].message.content
    # A run of letters from the second half of the free answer (a random model's
    # answer has few whole words).
    runs = re.findall(r"[A-Za-z]{3,}", free[len(free) // 2 :])
    assert runs, f"need letters to stop at: {free!r}"
    target = runs[0][:3]
    cut = free.index(target)
    r = c.chat.completions.create(stop=[target, "never-appears"], **common)
    got = r.choices[0].message.content
    assert got == free[:cut], (got, free[:cut], target)
    assert r.choices[0].finish_reason == "stop", r.choices[0]
    # The stop string never leaks into a stream either.
    chunks = list(c.chat.completions.create(stop=target, stream=True, **common))
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert streamed == free[:cut], (streamed, free[:cut])
    return {"free": free, "stop": target, "text": got}


def max_tokens(a):
    c = client(a)
    for field in ("max_tokens", "max_completion_tokens"):
        r = c.chat.completions.create(
            model=a.model, messages=MESSAGES, temperature=0, extra_body={"ignore_eos": True}, **{field: 5}
        )
        assert r.choices[0].finish_reason == "length", r.choices[0]
        assert r.usage.completion_tokens == 5, (field, r.usage)
    return {"ok": True}


def completions(a):
    c = client(a)
    r = c.completions.create(model=a.model, prompt="Explain tides.", max_tokens=6, temperature=0, extra_body={"ignore_eos": True})
    assert r.object == "text_completion" and len(r.choices) == 1, r
    assert r.usage.completion_tokens == 6, r.usage
    r2 = c.completions.create(model=a.model, prompt=["a", "b c"], n=2, max_tokens=3, temperature=1, seed=2)
    assert [ch.index for ch in r2.choices] == [0, 1, 2, 3], r2.choices
    chunks = list(c.completions.create(model=a.model, prompt="Explain tides.", max_tokens=6, temperature=0, stream=True, extra_body={"ignore_eos": True}))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == r.choices[0].text
    return {"text": r.choices[0].text}


def models(a):
    c = client(a)
    ms = c.models.list()
    ids = [m.id for m in ms.data]
    assert ids == [a.model], ids
    assert c.models.retrieve(a.model).id == a.model
    return {"models": ids}


def post(a, path, body, key="default"):
    """Plain HTTP: (status, parsed JSON body)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(a.base_url + path, data=data, method="POST")
    req.add_header("Content-Type", "application/json")
    key = a.api_key if key == "default" else key
    if key is not None:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def errors(a):
    ok = {"model": a.model, "messages": MESSAGES, "max_tokens": 2}
    long_prompt = " ".join(["tides"] * 2000)
    cases = [
        (dict(ok, temperature=5), 400, "temperature"),
        (dict(ok, top_p=1.5), 400, "top_p"),
        (dict(ok, n=0), 400, "n"),
        (dict(ok, max_tokens=0), 400, "max_tokens"),
        (dict(ok, stop=["a"] * 5), 400, "stop"),
        (dict(ok, temprature=1), 400, "temprature"),
        ({"model": a.model, "max_tokens": 2}, 400, "messages"),
        (dict(ok, messages=[]), 400, "messages"),
        (dict(ok, messages=[{"role": "tool", "content": "x"}]), 400, "messages[0].role"),
        (dict(ok, messages=[{"role": "user"}]), 400, "messages[0].content"),
        (dict(ok, messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]), 400, "messages[1]"),
        (dict(ok, messages=[{"role": "user", "content": long_prompt}]), 400, "messages"),
        (dict(ok, max_tokens=100000), 400, "max_tokens"),
        (dict(ok, stream_options={"include_usage": True}), 400, "stream_options"),
        (dict(ok, model="gpt-5"), 404, "model"),
    ]
    seen = []
    for body, status, param in cases:
        got, resp = post(a, "/chat/completions", body)
        err = resp.get("error", {})
        assert got == status, (body, got, resp)
        assert err.get("param") == param, (param, resp)
        assert err.get("message") and err.get("type"), resp
        seen.append({"param": param, "status": got, "message": err["message"]})
    code, resp = post(a, "/chat/completions", b"{not json")
    assert code == 400 and resp["error"]["message"], resp
    over = [s for s in seen if s["param"] == "messages" and "context length" in s["message"]]
    assert over, "an over-long prompt is named as such"
    code, resp = post(a, "/completions", {"model": a.model, "prompt": [], "max_tokens": 1})
    assert code == 400 and resp["error"]["param"] == "prompt", resp
    # The official client raises OpenAI's typed error carrying the server's body.
    try:
        client(a).chat.completions.create(model=a.model, messages=MESSAGES, temperature=9)
        raise AssertionError("temperature 9 accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400 and e.body["param"] == "temperature", e.body
    # The server still answers after all that.
    assert post(a, "/chat/completions", ok)[0] == 200
    return {"errors": seen}


def auth(a):
    ok = {"model": a.model, "messages": MESSAGES, "max_tokens": 1}
    for key in (None, "wrong-key"):
        code, resp = post(a, "/chat/completions", ok, key=key)
        assert code == 401 and resp["error"]["code"] == "invalid_api_key", (key, code, resp)
    try:
        OpenAI(base_url=a.base_url, api_key="wrong", max_retries=0).models.list()
        raise AssertionError("a wrong key was accepted")
    except openai.AuthenticationError as e:
        assert e.status_code == 401
    assert post(a, "/chat/completions", ok)[0] == 200
    return {"ok": True}


def wait_batch(c, b):
    deadline = time.time() + 120
    while b.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.time() < deadline, b
        time.sleep(0.2)
        b = c.batches.retrieve(b.id)
    return b


def batches(a):
    c = client(a)
    lines = [
        {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": a.model, "messages": [MESSAGES[0], {"role": "user", "content": f"Explain item {i}."}],
                  "max_tokens": 6, "temperature": 0, "seed": i}}
        for i in range(3)
    ]
    lines.append({"custom_id": "bad-model", "method": "POST", "url": "/v1/chat/completions",
                  "body": {"model": "nope", "messages": MESSAGES, "max_tokens": 4}})
    data = "".join(json.dumps(l) + "\n" for l in lines).encode()
    f = c.files.create(file=("judge.jsonl", io.BytesIO(data)), purpose="batch")
    assert f.object == "file" and f.bytes == len(data) and f.purpose == "batch", f
    assert c.files.retrieve(f.id).filename == "judge.jsonl"
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                         metadata={"description": "janus test"})
    assert b.object == "batch" and b.status in ("validating", "in_progress"), b
    assert b.metadata == {"description": "janus test"}, b
    b = wait_batch(c, b)
    assert b.status == "completed", b
    counts = b.request_counts
    lines_of = lambda f: [json.loads(l) for l in c.files.content(f).text.splitlines()] if f else []
    out, err = lines_of(b.output_file_id), lines_of(b.error_file_id)
    assert (counts.total, counts.completed, counts.failed) == (4, 3, 1), (counts, err)
    assert sorted(o["custom_id"] for o in out) == ["req-0", "req-1", "req-2"], out
    assert [e["custom_id"] for e in err] == ["bad-model"], err
    assert err[0]["response"]["status_code"] == 404, err
    assert "error" in err[0]["response"]["body"], err
    # Greedy decoding: a batch line answers what the same request answers online.
    for o in out:
        assert o["response"]["status_code"] == 200, o
        body = o["response"]["body"]
        assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] > 0, body
        online = c.chat.completions.create(**lines[int(o["custom_id"].split("-")[1])]["body"])
        assert body["choices"][0]["message"]["content"] == online.choices[0].message.content, (body, online)
    # A bad input file fails the batch, naming its lines.
    bad = c.files.create(file=("bad.jsonl", io.BytesIO(b'{"custom_id": "x"}\nnot json\n')), purpose="batch")
    b2 = wait_batch(c, c.batches.create(input_file_id=bad.id, endpoint="/v1/chat/completions",
                                        completion_window="24h"))
    assert b2.status == "failed" and [e.line for e in b2.errors.data] == [1, 2], b2
    try:
        c.batches.retrieve("batch-nope")
        raise AssertionError("an unknown batch was found")
    except openai.NotFoundError as e:
        assert e.status_code == 404
    try:
        c.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
        raise AssertionError("a batch of an unknown file was created")
    except openai.NotFoundError as e:
        assert e.status_code == 404
    return {"output": len(out), "errors": len(err), "content": out[0]["response"]["body"]["choices"][0]["message"]["content"]}


CHECKS = {
    "chat": chat,
    "stream": stream,
    "n": n,
    "stop": stop,
    "max-tokens": max_tokens,
    "completions": completions,
    "models": models,
    "errors": errors,
    "auth": auth,
    "batches": batches,
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("check", choices=sorted(CHECKS))
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--api-key", required=True)
    a = p.parse_args()
    print(json.dumps({"check": a.check, "saw": CHECKS[a.check](a)}))


if __name__ == "__main__":
    sys.exit(main())
