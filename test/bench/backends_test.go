package bench

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/magic-ip/magic-ip/agent"
	"github.com/magic-ip/magic-ip/api/v1alpha1"
	"github.com/magic-ip/magic-ip/test/harness"
)

// BenchmarkBackends: the two datapaths side by side in one run, on one 2-node cluster: node 1's
// agent runs --datapath=iptables, node 2's --datapath=nftables, and one MagicIP is served on each
// node by a local producer. Trials alternate between the nodes, so the machine's drifts hit both
// alike. Measured: convergence (producer Ready written → first answer) alone, then beside
// kube-proxy (iptables mode, both nodes, a Service with internalTrafficPolicy Local on the same
// producers: the `nft` binary its nftables mode needs is not installed here); the data path
// through the magic IP and the ClusterIP as paired ratios to the pod IP (see dataPath); each
// agent's resident memory after it; then where a new connection's CPU goes (perf, see
// kernelProfile), with 1 MagicIP and again with 1,000 on each node.
func BenchmarkBackends(b *testing.B) {
	e := setupBackends(b)
	alone := e.convergence(trials(40, 3))
	e.startKubeProxy()
	beside := e.convergence(trials(40, 3))
	paths := e.dataPath(trials(200, 5), trials(200, 50))
	convRows("backends: convergence (Ready → first answer), alone", alone)
	convRows("backends: convergence (Ready → first answer), beside kube-proxy (iptables mode beside the iptables datapath, nftables mode beside the nftables one)", beside)
	for i, n := range e.nodes {
		dataPathRows(n.dp, paths[i])
	}
	for _, n := range e.nodes {
		rss, err := procStatus(n.agent.Pid(), "VmRSS")
		if err != nil {
			b.Fatal(err)
		}
		goal("backends: agent memory", n.dp+" datapath: RSS after the data path (1 MagicIP, few pods)", rss, "MiB", "≤ 30 MiB", rss <= 30)
	}
	// Where a new connection's CPU goes (perf): the IPv4 targets, then the magic IP and the
	// bare DNAT again with 1,000 MagicIPs on each node, the measured one last in address order.
	rounds, window := trials(3, 1), time.Duration(trials(5, 1))*time.Second
	ipv4 := func(t pathTarget) bool { return t.base == 0 }
	one := e.profile("1 MagicIP", ipv4, paths, rounds, window, nil)
	extra := trials(999, 99)
	e.addMagicIPs(extra)
	e.profile(fmt.Sprintf("%d MagicIPs", extra+1), func(t pathTarget) bool {
		return ipv4(t) && (t.name == "magic IP" || strings.HasPrefix(t.name, bareName))
	}, paths, rounds, window, one)
}

// profile runs kernelProfile over the targets pick chooses, those of every node together (so
// that the machine's drifts hit them alike), records each node's rows (each target also against
// its profile in ref, if given) and returns per node the profile by target name.
func (e *backendsEnv) profile(what string, pick func(pathTarget) bool, paths []pathSamples, rounds int, window time.Duration, ref []map[string]connectCost) []map[string]connectCost {
	var all []pathTarget
	var span [][2]int
	for _, p := range paths {
		first := len(all)
		for _, t := range p.targets {
			if pick(t) {
				all = append(all, t)
			}
		}
		span = append(span, [2]int{first, len(all)})
	}
	costs, err := kernelProfile(e.b, all, rounds, window)
	if err != nil {
		e.b.Fatalf("kernel profile, %s: %v", what, err)
	}
	out := make([]map[string]connectCost, len(e.nodes))
	for i, n := range e.nodes {
		ts, cs := all[span[i][0]:span[i][1]], costs[span[i][0]:span[i][1]]
		var r map[string]connectCost
		if ref != nil {
			r = ref[i]
		}
		kernelProfileRows(n.dp, what, ts, cs, rounds, window, r)
		out[i] = map[string]connectCost{}
		for j, t := range ts {
			out[i][t.name] = cs[j]
		}
	}
	return out
}

// addMagicIPs creates n (≤ 1,000) more MagicIPs, each on one address of its own below the
// measured one's (169.254.200.1 up; magicAddr is 169.254.210.210), served by the same producers on
// the same port: the iptables datapath walks its services in address order, so a new connection
// to the measured address passes every other one's rule first (the nftables datapath looks it up
// in its dispatch map). They stay inside 169.254.192.0/19, the iptables guard's prefix, which the
// bare DNAT's address (169.254.99.99) is outside of. It returns when the last one answers on
// every node.
func (e *backendsEnv) addMagicIPs(n int) {
	ctx := e.b.Context()
	var last string
	for i := range n {
		last = fmt.Sprintf("169.254.%d.%d", 200+i/250, 1+i%250)
		mip := &v1alpha1.MagicIP{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("extra-%04d", i)}, Spec: v1alpha1.MagicIPSpec{Address: last,
			Ports:    []v1alpha1.MagicIPPort{{Name: "apm", Port: port}},
			Producer: v1alpha1.Producer{Namespace: "apm", Selector: v1alpha1.LabelSelector{MatchLabels: map[string]string{"app": "apm"}}}}}
		if err := e.c.CP.Client.Create(ctx, mip); err != nil {
			e.b.Fatalf("MagicIP %d of %d: %v", i+1, n, err)
		}
	}
	for _, bn := range e.nodes {
		addr := net.JoinHostPort(last, fmt.Sprint(port))
		err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
			got, err := bn.magic.Netns.DialTCP(ctx, addr)
			return err == nil && got == bn.prod.Name, nil
		})
		if err != nil {
			e.b.Fatalf("%s datapath: the last of %d more MagicIPs (%s) not answered: %v", bn.dp, n, addr, err)
		}
	}
}

// backendNode is one node of BenchmarkBackends and its pods.
type backendNode struct {
	dp    string
	node  *harness.Node
	agent *harness.Process
	prod  *harness.Pod
	// conv is the convergence client; direct, magic, service and bare the data path's, one per
	// target (see setupPeers for why targets do not share a client); direct6, magic6 and bare6 the
	// IPv6 ones.
	conv, direct, magic, service, bare, direct6, magic6, bare6 *harness.Pod
}

type backendsEnv struct {
	b         *testing.B
	c         *harness.Cluster
	nodes     []*backendNode
	clusterIP string
}

func setupBackends(b *testing.B) *backendsEnv {
	// Dual-stack nodes: the data path is measured per family.
	cp := harness.StartControlPlane(b)
	c := harness.NewCluster(b, cp, harness.ClusterOptions{Nodes: 2, Stacks: []harness.NodeStack{harness.DualStack, harness.DualStack}})
	harness.StartEndpointSliceController(b, cp)
	ctx := b.Context()
	e := &backendsEnv{b: b, c: c}
	labels := map[string]string{"app": "apm"}
	for i, dp := range []string{agent.DatapathIptables, agent.DatapathNftables} {
		n := c.Nodes[i]
		bn := &backendNode{dp: dp, node: n}
		bn.prod = c.AddPod(n, "apm", "apm-"+dp, labels, harness.PodOptions{NotReady: true})
		bn.prod.Netns.ServeTCP(b, port, bn.prod.Name)
		client := func(name string) *harness.Pod {
			p := c.AddPod(n, "app", name+"-"+dp, nil, harness.PodOptions{})
			for _, kv := range [][2]string{{"net.ipv4.tcp_tw_reuse", "1"}, {"net.ipv4.ip_local_port_range", "1024 65535"}} {
				if err := p.Netns.Sysctl(kv[0], kv[1]); err != nil {
					b.Fatal(err)
				}
			}
			return p
		}
		bn.conv, bn.direct, bn.magic, bn.service, bn.bare = client("conv"), client("direct"), client("magic"), client("service"), client("bare")
		bn.direct6, bn.magic6, bn.bare6 = client("direct6"), client("magic6"), client("bare6")
		for from, to := range map[string]net.IP{bareAddr: bn.prod.IP, bareAddr6: bn.prod.IP6} {
			if err := bareDNAT(n.Netns, netip.MustParseAddr(from), netip.MustParseAddr(to.String()), port); err != nil {
				b.Fatal(err)
			}
		}
		e.nodes = append(e.nodes, bn)
	}
	local := corev1.ServiceInternalTrafficPolicyLocal
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "apm", Name: "apm"}, Spec: corev1.ServiceSpec{
		Type: corev1.ServiceTypeClusterIP, Selector: labels, InternalTrafficPolicy: &local,
		Ports: []corev1.ServicePort{{Name: "apm", Port: port, TargetPort: intstr.FromInt32(port), Protocol: corev1.ProtocolTCP}}}}
	if err := cp.Client.Create(ctx, svc); err != nil {
		b.Fatal(err)
	}
	e.clusterIP = svc.Spec.ClusterIP
	mip := &v1alpha1.MagicIP{ObjectMeta: metav1.ObjectMeta{Name: "apm"}, Spec: v1alpha1.MagicIPSpec{Address: magicAddr, IPv6Address: magicAddr6,
		Ports:    []v1alpha1.MagicIPPort{{Name: "apm", Port: port}},
		Producer: v1alpha1.Producer{Namespace: "apm", Selector: v1alpha1.LabelSelector{MatchLabels: labels}}}}
	if err := cp.Client.Create(ctx, mip); err != nil {
		b.Fatal(err)
	}
	for _, bn := range e.nodes {
		bn.agent = harness.StartAgent(b, c, bn.node, agentBin, "--datapath", bn.dp, "--resync-period", "10s", "-v", "0")
	}
	for _, bn := range e.nodes {
		if err := harness.WaitAgentReady(ctx, bn.node.Netns, 30*time.Second); err != nil {
			b.Fatalf("%s agent not ready: %v", bn.dp, err)
		}
	}
	return e
}

// startKubeProxy starts kube-proxy on both nodes, in the mode of the node's datapath: iptables
// beside the iptables datapath, nftables beside the nftables one.
func (e *backendsEnv) startKubeProxy() {
	for _, bn := range e.nodes {
		mode := harness.KubeProxyIptables
		if bn.dp == agent.DatapathNftables {
			mode = harness.KubeProxyNftables
		}
		harness.StartKubeProxyMode(e.b, e.c, bn.node, mode)
	}
}

// convergence runs n trials per node, the nodes' order alternating trial by trial; it returns
// the durations per datapath.
func (e *backendsEnv) convergence(n int) map[string][]time.Duration {
	out := map[string][]time.Duration{}
	for i := range n {
		order := slices.Clone(e.nodes)
		if i%2 == 1 {
			slices.Reverse(order)
		}
		for _, bn := range order {
			d, _, err := convergeOnce(e.b.Context(), bn.prod, bn.conv.Netns, magicAddr)
			if err != nil {
				e.b.Fatalf("convergence, %s datapath: %v", bn.dp, err)
			}
			out[bn.dp] = append(out[bn.dp], d)
		}
	}
	return out
}

// convRows records each datapath's p50 and p99, and the goals of the nftables datapath: p50 ≤
// 5 ms, p99 ≤ 15 ms, p50 ≤ half the iptables datapath's (measured in the same trials).
func convRows(sc string, ds map[string][]time.Duration) {
	ipt, nft := ds[agent.DatapathIptables], ds[agent.DatapathNftables]
	i50 := percentile(ipt, 50)
	record(row{Scenario: sc, Figure: fmt.Sprintf("iptables datapath p50 (%d trials; p99 %s ms)", len(ipt), trim(percentile(ipt, 99))), Value: i50, Unit: "ms"})
	n50, n99 := percentile(nft, 50), percentile(nft, 99)
	goal(sc, fmt.Sprintf("nftables datapath p50 (%d trials)", len(nft)), n50, "ms", "≤ 5 ms", n50 <= 5)
	goal(sc, "nftables datapath p99", n99, "ms", "≤ 15 ms", n99 <= 15)
	if i50 > 0 {
		goal(sc, "nftables p50 ÷ iptables p50", n50/i50, "×", "≤ 0.5×", n50/i50 <= 0.5)
	}
}

// pathTarget is one data path target of a node: the client pod and the address it dials.
type pathTarget struct {
	name, addr string
	from       *harness.Pod
	// base is the index of the target this one is compared with (the pod IP of its family); a
	// target that is its own base is a baseline.
	base int
}

// pathSamples are one node's data path figures: per target, per batch, the time and the client
// thread's CPU time of its operations.
type pathSamples struct {
	targets []pathTarget
	rr, crr [][]batch
}

// batch sums one target's operations within one batch.
type batch struct {
	ops       int
	wall, cpu time.Duration
}

// dataPath: with each node's producer Ready (and only it), the data path of each node's targets —
// the pod IP directly (the baseline), the magic IP, the ClusterIP, and a bare DNAT to the same
// producer (one hand-written rule, see bareDNAT: what any DNAT costs here) — in lockstep: one operation
// on each target of both nodes in turn (in a random order each round), so that every
// operation has its baseline's neighbour a few microseconds away and a batch's ratio is the
// datapath's cost, not the VM's noise (a 2-core machine shared with other work moves rates by
// ±50 % from one 0.5 s round to the next). Request/response (1 B each way on one connection) and
// connect (connect, greeting, close) operations. Each target has a client pod of its own; one
// OS thread runs every operation from them (see pathClient) and times each, in wall time and in
// its CPU time. Each family is compared with its own pod IP: [magic IPv6]:port with the producer's
// IPv6 address; the magic IP and the ClusterIP also with the bare DNAT of their family.
func (e *backendsEnv) dataPath(batches, perBatch int) []pathSamples {
	out := make([]pathSamples, len(e.nodes))
	for i, bn := range e.nodes {
		if err := bn.prod.SetReady(e.b.Context(), true); err != nil {
			e.b.Fatal(err)
		}
		hostPort := func(ip string) string { return net.JoinHostPort(ip, fmt.Sprint(port)) }
		out[i].targets = []pathTarget{{"direct pod IP", hostPort(bn.prod.IP.String()), bn.direct, 0},
			{"magic IP", hostPort(magicAddr), bn.magic, 0}, {"ClusterIP (kube-proxy, iTP Local)", hostPort(e.clusterIP), bn.service, 0},
			{bareName, hostPort(bareAddr), bn.bare, 0},
			{"direct pod IPv6", hostPort(bn.prod.IP6.String()), bn.direct6, 4}, {"magic IPv6", hostPort(magicAddr6), bn.magic6, 4},
			{bareName + " IPv6", hostPort(bareAddr6), bn.bare6, 4}}
		for _, t := range out[i].targets {
			if err := waitAnswer(e.b, t, bn.prod.Name); err != nil {
				e.b.Fatalf("%s datapath: %v", bn.dp, err)
			}
		}
	}
	var targets []pathTarget
	for i := range out {
		targets = append(targets, out[i].targets...)
	}
	for _, crr := range []bool{false, true} {
		got, err := lockstep(e.b, targets, crr, batches, perBatch)
		if err != nil {
			e.b.Fatalf("data path: %v", err)
		}
		first := 0
		for i := range out {
			per := got[first : first+len(out[i].targets)]
			first += len(out[i].targets)
			if crr {
				out[i].crr = per
			} else {
				out[i].rr = per
			}
		}
	}
	return out
}

// lockstep runs batches × perBatch operations on every target, one at a time from one OS
// thread, the targets in a new random order each round (every target gets every neighbour); it
// returns per target its batches. One thread for all: with a thread per target, each target's
// rate also carried where the scheduler had put its thread (the CPU of the producer's server or
// the other one), which moved the medians of a run by several per cent from one run to the next.
func lockstep(b *testing.B, targets []pathTarget, crr bool, batches, perBatch int) ([][]batch, error) {
	out := make([][]batch, len(targets))
	err := onClientThread(b, targets, crr, func(c *pathClient) error {
		rnd := rand.New(rand.NewPCG(1, 2))
		for range batches {
			sums := make([]batch, len(targets))
			for range perBatch {
				for _, j := range rnd.Perm(len(targets)) {
					res := c.do(j)
					if res.err != nil {
						return fmt.Errorf("%s (%s): %w", targets[j].name, targets[j].addr, res.err)
					}
					sums[j].ops++
					sums[j].wall += res.wall
					sums[j].cpu += res.cpu
				}
			}
			for j := range targets {
				out[j] = append(out[j], sums[j])
			}
		}
		return nil
	})
	return out, err
}

// onClientThread runs f with a pathClient of targets (crr: for connects) on an OS thread of its
// own, locked and never unlocked (the thread enters the client pods' namespaces, so it must not
// go back to the scheduler), and returns f's error once it is done.
func onClientThread(b *testing.B, targets []pathTarget, crr bool, f func(*pathClient) error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		c, err := newPathClient(b, targets, crr)
		if err != nil {
			done <- err
			return
		}
		defer c.close()
		done <- f(c)
	}()
	return <-done
}

// pathClient is every target's client on the calling OS thread (locked, never returned to the
// scheduler: it enters the client pods' namespaces): blocking sockets and plain system calls, so
// an operation's time is the kernel's path and the producer's answer, with no Go scheduler in
// between. It times each operation in wall time and in the thread's CPU time (RUSAGE_THREAD:
// its syscalls, and the kernel's transmit path run in its context — veth, the node's bridge,
// netfilter's hooks with conntrack and the DNAT, up to the producer's socket; with
// CONFIG_IRQ_TIME_ACCOUNTING off, as on this VM's kernel, softirq work is charged to the thread
// it interrupted). The reply path runs in the server's context and is not in it.
type pathClient struct {
	targets []pathTarget
	addrs   []syscall.Sockaddr
	crr     bool
	// fds are the request/response connections, one per target (opened once, before any is timed).
	fds []int
	// in is the namespace the thread is in (-1: none of the targets' yet).
	in int
}

type opResult struct {
	wall, cpu time.Duration
	err       error
}

func newPathClient(log testing.TB, targets []pathTarget, crr bool) (*pathClient, error) {
	c := &pathClient{targets: targets, crr: crr, in: -1}
	for _, t := range targets {
		ap, err := netip.ParseAddrPort(t.addr)
		if err != nil {
			return nil, err
		}
		c.addrs = append(c.addrs, sockaddr(ap))
	}
	if crr {
		return c, nil
	}
	for i, t := range targets {
		if err := c.enter(i); err != nil {
			c.close()
			return nil, err
		}
		// The connection is opened before the measurement, so a refusal then (a ClusterIP whose
		// kube-proxy is still catching up with the convergence trials' last EndpointSlice
		// updates: an i/o timeout seen once) is waited out, as waitAnswer does, not fatal.
		var fd int
		err := wait.PollUntilContextTimeout(log.Context(), 10*time.Millisecond, 20*time.Second, true, func(context.Context) (bool, error) {
			var err error
			if fd, err = c.dial(i); err != nil {
				log.Logf("data path, %s (%s): first connection failed, trying again: %v", t.name, t.addr, err)
			}
			return err == nil, nil
		})
		if err != nil {
			c.close()
			return nil, fmt.Errorf("%s (%s): no first connection: %w", t.name, t.addr, err)
		}
		c.fds = append(c.fds, fd)
	}
	return c, nil
}

func sockaddr(ap netip.AddrPort) syscall.Sockaddr {
	if ap.Addr().Is4() {
		return &syscall.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
	}
	return &syscall.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}
}

// enter puts the thread in target i's client namespace.
func (c *pathClient) enter(i int) error {
	if c.in >= 0 && c.targets[c.in].from.Netns == c.targets[i].from.Netns {
		return nil
	}
	if err := c.targets[i].from.Netns.Enter(); err != nil {
		return err
	}
	c.in = i
	return nil
}

// dial opens a blocking connection to target i from the current namespace and reads the
// producer's greeting (its name and a newline), with 2 s bounds on both.
func (c *pathClient) dial(i int) (int, error) {
	family := syscall.AF_INET
	if _, v6 := c.addrs[i].(*syscall.SockaddrInet6); v6 {
		family = syscall.AF_INET6
	}
	fd, err := syscall.Socket(family, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	tv := syscall.NsecToTimeval(int64(2 * time.Second))
	for _, opt := range []int{syscall.SO_SNDTIMEO, syscall.SO_RCVTIMEO} { // connect and read bounds
		if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, opt, &tv); err != nil {
			syscall.Close(fd)
			return -1, fmt.Errorf("setsockopt: %w", err)
		}
	}
	if err := connect(fd, c.addrs[i]); err != nil {
		syscall.Close(fd)
		return -1, fmt.Errorf("connect: %w", err)
	}
	var buf [64]byte
	for got := 0; ; {
		n, err := readEINTR(fd, buf[got:])
		if err != nil || n <= 0 {
			syscall.Close(fd)
			return -1, fmt.Errorf("greeting: read %d bytes: %v", n, err)
		}
		got += n
		if buf[got-1] == '\n' || got == len(buf) {
			return fd, nil
		}
	}
}

// do runs and times one operation on target i: 1 byte each way on its connection, or (crr) a
// new connection (connect, greeting, close).
func (c *pathClient) do(i int) opResult {
	if c.crr {
		if err := c.enter(i); err != nil {
			return opResult{err: err}
		}
	}
	c0, t0 := threadCPU(), time.Now()
	err := c.op(i)
	return opResult{wall: time.Since(t0), cpu: threadCPU() - c0, err: err}
}

func (c *pathClient) op(i int) error {
	if c.crr {
		fd, err := c.dial(i)
		if err == nil {
			syscall.Close(fd)
		}
		return err
	}
	b := [1]byte{'x'}
	if _, err := writeEINTR(c.fds[i], b[:]); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if n, err := readEINTR(c.fds[i], b[:]); n != 1 {
		return fmt.Errorf("read %d bytes: %v", n, err)
	}
	return nil
}

// The Go runtime signals its threads (preemption), and a socket call with a timeout
// (SO_RCVTIMEO, SO_SNDTIMEO) or a connect is not restarted after a signal: these retry what
// EINTR interrupted before it did anything.

func readEINTR(fd int, p []byte) (int, error) {
	return ignoringEINTR(func() (int, error) { return syscall.Read(fd, p) })
}

func writeEINTR(fd int, p []byte) (int, error) {
	return ignoringEINTR(func() (int, error) { return syscall.Write(fd, p) })
}

func ignoringEINTR(f func() (int, error)) (int, error) {
	for {
		if n, err := f(); err != syscall.EINTR {
			return n, err
		}
	}
}

// connect connects the blocking socket fd to sa; interrupted, it waits (2 s at most) for the
// connection the kernel goes on making, and gives its outcome.
func connect(fd int, sa syscall.Sockaddr) error {
	err := syscall.Connect(fd, sa)
	if err != syscall.EINTR {
		return err
	}
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
	for deadline := time.Now().Add(2 * time.Second); ; {
		n, err := unix.Poll(pfd, int(time.Until(deadline).Milliseconds()))
		if err == syscall.EINTR && time.Now().Before(deadline) {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return syscall.ETIMEDOUT
		}
		if soErr, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_ERROR); err != nil || soErr != 0 {
			return cmp.Or(err, error(syscall.Errno(soErr)))
		}
		return nil
	}
}

func (c *pathClient) close() {
	for _, fd := range c.fds {
		syscall.Close(fd)
	}
}

// threadCPU is the calling thread's CPU time so far (user + system).
func threadCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_THREAD, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// waitAnswer dials t until name answers (the rules for it are in place).
func waitAnswer(b *testing.B, t pathTarget, name string) error {
	deadline := time.Now().Add(20 * time.Second)
	for {
		got, err := t.from.Netns.DialTCP(b.Context(), t.addr)
		if err == nil && got == name {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s (%s) not answered by %s after 20 s: %q %v", t.name, t.addr, name, got, err)
		}
	}
}

// dataPathRows records, per operation and target, the median over batches of the batch's rate
// as a percentage of the pod IP's in the same batch (with the interquartile range), the same for
// the client thread's CPU time per operation, and the raw medians.
func dataPathRows(dp string, s pathSamples) {
	n := len(s.rr[0])
	sc := fmt.Sprintf("backends: data path, %s datapath node, beside kube-proxy (%d batches of %d operations per target, targets in lockstep; medians of per-batch ratios to the pod IP)", dp, n, s.rr[0][0].ops)
	for _, kind := range []struct {
		what string
		v    [][]batch
	}{{"request/response", s.rr}, {"connect", s.crr}} {
		for j, t := range s.targets {
			if t.base == j {
				continue // a baseline
			}
			rate, cpu := paired(kind.v[t.base], kind.v[j])
			base := s.targets[t.base].name
			fig := fmt.Sprintf("%s %s rate, %% of the %s's (IQR %s %%; client CPU time per op %s %% of the %s's, IQR %s %%)",
				t.name, kind.what, base, iqr(rate), trim(median(cpu)), base, iqr(cpu))
			if strings.HasPrefix(t.name, "magic") {
				goal(sc, fig, median(rate), "%", "≥ 95 %", median(rate) >= 95)
			} else {
				record(row{Scenario: sc, Figure: fig, Value: median(rate), Unit: "%"})
			}
			// The DNAT paths against the bare DNAT of their family: what their own rules cost
			// beyond the translation itself.
			if k := bareOf(s.targets, t.base); k >= 0 && k != j {
				rate, cpu := paired(kind.v[k], kind.v[j])
				record(row{Scenario: sc, Figure: fmt.Sprintf("%s %s rate, %% of the %s's (IQR %s %%; client CPU time per op %s %%)",
					t.name, kind.what, s.targets[k].name, iqr(rate), trim(median(cpu))), Value: median(rate), Unit: "%"})
			}
		}
		for j, t := range s.targets {
			var rate, cpu []float64
			for _, x := range kind.v[j] {
				rate, cpu = append(rate, float64(x.ops)/x.wall.Seconds()), append(cpu, float64(x.cpu)/float64(x.ops)/1e3)
			}
			record(row{Scenario: sc, Figure: fmt.Sprintf("%s %s: rate while it runs (client CPU per op %s µs)", t.name, kind.what, trim(median(cpu))), Value: median(rate), Unit: "/s"})
		}
	}
}

// bareName names the bare DNAT targets (see bareDNAT).
const bareName = "bare DNAT (one nft rule)"

// bareOf is the index of the bare DNAT target compared with the baseline base, or -1.
func bareOf(targets []pathTarget, base int) int {
	return slices.IndexFunc(targets, func(t pathTarget) bool { return t.base == base && strings.HasPrefix(t.name, bareName) })
}

// paired gives, batch by batch, x's rate as a percentage of base's and x's client CPU time as a
// percentage of base's.
func paired(base, x []batch) (rate, cpu []float64) {
	for r := range base {
		rate = append(rate, 100*float64(base[r].wall)/float64(x[r].wall))
		cpu = append(cpu, 100*float64(x[r].cpu)/float64(base[r].cpu))
	}
	return rate, cpu
}

// iqr is the interquartile range of xs as "p25–p75".
func iqr(xs []float64) string {
	s := slices.Clone(xs)
	slices.Sort(s)
	q := func(p float64) float64 { return s[min(len(s)-1, int(p*float64(len(s))))] }
	return fmt.Sprintf("%s–%s", trim(q(0.25)), trim(q(0.75)))
}
