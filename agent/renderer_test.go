package agent

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// TestRendererMatchesRender plays one Renderer through a sequence of States: after each, its
// rules are exactly those of a fresh Render — lines reused only where their inputs are equal.
func TestRendererMatchesRender(t *testing.T) {
	ext := ExternalInterfaces("eth0")
	base := fleet(30, 0)
	edit := func(f func(st *State)) State {
		st := fleet(30, 0) // a copy of base that shares no slice with it
		f(&st)
		return st
	}
	steps := []struct {
		name  string
		st    State
		local *LocalDetector
	}{
		{"first", base, ext},
		{"one producer moved", edit(func(st *State) {
			st.Services[3].Endpoints[0].Addr = netip.MustParseAddrPort("10.250.0.1:8000")
		}), ext},
		{"moved back", base, ext},
		{"producer terminating", edit(func(st *State) { st.Services[4].Endpoints[0].Terminating = true }), ext},
		{"fallback to another node", edit(func(st *State) { st.Services[5].Endpoints[0].Node = "n2" }), ext},
		{"no producer left", edit(func(st *State) { st.Services[6].Endpoints = nil }), ext},
		{"verdict changed to Drop", edit(func(st *State) { st.Services[6].WhenNoProducer = v1alpha1.Drop }), ext},
		{"services gone", edit(func(st *State) { st.Services = st.Services[:9] }), ext},
		{"other generation", fleet(31, 1), ext},
		{"other local detector", fleet(31, 1), &LocalDetector{Mode: NodeCIDR, Local: []LocalMatch{{Source: netip.MustParsePrefix("10.244.0.0/16")}}}},
		{"nil local detector", fleet(31, 1), nil},
		{"empty", State{}, nil},
		{"back to the start", base, ext},
	}
	var r Renderer
	for _, step := range steps {
		if got, want := r.Render(step.st, step.local), Render(step.st, step.local); !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: the Renderer's rules differ from a fresh Render:\n%v\nwant\n%v", step.name, got, want)
		}
	}
}

// TestRendererFormatsOnlyWhatChanged: re-rendering 1,000 MagicIPs × 3 ports after one producer
// moved formats that producer's lines only: it allocates a small fraction of what a fresh Render
// does (the formatting of every line: some 200 allocations per MagicIP), and no more than the same
// change among 10 MagicIPs (within 2×): nothing is assembled per service or address.
func TestRendererFormatsOnlyWhatChanged(t *testing.T) {
	ext := ExternalInterfaces("eth0")
	oneMoved := func(n int) float64 {
		st := fleet(n, 0)
		var r Renderer
		r.Render(st, ext)
		i := 0
		return testing.AllocsPerRun(5, func() {
			i++
			moved := st
			moved.Services = slices.Clone(st.Services)
			eps := slices.Clone(moved.Services[0].Endpoints)
			eps[0].Addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 250, 0, byte(i)}), 8000)
			moved.Services[0].Endpoints = eps
			r.Render(moved, ext)
		})
	}
	at10, at1000 := oneMoved(10), oneMoved(1000)
	st := fleet(1000, 0)
	fresh := testing.AllocsPerRun(2, func() { Render(st, ext) })
	if at1000 > fresh/10 || at1000 > 2*at10 {
		t.Errorf("re-rendering one changed producer among 1,000 MagicIPs allocated %.0f times, among 10 %.0f, a fresh Render of 1,000 %.0f: lines were formatted or assembled again", at1000, at10, fresh)
	}
	t.Logf("one producer changed among 1,000 MagicIPs × 3 ports: %.0f allocations (among 10: %.0f), a fresh Render %.0f", at1000, at10, fresh)
}

// dualStack adds to st an IPv6 twin of each of its first n services (address fd00::<i+1>,
// producers at fd00:10:244::<j+1>), carried on the same interface.
func dualStack(st State, n int) State {
	for i, s := range slices.Clone(st.Services[:n]) {
		a := netip.AddrFrom16([16]byte{0: 0xfd, 15: byte(i + 1)})
		s.Address, s.Endpoints = a, slices.Clone(s.Endpoints)
		for j := range s.Endpoints {
			s.Endpoints[j].Addr = netip.AddrPortFrom(netip.AddrFrom16([16]byte{0: 0xfd, 3: 0x10, 4: 0x02, 5: 0x44, 15: byte(j + 1)}), s.Endpoints[j].Addr.Port())
		}
		st.Services = append(st.Services, s)
		st.Addresses[bridgeIface] = append(st.Addresses[bridgeIface], a)
	}
	return st
}

// TestRendererFamilies: a Renderer of each family, played through dual-stack States, renders what
// RenderFamily does, and only its family's addresses.
func TestRendererFamilies(t *testing.T) {
	ext := ExternalInterfaces("eth0")
	steps := []State{dualStack(fleet(10, 0), 4), dualStack(fleet(10, 1), 6), dualStack(fleet(10, 1), 2), fleet(10, 1)}
	for _, fam := range []Family{IPv4, IPv6} {
		r := Renderer{Family: fam}
		for i, st := range steps {
			got, want := r.Render(st, ext), RenderFamily(st, ext, fam)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("%s step %d: the Renderer's rules differ from RenderFamily:\n%v\nwant\n%v", fam, i, got, want)
			}
			for _, rules := range got.Chains["filter"] {
				for _, rule := range rules {
					if other := map[Family]string{IPv4: "-d fd00:", IPv6: "-d 169.254."}[fam]; strings.Contains(rule, other) {
						t.Fatalf("%s step %d: rule of the other family: %s", fam, i, rule)
					}
				}
			}
		}
	}
}

// TestRendererForgetsGonePods: a long run of change syncs, each moving one producer to a new pod
// and IP (a rollout), leaves the Renderer holding no more than after its first render — nothing
// is kept per pod that came and went — while its rules stay those of a fresh Render.
func TestRendererForgetsGonePods(t *testing.T) {
	ext := ExternalInterfaces("eth0")
	st := fleet(20, 0)
	var r Renderer
	r.Render(st, ext)
	hairpins, refs := len(r.hairpins), len(r.refs)
	for i := range 300 {
		moved := st
		moved.Services = slices.Clone(st.Services)
		moved.Services[0].Endpoints = slices.Clone(st.Services[0].Endpoints)
		moved.Services[0].Endpoints[0] = Endpoint{Pod: fmt.Sprintf("ns/rollout-%d", i), Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 250, byte(i / 200), byte(i % 200)}), 8000)}
		if got, want := r.Render(moved, ext), Render(moved, ext); !reflect.DeepEqual(got, want) {
			t.Fatalf("change %d: the Renderer's rules differ from a fresh Render", i)
		}
	}
	if len(r.hairpins) > hairpins || len(r.refs) > refs+1 {
		t.Errorf("after 300 producers came and went: %d hairpin rules kept (%d at first), %d producer IPs counted (%d at first)", len(r.hairpins), hairpins, len(r.refs), refs)
	}
}
