package bench

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/magic-ip/magic-ip/agent"
	"github.com/magic-ip/magic-ip/agent/nftables"
	"github.com/magic-ip/magic-ip/api/v1alpha1"
	"github.com/magic-ip/magic-ip/test/harness"
)

// BenchmarkSyncCurve: what one sync costs against the size of the node's MagicIP set (1, 100 and
// 1,000 MagicIPs × 3 ports × 2 producers), per datapath, beside 10,000 foreign kube-proxy-style
// nat rules, in a fresh network namespace per size: the first sync, a sync that changes one
// producer (a TCP port's) and an idle full (drift-checking) resync, changes and resyncs
// interleaved. Each change sync starts with the CPU caches cold at every size (see coldCaches): an
// idle resync at 1,000 MagicIPs (listing 1,000 addresses, rendering 3,000 services) leaves
// nothing of the agent's or the kernel's working set in the caches, one at 1 MagicIP leaves all
// of it, so after a resync alone the ratio of the two measured the caches more than the work. For
// iptables the change sync is broken down into its parts, each timed alone
// right after it: the agent's render and diff, a process start (iptables-restore --version), and
// the restore of the same change input; the resync into render, iptables-save and parsing.
func BenchmarkSyncCurve(b *testing.B) {
	harness.RequireRoot(b)
	sizes, rounds := []int{1, 100, 1000}, trials(30, 3)
	if *quick {
		sizes = []int{1, 100}
	}
	for _, dp := range []string{agent.DatapathIptables, agent.DatapathNftables} {
		var at1 float64
		for _, n := range sizes {
			c, err := syncCurve(b, dp, n, rounds)
			if err != nil {
				b.Fatalf("%s, %d MagicIPs: %v", dp, n, err)
			}
			change := percentile(c.change, 50)
			if n == 1 {
				at1 = change
			}
			c.rows(dp, n, at1)
		}
	}
	if err := restoreVsTable(b, trials(20, 3)); err != nil {
		b.Fatal(err)
	}
}

// restoreVsTable: what one iptables-restore (iptables-nft) of a one-chain change (a DNAT rule)
// costs against what nat already holds, in one namespace: nothing; then 4,000 chains of one rule
// like our service chains' (comment and statistic matches, DNAT) — as many chains as 1,000
// MagicIPs × 3 ports give us, one per port and one hairpin chain per address — that no hook
// reaches; then the same chains and the changed one reached from PREROUTING through one dispatch
// chain, as ours are. The last step's extra cost follows the chains reachable from a hook: most
// likely the kernel validating every chain reachable from the table's base chains when a
// transaction changes one of them (nf_tables' loop and hook checks), which any tool writing the
// table pays.
func restoreVsTable(b *testing.B, reps int) error {
	ns, err := harness.NewNetns(harness.RunPrefix() + "-restorefloor")
	if err != nil {
		return err
	}
	defer func() { _ = ns.Delete() }()
	change := []byte("*nat\n:MAGIC-IP-T - [0:0]\n-A MAGIC-IP-T -p tcp -j DNAT --to-destination 10.1.1.1:80\nCOMMIT\n")
	var chains, reach strings.Builder
	chains.WriteString("*nat\n")
	reach.WriteString("*nat\n:BENCH-DISPATCH - [0:0]\n:MAGIC-IP-T - [0:0]\n-A PREROUTING -j BENCH-DISPATCH\n-A BENCH-DISPATCH -d 10.4.0.1/32 -j MAGIC-IP-T\n")
	for i := range 4000 {
		fmt.Fprintf(&chains, ":BENCH-C%04d - [0:0]\n-A BENCH-C%04d -p tcp -m comment --comment \"bench %d\" -m statistic --mode random --probability 0.5 -j DNAT --to-destination 10.2.%d.%d:80\n", i, i, i, i/250, 1+i%250)
		fmt.Fprintf(&reach, "-A BENCH-DISPATCH -d 10.3.%d.%d/32 -j BENCH-C%04d\n", i/250, 1+i%250, i)
	}
	chains.WriteString("COMMIT\n")
	reach.WriteString("COMMIT\n")
	var p50 []float64
	err = ns.Do(func() error {
		ipt, err := agent.NewIptables()
		if err != nil {
			return err
		}
		for i, load := range []string{"", chains.String(), reach.String()} {
			if load != "" {
				if err := ipt.Restore(b.Context(), []byte(load)); err != nil {
					return fmt.Errorf("load step %d: %w", i, err)
				}
			}
			var ds []time.Duration
			for range reps {
				t0 := time.Now()
				if err := ipt.Restore(b.Context(), change); err != nil {
					return err
				}
				ds = append(ds, time.Since(t0))
			}
			p50 = append(p50, percentile(ds, 50))
		}
		return nil
	})
	if err != nil {
		return err
	}
	const sc = "sync cost vs size: iptables-restore (iptables-nft) of a one-chain change against what nat holds"
	record(row{Scenario: sc, Figure: fmt.Sprintf("nat empty, p50 of %d", reps), Value: p50[0], Unit: "ms"})
	record(row{Scenario: sc, Figure: "+ 4,000 chains of one rule like our service chains', no hook reaches them: p50", Value: p50[1], Unit: "ms"})
	record(row{Scenario: sc, Figure: fmt.Sprintf("+ those and the changed chain reached from PREROUTING: p50 (%s µs per reachable chain)", trim(1000*(p50[2]-p50[1])/4000)), Value: p50[2], Unit: "ms"})
	return nil
}

// curve holds one datapath's samples at one size.
type curve struct {
	first, firstApply      time.Duration
	change, resync         []time.Duration
	resyncRead             []time.Duration // nftables: full resyncs after a foreign commit
	changeApply            []time.Duration // the datapath's part of each change sync
	savedLines             int             // lines of iptables-save (ours and the foreign rules)
	render, start, restore []time.Duration
	save, parse            []time.Duration
	inputLines             int
	// allocs is the heap allocations of each change sync (the whole process's: the sync is all
	// that runs), each count held as that many milliseconds so that percentile gives it back;
	// tx, the nftables datapath's transaction of the last one.
	allocs []time.Duration
	tx     nftables.Transaction
	// renderer renders as the datapath does (lines of unchanged services reused); rendered is its
	// last output.
	renderer agent.Renderer
	rendered agent.Ruleset
	// conv and nft convert and render as the nftables datapath does (a change sync patches).
	conv agent.NftablesConverter
	nft  nftables.Renderer
	// hostWith and hostWithout: loopback request/response rates with and without our rules.
	hostWith, hostWithout []float64
}

// rows records one size's figures; at1 is the change p50 at 1 MagicIP (the goal's base).
func (c curve) rows(dp string, n int, at1 float64) {
	sc := fmt.Sprintf("sync cost vs size, %s datapath, beside 10,000 foreign nat rules", dp)
	size := fmt.Sprintf("%d × 3 ports × 2 producers", n)
	record(row{Scenario: sc, Figure: fmt.Sprintf("%s: first sync (the datapath's Apply %s ms; the rest: the addresses; the UDP conntrack flush runs after it, in the background)", size, trim(ms(c.firstApply))), Value: ms(c.first), Unit: "ms"})
	change := percentile(c.change, 50)
	record(row{Scenario: sc, Figure: fmt.Sprintf("%s: one producer changed, caches cold, p50 of %d (p99 %s ms; the datapath's Apply p50 %s ms)", size, len(c.change),
		trim(percentile(c.change, 99)), trim(percentile(c.changeApply, 50))), Value: change, Unit: "ms"})
	idle := "idle full resync"
	if len(c.resyncRead) > 0 {
		idle += " (nothing else committed since the last read: the table is not read back)"
	}
	record(row{Scenario: sc, Figure: fmt.Sprintf("%s: %s, p50 of %d (p99 %s ms)", size, idle, len(c.resync), trim(percentile(c.resync, 99))), Value: percentile(c.resync, 50), Unit: "ms"})
	if len(c.resyncRead) > 0 {
		record(row{Scenario: sc, Figure: fmt.Sprintf("%s: full resync after a foreign iptables-nft commit (the table read back), p50 of %d", size, len(c.resyncRead)), Value: percentile(c.resyncRead, 50), Unit: "ms"})
	}
	if n > 1 && at1 > 0 {
		goal(sc, fmt.Sprintf("%s: one producer changed ÷ the same at 1 MagicIP (p50s, caches cold at both)", size), change/at1, "×", "≤ 2×", change/at1 <= 2)
	}
	record(row{Scenario: sc, Figure: size + ": one producer changed, heap allocations of the sync, p50", Value: percentile(c.allocs, 50), Unit: "allocations"})
	if len(c.hostWith) > 0 {
		with, without := median(c.hostWith), median(c.hostWithout)
		record(row{Scenario: sc, Figure: fmt.Sprintf("%s: the node's other traffic, UDP request/response over loopback (every packet through the input hook) with our rules ÷ without, medians of %d alternations (%.0f and %.0f per s)",
			size, len(c.hostWith), with, without), Value: 100 * with / without, Unit: "%"})
	}
	if len(c.start) == 0 {
		record(row{Scenario: sc, Figure: fmt.Sprintf("%s: one producer changed, its netlink transaction: %d chains added, flushed or deleted, %d rules added; set and map elements added or deleted",
			size, c.tx.Chains, c.tx.Rules), Value: float64(c.tx.Elements), Unit: "elements"})
		record(row{Scenario: sc, Figure: size + ": change sync, its convert and render alone (NftablesConverter and nftables.Renderer; the rest of the Apply is the comparison and the netlink transaction), p50", Value: percentile(c.render, 50), Unit: "ms"})
		return
	}
	parts := fmt.Sprintf("%s: change sync, parts timed alone, p50s: render + diff %s ms, process start (iptables-restore --version) %s ms, the restore of its %d lines",
		size, trim(percentile(c.render, 50)), trim(percentile(c.start, 50)), c.inputLines)
	record(row{Scenario: sc, Figure: parts, Value: percentile(c.restore, 50), Unit: "ms"})
	resync := fmt.Sprintf("%s: resync, parts timed alone, p50s: parse + compare %s ms, iptables-save of %d lines", size, trim(percentile(c.parse, 50)), c.savedLines)
	record(row{Scenario: sc, Figure: resync, Value: percentile(c.save, 50), Unit: "ms"})
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// syncCurve measures one datapath at one size in its own namespace.
func syncCurve(b *testing.B, dp string, n, rounds int) (curve, error) {
	ns, err := harness.NewNetns(fmt.Sprintf("%s-curve%s%d", harness.RunPrefix(), dp[:3], n))
	if err != nil {
		return curve{}, err
	}
	defer func() { _ = ns.Delete() }()
	if _, err := ns.Run(b.Context(), "ip", "link", "add", "cni0", "type", "bridge"); err != nil {
		return curve{}, err
	}
	var c curve
	err = ns.Do(func() error {
		ipt, err := agent.NewIptables()
		if err != nil {
			return err
		}
		load, _ := foreignRules("nat", 10000, "-A %s")
		if err := ipt.Restore(b.Context(), []byte(load)); err != nil {
			return fmt.Errorf("load foreign rules: %w", err)
		}
		links, err := agent.NewLinks(agent.DefaultDummyInterface)
		if err != nil {
			return err
		}
		defer links.Close()
		local := agent.ExternalInterfaces("eth0")
		var d agent.Datapath = &agent.IptablesDatapath{Ipt: ipt, Local: local, Log: logr.Discard()}
		if dp == agent.DatapathNftables {
			k, err := nftables.NewKernel(-1)
			if err != nil {
				return err
			}
			defer k.Close()
			d = &agent.NftablesDatapath{NFT: &nftables.Datapath{Kernel: k}, Local: local}
		}
		s := &agent.Syncer{Datapath: &timedDatapath{Datapath: d}, Links: links, Log: logr.Discard()}
		if c, err = measureCurve(s, ipt, dp == agent.DatapathIptables, n, rounds); err != nil {
			return err
		}
		if nft, ok := d.(*agent.NftablesDatapath); ok {
			c.tx = nft.NFT.Kernel.Last()
		}
		c.hostWith, c.hostWithout, err = hostTraffic(s, curveState(n), trials(7, 1))
		return err
	})
	return c, err
}

// hostTraffic measures what our rules cost the node's other traffic: UDP request/response over
// the namespace's loopback (through the input hook, where our refusal rules are: every packet to
// the host goes through that chain) with our rules (st synced) and without (the datapath's
// Cleanup), alternated reps times; with and without are the rates, in requests per second. It
// runs in the namespace (ns.Do) and leaves st synced.
func hostTraffic(s *agent.Syncer, st agent.State, reps int) (with, without []float64, err error) {
	ctx := context.Background()
	for range reps {
		if _, err := s.Sync(ctx, st, true); err != nil {
			return nil, nil, err
		}
		r, err := settledRR()
		if err != nil {
			return nil, nil, err
		}
		with = append(with, r)
		if err := s.Datapath.Cleanup(ctx); err != nil {
			return nil, nil, err
		}
		if r, err = settledRR(); err != nil {
			return nil, nil, err
		}
		without = append(without, r)
	}
	_, err = s.Sync(ctx, st, true)
	return with, without, err
}

// settledRR is loopbackRR for 500 ms after 200 ms of it not counted: what the write or the
// cleanup before it left to the kernel (a table's destruction runs after an RCU grace period) is
// done before the rate is measured.
func settledRR() (float64, error) {
	if _, err := loopbackRR(200 * time.Millisecond); err != nil {
		return 0, err
	}
	return loopbackRR(500 * time.Millisecond)
}

// loopbackRR runs UDP request/response over 127.0.0.1 for d and returns the rate. The sockets are
// made by the caller's thread (in the namespace); the echo runs on any.
func loopbackRR(d time.Duration) (float64, error) {
	srv, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer srv.Close()
	go func() {
		buf := make([]byte, 64)
		for {
			n, from, err := srv.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = srv.WriteTo(buf[:n], from)
		}
	}()
	c, err := net.Dial("udp4", srv.LocalAddr().String())
	if err != nil {
		return 0, err
	}
	defer c.Close()
	buf, n := make([]byte, 64), 0
	start := time.Now()
	for time.Since(start) < d {
		if _, err := c.Write(buf[:8]); err != nil {
			return 0, err
		}
		if err := c.SetReadDeadline(time.Now().Add(time.Second)); err != nil {
			return 0, err
		}
		if _, err := c.Read(buf); err != nil {
			return 0, fmt.Errorf("loopback echo: %w", err)
		}
		n++
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// measureCurve: the first sync, then rounds of (one producer changed, idle full resync); for
// iptables each followed by its parts timed alone.
func measureCurve(s *agent.Syncer, ipt *agent.Iptables, parts bool, n, rounds int) (curve, error) {
	ctx := context.Background()
	local := agent.ExternalInterfaces("eth0")
	var c curve
	st := curveState(n)
	timed := func(f func() error) (time.Duration, error) {
		t0 := time.Now()
		err := f()
		return time.Since(t0), err
	}
	var err error
	applied := s.Datapath.(*timedDatapath)
	if c.first, err = timed(func() error { _, err := s.Sync(ctx, st, true); return err }); err != nil {
		return c, err
	}
	// The first sync's conntrack flush (every UDP service: flows may predate the agent) runs on
	// in the background; the changes below move TCP producers and queue none.
	s.WaitFlushes()
	c.firstApply = applied.last
	if !parts {
		c.nft.Render(c.conv.Input(st, local)) // what the datapath's converter and Renderer hold now
	}
	prev := st
	evict := make([]byte, evictBytes)
	for i := range rounds {
		next := moveOne(prev, i)
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		coldCaches(evict)
		d, err := timed(func() error { _, err := s.Sync(ctx, next, false); return err })
		if err != nil {
			return c, err
		}
		runtime.ReadMemStats(&after)
		c.allocs = append(c.allocs, time.Duration(after.Mallocs-before.Mallocs)*time.Millisecond)
		c.change, c.changeApply = append(c.change, d), append(c.changeApply, applied.last)
		if parts {
			if err := c.changeParts(ctx, ipt, local, prev, next); err != nil {
				return c, err
			}
		} else {
			t0 := time.Now()
			if in, changed, ok := c.conv.Patch(next, local); !ok {
				c.nft.Render(in)
			} else if _, _, ok := c.nft.Patch(in, changed); !ok {
				c.nft.Render(in)
			}
			c.render = append(c.render, time.Since(t0))
		}
		prev = next
		if d, err = timed(func() error { _, err := s.Sync(ctx, next, true); return err }); err != nil {
			return c, err
		}
		c.resync = append(c.resync, d)
		if parts {
			if err := c.resyncParts(ctx, ipt, local, next); err != nil {
				return c, err
			}
		}
	}
	if parts {
		return c, nil
	}
	// The nftables datapath reads its table back only when someone else committed since its
	// last read (the ruleset generation moved): the resyncs above read nothing. These do, each
	// after a foreign transaction (an iptables-nft rule added, as a kube-proxy sync would).
	for i := range max(rounds/3, 2) {
		if err := ipt.Restore(ctx, []byte(fmt.Sprintf("*filter\n:BENCH-FOREIGN - [0:0]\n-A BENCH-FOREIGN -p tcp --dport %d -j ACCEPT\nCOMMIT\n", 1000+i))); err != nil {
			return c, fmt.Errorf("foreign commit: %w", err)
		}
		d, err := timed(func() error { _, err := s.Sync(ctx, prev, true); return err })
		if err != nil {
			return c, err
		}
		c.resyncRead = append(c.resyncRead, d)
	}
	return c, nil
}

// evictBytes is more than this machine's last-level cache (48 MiB L3, 2.5 MiB L2 per core).
const evictBytes = 64 << 20

// coldCaches writes a byte of every cache line of buf: what the caches held is evicted, whatever
// ran before, so a sync timed right after finds them as cold at one size as at another, as it
// would on a node whose other work runs between the agent's syncs.
func coldCaches(buf []byte) {
	for i := 0; i < len(buf); i += 64 {
		buf[i]++
	}
}

// timedDatapath times each Apply: the datapath's part of a sync (the rest is the Syncer's own:
// addresses over netlink, conntrack flushes of changed UDP ports).
type timedDatapath struct {
	agent.Datapath
	last time.Duration
}

func (t *timedDatapath) Apply(ctx context.Context, st agent.State, full bool) (bool, []string, error) {
	t0 := time.Now()
	wrote, drift, err := t.Datapath.Apply(ctx, st, full)
	t.last = time.Since(t0)
	return wrote, drift, err
}

// changeParts times, alone, what the change sync from prev to next did: render and diff, a bare
// iptables-restore process, and the restore of the same input (it rewrites the chains that
// changed with what they already hold: the kernel does the same work).
func (c *curve) changeParts(ctx context.Context, ipt *agent.Iptables, local *agent.LocalDetector, prev, next agent.State) error {
	if c.rendered.Chains == nil {
		c.rendered = c.renderer.Render(prev, local)
	}
	t0 := time.Now()
	rules := c.renderer.Render(next, local)
	input := rules.RestoreChanges(c.rendered)
	c.render, c.rendered = append(c.render, time.Since(t0)), rules
	c.inputLines = bytesLines(input)
	t0 = time.Now()
	if err := exec.CommandContext(ctx, "iptables-restore", "--version").Run(); err != nil {
		return fmt.Errorf("iptables-restore --version: %w", err)
	}
	c.start = append(c.start, time.Since(t0))
	t0 = time.Now()
	if err := ipt.Restore(ctx, input); err != nil {
		return err
	}
	c.restore = append(c.restore, time.Since(t0))
	return nil
}

// resyncParts times, alone, the parts of an idle full resync: iptables-save, and parsing its
// output with the comparison against the rendered rules.
func (c *curve) resyncParts(ctx context.Context, ipt *agent.Iptables, local *agent.LocalDetector, st agent.State) error {
	t0 := time.Now()
	saved, err := ipt.Save(ctx)
	if err != nil {
		return err
	}
	c.save = append(c.save, time.Since(t0))
	t0 = time.Now()
	rules := c.renderer.Render(st, local)
	_, _ = agent.ParseSave(saved).Resync(&rules, rules, nil)
	c.parse = append(c.parse, time.Since(t0))
	c.savedLines = bytesLines(saved)
	return nil
}

func bytesLines(b []byte) int {
	n := 0
	for _, x := range b {
		if x == '\n' {
			n++
		}
	}
	return n
}

// curveState is n MagicIPs × 3 ports (TCP, UDP, TCP) × 2 producers on the bridge.
func curveState(n int) agent.State {
	st := agent.State{Addresses: map[string][]netip.Addr{}}
	for i := range n {
		addr := netip.AddrFrom4([4]byte{169, 254, byte(1 + i/200), byte(1 + i%200)})
		st.Addresses["cni0"] = append(st.Addresses["cni0"], addr)
		for p, proto := range []v1alpha1.Protocol{v1alpha1.ProtocolTCP, v1alpha1.ProtocolUDP, v1alpha1.ProtocolTCP} {
			svc := agent.Service{MagicIP: fmt.Sprintf("m%04d", i), PortName: fmt.Sprintf("p%d", p), Address: addr, Port: int32(8000 + p),
				Protocol: proto, Interface: "cni0", WhenNoProducer: v1alpha1.Reject}
			for k := range 2 {
				svc.Endpoints = append(svc.Endpoints, agent.Endpoint{Pod: fmt.Sprintf("ns/m%04d-%d", i, k),
					Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 244, byte(i / 100), byte(1 + 2*(i%100) + k)}), uint16(8000+p))})
			}
			st.Services = append(st.Services, svc)
		}
	}
	return st
}

// moveOne is st with the first producer of one TCP port moved to another address (a new pod):
// MagicIP i%n's first port, so successive rounds touch different MagicIPs (earlier moves stay).
func moveOne(st agent.State, i int) agent.State {
	out := st
	out.Services = slices.Clone(st.Services)
	k := (i % (len(st.Services) / 3)) * 3
	eps := slices.Clone(out.Services[k].Endpoints)
	eps[0].Addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 250, byte(i / 250), byte(1 + i%250)}), eps[0].Addr.Port())
	out.Services[k].Endpoints = eps
	return out
}
