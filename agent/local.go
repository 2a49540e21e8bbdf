package agent

import (
	"fmt"
	"net/netip"
	"strings"
)

// LocalMode is how the agent tells traffic from this node's pods (redirected to a local producer)
// from traffic that arrives from off the node (never redirected: refused by the filter rules).
// The names follow kube-proxy's --detect-local-mode where the rule is the same.
type LocalMode string

const (
	// NodeAddresses (the default): traffic arriving on an interface that holds one of the node's
	// addresses (its Node object's InternalIP/ExternalIP, or --node-ip) is from off the node;
	// --external-interfaces names those interfaces instead.
	NodeAddresses LocalMode = "NodeAddresses"
	// NodeCIDR: only traffic from the Node's spec.podCIDRs is node-local (kube-proxy's NodeCIDR).
	NodeCIDR LocalMode = "NodeCIDR"
	// BridgeInterface: only traffic arriving on the pod bridge (--pod-bridge-interface) is
	// node-local (kube-proxy's BridgeInterface).
	BridgeInterface LocalMode = "BridgeInterface"
	// InterfaceNamePrefix: only traffic arriving on an interface whose name starts with one of
	// --pod-interface-name-prefixes is node-local (kube-proxy's InterfaceNamePrefix, with a list).
	InterfaceNamePrefix LocalMode = "InterfaceNamePrefix"
)

// LocalModes are the values --detect-local-mode accepts.
func LocalModes() []LocalMode {
	return []LocalMode{NodeAddresses, NodeCIDR, BridgeInterface, InterfaceNamePrefix}
}

// LocalDetector is the resolved rule that keeps off-node traffic from being redirected. In
// NodeAddresses mode External lists where off-node traffic arrives; in the other modes Local lists
// what node-local traffic matches, and anything else is off-node. An empty Local redirects nothing.
type LocalDetector struct {
	Mode     LocalMode
	External []string
	Local    []LocalMatch
}

// LocalMatch is one way node-local traffic is recognised: its source prefix or its input
// interface (a trailing "+" matches a name prefix, as iptables' -i does).
type LocalMatch struct {
	Source    netip.Prefix
	Interface string
}

// ExternalInterfaces is the NodeAddresses detector for the given uplinks.
func ExternalInterfaces(names ...string) *LocalDetector {
	return &LocalDetector{Mode: NodeAddresses, External: names}
}

// String describes the detector for logs.
func (d *LocalDetector) String() string {
	if d == nil {
		return "none (every source is node-local)"
	}
	if d.Mode == NodeAddresses {
		return fmt.Sprintf("%s: off-node = arriving on %s", d.Mode, strings.Join(d.External, ","))
	}
	var m []string
	for _, l := range d.Local {
		m = append(m, l.String())
	}
	return fmt.Sprintf("%s: node-local = %s", d.Mode, strings.Join(m, " or "))
}

func (m LocalMatch) String() string {
	if m.Source.IsValid() {
		return "from " + m.Source.String()
	}
	return "arriving on " + m.Interface
}

// external renders the start of MAGIC-IP-PREROUTING in NodeAddresses mode: traffic arriving on an
// external interface returns unredirected. Rules are written as iptables-save prints them (-s,
// -d, -i, then matches).
func (d *LocalDetector) external() []string {
	var out []string
	if d != nil && d.Mode == NodeAddresses {
		for _, ifc := range d.External {
			out = append(out, fmt.Sprintf(`-i %s -m comment --comment "external interface: not node-local" -j RETURN`, ifc))
		}
	}
	return out
}

// dispatch renders the end of MAGIC-IP-PREROUTING, after the guard (notMagic) let through only
// packets inside the magic addresses' prefix: node-local traffic of family fam goes on to
// MAGIC-IP-SERVICES, which matches each service's exact address. No rule per address: a new
// connection to the last of 1,000 MagicIPs walked 1,000 of them first. A nil detector counts
// every source as node-local.
func (d *LocalDetector) dispatch(fam Family) []string {
	if d == nil || d.Mode == NodeAddresses {
		return []string{"-j " + chainServices}
	}
	var out []string
	for _, m := range d.Local {
		if m.Source.IsValid() && m.Source.Addr().Is4() != (fam == IPv4) {
			continue // a pod CIDR of the other family
		}
		out = append(out, m.dispatch(d.Mode))
	}
	return out
}

func (m LocalMatch) dispatch(mode LocalMode) string {
	var b strings.Builder
	if m.Source.IsValid() {
		fmt.Fprintf(&b, "-s %s ", m.Source.Masked())
	}
	if m.Interface != "" {
		fmt.Fprintf(&b, "-i %s ", m.Interface)
	}
	fmt.Fprintf(&b, `-m comment --comment "node-local (%s)" -j %s`, mode, chainServices)
	return b.String()
}
