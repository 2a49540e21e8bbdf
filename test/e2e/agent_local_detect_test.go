package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/magic-ip/magic-ip/agent"
	"github.com/magic-ip/magic-ip/test/harness"
)

// TestAgentLocalDetection: with no flags at all (no --node-ip, no --external-interfaces) the agent
// takes the node's address from its Node object, serves pods and refuses a neighbour that routes
// the magic IP through the node; so does each --detect-local-mode, one agent after the other on
// the same node (each one's rules checked in iptables-save), with a bridge pod and a pod plugged
// as routed CNIs plug them served or refused as the mode says.
func TestAgentLocalDetection(t *testing.T) { forEachBackend(t, testAgentLocalDetection) }

func testAgentLocalDetection(t *testing.T, b backend) {
	cp := harness.StartControlPlane(t)
	c := b.cluster(t, cp, harness.ClusterOptions{Nodes: 1})
	n := c.Nodes[0]
	prod := addProducer(t, c, n, "dd", harness.PodOptions{})
	consumer := c.AddPod(n, "app", "consumer", nil, harness.PodOptions{})
	if err := cp.Client.Create(t.Context(), b.magicIP("datadog")); err != nil {
		t.Fatal(err)
	}
	out := c.AddOutside(n, b.route())
	// A client plugged as Calico plugs pods (its own cali* link, no bridge), from the pod CIDR.
	routed := c.AddRoutedClient(n, "calie2e0")
	clients := func(nss ...*harness.Netns) []*harness.Netns { return nss }
	// rule: per datapath, this mode's rule in MAGIC-IP-PREROUTING or in the chain prerouting of
	// our nftables table.
	rule := func(ipt, nft string) map[string]string {
		return map[string]string{agent.DatapathIptables: ipt, agent.DatapathNftables: nft}
	}
	ip := b.nftFamily() // ip or ip6
	// Both datapaths: after the guard (the packet is addressed to a magic address, or with
	// iptables inside their prefix), one rule per source prefix or interface, none per address.
	toServices := `iifname %q jump services comment "node-local interface"`
	for _, tc := range []struct {
		name            string
		flags           []string
		rule            map[string]string
		served, refused []*harness.Netns
	}{
		{"defaults", nil, rule(fmt.Sprintf(`-A MAGIC-IP-PREROUTING -i %s -m comment --comment "external interface: not node-local" -j RETURN`, harness.UplinkName),
			fmt.Sprintf(`prerouting: iifname %q return comment "external interface: not node-local"`, harness.UplinkName)),
			clients(consumer.Netns, routed.Netns), nil},
		{"NodeCIDR", []string{"--detect-local-mode=NodeCIDR"}, rule(fmt.Sprintf(`-A MAGIC-IP-PREROUTING -s %s -m comment --comment "node-local (NodeCIDR)"`, b.podCIDR(n)),
			fmt.Sprintf(`prerouting: %s saddr %s jump services comment "node-local source"`, ip, b.podCIDR(n))),
			clients(consumer.Netns, routed.Netns), nil},
		{"BridgeInterface", []string{"--detect-local-mode=BridgeInterface", "--pod-bridge-interface", harness.PodBridge}, rule(fmt.Sprintf(`-A MAGIC-IP-PREROUTING -i %s -m comment --comment "node-local (BridgeInterface)"`, harness.PodBridge),
			"prerouting: "+fmt.Sprintf(toServices, harness.PodBridge)),
			clients(consumer.Netns), clients(routed.Netns)},
		// The bridge's pods arrive on cni0 (the veth is a bridge port): not a cali* interface.
		{"InterfaceNamePrefix", []string{"--detect-local-mode=InterfaceNamePrefix", "--pod-interface-name-prefixes", "lxc,cali"}, rule(`-A MAGIC-IP-PREROUTING -i cali+ -m comment --comment "node-local (InterfaceNamePrefix)"`,
			"prerouting: "+fmt.Sprintf(toServices, "cali*")),
			clients(routed.Netns), clients(consumer.Netns)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			proc := harness.StartAgentBare(t, c, n, agentBin, b.flags(tc.flags...)...)
			if err := harness.WaitAgentReady(t.Context(), n.Netns, 15*time.Second); err != nil {
				t.Fatalf("agent not ready: %v\n%s", err, proc.Output())
			}
			for _, ns := range tc.served {
				eventually(t, 5*time.Second, ns.Name+" reaches the producer", b.wantTCP(ns, apmPort, prod.Name))
				eventually(t, 5*time.Second, ns.Name+" reaches the producer over UDP", b.wantUDP(ns, statsPort, prod.Name))
			}
			for _, ns := range append(tc.refused, out.Netns) {
				for range 3 {
					if got := b.tcp(t.Context(), ns, apmPort); got != "refused" {
						t.Fatalf("%s, not node-local in this mode: %q, want refused (never the producer)", ns.Name, got)
					}
				}
			}
			// Ready means the first full sync applied this agent's rules: no wait needed.
			if err := wantRule(b.view(), n.Netns, tc.rule[b.datapath])(t.Context()); err != nil {
				t.Errorf("prerouting rule of this mode: %v", err)
			}
			if err := proc.Stop(); err != nil {
				t.Errorf("agent stop: %v", err)
			}
		})
	}
}

// TestAgentLocalDetectionRefusals: when nothing tells off-node traffic apart, or the chosen mode
// would exempt every pod, the agent exits non-zero at start with a message naming a better mode.
// The Node objects are extra ones the agent is pointed at (--node-name), in a real node's netns.
func TestAgentLocalDetectionRefusals(t *testing.T) {
	forEachBackend(t, testAgentLocalDetectionRefusals)
}

func testAgentLocalDetectionRefusals(t *testing.T, b backend) {
	cp := harness.StartControlPlane(t)
	c := b.cluster(t, cp, harness.ClusterOptions{Nodes: 1})
	n := c.Nodes[0]
	node := func(name, podCIDR string, addrs ...string) string {
		obj := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDR: podCIDR}}
		if podCIDR != "" {
			obj.Spec.PodCIDRs = []string{podCIDR}
		}
		if err := cp.Client.Create(t.Context(), obj); err != nil {
			t.Fatal(err)
		}
		for _, a := range addrs {
			obj.Status.Addresses = append(obj.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: a})
		}
		if err := cp.Client.Status().Update(t.Context(), obj); err != nil {
			t.Fatal(err)
		}
		return name
	}
	for _, tc := range []struct {
		name  string
		flags []string
		want  string
	}{
		{"no node address", []string{"--node-name", node("no-address", b.podCIDR(n).String())},
			"Node no-address lists no InternalIP or ExternalIP address: nothing tells off-node traffic apart"},
		{"node address on the pod bridge", []string{"--node-name", node("ip-on-bridge", b.podCIDR(n).String(), b.gateway(n).String())},
			"interface cni0 holds the node's address but is also where this node's pods attach (the pod bridge): counting it as external would leave every pod unserved; use --detect-local-mode=NodeCIDR"},
		{"NodeCIDR without podCIDRs", []string{"--node-name", node("no-podcidr", "", b.ip(n.IP, n.IP6).String()), "--detect-local-mode=NodeCIDR"},
			"Node no-podcidr has no spec.podCIDRs"},
		{"prefix matching the uplink", []string{"--detect-local-mode=InterfaceNamePrefix", "--pod-interface-name-prefixes=veth,eth"},
			"interface eth0 counts as node-local (--detect-local-mode=InterfaceNamePrefix) but holds the node's address"},
		{"unknown mode", []string{"--detect-local-mode=ClusterCIDR"}, `--detect-local-mode "ClusterCIDR": want one of`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			proc := harness.StartAgentBare(t, c, n, agentBin, b.flags(tc.flags...)...)
			exited, err := proc.WaitExit(15 * time.Second)
			if !exited || err == nil {
				t.Fatalf("agent exited=%v err=%v, want a non-zero exit at start\n%s", exited, err, proc.Output())
			}
			if !strings.Contains(proc.Output(), tc.want) {
				t.Errorf("agent output does not say %q:\n%s", tc.want, proc.Output())
			}
		})
	}
}

// wantRule is a condition that the rules in ns (as v reads them) have a line containing rule.
func wantRule(v ruleView, ns *harness.Netns, rule string) func(context.Context) error {
	return func(ctx context.Context) error {
		out, _, err := v.rules(ctx, ns)
		if err != nil {
			return err
		}
		if !strings.Contains(out, rule) {
			return fmt.Errorf("no %q in:\n%s", rule, out)
		}
		return nil
	}
}
