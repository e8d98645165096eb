//go:build tools

// Package tools pins the main package that ../build-kubeflow.sh compiles.
package tools

import _ "github.com/kubeflow/training-operator/cmd/training-operator.v1"
