package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/magic-ip/magic-ip/test/harness"
)

// oneNode is a control plane, one node with a consumer, the datadog MagicIP and a running agent of
// backend b.
type oneNode struct {
	b        backend
	c        *harness.Cluster
	node     *harness.Node
	consumer *harness.Pod
	agent    *harness.Process
}

// newOneNode starts it, the agent with agentArgs and b's flags.
func newOneNode(t *testing.T, b backend, agentArgs ...string) *oneNode {
	cp := harness.StartControlPlane(t)
	c := b.cluster(t, cp, harness.ClusterOptions{Nodes: 1})
	e := &oneNode{b: b, c: c, node: c.Nodes[0]}
	e.consumer = c.AddPod(e.node, "app", "consumer", nil, harness.PodOptions{})
	if err := cp.Client.Create(t.Context(), b.magicIP("datadog")); err != nil {
		t.Fatal(err)
	}
	e.agent = startAgent(t, c, e.node, b.flags(agentArgs...)...)
	return e
}

// restartAgent starts the agent again with b's flags (after the previous one stopped).
func (e *oneNode) restartAgent(t *testing.T, agentArgs ...string) {
	e.agent = startAgent(t, e.c, e.node, e.b.flags(agentArgs...)...)
}

// seen dials the magic address's apm port n times and returns the set of outcomes.
func (b backend) seen(ctx context.Context, ns *harness.Netns, n int) map[string]bool {
	out := map[string]bool{}
	for range n {
		out[b.tcp(ctx, ns, apmPort)] = true
	}
	return out
}

// onlyAnswers is a condition: n dials in a row all get exactly the wanted outcome.
func (b backend) onlyAnswers(ns *harness.Netns, want string) func(context.Context) error {
	return func(ctx context.Context) error {
		if got := b.seen(ctx, ns, 10); len(got) != 1 || !got[want] {
			return fmt.Errorf("outcomes %v, want only %q", got, want)
		}
		return nil
	}
}

// TestAgentFailover: traffic follows readiness. Two Ready producers both get connections; NotReady
// and deleted producers get none; a terminating producer still Ready serves only while no Ready one
// is left; with none left clients are refused; back to Ready, served again.
func TestAgentFailover(t *testing.T) { forEachBackend(t, testAgentFailover) }

func testAgentFailover(t *testing.T, b backend) {
	e := newOneNode(t, b)
	ctx := t.Context()
	eventually(t, 10*time.Second, "no producer yet: refused", b.onlyAnswers(e.consumer.Netns, "refused"))

	p1 := addProducer(t, e.c, e.node, "dd-1", harness.PodOptions{})
	p2 := addProducer(t, e.c, e.node, "dd-2", harness.PodOptions{})
	eventually(t, 5*time.Second, "both producers receive connections", func(ctx context.Context) error {
		if got := b.seen(ctx, e.consumer.Netns, 40); len(got) != 2 || !got[p1.Name] || !got[p2.Name] {
			return fmt.Errorf("outcomes %v, want both %s and %s", got, p1.Name, p2.Name)
		}
		return nil
	})

	steps := []struct {
		what   string
		change func() error
		want   string
	}{
		{"dd-1 NotReady", func() error { return p1.SetReady(ctx, false) }, p2.Name},
		{"dd-2 terminating, still Ready: the only one left", func() error { return p2.MarkTerminating(ctx) }, p2.Name},
		{"dd-1 Ready again: preferred to terminating dd-2", func() error { return p1.SetReady(ctx, true) }, p1.Name},
		{"dd-1 deleted: back to terminating dd-2", func() error { return p1.Delete(ctx) }, p2.Name},
		{"dd-2 NotReady while terminating", func() error { return p2.SetReady(ctx, false) }, "refused"},
	}
	for _, s := range steps {
		if err := s.change(); err != nil {
			t.Fatalf("%s: %v", s.what, err)
		}
		eventually(t, 5*time.Second, s.what, b.onlyAnswers(e.consumer.Netns, s.want))
	}
}

// TestAgentUDPSwitch: a client that keeps one UDP socket follows the producer it is redirected to
// — after a switch, and when it began sending before the node was programmed at all.
func TestAgentUDPSwitch(t *testing.T) { forEachBackend(t, testAgentUDPSwitch) }

func testAgentUDPSwitch(t *testing.T, b backend) {
	cp := harness.StartControlPlane(t)
	c := b.cluster(t, cp, harness.ClusterOptions{Nodes: 1})
	n := c.Nodes[0]
	// A refused datagram is answered with ICMP port-unreachable, which the kernel rate-limits per
	// destination (net.ipv4.icmp_ratelimit, net.ipv6.icmp.ratelimit: 1 s). This test is about which producer a reused
	// socket reaches, and the refusals of the steps before the last one used up the budget: with
	// the limit on, the last step saw only silence in 3 of 12 runs. Real clients see the same
	// (README, Operations).
	b.liftICMPRateLimit(t, n.Netns)
	consumer := c.AddPod(n, "app", "statsd-client", nil, harness.PodOptions{})
	p1 := addProducer(t, c, n, "dd-1", harness.PodOptions{})
	if err := cp.Client.Create(t.Context(), b.magicIP("datadog")); err != nil {
		t.Fatal(err)
	}
	// Before any agent: the address already answers locally (say, left on the node), so the
	// client's flow gets an un-NATed conntrack entry that would outlive the rules.
	if _, err := n.Netns.Run(t.Context(), "ip", "addr", "add", b.route().String(), "dev", harness.PodBridge); err != nil {
		t.Fatal(err)
	}
	client, err := consumer.Netns.DialUDP(b.hostPort(statsPort))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	exchange := func(ctx context.Context) string { return kept(ctx, client, 200*time.Millisecond) }
	if got := exchange(t.Context()); got == p1.Name {
		t.Fatalf("answered by %s before any agent ran", got)
	}
	startAgent(t, c, n, b.flags()...)
	wantReused := func(want string) func(context.Context) error {
		return func(ctx context.Context) error {
			if got := exchange(ctx); got != want {
				return fmt.Errorf("reused socket: %q, want %q", got, want)
			}
			return nil
		}
	}
	eventually(t, 10*time.Second, "socket opened before the agent reaches the producer", wantReused(p1.Name))

	p2 := addProducer(t, c, n, "dd-2", harness.PodOptions{NotReady: true})
	// On failure (registered last, so it runs while the pods and the agent still exist): what the
	// node and the client say about the lost datagrams.
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, x := range []struct {
			ns  *harness.Netns
			cmd []string
		}{
			{n.Netns, []string{"conntrack", "-L", "-p", "udp"}}, {n.Netns, []string{b.iptables() + "-save", "-c"}},
			{n.Netns, []string{"cat", "/proc/net/snmp"}}, {n.Netns, []string{"ip", "link"}}, {n.Netns, []string{"bridge", "fdb", "show", "br", harness.PodBridge}},
			{consumer.Netns, []string{"ip", "neigh"}}, {consumer.Netns, []string{"ip", "route"}},
		} {
			out, err := x.ns.Run(context.Background(), x.cmd[0], x.cmd[1:]...)
			t.Logf("%s: %s (err %v):\n%s", x.ns.Name, strings.Join(x.cmd, " "), err, out)
		}
		rules, _, err := b.view().rules(context.Background(), n.Netns)
		t.Logf("%s: rules of %s (err %v):\n%s", n.Netns.Name, b, err, rules)
	})
	if err := p2.SetReady(t.Context(), true); err != nil {
		t.Fatal(err)
	}
	if err := p1.SetReady(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "reused socket follows the switch to dd-2", wantReused(p2.Name))
	if err := p2.SetReady(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "no producer left: refused", wantReused("refused"))
}

// prober dials the magic address every interval until stopped and records each outcome.
type prober struct {
	mu       sync.Mutex
	outcomes map[string]int
	stop     chan struct{}
	done     chan struct{}
}

func (b backend) startProber(ctx context.Context, ns *harness.Netns, interval time.Duration) *prober {
	p := &prober{outcomes: map[string]int{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			got := b.tcp(ctx, ns, apmPort)
			p.mu.Lock()
			p.outcomes[got]++
			p.mu.Unlock()
		}
	}()
	return p
}

func (p *prober) finish() map[string]int {
	close(p.stop)
	<-p.done
	return p.outcomes
}

func (p *prober) count(outcome string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.outcomes[outcome]
}

// TestAgentNoGapDuringSwitches: a client dialing every 2 ms through none → producer → none and
// producer A → B only ever sees an answer or a refusal: never a timeout or "no route to host".
func TestAgentNoGapDuringSwitches(t *testing.T) { forEachBackend(t, testAgentNoGapDuringSwitches) }

func testAgentNoGapDuringSwitches(t *testing.T, b backend) {
	e := newOneNode(t, b)
	ctx := t.Context()
	eventually(t, 10*time.Second, "refused before any producer", b.onlyAnswers(e.consumer.Netns, "refused"))
	pr := b.startProber(ctx, e.consumer.Netns, 2*time.Millisecond)
	pa := addProducer(t, e.c, e.node, "dd-a", harness.PodOptions{NotReady: true})
	pb := addProducer(t, e.c, e.node, "dd-b", harness.PodOptions{NotReady: true})
	for round := range 3 {
		steps := []struct {
			pod   *harness.Pod
			ready bool
			want  string
		}{
			{pa, true, pa.Name}, {pa, false, "refused"}, // none → A → none
			{pa, true, pa.Name}, {pb, true, ""}, {pa, false, pb.Name}, // A → B
			{pb, false, "refused"},
		}
		for _, s := range steps {
			before := pr.count(s.want)
			if err := s.pod.SetReady(ctx, s.ready); err != nil {
				t.Fatal(err)
			}
			if s.want == "" {
				continue
			}
			eventually(t, 5*time.Second, fmt.Sprintf("round %d: %s ready=%v", round, s.pod.Name, s.ready), func(context.Context) error {
				if pr.count(s.want) < before+3 {
					return fmt.Errorf("prober has not seen %q yet", s.want)
				}
				return nil
			})
		}
	}
	got := pr.finish()
	for outcome, n := range got {
		if outcome != pa.Name && outcome != pb.Name && outcome != "refused" {
			t.Errorf("prober saw %q %d times; only answers and refusals are allowed (all: %v)", outcome, n, got)
		}
	}
	t.Logf("prober outcomes: %v", got)
}

// TestAgentRestartLosesNothing: the agent is stopped (SIGTERM) and killed (SIGKILL) and restarted
// while a client opens connections continuously: not one fails. The rules stay in place.
func TestAgentRestartLosesNothing(t *testing.T) { forEachBackend(t, testAgentRestartLosesNothing) }

func testAgentRestartLosesNothing(t *testing.T, b backend) {
	e := newOneNode(t, b)
	p := addProducer(t, e.c, e.node, "dd-1", harness.PodOptions{})
	eventually(t, 10*time.Second, "served", b.onlyAnswers(e.consumer.Netns, p.Name))
	pr := b.startProber(t.Context(), e.consumer.Netns, 5*time.Millisecond)
	for _, stop := range []func(){func() { _ = e.agent.Stop() }, e.agent.Kill} {
		before := pr.count(p.Name)
		stop()
		e.restartAgent(t)
		eventually(t, 10*time.Second, "new agent synced and traffic flowing", func(context.Context) error {
			if pr.count(p.Name) < before+50 {
				return fmt.Errorf("%d answers since the restart", pr.count(p.Name)-before)
			}
			return nil
		})
	}
	got := pr.finish()
	if len(got) != 1 || got[p.Name] == 0 {
		t.Errorf("outcomes across restarts: %v, want only answers from %s", got, p.Name)
	}
}
