#!/usr/bin/env bash
# Builds (once) the real control plane of the integration tests from upstream Go modules
# at pinned releases and caches it under ${JANUS_CACHE:-$HOME/.cache/janus}/k8s-<version>/bin:
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl  (module ./k8s)
#   kwok                                                                    (module ./kwok)
# Idempotent: when every binary exists and the stamp matches the pinned go.mod/go.sum
# (and this script), it returns at once. The last line on stdout is the bin directory.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The pin lives in k8s/go.mod (the Makefile reads it from there too).
K8S_VERSION="$(awk '$1 == "k8s.io/kubernetes" {print $2}' "$HERE/k8s/go.mod")"
CACHE="${JANUS_CACHE:-$HOME/.cache/janus}"
BIN="$CACHE/k8s-$K8S_VERSION/bin"
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok)

stamp() {
	# What the binaries depend on: the pinned modules and how they are built.
	cat "$HERE/k8s/go.mod" "$HERE/k8s/go.sum" "$HERE/kwok/go.mod" "$HERE/kwok/go.sum" \
		"$HERE/build.sh" | sha256sum | cut -d' ' -f1
}

up_to_date() {
	local b
	for b in "${BINARIES[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
	[[ -f "$BIN/.stamp" && "$(<"$BIN/.stamp")" == "$(stamp)" ]]
}

if up_to_date; then
	echo "$BIN"
	exit 0
fi

command -v go >/dev/null || { echo "build.sh: go is required to build the test control plane" >&2; exit 1; }
mkdir -p "$BIN"
# One build at a time (parallel `make` runs, several test binaries).
exec 9>"$BIN/.lock"
flock 9
if up_to_date; then
	echo "$BIN"
	exit 0
fi

TMP="$(mktemp -d "$BIN/.build.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
export CGO_ENABLED=0
# -mod=readonly: go.mod/go.sum in the checkout are the pin; never rewritten here.
export GOFLAGS="-mod=readonly ${GOFLAGS:-}"
GOBUILD=(nice -n 5 go build -trimpath -ldflags=-s\ -w)

start=$SECONDS
echo "build.sh: building Kubernetes $K8S_VERSION control plane + etcd into $BIN (one go build)" >&2
# The version stamping of Kubernetes' own build (hack/lib/version.sh), so that the
# servers report v1.34.4 (not v0.0.0-master) to clients and to their version checks.
minor="${K8S_VERSION#v*.}"
minor="${minor%%.*}"
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	k8s_ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
	k8s_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
(cd "$HERE/k8s" && "${GOBUILD[@]}" -ldflags="$k8s_ldflags" -o "$TMP/" \
	go.etcd.io/etcd/server/v3 \
	k8s.io/kubernetes/cmd/kube-apiserver \
	k8s.io/kubernetes/cmd/kube-controller-manager \
	k8s.io/kubernetes/cmd/kube-scheduler \
	k8s.io/kubernetes/cmd/kubectl)
# `go build` names the binary of go.etcd.io/etcd/server/v3 after "server".
mv "$TMP/server" "$TMP/etcd"
echo "build.sh: building kwok" >&2
(cd "$HERE/kwok" && "${GOBUILD[@]}" -o "$TMP/" sigs.k8s.io/kwok/cmd/kwok)

for b in "${BINARIES[@]}"; do mv -f "$TMP/$b" "$BIN/$b"; done
stamp >"$BIN/.stamp"
echo "build.sh: built in $((SECONDS - start))s" >&2
echo "$BIN"
