package agent

import (
	"context"
	"fmt"
	"testing"

	"github.com/go-logr/logr"
)

// TestDetectHints: in a fresh namespace, auto finds no hint; kubelet's KUBE-IPTABLES-HINT (or
// KUBE-KUBELET-CANARY) chain in the mangle table is found; kube-proxy's nftables table is found,
// and chosen over the hint; each gives the choice and reason auto makes.
func TestDetectHints(t *testing.T) {
	ns := newNetns(t, "hints")
	inNetns(t, ns, func(*Iptables, *Links) error {
		ctx := context.Background()
		for _, step := range []struct {
			what    string
			cmd     []string
			want    NodeHints
			dp, why string
		}{
			{"fresh node", nil, NodeHints{}, DatapathIptables, ReasonNoHint},
			{"kubelet's canary", []string{"iptables", "-t", "mangle", "-N", "KUBE-KUBELET-CANARY"}, NodeHints{IptablesHint: "KUBE-KUBELET-CANARY"}, DatapathIptables, ReasonIptablesHint},
			{"kubelet's hint", []string{"iptables", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT"}, NodeHints{IptablesHint: "KUBE-IPTABLES-HINT"}, DatapathIptables, ReasonIptablesHint},
			{"kube-proxy's nftables table", []string{"nft", "add", "table", "ip", "kube-proxy"}, NodeHints{KubeProxyNftables: true}, DatapathNftables, ReasonKubeProxyNftables},
		} {
			if step.cmd != nil {
				if _, err := run(step.cmd[0], step.cmd[1:]...); err != nil {
					return fmt.Errorf("%s: %w", step.what, err)
				}
			}
			got := detectHints(ctx, nil, logr.Discard())
			if got != step.want {
				t.Errorf("%s: detectHints = %+v, want %+v", step.what, got, step.want)
			}
			if c := chooseDatapath(DatapathAuto, got, nil); c.Datapath != step.dp || c.Reason != step.why {
				t.Errorf("%s: auto chose %+v, want %s (%s)", step.what, c, step.dp, step.why)
			}
		}
		return nil
	})
}

// TestDetectHintsIPv6Only: on an IPv6-only node kube-proxy in nftables mode writes table ip6
// kube-proxy alone; auto finds it and chooses nftables.
func TestDetectHintsIPv6Only(t *testing.T) {
	ns := newNetns(t, "hints6")
	inNetns(t, ns, func(*Iptables, *Links) error {
		if _, err := run("nft", "add", "table", "ip6", "kube-proxy"); err != nil {
			return err
		}
		if got := detectHints(context.Background(), nil, logr.Discard()); !got.KubeProxyNftables {
			t.Errorf("detectHints = %+v with table ip6 kube-proxy, want KubeProxyNftables", got)
		}
		return nil
	})
}
