package webhook

import (
	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// Resolution is the outcome of every contest between MagicIPs. The status controller reports it
// and the webhook injects by it, both computing it from the whole list, so they agree.
type Resolution struct {
	// Claims: the MagicIPs that lost an address+port+protocol (v1alpha1.ResolveClaims, as the
	// agents decide it). They are neither programmed nor injected.
	Claims map[string]v1alpha1.Conflict
	// Unprogrammable: the MagicIPs that own their claims but whose address no agent programs
	// (IPv6, for now), with why. They are not injected either.
	Unprogrammable map[string]error
	// Endpoints: what each of the other MagicIPs injects, oldest first.
	Endpoints []Endpoint
}

// Resolve decides what every MagicIP injects: the MagicIPs that own their claims and whose address
// agents program, as the agents decide both.
func Resolve(mips []v1alpha1.MagicIP) Resolution {
	accepted, claims := v1alpha1.ResolveClaims(mips) // oldest first
	r := Resolution{Claims: claims, Unprogrammable: map[string]error{}}
	for _, m := range accepted {
		if err := m.Spec.ProgrammableAddress(); err != nil {
			r.Unprogrammable[m.Name] = err
			continue
		}
		r.Endpoints = append(r.Endpoints, EndpointOf(m))
	}
	return r
}
