package agent

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// withoutFamily(IPv6) keeps the IPv4 part of the State as it is and reports each IPv6 address
// once per MagicIP (however many ports), with the reason given and the address still served.
func TestWithoutIPv6(t *testing.T) {
	st := dualStackState()
	st.Unprogrammed = map[string][]v1alpha1.UnprogrammedAddress{}
	got := withoutFamily(st, IPv6, "IPv6 is disabled on this node")
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
	if len(un) != 1 || un[0].Address != magic6.String() || un[0].Reason != v1alpha1.ReasonAddressFamilyNotSupported || !strings.Contains(un[0].Message, "IPv6 is disabled on this node; the address 169.254.210.210 is served") {
		t.Errorf("Unprogrammed[m] = %+v, want %s once, AddressFamilyNotSupported, with the reason", un, magic6)
	}
	if len(st.Services) != 8 || len(st.Addresses[bridgeIface]) != 2 || len(st.Unprogrammed) != 0 {
		t.Errorf("the State given was changed: %+v", st)
	}
	if again := withoutFamily(got, IPv6, "IPv6 is disabled on this node"); !reflect.DeepEqual(again, got) {
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

// withoutFamily(IPv4), on an IPv6-only node: the IPv6 part is served, the IPv4 address reported.
func TestWithoutIPv4(t *testing.T) {
	got := withoutFamily(dualStackState(), IPv4, "this node is IPv6-only")
	for _, s := range got.Services {
		if s.Address != magic6 {
			t.Errorf("service %+v left in, want only those of %s", s, magic6)
		}
	}
	if un := got.Unprogrammed["m"]; len(un) != 1 || un[0].Address != magic4.String() || un[0].Message != "address 169.254.210.210 is IPv4 and this node does not program IPv4: this node is IPv6-only; the address fd00::a9fe:d2d2 is served" {
		t.Errorf("Unprogrammed[m] = %+v", un)
	}
}

// IPv4Unavailable: a node whose addresses are all IPv6 is IPv6-only; one IPv4 address, or none
// known, is not.
func TestIPv4Unavailable(t *testing.T) {
	v4, v6 := netip.MustParseAddr("172.20.0.10"), netip.MustParseAddr("fd00:172:20::a")
	for _, tc := range []struct {
		addrs []netip.Addr
		want  string
	}{
		{[]netip.Addr{v6}, "this node is IPv6-only (Node n1: [fd00:172:20::a])"},
		{[]netip.Addr{v4, v6}, ""},
		{[]netip.Addr{v4}, ""},
		{nil, ""},
	} {
		if got := IPv4Unavailable(tc.addrs, "Node n1"); got != tc.want {
			t.Errorf("IPv4Unavailable(%v) = %q, want %q", tc.addrs, got, tc.want)
		}
	}
}
