package e2e

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
	"github.com/magic-ip/magic-ip/test/harness"
)

// TestAgentHairpin: a producer reaching its own magic IP is answered, whether the rules pick
// itself (hairpin: masqueraded, as kube-proxy does) or another local producer, on a routed node
// (ptp/Calico-style veths with /32 routes) and on a bridge node (cni0 ports in hairpin mode, as the
// CNI bridge plugin's hairpinMode: true sets them), with one and with two local producers.
// Consumers, and a producer answered by another producer, keep their own source address.
func TestAgentHairpin(t *testing.T) { forEachBackend(t, testAgentHairpin) }

func testAgentHairpin(t *testing.T, b backend) {
	cp := harness.StartControlPlane(t)
	routed := b.cluster(t, cp, harness.ClusterOptions{Nodes: 2, Routed: true, Name: "hairpin-r"})
	bridged := b.cluster(t, cp, harness.ClusterOptions{Nodes: 2, Name: "hairpin-b"})
	if err := cp.Client.Create(t.Context(), b.magicIP("datadog")); err != nil {
		t.Fatal(err)
	}
	type nodeCase struct {
		name    string
		c       *harness.Cluster
		n       *harness.Node
		nProds  int
		self    string // the source a producer's own hairpinned connection shows
		prods   []*harness.Pod
		consume *harness.Pod
	}
	var cases []*nodeCase
	for _, c := range []*harness.Cluster{routed, bridged} {
		for i, n := range c.Nodes {
			nc := &nodeCase{name: fmt.Sprintf("%s/%d producers", c.Name, i+1), c: c, n: n, nProds: i + 1, self: b.gateway(n).String()}
			for j := range nc.nProds {
				p := c.AddPod(n, "datadog", fmt.Sprintf("%s-dd-%d", n.Name, j+1), map[string]string{"app": "dd"}, harness.PodOptions{})
				p.Netns.ServeTCPShowingPeer(t, apmPort, p.Name)
				nc.prods = append(nc.prods, p)
			}
			nc.consume = c.AddPod(n, "app", n.Name+"-consumer", nil, harness.PodOptions{})
			startAgent(t, c, n, b.flags()...)
			cases = append(cases, nc)
		}
	}
	for _, nc := range cases {
		t.Run(nc.name, func(t *testing.T) {
			eventually(t, 10*time.Second, "consumer served", func(ctx context.Context) error {
				_, err := b.greeting(ctx, nc.consume.Netns)
				return err
			})
			for range 10 {
				g, err := b.greeting(t.Context(), nc.consume.Netns)
				if err != nil {
					t.Fatalf("consumer: %v", err)
				}
				if _, peer := harness.SplitGreeting(g); peer != b.podIP(nc.consume).String() {
					t.Fatalf("consumer %s seen as %s by the producer (%q): consumers must keep their source address", b.podIP(nc.consume), peer, g)
				}
			}
			for _, p := range nc.prods {
				seen := map[string]int{}
				for range 30 {
					g, err := b.greeting(t.Context(), p.Netns)
					if err != nil {
						t.Fatalf("producer %s reaching its own magic IP (%v so far): %v", p.Name, seen, err)
					}
					name, peer := harness.SplitGreeting(g)
					want := b.podIP(p).String() // answered by another producer: the source is kept
					if name == p.Name {
						want = nc.self // answered by itself: masqueraded to the node's gateway address
					}
					if peer != want {
						t.Fatalf("producer %s answered by %s seen from %s, want %s", p.Name, name, peer, want)
					}
					seen[name]++
				}
				if seen[p.Name] == 0 || len(seen) != nc.nProds {
					t.Errorf("producer %s: answers %v, want itself and every other local producer (30 tries)", p.Name, seen)
				}
			}
		})
	}
}

// greeting connects to the magic address's apm port from ns (1 s budget) and returns the greeting.
func (b backend) greeting(ctx context.Context, ns *harness.Netns) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	g, err := ns.DialTCP(ctx, b.hostPort(apmPort))
	if err != nil {
		return "", fmt.Errorf("%s: %s", harness.Outcome(err), err)
	}
	return g, nil
}

// TestAgentHostClientRefused: a client in the node's own namespace (a host-network pod) is refused
// at once when its node has no producer — the TCP reset and the ICMP error the node sends it are
// addressed to the magic IP too and must not be caught by the rules that refuse new connections —
// and served when there is one.
func TestAgentHostClientRefused(t *testing.T) { forEachBackend(t, testAgentHostClientRefused) }

func testAgentHostClientRefused(t *testing.T, b backend) {
	cp := harness.StartControlPlane(t)
	c := b.cluster(t, cp, harness.ClusterOptions{Nodes: 1})
	n := c.Nodes[0]
	host := c.AddPod(n, "app", "host-client", nil, harness.PodOptions{HostNetwork: true})
	if err := cp.Client.Create(t.Context(), b.magicIP("datadog")); err != nil {
		t.Fatal(err)
	}
	startAgent(t, c, n, b.flags()...)
	if err := harness.WaitAgentReady(t.Context(), n.Netns, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	refusedFast := func(step string) {
		t.Helper()
		for _, port := range []int{apmPort, 9999} { // a declared port and an undeclared one
			start := time.Now()
			if got := b.tcp(t.Context(), host.Netns, port); got != "refused" || time.Since(start) > 500*time.Millisecond {
				t.Errorf("%s: TCP %d from the node: %q after %s, want refused at once", step, port, got, time.Since(start))
			}
		}
		if got := b.udp(t.Context(), host.Netns, statsPort); got != "refused" {
			t.Errorf("%s: UDP from the node: %q, want refused", step, got)
		}
	}
	refusedFast("no producer")
	prod := addProducer(t, c, n, "dd", harness.PodOptions{})
	eventually(t, 10*time.Second, "host client served by the new producer", b.wantTCP(host.Netns, apmPort, prod.Name))
	eventually(t, 5*time.Second, "host client served over UDP", b.wantUDP(host.Netns, statsPort, prod.Name))
	if got := b.tcp(t.Context(), host.Netns, 9999); got != "refused" {
		t.Errorf("with a producer: undeclared port from the node: %q, want refused", got)
	}
	if err := prod.Delete(t.Context()); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "refused again once the producer is gone", b.wantTCP(host.Netns, apmPort, "refused"))
	refusedFast("producer gone")
}

// TestAgentUDPFlushOnRemoval: a client that keeps its UDP socket (DogStatsD) stops reaching the old
// producer as soon as its service goes away, whatever the way: the MagicIP deleted, its port
// changed, or its interface lost. Another MagicIP keeps the address on the node meanwhile (when the
// address itself leaves the node, the kernel drops such flows on its own: seen here, the entry was
// gone within a second even before the fix); before the fix only services that still existed were
// flushed, and the stale conntrack entry kept the flow going to the old producer as long as it was
// used.
func TestAgentUDPFlushOnRemoval(t *testing.T) { forEachBackend(t, testAgentUDPFlushOnRemoval) }

func testAgentUDPFlushOnRemoval(t *testing.T, b backend) {
	cp := harness.StartControlPlane(t)
	c := b.cluster(t, cp, harness.ClusterOptions{Nodes: 1})
	n := c.Nodes[0]
	prod := addProducer(t, c, n, "dd", harness.PodOptions{})
	consumer := c.AddPod(n, "app", "consumer", nil, harness.PodOptions{})
	// Each step's refusals would use up the ICMP budget per destination (see TestAgentUDPSwitch).
	b.liftICMPRateLimit(t, n.Netns)
	keeper := b.magicIP("apm") // holds the address on the node throughout
	keeper.Spec.Ports = keeper.Spec.Ports[:1]
	if err := cp.Client.Create(t.Context(), keeper); err != nil {
		t.Fatal(err)
	}
	startAgent(t, c, n, b.flags()...)
	steps := []struct {
		name   string
		remove func(ctx context.Context, m *v1alpha1.MagicIP) error
	}{
		{"MagicIP deleted", func(ctx context.Context, m *v1alpha1.MagicIP) error { return cp.Client.Delete(ctx, m) }},
		{"UDP port changed", func(ctx context.Context, m *v1alpha1.MagicIP) error {
			m.Spec.Ports[0].Port = statsPort + 100
			return cp.Client.Update(ctx, m)
		}},
		{"interface lost", func(ctx context.Context, m *v1alpha1.MagicIP) error {
			m.Spec.HostInterface = "missing0"
			return cp.Client.Update(ctx, m)
		}},
		{"MagicIP and address gone", func(ctx context.Context, m *v1alpha1.MagicIP) error {
			return errors.Join(cp.Client.Delete(ctx, keeper), cp.Client.Delete(ctx, m))
		}},
	}
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			m := b.magicIP("stats")
			m.Spec.Ports = m.Spec.Ports[1:]
			if err := cp.Client.Create(t.Context(), m); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { deleteMagicIP(t, cp, m.Name) })
			u, err := consumer.Netns.DialUDP(b.hostPort(statsPort))
			if err != nil {
				t.Fatal(err)
			}
			defer u.Close()
			exchange := func(ctx context.Context) string { return kept(ctx, u, 300*time.Millisecond) }
			eventually(t, 10*time.Second, "kept socket served", func(ctx context.Context) error {
				if got := exchange(ctx); got != prod.Name {
					return fmt.Errorf("got %q", got)
				}
				return nil
			})
			if err := step.remove(t.Context(), m); err != nil {
				t.Fatal(err)
			}
			// The socket keeps sending, as a DogStatsD client does: its flow must stop reaching
			// the producer anyway.
			eventually(t, 10*time.Second, "kept socket no longer reaches the old producer", func(ctx context.Context) error {
				if got := exchange(ctx); got == prod.Name {
					return fmt.Errorf("still answered by %s", got)
				}
				return nil
			})
			for range 5 {
				if got := exchange(t.Context()); got == prod.Name {
					t.Fatalf("answered by %s again after the service went away", got)
				}
			}
		})
	}
}

// deleteMagicIP deletes a MagicIP and waits until the API no longer has it.
func deleteMagicIP(t *testing.T, cp *harness.ControlPlane, name string) {
	t.Helper()
	ctx := context.WithoutCancel(t.Context())
	m := &v1alpha1.MagicIP{}
	m.Name = name
	if err := client.IgnoreNotFound(cp.Client.Delete(ctx, m)); err != nil {
		t.Errorf("delete MagicIP %s: %v", name, err)
		return
	}
	err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		err := cp.Client.Get(ctx, client.ObjectKey{Name: name}, &v1alpha1.MagicIP{})
		return client.IgnoreNotFound(err) == nil && err != nil, nil
	})
	if err != nil {
		t.Errorf("MagicIP %s still there: %v", name, err)
	}
}

// TestAgentInterfaceFailureIsolated: two MagicIPs share an address on two interfaces; the second
// interface does not exist. The first MagicIP keeps its rules and its producer, the second's port
// is refused like any undeclared port (the address stays on cni0 and never without its verdicts),
// and the second is reported.
func TestAgentInterfaceFailureIsolated(t *testing.T) {
	forEachBackend(t, testAgentInterfaceFailureIsolated)
}

func testAgentInterfaceFailureIsolated(t *testing.T, b backend) {
	cp := harness.StartControlPlane(t)
	c := b.cluster(t, cp, harness.ClusterOptions{Nodes: 1})
	n := c.Nodes[0]
	prod := addProducer(t, c, n, "dd", harness.PodOptions{})
	consumer := c.AddPod(n, "app", "consumer", nil, harness.PodOptions{})
	apm := b.magicIP("apm")
	apm.Spec.Ports = apm.Spec.Ports[:1]
	stats := b.magicIP("stats")
	stats.Spec.Ports = stats.Spec.Ports[1:]
	stats.Spec.HostInterface = "missing0"
	for _, m := range []*v1alpha1.MagicIP{apm, stats} {
		if err := cp.Client.Create(t.Context(), m); err != nil {
			t.Fatal(err)
		}
	}
	startAgent(t, c, n, b.flags()...)
	eventually(t, 10*time.Second, "the MagicIP on the working interface is served", b.wantTCP(consumer.Netns, apmPort, prod.Name))
	eventually(t, 5*time.Second, "the one on the missing interface is refused", b.wantUDP(consumer.Netns, statsPort, "refused"))
	if got := b.tcp(t.Context(), consumer.Netns, 9999); got != "refused" {
		t.Errorf("undeclared port: %q, want refused", got)
	}
	eventually(t, 10*time.Second, "the failing MagicIP is reported", wantAgentEvent(c, "stats", "InterfaceUnavailable", "missing0"))
}
