package agent

import (
	"errors"

	"github.com/vishvananda/netlink"
)

// dumpAttempts bounds how often a netlink dump is read again after the kernel said it was
// interrupted.
const dumpAttempts = 5

// redump runs a netlink dump again while the kernel reports it interrupted (NLM_F_DUMP_INTR: the
// list changed while it was read, e.g. a pod's veth came or went), as ip(8) does; its result is
// then incomplete or inconsistent, so it is never used. After dumpAttempts it returns the error.
func redump[T any](dump func() (T, error)) (T, error) {
	var (
		v   T
		err error
	)
	for range dumpAttempts {
		if v, err = dump(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}
