package agent

import (
	"errors"
	"strings"
	"testing"
)

// TestChooseDatapath: an explicit --datapath wins; auto follows kube-proxy's nftables mode (even
// with kubelet's iptables hint beside it), falls back to nftables when iptables is not usable,
// follows kubelet's iptables hint, and with no hint keeps iptables and says so; the short reason
// is stable (a metric label), the long one says why.
func TestChooseDatapath(t *testing.T) {
	noIpt := errors.New("iptables-restore not found")
	kp, hint := NodeHints{KubeProxyNftables: true}, NodeHints{IptablesHint: "KUBE-IPTABLES-HINT"}
	both := NodeHints{KubeProxyNftables: true, IptablesHint: "KUBE-IPTABLES-HINT"}
	for _, tc := range []struct {
		want   string
		hints  NodeHints
		iptErr error
		got    DatapathChoice
	}{
		{DatapathIptables, kp, nil, DatapathChoice{DatapathIptables, ReasonFlag, "--datapath=iptables"}},
		{DatapathNftables, hint, nil, DatapathChoice{DatapathNftables, ReasonFlag, "--datapath=nftables"}},
		{DatapathAuto, kp, nil, DatapathChoice{DatapathNftables, ReasonKubeProxyNftables, "kube-proxy runs in nftables mode"}},
		{DatapathAuto, both, nil, DatapathChoice{DatapathNftables, ReasonKubeProxyNftables, "kube-proxy runs in nftables mode"}},
		{DatapathAuto, NodeHints{}, noIpt, DatapathChoice{DatapathNftables, ReasonIptablesUnusable, "iptables is not usable (iptables-restore not found)"}},
		{DatapathAuto, hint, noIpt, DatapathChoice{DatapathNftables, ReasonIptablesUnusable, "iptables is not usable"}},
		{DatapathAuto, hint, nil, DatapathChoice{DatapathIptables, ReasonIptablesHint, "chain KUBE-IPTABLES-HINT in its mangle table"}},
		{DatapathAuto, NodeHints{IptablesHint: "KUBE-KUBELET-CANARY"}, nil, DatapathChoice{DatapathIptables, ReasonIptablesHint, "chain KUBE-KUBELET-CANARY"}},
		{DatapathAuto, NodeHints{}, nil, DatapathChoice{DatapathIptables, ReasonNoHint, "no hint of the node's mode"}},
	} {
		got := chooseDatapath(tc.want, tc.hints, tc.iptErr)
		if got.Datapath != tc.got.Datapath || got.Reason != tc.got.Reason || !strings.Contains(got.Why, tc.got.Why) {
			t.Errorf("chooseDatapath(%s, %+v, %v) = %+v, want %s/%s (%q)", tc.want, tc.hints, tc.iptErr, got, tc.got.Datapath, tc.got.Reason, tc.got.Why)
		}
	}
}

// TestConfigDatapathValidated: an unknown --datapath stops the agent, naming the choices.
func TestConfigDatapathValidated(t *testing.T) {
	c, err := parseConfig(map[string]string{"MAGIC_IP_DATAPATH": "ebpf"}, "--node-name", "n1")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), `--datapath "ebpf": want one of [auto iptables nftables]`) {
		t.Errorf("Validate: %v, want the unknown datapath refused", err)
	}
}
