package agent

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/go-logr/logr"
)

// TestSyncTrustsUnchangedAddresses: a sync that is not full, with the same addresses as the last
// one, does not touch the node's addresses (so an address deleted behind our back stays missing
// until the next full sync, as a deleted rule does); one whose addresses changed adds and removes
// them; a full sync repairs what went missing.
func TestSyncTrustsUnchangedAddresses(t *testing.T) {
	ns := newNetns(t, "synctrust")
	inNetns(t, ns, func(ipt *Iptables, links *Links) error {
		s := &Syncer{Datapath: &IptablesDatapath{Ipt: ipt, Local: ExternalInterfaces("eth0"), Log: logr.Discard()}, Links: links, Log: logr.Discard()}
		ctx := context.Background()
		st, fewer := fleet(3, 0), fleet(2, 0)
		victim := st.Addresses[bridgeIface][0]
		steps := []struct {
			name   string
			st     State
			full   bool
			delete bool // victim is deleted behind our back before the sync
			want   []netip.Addr
		}{
			{"first sync", st, true, false, st.Addresses[bridgeIface]},
			{"same addresses, not full: trusted", st, false, true, st.Addresses[bridgeIface][1:]},
			{"full: repaired", st, true, false, st.Addresses[bridgeIface]},
			{"a MagicIP gone, not full: its address removed", fewer, false, false, fewer.Addresses[bridgeIface]},
			{"back, not full: its address added", st, false, false, st.Addresses[bridgeIface]},
		}
		for _, step := range steps {
			if step.delete {
				if err := links.del(bridgeIface, victim); err != nil {
					return err
				}
			}
			if _, err := s.Sync(ctx, step.st, step.full); err != nil {
				return fmt.Errorf("%s: %w", step.name, err)
			}
			owned, err := links.Owned()
			if err != nil {
				return err
			}
			got := owned[bridgeIface]
			slices.SortFunc(got, netip.Addr.Compare)
			if !slices.Equal(got, step.want) {
				t.Errorf("%s: addresses %v, want %v", step.name, got, step.want)
			}
		}
		return nil
	})
}
