package e2e

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/magic-ip/magic-ip/api/v1alpha1"
	"github.com/magic-ip/magic-ip/test/harness"
	"github.com/magic-ip/magic-ip/webhook"
)

// TestExamples checks every file in manifests/examples against a real API server: its MagicIPs
// are created (so the CRD's schema and CEL rules accept them), every other object passes a
// server-side dry run with strict field validation (a misspelt field fails), and each MagicIP fits
// its producer sketch: the selector selects the DaemonSet's pods in the right namespace, the pods
// listen on the ports and have a readiness probe, and every placeholder names one of its ports.
func TestExamples(t *testing.T) {
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "manifests", "examples")
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 4 {
		t.Fatalf("want at least 4 examples in %s, found %d: %v", dir, len(files), files)
	}
	readme, err := os.ReadFile(filepath.Join(dir, "README.md"))
	if err != nil {
		t.Fatalf("manifests/examples/README.md: %v", err)
	}

	cp := harness.StartControlPlane(t)
	addresses := map[string]string{} // magic address -> file, across all examples
	for _, file := range files {
		name := filepath.Base(file)
		t.Run(strings.TrimSuffix(name, ".yaml"), func(t *testing.T) {
			ctx := t.Context()
			if !bytes.Contains(readme, []byte("("+name+")")) {
				t.Errorf("README.md has no link to %s", name)
			}
			objs := decodeExample(t, file)
			var mips []v1alpha1.MagicIP
			var daemonSets []appsv1.DaemonSet
			namespaces := map[string]bool{}
			for _, o := range objs {
				switch o.GetObjectKind().GroupVersionKind().Kind {
				case "MagicIP":
					var m v1alpha1.MagicIP
					fromUnstructured(t, o, &m)
					mips = append(mips, m)
				case "DaemonSet":
					var ds appsv1.DaemonSet
					fromUnstructured(t, o, &ds)
					daemonSets = append(daemonSets, ds)
				case "Namespace":
					namespaces[o.GetName()] = true
				}
			}
			if len(mips) == 0 || len(daemonSets) == 0 {
				t.Fatalf("%s holds %d MagicIPs and %d DaemonSets, want at least one of each", name, len(mips), len(daemonSets))
			}

			// The API server: MagicIPs for real, the rest dry-run. A namespace is dry-run and then
			// created, so that the namespaced objects' dry runs can find it.
			for _, o := range objs {
				desc := o.GetKind() + " " + o.GetNamespace() + "/" + o.GetName()
				strict := client.FieldValidation("Strict")
				switch o.GetKind() {
				case "MagicIP":
					if err := cp.Client.Create(ctx, o.DeepCopy(), strict); err != nil {
						t.Errorf("create %s: %v", desc, err)
					}
				case "Namespace":
					if err := cp.Client.Create(ctx, o.DeepCopy(), strict, client.DryRunAll); err != nil {
						t.Errorf("dry-run create %s: %v", desc, err)
					}
					if err := cp.Client.Create(ctx, o.DeepCopy(), strict); err != nil {
						t.Errorf("create %s: %v", desc, err)
					}
				}
			}
			for _, o := range objs {
				if k := o.GetKind(); k == "MagicIP" || k == "Namespace" {
					continue
				}
				if err := cp.Client.Create(ctx, o.DeepCopy(), client.FieldValidation("Strict"), client.DryRunAll); err != nil {
					t.Errorf("dry-run create %s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
				}
			}

			for _, m := range mips {
				// Read back what the API server stored (defaults applied: protocol, targetPort).
				var stored v1alpha1.MagicIP
				if err := cp.Client.Get(ctx, client.ObjectKey{Name: m.Name}, &stored); err != nil {
					t.Errorf("get MagicIP %s: %v", m.Name, err)
					continue
				}
				if other, ok := addresses[stored.Spec.Address]; ok {
					t.Errorf("MagicIP %s uses %s, already used by %s: give each example its own address", m.Name, stored.Spec.Address, other)
				}
				addresses[stored.Spec.Address] = name
				checkExampleMagicIP(t, stored, daemonSets, namespaces)
			}
		})
	}
}

// checkExampleMagicIP checks that the MagicIP fits its producer sketch.
func checkExampleMagicIP(t *testing.T, m v1alpha1.MagicIP, daemonSets []appsv1.DaemonSet, namespaces map[string]bool) {
	t.Helper()
	spec := m.Spec
	if !namespaces[spec.Producer.Namespace] {
		t.Errorf("MagicIP %s: producer namespace %q has no Namespace object in the example", m.Name, spec.Producer.Namespace)
	}
	sel, err := metav1.LabelSelectorAsSelector(&metav1.LabelSelector{
		MatchLabels:      spec.Producer.Selector.MatchLabels,
		MatchExpressions: convertRequirements(spec.Producer.Selector.MatchExpressions),
	})
	if err != nil {
		t.Errorf("MagicIP %s: selector: %v", m.Name, err)
		return
	}
	var producers []appsv1.DaemonSet
	for _, ds := range daemonSets {
		if ds.Namespace == spec.Producer.Namespace && sel.Matches(labels.Set(ds.Spec.Template.Labels)) {
			producers = append(producers, ds)
		}
	}
	if len(producers) == 0 {
		var seen []string
		for _, ds := range daemonSets {
			seen = append(seen, ds.Namespace+"/"+ds.Name+" "+labels.Set(ds.Spec.Template.Labels).String())
		}
		t.Errorf("MagicIP %s: selector %q in namespace %q selects none of the example's DaemonSet pods (%s)",
			m.Name, sel, spec.Producer.Namespace, strings.Join(seen, "; "))
	}
	for _, ds := range producers {
		for _, p := range spec.Ports {
			target := p.TargetPort
			if target == 0 {
				target = p.Port
			}
			c := containerWithPort(ds.Spec.Template.Spec.Containers, target, corev1.Protocol(p.Protocol))
			if c == nil {
				t.Errorf("MagicIP %s port %s (%d/%s): DaemonSet %s/%s has no container port %d/%s",
					m.Name, p.Name, p.Port, p.Protocol, ds.Namespace, ds.Name, target, p.Protocol)
				continue
			}
			if c.ReadinessProbe == nil {
				t.Errorf("DaemonSet %s/%s container %s serves port %s without a readiness probe: magic-ip routes only to Ready producers",
					ds.Namespace, ds.Name, c.Name, p.Name)
			}
		}
		for _, c := range ds.Spec.Template.Spec.Containers {
			if !pinnedImage(c.Image) {
				t.Errorf("DaemonSet %s/%s container %s: image %q is not pinned to a version", ds.Namespace, ds.Name, c.Name, c.Image)
			}
		}
	}
	placeholder := regexp.MustCompile(`\{[^}]*\}`)
	for _, e := range spec.Inject.ExtraEnv {
		for _, ph := range placeholder.FindAllString(e.Value, -1) {
			if ph == "{address}" || ph == "{port}" {
				continue
			}
			portName, ok := strings.CutPrefix(strings.TrimSuffix(ph, "}"), "{port:")
			if !ok || !slices.ContainsFunc(spec.Ports, func(p v1alpha1.MagicIPPort) bool { return p.Name == portName }) {
				t.Errorf("MagicIP %s extraEnv %s=%q: placeholder %s does not name a port of this MagicIP", m.Name, e.Name, e.Value, ph)
			}
		}
		if v := webhook.ExpandTemplate(e.Value, spec); strings.ContainsAny(v, "{}") {
			t.Errorf("MagicIP %s extraEnv %s=%q expands to %q: a placeholder is left", m.Name, e.Name, e.Value, v)
		}
	}
}

func containerWithPort(cs []corev1.Container, port int32, proto corev1.Protocol) *corev1.Container {
	for i := range cs {
		for _, p := range cs[i].Ports {
			pp := p.Protocol
			if pp == "" {
				pp = corev1.ProtocolTCP
			}
			if p.ContainerPort == port && pp == proto {
				return &cs[i]
			}
		}
	}
	return nil
}

// pinnedImage: a tag that is not "latest", or a digest.
func pinnedImage(ref string) bool {
	if strings.Contains(ref, "@sha256:") {
		return true
	}
	i := strings.LastIndex(ref, ":")
	return i > strings.LastIndex(ref, "/") && ref[i+1:] != "" && ref[i+1:] != "latest"
}

func convertRequirements(rs []v1alpha1.LabelSelectorRequirement) []metav1.LabelSelectorRequirement {
	var out []metav1.LabelSelectorRequirement
	for _, r := range rs {
		out = append(out, metav1.LabelSelectorRequirement{Key: r.Key, Operator: r.Operator, Values: r.Values})
	}
	return out
}

// decodeExample reads every object of a multi-document YAML file.
func decodeExample(t *testing.T, path string) []*unstructured.Unstructured {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := utilyaml.NewYAMLReader(bufio.NewReader(f))
	var objs []*unstructured.Unstructured
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objs
		}
		if err != nil {
			t.Fatalf("%s: read document %d: %v", path, len(objs)+1, err)
		}
		j, err := yaml.YAMLToJSON(doc)
		if err != nil {
			t.Fatalf("%s: document %d: %v", path, len(objs)+1, err)
		}
		if s := strings.TrimSpace(string(j)); s == "null" || s == "{}" {
			continue // only comments
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(j); err != nil {
			t.Fatalf("%s: document %d: %v", path, len(objs)+1, err)
		}
		objs = append(objs, u)
	}
}

// fromUnstructured converts to a Go type, failing on fields the type does not have.
func fromUnstructured(t *testing.T, u *unstructured.Unstructured, into any) {
	t.Helper()
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, into, true); err != nil {
		t.Errorf("%s %s: %v", u.GetKind(), u.GetName(), err)
	}
}
