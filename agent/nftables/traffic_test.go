package nftables

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/magic-ip/magic-ip/test/harness"
)

// wire links a pod namespace to node with a veth pair: the node side gets gw/24, the pod addr/24
// and a default route through gw.
func wire(t *testing.T, node, pod *harness.Netns, ifname, gw, addr string) {
	t.Helper()
	ctx := t.Context()
	steps := []struct {
		ns   *harness.Netns
		args []string
	}{
		{node, []string{"link", "add", ifname, "type", "veth", "peer", "name", "eth0", "netns", pod.Name}},
		{node, []string{"addr", "add", gw + "/24", "dev", ifname}},
		{node, []string{"link", "set", ifname, "up"}},
		{pod, []string{"addr", "add", addr + "/24", "dev", "eth0"}},
		{pod, []string{"link", "set", "eth0", "up"}},
		{pod, []string{"link", "set", "lo", "up"}},
		{pod, []string{"route", "add", "default", "via", gw}},
	}
	for _, s := range steps {
		if out, err := s.ns.Run(ctx, "ip", s.args...); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(s.args, " "), err, out)
		}
	}
}

// TestKernelTraffic: through the table alone (no iptables rule, no agent), a pod reaches the
// producer behind a magic address over TCP and UDP, is refused at once on a port without
// producer (TCP reset, ICMP port unreachable) and on an undeclared port, and a packet arriving on
// the external interface is never redirected.
func TestKernelTraffic(t *testing.T) {
	node, k, client, prod := magicNode(t, "nfttraffic")
	outside := harness.TestNetns(t, "nftout")
	wire(t, node, outside, "ext0", "10.3.0.1", "10.3.0.2")
	prod.ServeTCP(t, 8080, "producer")
	prod.ServeUDP(t, 8053, "producer")
	in := Input{
		Addresses: []netip.Addr{magic},
		Services: []Service{
			{Key: "m:tcp", Addr: magic, Port: 80, Protocol: "tcp", Verdict: Reject, Endpoints: []Endpoint{{Pod: "p", Addr: netip.MustParseAddrPort("10.2.0.2:8080")}}},
			{Key: "m:udp", Addr: magic, Port: 53, Protocol: "udp", Verdict: Reject, Endpoints: []Endpoint{{Pod: "p", Addr: netip.MustParseAddrPort("10.2.0.2:8053")}}},
			{Key: "m:none", Addr: magic, Port: 81, Protocol: "tcp", Verdict: Reject},
			{Key: "m:noneudp", Addr: magic, Port: 54, Protocol: "udp", Verdict: Reject},
		},
		Local: Local{All: true, External: []string{"ext0"}},
	}
	if _, _, err := (&Datapath{Kernel: k}).Apply(Render(in), true); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		from       *harness.Netns
		proto, dst string
		want       string
	}{
		{client, "tcp", "169.254.210.210:80", "producer"},
		{client, "udp", "169.254.210.210:53", "producer"},
		{client, "tcp", "169.254.210.210:81", "refused"},
		{client, "udp", "169.254.210.210:54", "refused"},
		{client, "tcp", "169.254.210.210:9999", "refused"},
		{client, "udp", "169.254.210.210:9999", "refused"},
		{outside, "tcp", "169.254.210.210:80", "refused"},
		{outside, "udp", "169.254.210.210:53", "refused"},
	} {
		if got := outcome(t.Context(), c.from, c.proto, c.dst); got != c.want {
			t.Errorf("%s %s from %s: %q, want %q", c.proto, c.dst, c.from.Name, got, c.want)
		}
	}
}

// magicNode is a node namespace with our Kernel, the magic address 169.254.210.210 and
// forwarding, a client pod (10.1.0.2) and a producer pod (10.2.0.2) wired to it.
func magicNode(t *testing.T, name string) (node *harness.Netns, k *Kernel, client, prod *harness.Netns) {
	t.Helper()
	node, k, _ = netnsKernel(t, name)
	client, prod = harness.TestNetns(t, name+"c"), harness.TestNetns(t, name+"p")
	wire(t, node, client, "vethc", "10.1.0.1", "10.1.0.2")
	wire(t, node, prod, "vethp", "10.2.0.1", "10.2.0.2")
	for _, args := range [][]string{{"addr", "add", "169.254.210.210/32", "dev", "lo"}, {"link", "set", "lo", "up"}} {
		if _, err := node.Run(t.Context(), "ip", args...); err != nil {
			t.Fatal(err)
		}
	}
	if err := node.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	return node, k, client, prod
}

func outcome(ctx context.Context, ns *harness.Netns, proto, addr string) string {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var got string
	var err error
	if proto == "udp" {
		got, err = ns.ExchangeUDP(ctx, addr)
	} else {
		got, err = ns.DialTCP(ctx, addr)
	}
	if err != nil {
		return harness.Outcome(err)
	}
	return got
}
