package e2e

import (
	"context"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/magic-ip/magic-ip/test/harness"
)

// TestHarnessDualStack proves the harness' IPv6 on real namespaces, for bridge and routed nodes:
// two dual-stack nodes, an IPv6-only one and one without IPv6. TCP and UDP over IPv6 pod to pod on
// a node, across nodes (dual-stack and IPv6-only both ways), node to pod and from a host on the
// uplink network; IPv4 still between the IPv4 nodes. No IPv6 address is tentative (usable at
// once), the node without IPv6 has no IPv6 address at all, the IPv6-only node no IPv4 one; the
// API lists both families (IPv4 first); the root namespace has no route into the IPv6 networks
// and gets no answer from them.
func TestHarnessDualStack(t *testing.T) {
	harness.RequireRoot(t)
	cp := harness.StartControlPlane(t)
	stacks := []harness.NodeStack{harness.DualStack, harness.DualStack, harness.IPv6Only, harness.NoIPv6}
	for _, routed := range []bool{false, true} {
		name := map[bool]string{false: "bridge", true: "routed"}[routed]
		t.Run(name, func(t *testing.T) {
			c := harness.NewCluster(t, cp, harness.ClusterOptions{Nodes: len(stacks), Stacks: stacks, Routed: routed})
			checkDualStackCluster(t, c)
		})
	}
}

func checkDualStackCluster(t *testing.T, c *harness.Cluster) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var pods []*harness.Pod // a on every node, then b on node 1
	for i, n := range append(slices.Clone(c.Nodes), c.Nodes[0]) {
		name := n.Name + "-a"
		if i == len(c.Nodes) {
			name = n.Name + "-b"
		}
		p := c.AddPod(n, "echo", name, map[string]string{"app": "echo"}, harness.PodOptions{})
		p.Netns.ServeTCP(t, 8080, p.Name)
		p.Netns.ServeUDP(t, 8081, p.Name)
		pods = append(pods, p)
	}
	a1, a2, a3, a4, b1 := pods[0], pods[1], pods[2], pods[3], pods[4]
	n1, n2 := c.Nodes[0], c.Nodes[1]
	dial := func(from *harness.Netns, to *harness.Pod, ip net.IP) {
		t.Helper()
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if got, err := from.DialTCP(dctx, net.JoinHostPort(ip.String(), "8080")); err != nil || got != to.Name {
			t.Errorf("tcp %s -> %s (%s): got %q, %v", from.Name, to.Name, ip, got, err)
		}
		if got, err := from.ExchangeUDP(dctx, net.JoinHostPort(ip.String(), "8081")); err != nil || got != to.Name {
			t.Errorf("udp %s -> %s (%s): got %q, %v", from.Name, to.Name, ip, got, err)
		}
	}
	dial(a1.Netns, b1, b1.IP6) // pod to pod on one node
	dial(a1.Netns, a2, a2.IP6) // across dual-stack nodes
	dial(a1.Netns, a3, a3.IP6) // dual-stack to IPv6-only
	dial(a3.Netns, a2, a2.IP6) // and back
	dial(n2.Netns, a1, a1.IP6) // node to a pod of another node
	dial(n1.Netns, a1, a1.IP6) // node to its pod
	out := c.AddOutside(n1, n1.PodCIDR6)
	dial(out.Netns, a1, a1.IP6) // a host on the uplink network, routed through node 1
	dial(a1.Netns, a2, a2.IP)   // IPv4 still
	dial(a4.Netns, a1, a1.IP)   // from the node without IPv6
	dial(a1.Netns, a4, a4.IP)

	checkDualStackAddresses(t, c, pods)
	checkDualStackAPIObjects(t, ctx, c, pods)
	if n3 := c.Nodes[2]; !n3.Routed { // the pod bridge keeps its MAC, here from the IPv6 gateway
		if mac, want := linkMAC(t, n3.Netns, harness.PodBridge), harness.BridgeMAC(n3.Gateway6); mac.String() != want.String() {
			t.Errorf("IPv6-only node: %s has MAC %s after its pods were added, want %s", harness.PodBridge, mac, want)
		}
	}
	checkRootNamespaceUntouched(t)
	checkRootCannotReach(t, ctx, a1.IP6)
}

// checkDualStackAddresses: in every node and pod namespace, no IPv6 address is tentative or
// failed DAD; the node without IPv6 (and its pod) has IPv6 disabled and no IPv6 address, the
// IPv6-only one (and its pod) no IPv4 address but loopback.
func checkDualStackAddresses(t *testing.T, c *harness.Cluster, pods []*harness.Pod) {
	spaces := map[*harness.Netns]harness.NodeStack{}
	for _, n := range c.Nodes {
		spaces[n.Netns] = n.Stack
	}
	for _, p := range pods {
		spaces[p.Netns] = p.Node.Stack
	}
	for ns, stack := range spaces {
		v4, v6 := nsAddrs(t, ns)
		for _, a := range v6 {
			if a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 {
				t.Errorf("%s: %s is tentative or failed DAD (flags %#x)", ns.Name, a.IPNet, a.Flags)
			}
		}
		switch stack {
		case harness.NoIPv6:
			if v, err := ns.ReadSysctl("net.ipv6.conf.all.disable_ipv6"); err != nil || v != "1" || len(v6) > 0 {
				t.Errorf("%s (no IPv6): disable_ipv6=%q (%v), IPv6 addresses %v; want 1 and none", ns.Name, v, err, v6)
			}
		case harness.IPv6Only:
			if len(v4) > 0 {
				t.Errorf("%s (IPv6-only): IPv4 addresses %v, want none but loopback", ns.Name, v4)
			}
		}
	}
}

// nsAddrs lists the namespace's addresses per family, loopback's IPv4 left out.
func nsAddrs(t *testing.T, ns *harness.Netns) (v4, v6 []netlink.Addr) {
	t.Helper()
	if err := ns.Do(func() (err error) {
		if v4, err = netlink.AddrList(nil, netlink.FAMILY_V4); err != nil {
			return err
		}
		v6, err = netlink.AddrList(nil, netlink.FAMILY_V6)
		return err
	}); err != nil {
		t.Fatalf("%s: list addresses: %v", ns.Name, err)
	}
	v4 = slices.DeleteFunc(v4, func(a netlink.Addr) bool { return a.IP.IsLoopback() })
	return v4, v6
}

// linkMAC is the MAC of the named link in ns.
func linkMAC(t *testing.T, ns *harness.Netns, name string) net.HardwareAddr {
	t.Helper()
	var mac net.HardwareAddr
	if err := ns.Do(func() error {
		l, err := netlink.LinkByName(name)
		if err == nil {
			mac = l.Attrs().HardwareAddr
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return mac
}

// checkDualStackAPIObjects: every pod's status.podIPs lists its addresses, IPv4 first on a
// dual-stack node, and status.podIP the first; every node's InternalIPs and pod CIDRs both
// families, IPv4 first.
func checkDualStackAPIObjects(t *testing.T, ctx context.Context, c *harness.Cluster, pods []*harness.Pod) {
	want := map[harness.NodeStack][]bool{ // per stack: is each podIP IPv6?
		harness.DualStack: {false, true}, harness.IPv6Only: {true}, harness.NoIPv6: {false},
	}
	for _, p := range pods {
		obj, err := p.Object(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		var fams []bool
		for _, ip := range obj.Status.PodIPs {
			got = append(got, ip.IP)
			fams = append(fams, net.ParseIP(ip.IP).To4() == nil)
		}
		var ips []string
		for _, ip := range p.IPs() {
			ips = append(ips, ip.String())
		}
		if !slices.Equal(got, ips) || !slices.Equal(fams, want[p.Node.Stack]) || obj.Status.PodIP != got[0] || len(obj.Status.HostIPs) != len(p.Node.IPs()) {
			t.Errorf("pod %s (%s node): podIP %q podIPs %v hostIPs %v; want podIPs %v (IPv6: %v), podIP the first, a hostIP per node family",
				p.Name, p.Node.Stack, obj.Status.PodIP, got, obj.Status.HostIPs, ips, want[p.Node.Stack])
		}
	}
	for _, n := range c.Nodes {
		node, err := n.Object(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var internal, cidrs []string
		for _, a := range node.Status.Addresses {
			if a.Type == "InternalIP" {
				internal = append(internal, a.Address)
			}
		}
		for _, ip := range n.IPs() {
			cidrs = append(cidrs, ip.String())
		}
		if !slices.Equal(internal, cidrs) || len(node.Spec.PodCIDRs) != len(cidrs) || node.Spec.PodCIDR != node.Spec.PodCIDRs[0] {
			t.Errorf("node %s (%s): InternalIPs %v podCIDRs %v; want %v and a pod CIDR each", n.Name, n.Stack, internal, node.Spec.PodCIDRs, cidrs)
		}
	}
}

// checkRootCannotReach: a connection from the root namespace to ip (a pod's IPv6 address) gets no
// answer (it follows the machine's own default route, if any, out of the machine).
func checkRootCannotReach(t *testing.T, ctx context.Context, ip net.IP) {
	dctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(dctx, "tcp", net.JoinHostPort(ip.String(), "8080"))
	if err == nil {
		c.Close()
	}
	if got := harness.Outcome(err); got == "answered" {
		t.Errorf("root namespace reached pod address %s: the cluster's IPv6 network must stay inside its namespaces", ip)
	}
}
