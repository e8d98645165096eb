#!/usr/bin/env bash
# Builds (once) kube-score, a well-known Kubernetes manifest scanner, from its Go module
# at the release pinned in ./kube-score/go.mod and caches it under
# ${JANUS_CACHE:-$HOME/.cache/janus}/kube-score-<version>/bin/kube-score. The chart test
# scans a rendered worker pod, a rendered eval pod and the chart with it. Idempotent:
# returns at once when the binary exists and the stamp matches the pins (and this
# script). The last line on stdout is the cache directory.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VERSION="$(awk '$1 == "require" && $2 == "github.com/zegl/kube-score" {print $3}' "$HERE/kube-score/go.mod")"
CACHE="${JANUS_CACHE:-$HOME/.cache/janus}"
DIR="$CACHE/kube-score-$VERSION"

STAMP_INPUTS=("$HERE/kube-score/go.mod" "$HERE/kube-score/go.sum")
present() { [[ -x "$DIR/bin/kube-score" ]]; }
# shellcheck source=go-cache.sh
source "$HERE/go-cache.sh"
cache_enter "kube-score $VERSION"
# kube-score's own release build stamps its version the same way (goreleaser ldflags).
ldflags="-s -w -X main.version=$VERSION"
(cd "$HERE/kube-score" && nice -n 5 go build -trimpath -ldflags="$ldflags" -o "$TMP/kube-score" github.com/zegl/kube-score/cmd/kube-score)
rm -rf "$DIR/bin"
mkdir -p "$DIR/bin"
mv "$TMP/kube-score" "$DIR/bin/kube-score"
cache_done
