package agent

import (
	"net/netip"
	"testing"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// TestManyAddressesTraffic: with each datapath, 40 MagicIPs of one TCP port each (the iptables
// datapath's MAGIC-IP-SERVICES split into its tree of address blocks) all reach the producer
// from a pod — the first, the last and one in between —, and from the producer itself (hairpin),
// while a neighbour on the external interface is still refused, and a full resync finds the rules
// as written.
func TestManyAddressesTraffic(t *testing.T) {
	const n = 40
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{169, 254, 200, byte(1 + i)}) }
	st := State{Addresses: map[string][]netip.Addr{}}
	for i := range n {
		a := addr(i)
		st.Addresses[bridgeIface] = append(st.Addresses[bridgeIface], a)
		st.Services = append(st.Services, Service{MagicIP: "m" + a.String(), PortName: "tcp", Address: a, Port: 80, Protocol: v1alpha1.ProtocolTCP,
			Interface: bridgeIface, WhenNoProducer: v1alpha1.Reject, Endpoints: []Endpoint{{Pod: "ns/prod", Addr: netip.MustParseAddrPort("10.2.0.2:8080")}}})
	}
	for name, open := range kernelDatapaths() {
		t.Run(name, func(t *testing.T) {
			nd := newDualStackNode(t, "ma"+name[:3])
			syncClean(t, nd.node, open, st)
			for _, i := range []int{0, n / 2, n - 1} {
				dst := netip.AddrPortFrom(addr(i), 80)
				if got := outcomeOf(t.Context(), nd.client, "tcp", dst); got != "producer" {
					t.Errorf("tcp %s from a pod: %q, want the producer", dst, got)
				}
				if got := outcomeOf(t.Context(), nd.outside, "tcp", dst); got != "refused" {
					t.Errorf("tcp %s from the external interface: %q, want refused", dst, got)
				}
				if got := outcomeOf(t.Context(), nd.prod, "tcp", dst); got != "producer" {
					t.Errorf("tcp %s from the producer itself (hairpin): %q, want the producer", dst, got)
				}
			}
		})
	}
}
