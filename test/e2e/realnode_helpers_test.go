package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/magic-ip/magic-ip/test/harness"
)

// probeStats is what the consumer image's consumerProbe (test/images/testbin probe) serves on
// GET /stats: its connection attempts to the injected endpoint since start or the last reset.
type probeStats struct {
	Attempts   int64            `json:"attempts"`
	OK         int64            `json:"ok"`
	Refused    int64            `json:"refused"`
	Timeouts   int64            `json:"timeouts"`
	Errors     int64            `json:"errors"`
	Answers    map[string]int64 `json:"answers"`
	LastAnswer string           `json:"lastAnswer"`
	LastError  string           `json:"lastError"`
}

// failed counts every attempt that was not answered.
func (s probeStats) failed() int64 { return s.Refused + s.Timeouts + s.Errors }

// consumerProbe reaches a consumer pod's consumerProbe over HTTP from inside the pod's node.
type consumerProbe struct {
	node *harness.Node
	pod  corev1.Pod
}

func (p consumerProbe) url(path string) string {
	return "http://" + net.JoinHostPort(p.pod.Status.PodIP, "8080") + path
}

func (p consumerProbe) do(ctx context.Context, method, path string, into any) error {
	req, err := http.NewRequestWithContext(ctx, method, p.url(path), nil)
	if err != nil {
		return err
	}
	resp, err := p.node.Netns.HTTPClient(5 * time.Second).Do(req)
	if err != nil {
		return fmt.Errorf("consumerProbe %s: %w", p.pod.Name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("consumerProbe %s %s %s: %s: %s", p.pod.Name, method, path, resp.Status, b)
	}
	if into == nil {
		return nil
	}
	return json.Unmarshal(b, into)
}

func (p consumerProbe) stats(ctx context.Context) (probeStats, error) {
	var s probeStats
	return s, p.do(ctx, http.MethodGet, "/stats", &s)
}

func (p consumerProbe) env(ctx context.Context) (map[string]string, error) {
	env := map[string]string{}
	return env, p.do(ctx, http.MethodGet, "/env", &env)
}

func (p consumerProbe) reset(ctx context.Context) error {
	return p.do(ctx, http.MethodPost, "/reset", nil)
}

// podsByNode lists the Running pods of namespace matching labels, keyed by node name.
func podsByNode(ctx context.Context, c client.Client, namespace string, labels map[string]string) (map[string]corev1.Pod, error) {
	var pods corev1.PodList
	if err := c.List(ctx, &pods, client.InNamespace(namespace), client.MatchingLabels(labels)); err != nil {
		return nil, err
	}
	out := map[string]corev1.Pod{}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning && podReady(&p) {
			out[p.Spec.NodeName] = p
		}
	}
	return out, nil
}

// daemonSetRolledOut is nil once every scheduled pod of the DaemonSet runs its current template
// and is available.
func daemonSetRolledOut(ctx context.Context, c client.Client, namespace, name string) error {
	var ds appsv1.DaemonSet
	if err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, &ds); err != nil {
		return err
	}
	s := ds.Status
	if s.ObservedGeneration < ds.Generation || s.DesiredNumberScheduled == 0 ||
		s.UpdatedNumberScheduled != s.DesiredNumberScheduled || s.NumberAvailable != s.DesiredNumberScheduled ||
		s.NumberUnavailable != 0 {
		return fmt.Errorf("DaemonSet %s/%s: desired %d updated %d available %d (generation %d observed %d)", namespace, name,
			s.DesiredNumberScheduled, s.UpdatedNumberScheduled, s.NumberAvailable, ds.Generation, s.ObservedGeneration)
	}
	return nil
}

// deploymentRolledOut is nil once every replica of the Deployment runs its current template and
// is available.
func deploymentRolledOut(ctx context.Context, c client.Client, namespace, name string) error {
	var d appsv1.Deployment
	if err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, &d); err != nil {
		return err
	}
	s, want := d.Status, int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	if s.ObservedGeneration < d.Generation || s.UpdatedReplicas != want || s.AvailableReplicas != want || s.Replicas != want {
		return fmt.Errorf("Deployment %s/%s: want %d, updated %d available %d total %d", namespace, name,
			want, s.UpdatedReplicas, s.AvailableReplicas, s.Replicas)
	}
	return nil
}

// magicState is what a node holds of magic-ip: our iptables lines and our addresses.
func magicState(ctx context.Context, n *harness.Node) (rules []string, addrs []string, err error) {
	save, err := n.Netns.Run(ctx, "iptables-save")
	if err != nil {
		return nil, nil, err
	}
	for _, l := range strings.Split(save, "\n") {
		if strings.Contains(l, "MAGIC-IP") || strings.Contains(strings.ToLower(l), "magic-ip") {
			rules = append(rules, l)
		}
	}
	out, err := n.Netns.Run(ctx, "ip", "-o", "addr", "show")
	if err != nil {
		return nil, nil, err
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, ":mip") {
			addrs = append(addrs, strings.TrimSpace(l))
		}
	}
	return rules, addrs, nil
}

// foreignRules is every iptables line of a node that is not ours and not a counter line: what
// cleanup must leave exactly as it was.
func foreignRules(ctx context.Context, n *harness.Node) ([]string, error) {
	save, err := n.Netns.Run(ctx, "iptables-save")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range strings.Split(save, "\n") {
		if l == "" || strings.HasPrefix(l, "#") || strings.Contains(l, "MAGIC-IP") {
			continue
		}
		out = append(out, l)
	}
	return out, nil
}

// helm runs helm against the cluster.
func helmOn(t *testing.T, cp *harness.ControlPlane, args ...string) string {
	t.Helper()
	out, err := harness.Helm(append(args, "--kubeconfig", cp.Kubeconfig)...)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}
