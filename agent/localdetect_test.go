package agent

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// testLinks: eth0 holds the node's address, ens6 is a second NIC, cni0 the pod bridge with a veth.
func testLinks() []hostLink {
	a := netip.MustParseAddr
	return []hostLink{
		{Name: "lo", Addrs: []netip.Addr{a("127.0.0.1")}},
		{Name: "eth0", Addrs: []netip.Addr{a("192.168.1.10"), a("fd00::10")}},
		{Name: "ens6", Addrs: []netip.Addr{a("10.0.0.10")}},
		{Name: "cni0", Bridge: true, VethPorts: true, Addrs: []netip.Addr{a("10.244.1.1")}},
		{Name: "vetha1b2c3d4"},
		{Name: "br-empty", Bridge: true},
	}
}

func nodeObj(mod func(*corev1.Node)) *corev1.Node {
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "n1"},
		Spec:       corev1.NodeSpec{PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24", "fd10:244:1::/64"}},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeHostName, Address: "n1"},
			{Type: corev1.NodeInternalIP, Address: "192.168.1.10"},
			{Type: corev1.NodeInternalIP, Address: "fd00::10"},
		}},
	}
	if mod != nil {
		mod(n)
	}
	return n
}

func TestResolveLocal(t *testing.T) {
	cfgWith := func(mod func(*Config)) Config {
		c := Config{DetectLocalMode: string(NodeAddresses), HostInterface: DefaultDummyInterface, PodInterfacePrefixes: []string{"veth", "cali"}}
		if mod != nil {
			mod(&c)
		}
		return c
	}
	mode := func(m LocalMode) func(*Config) { return func(c *Config) { c.DetectLocalMode = string(m) } }
	tests := map[string]struct {
		cfg     Config
		node    *corev1.Node
		want    *LocalDetector
		wantErr string
	}{
		"default: the interfaces holding the Node's addresses": {
			cfg: cfgWith(nil), node: nodeObj(nil), want: ExternalInterfaces("eth0"),
		},
		"--node-ip instead of the Node's addresses": {
			cfg: cfgWith(func(c *Config) { c.NodeIP = "10.0.0.10" }), node: nodeObj(nil), want: ExternalInterfaces("ens6"),
		},
		"ExternalIP counts too": {
			cfg: cfgWith(nil),
			node: nodeObj(func(n *corev1.Node) {
				n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "10.0.0.10"})
			}),
			want: ExternalInterfaces("eth0", "ens6"),
		},
		"--external-interfaces wins": {
			cfg: cfgWith(func(c *Config) { c.ExternalInterfaces = []string{"eth0", "ens6"} }), node: nodeObj(nil), want: ExternalInterfaces("eth0", "ens6"),
		},
		"no node address: refuse": {
			cfg: cfgWith(nil), node: nodeObj(func(n *corev1.Node) { n.Status.Addresses = n.Status.Addresses[:1] }),
			wantErr: "Node n1 lists no InternalIP or ExternalIP address: nothing tells off-node traffic apart",
		},
		"no interface holds the node address: refuse": {
			cfg: cfgWith(func(c *Config) { c.NodeIP = "192.0.2.1" }), node: nodeObj(nil),
			wantErr: "no interface of this node holds --node-ip 192.0.2.1",
		},
		"node address on the pod bridge: refuse, naming NodeCIDR": {
			cfg: cfgWith(func(c *Config) { c.NodeIP = "10.244.1.1" }), node: nodeObj(nil),
			wantErr: "interface cni0 holds the node's address but is also where this node's pods attach (the pod bridge): counting it as external would leave every pod unserved; use --detect-local-mode=NodeCIDR",
		},
		"node address on the host interface: refuse": {
			cfg: cfgWith(func(c *Config) { c.HostInterface = "eth0" }), node: nodeObj(nil),
			wantErr: "interface eth0 holds the node's address but is also where this node's pods attach",
		},
		"NodeCIDR: the pod CIDR of each family, once": {
			cfg: cfgWith(mode(NodeCIDR)), node: nodeObj(nil),
			want: &LocalDetector{Mode: NodeCIDR, Local: []LocalMatch{{Source: netip.MustParsePrefix("10.244.1.0/24")}, {Source: netip.MustParsePrefix("fd10:244:1::/64")}}},
		},
		"NodeCIDR on an IPv6-only node": {
			cfg: cfgWith(mode(NodeCIDR)), node: nodeObj(func(n *corev1.Node) {
				n.Spec = corev1.NodeSpec{PodCIDR: "fd10:244:1::/64", PodCIDRs: []string{"fd10:244:1::/64"}}
			}),
			want: &LocalDetector{Mode: NodeCIDR, Local: []LocalMatch{{Source: netip.MustParsePrefix("fd10:244:1::/64")}}},
		},
		"NodeCIDR without podCIDRs: refuse, naming InterfaceNamePrefix": {
			cfg: cfgWith(mode(NodeCIDR)), node: nodeObj(func(n *corev1.Node) { n.Spec = corev1.NodeSpec{} }),
			wantErr: "Node n1 has no spec.podCIDRs (pod addresses are not allocated by Kubernetes here, e.g. Calico or Cilium IPAM); use --detect-local-mode=InterfaceNamePrefix",
		},
		"NodeCIDR ignores --node-ip": {
			cfg: cfgWith(func(c *Config) { c.DetectLocalMode, c.NodeIP = string(NodeCIDR), "192.0.2.1" }), node: nodeObj(nil),
			want: &LocalDetector{Mode: NodeCIDR, Local: []LocalMatch{{Source: netip.MustParsePrefix("10.244.1.0/24")}, {Source: netip.MustParsePrefix("fd10:244:1::/64")}}},
		},
		"--external-interfaces with another mode: refuse": {
			cfg: cfgWith(func(c *Config) { c.DetectLocalMode, c.ExternalInterfaces = string(NodeCIDR), []string{"eth0"} }), node: nodeObj(nil),
			wantErr: "--external-interfaces applies to --detect-local-mode=NodeAddresses only, not NodeCIDR",
		},
		"BridgeInterface": {
			cfg: cfgWith(func(c *Config) { c.DetectLocalMode, c.PodBridgeInterface = string(BridgeInterface), "cni0" }), node: nodeObj(nil),
			want: &LocalDetector{Mode: BridgeInterface, Local: []LocalMatch{{Interface: "cni0"}}},
		},
		"BridgeInterface not created yet: a warning, not a refusal": {
			cfg: cfgWith(func(c *Config) { c.DetectLocalMode, c.PodBridgeInterface = string(BridgeInterface), "cbr0" }), node: nodeObj(nil),
			want: &LocalDetector{Mode: BridgeInterface, Local: []LocalMatch{{Interface: "cbr0"}}},
		},
		"BridgeInterface without a name: refuse": {
			cfg: cfgWith(mode(BridgeInterface)), node: nodeObj(nil), wantErr: "needs --pod-bridge-interface",
		},
		"BridgeInterface that is not a bridge: refuse": {
			cfg:     cfgWith(func(c *Config) { c.DetectLocalMode, c.PodBridgeInterface = string(BridgeInterface), "ens6" }),
			node:    nodeObj(nil),
			wantErr: "--pod-bridge-interface ens6 is not a bridge",
		},
		"BridgeInterface holding the node address: refuse": {
			cfg: cfgWith(func(c *Config) {
				c.DetectLocalMode, c.PodBridgeInterface, c.NodeIP = string(BridgeInterface), "cni0", "10.244.1.1"
			}),
			node:    nodeObj(nil),
			wantErr: "interface cni0 counts as node-local (--detect-local-mode=BridgeInterface) but holds the node's address [10.244.1.1]: off-node traffic arrives there too; use --detect-local-mode=NodeCIDR",
		},
		"InterfaceNamePrefix": {
			cfg: cfgWith(mode(InterfaceNamePrefix)), node: nodeObj(nil),
			want: &LocalDetector{Mode: InterfaceNamePrefix, Local: []LocalMatch{{Interface: "veth+"}, {Interface: "cali+"}}},
		},
		"InterfaceNamePrefix matching the uplink: refuse": {
			cfg: cfgWith(func(c *Config) {
				c.DetectLocalMode, c.PodInterfacePrefixes = string(InterfaceNamePrefix), []string{"veth", "eth"}
			}),
			node:    nodeObj(nil),
			wantErr: "interface eth0 counts as node-local (--detect-local-mode=InterfaceNamePrefix) but holds the node's address",
		},
		"InterfaceNamePrefix without prefixes: refuse": {
			cfg:     cfgWith(func(c *Config) { c.DetectLocalMode, c.PodInterfacePrefixes = string(InterfaceNamePrefix), nil }),
			node:    nodeObj(nil),
			wantErr: "needs --pod-interface-name-prefixes",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, _, err := resolveLocal(tc.cfg, tc.node, testLinks())
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, error %v; want an error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %s, want %s", got, tc.want)
			}
		})
	}
}

// TestLocalPrerouting: MAGIC-IP-PREROUTING per mode, as iptables-save prints it.
func TestLocalPrerouting(t *testing.T) {
	st := State{Services: []Service{
		{MagicIP: "a", PortName: "p", Address: netip.MustParseAddr("169.254.1.1"), Port: 80, Protocol: "TCP"},
		{MagicIP: "b", PortName: "p", Address: netip.MustParseAddr("169.254.2.2"), Port: 80, Protocol: "TCP"},
	}}
	tests := map[string]struct {
		local *LocalDetector
		want  []string
	}{
		"nil: every source is local": {nil, []string{
			`! -d 169.254.0.0/22 -m comment --comment "not a magic address" -j RETURN`,
			"-j MAGIC-IP-SERVICES",
		}},
		"NodeAddresses": {ExternalInterfaces("eth0", "ens6"), []string{
			`-i eth0 -m comment --comment "external interface: not node-local" -j RETURN`,
			`-i ens6 -m comment --comment "external interface: not node-local" -j RETURN`,
			`! -d 169.254.0.0/22 -m comment --comment "not a magic address" -j RETURN`,
			"-j MAGIC-IP-SERVICES",
		}},
		"NodeCIDR": {&LocalDetector{Mode: NodeCIDR, Local: []LocalMatch{{Source: netip.MustParsePrefix("10.244.1.0/24")}}}, []string{
			`! -d 169.254.0.0/22 -m comment --comment "not a magic address" -j RETURN`,
			`-s 10.244.1.0/24 -m comment --comment "node-local (NodeCIDR)" -j MAGIC-IP-SERVICES`,
		}},
		"InterfaceNamePrefix": {&LocalDetector{Mode: InterfaceNamePrefix, Local: []LocalMatch{{Interface: "veth+"}, {Interface: "lxc+"}}}, []string{
			`! -d 169.254.0.0/22 -m comment --comment "not a magic address" -j RETURN`,
			`-i veth+ -m comment --comment "node-local (InterfaceNamePrefix)" -j MAGIC-IP-SERVICES`,
			`-i lxc+ -m comment --comment "node-local (InterfaceNamePrefix)" -j MAGIC-IP-SERVICES`,
		}},
		"a local mode with nothing to match redirects nothing": {&LocalDetector{Mode: NodeCIDR}, []string{`! -d 169.254.0.0/22 -m comment --comment "not a magic address" -j RETURN`}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := Render(st, tc.local).Chains["nat"][chainPrerouting]
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("MAGIC-IP-PREROUTING:\n got %q\nwant %q", got, tc.want)
			}
		})
	}
}

// TestNeedsNode: the Node object is read only when the flags do not already say everything.
func TestNeedsNode(t *testing.T) {
	for name, tc := range map[string]struct {
		cfg  Config
		want bool
	}{
		"no flags":                           {Config{DetectLocalMode: "NodeAddresses"}, true},
		"--node-ip":                          {Config{DetectLocalMode: "NodeAddresses", NodeIP: "192.0.2.1"}, false},
		"--external-interfaces":              {Config{DetectLocalMode: "NodeAddresses", ExternalInterfaces: []string{"eth0"}}, false},
		"NodeCIDR: its pod CIDRs":            {Config{DetectLocalMode: "NodeCIDR", NodeIP: "192.0.2.1"}, true},
		"BridgeInterface: its addresses":     {Config{DetectLocalMode: "BridgeInterface"}, true},
		"BridgeInterface with --node-ip":     {Config{DetectLocalMode: "BridgeInterface", NodeIP: "192.0.2.1"}, false},
		"InterfaceNamePrefix: its addresses": {Config{DetectLocalMode: "InterfaceNamePrefix"}, true},
	} {
		if got := needsNode(tc.cfg); got != tc.want {
			t.Errorf("%s: needsNode = %v, want %v", name, got, tc.want)
		}
	}
}
