package webhook

import (
	"testing"
	"time"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

func TestNodeCounts(t *testing.T) {
	producer := []v1alpha1.LocalProducer{{Pod: "datadog/dd-1", IP: "10.0.0.5"}}
	records := []v1alpha1.MagicIPNode{
		{MagicIPs: []v1alpha1.MagicIPOnNode{{Name: "dd", Programmed: true, Producers: producer}, {Name: "otel", Programmed: true}}},
		{MagicIPs: []v1alpha1.MagicIPOnNode{{Name: "dd", Programmed: true}, {Name: "otel", Reason: v1alpha1.ReasonInterfaceUnavailable}}},
		{MagicIPs: []v1alpha1.MagicIPOnNode{{Name: "dd", Reason: v1alpha1.ReasonSyncFailed}}},
		{},
	}
	got := NodeCounts(records)
	want := map[string]v1alpha1.NodeCounts{
		"dd":   {Programmed: 2, LocalProducers: 1, Failing: 1},
		"otel": {Programmed: 1, Failing: 1},
	}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for name, w := range want {
		if got[name] != w {
			t.Errorf("%s: got %+v, want %+v", name, got[name], w)
		}
	}
}

func TestCountsThrottle(t *testing.T) {
	now := time.Unix(1000, 0)
	th := countsThrottle{interval: 5 * time.Second}
	old := v1alpha1.MagicIPStatus{PortSummary: "8126/TCP", Nodes: &v1alpha1.NodeCounts{Programmed: 1}}
	counts := *old.DeepCopy()
	counts.Nodes = &v1alpha1.NodeCounts{Programmed: 2}
	other := *counts.DeepCopy()
	other.PortSummary = "8125/UDP"
	if w := th.wait("dd", &old, &counts, now); w != 0 {
		t.Errorf("first counts write held %s, want 0", w)
	}
	th.wrote("dd", now)
	tests := map[string]struct {
		want  *v1alpha1.MagicIPStatus
		after time.Duration
		hold  time.Duration
	}{
		"counts only, 2 s after a write":    {&counts, 2 * time.Second, 3 * time.Second},
		"counts only, 5 s after a write":    {&counts, 5 * time.Second, 0},
		"more than counts, 1 s after":       {&other, time.Second, 0},
		"counts of another MagicIP at once": {&counts, 0, 0},
	}
	for name, tc := range tests {
		mip := "dd"
		if name == "counts of another MagicIP at once" {
			mip = "otel"
		}
		if got := th.wait(mip, &old, tc.want, now.Add(tc.after)); got != tc.hold {
			t.Errorf("%s: held %s, want %s", name, got, tc.hold)
		}
	}
}
