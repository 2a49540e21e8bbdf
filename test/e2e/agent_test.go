package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
	"github.com/magic-ip/magic-ip/test/harness"
)

// TestAgentNodeLocal: two nodes with a producer each; consumers on each node reach their own
// node's producer over TCP and UDP, the node itself reaches it too, a node without producer
// refuses at once, and a neighbour on the uplink never gets through.
func TestAgentNodeLocal(t *testing.T) { forEachBackend(t, testAgentNodeLocal) }

func testAgentNodeLocal(t *testing.T, b backend) {
	cp := harness.StartControlPlane(t)
	c := b.cluster(t, cp, harness.ClusterOptions{Nodes: 3})
	nodeA, nodeB, empty := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	prodA := addProducer(t, c, nodeA, "dd-a", harness.PodOptions{})
	prodB := addProducer(t, c, nodeB, "dd-b", harness.PodOptions{})
	consA := c.AddPod(nodeA, "app", "consumer-a", nil, harness.PodOptions{})
	consB := c.AddPod(nodeB, "app", "consumer-b", nil, harness.PodOptions{})
	consE := c.AddPod(empty, "app", "consumer-e", nil, harness.PodOptions{})
	if err := cp.Client.Create(t.Context(), b.magicIP("datadog")); err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes {
		startAgent(t, c, n, b.flags()...)
	}
	eventually(t, 10*time.Second, "consumer on A reaches A's producer", b.wantTCP(consA.Netns, apmPort, prodA.Name))
	eventually(t, 10*time.Second, "consumer on B reaches B's producer", b.wantTCP(consB.Netns, apmPort, prodB.Name))
	eventually(t, 5*time.Second, "UDP on A", b.wantUDP(consA.Netns, statsPort, prodA.Name))
	eventually(t, 5*time.Second, "UDP on B", b.wantUDP(consB.Netns, statsPort, prodB.Name))
	eventually(t, 5*time.Second, "node A itself reaches its producer", b.wantTCP(nodeA.Netns, apmPort, prodA.Name))
	eventually(t, 5*time.Second, "node without producer refuses", b.wantTCP(consE.Netns, apmPort, "refused"))
	// The node's record names the datapath in use (what `kubectl magic-ip status` shows).
	eventually(t, 5*time.Second, "node A's record names the datapath "+b.datapath, func(ctx context.Context) error {
		var rec v1alpha1.MagicIPNode
		if err := cp.Client.Get(ctx, client.ObjectKey{Name: nodeA.Name}, &rec); err != nil {
			return err
		}
		if rec.Datapath != b.datapath {
			return fmt.Errorf("record datapath %q, want %q", rec.Datapath, b.datapath)
		}
		return nil
	})

	// Refused means at once, not after a timeout.
	start := time.Now()
	if got := b.tcp(t.Context(), consE.Netns, apmPort); got != "refused" || time.Since(start) > 500*time.Millisecond {
		t.Errorf("no local producer: %q after %s, want refused well under a second", got, time.Since(start))
	}
	if got := b.udp(t.Context(), consE.Netns, statsPort); got != "refused" {
		t.Errorf("no local producer, UDP: %q, want refused (ICMP or ICMPv6 port unreachable)", got)
	}
	// Many connections from one consumer: always its own node's producer.
	for range 20 {
		if got := b.tcp(t.Context(), consB.Netns, apmPort); got != prodB.Name {
			t.Fatalf("consumer on B answered by %q, want %s", got, prodB.Name)
		}
	}
	// A neighbour on node A's uplink with a route to the magic IP through A: never served.
	out := c.AddOutside(nodeA, b.route())
	eventually(t, 10*time.Second, "outside host refused", b.wantTCP(out.Netns, apmPort, "refused"))
	for range 5 {
		if got := b.tcp(t.Context(), out.Netns, apmPort); got != "refused" {
			t.Fatalf("outside host through node A: %q, want refused (never the producer)", got)
		}
	}
}

// TestAgentHostNetworkProducer: a host-network producer (DNAT to the node's address and target
// port) serves pods and the node itself; the bridge sysctl the agent needs is switched on, and
// /readyz reports ready after the first sync.
func TestAgentHostNetworkProducer(t *testing.T) { forEachBackend(t, testAgentHostNetworkProducer) }

func testAgentHostNetworkProducer(t *testing.T, b backend) {
	cp := harness.StartControlPlane(t)
	c := b.cluster(t, cp, harness.ClusterOptions{Nodes: 1})
	n := c.Nodes[0]
	bridgeNF := "net.bridge.bridge-nf-call-" + b.iptables()
	if err := n.Netns.Sysctl(bridgeNF, "0"); err != nil {
		t.Fatal(err)
	}
	prod := addProducer(t, c, n, "dd-host", harness.PodOptions{HostNetwork: true})
	consumer := c.AddPod(n, "app", "consumer", nil, harness.PodOptions{})
	if err := cp.Client.Create(t.Context(), b.magicIP("datadog")); err != nil {
		t.Fatal(err)
	}
	startAgent(t, c, n, b.flags()...)
	eventually(t, 10*time.Second, "pod reaches the host-network producer", b.wantTCP(consumer.Netns, apmPort, prod.Name))
	eventually(t, 5*time.Second, "UDP too", b.wantUDP(consumer.Netns, statsPort, prod.Name))
	eventually(t, 5*time.Second, "the node itself too", b.wantTCP(n.Netns, apmPort, prod.Name))
	if v, err := n.Netns.ReadSysctl(bridgeNF); err != nil || v != "1" {
		t.Errorf("%s = %q (err %v), want the agent to set 1", bridgeNF, v, err)
	}
	// Ready once that first sync has finished (traffic may flow a moment before: the restore comes first).
	if err := harness.WaitAgentReady(t.Context(), n.Netns, 5*time.Second); err != nil {
		t.Errorf("/readyz: not 200 after the first sync: %v", err)
	}
}
