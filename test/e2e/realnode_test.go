package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/magic-ip/magic-ip/test/harness"
)

// These tests run magic-ip as users do: our images, built from our Dockerfiles, started by real
// kubelets + containerd from the chart (or kustomize), on two real nodes of the harness. The
// workload is real containers too: a producer DaemonSet (node 1 only) and a consumer Deployment
// spread over both nodes, whose consumerProbe connects to the injected endpoint every 2 ms.

const (
	realMagicAddr = "169.254.210.210"
	realRelease   = "magic-ip"
	realNS        = harness.WebhookNamespace
	// producerLabel marks the nodes that run the producer DaemonSet.
	producerLabel = "magic-ip.test/producer"
)

// realWorkload is the producer DaemonSet, the MagicIP and the consumer Deployment.
func realWorkload(testbin string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata: {name: datadog}
---
apiVersion: v1
kind: Namespace
metadata: {name: apps, labels: {magic-ip.dev/inject: enabled}}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: producer, namespace: datadog}
spec:
  selector: {matchLabels: {app: producer}}
  template:
    metadata: {labels: {app: producer}}
    spec:
      nodeSelector: {%[2]s: "yes"}
      terminationGracePeriodSeconds: 1
      containers:
      - name: echo
        image: %[1]s
        args: [echo, --tcp-port, "8126", --udp-port, "8125"]
        env:
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
        readinessProbe: {tcpSocket: {port: 8126}, periodSeconds: 1}
---
apiVersion: magic-ip.dev/v1alpha1
kind: MagicIP
metadata: {name: apm}
spec:
  address: %[3]s
  ports:
  - {name: apm, port: 8126, protocol: TCP}
  - {name: dogstatsd, port: 8125, protocol: UDP}
  producer: {namespace: datadog, selector: {matchLabels: {app: producer}}}
  inject:
    podIdentity: [{name: DD_ENTITY_ID, fieldPath: metadata.uid}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: consumer, namespace: apps}
spec:
  replicas: 2
  selector: {matchLabels: {app: consumer}}
  template:
    metadata: {labels: {app: consumer}}
    spec:
      terminationGracePeriodSeconds: 1
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: consumer}}}
      containers:
      - name: probe
        image: %[1]s
        args: [probe, --target, "$(APM_MAGIC_HOST):$(APM_MAGIC_PORT_APM)", --interval, 2ms, --timeout, 1s, --listen, ":8080"]
        readinessProbe: {httpGet: {path: /stats, port: 8080}, periodSeconds: 1}
`, testbin, producerLabel, realMagicAddr)
}

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
	chart := filepath.Join(repoRoot(t), harness.ChartDir)
	tag := rc.Images.Tag
	// config.hostInterface: this kernel has no dummy link type (the chart's default creates one),
	// so the addresses go on the pod bridge, as the README suggests for such nodes.
	helmOn(t, cp, "install", realRelease, chart, "-n", realNS, "--create-namespace",
		"--set", "image.tag="+tag, "--set", "webhook.image.tag="+tag, "--set", "config.hostInterface="+harness.PodBridge,
		"--wait", "--timeout", "4m")
	waitInstalled(t, rc)

	consumers := startWorkload(t, rc)
	local, remote := consumers[0], consumers[1]

	t.Run("consumer injected and answered on its own node", func(t *testing.T) {
		env, err := local.env(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if env["APM_MAGIC_HOST"] != realMagicAddr || env["APM_MAGIC_PORT_APM"] != "8126" {
			t.Fatalf("consumer environment: APM_MAGIC_HOST=%q APM_MAGIC_PORT_APM=%q, want %s and 8126",
				env["APM_MAGIC_HOST"], env["APM_MAGIC_PORT_APM"], realMagicAddr)
		}
		// The kubelet resolved the injected downward-API reference: the consumer knows its UID,
		// which it can send along for origin detection (the producer sees its pod IP).
		if got, want := env["DD_ENTITY_ID"], string(local.pod.UID); got != want {
			t.Errorf("consumer environment: DD_ENTITY_ID=%q, want its pod UID %s", got, want)
		}
		wantLocalAnswers(t, rc, local)
	})

	t.Run("node without a producer refuses at once", func(t *testing.T) {
		if err := remote.reset(t.Context()); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "refusals on the node without a producer", func(ctx context.Context) error {
			s, err := remote.stats(ctx)
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
		if err := local.reset(t.Context()); err != nil {
			t.Fatal(err)
		}
		helmOn(t, cp, "upgrade", realRelease, chart, "-n", realNS, "--reuse-values", "--set", "image.tag="+newTag, "--wait", "--timeout", "4m")
		eventually(t, 2*time.Minute, "agent DaemonSet rolled out", func(ctx context.Context) error {
			return daemonSetRolledOut(ctx, cp.Client, realNS, realRelease+"-agent")
		})
		agents, err := podsByNode(t.Context(), cp.Client, realNS, map[string]string{"app.kubernetes.io/component": "agent"})
		if err != nil {
			t.Fatal(err)
		}
		for node, p := range agents {
			if img := p.Spec.Containers[0].Image; !strings.HasSuffix(img, ":"+newTag) {
				t.Errorf("agent on %s runs %s, want tag %s", node, img, newTag)
			}
		}
		s, err := local.stats(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("during the upgrade: %d attempts, %d answered, %d refused, %d timeouts, %d errors", s.Attempts, s.OK, s.Refused, s.Timeouts, s.Errors)
		if s.failed() != 0 || s.OK == 0 {
			t.Fatalf("during the agent upgrade: ok %d, refused %d, timeouts %d, errors %d, last error %q; want no failure",
				s.OK, s.Refused, s.Timeouts, s.Errors, s.LastError)
		}
	})

	t.Run("pods are injected after a webhook replica is killed", func(t *testing.T) {
		webhooks, err := podsByNode(t.Context(), cp.Client, realNS, map[string]string{"app.kubernetes.io/component": "webhook"})
		if err != nil {
			t.Fatal(err)
		}
		if len(webhooks) == 0 {
			t.Fatal("no Ready webhook pod")
		}
		for _, p := range webhooks {
			if err := cp.Client.Delete(t.Context(), &p, client.GracePeriodSeconds(0)); err != nil {
				t.Fatal(err)
			}
			break
		}
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
		helmOn(t, cp, "install", realRelease, chart, "-n", realNS,
			"--set", "config.ipAddress="+realMagicAddr, "--set", "config.port=8126",
			"--set", "config.selector=app=producer", "--set", "config.namespace=datadog",
			"--set", "config.hostInterface="+harness.PodBridge,
			"--set", "image.tag="+tag, "--set", "webhook.image.tag="+tag, "--wait", "--timeout", "4m")
		waitInstalled(t, rc)
		wantLocalAnswers(t, rc, local)
	})
}

// wantLocalAnswers waits until the consumer's consumerProbe gets answers from the producer on its own
// node, which sees the consumer's pod IP.
func wantLocalAnswers(t *testing.T, rc *harness.RealCluster, p consumerProbe) {
	t.Helper()
	if err := p.reset(t.Context()); err != nil {
		t.Fatal(err)
	}
	want := producerOn(t, rc, p.node).Name + " " + p.node.Name + " " + p.pod.Status.PodIP
	eventually(t, 60*time.Second, "answers from the local producer", func(ctx context.Context) error {
		s, err := p.stats(ctx)
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
	env, err := consumers[0].env(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if env["APM_MAGIC_HOST"] != realMagicAddr {
		t.Fatalf("consumer environment: APM_MAGIC_HOST=%q, want %s", env["APM_MAGIC_HOST"], realMagicAddr)
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
	eventually(t, 3*time.Minute, "agent and webhook Ready", func(ctx context.Context) error {
		if err := daemonSetRolledOut(ctx, rc.CP.Client, realNS, realRelease+"-agent"); err != nil {
			return err
		}
		return deploymentRolledOut(ctx, rc.CP.Client, realNS, realRelease+"-webhook")
	})
	agents, err := podsByNode(t.Context(), rc.CP.Client, realNS, map[string]string{"app.kubernetes.io/component": "agent"})
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

// startWorkload labels node 1 for the producer, applies the workload and returns the consumer
// probers on node 1 (with a local producer) and node 2 (without).
func startWorkload(t *testing.T, rc *harness.RealCluster) []consumerProbe {
	t.Helper()
	ctx := t.Context()
	node := &corev1.Node{}
	if err := rc.CP.Client.Get(ctx, client.ObjectKey{Name: rc.Nodes[0].Name}, node); err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(node.DeepCopy())
	node.Labels[producerLabel] = "yes"
	if err := rc.CP.Client.Patch(ctx, node, patch); err != nil {
		t.Fatal(err)
	}
	objs, err := harness.DecodeObjects([]byte(realWorkload(rc.Images.Testbin)))
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.CP.Apply(ctx, objs, false); err != nil {
		t.Fatal(err)
	}
	var probers []consumerProbe
	eventually(t, 2*time.Minute, "producer and consumers Ready", func(ctx context.Context) error {
		if err := deploymentRolledOut(ctx, rc.CP.Client, "apps", "consumer"); err != nil {
			return err
		}
		if err := daemonSetRolledOut(ctx, rc.CP.Client, "datadog", "producer"); err != nil {
			return err
		}
		pods, err := podsByNode(ctx, rc.CP.Client, "apps", map[string]string{"app": "consumer"})
		if err != nil {
			return err
		}
		probers = probers[:0]
		for _, n := range rc.Nodes {
			p, ok := pods[n.Name]
			if !ok {
				return fmt.Errorf("no Ready consumer on %s", n.Name)
			}
			probers = append(probers, consumerProbe{node: n, pod: p})
		}
		return nil
	})
	return probers
}

// producerOn is the Ready producer pod on node n.
func producerOn(t *testing.T, rc *harness.RealCluster, n *harness.Node) corev1.Pod {
	t.Helper()
	pods, err := podsByNode(t.Context(), rc.CP.Client, "datadog", map[string]string{"app": "producer"})
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
