package images

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/magic-ip/magic-ip/test/harness"
)

func TestMain(m *testing.M) { os.Exit(harness.Main(m)) } // leak check: no network namespace of ours left

// requireIptablesModes skips (or, under CI, fails) when this machine cannot run both iptables
// variants the wrapper chooses between.
func requireIptablesModes(t *testing.T) {
	t.Helper()
	harness.RequireRoot(t)
	var missing []string
	for _, bin := range []string{"iptables-nft", "iptables-nft-save", "iptables-nft-restore", "iptables-legacy", "iptables-legacy-save",
		"iptables-legacy-restore", "ip6tables-legacy", "ip6tables-legacy-save"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, bin)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := "the iptables wrapper test needs both iptables variants; missing: " + strings.Join(missing, ", ") +
		" (Debian's iptables package provides them: apt-get install iptables)"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + " — CI must provide them")
	}
	t.Skip("SKIPPED: " + msg)
}

// TestIptablesWrapper runs hack/iptables-wrapper.sh, the agent image's entrypoint, for real: in a
// fresh network namespace holding the rules of each case, with a fake agent that reports which
// iptables the wrapper put on its PATH. (The namespace stands in for the node: the image runs in
// the node's network namespace, hostNetwork.)
func TestIptablesWrapper(t *testing.T) {
	requireIptablesModes(t)
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	wrapper := filepath.Join(root, "hack", "iptables-wrapper.sh")

	rule := func(n int) string { return fmt.Sprintf("-A INPUT -s 192.0.2.%d/32 -j ACCEPT", n) }
	cases := []struct {
		name string
		// setup runs inside the namespace before the wrapper: one iptables command per line.
		setup []string
		env   []string
		want  string // "nft" or "legacy"
	}{
		{name: "no rules anywhere: nft", want: "nft"},
		{name: "legacy has rules, nft none: legacy", setup: []string{"iptables-legacy " + rule(1), "iptables-legacy " + rule(2)}, want: "legacy"},
		{name: "legacy has more rules: legacy", setup: []string{"iptables-legacy " + rule(1), "iptables-legacy " + rule(2), "iptables-nft " + rule(3)}, want: "legacy"},
		{name: "nft has more rules: nft", setup: []string{"iptables-legacy " + rule(1), "iptables-nft " + rule(2), "iptables-nft " + rule(3)}, want: "nft"},
		{name: "equal: nft", setup: []string{"iptables-legacy " + rule(1), "iptables-nft " + rule(2)}, want: "nft"},
		{name: "ip6tables rules count: legacy", setup: []string{"ip6tables-legacy -A INPUT -s 2001:db8::1/128 -j ACCEPT"}, want: "legacy"},
		{name: "kubelet hint in legacy beats nft's rule count", want: "legacy",
			setup: []string{"iptables-legacy -t mangle -N KUBE-IPTABLES-HINT", "iptables-nft " + rule(1), "iptables-nft " + rule(2)}},
		{name: "kubelet hint in nft beats legacy's rule count", want: "nft",
			setup: []string{"iptables-nft -t mangle -N KUBE-IPTABLES-HINT", "iptables-legacy " + rule(1), "iptables-legacy " + rule(2)}},
		{name: "MAGIC_IP_IPTABLES_MODE overrides", env: []string{"MAGIC_IP_IPTABLES_MODE=legacy"}, want: "legacy"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			ns, err := harness.NewNetns(fmt.Sprintf("%s-wrap%d", harness.RunPrefix(), i))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := ns.Delete(); err != nil {
					t.Error(err)
				}
			})
			for _, line := range tc.setup {
				f := strings.Fields(line)
				if _, err := ns.Run(ctx, f[0], append([]string{"-w", "5"}, f[1:]...)...); err != nil {
					t.Fatal(err)
				}
			}
			binDir := filepath.Join(t.TempDir(), "iptables-bin")
			// The fake agent: where plain iptables, iptables-save and ip6tables-restore lead, the
			// version iptables reports ("(nf_tables)" or "(legacy)"), how many rules plain
			// iptables-save sees, and its own arguments.
			script := `for c in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
	echo "$c -> $(readlink "$(command -v $c)")"
done
iptables --version
echo "rules: $(iptables-save | grep -c '^-A')"
echo "args: $*"`
			cmd := ns.Command(ctx, "/bin/sh", wrapper, "-c", script, "fake-agent", "--node-name", "n1")
			cmd.Env = append(os.Environ(), "MAGIC_IP_IPTABLES_BIN_DIR="+binDir, "MAGIC_IP_AGENT=/bin/sh")
			cmd.Env = append(cmd.Env, tc.env...)
			outB, err := cmd.CombinedOutput()
			out := string(outB)
			t.Logf("wrapper output:\n%s", out)
			if err != nil {
				t.Fatalf("wrapper: %v", err)
			}
			for _, c := range []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"} {
				base, suffix, _ := strings.Cut(c, "-")
				if suffix != "" {
					suffix = "-" + suffix
				}
				target, err := exec.LookPath(base + "-" + tc.want + suffix)
				if err != nil {
					t.Fatal(err)
				}
				if want := c + " -> " + target; !strings.Contains(out, want+"\n") {
					t.Errorf("want %q: the agent must run %s", want, tc.want)
				}
			}
			wantVersion := map[string]string{"nft": "(nf_tables)", "legacy": "(legacy)"}[tc.want]
			if !strings.Contains(out, wantVersion) {
				t.Errorf("iptables --version does not say %s", wantVersion)
			}
			wantRules := 0 // the IPv4 filter rules of the chosen mode, as plain iptables-save sees them
			for _, line := range tc.setup {
				if strings.HasPrefix(line, "iptables-"+tc.want+" -A") {
					wantRules++
				}
			}
			if want := fmt.Sprintf("rules: %d\n", wantRules); !strings.Contains(out, want) {
				t.Errorf("want %q: plain iptables-save must see the chosen mode's rules", strings.TrimSpace(want))
			}
			if !strings.Contains(out, "args: --node-name n1\n") {
				t.Errorf("the agent did not get the wrapper's arguments")
			}
			if !strings.Contains(out, "iptables-wrapper: using iptables-"+tc.want) {
				t.Errorf("the wrapper does not log its choice")
			}
		})
	}
}

// TestIptablesWrapperFailsClearly: with no iptables at all on PATH the wrapper stops with a message
// instead of starting an agent that cannot work. Needs no root: nothing is detected or run.
func TestIptablesWrapperFailsClearly(t *testing.T) {
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	empty := t.TempDir()
	for _, mode := range []string{"", "legacy", "bogus"} {
		cmd := exec.Command("/bin/sh", filepath.Join(root, "hack", "iptables-wrapper.sh"), "-c", "echo agent ran")
		// PATH holds only the tools the script itself needs, linked into an otherwise empty directory.
		bin := filepath.Join(empty, "bin"+mode)
		if err := os.MkdirAll(bin, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, tool := range []string{"mkdir", "ln", "grep"} {
			p, err := exec.LookPath(tool)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(p, filepath.Join(bin, tool)); err != nil {
				t.Fatal(err)
			}
		}
		cmd.Env = []string{"PATH=" + bin, "MAGIC_IP_IPTABLES_BIN_DIR=" + filepath.Join(empty, "links"+mode),
			"MAGIC_IP_AGENT=/bin/sh", "MAGIC_IP_IPTABLES_MODE=" + mode}
		out, err := cmd.CombinedOutput()
		if err == nil || strings.Contains(string(out), "agent ran") {
			t.Errorf("mode %q: wrapper exec'd the agent without iptables (err %v):\n%s", mode, err, out)
			continue
		}
		if !strings.Contains(string(out), "iptables-wrapper: ") {
			t.Errorf("mode %q: no message from the wrapper:\n%s", mode, out)
		}
		t.Logf("mode %q: %s", mode, strings.TrimSpace(string(out)))
	}
}

// TestIptablesWrapperRunsAgent runs the real agent through the wrapper (`magic-ip-agent cleanup`)
// in each mode: the agent's own iptables calls (go-iptables, iptables-save, iptables-restore) must
// reach the chosen variant through the symlinks, so a chain of ours left there is removed.
func TestIptablesWrapperRunsAgent(t *testing.T) {
	requireIptablesModes(t)
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	agentBin, err := harness.Build(t.TempDir(), "./cmd/magic-ip-agent")
	if err != nil {
		t.Fatal(err)
	}
	for i, mode := range []string{"nft", "legacy"} {
		t.Run(mode, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			ns, err := harness.NewNetns(fmt.Sprintf("%s-wrapagent%d", harness.RunPrefix(), i))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := ns.Delete(); err != nil {
					t.Error(err)
				}
			})
			ipt := "iptables-" + mode
			for _, args := range [][]string{
				{"-t", "nat", "-N", "MAGIC-IP-SVC-LEFTOVER"},
				{"-t", "nat", "-A", "MAGIC-IP-SVC-LEFTOVER", "-j", "RETURN"},
				{"-A", "INPUT", "-s", "192.0.2.1/32", "-j", "ACCEPT"}, // more rules in this mode than in the other
			} {
				if _, err := ns.Run(ctx, ipt, append([]string{"-w", "5"}, args...)...); err != nil {
					t.Fatal(err)
				}
			}
			cmd := ns.Command(ctx, "/bin/sh", filepath.Join(root, "hack", "iptables-wrapper.sh"), "cleanup")
			cmd.Env = append(os.Environ(), "MAGIC_IP_IPTABLES_BIN_DIR="+filepath.Join(t.TempDir(), "bin"), "MAGIC_IP_AGENT="+agentBin)
			out, err := cmd.CombinedOutput()
			t.Logf("wrapper + agent output:\n%s", out)
			if err != nil {
				t.Fatalf("magic-ip-agent cleanup through the wrapper: %v", err)
			}
			if !strings.Contains(string(out), "using iptables-"+mode) {
				t.Errorf("the wrapper did not choose %s", mode)
			}
			saved, err := ns.Run(ctx, ipt+"-save", "-t", "nat")
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(saved, "MAGIC-IP-SVC-LEFTOVER") {
				t.Errorf("the agent did not remove its chain from %s:\n%s", mode, saved)
			}
		})
	}
}
