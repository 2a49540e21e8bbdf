package bench

import (
	"bufio"
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
	"github.com/magic-ip/magic-ip/test/harness"
)

// Side-by-side with the real kube-proxy (v1.37.2, iptables mode) serving a Service with
// internalTrafficPolicy: Local that selects the same producer pods as the MagicIP, on one
// 2-node cluster where both run at once (and, for convergence, the 5 s poller of
// convergence_test.go as a third peer). Peers are measured alternately, trial by trial, so slow
// drifts of the machine hit them alike; ratios are printed next to the figures.
//
// Layout: node 1 holds the client pods (one per target) and producers apm-1 and apm-2; node 2
// holds producer apm-3, Ready throughout (a DaemonSet-like producer elsewhere in the cluster:
// what makes kube-proxy DROP rather than REJECT when node 1 has no Ready producer). Every
// producer serves TCP 8126 (greeting with its name) and UDP 8125 (answering with its name).
// kube-proxy, the agent and the EndpointSlice controller run throughout; the node namespaces
// are prepared for both alike (harness.PrepareNodeForPeers: ICMP rate limit off,
// bridge-nf-call-iptables on, the Service range routed to an absent gateway).

const (
	udpPort      = 8125
	hangBound    = 3 * time.Second // how long a client waits for a connect that may hang
	probeEvery   = 2 * time.Millisecond
	probeTimeout = 200 * time.Millisecond
	benchChain   = "BENCH-SERVICES"
	benchComment = "bench: 10k kube-proxy-style service rules"
	paceMargin   = 300 * time.Millisecond
)

type peer struct {
	name string
	ip   string
	// from is the client pod (each target has its own, on node 1: see setupPeers), d dials from it.
	from *harness.Pod
	d    *nsDialer
	// kubeProxy: the peer is kube-proxy running with --iptables-min-sync-period=minSync; its
	// trials wait for that period to pass since its last sync (see pace).
	kubeProxy bool
	minSync   time.Duration
}

type peersEnv struct {
	b  *testing.B
	cp *harness.ControlPlane
	c  *harness.Cluster
	// dpPod, dpMagic, dpService are the data path's clients (to apm-1's pod IP, the magic IP,
	// the ClusterIP): fresh pods, untouched by the probing of the other scenarios.
	dpPod, dpMagic, dpService *harness.Pod
	apm1, apm2, apm3          *harness.Pod
	ready                     map[*harness.Pod]bool
	clusterIP                 string
	kps                       []*harness.KubeProxy
	agent, proxy              peer
	pollerPeer                peer
	// escapes counts, per peer name, connections whose SYN escaped both the reject/drop and the
	// DNAT during the convergence trials.
	escapes map[string]int
	// unpinned counts, per peer name, UDP trials skipped because no flow could be pinned to apm-1.
	unpinned map[string]int
}

// BenchmarkPeers: magic-ip against kube-proxy (iTP Local) and the 5 s poller — convergence,
// failover, no local producer, data path (with and without 10,000 unrelated rules), UDP switch
// with a reused socket — first with kube-proxy's default --iptables-min-sync-period (1s), then
// (full runs) again with 0.
func BenchmarkPeers(b *testing.B) {
	e := setupPeers(b)
	setup := "peers: setup (kube-proxy v1.37.2 iptables mode, 2 nodes, both peers live)"
	record(row{Scenario: setup, Figure: "net.ipv4.icmp_ratelimit in every node netns, for both peers (default 1000 ms silences REJECT's ICMP under fast probing)", Value: 0, Unit: "ms"})
	record(row{Scenario: setup, Figure: fmt.Sprintf("probe interval (connections in flight bounded by %s each)", probeTimeout), Value: float64(probeEvery) / 1e6, Unit: "ms"})
	record(row{Scenario: setup, Figure: "kube-proxy trials start this long after its min-sync period has passed since its last sync (measured unthrottled, at its best)", Value: float64(paceMargin) / 1e6, Unit: "ms"})

	agentConv, proxyConv := e.convergence(trials(20, 2), e.proxy)
	pollerConv := e.pollerConvergence(trials(6, 1))
	agentFail, proxyFail, agentFailures, proxyFailures := e.failover(trials(20, 2), e.proxy)
	noLocal := e.noLocalProducer(trials(20, 5), trials(3, 1))
	agentUDP, proxyUDP := e.udpSwitch(trials(20, 2), e.proxy)

	// Second series: kube-proxy without its rate limit (restart it; the agent runs on).
	var proxy0 peer
	var proxy0Conv, proxy0Fail, proxy0UDP []time.Duration
	var proxy0Failures int
	if !*quick {
		proxy0 = e.restartKubeProxy("0")
		var a []time.Duration
		var af int
		a, proxy0Conv = e.convergence(trials(15, 2), proxy0)
		agentConv = append(agentConv, a...)
		a, proxy0Fail, af, proxy0Failures = e.failover(trials(15, 2), proxy0)
		agentFail, agentFailures = append(agentFail, a...), agentFailures+af
		a, proxy0UDP = e.udpSwitch(trials(15, 2), proxy0)
		agentUDP = append(agentUDP, a...)
	}

	// Last: its short connections leave tens of thousands of TIME_WAIT conntrack entries, which
	// every conntrack clean-up (both peers do one per UDP change) would then walk.
	datapath := e.datapath(trials(20, 2), time.Duration(trials(500, 250))*time.Millisecond)

	const conv = "peers: convergence (producer Ready written → first connection answered)"
	ap50, ap99 := percentile(agentConv, 50), percentile(agentConv, 99)
	record(row{Scenario: conv, Figure: fmt.Sprintf("magic-ip agent p50 (%d trials)", len(agentConv)), Value: ap50, Unit: "ms"})
	goal(conv, "magic-ip agent p99", ap99, "ms", "≤ 100 ms", ap99 <= 100)
	peerRows(conv, e.proxy.name, proxyConv, ap50)
	if len(proxy0Conv) > 0 {
		peerRows(conv, proxy0.name, proxy0Conv, ap50)
	}
	for _, p := range []peer{e.agent, e.proxy, proxy0} {
		if p.name != "" {
			record(row{Scenario: conv, Figure: p.name + ": SYNs that escaped both reject/drop and DNAT during the switch (left [UNREPLIED] in conntrack 120 s; that source port then hangs)", Value: float64(e.escapes[p.name]), Unit: "SYNs"})
		}
	}
	if len(pollerConv) > 0 {
		pm := mean(pollerConv)
		record(row{Scenario: conv, Figure: fmt.Sprintf("5 s poller mean (%d trials)", len(pollerConv)), Value: pm, Unit: "ms"})
		goal(conv, "5 s poller mean / magic-ip agent p99", pm/ap99, "×", "≥ 25×", pm/ap99 >= 25)
	}

	const fo = "peers: failover (1 of 2 local producers NotReady → new connections reach only the other)"
	ap50 = percentile(agentFail, 50)
	record(row{Scenario: fo, Figure: fmt.Sprintf("magic-ip agent p50 (%d trials)", len(agentFail)), Value: ap50, Unit: "ms"})
	record(row{Scenario: fo, Figure: "magic-ip agent p99", Value: percentile(agentFail, 99), Unit: "ms"})
	record(row{Scenario: fo, Figure: "magic-ip agent: failed connects during all trials", Value: float64(agentFailures), Unit: "connects"})
	peerRows(fo, e.proxy.name, proxyFail, ap50)
	record(row{Scenario: fo, Figure: e.proxy.name + ": failed connects during all trials", Value: float64(proxyFailures), Unit: "connects"})
	if len(proxy0Fail) > 0 {
		peerRows(fo, proxy0.name, proxy0Fail, ap50)
		record(row{Scenario: fo, Figure: proxy0.name + ": failed connects during all trials", Value: float64(proxy0Failures), Unit: "connects"})
	}

	for _, r := range noLocal {
		record(r)
	}

	const udp = "peers: UDP switch (reused socket, 100 pkt/s; old producer NotReady, new one Ready → first datagram answered by the new one)"
	ap50, ap99 = percentile(agentUDP, 50), percentile(agentUDP, 99)
	record(row{Scenario: udp, Figure: fmt.Sprintf("magic-ip agent p50 (%d trials)", len(agentUDP)), Value: ap50, Unit: "ms"})
	goal(udp, "magic-ip agent p99", ap99, "ms", "≤ 200 ms", ap99 <= 200)
	peerRows(udp, e.proxy.name, proxyUDP, ap50)
	if len(proxy0UDP) > 0 {
		peerRows(udp, proxy0.name, proxy0UDP, ap50)
	}
	for name, n := range e.unpinned {
		record(row{Scenario: udp, Figure: name + ": trials skipped, no new flow reached the old producer in 64 tries (see log)", Value: float64(n), Unit: "trials"})
	}
	for _, r := range datapath {
		record(r)
	}
}

// peerRows records a peer's p50 and p99 and its p50 as a multiple of the agent's.
func peerRows(sc, name string, ds []time.Duration, agentP50 float64) {
	p50 := percentile(ds, 50)
	record(row{Scenario: sc, Figure: fmt.Sprintf("%s p50 (%d trials)", name, len(ds)), Value: p50, Unit: "ms"})
	record(row{Scenario: sc, Figure: name + " p99", Value: percentile(ds, 99), Unit: "ms"})
	if agentP50 > 0 {
		record(row{Scenario: sc, Figure: name + " p50 / magic-ip agent p50", Value: p50 / agentP50, Unit: "×"})
	}
}

func setupPeers(b *testing.B) *peersEnv {
	cp, c := twoNodes(b)
	ctx := b.Context()
	n1, n2 := c.Nodes[0], c.Nodes[1]
	e := &peersEnv{b: b, cp: cp, c: c, ready: map[*harness.Pod]bool{}, escapes: map[string]int{}, unpinned: map[string]int{}}
	// One client pod per target on node 1, alike. With a single client, a connection to the
	// magic IP or the ClusterIP (DNATed to apm-1) and an earlier one straight to apm-1 from the
	// same source port would share a reply tuple: conntrack drops the new SYN while the old
	// entry lives (TIME_WAIT: 120 s) — a harness artefact that would hit whichever target came
	// second. And a client whose SYN once escaped every rule (kube-proxy's DROP → DNAT
	// transient, counted in the convergence scenario) has that port poisoned for 120 s: the
	// data path gets clients of its own.
	client := func(name string) *harness.Pod {
		p := c.AddPod(n1, "app", name, nil, harness.PodOptions{})
		// Thousands of short connections per second: let the client reuse TIME_WAIT ports
		// (timestamps are on), as a busy client tunes itself.
		for _, kv := range [][2]string{{"net.ipv4.tcp_tw_reuse", "1"}, {"net.ipv4.ip_local_port_range", "1024 65535"}} {
			if err := p.Netns.Sysctl(kv[0], kv[1]); err != nil {
				b.Fatal(err)
			}
		}
		return p
	}
	toMagic, toService, toPoller := client("to-magic"), client("to-service"), client("to-poller")
	e.dpPod, e.dpMagic, e.dpService = client("dp-pod"), client("dp-magic"), client("dp-service")
	labels := map[string]string{"app": "apm"}
	add := func(n *harness.Node, name string, ready bool) *harness.Pod {
		p := c.AddPod(n, "apm", name, labels, harness.PodOptions{NotReady: !ready})
		p.Netns.ServeTCP(b, port, name)
		p.Netns.ServeUDP(b, udpPort, name)
		e.ready[p] = ready
		return p
	}
	// apm-1 starts Ready so that both peers can be seen serving it before the trials start.
	e.apm1, e.apm2, e.apm3 = add(n1, "apm-1", true), add(n1, "apm-2", false), add(n2, "apm-3", true)

	local := corev1.ServiceInternalTrafficPolicyLocal
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "apm", Name: "apm"}, Spec: corev1.ServiceSpec{
		Type: corev1.ServiceTypeClusterIP, Selector: labels, InternalTrafficPolicy: &local,
		Ports: []corev1.ServicePort{
			{Name: "apm", Port: port, TargetPort: intstr.FromInt32(port), Protocol: corev1.ProtocolTCP},
			{Name: "dogstatsd", Port: udpPort, TargetPort: intstr.FromInt32(udpPort), Protocol: corev1.ProtocolUDP},
		}}}
	if err := cp.Client.Create(ctx, svc); err != nil {
		b.Fatal(err)
	}
	e.clusterIP = svc.Spec.ClusterIP
	mip := &v1alpha1.MagicIP{
		ObjectMeta: metav1.ObjectMeta{Name: "apm"},
		Spec: v1alpha1.MagicIPSpec{Address: magicAddr,
			Ports:    []v1alpha1.MagicIPPort{{Name: "apm", Port: port}, {Name: "dogstatsd", Port: udpPort, Protocol: v1alpha1.ProtocolUDP}},
			Producer: v1alpha1.Producer{Namespace: "apm", Selector: v1alpha1.LabelSelector{MatchLabels: labels}}},
	}
	if err := cp.Client.Create(ctx, mip); err != nil {
		b.Fatal(err)
	}
	for _, n := range c.Nodes {
		e.kps = append(e.kps, harness.StartKubeProxy(b, c, n))
	}
	for _, n := range c.Nodes {
		// The shipped resync period (the harness's default is 2 s): its periodic read of the
		// node's rules is background work that kube-proxy's own defaults are compared with.
		harness.StartAgent(b, c, n, agentBin, "--resync-period", "10s", "-v", "0")
	}
	e.agent = peer{name: "magic-ip agent", ip: magicAddr, from: toMagic, d: newNSDialer(b, toMagic.Netns, 100)}
	e.proxy = peer{name: "kube-proxy iTP Local (min-sync 1s)", ip: e.clusterIP, kubeProxy: true, minSync: time.Second,
		from: toService, d: newNSDialer(b, toService.Netns, 100)}
	e.pollerPeer = peer{name: "5 s poller", ip: pollerAddr, from: toPoller, d: newNSDialer(b, toPoller.Netns, 32)}
	// Both peers serve apm-1, then neither does once it is NotReady: the trials' starting state.
	for _, p := range []peer{e.agent, e.proxy} {
		e.waitAnswers(p, e.apm1.Name)
	}
	e.setReady(e.apm1, false)
	e.waitNoAnswer(e.agent, e.proxy)
	b.Logf("peers: Service ClusterIP %s, MagicIP %s; kube-proxy, agents and the EndpointSlice controller up; node netns: "+
		"icmp_ratelimit=0, bridge-nf-call-iptables=1, %s routed to an absent gateway", e.clusterIP, magicAddr, harness.ServiceCIDR)
	return e
}

func (e *peersEnv) target(p peer) string { return net.JoinHostPort(p.ip, fmt.Sprint(port)) }

func (e *peersEnv) setReady(p *harness.Pod, ready bool) {
	if e.ready[p] == ready {
		return
	}
	if err := p.SetReady(e.b.Context(), ready); err != nil {
		e.b.Fatal(err)
	}
	e.ready[p] = ready
}

// waitAnswers probes p until each of names has answered a connection.
func (e *peersEnv) waitAnswers(p peer, names ...string) {
	seen := map[string]bool{}
	_, err := p.d.probeLoop(e.b.Context(), e.target(p), probeEvery, probeTimeout, 20*time.Second, func(ps []*probe) bool {
		for _, x := range ps {
			if x.done && x.err == nil {
				seen[x.name] = true
			}
		}
		for _, n := range names {
			if !seen[n] {
				return false
			}
		}
		return true
	})
	if err != nil {
		e.b.Fatalf("%s: %v answering (want %v, seen %v)", p.name, err, names, seen)
	}
}

// waitOnly probes p until 20 connections in a row are answered by name.
func (e *peersEnv) waitOnly(p peer, name string) {
	_, err := p.d.probeLoop(e.b.Context(), e.target(p), probeEvery, probeTimeout, 20*time.Second, func(ps []*probe) bool {
		streak, _ := doneStreak(ps, name)
		return streak >= 20
	})
	if err != nil {
		e.b.Fatalf("%s: %v answering only by %s", p.name, err, name)
	}
}

// waitNoAnswer waits until a connection to each peer is not answered (refused, dropped or
// unreachable): no local producer is programmed.
func (e *peersEnv) waitNoAnswer(peers ...peer) {
	for _, p := range peers {
		deadline := time.Now().Add(20 * time.Second)
		for {
			x := p.d.dialOnce(e.b.Context(), e.target(p), 100*time.Millisecond)
			if x.err != nil {
				break
			}
			if time.Now().After(deadline) {
				e.b.Fatalf("%s: still answered by %s 20 s after its producers went NotReady", p.name, x.name)
			}
		}
	}
}

// pace lets kube-proxy's min-sync period pass since its last sync on the consumer's node, so the
// next change is programmed at once: kube-proxy is measured at its best, not throttled. The
// margin covers what a sync does after it stamps its metric (conntrack clean-up): the period
// counts from the sync's end, and a sync still queued must run before the trial's change, not
// just after it (which would throttle the change by a whole period).
func (e *peersEnv) pace(p peer) {
	if !p.kubeProxy || p.minSync == 0 {
		return
	}
	paceKubeProxy(e.b, e.kps[0], p.minSync)
}

// paceKubeProxy waits until minSync + paceMargin have passed since kp's last sync (see pace).
func paceKubeProxy(b *testing.B, kp *harness.KubeProxy, minSync time.Duration) {
	ctx := b.Context()
	for {
		last, err := kp.LastSync(ctx)
		if err != nil {
			b.Fatal(err)
		}
		wait := time.Until(last.Add(minSync + paceMargin))
		if wait <= 0 {
			return
		}
		select {
		case <-time.After(wait): // then re-read: a sync may have happened meanwhile
		case <-ctx.Done():
			b.Fatal(ctx.Err())
		}
	}
}

// restartKubeProxy restarts kube-proxy on every node with --iptables-min-sync-period=minSync.
func (e *peersEnv) restartKubeProxy(minSync string) peer {
	for i, kp := range e.kps {
		_ = kp.Stop()
		e.kps[i] = harness.StartKubeProxy(e.b, e.c, kp.Node, "--iptables-min-sync-period="+minSync)
	}
	d, err := time.ParseDuration(minSync + "s")
	if err != nil {
		e.b.Fatal(err)
	}
	p := e.proxy
	p.name, p.minSync = fmt.Sprintf("kube-proxy iTP Local (min-sync %s)", minSync+"s"), d
	return p
}

// fresh deletes node 1's conntrack entries of the probing clients, so that no scenario inherits
// state from the one before (notably entries of SYNs that escaped every rule, which would make
// later connections from the same source port hang for 120 s).
func (e *peersEnv) fresh() {
	for _, p := range []peer{e.agent, e.proxy, e.pollerPeer} {
		// Exit status 1 when nothing matched.
		_, _ = e.c.Nodes[0].Netns.Run(e.b.Context(), "conntrack", "-D", "-s", p.from.IP.String())
	}
}

// countEscapes counts node 1's conntrack entries from p's client to p's address that were never
// NATed: SYNs that met neither a reject/drop rule nor the DNAT and went on towards the address
// itself (for a ClusterIP: out of the node by its route; [UNREPLIED], kept 120 s).
func (e *peersEnv) countEscapes(p peer) int {
	out, err := e.c.Nodes[0].Netns.Run(e.b.Context(), "conntrack", "-L", "-p", "tcp", "-s", p.from.IP.String(), "-d", p.ip)
	if err != nil {
		e.b.Fatal(err)
	}
	n := 0
	for _, l := range strings.Split(out, "\n") {
		var srcs []string
		for _, f := range strings.Fields(l) {
			if v, ok := strings.CutPrefix(f, "src="); ok {
				srcs = append(srcs, v)
			}
		}
		if len(srcs) == 2 && srcs[1] == p.ip {
			n++
		}
	}
	return n
}

// order alternates which peer goes first, trial by trial.
func order(i int, a, b peer) []peer {
	if i%2 == 0 {
		return []peer{a, b}
	}
	return []peer{b, a}
}

// convergence: from "no local producer" (apm-1 and apm-2 NotReady, apm-3 Ready on node 2),
// apm-1's Ready is written; the time until a connection to the peer is answered by apm-1.
func (e *peersEnv) convergence(n int, proxy peer) (agent, kp []time.Duration) {
	e.fresh()
	defer func() {
		for _, p := range []peer{e.agent, proxy} {
			e.escapes[p.name] += e.countEscapes(p)
		}
	}()
	for i := range n {
		for _, p := range order(i, e.agent, proxy) {
			d := e.convergenceTrial(p)
			if p.kubeProxy {
				kp = append(kp, d)
			} else {
				agent = append(agent, d)
			}
		}
	}
	return agent, kp
}

func (e *peersEnv) convergenceTrial(p peer) time.Duration {
	e.setReady(e.apm1, false)
	e.setReady(e.apm2, false)
	e.waitNoAnswer(e.agent, e.proxy)
	e.pace(p)
	e.setReady(e.apm1, true)
	t0 := time.Now() // the Ready condition is written
	ps, err := p.d.probeLoop(e.b.Context(), e.target(p), probeEvery, probeTimeout, 30*time.Second, func(ps []*probe) bool {
		return slices.ContainsFunc(ps, func(x *probe) bool { return x.answeredBy(e.apm1.Name) })
	})
	if err != nil {
		e.b.Fatalf("convergence, %s: %v", p.name, err)
	}
	first := time.Duration(1<<63 - 1)
	for _, x := range ps {
		if x.answeredBy(e.apm1.Name) {
			first = min(first, x.end.Sub(t0))
		}
	}
	e.setReady(e.apm1, false)
	return first
}

// pollerConvergence: the same for the 5 s poller of convergence_test.go (its own address on
// node 1), after a random wait so that its phase is random; it runs only for these trials.
func (e *peersEnv) pollerConvergence(n int) []time.Duration {
	if n == 0 {
		return nil
	}
	e.fresh()
	pl := startPoller(e.b, e.cp.Client, e.c.Nodes[0])
	defer pl.stop()
	p := e.pollerPeer
	var out []time.Duration
	for range n {
		e.waitNoAnswer(p, e.agent, e.proxy)
		select {
		case <-time.After(rand.N(5 * time.Second)):
		case <-e.b.Context().Done():
			e.b.Fatal(e.b.Context().Err())
		}
		out = append(out, e.convergenceTrial(p))
	}
	return out
}

// bothReady makes apm-1 and apm-2 Ready and waits until every fast peer serves both.
func (e *peersEnv) bothReady(peers ...peer) {
	e.setReady(e.apm1, true)
	e.setReady(e.apm2, true)
	for _, p := range peers {
		e.waitAnswers(p, e.apm1.Name, e.apm2.Name)
	}
}

// failover: apm-1 and apm-2 Ready and served; apm-1's NotReady is written; the time until every
// new connection is answered by apm-2 (the start of the first probe of a run of 40 consecutive
// probes answered by apm-2 — 40 in a row from a 50/50 mix happens by chance once in 10^12), and
// how many connections failed meanwhile.
func (e *peersEnv) failover(n int, proxy peer) (agent, kp []time.Duration, agentFailures, kpFailures int) {
	const streakLen = 40
	e.fresh()
	for i := range n {
		for _, p := range order(i, e.agent, proxy) {
			e.bothReady(e.agent, proxy)
			e.pace(p)
			e.setReady(e.apm1, false)
			t0 := time.Now()
			var sw time.Duration
			var fails int
			_, err := p.d.probeLoop(e.b.Context(), e.target(p), probeEvery, probeTimeout, 30*time.Second, func(ps []*probe) bool {
				streak, from := doneStreak(ps, e.apm2.Name)
				if streak < streakLen {
					return false
				}
				sw = ps[from].start.Sub(t0)
				for _, x := range ps[:from] {
					if x.err != nil {
						fails++
					}
				}
				return true
			})
			if err != nil {
				e.b.Fatalf("failover, %s: %v", p.name, err)
			}

			if p.kubeProxy {
				kp, kpFailures = append(kp, sw), kpFailures+fails
			} else {
				agent, agentFailures = append(agent, sw), agentFailures+fails
			}
		}
	}
	return agent, kp, agentFailures, kpFailures
}

// udpSwitch: apm-1 and apm-2 Ready; a client socket whose flow is pinned to apm-1 (conntrack)
// sends a datagram every 10 ms; apm-1's NotReady is written; the time until a datagram on the
// same socket is answered by apm-2. A trial that has not switched after 5 s counts as 5 s.
func (e *peersEnv) udpSwitch(n int, proxy peer) (agent, kp []time.Duration) {
	const limit = 5 * time.Second
	ctx := e.b.Context()
	e.fresh()
	for i := range n {
		for _, p := range order(i, e.agent, proxy) {
			e.bothReady(e.agent, proxy)
			e.pace(p)
			u := e.pinnedUDP(p)
			if u == nil {
				e.unpinned[p.name]++
				continue
			}
			e.setReady(e.apm1, false)
			t0 := time.Now()
			sw := limit
			tick := time.NewTicker(10 * time.Millisecond)
			for time.Since(t0) < limit {
				xctx, cancel := context.WithTimeout(ctx, 9*time.Millisecond)
				got, err := u.Exchange(xctx)
				cancel()
				if err == nil && got == e.apm2.Name {
					sw = time.Since(t0)
					break
				}
				<-tick.C
			}
			tick.Stop()
			u.Close()
			if sw == limit {
				e.b.Logf("UDP switch, %s: the reused socket still reached apm-1 %s after NotReady", p.name, limit)
			}
			if p.kubeProxy {
				kp = append(kp, sw)
			} else {
				agent = append(agent, sw)
			}
		}
	}
	return agent, kp
}

// pinnedUDP opens connected UDP sockets to the peer until one's flow is answered by apm-1. When
// 64 tries fail (a 50/50 choice each: it should not happen) it logs what answered, and whether
// apm-1 answers its pod IP directly, and returns nil: the trial is skipped and counted.
func (e *peersEnv) pinnedUDP(p peer) *harness.UDPClient {
	addr := net.JoinHostPort(p.ip, fmt.Sprint(udpPort))
	outcomes := map[string]int{}
	for range 64 {
		u, err := p.from.Netns.DialUDP(addr)
		if err != nil {
			e.b.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(e.b.Context(), 200*time.Millisecond)
		got, err := u.Exchange(ctx)
		cancel()
		if err == nil && got == e.apm1.Name {
			return u
		}
		u.Close()
		if err != nil {
			got = harness.Outcome(err)
		}
		outcomes[got]++
	}
	ctx, cancel := context.WithTimeout(e.b.Context(), 200*time.Millisecond)
	defer cancel()
	got, err := p.from.Netns.ExchangeUDP(ctx, net.JoinHostPort(e.apm1.IP.String(), fmt.Sprint(udpPort)))
	rules, _ := e.c.Nodes[0].Netns.Run(e.b.Context(), "sh", "-c", "iptables-save -t nat | grep -E 'dogstatsd|-p udp'")
	// Where the client's UDP flows were DNATed to (count per reply source).
	flows, _ := e.c.Nodes[0].Netns.Run(e.b.Context(), "sh", "-c",
		fmt.Sprintf("conntrack -L -p udp -s %s -d %s 2>/dev/null | grep -o 'src=[0-9.]* dst=%s' | sort | uniq -c", p.from.IP, p.ip, p.from.IP))
	e.b.Logf("UDP, %s: no socket reached apm-1 in 64 tries (%s); apm-1's pod IP directly: %q %v; node 1's UDP nat rules:\n%s\nthe client's flows by DNAT target:\n%s",
		p.name, outcomeText(outcomes), got, err, rules, flows)
	return nil
}

// noLocalProducer: node 1 has no Ready producer while node 2 has one; how long a client's
// connect takes to fail. Then the same with no Ready producer anywhere.
func (e *peersEnv) noLocalProducer(nAgent, nProxy int) (rs []row) {
	const sc = "peers: no local producer (node 2 has one) — client connect"
	e.fresh()
	e.setReady(e.apm1, false)
	e.setReady(e.apm2, false)
	e.waitNoAnswer(e.agent, e.proxy)
	ctx := e.b.Context()
	seq := func(p peer, n int) ([]time.Duration, map[string]int) {
		var ds []time.Duration
		outcomes := map[string]int{}
		for range n {
			x := p.d.dialOnce(ctx, e.target(p), hangBound)
			ds = append(ds, x.end.Sub(x.start))
			outcomes[harness.Outcome(x.err)]++
		}
		return ds, outcomes
	}
	// Connections that hang are tried concurrently: n at once, each bounded by hangBound.
	par := func(p peer, n int) ([]time.Duration, map[string]int) {
		xs := make([]*probe, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() { xs[i] = p.d.dialOnce(ctx, e.target(p), hangBound) })
		}
		wg.Wait()
		var ds []time.Duration
		outcomes := map[string]int{}
		for _, x := range xs {
			ds = append(ds, x.end.Sub(x.start))
			outcomes[harness.Outcome(x.err)]++
		}
		return ds, outcomes
	}
	ds, out := seq(e.agent, nAgent)
	p99 := percentile(ds, 99)
	rs = append(rs, row{Scenario: sc, Figure: fmt.Sprintf("magic-ip agent p50 (%d connects: %s)", len(ds), outcomeText(out)), Value: percentile(ds, 50), Unit: "ms"})
	rs = append(rs, goalRow(sc, "magic-ip agent p99 (refused)", p99, "ms", "≤ 10 ms, refused", p99 <= 10 && out["refused"] == len(ds)))
	ds, out = par(e.proxy, nProxy)
	fig := fmt.Sprintf("kube-proxy iTP Local p50 (%d connects: %s)", len(ds), outcomeText(out))
	if out["timeout"] > 0 {
		fig = fmt.Sprintf("kube-proxy iTP Local: hangs (timeout) — %d of %d connects still pending at the %s bound (DROP)", out["timeout"], len(ds), hangBound)
	}
	rs = append(rs, row{Scenario: sc, Figure: fig, Value: percentile(ds, 50), Unit: "ms"})

	// No Ready producer anywhere: kube-proxy REJECTs (ICMP port unreachable).
	const sc2 = "peers: no producer anywhere — client connect"
	e.setReady(e.apm3, false)
	deadline := time.Now().Add(20 * time.Second)
	for harness.Outcome(e.proxy.d.dialOnce(ctx, e.target(e.proxy), 100*time.Millisecond).err) != "refused" {
		if time.Now().After(deadline) {
			e.b.Fatal("kube-proxy does not refuse 20 s after the last producer went NotReady")
		}
	}
	ds, out = seq(e.agent, nAgent)
	rs = append(rs, row{Scenario: sc2, Figure: fmt.Sprintf("magic-ip agent p99 (%d connects: %s)", len(ds), outcomeText(out)), Value: percentile(ds, 99), Unit: "ms"})
	ds, out = seq(e.proxy, nAgent)
	rs = append(rs, row{Scenario: sc2, Figure: fmt.Sprintf("kube-proxy p99 (%d connects: %s)", len(ds), outcomeText(out)), Value: percentile(ds, 99), Unit: "ms"})
	e.setReady(e.apm3, true)
	// Node 1's kube-proxy DROPs again rather than REJECT: wait for it.
	deadline = time.Now().Add(20 * time.Second)
	for harness.Outcome(e.proxy.d.dialOnce(ctx, e.target(e.proxy), 100*time.Millisecond).err) != "timeout" {
		if time.Now().After(deadline) {
			e.b.Fatal("kube-proxy still refuses 20 s after a producer on another node became Ready")
		}
	}
	return rs
}

func outcomeText(outcomes map[string]int) string {
	m := maps.Clone(outcomes)
	var parts []string
	for _, k := range []string{"refused", "timeout", "unreachable", "answered"} {
		if m[k] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", m[k], k))
			delete(m, k)
		}
	}
	for k, v := range m {
		parts = append(parts, fmt.Sprintf("%d %s", v, k))
	}
	return strings.Join(parts, ", ")
}

// datapath: one producer (apm-1) on the consumer's node; request/response rate on one
// connection (1 byte each way) and short-connection rate (connect, read the greeting, close),
// through the magic IP, the pod IP directly and the Service ClusterIP, each for dur per round,
// targets rotated round by round. Then again with 10,000 unrelated kube-proxy-style rules in a
// nat chain jumped from PREROUTING and OUTPUT, inserted first (ahead of the agent's jump, which
// the agent puts back in first place).
func (e *peersEnv) datapath(rounds int, dur time.Duration) (rs []row) {
	e.setReady(e.apm2, false)
	e.setReady(e.apm1, true)
	e.waitOnly(e.agent, e.apm1.Name)
	e.waitOnly(e.proxy, e.apm1.Name)
	targets := []struct {
		name, addr string
		from       *harness.Pod
	}{
		{"direct pod IP", net.JoinHostPort(e.apm1.IP.String(), fmt.Sprint(port)), e.dpPod},
		{"magic IP", e.target(e.agent), e.dpMagic},
		{"Service ClusterIP (iTP Local)", e.target(e.proxy), e.dpService},
	}
	// Each round measures every target once, in a rotated order; figures are medians over the
	// rounds, and ratios are medians of the per-round ratios (a round's targets share its
	// background: the peers' periodic work, the other benchmarks' leftovers).
	run := func(label string) {
		sc := fmt.Sprintf("peers: data path, same node%s (%d rounds × %s per target; medians)", label, rounds, dur)
		rr, crr := make([][]float64, len(targets)), make([][]float64, len(targets))
		for r := range rounds {
			for k := range targets {
				i := (k + r) % len(targets)
				rr[i] = append(rr[i], e.rate(targets[i].from, targets[i].addr, dur, false))
				crr[i] = append(crr[i], e.rate(targets[i].from, targets[i].addr, dur, true))
			}
		}
		for i, t := range targets {
			rs = append(rs, row{Scenario: sc, Figure: t.name + ": request/response rate (1 B each way, one connection)", Value: median(rr[i]), Unit: "/s"})
			rs = append(rs, row{Scenario: sc, Figure: t.name + ": connect rate (connect, greeting, close)", Value: median(crr[i]), Unit: "/s"})
		}
		// ratio is the median of the per-round ratios of target i to the direct pod IP, and their
		// range (how much the box alone moves one round's figure).
		ratio := func(v [][]float64, i int) (med float64, spread string) {
			var xs []float64
			for r := range v[0] {
				xs = append(xs, 100*v[i][r]/v[0][r])
			}
			return median(xs), fmt.Sprintf("(rounds %.0f–%.0f %%)", slices.Min(xs), slices.Max(xs))
		}
		for _, m := range []struct {
			what string
			v    [][]float64
		}{{"request/response", rr}, {"connect", crr}} {
			mr, mSpread := ratio(m.v, 1)
			// Rounds of 500 ms move 30–250 % on this VM: the ≥ 95 % goal is judged on BenchmarkBackends'
			// lockstep figure, which separates the datapath's cost from the VM's noise.
			rs = append(rs, row{Scenario: sc, Figure: "magic IP " + m.what + " rate, % of direct pod IP " + mSpread + " (goal: see backends, lockstep)", Value: mr, Unit: "%"})
			cr, cSpread := ratio(m.v, 2)
			rs = append(rs, row{Scenario: sc, Figure: "ClusterIP " + m.what + " rate, % of direct pod IP " + cSpread, Value: cr, Unit: "%"})
		}
	}
	run("")
	start := time.Now()
	e.loadRules(10000)
	moved := e.waitJumpFirst()
	run(", 10,000 unrelated nat rules")
	rs = append(rs, row{Scenario: "peers: data path, same node, 10,000 unrelated nat rules", Figure: "their chain inserted first in PREROUTING/OUTPUT → agent's jump first again after (its resync, every 10 s)", Value: float64(moved.Sub(start)) / 1e6, Unit: "ms"})
	e.unloadRules()
	return rs
}

// median of xs (the mean of the middle two for an even count).
func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 0 {
		return (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return s[len(s)/2]
}

// rate runs one loop inside the consumer's namespace for dur and returns operations per second:
// short connections (crr) or 1-byte request/responses on one connection.
func (e *peersEnv) rate(from *harness.Pod, target string, dur time.Duration, crr bool) float64 {
	var ops int
	var elapsed time.Duration
	err := from.Netns.Do(func() error {
		greet := func(c net.Conn, r *bufio.Reader) error {
			_ = c.SetDeadline(time.Now().Add(2 * time.Second))
			_, err := r.ReadString('\n')
			return err
		}
		start := time.Now()
		end := start.Add(dur)
		if crr {
			for time.Now().Before(end) {
				c, err := net.DialTimeout("tcp", target, 2*time.Second)
				if err != nil {
					return err
				}
				err = greet(c, bufio.NewReaderSize(c, 64))
				c.Close()
				if err != nil {
					return err
				}
				ops++
			}
			elapsed = time.Since(start)
			return nil
		}
		c, err := net.DialTimeout("tcp", target, 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		r := bufio.NewReaderSize(c, 64)
		if err := greet(c, r); err != nil {
			return err
		}
		_ = c.SetDeadline(time.Time{})
		buf := []byte{'x'}
		start = time.Now()
		end = start.Add(dur)
		for time.Now().Before(end) {
			if _, err := c.Write(buf); err != nil {
				return err
			}
			if _, err := r.ReadByte(); err != nil {
				return err
			}
			ops++
		}
		elapsed = time.Since(start)
		return nil
	})
	if err != nil {
		e.b.Fatalf("data path to %s: %v", target, err)
	}
	return float64(ops) / elapsed.Seconds()
}

// loadRules loads n kube-proxy-style ClusterIP rules (none matching the benchmark's traffic) in
// one nat chain, jumped from the top of PREROUTING and OUTPUT as kube-proxy's KUBE-SERVICES is.
func (e *peersEnv) loadRules(n int) {
	load, _ := foreignRules("nat", n, "-I %s 1")
	if err := restore(e.b.Context(), e.c.Nodes[0], load); err != nil {
		e.b.Fatal(err)
	}
}

func (e *peersEnv) unloadRules() {
	_, unload := foreignRules("nat", 0, "")
	if err := restore(e.b.Context(), e.c.Nodes[0], unload); err != nil {
		e.b.Fatal(err)
	}
}

// waitJumpFirst waits until the agent's jump is first again in nat PREROUTING and OUTPUT of node 1
// (its resync repairs the order) and returns when that was seen.
func (e *peersEnv) waitJumpFirst() time.Time {
	ctx := e.b.Context()
	deadline := time.Now().Add(30 * time.Second)
	for {
		first := true
		for _, ch := range []string{"PREROUTING", "OUTPUT"} {
			out, err := e.c.Nodes[0].Netns.Run(ctx, "iptables", "-t", "nat", "-S", ch)
			if err != nil {
				e.b.Fatal(err)
			}
			for _, l := range strings.Split(out, "\n") {
				if strings.HasPrefix(l, "-A ") {
					first = first && strings.Contains(l, "-j MAGIC-IP-")
					break
				}
			}
		}
		if first {
			return time.Now()
		}
		if time.Now().After(deadline) {
			e.b.Fatal("the agent's jump is not first in nat PREROUTING/OUTPUT 30 s after other rules were inserted ahead of it")
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			e.b.Fatal(ctx.Err())
		}
	}
}
