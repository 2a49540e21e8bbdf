package agent

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"syscall"
	"testing"

	"github.com/go-logr/logr"

	"github.com/magic-ip/magic-ip/agent/nftables"
)

// BenchmarkSyncOneChange: the cost of one sync that changes one producer (a TCP port's, so no
// conntrack flush), per datapath, with 1, 100 and 1,000 MagicIPs × 3 ports on the node, in a
// fresh namespace, with the CPU time per op beside the wall time (cpu-ns/op: steadier on a shared
// machine). Each op is one Sync: iptables runs one iptables-restore of the changed chain;
// nftables writes the changed map elements in one netlink transaction.
func BenchmarkSyncOneChange(b *testing.B) {
	for _, dp := range []string{DatapathIptables, DatapathNftables} {
		for _, n := range []int{1, 100, 1000} {
			b.Run(fmt.Sprintf("%s/%d", dp, n), func(b *testing.B) {
				ns := newNetns(b, fmt.Sprintf("bench%s%d", dp[:3], n))
				inNetns(b, ns, func(ipt *Iptables, links *Links) error {
					var d Datapath = &IptablesDatapath{Ipt: ipt, Local: ExternalInterfaces("eth0"), Log: logr.Discard()}
					if dp == DatapathNftables {
						k, err := nftables.NewKernel(-1)
						if err != nil {
							return err
						}
						defer k.Close()
						d = &NftablesDatapath{NFT: &nftables.Datapath{Kernel: k}, Local: ExternalInterfaces("eth0")}
					}
					return syncOneChange(b, &Syncer{Datapath: d, Links: links, Log: logr.Discard()}, n)
				})
			})
		}
	}
}

// processCPU is the CPU time, user and system, that this process (every thread: the garbage
// collector's too) and its waited-for children (iptables-restore) used so far, in nanoseconds.
func processCPU() int64 {
	var total int64
	for _, who := range []int{syscall.RUSAGE_SELF, syscall.RUSAGE_CHILDREN} {
		var ru syscall.Rusage
		_ = syscall.Getrusage(who, &ru)
		total += ru.Utime.Nano() + ru.Stime.Nano()
	}
	return total
}

// fleetOneMoved is fleet(n, 0), and a copy whose first producer moved to another address (the
// same number of producers: only map elements change).
func fleetOneMoved(n int) (st, moved State) {
	st = fleet(n, 0)
	moved = st
	moved.Services = slices.Clone(st.Services)
	eps := slices.Clone(moved.Services[0].Endpoints)
	eps[0].Addr = netip.AddrPortFrom(netip.MustParseAddr("10.250.0.1"), eps[0].Addr.Port())
	moved.Services[0].Endpoints = eps
	return st, moved
}

// syncOneChange syncs fleet(n, 0), then alternates it with a copy whose first producer moved.
func syncOneChange(b *testing.B, s *Syncer, n int) error {
	ctx := context.Background()
	st, moved := fleetOneMoved(n)
	if _, err := s.Sync(ctx, st, true); err != nil {
		return err
	}
	s.WaitFlushes()
	states := []State{moved, st}
	b.ResetTimer()
	cpu0 := processCPU()
	defer func() { b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op") }()
	for i := range b.N {
		res, err := s.Sync(ctx, states[i%2], false)
		if err != nil {
			return err
		}
		s.WaitFlushes() // counted, as when the flush ran inside Sync
		if !res.Wrote {
			return fmt.Errorf("sync %d wrote nothing", i)
		}
	}
	return nil
}
