package webhook

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

type wantCondition struct {
	status  metav1.ConditionStatus
	reason  string
	message []string // substrings
}

func checkConditions(t *testing.T, st v1alpha1.MagicIPStatus, gen int64, want map[string]wantCondition) {
	t.Helper()
	if len(st.Conditions) != len(want) {
		t.Errorf("%d conditions, want %d: %+v", len(st.Conditions), len(want), st.Conditions)
	}
	for typ, w := range want {
		c := meta.FindStatusCondition(st.Conditions, typ)
		if c == nil {
			t.Errorf("no %s condition", typ)
			continue
		}
		if c.Status != w.status || c.Reason != w.reason {
			t.Errorf("%s = %s (%s), want %s (%s)", typ, c.Status, c.Reason, w.status, w.reason)
		}
		for _, m := range w.message {
			if !strings.Contains(c.Message, m) {
				t.Errorf("%s message %q does not contain %q", typ, c.Message, m)
			}
		}
		if c.ObservedGeneration != gen {
			t.Errorf("%s observedGeneration = %d, want %d", typ, c.ObservedGeneration, gen)
		}
		if c.LastTransitionTime.IsZero() {
			t.Errorf("%s has no lastTransitionTime", typ)
		}
	}
}

func TestDesiredStatus(t *testing.T) {
	twoPorts := withPorts(
		v1alpha1.MagicIPPort{Name: "apm", Port: 8126},
		v1alpha1.MagicIPPort{Name: "dogstatsd", Port: 8125, Protocol: v1alpha1.ProtocolUDP},
	)
	gen := func(g int64) func(*v1alpha1.MagicIP) { return func(m *v1alpha1.MagicIP) { m.Generation = g } }
	tests := map[string]struct {
		mips        []v1alpha1.MagicIP // all MagicIPs; the status of the first is checked
		nsExists    bool
		wantSummary string
		want        map[string]wantCondition
	}{
		"accepted, producer namespace found": {
			mips:        []v1alpha1.MagicIP{newMIP("dd", testAddr, 0, twoPorts, gen(3))},
			nsExists:    true,
			wantSummary: "8126/TCP,8125/UDP",
			want: map[string]wantCondition{
				v1alpha1.ConditionAccepted:          {metav1.ConditionTrue, "Accepted", []string{testAddr + ":8126/TCP", testAddr + ":8125/UDP"}},
				v1alpha1.ConditionConflict:          {metav1.ConditionFalse, "NoConflict", nil},
				v1alpha1.ConditionInjectionConflict: {metav1.ConditionFalse, "NoConflict", nil},
				ConditionProducerNamespace:          {metav1.ConditionTrue, "Found", []string{"datadog"}},
			},
		},
		"accepted, producer namespace missing": {
			mips:        []v1alpha1.MagicIP{newMIP("dd", testAddr, 0, gen(2))},
			wantSummary: "8126/TCP",
			want: map[string]wantCondition{
				v1alpha1.ConditionAccepted:          {metav1.ConditionTrue, "Accepted", nil},
				v1alpha1.ConditionConflict:          {metav1.ConditionFalse, "NoConflict", nil},
				v1alpha1.ConditionInjectionConflict: {metav1.ConditionFalse, "NoConflict", nil},
				ConditionProducerNamespace:          {metav1.ConditionFalse, "NamespaceNotFound", []string{`"datadog"`}},
			},
		},
		"conflict: the younger is not accepted, the message names the winner and the claim": {
			mips: []v1alpha1.MagicIP{
				newMIP("aa-young", testAddr, 5, twoPorts, gen(4)),
				newMIP("zz-old", testAddr, 0, withPorts(v1alpha1.MagicIPPort{Name: "x", Port: 8125, Protocol: v1alpha1.ProtocolUDP})),
			},
			nsExists:    true,
			wantSummary: "8126/TCP,8125/UDP",
			want: map[string]wantCondition{
				v1alpha1.ConditionAccepted:          {metav1.ConditionFalse, "Conflict", []string{"zz-old", testAddr + ":8125/UDP"}},
				v1alpha1.ConditionConflict:          {metav1.ConditionTrue, "ClaimTaken", []string{"zz-old", testAddr + ":8125/UDP"}},
				v1alpha1.ConditionInjectionConflict: {metav1.ConditionFalse, "NotInjected", nil},
				ConditionProducerNamespace:          {metav1.ConditionTrue, "Found", nil},
			},
		},
		"IPv6 alone: not accepted, the agents do not program it (as they report it Invalid)": {
			mips:        []v1alpha1.MagicIP{newMIP("v6", "fd00::10", 0, gen(2))},
			nsExists:    true,
			wantSummary: "8126/TCP",
			want: map[string]wantCondition{
				v1alpha1.ConditionAccepted: {metav1.ConditionFalse, v1alpha1.ReasonAddressFamilyNotSupported,
					[]string{"address fd00::10 is IPv6", "IPv6 spec.address alone", "neither programmed nor injected"}},
				v1alpha1.ConditionConflict:          {metav1.ConditionFalse, "NoConflict", nil},
				v1alpha1.ConditionInjectionConflict: {metav1.ConditionFalse, "NotInjected", nil},
				ConditionProducerNamespace:          {metav1.ConditionTrue, "Found", nil},
			},
		},
		"dual-stack: accepted for both claims, where the IPv6 address is served told by IPv6Programmed": {
			mips:        []v1alpha1.MagicIP{newMIP("dual", testAddr, 0, dualStack, gen(2))},
			nsExists:    true,
			wantSummary: "8126/TCP",
			want: map[string]wantCondition{
				v1alpha1.ConditionAccepted: {metav1.ConditionTrue, "Accepted", []string{
					"owns " + testAddr + ":8126/TCP, [" + testAddr6 + "]:8126/TCP", "see IPv6Programmed"}},
				v1alpha1.ConditionConflict:          {metav1.ConditionFalse, "NoConflict", nil},
				v1alpha1.ConditionInjectionConflict: {metav1.ConditionFalse, "NoConflict", nil},
				ConditionProducerNamespace:          {metav1.ConditionTrue, "Found", nil},
			},
		},
		"an IPv6 MagicIP younger than a dual-stack one at its IPv6 address: in conflict": {
			mips:        []v1alpha1.MagicIP{newMIP("v6", testAddr6, 5), newMIP("dual", testAddr, 0, dualStack)},
			nsExists:    true,
			wantSummary: "8126/TCP",
			want: map[string]wantCondition{
				v1alpha1.ConditionAccepted:          {metav1.ConditionFalse, "Conflict", []string{"[" + testAddr6 + "]:8126/TCP is already claimed by MagicIP dual"}},
				v1alpha1.ConditionConflict:          {metav1.ConditionTrue, "ClaimTaken", []string{"dual"}},
				v1alpha1.ConditionInjectionConflict: {metav1.ConditionFalse, "NotInjected", nil},
				ConditionProducerNamespace:          {metav1.ConditionTrue, "Found", nil},
			},
		},
		"IPv6 that loses a claim: the conflict is reported": {
			mips:        []v1alpha1.MagicIP{newMIP("v6-young", "fd00::10", 5), newMIP("v6-old", "fd00::10", 0)},
			nsExists:    true,
			wantSummary: "8126/TCP",
			want: map[string]wantCondition{
				v1alpha1.ConditionAccepted:          {metav1.ConditionFalse, "Conflict", []string{"v6-old"}},
				v1alpha1.ConditionConflict:          {metav1.ConditionTrue, "ClaimTaken", []string{"v6-old"}},
				v1alpha1.ConditionInjectionConflict: {metav1.ConditionFalse, "NotInjected", nil},
				ConditionProducerNamespace:          {metav1.ConditionTrue, "Found", nil},
			},
		},
		"same variable names as an older MagicIP: accepted, InjectionConflict names it and each entry": {
			mips: []v1alpha1.MagicIP{
				newMIP("a-b", testAddr2, 5, withPorts(v1alpha1.MagicIPPort{Name: "apm", Port: 9126}),
					withInject(v1alpha1.Inject{Hostnames: []string{"dd.local", "ab.local"}})),
				newMIP("a.b", testAddr, 0),
				newMIP("dd", "169.254.0.9", 1, withInject(v1alpha1.Inject{Hostnames: []string{"dd.local"}})),
			},
			nsExists:    true,
			wantSummary: "9126/TCP",
			want: map[string]wantCondition{
				v1alpha1.ConditionAccepted: {metav1.ConditionTrue, "Accepted", nil},
				v1alpha1.ConditionConflict: {metav1.ConditionFalse, "NoConflict", nil},
				v1alpha1.ConditionInjectionConflict: {metav1.ConditionTrue, "NameTaken", []string{
					"variable A_B_MAGIC_HOST, variable A_B_MAGIC_PORT, variable A_B_MAGIC_PORT_APM (injected by MagicIP a.b)",
					"hostname dd.local (injected by MagicIP dd)", "the other entries of this MagicIP are injected",
				}},
				ConditionProducerNamespace: {metav1.ConditionTrue, "Found", nil},
			},
		},
		"the older of two with the same variable names: no InjectionConflict": {
			mips:        []v1alpha1.MagicIP{newMIP("a.b", testAddr, 0), newMIP("a-b", testAddr2, 5)},
			nsExists:    true,
			wantSummary: "8126/TCP",
			want: map[string]wantCondition{
				v1alpha1.ConditionAccepted:          {metav1.ConditionTrue, "Accepted", nil},
				v1alpha1.ConditionConflict:          {metav1.ConditionFalse, "NoConflict", nil},
				v1alpha1.ConditionInjectionConflict: {metav1.ConditionFalse, "NoConflict", nil},
				ConditionProducerNamespace:          {metav1.ConditionTrue, "Found", nil},
			},
		},
		"the older of two is accepted": {
			mips: []v1alpha1.MagicIP{
				newMIP("zz-old", testAddr, 0),
				newMIP("aa-young", testAddr, 5),
			},
			nsExists:    true,
			wantSummary: "8126/TCP",
			want: map[string]wantCondition{
				v1alpha1.ConditionAccepted:          {metav1.ConditionTrue, "Accepted", []string{testAddr + ":8126/TCP"}},
				v1alpha1.ConditionConflict:          {metav1.ConditionFalse, "NoConflict", nil},
				v1alpha1.ConditionInjectionConflict: {metav1.ConditionFalse, "NoConflict", nil},
				ConditionProducerNamespace:          {metav1.ConditionTrue, "Found", nil},
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			m := &tc.mips[0]
			var st v1alpha1.MagicIPStatus
			DesiredStatus(&st, m, Resolve(tc.mips), tc.nsExists)
			checkConditions(t, st, m.Generation, tc.want)
			if st.ObservedGeneration != m.Generation {
				t.Errorf("observedGeneration = %d, want %d", st.ObservedGeneration, m.Generation)
			}
			if st.PortSummary != tc.wantSummary {
				t.Errorf("portSummary = %q, want %q", st.PortSummary, tc.wantSummary)
			}
		})
	}
}

func TestDesiredStatusTransitionTimes(t *testing.T) {
	old := metav1.NewTime(time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC))
	young, winner := newMIP("aa-young", testAddr, 5), newMIP("zz-old", testAddr, 0)
	ageAll := func(st *v1alpha1.MagicIPStatus) {
		for i := range st.Conditions {
			st.Conditions[i].LastTransitionTime = old
		}
	}

	// Accepted alone, twice: no condition moves.
	var st v1alpha1.MagicIPStatus
	res := Resolve([]v1alpha1.MagicIP{young})
	DesiredStatus(&st, &young, res, true)
	ageAll(&st)
	young.Generation = 2 // a spec change that keeps the outcome
	DesiredStatus(&st, &young, res, true)
	for _, c := range st.Conditions {
		if !c.LastTransitionTime.Equal(&old) {
			t.Errorf("same outcome: %s lastTransitionTime %v, want it kept (%v)", c.Type, c.LastTransitionTime, old)
		}
		if c.ObservedGeneration != 2 {
			t.Errorf("%s observedGeneration = %d, want 2", c.Type, c.ObservedGeneration)
		}
	}

	// An older MagicIP appears: Accepted and Conflict move, the others do not.
	res = Resolve([]v1alpha1.MagicIP{young, winner})
	DesiredStatus(&st, &young, res, true)
	for _, c := range st.Conditions {
		moved := !c.LastTransitionTime.Equal(&old)
		// InjectionConflict stays False (NoConflict, then NotInjected): its time stays too.
		if wantMoved := c.Type == v1alpha1.ConditionAccepted || c.Type == v1alpha1.ConditionConflict; moved != wantMoved {
			t.Errorf("after a conflict: %s (%s) lastTransitionTime moved = %v, want %v", c.Type, c.Status, moved, wantMoved)
		}
	}

	// The same conflict again: nothing moves.
	ageAll(&st)
	DesiredStatus(&st, &young, res, true)
	for _, c := range st.Conditions {
		if !c.LastTransitionTime.Equal(&old) {
			t.Errorf("same conflict: %s lastTransitionTime %v, want it kept", c.Type, c.LastTransitionTime)
		}
	}
}

// TestStatusReconciler writes what DesiredStatus computes, through the status subresource.
func TestStatusReconciler(t *testing.T) {
	// Names in the opposite order of age: the creation time decides, not the name.
	young, winner := newMIP("aa-young", testAddr, 5), newMIP("zz-old", testAddr, 0)
	c := fake.NewClientBuilder().WithScheme(testScheme(t)).
		WithStatusSubresource(&v1alpha1.MagicIP{}).
		WithObjects(&young, &winner, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "datadog"}}).
		Build()
	r := &StatusReconciler{Client: c}
	if _, err := r.Reconcile(t.Context(), allRequest); err != nil {
		t.Fatal(err)
	}
	for name, wantAccepted := range map[string]bool{"zz-old": true, "aa-young": false} {
		var m v1alpha1.MagicIP
		if err := c.Get(t.Context(), client.ObjectKey{Name: name}, &m); err != nil {
			t.Fatal(err)
		}
		if got := meta.IsStatusConditionTrue(m.Status.Conditions, v1alpha1.ConditionAccepted); got != wantAccepted {
			t.Errorf("%s: Accepted = %v, want %v (%+v)", name, got, wantAccepted, m.Status.Conditions)
		}
		if !meta.IsStatusConditionTrue(m.Status.Conditions, ConditionProducerNamespace) {
			t.Errorf("%s: %s not True", name, ConditionProducerNamespace)
		}
		if m.Status.PortSummary != "8126/TCP" {
			t.Errorf("%s: portSummary %q", name, m.Status.PortSummary)
		}
	}
}

// TestIPv6Condition: IPv6Programmed is True only when every node that programs a dual-stack
// MagicIP serves its IPv6 address, and there is such a node.
func TestIPv6Condition(t *testing.T) {
	entry := func(programmed bool, unprogrammed ...string) v1alpha1.MagicIPOnNode {
		e := v1alpha1.MagicIPOnNode{Name: "dual", Programmed: programmed}
		for _, a := range unprogrammed {
			e.UnprogrammedAddresses = append(e.UnprogrammedAddresses, v1alpha1.UnprogrammedAddress{
				Address: a, Reason: v1alpha1.ReasonAddressFamilyNotSupported, Message: "no IPv6 here"})
		}
		return e
	}
	record := func(node string, e v1alpha1.MagicIPOnNode) v1alpha1.MagicIPNode {
		return v1alpha1.MagicIPNode{ObjectMeta: metav1.ObjectMeta{Name: node}, MagicIPs: []v1alpha1.MagicIPOnNode{e}}
	}
	dual := newMIP("dual", testAddr, 0, dualStack, func(m *v1alpha1.MagicIP) { m.Generation = 3 })
	tests := map[string]struct {
		mip     v1alpha1.MagicIP
		records []v1alpha1.MagicIPNode
		want    *wantCondition // nil: no IPv6Programmed condition
	}{
		"IPv4 MagicIP: no condition": {mip: newMIP("dual", testAddr, 0), records: []v1alpha1.MagicIPNode{record("n1", entry(true))}},
		"no record yet":              {mip: dual, want: &wantCondition{metav1.ConditionFalse, "NoNodeProgrammed", []string{"IPv4 address only"}}},
		"programmed nowhere (failing) counts neither way": {mip: dual, records: []v1alpha1.MagicIPNode{record("n1", entry(false))},
			want: &wantCondition{metav1.ConditionFalse, "NoNodeProgrammed", nil}},
		"served on every node that programs it": {mip: dual, records: []v1alpha1.MagicIPNode{record("n1", entry(true)), record("n2", entry(true)), record("n3", entry(false))},
			want: &wantCondition{metav1.ConditionTrue, "Programmed", []string{testAddr6, "both addresses"}}},
		"left out on one node: False, that node named with its reason": {
			mip:     dual,
			records: []v1alpha1.MagicIPNode{record("n2", entry(true, testAddr6)), record("n1", entry(true)), record("n3", entry(true, testAddr6))},
			want: &wantCondition{metav1.ConditionFalse, v1alpha1.ReasonAddressFamilyNotSupported,
				[]string{"node n2 programs this MagicIP without its IPv6 address " + testAddr6 + ": no IPv6 here", "(other nodes too)", "IPv4 address only"}},
		},
		"another address left out is not this one": {mip: dual, records: []v1alpha1.MagicIPNode{record("n1", entry(true, "fd00::99"))},
			want: &wantCondition{metav1.ConditionTrue, "Programmed", nil}},
		"not accepted: no condition": {mip: newMIP("dual", testAddr, 0, dualStack, withAccepted(metav1.ConditionFalse, 1, 1)),
			records: []v1alpha1.MagicIPNode{record("n1", entry(true))}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			st := *tc.mip.Status.DeepCopy()
			if len(st.Conditions) == 0 {
				DesiredStatus(&st, &tc.mip, Resolve([]v1alpha1.MagicIP{tc.mip}), true)
			}
			SetIPv6Condition(&st, &tc.mip, IPv6Reports([]v1alpha1.MagicIP{tc.mip}, tc.records)[tc.mip.Name])
			c := meta.FindStatusCondition(st.Conditions, ConditionIPv6Programmed)
			switch {
			case tc.want == nil && c != nil:
				t.Errorf("condition %+v, want none", *c)
			case tc.want == nil:
			case c == nil:
				t.Errorf("no %s condition, want %s (%s)", ConditionIPv6Programmed, tc.want.status, tc.want.reason)
			default:
				checkConditions(t, v1alpha1.MagicIPStatus{Conditions: []metav1.Condition{*c}}, tc.mip.Generation, map[string]wantCondition{ConditionIPv6Programmed: *tc.want})
			}
		})
	}
}
