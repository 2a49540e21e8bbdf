package e2e

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
	"github.com/magic-ip/magic-ip/test/harness"
)

// fallbackEnv is two nodes: node 1 with a consumer, its local producer and a running agent (with
// metrics), node 2 with a Ready producer. Routes join the pod CIDRs, as a CNI's do.
type fallbackEnv struct {
	c        *harness.Cluster
	cs       kubernetes.Interface
	n1, n2   *harness.Node
	consumer *harness.Pod
	local    *harness.Pod
	remote   *harness.Pod
	b        backend
	rules    ruleView
}

func newFallbackEnv(t *testing.T, action v1alpha1.NoLocalProducerAction, b backend) *fallbackEnv {
	cp := harness.StartControlPlane(t)
	c := b.cluster(t, cp, harness.ClusterOptions{Nodes: 2})
	cs, err := kubernetes.NewForConfig(cp.Config)
	if err != nil {
		t.Fatal(err)
	}
	e := &fallbackEnv{c: c, cs: cs, n1: c.Nodes[0], n2: c.Nodes[1], b: b, rules: b.view()}
	e.consumer = c.AddPod(e.n1, "app", "consumer", nil, harness.PodOptions{})
	e.local = addProducer(t, c, e.n1, "dd-old", harness.PodOptions{})
	e.remote = addProducer(t, c, e.n2, "dd-remote", harness.PodOptions{})
	mip := b.magicIP("datadog")
	mip.Spec.WhenNoLocalProducer = action
	if err := cp.Client.Create(t.Context(), mip); err != nil {
		t.Fatal(err)
	}
	startAgent(t, c, e.n1, b.flags("--metrics-bind-address", "127.0.0.1:9402")...)
	eventually(t, 10*time.Second, "served by the local producer", b.onlyAnswers(e.consumer.Netns, e.local.Name))
	return e
}

// roll replaces node 1's producer the way a DaemonSet rollout with a well-behaved producer does:
// the old pod terminates (still Ready and serving), turns NotReady while it still listens (its
// preStop grace), leaves once the node no longer sends it new connections, and its replacement
// starts NotReady and turns Ready. While the old one terminates, the rules name whileTerminating
// (the old producer, marked terminating, or with Fallback the Ready one on node 2). before runs
// just before the old producer turns NotReady, and between after that, before it leaves.
func (e *fallbackEnv) roll(t *testing.T, whileTerminating string, before, between func()) *harness.Pod {
	ctx := t.Context()
	old := e.local
	if err := old.MarkTerminating(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "new connections go to "+whileTerminating+" while the old producer terminates", ruleMentions(e.rules, e.n1, whileTerminating))
	before()
	if err := old.SetReady(ctx, false); err != nil {
		t.Fatal(err)
	}
	between()
	eventually(t, 5*time.Second, "no new connection goes to the old producer", func(ctx context.Context) error {
		if ruleMentions(e.rules, e.n1, old.Name)(ctx) == nil {
			return fmt.Errorf("node 1's rules still mention %s", old.Name)
		}
		return nil
	})
	if err := old.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	repl := addProducer(t, e.c, e.n1, "dd-new", harness.PodOptions{NotReady: true})
	if err := repl.SetReady(ctx, true); err != nil {
		t.Fatal(err)
	}
	e.local = repl
	return repl
}

// atLeast is a condition: the prober has seen outcome n more times than before.
func atLeast(pr *prober, outcome string, before, n int) func(context.Context) error {
	return func(context.Context) error {
		if got := pr.count(outcome) - before; got < n {
			return fmt.Errorf("%d × %q so far, want %d (all: %v)", got, outcome, n, pr.snapshot())
		}
		return nil
	}
}

// TestAgentFallbackRollout: node 1's producer is rolled under a connect every 2 ms. With
// whenNoLocalProducer: Fallback, not one connect fails: the producer on node 2 answers from the
// moment node 1's starts terminating until node 1 has a Ready one again, then the new local one; the same when the new one's readiness fails for a while. The watch of node 2's
// producers exists only meanwhile (namespaced), and while nothing changes the agent makes no pod
// request at all, whether it falls back or not.
func TestAgentFallbackRollout(t *testing.T) { forEachBackend(t, testAgentFallbackRollout) }

func testAgentFallbackRollout(t *testing.T, b backend) {
	e := newFallbackEnv(t, v1alpha1.Fallback, b)
	ctx := t.Context()
	if w := producerWatches(t, e.cs); w != 0 {
		t.Errorf("namespaced pod watches with a Ready local producer: %v, want 0", w)
	}
	assertNoPodRequestsAtIdle(t, e.cs, e.n1)
	pr := b.startProber(ctx, e.consumer.Netns, 2*time.Millisecond)
	old := e.local
	// Terminating, the old producer still serves what it has; new connections go to the Ready
	// producer of node 2 (a terminating one is used only when no Ready one may be, KEP-1669).
	repl := e.roll(t, e.remote.Name, func() {}, func() {
		eventually(t, 5*time.Second, "answers from node 2's producer", atLeast(pr, e.remote.Name, 0, 200))
		if w := producerWatches(t, e.cs); w != 1 {
			t.Errorf("namespaced pod watches while falling back: %v, want 1", w)
		}
		assertNoPodRequestsAtIdle(t, e.cs, e.n1)
	})
	eventually(t, 5*time.Second, "new connections go to the new local producer", b.onlyAnswers(e.consumer.Netns, repl.Name))
	eventually(t, 5*time.Second, "answers from the new local producer", atLeast(pr, repl.Name, 0, 200))
	eventually(t, 5*time.Second, "the watch of node 2's producers stopped", func(context.Context) error {
		if w := producerWatches(t, e.cs); w != 0 {
			return fmt.Errorf("%v namespaced pod watches", w)
		}
		return nil
	})

	// Its readiness probe fails (it still listens), with no termination to announce it: the
	// watch starts cold, and the rules still go straight to node 2's producer.
	remoteBefore := pr.count(e.remote.Name)
	if err := repl.SetReady(ctx, false); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "answers from node 2's producer again", atLeast(pr, e.remote.Name, remoteBefore, 200))
	if err := repl.SetReady(ctx, true); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "back to the local producer", b.onlyAnswers(e.consumer.Netns, repl.Name))
	got := pr.finish()
	for outcome, n := range got {
		if outcome != old.Name && outcome != e.remote.Name && outcome != repl.Name {
			t.Errorf("prober saw %q %d times; every connect must be answered (all: %v)", outcome, n, got)
		}
	}
	t.Logf("prober outcomes: %v", got)
}

// TestAgentRejectRollout: the same rollout with whenNoLocalProducer: Reject: refusals only while
// node 1 has no usable producer, never a hang, and node 2's producer is never used nor watched.
func TestAgentRejectRollout(t *testing.T) { forEachBackend(t, testAgentRejectRollout) }

func testAgentRejectRollout(t *testing.T, b backend) {
	e := newFallbackEnv(t, v1alpha1.Reject, b)
	ctx := t.Context()
	pr := b.startProber(ctx, e.consumer.Netns, 2*time.Millisecond)
	old := e.local
	var refusedBefore int
	repl := e.roll(t, old.Name+" (terminating", func() { refusedBefore = pr.count("refused") }, func() {
		eventually(t, 5*time.Second, "refusals while node 1 has no usable producer", atLeast(pr, "refused", refusedBefore, 100))
		if w := producerWatches(t, e.cs); w != 0 {
			t.Errorf("namespaced pod watches with Reject: %v, want 0", w)
		}
	})
	eventually(t, 5*time.Second, "new connections go to the new local producer", b.onlyAnswers(e.consumer.Netns, repl.Name))
	got := pr.finish()
	if refusedBefore != 0 {
		t.Errorf("%d refusals while the old producer was still usable", refusedBefore)
	}
	for outcome, n := range got {
		if outcome != old.Name && outcome != "refused" && outcome != repl.Name {
			t.Errorf("prober saw %q %d times; only answers and refusals are allowed (all: %v)", outcome, n, got)
		}
	}
	t.Logf("prober outcomes: %v", got)
}

// producerWatches is the number of namespaced pod watches open on the API server: the agent's own
// pods are watched cluster-wide (by node), so these are remote producer watches.
func producerWatches(t *testing.T, cs kubernetes.Interface) float64 {
	t.Helper()
	v, err := apiMetricSum(t.Context(), cs, sample("apiserver_longrunning_requests", `resource="pods"`, `scope="namespace"`, `verb="WATCH"`))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// assertNoPodRequestsAtIdle: across three more syncs of the settled agent on n, the API server
// counts no request about pods (of any verb, any scope).
func assertNoPodRequestsAtIdle(t *testing.T, cs kubernetes.Interface, n *harness.Node) {
	t.Helper()
	assertIdle(t, n, "pod requests", func(ctx context.Context) (float64, error) {
		return apiMetricSum(ctx, cs, sample("apiserver_request_total", `resource="pods"`))
	})
}

// apiMetricSum sums the values of the API server's metric samples whose line keep accepts.
func apiMetricSum(ctx context.Context, cs kubernetes.Interface, keep func(line string) bool) (float64, error) {
	body, err := cs.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return 0, fmt.Errorf("API server metrics: %w", err)
	}
	var sum float64
	for _, line := range strings.Split(string(body), "\n") {
		if !keep(line) {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, fmt.Errorf("metric line %q: %w", line, err)
		}
		sum += v
	}
	return sum, nil
}

// sample accepts the lines of metric name whose labels include every one of labels.
func sample(name string, labels ...string) func(string) bool {
	return func(line string) bool {
		if !strings.HasPrefix(line, name+"{") {
			return false
		}
		for _, l := range labels {
			if !strings.Contains(line, l) {
				return false
			}
		}
		return true
	}
}
