//go:build tools

// Package tools pins the main packages that ../build-node.sh compiles in one `go build`.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
