"""Training throughput: our trainer (`janus bench-train`) vs a plain PyTorch eager loop
(Hugging Face MistralForCausalLM, torch.optim.AdamW) on the same model shape, the
same random tokens shape, the same torch 2.11 and thread count, side by side.

Each repetition runs both, alternating, each in a fresh process (so peak RSS is per
implementation). Prints a Markdown table of medians and the ratio.

  python bench/train_bench.py --janus target/release/janus --reps 5
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

SHAPE = dict(layers=4, hidden=256, intermediate=688, heads=8, kv_heads=4, vocab=32000, seq=512, batch=8)


def torch_worker(a):
    import torch
    import torch.nn.functional as F
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    cfg = MistralConfig(
        vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
        num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
        max_position_embeddings=32768, rms_norm_eps=1e-5, rope_theta=1e6, sliding_window=None,
        tie_word_embeddings=False,
    )
    dtype = torch.bfloat16 if a.bf16 else torch.float32
    model = MistralForCausalLM(cfg).to(device=a.device, dtype=dtype).train()
    model.config._attn_implementation = "sdpa"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    tokens = torch.randint(0, a.vocab, (a.batch, a.seq + 1), device=a.device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    times = []
    for i in range(a.warmup + a.steps):
        t = time.perf_counter()
        logits = model(input_ids=inputs, use_cache=False).logits
        loss = F.cross_entropy(logits.float().reshape(-1, a.vocab), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if a.device == "cuda":
            torch.cuda.synchronize()
        if i >= a.warmup:
            times.append(time.perf_counter() - t)
    mean = sum(times) / len(times)
    params = sum(p.numel() for p in model.parameters())
    tps = a.seq * a.batch / mean
    print(json.dumps({
        "device": a.device, "dtype": str(dtype),
        # 6N plus causal attention (forward + backward), as janus bench-train counts.
        "mfu": (6 * params + 6 * a.layers * a.hidden * a.seq) * tps / (a.peak_tflops * 1e12) if a.device == "cuda" else None,
        "impl": "pytorch-eager", "params": params,
        "threads": torch.get_num_threads(), "step_seconds": times,
        "tokens_per_second": tps,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def run(cmd, env):
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--janus", default="target/release/janus")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--torch-worker", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=989.0)
    for k, v in SHAPE.items():
        p.add_argument(f"--{k.replace('_', '-')}", type=int, default=v)
    a = p.parse_args()
    if a.torch_worker:
        return torch_worker(a)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    shape = [f"--{k.replace('_', '-')}={getattr(a, k)}" for k in SHAPE]
    common = shape + [f"--steps={a.steps}", f"--warmup={a.warmup}"]
    ours_cmd = [a.janus, "bench-train"] + common
    torch_cmd = [sys.executable, __file__, "--torch-worker"] + common
    results = {"janus": [], "pytorch-eager": []}
    for rep in range(a.reps):
        for name, cmd in [("janus", ours_cmd), ("pytorch-eager", torch_cmd)][:: 1 if rep % 2 == 0 else -1]:
            r = run(cmd, env)
            results[name].append(r)
            print(f"rep {rep + 1}/{a.reps} {name:14s} {r['tokens_per_second']:9.1f} tokens/s  peak RSS {r['peak_rss_mib']:.0f} MiB", file=sys.stderr)
    med = {k: statistics.median(r["tokens_per_second"] for r in v) for k, v in results.items()}
    rss = {k: statistics.median(r["peak_rss_mib"] for r in v) for k, v in results.items()}
    params = results["janus"][0]["params"]
    print(f"\nModel: Mistral-style, {a.layers} layers, hidden {a.hidden}, {a.heads} heads / {a.kv_heads} KV, vocab {a.vocab}, "
          f"{params / 1e6:.1f}M params; batch {a.batch} x seq {a.seq}; fp32 CPU, {a.threads} threads; "
          f"median of {a.reps} runs x {a.steps} timed steps\n")
    print("| implementation | tokens/s (median) | speed vs PyTorch eager | peak RSS MiB (median) | RSS vs PyTorch eager |")
    print("|---|---|---|---|---|")
    base = "pytorch-eager"
    for k in ["janus", base]:
        print(f"| {k} | {med[k]:.0f} | {med[k] / med[base]:.3f}x | {rss[k]:.0f} | {rss[k] / rss[base]:.2f}x |")


if __name__ == "__main__":
    main()
