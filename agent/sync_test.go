package agent

import (
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// udpService is a UDP service of MagicIP name on addr:port, with endpoints of the given pods.
func udpService(name, addr string, port int32, pods ...string) Service {
	s := Service{MagicIP: name, PortName: "p", Address: netip.MustParseAddr(addr), Port: port, Protocol: v1alpha1.ProtocolUDP, Interface: testIface}
	for i, p := range pods {
		s.Endpoints = append(s.Endpoints, Endpoint{Pod: p, Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 244, 1, byte(10 + i)}), uint16(port))})
	}
	return s
}

func terminatingEndpoints(s Service) Service {
	s.Endpoints = slices.Clone(s.Endpoints)
	for i := range s.Endpoints {
		s.Endpoints[i].Terminating = true
	}
	return s
}

// TestUDPChanges: every UDP service that disappears or changes is flushed, not only those that
// still exist — unless its producers were only added to (its flows still reach theirs).
func TestUDPChanges(t *testing.T) {
	stats := udpService("dd", testAddr, 8125, "dd/a")
	tcp := stats
	tcp.Protocol = v1alpha1.ProtocolTCP
	tests := map[string]struct {
		prev *State
		next State
		want []string // addr:port of the services to flush
	}{
		"first sync: every UDP service": {
			prev: nil, next: State{Services: []Service{stats, tcp}}, want: []string{"169.254.210.210:8125"},
		},
		"nothing changed": {
			prev: &State{Services: []Service{stats}}, next: State{Services: []Service{stats}}, want: nil,
		},
		"producers changed": {
			prev: &State{Services: []Service{stats}}, next: State{Services: []Service{udpService("dd", testAddr, 8125, "dd/b", "dd/c")}},
			want: []string{"169.254.210.210:8125"},
		},
		"a producer added beside the one in use: its flows stay": {
			prev: &State{Services: []Service{stats}}, next: State{Services: []Service{udpService("dd", testAddr, 8125, "dd/a", "dd/b")}}, want: nil,
		},
		"one of two producers gone": {
			prev: &State{Services: []Service{udpService("dd", testAddr, 8125, "dd/a", "dd/b")}}, next: State{Services: []Service{stats}},
			want: []string{"169.254.210.210:8125"},
		},
		"the first producer of a service that had none (its flows were refused, untranslated)": {
			prev: &State{Services: []Service{udpService("dd", testAddr, 8125)}}, next: State{Services: []Service{stats}},
			want: []string{"169.254.210.210:8125"},
		},
		"the last producer gone": {
			prev: &State{Services: []Service{stats}}, next: State{Services: []Service{udpService("dd", testAddr, 8125)}},
			want: []string{"169.254.210.210:8125"},
		},
		"service gone (MagicIP deleted, conflict lost, invalid, interface failed)": {
			prev: &State{Services: []Service{stats}}, next: State{}, want: []string{"169.254.210.210:8125"},
		},
		"port changed: old and new port": {
			prev: &State{Services: []Service{stats}}, next: State{Services: []Service{udpService("dd", testAddr, 8135, "dd/a")}},
			want: []string{"169.254.210.210:8135", "169.254.210.210:8125"},
		},
		"address changed": {
			prev: &State{Services: []Service{stats}}, next: State{Services: []Service{udpService("dd", "169.254.20.20", 8125, "dd/a")}},
			want: []string{"169.254.20.20:8125", "169.254.210.210:8125"},
		},
		"protocol changed to TCP": {
			prev: &State{Services: []Service{stats}}, next: State{Services: []Service{tcp}}, want: []string{"169.254.210.210:8125"},
		},
		"the producer in use starts terminating: its flows stay": {
			prev: &State{Services: []Service{stats}}, next: State{Services: []Service{terminatingEndpoints(stats)}}, want: nil,
		},
		"a Ready replacement takes over from a terminating producer": {
			prev: &State{Services: []Service{terminatingEndpoints(stats)}}, next: State{Services: []Service{udpService("dd", testAddr, 8125, "dd/b")}},
			want: []string{"169.254.210.210:8125"},
		},
		"TCP services are never flushed": {
			prev: &State{Services: []Service{tcp}}, next: State{}, want: nil,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var got []string
			for _, s := range udpChanges(tc.prev, tc.next) {
				got = append(got, udpKey(s).String())
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("flushed %q, want %q", got, tc.want)
			}
		})
	}
}

// TestWithoutInterfaces: a failed interface takes down only the services placed on it; the same
// address on a working interface keeps its services, hence its rules and verdicts.
func TestWithoutInterfaces(t *testing.T) {
	addr := netip.MustParseAddr(testAddr)
	onGood := udpService("on-good", testAddr, 8125)
	onBad := udpService("on-bad", testAddr, 8126)
	onBad.Interface = "bad0"
	st := State{
		Addresses: map[string][]netip.Addr{testIface: {addr}, "bad0": {addr}},
		Services:  []Service{onGood, onBad},
	}
	got, unserved := withoutInterfaces(st, map[string]error{"bad0": errors.New("not found")})
	if want := []Service{onGood}; !reflect.DeepEqual(got.Services, want) {
		t.Errorf("services %+v, want only %+v", got.Services, want)
	}
	if want := map[string][]netip.Addr{testIface: {addr}}; !reflect.DeepEqual(got.Addresses, want) {
		t.Errorf("addresses %v, want %v", got.Addresses, want)
	}
	if want := map[string]string{"on-bad": "bad0"}; !reflect.DeepEqual(unserved, want) {
		t.Errorf("unserved %v, want %v", unserved, want)
	}
	if len(st.Addresses) != 2 || len(st.Services) != 2 {
		t.Errorf("the caller's State was changed: %+v", st)
	}
	input := strings.Join(Render(got, nil).Chains["filter"][chainInput], "\n")
	for _, want := range []string{"on-good:p: not redirected", testAddr + ": undeclared port"} {
		if !strings.Contains(input, want) {
			t.Errorf("INPUT lacks %q:\n%s", want, input)
		}
	}
}

// TestRenderAddressWithoutServices: an address on an interface always gets its verdicts, even when
// no service of it is left (no address without a Reject/Drop behind it).
func TestRenderAddressWithoutServices(t *testing.T) {
	st := State{Addresses: map[string][]netip.Addr{testIface: {netip.MustParseAddr(testAddr)}}}
	rs := Render(st, nil)
	input := rs.Chains["filter"][chainInput]
	want := []string{
		`! -d 169.254.210.210/32 -m comment --comment "not a magic address" -j RETURN`,
		`-d 169.254.210.210/32 -p tcp -m conntrack --ctstate NEW -m comment --comment "169.254.210.210: undeclared port" -j REJECT --reject-with tcp-reset`,
		`-d 169.254.210.210/32 -p udp -m conntrack --ctstate NEW -m comment --comment "169.254.210.210: undeclared port" -j REJECT --reject-with icmp-port-unreachable`,
	}
	if !slices.Equal(input, want) {
		t.Errorf("INPUT:\n got %q\nwant %q", input, want)
	}
	if got := rs.Chains["nat"][chainOutput]; len(got) != 2 || !strings.Contains(got[1], "-j "+chainServices) {
		t.Errorf("nat OUTPUT %q: host clients of the address must pass our chains too", got)
	}
}

// TestHairpinRules: one masquerade rule per local producer IP, whatever the addresses it serves,
// for self-traffic only, in the chains of their blocks (MAGIC-IP-HAIRPIN jumps to each in turn).
func TestHairpinRules(t *testing.T) {
	a := netip.MustParseAddr(testAddr)
	b := netip.MustParseAddr("169.254.20.20")
	svc := func(addr netip.Addr, port int32, eps ...string) Service {
		s := Service{MagicIP: "m", PortName: "p", Address: addr, Port: port, Protocol: v1alpha1.ProtocolTCP}
		for _, e := range eps {
			pod, ip, _ := strings.Cut(e, "@")
			s.Endpoints = append(s.Endpoints, Endpoint{Pod: pod, Addr: netip.AddrPortFrom(netip.MustParseAddr(ip), uint16(port+1000))})
		}
		return s
	}
	rule := func(ip, pod string) string {
		return `-s ` + ip + `/32 -d ` + ip + `/32 -m comment --comment "hairpin: ` + pod + ` reaching itself" -j MASQUERADE`
	}
	tests := map[string]struct {
		svcs []Service
		want []string
	}{
		"no producers":  {[]Service{svc(a, 80)}, []string{}},
		"one producer":  {[]Service{svc(a, 80, "d/x@10.244.1.5")}, []string{rule("10.244.1.5", "d/x")}},
		"two producers": {[]Service{svc(a, 80, "d/y@10.244.1.9", "d/x@10.244.1.5")}, []string{rule("10.244.1.5", "d/x"), rule("10.244.1.9", "d/y")}},
		"two ports of the address: one rule": {
			[]Service{svc(a, 80, "d/x@10.244.1.5"), svc(a, 81, "d/x@10.244.1.5")}, []string{rule("10.244.1.5", "d/x")},
		},
		"every address's producers, in IP order": {
			[]Service{svc(b, 80, "d/z@10.244.1.7"), svc(a, 80, "d/x@10.244.1.5")}, []string{rule("10.244.1.5", "d/x"), rule("10.244.1.7", "d/z")},
		},
		"a producer of two addresses: one rule": {
			[]Service{svc(b, 80, "d/x@10.244.1.5"), svc(a, 80, "d/x@10.244.1.5")}, []string{rule("10.244.1.5", "d/x")},
		},
		"remote producers (Fallback) get none": {
			[]Service{{MagicIP: "m", PortName: "p", Address: a, Port: 80, Protocol: v1alpha1.ProtocolTCP,
				Endpoints: []Endpoint{{Pod: "d/r", Node: "node-b", Addr: netip.MustParseAddrPort("10.244.2.5:80")}}}}, nil,
		},
		"host-network producers share the node IP: one rule": {
			[]Service{svc(a, 80, "d/h2@172.20.0.11", "d/h1@172.20.0.11")}, []string{rule("172.20.0.11", "d/h1")},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			nat := Render(State{Services: tc.svcs}, nil).Chains["nat"]
			got := []string{}
			for _, jump := range nat[chainHairpin] {
				got = append(got, nat[strings.Fields(jump)[3]]...)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got\n%q\nwant\n%q", got, tc.want)
			}
		})
	}
}
