package nftables

import (
	"errors"
	"os"
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
