package nftables

import (
	"fmt"
	"net/netip"
	"testing"
)

// TestKernelSpreadThroughMap: through the endpoints map, new connections reach each of three
// producers (numgen random mod 3 offset 1 picks the slot the map holds a producer for); once one
// is replaced by another (a transaction of elements alone), the new one is reached and the old
// one never again; a service down to one producer (slot 0, DNATed straight from prerouting) and
// back to two is reached throughout, by its producers only, and so is one in the sources mode
// (no such rule: the spread chain of one).
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
	p4 := Endpoint{Pod: "p4", Addr: netip.MustParseAddrPort("10.2.0.2:8084")}
	// A service of one producer has it in slot 0, which prerouting's "one producer" rule DNATs
	// to at once where every non-external packet is node-local (All), and the spread chain of
	// one reaches otherwise (Sources); one of n has slots 1 to n. Each step moves between them
	// with elements alone, and the service is reached throughout.
	bySource := Local{Sources: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}}
	for i, step := range []struct {
		name        string
		local       Local
		eps         []Endpoint
		want, never []string
	}{
		{"three producers", Local{All: true}, eps, []string{"p1", "p2", "p3"}, []string{"p4"}},
		{"p1 replaced by p4", Local{All: true}, []Endpoint{p4, eps[1], eps[2]}, []string{"p4", "p2", "p3"}, []string{"p1"}},
		{"one producer left: slot 0, straight from prerouting", Local{All: true}, eps[1:2], []string{"p2"}, []string{"p1", "p3", "p4"}},
		{"two again: slots 1 and 2", Local{All: true}, eps[1:3], []string{"p2", "p3"}, []string{"p1", "p4"}},
		{"one producer, sources mode: through the spread chain of one", bySource, eps[2:3], []string{"p3"}, []string{"p1", "p2", "p4"}},
		{"three producers, sources mode", bySource, eps, []string{"p1", "p2", "p3"}, []string{"p4"}},
	} {
		next := svc
		next.Endpoints = step.eps
		if _, _, err := d.Apply(r.Render(Input{Addresses: []netip.Addr{magic}, Services: []Service{next}, Local: step.local}), i == 0); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if tx := k.Last(); i > 0 && step.local.All && (tx.Rules != 0 || tx.Chains != 0) {
			t.Errorf("%s: the transaction held %d chains and %d rules, want elements only", step.name, tx.Chains, tx.Rules)
		}
		reached(step.name, step.want, step.never)
	}
}
