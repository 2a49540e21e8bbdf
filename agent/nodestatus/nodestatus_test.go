package nodestatus

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestParseTaint(t *testing.T) {
	for in, tc := range map[string]struct {
		want    corev1.Taint
		wantErr string
	}{
		"magic-ip.dev/agent-not-ready:NoSchedule": {want: corev1.Taint{Key: "magic-ip.dev/agent-not-ready", Effect: corev1.TaintEffectNoSchedule}},
		"agent-not-ready=true:NoExecute":          {want: corev1.Taint{Key: "agent-not-ready", Value: "true", Effect: corev1.TaintEffectNoExecute}},
		"k:PreferNoSchedule":                      {want: corev1.Taint{Key: "k", Effect: corev1.TaintEffectPreferNoSchedule}},
		"magic-ip.dev/agent-not-ready":            {wantErr: "want key[=value]:Effect"},
		"k:NoDance":                               {wantErr: `effect "NoDance"`},
		"bad key!:NoSchedule":                     {wantErr: `key "bad key!"`},
		"k=bad value:NoSchedule":                  {wantErr: `value "bad value"`},
		":NoSchedule":                             {wantErr: `key ""`},
	} {
		t.Run(in, func(t *testing.T) {
			got, err := ParseTaint(in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseTaint: %v, want an error with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseTaint = %+v, %v; want %+v", got, err, tc.want)
			}
			if s := TaintString(got); s != in {
				t.Errorf("TaintString = %q, want %q", s, in)
			}
		})
	}
}

func TestWithoutTaint(t *testing.T) {
	ours := corev1.Taint{Key: "magic-ip.dev/agent-not-ready", Effect: corev1.TaintEffectNoSchedule}
	other := corev1.Taint{Key: "node.kubernetes.io/not-ready", Effect: corev1.TaintEffectNoSchedule}
	sameKeyOtherEffect := corev1.Taint{Key: ours.Key, Effect: corev1.TaintEffectNoExecute}
	withValue := ours
	withValue.Value = "yes"
	for name, tc := range map[string]struct {
		taints    []corev1.Taint
		want      []corev1.Taint
		wantFound bool
	}{
		"absent":                               {taints: []corev1.Taint{other}, want: []corev1.Taint{other}},
		"only ours":                            {taints: []corev1.Taint{ours}, want: []corev1.Taint{}, wantFound: true},
		"others kept in order":                 {taints: []corev1.Taint{other, ours, sameKeyOtherEffect}, want: []corev1.Taint{other, sameKeyOtherEffect}, wantFound: true},
		"matched by key and effect, any value": {taints: []corev1.Taint{withValue}, want: []corev1.Taint{}, wantFound: true},
	} {
		t.Run(name, func(t *testing.T) {
			node := &corev1.Node{Spec: corev1.NodeSpec{Taints: tc.taints}}
			got, found := withoutTaint(node, ours)
			if found != tc.wantFound || !reflect.DeepEqual(got, tc.want) {
				t.Errorf("withoutTaint = %v, %v; want %v, %v", got, found, tc.want, tc.wantFound)
			}
		})
	}
}

func TestCondition(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := t0.Add(time.Hour)
	falseSince := &corev1.NodeCondition{Type: ConditionType, Status: corev1.ConditionFalse, Reason: ReasonSyncFailed, Message: "x", LastTransitionTime: metav1.NewTime(t0)}
	trueSince := &corev1.NodeCondition{Type: ConditionType, Status: corev1.ConditionTrue, Reason: ReasonProgrammed, Message: Programmed().Message, LastTransitionTime: metav1.NewTime(t0)}
	down := NotProgrammed(ReasonInterfaceUnavailable, "MagicIP a: interface nosuch0: Link not found")
	for name, tc := range map[string]struct {
		s              Status
		prev           *corev1.NodeCondition
		wantTransition time.Time
		wantMatches    bool
	}{
		"first report":                         {s: Programmed(), prev: nil, wantTransition: now},
		"False to True: transition now":        {s: Programmed(), prev: falseSince, wantTransition: now},
		"same status, other reason: kept time": {s: down, prev: falseSince, wantTransition: t0},
		"True again: nothing to write":         {s: Programmed(), prev: trueSince, wantTransition: t0, wantMatches: true},
		"True to False: transition now":        {s: down, prev: trueSince, wantTransition: now},
	} {
		t.Run(name, func(t *testing.T) {
			if got := tc.s.Matches(tc.prev); got != tc.wantMatches {
				t.Errorf("Matches = %v, want %v", got, tc.wantMatches)
			}
			c := tc.s.Condition(tc.prev, now)
			if c.Type != ConditionType || c.Reason != tc.s.Reason || c.Message != tc.s.Message || !c.LastHeartbeatTime.Time.Equal(now) {
				t.Errorf("condition %+v does not say %+v at %s", c, tc.s, now)
			}
			if !c.LastTransitionTime.Time.Equal(tc.wantTransition) {
				t.Errorf("lastTransitionTime %s, want %s", c.LastTransitionTime, tc.wantTransition)
			}
			if !tc.s.Matches(&c) {
				t.Errorf("Matches(its own condition) = false")
			}
		})
	}
}

func TestNotProgrammedMessageBounded(t *testing.T) {
	s := NotProgrammed(ReasonSyncFailed, strings.Repeat("é", 1000))
	if len(s.Message) > messageLimit || !strings.HasPrefix(strings.Repeat("é", 1000), s.Message) {
		t.Errorf("message of %d bytes, want at most %d, cut at a character", len(s.Message), messageLimit)
	}
}

func TestPatches(t *testing.T) {
	c := Programmed().Condition(nil, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	for name, tc := range map[string]struct {
		build func() ([]byte, error)
		want  string
	}{
		"set condition (merged by type)": {func() ([]byte, error) { return conditionPatch(c) },
			`{"status":{"conditions":[{"type":"magic-ip.dev/Programmed","status":"True","lastHeartbeatTime":"2026-01-01T00:00:00Z","lastTransitionTime":"2026-01-01T00:00:00Z","reason":"Programmed","message":"every MagicIP this node serves is programmed"}]}}`},
		"delete condition": {removeConditionPatch,
			`{"status":{"conditions":[{"$patch":"delete","type":"magic-ip.dev/Programmed"}]}}`},
		"taints, conditional on the resourceVersion": {func() ([]byte, error) {
			return taintsPatch(&corev1.Node{ObjectMeta: metav1.ObjectMeta{ResourceVersion: "42"}}, []corev1.Taint{})
		}, `{"metadata":{"resourceVersion":"42"},"spec":{"taints":[]}}`},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := tc.build()
			if err != nil || string(got) != tc.want {
				t.Errorf("patch %s (err %v)\nwant  %s", got, err, tc.want)
			}
			if !json.Valid(got) {
				t.Errorf("not JSON: %s", got)
			}
		})
	}
}
