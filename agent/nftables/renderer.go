package nftables

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/google/nftables/expr"

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
	// its rules, its chain and the endpoints counted; hairpin counts the endpoints of last's
	// services per local producer IP. See update and Patch.
	last    Input
	out     Ruleset
	at      []placed
	hairpin map[netip.Addr]int
	// spread is how many spread chains the last Ruleset holds per family (see spreadChains):
	// one for each number of producers up to the most a service had when it was rendered.
	spread [2]int
}

// placed is what a Renderer keeps of one service of its last Input: its rules, the index of its
// chain in the last Ruleset's Chains (-1: none) and the endpoints it counted in hairpin (its own
// reference, so that a caller changing the Input in place for Patch does not change it).
type placed struct {
	rules *serviceRules
	chain int
	eps   []Endpoint
}

// serviceID is what a service's dispatch and refusal rules depend on (its endpoints are compared
// apart).
type serviceID struct {
	Key      string
	Addr     netip.Addr
	Port     uint16
	Protocol string
	Verdict  Verdict
}

func (s Service) id() serviceID { return serviceID{s.Key, s.Addr, s.Port, s.Protocol, s.Verdict} }

type serviceRules struct {
	chain             string
	dispatch, refusal Rule
	// dnat is the chain's rule for n producers; elements, the map's elements of its producers.
	dnat     []Rule
	n        int
	elements memo.Built[Endpoint, []Element]
}

// chainFor is the chain of s with its producers: the rule kept while their number stays the same
// (the same slice), the elements kept while they are the same.
func (l *serviceRules) chainFor(s Service) Chain {
	if n := len(s.Endpoints); l.dnat == nil || l.n != n {
		l.dnat, l.n = mapDNAT(s), n
	}
	return Chain{Name: l.chain, Rules: l.dnat, Elements: l.elements.Get(s.Endpoints, func() []Element { return elements(s) })}
}

type addressRules struct {
	prerouting             []Rule
	toServices, masquerade Rule
	undeclared             []Rule
}

// Render implements Render with the rules of the last call reused where their inputs are equal.
// When only the producers of services that had some and still have some changed, only their
// chains and the hairpin set are built (see update); otherwise every chain is assembled anew.
func (r *Renderer) Render(in Input) Ruleset {
	if local := fmt.Sprintf("%v", in.Local); local != r.local {
		*r = Renderer{local: local}
	} else if rs, ok := r.update(in); ok {
		return rs
	}
	prevSvcs, prevAddrs := r.services, r.addrs
	r.services, r.addrs = make(map[serviceID]*serviceRules, len(in.Services)), make(map[netip.Addr]*addressRules, len(in.Addresses))
	addrs := in.Addresses
	pre, out, post, input := in.Local.external(), make([]Rule, 0, len(addrs)), make([]Rule, 0, len(addrs)+2), make([]Rule, 0, len(in.Services)+2*len(addrs))
	for _, a := range addrs {
		l := prevAddrs[a]
		if l == nil {
			l = in.Local.address(a)
		}
		r.addrs[a] = l
		pre, out, post = append(pre, l.prerouting...), append(out, l.toServices), append(post, l.masquerade)
	}
	post = append(post, hairpinMasquerade()...)
	services := Chain{Name: chainServices}
	var perService []Chain
	r.at = make([]placed, len(in.Services))
	r.spread = [2]int{}
	for i, s := range in.Services {
		r.spread[familyIndex(s.Addr)] = max(r.spread[familyIndex(s.Addr)], len(s.Endpoints))
		l := r.service(s, prevSvcs)
		input = append(input, l.refusal)
		r.at[i] = placed{rules: l, chain: -1, eps: s.Endpoints}
		if len(s.Endpoints) == 0 {
			continue
		}
		services.Rules = append(services.Rules, l.dispatch)
		r.at[i].chain = firstServiceChain + len(perService)
		perService = append(perService, l.chainFor(s))
	}
	for _, a := range addrs {
		input = append(input, r.addrs[a].undeclared...)
	}
	rs := Ruleset{Chains: baseChains(pre, out, post, input)}
	rs.Chains = append(append(append(rs.Chains, services), perService...), spreadChains(r.spread)...)
	r.hairpin = map[netip.Addr]int{}
	for _, s := range in.Services {
		countLocal(r.hairpin, s.Endpoints, 1, nil)
	}
	rs.Hairpin = slices.SortedFunc(maps.Keys(r.hairpin), netip.Addr.Compare)
	r.last, r.out = in, rs
	return rs
}

// firstServiceChain is the index of the first per-service chain in a Ruleset: after the base
// chains and the services chain.
const firstServiceChain = 5

// update renders in from the last call's Ruleset when in has the same addresses and services as
// the last Input, each with producers or without as before: only the chains of the services whose
// producers changed are built (from their kept rules when these producers were seen last), and
// the hairpin set changes by their local producers. Every other chain of the result is the last
// one's, the same slices: Kernel.WriteChanges finds them unchanged without comparing their rules.
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
		rs.Chains = slices.Clone(rs.Chains)
	}
	rs, _ = r.replace(in, changed, rs, false)
	return rs, true
}

// Patch is how Renderer.Patch changed the last Ruleset in place.
type Patch struct {
	// Chains are the chains replaced: their index in the Ruleset's Chains, and what they held.
	Chains []PatchedChain
	// Unpaired and Paired are the local producer IPs taken out of and put into Hairpin.
	Unpaired, Paired []netip.Addr
}

// PatchedChain is one chain that Renderer.Patch replaced: its index and what it held before.
type PatchedChain struct {
	Index int
	Old   Chain
}

// Patch renders in when it differs from the last Input (rendered or patched) only in the
// producers of the services at changed, each with producers or without as before: the caller
// vouches that the addresses and every other service are the same (an Input whose Services are
// the last one's, changed in place, is fine: nothing else is compared, so the cost follows what
// changed, not what the node serves). Only the changed services' chains are built, and they
// replace their entries of the last Ruleset's Chains in place, as the hairpin IPs change in its
// Hairpin: the Ruleset returned holds the same slices, and p says what changed, which
// Kernel.WritePatch writes (whoever holds the last Ruleset sees the new chains too: see
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
		if (at.chain < 0) != (len(s.Endpoints) == 0) || r.services[s.id()] != at.rules {
			return Ruleset{}, Patch{}, false
		}
	}
	if !r.spreads(in, changed) {
		return Ruleset{}, Patch{}, false
	}
	rs, p = r.replace(in, changed, r.out, true)
	return rs, p, true
}

// replace builds the chains of the services of in at changed into rs.Chains (in place), counts
// their local producers into the hairpin set (changing rs.Hairpin in place when inPlace, into a
// new list otherwise), and keeps in and rs as the last call's.
func (r *Renderer) replace(in Input, changed []int, rs Ruleset, inPlace bool) (Ruleset, Patch) {
	var touched []netip.Addr
	p := Patch{Chains: make([]PatchedChain, 0, len(changed))}
	for _, i := range changed {
		s, at := &in.Services[i], &r.at[i]
		p.Chains = append(p.Chains, PatchedChain{Index: at.chain, Old: rs.Chains[at.chain]})
		rs.Chains[at.chain] = at.rules.chainFor(*s)
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

// address builds the rules of one magic address.
func (l Local) address(a netip.Addr) *addressRules {
	one := []netip.Addr{a}
	return &addressRules{prerouting: l.dispatch(one), toServices: toServices(one)[0], masquerade: hostClient(a), undeclared: undeclared(a)}
}

// service returns the rules of s kept from the last call (its chain's rule and elements are
// rebuilt by chainFor when its producers changed), or new ones.
func (r *Renderer) service(s Service, prev map[serviceID]*serviceRules) *serviceRules {
	id := s.id()
	l := prev[id]
	if l == nil {
		l = &serviceRules{chain: svcChain(s), refusal: refusal(s)}
		l.dispatch = newRule().daddr(s.Addr).l4(s.Protocol, s.Port).verdict(expr.VerdictJump, l.chain).rule(s.Key)
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
