package nftables

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"

	gnft "github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/magic-ip/magic-ip/test/harness"
)

// netnsKernel opens a fresh network namespace and our Kernel in it, and a second netlink
// connection there to act as someone else.
func netnsKernel(t *testing.T, name string) (*harness.Netns, *Kernel, *gnft.Conn) {
	t.Helper()
	ns := harness.TestNetns(t, name)
	f, err := os.Open(ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	k, err := NewKernel(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	other, err := gnft.New(gnft.WithNetNSFd(int(f.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	return ns, k, other
}

// deleteSecondInputRule deletes the second rule of our input chain as someone else, and returns
// the chain.
func deleteSecondInputRule(t *testing.T, other *gnft.Conn) *gnft.Chain {
	t.Helper()
	input := &gnft.Chain{Name: chainInput, Table: &gnft.Table{Name: TableName, Family: TableFamily}}
	rules, err := other.GetRules(input.Table, input)
	if err != nil || len(rules) < 2 {
		t.Fatalf("rules of our input chain: %d, %v", len(rules), err)
	}
	if err := other.DelRule(rules[1]); err != nil {
		t.Fatal(err)
	}
	if err := other.Flush(); err != nil {
		t.Fatal(err)
	}
	return input
}

// fleetInput is n magic addresses, each with a TCP port served by 1 to 3 producers (gen shifts
// how many) and a UDP port without producer.
func fleetInput(n, gen int) Input {
	in := Input{Local: Local{All: true, External: []string{"eth0"}}}
	for i := range n {
		a := netip.AddrFrom4([4]byte{169, 254, byte(1 + i/200), byte(1 + i%200)})
		in.Addresses = append(in.Addresses, a)
		tcp := Service{Key: fmt.Sprintf("m%03d:tcp", i), Addr: a, Port: 80, Protocol: "tcp", Verdict: Reject}
		for k := range 1 + (i+gen)%3 {
			ip := netip.AddrFrom4([4]byte{10, 244, byte(i / 80), byte(1 + 3*(i%80) + k)})
			tcp.Endpoints = append(tcp.Endpoints, Endpoint{Pod: fmt.Sprintf("ns/m%03d-%d", i, k), Addr: netip.AddrPortFrom(ip, 8080)})
		}
		in.Services = append(in.Services, tcp, Service{Key: fmt.Sprintf("m%03d:udp", i), Addr: a, Port: 53, Protocol: "udp", Verdict: Drop})
	}
	return in
}

// TestKernelApply: the table is written to a fresh namespace in one transaction and read back
// rule for rule; an unchanged ruleset writes nothing, even on a full sync; changes (chains added,
// refilled, deleted) leave exactly the new ruleset; a rule deleted, the hairpin
// set emptied or the table deleted behind our back is reported and repaired; a transaction the kernel refuses
// leaves the table as it was; cleanup deletes our table and leaves iptables' rules and another
// nftables table alone.
func TestKernelApply(t *testing.T) {
	ns, k, other := netnsKernel(t, "nftapply")
	for _, args := range [][]string{{"-t", "nat", "-N", "KUBE-SERVICES"}, {"-t", "nat", "-A", "PREROUTING", "-j", "KUBE-SERVICES"},
		{"-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"}} {
		if _, err := ns.Run(t.Context(), "iptables", args...); err != nil {
			t.Fatal(err)
		}
	}
	foreign := other.AddTable(&gnft.Table{Name: "kube-proxy", Family: gnft.TableFamilyIPv4})
	other.AddChain(&gnft.Chain{Name: "services", Table: foreign})
	legacy := other.AddTable(&gnft.Table{Name: TableName, Family: gnft.TableFamilyIPv4}) // an older agent's
	other.AddChain(&gnft.Chain{Name: chainPrerouting, Table: legacy, Type: gnft.ChainTypeNAT, Hooknum: gnft.ChainHookPrerouting, Priority: gnft.ChainPriorityNATDest})
	if err := other.Flush(); err != nil {
		t.Fatal(err)
	}
	rs := Render(fleetInput(20, 0))
	d := &Datapath{Kernel: k}
	step := func(name string, rs Ruleset, full, wantWrote bool, wantDrift string) {
		t.Helper()
		wrote, drift, err := d.Apply(rs, full)
		if err != nil || wrote != wantWrote || !strings.Contains(strings.Join(drift, "; "), wantDrift) || (wantDrift == "" && len(drift) > 0) {
			t.Fatalf("%s: wrote %v drift %q err %v; want wrote %v, drift %q", name, wrote, drift, err, wantWrote, wantDrift)
		}
		o, err := k.Read()
		if err != nil {
			t.Fatal(err)
		}
		if diff := o.Drift(rs); len(diff) > 0 {
			t.Fatalf("%s: the kernel does not hold what was written: %q", name, diff)
		}
	}
	step("first sync", rs, true, true, "")
	if _, err := other.ListTableOfFamily(TableName, gnft.TableFamilyIPv4); err == nil {
		t.Error("the first sync left the table ip magic-ip of an older agent")
	}
	step("unchanged", rs, false, false, "")
	step("unchanged, full", rs, true, false, "")
	step("five MagicIPs gone: their chains deleted with the jumps to them", Render(fleetInput(15, 0)), false, true, "")
	step("back", rs, false, true, "")
	rs2 := Render(fleetInput(20, 1))
	step("producers changed", rs2, false, true, "")
	step("unchanged after a change", rs2, true, false, "")

	input := deleteSecondInputRule(t, other)
	step("a refusal deleted behind our back", rs2, true, true, "chain input: rule 2")
	other.FlushSet(&gnft.Set{Table: input.Table, Name: hairpinSet})
	if err := other.Flush(); err != nil {
		t.Fatal(err)
	}
	step("the hairpin set emptied behind our back", rs2, true, true, "sets hairpin, hairpin6: missing [10.244.0.1")
	other.DelTable(input.Table)
	if err := other.Flush(); err != nil {
		t.Fatal(err)
	}
	step("our table deleted behind our back", rs2, true, true, "table inet magic-ip missing")

	bad := Render(fleetInput(20, 2))
	bad.Chains[0].Rules = append(bad.Chains[0].Rules, Rule{Text: "jump nowhere", Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: "nowhere"}}})
	if _, _, err := d.Apply(bad, false); err == nil {
		t.Fatal("a jump to a missing chain was accepted")
	}
	if o, err := k.Read(); err != nil || len(o.Drift(rs2)) > 0 {
		t.Fatalf("a refused transaction changed the table: %q (err %v)", o.Drift(rs2), err)
	}
	step("after a refused transaction: the next sync writes again", rs2, false, true, "")

	other.AddTable(legacy) // left by an older agent that ran since (a rollback)
	if err := other.Flush(); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := d.Cleanup(); err != nil {
			t.Fatalf("cleanup %d: %v", i+1, err)
		}
		if o, err := k.Read(); err != nil || o.Chains != nil {
			t.Fatalf("cleanup %d: our table still there (%v, err %v)", i+1, o.Chains, err)
		}
		if _, err := other.ListTableOfFamily(TableName, gnft.TableFamilyIPv4); err == nil {
			t.Errorf("cleanup %d left the table ip magic-ip of an older agent", i+1)
		}
		if _, err := other.ListTableOfFamily("kube-proxy", gnft.TableFamilyIPv4); err != nil {
			t.Errorf("cleanup %d removed another table: %v", i+1, err)
		}
		save, err := ns.Run(t.Context(), "iptables-save")
		if err != nil {
			t.Fatal(err)
		}
		for _, rule := range []string{"-A PREROUTING -j KUBE-SERVICES", "--dport 22 -j ACCEPT"} {
			if !strings.Contains(save, rule) {
				t.Errorf("cleanup %d removed the iptables rule %q:\n%s", i+1, rule, save)
			}
		}
	}
}
