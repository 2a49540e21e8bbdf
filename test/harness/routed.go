package harness

import (
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
)

// AddRoutedClient plugs a client namespace into node the way routed CNIs (Calico's cali*,
// Cilium's lxc*) plug pods: its own host-side veth named hostIf, not on the pod bridge, a /32
// route to the client's address (the next free one of the node's pod CIDR) through it, and a
// default route via a gateway the node answers for (and proxy ARP on the pod bridge, so bridge
// pods reach it). It has no Pod object: it is only a source of
// traffic arriving on hostIf. IPv4 only: node needs IPv4 (any stack but IPv6Only).
func (c *Cluster) AddRoutedClient(node *Node, hostIf string) *Outside {
	c.t.Helper()
	if !node.Stack.Has4() {
		c.t.Fatalf("routed client on %s: the node is %s, routed clients are IPv4", node.Name, node.Stack)
	}
	ip, err := node.allocIP()
	if err != nil {
		c.t.Fatalf("routed client: %v", err)
	}
	ns, err := NewNetns(c.netnsName("routed-" + hostIf))
	if err != nil {
		c.t.Fatalf("routed client: %v", err)
	}
	c.t.Cleanup(func() {
		if err := ns.Delete(); err != nil {
			c.t.Errorf("routed client: %v", err)
		}
	})
	var hostMAC net.HardwareAddr
	err = node.Netns.withHandle(func(h *netlink.Handle) error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostIf}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(ns.handle))}
		if err := h.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth %s: %w", hostIf, err)
		}
		if err := linkUpWithAddr(h, hostIf); err != nil {
			return err
		}
		l, err := h.LinkByName(hostIf)
		if err != nil {
			return err
		}
		hostMAC = l.Attrs().HardwareAddr
		return h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: &net.IPNet{IP: ip, Mask: net.CIDRMask(32, 32)}, Scope: netlink.SCOPE_LINK})
	})
	if err == nil {
		err = ns.withHandle(func(h *netlink.Handle) error { return routedClientSide(h, ip, hostMAC) })
	}
	if err == nil {
		// The bridge's pods hold the whole pod CIDR on-link and ARP for the client: the node
		// answers for it on the bridge (it routes the address elsewhere), as mixed setups do.
		err = node.Netns.Sysctl("net.ipv4.conf."+PodBridge+".proxy_arp", "1")
	}
	if err != nil {
		c.t.Fatalf("routed client on %s: %v", node.Name, err)
	}
	return &Outside{Netns: ns, IP: ip}
}

// routedClientSide configures the client's eth0: ip/32, a link route to the gateway with a
// permanent neighbour entry (the host-side MAC), and the default route via the gateway. The
// gateway is routed CNIs' usual 169.254.1.1 (Calico's): it exists on no interface.
func routedClientSide(h *netlink.Handle, ip net.IP, hostMAC net.HardwareAddr) error {
	routedGateway := net.IPv4(169, 254, 1, 1).To4()
	if err := linkUpWithAddr(h, "eth0", &net.IPNet{IP: ip, Mask: net.CIDRMask(32, 32)}); err != nil {
		return err
	}
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		return err
	}
	idx := eth0.Attrs().Index
	gw := &net.IPNet{IP: routedGateway, Mask: net.CIDRMask(32, 32)}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: idx, Dst: gw, Scope: netlink.SCOPE_LINK}); err != nil {
		return fmt.Errorf("route to %s: %w", routedGateway, err)
	}
	if err := h.NeighAdd(&netlink.Neigh{LinkIndex: idx, IP: routedGateway, HardwareAddr: hostMAC, State: netlink.NUD_PERMANENT}); err != nil {
		return fmt.Errorf("neighbour %s: %w", routedGateway, err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: idx, Gw: routedGateway}); err != nil {
		return fmt.Errorf("default route via %s: %w", routedGateway, err)
	}
	return nil
}
