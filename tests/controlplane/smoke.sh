#!/usr/bin/env bash
# smoke.sh: builds the control plane (once), starts it in a temp dir and checks for real:
# GPU nodes Ready, a GPU pod scheduled and Running, a test-set Failed / Succeeded pod
# status that stays, garbage collection, namespace deletion, CRD CEL validation.
# Tears the cluster down; exits non-zero on the first failure.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="$("$HERE/build.sh" | tail -n1)"
export JANUS_K8S_BIN="$BIN"
D="$(mktemp -d "${TMPDIR:-/tmp}/janus-k8s-smoke.XXXXXX")"
cleanup() {
	"$HERE/down.sh" "$D"
	if [[ "${KEEP:-0}" == 1 ]]; then echo "smoke: logs kept in $D" >&2; else rm -rf "$D"; fi
}
trap cleanup EXIT

t0=$(date +%s.%N)
"$HERE/up.sh" "$D" 4 >/dev/null
t1=$(date +%s.%N)
echo "smoke: up.sh took $(python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 1))" "$t0" "$t1")s"
# shellcheck disable=SC1091
source "$D/env"
k() { "$BIN/kubectl" "$@"; }
die() {
	echo "smoke: FAIL: $*" >&2
	KEEP=1
	exit 1
}
ok() { echo "smoke: ok: $*"; }
# until_true SECONDS COMMAND...
until_true() {
	local deadline=$((SECONDS + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || return 1
		sleep 0.2
	done
}

# 1. nodes
gpus="$(k get nodes -l type=kwok -o jsonpath='{range .items[*]}{.metadata.name}={.status.capacity.nvidia\.com/gpu},{.status.allocatable.nvidia\.com/gpu},{.status.conditions[?(@.type=="Ready")].status} {end}')"
[[ "$gpus" == "kwok-node-0=8,8,True kwok-node-1=8,8,True kwok-node-2=8,8,True kwok-node-3=8,8,True " ]] ||
	die "nodes: got '$gpus'"
ok "4 kwok nodes Ready with nvidia.com/gpu capacity/allocatable 8"

# 2. a GPU pod is scheduled onto a fake node and becomes Running
pod() { # pod NAME
	cat <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $1
spec:
  restartPolicy: Never
  nodeSelector: {type: kwok}
  tolerations:
  - {key: kwok.x-k8s.io/node, operator: Exists, effect: NoSchedule}
  containers:
  - name: worker
    image: janus-fake-image
    resources:
      limits: {nvidia.com/gpu: 2}
EOF
}
pod gpu-fail | k apply -f - >/dev/null
pod gpu-ok | k apply -f - >/dev/null
for p in gpu-fail gpu-ok; do
	k wait --for=condition=PodScheduled "pod/$p" --timeout=30s >/dev/null || die "$p not scheduled"
	k wait --for=jsonpath='{.status.phase}'=Running "pod/$p" --timeout=30s >/dev/null ||
		die "$p not Running: $(k get pod "$p" -o yaml)"
done
node="$(k get pod gpu-fail -o jsonpath='{.spec.nodeName}')"
[[ "$node" == kwok-node-* ]] || die "gpu-fail scheduled to '$node'"
ok "GPU pods (nvidia.com/gpu: 2) Scheduled (gpu-fail on $node) and Running"

# 3. a test finishes a pod through the status subresource; kwok leaves it alone
finish() { # finish POD PHASE EXIT_CODE REASON
	local ready=False now
	now="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
	k patch pod "$1" --subresource=status --type=strategic -p "$(
		cat <<EOF
{"status": {"phase": "$2",
  "conditions": [{"type": "Ready", "status": "$ready", "reason": "Pod$2"},
                 {"type": "ContainersReady", "status": "$ready", "reason": "Pod$2"}],
  "containerStatuses": [{"name": "worker", "ready": false, "started": false,
    "state": {"running": null,
              "terminated": {"exitCode": $3, "reason": "$4", "startedAt": "$now", "finishedAt": "$now"}}}]}}
EOF
	)" >/dev/null
}
finish gpu-fail Failed 3 Error || die "patching gpu-fail to Failed"
finish gpu-ok Succeeded 0 Completed || die "patching gpu-ok to Succeeded"
sleep 5
got="$(k get pod gpu-fail -o jsonpath='{.status.phase} {.status.containerStatuses[0].state.terminated.exitCode} {.status.containerStatuses[0].state.running}')"
[[ "$got" == "Failed 3 " ]] || die "gpu-fail after 5 s: '$got' (want 'Failed 3 ')"
got="$(k get pod gpu-ok -o jsonpath='{.status.phase} {.status.containerStatuses[0].state.terminated.exitCode} {.status.containerStatuses[0].state.running}')"
[[ "$got" == "Succeeded 0 " ]] || die "gpu-ok after 5 s: '$got' (want 'Succeeded 0 ')"
ok "test-set Failed (exit 3) and Succeeded (exit 0) pod statuses stay for 5 s"
k delete pod gpu-fail gpu-ok --wait=true --timeout=30s >/dev/null || die "deleting finished pods"
ok "pods deleted (kwok removes them)"

# 4. garbage collection of an ownerReference dependent, foreground and background
for policy in foreground background; do
	k create configmap "owner-$policy" >/dev/null
	uid="$(k get configmap "owner-$policy" -o jsonpath='{.metadata.uid}')"
	k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ConfigMap
metadata:
  name: dependent-$policy
  ownerReferences:
  - {apiVersion: v1, kind: ConfigMap, name: owner-$policy, uid: $uid, blockOwnerDeletion: true}
EOF
	k delete configmap "owner-$policy" --cascade="$policy" --wait=false >/dev/null
	gone() { ! k get configmap "$1" >/dev/null 2>&1; }
	until_true 30 gone "dependent-$policy" || die "dependent-$policy still exists 30 s after its owner was deleted ($policy)"
	until_true 30 gone "owner-$policy" || die "owner-$policy still exists ($policy)"
done
ok "garbage collector deletes ownerReference dependents (foreground and background)"

# 5. namespace deletion (namespace controller), with a pod admitted in a fresh namespace
k create namespace smoke-ns >/dev/null
until_true 30 k -n smoke-ns get serviceaccount default || die "no default service account in smoke-ns"
pod ns-pod | k -n smoke-ns apply -f - >/dev/null
k -n smoke-ns wait --for=jsonpath='{.status.phase}'=Running pod/ns-pod --timeout=30s >/dev/null || die "ns-pod not Running"
k delete namespace smoke-ns --wait=true --timeout=60s >/dev/null || die "namespace smoke-ns not deleted"
ok "namespace with a running pod deleted"

# 6. CRD validation rules (CEL)
k apply -f - >/dev/null <<'EOF'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.smoke.janus.dev
spec:
  group: smoke.janus.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              replicas: {type: integer}
              minReplicas: {type: integer}
            x-kubernetes-validations:
            - rule: "self.minReplicas <= self.replicas"
              message: "minReplicas must not exceed replicas"
EOF
k wait --for=condition=Established crd/widgets.smoke.janus.dev --timeout=30s >/dev/null || die "CRD not Established"
widget() { printf 'apiVersion: smoke.janus.dev/v1\nkind: Widget\nmetadata: {name: %s}\nspec: {replicas: %s, minReplicas: %s}\n' "$@"; }
# The CRD's REST endpoint can lag Established by a moment.
until_true 30 bash -c "$(declare -f widget); widget good 3 1 | '$BIN/kubectl' apply -f -" || die "valid Widget rejected"
if err="$(widget bad 1 3 | k apply -f - 2>&1)"; then die "invalid Widget accepted"; fi
[[ "$err" == *"minReplicas must not exceed replicas"* ]] || die "invalid Widget rejected without the rule's message: $err"
ok "CRD x-kubernetes-validations rule rejects a bad object: ${err##*: }"

echo "smoke: PASS"
