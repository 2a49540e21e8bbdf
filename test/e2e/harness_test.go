package e2e

import (
	"context"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/magic-ip/magic-ip/test/harness"
)

// TestHarness proves the simulated cluster itself: 2 nodes x 2 pods, TCP and UDP echo pod-to-pod,
// node-to-pod and across nodes, Pod/Node objects right in the API, the API server reachable from
// inside a node, nothing routed from the root namespace, and nothing left behind.
func TestHarness(t *testing.T) {
	harness.RequireRoot(t)
	cp := harness.StartControlPlane(t)
	var clusterName string
	t.Run("cluster", func(t *testing.T) {
		c := harness.NewCluster(t, cp, harness.ClusterOptions{Nodes: 2})
		clusterName = c.Name
		checkCluster(t, c)
	})
	entries, err := os.ReadDir("/run/netns")
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.Contains(e.Name(), "-"+clusterName+"-") {
			t.Errorf("netns %s left behind after the cluster's test ended", e.Name())
		}
	}
}

func checkCluster(t *testing.T, c *harness.Cluster) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	pods := map[string][]*harness.Pod{}
	for _, n := range c.Nodes {
		for _, name := range []string{"a", "b"} {
			p := c.AddPod(n, "echo", n.Name+"-"+name, map[string]string{"app": "echo"}, harness.PodOptions{})
			p.Netns.ServeTCP(t, 8080, p.Name)
			p.Netns.ServeUDP(t, 8081, p.Name)
			pods[n.Name] = append(pods[n.Name], p)
		}
	}
	dial := func(from *harness.Netns, to *harness.Pod) {
		t.Helper()
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if got, err := from.DialTCP(dctx, net.JoinHostPort(to.IP.String(), "8080")); err != nil || got != to.Name {
			t.Errorf("tcp %s -> %s (%s): got %q, %v", from.Name, to.Name, to.IP, got, err)
		}
		if got, err := from.ExchangeUDP(dctx, net.JoinHostPort(to.IP.String(), "8081")); err != nil || got != to.Name {
			t.Errorf("udp %s -> %s (%s): got %q, %v", from.Name, to.Name, to.IP, got, err)
		}
	}
	// Each node's pod bridge keeps the MAC set from its gateway address, as CNI's bridge plugin
	// does, whatever the MACs of the pods added since (a bridge left alone takes the lowest).
	for _, n := range c.Nodes {
		var mac net.HardwareAddr
		if err := n.Netns.Do(func() error {
			l, err := netlink.LinkByName(harness.PodBridge)
			if err == nil {
				mac = l.Attrs().HardwareAddr
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if want := (net.HardwareAddr{0x0a, 0x58, n.Gateway[0], n.Gateway[1], n.Gateway[2], n.Gateway[3]}); mac.String() != want.String() {
			t.Errorf("%s: %s has MAC %s after its pods were added, want %s", n.Name, harness.PodBridge, mac, want)
		}
	}

	n1, n2 := c.Nodes[0], c.Nodes[1]
	a1, b1, a2 := pods[n1.Name][0], pods[n1.Name][1], pods[n2.Name][0]
	dial(a1.Netns, b1) // pod to pod on one node
	dial(b1.Netns, a1) // and back
	dial(n1.Netns, a1) // node to its pod
	dial(a1.Netns, a2) // across nodes
	dial(n2.Netns, b1) // node to a pod of the other node
	out := c.AddOutside(n1, n1.PodCIDR)
	dial(out.Netns, a1) // a host on the uplink network, routed through node 1

	checkAPIObjects(t, ctx, c, pods)
	checkPodLifecycle(t, ctx, a1)

	// Processes in a node namespace reach the API server through the loopback forwarder.
	kubectl := c.CP.AssetsDir + "/kubectl"
	got, err := n1.Netns.Run(ctx, kubectl, "--kubeconfig", c.CP.Kubeconfig, "get", "node", n1.Name, "-o", "name")
	if err != nil || strings.TrimSpace(got) != "node/"+n1.Name {
		t.Errorf("kubectl inside %s: %q, %v", n1.Name, got, err)
	}
	checkRootNamespaceUntouched(t)
}

func checkAPIObjects(t *testing.T, ctx context.Context, c *harness.Cluster, pods map[string][]*harness.Pod) {
	for _, n := range c.Nodes {
		var list corev1.PodList
		if err := c.CP.Client.List(ctx, &list, client.InNamespace("echo"), client.MatchingFields{"spec.nodeName": n.Name}); err != nil {
			t.Fatal(err)
		}
		if len(list.Items) != 2 {
			t.Errorf("node %s: %d pods in the API, want 2", n.Name, len(list.Items))
		}
		for _, p := range pods[n.Name] {
			obj, err := p.Object(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if obj.Spec.NodeName != n.Name || obj.Status.PodIP != p.IP.String() || obj.Status.Phase != corev1.PodRunning || !podReady(obj) {
				t.Errorf("pod %s: node %q ip %q phase %q ready %v; want %s %s Running true",
					p.Name, obj.Spec.NodeName, obj.Status.PodIP, obj.Status.Phase, podReady(obj), n.Name, p.IP)
			}
		}
		node, err := n.Object(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(node.Status.Addresses) == 0 || node.Status.Addresses[0].Address != n.IP.String() || node.Spec.PodCIDR != n.PodCIDR.String() {
			t.Errorf("node %s: addresses %v podCIDR %q; want InternalIP %s, %s", n.Name, node.Status.Addresses, node.Spec.PodCIDR, n.IP, n.PodCIDR)
		}
	}
}

func checkPodLifecycle(t *testing.T, ctx context.Context, p *harness.Pod) {
	if err := p.SetReady(ctx, false); err != nil {
		t.Fatal(err)
	}
	if obj, err := p.Object(ctx); err != nil || podReady(obj) {
		t.Errorf("after SetReady(false): ready=%v err=%v", err == nil && podReady(obj), err)
	}
	if err := p.MarkTerminating(ctx); err != nil {
		t.Fatal(err)
	}
	if obj, err := p.Object(ctx); err != nil || obj.DeletionTimestamp == nil {
		t.Errorf("after MarkTerminating: want a deletionTimestamp, got %v (err %v)", obj.DeletionTimestamp, err)
	}
	if err := p.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Object(ctx); err == nil {
		t.Errorf("pod %s still in the API after Delete", p.Name)
	}
	if _, err := os.Stat(p.Netns.Path()); !os.IsNotExist(err) {
		t.Errorf("pod netns %s still there after Delete (stat: %v)", p.Netns.Path(), err)
	}
}

// harnessNetworks are the simulated clusters' networks, both families.
func harnessNetworks(t *testing.T) []*net.IPNet {
	var out []*net.IPNet
	for _, s := range []string{harness.PodNetwork, harness.UnderlayNetwork, harness.PodNetwork6, harness.UnderlayNetwork6} {
		_, n, err := net.ParseCIDR(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, n)
	}
	return out
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// checkRootNamespaceUntouched: the root namespace has no route into the simulated networks (IPv4
// and IPv6) and no link of the harness.
func checkRootNamespaceUntouched(t *testing.T) {
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := netlink.RouteList(nil, fam)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range routes {
			if r.Dst != nil && slices.ContainsFunc(harnessNetworks(t), func(n *net.IPNet) bool { return n.Contains(r.Dst.IP) }) {
				t.Errorf("root namespace has a route into the test network: %v", r)
			}
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if name := l.Attrs().Name; strings.HasPrefix(name, "veth") && len(name) == 12 {
			t.Errorf("root namespace has a harness-style veth %s", name)
		}
	}
}
