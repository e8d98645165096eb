"""Streaming throughput of a sharded dataset, side by side in one run:

- `janus data stream --stats` (fetch, sha256-check, decompress, parse, shuffle) from
  file:// and from a real S3 server (versitygw on loopback), for one rank reading the
  whole dataset and for rank 0 of 4 (its share);
- the raw read speed of the same shard bytes: `cat` of the files, and whole-object
  ranged GETs through the same S3 client (`--raw`, no checks or decoding);
- the trainer's own consumption (records/s) on the tiny benchmark model;
- token shards (`janus data shard --tokenizer`) of the same records, streamed as ids,
  next to the raw read of their own bytes; and the record parse with serde_json (what
  the trainer uses) next to sonic-rs (SIMD).

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
        # The tokenizer of the token shards (and of the trainer's run below).
        run(janus, "init-model", "--out", f"{tmp}/model", "--train-tokenizer-on", src, "--vocab-size", "1024")
        tok = ["--tokenizer", f"{tmp}/model/tokenizer.json", "--prompt-format", "mistral"]
        with versitygw(f"{tmp}/s3") as s3env:
            t = time.perf_counter()
            shard = json.loads(run(janus, "data", "shard", "--input", src, "--output", f"{tmp}/ds").stdout)
            shard_secs = time.perf_counter() - t
            run(janus, "data", "shard", "--input", src, "--output", "s3://bench/ds", env=s3env)
            t = time.perf_counter()
            tshard = json.loads(run(janus, "data", "shard", "--input", src, "--output", f"{tmp}/tok", *tok).stdout)
            tshard_secs = time.perf_counter() - t
            run(janus, "data", "shard", "--input", src, "--output", "s3://bench/tok", *tok, env=s3env)

            def files(d):
                return sorted(f"{d}/{f}" for f in os.listdir(d) if f.endswith(".zst"))

            def stream(target, *extra):
                out = run(janus, "data", "stream", "--dataset", target, "--stats", *extra, env=s3env).stdout
                return json.loads(out.strip().splitlines()[-1])

            def cat(paths, nbytes):
                def go():
                    t = time.perf_counter()
                    subprocess.run(["cat", *paths], check=True, stdout=subprocess.DEVNULL)
                    secs = time.perf_counter() - t
                    return {"seconds": secs, "mb_per_second": nbytes / secs / 1e6}
                return go

            # (name, baseline row name, measure): medians of reps, rows alternate within a rep.
            plan = [
                ("raw: cat of the record shard files", None, cat(files(f"{tmp}/ds"), shard["bytes"])),
                ("raw: S3 GET of the record shard objects", None, lambda: stream("s3://bench/ds", "--raw")),
                ("records, file://, 1 rank (serde_json)", "raw: cat of the record shard files",
                 lambda: stream(f"file://{tmp}/ds")),
                ("records, S3, 1 rank (serde_json, the trainer's)", "raw: S3 GET of the record shard objects",
                 lambda: stream("s3://bench/ds")),
                ("records, S3, 1 rank (sonic-rs)", "raw: S3 GET of the record shard objects",
                 lambda: stream("s3://bench/ds", "--parser", "sonic")),
                ("records, S3, rank 0 of 4 (serde_json)", "raw: S3 GET of the record shard objects",
                 lambda: stream("s3://bench/ds", "--world", "4", "--rank", "0")),
                ("raw: cat of the token shard files", None, cat(files(f"{tmp}/tok"), tshard["bytes"])),
                ("raw: S3 GET of the token shard objects", None, lambda: stream("s3://bench/tok", "--raw")),
                ("tokens, file://, 1 rank", "raw: cat of the token shard files", lambda: stream(f"file://{tmp}/tok")),
                ("tokens, S3, 1 rank", "raw: S3 GET of the token shard objects", lambda: stream("s3://bench/tok")),
                ("tokens, S3, rank 0 of 4", "raw: S3 GET of the token shard objects",
                 lambda: stream("s3://bench/tok", "--world", "4", "--rank", "0")),
            ]
            runs = {name: [] for name, _, _ in plan}
            for _ in range(a.reps):
                for name, _, fn in plan:
                    runs[name].append(fn())
            rows = []
            for name, base, _ in plan:
                rs = sorted(runs[name], key=lambda r: r["seconds"])
                rows.append((name, base, rs[len(rs) // 2]))

            # The same process reading a one-block dataset: the RSS every janus process
            # has (libtorch's libraries), so the stream's own memory is the difference.
            with open(f"{tmp}/one.jsonl", "w") as f:
                f.write(open(src).readline())
            run(janus, "data", "shard", "--input", f"{tmp}/one.jsonl", "--output", f"{tmp}/one")
            base_rss = stream(f"file://{tmp}/one")["peak_rss_mib"]

            # The trainer's consumption: tiny model, streaming the same dataset.
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

    print(f"\nStreaming {a.records} records ({src_bytes / 1e6:.0f} MB of JSON lines), median of {a.reps}.")
    print(f"Record shards: {shard['shards']} shards, {shard['blocks']} blocks, {shard['bytes'] / 1e6:.0f} MB zstd; "
          f"`janus data shard`: {shard_secs:.1f} s ({src_bytes / shard_secs / 1e6:.0f} MB/s of input).")
    print(f"Token shards: {tshard['shards']} shards, {tshard['blocks']} blocks, {tshard['bytes'] / 1e6:.0f} MB zstd "
          f"({tshard['uncompressed_bytes'] / 1e6:.0f} MB of ids); `janus data shard --tokenizer`: {tshard_secs:.1f} s "
          f"({a.records / tshard_secs:.0f} records/s, {src_bytes / tshard_secs / 1e6:.1f} MB/s of input).\n")
    print("| reader | samples/s | MB/s (shard bytes) | vs raw read of the same bytes | vs trainer | peak RSS MiB (over a 1-block stream) |")
    print("|---|---|---|---|---|---|")
    by = {n: r for n, _, r in rows}
    for name, base, r in rows:
        if base is None:
            print(f"| {name} | | {r['mb_per_second']:.0f} | 1.00x | | |")
            continue
        print(f"| {name} | {r['samples_per_second']:.0f} | {r['mb_per_second']:.0f} "
              f"| {r['mb_per_second'] / by[base]['mb_per_second']:.2f}x | {r['samples_per_second'] / train_sps:.0f}x "
              f"| {r['peak_rss_mib']:.0f} (+{r['peak_rss_mib'] - base_rss:.0f}) |")
    print(f"| trainer (tiny model, seq 512, 8 records/step) | {train_sps:.1f} | | | 1x | |")
    sonic = by["records, S3, 1 rank (sonic-rs)"]["samples_per_second"]
    serde = by["records, S3, 1 rank (serde_json, the trainer's)"]["samples_per_second"]
    print(f"\nRecord parse: sonic-rs {sonic:.0f} records/s vs serde_json {serde:.0f} records/s = {sonic / serde:.2f}x")
    print(json.dumps({"rows": rows, "trainer_samples_per_second": train_sps, "shard_seconds": shard_secs,
                      "token_shard_seconds": tshard_secs, "base_rss_mib": base_rss}))


if __name__ == "__main__":
    main()
