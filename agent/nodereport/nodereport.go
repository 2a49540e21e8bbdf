// Package nodereport keeps the agent's per-node record, the MagicIPNode named after its node: for
// every MagicIP, whether it is programmed there and its local producers. The record is written
// only when its content changes (never periodically), at most once per MinGap, one request at a
// time; the latest content wins (intermediate ones are skipped).
package nodereport

import (
	"context"
	"fmt"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
	"github.com/magic-ip/magic-ip/internal/latest"
)

// Timing of writes.
const (
	// MinGap is the least time between two writes of the record: a burst of changes (a producer
	// rollout) costs one write per MinGap at most.
	MinGap         = time.Second
	minRetry       = 100 * time.Millisecond
	maxRetry       = 30 * time.Second
	requestTimeout = 10 * time.Second
	resource       = "magicipnodes"
)

// Reporter writes the record of one node. Set records the content; Run writes it.
type Reporter struct {
	magicIP rest.Interface // magic-ip.dev/v1alpha1
	core    rest.Interface // v1: the Node, for the owner reference
	node    string
	started metav1.Time
	// datapath names the agent's datapath in the record ("iptables" or "nftables").
	datapath string
	log      logr.Logger

	want *latest.Value[[]v1alpha1.MagicIPOnNode]

	// Run's own state: the record as the API server holds it (nil: none), once known.
	known     bool
	current   *v1alpha1.MagicIPNode
	lastWrite time.Time
}

// New returns a Reporter for node; started is when the agent started (stored in the record, so
// that a restarted agent writes it once).
func New(magicIP, core rest.Interface, node, datapath string, started time.Time, log logr.Logger) *Reporter {
	return &Reporter{
		magicIP: magicIP, core: core, node: node, datapath: datapath, started: metav1.NewTime(started.Truncate(time.Second)),
		log: log.WithValues("magicIPNode", node), want: latest.New[[]v1alpha1.MagicIPOnNode](),
	}
}

// Set records the node's latest state, one entry per MagicIP sorted by name. It never blocks.
func (r *Reporter) Set(entries []v1alpha1.MagicIPOnNode) { r.want.Set(entries) }

// Run writes until ctx ends: after each Set, no sooner than MinGap after the last write, and again
// with backoff after a failure.
func (r *Reporter) Run(ctx context.Context) {
	latest.Loop{
		Reconcile: r.reconcile,
		OnError: func(err error, in time.Duration) {
			r.known = false // read it again: it may have changed or gone
			r.log.Error(err, "could not write the node's MagicIPNode record; retrying", "in", in)
		},
		Wait:     func() time.Duration { return MinGap - time.Since(r.lastWrite) },
		MinRetry: minRetry, MaxRetry: maxRetry,
	}.Run(ctx, r.want.Wake())
}

// reconcile writes the latest content if the record does not hold it already.
func (r *Reporter) reconcile(ctx context.Context) error {
	want, ok := r.want.Get()
	if !ok {
		return nil
	}
	if !r.known {
		cur, err := r.get(ctx)
		if err != nil {
			return err
		}
		r.current, r.known = cur, true
	}
	if r.current != nil && r.holds(r.current, want) {
		return nil
	}
	next, err := r.desired(ctx, want)
	if err != nil {
		return err
	}
	written, err := r.write(ctx, next)
	if err != nil {
		return err
	}
	r.current, r.lastWrite = written, time.Now()
	r.log.V(2).Info("node record written", "magicIPs", len(want))
	return nil
}

// holds reports whether rec already says want (the sync time aside).
func (r *Reporter) holds(rec *v1alpha1.MagicIPNode, want []v1alpha1.MagicIPOnNode) bool {
	return rec.Datapath == r.datapath && rec.AgentStartTime != nil && rec.AgentStartTime.Equal(&r.started) &&
		equality.Semantic.DeepEqual(normal(rec.MagicIPs), normal(want))
}

func normal(s []v1alpha1.MagicIPOnNode) []v1alpha1.MagicIPOnNode {
	if len(s) == 0 {
		return nil
	}
	return s
}

// desired is the record to write: the current one (for its resourceVersion) or a new one owned by
// the Node, with want, the agent's start time and now as the sync time.
func (r *Reporter) desired(ctx context.Context, want []v1alpha1.MagicIPOnNode) (*v1alpha1.MagicIPNode, error) {
	var next *v1alpha1.MagicIPNode
	if r.current != nil {
		next = r.current.DeepCopy()
	} else {
		owner, err := r.nodeOwner(ctx)
		if err != nil {
			return nil, err
		}
		next = &v1alpha1.MagicIPNode{ObjectMeta: metav1.ObjectMeta{Name: r.node, OwnerReferences: []metav1.OwnerReference{owner}}}
	}
	next.SetGroupVersionKind(v1alpha1.GroupVersion.WithKind("MagicIPNode"))
	now := metav1.Now()
	next.Datapath, next.AgentStartTime, next.LastSyncTime, next.MagicIPs = r.datapath, &r.started, &now, want
	return next, nil
}

// nodeOwner is the owner reference to the agent's Node: the record goes with it.
func (r *Reporter) nodeOwner(ctx context.Context) (metav1.OwnerReference, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	var node corev1.Node
	if err := r.core.Get().Resource("nodes").Name(r.node).Do(ctx).Into(&node); err != nil {
		return metav1.OwnerReference{}, fmt.Errorf("get Node %s (owner of its MagicIPNode): %w", r.node, err)
	}
	return *metav1.NewControllerRef(&node, corev1.SchemeGroupVersion.WithKind("Node")), nil
}

func (r *Reporter) get(ctx context.Context) (*v1alpha1.MagicIPNode, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	var rec v1alpha1.MagicIPNode
	err := r.magicIP.Get().Resource(resource).Name(r.node).Do(ctx).Into(&rec)
	switch {
	case apierrors.IsNotFound(err):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("get MagicIPNode %s: %w", r.node, err)
	}
	return &rec, nil
}

// write creates the record or updates it (conditional on its resourceVersion).
func (r *Reporter) write(ctx context.Context, rec *v1alpha1.MagicIPNode) (*v1alpha1.MagicIPNode, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	var out v1alpha1.MagicIPNode
	var err error
	if rec.ResourceVersion == "" {
		err = r.magicIP.Post().Resource(resource).Body(rec).Do(ctx).Into(&out)
	} else {
		err = r.magicIP.Put().Resource(resource).Name(r.node).Body(rec).Do(ctx).Into(&out)
	}
	if err != nil {
		return nil, fmt.Errorf("write MagicIPNode %s: %w", r.node, err)
	}
	return &out, nil
}
