package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/magic-ip/magic-ip/test/harness"
)

// TestAgentSyncFailingReadyz: a real failure makes every sync fail — iptables: a foreign rule that
// jumps to one of our service chains, so iptables-restore cannot delete it once its producer goes
// away; nftables: our table taken over by another process that owns it, so every transaction is
// refused. /readyz then answers 500 with the error and magic_ip_agent_sync_failing is 1. Once the
// syncs have failed long enough for the backoff to reach its cap (12 failures: client-go's default
// limiter would wait 20 s before the next retry, and twice that after), the blocker is removed: the
// agent is ready again within the 10 s cap.
func TestAgentSyncFailingReadyz(t *testing.T) { forEachBackend(t, testAgentSyncFailingReadyz) }

func testAgentSyncFailingReadyz(t *testing.T, b backend) {
	e := newOneNode(t, b, "--metrics-bind-address", "127.0.0.1:9402")
	p := addProducer(t, e.c, e.node, "dd-1", harness.PodOptions{})
	ctx := t.Context()
	eventually(t, 10*time.Second, "served", b.onlyAnswers(e.consumer.Netns, p.Name))
	// Traffic flows once the first sync's restore ran; the sync ends (and the agent is ready) just after.
	eventually(t, 10*time.Second, "/readyz ready before the failure", func(ctx context.Context) error {
		if code, body := readyz(ctx, e.node); code != http.StatusOK {
			return fmt.Errorf("/readyz %d %s", code, body)
		}
		return nil
	})
	v := b.view()
	unblock := v.block(t, e.node.Netns, "datadog:apm")
	if err := p.SetReady(ctx, false); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "/readyz reports the failing sync", func(ctx context.Context) error {
		if code, body := readyz(ctx, e.node); code != http.StatusInternalServerError || !strings.Contains(body, "syncs failing since") {
			return fmt.Errorf("/readyz %d %q, want 500 naming the failing sync", code, body)
		}
		return nil
	})
	if v, err := metric(ctx, e.node, "magic_ip_agent_sync_failing"); err != nil || v != 1 {
		t.Errorf("magic_ip_agent_sync_failing = %v (err %v) while failing, want 1", v, err)
	}
	cs, err := kubernetes.NewForConfig(e.c.CP.Config)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "Node condition Programmed=False, SyncFailed", wantProgrammed(cs, e.node.Name, corev1.ConditionFalse, "SyncFailed", v.failure()))
	// The first failures may still reword the condition (the first failed sync and the retries
	// that follow can fail at different steps); from the third retry on, the failure repeats.
	eventually(t, 20*time.Second, "3 failed syncs", func(ctx context.Context) error {
		if n, err := metric(ctx, e.node, "magic_ip_agent_sync_errors_total"); err != nil || n < 3 {
			return fmt.Errorf("sync errors %v (err %v), want ≥ 3", n, err)
		}
		return nil
	})
	before := programmedMessage(ctx, cs, e.node.Name)
	writes, err := nodeWrites(ctx, cs)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 40*time.Second, "12 failed syncs (backoff at its cap)", func(ctx context.Context) error {
		if n, err := metric(ctx, e.node, "magic_ip_agent_sync_errors_total"); err != nil || n < 12 {
			return fmt.Errorf("sync errors %v (err %v), want ≥ 12", n, err)
		}
		return nil
	})
	if now, err := nodeWrites(ctx, cs); err != nil || now != writes {
		t.Errorf("retries of the same failure wrote the Node %v times (err %v); condition message before %q, after %q: want 0",
			now-writes, err, before, programmedMessage(ctx, cs, e.node.Name))
	}
	unblock()
	removed := time.Now()
	eventually(t, 13*time.Second, "ready again within the backoff cap", func(ctx context.Context) error {
		if code, body := readyz(ctx, e.node); code != http.StatusOK {
			return fmt.Errorf("/readyz %d %q", code, body)
		}
		return nil
	})
	t.Logf("ready again %s after the blocker was removed", time.Since(removed).Round(time.Millisecond))
	eventually(t, 5*time.Second, "Node condition Programmed=True again", wantProgrammed(cs, e.node.Name, corev1.ConditionTrue, "Programmed", ""))
	if v, err := metric(ctx, e.node, "magic_ip_agent_sync_failing"); err != nil || v != 0 {
		t.Errorf("magic_ip_agent_sync_failing = %v (err %v) after recovery, want 0", v, err)
	}
	if v, err := metric(ctx, e.node, "magic_ip_agent_last_successful_sync_timestamp_seconds"); err != nil || v < float64(removed.Unix()) {
		t.Errorf("last successful sync at %v (err %v), want after %d", v, err, removed.Unix())
	}
	eventually(t, 5*time.Second, "the redirect to the NotReady producer is gone", func(ctx context.Context) error {
		if out, _, err := v.rules(ctx, e.node.Netns); err != nil || strings.Contains(out, "-> "+p.Name) {
			return fmt.Errorf("rules still send to %s (err %v):\n%s", p.Name, err, out)
		}
		return nil
	})
}

// readyz is the status code and body of the agent's /readyz in n (0 when it does not answer).
func readyz(ctx context.Context, n *harness.Node) (int, string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:9403/readyz", nil)
	if err != nil {
		return 0, err.Error()
	}
	resp, err := n.Netns.HTTPClient(2 * time.Second).Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(body))
}

// programmedMessage is the message of the node's magic-ip.dev/Programmed condition ("" when absent
// or unreadable).
func programmedMessage(ctx context.Context, cs kubernetes.Interface, node string) string {
	n, err := cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return err.Error()
	}
	for _, c := range n.Status.Conditions {
		if c.Type == "magic-ip.dev/Programmed" {
			return c.Message
		}
	}
	return ""
}
