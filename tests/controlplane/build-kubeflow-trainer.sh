#!/usr/bin/env bash
# Builds (once) Kubeflow Trainer v2's and JobSet's controller managers from their Go
# modules at the releases pinned in ./kubeflow-trainer/go.mod and caches them, with the
# CRDs and the torch runtime of those releases, under
# ${JANUS_CACHE:-$HOME/.cache/janus}/kubeflow-trainer-<trainer version>/:
#   bin/trainer-controller-manager   github.com/kubeflow/trainer/v2/cmd/trainer-controller-manager
#   bin/jobset-controller-manager    sigs.k8s.io/jobset (its main package)
#   crds/*.yaml                      TrainJob, TrainingRuntime, ClusterTrainingRuntime
#                                    (Trainer's manifests/base/crds) and JobSet (its
#                                    config/components/crd/bases)
#   runtimes/torch_distributed.yaml  the ClusterTrainingRuntime Trainer ships
# The one addition to each release is kubeflow-trainer/request_latency.go.overlay (metrics
# only, added to a copy of the module's source). Both binaries come from one `go build`
# (one module graph: Trainer v2.3.0 requires JobSet v0.12.0, so they share every package).
# Idempotent: when all exist and the stamp matches the pinned go.mod/go.sum (and the
# overlay and this script), it returns at once. The last line on stdout is the cache
# directory. Used by bench/operator_bench.py (its trainer side); no test needs it.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MOD="$HERE/kubeflow-trainer"
TRAINER=github.com/kubeflow/trainer/v2
JOBSET=sigs.k8s.io/jobset
version() { awk -v m="$1" '($1 == "require" && $2 == m) {print $3} ($1 == m) {print $2}' "$MOD/go.mod" | head -1; }
VERSION="$(version "$TRAINER")"
JOBSET_VERSION="$(version "$JOBSET")"
[[ -n "$VERSION" && -n "$JOBSET_VERSION" ]] ||
	{ echo "build-kubeflow-trainer.sh: $MOD/go.mod must require $TRAINER and $JOBSET" >&2; exit 1; }
CACHE="${JANUS_CACHE:-$HOME/.cache/janus}"
DIR="$CACHE/kubeflow-trainer-$VERSION"

stamp() {
	cat "$MOD/go.mod" "$MOD/go.sum" "$MOD/request_latency.go.overlay" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1
}

up_to_date() {
	[[ -x "$DIR/bin/trainer-controller-manager" && -x "$DIR/bin/jobset-controller-manager" ]] || return 1
	[[ -f "$DIR/crds/jobset.x-k8s.io_jobsets.yaml" && -f "$DIR/runtimes/torch_distributed.yaml" ]] || return 1
	[[ -f "$DIR/.stamp" && "$(<"$DIR/.stamp")" == "$(stamp)" ]]
}

if up_to_date; then
	echo "$DIR"
	exit 0
fi

command -v go >/dev/null || { echo "build-kubeflow-trainer.sh: go is required to build Kubeflow Trainer and JobSet" >&2; exit 1; }
mkdir -p "$DIR"
# One build at a time (parallel `make` runs).
exec 9>"$DIR/.lock"
flock 9
if up_to_date; then
	echo "$DIR"
	exit 0
fi

TMP="$(mktemp -d "$DIR/.build.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
export CGO_ENABLED=0
# -mod=readonly: go.mod/go.sum in the checkout are the pin; never rewritten here.
export GOFLAGS="-mod=readonly ${GOFLAGS:-}"
start=$SECONDS
echo "build-kubeflow-trainer.sh: building Kubeflow Trainer $VERSION and JobSet $JOBSET_VERSION into $DIR" >&2
(cd "$MOD" && go mod download "$TRAINER" "$JOBSET")
trainer_src="$(cd "$MOD" && go list -m -f '{{.Dir}}' "$TRAINER")"
jobset_src="$(cd "$MOD" && go list -m -f '{{.Dir}}' "$JOBSET")"
# Each release as it is, plus one file in its main package that registers client-go's
# request-latency histograms (the overlay says why). Go refuses overlays inside the
# module cache: build copies of the releases, through `replace`s in a copy of this
# module (the same module graph: go.sum unchanged).
cp -r "$trainer_src" "$TMP/trainer"
cp -r "$jobset_src" "$TMP/jobset"
chmod -R u+w "$TMP/trainer" "$TMP/jobset"
cp "$MOD/request_latency.go.overlay" "$TMP/trainer/cmd/trainer-controller-manager/zz_janus_request_latency.go"
cp "$MOD/request_latency.go.overlay" "$TMP/jobset/zz_janus_request_latency.go"
mkdir "$TMP/mod" "$TMP/out"
cp "$MOD/go.mod" "$MOD/go.sum" "$MOD/tools.go" "$TMP/mod/"
# The version stamping of JobSet's Makefile (it logs it at start).
ldflags="-s -w -X sigs.k8s.io/jobset/pkg/version.GitVersion=$JOBSET_VERSION"
(cd "$TMP/mod" && go mod edit -replace="$TRAINER=$TMP/trainer" -replace="$JOBSET=$TMP/jobset" &&
	nice -n 5 go build -trimpath -ldflags="$ldflags" -o "$TMP/out/" "$TRAINER/cmd/trainer-controller-manager" "$JOBSET")
# The CRDs and the runtime ship in the modules themselves: the same releases as the binaries.
mkdir -p "$TMP/crds" "$TMP/runtimes"
cp "$trainer_src"/manifests/base/crds/trainer.kubeflow.org_*.yaml "$jobset_src"/config/components/crd/bases/*.yaml "$TMP/crds/"
cp "$trainer_src"/manifests/base/runtimes/torch_distributed.yaml "$TMP/runtimes/"
chmod -R u+w "$TMP/crds" "$TMP/runtimes"

rm -rf "$DIR/bin" "$DIR/crds" "$DIR/runtimes"
mkdir -p "$DIR/bin"
mv "$TMP/out/trainer-controller-manager" "$DIR/bin/trainer-controller-manager"
mv "$TMP/out/jobset" "$DIR/bin/jobset-controller-manager"
mv "$TMP/crds" "$DIR/crds"
mv "$TMP/runtimes" "$DIR/runtimes"
stamp >"$DIR/.stamp"
echo "build-kubeflow-trainer.sh: built in $((SECONDS - start))s" >&2
echo "$DIR"
