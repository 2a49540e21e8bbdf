package webhook

import (
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"

	evanjsonpatch "github.com/evanphx/json-patch/v5"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/utils/ptr"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
)

// fuzzMagicIPs are two MagicIPs whose variables overlap (NODE_NAME, NODE_IP from both); the
// first also injects the pod's identity.
func fuzzMagicIPs() []v1alpha1.MagicIP {
	return []v1alpha1.MagicIP{
		newMIP("datadog", testAddr, 0,
			withPorts(
				v1alpha1.MagicIPPort{Name: "apm", Port: 8126},
				v1alpha1.MagicIPPort{Name: "dogstatsd", Port: 8125, Protocol: v1alpha1.ProtocolUDP},
			),
			withInject(v1alpha1.Inject{
				ExtraEnv:     []v1alpha1.EnvTemplate{{Name: "DD_AGENT_HOST", Value: "{address}"}},
				Hostnames:    []string{"datadog.node.local"},
				NodeMetadata: true,
				PodIdentity:  identity("DD_ENTITY_ID", v1alpha1.FieldPodUID, "POD_NAME", v1alpha1.FieldPodName),
			})),
		newMIP("otel.collector-v2", "fd00::10", 1,
			withPorts(v1alpha1.MagicIPPort{Name: "otlp-grpc", Port: 4317}),
			withInject(v1alpha1.Inject{
				Env:          ptr.To(false),
				ExtraEnv:     []v1alpha1.EnvTemplate{{Name: "OTEL_EXPORTER_OTLP_ENDPOINT", Value: "http://[{address}]:{port:otlp-grpc}"}},
				Hostnames:    []string{"otel.node.local", "collector.node.local"},
				NodeMetadata: true,
			})),
	}
}

// FuzzMutate decodes a pod as the handler does and mutates it: no panic, the handler's patch
// (only adds) turns the pod into the mutated one, a second Mutate changes nothing, every container
// has each injected variable exactly once (or the user's copies, untouched, or none when its
// envFrom may set it), before the user's entries, and what the user set is unchanged.
func FuzzMutate(f *testing.F) {
	f.Add([]byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","namespace":"apps"},"spec":{"containers":[{"name":"app","image":"nginx"}]}}`))
	f.Add([]byte(`{"metadata":{"generateName":"web-","annotations":{"magic-ip.dev/injected":"zz,datadog","team":"web"}},` +
		`"spec":{"initContainers":[{"name":"init","env":[{"name":"NODE_NAME","value":"mine"}]}],` +
		`"containers":[{"name":"app","env":[{"name":"DD_AGENT_HOST","value":"10.0.0.5"},{"name":"DD_ENTITY_ID","value":"en.mine"},{"name":"DATADOG_MAGIC_HOST","valueFrom":{"fieldRef":{"fieldPath":"status.podIP"}}},{"name":"A","value":"1"},{"name":"A","value":"2"}]},{"name":"sidecar"}],` +
		`"hostAliases":[{"ip":"169.254.210.210","hostnames":["mine.local"]},{"ip":"10.9.9.9","hostnames":["otel.node.local","otel.node.local"]}]}}`))
	f.Add([]byte(`{"spec":{"initContainers":[{"name":"i","envFrom":[{"configMapRef":{"name":"all"}}]}],` +
		`"containers":[{"name":"a","envFrom":[{"prefix":"DD_","secretRef":{"name":"s"}},{"prefix":"NODE_I"}],"env":[{"name":"X","value":"$(DD_AGENT_HOST)"}]}]}}`))
	f.Add([]byte(`{"spec":{"containers":[]}}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"spec":{"containers":"nope"}}`))
	f.Add([]byte("\x00\xffnot json{"))
	// Keys in another case decode all the same; an empty annotations map is left out when encoded.
	f.Add([]byte(`{"metAdAtA":{"AnnotAtions":{}},"Spec":{"Containers":[{"Name":"a","ENV":[]}],"hostaliases":[]}}`))
	mips := fuzzMagicIPs()
	eps := endpoints(mips)
	f.Fuzz(func(t *testing.T, raw []byte) {
		var decoded corev1.Pod
		if err := json.Unmarshal(raw, &decoded); err != nil {
			t.Skip()
		}
		// The API server sends its own encoding of the pod (lower-case keys, empty maps and lists
		// left out) and applies the patch to that: go on with the pod as the handler would get it.
		pod := &corev1.Pod{}
		if err := json.Unmarshal(mustJSON(t, &decoded), pod); err != nil {
			t.Fatalf("decode the canonical form: %v", err)
		}
		before := pod.DeepCopy()
		mutate(pod, eps)

		checkPatch(t, before, pod)

		// The handler decodes only what Mutate and Patch read: the same patch comes out.
		partial, err := DecodePod(mustJSON(t, before))
		if err != nil {
			t.Fatalf("DecodePod of a pod json.Unmarshal decodes: %v", err)
		}
		shape := ShapeOf(partial)
		Mutate(partial, eps)
		if got, want := mustJSON(t, Patch(shape, partial)), mustJSON(t, Patch(ShapeOf(viewOf(before)), viewOf(pod))); string(got) != string(want) {
			t.Fatalf("patch from the decoded part of the pod:\ngot  %s\nwant %s", got, want)
		}

		again := pod.DeepCopy()
		if mutate(again, eps) {
			t.Fatalf("second Mutate() = true:\nafter first  %s\nafter second %s", toJSON(pod), toJSON(again))
		}
		if !equality.Semantic.DeepEqual(again, pod) {
			t.Fatalf("second Mutate changed the pod")
		}

		injected := map[string]corev1.EnvVar{} // first definition wins, in MagicIP order
		var order []string
		for _, m := range mips {
			for _, e := range Env(m) {
				if _, ok := injected[e.Name]; !ok {
					injected[e.Name] = e
					order = append(order, e.Name)
				}
			}
		}
		checkContainers(t, "initContainers", before.Spec.InitContainers, pod.Spec.InitContainers, injected, order)
		checkContainers(t, "containers", before.Spec.Containers, pod.Spec.Containers, injected, order)
		checkHostAliases(t, before.Spec.HostAliases, pod.Spec.HostAliases, mips)

		// Nothing but env, hostAliases and the injected annotation changes.
		b, a := before.DeepCopy(), pod.DeepCopy()
		for _, p := range []*corev1.Pod{a, b} {
			p.Spec.HostAliases = nil
			for i := range p.Spec.InitContainers {
				p.Spec.InitContainers[i].Env = nil
			}
			for i := range p.Spec.Containers {
				p.Spec.Containers[i].Env = nil
			}
			delete(p.Annotations, InjectedAnnotation)
			if len(p.Annotations) == 0 {
				p.Annotations = nil
			}
		}
		if !equality.Semantic.DeepEqual(a, b) {
			t.Fatalf("Mutate changed more than env, hostAliases and its annotation:\nbefore %s\nafter  %s", toJSON(b), toJSON(a))
		}
		got := strings.Split(pod.Annotations[InjectedAnnotation], ",")
		if !slices.IsSorted(got) || !slices.Contains(got, "datadog") || !slices.Contains(got, "otel.collector-v2") {
			t.Fatalf("annotation %s = %q, want a sorted list with both MagicIPs", InjectedAnnotation, pod.Annotations[InjectedAnnotation])
		}
	})
}

func checkContainers(t *testing.T, kind string, before, after []corev1.Container, injected map[string]corev1.EnvVar, order []string) {
	t.Helper()
	if len(after) != len(before) {
		t.Fatalf("%s: %d after Mutate, %d before", kind, len(after), len(before))
	}
	for i := range after {
		b, a := before[i].Env, after[i].Env
		if len(a) < len(b) || !equality.Semantic.DeepEqual(a[len(a)-len(b):], b) {
			t.Fatalf("%s[%d]: the user's env changed or is not last:\nbefore %s\nafter  %s", kind, i, toJSON(b), toJSON(a))
		}
		count := func(env []corev1.EnvVar, name string) int {
			n := 0
			for _, e := range env {
				if e.Name == name {
					n++
				}
			}
			return n
		}
		// Injected: the variables the user does not set, in env or possibly through envFrom.
		added := func(name string) bool {
			return count(b, name) == 0 && EnvFromMaySet(before[i].EnvFrom, name) == nil
		}
		for _, name := range order {
			want := count(b, name)
			if added(name) {
				want = 1
			}
			if got := count(a, name); got != want {
				t.Fatalf("%s[%d]: %s appears %d times, want %d", kind, i, name, got, want)
			}
		}
		// What was put before the user's entries: the injected variables, in order, as Env gives them.
		var wantAdded []corev1.EnvVar
		for _, name := range order {
			if added(name) {
				wantAdded = append(wantAdded, injected[name])
			}
		}
		if added := a[:len(a)-len(b)]; len(added)+len(wantAdded) > 0 && !equality.Semantic.DeepEqual(added, wantAdded) {
			t.Fatalf("%s[%d]: put first %s, want %s", kind, i, toJSON(added), toJSON(wantAdded))
		}
	}
}

func checkHostAliases(t *testing.T, before, after []corev1.HostAlias, mips []v1alpha1.MagicIP) {
	t.Helper()
	if len(after) < len(before) {
		t.Fatalf("hostAliases: %d after Mutate, %d before", len(after), len(before))
	}
	mapped := func(aliases []corev1.HostAlias, h string) (ips []string) {
		for _, a := range aliases {
			for _, x := range a.Hostnames {
				if x == h {
					ips = append(ips, a.IP)
				}
			}
		}
		return ips
	}
	for i := range before {
		a, b := after[i], before[i]
		if a.IP != b.IP || len(a.Hostnames) < len(b.Hostnames) || !slices.Equal(a.Hostnames[:len(b.Hostnames)], b.Hostnames) {
			t.Fatalf("hostAliases[%d]: the user's entry changed: before %v, after %v", i, b, a)
		}
	}
	for _, m := range mips {
		for _, h := range m.Spec.Inject.Hostnames {
			was, is := mapped(before, h), mapped(after, h)
			switch {
			case len(was) > 0 && !slices.Equal(was, is):
				t.Fatalf("hostname %s: mapped to %v by the user, to %v after Mutate", h, was, is)
			case len(was) == 0 && !slices.Equal(is, []string{m.Spec.Address}):
				t.Fatalf("hostname %s: mapped to %v after Mutate, want once to %s", h, is, m.Spec.Address)
			}
		}
	}
}

// checkPatch applies Patch(before, after), as the API server would, to before as the API server
// serializes it, and compares with after.
func checkPatch(t *testing.T, before, after *corev1.Pod) {
	t.Helper()
	ops := Patch(ShapeOf(viewOf(before)), viewOf(after))
	for _, op := range ops {
		if op.Operation != "add" {
			t.Fatalf("patch operation %s %s: the webhook only adds", op.Operation, op.Path)
		}
	}
	encoded, err := EncodePatch(ops)
	if err != nil {
		t.Fatalf("EncodePatch: %v", err)
	}
	if want := mustJSON(t, ops); string(encoded) != string(want) {
		t.Fatalf("EncodePatch differs from json.Marshal:\ngot  %s\nwant %s", encoded, want)
	}
	p, err := evanjsonpatch.DecodePatch(encoded)
	if err != nil {
		t.Fatalf("decode patch: %v", err)
	}
	patched, err := p.Apply(mustJSON(t, before))
	if err != nil {
		t.Fatalf("apply patch %s: %v", mustJSON(t, ops), err)
	}
	var got, want any
	if err := json.Unmarshal(patched, &got); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(mustJSON(t, after), &want); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("patched pod differs from the mutated one:\npatch %s\ngot  %s\nwant %s", mustJSON(t, ops), patched, mustJSON(t, after))
	}
}
