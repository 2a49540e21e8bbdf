package e2e

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// TestWebhookDualStack: through the real API server and webhook, a dual-stack MagicIP is Accepted
// (its status says the IPv6 address is not programmed yet) and injects its IPv6 form too:
// OTEL_MAGIC_HOST_IPV6, {address6} in extraEnv, and its hostname in a hostAliases entry for IPv4 (IPv6
// once agents program it);
// what the pod sets itself (the variable, the hostname mapped elsewhere) is kept. An IPv6 MagicIP
// created later at the same IPv6 address and port is in Conflict with it.
func TestWebhookDualStack(t *testing.T) {
	const addr4, addr6 = "169.254.210.220", "fd00::a9fe:d2dc"
	e := newWebhookEnv(t)
	ctx := t.Context()
	otel := &v1alpha1.MagicIP{ObjectMeta: metav1.ObjectMeta{Name: "otel"}, Spec: v1alpha1.MagicIPSpec{
		Address: addr4, IPv6Address: addr6, Ports: []v1alpha1.MagicIPPort{{Name: "grpc", Port: 4317}},
		Producer: v1alpha1.Producer{Namespace: "datadog", Selector: v1alpha1.LabelSelector{MatchLabels: map[string]string{"app": "otel"}}},
		Inject: v1alpha1.Inject{
			ExtraEnv:  []v1alpha1.EnvTemplate{{Name: "OTEL_EXPORTER_OTLP_ENDPOINT", Value: "http://[{address6}]:{port}"}},
			Hostnames: []string{"otel.node.local"},
		},
	}}
	if err := e.cp.Client.Create(ctx, otel); err != nil {
		t.Fatal(err)
	}
	e.waitAccepted(t, "otel")
	eventually(t, 5*time.Second, "otel's IPv6 address reported not programmed", wantMIPCondition(e.cp.Client, "otel", v1alpha1.ConditionAccepted,
		metav1.ConditionTrue, "["+addr6+"]:4317/TCP", "not programmed by agents yet (AddressFamilyNotSupported)"))

	t.Run("injected", func(t *testing.T) {
		p := testPod("apps", "dual")
		if err := e.cp.Client.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
		for _, c := range append(p.Spec.InitContainers, p.Spec.Containers...) {
			env := envOf(c)
			if env["OTEL_MAGIC_HOST"] != addr4 || env["OTEL_MAGIC_HOST_IPV6"] != addr6 || env["OTEL_EXPORTER_OTLP_ENDPOINT"] != "http://["+addr6+"]:4317" {
				t.Errorf("container %s: env %v, want OTEL_MAGIC_HOST=%s, OTEL_MAGIC_HOST_IPV6=%s, the endpoint on [%s]", c.Name, env, addr4, addr6, addr6)
			}
		}
		// No entry for the IPv6 address while agents do not program it: a resolver preferring it
		// would get an address nothing serves.
		want := map[string][]string{magicAddr: {"datadog.node.local"}, addr4: {"otel.node.local"}}
		if got := aliasesOf(p); !reflect.DeepEqual(got, want) {
			t.Errorf("hostAliases %v, want %v", got, want)
		}
	})
	t.Run("the pod's own values kept", func(t *testing.T) {
		p := testPod("apps", "own", func(p *corev1.Pod) {
			p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "OTEL_MAGIC_HOST_IPV6", Value: "mine"}}
			p.Spec.HostAliases = []corev1.HostAlias{{IP: "10.1.2.3", Hostnames: []string{"otel.node.local"}}}
		})
		if err := e.cp.Client.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
		if v := envOf(p.Spec.Containers[0])["OTEL_MAGIC_HOST_IPV6"]; v != "mine" {
			t.Errorf("OTEL_MAGIC_HOST_IPV6 = %q, want the pod's own \"mine\"", v)
		}
		want := map[string][]string{"10.1.2.3": {"otel.node.local"}, magicAddr: {"datadog.node.local"}}
		if got := aliasesOf(p); !reflect.DeepEqual(got, want) {
			t.Errorf("hostAliases %v, want %v (otel.node.local left as the pod maps it, in both families)", got, want)
		}
	})

	v6 := &v1alpha1.MagicIP{ObjectMeta: metav1.ObjectMeta{Name: "otel-v6"}, Spec: *otel.Spec.DeepCopy()}
	v6.Spec.Address, v6.Spec.IPv6Address, v6.Spec.Inject = addr6, "", v1alpha1.Inject{}
	if err := e.cp.Client.Create(ctx, v6); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "otel-v6 in conflict with otel", wantMIPCondition(e.cp.Client, "otel-v6", v1alpha1.ConditionConflict,
		metav1.ConditionTrue, "["+addr6+"]:4317/TCP is already claimed by MagicIP otel"))
}

// wantMIPCondition is a condition: MagicIP name has condition typ with status, and its message
// contains each of texts.
func wantMIPCondition(cl client.Client, name, typ string, status metav1.ConditionStatus, texts ...string) func(context.Context) error {
	return func(ctx context.Context) error {
		m := &v1alpha1.MagicIP{}
		if err := cl.Get(ctx, client.ObjectKey{Name: name}, m); err != nil {
			return err
		}
		c := meta.FindStatusCondition(m.Status.Conditions, typ)
		if c == nil || c.Status != status || slices.ContainsFunc(texts, func(s string) bool { return !strings.Contains(c.Message, s) }) {
			return fmt.Errorf("MagicIP %s: %s condition %+v, want %s with %q", name, typ, c, status, texts)
		}
		return nil
	}
}

// aliasesOf maps each hostAliases IP of p to its hostnames.
func aliasesOf(p *corev1.Pod) map[string][]string {
	out := map[string][]string{}
	for _, a := range p.Spec.HostAliases {
		out[a.IP] = append(out[a.IP], a.Hostnames...)
	}
	return out
}
