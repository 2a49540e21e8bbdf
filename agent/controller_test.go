package agent

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// TestControllerBackoffCap: the controller's own rate limiter doubles the retry delay from 5 ms
// and never waits more than the cap (client-go's default limiter reaches 1000 s).
func TestControllerBackoffCap(t *testing.T) {
	for name, tc := range map[string]struct {
		max, want time.Duration
	}{
		"default":               {0, 10 * time.Second},
		"--max-sync-backoff=2s": {2 * time.Second, 2 * time.Second},
	} {
		t.Run(name, func(t *testing.T) {
			c := NewController(ControllerConfig{MaxBackoff: tc.max})
			var delays []time.Duration
			for range 40 {
				delays = append(delays, c.limiter.When(nodeKey))
			}
			if delays[0] != 5*time.Millisecond || delays[1] != 10*time.Millisecond {
				t.Errorf("first delays %v, want 5ms then 10ms", delays[:2])
			}
			for i, d := range delays {
				if d > tc.want {
					t.Fatalf("failure %d: retry in %s, more than the cap %s", i+1, d, tc.want)
				}
			}
			if last := delays[len(delays)-1]; last != tc.want {
				t.Errorf("after 40 failures: retry in %s, want the cap %s", last, tc.want)
			}
		})
	}
}

// TestControllerReadyCheck: not ready before the first sync, ready after it, not ready (with the
// error) while syncs fail, ready again after one succeeds; the metrics follow.
func TestControllerReadyCheck(t *testing.T) {
	c := NewController(ControllerConfig{Metrics: NewMetrics()})
	if err := c.ReadyCheck(); err == nil || err.Error() != "first sync not done yet" {
		t.Errorf("before the first sync: %v", err)
	}
	c.ready.Store(true)
	c.setFailing(nil)
	if err := c.ReadyCheck(); err != nil {
		t.Errorf("after a sync: %v", err)
	}
	if got := gaugeValue(t, c.Metrics.LastSuccess); got < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("last success timestamp %v", got)
	}
	c.setFailing(errors.New("iptables-restore: line 3 failed"))
	c.setFailing(errors.New("iptables-restore: line 4 failed"))
	err := c.ReadyCheck()
	if err == nil || !strings.Contains(err.Error(), "syncs failing since ") || !strings.HasSuffix(err.Error(), "line 4 failed") {
		t.Errorf("while failing: %v", err)
	}
	if got := gaugeValue(t, c.Metrics.SyncFailing); got != 1 {
		t.Errorf("magic_ip_agent_sync_failing = %v while failing, want 1", got)
	}
	c.setFailing(nil)
	if err := c.ReadyCheck(); err != nil {
		t.Errorf("after recovery: %v", err)
	}
	if got := gaugeValue(t, c.Metrics.SyncFailing); got != 0 {
		t.Errorf("magic_ip_agent_sync_failing = %v after recovery, want 0", got)
	}
}

func gaugeValue(t *testing.T, g prometheus.Gauge) float64 {
	t.Helper()
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}
