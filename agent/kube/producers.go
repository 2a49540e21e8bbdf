package kube

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

// ProducerInformer watches the producer pods of one MagicIP that run on other nodes: only in
// namespace, only those matching selector (a label selector string), and not bound to node. It is
// started on demand (see agent.RemoteProducers) and slimmed by SlimPod, as the node's own pods.
func ProducerInformer(c rest.Interface, namespace, selector, node string) (cache.SharedIndexInformer, error) {
	lw := cache.NewFilteredListWatchFromClient(c, "pods", namespace, ProducerListOptions(selector, node))
	inf := cache.NewSharedIndexInformer(listThenWatch{lw}, &corev1.Pod{}, 0, cache.Indexers{})
	if err := inf.SetTransform(SlimPod); err != nil {
		return nil, fmt.Errorf("producer informer for %s/%s: %w", namespace, selector, err)
	}
	return inf, nil
}

// ProducerListOptions narrows a producer watch to selector's pods on nodes other than node.
func ProducerListOptions(selector, node string) func(*metav1.ListOptions) {
	notHere := fields.OneTermNotEqualSelector("spec.nodeName", node).String()
	return func(o *metav1.ListOptions) {
		o.LabelSelector = selector
		o.FieldSelector = notHere
	}
}

// listThenWatch makes client-go's reflector start with a plain list at resourceVersion "0",
// answered by the API server from its watch cache at once, then watch from the list's version,
// instead of a streaming list (WatchListClient, on by default since client-go 1.35), which first
// waits until the watch cache has caught up with etcd's latest revision: measured 28-31 ms on the
// harness, most of the time a node takes to fall back to other nodes' producers (README,
// BenchmarkFallbackRollout). A list at "0" may miss the last few milliseconds of changes; the
// watch that follows delivers them.
type listThenWatch struct{ *cache.ListWatch }

// IsWatchListSemanticsUnSupported tells the reflector not to use a streaming list.
func (listThenWatch) IsWatchListSemanticsUnSupported() bool { return true }
