package webhook

import (
	"cmp"
	"fmt"
	"slices"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// ConditionIPv6Programmed is, on an Accepted dual-stack MagicIP, True when the agents' records
// say its IPv6 address is served on every node that programs the MagicIP (and there is one): the
// webhook then maps inject.hostnames to the IPv6 address too. False while no node programs the
// MagicIP, or while some node programs its IPv4 address only (a node without IPv6, a datapath or
// an agent version that does not program IPv6, an address its --allowed-address-ranges refuse):
// a pod there whose resolver prefers the IPv6 entry would be handed an address nothing serves.
const ConditionIPv6Programmed = "IPv6Programmed"

// IPv6Report is what the agents' records say of one dual-stack MagicIP's IPv6 address.
type IPv6Report struct {
	// Served counts the nodes that program the MagicIP with its IPv6 address.
	Served int
	// LeftOut are the nodes that program the MagicIP but leave its IPv6 address out, with why,
	// sorted by node name.
	LeftOut []NodeUnprogrammed
}

// NodeUnprogrammed is an address a node leaves out of a MagicIP it programs.
type NodeUnprogrammed struct {
	Node string
	v1alpha1.UnprogrammedAddress
}

// IPv6Reports reads the records for each dual-stack MagicIP of mips. A node that does not program
// the MagicIP at all (failing, or not yet synced) counts neither way: status.nodes reports it.
func IPv6Reports(mips []v1alpha1.MagicIP, records []v1alpha1.MagicIPNode) map[string]IPv6Report {
	addr6 := map[string]string{}
	for _, m := range mips {
		if m.Spec.IPv6Address != "" {
			addr6[m.Name] = m.Spec.IPv6Address
		}
	}
	out := map[string]IPv6Report{}
	for _, rec := range records {
		for _, e := range rec.MagicIPs {
			a, dual := addr6[e.Name]
			if !dual || !e.Programmed {
				continue
			}
			r := out[e.Name]
			if i := slices.IndexFunc(e.UnprogrammedAddresses, func(u v1alpha1.UnprogrammedAddress) bool { return u.Address == a }); i >= 0 {
				r.LeftOut = append(r.LeftOut, NodeUnprogrammed{Node: rec.Name, UnprogrammedAddress: e.UnprogrammedAddresses[i]})
			} else {
				r.Served++
			}
			out[e.Name] = r
		}
	}
	for name, r := range out {
		slices.SortFunc(r.LeftOut, func(a, b NodeUnprogrammed) int { return cmp.Compare(a.Node, b.Node) })
		out[name] = r
	}
	return out
}

// SetIPv6Condition sets m's IPv6Programmed condition in st from r when m is dual-stack and st says
// it is Accepted, and removes it otherwise. Messages name no counts, so that a rollout of agents
// does not rewrite the status at every node (status.nodes has the counts, throttled).
func SetIPv6Condition(st *v1alpha1.MagicIPStatus, m *v1alpha1.MagicIP, r IPv6Report) {
	if m.Spec.IPv6Address == "" || !meta.IsStatusConditionTrue(st.Conditions, v1alpha1.ConditionAccepted) {
		meta.RemoveStatusCondition(&st.Conditions, ConditionIPv6Programmed)
		return
	}
	c := metav1.Condition{Type: ConditionIPv6Programmed, ObservedGeneration: m.Generation, Status: metav1.ConditionFalse}
	switch a := m.Spec.IPv6Address; {
	case len(r.LeftOut) > 0:
		first := r.LeftOut[0]
		c.Reason = cmp.Or(first.Reason, "NotProgrammed")
		c.Message = fmt.Sprintf("node %s programs this MagicIP without its IPv6 address %s: %s", first.Node, a, first.Message)
		if len(r.LeftOut) > 1 {
			c.Message += " (other nodes too)"
		}
		c.Message += "; inject.hostnames map to the IPv4 address only"
	case r.Served == 0:
		c.Reason, c.Message = "NoNodeProgrammed", "no node programs this MagicIP yet; inject.hostnames map to the IPv4 address only"
	default:
		c.Status, c.Reason = metav1.ConditionTrue, "Programmed"
		c.Message = fmt.Sprintf("every node that programs this MagicIP serves its IPv6 address %s too; inject.hostnames map to both addresses", a)
	}
	meta.SetStatusCondition(&st.Conditions, c)
}

// ipv6Programmed reports whether m's status says its IPv6 address is served wherever it is
// programmed (IPv6Programmed True), for its current generation: a changed spec waits for the
// status controller again.
func ipv6Programmed(m v1alpha1.MagicIP) bool {
	c := findCondition(m.Status.Conditions, ConditionIPv6Programmed)
	return c != nil && c.Status == metav1.ConditionTrue && c.ObservedGeneration == m.Generation
}
