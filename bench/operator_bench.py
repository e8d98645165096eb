#!/usr/bin/env python3
"""Operator benchmark on the kwok test cluster (issue 5, "Performance").

Creates JOBS JanusTrainingJobs x WORKERS workers (default 200 x 8 = 1,600 pods) on a
fresh control plane (tests/controlplane/up.sh) with the real janus-operator binary and
prints a table:
  - time from the first `kubectl create` to all pods created, and to every job Running
  - reconcile latency p50 / p99 (histogram_quantile over the operator's
    janus_operator_reconcile_duration_seconds)
  - API requests per job: the operator's own (janus_operator_api_requests_total) and
    the API server's total (apiserver_request_total, all components: kwok, scheduler, ...)
  - operator peak RSS (VmHWM)

Usage: bench/operator_bench.py [--jobs 200] [--workers 8] [--operator PATH] [--keep]
Needs the operator built (`cargo build --release -p janus-operator`).
"""

import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CP = os.environ.get("JANUS_CONTROLPLANE", os.path.join(ROOT, "tests", "controlplane"))


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


def metrics_text(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def parse(text):
    """{(name, frozenset(labels)): value} of a Prometheus text exposition."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        if "{" in name_labels:
            name, _, rest = name_labels.partition("{")
            labels = frozenset(
                tuple(kv.split("=", 1)) for kv in rest.rstrip("}").replace('"', "").split(",") if kv
            )
        else:
            name, labels = name_labels, frozenset()
        try:
            out[(name, labels)] = float(value)
        except ValueError:
            pass
    return out


def total(m, name):
    return sum(v for (n, _), v in m.items() if n == name)


def quantile(m, name, q):
    """histogram_quantile over `<name>_bucket` (linear within the bucket)."""
    buckets = sorted(
        (float(dict(l)["le"]) if dict(l)["le"] != "+Inf" else math.inf, v)
        for (n, l), v in m.items()
        if n == name + "_bucket"
    )
    count = buckets[-1][1]
    if count == 0:
        return float("nan")
    rank = q * count
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / max(c - prev_c, 1e-9))
        prev_le, prev_c = le, c
    return prev_le


def quantile_sum(m, name, q, keep=lambda labels: True):
    """histogram_quantile over `<name>_bucket` summed over the label sets `keep` accepts."""
    agg = {}
    for (n, l), v in m.items():
        d = dict(l)
        if n == name + "_bucket" and keep(d):
            agg[d["le"]] = agg.get(d["le"], 0.0) + v
    fake = {(name + "_bucket", frozenset({("le", le)})): v for le, v in agg.items()}
    return quantile(fake, name, q) if fake else float("nan")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--operator", default=None)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--keep", action="store_true", help="keep the cluster running")
    a = ap.parse_args()

    op_bin = a.operator or next(
        (p for p in [
            os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "janus-operator"),
            os.path.join(ROOT, "target", "release", "janus-operator"),
        ] if os.path.exists(p)),
        None,
    )
    if not op_bin:
        sys.exit("janus-operator not built: cargo build --release -p janus-operator (or --operator PATH)")

    pods_total = a.jobs * a.workers
    nodes = max(4, math.ceil(pods_total / 240))
    work = tempfile.mkdtemp(prefix="janus-bench-")
    cdir = os.path.join(work, "cluster")
    print(f"starting a control plane with {nodes} kwok nodes in {cdir}", file=sys.stderr)
    subprocess.run([os.path.join(CP, "up.sh"), cdir, str(nodes)], check=True, stdout=subprocess.DEVNULL)
    env = dict(os.environ, KUBECONFIG=os.path.join(cdir, "kubeconfig"))
    binpath = sh(os.path.join(CP, "build.sh")).strip().splitlines()[-1]
    kubectl = os.path.join(binpath, "kubectl")
    op = None
    try:
        sh(kubectl, "apply", "--server-side", "-f", os.path.join(ROOT, "charts/janus-operator/crds"), env=env)
        sh(kubectl, "wait", "--for=condition=Established", "crd/janustrainingjobs.janus.dev", env=env)
        port = free_port()
        op_log = open(os.path.join(work, "operator.log"), "w")
        op = subprocess.Popen(
            [op_bin, "--no-leader-election", f"--http-addr=127.0.0.1:{port}"],
            env=dict(env, RUST_LOG="warn"), stdout=op_log, stderr=subprocess.STDOUT,
        )
        murl = f"http://127.0.0.1:{port}/metrics"
        for _ in range(100):
            if op.poll() is not None:
                sys.exit(f"{op_bin} exited with {op.returncode}; log: {op_log.name}")
            try:
                metrics_text(murl)
                break
            except OSError:
                time.sleep(0.1)
        else:
            sys.exit(f"{op_bin} did not serve {murl}; log: {op_log.name}")
        time.sleep(1.0)  # initial lists done
        api0 = total(parse(sh(kubectl, "get", "--raw", "/metrics", env=env)), "apiserver_request_total")
        op0 = total(parse(metrics_text(murl)), "janus_operator_api_requests_total")

        docs = []
        for i in range(a.jobs):
            docs.append({
                "apiVersion": "janus.dev/v1alpha1", "kind": "JanusTrainingJob",
                "metadata": {"name": f"bench-{i:04d}", "namespace": "default"},
                "spec": {
                    "method": "sft",
                    "model": {"url": "s3://models/mistral-7b-v0.2"},
                    "dataset": {"urls": ["s3://data/mfc/train.parquet"]},
                    "workers": {"replicas": a.workers, "gpusPerWorker": 0, "image": "ghcr.io/janus/trainer:bench",
                                "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]},
                    "checkpoint": {"url": "s3://checkpoints"},
                    "output": {"url": "s3://models/out"},
                },
            })
        manifest = os.path.join(work, "jobs.json")
        with open(manifest, "w") as f:
            json.dump({"apiVersion": "v1", "kind": "List", "items": docs}, f)

        t0 = time.monotonic()
        sh(kubectl, "create", "-f", manifest, env=env)
        t_applied = time.monotonic() - t0
        t_created = t_running = None
        # Cheap polls (the API server shares the 2 cores): the pod count from a
        # limit=1 list's remainingItemCount, the job phases from one list of the CRs.
        def pod_count():
            r = json.loads(sh(kubectl, "get", "--raw", "/api/v1/namespaces/default/pods?limit=1", env=env))
            return len(r["items"]) + r["metadata"].get("remainingItemCount", 0)

        while time.monotonic() - t0 < a.timeout:
            if t_created is None and pod_count() >= pods_total:
                t_created = time.monotonic() - t0
            if t_created is not None:
                r = json.loads(sh(kubectl, "get", "--raw",
                                  "/apis/janus.dev/v1alpha1/namespaces/default/janustrainingjobs", env=env))
                phases = [(j.get("status") or {}).get("phase") for j in r["items"]]
                if len(phases) == a.jobs and all(p == "Running" for p in phases):
                    t_running = time.monotonic() - t0
                    break
            time.sleep(0.5 if t_created is None else 1.0)
        time.sleep(2.0)  # let the last status writes land
        m = parse(metrics_text(murl))
        apim = parse(sh(kubectl, "get", "--raw", "/metrics", env=env))
        api1 = total(apim, "apiserver_request_total")
        writes = lambda d: d.get("verb") in ("POST", "PATCH", "PUT", "DELETE")
        api_p99 = quantile_sum(apim, "apiserver_request_duration_seconds", 0.99, writes)
        api_p50 = quantile_sum(apim, "apiserver_request_duration_seconds", 0.5, writes)
        op1 = total(m, "janus_operator_api_requests_total")
        with open(f"/proc/{op.pid}/status") as f:
            hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM"))
        with open(f"/proc/{op.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        reconciles = total(m, "janus_operator_reconcile_total")
        errors = total(m, "janus_operator_reconcile_errors_total")

        fmt = lambda t: "not reached" if t is None else f"{t:.1f} s"
        rows = [
            ("jobs x workers (pods)", f"{a.jobs} x {a.workers} ({pods_total}) on {nodes} kwok nodes"),
            ("kubectl create of all jobs", f"{t_applied:.1f} s"),
            ("apply -> all pods created", fmt(t_created) + "  (goal < 60 s)"),
            ("apply -> every job Running", fmt(t_running)),
            ("reconciles (errors)", f"{reconciles:.0f} ({errors:.0f})"),
            ("reconcile p50", f"{quantile(m, 'janus_operator_reconcile_duration_seconds', 0.5) * 1000:.1f} ms"),
            ("reconcile p99", f"{quantile(m, 'janus_operator_reconcile_duration_seconds', 0.99) * 1000:.1f} ms  (goal < 100 ms)"),
            ("API server write latency p50 / p99 (all clients)", f"{api_p50 * 1000:.0f} / {api_p99 * 1000:.0f} ms"),
            ("operator API requests per job", f"{(op1 - op0) / a.jobs:.1f}"),
            ("API server requests per job (all components)", f"{(api1 - api0) / a.jobs:.1f}"),
            ("operator CPU time", f"{cpu_s:.1f} s"),
            ("operator peak RSS", f"{hwm / 1024:.1f} MiB  (goal < 100 MiB)"),
        ]
        w = max(len(k) for k, _ in rows)
        print(f"| {'metric'.ljust(w)} | value |")
        print(f"|{'-' * (w + 2)}|-------|")
        for k, v in rows:
            print(f"| {k.ljust(w)} | {v} |")
        if t_created is None or t_running is None:
            sys.exit(1)
    finally:
        if op is not None:
            op.terminate()
            op.wait(timeout=10)
        if a.keep:
            print(f"cluster kept: KUBECONFIG={cdir}/kubeconfig; stop with {CP}/down.sh {cdir}", file=sys.stderr)
        else:
            subprocess.run([os.path.join(CP, "down.sh"), cdir], stdout=subprocess.DEVNULL)
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
