package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// Reconciler keeps the node in line with the MagicIPs and this node's pods. Every watch event
// maps to the same request, so bursts coalesce into one sync; a sync is full (re-reads the
// kernel and repairs drift) at start and once per ResyncPeriod.
type Reconciler struct {
	Client           client.Reader
	Syncer           *Syncer
	NodeName         string
	DefaultInterface string
	ResyncPeriod     time.Duration
	Recorder         events.EventRecorder
	Metrics          *Metrics
	Log              logr.Logger

	ready    atomic.Bool
	lastFull time.Time
	// pendingSince is when the oldest event not yet applied was observed.
	mu           sync.Mutex
	pendingSince time.Time
	reported     map[string]string
}

// nodeRequest is the single work item.
var nodeRequest = reconcile.Request{NamespacedName: types.NamespacedName{Name: "node"}}

// SetupWithManager registers the watches: all MagicIPs, and the pods the manager's cache holds
// (this node's only: the cache is built with a spec.nodeName field selector).
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	toNode := handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []reconcile.Request {
		r.observed()
		return []reconcile.Request{nodeRequest}
	})
	// One sync at start even when nothing exists yet: it installs our jumps, removes what a
	// previous run left behind, and makes the agent ready.
	initial := source.Func(func(_ context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
		q.Add(nodeRequest)
		return nil
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("magic-ip-agent").
		Watches(&v1alpha1.MagicIP{}, toNode).
		Watches(&corev1.Pod{}, toNode).
		WatchesRawSource(initial).
		WithOptions(controller.Options{MaxConcurrentReconciles: 1}).
		Complete(r)
}

func (r *Reconciler) observed() {
	r.mu.Lock()
	if r.pendingSince.IsZero() {
		r.pendingSince = time.Now()
	}
	r.mu.Unlock()
}

// Ready reports whether the first full sync has succeeded.
func (r *Reconciler) Ready() bool { return r.ready.Load() }

// Reconcile computes the desired State from the cache and applies it.
func (r *Reconciler) Reconcile(ctx context.Context, _ reconcile.Request) (reconcile.Result, error) {
	r.mu.Lock()
	since := r.pendingSince
	r.pendingSince = time.Time{}
	r.mu.Unlock()

	var mips v1alpha1.MagicIPList
	if err := r.Client.List(ctx, &mips); err != nil {
		return reconcile.Result{}, fmt.Errorf("list MagicIPs from cache: %w", err)
	}
	var pods corev1.PodList
	if err := r.Client.List(ctx, &pods); err != nil {
		return reconcile.Result{}, fmt.Errorf("list pods from cache: %w", err)
	}
	st := Desired(mips.Items, pods.Items, r.NodeName, r.DefaultInterface)
	full := time.Since(r.lastFull) >= r.ResyncPeriod
	start := time.Now()
	execsBefore := r.Syncer.Ipt.Execs()
	res, err := r.Syncer.Sync(ctx, st, full)
	r.Metrics.observeSync(time.Since(start), r.Syncer.Ipt.Execs()-execsBefore, res.Wrote)
	if err != nil {
		r.Metrics.SyncErrors.Inc()
		r.mu.Lock()
		if r.pendingSince.IsZero() || (!since.IsZero() && since.Before(r.pendingSince)) {
			r.pendingSince = since
		}
		r.mu.Unlock()
		return reconcile.Result{}, fmt.Errorf("sync node %s: %w", r.NodeName, err)
	}
	if full {
		r.lastFull = start
	}
	if !since.IsZero() && res.Wrote {
		r.Metrics.EventToApplied.Observe(time.Since(since).Seconds())
	}
	if len(res.Drift) > 0 {
		r.Metrics.DriftRepairs.Inc()
		r.Log.Info("repaired rules changed behind our back", "drift", res.Drift)
	}
	r.report(mips.Items, res)
	r.ready.Store(true)
	r.Log.V(2).Info("synced", "full", full, "wrote", res.Wrote, "services", len(res.State.Services),
		"conntrackFlushed", res.Flushed, "took", time.Since(start))
	return reconcile.Result{RequeueAfter: r.ResyncPeriod}, nil
}

// report emits a Warning Event (and logs) when a MagicIP's problem on this node appears or
// changes; nothing is repeated while the problem stays the same.
func (r *Reconciler) report(mips []v1alpha1.MagicIP, res SyncResult) {
	problems := map[string]string{}
	for name, c := range res.State.Conflicts {
		problems[name] = fmt.Sprintf("Conflict|%s is already claimed by MagicIP %s (the older one wins); this one is ignored", c.Claim, c.Winner)
	}
	for name, why := range res.State.Invalid {
		problems[name] = "Invalid|" + why
	}
	for name, ifname := range res.Unserved {
		problems[name] = fmt.Sprintf("InterfaceUnavailable|node %s: %v", r.NodeName, res.FailedInterfaces[ifname])
	}
	r.Metrics.setProblems(problems)
	r.Metrics.setProducers(res.State)
	for _, m := range mips {
		p, had := problems[m.Name], r.reported[m.Name]
		if p == "" || p == had {
			continue
		}
		reason, note, _ := strings.Cut(p, "|")
		r.Log.Info("MagicIP not served on this node", "magicIP", m.Name, "reason", reason, "message", note)
		if r.Recorder != nil {
			r.Recorder.Eventf(&m, nil, corev1.EventTypeWarning, reason, "Program", "%s", note)
		}
	}
	r.reported = problems
}

// Checker is a readyz check: ready once the first full sync succeeded.
func (r *Reconciler) Checker(_ *http.Request) error {
	if !r.Ready() {
		return errors.New("first sync not done yet")
	}
	return nil
}
