package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
	"github.com/magic-ip/magic-ip/test/harness"
)

// webhookEnv is a control plane with the real webhook registered, the datadog MagicIP (with
// extraEnv and a hostname) and an opted-in namespace "apps".
type webhookEnv struct {
	cp *harness.ControlPlane
	wh *harness.Webhook
}

func newWebhookEnv(t *testing.T) *webhookEnv {
	cp := harness.StartControlPlane(t)
	e := &webhookEnv{cp: cp, wh: harness.StartWebhook(t, cp, webhookBin)}
	ctx := t.Context()
	for name, labels := range map[string]map[string]string{
		"apps": {"magic-ip.dev/inject": "enabled"}, "plain": nil, "datadog": nil,
	} {
		if err := cp.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}); err != nil {
			t.Fatal(err)
		}
	}
	// The webhook's own namespace (created with the control plane) opts in, to prove it is still
	// never mutated.
	own := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: harness.WebhookNamespace}}
	if err := cp.Client.Patch(ctx, own, client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"labels":{"magic-ip.dev/inject":"enabled"}}}`))); err != nil {
		t.Fatal(err)
	}
	m := datadogMagicIP("datadog")
	m.Spec.Inject.ExtraEnv = []v1alpha1.EnvTemplate{{Name: "DD_AGENT_HOST", Value: "{address}"}, {Name: "DD_TRACE_AGENT_URL", Value: "http://{address}:{port:apm}"}}
	m.Spec.Inject.Hostnames = []string{"datadog.node.local"}
	m.Spec.Inject.NodeMetadata = true
	if err := cp.Client.Create(ctx, m); err != nil {
		t.Fatal(err)
	}
	e.waitAccepted(t, "datadog")
	return e
}

// waitAccepted waits for the status controller to accept a MagicIP (the webhook injects
// MagicIPs that win their claims; waiting also proves the controller works).
func (e *webhookEnv) waitAccepted(t *testing.T, name string) {
	t.Helper()
	eventually(t, 10*time.Second, "MagicIP "+name+" Accepted", func(ctx context.Context) error {
		m := &v1alpha1.MagicIP{}
		if err := e.cp.Client.Get(ctx, client.ObjectKey{Name: name}, m); err != nil {
			return err
		}
		if !meta.IsStatusConditionTrue(m.Status.Conditions, v1alpha1.ConditionAccepted) || m.Status.ObservedGeneration != m.Generation {
			return fmt.Errorf("status %+v", m.Status)
		}
		return nil
	})
}

func testPod(ns, name string, mutate ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Name: "init", Image: "registry.invalid/init:1"}},
			Containers:     []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}, {Name: "sidecar", Image: "registry.invalid/side:1"}},
		},
	}
	for _, f := range mutate {
		f(p)
	}
	return p
}

func envOf(c corev1.Container) map[string]string {
	out := map[string]string{}
	for _, e := range c.Env {
		v := e.Value
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			v = "fieldRef:" + e.ValueFrom.FieldRef.FieldPath
		}
		out[e.Name] = v
	}
	return out
}

// TestWebhookInjects: through the real API server calling the real webhook over TLS.
func TestWebhookInjects(t *testing.T) {
	e := newWebhookEnv(t)
	ctx := t.Context()
	want := map[string]string{
		"DATADOG_MAGIC_HOST": magicAddr, "DATADOG_MAGIC_PORT": "8126", "DATADOG_MAGIC_PORT_APM": "8126",
		"DATADOG_MAGIC_PORT_DOGSTATSD": "8125", "DD_AGENT_HOST": magicAddr, "DD_TRACE_AGENT_URL": "http://" + magicAddr + ":8126",
		"NODE_NAME": "fieldRef:spec.nodeName", "NODE_IP": "fieldRef:status.hostIP",
	}
	cases := map[string]struct {
		pod *corev1.Pod
		// injected: want the env (except names set by the user) and the hostAlias.
		injected bool
		check    func(t *testing.T, p *corev1.Pod)
	}{
		"opted-in namespace":          {pod: testPod("apps", "web"), injected: true},
		"namespace without the label": {pod: testPod("plain", "web")},
		"pod opted out": {pod: testPod("apps", "optout", func(p *corev1.Pod) {
			p.Labels = map[string]string{"magic-ip.dev/inject": "disabled"}
		})},
		"webhook's own namespace never mutated": {pod: testPod(harness.WebhookNamespace, "self")},
		"user values win, existing hostAlias kept": {
			pod: testPod("apps", "custom", func(p *corev1.Pod) {
				p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "DD_AGENT_HOST", Value: "my-agent"}}
				p.Spec.HostAliases = []corev1.HostAlias{{IP: magicAddr, Hostnames: []string{"apm.local"}}}
			}),
			injected: true,
			check: func(t *testing.T, p *corev1.Pod) {
				if got := envOf(p.Spec.Containers[0])["DD_AGENT_HOST"]; got != "my-agent" {
					t.Errorf("user's DD_AGENT_HOST became %q", got)
				}
				if len(p.Spec.HostAliases) != 1 || !slices.Equal(p.Spec.HostAliases[0].Hostnames, []string{"apm.local", "datadog.node.local"}) {
					t.Errorf("hostAliases %+v, want datadog.node.local merged into the existing entry", p.Spec.HostAliases)
				}
			},
		},
		"select annotation names another MagicIP": {pod: testPod("apps", "narrow", func(p *corev1.Pod) {
			p.Annotations = map[string]string{"magic-ip.dev/select": "otel"}
		})},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if err := e.cp.Client.Create(ctx, tc.pod); err != nil {
				t.Fatal(err)
			}
			got := &corev1.Pod{}
			if err := e.cp.Client.Get(ctx, client.ObjectKeyFromObject(tc.pod), got); err != nil {
				t.Fatal(err)
			}
			all := append(slices.Clone(got.Spec.InitContainers), got.Spec.Containers...)
			for _, c := range all {
				env := envOf(c)
				for k, v := range want {
					userSet := slices.ContainsFunc(tc.pod.Spec.Containers, func(uc corev1.Container) bool { return uc.Name == c.Name && envOf(uc)[k] != "" })
					if tc.injected && !userSet && env[k] != v {
						t.Errorf("container %s: %s=%q, want %q", c.Name, k, env[k], v)
					}
					if !tc.injected && env[k] != "" {
						t.Errorf("container %s: %s injected, want the pod untouched", c.Name, k)
					}
				}
			}
			if ann := got.Annotations["magic-ip.dev/injected"]; (ann == "datadog") != tc.injected {
				t.Errorf("injected annotation %q (injected=%v)", ann, tc.injected)
			}
			if tc.injected && tc.check == nil && (len(got.Spec.HostAliases) != 1 || got.Spec.HostAliases[0].IP != magicAddr) {
				t.Errorf("hostAliases %+v, want datadog.node.local -> %s", got.Spec.HostAliases, magicAddr)
			}
			if tc.check != nil {
				tc.check(t, got)
			}
		})
	}
}

// TestWebhookConflictAndSelect: a MagicIP in Conflict is never injected; the select annotation
// picks among Accepted ones; the status controller reports both and the missing namespace.
func TestWebhookConflictAndSelect(t *testing.T) {
	e := newWebhookEnv(t)
	ctx := t.Context()
	rival := datadogMagicIP("rival")
	rival.Spec.Producer.Namespace = "nowhere"
	otel := &v1alpha1.MagicIP{ObjectMeta: metav1.ObjectMeta{Name: "otel"}, Spec: v1alpha1.MagicIPSpec{
		Address: "169.254.210.220", Ports: []v1alpha1.MagicIPPort{{Name: "grpc", Port: 4317}, {Name: "http", Port: 4318}},
		Producer: v1alpha1.Producer{Namespace: "datadog", Selector: v1alpha1.LabelSelector{MatchLabels: map[string]string{"app": "otel"}}},
	}}
	for _, m := range []*v1alpha1.MagicIP{rival, otel} {
		if err := e.cp.Client.Create(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	e.waitAccepted(t, "otel")
	eventually(t, 10*time.Second, "rival reported in Conflict and its namespace missing", func(ctx context.Context) error {
		m := &v1alpha1.MagicIP{}
		if err := e.cp.Client.Get(ctx, client.ObjectKey{Name: "rival"}, m); err != nil {
			return err
		}
		c := meta.FindStatusCondition(m.Status.Conditions, v1alpha1.ConditionConflict)
		ns := meta.FindStatusCondition(m.Status.Conditions, "ProducerNamespaceFound")
		if c == nil || c.Status != metav1.ConditionTrue || !strings.Contains(c.Message, "MagicIP datadog") ||
			meta.IsStatusConditionTrue(m.Status.Conditions, v1alpha1.ConditionAccepted) || ns == nil || ns.Status != metav1.ConditionFalse {
			return fmt.Errorf("conditions %+v", m.Status.Conditions)
		}
		if m.Status.PortSummary != "8126/TCP,8125/UDP" {
			return fmt.Errorf("portSummary %q", m.Status.PortSummary)
		}
		return nil
	})
	for name, tc := range map[string]struct {
		annotations map[string]string
		want        string
	}{
		"all accepted":     {nil, "datadog,otel"},
		"select otel":      {map[string]string{"magic-ip.dev/select": "otel"}, "otel"},
		"select the rival": {map[string]string{"magic-ip.dev/select": "rival, datadog"}, "datadog"},
	} {
		t.Run(name, func(t *testing.T) {
			p := testPod("apps", strings.ReplaceAll(name, " ", "-"), func(p *corev1.Pod) { p.Annotations = tc.annotations })
			if err := e.cp.Client.Create(ctx, p); err != nil {
				t.Fatal(err)
			}
			if got := p.Annotations["magic-ip.dev/injected"]; got != tc.want {
				t.Errorf("injected %q, want %q", got, tc.want)
			}
			if env := envOf(p.Spec.Containers[0]); strings.Contains(tc.want, "otel") != (env["OTEL_MAGIC_PORT_GRPC"] == "4317") {
				t.Errorf("OTEL env %v for injected %q", env, tc.want)
			}
		})
	}
}

// TestWebhookIPv6NotProgrammable: agents do not program an IPv6 spec.address alone (only as the
// ipv6Address of a dual-stack MagicIP), so an IPv6-only MagicIP, which the CRD accepts, is reported Accepted=False (AddressFamilyNotSupported) and never
// injected: no variables, no hostAlias, not in the injected annotation, even when a pod selects it.
func TestWebhookIPv6NotProgrammable(t *testing.T) {
	e := newWebhookEnv(t)
	ctx := t.Context()
	v6 := &v1alpha1.MagicIP{ObjectMeta: metav1.ObjectMeta{Name: "otel-v6"}, Spec: v1alpha1.MagicIPSpec{
		Address: "fd00::10", Ports: []v1alpha1.MagicIPPort{{Name: "grpc", Port: 4317}},
		Producer: v1alpha1.Producer{Namespace: "datadog", Selector: v1alpha1.LabelSelector{MatchLabels: map[string]string{"app": "otel"}}},
		Inject: v1alpha1.Inject{
			ExtraEnv:  []v1alpha1.EnvTemplate{{Name: "OTEL_EXPORTER_OTLP_ENDPOINT", Value: "http://[{address}]:{port}"}},
			Hostnames: []string{"otel.node.local"},
		},
	}}
	if err := e.cp.Client.Create(ctx, v6); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "otel-v6 reported not programmable", func(ctx context.Context) error {
		m := &v1alpha1.MagicIP{}
		if err := e.cp.Client.Get(ctx, client.ObjectKey{Name: "otel-v6"}, m); err != nil {
			return err
		}
		c := meta.FindStatusCondition(m.Status.Conditions, v1alpha1.ConditionAccepted)
		if c == nil || c.Status != metav1.ConditionFalse || c.Reason != v1alpha1.ReasonAddressFamilyNotSupported ||
			!strings.Contains(c.Message, "IPv6 spec.address alone") || c.ObservedGeneration != m.Generation {
			return fmt.Errorf("Accepted condition %+v", c)
		}
		return nil
	})
	for name, annotations := range map[string]map[string]string{
		"all": nil, "selects-otel-v6": {"magic-ip.dev/select": "otel-v6,datadog"},
	} {
		t.Run(name, func(t *testing.T) {
			p := testPod("apps", name, func(p *corev1.Pod) { p.Annotations = annotations })
			if err := e.cp.Client.Create(ctx, p); err != nil {
				t.Fatal(err)
			}
			if got := p.Annotations["magic-ip.dev/injected"]; got != "datadog" {
				t.Errorf("injected annotation %q, want datadog only", got)
			}
			for _, c := range append(p.Spec.InitContainers, p.Spec.Containers...) {
				env := envOf(c)
				if v, ok := env["OTEL_V6_MAGIC_HOST"]; ok || env["OTEL_EXPORTER_OTLP_ENDPOINT"] != "" {
					t.Errorf("container %s: IPv6 MagicIP injected (OTEL_V6_MAGIC_HOST=%q, env %v)", c.Name, v, env)
				}
			}
			for _, a := range p.Spec.HostAliases {
				if a.IP == "fd00::10" || slices.Contains(a.Hostnames, "otel.node.local") {
					t.Errorf("hostAliases %+v: the IPv6 MagicIP's hostname injected", p.Spec.HostAliases)
				}
			}
		})
	}
}

// TestWebhookInjectionConflict: MagicIPs zz.agent and zz-agent give the same variable names (the
// same port, another address: only ZZ_AGENT_MAGIC_HOST differs), and zz-agent also sets datadog's
// DD_AGENT_HOST and maps datadog's hostname to its own address. The older MagicIP keeps each
// clashing name (zz-agent sorts first by name but is younger: age decides); the younger is
// reported InjectionConflict=True, naming the other MagicIPs, and only its clashing entries are
// left out of pods, even of a pod that selects it alone.
func TestWebhookInjectionConflict(t *testing.T) {
	e := newWebhookEnv(t)
	ctx := t.Context()
	newMIP := func(name, addr string, inject v1alpha1.Inject) *v1alpha1.MagicIP {
		return &v1alpha1.MagicIP{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1alpha1.MagicIPSpec{
			Address: addr, Ports: []v1alpha1.MagicIPPort{{Name: "apm", Port: 9126}},
			Producer: v1alpha1.Producer{Namespace: "datadog", Selector: v1alpha1.LabelSelector{MatchLabels: map[string]string{"app": name}}},
			Inject:   inject,
		}}
	}
	older := newMIP("zz.agent", "169.254.210.220", v1alpha1.Inject{})
	if err := e.cp.Client.Create(ctx, older); err != nil {
		t.Fatal(err)
	}
	// Creation times have one-second resolution: wait for the next second, so the age decides.
	eventually(t, 3*time.Second, "a later second than zz.agent's creation", func(context.Context) error {
		if !time.Now().Truncate(time.Second).After(older.CreationTimestamp.Time) {
			return fmt.Errorf("still %s", older.CreationTimestamp)
		}
		return nil
	})
	younger := newMIP("zz-agent", "169.254.210.230", v1alpha1.Inject{
		ExtraEnv:  []v1alpha1.EnvTemplate{{Name: "DD_AGENT_HOST", Value: "{address}"}, {Name: "ZZ_URL", Value: "http://{address}:{port}"}},
		Hostnames: []string{"datadog.node.local", "zz.node.local"},
	})
	if err := e.cp.Client.Create(ctx, younger); err != nil {
		t.Fatal(err)
	}
	e.waitInjectionConflict(t, "zz-agent", true, "variable ZZ_AGENT_MAGIC_HOST (injected by MagicIP zz.agent)",
		"variable DD_AGENT_HOST, hostname datadog.node.local (injected by MagicIP datadog)")
	e.waitInjectionConflict(t, "zz.agent", false)
	e.waitInjectionConflict(t, "datadog", false)
	e.waitAccepted(t, "zz-agent") // an injection conflict does not stop the datapath

	all := testPod("apps", "all")
	only := testPod("apps", "only-the-younger", func(p *corev1.Pod) { p.Annotations = map[string]string{"magic-ip.dev/select": "zz-agent"} })
	for _, p := range []*corev1.Pod{all, only} {
		if err := e.cp.Client.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	checkInjected(t, all, map[string]string{
		"ZZ_AGENT_MAGIC_HOST": "169.254.210.220", "DD_AGENT_HOST": magicAddr, "ZZ_URL": "http://169.254.210.230:9126",
	}, map[string]string{"datadog.node.local": magicAddr, "zz.node.local": "169.254.210.230"})
	checkInjected(t, only, map[string]string{
		"ZZ_AGENT_MAGIC_HOST": "", "DD_AGENT_HOST": "", "ZZ_URL": "http://169.254.210.230:9126",
	}, map[string]string{"datadog.node.local": "", "zz.node.local": "169.254.210.230"})

	// Without the older one, the younger gets its names back.
	if err := e.cp.Client.Delete(ctx, older); err != nil {
		t.Fatal(err)
	}
	e.waitInjectionConflict(t, "zz-agent", true, "with another value: variable DD_AGENT_HOST, hostname datadog.node.local (injected by MagicIP datadog); the other")
	eventually(t, 10*time.Second, "zz-agent's variables injected", func(ctx context.Context) error {
		p := testPod("apps", "", func(p *corev1.Pod) { p.GenerateName = "after-" })
		if err := e.cp.Client.Create(ctx, p); err != nil {
			return err
		}
		if got := envOf(p.Spec.Containers[0])["ZZ_AGENT_MAGIC_HOST"]; got != "169.254.210.230" {
			return fmt.Errorf("ZZ_AGENT_MAGIC_HOST=%q", got)
		}
		return nil
	})
}

// waitInjectionConflict waits for MagicIP name's InjectionConflict condition to be conflict, for
// its current generation, with each of messages in its message.
func (e *webhookEnv) waitInjectionConflict(t *testing.T, name string, conflict bool, messages ...string) {
	t.Helper()
	eventually(t, 10*time.Second, fmt.Sprintf("MagicIP %s InjectionConflict=%v", name, conflict), func(ctx context.Context) error {
		m := &v1alpha1.MagicIP{}
		if err := e.cp.Client.Get(ctx, client.ObjectKey{Name: name}, m); err != nil {
			return err
		}
		c := meta.FindStatusCondition(m.Status.Conditions, v1alpha1.ConditionInjectionConflict)
		if c == nil || (c.Status == metav1.ConditionTrue) != conflict || c.ObservedGeneration != m.Generation {
			return fmt.Errorf("InjectionConflict %+v", c)
		}
		for _, msg := range messages {
			if !strings.Contains(c.Message, msg) {
				return fmt.Errorf("InjectionConflict message %q, want %q in it", c.Message, msg)
			}
		}
		return nil
	})
}

// checkInjected checks the stored pod p: every container has each variable of env with its value
// ("" for absent), each hostname of hosts maps to its IP ("" for not mapped).
func checkInjected(t *testing.T, p *corev1.Pod, env, hosts map[string]string) {
	t.Helper()
	for _, c := range append(slices.Clone(p.Spec.InitContainers), p.Spec.Containers...) {
		got := envOf(c)
		for k, want := range env {
			if got[k] != want {
				t.Errorf("pod %s, container %s: %s=%q, want %q", p.Name, c.Name, k, got[k], want)
			}
		}
	}
	for h, want := range hosts {
		var ips []string
		for _, a := range p.Spec.HostAliases {
			if slices.Contains(a.Hostnames, h) {
				ips = append(ips, a.IP)
			}
		}
		if (want == "" && len(ips) > 0) || (want != "" && !slices.Equal(ips, []string{want})) {
			t.Errorf("pod %s: hostname %s maps to %v, want %q", p.Name, h, ips, want)
		}
	}
}

// TestWebhookEnvOrder: the injected variables go before the container's own entries, so that the
// container's $(NAME) references to them expand (the kubelet expands a reference only to an entry
// above it); a name the container sets keeps its value and its place among the container's own.
func TestWebhookEnvOrder(t *testing.T) {
	e := newWebhookEnv(t)
	own := []corev1.EnvVar{
		{Name: "DD_TRACE_AGENT_URL", Value: "http://$(DD_AGENT_HOST):$(DATADOG_MAGIC_PORT_APM)"},
		{Name: "STATSD_URL", Value: "udp://$(DATADOG_MAGIC_HOST):$(DATADOG_MAGIC_PORT_DOGSTATSD)"},
		{Name: "DATADOG_MAGIC_PORT", Value: "9999"},
		{Name: "LOG_LEVEL", Value: "info"},
	}
	p := testPod("apps", "refs", func(p *corev1.Pod) { p.Spec.Containers[0].Env = own })
	if err := e.cp.Client.Create(t.Context(), p); err != nil {
		t.Fatal(err)
	}
	stored := &corev1.Pod{}
	if err := e.cp.Client.Get(t.Context(), client.ObjectKeyFromObject(p), stored); err != nil {
		t.Fatal(err)
	}
	injected := []string{"DATADOG_MAGIC_HOST", "DATADOG_MAGIC_PORT", "DATADOG_MAGIC_PORT_APM", "DATADOG_MAGIC_PORT_DOGSTATSD",
		"DD_AGENT_HOST", "DD_TRACE_AGENT_URL", "NODE_NAME", "NODE_IP"}
	userSet := func(n string) bool {
		return slices.ContainsFunc(own, func(e corev1.EnvVar) bool { return e.Name == n })
	}
	wantApp := append(slices.DeleteFunc(slices.Clone(injected), userSet), "DD_TRACE_AGENT_URL", "STATSD_URL", "DATADOG_MAGIC_PORT", "LOG_LEVEL")
	for _, c := range append(slices.Clone(stored.Spec.InitContainers), stored.Spec.Containers...) {
		want := injected
		if c.Name == "app" {
			want = wantApp
			if got := c.Env[len(c.Env)-len(own):]; !equality.Semantic.DeepEqual(got, own) {
				t.Errorf("container app: its own entries became %+v, want %+v, last", got, own)
			}
		}
		var names []string
		for _, v := range c.Env {
			names = append(names, v.Name)
		}
		if !slices.Equal(names, want) {
			t.Errorf("container %s: env order %v, want %v", c.Name, names, want)
		}
		checkReferencesDefinedAbove(t, c)
	}
}

// varRef is a $(NAME) reference in an env value (a $$( escape is not one).
var varRef = regexp.MustCompile(`(^|[^$])\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// checkReferencesDefinedAbove checks that every $(NAME) in c's env values names an entry above
// it, the only ones the kubelet expands it to.
func checkReferencesDefinedAbove(t *testing.T, c corev1.Container) {
	t.Helper()
	for i, v := range c.Env {
		for _, m := range varRef.FindAllStringSubmatch(v.Value, -1) {
			if !slices.ContainsFunc(c.Env[:i], func(e corev1.EnvVar) bool { return e.Name == m[2] }) {
				t.Errorf("container %s: %s refers to $(%s), which is not defined above it: the kubelet leaves it unexpanded", c.Name, v.Name, m[2])
			}
		}
	}
}

// TestWebhookEnvFrom: a variable a container's envFrom may set (its prefix starts the name; the
// webhook cannot read the ConfigMap or Secret) is not injected into that container, since an env
// entry would override the envFrom value; the creator is told in an admission warning. Containers
// without envFrom get everything.
func TestWebhookEnvFrom(t *testing.T) {
	e := newWebhookEnv(t)
	c, warnings := warningClient(t, e.cp)
	p := testPod("apps", "env-from", func(p *corev1.Pod) {
		p.Spec.Containers[0].EnvFrom = []corev1.EnvFromSource{{Prefix: "DD_", ConfigMapRef: &corev1.ConfigMapEnvSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: "dd-settings"}}}}
		p.Spec.Containers[1].EnvFrom = []corev1.EnvFromSource{{SecretRef: &corev1.SecretEnvSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: "sidecar-env"}}}}
	})
	if err := c.Create(t.Context(), p); err != nil {
		t.Fatal(err)
	}
	all := map[string]string{
		"DATADOG_MAGIC_HOST": magicAddr, "DATADOG_MAGIC_PORT_APM": "8126", "NODE_NAME": "fieldRef:spec.nodeName",
		"DD_AGENT_HOST": magicAddr, "DD_TRACE_AGENT_URL": "http://" + magicAddr + ":8126",
	}
	for name, want := range map[string]map[string]string{
		"init": all,
		// envFrom prefix DD_: the DD_ variables are left to the ConfigMap, the rest injected.
		"app": {"DATADOG_MAGIC_HOST": magicAddr, "NODE_NAME": "fieldRef:spec.nodeName", "DD_AGENT_HOST": "", "DD_TRACE_AGENT_URL": ""},
		// envFrom without a prefix may set any name: nothing injected.
		"sidecar": {"DATADOG_MAGIC_HOST": "", "NODE_NAME": "", "DD_AGENT_HOST": ""},
	} {
		containers := append(slices.Clone(p.Spec.InitContainers), p.Spec.Containers...)
		got := envOf(containers[slices.IndexFunc(containers, func(c corev1.Container) bool { return c.Name == name })])
		for k, v := range want {
			if got[k] != v {
				t.Errorf("container %s: %s=%q, want %q", name, k, got[k], v)
			}
		}
	}
	if len(p.Spec.HostAliases) != 1 || p.Annotations["magic-ip.dev/injected"] != "datadog" {
		t.Errorf("hostAliases %+v, annotations %v: want the pod-level injection unchanged", p.Spec.HostAliases, p.Annotations)
	}
	got := strings.Join(warnings.list(), "\n")
	for _, want := range []string{
		`container app: DD_AGENT_HOST, DD_TRACE_AGENT_URL not injected: envFrom configMapRef dd-settings (prefix "DD_") may set them`,
		"container sidecar: DATADOG_MAGIC_HOST, DATADOG_MAGIC_PORT, DATADOG_MAGIC_PORT_APM and 5 more not injected: envFrom secretRef sidecar-env (no prefix)",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("admission warnings %q, want one containing %q", got, want)
		}
	}
}

// warningCollector keeps the warnings the API server returns (a rest.WarningHandler).
type warningCollector struct {
	mu       sync.Mutex
	warnings []string
}

func (w *warningCollector) HandleWarningHeader(_ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.warnings = append(w.warnings, text)
}

func (w *warningCollector) list() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.warnings)
}

// TestWebhookDryRun: a dry-run create returns the mutated pod and stores nothing.
func TestWebhookDryRun(t *testing.T) {
	e := newWebhookEnv(t)
	p := testPod("apps", "dry")
	if err := e.cp.Client.Create(t.Context(), p, client.DryRunAll); err != nil {
		t.Fatal(err)
	}
	if envOf(p.Spec.Containers[0])["DATADOG_MAGIC_HOST"] != magicAddr {
		t.Errorf("dry-run response not mutated: %v", p.Spec.Containers[0].Env)
	}
	if err := e.cp.Client.Get(t.Context(), client.ObjectKeyFromObject(p), &corev1.Pod{}); !apierrors.IsNotFound(err) {
		t.Errorf("dry-run stored the pod (get: %v)", err)
	}
}

// TestWebhookCertRotation: a new certificate on disk is served at the next handshake, without a
// restart, and the API server keeps calling the webhook.
func TestWebhookCertRotation(t *testing.T) {
	e := newWebhookEnv(t)
	before, err := e.wh.ServedCert()
	if err != nil {
		t.Fatal(err)
	}
	if err := e.wh.RotateCert(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "new certificate served", func(context.Context) error {
		now, err := e.wh.ServedCert()
		if err != nil {
			return err
		}
		if now.SerialNumber.Cmp(before.SerialNumber) == 0 {
			return fmt.Errorf("still serving serial %s", before.SerialNumber)
		}
		return nil
	})
	p := testPod("apps", "after-rotation")
	if err := e.cp.Client.Create(t.Context(), p); err != nil {
		t.Fatal(err)
	}
	if envOf(p.Spec.Containers[0])["DATADOG_MAGIC_HOST"] != magicAddr {
		t.Errorf("pod created after rotation not injected")
	}
	if e.wh.Process.Exited() {
		t.Errorf("webhook restarted or exited")
	}
}

// TestWebhookDownFailsOpen: with the webhook process gone, pods are still created, promptly.
func TestWebhookDownFailsOpen(t *testing.T) {
	e := newWebhookEnv(t)
	e.wh.Process.Kill()
	start := time.Now()
	p := testPod("apps", "while-down")
	if err := e.cp.Client.Create(t.Context(), p); err != nil {
		t.Fatalf("pod creation blocked by a dead webhook: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("creation took %s with the webhook down, want within its 2 s timeout", d)
	}
	if envOf(p.Spec.Containers[0])["DATADOG_MAGIC_HOST"] != "" {
		t.Errorf("injected with the webhook down?")
	}
}

// TestWebhookBadInput: malformed bodies get 400 and oversized ones 413, with the reason (as
// controller-runtime answers, in the AdmissionReview status); a non-pod object is allowed unchanged.
func TestWebhookBadInput(t *testing.T) {
	e := newWebhookEnv(t)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.wh.CA.Pool()}}}
	url := fmt.Sprintf("https://127.0.0.1:%d/mutate-v1-pod", e.wh.Port)
	post := func(body []byte) (int, string) {
		resp, err := hc.Post(url, "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	review := func(kind, object string) []byte {
		return fmt.Appendf(nil, `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1","kind":{"group":"","version":"v1","kind":%q},"resource":{"group":"","version":"v1","resource":"x"},"operation":"CREATE","namespace":"apps","object":%s}}`, kind, object)
	}
	for name, tc := range map[string]struct {
		body       []byte
		wantCode   string
		wantSubstr string
	}{
		"not JSON":   {[]byte("{nope"), `"code":400`, "couldn't get version/kind"},
		"empty body": {nil, `"code":400`, "request body is empty"},
		"oversized (413, Request Entity Too Large)": {bytes.Repeat([]byte("x"), 8<<20), `"code":413`, "too large"},
		"a ConfigMap":       {review("ConfigMap", `{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"}}`), `"allowed":true`, "not a pod creation"},
		"pod not decodable": {review("Pod", `{"apiVersion":"v1","kind":"Pod","spec":{"containers":"oops"}}`), `"allowed":true`, "not decodable"},
	} {
		t.Run(name, func(t *testing.T) {
			code, body := post(tc.body)
			if code != 200 && code != 400 {
				t.Fatalf("HTTP %d: %s", code, body)
			}
			if !strings.Contains(body, tc.wantCode) || !strings.Contains(body, tc.wantSubstr) {
				t.Errorf("response %q, want %s and %q", body, tc.wantCode, tc.wantSubstr)
			}
		})
	}
	if e.wh.Process.Exited() {
		t.Errorf("webhook died on bad input:\n%s", e.wh.Process.Output())
	}
}

// TestWebhookLeaderElection: with leader election on (as the Deployment runs it), the webhook,
// acting as its service account under the shipped RBAC, takes the Lease in its own namespace and
// writes MagicIP status as the leader.
func TestWebhookLeaderElection(t *testing.T) {
	cp := harness.StartControlPlane(t)
	harness.StartWebhook(t, cp, webhookBin, "--leader-elect=true", "--leader-election-namespace="+harness.WebhookNamespace)
	e := &webhookEnv{cp: cp}
	if err := cp.Client.Create(t.Context(), datadogMagicIP("datadog")); err != nil {
		t.Fatal(err)
	}
	e.waitAccepted(t, "datadog")
	lease := &coordinationv1.Lease{}
	if err := cp.Client.Get(t.Context(), client.ObjectKey{Namespace: harness.WebhookNamespace, Name: "magic-ip-webhook"}, lease); err != nil {
		t.Fatalf("leader-election Lease: %v", err)
	}
	if lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity == "" {
		t.Errorf("Lease has no holder: %+v", lease.Spec)
	}
}
