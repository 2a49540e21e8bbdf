package agent

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// withoutIPv6 keeps the IPv4 part of the State as it is and reports each IPv6 address once per
// MagicIP (however many ports), with the reason given.
func TestWithoutIPv6(t *testing.T) {
	st := dualStackState()
	st.Unprogrammed = map[string][]v1alpha1.UnprogrammedAddress{}
	got := withoutIPv6(st, "IPv6 is disabled on this node")
	var v4 []Service
	for _, s := range st.Services {
		if s.Address.Is4() {
			v4 = append(v4, s)
		}
	}
	if !reflect.DeepEqual(got.Services, v4) {
		t.Errorf("services %+v, want the IPv4 ones %+v", got.Services, v4)
	}
	if a := got.Addresses[bridgeIface]; len(a) != 1 || a[0] != magic4 {
		t.Errorf("addresses %v, want only %s on %s", got.Addresses, magic4, bridgeIface)
	}
	un := got.Unprogrammed["m"]
	if len(un) != 1 || un[0].Address != magic6.String() || un[0].Reason != v1alpha1.ReasonAddressFamilyNotSupported || !strings.Contains(un[0].Message, "IPv6 is disabled on this node") {
		t.Errorf("Unprogrammed[m] = %+v, want %s once, AddressFamilyNotSupported, with the reason", un, magic6)
	}
	if len(st.Services) != 8 || len(st.Addresses[bridgeIface]) != 2 || len(st.Unprogrammed) != 0 {
		t.Errorf("the State given was changed: %+v", st)
	}
	if again := withoutIPv6(got, "IPv6 is disabled on this node"); !reflect.DeepEqual(again, got) {
		t.Errorf("not stable: %+v, then %+v", got, again)
	}
}

type ipv6Datapath struct {
	Datapath
	err error
}

func (d ipv6Datapath) IPv6() error { return d.err }

// IPv6Unavailable names why a node does not program IPv6: no IPv6 in the kernel, IPv6 disabled,
// or a datapath that cannot; "" when it can.
func TestIPv6Unavailable(t *testing.T) {
	for name, tc := range map[string]struct {
		disable *string // net.ipv6.conf.all.disable_ipv6; nil: missing
		dpErr   error
		want    string
	}{
		"IPv6 on":                 {disable: ptr("0\n"), want: ""},
		"disabled":                {disable: ptr("1\n"), want: "IPv6 is disabled on this node (net.ipv6.conf.all.disable_ipv6=1)"},
		"no IPv6 in the kernel":   {want: "this kernel has no IPv6"},
		"datapath without IPv6":   {disable: ptr("0"), dpErr: errors.New("ip6tables not usable"), want: "ip6tables not usable"},
		"disabled, datapath says": {disable: ptr("1"), dpErr: errors.New("ip6tables not usable"), want: "disable_ipv6=1"},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.disable != nil {
				p := filepath.Join(dir, "net/ipv6/conf/all/disable_ipv6")
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte(*tc.disable), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got := IPv6Unavailable(Sysctl{Dir: dir}, ipv6Datapath{err: tc.dpErr})
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Errorf("IPv6Unavailable = %q, want %q", got, tc.want)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }
