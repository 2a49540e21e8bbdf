package webhook

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admission/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// Path is where the pod mutation is served.
const Path = "/mutate-v1-pod"

// Injector is the admission handler: it patches pods that are being created with the endpoints
// of a Catalog built from the manager's MagicIP cache (a watch, never a per-request GET). The
// catalog is rebuilt on the first request after a MagicIP changed (Invalidate), not per request.
type Injector struct {
	MagicIPs client.Reader
	Log      logr.Logger
	// Injections counts injections per MagicIP (may be nil).
	Injections *prometheus.CounterVec

	mu      sync.Mutex // serializes rebuilds
	catalog atomic.Pointer[Catalog]
	stale   atomic.Bool
}

// Invalidate makes the next request rebuild the catalog: call it on every MagicIP event, after
// the cache has the change.
func (in *Injector) Invalidate() { in.stale.Store(true) }

// Catalog returns the current catalog, rebuilt from the cache when a MagicIP changed since.
func (in *Injector) Catalog(ctx context.Context) (Catalog, error) {
	if c := in.catalog.Load(); c != nil && !in.stale.Load() {
		return *c, nil
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if c := in.catalog.Load(); c != nil && !in.stale.Load() {
		return *c, nil
	}
	// Cleared before reading, so a change that lands during the read invalidates again.
	in.stale.Store(false)
	var list v1alpha1.MagicIPList
	if err := in.MagicIPs.List(ctx, &list); err != nil {
		in.stale.Store(true)
		return nil, err
	}
	c := NewCatalog(list.Items)
	in.catalog.Store(&c)
	return c, nil
}

// NewInjectionsMetric is the injections counter, labelled by MagicIP.
func NewInjectionsMetric() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "magic_ip_webhook_injections_total", Help: "Pods injected with a MagicIP's endpoint, by MagicIP.",
	}, []string{"magicip"})
}

// Webhook wraps the injector as controller-runtime's admission webhook (request size and
// content-type checks, 400 for malformed bodies, panic recovery).
func (in *Injector) Webhook() *admission.Webhook {
	return (&admission.Webhook{Handler: in, LogConstructor: requestLogger}).WithRecoverPanic(true)
}

// requestLogger gives controller-runtime's request logs (V(5) and up) the request's fields, and
// skips building a logger per request when they are off: WithValues is paid on every request
// whether anything is logged or not.
func requestLogger(base logr.Logger, req *admission.Request) logr.Logger {
	if req == nil || !base.V(5).Enabled() {
		return base
	}
	return admission.DefaultLogConstructor(base, req)
}

// Handle mutates a pod on CREATE; anything else is allowed unchanged. It never refuses a pod: the
// worst outcome of a problem here is a pod without injection, with a warning.
func (in *Injector) Handle(ctx context.Context, req admission.Request) (resp admission.Response) {
	// An explicit answer is never subject to failurePolicy: a panic answered as an error would
	// refuse the pod. Recover here and admit it unchanged instead.
	defer func() {
		if r := recover(); r != nil {
			in.Log.Error(fmt.Errorf("panic: %v", r), "injection failed, pod admitted unchanged", "namespace", req.Namespace)
			resp = admission.Allowed("").WithWarnings("magic-ip: internal error, nothing injected")
		}
	}()
	if req.Operation != admissionv1.Create || req.Kind.Group != "" || req.Kind.Kind != "Pod" {
		return admission.Allowed("not a pod creation")
	}
	pod, err := DecodePod(req.Object.Raw)
	if err != nil {
		in.Log.Info("pod not decodable, allowed without injection", "namespace", req.Namespace, "error", err.Error())
		return admission.Allowed("").WithWarnings("magic-ip: pod not decodable, nothing injected: " + err.Error())
	}
	catalog, err := in.Catalog(ctx)
	if err != nil {
		in.Log.Error(err, "list MagicIPs from cache")
		return admission.Allowed("").WithWarnings("magic-ip: MagicIPs unavailable, nothing injected")
	}
	eps := catalog.For(pod.Annotations)
	before := ShapeOf(pod)
	if !Mutate(pod, eps) {
		return admission.Allowed("nothing to inject")
	}
	if in.Injections != nil && !isDryRun(req) {
		for _, e := range eps {
			in.Injections.WithLabelValues(e.Name).Inc()
		}
	}
	if log := in.Log.V(4); log.Enabled() {
		names := make([]string, len(eps))
		for i, e := range eps {
			names[i] = e.Name
		}
		log.Info("injected", "namespace", req.Namespace, "pod", podName(pod), "magicIPs", names)
	}
	patch, err := EncodePatch(Patch(before, pod))
	if err != nil {
		in.Log.Error(err, "encode the patch, pod admitted unchanged", "namespace", req.Namespace)
		return admission.Allowed("").WithWarnings("magic-ip: internal error, nothing injected")
	}
	resp = admission.Allowed("").WithWarnings(envFromWarnings(pod, eps)...)
	resp.Patch = patch // already encoded: Response.Complete marshals only resp.Patches
	patchType := admissionv1.PatchTypeJSONPatch
	resp.PatchType = &patchType
	return resp
}

func isDryRun(req admission.Request) bool { return req.DryRun != nil && *req.DryRun }

func podName(p *Pod) string {
	if p.Name != "" {
		return p.Name
	}
	return p.GenerateName + "*"
}
