package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// KubeletOptions configure StartKubelet.
type KubeletOptions struct {
	// Kubeconfig is the kubelet's kubeconfig (a system:node:<name> one, or the admin one). Its
	// server, 127.0.0.1:<port>, is reached through the node's API server forwarder.
	Kubeconfig string
	// Images are docker-archive tarballs imported into the node's containerd before StartKubelet
	// returns: there is no registry, every image a pod uses must be among them.
	Images []string
	// PauseImage is the sandbox image reference (e.g. PauseImage, imported with Images).
	PauseImage string
	// Assets is the directory of node binaries (default: NodeAssetsDir).
	Assets string
}

// RealNode is a real containerd and kubelet running in a harness node's network namespace, in a
// private mount namespace of their own: pods get real containers (runc) and addresses from the CNI
// bridge plugin on the node's cni0, .128-.250 of the node's pod CIDR.
type RealNode struct {
	Node *Node
	// Dir holds everything the node writes: configs, containerd's root and state, the kubelet's
	// root, the CNI IPAM data, and what the node sees as /var/lib and /var/log.
	Dir string
	// Cgroup names the node's cgroup, /<Cgroup> in every hierarchy: the kubelet's cgroupRoot and,
	// in the pids hierarchy, the home of every process of the node.
	Cgroup string
	assets string
	track  string
	proc   *Process
}

// StartKubelet starts containerd and a kubelet for a bridge node, imports opts.Images, and
// returns once containerd serves (the Node turns Ready a few seconds later: WaitReady). Cleanup
// kills every process of the node (containers and shims too) and removes its cgroups and files.
func (n *Node) StartKubelet(t T, opts KubeletOptions) *RealNode {
	t.Helper()
	RequireRoot(t)
	if n.Routed {
		t.Fatalf("node %s: real kubelets run on bridge nodes only", n.Name)
	}
	r, err := n.prepareRealNode(t, opts)
	if err != nil {
		t.Fatalf("node %s: %v", n.Name, err)
	}
	cmd := exec.Command("nsenter", "--net="+n.Netns.Path(),
		"unshare", "--mount", "--uts", "--propagation", "slave", "/bin/sh", filepath.Join(r.Dir, "start.sh"))
	r.proc = startProcess(t, "node "+n.Name, cmd)
	t.Cleanup(func() { // runs before the process's own cleanup: nothing is left for it to stop
		if err := killCgroup(r.track, 30*time.Second); err != nil {
			t.Errorf("node %s: %v", n.Name, err)
		}
	})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := r.waitContainerd(ctx); err != nil {
		t.Fatalf("node %s: %v", n.Name, err)
	}
	if err := r.ImportImages(opts.Images...); err != nil {
		t.Fatalf("node %s: %v", n.Name, err)
	}
	return r
}

// prepareRealNode makes the node's directory and cgroups (removed in t.Cleanup, after the
// processes are gone) and writes its configuration.
func (n *Node) prepareRealNode(t T, opts KubeletOptions) (*RealNode, error) {
	assets := opts.Assets
	if assets == "" {
		root, err := RepoRoot()
		if err != nil {
			return nil, err
		}
		if assets, err = NodeAssetsDir(root); err != nil {
			return nil, err
		}
	}
	dir, err := os.MkdirTemp("", "magic-ip-node-")
	if err != nil {
		return nil, err
	}
	r := &RealNode{Node: n, Dir: dir, Cgroup: n.Netns.Name, assets: assets}
	t.Cleanup(func() { r.removeFiles(t) })
	if r.track, err = createNodeCgroup(r.Cgroup); err != nil {
		return nil, errors.Join(err, removeNodeCgroup(r.Cgroup))
	}
	t.Cleanup(func() {
		if err := removeNodeCgroup(r.Cgroup); err != nil {
			t.Errorf("node %s: %v", n.Name, err)
		}
	})
	if err := r.writeConfig(opts); err != nil {
		return nil, fmt.Errorf("configure: %w", err)
	}
	return r, nil
}

// removeFiles removes the node's directory, first showing the ends of its logs if the test failed.
func (r *RealNode) removeFiles(t T) {
	if t.Failed() {
		for _, name := range []string{"containerd.log", "kubelet.log"} {
			b, _ := os.ReadFile(filepath.Join(r.Dir, name))
			t.Logf("--- %s of node %s (last 40 lines) ---\n%s", name, r.Node.Name, tail(string(b), 40))
		}
	}
	if err := os.RemoveAll(r.Dir); err != nil {
		t.Errorf("node %s: remove %s: %v", r.Node.Name, r.Dir, err)
	}
}

func (r *RealNode) socket() string { return filepath.Join(r.Dir, "run", "containerd.sock") }

// waitContainerd waits until containerd answers on its socket.
func (r *RealNode) waitContainerd(ctx context.Context) error {
	var last error
	for {
		if r.proc.Exited() {
			return fmt.Errorf("node start script ended: %s\n%s", r.proc.Output(), r.logTail("containerd.log"))
		}
		if _, last = r.Ctr("version"); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("containerd did not answer: %w (last: %v)", ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Ctr runs ctr against the node's containerd, in the namespace the kubelet uses (k8s.io).
func (r *RealNode) Ctr(args ...string) (string, error) {
	all := append([]string{"--address", r.socket(), "--namespace", "k8s.io"}, args...)
	out, err := exec.Command(filepath.Join(r.assets, "ctr"), all...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("node %s: ctr %s: %w: %s", r.Node.Name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// ImportImages loads docker-archive tarballs into the node's containerd, where the kubelet finds them.
func (r *RealNode) ImportImages(tars ...string) error {
	for _, tar := range tars {
		if _, err := r.Ctr("images", "import", tar); err != nil {
			return err
		}
	}
	return nil
}

// Processes lists every process of the node: containerd, the kubelet, shims and containers.
func (r *RealNode) Processes() ([]int, error) { return CgroupProcs(r.track) }

// WaitReady waits until the kubelet itself reports the Node Ready (the harness registers Node
// objects Ready beforehand; the kubelet's status carries its version and its own message).
func (r *RealNode) WaitReady(ctx context.Context) error {
	for {
		if r.proc.Exited() {
			return fmt.Errorf("node %s: kubelet ended: %s\n%s", r.Node.Name, r.proc.Output(), r.logTail("kubelet.log"))
		}
		obj, err := r.Node.Object(ctx)
		if err == nil && kubeletReady(obj) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s: not Ready from its kubelet: %w\n%s", r.Node.Name, ctx.Err(), r.logTail("kubelet.log"))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func kubeletReady(n *corev1.Node) bool {
	if n.Status.NodeInfo.KubeletVersion == "" {
		return false
	}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue && strings.Contains(c.Message, "kubelet is posting ready status")
		}
	}
	return false
}

func (r *RealNode) logTail(name string) string {
	b, _ := os.ReadFile(filepath.Join(r.Dir, name))
	return fmt.Sprintf("--- %s (last 20 lines) ---\n%s", name, tail(string(b), 20))
}

// ContainerLogs is what a container of a pod on this node wrote (its latest run), read from the
// node's /var/log/pods, with the CRI log framing removed.
func (r *RealNode) ContainerLogs(namespace, pod, container string) (string, error) {
	pattern := filepath.Join(r.Dir, "var-log", "pods", namespace+"_"+pod+"_*", container, "*.log")
	files, err := filepath.Glob(pattern)
	if err != nil || len(files) == 0 {
		return "", fmt.Errorf("node %s: no log of container %s in pod %s/%s (%s)", r.Node.Name, container, namespace, pod, pattern)
	}
	sort.Slice(files, func(i, j int) bool { return restartOf(files[i]) < restartOf(files[j]) })
	b, err := os.ReadFile(files[len(files)-1])
	if err != nil {
		return "", err
	}
	return parseCRILog(string(b)), nil
}

// restartOf is the restart count in a CRI log file name, <count>.log.
func restartOf(path string) int {
	n, _ := strconv.Atoi(strings.TrimSuffix(filepath.Base(path), ".log"))
	return n
}

// parseCRILog joins the messages of CRI log lines "<time> <stream> <P|F> <message>": F ends a
// line, P is part of a longer one.
func parseCRILog(s string) string {
	var b strings.Builder
	for _, line := range strings.Split(s, "\n") {
		parts := strings.SplitN(line, " ", 4)
		if len(parts) < 3 {
			continue
		}
		msg := ""
		if len(parts) == 4 {
			msg = parts[3]
		}
		b.WriteString(msg)
		if parts[2] != "P" {
			b.WriteString("\n")
		}
	}
	return b.String()
}
