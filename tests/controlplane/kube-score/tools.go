//go:build tools

// Package tools pins the main package that ../build-kube-score.sh compiles.
package tools

import _ "github.com/zegl/kube-score/cmd/kube-score"
