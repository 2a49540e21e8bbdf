package agent

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/magic-ip/magic-ip/agent/kube"
	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

func withWhenNoLocal(a v1alpha1.NoLocalProducerAction) func(*v1alpha1.MagicIP) {
	return func(m *v1alpha1.MagicIP) { m.Spec.WhenNoLocalProducer = a }
}

func onNode(node string) func(*corev1.Pod) {
	return func(p *corev1.Pod) { p.Spec.NodeName = node }
}

// rep is the endpoint of a producer on another node, used by a Fallback MagicIP.
func rep(pod, addrPort, node string) Endpoint {
	e := ep(pod, addrPort)
	e.Node = node
	return e
}

// TestDesiredFallback: a Fallback MagicIP sends new connections to the Ready producers of other
// nodes only while this node has no usable one (none Ready, no terminating one still serving),
// and asks for the remote watch whenever it has no Ready, non-terminating one.
func TestDesiredFallback(t *testing.T) {
	now := metav1.NewTime(testEpoch)
	notReady := func(p *corev1.Pod) { p.Status.Conditions[0].Status = corev1.ConditionFalse }
	remoteB := readyPod("rb", []string{"10.244.2.5"}, onNode("node-b"))
	remoteC := readyPod("rc", []string{"10.244.3.5"}, onNode("node-c"))
	tests := map[string]struct {
		action     v1alpha1.NoLocalProducerAction
		pods       []corev1.Pod
		want       []Endpoint
		wantRemote bool
	}{
		"Fallback, no local producer: every Ready remote one, sorted by IP": {
			action: v1alpha1.Fallback, pods: []corev1.Pod{remoteC, remoteB},
			want:       []Endpoint{rep("rb", "10.244.2.5:8126", "node-b"), rep("rc", "10.244.3.5:8126", "node-c")},
			wantRemote: true,
		},
		"Fallback, local Ready: only the local one, no remote watch": {
			action: v1alpha1.Fallback, pods: []corev1.Pod{remoteB, readyPod("a", []string{"10.244.1.5"})},
			want: []Endpoint{ep("a", "10.244.1.5:8126")},
		},
		"Fallback, local only terminating but serving: the Ready remote ones first": {
			action: v1alpha1.Fallback, pods: []corev1.Pod{remoteB, readyPod("a", []string{"10.244.1.5"}, terminating(now))},
			want: []Endpoint{rep("rb", "10.244.2.5:8126", "node-b")}, wantRemote: true,
		},
		"Fallback, local only terminating but serving, no remote one (yet): the terminating one": {
			action: v1alpha1.Fallback, pods: []corev1.Pod{readyPod("a", []string{"10.244.1.5"}, terminating(now))},
			want: []Endpoint{tep("a", "10.244.1.5:8126")}, wantRemote: true,
		},
		"Fallback, local NotReady: remote": {
			action: v1alpha1.Fallback, pods: []corev1.Pod{remoteB, readyPod("a", []string{"10.244.1.5"}, notReady)},
			want: []Endpoint{rep("rb", "10.244.2.5:8126", "node-b")}, wantRemote: true,
		},
		"Fallback: remote ones NotReady, terminating or unscheduled are not used": {
			action: v1alpha1.Fallback, pods: []corev1.Pod{
				readyPod("x", []string{"10.244.2.6"}, onNode("node-b"), notReady),
				readyPod("y", []string{"10.244.2.7"}, onNode("node-b"), terminating(now)),
				readyPod("z", []string{"10.244.2.8"}, onNode("")),
			},
			wantRemote: true,
		},
		"Fallback, remote ones of another selector are not used": {
			action: v1alpha1.Fallback, pods: []corev1.Pod{readyPod("o", []string{"10.244.2.9"}, onNode("node-b"), withLabels(map[string]string{"app": "other"}))},
			wantRemote: true,
		},
		"Reject: remote producers are never used nor watched": {
			action: v1alpha1.Reject, pods: []corev1.Pod{remoteB},
		},
		"Drop: remote producers are never used nor watched": {
			action: v1alpha1.Drop, pods: []corev1.Pod{remoteB},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			m := newMagicIP("datadog", testAddr, 0, withWhenNoLocal(tc.action))
			st := Desired([]v1alpha1.MagicIP{m}, tc.pods, testNode, testIface)
			if got := endpointsOf(t, st); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("endpoints:\n got %v\nwant %v", got, tc.want)
			}
			if got := len(st.Remote) == 1 && st.Remote[0].Name == m.Name; got != tc.wantRemote || len(st.Remote) > 1 {
				t.Errorf("remote watch wanted for %v, want it %v", st.Remote, tc.wantRemote)
			}
		})
	}
}

// TestRenderFallback: remote producers get DNAT rules spread evenly, a comment naming their node,
// no SNAT of any kind (the producer sees the consumer's address) and no hairpin rule (they never
// send from this node); traffic that is not redirected is refused as with Reject.
func TestRenderFallback(t *testing.T) {
	m := newMagicIP("datadog", testAddr, 0, withWhenNoLocal(v1alpha1.Fallback))
	pods := []corev1.Pod{
		readyPod("rb", []string{"10.244.2.5"}, onNode("node-b")),
		readyPod("rc", []string{"10.244.3.5"}, onNode("node-c")),
	}
	st := Desired([]v1alpha1.MagicIP{m}, pods, testNode, testIface)
	rs := Render(st, nil)
	svc := st.Services[0]
	wantDNAT := []string{
		fmt.Sprintf(`-p tcp -m comment --comment "%s -> datadog/rb (fallback to node node-b)" -m statistic --mode random --probability 0.50000000000 -j DNAT --to-destination 10.244.2.5:8126`, svc.Key()),
		fmt.Sprintf(`-p tcp -m comment --comment "%s -> datadog/rc (fallback to node node-c)" -j DNAT --to-destination 10.244.3.5:8126`, svc.Key()),
	}
	if got := rs.Chains["nat"][svcChain(svc)]; !slices.Equal(got, wantDNAT) {
		t.Errorf("service chain:\n got %q\nwant %q", got, wantDNAT)
	}
	if hp := rs.Chains["nat"][chainHairpin]; len(hp) != 0 {
		t.Errorf("hairpin rules for remote producers: %q", hp)
	}
	for _, r := range rs.Chains["nat"][chainPost] {
		if strings.Contains(r, "10.244.2.5") || strings.Contains(r, "10.244.3.5") {
			t.Errorf("POSTROUTING rule names a remote producer: %s", r)
		}
	}
	wantVerdict := `-d 169.254.210.210/32 -p tcp -m tcp --dport 8126 -m conntrack --ctstate NEW -m comment --comment "datadog:apm: not redirected" -j REJECT --reject-with tcp-reset`
	if !slices.Contains(rs.Chains["filter"][chainInput], wantVerdict) {
		t.Errorf("filter rules %q lack %q", rs.Chains["filter"][chainInput], wantVerdict)
	}
}

// TestProducerListOptions: a remote watch lists only the selector's pods on other nodes.
func TestProducerListOptions(t *testing.T) {
	var o metav1.ListOptions
	kube.ProducerListOptions("app=dd,tier in (a,b)", "node-a")(&o)
	if o.LabelSelector != "app=dd,tier in (a,b)" || o.FieldSelector != "spec.nodeName!=node-a" {
		t.Errorf("list options %+v", o)
	}
}
