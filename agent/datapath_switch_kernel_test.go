package agent

import (
	"context"
	"fmt"
	"strings"

	"testing"

	"github.com/go-logr/logr"

	"github.com/magic-ip/magic-ip/agent/nftables"
)

// TestSyncRetiresOtherDatapath: a node switched from iptables to nftables and back keeps only
// the rules of the datapath in use: the first sync writes its own, then removes the other's.
func TestSyncRetiresOtherDatapath(t *testing.T) {
	ns := newNetns(t, "dpswitch")
	inNetns(t, ns, func(ipt *Iptables, links *Links) error {
		ctx := context.Background()
		k, err := nftables.NewKernel(-1)
		if err != nil {
			return err
		}
		defer k.Close()
		local := ExternalInterfaces("eth0")
		iptDP := func() Datapath { return &IptablesDatapath{Ipt: ipt, Local: local, Log: logr.Discard()} }
		nftDP := func() Datapath { return &NftablesDatapath{NFT: &nftables.Datapath{Kernel: k}, Local: local} }
		state := func() (iptChains, nftTable bool, err error) {
			save, err := run("iptables-save")
			if err != nil {
				return false, false, err
			}
			o, err := k.Read()
			return strings.Contains(save, ChainPrefix), o.Chains != nil, err
		}
		for i, step := range []struct {
			dp, other    Datapath
			wantIptables bool
		}{{iptDP(), nil, true}, {nftDP(), iptDP(), false}, {iptDP(), nftDP(), true}} {
			s := &Syncer{Datapath: step.dp, Links: links, Log: logr.Discard()}
			if step.other != nil {
				s.Retire = []Datapath{step.other}
			}
			if _, err := s.Sync(ctx, everyShape(), true); err != nil {
				return fmt.Errorf("step %d (%s): %w", i, step.dp.Name(), err)
			}
			iptChains, nftTable, err := state()
			if err != nil {
				return err
			}
			if iptChains != step.wantIptables || nftTable == step.wantIptables {
				t.Errorf("step %d, %s in use: iptables chains %v, nftables table %v; want only the rules of %s", i, step.dp.Name(), iptChains, nftTable, step.dp.Name())
			}
		}
		return nil
	})
}
