"""Checkpoint save and load seconds for a ~124M-parameter Mistral-style model (model +
AdamW moments, about 1.5 GB), to local disk and to a real S3 server (versitygw on
loopback), side by side with a raw `cp` of the same bytes, in one run.

  JANUS_VERSITYGW=~/.cache/janus/versitygw-v1.8.0/versitygw \\
    python bench/checkpoint_bench.py --janus target/release/janus --reps 3
"""

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time

from s3server import versitygw



def main():
    p = argparse.ArgumentParser()
    p.add_argument("--janus", default="target/release/janus")
    p.add_argument("--reps", type=int, default=3)
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
            rows = []
            for name, target in [("local disk", f"{tmp}/disk"), ("S3 (versitygw, loopback)", "s3://bench/ckpt")]:
                out = run(janus, "bench-checkpoint", "--model", f"{tmp}/model", "--dir", target, "--reps", str(a.reps),
                          env=s3env).stdout
                rows.append((name, json.loads(out.strip().splitlines()[-1])))
            # Raw baseline: copying the same bytes (the disk checkpoint) with cp.
            src = f"{tmp}/disk/bench"
            step = sorted(os.listdir(src))[-1] if os.path.isdir(src) else None
            times = []
            for i in range(a.reps):
                dst = f"{tmp}/cp-{i}"
                t = time.perf_counter()
                subprocess.run(["cp", "-r", f"{src}/{step}", dst], check=True)
                subprocess.run(["sync"], check=True)
                times.append(time.perf_counter() - t)
                shutil.rmtree(dst)
            times.sort()
    nbytes = rows[0][1]["checkpoint_bytes"]
    print(f"\nCheckpoint of a {rows[0][1]['params'] / 1e6:.0f}M-parameter model with AdamW state "
          f"({nbytes / 1e9:.2f} GB), median of {a.reps}; sha256 of every file on save and load\n")
    print("| target | save s | load s | save GB/s |")
    print("|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['save_seconds']:.2f} | {r['load_seconds']:.2f} | {nbytes / r['save_seconds'] / 1e9:.2f} |")
    print(f"| raw `cp -r` of the same files + sync | {times[len(times) // 2]:.2f} | - | {nbytes / times[len(times) // 2] / 1e9:.2f} |")


if __name__ == "__main__":
    main()
