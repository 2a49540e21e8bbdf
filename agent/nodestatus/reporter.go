package nodestatus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"

	"github.com/magic-ip/magic-ip/internal/latest"
)

// Retry delays of a failed write: doubling from minRetry up to maxRetry.
const (
	minRetry       = 100 * time.Millisecond
	maxRetry       = 30 * time.Second
	requestTimeout = 10 * time.Second
)

// Reporter keeps the agent's Node condition in line with the latest Status and, when it has a
// startup taint, removes that taint from the Node the first time the node is Programmed. Set only
// records; Run writes, one request at a time and only when the condition's content changes (never
// periodically), and retries a failed write with backoff.
type Reporter struct {
	client rest.Interface
	node   string
	taint  *corev1.Taint
	log    logr.Logger

	want *latest.Value[Status]

	// Run's own state. current is our condition as the Node holds it (nil: none), known once read.
	known     bool
	current   *corev1.NodeCondition
	taintGone bool
}

// NewReporter reports on node through client (core/v1); taint is the startup taint to remove
// (nil: none).
func NewReporter(client rest.Interface, node string, taint *corev1.Taint, log logr.Logger) *Reporter {
	return &Reporter{client: client, node: node, taint: taint, log: log.WithValues("condition", ConditionType), want: latest.New[Status]()}
}

// Set records the node's latest status for Run to report. It never blocks.
func (r *Reporter) Set(s Status) { r.want.Set(s) }

// Run reports until ctx ends.
func (r *Reporter) Run(ctx context.Context) {
	latest.Loop{
		Reconcile: r.reconcile,
		OnError: func(err error, in time.Duration) {
			r.log.Error(err, "could not report the node's status; retrying", "node", r.node, "in", in)
		},
		MinRetry: minRetry, MaxRetry: maxRetry,
	}.Run(ctx, r.want.Wake())
}

// reconcile writes the latest status if the Node does not say it already, then removes the
// startup taint if the node is programmed and the taint was not removed yet.
func (r *Reporter) reconcile(ctx context.Context) error {
	s, ok := r.want.Get()
	if !ok {
		return nil
	}
	if !r.known {
		node, err := r.get(ctx)
		if err != nil {
			return err
		}
		r.current, r.known = copyCondition(Find(node)), true
	}
	if !s.Matches(r.current) {
		c := s.Condition(r.current, time.Now())
		if err := r.patchCondition(ctx, c); err != nil {
			return err
		}
		r.current = &c
		r.log.Info("node status reported", "node", r.node, "status", c.Status, "reason", c.Reason, "message", c.Message)
	}
	if s.Programmed && r.taint != nil && !r.taintGone {
		removed, err := RemoveTaint(ctx, r.client, r.node, *r.taint)
		if err != nil {
			return err
		}
		r.taintGone = true
		if removed {
			r.log.Info("removed the startup taint: every MagicIP of this node is programmed", "node", r.node, "taint", TaintString(*r.taint))
		}
	}
	return nil
}

func copyCondition(c *corev1.NodeCondition) *corev1.NodeCondition {
	if c == nil {
		return nil
	}
	out := *c
	return &out
}

func (r *Reporter) get(ctx context.Context) (*corev1.Node, error) {
	return getNode(ctx, r.client, r.node)
}

func (r *Reporter) patchCondition(ctx context.Context, c corev1.NodeCondition) error {
	body, err := conditionPatch(c)
	if err != nil {
		return err
	}
	return patchStatus(ctx, r.client, r.node, body)
}

func getNode(ctx context.Context, client rest.Interface, name string) (*corev1.Node, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	var node corev1.Node
	if err := client.Get().Resource("nodes").Name(name).Do(ctx).Into(&node); err != nil {
		return nil, fmt.Errorf("get Node %s: %w", name, err)
	}
	return &node, nil
}

func patchStatus(ctx context.Context, client rest.Interface, name string, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	err := client.Patch(types.StrategicMergePatchType).Resource("nodes").Name(name).SubResource("status").Body(body).Do(ctx).Error()
	if err != nil {
		return fmt.Errorf("patch Node %s status (condition %s): %w", name, ConditionType, err)
	}
	return nil
}

// RemoveTaint removes t (matched by key and effect) from the Node, if it is there; it reports
// whether it was. The patch is conditional on the Node's resourceVersion and retried on conflict.
func RemoveTaint(ctx context.Context, client rest.Interface, name string, t corev1.Taint) (bool, error) {
	removed := false
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		node, err := getNode(ctx, client, name)
		if err != nil {
			return err
		}
		kept, found := withoutTaint(node, t)
		if !found {
			return nil
		}
		body, err := taintsPatch(node, kept)
		if err != nil {
			return err
		}
		pctx, cancel := context.WithTimeout(ctx, requestTimeout)
		defer cancel()
		if err := client.Patch(types.MergePatchType).Resource("nodes").Name(name).Body(body).Do(pctx).Error(); err != nil {
			return err
		}
		removed = true
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("remove taint %s from Node %s: %w", TaintString(t), name, err)
	}
	return removed, nil
}

// Forget removes what the agent reported on the Node: its condition and, when taint is not nil,
// that taint (so a node never keeps a startup taint nobody will remove). For `cleanup`. Both are
// tried; every error is returned.
func Forget(ctx context.Context, client rest.Interface, name string, taint *corev1.Taint) error {
	var errs []error
	node, err := getNode(ctx, client, name)
	switch {
	case err != nil:
		errs = append(errs, err)
	case Find(node) != nil:
		body, err := removeConditionPatch()
		if err == nil {
			err = patchStatus(ctx, client, name, body)
		}
		errs = append(errs, err)
	}
	if taint != nil {
		_, err := RemoveTaint(ctx, client, name, *taint)
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
