#!/usr/bin/env bash
# down.sh DIR: stops the control plane that up.sh started in DIR (TERM, then KILL after
# 5 s) and removes its etcd data. Idempotent; logs, kubeconfig and pki/ are kept.
set -uo pipefail
[[ $# -eq 1 ]] || { echo "usage: $0 DIR" >&2; exit 2; }
DIR="$1"
[[ -d "$DIR" ]] || exit 0
DIR="$(cd "$DIR" && pwd)"

ours() { # only a live process whose command line names DIR (pids get reused)
	[[ -r /proc/$1/cmdline ]] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF -- "$DIR/"
}
pids=()
if [[ -f "$DIR/pids" ]]; then
	while read -r pid _; do
		[[ "$pid" =~ ^[0-9]+$ ]] && ours "$pid" && pids+=("$pid")
	done <"$DIR/pids"
fi
# Reverse start order: kwok, scheduler, controller-manager, apiserver, etcd.
for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null; done
for _ in $(seq 50); do
	alive=()
	for pid in "${pids[@]}"; do ours "$pid" && alive+=("$pid"); done
	((${#alive[@]} == 0)) && break
	sleep 0.1
done
for pid in "${pids[@]}"; do ours "$pid" && kill -KILL "$pid" 2>/dev/null; done
for pid in "${pids[@]}"; do
	for _ in $(seq 20); do ours "$pid" || break; sleep 0.1; done
done
rm -rf "$DIR/etcd"
rm -f "$DIR/pids"
exit 0
