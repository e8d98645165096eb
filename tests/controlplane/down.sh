#!/usr/bin/env bash
# down.sh DIR: stops the control plane that up.sh started in DIR (TERM, then KILL after
# 5 s) and removes its etcd data. Idempotent; logs, kubeconfig and pki/ are kept.
set -uo pipefail
[[ $# -eq 1 ]] || { echo "usage: $0 DIR" >&2; exit 2; }
DIR="$1"
[[ -d "$DIR" ]] || exit 0
DIR="$(cd "$DIR" && pwd)"
# A real node (node-up.sh) goes first: its pods are stopped through the API server.
if [[ -f "$DIR/node-pids" || -d "$DIR/node-saved" ]]; then
	"$(dirname "${BASH_SOURCE[0]}")/node-down.sh" "$DIR"
fi

ours() { # a live process (not a zombie) whose command line names DIR (pids get reused)
	[[ -r /proc/$1/cmdline ]] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF -- "$DIR/"
}
stop() { # stop PID...: TERM, up to 5 s for them to exit, then KILL
	local pid alive i
	for pid in "$@"; do kill -TERM "$pid" 2>/dev/null; done
	for i in $(seq 50); do
		alive=0
		for pid in "$@"; do ours "$pid" && alive=1; done
		((alive)) || return 0
		sleep 0.1
	done
	for pid in "$@"; do ours "$pid" && kill -KILL "$pid" 2>/dev/null; done
	for i in $(seq 20); do
		alive=0
		for pid in "$@"; do ours "$pid" && alive=1; done
		((alive)) || return 0
		sleep 0.1
	done
}
components=() stores=()
if [[ -f "$DIR/pids" ]]; then
	while read -r pid name; do
		[[ "$pid" =~ ^[0-9]+$ ]] && ours "$pid" || continue
		if [[ "$name" == etcd ]]; then stores+=("$pid"); else components+=("$pid"); fi
	done <"$DIR/pids"
fi
# etcd last: kube-apiserver shuts down slowly once its storage is gone.
((${#components[@]} == 0)) || stop "${components[@]}"
((${#stores[@]} == 0)) || stop "${stores[@]}"
rm -rf "$DIR/etcd"
rm -f "$DIR/pids"
exit 0
