package webhook

import (
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// Shadowed is an entry a MagicIP does not inject: Winner, an older MagicIP (v1alpha1.CompareAge),
// injects the same variable name, or maps the same hostname, with another value.
type Shadowed struct {
	Hostname bool // Name is a hostname, not a variable name
	Name     string
	Winner   string
}

// Resolution is the outcome of every contest between MagicIPs. The status controller reports it
// and the webhook injects by it, both computing it from the whole list, so they agree.
type Resolution struct {
	// Claims: the MagicIPs that lost an address+port+protocol (v1alpha1.ResolveClaims, as the
	// agents decide it). They are neither programmed nor injected.
	Claims map[string]v1alpha1.Conflict
	// Unprogrammable: the MagicIPs that own their claims but whose address no agent programs
	// (IPv6, for now), with why. They are not injected either.
	Unprogrammable map[string]error
	// Endpoints: what each of the other MagicIPs injects, oldest first, without its shadowed entries.
	Endpoints []Endpoint
	// Shadowed: the entries each MagicIP does not inject, in the order its endpoint lists them.
	Shadowed map[string][]Shadowed
}

// Resolve decides what every MagicIP injects. Among those that are injected at all, the oldest
// (creation time, then name: the rule of address claims) keeps a variable name or hostname; a
// younger MagicIP that injects it with another value (MagicIPs a.b and a-b both give A_B_MAGIC_HOST,
// two extraEnv of the same name, a hostname mapped to other addresses, or to the same IPv4 address
// with or without an IPv6 one) loses that entry only. The
// same name with the same value (NODE_NAME from two MagicIPs' nodeMetadata) is no conflict.
func Resolve(mips []v1alpha1.MagicIP) Resolution {
	accepted, claims := v1alpha1.ResolveClaims(mips) // oldest first
	r := Resolution{Claims: claims, Unprogrammable: map[string]error{}, Shadowed: map[string][]Shadowed{}}
	env := map[string]owned[corev1.EnvVar]{}
	hosts := map[string]owned[[2]string]{} // a hostname's addresses: IPv4, IPv6 (or "")
	for _, m := range accepted {
		if err := m.Spec.ProgrammableAddress(); err != nil {
			r.Unprogrammable[m.Name] = err
			continue
		}
		e := EndpointOf(m)
		e.Env = slices.DeleteFunc(e.Env, func(v corev1.EnvVar) bool {
			return lost(&r, m.Name, false, v.Name, v, env, sameEnv)
		})
		e.Hostnames = slices.DeleteFunc(slices.Clone(e.Hostnames), func(h string) bool {
			return lost(&r, m.Name, true, h, [2]string{e.Address, e.Address6}, hosts, func(a, b [2]string) bool { return a == b })
		})
		r.Endpoints = append(r.Endpoints, e)
	}
	return r
}

// owned is who first injected a name, and its value.
type owned[V any] struct {
	by    string
	value V
}

func sameEnv(a, b corev1.EnvVar) bool { return equality.Semantic.DeepEqual(a, b) }

// lost claims name with value for the MagicIP mip in owners, and reports whether an older
// MagicIP already has it with another value (recorded in r.Shadowed). A MagicIP that names a
// variable twice itself (an extraEnv named as one of its standard variables) keeps both: Mutate
// adds the first.
func lost[V any](r *Resolution, mip string, hostname bool, name string, value V, owners map[string]owned[V], same func(a, b V) bool) bool {
	o, taken := owners[name]
	if !taken {
		owners[name] = owned[V]{by: mip, value: value}
		return false
	}
	if o.by == mip || same(o.value, value) {
		return false
	}
	r.Shadowed[mip] = append(r.Shadowed[mip], Shadowed{Hostname: hostname, Name: name, Winner: o.by})
	return true
}
