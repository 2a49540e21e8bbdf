package kubectlplugin

import (
	"cmp"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// NodeStatus is one node in `status`: its agent, its record's sync time and datapath, and the
// MagicIPs it reports (only the one asked for, when a name is given).
type NodeStatus struct {
	Node     string                   `json:"node"`
	Agent    AgentState               `json:"agent"`
	Datapath string                   `json:"datapath,omitempty"`
	LastSync *metav1.Time             `json:"lastSync,omitempty"`
	MagicIPs []v1alpha1.MagicIPOnNode `json:"magicIPs"`
}

// StatusReport is the output of `status`.
type StatusReport struct {
	Nodes []NodeStatus `json:"nodes"`
}

// Status builds the report of every node that has a record or an agent pod; name limits it to one
// MagicIP (an error when there is no such MagicIP).
func Status(s *Snapshot, name string) (*StatusReport, error) {
	if name != "" && s.MagicIP(name) == nil {
		return nil, fmt.Errorf("MagicIP %q not found", name)
	}
	nodes := map[string]bool{}
	for _, r := range s.Records {
		nodes[r.Name] = true
	}
	for n := range s.AgentPods {
		nodes[n] = true
	}
	rep := &StatusReport{Nodes: []NodeStatus{}}
	for _, n := range slices.Sorted(maps.Keys(nodes)) {
		rec := s.Record(n)
		ns := NodeStatus{Node: n, Agent: agentState(s.AgentPods[n], rec), MagicIPs: []v1alpha1.MagicIPOnNode{}}
		if rec != nil {
			ns.Datapath, ns.LastSync = rec.Datapath, rec.LastSyncTime
			for _, e := range rec.MagicIPs {
				if name == "" || e.Name == name {
					ns.MagicIPs = append(ns.MagicIPs, e)
				}
			}
		}
		if name != "" && rec != nil && len(ns.MagicIPs) == 0 {
			ns.MagicIPs = append(ns.MagicIPs, v1alpha1.MagicIPOnNode{Name: name, Reason: "NotReported", Message: "the node's record does not mention this MagicIP yet"})
		}
		rep.Nodes = append(rep.Nodes, ns)
	}
	return rep, nil
}

// PrintStatus writes the report as a table: one row per node and MagicIP, then the reasons of
// what is not programmed and the agents that are not Ready.
func PrintStatus(w io.Writer, rep *StatusReport, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, "NODE\tMAGICIP\tPROGRAMMED\tREASON\tLOCAL-PRODUCERS\tLAST-SYNC\tDATAPATH\tAGENT")
	var notes []string
	for _, n := range rep.Nodes {
		sync := age(n.LastSync, now)
		rows := n.MagicIPs
		if len(rows) == 0 {
			rows = []v1alpha1.MagicIPOnNode{{Name: "<none>"}}
		}
		for _, e := range rows {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.Node, e.Name, yesNo(e.Programmed), cmp.Or(e.Reason, "-"),
				producers(e.Producers), sync, cmp.Or(n.Datapath, "-"), n.Agent.State)
			if e.Message != "" {
				notes = append(notes, fmt.Sprintf("%s/%s: %s: %s", n.Node, e.Name, e.Reason, e.Message))
			}
		}
		if n.Agent.Detail != "" {
			notes = append(notes, fmt.Sprintf("%s: agent %s: %s", n.Node, n.Agent.State, n.Agent.Detail))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(notes) > 0 {
		fmt.Fprintln(w, "\nWhy:")
		for _, n := range notes {
			fmt.Fprintln(w, "  "+n)
		}
	}
	return nil
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// producers is "ns/pod (ip), ..." or "<none>".
func producers(ps []v1alpha1.LocalProducer) string {
	if len(ps) == 0 {
		return "<none>"
	}
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = fmt.Sprintf("%s (%s)", p.Pod, p.IP)
		if p.Terminating {
			out[i] += " terminating"
		}
	}
	return strings.Join(out, ", ")
}

// age is how long ago t was, like kubectl's AGE ("<unknown>" without t).
func age(t *metav1.Time, now time.Time) string {
	if t == nil {
		return "<unknown>"
	}
	d := now.Sub(t.Time)
	switch {
	case d < 2*time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < 2*time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}
