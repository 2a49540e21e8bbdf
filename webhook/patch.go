package webhook

import (
	"fmt"
	"strings"

	jsonpatch "gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"
)

// Patch lists the JSON patch operations that turn before into after, where after is before as
// Mutate left it: Mutate only appends env vars, hostAliases and hostnames, and sets one
// annotation, so the patch is built from those appends directly (no marshal-and-diff of the whole
// pod on every admission request).
func Patch(before, after *corev1.Pod) []jsonpatch.JsonPatchOperation {
	var ops []jsonpatch.JsonPatchOperation
	add := func(path string, v any) {
		ops = append(ops, jsonpatch.JsonPatchOperation{Operation: "add", Path: path, Value: v})
	}
	for _, list := range []struct {
		field         string
		before, after []corev1.Container
	}{{"initContainers", before.Spec.InitContainers, after.Spec.InitContainers}, {"containers", before.Spec.Containers, after.Spec.Containers}} {
		for i := range list.after {
			appendOps(add, fmt.Sprintf("/spec/%s/%d/env", list.field, i), list.before[i].Env, list.after[i].Env)
		}
	}
	if len(before.Spec.HostAliases) == 0 {
		if len(after.Spec.HostAliases) > 0 {
			add("/spec/hostAliases", after.Spec.HostAliases)
		}
	} else {
		for j, a := range after.Spec.HostAliases {
			if j >= len(before.Spec.HostAliases) {
				add("/spec/hostAliases/-", a)
				continue
			}
			appendOps(add, fmt.Sprintf("/spec/hostAliases/%d/hostnames", j), before.Spec.HostAliases[j].Hostnames, a.Hostnames)
		}
	}
	if v, ok := after.Annotations[InjectedAnnotation]; ok && v != before.Annotations[InjectedAnnotation] {
		if len(before.Annotations) == 0 {
			add("/metadata/annotations", map[string]string{InjectedAnnotation: v})
		} else {
			op := "add" // add replaces an existing member of an object (RFC 6902 4.1)
			ops = append(ops, jsonpatch.JsonPatchOperation{Operation: op, Path: "/metadata/annotations/" + escape(InjectedAnnotation), Value: v})
		}
	}
	return ops
}

// appendOps adds the elements after has beyond before: the whole list when before is empty
// (the field may be absent), else one "add .../-" per new element.
func appendOps[E any](add func(string, any), path string, before, after []E) {
	if len(after) == len(before) {
		return
	}
	if len(before) == 0 {
		add(path, after)
		return
	}
	for _, e := range after[len(before):] {
		add(path+"/-", e)
	}
}

// escape encodes a JSON pointer token (RFC 6901).
func escape(s string) string { return strings.NewReplacer("~", "~0", "/", "~1").Replace(s) }
