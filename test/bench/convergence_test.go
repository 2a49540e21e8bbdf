package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
	"github.com/magic-ip/magic-ip/test/harness"
)

const (
	magicAddr  = "169.254.210.210"
	magicAddr6 = "fd00::a9fe:d2d2" // the dual-stack MagicIP's IPv6 address (BenchmarkBackends)
	pollerAddr = "169.254.210.211" // the poller's own address, so both run on one node
	port       = 8126
)

// BenchmarkConvergence: a producer's Ready condition written to the API (the status update
// acknowledged) → the first connection
// to the magic address answered by it, for the agent and for a faithful 5-second poller (the
// kube-magic-ip-address design: list every producer pod cluster-wide, rewrite one DNAT rule).
func BenchmarkConvergence(b *testing.B) {
	cp := harness.StartControlPlane(b)
	c := harness.NewCluster(b, cp, harness.ClusterOptions{Nodes: 1})
	n := c.Nodes[0]
	consumer := c.AddPod(n, "app", "consumer", nil, harness.PodOptions{})
	prod := c.AddPod(n, "apm", "apm-1", map[string]string{"app": "apm"}, harness.PodOptions{NotReady: true})
	prod.Netns.ServeTCP(b, port, prod.Name)
	mip := &v1alpha1.MagicIP{
		ObjectMeta: metav1.ObjectMeta{Name: "apm"},
		Spec: v1alpha1.MagicIPSpec{Address: magicAddr, Ports: []v1alpha1.MagicIPPort{{Name: "http", Port: port}},
			Producer: v1alpha1.Producer{Namespace: "apm", Selector: v1alpha1.LabelSelector{MatchLabels: map[string]string{"app": "apm"}}}},
	}
	if err := cp.Client.Create(b.Context(), mip); err != nil {
		b.Fatal(err)
	}
	harness.StartAgent(b, c, n, agentBin, "--resync-period", "10s", "-v", "0")
	poller := startPoller(b, cp.Client, n)
	// Start measuring once the agent has programmed the node: a connection is refused at once.
	for {
		ctx, cancel := context.WithTimeout(b.Context(), 100*time.Millisecond)
		_, err := consumer.Netns.DialTCP(ctx, net.JoinHostPort(magicAddr, fmt.Sprint(port)))
		cancel()
		if harness.Outcome(err) == "refused" {
			break
		}
	}

	agentTimes := measure(b, trials(50, 5), prod, consumer.Netns, magicAddr, 0)
	pollerTimes := measure(b, trials(10, 2), prod, consumer.Netns, pollerAddr, 5*time.Second)
	poller.stop()

	const sc = "convergence (Ready → first answer)"
	p50, p99 := percentile(agentTimes, 50), percentile(agentTimes, 99)
	goal(sc, fmt.Sprintf("agent p50 (%d trials)", len(agentTimes)), p50, "ms", "≤ 25 ms", p50 <= 25)
	goal(sc, "agent p99", p99, "ms", "≤ 100 ms", p99 <= 100)
	pm := mean(pollerTimes)
	record(row{Scenario: sc, Figure: fmt.Sprintf("5 s poller mean (%d trials)", len(pollerTimes)), Value: pm, Unit: "ms"})
	record(row{Scenario: sc, Figure: "5 s poller p99", Value: percentile(pollerTimes, 99), Unit: "ms"})
	goal(sc, "poller mean / agent p99", pm/p99, "×", "≥ 25×", pm/p99 >= 25)
}

// measure runs trials: producer Ready → dial addr until the producer answers; then NotReady and
// wait until it no longer answers (not timed). jitter > 0 waits a random time up to jitter before
// each trial, so that a periodic peer's phase is random rather than locked to the trials.
func measure(b *testing.B, n int, prod *harness.Pod, from *harness.Netns, addr string, jitter time.Duration) []time.Duration {
	ctx := b.Context()
	var out, writes []time.Duration
	for range n {
		if jitter > 0 {
			select {
			case <-time.After(rand.N(jitter)):
			case <-ctx.Done():
				b.Fatal(ctx.Err())
			}
		}
		d, w, err := convergeOnce(ctx, prod, from, addr)
		if err != nil {
			b.Fatal(err)
		}
		out, writes = append(out, d), append(writes, w)
	}
	b.Logf("%s: API status write p50 %.1f ms p99 %.1f ms (not counted)", addr, percentile(writes, 50), percentile(writes, 99))
	return out
}

// convergeOnce is one trial: prod's Ready written (write: how long the API took to acknowledge
// it) → the first connection from from to addr answered by prod (d); then NotReady, and it waits
// until prod no longer answers (not timed).
func convergeOnce(ctx context.Context, prod *harness.Pod, from *harness.Netns, addr string) (d, write time.Duration, err error) {
	target := net.JoinHostPort(addr, fmt.Sprint(port))
	answered := func() bool {
		dctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		got, err := from.DialTCP(dctx, target)
		return err == nil && got == prod.Name
	}
	begin := time.Now()
	if err := prod.SetReady(ctx, true); err != nil {
		return 0, 0, err
	}
	start := time.Now() // the Ready condition is written: the clock starts
	for !answered() {
		if time.Since(start) > 30*time.Second {
			return 0, 0, fmt.Errorf("%s not answered by %s 30 s after Ready", addr, prod.Name)
		}
	}
	d, write = time.Since(start), start.Sub(begin)
	if err := prod.SetReady(ctx, false); err != nil {
		return 0, 0, err
	}
	for answered() {
		if time.Since(start) > 60*time.Second {
			return 0, 0, fmt.Errorf("%s still answered by %s long after NotReady", addr, prod.Name)
		}
	}
	return d, write, nil
}

// poller is the baseline: every 5 s it lists all producer pods (no node filter, as the original
// script does) and rewrites one DNAT rule for pollerAddr with one iptables-restore.
type poller struct {
	done chan struct{}
	quit chan struct{}
}

func startPoller(b *testing.B, c client.Client, n *harness.Node) *poller {
	ctx := b.Context()
	setup := "*nat\n:MAGIC-POLLER - [0:0]\n-I PREROUTING 1 -j MAGIC-POLLER\nCOMMIT\n"
	if err := restore(ctx, n, setup); err != nil {
		b.Fatal(err)
	}
	p := &poller{done: make(chan struct{}), quit: make(chan struct{})}
	go func() {
		defer close(p.done)
		tick := time.NewTicker(5 * time.Second)
		defer tick.Stop()
		for {
			var pods corev1.PodList
			if err := c.List(ctx, &pods, client.MatchingLabels{"app": "apm"}); err == nil {
				rules := "*nat\n:MAGIC-POLLER - [0:0]\n"
				for _, pod := range pods.Items {
					if pod.Spec.NodeName == n.Name && ready(&pod) && pod.Status.PodIP != "" {
						rules += fmt.Sprintf("-A MAGIC-POLLER -d %s/32 -p tcp --dport %d -j DNAT --to-destination %s:%d\n", pollerAddr, port, pod.Status.PodIP, port)
						break
					}
				}
				_ = restore(ctx, n, rules+"COMMIT\n")
			}
			select {
			case <-p.quit:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return p
}

func (p *poller) stop() {
	close(p.quit)
	<-p.done
}

func ready(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func restore(ctx context.Context, n *harness.Node, rules string) error {
	cmd := n.Netns.Command(ctx, "iptables-restore", "--noflush")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("iptables-restore: %w: %s", err, out)
	}
	return nil
}
