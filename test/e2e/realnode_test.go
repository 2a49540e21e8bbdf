package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
	"github.com/magic-ip/magic-ip/kubectlplugin"
	"github.com/magic-ip/magic-ip/test/harness"
)

// These tests run magic-ip as users do: our images, built from our Dockerfiles, started by real
// kubelets + containerd from the chart (or kustomize), on two real nodes of the harness. The
// workload is real containers too: a producer DaemonSet (node 1 only) and a consumer Deployment
// spread over both nodes, whose harness.ConsumerProbe connects to the injected endpoint every 2 ms.

const (
	realRelease = "magic-ip"
	realNS      = harness.WebhookNamespace
)

// TestRealNodesHelm installs the chart with its defaults (the real cert-manager issues the
// webhook's TLS) on two real nodes and checks, in order: both components Ready and the agent not
// privileged; a consumer injected and answered by the producer on its own node, which sees the
// consumer's pod IP; a node without a producer refusing at once; a helm upgrade that rolls the
// agent to a new image under load without one failed connection; pods still injected after a
// webhook replica is killed; helm uninstall + the documented cleanup leaving nothing of ours and
// every foreign rule as it was; and the seed chart's one-liner working on the same nodes.
func TestRealNodesHelm(t *testing.T) {
	rc := harness.NewRealCluster(t, 2)
	cp := rc.CP
	harness.StartCertManager(t, cp)
	tag := rc.Images.Tag
	if err := rc.InstallChart(realRelease); err != nil {
		t.Fatal(err)
	}
	waitInstalled(t, rc)

	consumers := startWorkload(t, rc)
	local, remote := consumers[0], consumers[1]

	t.Run("consumer injected and answered on its own node", func(t *testing.T) {
		env, err := local.Env(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if env["APM_MAGIC_HOST"] != harness.WorkloadMagicAddr || env["APM_MAGIC_PORT_APM"] != "8126" {
			t.Fatalf("consumer environment: APM_MAGIC_HOST=%q APM_MAGIC_PORT_APM=%q, want %s and 8126",
				env["APM_MAGIC_HOST"], env["APM_MAGIC_PORT_APM"], harness.WorkloadMagicAddr)
		}
		// The kubelet resolved the injected downward-API reference: the consumer knows its UID,
		// which it can send along for origin detection (the producer sees its pod IP).
		if got, want := env["DD_ENTITY_ID"], string(local.Pod.UID); got != want {
			t.Errorf("consumer environment: DD_ENTITY_ID=%q, want its pod UID %s", got, want)
		}
		wantLocalAnswers(t, rc, local)
	})

	t.Run("kubectl get mip and kubectl magic-ip status see it", func(t *testing.T) {
		eventually(t, 30*time.Second, "MagicIP apm counts 2 programmed nodes, 1 with a local producer", func(ctx context.Context) error {
			var m v1alpha1.MagicIP
			if err := cp.Client.Get(ctx, client.ObjectKey{Name: "apm"}, &m); err != nil {
				return err
			}
			if n := m.Status.Nodes; n == nil || n.Programmed != 2 || n.LocalProducers != 1 || n.Failing != 0 {
				return fmt.Errorf("status.nodes %+v, want programmed 2, localProducers 1, failing 0", n)
			}
			return nil
		})
		plugin, err := harness.Build(t.TempDir(), "./cmd/kubectl-magic_ip")
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.CommandContext(t.Context(), plugin, "--kubeconfig", cp.Kubeconfig, "status", "apm", "-o", "json").CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl magic-ip status: %v\n%s", err, out)
		}
		var status kubectlplugin.StatusReport
		if err := json.Unmarshal(out, &status); err != nil {
			t.Fatalf("kubectl magic-ip status -o json: %v\n%s", err, out)
		}
		producer := producerOn(t, rc, rc.Nodes[0])
		for _, ns := range status.Nodes {
			if ns.Agent.State != "Ready" || len(ns.MagicIPs) != 1 || !ns.MagicIPs[0].Programmed {
				t.Errorf("node %s: agent %s, MagicIPs %+v: want Ready and apm programmed", ns.Node, ns.Agent.State, ns.MagicIPs)
				continue
			}
			prods := ns.MagicIPs[0].Producers
			switch {
			case ns.Node == rc.Nodes[0].Name && (len(prods) != 1 || prods[0].IP != producer.Status.PodIP):
				t.Errorf("node %s: local producers %+v, want %s", ns.Node, prods, producer.Status.PodIP)
			case ns.Node == rc.Nodes[1].Name && len(prods) != 0:
				t.Errorf("node %s: local producers %+v, want none", ns.Node, prods)
			}
		}
		if len(status.Nodes) != 2 {
			t.Errorf("kubectl magic-ip status: %d nodes, want 2:\n%s", len(status.Nodes), out)
		}
	})

	t.Run("node without a producer refuses at once", func(t *testing.T) {
		if err := remote.Reset(t.Context()); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "refusals on the node without a producer", func(ctx context.Context) error {
			s, err := remote.Stats(ctx)
			if err != nil {
				return err
			}
			if s.Refused < 50 || s.OK != 0 || s.Timeouts != 0 || s.Errors != 0 {
				return fmt.Errorf("refused %d ok %d timeouts %d errors %d (last error %q)", s.Refused, s.OK, s.Timeouts, s.Errors, s.LastError)
			}
			return nil
		})
	})

	t.Run("upgrade rolls the agent under load without a failed connection", func(t *testing.T) {
		newTag := tag + "-upgrade"
		rc.TagImage(t, rc.Images.Agent, newTag)
		if err := local.Reset(t.Context()); err != nil {
			t.Fatal(err)
		}
		if err := rc.UpgradeChart(realRelease, "image.tag="+newTag); err != nil {
			t.Fatal(err)
		}
		eventually(t, 2*time.Minute, "agent DaemonSet rolled out", func(ctx context.Context) error {
			return harness.DaemonSetRolledOut(ctx, cp.Client, realNS, realRelease+"-agent")
		})
		agents, err := harness.ReadyPodsByNode(t.Context(), cp.Client, realNS, map[string]string{"app.kubernetes.io/component": "agent"})
		if err != nil {
			t.Fatal(err)
		}
		for node, p := range agents {
			if img := p.Spec.Containers[0].Image; !strings.HasSuffix(img, ":"+newTag) {
				t.Errorf("agent on %s runs %s, want tag %s", node, img, newTag)
			}
		}
		s, err := local.Stats(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("during the upgrade: %d attempts, %d answered, %d refused, %d timeouts, %d errors", s.Attempts, s.OK, s.Refused, s.Timeouts, s.Errors)
		if s.Failed() != 0 || s.OK == 0 {
			t.Fatalf("during the agent upgrade: ok %d, refused %d, timeouts %d, errors %d, last error %q; want no failure",
				s.OK, s.Refused, s.Timeouts, s.Errors, s.LastError)
		}
	})

	t.Run("pods are injected after a webhook replica is killed", func(t *testing.T) {
		webhooks, err := harness.ReadyPodsByNode(t.Context(), cp.Client, realNS, map[string]string{"app.kubernetes.io/component": "webhook"})
		if err != nil {
			t.Fatal(err)
		}
		if len(webhooks) == 0 {
			t.Fatal("no Ready webhook pod")
		}
		var killed string
		for _, p := range webhooks {
			if err := cp.Client.Delete(t.Context(), &p, client.GracePeriodSeconds(0)); err != nil {
				t.Fatal(err)
			}
			killed = p.Name
			break
		}
		// With failurePolicy Ignore (the default), a call the API server sends to the killed
		// replica before the endpoints drop it fails and the pod is admitted uninjected: that
		// window is the endpoint update's. Once the Service's endpoints no longer list the killed
		// replica, every pod must be injected by the other one.
		eventually(t, 30*time.Second, "the webhook Service's endpoints drop the killed replica", func(ctx context.Context) error {
			var eps discoveryv1.EndpointSliceList
			if err := cp.Client.List(ctx, &eps, client.InNamespace(realNS)); err != nil {
				return err
			}
			for _, s := range eps.Items {
				for _, ep := range s.Endpoints {
					if ep.TargetRef != nil && ep.TargetRef.Name == killed {
						return fmt.Errorf("EndpointSlice %s still lists %s", s.Name, killed)
					}
				}
			}
			return nil
		})
		for i := range 20 {
			pod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: fmt.Sprintf("after-kill-%d", i)},
				Spec: corev1.PodSpec{
					NodeSelector: map[string]string{"magic-ip.test/none": "none"}, // stays Pending: only admission matters
					Containers:   []corev1.Container{{Name: "c", Image: rc.Images.Testbin, Args: []string{"pause"}}},
				},
			}
			if err := cp.Client.Create(t.Context(), pod); err != nil {
				t.Fatal(err)
			}
			if !slices.ContainsFunc(pod.Spec.Containers[0].Env, func(e corev1.EnvVar) bool { return e.Name == "APM_MAGIC_HOST" }) {
				t.Fatalf("pod %d created after the kill was not injected: env %v", i, pod.Spec.Containers[0].Env)
			}
		}
	})

	t.Run("uninstall and cleanup leave nothing of ours", func(t *testing.T) {
		helmOn(t, cp, "uninstall", realRelease, "-n", realNS, "--wait", "--timeout", "2m")
		before := map[string][]string{}
		for _, n := range rc.Nodes {
			// kube-proxy drops the webhook Service's rules: after that, nothing changes them.
			eventually(t, time.Minute, "kube-proxy on "+n.Name+" forgot the webhook Service", func(ctx context.Context) error {
				r, err := foreignRules(ctx, n)
				if err != nil {
					return err
				}
				if i := slices.IndexFunc(r, func(l string) bool { return strings.Contains(l, realNS+"/") }); i >= 0 {
					return fmt.Errorf("still %q", r[i])
				}
				before[n.Name] = r
				return nil
			})
		}
		// Rules and addresses stay after the agent is gone (so that an agent upgrade never
		// interrupts traffic): the cleanup is what removes them.
		if rules, addrs, err := magicState(t.Context(), rc.Nodes[0]); err != nil || len(rules) == 0 || len(addrs) == 0 {
			t.Fatalf("%s before cleanup: rules %q, addresses %q (%v): want ours still there", rc.Nodes[0].Name, rules, addrs, err)
		}
		rc.RunCleanup(t)
		for _, n := range rc.Nodes {
			rules, addrs, err := magicState(t.Context(), n)
			if err != nil {
				t.Fatal(err)
			}
			if len(rules) != 0 || len(addrs) != 0 {
				t.Errorf("%s after cleanup: rules %q, addresses %q", n.Name, rules, addrs)
			}
			after, err := foreignRules(t.Context(), n)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(before[n.Name], after) {
				t.Errorf("%s: foreign rules changed by cleanup:\nbefore %q\nafter  %q", n.Name, before[n.Name], after)
			}
		}
	})

	t.Run("the seed chart's one-liner", func(t *testing.T) {
		// The workload's MagicIP goes first: the seed release's MagicIP takes the same address and
		// port, and the consumers already connect there.
		deleteMagicIP(t, cp, "apm")
		if err := rc.InstallChart(realRelease, "config.ipAddress="+harness.WorkloadMagicAddr, "config.port=8126",
			"config.selector=app=producer", "config.namespace=datadog"); err != nil {
			t.Fatal(err)
		}
		waitInstalled(t, rc)
		wantLocalAnswers(t, rc, local)
	})
}

// wantLocalAnswers waits until the consumer's harness.ConsumerProbe gets answers from the producer on its own
// node, which sees the consumer's pod IP.
func wantLocalAnswers(t *testing.T, rc *harness.RealCluster, p harness.ConsumerProbe) {
	t.Helper()
	if err := p.Reset(t.Context()); err != nil {
		t.Fatal(err)
	}
	// The producer sees who calls: the consumer's pod IP (no SNAT) and the pod UID the consumer
	// sends, which the webhook injected as DD_ENTITY_ID (origin detection).
	want := producerOn(t, rc, p.Node).Name + " " + p.Node.Name + " " + p.Pod.Status.PodIP + " " + string(p.Pod.UID)
	eventually(t, 60*time.Second, "answers from the local producer", func(ctx context.Context) error {
		s, err := p.Stats(ctx)
		if err != nil {
			return err
		}
		if s.OK == 0 || s.LastAnswer != want {
			return fmt.Errorf("ok %d, last answer %q (want %q), last error %q", s.OK, s.LastAnswer, want, s.LastError)
		}
		return nil
	})
}

// TestRealNodesKustomize applies manifests/default (with the local image tags, the way a user
// pins a version in an overlay) on two real nodes: agent and webhook Ready, a consumer injected
// and answered by its node's producer; `kubectl delete -k` removes it all.
func TestRealNodesKustomize(t *testing.T) {
	rc := harness.NewRealCluster(t, 2)
	cp := rc.CP
	harness.StartCertManager(t, cp)
	overlay := t.TempDir()
	// kustomize takes only relative paths to a base.
	base, err := filepath.Rel(overlay, filepath.Join(repoRoot(t), "manifests", "default"))
	if err != nil {
		t.Fatal(err)
	}
	kustomization := fmt.Sprintf(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - %s
images:
  - {name: ghcr.io/magic-ip/magic-ip-agent, newTag: %s}
  - {name: ghcr.io/magic-ip/magic-ip-webhook, newTag: %s}
patches:
  # This kernel has no dummy link type: the addresses go on the pod bridge.
  - target: {kind: DaemonSet, name: magic-ip-agent}
    patch: |
      - op: add
        path: /spec/template/spec/containers/0/env/-
        value: {name: MAGIC_IP_HOST_INTERFACE, value: %s}
`, base, rc.Images.Tag, rc.Images.Tag, harness.PodBridge)
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(kustomization), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := cp.Kubectl("apply", "--server-side", "-k", overlay); err != nil {
		t.Fatal(err)
	}
	waitInstalled(t, rc)
	consumers := startWorkload(t, rc)
	env, err := consumers[0].Env(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if env["APM_MAGIC_HOST"] != harness.WorkloadMagicAddr {
		t.Fatalf("consumer environment: APM_MAGIC_HOST=%q, want %s", env["APM_MAGIC_HOST"], harness.WorkloadMagicAddr)
	}
	wantLocalAnswers(t, rc, consumers[0])
	if _, err := cp.Kubectl("delete", "-k", overlay, "--wait", "--timeout=2m"); err != nil {
		t.Fatal(err)
	}
}

// waitInstalled waits for the agent on every node and the webhook replicas, and checks the
// agent container runs unprivileged with only NET_ADMIN and NET_RAW added.
func waitInstalled(t *testing.T, rc *harness.RealCluster) {
	t.Helper()
	if err := rc.WaitProductReady(t.Context(), realRelease); err != nil {
		t.Fatalf("agent and webhook Ready: %v", err)
	}
	agents, err := harness.ReadyPodsByNode(t.Context(), rc.CP.Client, realNS, map[string]string{"app.kubernetes.io/component": "agent"})
	if err != nil {
		t.Fatal(err)
	}
	if len(agents) != len(rc.Nodes) {
		t.Fatalf("agents on %d nodes, want %d", len(agents), len(rc.Nodes))
	}
	for node, p := range agents {
		sc := p.Spec.Containers[0].SecurityContext
		if sc == nil || (sc.Privileged != nil && *sc.Privileged) || sc.Capabilities == nil ||
			!slices.Equal(capNames(sc.Capabilities.Add), []string{"NET_ADMIN", "NET_RAW"}) {
			t.Errorf("agent on %s: securityContext %+v, want unprivileged with NET_ADMIN and NET_RAW", node, sc)
		}
	}
}

func capNames(cs []corev1.Capability) []string {
	out := make([]string, 0, len(cs))
	for _, c := range cs {
		out = append(out, string(c))
	}
	slices.Sort(out)
	return out
}

// startWorkload starts the workload with a producer on node 1 only and returns the consumer
// probes on node 1 (with a local producer) and node 2 (without).
func startWorkload(t *testing.T, rc *harness.RealCluster) []harness.ConsumerProbe {
	t.Helper()
	probes, err := rc.StartWorkload(t.Context(), rc.Nodes[0])
	if err != nil {
		t.Fatalf("workload: %v", err)
	}
	return probes
}

// producerOn is the Ready producer pod on node n.
func producerOn(t *testing.T, rc *harness.RealCluster, n *harness.Node) corev1.Pod {
	t.Helper()
	pods, err := harness.ReadyPodsByNode(t.Context(), rc.CP.Client, "datadog", map[string]string{"app": "producer"})
	if err != nil {
		t.Fatal(err)
	}
	p, ok := pods[n.Name]
	if !ok {
		t.Fatalf("no Ready producer on %s", n.Name)
	}
	return p
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// TestRealNodesProducerRollout rolls the producer DaemonSet (kubectl rollout restart: the
// DaemonSet controller deletes each node's producer, the kubelet runs its preStop and stops it,
// then starts the replacement) on two real nodes while both consumers connect every 2 ms. With
// Fallback: not one failed connection, and each consumer is answered by the other node's producer
// meanwhile. (With Reject the same rollout gave refusals, as it should, but also one timeout per
// node now and then: the kubelet can tear the old pod's network down before its NotReady status
// reaches the API server, so a connection DNATed to it in that moment gets no answer. kube-proxy
// has the same race with its endpoints; closing it needs a node-local signal. The simulated
// TestAgentRejectRollout checks Reject's semantics.)
func TestRealNodesProducerRollout(t *testing.T) {
	rc := harness.NewRealCluster(t, 2)
	cp := rc.CP
	harness.StartCertManager(t, cp)
	if err := rc.InstallChart(realRelease); err != nil {
		t.Fatal(err)
	}
	if err := rc.WaitProductReady(t.Context(), realRelease); err != nil {
		t.Fatal(err)
	}
	probes, err := rc.StartWorkload(t.Context(), rc.Nodes...)
	if err != nil {
		t.Fatal(err)
	}
	rollout := func(t *testing.T) []harness.ProbeStats {
		t.Helper()
		for _, p := range probes {
			if err := p.Reset(t.Context()); err != nil {
				t.Fatal(err)
			}
		}
		var ds appsv1.DaemonSet
		if err := cp.Client.Get(t.Context(), client.ObjectKey{Namespace: "datadog", Name: "producer"}, &ds); err != nil {
			t.Fatal(err)
		}
		if _, err := cp.Kubectl("rollout", "restart", "daemonset/producer", "-n", "datadog"); err != nil {
			t.Fatal(err)
		}
		eventually(t, 2*time.Minute, "producer DaemonSet rolled out", func(ctx context.Context) error {
			var now appsv1.DaemonSet
			if err := cp.Client.Get(ctx, client.ObjectKey{Namespace: "datadog", Name: "producer"}, &now); err != nil {
				return err
			}
			if now.Generation == ds.Generation {
				return fmt.Errorf("generation still %d", now.Generation)
			}
			if err := harness.DaemonSetRolledOut(ctx, cp.Client, "datadog", "producer"); err != nil {
				return err
			}
			pods, err := harness.ReadyPodsByNode(ctx, cp.Client, "datadog", map[string]string{"app": "producer"})
			if err != nil {
				return err
			}
			if len(pods) != len(rc.Nodes) {
				return fmt.Errorf("Ready producers on %d nodes", len(pods))
			}
			return nil
		})
		var out []harness.ProbeStats
		for _, p := range probes {
			s, err := p.Stats(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s on %s: %d attempts, %d answered, %d refused, %d timeouts, %d errors; answers %v",
				p.Pod.Name, p.Node.Name, s.Attempts, s.OK, s.Refused, s.Timeouts, s.Errors, s.Answers)
			out = append(out, s)
		}
		return out
	}

	t.Run("Fallback: not one failed connection", func(t *testing.T) {
		var m v1alpha1.MagicIP
		if err := cp.Client.Get(t.Context(), client.ObjectKey{Name: "apm"}, &m); err != nil {
			t.Fatal(err)
		}
		patch := client.MergeFrom(m.DeepCopy())
		m.Spec.WhenNoLocalProducer = v1alpha1.Fallback
		if err := cp.Client.Patch(t.Context(), &m, patch); err != nil {
			t.Fatal(err)
		}
		for i, s := range rollout(t) {
			other := rc.Nodes[1-i].Name
			remote := false
			for who := range s.Answers {
				remote = remote || strings.HasSuffix(who, " "+other)
			}
			if s.Failed() != 0 || !remote {
				t.Errorf("consumer on %s: %d failed (refused %d, timeouts %d, errors %d, last %q), answered by %v: want no failure and answers from %s meanwhile",
					probes[i].Node.Name, s.Failed(), s.Refused, s.Timeouts, s.Errors, s.LastError, s.Answers, other)
			}
		}
	})
}
