package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/magic-ip/magic-ip/agent/kube"
	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// EventRecorder reports a MagicIP's problem on this node as a Warning Event.
type EventRecorder interface {
	Warning(m *v1alpha1.MagicIP, reason, note string)
}

// ControllerConfig is what a Controller works with.
type ControllerConfig struct {
	// MagicIPs and Pods are the informers' stores (Pods: this node's only, slimmed).
	MagicIPs, Pods   cache.Store
	Syncer           *Syncer
	NodeName         string
	DefaultInterface string
	ResyncPeriod     time.Duration
	// MaxBackoff caps the delay between retries of a failing sync (DefaultMaxBackoff when 0).
	MaxBackoff time.Duration
	// Addresses says which magic addresses may be programmed; the others are reported Invalid.
	Addresses AddressPolicy
	Recorder  EventRecorder
	// Node reports the node's status after every sync (nil: not reported).
	Node NodeReporter
	// Record keeps the node's MagicIPNode record after every sync (nil: not kept).
	Record  RecordReporter
	Metrics *Metrics
	Log     logr.Logger

	// RemoteInformer builds the on-demand watches of producers on other nodes that Fallback
	// MagicIPs use while this node has no usable producer (nil: no such watch, no fallback).
	RemoteInformer RemoteInformerFunc
}

// Controller keeps the node in line with the MagicIPs and this node's pods. Every informer event
// asks for the same single work item, so bursts coalesce into one sync and syncs never overlap; a
// sync is full (re-reads the kernel and repairs drift) at start and once per ResyncPeriod.
type Controller struct {
	ControllerConfig

	queue    workqueue.TypedRateLimitingInterface[string]
	limiter  workqueue.TypedRateLimiter[string]
	ready    atomic.Bool
	lastFull time.Time
	// mu guards the fields below. pendingSince is when the oldest event not yet applied was
	// observed; failing is the error of the last sync, nil once one succeeds.
	mu           sync.Mutex
	pendingSince time.Time
	failing      error
	failingSince time.Time
	reported     map[string]string
	// remote watches the producers on other nodes that this node's Fallback MagicIPs need now.
	remote *RemoteProducers
}

// nodeKey is the single work item.
const nodeKey = "node"

// DefaultMaxBackoff caps the retry delay of a failing sync: seconds, not client-go's default
// 1000 s, so a node recovers soon after what broke a sync is fixed.
const DefaultMaxBackoff = 10 * time.Second

// NewController returns a Controller; failed syncs are retried with exponential backoff from
// 5 ms up to cfg.MaxBackoff. There is a single work item, so no overall rate limit is needed.
func NewController(cfg ControllerConfig) *Controller {
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	limiter := workqueue.NewTypedItemExponentialFailureRateLimiter[string](5*time.Millisecond, cfg.MaxBackoff)
	c := &Controller{
		ControllerConfig: cfg,
		limiter:          limiter,
		queue:            workqueue.NewTypedRateLimitingQueue(limiter),
	}
	if cfg.RemoteInformer != nil {
		c.remote = NewRemoteProducers(cfg.RemoteInformer, c.Handler(), cfg.Log)
	}
	return c
}

// Handler is the informers' event handler: it records that something changed and asks for a sync.
func (c *Controller) Handler() cache.ResourceEventHandler {
	changed := func() {
		c.observed()
		c.queue.Add(nodeKey)
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { changed() },
		UpdateFunc: func(any, any) { changed() },
		DeleteFunc: func(any) { changed() },
	}
}

func (c *Controller) observed() {
	c.mu.Lock()
	if c.pendingSince.IsZero() {
		c.pendingSince = time.Now()
	}
	c.mu.Unlock()
}

// Run waits until every informer has synced, then syncs once (even with nothing to program: it
// installs our jumps, removes what a previous run left behind and makes the agent ready), again
// on every change, once per ResyncPeriod, and with backoff after a failure, until ctx ends.
func (c *Controller) Run(ctx context.Context, synced ...cache.DoneChecker) {
	q := c.queue
	go func() {
		<-ctx.Done()
		q.ShutDown()
	}()
	if !cache.WaitFor(ctx, "", synced...) {
		return
	}
	q.Add(nodeKey)
	for c.processNext(ctx) {
	}
}

// processNext runs one sync; it is false once the queue is shut down.
func (c *Controller) processNext(ctx context.Context) bool {
	q := c.queue
	key, quit := q.Get()
	if quit {
		return false
	}
	defer q.Done(key)
	if err := c.sync(ctx); err != nil {
		if ctx.Err() == nil {
			c.setFailing(err)
			c.Log.Error(err, "sync failed; retrying with backoff", "failures", q.NumRequeues(key)+1, "maxBackoff", c.MaxBackoff)
		}
		q.AddRateLimited(key)
		return true
	}
	c.setFailing(nil)
	q.Forget(key)
	q.AddAfter(key, c.ResyncPeriod)
	return true
}

// Ready reports whether the first full sync has succeeded.
func (c *Controller) Ready() bool { return c.ready.Load() }

// ReadyCheck is the readiness check: ready once the first full sync succeeded, and not while the
// last sync failed (the node may then lag behind the API; what was applied before stays).
func (c *Controller) ReadyCheck() error {
	if !c.Ready() {
		return errors.New("first sync not done yet")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failing != nil {
		return fmt.Errorf("syncs failing since %s: %w", c.failingSince.UTC().Format(time.RFC3339), c.failing)
	}
	return nil
}

// setFailing records the outcome of a sync (nil: success) for ReadyCheck and the metrics.
func (c *Controller) setFailing(err error) {
	now := time.Now()
	c.mu.Lock()
	if err != nil && c.failing == nil {
		c.failingSince = now
	}
	c.failing = err
	c.mu.Unlock()
	c.Metrics.setFailing(err != nil, now)
}

// sync computes the desired State from the informers' stores and applies it.
func (c *Controller) sync(ctx context.Context) error {
	c.mu.Lock()
	since := c.pendingSince
	c.pendingSince = time.Time{}
	c.mu.Unlock()

	mips := kube.List[v1alpha1.MagicIP](c.MagicIPs)
	allowed, refused := c.Addresses.Admit(mips)
	allowed, left := c.Addresses.AdmitIPv6(allowed)
	st := c.desired(ctx, allowed)
	maps.Copy(st.Invalid, refused)
	maps.Copy(st.Unprogrammed, left)
	full := time.Since(c.lastFull) >= c.ResyncPeriod
	start := time.Now()
	execsBefore := c.Syncer.Datapath.Execs()
	res, err := c.Syncer.Sync(ctx, st, full)
	c.Metrics.observeSync(time.Since(start), c.Syncer.Datapath.Execs()-execsBefore, res.Wrote)
	if c.Node != nil && ctx.Err() == nil {
		c.Node.Set(nodeStatus(res, err))
	}
	if c.Record != nil && ctx.Err() == nil {
		c.Record.Set(nodeRecord(mips, res, err))
	}
	if err != nil {
		c.Metrics.SyncErrors.Inc()
		c.mu.Lock()
		if c.pendingSince.IsZero() || (!since.IsZero() && since.Before(c.pendingSince)) {
			c.pendingSince = since
		}
		c.mu.Unlock()
		return fmt.Errorf("sync node %s: %w", c.NodeName, err)
	}
	if full {
		c.lastFull = start
	}
	if !since.IsZero() && res.Wrote {
		c.Metrics.EventToApplied.Observe(time.Since(since).Seconds())
	}
	if len(res.Drift) > 0 {
		c.Metrics.DriftRepairs.Inc()
		c.Log.Info("repaired rules changed behind our back", "drift", res.Drift)
	}
	c.report(mips, res)
	c.ready.Store(true)
	c.Log.V(2).Info("synced", "full", full, "wrote", res.Wrote, "services", len(res.State.Services),
		"conntrackFlushQueued", res.FlushQueued, "took", time.Since(start))
	return nil
}

// report emits a Warning Event (and logs) when a MagicIP's problem on this node appears or
// changes; nothing is repeated while the problem stays the same.
func (c *Controller) report(mips []v1alpha1.MagicIP, res SyncResult) {
	problems := map[string]string{}
	for name, cf := range res.State.Conflicts {
		problems[name] = fmt.Sprintf("Conflict|%s is already claimed by MagicIP %s (the older one wins); this one is ignored", cf.Claim, cf.Winner)
	}
	for name, why := range res.State.Invalid {
		problems[name] = "Invalid|" + why
	}
	for name, ifname := range res.Unserved {
		problems[name] = fmt.Sprintf("InterfaceUnavailable|node %s: %v", c.NodeName, res.FailedInterfaces[ifname])
	}
	c.Metrics.setProblems(problems)
	c.Metrics.setProducers(res.State)
	for _, m := range mips {
		p, had := problems[m.Name], c.reported[m.Name]
		if p == "" || p == had {
			continue
		}
		reason, note, _ := strings.Cut(p, "|")
		c.Log.Info("MagicIP not served on this node", "magicIP", m.Name, "reason", reason, "message", note)
		if c.Recorder != nil {
			c.Recorder.Warning(&m, reason, note)
		}
	}
	c.reported = problems
}
