package agent

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DefaultDummyInterface is the link the agent creates when --host-interface is left at its default.
const DefaultDummyInterface = "magic-ip0"

// ownFlags6 are the flags of the IPv6 magic addresses: no duplicate address detection (usable at
// once, not "tentative" for a second or two; every node carries the same address on purpose), and
// no prefix route (a /128 needs none: the local route delivers it). A /128 with both is ours.
const ownFlags6 = unix.IFA_F_NODAD | unix.IFA_F_NOPREFIXROUTE

// addrLabel marks the IPv4 addresses we add to an interface we do not own ("cni0:mip"), so that
// cleanup finds them without the API. Labels are limited to 15 characters. IPv6 addresses have no
// label: ours carry ownFlags6 instead.
func addrLabel(ifname string) string {
	if len(ifname) > 11 {
		ifname = ifname[:11]
	}
	return ifname + ":mip"
}

// Links puts the magic addresses on host interfaces with netlink.
type Links struct {
	h *netlink.Handle
	// Dummy is the interface the agent may create as a dummy link when it is missing.
	Dummy string
}

// NewLinks opens a netlink handle in the current network namespace.
func NewLinks(dummy string) (*Links, error) {
	h, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	return &Links{h: h, Dummy: dummy}, nil
}

// Close releases the netlink handle.
func (l *Links) Close() { l.h.Close() }

// link finds an interface, creating the dummy one when it is the one missing.
func (l *Links) link(name string) (netlink.Link, error) {
	link, err := l.h.LinkByName(name)
	if err == nil {
		return link, nil
	}
	var notFound netlink.LinkNotFoundError
	if !errors.As(err, &notFound) {
		return nil, fmt.Errorf("find interface %s: %w", name, err)
	}
	if name != l.Dummy {
		return nil, fmt.Errorf("interface %s not found on this node", name)
	}
	dummy := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := l.h.LinkAdd(dummy); err != nil {
		if errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.ENODEV) || strings.Contains(err.Error(), "not supported") {
			return nil, fmt.Errorf("create dummy interface %s: this kernel has no 'dummy' link type (modprobe dummy, or run the agent with --host-interface=<an existing interface such as cni0>): %w", name, err)
		}
		return nil, fmt.Errorf("create dummy interface %s: %w", name, err)
	}
	if link, err = l.h.LinkByName(name); err != nil {
		return nil, fmt.Errorf("find interface %s after creating it: %w", name, err)
	}
	if err := l.h.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("set %s up: %w", name, err)
	}
	return link, nil
}

// Ensure adds every wanted address to its interface. It returns, per interface, the error that
// kept its addresses off (a missing interface); other interfaces are unaffected.
func (l *Links) Ensure(want map[string][]netip.Addr) map[string]error {
	failed := map[string]error{}
	for _, ifname := range sortedKeys(want) {
		link, err := l.link(ifname)
		if err == nil {
			err = l.addAll(link, want[ifname])
		}
		if err != nil {
			failed[ifname] = err
		}
	}
	return failed
}

func (l *Links) addAll(link netlink.Link, addrs []netip.Addr) error {
	name := link.Attrs().Name
	have, err := redump(func() ([]netlink.Addr, error) { return l.h.AddrList(link, netlink.FAMILY_ALL) })
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", name, err)
	}
	on := make(map[netip.Addr]bool, len(have))
	for _, h := range have {
		if ip, ok := netip.AddrFromSlice(h.IP); ok {
			on[ip.Unmap()] = true
		}
	}
	for _, a := range addrs {
		if on[a] {
			continue
		}
		addr := &netlink.Addr{IPNet: hostNet(a)}
		switch {
		case a.Is6():
			addr.Flags = ownFlags6
		case name != l.Dummy:
			addr.Label = addrLabel(name)
		}
		if err := l.h.AddrAdd(link, addr); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("add %s to %s: %w", a, name, err)
		}
	}
	return nil
}

// Owned lists the addresses we put on interfaces: labelled ones, and all on the dummy link.
func (l *Links) Owned() (map[string][]netip.Addr, error) {
	links, err := redump(l.h.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	out := map[string][]netip.Addr{}
	for _, link := range links {
		name := link.Attrs().Name
		addrs, err := redump(func() ([]netlink.Addr, error) { return l.h.AddrList(link, netlink.FAMILY_ALL) })
		if err != nil {
			return nil, fmt.Errorf("list addresses of %s: %w", name, err)
		}
		for _, a := range addrs {
			ones, bits := a.Mask.Size()
			ip, ok := netip.AddrFromSlice(a.IP)
			if !ok || ones != bits || (name != l.Dummy && !ownAddr(name, ip.Unmap(), a)) {
				continue
			}
			if name == l.Dummy && ip.Unmap().Is6() && ip.IsLinkLocalUnicast() {
				continue // the kernel's own fe80:: address
			}
			out[name] = append(out[name], ip.Unmap())
		}
	}
	return out, nil
}

// RemoveStale deletes owned addresses that are not wanted.
func (l *Links) RemoveStale(want map[string][]netip.Addr) error {
	owned, err := l.Owned()
	if err != nil {
		return err
	}
	var errs []error
	for ifname, addrs := range owned {
		for _, a := range addrs {
			if slices.Contains(want[ifname], a) {
				continue
			}
			if err := l.del(ifname, a); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func (l *Links) del(ifname string, a netip.Addr) error {
	link, err := l.h.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("find interface %s: %w", ifname, err)
	}
	if err := l.h.AddrDel(link, &netlink.Addr{IPNet: hostNet(a)}); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) {
		return fmt.Errorf("remove %s from %s: %w", a, ifname, err)
	}
	return nil
}

// Cleanup removes every address we own and the dummy link. Idempotent.
func (l *Links) Cleanup() error {
	err := l.RemoveStale(nil)
	if link, lerr := l.h.LinkByName(l.Dummy); lerr == nil {
		if _, isDummy := link.(*netlink.Dummy); isDummy {
			err = errors.Join(err, l.h.LinkDel(link))
		}
	}
	return err
}

// ownAddr reports whether a, on an interface other than the dummy one, is one of ours: its label
// (IPv4) or its flags (IPv6) say so.
func ownAddr(ifname string, ip netip.Addr, a netlink.Addr) bool {
	if ip.Is4() {
		return a.Label == addrLabel(ifname)
	}
	return a.Flags&ownFlags6 == ownFlags6
}

func hostNet(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}
