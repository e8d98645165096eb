#!/usr/bin/env bash
# Builds (once) what the real node of the end-to-end tests needs beyond the control
# plane of build.sh, from upstream Go modules at pinned releases, each cached under
# ${JANUS_CACHE:-$HOME/.cache/janus}/<name>-<version>/bin with a stamp:
#   kubelet, kube-proxy  (module ./node: k8s.io/kubernetes, the release of ./k8s)
#   coredns              (module ./coredns: the CoreDNS kubeadm deploys, minimal plugins)
#   helm                 (module ./helm)
# and the pause binary of the node's sandbox image (./pause.c, with the C compiler).
# Idempotent: a component whose binaries exist and whose stamp matches returns at once.
# Stdout is shell-sourceable: JANUS_NODE_BIN, JANUS_COREDNS, JANUS_HELM, JANUS_PAUSE.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${JANUS_CACHE:-$HOME/.cache/janus}"
# modver DIR MODULE: the version DIR/go.mod requires (in a block or on a `require` line).
modver() { awk -v m="$2" '$1 == "require" {$1 = ""; $0 = $0} $1 == m {print $2; exit}' "$HERE/$1/go.mod"; }
K8S_VERSION="$(modver k8s k8s.io/kubernetes)"
NODE_K8S_VERSION="$(modver node k8s.io/kubernetes)"
COREDNS_VERSION="$(modver coredns github.com/coredns/coredns)"
HELM_VERSION="$(modver helm helm.sh/helm/v3)"
# One release for the whole cluster: a kubelet newer than its API server is unsupported.
[[ "$K8S_VERSION" == "$NODE_K8S_VERSION" ]] || {
	echo "build-node.sh: node/go.mod pins k8s.io/kubernetes $NODE_K8S_VERSION, k8s/go.mod $K8S_VERSION: bump both" >&2
	exit 1
}

export CGO_ENABLED=0
export GOFLAGS="-mod=readonly ${GOFLAGS:-}"

# build NAME VERSION MODULE_DIR LDFLAGS "BINARIES" PACKAGES...: one `go build` into
# $CACHE/NAME-VERSION/bin unless its stamp (go.mod, go.sum, this script) matches.
build() {
	local name="$1" version="$2" mod="$3" ldflags="$4" binaries="$5"
	shift 5
	local bin="$CACHE/$name-$version/bin" stamp b tmp start
	stamp="$(cat "$HERE/$mod/go.mod" "$HERE/$mod/go.sum" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
	local fresh=1
	for b in $binaries; do [[ -x "$bin/$b" ]] || fresh=0; done
	if ((fresh)) && [[ -f "$bin/.stamp" && "$(<"$bin/.stamp")" == "$stamp" ]]; then
		echo "$bin"
		return
	fi
	command -v go >/dev/null || { echo "build-node.sh: go is required to build $name" >&2; exit 1; }
	mkdir -p "$bin"
	(
		# One build of a component at a time (parallel test binaries, make -j).
		flock 9
		fresh=1
		for b in $binaries; do [[ -x "$bin/$b" ]] || fresh=0; done
		if ((fresh)) && [[ -f "$bin/.stamp" && "$(<"$bin/.stamp")" == "$stamp" ]]; then
			exit 0
		fi
		tmp="$(mktemp -d "$bin/.build.XXXXXX")"
		trap 'rm -rf "$tmp"' EXIT
		start=$SECONDS
		echo "build-node.sh: building $name $version into $bin" >&2
		(cd "$HERE/$mod" && nice -n 5 go build -trimpath -ldflags="$ldflags" -o "$tmp/" "$@")
		for b in $binaries; do mv -f "$tmp/$b" "$bin/$b"; done
		echo "$stamp" >"$bin/.stamp"
		echo "build-node.sh: $name built in $((SECONDS - start))s" >&2
	) 9>"$bin/.lock"
	echo "$bin"
}

# Version stamping as Kubernetes' own build does it (hack/lib/version.sh), so the
# kubelet registers as v1.34.4 and passes the API server's version skew checks.
minor="${K8S_VERSION#v*.}"
minor="${minor%%.*}"
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	k8s_ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
	k8s_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
NODE_BIN="$(build k8s-node "$K8S_VERSION" node "$k8s_ldflags" "kubelet kube-proxy" \
	k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy)"

COREDNS_BIN="$(build coredns "$COREDNS_VERSION" coredns "-s -w" coredns .)"

# As helm's Makefile: the version, and the Kubernetes version that `helm lint` and
# `helm template` assume (.Capabilities.KubeVersion) from the client-go it is built with.
client_go="$(modver helm k8s.io/client-go)"
client_go="${client_go#v}"
kmajor=$((${client_go%%.*} + 1))
kminor="$(cut -d. -f2 <<<"$client_go")"
helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
	helm_ldflags+=" -X $pkg.k8sVersionMajor=$kmajor -X $pkg.k8sVersionMinor=$kminor"
done
HELM_BIN="$(build helm "$HELM_VERSION" helm "$helm_ldflags" helm helm.sh/helm/v3/cmd/helm)"

# The sandbox ("pause") process of every pod: a static C binary, rebuilt when pause.c
# changes. Kept with the node binaries.
PAUSE="$NODE_BIN/pause"
pause_stamp="$(sha256sum <"$HERE/pause.c" | cut -d' ' -f1)"
if [[ ! -x "$PAUSE" || "$(cat "$PAUSE.stamp" 2>/dev/null)" != "$pause_stamp" ]]; then
	command -v cc >/dev/null || { echo "build-node.sh: a C compiler (cc) is required for the pause binary" >&2; exit 1; }
	cc -static -Os -Wall -Werror -o "$PAUSE.tmp" "$HERE/pause.c"
	strip "$PAUSE.tmp" 2>/dev/null || true
	mv -f "$PAUSE.tmp" "$PAUSE"
	echo "$pause_stamp" >"$PAUSE.stamp"
fi

printf 'export %s=%q\n' JANUS_NODE_BIN "$NODE_BIN" JANUS_COREDNS "$COREDNS_BIN/coredns" \
	JANUS_HELM "$HELM_BIN/helm" JANUS_PAUSE "$PAUSE"
