package harness

import (
	"net"
	"testing"
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
