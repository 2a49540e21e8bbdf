package nftables

import (
	"fmt"
	"net/netip"
	"testing"
)

// TestKernelSpreadThroughMap: through the endpoints map, new connections reach each of three
// producers (numgen random mod 3 picks the slot the map holds a producer for); once one is
// replaced by another (a transaction of elements alone), the new one is reached and the old one
// never again.
func TestKernelSpreadThroughMap(t *testing.T) {
	_, k, client, prod := magicNode(t, "nftspread")
	eps := make([]Endpoint, 0, 3)
	for i := 1; i <= 4; i++ {
		prod.ServeTCP(t, 8080+i, fmt.Sprintf("p%d", i))
		if i <= 3 {
			eps = append(eps, Endpoint{Pod: fmt.Sprintf("p%d", i), Addr: netip.AddrPortFrom(netip.MustParseAddr("10.2.0.2"), uint16(8080+i))})
		}
	}
	svc := Service{Key: "m:tcp", Addr: magic, Port: 80, Protocol: "tcp", Verdict: Reject, Endpoints: eps}
	d := &Datapath{Kernel: k}
	var r Renderer
	reached := func(name string, want, never []string) {
		t.Helper()
		const n = 60
		got := map[string]int{}
		for range n {
			got[outcome(t.Context(), client, "tcp", "169.254.210.210:80")]++
		}
		for _, p := range want {
			if got[p] < n/12 { // 20 expected each; fewer than 5 of 60 is some 1e-5 likely
				t.Errorf("%s: %d connections: %v; want each of %v reached evenly", name, n, got, want)
			}
		}
		for _, p := range never {
			if got[p] > 0 {
				t.Errorf("%s: %d connections: %v; %s must not be reached", name, n, got, p)
			}
		}
	}
	if _, _, err := d.Apply(r.Render(Input{Addresses: []netip.Addr{magic}, Services: []Service{svc}, Local: Local{All: true}}), true); err != nil {
		t.Fatal(err)
	}
	reached("three producers", []string{"p1", "p2", "p3"}, []string{"p4"})
	moved := svc
	moved.Endpoints = []Endpoint{{Pod: "p4", Addr: netip.MustParseAddrPort("10.2.0.2:8084")}, eps[1], eps[2]}
	if _, _, err := d.Apply(r.Render(Input{Addresses: []netip.Addr{magic}, Services: []Service{moved}, Local: Local{All: true}}), false); err != nil {
		t.Fatal(err)
	}
	if tx := k.Last(); tx.Rules != 0 || tx.Chains != 0 {
		t.Errorf("one producer replaced: the transaction held %d chains and %d rules, want elements only", tx.Chains, tx.Rules)
	}
	reached("p1 replaced by p4", []string{"p4", "p2", "p3"}, []string{"p1"})
}
