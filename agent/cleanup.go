package agent

import (
	"errors"
	"net/netip"
)

// cleanupLinks removes our addresses and the dummy link, then the UDP conntrack entries sent to
// those addresses, whatever the port: after a cleanup no datagram follows a stale DNAT to a
// producer. Every step runs; every error is returned.
func cleanupLinks(links *Links) error {
	owned, err := links.Owned()
	errs := []error{err, links.Cleanup()}
	flushed := map[netip.Addr]bool{}
	for _, addrs := range owned {
		for _, a := range addrs {
			if flushed[a] {
				continue
			}
			flushed[a] = true
			if _, err := FlushConntrack(links.h, a, 0); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
