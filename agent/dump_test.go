package agent

import (
	"errors"
	"testing"

	"github.com/vishvananda/netlink"
)

// TestRedump: an interrupted netlink dump is read again (its result is never used), up to
// dumpAttempts; any other error or a clean dump ends it at once.
func TestRedump(t *testing.T) {
	other := errors.New("permission denied")
	cases := []struct {
		name      string
		errs      []error // what each call returns, in order; nil after the list
		wantCalls int
		wantErr   error
		wantValue int
	}{
		{"clean at once", nil, 1, nil, 1},
		{"interrupted twice, then clean", []error{netlink.ErrDumpInterrupted, netlink.ErrDumpInterrupted}, 3, nil, 3},
		{"another error ends it", []error{other}, 1, other, 1},
		{"always interrupted", []error{netlink.ErrDumpInterrupted, netlink.ErrDumpInterrupted, netlink.ErrDumpInterrupted, netlink.ErrDumpInterrupted, netlink.ErrDumpInterrupted, netlink.ErrDumpInterrupted}, dumpAttempts, netlink.ErrDumpInterrupted, dumpAttempts},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			calls := 0
			v, err := redump(func() (int, error) {
				calls++
				if calls <= len(c.errs) {
					return calls, c.errs[calls-1]
				}
				return calls, nil
			})
			if calls != c.wantCalls || !errors.Is(err, c.wantErr) || (c.wantErr == nil && err != nil) || v != c.wantValue {
				t.Errorf("calls %d, value %d, err %v; want %d, %d, %v", calls, v, err, c.wantCalls, c.wantValue, c.wantErr)
			}
		})
	}
}
