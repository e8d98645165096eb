#!/usr/bin/env bash
# node-deps.sh: installs (once) the Debian packages of the real test node and the
# end-to-end tests: containerd, runc, the CNI plugins, iptables, and prometheus.
# Maintainer scripts are kept from starting the packages' services (there is no init
# system here, and the tests start their own instances).
set -euo pipefail
PKGS=(containerd runc containernetworking-plugins iptables prometheus)
missing=()
for p in "${PKGS[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
((${#missing[@]} == 0)) && exit 0
[[ $EUID -eq 0 ]] || { echo "node-deps.sh: root is needed to install ${missing[*]}" >&2; exit 1; }
echo "node-deps.sh: installing ${missing[*]}" >&2
policy=/usr/sbin/policy-rc.d
created=0
if [[ ! -e $policy ]]; then
	printf '#!/bin/sh\nexit 101\n' >"$policy"
	chmod +x "$policy"
	created=1
fi
trap '((created)) && rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
