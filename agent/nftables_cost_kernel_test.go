package agent

import (
	"context"
	"fmt"
	"runtime"
	"testing"

	"github.com/go-logr/logr"

	"github.com/magic-ip/magic-ip/agent/nftables"
)

// TestNftablesProducerChangeFollowsWhatChanged: with the nftables datapath, a sync that replaces
// one producer by one at another address compares that one service's chain with the kernel's
// (not every chain of the table) and allocates as many bytes among 1,000 MagicIPs × 3 ports as
// among 10 (within 2×): nothing is copied or compared per chain of the table, so its cost follows
// what changed, not what the node serves. After each sync the kernel holds exactly the State's
// rules.
func TestNftablesProducerChangeFollowsWhatChanged(t *testing.T) {
	perSync := map[int]float64{}
	for _, n := range []int{10, 1000} {
		ns := newNetns(t, fmt.Sprintf("nftcost%d", n))
		inNetns(t, ns, func(_ *Iptables, links *Links) error {
			k, err := nftables.NewKernel(-1)
			if err != nil {
				return err
			}
			defer k.Close()
			local := ExternalInterfaces("eth0")
			s := &Syncer{Datapath: &NftablesDatapath{NFT: &nftables.Datapath{Kernel: k}, Local: local}, Links: links, Log: logr.Discard()}
			bytes, err := changeSyncs(t, s, k, n, local)
			perSync[n] = bytes
			return err
		})
	}
	if perSync[1000] > 2*perSync[10] {
		t.Errorf("one producer replaced: a sync allocated %.0f bytes among 1,000 MagicIPs, %.0f among 10: something was copied per service or chain", perSync[1000], perSync[10])
	}
	t.Logf("one producer replaced: %.0f bytes allocated per sync among 1,000 MagicIPs, %.0f among 10", perSync[1000], perSync[10])
}

// changeSyncs syncs fleet(n, 0), then alternates it 10 times with a copy whose first producer
// moved, checking each change sync's transaction, and the kernel after the last; it returns the
// bytes allocated per change sync.
func changeSyncs(t *testing.T, s *Syncer, k *nftables.Kernel, n int, local *LocalDetector) (float64, error) {
	ctx := context.Background()
	st, moved := fleetOneMoved(n)
	if _, err := s.Sync(ctx, st, true); err != nil {
		return 0, err
	}
	// The first sync's conntrack flush (every UDP service) runs on in the background: not
	// into the change syncs' figures.
	s.WaitFlushes()
	if tx := k.Last(); tx.Compared != 0 {
		t.Errorf("%d MagicIPs, first sync: compared %d chains, want none (it writes the whole table)", n, tx.Compared)
	}
	const syncs = 10
	var total uint64
	next := st
	for i := range syncs {
		next = []State{moved, st}[i%2]
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		if _, err := s.Sync(ctx, next, false); err != nil {
			return 0, err
		}
		s.WaitFlushes() // its flush's allocations count, as when it ran inside Sync
		runtime.ReadMemStats(&after)
		total += after.TotalAlloc - before.TotalAlloc
		if tx := k.Last(); tx.Compared != 1 || tx.Chains != 0 || tx.Elements == 0 {
			t.Errorf("%d MagicIPs, change sync %d: compared %d chains with the kernel's and wrote %d chains, %d elements; want 1 compared, elements only", n, i+1, tx.Compared, tx.Chains, tx.Elements)
		}
	}
	if o, err := k.Read(); err != nil || len(o.Drift(nftables.Render(NftablesInput(next, local)))) > 0 {
		t.Fatalf("%d MagicIPs, after the change syncs: the kernel differs from the State: %q (err %v)", n, o.Drift(nftables.Render(NftablesInput(next, local))), err)
	}
	return float64(total) / syncs, nil
}
