"""Generation speed: `janus serve` (OpenAI-compatible HTTP, streaming) vs Hugging Face
`generate` (transformers, eager PyTorch) on the same small Mistral-style model, the
same prompt token ids, greedy, the same number of new tokens, the same torch 2.11 and
thread count; batch 1 and batch 16, side by side, medians of several runs.

- tokens/s: generated tokens / wall time of the whole batch (janus: 16 concurrent
  streaming requests that the engine batches; HF: one `generate` on a batch of 16).
- time to first token: janus: the server's `janus_serve_time_to_first_token_seconds`
  (request arrival to first token, mean over the batch); HF: a `generate` of one new
  token on the same batch.

  python bench/serve_bench.py --janus target/release/janus --reps 3
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import http.client

CONFIG = dict(
    architectures=["MistralForCausalLM"], model_type="mistral", hidden_size=512, intermediate_size=1376,
    num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4, head_dim=64, vocab_size=4096,
    max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=1e6, sliding_window=None,
    tie_word_embeddings=False, hidden_act="silu", bos_token_id=1, eos_token_id=2, torch_dtype="float32",
)
PROMPT = ("Explain how tides work to a curious ten year old, step by step, with one everyday example "
          "and a short summary at the end, in plain words.")


def make_model(janus, root):
    data, model = os.path.join(root, "data"), os.path.join(root, "model")
    subprocess.run([janus, "sample-data", "--out", data], check=True, capture_output=True)
    cfg = os.path.join(root, "config.json")
    json.dump(CONFIG, open(cfg, "w"))
    subprocess.run([janus, "init-model", "--out", model, "--config", cfg, "--train-tokenizer-on",
                    os.path.join(data, "sft.jsonl"), "--vocab-size", "4096"], check=True, capture_output=True)
    return model


def stream_one(port, n_new, out):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = json.dumps({"model": "bench", "prompt": PROMPT, "max_tokens": n_new, "temperature": 0,
                       "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}})
    t0 = time.perf_counter()
    c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    first, tokens, prompt_tokens = None, 0, 0
    for line in r:
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        ev = json.loads(line[6:])
        if ev.get("usage"):
            tokens = ev["usage"]["completion_tokens"]
            prompt_tokens = ev["usage"]["prompt_tokens"]
        if first is None and ev.get("choices"):
            first = time.perf_counter() - t0
    out.append((first, time.perf_counter() - t0, tokens, prompt_tokens))


def ttft_metric(port):
    """(sum, count) of the server's time-to-first-token histogram: the engine's own
    clock, from a request's arrival to its first token (a streamed chunk may hold
    text back while a multi-byte character or a stop string is pending)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    val = lambda name: sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(name))
    return val("janus_serve_time_to_first_token_seconds_sum"), val("janus_serve_time_to_first_token_seconds_count")


def janus_run(port, batch, n_new):
    s0, c0 = ttft_metric(port)
    out = []
    threads = [threading.Thread(target=stream_one, args=(port, n_new, out)) for _ in range(batch)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    toks = sum(o[2] for o in out)
    assert toks == batch * n_new, out
    s1, c1 = ttft_metric(port)
    assert c1 - c0 == batch, (c0, c1)
    return {"tokens_per_second": toks / wall, "ttft": (s1 - s0) / (c1 - c0), "prompt_tokens": out[0][3]}


def hf_worker(a):
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(a.threads)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
    tok = Tokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
    ids = [1] + tok.encode(PROMPT, add_special_tokens=False).ids
    x = torch.tensor([ids] * a.batch)
    mask = torch.ones_like(x)
    gen = dict(do_sample=False, pad_token_id=2, attention_mask=mask)
    with torch.no_grad():
        model.generate(x, max_new_tokens=2, min_new_tokens=2, **gen)  # warm-up
        t0 = time.perf_counter()
        model.generate(x, max_new_tokens=1, min_new_tokens=1, **gen)
        ttft = time.perf_counter() - t0
        t0 = time.perf_counter()
        y = model.generate(x, max_new_tokens=a.new, min_new_tokens=a.new, **gen)
        wall = time.perf_counter() - t0
    toks = (y.shape[1] - x.shape[1]) * a.batch
    print(json.dumps({"tokens_per_second": toks / wall, "ttft": ttft, "prompt_tokens": len(ids),
                      "threads": torch.get_num_threads()}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--janus", default="target/release/janus")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--hf-worker", action="store_true")
    p.add_argument("--model")
    p.add_argument("--batch", type=int)
    a = p.parse_args()
    if a.hf_worker:
        return hf_worker(a)
    root = tempfile.mkdtemp(prefix="janus-serve-bench-")
    import atexit, shutil
    atexit.register(shutil.rmtree, root, True)
    model = make_model(a.janus, root)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    server = subprocess.Popen([a.janus, "serve", "--model", model, "--port", str(port), "--dtype", "float32",
                               "--device", "cpu", "--max-batch", "16", "--served-model-name", "bench"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        janus_run(port, 1, 4)  # warm-up
        results = {}
        for batch in (1, 16):
            js, hs = [], []
            for _ in range(a.reps):
                js.append(janus_run(port, batch, a.new))
                out = subprocess.run([sys.executable, __file__, "--hf-worker", "--model", model, "--batch", str(batch),
                                      "--new", str(a.new), "--threads", str(a.threads)],
                                     env=env, check=True, capture_output=True, text=True)
                hs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            assert js[0]["prompt_tokens"] == hs[0]["prompt_tokens"], (js[0], hs[0])
            results[batch] = (js, hs)
    finally:
        server.kill()
        server.wait()
    med = lambda rs, k: statistics.median(r[k] for r in rs)
    print(f"\nmodel: Mistral-style, {CONFIG['num_hidden_layers']} layers, hidden {CONFIG['hidden_size']}, "
          f"vocab {CONFIG['vocab_size']}, fp32, CPU, {a.threads} threads; prompt {results[1][0][0]['prompt_tokens']} tokens, "
          f"{a.new} new tokens (greedy), medians of {a.reps} runs\n")
    print("| batch | janus serve tokens/s | HF generate tokens/s | ratio | janus TTFT ms | HF TTFT ms | ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for batch, (js, hs) in results.items():
        jt, ht = med(js, "tokens_per_second"), med(hs, "tokens_per_second")
        jf, hf = med(js, "ttft") * 1000, med(hs, "ttft") * 1000
        print(f"| {batch} | {jt:.0f} | {ht:.0f} | {jt / ht:.2f}x | {jf:.0f} | {hf:.0f} | {hf / jf:.2f}x |")
    print("\n(ratio: janus / HF for tokens/s, HF / janus for time to first token; > 1 means janus is faster)")


if __name__ == "__main__":
    main()
