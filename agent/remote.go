package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

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
// the others. It returns what tells when the watches it started have their first list. A nil
// RemoteProducers watches nothing.
func (r *RemoteProducers) Ensure(ctx context.Context, want []v1alpha1.MagicIP) ([]cache.DoneChecker, error) {
	if r == nil {
		return nil, nil
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
	var started []cache.DoneChecker
	for src, names := range wanted {
		if _, ok := r.running[src]; ok {
			continue
		}
		inf, err := r.start(ctx, src)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		started = append(started, inf.HasSyncedChecker())
		r.log.Info("watching producers on other nodes: no Ready producer here", "magicIPs", names, "namespace", src.namespace, "selector", src.selector)
	}
	return started, errors.Join(errs...)
}

// start runs the informer of src until ctx ends or the watch is stopped; r.mu is held.
func (r *RemoteProducers) start(ctx context.Context, src remoteSource) (cache.SharedIndexInformer, error) {
	inf, err := r.newInformer(src.namespace, src.selector)
	if err == nil {
		_, err = inf.AddEventHandler(r.handler)
	}
	if err != nil {
		return nil, fmt.Errorf("watch producers %s in namespace %s: %w", src.selector, src.namespace, err)
	}
	wctx, cancel := context.WithCancel(ctx)
	r.running[src] = &remoteWatch{inf: inf, cancel: cancel}
	go inf.RunWithContext(wctx)
	return inf, nil
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

// remoteListTimeout bounds how long a sync waits for the first list of a watch it started.
const remoteListTimeout = time.Second

// desired computes the node's State from the stores, with the producers of other nodes that the
// running remote watches hold, and starts or stops those watches as the State asks. When it
// starts one, it waits (at most remoteListTimeout) for its first list, with the datapath's write
// prepared meanwhile, and computes again: the rules then go straight from the last local
// producer to the remote ones, instead of refusing for the time a list takes.
func (c *Controller) desired(ctx context.Context, mips []v1alpha1.MagicIP) State {
	compute := func() State {
		pods := append(kube.List[corev1.Pod](c.Pods), c.remote.Pods()...)
		return Desired(mips, pods, c.NodeName, c.DefaultInterface)
	}
	st := compute()
	started, err := c.remote.Ensure(ctx, st.Remote)
	if err != nil {
		c.Log.Error(err, "watching producers on other nodes failed; Fallback MagicIPs refuse meanwhile")
	}
	if len(started) == 0 {
		return st
	}
	// The rules will change once the list is in: whatever the write needs that the list does not
	// decide is readied meanwhile.
	c.Syncer.Datapath.Prepare(ctx)
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, remoteListTimeout)
	defer cancel()
	if !cache.WaitFor(wctx, "", started...) {
		c.Log.Info("producers on other nodes not listed in time; Fallback MagicIPs refuse until they are", "timeout", remoteListTimeout)
		return compute()
	}
	c.Log.V(2).Info("listed producers on other nodes", "watches", len(started), "took", time.Since(start))
	return compute()
}
