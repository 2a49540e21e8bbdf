package harness

import (
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
)

// AddRoutedClient plugs a client namespace into node the way routed CNIs (Calico's cali*,
// Cilium's lxc*) plug pods: its own host-side veth named hostIf, not on the pod bridge, a /32
// (/128) route to each of the client's addresses (the next free ones of the node's pod CIDRs, one
// per family of the node) through it, and a default route per family via a gateway the node
// answers for (and proxy ARP / proxy NDP on the pod bridge, so bridge pods reach it). It has no
// Pod object: it is only a source of traffic arriving on hostIf.
func (c *Cluster) AddRoutedClient(node *Node, hostIf string) *Outside {
	c.t.Helper()
	ips, err := node.allocIPs()
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
	if err := prepareStack(ns, node.Stack, false); err != nil {
		c.t.Fatalf("routed client: %v", err)
	}
	var hostMAC net.HardwareAddr
	err = node.Netns.withHandle(func(h *netlink.Handle) (err error) {
		hostMAC, err = routedHostSide(h, ns, hostIf, ips)
		return err
	})
	if err == nil {
		err = ns.withHandle(func(h *netlink.Handle) error { return routedClientSide(h, ips, hostMAC) })
	}
	if err == nil {
		err = proxyForBridge(node, ips)
	}
	if err != nil {
		c.t.Fatalf("routed client on %s: %v", node.Name, err)
	}
	o := &Outside{Netns: ns, IP: ips[0]}
	if node.Stack.Has6() {
		o.IP6 = ips[len(ips)-1]
	}
	return o
}

// routedHostSide creates the client's veth in the node namespace h, named hostIf, with a host
// route to each of ips through it, and returns its MAC.
func routedHostSide(h *netlink.Handle, ns *Netns, hostIf string, ips []net.IP) (net.HardwareAddr, error) {
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostIf}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(ns.handle))}
	if err := h.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("add veth %s: %w", hostIf, err)
	}
	if err := linkUpWithAddr(h, hostIf); err != nil {
		return nil, err
	}
	l, err := h.LinkByName(hostIf)
	if err != nil {
		return nil, err
	}
	for _, ip := range ips {
		if err := h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: &net.IPNet{IP: ip, Mask: hostMask(ip)}, Scope: netlink.SCOPE_LINK}); err != nil {
			return nil, fmt.Errorf("route to %s via %s: %w", ip, hostIf, err)
		}
	}
	return l.Attrs().HardwareAddr, nil
}

// proxyForBridge makes the node answer for the routed client's addresses on the pod bridge: the
// bridge's pods hold the whole pod CIDR on-link and resolve the client there (ARP, NDP), while the
// node routes the addresses elsewhere, as mixed setups do.
func proxyForBridge(node *Node, ips []net.IP) error {
	if err := node.Netns.Sysctl("net.ipv4.conf."+PodBridge+".proxy_arp", "1"); err != nil {
		return err
	}
	for _, ip := range ips {
		if ip.To4() != nil {
			continue
		}
		if err := node.Netns.Sysctl("net.ipv6.conf."+PodBridge+".proxy_ndp", "1"); err != nil {
			return err
		}
		if err := node.Netns.withHandle(func(h *netlink.Handle) error {
			br, err := h.LinkByName(PodBridge)
			if err != nil {
				return err
			}
			return h.NeighAdd(&netlink.Neigh{LinkIndex: br.Attrs().Index, Family: netlink.FAMILY_V6, IP: ip, Flags: netlink.NTF_PROXY})
		}); err != nil {
			return fmt.Errorf("proxy NDP for %s on %s: %w", ip, PodBridge, err)
		}
	}
	return nil
}

// routedGateway is routed CNIs' usual gateway of the family, which exists on no interface:
// Calico's 169.254.1.1 for IPv4, and a link-local fe80::1 for IPv6.
func routedGateway(ip net.IP) net.IP {
	if ip.To4() == nil {
		return net.ParseIP("fe80::1")
	}
	return net.IPv4(169, 254, 1, 1).To4()
}

// routedClientSide configures the client's eth0: each of ips as a host address (/32, /128), and
// per family a link route to the gateway with a permanent neighbour entry (the host-side MAC) and
// the default route via the gateway.
func routedClientSide(h *netlink.Handle, ips []net.IP, hostMAC net.HardwareAddr) error {
	var addrs []*net.IPNet
	for _, ip := range ips {
		addrs = append(addrs, &net.IPNet{IP: ip, Mask: hostMask(ip)})
	}
	if err := linkUpWithAddr(h, "eth0", addrs...); err != nil {
		return err
	}
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		return err
	}
	idx := eth0.Attrs().Index
	for _, ip := range ips {
		gwIP := routedGateway(ip)
		gw := &net.IPNet{IP: gwIP, Mask: hostMask(gwIP)}
		if err := h.RouteAdd(&netlink.Route{LinkIndex: idx, Dst: gw, Scope: netlink.SCOPE_LINK}); err != nil {
			return fmt.Errorf("route to %s: %w", gwIP, err)
		}
		if err := h.NeighAdd(&netlink.Neigh{LinkIndex: idx, IP: gwIP, HardwareAddr: hostMAC, State: netlink.NUD_PERMANENT}); err != nil {
			return fmt.Errorf("neighbour %s: %w", gwIP, err)
		}
		if err := h.RouteAdd(&netlink.Route{LinkIndex: idx, Gw: gwIP}); err != nil {
			return fmt.Errorf("default route via %s: %w", gwIP, err)
		}
	}
	return nil
}
