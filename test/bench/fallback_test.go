package bench

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
	"github.com/magic-ip/magic-ip/test/harness"
)

// A producer rollout on one node, side by side: magic-ip with whenNoLocalProducer: Fallback, the
// real kube-proxy (iptables mode, default --iptables-min-sync-period 1s, paced so it is measured
// at its best) with a Service using trafficDistribution: PreferSameNode, and one with
// internalTrafficPolicy: Local. Node 1 holds the three clients and the producer being rolled,
// node 2 a producer Ready throughout. All three peers are probed at once, every 2 ms each,
// through the same rollouts. A second cluster repeats the rollouts with the agent on
// --datapath=nftables, next to the PreferSameNode peer only.
//
// One rollout: the local producer's Ready turns false (t0) and it is deleted gracefully while it
// still listens (a preStop grace); once every peer has stopped sending it new connections, its
// pod goes; a replacement starts NotReady and turns Ready (t1). Figures: connects that failed
// during the rollout, t0 → the first of 20 consecutive connects answered by node 2's producer,
// t1 → the first of 20 consecutive connects answered by the replacement.

const (
	fallbackStreak = 20
	// fallbackTimeout: a connect fails when refused, reset, or not answered (greeting read)
	// within this. Not probeTimeout (200 ms): on this shared 2-core machine both peers' clients
	// saw 200 ms stalls at the same instants (pod netns created or deleted), which are no
	// proxy's doing; a client gives a connect seconds.
	fallbackTimeout = time.Second
)

// fbPeer is one way of reaching the producers, probed from its own client pod on node 1.
type fbPeer struct {
	name, ip string
	d        *nsDialer
	// fallback: new connections are expected to reach node 2's producer while node 1 has none.
	fallback bool
}

type fbEnv struct {
	b              *testing.B
	datapath       string // the agent's --datapath ("": its default)
	c              *harness.Cluster
	kp             *harness.KubeProxy // node 1's
	peers          []fbPeer
	local, remote  *harness.Pod
	next           int
	failed         map[string]int
	toRemote, back map[string][]time.Duration
}

// BenchmarkFallbackRollout measures the rollout of node 1's producer with the three peers, the
// agent with its default datapath (iptables next to kube-proxy in iptables mode); then, in a
// cluster of its own, the agent with --datapath=nftables (one netlink transaction, no process)
// next to kube-proxy PreferSameNode, measured in the same rollouts.
func BenchmarkFallbackRollout(b *testing.B) {
	n := trials(16, 2)
	for _, run := range []struct {
		name, datapath string
		peers          []string
	}{
		{"default", "", []string{fbSameNode, fbLocal}},
		{"nftables", "nftables", []string{fbSameNode}},
	} {
		b.Run(run.name, func(b *testing.B) {
			e := setupFallback(b, run.datapath, run.peers)
			for range n {
				e.rollout()
			}
			e.report(n)
		})
	}
}

const (
	fbSameNode = "kube-proxy PreferSameNode"
	fbLocal    = "kube-proxy iTP Local"
)

// report records the figures of n rollouts; the ratios of the default datapath are the goals.
func (e *fbEnv) report(n int) {
	const sc = "fallback: producer rollout on the consumer's node (NotReady + graceful delete, then a new one Ready; a Ready producer on node 2; a connect every 2 ms per peer, failed = refused or not answered within 1 s)"
	ours := e.peers[0]
	isGoal := e.datapath == ""
	for _, p := range e.peers {
		fails := float64(e.failed[p.name])
		if p.name == ours.name {
			goal(sc, fmt.Sprintf("%s: failed connects over %d rollouts", p.name, n), fails, "connects", "0", fails == 0)
		} else {
			record(row{Scenario: sc, Figure: fmt.Sprintf("%s (next to %s): failed connects over %d rollouts", p.name, ours.name, n), Value: fails, Unit: "connects"})
		}
	}
	for _, fig := range []struct {
		what string
		ds   map[string][]time.Duration
	}{{"local producer NotReady → answers from node 2's producer", e.toRemote}, {"new local producer Ready → answers from it", e.back}} {
		a := percentile(fig.ds[ours.name], 50)
		// max: with 16 rollouts, also the p99 (nearest rank).
		for _, pc := range []float64{50, 100} {
			record(row{Scenario: sc, Figure: fmt.Sprintf("%s, %s %s", ours.name, fig.what, pcName(pc)), Value: percentile(fig.ds[ours.name], pc), Unit: "ms"})
		}
		for _, p := range e.peers[1:] {
			ds := fig.ds[p.name]
			if len(ds) == 0 {
				continue
			}
			k := percentile(ds, 50)
			for _, pc := range []float64{50, 100} {
				record(row{Scenario: sc, Figure: fmt.Sprintf("%s (next to %s), %s %s", p.name, ours.name, fig.what, pcName(pc)), Value: percentile(ds, pc), Unit: "ms"})
			}
			if !p.fallback {
				continue
			}
			figure := fmt.Sprintf("%s p50 / %s p50 (%s)", ours.name, p.name, fig.what)
			if isGoal {
				goal(sc, figure, a/k, "×", "≤ 0.5×", a <= 0.5*k)
			} else {
				record(row{Scenario: sc, Figure: figure, Value: a / k, Unit: "×"})
			}
		}
	}
}

// pcName names a percentile: p50, max.
func pcName(pc float64) string {
	if pc == 100 {
		return "max"
	}
	return fmt.Sprintf("p%.0f", pc)
}

// setupFallback starts the cluster, the producers, the MagicIP and Services, kube-proxy and the
// agents (with --datapath=datapath unless empty), and the clients of the magic-ip peer and of the
// kube-proxy peers named.
func setupFallback(b *testing.B, datapath string, kubeProxyPeers []string) *fbEnv {
	cp, c := twoNodes(b)
	ctx := b.Context()
	n1, n2 := c.Nodes[0], c.Nodes[1]
	e := &fbEnv{b: b, c: c, datapath: datapath, failed: map[string]int{}, toRemote: map[string][]time.Duration{}, back: map[string][]time.Duration{}}
	labels := map[string]string{"app": "apm"}
	e.remote = e.addProducer(n2, "apm-remote", true)
	e.local = e.addProducer(n1, e.nextName(), true)
	mip := &v1alpha1.MagicIP{ObjectMeta: metav1.ObjectMeta{Name: "apm"}, Spec: v1alpha1.MagicIPSpec{
		Address: magicAddr, Ports: []v1alpha1.MagicIPPort{{Name: "apm", Port: port}}, WhenNoLocalProducer: v1alpha1.Fallback,
		Producer: v1alpha1.Producer{Namespace: "apm", Selector: v1alpha1.LabelSelector{MatchLabels: labels}}}}
	if err := cp.Client.Create(ctx, mip); err != nil {
		b.Fatal(err)
	}
	local := corev1.ServiceInternalTrafficPolicyLocal
	services := map[string]*corev1.Service{
		fbSameNode: {ObjectMeta: metav1.ObjectMeta{Namespace: "apm", Name: "apm-same-node"}, Spec: corev1.ServiceSpec{TrafficDistribution: ptr.To(corev1.ServiceTrafficDistributionPreferSameNode)}},
		fbLocal:    {ObjectMeta: metav1.ObjectMeta{Namespace: "apm", Name: "apm-local"}, Spec: corev1.ServiceSpec{InternalTrafficPolicy: &local}},
	}
	for _, name := range kubeProxyPeers {
		svc := services[name]
		svc.Spec.Selector = labels
		svc.Spec.Ports = []corev1.ServicePort{{Name: "apm", Port: port, TargetPort: intstr.FromInt32(port), Protocol: corev1.ProtocolTCP}}
		if err := cp.Client.Create(ctx, svc); err != nil {
			b.Fatal(err)
		}
	}
	e.kp = harness.StartKubeProxy(b, c, n1)
	harness.StartKubeProxy(b, c, n2)
	args := []string{"--resync-period", "10s", "-v", "0"}
	magic := "magic-ip Fallback"
	if datapath != "" {
		args = append(args, "--datapath", datapath)
		magic += " (--datapath=" + datapath + ")"
	}
	for _, n := range c.Nodes {
		harness.StartAgent(b, c, n, agentBin, args...)
	}
	// Probing starts only once the rules exist: connects refused or unreachable before the agent's
	// first sync are no rollout's doing (they were counted as failed before).
	for _, n := range c.Nodes {
		if err := harness.WaitAgentReady(ctx, n.Netns, 30*time.Second); err != nil {
			b.Fatalf("agent on %s: %v", n.Name, err)
		}
	}
	client := func(name string) *nsDialer {
		return newNSDialer(b, c.AddPod(n1, "app", name, nil, harness.PodOptions{}).Netns, 100)
	}
	e.peers = []fbPeer{{name: magic, ip: magicAddr, d: client("to-magic"), fallback: true}}
	for _, name := range kubeProxyPeers {
		e.peers = append(e.peers, fbPeer{name: name, ip: services[name].Spec.ClusterIP, d: client("to-" + services[name].Name), fallback: name == fbSameNode})
	}
	return e
}

// twoNodes is a control plane with the EndpointSlice controller and a 2-node cluster.
func twoNodes(b *testing.B) (*harness.ControlPlane, *harness.Cluster) {
	cp := harness.StartControlPlane(b)
	c := harness.NewCluster(b, cp, harness.ClusterOptions{Nodes: 2})
	harness.StartEndpointSliceController(b, cp)
	return cp, c
}

func (e *fbEnv) nextName() string {
	e.next++
	return fmt.Sprintf("apm-%d", e.next)
}

func (e *fbEnv) addProducer(n *harness.Node, name string, ready bool) *harness.Pod {
	p := e.c.AddPod(n, "apm", name, map[string]string{"app": "apm"}, harness.PodOptions{NotReady: !ready})
	p.Netns.ServeTCP(e.b, port, name)
	return p
}

func (p fbPeer) target() string { return net.JoinHostPort(p.ip, fmt.Sprint(port)) }

// rollout rolls node 1's producer once with every peer probed throughout, and records the figures.
func (e *fbEnv) rollout() {
	ctx := e.b.Context()
	trackers := make([]*tracker, len(e.peers))
	for i, p := range e.peers {
		trackers[i] = p.d.track(ctx, p.target())
		e.waitStreak(p, trackers[i], e.local.Name, time.Now())
	}
	e.pace()
	if err := e.local.SetReady(ctx, false); err != nil {
		e.b.Fatal(err)
	}
	t0 := time.Now()
	if err := e.local.MarkTerminating(ctx); err != nil {
		e.b.Fatal(err)
	}
	for i, p := range e.peers {
		if p.fallback {
			e.toRemote[p.name] = append(e.toRemote[p.name], e.waitStreak(p, trackers[i], e.remote.Name, t0).Sub(t0))
		}
	}
	// iTP Local has nowhere to send: its switch is its next sync.
	if _, err := e.kp.WaitSync(ctx, t0, 10*time.Second); err != nil {
		e.b.Fatal(err)
	}
	if err := e.local.Delete(ctx); err != nil {
		e.b.Fatal(err)
	}
	e.local = e.addProducer(e.c.Nodes[0], e.nextName(), false)
	e.pace()
	if err := e.local.SetReady(ctx, true); err != nil {
		e.b.Fatal(err)
	}
	t1 := time.Now()
	for i, p := range e.peers {
		e.back[p.name] = append(e.back[p.name], e.waitStreak(p, trackers[i], e.local.Name, t1).Sub(t1))
	}
	for i, p := range e.peers {
		ps, err := trackers[i].finish()
		if err != nil {
			e.b.Fatalf("%s: %v", p.name, err)
		}
		for _, x := range ps {
			if x.err != nil {
				e.failed[p.name]++
				e.b.Logf("%s: connect failed (%s), started %v after the NotReady write, %v after the Ready write: %v",
					p.name, harness.Outcome(x.err), x.start.Sub(t0), x.start.Sub(t1), x.err)
			}
		}
	}
}

// pace lets kube-proxy's min-sync period (1 s) pass since its last sync on node 1 (see
// peersEnv.pace): each change is measured with kube-proxy unthrottled.
func (e *fbEnv) pace() { paceKubeProxy(e.b, e.kp, time.Second) }

// waitStreak waits until fallbackStreak consecutive connects that started after since were
// answered by name, and returns when the first of them started.
func (e *fbEnv) waitStreak(p fbPeer, t *tracker, name string, since time.Time) time.Time {
	var at time.Time
	err := wait.PollUntilContextTimeout(e.b.Context(), 5*time.Millisecond, 20*time.Second, true, func(context.Context) (bool, error) {
		var ok bool
		at, ok = t.streak(name, since)
		return ok, nil
	})
	if err != nil {
		e.b.Fatalf("%s: no %d connects in a row answered by %s: %v", p.name, fallbackStreak, name, err)
	}
	return at
}

// tracker probes a target in the background (probeLoop) and keeps the completed probes in start
// order.
type tracker struct {
	mu   sync.Mutex
	done []probe
	stop atomic.Bool
	end  chan error
}

func (d *nsDialer) track(ctx context.Context, target string) *tracker {
	t := &tracker{end: make(chan error, 1)}
	next := 0
	go func() {
		_, err := d.probeLoop(ctx, target, probeEvery, fallbackTimeout, 10*time.Minute, func(ps []*probe) bool {
			t.mu.Lock()
			for ; next < len(ps) && ps[next].done; next++ {
				t.done = append(t.done, *ps[next])
			}
			t.mu.Unlock()
			return t.stop.Load()
		})
		t.end <- err
	}()
	return t
}

// streak finds the first run of fallbackStreak probes started after since and answered by name.
func (t *tracker) streak(name string, since time.Time) (time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	run := 0
	for i := range t.done {
		x := &t.done[i]
		if x.start.Before(since) || !x.answeredBy(name) {
			run = 0
			continue
		}
		if run++; run == fallbackStreak {
			return t.done[i-fallbackStreak+1].start, true
		}
	}
	return time.Time{}, false
}

// finish stops the probing and returns every probe completed.
func (t *tracker) finish() ([]probe, error) {
	t.stop.Store(true)
	err := <-t.end
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.done, err
}
