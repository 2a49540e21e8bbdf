package agent

import (
	"errors"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// cleanupLinks removes our addresses and the dummy link, then the UDP conntrack entries sent to
// those addresses, whatever the port: after a cleanup no datagram follows a stale DNAT to a
// producer. Every step runs; every error is returned.
func cleanupLinks(links *Links) error {
	owned, err := links.Owned()
	errs := []error{err, links.Cleanup()}
	_, err = flushUDPTo(links.h, owned)
	return errors.Join(append(errs, err)...)
}

// flushUDPTo deletes the UDP conntrack entries sent to any of the addresses (per interface, as
// Links.Owned lists them), on any port, once per address; it returns how many went and every error.
func flushUDPTo(h *netlink.Handle, addrs map[string][]netip.Addr) (uint, error) {
	var targets []netip.AddrPort
	flushed := map[netip.Addr]bool{}
	for _, ifname := range sortedKeys(addrs) {
		for _, a := range addrs[ifname] {
			if !flushed[a] {
				flushed[a] = true
				targets = append(targets, netip.AddrPortFrom(a, 0))
			}
		}
	}
	return flushConntrackTo(h, targets)
}
