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

// referenceState is one MagicIP with a TCP port served by two local producers and a UDP port
// with none.
func referenceState() State {
	addr := netip.MustParseAddr(testAddr)
	return State{
		Addresses: map[string][]netip.Addr{testIface: {addr}},
		Services: []Service{
			{
				MagicIP: "datadog", PortName: "apm", Address: addr, Port: 8126,
				Protocol: v1alpha1.ProtocolTCP, WhenNoProducer: v1alpha1.Reject,
				Endpoints: []Endpoint{
					{Pod: "datadog/agent-a", Addr: netip.MustParseAddrPort("10.244.1.5:8126")},
					{Pod: "datadog/agent-b", Addr: netip.MustParseAddrPort("10.244.1.7:8126")},
				},
			},
			{
				MagicIP: "datadog", PortName: "dogstatsd", Address: addr, Port: 8125,
				Protocol: v1alpha1.ProtocolUDP, WhenNoProducer: v1alpha1.Reject,
			},
		},
	}
}

// referenceRestore is Render(referenceState(), ["eth0"]).Restore(nil, nil), checked line by line:
//   - nat chains are declared (emptied) in name order, then filled;
//   - the only svc chain is the TCP one: the UDP port has no producer, so no MAGIC-IP-SERVICES rule;
//   - DNAT rules carry -p; the first of two matches with probability 0.5, the last always;
//   - a producer reaching itself through the magic IP is masqueraded (hairpin): POSTROUTING sends
//     connections first sent to the address to its hairpin chain, one rule per producer IP there;
//   - filter INPUT refuses new connections no DNAT touched (never replies: a host client's own
//     refusal must reach it): the UDP port keeps its rule, and undeclared ports are refused too.
const referenceRestore = `*nat
:MAGIC-IP-HAIRPIN - [0:0]
:MAGIC-IP-HOSTS - [0:0]
:MAGIC-IP-HP-SYWRTAIQTNE4 - [0:0]
:MAGIC-IP-OUTPUT - [0:0]
:MAGIC-IP-POSTROUTING - [0:0]
:MAGIC-IP-PREROUTING - [0:0]
:MAGIC-IP-SERVICES - [0:0]
:MAGIC-IP-SVC-BMDMKVQYRIDQ - [0:0]
-A MAGIC-IP-HAIRPIN -d 10.244.1.0/28 -j MAGIC-IP-HP-SYWRTAIQTNE4
-A MAGIC-IP-HOSTS -s 169.254.210.210/32 ! -o lo -m conntrack --ctstate DNAT -m comment --comment "host client of 169.254.210.210" -j MASQUERADE
-A MAGIC-IP-HP-SYWRTAIQTNE4 -s 10.244.1.5/32 -d 10.244.1.5/32 -m comment --comment "hairpin: datadog/agent-a reaching itself" -j MASQUERADE
-A MAGIC-IP-HP-SYWRTAIQTNE4 -s 10.244.1.7/32 -d 10.244.1.7/32 -m comment --comment "hairpin: datadog/agent-b reaching itself" -j MASQUERADE
-A MAGIC-IP-OUTPUT ! -d 169.254.210.210/32 -m comment --comment "not a magic address" -j RETURN
-A MAGIC-IP-OUTPUT -j MAGIC-IP-SERVICES
-A MAGIC-IP-POSTROUTING ! -s 169.254.210.210/32 -m conntrack ! --ctorigdst 169.254.210.210 -m comment --comment "not from or to a magic address" -j RETURN
-A MAGIC-IP-POSTROUTING -s 169.254.210.210/32 -m comment --comment "host clients" -j MAGIC-IP-HOSTS
-A MAGIC-IP-POSTROUTING -m conntrack --ctstate DNAT -m comment --comment "hairpin: a producer reaching itself" -j MAGIC-IP-HAIRPIN
-A MAGIC-IP-PREROUTING -i eth0 -m comment --comment "external interface: not node-local" -j RETURN
-A MAGIC-IP-PREROUTING ! -d 169.254.210.210/32 -m comment --comment "not a magic address" -j RETURN
-A MAGIC-IP-PREROUTING -j MAGIC-IP-SERVICES
-A MAGIC-IP-SERVICES -d 169.254.210.210/32 -p tcp -m tcp --dport 8126 -m comment --comment "datadog:apm" -j MAGIC-IP-SVC-BMDMKVQYRIDQ
-A MAGIC-IP-SVC-BMDMKVQYRIDQ -p tcp -m comment --comment "datadog:apm -> datadog/agent-a" -m statistic --mode random --probability 0.50000000000 -j DNAT --to-destination 10.244.1.5:8126
-A MAGIC-IP-SVC-BMDMKVQYRIDQ -p tcp -m comment --comment "datadog:apm -> datadog/agent-b" -j DNAT --to-destination 10.244.1.7:8126
COMMIT
*filter
:MAGIC-IP-INPUT - [0:0]
-A MAGIC-IP-INPUT ! -d 169.254.210.210/32 -m comment --comment "not a magic address" -j RETURN
-A MAGIC-IP-INPUT -d 169.254.210.210/32 -p tcp -m tcp --dport 8126 -m conntrack --ctstate NEW -m comment --comment "datadog:apm: not redirected" -j REJECT --reject-with tcp-reset
-A MAGIC-IP-INPUT -d 169.254.210.210/32 -p udp -m udp --dport 8125 -m conntrack --ctstate NEW -m comment --comment "datadog:dogstatsd: not redirected" -j REJECT --reject-with icmp-port-unreachable
-A MAGIC-IP-INPUT -d 169.254.210.210/32 -p tcp -m conntrack --ctstate NEW -m comment --comment "169.254.210.210: undeclared port" -j REJECT --reject-with tcp-reset
-A MAGIC-IP-INPUT -d 169.254.210.210/32 -p udp -m conntrack --ctstate NEW -m comment --comment "169.254.210.210: undeclared port" -j REJECT --reject-with icmp-port-unreachable
COMMIT
`

// diffLines reports the first lines where got and want differ (go-cmp is not a dependency).
func diffLines(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	var b strings.Builder
	for i := range max(len(g), len(w)) {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			fmt.Fprintf(&b, "line %d:\n  got  %q\n  want %q\n", i+1, gl, wl)
		}
	}
	return b.String()
}

func TestRenderGolden(t *testing.T) {
	got := string(Render(referenceState(), ExternalInterfaces("eth0")).Restore(nil, nil))
	if got != referenceRestore {
		t.Errorf("Restore(nil, nil) differs from the reference:\n%s\nfull output:\n%s", diffLines(got, referenceRestore), got)
	}
}

// sections splits restore input into the lines of each table, without the "*table" and COMMIT lines.
func sections(t *testing.T, restore []byte) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	table := ""
	for _, line := range strings.Split(strings.TrimSuffix(string(restore), "\n"), "\n") {
		switch {
		case strings.HasPrefix(line, "*"):
			if table != "" {
				t.Fatalf("table %s opened before %s was committed", line, table)
			}
			table = line[1:]
		case line == "COMMIT":
			if table == "" {
				t.Fatalf("COMMIT outside a table")
			}
			table = ""
		case table == "":
			t.Fatalf("line outside a table: %q", line)
		default:
			out[table] = append(out[table], line)
		}
	}
	if table != "" {
		t.Fatalf("table %s not committed", table)
	}
	return out
}

func manyEndpoints(n int) []Endpoint {
	eps := make([]Endpoint, n)
	for i := range eps {
		eps[i] = Endpoint{Pod: fmt.Sprintf("datadog/agent-%d", i), Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 244, 1, byte(10 + i)}), 8126)}
	}
	return eps
}

func TestRenderProbabilities(t *testing.T) {
	tests := map[string]struct {
		endpoints int
		want      []string // probability per rule, "" for none
	}{
		"one endpoint":    {1, []string{""}},
		"two endpoints":   {2, []string{"0.50000000000", ""}},
		"three endpoints": {3, []string{"0.33333333333", "0.50000000000", ""}},
		"four endpoints":  {4, []string{"0.25000000000", "0.33333333333", "0.50000000000", ""}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			st := referenceState()
			st.Services = st.Services[:1]
			st.Services[0].Endpoints = manyEndpoints(tc.endpoints)
			nat := Render(st, nil).Chains["nat"]
			rules := nat[svcChain(st.Services[0])]
			if len(rules) != tc.endpoints {
				t.Fatalf("want %d DNAT rules, got %d: %q", tc.endpoints, len(rules), rules)
			}
			for i, r := range rules {
				_, after, found := strings.Cut(r, "--probability ")
				got := ""
				if found {
					got, _, _ = strings.Cut(after, " ")
				}
				if got != tc.want[i] {
					t.Errorf("rule %d: probability %q, want %q: %s", i, got, tc.want[i], r)
				}
				wantDNAT := "-j DNAT --to-destination " + st.Services[0].Endpoints[i].Addr.String()
				if !strings.HasPrefix(r, "-p tcp ") || !strings.HasSuffix(r, wantDNAT) {
					t.Errorf("rule %d: want it to start with -p tcp and end with %q: %s", i, wantDNAT, r)
				}
			}
		})
	}
}

// TestRenderTerminatingProducer: a terminating producer in use gets the same DNAT rule as a Ready
// one, with a comment saying why it is still there.
func TestRenderTerminatingProducer(t *testing.T) {
	st := referenceState()
	st.Services = st.Services[:1]
	st.Services[0].Endpoints = manyEndpoints(1)
	st.Services[0].Endpoints[0].Terminating = true
	svc := st.Services[0]
	got := Render(st, nil).Chains["nat"][svcChain(svc)]
	want := []string{fmt.Sprintf(`-p tcp -m comment --comment "%s -> datadog/agent-0 (terminating, no Ready producer)" -j DNAT --to-destination 10.244.1.10:8126`, svc.Key())}
	if !slices.Equal(got, want) {
		t.Errorf("rules:\n got %q\nwant %q", got, want)
	}
}

func TestRenderVerdicts(t *testing.T) {
	tests := map[string]struct {
		policy v1alpha1.NoLocalProducerAction
		proto  v1alpha1.Protocol
		want   string
	}{
		"reject TCP": {v1alpha1.Reject, v1alpha1.ProtocolTCP, "-j REJECT --reject-with tcp-reset"},
		"reject UDP": {v1alpha1.Reject, v1alpha1.ProtocolUDP, "-j REJECT --reject-with icmp-port-unreachable"},
		"drop TCP":   {v1alpha1.Drop, v1alpha1.ProtocolTCP, "-j DROP"},
		"drop UDP":   {v1alpha1.Drop, v1alpha1.ProtocolUDP, "-j DROP"},
	}
	for name, tc := range tests {
		for _, eps := range []int{0, 2} {
			t.Run(fmt.Sprintf("%s/%d endpoints", name, eps), func(t *testing.T) {
				s := Service{
					MagicIP: "m", PortName: "p", Address: netip.MustParseAddr(testAddr), Port: 53,
					Protocol: tc.proto, WhenNoProducer: tc.policy, Endpoints: manyEndpoints(eps),
				}
				input := Render(State{Services: []Service{s}}, nil).Chains["filter"][chainInput]
				p := strings.ToLower(string(tc.proto))
				guard := `! -d 169.254.210.210/32 -m comment --comment "not a magic address" -j RETURN`
				wantRule := fmt.Sprintf(`-d 169.254.210.210/32 -p %s -m %s --dport 53 -m conntrack --ctstate NEW -m comment --comment "m:p: not redirected" %s`, p, p, tc.want)
				if len(input) != 4 || input[0] != guard || input[1] != wantRule {
					t.Fatalf("want 4 INPUT rules (other addresses return, service, undeclared TCP, undeclared UDP), got %q; want the first two\n%q\n%q", input, guard, wantRule)
				}
				// Undeclared ports are always refused at once, whatever the policy.
				for _, r := range input[2:] {
					if !strings.Contains(r, "undeclared port") || strings.Contains(r, "DROP") {
						t.Errorf("undeclared-port rule should reject: %s", r)
					}
				}
				_, hasSvc := Render(State{Services: []Service{s}}, nil).Chains["nat"][svcChain(s)]
				if hasSvc != (eps > 0) {
					t.Errorf("svc chain present = %v with %d endpoints", hasSvc, eps)
				}
			})
		}
	}
}

// bigState has services of every kind on two addresses, long names included.
func bigState() State {
	a1, a2 := netip.MustParseAddr(testAddr), netip.MustParseAddr("169.254.20.10")
	long := strings.Repeat("very-long-magicip-name-", 10)
	var svcs []Service
	for i, a := range []netip.Addr{a1, a2} {
		for _, p := range []v1alpha1.Protocol{v1alpha1.ProtocolTCP, v1alpha1.ProtocolUDP} {
			svcs = append(svcs, Service{
				MagicIP: long + fmt.Sprint(i), PortName: "port-with-long-n", Address: a, Port: 65535,
				Protocol: p, WhenNoProducer: v1alpha1.Drop, Endpoints: manyEndpoints(3),
			})
		}
	}
	return State{Services: svcs}
}

func TestRenderChainNames(t *testing.T) {
	rs := Render(bigState(), ExternalInterfaces("eth0", "ens5"))
	n := 0
	for table, chains := range rs.Chains {
		for c, rules := range chains {
			n++
			if !strings.HasPrefix(c, ChainPrefix) || !IsOurs(c) {
				t.Errorf("%s/%s: does not start with %s", table, c, ChainPrefix)
			}
			if len(c) > 28 {
				t.Errorf("%s/%s: %d characters, iptables allows 28", table, c, len(c))
			}
			// Every jump from one of our chains goes to a chain we declare, or to a built-in target.
			for _, r := range rules {
				if _, target, ok := strings.Cut(r, "-j "); ok {
					target, _, _ = strings.Cut(target, " ")
					if _, declared := chains[target]; IsOurs(target) && !declared {
						t.Errorf("%s/%s jumps to undeclared %s", table, c, target)
					}
				}
			}
		}
	}
	// 7 chains of ours always there (prerouting, output, postrouting, services, input, hosts,
	// hairpin) + one svc chain per service + one hairpin chain per block of producers (the
	// producers of bigState are in one /28).
	if want := 7 + len(bigState().Services) + 1; n != want {
		t.Errorf("want %d chains, got %d", want, n)
	}
	for _, j := range Jumps {
		if _, ok := rs.Chains[j.Table][j.Target]; !ok {
			t.Errorf("jump %s/%s targets %s, which Render does not declare", j.Table, j.Chain, j.Target)
		}
	}
}

func TestSvcChain(t *testing.T) {
	base := referenceState().Services[0]
	name := svcChain(base)
	if !strings.HasPrefix(name, svcChainPrefix) || len(name) > 28 {
		t.Fatalf("svcChain = %q: want prefix %s and at most 28 characters", name, svcChainPrefix)
	}
	same := base
	same.Endpoints = manyEndpoints(4)
	same.WhenNoProducer = v1alpha1.Drop
	if got := svcChain(same); got != name {
		t.Errorf("producers and policy changed the chain name: %s → %s (the chain should be stable)", name, got)
	}
	if got := svcChain(base); got != name {
		t.Errorf("svcChain is not stable: %s then %s", name, got)
	}
	variants := map[string]func(*Service){
		"other MagicIP":   func(s *Service) { s.MagicIP = "other" },
		"other port name": func(s *Service) { s.PortName = "other" },
		"other address":   func(s *Service) { s.Address = netip.MustParseAddr("169.254.210.211") },
		"other port":      func(s *Service) { s.Port = 8127 },
		"other protocol":  func(s *Service) { s.Protocol = v1alpha1.ProtocolUDP },
		"IPv6 address":    func(s *Service) { s.Address = netip.MustParseAddr("fe80::1") },
	}
	seen := map[string]string{name: "base"}
	for vname, mod := range variants {
		s := base
		mod(&s)
		got := svcChain(s)
		if prev, dup := seen[got]; dup {
			t.Errorf("%s and %s share the chain %s", vname, prev, got)
		}
		seen[got] = vname
	}
}

func TestRestoreStaleChains(t *testing.T) {
	rs := Render(referenceState(), ExternalInterfaces("eth0"))
	existing := map[string][]string{
		"nat":    {"MAGIC-IP-PREROUTING", "MAGIC-IP-SVC-OLD", "KUBE-SVC-X", svcChain(referenceState().Services[0])},
		"filter": {"MAGIC-IP-INPUT", "MAGIC-IP-OLDINPUT", "KUBE-FIREWALL"},
	}
	out := restoreChecked(t, rs, existing, nil)
	if strings.Contains(string(out), "KUBE-") {
		t.Errorf("a foreign chain is touched:\n%s", out)
	}
	sec := sections(t, out)
	for table, stale := range map[string]string{"nat": "MAGIC-IP-SVC-OLD", "filter": "MAGIC-IP-OLDINPUT"} {
		lines := sec[table]
		decl, del := slices.Index(lines, ":"+stale+" - [0:0]"), slices.Index(lines, "-X "+stale)
		if decl < 0 || del < 0 || del < decl {
			t.Errorf("%s: want %s declared (emptied) then deleted, got:\n%s", table, stale, strings.Join(lines, "\n"))
		}
		// After -X nothing may refer to the stale chain.
		for _, l := range lines[del+1:] {
			if strings.Contains(l, stale) {
				t.Errorf("%s: %q after -X %s", table, l, stale)
			}
		}
		var deleted []string
		for _, l := range lines {
			if c, ok := strings.CutPrefix(l, "-X "); ok {
				deleted = append(deleted, c)
			}
		}
		if !slices.Equal(deleted, []string{stale}) {
			t.Errorf("%s: deleted %v, want only %s", table, deleted, stale)
		}
	}
	// Without existing chains, the output is the same as before, minus the stale ones.
	clean := restoreChecked(t, rs, nil, nil)
	var kept []string
	for _, l := range strings.Split(string(out), "\n") {
		if !strings.Contains(l, "OLD") {
			kept = append(kept, l)
		}
	}
	if got := strings.Join(kept, "\n"); got != string(clean) {
		t.Errorf("stale chains changed more than their own lines:\n%s", diffLines(got, string(clean)))
	}
}

// restoreChecked calls rs.Restore and checks the shape every restore input must have.
func restoreChecked(t *testing.T, rs Ruleset, existing map[string][]string, jumps []JumpFix) []byte {
	t.Helper()
	out := rs.Restore(existing, jumps)
	s := string(out)
	if !strings.HasPrefix(s, "*nat\n") || strings.Count(s, "COMMIT\n") != 2 || !strings.HasSuffix(s, "COMMIT\n") {
		t.Errorf("want *nat … COMMIT *filter … COMMIT, got:\n%s", s)
	}
	if n, f := strings.Index(s, "*nat\n"), strings.Index(s, "*filter\n"); n < 0 || f < 0 || f < n {
		t.Errorf("nat must come before filter:\n%s", s)
	}
	return out
}

func TestRestoreJumpFixes(t *testing.T) {
	rs := Render(referenceState(), nil)
	byChain := map[string]Jump{}
	for _, j := range Jumps {
		byChain[j.Chain] = j
	}
	out := restoreChecked(t, rs, nil, []JumpFix{
		{Jump: byChain["PREROUTING"], Delete: []string{quoteArgs(byChain["PREROUTING"].Spec())}},
		{Jump: byChain["OUTPUT"]},
		{Jump: byChain["INPUT"], Delete: []string{quoteArgs(byChain["INPUT"].Spec())}},
	})
	sec := sections(t, out)
	tests := map[string]struct {
		table, chain string
		wantDelete   bool
		wantInsert   bool
	}{
		"misplaced PREROUTING jump": {"nat", "PREROUTING", true, true},
		"missing OUTPUT jump":       {"nat", "OUTPUT", false, true},
		"POSTROUTING in place":      {"nat", "POSTROUTING", false, false},
		"misplaced INPUT jump":      {"filter", "INPUT", true, true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			j := byChain[tc.chain]
			spec := fmt.Sprintf(`-m comment --comment "%s" -j %s`, j.Comment, j.Target)
			del := slices.Index(sec[tc.table], "-D "+tc.chain+" "+spec)
			ins := slices.Index(sec[tc.table], "-I "+tc.chain+" 1 "+spec)
			if (del >= 0) != tc.wantDelete || (ins >= 0) != tc.wantInsert {
				t.Fatalf("%s: delete at %d (want %v), insert at %d (want %v):\n%s", tc.table, del, tc.wantDelete, ins, tc.wantInsert, strings.Join(sec[tc.table], "\n"))
			}
			if tc.wantDelete && del > ins {
				t.Errorf("-D must come before -I:\n%s", strings.Join(sec[tc.table], "\n"))
			}
			if decl := slices.Index(sec[tc.table], ":"+j.Target+" - [0:0]"); tc.wantInsert && (decl < 0 || decl > ins) {
				t.Errorf("the jump target %s must be declared before the jump is inserted:\n%s", j.Target, strings.Join(sec[tc.table], "\n"))
			}
			other := map[string]string{"nat": "filter", "filter": "nat"}[tc.table]
			for _, l := range sec[other] {
				if strings.Contains(l, j.Target) && !strings.HasPrefix(l, "-A ") && !strings.HasPrefix(l, ":") {
					t.Errorf("the fix for %s/%s leaked into %s: %s", tc.table, tc.chain, other, l)
				}
			}
		})
	}
}

func TestRestoreEmptyState(t *testing.T) {
	out := restoreChecked(t, Render(State{}, nil), nil, nil)
	want := `*nat
:MAGIC-IP-OUTPUT - [0:0]
:MAGIC-IP-POSTROUTING - [0:0]
:MAGIC-IP-PREROUTING - [0:0]
:MAGIC-IP-SERVICES - [0:0]
COMMIT
*filter
:MAGIC-IP-INPUT - [0:0]
COMMIT
`
	if string(out) != want {
		t.Errorf("empty State:\n%s", diffLines(string(out), want))
	}
}

// Render's output (IPv4) is fed to iptables-restore, the IPv4 tool: an IPv6 address in it would
// make the whole nat (or filter) transaction fail and stop every MagicIP of the node. The IPv6
// services go to ip6tables-restore (RenderFamily); Render must leave them out.
func TestRenderLeavesIPv6Out(t *testing.T) {
	st := referenceState()
	st.Services = append(st.Services, Service{
		MagicIP: "v6", PortName: "apm", Address: netip.MustParseAddr("fe80::a9fe:d2d2"), Port: 8126,
		Protocol: v1alpha1.ProtocolTCP, WhenNoProducer: v1alpha1.Reject,
		Endpoints: []Endpoint{{Pod: "datadog/agent-a", Addr: netip.MustParseAddrPort("[fd00:10:244:1::5]:8126")}},
	})
	before := slices.Clone(st.Services)
	got := string(Render(st, ExternalInterfaces("eth0")).Restore(nil, nil))
	if got != referenceRestore {
		t.Errorf("an IPv6 service changed the IPv4 ruleset:\n%s", diffLines(got, referenceRestore))
	}
	if !reflect.DeepEqual(st.Services, before) {
		t.Errorf("Render changed the caller's State")
	}
}

// dualReferenceState is referenceState with the same MagicIP on an IPv6 address too, served by the
// producers' IPv6 addresses.
func dualReferenceState() State {
	st := referenceState()
	a6 := netip.MustParseAddr("fd00::a9fe:d2d2")
	st.Addresses[testIface] = append(st.Addresses[testIface], a6)
	for _, s := range referenceState().Services {
		s.Address = a6
		for i, ep := range s.Endpoints {
			s.Endpoints[i].Addr = netip.AddrPortFrom(netip.MustParseAddr("fd00:10:244:1::"+fmt.Sprint(ep.Addr.Addr().As4()[3])), ep.Addr.Port())
		}
		st.Services = append(st.Services, s)
	}
	return st
}

// referenceRestore6 is the ip6tables-restore input of dualReferenceState: the same rules as
// referenceRestore on the IPv6 address and the producers' IPv6 addresses, /128 hosts, DNAT to
// [address]:port, ICMPv6 port unreachable for UDP.
const referenceRestore6 = `*nat
:MAGIC-IP-HAIRPIN - [0:0]
:MAGIC-IP-HOSTS - [0:0]
:MAGIC-IP-HP-DB6C5WAY22LN - [0:0]
:MAGIC-IP-OUTPUT - [0:0]
:MAGIC-IP-POSTROUTING - [0:0]
:MAGIC-IP-PREROUTING - [0:0]
:MAGIC-IP-SERVICES - [0:0]
:MAGIC-IP-SVC-VGLDFDMB65QZ - [0:0]
-A MAGIC-IP-HAIRPIN -d fd00:10:244:1::/124 -j MAGIC-IP-HP-DB6C5WAY22LN
-A MAGIC-IP-HOSTS -s fd00::a9fe:d2d2/128 ! -o lo -m conntrack --ctstate DNAT -m comment --comment "host client of fd00::a9fe:d2d2" -j MASQUERADE
-A MAGIC-IP-HP-DB6C5WAY22LN -s fd00:10:244:1::5/128 -d fd00:10:244:1::5/128 -m comment --comment "hairpin: datadog/agent-a reaching itself" -j MASQUERADE
-A MAGIC-IP-HP-DB6C5WAY22LN -s fd00:10:244:1::7/128 -d fd00:10:244:1::7/128 -m comment --comment "hairpin: datadog/agent-b reaching itself" -j MASQUERADE
-A MAGIC-IP-OUTPUT ! -d fd00::a9fe:d2d2/128 -m comment --comment "not a magic address" -j RETURN
-A MAGIC-IP-OUTPUT -j MAGIC-IP-SERVICES
-A MAGIC-IP-POSTROUTING ! -s fd00::a9fe:d2d2/128 -m conntrack ! --ctorigdst fd00::a9fe:d2d2 -m comment --comment "not from or to a magic address" -j RETURN
-A MAGIC-IP-POSTROUTING -s fd00::a9fe:d2d2/128 -m comment --comment "host clients" -j MAGIC-IP-HOSTS
-A MAGIC-IP-POSTROUTING -m conntrack --ctstate DNAT -m comment --comment "hairpin: a producer reaching itself" -j MAGIC-IP-HAIRPIN
-A MAGIC-IP-PREROUTING -i eth0 -m comment --comment "external interface: not node-local" -j RETURN
-A MAGIC-IP-PREROUTING ! -d fd00::a9fe:d2d2/128 -m comment --comment "not a magic address" -j RETURN
-A MAGIC-IP-PREROUTING -j MAGIC-IP-SERVICES
-A MAGIC-IP-SERVICES -d fd00::a9fe:d2d2/128 -p tcp -m tcp --dport 8126 -m comment --comment "datadog:apm" -j MAGIC-IP-SVC-VGLDFDMB65QZ
-A MAGIC-IP-SVC-VGLDFDMB65QZ -p tcp -m comment --comment "datadog:apm -> datadog/agent-a" -m statistic --mode random --probability 0.50000000000 -j DNAT --to-destination [fd00:10:244:1::5]:8126
-A MAGIC-IP-SVC-VGLDFDMB65QZ -p tcp -m comment --comment "datadog:apm -> datadog/agent-b" -j DNAT --to-destination [fd00:10:244:1::7]:8126
COMMIT
*filter
:MAGIC-IP-INPUT - [0:0]
-A MAGIC-IP-INPUT ! -d fd00::a9fe:d2d2/128 -m comment --comment "not a magic address" -j RETURN
-A MAGIC-IP-INPUT -d fd00::a9fe:d2d2/128 -p tcp -m tcp --dport 8126 -m conntrack --ctstate NEW -m comment --comment "datadog:apm: not redirected" -j REJECT --reject-with tcp-reset
-A MAGIC-IP-INPUT -d fd00::a9fe:d2d2/128 -p udp -m udp --dport 8125 -m conntrack --ctstate NEW -m comment --comment "datadog:dogstatsd: not redirected" -j REJECT --reject-with icmp6-port-unreachable
-A MAGIC-IP-INPUT -d fd00::a9fe:d2d2/128 -p tcp -m conntrack --ctstate NEW -m comment --comment "fd00::a9fe:d2d2: undeclared port" -j REJECT --reject-with tcp-reset
-A MAGIC-IP-INPUT -d fd00::a9fe:d2d2/128 -p udp -m conntrack --ctstate NEW -m comment --comment "fd00::a9fe:d2d2: undeclared port" -j REJECT --reject-with icmp6-port-unreachable
COMMIT
`

// RenderFamily renders one family of a dual-stack State: the IPv4 rules are exactly those of the
// IPv4 MagicIP alone, the IPv6 ones the same rules in IPv6; the pod CIDR of the other family never
// appears in a family's node-local matches.
func TestRenderFamily(t *testing.T) {
	cidrs := &LocalDetector{Mode: NodeCIDR, Local: []LocalMatch{{Source: netip.MustParsePrefix("10.244.1.0/24")}, {Source: netip.MustParsePrefix("fd00:10:244:1::/64")}}}
	for name, tc := range map[string]struct {
		fam      Family
		local    *LocalDetector
		want     string   // the whole restore input, if set
		has, not []string // lines it must and must not contain
	}{
		"IPv4 of a dual-stack State": {fam: IPv4, local: ExternalInterfaces("eth0"), want: referenceRestore},
		"IPv6 of a dual-stack State": {fam: IPv6, local: ExternalInterfaces("eth0"), want: referenceRestore6},
		"IPv4, NodeCIDR": {fam: IPv4, local: cidrs,
			has: []string{`-A MAGIC-IP-PREROUTING -s 10.244.1.0/24 -m comment --comment "node-local (NodeCIDR)" -j MAGIC-IP-SERVICES`},
			not: []string{"fd00"}},
		"IPv6, NodeCIDR": {fam: IPv6, local: cidrs,
			has: []string{`-A MAGIC-IP-PREROUTING -s fd00:10:244:1::/64 -m comment --comment "node-local (NodeCIDR)" -j MAGIC-IP-SERVICES`},
			not: []string{"10.244.1.0/24", "169.254"}},
	} {
		t.Run(name, func(t *testing.T) {
			got := string(RenderFamily(dualReferenceState(), tc.local, tc.fam).Restore(nil, nil))
			if tc.want != "" && got != tc.want {
				t.Errorf("RenderFamily(%s):\n%s", tc.fam, diffLines(got, tc.want))
			}
			for _, l := range tc.has {
				if !strings.Contains(got, l+"\n") {
					t.Errorf("RenderFamily(%s) lacks %q:\n%s", tc.fam, l, got)
				}
			}
			for _, l := range tc.not {
				if strings.Contains(got, l) {
					t.Errorf("RenderFamily(%s) holds %q:\n%s", tc.fam, l, got)
				}
			}
		})
	}
}

// TestNotMagic: the line that lets the node's other traffic leave our input, prerouting and
// output chains at once names the smallest prefix holding every magic address of the family; no
// address, or addresses so far apart that the prefix would be /0, give no line.
func TestNotMagic(t *testing.T) {
	for name, tc := range map[string]struct {
		addrs []string
		want  string // the prefix, "" for no line
		orig  string // the prefix as --ctorigdst is written (a single address without its mask)
	}{
		"none":                      {nil, "", ""},
		"one address":               {[]string{"169.254.210.210"}, "169.254.210.210/32", "169.254.210.210"},
		"two link-local addresses":  {[]string{"169.254.2.2", "169.254.1.1"}, "169.254.0.0/22", "169.254.0.0/22"},
		"the link-local range ends": {[]string{"169.254.0.1", "169.254.255.254"}, "169.254.0.0/16", "169.254.0.0/16"},
		"one IPv6 address":          {[]string{"fd00::a9fe:d2d2"}, "fd00::a9fe:d2d2/128", "fd00::a9fe:d2d2"},
		"IPv6":                      {[]string{"fd00::a9fe:d2d2", "fd00::a9fe:d2d3"}, "fd00::a9fe:d2d2/127", "fd00::a9fe:d2d2/127"},
		"apart: no line":            {[]string{"10.0.0.1", "169.254.1.1"}, "", ""},
		"apart by the first bit":    {[]string{"10.0.0.1", "100.64.0.1"}, "0.0.0.0/1", "0.0.0.0/1"},
	} {
		t.Run(name, func(t *testing.T) {
			var addrs []netip.Addr
			for _, a := range tc.addrs {
				addrs = append(addrs, netip.MustParseAddr(a))
			}
			var want, wantPost []string
			if tc.want != "" {
				want = []string{fmt.Sprintf(`! -d %s -m comment --comment "not a magic address" -j RETURN`, tc.want)}
				wantPost = []string{fmt.Sprintf(`! -s %s -m conntrack ! --ctorigdst %s -m comment --comment "not from or to a magic address" -j RETURN`, tc.want, tc.orig)}
			}
			if got, post := notMagic(addrs); !slices.Equal(got, want) || !slices.Equal(post, wantPost) {
				t.Errorf("notMagic(%v) = %q, %q; want %q, %q", tc.addrs, got, post, want, wantPost)
			}
		})
	}
}

// TestSplitDispatch: MAGIC-IP-SERVICES stays one flat chain, in the services' order, while it
// holds at most blockLeaf lines; more are split into a tree of address prefixes in which every
// line is found exactly once, on the way its address leads (each "-d prefix" rule jumps only for
// addresses inside it), after walking a few rules per level: a new connection to any of 1,000
// addresses walks about 30 rules, not 1,000.
func TestSplitDispatch(t *testing.T) {
	addrN := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{169, 254, byte(200 + i/250), byte(1 + i%250)}) }
	lines := func(n, ports int, addr func(int) netip.Addr) []dispatchLine {
		var out []dispatchLine
		for i := range n {
			for p := range ports {
				a := addr(i)
				out = append(out, dispatchLine{a, fmt.Sprintf("-d %s/32 --dport %d", a, 80+p)})
			}
		}
		return out
	}
	for name, tc := range map[string]struct {
		lines    []dispatchLine
		flat     bool // one chain, the lines in their order
		maxWalk  int  // the most rules a packet to any line's address walks to reach its line
		maxChain int
	}{
		"none":                        {lines: nil, flat: true},
		"one MagicIP, 3 ports":        {lines: lines(1, 3, addrN), flat: true, maxWalk: 3},
		"16 lines":                    {lines: lines(8, 2, addrN), flat: true, maxWalk: 16},
		"17 lines split":              {lines: lines(17, 1, addrN), maxWalk: 2*2 + blockLeaf},
		"1,000 MagicIPs":              {lines: lines(1000, 1, addrN), maxWalk: 40},
		"1,000 MagicIPs × 3 ports":    {lines: lines(1000, 3, addrN), maxWalk: 50},
		"one address, 20 ports":       {lines: lines(1, 20, addrN), maxWalk: 20},
		"spread over the whole space": {lines: lines(64, 1, func(i int) netip.Addr { return netip.AddrFrom4([4]byte{byte(i * 4), 1, 2, 3}) }), maxWalk: 30},
		"IPv6": {lines: lines(100, 1, func(i int) netip.Addr {
			return netip.AddrFrom16([16]byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xa9, 0xfe, byte(i / 256), byte(i)})
		}), maxWalk: 30},
	} {
		t.Run(name, func(t *testing.T) {
			nat := map[string][]string{}
			splitDispatch(nat, chainServices, tc.lines)
			if tc.flat {
				var want []string
				for _, l := range tc.lines {
					want = append(want, l.line)
				}
				if len(nat) != 1 || !slices.Equal(nat[chainServices], want) {
					t.Fatalf("want one flat chain %q, got %q", want, nat)
				}
			}
			for c, rules := range nat {
				if !IsOurs(c) || len(c) > 28 {
					t.Errorf("chain name %q: want ours and at most 28 characters", c)
				}
				if len(rules) > blockLeaf && slices.ContainsFunc(rules, func(r string) bool { return strings.Fields(r)[1] != strings.Fields(rules[0])[1] }) {
					t.Errorf("%s holds %d rules of several addresses, want at most %d", c, len(rules), blockLeaf)
				}
			}
			// walk follows the rules of chain as the kernel would for a packet to a, returning the
			// lines it reaches (a jump to a block chain returns when nothing there matched) and
			// counting every rule evaluated.
			var walk func(chain string, a netip.Addr, n *int) []string
			walk = func(chain string, a netip.Addr, n *int) []string {
				var found []string
				for _, r := range nat[chain] {
					*n++
					if f := strings.Fields(r); len(f) == 4 && f[2] == "-j" && strings.HasPrefix(f[3], blockPrefix) {
						if netip.MustParsePrefix(f[1]).Contains(a) {
							found = append(found, walk(f[3], a, n)...)
						}
						continue
					}
					if strings.HasPrefix(r, "-d "+a.String()+"/") {
						found = append(found, r)
					}
				}
				return found
			}
			for _, l := range tc.lines {
				n := 0
				found := walk(chainServices, l.addr, &n)
				if !slices.Contains(found, l.line) || len(found) != len(slices.DeleteFunc(slices.Clone(tc.lines), func(x dispatchLine) bool { return x.addr != l.addr })) {
					t.Fatalf("a packet to %s finds %q, want every line of its address once (%q among them)", l.addr, found, l.line)
				}
				if n > tc.maxWalk {
					t.Errorf("a packet to %s walks %d rules, want at most %d", l.addr, n, tc.maxWalk)
				}
			}
		})
	}
}
