#!/usr/bin/env python3
"""Operator benchmark on the kwok test cluster, side by side with Kubeflow's (issues 5, 14).

One run measures each side REPS times, each time on a fresh control plane
(tests/controlplane/up.sh) with the same number of kwok nodes, in rotating order:

  janus           the real janus-operator binary: JOBS JanusTrainingJobs x WORKERS workers
  kubeflow        the Kubeflow Training Operator v1 (tests/controlplane/build-kubeflow.sh),
                  JOBS PyTorchJobs x (1 Master + WORKERS-1 Workers), as it ships: client
                  rate limit 20 QPS / burst 30, one reconcile at a time
  kubeflow-tuned  the same binary with the client limit lifted (--kube-api-qps 1000
                  --kube-api-burst 2000) and 16 reconciles at a time (--controller-threads,
                  janus-operator's concurrency)

Each side: time from the first `kubectl create` to all pods created, to all pods Running
(pod phase, what kwok does once the scheduler binds), and to every job Running by its own
status (JanusTrainingJob: every worker Running; PyTorchJob: its Master Running); API
requests per job (the operator's own, counted by its HTTP client:
janus_operator_api_requests_total / client-go's rest_client_requests_total; and the API
server's apiserver_request_total, every component); the operator's CPU seconds and peak
RSS (/proc); reconcile p50 / p99 (janus_operator_reconcile_duration_seconds /
controller_runtime_reconcile_time_seconds); and per reconcile the mean time waiting on
the API server and the rest, the operator's own time. Janus measures the wait per
reconcile (janus_operator_reconcile_api_wait_seconds: the time with at least one of its
requests outstanding, as it sends several at once); a Kubeflow reconcile sends one request
at a time, so its wait is the sum of client-go's rest_client_request_duration_seconds
(which build-kubeflow.sh registers), less Events (sent by client-go's broadcaster, outside
any reconcile; janus-operator's too are sent from tasks of their own). It prints the medians, one column per side, and the ratio
Kubeflow / Janus of each (every figure is lower-is-better: > 1 means Janus is ahead).

Usage: bench/operator_bench.py [--jobs 200] [--workers 8] [--reps 3]
         [--sides janus,kubeflow,kubeflow-tuned] [--operator PATH] [--kubeflow DIR]
         [--json FILE] [--keep]
       bench/operator_bench.py --create-only ...   (kubectl create alone, no operator)
       bench/operator_bench.py --table FILE.json ...  (the table of earlier runs)
"""

import argparse
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CP = os.environ.get("JANUS_CONTROLPLANE", os.path.join(ROOT, "tests", "controlplane"))
# Kubeflow's webhook server reads its certificate from this fixed directory (a Secret
# volume in its Deployment); no webhook is registered here, but the manager waits for it.
KUBEFLOW_CERT_DIR = "/tmp/k8s-webhook-server/serving-certs"
SIDES = ("janus", "kubeflow", "kubeflow-tuned")
TOLERATIONS = [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]
IMAGE = "ghcr.io/janus/trainer:bench"


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


def wait_established(kubectl, env, crd):
    """kubectl wait, retried: right after the apply the CRD may not be listed yet."""
    for _ in range(60):
        r = subprocess.run([kubectl, "wait", "--for=condition=Established", "--timeout=30s", f"crd/{crd}"],
                           capture_output=True, text=True, env=env)
        if r.returncode == 0:
            return
        time.sleep(0.5)
    raise RuntimeError(f"CRD {crd} not Established: {r.stderr.strip()}")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


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


def total(m, name, keep=lambda labels: True):
    return sum(v for (n, l), v in m.items() if n == name and keep(dict(l)))


def quantile(m, name, q, keep=lambda labels: True):
    """histogram_quantile over `<name>_bucket` summed over the label sets `keep` accepts
    (linear within the bucket, like Prometheus)."""
    agg = {}
    for (n, l), v in m.items():
        d = dict(l)
        if n == name + "_bucket" and keep(d):
            le = math.inf if d["le"] == "+Inf" else float(d["le"])
            agg[le] = agg.get(le, 0.0) + v
    buckets = sorted(agg.items())
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    rank = q * buckets[-1][1]
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / max(c - prev_c, 1e-9))
        prev_le, prev_c = le, c
    return prev_le


def by_label(m, name, label):
    out = {}
    for (n, l), v in m.items():
        if n == name:
            d = dict(l)
            k = d.get(label, "") if isinstance(label, str) else " ".join(d.get(x, "") for x in label)
            out[k] = out.get(k, 0.0) + v
    return out


def diff(after, before):
    """after - before, series by series (counters and histogram buckets)."""
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def proc_figures(pid):
    with open(f"/proc/{pid}/status") as f:
        hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return cpu_s, hwm / 1024


# --- the two operators ---------------------------------------------------------------
class Janus:
    kind = "JanusTrainingJob"
    jobs_path = "/apis/janus.dev/v1alpha1/namespaces/default/janustrainingjobs"

    def __init__(self, binary, extra=()):
        self.binary = binary
        self.extra = list(extra)

    def install(self, kubectl, env, work):
        sh(kubectl, "apply", "--server-side", "-f", os.path.join(ROOT, "charts/janus-operator/crds"), env=env)
        wait_established(kubectl, env, "janustrainingjobs.janus.dev")

    def start(self, env, out):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        return subprocess.Popen(
            [self.binary, "--no-leader-election", f"--http-addr=127.0.0.1:{self.port}", *self.extra],
            env=dict(env, RUST_LOG="warn"), stdout=out, stderr=subprocess.STDOUT,
        )

    def started(self, m):
        return True  # its /metrics answers once connected; the watches list right after

    def job(self, i, workers):
        return {
            "apiVersion": "janus.dev/v1alpha1", "kind": "JanusTrainingJob",
            "metadata": {"name": f"bench-{i:04d}", "namespace": "default"},
            "spec": {
                "method": "sft",
                "model": {"url": "s3://models/mistral-7b-v0.2"},
                "dataset": {"urls": ["s3://data/mfc/train.parquet"]},
                "workers": {"replicas": workers, "gpusPerWorker": 0, "image": IMAGE,
                            "tolerations": TOLERATIONS},
                "checkpoint": {"url": "s3://checkpoints"},
                "output": {"url": "s3://models/out"},
            },
        }

    @staticmethod
    def running(j):
        return (j.get("status") or {}).get("phase") == "Running"

    def figures(self, m):
        rec = lambda d: True
        return {
            "reconciles": total(m, "janus_operator_reconcile_total"),
            "errors": total(m, "janus_operator_reconcile_errors_total"),
            "rec_sum": total(m, "janus_operator_reconcile_duration_seconds_sum", rec),
            "rec_p50": quantile(m, "janus_operator_reconcile_duration_seconds", 0.5, rec),
            "rec_p99": quantile(m, "janus_operator_reconcile_duration_seconds", 0.99, rec),
            "requests": total(m, "janus_operator_api_requests_total"),
            # Measured per reconcile (requests that overlap count once; its Events go
            # out from tasks of their own and are not in it).
            "api_wait_sum": total(m, "janus_operator_reconcile_api_wait_seconds_sum"),
            "own_p50": quantile(m, "janus_operator_reconcile_own_seconds", 0.5),
            "own_p99": quantile(m, "janus_operator_reconcile_own_seconds", 0.99),
            "api_p50": quantile(m, "janus_operator_api_request_duration_seconds", 0.5),
            "api_p99": quantile(m, "janus_operator_api_request_duration_seconds", 0.99),
            "throttle_sum": 0.0,  # kube-rs has no client-side rate limiter
            "by_method": by_label(m, "janus_operator_api_requests_total", "method"),
            "by_resource": by_label(
                m, "janus_operator_api_request_duration_seconds_count", ("method", "resource")
            ),
        }


class Kubeflow:
    kind = "PyTorchJob"
    jobs_path = "/apis/kubeflow.org/v1/namespaces/default/pytorchjobs"
    controller = "pytorchjob-controller"

    def __init__(self, cache_dir, tuned):
        self.binary = os.path.join(cache_dir, "bin", "training-operator")
        self.crd = os.path.join(cache_dir, "crds", "kubeflow.org_pytorchjobs.yaml")
        self.tuned = tuned

    def install(self, kubectl, env, work):
        sh(kubectl, "apply", "--server-side", "-f", self.crd, env=env)
        wait_established(kubectl, env, "pytorchjobs.kubeflow.org")
        # What its kustomize overlay creates: the namespace and the (empty) Secret its
        # cert rotator fills in. No ValidatingWebhookConfiguration: the webhooks stay
        # unregistered (the rotator logs that it has none to patch and carries on).
        sh(kubectl, "create", "namespace", "kubeflow", env=env)
        sh(kubectl, "-n", "kubeflow", "create", "secret", "generic", "training-operator-webhook-cert", env=env)
        # The Secret's volume in its Deployment: any certificate will do.
        os.makedirs(KUBEFLOW_CERT_DIR, exist_ok=True)
        sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
           "-subj", "/CN=training-operator.kubeflow.svc", "-days", "1",
           "-keyout", os.path.join(KUBEFLOW_CERT_DIR, "tls.key"), "-out", os.path.join(KUBEFLOW_CERT_DIR, "tls.crt"))

    def start(self, env, out):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        args = [
            self.binary, "--enable-scheme=pytorchjob",
            f"--metrics-bind-address=127.0.0.1:{self.port}",
            f"--health-probe-bind-address=127.0.0.1:{free_port()}",
            f"--webhook-server-port={free_port()}",
            "--zap-log-level=error",  # janus-operator runs with RUST_LOG=warn (this flag has no warn)
        ]
        if self.tuned:
            args += ["--kube-api-qps=1000", "--kube-api-burst=2000", "--controller-threads=16"]
        return subprocess.Popen(args, env=dict(env, MY_POD_NAMESPACE="kubeflow"), stdout=out, stderr=subprocess.STDOUT)

    def started(self, m):
        # Its controllers start after the certificates (a goroutine), then list (the
        # caller waits for the requests to settle).
        return any(n == "controller_runtime_max_concurrent_reconciles" and dict(l).get("controller") == self.controller
                   for (n, l) in m)

    def job(self, i, workers):
        def replica(n):
            return {
                "replicas": n, "restartPolicy": "OnFailure",
                "template": {"spec": {"containers": [{"name": "pytorch", "image": IMAGE}],
                                      "tolerations": TOLERATIONS}},
            }
        return {
            "apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
            "metadata": {"name": f"bench-{i:04d}", "namespace": "default"},
            "spec": {"pytorchReplicaSpecs": {"Master": replica(1), "Worker": replica(workers - 1)}},
        }

    @staticmethod
    def running(j):
        return any(c.get("type") == "Running" and c.get("status") == "True"
                   for c in (j.get("status") or {}).get("conditions") or [])

    def figures(self, m):
        rec = lambda d: d.get("controller") == self.controller
        # Its reconciles send one request at a time: their wait is the sum of their
        # requests' times. Events go out from client-go's broadcaster, not from a reconcile.
        api = lambda d: d.get("resource") != "events"
        return {
            "reconciles": total(m, "controller_runtime_reconcile_total", rec),
            "errors": total(m, "controller_runtime_reconcile_errors_total", rec),
            "rec_sum": total(m, "controller_runtime_reconcile_time_seconds_sum", rec),
            "rec_p50": quantile(m, "controller_runtime_reconcile_time_seconds", 0.5, rec),
            "rec_p99": quantile(m, "controller_runtime_reconcile_time_seconds", 0.99, rec),
            "requests": total(m, "rest_client_requests_total"),
            "api_wait_sum": total(m, "rest_client_request_duration_seconds_sum", api),
            "api_p50": quantile(m, "rest_client_request_duration_seconds", 0.5),
            "api_p99": quantile(m, "rest_client_request_duration_seconds", 0.99),
            "throttle_sum": total(m, "rest_client_rate_limiter_duration_seconds_sum", api),
            "by_method": by_label(m, "rest_client_requests_total", "method"),
            "own_p50": float("nan"),  # only the sums split
            "own_p99": float("nan"),
        }


# --- one measurement -----------------------------------------------------------------
def run_side(name, op, a, nodes, rep):
    pods_total = a.jobs * a.workers
    work = tempfile.mkdtemp(prefix=f"janus-bench-{name}-")
    cdir = os.path.join(work, "cluster")
    log(f"[{name} rep {rep}] starting a control plane with {nodes} kwok nodes in {cdir}")
    subprocess.run([os.path.join(CP, "up.sh"), cdir, str(nodes)], check=True, stdout=subprocess.DEVNULL)
    env = dict(os.environ, KUBECONFIG=os.path.join(cdir, "kubeconfig"))
    binpath = sh(os.path.join(CP, "build.sh")).strip().splitlines()[-1]
    kubectl = os.path.join(binpath, "kubectl")
    proc = None
    try:
        op.install(kubectl, env, work)
        out = open(os.path.join(work, f"{name}.log"), "w")
        proc = op.start(env, out)
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; log: {out.name}")
            try:
                if op.started(parse(metrics_text(op.url))):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start its controller in 60 s; log: {out.name}")
            time.sleep(0.2)
        # Initial lists done: the operator's request count still for 1.5 s.
        last, still = None, 0
        while still < 3 and time.monotonic() < deadline + 30:
            n = op.figures(parse(metrics_text(op.url)))["requests"]
            still = still + 1 if n == last else 0
            last = n
            time.sleep(0.5)
        apim0 = parse(sh(kubectl, "get", "--raw", "/metrics", env=env))
        m0 = parse(metrics_text(op.url))
        cpu0, _ = proc_figures(proc.pid)
        with open(os.path.join(cdir, "pids")) as pf:
            cp_pids = {name: int(pid) for pid, name in (l.split() for l in pf if l.strip())}
        server_cpu = lambda: sum(proc_figures(cp_pids[c])[0] for c in ("kube-apiserver", "etcd"))
        srv0 = server_cpu()

        manifest = os.path.join(work, "jobs.json")
        with open(manifest, "w") as f:
            json.dump({"apiVersion": "v1", "kind": "List", "items": [op.job(i, a.workers) for i in range(a.jobs)]}, f)

        # Cheap polls (the API server shares the 2 cores), the same for every side: the
        # pod count from a limit=1 list's remainingItemCount, "any pod not Running" from a
        # limit=1 list with a field selector, the jobs from one list.
        def pod_count():
            r = json.loads(sh(kubectl, "get", "--raw", "/api/v1/namespaces/default/pods?limit=1", env=env))
            return len(r["items"]) + r["metadata"].get("remainingItemCount", 0)

        def all_pods_running():
            r = json.loads(sh(kubectl, "get", "--raw",
                              "/api/v1/namespaces/default/pods?limit=1&fieldSelector=status.phase%21%3DRunning", env=env))
            return not r["items"]

        def all_jobs_running():
            r = json.loads(sh(kubectl, "get", "--raw", op.jobs_path, env=env))
            return len(r["items"]) == a.jobs and all(op.running(j) for j in r["items"])

        t0 = time.monotonic()
        sh(kubectl, "create", "-f", manifest, env=env)
        t = {"applied": time.monotonic() - t0, "created": None, "pods_running": None, "running": None}
        while time.monotonic() - t0 < a.timeout:
            now = lambda: time.monotonic() - t0
            if t["created"] is None and pod_count() >= pods_total:
                t["created"] = now()
            if t["created"] is not None:
                if t["pods_running"] is None and all_pods_running():
                    t["pods_running"] = now()
                if t["running"] is None and all_jobs_running():
                    t["running"] = now()
                if t["pods_running"] is not None and t["running"] is not None:
                    break
            time.sleep(0.5 if t["created"] is None else 1.0)
        time.sleep(2.0)  # let the last status writes land
        m = diff(parse(metrics_text(op.url)), m0)
        apim = diff(parse(sh(kubectl, "get", "--raw", "/metrics", env=env)), apim0)
        cpu1, rss = proc_figures(proc.pid)
        srv1 = server_cpu()
        f = op.figures(m)
        r = {
            "applied_s": t["applied"], "created_s": t["created"], "pods_running_s": t["pods_running"],
            "running_s": t["running"],
            "op_requests_per_job": f["requests"] / a.jobs,
            "api_requests_per_job": total(apim, "apiserver_request_total") / a.jobs,
            "cpu_s": cpu1 - cpu0, "rss_mib": rss,
            "server_cpu_s": srv1 - srv0,
            "op_requests_by_method": f["by_method"],
            "op_requests_by_resource": f.get("by_resource", {}),
            "reconciles": f["reconciles"], "errors": f["errors"],
            "rec_p50_ms": f["rec_p50"] * 1e3, "rec_p99_ms": f["rec_p99"] * 1e3,
            "rec_mean_ms": f["rec_sum"] / max(f["reconciles"], 1) * 1e3,
            "wait_per_rec_ms": f["api_wait_sum"] / max(f["reconciles"], 1) * 1e3,
            "own_per_rec_ms": (f["rec_sum"] - f["api_wait_sum"]) / max(f["reconciles"], 1) * 1e3,
            "throttle_per_rec_ms": f["throttle_sum"] / max(f["reconciles"], 1) * 1e3,
            "cpu_per_rec_ms": (cpu1 - cpu0) / max(f["reconciles"], 1) * 1e3,
            "own_p50_ms": f["own_p50"] * 1e3, "own_p99_ms": f["own_p99"] * 1e3,
            "api_p50_ms": f["api_p50"] * 1e3, "api_p99_ms": f["api_p99"] * 1e3,
            "rec_total_s_per_job": f["rec_sum"] / a.jobs,
            "own_total_s_per_job": (f["rec_sum"] - f["api_wait_sum"]) / a.jobs,
        }
        log(f"[{name} rep {rep}] " + json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()
                                                 if not isinstance(v, dict)}))
        return r
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if a.keep:
            log(f"cluster kept: KUBECONFIG={cdir}/kubeconfig; stop with {CP}/down.sh {cdir}")
        else:
            subprocess.run([os.path.join(CP, "down.sh"), cdir], stdout=subprocess.DEVNULL)
            shutil.rmtree(work, ignore_errors=True)


def create_only(name, op, a, nodes):
    """Seconds of `kubectl create` of all jobs on a fresh control plane, no operator: the
    API server's own cost of the CRD (validation, storage)."""
    work = tempfile.mkdtemp(prefix=f"janus-bench-{name}-create-")
    cdir = os.path.join(work, "cluster")
    subprocess.run([os.path.join(CP, "up.sh"), cdir, str(nodes)], check=True, stdout=subprocess.DEVNULL)
    env = dict(os.environ, KUBECONFIG=os.path.join(cdir, "kubeconfig"))
    kubectl = os.path.join(sh(os.path.join(CP, "build.sh")).strip().splitlines()[-1], "kubectl")
    try:
        op.install(kubectl, env, work)
        manifest = os.path.join(work, "jobs.json")
        with open(manifest, "w") as f:
            json.dump({"apiVersion": "v1", "kind": "List", "items": [op.job(i, a.workers) for i in range(a.jobs)]}, f)
        t0 = time.monotonic()
        sh(kubectl, "create", "-f", manifest, env=env)
        return time.monotonic() - t0
    finally:
        subprocess.run([os.path.join(CP, "down.sh"), cdir], stdout=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)


# --- the table -----------------------------------------------------------------------
ROWS = [
    # (label, key, format)
    ("`kubectl create` of all jobs", "applied_s", "{:.1f} s"),
    ("apply -> all pods created", "created_s", "{:.1f} s"),
    ("apply -> all pods Running", "pods_running_s", "{:.1f} s"),
    ("apply -> every job Running (its status)", "running_s", "{:.1f} s"),
    ("operator API requests per job", "op_requests_per_job", "{:.1f}"),
    ("API server requests per job (all components)", "api_requests_per_job", "{:.1f}"),
    ("operator CPU time", "cpu_s", "{:.1f} s"),
    ("operator peak RSS", "rss_mib", "{:.1f} MiB"),
    ("kube-apiserver + etcd CPU time", "server_cpu_s", "{:.1f} s"),
    ("reconciles", "reconciles", "{:.0f}"),
    ("reconcile p50", "rec_p50_ms", "{:.1f} ms"),
    ("reconcile p99", "rec_p99_ms", "{:.0f} ms"),
    ("reconcile mean", "rec_mean_ms", "{:.1f} ms"),
    ("  of which the operator's own", "own_per_rec_ms", "{:.2f} ms"),
    ("  of which waiting on the API server", "wait_per_rec_ms", "{:.1f} ms"),
    ("    of that in the client's rate limiter", "throttle_per_rec_ms", "{:.1f} ms"),
    ("  own time p50 (split per reconcile: janus only)", "own_p50_ms", "{:.2f} ms"),
    ("  own time p99 (janus only)", "own_p99_ms", "{:.1f} ms"),
    ("operator CPU per reconcile", "cpu_per_rec_ms", "{:.2f} ms"),
    ("reconcile time per job (sum)", "rec_total_s_per_job", "{:.2f} s"),
    ("  of which the operator's own", "own_total_s_per_job", "{:.3f} s"),
    ("API request p50 (operator's client)", "api_p50_ms", "{:.1f} ms"),
    ("API request p99 (operator's client)", "api_p99_ms", "{:.0f} ms"),
]


def median(vals):
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(vals) if vals else None


def table(results, sides, reps):
    waits = ("created_s", "pods_running_s", "running_s")
    fmt = lambda f, v, key: ("not reached" if key in waits else "n/a") if v is None else f.format(v)
    head = ["metric"] + [f"{s} (median of {len(results[s])})" for s in sides]
    peers = [s for s in sides if s != "janus"]
    if "janus" in sides:
        head += [f"{p} / janus" for p in peers]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, key, f in ROWS:
        med = {s: median([r.get(key) for r in results[s]]) for s in sides}
        cells = [label] + [fmt(f, med[s], key) for s in sides]
        if "janus" in sides:
            for p in peers:
                j, k = med["janus"], med[p]
                if key in ("reconciles", "throttle_per_rec_ms") or j is None or k is None:
                    cells.append("")
                elif j == 0:
                    cells.append("inf" if k > 0 else "")
                else:
                    cells.append(f"{k / j:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sides", default=",".join(SIDES), help="comma-separated, of " + ", ".join(SIDES))
    ap.add_argument("--operator", default=None, help="the janus-operator binary")
    ap.add_argument("--operator-arg", action="append", default=[],
                    help="an extra flag of janus-operator (repeatable), e.g. --operator-arg=--concurrency=8")
    ap.add_argument("--kubeflow", default=None, help="build-kubeflow.sh's cache directory (default: run it)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per side to every job Running")
    ap.add_argument("--json", default=None, help="write every repetition's figures here")
    ap.add_argument("--keep", action="store_true", help="keep each cluster running")
    ap.add_argument("--table", nargs="+", metavar="JSON", help="only print the table of earlier --json files")
    ap.add_argument("--create-only", action="store_true",
                    help="only time `kubectl create` of the jobs of each kind with no operator running")
    a = ap.parse_args()
    if a.table:
        results = {}
        for path in a.table:
            with open(path) as f:
                for s, rs in json.load(f)["results"].items():
                    results.setdefault(s, []).extend(rs)
        sides = [s for s in SIDES if results.get(s)]
        print(table(results, sides, None))
        return
    sides = [s.strip() for s in a.sides.split(",") if s.strip()]
    for s in sides:
        if s not in SIDES:
            sys.exit(f"unknown side {s!r}: one of {', '.join(SIDES)}")

    ops = {}
    if "janus" in sides:
        op_bin = a.operator or next(
            (p for p in [
                os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "janus-operator"),
                os.path.join(ROOT, "target", "release", "janus-operator"),
            ] if os.path.exists(p)),
            None,
        )
        if not op_bin:
            sys.exit("janus-operator not built: cargo build --release -p janus-operator (or --operator PATH)")
        ops["janus"] = Janus(op_bin, a.operator_arg)
    if any(s.startswith("kubeflow") for s in sides):
        kdir = a.kubeflow or sh(os.path.join(CP, "build-kubeflow.sh")).strip().splitlines()[-1]
        ops["kubeflow"] = Kubeflow(kdir, tuned=False)
        ops["kubeflow-tuned"] = Kubeflow(kdir, tuned=True)

    pods_total = a.jobs * a.workers
    nodes = max(4, math.ceil(pods_total / 240))
    if a.create_only:
        for rep in range(a.reps):
            for s in [s for s in sides if s != "kubeflow-tuned" or "kubeflow" not in sides]:
                t = create_only(s, ops[s], a, nodes)
                print(f"{ops[s].kind}: kubectl create of {a.jobs} jobs, no operator running: {t:.1f} s (rep {rep + 1})")
        return
    results = {s: [] for s in sides}
    for rep in range(a.reps):
        order = sides[rep % len(sides):] + sides[:rep % len(sides)]  # rotate who goes first
        for s in order:
            results[s].append(run_side(s, ops[s], a, nodes, rep + 1))
            if a.json:
                with open(a.json, "w") as f:
                    json.dump({"jobs": a.jobs, "workers": a.workers, "nodes": nodes, "results": results}, f, indent=1)

    print(f"{a.jobs} jobs x {a.workers} pods ({pods_total} pods) on {nodes} kwok nodes, "
          f"a fresh control plane per side and repetition, {a.reps} repetitions in rotating order")
    print(table(results, sides, a.reps))
    for s in sides:
        for key in ("created_s", "running_s"):
            vals = [r[key] for r in results[s] if r[key] is not None]
            if vals:
                print(f"{s} {key}: " + ", ".join(f"{v:.1f}" for v in vals), file=sys.stderr)
    if any(r["created_s"] is None or r["running_s"] is None for s in sides for r in results[s]):
        sys.exit(1)


if __name__ == "__main__":
    main()
