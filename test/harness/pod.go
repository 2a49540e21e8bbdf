package harness

import (
	"context"
	"fmt"
	"hash/fnv"
	"net"
	"slices"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Pod is a simulated pod: a Pod object bound to a node and, unless host-network, a network
// namespace on the node's cni0 bridge with address IP.
type Pod struct {
	Namespace, Name string
	Node            *Node
	// Netns is the pod's namespace (the node's for host-network pods).
	Netns *Netns
	// IP is the pod's first address (its status.podIP): IPv4, or IPv6 on an IPv6-only node; IP6
	// its IPv6 address on a node with IPv6 (nil otherwise). Host-network pods have the node's.
	IP          net.IP
	IP6         net.IP
	HostNetwork bool
	ownNetns    bool
}

// PodOptions configure AddPod.
type PodOptions struct {
	HostNetwork bool
	// NotReady creates the pod Running but not Ready.
	NotReady    bool
	Ports       []corev1.ContainerPort
	Annotations map[string]string
}

// AddPod creates a pod on node: its network namespace plumbed into cni0 (or the node's namespace
// when host-network) and a Pod object with spec.nodeName, phase Running, podIP(s) and the Ready
// condition written through the status subresource. The namespace object is created if missing.
func (c *Cluster) AddPod(node *Node, namespace, name string, labels map[string]string, opts PodOptions) *Pod {
	c.t.Helper()
	ctx := c.t.Context()
	p := &Pod{Namespace: namespace, Name: name, Node: node, HostNetwork: opts.HostNetwork}
	if err := c.EnsureNamespace(ctx, namespace, nil); err != nil {
		c.t.Fatalf("pod %s/%s: %v", namespace, name, err)
	}
	if opts.HostNetwork {
		p.Netns, p.IP, p.IP6 = node.Netns, node.IP, node.IP6
	} else if err := p.plumb(); err != nil {
		c.t.Fatalf("pod %s/%s on %s: %v", namespace, name, node.Name, err)
	}
	obj := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: labels, Annotations: opts.Annotations},
		Spec: corev1.PodSpec{
			NodeName:    node.Name,
			HostNetwork: opts.HostNetwork,
			Containers:  []corev1.Container{{Name: "app", Image: "registry.invalid/magic-ip-test:1", Ports: opts.Ports}},
		},
	}
	if err := c.CP.Client.Create(ctx, obj); err != nil {
		c.t.Fatalf("create Pod %s/%s: %v", namespace, name, err)
	}
	if err := p.SetReady(ctx, !opts.NotReady); err != nil {
		c.t.Fatalf("pod %s/%s: %v", namespace, name, err)
	}
	return p
}

// plumb creates the pod namespace and a veth from it to the node, with an address and a default
// route via the node's gateway in each of the node's families: the veth joins cni0 in hairpin
// mode on bridge nodes, and carries the gateways and a /32 (/128) route to the pod on routed
// nodes.
func (p *Pod) plumb() error {
	n := p.Node
	ips, err := n.allocIPs()
	if err != nil {
		return err
	}
	ns, err := NewNetns(n.cluster.netnsName(fmt.Sprintf("node%d-%s-%s", n.Index, p.Namespace, p.Name)))
	if err != nil {
		return err
	}
	p.Netns, p.IP, p.ownNetns = ns, ips[0], true
	if n.PodCIDR6 != nil {
		p.IP6 = ips[len(ips)-1]
	}
	n.cluster.t.Cleanup(func() { _ = p.deleteNetns() })
	if err := prepareStack(ns, n.Stack, false); err != nil {
		return err
	}
	if err := n.Netns.withHandle(func(h *netlink.Handle) error { return p.plugHostSide(h, ns) }); err != nil {
		return err
	}
	return ns.withHandle(func(h *netlink.Handle) error {
		for _, f := range n.families() {
			if err := p.podSide(h, f, ips); err != nil {
				return err
			}
		}
		return nil
	})
}

// podSide configures the pod's eth0 (namespace h) in family f: the pod's address of the family
// (of ips) in the node's pod CIDR (alone on routed nodes) and the default route via the gateway,
// reached on the link on routed nodes.
func (p *Pod) podSide(h *netlink.Handle, f family, ips []net.IP) error {
	i := slices.IndexFunc(ips, func(ip net.IP) bool { return (ip.To4() == nil) == f.v6() })
	ip, mask := ips[i], f.podCIDR.Mask
	if p.Node.Routed {
		mask = hostMask(ip)
	}
	if err := linkUpWithAddr(h, "eth0", &net.IPNet{IP: ip, Mask: mask}); err != nil {
		return err
	}
	if p.Node.Routed { // the gateway is not in the pod's /32: reach it on the link
		eth0, err := h.LinkByName("eth0")
		if err != nil {
			return err
		}
		gw := &netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: &net.IPNet{IP: f.gateway, Mask: hostMask(f.gateway)}, Scope: netlink.SCOPE_LINK}
		if err := h.RouteAdd(gw); err != nil {
			return fmt.Errorf("route to gateway %s: %w", f.gateway, err)
		}
	}
	if err := h.RouteAdd(&netlink.Route{Gw: f.gateway}); err != nil {
		return fmt.Errorf("default route via %s: %w", f.gateway, err)
	}
	return nil
}

// plugHostSide creates the pod's veth in the node namespace h and connects its node side: a cni0
// port with hairpin mode on (so the bridge may send a frame back out of the port it came in on,
// as a producer reaching itself through its magic IP needs), or, on routed nodes, the gateway
// addresses and a /32 (/128) route to each of the pod's addresses.
func (p *Pod) plugHostSide(h *netlink.Handle, ns *Netns) error {
	n := p.Node
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: p.HostVeth()},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(int(ns.handle)),
	}
	if !n.Routed {
		br, err := h.LinkByName(PodBridge)
		if err != nil {
			return err
		}
		veth.MasterIndex = br.Attrs().Index
	}
	if err := h.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth %s: %w", veth.Name, err)
	}
	if !n.Routed {
		if err := h.LinkSetHairpin(veth, true); err != nil {
			return fmt.Errorf("hairpin mode on %s: %w", veth.Name, err)
		}
		return h.LinkSetUp(veth)
	}
	var gws []*net.IPNet
	for _, f := range n.families() {
		gws = append(gws, &net.IPNet{IP: f.gateway, Mask: hostMask(f.gateway)})
	}
	if err := linkUpWithAddr(h, veth.Name, gws...); err != nil {
		return err
	}
	for _, ip := range p.IPs() {
		route := &netlink.Route{LinkIndex: veth.Attrs().Index, Dst: &net.IPNet{IP: ip, Mask: hostMask(ip)}, Scope: netlink.SCOPE_LINK}
		if err := h.RouteAdd(route); err != nil {
			return fmt.Errorf("route to pod %s via %s: %w", ip, veth.Name, err)
		}
	}
	return nil
}

// IPs are the pod's addresses, IPv4 first (its status.podIPs).
func (p *Pod) IPs() []net.IP {
	out := []net.IP{p.IP}
	if p.IP6 != nil && !p.IP6.Equal(p.IP) {
		out = append(out, p.IP6)
	}
	return out
}

// HostVeth is the node-side veth name: veth + 8 hex digits of a hash of namespace/name.
func (p *Pod) HostVeth() string {
	h := fnv.New32a()
	h.Write([]byte(p.Namespace + "/" + p.Name))
	return fmt.Sprintf("veth%08x", h.Sum32())
}

func (p *Pod) deleteNetns() error {
	if !p.ownNetns {
		return nil
	}
	p.ownNetns = false
	return p.Netns.Delete()
}

func (p *Pod) key() client.ObjectKey { return client.ObjectKey{Namespace: p.Namespace, Name: p.Name} }

// Object returns the pod's current Pod object.
func (p *Pod) Object(ctx context.Context) (*corev1.Pod, error) {
	obj := &corev1.Pod{}
	err := p.Node.cluster.CP.Client.Get(ctx, p.key(), obj)
	return obj, err
}

// SetReady writes phase Running, the pod's addresses and the Ready/ContainersReady conditions, as
// the kubelet would.
func (p *Pod) SetReady(ctx context.Context, ready bool) error {
	c := p.Node.cluster.CP.Client
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		obj, err := p.Object(ctx)
		if err != nil {
			return err
		}
		setPodStatus(obj, p, ready)
		return c.Status().Update(ctx, obj)
	})
	if err != nil {
		return fmt.Errorf("set pod %s/%s ready=%v: %w", p.Namespace, p.Name, ready, err)
	}
	return nil
}

func setPodStatus(obj *corev1.Pod, p *Pod, ready bool) {
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	now := metav1.Now()
	cond := func(t corev1.PodConditionType, s corev1.ConditionStatus) corev1.PodCondition {
		return corev1.PodCondition{Type: t, Status: s, LastTransitionTime: now}
	}
	obj.Status.Phase = corev1.PodRunning
	obj.Status.HostIP = p.Node.IP.String()
	obj.Status.HostIPs = nil
	for _, ip := range p.Node.IPs() {
		obj.Status.HostIPs = append(obj.Status.HostIPs, corev1.HostIP{IP: ip.String()})
	}
	obj.Status.PodIP = p.IP.String()
	obj.Status.PodIPs = nil
	for _, ip := range p.IPs() {
		obj.Status.PodIPs = append(obj.Status.PodIPs, corev1.PodIP{IP: ip.String()})
	}
	obj.Status.Conditions = []corev1.PodCondition{
		cond(corev1.PodScheduled, corev1.ConditionTrue),
		cond(corev1.PodInitialized, corev1.ConditionTrue),
		cond(corev1.ContainersReady, status),
		cond(corev1.PodReady, status),
	}
	obj.Status.ContainerStatuses = []corev1.ContainerStatus{{
		Name: "app", Image: "registry.invalid/magic-ip-test:1", Ready: ready, Started: &ready,
		State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
	}}
}

// MarkTerminating deletes the Pod object gracefully: with no kubelet to confirm, it stays in the
// API with a deletionTimestamp, as a pod does while it shuts down.
func (p *Pod) MarkTerminating(ctx context.Context) error {
	obj := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name}}
	if err := p.Node.cluster.CP.Client.Delete(ctx, obj, client.GracePeriodSeconds(30)); err != nil {
		return fmt.Errorf("mark pod %s/%s terminating: %w", p.Namespace, p.Name, err)
	}
	return nil
}

// Delete removes the Pod object at once and the pod's network namespace.
func (p *Pod) Delete(ctx context.Context) error {
	obj := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name}}
	if err := p.Node.cluster.CP.Client.Delete(ctx, obj, client.GracePeriodSeconds(0)); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return p.deleteNetns()
}

// EnsureNamespace creates a namespace with labels unless it exists.
func (c *Cluster) EnsureNamespace(ctx context.Context, name string, labels map[string]string) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if err := c.CP.Client.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", name, err)
	}
	return nil
}

// CreatePodObjects creates, in namespace (created if missing), one Pod object with labels per
// entry of nodes (pod name → node name), bound to that node, with nothing behind it (no network
// namespace, no status): for what only the API server sees.
func (cp *ControlPlane) CreatePodObjects(ctx context.Context, namespace string, labels, nodes map[string]string) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}
	if err := cp.Client.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", namespace, err)
	}
	for name, node := range nodes {
		obj := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: labels},
			Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/magic-ip-test:1"}}},
		}
		if err := cp.Client.Create(ctx, obj); err != nil {
			return fmt.Errorf("create Pod %s/%s: %w", namespace, name, err)
		}
	}
	return nil
}
