#!/usr/bin/env python3
"""Operator benchmark on the kwok test cluster, side by side with Kubeflow's (issues 5, 14, 29).

One run measures each side REPS times, each time on a fresh control plane
(tests/controlplane/up.sh) with the same number of kwok nodes, in rotating order:

  janus           the real janus-operator binary: JOBS JanusTrainingJobs x WORKERS workers
  kubeflow        the Kubeflow Training Operator v1 (tests/controlplane/build-kubeflow.sh),
                  JOBS PyTorchJobs x (1 Master + WORKERS-1 Workers), as it ships: client
                  rate limit 20 QPS / burst 30, one reconcile at a time
  kubeflow-tuned  the same binary with the client limit lifted (--kube-api-qps 1000
                  --kube-api-burst 2000) and 16 reconciles at a time (--controller-threads,
                  janus-operator's concurrency)
  trainer         Kubeflow Trainer v2 with JobSet (tests/controlplane/build-kubeflow-trainer.sh):
                  JOBS TrainJobs of WORKERS nodes on the ClusterTrainingRuntime
                  torch-distributed (the one Trainer ships, written complete as its
                  webhooks would leave it, plus the kwok toleration); Trainer's controller
                  manager makes a JobSet of each, JobSet's makes its Job and
                  kube-controller-manager's Job controller the pods. Both managers run with
                  the configuration they ship (Trainer: 50 QPS / burst 100, 5 TrainJob
                  reconciles at a time; JobSet: 500 / 500, one at a time), leader election
                  and internal certificate management off; their figures are summed
  trainer-gang    the same, the runtime set up to restart the whole gang on a failure as
                  janus-operator does (JobSet failurePolicy maxRestarts 3, the node Job's
                  backoffLimit 0: a failed pod fails its Job, and JobSet recreates every Job)

Each side: time from the first `kubectl create` to all pods created, to all pods Running
(pod phase, what kwok does once the scheduler binds), and to every job Running by its own
status (JanusTrainingJob: every worker Running; PyTorchJob: its Master Running; TrainJob:
its JobSet's node Job ready, i.e. every node pod Ready); API
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
any reconcile; janus-operator's too are sent from tasks of their own). Recovery, on another fresh control plane per side and repetition: RECOVERY_JOBS jobs
Running, one worker (not rank 0) of each made to fail at once as kwok would show a
container exiting 1 (a status patch, the same for every side); the time from the first
patch until every job has all its WORKERS pods Running again and is Running by its own
status, and the requests (the operator's, and the API server's from every component)
per recovered job. Each side recovers its own way: janus-operator restarts the gang (every
pod deleted and created again, from the last checkpoint); Kubeflow v1 deletes the failed
pod and creates it again; JobSet's Job controller creates a replacement pod for the failed
index (the Job's backoffLimit; the runtime sets no JobSet failurePolicy); trainer-gang's
JobSet recreates all its Jobs, and so every pod (failurePolicy).

It prints the medians, one column per side, and the ratio peer / Janus of each (every
figure is lower-is-better: > 1 means Janus is ahead).

Usage: bench/operator_bench.py [--jobs 200] [--workers 8] [--reps 3] [--recovery-jobs 50]
         [--sides janus,kubeflow,kubeflow-tuned,trainer,trainer-gang] [--operator PATH] [--kubeflow DIR]
         [--trainer DIR] [--json FILE] [--keep]
       bench/operator_bench.py --create-only ...   (kubectl create alone, no operator)
       bench/operator_bench.py --table FILE.json ...  (the table of earlier runs)
"""

import argparse
import concurrent.futures
import http.client
import json
import math
import os
import shutil
import socket
import ssl
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
SIDES = ("janus", "kubeflow", "kubeflow-tuned", "trainer", "trainer-gang")
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
class Side:
    """What every side shares: its managers' metrics, summed over their endpoints."""

    def metrics(self):
        m = {}
        for url in self.urls:
            for k, v in parse(self.scrape(url)).items():
                m[k] = m.get(k, 0.0) + v
        return m

    def scrape(self, url):
        return metrics_text(url)


class Janus(Side):
    kind = "JanusTrainingJob"
    jobs_path = "/apis/janus.dev/v1alpha1/namespaces/default/janustrainingjobs"

    def __init__(self, binary, extra=()):
        self.binary = binary
        self.extra = list(extra)

    def install(self, kubectl, env, work):
        sh(kubectl, "apply", "--server-side", "-f", os.path.join(ROOT, "charts/janus-operator/crds"), env=env)
        wait_established(kubectl, env, "janustrainingjobs.janus.dev")

    def start(self, env, work):
        port = free_port()
        self.urls = [f"http://127.0.0.1:{port}/metrics"]
        out = open(os.path.join(work, "janus-operator.log"), "w")
        return [subprocess.Popen(
            [self.binary, "--no-leader-election", f"--http-addr=127.0.0.1:{port}", *self.extra],
            env=dict(env, RUST_LOG="warn"), stdout=out, stderr=subprocess.STDOUT,
        )]

    @staticmethod
    def pod_of(pod):
        """(job, rank) of a worker pod."""
        labels = pod["metadata"].get("labels") or {}
        return labels.get("janus.dev/job"), int(labels.get("janus.dev/rank", "0"))

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


class Kubeflow(Side):
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

    def start(self, env, work):
        port = free_port()
        self.urls = [f"http://127.0.0.1:{port}/metrics"]
        out = open(os.path.join(work, "training-operator.log"), "w")
        args = [
            self.binary, "--enable-scheme=pytorchjob",
            f"--metrics-bind-address=127.0.0.1:{port}",
            f"--health-probe-bind-address=127.0.0.1:{free_port()}",
            f"--webhook-server-port={free_port()}",
            "--zap-log-level=error",  # janus-operator runs with RUST_LOG=warn (this flag has no warn)
        ]
        if self.tuned:
            args += ["--kube-api-qps=1000", "--kube-api-burst=2000", "--controller-threads=16"]
        return [subprocess.Popen(args, env=dict(env, MY_POD_NAMESPACE="kubeflow"), stdout=out, stderr=subprocess.STDOUT)]

    @staticmethod
    def pod_of(pod):
        labels = pod["metadata"].get("labels") or {}
        rank = 0 if labels.get("training.kubeflow.org/replica-type") in ("master", "Master") else \
            1 + int(labels.get("training.kubeflow.org/replica-index", "0"))
        return labels.get("training.kubeflow.org/job-name"), rank

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


def self_signed(cert_dir, cn):
    """A throwaway serving certificate (tls.crt, tls.key) for a webhook server nobody calls."""
    os.makedirs(cert_dir, exist_ok=True)
    sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
       "-subj", f"/CN={cn}", "-days", "1",
       "-keyout", os.path.join(cert_dir, "tls.key"), "-out", os.path.join(cert_dir, "tls.crt"))


class Trainer(Side):
    """Kubeflow Trainer v2 (TrainJob) with JobSet: two controller managers, summed."""

    kind = "TrainJob"
    jobs_path = "/apis/trainer.kubeflow.org/v1alpha1/namespaces/default/trainjobs"
    # The controllers that turn a TrainJob into pods (JobSet's pod controller only acts on
    # exclusive placement; the runtime controllers on runtime changes).
    controllers = ("trainjob_controller", "jobset")
    runtime = "torch-distributed"

    def __init__(self, cache_dir, gang=False):
        self.gang = gang
        self.trainer_bin = os.path.join(cache_dir, "bin", "trainer-controller-manager")
        self.jobset_bin = os.path.join(cache_dir, "bin", "jobset-controller-manager")
        self.crds = os.path.join(cache_dir, "crds")
        self.runtime_file = os.path.join(cache_dir, "runtimes", "torch_distributed.yaml")

    def install(self, kubectl, env, work):
        sh(kubectl, "apply", "--server-side", "-f", self.crds, env=env)
        for crd in ("trainjobs.trainer.kubeflow.org", "clustertrainingruntimes.trainer.kubeflow.org",
                    "jobsets.jobset.x-k8s.io"):
            wait_established(kubectl, env, crd)
        # The runtime Trainer ships, with what the unregistered webhooks would have added
        # (JobSet's defaulting: success and startup policy, Indexed Jobs, restartPolicy
        # OnFailure, DNS hostnames) and the kwok nodes' toleration.
        import yaml  # the venv's (transformers needs it)
        with open(self.runtime_file) as f:
            rt = yaml.safe_load(f)
        assert rt["metadata"]["name"] == self.runtime, self.runtime_file
        js = rt["spec"]["template"]["spec"]
        js.setdefault("successPolicy", {"operator": "All"})
        js.setdefault("startupPolicy", {"startupPolicyOrder": "AnyOrder"})
        js.setdefault("network", {}).update({"enableDNSHostnames": True, "publishNotReadyAddresses": True})
        if self.gang:
            # A torch gang cannot go on without a rank (its collectives fail): what a user
            # adds to get janus-operator's restart, one pod's failure restarting every pod
            # (JobSet's default Recreate strategy; janus-operator's default backoffLimit 3).
            js["failurePolicy"] = {"maxRestarts": 3}
        for rj in js["replicatedJobs"]:
            jspec = rj["template"].setdefault("spec", {})
            jspec.setdefault("completionMode", "Indexed")
            if self.gang:
                jspec["backoffLimit"] = 0
            pspec = jspec["template"]["spec"]
            pspec.setdefault("restartPolicy", "OnFailure")
            pspec["tolerations"] = TOLERATIONS
        path = os.path.join(work, "runtime.json")
        with open(path, "w") as f:
            json.dump(rt, f)
        sh(kubectl, "apply", "--server-side", "-f", path, env=env)
        # JobSet serves its metrics over HTTPS behind a TokenReview / SubjectAccessReview
        # filter (not configurable): a ServiceAccount allowed to GET /metrics scrapes them.
        # The filter caches its decisions, so a scrape costs requests once a minute at most.
        rbac = {"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "bench-metrics", "namespace": "default"}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "bench-metrics"},
             "rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "bench-metrics"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "bench-metrics"},
             "subjects": [{"kind": "ServiceAccount", "name": "bench-metrics", "namespace": "default"}]},
        ]}
        path = os.path.join(work, "metrics-rbac.json")
        with open(path, "w") as f:
            json.dump(rbac, f)
        sh(kubectl, "apply", "-f", path, env=env)
        self.token = sh(kubectl, "create", "token", "bench-metrics", "--duration=4h", env=env).strip()

    def start(self, env, work):
        # Trainer's webhook server reads its certificate from $TMPDIR/k8s-webhook-server/
        # serving-certs (controller-runtime's default; its Configuration has no certDir),
        # JobSet's from its Configuration's webhook.certDir.
        tmp = os.path.join(work, "trainer-tmp")
        self_signed(os.path.join(tmp, "k8s-webhook-server", "serving-certs"), "kubeflow-trainer-controller-manager.kubeflow-system.svc")
        jobset_certs = os.path.join(work, "jobset-certs")
        self_signed(jobset_certs, "jobset-webhook-service.jobset-system.svc")
        tport, jport = free_port(), free_port()
        self.urls = [f"http://127.0.0.1:{tport}/metrics", f"https://127.0.0.1:{jport}/metrics"]
        # Trainer's shipped manager config (manifests/base/manager/controller_manager_config.yaml)
        # with leader election and cert management off and local ports.
        trainer_cfg = {
            "apiVersion": "config.trainer.kubeflow.org/v1alpha1", "kind": "Configuration",
            "health": {"healthProbeBindAddress": f"127.0.0.1:{free_port()}", "readinessEndpointName": "readyz",
                       "livenessEndpointName": "healthz"},
            "metrics": {"bindAddress": f"127.0.0.1:{tport}", "secureServing": False},
            "webhook": {"port": free_port(), "host": "127.0.0.1"},
            "leaderElection": {"leaderElect": False},
            "controller": {"groupKindConcurrency": {"TrainJob.trainer.kubeflow.org": 5,
                                                    "TrainingRuntime.trainer.kubeflow.org": 1,
                                                    "ClusterTrainingRuntime.trainer.kubeflow.org": 1}},
            "certManagement": {"enable": False},
            "clientConnection": {"qps": 50, "burst": 100},
        }
        # JobSet's shipped config (config/components/manager/controller_manager_config.yaml)
        # likewise; its client limits are the binary's defaults (500 / 500).
        jobset_cfg = {
            "apiVersion": "config.jobset.x-k8s.io/v1alpha1", "kind": "Configuration",
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "webhook": {"port": free_port(), "host": "127.0.0.1", "certDir": jobset_certs},
            "metrics": {"bindAddress": f"127.0.0.1:{jport}"},
            "health": {"healthProbeBindAddress": f"127.0.0.1:{free_port()}"},
        }
        procs = []
        for name, binary, cfg, extra_env in (
            ("trainer-controller-manager", self.trainer_bin, trainer_cfg, {"TMPDIR": tmp}),
            ("jobset-controller-manager", self.jobset_bin, jobset_cfg, {}),
        ):
            path = os.path.join(work, f"{name}.json")
            with open(path, "w") as f:
                json.dump(cfg, f)
            out = open(os.path.join(work, f"{name}.log"), "w")
            # --zap-log-level=error: janus-operator runs with RUST_LOG=warn (zap has no warn here)
            procs.append(subprocess.Popen([binary, f"--config={path}", "--zap-log-level=error"],
                                          env=dict(env, **extra_env), stdout=out, stderr=subprocess.STDOUT))
        return procs

    def scrape(self, url):
        if url.startswith("http://"):
            return metrics_text(url)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # its in-memory self-signed serving certificate
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return r.read().decode()

    def started(self, m):
        have = {dict(l).get("controller") for (n, l) in m if n == "controller_runtime_max_concurrent_reconciles"}
        return all(c in have for c in self.controllers)

    def job(self, i, workers):
        return {
            "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
            "metadata": {"name": f"bench-{i:04d}", "namespace": "default"},
            "spec": {
                "runtimeRef": {"name": self.runtime, "apiGroup": "trainer.kubeflow.org",
                               "kind": "ClusterTrainingRuntime"},
                "trainer": {"image": IMAGE, "numNodes": workers},
            },
        }

    @staticmethod
    def running(j):
        # jobsStatus mirrors the JobSet's replicatedJobsStatus: Jobs whose pods are all Ready.
        js = (j.get("status") or {}).get("jobsStatus") or []
        return bool(js) and all((s.get("ready") or 0) >= 1 for s in js)

    @staticmethod
    def pod_of(pod):
        labels = pod["metadata"].get("labels") or {}
        return (labels.get("jobset.sigs.k8s.io/jobset-name"),
                int(labels.get("batch.kubernetes.io/job-completion-index", "0")))

    def figures(self, m):
        rec = lambda d: d.get("controller") in self.controllers
        api = lambda d: d.get("resource") != "events"
        return {
            "reconciles": total(m, "controller_runtime_reconcile_total", rec),
            "errors": total(m, "controller_runtime_reconcile_errors_total", rec),
            "rec_sum": total(m, "controller_runtime_reconcile_time_seconds_sum", rec),
            "rec_p50": quantile(m, "controller_runtime_reconcile_time_seconds", 0.5, rec),
            "rec_p99": quantile(m, "controller_runtime_reconcile_time_seconds", 0.99, rec),
            "requests": total(m, "rest_client_requests_total"),
            # Both managers' requests, reconciles of other controllers included (their
            # reconcile time is not in rec_sum: the split is an upper bound of the wait).
            "api_wait_sum": total(m, "rest_client_request_duration_seconds_sum", api),
            "api_p50": quantile(m, "rest_client_request_duration_seconds", 0.5),
            "api_p99": quantile(m, "rest_client_request_duration_seconds", 0.99),
            "throttle_sum": total(m, "rest_client_rate_limiter_duration_seconds_sum", api),
            "by_method": by_label(m, "rest_client_requests_total", "method"),
            "by_resource": by_label(m, "rest_client_request_duration_seconds_count", ("verb", "resource")),
            "own_p50": float("nan"),
            "own_p99": float("nan"),
        }


# --- one measurement -----------------------------------------------------------------
class Api:
    """A few direct requests to the test API server with the admin certificate: the
    failure patches go out at once from threads (50 kubectl processes would take seconds)."""

    def __init__(self, cdir):
        with open(os.path.join(cdir, "env")) as f:
            url = next(l.split("=", 1)[1].strip() for l in f if l.startswith("export JANUS_K8S_API="))
        self.host, self.port = url.removeprefix("https://").rsplit(":", 1)
        pki = os.path.join(cdir, "pki")
        self.ctx = ssl.create_default_context(cafile=os.path.join(pki, "ca.crt"))
        self.ctx.load_cert_chain(os.path.join(pki, "admin.crt"), os.path.join(pki, "admin.key"))

    def request(self, method, path, body=None, content_type="application/json"):
        c = http.client.HTTPSConnection(self.host, int(self.port), context=self.ctx, timeout=30)
        try:
            c.request(method, path, body=None if body is None else json.dumps(body),
                      headers={"Content-Type": content_type})
            r = c.getresponse()
            data = r.read()
            if r.status >= 300:
                raise RuntimeError(f"{method} {path}: {r.status} {data[:300]!r}")
            return json.loads(data)
        finally:
            c.close()


def fail_pod(api, pod):
    """What the kubelet would report for a worker whose every container exited 1
    (tests/controlplane/README.md: a status patch kwok's stages leave alone)."""
    ts = "2026-01-01T00:00:00Z"
    ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    api.request("PATCH", f"/api/v1/namespaces/{ns}/pods/{name}/status", {"status": {
        "phase": "Failed",
        "conditions": [{"type": "Ready", "status": "False", "reason": "PodFailed"},
                       {"type": "ContainersReady", "status": "False", "reason": "PodFailed"}],
        "containerStatuses": [{"name": c["name"], "ready": False, "started": False,
                               "state": {"running": None, "terminated": {
                                   "exitCode": 1, "reason": "Error", "startedAt": ts, "finishedAt": ts}}}
                              for c in pod["spec"]["containers"]],
    }}, content_type="application/strategic-merge-patch+json")


class Cluster:
    """A fresh control plane with one side's managers running and settled."""

    def __init__(self, name, op, a, nodes, rep, phase):
        self.name, self.op, self.a = name, op, a
        self.work = tempfile.mkdtemp(prefix=f"janus-bench-{name}-{phase}-")
        self.cdir = os.path.join(self.work, "cluster")
        log(f"[{name} {phase} rep {rep}] starting a control plane with {nodes} kwok nodes in {self.cdir}")
        subprocess.run([os.path.join(CP, "up.sh"), self.cdir, str(nodes)], check=True, stdout=subprocess.DEVNULL)
        self.env = dict(os.environ, KUBECONFIG=os.path.join(self.cdir, "kubeconfig"))
        binpath = sh(os.path.join(CP, "build.sh")).strip().splitlines()[-1]
        self.kubectl = os.path.join(binpath, "kubectl")
        self.procs = []

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def start(self):
        op = self.op
        op.install(self.kubectl, self.env, self.work)
        self.procs = op.start(self.env, self.work)
        deadline = time.monotonic() + 60
        while True:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{self.name}: {p.args[0]} exited with {p.returncode}; logs in {self.work}")
            try:
                if op.started(op.metrics()):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start its controllers in 60 s; logs in {self.work}")
            time.sleep(0.2)
        # Initial lists done: the managers' request count still for 1.5 s.
        last, still = None, 0
        while still < 3 and time.monotonic() < deadline + 30:
            n = op.figures(op.metrics())["requests"]
            still = still + 1 if n == last else 0
            last = n
            time.sleep(0.5)
        with open(os.path.join(self.cdir, "pids")) as pf:
            self.cp_pids = {name: int(pid) for pid, name in (l.split() for l in pf if l.strip())}

    def __exit__(self, *exc):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        if self.a.keep:
            log(f"cluster kept: KUBECONFIG={self.cdir}/kubeconfig; stop with {CP}/down.sh {self.cdir}")
        else:
            subprocess.run([os.path.join(CP, "down.sh"), self.cdir], stdout=subprocess.DEVNULL)
            shutil.rmtree(self.work, ignore_errors=True)

    # Snapshots: the managers' metrics, the API server's, CPU of the managers and servers.
    def snapshot(self):
        figs = [proc_figures(p.pid) for p in self.procs]
        return {
            "m": self.op.metrics(),
            "apim": parse(sh(self.kubectl, "get", "--raw", "/metrics", env=self.env)),
            "cpu": sum(c for c, _ in figs), "rss": sum(r for _, r in figs),
            "srv": sum(proc_figures(self.cp_pids[c])[0] for c in ("kube-apiserver", "etcd")),
        }

    def get(self, path):
        return json.loads(sh(self.kubectl, "get", "--raw", path, env=self.env))

    # Cheap polls (the API server shares the 2 cores), the same for every side: the pod
    # count from a limit=1 list's remainingItemCount, "any pod not Running" from a limit=1
    # list with a field selector, the jobs from one list.
    def pod_count(self):
        r = self.get("/api/v1/namespaces/default/pods?limit=1")
        return len(r["items"]) + r["metadata"].get("remainingItemCount", 0)

    def running_pod_count(self):
        # The API server gives no remainingItemCount with a field selector: every pod less
        # those not Running (few: the failed and the new ones).
        n = self.pod_count()
        return n - len(self.get("/api/v1/namespaces/default/pods?fieldSelector=status.phase%21%3DRunning")["items"])

    def all_pods_running(self):
        return not self.get("/api/v1/namespaces/default/pods?limit=1&fieldSelector=status.phase%21%3DRunning")["items"]

    def gangs_running(self, jobs):
        """One consistent list: every job has all its pods Running and none being deleted."""
        running = {}
        for p in self.get("/api/v1/namespaces/default/pods")["items"]:
            if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp"):
                job, _ = self.op.pod_of(p)
                running[job] = running.get(job, 0) + 1
        return len(running) == jobs and all(n == self.a.workers for n in running.values())

    def all_jobs_running(self, jobs):
        r = self.get(self.op.jobs_path)
        return len(r["items"]) == jobs and all(self.op.running(j) for j in r["items"])

    def create_jobs(self, jobs):
        manifest = os.path.join(self.work, "jobs.json")
        with open(manifest, "w") as f:
            json.dump({"apiVersion": "v1", "kind": "List",
                       "items": [self.op.job(i, self.a.workers) for i in range(jobs)]}, f)
        sh(self.kubectl, "create", "-f", manifest, env=self.env)


def run_side(name, op, a, nodes, rep):
    """JOBS jobs created at once: times, requests, CPU, memory, reconcile latencies."""
    pods_total = a.jobs * a.workers
    with Cluster(name, op, a, nodes, rep, "create") as c:
        s0 = c.snapshot()
        t0 = time.monotonic()
        c.create_jobs(a.jobs)
        t = {"applied": time.monotonic() - t0, "created": None, "pods_running": None, "running": None}
        while time.monotonic() - t0 < a.timeout:
            now = lambda: time.monotonic() - t0
            if t["created"] is None and c.pod_count() >= pods_total:
                t["created"] = now()
            if t["created"] is not None:
                if t["pods_running"] is None and c.all_pods_running():
                    t["pods_running"] = now()
                if t["running"] is None and c.all_jobs_running(a.jobs):
                    t["running"] = now()
                if t["pods_running"] is not None and t["running"] is not None:
                    break
            time.sleep(0.5 if t["created"] is None else 1.0)
        time.sleep(2.0)  # let the last status writes land
        s1 = c.snapshot()
    m = diff(s1["m"], s0["m"])
    apim = diff(s1["apim"], s0["apim"])
    f = op.figures(m)
    r = {
        "applied_s": t["applied"], "created_s": t["created"], "pods_running_s": t["pods_running"],
        "running_s": t["running"],
        "op_requests_per_job": f["requests"] / a.jobs,
        "api_requests_per_job": total(apim, "apiserver_request_total") / a.jobs,
        "cpu_s": s1["cpu"] - s0["cpu"], "rss_mib": s1["rss"],
        "server_cpu_s": s1["srv"] - s0["srv"],
        "op_requests_by_method": f["by_method"],
        "op_requests_by_resource": f.get("by_resource", {}),
        "reconciles": f["reconciles"], "errors": f["errors"],
        "rec_p50_ms": f["rec_p50"] * 1e3, "rec_p99_ms": f["rec_p99"] * 1e3,
        "rec_mean_ms": f["rec_sum"] / max(f["reconciles"], 1) * 1e3,
        "wait_per_rec_ms": f["api_wait_sum"] / max(f["reconciles"], 1) * 1e3,
        "own_per_rec_ms": (f["rec_sum"] - f["api_wait_sum"]) / max(f["reconciles"], 1) * 1e3,
        "throttle_per_rec_ms": f["throttle_sum"] / max(f["reconciles"], 1) * 1e3,
        "cpu_per_rec_ms": (s1["cpu"] - s0["cpu"]) / max(f["reconciles"], 1) * 1e3,
        "own_p50_ms": f["own_p50"] * 1e3, "own_p99_ms": f["own_p99"] * 1e3,
        "api_p50_ms": f["api_p50"] * 1e3, "api_p99_ms": f["api_p99"] * 1e3,
        "rec_total_s_per_job": f["rec_sum"] / a.jobs,
        "own_total_s_per_job": (f["rec_sum"] - f["api_wait_sum"]) / a.jobs,
    }
    log(f"[{name} rep {rep}] " + json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()
                                             if not isinstance(v, dict)}))
    return r


def run_recovery(name, op, a, nodes, rep):
    """RECOVERY_JOBS jobs Running, one worker of each failed at once: the time until every
    job has all its pods Running again (and is Running by its status), and the requests."""
    jobs = a.recovery_jobs
    pods_total = jobs * a.workers
    with Cluster(name, op, a, nodes, rep, "recovery") as c:
        c.create_jobs(jobs)
        t0 = time.monotonic()
        while not (c.running_pod_count() >= pods_total and c.all_jobs_running(jobs)):
            if time.monotonic() - t0 > a.timeout:
                raise RuntimeError(f"{name}: {jobs} jobs not Running in {a.timeout} s")
            time.sleep(1.0)
        time.sleep(3.0)  # status writes and resyncs of the start settle
        pods = c.get("/api/v1/namespaces/default/pods")["items"]
        victims = {}
        for p in pods:
            job, rank = op.pod_of(p)
            if rank == a.workers - 1:  # the last worker of each job (never rank 0)
                victims[job] = p
        assert len(victims) == jobs, f"{name}: found a worker to fail in {len(victims)} of {jobs} jobs"
        api = Api(c.cdir)
        s0 = c.snapshot()
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(8) as ex:
            list(ex.map(lambda p: fail_pod(api, p), victims.values()))
        injected = time.monotonic() - t0
        recovered = None
        while time.monotonic() - t0 < a.timeout:
            # Every job with all its pods Running again: Running pods of the gangs (a
            # failed pod the Job controller keeps is not among them) and the jobs' status.
            if c.running_pod_count() >= pods_total and c.all_jobs_running(jobs) and c.gangs_running(jobs):
                recovered = time.monotonic() - t0
                break
            time.sleep(0.5)
        time.sleep(2.0)
        s1 = c.snapshot()
    m = diff(s1["m"], s0["m"])
    apim = diff(s1["apim"], s0["apim"])
    f = op.figures(m)
    r = {
        "recovery_s": recovered, "inject_s": injected,
        "recovery_op_requests_per_job": f["requests"] / jobs,
        "recovery_api_requests_per_job": total(apim, "apiserver_request_total") / jobs,
        "recovery_cpu_s": s1["cpu"] - s0["cpu"],
        "recovery_by_method": f["by_method"],
    }
    log(f"[{name} recovery rep {rep}] " + json.dumps({k: (round(v, 2) if isinstance(v, float) else v)
                                                      for k, v in r.items() if not isinstance(v, dict)}))
    return r


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
    ("recovery: first failure -> every gang Running again", "recovery_s", "{:.1f} s"),
    ("recovery: operator API requests per recovered job", "recovery_op_requests_per_job", "{:.1f}"),
    ("recovery: API server requests per recovered job (all components)", "recovery_api_requests_per_job", "{:.1f}"),
    ("recovery: operator CPU time", "recovery_cpu_s", "{:.2f} s"),
]


def median(vals):
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(vals) if vals else None


def table(results, sides, reps):
    waits = ("created_s", "pods_running_s", "running_s", "recovery_s")
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
    ap.add_argument("--trainer", default=None, help="build-kubeflow-trainer.sh's cache directory (default: run it)")
    ap.add_argument("--recovery-jobs", type=int, default=50,
                    help="jobs of the recovery measurement (one worker of each fails); 0: none")
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
    if any(s.startswith("trainer") for s in sides):
        tdir = a.trainer or sh(os.path.join(CP, "build-kubeflow-trainer.sh")).strip().splitlines()[-1]
        ops["trainer"] = Trainer(tdir)
        ops["trainer-gang"] = Trainer(tdir, gang=True)

    pods_total = a.jobs * a.workers
    nodes = max(4, math.ceil(pods_total / 240))
    if a.create_only:
        for rep in range(a.reps):
            # The tuned and gang sides create the same objects as the plain ones.
            for s in [s for s in sides if not (s == "kubeflow-tuned" and "kubeflow" in sides)
                      and not (s == "trainer-gang" and "trainer" in sides)]:
                t = create_only(s, ops[s], a, nodes)
                print(f"{ops[s].kind}: kubectl create of {a.jobs} jobs, no operator running: {t:.1f} s (rep {rep + 1})")
        return
    results = {s: [] for s in sides}
    for rep in range(a.reps):
        order = sides[rep % len(sides):] + sides[:rep % len(sides)]  # rotate who goes first
        for s in order:
            r = run_side(s, ops[s], a, nodes, rep + 1)
            if a.recovery_jobs:
                r.update(run_recovery(s, ops[s], a, max(4, math.ceil(a.recovery_jobs * a.workers / 240)), rep + 1))
            results[s].append(r)
            if a.json:
                with open(a.json, "w") as f:
                    json.dump({"jobs": a.jobs, "workers": a.workers, "nodes": nodes, "results": results}, f, indent=1)

    print(f"{a.jobs} jobs x {a.workers} pods ({pods_total} pods) on {nodes} kwok nodes, "
          f"a fresh control plane per side and repetition, {a.reps} repetitions in rotating order")
    if a.recovery_jobs:
        print(f"recovery: {a.recovery_jobs} jobs x {a.workers} pods Running on another fresh control plane, "
              f"the last worker of each failed at once (exit 1)")
    print(table(results, sides, a.reps))
    for s in sides:
        for key in ("created_s", "running_s"):
            vals = [r[key] for r in results[s] if r[key] is not None]
            if vals:
                print(f"{s} {key}: " + ", ".join(f"{v:.1f}" for v in vals), file=sys.stderr)
    if any(r["created_s"] is None or r["running_s"] is None or (a.recovery_jobs and r.get("recovery_s") is None)
           for s in sides for r in results[s]):
        sys.exit(1)


if __name__ == "__main__":
    main()
