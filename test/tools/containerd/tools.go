//go:build tools

// Package tools pins the container runtime the harness's real nodes run: containerd, its runc
// shim and ctr (built with CGO_ENABLED=0 by hack/node-assets.sh).
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
