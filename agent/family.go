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

// inState reports whether st has an address of family f, on an interface or of a service.
func (f Family) inState(st State) bool {
	for _, as := range st.Addresses {
		if slices.ContainsFunc(as, f.has) {
			return true
		}
	}
	return slices.ContainsFunc(st.Services, func(s Service) bool { return f.has(s.Address) })
}

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

// IPv4Unavailable says why this node does not program IPv4 magic addresses ("": it does): an
// IPv6-only node, whose addresses (--node-ip, or its Node's InternalIP and ExternalIP: from says
// which) are all IPv6. Its pods have no IPv4 address to redirect to.
func IPv4Unavailable(nodeAddrs []netip.Addr, from string) string {
	if len(nodeAddrs) == 0 || slices.ContainsFunc(nodeAddrs, netip.Addr.Is4) {
		return ""
	}
	return fmt.Sprintf("this node is IPv6-only (%s: %v)", from, nodeAddrs)
}

// withoutFamily leaves the addresses and services of family fam out of st and reports each such
// address in st.Unprogrammed, with why: the other family of every MagicIP is served as usual.
func withoutFamily(st State, fam Family, why string) State {
	out := st
	out.Addresses = make(map[string][]netip.Addr, len(st.Addresses))
	for ifname, addrs := range st.Addresses {
		if kept := slices.DeleteFunc(slices.Clone(addrs), fam.has); len(kept) > 0 {
			out.Addresses[ifname] = kept
		}
	}
	out.Services = slices.DeleteFunc(slices.Clone(st.Services), func(s Service) bool { return fam.has(s.Address) })
	out.Unprogrammed = make(map[string][]v1alpha1.UnprogrammedAddress, len(st.Unprogrammed))
	for name, un := range st.Unprogrammed {
		out.Unprogrammed[name] = slices.Clone(un)
	}
	for _, s := range st.Services {
		a := s.Address.String()
		if !fam.has(s.Address) || slices.ContainsFunc(out.Unprogrammed[s.MagicIP], func(u v1alpha1.UnprogrammedAddress) bool { return u.Address == a }) {
			continue
		}
		msg := fmt.Sprintf("address %s is %s and this node does not program %s: %s", a, fam, fam, why)
		if i := slices.IndexFunc(out.Services, func(o Service) bool { return o.MagicIP == s.MagicIP }); i >= 0 {
			msg += fmt.Sprintf("; the address %s is served", out.Services[i].Address)
		}
		out.Unprogrammed[s.MagicIP] = append(out.Unprogrammed[s.MagicIP], v1alpha1.UnprogrammedAddress{
			Address: a, Reason: v1alpha1.ReasonAddressFamilyNotSupported, Message: msg,
		})
	}
	return out
}
