package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/magic-ip/magic-ip/agent"
	"github.com/magic-ip/magic-ip/api/v1alpha1"
	"github.com/magic-ip/magic-ip/test/harness"
)

// dialEach makes n connections of protocol to addr:port from ns, each with a 1 s budget, and fails
// unless every one ends with want.
func dialEach(t *testing.T, ns *harness.Netns, n int, protocol, addr string, port int, want string) {
	t.Helper()
	outcome := tcpOutcome
	if protocol == "UDP" {
		outcome = udpOutcome
	}
	for i := range n {
		if got := outcome(t.Context(), ns, addr, port); got != want {
			t.Fatalf("%s connection %d of %d to %s port %d: %q, want %q", protocol, i+1, n, addr, port, got, want)
		}
	}
}

// TestAgentNoProducerCountersDualStack: on a dual-stack node without a producer, the refusals of
// a dual-stack MagicIP are counted for both families, in the same series (summed): N TCP and N UDP
// connections over IPv4 and as many over IPv6 make 2N per port. IPv6 connections made before a
// rewrite of the IPv6 verdict rules (another dual-stack MagicIP) are kept, and so are those made
// before the last IPv6 address goes (the iptables datapath then empties ip6tables of its rules).
// Run once per datapath.
func TestAgentNoProducerCountersDualStack(t *testing.T) {
	forEachDatapath(t, testNoProducerCountersDualStack)
}

func testNoProducerCountersDualStack(t *testing.T, dp []string) {
	const n = 5
	cp := harness.StartControlPlane(t)
	c := harness.NewCluster(t, cp, harness.ClusterOptions{Nodes: 1, Stacks: []harness.NodeStack{harness.DualStack}})
	node := c.Nodes[0]
	createDualStack(t, cp)
	consumer := c.AddPod(node, "app", "consumer", nil, harness.PodOptions{})
	// Each UDP refusal is an ICMP error to the same consumer: lift the rate limits of both families.
	for _, s := range []string{"net.ipv4.icmp_ratelimit", "net.ipv6.icmp.ratelimit"} {
		if err := node.Netns.Sysctl(s, "0"); err != nil {
			t.Fatal(err)
		}
	}
	startAgent(t, c, node, append([]string{"--metrics-bind-address", "127.0.0.1:9402", "--counters-min-interval", "1s"}, dp...)...)
	apm, stats := noProducer("datadog", "apm", "TCP", "refused"), noProducer("datadog", "dogstatsd", "UDP", "refused")
	both := func(apmWant, statsWant float64) func(context.Context) error {
		return func(ctx context.Context) error {
			return errors.Join(wantMetric(node, apm, apmWant)(ctx), wantMetric(node, stats, statsWant)(ctx))
		}
	}
	eventually(t, 10*time.Second, "series at 0 once the rules are written", both(0, 0))
	eventually(t, 10*time.Second, "the IPv6 rules written", rule6(node, dp, magicAddr6+": undeclared port", true))
	for _, addr := range []string{magicAddr, magicAddr6} {
		dialEach(t, consumer.Netns, n, "TCP", addr, apmPort, "refused")
		dialEach(t, consumer.Netns, n, "UDP", addr, statsPort, "refused")
	}
	eventually(t, 5*time.Second, "refused connections of both families counted", both(2*n, 2*n))

	// N more over IPv6, not scraped yet when another dual-stack MagicIP rewrites both verdict chains.
	dialEach(t, consumer.Netns, n, "TCP", magicAddr6, apmPort, "refused")
	other := datadogMagicIP("other")
	other.Spec.Address, other.Spec.IPv6Address = "169.254.210.211", "fd00::a9fe:d2d3"
	other.Spec.Ports = other.Spec.Ports[:1]
	if err := cp.Client.Create(t.Context(), other); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the other MagicIP's IPv6 verdict written", rule6(node, dp, "other:apm: not redirected", true))
	eventually(t, 5*time.Second, "IPv6 connections made before the rewrite counted", both(3*n, 2*n))

	// N more over IPv6, not scraped yet when no MagicIP has an IPv6 address any more.
	deleteMagicIP(t, cp, other.Name)
	eventually(t, 10*time.Second, "the other MagicIP's IPv6 verdict gone", rule6(node, dp, "other:apm: not redirected", false))
	dialEach(t, consumer.Netns, n, "TCP", magicAddr6, apmPort, "refused")
	updateMagicIP(t, cp, "datadog", func(m *v1alpha1.MagicIP) { m.Spec.IPv6Address = "" })
	eventually(t, 10*time.Second, "the IPv6 rules gone", rule6(node, dp, magicAddr6+": undeclared port", false))
	eventually(t, 5*time.Second, "IPv6 connections made before the IPv6 rules went counted", both(4*n, 2*n))
	dialEach(t, consumer.Netns, n, "TCP", magicAddr, apmPort, "refused")
	eventually(t, 5*time.Second, "IPv4 still counted", both(5*n, 2*n))
}

// rule6 is a condition that reads the kernel, not the metrics (a scrape would read the counters
// itself): a rule of ours with comment is in the IPv6 rules of the node (ip6tables-save with
// iptables; table inet magic-ip, both families, with nftables) or not, as want says.
func rule6(n *harness.Node, dp []string, comment string, want bool) func(context.Context) error {
	return func(ctx context.Context) error {
		var text string
		var err error
		if dp[1] == agent.DatapathNftables {
			text, _, err = nftView{}.rules(ctx, n.Netns)
		} else {
			text, err = n.Netns.Run(ctx, "ip6tables-save")
		}
		if err != nil {
			return err
		}
		if strings.Contains(text, comment) != want {
			return fmt.Errorf("rule %q present: %v, want %v in\n%s", comment, !want, want, text)
		}
		return nil
	}
}

// updateMagicIP applies change to the MagicIP name, retrying on conflicts.
func updateMagicIP(t *testing.T, cp *harness.ControlPlane, name string, change func(*v1alpha1.MagicIP)) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		m := &v1alpha1.MagicIP{}
		if err := cp.Client.Get(t.Context(), client.ObjectKey{Name: name}, m); err != nil {
			return err
		}
		change(m)
		return cp.Client.Update(t.Context(), m)
	})
	if err != nil {
		t.Fatalf("update MagicIP %s: %v", name, err)
	}
}

// createDualStack creates the datadog MagicIP with magicAddr6 as its IPv6 address.
func createDualStack(t *testing.T, cp *harness.ControlPlane) {
	t.Helper()
	dual := datadogMagicIP("datadog")
	dual.Spec.IPv6Address = magicAddr6
	if err := cp.Client.Create(t.Context(), dual); err != nil {
		t.Fatal(err)
	}
}
