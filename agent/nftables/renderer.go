package nftables

import (
	"fmt"
	"net/netip"

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

type serviceRules struct {
	chain             string
	dispatch, refusal Rule
	rules             memo.Built[Endpoint, []Rule]
}

type addressRules struct {
	prerouting             []Rule
	toServices, masquerade Rule
	undeclared             []Rule
}

// Render implements Render with the rules of the last call reused where their inputs are equal.
func (r *Renderer) Render(in Input) Ruleset {
	if local := fmt.Sprintf("%v", in.Local); local != r.local {
		*r = Renderer{local: local}
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
	for _, s := range in.Services {
		l := r.service(s, prevSvcs)
		input = append(input, l.refusal)
		if len(s.Endpoints) == 0 {
			continue
		}
		services.Rules = append(services.Rules, l.dispatch)
		perService = append(perService, Chain{Name: l.chain, Rules: l.rules.Get(s.Endpoints, func() []Rule { return endpointRules(s) })})
	}
	for _, a := range addrs {
		input = append(input, r.addrs[a].undeclared...)
	}
	rs := Ruleset{Chains: baseChains(pre, out, post, input)}
	rs.Chains = append(append(rs.Chains, services), perService...)
	rs.Hairpin = hairpinPairs(in.Services)
	return rs
}

// address builds the rules of one magic address.
func (l Local) address(a netip.Addr) *addressRules {
	one := []netip.Addr{a}
	return &addressRules{prerouting: l.dispatch(one), toServices: toServices(one)[0], masquerade: hostClient(a), undeclared: undeclared(a)}
}

// service returns the rules of s kept from the last call (its endpoint rules are rebuilt by
// Render when its endpoints changed), or new ones.
func (r *Renderer) service(s Service, prev map[serviceID]*serviceRules) *serviceRules {
	id := serviceID{s.Key, s.Addr, s.Port, s.Protocol, s.Verdict}
	l := prev[id]
	if l == nil {
		l = &serviceRules{chain: svcChain(s), refusal: refusal(s)}
		l.dispatch = newRule().daddr(s.Addr).l4(s.Protocol, s.Port).verdict(expr.VerdictJump, l.chain).rule(s.Key)
	}
	r.services[id] = l
	return l
}
