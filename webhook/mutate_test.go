package webhook

import (
	"encoding/json"
	"reflect"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

const (
	testAddr  = "169.254.210.210"
	testAddr2 = "169.254.210.211"
	testAddr6 = "fd00::a9fe:d2d2"
)

// dualStack gives the MagicIP spec.ipv6Address testAddr6.
func dualStack(m *v1alpha1.MagicIP) { m.Spec.IPv6Address = testAddr6 }

var testEpoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// newMIP is a MagicIP of generation 1, created age minutes after testEpoch, serving 8126/TCP
// ("apm") at addr from the pods labelled app=agent in the datadog namespace.
func newMIP(name, addr string, age int, mods ...func(*v1alpha1.MagicIP)) v1alpha1.MagicIP {
	m := v1alpha1.MagicIP{
		ObjectMeta: metav1.ObjectMeta{
			Name:              name,
			Generation:        1,
			CreationTimestamp: metav1.NewTime(testEpoch.Add(time.Duration(age) * time.Minute)),
		},
		Spec: v1alpha1.MagicIPSpec{
			Address: addr,
			Ports:   []v1alpha1.MagicIPPort{{Name: "apm", Port: 8126}},
			Producer: v1alpha1.Producer{
				Namespace: "datadog",
				Selector:  v1alpha1.LabelSelector{MatchLabels: map[string]string{"app": "agent"}},
			},
		},
	}
	for _, mod := range mods {
		mod(&m)
	}
	return m
}

func withPorts(ports ...v1alpha1.MagicIPPort) func(*v1alpha1.MagicIP) {
	return func(m *v1alpha1.MagicIP) { m.Spec.Ports = ports }
}

func withInject(in v1alpha1.Inject) func(*v1alpha1.MagicIP) {
	return func(m *v1alpha1.MagicIP) { m.Spec.Inject = in }
}

// withAccepted sets the Accepted condition as the status controller would have written it for
// generation observed, and the object's generation to gen.
func withAccepted(status metav1.ConditionStatus, gen, observed int64) func(*v1alpha1.MagicIP) {
	return func(m *v1alpha1.MagicIP) {
		m.Generation = gen
		m.Status.Conditions = []metav1.Condition{{
			Type: v1alpha1.ConditionAccepted, Status: status, ObservedGeneration: observed,
			Reason: "Test", LastTransitionTime: metav1.NewTime(testEpoch),
		}}
	}
}

// withIPv6Programmed sets the MagicIP's generation and an IPv6Programmed condition (the status
// controller's word that its IPv6 address is served wherever it is programmed).
func withIPv6Programmed(status metav1.ConditionStatus, gen, observed int64) func(*v1alpha1.MagicIP) {
	return func(m *v1alpha1.MagicIP) {
		m.Generation = gen
		m.Status.Conditions = append(m.Status.Conditions, metav1.Condition{
			Type: ConditionIPv6Programmed, Status: status, ObservedGeneration: observed,
			Reason: "Test", LastTransitionTime: metav1.NewTime(testEpoch),
		})
	}
}

func val(name, value string) corev1.EnvVar { return corev1.EnvVar{Name: name, Value: value} }

func fieldRef(name, path string) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
}

func envs(vs ...corev1.EnvVar) []corev1.EnvVar { return vs }

// identity is a podIdentity list of name, fieldPath pairs.
func identity(nameAndPath ...string) []v1alpha1.PodIdentityEnv {
	var out []v1alpha1.PodIdentityEnv
	for i := 0; i+1 < len(nameAndPath); i += 2 {
		out = append(out, v1alpha1.PodIdentityEnv{Name: nameAndPath[i], FieldPath: nameAndPath[i+1]})
	}
	return out
}

func toJSON(v any) string {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err.Error()
	}
	return string(b)
}

func TestEnv(t *testing.T) {
	tests := map[string]struct {
		mip  v1alpha1.MagicIP
		want []corev1.EnvVar
	}{
		"name with '-' and '.', port names with '-'; first port is PORT": {
			mip: newMIP("datadog-agent.v2", testAddr, 0, withPorts(
				v1alpha1.MagicIPPort{Name: "dogstatsd", Port: 8125, Protocol: v1alpha1.ProtocolUDP},
				v1alpha1.MagicIPPort{Name: "trace-apm", Port: 8126},
			)),
			want: envs(
				val("DATADOG_AGENT_V2_MAGIC_HOST", testAddr),
				val("DATADOG_AGENT_V2_MAGIC_PORT", "8125"),
				val("DATADOG_AGENT_V2_MAGIC_PORT_DOGSTATSD", "8125"),
				val("DATADOG_AGENT_V2_MAGIC_PORT_TRACE_APM", "8126"),
			),
		},
		"inject.env=true explicitly is the default": {
			mip: newMIP("dd", testAddr, 0, withInject(v1alpha1.Inject{Env: ptr.To(true)})),
			want: envs(
				val("DD_MAGIC_HOST", testAddr),
				val("DD_MAGIC_PORT", "8126"),
				val("DD_MAGIC_PORT_APM", "8126"),
			),
		},
		"inject.env=false gives only extraEnv": {
			mip: newMIP("dd", testAddr, 0, withInject(v1alpha1.Inject{
				Env:      ptr.To(false),
				ExtraEnv: []v1alpha1.EnvTemplate{{Name: "DD_AGENT_HOST", Value: "{address}"}},
			})),
			want: envs(val("DD_AGENT_HOST", testAddr)),
		},
		"inject.env=false and nothing else gives nothing": {
			mip:  newMIP("dd", testAddr, 0, withInject(v1alpha1.Inject{Env: ptr.To(false)})),
			want: nil,
		},
		"placeholders resolved, after the standard variables": {
			mip: newMIP("dd", testAddr, 0,
				withPorts(
					v1alpha1.MagicIPPort{Name: "apm", Port: 8126},
					v1alpha1.MagicIPPort{Name: "apm-otlp", Port: 4317},
					v1alpha1.MagicIPPort{Name: "dogstatsd", Port: 8125, Protocol: v1alpha1.ProtocolUDP},
				),
				withInject(v1alpha1.Inject{ExtraEnv: []v1alpha1.EnvTemplate{
					{Name: "DD_AGENT_HOST", Value: "{address}"},
					{Name: "DD_TRACE_AGENT_URL", Value: "http://{address}:{port}"},
					{Name: "DD_DOGSTATSD_URL", Value: "udp://{address}:{port:dogstatsd}"},
					{Name: "OTLP", Value: "{port:apm-otlp},{port:apm},{port:apm-otlp}"},
					{Name: "PLAIN", Value: "no placeholder"},
				}})),
			want: envs(
				val("DD_MAGIC_HOST", testAddr),
				val("DD_MAGIC_PORT", "8126"),
				val("DD_MAGIC_PORT_APM", "8126"),
				val("DD_MAGIC_PORT_APM_OTLP", "4317"),
				val("DD_MAGIC_PORT_DOGSTATSD", "8125"),
				val("DD_AGENT_HOST", testAddr),
				val("DD_TRACE_AGENT_URL", "http://"+testAddr+":8126"),
				val("DD_DOGSTATSD_URL", "udp://"+testAddr+":8125"),
				val("OTLP", "4317,8126,4317"),
				val("PLAIN", "no placeholder"),
			),
		},
		"unknown placeholders left as they are": {
			mip: newMIP("dd", testAddr, 0, withInject(v1alpha1.Inject{
				Env: ptr.To(false),
				ExtraEnv: []v1alpha1.EnvTemplate{
					{Name: "X", Value: "{host}:{port:nope}:{PORT}:{address"},
					{Name: "Y", Value: "{{address}}"},
				},
			})),
			want: envs(
				val("X", "{host}:{port:nope}:{PORT}:{address"),
				val("Y", "{"+testAddr+"}"),
			),
		},
		"IPv6 address": {
			mip: newMIP("v6", "fd00::10", 0, withInject(v1alpha1.Inject{
				ExtraEnv: []v1alpha1.EnvTemplate{{Name: "URL", Value: "http://[{address}]:{port:apm}"}},
			})),
			want: envs(
				val("V6_MAGIC_HOST", "fd00::10"),
				val("V6_MAGIC_PORT", "8126"),
				val("V6_MAGIC_PORT_APM", "8126"),
				val("URL", "http://[fd00::10]:8126"),
			),
		},
		"dual-stack: <NAME>_MAGIC_HOST_IPV6 after <NAME>_MAGIC_HOST, {address6} resolved": {
			mip: newMIP("otel", testAddr, 0, dualStack, withInject(v1alpha1.Inject{
				ExtraEnv: []v1alpha1.EnvTemplate{{Name: "OTLP4", Value: "http://{address}:{port}"}, {Name: "OTLP6", Value: "http://[{address6}]:{port:apm}"}},
			})),
			want: envs(
				val("OTEL_MAGIC_HOST", testAddr),
				val("OTEL_MAGIC_HOST_IPV6", testAddr6),
				val("OTEL_MAGIC_PORT", "8126"),
				val("OTEL_MAGIC_PORT_APM", "8126"),
				val("OTLP4", "http://"+testAddr+":8126"),
				val("OTLP6", "http://["+testAddr6+"]:8126"),
			),
		},
		"dual-stack with inject.env=false: no standard variables, IPv6 neither": {
			mip:  newMIP("otel", testAddr, 0, dualStack, withInject(v1alpha1.Inject{Env: ptr.To(false)})),
			want: nil,
		},
		"nodeMetadata: NODE_NAME and NODE_IP from the downward API, last": {
			mip: newMIP("dd", testAddr, 0, withInject(v1alpha1.Inject{
				NodeMetadata: true,
				ExtraEnv:     []v1alpha1.EnvTemplate{{Name: "DD_AGENT_HOST", Value: "{address}"}},
			})),
			want: envs(
				val("DD_MAGIC_HOST", testAddr),
				val("DD_MAGIC_PORT", "8126"),
				val("DD_MAGIC_PORT_APM", "8126"),
				val("DD_AGENT_HOST", testAddr),
				fieldRef("NODE_NAME", "spec.nodeName"),
				fieldRef("NODE_IP", "status.hostIP"),
			),
		},
		"nodeMetadata with inject.env=false": {
			mip:  newMIP("dd", testAddr, 0, withInject(v1alpha1.Inject{Env: ptr.To(false), NodeMetadata: true})),
			want: envs(fieldRef("NODE_NAME", "spec.nodeName"), fieldRef("NODE_IP", "status.hostIP")),
		},
		"podIdentity: fieldRefs to the pod's own fields, in list order, last": {
			mip: newMIP("dd", testAddr, 0, withInject(v1alpha1.Inject{
				NodeMetadata: true,
				ExtraEnv:     []v1alpha1.EnvTemplate{{Name: "DD_AGENT_HOST", Value: "{address}"}},
				PodIdentity: []v1alpha1.PodIdentityEnv{
					{Name: "DD_ENTITY_ID", FieldPath: v1alpha1.FieldPodUID},
					{Name: "POD_NAME", FieldPath: v1alpha1.FieldPodName},
					{Name: "POD_NAMESPACE", FieldPath: v1alpha1.FieldPodNamespace},
					{Name: "POD_UID", FieldPath: v1alpha1.FieldPodUID},
				},
			})),
			want: slices.Concat(ddEnv, envs(
				fieldRef("NODE_NAME", "spec.nodeName"), fieldRef("NODE_IP", "status.hostIP"),
				fieldRef("DD_ENTITY_ID", "metadata.uid"), fieldRef("POD_NAME", "metadata.name"),
				fieldRef("POD_NAMESPACE", "metadata.namespace"), fieldRef("POD_UID", "metadata.uid"),
			)),
		},
		"podIdentity with inject.env=false: only the identity": {
			mip:  newMIP("dd", testAddr, 0, withInject(v1alpha1.Inject{Env: ptr.To(false), PodIdentity: identity("DD_ENTITY_ID", v1alpha1.FieldPodUID)})),
			want: envs(fieldRef("DD_ENTITY_ID", "metadata.uid")),
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := Env(tc.mip)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Env(%s):\ngot  %s\nwant %s", tc.mip.Name, toJSON(got), toJSON(tc.want))
			}
		})
	}
}

func TestExpandTemplate(t *testing.T) {
	spec := v1alpha1.MagicIPSpec{Address: testAddr, Ports: []v1alpha1.MagicIPPort{
		{Name: "a", Port: 1}, {Name: "a-b", Port: 2}, {Name: "b", Port: 3},
	}}
	tests := map[string]struct{ tmpl, want string }{
		"empty":                           {"", ""},
		"address":                         {"{address}", testAddr},
		"first port":                      {"{port}", "1"},
		"named ports, one a prefix":       {"{port:a-b} {port:a} {port:b}", "2 1 3"},
		"repeated":                        {"{address}{address}", testAddr + testAddr},
		"unknown port name":               {"{port:c}", "{port:c}"},
		"unknown placeholder":             {"{addr}", "{addr}"},
		"placeholders are case-sensitive": {"{Address}{PORT}", "{Address}{PORT}"},
		"unterminated":                    {"{port:a", "{port:a"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := ExpandTemplate(tc.tmpl, spec); got != tc.want {
				t.Errorf("ExpandTemplate(%q) = %q, want %q", tc.tmpl, got, tc.want)
			}
		})
	}
	dual := spec
	dual.IPv6Address = testAddr6
	for tmpl, want := range map[string]string{
		"{address6}": testAddr6, "[{address6}]:{port}": "[" + testAddr6 + "]:1", "{address},{address6}": testAddr + "," + testAddr6,
	} {
		if got := ExpandTemplate(tmpl, dual); got != want {
			t.Errorf("dual-stack: ExpandTemplate(%q) = %q, want %q", tmpl, got, want)
		}
	}
	if got := ExpandTemplate("{address6}", spec); got != "{address6}" {
		t.Errorf("no ipv6Address: ExpandTemplate({address6}) = %q, want it left as it is", got)
	}
}

// ddMIP injects DD_MAGIC_HOST, DD_MAGIC_PORT, DD_MAGIC_PORT_APM and DD_AGENT_HOST, and the
// hostname dd.local.
func ddMIP(mods ...func(*v1alpha1.MagicIP)) v1alpha1.MagicIP {
	return newMIP("dd", testAddr, 0, append([]func(*v1alpha1.MagicIP){withInject(v1alpha1.Inject{
		ExtraEnv:  []v1alpha1.EnvTemplate{{Name: "DD_AGENT_HOST", Value: "{address}"}},
		Hostnames: []string{"dd.local"},
	})}, mods...)...)
}

// ddEnv is what ddMIP injects, in order.
var ddEnv = envs(
	val("DD_MAGIC_HOST", testAddr),
	val("DD_MAGIC_PORT", "8126"),
	val("DD_MAGIC_PORT_APM", "8126"),
	val("DD_AGENT_HOST", testAddr),
)

// without returns env minus the variables named.
func without(env []corev1.EnvVar, names ...string) []corev1.EnvVar {
	var out []corev1.EnvVar
	for _, e := range env {
		keep := true
		for _, n := range names {
			keep = keep && e.Name != n
		}
		if keep {
			out = append(out, e)
		}
	}
	return out
}

// testPod has an init container "init" and containers "app" and "sidecar", in namespace apps.
func testPod(mods ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "apps"},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Name: "init", Image: "busybox"}},
			Containers:     []corev1.Container{{Name: "app", Image: "nginx"}, {Name: "sidecar", Image: "envoy"}},
		},
	}
	for _, mod := range mods {
		mod(p)
	}
	return p
}

// inContainer applies f to the container or init container named name.
func inContainer(name string, f func(*corev1.Container)) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		for _, cs := range [][]corev1.Container{p.Spec.InitContainers, p.Spec.Containers} {
			for i := range cs {
				if cs[i].Name == name {
					f(&cs[i])
				}
			}
		}
	}
}

func withEnv(container string, env ...corev1.EnvVar) func(*corev1.Pod) {
	return inContainer(container, func(c *corev1.Container) { c.Env = append(c.Env, env...) })
}

func withEnvFrom(container string, from ...corev1.EnvFromSource) func(*corev1.Pod) {
	return inContainer(container, func(c *corev1.Container) { c.EnvFrom = append(c.EnvFrom, from...) })
}

func withAliases(aliases ...corev1.HostAlias) func(*corev1.Pod) {
	return func(p *corev1.Pod) { p.Spec.HostAliases = append(p.Spec.HostAliases, aliases...) }
}

func withAnnotation(k, v string) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		if p.Annotations == nil {
			p.Annotations = map[string]string{}
		}
		p.Annotations[k] = v
	}
}

func TestMutate(t *testing.T) {
	injected := func(names string) func(*corev1.Pod) { return withAnnotation(InjectedAnnotation, names) }
	ddAlias := corev1.HostAlias{IP: testAddr, Hostnames: []string{"dd.local"}}
	// ddDual is testPod() with ddMIP(dualStack) injected (HOST_IPV6 too), its names and aliases.
	ddDual := func(names string, aliases ...corev1.HostAlias) *corev1.Pod {
		e := slices.Insert(slices.Clone(ddEnv), 1, val("DD_MAGIC_HOST_IPV6", testAddr6))
		return testPod(withEnv("init", e...), withEnv("app", e...), withEnv("sidecar", e...), withAliases(aliases...), injected(names))
	}
	apmOnly := withInject(v1alpha1.Inject{Env: ptr.To(false), Hostnames: []string{"apm.local"}})
	tests := map[string]struct {
		pod         *corev1.Pod
		mips        []v1alpha1.MagicIP
		want        *corev1.Pod
		wantChanged bool
	}{
		"no MagicIPs: unchanged": {
			pod:  testPod(withEnv("app", val("A", "1")), withAliases(ddAlias)),
			want: testPod(withEnv("app", val("A", "1")), withAliases(ddAlias)),
		},
		"every container and init container gets the env": {
			pod:  testPod(),
			mips: []v1alpha1.MagicIP{ddMIP()},
			want: testPod(withEnv("init", ddEnv...), withEnv("app", ddEnv...), withEnv("sidecar", ddEnv...),
				withAliases(ddAlias), injected("dd")),
			wantChanged: true,
		},
		"injected variables go before the user's, which keep their order and values; other containers still get them": {
			pod: testPod(
				withEnv("app", val("A", "1"), val("DD_AGENT_HOST", "mine"), fieldRef("DD_MAGIC_HOST", "status.podIP")),
				withEnv("init", val("DD_MAGIC_PORT", "9999")),
			),
			mips: []v1alpha1.MagicIP{ddMIP()},
			want: testPod(
				withEnv("app", without(ddEnv, "DD_AGENT_HOST", "DD_MAGIC_HOST")...),
				withEnv("app", val("A", "1"), val("DD_AGENT_HOST", "mine"), fieldRef("DD_MAGIC_HOST", "status.podIP")),
				withEnv("init", without(ddEnv, "DD_MAGIC_PORT")...),
				withEnv("init", val("DD_MAGIC_PORT", "9999")),
				withEnv("sidecar", ddEnv...),
				withAliases(ddAlias), injected("dd")),
			wantChanged: true,
		},
		"a user's $(DD_AGENT_HOST) reference comes after the injected DD_AGENT_HOST (the kubelet expands only earlier names)": {
			pod:  testPod(withEnv("app", val("DD_TRACE_AGENT_URL", "http://$(DD_AGENT_HOST):$(DD_MAGIC_PORT_APM)"))),
			mips: []v1alpha1.MagicIP{ddMIP()},
			want: testPod(
				withEnv("init", ddEnv...),
				withEnv("app", ddEnv...), withEnv("app", val("DD_TRACE_AGENT_URL", "http://$(DD_AGENT_HOST):$(DD_MAGIC_PORT_APM)")),
				withEnv("sidecar", ddEnv...),
				withAliases(ddAlias), injected("dd")),
			wantChanged: true,
		},
		"two MagicIPs: in MagicIP order, both before the user's": {
			pod: testPod(withEnv("app", val("A", "1"))),
			mips: []v1alpha1.MagicIP{
				newMIP("a", testAddr, 0, withInject(v1alpha1.Inject{Env: ptr.To(false), ExtraEnv: []v1alpha1.EnvTemplate{{Name: "A_HOST", Value: "{address}"}}})),
				newMIP("b", testAddr2, 0, withInject(v1alpha1.Inject{Env: ptr.To(false), ExtraEnv: []v1alpha1.EnvTemplate{{Name: "B_HOST", Value: "{address}"}}})),
			},
			want: testPod(
				withEnv("init", val("A_HOST", testAddr), val("B_HOST", testAddr2)),
				withEnv("app", val("A_HOST", testAddr), val("B_HOST", testAddr2), val("A", "1")),
				withEnv("sidecar", val("A_HOST", testAddr), val("B_HOST", testAddr2)),
				injected("a,b")),
			wantChanged: true,
		},
		"user sets every variable: only hostAliases and the annotation change": {
			pod:  testPod(withEnv("init", ddEnv...), withEnv("app", ddEnv...), withEnv("sidecar", ddEnv...)),
			mips: []v1alpha1.MagicIP{ddMIP()},
			want: testPod(withEnv("init", ddEnv...), withEnv("app", ddEnv...), withEnv("sidecar", ddEnv...),
				withAliases(ddAlias), injected("dd")),
			wantChanged: true,
		},
		"nodeMetadata of two MagicIPs: NODE_NAME and NODE_IP once, the first MagicIP's": {
			pod: testPod(),
			mips: []v1alpha1.MagicIP{
				newMIP("a", testAddr, 0, withInject(v1alpha1.Inject{Env: ptr.To(false), NodeMetadata: true})),
				newMIP("b", testAddr2, 0, withInject(v1alpha1.Inject{
					Env: ptr.To(false), NodeMetadata: true,
					ExtraEnv: []v1alpha1.EnvTemplate{{Name: "B", Value: "{address}"}},
				})),
			},
			want: func() *corev1.Pod {
				e := envs(fieldRef("NODE_NAME", "spec.nodeName"), fieldRef("NODE_IP", "status.hostIP"), val("B", testAddr2))
				return testPod(withEnv("init", e...), withEnv("app", e...), withEnv("sidecar", e...), injected("a,b"))
			}(),
			wantChanged: true,
		},
		"dual-stack: HOST_IPV6 in the env; hostAliases for IPv4 only without IPv6Programmed": {
			pod:         testPod(),
			mips:        []v1alpha1.MagicIP{ddMIP(dualStack)},
			want:        ddDual("dd", ddAlias),
			wantChanged: true,
		},
		"dual-stack, IPv6Programmed for this generation: a hostAliases entry per family": {
			pod:         testPod(),
			mips:        []v1alpha1.MagicIP{ddMIP(dualStack, withIPv6Programmed(metav1.ConditionTrue, 2, 2))},
			want:        ddDual("dd", ddAlias, corev1.HostAlias{IP: testAddr6, Hostnames: []string{"dd.local"}}),
			wantChanged: true,
		},
		"dual-stack, IPv6Programmed for an older generation or False: IPv4 entry only": {
			pod: testPod(),
			mips: []v1alpha1.MagicIP{
				ddMIP(dualStack, withIPv6Programmed(metav1.ConditionTrue, 3, 2)),
				newMIP("ee", testAddr2, 0, dualStack, withInject(v1alpha1.Inject{Env: ptr.To(false), Hostnames: []string{"ee.local"}}),
					func(m *v1alpha1.MagicIP) { m.Spec.IPv6Address = "fd00::ee" }, withIPv6Programmed(metav1.ConditionFalse, 1, 1)),
			},
			want:        ddDual("dd,ee", ddAlias, corev1.HostAlias{IP: testAddr2, Hostnames: []string{"ee.local"}}),
			wantChanged: true,
		},
		"dual-stack: merged into the pod's own IPv4 entry, its IPv6 entry left alone; the pod's HOST_IPV6 kept": {
			pod: testPod(withEnv("sidecar", val("DD_MAGIC_HOST_IPV6", "mine")), withAliases(
				corev1.HostAlias{IP: testAddr6, Hostnames: []string{"six.local"}}, corev1.HostAlias{IP: testAddr, Hostnames: []string{"four.local"}})),
			mips: []v1alpha1.MagicIP{ddMIP(dualStack)},
			want: func() *corev1.Pod {
				e := slices.Insert(slices.Clone(ddEnv), 1, val("DD_MAGIC_HOST_IPV6", testAddr6))
				return testPod(withEnv("init", e...), withEnv("app", e...), withEnv("sidecar", ddEnv...), withEnv("sidecar", val("DD_MAGIC_HOST_IPV6", "mine")),
					withAliases(corev1.HostAlias{IP: testAddr6, Hostnames: []string{"six.local"}}, corev1.HostAlias{IP: testAddr, Hostnames: []string{"four.local", "dd.local"}}),
					injected("dd"))
			}(),
			wantChanged: true,
		},
		"dual-stack: a hostname the pod maps itself is left to it, in both families": {
			pod:         testPod(withEnv("init", ddEnv...), withAliases(corev1.HostAlias{IP: "10.0.0.1", Hostnames: []string{"dd.local"}})),
			mips:        []v1alpha1.MagicIP{ddMIP(dualStack, withInject(v1alpha1.Inject{Env: ptr.To(false), Hostnames: []string{"dd.local"}}))},
			want:        testPod(withEnv("init", ddEnv...), withAliases(corev1.HostAlias{IP: "10.0.0.1", Hostnames: []string{"dd.local"}}), injected("dd")),
			wantChanged: true,
		},
		"envFrom: the names its prefix starts are left to it, in that container only": {
			pod:  testPod(withEnvFrom("app", corev1.EnvFromSource{Prefix: "DD_AGENT", ConfigMapRef: &corev1.ConfigMapEnvSource{}})),
			mips: []v1alpha1.MagicIP{ddMIP()},
			want: testPod(withEnvFrom("app", corev1.EnvFromSource{Prefix: "DD_AGENT", ConfigMapRef: &corev1.ConfigMapEnvSource{}}),
				withEnv("init", ddEnv...), withEnv("app", without(ddEnv, "DD_AGENT_HOST")...), withEnv("sidecar", ddEnv...),
				withAliases(ddAlias), injected("dd")),
			wantChanged: true,
		},
		"envFrom without a prefix may set any name: no variable injected there": {
			pod:  testPod(withEnv("app", val("A", "1")), withEnvFrom("app", corev1.EnvFromSource{SecretRef: &corev1.SecretEnvSource{}})),
			mips: []v1alpha1.MagicIP{ddMIP()},
			want: testPod(withEnv("app", val("A", "1")), withEnvFrom("app", corev1.EnvFromSource{SecretRef: &corev1.SecretEnvSource{}}),
				withEnv("init", ddEnv...), withEnv("sidecar", ddEnv...), withAliases(ddAlias), injected("dd")),
			wantChanged: true,
		},
		"envFrom of another prefix: everything injected": {
			pod:  testPod(withEnvFrom("app", corev1.EnvFromSource{Prefix: "APP_", ConfigMapRef: &corev1.ConfigMapEnvSource{}})),
			mips: []v1alpha1.MagicIP{ddMIP()},
			want: testPod(withEnvFrom("app", corev1.EnvFromSource{Prefix: "APP_", ConfigMapRef: &corev1.ConfigMapEnvSource{}}),
				withEnv("init", ddEnv...), withEnv("app", ddEnv...), withEnv("sidecar", ddEnv...), withAliases(ddAlias), injected("dd")),
			wantChanged: true,
		},
		"user's NODE_NAME kept": {
			pod:  testPod(withEnv("app", val("NODE_NAME", "mine"))),
			mips: []v1alpha1.MagicIP{newMIP("a", testAddr, 0, withInject(v1alpha1.Inject{Env: ptr.To(false), NodeMetadata: true}))},
			want: testPod(
				withEnv("init", fieldRef("NODE_NAME", "spec.nodeName"), fieldRef("NODE_IP", "status.hostIP")),
				withEnv("app", fieldRef("NODE_IP", "status.hostIP"), val("NODE_NAME", "mine")),
				withEnv("sidecar", fieldRef("NODE_NAME", "spec.nodeName"), fieldRef("NODE_IP", "status.hostIP")),
				injected("a")),
			wantChanged: true,
		},
		"podIdentity: before the user's entries; a name the user sets keeps the user's value": {
			pod: testPod(withEnv("app", val("DD_ENTITY_ID", "en.mine"), val("A", "$(POD_NAME)"))),
			mips: []v1alpha1.MagicIP{newMIP("dd", testAddr, 0, withInject(v1alpha1.Inject{
				Env: ptr.To(false), PodIdentity: identity("DD_ENTITY_ID", "metadata.uid", "POD_NAME", "metadata.name"),
			}))},
			want: testPod(
				withEnv("init", fieldRef("DD_ENTITY_ID", "metadata.uid"), fieldRef("POD_NAME", "metadata.name")),
				withEnv("app", fieldRef("POD_NAME", "metadata.name"), val("DD_ENTITY_ID", "en.mine"), val("A", "$(POD_NAME)")),
				withEnv("sidecar", fieldRef("DD_ENTITY_ID", "metadata.uid"), fieldRef("POD_NAME", "metadata.name")),
				injected("dd")),
			wantChanged: true,
		},
		"podIdentity: a name envFrom may set is left to it": {
			pod: testPod(withEnvFrom("app", corev1.EnvFromSource{Prefix: "DD_", ConfigMapRef: &corev1.ConfigMapEnvSource{}})),
			mips: []v1alpha1.MagicIP{newMIP("dd", testAddr, 0, withInject(v1alpha1.Inject{
				Env: ptr.To(false), PodIdentity: identity("DD_ENTITY_ID", "metadata.uid", "POD_NAME", "metadata.name"),
			}))},
			want: testPod(withEnvFrom("app", corev1.EnvFromSource{Prefix: "DD_", ConfigMapRef: &corev1.ConfigMapEnvSource{}}),
				withEnv("init", fieldRef("DD_ENTITY_ID", "metadata.uid"), fieldRef("POD_NAME", "metadata.name")),
				withEnv("app", fieldRef("POD_NAME", "metadata.name")),
				withEnv("sidecar", fieldRef("DD_ENTITY_ID", "metadata.uid"), fieldRef("POD_NAME", "metadata.name")),
				injected("dd")),
			wantChanged: true,
		},
		"podIdentity of two MagicIPs, the same name and field: injected once": {
			pod: testPod(),
			mips: []v1alpha1.MagicIP{
				newMIP("a", testAddr, 0, withInject(v1alpha1.Inject{Env: ptr.To(false), PodIdentity: identity("POD_UID", "metadata.uid")})),
				newMIP("b", testAddr2, 0, withInject(v1alpha1.Inject{Env: ptr.To(false), PodIdentity: identity("POD_UID", "metadata.uid", "POD_NAMESPACE", "metadata.namespace")})),
			},
			want: func() *corev1.Pod {
				e := envs(fieldRef("POD_UID", "metadata.uid"), fieldRef("POD_NAMESPACE", "metadata.namespace"))
				return testPod(withEnv("init", e...), withEnv("app", e...), withEnv("sidecar", e...), injected("a,b"))
			}(),
			wantChanged: true,
		},
		"hostAliases: a new entry after the user's": {
			pod:         testPod(withAliases(corev1.HostAlias{IP: "10.0.0.1", Hostnames: []string{"db.local"}})),
			mips:        []v1alpha1.MagicIP{newMIP("apm", testAddr, 0, apmOnly)},
			want:        testPod(withAliases(corev1.HostAlias{IP: "10.0.0.1", Hostnames: []string{"db.local"}}, corev1.HostAlias{IP: testAddr, Hostnames: []string{"apm.local"}}), injected("apm")),
			wantChanged: true,
		},
		"hostAliases: merged into the user's entry for the same IP": {
			pod:         testPod(withAliases(corev1.HostAlias{IP: "10.0.0.1", Hostnames: []string{"db.local"}}, corev1.HostAlias{IP: testAddr, Hostnames: []string{"mine.local"}})),
			mips:        []v1alpha1.MagicIP{newMIP("apm", testAddr, 0, apmOnly)},
			want:        testPod(withAliases(corev1.HostAlias{IP: "10.0.0.1", Hostnames: []string{"db.local"}}, corev1.HostAlias{IP: testAddr, Hostnames: []string{"mine.local", "apm.local"}}), injected("apm")),
			wantChanged: true,
		},
		"hostAliases: a hostname the user maps to another IP is left alone": {
			pod:         testPod(withAliases(corev1.HostAlias{IP: "10.9.9.9", Hostnames: []string{"x.local", "apm.local"}})),
			mips:        []v1alpha1.MagicIP{newMIP("apm", testAddr, 0, apmOnly)},
			want:        testPod(withAliases(corev1.HostAlias{IP: "10.9.9.9", Hostnames: []string{"x.local", "apm.local"}}), injected("apm")),
			wantChanged: true,
		},
		"hostAliases: only the hostnames not mapped yet are added": {
			pod: testPod(withAliases(corev1.HostAlias{IP: "10.9.9.9", Hostnames: []string{"b.local"}})),
			mips: []v1alpha1.MagicIP{newMIP("apm", testAddr, 0,
				withInject(v1alpha1.Inject{Env: ptr.To(false), Hostnames: []string{"a.local", "b.local", "c.local"}}))},
			want: testPod(withAliases(
				corev1.HostAlias{IP: "10.9.9.9", Hostnames: []string{"b.local"}},
				corev1.HostAlias{IP: testAddr, Hostnames: []string{"a.local", "c.local"}},
			), injected("apm")),
			wantChanged: true,
		},
		"injected annotation: names sorted": {
			pod: testPod(),
			mips: []v1alpha1.MagicIP{
				newMIP("zz", testAddr, 0, withInject(v1alpha1.Inject{Env: ptr.To(false)})),
				newMIP("aa", testAddr2, 0, withInject(v1alpha1.Inject{Env: ptr.To(false)})),
			},
			want:        testPod(injected("aa,zz")),
			wantChanged: true,
		},
		"injected annotation: merged with an existing one, sorted, other annotations kept": {
			pod:         testPod(injected("zz,bb"), withAnnotation("team", "web")),
			mips:        []v1alpha1.MagicIP{newMIP("dd", testAddr, 0, withInject(v1alpha1.Inject{Env: ptr.To(false)}))},
			want:        testPod(injected("bb,dd,zz"), withAnnotation("team", "web")),
			wantChanged: true,
		},
		"already injected (reinvocation): nothing changes": {
			pod: testPod(withEnv("init", ddEnv...), withEnv("app", ddEnv...), withEnv("sidecar", ddEnv...),
				withAliases(ddAlias), injected("dd")),
			mips: []v1alpha1.MagicIP{ddMIP()},
			want: testPod(withEnv("init", ddEnv...), withEnv("app", ddEnv...), withEnv("sidecar", ddEnv...),
				withAliases(ddAlias), injected("dd")),
		},
		"pod without init containers": {
			pod:         testPod(func(p *corev1.Pod) { p.Spec.InitContainers = nil }),
			mips:        []v1alpha1.MagicIP{ddMIP()},
			want:        testPod(func(p *corev1.Pod) { p.Spec.InitContainers = nil }, withEnv("app", ddEnv...), withEnv("sidecar", ddEnv...), withAliases(ddAlias), injected("dd")),
			wantChanged: true,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			// The endpoints are shared by concurrent requests: Mutate must not write into them.
			eps, epsBefore := endpoints(tc.mips), endpoints(tc.mips)
			pod := tc.pod.DeepCopy()
			if got := mutate(pod, eps); got != tc.wantChanged {
				t.Errorf("Mutate() = %v, want %v", got, tc.wantChanged)
			}
			if !equality.Semantic.DeepEqual(pod, tc.want) {
				t.Errorf("Mutate():\ngot  %s\nwant %s", toJSON(pod), toJSON(tc.want))
			}
			if !equality.Semantic.DeepEqual(eps, epsBefore) {
				t.Errorf("Mutate changed its endpoints argument")
			}

			// Idempotence: a second call (webhook reinvocation) changes nothing.
			again := pod.DeepCopy()
			if mutate(again, eps) {
				t.Errorf("second Mutate() = true, want false")
			}
			if !equality.Semantic.DeepEqual(again, pod) {
				t.Errorf("second Mutate changed the pod:\ngot  %s\nwant %s", toJSON(again), toJSON(pod))
			}
			// Nor may the pod share memory with the endpoints.
			for _, c := range append(pod.Spec.InitContainers, pod.Spec.Containers...) {
				for i := range c.Env {
					c.Env[i].Name += "!"
					if c.Env[i].ValueFrom != nil && c.Env[i].ValueFrom.FieldRef != nil {
						c.Env[i].ValueFrom.FieldRef.FieldPath += "!"
					}
				}
			}
			for _, a := range pod.Spec.HostAliases {
				for i := range a.Hostnames {
					a.Hostnames[i] += "!"
				}
			}
			if !equality.Semantic.DeepEqual(eps, epsBefore) {
				t.Errorf("the mutated pod shares memory with the endpoints: a later change of the pod changes what other pods get")
			}
		})
	}
}

func TestMutateNilAnnotations(t *testing.T) {
	pod := testPod()
	pod.Annotations = nil
	if !mutate(pod, endpoints([]v1alpha1.MagicIP{ddMIP()})) {
		t.Fatal("Mutate() = false, want true")
	}
	if got := pod.Annotations[InjectedAnnotation]; got != "dd" {
		t.Errorf("annotation %s = %q, want %q", InjectedAnnotation, got, "dd")
	}
}

// endpoints is what each of mips injects, as they are (no claims resolved).
func endpoints(mips []v1alpha1.MagicIP) []Endpoint {
	out := make([]Endpoint, len(mips))
	for i, m := range mips {
		out[i] = EndpointOf(m)
	}
	return out
}

func TestCatalog(t *testing.T) {
	other := func(name, addr string, age int, mods ...func(*v1alpha1.MagicIP)) v1alpha1.MagicIP {
		return newMIP(name, addr, age, mods...)
	}
	terminating := func(m *v1alpha1.MagicIP) {
		now := metav1.NewTime(testEpoch.Add(time.Hour))
		m.DeletionTimestamp = &now
	}
	abc := []v1alpha1.MagicIP{
		other("c", "169.254.0.3", 0), other("a", "169.254.0.1", 0), other("b", "169.254.0.2", 0),
	}
	tests := map[string]struct {
		select_ *string
		mips    []v1alpha1.MagicIP
		want    []string
	}{
		"none":                {},
		"all, sorted by name": {mips: abc, want: []string{"a", "b", "c"}},
		"conflict: the younger loses, whatever the names": {
			mips: []v1alpha1.MagicIP{other("aa-young", testAddr, 5), other("zz-old", testAddr, 0), other("b", testAddr2, 9)},
			want: []string{"b", "zz-old"},
		},
		"same address and port on another protocol is no conflict": {
			mips: []v1alpha1.MagicIP{
				other("tcp", testAddr, 0),
				other("udp", testAddr, 5, withPorts(v1alpha1.MagicIPPort{Name: "apm", Port: 8126, Protocol: v1alpha1.ProtocolUDP})),
			},
			want: []string{"tcp", "udp"},
		},
		"Accepted=False for the current generation: excluded": {
			mips: []v1alpha1.MagicIP{other("a", testAddr, 0, withAccepted(metav1.ConditionFalse, 2, 2)), other("b", testAddr2, 0)},
			want: []string{"b"},
		},
		"Accepted=False for an older generation: still included": {
			mips: []v1alpha1.MagicIP{other("a", testAddr, 0, withAccepted(metav1.ConditionFalse, 3, 2)), other("b", testAddr2, 0)},
			want: []string{"a", "b"},
		},
		"Accepted=True: included": {
			mips: []v1alpha1.MagicIP{other("a", testAddr, 0, withAccepted(metav1.ConditionTrue, 2, 2))},
			want: []string{"a"},
		},
		"terminating or unparsable address: excluded": {
			mips: []v1alpha1.MagicIP{other("a", testAddr, 0, terminating), other("b", "not-an-ip", 0), other("c", testAddr2, 0)},
			want: []string{"c"},
		},
		"IPv6 alone: excluded, whatever its status (agents do not program it)": {
			mips: []v1alpha1.MagicIP{other("v6", "fd00::10", 0), other("v6-accepted", "fe80::a9fe:d2d2", 0, withAccepted(metav1.ConditionTrue, 1, 1)), other("b", testAddr2, 0)},
			want: []string{"b"},
		},
		"IPv4-mapped IPv6 is IPv4: included": {
			mips: []v1alpha1.MagicIP{other("mapped", "::ffff:169.254.0.9", 0)},
			want: []string{"mapped"},
		},
		"select does not bring back an IPv6 MagicIP": {
			select_: ptr.To("v6"), mips: []v1alpha1.MagicIP{other("v6", "fd00::10", 0)}, want: nil,
		},
		"select with spaces narrows": {select_: ptr.To(" a,  c "), mips: abc, want: []string{"a", "c"}},
		"select names one":           {select_: ptr.To("b"), mips: abc, want: []string{"b"}},
		"select: unknown names ignored": {
			select_: ptr.To("nope, b,zz"), mips: abc, want: []string{"b"},
		},
		"select: empty items ignored":               {select_: ptr.To(",b,,"), mips: abc, want: []string{"b"}},
		"select: present but empty selects nothing": {select_: ptr.To(" "), mips: abc, want: nil},
		"select: only unknown names gives nothing": {
			select_: ptr.To("nope"), mips: abc, want: nil,
		},
		"select does not bring back a conflict loser": {
			select_: ptr.To("young"),
			mips:    []v1alpha1.MagicIP{other("young", testAddr, 5), other("old", testAddr, 0)},
			want:    nil,
		},
		"select names are exact": {select_: ptr.To("A,b-"), mips: abc, want: nil},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			pod := testPod()
			if tc.select_ != nil {
				withAnnotation(SelectAnnotation, *tc.select_)(pod)
			}
			var got []string
			for _, m := range NewCatalog(tc.mips).For(pod.Annotations) {
				got = append(got, m.Name)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("NewCatalog().For() = %q, want %q", got, tc.want)
			}
		})
	}
}

// viewOf is p as the webhook decodes it (Pod), sharing p's lists and map.
func viewOf(p *corev1.Pod) *Pod {
	v := &Pod{PodMeta: PodMeta{Name: p.Name, GenerateName: p.GenerateName, Annotations: p.Annotations}}
	v.Spec.HostAliases = p.Spec.HostAliases
	for _, c := range p.Spec.InitContainers {
		v.Spec.InitContainers = append(v.Spec.InitContainers, Container{Name: c.Name, Env: c.Env, EnvFrom: c.EnvFrom})
	}
	for _, c := range p.Spec.Containers {
		v.Spec.Containers = append(v.Spec.Containers, Container{Name: c.Name, Env: c.Env, EnvFrom: c.EnvFrom})
	}
	return v
}

// mutate runs Mutate on the part of p the webhook decodes and writes the result back into p.
func mutate(p *corev1.Pod, eps []Endpoint) bool {
	v := viewOf(p)
	changed := Mutate(v, eps)
	p.Annotations, p.Spec.HostAliases = v.Annotations, v.Spec.HostAliases
	for i := range p.Spec.InitContainers {
		p.Spec.InitContainers[i].Env = v.Spec.InitContainers[i].Env
	}
	for i := range p.Spec.Containers {
		p.Spec.Containers[i].Env = v.Spec.Containers[i].Env
	}
	return changed
}

func TestEnvFromMaySet(t *testing.T) {
	cm := func(prefix string) corev1.EnvFromSource {
		return corev1.EnvFromSource{Prefix: prefix, ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cm" + prefix}}}
	}
	tests := map[string]struct {
		sources []corev1.EnvFromSource
		name    string
		want    string // the ConfigMap's name, "" for none
	}{
		"no envFrom":                     {name: "DD_AGENT_HOST"},
		"no prefix: any name":            {sources: []corev1.EnvFromSource{cm("")}, name: "DD_AGENT_HOST", want: "cm"},
		"a prefix that starts the name":  {sources: []corev1.EnvFromSource{cm("DD_")}, name: "DD_AGENT_HOST", want: "cmDD_"},
		"the prefix is the whole name":   {sources: []corev1.EnvFromSource{cm("DD_AGENT_HOST")}, name: "DD_AGENT_HOST", want: "cmDD_AGENT_HOST"},
		"another prefix":                 {sources: []corev1.EnvFromSource{cm("APP_")}, name: "DD_AGENT_HOST"},
		"prefixes are case-sensitive":    {sources: []corev1.EnvFromSource{cm("dd_")}, name: "DD_AGENT_HOST"},
		"a prefix longer than the name":  {sources: []corev1.EnvFromSource{cm("DD_AGENT_HOST_")}, name: "DD_AGENT_HOST"},
		"the first source that may":      {sources: []corev1.EnvFromSource{cm("APP_"), cm("DD"), cm("")}, name: "DD_AGENT_HOST", want: "cmDD"},
		"a Secret counts as a ConfigMap": {sources: []corev1.EnvFromSource{{SecretRef: &corev1.SecretEnvSource{}}}, name: "X", want: "secret"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := ""
			if src := EnvFromMaySet(tc.sources, tc.name); src != nil {
				got = "secret"
				if src.ConfigMapRef != nil {
					got = src.ConfigMapRef.Name
				}
			}
			if got != tc.want {
				t.Errorf("EnvFromMaySet(%s) = %q, want %q", tc.name, got, tc.want)
			}
		})
	}
}
