package v1alpha1_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestGeneratedFilesUpToDate regenerates the deepcopy code and the CRD from the types in a scratch
// copy of the module and fails when the committed files differ: run `make generate manifests`.
func TestGeneratedFilesUpToDate(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	gen := controllerGen(t, root)
	scratch := t.TempDir()
	for _, f := range []string{"go.mod", "go.sum"} {
		copyFile(t, filepath.Join(root, f), filepath.Join(scratch, f))
	}
	srcs, err := filepath.Glob(filepath.Join(root, "api", "v1alpha1", "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	for _, src := range srcs {
		copyFile(t, src, filepath.Join(scratch, "api", "v1alpha1", filepath.Base(src)))
	}
	cmd := exec.Command(gen, "object", "crd", "paths=./api/...", "output:crd:dir="+filepath.Join(scratch, "crd"))
	cmd.Dir = scratch
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("controller-gen: %v\n%s", err, out)
	}
	for got, want := range map[string]string{
		filepath.Join(scratch, "api", "v1alpha1", "zz_generated.deepcopy.go"): filepath.Join(root, "api", "v1alpha1", "zz_generated.deepcopy.go"),
		filepath.Join(scratch, "crd", "magic-ip.dev_magicips.yaml"):           filepath.Join(root, "manifests", "crd", "magic-ip.dev_magicips.yaml"),
	} {
		g, err1 := os.ReadFile(got)
		w, err2 := os.ReadFile(want)
		if err1 != nil || err2 != nil {
			t.Fatalf("read generated files: %v %v", err1, err2)
		}
		if !bytes.Equal(g, w) {
			t.Errorf("%s is stale: run `make generate manifests` and commit the result", want)
		}
	}
}

// controllerGen is $CONTROLLER_GEN (set by the Makefile), or else built from test/tools/codegen.
func controllerGen(t *testing.T, root string) string {
	if p := os.Getenv("CONTROLLER_GEN"); p != "" {
		return p
	}
	out := filepath.Join(t.TempDir(), "controller-gen")
	cmd := exec.Command("go", "build", "-o", out, "sigs.k8s.io/controller-tools/cmd/controller-gen")
	cmd.Dir = filepath.Join(root, "test", "tools", "codegen")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build controller-gen: %v\n%s", err, b)
	}
	return out
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
