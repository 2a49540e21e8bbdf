// Package agent programs one node so that its magic IPs reach a Ready producer on the same node.
//
// The core is pure: Desired turns the MagicIPs and this node's pods into a State (plain data);
// rendering turns a State into iptables-restore input; the kernel side applies it in one step.
package agent

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// State is what the node should look like: addresses per interface and one Service per served
// port. Everything is sorted, so equal inputs give equal States.
type State struct {
	// Addresses maps a host interface to the magic addresses it carries.
	Addresses map[string][]netip.Addr
	Services  []Service
	// Conflicts: MagicIPs ignored because an older one claims their address+port+protocol.
	Conflicts map[string]v1alpha1.Conflict
	// Invalid: MagicIPs ignored because they cannot be programmed, with the reason.
	Invalid map[string]string
	// Unprogrammed: the addresses left out of MagicIPs that are otherwise served, with why (the
	// IPv6 address of a dual-stack MagicIP on a node that does not program IPv6).
	Unprogrammed map[string][]v1alpha1.UnprogrammedAddress
	// Remote lists the Fallback MagicIPs that have no Ready (non-terminating) producer on this
	// node: their producers on other nodes must be watched (see RemoteProducers).
	Remote []v1alpha1.MagicIP
}

// Service is one MagicIP port on this node.
type Service struct {
	MagicIP  string
	PortName string
	Address  netip.Addr
	Port     int32
	Protocol v1alpha1.Protocol
	// Interface is the host interface that carries Address for this MagicIP.
	Interface string
	// WhenNoProducer applies when Endpoints is empty, and to traffic that was not redirected.
	WhenNoProducer v1alpha1.NoLocalProducerAction
	// Endpoints are the local producers new connections go to, sorted by IP: the Ready ones, or,
	// while there are none, the terminating ones that still serve (Ready condition true).
	Endpoints []Endpoint
}

// Endpoint is one producer pod's address and target port.
type Endpoint struct {
	Pod  string // namespace/name
	Addr netip.AddrPort
	// Terminating: the pod is being deleted but still serves; it is used only while no Ready
	// producer is left (as kube-proxy does with terminating endpoints, KEP-1669).
	Terminating bool
	// Node is set for a producer on another node, used only while this node has no usable
	// producer and the MagicIP says Fallback.
	Node string
}

// Key names the service for comments and chain names: "<magicip>:<port name>".
func (s Service) Key() string { return s.MagicIP + ":" + s.PortName }

// Desired computes the node's State from all MagicIPs and the pods bound to this node.
// defaultInterface is used for MagicIPs that do not name a hostInterface.
func Desired(mips []v1alpha1.MagicIP, pods []corev1.Pod, nodeName, defaultInterface string) State {
	st := State{Addresses: map[string][]netip.Addr{}, Invalid: map[string]string{}, Unprogrammed: map[string][]v1alpha1.UnprogrammedAddress{}}
	accepted, conflicts := v1alpha1.ResolveClaims(mips)
	st.Conflicts = conflicts
	for _, m := range mips {
		if _, err := netip.ParseAddr(m.Spec.Address); err != nil {
			st.Invalid[m.Name] = fmt.Sprintf("address %q: %v", m.Spec.Address, err)
		}
	}
	for _, m := range accepted {
		if err := m.Spec.ProgrammableAddress(); err != nil {
			// An IPv6-only MagicIP (spec.address IPv6) is not programmed: the API reports it
			// Accepted=False (AddressFamilyNotSupported). Same words as the status.
			st.Invalid[m.Name] = err.Error()
			continue
		}
		if err := st.add(m, pods, nodeName, cmp.Or(m.Spec.HostInterface, defaultInterface)); err != nil {
			st.Invalid[m.Name] = err.Error()
		}
	}
	for _, a := range st.Addresses {
		slices.SortFunc(a, netip.Addr.Compare)
	}
	slices.SortFunc(st.Services, func(a, b Service) int {
		return cmp.Or(a.Address.Compare(b.Address), cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Port, b.Port))
	})
	return st
}

// add serves m on each of its addresses (IPv4, and IPv6 for a dual-stack MagicIP), each with the
// producers' addresses of its family, on iface.
func (st *State) add(m v1alpha1.MagicIP, pods []corev1.Pod, nodeName, iface string) error {
	addrs := magicAddresses(m.Spec)
	sets := make([]producerSet, len(addrs))
	for i, a := range addrs {
		set, err := producers(m, pods, nodeName, a.Is4())
		if err != nil {
			return err
		}
		sets[i] = set
	}
	fallback := m.Spec.EffectiveWhenNoLocalProducer() == v1alpha1.Fallback
	if fallback && slices.ContainsFunc(sets, func(s producerSet) bool { return len(s.ready) == 0 }) {
		st.Remote = append(st.Remote, m)
	}
	for i, addr := range addrs {
		if !slices.Contains(st.Addresses[iface], addr) {
			st.Addresses[iface] = append(st.Addresses[iface], addr)
		}
		eps := sets[i].serving(fallback)
		for _, p := range m.Spec.Ports {
			svc := Service{
				MagicIP: m.Name, PortName: p.Name, Address: addr, Port: p.Port, Protocol: p.EffectiveProtocol(),
				Interface: iface, WhenNoProducer: m.Spec.EffectiveWhenNoLocalProducer(),
			}
			for _, ep := range eps {
				svc.Endpoints = append(svc.Endpoints, Endpoint{Pod: ep.pod, Addr: netip.AddrPortFrom(ep.ip, uint16(p.EffectiveTargetPort())), Terminating: ep.terminating, Node: ep.node})
			}
			st.Services = append(st.Services, svc)
		}
	}
	return nil
}

// magicAddresses are the addresses of spec to program: address, and ipv6Address when it is a
// true IPv6 address (the CRD refuses anything else).
func magicAddresses(spec v1alpha1.MagicIPSpec) []netip.Addr {
	out := []netip.Addr{netip.MustParseAddr(spec.Address).Unmap()}
	if a, err := netip.ParseAddr(spec.IPv6Address); err == nil && a.Is6() && !a.Is4In6() {
		out = append(out, a)
	}
	return out
}

type producer struct {
	pod         string
	ip          netip.Addr
	terminating bool
	node        string // set for a producer on another node
}

// producerSet is a MagicIP's Ready producers, in its producer namespace and matching its
// selector, with an IP of the address family wanted: on this node (ready, or terminating but
// still Ready: serving), and on other nodes (remote: Ready and not terminating).
type producerSet struct {
	ready, terminating, remote []producer
}

// serving are the producers new connections go to, sorted by IP: the local Ready ones; when there
// are none and fallback is on, the Ready ones on other nodes; when there are none either, the
// local terminating ones that still serve, so a graceful producer restart loses nothing while its
// replacement starts. As kube-proxy does with terminating endpoints (KEP-1669): a terminating
// endpoint is used only when no Ready one may be, and with Fallback the remote ones may be.
func (s producerSet) serving(fallback bool) []producer {
	out := s.ready
	if len(out) == 0 && fallback {
		out = s.remote
	}
	if len(out) == 0 {
		out = s.terminating
	}
	slices.SortFunc(out, func(a, b producer) int { return cmp.Or(a.ip.Compare(b.ip), cmp.Compare(a.pod, b.pod)) })
	return out
}

// producers sorts m's Ready producers among pods into a producerSet.
func producers(m v1alpha1.MagicIP, pods []corev1.Pod, nodeName string, v4 bool) (producerSet, error) {
	var set producerSet
	sel, err := metav1.LabelSelectorAsSelector(m.Spec.Producer.Selector.AsLabelSelector())
	if err != nil {
		return set, fmt.Errorf("producer selector: %w", err)
	}
	if sel.Empty() {
		return set, fmt.Errorf("producer selector is empty")
	}
	for i := range pods {
		p := &pods[i]
		if p.Namespace != m.Spec.Producer.Namespace || !isReady(p) || !sel.Matches(labels.Set(p.Labels)) {
			continue
		}
		ip, ok := podIP(p, v4)
		if !ok {
			continue
		}
		pr := producer{pod: p.Namespace + "/" + p.Name, ip: ip, terminating: p.DeletionTimestamp != nil}
		switch {
		case p.Spec.NodeName != nodeName:
			if !pr.terminating && p.Spec.NodeName != "" {
				pr.node = p.Spec.NodeName
				set.remote = append(set.remote, pr)
			}
		case pr.terminating:
			set.terminating = append(set.terminating, pr)
		default:
			set.ready = append(set.ready, pr)
		}
	}
	return set, nil
}

func isReady(p *corev1.Pod) bool {
	if p.Status.Phase != corev1.PodRunning {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// podIP is the pod's first IP of the wanted family.
func podIP(p *corev1.Pod, v4 bool) (netip.Addr, bool) {
	ips := []string{p.Status.PodIP}
	for _, x := range p.Status.PodIPs {
		ips = append(ips, x.IP)
	}
	for _, s := range ips {
		if a, err := netip.ParseAddr(s); err == nil && a.Unmap().Is4() == v4 {
			return a.Unmap(), true
		}
	}
	return netip.Addr{}, false
}

// AddressPolicy says which magic addresses this node may program (--allowed-address-ranges).
// A MagicIP is a cluster-wide claim on an address on every node: one pointing at a node IP, a
// ClusterIP or the cloud's metadata service would hijack it everywhere.
type AddressPolicy struct {
	Allowed []netip.Prefix
}

// DefaultAllowedRanges are the link-local IPv4 range and, for IPv6, link-local and the locally
// assigned half of the unique local range (where AWS puts its IPv6 metadata service too).
func DefaultAllowedRanges() []string { return []string{"169.254.0.0/16", "fe80::/10", "fd00::/8"} }

// Admit splits mips into those whose address the policy allows and, for the others, the reason
// (for State.Invalid). Addresses that do not parse are left to Desired, which reports them.
func (p AddressPolicy) Admit(mips []v1alpha1.MagicIP) ([]v1alpha1.MagicIP, map[string]string) {
	var ok []v1alpha1.MagicIP
	refused := map[string]string{}
	for _, m := range mips {
		if why := p.refuse(m.Spec.Address); why != "" {
			refused[m.Name] = why
			continue
		}
		ok = append(ok, m)
	}
	return ok, refused
}

// ReasonAddressNotAllowed: an address of a MagicIP left out because this node's
// --allowed-address-ranges (or the cloud platform list) refuse it; the rest is served.
const ReasonAddressNotAllowed = "AddressNotAllowed"

// AdmitIPv6 leaves out the ipv6Address of each MagicIP of mips that the policy refuses (the rest
// of the MagicIP stays served) and reports it, for State.Unprogrammed.
func (p AddressPolicy) AdmitIPv6(mips []v1alpha1.MagicIP) ([]v1alpha1.MagicIP, map[string][]v1alpha1.UnprogrammedAddress) {
	out := make([]v1alpha1.MagicIP, 0, len(mips))
	left := map[string][]v1alpha1.UnprogrammedAddress{}
	for _, m := range mips {
		if why := p.refuse(m.Spec.IPv6Address); m.Spec.IPv6Address != "" && why != "" {
			left[m.Name] = []v1alpha1.UnprogrammedAddress{{Address: m.Spec.IPv6Address, Reason: ReasonAddressNotAllowed, Message: why + "; the IPv4 address " + m.Spec.Address + " is served"}}
			m = *m.DeepCopy()
			m.Spec.IPv6Address = ""
		}
		out = append(out, m)
	}
	return out, left
}

func (p AddressPolicy) refuse(address string) string {
	a, err := netip.ParseAddr(address)
	if err != nil {
		return ""
	}
	a = a.Unmap()
	// v1alpha1.CloudPlatformAddresses are canonical, as a.String() is: compared as text.
	if slices.Contains(v1alpha1.CloudPlatformAddresses(), a.String()) {
		return fmt.Sprintf("address %s is a cloud metadata or infrastructure address: never programmed", a)
	}
	if !slices.ContainsFunc(p.Allowed, func(r netip.Prefix) bool { return r.Contains(a) }) {
		return fmt.Sprintf("address %s is outside the agent's --allowed-address-ranges %v: not programmed", a, p.Allowed)
	}
	return ""
}
