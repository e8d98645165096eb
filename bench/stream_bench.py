"""Streaming throughput of a sharded dataset, side by side in one run:

- `janus data stream --stats` (fetch, sha256-check, decompress, parse, shuffle) from
  file:// and from a real S3 server (versitygw on loopback), for one rank reading the
  whole dataset and for rank 0 of 4 (its share);
- the raw read speed of the same shard bytes: `cat` of the files, and whole-object
  ranged GETs through the same S3 client (`--raw`, no checks or decoding);
- the trainer's own consumption (records/s) on the tiny benchmark model.

  JANUS_VERSITYGW=~/.cache/janus/versitygw-v1.8.0/versitygw \\
    python bench/stream_bench.py --janus target/release/janus --reps 3

Records are synthetic Multifaceted-Collection-shaped SFT records (system, prompt,
output of about 0.4, 0.5 and 1.5 kB of Zipf-distributed words), so they compress
about as much as real text does.
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import tempfile
import time

from s3server import versitygw



def words(rng, vocab, weights, n):
    return " ".join(rng.choices(vocab, weights, k=n))


def write_records(path, n, seed=0):
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(20000)]
    weights = [1.0 / (i + 1) for i in range(len(vocab))]
    with open(path, "w") as f:
        for i in range(n):
            rec = {
                "main_source": "bench",
                "original_source": "synthetic",
                "system": words(rng, vocab, weights, 60),
                "prompt": words(rng, vocab, weights, 80),
                "output": words(rng, vocab, weights, 250),
            }
            f.write(json.dumps(rec) + "\n")


def median_of(reps, fn):
    runs = [fn() for _ in range(reps)]
    key = lambda r: r["seconds"]
    runs.sort(key=key)
    return runs[len(runs) // 2], runs


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--janus", default="target/release/janus")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--train-steps", type=int, default=10)
    a = p.parse_args()
    janus = os.path.abspath(a.janus)
    run = lambda *cmd, **kw: subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)
    with tempfile.TemporaryDirectory() as tmp:
        src = f"{tmp}/records.jsonl"
        write_records(src, a.records)
        src_bytes = os.path.getsize(src)
        with versitygw(f"{tmp}/s3") as s3env:
            t = time.perf_counter()
            shard = json.loads(run(janus, "data", "shard", "--input", src, "--output", f"{tmp}/ds").stdout)
            shard_secs = time.perf_counter() - t
            run(janus, "data", "shard", "--input", src, "--output", "s3://bench/ds", env=s3env)
            shard_files = sorted(f"{tmp}/ds/{f}" for f in os.listdir(f"{tmp}/ds") if f.endswith(".zst"))

            def stream(target, *extra):
                out = run(janus, "data", "stream", "--dataset", target, "--stats", *extra, env=s3env).stdout
                return json.loads(out.strip().splitlines()[-1])

            def cat():
                t = time.perf_counter()
                subprocess.run(["cat", *shard_files], check=True, stdout=subprocess.DEVNULL)
                secs = time.perf_counter() - t
                return {"seconds": secs, "mb_per_second": shard["bytes"] / secs / 1e6}

            rows = []
            rows.append(("raw: cat of the shard files", median_of(a.reps, cat)[0]))
            rows.append(("raw: S3 GET of the shard objects", median_of(a.reps, lambda: stream("s3://bench/ds", "--raw"))[0]))
            for name, target in [("file://", f"file://{tmp}/ds"), ("S3", "s3://bench/ds")]:
                rows.append((f"stream {name}, 1 rank (all)", median_of(a.reps, lambda: stream(target))[0]))
                rows.append((f"stream {name}, rank 0 of 4", median_of(
                    a.reps, lambda: stream(target, "--world", "4", "--rank", "0"))[0]))

            # The same process reading a one-block dataset: the RSS every janus process
            # has (libtorch's libraries), so the stream's own memory is the difference.
            with open(f"{tmp}/one.jsonl", "w") as f:
                f.write(open(src).readline())
            run(janus, "data", "shard", "--input", f"{tmp}/one.jsonl", "--output", f"{tmp}/one")
            base_rss = stream(f"file://{tmp}/one")["peak_rss_mib"]

            # The trainer's consumption: tiny model, streaming the same dataset.
            run(janus, "init-model", "--out", f"{tmp}/model", "--train-tokenizer-on", src, "--vocab-size", "1024")
            per_step = 8
            t_runs = []
            for i in range(a.reps):
                r = subprocess.run([janus, "train", "--preset", "tiny", "--set", f"job=bench{i}",
                                    "--set", f"model.path={tmp}/model", "--set", f"data.train=[{tmp}/ds]",
                                    "--set", "data.packing=false", "--set", "data.max_seq_len=512",
                                    "--set", f"hyperparameters.max_steps={a.train_steps}",
                                    "--set", "checkpoint.every_steps=0", "--set", f"checkpoint.dir={tmp}/ckpt",
                                    "--set", f"output_dir={tmp}/out{i}"],
                                   check=True, capture_output=True, text=True)
                secs = next(json.loads(l)["seconds"] for l in r.stderr.splitlines()
                            if '"training finished"' in l)
                t_runs.append(a.train_steps * per_step / secs)
            train_sps = statistics.median(t_runs)

    print(f"\nStreaming {a.records} records ({src_bytes / 1e6:.0f} MB of JSON lines; {shard['shards']} shards, "
          f"{shard['blocks']} blocks, {shard['bytes'] / 1e6:.0f} MB zstd), median of {a.reps}.")
    print(f"Sharding (`janus data shard`, file -> file): {shard_secs:.1f} s, {src_bytes / shard_secs / 1e6:.0f} MB/s of input.\n")
    raw = {n: r for n, r in rows if n.startswith("raw")}
    print("| reader | samples/s | MB/s (shard bytes) | vs raw read | vs trainer | peak RSS MiB (over a 1-block stream) |")
    print("|---|---|---|---|---|---|")
    for name, r in rows:
        if name.startswith("raw"):
            print(f"| {name} | | {r['mb_per_second']:.0f} | 1.00x | | |")
            continue
        base = raw["raw: cat of the shard files" if "file" in name else "raw: S3 GET of the shard objects"]
        print(f"| {name} | {r['samples_per_second']:.0f} | {r['mb_per_second']:.0f} "
              f"| {r['mb_per_second'] / base['mb_per_second']:.2f}x | {r['samples_per_second'] / train_sps:.0f}x "
              f"| {r['peak_rss_mib']:.0f} (+{r['peak_rss_mib'] - base_rss:.0f}) |")
    print(f"| trainer (tiny model, seq 512, 8 records/step) | {train_sps:.1f} | | | 1x | |")
    print(json.dumps({"rows": rows, "trainer_samples_per_second": train_sps, "shard_seconds": shard_secs,
                      "base_rss_mib": base_rss}))


if __name__ == "__main__":
    main()
