package agent

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
)

func TestProbesHandler(t *testing.T) {
	notYet := func() error { return errors.New("first sync not done yet") }
	ready := func() error { return nil }
	for name, tc := range map[string]struct {
		ready    func() error
		path     string
		wantCode int
		wantBody string
	}{
		"healthz before the first sync": {notYet, "/healthz", 200, "ok\n"},
		"readyz before the first sync":  {notYet, "/readyz", 500, "not ready: first sync not done yet\n"},
		"readyz after the first sync":   {ready, "/readyz", 200, "ok\n"},
		"unknown path":                  {ready, "/metrics", 404, "404 page not found\n"},
	} {
		t.Run(name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			probesHandler(tc.ready).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tc.path, nil))
			if rec.Code != tc.wantCode || rec.Body.String() != tc.wantBody {
				t.Errorf("GET %s = %d %q, want %d %q", tc.path, rec.Code, rec.Body.String(), tc.wantCode, tc.wantBody)
			}
		})
	}
}

// TestMetricsHandler: the agent's metrics (label values pre-set or not) plus Go and process ones.
func TestMetricsHandler(t *testing.T) {
	m := NewMetrics()
	m.observeSync(0, 2, true)
	m.observeFlush(FlushResult{Deleted: 3, Took: time.Millisecond})
	m.observeFlush(FlushResult{Err: errors.New("no socket")})
	h, err := metricsHandler(m)
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{
		"magic_ip_agent_sync_duration_seconds_count 1", "magic_ip_agent_iptables_execs_total 2",
		"magic_ip_agent_rule_writes_total 1", "magic_ip_agent_sync_errors_total 0",
		"magic_ip_agent_drift_repairs_total 0", "go_goroutines ", "process_resident_memory_bytes ",
		"magic_ip_agent_conntrack_flush_duration_seconds_count 2", "magic_ip_agent_conntrack_entries_flushed_total 3",
		"magic_ip_agent_conntrack_flush_errors_total 1",
	} {
		if !strings.Contains(body, "\n"+want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// TestServerServesUntilCancelled: a server answers on its address, and shuts down (freeing the
// port) when its context ends; "0" disables it.
func TestServerServesUntilCancelled(t *testing.T) {
	if s, err := listen("health", "0", nil); s != nil || err != nil {
		t.Fatalf(`listen("0") = %v, %v; want no server`, s, err)
	}
	s, err := listen("health", "127.0.0.1:0", probesHandler(func() error { return nil }))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() { done <- s.serve(ctx, logr.Discard()) }()
	url := "http://" + s.ln.Addr().String() + "/readyz"
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "ok\n" {
		t.Errorf("GET /readyz = %d %q", resp.StatusCode, b)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("serve: %v", err)
	}
	if _, err := http.Get(url); err == nil {
		t.Error("still answering after its context ended")
	}
	again, err := listen("health", s.ln.Addr().String(), nil)
	if err != nil {
		t.Fatalf("port still taken after shutdown: %v", err)
	}
	again.ln.Close()
}
