package agent

import (
	"bytes"
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"maps"
	"math/bits"
	"net/netip"
	"slices"
	"strings"

	"github.com/magic-ip/magic-ip/agent/memo"
	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// Chains we own. Everything we create starts with ChainPrefix; nothing else is ever touched.
const (
	ChainPrefix     = "MAGIC-IP-"
	chainPrerouting = "MAGIC-IP-PREROUTING"
	chainOutput     = "MAGIC-IP-OUTPUT"
	chainPost       = "MAGIC-IP-POSTROUTING"
	chainServices   = "MAGIC-IP-SERVICES"
	chainInput      = "MAGIC-IP-INPUT"
	chainHosts      = "MAGIC-IP-HOSTS"
	chainHairpin    = "MAGIC-IP-HAIRPIN"
	svcChainPrefix  = "MAGIC-IP-SVC-"
	blockPrefix     = "MAGIC-IP-BLK-"
	hairpinPrefix   = "MAGIC-IP-HP-"
)

// Jump is a rule in a built-in chain that sends packets to one of our chains; it must be first.
type Jump struct {
	Table, Chain, Target, Comment string
}

// Jumps are our entry points: nat PREROUTING (pods), nat OUTPUT (the node and host-network pods),
// nat POSTROUTING (source fix for host clients) and filter INPUT (refuse what was not redirected).
var Jumps = []Jump{
	{"nat", "PREROUTING", chainPrerouting, "magic-ip: node-local redirects"},
	{"nat", "OUTPUT", chainOutput, "magic-ip: node-local redirects for host clients"},
	{"nat", "POSTROUTING", chainPost, "magic-ip: host clients must not keep the magic IP as source"},
	{"filter", "INPUT", chainInput, "magic-ip: refuse what was not redirected"},
}

// Spec renders as iptables-restore arguments (after "-A PREROUTING" or "-I PREROUTING 1").
func (j Jump) Spec() []string {
	return []string{"-m", "comment", "--comment", j.Comment, "-j", j.Target}
}

// IsOurs reports whether a chain name is one of ours.
func IsOurs(chain string) bool { return strings.HasPrefix(chain, ChainPrefix) }

// svcChain names the chain of one service: prefix + a short hash of what it serves.
func svcChain(s Service) string {
	return hashedName(svcChainPrefix, fmt.Sprintf("%s/%s/%d/%s", s.Key(), s.Address, s.Port, s.Protocol))
}

// hashedName is prefix + the first 12 base32 characters of key's sha256: a chain name of fixed
// length (iptables allows 28 characters) that stays the same for the same key across restarts.
func hashedName(prefix, key string) string {
	h := sha256.Sum256([]byte(key))
	return prefix + base32.StdEncoding.EncodeToString(h[:])[:12]
}

// Ruleset is the rendered content of our chains per table, in iptables-restore syntax.
type Ruleset struct {
	// Chains maps table → chain → rules (each rule without the "-A CHAIN" head).
	Chains map[string]map[string][]string
}

// newConn matches the first packet of a connection. filter INPUT refuses only those when they are
// still addressed to the magic IP (no DNAT touched them): never a reply. A host client's refusal
// (a TCP reset or ICMP error from the magic IP to the magic IP, a RELATED packet) and the replies
// of redirected host clients (addressed to the magic IP again once un-NATed) must pass.
const newConn = "-m conntrack --ctstate NEW"

// Render turns a State into our IPv4 chains (RenderFamily for IPv4).
func Render(st State, local *LocalDetector) Ruleset { return RenderFamily(st, local, IPv4) }

// RenderFamily turns the services and addresses of family fam in a State into our chains, for
// iptables-restore (IPv4) or ip6tables-restore (IPv6): one restore per family, the same rules in
// each but for the addresses and the ICMP of the refusals. local tells traffic from this node's
// pods from traffic that arrives from outside the node, which is never redirected (nil: every
// source is node-local).
func RenderFamily(st State, local *LocalDetector, fam Family) Ruleset {
	return (&Renderer{Family: fam}).Render(st, local)
}

// Renderer renders as Render does, reusing the lines of every service, address and hairpin
// producer that are the same as in its previous call: a sync that changes one producer formats
// that producer's lines only, so its cost does not grow with what else the node serves (at 1,000
// MagicIPs × 3 ports, formatting every line took 60–100 ms on the 2-core VM). The zero value is
// ready (IPv4); the lines kept are those of the last call.
type Renderer struct {
	// Family is the family rendered (the zero value: IPv4).
	Family Family

	local    *LocalDetector
	services map[serviceID]*serviceLines
	addrs    map[netip.Addr]*addressLines
	hairpins map[Endpoint]string
	// refs counts the local producers' endpoints behind the hairpin chains; buckets are the
	// blocks of MAGIC-IP-HAIRPIN, one per rule, in its order. See hairpinRefs.
	refs    hairpinRefs
	buckets []netip.Prefix

	// last and out are the State (its services of Family) and the Ruleset of the last call. See
	// update.
	last State
	out  Ruleset
}

// serviceID is what a service's match lines depend on (its endpoints are compared apart).
type serviceID struct {
	MagicIP, PortName string
	Address           netip.Addr
	Port              int32
	Protocol          v1alpha1.Protocol
	WhenNoProducer    v1alpha1.NoLocalProducerAction
}

func (s Service) id() serviceID {
	return serviceID{s.MagicIP, s.PortName, s.Address, s.Port, s.Protocol, s.WhenNoProducer}
}

type serviceLines struct {
	chain, dispatch, verdict string
	rules                    memo.Built[Endpoint, []string]
}

type addressLines struct {
	masquerade string
	undeclared []string
}

// Render implements Render with the lines of the last call reused where their inputs are equal.
func (r *Renderer) Render(st State, local *LocalDetector) Ruleset {
	if r.Family == "" {
		r.Family = IPv4
	}
	fam := r.Family
	if slices.ContainsFunc(st.Services, func(s Service) bool { return !fam.has(s.Address) }) {
		st.Services = slices.DeleteFunc(slices.Clone(st.Services), func(s Service) bool { return !fam.has(s.Address) })
	}
	if r.local != local {
		*r = Renderer{Family: r.Family, local: local}
	} else if rs, ok := r.update(st); ok {
		return rs
	}
	prevSvcs, prevAddrs, prevHP := r.services, r.addrs, r.hairpins
	r.services, r.addrs = make(map[serviceID]*serviceLines, len(st.Services)), make(map[netip.Addr]*addressLines, len(prevAddrs))
	r.hairpins = make(map[Endpoint]string, len(prevHP))
	nat := make(map[string][]string, 4+len(st.Services)+len(prevAddrs))
	for _, c := range []string{chainPrerouting, chainOutput, chainPost, chainServices} {
		nat[c] = nil
	}
	addrs := slices.DeleteFunc(addresses(st), func(a netip.Addr) bool { return !fam.has(a) })
	guard, postGuard := notMagic(addrs)
	filter := map[string][]string{chainInput: slices.Clone(guard)}
	nat[chainPrerouting] = append(local.external(), guard...)
	nat[chainOutput], nat[chainPost] = slices.Clone(guard), slices.Clone(postGuard)
	lines := make([]*addressLines, len(addrs))
	for i, a := range addrs {
		l := prevAddrs[a]
		if l == nil {
			l = renderAddress(a, fam)
		}
		r.addrs[a], lines[i] = l, l
		nat[chainHosts] = append(nat[chainHosts], l.masquerade)
	}
	r.refs, r.buckets = hairpinRefs{}, nil
	for _, s := range st.Services {
		r.refs.count(s.Endpoints, 1)
	}
	if len(addrs) > 0 {
		nat[chainPrerouting] = append(nat[chainPrerouting], local.dispatch(fam)...)
		nat[chainOutput] = append(nat[chainOutput], "-j "+chainServices)
		nat[chainPost] = append(nat[chainPost], hostsJump(addrs), hairpinJump)
		nat[chainHairpin] = []string{}
		for _, ip := range slices.SortedFunc(maps.Keys(r.refs), netip.Addr.Compare) {
			if b := hairpinBucket(ip); len(r.buckets) == 0 || r.buckets[len(r.buckets)-1] != b {
				r.buckets = append(r.buckets, b)
				nat[chainHairpin] = append(nat[chainHairpin], bucketJump(b))
				nat[bucketChain(b)] = r.blockRules(b, prevHP, r.hairpins)
			}
		}
	}
	var dispatch []dispatchLine
	for _, s := range st.Services {
		l := r.service(s, prevSvcs)
		filter[chainInput] = append(filter[chainInput], l.verdict)
		if len(s.Endpoints) == 0 {
			continue
		}
		dispatch = append(dispatch, dispatchLine{s.Address, l.dispatch})
		nat[l.chain] = l.rules.Get(s.Endpoints, func() []string { return endpointRules(s) })
	}
	splitDispatch(nat, chainServices, dispatch)
	// Any other port on a magic address is refused too: the address serves only its declared
	// ports. Every address the node carries gets these, so none is ever left without a verdict.
	for _, l := range lines {
		filter[chainInput] = append(filter[chainInput], l.undeclared...)
	}
	r.last, r.out = st, Ruleset{Chains: map[string]map[string][]string{"nat": nat, "filter": filter}}
	return r.out
}

// update renders st from the last call's Ruleset when st has the same addresses and services as
// the last State, each with producers or without as before: only the chains of the services whose
// producers changed, and the hairpin chains of their producers' blocks, are built again (from
// their kept lines when these producers were seen last). Every other chain of the result is the last one's,
// the same slice: RestoreChanges finds them unchanged without comparing their lines. ok is false
// when st differs more (Render assembles every chain).
func (r *Renderer) update(st State) (Ruleset, bool) {
	last := r.last.Services
	if r.out.Chains == nil || !sameAddresses(st.Addresses, r.last.Addresses) {
		return Ruleset{}, false
	}
	changed, ok := memo.Changed(st.Services, last, Service.id, func(s Service) []Endpoint { return s.Endpoints })
	if !ok {
		return Ruleset{}, false
	}
	rs := r.out
	if len(changed) > 0 {
		nat := maps.Clone(rs.Chains["nat"])
		var touched []netip.Addr
		for _, i := range changed {
			s := st.Services[i]
			l := r.services[s.id()]
			nat[l.chain] = l.rules.Get(s.Endpoints, func() []string { return endpointRules(s) })
			touched = append(append(touched, r.refs.count(last[i].Endpoints, -1)...), r.refs.count(s.Endpoints, 1)...)
		}
		if len(touched) > 0 {
			r.updateHairpin(nat, touched)
		}
		rs = Ruleset{Chains: map[string]map[string][]string{"nat": nat, "filter": rs.Chains["filter"]}}
	}
	r.last, r.out = st, rs
	return rs, true
}

// updateHairpin rewrites in nat the hairpin chains of the blocks of the IPs touched (their
// counts in r.refs already changed): a block's chain refilled from its 16 addresses' counts, or
// gone with its jump when none is left, a new block's jump put in place in MAGIC-IP-HAIRPIN (on a
// copy: the last Ruleset keeps its own). A producer change rewrites a chain of at most 16 rules,
// whatever the node serves.
func (r *Renderer) updateHairpin(nat map[string][]string, touched []netip.Addr) {
	buckets, jumps := r.buckets, nat[chainHairpin]
	cloned := false
	seen := map[netip.Prefix]bool{}
	for _, ip := range touched {
		b := hairpinBucket(ip)
		if seen[b] {
			continue
		}
		seen[b] = true
		rules := r.blockRules(b, r.hairpins, nil)
		name := bucketChain(b)
		j, had := slices.BinarySearchFunc(buckets, b, netip.Prefix.Compare)
		if len(rules) > 0 && !slices.Equal(rules, nat[name]) {
			nat[name] = rules
		}
		if (len(rules) > 0) == had {
			continue
		}
		if !cloned {
			buckets, jumps, cloned = slices.Clone(buckets), slices.Clone(jumps), true
		}
		if had {
			delete(nat, name)
			buckets, jumps = slices.Delete(buckets, j, j+1), slices.Delete(jumps, j, j+1)
		} else {
			buckets, jumps = slices.Insert(buckets, j, b), slices.Insert(jumps, j, bucketJump(b))
		}
	}
	r.buckets, nat[chainHairpin] = buckets, jumps
}

// blockRules is the hairpin chain of block b from the counts in r.refs: a rule per producer IP
// in it, in IP order, each taken from prev where there (hairpinRuleOf) and stored in keep when
// keep is not nil (a full Render keeps the rules it made; a change sync keeps none). Both Render
// and updateHairpin fill a block with it, so the two cannot differ.
func (r *Renderer) blockRules(b netip.Prefix, prev, keep map[Endpoint]string) []string {
	var rules []string
	for a := b.Addr(); b.Contains(a); a = a.Next() {
		pod := r.refs.first(a)
		if pod == "" {
			continue
		}
		rule := hairpinRuleOf(pod, a, prev)
		if keep != nil {
			keep[Endpoint{Pod: pod, Addr: netip.AddrPortFrom(a, 0)}] = rule
		}
		rules = append(rules, rule)
	}
	return rules
}

// hairpinBucket is the block of 16 addresses ip is in (/28, /124): MAGIC-IP-HAIRPIN jumps to one
// chain per block holding producers, so a new connection walks a rule per block and at most 16
// producers' rules, and a producer change rewrites one small chain (one chain of every producer's
// rule, 300 at 100 MagicIPs × 3 producers, made each change sync rewrite all of them).
func hairpinBucket(ip netip.Addr) netip.Prefix {
	p, _ := ip.Prefix(ip.BitLen() - 4)
	return p
}

func bucketJump(b netip.Prefix) string { return fmt.Sprintf("-d %s -j %s", b, bucketChain(b)) }

// bucketChain names the hairpin chain of the block b.
func bucketChain(b netip.Prefix) string { return hashedName(hairpinPrefix, "hairpin/"+b.String()) }

// hairpinRuleOf is the hairpin rule of a local producer IP, named after pod, taken from prev
// (the rules of the last full Render) where there: a change sync formats only new producers'.
// It keeps nothing, so pods that come and go between full renders leave nothing behind.
func hairpinRuleOf(pod string, ip netip.Addr, prev map[Endpoint]string) string {
	if rule, ok := prev[Endpoint{Pod: pod, Addr: netip.AddrPortFrom(ip, 0)}]; ok {
		return rule
	}
	return hairpinRule(pod, ip)
}

func hairpinRule(pod string, ip netip.Addr) string {
	cidr := hostCIDR(ip)
	return fmt.Sprintf(`-s %s -d %s -m comment --comment "hairpin: %s reaching itself" -j MASQUERADE`, cidr, cidr, pod)
}

// hairpinRefs counts, per local producer IP, the endpoints of each pod at that IP over every
// service. The hairpin chain (MAGIC-IP-HAIRPIN, reached from MAGIC-IP-POSTROUTING by redirected
// connections first sent to the magic addresses' prefix) masquerades a producer's connections to
// its own magic IP that were redirected to itself: the packet would otherwise come back with its
// own address as source and destination, and the pod drops it (the connection hangs). Only this
// self-traffic is masqueraded, as kube-proxy does for hairpin traffic; consumers, and producers
// sent to another producer, keep their source address. The chains hold one rule per IP, in IP
// order within its block of 16 (hairpinBucket), whatever the magic addresses it serves (two pods with one IP — host-network producers
// —, or one producer of several ports or addresses, get one), named after the IP's first pod by
// name. Producers on other nodes (Fallback) are not counted: they never send from this node.
type hairpinRefs map[netip.Addr]map[string]int

// count adds n to the counts of eps and returns the local IPs it touched.
func (h hairpinRefs) count(eps []Endpoint, n int) []netip.Addr {
	var touched []netip.Addr
	for _, ep := range eps {
		if ep.Node != "" {
			continue
		}
		ip := ep.Addr.Addr()
		pods := h[ip]
		if pods == nil {
			pods = map[string]int{}
			h[ip] = pods
		}
		if pods[ep.Pod] += n; pods[ep.Pod] <= 0 {
			delete(pods, ep.Pod)
		}
		if len(pods) == 0 {
			delete(h, ip)
		}
		touched = append(touched, ip)
	}
	return touched
}

// first is the first pod by name at ip ("" if none).
func (h hairpinRefs) first(ip netip.Addr) string {
	var first string
	for pod := range h[ip] {
		if first == "" || pod < first {
			first = pod
		}
	}
	return first
}

// notMagic is the line that starts our input, prerouting and output chains (in), and the one
// that starts our postrouting chain (post): a packet to an address outside the smallest prefix
// holding every magic address returns at once — in postrouting, a connection neither from such an
// address (a host client's) nor first sent to one (a hairpin) — so the node's other traffic does
// not walk the rules of every magic address and port (the input chain sees every packet delivered
// to the host: at 1,000 MagicIPs × 3 ports, 5,000 rules; postrouting every new connection leaving
// the node, two rules per address). iptables has no set lookup here (no ipset), so this is a
// prefix: the usual link-local magic addresses share 169.254.0.0/16; addresses spread over the
// whole space get no line (the prefix would be /0).
func notMagic(addrs []netip.Addr) (in, post []string) {
	p, ok := covering(addrs)
	if !ok || p.Bits() == 0 {
		return nil, nil
	}
	orig := p.String() // as iptables-save prints --ctorigdst: a single address without its mask
	if p.IsSingleIP() {
		orig = p.Addr().String()
	}
	return []string{fmt.Sprintf(`! -d %s -m comment --comment "not a magic address" -j RETURN`, p)},
		[]string{fmt.Sprintf(`! -s %s -m conntrack ! --ctorigdst %s -m comment --comment "not from or to a magic address" -j RETURN`, p, orig)}
}

// covering is the smallest prefix holding every address of addrs (one family); ok is false when
// there are none.
func covering(addrs []netip.Addr) (netip.Prefix, bool) {
	if len(addrs) == 0 {
		return netip.Prefix{}, false
	}
	lo, hi := slices.MinFunc(addrs, netip.Addr.Compare), slices.MaxFunc(addrs, netip.Addr.Compare)
	a, b := lo.AsSlice(), hi.AsSlice()
	same := 0 // leading bits lo and hi share
	for i := range a {
		if x := a[i] ^ b[i]; x != 0 {
			same += bits.LeadingZeros8(x)
			break
		}
		same += 8
	}
	p, err := lo.Prefix(same)
	return p, err == nil
}

// renderAddress formats the lines of one magic address.
func renderAddress(a netip.Addr, fam Family) *addressLines {
	l := &addressLines{}
	// A host client talking to a local address gets that address as its source. Once its
	// packets are redirected to a pod, the pod's replies would come back with the node's own
	// address as destination *and* (un-NATed) as source: dropped as martians. Masquerade them.
	l.masquerade = fmt.Sprintf(`-s %s ! -o lo -m conntrack --ctstate DNAT -m comment --comment "host client of %s" -j MASQUERADE`, hostCIDR(a), a)
	for _, p := range []v1alpha1.Protocol{v1alpha1.ProtocolTCP, v1alpha1.ProtocolUDP} {
		l.undeclared = append(l.undeclared, fmt.Sprintf(`-d %s -p %s %s -m comment --comment "%s: undeclared port" %s`,
			hostCIDR(a), proto(p), newConn, a, verdict(v1alpha1.Reject, p, fam)))
	}
	return l
}

// hostsJump sends to MAGIC-IP-HOSTS (the host clients' masquerade, a rule per magic address) the
// connections from an address of the magic addresses' prefix: a pod's connection (its source a
// pod IP) walks none of them.
func hostsJump(addrs []netip.Addr) string {
	if p, ok := covering(addrs); ok && p.Bits() > 0 {
		return fmt.Sprintf(`-s %s -m comment --comment "host clients" -j %s`, p, chainHosts)
	}
	return fmt.Sprintf(`-m comment --comment "host clients" -j %s`, chainHosts)
}

// hairpinJump sends the redirected connections that reached postrouting's end (first sent to an
// address of the magic addresses' prefix, see notMagic) to MAGIC-IP-HAIRPIN, a jump per block of
// local producer IPs (see hairpinBucket): one match whatever the node serves (a jump per magic address, each matching the
// connection's original destination, cost a new connection to the last of 1,000 MagicIPs 1,000
// conntrack matches).
const hairpinJump = `-m conntrack --ctstate DNAT -m comment --comment "hairpin: a producer reaching itself" -j ` + chainHairpin

// dispatchLine is a service's line of MAGIC-IP-SERVICES and its address.
type dispatchLine struct {
	addr netip.Addr
	line string
}

// blockLeaf is the most dispatch lines a chain of MAGIC-IP-SERVICES' tree holds before it splits.
const blockLeaf = 16

// splitDispatch writes the dispatch lines into chain, as they come while they are few (at most
// blockLeaf); more are split by address into a binary tree of prefixes: chain holds one rule per
// half, "-d <prefix of the half> -j MAGIC-IP-BLK-<hash>", and each half is split in the same way.
// A new connection walks a rule or two per level and at most blockLeaf lines at the end — some 30
// rules at 1,000 MagicIPs, where a flat chain had it walk every other service's line (with
// iptables there is no set lookup: no ipset). Each line matches its service's exact address,
// port and protocol, so the tree changes where a line is, not what it matches.
func splitDispatch(nat map[string][]string, chain string, lines []dispatchLine) {
	out := make([]string, 0, min(len(lines), blockLeaf))
	if len(lines) <= blockLeaf {
		for _, l := range lines {
			out = append(out, l.line)
		}
		nat[chain] = out
		return
	}
	sorted := slices.SortedStableFunc(slices.Values(lines), func(x, y dispatchLine) int { return x.addr.Compare(y.addr) })
	whole, _ := covering([]netip.Addr{sorted[0].addr, sorted[len(sorted)-1].addr})
	if whole.IsSingleIP() {
		for _, l := range sorted {
			out = append(out, l.line)
		}
		nat[chain] = out
		return
	}
	// The first line whose address has the bit after the common prefix set starts the upper half.
	cut, _ := slices.BinarySearchFunc(sorted, upperHalf(whole), func(l dispatchLine, t netip.Addr) int { return l.addr.Compare(t) })
	for _, half := range [][]dispatchLine{sorted[:cut], sorted[cut:]} {
		p, _ := covering([]netip.Addr{half[0].addr, half[len(half)-1].addr})
		child := blockChain(p)
		out = append(out, fmt.Sprintf(`-d %s -j %s`, p, child))
		splitDispatch(nat, child, half)
	}
	nat[chain] = out
}

// upperHalf is the first address of p's upper half: p's address with the bit after its prefix set.
func upperHalf(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	b[p.Bits()/8] |= 0x80 >> (p.Bits() % 8)
	a, _ := netip.AddrFromSlice(b)
	return a
}

// blockChain names the chain of MAGIC-IP-SERVICES' tree for the addresses of p.
func blockChain(p netip.Prefix) string { return hashedName(blockPrefix, "block/"+p.String()) }

// service returns the lines of s kept from the last call (its endpoint rules are formatted again
// by Render when its endpoints changed), or new ones.
func (r *Renderer) service(s Service, prev map[serviceID]*serviceLines) *serviceLines {
	id := s.id()
	l := prev[id]
	if l == nil {
		match := fmt.Sprintf("-d %s -p %s -m %s --dport %d", hostCIDR(s.Address), proto(s.Protocol), proto(s.Protocol), s.Port)
		l = &serviceLines{chain: svcChain(s),
			verdict: fmt.Sprintf(`%s %s -m comment --comment "%s%s" %s`, match, newConn, s.Key(), notRedirected, verdict(s.WhenNoProducer, s.Protocol, r.Family))}
		l.dispatch = fmt.Sprintf(`%s -m comment --comment "%s" -j %s`, match, s.Key(), l.chain)
	}
	r.services[id] = l
	return l
}

// addresses are the magic addresses of st, sorted (IPv4 first): those on its interfaces and those
// of its services (the same set when st came from Desired).
func addresses(st State) []netip.Addr {
	var addrs []netip.Addr
	for _, as := range st.Addresses {
		addrs = append(addrs, as...)
	}
	for _, s := range st.Services {
		addrs = append(addrs, s.Address)
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	return slices.Compact(addrs)
}

// endpointRules spread new connections evenly: rule i of n matches with probability 1/(n-i). The
// comment marks terminating producers, which serve only while no Ready one is left, and the
// producers of other nodes a Fallback MagicIP uses while this node has no usable one.
func endpointRules(s Service) []string {
	n := len(s.Endpoints)
	rules := make([]string, 0, n)
	for i, ep := range s.Endpoints {
		prob := ""
		if left := n - i; left > 1 {
			prob = fmt.Sprintf(" -m statistic --mode random --probability %.11f", 1/float64(left))
		}
		note := ""
		switch {
		case ep.Terminating:
			note = " (terminating, no Ready producer)"
		case ep.Node != "":
			note = " (fallback to node " + ep.Node + ")"
		}
		rules = append(rules, fmt.Sprintf(`-p %s -m comment --comment "%s -> %s%s"%s -j DNAT --to-destination %s`, proto(s.Protocol), s.Key(), ep.Pod, note, prob, ep.Addr))
	}
	return rules
}

func verdict(a v1alpha1.NoLocalProducerAction, p v1alpha1.Protocol, fam Family) string {
	switch {
	case a == v1alpha1.Drop:
		return "-j DROP"
	case p == v1alpha1.ProtocolTCP:
		return "-j REJECT --reject-with tcp-reset"
	case fam == IPv6:
		return "-j REJECT --reject-with icmp6-port-unreachable"
	default:
		return "-j REJECT --reject-with icmp-port-unreachable"
	}
}

func proto(p v1alpha1.Protocol) string { return strings.ToLower(string(p)) }

func hostCIDR(a netip.Addr) string { return netip.PrefixFrom(a, a.BitLen()).String() }

// JumpFix puts a jump first in its built-in chain. Delete lists the misplaced jumps to remove
// first, exactly as iptables-save printed them (after "-A CHAIN "), so a jump written by another
// version with another comment is still removed, not left to fail the restore.
type JumpFix struct {
	Jump
	Delete []string
}

// Restore renders the iptables-restore --noflush input that makes the kernel hold exactly rs in
// our chains: each of our chains is declared (which empties it) and refilled, stale chains of
// ours (existing, not in rs) are emptied and deleted, and jumps that are missing or not first are
// put first in their built-in chain — one transaction per table, nat before filter.
func (rs Ruleset) Restore(existing map[string][]string, jumps []JumpFix) []byte {
	var b bytes.Buffer
	for _, table := range []string{"nat", "filter"} {
		var stale []string
		for _, c := range existing[table] {
			if _, keep := rs.Chains[table][c]; !keep && IsOurs(c) {
				stale = append(stale, c)
			}
		}
		writeTable(&b, table, rs.Chains[table], sortedKeys(rs.Chains[table]), stale, jumps)
	}
	return b.Bytes()
}

// RestoreChanges renders only what differs from prev (the last ruleset applied): changed or new
// chains are rewritten, chains gone since are deleted, unchanged chains and tables are not
// mentioned at all. It returns nil when nothing changed.
func (rs Ruleset) RestoreChanges(prev Ruleset) []byte {
	var b bytes.Buffer
	for _, table := range []string{"nat", "filter"} {
		// Only the chains that differ are sorted: thousands of chains, a few changed.
		var changed, stale []string
		for c, rules := range rs.Chains[table] {
			if old, ok := prev.Chains[table][c]; !ok || !memo.Equal(old, rules) {
				changed = append(changed, c)
			}
		}
		for c := range prev.Chains[table] {
			if _, keep := rs.Chains[table][c]; !keep {
				stale = append(stale, c)
			}
		}
		slices.Sort(changed)
		slices.Sort(stale)
		if len(changed)+len(stale) > 0 {
			writeTable(&b, table, rs.Chains[table], changed, stale, nil)
		}
	}
	if b.Len() == 0 {
		return nil
	}
	return b.Bytes()
}

// writeTable writes one table's transaction: declare (and so empty) the chains to fill and the
// stale ones, fill, delete the stale ones, then fix the jumps of this table.
func writeTable(b *bytes.Buffer, table string, chains map[string][]string, fill, stale []string, jumps []JumpFix) {
	fmt.Fprintf(b, "*%s\n", table)
	for _, c := range append(slices.Clone(fill), stale...) {
		fmt.Fprintf(b, ":%s - [0:0]\n", c)
	}
	for _, c := range fill {
		for _, r := range chains[c] {
			fmt.Fprintf(b, "-A %s %s\n", c, r)
		}
	}
	for _, c := range stale {
		fmt.Fprintf(b, "-X %s\n", c)
	}
	for _, j := range jumps {
		if j.Table != table {
			continue
		}
		for _, rule := range j.Delete {
			fmt.Fprintf(b, "-D %s %s\n", j.Chain, rule)
		}
		fmt.Fprintf(b, "-I %s 1 %s\n", j.Chain, quoteArgs(j.Spec()))
	}
	b.WriteString("COMMIT\n")
}

func quoteArgs(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " \t\"") {
			a = `"` + strings.ReplaceAll(a, `"`, `\"`) + `"`
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
