package nftables

import (
	"errors"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	gnft "github.com/google/nftables"
)

// TestKernelWritesAfterPermissionRefused: while another process owns a table of our name
// (NFT_TABLE_F_OWNER), every transaction is refused with EPERM and nothing else is changed; once
// that process is gone, the next sync writes our table again. The kernel answers every message of
// a refused batch: the replies the library leaves unread after the first EPERM must not be taken
// for the answers to the next transaction.
func TestKernelWritesAfterPermissionRefused(t *testing.T) {
	ns, k, _ := netnsKernel(t, "nftowned")
	d := &Datapath{Kernel: k}
	rs := Render(fleetInput(3, 0))
	if _, _, err := d.Apply(rs, true); err != nil {
		t.Fatal(err)
	}
	release := ns.TakeNftTable(t, TableName)
	for i := range 3 {
		if _, _, err := d.Apply(rs, i%2 == 0); !errors.Is(err, os.ErrPermission) {
			t.Fatalf("sync %d while another process owns the table: %v, want EPERM", i+1, err)
		}
	}
	release()
	for i := range 2 {
		if _, _, err := d.Apply(rs, i == 0); err != nil {
			t.Fatalf("sync %d once the table is free again: %v", i+1, err)
		}
	}
	if o, err := k.Read(); err != nil || len(o.Drift(rs)) > 0 {
		t.Fatalf("the table after the refusals: drift %q (err %v)", o.Drift(rs), err)
	}
}

// TestKernelPatchAfterRefused: a patched sync (Renderer.Patch, Datapath.ApplyPatch) that the
// kernel refuses leaves the last Ruleset changed in place but not written: the next patched sync,
// of another producer, must not trust it and writes the whole table, so the kernel holds both
// changes; then patches go back to writing only what changed.
func TestKernelPatchAfterRefused(t *testing.T) {
	ns, k, _ := netnsKernel(t, "nftpatchref")
	d := &Datapath{Kernel: k}
	var r Renderer
	in := fleetInput(10, 0)
	if _, _, err := d.Apply(r.Render(in), true); err != nil {
		t.Fatal(err)
	}
	patch := func(i int, to string) (Ruleset, error) {
		t.Helper()
		eps := slices.Clone(in.Services[i].Endpoints) // as many producers: map elements only
		eps[0] = Endpoint{Pod: "ns/" + to, Addr: netip.MustParseAddrPort(to + ":8080")}
		in.Services[i].Endpoints = eps
		rs, p, ok := r.Patch(in, []int{i})
		if !ok {
			t.Fatalf("Patch of service %d refused", i)
		}
		_, err := d.ApplyPatch(rs, p)
		return rs, err
	}
	release := ns.TakeNftTable(t, TableName)
	if _, err := patch(0, "10.250.0.1"); !errors.Is(err, os.ErrPermission) {
		t.Fatalf("patched sync while another process owns the table: %v, want EPERM", err)
	}
	release()
	for step, c := range []struct {
		i      int
		to     string
		chains int // 8: the whole table (the 4 base chains, the services chain and the spread chains for 1 to 3 producers)
	}{{2, "10.250.0.2", 8}, {4, "10.250.0.3", 0}} {
		rs, err := patch(c.i, c.to)
		if err != nil {
			t.Fatalf("patched sync %d once the table is free again: %v", step+1, err)
		}
		if tx := k.Last(); tx.Chains != c.chains {
			t.Errorf("patched sync %d: wrote %d chains, want %d (%v)", step+1, tx.Chains, c.chains, tx)
		}
		if o, err := k.Read(); err != nil || len(o.Drift(rs)) > 0 || len(o.Drift(Render(in))) > 0 {
			t.Fatalf("the table after patched sync %d: drift %q (err %v)", step+1, o.Drift(Render(in)), err)
		}
	}
}

// TestKernelSetDeletedIsDrift: the hairpin set deleted behind our back (with the rule using it) is
// drift that the next full sync reports and repairs, not a failed sync.
func TestKernelSetDeletedIsDrift(t *testing.T) {
	_, k, other := netnsKernel(t, "nftsetgone")
	d := &Datapath{Kernel: k}
	rs := Render(fleetInput(3, 0))
	if _, _, err := d.Apply(rs, true); err != nil {
		t.Fatal(err)
	}
	table := &gnft.Table{Name: TableName, Family: TableFamily}
	other.FlushChain(&gnft.Chain{Name: chainPostrouting, Table: table})
	other.DelSet(&gnft.Set{Table: table, Name: hairpinSet})
	if err := other.Flush(); err != nil {
		t.Fatal(err)
	}
	wrote, drift, err := d.Apply(rs, true)
	if err != nil || !wrote || !strings.Contains(strings.Join(drift, "; "), "sets hairpin, hairpin6: missing") {
		t.Fatalf("full sync after the set was deleted: wrote %v, drift %q, err %v; want the set reported and written again", wrote, drift, err)
	}
	if o, err := k.Read(); err != nil || len(o.Drift(rs)) > 0 {
		t.Fatalf("the table after the repair: drift %q (err %v)", o.Drift(rs), err)
	}
}
