package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/magic-ip/magic-ip/agent"
	"github.com/magic-ip/magic-ip/test/harness"
)

// metric reads one sample of the agent's Prometheus metrics from inside the node.
func metric(ctx context.Context, n *harness.Node, name string) (float64, error) {
	return metricAt(ctx, n, "127.0.0.1:9402", name)
}

// metricAt is metric for an agent whose /metrics listens on addr in n's namespace.
func metricAt(ctx context.Context, n *harness.Node, addr, name string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := n.Netns.HTTPClient(2 * time.Second).Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(body), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == name {
			return strconv.ParseFloat(f[1], 64)
		}
	}
	return 0, fmt.Errorf("metric %s not found", name)
}

// TestAgentDriftRepair: `iptables -t nat -F` (`ip6tables -t nat -F`, or our nftables table
// flushed) on the node (as a firewall reload might) is repaired
// within the resync period; while nothing drifts, resyncs write nothing.
func TestAgentDriftRepair(t *testing.T) { forEachBackend(t, testAgentDriftRepair) }

func testAgentDriftRepair(t *testing.T, b backend) {
	e := newOneNode(t, b, "--metrics-bind-address", "127.0.0.1:9402")
	p := addProducer(t, e.c, e.node, "dd-1", harness.PodOptions{})
	ctx := t.Context()
	eventually(t, 10*time.Second, "served", b.onlyAnswers(e.consumer.Netns, p.Name))

	syncs, err := metric(ctx, e.node, "magic_ip_agent_sync_duration_seconds_count")
	if err != nil {
		t.Fatal(err)
	}
	syncsReach := func(want float64) {
		eventually(t, 10*time.Second, fmt.Sprintf("%v syncs", want), func(ctx context.Context) error {
			if n, err := metric(ctx, e.node, "magic_ip_agent_sync_duration_seconds_count"); err != nil || n < want {
				return fmt.Errorf("syncs %v (err %v), want ≥ %v", n, err, want)
			}
			return nil
		})
	}
	// The baseline is read after one more sync: the write that served the consumer is counted
	// when its sync returns, a little after its rules answer, and the producer's own events may
	// bring one more write right after (CI saw "writes 0 → 1" and "1 → 2" with the baseline read
	// at once).
	syncsReach(syncs + 1)
	writes, err := metric(ctx, e.node, "magic_ip_agent_rule_writes_total")
	if err != nil {
		t.Fatal(err)
	}
	syncsReach(syncs + 3) // two more (full) syncs, idle
	if now, _ := metric(ctx, e.node, "magic_ip_agent_rule_writes_total"); now != writes {
		t.Errorf("idle resyncs wrote rules: writes %v → %v", writes, now)
	}

	b.view().flush(t, e.node.Netns)
	// Usually refused right after the flush; answered only when a resync (every 2 s) already
	// repaired it in between, which the drift repair counted below shows either way.
	if got := b.tcp(ctx, e.consumer.Netns, apmPort); got == p.Name {
		t.Logf("answered right after the flush: a resync repaired it already")
	}
	eventually(t, 5*time.Second, "flush repaired within the 2s resync period", b.onlyAnswers(e.consumer.Netns, p.Name))
	// The counter moves once the repairing sync returns, a little after the rules are back.
	eventually(t, 5*time.Second, "drift repair counted", func(ctx context.Context) error {
		if n, err := metric(ctx, e.node, "magic_ip_agent_drift_repairs_total"); err != nil || n < 1 {
			return fmt.Errorf("drift repairs metric %v (err %v), want ≥ 1", n, err)
		}
		return nil
	})
}

// TestAgentDeleteAndCleanup: deleting the MagicIP removes its rules and address; stopping the
// agent leaves the rules of the MagicIP still there; `cleanup` removes everything of ours and
// nothing else, and running it twice is fine.
func TestAgentDeleteAndCleanup(t *testing.T) { forEachBackend(t, testAgentDeleteAndCleanup) }

func testAgentDeleteAndCleanup(t *testing.T, b backend) {
	e := newOneNode(t, b)
	p := addProducer(t, e.c, e.node, "dd-1", harness.PodOptions{})
	ctx := t.Context()
	// Another MagicIP stays throughout: the iptables datapath keeps ip6tables rules only while a
	// MagicIP has an IPv6 address (an IPv4-only node runs no ip6tables), so with the datadog one
	// deleted there would be no IPv6 rule left for the agent's stop to keep.
	if err := e.c.CP.Client.Create(ctx, b.at(datadogMagicIP("keeper"), 211)); err != nil {
		t.Fatal(err)
	}
	// A foreign rule and chain that must survive our syncs and our cleanup.
	for _, args := range [][]string{
		{"-t", "nat", "-N", "KUBE-SERVICES"},
		{"-t", "nat", "-I", "PREROUTING", "1", "-j", "KUBE-SERVICES"},
		{"-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"},
	} {
		if _, err := e.node.Netns.Run(ctx, b.iptables(), args...); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 10*time.Second, "served", b.onlyAnswers(e.consumer.Netns, p.Name))
	save := func() string {
		out, err := e.node.Netns.Run(ctx, b.iptables()+"-save")
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	addrs := func() string {
		out, err := e.node.Netns.Run(ctx, "ip", "-o", "addr", "show", "dev", harness.PodBridge)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	ours := func() (string, bool) {
		s, present, err := b.view().rules(ctx, e.node.Netns)
		if err != nil {
			t.Fatal(err)
		}
		return s, present
	}
	// The foreign jump was inserted first after the agent's first sync: its next resync (every 2 s)
	// puts ours first again. (nftables: our table has chains of its own on each hook.)
	if b.datapath == agent.DatapathIptables {
		eventually(t, 5*time.Second, "our jump first in PREROUTING again", func(context.Context) error {
			if first := firstRule(save(), "PREROUTING"); !strings.Contains(first, "MAGIC-IP-PREROUTING") {
				return fmt.Errorf("first PREROUTING rule is %q, want our jump first", first)
			}
			return nil
		})
	}

	if err := e.c.CP.Client.Delete(ctx, b.magicIP("datadog")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "rules and address gone", func(context.Context) error {
		if s, _ := ours(); strings.Contains(s, b.addr()) || strings.Contains(s, "datadog:") {
			return fmt.Errorf("our rules still mention %s:\n%s", b.addr(), s)
		}
		if a := addrs(); strings.Contains(a, b.addr()) {
			return fmt.Errorf("address still on cni0: %s", a)
		}
		return nil
	})

	if err := e.agent.Stop(); err != nil {
		t.Fatalf("agent exit: %v", err)
	}
	if _, present := ours(); !present {
		t.Fatalf("stopping the agent removed its rules; they must stay (no --cleanup-on-exit)")
	}
	for i := range 2 {
		if out, err := e.node.Netns.Run(ctx, agentBin, "cleanup"); err != nil {
			t.Fatalf("cleanup run %d: %v\n%s", i+1, err, out)
		}
		if left, present := ours(); present {
			t.Errorf("cleanup run %d left our rules:\n%s", i+1, left)
		}
		s := save()
		for _, foreign := range []string{"-A PREROUTING -j KUBE-SERVICES", "--dport 22 -j ACCEPT"} {
			if !strings.Contains(s, foreign) {
				t.Errorf("cleanup run %d removed a foreign rule %q", i+1, foreign)
			}
		}
	}
}

func firstRule(save, chain string) string {
	for _, line := range strings.Split(save, "\n") {
		if strings.HasPrefix(line, "-A "+chain+" ") {
			return line
		}
	}
	return ""
}

// TestAgentConflictsAndBadInterface: a younger MagicIP claiming the same address+port+protocol is
// ignored and reported with an Event; one naming an interface the node lacks is reported; the
// original keeps working throughout.
func TestAgentConflictsAndBadInterface(t *testing.T) {
	forEachBackend(t, testAgentConflictsAndBadInterface)
}

func testAgentConflictsAndBadInterface(t *testing.T, b backend) {
	e := newOneNode(t, b)
	p := addProducer(t, e.c, e.node, "dd-1", harness.PodOptions{})
	ctx := t.Context()
	eventually(t, 10*time.Second, "served", b.onlyAnswers(e.consumer.Netns, p.Name))

	rival := b.magicIP("datadog-rival")
	rival.Spec.Producer.Namespace = "rival"
	badIf := b.at(datadogMagicIP("apm-elsewhere"), 211)
	badIf.Spec.HostInterface = "nosuch0"
	noDummy := b.at(datadogMagicIP("on-dummy"), 212) // this kernel has no dummy link type: the agent must say so
	noDummy.Spec.HostInterface = "magic-ip0"
	for _, m := range []client.Object{rival, badIf, noDummy} {
		if err := e.c.CP.Client.Create(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	rivalProducer := e.c.AddPod(e.node, "rival", "rival-1", map[string]string{"app": "dd"}, harness.PodOptions{})
	rivalProducer.Netns.ServeTCP(t, apmPort, rivalProducer.Name)

	eventually(t, 10*time.Second, "conflict reported", wantAgentEvent(e.c, "datadog-rival", "Conflict", "claimed by MagicIP datadog"))
	eventually(t, 10*time.Second, "missing interface reported", wantAgentEvent(e.c, "apm-elsewhere", "InterfaceUnavailable", "nosuch0"))
	eventually(t, 10*time.Second, "missing dummy support reported", wantAgentEvent(e.c, "on-dummy", "InterfaceUnavailable", "no 'dummy' link type"))
	if got := b.seen(ctx, e.consumer.Netns, 20); len(got) != 1 || !got[p.Name] {
		t.Errorf("original MagicIP disturbed: outcomes %v, want only %s", got, p.Name)
	}
}

// TestAgentStartCleansLeftovers: a MagicIP deleted while the agent was down leaves rules and an
// address behind; the next agent, with nothing at all to watch, removes them and becomes ready.
func TestAgentStartCleansLeftovers(t *testing.T) { forEachBackend(t, testAgentStartCleansLeftovers) }

func testAgentStartCleansLeftovers(t *testing.T, b backend) {
	e := newOneNode(t, b)
	p := addProducer(t, e.c, e.node, "dd-1", harness.PodOptions{})
	ctx := t.Context()
	eventually(t, 10*time.Second, "served", b.onlyAnswers(e.consumer.Netns, p.Name))
	if err := e.agent.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := e.c.CP.Client.Delete(ctx, b.magicIP("datadog")); err != nil {
		t.Fatal(err)
	}
	if err := p.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.consumer.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	e.restartAgent(t)
	eventually(t, 10*time.Second, "leftovers removed by the new agent", func(ctx context.Context) error {
		out, err := nodeState(ctx, b.view(), e.node.Netns)
		if err != nil {
			return err
		}
		if strings.Contains(out, b.addr()) {
			return fmt.Errorf("still there:\n%s", out)
		}
		return nil
	})
	if err := harness.WaitAgentReady(t.Context(), e.node.Netns, 5*time.Second); err != nil {
		t.Errorf("/readyz: an agent with nothing to program must still become ready: %v", err)
	}
}
