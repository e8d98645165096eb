#!/usr/bin/env bash
# Builds (once) the Kubeflow Training Operator v1 from its Go module at the release
# pinned in ./kubeflow/go.mod and caches it, with that release's PyTorchJob CRD (the
# module's manifests/base/crds), under ${JANUS_CACHE:-$HOME/.cache/janus}/kubeflow-<version>/:
#   bin/training-operator   the manager (github.com/kubeflow/training-operator/cmd/training-operator.v1)
#   crds/*.yaml             its CustomResourceDefinitions (PyTorchJob, TFJob, ...)
# The one addition to the release is kubeflow/request_latency.go.overlay (metrics only,
# added to a copy of the module's source).
# Idempotent: when both exist and the stamp matches the pinned go.mod/go.sum (and this
# script), it returns at once. The last line on stdout is the cache directory.
# Used by bench/operator_bench.py (its kubeflow sides), the side-by-side benchmark; no test
# needs it.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODULE=github.com/kubeflow/training-operator
VERSION="$(awk -v m="$MODULE" '$1 == "require" && $2 == m {print $3}' "$HERE/kubeflow/go.mod")"
[[ -n "$VERSION" ]] || { echo "build-kubeflow.sh: no 'require $MODULE' line in $HERE/kubeflow/go.mod" >&2; exit 1; }
CACHE="${JANUS_CACHE:-$HOME/.cache/janus}"
DIR="$CACHE/kubeflow-$VERSION"

STAMP_INPUTS=("$HERE/kubeflow/go.mod" "$HERE/kubeflow/go.sum" "$HERE/kubeflow/request_latency.go.overlay")
present() { [[ -x "$DIR/bin/training-operator" && -f "$DIR/crds/kubeflow.org_pytorchjobs.yaml" ]]; }
# shellcheck source=go-cache.sh
source "$HERE/go-cache.sh"
cache_enter "the Kubeflow Training Operator $VERSION"
src="$(cd "$HERE/kubeflow" && go mod download "$MODULE" && go list -m -f '{{.Dir}}' "$MODULE")"
# The release as it is, plus one file in its main package that registers client-go's
# request-latency histograms (kubeflow/request_latency.go.overlay says why). Go refuses
# overlays inside the module cache: build a copy of the release, through a `replace` in
# a copy of kubeflow/ (the same module graph: go.sum unchanged).
cp -r "$src" "$TMP/training-operator"
chmod -R u+w "$TMP/training-operator"
cp "$HERE/kubeflow/request_latency.go.overlay" "$TMP/training-operator/cmd/training-operator.v1/zz_janus_request_latency.go"
mkdir "$TMP/mod"
cp "$HERE/kubeflow/go.mod" "$HERE/kubeflow/go.sum" "$HERE/kubeflow/tools.go" "$TMP/mod/"
(cd "$TMP/mod" && go mod edit -replace="$MODULE=$TMP/training-operator" &&
	nice -n 5 go build -trimpath -ldflags="-s -w" -o "$TMP/training-operator.bin" "$MODULE/cmd/training-operator.v1")
# The CRDs ship in the module itself: the same release as the binary.
mkdir -p "$TMP/crds"
cp "$src"/manifests/base/crds/kubeflow.org_*.yaml "$TMP/crds/"
chmod -R u+w "$TMP/crds"

rm -rf "$DIR/bin" "$DIR/crds"
mkdir -p "$DIR/bin"
mv "$TMP/training-operator.bin" "$DIR/bin/training-operator"
mv "$TMP/crds" "$DIR/crds"
cache_done
