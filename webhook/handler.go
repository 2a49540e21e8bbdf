package webhook

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// Path is where the pod mutation is served.
const Path = "/mutate-v1-pod"

// Injector is the admission handler: it reads MagicIPs from the manager's cache (a watch, never a
// per-request GET) and patches pods that are being created.
type Injector struct {
	MagicIPs client.Reader
	Log      logr.Logger
	// Injections counts injections per MagicIP (may be nil).
	Injections *prometheus.CounterVec
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
	return (&admission.Webhook{Handler: in}).WithRecoverPanic(true)
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
	pod := &corev1.Pod{}
	if err := json.Unmarshal(req.Object.Raw, pod); err != nil {
		in.Log.Info("pod not decodable, allowed without injection", "namespace", req.Namespace, "error", err.Error())
		return admission.Allowed("").WithWarnings("magic-ip: pod not decodable, nothing injected: " + err.Error())
	}
	var list v1alpha1.MagicIPList
	if err := in.MagicIPs.List(ctx, &list); err != nil {
		in.Log.Error(err, "list MagicIPs from cache")
		return admission.Allowed("").WithWarnings("magic-ip: MagicIPs unavailable, nothing injected")
	}
	mips := Injectable(pod, list.Items)
	before := pod.DeepCopy()
	if !Mutate(pod, mips) {
		return admission.Allowed("nothing to inject")
	}
	names := make([]string, len(mips))
	for i, m := range mips {
		names[i] = m.Name
		if in.Injections != nil && !isDryRun(req) {
			in.Injections.WithLabelValues(m.Name).Inc()
		}
	}
	in.Log.V(4).Info("injected", "namespace", req.Namespace, "pod", podName(pod), "magicIPs", names)
	patched := admission.Patched("", Patch(before, pod)...)
	patchType := admissionv1.PatchTypeJSONPatch
	patched.PatchType = &patchType
	return patched
}

func isDryRun(req admission.Request) bool { return req.DryRun != nil && *req.DryRun }

func podName(p *corev1.Pod) string {
	if p.Name != "" {
		return p.Name
	}
	return p.GenerateName + "*"
}
