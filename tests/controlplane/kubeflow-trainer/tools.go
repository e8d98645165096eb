//go:build tools

// Package tools pins the main packages that ../build-kubeflow-trainer.sh compiles.
package tools

import (
	_ "github.com/kubeflow/trainer/v2/cmd/trainer-controller-manager"
	_ "sigs.k8s.io/jobset"
)
