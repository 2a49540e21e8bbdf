package bench

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/magic-ip/magic-ip/agent"
	"github.com/magic-ip/magic-ip/api/v1alpha1"
	"github.com/magic-ip/magic-ip/test/harness"
)

// syntheticCluster is 100 MagicIPs × 4 ports with 3 Ready producers each on node "bench-node".
func syntheticCluster() ([]v1alpha1.MagicIP, []corev1.Pod) {
	var mips []v1alpha1.MagicIP
	var pods []corev1.Pod
	for i := range 100 {
		name := fmt.Sprintf("svc-%03d", i)
		m := v1alpha1.MagicIP{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1alpha1.MagicIPSpec{
			Address:  netip.AddrFrom4([4]byte{169, 254, byte(1 + i/200), byte(1 + i%200)}).String(),
			Producer: v1alpha1.Producer{Namespace: "ns", Selector: v1alpha1.LabelSelector{MatchLabels: map[string]string{"app": name}}},
		}}
		for p := range 4 {
			m.Spec.Ports = append(m.Spec.Ports, v1alpha1.MagicIPPort{Name: fmt.Sprintf("p%d", p), Port: int32(8000 + p), Protocol: []v1alpha1.Protocol{"TCP", "UDP"}[p%2]})
		}
		mips = append(mips, m)
		for k := range 3 {
			pods = append(pods, corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: fmt.Sprintf("%s-%d", name, k), Labels: map[string]string{"app": name}},
				Spec:       corev1.PodSpec{NodeName: "bench-node"},
				Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: fmt.Sprintf("10.244.%d.%d", 1+(i*3+k)/250, 1+(i*3+k)%250),
					Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
			})
		}
	}
	return mips, pods
}

// BenchmarkAgentSync: the agent's sync for 100 MagicIPs × 4 ports × 3 producers, in a fresh
// network namespace with real iptables: first (full) sync, a sync after one producer change, an
// idle sync — each with its iptables process count — and the idle full (drift-checking) resync
// alone and beside 10,000 foreign rules (see resyncCost).
func BenchmarkAgentSync(b *testing.B) {
	harness.RequireRoot(b)
	ns, err := harness.NewNetns(harness.RunPrefix() + "-syncbench")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = ns.Delete() })
	if _, err := ns.Run(b.Context(), "ip", "link", "add", "cni0", "type", "bridge"); err != nil {
		b.Fatal(err)
	}
	mips, pods := syntheticCluster()
	rounds := trials(50, 5)
	var cold, change, idle []sample
	var resyncs map[string][]sample
	err = ns.Do(func() error {
		ipt, err := agent.NewIptables()
		if err != nil {
			return err
		}
		links, err := agent.NewLinks(agent.DefaultDummyInterface)
		if err != nil {
			return err
		}
		defer links.Close()
		s := &agent.Syncer{Datapath: &agent.IptablesDatapath{Ipt: ipt, Local: agent.ExternalInterfaces("eth0"), Log: logr.Discard()}, Links: links, Log: logr.Discard()}
		m := syncMeter{s: s, ipt: ipt}
		if err := m.run(&cold, agent.Desired(mips, pods, "bench-node", "cni0"), true); err != nil {
			return err
		}
		var st agent.State
		for i := range rounds {
			p := &pods[i%len(pods)]
			p.Status.Conditions[0].Status = corev1.ConditionFalse
			st = agent.Desired(mips, pods, "bench-node", "cni0")
			p.Status.Conditions[0].Status = corev1.ConditionTrue
			if err := m.run(&change, st, false); err != nil {
				return err
			}
			if err := m.run(&idle, st, false); err != nil {
				return err
			}
		}
		if resyncs, err = m.resyncCost(st, trials(5, 1), trials(10, 5)); err != nil {
			return err
		}
		return agent.Cleanup(links, &agent.IptablesDatapath{Ipt: ipt})
	})
	if err != nil {
		b.Fatal(err)
	}
	const sc = "agent sync, 100 MagicIPs × 4 ports × 3 producers"
	ds, ex := stats(cold)
	record(row{Scenario: sc, Figure: fmt.Sprintf("first sync (%d execs)", ex), Value: percentile(ds, 50), Unit: "ms"})
	ds, ex = stats(change)
	p99 := percentile(ds, 99)
	goal(sc, fmt.Sprintf("one producer changed, p99 of %d", len(ds)), p99, "ms", "≤ 50 ms", p99 <= 50)
	record(row{Scenario: sc, Figure: fmt.Sprintf("one producer changed: wall p50 (CPU p50, agent + iptables processes, %s ms: less moved by the shared machine)",
		trim(percentile(cpus(change), 50))), Value: percentile(ds, 50), Unit: "ms"})
	var flushes, whole []time.Duration
	for _, s := range change {
		if s.flush > 0 {
			flushes = append(flushes, s.flush)
		}
		whole = append(whole, s.d+s.flush)
	}
	record(row{Scenario: sc, Figure: fmt.Sprintf("one producer changed: its UDP conntrack flush, after the sync returned (background), p50 of %d", len(flushes)),
		Value: percentile(flushes, 50), Unit: "ms"})
	record(row{Scenario: sc, Figure: fmt.Sprintf("one producer changed: the sync and its flush end to end, p50 (p99 %s ms)", trim(percentile(whole, 99))),
		Value: percentile(whole, 50), Unit: "ms"})
	goal(sc, "iptables execs per change sync", float64(ex), "execs", "≤ 3", ex <= 3)
	_, ex = stats(idle)
	goal(sc, "iptables execs per idle sync", float64(ex), "execs", "0", ex == 0)
	resyncRows(sc, resyncs)
}

// sample is one sync: its wall time, its CPU time (the benchmark process's and its children's, the
// iptables processes: less moved than wall time by the other work on a shared machine) and its
// iptables process count.
type sample struct {
	d, cpu time.Duration
	execs  int64
	// flush is how long the background conntrack flush the sync queued ran on after it returned
	// (0: none queued).
	flush time.Duration
}

// cpuTime is the CPU time used so far by this process and its waited-for children.
func cpuTime() time.Duration {
	var self, children syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &children)
	var total time.Duration
	for _, tv := range []syscall.Timeval{self.Utime, self.Stime, children.Utime, children.Stime} {
		total += time.Duration(tv.Nano())
	}
	return total
}

// stats returns the durations of ss and their largest exec count.
func stats(ss []sample) ([]time.Duration, int64) {
	var ds []time.Duration
	var maxExecs int64
	for _, s := range ss {
		ds = append(ds, s.d)
		maxExecs = max(maxExecs, s.execs)
	}
	return ds, maxExecs
}

// syncMeter times the syncs of one Syncer and counts their iptables processes.
type syncMeter struct {
	s   *agent.Syncer
	ipt *agent.Iptables
}

// run times one sync, then (untimed in d) waits for the conntrack flush it queued, if any, so
// that the next sample starts with none running: flush is from the sync's return to the flush's
// end.
func (m syncMeter) run(into *[]sample, st agent.State, full bool) error {
	e0, c0, t0 := m.ipt.Execs(), cpuTime(), time.Now()
	res, err := m.s.Sync(context.Background(), st, full)
	if err != nil {
		return err
	}
	smp := sample{d: time.Since(t0), cpu: cpuTime() - c0, execs: m.ipt.Execs() - e0}
	if res.FlushQueued > 0 {
		t1 := time.Now()
		m.s.WaitFlushes()
		smp.flush = time.Since(t1)
	}
	*into = append(*into, smp)
	return nil
}

// foreignSets are the rule sets a full resync is measured beside: none, 10,000 kube-proxy-style
// ClusterIP rules in nat (a table the resync must read), and as many in mangle (a table it has
// no reason to read: a CNI's or a firewall's).
var foreignSets = []struct{ name, table string }{
	{"alone", ""},
	{"beside 10,000 foreign nat rules (kube-proxy-style)", "nat"},
	{"beside 10,000 foreign mangle rules", "mangle"},
}

// resyncCost measures idle full resyncs of st (already applied) beside each foreign set: blocks
// rounds, each running per resyncs per set in turn, so that the sets share the machine's
// background alike. The foreign rules sit behind our jumps (appended), so nothing drifts.
func (m syncMeter) resyncCost(st agent.State, blocks, per int) (map[string][]sample, error) {
	ctx := context.Background()
	out := map[string][]sample{}
	for range blocks {
		for _, set := range foreignSets {
			load, unload := foreignRules(set.table, 10000, "-A %s")
			if set.table != "" {
				if err := m.ipt.Restore(ctx, []byte(load)); err != nil {
					return nil, fmt.Errorf("load foreign rules: %w", err)
				}
			}
			for range per {
				into := out[set.name]
				if err := m.run(&into, st, true); err != nil {
					return nil, err
				}
				out[set.name] = into
			}
			if set.table != "" {
				if err := m.ipt.Restore(ctx, []byte(unload)); err != nil {
					return nil, fmt.Errorf("unload foreign rules: %w", err)
				}
			}
		}
	}
	return out, nil
}

// cpus are the CPU times of ss.
func cpus(ss []sample) (ds []time.Duration) {
	for _, s := range ss {
		ds = append(ds, s.cpu)
	}
	return ds
}

// resyncRows records the resync figures per set: wall time p50 (and p99), CPU time p50, and both
// p50s as ratios of the set alone.
func resyncRows(sc string, resyncs map[string][]sample) {
	alone, _ := stats(resyncs[foreignSets[0].name])
	base, baseCPU := percentile(alone, 50), percentile(cpus(resyncs[foreignSets[0].name]), 50)
	for i, set := range foreignSets {
		ds, ex := stats(resyncs[set.name])
		p50, cpu := percentile(ds, 50), percentile(cpus(resyncs[set.name]), 50)
		fig := fmt.Sprintf("idle full resync %s (%d resyncs, %d execs, 0 writes)", set.name, len(ds), ex)
		record(row{Scenario: sc, Figure: fig + ": wall p50 (p99 " + trim(percentile(ds, 99)) + " ms)", Value: p50, Unit: "ms"})
		record(row{Scenario: sc, Figure: fig + ": CPU p50, agent + iptables processes", Value: cpu, Unit: "ms"})
		if i > 0 && base > 0 && baseCPU > 0 {
			record(row{Scenario: sc, Figure: "idle full resync " + set.name + " ÷ alone: wall p50; CPU p50 " + trim(cpu/baseCPU) + "×", Value: p50 / base, Unit: "×"})
		}
	}
}

// foreignRules returns iptables-restore input that loads n kube-proxy-style ClusterIP rules (none
// matching any traffic) into one chain of table, jumped from its PREROUTING and OUTPUT with
// jumpFmt ("-A %s" to append, "-I %s 1" to insert first), and the input that removes them.
func foreignRules(table string, n int, jumpFmt string) (load, unload string) {
	var lb, ub strings.Builder
	fmt.Fprintf(&lb, "*%s\n:%s - [0:0]\n", table, benchChain)
	for i := range n {
		fmt.Fprintf(&lb, "-A %s -d 10.96.%d.%d/32 -p tcp -m comment --comment \"bench/svc-%05d:http cluster IP\" -m tcp --dport 80 -j RETURN\n",
			benchChain, i/250, 1+i%250, i)
	}
	fmt.Fprintf(&ub, "*%s\n", table)
	for _, ch := range []string{"PREROUTING", "OUTPUT"} {
		fmt.Fprintf(&lb, jumpFmt+" -m comment --comment %q -j %s\n", ch, benchComment, benchChain)
		fmt.Fprintf(&ub, "-D %s -m comment --comment %q -j %s\n", ch, benchComment, benchChain)
	}
	lb.WriteString("COMMIT\n")
	fmt.Fprintf(&ub, "-F %s\n-X %s\nCOMMIT\n", benchChain, benchChain)
	return lb.String(), ub.String()
}

// BenchmarkAgentRSS: the agent's resident memory on a node with 110 local pods among 1,000 in the
// cluster (the cache holds only its own node's pods).
func BenchmarkAgentRSS(b *testing.B) {
	cp := harness.StartControlPlane(b)
	c := harness.NewCluster(b, cp, harness.ClusterOptions{Nodes: 1})
	n := c.Nodes[0]
	ctx := b.Context()
	if err := c.EnsureNamespace(ctx, "load", nil); err != nil {
		b.Fatal(err)
	}
	if err := createPods(ctx, cp, n.Name, 1000, 110); err != nil {
		b.Fatal(err)
	}
	mips, _ := syntheticCluster()
	for _, m := range mips[:10] {
		m.Spec.Producer.Namespace = "load"
		if err := cp.Client.Create(ctx, &m); err != nil {
			b.Fatal(err)
		}
	}
	p := harness.StartAgent(b, c, n, agentBin, "--resync-period", "1s", "-v", "0")
	if err := harness.WaitAgentReady(ctx, n.Netns, 30*time.Second); err != nil {
		b.Fatalf("agent not ready after 30 s: %v", err)
	}
	hc := n.Netns.HTTPClient(time.Second)
	// Settle: sample until three consecutive readings, a resync period apart, agree within 1 MiB.
	var rss []float64
	for len(rss) < 3 || rss[len(rss)-1]-rss[len(rss)-3] > 1 || rss[len(rss)-3]-rss[len(rss)-1] > 1 {
		if len(rss) > 30 {
			break
		}
		v, err := procStatus(p.Pid(), "VmRSS")
		if err != nil {
			b.Fatal(err)
		}
		rss = append(rss, v)
		waitUntil := time.Now().Add(time.Second)
		for time.Now().Before(waitUntil) {
			_, _ = hc.Get("http://127.0.0.1:9403/healthz") // paced by the HTTP round trips, not a sleep
		}
	}
	v := rss[len(rss)-1]
	goal("agent memory", "RSS, 110 local pods among 1,000", v, "MiB", "≤ 30 MiB", v <= 30)
	for _, field := range []string{"RssAnon", "RssFile"} {
		if x, err := procStatus(p.Pid(), field); err == nil {
			record(row{Scenario: "agent memory", Figure: field + " (of RSS)", Value: x, Unit: "MiB"})
		}
	}
}

// createPods creates total pods through the API, local of them bound to node, the rest to other
// (nonexistent) nodes, with 8 concurrent writers.
func createPods(ctx context.Context, cp *harness.ControlPlane, node string, total, local int) error {
	work := make(chan int)
	errs := make(chan error, total)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for i := range work {
				nodeName := fmt.Sprintf("other-%d", i%50)
				if i < local {
					nodeName = node
				}
				pod := &corev1.Pod{
					ObjectMeta: metav1.ObjectMeta{Namespace: "load", Name: fmt.Sprintf("pod-%04d", i), Labels: map[string]string{"app": fmt.Sprintf("svc-%03d", i%10)}},
					Spec:       corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}}},
				}
				if err := cp.Client.Create(ctx, pod); err != nil {
					errs <- err
				}
			}
		})
	}
	for i := range total {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	return <-errs
}

// procStatus reads a kB field of /proc/<pid>/status (VmRSS, RssAnon, RssFile) in MiB.
func procStatus(pid int, field string) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == field+":" {
			kb, err := strconv.ParseFloat(f[1], 64)
			return kb / 1024, err
		}
	}
	return 0, fmt.Errorf("no %s for pid %d", field, pid)
}
