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
	// IP is the node's uplink (InternalIP) address.
	IP net.IP
	// PodCIDR is 10.244.<Index>.0/24; Gateway (.1) sits on cni0 (bridge nodes) or on every
	// pod's host-side veth (routed nodes).
	PodCIDR *net.IPNet
	Gateway net.IP
	// Routed: pods hang off the node on their own veths with /32 routes, no bridge.
	Routed bool

	cluster *Cluster
	mu      sync.Mutex
	nextIP  int
}

func (c *Cluster) addNode(i int, routed bool) (*Node, error) {
	n := &Node{
		Name:    fmt.Sprintf("%s-node-%d", c.Name, i),
		Index:   i,
		IP:      net.ParseIP(fmt.Sprintf("%s%d", underlayPrefix, 10+i)).To4(),
		PodCIDR: &net.IPNet{IP: net.IPv4(10, 244, byte(i), 0).To4(), Mask: net.CIDRMask(24, 32)},
		Gateway: net.IPv4(10, 244, byte(i), 1).To4(),
		Routed:  routed,
		cluster: c,
		nextIP:  10,
	}
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
	if err := c.plugUplink(ns, fmt.Sprintf("up%d", i), n.IP); err != nil {
		return nil, err
	}
	if err := ns.withHandle(func(h *netlink.Handle) error {
		if routed {
			return addBridge(h, HostBridge, nil)
		}
		return addBridge(h, PodBridge, &net.IPNet{IP: n.Gateway, Mask: n.PodCIDR.Mask})
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

// routeToPeers adds a route to every other node's pod CIDR via that node's uplink address.
func (n *Node) routeToPeers(nodes []*Node) error {
	return n.Netns.withHandle(func(h *netlink.Handle) error {
		for _, p := range nodes {
			if p == n {
				continue
			}
			if err := h.RouteAdd(&netlink.Route{Dst: p.PodCIDR, Gw: p.IP}); err != nil {
				return fmt.Errorf("node %s: route %s via %s: %w", n.Name, p.PodCIDR, p.IP, err)
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

// allocIP hands out the next address for a simulated pod: .10 to .127 of the node's CIDR (a
// real node's CNI IPAM hands out .128 to .250, see StartKubelet).
func (n *Node) allocIP() (net.IP, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.nextIP >= cniRangeStart {
		return nil, fmt.Errorf("node %s: simulated pod addresses (.10-.%d) exhausted", n.Name, cniRangeStart-1)
	}
	ip := net.IPv4(10, 244, byte(n.Index), byte(n.nextIP)).To4()
	n.nextIP++
	return ip, nil
}

// Object returns the node's current Node object.
func (n *Node) Object(ctx context.Context) (*corev1.Node, error) {
	obj := nodeObject(n)
	err := n.cluster.CP.Client.Get(ctx, client.ObjectKeyFromObject(obj), obj)
	return obj, err
}
