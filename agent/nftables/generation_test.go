package nftables

import (
	"testing"

	gnft "github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
)

// TestKernelGeneration: a full sync skips reading the table back exactly while nobody but us
// committed anything since the last read — our own changes do not count, anyone else's
// transaction does (another nftables table, an iptables-nft rule), and so does a write of ours
// the kernel refused; whatever was skipped, the table holds what was written.
func TestKernelGeneration(t *testing.T) {
	ns, k, other := netnsKernel(t, "nftgen")
	d := &Datapath{Kernel: k}
	rs0, rs1 := Render(fleetInput(20, 0)), Render(fleetInput(20, 1))
	foreign := func() {
		other.AddTable(&gnft.Table{Name: "someone-else", Family: gnft.TableFamilyIPv4})
		if err := other.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	iptables := func() {
		if _, err := ns.Run(t.Context(), "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"); err != nil {
			t.Fatal(err)
		}
	}
	steps := []struct {
		name      string
		before    func()
		rs        Ruleset
		full      bool
		wantSkip  bool
		wantWrote bool
	}{
		{name: "first sync (writes the table)", rs: rs0, full: true, wantWrote: true},
		{name: "full sync: no read yet to go by", rs: rs0, full: true},
		{name: "full sync after a read, nothing committed since", rs: rs0, full: true, wantSkip: true},
		{name: "producers changed (our transaction)", rs: rs1, wantWrote: true},
		{name: "full sync after our own change", rs: rs1, full: true, wantSkip: true},
		{name: "full sync after another table was added", before: foreign, rs: rs1, full: true},
		{name: "then nothing since that read", rs: rs1, full: true, wantSkip: true},
		{name: "full sync after an iptables-nft rule was added", before: iptables, rs: rs1, full: true},
		{name: "a change after that read", rs: rs0, wantWrote: true},
		{name: "full sync: skipped again", rs: rs0, full: true, wantSkip: true},
	}
	for _, s := range steps {
		if s.before != nil {
			s.before()
		}
		skipped := d.Skipped
		wrote, drift, err := d.Apply(s.rs, s.full)
		if err != nil || wrote != s.wantWrote || len(drift) > 0 {
			t.Fatalf("%s: wrote %v drift %q err %v; want wrote %v, no drift", s.name, wrote, drift, err, s.wantWrote)
		}
		if got := d.Skipped > skipped; got != s.wantSkip {
			t.Fatalf("%s: read skipped %v, want %v", s.name, got, s.wantSkip)
		}
		o, err := k.read() // not Read: the check of the test must not reset what the datapath goes by
		if err != nil {
			t.Fatal(err)
		}
		if diff := o.Drift(s.rs); len(diff) > 0 {
			t.Fatalf("%s: the kernel does not hold what was written: %q", s.name, diff)
		}
	}

	// A rule of ours deleted behind our back is found by the next full sync: the deletion moved
	// the generation.
	deleteSecondInputRule(t, other)
	if _, drift, err := d.Apply(rs0, true); err != nil || len(drift) == 0 {
		t.Fatalf("a rule deleted behind our back: drift %q, err %v; want it found", drift, err)
	}

	// A transaction of ours the kernel refuses: nothing vouches for the count any more.
	if same, err := k.Unchanged(); err != nil || !same {
		t.Fatalf("after the repair: unchanged %v, err %v; want true", same, err)
	}
	bad := Render(fleetInput(20, 2))
	bad.Chains[0].Rules = append(bad.Chains[0].Rules, Rule{Text: "jump nowhere", Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: "nowhere"}}})
	if _, _, err := d.Apply(bad, false); err == nil {
		t.Fatal("a jump to a missing chain was accepted")
	}
	if same, err := k.Unchanged(); err != nil || same {
		t.Fatalf("after a refused transaction: unchanged %v, err %v; want false", same, err)
	}
}

// TestParseGeneration reads the generation from a NEWGEN answer, and refuses one without it.
func TestParseGeneration(t *testing.T) {
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: 1, Data: []byte{0, 0, 1, 2}}, {Type: 2, Data: []byte{0, 0, 0, 7}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		msgs []netlink.Message
		want uint32
		ok   bool
	}{
		{"NFTA_GEN_ID", []netlink.Message{{Data: append([]byte{0, 0, 0, 0}, attrs...)}}, 258, true},
		{"no attribute", []netlink.Message{{Data: []byte{0, 0, 0, 0}}}, 0, false},
		{"no message", nil, 0, false},
	} {
		got, err := parseGeneration(c.msgs)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("%s: got %d, %v; want %d, ok %v", c.name, got, err, c.want, c.ok)
		}
	}
}
