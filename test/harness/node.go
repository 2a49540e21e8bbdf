package harness

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Node is a simulated node: a network namespace with an uplink, a pod bridge and a Node object.
type Node struct {
	Name  string
	Index int
	Netns *Netns
	// Stack is the node's address families (ClusterOptions.Stacks); IPv4Only by default.
	Stack NodeStack
	// IP is the node's uplink (first InternalIP) address: 172.20.0.<10+Index>, or IP6 on an
	// IPv6-only node.
	IP net.IP
	// PodCIDR is 10.244.<Index>.0/24 (PodCIDR6 on an IPv6-only node); Gateway (.1) sits on cni0
	// (bridge nodes) or on every pod's host-side veth (routed nodes).
	PodCIDR *net.IPNet
	Gateway net.IP
	// IP6, PodCIDR6 and Gateway6 are the IPv6 ones on dual-stack and IPv6-only nodes (nil
	// otherwise): fd00:172:20::<10+Index>, fd00:10:244:<Index>::/64 and its ::1.
	IP6      net.IP
	PodCIDR6 *net.IPNet
	Gateway6 net.IP
	// Routed: pods hang off the node on their own veths with /32 routes, no bridge.
	Routed bool

	cluster *Cluster
	mu      sync.Mutex
	nextIP  int
}

// family is one address family of a node: its uplink address, pod CIDR and pod gateway.
type family struct {
	ip      net.IP
	podCIDR *net.IPNet
	gateway net.IP
}

func (f family) v6() bool { return f.ip.To4() == nil }

// newNode lays out node i's addresses for stack.
func newNode(c *Cluster, i int, routed bool, stack NodeStack) *Node {
	n := &Node{Name: fmt.Sprintf("%s-node-%d", c.Name, i), Index: i, Stack: stack, Routed: routed, cluster: c, nextIP: 10}
	if stack.Has6() {
		n.IP6, n.PodCIDR6 = underlayIP6(10+i), podCIDR6(i)
		n.Gateway6 = hostIn(n.PodCIDR6, 1)
		n.IP, n.PodCIDR, n.Gateway = n.IP6, n.PodCIDR6, n.Gateway6
	}
	if stack.Has4() {
		n.IP = net.ParseIP(fmt.Sprintf("%s%d", underlayPrefix, 10+i)).To4()
		n.PodCIDR = &net.IPNet{IP: net.IPv4(10, 244, byte(i), 0).To4(), Mask: net.CIDRMask(24, 32)}
		n.Gateway = net.IPv4(10, 244, byte(i), 1).To4()
	}
	return n
}

// families are the node's address families, IPv4 first.
func (n *Node) families() []family {
	var out []family
	if n.PodCIDR != nil && n.PodCIDR.IP.To4() != nil {
		out = append(out, family{n.IP, n.PodCIDR, n.Gateway})
	}
	if n.PodCIDR6 != nil {
		out = append(out, family{n.IP6, n.PodCIDR6, n.Gateway6})
	}
	return out
}

// familyOf is the node's family v6 (IPv6 or IPv4), if it has it.
func (n *Node) familyOf(v6 bool) (family, bool) {
	for _, f := range n.families() {
		if f.v6() == v6 {
			return f, true
		}
	}
	return family{}, false
}

// IPs are the node's uplink addresses, IPv4 first (its InternalIPs).
func (n *Node) IPs() []net.IP {
	var out []net.IP
	for _, f := range n.families() {
		out = append(out, f.ip)
	}
	return out
}

func (c *Cluster) addNode(i int, routed bool, stack NodeStack) (*Node, error) {
	n := newNode(c, i, routed, stack)
	ns, err := NewNetns(c.netnsName(fmt.Sprintf("node%d", i)))
	if err != nil {
		return nil, err
	}
	n.Netns = ns
	c.t.Cleanup(func() {
		if err := ns.Delete(); err != nil {
			c.t.Errorf("node %s: %v", n.Name, err)
		}
	})
	if err := prepareStack(ns, stack, true); err != nil {
		return nil, err
	}
	if err := c.plugUplink(ns, fmt.Sprintf("up%d", i), n.IPs()...); err != nil {
		return nil, err
	}
	if err := ns.withHandle(func(h *netlink.Handle) error {
		if routed {
			return addBridge(h, HostBridge)
		}
		var gws []*net.IPNet
		for _, f := range n.families() {
			gws = append(gws, &net.IPNet{IP: f.gateway, Mask: f.podCIDR.Mask})
		}
		return addBridge(h, PodBridge, gws...)
	}); err != nil {
		return nil, err
	}
	if err := ns.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
		return nil, err
	}
	if err := n.forwardAPIServer(); err != nil {
		return nil, err
	}
	return n, n.register(c.t.Context())
}

// HostInterface is the interface the agent puts the magic addresses on: cni0 on bridge nodes,
// HostBridge on routed ones.
func (n *Node) HostInterface() string {
	if n.Routed {
		return HostBridge
	}
	return PodBridge
}

// register creates the Node object with an InternalIP address and a Ready condition (on a
// control plane for real nodes, only the object: the kubelet that adopts it reports its status).
func (n *Node) register(ctx context.Context) error {
	obj := nodeObject(n)
	if err := n.cluster.CP.Client.Create(ctx, obj); err != nil {
		return fmt.Errorf("create Node %s: %w", n.Name, err)
	}
	if n.cluster.CP.Real != nil {
		return nil // its kubelet reports the status
	}
	setNodeStatus(n, obj)
	if err := n.cluster.CP.Client.Status().Update(ctx, obj); err != nil {
		return fmt.Errorf("update Node %s status: %w", n.Name, err)
	}
	return nil
}

// routeToPeers adds a route to every other node's pod CIDR via that node's uplink address, in
// each family both nodes have.
func (n *Node) routeToPeers(nodes []*Node) error {
	return n.Netns.withHandle(func(h *netlink.Handle) error {
		for _, p := range nodes {
			if p == n {
				continue
			}
			for _, f := range n.families() {
				pf, ok := p.familyOf(f.v6())
				if !ok {
					continue
				}
				if err := h.RouteAdd(&netlink.Route{Dst: pf.podCIDR, Gw: pf.ip}); err != nil {
					return fmt.Errorf("node %s: route %s via %s: %w", n.Name, pf.podCIDR, pf.ip, err)
				}
			}
		}
		return nil
	})
}

// forwardAPIServer listens on 127.0.0.1:<api port> inside the node namespace and forwards every
// connection to the API server on the root namespace's loopback, so the admin kubeconfig works
// unchanged for processes run inside the node.
func (n *Node) forwardAPIServer() error {
	port, err := n.cluster.CP.APIPort()
	if err != nil {
		return err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	var ln net.Listener
	if err := n.Netns.Do(func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		return fmt.Errorf("node %s: API forwarder: %w", n.Name, err)
	}
	serveConns(n.cluster.t, ln, func(in net.Conn) { proxy(in, addr) })
	return nil
}

// proxy copies between in and a new connection to addr (dialed from the root namespace: this
// goroutine never entered another namespace) until either side closes.
func proxy(in net.Conn, addr string) {
	out, err := net.Dial("tcp", addr)
	if err != nil {
		return
	}
	defer out.Close()
	pipe(in, out)
}

// pipe copies both ways between a and b until both directions are done.
func pipe(a, b net.Conn) {
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go cp(b, a)
	go cp(a, b)
	<-done
	<-done
}

// CNI host-local hands out this part of a node's /24 to real pods; simulated pods (allocIP) stay
// below it, so both kinds can share a node.
const (
	cniRangeStart = 128
	cniRangeEnd   = 250
)

// allocIP hands out the next address for a simulated pod in the node's first family: host .10
// to .127 of the node's CIDR (a real node's CNI IPAM hands out .128 to .250, see StartKubelet).
func (n *Node) allocIP() (net.IP, error) {
	ips, err := n.allocIPs()
	if err != nil {
		return nil, err
	}
	return ips[0], nil
}

// allocIPs hands out the next host number k (10 to 127) for a simulated pod: its address in each
// of the node's families, IPv4 first (10.244.<i>.<k>, fd00:10:244:<i>::<k hex>).
func (n *Node) allocIPs() ([]net.IP, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.nextIP >= cniRangeStart {
		return nil, fmt.Errorf("node %s: simulated pod addresses (.10-.%d) exhausted", n.Name, cniRangeStart-1)
	}
	var ips []net.IP
	for _, f := range n.families() {
		ips = append(ips, hostIn(f.podCIDR, n.nextIP))
	}
	n.nextIP++
	return ips, nil
}

// Object returns the node's current Node object.
func (n *Node) Object(ctx context.Context) (*corev1.Node, error) {
	obj := nodeObject(n)
	err := n.cluster.CP.Client.Get(ctx, client.ObjectKeyFromObject(obj), obj)
	return obj, err
}
