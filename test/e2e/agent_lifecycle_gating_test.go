package e2e

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/magic-ip/magic-ip/test/harness"
)

const (
	startupTaintKey = "magic-ip.dev/agent-not-ready"
	startupTaint    = startupTaintKey + ":NoSchedule"
	programmedType  = corev1.NodeConditionType("magic-ip.dev/Programmed")
)

// TestAgentNodeGating: a new node joins with the startup taint and its host interface missing.
// The agent reports magic-ip.dev/Programmed=False naming the interface and keeps the taint; once
// the interface exists it programs the node and only then removes the taint (the rules are checked
// in the node at the moment the watch shows the taint gone) and reports True. At idle it writes
// nothing to the Node; the condition flips False when the interface goes and True when it comes
// back. `cleanup` with --node-name removes the condition and a startup taint put back meanwhile.
func TestAgentNodeGating(t *testing.T) { forEachBackend(t, testAgentNodeGating) }

func testAgentNodeGating(t *testing.T, b backend) {
	cp := harness.StartControlPlane(t)
	c := b.cluster(t, cp, harness.ClusterOptions{Nodes: 1, Routed: true})
	n := c.Nodes[0]
	ctx := t.Context()
	cs, err := kubernetes.NewForConfig(cp.Config)
	if err != nil {
		t.Fatal(err)
	}
	addStartupTaint(t, cs, n.Name)
	hostIf := n.HostInterface()
	if _, err := n.Netns.Run(ctx, "ip", "link", "del", hostIf); err != nil {
		t.Fatal(err)
	}
	consumer := c.AddPod(n, "app", "consumer", nil, harness.PodOptions{})
	p := addProducer(t, c, n, "dd-1", harness.PodOptions{})
	if err := cp.Client.Create(ctx, b.magicIP("datadog")); err != nil {
		t.Fatal(err)
	}
	startAgent(t, c, n, b.flags("--startup-taint", startupTaint, "--metrics-bind-address", "127.0.0.1:9402")...)

	eventually(t, 10*time.Second, "Programmed=False while the host interface is missing",
		wantProgrammed(cs, n.Name, corev1.ConditionFalse, "InterfaceUnavailable", hostIf))
	if node := getNode(t, cs, n.Name); !hasStartupTaint(node) {
		t.Fatalf("startup taint removed while the node is not programmed: %v", node.Spec.Taints)
	}

	rulesAtRemoval := watchTaintRemoval(t, cs, b, n, p)
	addHostInterface(t, n)
	select {
	case got := <-rulesAtRemoval:
		if got != nil {
			t.Fatalf("the startup taint went before the node was programmed: %v", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("startup taint still on the Node 10s after the interface came back: %v", getNode(t, cs, n.Name).Spec.Taints)
	}
	eventually(t, 5*time.Second, "Programmed=True", wantProgrammed(cs, n.Name, corev1.ConditionTrue, "Programmed", ""))
	eventually(t, 5*time.Second, "served", b.onlyAnswers(consumer.Netns, p.Name))

	assertNoNodeWritesAtIdle(t, cs, n)

	if _, err := n.Netns.Run(ctx, "ip", "link", "del", hostIf); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "Programmed=False once the interface is gone",
		wantProgrammed(cs, n.Name, corev1.ConditionFalse, "InterfaceUnavailable", hostIf))
	addHostInterface(t, n)
	eventually(t, 10*time.Second, "Programmed=True once it is back", wantProgrammed(cs, n.Name, corev1.ConditionTrue, "Programmed", ""))
	if node := getNode(t, cs, n.Name); hasStartupTaint(node) {
		t.Errorf("startup taint put back by the agent: %v", node.Spec.Taints)
	}
}

// TestAgentCleanupLeavesNoGate: `cleanup` (as the DaemonSet's container runs it: NODE_NAME and the
// agent's service account) removes the agent's Node condition and a startup taint still there, and
// never adds the taint; without --node-name it does not touch the API.
func TestAgentCleanupLeavesNoGate(t *testing.T) { forEachBackend(t, testAgentCleanupLeavesNoGate) }

func testAgentCleanupLeavesNoGate(t *testing.T, b backend) {
	e := newOneNode(t, b, "--startup-taint", startupTaint)
	cs, err := kubernetes.NewForConfig(e.c.CP.Config)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "Programmed=True", wantProgrammed(cs, e.node.Name, corev1.ConditionTrue, "Programmed", ""))
	if err := e.agent.Stop(); err != nil {
		t.Fatal(err)
	}
	addStartupTaint(t, cs, e.node.Name) // say, the agent never got to remove it
	ctx := t.Context()
	if out, err := e.node.Netns.Run(ctx, agentBin, "cleanup"); err != nil {
		t.Fatalf("cleanup without --node-name: %v\n%s", err, out)
	}
	if node := getNode(t, cs, e.node.Name); !hasStartupTaint(node) || findProgrammed(node) == nil {
		t.Fatalf("cleanup without --node-name touched the Node: taints %v, conditions %v", node.Spec.Taints, node.Status.Conditions)
	}
	for i := range 2 {
		out, err := e.node.Netns.Run(ctx, agentBin, "--node-name", e.node.Name, "--kubeconfig", e.c.CP.AgentKubeconfig,
			"--startup-taint", startupTaint, "cleanup")
		if err != nil || strings.Contains(out, "forbidden") {
			t.Fatalf("cleanup run %d: %v\n%s", i+1, err, out)
		}
		node := getNode(t, cs, e.node.Name)
		if hasStartupTaint(node) || findProgrammed(node) != nil {
			t.Errorf("cleanup run %d left taints %v, conditions %v", i+1, node.Spec.Taints, node.Status.Conditions)
		}
		if findCondition(node, corev1.NodeReady) == nil {
			t.Errorf("cleanup run %d removed the kubelet's Ready condition: %v", i+1, node.Status.Conditions)
		}
	}
}

// watchTaintRemoval watches n's Node; on the first update without the startup taint it checks,
// in the node, that the address of b's family is on the host interface and the DNAT rule to p
// exists, and sends nil (or what was missing).
func watchTaintRemoval(t *testing.T, cs kubernetes.Interface, b backend, n *harness.Node, p *harness.Pod) <-chan error {
	t.Helper()
	ctx := t.Context()
	node := getNode(t, cs, n.Name)
	w, err := cs.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("metadata.name", n.Name).String(), ResourceVersion: node.ResourceVersion,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	out := make(chan error, 1)
	go func() {
		for ev := range w.ResultChan() {
			if node, ok := ev.Object.(*corev1.Node); ok && !hasStartupTaint(node) {
				out <- programmedInNode(ctx, b, n, p)
				return
			}
		}
	}()
	return out
}

// programmedInNode checks the node's kernel (its rules of b's family): the magic address on the
// host interface and the DNAT rule to the producer.
func programmedInNode(ctx context.Context, b backend, n *harness.Node, p *harness.Pod) error {
	v := b.view()
	out, err := nodeState(ctx, v, n.Netns, "dev", n.HostInterface())
	if err != nil {
		return fmt.Errorf("read the node: %w: %s", err, out)
	}
	var missing []string
	for _, want := range []string{v.redirect(net.JoinHostPort(b.podIP(p).String(), strconv.Itoa(apmPort))), b.inet()} {
		if !strings.Contains(out, want) {
			missing = append(missing, want)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("node not programmed: %q missing from\n%s", missing, out)
	}
	return nil
}

// assertNoNodeWritesAtIdle: across three more syncs of the settled agent, the API server counts
// no write request to Nodes (any subresource).
func assertNoNodeWritesAtIdle(t *testing.T, cs kubernetes.Interface, n *harness.Node) {
	t.Helper()
	assertIdle(t, n, "Node writes", func(ctx context.Context) (float64, error) { return nodeWrites(ctx, cs) })
}

// assertIdle: across three more syncs of the settled agent on n, count (an API server counter)
// does not move.
func assertIdle(t *testing.T, n *harness.Node, what string, count func(context.Context) (float64, error)) {
	t.Helper()
	ctx := t.Context()
	// Let a sync after the last change pass, then count from there.
	syncs := func(ctx context.Context) float64 {
		v, _ := metric(ctx, n, "magic_ip_agent_sync_duration_seconds_count")
		return v
	}
	settled := syncs(ctx) + 1
	eventually(t, 10*time.Second, "one more sync", func(ctx context.Context) error {
		if s := syncs(ctx); s < settled {
			return fmt.Errorf("%v syncs, want %v", s, settled)
		}
		return nil
	})
	before, err := count(ctx)
	if err != nil {
		t.Fatal(err)
	}
	from := syncs(ctx)
	eventually(t, 15*time.Second, "three more (full) syncs", func(ctx context.Context) error {
		if s := syncs(ctx); s < from+3 {
			return fmt.Errorf("%v syncs, want %v", s, from+3)
		}
		return nil
	})
	after, err := count(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after != before {
		t.Errorf("%s at idle: %v over 3 syncs, want 0", what, after-before)
	}
	t.Logf("%s at idle over 3 syncs: %v", what, after-before)
}

// nodeWrites sums the API server's apiserver_request_total for write verbs on nodes.
func nodeWrites(ctx context.Context, cs kubernetes.Interface) (float64, error) {
	return apiMetricSum(ctx, cs, func(line string) bool {
		return strings.HasPrefix(line, "apiserver_request_total{") && strings.Contains(line, `resource="nodes"`) &&
			slices.ContainsFunc([]string{"PATCH", "PUT", "POST", "DELETE", "APPLY"}, func(v string) bool { return strings.Contains(line, `verb="`+v+`"`) })
	})
}

// addHostInterface creates the node's host interface again (routed nodes: an empty bridge).
func addHostInterface(t *testing.T, n *harness.Node) {
	t.Helper()
	for _, args := range [][]string{{"link", "add", n.HostInterface(), "type", "bridge"}, {"link", "set", n.HostInterface(), "up"}} {
		if out, err := n.Netns.Run(t.Context(), "ip", args...); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
}

// wantProgrammed is a condition: the Node's magic-ip.dev/Programmed condition has status and
// reason, and its message contains msg.
func wantProgrammed(cs kubernetes.Interface, name string, status corev1.ConditionStatus, reason, msg string) func(context.Context) error {
	return func(ctx context.Context) error {
		node, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		c := findProgrammed(node)
		if c == nil || c.Status != status || c.Reason != reason || !strings.Contains(c.Message, msg) {
			return fmt.Errorf("condition %+v, want status %s, reason %s, message with %q", c, status, reason, msg)
		}
		return nil
	}
}

func findProgrammed(node *corev1.Node) *corev1.NodeCondition {
	return findCondition(node, programmedType)
}

func findCondition(node *corev1.Node, typ corev1.NodeConditionType) *corev1.NodeCondition {
	for i := range node.Status.Conditions {
		if node.Status.Conditions[i].Type == typ {
			return &node.Status.Conditions[i]
		}
	}
	return nil
}

func hasStartupTaint(node *corev1.Node) bool {
	return slices.ContainsFunc(node.Spec.Taints, func(t corev1.Taint) bool { return t.Key == startupTaintKey })
}

func getNode(t *testing.T, cs kubernetes.Interface, name string) *corev1.Node {
	t.Helper()
	node, err := cs.CoreV1().Nodes().Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return node
}

// addStartupTaint adds the startup taint to the Node, as node provisioning would.
func addStartupTaint(t *testing.T, cs kubernetes.Interface, name string) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		node := getNode(t, cs, name)
		if hasStartupTaint(node) {
			return nil
		}
		node.Spec.Taints = append(node.Spec.Taints, corev1.Taint{Key: startupTaintKey, Effect: corev1.TaintEffectNoSchedule})
		_, err := cs.CoreV1().Nodes().Update(t.Context(), node, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("taint Node %s: %v", name, err)
	}
}
