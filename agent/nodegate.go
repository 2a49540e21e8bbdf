package agent

import (
	"fmt"
	"strings"

	"github.com/magic-ip/magic-ip/agent/nodestatus"
)

// NodeReporter reports the node's status (the magic-ip.dev/Programmed Node condition).
type NodeReporter interface {
	Set(nodestatus.Status)
}

// nodeStatus says whether every MagicIP this node should serve is programmed after a sync: False
// when the sync failed or a MagicIP's interface is unavailable. MagicIPs that are invalid or lost
// a conflict are not to be served anywhere: they are reported on the MagicIP, not held against the
// node (one bad object must not gate every node of the cluster).
func nodeStatus(res SyncResult, err error) nodestatus.Status {
	if err != nil {
		return nodestatus.NotProgrammed(nodestatus.ReasonSyncFailed, err.Error())
	}
	if len(res.Unserved) == 0 {
		return nodestatus.Programmed()
	}
	var msgs []string
	for _, name := range sortedKeys(res.Unserved) {
		ifname := res.Unserved[name]
		msgs = append(msgs, fmt.Sprintf("MagicIP %s: interface %s: %v", name, ifname, res.FailedInterfaces[ifname]))
	}
	return nodestatus.NotProgrammed(nodestatus.ReasonInterfaceUnavailable, strings.Join(msgs, "; "))
}
