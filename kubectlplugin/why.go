package kubectlplugin

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
	"github.com/magic-ip/magic-ip/webhook"
)

// Where connections to a magic address go from a pod's node (Destination.Kind).
const (
	ToLocalProducer = "LocalProducer"
	ToRefused       = "Refused"
	ToDropped       = "Dropped"
	ToFallback      = "Fallback"
	ToNotProgrammed = "NotProgrammed"
	ToUnknown       = "Unknown"
)

// WhyReport is the output of `why POD`.
type WhyReport struct {
	Pod      string       `json:"pod"`
	Node     string       `json:"node,omitempty"`
	Agent    *AgentState  `json:"agent,omitempty"`
	MagicIPs []WhyMagicIP `json:"magicIPs"`
	// Note says why the list is empty, when it is.
	Note string `json:"note,omitempty"`
}

// WhyMagicIP is one MagicIP injected into the pod.
type WhyMagicIP struct {
	Name        string        `json:"name"`
	Address     string        `json:"address,omitempty"`
	Ports       string        `json:"ports,omitempty"`
	Env         []InjectedEnv `json:"env,omitempty"`
	HostAliases []string      `json:"hostAliases,omitempty"`
	Destination Destination   `json:"destination"`
}

// InjectedEnv is a variable of the pod's spec that the MagicIP injects.
type InjectedEnv struct {
	Container string `json:"container"`
	Name      string `json:"name"`
	Value     string `json:"value"`
	// SetByPod: the container sets this name itself, with another value, so it was not injected.
	SetByPod bool `json:"setByPod,omitempty"`
}

// Destination is where new connections from the pod's node to the address go.
type Destination struct {
	Kind      string                   `json:"kind"`
	Producers []v1alpha1.LocalProducer `json:"producers,omitempty"`
	Detail    string                   `json:"detail,omitempty"`
}

// Why explains pod: the MagicIPs it was injected with (its magic-ip.dev/injected annotation), the
// variables and host aliases its spec holds for them, and, from its node's record, where its
// connections to each address go.
func Why(s *Snapshot, pod *corev1.Pod) *WhyReport {
	rep := &WhyReport{Pod: pod.Namespace + "/" + pod.Name, Node: pod.Spec.NodeName, MagicIPs: []WhyMagicIP{}}
	var rec *v1alpha1.MagicIPNode
	if pod.Spec.NodeName != "" {
		rec = s.Record(pod.Spec.NodeName)
		a := agentState(s.AgentPods[pod.Spec.NodeName], rec)
		rep.Agent = &a
	}
	for _, name := range injected(pod) {
		rep.MagicIPs = append(rep.MagicIPs, whyMagicIP(s.MagicIP(name), name, pod, rec))
	}
	switch {
	case len(rep.MagicIPs) == 0:
		rep.Note = "no MagicIP was injected into this pod (no " + webhook.InjectedAnnotation + " annotation): its namespace may not be opted in, or it was created before the MagicIP or the webhook"
	case pod.Spec.NodeName == "":
		rep.Note = "the pod is not scheduled to a node yet"
	}
	return rep
}

func injected(pod *corev1.Pod) []string {
	var out []string
	for _, n := range strings.Split(pod.Annotations[webhook.InjectedAnnotation], ",") {
		if n = strings.TrimSpace(n); n != "" {
			out = append(out, n)
		}
	}
	return out
}

func whyMagicIP(m *v1alpha1.MagicIP, name string, pod *corev1.Pod, rec *v1alpha1.MagicIPNode) WhyMagicIP {
	w := WhyMagicIP{Name: name}
	if m == nil {
		w.Destination = Destination{Kind: ToUnknown, Detail: "MagicIP " + name + " no longer exists"}
		return w
	}
	w.Address, w.Ports = m.Spec.Address, m.Spec.PortSummary()
	w.Env = injectedEnv(*m, pod)
	for _, h := range pod.Spec.HostAliases {
		if h.IP == m.Spec.Address {
			w.HostAliases = append(w.HostAliases, h.Hostnames...)
		}
	}
	w.Destination = destination(m, pod.Spec.NodeName, rec)
	return w
}

// injectedEnv lists, per container, the variables of m's injection found in the pod's spec.
func injectedEnv(m v1alpha1.MagicIP, pod *corev1.Pod) []InjectedEnv {
	var out []InjectedEnv
	want := webhook.Env(m)
	for _, c := range slices.Concat(pod.Spec.InitContainers, pod.Spec.Containers) {
		for _, e := range c.Env {
			i := slices.IndexFunc(want, func(w corev1.EnvVar) bool { return w.Name == e.Name })
			if i < 0 {
				continue
			}
			out = append(out, InjectedEnv{Container: c.Name, Name: e.Name, Value: envValue(e), SetByPod: envValue(e) != envValue(want[i])})
		}
	}
	return out
}

func envValue(e corev1.EnvVar) string {
	if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
		return "(" + e.ValueFrom.FieldRef.FieldPath + ")"
	}
	if e.ValueFrom != nil {
		return "(from a reference)"
	}
	return e.Value
}

// destination says where new connections to m's address go from node, by its record.
func destination(m *v1alpha1.MagicIP, node string, rec *v1alpha1.MagicIPNode) Destination {
	switch {
	case node == "":
		return Destination{Kind: ToUnknown, Detail: "the pod has no node yet"}
	case rec == nil:
		return Destination{Kind: ToUnknown, Detail: "node " + node + " has no MagicIPNode record: its agent has not reported"}
	}
	e := rec.Find(m.Name)
	switch {
	case e == nil:
		return Destination{Kind: ToUnknown, Detail: "the record of node " + node + " does not mention this MagicIP yet"}
	case !e.Programmed:
		return Destination{Kind: ToNotProgrammed, Detail: fmt.Sprintf("not programmed on node %s (%s: %s): magic-ip does not handle connections to %s there", node, e.Reason, e.Message, m.Spec.Address)}
	case len(e.Producers) > 0:
		return Destination{Kind: ToLocalProducer, Producers: e.Producers, Detail: "to " + producers(e.Producers)}
	}
	switch action := m.Spec.EffectiveWhenNoLocalProducer(); action {
	case v1alpha1.Reject:
		return Destination{Kind: ToRefused, Detail: "no local producer: refused at once (whenNoLocalProducer: Reject)"}
	case v1alpha1.Drop:
		return Destination{Kind: ToDropped, Detail: "no local producer: dropped, clients time out (whenNoLocalProducer: Drop)"}
	case "Fallback":
		return Destination{Kind: ToFallback, Detail: "no local producer: to producers on other nodes (whenNoLocalProducer: Fallback)"}
	default:
		return Destination{Kind: ToUnknown, Detail: fmt.Sprintf("no local producer, and whenNoLocalProducer %q is unknown to this version of kubectl-magic_ip", cmp.Or(string(action), "<empty>"))}
	}
}

// PrintWhy writes the report for people.
func PrintWhy(w io.Writer, rep *WhyReport) error {
	node := cmp.Or(rep.Node, "<none>")
	fmt.Fprintf(w, "Pod %s on node %s", rep.Pod, node)
	if rep.Agent != nil {
		fmt.Fprintf(w, " (agent %s", rep.Agent.State)
		if rep.Agent.Detail != "" {
			fmt.Fprintf(w, ": %s", rep.Agent.Detail)
		}
		fmt.Fprint(w, ")")
	}
	fmt.Fprintln(w)
	if rep.Note != "" {
		fmt.Fprintln(w, rep.Note)
	}
	for _, m := range rep.MagicIPs {
		fmt.Fprintf(w, "\nMagicIP %s: %s %s\n", m.Name, cmp.Or(m.Address, "?"), m.Ports)
		for _, e := range m.Env {
			note := ""
			if e.SetByPod {
				note = "  (set by the pod: not injected)"
			}
			fmt.Fprintf(w, "  env %s: %s=%s%s\n", e.Container, e.Name, e.Value, note)
		}
		if len(m.HostAliases) > 0 {
			fmt.Fprintf(w, "  hostAliases: %s -> %s\n", strings.Join(m.HostAliases, ", "), m.Address)
		}
		fmt.Fprintf(w, "  connections: %s: %s\n", m.Destination.Kind, m.Destination.Detail)
	}
	return nil
}
