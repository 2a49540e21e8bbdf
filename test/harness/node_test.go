package harness

import (
	"net"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// Simulated pods get .10-.127 of the node's /24: the rest is the CNI range of real nodes.
func TestAllocIPStaysBelowCNIRange(t *testing.T) {
	n := &Node{Name: "n1", Index: 3, PodCIDR: &net.IPNet{IP: net.IPv4(10, 244, 3, 0).To4(), Mask: net.CIDRMask(24, 32)}, nextIP: 10}
	var last net.IP
	for i := 10; i < cniRangeStart; i++ {
		ip, err := n.allocIP()
		if err != nil {
			t.Fatalf("address %d: %v", i, err)
		}
		last = ip
	}
	if want := net.IPv4(10, 244, 3, 127).To4(); !last.Equal(want) {
		t.Fatalf("last simulated address %s, want %s", last, want)
	}
	if ip, err := n.allocIP(); err == nil {
		t.Fatalf("allocIP handed out %s, inside the CNI range .%d-.%d", ip, cniRangeStart, cniRangeEnd)
	}
}

// The harness registers nodes Ready itself: only the kubelet's own status counts for WaitReady.
func TestKubeletReady(t *testing.T) {
	ready := func(status corev1.ConditionStatus, msg string) corev1.NodeCondition {
		return corev1.NodeCondition{Type: corev1.NodeReady, Status: status, Reason: "KubeletReady", Message: msg}
	}
	for _, tc := range []struct {
		name    string
		version string
		cond    corev1.NodeCondition
		want    bool
	}{
		{"registered by the harness", "", ready(corev1.ConditionTrue, ""), false},
		{"kubelet posts ready", "v1.37.2", ready(corev1.ConditionTrue, "kubelet is posting ready status"), true},
		{"kubelet posts not ready", "v1.37.2", ready(corev1.ConditionFalse, "container runtime network not ready"), false},
		{"harness condition, kubelet not yet reporting", "v1.37.2", ready(corev1.ConditionTrue, ""), false},
	} {
		n := &corev1.Node{}
		n.Status.NodeInfo.KubeletVersion = tc.version
		n.Status.Conditions = []corev1.NodeCondition{tc.cond}
		if got := kubeletReady(n); got != tc.want {
			t.Errorf("%s: kubeletReady = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// CRI log lines: "<time> <stream> <P|F> <message>", P a part of a longer line.
func TestParseCRILog(t *testing.T) {
	in := "2026-12-06T13:33:29.62Z stderr F {\"msg\":\"echo serving\"}\n" +
		"2026-12-06T13:33:30.00Z stdout P first half \n" +
		"2026-12-06T13:33:30.01Z stdout F second half\n" +
		"2026-12-06T13:33:31.00Z stdout F \n"
	want := "{\"msg\":\"echo serving\"}\nfirst half second half\n\n"
	if got := parseCRILog(in); got != want {
		t.Errorf("parseCRILog = %q, want %q", got, want)
	}
}

// Each stack's addressing: IPv4 first; an IPv6-only node's primary fields are its IPv6 ones; pods
// get host number k in each family.
func TestNodeStackAddressing(t *testing.T) {
	c := &Cluster{Name: "c"}
	for _, tc := range []struct {
		stack           NodeStack
		ips, pod, cidrs []string
		bridgeMAC       string
	}{
		{IPv4Only, []string{"172.20.0.12"}, []string{"10.244.2.10"}, []string{"10.244.2.0/24"}, "0a:58:0a:f4:02:01"},
		{NoIPv6, []string{"172.20.0.12"}, []string{"10.244.2.10"}, []string{"10.244.2.0/24"}, "0a:58:0a:f4:02:01"},
		{DualStack, []string{"172.20.0.12", "fd00:172:20::c"}, []string{"10.244.2.10", "fd00:10:244:2::a"}, []string{"10.244.2.0/24", "fd00:10:244:2::/64"}, "0a:58:0a:f4:02:01"},
		{IPv6Only, []string{"fd00:172:20::c"}, []string{"fd00:10:244:2::a"}, []string{"fd00:10:244:2::/64"}, "0a:58:00:02:00:01"},
	} {
		n := newNode(c, 2, false, tc.stack)
		var ips, pod []string
		for _, ip := range n.IPs() {
			ips = append(ips, ip.String())
		}
		got, err := n.allocIPs()
		if err != nil {
			t.Fatal(err)
		}
		for _, ip := range got {
			pod = append(pod, ip.String())
		}
		if !slices.Equal(ips, tc.ips) || !slices.Equal(pod, tc.pod) || !slices.Equal(podCIDRs(n), tc.cidrs) || !n.IP.Equal(net.ParseIP(tc.ips[0])) {
			t.Errorf("%q node: IPs %v (IP %s), pod %v, podCIDRs %v; want %v, %v, %v", tc.stack, ips, n.IP, pod, podCIDRs(n), tc.ips, tc.pod, tc.cidrs)
		}
		if mac := BridgeMAC(n.Gateway).String(); mac != tc.bridgeMAC {
			t.Errorf("%q node: bridge MAC %s, want %s", tc.stack, mac, tc.bridgeMAC)
		}
	}
}
