"""All-reduce bus bandwidth: our CPU ring (`janus bench-allreduce`) vs PyTorch's
torch.distributed gloo all_reduce (same torch 2.11), 2 ranks on loopback, f32 sums,
side by side in one run (alternating repetitions). Prints a Markdown table of medians.

  python bench/allreduce_bench.py --janus target/release/janus --reps 3
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gloo_worker(rank, world, port, sizes, iters, warmup, out):
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    results = {}
    for mib in sizes:
        t = torch.ones((mib << 20) // 4, dtype=torch.float32)
        times = []
        for i in range(warmup + iters):
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(t)
            if i >= warmup:
                times.append(time.perf_counter() - start)
        results[mib] = statistics.median(times)
    if rank == 0:
        out.put(results)
    dist.destroy_process_group()


def run_gloo(world, sizes, iters, warmup):
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=gloo_worker, args=(r, world, port, sizes, iters, warmup, q)) for r in range(world)]
    for p in procs:
        p.start()
    res = q.get()
    for p in procs:
        p.join()
    return res


def run_janus(janus, world, sizes, iters, warmup):
    cmd = [janus, "launch", "--nproc", str(world), "--", "bench-allreduce",
           "--sizes-mib", ",".join(map(str, sizes)), "--iters", str(iters), "--warmup", str(warmup)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    res = {}
    for line in out.splitlines():
        line = line.split("] ", 1)[-1]
        if line.startswith("{"):
            r = json.loads(line)
            res[r["mib"]] = r["median_seconds"]
    return res


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--janus", default="target/release/janus")
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--sizes-mib", default="1,4,16,64,256")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    a = p.parse_args()
    sizes = [int(s) for s in a.sizes_mib.split(",")]
    runs = {"janus-ring": [], "gloo": []}
    for rep in range(a.reps):
        order = [("janus-ring", lambda: run_janus(a.janus, a.world, sizes, a.iters, a.warmup)),
                 ("gloo", lambda: run_gloo(a.world, sizes, a.iters, a.warmup))]
        for name, f in order[:: 1 if rep % 2 == 0 else -1]:
            runs[name].append(f())
            print(f"rep {rep + 1}/{a.reps} {name} done", file=sys.stderr)
    n = a.world
    bus = lambda mib, secs: (mib << 20) * 2 * (n - 1) / n / secs / 1e9
    print(f"\nAll-reduce, f32 sum, {n} ranks on loopback, {os.cpu_count()} cores; bus bandwidth GB/s "
          f"(bytes x 2(n-1)/n / time), median over {a.reps} runs of the per-run median of {a.iters} calls\n")
    print("| size MiB | janus ring GB/s | gloo GB/s | ratio (ours / gloo) |")
    print("|---|---|---|---|")
    for mib in sizes:
        ours = statistics.median(r[mib] for r in runs["janus-ring"])
        gloo = statistics.median(r[mib] for r in runs["gloo"])
        print(f"| {mib} | {bus(mib, ours):.2f} | {bus(mib, gloo):.2f} | {gloo / ours:.2f}x |")


if __name__ == "__main__":
    main()
