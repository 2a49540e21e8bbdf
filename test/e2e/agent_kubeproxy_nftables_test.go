package e2e

import (
	"context"
	"fmt"
	"maps"
	"testing"
	"time"

	gnft "github.com/google/nftables"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/magic-ip/magic-ip/agent"
	"github.com/magic-ip/magic-ip/test/harness"
)

// besideKubeProxy is one node with kube-proxy in nftables mode, a consumer, a datadog producer
// behind both a ClusterIP Service (kube-proxy's) and the MagicIP (ours), and the agent.
type besideKubeProxy struct {
	c         *harness.Cluster
	node      *harness.Node
	consumer  *harness.Pod
	kp        *harness.KubeProxy
	agent     *harness.Process
	clusterIP string
}

// kpTable is kube-proxy's nftables table, family ip.
var kpTable = &gnft.Table{Name: "kube-proxy", Family: gnft.TableFamilyIPv4}

// kubeProxyRules counts the rules of each chain of kube-proxy's table in ns (nil: no table).
func kubeProxyRules(t *testing.T, ns *harness.Netns) map[string]int {
	t.Helper()
	var out map[string]int
	for chain, rules := range tableRules(t, nftConnT(t, ns), kpTable) {
		if out == nil {
			out = map[string]int{}
		}
		out[chain] = len(rules)
	}
	return out
}

// tableRules lists the rules of each chain of table, read over c.
func tableRules(t *testing.T, c *gnft.Conn, table *gnft.Table) map[string][]*gnft.Rule {
	t.Helper()
	chains, err := c.ListChainsOfTableFamily(table.Family)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]*gnft.Rule{}
	for _, ch := range chains {
		if ch.Table.Name != table.Name {
			continue
		}
		if out[ch.Name], err = c.GetRules(table, ch); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// newBesideKubeProxy starts kube-proxy --proxy-mode=nftables first (so that auto finds its
// table), then the agent with agentArgs, and waits until both the ClusterIP and the magic address
// answer from the producer.
func newBesideKubeProxy(t *testing.T, agentArgs ...string) *besideKubeProxy {
	cp := harness.StartControlPlane(t)
	c := harness.NewCluster(t, cp, harness.ClusterOptions{Nodes: 1})
	e := &besideKubeProxy{c: c, node: c.Nodes[0]}
	harness.StartEndpointSliceController(t, cp)
	e.consumer = c.AddPod(e.node, "app", "consumer", nil, harness.PodOptions{})
	addProducer(t, c, e.node, "dd-1", harness.PodOptions{})
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "datadog", Name: "datadog"}, Spec: corev1.ServiceSpec{
		Selector: map[string]string{"app": "dd"},
		Ports:    []corev1.ServicePort{{Name: "apm", Port: apmPort, TargetPort: intstr.FromInt32(apmPort), Protocol: corev1.ProtocolTCP}}}}
	if err := cp.Client.Create(t.Context(), svc); err != nil {
		t.Fatal(err)
	}
	e.clusterIP = svc.Spec.ClusterIP
	if err := cp.Client.Create(t.Context(), datadogMagicIP("datadog")); err != nil {
		t.Fatal(err)
	}
	e.kp = harness.StartKubeProxyMode(t, c, e.node, harness.KubeProxyNftables)
	if kubeProxyRules(t, e.node.Netns) == nil {
		t.Fatalf("kube-proxy --proxy-mode=nftables synced but table ip kube-proxy is missing")
	}
	e.agent = startAgent(t, c, e.node, append(agentArgs, "--metrics-bind-address", "127.0.0.1:9402")...)
	e.bothAnswer(t, "at start")
	return e
}

// bothAnswer waits until the ClusterIP (kube-proxy) and the magic address (the agent) both
// answer from dd-1.
func (e *besideKubeProxy) bothAnswer(t *testing.T, when string) {
	t.Helper()
	eventually(t, 15*time.Second, "ClusterIP and magic address answer "+when, func(ctx context.Context) error {
		svc, magic := tcpOutcome(ctx, e.consumer.Netns, e.clusterIP, apmPort), tcpOutcome(ctx, e.consumer.Netns, magicAddr, apmPort)
		if svc != "dd-1" || magic != "dd-1" {
			return fmt.Errorf("ClusterIP %s: %q, magic address: %q; want dd-1 for both", e.clusterIP, svc, magic)
		}
		return nil
	})
}

// TestAgentBesideKubeProxyNftables: on a node whose kube-proxy runs in nftables mode (table ip
// kube-proxy, written by the real kube-proxy through nft), the agent with --datapath=nftables, and
// with auto (which must pick nftables there and say why in its metrics), lives beside it: a
// ClusterIP and the magic address both answer from a pod; kube-proxy's syncs and a restart of
// kube-proxy leave our table alone (the agent's full resyncs find no drift); the agent's syncs
// and restart leave kube-proxy's rules alone; `magic-ip-agent cleanup` removes our table only.
func TestAgentBesideKubeProxyNftables(t *testing.T) {
	for _, dp := range []struct{ flag, reason string }{
		{agent.DatapathNftables, agent.ReasonFlag}, {agent.DatapathAuto, agent.ReasonKubeProxyNftables},
	} {
		t.Run(dp.flag, func(t *testing.T) { testBesideKubeProxyNftables(t, dp.flag, dp.reason) })
	}
}

func testBesideKubeProxyNftables(t *testing.T, datapath, reason string) {
	e := newBesideKubeProxy(t, "--datapath", datapath)
	cp, ctx, ns := e.c.CP, t.Context(), e.node.Netns
	info := fmt.Sprintf(`magic_ip_agent_datapath_info{datapath=%q,reason=%q}`, agent.DatapathNftables, reason)
	eventually(t, 5*time.Second, "the datapath chosen in the metrics", wantMetric(e.node, info, 1))
	ours, ok := nftComments(t, ns)
	if !ok {
		t.Fatal("table inet magic-ip missing while the magic address answers")
	}

	// kube-proxy's syncs (a Service added) and its restart leave our table alone.
	other := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "datadog", Name: "other"}, Spec: corev1.ServiceSpec{
		Selector: map[string]string{"app": "dd"}, Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(apmPort)}}}}
	before := time.Now()
	if err := cp.Client.Create(ctx, other); err != nil {
		t.Fatal(err)
	}
	if _, err := e.kp.WaitSync(ctx, before, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	_ = e.kp.Stop() // kube-proxy exits on SIGTERM with "signal: terminated"
	e.kp = harness.StartKubeProxyMode(t, e.c, e.node, harness.KubeProxyNftables)
	if got, _ := nftComments(t, ns); got != ours {
		t.Fatalf("after kube-proxy's sync and restart our table is\n%s\nwant\n%s", got, ours)
	}
	waitSyncs(t, e.node, 2) // full resyncs (2 s) read our table back
	eventually(t, 5*time.Second, "no drift repaired", wantMetric(e.node, "magic_ip_agent_drift_repairs_total", 0))
	e.bothAnswer(t, "after kube-proxy's sync and restart")

	// The agent's syncs (a second producer) and restart leave kube-proxy's rules alone.
	theirs := kubeProxyRules(t, ns)
	addProducer(t, e.c, e.node, "dd-2", harness.PodOptions{})
	eventually(t, 10*time.Second, "dd-2 in our table", func(context.Context) error {
		if got, _ := nftComments(t, ns); got == ours {
			return fmt.Errorf("our table unchanged")
		}
		return nil
	})
	if err := e.agent.Stop(); err != nil {
		t.Fatal(err)
	}
	e.agent = startAgent(t, e.c, e.node, "--datapath", datapath, "--metrics-bind-address", "127.0.0.1:9402")
	waitSyncs(t, e.node, 2)
	if got := kubeProxyRules(t, ns); !maps.Equal(got, theirs) {
		t.Fatalf("after the agent's syncs and restart kube-proxy's chains hold %v rules, want %v", got, theirs)
	}

	// Cleanup removes our table, not kube-proxy's: its ClusterIP still answers.
	theirs = kubeProxyRules(t, ns)
	if err := e.agent.Stop(); err != nil {
		t.Fatal(err)
	}
	if out, err := ns.Run(ctx, agentBin, "cleanup"); err != nil {
		t.Fatalf("magic-ip-agent cleanup: %v\n%s", err, out)
	}
	if _, ok := nftComments(t, ns); ok {
		t.Error("table inet magic-ip still there after cleanup")
	}
	if got := kubeProxyRules(t, ns); !maps.Equal(got, theirs) {
		t.Errorf("after our cleanup kube-proxy's chains hold %v rules, want %v", got, theirs)
	}
	if got := tcpOutcome(ctx, e.consumer.Netns, e.clusterIP, apmPort); got != "dd-1" && got != "dd-2" {
		t.Errorf("ClusterIP after our cleanup: %q, want a producer", got)
	}
}
