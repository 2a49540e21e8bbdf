package v1alpha1

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
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

// CompareAge orders MagicIPs oldest first: by creation time, then by name (creation times have
// one-second resolution). It is the one rule for every contest between MagicIPs: the first wins
// an address+port+protocol (ResolveClaims) and a variable name or hostname (the webhook).
func CompareAge(a, b MagicIP) int {
	if ta, tb := a.CreationTimestamp, b.CreationTimestamp; !ta.Equal(&tb) {
		if ta.Before(&tb) {
			return -1
		}
		return 1
	}
	return strings.Compare(a.Name, b.Name)
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
	slices.SortStableFunc(sorted, CompareAge)
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

// Claims lists the address+port+protocol triples of m, for address and then ipv6Address (none
// when the address does not parse; none for an ipv6Address that is no IPv6 address, which the CRD
// refuses): a dual-stack MagicIP claims each port on both addresses, served or not yet, so that no
// other MagicIP takes the IPv6 address meanwhile.
func (m *MagicIP) Claims() []Claim {
	addr, err := netip.ParseAddr(m.Spec.Address)
	if err != nil {
		return nil
	}
	addrs := []netip.Addr{addr.Unmap()}
	if v6, ok := m.Spec.ipv6(); ok {
		addrs = append(addrs, v6)
	}
	out := make([]Claim, 0, len(addrs)*len(m.Spec.Ports))
	for _, a := range addrs {
		for _, p := range m.Spec.Ports {
			out = append(out, Claim{Address: a, Port: p.Port, Protocol: p.EffectiveProtocol()})
		}
	}
	return out
}

// ipv6 is spec.ipv6Address when it is set and a true IPv6 address (not IPv4-mapped).
func (s MagicIPSpec) ipv6() (netip.Addr, bool) {
	a, err := netip.ParseAddr(s.IPv6Address)
	return a, err == nil && a.Is6() && !a.Is4In6()
}

// ReasonAddressFamilyNotSupported is the Accepted=False reason of a MagicIP whose address no agent
// programs (an IPv6 spec.address alone), and the reason agents give in their records for an
// address of a family their node does not program.
const ReasonAddressFamilyNotSupported = "AddressFamilyNotSupported"

// ErrAddressFamilyNotSupported: spec.address is IPv6; agents program IPv6 as the ipv6Address of a
// dual-stack MagicIP only.
var ErrAddressFamilyNotSupported = errors.New("agents do not program an IPv6 spec.address alone yet: put an IPv4 address in spec.address and this one in spec.ipv6Address (dual-stack, served on both)")

// ProgrammableAddress reports whether agents program the address of s: it must parse, and be
// IPv4 for now (an IPv4-mapped IPv6 address counts as IPv4, as in Claims). The status controller
// reports a MagicIP that fails it Accepted=False and the webhook does not inject it, as the agent
// reports it Invalid and does not program it.
func (s MagicIPSpec) ProgrammableAddress() error {
	addr, err := netip.ParseAddr(s.Address)
	if err != nil {
		return fmt.Errorf("address %q: %w", s.Address, err)
	}
	if !addr.Unmap().Is4() {
		return fmt.Errorf("address %s is IPv6: %w", addr, ErrAddressFamilyNotSupported)
	}
	return nil
}

// CloudPlatformAddresses are the cloud platforms' own addresses (instance metadata, credentials,
// time, DNS) that no MagicIP may take: the CRD refuses them (CEL on spec.address, the same list,
// checked by TestCloudPlatformAddressesMatchCRD) and agents never program them, whatever their
// allowed ranges, in case an older CRD let one in.
func CloudPlatformAddresses() []string {
	return []string{
		"169.254.169.254", "169.254.169.123", "169.254.169.253", "169.254.170.2", "169.254.170.23",
		"169.254.0.23", "169.254.42.42", "100.100.100.200", "168.63.129.16", "192.0.0.192",
		"fd00:ec2::254", "fd00:ec2::123", "fd00:ec2::253", "fd00:ec2::23", "fd20:ce::254", "fd00:42::42",
	}
}
