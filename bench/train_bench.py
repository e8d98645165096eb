"""Training throughput: our trainer (`janus bench-train`) vs a plain PyTorch eager loop
(Hugging Face MistralForCausalLM, torch.optim.AdamW) and the same loop under
`torch.compile` (inductor) on the same model shape, the same random tokens shape, the
same torch 2.11, thread count and allocator (glibc malloc for all), side by side.

Each repetition runs all three, in rotating order, each in a fresh process (so peak RSS
is per implementation). Prints a Markdown table of medians and the ratios, and the
per-phase profile (seconds per step, medians): the body's forward, the LM head and
loss (forward and backward), the body's backward, the optimizer (clipping, AdamW,
zeroing), collectives. In PyTorch the head's backward ends when the gradient of the
body's output is computed (a hook marks it); the compiled loop fuses the head into the
forward graph, so its forward includes the head's forward and its backward the head's.

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

    def sync():
        if a.device == "cuda":
            torch.cuda.synchronize()

    def eager_loss(inputs, targets, marks):
        hidden = model.model(input_ids=inputs, use_cache=False).last_hidden_state
        sync()
        marks["forward"] = time.perf_counter()
        hidden.register_hook(lambda g: marks.__setitem__("head_backward", time.perf_counter()))
        logits = model.lm_head(hidden)
        return F.cross_entropy(logits.float().reshape(-1, a.vocab), targets.reshape(-1))

    def full_loss(inputs, targets):
        logits = model(input_ids=inputs, use_cache=False).logits
        return F.cross_entropy(logits.float().reshape(-1, a.vocab), targets.reshape(-1))

    compiled = torch.compile(full_loss) if a.compile else None
    times, phases = [], []
    for i in range(a.warmup + a.steps):
        marks = {}
        t = time.perf_counter()
        if compiled is not None:
            loss = compiled(inputs, targets)
        else:
            loss = eager_loss(inputs, targets, marks)
        sync()
        t_loss = time.perf_counter()
        loss.backward()
        sync()
        t_bwd = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        t_end = time.perf_counter()
        if i >= a.warmup:
            times.append(t_end - t)
            if compiled is not None:
                p = dict(forward=t_loss - t, head_loss=0.0, backward=t_bwd - t_loss)
            else:
                p = dict(forward=marks["forward"] - t,
                         head_loss=(t_loss - marks["forward"]) + (marks["head_backward"] - t_loss),
                         backward=t_bwd - marks["head_backward"])
            p.update(optimizer=t_end - t_bwd, collectives=0.0)
            phases.append(p)
    mean = sum(times) / len(times)
    params = sum(p.numel() for p in model.parameters())
    tps = a.seq * a.batch / mean
    # janus's one formula (trainer/src/metrics.rs, ModelFlops): 6 x the parameters but
    # the input embedding (a lookup), plus 12 x layers x attention width x the sequence
    # length (here every row is one sequence of a.seq tokens).
    flops_per_token = 6 * (params - a.vocab * a.hidden) + 12 * a.layers * a.hidden * a.seq
    print(json.dumps({
        "device": a.device, "dtype": str(dtype), "flops_per_token": flops_per_token,
        "mfu": flops_per_token * tps / (a.peak_tflops * 1e12) if a.device == "cuda" else None,
        "impl": "torch-compile" if a.compile else "pytorch-eager", "params": params,
        "threads": torch.get_num_threads(), "step_seconds": times,
        "phase_seconds": {k: sum(p[k] for p in phases) / len(phases) for k in phases[0]},
        "tokens_per_second": tps,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def run(cmd, env):
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--janus", default="target/release/janus")
    p.add_argument("--janus-before", help="a second janus binary (e.g. the last commit's) run as its own side, for an A/B in the same run")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--torch-worker", action="store_true")
    p.add_argument("--compile", action="store_true", help="(worker) the loop under torch.compile")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile column")
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
    impls = [("janus", ours_cmd), ("pytorch-eager", torch_cmd)]
    if a.janus_before:
        impls.insert(1, ("janus-before", [a.janus_before, "bench-train"] + common))
    if not a.no_compile:
        impls.append(("torch-compile", torch_cmd + ["--compile"]))
    results = {name: [] for name, _ in impls}
    for rep in range(a.reps):
        # Rotate the order so no implementation always runs first (or after another).
        for name, cmd in impls[rep % len(impls):] + impls[:rep % len(impls)]:
            r = run(cmd, env)
            results[name].append(r)
            print(f"rep {rep + 1}/{a.reps} {name:14s} {r['tokens_per_second']:9.1f} tokens/s  peak RSS {r['peak_rss_mib']:.0f} MiB", file=sys.stderr)
    med = {k: statistics.median(r["tokens_per_second"] for r in v) for k, v in results.items()}
    rss = {k: statistics.median(r["peak_rss_mib"] for r in v) for k, v in results.items()}
    params = results["janus"][0]["params"]
    print(f"\nModel: Mistral-style, {a.layers} layers, hidden {a.hidden}, {a.heads} heads / {a.kv_heads} KV, vocab {a.vocab}, "
          f"{params / 1e6:.1f}M params; batch {a.batch} x seq {a.seq}; fp32 CPU, {a.threads} threads; "
          f"median of {a.reps} runs x {a.steps} timed steps\n")
    print("| implementation | tokens/s (median) | speed vs PyTorch eager | speed vs torch.compile | peak RSS MiB (median) | RSS vs PyTorch eager |")
    print("|---|---|---|---|---|---|")
    base = "pytorch-eager"
    for k in results:
        vs_compile = f"{med[k] / med['torch-compile']:.3f}x" if "torch-compile" in med else "-"
        print(f"| {k} | {med[k]:.0f} | {med[k] / med[base]:.3f}x | {vs_compile} | {rss[k]:.0f} | {rss[k] / rss[base]:.2f}x |")
    names = ["forward", "head_loss", "backward", "optimizer", "collectives"]
    print("\nPer-phase seconds per step (median over runs of each run's mean):\n")
    print("| implementation | " + " | ".join(names) + " | step |")
    print("|---|" + "---|" * (len(names) + 1))
    for k, v in results.items():
        cells = [statistics.median(r["phase_seconds"][n] for r in v) for n in names]
        step = statistics.median(statistics.mean(r["step_seconds"]) for r in v)
        print(f"| {k} | " + " | ".join(f"{c:.3f}" for c in cells) + f" | {step:.3f} |")


if __name__ == "__main__":
    main()
