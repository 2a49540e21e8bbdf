package harness

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// RealCluster is a cluster of real nodes: each node namespace runs containerd, a kubelet
// (system:node:<name>, Node-authorized) and kube-proxy (iptables or nftables mode); the control
// plane runs kube-controller-manager and kube-scheduler. Manifests are reconciled as in any cluster and
// pods are containers started from local images (Images; no registry).
type RealCluster struct {
	*Cluster
	Kubelets   []*RealNode
	KubeProxys []*KubeProxy
	Images     *Images
}

// RealClusterOptions shape a RealCluster.
type RealClusterOptions struct {
	// Nodes is the number of real nodes.
	Nodes int
	// KubeProxyMode is kube-proxy's --proxy-mode on every node: KubeProxyIptables (default) or
	// KubeProxyNftables.
	KubeProxyMode string
}

// NewRealCluster starts a control plane for real nodes and a cluster of n of them, and returns
// once every kubelet has made its Node Ready. Everything stops in t.Cleanup.
func NewRealCluster(t T, n int) *RealCluster {
	t.Helper()
	return NewRealClusterWith(t, RealClusterOptions{Nodes: n})
}

// NewRealClusterWith is NewRealCluster with options.
func NewRealClusterWith(t T, o RealClusterOptions) *RealCluster {
	t.Helper()
	if o.KubeProxyMode == "" {
		o.KubeProxyMode = KubeProxyIptables
	}
	RequireRoot(t)
	images, err := BuildImages("all")
	if err != nil {
		t.Fatalf("images: %v", err)
	}
	if images.Agent == "" || images.Webhook == "" || images.Testbin == "" || images.Pause == "" {
		t.Fatalf("images in %s: %+v, want agent, webhook, testbin and pause", images.Dir, images.List)
	}
	cp := StartRealControlPlane(t)
	rc := &RealCluster{Cluster: NewCluster(t, cp, ClusterOptions{Nodes: o.Nodes}), Images: images}
	for _, node := range rc.Nodes {
		kubeconfig, err := cp.NodeKubeconfig(node.Name)
		if err != nil {
			t.Fatal(err)
		}
		rc.Kubelets = append(rc.Kubelets, node.StartKubelet(t, KubeletOptions{
			Kubeconfig: kubeconfig, Images: images.Files(), PauseImage: images.Pause,
		}))
	}
	// Registered after the nodes: runs before they stop.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- pods of the real cluster at failure ---\n%s", rc.describePods(context.WithoutCancel(t.Context())))
		}
	})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	for _, k := range rc.Kubelets {
		if err := k.WaitReady(ctx); err != nil {
			t.Fatalf("node %s: %v", k.Node.Name, err)
		}
	}
	// After the kubelets: kube-proxy reads the Node's addresses at start (which the kubelet
	// reports) and exits when they change, expecting its DaemonSet to restart it.
	for _, node := range rc.Nodes {
		rc.KubeProxys = append(rc.KubeProxys, StartKubeProxyMode(t, rc.Cluster, node, o.KubeProxyMode))
	}
	return rc
}

// TagImage adds tag to image ref on every node (as pushing a new tag to a registry would make it
// available): the upgrade tests roll a DaemonSet to it.
func (rc *RealCluster) TagImage(t T, ref, tag string) string {
	t.Helper()
	repo := ref[:strings.LastIndex(ref, ":")]
	newRef := repo + ":" + tag
	for _, k := range rc.Kubelets {
		if out, err := k.Ctr("-n", "k8s.io", "images", "tag", "--force", ref, newRef); err != nil {
			t.Fatalf("node %s: tag %s as %s: %v: %s", k.Node.Name, ref, newRef, err, out)
		}
	}
	return newRef
}

// RunCleanup runs the documented uninstall step on every node, as a user does it: `kubectl debug
// node/<node> --profile=sysadmin --image=<agent image> -- /usr/local/bin/iptables-wrapper
// cleanup`, then waits for each of those pods to succeed and deletes them.
func (rc *RealCluster) RunCleanup(t T) {
	t.Helper()
	var pods []string
	for _, n := range rc.Nodes {
		out, err := rc.CP.Kubectl("debug", "node/"+n.Name, "-n", "default", "--profile=sysadmin",
			"--image="+rc.Images.Agent, "--", "/usr/local/bin/iptables-wrapper", "cleanup")
		if err != nil {
			t.Fatalf("cleanup on %s: %v", n.Name, err)
		}
		name, err := debugPodName(out)
		if err != nil {
			t.Fatalf("cleanup on %s: %v", n.Name, err)
		}
		pods = append(pods, name)
	}
	for i, name := range pods {
		if err := rc.waitPodSucceeded(t, "default", name, rc.Nodes[i]); err != nil {
			t.Fatalf("cleanup on %s: %v", rc.Nodes[i].Name, err)
		}
		_ = rc.CP.Client.Delete(t.Context(), &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name}})
	}
}

// debugPodName finds the pod name in kubectl debug's output ("Creating debugging pod X with
// container Y on node Z.").
func debugPodName(out string) (string, error) {
	const marker = "Creating debugging pod "
	i := strings.Index(out, marker)
	if i < 0 {
		return "", fmt.Errorf("kubectl debug printed no pod name: %q", out)
	}
	name, _, _ := strings.Cut(out[i+len(marker):], " ")
	return name, nil
}

// waitPodSucceeded waits for the pod to end in phase Succeeded; on failure the error holds its
// container log, read from the node.
func (rc *RealCluster) waitPodSucceeded(t T, namespace, name string, n *Node) error {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	for {
		var p corev1.Pod
		err := rc.CP.Client.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, &p)
		switch {
		case err == nil && p.Status.Phase == corev1.PodSucceeded:
			return nil
		case err == nil && p.Status.Phase == corev1.PodFailed:
			return fmt.Errorf("pod %s failed: %s", name, rc.podLogs(n, &p))
		}
		select {
		case <-ctx.Done():
			return errors.Join(fmt.Errorf("pod %s/%s did not succeed (phase %s)", namespace, name, p.Status.Phase), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// podLogs is the log of the pod's first container on node n (read from the node's files).
func (rc *RealCluster) podLogs(n *Node, p *corev1.Pod) string {
	for _, k := range rc.Kubelets {
		if k.Node == n && len(p.Spec.Containers) > 0 {
			out, err := k.ContainerLogs(p.Namespace, p.Name, p.Spec.Containers[0].Name)
			if err != nil {
				return err.Error()
			}
			return out
		}
	}
	return "(no kubelet)"
}

// describePods is one line per pod (phase, node, IP, per container ready/restarts) and, for each
// container that is not ready or has restarted, the end of its log: what a failed test needs to
// show why a workload did not come up.
func (rc *RealCluster) describePods(ctx context.Context) string {
	var pods corev1.PodList
	if err := rc.CP.Client.List(ctx, &pods); err != nil {
		return err.Error()
	}
	var b strings.Builder
	for i := range pods.Items {
		p := &pods.Items[i]
		fmt.Fprintf(&b, "%s/%s phase=%s node=%s ip=%s\n", p.Namespace, p.Name, p.Status.Phase, p.Spec.NodeName, p.Status.PodIP)
		for _, cs := range p.Status.ContainerStatuses {
			fmt.Fprintf(&b, "  container %s ready=%t restarts=%d state=%+v\n", cs.Name, cs.Ready, cs.RestartCount, cs.State)
			if cs.Ready && cs.RestartCount == 0 {
				continue
			}
			for _, k := range rc.Kubelets {
				if k.Node.Name == p.Spec.NodeName {
					out, err := k.ContainerLogs(p.Namespace, p.Name, cs.Name)
					if err != nil {
						out = err.Error()
					}
					fmt.Fprintf(&b, "  --- log (last 15 lines) ---\n%s\n", tail(out, 15))
				}
			}
		}
	}
	return b.String()
}
