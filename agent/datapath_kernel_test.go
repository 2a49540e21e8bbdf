package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/testr"
	gnft "github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/magic-ip/magic-ip/agent/nftables"
)

// kernelDP is a datapath opened in a test's namespace, with a way to compare the kernel with a
// State.
type kernelDP struct {
	Datapath
	// drifted lists how the kernel differs from the rules of st (nothing: it holds exactly those).
	drifted func(ctx context.Context, st State) ([]string, error)
	close   func()
}

// openKernelDP opens the datapath named name on the calling thread's namespace (inside inNetns),
// with local as the node-local traffic detector.
func openKernelDP(name string, ipt *Iptables, local *LocalDetector) (kernelDP, error) {
	if name == DatapathNftables {
		k, err := nftables.NewKernel(-1)
		if err != nil {
			return kernelDP{}, err
		}
		return kernelDP{
			Datapath: &NftablesDatapath{NFT: &nftables.Datapath{Kernel: k}, Local: local},
			drifted: func(_ context.Context, st State) ([]string, error) {
				o, err := k.Read()
				return o.Drift(nftables.Render(NftablesInput(st, local))), err
			},
			close: func() { k.Close() },
		}, nil
	}
	return kernelDP{
		Datapath: &IptablesDatapath{Ipt: ipt, Local: local, Log: logr.Discard()},
		drifted: func(ctx context.Context, st State) ([]string, error) {
			saved, err := ipt.Save(ctx)
			return ParseSave(saved).Drifted(Render(st, local)), err
		},
		close: func() {},
	}, nil
}

// TestSyncChangeIsNotDrift: 300 MagicIPs changing between full syncs (one gone, one back, the
// producers of most services changed) are applied as changes: no sync reports drift (before, the
// iptables datapath logged "MAGIC-IP-SERVICES has 901 rules, want 900" and "repaired" its own
// change), and after each one the kernel holds exactly the new rules. For both datapaths.
func TestSyncChangeIsNotDrift(t *testing.T) {
	states := []State{fleet(300, 0), fleet(299, 1), fleet(300, 2), fleet(300, 0)}
	eachKernelDP(t, "driftrace", func(t *testing.T, d kernelDP, s *Syncer) error {
		ctx := context.Background()
		for i, st := range states {
			res, err := s.Sync(ctx, st, true)
			if err != nil {
				return fmt.Errorf("sync %d: %w", i, err)
			}
			if len(res.FailedInterfaces) > 0 {
				return fmt.Errorf("sync %d: interfaces failed: %v", i, res.FailedInterfaces)
			}
			if len(res.Drift) != 0 {
				t.Errorf("sync %d: our own change reported as drift (%d lines), first: %q", i, len(res.Drift), res.Drift[0])
			}
			if d, err := d.drifted(ctx, st); err != nil || len(d) != 0 {
				t.Errorf("sync %d: the kernel does not hold the new rules: %q (err %v)", i, d, err)
			}
		}
		return nil
	})
}

// eachKernelDP runs f once per datapath (a subtest named after it), each in a namespace of its
// own (named prefix-<datapath>) on a thread there, with the datapath open (node-local traffic:
// all but eth0's) and a Syncer writing it and the addresses.
func eachKernelDP(t *testing.T, prefix string, f func(t *testing.T, d kernelDP, s *Syncer) error) {
	for _, dp := range []string{DatapathIptables, DatapathNftables} {
		t.Run(dp, func(t *testing.T) {
			inNetns(t, newNetns(t, prefix+"-"+dp), func(ipt *Iptables, links *Links) error {
				d, err := openKernelDP(dp, ipt, ExternalInterfaces("eth0"))
				if err != nil {
					return err
				}
				defer d.close()
				return f(t, d, &Syncer{Datapath: d.Datapath, Links: links, Log: logr.Discard()})
			})
		})
	}
}

// TestNftablesSyncRepairsEditedRule: edits to our nftables table as `nft replace rule` and
// `nft add rule` make them (without our comment) — the dispatch replaced by a DNAT elsewhere, a refusal replaced by an
// accept — are found by the next full sync, reported rule by rule, and repaired; the sync after
// finds nothing and writes nothing. (The nftables datapath reads back each rule's comment and
// number of expressions: an edit that keeps both goes unseen.)
func TestNftablesSyncRepairsEditedRule(t *testing.T) {
	ns := newNetns(t, "nftdriftedit")
	st, local := everyShape(), ExternalInterfaces("eth0")
	rs := nftables.Render(NftablesInput(st, local))
	svc := rs.Chain("services")
	table := &gnft.Table{Name: nftables.TableName, Family: nftables.TableFamily}
	edits := []struct {
		name  string
		chain string
		edit  func(c *gnft.Conn, rules []*gnft.Rule)
		want  string
	}{
		{"the services' dispatch replaced by a DNAT elsewhere", svc.Name, func(c *gnft.Conn, rules []*gnft.Rule) {
			c.ReplaceRule(&gnft.Rule{Table: table, Chain: rules[0].Chain, Handle: rules[0].Handle, Exprs: []expr.Any{
				&expr.Immediate{Register: 1, Data: []byte{192, 0, 2, 1}}, &expr.Immediate{Register: 2, Data: []byte{0, 9}},
				&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true}}})
		}, fmt.Sprintf("chain %s: rule 1: wrote %q (%d expressions), found comment \"\" (3 expressions)",
			svc.Name, svc.Rules[0].Text, len(svc.Rules[0].Exprs))},
		{"a refusal replaced by an accept", "input", func(c *gnft.Conn, rules []*gnft.Rule) {
			_ = c.DelRule(rules[1])
			c.AddRule(&gnft.Rule{Table: table, Chain: rules[1].Chain, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}})
		}, "chain input: rule 2: wrote"},
	}
	inNetns(t, ns, func(ipt *Iptables, links *Links) error {
		d, err := openKernelDP(DatapathNftables, ipt, local)
		if err != nil {
			return err
		}
		defer d.close()
		s := &Syncer{Datapath: d.Datapath, Links: links, Log: testr.New(t)}
		ctx := context.Background()
		if _, err := s.Sync(ctx, st, true); err != nil {
			return err
		}
		other, err := gnft.New()
		if err != nil {
			return err
		}
		for _, e := range edits {
			rules, err := other.GetRules(table, &gnft.Chain{Name: e.chain, Table: table})
			if err != nil || len(rules) == 0 {
				return fmt.Errorf("%s: rules of chain %s: %d (err %v)", e.name, e.chain, len(rules), err)
			}
			e.edit(other, rules)
			if err := other.Flush(); err != nil {
				return fmt.Errorf("%s: %w", e.name, err)
			}
			res, err := s.Sync(ctx, st, true)
			if err != nil {
				return err
			}
			if len(res.Drift) != 1 || !strings.HasPrefix(res.Drift[0], e.want) || !res.Wrote {
				t.Errorf("%s: drift %q (wrote %v), want [%q…] and a repair", e.name, res.Drift, res.Wrote, e.want)
			}
			if res, err = s.Sync(ctx, st, true); err != nil || len(res.Drift) != 0 || res.Wrote {
				t.Errorf("%s: the resync after the repair: drift %q, wrote %v, err %v; want nothing", e.name, res.Drift, res.Wrote, err)
			}
			if d, err := d.drifted(ctx, st); err != nil || len(d) != 0 {
				t.Errorf("%s: after the repair the kernel differs: %q (err %v)", e.name, d, err)
			}
		}
		return nil
	})
}

// TestCleanupKeepsGoingNftables: with our nftables table held by another process (a table of our
// name that its socket owns: every transaction of ours is refused), cleanup reports the failure and
// still removes the addresses and their UDP conntrack entries; once the table is free, a second
// cleanup succeeds.
func TestCleanupKeepsGoingNftables(t *testing.T) {
	ns := newNetns(t, "cleannftheld")
	var d kernelDP
	inNetns(t, ns, func(ipt *Iptables, links *Links) error {
		var err error
		if d, err = openKernelDP(DatapathNftables, ipt, ExternalInterfaces("eth0")); err != nil {
			return err
		}
		_, err = (&Syncer{Datapath: d.Datapath, Links: links, Log: logr.Discard()}).Sync(context.Background(), everyShape(), true)
		return err
	})
	defer d.close()
	plantConntrack(t, ns)
	release := ns.TakeNftTable(t, nftables.TableName)
	inNetns(t, ns, func(_ *Iptables, links *Links) error {
		if err := Cleanup(links, d.Datapath); err == nil || !strings.Contains(err.Error(), "table inet magic-ip") || !errors.Is(err, os.ErrPermission) {
			t.Errorf("cleanup with the table held: %v; want our table's deletion refused (EPERM)", err)
		}
		return nil
	})
	checkUnaddressed(t, ns)
	release()
	inNetns(t, ns, func(_ *Iptables, links *Links) error {
		if err := Cleanup(links, d.Datapath); err != nil {
			t.Errorf("cleanup once the table is free: %v", err)
		}
		return nil
	})
}
