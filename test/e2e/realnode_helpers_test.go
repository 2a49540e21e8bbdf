package e2e

import (
	"context"
	"strings"
	"testing"

	"github.com/magic-ip/magic-ip/agent"
	"github.com/magic-ip/magic-ip/test/harness"
)

// magicState is what a node holds of magic-ip: our iptables lines (each names one of our
// chains; kube-proxy's rules for Services in magic-ip-system say "magic-ip" too) and our addresses.
func magicState(ctx context.Context, n *harness.Node) (rules []string, addrs []string, err error) {
	save, err := n.Netns.Run(ctx, "iptables-save")
	if err != nil {
		return nil, nil, err
	}
	for _, l := range strings.Split(save, "\n") {
		if strings.Contains(l, agent.ChainPrefix) {
			rules = append(rules, l)
		}
	}
	out, err := n.Netns.Run(ctx, "ip", "-o", "addr", "show")
	if err != nil {
		return nil, nil, err
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, ":mip") {
			addrs = append(addrs, strings.TrimSpace(l))
		}
	}
	return rules, addrs, nil
}

// foreignRules is every iptables line of a node that is not ours and not a counter line: what
// cleanup must leave exactly as it was.
func foreignRules(ctx context.Context, n *harness.Node) ([]string, error) {
	save, err := n.Netns.Run(ctx, "iptables-save")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range strings.Split(save, "\n") {
		if l == "" || strings.HasPrefix(l, "#") || strings.Contains(l, "MAGIC-IP") {
			continue
		}
		out = append(out, l)
	}
	return out, nil
}

// helm runs helm against the cluster.
func helmOn(t *testing.T, cp *harness.ControlPlane, args ...string) string {
	t.Helper()
	out, err := harness.Helm(append(args, "--kubeconfig", cp.Kubeconfig)...)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}
