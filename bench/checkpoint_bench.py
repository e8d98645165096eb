"""Checkpoint save and load seconds for a ~124M-parameter Mistral-style model (model +
AdamW moments, about 1.5 GB), to local disk and to a real S3 server (versitygw on
loopback), side by side in one run with a raw copy of the same bytes: `cp -r` for the
local disk, and for S3 an upload and a download of the same files with the same client
(parallel multipart parts / parallel ranges, no hashing or checks).

Then the step loop's stall per save, to both targets: a synchronous save against a
background one (`checkpoint.async`: a copy into reusable host buffers, then the
write on a thread) of the same state, and how fast compute runs while the background
save is in flight (the loop's own work shares the cores with it). `--stall-only` skips
the save/load table.

  JANUS_VERSITYGW=~/.cache/janus/versitygw-v1.8.0/versitygw \\
    python bench/checkpoint_bench.py --janus target/release/janus --reps 3
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time

from s3server import versitygw



def main():
    p = argparse.ArgumentParser()
    p.add_argument("--janus", default="target/release/janus")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--stall-only", action="store_true")
    a = p.parse_args()
    janus = os.path.abspath(a.janus)
    with tempfile.TemporaryDirectory() as tmp:
        run = lambda *cmd, **kw: subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)
        run(janus, "sample-data", "--out", f"{tmp}/data", "--instructions", "16")
        cfg = dict(architectures=["MistralForCausalLM"], model_type="mistral", vocab_size=32000, hidden_size=768,
                   intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                   rms_norm_eps=1e-5, rope_theta=1e6, max_position_embeddings=32768)
        json.dump(cfg, open(f"{tmp}/config.json", "w"))
        run(janus, "init-model", "--config", f"{tmp}/config.json", "--train-tokenizer-on", f"{tmp}/data/sft.jsonl",
            "--out", f"{tmp}/model")
        with versitygw(f"{tmp}/s3") as s3env:
            stalls = []
            for name, target in [("local disk", f"{tmp}/stall"), ("S3 (versitygw, loopback)", "s3://bench/stall")]:
                r = subprocess.run([janus, "bench-checkpoint", "--model", f"{tmp}/model", "--dir", target,
                                    "--reps", str(a.reps), "--stall"], env=s3env, capture_output=True, text=True)
                if r.returncode != 0:
                    raise SystemExit(f"bench-checkpoint --stall {target} failed:\n{r.stderr[-3000:]}")
                stalls.append((name, json.loads(r.stdout.strip().splitlines()[-1])))
            if a.stall_only:
                print_stalls(stalls, a.reps)
                return
            rows = []
            for name, target, extra in [("local disk", f"{tmp}/disk", []),
                                        ("S3 (versitygw, loopback)", "s3://bench/ckpt", ["--raw"])]:
                r = subprocess.run([janus, "bench-checkpoint", "--model", f"{tmp}/model", "--dir", target,
                                    "--reps", str(a.reps), *extra], env=s3env, capture_output=True, text=True)
                if r.returncode != 0:
                    raise SystemExit(f"bench-checkpoint {target} failed:\n{r.stderr[-3000:]}")
                rows.append((name, json.loads(r.stdout.strip().splitlines()[-1])))
            # Raw baseline: copying the same bytes (the disk checkpoint) with cp, with and
            # without waiting for the disk (a save leaves its bytes in the page cache, as
            # `cp` does; neither calls fsync).
            src = f"{tmp}/disk/bench"
            step = sorted(d for d in os.listdir(src) if d.startswith("step-"))[-1]
            cp, cp_sync = [], []
            for i in range(a.reps):
                for sync, times in [(False, cp), (True, cp_sync)]:
                    dst = f"{tmp}/cp-{i}-{sync}"
                    subprocess.run(["sync"], check=True)
                    t = time.perf_counter()
                    subprocess.run(["cp", "-r", f"{src}/{step}", dst], check=True)
                    if sync:
                        subprocess.run(["sync"], check=True)
                    times.append(time.perf_counter() - t)
                    shutil.rmtree(dst)
    med = statistics.median
    nbytes = rows[0][1]["checkpoint_bytes"]
    print(f"\nCheckpoint of a {rows[0][1]['params'] / 1e6:.0f}M-parameter model with AdamW state "
          f"({nbytes / 1e9:.2f} GB), median of {a.reps}; sha256 of every file on save and load\n")
    print("| target | save s | load s | peer (same bytes, same run) | peer s | save / peer | load / peer |")
    print("|---|---|---|---|---|---|---|")
    local = rows[0][1]
    print(f"| local disk | {local['save_seconds']:.2f} | {local['load_seconds']:.2f} | `cp -r` (page cache) "
          f"| {med(cp):.2f} | {local['save_seconds'] / med(cp):.2f}x | {local['load_seconds'] / med(cp):.2f}x |")
    print(f"| | | | `cp -r` + `sync` | {med(cp_sync):.2f} | {local['save_seconds'] / med(cp_sync):.2f}x "
          f"| {local['load_seconds'] / med(cp_sync):.2f}x |")
    s3 = rows[1][1]
    print(f"| S3 (versitygw, loopback) | {s3['save_seconds']:.2f} | {s3['load_seconds']:.2f} "
          f"| raw upload / download (same client, parallel parts, no checks) "
          f"| {s3['raw_save_seconds']:.2f} / {s3['raw_load_seconds']:.2f} "
          f"| {s3['save_seconds'] / s3['raw_save_seconds']:.2f}x | {s3['load_seconds'] / s3['raw_load_seconds']:.2f}x |")
    print_stalls(stalls, a.reps)
    print(json.dumps({"rows": rows, "cp_seconds": cp, "cp_sync_seconds": cp_sync}))


def print_stalls(stalls, reps):
    first = stalls[0][1]
    print(f"\nStep-loop stall per checkpoint of the same model ({first['checkpoint_bytes'] / 1e9:.2f} GB of "
          f"weights and AdamW state), median of {reps} after a first save; goal: stall <= 10% of the synchronous save\n")
    print("| target | synchronous save s | async stall s | stall / sync | background save s "
          "| compute rate during it | first async stall s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in stalls:
        print(f"| {name} | {r['sync_save_seconds']:.2f} | {r['async_stall_seconds']:.2f} | "
              f"{100 * r['stall_over_sync']:.1f}% | {r['async_total_seconds']:.2f} | "
              f"{100 * r['compute_rate_during_background']:.0f}% | {r['first_async_stall_seconds']:.2f} |")
    print(json.dumps({"stalls": stalls}))


if __name__ == "__main__":
    main()
