package nftables

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	gnft "github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// TestKernelProducerChangeWritesElementsOnly: among 1,000 MagicIPs, a producer replaced by one at
// another address (the same number of producers) is a transaction of map and set elements alone,
// as the kernel reports it to a monitor: no rule and no chain is added, flushed or deleted, so the
// kernel has no table to validate and the cost does not follow the table's size. A producer added
// to a service is elements only too: its dispatch element goes to another spread chain, and its
// new producer gets an endpoints element. Either way the kernel then holds exactly what was
// rendered.
func TestKernelProducerChangeWritesElementsOnly(t *testing.T) {
	_, k, other := netnsKernel(t, "nftelems")
	d := &Datapath{Kernel: k}
	var r Renderer
	in := fleetInput(1000, 0)
	if _, _, err := d.Apply(r.Render(in), true); err != nil {
		t.Fatal(err)
	}
	events, err := other.AddGenerationalMonitor(gnft.NewMonitor(gnft.WithMonitorEventBuffer(16)))
	if err != nil {
		t.Fatal(err)
	}
	step := func(name string, edit func(eps []Endpoint) []Endpoint, maxRules, maxChains int) {
		t.Helper()
		next := in
		next.Services = slices.Clone(in.Services)
		next.Services[0].Endpoints = edit(slices.Clone(in.Services[0].Endpoints))
		rs := r.Render(next)
		if _, _, err := d.Apply(rs, false); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		counts := transactionEvents(t, events)
		if rules, chains := counts[gnft.MonitorEventTypeNewRule]+counts[gnft.MonitorEventTypeDelRule], counts[gnft.MonitorEventTypeNewChain]+counts[gnft.MonitorEventTypeDelChain]; rules > maxRules || chains > maxChains ||
			counts[gnft.MonitorEventTypeNewSetElem]+counts[gnft.MonitorEventTypeDelSetElem] == 0 {
			t.Errorf("%s among 1,000 MagicIPs: the kernel reported %d rule, %d chain and %d+%d element messages (want at most %d rule and %d chain messages, some element ones)", name,
				rules, chains, counts[gnft.MonitorEventTypeNewSetElem], counts[gnft.MonitorEventTypeDelSetElem], maxRules, maxChains)
		}
		t.Logf("%s: monitor counted %v", name, counts)
		if tx, elems := k.Last(), counts[gnft.MonitorEventTypeNewSetElem]+counts[gnft.MonitorEventTypeDelSetElem]; tx.Rules != counts[gnft.MonitorEventTypeNewRule] || tx.Elements != elems {
			t.Errorf("%s: Kernel.Last says %d rules and %d elements were sent, the monitor saw %d and %d", name, tx.Rules, tx.Elements, counts[gnft.MonitorEventTypeNewRule], elems)
		}
		o, err := k.Read()
		if err != nil {
			t.Fatal(err)
		}
		if drift := o.Drift(rs); len(drift) > 0 {
			t.Fatalf("%s: the kernel does not hold what was rendered: %q", name, drift)
		}
		in = next
	}
	step("one producer moved", func(eps []Endpoint) []Endpoint {
		eps[0].Addr = netip.MustParseAddrPort("10.250.0.1:8080")
		return eps
	}, 0, 0)
	step("one producer added", func(eps []Endpoint) []Endpoint {
		return append(eps, Endpoint{Pod: "ns/new", Addr: netip.MustParseAddrPort("10.250.0.2:8080")})
	}, 0, 0)
}

// transactionEvents counts the messages of the next transaction the monitor reports, by type.
func transactionEvents(t *testing.T, events chan *gnft.MonitorEvents) map[gnft.MonitorEventType]int {
	t.Helper()
	select {
	case evs := <-events:
		counts := map[gnft.MonitorEventType]int{}
		for _, e := range evs.Changes {
			if e.Error != nil {
				t.Fatalf("monitor: %v", e.Error)
			}
			counts[e.Type]++
		}
		return counts
	case <-time.After(10 * time.Second):
		t.Fatal("the monitor reported no transaction in 10 s")
		return nil
	}
}

// TestKernelElementDrift: an endpoints or dispatch map element deleted, changed or added behind
// our back, or a magic address taken out of its set, is drift a full sync reports and repairs, as
// a rule would be. A service renamed
// rewrites its elements in place.
func TestKernelElementDrift(t *testing.T) {
	_, k, other := netnsKernel(t, "nftelemdrift")
	d := &Datapath{Kernel: k}
	rs := Render(fleetInput(5, 0))
	if _, _, err := d.Apply(rs, true); err != nil {
		t.Fatal(err)
	}
	m := &gnft.Set{Table: &gnft.Table{Name: TableName, Family: TableFamily}, Name: endpointsMap}
	dm := &gnft.Set{Table: m.Table, Name: dispatchMap}
	dispatch := rs.Dispatch[0]
	e := dispatch.Elements[0]
	key := slotKey(serviceKey(e.Addr, e.Protocol, e.Port), e.Slot)
	other2 := netip.MustParseAddrPort("10.250.0.9:8080")
	dkey := serviceKey(dispatch.Addr, dispatch.Protocol, dispatch.Port)
	to := spreadChain(ipv4, 2) // another spread chain (the fleet's services have 1 to 3 producers)
	if dispatch.To == to {
		to = spreadChain(ipv4, 1)
	}
	elsewhere := gnft.SetElement{Key: dkey, VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: to}, Comment: dispatch.Comment}
	for _, c := range []struct {
		name, want string
		edit       func()
	}{
		{"an element deleted", "1 elements missing (first " + e.Text(), func() { _ = other.SetDeleteElements(m, []gnft.SetElement{{Key: key}}) }},
		{"an element pointed elsewhere", "1 elements holding another producer", func() {
			_ = other.SetDeleteElements(m, []gnft.SetElement{{Key: key}})
			_ = other.SetAddElements(m, []gnft.SetElement{{Key: key, Val: endpointData(other2), Comment: e.Comment}})
		}},
		{"an element added", "1 elements not ours", func() {
			_ = other.SetAddElements(m, []gnft.SetElement{{Key: slotKey(serviceKey(e.Addr, e.Protocol, e.Port), 7), Val: endpointData(other2)}})
		}},
		{"a dispatch element deleted", "maps dispatch, dispatch6: 1 elements missing (first " + dispatch.Text(), func() {
			_ = other.SetDeleteElements(dm, []gnft.SetElement{{Key: dkey}})
		}},
		{"a dispatch element going elsewhere", "maps dispatch, dispatch6: 1 elements holding another verdict", func() {
			_ = other.SetDeleteElements(dm, []gnft.SetElement{{Key: dkey}})
			_ = other.SetAddElements(dm, []gnft.SetElement{elsewhere})
		}},
		{"a magic address taken out of the address set", "sets addresses, addresses6: missing [" + dispatch.Addr.String() + "]", func() {
			_ = other.SetDeleteElements(&gnft.Set{Table: m.Table, Name: addressSet}, []gnft.SetElement{{Key: dispatch.Addr.AsSlice()}})
		}},
		{"a dispatch element added", "maps dispatch, dispatch6: 1 elements not ours", func() {
			_ = other.SetAddElements(dm, []gnft.SetElement{{Key: serviceKey(netip.MustParseAddr("169.254.99.99"), "tcp", 9), VerdictData: elsewhere.VerdictData}})
		}},
	} {
		c.edit()
		if err := other.Flush(); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		wrote, drift, err := d.Apply(rs, true)
		if err != nil || !wrote || !slices.ContainsFunc(drift, func(d string) bool { return strings.Contains(d, c.want) }) {
			t.Fatalf("%s behind our back: wrote %v, drift %q, err %v; want it written and drift %q", c.name, wrote, drift, err, c.want)
		}
		if o, err := k.Read(); err != nil || len(o.Drift(rs)) > 0 {
			t.Fatalf("%s: not repaired: %q (err %v)", c.name, o.Drift(rs), err)
		}
	}
	// A service renamed keeps its address, protocol and port: its dispatch element and its
	// endpoints elements are deleted and added again with the same keys, in one transaction.
	in := fleetInput(5, 0)
	in.Services[0].Key = "renamed:tcp"
	renamed := Render(in)
	if _, _, err := d.Apply(renamed, false); err != nil {
		t.Fatalf("service renamed: %v", err)
	}
	if o, err := k.Read(); err != nil || len(o.Drift(renamed)) > 0 {
		t.Fatalf("service renamed: the kernel does not hold what was rendered: %q (err %v)", o.Drift(renamed), err)
	}
}

// TestKernelSpreadChainsFollowCounts: the spread chains are those for 1 to the most producers a
// service has. A service given more producers than any had adds the chains it needs (a Patch is
// refused: Render adds them), one given fewer keeps them while the Renderer renders from its last
// call, and a fresh Render drops the chains no service needs: every step leaves the kernel holding
// exactly what was rendered, chains added and deleted in the same transaction as the rules going to
// them.
func TestKernelSpreadChainsFollowCounts(t *testing.T) {
	_, k, _ := netnsKernel(t, "nftspreads")
	d := &Datapath{Kernel: k}
	var r Renderer
	in := fleetInput(5, 0) // 1 to 3 producers
	if _, _, err := d.Apply(r.Render(in), true); err != nil {
		t.Fatal(err)
	}
	withProducers := func(n int) Input {
		next := in
		next.Services = slices.Clone(in.Services)
		var eps []Endpoint
		for i := range n {
			eps = append(eps, Endpoint{Pod: "ns/many", Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 251, 0, byte(1 + i)}), 8080)})
		}
		next.Services[0].Endpoints = eps
		return next
	}
	spreads := func(rs Ruleset) []string {
		var names []string
		for _, c := range rs.Chains {
			if strings.HasPrefix(c.Name, spreadChainPrefix) {
				names = append(names, c.Name)
			}
		}
		return names
	}
	for _, step := range []struct {
		name  string
		n     int
		fresh bool
		want  []string
	}{
		{"five producers", 5, false, []string{"spread-ip-1", "spread-ip-2", "spread-ip-3", "spread-ip-4", "spread-ip-5"}},
		{"back to one, rendered from the last call", 1, false, []string{"spread-ip-1", "spread-ip-2", "spread-ip-3", "spread-ip-4", "spread-ip-5"}},
		{"back to one, a fresh render", 1, true, []string{"spread-ip-1", "spread-ip-2", "spread-ip-3"}},
	} {
		next := withProducers(step.n)
		if step.n > 3 {
			if _, _, ok := r.Patch(next, []int{0}); ok { // a Patch accepted changes the last Ruleset in place
				t.Fatalf("%s: Patch accepted a service with more producers than the spread chains serve", step.name)
			}
		}
		if step.fresh {
			r = Renderer{}
		}
		rs := r.Render(next)
		if got := spreads(rs); !slices.Equal(got, step.want) {
			t.Errorf("%s: spread chains %v, want %v", step.name, got, step.want)
		}
		if _, _, err := d.Apply(rs, false); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		o, err := k.Read()
		if err != nil {
			t.Fatal(err)
		}
		if drift := o.Drift(rs); len(drift) > 0 {
			t.Fatalf("%s: the kernel does not hold what was rendered: %q", step.name, drift)
		}
	}
}
