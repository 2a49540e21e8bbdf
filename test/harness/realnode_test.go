package harness

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) } // leak check: no network namespace of ours left

const echoPort = 8080

// realNodeTrace is what a test saw of a real node, to check after teardown that none of it is left.
type realNodeTrace struct {
	cgroup string
	pids   []int
}

// Two real nodes (kubelet + containerd + runc + CNI bridge) run a pod each from the test image; a
// connection from node 1 to the pod on node 2 is answered by that pod, which sees node 1's
// address. After teardown no process, cgroup or mount of the nodes is left.
func TestRealNodes(t *testing.T) {
	RequireRoot(t)
	before, err := mountPoints()
	if err != nil {
		t.Fatal(err)
	}
	var traces []realNodeTrace
	t.Run("cluster", func(t *testing.T) { traces = runRealNodes(t) })
	if len(traces) == 0 {
		t.Fatal("no real node was started")
	}
	checkRealNodesGone(t, before, traces)
}

func runRealNodes(t *testing.T) []realNodeTrace {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	tars := testImageTars(t, root)
	cp := StartControlPlane(t)
	c := NewCluster(t, cp, ClusterOptions{Nodes: 2})
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	var traces []realNodeTrace
	var reals []*RealNode
	for _, n := range c.Nodes {
		start := time.Now()
		r := n.StartKubelet(t, KubeletOptions{Kubeconfig: cp.Kubeconfig, Images: tars, PauseImage: PauseImage})
		if err := r.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("node %s: containerd up, images imported and Ready from its kubelet in %s", n.Name, time.Since(start).Round(time.Millisecond))
		reals = append(reals, r)
		traces = append(traces, realNodeTrace{cgroup: r.Cgroup})
	}
	pods := make([]*corev1.Pod, len(reals))
	for i, r := range reals {
		pods[i] = startEchoPod(ctx, t, cp, r)
	}
	checkEchoAcrossNodes(t, c.Nodes[0], c.Nodes[1], pods[1])
	for i, r := range reals {
		logs, err := r.ContainerLogs(pods[i].Namespace, pods[i].Name, "echo")
		if err != nil || !strings.Contains(logs, `"msg":"echo serving"`) {
			t.Errorf("node %s: echo container's log from /var/log/pods: %q, %v", r.Node.Name, logs, err)
		}
		if traces[i].pids, err = r.Processes(); err != nil || len(traces[i].pids) < 5 {
			t.Errorf("node %s: processes %v (want containerd, kubelet, shim, pause, echo at least), %v", r.Node.Name, traces[i].pids, err)
		}
		t.Logf("node %s: %d processes, %d MiB resident", r.Node.Name, len(traces[i].pids), residentMiB(traces[i].pids))
	}
	return traces
}

// testImageTars are the tarballs of the test images (MAGIC_IP_IMAGES or hack/images.sh).
func testImageTars(t *testing.T, _ string) []string {
	images, err := BuildImages("test")
	if err != nil {
		t.Fatal(err)
	}
	var tars []string
	found := map[string]bool{}
	for _, im := range images.List {
		if im.Ref == PauseImage || im.Ref == TestbinImage {
			tars = append(tars, im.Tar)
			found[im.Ref] = true
		}
	}
	if !found[PauseImage] || !found[TestbinImage] {
		t.Fatalf("images in %s: %v, want %s and %s", images.Dir, images.List, PauseImage, TestbinImage)
	}
	return tars
}

// startEchoPod creates a pod bound to r's node (no scheduler) running `testbin echo` and waits
// until it runs with an address from the node's CNI range.
func startEchoPod(ctx context.Context, t *testing.T, cp *ControlPlane, r *RealNode) *corev1.Pod {
	n := r.Node
	env := func(name, path string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "echo-" + n.Name},
		Spec: corev1.PodSpec{
			NodeName: n.Name,
			Containers: []corev1.Container{{
				Name: "echo", Image: TestbinImage, ImagePullPolicy: corev1.PullNever,
				Args: []string{"echo", "--tcp-port", fmt.Sprint(echoPort)},
				Env:  []corev1.EnvVar{env("POD_NAME", "metadata.name"), env("NODE_NAME", "spec.nodeName")},
			}},
		},
	}
	start := time.Now()
	if err := cp.Client.Create(ctx, pod); err != nil {
		t.Fatalf("create pod %s: %v", pod.Name, err)
	}
	if err := waitPodRunning(ctx, cp.Client, pod); err != nil {
		t.Fatalf("node %s: %v", n.Name, err)
	}
	t.Logf("pod %s: Running at %s in %s", pod.Name, pod.Status.PodIP, time.Since(start).Round(time.Millisecond))
	ip := net.ParseIP(pod.Status.PodIP).To4()
	if ip == nil || !n.PodCIDR.Contains(ip) || ip[3] < cniRangeStart || ip[3] > cniRangeEnd {
		t.Fatalf("pod %s: address %q, want one in .%d-.%d of %s", pod.Name, pod.Status.PodIP, cniRangeStart, cniRangeEnd, n.PodCIDR)
	}
	return pod
}

// waitPodRunning polls the pod until it is Running with an address (pod is updated in place).
func waitPodRunning(ctx context.Context, c client.Client, pod *corev1.Pod) error {
	for {
		err := c.Get(ctx, client.ObjectKeyFromObject(pod), pod)
		if err == nil && pod.Status.Phase == corev1.PodRunning && pod.Status.PodIP != "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pod %s not Running: %w (phase %q, statuses %+v)", pod.Name, ctx.Err(), pod.Status.Phase, pod.Status.ContainerStatuses)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// checkEchoAcrossNodes connects from node from's namespace to the echo pod on node to: the pod
// answers with its name, its node and the peer address it saw, which must be from's own.
func checkEchoAcrossNodes(t *testing.T, from, to *Node, pod *corev1.Pod) {
	addr := net.JoinHostPort(pod.Status.PodIP, fmt.Sprint(echoPort))
	var line string
	err := from.Netns.Do(func() error {
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		line, err = bufio.NewReader(conn).ReadString('\n')
		return err
	})
	if err != nil {
		t.Fatalf("from node %s to pod %s at %s: %v", from.Name, pod.Name, addr, err)
	}
	if want := fmt.Sprintf("%s %s %s", pod.Name, to.Name, from.IP); strings.TrimSpace(line) != want {
		t.Fatalf("from node %s to pod %s: answer %q, want %q", from.Name, pod.Name, line, want)
	}
}

// checkRealNodesGone fails t if a process, cgroup or mount of the nodes outlived their teardown.
func checkRealNodesGone(t *testing.T, before map[string]bool, traces []realNodeTrace) {
	for _, tr := range traces {
		for _, pid := range tr.pids {
			// A pid that runs again may be another process (pids are reused on a busy machine):
			// it counts only while it is still in the node's cgroup.
			// A zombie is dead: a container's init, killed and reparented to the machine's init,
			// stays one until that init reaps it.
			status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid)); err == nil && strings.Contains(string(b), "/"+tr.cgroup) && !isZombie(string(status)) {
				t.Errorf("node cgroup %s: process %d still runs: %s\n%s", tr.cgroup, pid, procSummary(string(status)), b)
			}
		}
		left, err := NodeCgroupsLeft(tr.cgroup)
		if err != nil || len(left) > 0 {
			t.Errorf("node cgroups left: %v %v", left, err)
		}
		if procs, err := processesInCgroup(tr.cgroup); err != nil || len(procs) > 0 {
			t.Errorf("processes still in a cgroup of %s: %v %v", tr.cgroup, procs, err)
		}
	}
	after, err := mountPoints()
	if err != nil {
		t.Fatal(err)
	}
	for m := range after {
		if !before[m] && !foreignNetnsMount(m) {
			t.Errorf("mount left in the root mount namespace: %s", m)
		}
	}
}

// residentMiB sums the resident memory of the processes.
func residentMiB(pids []int) int {
	kib := 0
	for _, pid := range pids {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
				kib += n
			}
		}
	}
	return kib / 1024
}

// mountPoints is the set of mount points of this (the root) mount namespace.
func mountPoints() (map[string]bool, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	set := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 {
			set[f[4]] = true
		}
	}
	return set, nil
}

// foreignNetnsMount: a network namespace of another test process on this machine (ours are
// checked by Main's leak check), which may come and go while this test runs.
func foreignNetnsMount(m string) bool {
	return strings.HasPrefix(m, "/run/netns/") && !strings.HasPrefix(m, "/run/netns/"+RunPrefix()+"-")
}

// processesInCgroup lists the processes on the machine whose cgroup path in any hierarchy lies
// under /<name>.
func processesInCgroup(name string) ([]string, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var found []string
	for _, e := range entries {
		b, err := os.ReadFile("/proc/" + e.Name() + "/cgroup")
		if err != nil {
			continue // not a process, or gone
		}
		if status, err := os.ReadFile("/proc/" + e.Name() + "/status"); err != nil || isZombie(string(status)) {
			continue // gone, or dead and waiting to be reaped
		}
		for _, line := range strings.Split(string(b), "\n") {
			if _, path, ok := strings.Cut(line, ":/"+name); ok && (path == "" || strings.HasPrefix(path, "/")) {
				found = append(found, e.Name())
				break
			}
		}
	}
	return found, nil
}

// procSummary is the Name, State and PPid lines of a /proc/<pid>/status.
func procSummary(status string) string {
	var out []string
	for _, l := range strings.Split(status, "\n") {
		if strings.HasPrefix(l, "Name:") || strings.HasPrefix(l, "State:") || strings.HasPrefix(l, "PPid:") {
			out = append(out, strings.Join(strings.Fields(l), " "))
		}
	}
	return strings.Join(out, ", ")
}

// isZombie reports whether a /proc/<pid>/status is a zombie's (State: Z).
func isZombie(status string) bool {
	for _, l := range strings.Split(status, "\n") {
		if strings.HasPrefix(l, "State:") {
			return strings.HasPrefix(strings.TrimSpace(strings.TrimPrefix(l, "State:")), "Z")
		}
	}
	return false
}
