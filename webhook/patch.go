package webhook

import (
	"strconv"
	"strings"

	jsonpatch "gomodules.xyz/jsonpatch/v2"
)

// Shape is what Patch needs to know of a pod before Mutate: the lengths of the lists Mutate
// adds to, and the annotations. Taking it costs a few small slices where a deep copy of the
// pod would cost the whole pod.
type Shape struct {
	initEnv, env []int
	// aliases is the number of hostnames of each hostAlias.
	aliases     []int
	annotations int
	injected    string
}

// ShapeOf records the shape of p.
func ShapeOf(p *Pod) Shape {
	s := Shape{
		initEnv:     make([]int, len(p.Spec.InitContainers)),
		env:         make([]int, len(p.Spec.Containers)),
		aliases:     make([]int, len(p.Spec.HostAliases)),
		annotations: len(p.Annotations),
	}
	for i, c := range p.Spec.InitContainers {
		s.initEnv[i] = len(c.Env)
	}
	for i, c := range p.Spec.Containers {
		s.env[i] = len(c.Env)
	}
	for i, a := range p.Spec.HostAliases {
		s.aliases[i] = len(a.Hostnames)
	}
	s.injected = p.Annotations[InjectedAnnotation]
	return s
}

// Patch lists the JSON patch operations that turn a pod of shape before into after, where after
// is that pod as Mutate left it: Mutate only puts env vars before a container's own, appends
// hostAliases and hostnames, and sets one annotation, so the patch is built from those additions
// directly (no marshal-and-diff of the whole pod on every admission request). Every operation is
// an "add": the pod's own entries are never rewritten, so fields this build does not know stay.
func Patch(before Shape, after *Pod) []jsonpatch.JsonPatchOperation {
	lists := [...]struct {
		path   string // of the list, up to the container's index
		before []int
		after  []Container
	}{{"/spec/initContainers/", before.initEnv, after.Spec.InitContainers}, {"/spec/containers/", before.env, after.Spec.Containers}}
	n := 2 // hostAliases (when the pod had none) and the annotation
	for _, l := range lists {
		for i := range l.after {
			n += opsFor(l.before[i], len(l.after[i].Env))
		}
	}
	for j, a := range after.Spec.HostAliases {
		switch {
		case len(before.aliases) == 0: // one operation sets the whole list, counted above
		case j >= len(before.aliases):
			n++
		default:
			n += opsFor(before.aliases[j], len(a.Hostnames))
		}
	}
	ops := make([]jsonpatch.JsonPatchOperation, 0, n)
	for _, l := range lists {
		for i := range l.after {
			ops = addNew(ops, l.path, i, "/env", l.before[i], l.after[i].Env, true)
		}
	}
	if len(before.aliases) == 0 {
		if len(after.Spec.HostAliases) > 0 {
			ops = append(ops, add("/spec/hostAliases", after.Spec.HostAliases))
		}
	} else {
		for j := range after.Spec.HostAliases {
			if j >= len(before.aliases) {
				ops = append(ops, add("/spec/hostAliases/-", &after.Spec.HostAliases[j]))
				continue
			}
			ops = addNew(ops, "/spec/hostAliases/", j, "/hostnames", before.aliases[j], after.Spec.HostAliases[j].Hostnames, false)
		}
	}
	if v, ok := after.Annotations[InjectedAnnotation]; ok && v != before.injected {
		if before.annotations == 0 {
			ops = append(ops, add("/metadata/annotations", map[string]string{InjectedAnnotation: v}))
		} else {
			// add replaces an existing member of an object (RFC 6902 4.1)
			ops = append(ops, add(injectedAnnotationPath, v))
		}
	}
	return ops
}

func add(path string, v any) jsonpatch.JsonPatchOperation {
	return jsonpatch.JsonPatchOperation{Operation: "add", Path: path, Value: v}
}

// addNew adds the operations that add the new elements of list, the list at prefix+i+suffix
// (built only when there is something to add), which had n elements before: none when nothing was
// added; one that sets the whole list when n was 0 (the field may be absent); else one operation
// per new element (opsFor counts them), all with one path. Appended elements (list[n:]) are added
// with "add .../-"; elements put at the head (list[:len(list)-n], the n old ones after them) with
// "add .../0", the last one first, so each lands before the one added after it. Elements go in as
// pointers into list (boxing a pointer costs no allocation); EncodePatch, like json.Marshal,
// writes what they point to.
func addNew[E any](ops []jsonpatch.JsonPatchOperation, prefix string, i int, suffix string, n int, list []E, atHead bool) []jsonpatch.JsonPatchOperation {
	if len(list) <= n {
		return ops
	}
	path := prefix + strconv.Itoa(i) + suffix
	if n == 0 {
		return append(ops, add(path, list))
	}
	if atHead {
		path += "/0"
		for k := len(list) - n - 1; k >= 0; k-- {
			ops = append(ops, add(path, &list[k]))
		}
		return ops
	}
	path += "/-"
	for k := n; k < len(list); k++ {
		ops = append(ops, add(path, &list[k]))
	}
	return ops
}

// opsFor is how many operations addNew adds for a list of n elements that had before.
func opsFor(before, n int) int {
	switch {
	case n <= before:
		return 0
	case before == 0:
		return 1
	}
	return n - before
}

// injectedAnnotationPath is the JSON pointer of the injected annotation.
var injectedAnnotationPath = "/metadata/annotations/" + escape(InjectedAnnotation)

// escape encodes a JSON pointer token (RFC 6901).
func escape(s string) string { return strings.NewReplacer("~", "~0", "/", "~1").Replace(s) }
