package webhook

import (
	"strconv"
	"strings"

	jsonpatch "gomodules.xyz/jsonpatch/v2"
)

// Shape is what Patch needs to know of a pod before Mutate: the lengths of the lists Mutate
// appends to, and the annotations. Taking it costs a few small slices where a deep copy of the
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
// is that pod as Mutate left it: Mutate only appends env vars, hostAliases and hostnames, and sets
// one annotation, so the patch is built from those appends directly (no marshal-and-diff of the
// whole pod on every admission request).
func Patch(before Shape, after *Pod) []jsonpatch.JsonPatchOperation {
	lists := [...]struct {
		field  string
		before []int
		after  []Container
	}{{"initContainers", before.initEnv, after.Spec.InitContainers}, {"containers", before.env, after.Spec.Containers}}
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
	add := func(path string, v any) {
		ops = append(ops, jsonpatch.JsonPatchOperation{Operation: "add", Path: path, Value: v})
	}
	// Values are pointers into after where they can be (boxing a pointer costs no allocation);
	// EncodePatch, like json.Marshal, writes what they point to.
	for _, l := range lists {
		for i := range l.after {
			if env := l.after[i].Env; len(env) > l.before[i] {
				path := "/spec/" + l.field + "/" + strconv.Itoa(i) + "/env"
				if l.before[i] == 0 {
					add(path, env)
					continue
				}
				path += "/-"
				for k := l.before[i]; k < len(env); k++ {
					add(path, &env[k])
				}
			}
		}
	}
	if len(before.aliases) == 0 {
		if len(after.Spec.HostAliases) > 0 {
			add("/spec/hostAliases", after.Spec.HostAliases)
		}
	} else {
		for j := range after.Spec.HostAliases {
			a := &after.Spec.HostAliases[j]
			switch {
			case j >= len(before.aliases):
				add("/spec/hostAliases/-", a)
			case len(a.Hostnames) == before.aliases[j]:
			case before.aliases[j] == 0:
				add("/spec/hostAliases/"+strconv.Itoa(j)+"/hostnames", a.Hostnames)
			default:
				path := "/spec/hostAliases/" + strconv.Itoa(j) + "/hostnames/-"
				for k := before.aliases[j]; k < len(a.Hostnames); k++ {
					add(path, &a.Hostnames[k])
				}
			}
		}
	}
	if v, ok := after.Annotations[InjectedAnnotation]; ok && v != before.injected {
		if before.annotations == 0 {
			add("/metadata/annotations", map[string]string{InjectedAnnotation: v})
		} else {
			// add replaces an existing member of an object (RFC 6902 4.1)
			add(injectedAnnotationPath, v)
		}
	}
	return ops
}

// opsFor is how many operations append a list of n elements to one of before: none, one that
// sets the whole list when before is 0 (the field may be absent), else one per new element.
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
