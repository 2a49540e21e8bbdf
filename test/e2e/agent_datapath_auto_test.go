package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/magic-ip/magic-ip/agent"
)

// TestAgentDatapathAutoHints: --datapath=auto on a node with no hint of its mode keeps iptables
// and says so (reason no-hint); restarted after kubelet's KUBE-IPTABLES-HINT chain appeared in the
// mangle table, it keeps iptables for that reason (iptables-hint). The choice is in the agent's
// metrics, and its rules are in iptables.
func TestAgentDatapathAutoHints(t *testing.T) {
	auto := backend{datapath: agent.DatapathAuto}
	e := newOneNode(t, auto, "--metrics-bind-address", "127.0.0.1:9402")
	ns := e.node.Netns
	info := func(reason string) string {
		return fmt.Sprintf(`magic_ip_agent_datapath_info{datapath=%q,reason=%q}`, agent.DatapathIptables, reason)
	}
	eventually(t, 10*time.Second, "auto without hints", wantMetric(e.node, info(agent.ReasonNoHint), 1))
	if err := e.agent.Stop(); err != nil {
		t.Fatal(err)
	}
	if out, err := ns.Run(t.Context(), "iptables", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT"); err != nil {
		t.Fatalf("create kubelet's hint chain: %v\n%s", err, out)
	}
	e.restartAgent(t, "--metrics-bind-address", "127.0.0.1:9402")
	eventually(t, 10*time.Second, "auto with kubelet's hint", wantMetric(e.node, info(agent.ReasonIptablesHint), 1))
	// The metric is served from the start; the rules come with the first sync.
	eventually(t, 10*time.Second, "auto chose iptables: our chains in the nat table", func(ctx context.Context) error {
		save, err := ns.Run(ctx, "iptables-save", "-t", "nat")
		if err != nil {
			return err
		}
		if !strings.Contains(save, "MAGIC-IP-") {
			return fmt.Errorf("no chain of ours:\n%s", save)
		}
		return nil
	})
}
