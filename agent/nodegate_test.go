package agent

import (
	"errors"
	"testing"

	"github.com/magic-ip/magic-ip/agent/nodestatus"
)

// TestNodeStatus: the node is Programmed unless its sync failed or a MagicIP's interface is
// unavailable; invalid and conflicting MagicIPs are not held against the node.
func TestNodeStatus(t *testing.T) {
	noLink := errors.New("Link not found")
	for name, tc := range map[string]struct {
		res  SyncResult
		err  error
		want nodestatus.Status
	}{
		"all programmed": {want: nodestatus.Programmed()},
		"invalid and conflicting MagicIPs do not gate the node": {
			res:  SyncResult{State: State{Invalid: map[string]string{"v6": "IPv6 not programmed"}}},
			want: nodestatus.Programmed(),
		},
		"sync failed": {
			err:  errors.New("iptables-restore: exit status 1"),
			want: nodestatus.Status{Reason: nodestatus.ReasonSyncFailed, Message: "iptables-restore: exit status 1"},
		},
		"interfaces unavailable, MagicIPs named in order": {
			res: SyncResult{
				FailedInterfaces: map[string]error{"nosuch0": noLink, "nosuch1": noLink},
				Unserved:         map[string]string{"zipkin": "nosuch1", "apm": "nosuch0"},
			},
			want: nodestatus.Status{Reason: nodestatus.ReasonInterfaceUnavailable,
				Message: "MagicIP apm: interface nosuch0: Link not found; MagicIP zipkin: interface nosuch1: Link not found"},
		},
	} {
		t.Run(name, func(t *testing.T) {
			if got := nodeStatus(tc.res, tc.err); got != tc.want {
				t.Errorf("nodeStatus:\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}
