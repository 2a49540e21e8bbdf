package webhook

import (
	"reflect"
	"testing"

	"k8s.io/utils/ptr"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

func TestResolve(t *testing.T) {
	extra := func(name, value string) func(*v1alpha1.MagicIP) {
		return func(m *v1alpha1.MagicIP) {
			m.Spec.Inject.ExtraEnv = append(m.Spec.Inject.ExtraEnv, v1alpha1.EnvTemplate{Name: name, Value: value})
		}
	}
	hosts := func(h ...string) func(*v1alpha1.MagicIP) {
		return func(m *v1alpha1.MagicIP) { m.Spec.Inject.Hostnames = h }
	}
	noEnv := func(m *v1alpha1.MagicIP) { m.Spec.Inject.Env = ptr.To(false) }
	nodeMeta := func(m *v1alpha1.MagicIP) { m.Spec.Inject.NodeMetadata = true }
	otherPort := withPorts(v1alpha1.MagicIPPort{Name: "apm", Port: 9126})
	variable := func(name, winner string) Shadowed { return Shadowed{Name: name, Winner: winner} }
	hostname := func(name, winner string) Shadowed { return Shadowed{Hostname: true, Name: name, Winner: winner} }
	tests := map[string]struct {
		mips []v1alpha1.MagicIP
		// want: each injected MagicIP's variable names and hostnames, oldest first.
		want         map[string][]string
		wantShadowed map[string][]Shadowed
	}{
		"a.b and a-b give the same names: the older keeps them, whatever the names": {
			mips: []v1alpha1.MagicIP{newMIP("a-b", testAddr2, 5, otherPort, hosts("ab.local")), newMIP("a.b", testAddr, 0)},
			want: map[string][]string{
				"a.b": {"A_B_MAGIC_HOST", "A_B_MAGIC_PORT", "A_B_MAGIC_PORT_APM"},
				"a-b": {"hostname ab.local"},
			},
			wantShadowed: map[string][]Shadowed{"a-b": {
				variable("A_B_MAGIC_HOST", "a.b"), variable("A_B_MAGIC_PORT", "a.b"), variable("A_B_MAGIC_PORT_APM", "a.b"),
			}},
		},
		"same creation time: the name decides ('-' before '.')": {
			mips: []v1alpha1.MagicIP{newMIP("a.b", testAddr, 0), newMIP("a-b", testAddr2, 0, otherPort)},
			want: map[string][]string{"a-b": {"A_B_MAGIC_HOST", "A_B_MAGIC_PORT", "A_B_MAGIC_PORT_APM"}, "a.b": nil},
			wantShadowed: map[string][]Shadowed{"a.b": {
				variable("A_B_MAGIC_HOST", "a-b"), variable("A_B_MAGIC_PORT", "a-b"), variable("A_B_MAGIC_PORT_APM", "a-b"),
			}},
		},
		"the same name with the same value is shared: only what differs is lost": {
			mips: []v1alpha1.MagicIP{newMIP("a.b", testAddr, 0), newMIP("a-b", testAddr2, 5)},
			want: map[string][]string{
				"a.b": {"A_B_MAGIC_HOST", "A_B_MAGIC_PORT", "A_B_MAGIC_PORT_APM"},
				"a-b": {"A_B_MAGIC_PORT", "A_B_MAGIC_PORT_APM"},
			},
			wantShadowed: map[string][]Shadowed{"a-b": {variable("A_B_MAGIC_HOST", "a.b")}},
		},
		"extraEnv of the same name, another value: the younger loses it and keeps the rest": {
			mips: []v1alpha1.MagicIP{
				newMIP("young", testAddr2, 5, noEnv, extra("DD_AGENT_HOST", "{address}"), extra("Y", "1")),
				newMIP("old", testAddr, 0, noEnv, extra("DD_AGENT_HOST", "{address}")),
			},
			want:         map[string][]string{"old": {"DD_AGENT_HOST"}, "young": {"Y"}},
			wantShadowed: map[string][]Shadowed{"young": {variable("DD_AGENT_HOST", "old")}},
		},
		"nodeMetadata of two MagicIPs: the same NODE_NAME and NODE_IP, no conflict": {
			mips: []v1alpha1.MagicIP{newMIP("a", testAddr, 0, noEnv, nodeMeta), newMIP("b", testAddr2, 1, noEnv, nodeMeta)},
			want: map[string][]string{"a": {"NODE_NAME", "NODE_IP"}, "b": {"NODE_NAME", "NODE_IP"}},
		},
		"an extraEnv NODE_NAME of another value than the downward API's": {
			mips:         []v1alpha1.MagicIP{newMIP("a", testAddr, 0, noEnv, nodeMeta), newMIP("b", testAddr2, 1, noEnv, extra("NODE_NAME", "{address}"))},
			want:         map[string][]string{"a": {"NODE_NAME", "NODE_IP"}, "b": nil},
			wantShadowed: map[string][]Shadowed{"b": {variable("NODE_NAME", "a")}},
		},
		"podIdentity: the same name from another field is a conflict, from the same field it is shared": {
			mips: []v1alpha1.MagicIP{
				newMIP("old", testAddr, 0, noEnv, withInject(v1alpha1.Inject{Env: ptr.To(false), PodIdentity: identity("POD_ID", "metadata.uid", "POD_NS", "metadata.namespace")})),
				newMIP("young", testAddr2, 5, noEnv, withInject(v1alpha1.Inject{Env: ptr.To(false), PodIdentity: identity("POD_ID", "metadata.name", "POD_NS", "metadata.namespace")})),
			},
			want:         map[string][]string{"old": {"POD_ID", "POD_NS"}, "young": {"POD_NS"}},
			wantShadowed: map[string][]Shadowed{"young": {variable("POD_ID", "old")}},
		},
		"a hostname on two addresses: the older keeps it; on the same address it is shared": {
			mips: []v1alpha1.MagicIP{
				newMIP("old", testAddr, 0, noEnv, hosts("dd.local", "apm.local")),
				newMIP("young", testAddr2, 5, noEnv, hosts("dd.local", "statsd.local")),
				newMIP("same-address", testAddr, 6, noEnv, withPorts(v1alpha1.MagicIPPort{Name: "s", Port: 8125, Protocol: v1alpha1.ProtocolUDP}), hosts("dd.local")),
			},
			want: map[string][]string{
				"old":          {"hostname dd.local", "hostname apm.local"},
				"young":        {"hostname statsd.local"},
				"same-address": {"hostname dd.local"},
			},
			wantShadowed: map[string][]Shadowed{"young": {hostname("dd.local", "old")}},
		},
		"dual-stack: a hostname maps to the addresses agents program (IPv4 for now, so the IPv4-only MagicIP shares it); HOST_IPV6 is one more variable": {
			mips: []v1alpha1.MagicIP{
				newMIP("old", testAddr, 0, noEnv, dualStack, hosts("dd.local", "both.local")),
				newMIP("v4-only", testAddr, 1, noEnv, withPorts(v1alpha1.MagicIPPort{Name: "s", Port: 8125, Protocol: v1alpha1.ProtocolUDP}), hosts("dd.local")),
				newMIP("same-pair", testAddr, 2, noEnv, dualStack, withPorts(v1alpha1.MagicIPPort{Name: "t", Port: 8127}), hosts("both.local")),
				newMIP("a.b", testAddr2, 3, dualStack, withPorts(v1alpha1.MagicIPPort{Name: "apm", Port: 9126})),
				newMIP("a-b", "169.254.0.9", 4, withPorts(v1alpha1.MagicIPPort{Name: "apm", Port: 9126}), func(m *v1alpha1.MagicIP) { m.Spec.IPv6Address = "fd00::9" }),
			},
			want: map[string][]string{
				"old":       {"hostname dd.local", "hostname both.local"},
				"v4-only":   {"hostname dd.local"},
				"same-pair": {"hostname both.local"},
				"a.b":       {"A_B_MAGIC_HOST", "A_B_MAGIC_HOST_IPV6", "A_B_MAGIC_PORT", "A_B_MAGIC_PORT_APM"},
				"a-b":       {"A_B_MAGIC_PORT", "A_B_MAGIC_PORT_APM"},
			},
			wantShadowed: map[string][]Shadowed{
				"a-b": {variable("A_B_MAGIC_HOST", "a.b"), variable("A_B_MAGIC_HOST_IPV6", "a.b")},
			},
		},
		"MagicIPs that are not injected take no names: a claim loser, an IPv6 one": {
			mips: []v1alpha1.MagicIP{
				newMIP("v6", "fd00::10", 0, noEnv, extra("X", "v6")),
				newMIP("holder", testAddr, 1, noEnv),
				newMIP("loser", testAddr, 2, noEnv, extra("X", "loser"), hosts("x.local")),
				newMIP("x", testAddr2, 3, noEnv, extra("X", "x"), hosts("x.local")),
			},
			want: map[string][]string{"holder": nil, "x": {"X", "hostname x.local"}},
		},
		"a MagicIP that names a variable twice itself: no conflict (Mutate adds the first)": {
			mips: []v1alpha1.MagicIP{newMIP("dd", testAddr, 0, extra("DD_MAGIC_HOST", "other"))},
			want: map[string][]string{"dd": {"DD_MAGIC_HOST", "DD_MAGIC_PORT", "DD_MAGIC_PORT_APM", "DD_MAGIC_HOST"}},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			before := make([]v1alpha1.MagicIP, len(tc.mips))
			for i := range tc.mips {
				tc.mips[i].DeepCopyInto(&before[i])
			}
			res := Resolve(tc.mips)
			got := map[string][]string{}
			for _, e := range res.Endpoints {
				var names []string
				for _, v := range e.Env {
					names = append(names, v.Name)
				}
				for _, h := range e.Hostnames {
					names = append(names, "hostname "+h)
				}
				got[e.Name] = names
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("injected:\ngot  %q\nwant %q", got, tc.want)
			}
			if len(tc.wantShadowed) == 0 {
				tc.wantShadowed = map[string][]Shadowed{}
			}
			if !reflect.DeepEqual(res.Shadowed, tc.wantShadowed) {
				t.Errorf("shadowed:\ngot  %+v\nwant %+v", res.Shadowed, tc.wantShadowed)
			}
			if !reflect.DeepEqual(tc.mips, before) {
				t.Errorf("Resolve changed the MagicIPs it was given (they are the cache's)")
			}
		})
	}
}
