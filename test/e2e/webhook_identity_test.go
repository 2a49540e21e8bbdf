package e2e

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
	"github.com/magic-ip/magic-ip/test/harness"
)

// TestWebhookPodIdentity: a MagicIP's inject.podIdentity gives consumer pods their own UID, name
// and namespace as downward API fieldRefs (Datadog's DD_ENTITY_ID from metadata.uid), through the
// real API server and webhook, which stores them defaulted (fieldRef apiVersion v1) as the kubelet
// reads them. Like every injected variable, a name the container sets keeps its value, a name its
// envFrom may set is left to it (with a warning), and the same name from another field in a younger
// MagicIP is an InjectionConflict.
func TestWebhookPodIdentity(t *testing.T) {
	e := newWebhookEnv(t)
	ctx := t.Context()
	patch := client.RawPatch(types.MergePatchType, []byte(`{"spec":{"inject":{"podIdentity":[`+
		`{"name":"DD_ENTITY_ID","fieldPath":"metadata.uid"},{"name":"POD_NAME","fieldPath":"metadata.name"},`+
		`{"name":"POD_NAMESPACE","fieldPath":"metadata.namespace"}]}}}`))
	if err := e.cp.Client.Patch(ctx, &v1alpha1.MagicIP{ObjectMeta: metav1.ObjectMeta{Name: "datadog"}}, patch); err != nil {
		t.Fatal(err)
	}
	// The status controller has seen the new generation: so has the webhook, from the same cache.
	e.waitAccepted(t, "datadog")

	c, warnings := warningClient(t, e.cp)
	p := testPod("apps", "origin", func(p *corev1.Pod) {
		p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "POD_NAME", Value: "mine"}}
		p.Spec.Containers[1].EnvFrom = []corev1.EnvFromSource{{Prefix: "DD_", ConfigMapRef: &corev1.ConfigMapEnvSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: "dd-settings"}}}}
	})
	if err := c.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	stored := &corev1.Pod{}
	if err := e.cp.Client.Get(ctx, client.ObjectKeyFromObject(p), stored); err != nil {
		t.Fatal(err)
	}
	uid, name, ns := "fieldRef:metadata.uid", "fieldRef:metadata.name", "fieldRef:metadata.namespace"
	checkIdentity(t, stored, map[string]map[string]string{
		"init": {"DD_ENTITY_ID": uid, "POD_NAME": name, "POD_NAMESPACE": ns},
		// sets POD_NAME itself: its value stays, last, after the injected entries
		"app": {"DD_ENTITY_ID": uid, "POD_NAME": "mine", "POD_NAMESPACE": ns},
		// envFrom prefix DD_ may set DD_ENTITY_ID: left to it
		"sidecar": {"DD_ENTITY_ID": "", "POD_NAME": name, "POD_NAMESPACE": ns},
	})
	if app := stored.Spec.Containers[0]; app.Env[len(app.Env)-1] != (corev1.EnvVar{Name: "POD_NAME", Value: "mine"}) {
		t.Errorf("container app: last entry %+v, want its own POD_NAME=mine", app.Env[len(app.Env)-1])
	}
	want := `container sidecar: DD_AGENT_HOST, DD_TRACE_AGENT_URL, DD_ENTITY_ID not injected: envFrom configMapRef dd-settings (prefix "DD_")`
	if got := strings.Join(warnings.list(), "\n"); !strings.Contains(got, want) {
		t.Errorf("admission warnings %q, want one containing %q", got, want)
	}

	// A younger MagicIP that gives DD_ENTITY_ID another field loses that name, and is told.
	rival := &v1alpha1.MagicIP{ObjectMeta: metav1.ObjectMeta{Name: "rival-id"}, Spec: v1alpha1.MagicIPSpec{
		Address: "169.254.210.240", Ports: []v1alpha1.MagicIPPort{{Name: "intake", Port: 9000}},
		Producer: v1alpha1.Producer{Namespace: "datadog", Selector: v1alpha1.LabelSelector{MatchLabels: map[string]string{"app": "rival"}}},
		Inject: v1alpha1.Inject{PodIdentity: []v1alpha1.PodIdentityEnv{
			{Name: "DD_ENTITY_ID", FieldPath: v1alpha1.FieldPodName}, {Name: "POD_NAMESPACE", FieldPath: v1alpha1.FieldPodNamespace},
		}},
	}}
	if err := e.cp.Client.Create(ctx, rival); err != nil {
		t.Fatal(err)
	}
	e.waitInjectionConflict(t, "rival-id", true, "variable DD_ENTITY_ID (injected by MagicIP datadog)")
}

// checkIdentity checks, per container name, each variable's value in p ("fieldRef:PATH" for a
// downward API fieldRef, which must carry apiVersion v1; "" for absent).
func checkIdentity(t *testing.T, p *corev1.Pod, want map[string]map[string]string) {
	t.Helper()
	for _, c := range append(slices.Clone(p.Spec.InitContainers), p.Spec.Containers...) {
		got := envOf(c)
		for k, v := range want[c.Name] {
			if got[k] != v {
				t.Errorf("container %s: %s=%q, want %q", c.Name, k, got[k], v)
			}
		}
		for _, v := range c.Env {
			if f := v.ValueFrom; f != nil && f.FieldRef != nil && f.FieldRef.APIVersion != "v1" {
				t.Errorf("container %s: %s fieldRef apiVersion %q, want v1 (defaulted by the API server)", c.Name, v.Name, f.FieldRef.APIVersion)
			}
		}
	}
}

// warningClient is a client of cp that keeps the warnings the API server returns.
func warningClient(t *testing.T, cp *harness.ControlPlane) (client.Client, *warningCollector) {
	t.Helper()
	var warnings warningCollector
	cfg := rest.CopyConfig(cp.Config)
	cfg.WarningHandler = &warnings
	c, err := client.New(cfg, client.Options{Scheme: cp.Client.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	return c, &warnings
}
