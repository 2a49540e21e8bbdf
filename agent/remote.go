package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/magic-ip/magic-ip/agent/kube"
	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// RemoteInformerFunc builds an informer of the producer pods in namespace that match selector (a
// label selector string) on the other nodes (kube.ProducerInformer bound to a client and a node).
type RemoteInformerFunc func(namespace, selector string) (cache.SharedIndexInformer, error)

// RemoteProducers watches, only while this node needs them, the producers of its Fallback
// MagicIPs on other nodes: one informer per producer source (namespace + selector, shared by
// MagicIPs with the same producers), started when a MagicIP of that source has no Ready producer
// on this node and stopped as soon as none needs it. A node whose producers are Ready watches
// nothing beyond its own pods: no API request at idle.
type RemoteProducers struct {
	newInformer RemoteInformerFunc
	handler     cache.ResourceEventHandler
	log         logr.Logger

	mu      sync.Mutex
	running map[remoteSource]*remoteWatch
}

// remoteSource is what a remote watch selects.
type remoteSource struct{ namespace, selector string }

type remoteWatch struct {
	inf    cache.SharedIndexInformer
	cancel context.CancelFunc
}

// NewRemoteProducers returns a RemoteProducers whose informers report to handler.
func NewRemoteProducers(newInformer RemoteInformerFunc, handler cache.ResourceEventHandler, log logr.Logger) *RemoteProducers {
	return &RemoteProducers{newInformer: newInformer, handler: handler, log: log, running: map[remoteSource]*remoteWatch{}}
}

// Ensure runs a watch for the producer source of every MagicIP in want (until ctx ends) and stops
// the others. A nil RemoteProducers watches nothing.
func (r *RemoteProducers) Ensure(ctx context.Context, want []v1alpha1.MagicIP) error {
	if r == nil {
		return nil
	}
	wanted := map[remoteSource][]string{}
	var errs []error
	for _, m := range want {
		sel, err := metav1.LabelSelectorAsSelector(m.Spec.Producer.Selector.AsLabelSelector())
		if err != nil {
			errs = append(errs, fmt.Errorf("MagicIP %s: producer selector: %w", m.Name, err))
			continue
		}
		src := remoteSource{namespace: m.Spec.Producer.Namespace, selector: sel.String()}
		wanted[src] = append(wanted[src], m.Name)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for src, w := range r.running {
		if _, keep := wanted[src]; !keep {
			w.cancel()
			delete(r.running, src)
			r.log.Info("stopped watching producers on other nodes: a local producer is Ready", "namespace", src.namespace, "selector", src.selector)
		}
	}
	for src, names := range wanted {
		if _, ok := r.running[src]; ok {
			continue
		}
		if err := r.start(ctx, src); err != nil {
			errs = append(errs, err)
			continue
		}
		r.log.Info("watching producers on other nodes: no Ready producer here", "magicIPs", names, "namespace", src.namespace, "selector", src.selector)
	}
	return errors.Join(errs...)
}

// start runs the informer of src until ctx ends or the watch is stopped; r.mu is held.
func (r *RemoteProducers) start(ctx context.Context, src remoteSource) error {
	inf, err := r.newInformer(src.namespace, src.selector)
	if err != nil {
		return fmt.Errorf("watch producers %s in namespace %s: %w", src.selector, src.namespace, err)
	}
	if _, err := inf.AddEventHandler(r.handler); err != nil {
		return fmt.Errorf("watch producers %s in namespace %s: %w", src.selector, src.namespace, err)
	}
	wctx, cancel := context.WithCancel(ctx)
	r.running[src] = &remoteWatch{inf: inf, cancel: cancel}
	go inf.RunWithContext(wctx)
	return nil
}

// Pods are the pods every running watch holds (read-only: shared with the informers' stores).
func (r *RemoteProducers) Pods() []corev1.Pod {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []corev1.Pod
	for _, w := range r.running {
		out = append(out, kube.List[corev1.Pod](w.inf.GetStore())...)
	}
	return out
}

// Watching is the number of producer sources watched now.
func (r *RemoteProducers) Watching() int {
	if r == nil {
		return 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.running)
}
