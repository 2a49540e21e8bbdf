package e2e

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"testing"

	"github.com/magic-ip/magic-ip/agent"
	"github.com/magic-ip/magic-ip/api/v1alpha1"
	"github.com/magic-ip/magic-ip/test/harness"
)

// backend is one cell of the agent e2e matrix: the datapath the agent runs (--datapath; "" for
// the agent's default) and the address family the test's clients use. An IPv6 run builds
// dual-stack nodes and pods, gives its MagicIPs their spec.ipv6Address too, and dials, routes to,
// and reads the rules, addresses and kernel settings of the IPv6 magic address; the agent
// programs both families, the test looks at IPv6.
type backend struct {
	datapath string
	v6       bool
}

// defaultBackend is the agent with its default datapath, seen over IPv4: for tests outside the
// matrix.
var defaultBackend = backend{}

// forEachBackend runs f as one subtest per datapath and family, named iptables/ipv4,
// iptables/ipv6, nftables/ipv4 and nftables/ipv6.
func forEachBackend(t *testing.T, f func(t *testing.T, b backend)) {
	for _, dp := range datapaths {
		for _, v6 := range []bool{false, true} {
			b := backend{datapath: dp, v6: v6}
			t.Run(b.String(), func(t *testing.T) { f(t, b) })
		}
	}
}

func (b backend) String() string { return b.datapath + "/" + b.family() }

// family is "ipv4" or "ipv6".
func (b backend) family() string {
	if b.v6 {
		return "ipv6"
	}
	return "ipv4"
}

// flags are extra followed by the agent flags that select the datapath.
func (b backend) flags(extra ...string) []string {
	out := slices.Clone(extra)
	if b.datapath != "" {
		out = append(out, "--datapath", b.datapath)
	}
	return out
}

// cluster builds a cluster with opts; with IPv6 every node is dual-stack.
func (b backend) cluster(t *testing.T, cp *harness.ControlPlane, opts harness.ClusterOptions) *harness.Cluster {
	t.Helper()
	if b.v6 {
		opts.Stacks = slices.Repeat([]harness.NodeStack{harness.DualStack}, opts.Nodes)
	}
	return harness.NewCluster(t, cp, opts)
}

// addrN is magic address number n of the family: 169.254.210.n, or fd00::a9fe:d2<n in hex> (the
// same address written in the IPv6 range, fd00::a9fe:d2d2 for n=210).
func (b backend) addrN(n int) string {
	if b.v6 {
		return fmt.Sprintf("fd00::a9fe:d2%02x", n)
	}
	return fmt.Sprintf("169.254.210.%d", n)
}

// addr is the address the tests dial: magicAddr, or magicAddr6 with IPv6.
func (b backend) addr() string { return b.addrN(210) }

// at gives m magic address number n: spec.address 169.254.210.n and, with IPv6, spec.ipv6Address
// fd00::a9fe:d2<n>.
func (b backend) at(m *v1alpha1.MagicIP, n int) *v1alpha1.MagicIP {
	m.Spec.Address = backend{}.addrN(n)
	if b.v6 {
		m.Spec.IPv6Address = b.addrN(n)
	}
	return m
}

// magicIP is datadogMagicIP, dual-stack with IPv6.
func (b backend) magicIP(name string) *v1alpha1.MagicIP { return b.at(datadogMagicIP(name), 210) }

// hostPort is the magic address with port, as a client dials it.
func (b backend) hostPort(port int) string { return net.JoinHostPort(b.addr(), strconv.Itoa(port)) }

// bits is the length of a host prefix of the family: 32 or 128.
func (b backend) bits() int {
	if b.v6 {
		return 128
	}
	return 32
}

// route is the magic address as a host route (/32, /128), as a neighbour would route it.
func (b backend) route() *net.IPNet {
	return &net.IPNet{IP: net.ParseIP(b.addr()), Mask: net.CIDRMask(b.bits(), b.bits())}
}

// inet is the magic address as `ip -o addr show` lists it on the host interface.
func (b backend) inet() string {
	if b.v6 {
		return fmt.Sprintf("inet6 %s/128", b.addr())
	}
	return fmt.Sprintf("inet %s/32", b.addr())
}

// ip is the address of the family among v4 and v6 (a pod's, a node's).
func (b backend) ip(v4, v6 net.IP) net.IP {
	if b.v6 {
		return v6
	}
	return v4
}

// podIP is p's address of the family (status.podIPs).
func (b backend) podIP(p *harness.Pod) net.IP { return b.ip(p.IP, p.IP6) }

// gateway is n's pod gateway of the family.
func (b backend) gateway(n *harness.Node) net.IP { return b.ip(n.Gateway, n.Gateway6) }

// podCIDR is n's pod CIDR of the family.
func (b backend) podCIDR(n *harness.Node) *net.IPNet {
	if b.v6 {
		return n.PodCIDR6
	}
	return n.PodCIDR
}

// nftFamily is the family's name in nftables expressions: ip or ip6.
func (b backend) nftFamily() string {
	if b.v6 {
		return "ip6"
	}
	return "ip"
}

// iptables is the iptables command of the family: iptables or ip6tables.
func (b backend) iptables() string {
	if b.v6 {
		return "ip6tables"
	}
	return "iptables"
}

// view reads the datapath's rules of the family (nftables: one inet table holds both).
func (b backend) view() ruleView {
	if b.datapath == agent.DatapathNftables {
		return nftView{}
	}
	return iptablesView{cmd: b.iptables()}
}

// liftICMPRateLimit lets ns send every ICMP error of the family: the kernel rate-limits them per
// destination (1 s), and tests that count refusals of one client would see silence instead.
func (b backend) liftICMPRateLimit(t *testing.T, ns *harness.Netns) {
	t.Helper()
	key := "net.ipv4.icmp_ratelimit"
	if b.v6 {
		key = "net.ipv6.icmp.ratelimit"
	}
	if err := ns.Sysctl(key, "0"); err != nil {
		t.Fatal(err)
	}
}

// tcp is tcpOutcome to the magic address.
func (b backend) tcp(ctx context.Context, ns *harness.Netns, port int) string {
	return tcpOutcome(ctx, ns, b.addr(), port)
}

// udp is udpOutcome to the magic address.
func (b backend) udp(ctx context.Context, ns *harness.Netns, port int) string {
	return udpOutcome(ctx, ns, b.addr(), port)
}

// wantTCP is a condition: the TCP outcome from ns to the magic address's port is one of wants.
func (b backend) wantTCP(ns *harness.Netns, port int, wants ...string) func(context.Context) error {
	return wantOutcome("tcp", ns, func(ctx context.Context) string { return b.tcp(ctx, ns, port) }, wants)
}

// wantUDP is wantTCP for one UDP exchange.
func (b backend) wantUDP(ns *harness.Netns, port int, wants ...string) func(context.Context) error {
	return wantOutcome("udp", ns, func(ctx context.Context) string { return b.udp(ctx, ns, port) }, wants)
}

// wantOutcome is a condition: outcome is one of wants.
func wantOutcome(proto string, ns *harness.Netns, outcome func(context.Context) string, wants []string) func(context.Context) error {
	return func(ctx context.Context) error {
		got := outcome(ctx)
		if slices.Contains(wants, got) {
			return nil
		}
		return fmt.Errorf("%s from %s: got %q, want one of %q", proto, ns.Name, got, wants)
	}
}
