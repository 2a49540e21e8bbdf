package e2e

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
	"github.com/magic-ip/magic-ip/test/harness"
	"github.com/magic-ip/magic-ip/webhook"
)

// magicAddr6 is the IPv6 address of the dual-stack MagicIPs of these tests.
const magicAddr6 = "fd00::a9fe:d2d2"

// dualStackNode is one node of TestAgentDualStack with its consumer and producer.
type dualStackNode struct {
	node           *harness.Node
	consumer, prod *harness.Pod
}

// answers is a condition: 10 TCP dials and one UDP exchange from ns to addr all reach want.
func answers(ns *harness.Netns, addr, want string) func(context.Context) error {
	return func(ctx context.Context) error {
		got := map[string]bool{udpOutcome(ctx, ns, addr, statsPort): true}
		for range 10 {
			got[tcpOutcome(ctx, ns, addr, apmPort)] = true
		}
		if len(got) != 1 || !got[want] {
			return fmt.Errorf("%s: outcomes %v, want only %q", addr, got, want)
		}
		return nil
	}
}

// TestAgentDualStack: a dual-stack MagicIP on a cluster of two dual-stack nodes, an IPv6-only node
// and a node without IPv6, with each datapath. On the dual-stack nodes both addresses answer, TCP
// and UDP, each from the node's own producer only (node-local per family), a neighbour routing the
// IPv6 address to one is refused (off-node traffic is never redirected), and their records report
// nothing left out; the IPv6-only node serves its IPv6 address and reports the IPv4 one
// unprogrammed; the node without IPv6 serves IPv4 and reports the IPv6 address unprogrammed (and
// carries no IPv6 magic address), and its record holds still over later syncs (no flapping).
func TestAgentDualStack(t *testing.T) { forEachDatapath(t, testAgentDualStack) }

func testAgentDualStack(t *testing.T, dp []string) {
	cp := harness.StartControlPlane(t)
	stacks := []harness.NodeStack{harness.DualStack, harness.DualStack, harness.IPv6Only, harness.NoIPv6}
	c := harness.NewCluster(t, cp, harness.ClusterOptions{Nodes: len(stacks), Stacks: stacks})
	dual := datadogMagicIP("datadog")
	dual.Spec.IPv6Address = magicAddr6
	if err := cp.Client.Create(t.Context(), dual); err != nil {
		t.Fatal(err)
	}
	nodes := make([]dualStackNode, len(c.Nodes))
	for i, n := range c.Nodes {
		nodes[i] = dualStackNode{node: n, consumer: c.AddPod(n, "app", n.Name+"-consumer", nil, harness.PodOptions{}),
			prod: addProducer(t, c, n, n.Name+"-dd", harness.PodOptions{})}
		startAgent(t, c, n, append([]string{"--metrics-bind-address", "127.0.0.1:9402"}, dp...)...)
	}
	d1, d2, v6only, no6 := nodes[0], nodes[1], nodes[2], nodes[3]
	for _, n := range []dualStackNode{d1, d2} {
		eventually(t, 10*time.Second, n.node.Name+": IPv4 from its own producer", answers(n.consumer.Netns, magicAddr, n.prod.Name))
		eventually(t, 10*time.Second, n.node.Name+": IPv6 from its own producer", answers(n.consumer.Netns, magicAddr6, n.prod.Name))
		checkLeftOut(t, cp, n.node, nil)
	}
	out := c.AddOutside(d1.node, &net.IPNet{IP: net.ParseIP(magicAddr6), Mask: net.CIDRMask(128, 128)})
	eventually(t, 10*time.Second, "a neighbour routing the IPv6 address to a node: refused, never redirected", answers(out.Netns, magicAddr6, "refused"))
	eventually(t, 10*time.Second, "IPv6-only node: IPv6 from its own producer", answers(v6only.consumer.Netns, magicAddr6, v6only.prod.Name))
	ip := v6only.node.IP.String()
	checkLeftOut(t, cp, v6only.node, &v1alpha1.UnprogrammedAddress{Address: magicAddr, Reason: v1alpha1.ReasonAddressFamilyNotSupported,
		Message: "address " + magicAddr + " is IPv4 and this node does not program IPv4: this node is IPv6-only (--node-ip " + ip + ": [" + ip + "]); the address " + magicAddr6 + " is served"})
	checkNoIPv6Node(t, cp, no6)
}

// checkNoIPv6Node: the node without IPv6 serves IPv4, reports the IPv6 address unprogrammed with
// why, does not carry it, and its record holds still over later syncs (no flapping).
func checkNoIPv6Node(t *testing.T, cp *harness.ControlPlane, no6 dualStackNode) {
	t.Helper()
	eventually(t, 10*time.Second, "node without IPv6: IPv4 from its own producer", answers(no6.consumer.Netns, magicAddr, no6.prod.Name))
	want := &v1alpha1.UnprogrammedAddress{Address: magicAddr6, Reason: v1alpha1.ReasonAddressFamilyNotSupported,
		Message: "address " + magicAddr6 + " is IPv6 and this node does not program IPv6: IPv6 is disabled on this node (net.ipv6.conf.all.disable_ipv6=1); the address " + magicAddr + " is served"}
	version := checkLeftOut(t, cp, no6.node, want)
	waitSyncs(t, no6.node, 3) // with the 2 s resync: full syncs too
	if v := checkLeftOut(t, cp, no6.node, want); v != version {
		t.Errorf("node without IPv6: record rewritten over 3 idle syncs (resourceVersion %s -> %s)", version, v)
	}
	eventually(t, 5*time.Second, "node without IPv6: IPv4 still served", answers(no6.consumer.Netns, magicAddr, no6.prod.Name))
	if out, err := no6.node.Netns.Run(t.Context(), "ip", "-o", "addr", "show"); err != nil || strings.Contains(out, magicAddr6) || !strings.Contains(out, magicAddr) {
		t.Errorf("node without IPv6: want %s and not %s (err %v):\n%s", magicAddr, magicAddr6, err, out)
	}
}

// checkLeftOut waits until node's record says the MagicIP datadog is programmed by the node's
// producer with exactly want left out (nil: nothing), and returns the record's resourceVersion.
func checkLeftOut(t *testing.T, cp *harness.ControlPlane, node *harness.Node, want *v1alpha1.UnprogrammedAddress) string {
	t.Helper()
	rec := &v1alpha1.MagicIPNode{}
	eventually(t, 10*time.Second, node.Name+": record", func(ctx context.Context) error {
		if err := cp.Client.Get(ctx, client.ObjectKey{Name: node.Name}, rec); err != nil {
			return err
		}
		e := rec.Find("datadog")
		if e == nil || !e.Programmed || len(e.Producers) != 1 {
			return fmt.Errorf("entry %+v, want programmed with one producer", e)
		}
		if got := e.UnprogrammedAddresses; (want == nil) != (len(got) == 0) || (want != nil && (len(got) != 1 || got[0] != *want)) {
			return fmt.Errorf("unprogrammed addresses %+v, want %+v", got, want)
		}
		return nil
	})
	return rec.ResourceVersion
}

// TestAgentDualStackNodeCIDR: with --detect-local-mode=NodeCIDR, each family's magic address is
// redirected for sources in the Node's pod CIDR of that family (spec.podCIDRs lists both): the
// node's pod reaches its producer over IPv4 and IPv6, a neighbour routing the IPv6 address to the
// node is refused.
func TestAgentDualStackNodeCIDR(t *testing.T) { forEachDatapath(t, testAgentDualStackNodeCIDR) }

func testAgentDualStackNodeCIDR(t *testing.T, dp []string) {
	cp := harness.StartControlPlane(t)
	c := harness.NewCluster(t, cp, harness.ClusterOptions{Nodes: 1, Stacks: []harness.NodeStack{harness.DualStack}})
	n := c.Nodes[0]
	dual := datadogMagicIP("datadog")
	dual.Spec.IPv6Address = magicAddr6
	if err := cp.Client.Create(t.Context(), dual); err != nil {
		t.Fatal(err)
	}
	consumer := c.AddPod(n, "app", "consumer", nil, harness.PodOptions{})
	p := addProducer(t, c, n, "dd-1", harness.PodOptions{})
	startAgent(t, c, n, append([]string{"--detect-local-mode=NodeCIDR"}, dp...)...)
	eventually(t, 10*time.Second, "IPv4 from the producer", answers(consumer.Netns, magicAddr, p.Name))
	eventually(t, 10*time.Second, "IPv6 from the producer", answers(consumer.Netns, magicAddr6, p.Name))
	out := c.AddOutside(n, &net.IPNet{IP: net.ParseIP(magicAddr6), Mask: net.CIDRMask(128, 128)})
	eventually(t, 10*time.Second, "a neighbour routing the IPv6 address: refused", answers(out.Netns, magicAddr6, "refused"))
}

// TestAgentDualStackWebhook: the real agents' records drive the webhook's view of a dual-stack
// MagicIP. With an agent on a dual-stack node only, its status says IPv6Programmed=True and a new
// pod gets a hostAliases entry per family; once the agent of a node without IPv6 programs it too
// (IPv4 only), IPv6Programmed=False names that node and why, and new pods get the IPv4 entry only.
func TestAgentDualStackWebhook(t *testing.T) {
	cp := harness.StartControlPlane(t)
	c := harness.NewCluster(t, cp, harness.ClusterOptions{Nodes: 2, Stacks: []harness.NodeStack{harness.DualStack, harness.NoIPv6}})
	harness.StartWebhook(t, cp, webhookBin)
	ctx := t.Context()
	if err := c.EnsureNamespace(ctx, "apps", map[string]string{"magic-ip.dev/inject": "enabled"}); err != nil {
		t.Fatal(err)
	}
	dual := datadogMagicIP("datadog")
	dual.Spec.IPv6Address = magicAddr6
	dual.Spec.Inject.Hostnames = []string{"datadog.node.local"}
	if err := cp.Client.Create(ctx, dual); err != nil {
		t.Fatal(err)
	}
	startAgent(t, c, c.Nodes[0])
	eventually(t, 20*time.Second, "IPv6Programmed=True", wantMIPCondition(cp.Client, "datadog", webhook.ConditionIPv6Programmed, metav1.ConditionTrue, magicAddr6))
	eventually(t, 10*time.Second, "a hostAliases entry per family", podAliases(cp.Client, map[string][]string{magicAddr: {"datadog.node.local"}, magicAddr6: {"datadog.node.local"}}))

	startAgent(t, c, c.Nodes[1])
	eventually(t, 20*time.Second, "IPv6Programmed=False naming the node without IPv6", wantMIPCondition(cp.Client, "datadog", webhook.ConditionIPv6Programmed,
		metav1.ConditionFalse, c.Nodes[1].Name, magicAddr6, "disable_ipv6=1"))
	eventually(t, 10*time.Second, "the IPv4 entry only", podAliases(cp.Client, map[string][]string{magicAddr: {"datadog.node.local"}}))
}
