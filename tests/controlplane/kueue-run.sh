#!/usr/bin/env bash
# Runs Kueue's controller manager (from build-kueue.sh) as a local process against the
# test API server: kueue-run.sh KUEUE_DIR WORK_DIR KUBECONFIG CONFIG. Execs the manager;
# stdout/stderr are its logs.
#
# Without internal cert management (which would inject its CA into webhook
# configurations and CRD conversion webhooks that only exist in an in-cluster install)
# the manager reads its webhook certificate from the configured certDir and its metrics
# certificate from the fixed path /etc/kueue/metrics/certs. Both get a self-signed
# certificate from WORK_DIR; the fixed path is provided in a private mount namespace
# (an overlay on /etc), so the machine's /etc is left untouched. Needs root (unshare).
set -euo pipefail
KUEUE_DIR="$1" WORK="$2" KUBECONFIG_PATH="$3" CONFIG="$4"

certs="$WORK/certs"
mkdir -p "$certs"
if [[ ! -s "$certs/tls.crt" ]]; then
	openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj /CN=127.0.0.1 \
		-addext subjectAltName=IP:127.0.0.1 \
		-keyout "$certs/tls.key" -out "$certs/tls.crt" 2>/dev/null
fi
upper="$WORK/etc-upper"
mkdir -p "$upper/kueue/metrics/certs" "$WORK/etc-work"
cp "$certs/tls.crt" "$certs/tls.key" "$upper/kueue/metrics/certs/"

exec unshare --mount --propagation private sh -c '
	mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1,workdir=$2" /etc || exit 1
	exec "$3" --config="$4" --kubeconfig="$5"
' sh "$upper" "$WORK/etc-work" "$KUEUE_DIR/bin/kueue" "$CONFIG" "$KUBECONFIG_PATH"
