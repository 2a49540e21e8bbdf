package agent

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// Family is an address family the agent programs.
type Family string

const (
	IPv4 Family = "IPv4"
	IPv6 Family = "IPv6"
)

// has reports whether a is of family f.
func (f Family) has(a netip.Addr) bool { return a.Is4() == (f == IPv4) }

const sysctlDisableIPv6 = "net.ipv6.conf.all.disable_ipv6"

// IPv6Unavailable says why this node does not program IPv6 magic addresses ("": it does): the
// kernel has no IPv6 (ipv6.disable=1), IPv6 is disabled (net.ipv6.conf.all.disable_ipv6=1), or
// the datapath cannot. The agent checks once, at start, so the node's report holds still.
func IPv6Unavailable(s Sysctl, dp Datapath) string {
	switch v, err := s.Get(sysctlDisableIPv6); {
	case errors.Is(err, os.ErrNotExist):
		return "this kernel has no IPv6 (booted with ipv6.disable=1, or built without it)"
	case err != nil:
		return fmt.Sprintf("read %s: %v", sysctlDisableIPv6, err)
	case v != "0":
		return fmt.Sprintf("IPv6 is disabled on this node (%s=%s)", sysctlDisableIPv6, v)
	}
	if err := dp.IPv6(); err != nil {
		return err.Error()
	}
	return ""
}

// withoutIPv6 leaves the IPv6 addresses and services out of st and reports each IPv6 address in
// st.Unprogrammed, with why (IPv6Unavailable): the IPv4 part of every MagicIP is served as usual.
func withoutIPv6(st State, why string) State {
	out := st
	out.Addresses = make(map[string][]netip.Addr, len(st.Addresses))
	for ifname, addrs := range st.Addresses {
		if v4 := slices.DeleteFunc(slices.Clone(addrs), netip.Addr.Is6); len(v4) > 0 {
			out.Addresses[ifname] = v4
		}
	}
	out.Services = slices.DeleteFunc(slices.Clone(st.Services), func(s Service) bool { return s.Address.Is6() })
	out.Unprogrammed = make(map[string][]v1alpha1.UnprogrammedAddress, len(st.Unprogrammed))
	for name, un := range st.Unprogrammed {
		out.Unprogrammed[name] = slices.Clone(un)
	}
	for _, s := range st.Services {
		a := s.Address.String()
		if s.Address.Is4() || slices.ContainsFunc(out.Unprogrammed[s.MagicIP], func(u v1alpha1.UnprogrammedAddress) bool { return u.Address == a }) {
			continue
		}
		out.Unprogrammed[s.MagicIP] = append(out.Unprogrammed[s.MagicIP], v1alpha1.UnprogrammedAddress{
			Address: a, Reason: v1alpha1.ReasonAddressFamilyNotSupported,
			Message: fmt.Sprintf("address %s is IPv6 and this node does not program IPv6: %s; the IPv4 address is served", a, why),
		})
	}
	return out
}
