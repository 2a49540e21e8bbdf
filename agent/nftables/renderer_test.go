package nftables

import (
	"net/netip"
	"reflect"
	"slices"
	"testing"
)

// TestRendererMatchesRender plays one Renderer through a sequence of Inputs: after each, its
// ruleset is exactly that of a fresh Render — rules reused only where their inputs are equal.
func TestRendererMatchesRender(t *testing.T) {
	base := fleetInput(30, 0)
	edit := func(f func(in *Input)) Input {
		in := fleetInput(30, 0) // a copy of base that shares no slice with it
		f(&in)
		return in
	}
	steps := []struct {
		name string
		in   Input
	}{
		{"first", base},
		{"one producer moved", edit(func(in *Input) { in.Services[2].Endpoints[0].Addr = netip.MustParseAddrPort("10.250.0.1:8080") })},
		{"moved back", base},
		{"producer terminating", edit(func(in *Input) { in.Services[4].Endpoints[0].Note = "terminating, no Ready producer" })},
		{"fallback to another node", edit(func(in *Input) { in.Services[6].Endpoints[0].Remote = true })},
		{"no producer left", edit(func(in *Input) { in.Services[8].Endpoints = nil })},
		{"verdict changed", edit(func(in *Input) { in.Services[8].Verdict = Drop })},
		{"services and addresses gone", edit(func(in *Input) { in.Services, in.Addresses = in.Services[:9], in.Addresses[:5] })},
		{"other generation", fleetInput(31, 1)},
		{"other local traffic", func() Input {
			in := fleetInput(31, 1)
			in.Local = Local{Sources: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, Interfaces: []string{"veth+"}}
			return in
		}()},
		{"dual-stack", edit(func(in *Input) {
			a6 := netip.MustParseAddr("fd00::a9fe:101")
			in.Addresses = append(in.Addresses, a6)
			in.Local = Local{Sources: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56")}}
			in.Services = append(in.Services, Service{Key: "m6:tcp", Addr: a6, Port: 80, Protocol: "tcp", Verdict: Reject,
				Endpoints: []Endpoint{{Pod: "p6", Addr: netip.MustParseAddrPort("[fd00:10:244::5]:8080")}}})
		})},
		{"empty", Input{}},
		{"back to the start", base},
	}
	var r Renderer
	for _, step := range steps {
		if got, want := r.Render(step.in), Render(step.in); !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: the Renderer's ruleset differs from a fresh Render:\n%s\nwant\n%s", step.name, got.Text(), want.Text())
		}
	}
}

// TestRendererBuildsOnlyWhatChanged: rendering 1,000 MagicIPs (a TCP and a UDP port each) again
// after one producer moved builds that producer's rules only: it allocates a small fraction of
// what a fresh Render does, and no more than the same change among 10 MagicIPs (within 2×):
// nothing is rebuilt per service or address.
func TestRendererBuildsOnlyWhatChanged(t *testing.T) {
	oneMoved := func(n int) float64 {
		in := fleetInput(n, 0)
		var r Renderer
		r.Render(in)
		i := 0
		return testing.AllocsPerRun(5, func() {
			i++
			moved := in
			moved.Services = slices.Clone(in.Services)
			eps := slices.Clone(moved.Services[0].Endpoints)
			eps[0].Addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 250, 0, byte(i)}), 8080)
			moved.Services[0].Endpoints = eps
			r.Render(moved)
		})
	}
	at10, at1000 := oneMoved(10), oneMoved(1000)
	in := fleetInput(1000, 0)
	fresh := testing.AllocsPerRun(2, func() { Render(in) })
	if at1000 > fresh/10 || at1000 > 2*at10 {
		t.Errorf("rendering one changed producer among 1,000 MagicIPs allocated %.0f times, among 10 %.0f, a fresh Render of 1,000 %.0f: rules were built again", at1000, at10, fresh)
	}
	t.Logf("one producer changed among 1,000 MagicIPs: %.0f allocations (among 10: %.0f), a fresh Render %.0f", at1000, at10, fresh)
}

// TestRendererPatchMatchesRender plays one Renderer through producer changes made in place in
// the Input it rendered last, as the agent's converter makes them: after each Patch its ruleset
// is exactly that of a fresh Render, the Chains slice is the one patched (no copy of every chain),
// and what the Patch says it changed turns the ruleset before into the one after. Changes that
// are not producers' only are refused without touching anything; Render then renders the Input
// changed in place from scratch (it has nothing left to compare it with).
func TestRendererPatchMatchesRender(t *testing.T) {
	in := fleetInput(30, 0)
	var r Renderer
	last := r.Render(in)
	steps := []struct {
		name    string
		i       int
		eps     []Endpoint
		refused bool
	}{
		{"one producer moved", 2, []Endpoint{{Pod: "ns/x", Addr: netip.MustParseAddrPort("10.250.0.1:8080")}}, false},
		{"a producer added", 2, []Endpoint{{Pod: "ns/x", Addr: netip.MustParseAddrPort("10.250.0.1:8080")}, {Pod: "ns/y", Addr: netip.MustParseAddrPort("10.250.0.2:8080")}}, false},
		{"fallback to another node", 4, []Endpoint{{Pod: "ns/z", Addr: netip.MustParseAddrPort("10.250.9.9:8080"), Remote: true, Note: "fallback to node b"}}, false},
		{"moved back", 2, slices.Clone(fleetInput(30, 0).Services[2].Endpoints), false},
		{"no producer left", 6, nil, true},
		{"a first producer", 1, []Endpoint{{Pod: "ns/u", Addr: netip.MustParseAddrPort("10.250.0.3:53")}}, true},
	}
	for _, step := range steps {
		before := slices.Clone(last.Dispatch)
		beforePairs := slices.Clone(last.Hairpin)
		in.Services[step.i].Endpoints = step.eps // in place: in.Services is the array rendered last
		rs, p, ok := r.Patch(in, []int{step.i})
		if ok == step.refused {
			t.Fatalf("%s: Patch ok = %v, want %v", step.name, ok, !step.refused)
		}
		if !ok {
			rs = r.Render(in)
		} else if &rs.Dispatch[0] != &last.Dispatch[0] || &rs.Chains[0] != &last.Chains[0] {
			t.Errorf("%s: Patch copied the chains or dispatch entries", step.name)
		}
		if want := Render(in); !reflect.DeepEqual(rs, want) {
			t.Fatalf("%s: the ruleset differs from a fresh Render:\n%s\nwant\n%s", step.name, rs.Text(), want.Text())
		}
		if ok {
			restored := slices.Clone(rs.Dispatch)
			for _, d := range p.Dispatch {
				restored[d.Index] = d.Old
			}
			if len(p.Dispatch) != 1 || !reflect.DeepEqual(restored, before) {
				t.Errorf("%s: Patch lists %d dispatch entries replaced (want 1), and what they held does not give back the ruleset before", step.name, len(p.Dispatch))
			}
			unpaired, paired := diffAddrs(beforePairs, rs.Hairpin)
			if !slices.Equal(unpaired, p.Unpaired) || !slices.Equal(paired, p.Paired) {
				t.Errorf("%s: Patch says hairpin IPs %v gone and %v added, the ruleset %v and %v", step.name, p.Unpaired, p.Paired, unpaired, paired)
			}
		}
		last = rs
	}
}
