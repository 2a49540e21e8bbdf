package agent

import (
	"errors"
	"strings"
	"testing"
)

// TestChooseDatapath: an explicit --datapath wins; auto follows kube-proxy's nftables mode, falls
// back to nftables when iptables is not usable, and otherwise keeps iptables; the reason says why.
func TestChooseDatapath(t *testing.T) {
	noIpt := errors.New("iptables-restore not found")
	for _, tc := range []struct {
		want         string
		kubeProxyNft bool
		iptErr       error
		got, why     string
	}{
		{DatapathIptables, true, nil, DatapathIptables, "--datapath=iptables"},
		{DatapathNftables, false, nil, DatapathNftables, "--datapath=nftables"},
		{DatapathAuto, true, nil, DatapathNftables, "kube-proxy runs in nftables mode"},
		{DatapathAuto, false, noIpt, DatapathNftables, "iptables is not usable (iptables-restore not found)"},
		{DatapathAuto, false, nil, DatapathIptables, "iptables is usable"},
	} {
		got, why := chooseDatapath(tc.want, tc.kubeProxyNft, tc.iptErr)
		if got != tc.got || !strings.Contains(why, tc.why) {
			t.Errorf("chooseDatapath(%s, kube-proxy nftables %v, %v) = %s (%q), want %s (%q)", tc.want, tc.kubeProxyNft, tc.iptErr, got, why, tc.got, tc.why)
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
