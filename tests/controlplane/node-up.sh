#!/usr/bin/env bash
# node-up.sh DIR [IMAGE_ARCHIVE...]: a Kubernetes cluster with ONE REAL NODE on this
# machine, for the end-to-end tests: the control plane of up.sh (no kwok nodes), and
#   containerd + runc + CNI bridge/host-local/loopback (Debian's packages),
#   kubelet and kube-proxy (built from the same Kubernetes release by build-node.sh),
#   CoreDNS as a Deployment behind the kube-dns Service (no forwarding: it only knows
#   cluster.local), and a locally built pause image as the pod sandbox.
# Each IMAGE_ARCHIVE (an OCI archive, e.g. from images/build.py) is imported into the
# node's containerd, so pods can run it without a registry.
#
# Networking: pods live on the bridge janus0 (10.88.0.0/24, the node is 10.88.0.1,
# where the API server also listens). Nothing leaves the machine: a firewall rule drops
# every forwarded packet entering or leaving the bridge through another interface, CNI
# does no masquerading, and CoreDNS cannot forward. Teardown (node-down.sh, run by
# down.sh) restores the iptables rules and sysctls as they were and removes the bridge.
#
# Needs root (network namespaces, mounts, cgroups). One real node per machine at a
# time: a second run waits for the first (lock /run/janus-node.lock).
# Writes into DIR what up.sh writes, plus containerd/, kubelet/, node-saved/ (what
# teardown restores), node-pids, <component>.log, and appends to DIR/env:
# JANUS_NODE_NAME, JANUS_NODE_IP, JANUS_CONTAINERD_ADDRESS, JANUS_HELM, JANUS_NODE_BIN.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[[ $# -ge 1 ]] || { echo "usage: $0 DIR [IMAGE_ARCHIVE...]" >&2; exit 2; }
mkdir -p "$1"
DIR="$(cd "$1" && pwd)"
shift
IMAGES=("$@")
TIMEOUT="${JANUS_K8S_UP_TIMEOUT:-120}"

BRIDGE=janus0
NODE_IP=10.88.0.1
POD_CIDR=10.88.0.0/24
NODE_NAME=janus-node
DNS_IP=10.0.0.10
LOCK=/run/janus-node.lock
OWNER=/run/janus-node.owner

die() { echo "node-up.sh: $*" >&2; exit 1; }
[[ $EUID -eq 0 ]] || die "must run as root (network namespaces, mounts, cgroups)"
for c in containerd containerd-shim-runc-v2 runc ctr iptables-save iptables-restore ip openssl python3; do
	command -v "$c" >/dev/null || die "$c is missing: run tests/controlplane/node-deps.sh (make node-deps)"
done
for p in bridge host-local loopback; do
	[[ -x /usr/lib/cni/$p ]] || die "/usr/lib/cni/$p is missing: run tests/controlplane/node-deps.sh"
done
eval "$("$HERE/build-node.sh")"
BIN="${JANUS_K8S_BIN:-$("$HERE/build.sh" | tail -n1)}"
export JANUS_K8S_BIN="$BIN"
KUBECTL=("$BIN/kubectl" --kubeconfig="$DIR/kubeconfig")

# --- one real node at a time ----------------------------------------------------------
# The holder (its command line names DIR, so down.sh recognises it) keeps the lock for
# the cluster's lifetime.
rm -f "$DIR/node.locked"
# (flock --no-fork: the holder is the process that has the lock, nothing forks off it.)
flock --no-fork -w 1800 "$LOCK" python3 -c 'import sys, time
open(sys.argv[1], "w").close()
time.sleep(1e9)' "$DIR/node.locked" </dev/null >/dev/null 2>&1 &
echo "$! node-lock" >"$DIR/node-pids"
until [[ -e "$DIR/node.locked" ]]; do
	kill -0 "$(cut -d' ' -f1 "$DIR/node-pids")" 2>/dev/null || die "could not take $LOCK within 30 min"
	sleep 0.2
done
ready=0
trap '((ready)) || "$HERE/down.sh" "$DIR" >&2' EXIT
trap 'die "interrupted"' INT TERM
trap 'die "command failed (line $LINENO): $BASH_COMMAND"' ERR
# A run that died without its teardown left its state behind: restore it first.
if [[ -s "$OWNER" ]]; then
	old="$(<"$OWNER")"
	if [[ "$old" != "$DIR" && -d "$old/node-saved" ]]; then
		echo "node-up.sh: tearing down the node a previous run left in $old" >&2
		"$HERE/node-down.sh" "$old" >&2 || true
	fi
fi
ip link show "$BRIDGE" >/dev/null 2>&1 && die "bridge $BRIDGE exists but no run owns it: delete it (ip link del $BRIDGE)"

# --- what teardown restores -----------------------------------------------------------
SAVED="$DIR/node-saved"
rm -rf "$SAVED"
mkdir -p "$SAVED"
iptables-save >"$SAVED/iptables.rules"
ip6tables-save >"$SAVED/ip6tables.rules" 2>/dev/null || true
# The bridge plugin turns on ip_forward; the kubelet sets its kernel tunables
# (vm.overcommit_memory, kernel.panic, ...).
SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables vm.overcommit_memory
	vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
	kernel.keys.root_maxbytes net.ipv4.conf.all.route_localnet)
for s in "${SYSCTLS[@]}"; do
	f="/proc/sys/${s//.//}"
	[[ -r "$f" ]] && echo "$s $(<"$f")" >>"$SAVED/sysctls"
done
ls /run/netns 2>/dev/null | sort >"$SAVED/netns" || true
echo "$DIR" >"$OWNER"

# --- network --------------------------------------------------------------------------
ip link add "$BRIDGE" type bridge
ip addr add "$NODE_IP/24" dev "$BRIDGE"
ip link set "$BRIDGE" up
echo 1 >/proc/sys/net/ipv4/ip_forward
# kube-proxy's Service rules must see pod-to-pod traffic crossing the bridge.
echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
# Pods reach the node (API server, S3, each other) and never anything beyond it.
iptables -I FORWARD 1 -i "$BRIDGE" ! -o "$BRIDGE" -m comment --comment "janus-node: pods stay on this machine" -j DROP
iptables -I FORWARD 1 -o "$BRIDGE" ! -i "$BRIDGE" -m comment --comment "janus-node: nothing routed in to pods" -j DROP

# --- control plane on the node address ------------------------------------------------
JANUS_K8S_BIND_ADDRESS="$NODE_IP" "$HERE/up.sh" "$DIR" 0 >/dev/null
PKI="$DIR/pki"
read -r P_KUBELET P_KUBELET_HEALTH P_PROXY_HEALTH P_PROXY_METRICS < <(python3 - <<'EOF'
import socket
socks = []
for _ in range(4):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)
API="$(awk '/server:/ {print $2; exit}' "$DIR/kubeconfig")"

# --- node certificates ----------------------------------------------------------------
cert() { # cert NAME SUBJECT EXTENSIONS [SAN]
	local ext="$PKI/$1.ext"
	{
		echo "basicConstraints = critical,CA:FALSE"
		echo "keyUsage = critical,digitalSignature,keyEncipherment"
		echo "extendedKeyUsage = $3"
		[[ -n "${4:-}" ]] && echo "subjectAltName = $4"
	} >"$ext"
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/$1.key"
	openssl req -new -key "$PKI/$1.key" -subj "$2" -out "$PKI/$1.csr"
	openssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
		-set_serial "0x$(openssl rand -hex 8)" -days 3650 -extfile "$ext" -out "$PKI/$1.crt"
}
{
	cert kubelet-client "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
	cert kubelet-serving "/CN=$NODE_NAME" serverAuth "IP:$NODE_IP,DNS:$NODE_NAME"
	cert kube-proxy "/CN=system:kube-proxy" clientAuth
} >"$PKI/node-openssl.log" 2>&1 || { cat "$PKI/node-openssl.log" >&2; die "node certificates failed"; }
kubeconfig() { # kubeconfig FILE CERT
	cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: janus
  cluster: {server: "$API", certificate-authority: "$PKI/ca.crt"}
users:
- name: $2
  user: {client-certificate: "$PKI/$2.crt", client-key: "$PKI/$2.key"}
contexts:
- name: janus
  context: {cluster: janus, user: $2}
current-context: janus
EOF
}
kubeconfig "$DIR/kubelet.kubeconfig" kubelet-client
kubeconfig "$DIR/kube-proxy.kubeconfig" kube-proxy

# --- processes ------------------------------------------------------------------------
start() { # start NAME BINARY ARGS...
	local name="$1"
	shift
	"$@" </dev/null >"$DIR/$name.log" 2>&1 &
	echo "$! $name" >>"$DIR/node-pids"
}
fail() { # fail COMPONENT MESSAGE
	echo "node-up.sh: $2" >&2
	if [[ -f "$DIR/$1.log" ]]; then
		echo "---- last lines of $DIR/$1.log ----" >&2
		tail -n 40 "$DIR/$1.log" >&2
		echo "----" >&2
	fi
	exit 1
}
wait_for() { # wait_for WHAT COMPONENT COMMAND...
	local what="$1" component="$2" pid
	shift 2
	local deadline=$((SECONDS + TIMEOUT))
	until "$@" >/dev/null 2>&1; do
		while read -r pid name; do
			[[ "$name" == node-lock ]] || kill -0 "$pid" 2>/dev/null || fail "$name" "$name (pid $pid) exited"
		done <"$DIR/node-pids"
		((SECONDS < deadline)) || fail "$component" "timed out after ${TIMEOUT}s waiting for $what"
		sleep 0.2
	done
}

# containerd: all its state under DIR, its own socket; the CRI plugin runs pods with
# runc (cgroupfs), the bridge network and our pause image.
CTRD="$DIR/containerd"
SOCK="$CTRD/containerd.sock"
mkdir -p "$CTRD" "$DIR/cni/net.d" "$DIR/cni/ipam"
cat >"$CTRD/config.toml" <<EOF
version = 2
root = "$CTRD/root"
state = "$CTRD/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$CTRD/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "janus.local/pause:1"
  disable_apparmor = true
  # The kubelet asks for oom_score_adj -998 (sandboxes, critical pods); this machine
  # does not let even root go below its own score, so cap it there.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$DIR/cni/net.d"
EOF
cat >"$DIR/cni/net.d/10-janus.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "janus",
  "plugins": [{
    "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": {"type": "host-local", "dataDir": "$DIR/cni/ipam",
             "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
             "routes": [{"dst": "0.0.0.0/0"}]}
  }]
}
EOF
start containerd containerd --config "$CTRD/config.toml"
CTR=(ctr --address "$SOCK" -n k8s.io)
wait_for "containerd" containerd "${CTR[@]}" version

# Images: the sandbox, CoreDNS, and what the caller brings.
python3 "$HERE/../../images/build.py" pause --tag janus.local/pause:1 --binary "$JANUS_PAUSE" \
	--out "$DIR/images/pause.tar" >/dev/null
python3 "$HERE/../../images/build.py" coredns --tag "janus.local/coredns:$("$JANUS_COREDNS" -version | awk -F- '/CoreDNS-/ {print $2; exit}')" \
	--binary "$JANUS_COREDNS" --out "$DIR/images/coredns.tar" >/dev/null
COREDNS_IMAGE="$(tar -xOf "$DIR/images/coredns.tar" index.json | python3 -c 'import json,sys; print(json.load(sys.stdin)["manifests"][0]["annotations"]["io.containerd.image.name"])')"
for a in "$DIR/images/pause.tar" "$DIR/images/coredns.tar" "${IMAGES[@]}"; do
	"${CTR[@]}" images import "$a" >>"$DIR/images.log" 2>&1 || { cat "$DIR/images.log" >&2; die "importing $a failed"; }
done

# kubelet: cgroupfs on the cgroup v1 hierarchy this machine has (hence failCgroupV1:
# false), everything under DIR, no image garbage collection, no evictions for a busy
# disk, pods resolving through CoreDNS only (an empty resolv.conf: no host resolver).
: >"$DIR/resolv.conf"
mkdir -p "$DIR/kubelet" "$DIR/pod-logs"
# Volume mounts under the kubelet's root must propagate ("/" is a private mount here).
mount --bind "$DIR/kubelet" "$DIR/kubelet"
mount --make-rshared "$DIR/kubelet"
cat >"$DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$PKI/ca.crt"}
authorization: {mode: Webhook}
address: $NODE_IP
port: $P_KUBELET
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $P_KUBELET_HEALTH
tlsCertFile: "$PKI/kubelet-serving.crt"
tlsPrivateKeyFile: "$PKI/kubelet-serving.key"
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: "unix://$SOCK"
clusterDomain: cluster.local
clusterDNS: [$DNS_IP]
resolvConf: "$DIR/resolv.conf"
podLogsDir: "$DIR/pod-logs"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, nodefs.inodesFree: 1%, imagefs.available: 1%}
serializeImagePulls: false
registerNode: true
nodeStatusUpdateFrequency: 4s
syncFrequency: 10s
EOF
start kubelet "$JANUS_NODE_BIN/kubelet" --config="$DIR/kubelet.yaml" \
	--kubeconfig="$DIR/kubelet.kubeconfig" --root-dir="$DIR/kubelet" \
	--hostname-override="$NODE_NAME" --node-ip="$NODE_IP" \
	--node-labels=janus.dev/node=real --v=1

cat >"$DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$DIR/kube-proxy.kubeconfig"}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
healthzBindAddress: 127.0.0.1:$P_PROXY_HEALTH
metricsBindAddress: 127.0.0.1:$P_PROXY_METRICS
# NodePorts only on the node's bridge address, never on the host's interface.
nodePortAddresses: [$NODE_IP/32]
# Leave the host's conntrack and route_localnet settings alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false}
EOF
start kube-proxy "$JANUS_NODE_BIN/kube-proxy" --config="$DIR/kube-proxy.yaml" --v=1

node_ready() {
	[[ "$("${KUBECTL[@]}" get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}
wait_for "node $NODE_NAME Ready" kubelet node_ready
wait_for "kube-proxy /healthz" kube-proxy python3 -c 'import sys,urllib.request as u; u.urlopen(sys.argv[1], timeout=2)' \
	"http://127.0.0.1:$P_PROXY_HEALTH/healthz"

# --- CoreDNS --------------------------------------------------------------------------
sed -e "s|@IMAGE@|$COREDNS_IMAGE|" -e "s|@DNS_IP@|$DNS_IP|" "$HERE/coredns.yaml" |
	"${KUBECTL[@]}" apply -f - >"$DIR/coredns-apply.log" 2>&1 || fail coredns-apply "applying CoreDNS failed"
dns_ready() {
	[[ "$("${KUBECTL[@]}" -n kube-system get deploy coredns -o jsonpath='{.status.readyReplicas}')" == 1 ]]
}
wait_for "CoreDNS Ready" kubelet dns_ready

printf 'export %s=%q\n' JANUS_NODE_NAME "$NODE_NAME" JANUS_NODE_IP "$NODE_IP" \
	JANUS_CONTAINERD_ADDRESS "$SOCK" JANUS_HELM "$JANUS_HELM" JANUS_NODE_BIN "$JANUS_NODE_BIN" \
	JANUS_POD_CIDR "$POD_CIDR" >>"$DIR/env"
ready=1
trap - INT TERM ERR
echo "node-up.sh: node $NODE_NAME Ready with CoreDNS: KUBECONFIG=$DIR/kubeconfig" >&2
echo "$DIR/kubeconfig"
