package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// The workload of the real-node tests and demo: a producer DaemonSet on the nodes labelled
// ProducerLabel=yes, the MagicIP apm (WorkloadMagicAddr, 8126/TCP and 8125/UDP) and a consumer
// Deployment with one replica per node whose prober connects to the injected endpoint every 2 ms.
const (
	WorkloadMagicAddr = "169.254.210.210"
	ProducerLabel     = "magic-ip.test/producer"
)

// WorkloadYAML is that workload, running the testbin image.
func WorkloadYAML(testbin string, replicas int) string {
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
      terminationGracePeriodSeconds: 5
      containers:
      - name: echo
        # A well-behaved producer keeps serving a moment after its deletion, while the nodes
        # learn of it (as any Service endpoint should).
        lifecycle: {preStop: {sleep: {seconds: 2}}}
        image: %[1]s
        # Answers "<pod> <node> <caller's IP> <caller's line>": the caller's pod IP (no SNAT) and
        # the identity it sends (its DD_ENTITY_ID, injected by the webhook).
        args: [echo, --tcp-port, "8126", --udp-port, "8125", --read-caller]
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
  replicas: %[4]d
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
        args: [probe, --target, "$(APM_MAGIC_HOST):$(APM_MAGIC_PORT_APM)", --caller, "$(DD_ENTITY_ID)", --interval, 2ms, --timeout, 1s, --listen, ":8080"]
        readinessProbe: {httpGet: {path: /stats, port: 8080}, periodSeconds: 1}
`, testbin, ProducerLabel, WorkloadMagicAddr, replicas)
}

// StartWorkload labels the given nodes for the producer, applies WorkloadYAML and waits until the
// producers and one consumer per node are Ready; it returns the consumers' probers in node order.
func (rc *RealCluster) StartWorkload(ctx context.Context, producerNodes ...*Node) ([]ConsumerProbe, error) {
	for _, n := range producerNodes {
		node := &corev1.Node{}
		if err := rc.CP.Client.Get(ctx, client.ObjectKey{Name: n.Name}, node); err != nil {
			return nil, err
		}
		patch := client.MergeFrom(node.DeepCopy())
		node.Labels[ProducerLabel] = "yes"
		if err := rc.CP.Client.Patch(ctx, node, patch); err != nil {
			return nil, fmt.Errorf("label node %s: %w", n.Name, err)
		}
	}
	objs, err := DecodeObjects([]byte(WorkloadYAML(rc.Images.Testbin, len(rc.Nodes))))
	if err != nil {
		return nil, err
	}
	if err := rc.CP.Apply(ctx, objs, false); err != nil {
		return nil, err
	}
	var probes []ConsumerProbe
	err = rc.waitUntil(ctx, 2*time.Minute, func(ctx context.Context) error {
		if err := DeploymentRolledOut(ctx, rc.CP.Client, "apps", "consumer"); err != nil {
			return err
		}
		if err := DaemonSetRolledOut(ctx, rc.CP.Client, "datadog", "producer"); err != nil {
			return err
		}
		pods, err := ReadyPodsByNode(ctx, rc.CP.Client, "apps", map[string]string{"app": "consumer"})
		if err != nil {
			return err
		}
		probes = probes[:0]
		for _, n := range rc.Nodes {
			p, ok := pods[n.Name]
			if !ok {
				return fmt.Errorf("no Ready consumer on %s", n.Name)
			}
			probes = append(probes, ConsumerProbe{Node: n, Pod: p})
		}
		return nil
	})
	return probes, err
}

// waitUntil polls cond until it returns nil or timeout passes, and then returns cond's last error.
func (rc *RealCluster) waitUntil(ctx context.Context, timeout time.Duration, cond func(context.Context) error) error {
	var last error
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		if err := cond(ctx); err != nil {
			if ctx.Err() == nil || last == nil {
				last = err
			}
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("%w (last: %v)", err, last)
	}
	return nil
}

// ProbeStats is what the consumer image's prober (test/images/testbin probe) serves on GET
// /stats: its connection attempts to the injected endpoint since start or the last reset.
type ProbeStats struct {
	Attempts   int64            `json:"attempts"`
	OK         int64            `json:"ok"`
	Refused    int64            `json:"refused"`
	Timeouts   int64            `json:"timeouts"`
	Errors     int64            `json:"errors"`
	Answers    map[string]int64 `json:"answers"`
	LastAnswer string           `json:"lastAnswer"`
	LastError  string           `json:"lastError"`
}

// Failed counts every attempt that was not answered.
func (s ProbeStats) Failed() int64 { return s.Refused + s.Timeouts + s.Errors }

// ConsumerProbe reaches a consumer pod's prober over HTTP from inside the pod's node.
type ConsumerProbe struct {
	Node *Node
	Pod  corev1.Pod
}

func (p ConsumerProbe) do(ctx context.Context, method, path string, into any) error {
	url := "http://" + net.JoinHostPort(p.Pod.Status.PodIP, "8080") + path
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return err
	}
	resp, err := p.Node.Netns.HTTPClient(5 * time.Second).Do(req)
	if err != nil {
		return fmt.Errorf("prober %s: %w", p.Pod.Name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("prober %s %s %s: %s: %s", p.Pod.Name, method, path, resp.Status, b)
	}
	if into == nil {
		return nil
	}
	return json.Unmarshal(b, into)
}

// Stats reads the prober's counters.
func (p ConsumerProbe) Stats(ctx context.Context) (ProbeStats, error) {
	var s ProbeStats
	return s, p.do(ctx, http.MethodGet, "/stats", &s)
}

// Env is the prober's environment, read inside its container.
func (p ConsumerProbe) Env(ctx context.Context) (map[string]string, error) {
	env := map[string]string{}
	return env, p.do(ctx, http.MethodGet, "/env", &env)
}

// Reset zeroes the prober's counters.
func (p ConsumerProbe) Reset(ctx context.Context) error {
	return p.do(ctx, http.MethodPost, "/reset", nil)
}

// ReadyPodsByNode lists the Running and Ready pods of namespace matching labels, by node name.
func ReadyPodsByNode(ctx context.Context, c client.Client, namespace string, labels map[string]string) (map[string]corev1.Pod, error) {
	var pods corev1.PodList
	if err := c.List(ctx, &pods, client.InNamespace(namespace), client.MatchingLabels(labels)); err != nil {
		return nil, err
	}
	out := map[string]corev1.Pod{}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning && isPodReady(&p) {
			out[p.Spec.NodeName] = p
		}
	}
	return out, nil
}

func isPodReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// DaemonSetRolledOut is nil once every scheduled pod of the DaemonSet runs its current template
// and is available.
func DaemonSetRolledOut(ctx context.Context, c client.Client, namespace, name string) error {
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

// DeploymentRolledOut is nil once every replica of the Deployment runs its current template and
// is available.
func DeploymentRolledOut(ctx context.Context, c client.Client, namespace, name string) error {
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

// InstallChart runs `helm install <release> manifests/helm/magic-ip -n magic-ip-system
// --create-namespace --wait` with the cluster's image tags, cni0 as the agent's host interface
// (this kernel has no dummy link type, the chart's default) and the extra --set values.
func (rc *RealCluster) InstallChart(release string, set ...string) error {
	return rc.helmChart("install", release, append([]string{"image.tag=" + rc.Images.Tag,
		"webhook.image.tag=" + rc.Images.Tag, "config.hostInterface=" + PodBridge}, set...), "--create-namespace")
}

// UpgradeChart runs `helm upgrade <release> manifests/helm/magic-ip -n magic-ip-system
// --reuse-values --wait` with the --set values.
func (rc *RealCluster) UpgradeChart(release string, set ...string) error {
	return rc.helmChart("upgrade", release, set, "--reuse-values")
}

// helmChart runs `helm <verb> <release> <chart> -n magic-ip-system --wait` against the cluster
// with the --set values and extra flags.
func (rc *RealCluster) helmChart(verb, release string, set []string, extra ...string) error {
	root, err := RepoRoot()
	if err != nil {
		return err
	}
	args := append([]string{verb, release, filepath.Join(root, ChartDir), "-n", WebhookNamespace,
		"--wait", "--timeout", "4m", "--kubeconfig", rc.CP.Kubeconfig}, extra...)
	for _, s := range set {
		args = append(args, "--set", s)
	}
	_, err = Helm(args...)
	return err
}

// WaitProductReady waits until the release's agent DaemonSet and webhook Deployment are rolled
// out and available.
func (rc *RealCluster) WaitProductReady(ctx context.Context, release string) error {
	return rc.waitUntil(ctx, 3*time.Minute, func(ctx context.Context) error {
		if err := DaemonSetRolledOut(ctx, rc.CP.Client, WebhookNamespace, release+"-agent"); err != nil {
			return err
		}
		return DeploymentRolledOut(ctx, rc.CP.Client, WebhookNamespace, release+"-webhook")
	})
}
