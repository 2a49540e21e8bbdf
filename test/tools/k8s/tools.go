//go:build tools

// Package tools pins the commands this module builds: the test control plane (kube-apiserver,
// kubectl) and the benchmark peers (kube-proxy, and kube-controller-manager for EndpointSlices).
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
