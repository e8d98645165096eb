"""Data-parallel scaling on CPU: tokens/s of 1 rank (all cores) vs N ranks (cores / N
threads each, `janus launch`) on the tiny benchmark model, same global batch, side by
side in one run (alternating repetitions). Prints a Markdown table of medians.

  python bench/scaling_bench.py --janus target/release/janus --reps 3
"""

import argparse
import json
import os
import statistics
import subprocess
import sys


def run(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        line = line.split("] ", 1)[-1]
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no result from {cmd}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--janus", default="target/release/janus")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--batch", type=int, default=8, help="global batch (sequences per step)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=6)
    a = p.parse_args()
    common = ["bench-train", f"--steps={a.steps}", "--warmup=2"]
    cases = {
        "1 rank": [a.janus] + common + [f"--batch={a.batch}"],
        f"{a.ranks} ranks": [a.janus, "launch", "--nproc", str(a.ranks), "--"] + common + [f"--batch={a.batch // a.ranks}"],
    }
    results = {k: [] for k in cases}
    for rep in range(a.reps):
        for name, cmd in list(cases.items())[:: 1 if rep % 2 == 0 else -1]:
            r = run(cmd)
            results[name].append(r["tokens_per_second"])
            print(f"rep {rep + 1}/{a.reps} {name}: {r['tokens_per_second']:.0f} tokens/s", file=sys.stderr)
    base = statistics.median(results["1 rank"])
    print(f"\nTiny benchmark model (4 layers, hidden 256, vocab 32000), seq 512, global batch {a.batch}, "
          f"fp32, {os.cpu_count()} cores; median of {a.reps} runs\n")
    print("| ranks | tokens/s (median) | vs 1 rank |")
    print("|---|---|---|")
    for name, v in results.items():
        m = statistics.median(v)
        print(f"| {name} | {m:.0f} | {m / base:.2f}x |")


if __name__ == "__main__":
    main()
