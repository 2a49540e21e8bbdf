//go:build tools

// Package tools pins the commands this module builds: the test control plane (kube-apiserver,
// kube-scheduler, kubectl), the benchmark peers (kube-proxy, and kube-controller-manager for
// EndpointSlices) and the real nodes' kubelet.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
