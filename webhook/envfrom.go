package webhook

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// EnvFromMaySet returns the first of a container's envFrom sources that may set the variable
// name, or nil: a ConfigMap or Secret may hold any key, so a source may set every name that starts
// with its prefix (every name, without a prefix). The webhook cannot see the keys: they are read
// by the kubelet when the container starts, from objects that may not exist yet at admission, and
// reading every Secret of the cluster is not a privilege a webhook should hold. Since a variable
// in env wins over envFrom, injecting such a name could silently replace the user's value: it is
// not injected (the user's value, or none, rather than ours in its place).
func EnvFromMaySet(sources []corev1.EnvFromSource, name string) *corev1.EnvFromSource {
	for i := range sources {
		if strings.HasPrefix(name, sources[i].Prefix) {
			return &sources[i]
		}
	}
	return nil
}

// envFromWarnings says, for each container of the mutated pod, which variables of eps were left
// out because its envFrom may set them, so that whoever creates the pod learns why they are
// missing. Containers without envFrom cost nothing.
func envFromWarnings(pod *Pod, eps []Endpoint) []string {
	var out []string
	for _, cs := range [...][]Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range cs {
			if len(c.EnvFrom) == 0 {
				continue
			}
			if names, src := leftToEnvFrom(c, eps); len(names) > 0 {
				out = append(out, envFromWarning(c.Name, src, names))
			}
		}
	}
	return out
}

// leftToEnvFrom lists the variables of eps that the mutated container c lacks because its envFrom
// may set them, and the first source that may.
func leftToEnvFrom(c Container, eps []Endpoint) (names []string, first *corev1.EnvFromSource) {
	for _, ep := range eps {
		for _, e := range ep.Env {
			src := EnvFromMaySet(c.EnvFrom, e.Name)
			if src == nil || hasEnv(c.Env, e.Name) || slices.Contains(names, e.Name) {
				continue
			}
			names = append(names, e.Name)
			if first == nil {
				first = src
			}
		}
	}
	return names, first
}

// envFromWarning: "magic-ip: container app: A, B, C and 5 more not injected: envFrom configMapRef
// app-config (no prefix) may set them, and an injected value would override it".
func envFromWarning(container string, src *corev1.EnvFromSource, names []string) string {
	list := strings.Join(names[:min(len(names), 3)], ", ")
	if len(names) > 3 {
		list += " and " + strconv.Itoa(len(names)-3) + " more"
	}
	what := "an envFrom source"
	switch {
	case src.ConfigMapRef != nil:
		what = "envFrom configMapRef " + src.ConfigMapRef.Name
	case src.SecretRef != nil:
		what = "envFrom secretRef " + src.SecretRef.Name
	}
	prefix := "no prefix"
	if src.Prefix != "" {
		prefix = fmt.Sprintf("prefix %q", src.Prefix)
	}
	return fmt.Sprintf("magic-ip: container %s: %s not injected: %s (%s) may set them, and an injected value would override it",
		container, list, what, prefix)
}
