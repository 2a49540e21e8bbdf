package v1alpha1

import (
	"fmt"
	"net/netip"
	"sort"
)

// Claim is one address+port+protocol that a MagicIP serves.
// +kubebuilder:object:generate=false
type Claim struct {
	Address  netip.Addr
	Port     int32
	Protocol Protocol
}

func (c Claim) String() string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(c.Address, uint16(c.Port)), c.Protocol)
}

// Conflict says why a MagicIP lost: Winner already claims Claim.
// +kubebuilder:object:generate=false
type Conflict struct {
	Claim  Claim
	Winner string
}

// ResolveClaims decides which MagicIPs own their claims. The older MagicIP (creation time, then
// name) wins each address+port+protocol; a MagicIP that loses any claim loses all of them (it is
// not served at all, so it never half-works) and is reported with the first claim it lost.
// MagicIPs whose address does not parse are skipped: they cannot claim anything. The agent and
// the status controller both call this, so they agree before any status is written.
func ResolveClaims(mips []MagicIP) (accepted []MagicIP, conflicts map[string]Conflict) {
	sorted := make([]MagicIP, 0, len(mips))
	for _, m := range mips {
		if _, err := netip.ParseAddr(m.Spec.Address); err == nil && m.DeletionTimestamp == nil {
			sorted = append(sorted, m)
		}
	}
	sort.SliceStable(sorted, func(i, j int) bool {
		ti, tj := sorted[i].CreationTimestamp, sorted[j].CreationTimestamp
		if !ti.Equal(&tj) {
			return ti.Before(&tj)
		}
		return sorted[i].Name < sorted[j].Name
	})
	owner := map[Claim]string{}
	conflicts = map[string]Conflict{}
	for _, m := range sorted {
		claims := m.Claims()
		lost := false
		for _, c := range claims {
			if w, taken := owner[c]; taken {
				conflicts[m.Name] = Conflict{Claim: c, Winner: w}
				lost = true
				break
			}
		}
		if lost {
			continue
		}
		for _, c := range claims {
			owner[c] = m.Name
		}
		accepted = append(accepted, m)
	}
	return accepted, conflicts
}

// Claims lists the address+port+protocol triples of m (none when the address does not parse).
func (m *MagicIP) Claims() []Claim {
	addr, err := netip.ParseAddr(m.Spec.Address)
	if err != nil {
		return nil
	}
	out := make([]Claim, len(m.Spec.Ports))
	for i, p := range m.Spec.Ports {
		out[i] = Claim{Address: addr.Unmap(), Port: p.Port, Protocol: p.EffectiveProtocol()}
	}
	return out
}
