//go:build tools

// Package tools pins the main package that ../build-kueue.sh compiles.
package tools

import _ "sigs.k8s.io/kueue/cmd/kueue"
