package nftables

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

var (
	magic  = netip.MustParseAddr("169.254.210.210")
	magic6 = netip.MustParseAddr("fd00::a9fe:d2d2")
	prodA  = netip.MustParseAddrPort("10.244.0.5:8126")
	prodB  = netip.MustParseAddrPort("10.244.0.7:8126")
)

func apm(eps ...Endpoint) Service {
	return Service{Key: "datadog:apm", Addr: magic, Port: 8126, Protocol: "tcp", Verdict: Reject, Endpoints: eps}
}

// The rules every ruleset holds whatever it serves: each base chain's lookup of the magic
// addresses, the services chain's dispatch, the hairpin masquerade, the jumps to the services
// chain and the host clients' masquerade.
const (
	notMagicTo    = `ip daddr != @addresses return comment "not a magic address"`
	notMagicTo6   = `ip6 daddr != @addresses6 return comment "not a magic address (IPv6)"`
	notMagicFrom  = `ip saddr != @addresses return comment "not a magic address"`
	notMagicFrom6 = `ip6 saddr != @addresses6 return comment "not a magic address (IPv6)"`
	dispatchRule  = `ip daddr . meta l4proto . th dport vmap @dispatch comment "services"`
	dispatchRule6 = `ip6 daddr . meta l4proto . th dport vmap @dispatch6 comment "services (IPv6)"`
	hairpinRule   = `ct status dnat ip saddr . ip daddr @hairpin masquerade comment "hairpin: a producer reaching itself"`
	hairpinRule6  = `ct status dnat ip6 saddr . ip6 daddr @hairpin6 masquerade comment "hairpin: a producer reaching itself (IPv6)"`
	// After the guards: one rule whatever the addresses (the guard let only magic ones through).
	toServicesRule = "jump services"
	// Where every packet not from an external interface is node-local: a service of one
	// producer DNATed at once from its slot 0, before the guards.
	oneProducer    = `dnat ip to ip daddr . meta l4proto . th dport . 0 map @endpoints comment "one producer"`
	oneProducer6   = `dnat ip6 to ip6 daddr . meta l4proto . th dport . 0 map @endpoints6 comment "one producer (IPv6)"`
	hostClientRule = `oifname != "lo" ct status dnat masquerade comment "host client of a magic address"`
)

// TestRender: State → our table, rule by rule, in nft syntax (which Rule.Text renders from the
// same builder calls as the expressions).
func TestRender(t *testing.T) {
	statsd := Service{Key: "datadog:statsd", Addr: magic, Port: 8125, Protocol: "udp", Verdict: Drop}
	two := apm(Endpoint{Pod: "datadog/a", Addr: prodA}, Endpoint{Pod: "datadog/b", Addr: prodB, Note: "terminating"})
	for name, tc := range map[string]struct {
		in   Input
		want []string // chain name, then its rules
	}{
		"two producers, one port without, off-node by uplink": {
			in: Input{Addresses: []netip.Addr{magic}, Services: []Service{two, statsd}, Local: Local{All: true, External: []string{"eth0"}}},
			want: []string{
				"set addresses { 169.254.210.210 }",
				"set addresses6 {  }",
				"set hairpin { 10.244.0.5 . 10.244.0.5, 10.244.0.7 . 10.244.0.7 }",
				"set hairpin6 {  }",
				"chain prerouting { type nat hook prerouting priority -110 }",
				`iifname "eth0" return comment "external interface: not node-local"`,
				oneProducer,
				oneProducer6,
				notMagicTo,
				notMagicTo6,
				toServicesRule,
				"chain output { type nat hook output priority -110 }",
				notMagicTo,
				notMagicTo6,
				toServicesRule,
				"chain postrouting { type nat hook postrouting priority 90 }",
				hairpinRule,
				hairpinRule6,
				notMagicFrom,
				notMagicFrom6,
				hostClientRule,
				"chain input { type filter hook input priority -10 }",
				notMagicTo,
				notMagicTo6,
				`ip daddr 169.254.210.210 meta l4proto tcp th dport 8126 ct state new counter reject with tcp reset comment "datadog:apm: not redirected"`,
				`ip daddr 169.254.210.210 meta l4proto udp th dport 8125 ct state new counter drop comment "datadog:statsd: not redirected"`,
				`ip daddr 169.254.210.210 meta l4proto tcp ct state new counter reject with tcp reset comment "169.254.210.210: undeclared port"`,
				`ip daddr 169.254.210.210 meta l4proto udp ct state new counter reject with icmp port-unreachable comment "169.254.210.210: undeclared port"`,
				"chain services",
				dispatchRule,
				dispatchRule6,
				"chain spread-ip-1",
				`dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 1 map @endpoints comment "spread over 1 producer"`,
				"chain spread-ip-2",
				`dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2 offset 1 map @endpoints comment "spread over 2 producers (slots 1 to 2)"`,
				`element @dispatch { 169.254.210.210 . tcp . 8126 : goto spread-ip-2 } comment "datadog:apm"`,
				`element @endpoints { 169.254.210.210 . tcp . 8126 . 1 : 10.244.0.5 . 8126 } comment "datadog:apm -> datadog/a"`,
				`element @endpoints { 169.254.210.210 . tcp . 8126 . 2 : 10.244.0.7 . 8126 } comment "datadog:apm -> datadog/b (terminating)"`,
			},
		},
		"node-local by source and interface prefix, per family; remote producer gets no hairpin": {
			in: Input{
				Addresses: []netip.Addr{magic, netip.MustParseAddr("fd00::1")},
				Services: []Service{apm(Endpoint{Pod: "datadog/r", Addr: prodB, Remote: true, Note: "fallback to node n2"}),
					{Key: "v6:apm", Addr: netip.MustParseAddr("fd00::1"), Port: 1, Protocol: "tcp"}},
				Local: Local{Sources: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/24"), netip.MustParsePrefix("fd00::/64")}, Interfaces: []string{"veth+"}},
			},
			want: []string{
				"set addresses { 169.254.210.210 }",
				"set addresses6 { fd00::1 }",
				"set hairpin {  }",
				"set hairpin6 {  }",
				"chain prerouting { type nat hook prerouting priority -110 }",
				notMagicTo,
				notMagicTo6,
				`ip saddr 10.244.0.0/24 jump services comment "node-local source"`,
				`ip6 saddr fd00::/64 jump services comment "node-local source"`,
				`iifname "veth*" jump services comment "node-local interface"`,
				"chain output { type nat hook output priority -110 }",
				notMagicTo,
				notMagicTo6,
				toServicesRule,
				"chain postrouting { type nat hook postrouting priority 90 }",
				hairpinRule,
				hairpinRule6,
				notMagicFrom,
				notMagicFrom6,
				hostClientRule,
				"chain input { type filter hook input priority -10 }",
				notMagicTo,
				notMagicTo6,
				`ip daddr 169.254.210.210 meta l4proto tcp th dport 8126 ct state new counter reject with tcp reset comment "datadog:apm: not redirected"`,
				`ip6 daddr fd00::1 meta l4proto tcp th dport 1 ct state new counter reject with tcp reset comment "v6:apm: not redirected"`,
				`ip daddr 169.254.210.210 meta l4proto tcp ct state new counter reject with tcp reset comment "169.254.210.210: undeclared port"`,
				`ip daddr 169.254.210.210 meta l4proto udp ct state new counter reject with icmp port-unreachable comment "169.254.210.210: undeclared port"`,
				`ip6 daddr fd00::1 meta l4proto tcp ct state new counter reject with tcp reset comment "fd00::1: undeclared port"`,
				`ip6 daddr fd00::1 meta l4proto udp ct state new counter reject with icmpv6 port-unreachable comment "fd00::1: undeclared port"`,
				"chain services",
				dispatchRule,
				dispatchRule6,
				"chain spread-ip-1",
				`dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 1 map @endpoints comment "spread over 1 producer"`,
				`element @dispatch { 169.254.210.210 . tcp . 8126 : goto spread-ip-1 } comment "datadog:apm"`,
				`element @endpoints { 169.254.210.210 . tcp . 8126 . 0 : 10.244.0.7 . 8126 } comment "datadog:apm -> datadog/r (fallback to node n2)"`,
			},
		},
		"dual-stack: each family its own producers, hairpin set and ICMP": {
			in: Input{
				Addresses: []netip.Addr{magic, magic6},
				Services: []Service{
					{Key: "dns:udp", Addr: magic, Port: 53, Protocol: "udp", Verdict: Reject, Endpoints: []Endpoint{{Pod: "dns/a", Addr: netip.MustParseAddrPort("10.244.0.5:5353")}}},
					{Key: "dns:udp", Addr: magic6, Port: 53, Protocol: "udp", Verdict: Reject, Endpoints: []Endpoint{{Pod: "dns/a", Addr: netip.MustParseAddrPort("[fd00:10:244::5]:5353")}}},
					{Key: "dns:none", Addr: magic6, Port: 54, Protocol: "udp", Verdict: Reject},
				},
				Local: Local{All: true},
			},
			want: []string{
				"set addresses { 169.254.210.210 }",
				"set addresses6 { fd00::a9fe:d2d2 }",
				"set hairpin { 10.244.0.5 . 10.244.0.5 }",
				"set hairpin6 { fd00:10:244::5 . fd00:10:244::5 }",
				"chain prerouting { type nat hook prerouting priority -110 }",
				oneProducer,
				oneProducer6,
				notMagicTo,
				notMagicTo6,
				toServicesRule,
				"chain output { type nat hook output priority -110 }",
				notMagicTo,
				notMagicTo6,
				toServicesRule,
				"chain postrouting { type nat hook postrouting priority 90 }",
				hairpinRule,
				hairpinRule6,
				notMagicFrom,
				notMagicFrom6,
				hostClientRule,
				"chain input { type filter hook input priority -10 }",
				notMagicTo,
				notMagicTo6,
				`ip daddr 169.254.210.210 meta l4proto udp th dport 53 ct state new counter reject with icmp port-unreachable comment "dns:udp: not redirected"`,
				`ip6 daddr fd00::a9fe:d2d2 meta l4proto udp th dport 53 ct state new counter reject with icmpv6 port-unreachable comment "dns:udp: not redirected"`,
				`ip6 daddr fd00::a9fe:d2d2 meta l4proto udp th dport 54 ct state new counter reject with icmpv6 port-unreachable comment "dns:none: not redirected"`,
				`ip daddr 169.254.210.210 meta l4proto tcp ct state new counter reject with tcp reset comment "169.254.210.210: undeclared port"`,
				`ip daddr 169.254.210.210 meta l4proto udp ct state new counter reject with icmp port-unreachable comment "169.254.210.210: undeclared port"`,
				`ip6 daddr fd00::a9fe:d2d2 meta l4proto tcp ct state new counter reject with tcp reset comment "fd00::a9fe:d2d2: undeclared port"`,
				`ip6 daddr fd00::a9fe:d2d2 meta l4proto udp ct state new counter reject with icmpv6 port-unreachable comment "fd00::a9fe:d2d2: undeclared port"`,
				"chain services",
				dispatchRule,
				dispatchRule6,
				"chain spread-ip-1",
				`dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 1 map @endpoints comment "spread over 1 producer"`,
				"chain spread-ip6-1",
				`dnat ip6 to ip6 daddr . meta l4proto . th dport . numgen random mod 1 map @endpoints6 comment "spread over 1 producer"`,
				`element @dispatch { 169.254.210.210 . udp . 53 : goto spread-ip-1 } comment "dns:udp"`,
				`element @endpoints { 169.254.210.210 . udp . 53 . 0 : 10.244.0.5 . 5353 } comment "dns:udp -> dns/a"`,
				`element @dispatch6 { fd00::a9fe:d2d2 . udp . 53 : goto spread-ip6-1 } comment "dns:udp"`,
				`element @endpoints6 { fd00::a9fe:d2d2 . udp . 53 . 0 : fd00:10:244::5 . 5353 } comment "dns:udp -> dns/a"`,
			},
		},
		"two served ports: both reach the services chain, each its own dispatch element": {
			in: Input{Addresses: []netip.Addr{magic}, Services: []Service{apm(Endpoint{Pod: "datadog/a", Addr: prodA}),
				{Key: "datadog:statsd", Addr: magic, Port: 8125, Protocol: "udp", Verdict: Reject, Endpoints: []Endpoint{{Pod: "datadog/a", Addr: netip.MustParseAddrPort("10.244.0.5:8125")}}}},
				Local: Local{All: true}},
			want: []string{
				"set addresses { 169.254.210.210 }",
				"set addresses6 {  }",
				"set hairpin { 10.244.0.5 . 10.244.0.5 }",
				"set hairpin6 {  }",
				"chain prerouting { type nat hook prerouting priority -110 }",
				oneProducer,
				oneProducer6,
				notMagicTo,
				notMagicTo6,
				toServicesRule,
				"chain output { type nat hook output priority -110 }",
				notMagicTo,
				notMagicTo6,
				toServicesRule,
				"chain postrouting { type nat hook postrouting priority 90 }",
				hairpinRule,
				hairpinRule6,
				notMagicFrom,
				notMagicFrom6,
				hostClientRule,
				"chain input { type filter hook input priority -10 }",
				notMagicTo,
				notMagicTo6,
				`ip daddr 169.254.210.210 meta l4proto tcp th dport 8126 ct state new counter reject with tcp reset comment "datadog:apm: not redirected"`,
				`ip daddr 169.254.210.210 meta l4proto udp th dport 8125 ct state new counter reject with icmp port-unreachable comment "datadog:statsd: not redirected"`,
				`ip daddr 169.254.210.210 meta l4proto tcp ct state new counter reject with tcp reset comment "169.254.210.210: undeclared port"`,
				`ip daddr 169.254.210.210 meta l4proto udp ct state new counter reject with icmp port-unreachable comment "169.254.210.210: undeclared port"`,
				"chain services",
				dispatchRule,
				dispatchRule6,
				"chain spread-ip-1",
				`dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 1 map @endpoints comment "spread over 1 producer"`,
				`element @dispatch { 169.254.210.210 . tcp . 8126 : goto spread-ip-1 } comment "datadog:apm"`,
				`element @endpoints { 169.254.210.210 . tcp . 8126 . 0 : 10.244.0.5 . 8126 } comment "datadog:apm -> datadog/a"`,
				`element @dispatch { 169.254.210.210 . udp . 8125 : goto spread-ip-1 } comment "datadog:statsd"`,
				`element @endpoints { 169.254.210.210 . udp . 8125 . 0 : 10.244.0.5 . 8125 } comment "datadog:statsd -> datadog/a"`,
			},
		},
		"nothing served: the base chains, empty, and the services chain": {
			in: Input{Local: Local{All: true}},
			want: []string{
				"set addresses {  }",
				"set addresses6 {  }",
				"set hairpin {  }",
				"set hairpin6 {  }",
				"chain prerouting { type nat hook prerouting priority -110 }",
				oneProducer,
				oneProducer6,
				notMagicTo,
				notMagicTo6,
				toServicesRule,
				"chain output { type nat hook output priority -110 }",
				notMagicTo,
				notMagicTo6,
				toServicesRule,
				"chain postrouting { type nat hook postrouting priority 90 }",
				hairpinRule,
				hairpinRule6,
				notMagicFrom,
				notMagicFrom6,
				hostClientRule,
				"chain input { type filter hook input priority -10 }",
				notMagicTo,
				notMagicTo6,
				"chain services",
				dispatchRule,
				dispatchRule6,
			},
		},
	} {
		t.Run(name, func(t *testing.T) {
			got := strings.Split(strings.TrimSuffix(strings.ReplaceAll(Render(tc.in).Text(), "\t", ""), "\n"), "\n")
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("Render:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

// TestRenderSpread: n producers give a dispatch element going to the spread chain for n, whose one
// rule picks slot 1 + numgen random mod n, so each gets 1/n of the new connections, and one map
// element per slot, in order (slot 0 is a single producer's).
func TestRenderSpread(t *testing.T) {
	var eps []Endpoint
	for i := range 4 {
		eps = append(eps, Endpoint{Pod: "p", Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), 80)})
	}
	rs := Render(Input{Addresses: []netip.Addr{magic}, Services: []Service{apm(eps...)}, Local: Local{All: true}})
	if len(rs.Dispatch) != 1 {
		t.Fatalf("%d dispatch entries, want 1", len(rs.Dispatch))
	}
	c := rs.Dispatch[0]
	if want := "169.254.210.210 . tcp . 8126 : goto spread-ip-4"; c.Text() != want {
		t.Errorf("dispatch element %q, want %q", c.Text(), want)
	}
	for n := 1; n <= 4; n++ {
		s := rs.Chain(fmt.Sprintf("spread-ip-%d", n))
		offset := " offset 1" // slots 1 to n; 0 is a single producer's (see oneProducer)
		if n == 1 {
			offset = ""
		}
		if want := fmt.Sprintf("dnat ip to ip daddr . meta l4proto . th dport . numgen random mod %d%s map @endpoints", n, offset); s == nil || len(s.Rules) != 1 || s.Rules[0].Text != want {
			t.Errorf("spread chain for %d producers %+v, want one rule %q", n, s, want)
		}
	}
	for i, e := range c.Elements {
		if want := fmt.Sprintf("169.254.210.210 . tcp . 8126 . %d : 10.0.0.%d . 80", i+1, i+1); e.Text() != want {
			t.Errorf("element %d: %q, want %q", i, e.Text(), want)
		}
	}
	if len(c.Elements) != 4 {
		t.Errorf("%d elements, want 4", len(c.Elements))
	}
}

// TestNatChainsDoNotGrow: the prerouting, output and postrouting chains hold the same rules at 1
// MagicIP as at 1,000, for every way of telling node-local traffic, so a new connection's way to
// the dispatch lookup does not walk more rules the more the node serves; only the sets and maps
// (and the input chain's refusals, walked by refused traffic only) grow.
func TestNatChainsDoNotGrow(t *testing.T) {
	for name, local := range map[string]Local{
		"external interface": {All: true, External: []string{"eth0"}},
		"sources":            {Sources: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/24"), netip.MustParsePrefix("fd00::/64")}},
		"interfaces":         {Interfaces: []string{"veth+", "cali+"}},
	} {
		t.Run(name, func(t *testing.T) {
			one, many := fleetInput(1, 0), fleetInput(1000, 0)
			one.Local, many.Local = local, local
			a, b := Render(one), Render(many)
			for _, c := range []string{chainPrerouting, chainOutput, chainPostrouting} {
				if ta, tb := rulesText(a.Chain(c).Rules), rulesText(b.Chain(c).Rules); ta != tb {
					t.Errorf("chain %s at 1 MagicIP:\n%s\nat 1,000:\n%s", c, ta, tb)
				}
			}
			if len(b.Addresses) != 1000 || len(b.Dispatch) != 1000 {
				t.Errorf("at 1,000: %d addresses, %d dispatch elements", len(b.Addresses), len(b.Dispatch))
			}
		})
	}
}

// rulesText is rules in nft syntax, one per line, with their comments.
func rulesText(rules []Rule) string {
	var b strings.Builder
	for _, r := range rules {
		fmt.Fprintf(&b, "%s comment %q\n", r.Text, r.Comment)
	}
	return b.String()
}
