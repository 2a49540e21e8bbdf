package webhook

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	jsonpatch "gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/utils/ptr"
)

// TestEncodePatch: EncodePatch writes what json.Marshal writes, byte for byte, for the values
// Patch produces and for anything else.
func TestEncodePatch(t *testing.T) {
	fieldRef := func(name, path, apiVersion string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path, APIVersion: apiVersion}}}
	}
	add := func(path string, v any) jsonpatch.JsonPatchOperation {
		return jsonpatch.JsonPatchOperation{Operation: "add", Path: path, Value: v}
	}
	tests := map[string][]jsonpatch.JsonPatchOperation{
		"none":  nil,
		"empty": {},
		"env list": {add("/spec/containers/0/env", []corev1.EnvVar{
			{Name: "DD_AGENT_HOST", Value: "169.254.210.210"}, fieldRef("NODE_NAME", "spec.nodeName", ""), fieldRef("X", "metadata.name", "v1"), {Name: "EMPTY"},
		})},
		"one env var":      {add("/spec/containers/1/env/-", corev1.EnvVar{Name: "A", Value: "1"})},
		"nil env list":     {add("/spec/containers/0/env", []corev1.EnvVar(nil))},
		"empty env list":   {add("/spec/containers/0/env", []corev1.EnvVar{})},
		"nil value on add": {add("/x", nil)},
		"nil value on remove": {
			{Operation: "remove", Path: "/x"},
		},
		"other env sources go through json.Marshal": {add("/spec/containers/0/env", []corev1.EnvVar{
			{Name: "CPU", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.cpu", Divisor: resource.MustParse("1m")}}},
			{Name: "BOTH", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"},
				SecretKeyRef: &corev1.SecretKeySelector{Key: "k", LocalObjectReference: corev1.LocalObjectReference{Name: "s"}}}},
			{Name: "EMPTY_SOURCE", ValueFrom: &corev1.EnvVarSource{}},
		})},
		"strings needing escapes": {add("/spec/containers/0/env", []corev1.EnvVar{
			{Name: `Q"UOTE`, Value: `back\slash`}, {Name: "HTML", Value: "<a href='x'>&</a>"}, {Name: "CTRL", Value: "tab\tnl\n\x00\x7f"},
			{Name: "UNICODE", Value: "héllo \u2028 ✓"}, {Name: "INVALID_UTF8", Value: "\xff\xfe"},
		})},
		"hostAliases": {
			add("/spec/hostAliases", []corev1.HostAlias{{IP: "169.254.210.210", Hostnames: []string{"datadog.node.local", "dd"}}, {IP: "fd00::10"}}),
			add("/spec/hostAliases/-", corev1.HostAlias{IP: "169.254.0.1", Hostnames: []string{}}),
			add("/spec/hostAliases/0/hostnames", []string{"a.local"}),
			add("/spec/hostAliases/0/hostnames/-", "b.local"),
			add("/spec/hostAliases/1/hostnames", []string(nil)),
		},
		"annotations": {
			add("/metadata/annotations", map[string]string{InjectedAnnotation: "a,b", "z": "1", "a": "<>"}),
			add(injectedAnnotationPath, "datadog"),
			add("/metadata/annotations", map[string]string(nil)),
			add("/metadata/annotations", map[string]string{}),
		},
		"pointers, as Patch boxes elements of the pod": {
			add("/spec/containers/0/env/-", &corev1.EnvVar{Name: "A", Value: "1"}),
			add("/spec/containers/0/env/-", ptr.To(fieldRef("NODE_IP", "status.hostIP", ""))),
			add("/spec/hostAliases/-", &corev1.HostAlias{IP: "169.254.0.1", Hostnames: []string{"x.local"}}),
			add("/spec/hostAliases/0/hostnames/-", ptr.To("b.local")),
			add("/a", (*corev1.EnvVar)(nil)), add("/b", (*corev1.HostAlias)(nil)), add("/c", (*string)(nil)),
		},
		"other values go through json.Marshal": {add("/spec/x", map[string]int{"b": 2, "a": 1}), add("/spec/y", 3), add("/spec/z", []int{1})},
	}
	for name, ops := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := EncodePatch(ops)
			if err != nil {
				t.Fatal(err)
			}
			want, err := json.Marshal(ops)
			if err != nil {
				t.Fatal(err)
			}
			if ops == nil {
				want = []byte("[]") // an empty patch is an empty list, never null
			}
			if string(got) != string(want) {
				t.Errorf("EncodePatch:\ngot  %s\nwant %s", got, want)
			}
		})
	}
	big := make([]corev1.EnvVar, 2000) // a patch larger than the buffers kept for reuse
	for i := range big {
		big[i] = corev1.EnvVar{Name: "V" + strconv.Itoa(i), Value: strings.Repeat("x", 40)}
	}
	for range 2 {
		ops := []jsonpatch.JsonPatchOperation{add("/spec/containers/0/env", big)}
		got, err := EncodePatch(ops)
		if want := mustJSON(t, ops); err != nil || string(got) != string(want) {
			t.Errorf("EncodePatch of a %d-byte patch differs from json.Marshal (err %v)", len(want), err)
		}
	}
	if _, err := EncodePatch([]jsonpatch.JsonPatchOperation{{Operation: "add", Path: "/x", Value: func() {}}}); err == nil {
		t.Error("EncodePatch of an unencodable value: no error")
	}
}
