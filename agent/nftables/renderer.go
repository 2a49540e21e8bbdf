package nftables

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/magic-ip/magic-ip/agent/memo"
)

// Renderer renders as Render does, reusing the rules of every service and address that are the
// same as in its previous call: a sync that changes one producer builds that service's rules
// only, so its cost does not follow what else the node serves (building every rule took some
// 90 ms at 1,000 MagicIPs × 3 ports on the busy 2-core VM). The zero value is ready; the rules
// kept are those of the last call.
type Renderer struct {
	local    string // the Local the kept rules were built for (its %v form)
	services map[serviceID]*serviceRules
	addrs    map[netip.Addr]*addressRules

	// last and out are the Input and Ruleset of the last call; at holds, per service of last,
	// its rules, its dispatch entry and the endpoints counted; hairpin counts the endpoints of
	// last's services per local producer IP. See update and Patch.
	last    Input
	out     Ruleset
	at      []placed
	hairpin map[netip.Addr]int
	// spread is how many spread chains the last Ruleset holds per family (see spreadChains):
	// one for each number of producers up to the most a service had when it was rendered.
	spread [2]int
	// dispatchRules are the services chain's rules, and pre, output and post the prerouting,
	// output and postrouting chains' rules, built once: the same whatever the node serves.
	dispatchRules, pre, output, post []Rule
}

// placed is what a Renderer keeps of one service of its last Input: its rules, the index of its
// entry in the last Ruleset's Dispatch (-1: none) and the endpoints it counted in hairpin (its own
// reference, so that a caller changing the Input in place for Patch does not change it).
type placed struct {
	rules *serviceRules
	entry int
	eps   []Endpoint
}

// serviceID is what a service's dispatch element and refusal rule depend on (its endpoints are
// compared apart).
type serviceID struct {
	Key      string
	Addr     netip.Addr
	Port     uint16
	Protocol string
	Verdict  Verdict
}

func (s Service) id() serviceID { return serviceID{s.Key, s.Addr, s.Port, s.Protocol, s.Verdict} }

type serviceRules struct {
	refusal Rule
	// dispatch is the service's dispatch entry for n producers (To empty: none yet); elements,
	// the endpoints map's elements of its producers.
	dispatch Dispatch
	n        int
	elements memo.Built[Endpoint, []Element]
}

// dispatchFor is the dispatch entry of s with its producers: the spread chain kept while their
// number stays the same, the elements kept while they are the same (the same slice).
func (l *serviceRules) dispatchFor(s Service) Dispatch {
	if n := len(s.Endpoints); l.dispatch.To == "" || l.n != n {
		l.dispatch, l.n = dispatchOf(s), n
	}
	d := l.dispatch
	d.Elements = l.elements.Get(s.Endpoints, func() []Element { return elements(s) })
	return d
}

// addressRules are an address's rules: the input chain's refusals of its undeclared ports.
type addressRules struct {
	undeclared []Rule
}

// Render implements Render with the rules of the last call reused where their inputs are equal.
// When only the producers of services that had some and still have some changed, only their
// dispatch entries and the hairpin set are built (see update); otherwise every chain is assembled
// anew.
func (r *Renderer) Render(in Input) Ruleset {
	if local := fmt.Sprintf("%v", in.Local); local != r.local {
		*r = Renderer{local: local}
	} else if rs, ok := r.update(in); ok {
		return rs
	}
	prevSvcs, prevAddrs := r.services, r.addrs
	r.services, r.addrs = make(map[serviceID]*serviceRules, len(in.Services)), make(map[netip.Addr]*addressRules, len(in.Addresses))
	addrs := in.Addresses
	if r.pre == nil { // the same whatever the node serves (Local is part of what the rules were built for)
		r.pre = slices.Concat(in.Local.external(), in.Local.fast(), notMagic("daddr"), in.Local.dispatch())
		r.output = append(notMagic("daddr"), toServices())
		r.post = append(append(hairpinMasquerade(), notMagic("saddr")...), hostClient())
	}
	input := append(make([]Rule, 0, len(in.Services)+2*len(addrs)+2), notMagic("daddr")...)
	for _, a := range addrs {
		l := prevAddrs[a]
		if l == nil {
			l = &addressRules{undeclared: undeclared(a)}
		}
		r.addrs[a] = l
	}
	var dispatch []Dispatch
	r.at = make([]placed, len(in.Services))
	r.spread = [2]int{}
	for i, s := range in.Services {
		r.spread[familyIndex(s.Addr)] = max(r.spread[familyIndex(s.Addr)], len(s.Endpoints))
		l := r.service(s, prevSvcs)
		input = append(input, l.refusal)
		r.at[i] = placed{rules: l, entry: -1, eps: s.Endpoints}
		if len(s.Endpoints) == 0 {
			continue
		}
		r.at[i].entry = len(dispatch)
		dispatch = append(dispatch, l.dispatchFor(s))
	}
	for _, a := range addrs {
		input = append(input, r.addrs[a].undeclared...)
	}
	if r.dispatchRules == nil {
		r.dispatchRules = dispatchRules()
	}
	rs := Ruleset{Chains: baseChains(r.pre, r.output, r.post, input), Dispatch: dispatch, Addresses: addrs}
	rs.Chains = append(append(rs.Chains, Chain{Name: chainServices, Rules: r.dispatchRules}), spreadChains(r.spread)...)
	r.hairpin = map[netip.Addr]int{}
	for _, s := range in.Services {
		countLocal(r.hairpin, s.Endpoints, 1, nil)
	}
	rs.Hairpin = slices.SortedFunc(maps.Keys(r.hairpin), netip.Addr.Compare)
	r.last, r.out = in, rs
	return rs
}

// update renders in from the last call's Ruleset when in has the same addresses and services as
// the last Input, each with producers or without as before: only the chains of the services whose
// producers changed are built (from their kept elements when these producers were seen last),
// and the hairpin set changes by their local producers. Every chain and every other dispatch
// entry of the result is the last one's, the same slices: Kernel.WriteChanges finds them
// unchanged without comparing them.
// ok is false when in differs more (Render assembles every chain), and when in's Services are the
// last Input's own (changed in place for Patch: there is nothing to compare them with).
func (r *Renderer) update(in Input) (Ruleset, bool) {
	last := r.last.Services
	if r.out.Chains == nil || !memo.Equal(in.Addresses, r.last.Addresses) || (len(last) > 0 && memo.Same(in.Services, last)) {
		return Ruleset{}, false
	}
	changed, ok := memo.Changed(in.Services, last, Service.id, func(s Service) []Endpoint { return s.Endpoints })
	if !ok || !r.spreads(in, changed) {
		return Ruleset{}, false
	}
	rs := r.out
	if len(changed) > 0 {
		rs.Dispatch = slices.Clone(rs.Dispatch)
	}
	rs, _ = r.replace(in, changed, rs, false)
	return rs, true
}

// Patch is how Renderer.Patch changed the last Ruleset in place.
type Patch struct {
	// Dispatch are the dispatch entries replaced: their index in the Ruleset's Dispatch, and what
	// they held.
	Dispatch []PatchedDispatch
	// Unpaired and Paired are the local producer IPs taken out of and put into Hairpin.
	Unpaired, Paired []netip.Addr
}

// PatchedDispatch is one dispatch entry that Renderer.Patch replaced: its index and what it held
// before.
type PatchedDispatch struct {
	Index int
	Old   Dispatch
}

// Patch renders in when it differs from the last Input (rendered or patched) only in the
// producers of the services at changed, each with producers or without as before: the caller
// vouches that the addresses and every other service are the same (an Input whose Services are
// the last one's, changed in place, is fine: nothing else is compared, so the cost follows what
// changed, not what the node serves). Only the changed services' dispatch entries are built, and
// they replace theirs in the last Ruleset's Dispatch in place, as the hairpin IPs change in its
// Hairpin: the Ruleset returned holds the same slices, and p says what changed, which
// Kernel.WritePatch writes (whoever holds the last Ruleset sees the new entries too: see
// Datapath.ApplyPatch). ok is false (nothing done) when in is not such an Input: render it with
// Render.
func (r *Renderer) Patch(in Input, changed []int) (rs Ruleset, p Patch, ok bool) {
	if r.out.Chains == nil || len(in.Services) != len(r.at) || fmt.Sprintf("%v", in.Local) != r.local {
		return Ruleset{}, Patch{}, false
	}
	for _, i := range changed {
		if i < 0 || i >= len(r.at) {
			return Ruleset{}, Patch{}, false
		}
		s, at := &in.Services[i], r.at[i]
		if (at.entry < 0) != (len(s.Endpoints) == 0) || r.services[s.id()] != at.rules {
			return Ruleset{}, Patch{}, false
		}
	}
	if !r.spreads(in, changed) {
		return Ruleset{}, Patch{}, false
	}
	rs, p = r.replace(in, changed, r.out, true)
	return rs, p, true
}

// replace builds the dispatch entries of the services of in at changed into rs.Dispatch (in
// place), counts their local producers into the hairpin set (changing rs.Hairpin in place when
// inPlace, into a new list otherwise), and keeps in and rs as the last call's.
func (r *Renderer) replace(in Input, changed []int, rs Ruleset, inPlace bool) (Ruleset, Patch) {
	var touched []netip.Addr
	p := Patch{Dispatch: make([]PatchedDispatch, 0, len(changed))}
	for _, i := range changed {
		s, at := &in.Services[i], &r.at[i]
		if at.entry < 0 {
			continue // no producers before nor after (Patch checked): nothing to build
		}
		p.Dispatch = append(p.Dispatch, PatchedDispatch{Index: at.entry, Old: rs.Dispatch[at.entry]})
		rs.Dispatch[at.entry] = at.rules.dispatchFor(*s)
		touched = countLocal(r.hairpin, at.eps, -1, touched)
		touched = countLocal(r.hairpin, s.Endpoints, 1, touched)
		at.eps = s.Endpoints
	}
	rs.Hairpin, p.Unpaired, p.Paired = withCounted(rs.Hairpin, r.hairpin, touched, inPlace)
	r.last, r.out = in, rs
	return rs, p
}

// spreads reports whether the last Ruleset has a spread chain for each service of in at changed:
// one with more producers than any had at the last Render needs a new chain (Render adds it).
func (r *Renderer) spreads(in Input, changed []int) bool {
	for _, i := range changed {
		s := &in.Services[i]
		if len(s.Endpoints) > r.spread[familyIndex(s.Addr)] {
			return false
		}
	}
	return true
}

// service returns the rules of s kept from the last call (its dispatch entry and elements are
// rebuilt by dispatchFor when its producers changed), or new ones.
func (r *Renderer) service(s Service, prev map[serviceID]*serviceRules) *serviceRules {
	id := s.id()
	l := prev[id]
	if l == nil {
		l = &serviceRules{refusal: refusal(s)}
	}
	r.services[id] = l
	return l
}

// countLocal adds d to the count of each local producer IP of eps (deleting those that reach 0),
// and appends them to touched.
func countLocal(counts map[netip.Addr]int, eps []Endpoint, d int, touched []netip.Addr) []netip.Addr {
	for _, ep := range eps {
		if ep.Remote {
			continue // a producer on another node never sends from this node
		}
		ip := ep.Addr.Addr()
		if counts[ip] += d; counts[ip] == 0 {
			delete(counts, ip)
		}
		touched = append(touched, ip)
	}
	return touched
}

// withCounted returns ips (sorted) with each touched IP present as counts says, and the IPs it
// took out and put in. Unless inPlace, ips is not modified: a new sorted list is returned when an
// IP is added or removed, ips itself otherwise.
func withCounted(ips []netip.Addr, counts map[netip.Addr]int, touched []netip.Addr, inPlace bool) (out, gone, added []netip.Addr) {
	out = ips
	for _, ip := range touched {
		i, found := slices.BinarySearchFunc(out, ip, netip.Addr.Compare)
		if _, want := counts[ip]; want == found {
			continue
		}
		if !inPlace && memo.Same(out, ips) {
			out = slices.Clone(ips)
		}
		if found {
			out, gone = slices.Delete(out, i, i+1), append(gone, ip)
		} else {
			out, added = slices.Insert(out, i, ip), append(added, ip)
		}
	}
	return out, gone, added
}
