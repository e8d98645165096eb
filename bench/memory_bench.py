"""Peak memory and tokens/s of mixed-precision training on CPU, our trainer's variants
against Hugging Face transformers on the same shape, in one run, with the memory plan's
prediction beside each of our rows.

Rows: janus pure bf16 (the old update: bf16 weights and moments), bf16 + fp32 master
weights, + gradient checkpointing, + ZeRO-1 on 2 ranks (same global batch), and
transformers (fp32 parameters, bf16 autocast, gradient checkpointing, torch AdamW).
Each repetition runs every row once, alternating, each in a fresh process; the table
has medians. Peak memory is the rise of resident memory over the process's level
before the model was built (VmHWM - VmRSS), per rank.

  python bench/memory_bench.py --janus target/release/janus --reps 3
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

SHAPE = dict(layers=12, hidden=768, intermediate=2048, heads=12, kv_heads=4, vocab=32000, seq=512, batch=2)


def rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def hf_worker(a):
    import torch
    import torch.nn.functional as F
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    tokens = torch.randint(0, a.vocab, (a.batch, a.seq + 1))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    before = rss_bytes()
    cfg = MistralConfig(
        vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
        num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
        max_position_embeddings=32768, rms_norm_eps=1e-5, rope_theta=1e6, sliding_window=None,
        tie_word_embeddings=False, use_cache=False,
    )
    model = MistralForCausalLM(cfg).float().train()
    model.config._attn_implementation = "sdpa"
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    times = []
    for i in range(a.warmup + a.steps):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=inputs).logits
        loss = F.cross_entropy(logits.float().reshape(-1, a.vocab), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= a.warmup:
            times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({
        "impl": "transformers", "params": sum(p.numel() for p in model.parameters()),
        "tokens_per_second": a.seq * a.batch / (sum(times) / len(times)),
        "peak_rss_increase_bytes": peak - before,
    }))


def run_json(cmd, env):
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    # Under `janus launch` each line carries a `[rank i] ` prefix.
    lines = [l[l.index("{"):] for l in out.stdout.splitlines() if "{" in l]
    return json.loads(lines[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--janus", default="target/release/janus")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--hf-worker", action="store_true")
    for k, v in SHAPE.items():
        p.add_argument(f"--{k.replace('_', '-')}", type=int, default=v)
    a = p.parse_args()
    if a.hf_worker:
        hf_worker(a)
        return
    shape = []
    for k in SHAPE:
        shape += [f"--{k.replace('_', '-')}", str(getattr(a, k))]
    common = ["--steps", str(a.steps), "--warmup", str(a.warmup), "--device", "cpu", "--dtype", "bfloat16"]
    half = shape[:]
    half[half.index("--batch") + 1] = str(a.batch // 2)
    rows = {
        "janus: pure bf16 (old update)": [a.janus, "bench-train", *shape, *common, "--no-master-weights"],
        "janus: bf16 + fp32 master": [a.janus, "bench-train", *shape, *common],
        "janus: + gradient checkpointing": [a.janus, "bench-train", *shape, *common, "--checkpointing"],
        "janus: + ZeRO-1, 2 ranks (per rank)": [a.janus, "launch", "--nproc", "2", "--", "bench-train", *half, *common, "--checkpointing", "--zero"],
        "transformers: fp32 params + bf16 autocast + checkpointing": [sys.executable, __file__, "--hf-worker", *shape, "--steps", str(a.steps), "--warmup", str(a.warmup)],
    }
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MALLOC_MMAP_THRESHOLD_="131072")
    results = {k: [] for k in rows}
    for rep in range(a.reps):
        for name, cmd in rows.items():
            e = dict(env)
            if "--nproc" in cmd:
                e["OMP_NUM_THREADS"] = str(max(1, a.threads // 2))
            r = run_json(cmd, e)
            results[name].append(r)
            print(f"rep {rep + 1}/{a.reps} {name}: {json.dumps(r)[:200]}", file=sys.stderr)
    med = lambda xs: statistics.median(xs)
    hf = "transformers: fp32 params + bf16 autocast + checkpointing"
    hf_mem = med([r["peak_rss_increase_bytes"] for r in results[hf]])
    hf_tps = med([r["tokens_per_second"] for r in results[hf]])
    params = results[hf][0]["params"]
    print(f"\nModel: Mistral-style, {a.layers} layers, hidden {a.hidden}, {a.heads} heads / {a.kv_heads} KV, "
          f"vocab {a.vocab}, {params / 1e6:.1f}M parameters; batch {a.batch} x seq {a.seq} (global), "
          f"{a.threads} threads, median of {a.reps}\n")
    print("| configuration | peak memory MiB | vs transformers | plan MiB | plan / measured | tokens/s | vs transformers |")
    print("|---|---|---|---|---|---|---|")
    for name in rows:
        mem = med([r["peak_rss_increase_bytes"] for r in results[name]])
        tps = med([r["tokens_per_second"] for r in results[name]])
        plan = results[name][0].get("plan_bytes")
        plan_s = f"{plan / 2**20:.0f}" if plan else "-"
        ratio_s = f"{plan / mem:.2f}" if plan else "-"
        print(f"| {name} | {mem / 2**20:.0f} | {mem / hf_mem:.2f}x | {plan_s} | {ratio_s} | {tps:.0f} | {tps / hf_tps:.2f}x |")


if __name__ == "__main__":
    main()
