package e2e

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
	"github.com/magic-ip/magic-ip/test/harness"
)

// TestAgentNodeLocal: two nodes with a producer each; consumers on each node reach their own
// node's producer over TCP and UDP, the node itself reaches it too, a node without producer
// refuses at once, and a neighbour on the uplink never gets through.
func TestAgentNodeLocal(t *testing.T) { forEachDatapath(t, testAgentNodeLocal) }

func testAgentNodeLocal(t *testing.T, dp []string) {
	cp := harness.StartControlPlane(t)
	c := harness.NewCluster(t, cp, harness.ClusterOptions{Nodes: 3})
	a, b, empty := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	prodA := addProducer(t, c, a, "dd-a", harness.PodOptions{})
	prodB := addProducer(t, c, b, "dd-b", harness.PodOptions{})
	consA := c.AddPod(a, "app", "consumer-a", nil, harness.PodOptions{})
	consB := c.AddPod(b, "app", "consumer-b", nil, harness.PodOptions{})
	consE := c.AddPod(empty, "app", "consumer-e", nil, harness.PodOptions{})
	if err := cp.Client.Create(t.Context(), datadogMagicIP("datadog")); err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes {
		startAgent(t, c, n, dp...)
	}
	eventually(t, 10*time.Second, "consumer on A reaches A's producer", wantTCP(consA.Netns, apmPort, prodA.Name))
	eventually(t, 10*time.Second, "consumer on B reaches B's producer", wantTCP(consB.Netns, apmPort, prodB.Name))
	eventually(t, 5*time.Second, "UDP on A", wantUDP(consA.Netns, statsPort, prodA.Name))
	eventually(t, 5*time.Second, "UDP on B", wantUDP(consB.Netns, statsPort, prodB.Name))
	eventually(t, 5*time.Second, "node A itself reaches its producer", wantTCP(a.Netns, apmPort, prodA.Name))
	eventually(t, 5*time.Second, "node without producer refuses", wantTCP(consE.Netns, apmPort, "refused"))
	// The node's record names the datapath in use (what `kubectl magic-ip status` shows).
	eventually(t, 5*time.Second, "node A's record names the datapath "+dp[1], func(ctx context.Context) error {
		var rec v1alpha1.MagicIPNode
		if err := cp.Client.Get(ctx, client.ObjectKey{Name: a.Name}, &rec); err != nil {
			return err
		}
		if rec.Datapath != dp[1] {
			return fmt.Errorf("record datapath %q, want %q", rec.Datapath, dp[1])
		}
		return nil
	})

	// Refused means at once, not after a timeout.
	start := time.Now()
	if got := tcpOutcome(t.Context(), consE.Netns, magicAddr, apmPort); got != "refused" || time.Since(start) > 500*time.Millisecond {
		t.Errorf("no local producer: %q after %s, want refused well under a second", got, time.Since(start))
	}
	if got := udpOutcome(t.Context(), consE.Netns, magicAddr, statsPort); got != "refused" {
		t.Errorf("no local producer, UDP: %q, want refused (ICMP port unreachable)", got)
	}
	// Many connections from one consumer: always its own node's producer.
	for range 20 {
		if got := tcpOutcome(t.Context(), consB.Netns, magicAddr, apmPort); got != prodB.Name {
			t.Fatalf("consumer on B answered by %q, want %s", got, prodB.Name)
		}
	}
	// A neighbour on node A's uplink with a route to the magic IP through A: never served.
	out := c.AddOutside(a, &net.IPNet{IP: net.ParseIP(magicAddr), Mask: net.CIDRMask(32, 32)})
	eventually(t, 10*time.Second, "outside host refused", wantTCP(out.Netns, apmPort, "refused"))
	for range 5 {
		if got := tcpOutcome(t.Context(), out.Netns, magicAddr, apmPort); got != "refused" {
			t.Fatalf("outside host through node A: %q, want refused (never the producer)", got)
		}
	}
}

// TestAgentHostNetworkProducer: a host-network producer (DNAT to the node's address and target
// port) serves pods and the node itself; the bridge sysctl the agent needs is switched on, and
// /readyz reports ready after the first sync.
func TestAgentHostNetworkProducer(t *testing.T) { forEachDatapath(t, testAgentHostNetworkProducer) }

func testAgentHostNetworkProducer(t *testing.T, dp []string) {
	cp := harness.StartControlPlane(t)
	c := harness.NewCluster(t, cp, harness.ClusterOptions{Nodes: 1})
	n := c.Nodes[0]
	if err := n.Netns.Sysctl("net.bridge.bridge-nf-call-iptables", "0"); err != nil {
		t.Fatal(err)
	}
	prod := addProducer(t, c, n, "dd-host", harness.PodOptions{HostNetwork: true})
	consumer := c.AddPod(n, "app", "consumer", nil, harness.PodOptions{})
	if err := cp.Client.Create(t.Context(), datadogMagicIP("datadog")); err != nil {
		t.Fatal(err)
	}
	startAgent(t, c, n, dp...)
	eventually(t, 10*time.Second, "pod reaches the host-network producer", wantTCP(consumer.Netns, apmPort, prod.Name))
	eventually(t, 5*time.Second, "UDP too", wantUDP(consumer.Netns, statsPort, prod.Name))
	eventually(t, 5*time.Second, "the node itself too", wantTCP(n.Netns, apmPort, prod.Name))
	if v, err := n.Netns.ReadSysctl("net.bridge.bridge-nf-call-iptables"); err != nil || v != "1" {
		t.Errorf("bridge-nf-call-iptables = %q (err %v), want the agent to set 1", v, err)
	}
	// Ready once that first sync has finished (traffic may flow a moment before: the restore comes first).
	if err := harness.WaitAgentReady(t.Context(), n.Netns, 5*time.Second); err != nil {
		t.Errorf("/readyz: not 200 after the first sync: %v", err)
	}
}
