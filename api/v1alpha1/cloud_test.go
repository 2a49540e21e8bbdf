package v1alpha1

import (
	"os"
	"strings"
	"testing"
)

// TestCloudPlatformAddressesMatchCRD: the CRD's CEL rule refuses exactly CloudPlatformAddresses,
// the list agents never program, so the API and the nodes cannot drift apart.
func TestCloudPlatformAddressesMatchCRD(t *testing.T) {
	src, err := os.ReadFile("magicip_types.go")
	if err != nil {
		t.Fatal(err)
	}
	var quoted []string
	for _, a := range CloudPlatformAddresses() {
		quoted = append(quoted, "'"+a+"'")
	}
	want := "rule=\"!(self in [" + strings.Join(quoted, ", ") + "])\""
	// Once on spec.address and once on spec.ipv6Address.
	if n := strings.Count(string(src), want); n != 2 {
		t.Errorf("magicip_types.go has %d CEL rules %s, want 2 (address, ipv6Address): keep the CRD's lists and CloudPlatformAddresses equal", n, want)
	}
}
