package webhook

import (
	"time"

	"k8s.io/apimachinery/pkg/api/equality"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// DefaultNodeCountsInterval is the least time between two writes of a MagicIP's status that only
// change its node counts (--node-counts-interval).
const DefaultNodeCountsInterval = 5 * time.Second

// NodeCounts sums up the agents' records per MagicIP: nodes where it is programmed, programmed
// with a local producer, and not programmed (failing). A MagicIP no record mentions counts zero
// everywhere.
func NodeCounts(records []v1alpha1.MagicIPNode) map[string]v1alpha1.NodeCounts {
	out := map[string]v1alpha1.NodeCounts{}
	for _, rec := range records {
		for _, e := range rec.MagicIPs {
			c := out[e.Name]
			switch {
			case !e.Programmed:
				c.Failing++
			case len(e.Producers) > 0:
				c.Programmed++
				c.LocalProducers++
			default:
				c.Programmed++
			}
			out[e.Name] = c
		}
	}
	return out
}

// countsThrottle spaces the writes that change only a MagicIP's node counts: during a rollout
// the counts move with every node, and the status is written at most once per interval per
// MagicIP, with the counts of the moment.
type countsThrottle struct {
	interval  time.Duration
	lastWrite map[string]time.Time
}

// wait says how long to hold a write of m's status from old to want: zero when it changes more
// than the counts, or when the last counts-only write is an interval old.
func (t *countsThrottle) wait(name string, old, want *v1alpha1.MagicIPStatus, now time.Time) time.Duration {
	onlyCounts := *old.DeepCopy()
	onlyCounts.Nodes = want.Nodes
	if !equality.Semantic.DeepEqual(onlyCounts, *want) {
		return 0
	}
	last, ok := t.lastWrite[name]
	if !ok {
		return 0
	}
	return max(0, t.interval-now.Sub(last))
}

// wrote records a write of name's status at now.
func (t *countsThrottle) wrote(name string, now time.Time) {
	if t.lastWrite == nil {
		t.lastWrite = map[string]time.Time{}
	}
	t.lastWrite[name] = now
}
