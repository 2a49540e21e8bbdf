package agent

import (
	"bytes"
	"cmp"
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
	svcChainPrefix  = "MAGIC-IP-SVC-"
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
// hairpinChain names the hairpin chain of one magic address: prefix + a short hash of it.
func hairpinChain(a netip.Addr) string {
	h := sha256.Sum256([]byte("hairpin/" + a.String()))
	return hairpinPrefix + base32.StdEncoding.EncodeToString(h[:])[:12]
}

func svcChain(s Service) string {
	h := sha256.Sum256(fmt.Appendf(nil, "%s/%s/%d/%s", s.Key(), s.Address, s.Port, s.Protocol))
	return svcChainPrefix + base32.StdEncoding.EncodeToString(h[:])[:12]
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

	// last and out are the State (its services of Family) and the Ruleset of the last call;
	// byAddr lists the indices of last's services per address. See update.
	last   State
	out    Ruleset
	byAddr map[netip.Addr][]int
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
	prerouting               []string
	output, masquerade, jump string
	hairpinChain             string
	undeclared               []string
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
	filter := map[string][]string{chainInput: guard}
	nat[chainPrerouting] = append(local.prerouting(nil), guard...) // the external interfaces' RETURNs, if any
	nat[chainOutput], nat[chainPost] = guard, postGuard
	lines := make([]*addressLines, len(addrs))
	for i, a := range addrs {
		l := prevAddrs[a]
		if l == nil {
			l = renderAddress(a, local, fam)
		}
		r.addrs[a], lines[i] = l, l
		nat[chainPrerouting] = append(nat[chainPrerouting], l.prerouting...)
		nat[chainOutput] = append(nat[chainOutput], l.output)
		nat[chainPost] = append(nat[chainPost], l.masquerade)
	}
	hairpin := hairpinRules(st.Services, prevHP, r.hairpins)
	for i, a := range addrs {
		nat[chainPost] = append(nat[chainPost], lines[i].jump)
		nat[lines[i].hairpinChain] = hairpin[a]
	}
	for _, s := range st.Services {
		l := r.service(s, prevSvcs)
		filter[chainInput] = append(filter[chainInput], l.verdict)
		if len(s.Endpoints) == 0 {
			continue
		}
		nat[chainServices] = append(nat[chainServices], l.dispatch)
		nat[l.chain] = l.rules.Get(s.Endpoints, func() []string { return endpointRules(s) })
	}
	// Any other port on a magic address is refused too: the address serves only its declared
	// ports. Every address the node carries gets these, so none is ever left without a verdict.
	for _, l := range lines {
		filter[chainInput] = append(filter[chainInput], l.undeclared...)
	}
	r.byAddr = map[netip.Addr][]int{}
	for i, s := range st.Services {
		r.byAddr[s.Address] = append(r.byAddr[s.Address], i)
	}
	r.last, r.out = st, Ruleset{Chains: map[string]map[string][]string{"nat": nat, "filter": filter}}
	return r.out
}

// update renders st from the last call's Ruleset when st has the same addresses and services as
// the last State, each with producers or without as before: only the chains of the services whose
// producers changed, and the hairpin chains of their addresses, are built again (from their kept
// lines when these producers were seen last). Every other chain of the result is the last one's,
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
		addrs := map[netip.Addr]bool{}
		for _, i := range changed {
			s := st.Services[i]
			l := r.services[s.id()]
			nat[l.chain] = l.rules.Get(s.Endpoints, func() []string { return endpointRules(s) })
			addrs[s.Address] = true
		}
		for a := range addrs {
			var svcs []Service
			for _, i := range r.byAddr[a] {
				svcs = append(svcs, st.Services[i])
			}
			nat[r.addrs[a].hairpinChain] = hairpinRules(svcs, r.hairpins, nil)[a]
		}
		rs = Ruleset{Chains: map[string]map[string][]string{"nat": nat, "filter": rs.Chains["filter"]}}
	}
	r.last, r.out = st, rs
	return rs, true
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
func renderAddress(a netip.Addr, local *LocalDetector, fam Family) *addressLines {
	l := &addressLines{hairpinChain: hairpinChain(a)}
	l.prerouting = local.dispatchTo(a)
	l.output = fmt.Sprintf("-d %s -j %s", hostCIDR(a), chainServices)
	// A host client talking to a local address gets that address as its source. Once its
	// packets are redirected to a pod, the pod's replies would come back with the node's own
	// address as destination *and* (un-NATed) as source: dropped as martians. Masquerade them.
	l.masquerade = fmt.Sprintf(`-s %s ! -o lo -m conntrack --ctstate DNAT -m comment --comment "host client of %s" -j MASQUERADE`, hostCIDR(a), a)
	l.jump = fmt.Sprintf(`-m conntrack --ctstate DNAT --ctorigdst %s -m comment --comment "hairpin through %s" -j %s`, a, a, l.hairpinChain)
	for _, p := range []v1alpha1.Protocol{v1alpha1.ProtocolTCP, v1alpha1.ProtocolUDP} {
		l.undeclared = append(l.undeclared, fmt.Sprintf(`-d %s -p %s %s -m comment --comment "%s: undeclared port" %s`,
			hostCIDR(a), proto(p), newConn, a, verdict(v1alpha1.Reject, p, fam)))
	}
	return l
}

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

// hairpinRules masquerade a producer's connections to its own magic IP that were redirected to
// itself: the packet would otherwise come back with its own address as source and destination,
// and the pod drops it (the connection hangs). Only this self-traffic is masqueraded, as
// kube-proxy does for hairpin traffic; consumers, and producers sent to another producer, keep
// their source address. The rules of each magic address fill its hairpin chain (reached from
// MAGIC-IP-POSTROUTING by connections first sent to that address), one rule per producer IP in IP
// order, so a producer change rewrites only that small chain. One pass over the services. The
// rules are taken from prev where there, and each rule is kept in keep (unless nil).
func hairpinRules(svcs []Service, prev, keep map[Endpoint]string) map[netip.Addr][]string {
	eps := map[netip.Addr][]Endpoint{}
	for _, s := range svcs {
		for _, ep := range s.Endpoints {
			if ep.Node != "" {
				continue // a producer on another node never sends from this node
			}
			eps[s.Address] = append(eps[s.Address], Endpoint{Pod: ep.Pod, Addr: netip.AddrPortFrom(ep.Addr.Addr(), 0)})
		}
	}
	out := make(map[netip.Addr][]string, len(eps))
	for a, list := range eps {
		slices.SortFunc(list, func(x, y Endpoint) int { return cmp.Or(x.Addr.Compare(y.Addr), cmp.Compare(x.Pod, y.Pod)) })
		for i, ep := range list {
			if i > 0 && list[i-1].Addr == ep.Addr {
				continue // two pods with one IP (host-network producers), or one producer of two ports: one rule
			}
			rule, ok := prev[ep]
			if !ok {
				ip := hostCIDR(ep.Addr.Addr())
				rule = fmt.Sprintf(`-s %s -d %s -m comment --comment "hairpin: %s reaching itself" -j MASQUERADE`, ip, ip, ep.Pod)
			}
			if keep != nil {
				keep[ep] = rule
			}
			out[a] = append(out[a], rule)
		}
	}
	return out
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
