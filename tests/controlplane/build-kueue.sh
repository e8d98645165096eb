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

stamp() {
	cat "$HERE/kueue/go.mod" "$HERE/kueue/go.sum" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1
}

up_to_date() {
	[[ -x "$DIR/bin/kueue" && -f "$DIR/crds/kueue.x-k8s.io_workloads.yaml" ]] || return 1
	[[ -f "$DIR/.stamp" && "$(<"$DIR/.stamp")" == "$(stamp)" ]]
}

if up_to_date; then
	echo "$DIR"
	exit 0
fi

command -v go >/dev/null || { echo "build-kueue.sh: go is required to build Kueue" >&2; exit 1; }
mkdir -p "$DIR"
# One build at a time (parallel `make` runs, several test binaries).
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
echo "build-kueue.sh: building Kueue $KUEUE_VERSION into $DIR" >&2
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
stamp >"$DIR/.stamp"
echo "build-kueue.sh: built in $((SECONDS - start))s" >&2
echo "$DIR"
