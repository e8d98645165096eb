# Two commands do everything on a fresh machine (see README.md):
#   make demo   # venv + libtorch, build, sample data, tiny model, SFT then ORPO on CPU
#   make test   # the same set-up, then lint and the whole test suite
# Both are idempotent; when everything is installed they only run what changed.

SHELL := /bin/bash
# Both may point outside the checkout (CI keeps them under ~/.cache between runs).
VENV := $(or $(JANUS_VENV),$(CURDIR)/.venv)
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
CARGO ?= cargo

# The real S3 server of the object-storage tests: versitygw (Apache-2.0) built from
# its Go module once, cached outside the checkout.
VERSITYGW_VERSION := v1.8.0
VERSITYGW := $(HOME)/.cache/janus/versitygw-$(VERSITYGW_VERSION)/versitygw
export JANUS_VERSITYGW := $(VERSITYGW)

# The real Kubernetes control plane of the integration tests (tests/controlplane/):
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and kwok, built
# once from their Go modules at the release pinned in tests/controlplane/k8s/go.mod and
# cached outside the checkout. Tests start clusters with $JANUS_CONTROLPLANE/up.sh DIR.
K8S_VERSION := $(shell awk '$$1 == "k8s.io/kubernetes" {print $$2}' tests/controlplane/k8s/go.mod)
K8S_BIN := $(or $(JANUS_CACHE),$(HOME)/.cache/janus)/k8s-$(K8S_VERSION)/bin
export JANUS_K8S_BIN := $(K8S_BIN)
export JANUS_CONTROLPLANE := $(CURDIR)/tests/controlplane

# The real node of the end-to-end tests (tests/controlplane/node-up.sh) and helm:
# kubelet, kube-proxy, CoreDNS and helm from their Go modules (build-node.sh, cached
# like the control plane), containerd/runc/CNI/prometheus from Debian (node-deps.sh).
HELM_VERSION := $(shell awk '$$1 == "require" && $$2 == "helm.sh/helm/v3" {print $$3}' tests/controlplane/helm/go.mod)
export JANUS_HELM := $(or $(JANUS_CACHE),$(HOME)/.cache/janus)/helm-$(HELM_VERSION)/bin/helm

# tch builds against the PyTorch in the venv (tch's documented route).
export LIBTORCH_USE_PYTORCH := 1
export PATH := $(VENV)/bin:$(PATH)
export JANUS_PYTHON := $(PY)

.PHONY: demo test build lint unit gpu-bundle bench bench-train bench-memory bench-allreduce bench-scaling bench-checkpoint bench-stream bench-operator kubeflow crdgen clean-demo bench-serve

$(STAMP): requirements-dev.txt
	@command -v python3 >/dev/null || { echo "python3 is required"; exit 1; }
	@command -v $(CARGO) >/dev/null || { echo "cargo (Rust) is required: https://rustup.rs"; exit 1; }
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

$(VERSITYGW):
	@command -v go >/dev/null || { echo "go is required to build the S3 test server"; exit 1; }
	GOBIN=$(dir $(VERSITYGW)) go install github.com/versity/versitygw/cmd/versitygw@$(VERSITYGW_VERSION)

build: $(STAMP)
	$(CARGO) build --release --workspace --bins

demo: build
	$(TARGET_DIR)/release/janus demo --dir target/janus-demo

lint: $(STAMP) structure
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

# Issue 25's measures of the tree's shape: no file-level import cycle, no function
# over 120 lines outside tests (tests/structure.py exits 1 on either).
.PHONY: structure
structure:
	python3 tests/structure.py cycles
	python3 tests/structure.py functions --over 120

unit: $(STAMP) $(VERSITYGW)
	$(CARGO) test --release --workspace

test: build lint unit

.PHONY: controlplane controlplane-smoke
# build.sh keeps a stamp of the pinned go.mod/go.sum: returns at once when up to date.
controlplane:
	@tests/controlplane/build.sh >/dev/null

unit: controlplane node

# Kueue (sigs.k8s.io/kueue at the release pinned in tests/controlplane/kueue/go.mod): its
# controller manager and CRDs, built once (build-kueue.sh, a stamp like build.sh) for the
# quota-admission tests (operator/tests/kueue.rs), which run it against the test cluster.
KUEUE_VERSION := $(shell awk '$$1 == "require" && $$2 == "sigs.k8s.io/kueue" {print $$3}' tests/controlplane/kueue/go.mod)
export JANUS_KUEUE := $(or $(JANUS_CACHE),$(HOME)/.cache/janus)/kueue-$(KUEUE_VERSION)
.PHONY: kueue
kueue:
	@tests/controlplane/build-kueue.sh >/dev/null

unit: kueue

# The Kubeflow Training Operator v1 (github.com/kubeflow/training-operator at the release
# pinned in tests/controlplane/kubeflow/go.mod) and its CRDs, built once
# (build-kubeflow.sh, a stamp like build.sh): the peer of bench-operator, no test's.
KUBEFLOW_VERSION := $(shell awk '$$1 == "require" && $$2 == "github.com/kubeflow/training-operator" {print $$3}' tests/controlplane/kubeflow/go.mod)
KUBEFLOW_DIR := $(or $(JANUS_CACHE),$(HOME)/.cache/janus)/kubeflow-$(KUBEFLOW_VERSION)
.PHONY: kubeflow
kubeflow:
	@tests/controlplane/build-kubeflow.sh >/dev/null

# Kubeflow Trainer v2 and JobSet (github.com/kubeflow/trainer/v2 and sigs.k8s.io/jobset at
# the releases pinned in tests/controlplane/kubeflow-trainer/go.mod): both controller
# managers, their CRDs and the torch runtime, built once (build-kubeflow-trainer.sh, a
# stamp like build.sh): the other peer of bench-operator, no test's.
KUBEFLOW_TRAINER_VERSION := $(shell awk '$$1 == "github.com/kubeflow/trainer/v2" {print $$2}' tests/controlplane/kubeflow-trainer/go.mod)
KUBEFLOW_TRAINER_DIR := $(or $(JANUS_CACHE),$(HOME)/.cache/janus)/kubeflow-trainer-$(KUBEFLOW_TRAINER_VERSION)
.PHONY: kubeflow-trainer
kubeflow-trainer:
	@tests/controlplane/build-kubeflow-trainer.sh >/dev/null

.PHONY: node node-deps
# Debian packages of the node (needs root; a no-op when installed).
node-deps:
	@tests/controlplane/node-deps.sh
# Go builds of the node and helm; returns at once when the stamps match.
node: node-deps
	@tests/controlplane/build-node.sh >/dev/null

controlplane-smoke: controlplane
	tests/controlplane/smoke.sh

bench: bench-train bench-memory bench-allreduce bench-scaling bench-checkpoint bench-stream bench-operator bench-serve

bench-train: build
	$(PY) bench/train_bench.py --janus $(TARGET_DIR)/release/janus --reps 5

# Mixed precision on CPU: pure bf16, fp32 master, checkpointing, ZeRO-1 vs transformers.
bench-memory: build
	$(PY) bench/memory_bench.py --janus $(TARGET_DIR)/release/janus --reps 3

bench-allreduce: build
	$(PY) bench/allreduce_bench.py --janus $(TARGET_DIR)/release/janus --reps 3

bench-scaling: build
	$(PY) bench/scaling_bench.py --janus $(TARGET_DIR)/release/janus --reps 3

# janus serve vs Hugging Face generate: tokens/s and time to first token, batch 1 and 16, CPU.
bench-serve: build
	$(PY) bench/serve_bench.py --janus $(TARGET_DIR)/release/janus --reps 3

bench-checkpoint: build $(VERSITYGW)
	$(PY) bench/checkpoint_bench.py --janus $(TARGET_DIR)/release/janus --reps 3

# The device check's bundle for a GPU machine without Rust (bench/gpu_check.sh runs it):
# `janus` and the `#[ignore]` CUDA test binary of trainer/tests/gpu.rs, stripped and
# gzipped (about 12 MB each; 34 MB stripped, 290 MB as built), so that the working tree
# a device machine receives stays well under its 64 MiB.
gpu-bundle: build
	mkdir -p target/gpu
	strip -o target/gpu/janus $(TARGET_DIR)/release/janus
	$(CARGO) test --release -p janus-trainer --test gpu --no-run --message-format=json \
	  | $(PY) -c 'import json, sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "gpu" and m.get("executable")][-1])' \
	  > target/gpu/gpu-tests.path
	strip -o target/gpu/gpu-tests "$$(cat target/gpu/gpu-tests.path)"
	rm -f target/gpu/gpu-tests.path target/gpu/janus.gz target/gpu/gpu-tests.gz
	gzip -6 target/gpu/janus target/gpu/gpu-tests
	@du -ch target/gpu/janus.gz target/gpu/gpu-tests.gz

clean-demo:
	rm -rf target/janus-demo

bench-stream: build $(VERSITYGW)
	$(PY) bench/stream_bench.py --janus $(TARGET_DIR)/release/janus --reps 3

# 200 JanusTrainingJobs x 8 workers on the kwok test cluster, the real operator binary,
# side by side with 200 PyTorchJobs x 8 under the Kubeflow Training Operator (as it
# ships, and with its client rate limit lifted) and 200 TrainJobs x 8 nodes under
# Kubeflow Trainer v2 + JobSet, a fresh control plane each; then recovery (50 jobs, one
# worker of each failed) on another; 3 reps.
bench-operator: build controlplane kubeflow kubeflow-trainer
	$(PY) bench/operator_bench.py --operator $(TARGET_DIR)/release/janus-operator --kubeflow $(KUBEFLOW_DIR) \
		--trainer $(KUBEFLOW_TRAINER_DIR) --reps 3

# Regenerate the CRD YAML in the chart from the Rust types (a test fails when it drifts).
crdgen:
	$(CARGO) run --release -p janus-crds --features k8s --bin crdgen
