// Package webhook injects magic-IP endpoints into consumer pods (a mutating admission webhook)
// and keeps MagicIP status (a leader-elected controller).
package webhook

import (
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// Labels and annotations of the magic-ip.dev API.
const (
	// InjectLabel on a namespace opts its pods in ("enabled"); on a pod, "disabled" opts it out.
	InjectLabel = "magic-ip.dev/inject"
	// SelectAnnotation on a pod limits injection to the named MagicIPs ("a,b").
	SelectAnnotation = "magic-ip.dev/select"
	// InjectedAnnotation records the MagicIPs injected into a pod.
	InjectedAnnotation = "magic-ip.dev/injected"
)

// envName upper-cases s with '-' and '.' as '_': MagicIP and port names in variable names.
func envName(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r == '-' || r == '.':
			return '_'
		case 'a' <= r && r <= 'z':
			return r - 'a' + 'A'
		}
		return r
	}, s)
}

// Endpoint is what one MagicIP injects into a pod, resolved once per MagicIP change rather than
// per admission request.
type Endpoint struct {
	Name    string
	Address string
	// Address6 is the IPv6 address of a dual-stack MagicIP (spec.ipv6Address) whose status says
	// it is served on every node that programs the MagicIP (ConditionIPv6Programmed), or empty:
	// hostnames get an entry for it only then (a resolver that prefers the IPv6 entry must not be
	// handed an address nothing serves).
	Address6  string
	Env       []corev1.EnvVar
	Hostnames []string
}

// EndpointOf resolves what m injects.
func EndpointOf(m v1alpha1.MagicIP) Endpoint {
	e := Endpoint{Name: m.Name, Address: m.Spec.Address, Env: Env(m), Hostnames: m.Spec.Inject.Hostnames}
	if a := m.Spec.IPv6Address; a != "" && ipv6Programmed(m) {
		e.Address6 = a
	}
	return e
}

// Catalog is the endpoints pods may get, sorted by name: the MagicIPs Resolve injects (they own
// their claims and agents program their address, the rules the agents apply) that are not
// reported un-Accepted for their current generation either.
type Catalog []Endpoint

// NewCatalog resolves mips into the catalog.
func NewCatalog(mips []v1alpha1.MagicIP) Catalog {
	refused := map[string]bool{}
	for _, m := range mips {
		if c := findCondition(m.Status.Conditions, v1alpha1.ConditionAccepted); c != nil &&
			c.Status == metav1.ConditionFalse && c.ObservedGeneration == m.Generation {
			refused[m.Name] = true
		}
	}
	var out Catalog
	for _, e := range Resolve(mips).Endpoints {
		if !refused[e.Name] {
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b Endpoint) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// For returns the endpoints a pod with these annotations gets: the whole catalog, or the part its
// select annotation names (present but empty selects nothing).
func (c Catalog) For(annotations map[string]string) []Endpoint {
	sel, ok := annotations[SelectAnnotation]
	if !ok {
		return c
	}
	want := strings.Split(sel, ",")
	for i := range want {
		want[i] = strings.TrimSpace(want[i])
	}
	var out []Endpoint // in catalog order: sorted by name
	for _, e := range c {
		if slices.Contains(want, e.Name) {
			out = append(out, e)
		}
	}
	return out
}

// Mutate adds the endpoints eps to pod: env vars in every container and init container, before
// the container's own (a variable the pod already sets keeps its value), hostAliases (one per
// address of the endpoint, merged into an entry for the same IP), and the injected annotation. It returns whether the pod changed; a
// second call changes nothing.
func Mutate(pod *Pod, eps []Endpoint) bool {
	changed := false
	for i := range pod.Spec.InitContainers {
		changed = addEnv(&pod.Spec.InitContainers[i], eps) || changed
	}
	for i := range pod.Spec.Containers {
		changed = addEnv(&pod.Spec.Containers[i], eps) || changed
	}
	var names []string
	for _, e := range eps {
		changed = addHostAliases(pod, e) || changed
		names = append(names, e.Name)
	}
	if len(names) == 0 {
		return changed
	}
	prev := pod.Annotations[InjectedAnnotation]
	all := names
	for _, n := range strings.Split(prev, ",") {
		if n != "" && !slices.Contains(all, n) {
			all = append(all, n)
		}
	}
	slices.Sort(all)
	if joined := strings.Join(all, ","); joined != prev {
		if pod.Annotations == nil {
			pod.Annotations = map[string]string{}
		}
		pod.Annotations[InjectedAnnotation] = joined
		changed = true
	}
	return changed
}

// Env lists the variables a MagicIP injects, in order.
func Env(m v1alpha1.MagicIP) []corev1.EnvVar {
	var env []corev1.EnvVar
	if m.Spec.Inject.EnvEnabled() && len(m.Spec.Ports) > 0 {
		prefix := envName(m.Name) + "_MAGIC_"
		env = append(env,
			corev1.EnvVar{Name: prefix + "HOST", Value: m.Spec.Address})
		if m.Spec.IPv6Address != "" {
			env = append(env, corev1.EnvVar{Name: prefix + "HOST_IPV6", Value: m.Spec.IPv6Address})
		}
		env = append(env, corev1.EnvVar{Name: prefix + "PORT", Value: strconv.Itoa(int(m.Spec.Ports[0].Port))})
		for _, p := range m.Spec.Ports {
			env = append(env, corev1.EnvVar{Name: prefix + "PORT_" + envName(p.Name), Value: strconv.Itoa(int(p.Port))})
		}
	}
	for _, e := range m.Spec.Inject.ExtraEnv {
		env = append(env, corev1.EnvVar{Name: e.Name, Value: ExpandTemplate(e.Value, m.Spec)})
	}
	if m.Spec.Inject.NodeMetadata {
		env = append(env, fieldEnv("NODE_NAME", "spec.nodeName"), fieldEnv("NODE_IP", "status.hostIP"))
	}
	for _, id := range m.Spec.Inject.PodIdentity {
		env = append(env, fieldEnv(id.Name, id.FieldPath))
	}
	return env
}

// fieldEnv is the variable name set by the kubelet to the pod's field at path (the downward API).
func fieldEnv(name, path string) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
}

// ExpandTemplate resolves {address}, {address6} (spec.ipv6Address), {port} (the first port) and
// {port:NAME}. Unknown placeholders, and {address6} without an IPv6 address, are left as they are
// (the CRD refuses them on admission).
func ExpandTemplate(tmpl string, spec v1alpha1.MagicIPSpec) string {
	pairs := []string{"{address}", spec.Address}
	if spec.IPv6Address != "" {
		pairs = append(pairs, "{address6}", spec.IPv6Address)
	}
	if len(spec.Ports) > 0 {
		pairs = append(pairs, "{port}", strconv.Itoa(int(spec.Ports[0].Port)))
	}
	for _, p := range spec.Ports {
		pairs = append(pairs, "{port:"+p.Name+"}", strconv.Itoa(int(p.Port)))
	}
	return strings.NewReplacer(pairs...).Replace(tmpl)
}

// addEnv puts the endpoints' variables that the container does not set, in env or possibly
// through envFrom (EnvFromMaySet), before its own entries, in endpoint order, the first definition
// of a name only. First, because the kubelet expands a $(NAME) in a value only from the entries
// above it: a container's own DD_TRACE_AGENT_URL=http://$(DD_AGENT_HOST):8126 then finds the
// injected DD_AGENT_HOST. The container's entries keep their order and values.
func addEnv(c *Container, eps []Endpoint) bool {
	var head []corev1.EnvVar // the new entries, then the container's
	for i, ep := range eps {
		for j, e := range ep.Env {
			if hasEnv(c.Env, e.Name) || hasEnv(head, e.Name) || EnvFromMaySet(c.EnvFrom, e.Name) != nil {
				continue
			}
			if e.ValueFrom != nil { // the endpoint's copy is shared by every request
				e.ValueFrom = e.ValueFrom.DeepCopy()
			}
			if head == nil { // room for all at once; nothing allocated when nothing is added
				head = make([]corev1.EnvVar, 0, remaining(eps, i, j)+len(c.Env))
			}
			head = append(head, e)
		}
	}
	if head == nil {
		return false
	}
	c.Env = append(head, c.Env...)
	return true
}

func hasEnv(env []corev1.EnvVar, name string) bool {
	return slices.ContainsFunc(env, func(x corev1.EnvVar) bool { return x.Name == name })
}

// remaining counts the variables of eps from eps[i].Env[j] on.
func remaining(eps []Endpoint, i, j int) int {
	n := len(eps[i].Env) - j
	for _, ep := range eps[i+1:] {
		n += len(ep.Env)
	}
	return n
}

// addHostAliases maps e's hostnames to each of its addresses, the IPv4 one and, for a dual-stack
// MagicIP, the IPv6 one (an entry per address, so the resolver gets both families), into an
// existing entry for the address when there is one. A hostname the pod already maps (to any IP)
// is left as the pod has it, in both families.
func addHostAliases(pod *Pod, e Endpoint) bool {
	var add []string
	for _, h := range e.Hostnames {
		if !slices.ContainsFunc(pod.Spec.HostAliases, func(a corev1.HostAlias) bool { return slices.Contains(a.Hostnames, h) }) {
			add = append(add, h)
		}
	}
	if len(add) == 0 {
		return false
	}
	for _, ip := range [...]string{e.Address, e.Address6} {
		if ip == "" {
			continue
		}
		i := slices.IndexFunc(pod.Spec.HostAliases, func(a corev1.HostAlias) bool { return a.IP == ip })
		if i < 0 {
			pod.Spec.HostAliases = append(pod.Spec.HostAliases, corev1.HostAlias{IP: ip})
			i = len(pod.Spec.HostAliases) - 1
		}
		pod.Spec.HostAliases[i].Hostnames = append(pod.Spec.HostAliases[i].Hostnames, add...)
	}
	return true
}

func findCondition(conds []metav1.Condition, t string) *metav1.Condition {
	for i := range conds {
		if conds[i].Type == t {
			return &conds[i]
		}
	}
	return nil
}
