package nftables

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// Chains of our table. The base chains run just before the usual ones of their hook (kube-proxy's,
// iptables-nft's), as our iptables jumps are kept first in their built-in chains.
const (
	chainPrerouting  = "prerouting"
	chainOutput      = "output"
	chainPostrouting = "postrouting"
	chainInput       = "input"
	chainServices    = "services"
	// spreadChainPrefix starts the names of the chains that spread a service's connections over
	// its producers, one per family and number of producers: "spread-ip-2".
	spreadChainPrefix = "spread-"
)

// Chain is one chain of our table: a base chain (Hook set) or a regular one.
type Chain struct {
	Name     string
	Type     nftables.ChainType
	Hook     *nftables.ChainHook
	Priority nftables.ChainPriority
	Rules    []Rule
}

// Ruleset is our whole table, chains in the order they are written (regular chains are created
// before any rule jumps to them: all chains are added before the rules).
type Ruleset struct {
	Chains []Chain
	// Dispatch holds the services with producers, in the order of the Input: each is an element
	// of the dispatch map (the services chain's one lookup per family) and its producers' elements
	// of the endpoints map. A service has no chain of its own: the kernel visits every chain of
	// the netns on each commit, so thousands of them made a one-producer change cost in proportion
	// to what the node serves.
	Dispatch []Dispatch
	// Hairpin holds the local producer IPs, sorted: the elements "P . P" of the set hairpinSet,
	// so a producer change adds or deletes one element, whatever the node serves.
	Hairpin []netip.Addr
	// Addresses are the magic addresses, sorted: the elements of the sets addressSet and
	// addressSet6, which each base chain looks up first (notMagic).
	Addresses []netip.Addr
}

// hairpinSet and hairpinSet6 are our sets: source . destination pairs of a producer reaching
// itself, IPv4 and IPv6 (a set's key has one type). endpointsMap and endpointsMap6 are our maps
// from a service's slot to a producer (see Element), and dispatchMap and dispatchMap6 our verdict
// maps from a service (address . protocol . port) to its spread chain, per family of the magic
// address.
const (
	hairpinSet    = "hairpin"
	hairpinSet6   = "hairpin6"
	endpointsMap  = "endpoints"
	endpointsMap6 = "endpoints6"
	dispatchMap   = "dispatch"
	dispatchMap6  = "dispatch6"
	addressSet    = "addresses"
	addressSet6   = "addresses6"
)

// notMagic starts each base chain: a packet whose address (field: daddr, or saddr in postrouting)
// is not a magic address leaves the chain at once, one set lookup per family, so the node's other
// traffic does not walk the rules of every magic address and port. Without it every packet to the
// host went through the input chain's rules one by one: UDP request/response over the loopback
// of a namespace holding 1,000 MagicIPs × 3 ports ran at 6–47 % of its rate without our table.
func notMagic(field string) []Rule {
	return []Rule{newRule().addrNotIn(field, ipv4, addressSet).verdict(expr.VerdictReturn, "").rule("not a magic address"),
		newRule().addrNotIn(field, ipv6, addressSet6).verdict(expr.VerdictReturn, "").rule("not a magic address (IPv6)")}
}

// Dispatch is a service with producers as our maps hold it: the dispatch map sends its new
// connections (its address, protocol and port) on to To, the spread chain for its number of
// producers, which picks one of its Elements in the endpoints map. A producer replaced by another
// changes an element of the endpoints map; one more or one fewer, the dispatch map's element too.
type Dispatch struct {
	Addr     netip.Addr
	Protocol string
	Port     uint16
	To       string
	// Comment is the service's key ("<magicip>:<port name>"), the dispatch element's comment.
	Comment  string
	Elements []Element
}

// Text is the dispatch map's element in nft syntax.
func (d Dispatch) Text() string {
	return fmt.Sprintf("%s . %s . %d : goto %s", d.Addr, d.Protocol, d.Port, d.To)
}

// dispatchOf is the dispatch map element of s, going to the spread chain of its producers.
func dispatchOf(s Service) Dispatch {
	return Dispatch{Addr: s.Addr, Protocol: s.Protocol, Port: s.Port, To: spreadChain(familyOf(s.Addr), len(s.Endpoints)), Comment: s.Key}
}

// Chain returns the named chain (nil if none).
func (rs Ruleset) Chain(name string) *Chain {
	i := slices.IndexFunc(rs.Chains, func(c Chain) bool { return c.Name == name })
	if i < 0 {
		return nil
	}
	return &rs.Chains[i]
}

// byName indexes the chains by name: looking each chain of one ruleset up in another with Chain
// is quadratic (some 27 ms of CPU per sync at 1,000 MagicIPs × 3 ports, 3,000 chains, on the
// busy 2-core VM).
func (rs Ruleset) byName() map[string]*Chain {
	m := make(map[string]*Chain, len(rs.Chains))
	for i := range rs.Chains {
		m[rs.Chains[i].Name] = &rs.Chains[i]
	}
	return m
}

// Render turns in into our table. It is pure: the same Input always gives the same Ruleset.
func Render(in Input) Ruleset {
	return new(Renderer).Render(in)
}

// baseChains are our base chains with their rules.
func baseChains(prerouting, output, postrouting, input []Rule) []Chain {
	return []Chain{
		{Name: chainPrerouting, Type: nftables.ChainTypeNAT, Hook: nftables.ChainHookPrerouting, Priority: *nftables.ChainPriorityNATDest - 10,
			Rules: prerouting},
		{Name: chainOutput, Type: nftables.ChainTypeNAT, Hook: nftables.ChainHookOutput, Priority: *nftables.ChainPriorityNATDest - 10,
			Rules: output},
		{Name: chainPostrouting, Type: nftables.ChainTypeNAT, Hook: nftables.ChainHookPostrouting, Priority: *nftables.ChainPriorityNATSource - 10,
			Rules: postrouting},
		{Name: chainInput, Type: nftables.ChainTypeFilter, Hook: nftables.ChainHookInput, Priority: *nftables.ChainPriorityFilter - 10,
			Rules: input},
	}
}

// Off-node traffic is never redirected (external); node-local traffic to a magic address goes on
// to the services chain (dispatch).

// external: traffic arriving on an external interface returns unredirected.
func (l Local) external() []Rule {
	var out []Rule
	for _, ifc := range l.External {
		out = append(out, newRule().iifname(ifc).verdict(expr.VerdictReturn, "").rule("external interface: not node-local"))
	}
	return out
}

// dispatch: node-local traffic jumps to the services chain. It comes after the guard (notMagic),
// so the packet is addressed to a magic address: no rule per address, and a new connection's way
// to the services chain costs the same whatever the node serves (with a rule per address, one to
// the last of 1,000 MagicIPs walked 1,000 rules first).
func (l Local) dispatch() []Rule {
	if l.All || len(l.External) > 0 {
		return []Rule{toServices()}
	}
	var out []Rule
	for _, src := range l.Sources {
		out = append(out, newRule().saddrPrefix(src).verdict(expr.VerdictJump, chainServices).rule("node-local source"))
	}
	for _, ifc := range l.Interfaces {
		out = append(out, newRule().iifname(ifc).verdict(expr.VerdictJump, chainServices).rule("node-local interface"))
	}
	return out
}

// fast: in the modes where every packet not from an external interface is node-local (the
// default), a new connection to a service of one producer is DNATed at once from the endpoints
// map's slot 0 (see builder.spread), before the guard and the dispatch: one lookup where the way
// through the services chain takes three (the guard's set, the dispatch map, the endpoints map),
// a jump, a goto and a random number. The node's other new connections pay this one lookup
// besides the guard's. The other modes' source and interface matches keep the way through the
// services chain, where the spread chain of one producer finds slot 0 too.
func (l Local) fast() []Rule {
	if !l.All && len(l.External) == 0 {
		return nil
	}
	return []Rule{newRule().single(ipv4).rule("one producer"), newRule().single(ipv6).rule("one producer (IPv6)")}
}

// toServices sends on to the services chain what reached it (the guard let only packets to magic
// addresses through).
func toServices() Rule {
	return newRule().verdict(expr.VerdictJump, chainServices).rule("")
}

// hostClient and hairpinMasquerade fill postrouting: a host client keeps the magic address as
// source, so its redirected connections are masqueraded (the replies would otherwise be martians); a producer reaching itself through a
// DNAT (its source and destination a pair of the hairpin set) is masqueraded too. Unlike the
// iptables hairpin chains, the rule does not check that the connection was first sent to the
// magic address (ct original ip daddr): google/nftables v0.3.0 cannot read back the ct direction
// that match needs, so drift could not be checked. A producer reaching itself through another
// DNAT (its ClusterIP) is masqueraded here instead of by kube-proxy's hairpin rule, to the same
// effect.
// The host-client rule follows postrouting's guard, so its source is a magic address.
func hostClient() Rule {
	return newRule().ifname(expr.MetaKeyOIFNAME, "oif", expr.CmpOpNeq, "lo").ctDNAT().masquerade().rule("host client of a magic address")
}

func hairpinMasquerade() []Rule {
	return []Rule{newRule().ctDNAT().pairIn(ipv4, hairpinSet).masquerade().rule("hairpin: a producer reaching itself"),
		newRule().ctDNAT().pairIn(ipv6, hairpinSet6).masquerade().rule("hairpin: a producer reaching itself (IPv6)")}
}

// refusal: a new connection still addressed to a magic address was not redirected: each declared
// port gets its service's verdict (undeclared: any other port of the address is rejected).
func refusal(s Service) Rule {
	return newRule().daddr(s.Addr).l4(s.Protocol, s.Port).ctNew().counter().refuse(s.Verdict, s.Protocol).rule(s.Key + ": not redirected")
}

func undeclared(a netip.Addr) []Rule {
	var out []Rule
	for _, p := range []string{"tcp", "udp"} {
		out = append(out, newRule().daddr(a).l4(p, 0).ctNew().counter().refuse(Reject, p).rule(a.String()+": undeclared port"))
	}
	return out
}

// dispatchRules are the services chain's rules, the same whatever the node serves: per family,
// one lookup of the packet's destination . protocol . port in the dispatch map, whose element
// (Dispatch) goes to the spread chain of the service's number of producers; new connections are
// spread evenly across them there (numgen random mod n picks a slot), to the producer the
// endpoints map holds for that slot. A packet to a service without producers (no element) falls
// through: the input chain gives it the service's verdict.
func dispatchRules() []Rule {
	return []Rule{newRule().dispatch(ipv4).rule("services"), newRule().dispatch(ipv6).rule("services (IPv6)")}
}

// spreadChain names the chain that spreads the services of family f with n producers.
func spreadChain(f family, n int) string { return fmt.Sprintf("%s%s-%d", spreadChainPrefix, f.name, n) }

// spreadChains are the spread chains for 1 to most[0] producers (IPv4) and 1 to most[1] (IPv6).
func spreadChains(most [2]int) []Chain {
	var out []Chain
	for i, f := range []family{ipv4, ipv6} {
		for n := 1; n <= most[i]; n++ {
			out = append(out, Chain{Name: spreadChain(f, n), Rules: []Rule{newRule().spread(f, n).rule(spreadComment(n))}})
		}
	}
	return out
}

func spreadComment(n int) string {
	if n == 1 {
		return "spread over 1 producer"
	}
	return fmt.Sprintf("spread over %d producers (slots 1 to %d)", n, n)
}

// slot is the endpoints map slot of producer i of a service of n: 0 for a single one, 1 to n
// otherwise (see builder.spread).
func slot(i, n int) int {
	if n == 1 {
		return 0
	}
	return i + 1
}

// familyIndex is 0 for an IPv4 address, 1 for IPv6 (the index of spreadChains' most).
func familyIndex(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}

// Element is one element of the endpoints map: slot Slot of the service at Addr, Protocol and
// Port sends to To. Comment names the producer ("<key> -> <pod> (<note>)").
type Element struct {
	Addr     netip.Addr
	Protocol string
	Port     uint16
	Slot     int
	To       netip.AddrPort
	Comment  string
}

// elements are the endpoints map's elements of s, one slot per producer, in order.
func elements(s Service) []Element {
	out := make([]Element, 0, len(s.Endpoints))
	for i, ep := range s.Endpoints {
		comment := s.Key + " -> " + ep.Pod
		if ep.Note != "" {
			comment += " (" + ep.Note + ")"
		}
		out = append(out, Element{Addr: s.Addr, Protocol: s.Protocol, Port: s.Port, Slot: slot(i, len(s.Endpoints)), To: ep.Addr, Comment: comment})
	}
	return out
}

// Text is the element in nft syntax.
func (e Element) Text() string {
	return fmt.Sprintf("%s . %s . %d . %d : %s . %d", e.Addr, e.Protocol, e.Port, e.Slot, e.To.Addr(), e.To.Port())
}

// mapOf names the endpoints map of an address's family.
func mapOf(a netip.Addr) string { return familyOf(a).endpointsMap() }

// Text renders the ruleset in nft syntax, for tests and logs.
func (rs Ruleset) Text() string {
	var pairs, pairs6 []string
	for _, ip := range rs.Hairpin {
		if ip.Is4() {
			pairs = append(pairs, ip.String()+" . "+ip.String())
		} else {
			pairs6 = append(pairs6, ip.String()+" . "+ip.String())
		}
	}
	var addrs, addrs6 []string
	for _, a := range rs.Addresses {
		if a.Is4() {
			addrs = append(addrs, a.String())
		} else {
			addrs6 = append(addrs6, a.String())
		}
	}
	b := fmt.Appendf(nil, "set %s { %s }\nset %s { %s }\n", addressSet, strings.Join(addrs, ", "), addressSet6, strings.Join(addrs6, ", "))
	b = fmt.Appendf(b, "set %s { %s }\nset %s { %s }\n", hairpinSet, strings.Join(pairs, ", "), hairpinSet6, strings.Join(pairs6, ", "))
	for _, c := range rs.Chains {
		b = fmt.Appendf(b, "chain %s", c.Name)
		if c.Hook != nil {
			b = fmt.Appendf(b, " { type %s hook %s priority %d }", c.Type, hookName(*c.Hook), c.Priority)
		}
		b = append(b, '\n')
		for _, r := range c.Rules {
			b = fmt.Appendf(b, "\t%s", r.Text)
			if r.Comment != "" {
				b = fmt.Appendf(b, " comment %q", r.Comment)
			}
			b = append(b, '\n')
		}
	}
	for _, d := range rs.Dispatch {
		b = fmt.Appendf(b, "element @%s { %s } comment %q\n", familyOf(d.Addr).dispatchMap(), d.Text(), d.Comment)
		for _, e := range d.Elements {
			b = fmt.Appendf(b, "\telement @%s { %s } comment %q\n", mapOf(e.Addr), e.Text(), e.Comment)
		}
	}
	return string(b)
}

func hookName(h nftables.ChainHook) string {
	return map[nftables.ChainHook]string{*nftables.ChainHookPrerouting: "prerouting", *nftables.ChainHookInput: "input",
		*nftables.ChainHookOutput: "output", *nftables.ChainHookPostrouting: "postrouting"}[h]
}
