package agent

import (
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

const (
	testNode      = "node-a"
	testIface     = "magic0"
	testNamespace = "datadog"
	testAddr      = "169.254.210.210"
)

var testEpoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// newMagicIP is a MagicIP created age minutes after testEpoch, serving 8126/TCP ("apm") at addr
// from the pods labelled app=agent in the datadog namespace.
func newMagicIP(name, addr string, age int, mods ...func(*v1alpha1.MagicIP)) v1alpha1.MagicIP {
	m := v1alpha1.MagicIP{
		ObjectMeta: metav1.ObjectMeta{Name: name, CreationTimestamp: metav1.NewTime(testEpoch.Add(time.Duration(age) * time.Minute))},
		Spec: v1alpha1.MagicIPSpec{
			Address: addr,
			Ports:   []v1alpha1.MagicIPPort{{Name: "apm", Port: 8126}},
			Producer: v1alpha1.Producer{
				Namespace: testNamespace,
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

func withInterface(ifname string) func(*v1alpha1.MagicIP) {
	return func(m *v1alpha1.MagicIP) { m.Spec.HostInterface = ifname }
}

func withSelector(sel v1alpha1.LabelSelector) func(*v1alpha1.MagicIP) {
	return func(m *v1alpha1.MagicIP) { m.Spec.Producer.Selector = sel }
}

// readyPod is a Running, Ready pod labelled app=agent in the datadog namespace on testNode.
// ips are its status.podIPs (the first one is also status.podIP).
func readyPod(name string, ips []string, mods ...func(*corev1.Pod)) corev1.Pod {
	p := corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNamespace, Labels: map[string]string{"app": "agent"}},
		Spec:       corev1.PodSpec{NodeName: testNode},
		Status: corev1.PodStatus{
			Phase:      corev1.PodRunning,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
		},
	}
	for i, ip := range ips {
		if i == 0 {
			p.Status.PodIP = ip
		}
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	for _, mod := range mods {
		mod(&p)
	}
	return p
}

func withLabels(l map[string]string) func(*corev1.Pod) {
	return func(p *corev1.Pod) { p.Labels = l }
}

func ep(pod, addrPort string) Endpoint {
	return Endpoint{Pod: testNamespace + "/" + pod, Addr: netip.MustParseAddrPort(addrPort)}
}

// tep is a terminating (still serving) producer's endpoint.
func tep(pod, addrPort string) Endpoint {
	e := ep(pod, addrPort)
	e.Terminating = true
	return e
}

func terminating(at metav1.Time) func(*corev1.Pod) {
	return func(p *corev1.Pod) { p.DeletionTimestamp = &at }
}

// endpointsOf returns the endpoints of the only service of st, failing when there is not exactly one.
func endpointsOf(t *testing.T, st State) []Endpoint {
	t.Helper()
	if len(st.Services) != 1 {
		t.Fatalf("want 1 service, got %d: %+v (invalid: %v)", len(st.Services), st.Services, st.Invalid)
	}
	return st.Services[0].Endpoints
}

func TestDesiredProducers(t *testing.T) {
	now := metav1.NewTime(testEpoch)
	tests := map[string]struct {
		pods []corev1.Pod
		want []Endpoint
	}{
		"ready producer": {
			pods: []corev1.Pod{readyPod("a", []string{"10.244.1.5"})},
			want: []Endpoint{ep("a", "10.244.1.5:8126")},
		},
		"wrong namespace": {
			pods: []corev1.Pod{readyPod("a", []string{"10.244.1.5"}, func(p *corev1.Pod) { p.Namespace = "default" })},
		},
		"wrong labels": {
			pods: []corev1.Pod{readyPod("a", []string{"10.244.1.5"}, withLabels(map[string]string{"app": "other"}))},
		},
		"no labels": {
			pods: []corev1.Pod{readyPod("a", []string{"10.244.1.5"}, withLabels(nil))},
		},
		"not ready": {
			pods: []corev1.Pod{readyPod("a", []string{"10.244.1.5"}, func(p *corev1.Pod) {
				p.Status.Conditions[0].Status = corev1.ConditionFalse
			})},
		},
		"no ready condition": {
			pods: []corev1.Pod{readyPod("a", []string{"10.244.1.5"}, func(p *corev1.Pod) {
				p.Status.Conditions = []corev1.PodCondition{{Type: corev1.ContainersReady, Status: corev1.ConditionTrue}}
			})},
		},
		"ready but phase pending": {
			pods: []corev1.Pod{readyPod("a", []string{"10.244.1.5"}, func(p *corev1.Pod) { p.Status.Phase = corev1.PodPending })},
		},
		"ready but phase succeeded": {
			pods: []corev1.Pod{readyPod("a", []string{"10.244.1.5"}, func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded })},
		},
		"terminating and still Ready: the only producer keeps serving": {
			pods: []corev1.Pod{readyPod("a", []string{"10.244.1.5"}, terminating(now))},
			want: []Endpoint{tep("a", "10.244.1.5:8126")},
		},
		"terminating and no longer Ready": {
			pods: []corev1.Pod{readyPod("a", []string{"10.244.1.5"}, terminating(now), func(p *corev1.Pod) {
				p.Status.Conditions[0].Status = corev1.ConditionFalse
			})},
		},
		"terminating ones only while no Ready one: all of them, sorted by IP": {
			pods: []corev1.Pod{
				readyPod("b", []string{"10.244.1.7"}, terminating(now)),
				readyPod("not-ready", []string{"10.244.1.8"}, func(p *corev1.Pod) { p.Status.Conditions[0].Status = corev1.ConditionFalse }),
				readyPod("a", []string{"10.244.1.6"}, terminating(now)),
			},
			want: []Endpoint{tep("a", "10.244.1.6:8126"), tep("b", "10.244.1.7:8126")},
		},
		"a Ready replacement takes over from a terminating producer": {
			pods: []corev1.Pod{
				readyPod("old", []string{"10.244.1.5"}, terminating(now)),
				readyPod("new", []string{"10.244.1.6"}),
			},
			want: []Endpoint{ep("new", "10.244.1.6:8126")},
		},
		"a terminating producer on another node does not count": {
			pods: []corev1.Pod{readyPod("a", []string{"10.244.2.5"}, terminating(now), func(p *corev1.Pod) { p.Spec.NodeName = "node-b" })},
		},
		"no IP yet": {
			pods: []corev1.Pod{readyPod("a", nil)},
		},
		"unparsable IP": {
			pods: []corev1.Pod{readyPod("a", []string{"not-an-ip"})},
		},
		"on another node": {
			pods: []corev1.Pod{readyPod("a", []string{"10.244.2.5"}, func(p *corev1.Pod) { p.Spec.NodeName = "node-b" })},
		},
		"not scheduled": {
			pods: []corev1.Pod{readyPod("a", []string{"10.244.2.5"}, func(p *corev1.Pod) { p.Spec.NodeName = "" })},
		},
		"only the good one of a mix": {
			pods: []corev1.Pod{
				readyPod("elsewhere", []string{"10.244.2.5"}, func(p *corev1.Pod) { p.Spec.NodeName = "node-b" }),
				readyPod("good", []string{"10.244.1.9"}),
				readyPod("dying", []string{"10.244.1.3"}, func(p *corev1.Pod) { p.DeletionTimestamp = &now }),
			},
			want: []Endpoint{ep("good", "10.244.1.9:8126")},
		},
		"several ready producers sorted by IP, numerically": {
			pods: []corev1.Pod{
				readyPod("c", []string{"10.244.1.30"}),
				readyPod("a", []string{"10.244.1.100"}),
				readyPod("b", []string{"10.244.1.4"}),
			},
			want: []Endpoint{ep("b", "10.244.1.4:8126"), ep("c", "10.244.1.30:8126"), ep("a", "10.244.1.100:8126")},
		},
		"dual-stack pod with IPv6 first gives its IPv4 to an IPv4 address": {
			pods: []corev1.Pod{readyPod("a", []string{"fd00:10:244::5", "10.244.1.5"})},
			want: []Endpoint{ep("a", "10.244.1.5:8126")},
		},
		"IPv4-mapped pod IP is unmapped": {
			pods: []corev1.Pod{readyPod("a", []string{"::ffff:10.244.1.5"})},
			want: []Endpoint{ep("a", "10.244.1.5:8126")},
		},
		"IPv6-only pod is skipped for an IPv4 address": {
			pods: []corev1.Pod{readyPod("a", []string{"fd00:10:244::5"})},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			st := Desired([]v1alpha1.MagicIP{newMagicIP("datadog", testAddr, 0)}, tc.pods, testNode, testIface)
			if got := endpointsOf(t, st); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("endpoints:\n got %v\nwant %v", got, tc.want)
			}
		})
	}
}

func TestDesiredSelector(t *testing.T) {
	expr := func(key string, op metav1.LabelSelectorOperator, values ...string) v1alpha1.LabelSelectorRequirement {
		return v1alpha1.LabelSelectorRequirement{Key: key, Operator: op, Values: values}
	}
	// One pod per label set; the want lists name the pods selected.
	pods := []corev1.Pod{
		readyPod("tier-a", []string{"10.244.1.1"}, withLabels(map[string]string{"app": "agent", "tier": "a"})),
		readyPod("tier-b", []string{"10.244.1.2"}, withLabels(map[string]string{"app": "agent", "tier": "b"})),
		readyPod("tier-c", []string{"10.244.1.3"}, withLabels(map[string]string{"app": "agent", "tier": "c"})),
		readyPod("no-tier", []string{"10.244.1.4"}, withLabels(map[string]string{"app": "agent"})),
		readyPod("other-app", []string{"10.244.1.5"}, withLabels(map[string]string{"app": "other", "tier": "a"})),
	}
	tests := map[string]struct {
		sel  v1alpha1.LabelSelector
		want []string
	}{
		"matchLabels": {
			sel:  v1alpha1.LabelSelector{MatchLabels: map[string]string{"app": "agent"}},
			want: []string{"tier-a", "tier-b", "tier-c", "no-tier"},
		},
		"In": {
			sel:  v1alpha1.LabelSelector{MatchExpressions: []v1alpha1.LabelSelectorRequirement{expr("tier", metav1.LabelSelectorOpIn, "a", "b")}},
			want: []string{"tier-a", "tier-b", "other-app"},
		},
		"NotIn matches pods without the label too": {
			sel:  v1alpha1.LabelSelector{MatchExpressions: []v1alpha1.LabelSelectorRequirement{expr("tier", metav1.LabelSelectorOpNotIn, "a", "b")}},
			want: []string{"tier-c", "no-tier"},
		},
		"Exists": {
			sel:  v1alpha1.LabelSelector{MatchExpressions: []v1alpha1.LabelSelectorRequirement{expr("tier", metav1.LabelSelectorOpExists)}},
			want: []string{"tier-a", "tier-b", "tier-c", "other-app"},
		},
		"DoesNotExist": {
			sel:  v1alpha1.LabelSelector{MatchExpressions: []v1alpha1.LabelSelectorRequirement{expr("tier", metav1.LabelSelectorOpDoesNotExist)}},
			want: []string{"no-tier"},
		},
		"matchLabels and expressions are ANDed": {
			sel: v1alpha1.LabelSelector{
				MatchLabels:      map[string]string{"app": "agent"},
				MatchExpressions: []v1alpha1.LabelSelectorRequirement{expr("tier", metav1.LabelSelectorOpIn, "a", "c")},
			},
			want: []string{"tier-a", "tier-c"},
		},
		"several expressions are ANDed": {
			sel: v1alpha1.LabelSelector{MatchExpressions: []v1alpha1.LabelSelectorRequirement{
				expr("tier", metav1.LabelSelectorOpExists),
				expr("app", metav1.LabelSelectorOpNotIn, "other"),
			}},
			want: []string{"tier-a", "tier-b", "tier-c"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			st := Desired([]v1alpha1.MagicIP{newMagicIP("datadog", testAddr, 0, withSelector(tc.sel))}, pods, testNode, testIface)
			var got []string
			for _, e := range endpointsOf(t, st) {
				got = append(got, strings.TrimPrefix(e.Pod, testNamespace+"/"))
			}
			slices.Sort(got)
			want := slices.Sorted(slices.Values(tc.want))
			if !slices.Equal(got, want) {
				t.Errorf("selected %v, want %v", got, want)
			}
		})
	}
}

func TestDesiredServices(t *testing.T) {
	addr := netip.MustParseAddr(testAddr)
	pods := []corev1.Pod{readyPod("a", []string{"10.244.1.5"})}
	tests := map[string]struct {
		mods []func(*v1alpha1.MagicIP)
		want []Service
	}{
		"defaults: targetPort = port, TCP, Reject": {
			want: []Service{{
				MagicIP: "datadog", PortName: "apm", Address: addr, Port: 8126, Protocol: v1alpha1.ProtocolTCP, Interface: testIface,
				WhenNoProducer: v1alpha1.Reject, Endpoints: []Endpoint{ep("a", "10.244.1.5:8126")},
			}},
		},
		"targetPort is used": {
			mods: []func(*v1alpha1.MagicIP){withPorts(v1alpha1.MagicIPPort{Name: "apm", Port: 8126, TargetPort: 9126})},
			want: []Service{{
				MagicIP: "datadog", PortName: "apm", Address: addr, Port: 8126, Protocol: v1alpha1.ProtocolTCP, Interface: testIface,
				WhenNoProducer: v1alpha1.Reject, Endpoints: []Endpoint{ep("a", "10.244.1.5:9126")},
			}},
		},
		"UDP and Drop are kept": {
			mods: []func(*v1alpha1.MagicIP){
				withPorts(v1alpha1.MagicIPPort{Name: "dogstatsd", Port: 8125, Protocol: v1alpha1.ProtocolUDP}),
				func(m *v1alpha1.MagicIP) { m.Spec.WhenNoLocalProducer = v1alpha1.Drop },
			},
			want: []Service{{
				MagicIP: "datadog", PortName: "dogstatsd", Address: addr, Port: 8125, Protocol: v1alpha1.ProtocolUDP, Interface: testIface,
				WhenNoProducer: v1alpha1.Drop, Endpoints: []Endpoint{ep("a", "10.244.1.5:8125")},
			}},
		},
		"one service per port, sorted by protocol then port": {
			mods: []func(*v1alpha1.MagicIP){withPorts(
				v1alpha1.MagicIPPort{Name: "dogstatsd", Port: 8125, Protocol: v1alpha1.ProtocolUDP},
				v1alpha1.MagicIPPort{Name: "apm", Port: 8126, TargetPort: 18126},
				v1alpha1.MagicIPPort{Name: "web", Port: 80, Protocol: v1alpha1.ProtocolTCP},
			)},
			want: []Service{
				{MagicIP: "datadog", PortName: "web", Address: addr, Port: 80, Protocol: v1alpha1.ProtocolTCP, Interface: testIface, WhenNoProducer: v1alpha1.Reject, Endpoints: []Endpoint{ep("a", "10.244.1.5:80")}},
				{MagicIP: "datadog", PortName: "apm", Address: addr, Port: 8126, Protocol: v1alpha1.ProtocolTCP, Interface: testIface, WhenNoProducer: v1alpha1.Reject, Endpoints: []Endpoint{ep("a", "10.244.1.5:18126")}},
				{MagicIP: "datadog", PortName: "dogstatsd", Address: addr, Port: 8125, Protocol: v1alpha1.ProtocolUDP, Interface: testIface, WhenNoProducer: v1alpha1.Reject, Endpoints: []Endpoint{ep("a", "10.244.1.5:8125")}},
			},
		},
		"no producer keeps the service, without endpoints": {
			mods: []func(*v1alpha1.MagicIP){func(m *v1alpha1.MagicIP) { m.Spec.Producer.Namespace = "elsewhere" }},
			want: []Service{{
				MagicIP: "datadog", PortName: "apm", Address: addr, Port: 8126, Protocol: v1alpha1.ProtocolTCP, Interface: testIface, WhenNoProducer: v1alpha1.Reject,
			}},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			st := Desired([]v1alpha1.MagicIP{newMagicIP("datadog", testAddr, 0, tc.mods...)}, pods, testNode, testIface)
			if !reflect.DeepEqual(st.Services, tc.want) {
				t.Errorf("services:\n got %+v\nwant %+v", st.Services, tc.want)
			}
		})
	}
}

func TestDesiredAddresses(t *testing.T) {
	a := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	tests := map[string]struct {
		mips []v1alpha1.MagicIP
		want map[string][]netip.Addr
	}{
		"no MagicIPs": {want: map[string][]netip.Addr{}},
		"empty hostInterface uses the default": {
			mips: []v1alpha1.MagicIP{newMagicIP("m", testAddr, 0)},
			want: map[string][]netip.Addr{testIface: {a(testAddr)}},
		},
		"hostInterface is used when set": {
			mips: []v1alpha1.MagicIP{newMagicIP("m", testAddr, 0, withInterface("eth1"))},
			want: map[string][]netip.Addr{"eth1": {a(testAddr)}},
		},
		"an address shared by two MagicIPs is listed once": {
			mips: []v1alpha1.MagicIP{
				newMagicIP("apm", testAddr, 0),
				newMagicIP("statsd", testAddr, 1, withPorts(v1alpha1.MagicIPPort{Name: "statsd", Port: 8125, Protocol: v1alpha1.ProtocolUDP})),
			},
			want: map[string][]netip.Addr{testIface: {a(testAddr)}},
		},
		"addresses sorted per interface, numerically": {
			mips: []v1alpha1.MagicIP{
				newMagicIP("m1", "169.254.0.20", 0),
				newMagicIP("m2", "169.254.0.3", 1),
				newMagicIP("m3", "169.254.0.100", 2),
				newMagicIP("m4", "169.254.0.7", 3, withInterface("eth1")),
			},
			want: map[string][]netip.Addr{
				testIface: {a("169.254.0.3"), a("169.254.0.20"), a("169.254.0.100")},
				"eth1":    {a("169.254.0.7")},
			},
		},
		"IPv4-mapped address is unmapped": {
			mips: []v1alpha1.MagicIP{newMagicIP("m", "::ffff:169.254.210.210", 0)},
			want: map[string][]netip.Addr{testIface: {a(testAddr)}},
		},
		"invalid, conflicting and terminating MagicIPs add nothing": {
			mips: []v1alpha1.MagicIP{
				newMagicIP("bad", "not-an-ip", 0),
				newMagicIP("empty-selector", "169.254.0.1", 0, withSelector(v1alpha1.LabelSelector{})),
				newMagicIP("winner", testAddr, 0),
				newMagicIP("loser", testAddr, 1, withInterface("eth1")),
				newMagicIP("going", "169.254.0.2", 0, func(m *v1alpha1.MagicIP) {
					now := metav1.NewTime(testEpoch)
					m.DeletionTimestamp = &now
				}),
			},
			want: map[string][]netip.Addr{testIface: {a(testAddr)}},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			st := Desired(tc.mips, nil, testNode, testIface)
			if !reflect.DeepEqual(st.Addresses, tc.want) {
				t.Errorf("addresses:\n got %v\nwant %v", st.Addresses, tc.want)
			}
		})
	}
}

func TestDesiredConflicts(t *testing.T) {
	addr := netip.MustParseAddr(testAddr)
	mips := []v1alpha1.MagicIP{
		// Younger, listed first; it also serves a port nobody else claims: it must lose that too.
		newMagicIP("aaa-young", testAddr, 5, withPorts(
			v1alpha1.MagicIPPort{Name: "statsd", Port: 8125, Protocol: v1alpha1.ProtocolUDP},
			v1alpha1.MagicIPPort{Name: "apm", Port: 8126},
		)),
		newMagicIP("zzz-old", testAddr, 0),
	}
	st := Desired(mips, []corev1.Pod{readyPod("a", []string{"10.244.1.5"})}, testNode, testIface)

	for _, s := range st.Services {
		if s.MagicIP != "zzz-old" {
			t.Errorf("service %s of the losing MagicIP is served: %+v", s.Key(), s)
		}
	}
	if len(st.Services) != 1 {
		t.Errorf("want only the winner's service, got %+v", st.Services)
	}
	want := map[string]v1alpha1.Conflict{
		"aaa-young": {Claim: v1alpha1.Claim{Address: addr, Port: 8126, Protocol: v1alpha1.ProtocolTCP}, Winner: "zzz-old"},
	}
	if !reflect.DeepEqual(st.Conflicts, want) {
		t.Errorf("conflicts:\n got %+v\nwant %+v", st.Conflicts, want)
	}
	if len(st.Invalid) != 0 {
		t.Errorf("a conflict is not invalid: %v", st.Invalid)
	}
}

func TestDesiredInvalid(t *testing.T) {
	tests := map[string]struct {
		mip        v1alpha1.MagicIP
		wantReason string // substring of State.Invalid[name]
	}{
		"unparsable address": {
			mip:        newMagicIP("bad", "not-an-ip", 0),
			wantReason: `address "not-an-ip"`,
		},
		"empty address": {
			mip:        newMagicIP("bad", "", 0),
			wantReason: `address ""`,
		},
		"empty selector": {
			mip:        newMagicIP("bad", testAddr, 0, withSelector(v1alpha1.LabelSelector{})),
			wantReason: "selector is empty",
		},
		"unknown operator": {
			mip: newMagicIP("bad", testAddr, 0, withSelector(v1alpha1.LabelSelector{
				MatchExpressions: []v1alpha1.LabelSelectorRequirement{{Key: "app", Operator: "Near", Values: []string{"x"}}},
			})),
			wantReason: "producer selector",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			mips := []v1alpha1.MagicIP{tc.mip, newMagicIP("good", "169.254.0.9", 1)}
			st := Desired(mips, []corev1.Pod{readyPod("a", []string{"10.244.1.5"})}, testNode, testIface)
			reason, ok := st.Invalid["bad"]
			if !ok || !strings.Contains(reason, tc.wantReason) {
				t.Errorf("Invalid[bad] = %q (present %v), want it to contain %q", reason, ok, tc.wantReason)
			}
			if _, ok := st.Invalid["good"]; ok || len(st.Invalid) != 1 {
				t.Errorf("only bad is invalid, got %v", st.Invalid)
			}
			if len(st.Services) != 1 || st.Services[0].MagicIP != "good" {
				t.Errorf("want only good served, got %+v", st.Services)
			}
			if _, ok := st.Conflicts["bad"]; ok {
				t.Errorf("an invalid MagicIP is not a conflict: %v", st.Conflicts)
			}
		})
	}
}

// An IPv6 magic address takes the IPv6 address of each producer (status.podIPs lists the
// families in any order) and skips the producers without one.
func TestProducersIPv6(t *testing.T) {
	pods := []corev1.Pod{
		readyPod("v4-only", []string{"10.244.1.4"}),
		readyPod("dual", []string{"10.244.1.5", "fd00:10:244:1::5"}),
		readyPod("v6-only", []string{"fd00:10:244:1::3"}),
	}
	set, err := producers(newMagicIP("m6", "fe80::a9fe:d2d2", 0), pods, testNode, false)
	if err != nil {
		t.Fatal(err)
	}
	got := set.serving(false)
	want := []producer{
		{pod: "datadog/v6-only", ip: netip.MustParseAddr("fd00:10:244:1::3")},
		{pod: "datadog/dual", ip: netip.MustParseAddr("fd00:10:244:1::5")},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("producers:\n got %v\nwant %v", got, want)
	}
}

// The datapath is IPv4 iptables: an IPv6 MagicIP is reported invalid and left out, and the
// IPv4 ones next to it are served as usual.
func TestDesiredIPv6Reported(t *testing.T) {
	const addr6 = "fe80::a9fe:d2d2"
	pods := []corev1.Pod{readyPod("dual", []string{"10.244.1.5", "fd00:10:244:1::5"})}
	mips := []v1alpha1.MagicIP{newMagicIP("m6", addr6, 0), newMagicIP("m4", testAddr, 1)}
	st := Desired(mips, pods, testNode, testIface)
	if reason := st.Invalid["m6"]; !strings.Contains(reason, addr6) || !strings.Contains(reason, "IPv6") {
		t.Errorf("Invalid[m6] = %q, want the address and IPv6 named", reason)
	}
	if len(st.Invalid) != 1 || len(st.Conflicts) != 0 {
		t.Errorf("only m6 is invalid and nothing conflicts: invalid %v, conflicts %v", st.Invalid, st.Conflicts)
	}
	if got := endpointsOf(t, st); st.Services[0].MagicIP != "m4" || !reflect.DeepEqual(got, []Endpoint{ep("dual", "10.244.1.5:8126")}) {
		t.Errorf("want only m4 served, by dual's IPv4: %+v", st.Services)
	}
	if want := map[string][]netip.Addr{testIface: {netip.MustParseAddr(testAddr)}}; !reflect.DeepEqual(st.Addresses, want) {
		t.Errorf("addresses: got %v, want %v", st.Addresses, want)
	}
}

// A dual-stack MagicIP is served on both addresses: its IPv4 address as an IPv4 MagicIP is (same
// services), its IPv6 address by the producers' IPv6 addresses (status.podIPs), on the same
// interface; nothing is reported left out, and a producer without IPv6 serves IPv4 only.
func TestDesiredDualStack(t *testing.T) {
	const addr6 = "fd00::a9fe:d2d2"
	pods := []corev1.Pod{readyPod("dual", []string{"10.244.1.5", "fd00:10:244:1::5"}), readyPod("v4-only", []string{"10.244.1.6"})}
	dual := newMagicIP("m", testAddr, 0, func(m *v1alpha1.MagicIP) { m.Spec.IPv6Address = addr6 })
	got := Desired([]v1alpha1.MagicIP{dual}, pods, testNode, testIface)
	v4 := Desired([]v1alpha1.MagicIP{newMagicIP("m", testAddr, 0)}, pods, testNode, testIface)
	if n := len(v4.Services); len(got.Services) != 2*n || !reflect.DeepEqual(got.Services[:n], v4.Services) {
		t.Fatalf("dual-stack MagicIP: services %+v, want its IPv4 part as %+v, then as many IPv6 ones", got.Services, v4.Services)
	}
	for _, s := range got.Services[len(v4.Services):] {
		want := []Endpoint{ep("dual", "[fd00:10:244:1::5]:8126")}
		if s.Address != netip.MustParseAddr(addr6) || !reflect.DeepEqual(s.Endpoints, want) || s.Interface != testIface {
			t.Errorf("IPv6 service %+v: want address %s on %s, endpoints %+v", s, addr6, testIface, want)
		}
	}
	if want := map[string][]netip.Addr{testIface: {netip.MustParseAddr(testAddr), netip.MustParseAddr(addr6)}}; !reflect.DeepEqual(got.Addresses, want) {
		t.Errorf("addresses: got %v, want %v", got.Addresses, want)
	}
	if len(got.Invalid)+len(got.Conflicts)+len(got.Unprogrammed) != 0 {
		t.Errorf("dual-stack MagicIP invalid %v, conflicts %v, unprogrammed %v, want none", got.Invalid, got.Conflicts, got.Unprogrammed)
	}
}

// richInput exercises every branch of Desired: several addresses, interfaces, ports, conflicts,
// invalid MagicIPs and producers that are in and out.
func richInput() ([]v1alpha1.MagicIP, []corev1.Pod) {
	now := metav1.NewTime(testEpoch)
	mips := []v1alpha1.MagicIP{
		newMagicIP("datadog", testAddr, 0, withPorts(
			v1alpha1.MagicIPPort{Name: "apm", Port: 8126},
			v1alpha1.MagicIPPort{Name: "dogstatsd", Port: 8125, Protocol: v1alpha1.ProtocolUDP},
		)),
		newMagicIP("dup-same-time-b", testAddr, 0, withPorts(v1alpha1.MagicIPPort{Name: "x", Port: 9000})),
		newMagicIP("dup-same-time-a", testAddr, 0, withPorts(v1alpha1.MagicIPPort{Name: "x", Port: 9000})),
		newMagicIP("younger", testAddr, 3),
		newMagicIP("dns", "169.254.20.10", 1, withInterface("eth1"), withPorts(
			v1alpha1.MagicIPPort{Name: "dns-udp", Port: 53, Protocol: v1alpha1.ProtocolUDP},
			v1alpha1.MagicIPPort{Name: "dns-tcp", Port: 53},
		), withSelector(v1alpha1.LabelSelector{MatchLabels: map[string]string{"app": "dns"}})),
		newMagicIP("v6", "fd00::10", 2),
		newMagicIP("bad", "300.1.1.1", 0),
		newMagicIP("no-selector", "169.254.0.1", 0, withSelector(v1alpha1.LabelSelector{})),
	}
	pods := []corev1.Pod{
		readyPod("a1", []string{"10.244.1.20", "fd00:10:244:1::20"}),
		readyPod("a2", []string{"10.244.1.3"}),
		readyPod("a3", []string{"10.244.1.100"}),
		readyPod("dns1", []string{"10.244.1.53"}, withLabels(map[string]string{"app": "dns"})),
		readyPod("dns2", []string{"10.244.1.54"}, withLabels(map[string]string{"app": "dns"})),
		readyPod("remote", []string{"10.244.2.3"}, func(p *corev1.Pod) { p.Spec.NodeName = "node-b" }),
		readyPod("dying", []string{"10.244.1.9"}, func(p *corev1.Pod) { p.DeletionTimestamp = &now }),
	}
	return mips, pods
}

func TestDesiredDeterministic(t *testing.T) {
	mips, pods := richInput()
	want := Desired(mips, pods, testNode, testIface)
	if len(want.Services) != 5 || len(want.Conflicts) != 2 || len(want.Invalid) != 3 {
		t.Fatalf("reference input does not cover what it should: %d services, conflicts %v, invalid %v",
			len(want.Services), want.Conflicts, want.Invalid)
	}
	for seed := range uint64(50) {
		r := rand.New(rand.NewPCG(seed, 42))
		m, p := slices.Clone(mips), slices.Clone(pods)
		r.Shuffle(len(m), func(i, j int) { m[i], m[j] = m[j], m[i] })
		r.Shuffle(len(p), func(i, j int) { p[i], p[j] = p[j], p[i] })
		if got := Desired(m, p, testNode, testIface); !reflect.DeepEqual(got, want) {
			t.Fatalf("seed %d: shuffled input gives a different State:\n got %+v\nwant %+v", seed, got, want)
		}
	}
}

// Two producers may share an IP: host-network pods of a DaemonSet rolling out with maxSurge both
// carry the node's IP. Their order must not depend on the order the informer lists them in, or the
// rendered rules (whose comments name the pods) change from one sync to the next.
func TestDesiredDeterministicSharedPodIP(t *testing.T) {
	pods := []corev1.Pod{
		readyPod("agent-old", []string{"192.168.1.10"}),
		readyPod("agent-new", []string{"192.168.1.10"}),
	}
	mips := []v1alpha1.MagicIP{newMagicIP("datadog", testAddr, 0)}
	want := []Endpoint{ep("agent-new", "192.168.1.10:8126"), ep("agent-old", "192.168.1.10:8126")}
	for name, order := range map[string][]corev1.Pod{"listed": pods, "reversed": {pods[1], pods[0]}} {
		if got := endpointsOf(t, Desired(mips, order, testNode, testIface)); !reflect.DeepEqual(got, want) {
			t.Errorf("%s: producers sharing an IP must be ordered by pod name too:\n got %v\nwant %v", name, got, want)
		}
	}
}

// TestAddressPolicy: only addresses inside the allowed ranges are admitted, never a cloud
// metadata address; the others are reported with the reason, and Desired never programs them.
func TestAddressPolicy(t *testing.T) {
	var def Config
	def.AllowedAddressRanges = DefaultAllowedRanges()
	defaults, err := def.AddressPolicy()
	if err != nil {
		t.Fatal(err)
	}
	wide := AddressPolicy{Allowed: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}}
	tests := map[string]struct {
		policy  AddressPolicy
		addr    string
		wantWhy string // "" means admitted
	}{
		"link-local IPv4":                    {defaults, "169.254.210.210", ""},
		"IPv6 ULA (fd00::/8)":                {defaults, "fd00::10", ""},
		"IPv6 link-local":                    {defaults, "fe80::10", ""},
		"IPv4-mapped link-local":             {defaults, "::ffff:169.254.210.210", ""},
		"a ClusterIP":                        {defaults, "10.96.0.10", "address 10.96.0.10 is outside the agent's --allowed-address-ranges [169.254.0.0/16 fe80::/10 fd00::/8]: not programmed"},
		"a node IP":                          {defaults, "192.168.1.10", "outside the agent's --allowed-address-ranges"},
		"ULA outside fd00::/8":               {defaults, "fc00::10", "outside the agent's --allowed-address-ranges"},
		"cloud metadata":                     {defaults, "169.254.169.254", "address 169.254.169.254 is a cloud metadata or infrastructure address: never programmed"},
		"ECS task metadata":                  {defaults, "169.254.170.2", "cloud metadata"},
		"AWS IPv6 metadata":                  {defaults, "fd00:ec2::254", "cloud metadata"},
		"metadata even when everything else": {wide, "169.254.169.254", "cloud metadata"},
		"anything when the range allows it":  {wide, "10.96.0.10", ""},
		"an empty list allows nothing":       {AddressPolicy{}, "169.254.210.210", "outside the agent's --allowed-address-ranges []"},
		"unparsable: left to Desired":        {defaults, "not-an-ip", ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			m := newMagicIP("m", tc.addr, 0)
			ok, refused := tc.policy.Admit([]v1alpha1.MagicIP{m})
			why := refused["m"]
			if tc.wantWhy == "" && (why != "" || len(ok) != 1) {
				t.Fatalf("refused %q, want admitted", why)
			}
			if tc.wantWhy != "" && (!strings.Contains(why, tc.wantWhy) || len(ok) != 0) {
				t.Fatalf("admitted %d, reason %q; want refused with %q", len(ok), why, tc.wantWhy)
			}
		})
	}
}

// TestAddressPolicyConflicts: refused MagicIPs take no part in claims: two on the same address and
// port are both reported as refused (neither as a Conflict), and an allowed one is served.
func TestAddressPolicyConflicts(t *testing.T) {
	policy := AddressPolicy{Allowed: []netip.Prefix{netip.MustParsePrefix("169.254.0.0/16")}}
	mips := []v1alpha1.MagicIP{newMagicIP("old-metadata", "169.254.169.254", 0), newMagicIP("young", "169.254.169.254", 5)}
	ok, refused := policy.Admit(mips)
	if len(ok) != 0 || len(refused) != 2 {
		t.Fatalf("both on the metadata address must be refused: admitted %d, refused %v", len(ok), refused)
	}
	mips = []v1alpha1.MagicIP{newMagicIP("old-outside", "10.0.0.1", 0), newMagicIP("young", testAddr, 5), newMagicIP("same-port", "10.0.0.1", 9)}
	ok, refused = policy.Admit(mips)
	st := Desired(ok, nil, testNode, testIface)
	if len(st.Conflicts) != 0 || len(st.Services) != 1 || st.Services[0].MagicIP != "young" || len(refused) != 2 {
		t.Errorf("services %v, conflicts %v, refused %v; want young served, the two outside refused", st.Services, st.Conflicts, refused)
	}
}

// The ipv6Address of a dual-stack MagicIP is checked against the policy too: refused, it alone is
// left out and reported (AddressNotAllowed), and the IPv4 address is served.
func TestAddressPolicyIPv6(t *testing.T) {
	policy := AddressPolicy{Allowed: []netip.Prefix{netip.MustParsePrefix("169.254.0.0/16"), netip.MustParsePrefix("fd00:1::/32")}}
	dual := func(name, v6 string) v1alpha1.MagicIP {
		return newMagicIP(name, testAddr, 0, func(m *v1alpha1.MagicIP) { m.Spec.IPv6Address = v6 })
	}
	mips := []v1alpha1.MagicIP{dual("in", "fd00:1::10"), dual("out", "fd00:2::10"), dual("metadata", "fd00:ec2::254"), newMagicIP("v4", "169.254.20.20", 0)}
	ok, left := policy.AdmitIPv6(mips)
	if len(ok) != 4 || ok[0].Spec.IPv6Address != "fd00:1::10" || ok[1].Spec.IPv6Address != "" || ok[2].Spec.IPv6Address != "" {
		t.Errorf("admitted %+v: want all four, out's and metadata's ipv6Address dropped", ok)
	}
	if mips[1].Spec.IPv6Address != "fd00:2::10" {
		t.Error("AdmitIPv6 changed the MagicIP given")
	}
	for name, want := range map[string]string{"out": "outside the agent's --allowed-address-ranges", "metadata": "cloud metadata"} {
		if u := left[name]; len(u) != 1 || u[0].Reason != ReasonAddressNotAllowed || !strings.Contains(u[0].Message, want) {
			t.Errorf("left out of %s: %+v, want AddressNotAllowed, %q", name, u, want)
		}
	}
	if len(left) != 2 {
		t.Errorf("left out: %v, want out and metadata only", left)
	}
}
