// Package kube is the agent's Kubernetes plumbing on bare client-go: REST clients for the three
// API groups it uses, its two informers, and an events.k8s.io recorder. It deliberately avoids
// client-go's generated clientset and controller-runtime: importing either costs the agent more
// resident memory than all of its own work.
package kube

import (
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// Clients are REST clients for the API groups the agent uses; they share one HTTP client.
type Clients struct {
	Core    rest.Interface // v1: pods
	MagicIP rest.Interface // magic-ip.dev/v1alpha1: MagicIPs
	Events  rest.Interface // events.k8s.io/v1: the events the agent reports
}

// NewClients builds the clients from cfg, with a scheme holding only the types the agent
// exchanges with the API server. Pods and Nodes travel as protobuf, as kubelet's and
// kube-proxy's requests do: the API server encodes each pod change once per format for all its
// watchers (the EndpointSlice controller's is protobuf already), and protobuf costs both ends
// less CPU than JSON, at the moment a rollout keeps the API server busiest. MagicIPs are custom
// resources, which the API server serves as JSON only; Events (rare) stay JSON too.
func NewClients(cfg *rest.Config) (*Clients, error) {
	scheme := runtime.NewScheme()
	if err := errors.Join(corev1.AddToScheme(scheme), eventsv1.AddToScheme(scheme), v1alpha1.AddToScheme(scheme)); err != nil {
		return nil, fmt.Errorf("build scheme: %w", err)
	}
	codecs := serializer.NewCodecFactory(scheme).WithoutConversion()
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes HTTP client: %w", err)
	}
	client := func(apiPath string, gv schema.GroupVersion, contentType string) (rest.Interface, error) {
		c := rest.CopyConfig(cfg)
		c.APIPath, c.GroupVersion, c.NegotiatedSerializer = apiPath, &gv, codecs
		c.ContentType, c.AcceptContentTypes = contentType, contentType
		if contentType == runtime.ContentTypeProtobuf {
			// JSON stays acceptable for what the API server cannot send as protobuf.
			c.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
		}
		rc, err := rest.RESTClientForConfigAndClient(c, hc)
		if err != nil {
			return nil, fmt.Errorf("kubernetes client for %s: %w", gv, err)
		}
		return rc, nil
	}
	var cs Clients
	var errs [3]error
	cs.Core, errs[0] = client("/api", corev1.SchemeGroupVersion, runtime.ContentTypeProtobuf)
	cs.MagicIP, errs[1] = client("/apis", v1alpha1.GroupVersion, runtime.ContentTypeJSON)
	cs.Events, errs[2] = client("/apis", eventsv1.SchemeGroupVersion, runtime.ContentTypeJSON)
	if err := errors.Join(errs[:]...); err != nil {
		return nil, err
	}
	return &cs, nil
}

// PodInformer watches the pods bound to node (a spec.nodeName field selector), slimmed by SlimPod.
// It never resyncs on its own: the agent's sync loop repairs drift.
func PodInformer(c rest.Interface, node string) (cache.SharedIndexInformer, error) {
	selector := fields.OneTermEqualSelector("spec.nodeName", node).String()
	lw := cache.NewFilteredListWatchFromClient(c, "pods", metav1.NamespaceAll, func(o *metav1.ListOptions) {
		o.FieldSelector = selector
	})
	inf := cache.NewSharedIndexInformer(lw, &corev1.Pod{}, 0, cache.Indexers{})
	if err := inf.SetTransform(SlimPod); err != nil {
		return nil, fmt.Errorf("pod informer: %w", err)
	}
	return inf, nil
}

// MagicIPInformer watches all MagicIPs, without their managedFields.
func MagicIPInformer(c rest.Interface) (cache.SharedIndexInformer, error) {
	lw := cache.NewFilteredListWatchFromClient(c, "magicips", metav1.NamespaceAll, func(*metav1.ListOptions) {})
	inf := cache.NewSharedIndexInformer(lw, &v1alpha1.MagicIP{}, 0, cache.Indexers{})
	if err := inf.SetTransform(stripManagedFields); err != nil {
		return nil, fmt.Errorf("MagicIP informer: %w", err)
	}
	return inf, nil
}

// List returns the store's objects of type *T as values, sharing their maps and slices with the
// store: callers must treat them as read-only.
func List[T any](s cache.Store) []T {
	objs := s.List()
	out := make([]T, 0, len(objs))
	for _, o := range objs {
		if t, ok := o.(*T); ok {
			out = append(out, *t)
		}
	}
	return out
}

// SlimPod keeps only what the agent reads of a pod, so the cache stays small on busy nodes.
func SlimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	slim := &corev1.Pod{
		TypeMeta: p.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name: p.Name, Namespace: p.Namespace, UID: p.UID, ResourceVersion: p.ResourceVersion,
			Labels: p.Labels, DeletionTimestamp: p.DeletionTimestamp,
		},
		Spec:   corev1.PodSpec{NodeName: p.Spec.NodeName, HostNetwork: p.Spec.HostNetwork},
		Status: corev1.PodStatus{Phase: p.Status.Phase, PodIP: p.Status.PodIP, PodIPs: p.Status.PodIPs},
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			slim.Status.Conditions = []corev1.PodCondition{{Type: c.Type, Status: c.Status}}
		}
	}
	return slim, nil
}

func stripManagedFields(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
	}
	return obj, nil
}
