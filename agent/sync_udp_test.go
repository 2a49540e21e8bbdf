package agent

import (
	"net/netip"
	"slices"
	"testing"
)

// TestUDPChangesFollowWhatChanged: among 1,000 MagicIPs, a sync that moved one UDP producer finds
// that one service to flush without indexing every UDP service: it allocates no more than among
// 10 MagicIPs (within 2×), and a handful of times at most.
func TestUDPChangesFollowWhatChanged(t *testing.T) {
	oneMoved := func(n int) float64 {
		st := fleet(n, 0)
		i := slices.IndexFunc(st.Services, func(s Service) bool { return s.Protocol == "UDP" && len(s.Endpoints) > 0 })
		moved := st
		moved.Services = slices.Clone(st.Services)
		eps := slices.Clone(moved.Services[i].Endpoints)
		eps[0].Addr = netip.AddrPortFrom(netip.MustParseAddr("10.250.0.1"), eps[0].Addr.Port())
		moved.Services[i].Endpoints = eps
		if got := udpChanges(&st, moved); len(got) != 1 || udpKey(got[0]) != udpKey(st.Services[i]) {
			t.Fatalf("%d MagicIPs, one UDP producer moved: flushed %v, want %v", n, got, udpKey(st.Services[i]))
		}
		return testing.AllocsPerRun(5, func() { udpChanges(&st, moved) })
	}
	at10, at1000 := oneMoved(10), oneMoved(1000)
	if at1000 > 2*at10 || at1000 > 5 {
		t.Errorf("one UDP producer moved: udpChanges allocated %.0f times among 1,000 MagicIPs, %.0f among 10: it indexed every service", at1000, at10)
	}
}
