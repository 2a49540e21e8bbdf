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
	"github.com/magic-ip/magic-ip/webhook"
)

// TestWebhookDualStack: through the real API server and webhook, a dual-stack MagicIP is Accepted
// and injects its IPv6 form too: OTEL_MAGIC_HOST_IPV6, {address6} in extraEnv, and its hostname in
// a hostAliases entry for IPv4, and one for IPv6 only while its status says IPv6Programmed (the
// agents' records: served on every node that programs it); what the pod sets itself (the
// variable, the hostname mapped elsewhere) is kept. An IPv6 MagicIP created later at the same IPv6
// address and port is in Conflict with it.
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
	eventually(t, 5*time.Second, "otel Accepted for both addresses", wantMIPCondition(e.cp.Client, "otel", v1alpha1.ConditionAccepted,
		metav1.ConditionTrue, "["+addr6+"]:4317/TCP", "see IPv6Programmed"))
	eventually(t, 5*time.Second, "otel's IPv6 address not programmed: no node yet", wantMIPCondition(e.cp.Client, "otel", webhook.ConditionIPv6Programmed,
		metav1.ConditionFalse, "no node programs this MagicIP yet"))

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

	t.Run("hostAliases per family once every node serves the IPv6 address", func(t *testing.T) {
		testWebhookIPv6Aliases(t, e, addr4, addr6)
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

// testWebhookIPv6Aliases: the agents' records decide the IPv6 hostAliases entry of MagicIP otel.
// With one node serving its IPv6 address and one leaving it out (a node without IPv6), its status
// says IPv6Programmed=False naming that node, and pods get the IPv4 entry only; once both serve
// it, True, and pods get an entry per family; when a node leaves it out again, IPv4 only again.
func testWebhookIPv6Aliases(t *testing.T, e *webhookEnv, addr4, addr6 string) {
	ctx := t.Context()
	entry := func(leftOut bool) []v1alpha1.MagicIPOnNode {
		en := v1alpha1.MagicIPOnNode{Name: "otel", Programmed: true, Reason: v1alpha1.ReasonProgrammed}
		if leftOut {
			en.UnprogrammedAddresses = []v1alpha1.UnprogrammedAddress{{Address: addr6, Reason: v1alpha1.ReasonAddressFamilyNotSupported,
				Message: "IPv6 is disabled on this node (net.ipv6.conf.all.disable_ipv6=1)"}}
		}
		return []v1alpha1.MagicIPOnNode{en}
	}
	a := &v1alpha1.MagicIPNode{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}, MagicIPs: entry(false)}
	b := &v1alpha1.MagicIPNode{ObjectMeta: metav1.ObjectMeta{Name: "node-b"}, MagicIPs: entry(true)}
	for _, rec := range []*v1alpha1.MagicIPNode{a, b} {
		if err := e.cp.Client.Create(ctx, rec); err != nil {
			t.Fatal(err)
		}
	}
	v4Only := map[string][]string{magicAddr: {"datadog.node.local"}, addr4: {"otel.node.local"}}
	both := map[string][]string{magicAddr: {"datadog.node.local"}, addr4: {"otel.node.local"}, addr6: {"otel.node.local"}}
	eventually(t, 10*time.Second, "IPv6Programmed=False naming node-b", wantMIPCondition(e.cp.Client, "otel", webhook.ConditionIPv6Programmed,
		metav1.ConditionFalse, "node node-b programs this MagicIP without its IPv6 address "+addr6, "disable_ipv6=1"))
	eventually(t, 10*time.Second, "IPv4 entry only: one node leaves the IPv6 address out", podAliases(e.cp.Client, v4Only))

	b.MagicIPs = entry(false)
	if err := e.cp.Client.Update(ctx, b); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "IPv6Programmed=True", wantMIPCondition(e.cp.Client, "otel", webhook.ConditionIPv6Programmed, metav1.ConditionTrue, addr6))
	eventually(t, 10*time.Second, "a hostAliases entry per family", podAliases(e.cp.Client, both))

	a.MagicIPs = entry(true)
	if err := e.cp.Client.Update(ctx, a); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "IPv4 entry only again", podAliases(e.cp.Client, v4Only))
}

// podAliases is a condition: a pod created in namespace apps (dry run, through the webhook) gets
// hostAliases want.
func podAliases(cl client.Client, want map[string][]string) func(context.Context) error {
	return func(ctx context.Context) error {
		p := testPod("apps", "aliases")
		if err := cl.Create(ctx, p, client.DryRunAll); err != nil {
			return err
		}
		if got := aliasesOf(p); !reflect.DeepEqual(got, want) {
			return fmt.Errorf("hostAliases %v, want %v", got, want)
		}
		return nil
	}
}
