package agent

import (
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// TestNftablesConverterPatch plays one NftablesConverter through States: a State that changed
// producers only (each service with producers or without as before) is patched, with the indexes
// of the services changed; any other change is converted anew. Either way the Input is exactly
// NftablesInput's.
func TestNftablesConverterPatch(t *testing.T) {
	edit := func(f func(st *State)) State {
		st := fleet(20, 0) // shares no slice with the States before
		f(&st)
		return st
	}
	moved := func(st *State, i int) {
		st.Services[i].Endpoints[0].Addr = netip.AddrPortFrom(netip.MustParseAddr("10.250.0.1"), 8000)
	}
	steps := []struct {
		name    string
		st      State
		changed []int
		ok      bool
	}{
		{"first", fleet(20, 0), nil, false},
		{"the same", fleet(20, 0), nil, true},
		{"one producer moved", edit(func(st *State) { moved(st, 3) }), []int{3}, true},
		{"two others moved, the first back", edit(func(st *State) { moved(st, 1); moved(st, 7) }), []int{1, 3, 7}, true},
		{"a producer terminating, the others back", edit(func(st *State) { st.Services[7].Endpoints[0].Terminating = true }), []int{1, 7}, true},
		{"no producer left", edit(func(st *State) { st.Services[7].Endpoints = nil }), nil, false},
		{"producers back", fleet(20, 0), nil, false},
		{"verdict changed", edit(func(st *State) { st.Services[2].WhenNoProducer = v1alpha1.Drop }), nil, false},
		{"port renamed", edit(func(st *State) { st.Services[2].PortName = "other" }), nil, false},
		{"a MagicIP more", fleet(21, 0), nil, false},
		{"a MagicIP less", edit(func(st *State) {
			st.Services = st.Services[:57]
			st.Addresses[bridgeIface] = slices.Clone(st.Addresses[bridgeIface][:19])
		}), nil, false},
		{"back to 20", fleet(20, 0), nil, false},
		{"an address changed", edit(func(st *State) {
			a := netip.MustParseAddr("169.254.9.9")
			for i := range 3 {
				st.Services[i].Address = a
			}
			st.Addresses[bridgeIface][0] = a
		}), nil, false},
	}
	var c NftablesConverter
	for _, step := range steps {
		in, changed, ok := c.Patch(step.st, nil)
		if ok != step.ok || !slices.Equal(changed, step.changed) {
			t.Errorf("%s: Patch changed %v, ok %v; want %v, %v", step.name, changed, ok, step.changed, step.ok)
		}
		if want := NftablesInput(step.st, nil); !reflect.DeepEqual(in, want) {
			t.Fatalf("%s: the Input differs from NftablesInput's:\n%+v\nwant\n%+v", step.name, in, want)
		}
	}
}
