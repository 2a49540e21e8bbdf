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
	if !strings.Contains(string(src), want) {
		t.Errorf("magicip_types.go has no CEL rule %s: keep the CRD's list and CloudPlatformAddresses equal", want)
	}
}
