package harness

import (
	"fmt"
	"hash/fnv"
	"net"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Addressing of a simulated cluster. Everything lives in network namespaces the harness creates;
// the machine's root namespace has no link or route to any of it.
const (
	// UnderlayBridge joins the node uplinks inside the cluster's underlay namespace.
	UnderlayBridge = "br0"
	// PodBridge is each node's pod bridge (bridge nodes).
	PodBridge = "cni0"
	// HostBridge carries the magic addresses on routed nodes: an empty bridge, since this kernel
	// has no dummy link type.
	HostBridge = "mip-host0"
	// UplinkName is the node's uplink interface (to the underlay).
	UplinkName = "eth0"
	// underlayPrefix is the node uplink network: node i is .10+i; "outside" hosts are .200+.
	underlayPrefix = "172.20.0."
)

// Cluster is a set of simulated nodes: one network namespace each, a cni0 bridge with a pod CIDR
// 10.244.<i>.0/24, an uplink eth0 (172.20.0.<10+i>) on a shared underlay bridge, routes to the other
// nodes' pod CIDRs, ip_forward=1, the API server reachable on the same 127.0.0.1 port as in the root
// namespace, and a Node object in the API.
type Cluster struct {
	// Name is unique per test; node names and namespace names derive from it.
	Name  string
	Nodes []*Node
	CP    *ControlPlane

	t        T
	underlay *Netns
	mu       sync.Mutex
	outsides int
}

// ClusterOptions configure NewCluster.
type ClusterOptions struct {
	Nodes int
	// Name overrides the generated cluster name (default: derived from the test name).
	Name string
	// Routed builds nodes as routed CNIs do (the CNI ptp plugin, Calico): no pod bridge, each
	// pod's host-side veth carries the gateway address and a /32 route to the pod. Such nodes put
	// the magic addresses on HostBridge, an empty bridge standing in for the dummy link this
	// kernel lacks. Default: a cni0 bridge whose ports are in hairpin mode (the CNI bridge
	// plugin's hairpinMode: true, flannel's default).
	Routed bool
	// Stacks are the nodes' address families: node i gets Stacks[i-1], IPv4Only past its end
	// (the default for every node). DualStack and IPv6Only nodes route IPv6 to each other's pod
	// CIDRs as IPv4 nodes do; NoIPv6 disables IPv6 in the node's namespace. Simulated control
	// planes only: real nodes (kubelet, CNI) are IPv4-only.
	Stacks []NodeStack
}

// stack is node i's (1-based) address families.
func (o ClusterOptions) stack(i int) NodeStack {
	if i <= len(o.Stacks) {
		return o.Stacks[i-1]
	}
	return IPv4Only
}

// NewCluster builds the nodes and registers their teardown with t.Cleanup.
func NewCluster(t T, cp *ControlPlane, opts ClusterOptions) *Cluster {
	t.Helper()
	RequireRoot(t)
	if opts.Name == "" {
		opts.Name = shortName("c", t.Name())
	}
	c := &Cluster{Name: opts.Name, CP: cp, t: t}
	var err error
	if c.underlay, err = NewNetns(c.netnsName("underlay")); err != nil {
		t.Fatalf("cluster %s: %v", c.Name, err)
	}
	t.Cleanup(func() {
		if err := c.underlay.Delete(); err != nil {
			t.Errorf("cluster %s: %v", c.Name, err)
		}
	})
	if err := c.underlay.withHandle(func(h *netlink.Handle) error {
		return addBridge(h, UnderlayBridge)
	}); err != nil {
		t.Fatalf("cluster %s: underlay: %v", c.Name, err)
	}
	for i := 1; i <= opts.Nodes; i++ {
		stack := opts.stack(i)
		if err := stack.valid(); err != nil {
			t.Fatalf("cluster %s: node %d: %v", c.Name, i, err)
		}
		if stack != IPv4Only && cp.Real != nil {
			t.Fatalf("cluster %s: node %d: %s nodes need a simulated control plane (real nodes are IPv4-only)", c.Name, i, stack)
		}
		n, err := c.addNode(i, opts.Routed, stack)
		if err != nil {
			t.Fatalf("cluster %s: node %d: %v", c.Name, i, err)
		}
		c.Nodes = append(c.Nodes, n)
	}
	for _, n := range c.Nodes {
		if err := n.routeToPeers(c.Nodes); err != nil {
			t.Fatalf("cluster %s: %v", c.Name, err)
		}
	}
	if cp.Real != nil {
		if err := c.startAPIGateway(); err != nil {
			t.Fatalf("cluster %s: %v", c.Name, err)
		}
	}
	return c
}

// netnsName is the namespace name for a part of this cluster: <run prefix>-<cluster>-<part>.
func (c *Cluster) netnsName(part string) string {
	return RunPrefix() + "-" + c.Name + "-" + part
}

// Outside is a host on the node uplink network that is not part of any node: traffic from it to a
// magic IP must never reach a producer.
type Outside struct {
	Netns *Netns
	// IP is its first address (IPv4, or IPv6 next to an IPv6-only node); IP6 its IPv6 one next
	// to a node with IPv6 (nil otherwise).
	IP  net.IP
	IP6 net.IP
}

// AddOutside creates an outside host on the underlay, with node's address families, and a route
// for dst (e.g. a magic IP/32 or /128) through node's uplink address of dst's family, as a
// neighbouring machine on the node's network could have.
func (c *Cluster) AddOutside(node *Node, dst *net.IPNet) *Outside {
	c.t.Helper()
	c.mu.Lock()
	c.outsides++
	i := c.outsides
	c.mu.Unlock()
	ns, err := NewNetns(c.netnsName(fmt.Sprintf("outside%d", i)))
	if err != nil {
		c.t.Fatalf("outside: %v", err)
	}
	c.t.Cleanup(func() {
		if err := ns.Delete(); err != nil {
			c.t.Errorf("outside: %v", err)
		}
	})
	o, gw := c.outsideHost(node, ns, i, dst)
	if err := ns.withHandle(func(h *netlink.Handle) error {
		return h.RouteAdd(&netlink.Route{Dst: dst, Gw: gw})
	}); err != nil {
		c.t.Fatalf("outside: route %s via %s: %v", dst, gw, err)
	}
	return o
}

// outsideHost addresses outside host i (ns) on the underlay in node's families: .200+i and
// ::<200+i hex>. gw is node's uplink address in dst's family.
func (c *Cluster) outsideHost(node *Node, ns *Netns, i int, dst *net.IPNet) (o *Outside, gw net.IP) {
	c.t.Helper()
	if err := prepareStack(ns, node.Stack, false); err != nil {
		c.t.Fatalf("outside: %v", err)
	}
	o = &Outside{Netns: ns}
	if node.Stack.Has6() {
		o.IP, o.IP6 = underlayIP6(200+i), underlayIP6(200+i)
	}
	if node.Stack.Has4() {
		o.IP = net.ParseIP(fmt.Sprintf("%s%d", underlayPrefix, 200+i))
	}
	var ips []net.IP
	for _, ip := range []net.IP{o.IP, o.IP6} {
		if ip != nil && !slices.ContainsFunc(ips, ip.Equal) {
			ips = append(ips, ip)
		}
	}
	if err := c.plugUplink(ns, fmt.Sprintf("out%d", i), ips...); err != nil {
		c.t.Fatalf("outside: %v", err)
	}
	f, ok := node.familyOf(dst.IP.To4() == nil)
	if !ok {
		c.t.Fatalf("outside: node %s (%s) has no address of %s's family", node.Name, node.Stack, dst)
	}
	return o, f.ip
}

// plugUplink connects ns to the underlay bridge with a veth (ns side "eth0", addresses ips: /24
// for IPv4, /64 for IPv6).
func (c *Cluster) plugUplink(ns *Netns, underlaySide string, ips ...net.IP) error {
	err := c.underlay.withHandle(func(h *netlink.Handle) error {
		br, err := h.LinkByName(UnderlayBridge)
		if err != nil {
			return err
		}
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: underlaySide, MasterIndex: br.Attrs().Index},
			PeerName:      UplinkName,
			PeerNamespace: netlink.NsFd(int(ns.handle)),
		}
		if err := h.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth %s: %w", underlaySide, err)
		}
		return h.LinkSetUp(veth)
	})
	if err != nil {
		return fmt.Errorf("uplink of %s: %w", ns.Name, err)
	}
	var addrs []*net.IPNet
	for _, ip := range ips {
		mask := net.CIDRMask(24, 32)
		if ip.To4() == nil {
			mask = net.CIDRMask(64, 128)
		}
		addrs = append(addrs, &net.IPNet{IP: ip, Mask: mask})
	}
	return ns.withHandle(func(h *netlink.Handle) error {
		return linkUpWithAddr(h, UplinkName, addrs...)
	})
}

// addBridge creates a bridge with addrs (maybe none) and sets it up. A bridge with an address
// gets a fixed MAC derived from the first (BridgeMAC): a bridge whose MAC was never set takes the
// lowest MAC of its ports, so adding a pod could change the gateway's MAC under the pods' ARP and
// neighbour caches, and the node would then drop, as addressed to another host, every packet
// routed to it rather than DNATed (a REJECT never seen: silence instead of a refusal until the
// pods re-resolve).
func addBridge(h *netlink.Handle, name string, addrs ...*net.IPNet) error {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if len(addrs) > 0 {
		br.HardwareAddr = BridgeMAC(addrs[0].IP)
	}
	if err := h.LinkAdd(br); err != nil {
		return fmt.Errorf("add bridge %s: %w", name, err)
	}
	return linkUpWithAddr(h, name, addrs...)
}

// BridgeMAC is the MAC of a pod bridge whose first address is ip: 0a:58 and the IPv4 address, as
// the CNI bridge plugin does, or for IPv6 (an IPv6-only node) 0a:58 and bytes 6, 7, 14 and 15 of
// the address (fd00:10:244:<i>::1 gives 0a:58:00:<i>:00:01).
func BridgeMAC(ip net.IP) net.HardwareAddr {
	if v4 := ip.To4(); v4 != nil {
		return net.HardwareAddr{0x0a, 0x58, v4[0], v4[1], v4[2], v4[3]}
	}
	return net.HardwareAddr{0x0a, 0x58, ip[6], ip[7], ip[14], ip[15]}
}

// linkUpWithAddr adds addrs (IPv6 ones without duplicate address detection) to the link and sets
// it up.
func linkUpWithAddr(h *netlink.Handle, name string, addrs ...*net.IPNet) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	for _, addr := range addrs {
		if err := h.AddrAdd(l, addrOf(addr)); err != nil {
			return fmt.Errorf("add %s to %s: %w", addr, name, err)
		}
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

// shortName is prefix + 6 hex digits of a hash of s: stable, short and unique enough for names.
func shortName(prefix, s string) string {
	h := fnv.New32a()
	h.Write([]byte(s))
	return fmt.Sprintf("%s%06x", prefix, h.Sum32()&0xffffff)
}

// nodeObject is the Node as a kubelet would register it.
func nodeObject(n *Node) *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: map[string]string{
			"kubernetes.io/hostname": n.Name, "magic-ip.dev/test-cluster": n.cluster.Name,
		}},
		Spec: corev1.NodeSpec{PodCIDR: n.PodCIDR.String(), PodCIDRs: podCIDRs(n)},
	}
}

// podCIDRs are the node's pod CIDRs, IPv4 first.
func podCIDRs(n *Node) []string {
	var out []string
	for _, f := range n.families() {
		out = append(out, f.podCIDR.String())
	}
	return out
}

// setNodeStatus writes an InternalIP per family (IPv4 first, as a kubelet with --node-ip for both
// families does), the hostname and the Ready condition.
func setNodeStatus(n *Node, node *corev1.Node) {
	node.Status.Addresses = nil
	for _, ip := range n.IPs() {
		node.Status.Addresses = append(node.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip.String()})
	}
	node.Status.Addresses = append(node.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeHostName, Address: n.Name})
	node.Status.Conditions = []corev1.NodeCondition{{
		Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
		LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now(),
	}}
}
