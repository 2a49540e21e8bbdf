package agent

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestEnsureNodeSysctls runs against a directory laid out like /proc/sys (what --proc-sys-dir
// points at in the DaemonSet: the host's /proc/sys/net mounted under /host/proc/sys).
func TestEnsureNodeSysctls(t *testing.T) {
	const nf4, nf6, fwd = "net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables", "net/ipv4/ip_forward"
	cases := map[string]struct {
		files        map[string]string // path under the dir → content; absent = missing
		wantChanged  []string
		wantProblems int
		wantBridgeNF string // both bridge-nf sysctls' content afterwards ("": not checked)
	}{
		"already right":        {files: map[string]string{nf4: "1\n", nf6: "1\n", fwd: "1\n"}, wantBridgeNF: "1\n"},
		"bridge-nf off is set": {files: map[string]string{nf4: "0\n", nf6: "0\n", fwd: "1\n"}, wantChanged: []string{"net.bridge.bridge-nf-call-iptables=1", "net.bridge.bridge-nf-call-ip6tables=1"}, wantBridgeNF: "1"},
		"IPv6 one off is set":  {files: map[string]string{nf4: "1", nf6: "0\n", fwd: "1\n"}, wantChanged: []string{"net.bridge.bridge-nf-call-ip6tables=1"}, wantBridgeNF: "1"},
		"br_netfilter missing": {files: map[string]string{fwd: "1\n"}, wantProblems: 1},
		"forwarding off":       {files: map[string]string{nf4: "1\n", nf6: "1\n", fwd: "0\n"}, wantProblems: 1, wantBridgeNF: "1\n"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			for p, v := range tc.files {
				if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, p), []byte(v), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			changed, problems := EnsureNodeSysctls(Sysctl{Dir: dir})
			if !slices.Equal(changed, tc.wantChanged) {
				t.Errorf("changed %v, want %v", changed, tc.wantChanged)
			}
			if len(problems) != tc.wantProblems {
				t.Errorf("problems %v, want %d", problems, tc.wantProblems)
			}
			for _, p := range []string{nf4, nf6} {
				if tc.wantBridgeNF == "" {
					break
				}
				if b, err := os.ReadFile(filepath.Join(dir, p)); err != nil || strings.TrimSpace(string(b)) != strings.TrimSpace(tc.wantBridgeNF) {
					t.Errorf("%s = %q (%v), want %q", p, b, err, tc.wantBridgeNF)
				}
			}
		})
	}
}
