package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/magic-ip/magic-ip/test/harness"
)

// TestDemo runs the demo program once, as `make demo` does, so it cannot rot: it must pass its own
// checks and leave no namespace behind.
func TestDemo(t *testing.T) {
	harness.RequireRoot(t)
	bin, err := harness.Build(t.TempDir(), "./test/demo")
	if err != nil {
		t.Fatal(err)
	}
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), bin)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "all checks passed.") {
		t.Fatalf("demo failed: %v\n%s", err, out)
	}
	for _, want := range []string{"refused in", "apm-server-1 (on demo-node-1)", "apm-server-2 (on demo-node-2)", "0 failed"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	entries, _ := os.ReadDir("/run/netns")
	prefix := fmt.Sprintf("mip%d-", cmd.Process.Pid)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			t.Errorf("demo left netns %s behind", e.Name())
		}
	}
}
