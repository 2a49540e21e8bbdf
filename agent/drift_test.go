package agent

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"testing"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// TestCanonicalRule: the spellings iptables-save prints back for a rule we wrote compare equal;
// any change of a match, a value, a negation or the target does not.
func TestCanonicalRule(t *testing.T) {
	const dnat = `-p tcp -m comment --comment "m:apm -> ns/a" -m statistic --mode random --probability 0.33333333333 -j DNAT --to-destination 10.244.1.5:8126`
	const hairpin = `-s 10.244.1.10/32 -d 10.244.1.10/32 -m conntrack --ctstate DNAT --ctorigdst 169.254.210.210/32 -m comment --comment "m:apm hairpin" -j MASQUERADE`
	tests := map[string]struct {
		a, b  string
		equal bool
	}{
		"the kernel's probability": {dnat, strings.Replace(dnat, "0.33333333333", "0.33333333349", 1), true},
		"a one-word comment unquoted": {`-d 169.254.1.1/32 -m comment --comment "m:apm" -j MAGIC-IP-SVC-X`,
			`-d 169.254.1.1/32 -m comment --comment m:apm -j MAGIC-IP-SVC-X`, true},
		"basic matches reordered, /32 implied": {"-p tcp -d 1.2.3.4 -j MASQUERADE", "-d 1.2.3.4/32 -p tcp -j MASQUERADE", true},
		"--ctorigdst printed without /32":      {hairpin, strings.Replace(hairpin, "169.254.210.210/32", "169.254.210.210", 1), true},
		"conntrack options reordered": {hairpin, strings.Replace(hairpin, "--ctstate DNAT --ctorigdst 169.254.210.210/32",
			"--ctorigdst 169.254.210.210 --ctstate DNAT", 1), true},
		"matches reordered": {`-d 169.254.1.1/32 -p udp -m udp --dport 8125 -m conntrack --ctstate NEW -m comment --comment "a b" -j DROP`,
			`-d 169.254.1.1/32 -p udp -m udp --dport 8125 -m comment --comment "a b" -m conntrack --ctstate NEW -j DROP`, true},
		"an escaped quote":            {`-m comment --comment "say \"hi\"" -j RETURN`, `-m comment --comment "say \"hi\"" -j RETURN`, true},
		"another DNAT target":         {dnat, strings.Replace(dnat, "10.244.1.5:8126", "10.244.1.6:8126", 1), false},
		"another probability":         {dnat, strings.Replace(dnat, "0.33333333333", "0.5", 1), false},
		"another comment":             {dnat, strings.Replace(dnat, "ns/a", "ns/b", 1), false},
		"a word moved between quotes": {`-m comment --comment "a b" -j RETURN`, `-m comment --comment a b -j RETURN`, false},
		"a negation dropped": {"-d 1.2.3.4/32 -m conntrack ! --ctstate DNAT -j REJECT --reject-with tcp-reset",
			"-d 1.2.3.4/32 -m conntrack --ctstate DNAT -j REJECT --reject-with tcp-reset", false},
		"the negation moved":    {"! -i lo -o eth0 -j RETURN", "-i lo ! -o eth0 -j RETURN", false},
		"another target":        {"-p tcp -j REJECT --reject-with tcp-reset", "-p tcp -j DROP", false},
		"another prefix length": {"-s 10.0.0.0/8 -j RETURN", "-s 10.0.0.0/16 -j RETURN", false},
		"another interface":     {"-i eth0 -m comment --comment \"external interface: not node-local\" -j RETURN", "-i eth1 -m comment --comment \"external interface: not node-local\" -j RETURN", false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ca, cb := canonicalRule(tc.a), canonicalRule(tc.b)
			if (ca == cb) != tc.equal {
				t.Errorf("equal = %v, want %v\n a: %s\n    %s\n b: %s\n    %s", ca == cb, tc.equal, tc.a, ca, tc.b, cb)
			}
		})
	}
}

// fleet is n MagicIPs × 3 ports (TCP, UDP, TCP), producers: gen picks how many (1–3) each has, so
// two generations differ in most chains.
func fleet(n, gen int) State {
	st := State{Addresses: map[string][]netip.Addr{}}
	for i := range n {
		addr := netip.AddrFrom4([4]byte{169, 254, byte(1 + i/200), byte(1 + i%200)})
		st.Addresses[bridgeIface] = append(st.Addresses[bridgeIface], addr)
		for p, proto := range []v1alpha1.Protocol{v1alpha1.ProtocolTCP, v1alpha1.ProtocolUDP, v1alpha1.ProtocolTCP} {
			svc := Service{MagicIP: fmt.Sprintf("m%03d", i), PortName: fmt.Sprintf("p%d", p), Address: addr, Port: int32(8000 + p),
				Protocol: proto, WhenNoProducer: v1alpha1.Reject}
			for k := range 1 + (i+gen)%3 {
				svc.Endpoints = append(svc.Endpoints, Endpoint{Pod: fmt.Sprintf("ns/m%03d-%d", i, k),
					Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 244, byte(i / 80), byte(1 + 3*(i%80) + k)}), uint16(8000+p))})
			}
			st.Services = append(st.Services, svc)
		}
	}
	return st
}

// TestResyncSequence plays a node through a sequence of full syncs, the kernel modelled as the
// iptables-save text of what was last restored: a change between two resyncs (300 MagicIPs, one
// gone, producers changed) is applied as a change and never reported as drift — compared with the
// new rules instead, the same kernel shows "MAGIC-IP-SERVICES has 900 rules, want 897"-like
// drift — while an edited rule is, alone or beside a change.
func TestResyncSequence(t *testing.T) {
	ext := ExternalInterfaces("eth0")
	rs0, rs1, rs2 := Render(fleet(300, 0), ext), Render(fleet(299, 1), ext), Render(fleet(300, 2), ext)
	foreign := map[string][]string{"PREROUTING": {"-A PREROUTING -j KUBE-SERVICES"}}

	// First sync: nothing vouches for the kernel; no drift, everything written.
	drift, input := ParseSave([]byte(saveText(Ruleset{}, foreign))).Resync(nil, rs0, rs0.RestoreChanges(Ruleset{}))
	if len(drift) != 0 || string(input) != string(rs0.Restore(nil, ParseSave([]byte(saveText(Ruleset{}, foreign))).JumpFixes())) {
		t.Fatalf("first sync: drift %q, input of %d bytes: want no drift and a full restore", drift, len(input))
	}
	steps := []struct {
		name       string
		from, to   Ruleset
		edit       func(string) string // what someone else did to the kernel since
		wantDrift  string              // a substring of the only drift reported; "" for none
		wantChange bool                // the input is the incremental change, not a rewrite
	}{
		{name: "one MagicIP gone, producers changed", from: rs0, to: rs1, wantChange: true},
		{name: "one back, producers changed again", from: rs1, to: rs2, wantChange: true},
		{name: "idle", from: rs2, to: rs2, wantChange: true},
		{name: "a DNAT target edited", from: rs2, to: rs2, edit: editFirstDNAT, wantDrift: "rule 1: wrote"},
		{name: "a DNAT target edited during a change", from: rs2, to: rs0, edit: editFirstDNAT, wantDrift: "rule 1: wrote"},
	}
	for _, step := range steps {
		kernel := saveText(step.from, foreign)
		if step.edit != nil {
			kernel = step.edit(kernel)
		}
		obs := ParseSave([]byte(kernel))
		changes := step.to.RestoreChanges(step.from)
		drift, input := obs.Resync(&step.from, step.to, changes)
		switch {
		case step.wantDrift == "" && len(drift) != 0:
			t.Errorf("%s: our own change reported as drift: %q", step.name, drift)
		case step.wantDrift != "" && (len(drift) != 1 || !strings.Contains(drift[0], step.wantDrift)):
			t.Errorf("%s: drift %q, want one containing %q", step.name, drift, step.wantDrift)
		case step.wantChange && string(input) != string(changes):
			t.Errorf("%s: input is not the change:\n%s", step.name, input)
		case !step.wantChange && string(input) != string(step.to.Restore(obs.Chains, obs.JumpFixes())):
			t.Errorf("%s: input is not a rewrite of every chain:\n%s", step.name, input)
		}
		if step.edit == nil && step.from.Chains != nil && len(obs.Drifted(step.to)) == 0 && string(changes) != "" {
			t.Errorf("%s: the step changes nothing the kernel shows; the test proves nothing", step.name)
		}
	}
	// After a failed restore nothing vouches for the kernel: whatever it holds (here half of a
	// change: the nat table written, filter not) is rewritten, and nothing is called drift.
	half := saveText(Ruleset{Chains: map[string]map[string][]string{"nat": rs1.Chains["nat"], "filter": rs0.Chains["filter"]}}, foreign)
	if drift, input := ParseSave([]byte(half)).Resync(nil, rs1, nil); len(drift) != 0 || input == nil {
		t.Errorf("after a failed restore: drift %q and %d bytes of input; want none and a rewrite", drift, len(input))
	}
}

// editFirstDNAT changes the target of the first DNAT rule in an iptables-save text.
func editFirstDNAT(s string) string {
	i := strings.Index(s, "--to-destination 10.244.")
	if i < 0 {
		panic("no DNAT rule")
	}
	return s[:i] + "--to-destination 192.0.2.1:9" + s[strings.IndexByte(s[i:], '\n')+i:]
}

// BenchmarkResyncCompare: the agent's own share of an idle full resync (reading iptables-save,
// comparing with the applied rules) for 300 MagicIPs × 3 ports, alone and beside 10,000
// kube-proxy-style nat rules.
func BenchmarkResyncCompare(b *testing.B) {
	rs := Render(fleet(300, 0), ExternalInterfaces("eth0"))
	var foreign strings.Builder
	foreign.WriteString("*nat\n:KUBE-SERVICES - [0:0]\n")
	for i := range 10000 {
		fmt.Fprintf(&foreign, "-A KUBE-SERVICES -d 10.96.%d.%d/32 -p tcp -m comment --comment \"ns/svc-%05d:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-%05d\n", i/250, 1+i%250, i, i)
	}
	foreign.WriteString("COMMIT\n")
	// As iptables-save prints them: one-word comments unquoted, so those rules take the slow path.
	ours := regexp.MustCompile(`--comment "([^ "]*)"`).ReplaceAllString(saveText(rs, nil), "--comment $1")
	for name, save := range map[string]string{"alone": ours, "beside 10,000 nat rules": foreign.String() + ours} {
		b.Run(name, func(b *testing.B) {
			for range b.N {
				if d := ParseSave([]byte(save)).Drifted(rs); len(d) != 0 {
					b.Fatal(d)
				}
			}
		})
	}
}
