#!/usr/bin/env bash
# up.sh DIR [NODES]: starts a real Kubernetes control plane on 127.0.0.1 (free ports;
# the API server on $JANUS_K8S_BIND_ADDRESS instead when set: node-up.sh puts it on the
# node's bridge address so that pods reach it):
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok, and creates
# NODES (default 4) fake GPU nodes kwok-node-0..kwok-node-<NODES-1>. Returns when the
# API server is ready, the "default" service account exists and every node is Ready.
#
# Writes into DIR: kubeconfig (admin, certificates embedded), env (shell-sourceable
# KUBECONFIG / JANUS_K8S_* variables), pids ("PID NAME" lines, for down.sh),
# <component>.log, pki/, etcd/ (data), nodes.yaml.
# Binaries: $JANUS_K8S_BIN if set, else whatever build.sh prints (building once).
# On failure it prints the tail of the failing component's log, stops everything
# it started (down.sh) and exits non-zero.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[[ $# -ge 1 && $# -le 2 ]] || { echo "usage: $0 DIR [NODES]" >&2; exit 2; }
mkdir -p "$1"
DIR="$(cd "$1" && pwd)"
NODES="${2:-4}"
[[ "$NODES" =~ ^[0-9]+$ ]] || { echo "up.sh: NODES must be a number, got '$NODES'" >&2; exit 2; }
TIMEOUT="${JANUS_K8S_UP_TIMEOUT:-90}"
BIND="${JANUS_K8S_BIND_ADDRESS:-127.0.0.1}"

if [[ -s "$DIR/pids" ]]; then
	while read -r pid _; do
		if [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$DIR/"; then
			echo "up.sh: a cluster runs in $DIR already (pid $pid; down.sh $DIR first)" >&2
			exit 1
		fi
	done <"$DIR/pids"
	rm -f "$DIR/pids" # left over by a run that died: nothing of it runs any more
fi

if [[ -n "${JANUS_K8S_BIN:-}" && -x "$JANUS_K8S_BIN/kube-apiserver" ]]; then
	BIN="$JANUS_K8S_BIN"
else
	BIN="$("$HERE/build.sh" | tail -n1)"
fi
KUBECTL=("$BIN/kubectl" --kubeconfig="$DIR/kubeconfig")
start_time=$(date +%s.%N)

fail() { # fail COMPONENT MESSAGE: exits; the EXIT trap stops what was started
	echo "up.sh: $2" >&2
	if [[ -n "$1" && -f "$DIR/$1.log" ]]; then
		echo "---- last lines of $DIR/$1.log ----" >&2
		tail -n 40 "$DIR/$1.log" >&2
		echo "----" >&2
	fi
	exit 1
}
ready=0
trap '((ready)) || "$HERE/down.sh" "$DIR" >&2' EXIT
trap 'fail "" "interrupted"' INT TERM
trap 'fail "" "command failed (line $LINENO): $BASH_COMMAND"' ERR

# --- ports --------------------------------------------------------------------------
read -r P_ETCD P_PEER P_API P_KCM P_SCHED < <(python3 - <<'EOF'
import socket
socks = []
for _ in range(5):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)

# --- certificates (ECDSA P-256, PKCS#8 keys) ------------------------------------------
PKI="$DIR/pki"
rm -rf "$PKI" "$DIR/etcd"
mkdir -p "$PKI"
cat >"$PKI/openssl.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,IP:$BIND,DNS:localhost,IP:10.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
EOF
pki() {
	local k
	for k in ca apiserver admin sa; do
		openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/$k.key"
	done
	openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"
	openssl req -x509 -new -config "$PKI/openssl.cnf" -extensions ca -key "$PKI/ca.key" \
		-subj "/CN=janus-test-ca" -days 3650 -out "$PKI/ca.crt"
	sign() { # sign NAME SUBJECT EXTENSIONS
		openssl req -new -config "$PKI/openssl.cnf" -key "$PKI/$1.key" -subj "$2" -out "$PKI/$1.csr"
		openssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
			-set_serial "0x$(openssl rand -hex 8)" -days 3650 \
			-extfile "$PKI/openssl.cnf" -extensions "$3" -out "$PKI/$1.crt"
	}
	sign apiserver "/CN=kube-apiserver" server
	sign admin "/O=system:masters/CN=janus-admin" client
	# The API server's client certificate towards kubelets (logs, exec, port-forward).
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/apiserver-kubelet-client.key"
	sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" client
}
pki >"$PKI/openssl.log" 2>&1 || { cat "$PKI/openssl.log" >&2; fail "" "certificate generation failed"; }

b64() { base64 -w0 <"$1"; }
cat >"$DIR/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: janus
  cluster:
    server: https://$BIND:$P_API
    certificate-authority-data: $(b64 "$PKI/ca.crt")
users:
- name: janus-admin
  user:
    client-certificate-data: $(b64 "$PKI/admin.crt")
    client-key-data: $(b64 "$PKI/admin.key")
contexts:
- name: janus
  context:
    cluster: janus
    user: janus-admin
    namespace: default
current-context: janus
EOF
chmod 600 "$DIR/kubeconfig"
printf 'export %s=%q\n' KUBECONFIG "$DIR/kubeconfig" JANUS_K8S_BIN "$BIN" \
	JANUS_K8S_API "https://$BIND:$P_API" JANUS_K8S_ETCD "http://127.0.0.1:$P_ETCD" \
	JANUS_K8S_NODES "$NODES" >"$DIR/env"

# --- processes ------------------------------------------------------------------------
: >"$DIR/pids"
start() { # start NAME BINARY ARGS...
	local name="$1"
	shift
	"$@" </dev/null >"$DIR/$name.log" 2>&1 &
	echo "$! $name" >>"$DIR/pids"
}
check_alive() {
	local pid name
	while read -r pid name; do
		kill -0 "$pid" 2>/dev/null || fail "$name" "$name (pid $pid) exited"
	done <"$DIR/pids"
}
# wait_for WHAT COMPONENT COMMAND...: polls COMMAND (every 0.1 s) until it succeeds.
wait_for() {
	local what="$1" component="$2"
	shift 2
	local deadline=$((SECONDS + TIMEOUT))
	until "$@" >/dev/null 2>&1; do
		check_alive
		((SECONDS < deadline)) || fail "$component" "timed out after ${TIMEOUT}s waiting for $what"
		sleep 0.1
	done
}

start etcd "$BIN/etcd" --name=janus --data-dir="$DIR/etcd" \
	--listen-client-urls="http://127.0.0.1:$P_ETCD" --advertise-client-urls="http://127.0.0.1:$P_ETCD" \
	--listen-peer-urls="http://127.0.0.1:$P_PEER" --initial-advertise-peer-urls="http://127.0.0.1:$P_PEER" \
	--initial-cluster="janus=http://127.0.0.1:$P_PEER" --initial-cluster-state=new \
	--unsafe-no-fsync --log-level=warn

start kube-apiserver "$BIN/kube-apiserver" \
	--etcd-servers="http://127.0.0.1:$P_ETCD" \
	--bind-address="$BIND" --advertise-address="$BIND" --secure-port="$P_API" \
	--kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
	--kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
	--kubelet-preferred-address-types=InternalIP,Hostname \
	--tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
	--client-ca-file="$PKI/ca.crt" \
	--authorization-mode=Node,RBAC \
	--service-account-issuer=https://kubernetes.default.svc.cluster.local \
	--service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
	--service-cluster-ip-range=10.0.0.0/24 \
	--allow-privileged=true --profiling=false \
	--cert-dir="$PKI"

# The others start once the API server answers: kube-controller-manager exits at once
# when its first read of the extension-apiserver-authentication ConfigMap is refused
# (seen on a loaded 2-core machine, where the API server took longer to listen).
wait_for "kube-apiserver /readyz" kube-apiserver "${KUBECTL[@]}" get --raw=/readyz

start kube-controller-manager "$BIN/kube-controller-manager" \
	--kubeconfig="$DIR/kubeconfig" \
	--authentication-kubeconfig="$DIR/kubeconfig" --authorization-kubeconfig="$DIR/kubeconfig" \
	--leader-elect=false --bind-address=127.0.0.1 --secure-port="$P_KCM" \
	--tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
	--service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
	--cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
	--use-service-account-credentials=false --controllers='*' \
	--kube-api-qps=200 --kube-api-burst=400 --cluster-name=janus

start kube-scheduler "$BIN/kube-scheduler" \
	--kubeconfig="$DIR/kubeconfig" \
	--authentication-kubeconfig="$DIR/kubeconfig" --authorization-kubeconfig="$DIR/kubeconfig" \
	--leader-elect=false --bind-address=127.0.0.1 --secure-port="$P_SCHED" \
	--tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key"

# KWOK_WORKDIR: not ~/.kwok, whose kwok.yaml kwok would load too.
start kwok env KWOK_WORKDIR="$DIR/kwok" "$BIN/kwok" \
	--kubeconfig="$DIR/kubeconfig" --config="$HERE/kwok-stages.yaml" \
	--manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
	--cidr=10.244.0.0/16 --node-ip=10.240.0.1


# --- fake GPU nodes ---------------------------------------------------------------------
: >"$DIR/nodes.yaml"
for ((i = 0; i < NODES; i++)); do
	cat >>"$DIR/nodes.yaml" <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    nvidia.com/gpu.present: "true"
    kubernetes.io/hostname: kwok-node-$i
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
spec:
  taints:
  - key: kwok.x-k8s.io/node
    value: fake
    effect: NoSchedule
status:
  capacity: {cpu: "64", memory: 512Gi, pods: "250", nvidia.com/gpu: "8"}
  allocatable: {cpu: "64", memory: 512Gi, pods: "250", nvidia.com/gpu: "8"}
  nodeInfo:
    architecture: amd64
    operatingSystem: linux
    kubeletVersion: fake
EOF
done
if ((NODES > 0)); then
	"${KUBECTL[@]}" apply -f "$DIR/nodes.yaml" >"$DIR/nodes.log" 2>&1 || fail nodes "creating the fake nodes failed"
fi

wait_for 'the "default" service account (kube-controller-manager)' kube-controller-manager \
	"${KUBECTL[@]}" -n default get serviceaccount default
healthz() { # the secure port's /healthz of kube-controller-manager / kube-scheduler
	python3 -c 'import ssl,sys,urllib.request as u
sys.exit(u.urlopen(sys.argv[1], context=ssl._create_unverified_context(), timeout=2).read() != b"ok")' \
		"https://127.0.0.1:$1/healthz"
}
wait_for "kube-controller-manager /healthz" kube-controller-manager healthz "$P_KCM"
wait_for "kube-scheduler /healthz" kube-scheduler healthz "$P_SCHED"
nodes_ready() {
	local n
	n="$("${KUBECTL[@]}" get nodes -l type=kwok \
		-o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' |
		grep -c '^True$')" || true
	[[ "$n" == "$NODES" ]]
}
wait_for "$NODES Ready kwok nodes" kwok nodes_ready
check_alive

ready=1
trap - INT TERM ERR
echo "up.sh: cluster ready in $(python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 1))" "$start_time" "$(date +%s.%N)")s: KUBECONFIG=$DIR/kubeconfig ($NODES kwok nodes)" >&2
echo "$DIR/kubeconfig"
