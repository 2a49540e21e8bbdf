package agent

import (
	"fmt"
	"slices"
	"strings"

	"github.com/magic-ip/magic-ip/agent/kube"
	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// RecordReporter keeps the node's MagicIPNode record (agent/nodereport).
type RecordReporter interface {
	Set([]v1alpha1.MagicIPOnNode)
}

// recordMessageLimit bounds an entry's message, in bytes (the CRD allows 1024).
const recordMessageLimit = 1024

// nodeRecord is what the node's record says after a sync of mips that ended with res and err: one
// entry per MagicIP, sorted by name. Conflict and Invalid come from the MagicIP itself; an
// unavailable interface from this node; a failed sync marks every other MagicIP SyncFailed (the
// rules may lag behind the API). The rest are programmed, with their local producers and the
// addresses left out (a dual-stack MagicIP's IPv6 address).
func nodeRecord(mips []v1alpha1.MagicIP, res SyncResult, err error) []v1alpha1.MagicIPOnNode {
	out := make([]v1alpha1.MagicIPOnNode, 0, len(mips))
	for _, m := range mips {
		e := v1alpha1.MagicIPOnNode{Name: m.Name}
		cf, lost := res.State.Conflicts[m.Name]
		invalid, bad := res.State.Invalid[m.Name]
		ifname, unserved := res.Unserved[m.Name]
		switch {
		case lost:
			e.Reason, e.Message = v1alpha1.ReasonConflict, fmt.Sprintf("%s is already claimed by MagicIP %s (the older one wins)", cf.Claim, cf.Winner)
		case bad:
			e.Reason, e.Message = v1alpha1.ReasonInvalid, invalid
		case unserved:
			e.Reason, e.Message = v1alpha1.ReasonInterfaceUnavailable, fmt.Sprintf("interface %s: %v", ifname, res.FailedInterfaces[ifname])
		case err != nil:
			e.Reason, e.Message = v1alpha1.ReasonSyncFailed, "the last sync failed (the rules may lag behind the API): "+err.Error()
		default:
			e.Programmed, e.Reason = true, v1alpha1.ReasonProgrammed
			e.Producers = localProducers(res.State, m.Name)
			e.UnprogrammedAddresses = res.State.Unprogrammed[m.Name]
		}
		e.Message = kube.Truncate(e.Message, recordMessageLimit)
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b v1alpha1.MagicIPOnNode) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// localProducers lists the pods new connections to the MagicIP go to, once each, by IP.
func localProducers(st State, name string) []v1alpha1.LocalProducer {
	var out []v1alpha1.LocalProducer
	for _, svc := range st.Services {
		if svc.MagicIP != name {
			continue
		}
		for _, ep := range svc.Endpoints {
			if !slices.ContainsFunc(out, func(p v1alpha1.LocalProducer) bool { return p.Pod == ep.Pod }) {
				out = append(out, v1alpha1.LocalProducer{Pod: ep.Pod, IP: ep.Addr.Addr().String(), Terminating: ep.Terminating})
			}
		}
	}
	return out
}
