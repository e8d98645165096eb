#!/usr/bin/env bash
# node-down.sh DIR: tears down the real node that node-up.sh started in DIR and restores
# what it changed on the machine: every pod stopped (the kubelet releases its network
# and mounts), kubelet / kube-proxy / containerd and its shims stopped, mounts under DIR
# unmounted, leftover network namespaces removed, the bridge deleted, the iptables
# rules and sysctls exactly as saved, the node lock released. Idempotent; down.sh runs
# it before stopping the control plane. Logs stay in DIR.
set -uo pipefail
[[ $# -eq 1 ]] || { echo "usage: $0 DIR" >&2; exit 2; }
DIR="$1"
[[ -d "$DIR" ]] || exit 0
DIR="$(cd "$DIR" && pwd)"
SAVED="$DIR/node-saved"
BRIDGE=janus0
OWNER=/run/janus-node.owner

ours() { [[ -r /proc/$1/cmdline ]] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF -- "$DIR/"; }
stop() { # stop PID...: TERM, up to 10 s, then KILL
	local pid i alive
	for pid in "$@"; do kill -TERM "$pid" 2>/dev/null; done
	for i in $(seq 100); do
		alive=0
		for pid in "$@"; do ours "$pid" && alive=1; done
		((alive)) || return 0
		sleep 0.1
	done
	for pid in "$@"; do ours "$pid" && kill -KILL "$pid" 2>/dev/null; done
	sleep 0.2
}
pid_of() { # pid_of NAME: from node-pids, if still ours
	[[ -f "$DIR/node-pids" ]] || return 1
	local pid name
	while read -r pid name; do
		[[ "$name" == "$1" ]] && ours "$pid" && { echo "$pid"; return 0; }
	done <"$DIR/node-pids"
	return 1
}

SOCK="$DIR/containerd/containerd.sock"
CTR=(ctr --address "$SOCK" -n k8s.io)
if kubelet="$(pid_of kubelet)" && [[ -f "$DIR/kubeconfig" ]] && [[ -f "$DIR/env" ]]; then
	# Let the kubelet stop every pod itself (CNI DEL, volume unmounts), for up to 30 s.
	# The controllers go first, or they would replace the pods as they are deleted.
	if [[ -f "$DIR/pids" ]]; then
		while read -r pid name; do
			[[ "$name" == kube-controller-manager || "$name" == kube-scheduler ]] && ours "$pid" && stop "$pid"
		done <"$DIR/pids"
	fi
	# shellcheck disable=SC1091
	source "$DIR/env"
	"$JANUS_K8S_BIN/kubectl" --kubeconfig="$DIR/kubeconfig" --request-timeout=10s \
		delete pods --all -A --grace-period=0 --force --wait=false >/dev/null 2>&1
	for _ in $(seq 150); do
		[[ -z "$("${CTR[@]}" tasks ls -q 2>/dev/null)" ]] && break
		sleep 0.2
	done
	stop "$kubelet"
fi
if proxy="$(pid_of kube-proxy)"; then stop "$proxy"; fi
# Whatever the kubelet did not stop: kill the tasks, then containerd and its shims
# (their command lines name DIR's socket).
if pid_of containerd >/dev/null; then
	for t in $("${CTR[@]}" tasks ls -q 2>/dev/null); do
		"${CTR[@]}" tasks kill -s SIGKILL "$t" >/dev/null 2>&1
	done
	sleep 0.5
	stop "$(pid_of containerd)"
fi
shims=()
for p in /proc/[0-9]*; do
	pid="${p#/proc/}"
	[[ "$(cat "$p/comm" 2>/dev/null)" == containerd-shim* ]] && ours "$pid" && shims+=("$pid")
done
((${#shims[@]} == 0)) || stop "${shims[@]}"

# Mounts under DIR (overlay snapshots, pod volumes, sandbox shm), deepest first.
awk -v d="$DIR/" 'index($5, d) == 1 || $5 == substr(d, 1, length(d) - 1) "/kubelet" {print $5}' /proc/self/mountinfo |
	sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
# Network namespaces the CRI plugin created and did not remove.
if [[ -f "$SAVED/netns" ]]; then
	for ns in $(ls /run/netns 2>/dev/null | sort | comm -13 "$SAVED/netns" -); do
		ip netns delete "$ns" 2>/dev/null || { umount -l "/run/netns/$ns" 2>/dev/null; rm -f "/run/netns/$ns"; }
	done
fi

if [[ -d "$SAVED" ]]; then
	ip link del "$BRIDGE" 2>/dev/null
	# Every rule kube-proxy, the kubelet and node-up.sh added goes with the restore.
	# iptables-restore replaces only the tables in its input: a table that did not
	# exist (or was empty) at save time is emptied, with ACCEPT policies.
	for v in "" 6; do
		saved="$SAVED/ip${v}tables.rules"
		[[ -s "$saved" ]] && "ip${v}tables-restore" <"$saved" 2>/dev/null
		for t in $("ip${v}tables-save" 2>/dev/null | sed -n 's/^\*//p'); do
			grep -qx "\*$t" "$saved" 2>/dev/null && continue
			"ip${v}tables" -t "$t" -F
			"ip${v}tables" -t "$t" -X
			for c in $("ip${v}tables-save" -t "$t" | sed -n 's/^:\([A-Z]*\) .*/\1/p'); do
				"ip${v}tables" -t "$t" -P "$c" ACCEPT 2>/dev/null
			done
		done
	done
	if [[ -f "$SAVED/sysctls" ]]; then
		while read -r key value; do
			echo "$value" >"/proc/sys/${key//.//}" 2>/dev/null
		done <"$SAVED/sysctls"
	fi
	rm -rf "$SAVED"
fi
[[ -f "$OWNER" && "$(<"$OWNER")" == "$DIR" ]] && rm -f "$OWNER"
if lock="$(pid_of node-lock)"; then
	stop "$lock"
fi
rm -f "$DIR/node-pids" "$DIR/node.locked"
rm -rf "$DIR/containerd/root" "$DIR/containerd/state"
exit 0
