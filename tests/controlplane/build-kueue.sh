#!/usr/bin/env bash
# Builds (once) Kueue's controller manager from its Go module at the release pinned in
# ./kueue/go.mod and caches it, with the CRDs of that release (the module's
# config/components/crd/bases), under ${JANUS_CACHE:-$HOME/.cache/janus}/kueue-<version>/:
#   bin/kueue         the manager (sigs.k8s.io/kueue/cmd/kueue)
#   crds/*.yaml       its CustomResourceDefinitions
# Idempotent: when both exist and the stamp matches the pinned go.mod/go.sum (and this
# script), it returns at once. The last line on stdout is the cache directory.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KUEUE_VERSION="$(awk '$1 == "require" && $2 == "sigs.k8s.io/kueue" {print $3}' "$HERE/kueue/go.mod")"
CACHE="${JANUS_CACHE:-$HOME/.cache/janus}"
DIR="$CACHE/kueue-$KUEUE_VERSION"

STAMP_INPUTS=("$HERE/kueue/go.mod" "$HERE/kueue/go.sum")
present() { [[ -x "$DIR/bin/kueue" && -f "$DIR/crds/kueue.x-k8s.io_workloads.yaml" ]]; }
# shellcheck source=go-cache.sh
source "$HERE/go-cache.sh"
cache_enter "Kueue $KUEUE_VERSION"
# The version stamping of Kueue's own Makefile (it reports it in logs and metrics).
ldflags="-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION"
(cd "$HERE/kueue" && nice -n 5 go build -trimpath -ldflags="$ldflags" -o "$TMP/kueue" sigs.k8s.io/kueue/cmd/kueue)
# The CRDs ship in the module itself: the same release as the binary.
src="$(cd "$HERE/kueue" && go list -m -f '{{.Dir}}' sigs.k8s.io/kueue)"
mkdir -p "$TMP/crds"
cp "$src"/config/components/crd/bases/*.yaml "$TMP/crds/"
chmod -R u+w "$TMP/crds"

rm -rf "$DIR/bin" "$DIR/crds"
mkdir -p "$DIR/bin"
mv "$TMP/kueue" "$DIR/bin/kueue"
mv "$TMP/crds" "$DIR/crds"
cache_done
