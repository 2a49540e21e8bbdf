package harness

import (
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// NodeStack is the address families of a simulated node and of its pods.
type NodeStack string

const (
	// IPv4Only (the default): IPv4 addresses only; the namespace's IPv6 stays as the kernel makes
	// it (link-local addresses only), as on most IPv4 clusters.
	IPv4Only NodeStack = ""
	// DualStack: IPv4 and IPv6 uplink, pod gateway and pod addresses; IPv4 first in the API
	// (an IPv4-primary cluster).
	DualStack NodeStack = "dual-stack"
	// IPv6Only: IPv6 addresses only (no IPv4 address but loopback); the node's InternalIP, hostIP
	// and its pods' podIP are IPv6.
	IPv6Only NodeStack = "ipv6-only"
	// NoIPv6: IPv4 only, with IPv6 disabled in the node's namespace and its pods'
	// (net.ipv6.conf.{all,default}.disable_ipv6=1): a node without IPv6, no address of that
	// family anywhere, not even ::1.
	NoIPv6 NodeStack = "no-ipv6"
)

// Has4 reports whether nodes of this stack have IPv4 addresses.
func (s NodeStack) Has4() bool { return s != IPv6Only }

// Has6 reports whether nodes of this stack have IPv6 addresses.
func (s NodeStack) Has6() bool { return s == DualStack || s == IPv6Only }

func (s NodeStack) valid() error {
	switch s {
	case IPv4Only, DualStack, IPv6Only, NoIPv6:
		return nil
	}
	return fmt.Errorf("unknown node stack %q", s)
}

// IPv6 addressing of a simulated cluster: unique local addresses, inside the cluster's own
// namespaces only (the root namespace has no link or route into them).
const (
	// PodNetwork6 holds every node's IPv6 pod CIDR: fd00:10:244:<i>::/64 for node i.
	PodNetwork6 = "fd00:10:244::/56"
	// UnderlayNetwork6 is the IPv6 node uplink network: node i is ::<10+i> (hex), outside hosts
	// ::<200+n>.
	UnderlayNetwork6 = "fd00:172:20::/64"
	// PodNetwork and UnderlayNetwork are the IPv4 counterparts: 10.244.<i>.0/24 per node, uplinks
	// in 172.20.0.0/24.
	PodNetwork      = "10.244.0.0/16"
	UnderlayNetwork = underlayPrefix + "0/24"
)

// underlayIP6 is host i's IPv6 address on the underlay: fd00:172:20::<i>.
func underlayIP6(i int) net.IP {
	return net.ParseIP(fmt.Sprintf("fd00:172:20::%x", i))
}

// podCIDR6 is node i's IPv6 pod CIDR, fd00:10:244:<i>::/64.
func podCIDR6(i int) *net.IPNet {
	return &net.IPNet{IP: net.ParseIP(fmt.Sprintf("fd00:10:244:%x::", i)), Mask: net.CIDRMask(64, 128)}
}

// hostIn is host number k in the IPv4 /24 or IPv6 /64 cidr.
func hostIn(cidr *net.IPNet, k int) net.IP {
	ip := make(net.IP, len(cidr.IP))
	copy(ip, cidr.IP)
	ip[len(ip)-1] = byte(k)
	return ip
}

// hostMask is the mask of a single address of ip's family (/32 or /128).
func hostMask(ip net.IP) net.IPMask {
	if ip.To4() != nil {
		return net.CIDRMask(32, 32)
	}
	return net.CIDRMask(128, 128)
}

// addrOf is the netlink address for ipn: IPv6 ones skip duplicate address detection (IFA_F_NODAD),
// so they are usable at once instead of tentative for a second or more; the harness hands out
// every address itself, so none can be duplicated.
func addrOf(ipn *net.IPNet) *netlink.Addr {
	a := &netlink.Addr{IPNet: ipn}
	if ipn.IP.To4() == nil {
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}

// prepareStack sets the namespace's IPv6 sysctls for stack before any link is added: DAD off
// for the kernel's own link-local addresses (no address of the harness is ever tentative),
// forwarding on nodes of an IPv6 stack; IPv6 disabled for NoIPv6.
func prepareStack(ns *Netns, stack NodeStack, router bool) error {
	var kv [][2]string
	switch {
	case stack == NoIPv6:
		kv = [][2]string{{"net.ipv6.conf.default.disable_ipv6", "1"}, {"net.ipv6.conf.all.disable_ipv6", "1"}}
	case stack.Has6():
		kv = [][2]string{{"net.ipv6.conf.default.accept_dad", "0"}, {"net.ipv6.conf.all.accept_dad", "0"}}
		if router {
			kv = append(kv, [2]string{"net.ipv6.conf.all.forwarding", "1"})
		}
	}
	for _, s := range kv {
		if err := ns.Sysctl(s[0], s[1]); err != nil {
			return err
		}
	}
	return nil
}
