package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
	"github.com/magic-ip/magic-ip/kubectlplugin"
	"github.com/magic-ip/magic-ip/test/harness"
)

var agentPodLabels = map[string]string{"app.kubernetes.io/name": "magic-ip", "app.kubernetes.io/component": "agent"}

// statusCluster is three routed nodes running the real agents and webhook, in known states:
// node 0 healthy with a producer and a consumer, node 1 without its host interface, node 2 healthy
// without a producer (its agent is stopped later). Each node has an agent pod, created before
// its agent starts, as the DaemonSet's would be.
type statusCluster struct {
	c         *harness.Cluster
	cs        kubernetes.Interface
	agents    []*harness.Process
	agentPods []*harness.Pod
	producer  *harness.Pod
}

func newStatusCluster(t *testing.T, b backend) *statusCluster {
	cp := harness.StartControlPlane(t)
	e := &statusCluster{c: b.cluster(t, cp, harness.ClusterOptions{Nodes: 3, Routed: true})}
	var err error
	if e.cs, err = kubernetes.NewForConfig(cp.Config); err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	harness.StartWebhook(t, cp, webhookBin)
	if err := e.c.EnsureNamespace(ctx, "apps", map[string]string{"magic-ip.dev/inject": "enabled"}); err != nil {
		t.Fatal(err)
	}
	mip := b.magicIP("datadog")
	mip.Spec.Inject.Hostnames = []string{"datadog.node.local"}
	if err := cp.Client.Create(ctx, mip); err != nil {
		t.Fatal(err)
	}
	e.producer = addProducer(t, e.c, e.c.Nodes[0], "dd-1", harness.PodOptions{})
	if _, err := e.c.Nodes[1].Netns.Run(ctx, "ip", "link", "del", e.c.Nodes[1].HostInterface()); err != nil {
		t.Fatal(err)
	}
	for i, n := range e.c.Nodes {
		e.agentPods = append(e.agentPods, e.c.AddPod(n, harness.WebhookNamespace, "magic-ip-agent-"+strconv.Itoa(i), agentPodLabels, harness.PodOptions{HostNetwork: true}))
		e.agents = append(e.agents, startAgent(t, e.c, n, b.flags("--metrics-bind-address", "127.0.0.1:9402")...))
	}
	return e
}

// TestNodeRecordsAndCounts: each agent keeps one MagicIPNode record (owned by its Node) saying
// what it programmed; the status controller sums them up into the MagicIP's status.nodes, which
// `kubectl get mip` shows. At idle neither is written (0 writes per node per hour); a producer
// rollout on one node costs that node a write per step and the MagicIP a bounded number.
//
// A record lists each producer with its first address (status.podIP): IPv4 on dual-stack nodes.
func TestNodeRecordsAndCounts(t *testing.T) { forEachBackend(t, testNodeRecordsAndCounts) }

func testNodeRecordsAndCounts(t *testing.T, b backend) {
	datapath := b.datapath
	e := newStatusCluster(t, b)
	cp, ctx := e.c.CP, t.Context()
	n0, n1, n2 := e.c.Nodes[0], e.c.Nodes[1], e.c.Nodes[2]
	eventually(t, 15*time.Second, "the three records", func(ctx context.Context) error {
		return errorsOf(
			wantEntry(ctx, cp.Client, n0.Name, true, v1alpha1.ReasonProgrammed, "datadog/dd-1="+e.producer.IP.String()),
			wantEntry(ctx, cp.Client, n1.Name, false, v1alpha1.ReasonInterfaceUnavailable, ""),
			wantEntry(ctx, cp.Client, n2.Name, true, v1alpha1.ReasonProgrammed, ""))
	})
	rec := &v1alpha1.MagicIPNode{}
	if err := cp.Client.Get(ctx, client.ObjectKey{Name: n0.Name}, rec); err != nil {
		t.Fatal(err)
	}
	node := getNode(t, e.cs, n0.Name)
	if len(rec.OwnerReferences) != 1 || rec.OwnerReferences[0].UID != node.UID || rec.Datapath != datapath || rec.LastSyncTime == nil || rec.AgentStartTime == nil {
		t.Errorf("record %s: owners %+v (want Node uid %s), datapath %q (want %s), lastSyncTime %v, agentStartTime %v",
			rec.Name, rec.OwnerReferences, node.UID, rec.Datapath, datapath, rec.LastSyncTime, rec.AgentStartTime)
	}
	eventually(t, 15*time.Second, "status.nodes", wantCounts(cp.Client, v1alpha1.NodeCounts{Programmed: 2, LocalProducers: 1, Failing: 1}))
	out, err := cp.Kubectl("get", "mip", "datadog")
	if err != nil {
		t.Fatal(err)
	}
	if f := strings.Fields(strings.Split(out, "\n")[1]); len(f) < 7 || strings.Join(f[1:6], " ") != magicAddr+" 8126/TCP,8125/UDP 2 1 1" {
		t.Errorf("kubectl get mip: want ADDRESS PORTS PROGRAMMED LOCAL-PRODUCERS FAILING = %s 8126/TCP,8125/UDP 2 1 1, got\n%s", magicAddr, out)
	}

	idle := countWrites(t, e.cs)
	waitSyncs(t, n0, 3) // three more (full: 2 s resync) syncs on every node
	if w := idle.since(t); w.records != 0 || w.status != 0 {
		t.Errorf("writes at idle over 3 syncs of 3 agents: %d to MagicIPNodes, %d to MagicIP status; want 0 (0 per node per hour)", w.records, w.status)
	} else {
		t.Logf("writes at idle over 3 syncs of 3 agents: 0 to MagicIPNodes, 0 to MagicIP status: 0 per node per hour")
	}

	rollout := countWrites(t, e.cs)
	start := time.Now()
	p2 := addProducer(t, e.c, n0, "dd-2", harness.PodOptions{})
	eventually(t, 10*time.Second, "dd-2 in the record", func(ctx context.Context) error {
		return wantEntry(ctx, cp.Client, n0.Name, true, v1alpha1.ReasonProgrammed, "datadog/dd-1="+e.producer.IP.String(), "datadog/dd-2="+p2.IP.String())
	})
	if err := e.producer.MarkTerminating(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.producer.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "only dd-2 in the record", func(ctx context.Context) error {
		return wantEntry(ctx, cp.Client, n0.Name, true, v1alpha1.ReasonProgrammed, "datadog/dd-2="+p2.IP.String())
	})
	waitSyncs(t, n0, 2)
	w := rollout.since(t)
	t.Logf("producer rollout on node 0 (add dd-2, dd-1 terminating, dd-1 deleted) in %s: %d MagicIPNode writes (node 0 only), %d MagicIP status writes",
		time.Since(start).Round(time.Second), w.records, w.status)
	if w.records < 2 || w.records > 3 {
		t.Errorf("rollout: %d MagicIPNode writes, want 2-3 (one per change of node 0's producers, none from the other nodes)", w.records)
	}
	if w.status > 0 {
		t.Errorf("rollout: %d MagicIP status writes, want 0 (the counts did not change)", w.status)
	}
}

// wantEntry checks node's record: the datadog entry is programmed (or not) with reason, and has
// exactly the producers given as pod=ip.
func wantEntry(ctx context.Context, c client.Client, node string, programmed bool, reason string, producers ...string) error {
	rec := &v1alpha1.MagicIPNode{}
	if err := c.Get(ctx, client.ObjectKey{Name: node}, rec); err != nil {
		return fmt.Errorf("record %s: %w", node, err)
	}
	e := rec.Find("datadog")
	if e == nil {
		return fmt.Errorf("record %s has no datadog entry: %+v", node, rec.MagicIPs)
	}
	var got []string
	for _, p := range e.Producers {
		got = append(got, p.Pod+"="+p.IP)
	}
	if e.Programmed != programmed || e.Reason != reason || !slices.Equal(got, slices.DeleteFunc(producers, func(s string) bool { return s == "" })) {
		return fmt.Errorf("record %s: datadog %+v, want programmed %v, reason %s, producers %q", node, *e, programmed, reason, producers)
	}
	return nil
}

func wantCounts(c client.Client, want v1alpha1.NodeCounts) func(context.Context) error {
	return func(ctx context.Context) error {
		m := &v1alpha1.MagicIP{}
		if err := c.Get(ctx, client.ObjectKey{Name: "datadog"}, m); err != nil {
			return err
		}
		if m.Status.Nodes == nil || *m.Status.Nodes != want {
			return fmt.Errorf("status.nodes %+v, want %+v", m.Status.Nodes, want)
		}
		return nil
	}
}

func errorsOf(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// waitSyncs waits for n more syncs of n's agent (metrics on 127.0.0.1:9402).
func waitSyncs(t *testing.T, node *harness.Node, n float64) {
	t.Helper()
	syncs := func(ctx context.Context) float64 {
		v, _ := metric(ctx, node, "magic_ip_agent_sync_duration_seconds_count")
		return v
	}
	want := syncs(t.Context()) + n
	eventually(t, time.Duration(n)*5*time.Second, fmt.Sprintf("%v more syncs", n), func(ctx context.Context) error {
		if s := syncs(ctx); s < want {
			return fmt.Errorf("%v syncs, want %v", s, want)
		}
		return nil
	})
}

type writeCount struct{ records, status int }

type writeCounter struct {
	cs     kubernetes.Interface
	before writeCount
}

func countWrites(t *testing.T, cs kubernetes.Interface) *writeCounter {
	t.Helper()
	return &writeCounter{cs: cs, before: apiWrites(t, cs)}
}

func (w *writeCounter) since(t *testing.T) writeCount {
	now := apiWrites(t, w.cs)
	return writeCount{records: now.records - w.before.records, status: now.status - w.before.status}
}

// apiWrites reads the API server's apiserver_request_total: write requests to magicipnodes and to
// the status of magicips.
func apiWrites(t *testing.T, cs kubernetes.Interface) writeCount {
	t.Helper()
	body, err := cs.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(t.Context())
	if err != nil {
		t.Fatalf("API server metrics: %v", err)
	}
	var out writeCount
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, "apiserver_request_total{") || !slices.ContainsFunc([]string{"PATCH", "PUT", "POST", "DELETE", "APPLY"}, func(v string) bool { return strings.Contains(line, `verb="`+v+`"`) }) {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.Atoi(f[len(f)-1])
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		switch {
		case strings.Contains(line, `resource="magicipnodes"`):
			out.records += v
		case strings.Contains(line, `resource="magicips"`) && strings.Contains(line, `subresource="status"`):
			out.status += v
		}
	}
	return out
}

// TestKubectlMagicIP runs the plugin as a read-only user (view-like: pods, plus the shipped
// magic-ip-view) against the known states: node 0 programmed with a producer, node 1 without its
// host interface, node 2 whose agent is down; `why` for consumers on nodes 0 and 2.
func TestKubectlMagicIP(t *testing.T) {
	e := newStatusCluster(t, defaultBackend)
	cp, ctx := e.c.CP, t.Context()
	n0, n1, n2 := e.c.Nodes[0], e.c.Nodes[1], e.c.Nodes[2]
	plugin, err := harness.Build(t.TempDir(), "./cmd/kubectl-magic_ip")
	if err != nil {
		t.Fatal(err)
	}
	grantView(t, cp.Client, "jane")
	consumer := e.c.AddPod(n0, "apps", "consumer", nil, harness.PodOptions{})
	e.c.AddPod(n2, "apps", "lonely", nil, harness.PodOptions{})
	eventually(t, 15*time.Second, "node 2 programmed", func(ctx context.Context) error {
		return wantEntry(ctx, cp.Client, n2.Name, true, v1alpha1.ReasonProgrammed)
	})
	eventually(t, 15*time.Second, "node 0 programmed", func(ctx context.Context) error {
		return wantEntry(ctx, cp.Client, n0.Name, true, v1alpha1.ReasonProgrammed, "datadog/dd-1="+e.producer.IP.String())
	})
	eventually(t, 5*time.Second, "served", defaultBackend.onlyAnswers(consumer.Netns, e.producer.Name))
	if err := e.agents[2].Stop(); err != nil {
		t.Fatal(err)
	}
	if err := e.agentPods[2].SetReady(ctx, false); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, plugin, append([]string{"--kubeconfig", cp.Kubeconfig, "--as", "jane"}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl-magic_ip %v: %v\n%s", args, err, out)
		}
		return string(out)
	}

	var status kubectlplugin.StatusReport
	if err := json.Unmarshal([]byte(run("status", "datadog", "-o", "json")), &status); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		n0.Name: "Ready yes Programmed datadog/dd-1=" + e.producer.IP.String(),
		n1.Name: "Ready no InterfaceUnavailable",
		n2.Name: "Down yes Programmed",
	}
	for _, ns := range status.Nodes {
		got := []string{ns.Agent.State, map[bool]string{true: "yes", false: "no"}[ns.MagicIPs[0].Programmed], ns.MagicIPs[0].Reason}
		for _, p := range ns.MagicIPs[0].Producers {
			got = append(got, p.Pod+"="+p.IP)
		}
		if g := strings.Join(got, " "); g != want[ns.Node] || ns.Datapath != "iptables" || ns.LastSync == nil {
			t.Errorf("status -o json, node %s: %q (datapath %q, lastSync %v), want %q", ns.Node, g, ns.Datapath, ns.LastSync, want[ns.Node])
		}
		delete(want, ns.Node)
	}
	if len(want) > 0 {
		t.Errorf("status -o json: nodes missing: %v", want)
	}
	table := run("status")
	for _, s := range []string{"NODE", "LOCAL-PRODUCERS", "LAST-SYNC", "DATAPATH", "datadog/dd-1 (" + e.producer.IP.String() + ")", "iptables",
		n1.Name + "/datadog: InterfaceUnavailable: interface " + n1.HostInterface(), n2.Name + ": agent Down: agent pod not Ready"} {
		if !strings.Contains(table, s) {
			t.Errorf("status: no %q in\n%s", s, table)
		}
	}
	t.Logf("kubectl magic-ip status:\n%s", table)
	if out := run("status", "-o", "yaml"); !strings.Contains(out, "nodes:") || !strings.Contains(out, "reason: InterfaceUnavailable") {
		t.Errorf("status -o yaml:\n%s", out)
	}

	var why kubectlplugin.WhyReport
	if err := json.Unmarshal([]byte(run("why", "consumer", "-n", "apps", "-o", "json")), &why); err != nil {
		t.Fatal(err)
	}
	if len(why.MagicIPs) != 1 || why.Node != n0.Name || why.MagicIPs[0].Destination.Kind != kubectlplugin.ToLocalProducer ||
		!slices.ContainsFunc(why.MagicIPs[0].Env, func(e kubectlplugin.InjectedEnv) bool { return e.Name == "DATADOG_MAGIC_HOST" && e.Value == magicAddr }) ||
		!slices.Equal(why.MagicIPs[0].HostAliases, []string{"datadog.node.local"}) {
		t.Errorf("why consumer: %+v", why)
	}
	text := run("why", "lonely", "--namespace", "apps")
	for _, s := range []string{"on node " + n2.Name, "agent Down", "DATADOG_MAGIC_PORT_APM=8126", "datadog.node.local -> " + magicAddr, "connections: Refused"} {
		if !strings.Contains(text, s) {
			t.Errorf("why lonely: no %q in\n%s", s, text)
		}
	}
	t.Logf("kubectl magic-ip why lonely:\n%s", text)
}

// grantView binds user to a view-like ClusterRole (read pods) and the shipped magic-ip-view.
func grantView(t *testing.T, c client.Client, user string) {
	t.Helper()
	ctx := t.Context()
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "test-view-pods"}, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}},
	}}
	if err := c.Create(ctx, role); err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{"test-view-pods", "magic-ip-view"} {
		b := &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: user + "-" + r},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: r},
			Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
		}
		if err := c.Create(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
}
