package webhook

import (
	"bytes"
	"encoding/json"
	"slices"
	"sync"

	jsonpatch "gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"
)

// EncodePatch writes ops as the JSON array json.Marshal writes for them, byte for byte, with
// direct writers for the value types Patch produces (reflection-based marshalling of every
// operation was the largest cost of an admission request). Other values go through json.Marshal.
func EncodePatch(ops []jsonpatch.JsonPatchOperation) ([]byte, error) {
	// Written into a reused buffer, returned as an exact copy: one allocation of the patch's size.
	buf := patchBuffers.Get().(*[]byte)
	defer patchBuffers.Put(buf)
	b := append((*buf)[:0], '[')
	for i, op := range ops {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"op":`...)
		b = appendString(b, op.Operation)
		b = append(b, `,"path":`...)
		b = appendString(b, op.Path)
		if op.Value == nil && op.Operation != "add" && op.Operation != "replace" {
			b = append(b, '}')
			continue
		}
		b = append(b, `,"value":`...)
		var err error
		if b, err = appendValue(b, op.Value); err != nil {
			return nil, err
		}
		b = append(b, '}')
	}
	b = append(b, ']')
	if cap(b) <= maxPooledPatch {
		*buf = b
	}
	return bytes.Clone(b), nil
}

// patchBuffers holds the buffers EncodePatch writes into; one larger than maxPooledPatch (a pod
// with a very long list of containers) is left to the garbage collector rather than kept.
var patchBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

const maxPooledPatch = 64 << 10

func appendValue(b []byte, v any) ([]byte, error) {
	switch v := v.(type) {
	case nil:
		return append(b, "null"...), nil
	case string:
		return appendString(b, v), nil
	case []string:
		return appendList(b, v, func(b []byte, s string) ([]byte, error) { return appendString(b, s), nil })
	case map[string]string:
		if v == nil {
			return append(b, "null"...), nil
		}
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		b = append(b, '{')
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(appendString(b, k), ':')
			b = appendString(b, v[k])
		}
		return append(b, '}'), nil
	case *string:
		if v == nil {
			return append(b, "null"...), nil
		}
		return appendString(b, *v), nil
	case *corev1.EnvVar:
		if v == nil {
			return append(b, "null"...), nil
		}
		return appendEnvVar(b, *v)
	case *corev1.HostAlias:
		if v == nil {
			return append(b, "null"...), nil
		}
		return appendHostAlias(b, *v)
	case corev1.EnvVar:
		return appendEnvVar(b, v)
	case []corev1.EnvVar:
		return appendList(b, v, appendEnvVar)
	case corev1.HostAlias:
		return appendHostAlias(b, v)
	case []corev1.HostAlias:
		return appendList(b, v, appendHostAlias)
	}
	return appendMarshal(b, v)
}

func appendList[E any](b []byte, list []E, each func([]byte, E) ([]byte, error)) ([]byte, error) {
	if list == nil {
		return append(b, "null"...), nil
	}
	b = append(b, '[')
	for i, e := range list {
		if i > 0 {
			b = append(b, ',')
		}
		var err error
		if b, err = each(b, e); err != nil {
			return nil, err
		}
	}
	return append(b, ']'), nil
}

// appendEnvVar writes a variable with a value or a field reference, the kinds Mutate injects;
// any other source goes through json.Marshal.
func appendEnvVar(b []byte, e corev1.EnvVar) ([]byte, error) {
	if f := e.ValueFrom; f != nil && (f.FieldRef == nil || *f != (corev1.EnvVarSource{FieldRef: f.FieldRef})) {
		return appendMarshal(b, e)
	}
	b = append(b, `{"name":`...)
	b = appendString(b, e.Name)
	if e.Value != "" {
		b = append(b, `,"value":`...)
		b = appendString(b, e.Value)
	}
	if f := e.ValueFrom; f != nil {
		b = append(b, `,"valueFrom":{"fieldRef":{`...)
		if f.FieldRef.APIVersion != "" {
			b = append(b, `"apiVersion":`...)
			b = appendString(b, f.FieldRef.APIVersion)
			b = append(b, ',')
		}
		b = append(b, `"fieldPath":`...)
		b = appendString(b, f.FieldRef.FieldPath)
		b = append(b, "}}"...)
	}
	return append(b, '}'), nil
}

func appendHostAlias(b []byte, a corev1.HostAlias) ([]byte, error) {
	b = append(b, `{"ip":`...)
	b = appendString(b, a.IP)
	if len(a.Hostnames) > 0 {
		b = append(b, `,"hostnames":`...)
		var err error
		if b, err = appendValue(b, a.Hostnames); err != nil {
			return nil, err
		}
	}
	return append(b, '}'), nil
}

// appendString writes s as a JSON string. Printable ASCII without characters JSON or HTML-safe
// encoding escape is written as it is; anything else goes through json.Marshal's escaping.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always marshals
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

func appendMarshal(b []byte, v any) ([]byte, error) {
	j, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return append(b, j...), nil
}
