package v1alpha1_test

import (
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/utils/ptr"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

var epoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

func port(p int32, proto v1alpha1.Protocol) v1alpha1.MagicIPPort {
	return v1alpha1.MagicIPPort{Name: "p" + string(proto), Port: p, Protocol: proto}
}

// mip is a MagicIP created age minutes after epoch.
func mip(name, addr string, age int, ports ...v1alpha1.MagicIPPort) v1alpha1.MagicIP {
	return v1alpha1.MagicIP{
		ObjectMeta: metav1.ObjectMeta{Name: name, CreationTimestamp: metav1.NewTime(epoch.Add(time.Duration(age) * time.Minute))},
		Spec:       v1alpha1.MagicIPSpec{Address: addr, Ports: ports},
	}
}

// dual is m with spec.ipv6Address v6.
func dual(m v1alpha1.MagicIP, v6 string) v1alpha1.MagicIP {
	m.Spec.IPv6Address = v6
	return m
}

func terminating(m v1alpha1.MagicIP) v1alpha1.MagicIP {
	now := metav1.NewTime(epoch.Add(time.Hour))
	m.DeletionTimestamp = &now
	return m
}

func claim(addr string, p int32, proto v1alpha1.Protocol) v1alpha1.Claim {
	return v1alpha1.Claim{Address: netip.MustParseAddr(addr), Port: p, Protocol: proto}
}

const (
	tcp = v1alpha1.ProtocolTCP
	udp = v1alpha1.ProtocolUDP
	ip1 = "169.254.210.210"
	ip2 = "169.254.210.211"
	ip6 = "fd00::a9fe:d2d2"
)

func TestResolveClaims(t *testing.T) {
	tests := map[string]struct {
		mips          []v1alpha1.MagicIP
		wantAccepted  []string
		wantConflicts map[string]v1alpha1.Conflict
	}{
		"none": {},
		"older wins, whatever the names and the order": {
			mips: []v1alpha1.MagicIP{
				mip("aaa-young", ip1, 5, port(8126, tcp)),
				mip("zzz-old", ip1, 0, port(8126, tcp)),
			},
			wantAccepted:  []string{"zzz-old"},
			wantConflicts: map[string]v1alpha1.Conflict{"aaa-young": {Claim: claim(ip1, 8126, tcp), Winner: "zzz-old"}},
		},
		"same creation time: name order": {
			mips: []v1alpha1.MagicIP{
				mip("b", ip1, 0, port(8126, tcp)),
				mip("a", ip1, 0, port(8126, tcp)),
			},
			wantAccepted:  []string{"a"},
			wantConflicts: map[string]v1alpha1.Conflict{"b": {Claim: claim(ip1, 8126, tcp), Winner: "a"}},
		},
		"losing one of two ports loses all, and frees the other": {
			mips: []v1alpha1.MagicIP{
				mip("old", ip1, 0, port(8126, tcp)),
				mip("middle", ip1, 1, port(8125, udp), port(8126, tcp)),
				mip("young", ip1, 2, port(8125, udp)),
			},
			wantAccepted:  []string{"old", "young"},
			wantConflicts: map[string]v1alpha1.Conflict{"middle": {Claim: claim(ip1, 8126, tcp), Winner: "old"}},
		},
		"the first claim lost is reported": {
			mips: []v1alpha1.MagicIP{
				mip("statsd", ip1, 0, port(8125, udp)),
				mip("apm", ip1, 1, port(8126, tcp)),
				mip("both", ip1, 2, port(8126, tcp), port(8125, udp)),
			},
			wantAccepted:  []string{"statsd", "apm"},
			wantConflicts: map[string]v1alpha1.Conflict{"both": {Claim: claim(ip1, 8126, tcp), Winner: "apm"}},
		},
		"three on one claim: both losers name the oldest": {
			mips: []v1alpha1.MagicIP{
				mip("c", ip1, 2, port(53, udp)),
				mip("b", ip1, 1, port(53, udp)),
				mip("a", ip1, 0, port(53, udp)),
			},
			wantAccepted: []string{"a"},
			wantConflicts: map[string]v1alpha1.Conflict{
				"b": {Claim: claim(ip1, 53, udp), Winner: "a"},
				"c": {Claim: claim(ip1, 53, udp), Winner: "a"},
			},
		},
		"same port, other protocol: no conflict": {
			mips: []v1alpha1.MagicIP{
				mip("dns-udp", ip1, 0, port(53, udp)),
				mip("dns-tcp", ip1, 1, port(53, tcp)),
			},
			wantAccepted: []string{"dns-udp", "dns-tcp"},
		},
		"unset protocol is TCP": {
			mips: []v1alpha1.MagicIP{
				mip("explicit", ip1, 0, port(80, tcp)),
				mip("defaulted", ip1, 1, port(80, "")),
			},
			wantAccepted:  []string{"explicit"},
			wantConflicts: map[string]v1alpha1.Conflict{"defaulted": {Claim: claim(ip1, 80, tcp), Winner: "explicit"}},
		},
		"same port, other address: no conflict": {
			mips: []v1alpha1.MagicIP{
				mip("one", ip1, 1, port(8126, tcp)),
				mip("two", ip2, 0, port(8126, tcp)),
			},
			wantAccepted: []string{"two", "one"},
		},
		"IPv4-mapped IPv6 is the same address": {
			mips: []v1alpha1.MagicIP{
				mip("v4", ip1, 0, port(8126, tcp)),
				mip("mapped", "::ffff:"+ip1, 1, port(8126, tcp)),
			},
			wantAccepted:  []string{"v4"},
			wantConflicts: map[string]v1alpha1.Conflict{"mapped": {Claim: claim(ip1, 8126, tcp), Winner: "v4"}},
		},
		"a dual-stack MagicIP's IPv6 address is claimed against another's address": {
			mips: []v1alpha1.MagicIP{
				dual(mip("dual", ip1, 0, port(53, udp)), ip6),
				mip("v6", ip6, 1, port(53, udp)),
				mip("v6-other-port", ip6, 2, port(54, udp)),
			},
			wantAccepted:  []string{"dual", "v6-other-port"},
			wantConflicts: map[string]v1alpha1.Conflict{"v6": {Claim: claim(ip6, 53, udp), Winner: "dual"}},
		},
		"two dual-stack MagicIPs clash on the IPv6 address alone": {
			mips: []v1alpha1.MagicIP{
				dual(mip("young", ip2, 1, port(53, udp)), ip6),
				dual(mip("old", ip1, 0, port(53, udp)), ip6),
			},
			wantAccepted:  []string{"old"},
			wantConflicts: map[string]v1alpha1.Conflict{"young": {Claim: claim(ip6, 53, udp), Winner: "old"}},
		},
		"a terminating MagicIP claims nothing": {
			mips: []v1alpha1.MagicIP{
				terminating(mip("old", ip1, 0, port(8126, tcp))),
				mip("new", ip1, 1, port(8126, tcp)),
			},
			wantAccepted: []string{"new"},
		},
		"an unparsable address claims nothing": {
			mips: []v1alpha1.MagicIP{
				mip("bad", "169.254.210.300", 0, port(8126, tcp)),
				mip("empty", "", 0, port(8126, tcp)),
				mip("good", ip1, 1, port(8126, tcp)),
			},
			wantAccepted: []string{"good"},
		},
		"accepted in age order": {
			mips: []v1alpha1.MagicIP{
				mip("c", ip1, 2, port(3, tcp)),
				mip("a", ip1, 0, port(1, tcp)),
				mip("b2", ip2, 1, port(1, tcp)),
				mip("b1", ip2, 1, port(2, tcp)),
			},
			wantAccepted: []string{"a", "b1", "b2", "c"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			in := slices.Clone(tc.mips)
			accepted, conflicts := v1alpha1.ResolveClaims(tc.mips)
			var got []string
			for _, m := range accepted {
				got = append(got, m.Name)
			}
			if !slices.Equal(got, tc.wantAccepted) {
				t.Errorf("accepted %v, want %v", got, tc.wantAccepted)
			}
			want := tc.wantConflicts
			if want == nil {
				want = map[string]v1alpha1.Conflict{}
			}
			if !reflect.DeepEqual(conflicts, want) {
				t.Errorf("conflicts:\n got %+v\nwant %+v", conflicts, want)
			}
			for _, name := range got {
				if _, ok := conflicts[name]; ok {
					t.Errorf("%s is both accepted and in conflict", name)
				}
			}
			if !reflect.DeepEqual(in, tc.mips) {
				t.Errorf("ResolveClaims changed its input")
			}
		})
	}
}

func TestClaims(t *testing.T) {
	tests := map[string]struct {
		m    v1alpha1.MagicIP
		want []v1alpha1.Claim
	}{
		"ports in order, protocol defaulted": {
			m:    mip("m", ip1, 0, port(8126, ""), port(8125, udp)),
			want: []v1alpha1.Claim{claim(ip1, 8126, tcp), claim(ip1, 8125, udp)},
		},
		"IPv4-mapped address unmapped": {
			m:    mip("m", "::ffff:"+ip1, 0, port(8126, tcp)),
			want: []v1alpha1.Claim{claim(ip1, 8126, tcp)},
		},
		"IPv6": {
			m:    mip("m", "fe80::1", 0, port(53, udp)),
			want: []v1alpha1.Claim{claim("fe80::1", 53, udp)},
		},
		"unparsable address": {
			m: mip("m", "not-an-ip", 0, port(8126, tcp)),
		},
		"dual-stack: every port on both addresses": {
			m:    dual(mip("m", ip1, 0, port(8126, tcp), port(8125, udp)), ip6),
			want: []v1alpha1.Claim{claim(ip1, 8126, tcp), claim(ip1, 8125, udp), claim(ip6, 8126, tcp), claim(ip6, 8125, udp)},
		},
		"an ipv6Address that is not IPv6 claims nothing more": {
			m:    dual(mip("m", ip1, 0, port(8126, tcp)), "::ffff:"+ip2),
			want: []v1alpha1.Claim{claim(ip1, 8126, tcp)},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := tc.m.Claims()
			if len(got) != len(tc.want) || (len(got) > 0 && !reflect.DeepEqual(got, tc.want)) {
				t.Errorf("Claims() = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestClaimString(t *testing.T) {
	tests := map[string]struct {
		c    v1alpha1.Claim
		want string
	}{
		"IPv4 TCP":    {claim("169.254.210.210", 8126, tcp), "169.254.210.210:8126/TCP"},
		"IPv4 UDP":    {claim("169.254.20.10", 53, udp), "169.254.20.10:53/UDP"},
		"IPv6 UDP":    {claim("fe80::1", 53, udp), "[fe80::1]:53/UDP"},
		"IPv6 long":   {claim("fd00::a9fe:d2d2", 65535, tcp), "[fd00::a9fe:d2d2]:65535/TCP"},
		"lowest port": {claim("169.254.0.1", 1, tcp), "169.254.0.1:1/TCP"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := tc.c.String(); got != tc.want {
				t.Errorf("String() = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestPortDefaults(t *testing.T) {
	tests := map[string]struct {
		p          v1alpha1.MagicIPPort
		wantTarget int32
		wantProto  v1alpha1.Protocol
	}{
		"all unset":         {v1alpha1.MagicIPPort{Port: 8126}, 8126, tcp},
		"targetPort set":    {v1alpha1.MagicIPPort{Port: 8126, TargetPort: 9126}, 9126, tcp},
		"UDP":               {v1alpha1.MagicIPPort{Port: 8125, Protocol: udp}, 8125, udp},
		"TCP explicit":      {v1alpha1.MagicIPPort{Port: 80, TargetPort: 8080, Protocol: tcp}, 8080, tcp},
		"targetPort = port": {v1alpha1.MagicIPPort{Port: 53, TargetPort: 53, Protocol: udp}, 53, udp},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := tc.p.EffectiveTargetPort(); got != tc.wantTarget {
				t.Errorf("EffectiveTargetPort() = %d, want %d", got, tc.wantTarget)
			}
			if got := tc.p.EffectiveProtocol(); got != tc.wantProto {
				t.Errorf("EffectiveProtocol() = %q, want %q", got, tc.wantProto)
			}
		})
	}
}

func TestEnvEnabled(t *testing.T) {
	tests := map[string]struct {
		env  *bool
		want bool
	}{
		"unset": {nil, true},
		"true":  {ptr.To(true), true},
		"false": {ptr.To(false), false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := (v1alpha1.Inject{Env: tc.env}).EnvEnabled(); got != tc.want {
				t.Errorf("EnvEnabled() = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestEffectiveWhenNoLocalProducer(t *testing.T) {
	tests := map[string]struct {
		in, want v1alpha1.NoLocalProducerAction
	}{
		"unset":  {"", v1alpha1.Reject},
		"Reject": {v1alpha1.Reject, v1alpha1.Reject},
		"Drop":   {v1alpha1.Drop, v1alpha1.Drop},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := (v1alpha1.MagicIPSpec{WhenNoLocalProducer: tc.in}).EffectiveWhenNoLocalProducer(); got != tc.want {
				t.Errorf("EffectiveWhenNoLocalProducer() = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestPortSummary(t *testing.T) {
	tests := map[string]struct {
		ports []v1alpha1.MagicIPPort
		want  string
	}{
		"none":                  {nil, ""},
		"one":                   {[]v1alpha1.MagicIPPort{port(8126, tcp)}, "8126/TCP"},
		"in spec order":         {[]v1alpha1.MagicIPPort{port(8126, tcp), port(8125, udp)}, "8126/TCP,8125/UDP"},
		"protocol defaults TCP": {[]v1alpha1.MagicIPPort{port(53, udp), port(53, "")}, "53/UDP,53/TCP"},
		"targetPort not shown":  {[]v1alpha1.MagicIPPort{{Name: "web", Port: 80, TargetPort: 8080}}, "80/TCP"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := (v1alpha1.MagicIPSpec{Ports: tc.ports}).PortSummary(); got != tc.want {
				t.Errorf("PortSummary() = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestAsLabelSelector(t *testing.T) {
	tests := map[string]struct {
		in        v1alpha1.LabelSelector
		want      *metav1.LabelSelector
		matches   labels.Set
		noMatches labels.Set
	}{
		"empty": {
			in:   v1alpha1.LabelSelector{},
			want: &metav1.LabelSelector{},
		},
		"matchLabels": {
			in:        v1alpha1.LabelSelector{MatchLabels: map[string]string{"app": "agent"}},
			want:      &metav1.LabelSelector{MatchLabels: map[string]string{"app": "agent"}},
			matches:   labels.Set{"app": "agent", "x": "y"},
			noMatches: labels.Set{"app": "other"},
		},
		"expressions, every operator": {
			in: v1alpha1.LabelSelector{
				MatchLabels: map[string]string{"app": "agent"},
				MatchExpressions: []v1alpha1.LabelSelectorRequirement{
					{Key: "tier", Operator: metav1.LabelSelectorOpIn, Values: []string{"a", "b"}},
					{Key: "zone", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"z"}},
					{Key: "ready", Operator: metav1.LabelSelectorOpExists},
					{Key: "canary", Operator: metav1.LabelSelectorOpDoesNotExist},
				},
			},
			want: &metav1.LabelSelector{
				MatchLabels: map[string]string{"app": "agent"},
				MatchExpressions: []metav1.LabelSelectorRequirement{
					{Key: "tier", Operator: metav1.LabelSelectorOpIn, Values: []string{"a", "b"}},
					{Key: "zone", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"z"}},
					{Key: "ready", Operator: metav1.LabelSelectorOpExists},
					{Key: "canary", Operator: metav1.LabelSelectorOpDoesNotExist},
				},
			},
			matches:   labels.Set{"app": "agent", "tier": "b", "ready": ""},
			noMatches: labels.Set{"app": "agent", "tier": "b", "ready": "", "canary": "1"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := tc.in.AsLabelSelector()
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("AsLabelSelector() = %+v, want %+v", got, tc.want)
			}
			sel, err := metav1.LabelSelectorAsSelector(got)
			if err != nil {
				t.Fatalf("not a valid selector: %v", err)
			}
			if tc.matches != nil && !sel.Matches(tc.matches) {
				t.Errorf("%s does not match %v", sel, tc.matches)
			}
			if tc.noMatches != nil && sel.Matches(tc.noMatches) {
				t.Errorf("%s matches %v", sel, tc.noMatches)
			}
		})
	}
}

func TestCompareAge(t *testing.T) {
	tests := map[string]struct {
		a, b v1alpha1.MagicIP
		want int
	}{
		"older first, whatever the names": {mip("zz", ip1, 0), mip("aa", ip1, 1), -1},
		"younger last":                    {mip("aa", ip1, 1), mip("zz", ip1, 0), 1},
		"same time: name order":           {mip("a-b", ip1, 0), mip("a.b", ip1, 0), -1},
		"same object":                     {mip("a", ip1, 0), mip("a", ip1, 0), 0},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := v1alpha1.CompareAge(tc.a, tc.b); got != tc.want {
				t.Errorf("CompareAge(%s, %s) = %d, want %d", tc.a.Name, tc.b.Name, got, tc.want)
			}
		})
	}
}

func TestProgrammableAddress(t *testing.T) {
	tests := map[string]struct {
		addr       string
		wantFamily bool   // ErrAddressFamilyNotSupported
		wantErr    string // "" for none
	}{
		"IPv4 link-local":     {addr: ip1},
		"IPv4-mapped IPv6":    {addr: "::ffff:169.254.210.210"},
		"IPv6 ULA":            {addr: "fd00::10", wantFamily: true, wantErr: "address fd00::10 is IPv6: agents do not program an IPv6 spec.address alone yet"},
		"IPv6 link-local":     {addr: "fe80::a9fe:d2d2", wantFamily: true, wantErr: "is IPv6"},
		"not an IP (not API)": {addr: "nope", wantErr: `address "nope"`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := v1alpha1.MagicIPSpec{Address: tc.addr}.ProgrammableAddress()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("ProgrammableAddress(%s) = %v, want nil", tc.addr, err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("ProgrammableAddress(%s) = %v, want an error containing %q", tc.addr, err, tc.wantErr)
			case errors.Is(err, v1alpha1.ErrAddressFamilyNotSupported) != tc.wantFamily:
				t.Errorf("ProgrammableAddress(%s) = %v: errors.Is(ErrAddressFamilyNotSupported) = %v, want %v", tc.addr, err, !tc.wantFamily, tc.wantFamily)
			}
		})
	}
}
