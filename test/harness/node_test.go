package harness

import (
	"net"
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
