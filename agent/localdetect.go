package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/rest"
)

// hostLink is what local detection needs to know of one of the node's interfaces.
type hostLink struct {
	Name   string
	Bridge bool
	// VethPorts: a bridge with veth ports, where pods attach.
	VethPorts bool
	Addrs     []netip.Addr
}

// otherModes is the advice in refusals: the modes that do not rely on the node's addresses.
const otherModes = "--detect-local-mode=NodeCIDR (source in the Node's spec.podCIDRs), BridgeInterface or InterfaceNamePrefix"

// resolveLocal turns the configuration, this node's Node object and its interfaces into the
// detector, or refuses: whenever nothing would tell off-node traffic apart (which would let any
// neighbour routing a magic address to the node reach its producers), and whenever the chosen
// mode would exempt every pod. notes are warnings to log.
func resolveLocal(cfg Config, node *corev1.Node, links []hostLink) (d *LocalDetector, notes []string, err error) {
	mode := LocalMode(cfg.DetectLocalMode)
	if mode != NodeAddresses && len(cfg.ExternalInterfaces) > 0 {
		return nil, nil, fmt.Errorf("--external-interfaces applies to --detect-local-mode=%s only, not %s", NodeAddresses, mode)
	}
	switch mode {
	case NodeAddresses:
		d, err = byNodeAddresses(cfg, node, links)
	case NodeCIDR:
		d, err = byNodeCIDR(node)
	case BridgeInterface:
		d, notes, err = byBridge(cfg, node, links)
	case InterfaceNamePrefix:
		d, err = byPrefix(cfg, node, links)
	default:
		err = fmt.Errorf("--detect-local-mode %q: want one of %v", mode, LocalModes())
	}
	return d, notes, err
}

// byNodeAddresses: the interfaces named by --external-interfaces, or else those holding the
// node's addresses, are external; never the pod bridge.
func byNodeAddresses(cfg Config, node *corev1.Node, links []hostLink) (*LocalDetector, error) {
	names := cfg.ExternalInterfaces
	if len(names) == 0 {
		addrs, from, err := nodeAddresses(cfg, node)
		if err != nil {
			return nil, err
		}
		if len(addrs) == 0 {
			return nil, fmt.Errorf("%s lists no InternalIP or ExternalIP address: nothing tells off-node traffic apart, and redirecting traffic from anywhere is not an option; set --external-interfaces or use %s", from, otherModes)
		}
		names = holding(links, addrs)
		if len(names) == 0 {
			return nil, fmt.Errorf("no interface of this node holds %s (%v): nothing tells off-node traffic apart; set --external-interfaces or use %s", from, addrs, otherModes)
		}
	}
	for _, n := range names {
		l, _ := findLink(links, n)
		if n == cfg.HostInterface || n == cfg.PodBridgeInterface || l.VethPorts {
			return nil, fmt.Errorf("interface %s holds the node's address but is also where this node's pods attach (the pod bridge): counting it as external would leave every pod unserved; use %s", n, otherModes)
		}
	}
	return ExternalInterfaces(names...), nil
}

// byNodeCIDR: the Node's pod CIDRs are node-local, each for the magic addresses of its family (a
// dual-stack node has one of each, an IPv6-only node an IPv6 one; a family without one redirects
// nothing).
func byNodeCIDR(node *corev1.Node) (*LocalDetector, error) {
	d := &LocalDetector{Mode: NodeCIDR}
	for _, s := range append([]string{node.Spec.PodCIDR}, node.Spec.PodCIDRs...) {
		p, err := netip.ParsePrefix(s)
		if err != nil || slices.Contains(localSources(d), p.Masked()) {
			continue
		}
		d.Local = append(d.Local, LocalMatch{Source: p.Masked()})
	}
	if len(d.Local) == 0 {
		return nil, fmt.Errorf("--detect-local-mode=NodeCIDR: Node %s has no spec.podCIDRs (pod addresses are not allocated by Kubernetes here, e.g. Calico or Cilium IPAM); use --detect-local-mode=InterfaceNamePrefix or BridgeInterface", node.Name)
	}
	return d, nil
}

func localSources(d *LocalDetector) []netip.Prefix {
	var out []netip.Prefix
	for _, m := range d.Local {
		out = append(out, m.Source)
	}
	return out
}

// byBridge: traffic arriving on the pod bridge is node-local. A bridge that does not exist yet is
// only a warning: bridge CNIs create it with the node's first pod, and the rule matches by name.
func byBridge(cfg Config, node *corev1.Node, links []hostLink) (*LocalDetector, []string, error) {
	br := cfg.PodBridgeInterface
	if br == "" {
		return nil, nil, errors.New("--detect-local-mode=BridgeInterface needs --pod-bridge-interface (e.g. cni0)")
	}
	l, ok := findLink(links, br)
	var notes []string
	switch {
	case !ok:
		notes = append(notes, fmt.Sprintf("pod bridge %s does not exist (yet): nothing is redirected until it does", br))
	case !l.Bridge:
		return nil, nil, fmt.Errorf("--pod-bridge-interface %s is not a bridge; use --detect-local-mode=InterfaceNamePrefix for pods on veth or other links", br)
	}
	if err := notOnUplink(cfg, node, links, func(name string) bool { return name == br }); err != nil {
		return nil, nil, err
	}
	return &LocalDetector{Mode: BridgeInterface, Local: []LocalMatch{{Interface: br}}}, notes, nil
}

// byPrefix: traffic arriving on an interface named with one of the prefixes is node-local.
func byPrefix(cfg Config, node *corev1.Node, links []hostLink) (*LocalDetector, error) {
	if len(cfg.PodInterfacePrefixes) == 0 {
		return nil, errors.New("--detect-local-mode=InterfaceNamePrefix needs --pod-interface-name-prefixes (e.g. veth,cali,lxc)")
	}
	d := &LocalDetector{Mode: InterfaceNamePrefix}
	for _, p := range cfg.PodInterfacePrefixes {
		d.Local = append(d.Local, LocalMatch{Interface: p + "+"})
	}
	err := notOnUplink(cfg, node, links, func(name string) bool {
		return slices.ContainsFunc(cfg.PodInterfacePrefixes, func(p string) bool { return strings.HasPrefix(name, p) })
	})
	return d, err
}

// notOnUplink refuses when an interface that local matches holds one of the node's addresses:
// off-node traffic arrives there too.
func notOnUplink(cfg Config, node *corev1.Node, links []hostLink, local func(string) bool) error {
	addrs, _, err := nodeAddresses(cfg, node)
	if err != nil {
		return err
	}
	for _, name := range holding(links, addrs) {
		if local(name) {
			return fmt.Errorf("interface %s counts as node-local (--detect-local-mode=%s) but holds the node's address %v: off-node traffic arrives there too; use --detect-local-mode=NodeCIDR", name, cfg.DetectLocalMode, addrs)
		}
	}
	return nil
}

// nodeAddresses are --node-ip, or else the Node's InternalIP and ExternalIP addresses; from says
// which, for messages.
func nodeAddresses(cfg Config, node *corev1.Node) (addrs []netip.Addr, from string, err error) {
	if cfg.NodeIP != "" {
		a, err := netip.ParseAddr(cfg.NodeIP)
		if err != nil {
			return nil, "", fmt.Errorf("--node-ip %q: %w", cfg.NodeIP, err)
		}
		return []netip.Addr{a.Unmap()}, "--node-ip " + cfg.NodeIP, nil
	}
	for _, a := range node.Status.Addresses {
		if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(a.Address); err == nil && !slices.Contains(addrs, ip.Unmap()) {
			addrs = append(addrs, ip.Unmap())
		}
	}
	return addrs, "Node " + node.Name, nil
}

// holding names the links that hold any of addrs, in link order.
func holding(links []hostLink, addrs []netip.Addr) []string {
	var out []string
	for _, l := range links {
		if slices.ContainsFunc(l.Addrs, func(a netip.Addr) bool { return slices.Contains(addrs, a) }) {
			out = append(out, l.Name)
		}
	}
	return out
}

func findLink(links []hostLink, name string) (hostLink, bool) {
	i := slices.IndexFunc(links, func(l hostLink) bool { return l.Name == name })
	if i < 0 {
		return hostLink{}, false
	}
	return links[i], true
}

// hostLinks lists the node's interfaces with their addresses (netlink, the agent's namespace).
func hostLinks() ([]hostLink, error) {
	all, err := redump(netlink.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	var out []hostLink
	for _, l := range all {
		a := l.Attrs()
		hl := hostLink{Name: a.Name, Bridge: l.Type() == "bridge"}
		hl.VethPorts = hl.Bridge && slices.ContainsFunc(all, func(p netlink.Link) bool {
			return p.Type() == "veth" && p.Attrs().MasterIndex == a.Index
		})
		addrs, err := redump(func() ([]netlink.Addr, error) { return netlink.AddrList(l, netlink.FAMILY_ALL) })
		if err != nil {
			return nil, fmt.Errorf("addresses of %s: %w", a.Name, err)
		}
		for _, ad := range addrs {
			if ip, ok := netip.AddrFromSlice(ad.IP); ok {
				hl.Addrs = append(hl.Addrs, ip.Unmap())
			}
		}
		out = append(out, hl)
	}
	return out, nil
}

// getNode reads this node's Node object (one GET at start: its addresses and pod CIDRs).
func getNode(ctx context.Context, core rest.Interface, name string) (*corev1.Node, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var node corev1.Node
	if err := core.Get().Resource("nodes").Name(name).Do(ctx).Into(&node); err != nil {
		return nil, fmt.Errorf("get Node %s (its addresses and pod CIDRs tell off-node traffic apart): %w", name, err)
	}
	return &node, nil
}
